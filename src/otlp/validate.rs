//! Validation at the door: [`super::request::admit`] walks a whole `ExportTraceServiceRequest` (every nested
//! message's framing, the wire type of every known field, the UTF-8 of every `string`) before any
//! of it is accepted, so what tailgate forwards a strict backend (prost, Python's and Go's
//! protobuf) accepts, and one client's bad span never makes a backend refuse a batch that
//! carries other clients' traces (the Collector's open bug, collector #11449).
//!
//! - Structural damage (truncated or overlong framing, a bad varint, a known field with the wrong
//!   wire type, bad IDs, values nested deeper than [`MAX_VALUE_DEPTH`]) refuses the request with
//!   an [`Invalid`] that names the field path, e.g.
//!   `resource_spans[0].scope_spans[1].spans[3].attributes[2].value`.
//! - Invalid UTF-8 in an otherwise sound request is repaired by default ([`InvalidUtf8::Repair`]):
//!   each invalid sequence becomes U+FFFD and the enclosing messages are re-framed with their new
//!   lengths; every other byte, and every span without damage, is kept exactly. This is the
//!   direction of OpenTelemetry's OTEP 257. [`InvalidUtf8::Refuse`] refuses instead.
//!
//! The walk allocates nothing while a request is sound: errors build their path on the way out
//! (only on the error path), and a repair (rare) rebuilds the body once, driven by the schema
//! table in [`super::schema`]. The walkers are written out per message for speed (this is the
//! per-span hot path; docs/ARCHITECTURE.md, "Spans stay encoded").

use std::fmt;

use super::schema::{self, Kind, MessageSchema};
use super::wire::{bad_type, put_varint, FieldReader, Value, WireError};

pub use super::wire::MAX_VALUE_DEPTH;

/// What the door does with invalid UTF-8 in `string` fields (`receivers.otlp.invalid_utf8`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum InvalidUtf8 {
    /// Replace invalid sequences with U+FFFD and accept the request (the default).
    #[default]
    Repair,
    /// Refuse the request as malformed (InvalidArgument / 400).
    Refuse,
}

/// One step of a field path: a field's proto name and, for repeated fields, the index.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Segment {
    pub field: &'static str,
    pub index: Option<u32>,
}

/// Why a request was refused at the door, and where.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Invalid {
    pub error: WireError,
    /// Innermost segment first (the path is built while the error travels outwards).
    path: Vec<Segment>,
}

impl Invalid {
    /// The field path, outermost first: `resource_spans[0].scope_spans[1].spans[3].name`; empty
    /// for damage in the request's own top-level framing.
    pub fn path(&self) -> String {
        let mut out = String::new();
        for (i, segment) in self.path.iter().rev().enumerate() {
            if i > 0 {
                out.push('.');
            }
            out.push_str(segment.field);
            if let Some(index) = segment.index {
                out.push_str(&format!("[{index}]"));
            }
        }
        out
    }

    /// The metric label for the kind of damage.
    pub fn reason(&self) -> &'static str {
        match self.error {
            WireError::Truncated(_) => "truncated",
            WireError::BadVarint(_) => "bad_varint",
            WireError::BadWireType { .. } => "bad_wire_type",
            WireError::FieldZero(_) | WireError::BadKey(_) => "bad_field_number",
            WireError::TraceIdLength(_)
            | WireError::TraceIdZero
            | WireError::SpanIdLength(_)
            | WireError::ParentSpanIdLength(_)
            | WireError::LinkIdLength { .. } => "bad_id",
            WireError::InvalidUtf8(_) => "invalid_utf8",
            WireError::TooDeep(_) => "too_deep",
        }
    }

    pub(crate) fn within(
        mut self: Box<Self>,
        field: &'static str,
        index: Option<u32>,
    ) -> Box<Self> {
        self.path.push(Segment { field, index });
        self
    }
}

impl fmt::Display for Invalid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.path.is_empty() {
            write!(f, "{}", self.error)
        } else {
            write!(f, "{}: {}", self.path(), self.error)
        }
    }
}

impl std::error::Error for Invalid {}

impl From<WireError> for Box<Invalid> {
    #[cold]
    fn from(error: WireError) -> Self {
        Box::new(Invalid {
            error,
            path: Vec::new(),
        })
    }
}

/// A step's result: boxed so the sound path carries one pointer-sized `Ok`.
pub(crate) type Step = Result<(), Box<Invalid>>;

/// Adds a path segment to an error on its way out.
pub(crate) trait At {
    fn at(self, field: &'static str, index: Option<u32>) -> Self;
}

impl<T> At for Result<T, Box<Invalid>> {
    #[inline(always)]
    fn at(self, field: &'static str, index: Option<u32>) -> Self {
        match self {
            Ok(v) => Ok(v),
            Err(e) => Err(e.within(field, index)),
        }
    }
}

/// The walk's state: what to do with bad UTF-8, and whether any was seen.
pub(crate) struct Walk {
    refuse_utf8: bool,
    pub(crate) bad_utf8: bool,
}

impl Walk {
    pub(crate) fn new(utf8: InvalidUtf8) -> Self {
        Walk {
            refuse_utf8: utf8 == InvalidUtf8::Refuse,
            bad_utf8: false,
        }
    }

    #[inline(always)]
    fn text(&mut self, s: &[u8], at: usize) -> Step {
        if is_text(s) {
            return Ok(());
        }
        self.bad_text(at)
    }

    #[cold]
    fn bad_text(&mut self, at: usize) -> Step {
        if self.refuse_utf8 {
            return Err(WireError::InvalidUtf8(at).into());
        }
        self.bad_utf8 = true;
        Ok(())
    }
}

// ---- the per-message walkers (hot path) ----

/// Whether `s` is valid UTF-8 (ASCII checked first: almost every string is).
#[inline(always)]
pub(crate) fn is_text(s: &[u8]) -> bool {
    s.is_ascii() || std::str::from_utf8(s).is_ok()
}

/// A length of one or two varint bytes at `pos` and the position after it.
#[inline(always)]
fn short_len(buf: &[u8], pos: usize) -> Option<(usize, usize)> {
    let b0 = *buf.get(pos)?;
    if b0 < 0x80 {
        return Some((usize::from(b0), pos + 1));
    }
    let b1 = *buf.get(pos + 1)?;
    if b1 < 0x80 {
        return Some((usize::from(b0 & 0x7f) | (usize::from(b1) << 7), pos + 2));
    }
    None
}

/// The value of a short length-delimited field whose length is at `pos`, and the position after
/// it.
#[inline(always)]
fn short_field(buf: &[u8], pos: usize) -> Option<(&[u8], usize)> {
    let (len, start) = short_len(buf, pos)?;
    let end = start.checked_add(len).filter(|&end| end <= buf.len())?;
    Some((&buf[start..end], end))
}

/// A `KeyValue` as SDKs write it (one-byte keys, short lengths, a scalar or string value):
/// `Some` when it is sound, `None` for anything the general walker must judge.
#[inline(always)]
pub(crate) fn key_value_fast(kv: &[u8]) -> Option<()> {
    let mut pos = 0;
    while pos < kv.len() {
        let key = kv[pos];
        let (value, end) = match key {
            0x0a | 0x12 => short_field(kv, pos + 1)?,
            _ => return None,
        };
        if key == 0x0a {
            if !is_text(value) {
                return None;
            }
        } else {
            any_value_fast(value)?;
        }
        pos = end;
    }
    Some(())
}

/// An `AnyValue` holding a string, bool, int, double or bytes (arrays and kvlists take the
/// general walker).
#[inline(always)]
fn any_value_fast(v: &[u8]) -> Option<()> {
    let mut pos = 0;
    while pos < v.len() {
        let key = v[pos];
        pos += 1;
        match key {
            0x0a | 0x3a => {
                let (s, end) = short_field(v, pos)?;
                if key == 0x0a && !is_text(s) {
                    return None;
                }
                pos = end;
            }
            0x10 | 0x18 | 0x40 => {
                // A varint of at most 9 bytes (the 10th byte's overflow rule is the general
                // walker's to judge).
                let mut i = 0;
                loop {
                    let byte = *v.get(pos + i)?;
                    i += 1;
                    if byte < 0x80 {
                        break;
                    }
                    if i == 9 {
                        return None;
                    }
                }
                pos += i;
            }
            0x21 => {
                pos += 8;
                if pos > v.len() {
                    return None;
                }
            }
            _ => return None,
        }
    }
    Some(())
}

/// A list of `KeyValue`s, one per occurrence of an `attributes` field, is checked item by item.
/// `depth` is the nesting level of the value holding the list (0 for attributes): its values are
/// one level deeper, as an array's items are.
#[inline]
fn key_value(kv: &[u8], base: usize, w: &mut Walk, depth: u32) -> Step {
    let mut fields = FieldReader::at(kv, base);
    while let Some((field, value, at)) = fields.next()? {
        match (field, value) {
            (1, Value::Len(key)) => w.text(key, at).at("key", None)?,
            (2, Value::Len(v)) => any_value(v, at, w, depth + 1).at("value", None)?,
            (3, Value::Varint(_)) => {}
            (1..=3, v) => return wrong_type(&schema::KEY_VALUE, field, &v, at, None),
            _ => {}
        }
    }
    Ok(())
}

fn any_value(v: &[u8], base: usize, w: &mut Walk, depth: u32) -> Step {
    if depth > MAX_VALUE_DEPTH {
        return Err(WireError::TooDeep(base).into());
    }
    let mut fields = FieldReader::at(v, base);
    while let Some((field, value, at)) = fields.next()? {
        match (field, value) {
            (1, Value::Len(s)) => w.text(s, at).at("string_value", None)?,
            (2 | 3 | 8, Value::Varint(_)) | (4, Value::Fixed64(_)) | (7, Value::Len(_)) => {}
            (5, Value::Len(array)) => list(array, at, |item, at| any_value(item, at, w, depth + 1))
                .at("array_value", None)?,
            (6, Value::Len(kvlist)) => {
                list(kvlist, at, |kv, at| key_value(kv, at, w, depth)).at("kvlist_value", None)?
            }
            (1..=8, v) => return wrong_type(&schema::ANY_VALUE, field, &v, at, None),
            _ => {}
        }
    }
    Ok(())
}

/// An `ArrayValue` or `KeyValueList`: field 1 repeated, each item checked by `item`.
fn list(msg: &[u8], base: usize, mut item: impl FnMut(&[u8], usize) -> Step) -> Step {
    let mut i = 0;
    let mut fields = FieldReader::at(msg, base);
    while let Some((field, value, at)) = fields.next()? {
        match (field, value) {
            (1, Value::Len(bytes)) => {
                item(bytes, at).at("values", Some(i))?;
                i += 1;
            }
            (1, v) => return fail(bad_type(field, &v, at), "values", Some(i)),
            _ => {}
        }
    }
    Ok(())
}

/// `error` at the field `field` (and `index`).
#[cold]
fn fail(error: WireError, field: &'static str, index: Option<u32>) -> Step {
    Err(Box::<Invalid>::from(error)).at(field, index)
}

/// The error for a known field read with the wrong wire type, at its path.
#[cold]
fn wrong_type(
    schema: &MessageSchema,
    field: u32,
    value: &Value<'_>,
    at: usize,
    index: Option<u32>,
) -> Step {
    let name = schema.field(field).map_or("?", |f| f.name);
    fail(bad_type(field, value, at), name, index)
}

/// Checks the fields of a span that [`super::read_span`] does not (it checks the IDs, times and
/// the status's framing): names and trace state, attributes, events, links, status.
#[inline]
pub(crate) fn span(s: &[u8], base: usize, w: &mut Walk) -> Step {
    let (mut attributes, mut events, mut links) = (0u32, 0u32, 0u32);
    let mut fields = FieldReader::at(s, base);
    while let Some((field, value, at)) = fields.next()? {
        match (field, value) {
            (9, Value::Len(kv)) => {
                key_value(kv, at, w, 0).at("attributes", Some(attributes))?;
                attributes += 1;
            }
            (3, Value::Len(t)) => w.text(t, at).at("trace_state", None)?,
            (5, Value::Len(name)) => w.text(name, at).at("name", None)?,
            (11, Value::Len(e)) => {
                event(e, at, w).at("events", Some(events))?;
                events += 1;
            }
            (13, Value::Len(l)) => {
                link(l, at, w).at("links", Some(links))?;
                links += 1;
            }
            (15, Value::Len(st)) => status(st, at, w).at("status", None)?,
            (1 | 2 | 4, Value::Len(_))
            | (6 | 10 | 12 | 14, Value::Varint(_))
            | (7 | 8, Value::Fixed64(_))
            | (16, Value::Fixed32(_)) => {}
            (1..=16, v) => {
                let index = match field {
                    9 => Some(attributes),
                    11 => Some(events),
                    13 => Some(links),
                    _ => None,
                };
                return wrong_type(&schema::SPAN, field, &v, at, index);
            }
            _ => {}
        }
    }
    Ok(())
}

pub(crate) fn event(e: &[u8], base: usize, w: &mut Walk) -> Step {
    let mut attributes = 0;
    let mut fields = FieldReader::at(e, base);
    while let Some((field, value, at)) = fields.next()? {
        match (field, value) {
            (1, Value::Fixed64(_)) | (4, Value::Varint(_)) => {}
            (2, Value::Len(name)) => w.text(name, at).at("name", None)?,
            (3, Value::Len(kv)) => {
                key_value(kv, at, w, 0).at("attributes", Some(attributes))?;
                attributes += 1;
            }
            (1..=4, v) => {
                return wrong_type(
                    &schema::EVENT,
                    field,
                    &v,
                    at,
                    (field == 3).then_some(attributes),
                )
            }
            _ => {}
        }
    }
    Ok(())
}

pub(crate) fn link(l: &[u8], base: usize, w: &mut Walk) -> Step {
    let mut attributes = 0;
    let mut fields = FieldReader::at(l, base);
    while let Some((field, value, at)) = fields.next()? {
        match (field, value) {
            // Decoders that type IDs (the Collector's pdata) refuse any other length.
            (1, Value::Len(id)) if !id.is_empty() && id.len() != 16 => {
                let error = WireError::LinkIdLength {
                    field: "trace_id",
                    len: id.len(),
                };
                return fail(error, "trace_id", None);
            }
            (2, Value::Len(id)) if !id.is_empty() && id.len() != 8 => {
                let error = WireError::LinkIdLength {
                    field: "span_id",
                    len: id.len(),
                };
                return fail(error, "span_id", None);
            }
            (1 | 2, Value::Len(_)) => {}
            (3, Value::Len(t)) => w.text(t, at).at("trace_state", None)?,
            (4, Value::Len(kv)) => {
                key_value(kv, at, w, 0).at("attributes", Some(attributes))?;
                attributes += 1;
            }
            (5, Value::Varint(_)) | (6, Value::Fixed32(_)) => {}
            (1..=6, v) => {
                return wrong_type(
                    &schema::LINK,
                    field,
                    &v,
                    at,
                    (field == 4).then_some(attributes),
                )
            }
            _ => {}
        }
    }
    Ok(())
}

pub(crate) fn status(st: &[u8], base: usize, w: &mut Walk) -> Step {
    let mut fields = FieldReader::at(st, base);
    while let Some((field, value, at)) = fields.next()? {
        match (field, value) {
            (2, Value::Len(message)) => w.text(message, at).at("message", None)?,
            (3, Value::Varint(_)) => {}
            (2 | 3, v) => return wrong_type(&schema::STATUS, field, &v, at, None),
            _ => {}
        }
    }
    Ok(())
}

/// A `Resource`.
pub(crate) fn resource(r: &[u8], base: usize, w: &mut Walk) -> Step {
    let (mut attributes, mut entities) = (0, 0);
    let mut fields = FieldReader::at(r, base);
    while let Some((field, value, at)) = fields.next()? {
        match (field, value) {
            (1, Value::Len(kv)) => {
                key_value(kv, at, w, 0).at("attributes", Some(attributes))?;
                attributes += 1;
            }
            (2, Value::Varint(_)) => {}
            (3, Value::Len(entity)) => {
                entity_ref(entity, at, w).at("entity_refs", Some(entities))?;
                entities += 1;
            }
            (1..=3, v) => {
                let index = match field {
                    1 => Some(attributes),
                    3 => Some(entities),
                    _ => None,
                };
                return wrong_type(&schema::RESOURCE, field, &v, at, index);
            }
            _ => {}
        }
    }
    Ok(())
}

fn entity_ref(e: &[u8], base: usize, w: &mut Walk) -> Step {
    let (mut ids, mut descriptions) = (0, 0);
    let mut fields = FieldReader::at(e, base);
    while let Some((field, value, at)) = fields.next()? {
        match (field, value) {
            (1, Value::Len(s)) => w.text(s, at).at("schema_url", None)?,
            (2, Value::Len(s)) => w.text(s, at).at("type", None)?,
            (3, Value::Len(s)) => {
                w.text(s, at).at("id_keys", Some(ids))?;
                ids += 1;
            }
            (4, Value::Len(s)) => {
                w.text(s, at).at("description_keys", Some(descriptions))?;
                descriptions += 1;
            }
            (1..=4, v) => {
                let index = match field {
                    3 => Some(ids),
                    4 => Some(descriptions),
                    _ => None,
                };
                return wrong_type(&schema::ENTITY_REF, field, &v, at, index);
            }
            _ => {}
        }
    }
    Ok(())
}

/// An `InstrumentationScope`.
pub(crate) fn scope(s: &[u8], base: usize, w: &mut Walk) -> Step {
    let mut attributes = 0;
    let mut fields = FieldReader::at(s, base);
    while let Some((field, value, at)) = fields.next()? {
        match (field, value) {
            (1, Value::Len(name)) => w.text(name, at).at("name", None)?,
            (2, Value::Len(version)) => w.text(version, at).at("version", None)?,
            (3, Value::Len(kv)) => {
                key_value(kv, at, w, 0).at("attributes", Some(attributes))?;
                attributes += 1;
            }
            (4, Value::Varint(_)) => {}
            (1..=4, v) => {
                return wrong_type(
                    &schema::SCOPE,
                    field,
                    &v,
                    at,
                    (field == 3).then_some(attributes),
                )
            }
            _ => {}
        }
    }
    Ok(())
}

/// A `schema_url` string.
#[inline]
pub(crate) fn text(s: &[u8], at: usize, w: &mut Walk) -> Step {
    w.text(s, at)
}

// ---- repair (rare path, table-driven) ----

/// Whether a structurally sound encoded `Span` has a string that is not valid UTF-8 anywhere in
/// it (what a repair changes). For tests and the fuzz targets' property checks.
pub fn span_has_invalid_utf8(span: &[u8]) -> bool {
    has_bad_utf8(span, &schema::SPAN)
}

/// Whether any `string` field in `msg` (a `schema` message, structurally sound) or below it is
/// invalid UTF-8.
fn has_bad_utf8(msg: &[u8], schema: &MessageSchema) -> bool {
    let mut fields = FieldReader::new(msg);
    while let Ok(Some((number, value, _))) = fields.next() {
        let (Some(field), Value::Len(bytes)) = (schema.field(number), value) else {
            continue;
        };
        match field.kind {
            Kind::String if std::str::from_utf8(bytes).is_err() => return true,
            Kind::Message(inner) if has_bad_utf8(bytes, inner) => return true,
            _ => {}
        }
    }
    false
}

/// Writes `msg` (a sound `schema` message) to `out` with every invalid UTF-8 sequence replaced by
/// U+FFFD and the messages around it re-framed; fields without damage are copied byte for byte.
pub(crate) fn repair_message(msg: &[u8], schema: &MessageSchema, out: &mut Vec<u8>) {
    let mut fields = FieldReader::new(msg);
    loop {
        let start = fields.offset();
        let Ok(Some((number, value, _))) = fields.next() else {
            // Sound messages end cleanly; anything else is copied as it is.
            out.extend_from_slice(&msg[start..]);
            return;
        };
        let end = fields.offset();
        if let (Some(field), Value::Len(bytes)) = (schema.field(number), value) {
            match field.kind {
                Kind::String if std::str::from_utf8(bytes).is_err() => {
                    let text = String::from_utf8_lossy(bytes);
                    put_varint(out, u64::from(number << 3 | 2));
                    put_varint(out, text.len() as u64);
                    out.extend_from_slice(text.as_bytes());
                    continue;
                }
                Kind::Message(inner) if has_bad_utf8(bytes, inner) => {
                    let mut repaired = Vec::with_capacity(bytes.len() + 16);
                    repair_message(bytes, inner, &mut repaired);
                    put_varint(out, u64::from(number << 3 | 2));
                    put_varint(out, repaired.len() as u64);
                    out.extend_from_slice(&repaired);
                    continue;
                }
                _ => {}
            }
        }
        out.extend_from_slice(&msg[start..end]);
    }
}

/// The spans of a sound request that a repair changes: those with damage of their own, and every
/// span under a damaged resource or scope.
pub(crate) fn count_repaired_spans(body: &[u8]) -> usize {
    let mut count = 0;
    for resource_spans in nested(body, 1) {
        let resource_bad = nested(resource_spans, 1).any(|r| has_bad_utf8(r, &schema::RESOURCE))
            || nested(resource_spans, 3).any(|s| std::str::from_utf8(s).is_err());
        for scope_spans in nested(resource_spans, 2) {
            let scope_bad = resource_bad
                || nested(scope_spans, 1).any(|s| has_bad_utf8(s, &schema::SCOPE))
                || nested(scope_spans, 3).any(|s| std::str::from_utf8(s).is_err());
            count += nested(scope_spans, 2)
                .filter(|span| scope_bad || has_bad_utf8(span, &schema::SPAN))
                .count();
        }
    }
    count
}

/// The length-delimited values of field `number` in a sound message.
fn nested(msg: &[u8], number: u32) -> impl Iterator<Item = &[u8]> {
    let mut fields = FieldReader::new(msg);
    std::iter::from_fn(move || loop {
        match fields.next() {
            Ok(Some((n, Value::Len(bytes), _))) if n == number => return Some(bytes),
            Ok(Some(_)) => continue,
            _ => return None,
        }
    })
}

#[cfg(test)]
mod tests;
