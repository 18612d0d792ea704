//! End to end with the OpenTelemetry JS SDK (`tests/clients/js/async_jobs.js`, packages pinned in
//! its `package-lock.json`): the async-job shape, a producer service and a worker service that
//! export the same traces separately, the worker continuing each trace from the W3C
//! `traceparent` carried in the job message. Once per trace exporter of the SDK (OTLP/HTTP JSON,
//! OTLP/HTTP protobuf, OTLP/gRPC), the real binary as a sampler must keep exactly the traces its
//! policies keep, each whole (both services' spans) and in one export request to the recording
//! backend.

mod support;

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use support::node::{run_async_jobs, JsExporter};
use support::oracle::probabilistic_keeps;
use support::python::JobKind;
use support::{Gateway, RecordingBackend, SamplerConfig, SamplerPorts};

const WAIT: Duration = Duration::from_secs(20);
const JOBS: usize = 40;

const ERRORS_SLOW_BASELINE: &str = "
- name: errors
  type: status_code
  status_code: {status_codes: [ERROR]}
- name: slow
  type: latency
  latency: {threshold_ms: 2000}
- name: baseline
  type: probabilistic
  probabilistic: {sampling_percentage: 20}
";

fn id_bytes(hex: &str) -> [u8; 16] {
    let mut id = [0u8; 16];
    for (i, byte) in id.iter_mut().enumerate() {
        *byte = u8::from_str_radix(&hex[2 * i..2 * i + 2], 16).unwrap();
    }
    id
}

/// Waits until the gateway has decided `traces` traces, by its own counter (a separate process
/// offers no other signal; each scrape is a real request, bounded by `WAIT`).
async fn wait_for_decisions(gateway: &Gateway, traces: f64) {
    let name = "otelcol_processor_tail_sampling_global_count_traces_sampled";
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let decided = gateway.metric(name, &[]).await;
        if decided >= traces {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "only {decided} of {traces} traces decided within {WAIT:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn async_jobs_are_kept_or_dropped_as_whole_traces(exporter: JsExporter) {
    let backend = RecordingBackend::start_grpc().await;
    let ports = SamplerPorts::free();
    let mut config = SamplerConfig::new(ports, ERRORS_SLOW_BASELINE, &backend);
    config.batch = true;
    let gateway = Gateway::start(&config.render()).await;

    let (endpoint, transport) = match exporter {
        JsExporter::Grpc => (ports.grpc_endpoint(), "grpc"),
        JsExporter::HttpJson | JsExporter::HttpProtobuf => (ports.http_endpoint(), "http"),
    };
    let report = run_async_jobs(exporter, &endpoint, JOBS).await;
    wait_for_decisions(&gateway, JOBS as f64).await;
    // Every span came in over the exporter's transport.
    assert_eq!(
        gateway
            .metric(
                "otelcol_receiver_accepted_spans",
                &[("transport", transport)]
            )
            .await,
        report.total_spans() as f64
    );

    // Every error and slow trace, and exactly the normal traces the Collector's probabilistic
    // hash keeps at 20%.
    // (By tests/support/oracle.rs, written independently of tailgate's policy.)
    let expected: BTreeSet<String> = report
        .jobs
        .iter()
        .filter(|job| {
            job.kind != JobKind::Normal || probabilistic_keeps("", 20.0, &id_bytes(&job.trace_id))
        })
        .map(|job| job.trace_id.clone())
        .collect();
    // Every 5th of the 40 jobs fails, every 7th other one is slow (7, 14, 21, 28).
    assert_eq!(report.of_kind(JobKind::Error).count(), JOBS / 5);
    assert_eq!(report.of_kind(JobKind::Slow).count(), 4);
    assert!(
        expected.len() < report.jobs.len(),
        "some normal traces are dropped"
    );

    backend
        .wait_for_spans(expected.len() * 4, WAIT)
        .await
        .unwrap();
    let traces = backend.spans_by_trace();
    let received: BTreeSet<String> = traces.keys().cloned().collect();
    assert_eq!(received, expected, "{exporter:?}: the kept traces");
    for (trace, spans) in &traces {
        let names: BTreeSet<String> = spans.iter().map(|s| s.span.name.clone()).collect();
        assert_eq!(
            names,
            BTreeSet::from(
                ["POST /orders", "enqueue job", "process job", "db query"].map(String::from)
            ),
            "trace {trace} is whole"
        );
        let services: BTreeSet<_> = spans.iter().filter_map(|s| s.service_name()).collect();
        assert_eq!(
            services,
            BTreeSet::from(["api".to_string(), "worker".to_string()]),
            "trace {trace} has both services"
        );
    }
    // The worker continued the producer's trace: `process job`'s parent is `enqueue job`.
    for (trace, spans) in &traces {
        let by_name: BTreeMap<&str, _> = spans.iter().map(|s| (s.span.name.as_str(), s)).collect();
        assert_eq!(
            by_name["process job"].span.parent_span_id, by_name["enqueue job"].span.span_id,
            "trace {trace}: the worker's span continues the traceparent"
        );
    }
    // Never half a trace: each trace left in one export request.
    let mut requests_per_trace: BTreeMap<String, BTreeSet<usize>> = BTreeMap::new();
    for (i, request) in backend.accepted_requests().iter().enumerate() {
        for span in request.spans() {
            requests_per_trace
                .entry(span.trace_id())
                .or_default()
                .insert(i);
        }
    }
    for (trace, requests) in requests_per_trace {
        assert_eq!(requests.len(), 1, "trace {trace} split over {requests:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn async_jobs_from_the_js_sdk_over_otlp_http_json_stay_whole() {
    async_jobs_are_kept_or_dropped_as_whole_traces(JsExporter::HttpJson).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn async_jobs_from_the_js_sdk_over_otlp_http_protobuf_stay_whole() {
    async_jobs_are_kept_or_dropped_as_whole_traces(JsExporter::HttpProtobuf).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn async_jobs_from_the_js_sdk_over_otlp_grpc_stay_whole() {
    async_jobs_are_kept_or_dropped_as_whole_traces(JsExporter::Grpc).await;
}
