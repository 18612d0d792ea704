//! OTLP/gRPC: a hand-written tonic service for `TraceService/Export` whose codec
//! ([`RawBytesCodec`]) hands the request body over as bytes, so the wire walker sees the protobuf as it arrived.
//!
//! tonic reports an oversized message as OutOfRange and a body that fails to decompress as
//! Internal; OTLP clients (and the Collector) expect ResourceExhausted and InvalidArgument, so a
//! thin wrapper rewrites those two statuses on the way out.

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use tokio_util::sync::CancellationToken;
use tonic::codec::CompressionEncoding;
use tonic::server::{NamedService, UnaryService};
use tonic::{Request, Response, Status};

use super::{Door, Gate, GrpcServerSettings, Intake, RefuseError, Transport};
use crate::otlp::consumer::hops_from_header;
use crate::otlp::{
    RawBytesCodec, Refusal, TraceConsumer, EXPORT_PATH, FORWARDED_HEADER, LEAVING_MESSAGE,
};
use crate::telemetry::catalog;

type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send + 'static>>;

/// The `TraceService` server.
#[derive(Clone)]
pub struct TraceServiceServer {
    intake: Arc<Intake>,
    gate: Option<Arc<Gate>>,
    max_message_bytes: usize,
}

impl NamedService for TraceServiceServer {
    const NAME: &'static str = "opentelemetry.proto.collector.trace.v1.TraceService";
}

struct ExportHandler(Arc<Intake>);

impl UnaryService<Bytes> for ExportHandler {
    type Response = Bytes;
    type Future = BoxFuture<Result<Response<Bytes>, Status>>;

    fn call(&mut self, request: Request<Bytes>) -> Self::Future {
        let intake = Arc::clone(&self.0);
        Box::pin(async move {
            let hops = hops_from_header(
                request
                    .metadata()
                    .get(FORWARDED_HEADER)
                    .map(|v| v.as_bytes()),
            );
            let body = request.into_inner();
            let result = match intake.lease(body.len()) {
                Ok(_lease) => intake.accept(&body, hops).await,
                Err(busy) => Err(busy),
            };
            match result {
                // An empty ExportTraceServiceResponse encodes to zero bytes.
                Ok(_) => Ok(Response::new(Bytes::new())),
                Err(e @ RefuseError::Malformed(_)) => Err(Status::invalid_argument(e.to_string())),
                Err(RefuseError::Refused(Refusal::Leaving)) => {
                    Err(Status::failed_precondition(LEAVING_MESSAGE))
                }
                Err(e @ (RefuseError::Refused(_) | RefuseError::Busy)) => {
                    Err(Status::unavailable(e.to_string()))
                }
            }
        })
    }
}

impl tower_service::Service<http::Request<tonic::body::Body>> for TraceServiceServer {
    type Response = http::Response<tonic::body::Body>;
    type Error = Infallible;
    type Future = BoxFuture<Result<Self::Response, Infallible>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: http::Request<tonic::body::Body>) -> Self::Future {
        let this = self.clone();
        Box::pin(async move {
            if request.uri().path() != EXPORT_PATH {
                return Ok(
                    Status::unimplemented(format!("no method {}", request.uri().path()))
                        .into_http(),
                );
            }
            // Credentials before anything else: an unauthenticated body is never read.
            if let Some(gate) = &this.gate {
                if let Err(e) = gate.check(request.headers()) {
                    return Ok(Status::unauthenticated(e.to_string()).into_http());
                }
            }
            let mut grpc = tonic::server::Grpc::new(RawBytesCodec)
                .accept_compressed(CompressionEncoding::Gzip)
                .accept_compressed(CompressionEncoding::Zstd)
                .max_decoding_message_size(this.max_message_bytes);
            let response = grpc.unary(ExportHandler(this.intake), request).await;
            Ok(rewrite_status(response))
        })
    }
}

/// Maps tonic's statuses for oversized and undecompressable messages to the ones OTLP expects.
fn rewrite_status(
    mut response: http::Response<tonic::body::Body>,
) -> http::Response<tonic::body::Body> {
    let headers = response.headers_mut();
    let code = headers
        .get("grpc-status")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let message = headers
        .get("grpc-message")
        .and_then(|v| v.to_str().ok())
        .map(|m| m.replace("%20", " "))
        .unwrap_or_default();
    let new_code = match code.as_deref() {
        Some("11") if message.contains("too large") => Some("8"),
        Some("13") if message.contains("decompress") => Some("3"),
        _ => None,
    };
    if let Some(new_code) = new_code {
        let reason = if new_code == "8" {
            "too_large"
        } else {
            "bad_compression"
        };
        catalog::RECEIVER_REJECTED_REQUESTS
            .counter(&["grpc", reason])
            .increment(1);
        headers.insert("grpc-status", http::HeaderValue::from_static(new_code));
    }
    response
}

/// Serves OTLP/gRPC on `listener` until `shutdown`; in-flight requests finish first.
pub async fn serve_grpc(
    listener: tokio::net::TcpListener,
    consumer: Arc<dyn TraceConsumer>,
    receiver: &str,
    settings: &GrpcServerSettings,
    door: Arc<Door>,
    shutdown: CancellationToken,
) -> Result<(), tonic::transport::Error> {
    let service = TraceServiceServer {
        intake: Arc::new(Intake::new(consumer, receiver, Transport::Grpc, door)),
        gate: Gate::new(settings.auth.as_ref(), receiver, Transport::Grpc).map(Arc::new),
        max_message_bytes: settings.max_message_bytes,
    };
    let server = tonic::transport::Server::builder()
        // OTLP requests are large (hundreds of KB): small HTTP/2 windows made each request wait
        // for several window updates.
        .initial_stream_window_size(Some(4 * 1024 * 1024))
        .initial_connection_window_size(Some(16 * 1024 * 1024))
        // And in few frames: h2's default of 16 KiB made a 1 MB request 64 frames, each a pass
        // through h2's and tonic's per-frame work (about a fifth of the CPU on 2,000-byte spans,
        // BENCHMARKS.md). A client sends frames up to this size if its HTTP/2 stack follows the
        // peer's setting (h2, so tonic: tailgate's front tier); grpc-go sends 16 KiB frames
        // whatever it is. The cost: a connection's read buffer holds one frame.
        .max_frame_size(Some(256 * 1024))
        .add_service(service);
    let stop = shutdown.clone();
    let stopped = async move { stop.cancelled().await };
    match &settings.tls {
        None => {
            let incoming = tokio_stream_listener(listener);
            server.serve_with_incoming_shutdown(incoming, stopped).await
        }
        Some(tls) => {
            use tokio_stream::StreamExt;
            let connections =
                match super::tls::accept_tls(listener, tls, &[b"h2"], "grpc", shutdown) {
                    Ok(c) => c,
                    Err(e) => {
                        // Checked at config time; a file that went away since is reported here.
                        tracing::error!("OTLP/gRPC receiver {receiver}: TLS: {e}");
                        return Ok(());
                    }
                };
            let incoming = tokio_stream::wrappers::ReceiverStream::new(connections)
                .map(Ok::<_, std::io::Error>);
            server.serve_with_incoming_shutdown(incoming, stopped).await
        }
    }
}

/// Accepted connections, with Nagle's algorithm off: tonic's own `tcp_nodelay` setting does not
/// apply to connections it is handed, and small HTTP/2 frames (window updates, responses) would
/// otherwise wait for the peer's delayed ACK.
fn tokio_stream_listener(
    listener: tokio::net::TcpListener,
) -> impl tokio_stream::Stream<Item = std::io::Result<tokio::net::TcpStream>> {
    use tokio_stream::StreamExt;
    tokio_stream::wrappers::TcpListenerStream::new(listener).map(|stream| {
        let stream = stream?;
        stream.set_nodelay(true)?;
        Ok(stream)
    })
}
