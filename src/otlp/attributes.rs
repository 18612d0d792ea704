//! Reading attributes and other fields straight from encoded OTLP messages.
//!
//! Spans stay encoded (docs/ARCHITECTURE.md, "Spans stay encoded"), so whatever looks past the
//! summary fields (policies, the front tier's `service.name` routing) reads what it needs here, walking the protobuf with [`FieldReader`]: a
//! `KeyValue` list is scanned for one key without building a map, and values are borrowed from
//! the span's bytes. Nothing here allocates.
//!
//! Value conversions follow the Collector's pdata accessors, because its policies use them and
//! their decisions depend on it: `Str()` of a non-string value is `""`, `Int()` of a non-int is
//! `0`, `Bool()` of a non-bool is `false` ([`AnyValue::str_or_empty`] and friends). With duplicate
//! keys in one attribute list the first wins, as pdata's `Map.Get` does.
//!
//! Field numbers are those of `opentelemetry/proto/{common,resource,trace}/v1/*.proto`.

use super::wire::{bad_type, FieldReader, Value, WireError};

/// `Resource.attributes`.
pub const RESOURCE_ATTRIBUTES: u32 = 1;
/// `InstrumentationScope.attributes`.
pub const SCOPE_ATTRIBUTES: u32 = 3;
/// `Span.attributes`.
pub const SPAN_ATTRIBUTES: u32 = 9;
/// `Span.Event.attributes`.
pub const EVENT_ATTRIBUTES: u32 = 3;

/// An `AnyValue`, borrowed from its encoding.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum AnyValue<'a> {
    /// No value set (pdata's `ValueTypeEmpty`).
    Empty,
    /// A string, as sent (not checked for UTF-8, as the Collector does not check it either).
    Str(&'a [u8]),
    Bool(bool),
    Int(i64),
    Double(f64),
    Bytes(&'a [u8]),
    /// An encoded `ArrayValue`.
    Array(&'a [u8]),
    /// An encoded `KeyValueList`.
    KvList(&'a [u8]),
}

impl<'a> AnyValue<'a> {
    /// Reads an encoded `AnyValue`. When several `value` fields are present the last wins, as in
    /// any protobuf decoder.
    pub fn decode(buf: &'a [u8]) -> Result<Self, WireError> {
        let mut value = AnyValue::Empty;
        let mut fields = FieldReader::new(buf);
        while let Some((field, raw, at)) = fields.next()? {
            value = match (field, raw) {
                (1, Value::Len(s)) => AnyValue::Str(s),
                (2, Value::Varint(b)) => AnyValue::Bool(b != 0),
                (3, Value::Varint(i)) => AnyValue::Int(i as i64),
                (4, Value::Fixed64(bits)) => AnyValue::Double(f64::from_bits(bits)),
                (5, Value::Len(a)) => AnyValue::Array(a),
                (6, Value::Len(kv)) => AnyValue::KvList(kv),
                (7, Value::Len(b)) => AnyValue::Bytes(b),
                (1..=7, other) => return Err(bad_type(field, &other, at)),
                _ => continue,
            };
        }
        Ok(value)
    }

    /// pdata's `Value.Str()`: the string, or empty for every other type.
    pub fn str_or_empty(&self) -> &'a [u8] {
        match *self {
            AnyValue::Str(s) => s,
            _ => b"",
        }
    }

    /// pdata's `Value.Int()`: the integer, or 0 for every other type (a double is not converted).
    pub fn int_or_zero(&self) -> i64 {
        match *self {
            AnyValue::Int(i) => i,
            _ => 0,
        }
    }

    /// pdata's `Value.Bool()`: the boolean, or false for every other type.
    pub fn bool_or_false(&self) -> bool {
        match *self {
            AnyValue::Bool(b) => b,
            _ => false,
        }
    }
}

/// The value of the first attribute named `key` in the `KeyValue` list stored as field
/// `attributes_field` of `msg` (a `Resource`, `InstrumentationScope`, `Span` or `Event`).
pub fn find_attribute<'a>(
    msg: &'a [u8],
    attributes_field: u32,
    key: &[u8],
) -> Result<Option<AnyValue<'a>>, WireError> {
    let mut fields = FieldReader::new(msg);
    while let Some((field, raw, at)) = fields.next()? {
        if field != attributes_field {
            continue;
        }
        let Value::Len(kv) = raw else {
            return Err(bad_type(field, &raw, at));
        };
        let (name, value) = key_value(kv)?;
        if name == key {
            return Ok(Some(match value {
                Some(v) => AnyValue::decode(v)?,
                None => AnyValue::Empty,
            }));
        }
    }
    Ok(None)
}

/// A `KeyValue`'s key and encoded value (absent when the field is not set).
fn key_value(kv: &[u8]) -> Result<(&[u8], Option<&[u8]>), WireError> {
    let mut key: &[u8] = b"";
    let mut value = None;
    let mut fields = FieldReader::new(kv);
    while let Some((field, raw, at)) = fields.next()? {
        match (field, raw) {
            (1, Value::Len(k)) => key = k,
            (2, Value::Len(v)) => value = Some(v),
            (1 | 2, other) => return Err(bad_type(field, &other, at)),
            _ => {}
        }
    }
    Ok((key, value))
}

/// Every occurrence of the length-delimited field `wanted` in `msg`, in order.
pub fn repeated(msg: &[u8], wanted: u32) -> impl Iterator<Item = Result<&[u8], WireError>> {
    let mut fields = FieldReader::new(msg);
    let mut failed = false;
    std::iter::from_fn(move || {
        if failed {
            return None;
        }
        loop {
            match fields.next() {
                Ok(Some((field, raw, at))) if field == wanted => {
                    return Some(match raw {
                        Value::Len(bytes) => Ok(bytes),
                        other => {
                            failed = true;
                            Err(bad_type(field, &other, at))
                        }
                    });
                }
                Ok(Some(_)) => continue,
                Ok(None) => return None,
                Err(e) => {
                    failed = true;
                    return Some(Err(e));
                }
            }
        }
    })
}

/// The scalar fields of a `Span` that policies read, in one pass over its bytes.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SpanFields<'a> {
    pub trace_state: &'a [u8],
    pub name: &'a [u8],
    /// `SpanKind` as sent (0 unspecified … 5 consumer).
    pub kind: i32,
    /// The W3C trace flags live in the low byte.
    pub flags: u32,
    /// `Status.message`.
    pub status_message: &'a [u8],
}

impl<'a> SpanFields<'a> {
    pub fn read(span: &'a [u8]) -> Result<Self, WireError> {
        let mut out = SpanFields::default();
        let mut fields = FieldReader::new(span);
        while let Some((field, raw, at)) = fields.next()? {
            match (field, raw) {
                (3, Value::Len(ts)) => out.trace_state = ts,
                (5, Value::Len(name)) => out.name = name,
                (6, Value::Varint(kind)) => out.kind = kind as i32,
                (16, Value::Fixed32(flags)) => out.flags = flags,
                (15, Value::Len(status)) => out.status_message = status_message(status)?,
                (3 | 5 | 6 | 15 | 16, other) => return Err(bad_type(field, &other, at)),
                _ => {}
            }
        }
        Ok(out)
    }
}

fn status_message(status: &[u8]) -> Result<&[u8], WireError> {
    let mut message: &[u8] = b"";
    let mut fields = FieldReader::new(status);
    while let Some((field, raw, at)) = fields.next()? {
        match (field, raw) {
            (2, Value::Len(m)) => message = m,
            (2, other) => return Err(bad_type(field, &other, at)),
            _ => {}
        }
    }
    Ok(message)
}

/// The scalar fields of a `Span.Event`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct EventFields<'a> {
    pub time_unix_nano: u64,
    pub name: &'a [u8],
}

impl<'a> EventFields<'a> {
    pub fn read(event: &'a [u8]) -> Result<Self, WireError> {
        let mut out = EventFields::default();
        let mut fields = FieldReader::new(event);
        while let Some((field, raw, at)) = fields.next()? {
            match (field, raw) {
                (1, Value::Fixed64(t)) => out.time_unix_nano = t,
                (2, Value::Len(name)) => out.name = name,
                (1 | 2, other) => return Err(bad_type(field, &other, at)),
                _ => {}
            }
        }
        Ok(out)
    }
}

/// `InstrumentationScope.name` and `.version`.
pub fn scope_name_version(scope: &[u8]) -> Result<(&[u8], &[u8]), WireError> {
    let (mut name, mut version): (&[u8], &[u8]) = (b"", b"");
    let mut fields = FieldReader::new(scope);
    while let Some((field, raw, at)) = fields.next()? {
        match (field, raw) {
            (1, Value::Len(n)) => name = n,
            (2, Value::Len(v)) => version = v,
            (1 | 2, other) => return Err(bad_type(field, &other, at)),
            _ => {}
        }
    }
    Ok((name, version))
}

/// The string value of `service.name` in an encoded `Resource`, if it has one: what the front
/// tier routes by with `routing_key: service`.
pub fn service_name(resource: &[u8]) -> Option<&[u8]> {
    match find_attribute(resource, RESOURCE_ATTRIBUTES, b"service.name") {
        Ok(Some(AnyValue::Str(name))) => Some(name),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::otlp::testing::*;

    #[test]
    fn attribute_values_of_every_type_are_read_from_real_span_bytes() {
        let s = SpanBuilder::new()
            .attr("s", text("x"))
            .attr("i", int(-7))
            .attr("d", double(2.5))
            .attr("b", boolean(true))
            .attr("raw", bytes_value(b"\x01\x02"))
            .attr("arr", array(vec![int(1)]))
            .attr("map", kvlist(vec![("k", text("v"))]))
            .attr("empty", empty())
            .encode()
            .0;
        let get = |k: &str| find_attribute(&s, SPAN_ATTRIBUTES, k.as_bytes()).unwrap();
        assert_eq!(get("s"), Some(AnyValue::Str(b"x")));
        assert_eq!(get("i"), Some(AnyValue::Int(-7)));
        assert_eq!(get("d"), Some(AnyValue::Double(2.5)));
        assert_eq!(get("b"), Some(AnyValue::Bool(true)));
        assert_eq!(get("raw"), Some(AnyValue::Bytes(b"\x01\x02")));
        assert!(matches!(get("arr"), Some(AnyValue::Array(_))));
        assert!(matches!(get("map"), Some(AnyValue::KvList(_))));
        assert_eq!(get("empty"), Some(AnyValue::Empty));
        assert_eq!(get("missing"), None);
    }

    #[test]
    fn pdata_conversions_give_zero_values_for_other_types() {
        assert_eq!(AnyValue::Double(3.9).int_or_zero(), 0);
        assert_eq!(AnyValue::Str(b"12").int_or_zero(), 0);
        assert!(!AnyValue::Int(1).bool_or_false());
        assert_eq!(AnyValue::Bool(true).str_or_empty(), b"");
        assert_eq!(AnyValue::Str(b"a").str_or_empty(), b"a");
    }

    #[test]
    fn the_first_of_duplicate_keys_wins() {
        let s = SpanBuilder::new()
            .attr("k", int(1))
            .attr("k", int(2))
            .encode()
            .0;
        assert_eq!(
            find_attribute(&s, SPAN_ATTRIBUTES, b"k").unwrap(),
            Some(AnyValue::Int(1))
        );
    }

    #[test]
    fn span_and_event_fields_are_read_in_one_pass() {
        let s = SpanBuilder::new()
            .name("GET /")
            .kind(2)
            .trace_state("a=b")
            .flags(0x101)
            .status(2, "boom")
            .event("exception", 42, vec![("exception.type", text("E"))])
            .encode()
            .0;
        let f = SpanFields::read(&s).unwrap();
        assert_eq!(f.name, b"GET /");
        assert_eq!(f.kind, 2);
        assert_eq!(f.trace_state, b"a=b");
        assert_eq!(f.flags, 0x101);
        assert_eq!(f.status_message, b"boom");
        let events: Vec<&[u8]> = repeated(&s, 11).map(|e| e.unwrap()).collect();
        assert_eq!(events.len(), 1);
        let e = EventFields::read(events[0]).unwrap();
        assert_eq!((e.name, e.time_unix_nano), (&b"exception"[..], 42));
        assert_eq!(
            find_attribute(events[0], EVENT_ATTRIBUTES, b"exception.type").unwrap(),
            Some(AnyValue::Str(b"E"))
        );
    }

    #[test]
    fn malformed_attributes_are_reported_not_skipped() {
        // Field 9 (attributes) with wire type 0 instead of 2.
        let bad = [0x48, 0x01];
        assert!(find_attribute(&bad, SPAN_ATTRIBUTES, b"k").is_err());
        // A KeyValue whose length runs past the end.
        let truncated = [0x4a, 0x05, 0x0a];
        assert!(find_attribute(&truncated, SPAN_ATTRIBUTES, b"k").is_err());
    }
}
