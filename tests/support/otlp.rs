//! Small builders for OTLP trace messages, attribute readers, and a tonic gRPC client.
//!
//! Tests that need a realistic client use the Python SDK ([`super::python`]) or the
//! `opentelemetry-otlp` crate; these builders are for exact, hand-made traces (a given trace ID,
//! status, timing).

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use opentelemetry_proto::tonic::collector::trace::v1::trace_service_client::TraceServiceClient;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::any_value::Value;
use opentelemetry_proto::tonic::common::v1::{AnyValue, InstrumentationScope, KeyValue};
use opentelemetry_proto::tonic::resource::v1::Resource;
use opentelemetry_proto::tonic::trace::v1::status::StatusCode;
use opentelemetry_proto::tonic::trace::v1::{ResourceSpans, ScopeSpans, Span, Status};
use tonic::transport::Channel;

/// Nanoseconds since the Unix epoch, as OTLP timestamps are written.
pub fn now_unix_nanos() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock after 1970")
        .as_nanos() as u64
}

/// A trace ID from a number (big-endian), so tests can name traces 1, 2, 3...
pub fn trace_id(n: u128) -> [u8; 16] {
    n.to_be_bytes()
}

/// A span ID from a number (big-endian).
pub fn span_id(n: u64) -> [u8; 8] {
    n.to_be_bytes()
}

/// A string attribute.
pub fn kv(key: &str, value: &str) -> KeyValue {
    KeyValue {
        key: key.to_string(),
        value: Some(AnyValue {
            value: Some(Value::StringValue(value.to_string())),
        }),
        ..Default::default()
    }
}

/// An attribute's value rendered as text: strings as they are, numbers and booleans formatted,
/// anything else in debug form.
pub fn string_attribute(attributes: &[KeyValue], key: &str) -> Option<String> {
    let value = attributes
        .iter()
        .find(|kv| kv.key == key)?
        .value
        .as_ref()?
        .value
        .as_ref()?;
    Some(match value {
        Value::StringValue(s) => s.clone(),
        Value::IntValue(i) => i.to_string(),
        Value::DoubleValue(d) => d.to_string(),
        Value::BoolValue(b) => b.to_string(),
        other => format!("{other:?}"),
    })
}

/// A root span that started now and lasted 1 ms, status unset. Adjust fields as needed, or use
/// [`child_of`] and [`set_error`].
pub fn span(trace_id: [u8; 16], span_id: [u8; 8], name: &str) -> Span {
    let start = now_unix_nanos();
    Span {
        trace_id: trace_id.to_vec(),
        span_id: span_id.to_vec(),
        name: name.to_string(),
        kind: opentelemetry_proto::tonic::trace::v1::span::SpanKind::Internal as i32,
        start_time_unix_nano: start,
        end_time_unix_nano: start + Duration::from_millis(1).as_nanos() as u64,
        ..Default::default()
    }
}

/// Makes `span` a child of `parent` (same trace, parent span ID set).
pub fn child_of(mut span: Span, parent: &Span) -> Span {
    span.trace_id = parent.trace_id.clone();
    span.parent_span_id = parent.span_id.clone();
    span
}

/// Sets the span's status to ERROR.
pub fn set_error(span: &mut Span, message: &str) {
    span.status = Some(Status {
        code: StatusCode::Error as i32,
        message: message.to_string(),
    });
}

/// One export request holding `spans` under a resource with `service.name = service` and a
/// scope named `tailgate-tests`.
pub fn request(service: &str, spans: Vec<Span>) -> ExportTraceServiceRequest {
    ExportTraceServiceRequest {
        resource_spans: vec![ResourceSpans {
            resource: Some(Resource {
                attributes: vec![kv("service.name", service)],
                ..Default::default()
            }),
            scope_spans: vec![ScopeSpans {
                scope: Some(InstrumentationScope {
                    name: "tailgate-tests".to_string(),
                    ..Default::default()
                }),
                spans,
                schema_url: String::new(),
            }],
            schema_url: String::new(),
        }],
    }
}

/// A tonic OTLP trace client connected to `endpoint` (`http://host:port`).
pub async fn grpc_client(endpoint: &str) -> TraceServiceClient<Channel> {
    TraceServiceClient::connect(endpoint.to_string())
        .await
        .unwrap_or_else(|e| panic!("connect OTLP gRPC client to {endpoint}: {e}"))
}
