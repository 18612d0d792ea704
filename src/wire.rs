//! The protobuf wire format of OTLP trace requests, walked and written by hand.
//!
//! This is the core of tailgate's performance design (DESIGN.md, "Spans stay encoded"): a request
//! is never decoded into structs. [`parse_export_request`] walks
//! `ExportTraceServiceRequest → ResourceSpans → ScopeSpans → Span`, validates what the gateway
//! relies on (framing, trace and span ID lengths), and returns, for each span, its encoded bytes
//! plus the handful of fields every decision needs. [`RequestWriter`] does the reverse for the
//! exporter: it frames already-encoded resource, scope and span bytes into a new request, so a
//! kept span goes out byte-for-byte as it came in.
//!
//! Field numbers are those of `opentelemetry/proto/trace/v1/trace.proto`; `proto/tailgate/
//! otlp_views.proto` mirrors them as prost messages that the tests use as an independent check.

use bytes::{BufMut, Bytes, BytesMut};

/// A 16-byte W3C trace ID.
pub type TraceId = [u8; 16];

/// Why a request body is not a valid OTLP trace export request.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WireError {
    #[error("message truncated at byte {0}")]
    Truncated(usize),
    #[error("malformed varint at byte {0}")]
    BadVarint(usize),
    #[error("unsupported wire type {wire_type} for field {field} at byte {at}")]
    BadWireType {
        field: u32,
        wire_type: u8,
        at: usize,
    },
    #[error("field number 0 at byte {0}")]
    FieldZero(usize),
    #[error("span has a trace_id of {0} bytes; it must be 16")]
    TraceIdLength(usize),
    #[error("span has an all-zero trace_id")]
    TraceIdZero,
    #[error("span has a span_id of {0} bytes; it must be 8")]
    SpanIdLength(usize),
    #[error("span has a parent_span_id of {0} bytes; it must be empty or 8")]
    ParentSpanIdLength(usize),
}

/// One field's value as it sits on the wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Value<'a> {
    Varint(u64),
    Fixed64(u64),
    Len(&'a [u8]),
    Fixed32(u32),
}

/// Iterates the top-level fields of one encoded message. Offsets in errors are relative to `base`,
/// the message's position in the whole request, so an error points at the byte in the body.
pub struct FieldReader<'a> {
    buf: &'a [u8],
    pos: usize,
    base: usize,
}

impl<'a> FieldReader<'a> {
    pub fn new(buf: &'a [u8]) -> Self {
        Self::at(buf, 0)
    }

    fn at(buf: &'a [u8], base: usize) -> Self {
        Self { buf, pos: 0, base }
    }

    /// The absolute offset of the last value returned (used to report nested errors).
    fn offset(&self) -> usize {
        self.base + self.pos
    }

    #[inline]
    fn varint(&mut self) -> Result<u64, WireError> {
        // Keys and most lengths fit one byte.
        if let Some(&byte) = self.buf.get(self.pos) {
            if byte < 0x80 {
                self.pos += 1;
                return Ok(u64::from(byte));
            }
        }
        self.varint_multi_byte()
    }

    #[inline(never)]
    fn varint_multi_byte(&mut self) -> Result<u64, WireError> {
        let mut value = 0u64;
        for i in 0..10 {
            let Some(&byte) = self.buf.get(self.pos) else {
                return Err(WireError::Truncated(self.offset()));
            };
            self.pos += 1;
            value |= u64::from(byte & 0x7f) << (7 * i);
            if byte < 0x80 {
                return Ok(value);
            }
        }
        Err(WireError::BadVarint(self.offset()))
    }

    #[inline]
    fn take(&mut self, n: usize) -> Result<&'a [u8], WireError> {
        let end = self
            .pos
            .checked_add(n)
            .filter(|&end| end <= self.buf.len())
            .ok_or(WireError::Truncated(self.offset()))?;
        let slice = &self.buf[self.pos..end];
        self.pos = end;
        Ok(slice)
    }

    /// The next `(field number, value, absolute offset of the value)`, or `None` at the end.
    #[allow(clippy::should_implement_trait)]
    #[inline]
    pub fn next(&mut self) -> Result<Option<(u32, Value<'a>, usize)>, WireError> {
        if self.pos >= self.buf.len() {
            return Ok(None);
        }
        let at = self.offset();
        let key = self.varint()?;
        let field = (key >> 3) as u32;
        if field == 0 {
            return Err(WireError::FieldZero(at));
        }
        let wire_type = (key & 7) as u8;
        let value = match wire_type {
            0 => Value::Varint(self.varint()?),
            1 => Value::Fixed64(u64::from_le_bytes(self.take(8)?.try_into().unwrap())),
            2 => {
                let len = self.varint()?;
                let len = usize::try_from(len).map_err(|_| WireError::Truncated(self.offset()))?;
                let value_at = self.offset();
                return Ok(Some((field, Value::Len(self.take(len)?), value_at)));
            }
            5 => Value::Fixed32(u32::from_le_bytes(self.take(4)?.try_into().unwrap())),
            _ => {
                return Err(WireError::BadWireType {
                    field,
                    wire_type,
                    at,
                })
            }
        };
        Ok(Some((field, value, self.offset())))
    }
}

/// OTLP span status codes, as the bit they occupy in [`SpanInfo::status_bit`] sets.
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

/// What the buffer keeps per span beside its bytes so that a decision never walks the span again:
/// [`SpanInfo`] less the trace ID (the trace's own), and the span's encoded length, stored as
/// [`SpanSummary::SIZE`] = 21 bytes (about 4 % of a typical 500-byte span). With the lengths, a
/// decision finds each span in its chunk without reading the chunk's bytes: a trace that is not
/// kept, and whose policies need only the summary, is decided without touching its spans.
///
/// The status code takes 7 bits of `flags`; a code outside `0..127` (not a valid OTLP code, but
/// kept as sent) is marked `REREAD` and read again from the span bytes when needed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SpanSummary {
    pub start_unix_nano: u64,
    pub end_unix_nano: u64,
    /// Length of the encoded `Span` message (without its field header).
    pub len: u32,
    /// Bit 7: root span. Bits 0-6: status code, or `REREAD`.
    flags: u8,
}

impl SpanSummary {
    /// Bytes of the stored form ([`SpanSummary::write`]).
    pub const SIZE: usize = 21;
    const ROOT: u8 = 0x80;
    const REREAD: u8 = 0x7f;

    /// The summary of a span of `len` encoded bytes.
    pub fn of(info: &SpanInfo, len: usize) -> Self {
        let status = match u8::try_from(info.status_code) {
            Ok(code) if code < Self::REREAD => code,
            _ => Self::REREAD,
        };
        Self {
            start_unix_nano: info.start_unix_nano,
            end_unix_nano: info.end_unix_nano,
            len: len as u32,
            flags: status | if info.is_root { Self::ROOT } else { 0 },
        }
    }

    /// Bytes the span takes in a framed run ([`put_framed_span`]).
    pub fn framed_len(&self) -> usize {
        len_field_size(self.len as usize)
    }

    pub fn is_root(&self) -> bool {
        self.flags & Self::ROOT != 0
    }

    /// Appends the stored form.
    #[inline]
    pub fn write(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(&self.start_unix_nano.to_le_bytes());
        out.extend_from_slice(&self.end_unix_nano.to_le_bytes());
        out.extend_from_slice(&self.len.to_le_bytes());
        out.push(self.flags);
    }

    /// Reads the stored form from the first [`SpanSummary::SIZE`] bytes of `bytes`.
    #[inline]
    pub fn read(bytes: &[u8]) -> Self {
        let word = |at: usize| u64::from_le_bytes(bytes[at..at + 8].try_into().unwrap());
        Self {
            start_unix_nano: word(0),
            end_unix_nano: word(8),
            len: u32::from_le_bytes(bytes[16..20].try_into().unwrap()),
            flags: bytes[20],
        }
    }

    /// The span's [`SpanInfo`]; `span` is its encoded bytes, read only for an unusual status code.
    #[inline]
    pub fn info(&self, trace_id: TraceId, span: &[u8]) -> SpanInfo {
        let status = self.flags & !Self::ROOT;
        let status_code = if status == Self::REREAD {
            // Every buffered span passed `read_span` at the door, so this cannot fail.
            read_span(span, 0).map_or(i32::from(status), |info| info.status_code)
        } else {
            i32::from(status)
        };
        SpanInfo {
            trace_id,
            start_unix_nano: self.start_unix_nano,
            end_unix_nano: self.end_unix_nano,
            status_code,
            is_root: self.is_root(),
        }
    }
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
                    0x7a => info.status_code = read_status_fast(value)?,
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

fn wire_type_of(value: &Value<'_>) -> u8 {
    match value {
        Value::Varint(_) => 0,
        Value::Fixed64(_) => 1,
        Value::Len(_) => 2,
        Value::Fixed32(_) => 5,
    }
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

/// Walks an `ExportTraceServiceRequest`, validating all of it before anything is used, so a bad
/// request is rejected whole and never half-buffered.
///
/// Resource and scope encodings are copied out of the body (they are small and shared by many
/// spans), so nothing built from the result pins the request buffer.
pub fn parse_export_request(body: &[u8]) -> Result<ParsedRequest, WireError> {
    // Room for spans of about 300 bytes and more without growing (growing copied the vector
    // nine times for a 512-span request); the vector lives only as long as the request.
    let mut parsed = ParsedRequest {
        origins: Vec::new(),
        spans: Vec::with_capacity(body.len() / 300 + 4),
    };
    let mut request = FieldReader::new(body);
    while let Some((field, value, at)) = request.next()? {
        if field != 1 {
            continue;
        }
        let Value::Len(resource_spans) = value else {
            return Err(bad_type(field, &value, at));
        };
        parse_resource_spans(resource_spans, at, body, &mut parsed)?;
    }
    Ok(parsed)
}

fn bad_type(field: u32, value: &Value<'_>, at: usize) -> WireError {
    WireError::BadWireType {
        field,
        wire_type: wire_type_of(value),
        at,
    }
}

fn parse_resource_spans(
    msg: &[u8],
    base: usize,
    body: &[u8],
    parsed: &mut ParsedRequest,
) -> Result<(), WireError> {
    // First pass: the resource and schema URL may sit anywhere among the fields.
    let mut resource = None;
    let mut schema_url: &[u8] = &[];
    let mut fields = FieldReader::at(msg, base);
    while let Some((field, value, at)) = fields.next()? {
        match (field, value) {
            (1, Value::Len(r)) => resource = Some(r),
            (3, Value::Len(s)) => schema_url = s,
            (1..=3, v) if !matches!(v, Value::Len(_)) => return Err(bad_type(field, &v, at)),
            _ => {}
        }
    }
    let resource = resource.map(Bytes::copy_from_slice);
    let resource_schema_url = Bytes::copy_from_slice(schema_url);
    let mut fields = FieldReader::at(msg, base);
    while let Some((field, value, at)) = fields.next()? {
        if let (2, Value::Len(scope_spans)) = (field, value) {
            parse_scope_spans(
                scope_spans,
                at,
                body,
                &resource,
                &resource_schema_url,
                parsed,
            )?;
        }
    }
    Ok(())
}

fn parse_scope_spans(
    msg: &[u8],
    base: usize,
    _body: &[u8],
    resource: &Option<Bytes>,
    resource_schema_url: &Bytes,
    parsed: &mut ParsedRequest,
) -> Result<(), WireError> {
    let mut scope = None;
    let mut schema_url: &[u8] = &[];
    let mut fields = FieldReader::at(msg, base);
    while let Some((field, value, at)) = fields.next()? {
        match (field, value) {
            (1, Value::Len(s)) => scope = Some(s),
            (3, Value::Len(s)) => schema_url = s,
            (1..=3, v) if !matches!(v, Value::Len(_)) => return Err(bad_type(field, &v, at)),
            _ => {}
        }
    }
    let origin = parsed.origins.len();
    let first_span = parsed.spans.len();
    let mut fields = FieldReader::at(msg, base);
    while let Some((field, value, at)) = fields.next()? {
        if let (2, Value::Len(span)) = (field, value) {
            let info = read_span(span, at)?;
            parsed.spans.push(SpanRef {
                range: (at, at + span.len()),
                origin,
                info,
            });
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

// ---------------------------------------------------------------------------------------------
// Writing

/// Appends a varint.
pub fn put_varint(out: &mut impl BufMut, mut value: u64) {
    while value >= 0x80 {
        out.put_u8((value as u8) | 0x80);
        value >>= 7;
    }
    out.put_u8(value as u8);
}

/// Bytes a varint of `value` takes.
pub fn varint_len(value: u64) -> usize {
    (64 - (value | 1).leading_zeros() as usize).div_ceil(7)
}

/// Bytes a length-delimited field with a one-byte key and `len` bytes of payload takes.
pub fn len_field_size(len: usize) -> usize {
    1 + varint_len(len as u64) + len
}

/// Appends a length-delimited field header (for fields 1-15, whose key is one byte).
pub fn put_len_header(out: &mut impl BufMut, field: u32, len: usize) {
    debug_assert!((1..16).contains(&field));
    out.put_u8(((field << 3) | 2) as u8);
    put_varint(out, len as u64);
}

/// Appends one span, framed as field 2 of `ScopeSpans`, to a run of spans. A trace's buffered
/// spans are stored as such runs, so export only has to prepend the scope and resource.
pub fn put_framed_span(out: &mut Vec<u8>, span: &[u8]) {
    put_len_header(out, 2, span.len());
    out.extend_from_slice(span);
}

/// Iterates the encoded spans of a run built by [`put_framed_span`].
pub fn framed_spans(run: &[u8]) -> impl Iterator<Item = &[u8]> {
    let mut pos = 0;
    std::iter::from_fn(move || {
        // The run was written by `put_framed_span`: key 0x12, a varint length, the span.
        if run.get(pos) != Some(&0x12) {
            return None;
        }
        let mut reader = FieldReader::new(&run[pos + 1..]);
        let len = usize::try_from(reader.varint().ok()?).ok()?;
        let start = pos + 1 + reader.pos;
        let end = start.checked_add(len).filter(|&end| end <= run.len())?;
        pos = end;
        Some(&run[start..end])
    })
}

/// A group of spans under one scope, ready to write: the spans are a framed run.
pub struct ScopeGroup<'a> {
    pub scope: Option<&'a [u8]>,
    pub scope_schema_url: &'a [u8],
    pub runs: Vec<&'a [u8]>,
}

/// A group of scopes under one resource.
pub struct ResourceGroup<'a> {
    pub resource: Option<&'a [u8]>,
    pub resource_schema_url: &'a [u8],
    pub scopes: Vec<ScopeGroup<'a>>,
}

fn opt_len_field_size(value: Option<&[u8]>) -> usize {
    value.map_or(0, |v| len_field_size(v.len()))
}

fn str_field_size(value: &[u8]) -> usize {
    if value.is_empty() {
        0
    } else {
        len_field_size(value.len())
    }
}

impl ScopeGroup<'_> {
    fn encoded_len(&self) -> usize {
        opt_len_field_size(self.scope)
            + self.runs.iter().map(|r| r.len()).sum::<usize>()
            + str_field_size(self.scope_schema_url)
    }
}

impl ResourceGroup<'_> {
    fn encoded_len(&self) -> usize {
        opt_len_field_size(self.resource)
            + self
                .scopes
                .iter()
                .map(|s| len_field_size(s.encoded_len()))
                .sum::<usize>()
            + str_field_size(self.resource_schema_url)
    }
}

/// Writes an `ExportTraceServiceRequest` from resource groups, computing each length prefix
/// up front so the output is written once into a buffer of the exact size.
pub fn encode_export_request(groups: &[ResourceGroup<'_>]) -> Bytes {
    let total: usize = groups.iter().map(|g| len_field_size(g.encoded_len())).sum();
    let mut out = BytesMut::with_capacity(total);
    for group in groups {
        put_len_header(&mut out, 1, group.encoded_len());
        if let Some(resource) = group.resource {
            put_len_header(&mut out, 1, resource.len());
            out.put_slice(resource);
        }
        for scope in &group.scopes {
            put_len_header(&mut out, 2, scope.encoded_len());
            if let Some(s) = scope.scope {
                put_len_header(&mut out, 1, s.len());
                out.put_slice(s);
            }
            for run in &scope.runs {
                out.put_slice(run);
            }
            if !scope.scope_schema_url.is_empty() {
                put_len_header(&mut out, 3, scope.scope_schema_url.len());
                out.put_slice(scope.scope_schema_url);
            }
        }
        if !group.resource_schema_url.is_empty() {
            put_len_header(&mut out, 3, group.resource_schema_url.len());
            out.put_slice(group.resource_schema_url);
        }
    }
    debug_assert_eq!(out.len(), total);
    out.freeze()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::views;
    use prost::Message;

    fn span(trace_id: &[u8], span_id: &[u8], parent: &[u8], status_code: i32) -> Vec<u8> {
        let mut status = Vec::new();
        if status_code != 0 {
            status.push(3 << 3);
            put_varint(&mut status, status_code as u64);
        }
        views::Span {
            trace_id: Bytes::copy_from_slice(trace_id),
            span_id: Bytes::copy_from_slice(span_id),
            parent_span_id: Bytes::copy_from_slice(parent),
            name: "op".into(),
            start_time_unix_nano: 1_000,
            end_time_unix_nano: 3_500,
            status: Bytes::from(status),
            ..Default::default()
        }
        .encode_to_vec()
    }

    /// `(resource bytes, scopes)`, each scope a list of encoded spans.
    type Resources = Vec<(Vec<u8>, Vec<Vec<Vec<u8>>>)>;

    fn request(resources: Resources) -> Vec<u8> {
        views::ExportTraceServiceRequest {
            resource_spans: resources
                .into_iter()
                .map(|(resource, scopes)| {
                    views::ResourceSpans {
                        resource: resource.into(),
                        scope_spans: scopes
                            .into_iter()
                            .map(|spans| {
                                views::ScopeSpans {
                                    scope: Bytes::from_static(b"\x0a\x03lib"),
                                    spans: spans.into_iter().map(Bytes::from).collect(),
                                    schema_url: String::new(),
                                }
                                .encode_to_vec()
                                .into()
                            })
                            .collect(),
                        schema_url: "https://opentelemetry.io/schemas/1.21.0".into(),
                    }
                    .encode_to_vec()
                    .into()
                })
                .collect(),
        }
        .encode_to_vec()
    }

    /// A Resource with one attribute k="v".
    const RESOURCE: &[u8] = b"\x0a\x08\x0a\x01k\x12\x03\x0a\x01v";
    const T1: [u8; 16] = [1; 16];
    const T2: [u8; 16] = [2; 16];
    const S1: [u8; 8] = [9; 8];

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

    #[test]
    fn encoding_groups_round_trips_through_the_walker_and_prost() {
        let spans = [span(&T1, &S1, &[], 0), span(&T1, &S1, &S1, 2)];
        let mut run = Vec::new();
        for s in &spans {
            put_framed_span(&mut run, s);
        }
        assert_eq!(framed_spans(&run).count(), 2);
        let groups = [ResourceGroup {
            resource: Some(RESOURCE),
            resource_schema_url: b"schema",
            scopes: vec![ScopeGroup {
                scope: Some(b""),
                scope_schema_url: b"",
                runs: vec![&run],
            }],
        }];
        let body = encode_export_request(&groups);
        let parsed = parse_export_request(&body).unwrap();
        assert_eq!(parsed.spans.len(), 2);
        assert_eq!(parsed.origins[0].scope.as_deref(), Some(&b""[..]));
        // The same bytes decode as real OTLP through the generated types.
        let decoded =
            opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest::decode(
                body,
            )
            .unwrap();
        let rs = &decoded.resource_spans[0];
        assert_eq!(rs.schema_url, "schema");
        assert_eq!(rs.scope_spans[0].spans[1].status.as_ref().unwrap().code, 2);
        assert_eq!(rs.scope_spans[0].spans[0].trace_id, T1.to_vec());
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

    #[test]
    fn span_summaries_round_trip_through_their_stored_form() {
        for (status_code, is_root) in [(0, true), (2, false), (126, true), (127, false), (-1, true)]
        {
            let info = SpanInfo {
                trace_id: T1,
                start_unix_nano: 1 << 60,
                end_unix_nano: 7,
                status_code,
                is_root,
            };
            let mut status = Vec::new();
            status.push(3 << 3);
            put_varint(&mut status, status_code as i64 as u64);
            let bytes = views::Span {
                trace_id: Bytes::copy_from_slice(&T1),
                span_id: Bytes::copy_from_slice(&S1),
                parent_span_id: if is_root {
                    Bytes::new()
                } else {
                    Bytes::copy_from_slice(&S1)
                },
                start_time_unix_nano: 1 << 60,
                end_time_unix_nano: 7,
                status: status.into(),
                ..Default::default()
            }
            .encode_to_vec();
            let mut stored = Vec::new();
            SpanSummary::of(&info, bytes.len()).write(&mut stored);
            assert_eq!(stored.len(), SpanSummary::SIZE);
            let summary = SpanSummary::read(&stored);
            assert_eq!(summary.info(T1, &bytes), info);
            assert_eq!(summary.len as usize, bytes.len());
        }
    }

    #[test]
    fn varint_sizes_match_the_encoder() {
        for v in [0u64, 1, 127, 128, 16_383, 16_384, u32::MAX as u64, u64::MAX] {
            let mut out = Vec::new();
            put_varint(&mut out, v);
            assert_eq!(out.len(), varint_len(v), "{v}");
        }
    }
}
