//! The OTLP receiver: gRPC (`TraceService/Export`) and HTTP (`POST /v1/traces`, protobuf or
//! JSON), both handing requests to a [`TraceConsumer`] they know nothing else about.
//!
//! Request bodies are taken as bytes and validated whole by [`crate::otlp::admit`], never
//! decoded into structs (JSON is converted to protobuf once at the door). A request is validated
//! whole before any of it is handed on: structural damage is rejected with InvalidArgument /
//! HTTP 400 naming the field path (counted by reason), invalid UTF-8 is repaired or refused as
//! `invalid_utf8` says, an oversized body is rejected with ResourceExhausted / HTTP 413, and the
//! process keeps serving. The [`Door`] shared by a receiver's two servers also bounds the bytes
//! of request bodies held at once (`max_in_flight_mib`): past it a request is refused as busy,
//! retryably. A consumer's [`Refusal`] becomes a retryable status (UNAVAILABLE / 503).

pub mod config;
mod grpc;
mod http;
pub mod limiter;
pub mod tls;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

pub use grpc::serve_grpc;
pub use http::serve_http;

use crate::auth::{AuthError, ServerAuth};
use crate::otlp::{admit, Admitted, Incoming, Invalid, InvalidUtf8, Refusal, TraceConsumer};
use crate::telemetry::{catalog, LogEvery};
use tls::ServerTlsSettings;

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
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DoorSettings {
    /// `invalid_utf8`: repair (default) or refuse.
    pub invalid_utf8: InvalidUtf8,
    /// `max_in_flight_mib`, in bytes: request bodies held at once, over both protocols.
    pub max_in_flight_bytes: usize,
}

impl Default for DoorSettings {
    fn default() -> Self {
        DoorSettings {
            invalid_utf8: InvalidUtf8::Repair,
            max_in_flight_bytes: DEFAULT_MAX_IN_FLIGHT_MIB * 1024 * 1024,
        }
    }
}

/// The default `max_in_flight_mib`: a dozen maximum-size HTTP bodies (20 MiB each), sixty-four
/// maximum-size gRPC messages.
pub const DEFAULT_MAX_IN_FLIGHT_MIB: usize = 256;

/// One receiver's door, shared by its gRPC and HTTP servers: the UTF-8 rule and the in-flight
/// byte budget.
#[derive(Debug)]
pub struct Door {
    invalid_utf8: InvalidUtf8,
    budget: Arc<InFlight>,
}

impl Door {
    pub fn new(receiver: &str, settings: &DoorSettings) -> Arc<Door> {
        Arc::new(Door {
            invalid_utf8: settings.invalid_utf8,
            budget: Arc::new(InFlight {
                limit: settings.max_in_flight_bytes,
                used: AtomicUsize::new(0),
                gauge: catalog::RECEIVER_IN_FLIGHT_BYTES.gauge(&[receiver]),
            }),
        })
    }
}

/// The bytes of request bodies a receiver holds right now, against its limit. Taken before a
/// body is read where its length is known (HTTP `Content-Length`), else as soon as it is, and
/// given back when the request has been answered.
#[derive(Debug)]
struct InFlight {
    limit: usize,
    used: AtomicUsize,
    gauge: metrics::Gauge,
}

/// Bytes taken from an [`InFlight`] budget, given back on drop.
#[derive(Debug)]
pub(crate) struct Lease {
    budget: Arc<InFlight>,
    bytes: usize,
}

impl InFlight {
    fn take(self: &Arc<Self>, bytes: usize) -> Option<Lease> {
        let mut lease = Lease {
            budget: Arc::clone(self),
            bytes: 0,
        };
        lease.grow(bytes).then_some(lease)
    }
}

impl Lease {
    /// Takes `bytes` more; false (taking nothing) when that would pass the limit.
    pub(crate) fn grow(&mut self, bytes: usize) -> bool {
        let budget = &self.budget;
        let taken = budget
            .used
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |used| {
                used.checked_add(bytes)
                    .filter(|&total| total <= budget.limit)
            });
        match taken {
            Ok(before) => {
                self.bytes += bytes;
                budget.gauge.set((before + bytes) as f64);
                true
            }
            Err(_) => false,
        }
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        if self.bytes > 0 {
            let before = self.budget.used.fetch_sub(self.bytes, Ordering::AcqRel);
            self.budget.gauge.set((before - self.bytes) as f64);
        }
    }
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
    Malformed(#[from] Invalid),
    #[error(transparent)]
    Refused(#[from] Refusal),
    #[error("the receiver holds max_in_flight_mib of requests already; retry later")]
    Busy,
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
    door: Arc<Door>,
    transport: Transport,
    accepted: metrics::Counter,
    refused: metrics::Counter,
    repaired: metrics::Counter,
    throttled: metrics::Counter,
    malformed_log: LogEvery,
    repaired_log: LogEvery,
    throttled_log: LogEvery,
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
            throttled: catalog::RECEIVER_THROTTLED_REQUESTS.counter(&[receiver, t]),
            malformed_log: LogEvery::new(std::time::Duration::from_secs(10)),
            repaired_log: LogEvery::new(std::time::Duration::from_secs(10)),
            throttled_log: LogEvery::new(std::time::Duration::from_secs(10)),
        }
    }

    /// Takes `bytes` of the receiver's in-flight budget, or refuses the request as busy
    /// (retryable), counted.
    pub(crate) fn lease(&self, bytes: usize) -> Result<Lease, RefuseError> {
        self.door.budget.take(bytes).ok_or_else(|| self.busy())
    }

    /// Grows a lease by `bytes`, or refuses the request as busy.
    pub(crate) fn grow(&self, lease: &mut Lease, bytes: usize) -> Result<(), RefuseError> {
        if lease.grow(bytes) {
            Ok(())
        } else {
            Err(self.busy())
        }
    }

    fn busy(&self) -> RefuseError {
        self.throttled.increment(1);
        if self.throttled_log.ready() {
            tracing::warn!(
                transport = self.transport.label(),
                limit_bytes = self.door.budget.limit,
                "refused a request with a retryable status: max_in_flight_mib of requests are \
                 being processed (logged at most every 10 s)"
            );
        }
        RefuseError::Busy
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_in_flight_budget_is_taken_grown_refused_and_given_back() {
        let door = Door::new(
            "test-budget",
            &DoorSettings {
                max_in_flight_bytes: 100,
                ..DoorSettings::default()
            },
        );
        let budget = &door.budget;
        let mut first = budget.take(60).expect("60 of 100");
        assert!(budget.take(41).is_none(), "60 + 41 is past the limit");
        assert!(!first.grow(41), "growing past the limit takes nothing");
        assert!(first.grow(40), "exactly the limit is allowed");
        assert!(budget.take(1).is_none());
        drop(first);
        assert_eq!(budget.used.load(Ordering::Acquire), 0, "all given back");
        let _second = budget.take(100).expect("the whole budget again");
    }
}
