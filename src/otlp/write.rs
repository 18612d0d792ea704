//! Writing OTLP requests around spans that stay encoded: spans are stored as runs already framed
//! as `ScopeSpans.spans` fields ([`put_framed_span`]), and [`encode_export_request`] writes an
//! `ExportTraceServiceRequest` from resource and scope groups of such runs, computing every
//! length up front so the output is written once into a buffer of the exact size. A kept span
//! goes out byte for byte as it came in.

use bytes::{BufMut, Bytes, BytesMut};

use super::wire::{len_field_size, put_len_header, FieldReader};

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
        let start = pos + 1 + reader.offset();
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
    use crate::otlp::request::parse_export_request;
    use crate::otlp::testing::*;
    use prost::Message;

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
}
