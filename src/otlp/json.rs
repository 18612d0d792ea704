//! OTLP/JSON ⇄ protobuf, for the HTTP receiver's JSON bodies and the exporters that write JSON
//! (`otlphttp` with `encoding: json`, the `file` and `debug` exporters). Everything past the door
//! sees protobuf bytes; these are the only places JSON exists.
//!
//! Both directions are driven by the schema table ([`super::schema`]) and never build the
//! generated structs:
//!
//! - [`json_to_protobuf`] streams: serde_json hands over one token at a time and each value is
//!   written straight out as protobuf, nested messages framed when they close. Transient memory
//!   is the output (smaller than the JSON) and a little per nesting level, so an 18 MB body of
//!   empty spans costs tens of MB, not the gigabytes a struct per span cost (issue 10).
//! - [`to_otlp_json`] writes the OTLP/JSON the spec describes (the protobuf JSON mapping with
//!   OTLP's exceptions): lowerCamelCase names, trace and span IDs as hex, enums as integers,
//!   64-bit integers as decimal strings, unset and default-valued fields omitted (but the set
//!   member of `AnyValue`'s oneof always written), so the Collector's `otlpjsonfile` receiver
//!   and protobuf's own JSON parsers read it back.
//!
//! The reader accepts what the mapping allows beyond that: proto field names as well as JSON
//! names, numbers as strings or numbers, enum names, `null` for an unset field; unknown fields
//! are skipped, as the OTLP spec requires.

use std::borrow::Cow;
use std::fmt;

use bytes::Bytes;
use serde::de::{self, DeserializeSeed, Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};

use super::schema::{Field, Kind, MessageSchema, ANY_VALUE, EXPORT_REQUEST};
use super::wire::{put_varint, varint_len, FieldReader, Value};

/// Converts an OTLP/JSON `ExportTraceServiceRequest` to protobuf bytes.
pub fn json_to_protobuf(json: &[u8]) -> Result<Bytes, String> {
    // Protobuf is smaller than its JSON; half the body avoids most regrowth without
    // over-reserving for bodies of long strings.
    let mut out = Vec::with_capacity(json.len() / 2);
    let mut de = serde_json::Deserializer::from_slice(json);
    MessageSeed {
        schema: &EXPORT_REQUEST,
        out: &mut out,
    }
    .deserialize(&mut de)
    .map_err(|e| e.to_string())?;
    de.end().map_err(|e| e.to_string())?;
    Ok(Bytes::from(out))
}

/// Writes a message's fields (the JSON object's members) to `out`, unframed.
struct MessageSeed<'o> {
    schema: &'static MessageSchema,
    out: &'o mut Vec<u8>,
}

impl<'de> DeserializeSeed<'de> for MessageSeed<'_> {
    type Value = ();

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<(), D::Error> {
        deserializer.deserialize_map(self)
    }
}

impl<'de> Visitor<'de> for MessageSeed<'_> {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "an OTLP {} object", self.schema.name)
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        while let Some(Key(name)) = map.next_key()? {
            match self.schema.field_named(&name) {
                None => {
                    map.next_value::<IgnoredAny>()?;
                }
                Some(field) if field.repeated => map.next_value_seed(RepeatedSeed {
                    field,
                    out: &mut *self.out,
                })?,
                Some(field) => map.next_value_seed(FieldSeed {
                    field,
                    out: &mut *self.out,
                })?,
            }
        }
        Ok(())
    }
}

/// A JSON object key, borrowed when it has no escapes.
struct Key<'de>(Cow<'de, str>);

impl<'de> serde::Deserialize<'de> for Key<'de> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_str(StrVisitor).map(Key)
    }
}

struct StrVisitor;

impl<'de> Visitor<'de> for StrVisitor {
    type Value = Cow<'de, str>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a string")
    }
    fn visit_borrowed_str<E: de::Error>(self, v: &'de str) -> Result<Self::Value, E> {
        Ok(Cow::Borrowed(v))
    }
    fn visit_str<E: de::Error>(self, v: &str) -> Result<Self::Value, E> {
        Ok(Cow::Owned(v.to_string()))
    }
    fn visit_string<E: de::Error>(self, v: String) -> Result<Self::Value, E> {
        Ok(Cow::Owned(v))
    }
}

/// A repeated field: a JSON array (or `null`), each element written as one field occurrence.
struct RepeatedSeed<'o> {
    field: &'static Field,
    out: &'o mut Vec<u8>,
}

impl<'de> DeserializeSeed<'de> for RepeatedSeed<'_> {
    type Value = ();

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<(), D::Error> {
        deserializer.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for RepeatedSeed<'_> {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "an array for `{}`", self.field.json)
    }
    fn visit_unit<E: de::Error>(self) -> Result<(), E> {
        Ok(())
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        while seq
            .next_element_seed(FieldSeed {
                field: self.field,
                out: &mut *self.out,
            })?
            .is_some()
        {}
        Ok(())
    }
}

/// One occurrence of a field: its key and value written to `out` (nothing for `null`).
struct FieldSeed<'o> {
    field: &'static Field,
    out: &'o mut Vec<u8>,
}

impl FieldSeed<'_> {
    fn key(&mut self) {
        put_varint(
            self.out,
            u64::from(self.field.number << 3 | u32::from(self.field.kind.wire_type())),
        );
    }

    fn bytes(&mut self, bytes: &[u8]) {
        self.key();
        put_varint(self.out, bytes.len() as u64);
        self.out.extend_from_slice(bytes);
    }

    fn integer<E: de::Error>(mut self, v: i128) -> Result<(), E> {
        let field = self.field;
        let range_error = || E::custom(format!("`{}`: {v} is out of range", field.json));
        match field.kind {
            Kind::Bool => return Err(E::custom(format!("`{}`: expected a boolean", field.json))),
            Kind::Int32 | Kind::Enum => {
                let v = i32::try_from(v).map_err(|_| range_error())?;
                self.key();
                // Negative int32s are sign-extended to 64 bits on the wire.
                put_varint(self.out, i64::from(v) as u64);
            }
            Kind::Uint32 => {
                let v = u32::try_from(v).map_err(|_| range_error())?;
                self.key();
                put_varint(self.out, u64::from(v));
            }
            Kind::Int64 => {
                let v = i64::try_from(v).map_err(|_| range_error())?;
                self.key();
                put_varint(self.out, v as u64);
            }
            Kind::Fixed32 => {
                let v = u32::try_from(v).map_err(|_| range_error())?;
                self.key();
                self.out.extend_from_slice(&v.to_le_bytes());
            }
            Kind::Fixed64 => {
                let v = u64::try_from(v).map_err(|_| range_error())?;
                self.key();
                self.out.extend_from_slice(&v.to_le_bytes());
            }
            Kind::Double => {
                self.key();
                self.out
                    .extend_from_slice(&(v as f64).to_bits().to_le_bytes());
            }
            Kind::String | Kind::Bytes | Kind::Id | Kind::Message(_) => {
                return Err(E::custom(format!(
                    "`{}`: expected {}, not a number",
                    field.json,
                    expected(field.kind)
                )))
            }
        }
        Ok(())
    }
}

fn expected(kind: Kind) -> &'static str {
    match kind {
        Kind::String => "a string",
        Kind::Bytes => "a base64 string",
        Kind::Id => "a hex string",
        Kind::Message(_) => "an object",
        Kind::Bool => "a boolean",
        _ => "a number",
    }
}

impl<'de> DeserializeSeed<'de> for FieldSeed<'_> {
    type Value = ();

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<(), D::Error> {
        deserializer.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for FieldSeed<'_> {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} for `{}`", expected(self.field.kind), self.field.json)
    }

    fn visit_unit<E: de::Error>(self) -> Result<(), E> {
        // `null` is an unset field.
        Ok(())
    }

    fn visit_bool<E: de::Error>(mut self, v: bool) -> Result<(), E> {
        if !matches!(self.field.kind, Kind::Bool) {
            return Err(E::invalid_type(de::Unexpected::Bool(v), &self));
        }
        self.key();
        self.out.push(u8::from(v));
        Ok(())
    }

    fn visit_i64<E: de::Error>(self, v: i64) -> Result<(), E> {
        self.integer(i128::from(v))
    }

    fn visit_u64<E: de::Error>(self, v: u64) -> Result<(), E> {
        self.integer(i128::from(v))
    }

    fn visit_f64<E: de::Error>(mut self, v: f64) -> Result<(), E> {
        if matches!(self.field.kind, Kind::Double) {
            self.key();
            self.out.extend_from_slice(&v.to_bits().to_le_bytes());
            return Ok(());
        }
        // The mapping allows integers in exponent form (1.5e3) as long as they are whole.
        if v.fract() == 0.0 && v.abs() < 1.8e19 {
            return self.integer(v as i128);
        }
        Err(E::invalid_type(de::Unexpected::Float(v), &self))
    }

    fn visit_str<E: de::Error>(mut self, v: &str) -> Result<(), E> {
        let field = self.field;
        match field.kind {
            Kind::String => self.bytes(v.as_bytes()),
            Kind::Id => {
                let id = hex_decode(v)
                    .ok_or_else(|| E::custom(format!("`{}`: `{v}` is not a hex ID", field.json)))?;
                self.bytes(&id);
            }
            Kind::Bytes => {
                let bytes = base64_decode(v)
                    .ok_or_else(|| E::custom(format!("`{}`: not valid base64", field.json)))?;
                self.bytes(&bytes);
            }
            Kind::Message(_) => return Err(E::invalid_type(de::Unexpected::Str(v), &self)),
            Kind::Bool => match v {
                "true" => return self.visit_bool(true),
                "false" => return self.visit_bool(false),
                _ => return Err(E::invalid_type(de::Unexpected::Str(v), &self)),
            },
            Kind::Double => {
                let d = match v {
                    "NaN" => f64::NAN,
                    "Infinity" => f64::INFINITY,
                    "-Infinity" => f64::NEG_INFINITY,
                    _ => v
                        .parse()
                        .map_err(|_| E::invalid_type(de::Unexpected::Str(v), &self))?,
                };
                return self.visit_f64(d);
            }
            Kind::Enum => {
                if let Some(n) = enum_value(v) {
                    return self.integer(n);
                }
                let n: i128 = v
                    .parse()
                    .map_err(|_| E::invalid_type(de::Unexpected::Str(v), &self))?;
                return self.integer(n);
            }
            Kind::Int32 | Kind::Uint32 | Kind::Int64 | Kind::Fixed32 | Kind::Fixed64 => {
                let n: i128 = match v.parse() {
                    Ok(n) => n,
                    Err(_) => {
                        let d: f64 = v
                            .parse()
                            .map_err(|_| E::invalid_type(de::Unexpected::Str(v), &self))?;
                        return self.visit_f64(d);
                    }
                };
                return self.integer(n);
            }
        }
        Ok(())
    }

    fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<(), A::Error> {
        let Kind::Message(schema) = self.field.kind else {
            return Err(de::Error::invalid_type(de::Unexpected::Map, &self));
        };
        let number = self.field.number;
        let out = self.out;
        put_varint(out, u64::from(number << 3 | 2));
        // One byte for the length, widened when the message turns out longer: small messages
        // (most of them) are framed in place; a long one moves its bytes once.
        let at = out.len();
        out.push(0);
        MessageSeed {
            schema,
            out: &mut *out,
        }
        .visit_map(map)?;
        frame(out, at);
        Ok(())
    }
}

/// Writes the length of the message that starts after the placeholder byte at `at`.
fn frame(out: &mut Vec<u8>, at: usize) {
    let len = out.len() - at - 1;
    let width = varint_len(len as u64);
    if width > 1 {
        let end = out.len();
        out.resize(end + width - 1, 0);
        out.copy_within(at + 1..end, at + width);
    }
    let mut header = [0u8; 10];
    let mut slot = &mut header[..];
    put_varint(&mut slot, len as u64);
    out[at..at + width].copy_from_slice(&header[..width]);
}

/// `SpanKind` and `StatusCode` names, as protobuf's JSON mapping allows enums to be written.
fn enum_value(name: &str) -> Option<i128> {
    Some(match name {
        "SPAN_KIND_UNSPECIFIED" | "STATUS_CODE_UNSET" => 0,
        "SPAN_KIND_INTERNAL" | "STATUS_CODE_OK" => 1,
        "SPAN_KIND_SERVER" | "STATUS_CODE_ERROR" => 2,
        "SPAN_KIND_CLIENT" => 3,
        "SPAN_KIND_PRODUCER" => 4,
        "SPAN_KIND_CONSUMER" => 5,
        _ => return None,
    })
}

fn hex_decode(s: &str) -> Option<Vec<u8>> {
    let s = s.as_bytes();
    if !s.len().is_multiple_of(2) {
        return None;
    }
    let nibble = |c: u8| match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        b'A'..=b'F' => Some(c - b'A' + 10),
        _ => None,
    };
    s.chunks(2)
        .map(|pair| Some(nibble(pair[0])? << 4 | nibble(pair[1])?))
        .collect()
}

/// Standard or URL-safe base64, padded or not (the protobuf JSON mapping accepts either).
fn base64_decode(s: &str) -> Option<Vec<u8>> {
    let sextet = |c: u8| match c {
        b'A'..=b'Z' => Some(c - b'A'),
        b'a'..=b'z' => Some(c - b'a' + 26),
        b'0'..=b'9' => Some(c - b'0' + 52),
        b'+' | b'-' => Some(62),
        b'/' | b'_' => Some(63),
        _ => None,
    };
    let s = s.trim_end_matches('=').as_bytes();
    if s.len() % 4 == 1 {
        return None;
    }
    let mut out = Vec::with_capacity(s.len() * 3 / 4);
    for chunk in s.chunks(4) {
        let mut bits = 0u32;
        for (i, &c) in chunk.iter().enumerate() {
            bits |= u32::from(sextet(c)?) << (18 - 6 * i);
        }
        let bytes = bits.to_be_bytes();
        out.extend_from_slice(&bytes[1..chunk.len()]);
    }
    Some(out)
}

fn base64_encode(bytes: &[u8], out: &mut Vec<u8>) {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    for chunk in bytes.chunks(3) {
        let mut bits = 0u32;
        for (i, &b) in chunk.iter().enumerate() {
            bits |= u32::from(b) << (16 - 8 * i);
        }
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(ALPHABET[(bits >> (18 - 6 * i) & 63) as usize]);
            } else {
                out.push(b'=');
            }
        }
    }
}

// ---- protobuf to OTLP/JSON ----

/// Renders an encoded request as OTLP/JSON; see the module docs.
pub fn to_otlp_json(body: &[u8]) -> Result<Vec<u8>, String> {
    let mut out = Vec::with_capacity(body.len() * 2);
    write_message(body, &EXPORT_REQUEST, &mut out)?;
    Ok(out)
}

fn write_message(
    msg: &[u8],
    schema: &'static MessageSchema,
    out: &mut Vec<u8>,
) -> Result<(), String> {
    // Check the framing once, so the per-field scans below cannot fail.
    let mut fields = FieldReader::new(msg);
    while fields.next().map_err(|e| e.to_string())?.is_some() {}
    out.push(b'{');
    let mut first = true;
    for field in schema.fields {
        let values = occurrences(msg, field.number);
        if field.repeated {
            if values.clone().next().is_none() {
                continue;
            }
            member(out, &mut first, field.json);
            out.push(b'[');
            for (i, value) in values.enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                write_value(value, field, out)?;
            }
            out.push(b']');
        } else if let Some(value) = values.last() {
            // The last occurrence wins, as in any protobuf decoder (nested messages would merge;
            // no OTLP writer repeats them).
            let oneof = std::ptr::eq(schema, &ANY_VALUE);
            let message = matches!(field.kind, Kind::Message(_));
            if !oneof && !message && is_default(value) {
                continue;
            }
            member(out, &mut first, field.json);
            write_value(value, field, out)?;
        }
    }
    out.push(b'}');
    Ok(())
}

/// The values of field `number` in a message whose framing is sound.
fn occurrences(msg: &[u8], number: u32) -> impl Iterator<Item = Value<'_>> + Clone + '_ {
    let mut fields = FieldReader::new(msg);
    std::iter::from_fn(move || loop {
        match fields.next() {
            Ok(Some((n, value, _))) if n == number => return Some(value),
            Ok(Some(_)) => continue,
            _ => return None,
        }
    })
}

fn is_default(value: Value<'_>) -> bool {
    match value {
        Value::Varint(v) | Value::Fixed64(v) => v == 0,
        Value::Fixed32(v) => v == 0,
        // Strings and bytes; messages are written when present, even empty.
        Value::Len(bytes) => bytes.is_empty(),
    }
}

fn member(out: &mut Vec<u8>, first: &mut bool, name: &str) {
    if !*first {
        out.push(b',');
    }
    *first = false;
    out.push(b'"');
    out.extend_from_slice(name.as_bytes());
    out.extend_from_slice(b"\":");
}

fn write_value(value: Value<'_>, field: &'static Field, out: &mut Vec<u8>) -> Result<(), String> {
    let wrong = || format!("field `{}` has the wrong wire type", field.name);
    match (field.kind, value) {
        (Kind::Message(schema), Value::Len(msg)) => write_message(msg, schema, out)?,
        (Kind::String, Value::Len(s)) => {
            let text = String::from_utf8_lossy(s);
            serde_json::to_writer(&mut *out, &*text).map_err(|e| e.to_string())?;
        }
        (Kind::Id, Value::Len(id)) => {
            out.push(b'"');
            for b in id {
                out.extend_from_slice(format!("{b:02x}").as_bytes());
            }
            out.push(b'"');
        }
        (Kind::Bytes, Value::Len(b)) => {
            out.push(b'"');
            base64_encode(b, out);
            out.push(b'"');
        }
        (Kind::Bool, Value::Varint(v)) => {
            out.extend_from_slice(if v != 0 { b"true" } else { b"false" })
        }
        (Kind::Int32 | Kind::Enum, Value::Varint(v)) => {
            out.extend_from_slice((v as i32).to_string().as_bytes())
        }
        (Kind::Uint32, Value::Varint(v)) => {
            out.extend_from_slice((v as u32).to_string().as_bytes())
        }
        (Kind::Int64, Value::Varint(v)) => {
            out.extend_from_slice(format!("\"{}\"", v as i64).as_bytes())
        }
        (Kind::Fixed32, Value::Fixed32(v)) => out.extend_from_slice(v.to_string().as_bytes()),
        (Kind::Fixed64, Value::Fixed64(v)) => out.extend_from_slice(format!("\"{v}\"").as_bytes()),
        (Kind::Double, Value::Fixed64(bits)) => {
            let d = f64::from_bits(bits);
            if d.is_nan() {
                out.extend_from_slice(b"\"NaN\"");
            } else if d.is_infinite() {
                out.extend_from_slice(if d > 0.0 {
                    b"\"Infinity\""
                } else {
                    b"\"-Infinity\""
                });
            } else {
                serde_json::to_writer(&mut *out, &d).map_err(|e| e.to_string())?;
            }
        }
        _ => return Err(wrong()),
    }
    Ok(())
}

#[cfg(test)]
mod tests;
