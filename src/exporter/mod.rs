//! Export: batching kept spans, the per-exporter queue with retries, and the transports
//! (OTLP gRPC, OTLP HTTP, file, debug).
//!
//! Data flow: the buffer sends [`Kept`] chunks to the [`batch::Batcher`], which groups them by
//! resource and scope and writes one `ExportTraceServiceRequest` per batch by framing the encoded
//! pieces ([`crate::wire::encode_export_request`]) — kept spans are never decoded or re-encoded.
//! The encoded batch (shared `Bytes`) goes to every exporter of the pipeline. Each exporter owns a
//! bounded queue (`sending_queue`) drained by `num_consumers` workers that retry per the OTLP spec
//! (`retry_on_failure`, see [`retry`]). A full queue drops the batch, counted in
//! `otelcol_exporter_enqueue_failed_spans` and logged; nothing else drops.

pub mod batch;
mod file;
mod grpc;
mod http;
pub mod retry;
mod tls;

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use serde::Deserialize;
use tokio::sync::{mpsc, Mutex};
use tokio::task::JoinHandle;

pub use batch::{BatchConfig, Batcher};
pub use file::{DebugExporterConfig, FileExporterConfig};
pub use retry::{RetryConfig, SendError};

use crate::buffer::Kept;
use crate::config::{duration, ConfigError, ExporterConfig};
use crate::telemetry::LogEvery;

/// One encoded export request, shared by every exporter it goes to.
#[derive(Debug, Clone)]
pub struct ExportBatch {
    pub body: Bytes,
    pub spans: usize,
}

/// `tls` of an exporter, as in the Collector: gRPC uses TLS unless `insecure: true` (an
/// `https://` endpoint always does); HTTP uses TLS for `https://` URLs.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TlsClientConfig {
    pub insecure: bool,
    pub insecure_skip_verify: bool,
    /// PEM file of the CA(s) to trust instead of the bundled Mozilla roots.
    pub ca_file: String,
    /// PEM client certificate and key, for mutual TLS.
    pub cert_file: String,
    pub key_file: String,
    /// The name to verify the server's certificate against, instead of the endpoint's host.
    pub server_name_override: String,
}

/// `sending_queue`, with the Collector's defaults.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct QueueConfig {
    pub enabled: bool,
    pub num_consumers: usize,
    /// Batches the queue holds.
    pub queue_size: usize,
}

impl Default for QueueConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            num_consumers: 10,
            queue_size: 1000,
        }
    }
}

/// `exporters.otlp`: OTLP over gRPC.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct OtlpExporterConfig {
    /// `host:port`, or `http://host:port`.
    pub endpoint: String,
    pub tls: TlsClientConfig,
    pub headers: BTreeMap<String, String>,
    /// `gzip` (default), `zstd` or `none`.
    pub compression: String,
    #[serde(with = "duration::go")]
    pub timeout: Duration,
    pub retry_on_failure: RetryConfig,
    pub sending_queue: QueueConfig,
}

impl Default for OtlpExporterConfig {
    fn default() -> Self {
        Self {
            endpoint: String::new(),
            tls: TlsClientConfig::default(),
            headers: BTreeMap::new(),
            compression: "gzip".into(),
            timeout: Duration::from_secs(5),
            retry_on_failure: RetryConfig::default(),
            sending_queue: QueueConfig::default(),
        }
    }
}

/// `exporters.otlphttp`: OTLP over HTTP (`/v1/traces`).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct OtlpHttpExporterConfig {
    /// Base URL; `/v1/traces` is appended.
    pub endpoint: String,
    /// Full URL for traces, overriding `endpoint`.
    pub traces_endpoint: String,
    pub tls: TlsClientConfig,
    pub headers: BTreeMap<String, String>,
    pub compression: String,
    /// `proto` (default) or `json`.
    pub encoding: String,
    #[serde(with = "duration::go")]
    pub timeout: Duration,
    pub retry_on_failure: RetryConfig,
    pub sending_queue: QueueConfig,
}

impl Default for OtlpHttpExporterConfig {
    fn default() -> Self {
        Self {
            endpoint: String::new(),
            traces_endpoint: String::new(),
            tls: TlsClientConfig::default(),
            headers: BTreeMap::new(),
            compression: "gzip".into(),
            encoding: "proto".into(),
            timeout: Duration::from_secs(30),
            retry_on_failure: RetryConfig::default(),
            sending_queue: QueueConfig::default(),
        }
    }
}

/// The settings `otlp` and `otlphttp` share, borrowed for validation.
struct CommonSettings<'a> {
    tls: &'a TlsClientConfig,
    compression: &'a str,
    retry: &'a RetryConfig,
    queue: &'a QueueConfig,
    headers: &'a BTreeMap<String, String>,
}

fn validate_common(path: &str, c: &CommonSettings<'_>, errors: &mut Vec<ConfigError>) {
    c.tls.validate(&format!("{path}.tls"), errors);
    let (compression, retry, queue, headers) = (c.compression, c.retry, c.queue, c.headers);
    if !matches!(compression, "gzip" | "zstd" | "none" | "") {
        errors.push(ConfigError::new(
            format!("{path}.compression"),
            format!("unsupported compression `{compression}`; use gzip, zstd or none"),
        ));
    }
    retry.validate(&format!("{path}.retry_on_failure"), errors);
    if queue.enabled && (queue.num_consumers == 0 || queue.queue_size == 0) {
        errors.push(ConfigError::new(
            format!("{path}.sending_queue"),
            "num_consumers and queue_size must be greater than 0",
        ));
    }
    for name in headers.keys() {
        if ::http::HeaderName::from_bytes(name.as_bytes()).is_err() {
            errors.push(ConfigError::new(
                format!("{path}.headers.{name}"),
                format!("`{name}` is not a valid header name"),
            ));
        }
    }
}

impl OtlpExporterConfig {
    fn common(&self) -> CommonSettings<'_> {
        CommonSettings {
            tls: &self.tls,
            compression: &self.compression,
            retry: &self.retry_on_failure,
            queue: &self.sending_queue,
            headers: &self.headers,
        }
    }

    pub fn validate(&self, path: &str, errors: &mut Vec<ConfigError>) {
        if self.endpoint.is_empty() {
            errors.push(ConfigError::new(
                format!("{path}.endpoint"),
                "endpoint is required",
            ));
        } else if grpc::endpoint_uri(&self.endpoint, self.tls.insecure).is_err() {
            errors.push(ConfigError::new(
                format!("{path}.endpoint"),
                format!(
                    "endpoint `{}` must be host:port or http://host:port",
                    self.endpoint
                ),
            ));
        }
        validate_common(path, &self.common(), errors);
    }
}

impl OtlpHttpExporterConfig {
    fn common(&self) -> CommonSettings<'_> {
        CommonSettings {
            tls: &self.tls,
            compression: &self.compression,
            retry: &self.retry_on_failure,
            queue: &self.sending_queue,
            headers: &self.headers,
        }
    }

    pub fn validate(&self, path: &str, errors: &mut Vec<ConfigError>) {
        let url = self.traces_url();
        if self.endpoint.is_empty() && self.traces_endpoint.is_empty() {
            errors.push(ConfigError::new(
                format!("{path}.endpoint"),
                "endpoint is required",
            ));
        } else if url
            .parse::<::http::Uri>()
            .map(|u| u.host().is_none())
            .unwrap_or(true)
        {
            errors.push(ConfigError::new(
                format!("{path}.endpoint"),
                format!("`{url}` is not a valid URL (expected http://host:port)"),
            ));
        }
        if !matches!(self.encoding.as_str(), "proto" | "json") {
            errors.push(ConfigError::new(
                format!("{path}.encoding"),
                format!(
                    "unsupported encoding `{}`; use proto or json",
                    self.encoding
                ),
            ));
        }
        validate_common(path, &self.common(), errors);
    }

    /// The URL traces are posted to.
    pub fn traces_url(&self) -> String {
        if !self.traces_endpoint.is_empty() {
            self.traces_endpoint.clone()
        } else {
            format!("{}/v1/traces", self.endpoint.trim_end_matches('/'))
        }
    }
}

/// A way to deliver one batch. Built once per exporter, so variant sizes do not matter.
#[allow(clippy::large_enum_variant)]
enum Transport {
    Grpc(grpc::GrpcTransport),
    Http(http::HttpTransport),
    File(file::FileTransport),
    Debug(file::DebugTransport),
}

impl Transport {
    async fn send(&self, batch: &ExportBatch) -> Result<(), SendError> {
        match self {
            Transport::Grpc(t) => t.send(batch).await,
            Transport::Http(t) => t.send(batch).await,
            Transport::File(t) => t.send(batch),
            Transport::Debug(t) => t.send(batch),
        }
    }
}

/// One running exporter: its queue and workers.
pub struct Exporter {
    name: Arc<str>,
    queue: Option<mpsc::Sender<ExportBatch>>,
    workers: Vec<JoinHandle<()>>,
    /// Spans queued or being sent, for the shutdown report.
    pending_spans: Arc<AtomicUsize>,
    blocking: bool,
    drop_log: LogEvery,
}

impl Exporter {
    /// Builds the transport and starts the queue workers.
    pub fn start(name: &str, config: &ExporterConfig) -> Result<Exporter, String> {
        Self::start_with(name, config, None)
    }

    /// [`Exporter::start`] for one backend of the `loadbalancing` exporter: each send's outcome
    /// is also counted in `otelcol_loadbalancer_backend_outcome{endpoint}`.
    pub fn start_with(
        name: &str,
        config: &ExporterConfig,
        backend: Option<Arc<str>>,
    ) -> Result<Exporter, String> {
        let (transport, retry, queue) = match config {
            ExporterConfig::Otlp(c) => (
                Transport::Grpc(grpc::GrpcTransport::new(c)?),
                c.retry_on_failure.clone(),
                c.sending_queue.clone(),
            ),
            ExporterConfig::OtlpHttp(c) => (
                Transport::Http(http::HttpTransport::new(c)?),
                c.retry_on_failure.clone(),
                c.sending_queue.clone(),
            ),
            ExporterConfig::File(c) => (
                Transport::File(file::FileTransport::new(c)?),
                RetryConfig {
                    enabled: false,
                    ..Default::default()
                },
                QueueConfig::default(),
            ),
            ExporterConfig::LoadBalancing(_) => {
                return Err("the loadbalancing exporter is run by the balancer".into())
            }
            ExporterConfig::Debug(c) => (
                Transport::Debug(file::DebugTransport::new(c)),
                RetryConfig {
                    enabled: false,
                    ..Default::default()
                },
                QueueConfig::default(),
            ),
        };
        let name: Arc<str> = Arc::from(name);
        // Without a queue, the pipeline waits for a free worker instead of dropping.
        let (capacity, consumers) = if queue.enabled {
            (queue.queue_size, queue.num_consumers)
        } else {
            (1, 1)
        };
        let (tx, rx) = mpsc::channel::<ExportBatch>(capacity);
        let rx = Arc::new(Mutex::new(rx));
        let transport = Arc::new(transport);
        let pending_spans = Arc::new(AtomicUsize::new(0));
        metrics::gauge!("otelcol_exporter_queue_capacity", "exporter" => name.to_string())
            .set(capacity as f64);
        let workers = (0..consumers)
            .map(|worker| {
                let rx = Arc::clone(&rx);
                let transport = Arc::clone(&transport);
                let name = Arc::clone(&name);
                let retry = retry.clone();
                let pending = Arc::clone(&pending_spans);
                let backend = backend.clone();
                tokio::spawn(async move {
                    loop {
                        let batch = { rx.lock().await.recv().await };
                        let Some(batch) = batch else { return };
                        let target = Target {
                            name: &name,
                            backend: backend.as_deref(),
                        };
                        deliver(target, &transport, &retry, &batch, worker as u64).await;
                        pending.fetch_sub(batch.spans, Ordering::Relaxed);
                    }
                })
            })
            .collect();
        Ok(Exporter {
            name,
            queue: Some(tx),
            workers,
            pending_spans,
            blocking: !queue.enabled,
            drop_log: LogEvery::new(Duration::from_secs(10)),
        })
    }

    /// Queues a batch; when the queue is full the batch is dropped and counted.
    pub async fn enqueue(&self, batch: ExportBatch) {
        let Some(queue) = &self.queue else { return };
        let spans = batch.spans;
        self.pending_spans.fetch_add(spans, Ordering::Relaxed);
        let result = if self.blocking {
            queue.send(batch).await.map_err(|_| ())
        } else {
            queue.try_send(batch).map_err(|_| ())
        };
        if result.is_err() {
            self.pending_spans.fetch_sub(spans, Ordering::Relaxed);
            metrics::counter!("otelcol_exporter_enqueue_failed_spans", "exporter" => self.name.to_string())
                .increment(spans as u64);
            if self.drop_log.ready() {
                tracing::error!(exporter = %self.name, spans, "sending queue is full; dropping batch (counted in otelcol_exporter_enqueue_failed_spans)");
            }
        }
        metrics::gauge!("otelcol_exporter_queue_size", "exporter" => self.name.to_string())
            .set((queue.max_capacity() - queue.capacity()) as f64);
    }

    /// Closes the queue and lets the workers send what is queued, until `deadline`. Whatever is
    /// still unsent then is counted as dropped and logged.
    pub async fn shutdown(mut self, deadline: tokio::time::Instant) {
        self.queue = None;
        let workers = std::mem::take(&mut self.workers);
        let all = futures_join_all(workers);
        if tokio::time::timeout_at(deadline, all).await.is_err() {
            let lost = self.pending_spans.load(Ordering::Relaxed);
            metrics::counter!("otelcol_exporter_send_failed_spans", "exporter" => self.name.to_string())
                .increment(lost as u64);
            tracing::error!(exporter = %self.name, spans = lost, "shutdown grace period ended before the queue drained; unsent spans dropped");
        }
    }
}

async fn futures_join_all(handles: Vec<JoinHandle<()>>) {
    for h in handles {
        if let Err(e) = h.await {
            if e.is_panic() {
                tracing::error!("export worker panicked: {e}");
            }
        }
    }
}

/// Who a batch is for: the exporter, and the balancer backend if it is one.
#[derive(Clone, Copy)]
struct Target<'a> {
    name: &'a str,
    backend: Option<&'a str>,
}

/// Sends one batch, retrying per the policy; counts the outcome.
async fn deliver(
    target: Target<'_>,
    transport: &Transport,
    retry: &RetryConfig,
    batch: &ExportBatch,
    seed: u64,
) {
    let name = target.name;
    let mut backoff = retry::Backoff::new(
        retry,
        seed.wrapping_mul(0x9e37_79b9)
            .wrapping_add(batch.body.len() as u64),
    );
    loop {
        let result = transport.send(batch).await;
        if let Some(endpoint) = target.backend {
            metrics::counter!(
                "otelcol_loadbalancer_backend_outcome",
                "endpoint" => endpoint.to_string(),
                "success" => if result.is_ok() { "true" } else { "false" },
            )
            .increment(1);
        }
        match result {
            Ok(()) => {
                metrics::counter!("otelcol_exporter_sent_spans", "exporter" => name.to_string())
                    .increment(batch.spans as u64);
                return;
            }
            Err(err) => {
                let wait = if err.retryable {
                    backoff.next_wait(err.retry_after)
                } else {
                    None
                };
                match wait {
                    Some(wait) => {
                        tracing::warn!(exporter = name, error = %err.message, retry_in = ?wait, "export failed; will retry");
                        metrics::counter!("tailgate_exporter_retries_total", "exporter" => name.to_string()).increment(1);
                        tokio::time::sleep(wait).await;
                    }
                    None => {
                        metrics::counter!("otelcol_exporter_send_failed_spans", "exporter" => name.to_string())
                            .increment(batch.spans as u64);
                        tracing::error!(
                            exporter = name,
                            spans = batch.spans,
                            error = %err.message,
                            retryable = err.retryable,
                            "export failed; dropping batch (counted in otelcol_exporter_send_failed_spans)"
                        );
                        return;
                    }
                }
            }
        }
    }
}

/// Fans encoded batches out to every exporter of the pipeline.
pub struct Fanout {
    pub exporters: Vec<Exporter>,
}

impl Fanout {
    pub async fn send(&self, batch: ExportBatch) {
        for exporter in &self.exporters {
            exporter.enqueue(batch.clone()).await;
        }
    }
}

/// Runs the batcher until `kept` closes, then drains the exporters until `deadline`.
pub async fn run_pipeline(
    kept: mpsc::Receiver<Kept>,
    batch: Option<BatchConfig>,
    fanout: Fanout,
    deadline: impl std::future::Future<Output = tokio::time::Instant>,
) {
    let fanout = Batcher::new(batch).run(kept, fanout).await;
    let deadline = deadline.await;
    for exporter in fanout.exporters {
        exporter.shutdown(deadline).await;
    }
}
