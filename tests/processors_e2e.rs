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
