//! Builders for trace views in policy table tests.
//!
//! [`span`] makes a summary-only record (no bytes) for policies that read only [`SpanInfo`];
//! [`BuildRecord`] turns the OTLP layer's [`SpanBuilder`] (a real encoded span with attributes,
//! events, status, trace state and a resource/scope) into a record, so the attribute walker runs on
//! the same bytes a client sends.
//! Built records are leaked to get `'static` borrows; this is test-only code.

use bytes::Bytes;
use opentelemetry_proto::tonic::resource::v1::Resource;
use prost::Message;

use super::*;
use crate::otlp::status;
pub use crate::otlp::testing::{
    array, boolean, bytes_value, double, empty, int, kv, text, SpanBuilder, Val,
};

pub static NO_ORIGIN: std::sync::LazyLock<Origin> = std::sync::LazyLock::new(Origin::default);

/// A span summary with the given start/end (ns) and status code, and no encoded bytes.
pub fn span(start: u64, end: u64, status_code: u8) -> SpanRecord<'static> {
    SpanRecord {
        origin: &NO_ORIGIN,
        bytes: &[],
        info: SpanInfo {
            trace_id: [7; 16],
            start_unix_nano: start,
            end_unix_nano: end,
            status_code: status_code as i32,
            is_root: false,
        },
    }
}

pub fn trace(spans: Vec<SpanRecord<'static>>) -> TraceView<'static> {
    TraceView {
        trace_id: [7; 16],
        spans,
    }
}

pub const OK: u8 = status::OK;
pub const ERROR: u8 = status::ERROR;
pub const UNSET: u8 = status::UNSET;

/// Records from built spans, for policy tests.
pub trait BuildRecord {
    /// A record with its own (leaked) origin.
    fn build(self) -> SpanRecord<'static>;
    /// A record sharing `origin` (from [`leak_origin`]).
    fn build_in(self, origin: &'static Origin) -> SpanRecord<'static>;
}

impl BuildRecord for SpanBuilder {
    /// A record with its own (leaked) origin.
    fn build(self) -> SpanRecord<'static> {
        let (bytes, origin) = self.encode();
        record(bytes, Box::leak(Box::new(origin)))
    }

    fn build_in(self, origin: &'static Origin) -> SpanRecord<'static> {
        record(self.encode().0, origin)
    }
}

/// A `'static` origin for several spans to share.
pub fn leak_origin(resource: Vec<(&str, Option<Val>)>) -> &'static Origin {
    Box::leak(Box::new(Origin {
        resource: Some(Bytes::from(
            Resource {
                attributes: resource.into_iter().map(|(k, v)| kv(k, v)).collect(),
                ..Default::default()
            }
            .encode_to_vec(),
        )),
        scope: Some(Bytes::new()),
        ..Default::default()
    }))
}

fn record(bytes: Vec<u8>, origin: &'static Origin) -> SpanRecord<'static> {
    let bytes: &'static [u8] = bytes.leak();
    SpanRecord {
        origin,
        bytes,
        info: crate::otlp::read_span(bytes, 0).expect("a valid test span"),
    }
}
