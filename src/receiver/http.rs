//! OTLP/HTTP: `POST /v1/traces` with a protobuf or JSON body, optionally gzip- or
//! zstd-compressed. JSON is converted to protobuf once here; everything after sees bytes.
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

use super::{Intake, RefuseError};

#[derive(Clone)]
struct HttpState {
    intake: Arc<Intake>,
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
    intake: Arc<Intake>,
    path: &str,
    body_limit: usize,
    shutdown: CancellationToken,
) -> std::io::Result<()> {
    let router = Router::new()
        .route(path, post(export))
        .layer(DefaultBodyLimit::disable())
        .with_state(HttpState { intake, body_limit });
    crate::telemetry::serve(listener, router, shutdown).await
}

async fn export(State(state): State<HttpState>, headers: HeaderMap, body: Body) -> Response {
    let content_type = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase();
    let encoding = match content_type.as_str() {
        "application/x-protobuf" | "application/protobuf" => Encoding::Protobuf,
        "application/json" => Encoding::Json,
        other => {
            return reject(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                Encoding::Json,
                &format!("unsupported content type `{other}`; use application/x-protobuf or application/json"),
                "unsupported_media_type",
            )
        }
    };
    // Read at most the limit (compressed); a larger body is refused before it is buffered.
    let raw = match axum::body::to_bytes(body, state.body_limit).await {
        Ok(b) => b,
        Err(_) => {
            return reject(
                StatusCode::PAYLOAD_TOO_LARGE,
                encoding,
                &format!("request body exceeds {} bytes", state.body_limit),
                "too_large",
            )
        }
    };
    let content_encoding = headers
        .get(header::CONTENT_ENCODING)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase();
    let body = match decompress(&content_encoding, raw, state.body_limit) {
        Ok(b) => b,
        Err(Decompress::TooLarge) => {
            return reject(
                StatusCode::PAYLOAD_TOO_LARGE,
                encoding,
                &format!("decompressed body exceeds {} bytes", state.body_limit),
                "too_large",
            )
        }
        Err(Decompress::Unsupported) => {
            return reject(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                encoding,
                &format!(
                    "unsupported content encoding `{content_encoding}`; use gzip, zstd or none"
                ),
                "unsupported_encoding",
            )
        }
        Err(Decompress::Corrupt(e)) => {
            return reject(
                StatusCode::BAD_REQUEST,
                encoding,
                &format!("body is not valid {content_encoding}: {e}"),
                "bad_compression",
            )
        }
    };
    let body = if encoding == Encoding::Json {
        match json_to_protobuf(&body) {
            Ok(b) => b,
            Err(e) => {
                return reject(
                    StatusCode::BAD_REQUEST,
                    encoding,
                    &format!("malformed OTLP JSON: {e}"),
                    "malformed",
                )
            }
        }
    } else {
        body
    };
    let forwarded = headers.contains_key(crate::balancer::FORWARDED_HEADER);
    match state.intake.accept(&body, "http", forwarded).await {
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
        Err(e @ (RefuseError::ShuttingDown | RefuseError::Full | RefuseError::NoBackends)) => {
            let mut response =
                status_response(StatusCode::SERVICE_UNAVAILABLE, encoding, &e.to_string());
            response.headers_mut().insert(
                header::RETRY_AFTER,
                axum::http::HeaderValue::from_static("1"),
            );
            response
        }
    }
}

enum Decompress {
    TooLarge,
    Unsupported,
    Corrupt(std::io::Error),
}

fn decompress(encoding: &str, raw: Bytes, limit: usize) -> Result<Bytes, Decompress> {
    let reader: Box<dyn Read + '_> = match encoding {
        "" | "identity" | "none" => return Ok(raw),
        "gzip" => Box::new(flate2::read::GzDecoder::new(&raw[..])),
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

/// Converts an OTLP JSON request (hex IDs, enums as numbers, int64 as string or number) to
/// protobuf bytes.
pub fn json_to_protobuf(json: &[u8]) -> Result<Bytes, String> {
    use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
    let request: ExportTraceServiceRequest =
        serde_json::from_slice(json).map_err(|e| e.to_string())?;
    Ok(Bytes::from(request.encode_to_vec()))
}

fn reject(status: StatusCode, encoding: Encoding, message: &str, reason: &'static str) -> Response {
    metrics::counter!("tailgate_receiver_rejected_requests_total", "transport" => "http", "reason" => reason).increment(1);
    status_response(status, encoding, message)
}

/// An error response carrying a `google.rpc.Status`, as OTLP/HTTP specifies.
fn status_response(status: StatusCode, encoding: Encoding, message: &str) -> Response {
    let code = match status {
        StatusCode::BAD_REQUEST => 3,
        StatusCode::PAYLOAD_TOO_LARGE => 8,
        StatusCode::SERVICE_UNAVAILABLE => 14,
        _ => 2,
    };
    match encoding {
        Encoding::Protobuf => {
            let body = crate::google_rpc::Status {
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
    fn otlp_json_with_hex_ids_and_string_timestamps_converts() {
        let json = br#"{"resourceSpans":[{"resource":{"attributes":[{"key":"service.name","value":{"stringValue":"api"}}]},
          "scopeSpans":[{"scope":{"name":"s"},"spans":[{"traceId":"5b8efff798038103d269b633813fc60c","spanId":"eee19b7ec3c1b174",
          "name":"GET /","kind":2,"startTimeUnixNano":"1544712660000000000","endTimeUnixNano":1544712661000000000,
          "status":{"code":2}}]}]}]}"#;
        let body = json_to_protobuf(json).unwrap();
        let parsed = crate::wire::parse_export_request(&body).unwrap();
        assert_eq!(parsed.spans.len(), 1);
        let info = parsed.spans[0].info;
        assert_eq!(info.trace_id[0], 0x5b);
        assert_eq!(info.status_code, 2);
        assert_eq!(info.end_unix_nano - info.start_unix_nano, 1_000_000_000);
    }

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
}
