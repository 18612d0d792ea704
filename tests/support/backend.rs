//! [`RecordingBackend`]: a fake trace backend (Tempo, Jaeger) that records what the gateway sends.
//!
//! It serves the OTLP trace service over gRPC (`TraceService/Export`, tonic) or over HTTP
//! (`POST /v1/traces`, axum; protobuf or JSON bodies, `gzip`/`zstd` content encodings) on a
//! loopback port. Both protocols share one [`Shared`] state, so they record identically.
//!
//! It is as strict as a real one (the Collector's OTLP receiver, Tempo, Jaeger):
//! - a receive limit of [`DEFAULT_MAX_RECEIVE_BYTES`] (4 MiB, gRPC's and their default) on the
//!   decompressed message; a test that needs more raises it explicitly with
//!   [`BackendBuilder::max_receive_bytes`];
//! - strict decoding: every nested message well-formed, every `string` valid UTF-8 (prost checks
//!   both), every span's trace ID 16 bytes and span ID 8 bytes, neither all zero.
//!
//! The gRPC service takes the message body as raw bytes (its own pass-through codec), so the
//! backend, not tonic, decodes it: a request it refuses (too large, malformed) is recorded as a
//! [`RefusedRequest`] with its reason and bytes instead of vanishing inside the server. A backend
//! that refused anything panics when it is dropped, unless the test said it expects refusals
//! ([`BackendBuilder::allow_refusals`]): a refusal is never silent.
//!
//! Every accepted-for-answering request is appended, with its headers, its raw (decompressed)
//! bytes, its decoded form and the answer it got, to a log kept in a `tokio::sync::watch` channel.
//! "Byte for byte" tests compare [`ReceivedRequest::body`], the bytes on the wire. Tests wait on that channel ([`RecordingBackend::wait_for_spans`],
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
use std::convert::Infallible;
use std::fmt;
use std::future::Future;
use std::io::Read;
use std::net::{Ipv4Addr, SocketAddr};
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use axum::extract::{DefaultBodyLimit, State};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::Router;
use bytes::{Buf, BufMut, Bytes};
use http::{header, HeaderMap, HeaderValue, StatusCode};
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use opentelemetry_proto::tonic::common::v1::InstrumentationScope;
use opentelemetry_proto::tonic::resource::v1::Resource;
use opentelemetry_proto::tonic::trace::v1::Span;
use prost::Message;
use tokio::sync::{oneshot, watch};
use tokio::task::JoinHandle;
use tonic::codec::{Codec, CompressionEncoding, DecodeBuf, Decoder, EncodeBuf, Encoder};
use tonic::server::{NamedService, UnaryService};
use tonic::Code;

use super::otlp::string_attribute;

/// How long [`RecordingBackend::shutdown`] lets open connections finish before giving up on them.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);

/// The receive limit of gRPC servers, the Collector's OTLP receiver, Tempo and Jaeger: 4 MiB.
pub const DEFAULT_MAX_RECEIVE_BYTES: usize = 4 << 20;

/// The OTLP trace export method.
const EXPORT_PATH: &str = "/opentelemetry.proto.collector.trace.v1.TraceService/Export";

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
    /// The request's bytes as they arrived, after decompression: the protobuf message (or, for an
    /// OTLP/JSON post, the JSON text). "Byte for byte" checks compare these.
    pub body: Bytes,
    /// Whether the body is OTLP/JSON rather than protobuf.
    pub json: bool,
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

/// A request the backend refused before answering it by plan: over the receive limit, or one it
/// could not decode. A real backend would refuse it too, and with it every span it carried.
#[derive(Debug, Clone)]
pub struct RefusedRequest {
    pub protocol: Protocol,
    pub headers: HeaderMap,
    /// The body as it arrived (decompressed when that worked).
    pub body: Bytes,
    /// Why, e.g. "5000000 bytes is over the receive limit of 4194304".
    pub reason: String,
    /// The gRPC code it was answered with (over HTTP: the matching status, 413 or 400).
    pub code: Code,
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
    /// Requests refused as too large or undecodable (not in `requests`).
    refused: Vec<RefusedRequest>,
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
    /// The largest (decompressed) message accepted.
    max_receive_bytes: usize,
}

/// Why a request was not answered by plan.
enum Answer {
    /// Refused as too large or malformed (recorded in `refused`).
    Refused(Code, String),
    /// Rejected by the failure plan (recorded in `requests`).
    Failed(Failure),
}

impl Shared {
    fn new(max_receive_bytes: usize) -> Self {
        Shared {
            record: watch::Sender::new(Record::default()),
            plan: Mutex::new(Plan::default()),
            holding: watch::Sender::new(false),
            max_receive_bytes,
        }
    }

    fn refuse(
        &self,
        protocol: Protocol,
        headers: HeaderMap,
        body: Bytes,
        code: Code,
        reason: String,
    ) -> Answer {
        self.record.send_modify(|r| {
            r.refused.push(RefusedRequest {
                protocol,
                headers,
                body,
                reason: reason.clone(),
                code,
            })
        });
        Answer::Refused(code, reason)
    }

    /// Checks the (decompressed) body against the limit, decodes it strictly, then answers it.
    async fn receive(
        &self,
        protocol: Protocol,
        headers: HeaderMap,
        body: Bytes,
        json: bool,
    ) -> Result<(), Answer> {
        if body.len() > self.max_receive_bytes {
            let reason = format!(
                "{} bytes is over the receive limit of {}",
                body.len(),
                self.max_receive_bytes
            );
            return Err(self.refuse(protocol, headers, body, Code::ResourceExhausted, reason));
        }
        let request = match decode_strictly(&body, json) {
            Ok(request) => request,
            Err(reason) => {
                return Err(self.refuse(protocol, headers, body, Code::InvalidArgument, reason))
            }
        };
        self.answer(protocol, headers, body, json, request)
            .await
            .map_err(Answer::Failed)
    }

    /// Holds while asked to, then records the request and decides the answer.
    async fn answer(
        &self,
        protocol: Protocol,
        headers: HeaderMap,
        body: Bytes,
        json: bool,
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
                body,
                json,
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

type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send + 'static>>;

/// A gRPC codec that hands the message over as raw bytes, so the backend decodes it itself and
/// can record what it could not decode (tonic's prost codec would refuse it out of sight).
#[derive(Debug, Clone, Copy, Default)]
struct PassThrough;

impl Codec for PassThrough {
    type Encode = Bytes;
    type Decode = Bytes;
    type Encoder = PassThrough;
    type Decoder = PassThrough;

    fn encoder(&mut self) -> Self::Encoder {
        PassThrough
    }

    fn decoder(&mut self) -> Self::Decoder {
        PassThrough
    }
}

impl Encoder for PassThrough {
    type Item = Bytes;
    type Error = tonic::Status;

    fn encode(&mut self, item: Bytes, dst: &mut EncodeBuf<'_>) -> Result<(), tonic::Status> {
        dst.put(item);
        Ok(())
    }
}

impl Decoder for PassThrough {
    type Item = Bytes;
    type Error = tonic::Status;

    fn decode(&mut self, src: &mut DecodeBuf<'_>) -> Result<Option<Bytes>, tonic::Status> {
        Ok(Some(src.copy_to_bytes(src.remaining())))
    }
}

/// The gRPC face of [`Shared`]: `TraceService/Export` on raw bytes.
#[derive(Clone)]
struct GrpcServer(Arc<Shared>);

impl NamedService for GrpcServer {
    const NAME: &'static str = "opentelemetry.proto.collector.trace.v1.TraceService";
}

struct ExportHandler(Arc<Shared>);

impl UnaryService<Bytes> for ExportHandler {
    type Response = Bytes;
    type Future = BoxFuture<Result<tonic::Response<Bytes>, tonic::Status>>;

    fn call(&mut self, request: tonic::Request<Bytes>) -> Self::Future {
        let shared = Arc::clone(&self.0);
        Box::pin(async move {
            let (metadata, _extensions, body) = request.into_parts();
            match shared
                .receive(Protocol::Grpc, metadata.into_headers(), body, false)
                .await
            {
                Ok(()) => Ok(tonic::Response::new(Bytes::from(
                    ExportTraceServiceResponse::default().encode_to_vec(),
                ))),
                Err(Answer::Refused(code, reason)) => Err(tonic::Status::new(code, reason)),
                Err(Answer::Failed(failure)) => Err(failure.to_grpc()),
            }
        })
    }
}

impl tower_service::Service<http::Request<tonic::body::Body>> for GrpcServer {
    type Response = http::Response<tonic::body::Body>;
    type Error = Infallible;
    type Future = BoxFuture<Result<Self::Response, Infallible>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: http::Request<tonic::body::Body>) -> Self::Future {
        let shared = Arc::clone(&self.0);
        Box::pin(async move {
            if request.uri().path() != EXPORT_PATH {
                let status =
                    tonic::Status::unimplemented(format!("no method {}", request.uri().path()));
                return Ok(status.into_http());
            }
            // No limit in tonic: the handler applies the backend's own and records what it
            // refuses.
            let mut grpc = tonic::server::Grpc::new(PassThrough)
                .accept_compressed(CompressionEncoding::Gzip)
                .accept_compressed(CompressionEncoding::Zstd)
                .max_decoding_message_size(usize::MAX);
            Ok(grpc.unary(ExportHandler(shared), request).await)
        })
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
    let plain = match decompress(&headers, &body, shared.max_receive_bytes) {
        Ok(plain) => plain,
        Err((code, reason)) => {
            let answer = shared.refuse(Protocol::Http, headers, body, code, reason);
            return refused_http(answer);
        }
    };
    match shared.receive(Protocol::Http, headers, plain, json).await {
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
        Err(Answer::Failed(failure)) => failure.to_http(),
        Err(refused) => refused_http(refused),
    }
}

fn refused_http(answer: Answer) -> Response {
    match answer {
        Answer::Refused(Code::ResourceExhausted, reason) => {
            (StatusCode::PAYLOAD_TOO_LARGE, reason).into_response()
        }
        Answer::Refused(_, reason) => (StatusCode::BAD_REQUEST, reason).into_response(),
        Answer::Failed(failure) => failure.to_http(),
    }
}

/// The body after its `Content-Encoding`, read to at most one byte past `limit` (so a
/// decompression bomb is caught without inflating it whole).
fn decompress(headers: &HeaderMap, body: &Bytes, limit: usize) -> Result<Bytes, (Code, String)> {
    let encoding = headers
        .get(header::CONTENT_ENCODING)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("identity");
    let cap = limit as u64 + 1;
    let mut out = Vec::new();
    let read = match encoding {
        "identity" | "" => return Ok(body.clone()),
        "gzip" => flate2::read::GzDecoder::new(&body[..])
            .take(cap)
            .read_to_end(&mut out)
            .map_err(|e| format!("bad gzip body: {e}")),
        "zstd" => zstd::stream::read::Decoder::new(&body[..])
            .and_then(|d| d.take(cap).read_to_end(&mut out))
            .map_err(|e| format!("bad zstd body: {e}")),
        other => Err(format!("unsupported Content-Encoding `{other}`")),
    };
    read.map_err(|reason| (Code::InvalidArgument, reason))?;
    if out.len() > limit {
        return Err((
            Code::ResourceExhausted,
            format!("decompressed body is over the receive limit of {limit}"),
        ));
    }
    Ok(Bytes::from(out))
}

/// Decodes an export request as a strict backend does: prost checks every nested message's
/// framing and every string's UTF-8; on top, each span must carry a 16-byte trace ID and an
/// 8-byte span ID, neither all zero, and a parent span ID that is empty or 8 bytes.
fn decode_strictly(body: &[u8], json: bool) -> Result<ExportTraceServiceRequest, String> {
    let request = if json {
        serde_json::from_slice(body).map_err(|e| format!("bad OTLP/JSON body: {e}"))?
    } else {
        ExportTraceServiceRequest::decode(body)
            .map_err(|e| format!("bad OTLP protobuf body: {e}"))?
    };
    for (r, rs) in request.resource_spans.iter().enumerate() {
        for (s, ss) in rs.scope_spans.iter().enumerate() {
            for (i, span) in ss.spans.iter().enumerate() {
                let at = format!("resource_spans[{r}].scope_spans[{s}].spans[{i}]");
                let valid_id =
                    |id: &[u8], len: usize| id.len() == len && id.iter().any(|&b| b != 0);
                if !valid_id(&span.trace_id, 16) {
                    return Err(format!("{at}: invalid trace_id {:?}", span.trace_id));
                }
                if !valid_id(&span.span_id, 8) {
                    return Err(format!("{at}: invalid span_id {:?}", span.span_id));
                }
                if !(span.parent_span_id.is_empty() || span.parent_span_id.len() == 8) {
                    return Err(format!(
                        "{at}: invalid parent_span_id {:?}",
                        span.parent_span_id
                    ));
                }
            }
        }
    }
    Ok(request)
}

/// How to start a [`RecordingBackend`]: protocol, address, receive limit.
#[derive(Debug, Clone)]
pub struct BackendBuilder {
    protocol: Protocol,
    addr: SocketAddr,
    max_receive_bytes: usize,
    allow_refusals: bool,
    http_path: String,
}

impl BackendBuilder {
    /// Serve OTLP/HTTP on `path` instead of `/v1/traces` (for `traces_endpoint` tests).
    pub fn http_path(mut self, path: &str) -> Self {
        self.http_path = path.to_string();
        self
    }

    /// Listen on `addr` (e.g. the address of a backend that was shut down, to model a restart)
    /// instead of a free loopback port.
    pub fn addr(mut self, addr: SocketAddr) -> Self {
        self.addr = addr;
        self
    }

    /// Accept messages up to `bytes` (decompressed) instead of [`DEFAULT_MAX_RECEIVE_BYTES`].
    pub fn max_receive_bytes(mut self, bytes: usize) -> Self {
        self.max_receive_bytes = bytes;
        self
    }

    /// The test expects the backend to refuse requests (too large, undecodable): dropping it
    /// with refusals recorded does not panic.
    pub fn allow_refusals(mut self) -> Self {
        self.allow_refusals = true;
        self
    }

    /// Binds and starts serving.
    pub async fn start(self) -> std::io::Result<RecordingBackend> {
        RecordingBackend::start_with(self).await
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
    allow_refusals: bool,
    stop: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<()>>,
}

impl RecordingBackend {
    /// A builder for a backend of `protocol` on a free loopback port with the default limit.
    pub fn builder(protocol: Protocol) -> BackendBuilder {
        BackendBuilder {
            protocol,
            addr: SocketAddr::from((Ipv4Addr::LOCALHOST, 0)),
            max_receive_bytes: DEFAULT_MAX_RECEIVE_BYTES,
            allow_refusals: false,
            http_path: "/v1/traces".to_string(),
        }
    }

    /// An OTLP/gRPC backend on a free loopback port.
    pub async fn start_grpc() -> Self {
        Self::builder(Protocol::Grpc)
            .start()
            .await
            .expect("bind a loopback port for the gRPC backend")
    }

    /// An OTLP/HTTP backend on a free loopback port.
    pub async fn start_http() -> Self {
        Self::builder(Protocol::Http)
            .start()
            .await
            .expect("bind a loopback port for the HTTP backend")
    }

    /// A backend on a given address, e.g. the address of one that was shut down, to model a
    /// backend that restarts.
    pub async fn start(protocol: Protocol, addr: SocketAddr) -> std::io::Result<Self> {
        Self::builder(protocol).addr(addr).start().await
    }

    async fn start_with(options: BackendBuilder) -> std::io::Result<Self> {
        let BackendBuilder {
            protocol,
            addr,
            max_receive_bytes,
            allow_refusals,
            http_path,
        } = options;
        let listener = tokio::net::TcpListener::bind(addr).await?;
        let addr = listener.local_addr()?;
        let shared = Arc::new(Shared::new(max_receive_bytes));
        let (stop, stopped) = oneshot::channel::<()>();
        let stopped = async move {
            // Dropping the sender also means stop.
            let _ = stopped.await;
        };
        let task = match protocol {
            Protocol::Grpc => {
                let service = GrpcServer(shared.clone());
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
                    .route(&http_path, post(http_export))
                    // The handler applies the limit (compressed and decompressed) and records
                    // what it refuses.
                    .layer(DefaultBodyLimit::disable())
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
            allow_refusals,
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

    /// Requests refused as too large or undecodable (not among [`Self::requests`]).
    pub fn refused_requests(&self) -> Vec<RefusedRequest> {
        self.shared.record.borrow().refused.clone()
    }

    /// The reasons of [`Self::refused_requests`], for assertions and messages.
    pub fn refusal_reasons(&self) -> Vec<String> {
        self.shared
            .record
            .borrow()
            .refused
            .iter()
            .map(|r| r.reason.clone())
            .collect()
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
        let refused = self.refusal_reasons();
        if !self.allow_refusals && !refused.is_empty() && !std::thread::panicking() {
            panic!(
                "the recording backend refused {} request(s) a real backend would refuse too: \
                 {refused:?} (a test that expects this starts it with allow_refusals())",
                refused.len()
            );
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
    if !record.refused.is_empty() {
        let reasons: Vec<&str> = record.refused.iter().map(|r| r.reason.as_str()).collect();
        out += &format!(", {} refused: {reasons:?}", record.refused.len());
    }
    out
}
