//! [`SpanSummary`]: what the buffer stores beside each span's bytes.

use super::request::{read_span, SpanInfo};
use super::wire::len_field_size;
use super::TraceId;

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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::otlp::proto::views;
    use crate::otlp::testing::*;
    use crate::otlp::wire::put_varint;
    use bytes::Bytes;
    use prost::Message;

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
}
