//! The "done when" of issue 11: a config in the shape platform teams run as a gateway today
//! (health_check, pprof, zpages and bearertokenauth extensions; OTLP gRPC and HTTP receivers with
//! TLS and authentication; memory_limiter, filter, resource, tail_sampling with num_shards and
//! batch; an otlphttp exporter with auth, sending_queue and retry_on_failure; telemetry metrics in
//! the `readers` form) validates, starts, and works end to end.

mod support;

use std::process::Command;
use std::time::Duration;

use opentelemetry_proto::tonic::collector::trace::v1::trace_service_client::TraceServiceClient;
use support::{free_port, otlp, Gateway, RecordingBackend};
use tonic::metadata::MetadataValue;
use tonic::transport::{Certificate, Channel, ClientTlsConfig};

const WAIT: Duration = Duration::from_secs(20);

async fn tls_client(port: u16, ca: &str) -> TraceServiceClient<Channel> {
    let tls = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(ca))
        .domain_name("localhost");
    let channel = Channel::from_shared(format!("https://127.0.0.1:{port}"))
        .unwrap()
        .tls_config(tls)
        .unwrap()
        .connect()
        .await
        .unwrap();
    TraceServiceClient::new(channel)
}

fn with_token<T>(message: T, token: Option<&str>) -> tonic::Request<T> {
    let mut request = tonic::Request::new(message);
    if let Some(token) = token {
        request.metadata_mut().insert(
            "authorization",
            MetadataValue::try_from(format!("Bearer {token}")).unwrap(),
        );
    }
    request
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_production_gateway_config_validates_starts_and_works_end_to_end() {
    let cert = rcgen::generate_simple_self_signed(vec!["localhost".into()]).unwrap();
    let (cert_pem, key_pem) = (cert.cert.pem(), cert.signing_key.serialize_pem());
    let dir = tempfile::tempdir().unwrap();
    let (cert_file, key_file) = (dir.path().join("tls.crt"), dir.path().join("tls.key"));
    std::fs::write(&cert_file, &cert_pem).unwrap();
    std::fs::write(&key_file, &key_pem).unwrap();
    let backend = RecordingBackend::start_http().await;
    let (grpc, http, health, metrics, pprof, zpages) = (
        free_port(),
        free_port(),
        free_port(),
        free_port(),
        free_port(),
        free_port(),
    );
    let config = format!(
        r#"
extensions:
  health_check:
    endpoint: 127.0.0.1:{health}
  pprof:
    endpoint: 127.0.0.1:{pprof}
  zpages:
    endpoint: 127.0.0.1:{zpages}
  bearertokenauth:
    scheme: Bearer
    token: client-token
  bearertokenauth/tempo:
    token: tempo-token

receivers:
  otlp:
    protocols:
      grpc:
        endpoint: 127.0.0.1:{grpc}
        max_recv_msg_size_mib: 16
        tls:
          cert_file: {cert}
          key_file: {key}
          min_version: "1.2"
          reload_interval: 1h
        auth:
          authenticator: bearertokenauth
      http:
        endpoint: 127.0.0.1:{http}
        tls:
          cert_file: {cert}
          key_file: {key}
        auth:
          authenticator: bearertokenauth

processors:
  memory_limiter:
    check_interval: 1s
    limit_percentage: 80
    spike_limit_percentage: 20
  filter/healthchecks:
    error_mode: ignore
    traces:
      span:
        - 'attributes["http.route"] == "/healthz"'
  resource:
    attributes:
      - key: deployment.environment
        value: production
        action: upsert
  tail_sampling:
    decision_wait: 500ms
    num_traces: 100000
    num_shards: 4
    policies:
      - name: errors
        type: status_code
        status_code: {{status_codes: [ERROR]}}
  batch:
    timeout: 100ms
    send_batch_size: 1024

exporters:
  otlphttp/tempo:
    endpoint: {backend}
    compression: gzip
    auth:
      authenticator: bearertokenauth/tempo
    sending_queue:
      enabled: true
      num_consumers: 4
      queue_size: 1000
    retry_on_failure:
      enabled: true
      initial_interval: 100ms
      max_interval: 1s
      max_elapsed_time: 60s

service:
  extensions: [health_check, pprof, zpages, bearertokenauth, bearertokenauth/tempo]
  telemetry:
    metrics:
      level: detailed
      readers:
        - pull:
            exporter:
              prometheus:
                host: 127.0.0.1
                port: {metrics}
  pipelines:
    traces:
      receivers: [otlp]
      processors: [memory_limiter, filter/healthchecks, resource, tail_sampling, batch]
      exporters: [otlphttp/tempo]
"#,
        cert = cert_file.display(),
        key = key_file.display(),
        backend = backend.endpoint(),
    );

    // (The `readers` form names counters with `_total`, as the Collector's Prometheus reader does.)
    // Validates, saying what it accepts without implementing.
    let config_path = dir.path().join("gateway.yaml");
    std::fs::write(&config_path, &config).unwrap();
    let validated = Command::new(env!("CARGO_BIN_EXE_tailgate"))
        .args(["validate", "--config"])
        .arg(&config_path)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&validated.stderr);
    assert!(validated.status.success(), "{stderr}");
    assert!(
        stderr.contains("extension `pprof` is accepted but does nothing"),
        "{stderr}"
    );
    assert!(
        stderr.contains("extension `zpages` is accepted but does nothing"),
        "{stderr}"
    );

    // Starts.
    let gateway = Gateway::start(&config).await;
    assert!(gateway
        .logs()
        .contains("extension `pprof` is accepted but does nothing"));

    // An authenticated client: an error trace, a health-check trace that would be kept too (it
    // has an error), and an OK trace the policy does not keep, in one request.
    let mut client = tls_client(grpc, &cert_pem).await;
    let root = {
        let mut s = otlp::span(otlp::trace_id(0xe1), otlp::span_id(1), "POST /checkout");
        otlp::set_error(&mut s, "card declined");
        s
    };
    let child = otlp::child_of(
        otlp::span(otlp::trace_id(0xe1), otlp::span_id(2), "charge card"),
        &root,
    );
    let mut probe = otlp::span(otlp::trace_id(0x4e), otlp::span_id(3), "GET /healthz");
    probe.attributes.push(otlp::kv("http.route", "/healthz"));
    otlp::set_error(&mut probe, "probe failed");
    let ok = otlp::span(otlp::trace_id(0x0c), otlp::span_id(4), "GET /catalog");
    client
        .export(with_token(
            otlp::request("checkout", vec![root, child, probe, ok]),
            Some("client-token"),
        ))
        .await
        .unwrap();

    backend.wait_for_spans(2, WAIT).await.unwrap();
    // Decided together with the error trace: by now the others would have arrived.
    let spans = backend.spans();
    let mut names: Vec<String> = spans.iter().map(|s| s.span.name.clone()).collect();
    names.sort();
    assert_eq!(names, ["POST /checkout", "charge card"]);
    for span in &spans {
        assert_eq!(
            span.resource_attribute("deployment.environment").as_deref(),
            Some("production")
        );
        assert_eq!(span.service_name().as_deref(), Some("checkout"));
    }
    for request in backend.requests() {
        assert_eq!(request.header("authorization"), Some("Bearer tempo-token"));
    }
    assert_eq!(
        gateway
            .metric(
                "otelcol_processor_filter_spans_filtered_total",
                &[("filter", "filter/healthchecks")]
            )
            .await,
        1.0
    );

    // Unauthenticated clients are refused, on both protocols, and counted.
    let refused = client
        .export(with_token(
            otlp::request(
                "intruder",
                vec![otlp::span(otlp::trace_id(0xbad), otlp::span_id(9), "x")],
            ),
            None,
        ))
        .await
        .unwrap_err();
    assert_eq!(refused.code(), tonic::Code::Unauthenticated, "{refused}");
    let refused = client
        .export(with_token(
            otlp::request(
                "intruder",
                vec![otlp::span(otlp::trace_id(0xbad), otlp::span_id(9), "x")],
            ),
            Some("guessed"),
        ))
        .await
        .unwrap_err();
    assert_eq!(refused.code(), tonic::Code::Unauthenticated, "{refused}");
    let unauthenticated = gateway
        .metric(
            "tailgate_receiver_unauthenticated_requests_total",
            &[("receiver", "otlp"), ("transport", "grpc")],
        )
        .await;
    assert_eq!(unauthenticated, 2.0);
    let logs = gateway.logs();
    assert!(
        !logs.contains("client-token") && !logs.contains("tempo-token"),
        "{logs}"
    );
}

/// `sampling_strategy: span-ingest` decides a trace when its first batch arrives, not
/// `decision_wait` later (here an hour), and its later spans follow the decision.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn span_ingest_decides_each_trace_as_its_first_batch_arrives() {
    let backend = RecordingBackend::start_http().await;
    let (grpc, health, metrics) = (free_port(), free_port(), free_port());
    let config = format!(
        r#"
receivers:
  otlp:
    protocols:
      grpc: {{endpoint: "127.0.0.1:{grpc}"}}
processors:
  tail_sampling:
    decision_wait: 1h
    sampling_strategy: span-ingest
    policies:
      - {{name: errors, type: status_code, status_code: {{status_codes: [ERROR]}}}}
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
    traces: {{receivers: [otlp], processors: [tail_sampling], exporters: [otlphttp]}}
"#,
        backend = backend.endpoint()
    );
    let _gateway = Gateway::start(&config).await;
    let mut client = otlp::grpc_client(&format!("http://127.0.0.1:{grpc}")).await;
    let mut first = otlp::span(otlp::trace_id(0x51), otlp::span_id(1), "first batch");
    otlp::set_error(&mut first, "boom");
    client
        .export(otlp::request("api", vec![first]))
        .await
        .unwrap();
    backend.wait_for_spans(1, WAIT).await.unwrap();
    let late = otlp::span(otlp::trace_id(0x51), otlp::span_id(2), "later batch");
    client
        .export(otlp::request("api", vec![late]))
        .await
        .unwrap();
    backend.wait_for_spans(2, WAIT).await.unwrap();
}
