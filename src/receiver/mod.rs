//! The OTLP receiver: gRPC (`TraceService/Export`) and HTTP (`POST /v1/traces`, protobuf or
//! JSON), both handing requests to a [`TraceConsumer`] they know nothing else about.
//!
//! Request bodies are taken as bytes and walked by [`crate::otlp::parse_export_request`], never
//! decoded into structs (JSON is converted to protobuf once at the door). A request is validated
//! whole before any of it is handed on: a malformed one is rejected with InvalidArgument / HTTP
//! 400, an oversized one with ResourceExhausted / HTTP 413, and the process keeps serving. A
//! consumer's [`Refusal`] becomes a retryable status (UNAVAILABLE / 503).

pub mod config;
mod grpc;
mod http;
pub mod limiter;
pub mod tls;

use std::sync::Arc;

pub use grpc::serve_grpc;
pub use http::serve_http;

use crate::auth::{AuthError, ServerAuth};
use crate::otlp::{parse_export_request, Incoming, Refusal, TraceConsumer, WireError};
use crate::telemetry::{catalog, LogEvery};
use tls::ServerTlsSettings;

/// `receivers.otlp`, validated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReceiverSettings {
    /// The component ID (`otlp`, `otlp/internal`), as metrics label it.
    pub name: String,
    pub grpc: Option<GrpcServerSettings>,
    pub http: Option<HttpServerSettings>,
}

/// `protocols.grpc`, validated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GrpcServerSettings {
    /// `host:port` to listen on (an empty host means every interface).
    pub endpoint: String,
    /// Largest accepted message, after decompression.
    pub max_message_bytes: usize,
    /// `auth`: requests without valid credentials are refused (UNAUTHENTICATED).
    pub auth: Option<ServerAuth>,
    pub tls: Option<ServerTlsSettings>,
}

/// `protocols.http`, validated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HttpServerSettings {
    pub endpoint: String,
    /// Where traces are posted (`/v1/traces`).
    pub traces_path: String,
    /// Largest accepted body, after decompression.
    pub body_limit: usize,
    /// `auth`: requests without valid credentials are refused (401).
    pub auth: Option<ServerAuth>,
    pub tls: Option<ServerTlsSettings>,
}

/// The transport a request came in on, for metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transport {
    Grpc,
    Http,
}

impl Transport {
    fn label(self) -> &'static str {
        match self {
            Transport::Grpc => "grpc",
            Transport::Http => "http",
        }
    }
}

/// Why a request was refused.
#[derive(Debug, thiserror::Error)]
pub enum RefuseError {
    #[error("malformed OTLP request: {0}")]
    Malformed(#[from] WireError),
    #[error(transparent)]
    Refused(#[from] Refusal),
}

/// A protocol's authentication check: counted and logged (rate-limited) refusals, never the
/// credential itself.
pub(crate) struct Gate {
    auth: ServerAuth,
    refused: metrics::Counter,
    log: LogEvery,
    receiver: String,
    transport: &'static str,
}

impl Gate {
    fn new(auth: Option<&ServerAuth>, receiver: &str, transport: Transport) -> Option<Self> {
        let auth = auth?.clone();
        let t = transport.label();
        Some(Self {
            refused: catalog::RECEIVER_UNAUTHENTICATED_REQUESTS.counter(&[receiver, t]),
            auth,
            log: LogEvery::new(std::time::Duration::from_secs(10)),
            receiver: receiver.to_string(),
            transport: t,
        })
    }

    /// Checks a request's headers before its body is read.
    fn check(&self, headers: &::http::HeaderMap) -> Result<(), AuthError> {
        let value = headers.get(self.auth.header()).map(|v| v.as_bytes());
        let result = self.auth.check(value);
        if let Err(e) = result {
            self.refused.increment(1);
            if self.log.ready() {
                tracing::warn!(
                    receiver = %self.receiver,
                    transport = self.transport,
                    authenticator = %self.auth.name,
                    "refused a request: {e} (counted in tailgate_receiver_unauthenticated_requests)"
                );
            }
        }
        result
    }
}

/// One transport's door: validation, counting, and the consumer behind it.
pub(crate) struct Intake {
    consumer: Arc<dyn TraceConsumer>,
    accepted: metrics::Counter,
    refused: metrics::Counter,
    malformed: metrics::Counter,
}

impl Intake {
    fn new(consumer: Arc<dyn TraceConsumer>, receiver: &str, transport: Transport) -> Self {
        let t = transport.label();
        Self {
            consumer,
            accepted: catalog::RECEIVER_ACCEPTED_SPANS.counter(&[receiver, t]),
            refused: catalog::RECEIVER_REFUSED_SPANS.counter(&[receiver, t]),
            malformed: catalog::RECEIVER_REJECTED_REQUESTS.counter(&[t, "malformed"]),
        }
    }

    /// Validates a request body and hands its spans on. Returns the number of spans accepted.
    /// `hops` is the request's `tailgate-forwarded` count (0 from a client).
    pub(crate) async fn accept(&self, body: &[u8], hops: u32) -> Result<usize, RefuseError> {
        let parsed = match parse_export_request(body) {
            Ok(p) => p,
            Err(e) => {
                self.malformed.increment(1);
                return Err(e.into());
            }
        };
        let spans = parsed.spans.len();
        let request = Incoming { body, parsed, hops };
        if let Err(refusal) = self.consumer.consume(request).await {
            self.refused.increment(spans as u64);
            return Err(refusal.into());
        }
        self.accepted.increment(spans as u64);
        Ok(spans)
    }
}
