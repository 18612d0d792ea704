//! Builders for encoded OTLP test data, shared by the unit tests of every layer: spans and
//! requests through the prost views ([`span`], [`request`]), and [`SpanBuilder`], which encodes a
//! real span with attributes, events, status, trace state, resource and scope through the
//! generated OTLP types, so walkers run on the bytes a client would send.

use bytes::Bytes;
use opentelemetry_proto::tonic::common::v1::{
    any_value, AnyValue, ArrayValue, InstrumentationScope, KeyValue, KeyValueList,
};
use opentelemetry_proto::tonic::resource::v1::Resource;
use opentelemetry_proto::tonic::trace::v1::{span::Event, Status};
use prost::Message;

use super::proto::views;
use super::request::Origin;
use super::wire::put_varint;

pub fn span(trace_id: &[u8], span_id: &[u8], parent: &[u8], status_code: i32) -> Vec<u8> {
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
pub type Resources = Vec<(Vec<u8>, Vec<Vec<Vec<u8>>>)>;

pub fn request(resources: Resources) -> Vec<u8> {
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
pub const RESOURCE: &[u8] = b"\x0a\x08\x0a\x01k\x12\x03\x0a\x01v";
pub const T1: [u8; 16] = [1; 16];
pub const T2: [u8; 16] = [2; 16];
pub const S1: [u8; 8] = [9; 8];

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
}
