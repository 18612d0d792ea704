//! The OTLP receiver: gRPC (`TraceService/Export`) and HTTP (`POST /v1/traces`, protobuf or
//! JSON), both feeding the same [`Intake`].
//!
//! Request bodies are taken as bytes and walked by [`crate::wire`], never decoded into structs
//! (JSON is converted to protobuf once at the door). A request is validated whole before any of
//! it is buffered: a malformed one is rejected with InvalidArgument / HTTP 400, an oversized one
//! with ResourceExhausted / HTTP 413, and the process keeps serving.

mod grpc;
mod http;

use std::sync::Arc;

use serde::Deserialize;
use tokio::sync::mpsc;

pub use grpc::{serve_grpc, RawBytesCodec, EXPORT_PATH};
pub use http::serve_http;

use crate::balancer::{Cluster, Router};
use crate::buffer::{Chunk, Kept, TraceBuffer};
use crate::config::{null_as_default, ConfigError};
use crate::telemetry::check_endpoint;
use crate::wire::{self, WireError};

/// `receivers.otlp`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct OtlpReceiverConfig {
    pub protocols: ProtocolsConfig,
}

/// `receivers.otlp.protocols`: a protocol is enabled by being present (even empty).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ProtocolsConfig {
    #[serde(deserialize_with = "null_as_default")]
    pub grpc: Option<GrpcServerConfig>,
    #[serde(deserialize_with = "null_as_default")]
    pub http: Option<HttpServerConfig>,
}

/// `receivers.otlp.protocols.grpc`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct GrpcServerConfig {
    pub endpoint: String,
    /// Largest accepted message, in MiB (after decompression). Default 4.
    pub max_recv_msg_size_mib: u64,
    /// Accepted for compatibility; tonic's transport is always TCP.
    pub transport: String,
}

impl Default for GrpcServerConfig {
    fn default() -> Self {
        Self {
            endpoint: "localhost:4317".into(),
            max_recv_msg_size_mib: 4,
            transport: "tcp".into(),
        }
    }
}

/// `receivers.otlp.protocols.http`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct HttpServerConfig {
    pub endpoint: String,
    /// Largest accepted body in bytes (after decompression). Default 20 MiB, as the Collector.
    pub max_request_body_size: u64,
    /// tailgate extension: the same limit in MiB, like the gRPC key; the smaller limit wins.
    pub max_recv_msg_size_mib: Option<u64>,
    pub traces_url_path: String,
}

impl Default for HttpServerConfig {
    fn default() -> Self {
        Self {
            endpoint: "localhost:4318".into(),
            max_request_body_size: 20 * 1024 * 1024,
            max_recv_msg_size_mib: None,
            traces_url_path: "/v1/traces".into(),
        }
    }
}

impl HttpServerConfig {
    pub fn body_limit(&self) -> usize {
        let mib = self
            .max_recv_msg_size_mib
            .map_or(u64::MAX, |m| m * 1024 * 1024);
        self.max_request_body_size.min(mib) as usize
    }
}

impl OtlpReceiverConfig {
    pub fn validate(&self, path: &str, errors: &mut Vec<ConfigError>) {
        let p = &self.protocols;
        if p.grpc.is_none() && p.http.is_none() {
            errors.push(ConfigError::new(
                format!("{path}.protocols"),
                "enable at least one of grpc and http",
            ));
        }
        if let Some(g) = &p.grpc {
            check_endpoint(
                &g.endpoint,
                &format!("{path}.protocols.grpc.endpoint"),
                errors,
            );
            if g.max_recv_msg_size_mib == 0 {
                errors.push(ConfigError::new(
                    format!("{path}.protocols.grpc.max_recv_msg_size_mib"),
                    "must be greater than 0",
                ));
            }
            if g.transport != "tcp" {
                errors.push(ConfigError::new(
                    format!("{path}.protocols.grpc.transport"),
                    format!("transport `{}` is not supported; use tcp", g.transport),
                ));
            }
        }
        if let Some(h) = &p.http {
            check_endpoint(
                &h.endpoint,
                &format!("{path}.protocols.http.endpoint"),
                errors,
            );
            if !h.traces_url_path.starts_with('/') {
                errors.push(ConfigError::new(
                    format!("{path}.protocols.http.traces_url_path"),
                    "must start with /",
                ));
            }
        }
    }
}

/// Per-transport span counters, registered once: looking them up by labels on every request
/// showed in the profile.
struct TransportCounters {
    accepted: metrics::Counter,
    refused: metrics::Counter,
}

fn counters(transport: &'static str) -> &'static TransportCounters {
    static COUNTERS: std::sync::OnceLock<[TransportCounters; 2]> = std::sync::OnceLock::new();
    let all = COUNTERS.get_or_init(|| {
        ["grpc", "http"].map(|t| TransportCounters {
            accepted: metrics::counter!("otelcol_receiver_accepted_spans", "receiver" => "otlp", "transport" => t),
            refused: metrics::counter!("otelcol_receiver_refused_spans", "receiver" => "otlp", "transport" => t),
        })
    });
    &all[usize::from(transport != "grpc")]
}

/// Where accepted spans go: the tail-sampling buffer (via the cluster's ownership split when
/// samplers coordinate), the front tier's router, or (a pipeline with neither) straight to
/// export.
pub enum Intake {
    Sample {
        buffer: Arc<TraceBuffer>,
        cluster: Option<Arc<Cluster>>,
    },
    Balance(Arc<Router>),
    PassThrough(mpsc::Sender<Kept>),
}

/// Why a request was refused.
#[derive(Debug, thiserror::Error)]
pub enum RefuseError {
    #[error("malformed OTLP request: {0}")]
    Malformed(#[from] WireError),
    #[error("the gateway is shutting down")]
    ShuttingDown,
    #[error("the trace buffer is full (num_traces or max_buffered_bytes reached, with block_on_overflow); retry later")]
    Full,
    #[error("no sampler is known yet to route to; retry later")]
    NoBackends,
}

impl Intake {
    /// Validates a request body and hands its spans on. Returns the number of spans accepted.
    /// `forwarded` marks a request from another sampler (the `tailgate-forwarded` header).
    pub async fn accept(
        &self,
        body: &[u8],
        transport: &'static str,
        forwarded: bool,
    ) -> Result<usize, RefuseError> {
        let parsed = match wire::parse_export_request(body) {
            Ok(p) => p,
            Err(e) => {
                metrics::counter!("tailgate_receiver_rejected_requests_total", "transport" => transport, "reason" => "malformed")
                    .increment(1);
                return Err(e.into());
            }
        };
        let spans = parsed.spans.len();
        match self {
            Intake::Balance(router) => {
                if router.route_request(parsed, body).await.is_err() {
                    counters(transport).refused.increment(spans as u64);
                    return Err(RefuseError::NoBackends);
                }
            }
            Intake::Sample { buffer, cluster } => {
                let parsed = match cluster {
                    Some(cluster) => cluster.split(parsed, body, forwarded).await,
                    None => parsed,
                };
                if buffer.ingest(parsed, body).await.is_err() {
                    counters(transport).refused.increment(spans as u64);
                    return Err(RefuseError::Full);
                }
            }
            Intake::PassThrough(out) => {
                let origins: Vec<Arc<wire::Origin>> =
                    parsed.origins.into_iter().map(Arc::new).collect();
                let mut chunks: Vec<Chunk> = Vec::new();
                let mut i = 0;
                while i < parsed.spans.len() {
                    let origin = parsed.spans[i].origin;
                    let ranges: Vec<(usize, usize)> = parsed.spans[i..]
                        .iter()
                        .take_while(|s| s.origin == origin)
                        .map(|s| s.range)
                        .collect();
                    i += ranges.len();
                    chunks.push(Chunk::from_spans(
                        Arc::clone(&origins[origin]),
                        body,
                        &ranges,
                    ));
                }
                if !chunks.is_empty() && out.send(Kept { chunks }).await.is_err() {
                    return Err(RefuseError::ShuttingDown);
                }
            }
        }
        counters(transport).accepted.increment(spans as u64);
        Ok(spans)
    }
}
