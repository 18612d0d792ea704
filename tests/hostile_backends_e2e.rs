//! End to end, on the real binary: backends that answer badly cost a bounded amount and nothing
//! else. A hand-written HTTP/1.1 server plays the backend (a real OTLP/HTTP peer could not be
//! made to misbehave like this): a success status with a garbage body, with a body that never
//! ends, with a body of many megabytes; a `partial_success` rejecting more spans than were sent;
//! `Retry-After` as an HTTP-date; and a backend that accepts connections and never answers,
//! which must not stretch shutdown past `shutdown_grace_period`.

mod support;

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use prost::Message;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use support::{otlp, Gateway, RecordingBackend, SamplerConfig, SamplerPorts};

const WAIT: Duration = Duration::from_secs(30);

const KEEP_ALL: &str = "
- name: all
  type: always_sample
";

/// How the scripted backend answers one request.
#[derive(Clone)]
enum Answer {
    /// 200 with this body.
    Ok(Vec<u8>),
    /// 200, then a chunked body that sends a few bytes and stalls forever.
    OkStalling,
    /// 200 with a chunked body of this many bytes.
    OkHuge(usize),
    /// 503 with this `Retry-After` value.
    Unavailable(String),
}

/// A one-route HTTP/1.1 server answering each request with the next scripted [`Answer`] (the
/// last one repeats), recording when each request arrived.
struct ScriptedBackend {
    addr: std::net::SocketAddr,
    arrivals: Arc<Mutex<Vec<Instant>>>,
}

impl ScriptedBackend {
    async fn start(script: Vec<Answer>) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let arrivals = Arc::new(Mutex::new(Vec::new()));
        let script = Arc::new(script);
        let seen = Arc::clone(&arrivals);
        tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    return;
                };
                let (script, seen) = (Arc::clone(&script), Arc::clone(&seen));
                tokio::spawn(async move { serve(stream, &script, &seen).await });
            }
        });
        ScriptedBackend { addr, arrivals }
    }

    fn endpoint(&self) -> String {
        format!("http://{}", self.addr)
    }

    fn requests(&self) -> usize {
        self.arrivals.lock().unwrap().len()
    }

    async fn wait_for_requests(&self, n: usize) {
        let deadline = Instant::now() + WAIT;
        while self.requests() < n {
            assert!(
                Instant::now() < deadline,
                "{} requests, not {n}",
                self.requests()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

/// Reads requests off one connection (headers, then `content-length` bytes) and answers them.
async fn serve(mut stream: TcpStream, script: &[Answer], seen: &Mutex<Vec<Instant>>) {
    let mut buffer = Vec::new();
    loop {
        let header_end = loop {
            if let Some(end) = buffer.windows(4).position(|w| w == b"\r\n\r\n") {
                break end + 4;
            }
            let mut chunk = [0u8; 8192];
            match stream.read(&mut chunk).await {
                Ok(0) | Err(_) => return,
                Ok(n) => buffer.extend_from_slice(&chunk[..n]),
            }
        };
        let head = String::from_utf8_lossy(&buffer[..header_end]).to_ascii_lowercase();
        let length: usize = head
            .lines()
            .find_map(|l| l.strip_prefix("content-length:"))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or(0);
        while buffer.len() < header_end + length {
            let mut chunk = [0u8; 65536];
            match stream.read(&mut chunk).await {
                Ok(0) | Err(_) => return,
                Ok(n) => buffer.extend_from_slice(&chunk[..n]),
            }
        }
        buffer.drain(..header_end + length);
        let index = {
            let mut seen = seen.lock().unwrap();
            seen.push(Instant::now());
            seen.len() - 1
        };
        let answer = script[index.min(script.len() - 1)].clone();
        let ok = match answer {
            Answer::Ok(body) => {
                let head = format!(
                    "HTTP/1.1 200 OK\r\ncontent-type: application/x-protobuf\r\ncontent-length: {}\r\n\r\n",
                    body.len()
                );
                stream.write_all(head.as_bytes()).await.is_ok()
                    && stream.write_all(&body).await.is_ok()
            }
            Answer::Unavailable(retry_after) => {
                let head = format!(
                    "HTTP/1.1 503 Service Unavailable\r\nretry-after: {retry_after}\r\ncontent-length: 0\r\n\r\n"
                );
                stream.write_all(head.as_bytes()).await.is_ok()
            }
            Answer::OkStalling => {
                let head = "HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n4\r\nabcd\r\n";
                let _ = stream.write_all(head.as_bytes()).await;
                // Never finishes; the client must give up on the body, not on the process.
                std::future::pending::<()>().await;
                false
            }
            Answer::OkHuge(size) => {
                let mut ok = stream
                    .write_all(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n")
                    .await
                    .is_ok();
                let chunk = vec![b'x'; 65536];
                let mut sent = 0;
                while ok && sent < size {
                    ok = stream
                        .write_all(format!("{:x}\r\n", chunk.len()).as_bytes())
                        .await
                        .is_ok()
                        && stream.write_all(&chunk).await.is_ok()
                        && stream.write_all(b"\r\n").await.is_ok();
                    sent += chunk.len();
                }
                ok && stream.write_all(b"0\r\n\r\n").await.is_ok()
            }
        };
        if !ok {
            return;
        }
    }
}

/// A sampler exporting over OTLP/HTTP to `backend` with `extra` exporter keys. (The recording
/// backend only gives the config its shape: the endpoint is replaced.)
async fn config_for(ports: SamplerPorts, backend: &ScriptedBackend, extra: &str) -> String {
    let placeholder = RecordingBackend::start_http().await;
    let mut config = SamplerConfig::new(ports, KEEP_ALL, &placeholder);
    config.decision_wait = "100ms".into();
    config.exporter_endpoint = backend.endpoint();
    config.exporter_extra = extra.into();
    config.render()
}

async fn send_trace(ports: &SamplerPorts, trace: u128) {
    let mut client = otlp::grpc_client(&ports.grpc_endpoint()).await;
    let spans = (1..=2)
        .map(|s| otlp::span(otlp::trace_id(trace), otlp::span_id(s), "job"))
        .collect();
    client.export(otlp::request("api", spans)).await.unwrap();
}

async fn wait_for_metric(gateway: &Gateway, name: &str, labels: &[(&str, &str)], n: f64) {
    let deadline = Instant::now() + WAIT;
    loop {
        let value = gateway.metric_opt(name, labels).await;
        if value == Some(n) {
            return;
        }
        assert!(
            value.is_none_or(|v| v < n) && Instant::now() < deadline,
            "{name}{labels:?} is {value:?}, waiting for {n}; logs:\n{}",
            gateway.logs()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn partial_success(rejected: i64) -> Vec<u8> {
    use opentelemetry_proto::tonic::collector::trace::v1::{
        ExportTracePartialSuccess, ExportTraceServiceResponse,
    };
    ExportTraceServiceResponse {
        partial_success: Some(ExportTracePartialSuccess {
            rejected_spans: rejected,
            error_message: "x".repeat(10_000),
        }),
    }
    .encode_to_vec()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn success_answers_with_bad_bodies_are_counted_and_cost_nothing_else() {
    let backend = ScriptedBackend::start(vec![
        Answer::Ok(b"\xff\xff\xff not protobuf".to_vec()),
        Answer::OkStalling,
        Answer::OkHuge(20 << 20),
        Answer::Ok(partial_success(1_000_000_000)),
        Answer::Ok(Vec::new()),
    ])
    .await;
    let ports = SamplerPorts::free();
    let gateway = Gateway::start(&config_for(ports, &backend, "timeout: 2s\n").await).await;
    for (trace, kind) in [
        (1, "undecodable"),
        (2, "response_body_timeout"),
        (3, "response_body_too_large"),
        (4, "rejected_more_than_sent"),
    ] {
        send_trace(&ports, trace).await;
        wait_for_metric(
            &gateway,
            "tailgate_exporter_bad_responses",
            &[("kind", kind)],
            1.0,
        )
        .await;
    }
    // Each was a 200: the spans count as sent, once (no retry of an accepted export).
    send_trace(&ports, 5).await;
    backend.wait_for_requests(5).await;
    wait_for_metric(
        &gateway,
        "otelcol_exporter_sent_spans",
        &[("exporter", "otlphttp/backend")],
        10.0,
    )
    .await;
    assert_eq!(backend.requests(), 5, "accepted exports are not sent again");
    // The partial success rejected "a billion" of 2 spans: 2 are counted.
    assert_eq!(
        gateway
            .metric_opt("tailgate_exporter_rejected_spans", &[])
            .await,
        Some(2.0)
    );
    let status = std::fs::read_to_string(format!("/proc/{}/status", gateway.pid())).unwrap();
    let peak_kib: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap();
    assert!(
        peak_kib < 150 * 1024,
        "a 20 MiB response body must not be buffered: peak RSS {peak_kib} KiB"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retry_after_as_an_http_date_is_honoured() {
    // 4 s from now, in IMF-fixdate: whole seconds, so the date names a moment 3-4 s from now.
    // The retry is due then, whenever the first attempt happened (the gateway's start-up and
    // decision_wait come first), so the check is against the date, not against the first try.
    let (start_wall, start) = (SystemTime::now(), Instant::now());
    let at = start_wall + Duration::from_secs(4);
    let whole_seconds = at.duration_since(SystemTime::UNIX_EPOCH).unwrap().as_secs();
    let named = SystemTime::UNIX_EPOCH + Duration::from_secs(whole_seconds);
    let due = start + named.duration_since(start_wall).unwrap();
    let backend = ScriptedBackend::start(vec![
        Answer::Unavailable(httpdate::fmt_http_date(at)),
        Answer::Ok(Vec::new()),
    ])
    .await;
    let ports = SamplerPorts::free();
    let extra = "retry_on_failure:\n  initial_interval: 50ms\n  max_interval: 50ms\n";
    let gateway = Gateway::start(&config_for(ports, &backend, extra).await).await;
    send_trace(&ports, 1).await;
    backend.wait_for_requests(2).await;
    let arrivals = backend.arrivals.lock().unwrap().clone();
    // Clock reads differ by a few ms between the wall clock and the monotonic one.
    let slack = Duration::from_millis(100);
    assert!(
        arrivals[1] + slack >= due,
        "retried {:?} before the date: it was not honoured (backoff is 50 ms)",
        due - arrivals[1]
    );
    let waited = arrivals[1] - arrivals[0];
    assert!(
        waited >= Duration::from_millis(500),
        "retried after {waited:?}: the date was not honoured (backoff is 50 ms)"
    );
    drop(gateway);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_keeps_its_grace_period_with_a_backend_that_never_answers() {
    // Accepts connections, reads nothing, answers nothing.
    let hole = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let hole_addr = hole.local_addr().unwrap();
    let held = Arc::new(Mutex::new(Vec::new()));
    let keep = Arc::clone(&held);
    tokio::spawn(async move {
        while let Ok((stream, _)) = hole.accept().await {
            keep.lock().unwrap().push(stream);
        }
    });
    let placeholder = RecordingBackend::start_http().await;
    let ports = SamplerPorts::free();
    let mut config = SamplerConfig::new(ports, KEEP_ALL, &placeholder);
    config.decision_wait = "30s".into();
    config.exporter_endpoint = format!("http://{hole_addr}");
    config.exporter_extra = "timeout: 60s\n".into();
    config.service_extra = "shutdown_grace_period: 4s\n".into();
    let gateway = Gateway::start(&config.render()).await;
    for trace in 1..=20 {
        send_trace(&ports, trace).await;
    }
    let signalled = Instant::now();
    gateway.sigterm();
    gateway.wait_exit(WAIT).await;
    let took = signalled.elapsed();
    // The grace period, plus the telemetry servers' 2 s, plus process start-up slack.
    assert!(took < Duration::from_secs(8), "shutdown took {took:?}");
    let logs = gateway.logs();
    assert!(logs.contains("shutdown complete"), "{logs}");
    assert!(
        logs.contains("shutdown grace period ended before the queue drained; unsent spans dropped"),
        "what could not be delivered is reported: {logs}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kept_batches_stay_under_the_backends_receive_limit() {
    // 8192 spans of about 1 KiB kept at once: one batch by span count (send_batch_size 8192) is
    // 8 MiB, twice the strict backend's 4 MiB limit (Tempo's default), which would refuse it.
    let backend = RecordingBackend::start_grpc().await;
    let ports = SamplerPorts::free();
    let mut config = SamplerConfig::new(ports, KEEP_ALL, &backend);
    config.batch = true;
    config.decision_wait = "500ms".into();
    let gateway = Gateway::start(&config.render()).await;
    let mut client = otlp::grpc_client(&ports.grpc_endpoint()).await;
    for trace in 0..16u128 {
        let spans = (0..512u64)
            .map(|s| {
                let mut span = otlp::span(otlp::trace_id(trace + 1), otlp::span_id(s + 1), "job");
                span.attributes.push(otlp::kv("payload", &"x".repeat(1000)));
                span
            })
            .collect();
        client.export(otlp::request("api", spans)).await.unwrap();
    }
    backend.wait_for_spans(8192, WAIT).await.unwrap();
    assert!(
        backend.refused_requests().is_empty(),
        "{}",
        backend.summary()
    );
    assert!(
        backend.request_count() >= 2,
        "8 MiB of spans went out in {} request(s)",
        backend.request_count()
    );
    drop(gateway);
}
