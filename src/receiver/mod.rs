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

use std::sync::Arc;

pub use grpc::serve_grpc;
pub use http::serve_http;

use crate::otlp::{admit, Admitted, Incoming, Invalid, InvalidUtf8, Refusal, TraceConsumer};
use crate::telemetry::{catalog, LogEvery};

/// `receivers.otlp`, validated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReceiverSettings {
    /// The component ID (`otlp`, `otlp/internal`), as metrics label it.
    pub name: String,
    pub grpc: Option<GrpcServerSettings>,
    pub http: Option<HttpServerSettings>,
    /// What the door does with what arrives, for both protocols.
    pub door: DoorSettings,
}

/// The receiver-wide door rules (`receivers.otlp` keys that are tailgate extensions).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct DoorSettings {
    /// `invalid_utf8`: repair (default) or refuse.
    pub invalid_utf8: InvalidUtf8,
}

/// One receiver's door, shared by its gRPC and HTTP servers.
#[derive(Debug)]
pub struct Door {
    invalid_utf8: InvalidUtf8,
}

impl Door {
    pub fn new(settings: &DoorSettings) -> Arc<Door> {
        Arc::new(Door {
            invalid_utf8: settings.invalid_utf8,
        })
    }
}

/// `protocols.grpc`, validated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GrpcServerSettings {
    /// `host:port` to listen on (an empty host means every interface).
    pub endpoint: String,
    /// Largest accepted message, after decompression.
    pub max_message_bytes: usize,
}

/// `protocols.http`, validated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HttpServerSettings {
    pub endpoint: String,
    /// Where traces are posted (`/v1/traces`).
    pub traces_path: String,
    /// Largest accepted body, after decompression.
    pub body_limit: usize,
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
    Malformed(#[from] Invalid),
    #[error(transparent)]
    Refused(#[from] Refusal),
}

/// One transport's door: validation, counting, and the consumer behind it.
pub(crate) struct Intake {
    consumer: Arc<dyn TraceConsumer>,
    door: Arc<Door>,
    transport: Transport,
    accepted: metrics::Counter,
    refused: metrics::Counter,
    repaired: metrics::Counter,
    malformed_log: LogEvery,
    repaired_log: LogEvery,
}

impl Intake {
    fn new(
        consumer: Arc<dyn TraceConsumer>,
        receiver: &str,
        transport: Transport,
        door: Arc<Door>,
    ) -> Self {
        let t = transport.label();
        Self {
            consumer,
            door,
            transport,
            accepted: catalog::RECEIVER_ACCEPTED_SPANS.counter(&[receiver, t]),
            refused: catalog::RECEIVER_REFUSED_SPANS.counter(&[receiver, t]),
            repaired: catalog::RECEIVER_REPAIRED_SPANS.counter(&[receiver, t]),
            malformed_log: LogEvery::new(std::time::Duration::from_secs(10)),
            repaired_log: LogEvery::new(std::time::Duration::from_secs(10)),
        }
    }

    /// Validates a request body and hands its spans on. Returns the number of spans accepted.
    /// `hops` is the request's `tailgate-forwarded` count (0 from a client).
    pub(crate) async fn accept(&self, body: &[u8], hops: u32) -> Result<usize, RefuseError> {
        let admitted = match admit(body, self.door.invalid_utf8) {
            Ok(admitted) => admitted,
            Err(e) => {
                catalog::RECEIVER_REJECTED_REQUESTS
                    .counter(&[self.transport.label(), e.reason()])
                    .increment(1);
                if self.malformed_log.ready() {
                    tracing::warn!(
                        transport = self.transport.label(),
                        reason = e.reason(),
                        "refused a malformed request: {e} (logged at most every 10 s)"
                    );
                }
                return Err(e.into());
            }
        };
        let (body, parsed) = match admitted {
            Admitted::Sound(parsed) => (std::borrow::Cow::Borrowed(body), parsed),
            Admitted::Repaired {
                body,
                parsed,
                spans,
            } => {
                self.repaired.increment(spans as u64);
                if self.repaired_log.ready() {
                    tracing::warn!(
                        transport = self.transport.label(),
                        spans,
                        "replaced invalid UTF-8 with U+FFFD in a request's strings (set \
                         receivers.otlp.invalid_utf8: refuse to refuse such requests; logged \
                         at most every 10 s)"
                    );
                }
                (std::borrow::Cow::Owned(body), parsed)
            }
        };
        let spans = parsed.spans.len();
        let request = Incoming {
            body: &body,
            parsed,
            hops,
        };
        if let Err(refusal) = self.consumer.consume(request).await {
            self.refused.increment(spans as u64);
            return Err(refusal.into());
        }
        self.accepted.increment(spans as u64);
        Ok(spans)
    }
}
