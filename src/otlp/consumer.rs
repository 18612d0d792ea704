//! The contract between a receiver and whatever consumes what it receives: a receiver validates
//! a request ([`super::admit`]) and hands it to a [`TraceConsumer`], which takes it
//! whole or refuses it whole with a [`Refusal`] the receiver turns into the protocol's status.
//!
//! The sampler tier's buffer, the front tier's router and a pass-through pipeline are consumers;
//! the receiver knows none of them.

use std::future::Future;
use std::pin::Pin;

use super::request::ParsedRequest;

/// A boxed, sendable future (what a trait object can return).
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// The header on sampler-to-sampler requests (forwarded spans, handed-off traces); its value is
/// how many samplers the request has passed through. Receivers read it into [`Incoming::hops`].
pub const FORWARDED_HEADER: &str = "tailgate-forwarded";

/// The hop count a `tailgate-forwarded` header value stands for (a value that is not a number
/// counts as one hop).
pub fn hops_from_header(value: Option<&[u8]>) -> u32 {
    match value {
        None => 0,
        Some(v) => std::str::from_utf8(v)
            .ok()
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or(1),
    }
}

/// A validated request on its way in.
pub struct Incoming<'a> {
    /// The request body as received (after decompression, JSON already converted).
    pub body: &'a [u8],
    /// Its spans and origins, as the walker found them in `body`.
    pub parsed: ParsedRequest,
    /// How many samplers this request has already passed through (0 from a client; the
    /// `tailgate-forwarded` header on sampler-to-sampler requests).
    pub hops: u32,
}

/// The status message a leaving sampler refuses peer traffic with (gRPC FAILED_PRECONDITION): the
/// sending sampler then routes around it.
pub const LEAVING_MESSAGE: &str = "tailgate: this sampler is leaving the cluster";

/// Why a consumer did not take a request. Every refusal is retryable: the client should send the
/// same request again later (gRPC UNAVAILABLE, HTTP 503), except [`Refusal::Leaving`], which only
/// samplers receive from samplers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    #[error("the gateway is shutting down")]
    ShuttingDown,
    #[error("the trace buffer is full (num_traces or max_buffered_bytes reached, with block_on_overflow); retry later")]
    Full,
    #[error("no sampler is known yet to route to; retry later")]
    NoBackends,
    /// The `memory_limiter` processor's soft limit is reached.
    #[error("memory usage is above the memory_limiter's soft limit; retry later")]
    MemoryLimit,
    /// Peer traffic (hand-offs, forwarded spans) to a sampler that is leaving its cluster.
    #[error("{LEAVING_MESSAGE}")]
    Leaving,
}

/// Takes validated requests from receivers.
pub trait TraceConsumer: Send + Sync {
    /// Takes the request's spans, or refuses all of them.
    fn consume<'a>(&'a self, request: Incoming<'a>) -> BoxFuture<'a, Result<(), Refusal>>;
}
