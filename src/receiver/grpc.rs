//! OTLP/gRPC: a hand-written tonic service for `TraceService/Export` whose codec hands the
//! request body over as bytes, so the wire walker sees the protobuf as it arrived.
//!
//! tonic reports an oversized message as OutOfRange and a body that fails to decompress as
//! Internal; OTLP clients (and the Collector) expect ResourceExhausted and InvalidArgument, so a
//! thin wrapper rewrites those two statuses on the way out.

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::{Buf, BufMut, Bytes};
use tokio_util::sync::CancellationToken;
use tonic::codec::{Codec, CompressionEncoding, DecodeBuf, Decoder, EncodeBuf, Encoder};
use tonic::server::{NamedService, UnaryService};
use tonic::{Request, Response, Status};

use super::{Intake, RefuseError};

/// The OTLP trace export method.
pub const EXPORT_PATH: &str = "/opentelemetry.proto.collector.trace.v1.TraceService/Export";

/// A codec that passes message bytes through untouched, both ways.
#[derive(Debug, Clone, Copy, Default)]
pub struct RawBytesCodec;

impl Codec for RawBytesCodec {
    type Encode = Bytes;
    type Decode = Bytes;
    type Encoder = RawBytesCodec;
    type Decoder = RawBytesCodec;

    fn encoder(&mut self) -> Self::Encoder {
        RawBytesCodec
    }

    fn decoder(&mut self) -> Self::Decoder {
        RawBytesCodec
    }
}

impl Encoder for RawBytesCodec {
    type Item = Bytes;
    type Error = Status;

    fn encode(&mut self, item: Bytes, dst: &mut EncodeBuf<'_>) -> Result<(), Status> {
        dst.put(item);
        Ok(())
    }
}

impl Decoder for RawBytesCodec {
    type Item = Bytes;
    type Error = Status;

    fn decode(&mut self, src: &mut DecodeBuf<'_>) -> Result<Option<Bytes>, Status> {
        Ok(Some(src.copy_to_bytes(src.remaining())))
    }
}

type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send + 'static>>;

/// The `TraceService` server.
#[derive(Clone)]
pub struct TraceServiceServer {
    intake: Arc<Intake>,
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
            let forwarded = request
                .metadata()
                .contains_key(crate::balancer::FORWARDED_HEADER);
            let body = request.into_inner();
            match intake.accept(&body, "grpc", forwarded).await {
                // An empty ExportTraceServiceResponse encodes to zero bytes.
                Ok(_) => Ok(Response::new(Bytes::new())),
                Err(e @ RefuseError::Malformed(_)) => Err(Status::invalid_argument(e.to_string())),
                Err(
                    e @ (RefuseError::ShuttingDown | RefuseError::Full | RefuseError::NoBackends),
                ) => Err(Status::unavailable(e.to_string())),
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
        let transport = "grpc";
        let reason = if new_code == "8" {
            "too_large"
        } else {
            "bad_compression"
        };
        metrics::counter!("tailgate_receiver_rejected_requests_total", "transport" => transport, "reason" => reason).increment(1);
        headers.insert("grpc-status", http::HeaderValue::from_static(new_code));
    }
    response
}

/// Serves OTLP/gRPC on `listener` until `shutdown`; in-flight requests finish first.
pub async fn serve_grpc(
    listener: tokio::net::TcpListener,
    intake: Arc<Intake>,
    max_message_bytes: usize,
    shutdown: CancellationToken,
) -> Result<(), tonic::transport::Error> {
    let service = TraceServiceServer {
        intake,
        max_message_bytes,
    };
    let incoming = tokio_stream_listener(listener);
    tonic::transport::Server::builder()
        // OTLP requests are large (hundreds of KB): small HTTP/2 windows made each request wait
        // for several window updates.
        .initial_stream_window_size(Some(4 * 1024 * 1024))
        .initial_connection_window_size(Some(16 * 1024 * 1024))
        .add_service(service)
        .serve_with_incoming_shutdown(incoming, async move { shutdown.cancelled().await })
        .await
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
