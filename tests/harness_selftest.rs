//! Tests of the end-to-end harness itself (`tests/support`), without the gateway: the recording
//! backend over gRPC and HTTP, its failure modes, the Python and Rust SDK clients against it, and
//! the pure helpers (metric parsing, config rendering).
//!
//! If these fail, the gateway's end-to-end tests cannot be trusted.

mod support;

use std::io::Write;
use std::time::Duration;

use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use prost::Message;
use support::otlp::{self, child_of, grpc_client, request, set_error, span, span_id, trace_id};
use support::python::{run_async_jobs, JobKind};
use support::{
    hex, parse_metric_unchecked, Failure, Protocol, RecordingBackend, SamplerConfig, SamplerPorts,
};
use tonic::Code;

const WAIT: Duration = Duration::from_secs(10);

/// Two traces: trace 1 with a root and a child in error, trace 2 with one span.
fn two_traces() -> ExportTraceServiceRequest {
    let root = span(trace_id(1), span_id(1), "GET /");
    let mut child = child_of(span(trace_id(1), span_id(2), "SELECT"), &root);
    set_error(&mut child, "boom");
    let other = span(trace_id(2), span_id(3), "GET /health");
    request("api", vec![root, child, other])
}

#[tokio::test]
async fn recording_backend_records_every_span() {
    let backend = RecordingBackend::start_grpc().await;
    let mut client = grpc_client(&backend.endpoint()).await;
    let mut export = tonic::Request::new(two_traces());
    export
        .metadata_mut()
        .insert("x-scope-orgid", "tenant-a".parse().unwrap());
    client.export(export).await.expect("export accepted");

    backend.wait_for_spans(3, WAIT).await.unwrap();
    assert_eq!(backend.request_count(), 1);
    assert_eq!(
        backend.header_values("X-Scope-OrgID"),
        vec![Some("tenant-a".to_string())]
    );
    let traces = backend.spans_by_trace();
    assert_eq!(traces.len(), 2, "{traces:?}");
    let first = &traces[&hex(&trace_id(1))];
    assert_eq!(
        first
            .iter()
            .map(|s| s.span.name.as_str())
            .collect::<Vec<_>>(),
        ["GET /", "SELECT"]
    );
    assert!(first
        .iter()
        .all(|s| s.service_name().as_deref() == Some("api")));
    assert_eq!(traces[&hex(&trace_id(2))].len(), 1);
    assert_eq!(backend.requests()[0].protocol, Protocol::Grpc);
}

#[tokio::test]
async fn a_failing_backend_answers_unavailable_for_the_first_n_requests_then_ok() {
    let backend = RecordingBackend::start_grpc().await;
    backend.fail_next(2, Failure::unavailable());
    let mut client = grpc_client(&backend.endpoint()).await;

    for attempt in 1..=2 {
        let status = client
            .export(two_traces())
            .await
            .expect_err("rejected while failing");
        assert_eq!(status.code(), Code::Unavailable, "attempt {attempt}");
        assert!(status.details().is_empty(), "a plain status has no details");
    }
    client
        .export(two_traces())
        .await
        .expect("accepted after N failures");

    assert_eq!(backend.request_count(), 3, "every attempt is recorded");
    assert_eq!(backend.accepted_requests().len(), 1);
    assert_eq!(
        backend.span_count(),
        3,
        "spans of rejected requests do not count as received"
    );
}

#[tokio::test]
async fn resource_exhausted_carries_retry_info_only_when_asked_to() {
    let backend = RecordingBackend::start_grpc().await;
    backend.fail_next(1, Failure::resource_exhausted_without_retry_info());
    backend.fail_next(
        1,
        Failure::resource_exhausted_retry_after(Duration::from_millis(1500)),
    );
    let mut client = grpc_client(&backend.endpoint()).await;

    let plain = client.export(two_traces()).await.unwrap_err();
    assert_eq!(plain.code(), Code::ResourceExhausted);
    assert!(plain.details().is_empty(), "no RetryInfo: {plain:?}");

    let with_delay = client.export(two_traces()).await.unwrap_err();
    assert_eq!(with_delay.code(), Code::ResourceExhausted);
    assert_eq!(retry_delay_of(with_delay.details()), Some((1, 500_000_000)));
}

/// Decodes `google.rpc.Status` details and returns the `RetryInfo` delay as (seconds, nanos).
fn retry_delay_of(details: &[u8]) -> Option<(i64, i32)> {
    #[derive(Clone, PartialEq, prost::Message)]
    struct RpcStatus {
        #[prost(message, repeated, tag = "3")]
        details: Vec<prost_types::Any>,
    }
    #[derive(Clone, PartialEq, prost::Message)]
    struct RetryInfo {
        #[prost(message, optional, tag = "1")]
        retry_delay: Option<prost_types::Duration>,
    }
    let status = RpcStatus::decode(details).ok()?;
    let any = status
        .details
        .iter()
        .find(|a| a.type_url == "type.googleapis.com/google.rpc.RetryInfo")?;
    let delay = RetryInfo::decode(any.value.as_slice()).ok()?.retry_delay?;
    Some((delay.seconds, delay.nanos))
}

#[tokio::test]
async fn http_backend_records_protobuf_gzip_and_json_bodies_alike() {
    let backend = RecordingBackend::start_http().await;
    let url = format!("{}/v1/traces", backend.endpoint());
    let body = two_traces().encode_to_vec();

    let response = support::http::post(
        &url,
        &[
            ("content-type", "application/x-protobuf"),
            ("x-scope-orgid", "t1"),
        ],
        body.clone(),
        WAIT,
    )
    .await
    .unwrap();
    assert_eq!(response.status, 200, "{}", response.text());

    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    gz.write_all(&body).unwrap();
    let response = support::http::post(
        &url,
        &[
            ("content-type", "application/x-protobuf"),
            ("content-encoding", "gzip"),
        ],
        gz.finish().unwrap(),
        WAIT,
    )
    .await
    .unwrap();
    assert_eq!(response.status, 200, "{}", response.text());

    let json = serde_json::to_vec(&two_traces()).unwrap();
    let response = support::http::post(&url, &[("content-type", "application/json")], json, WAIT)
        .await
        .unwrap();
    assert_eq!(response.status, 200, "{}", response.text());

    backend.wait_for_spans(9, WAIT).await.unwrap();
    assert_eq!(backend.refusal_reasons(), Vec::<String>::new());
    assert_eq!(
        backend.header_values("x-scope-orgid"),
        vec![Some("t1".to_string()), None, None]
    );
    let traces = backend.spans_by_trace();
    assert_eq!(traces[&hex(&trace_id(1))].len(), 6);
    assert!(backend
        .requests()
        .iter()
        .all(|r| r.protocol == Protocol::Http));
}

#[tokio::test]
async fn http_backend_failures_map_to_http_statuses_and_retry_after() {
    let backend = RecordingBackend::start_http().await;
    backend.fail_next(1, Failure::unavailable());
    backend.fail_next(
        1,
        Failure::resource_exhausted_retry_after(Duration::from_millis(1500)),
    );
    let url = format!("{}/v1/traces", backend.endpoint());
    let post = || {
        support::http::post(
            &url,
            &[("content-type", "application/x-protobuf")],
            two_traces().encode_to_vec(),
            WAIT,
        )
    };

    let unavailable = post().await.unwrap();
    assert_eq!(unavailable.status, 503);
    assert!(unavailable.headers.get("retry-after").is_none());

    let throttled = post().await.unwrap();
    assert_eq!(throttled.status, 429);
    assert_eq!(
        throttled.headers["retry-after"], "2",
        "rounded up to whole seconds"
    );
    assert_eq!(retry_delay_of(&throttled.body), Some((1, 500_000_000)));

    assert_eq!(post().await.unwrap().status, 200);
    assert_eq!(backend.request_count(), 3);
    assert_eq!(backend.span_count(), 3);
}

#[tokio::test]
async fn held_requests_are_answered_only_after_release() {
    let backend = RecordingBackend::start_grpc().await;
    backend.hold_responses();
    let mut client = grpc_client(&backend.endpoint()).await;
    let export = tokio::spawn(async move { client.export(two_traces()).await });

    backend.wait_for_held(1, WAIT).await.unwrap();
    assert_eq!(
        backend.request_count(),
        0,
        "a held request is not answered yet"
    );
    assert!(!export.is_finished());

    backend.release_responses();
    export.await.unwrap().expect("accepted once released");
    assert_eq!(backend.held_count(), 0);
    assert_eq!(backend.span_count(), 3);
}

#[tokio::test]
async fn a_shut_down_backend_refuses_clients_and_its_address_can_be_reused() {
    let backend = RecordingBackend::start_grpc().await;
    let addr = backend.addr();
    let mut client = grpc_client(&backend.endpoint()).await;
    client.export(two_traces()).await.unwrap();
    backend.shutdown().await;

    let status = client
        .export(two_traces())
        .await
        .expect_err("backend is gone");
    assert_eq!(status.code(), Code::Unavailable, "{status:?}");

    let restarted = RecordingBackend::start(Protocol::Grpc, addr).await.unwrap();
    let mut client = grpc_client(&restarted.endpoint()).await;
    client.export(two_traces()).await.unwrap();
    assert_eq!(
        restarted.span_count(),
        3,
        "a restarted backend starts empty"
    );
}

#[tokio::test]
async fn a_wait_that_times_out_says_what_arrived() {
    let backend = RecordingBackend::start_grpc().await;
    let mut client = grpc_client(&backend.endpoint()).await;
    client.export(two_traces()).await.unwrap();
    let error = backend
        .wait_for_spans(4, Duration::from_millis(50))
        .await
        .unwrap_err();
    let message = error.to_string();
    assert!(
        message.contains("4 spans") && message.contains("3 spans in 2 traces"),
        "{message}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_rust_sdk_exporter_reaches_the_backend_with_its_headers() {
    use opentelemetry::trace::{Tracer, TracerProvider as _};
    use opentelemetry_otlp::{WithExportConfig, WithTonicConfig};

    let backend = RecordingBackend::start_grpc().await;
    let mut metadata = tonic::metadata::MetadataMap::new();
    metadata.insert("x-scope-orgid", "tenant-b".parse().unwrap());
    let exporter = opentelemetry_otlp::SpanExporter::builder()
        .with_tonic()
        .with_endpoint(backend.endpoint())
        .with_metadata(metadata)
        .build()
        .unwrap();
    let provider = opentelemetry_sdk::trace::SdkTracerProvider::builder()
        .with_resource(
            opentelemetry_sdk::Resource::builder()
                .with_service_name("rust-client")
                .build(),
        )
        .with_batch_exporter(exporter)
        .build();
    let tracer = provider.tracer("harness");
    tracer.in_span("parent", |_| tracer.in_span("child", |_| {}));
    provider.force_flush().unwrap();

    backend.wait_for_spans(2, WAIT).await.unwrap();
    let traces = backend.spans_by_trace();
    assert_eq!(traces.len(), 1, "{traces:?}");
    let spans = traces.values().next().unwrap();
    assert!(spans
        .iter()
        .all(|s| s.service_name().as_deref() == Some("rust-client")));
    assert!(backend
        .header_values("x-scope-orgid")
        .iter()
        .all(|v| v.as_deref() == Some("tenant-b")));
    provider.shutdown().unwrap();
}

#[tokio::test]
async fn the_python_async_jobs_client_delivers_four_spans_per_job() {
    let backend = RecordingBackend::start_grpc().await;
    let report = run_async_jobs(&backend.endpoint(), 14).await;
    assert_eq!(report.of_kind(JobKind::Error).count(), 2, "jobs 5 and 10");
    assert_eq!(report.of_kind(JobKind::Slow).count(), 2, "jobs 7 and 14");
    assert_eq!(report.of_kind(JobKind::Normal).count(), 10);

    backend
        .wait_for_spans(report.total_spans(), WAIT)
        .await
        .unwrap();
    let traces = backend.spans_by_trace();
    assert_eq!(traces.len(), 14);
    for job in &report.jobs {
        let spans = &traces[&job.trace_id];
        assert_eq!(spans.len(), job.spans, "job {}: {spans:?}", job.job);
        let named = |name: &str| {
            spans
                .iter()
                .find(|s| s.span.name == name)
                .unwrap_or_else(|| panic!("job {}: no `{name}` span", job.job))
        };
        let server = named("POST /orders");
        let producer = named("enqueue job");
        let consumer = named("process job");
        let db = named("db query");

        // The worker joined the API's trace through the traceparent in the message.
        assert_eq!(server.service_name().as_deref(), Some("api"));
        assert_eq!(consumer.service_name().as_deref(), Some("worker"));
        assert_eq!(producer.span.parent_span_id, server.span.span_id);
        assert_eq!(consumer.span.parent_span_id, producer.span.span_id);
        assert_eq!(db.span.parent_span_id, consumer.span.span_id);

        let has_error = db.span.status.as_ref().is_some_and(|s| s.code == 2);
        assert_eq!(has_error, job.kind == JobKind::Error, "job {}", job.job);
        let length = Duration::from_nanos(
            consumer.span.end_time_unix_nano - server.span.start_time_unix_nano,
        );
        match job.kind {
            JobKind::Slow => assert!(length >= Duration::from_millis(2500), "{length:?}"),
            _ => assert!(
                length >= Duration::from_millis(300) && length < Duration::from_secs(2),
                "job {} lasted {length:?}",
                job.job
            ),
        }
    }

    // The worker half went out in export calls of its own, after the API half.
    let requests = backend.accepted_requests();
    let services: Vec<Vec<String>> = requests
        .iter()
        .map(|r| {
            let mut names: Vec<String> =
                r.spans().iter().filter_map(|s| s.service_name()).collect();
            names.dedup();
            names
        })
        .collect();
    assert!(
        services.iter().all(|names| names.len() == 1),
        "each export call carries one service: {services:?}"
    );
    let first_worker = services.iter().position(|n| n[0] == "worker").unwrap();
    assert!(first_worker > 0 && services[first_worker..].iter().all(|n| n[0] == "worker"));
}

#[test]
fn prometheus_text_is_parsed_by_name_and_label_subset() {
    let text = r#"
# HELP tailgate_spans_received_total Spans received.
# TYPE tailgate_spans_received_total counter
tailgate_spans_received_total{transport="grpc",receiver="otlp"} 12
tailgate_spans_received_total{transport="http",receiver="otlp"} 3 1700000000000
tailgate_spans_received_total_extra 100
otelcol_processor_tail_sampling_sampling_decision_latency_bucket{le="+Inf"} 4
weird{path="a \"quoted\", comma",x="1"} 2.5
buffered_traces 7
nan_metric NaN
"#;
    let total = |name, labels: &[(&str, &str)]| parse_metric_unchecked(text, name, labels);
    assert_eq!(total("tailgate_spans_received_total", &[]), Some(15.0));
    assert_eq!(
        total("tailgate_spans_received_total", &[("transport", "http")]),
        Some(3.0)
    );
    assert_eq!(
        total("tailgate_spans_received_total", &[("transport", "kafka")]),
        None
    );
    assert_eq!(
        total(
            "otelcol_processor_tail_sampling_sampling_decision_latency_bucket",
            &[("le", "+Inf")]
        ),
        Some(4.0)
    );
    assert_eq!(
        total("weird", &[("path", "a \"quoted\", comma")]),
        Some(2.5)
    );
    assert_eq!(total("buffered_traces", &[]), Some(7.0));
    assert!(total("nan_metric", &[]).unwrap().is_nan());
    assert_eq!(total("missing", &[]), None);
}

#[tokio::test]
async fn sampler_config_renders_the_collector_layout_with_the_given_ports() {
    let backend = RecordingBackend::start_grpc().await;
    let ports = SamplerPorts::free();
    let mut config = SamplerConfig::new(
        ports,
        "
        - name: errors
          type: status_code
          status_code:
            status_codes: [ERROR]
        ",
        &backend,
    );
    config.decision_wait = "500ms".into();
    config.batch = true;
    config.exporter_extra += "headers:\n  X-Scope-OrgID: tenant-a\n";
    let text = config.render();
    let yaml: serde_yaml::Value =
        serde_yaml::from_str(&text).unwrap_or_else(|e| panic!("{e}\n{text}"));

    let at = |path: &str| {
        path.split('.')
            .try_fold(&yaml, |v, key| v.get(key))
            .unwrap_or_else(|| panic!("no {path} in\n{text}"))
            .clone()
    };
    let port_of =
        |v: serde_yaml::Value| v.as_str().unwrap().rsplit_once(':').unwrap().1.to_string();
    assert_eq!(
        port_of(at("receivers.otlp.protocols.grpc.endpoint")),
        ports.grpc.to_string()
    );
    assert_eq!(
        port_of(at("receivers.otlp.protocols.http.endpoint")),
        ports.http.to_string()
    );
    assert_eq!(
        port_of(at("extensions.health_check.endpoint")),
        ports.health.to_string()
    );
    assert_eq!(
        at("processors.tail_sampling.decision_wait").as_str(),
        Some("500ms")
    );
    let policies = at("processors.tail_sampling.policies");
    assert_eq!(
        policies[0]["status_code"]["status_codes"][0].as_str(),
        Some("ERROR")
    );
    assert_eq!(
        at("exporters.otlp/backend.endpoint").as_str(),
        Some(backend.addr().to_string().as_str())
    );
    assert_eq!(
        at("exporters.otlp/backend.tls.insecure").as_bool(),
        Some(true)
    );
    assert_eq!(
        at("exporters.otlp/backend.headers.X-Scope-OrgID").as_str(),
        Some("tenant-a")
    );
    let processors = at("service.pipelines.traces.processors");
    assert_eq!(processors[1].as_str(), Some("batch"));
    assert_eq!(
        port_of(at("service.telemetry.metrics.address")),
        ports.metrics.to_string()
    );

    assert_eq!(
        support::gateway::endpoints_of(&text),
        (
            Some(format!("http://127.0.0.1:{}/", ports.health)),
            Some(format!("http://127.0.0.1:{}/metrics", ports.metrics))
        )
    );

    let http_backend = RecordingBackend::start_http().await;
    let text = support::sampler_config(&ports, "- name: all\n  type: always_sample", &http_backend);
    let yaml: serde_yaml::Value = serde_yaml::from_str(&text).unwrap();
    assert_eq!(
        yaml["exporters"]["otlphttp/backend"]["endpoint"].as_str(),
        Some(http_backend.endpoint().as_str())
    );
    assert_eq!(
        yaml["service"]["pipelines"]["traces"]["exporters"][0].as_str(),
        Some("otlphttp/backend")
    );
}

#[test]
fn the_metrics_reader_form_and_wildcard_hosts_are_made_connectable() {
    let config = "
extensions:
  health_check/1:
    endpoint: 0.0.0.0:13133
    path: /health/status
service:
  telemetry:
    metrics:
      readers:
        - pull:
            exporter:
              prometheus:
                host: 0.0.0.0
                port: 8888
";
    assert_eq!(
        support::gateway::endpoints_of(config),
        (
            Some("http://127.0.0.1:13133/health/status".to_string()),
            Some("http://127.0.0.1:8888/metrics".to_string())
        )
    );
}

#[test]
fn a_metrics_address_without_a_host_is_made_connectable() {
    let config = "
extensions:
  health_check:
    endpoint: localhost:13133
service:
  telemetry:
    metrics:
      address: :8888
";
    assert_eq!(
        support::gateway::endpoints_of(config),
        (
            Some("http://localhost:13133/".to_string()),
            Some("http://127.0.0.1:8888/metrics".to_string())
        )
    );
}

#[test]
fn otlp_helpers_render_ids_as_lower_case_hex() {
    assert_eq!(hex(&trace_id(0xab)), format!("{:032x}", 0xab));
    assert_eq!(hex(&span_id(1)), "0000000000000001");
    let attrs = vec![otlp::kv("service.name", "api")];
    assert_eq!(
        otlp::string_attribute(&attrs, "service.name").as_deref(),
        Some("api")
    );
}

/// The encoding of `two_traces()` with the span name `GET /` replaced by invalid UTF-8 of the
/// same length (prost's encoder would refuse to write it, so it is patched in the bytes).
fn two_traces_with_invalid_utf8() -> Vec<u8> {
    let mut body = two_traces().encode_to_vec();
    let at = body
        .windows(5)
        .position(|w| w == b"GET /")
        .expect("the span name is in the encoding");
    body[at..at + 5].copy_from_slice(b"GET \xff");
    body
}

/// Sends `body` as the raw message of a gRPC export call and returns the status.
async fn export_raw(endpoint: &str, body: Vec<u8>) -> Result<(), tonic::Status> {
    let channel = tonic::transport::Endpoint::from_shared(endpoint.to_string())
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut grpc = tonic::client::Grpc::new(channel);
    grpc.ready().await.unwrap();
    grpc.unary(
        tonic::Request::new(bytes::Bytes::from(body)),
        http::uri::PathAndQuery::from_static(tailgate::otlp::EXPORT_PATH),
        tailgate::otlp::RawBytesCodec,
    )
    .await
    .map(|_| ())
}

/// A request of one span whose name makes the encoding about `bytes` long.
fn request_of_size(bytes: usize) -> ExportTraceServiceRequest {
    let mut big = span(trace_id(3), span_id(1), "big");
    big.name = "x".repeat(bytes);
    request("api", vec![big])
}

#[tokio::test]
async fn the_backend_refuses_messages_over_4_mib_and_records_them() {
    let backend = RecordingBackend::builder(Protocol::Grpc)
        .allow_refusals()
        .start()
        .await
        .unwrap();
    let mut client = grpc_client(&backend.endpoint()).await;
    client
        .export(request_of_size(support::DEFAULT_MAX_RECEIVE_BYTES - 1024))
        .await
        .expect("just under 4 MiB is accepted");
    let status = client
        .export(request_of_size(support::DEFAULT_MAX_RECEIVE_BYTES))
        .await
        .expect_err("over 4 MiB is refused");
    assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}");

    assert_eq!(
        backend.request_count(),
        1,
        "the refused one is not a request"
    );
    let refused = backend.refused_requests();
    assert_eq!(refused.len(), 1, "{}", backend.summary());
    assert_eq!(refused[0].code, Code::ResourceExhausted);
    assert!(refused[0].body.len() > support::DEFAULT_MAX_RECEIVE_BYTES);
    assert!(
        backend.summary().contains("1 refused"),
        "{}",
        backend.summary()
    );
}

#[tokio::test]
async fn a_test_may_raise_the_receive_limit_explicitly() {
    let backend = RecordingBackend::builder(Protocol::Http)
        .max_receive_bytes(16 << 20)
        .start()
        .await
        .unwrap();
    let body = request_of_size(6 << 20).encode_to_vec();
    let url = format!("{}/v1/traces", backend.endpoint());
    let response = support::http::post(
        &url,
        &[("content-type", "application/x-protobuf")],
        body,
        WAIT,
    )
    .await
    .unwrap();
    assert_eq!(response.status, 200, "{}", response.text());
    assert_eq!(backend.span_count(), 1);
}

#[tokio::test]
async fn the_http_backend_refuses_a_body_over_the_limit_once_decompressed() {
    let backend = RecordingBackend::builder(Protocol::Http)
        .allow_refusals()
        .start()
        .await
        .unwrap();
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    gz.write_all(&request_of_size(5 << 20).encode_to_vec())
        .unwrap();
    let compressed = gz.finish().unwrap();
    assert!(compressed.len() < 1 << 20, "small on the wire");
    let url = format!("{}/v1/traces", backend.endpoint());
    let response = support::http::post(
        &url,
        &[
            ("content-type", "application/x-protobuf"),
            ("content-encoding", "gzip"),
        ],
        compressed,
        WAIT,
    )
    .await
    .unwrap();
    assert_eq!(response.status, 413, "{}", response.text());
    assert_eq!(backend.refused_requests().len(), 1);
    assert_eq!(backend.request_count(), 0);
}

#[tokio::test]
async fn undecodable_grpc_messages_are_recorded_with_their_bytes_not_lost_in_tonic() {
    let backend = RecordingBackend::builder(Protocol::Grpc)
        .allow_refusals()
        .start()
        .await
        .unwrap();
    let invalid_utf8 = two_traces_with_invalid_utf8();
    let mut short_trace_id = span(trace_id(4), span_id(1), "short id");
    short_trace_id.trace_id = vec![1; 8];
    let truncated = two_traces().encode_to_vec()[..30].to_vec();
    let cases = [
        ("a span name that is not UTF-8", invalid_utf8),
        (
            "an 8-byte trace ID",
            request("api", vec![short_trace_id]).encode_to_vec(),
        ),
        ("a truncated message", truncated),
    ];
    for (what, body) in &cases {
        let status = export_raw(&backend.endpoint(), body.clone())
            .await
            .expect_err(what);
        assert_eq!(status.code(), Code::InvalidArgument, "{what}: {status:?}");
    }
    let refused = backend.refused_requests();
    assert_eq!(refused.len(), cases.len(), "{}", backend.summary());
    for ((what, body), refused) in cases.iter().zip(&refused) {
        assert_eq!(
            refused.body.as_ref(),
            body.as_slice(),
            "{what}: raw bytes kept"
        );
        assert_eq!(refused.protocol, Protocol::Grpc);
    }
    assert!(refused[0].reason.contains("UTF-8"), "{}", refused[0].reason);
    assert!(
        refused[1].reason.contains("trace_id"),
        "{}",
        refused[1].reason
    );
    assert_eq!(backend.request_count(), 0);
}

#[tokio::test]
async fn the_backend_keeps_the_raw_bytes_of_each_request() {
    let backend = RecordingBackend::start_grpc().await;
    let sent = two_traces().encode_to_vec();
    export_raw(&backend.endpoint(), sent.clone()).await.unwrap();
    let requests = backend.requests();
    assert_eq!(requests.len(), 1);
    assert_eq!(requests[0].body.as_ref(), sent.as_slice());
    assert!(!requests[0].json);
}

#[tokio::test]
#[should_panic(expected = "the recording backend refused 1 request")]
async fn a_backend_that_refused_a_request_unexpectedly_fails_the_test() {
    let backend = RecordingBackend::start_grpc().await;
    let _ = export_raw(&backend.endpoint(), two_traces_with_invalid_utf8()).await;
    drop(backend);
}

#[test]
fn the_ring_oracle_reproduces_the_collectors_published_vectors() {
    use support::oracle::{crc32_ieee, CollectorRing};
    let strings = |l: &[&str]| l.iter().map(|s| s.to_string()).collect::<Vec<_>>();
    assert_eq!(
        crc32_ieee(b"123456789"),
        0xCBF4_3926,
        "the CRC-32 check value"
    );
    // loadbalancingexporter/consistent_hashing_test.go, TestPositionsForEndpoints.
    let one = CollectorRing::with_points(&strings(&["endpoint-1"]), 5);
    assert_eq!(
        one.positions(),
        [1401, 4175, 14133, 17836, 21667].map(|p| (p, "endpoint-1"))
    );
    let duplicated = CollectorRing::with_points(&strings(&["endpoint-1", "endpoint-1"]), 5);
    assert_eq!(duplicated.positions(), one.positions());
    let two = CollectorRing::with_points(&strings(&["endpoint-2", "endpoint-1"]), 5);
    assert_eq!(
        two.positions(),
        vec![
            (1401, "endpoint-1"),
            (4175, "endpoint-1"),
            (10240, "endpoint-2"),
            (14133, "endpoint-1"),
            (15002, "endpoint-2"),
            (17836, "endpoint-1"),
            (21263, "endpoint-2"),
            (21667, "endpoint-1"),
            (26806, "endpoint-2"),
            (27020, "endpoint-2"),
        ]
    );
    // TestNewHashRing and TestEndpointFor.
    let ring = CollectorRing::new(&strings(&["endpoint-1", "endpoint-2"]));
    assert_eq!(ring.positions().len(), 200);
    assert_eq!(ring.endpoint_for(&[1, 2, 0, 0]), "endpoint-1");
    assert_eq!(ring.endpoint_for(&[128, 128, 0, 0]), "endpoint-2");
    // Past the last point the search wraps to the first (TestBinarySearch's 351 -> 14).
    let last = *ring.positions().last().unwrap();
    let first = ring.positions()[0];
    let past_last = (0u32..)
        .map(|i| i.to_be_bytes())
        .find(|id| crc32_ieee(id) % 36_000 > last.0)
        .unwrap();
    assert_eq!(ring.endpoint_for(&past_last), first.1);
}

#[test]
fn the_probabilistic_oracle_reproduces_the_collectors_test_table() {
    use support::oracle::probabilistic_keeps;
    // probabilistic_test.go, TestProbabilisticSampling: the kept share of 100,000 random trace
    // IDs within 0.2 percentage points.
    let mut state = 7u64;
    let ids: Vec<[u8; 16]> = (0..100_000)
        .map(|_| {
            let mut id = [0u8; 16];
            for half in id.chunks_mut(8) {
                state = state
                    .wrapping_mul(6_364_136_223_846_793_005)
                    .wrapping_add(1_442_695_040_888_963_407);
                half.copy_from_slice(&(state ^ (state >> 29)).to_be_bytes());
            }
            id
        })
        .collect();
    for (percentage, salt, expected) in [
        (100.0, "", 100.0),
        (0.0, "", 0.0),
        (25.0, "", 25.0),
        (33.0, "", 33.0),
        (33.0, "test-salt", 33.0),
        (-50.0, "", 0.0),
        (150.0, "", 100.0),
    ] {
        let kept = ids
            .iter()
            .filter(|id| probabilistic_keeps(salt, percentage, id))
            .count();
        let share = kept as f64 / ids.len() as f64 * 100.0;
        assert!(
            (share - expected).abs() <= 0.2,
            "{percentage}% salt {salt:?}: kept {share}%"
        );
    }
    // Exact decisions from an implementation in Python (fractions.Fraction for the threshold):
    // at 50% with the default salt these IDs are kept, these are not.
    let id = |hex: &str| -> [u8; 16] {
        let mut id = [0u8; 16];
        for (i, b) in id.iter_mut().enumerate() {
            *b = u8::from_str_radix(&hex[2 * i..2 * i + 2], 16).unwrap();
        }
        id
    };
    for (hex, kept) in [
        ("aa805e5568349938d979070ac076ed2f", false),
        ("fbb0bca37010cbd6e94b4f5802546aee", true),
        ("cf8b97eccceeb6ab39deb0034a10b98b", true),
        ("92c277668c2b0b27eea107772ce513dd", true),
        ("bccb90eda0005ee3e171e792fac6cb79", true),
        ("1afae4b8562f0ac85ce0679c8220b819", false),
        ("0eb214d2c9c3a6624829153396361861", false),
        ("937e50d71b97cdfa5788214fbbe44733", true),
    ] {
        assert_eq!(probabilistic_keeps("", 50.0, &id(hex)), kept, "{hex}");
    }
}
