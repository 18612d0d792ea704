//! Walking an `ExportTraceServiceRequest`: [`parse_export_request`] validates a request body and
//! finds every span in it, with the resource and scope it was sent under and the few fields every
//! decision needs ([`SpanInfo`]), without decoding anything into structs or allocating per span.
//!
//! Field numbers are those of `opentelemetry/proto/trace/v1/trace.proto`; the prost views in
//! `proto/tailgate/otlp_views.proto` mirror them and the tests use them as an independent check.

use bytes::Bytes;

use super::schema;
use super::validate::{self, At, Invalid, InvalidUtf8, Walk};
use super::wire::{bad_type, wire_type_of, FieldReader, Value, WireError};
use super::TraceId;

/// OTLP span status codes (`Status.code`).
pub mod status {
    pub const UNSET: u8 = 0;
    pub const OK: u8 = 1;
    pub const ERROR: u8 = 2;
}

/// What the buffer and the common policies need from one span, read while walking it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SpanInfo {
    pub trace_id: TraceId,
    pub start_unix_nano: u64,
    pub end_unix_nano: u64,
    /// OTLP `Status.code`: 0 unset, 1 ok, 2 error (other values are kept as sent).
    pub status_code: i32,
    /// True when `parent_span_id` is empty: the span is a root.
    pub is_root: bool,
}

/// Reads a span's summary fields and validates its IDs. `base` is the span's offset in the body.
///
/// Spans as SDKs write them (one-byte keys for fields 1-15, lengths under 16 KiB) take a
/// specialised loop; anything else, including every malformed span, takes the general walker,
/// which also produces the error.
#[inline]
pub fn read_span(span: &[u8], base: usize) -> Result<SpanInfo, WireError> {
    match read_span_fast(span) {
        Some(info) => Ok(info),
        None => read_span_general(span, base),
    }
}

/// A length of one or two varint bytes at `pos`, with the position after it; `None` for longer
/// or truncated varints.
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

/// Skips a varint at `pos` of at most 10 bytes; `None` when truncated or too long.
#[inline(always)]
fn skip_varint(buf: &[u8], pos: usize) -> Option<usize> {
    let mut p = pos;
    while p < buf.len() && p - pos < 10 {
        let byte = buf[p];
        p += 1;
        if byte < 0x80 {
            return Some(p);
        }
    }
    None
}

/// The fast path of [`read_span`]: `None` when the span is unusual or invalid in any way (the
/// general walker then decides and reports).
#[inline]
fn read_span_fast(span: &[u8]) -> Option<SpanInfo> {
    scan_span_fast::<false>(span, 0)
}

/// The door's per-span hot path: the summary of [`read_span_fast`] and the deep checks of
/// [`validate::span`] in one pass, for spans as SDKs write them. `None` when anything is unusual,
/// invalid or not ASCII-clean in a way the general walkers must judge (they then decide, report
/// the path, or note UTF-8 to repair); `Some` only for a span both would pass unchanged.
#[inline]
pub(crate) fn check_span_fast(span: &[u8], base: usize) -> Option<SpanInfo> {
    scan_span_fast::<true>(span, base)
}

/// The one loop behind [`read_span_fast`] and [`check_span_fast`]: the summary fields, and with
/// `DEEP` the door's checks of names, attributes, events, links and status (`base` is the span's
/// offset in the request, for the general walkers' positions). One loop on purpose: this is the
/// per-span hot path, and a match per field byte keeps it free of calls (see the fast-path note
/// on `read_span`); `DEEP` is a constant, so each caller gets its own loop with no test of it.
#[inline(always)]
fn scan_span_fast<const DEEP: bool>(span: &[u8], base: usize) -> Option<SpanInfo> {
    let mut info = SpanInfo {
        trace_id: [0; 16],
        start_unix_nano: 0,
        end_unix_nano: 0,
        status_code: 0,
        is_root: true,
    };
    let mut has_trace_id = false;
    let mut has_span_id = false;
    let mut pos = 0;
    let n = span.len();
    while pos < n {
        let key = span[pos];
        pos += 1;
        match key {
            // Length-delimited fields 1-15.
            0x0a | 0x12 | 0x1a | 0x22 | 0x2a | 0x4a | 0x5a | 0x6a | 0x7a => {
                let (len, start) = short_len(span, pos)?;
                let end = start.checked_add(len).filter(|&end| end <= n)?;
                let value = &span[start..end];
                match key {
                    0x0a => {
                        info.trace_id = value.try_into().ok()?;
                        has_trace_id = true;
                    }
                    0x12 => {
                        if len != 8 {
                            return None;
                        }
                        has_span_id = true;
                    }
                    0x22 => {
                        if len != 0 && len != 8 {
                            return None;
                        }
                        info.is_root = len == 0;
                    }
                    0x7a => {
                        info.status_code = read_status_fast(value)?;
                        if DEEP {
                            let mut walk = Walk::new(InvalidUtf8::Refuse);
                            validate::status(value, base + start, &mut walk).ok()?;
                        }
                    }
                    // trace_state, name
                    0x1a | 0x2a if DEEP && !validate::is_text(value) => return None,
                    0x4a if DEEP => validate::key_value_fast(value)?,
                    0x5a | 0x6a if DEEP => {
                        // Events and links are rarer: the general walkers, any fault (or UTF-8
                        // to repair) sending the whole span down the general path.
                        let mut walk = Walk::new(InvalidUtf8::Refuse);
                        let at = base + start;
                        let checked = if key == 0x5a {
                            validate::event(value, at, &mut walk)
                        } else {
                            validate::link(value, at, &mut walk)
                        };
                        checked.ok()?;
                    }
                    _ => {}
                }
                pos = end;
            }
            // start_time_unix_nano, end_time_unix_nano (fixed64).
            0x39 | 0x41 => {
                let bytes: [u8; 8] = span.get(pos..pos + 8)?.try_into().ok()?;
                let t = u64::from_le_bytes(bytes);
                if key == 0x39 {
                    info.start_unix_nano = t;
                } else {
                    info.end_unix_nano = t;
                }
                pos += 8;
            }
            // kind, dropped attributes / events / links counts (varints).
            0x30 | 0x50 | 0x60 | 0x70 => pos = skip_varint(span, pos)?,
            // flags (field 16, fixed32): a two-byte key.
            0x85 if span.get(pos) == Some(&0x01) => {
                pos += 5;
                if pos > n {
                    return None;
                }
            }
            _ => return None,
        }
    }
    if !has_trace_id || !has_span_id || info.trace_id == [0; 16] {
        return None;
    }
    Some(info)
}

/// `Status.code` from a status message with one-byte keys; `None` for anything unusual.
#[inline]
fn read_status_fast(status: &[u8]) -> Option<i32> {
    let mut code = 0;
    let mut pos = 0;
    while pos < status.len() {
        let key = status[pos];
        pos += 1;
        match key {
            // message (field 2)
            0x12 => {
                let (len, start) = short_len(status, pos)?;
                pos = start.checked_add(len).filter(|&end| end <= status.len())?;
            }
            // code (field 3)
            0x18 => {
                let byte = *status.get(pos)?;
                if byte >= 0x80 {
                    return None;
                }
                code = i32::from(byte);
                pos += 1;
            }
            _ => return None,
        }
    }
    Some(code)
}

fn read_span_general(span: &[u8], base: usize) -> Result<SpanInfo, WireError> {
    let mut info = SpanInfo {
        trace_id: [0; 16],
        start_unix_nano: 0,
        end_unix_nano: 0,
        status_code: 0,
        is_root: true,
    };
    let mut trace_id_len = 0usize;
    let mut span_id_len = 0usize;
    let mut fields = FieldReader::at(span, base);
    while let Some((field, value, at)) = fields.next()? {
        match (field, value) {
            (1, Value::Len(id)) => {
                trace_id_len = id.len();
                if id.len() == 16 {
                    info.trace_id.copy_from_slice(id);
                }
            }
            (2, Value::Len(id)) => span_id_len = id.len(),
            (4, Value::Len(parent)) => {
                if !parent.is_empty() && parent.len() != 8 {
                    return Err(WireError::ParentSpanIdLength(parent.len()));
                }
                info.is_root = parent.is_empty();
            }
            (7, Value::Fixed64(t)) => info.start_unix_nano = t,
            (8, Value::Fixed64(t)) => info.end_unix_nano = t,
            (15, Value::Len(status)) => info.status_code = read_status_code(status, at)?,
            (1 | 2 | 4 | 15, _) | (7 | 8, _) => {
                // A known field with the wrong wire type is as malformed as a truncated one.
                return Err(WireError::BadWireType {
                    field,
                    wire_type: wire_type_of(&value),
                    at,
                });
            }
            _ => {}
        }
    }
    if trace_id_len != 16 {
        return Err(WireError::TraceIdLength(trace_id_len));
    }
    if info.trace_id == [0; 16] {
        return Err(WireError::TraceIdZero);
    }
    if span_id_len != 8 {
        return Err(WireError::SpanIdLength(span_id_len));
    }
    Ok(info)
}

fn read_status_code(status: &[u8], base: usize) -> Result<i32, WireError> {
    let mut code = 0;
    let mut fields = FieldReader::at(status, base);
    while let Some((field, value, _)) = fields.next()? {
        if let (3, Value::Varint(v)) = (field, value) {
            code = v as i32;
        }
    }
    Ok(code)
}

/// The resource and scope a group of spans was sent under, as encoded bytes.
///
/// `resource` / `scope` are `None` when the field was absent, `Some(empty)` when it was present
/// but empty: both round-trip exactly.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash)]
pub struct Origin {
    pub resource: Option<Bytes>,
    pub resource_schema_url: Bytes,
    pub scope: Option<Bytes>,
    pub scope_schema_url: Bytes,
}

impl Origin {
    /// Heap bytes this origin holds (for memory accounting).
    pub fn heap_bytes(&self) -> usize {
        self.resource.as_ref().map_or(0, Bytes::len)
            + self.scope.as_ref().map_or(0, Bytes::len)
            + self.resource_schema_url.len()
            + self.scope_schema_url.len()
    }
}

/// One span found in a request: where its bytes are, which origin it belongs to, its summary.
#[derive(Debug, Clone, Copy)]
pub struct SpanRef {
    /// Byte range of the encoded `Span` message inside the request body.
    pub range: (usize, usize),
    /// Index into [`ParsedRequest::origins`].
    pub origin: usize,
    pub info: SpanInfo,
}

/// A validated request: its origins and spans, referring into the request body by offset.
#[derive(Debug, Default)]
pub struct ParsedRequest {
    pub origins: Vec<Origin>,
    pub spans: Vec<SpanRef>,
}

/// A request the door accepted.
#[derive(Debug)]
pub enum Admitted {
    /// Sound as sent: the spans refer into the body as received.
    Sound(ParsedRequest),
    /// Invalid UTF-8 was repaired: the spans refer into `body`, the repaired request.
    Repaired {
        body: Vec<u8>,
        parsed: ParsedRequest,
        /// Spans whose own bytes, resource or scope were repaired.
        spans: usize,
    },
}

/// Validates a request body whole at the door (see [`super::validate`]): every nested message,
/// wire type and string; invalid UTF-8 repaired or refused as `utf8` says.
pub fn admit(body: &[u8], utf8: InvalidUtf8) -> Result<Admitted, Invalid> {
    let mut walk = Walk::new(utf8);
    let parsed = walk_request(body, Some(&mut walk)).map_err(|e| *e)?;
    if !walk.bad_utf8 {
        return Ok(Admitted::Sound(parsed));
    }
    drop(parsed);
    let spans = validate::count_repaired_spans(body);
    let mut repaired = Vec::with_capacity(body.len() + 64);
    validate::repair_message(body, &schema::EXPORT_REQUEST, &mut repaired);
    // The repaired body must pass with UTF-8 refused; if it did not, refusing is the safe answer.
    let mut walk = Walk::new(InvalidUtf8::Refuse);
    let parsed = walk_request(&repaired, Some(&mut walk)).map_err(|e| *e)?;
    Ok(Admitted::Repaired {
        body: repaired,
        parsed,
        spans,
    })
}

/// Walks an `ExportTraceServiceRequest` for its spans and origins, checking the framing down to
/// each span's summary fields. For requests tailgate wrote itself or already admitted (the door
/// validates in full with [`super::validate::admit`]).
///
/// Resource and scope encodings are copied out of the body (they are small and shared by many
/// spans), so nothing built from the result pins the request buffer.
pub fn parse_export_request(body: &[u8]) -> Result<ParsedRequest, WireError> {
    walk_request(body, None).map_err(|e| e.error)
}

/// The walk behind [`parse_export_request`] and [`super::validate::admit`]: with `deep`, every
/// nested message, wire type and string is checked too, and errors name their field path.
pub(crate) fn walk_request(
    body: &[u8],
    mut deep: Option<&mut Walk>,
) -> Result<ParsedRequest, Box<Invalid>> {
    // Room for spans of about 300 bytes and more without growing (growing copied the vector
    // nine times for a 512-span request); the vector lives only as long as the request.
    let mut parsed = ParsedRequest {
        origins: Vec::new(),
        spans: Vec::with_capacity(body.len() / 300 + 4),
    };
    let mut request = FieldReader::new(body);
    let mut index = 0;
    while let Some((field, value, at)) = request.next()? {
        if field != 1 {
            continue;
        }
        let Value::Len(resource_spans) = value else {
            return Err(Box::<Invalid>::from(bad_type(field, &value, at)))
                .at("resource_spans", Some(index));
        };
        parse_resource_spans(resource_spans, at, &mut parsed, deep.as_deref_mut())
            .at("resource_spans", Some(index))?;
        index += 1;
    }
    Ok(parsed)
}

fn parse_resource_spans(
    msg: &[u8],
    base: usize,
    parsed: &mut ParsedRequest,
    mut deep: Option<&mut Walk>,
) -> Result<(), Box<Invalid>> {
    // First pass: the resource and schema URL may sit anywhere among the fields.
    let mut resource = None;
    let mut schema_url: &[u8] = &[];
    let mut fields = FieldReader::at(msg, base);
    while let Some((field, value, at)) = fields.next()? {
        match (field, value) {
            (1, Value::Len(r)) => {
                if let Some(w) = deep.as_deref_mut() {
                    validate::resource(r, at, w).at("resource", None)?;
                }
                resource = Some(r);
            }
            (3, Value::Len(s)) => {
                if let Some(w) = deep.as_deref_mut() {
                    validate::text(s, at, w).at("schema_url", None)?;
                }
                schema_url = s;
            }
            (1..=3, v) if !matches!(v, Value::Len(_)) => {
                let name = ["resource", "scope_spans", "schema_url"][field as usize - 1];
                return Err(Box::<Invalid>::from(bad_type(field, &v, at))).at(name, None);
            }
            _ => {}
        }
    }
    let resource = resource.map(Bytes::copy_from_slice);
    let resource_schema_url = Bytes::copy_from_slice(schema_url);
    let mut fields = FieldReader::at(msg, base);
    let mut index = 0;
    while let Some((field, value, at)) = fields.next()? {
        if let (2, Value::Len(scope_spans)) = (field, value) {
            parse_scope_spans(
                scope_spans,
                at,
                &resource,
                &resource_schema_url,
                parsed,
                deep.as_deref_mut(),
            )
            .at("scope_spans", Some(index))?;
            index += 1;
        }
    }
    Ok(())
}

fn parse_scope_spans(
    msg: &[u8],
    base: usize,
    resource: &Option<Bytes>,
    resource_schema_url: &Bytes,
    parsed: &mut ParsedRequest,
    mut deep: Option<&mut Walk>,
) -> Result<(), Box<Invalid>> {
    let mut scope = None;
    let mut schema_url: &[u8] = &[];
    let mut fields = FieldReader::at(msg, base);
    while let Some((field, value, at)) = fields.next()? {
        match (field, value) {
            (1, Value::Len(s)) => {
                if let Some(w) = deep.as_deref_mut() {
                    validate::scope(s, at, w).at("scope", None)?;
                }
                scope = Some(s);
            }
            (3, Value::Len(s)) => {
                if let Some(w) = deep.as_deref_mut() {
                    validate::text(s, at, w).at("schema_url", None)?;
                }
                schema_url = s;
            }
            (1..=3, v) if !matches!(v, Value::Len(_)) => {
                let name = ["scope", "spans", "schema_url"][field as usize - 1];
                return Err(Box::<Invalid>::from(bad_type(field, &v, at))).at(name, None);
            }
            _ => {}
        }
    }
    let origin = parsed.origins.len();
    let first_span = parsed.spans.len();
    let mut fields = FieldReader::at(msg, base);
    let mut index = 0;
    while let Some((field, value, at)) = fields.next()? {
        if let (2, Value::Len(span)) = (field, value) {
            let fast = match deep {
                Some(_) => check_span_fast(span, at),
                None => None,
            };
            let info = match fast {
                Some(info) => info,
                None => {
                    let info = match read_span(span, at) {
                        Ok(info) => info,
                        Err(e) => return Err(Box::<Invalid>::from(e)).at("spans", Some(index)),
                    };
                    if let Some(w) = deep.as_deref_mut() {
                        validate::span(span, at, w).at("spans", Some(index))?;
                    }
                    info
                }
            };
            parsed.spans.push(SpanRef {
                range: (at, at + span.len()),
                origin,
                info,
            });
            index += 1;
        }
    }
    if parsed.spans.len() > first_span {
        parsed.origins.push(Origin {
            resource: resource.clone(),
            resource_schema_url: resource_schema_url.clone(),
            scope: scope.map(Bytes::copy_from_slice),
            scope_schema_url: Bytes::copy_from_slice(schema_url),
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::otlp::proto::views;
    use crate::otlp::testing::*;
    use prost::Message;

    #[test]
    fn walking_a_request_finds_every_span_with_its_origin_and_summary() {
        let body = request(vec![
            (
                b"\x0a\x02ab".to_vec(),
                vec![vec![span(&T1, &S1, &[], 0), span(&T2, &S1, &S1, 2)]],
            ),
            (b"".to_vec(), vec![vec![span(&T1, &S1, &S1, 1)]]),
        ]);
        let parsed = parse_export_request(&body).unwrap();
        assert_eq!(parsed.spans.len(), 3);
        assert_eq!(parsed.origins.len(), 2);
        let s = &parsed.spans[1];
        assert_eq!(s.info.trace_id, T2);
        assert_eq!(s.info.status_code, status::ERROR as i32);
        assert!(!s.info.is_root);
        assert!(parsed.spans[0].info.is_root);
        assert_eq!(parsed.spans[0].info.end_unix_nano, 3_500);
        assert_eq!(
            &body[s.range.0..s.range.1],
            &span(&T2, &S1, &S1, 2)[..],
            "span bytes are the exact encoding"
        );
        assert_eq!(
            parsed.origins[0].resource.as_deref(),
            Some(&b"\x0a\x02ab"[..])
        );
        assert_eq!(
            &parsed.origins[0].resource_schema_url[..],
            b"https://opentelemetry.io/schemas/1.21.0"
        );
        assert_eq!(parsed.spans[2].origin, 1);
    }

    #[test]
    fn invalid_ids_and_framing_are_rejected_with_the_reason() {
        let cases: Vec<(Vec<u8>, WireError)> = vec![
            (
                request(vec![(vec![], vec![vec![span(&[0; 16], &S1, &[], 0)]])]),
                WireError::TraceIdZero,
            ),
            (
                request(vec![(vec![], vec![vec![span(&[1; 8], &S1, &[], 0)]])]),
                WireError::TraceIdLength(8),
            ),
            (
                request(vec![(vec![], vec![vec![span(&[], &S1, &[], 0)]])]),
                WireError::TraceIdLength(0),
            ),
            (
                request(vec![(vec![], vec![vec![span(&T1, &[1; 4], &[], 0)]])]),
                WireError::SpanIdLength(4),
            ),
            (
                request(vec![(vec![], vec![vec![span(&T1, &S1, &[1; 3], 0)]])]),
                WireError::ParentSpanIdLength(3),
            ),
        ];
        for (body, expected) in cases {
            assert_eq!(parse_export_request(&body).unwrap_err(), expected);
        }
        let good = request(vec![(vec![], vec![vec![span(&T1, &S1, &[], 0)]])]);
        let truncated = &good[..good.len() - 3];
        assert!(matches!(
            parse_export_request(truncated).unwrap_err(),
            WireError::Truncated(_)
        ));
        assert!(matches!(
            parse_export_request(b"\x0f\x01").unwrap_err(),
            WireError::BadWireType { wire_type: 7, .. }
        ));
        assert!(matches!(
            parse_export_request(&[
                0x0a, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x01
            ])
            .unwrap_err(),
            WireError::BadVarint(_)
        ));
    }

    #[test]
    fn an_empty_request_is_valid_and_has_no_spans() {
        let parsed = parse_export_request(&[]).unwrap();
        assert!(parsed.spans.is_empty());
    }

    /// Every prefix of a span, and spans with each kind of unusual field, read the same through
    /// the fast loop as through the general walker (or fail identically).
    #[test]
    fn the_fast_span_reader_agrees_with_the_general_walker() {
        let mut spans = vec![
            span(&T1, &S1, &[], 0),
            span(&T1, &S1, &S1, 2),
            span(&T1, &S1, &S1, 1),
            span(&T1, &S1, &[], 300), // status code with a two-byte varint
            span(&T1, &S1, &[1; 3], 0),
            span(&[0; 16], &S1, &[], 0),
            span(&T1, &[1; 4], &[], 0),
        ];
        let full = views::Span {
            trace_id: Bytes::copy_from_slice(&T2),
            span_id: Bytes::copy_from_slice(&S1),
            trace_state: "k=v".into(),
            parent_span_id: Bytes::copy_from_slice(&S1),
            flags: 0x301,
            name: "x".repeat(300), // two-byte length
            kind: 2,
            start_time_unix_nano: u64::MAX,
            end_time_unix_nano: 1,
            attributes: vec![Bytes::from_static(b"\x0a\x01k")],
            dropped_attributes_count: 1,
            events: vec![Bytes::from_static(b"")],
            dropped_events_count: 300,
            links: vec![Bytes::from_static(b"")],
            dropped_links_count: 1,
            status: Bytes::from_static(b"\x12\x03bad\x18\x02"),
        }
        .encode_to_vec();
        spans.push(full.clone());
        // Unknown field 20 (two-byte key), and a status with an unknown field.
        let mut unknown = full.clone();
        unknown.extend_from_slice(&[0xa0, 0x01, 0x05]);
        spans.push(unknown);
        let mut odd_status = span(&T1, &S1, &[], 0);
        odd_status.extend_from_slice(b"\x7a\x04\x20\x01\x18\x02");
        spans.push(odd_status);
        for s in &spans {
            for end in 0..=s.len() {
                let prefix = &s[..end];
                let general = read_span_general(prefix, 5);
                assert_eq!(read_span(prefix, 5), general, "{prefix:?}");
                if let Some(fast) = read_span_fast(prefix) {
                    assert_eq!(Ok(fast), general, "{prefix:?}");
                }
            }
        }
        let info = read_span(&full, 0).unwrap();
        assert_eq!((info.status_code, info.is_root), (2, false));
        assert!(
            read_span_fast(&full).is_some(),
            "a full span takes the fast path"
        );
    }
}
