//! The sampler-to-sampler extension of an export request: what a sampler handing traces to a
//! peer sends beside the spans.
//!
//! A hand-off is an ordinary `ExportTraceServiceRequest` (the traces' spans, framed as always)
//! with extra top-level fields that OTLP does not define and every protobuf reader skips:
//!
//! - field 1000, once per trace: `Timing { bytes trace_id = 1; uint64 remaining_ms = 2; }`, how
//!   long the trace still had to wait for its decision at the sender, so moving a trace does not
//!   restart its `decision_wait`;
//! - field 1001, once: packed `Decision` records of 9 bytes (the trace fingerprint, little
//!   endian, then 1 for kept or 0 for not kept), so late spans that reach the new owner of a
//!   recently decided trace follow the decision.
//!
//! These requests only ever go from a sampler to a sampler (marked by the `tailgate-forwarded`
//! header); a sampler stores only span bytes, so the fields never reach a backend.

use bytes::{BufMut, Bytes, BytesMut};

use super::wire::{len_field_size, put_len_header, put_varint, varint_len, FieldReader, Value};
use super::TraceId;

/// Field number of a trace's timing.
pub const TIMING_FIELD: u32 = 1000;
/// Field number of the packed decisions.
pub const DECISIONS_FIELD: u32 = 1001;
/// Bytes of one packed decision.
pub const DECISION_BYTES: usize = 9;

/// How long a handed-off trace still had to wait for its decision.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timing {
    pub trace_id: TraceId,
    pub remaining_ms: u64,
}

/// A decision that moves to the trace's new owner.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MovedDecision {
    pub fingerprint: u64,
    pub sampled: bool,
}

/// The extension fields found in a request.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Extensions {
    pub timings: Vec<Timing>,
    pub decisions: Vec<MovedDecision>,
}

/// Bytes a field with a two-byte key (fields 16 to 2047) and `len` bytes of payload takes.
fn wide_len_field_size(len: usize) -> usize {
    2 + varint_len(len as u64) + len
}

fn put_wide_len_header(out: &mut impl BufMut, field: u32, len: usize) {
    put_varint(out, u64::from(field << 3 | 2));
    put_varint(out, len as u64);
}

/// Encoded size of one timing message's payload.
fn timing_len(remaining_ms: u64) -> usize {
    len_field_size(16) + 1 + varint_len(remaining_ms)
}

/// Bytes the extension fields for `timings` and `decisions` add to a request.
pub fn encoded_len(timings: &[Timing], decisions: &[MovedDecision]) -> usize {
    let timings: usize = timings
        .iter()
        .map(|t| wide_len_field_size(timing_len(t.remaining_ms)))
        .sum();
    let decisions = if decisions.is_empty() {
        0
    } else {
        wide_len_field_size(decisions.len() * DECISION_BYTES)
    };
    timings + decisions
}

/// `request` (an encoded `ExportTraceServiceRequest`) with the extension fields appended.
pub fn append(request: &[u8], timings: &[Timing], decisions: &[MovedDecision]) -> Bytes {
    let mut out = BytesMut::with_capacity(request.len() + encoded_len(timings, decisions));
    out.put_slice(request);
    for t in timings {
        put_wide_len_header(&mut out, TIMING_FIELD, timing_len(t.remaining_ms));
        put_len_header(&mut out, 1, 16);
        out.put_slice(&t.trace_id);
        out.put_u8(2 << 3);
        put_varint(&mut out, t.remaining_ms);
    }
    if !decisions.is_empty() {
        put_wide_len_header(&mut out, DECISIONS_FIELD, decisions.len() * DECISION_BYTES);
        for d in decisions {
            out.put_u64_le(d.fingerprint);
            out.put_u8(u8::from(d.sampled));
        }
    }
    out.freeze()
}

/// Reads the extension fields of a request. Malformed extension fields are ignored: they come
/// from a peer, and the spans (validated separately) are what matters.
pub fn read(body: &[u8]) -> Extensions {
    let mut found = Extensions::default();
    let mut fields = FieldReader::new(body);
    while let Ok(Some((field, value, _))) = fields.next() {
        match (field, value) {
            (TIMING_FIELD, Value::Len(msg)) => {
                if let Some(t) = read_timing(msg) {
                    found.timings.push(t);
                }
            }
            (DECISIONS_FIELD, Value::Len(packed)) => {
                found
                    .decisions
                    .extend(
                        packed
                            .chunks_exact(DECISION_BYTES)
                            .map(|record| MovedDecision {
                                fingerprint: u64::from_le_bytes(record[..8].try_into().unwrap()),
                                sampled: record[8] != 0,
                            }),
                    );
            }
            _ => {}
        }
    }
    found
}

fn read_timing(msg: &[u8]) -> Option<Timing> {
    let mut trace_id = None;
    let mut remaining_ms = 0;
    let mut fields = FieldReader::new(msg);
    while let Ok(Some((field, value, _))) = fields.next() {
        match (field, value) {
            (1, Value::Len(id)) => trace_id = id.try_into().ok(),
            (2, Value::Varint(ms)) => remaining_ms = ms,
            _ => {}
        }
    }
    Some(Timing {
        trace_id: trace_id?,
        remaining_ms,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::otlp::parse_export_request;
    use crate::otlp::testing::{request, span, S1, T1, T2};

    #[test]
    fn extension_fields_round_trip_and_leave_the_spans_as_they_were() {
        let body = request(vec![(vec![], vec![vec![span(&T1, &S1, &[], 0)]])]);
        let timings = [
            Timing {
                trace_id: T1,
                remaining_ms: 12_345,
            },
            Timing {
                trace_id: T2,
                remaining_ms: 0,
            },
        ];
        let decisions = [
            MovedDecision {
                fingerprint: u64::MAX - 1,
                sampled: true,
            },
            MovedDecision {
                fingerprint: 7,
                sampled: false,
            },
        ];
        let extended = append(&body, &timings, &decisions);
        assert_eq!(
            extended.len(),
            body.len() + encoded_len(&timings, &decisions)
        );
        let found = read(&extended);
        assert_eq!(found.timings, timings);
        assert_eq!(found.decisions, decisions);
        // The walker and prost both read the request as before.
        let parsed = parse_export_request(&extended).unwrap();
        assert_eq!(parsed.spans.len(), 1);
        assert_eq!(
            &extended[parsed.spans[0].range.0..parsed.spans[0].range.1],
            &span(&T1, &S1, &[], 0)[..]
        );
        use prost::Message;
        let decoded =
            opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest::decode(
                extended,
            )
            .unwrap();
        assert_eq!(decoded.resource_spans.len(), 1);
    }

    #[test]
    fn a_request_without_extensions_has_none() {
        let body = request(vec![(vec![], vec![vec![span(&T1, &S1, &[], 0)]])]);
        assert_eq!(read(&body), Extensions::default());
    }
}
