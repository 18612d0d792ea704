//! OTLP/HTTP transport: POSTs encoded batches to `/v1/traces` (protobuf, or JSON with
//! `encoding: json`), with optional gzip/zstd body compression.

use std::io::Write;
use std::time::Duration;

use bytes::Bytes;
use http::header::{HeaderName, HeaderValue, CONTENT_ENCODING, CONTENT_TYPE, RETRY_AFTER};
use http_body_util::{BodyExt, Full};
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::{connect::HttpConnector, Client};
use hyper_util::rt::TokioExecutor;

use super::retry::{http_refusal, http_status_is_retryable, parse_retry_after, SendError};
use super::settings::{Compression, HttpEncoding, HttpSettings};
use crate::otlp::json::to_otlp_json;
use crate::otlp::EncodedBatch;

pub struct HttpTransport {
    client: Client<HttpsConnector<HttpConnector>, Full<Bytes>>,
    url: http::Uri,
    headers: Vec<(HeaderName, HeaderValue)>,
    compression: Compression,
    json: bool,
    timeout: Duration,
}

impl HttpTransport {
    pub fn new(settings: &HttpSettings) -> Result<Self, String> {
        let mut connector = HttpConnector::new();
        connector.set_connect_timeout(Some(settings.timeout));
        connector.enforce_http(false);
        // TLS for https:// URLs (the Collector's rule for otlphttp), plain HTTP otherwise.
        let builder = hyper_rustls::HttpsConnectorBuilder::new()
            .with_tls_config(super::tls::rustls_client_config(&settings.tls)?)
            .https_or_http();
        // `tls.server_name_override`: the certificate is checked against that name (and it is
        // sent as SNI) instead of the URL's host, as the gRPC exporter does.
        let builder = match &settings.tls.server_name_override {
            Some(name) => {
                let name = rustls_pki_types::ServerName::try_from(name.clone())
                    .map_err(|e| format!("tls.server_name_override `{name}`: {e}"))?;
                builder.with_server_name_resolver(hyper_rustls::FixedServerNameResolver::new(name))
            }
            None => builder,
        };
        let https = builder.enable_http1().wrap_connector(connector);
        Ok(Self {
            client: Client::builder(TokioExecutor::new()).build(https),
            url: settings.url.clone(),
            headers: settings.headers.clone(),
            compression: settings.compression,
            json: settings.encoding == HttpEncoding::Json,
            timeout: settings.timeout,
        })
    }

    pub async fn send(&self, batch: &EncodedBatch) -> Result<(), SendError> {
        let (payload, content_type) = if self.json {
            let json = to_otlp_json(&batch.body).map_err(SendError::permanent)?;
            (Bytes::from(json), "application/json")
        } else {
            (batch.body.clone(), "application/x-protobuf")
        };
        let mut request = http::Request::post(self.url.clone()).header(CONTENT_TYPE, content_type);
        let payload = match self.compression {
            Compression::Gzip => {
                request = request.header(CONTENT_ENCODING, "gzip");
                let mut enc =
                    flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
                enc.write_all(&payload)
                    .map_err(|e| SendError::permanent(e.to_string()))?;
                Bytes::from(
                    enc.finish()
                        .map_err(|e| SendError::permanent(e.to_string()))?,
                )
            }
            Compression::Zstd => {
                request = request.header(CONTENT_ENCODING, "zstd");
                Bytes::from(
                    zstd::encode_all(&payload[..], 1)
                        .map_err(|e| SendError::permanent(e.to_string()))?,
                )
            }
            Compression::None => payload,
        };
        for (name, value) in &self.headers {
            request = request.header(name, value);
        }
        let request = request
            .body(Full::new(payload))
            .map_err(|e| SendError::permanent(e.to_string()))?;
        let deadline = tokio::time::Instant::now() + self.timeout;
        let response = match tokio::time::timeout_at(deadline, self.client.request(request)).await {
            Err(_) => {
                return Err(SendError::retryable(format!(
                    "no answer within {:?}",
                    self.timeout
                )))
            }
            Ok(Err(e)) => return Err(SendError::retryable(format!("request failed: {e}"))),
            Ok(Ok(r)) => r,
        };
        let status = response.status();
        let retry_after = response
            .headers()
            .get(RETRY_AFTER)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| parse_retry_after(v, std::time::SystemTime::now()));
        let body = read_response_body(response.into_body(), deadline).await;
        if status.is_success() {
            if !self.json && !body.is_empty() {
                super::grpc::report_partial_success(&body, batch.spans);
            }
            return Ok(());
        }
        let message = format!(
            "HTTP {status}: {}",
            String::from_utf8_lossy(&body[..body.len().min(256)])
        );
        Err(SendError {
            retryable: http_status_is_retryable(status.as_u16()),
            retry_after,
            refused: http_refusal(status.as_u16()),
            message,
        })
    }
}

/// Most of a response body read: an OTLP response is a few bytes (`partial_success`), an error
/// a message. More is not read.
const MAX_RESPONSE_BODY: usize = 64 * 1024;

/// Reads a response body of at most [`MAX_RESPONSE_BODY`] bytes by `deadline`. A body that is
/// larger, fails or is still arriving then is counted and read as empty: the status line has
/// already said whether the export was accepted.
async fn read_response_body(body: hyper::body::Incoming, deadline: tokio::time::Instant) -> Bytes {
    let limited = http_body_util::Limited::new(body, MAX_RESPONSE_BODY);
    match tokio::time::timeout_at(deadline, limited.collect()).await {
        Ok(Ok(collected)) => collected.to_bytes(),
        Ok(Err(error)) => {
            let kind = if error.is::<http_body_util::LengthLimitError>() {
                "response_body_too_large"
            } else {
                "response_body_failed"
            };
            super::grpc::bad_response(kind);
            Bytes::new()
        }
        Err(_) => {
            super::grpc::bad_response("response_body_timeout");
            Bytes::new()
        }
    }
}
