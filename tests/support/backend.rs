//! [`RecordingBackend`]: a fake trace backend (Tempo, Jaeger) that records what the gateway sends.
//!
//! It serves the OTLP trace service over gRPC (`TraceService/Export`, tonic) or over HTTP
//! (`POST /v1/traces`, axum; protobuf or JSON bodies, `gzip`/`zstd` content encodings) on a
//! loopback port. Both protocols share one [`Shared`] state, so they record identically.
//!
//! Every request is decoded and appended, with its headers and the answer it got, to a log kept in
//! a `tokio::sync::watch` channel. Tests wait on that channel ([`RecordingBackend::wait_for_spans`],
//! [`RecordingBackend::wait_until`]) instead of sleeping: each recorded request wakes the waiters,
//! which re-check their condition.
//!
//! Failure injection, for the exporter's retry and queue paths:
//! - [`RecordingBackend::fail_next`] rejects the next N requests with a [`Failure`] (a gRPC code,
//!   optionally with a `google.rpc.RetryInfo` delay), then accepts again;
//! - [`RecordingBackend::fail_all`] rejects until [`RecordingBackend::stop_failing`];
//! - [`RecordingBackend::hold_responses`] keeps requests waiting unanswered until
//!   [`RecordingBackend::release_responses`] (a stalled backend).
//!
//! Rejected requests are recorded too (so retries can be counted), but their spans do not count as
//! received: [`RecordingBackend::spans`] and friends look at accepted requests only.
//!
//! Over HTTP a failure is answered as the OTLP/HTTP spec describes: the HTTP status matching the
//! gRPC code (503 for `Unavailable`, 429 for `ResourceExhausted`, ...), a protobuf
//! `google.rpc.Status` body, and for a retry delay a `Retry-After` header in whole seconds
//! (rounded up).

use std::collections::{BTreeMap, VecDeque};
use std::fmt;
use std::io::Read;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::{DefaultBodyLimit, State};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::Router;
use bytes::Bytes;
use http::{header, HeaderMap, HeaderValue, StatusCode};
use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{
    TraceService, TraceServiceServer,
};
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use opentelemetry_proto::tonic::common::v1::InstrumentationScope;
use opentelemetry_proto::tonic::resource::v1::Resource;
use opentelemetry_proto::tonic::trace::v1::Span;
use prost::Message;
use tokio::sync::{oneshot, watch};
use tokio::task::JoinHandle;
use tonic::codec::CompressionEncoding;
use tonic::Code;

use super::otlp::string_attribute;

/// How long [`RecordingBackend::shutdown`] lets open connections finish before giving up on them.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);

/// Which OTLP transport a backend serves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Protocol {
    /// OTLP/gRPC, `opentelemetry.proto.collector.trace.v1.TraceService/Export`.
    Grpc,
    /// OTLP/HTTP, `POST /v1/traces`.
    Http,
}

/// How the backend rejects a request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Failure {
    /// A plain gRPC status with this code and no details (over HTTP: the matching HTTP status).
    Status(Code),
    /// A gRPC status with a `google.rpc.RetryInfo` detail asking the client to wait this long
    /// (over HTTP: the matching HTTP status and a `Retry-After` header).
    StatusWithRetryDelay(Code, Duration),
}

impl Failure {
    /// `UNAVAILABLE`, the usual "backend is down or restarting" answer (retryable).
    pub fn unavailable() -> Self {
        Failure::Status(Code::Unavailable)
    }

    /// `RESOURCE_EXHAUSTED` without `RetryInfo`: per the OTLP spec, a client must not retry it.
    pub fn resource_exhausted_without_retry_info() -> Self {
        Failure::Status(Code::ResourceExhausted)
    }

    /// `RESOURCE_EXHAUSTED` with a `RetryInfo` delay: the client should retry after `delay`.
    pub fn resource_exhausted_retry_after(delay: Duration) -> Self {
        Failure::StatusWithRetryDelay(Code::ResourceExhausted, delay)
    }

    /// The gRPC code of this failure.
    pub fn code(&self) -> Code {
        match self {
            Failure::Status(code) | Failure::StatusWithRetryDelay(code, _) => *code,
        }
    }

    /// The retry delay this failure carries, if any.
    pub fn retry_delay(&self) -> Option<Duration> {
        match self {
            Failure::Status(_) => None,
            Failure::StatusWithRetryDelay(_, delay) => Some(*delay),
        }
    }

    /// The HTTP status an OTLP/HTTP server answers for this failure.
    pub fn http_status(&self) -> StatusCode {
        match self.code() {
            Code::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
            Code::ResourceExhausted => StatusCode::TOO_MANY_REQUESTS,
            Code::DeadlineExceeded => StatusCode::GATEWAY_TIMEOUT,
            Code::InvalidArgument => StatusCode::BAD_REQUEST,
            Code::Unauthenticated => StatusCode::UNAUTHORIZED,
            Code::PermissionDenied => StatusCode::FORBIDDEN,
            Code::NotFound => StatusCode::NOT_FOUND,
            Code::Unimplemented => StatusCode::NOT_IMPLEMENTED,
            _ => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    fn message(&self) -> String {
        format!("recording backend was told to fail with {:?}", self.code())
    }

    /// The encoded `google.rpc.Status` (with a `RetryInfo` detail when there is a delay).
    fn rpc_status(&self) -> Vec<u8> {
        let details = self
            .retry_delay()
            .map(|delay| {
                let retry_info = RetryInfo {
                    retry_delay: Some(prost_types::Duration {
                        seconds: delay.as_secs() as i64,
                        nanos: delay.subsec_nanos() as i32,
                    }),
                };
                prost_types::Any {
                    type_url: "type.googleapis.com/google.rpc.RetryInfo".to_string(),
                    value: retry_info.encode_to_vec(),
                }
            })
            .into_iter()
            .collect();
        RpcStatus {
            code: self.code() as i32,
            message: self.message(),
            details,
        }
        .encode_to_vec()
    }

    fn to_grpc(&self) -> tonic::Status {
        match self {
            Failure::Status(code) => tonic::Status::new(*code, self.message()),
            Failure::StatusWithRetryDelay(code, _) => {
                tonic::Status::with_details(*code, self.message(), self.rpc_status().into())
            }
        }
    }

    fn to_http(&self) -> Response {
        let mut headers = HeaderMap::new();
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/x-protobuf"),
        );
        if let Some(delay) = self.retry_delay() {
            // Retry-After has whole-second granularity: round up so the client never comes back
            // earlier than asked.
            let seconds = delay.as_secs() + u64::from(delay.subsec_nanos() > 0);
            headers.insert(header::RETRY_AFTER, HeaderValue::from(seconds));
        }
        (self.http_status(), headers, self.rpc_status()).into_response()
    }
}

/// `google.rpc.Status`, written out here so the tests need no generated code.
#[derive(Clone, PartialEq, prost::Message)]
struct RpcStatus {
    #[prost(int32, tag = "1")]
    code: i32,
    #[prost(string, tag = "2")]
    message: String,
    #[prost(message, repeated, tag = "3")]
    details: Vec<prost_types::Any>,
}

/// `google.rpc.RetryInfo`.
#[derive(Clone, PartialEq, prost::Message)]
struct RetryInfo {
    #[prost(message, optional, tag = "1")]
    retry_delay: Option<prost_types::Duration>,
}

/// One export request as the backend received it.
#[derive(Debug, Clone)]
pub struct ReceivedRequest {
    /// The transport it came over.
    pub protocol: Protocol,
    /// Request headers. For gRPC these are the metadata (tonic strips the protocol's reserved
    /// headers such as `content-type` and `te`); header names are lower case.
    pub headers: HeaderMap,
    /// The decoded request.
    pub request: ExportTraceServiceRequest,
    /// `None` if the backend accepted it, else the failure it answered with.
    pub rejected_with: Option<Failure>,
}

impl ReceivedRequest {
    /// Whether the backend answered OK.
    pub fn accepted(&self) -> bool {
        self.rejected_with.is_none()
    }

    /// A header's value as text (`None` if absent or not visible ASCII).
    /// Names are case-insensitive: `header("X-Scope-OrgID")` finds `x-scope-orgid`.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    /// The number of spans in the request.
    pub fn span_count(&self) -> usize {
        self.request
            .resource_spans
            .iter()
            .flat_map(|rs| &rs.scope_spans)
            .map(|ss| ss.spans.len())
            .sum()
    }

    /// Every span in the request, each with its resource and scope.
    pub fn spans(&self) -> Vec<ReceivedSpan> {
        let mut out = Vec::with_capacity(self.span_count());
        for rs in &self.request.resource_spans {
            for ss in &rs.scope_spans {
                for span in &ss.spans {
                    out.push(ReceivedSpan {
                        resource: rs.resource.clone(),
                        scope: ss.scope.clone(),
                        span: span.clone(),
                    });
                }
            }
        }
        out
    }
}

/// One received span with the resource and scope it was sent under.
#[derive(Debug, Clone)]
pub struct ReceivedSpan {
    pub resource: Option<Resource>,
    pub scope: Option<InstrumentationScope>,
    pub span: Span,
}

impl ReceivedSpan {
    /// The trace ID in lower-case hex.
    pub fn trace_id(&self) -> String {
        super::hex(&self.span.trace_id)
    }

    /// The span ID in lower-case hex.
    pub fn span_id(&self) -> String {
        super::hex(&self.span.span_id)
    }

    /// The resource's `service.name`.
    pub fn service_name(&self) -> Option<String> {
        self.resource_attribute("service.name")
    }

    /// A resource attribute rendered as text.
    pub fn resource_attribute(&self, key: &str) -> Option<String> {
        string_attribute(&self.resource.as_ref()?.attributes, key)
    }

    /// A span attribute rendered as text.
    pub fn attribute(&self, key: &str) -> Option<String> {
        string_attribute(&self.span.attributes, key)
    }
}

/// A wait on the backend that ran out of time. Its message says what had arrived by then.
#[derive(Debug, Clone)]
pub struct WaitTimeout {
    /// What the test waited for, e.g. "8 spans".
    pub waited_for: String,
    pub timeout: Duration,
    /// [`RecordingBackend::summary`] at the moment of the timeout.
    pub summary: String,
}

impl fmt::Display for WaitTimeout {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "timed out after {:?} waiting for {}; backend has {}",
            self.timeout, self.waited_for, self.summary
        )
    }
}

impl std::error::Error for WaitTimeout {}

/// Everything recorded so far; lives in the watch channel.
#[derive(Debug, Default)]
struct Record {
    requests: Vec<ReceivedRequest>,
    /// Requests currently held by [`RecordingBackend::hold_responses`].
    held: usize,
    /// HTTP bodies that could not be decoded (answered 400, not in `requests`).
    undecodable: Vec<String>,
}

/// What the next requests are answered with.
#[derive(Debug, Default)]
struct Plan {
    next: VecDeque<Failure>,
    always: Option<Failure>,
}

/// State shared by the server task(s) and the test's handle.
#[derive(Debug)]
struct Shared {
    record: watch::Sender<Record>,
    plan: Mutex<Plan>,
    /// `true` while responses are held.
    holding: watch::Sender<bool>,
}

impl Shared {
    fn new() -> Self {
        Shared {
            record: watch::Sender::new(Record::default()),
            plan: Mutex::new(Plan::default()),
            holding: watch::Sender::new(false),
        }
    }

    /// Holds while asked to, then records the request and decides the answer.
    async fn answer(
        &self,
        protocol: Protocol,
        headers: HeaderMap,
        request: ExportTraceServiceRequest,
    ) -> Result<(), Failure> {
        if *self.holding.borrow() {
            let _held = HeldGuard::new(&self.record);
            let mut holding = self.holding.subscribe();
            // An error means the sender is gone, i.e. the backend is shutting down: answer then.
            let _ = holding.wait_for(|h| !*h).await;
        }
        let failure = {
            let mut plan = self.plan.lock().unwrap();
            plan.next.pop_front().or_else(|| plan.always.clone())
        };
        self.record.send_modify(|r| {
            r.requests.push(ReceivedRequest {
                protocol,
                headers,
                request,
                rejected_with: failure.clone(),
            })
        });
        match failure {
            None => Ok(()),
            Some(f) => Err(f),
        }
    }
}

/// Counts a held request for as long as it is held, even if the client gives up on it.
struct HeldGuard<'a>(&'a watch::Sender<Record>);

impl<'a> HeldGuard<'a> {
    fn new(record: &'a watch::Sender<Record>) -> Self {
        record.send_modify(|r| r.held += 1);
        HeldGuard(record)
    }
}

impl Drop for HeldGuard<'_> {
    fn drop(&mut self) {
        self.0.send_modify(|r| r.held -= 1);
    }
}

/// The gRPC face of [`Shared`].
struct GrpcService(Arc<Shared>);

#[tonic::async_trait]
impl TraceService for GrpcService {
    async fn export(
        &self,
        request: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        let (metadata, _extensions, message) = request.into_parts();
        match self
            .0
            .answer(Protocol::Grpc, metadata.into_headers(), message)
            .await
        {
            Ok(()) => Ok(tonic::Response::new(ExportTraceServiceResponse::default())),
            Err(failure) => Err(failure.to_grpc()),
        }
    }
}

/// The OTLP/HTTP face of [`Shared`]: `POST /v1/traces`.
async fn http_export(
    State(shared): State<Arc<Shared>>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let json = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|ct| ct.starts_with("application/json"));
    let request = match decode_http_body(&headers, &body, json) {
        Ok(request) => request,
        Err(error) => {
            shared
                .record
                .send_modify(|r| r.undecodable.push(error.clone()));
            return (StatusCode::BAD_REQUEST, error).into_response();
        }
    };
    match shared.answer(Protocol::Http, headers, request).await {
        Ok(()) if json => (
            [(header::CONTENT_TYPE, "application/json")],
            serde_json::to_vec(&ExportTraceServiceResponse::default()).unwrap(),
        )
            .into_response(),
        Ok(()) => (
            [(header::CONTENT_TYPE, "application/x-protobuf")],
            ExportTraceServiceResponse::default().encode_to_vec(),
        )
            .into_response(),
        Err(failure) => failure.to_http(),
    }
}

fn decode_http_body(
    headers: &HeaderMap,
    body: &[u8],
    json: bool,
) -> Result<ExportTraceServiceRequest, String> {
    let encoding = headers
        .get(header::CONTENT_ENCODING)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("identity");
    let plain = match encoding {
        "identity" | "" => body.to_vec(),
        "gzip" => {
            let mut out = Vec::new();
            flate2::read::GzDecoder::new(body)
                .read_to_end(&mut out)
                .map_err(|e| format!("bad gzip body: {e}"))?;
            out
        }
        "zstd" => zstd::decode_all(body).map_err(|e| format!("bad zstd body: {e}"))?,
        other => return Err(format!("unsupported Content-Encoding `{other}`")),
    };
    if json {
        serde_json::from_slice(&plain).map_err(|e| format!("bad OTLP/JSON body: {e}"))
    } else {
        ExportTraceServiceRequest::decode(plain.as_slice())
            .map_err(|e| format!("bad OTLP protobuf body: {e}"))
    }
}

/// A fake OTLP trace backend on a loopback port; see the module docs.
///
/// Dropping it stops the server (gracefully, in the background); [`RecordingBackend::shutdown`]
/// does the same and waits for it.
pub struct RecordingBackend {
    protocol: Protocol,
    addr: SocketAddr,
    shared: Arc<Shared>,
    stop: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<()>>,
}

impl RecordingBackend {
    /// An OTLP/gRPC backend on a free loopback port.
    pub async fn start_grpc() -> Self {
        Self::start(Protocol::Grpc, SocketAddr::from((Ipv4Addr::LOCALHOST, 0)))
            .await
            .expect("bind a loopback port for the gRPC backend")
    }

    /// An OTLP/HTTP backend on a free loopback port.
    pub async fn start_http() -> Self {
        Self::start(Protocol::Http, SocketAddr::from((Ipv4Addr::LOCALHOST, 0)))
            .await
            .expect("bind a loopback port for the HTTP backend")
    }

    /// A backend on a given address, e.g. the address of one that was shut down, to model a
    /// backend that restarts.
    pub async fn start(protocol: Protocol, addr: SocketAddr) -> std::io::Result<Self> {
        let listener = tokio::net::TcpListener::bind(addr).await?;
        let addr = listener.local_addr()?;
        let shared = Arc::new(Shared::new());
        let (stop, stopped) = oneshot::channel::<()>();
        let stopped = async move {
            // Dropping the sender also means stop.
            let _ = stopped.await;
        };
        let task = match protocol {
            Protocol::Grpc => {
                let service = TraceServiceServer::new(GrpcService(shared.clone()))
                    .accept_compressed(CompressionEncoding::Gzip)
                    .accept_compressed(CompressionEncoding::Zstd)
                    .max_decoding_message_size(64 << 20);
                let incoming = tonic::transport::server::TcpIncoming::from(listener);
                tokio::spawn(async move {
                    tonic::transport::Server::builder()
                        .add_service(service)
                        .serve_with_incoming_shutdown(incoming, stopped)
                        .await
                        .expect("gRPC recording backend failed");
                })
            }
            Protocol::Http => {
                let router = Router::new()
                    .route("/v1/traces", post(http_export))
                    .layer(DefaultBodyLimit::max(64 << 20))
                    .with_state(shared.clone());
                tokio::spawn(async move {
                    axum::serve(listener, router)
                        .with_graceful_shutdown(stopped)
                        .await
                        .expect("HTTP recording backend failed");
                })
            }
        };
        Ok(RecordingBackend {
            protocol,
            addr,
            shared,
            stop: Some(stop),
            task: Some(task),
        })
    }

    /// The transport this backend serves.
    pub fn protocol(&self) -> Protocol {
        self.protocol
    }

    /// The bound address (`127.0.0.1:port`).
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `http://127.0.0.1:port`: the URL a client connects to (for OTLP/HTTP, without the
    /// `/v1/traces` path, as the Collector's `otlphttp` exporter `endpoint` takes it).
    pub fn endpoint(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Rejects the next `n` requests with `failure` (after any failures already queued), then
    /// answers as before.
    pub fn fail_next(&self, n: usize, failure: Failure) {
        let mut plan = self.shared.plan.lock().unwrap();
        plan.next.extend(std::iter::repeat_n(failure, n));
    }

    /// Rejects every request with `failure` until [`Self::stop_failing`].
    pub fn fail_all(&self, failure: Failure) {
        self.shared.plan.lock().unwrap().always = Some(failure);
    }

    /// Clears [`Self::fail_next`] and [`Self::fail_all`]: accept everything from now on.
    pub fn stop_failing(&self) {
        *self.shared.plan.lock().unwrap() = Plan::default();
    }

    /// Keeps new requests waiting, unanswered, until [`Self::release_responses`]. Held requests
    /// are recorded (and their failure plan applied) when released.
    pub fn hold_responses(&self) {
        self.shared.holding.send_replace(true);
    }

    /// Answers the held requests and stops holding.
    pub fn release_responses(&self) {
        self.shared.holding.send_replace(false);
    }

    /// The number of requests being held right now.
    pub fn held_count(&self) -> usize {
        self.shared.record.borrow().held
    }

    /// Every request received so far (accepted or rejected), in arrival order.
    pub fn requests(&self) -> Vec<ReceivedRequest> {
        self.shared.record.borrow().requests.clone()
    }

    /// The number of requests answered so far, accepted or rejected (retries count).
    pub fn request_count(&self) -> usize {
        self.shared.record.borrow().requests.len()
    }

    /// The requests that were answered OK.
    pub fn accepted_requests(&self) -> Vec<ReceivedRequest> {
        self.shared
            .record
            .borrow()
            .requests
            .iter()
            .filter(|r| r.accepted())
            .cloned()
            .collect()
    }

    /// One entry per request (in arrival order): the value of header `name`, if present.
    /// Use it to check e.g. that every export carried `X-Scope-OrgID`.
    pub fn header_values(&self, name: &str) -> Vec<Option<String>> {
        self.shared
            .record
            .borrow()
            .requests
            .iter()
            .map(|r| r.header(name).map(str::to_string))
            .collect()
    }

    /// Every span of the accepted requests, in arrival order.
    pub fn spans(&self) -> Vec<ReceivedSpan> {
        self.shared
            .record
            .borrow()
            .requests
            .iter()
            .filter(|r| r.accepted())
            .flat_map(ReceivedRequest::spans)
            .collect()
    }

    /// The number of spans in accepted requests.
    pub fn span_count(&self) -> usize {
        accepted_span_count(&self.shared.record.borrow().requests)
    }

    /// Accepted spans grouped by lower-case hex trace ID, each group in arrival order.
    pub fn spans_by_trace(&self) -> BTreeMap<String, Vec<ReceivedSpan>> {
        let mut traces: BTreeMap<String, Vec<ReceivedSpan>> = BTreeMap::new();
        for span in self.spans() {
            traces.entry(span.trace_id()).or_default().push(span);
        }
        traces
    }

    /// HTTP bodies that could not be decoded (each answered 400 and not recorded as a request).
    pub fn undecodable_bodies(&self) -> Vec<String> {
        self.shared.record.borrow().undecodable.clone()
    }

    /// A one-line account of what was received, for failure messages.
    pub fn summary(&self) -> String {
        summarize(&self.shared.record.borrow())
    }

    /// Waits until at least `n` spans have arrived in accepted requests.
    pub async fn wait_for_spans(&self, n: usize, timeout: Duration) -> Result<(), WaitTimeout> {
        self.wait_until(&format!("{n} spans"), timeout, |requests| {
            accepted_span_count(requests) >= n
        })
        .await
    }

    /// Waits until at least `n` requests have been answered (accepted or rejected).
    pub async fn wait_for_requests(&self, n: usize, timeout: Duration) -> Result<(), WaitTimeout> {
        self.wait_until(&format!("{n} requests"), timeout, |requests| {
            requests.len() >= n
        })
        .await
    }

    /// Waits until at least `n` requests are being held by [`Self::hold_responses`].
    pub async fn wait_for_held(&self, n: usize, timeout: Duration) -> Result<(), WaitTimeout> {
        let mut record = self.shared.record.subscribe();
        let reached = tokio::time::timeout(timeout, record.wait_for(|r| r.held >= n))
            .await
            .is_ok_and(|r| r.is_ok());
        if reached {
            Ok(())
        } else {
            Err(self.timed_out(format!("{n} held requests"), timeout))
        }
    }

    /// Waits until `condition` holds for the requests received so far (checked now and after
    /// each new request). `what` names the condition in the timeout message.
    pub async fn wait_until(
        &self,
        what: &str,
        timeout: Duration,
        mut condition: impl FnMut(&[ReceivedRequest]) -> bool,
    ) -> Result<(), WaitTimeout> {
        let mut record = self.shared.record.subscribe();
        let reached = tokio::time::timeout(timeout, record.wait_for(|r| condition(&r.requests)))
            .await
            .is_ok_and(|r| r.is_ok());
        if reached {
            Ok(())
        } else {
            Err(self.timed_out(what.to_string(), timeout))
        }
    }

    fn timed_out(&self, waited_for: String, timeout: Duration) -> WaitTimeout {
        WaitTimeout {
            waited_for,
            timeout,
            summary: self.summary(),
        }
    }

    /// Stops the server and waits (a few seconds at most) for open connections to close.
    /// Held requests are released first.
    pub async fn shutdown(mut self) {
        self.release_responses();
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(mut task) = self.task.take() {
            if tokio::time::timeout(SHUTDOWN_GRACE, &mut task)
                .await
                .is_err()
            {
                task.abort();
            }
        }
    }
}

impl Drop for RecordingBackend {
    fn drop(&mut self) {
        // Let the server shut down gracefully on its own: it closes the listener and the open
        // connections, so a client sees the backend go away (aborting the accept loop alone
        // would leave established connections being served).
        self.release_responses();
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}

fn accepted_span_count(requests: &[ReceivedRequest]) -> usize {
    requests
        .iter()
        .filter(|r| r.accepted())
        .map(ReceivedRequest::span_count)
        .sum()
}

fn summarize(record: &Record) -> String {
    let accepted: Vec<&ReceivedRequest> = record.requests.iter().filter(|r| r.accepted()).collect();
    let spans: usize = accepted.iter().map(|r| r.span_count()).sum();
    let traces: std::collections::BTreeSet<&[u8]> = accepted
        .iter()
        .flat_map(|r| &r.request.resource_spans)
        .flat_map(|rs| &rs.scope_spans)
        .flat_map(|ss| &ss.spans)
        .map(|s| s.trace_id.as_slice())
        .collect();
    let mut out = format!(
        "{} requests ({} accepted, {} rejected), {} spans in {} traces",
        record.requests.len(),
        accepted.len(),
        record.requests.len() - accepted.len(),
        spans,
        traces.len()
    );
    if record.held > 0 {
        out += &format!(", {} held", record.held);
    }
    if !record.undecodable.is_empty() {
        out += &format!(", undecodable bodies: {:?}", record.undecodable);
    }
    out
}
