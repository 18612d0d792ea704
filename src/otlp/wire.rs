//! The protobuf wire format at its lowest level: reading one message's fields
//! ([`FieldReader`]), and writing varints and field headers. Everything above (the request
//! walker, the writers, attribute lookup) is built on these.

use bytes::BufMut;

/// How deep attribute values may nest (`AnyValue` inside arrays and kvlists, the attribute's own
/// value counting as 1). prost and Python's protobuf stop decoding at 100 nested messages; a span
/// attribute's value is the 6th message down and each kvlist level adds 3, so 20 keeps every
/// accepted request well inside what strict decoders take.
pub const MAX_VALUE_DEPTH: u32 = 20;

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
    #[error("field key above 2^32 at byte {0}")]
    BadKey(usize),
    #[error("link has a {field} of {len} bytes; it must be empty, or 16 (trace_id) / 8 (span_id)")]
    LinkIdLength { field: &'static str, len: usize },
    #[error("string is not valid UTF-8 at byte {0}")]
    InvalidUtf8(usize),
    #[error("attribute value nested more than {max} levels deep at byte {0}", max = MAX_VALUE_DEPTH)]
    TooDeep(usize),
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
#[derive(Clone)]
pub struct FieldReader<'a> {
    buf: &'a [u8],
    pos: usize,
    base: usize,
}

impl<'a> FieldReader<'a> {
    pub fn new(buf: &'a [u8]) -> Self {
        Self::at(buf, 0)
    }

    /// A reader over `buf`, which sits at offset `base` of the whole request.
    pub fn at(buf: &'a [u8], base: usize) -> Self {
        Self { buf, pos: 0, base }
    }

    /// The absolute offset of the last value returned (used to report nested errors).
    pub fn offset(&self) -> usize {
        self.base + self.pos
    }

    /// Reads a varint at the current position.
    #[inline]
    pub fn varint(&mut self) -> Result<u64, WireError> {
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
            // The 10th byte holds only bit 63: anything above overflows 64 bits, which prost
            // and Go's protobuf refuse.
            if i == 9 && byte > 1 {
                return Err(WireError::BadVarint(self.offset()));
            }
            if byte < 0x80 {
                return Ok(value);
            }
        }
        Err(WireError::BadVarint(self.offset()))
    }

    #[inline]
    pub fn take(&mut self, n: usize) -> Result<&'a [u8], WireError> {
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
        if key > u64::from(u32::MAX) {
            return Err(WireError::BadKey(at));
        }
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

/// The wire type a value was read with.
pub fn wire_type_of(value: &Value<'_>) -> u8 {
    match value {
        Value::Varint(_) => 0,
        Value::Fixed64(_) => 1,
        Value::Len(_) => 2,
        Value::Fixed32(_) => 5,
    }
}

/// The error for field `field` read with the wrong wire type.
pub fn bad_type(field: u32, value: &Value<'_>, at: usize) -> WireError {
    WireError::BadWireType {
        field,
        wire_type: wire_type_of(value),
        at,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_value_reports_the_wire_type_it_was_read_with() {
        // Protobuf wire types: VARINT 0, I64 1, LEN 2, I32 5 (a missed mutant answered 1 always).
        assert_eq!(wire_type_of(&Value::Varint(7)), 0);
        assert_eq!(wire_type_of(&Value::Fixed64(7)), 1);
        assert_eq!(wire_type_of(&Value::Len(b"x")), 2);
        assert_eq!(wire_type_of(&Value::Fixed32(7)), 5);
    }

    /// A varint read from the start of `bytes`, and how many bytes it took.
    fn read_varint(bytes: &[u8]) -> (Result<u64, WireError>, usize) {
        let mut reader = FieldReader::new(bytes);
        let value = reader.varint();
        (value, reader.pos)
    }

    #[test]
    fn varints_decode_as_the_protobuf_encoding_guide_defines() {
        // Base-128 groups, least significant first, the high bit saying another byte follows.
        // 150 is the guide's own example; 128 starts with exactly 0x80.
        assert_eq!(read_varint(&[0x96, 0x01]), (Ok(150), 2));
        assert_eq!(read_varint(&[0x80, 0x01]), (Ok(128), 2));
        assert_eq!(read_varint(&[0x7f, 0x01]), (Ok(127), 1));
        // u64::MAX (and int64 -1): nine 0xff bytes, then a 10th holding only bit 63.
        let max = [0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x01];
        assert_eq!(read_varint(&max), (Ok(u64::MAX), 10));
        // A 10th byte above 1 overflows 64 bits (Go's protowire: errCodeOverflow).
        let mut over = max;
        over[9] = 0x02;
        assert!(matches!(read_varint(&over).0, Err(WireError::BadVarint(_))));
    }

    #[test]
    fn a_key_of_u32_max_is_field_2_pow_29_minus_1_with_wire_type_7() {
        // 0xffff_ffff = (536_870_911 << 3) | 7: a field number in range and an undefined wire
        // type; one more is a key above 32 bits.
        let mut body = Vec::new();
        put_varint(&mut body, u64::from(u32::MAX));
        assert_eq!(
            FieldReader::new(&body).next(),
            Err(WireError::BadWireType {
                field: 536_870_911,
                wire_type: 7,
                at: 0
            })
        );
        let mut body = Vec::new();
        put_varint(&mut body, u64::from(u32::MAX) + 1);
        assert_eq!(FieldReader::new(&body).next(), Err(WireError::BadKey(0)));
    }

    #[test]
    fn put_varint_writes_the_guides_bytes() {
        for (value, want) in [
            (1u64, &[0x01][..]),
            (150, &[0x96, 0x01]),
            (300, &[0xac, 0x02]),
        ] {
            let mut out = Vec::new();
            put_varint(&mut out, value);
            assert_eq!(out, want, "{value}");
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
