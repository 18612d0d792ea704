//! OTLP/gRPC transport: posts pre-encoded requests to `TraceService/Export` through tonic with a
//! pass-through codec, so the encoded batch goes on the wire as it is.

use std::time::Duration;

use prost::Message;
use tonic::codec::CompressionEncoding;
use tonic::metadata::{AsciiMetadataValue, MetadataKey, MetadataMap};
use tonic::transport::{Channel, Endpoint};

use super::retry::{grpc_code_is_retryable, SendError};
use super::{ExportBatch, OtlpExporterConfig};
use crate::receiver::{RawBytesCodec, EXPORT_PATH};

/// `host:port`, `http://host:port` or `https://host:port` as a URI tonic can dial, with the
/// scheme saying whether TLS is used: TLS unless `insecure` (or the endpoint says `http://`),
/// always for `https://`, as the Collector's gRPC client does.
pub fn endpoint_uri(endpoint: &str, insecure: bool) -> Result<String, String> {
    let uri = match endpoint.split_once("://") {
        Some(("http", rest)) if !insecure => format!("https://{rest}"),
        Some(_) => endpoint.to_string(),
        None if insecure => format!("http://{endpoint}"),
        None => format!("https://{endpoint}"),
    };
    let parsed: http::Uri = uri.parse().map_err(|e| format!("{e}"))?;
    if parsed.host().is_none() || parsed.port_u16().is_none() {
        return Err("missing host or port".into());
    }
    Ok(uri)
}

pub struct GrpcTransport {
    channel: Channel,
    metadata: MetadataMap,
    compression: Option<CompressionEncoding>,
    timeout: Duration,
}

impl GrpcTransport {
    pub fn new(config: &OtlpExporterConfig) -> Result<Self, String> {
        let uri = endpoint_uri(&config.endpoint, config.tls.insecure)?;
        let mut endpoint = Endpoint::from_shared(uri.clone())
            .map_err(|e| e.to_string())?
            .connect_timeout(config.timeout);
        if uri.starts_with("https://") {
            let host = uri
                .parse::<http::Uri>()
                .ok()
                .and_then(|u| u.host().map(str::to_string))
                .unwrap_or_default();
            endpoint = endpoint
                .tls_config(super::tls::grpc_client_tls(&config.tls, &host)?)
                .map_err(|e| format!("TLS: {e}"))?;
        }
        // Lazy: the daemon starts, and queues, while the backend is still down.
        let channel = endpoint.connect_lazy();
        let mut metadata = MetadataMap::new();
        for (name, value) in &config.headers {
            let key = MetadataKey::from_bytes(name.to_ascii_lowercase().as_bytes())
                .map_err(|e| format!("header `{name}`: {e}"))?;
            let value: AsciiMetadataValue = value
                .parse()
                .map_err(|_| format!("header `{name}` has a value that is not valid ASCII"))?;
            metadata.insert(key, value);
        }
        Ok(Self {
            channel,
            metadata,
            compression: match config.compression.as_str() {
                "gzip" => Some(CompressionEncoding::Gzip),
                "zstd" => Some(CompressionEncoding::Zstd),
                _ => None,
            },
            timeout: config.timeout,
        })
    }

    pub async fn send(&self, batch: &ExportBatch) -> Result<(), SendError> {
        let mut grpc = tonic::client::Grpc::new(self.channel.clone());
        if let Some(c) = self.compression {
            grpc = grpc.send_compressed(c);
        }
        let mut request = tonic::Request::new(batch.body.clone());
        *request.metadata_mut() = self.metadata.clone();
        request.set_timeout(self.timeout);
        let call = async {
            grpc.ready()
                .await
                .map_err(|e| tonic::Status::unavailable(format!("backend not reachable: {e}")))?;
            grpc.unary(
                request,
                http::uri::PathAndQuery::from_static(EXPORT_PATH),
                RawBytesCodec,
            )
            .await
        };
        match tokio::time::timeout(self.timeout, call).await {
            Err(_) => Err(SendError::retryable(format!(
                "no answer within {:?}",
                self.timeout
            ))),
            Ok(Ok(response)) => {
                report_partial_success(&response.into_inner());
                Ok(())
            }
            Ok(Err(status)) => Err(classify(&status)),
        }
    }
}

/// Maps a gRPC failure to a retry decision, reading any `RetryInfo` the server attached.
pub fn classify(status: &tonic::Status) -> SendError {
    let retry_after = retry_info(status.details());
    SendError {
        retryable: grpc_code_is_retryable(status.code(), retry_after.is_some()),
        retry_after,
        message: format!("{:?}: {}", status.code(), status.message()),
    }
}

fn retry_info(details: &[u8]) -> Option<Duration> {
    if details.is_empty() {
        return None;
    }
    let status = crate::google_rpc::Status::decode(details).ok()?;
    status
        .details
        .iter()
        .find(|any| any.type_url.ends_with("google.rpc.RetryInfo"))
        .and_then(|any| crate::google_rpc::RetryInfo::decode(any.value.as_slice()).ok())
        .and_then(|info| info.retry_delay)
        .map(|d| Duration::new(d.seconds.max(0) as u64, d.nanos.max(0) as u32))
}

/// Logs and counts spans a backend accepted the request for but rejected individually.
pub fn report_partial_success(body: &[u8]) {
    if let Ok(response) = crate::views::ExportTraceServiceResponse::decode(body) {
        if let Some(partial) = response.partial_success {
            if partial.rejected_spans > 0 {
                metrics::counter!("tailgate_exporter_rejected_spans_total")
                    .increment(partial.rejected_spans as u64);
                tracing::warn!(
                    rejected_spans = partial.rejected_spans,
                    message = %partial.error_message,
                    "backend rejected part of an export"
                );
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resource_exhausted_is_retryable_only_with_retry_info() {
        let bare = tonic::Status::resource_exhausted("slow down");
        assert!(!classify(&bare).retryable);
        let details = crate::google_rpc::Status {
            code: 8,
            message: "slow down".into(),
            details: vec![prost_types::Any {
                type_url: "type.googleapis.com/google.rpc.RetryInfo".into(),
                value: crate::google_rpc::RetryInfo {
                    retry_delay: Some(prost_types::Duration {
                        seconds: 2,
                        nanos: 500_000_000,
                    }),
                }
                .encode_to_vec(),
            }],
        }
        .encode_to_vec();
        let with_info = tonic::Status::with_details(
            tonic::Code::ResourceExhausted,
            "slow down",
            details.into(),
        );
        let e = classify(&with_info);
        assert!(e.retryable);
        assert_eq!(e.retry_after, Some(Duration::from_millis(2500)));
    }

    #[test]
    fn the_scheme_follows_tls_insecure_like_the_collector() {
        let uri = |e, insecure| endpoint_uri(e, insecure).unwrap();
        assert_eq!(uri("tempo:4317", true), "http://tempo:4317");
        assert_eq!(uri("tempo:4317", false), "https://tempo:4317");
        assert_eq!(uri("http://127.0.0.1:4317", true), "http://127.0.0.1:4317");
        assert_eq!(uri("http://tempo:4317", false), "https://tempo:4317");
        assert_eq!(uri("https://tempo:443", true), "https://tempo:443");
        assert!(endpoint_uri("tempo", true).is_err());
    }
}
