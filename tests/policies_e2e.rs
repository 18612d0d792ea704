//! End to end: the fixture with every policy type (`tests/fixtures/all_policies.yaml`, in the
//! shape of the Collector's own all-policies test config) run by the real binary. One trace is
//! built to trigger each policy; the test checks which traces the backend keeps and, through
//! `otelcol_processor_tail_sampling_count_traces_sampled`, which policies sampled which traces.

mod support;

use std::collections::BTreeSet;
use std::time::Duration;

use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::{any_value::Value, AnyValue, KeyValue};
use opentelemetry_proto::tonic::resource::v1::Resource;
use opentelemetry_proto::tonic::trace::v1::span::{Event, SpanKind};
use opentelemetry_proto::tonic::trace::v1::{ResourceSpans, ScopeSpans, Span};
use support::oracle::probabilistic_keeps;
use support::{free_port, otlp, Gateway, RecordingBackend};

const WAIT: Duration = Duration::from_secs(20);

fn attr(key: &str, value: Value) -> KeyValue {
    KeyValue {
        key: key.into(),
        value: Some(AnyValue { value: Some(value) }),
        ..Default::default()
    }
}

fn string(key: &str, v: &str) -> KeyValue {
    attr(key, Value::StringValue(v.into()))
}

/// One trace: its spans under a resource with `service.name` and extra resource attributes.
struct Trace {
    id: u128,
    resource: Vec<KeyValue>,
    spans: Vec<Span>,
}

fn trace(id: u128, service: &str, spans: usize, shape: impl Fn(&mut Span)) -> Trace {
    let spans = (0..spans)
        .map(|i| {
            let mut span = otlp::span(otlp::trace_id(id), otlp::span_id(i as u64 + 1), "work");
            span.kind = SpanKind::Server as i32;
            if i == 0 {
                shape(&mut span);
            }
            span
        })
        .collect();
    Trace {
        id,
        resource: vec![string("service.name", service)],
        spans,
    }
}

fn request(traces: &[Trace]) -> ExportTraceServiceRequest {
    ExportTraceServiceRequest {
        resource_spans: traces
            .iter()
            .map(|t| ResourceSpans {
                resource: Some(Resource {
                    attributes: t.resource.clone(),
                    ..Default::default()
                }),
                scope_spans: vec![ScopeSpans {
                    spans: t.spans.clone(),
                    ..Default::default()
                }],
                ..Default::default()
            })
            .collect(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_config_with_every_policy_type_keeps_exactly_the_expected_traces() {
    let backend = RecordingBackend::start_grpc().await;
    let (grpc, health, metrics) = (free_port(), free_port(), free_port());
    // The fixture takes its ports from the environment (`${env:TG_*}`); the harness reads the
    // health and metrics addresses from the config text, so fill them in here.
    let config = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/fixtures/all_policies.yaml"
    ))
    .unwrap()
    .replace("${env:TG_GRPC_PORT}", &grpc.to_string())
    .replace("${env:TG_HEALTH_PORT}", &health.to_string())
    .replace("${env:TG_METRICS_PORT}", &metrics.to_string())
    .replace("${env:TG_BACKEND_PORT}", &backend.addr().port().to_string());
    let gateway = Gateway::start(&config).await;

    let error = |s: &mut Span| otlp::set_error(s, "failed");
    let traces = vec![
        // Dropped by drop-healthy-probes: a probe route without errors. Evaluation stops there.
        trace(1, "api", 1, |s| {
            s.attributes.push(string("http.route", "/live"))
        }),
        // A probe route with an error is not dropped.
        trace(2, "api", 1, |s| {
            s.attributes.push(string("http.route", "/live"));
            error(s);
        }),
        trace(3, "api", 1, |s| {
            s.attributes
                .push(attr("http.response.status_code", Value::IntValue(503)))
        }),
        trace(4, "api", 1, |s| {
            s.attributes.push(string("http.route", "/pay/card"))
        }),
        trace(5, "nightly-batch", 1, |_| {}),
        trace(6, "api", 60, |_| {}),
        trace(7, "api", 1, |s| s.trace_state = "vendor=priority".into()),
        trace(8, "api", 1, |s| s.flags = 1),
        trace(9, "api", 1, |s| {
            s.attributes
                .push(attr("app.force_sample", Value::BoolValue(true)))
        }),
        trace(10, "api", 1, |s| {
            s.events.push(Event {
                name: "exception".into(),
                attributes: vec![string("exception.type", "ReadTimeoutError")],
                ..Default::default()
            })
        }),
        {
            let mut t = trace(11, "api", 1, |_| {});
            t.resource.push(string("deployment.environment", "staging"));
            t
        },
        trace(12, "api", 1, |s| {
            s.end_time_unix_nano = s.start_time_unix_nano + 3_000_000_000
        }),
    ];
    let mut client = otlp::grpc_client(&format!("http://127.0.0.1:{grpc}")).await;
    client.export(request(&traces)).await.unwrap();

    let spans_kept: usize = traces
        .iter()
        .filter(|t| t.id != 1)
        .map(|t| t.spans.len())
        .sum();
    backend.wait_for_spans(spans_kept, WAIT).await.unwrap();
    let deadline = tokio::time::Instant::now() + WAIT;
    while gateway
        .metric_opt(
            "otelcol_processor_tail_sampling_global_count_traces_sampled",
            &[],
        )
        .await
        != Some(12.0)
    {
        assert!(
            tokio::time::Instant::now() < deadline,
            "not every trace was decided"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    let kept: BTreeSet<String> = backend.spans_by_trace().into_keys().collect();
    let expected: BTreeSet<String> = (2..=12u128)
        .map(|t| support::hex(&otlp::trace_id(t)))
        .collect();
    assert_eq!(kept, expected, "everything but the healthy probe is kept");
    assert_eq!(backend.span_count(), spans_kept, "kept traces are whole");

    // A policy that sampled nothing has no `sampled="true"` series, so `None` is the reading
    // of 0 (the name and labels are checked against the catalog, so it is not a rename).
    let sampled = |policy: &'static str| {
        let gateway = &gateway;
        async move {
            gateway
                .metric_opt(
                    "otelcol_processor_tail_sampling_count_traces_sampled",
                    &[("policy", policy), ("sampled", "true")],
                )
                .await
        }
    };
    // Traces 2-12 reach every policy; each trigger hits only its policy.
    // The Collector's hash, computed by tests/support/oracle.rs, not by tailgate's policy.
    let baseline_kept = (2..=12u128)
        .filter(|t| probabilistic_keeps("tailgate-fixture", 5.0, &otlp::trace_id(*t)))
        .count() as f64;
    for (policy, want) in [
        ("failed-spans", 1.0),
        ("server-errors", 1.0),
        ("payment-routes", 1.0),
        ("big-traces", 1.0),
        ("vendor-priority", 1.0),
        ("upstream-sampled", 1.0),
        ("force-sample", 1.0),
        ("ottl-rules", 1.0),
        ("keep-everything-in-staging", 1.0),
        ("slow-requests", 1.0),
        ("baseline", baseline_kept),
        // invert_match: every trace whose service is not nightly-batch.
        ("not-from-batch-jobs", 10.0),
        // Budgets are far from exhausted: everything passes.
        ("span-budget", 11.0),
        ("byte-budget", 11.0),
        ("tiered-budget", 11.0),
        // Every span here is a SERVER span, so "not internal" holds for all.
        ("not-internal", 11.0),
    ] {
        let want = (want > 0.0).then_some(want);
        assert_eq!(sampled(policy).await, want, "traces sampled by {policy}");
    }
    assert_eq!(
        gateway
            .metric(
                "otelcol_processor_tail_sampling_count_traces_sampled",
                &[("policy", "drop-healthy-probes"), ("decision", "dropped")],
            )
            .await,
        1.0
    );
}
