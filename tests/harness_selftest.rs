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
    hex, parse_metric, Failure, Protocol, RecordingBackend, SamplerConfig, SamplerPorts,
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
    assert_eq!(backend.undecodable_bodies(), Vec::<String>::new());
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
    let Some(report) = run_async_jobs(&backend.endpoint(), 14).await else {
        return; // skipped: no Python venv (the message says how to make one)
    };
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
    let total = |name, labels: &[(&str, &str)]| parse_metric(text, name, labels);
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
