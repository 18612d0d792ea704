//! End to end: the processors production gateways carry besides `tail_sampling` and `batch`:
//! `memory_limiter` (in any position), `filter` (OTTL span conditions), `resource` and
//! `attributes`, each through the real binary with real OTLP clients and a recording backend.

mod support;

use std::time::Duration;

use support::{free_port, otlp, Gateway, RecordingBackend};

const WAIT: Duration = Duration::from_secs(20);

/// A pass-through gateway (gRPC and HTTP receivers) with `processors` and the given
/// `processors:` list, exporting to `backend`. Returns (config, grpc port, http port).
fn gateway_config(backend: &RecordingBackend, processors: &str, list: &str) -> (String, u16, u16) {
    let (grpc, http, health, metrics) = (free_port(), free_port(), free_port(), free_port());
    let config = format!(
        r#"
receivers:
  otlp:
    protocols:
      grpc: {{endpoint: "127.0.0.1:{grpc}"}}
      http: {{endpoint: "127.0.0.1:{http}"}}
processors:
{processors}
exporters:
  otlphttp:
    endpoint: {backend}
    compression: none
extensions:
  health_check: {{endpoint: "127.0.0.1:{health}"}}
service:
  extensions: [health_check]
  telemetry: {{metrics: {{address: "127.0.0.1:{metrics}"}}}}
  pipelines:
    traces:
      receivers: [otlp]
      processors: [{list}]
      exporters: [otlphttp]
"#,
        backend = backend.endpoint()
    );
    (config, grpc, http)
}

async fn http_post(
    port: u16,
    request: &opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest,
) -> u16 {
    use prost::Message;
    support::http::post(
        &format!("http://127.0.0.1:{port}/v1/traces"),
        &[("content-type", "application/x-protobuf")],
        request.encode_to_vec(),
        WAIT,
    )
    .await
    .unwrap()
    .status
    .as_u16()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn above_the_memory_limiters_soft_limit_new_data_is_refused_with_a_retryable_status() {
    let backend = RecordingBackend::start_http().await;
    // A limit far below what the process itself takes: every request is over it. Listed after
    // `batch`, where the Collector accepts it too.
    let (config, grpc, http) = gateway_config(
        &backend,
        "  batch:\n  memory_limiter:\n    check_interval: 100ms\n    limit_mib: 2\n",
        "batch, memory_limiter",
    );
    let gateway = Gateway::start(&config).await;
    let request = otlp::request(
        "api",
        vec![otlp::span(otlp::trace_id(1), otlp::span_id(1), "refused")],
    );
    let mut client = otlp::grpc_client(&format!("http://127.0.0.1:{grpc}")).await;
    let status = client.export(request.clone()).await.unwrap_err();
    assert_eq!(status.code(), tonic::Code::Unavailable, "{status}");
    assert!(status.message().contains("memory_limiter"), "{status}");
    assert_eq!(http_post(http, &request).await, 503);
    assert_eq!(
        gateway
            .metric("tailgate_memory_limiter_refused_requests", &[])
            .await,
        2.0
    );
    assert_eq!(
        gateway
            .metric(
                "otelcol_receiver_refused_spans",
                &[("receiver", "otlp"), ("transport", "grpc")]
            )
            .await,
        1.0
    );
    assert!(backend.requests().is_empty());
    // Above the hard limit the daemon has mimalloc return its free memory at every reading
    // (`min_gc_interval_when_hard_limited` defaults to 0): the release `main.rs` registers is
    // wired to the limiter and runs. Polled: the counter lives in the gateway's process.
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let releases = gateway
            .metric_opt("tailgate_memory_limiter_memory_releases", &[])
            .await
            .unwrap_or(0.0);
        if releases >= 2.0 {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{releases} memory releases after {WAIT:?} above the hard limit"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn under_the_memory_limiters_limit_data_flows_with_the_limiter_in_any_position() {
    let backend = RecordingBackend::start_http().await;
    let (config, grpc, _) = gateway_config(
        &backend,
        "  batch:\n    timeout: 10ms\n  memory_limiter:\n    check_interval: 1s\n    limit_percentage: 90\n    spike_limit_percentage: 10\n",
        "batch, memory_limiter",
    );
    let _gateway = Gateway::start(&config).await;
    let mut client = otlp::grpc_client(&format!("http://127.0.0.1:{grpc}")).await;
    client
        .export(otlp::request(
            "api",
            vec![otlp::span(otlp::trace_id(2), otlp::span_id(1), "accepted")],
        ))
        .await
        .unwrap();
    backend.wait_for_spans(1, WAIT).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_filter_drops_matching_spans_before_they_are_buffered_and_counts_them() {
    let backend = RecordingBackend::start_http().await;
    let (config, grpc, _) = gateway_config(
        &backend,
        r#"  filter/health:
    error_mode: ignore
    traces:
      span:
        - 'attributes["http.route"] == "/health"'
      spanevent:
        - 'name == "cache.miss"'
"#,
        "filter/health",
    );
    let gateway = Gateway::start(&config).await;
    let mut health = otlp::span(otlp::trace_id(10), otlp::span_id(1), "GET /health");
    health.attributes.push(otlp::kv("http.route", "/health"));
    let mut checkout = otlp::span(otlp::trace_id(11), otlp::span_id(2), "POST /checkout");
    checkout
        .attributes
        .push(otlp::kv("http.route", "/checkout"));
    let mut noisy = otlp::span(otlp::trace_id(11), otlp::span_id(3), "lookup");
    noisy
        .events
        .push(opentelemetry_proto::tonic::trace::v1::span::Event {
            name: "cache.miss".into(),
            ..Default::default()
        });
    let kept = otlp::span(otlp::trace_id(12), otlp::span_id(4), "worker");
    let mut client = otlp::grpc_client(&format!("http://127.0.0.1:{grpc}")).await;
    client
        .export(otlp::request("api", vec![health, checkout, noisy, kept]))
        .await
        .unwrap();
    backend.wait_for_spans(2, WAIT).await.unwrap();
    let filtered = gateway
        .metric(
            "otelcol_processor_filter_spans_filtered",
            &[("filter", "filter/health")],
        )
        .await;
    assert_eq!(filtered, 2.0);
    let mut names: Vec<String> = backend
        .spans()
        .iter()
        .map(|s| s.span.name.clone())
        .collect();
    names.sort();
    assert_eq!(names, ["POST /checkout", "worker"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_filter_condition_outside_the_ottl_subset_is_a_config_error_quoting_it() {
    let backend = RecordingBackend::start_http().await;
    let (config, _, _) = gateway_config(
        &backend,
        r#"  filter:
    traces:
      span:
        - 'IsMatch(name, "^GET")'
        - 'Len(attributes) > 10'
"#,
        "filter",
    );
    let (status, logs) = Gateway::run_until_exit(&config, WAIT).await;
    assert!(!status.success(), "{logs}");
    assert!(
        logs.contains("processors.filter.traces.span[1]: condition `Len(attributes) > 10`"),
        "{logs}"
    );
    assert!(!logs.contains("span[0]"), "{logs}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resource_and_attributes_processors_edit_only_what_they_touch() {
    use prost::Message;
    let backend = RecordingBackend::start_http().await;
    let (config, grpc, _) = gateway_config(
        &backend,
        r#"  resource:
    attributes:
      - {key: deployment.environment, action: insert, value: prod}
      - {key: service.name, action: update, value: checkout}
  attributes/pii:
    actions:
      - {key: user.email, action: hash}
      - {key: internal.debug, action: delete}
"#,
        "resource, attributes/pii",
    );
    let _gateway = Gateway::start(&config).await;
    let mut touched = otlp::span(otlp::trace_id(20), otlp::span_id(1), "touched");
    touched.attributes.push(otlp::kv("user.email", "a@b.c"));
    touched.attributes.push(otlp::kv("http.route", "/pay"));
    let untouched = otlp::span(otlp::trace_id(20), otlp::span_id(2), "untouched");
    let untouched_bytes = untouched.encode_to_vec();
    let mut client = otlp::grpc_client(&format!("http://127.0.0.1:{grpc}")).await;
    client
        .export(otlp::request("api", vec![touched, untouched]))
        .await
        .unwrap();
    backend.wait_for_spans(2, WAIT).await.unwrap();
    let spans = backend.spans();
    for s in &spans {
        assert_eq!(
            s.resource_attribute("deployment.environment").as_deref(),
            Some("prod")
        );
        assert_eq!(s.service_name().as_deref(), Some("checkout"));
    }
    let touched = spans.iter().find(|s| s.span.name == "touched").unwrap();
    let expected: String = ring::digest::digest(&ring::digest::SHA256, b"a@b.c")
        .as_ref()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    assert_eq!(touched.attribute("user.email"), Some(expected));
    assert_eq!(touched.attribute("http.route").as_deref(), Some("/pay"));
    let untouched = spans.iter().find(|s| s.span.name == "untouched").unwrap();
    assert_eq!(untouched.span.encode_to_vec(), untouched_bytes);
}
