//! Builders for trace views in policy table tests.
//!
//! [`span`] makes a summary-only record (no bytes) for policies that read only [`SpanInfo`];
//! [`SpanBuilder`] encodes a real OTLP span (with attributes, events, status, trace state and a
//! resource/scope) through prost, so the attribute walker runs on the same bytes a client sends.
//! Built records are leaked to get `'static` borrows; this is test-only code.

use bytes::Bytes;
use opentelemetry_proto::tonic::common::v1::{
    any_value, AnyValue, ArrayValue, InstrumentationScope, KeyValue, KeyValueList,
};
use opentelemetry_proto::tonic::resource::v1::Resource;
use opentelemetry_proto::tonic::trace::v1::{span::Event, Status};
use prost::Message;

use super::*;
use crate::views;
use crate::wire::status;

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

pub type Val = any_value::Value;

pub fn text(s: &str) -> Option<Val> {
    Some(Val::StringValue(s.into()))
}
pub fn int(i: i64) -> Option<Val> {
    Some(Val::IntValue(i))
}
pub fn double(d: f64) -> Option<Val> {
    Some(Val::DoubleValue(d))
}
pub fn boolean(b: bool) -> Option<Val> {
    Some(Val::BoolValue(b))
}
pub fn bytes_value(b: &[u8]) -> Option<Val> {
    Some(Val::BytesValue(b.to_vec()))
}
pub fn array(items: Vec<Option<Val>>) -> Option<Val> {
    Some(Val::ArrayValue(ArrayValue {
        values: items.into_iter().map(|value| AnyValue { value }).collect(),
    }))
}
pub fn kvlist(items: Vec<(&str, Option<Val>)>) -> Option<Val> {
    Some(Val::KvlistValue(KeyValueList {
        values: items.into_iter().map(|(k, v)| kv(k, v)).collect(),
    }))
}
/// An attribute whose `AnyValue` has no value set.
pub fn empty() -> Option<Val> {
    None
}

pub fn kv(key: &str, value: Option<Val>) -> KeyValue {
    KeyValue {
        key: key.into(),
        value: Some(AnyValue { value }),
        ..Default::default()
    }
}

/// Encodes one OTLP span (and its resource and scope) field by field.
#[derive(Default)]
pub struct SpanBuilder {
    span: views::Span,
    attributes: Vec<KeyValue>,
    events: Vec<Event>,
    status: Option<Status>,
    resource: Vec<KeyValue>,
    scope: InstrumentationScope,
}

impl SpanBuilder {
    pub fn new() -> Self {
        let mut b = SpanBuilder::default();
        b.span.trace_id = Bytes::from_static(&[7; 16]);
        b.span.span_id = Bytes::from_static(&[1; 8]);
        b.span.start_time_unix_nano = 1_000;
        b.span.end_time_unix_nano = 2_000;
        b
    }
    pub fn name(mut self, name: &str) -> Self {
        self.span.name = name.into();
        self
    }
    pub fn kind(mut self, kind: i32) -> Self {
        self.span.kind = kind;
        self
    }
    pub fn times(mut self, start: u64, end: u64) -> Self {
        self.span.start_time_unix_nano = start;
        self.span.end_time_unix_nano = end;
        self
    }
    pub fn trace_state(mut self, ts: &str) -> Self {
        self.span.trace_state = ts.into();
        self
    }
    pub fn flags(mut self, flags: u32) -> Self {
        self.span.flags = flags;
        self
    }
    pub fn status(mut self, code: i32, message: &str) -> Self {
        self.status = Some(Status {
            code,
            message: message.into(),
        });
        self
    }
    pub fn attr(mut self, key: &str, value: Option<Val>) -> Self {
        self.attributes.push(kv(key, value));
        self
    }
    pub fn event(mut self, name: &str, time: u64, attrs: Vec<(&str, Option<Val>)>) -> Self {
        self.events.push(Event {
            time_unix_nano: time,
            name: name.into(),
            attributes: attrs.into_iter().map(|(k, v)| kv(k, v)).collect(),
            dropped_attributes_count: 0,
        });
        self
    }
    pub fn resource_attr(mut self, key: &str, value: Option<Val>) -> Self {
        self.resource.push(kv(key, value));
        self
    }
    pub fn scope(mut self, name: &str, version: &str) -> Self {
        self.scope.name = name.into();
        self.scope.version = version.into();
        self
    }
    pub fn scope_attr(mut self, key: &str, value: Option<Val>) -> Self {
        self.scope.attributes.push(kv(key, value));
        self
    }

    /// The encoded span bytes.
    pub fn encode(mut self) -> (Vec<u8>, Origin) {
        self.span.attributes = self
            .attributes
            .iter()
            .map(|a| Bytes::from(a.encode_to_vec()))
            .collect();
        self.span.events = self
            .events
            .iter()
            .map(|e| Bytes::from(e.encode_to_vec()))
            .collect();
        if let Some(s) = &self.status {
            self.span.status = Bytes::from(s.encode_to_vec());
        }
        let origin = Origin {
            resource: Some(Bytes::from(
                Resource {
                    attributes: self.resource,
                    ..Default::default()
                }
                .encode_to_vec(),
            )),
            scope: Some(Bytes::from(self.scope.encode_to_vec())),
            ..Default::default()
        };
        (self.span.encode_to_vec(), origin)
    }

    /// A record with its own (leaked) origin.
    pub fn build(self) -> SpanRecord<'static> {
        let (bytes, origin) = self.encode();
        record(bytes, Box::leak(Box::new(origin)))
    }

    /// A record sharing `origin` (from [`leak_origin`]).
    pub fn build_in(self, origin: &'static Origin) -> SpanRecord<'static> {
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
        info: crate::wire::read_span(bytes, 0).expect("a valid test span"),
    }
}
