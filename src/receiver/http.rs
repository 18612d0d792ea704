//! OTLP/HTTP: `POST /v1/traces` with a protobuf or JSON body, optionally gzip- or
//! zstd-compressed. JSON is converted to protobuf once here; everything after sees bytes.
//!
//! Bodies are read up to the receiver's limit, decompressed up to the same limit (gzip with every
//! member of a multi-member stream, zstd, deflate), and JSON is converted by the streaming
//! converter in `otlp::json`; both run on a blocking thread for big bodies.
//!
//! Status codes follow the OTLP/HTTP spec: 400 for a malformed body (with a `google.rpc.Status`
//! in the request's encoding), 413 for an oversized one, 415 for an unknown content type, 503
//! while shutting down.

use std::io::Read;
use std::sync::Arc;

use axum::body::{Body, Bytes};
use axum::extract::{DefaultBodyLimit, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::Router;
use prost::Message;
use tokio_util::sync::CancellationToken;

use super::{Door, Gate, HttpServerSettings, Intake, RefuseError, Transport};
use crate::otlp::consumer::hops_from_header;
use crate::otlp::json::json_to_protobuf;
use crate::otlp::proto::google_rpc;
use crate::otlp::{TraceConsumer, FORWARDED_HEADER};
use crate::telemetry::catalog;

#[derive(Clone)]
struct HttpState {
    intake: Arc<Intake>,
    gate: Option<Arc<Gate>>,
    body_limit: usize,
}

#[derive(Clone, Copy, PartialEq)]
enum Encoding {
    Protobuf,
    Json,
}

/// Serves OTLP/HTTP on `listener` until `shutdown`.
pub async fn serve_http(
    listener: tokio::net::TcpListener,
    consumer: Arc<dyn TraceConsumer>,
    receiver: &str,
    settings: &HttpServerSettings,
    door: Arc<Door>,
    shutdown: CancellationToken,
) -> std::io::Result<()> {
    let state = HttpState {
        intake: Arc::new(Intake::new(consumer, receiver, Transport::Http, door)),
        gate: Gate::new(settings.auth.as_ref(), receiver, Transport::Http).map(Arc::new),
        body_limit: settings.body_limit,
    };
    let router = Router::new()
        .route(&settings.traces_path, post(export))
        .layer(DefaultBodyLimit::disable())
        .with_state(state);
    let Some(tls) = &settings.tls else {
        return crate::telemetry::serve(listener, router, shutdown).await;
    };
    let local = listener.local_addr()?;
    let connections = super::tls::accept_tls(
        listener,
        tls,
        &[b"h2", b"http/1.1"],
        "http",
        shutdown.clone(),
    )
    .map_err(std::io::Error::other)?;
    let listener = super::tls::TlsListener { connections, local };
    axum::serve(listener, router)
        .with_graceful_shutdown(async move { shutdown.cancelled().await })
        .await
}

async fn export(State(state): State<HttpState>, headers: HeaderMap, body: Body) -> Response {
    // Credentials before anything else: an unauthenticated body is never read.
    if let Some(gate) = &state.gate {
        if let Err(e) = gate.check(&headers) {
            let encoding = body_encoding(&headers).unwrap_or(Encoding::Json);
            return status_response(StatusCode::UNAUTHORIZED, encoding, &e.to_string());
        }
    }
    let encoding = match body_encoding(&headers) {
        Ok(encoding) => encoding,
        Err(rejection) => return rejection.respond(Encoding::Json),
    };
    // Bytes in flight are taken before the body is read where its length is declared, so a
    // burst of large bodies is refused before it is buffered.
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<usize>().ok())
        .unwrap_or(0)
        .min(state.body_limit);
    let mut lease = match state.intake.lease(declared) {
        Ok(lease) => lease,
        Err(e) => return retry_later(encoding, &e.to_string()),
    };
    let body = match read_body(&state, &headers, encoding, body, declared, &mut lease).await {
        Ok(body) => body,
        Err(rejection) => return rejection.respond(encoding),
    };
    let hops = hops_from_header(headers.get(FORWARDED_HEADER).map(|v| v.as_bytes()));
    let result = state.intake.accept(&body, hops).await;
    drop(lease);
    match result {
        Ok(_) => {
            let (content_type, payload) = match encoding {
                // An empty ExportTraceServiceResponse.
                Encoding::Protobuf => ("application/x-protobuf", Bytes::new()),
                Encoding::Json => ("application/json", Bytes::from_static(b"{}")),
            };
            ([(header::CONTENT_TYPE, content_type)], payload).into_response()
        }
        Err(e @ RefuseError::Malformed(_)) => {
            status_response(StatusCode::BAD_REQUEST, encoding, &e.to_string())
        }
        Err(e @ (RefuseError::Refused(_) | RefuseError::Busy)) => {
            retry_later(encoding, &e.to_string())
        }
    }
}

/// 503 with `Retry-After`, which OTLP/HTTP clients retry.
fn retry_later(encoding: Encoding, message: &str) -> Response {
    let mut response = status_response(StatusCode::SERVICE_UNAVAILABLE, encoding, message);
    response.headers_mut().insert(
        header::RETRY_AFTER,
        axum::http::HeaderValue::from_static("1"),
    );
    response
}

/// A request refused before it reached the intake: its status, the counter's reason label and
/// the message for the client.
struct Rejection {
    status: StatusCode,
    reason: &'static str,
    message: String,
}

impl Rejection {
    fn new(status: StatusCode, reason: &'static str, message: String) -> Self {
        Self {
            status,
            reason,
            message,
        }
    }

    /// The in-flight budget ran out while the body was read (already counted).
    fn busy(message: String) -> Self {
        Self::new(StatusCode::SERVICE_UNAVAILABLE, "", message)
    }

    fn respond(self, encoding: Encoding) -> Response {
        if self.reason.is_empty() {
            return retry_later(encoding, &self.message);
        }
        reject(self.status, encoding, &self.message, self.reason)
    }
}

/// The body's encoding, from `Content-Type`.
fn body_encoding(headers: &HeaderMap) -> Result<Encoding, Rejection> {
    let content_type = header_text(headers, header::CONTENT_TYPE);
    let media_type = content_type.split(';').next().unwrap_or("").trim();
    match media_type {
        "application/x-protobuf" | "application/protobuf" => Ok(Encoding::Protobuf),
        "application/json" => Ok(Encoding::Json),
        other => Err(Rejection::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported_media_type",
            format!("unsupported content type `{other}`; use application/x-protobuf or application/json"),
        )),
    }
}

/// A header's value, lower case and trimmed; empty when absent or not text.
fn header_text(headers: &HeaderMap, name: header::HeaderName) -> String {
    headers
        .get(name)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase()
}

/// Reads, decompresses and (for JSON) converts the body to protobuf, within the body limit.
async fn read_body(
    state: &HttpState,
    headers: &HeaderMap,
    encoding: Encoding,
    body: Body,
    declared: usize,
    lease: &mut super::Lease,
) -> Result<Bytes, Rejection> {
    let limit = state.body_limit;
    // Read at most the limit (compressed); a larger body is refused before it is buffered.
    let raw = axum::body::to_bytes(body, limit).await.map_err(|_| {
        Rejection::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "too_large",
            format!("request body exceeds {limit} bytes"),
        )
    })?;
    let raw_len = raw.len();
    state
        .intake
        .grow(lease, raw_len.saturating_sub(declared))
        .map_err(|e| Rejection::busy(e.to_string()))?;
    let content_encoding = header_text(headers, header::CONTENT_ENCODING);
    let compressed = !matches!(content_encoding.as_str(), "" | "identity" | "none");
    let work = move || {
        let body = decompress(&content_encoding, raw, limit).map_err(|e| match e {
            Decompress::TooLarge => Rejection::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                "too_large",
                format!("decompressed body exceeds {limit} bytes"),
            ),
            Decompress::Unsupported => Rejection::new(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "unsupported_encoding",
                format!(
                    "unsupported content encoding `{content_encoding}`; use gzip, zstd, deflate or none"
                ),
            ),
            Decompress::Corrupt(e) => Rejection::new(
                StatusCode::BAD_REQUEST,
                "bad_compression",
                format!("body is not valid {content_encoding}: {e}"),
            ),
        })?;
        match encoding {
            Encoding::Protobuf => Ok(body),
            Encoding::Json => json_to_protobuf(&body).map_err(|e| {
                Rejection::new(
                    StatusCode::BAD_REQUEST,
                    "malformed_json",
                    format!("malformed OTLP JSON: {e}"),
                )
            }),
        }
    };
    // Decompressing or converting a big body takes milliseconds of CPU: off the async workers,
    // so one large request does not stall every other connection they serve.
    let big = if compressed {
        raw_len > BLOCKING_COMPRESSED_BYTES
    } else {
        encoding == Encoding::Json && raw_len > BLOCKING_JSON_BYTES
    };
    let body = if big {
        tokio::task::spawn_blocking(work)
            .await
            .unwrap_or_else(|e| {
                Err(Rejection::new(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "internal",
                    format!("decoding the body failed: {e}"),
                ))
            })?
    } else {
        work()?
    };
    if compressed || encoding == Encoding::Json {
        // The decoded body is held beside the raw one until the request is answered.
        state
            .intake
            .grow(lease, body.len())
            .map_err(|e| Rejection::busy(e.to_string()))?;
    }
    Ok(body)
}

/// Compressed bodies larger than this are decompressed on a blocking thread (they expand 5-20x).
const BLOCKING_COMPRESSED_BYTES: usize = 16 * 1024;
/// JSON bodies larger than this are converted on a blocking thread.
const BLOCKING_JSON_BYTES: usize = 256 * 1024;

enum Decompress {
    TooLarge,
    Unsupported,
    Corrupt(std::io::Error),
}

fn decompress(encoding: &str, raw: Bytes, limit: usize) -> Result<Bytes, Decompress> {
    let reader: Box<dyn Read + '_> = match encoding {
        "" | "identity" | "none" => return Ok(raw),
        // Multi-member: some clients and proxies send concatenated gzip streams, all of which
        // are the body (RFC 1952).
        "gzip" | "x-gzip" => Box::new(flate2::read::MultiGzDecoder::new(&raw[..])),
        "deflate" => Box::new(flate2::read::ZlibDecoder::new(&raw[..])),
        "zstd" => {
            Box::new(zstd::stream::read::Decoder::new(&raw[..]).map_err(Decompress::Corrupt)?)
        }
        _ => return Err(Decompress::Unsupported),
    };
    // Read one byte past the limit to tell "exactly the limit" from "more".
    let mut out = Vec::new();
    reader
        .take(limit as u64 + 1)
        .read_to_end(&mut out)
        .map_err(Decompress::Corrupt)?;
    if out.len() > limit {
        return Err(Decompress::TooLarge);
    }
    Ok(Bytes::from(out))
}

fn reject(status: StatusCode, encoding: Encoding, message: &str, reason: &'static str) -> Response {
    catalog::RECEIVER_REJECTED_REQUESTS
        .counter(&["http", reason])
        .increment(1);
    status_response(status, encoding, message)
}

/// An error response carrying a `google.rpc.Status`, as OTLP/HTTP specifies.
fn status_response(status: StatusCode, encoding: Encoding, message: &str) -> Response {
    let code = match status {
        StatusCode::BAD_REQUEST => 3,
        StatusCode::UNAUTHORIZED => 16,
        StatusCode::PAYLOAD_TOO_LARGE => 8,
        StatusCode::SERVICE_UNAVAILABLE => 14,
        _ => 2,
    };
    match encoding {
        Encoding::Protobuf => {
            let body = google_rpc::Status {
                code,
                message: message.to_string(),
                details: vec![],
            }
            .encode_to_vec();
            (
                status,
                [(header::CONTENT_TYPE, "application/x-protobuf")],
                body,
            )
                .into_response()
        }
        Encoding::Json => {
            let body = serde_json::json!({ "code": code, "message": message }).to_string();
            (status, [(header::CONTENT_TYPE, "application/json")], body).into_response()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decompression_is_bounded_and_reports_corruption() {
        use std::io::Write;
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        gz.write_all(&[7u8; 1000]).unwrap();
        let gz = Bytes::from(gz.finish().unwrap());
        assert_eq!(
            decompress("gzip", gz.clone(), 1000).ok().unwrap().len(),
            1000
        );
        assert!(matches!(
            decompress("gzip", gz, 999),
            Err(Decompress::TooLarge)
        ));
        assert!(matches!(
            decompress("gzip", Bytes::from_static(b"not gzip"), 10),
            Err(Decompress::Corrupt(_))
        ));
        assert!(matches!(
            decompress("br", Bytes::new(), 10),
            Err(Decompress::Unsupported)
        ));
    }

    #[test]
    fn every_member_of_a_multi_member_gzip_body_is_read() {
        use std::io::Write;
        let member = |data: &[u8]| {
            let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
            gz.write_all(data).unwrap();
            gz.finish().unwrap()
        };
        let mut body = member(b"first ");
        body.extend(member(b"second ").iter());
        body.extend(member(b"third").iter());
        let out = decompress("gzip", Bytes::from(body.clone()), 1000)
            .ok()
            .unwrap();
        assert_eq!(&out[..], b"first second third");
        // The limit applies to the sum of the members.
        assert!(matches!(
            decompress("gzip", Bytes::from(body), 17),
            Err(Decompress::TooLarge)
        ));
    }
}
