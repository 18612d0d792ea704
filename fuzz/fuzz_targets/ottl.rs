//! The OTTL parser and evaluator: any condition text either is refused at validation with an
//! error, or builds a policy that evaluates a trace (with attributes of every kind, events and
//! links) without panicking. The first byte picks `span` or `spanevent` and the error mode.
#![no_main]

use std::sync::{Arc, OnceLock};

use libfuzzer_sys::fuzz_target;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::{any_value, AnyValue, ArrayValue as Array, KeyValue};
use opentelemetry_proto::tonic::resource::v1::Resource;
use opentelemetry_proto::tonic::trace::v1::span::Event;
use opentelemetry_proto::tonic::trace::v1::{ResourceSpans, ScopeSpans, Span, Status};
use prost::Message;
use tailgate::otlp::{parse_export_request, Chunk};
use tailgate::policy::{PolicyConfig, PolicySet, TraceView};

fn kv(key: &str, value: any_value::Value) -> KeyValue {
    KeyValue {
        key: key.into(),
        value: Some(AnyValue { value: Some(value) }),
        ..Default::default()
    }
}

fn trace() -> &'static (Vec<u8>, Vec<Chunk>) {
    static TRACE: OnceLock<(Vec<u8>, Vec<Chunk>)> = OnceLock::new();
    TRACE.get_or_init(|| {
        use any_value::Value::*;
        let span = |i: u8| Span {
            trace_id: vec![7; 16],
            span_id: vec![i; 8],
            parent_span_id: if i == 1 { vec![] } else { vec![1; 8] },
            name: format!("op-{i}"),
            kind: i32::from(i % 6),
            start_time_unix_nano: 1_000 * u64::from(i),
            end_time_unix_nano: 5_000_000 * u64::from(i),
            attributes: vec![
                kv("http.method", StringValue("GET".into())),
                kv("http.status_code", IntValue(500)),
                kv("ratio", DoubleValue(0.5)),
                kv("ok", BoolValue(false)),
                kv("raw", BytesValue(vec![1, 2])),
                kv(
                    "list",
                    ArrayValue(Array {
                        values: vec![AnyValue {
                            value: Some(IntValue(1)),
                        }],
                    }),
                ),
            ],
            events: vec![Event {
                name: "exception".into(),
                attributes: vec![kv("exception.type", StringValue("E".into()))],
                ..Default::default()
            }],
            status: Some(Status {
                code: 2,
                message: "x".into(),
            }),
            ..Default::default()
        };
        let body = ExportTraceServiceRequest {
            resource_spans: vec![ResourceSpans {
                resource: Some(Resource {
                    attributes: vec![kv("service.name", StringValue("api".into()))],
                    ..Default::default()
                }),
                scope_spans: vec![ScopeSpans {
                    spans: (1..4).map(span).collect(),
                    ..Default::default()
                }],
                ..Default::default()
            }],
        }
        .encode_to_vec();
        let parsed = parse_export_request(&body).unwrap();
        let origin = Arc::new(parsed.origins[0].clone());
        let ranges: Vec<(usize, usize)> = parsed.spans.iter().map(|s| s.range).collect();
        let chunks = vec![Chunk::from_spans(origin, &body, &ranges)];
        (body, chunks)
    })
}

fuzz_target!(|data: &[u8]| {
    let Some((&selector, text)) = data.split_first() else {
        return;
    };
    let Ok(condition) = std::str::from_utf8(text) else {
        return;
    };
    let list = if selector & 1 == 0 { "span" } else { "spanevent" };
    let mode = ["propagate", "ignore", "silent"][usize::from(selector >> 1) % 3];
    let mut ottl = serde_yaml::Mapping::new();
    ottl.insert("error_mode".into(), mode.into());
    ottl.insert(list.into(), vec![serde_yaml::Value::from(condition)].into());
    let mut policy = serde_yaml::Mapping::new();
    policy.insert("name".into(), "fuzzed".into());
    policy.insert("type".into(), "ottl_condition".into());
    policy.insert("ottl_condition".into(), ottl.into());
    let Ok(config) = serde_yaml::from_value::<PolicyConfig>(policy.into()) else {
        return;
    };
    let mut errors = Vec::new();
    config.validate("policies[0]", &mut errors);
    if !errors.is_empty() {
        return;
    }
    let set = PolicySet::new(&[config], false);
    let (_, chunks) = trace();
    let _ = set.decide(&TraceView::from_chunks([7; 16], chunks));
});
