//! End to end: the real `tailgate` binary as a sampler tier, real OTLP clients (the OpenTelemetry
//! Python and Rust SDKs, tonic, HTTP), and a recording backend standing in for Tempo or Jaeger.

mod support;

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use prost::Message;
use support::oracle::probabilistic_keeps;
use support::python::{run_async_jobs, JobKind};
use support::{otlp, Failure, Gateway, RecordingBackend, SamplerConfig, SamplerPorts};

const WAIT: Duration = Duration::from_secs(20);

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

const KEEP_ALL: &str = "
- name: all
  type: always_sample
";

fn id_bytes(hex: &str) -> [u8; 16] {
    let mut id = [0u8; 16];
    for (i, byte) in id.iter_mut().enumerate() {
        *byte = u8::from_str_radix(&hex[2 * i..2 * i + 2], 16).unwrap();
    }
    id
}

/// Waits until the gateway has decided `traces` traces, by its own counter. Scraping is the
/// only signal a separate process offers; each scrape is a real request, bounded by `WAIT`.
async fn wait_for_decisions(gateway: &Gateway, traces: f64) {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let text = gateway.metrics().await;
        let decided: f64 = ["true", "false"]
            .iter()
            .filter_map(|s| {
                support::parse_metric(
                    &text,
                    "otelcol_processor_tail_sampling_global_count_traces_sampled",
                    &[("sampled", s)],
                )
            })
            .sum();
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

/// Scrapes until `name` (with `labels`) equals `want`: a separate process offers no other
/// signal than its metrics; each scrape is a real request, bounded by `WAIT`.
async fn wait_for_metric(gateway: &Gateway, name: &str, labels: &[(&str, &str)], want: f64) {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let value = gateway.metric_opt(name, labels).await;
        if value == Some(want) {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{name}{labels:?} is {value:?}, not {want}, after {WAIT:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// For every trace the backend received, the indexes of the accepted requests it arrived in.
fn requests_per_trace(backend: &RecordingBackend) -> BTreeMap<String, BTreeSet<usize>> {
    let mut map: BTreeMap<String, BTreeSet<usize>> = BTreeMap::new();
    for (i, request) in backend.accepted_requests().iter().enumerate() {
        for span in request.spans() {
            map.entry(span.trace_id()).or_default().insert(i);
        }
    }
    map
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn async_jobs_from_the_python_sdk_are_kept_or_dropped_as_whole_traces() {
    let backend = RecordingBackend::start_grpc().await;
    let ports = SamplerPorts::free();
    let mut config = SamplerConfig::new(ports, ERRORS_SLOW_BASELINE, &backend);
    config.batch = true;
    let gateway = Gateway::start(&config.render()).await;

    let report = run_async_jobs(&ports.grpc_endpoint(), 60).await;
    assert_eq!(report.jobs.len(), 60);
    wait_for_decisions(&gateway, 60.0).await;

    // The expected set: every error and slow trace, plus exactly the normal traces the
    // Collector's probabilistic hash keeps at 20% (computed by tests/support/oracle.rs, not by
    // tailgate's policy).
    let expected: BTreeSet<String> = report
        .jobs
        .iter()
        .filter(|job| {
            job.kind != JobKind::Normal || probabilistic_keeps("", 20.0, &id_bytes(&job.trace_id))
        })
        .map(|job| job.trace_id.clone())
        .collect();
    let normal_kept = report
        .of_kind(JobKind::Normal)
        .filter(|j| expected.contains(&j.trace_id))
        .count();
    assert!(normal_kept > 0, "the baseline kept some normal traces");
    assert!(normal_kept < report.of_kind(JobKind::Normal).count());

    backend
        .wait_for_spans(expected.len() * 4, WAIT)
        .await
        .unwrap();
    let traces = backend.spans_by_trace();
    let received: BTreeSet<String> = traces.keys().cloned().collect();
    assert_eq!(received, expected);
    for job in report
        .of_kind(JobKind::Error)
        .chain(report.of_kind(JobKind::Slow))
    {
        assert_eq!(
            traces[&job.trace_id].len(),
            4,
            "{:?} trace {} is whole",
            job.kind,
            job.trace_id
        );
    }
    for (trace, spans) in &traces {
        assert_eq!(spans.len(), 4, "trace {trace} is whole");
        let services: BTreeSet<_> = spans.iter().filter_map(|s| s.service_name()).collect();
        assert_eq!(
            services,
            BTreeSet::from(["api".to_string(), "worker".to_string()])
        );
    }
    // Never half a trace: each trace left in one export request.
    for (trace, requests) in requests_per_trace(&backend) {
        assert_eq!(
            requests.len(),
            1,
            "trace {trace} was split over requests {requests:?}"
        );
    }
    assert_eq!(
        gateway
            .metric("otelcol_receiver_accepted_spans", &[("transport", "grpc")])
            .await,
        240.0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_rust_sdk_api_and_worker_services_produce_one_kept_error_trace() {
    use opentelemetry::trace::{Span as _, Status, TraceContextExt, Tracer, TracerProvider as _};
    use opentelemetry::Context;
    use opentelemetry_otlp::WithExportConfig;

    let backend = RecordingBackend::start_grpc().await;
    let ports = SamplerPorts::free();
    let gateway =
        Gateway::start(&SamplerConfig::new(ports, ERRORS_SLOW_BASELINE, &backend).render()).await;

    let provider = |service: &'static str| {
        let exporter = opentelemetry_otlp::SpanExporter::builder()
            .with_tonic()
            .with_endpoint(ports.grpc_endpoint())
            .build()
            .unwrap();
        opentelemetry_sdk::trace::SdkTracerProvider::builder()
            .with_resource(
                opentelemetry_sdk::Resource::builder()
                    .with_service_name(service)
                    .build(),
            )
            .with_simple_exporter(exporter)
            .build()
    };
    let (api, worker) = (provider("api"), provider("worker"));

    // The API handles a request and enqueues a job, carrying the span context in the message.
    let api_tracer = api.tracer("api");
    let request = api_tracer.start("POST /orders");
    let request_cx = Context::current_with_span(request);
    let mut enqueue = api_tracer.start_with_context("enqueue job", &request_cx);
    let message_context = enqueue.span_context().clone();
    enqueue.end();
    request_cx.span().end();
    api.force_flush().unwrap();

    // Later, a worker on another host continues the trace from the message and fails.
    let worker_tracer = worker.tracer("worker");
    let parent = Context::new().with_remote_span_context(message_context.clone());
    let mut execute = worker_tracer.start_with_context("process job", &parent);
    execute.set_status(Status::error("payment declined"));
    execute.end();
    worker.force_flush().unwrap();

    backend.wait_for_spans(3, WAIT).await.unwrap();
    let traces = backend.spans_by_trace();
    assert_eq!(traces.len(), 1);
    let (trace, spans) = traces.into_iter().next().unwrap();
    assert_eq!(trace, support::hex(&message_context.trace_id().to_bytes()));
    let names: BTreeSet<_> = spans.iter().map(|s| s.span.name.clone()).collect();
    assert_eq!(
        names,
        BTreeSet::from([
            "POST /orders".into(),
            "enqueue job".into(),
            "process job".into()
        ])
    );
    assert_eq!(requests_per_trace(&backend)[&trace].len(), 1, "sent whole");
    drop(gateway);
    let _ = (api.shutdown(), worker.shutdown());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spans_arriving_after_the_decision_follow_it() {
    let backend = RecordingBackend::start_grpc().await;
    let ports = SamplerPorts::free();
    let gateway = Gateway::start(
        &SamplerConfig::new(
            ports,
            ERRORS_SLOW_BASELINE.split("- name: slow").next().unwrap(),
            &backend,
        )
        .render(),
    )
    .await;
    let mut client = otlp::grpc_client(&ports.grpc_endpoint()).await;

    let kept = otlp::trace_id(0xAA);
    let dropped = otlp::trace_id(0xBB);
    let mut error = otlp::span(kept, otlp::span_id(1), "fails");
    otlp::set_error(&mut error, "boom");
    let fine = otlp::span(dropped, otlp::span_id(2), "fine");
    client
        .export(otlp::request("api", vec![error, fine]))
        .await
        .unwrap();
    wait_for_decisions(&gateway, 2.0).await;
    backend.wait_for_spans(1, WAIT).await.unwrap();

    // Late spans: the kept trace's goes straight out, the dropped trace's is dropped even though
    // it is an error, and both are counted.
    let late_kept = otlp::span(kept, otlp::span_id(3), "late");
    let mut late_dropped = otlp::span(dropped, otlp::span_id(4), "late");
    otlp::set_error(&mut late_dropped, "too late");
    client
        .export(otlp::request("worker", vec![late_kept, late_dropped]))
        .await
        .unwrap();
    backend.wait_for_spans(2, WAIT).await.unwrap();
    let traces = backend.spans_by_trace();
    assert_eq!(traces.len(), 1);
    assert_eq!(traces[&support::hex(&kept)].len(), 2);
    assert_eq!(
        gateway
            .metric("tailgate_late_spans", &[("decision", "sampled")])
            .await,
        1.0
    );
    assert_eq!(
        gateway
            .metric("tailgate_late_spans", &[("decision", "not_sampled")])
            .await,
        1.0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_grpc_requests_are_refused_and_the_gateway_keeps_serving() {
    use tonic::codec::CompressionEncoding;
    let backend = RecordingBackend::start_grpc().await;
    let ports = SamplerPorts::free();
    let config = SamplerConfig::new(ports, KEEP_ALL, &backend)
        .render()
        .replace(
            &format!("endpoint: 127.0.0.1:{}\n", ports.grpc),
            &format!(
                "endpoint: 127.0.0.1:{}\n        max_recv_msg_size_mib: 1\n",
                ports.grpc
            ),
        );
    let gateway = Gateway::start(&config).await;
    let channel = tonic::transport::Endpoint::from_shared(ports.grpc_endpoint())
        .unwrap()
        .connect()
        .await
        .unwrap();

    let send = |body: Vec<u8>, gzip: bool| {
        let channel = channel.clone();
        async move {
            let mut grpc = tonic::client::Grpc::new(channel);
            if gzip {
                grpc = grpc.send_compressed(CompressionEncoding::Gzip);
            }
            grpc.ready().await.unwrap();
            grpc.unary(
                tonic::Request::new(bytes::Bytes::from(body)),
                http::uri::PathAndQuery::from_static(tailgate::otlp::EXPORT_PATH),
                tailgate::otlp::RawBytesCodec,
            )
            .await
            .map(|_| ())
        }
    };
    let valid = |trace: u128| {
        otlp::request(
            "api",
            vec![otlp::span(otlp::trace_id(trace), otlp::span_id(1), "ok")],
        )
        .encode_to_vec()
    };
    let with_trace_id = |id: Vec<u8>| {
        let mut span = otlp::span(otlp::trace_id(1), otlp::span_id(1), "bad");
        span.trace_id = id;
        otlp::request("api", vec![span]).encode_to_vec()
    };
    let mut huge = otlp::span(otlp::trace_id(9), otlp::span_id(1), "huge");
    huge.name = "x".repeat(2 * 1024 * 1024);
    let huge = otlp::request("api", vec![huge]).encode_to_vec();

    let cases: Vec<(&str, Vec<u8>, bool, tonic::Code)> = vec![
        (
            "garbage bytes",
            b"\xff\xff\xff\xff".to_vec(),
            false,
            tonic::Code::InvalidArgument,
        ),
        (
            "all-zero trace ID",
            with_trace_id(vec![0; 16]),
            false,
            tonic::Code::InvalidArgument,
        ),
        (
            "8-byte trace ID",
            with_trace_id(vec![1; 8]),
            false,
            tonic::Code::InvalidArgument,
        ),
        (
            "truncated protobuf",
            valid(1)[..20].to_vec(),
            false,
            tonic::Code::InvalidArgument,
        ),
        (
            "over max_recv_msg_size_mib",
            huge,
            false,
            tonic::Code::ResourceExhausted,
        ),
    ];
    for (what, body, gzip, code) in cases {
        let status = send(body, gzip).await.expect_err(what);
        assert_eq!(status.code(), code, "{what}: {status:?}");
        // The next valid request still goes through.
        send(valid(100), false)
            .await
            .unwrap_or_else(|e| panic!("after {what}: {e:?}"));
    }

    // A body flagged as gzip that is not gzip: a raw HTTP/2 client is needed to lie about it.
    let status = send_corrupt_gzip(&ports.grpc_endpoint()).await;
    assert_eq!(
        status, "3",
        "INVALID_ARGUMENT for an undecompressable message"
    );
    send(valid(101), true)
        .await
        .expect("gzip-compressed requests are accepted");

    backend.wait_for_spans(6, WAIT).await.unwrap();
    assert_eq!(
        backend.spans_by_trace().len(),
        2,
        "only the valid traces (100, 101) were buffered"
    );
    // Each refusal counted once, under what was wrong: the garbage and the truncated body as
    // truncated framing, the two trace IDs as bad IDs, one too large, one undecompressable.
    for (reason, count) in [
        ("truncated", 2.0),
        ("bad_id", 2.0),
        ("too_large", 1.0),
        ("bad_compression", 1.0),
    ] {
        assert_eq!(
            gateway
                .metric_opt(
                    "tailgate_receiver_rejected_requests",
                    &[("transport", "grpc"), ("reason", reason)]
                )
                .await,
            Some(count),
            "rejected requests for {reason}"
        );
    }
}

/// Sends a gRPC message whose compressed flag is set (grpc-encoding: gzip) but whose payload is
/// not gzip, and returns the `grpc-status` the server answers with.
async fn send_corrupt_gzip(endpoint: &str) -> String {
    use http_body_util::{BodyExt, Full};
    let client = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .http2_only(true)
        .build_http::<Full<bytes::Bytes>>();
    let payload = b"definitely not gzip";
    let mut frame = vec![1u8];
    frame.extend_from_slice(&(payload.len() as u32).to_be_bytes());
    frame.extend_from_slice(payload);
    let request = http::Request::post(format!("{endpoint}{}", tailgate::otlp::EXPORT_PATH))
        .header("content-type", "application/grpc")
        .header("grpc-encoding", "gzip")
        .header("te", "trailers")
        .body(Full::new(bytes::Bytes::from(frame)))
        .unwrap();
    let response = client.request(request).await.unwrap();
    if let Some(status) = response.headers().get("grpc-status") {
        return status.to_str().unwrap().to_string();
    }
    let body = response.into_body().collect().await.unwrap();
    body.trailers()
        .and_then(|t| t.get("grpc-status"))
        .map(|v| v.to_str().unwrap().to_string())
        .unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_http_requests_get_the_right_status_and_the_gateway_keeps_serving() {
    let backend = RecordingBackend::start_grpc().await;
    let ports = SamplerPorts::free();
    let config = SamplerConfig::new(ports, KEEP_ALL, &backend)
        .render()
        .replace(
            &format!("endpoint: 127.0.0.1:{}\n", ports.http),
            &format!(
                "endpoint: 127.0.0.1:{}\n        max_request_body_size: 65536\n",
                ports.http
            ),
        );
    let _gateway = Gateway::start(&config).await;
    let url = format!("{}/v1/traces", ports.http_endpoint());
    let post = |content_type: &'static str, encoding: Option<&'static str>, body: Vec<u8>| {
        let url = url.clone();
        async move {
            let mut headers = vec![("content-type", content_type)];
            if let Some(e) = encoding {
                headers.push(("content-encoding", e));
            }
            support::http::post(&url, &headers, body, WAIT)
                .await
                .unwrap()
        }
    };
    let valid = |trace: u128| {
        otlp::request(
            "api",
            vec![otlp::span(otlp::trace_id(trace), otlp::span_id(1), "ok")],
        )
        .encode_to_vec()
    };
    let gzip = |data: &[u8]| {
        use std::io::Write;
        let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        enc.write_all(data).unwrap();
        enc.finish().unwrap()
    };
    let mut zero = otlp::span(otlp::trace_id(5), otlp::span_id(1), "bad");
    zero.trace_id = vec![0; 16];
    let zero = otlp::request("api", vec![zero]).encode_to_vec();

    // (what, content type, content encoding, body, expected HTTP status)
    type Case = (
        &'static str,
        &'static str,
        Option<&'static str>,
        Vec<u8>,
        u16,
    );
    let cases: Vec<Case> = vec![
        (
            "garbage protobuf",
            "application/x-protobuf",
            None,
            b"\xff\xff\xff".to_vec(),
            400,
        ),
        ("zero trace ID", "application/x-protobuf", None, zero, 400),
        (
            "malformed JSON",
            "application/json",
            None,
            b"{\"resourceSpans\": [".to_vec(),
            400,
        ),
        (
            "too large",
            "application/x-protobuf",
            None,
            vec![0x0a; 70_000],
            413,
        ),
        (
            "too large once decompressed",
            "application/x-protobuf",
            Some("gzip"),
            gzip(&vec![0u8; 200_000]),
            413,
        ),
        (
            "corrupt gzip",
            "application/x-protobuf",
            Some("gzip"),
            b"not gzip at all".to_vec(),
            400,
        ),
        ("unknown content type", "text/plain", None, valid(1), 415),
    ];
    for (what, content_type, encoding, body, status) in cases {
        let response = post(content_type, encoding, body).await;
        assert_eq!(
            response.status.as_u16(),
            status,
            "{what}: {}",
            response.text()
        );
        let ok = post("application/x-protobuf", None, valid(200)).await;
        assert_eq!(ok.status.as_u16(), 200, "valid request after {what}");
    }
    // Compressed and JSON bodies are accepted.
    assert_eq!(
        post("application/x-protobuf", Some("gzip"), gzip(&valid(201)))
            .await
            .status
            .as_u16(),
        200
    );
    let zstd_body = zstd::encode_all(&valid(202)[..], 1).unwrap();
    assert_eq!(
        post("application/x-protobuf", Some("zstd"), zstd_body)
            .await
            .status
            .as_u16(),
        200
    );
    let json = br#"{"resourceSpans":[{"scopeSpans":[{"spans":[{"traceId":"000000000000000000000000000000cb","spanId":"0000000000000001","name":"json","startTimeUnixNano":"1","endTimeUnixNano":"2"}]}]}]}"#;
    let response = post("application/json", None, json.to_vec()).await;
    assert_eq!(response.status.as_u16(), 200, "{}", response.text());
    assert_eq!(response.text(), "{}");

    backend
        .wait_until("traces 200, 201, 202 and 0xcb", WAIT, |requests| {
            let ids: BTreeSet<String> = requests
                .iter()
                .flat_map(|r| r.spans())
                .map(|s| s.trace_id())
                .collect();
            [200u128, 201, 202, 0xcb]
                .iter()
                .all(|t| ids.contains(&support::hex(&otlp::trace_id(*t))))
        })
        .await
        .unwrap();
    let traces = backend.spans_by_trace();
    assert_eq!(
        traces.len(),
        4,
        "only valid requests were buffered: {:?}",
        traces.keys()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bad_config_refuses_to_start_and_names_every_yaml_path() {
    let backend = RecordingBackend::start_grpc().await;
    let ports = SamplerPorts::free();
    let config = SamplerConfig::new(ports, ERRORS_SLOW_BASELINE, &backend)
        .render()
        .replace("threshold_ms: 2000", "threshold_ms: soon")
        .replace("sampling_percentage: 20", "sampling_percentge: 20");
    let (status, logs) = Gateway::run_until_exit(&config, WAIT).await;
    assert!(!status.success());
    assert!(
        logs.contains("processors.tail_sampling.policies[1].latency.threshold_ms"),
        "{logs}"
    );
    assert!(
        logs.contains("unknown field `sampling_percentge`"),
        "{logs}"
    );

    // `validate` reports the same without starting anything.
    let file = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(file.path(), &config).unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_tailgate"))
        .args(["validate", "--config"])
        .arg(file.path())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("2 errors"), "{stderr}");
    assert!(
        stderr.contains("policies[2].probabilistic.sampling_percentge"),
        "{stderr}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_decides_every_pending_trace_and_drains_before_exiting() {
    let backend = RecordingBackend::start_grpc().await;
    let ports = SamplerPorts::free();
    let mut config = SamplerConfig::new(
        ports,
        ERRORS_SLOW_BASELINE.split("- name: slow").next().unwrap(),
        &backend,
    );
    config.decision_wait = "10m".into();
    config.batch = true;
    config.service_extra = "shutdown_grace_period: 20s\n".into();
    let gateway = Gateway::start(&config.render()).await;
    let mut client = otlp::grpc_client(&ports.grpc_endpoint()).await;
    let mut spans = Vec::new();
    for t in 1..=10u128 {
        let mut root = otlp::span(otlp::trace_id(t), otlp::span_id(1), "job");
        if t % 2 == 0 {
            otlp::set_error(&mut root, "failed");
        }
        let child = otlp::child_of(
            otlp::span(otlp::trace_id(t), otlp::span_id(2), "step"),
            &root,
        );
        spans.extend([root, child]);
    }
    client.export(otlp::request("api", spans)).await.unwrap();
    // The ten traces are buffered (the gauge says so) and none was decided: read after the
    // spans were taken in, so an early decision would already show.
    wait_for_metric(
        &gateway,
        "otelcol_processor_tail_sampling_sampling_traces_on_memory",
        &[],
        10.0,
    )
    .await;
    assert_eq!(
        gateway
            .metric_opt(
                "otelcol_processor_tail_sampling_global_count_traces_sampled",
                &[]
            )
            .await,
        Some(0.0),
        "nothing is decided before decision_wait"
    );
    assert_eq!(
        backend.span_count(),
        0,
        "nothing exported before decision_wait"
    );

    gateway.sigterm();
    let status = gateway.wait_exit(WAIT).await;
    assert!(status.success(), "{status:?}\n{}", gateway.logs());
    // The five error traces were decided at shutdown and delivered whole before exit.
    assert_eq!(backend.spans_by_trace().len(), 5);
    assert_eq!(backend.span_count(), 10);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drop_pending_traces_on_shutdown_drops_them_and_says_so() {
    let backend = RecordingBackend::start_grpc().await;
    let ports = SamplerPorts::free();
    let mut config = SamplerConfig::new(ports, KEEP_ALL, &backend);
    config.decision_wait = "10m".into();
    config.tail_sampling_extra = "drop_pending_traces_on_shutdown: true\n".into();
    let gateway = Gateway::start(&config.render()).await;
    let mut client = otlp::grpc_client(&ports.grpc_endpoint()).await;
    client
        .export(otlp::request(
            "api",
            vec![otlp::span(otlp::trace_id(1), otlp::span_id(1), "pending")],
        ))
        .await
        .unwrap();
    gateway.sigterm();
    assert!(gateway.wait_exit(WAIT).await.success());
    assert_eq!(backend.span_count(), 0);
    assert!(
        gateway.logs().contains("dropped undecided traces"),
        "{}",
        gateway.logs()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_exporter_retries_a_failing_backend_and_sends_the_tenant_header() {
    let backend = RecordingBackend::start_grpc().await;
    backend.fail_next(2, Failure::unavailable());
    let ports = SamplerPorts::free();
    let mut config = SamplerConfig::new(ports, KEEP_ALL, &backend);
    config.exporter_extra += "headers:\n  X-Scope-OrgID: tenant-a\nretry_on_failure:\n  initial_interval: 50ms\n  max_interval: 100ms\n";
    let gateway = Gateway::start(&config.render()).await;
    let mut client = otlp::grpc_client(&ports.grpc_endpoint()).await;
    client
        .export(otlp::request(
            "api",
            vec![otlp::span(otlp::trace_id(7), otlp::span_id(1), "retried")],
        ))
        .await
        .unwrap();
    backend.wait_for_spans(1, WAIT).await.unwrap();
    assert_eq!(backend.request_count(), 3, "two refusals, then success");
    assert_eq!(
        backend.header_values("x-scope-orgid"),
        vec![Some("tenant-a".to_string()); 3],
        "every attempt carries the tenant"
    );
    // The backend records a request before it answers; the gateway counts the span as sent
    // only once the answer is in. Wait for that count, then read the retries.
    wait_for_metric(&gateway, "otelcol_exporter_sent_spans", &[], 1.0).await;
    assert_eq!(gateway.metric("tailgate_exporter_retries", &[]).await, 2.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_permanent_backend_error_is_not_retried_and_is_counted() {
    let backend = RecordingBackend::start_grpc().await;
    backend.fail_next(1, Failure::resource_exhausted_without_retry_info());
    let ports = SamplerPorts::free();
    let mut config = SamplerConfig::new(ports, KEEP_ALL, &backend);
    // One consumer and a short backoff: a wrongful retry would be the very next request.
    config.exporter_extra += "sending_queue:\n  num_consumers: 1\nretry_on_failure:\n  initial_interval: 10ms\n  max_interval: 20ms\n";
    let gateway = Gateway::start(&config.render()).await;
    let mut client = otlp::grpc_client(&ports.grpc_endpoint()).await;
    client
        .export(otlp::request(
            "api",
            vec![otlp::span(otlp::trace_id(8), otlp::span_id(1), "refused")],
        ))
        .await
        .unwrap();
    backend.wait_for_requests(1, WAIT).await.unwrap();
    let deadline = tokio::time::Instant::now() + WAIT;
    while gateway
        .metric_opt("otelcol_exporter_send_failed_spans", &[])
        .await
        != Some(1.0)
    {
        assert!(
            tokio::time::Instant::now() < deadline,
            "send_failed_spans never reached 1"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // The next request is a new trace's, not a retry of the refused one.
    client
        .export(otlp::request(
            "api",
            vec![otlp::span(otlp::trace_id(9), otlp::span_id(1), "next")],
        ))
        .await
        .unwrap();
    backend.wait_for_requests(2, WAIT).await.unwrap();
    let second: BTreeSet<String> = backend.requests()[1]
        .spans()
        .iter()
        .map(|s| s.trace_id())
        .collect();
    assert_eq!(
        second,
        BTreeSet::from([support::hex(&otlp::trace_id(9))]),
        "RESOURCE_EXHAUSTED without RetryInfo is final: the refused trace was not sent again"
    );
    assert_eq!(backend.request_count(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn otlphttp_export_carries_headers_and_the_exact_span_bytes() {
    let backend = RecordingBackend::start_http().await;
    let ports = SamplerPorts::free();
    let mut config = SamplerConfig::new(ports, KEEP_ALL, &backend);
    config.exporter_extra += "headers:\n  X-Scope-OrgID: tenant-h\n";
    let _gateway = Gateway::start(&config.render()).await;
    let mut client = otlp::grpc_client(&ports.grpc_endpoint()).await;
    let mut span = otlp::span(otlp::trace_id(11), otlp::span_id(1), "through http");
    span.attributes.push(otlp::kv("order.id", "A-17"));
    let sent = otlp::request("shop", vec![span.clone()]);
    client.export(sent.clone()).await.unwrap();
    backend.wait_for_spans(1, WAIT).await.unwrap();
    let received = &backend.accepted_requests()[0];
    assert_eq!(received.header("x-scope-orgid"), Some("tenant-h"));
    // Not decoded and re-encoded: the bytes the backend got are the bytes the client sent.
    assert!(!received.json);
    assert_eq!(received.body.as_ref(), sent.encode_to_vec().as_slice());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_sending_queue_drops_the_batch_and_counts_it() {
    let backend = RecordingBackend::start_grpc().await;
    backend.hold_responses();
    let ports = SamplerPorts::free();
    let mut config = SamplerConfig::new(ports, KEEP_ALL, &backend);
    config.decision_wait = "200ms".into();
    config.exporter_extra += "sending_queue:\n  queue_size: 1\n  num_consumers: 1\nretry_on_failure:\n  enabled: false\ntimeout: 30s\n";
    let gateway = Gateway::start(&config.render()).await;
    let client = otlp::grpc_client(&ports.grpc_endpoint()).await;
    let send = |t: u128| {
        let request = otlp::request(
            "api",
            vec![otlp::span(otlp::trace_id(t), otlp::span_id(1), "s")],
        );
        let mut client = client.clone();
        async move { client.export(request).await.unwrap() }
    };
    send(1).await; // decided, sent, and held in flight by the backend
    backend.wait_for_held(1, WAIT).await.unwrap();
    send(2).await; // decided and waiting in the one-slot queue
    wait_for_decisions(&gateway, 2.0).await;
    send(3).await; // decided while the queue is full: dropped and counted
    wait_for_decisions(&gateway, 3.0).await;
    let deadline = tokio::time::Instant::now() + WAIT;
    while gateway
        .metric_opt("otelcol_exporter_enqueue_failed_spans", &[])
        .await
        != Some(1.0)
    {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the drop was never counted"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    backend.release_responses();
    backend.wait_for_spans(2, WAIT).await.unwrap();
    let kept: BTreeSet<String> = backend.spans_by_trace().into_keys().collect();
    assert_eq!(
        kept,
        BTreeSet::from([
            support::hex(&otlp::trace_id(1)),
            support::hex(&otlp::trace_id(2))
        ])
    );
    assert!(
        gateway.logs().contains("sending queue is full"),
        "{}",
        gateway.logs()
    );
    drop(client);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pipeline_without_tail_sampling_forwards_every_span_at_once() {
    let backend = RecordingBackend::start_grpc().await;
    let ports = SamplerPorts::free();
    let config = SamplerConfig::new(ports, KEEP_ALL, &backend)
        .render()
        .replace("      processors: [tail_sampling]\n", "");
    assert!(!config.contains("processors: [tail"), "{config}");
    let _gateway = Gateway::start(&config).await;
    let mut client = otlp::grpc_client(&ports.grpc_endpoint()).await;
    let spans = (1..=3u64)
        .map(|i| otlp::span(otlp::trace_id(i as u128), otlp::span_id(i), "passed"))
        .collect();
    client.export(otlp::request("api", spans)).await.unwrap();
    backend.wait_for_spans(3, WAIT).await.unwrap();
    assert_eq!(backend.spans_by_trace().len(), 3);
}
