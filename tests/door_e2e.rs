//! Validation at the door, end to end over real sockets (issue 10): one client's damaged request
//! never costs another client's traces anything.
//!
//! A sampler keeping every trace (with a `batch` processor, so damaged and good spans would share
//! export requests) exports to a recording backend that decodes with prost, as Tempo and Jaeger
//! decode strictly. Each test sends damaged requests over OTLP/gRPC and OTLP/HTTP while other
//! clients send good traces in the same period, then checks what the clients were answered and
//! what the backend received.

mod support;

use std::time::Duration;

use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::{any_value, AnyValue, ArrayValue, KeyValue};
use opentelemetry_proto::tonic::trace::v1::span::Event;
use prost::Message;

use support::{otlp, Gateway, RecordingBackend, SamplerConfig, SamplerPorts};

const WAIT: Duration = Duration::from_secs(30);
const KEEP_ALL: &str = "
- name: everything
  type: always_sample
";
/// Spans per trace, damaged or good.
const SPANS_PER_TRACE: usize = 3;
/// Good traces sent by other clients alongside each kind of damage.
const GOOD_TRACES: u128 = 20;

/// Where a 3-byte marker string sits in the damaged trace's request; the marker is then turned
/// into invalid UTF-8 or into broken framing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Place {
    AttributeValue,
    SpanName,
    ResourceAttribute,
    ScopeName,
    EventName,
    ArrayElement,
}

const PLACES: [Place; 6] = [
    Place::AttributeValue,
    Place::SpanName,
    Place::ResourceAttribute,
    Place::ScopeName,
    Place::EventName,
    Place::ArrayElement,
];

const MARKER: &[u8] = b"@M@";

impl Place {
    /// The path of the message whose framing breaks when the marker's length is damaged.
    fn framing_path(self) -> &'static str {
        match self {
            Place::AttributeValue => "resource_spans[0].scope_spans[0].spans[1].attributes[0].value",
            Place::SpanName => "resource_spans[0].scope_spans[0].spans[1]",
            Place::ResourceAttribute => "resource_spans[0].resource.attributes[0].value",
            Place::ScopeName => "resource_spans[0].scope_spans[0].scope",
            Place::EventName => "resource_spans[0].scope_spans[0].spans[1].events[0]",
            Place::ArrayElement => {
                "resource_spans[0].scope_spans[0].spans[1].attributes[1].value.array_value.values[0]"
            }
        }
    }

    /// The path of the string field itself.
    fn string_path(self) -> String {
        match self {
            Place::SpanName => format!("{}.name", self.framing_path()),
            Place::ScopeName | Place::EventName => format!("{}.name", self.framing_path()),
            _ => format!("{}.string_value", self.framing_path()),
        }
    }
}

fn string(s: &str) -> Option<AnyValue> {
    Some(AnyValue {
        value: Some(any_value::Value::StringValue(s.into())),
    })
}

/// A trace of [`SPANS_PER_TRACE`] spans from a client named `service`, with the marker at
/// `place` when given (in span 1 for the span-level places).
fn trace_request(trace: u128, service: &str, place: Option<Place>) -> ExportTraceServiceRequest {
    let m = |p: Place, clean: &str| {
        if place == Some(p) {
            String::from_utf8(MARKER.to_vec()).unwrap()
        } else {
            clean.to_string()
        }
    };
    let root = otlp::span(otlp::trace_id(trace), otlp::span_id(1), "root");
    let spans = (0..SPANS_PER_TRACE as u64)
        .map(|i| {
            let mut span = if i == 0 {
                root.clone()
            } else {
                otlp::child_of(
                    otlp::span(otlp::trace_id(trace), otlp::span_id(1 + i), "child"),
                    &root,
                )
            };
            if i == 1 {
                span.name = m(Place::SpanName, "child");
                span.attributes = vec![
                    KeyValue {
                        key: "k".into(),
                        value: string(&m(Place::AttributeValue, "v")),
                        ..Default::default()
                    },
                    KeyValue {
                        key: "list".into(),
                        value: Some(AnyValue {
                            value: Some(any_value::Value::ArrayValue(ArrayValue {
                                values: vec![string(&m(Place::ArrayElement, "a")).unwrap()],
                            })),
                        }),
                        ..Default::default()
                    },
                ];
                span.events = vec![Event {
                    time_unix_nano: span.start_time_unix_nano,
                    name: m(Place::EventName, "e"),
                    ..Default::default()
                }];
            }
            span
        })
        .collect();
    let mut request = otlp::request(service, spans);
    let rs = &mut request.resource_spans[0];
    rs.resource.as_mut().unwrap().attributes[0].value =
        string(&m(Place::ResourceAttribute, service));
    rs.scope_spans[0].scope.as_mut().unwrap().name = m(Place::ScopeName, "tailgate-tests");
    request
}

fn marker_at(body: &[u8]) -> usize {
    let hits: Vec<usize> = (0..body.len() - 2)
        .filter(|&i| &body[i..i + 3] == MARKER)
        .collect();
    assert_eq!(hits.len(), 1);
    hits[0]
}

/// The trace's request with the marker replaced by bytes that are not UTF-8.
fn with_bad_utf8(trace: u128, place: Place) -> Vec<u8> {
    let mut body = trace_request(trace, "victim", Some(place)).encode_to_vec();
    let at = marker_at(&body);
    body[at..at + 3].copy_from_slice(b"\xff\xc3\x28");
    body
}

/// The trace's request with the marker's length running past its message.
fn with_broken_framing(trace: u128, place: Place) -> Vec<u8> {
    let mut body = trace_request(trace, "victim", Some(place)).encode_to_vec();
    let at = marker_at(&body);
    assert_eq!(body[at - 1], 3);
    body[at - 1] = 0x83;
    body
}

/// A client's answer, whichever transport it used.
#[derive(Debug)]
enum Answer {
    /// A 2xx / OK.
    Accepted,
    /// The HTTP status or gRPC code, and the message.
    Refused { code: String, message: String },
}

/// Sends `body` (an encoded request) over raw gRPC (so damaged bytes reach the gateway as they
/// are).
async fn send_grpc(endpoint: &str, body: Vec<u8>) -> Answer {
    let channel = tonic::transport::Endpoint::from_shared(endpoint.to_string())
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut grpc = tonic::client::Grpc::new(channel);
    grpc.ready().await.unwrap();
    let result = grpc
        .unary(
            tonic::Request::new(bytes::Bytes::from(body)),
            http::uri::PathAndQuery::from_static(tailgate::otlp::EXPORT_PATH),
            tailgate::otlp::RawBytesCodec,
        )
        .await;
    match result {
        Ok(_) => Answer::Accepted,
        Err(status) => Answer::Refused {
            code: format!("{:?}", status.code()),
            message: status.message().to_string(),
        },
    }
}

/// Posts `body` to OTLP/HTTP with the given content type and encoding.
async fn send_http(
    base: &str,
    content_type: &str,
    encoding: Option<&str>,
    body: Vec<u8>,
) -> Answer {
    let mut headers = vec![("content-type", content_type)];
    if let Some(e) = encoding {
        headers.push(("content-encoding", e));
    }
    let response = support::http::post(&format!("{base}/v1/traces"), &headers, body, WAIT)
        .await
        .unwrap();
    if response.status.is_success() {
        Answer::Accepted
    } else {
        Answer::Refused {
            code: response.status.as_u16().to_string(),
            message: response.text(),
        }
    }
}

/// [`GOOD_TRACES`] good traces, from four clients of their own (separate connections), trace
/// IDs from `first`.
async fn send_good_traces(endpoint: &str, first: u128) {
    let mut tasks = Vec::new();
    for client in 0..4u128 {
        let endpoint = endpoint.to_string();
        tasks.push(tokio::spawn(async move {
            let mut grpc = otlp::grpc_client(&endpoint).await;
            for n in (0..GOOD_TRACES).filter(|n| n % 4 == client) {
                let request = trace_request(first + n, &format!("good-{client}"), None);
                grpc.export(request)
                    .await
                    .expect("a good trace is accepted");
            }
        }));
    }
    for task in tasks {
        task.await.unwrap();
    }
}

async fn start_sampler(
    backend: &RecordingBackend,
    receiver_extra: &str,
) -> (Gateway, SamplerPorts) {
    let ports = SamplerPorts::free();
    let mut config = SamplerConfig::new(ports, KEEP_ALL, backend);
    config.batch = true;
    config.decision_wait = "500ms".into();
    let yaml = config.render().replacen(
        "  otlp:\n    protocols:\n",
        &format!("  otlp:\n{receiver_extra}    protocols:\n"),
        1,
    );
    (Gateway::start(&yaml).await, ports)
}

/// Good trace IDs of round `round` start here; damaged ones are `round * 1000 + 1, 2`.
fn good_base(round: usize) -> u128 {
    round as u128 * 1000 + 100
}

/// Every good trace of `rounds` arrived whole.
fn assert_good_traces_arrived(backend: &RecordingBackend, rounds: usize) {
    let traces = backend.spans_by_trace();
    for round in 0..rounds {
        for n in 0..GOOD_TRACES {
            let id = support::hex(&otlp::trace_id(good_base(round) + n));
            let spans = traces.get(&id).map_or(0, Vec::len);
            assert_eq!(
                spans,
                SPANS_PER_TRACE,
                "good trace {id}: {}",
                backend.summary()
            );
        }
    }
}

async fn assert_nothing_failed_to_export(gateway: &Gateway) {
    for metric in [
        "otelcol_exporter_send_failed_spans",
        "tailgate_exporter_rejected_spans",
        "tailgate_exporter_split_batches",
    ] {
        assert_eq!(gateway.metric(metric, &[]).await, 0.0, "{metric}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_utf8_at_each_depth_is_repaired_and_the_good_traces_sent_meanwhile_all_arrive() {
    let backend = RecordingBackend::start_grpc().await;
    let (gateway, ports) = start_sampler(&backend, "").await;
    let (grpc_ep, http_ep) = (ports.grpc_endpoint(), ports.http_endpoint());
    for (round, place) in PLACES.into_iter().enumerate() {
        let victim = round as u128 * 1000;
        let (grpc, http, ()) = tokio::join!(
            send_grpc(&grpc_ep, with_bad_utf8(victim + 1, place)),
            send_http(
                &http_ep,
                "application/x-protobuf",
                None,
                with_bad_utf8(victim + 2, place)
            ),
            send_good_traces(&grpc_ep, good_base(round)),
        );
        assert!(
            matches!(grpc, Answer::Accepted),
            "{place:?} over gRPC: {grpc:?}"
        );
        assert!(
            matches!(http, Answer::Accepted),
            "{place:?} over HTTP: {http:?}"
        );
    }
    let total = PLACES.len() * (GOOD_TRACES as usize + 2) * SPANS_PER_TRACE;
    backend.wait_for_spans(total, WAIT).await.unwrap();
    assert_good_traces_arrived(&backend, PLACES.len());
    // Each damaged trace arrived whole, its damage replaced by U+FFFD.
    let traces = backend.spans_by_trace();
    for (round, place) in PLACES.into_iter().enumerate() {
        for victim in [round as u128 * 1000 + 1, round as u128 * 1000 + 2] {
            let spans = &traces[&support::hex(&otlp::trace_id(victim))];
            assert_eq!(spans.len(), SPANS_PER_TRACE);
            let repaired = spans
                .iter()
                .filter(|s| format!("{s:?}").contains('\u{fffd}'))
                .count();
            let expected = match place {
                // Every span of the request shares the resource and the scope.
                Place::ResourceAttribute | Place::ScopeName => SPANS_PER_TRACE,
                _ => 1,
            };
            assert_eq!(repaired, expected, "{place:?}");
        }
    }
    // Resource and scope damage counts each span under them.
    let expected_repaired: usize = PLACES
        .iter()
        .map(|p| match p {
            Place::ResourceAttribute | Place::ScopeName => 2 * SPANS_PER_TRACE,
            _ => 2,
        })
        .sum();
    assert_eq!(
        gateway
            .metric("tailgate_receiver_repaired_spans", &[])
            .await,
        expected_repaired as f64
    );
    assert_nothing_failed_to_export(&gateway).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_invalid_utf8_refuse_bad_utf8_is_refused_naming_the_field_and_the_good_traces_arrive()
{
    let backend = RecordingBackend::start_grpc().await;
    let (gateway, ports) = start_sampler(&backend, "    invalid_utf8: refuse\n").await;
    let (grpc_ep, http_ep) = (ports.grpc_endpoint(), ports.http_endpoint());
    for (round, place) in PLACES.into_iter().enumerate() {
        let victim = round as u128 * 1000;
        let (grpc, http, ()) = tokio::join!(
            send_grpc(&grpc_ep, with_bad_utf8(victim + 1, place)),
            send_http(
                &http_ep,
                "application/x-protobuf",
                None,
                with_bad_utf8(victim + 2, place)
            ),
            send_good_traces(&grpc_ep, good_base(round)),
        );
        for (answer, code) in [(&grpc, "InvalidArgument"), (&http, "400")] {
            match answer {
                Answer::Refused { code: got, message } => {
                    assert_eq!(got, code, "{place:?}: {message}");
                    assert!(
                        message.contains(&place.string_path()) && message.contains("UTF-8"),
                        "{place:?}: {message}"
                    );
                }
                Answer::Accepted => panic!("{place:?}: accepted"),
            }
        }
    }
    let total = PLACES.len() * GOOD_TRACES as usize * SPANS_PER_TRACE;
    backend.wait_for_spans(total, WAIT).await.unwrap();
    assert_good_traces_arrived(&backend, PLACES.len());
    assert_eq!(
        backend.spans_by_trace().len(),
        PLACES.len() * GOOD_TRACES as usize
    );
    assert_eq!(
        gateway
            .metric(
                "tailgate_receiver_rejected_requests",
                &[("reason", "invalid_utf8")]
            )
            .await,
        2.0 * PLACES.len() as f64
    );
    assert_nothing_failed_to_export(&gateway).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn structural_damage_at_each_depth_is_refused_naming_the_path_and_the_good_traces_arrive() {
    let backend = RecordingBackend::start_grpc().await;
    let (gateway, ports) = start_sampler(&backend, "").await;
    let (grpc_ep, http_ep) = (ports.grpc_endpoint(), ports.http_endpoint());
    for (round, place) in PLACES.into_iter().enumerate() {
        let victim = round as u128 * 1000;
        let (grpc, http, ()) = tokio::join!(
            send_grpc(&grpc_ep, with_broken_framing(victim + 1, place)),
            send_http(
                &http_ep,
                "application/x-protobuf",
                None,
                with_broken_framing(victim + 2, place)
            ),
            send_good_traces(&grpc_ep, good_base(round)),
        );
        for (answer, code) in [(&grpc, "InvalidArgument"), (&http, "400")] {
            match answer {
                Answer::Refused { code: got, message } => {
                    assert_eq!(got, code, "{place:?}: {message}");
                    let path = format!("{}: message truncated", place.framing_path());
                    assert!(message.contains(&path), "{place:?}: {message}");
                }
                Answer::Accepted => panic!("{place:?}: accepted"),
            }
        }
    }
    let total = PLACES.len() * GOOD_TRACES as usize * SPANS_PER_TRACE;
    backend.wait_for_spans(total, WAIT).await.unwrap();
    assert_good_traces_arrived(&backend, PLACES.len());
    assert_eq!(
        gateway
            .metric(
                "tailgate_receiver_rejected_requests",
                &[("reason", "truncated")]
            )
            .await,
        2.0 * PLACES.len() as f64
    );
    assert_nothing_failed_to_export(&gateway).await;
}

/// A seeded generator (xorshift), so a failing mutation can be replayed.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }
}

/// One to three byte flips, overwrites or a truncation of `body`.
fn mutate(body: &[u8], rng: &mut Rng) -> Vec<u8> {
    let mut body = body.to_vec();
    for _ in 0..1 + rng.below(3) {
        match rng.below(4) {
            0 => {
                let i = rng.below(body.len());
                body[i] ^= 1 << rng.below(8);
            }
            1 => {
                let i = rng.below(body.len());
                body[i] = rng.next() as u8;
            }
            2 => {
                let i = rng.below(body.len());
                body[i] = [0x80, 0xff, 0x00, 0x0a][rng.below(4)];
            }
            _ => body.truncate(rng.below(body.len())),
        }
        if body.is_empty() {
            break;
        }
    }
    body
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn randomly_mutated_requests_get_2xx_or_4xx_never_5xx_and_the_good_traffic_all_arrives() {
    let backend = RecordingBackend::start_grpc().await;
    let (gateway, ports) = start_sampler(&backend, "").await;
    let mut rng = Rng(0x00d0_0e5e_ed00_0001);
    const MUTANTS: usize = 400;
    let (mut accepted, mut refused) = (0, 0);
    for round in 0..4 {
        let mutants: Vec<Vec<u8>> = (0..MUTANTS / 4)
            .map(|i| {
                let trace = 500_000 + (round * MUTANTS + i) as u128;
                let place = PLACES[i % PLACES.len()];
                let body = trace_request(trace, "mutant", Some(place)).encode_to_vec();
                mutate(&body, &mut rng)
            })
            .collect();
        let grpc = ports.grpc_endpoint();
        let http = ports.http_endpoint();
        let send_mutants = async {
            let mut answers = Vec::new();
            for (i, body) in mutants.iter().enumerate() {
                let answer = if i % 2 == 0 {
                    send_grpc(&grpc, body.clone()).await
                } else {
                    send_http(&http, "application/x-protobuf", None, body.clone()).await
                };
                answers.push((i, answer));
            }
            answers
        };
        let (answers, ()) = tokio::join!(send_mutants, send_good_traces(&grpc, good_base(round)));
        for (i, answer) in answers {
            match &answer {
                Answer::Accepted => accepted += 1,
                Answer::Refused { code, message } => {
                    refused += 1;
                    assert!(
                        code == "InvalidArgument" || code.starts_with('4'),
                        "mutant {i} of round {round} got {code}: {message}: {:?}",
                        mutants[i]
                    );
                }
            }
        }
    }
    assert!(
        accepted > 0 && refused > 0,
        "{accepted} accepted, {refused} refused"
    );
    // The gateway still serves, and every good trace arrived whole.
    gateway.health().await.unwrap();
    // Every good trace arrives whole: counted straight from the recorded requests.
    let wanted: std::collections::HashSet<Vec<u8>> = (0..4)
        .flat_map(|round| {
            (0..GOOD_TRACES).map(move |n| otlp::trace_id(good_base(round) + n).to_vec())
        })
        .collect();
    backend
        .wait_until("every good span", WAIT, |requests| {
            let good_spans = requests
                .iter()
                .filter(|r| r.accepted())
                .flat_map(|r| &r.request.resource_spans)
                .flat_map(|rs| &rs.scope_spans)
                .flat_map(|ss| &ss.spans)
                .filter(|s| wanted.contains(&s.trace_id))
                .count();
            good_spans >= wanted.len() * SPANS_PER_TRACE
        })
        .await
        .unwrap();
    assert_good_traces_arrived(&backend, 4);
    // Whatever was accepted, the strict backend accepted too.
    assert_nothing_failed_to_export(&gateway).await;
}

/// The peak resident set of a process (`VmHWM`), in bytes.
fn peak_rss(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let kb: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmHWM in /proc/PID/status");
    kb * 1024
}

/// The peak RSS an 18 MB body may cost: the body as read (18 MB, up to twice that while the
/// buffer grows), its protobuf conversion (12 MB, up to twice that while it grows) and the
/// gateway's own baseline; 300 MB leaves room for allocator slack and is a twelfth of what the
/// struct-per-span conversion took (3.7 GB).
const JSON_PEAK_RSS_BOUND: u64 = 300 * 1024 * 1024;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_18_mb_otlp_json_body_of_empty_spans_is_converted_in_bounded_memory() {
    let backend = RecordingBackend::start_grpc().await;
    let (gateway, ports) = start_sampler(&backend, "").await;
    let mut json = br#"{"resourceSpans":[{"scopeSpans":[{"spans":["#.to_vec();
    while json.len() < 18 * 1024 * 1024 {
        json.extend_from_slice(b"{},");
    }
    json.extend_from_slice(b"{}]}]}]}");
    let before = peak_rss(gateway.pid());
    let answer = send_http(&ports.http_endpoint(), "application/json", None, json).await;
    let peak = peak_rss(gateway.pid());
    eprintln!(
        "peak RSS before the 18 MB JSON body: {} MB, after: {} MB",
        before >> 20,
        peak >> 20
    );
    // Spans without IDs are refused whole, as in protobuf, naming the first.
    match &answer {
        Answer::Refused { code, message } => {
            assert_eq!(code, "400");
            assert!(
                message.contains("resource_spans[0].scope_spans[0].spans[0]")
                    && message.contains("trace_id"),
                "{message}"
            );
        }
        Answer::Accepted => panic!("empty spans were accepted"),
    }
    assert!(
        peak < JSON_PEAK_RSS_BOUND,
        "peak RSS {} MB (bound {} MB)",
        peak >> 20,
        JSON_PEAK_RSS_BOUND >> 20
    );
    // And it still serves.
    let good = trace_request(7, "after", None).encode_to_vec();
    let answer = send_http(&ports.http_endpoint(), "application/x-protobuf", None, good).await;
    assert!(matches!(answer, Answer::Accepted), "{answer:?}");
    backend.wait_for_spans(SPANS_PER_TRACE, WAIT).await.unwrap();
}

fn gzip(data: &[u8]) -> Vec<u8> {
    use std::io::Write;
    let mut encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    encoder.write_all(data).unwrap();
    encoder.finish().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gzip_body_of_several_members_is_read_whole() {
    let backend = RecordingBackend::start_grpc().await;
    let (_gateway, ports) = start_sampler(&backend, "").await;
    // Two requests' bytes back to back are one request with both resource spans (repeated
    // fields concatenate); each is compressed as its own gzip member, as a proxy that
    // concatenates streams would send it.
    let first = trace_request(41, "first", None).encode_to_vec();
    let second = trace_request(42, "second", None).encode_to_vec();
    let mut body = gzip(&first);
    body.extend_from_slice(&gzip(&second));
    let answer = send_http(
        &ports.http_endpoint(),
        "application/x-protobuf",
        Some("gzip"),
        body,
    )
    .await;
    assert!(matches!(answer, Answer::Accepted), "{answer:?}");
    backend
        .wait_for_spans(2 * SPANS_PER_TRACE, WAIT)
        .await
        .unwrap();
    let traces = backend.spans_by_trace();
    for trace in [41, 42] {
        let spans = &traces[&support::hex(&otlp::trace_id(trace))];
        assert_eq!(spans.len(), SPANS_PER_TRACE, "trace {trace}");
    }
}

/// Writes an HTTP/1.1 request head declaring `length` body bytes, and `sent` of them, and keeps
/// the connection open (a slow client).
async fn slow_post(port: u16, length: usize, sent: usize) -> tokio::net::TcpStream {
    use tokio::io::AsyncWriteExt;
    let mut stream = tokio::net::TcpStream::connect(support::loopback(port))
        .await
        .unwrap();
    let head = format!(
        "POST /v1/traces HTTP/1.1\r\nhost: 127.0.0.1\r\ncontent-type: application/x-protobuf\r\n\
         content-length: {length}\r\n\r\n"
    );
    stream.write_all(head.as_bytes()).await.unwrap();
    stream.write_all(&vec![0x0a; sent]).await.unwrap();
    stream.flush().await.unwrap();
    stream
}

/// Waits until the gateway reports `bytes` in flight (the receiver has taken them).
async fn wait_in_flight(gateway: &Gateway, bytes: f64) {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let now = gateway.metric("tailgate_receiver_in_flight", &[]).await;
        if now == bytes {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "in flight: {now}, waited for {bytes}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn past_the_in_flight_byte_budget_clients_are_told_to_retry_and_then_taken_again() {
    let backend = RecordingBackend::start_grpc().await;
    let mib = 1024 * 1024;
    let ports = SamplerPorts::free();
    let mut config = SamplerConfig::new(ports, KEEP_ALL, &backend);
    config.decision_wait = "200ms".into();
    let yaml = config
        .render()
        .replacen(
            "  otlp:\n    protocols:\n",
            "  otlp:\n    max_in_flight_mib: 1\n    protocols:\n",
            1,
        )
        .replace(
            &format!("endpoint: 127.0.0.1:{}\n", ports.grpc),
            &format!(
                "endpoint: 127.0.0.1:{}\n        max_recv_msg_size_mib: 1\n",
                ports.grpc
            ),
        )
        .replace(
            &format!("endpoint: 127.0.0.1:{}\n", ports.http),
            &format!(
                "endpoint: 127.0.0.1:{}\n        max_request_body_size: {mib}\n",
                ports.http
            ),
        );
    let gateway = Gateway::start(&yaml).await;
    // A slow client holds most of the budget: its declared length is taken before its body is
    // read.
    let slow = slow_post(ports.http, 900 * 1024, 10).await;
    wait_in_flight(&gateway, (900 * 1024) as f64).await;

    let body = trace_request(77, "waiting", None).encode_to_vec();
    let mut padded = trace_request(78, "large", None);
    padded.resource_spans[0].scope_spans[0].spans[0].name = "x".repeat(200 * 1024);
    let large = padded.encode_to_vec();
    let http = support::http::post(
        &format!("{}/v1/traces", ports.http_endpoint()),
        &[("content-type", "application/x-protobuf")],
        large.clone(),
        WAIT,
    )
    .await
    .unwrap();
    assert_eq!(http.status.as_u16(), 503, "{}", http.text());
    assert_eq!(
        http.headers.get("retry-after").map(|v| v.to_str().unwrap()),
        Some("1")
    );
    match send_grpc(&ports.grpc_endpoint(), large.clone()).await {
        Answer::Refused { code, message } => {
            assert_eq!(code, "Unavailable", "{message}");
            assert!(message.contains("max_in_flight_mib"), "{message}");
        }
        Answer::Accepted => panic!("accepted past the budget"),
    }
    // A small request still fits beside the slow one.
    let small = send_grpc(&ports.grpc_endpoint(), body).await;
    assert!(matches!(small, Answer::Accepted), "{small:?}");
    assert_eq!(
        gateway
            .metric("tailgate_receiver_throttled_requests", &[])
            .await,
        2.0
    );

    // The slow client goes away: its bytes come back, and the large request is taken.
    drop(slow);
    wait_in_flight(&gateway, 0.0).await;
    let retried = send_grpc(&ports.grpc_endpoint(), large).await;
    assert!(matches!(retried, Answer::Accepted), "{retried:?}");
    backend
        .wait_for_spans(2 * SPANS_PER_TRACE, WAIT)
        .await
        .unwrap();
}

#[test]
fn a_max_in_flight_mib_below_the_largest_request_is_a_config_error_naming_it() {
    let yaml = "
receivers:
  otlp:
    max_in_flight_mib: 2
    protocols:
      http:
processors:
  tail_sampling:
    policies: [{name: all, type: always_sample}]
exporters:
  debug:
service:
  pipelines:
    traces: {receivers: [otlp], processors: [tail_sampling], exporters: [debug]}
";
    let Err(tailgate::config::LoadError::Invalid(errors)) =
        tailgate::config::Config::from_yaml(yaml)
    else {
        panic!("accepted");
    };
    assert!(
        errors[0]
            .to_string()
            .starts_with("receivers.otlp.max_in_flight_mib:"),
        "{errors:?}"
    );
}

/// A trace with every kind of field, for the file exporter's JSON.
fn rich_trace(trace: u128) -> ExportTraceServiceRequest {
    use opentelemetry_proto::tonic::trace::v1::span::Link;
    let mut request = trace_request(trace, "file-client", None);
    let span = &mut request.resource_spans[0].scope_spans[0].spans[1];
    span.attributes.extend([
        KeyValue {
            key: "count".into(),
            value: Some(AnyValue {
                value: Some(any_value::Value::IntValue(-7)),
            }),
            ..Default::default()
        },
        KeyValue {
            key: "ratio".into(),
            value: Some(AnyValue {
                value: Some(any_value::Value::DoubleValue(0.25)),
            }),
            ..Default::default()
        },
        KeyValue {
            key: "raw".into(),
            value: Some(AnyValue {
                value: Some(any_value::Value::BytesValue(vec![0, 1, 254, 255])),
            }),
            ..Default::default()
        },
    ]);
    span.links = vec![Link {
        trace_id: vec![0xab; 16],
        span_id: vec![0xcd; 8],
        ..Default::default()
    }];
    otlp::set_error(span, "it failed");
    span.kind = 3;
    request
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_file_exporter_writes_otlp_json_that_protobufs_json_parser_and_ours_read_back() {
    // Panics with how to install it when the venv is missing (tests/run.sh creates it).
    let python = support::python::python();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("kept.jsonl");
    let ports = SamplerPorts::free();
    let yaml = format!(
        "\
receivers:
  otlp:
    protocols:
      grpc:
        endpoint: 127.0.0.1:{grpc}
processors:
  tail_sampling:
    decision_wait: 200ms
    policies: [{{name: all, type: always_sample}}]
exporters:
  file/kept:
    path: {path}
    format: json
extensions:
  health_check:
    endpoint: 127.0.0.1:{health}
service:
  extensions: [health_check]
  pipelines:
    traces:
      receivers: [otlp]
      processors: [tail_sampling]
      exporters: [file/kept]
",
        grpc = ports.grpc,
        health = ports.health,
        path = path.display()
    );
    let _gateway = Gateway::start(&yaml).await;
    let sent = rich_trace(0x1234);
    let mut client = otlp::grpc_client(&ports.grpc_endpoint()).await;
    client.export(sent.clone()).await.unwrap();

    // The file is the signal: wait until its lines hold every span.
    let deadline = tokio::time::Instant::now() + WAIT;
    let requests = loop {
        let text = std::fs::read_to_string(&path).unwrap_or_default();
        let requests: Vec<ExportTraceServiceRequest> = text
            .lines()
            .map(|line| {
                let body = tailgate::otlp::json::json_to_protobuf(line.as_bytes())
                    .unwrap_or_else(|e| panic!("our reader refuses {line}: {e}"));
                ExportTraceServiceRequest::decode(&body[..]).unwrap()
            })
            .collect();
        let spans: usize = requests
            .iter()
            .flat_map(|r| &r.resource_spans)
            .flat_map(|rs| &rs.scope_spans)
            .map(|ss| ss.spans.len())
            .sum();
        if spans >= SPANS_PER_TRACE {
            break requests;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "file has {spans} spans: {text}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let text = std::fs::read_to_string(&path).unwrap();
    // The spec's mapping: nothing unset, no defaults, IDs in hex, 64-bit integers as strings.
    assert!(!text.contains("null"), "{text}");
    for default in [
        "\"droppedAttributesCount\":0",
        "\"traceState\":\"\"",
        "\"schemaUrl\":\"\"",
        "\"flags\":0",
        "\"entityRefs\":[]",
    ] {
        assert!(!text.contains(default), "{default} in {text}");
    }
    assert!(text.contains(&format!(
        "\"traceId\":\"{}\"",
        support::hex(&otlp::trace_id(0x1234))
    )));
    assert!(text.contains("\"intValue\":\"-7\""), "{text}");
    // What we read back is what was sent (one resource, one scope: nothing regrouped).
    let got = &requests[0].resource_spans[0];
    let want = &sent.resource_spans[0];
    assert_eq!(got.resource, want.resource);
    assert_eq!(got.scope_spans[0].scope, want.scope_spans[0].scope);
    let mut got_spans = got.scope_spans[0].spans.clone();
    got_spans.sort_by(|a, b| a.span_id.cmp(&b.span_id));
    assert_eq!(got_spans, want.scope_spans[0].spans);

    // Python's protobuf parses every line strictly (unknown names and wrong types are errors).
    // Its JSON mapping reads bytes as base64 where OTLP writes IDs in hex, so IDs are left out
    // of the comparison; everything else must match.
    let script = r#"
import json, sys
from google.protobuf import json_format
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
out = []
for line in open(sys.argv[1]):
    request = json_format.Parse(line, ExportTraceServiceRequest(), ignore_unknown_fields=False)
    for rs in request.resource_spans:
        for ss in rs.scope_spans:
            for span in ss.spans:
                attributes = {kv.key: json_format.MessageToDict(kv.value) for kv in span.attributes}
                out.append({"name": span.name, "kind": span.kind, "start": str(span.start_time_unix_nano),
                            "status": span.status.code, "attributes": attributes,
                            "service": rs.resource.attributes[0].value.string_value,
                            "scope": ss.scope.name, "links": len(span.links)})
print(json.dumps(out))
"#;
    let output = std::process::Command::new(&python)
        .args(["-c", script])
        .arg(&path)
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "python could not parse the file: {}\n{text}",
        String::from_utf8_lossy(&output.stderr)
    );
    let parsed: Vec<serde_json::Value> = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(parsed.len(), SPANS_PER_TRACE);
    let child = parsed
        .iter()
        .find(|s| s["links"] == 1)
        .expect("the span with a link");
    let want = &sent.resource_spans[0].scope_spans[0].spans[1];
    assert_eq!(child["name"], want.name.as_str());
    assert_eq!(child["kind"], 3);
    assert_eq!(child["status"], 2);
    assert_eq!(child["start"], want.start_time_unix_nano.to_string());
    assert_eq!(child["service"], "file-client");
    assert_eq!(child["scope"], "tailgate-tests");
    assert_eq!(
        child["attributes"]["count"],
        serde_json::json!({"intValue": "-7"})
    );
    assert_eq!(
        child["attributes"]["ratio"],
        serde_json::json!({"doubleValue": 0.25})
    );
    assert_eq!(
        child["attributes"]["raw"],
        serde_json::json!({"bytesValue": "AAH+/w=="})
    );
}

/// The HTTP/2 settings the gRPC receiver opens a connection with, read off a raw socket: the
/// server's first frame is its SETTINGS (RFC 9113, 3.4).
async fn server_settings(port: u16) -> Vec<(u16, u32)> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut socket = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .unwrap();
    // The client preface, then an empty SETTINGS frame.
    socket
        .write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\0\0\0\x04\0\0\0\0\0")
        .await
        .unwrap();
    let mut header = [0u8; 9];
    socket.read_exact(&mut header).await.unwrap();
    let len = u32::from_be_bytes([0, header[0], header[1], header[2]]) as usize;
    assert_eq!(
        (header[3], header[4]),
        (0x4, 0),
        "a SETTINGS frame, not an ACK"
    );
    let mut payload = vec![0u8; len];
    socket.read_exact(&mut payload).await.unwrap();
    payload
        .chunks(6)
        .map(|s| {
            (
                u16::from_be_bytes([s[0], s[1]]),
                u32::from_be_bytes([s[2], s[3], s[4], s[5]]),
            )
        })
        .collect()
}

/// The gRPC receiver lets clients send a large request in few frames and without waiting for
/// window updates: it advertises 256 KiB frames (h2's default is 16 KiB, which made a 1 MB
/// request 64 frames) and 4 MiB stream windows. A 1.5 MB request from a tonic client, which sends
/// frames up to what the server advertises, arrives whole.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_grpc_receiver_advertises_large_frames_and_windows_and_takes_a_large_request() {
    const MAX_FRAME_SIZE: u16 = 0x5;
    const INITIAL_WINDOW_SIZE: u16 = 0x4;
    let backend = RecordingBackend::start_grpc().await;
    let (_gateway, ports) = start_sampler(&backend, "").await;
    let settings = server_settings(ports.grpc).await;
    let value = |id: u16| settings.iter().find(|(i, _)| *i == id).map(|(_, v)| *v);
    assert_eq!(value(MAX_FRAME_SIZE), Some(256 * 1024), "{settings:?}");
    assert_eq!(
        value(INITIAL_WINDOW_SIZE),
        Some(4 * 1024 * 1024),
        "{settings:?}"
    );

    let spans: Vec<_> = (0..300u64)
        .map(|n| {
            let mut span = otlp::span(otlp::trace_id(7), otlp::span_id(n + 1), "large");
            span.attributes
                .push(otlp::kv("padding", &"x".repeat(5_000)));
            span
        })
        .collect();
    let request = otlp::request("large-client", spans);
    assert!(request.encoded_len() > 1_500_000);
    let mut client = otlp::grpc_client(&ports.grpc_endpoint()).await;
    client.export(request).await.expect("accepted");
    backend.wait_for_spans(300, WAIT).await.unwrap();
    assert_eq!(backend.spans_by_trace().len(), 1);
}
