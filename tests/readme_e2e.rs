//! End to end: what the README promises and no other test backs. The repository's own
//! `config.yaml` with the README's curl walkthrough (the `file` and `debug` exporters), health
//! during shutdown and the second signal, `block_on_overflow`'s statuses on both transports,
//! `otlphttp` failures, `traces_endpoint`, `encoding: json`, the receiver's `traces_url_path`,
//! and the balancer's `routing_key: service`. Expectations come from the README and the
//! Collector's ring (`support::oracle`), never from tailgate's code.

mod support;

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use support::oracle::CollectorRing;
use support::{
    free_port, otlp, Failure, Gateway, Protocol, RecordingBackend, SamplerConfig, SamplerPorts,
};
use tonic::Code;

const WAIT: Duration = Duration::from_secs(30);

const KEEP_ALL: &str = "
- name: all
  type: always_sample
";

fn repo_file(path: &str) -> String {
    let full = format!("{}/{path}", env!("CARGO_MANIFEST_DIR"));
    std::fs::read_to_string(&full).unwrap_or_else(|e| panic!("read {full}: {e}"))
}

/// `text` with `from` replaced by `to`, asserting `from` was there (so a changed config.yaml
/// or README fails here rather than running something else).
fn replace_once(text: &str, from: &str, to: &str) -> String {
    assert_eq!(
        text.matches(from).count(),
        1,
        "expected `{from}` once in:\n{text}"
    );
    text.replace(from, to)
}

/// Polls `until` every 100 ms, at most `WAIT` (a file another process writes has no signal).
async fn poll<T>(what: &str, mut until: impl FnMut() -> Option<T>) -> T {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        if let Some(value) = until() {
            return value;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{what} within {WAIT:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_repository_config_keeps_the_readme_curl_trace_in_the_file_and_logs_it() {
    // config.yaml as written, but on free loopback ports: other tests run at the same time.
    let ports = SamplerPorts::free();
    let config = repo_file("config.yaml");
    let config = replace_once(
        &config,
        "0.0.0.0:4317",
        &format!("127.0.0.1:{}", ports.grpc),
    );
    let config = replace_once(
        &config,
        "0.0.0.0:4318",
        &format!("127.0.0.1:{}", ports.http),
    );
    let config = replace_once(
        &config,
        "0.0.0.0:13133",
        &format!("127.0.0.1:{}", ports.health),
    );
    let config = replace_once(
        &config,
        "0.0.0.0:8888",
        &format!("127.0.0.1:{}", ports.metrics),
    );
    let gateway = Gateway::start(&config).await;

    // The README's curl command, run by bash as written, on the port above.
    let readme = repo_file("README.md");
    let block = readme
        .split("With curl (OTLP/HTTP JSON):")
        .nth(1)
        .and_then(|rest| rest.split("```sh\n").nth(1))
        .and_then(|rest| rest.split("```").next())
        .expect("the README's curl block");
    let script = replace_once(
        block,
        "http://localhost:4318/v1/traces",
        &format!("http://127.0.0.1:{}/v1/traces", ports.http),
    );
    let out = std::process::Command::new("bash")
        .args(["-c", &format!("set -e\n{script}")])
        .output()
        .expect("run bash (apt-get install -y bash curl)");
    assert!(
        out.status.success(),
        "the README's curl command failed (needs curl: apt-get install -y curl): {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "{}",
        "an OTLP/HTTP JSON success"
    );

    // "Ten seconds later ... appears in kept-traces.jsonl."
    let file = gateway.dir().join("kept-traces.jsonl");
    let line = poll("the trace in kept-traces.jsonl", || {
        std::fs::read_to_string(&file)
            .ok()
            .and_then(|text| text.lines().next().map(str::to_string))
    })
    .await;
    let request: opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest =
        serde_json::from_str(&line).unwrap_or_else(|e| panic!("not OTLP JSON ({e}): {line}"));
    let spans: Vec<_> = request
        .resource_spans
        .iter()
        .flat_map(|rs| &rs.scope_spans)
        .flat_map(|ss| &ss.spans)
        .collect();
    assert_eq!(spans.len(), 1, "{line}");
    assert_eq!(
        support::hex(&spans[0].trace_id),
        "5b8efff798038103d269b633813fc60c"
    );
    assert_eq!(spans[0].name, "POST /orders");
    // The debug exporter at `verbosity: basic`: a line per batch.
    poll("the debug exporter's line", || {
        gateway
            .logs()
            .lines()
            .any(|l| l.contains("Traces") && l.contains("spans=1"))
            .then_some(())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_turns_503_during_shutdown_and_a_second_signal_exits_at_once() {
    let backend = RecordingBackend::start_grpc().await;
    backend.hold_responses();
    let ports = SamplerPorts::free();
    let mut config = SamplerConfig::new(ports, KEEP_ALL, &backend);
    config.decision_wait = "100ms".into();
    config.exporter_extra += "timeout: 120s\n";
    config.service_extra = "shutdown_grace_period: 120s\n".into();
    let gateway = Gateway::start(&config.render()).await;
    assert_eq!(
        gateway.health().await.unwrap().status,
        200,
        "healthy while serving"
    );
    let mut client = otlp::grpc_client(&ports.grpc_endpoint()).await;
    client
        .export(otlp::request(
            "api",
            vec![otlp::span(otlp::trace_id(1), otlp::span_id(1), "stuck")],
        ))
        .await
        .unwrap();
    // The export is stuck at the backend: shutdown cannot finish draining.
    backend.wait_for_held(1, WAIT).await.unwrap();
    gateway.sigterm();
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        assert!(
            gateway.exit_status().is_none(),
            "exited before draining: {}",
            gateway.logs()
        );
        if gateway.health().await.map(|r| r.status.as_u16()) == Ok(503) {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "health never turned 503"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(
        gateway.exit_status().is_none(),
        "still draining when health said 503"
    );
    // The second signal: out at once, not after the 120 s grace period.
    let started = std::time::Instant::now();
    gateway.sigterm();
    let status = gateway.wait_exit(Duration::from_secs(10)).await;
    assert_eq!(status.code(), Some(130), "{status:?}\n{}", gateway.logs());
    assert!(started.elapsed() < Duration::from_secs(10));
    assert!(
        gateway.logs().contains("second signal"),
        "{}",
        gateway.logs()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn block_on_overflow_answers_retryable_statuses_on_both_transports() {
    let backend = RecordingBackend::start_grpc().await;
    let ports = SamplerPorts::free();
    let mut config = SamplerConfig::new(ports, KEEP_ALL, &backend);
    config.decision_wait = "10m".into();
    config.tail_sampling_extra = "num_traces: 1\nblock_on_overflow: true\n".into();
    let gateway = Gateway::start(&config.render()).await;
    let mut client = otlp::grpc_client(&ports.grpc_endpoint()).await;
    let one = |t: u128| {
        otlp::request(
            "api",
            vec![otlp::span(otlp::trace_id(t), otlp::span_id(1), "s")],
        )
    };
    client
        .export(one(1))
        .await
        .expect("room for the first trace");
    // README: "new requests get a retryable status (gRPC UNAVAILABLE, HTTP 503 with
    // Retry-After) until there is room".
    let status = client.export(one(2)).await.expect_err("the buffer is full");
    assert_eq!(status.code(), Code::Unavailable, "{status:?}");
    let response = support::http::post(
        &format!("{}/v1/traces", ports.http_endpoint()),
        &[("content-type", "application/x-protobuf")],
        prost::Message::encode_to_vec(&one(3)),
        WAIT,
    )
    .await
    .unwrap();
    assert_eq!(response.status.as_u16(), 503, "{}", response.text());
    assert!(
        response.headers.get("retry-after").is_some(),
        "{:?}",
        response.headers
    );
    // Refused, not decided early: the first trace is still the only one buffered.
    assert_eq!(
        gateway
            .metric(
                "otelcol_processor_tail_sampling_sampling_traces_on_memory",
                &[]
            )
            .await,
        1.0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn otlphttp_retries_503_and_drops_a_400_once_counting_it() {
    let backend = RecordingBackend::start_http().await;
    backend.fail_next(2, Failure::unavailable());
    let ports = SamplerPorts::free();
    let mut config = SamplerConfig::new(ports, KEEP_ALL, &backend);
    config.decision_wait = "100ms".into();
    config.exporter_extra += "retry_on_failure:\n  initial_interval: 20ms\n  max_interval: 50ms\nsending_queue:\n  num_consumers: 1\n";
    let gateway = Gateway::start(&config.render()).await;
    let mut client = otlp::grpc_client(&ports.grpc_endpoint()).await;
    let one = |t: u128| {
        otlp::request(
            "api",
            vec![otlp::span(otlp::trace_id(t), otlp::span_id(1), "s")],
        )
    };
    client.export(one(1)).await.unwrap();
    backend.wait_for_spans(1, WAIT).await.unwrap();
    assert_eq!(backend.request_count(), 3, "two 503s, then 200");

    // 400 is permanent: counted as failed, not sent again (the next request is trace 3's).
    backend.fail_next(1, Failure::Status(Code::InvalidArgument));
    client.export(one(2)).await.unwrap();
    backend.wait_for_requests(4, WAIT).await.unwrap();
    let deadline = tokio::time::Instant::now() + WAIT;
    while gateway
        .metric_opt("otelcol_exporter_send_failed_spans", &[])
        .await
        != Some(1.0)
    {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the 400 was never counted"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    client.export(one(3)).await.unwrap();
    backend.wait_for_requests(5, WAIT).await.unwrap();
    let last: BTreeSet<String> = backend.requests()[4]
        .spans()
        .iter()
        .map(|s| s.trace_id())
        .collect();
    assert_eq!(last, BTreeSet::from([support::hex(&otlp::trace_id(3))]));
    assert_eq!(gateway.metric("tailgate_exporter_retries", &[]).await, 2.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn otlphttp_traces_endpoint_and_json_encoding_reach_the_backend_as_configured() {
    let backend = RecordingBackend::builder(Protocol::Http)
        .http_path("/custom/traces")
        .start()
        .await
        .unwrap();
    let ports = SamplerPorts::free();
    let mut config = SamplerConfig::new(ports, KEEP_ALL, &backend);
    config.decision_wait = "100ms".into();
    // `traces_endpoint` is the full URL; `endpoint` would get /v1/traces appended.
    config.exporter_endpoint = format!("{}/ignored", backend.endpoint());
    config.exporter_extra += &format!(
        "traces_endpoint: {}/custom/traces\nencoding: json\n",
        backend.endpoint()
    );
    let _gateway = Gateway::start(&config.render()).await;
    let mut client = otlp::grpc_client(&ports.grpc_endpoint()).await;
    let mut span = otlp::span(otlp::trace_id(21), otlp::span_id(1), "as json");
    span.attributes.push(otlp::kv("order.id", "A-17"));
    client
        .export(otlp::request("shop", vec![span.clone()]))
        .await
        .unwrap();
    backend.wait_for_spans(1, WAIT).await.unwrap();
    let request = &backend.accepted_requests()[0];
    assert!(request.json, "encoding: json sends OTLP/JSON");
    assert!(
        request
            .header("content-type")
            .is_some_and(|c| c.starts_with("application/json")),
        "{:?}",
        request.headers
    );
    let got = &request.spans()[0];
    assert_eq!(got.span, span, "the span survives the JSON round trip");
    assert_eq!(got.service_name().as_deref(), Some("shop"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_receivers_traces_url_path_moves_the_http_route() {
    let backend = RecordingBackend::start_grpc().await;
    let ports = SamplerPorts::free();
    let config = SamplerConfig::new(ports, KEEP_ALL, &backend).render();
    let config = replace_once(
        &config,
        &format!("endpoint: 127.0.0.1:{}\n", ports.http),
        &format!(
            "endpoint: 127.0.0.1:{}\n        traces_url_path: /otlp/spans\n",
            ports.http
        ),
    );
    let _gateway = Gateway::start(&config).await;
    let body = prost::Message::encode_to_vec(&otlp::request(
        "api",
        vec![otlp::span(otlp::trace_id(31), otlp::span_id(1), "moved")],
    ));
    let post = |path: &'static str| {
        let (url, body) = (format!("{}{path}", ports.http_endpoint()), body.clone());
        async move {
            support::http::post(
                &url,
                &[("content-type", "application/x-protobuf")],
                body,
                WAIT,
            )
            .await
            .unwrap()
        }
    };
    assert_eq!(post("/otlp/spans").await.status.as_u16(), 200);
    assert_eq!(
        post("/v1/traces").await.status.as_u16(),
        404,
        "the default path is gone"
    );
    backend.wait_for_spans(1, WAIT).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn routing_key_service_sends_each_service_to_the_sampler_the_collector_ring_picks() {
    let backend = RecordingBackend::start_grpc().await;
    let mut samplers = Vec::new();
    let mut endpoints = Vec::new();
    for _ in 0..3 {
        let ports = SamplerPorts::free();
        let mut config = SamplerConfig::new(ports, KEEP_ALL, &backend);
        config.decision_wait = "100ms".into();
        config.exporter_extra += &format!("headers:\n  x-sampler: \"{}\"\n", ports.grpc);
        endpoints.push(format!("127.0.0.1:{}", ports.grpc));
        samplers.push(Gateway::start(&config.render()).await);
    }
    let (port, health) = (free_port(), free_port());
    let hostnames = endpoints
        .iter()
        .map(|e| format!("\"{e}\""))
        .collect::<Vec<_>>()
        .join(", ");
    let balancer = Gateway::start(&format!(
        "receivers:
  otlp:
    protocols:
      grpc:
        endpoint: 127.0.0.1:{port}
exporters:
  loadbalancing:
    routing_key: service
    protocol:
      otlp:
        tls: {{insecure: true}}
    resolver:
      static:
        hostnames: [{hostnames}]
extensions:
  health_check:
    endpoint: 127.0.0.1:{health}
service:
  extensions: [health_check]
  pipelines:
    traces:
      receivers: [otlp]
      exporters: [loadbalancing]
"
    ))
    .await;
    let services = [
        "frontend",
        "checkout",
        "ad-service-7",
        "get-recommendations-1",
        "payment",
        "email",
    ];
    let mut client = otlp::grpc_client(&format!("http://127.0.0.1:{port}")).await;
    for (i, service) in services.iter().enumerate() {
        // Two traces per service: the service, not the trace ID, picks the sampler.
        let spans = (0..2u128)
            .map(|t| {
                otlp::span(
                    otlp::trace_id(100 * i as u128 + t + 1),
                    otlp::span_id(1),
                    "op",
                )
            })
            .collect();
        client.export(otlp::request(service, spans)).await.unwrap();
    }
    backend
        .wait_for_spans(2 * services.len(), WAIT)
        .await
        .unwrap();

    let ring = CollectorRing::new(&endpoints);
    let mut got: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for request in backend.accepted_requests() {
        let sampler = request.header("x-sampler").unwrap_or("?").to_string();
        for span in request.spans() {
            got.entry(span.service_name().unwrap())
                .or_default()
                .insert(sampler.clone());
        }
    }
    let want: BTreeMap<String, BTreeSet<String>> = services
        .iter()
        .map(|s| {
            let owner = ring.endpoint_for(s.as_bytes());
            let port = owner.rsplit(':').next().unwrap().to_string();
            (s.to_string(), BTreeSet::from([port]))
        })
        .collect();
    assert_eq!(
        got, want,
        "each service on the sampler the Collector's ring picks"
    );
    let used: BTreeSet<_> = want.values().flatten().collect();
    assert!(
        used.len() > 1,
        "the services spread over samplers: {want:?}"
    );
    drop((balancer, samplers));
}
