//! OTLP/gRPC transport: posts pre-encoded requests to `TraceService/Export` through tonic with a
//! pass-through codec, so the encoded batch goes on the wire as it is.

use std::time::Duration;

use prost::Message;
use tonic::codec::CompressionEncoding;
use tonic::metadata::{Ascii, AsciiMetadataValue, MetadataKey, MetadataMap};
use tonic::transport::{Channel, Endpoint};

use super::retry::{grpc_code_is_retryable, grpc_refusal, SendError};
use super::settings::{Compression, GrpcSettings};
use crate::otlp::proto::{google_rpc, views};
use crate::otlp::{EncodedBatch, RawBytesCodec, EXPORT_PATH};
use crate::telemetry::{catalog, LogEvery};

pub struct GrpcTransport {
    channel: Channel,
    metadata: MetadataMap,
    compression: Option<CompressionEncoding>,
    timeout: Duration,
}

impl GrpcTransport {
    pub fn new(settings: &GrpcSettings) -> Result<Self, String> {
        let client = &settings.client;
        let mut endpoint = Endpoint::from_shared(settings.uri.to_string())
            .map_err(|e| e.to_string())?
            .connect_timeout(client.timeout);
        if settings.uri.scheme_str() == Some("https") {
            let host = settings.uri.host().unwrap_or_default();
            endpoint = endpoint
                .tls_config(super::tls::grpc_client_tls(&client.tls, host)?)
                .map_err(|e| format!("TLS: {e}"))?;
        }
        // Lazy: the daemon starts, and queues, while the backend is still down.
        let channel = endpoint.connect_lazy();
        let mut metadata = MetadataMap::new();
        for (name, value) in &client.headers {
            let key = MetadataKey::from_bytes(name.as_str().as_bytes())
                .map_err(|e| format!("header `{name}`: {e}"))?;
            let value = AsciiMetadataValue::try_from(value.as_bytes())
                .map_err(|_| format!("header `{name}` has a value that is not valid ASCII"))?;
            metadata.insert(key, value);
        }
        Ok(Self {
            channel,
            metadata,
            compression: match client.compression {
                Compression::Gzip => Some(CompressionEncoding::Gzip),
                Compression::Zstd => Some(CompressionEncoding::Zstd),
                Compression::None => None,
            },
            timeout: client.timeout,
        })
    }

    pub async fn send(&self, batch: &EncodedBatch) -> Result<(), SendError> {
        self.send_with(batch, None).await
    }

    /// [`GrpcTransport::send`] with one more metadata entry on this request (the cluster's hop
    /// count).
    pub async fn send_with(
        &self,
        batch: &EncodedBatch,
        extra: Option<(MetadataKey<Ascii>, AsciiMetadataValue)>,
    ) -> Result<(), SendError> {
        let mut grpc = tonic::client::Grpc::new(self.channel.clone());
        if let Some(c) = self.compression {
            grpc = grpc.send_compressed(c);
        }
        let mut request = tonic::Request::new(batch.body.clone());
        *request.metadata_mut() = self.metadata.clone();
        if let Some((key, value)) = extra {
            request.metadata_mut().insert(key, value);
        }
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
                report_partial_success(&response.into_inner(), batch.spans);
                Ok(())
            }
            Ok(Err(status)) => Err(classify(&status)),
        }
    }
}

/// Maps a gRPC failure to a retry decision, reading any `RetryInfo` the server attached.
pub fn classify(status: &tonic::Status) -> SendError {
    let retry_after = retry_info(status.details());
    // tonic reports a call the transport broke off (a connection reset when the backend was
    // killed, a stream torn down) as UNKNOWN or INTERNAL with the transport's error as its
    // source; no server said anything, so it is retried like UNAVAILABLE (grpc-go reports
    // these as UNAVAILABLE). A status the server sent has no source.
    use std::error::Error as _;
    let broken_off = status.source().is_some()
        && matches!(status.code(), tonic::Code::Unknown | tonic::Code::Internal);
    SendError {
        retryable: broken_off || grpc_code_is_retryable(status.code(), retry_after.is_some()),
        refused: grpc_refusal(status.code(), retry_after.is_some(), status.message()),
        retry_after,
        message: format!("{:?}: {}", status.code(), status.message()),
    }
}

fn retry_info(details: &[u8]) -> Option<Duration> {
    if details.is_empty() {
        return None;
    }
    let status = google_rpc::Status::decode(details).ok()?;
    status
        .details
        .iter()
        .find(|any| any.type_url.ends_with("google.rpc.RetryInfo"))
        .and_then(|any| google_rpc::RetryInfo::decode(any.value.as_slice()).ok())
        .and_then(|info| info.retry_delay)
        .map(|d| super::retry::retry_info_delay(d.seconds, d.nanos))
}

/// Logs and counts spans a backend accepted the request for but rejected individually. A body
/// that is not an `ExportTraceServiceResponse` is counted (the request was accepted all the
/// same), and a rejected count over the `sent` spans is cut to `sent`.
pub fn report_partial_success(body: &[u8], sent: usize) {
    static LOG: std::sync::LazyLock<LogEvery> =
        std::sync::LazyLock::new(|| LogEvery::new(Duration::from_secs(10)));
    let response = match views::ExportTraceServiceResponse::decode(body) {
        Ok(response) => response,
        Err(error) => {
            bad_response("undecodable");
            if LOG.ready() {
                tracing::warn!(%error, "backend accepted an export with an undecodable response");
            }
            return;
        }
    };
    let Some(partial) = response.partial_success else {
        return;
    };
    if partial.rejected_spans <= 0 {
        return;
    }
    let mut rejected = partial.rejected_spans as u64;
    if rejected > sent as u64 {
        bad_response("rejected_more_than_sent");
        rejected = sent as u64;
    }
    catalog::EXPORTER_REJECTED_SPANS
        .counter(&[])
        .increment(rejected);
    if LOG.ready() {
        let message: String = partial.error_message.chars().take(256).collect();
        tracing::warn!(
            rejected_spans = rejected,
            %message,
            "backend rejected part of an export"
        );
    }
}

/// Counts a backend answer tailgate could not use as sent (`tailgate_exporter_bad_responses`).
pub fn bad_response(kind: &'static str) {
    catalog::EXPORTER_BAD_RESPONSES
        .counter(&[kind])
        .increment(1);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_call_the_transport_broke_off_is_retried_and_a_servers_unknown_is_not() {
        let reset = std::io::Error::new(std::io::ErrorKind::ConnectionReset, "reset by peer");
        let broken = tonic::Status::from_error(Box::new(reset));
        assert_eq!(broken.code(), tonic::Code::Unknown);
        assert!(classify(&broken).retryable);
        assert!(!classify(&tonic::Status::unknown("backend bug")).retryable);
        assert!(!classify(&tonic::Status::internal("backend bug")).retryable);
    }

    #[test]
    fn resource_exhausted_is_retryable_only_with_retry_info() {
        let bare = tonic::Status::resource_exhausted("slow down");
        assert!(!classify(&bare).retryable);
        let details = google_rpc::Status {
            code: 8,
            message: "slow down".into(),
            details: vec![prost_types::Any {
                type_url: "type.googleapis.com/google.rpc.RetryInfo".into(),
                value: google_rpc::RetryInfo {
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
}
