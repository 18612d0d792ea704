//! Export: batching kept spans, the per-exporter queue with retries, and the transports
//! (OTLP gRPC, OTLP HTTP, file, debug).
//!
//! Data flow: the buffer sends [`SpanBatch`]es to the [`batch::Batcher`], which groups them by
//! resource and scope and writes one `ExportTraceServiceRequest` per batch by framing the encoded
//! pieces ([`crate::otlp::encode_chunks`]): kept spans are never decoded or re-encoded. The
//! encoded batch (shared `Bytes`) goes to every exporter of the pipeline. Each [`Exporter`] owns a
//! bounded queue (`sending_queue`) drained by `num_consumers` workers that retry per the OTLP spec
//! (`retry_on_failure`, see [`retry`]). A full queue drops the batch, counted in
//! `otelcol_exporter_enqueue_failed_spans` and logged; nothing else drops.
//!
//! An exporter is built from [`ExporterSettings`] (validated by [`config`]); the front tier and
//! the sampler cluster build one per peer from a [`GrpcClientSettings`] template. This module sits
//! below the stages that use it (the sampler pipeline, the front tier, the sampler cluster) and
//! knows none of them.

pub mod batch;
pub mod config;
mod file;
mod grpc;
mod http;
pub mod retry;
pub mod settings;
mod tls;

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, Mutex};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

pub use batch::{BatchConfig, Batcher};
pub use grpc::GrpcTransport;
pub use retry::{Refused, RetryConfig, SendError, PEER_LEAVING};
pub use settings::{ExporterSettings, GrpcClientSettings, GrpcSettings, TransportSettings};

use crate::otlp::group::{chunks_by_origin, split_in_two};
use crate::otlp::{BoxFuture, EncodedBatch, Incoming, Origin, Refusal, SpanBatch, TraceConsumer};
use crate::telemetry::{catalog, LogEvery};

/// A way to deliver one batch. Built once per exporter, so variant sizes do not matter.
#[allow(clippy::large_enum_variant)]
enum Transport {
    Grpc(grpc::GrpcTransport),
    Http(http::HttpTransport),
    File(file::FileTransport),
    Debug(file::DebugTransport),
}

impl Transport {
    /// Builds the transport for its settings: the one build path of every exporter kind.
    fn build(settings: &TransportSettings) -> Result<Transport, String> {
        Ok(match settings {
            TransportSettings::Grpc(s) => Transport::Grpc(grpc::GrpcTransport::new(s)?),
            TransportSettings::Http(s) => Transport::Http(http::HttpTransport::new(s)?),
            TransportSettings::File(s) => Transport::File(file::FileTransport::new(s)?),
            TransportSettings::Debug(v) => Transport::Debug(file::DebugTransport::new(*v)),
        })
    }

    async fn send(&self, batch: &EncodedBatch) -> Result<(), SendError> {
        match self {
            Transport::Grpc(t) => t.send(batch).await,
            Transport::Http(t) => t.send(batch).await,
            Transport::File(t) => t.send(batch),
            Transport::Debug(t) => t.send(batch),
        }
    }
}

/// An exporter's metric handles, registered once when it starts.
struct ExporterMetrics {
    sent: metrics::Counter,
    send_failed: metrics::Counter,
    enqueue_failed: metrics::Counter,
    retries: metrics::Counter,
    splits: metrics::Counter,
    queue_size: metrics::Gauge,
    queue_capacity: metrics::Gauge,
    /// `otelcol_loadbalancer_backend_outcome` by success, for a front-tier backend.
    backend_outcome: Option<[metrics::Counter; 2]>,
}

/// The `data_type` label of the queue gauges, as the Collector sets it for a traces exporter.
const DATA_TYPE: &str = "traces";

impl ExporterMetrics {
    fn register(name: &str, backend: Option<&str>) -> Self {
        Self {
            sent: catalog::EXPORTER_SENT_SPANS.counter(&[name]),
            send_failed: catalog::EXPORTER_SEND_FAILED_SPANS.counter(&[name]),
            enqueue_failed: catalog::EXPORTER_ENQUEUE_FAILED_SPANS.counter(&[name]),
            retries: catalog::EXPORTER_RETRIES.counter(&[name]),
            splits: catalog::EXPORTER_SPLIT_BATCHES.counter(&[name]),
            queue_size: catalog::EXPORTER_QUEUE_SIZE.gauge(&[name, DATA_TYPE]),
            queue_capacity: catalog::EXPORTER_QUEUE_CAPACITY.gauge(&[name, DATA_TYPE]),
            backend_outcome: backend.map(|endpoint| {
                ["true", "false"]
                    .map(|success| catalog::LB_BACKEND_OUTCOME.counter(&[endpoint, success]))
            }),
        }
    }

    /// Removes this exporter's series from `/metrics`, once its handles are dropped. A series
    /// that another exporter of the same name holds (the endpoint came back while this one
    /// drained) stays.
    fn forget(name: &str, backend: Option<&str>) {
        for metric in [
            &catalog::EXPORTER_SENT_SPANS,
            &catalog::EXPORTER_SEND_FAILED_SPANS,
            &catalog::EXPORTER_ENQUEUE_FAILED_SPANS,
            &catalog::EXPORTER_RETRIES,
            &catalog::EXPORTER_SPLIT_BATCHES,
        ] {
            metric.forget_unused(&[name]);
        }
        for metric in [
            &catalog::EXPORTER_QUEUE_SIZE,
            &catalog::EXPORTER_QUEUE_CAPACITY,
        ] {
            metric.forget_unused(&[name, DATA_TYPE]);
        }
        if let Some(endpoint) = backend {
            for success in ["true", "false"] {
                catalog::LB_BACKEND_OUTCOME.forget_unused(&[endpoint, success]);
            }
        }
    }
}

/// One running exporter: its queue and workers.
pub struct Exporter {
    name: Arc<str>,
    /// The front-tier backend this exporter serves, if it is one.
    backend: Option<Box<str>>,
    queue: Option<mpsc::Sender<EncodedBatch>>,
    workers: Vec<JoinHandle<()>>,
    /// Spans queued or being sent, for the shutdown report.
    pending_spans: Arc<AtomicUsize>,
    blocking: bool,
    metrics: Arc<ExporterMetrics>,
    retired: Arc<AtomicBool>,
    drop_log: LogEvery,
}

impl Exporter {
    /// Builds the transport and starts the queue workers. `backend` names the front-tier backend
    /// this exporter serves, if it is one: each send's outcome is then also counted in
    /// `otelcol_loadbalancer_backend_outcome{endpoint}`.
    pub fn start(settings: &ExporterSettings, backend: Option<&str>) -> Result<Exporter, String> {
        Self::start_returning(settings, backend, None)
    }

    /// [`Exporter::start`] for a front-tier backend whose batches, once it is
    /// [retired](Exporter::retire), go back to `returned` instead of being retried here.
    pub fn start_returning(
        settings: &ExporterSettings,
        backend: Option<&str>,
        returned: Option<mpsc::UnboundedSender<EncodedBatch>>,
    ) -> Result<Exporter, String> {
        let transport = Transport::build(&settings.transport)?;
        let queue = &settings.queue;
        let name: Arc<str> = Arc::from(settings.name.as_str());
        // Without a queue, the pipeline waits for a free worker instead of dropping.
        let (capacity, consumers) = if queue.enabled {
            (queue.queue_size, queue.num_consumers)
        } else {
            (1, 1)
        };
        let (tx, rx) = mpsc::channel::<EncodedBatch>(capacity);
        let rx = Arc::new(Mutex::new(rx));
        let pending_spans = Arc::new(AtomicUsize::new(0));
        let metrics = Arc::new(ExporterMetrics::register(&name, backend));
        metrics.queue_capacity.set(capacity as f64);
        let retired = Arc::new(AtomicBool::new(false));
        let worker = Arc::new(Worker {
            name: Arc::clone(&name),
            metrics: Arc::clone(&metrics),
            transport: Arc::new(transport),
            retry: settings.retry.clone(),
            retired: Arc::clone(&retired),
            returned,
            retry_log: Arc::new(LogEvery::new(Duration::from_secs(10))),
            failure_log: Arc::new(LogEvery::new(Duration::from_secs(10))),
        });
        let workers = (0..consumers)
            .map(|index| {
                let rx = Arc::clone(&rx);
                let worker = Arc::clone(&worker);
                let pending = Arc::clone(&pending_spans);
                tokio::spawn(async move {
                    loop {
                        let (batch, queued) = {
                            let mut rx = rx.lock().await;
                            let batch = rx.recv().await;
                            (batch, rx.len())
                        };
                        worker.metrics.queue_size.set(queued as f64);
                        let Some(batch) = batch else { return };
                        let spans = batch.spans;
                        worker.deliver(batch, index as u64).await;
                        pending.fetch_sub(spans, Ordering::Relaxed);
                    }
                })
            })
            .collect();
        Ok(Exporter {
            name,
            backend: backend.map(Box::from),
            queue: Some(tx),
            workers,
            pending_spans,
            blocking: !queue.enabled,
            metrics,
            retired,
            drop_log: LogEvery::new(Duration::from_secs(10)),
        })
    }

    /// Marks a front-tier backend as gone from the ring: from now on what is queued for it, and
    /// any batch whose attempt in progress fails, is handed back for routing to its new owner
    /// (see [`Exporter::start_returning`]). Follow with [`Exporter::retire`].
    pub fn stop_taking_spans(&self) {
        self.retired.store(true, Ordering::Relaxed);
    }

    /// Spans queued or being sent.
    pub fn pending_spans(&self) -> usize {
        self.pending_spans.load(Ordering::Relaxed)
    }

    /// Queues a batch; when the queue is full the batch is dropped and counted.
    pub async fn enqueue(&self, batch: EncodedBatch) {
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
            self.metrics.enqueue_failed.increment(spans as u64);
            if self.drop_log.ready() {
                tracing::error!(exporter = %self.name, spans, "sending queue is full; dropping batch (counted in otelcol_exporter_enqueue_failed_spans)");
            }
        }
        self.metrics
            .queue_size
            .set((queue.max_capacity() - queue.capacity()) as f64);
    }

    /// Closes the queue and lets the workers send what is queued, until `deadline`. Whatever is
    /// still unsent then is counted as dropped and logged.
    pub async fn shutdown(mut self, deadline: tokio::time::Instant) {
        self.queue = None;
        let mut workers = std::mem::take(&mut self.workers);
        let all = futures_join_all(&mut workers);
        if tokio::time::timeout_at(deadline, all).await.is_err() {
            // Stop the workers, so nothing counted as dropped here is sent (and counted) later.
            // (A handle that already finished may have been awaited above: not again.)
            for worker in workers.into_iter().filter(|w| !w.is_finished()) {
                worker.abort();
                let _ = worker.await;
            }
            let lost = self.pending_spans.load(Ordering::Relaxed);
            self.metrics.send_failed.increment(lost as u64);
            tracing::error!(exporter = %self.name, spans = lost, "shutdown grace period ended before the queue drained; unsent spans dropped");
        }
    }
}

impl Exporter {
    /// [`Exporter::shutdown`] for an exporter whose endpoint left the ring: once its queue has
    /// drained (or `deadline` passed), its series are removed from `/metrics`, so a backend that
    /// is gone does not keep showing its last queue size and counts.
    pub async fn retire(self, deadline: tokio::time::Instant) {
        let name = Arc::clone(&self.name);
        let backend = self.backend.clone();
        self.shutdown(deadline).await;
        ExporterMetrics::forget(&name, backend.as_deref());
    }
}

async fn futures_join_all(handles: &mut [JoinHandle<()>]) {
    for h in handles.iter_mut() {
        if let Err(e) = h.await {
            if e.is_panic() {
                tracing::error!("export worker panicked: {e}");
            }
        }
    }
}

/// What every worker of one exporter shares.
struct Worker {
    name: Arc<str>,
    metrics: Arc<ExporterMetrics>,
    transport: Arc<Transport>,
    retry: RetryConfig,
    /// Set when a front-tier backend left the ring: a failed batch goes to `returned`, to be
    /// routed again to the trace's new owner, instead of being retried here.
    retired: Arc<AtomicBool>,
    returned: Option<mpsc::UnboundedSender<EncodedBatch>>,
    retry_log: Arc<LogEvery>,
    failure_log: Arc<LogEvery>,
}

impl Worker {
    /// Hands a batch back for routing elsewhere when this exporter is retired.
    fn hand_back(&self, batch: &EncodedBatch) -> bool {
        if !self.retired.load(Ordering::Relaxed) {
            return false;
        }
        match &self.returned {
            Some(returned) => returned.send(batch.clone()).is_ok(),
            None => false,
        }
    }

    /// Sends one batch, retrying per the policy; counts the outcome. A batch the receiver
    /// refuses for its size is split in two and each half sent; one it refuses as invalid is
    /// split until the span at fault is alone, so one bad trace costs nobody else's.
    fn deliver<'a>(
        &'a self,
        batch: EncodedBatch,
        seed: u64,
    ) -> std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send + 'a>> {
        Box::pin(async move {
            let mut backoff = retry::Backoff::new(
                &self.retry,
                seed.wrapping_mul(0x9e37_79b9)
                    .wrapping_add(batch.body.len() as u64),
            );
            loop {
                // A retired backend is not where these spans belong any more: the ring gives
                // them another owner, so they go back to be routed there.
                if self.hand_back(&batch) {
                    return;
                }
                let result = self.transport.send(&batch).await;
                if let Some([succeeded, failed]) = &self.metrics.backend_outcome {
                    if result.is_ok() { succeeded } else { failed }.increment(1);
                }
                let err = match result {
                    Ok(()) => {
                        self.metrics.sent.increment(batch.spans as u64);
                        return;
                    }
                    Err(err) => err,
                };
                if matches!(err.refused, Refused::TooLarge | Refused::Invalid) {
                    if let Some((first, second)) = split_in_two(&batch.body) {
                        self.metrics.splits.increment(1);
                        self.deliver(first, seed.wrapping_add(1)).await;
                        self.deliver(second, seed.wrapping_add(2)).await;
                        return;
                    }
                }
                if self.hand_back(&batch) {
                    return;
                }
                let wait = if err.retryable {
                    backoff.next_wait(err.retry_after)
                } else {
                    None
                };
                let Some(wait) = wait else {
                    self.metrics.send_failed.increment(batch.spans as u64);
                    if self.failure_log.ready() {
                        tracing::error!(
                            exporter = %self.name,
                            spans = batch.spans,
                            error = %err.message,
                            retryable = err.retryable,
                            "export failed; dropping batch (counted in otelcol_exporter_send_failed_spans)"
                        );
                    }
                    return;
                };
                if self.retry_log.ready() {
                    tracing::warn!(exporter = %self.name, error = %err.message, retry_in = ?wait, "export failed; will retry");
                }
                self.metrics.retries.increment(1);
                tokio::time::sleep(wait).await;
            }
        })
    }
}

/// Fans encoded batches out to every exporter of the pipeline.
pub struct Fanout {
    pub exporters: Vec<Exporter>,
}

impl Fanout {
    pub async fn send(&self, batch: EncodedBatch) {
        for exporter in &self.exporters {
            exporter.enqueue(batch.clone()).await;
        }
    }
}

/// Kept-span messages in flight between the buffer and the batcher.
const PIPELINE_CHANNEL: usize = 1024;

/// The running export pipeline: batcher and exporters.
pub struct Pipeline {
    stop: CancellationToken,
    task: JoinHandle<Fanout>,
}

impl Pipeline {
    /// Starts the batcher over `exporters`; returns the pipeline and the sender its input takes.
    pub fn start(
        exporters: Vec<Exporter>,
        batch: Option<BatchConfig>,
    ) -> (Pipeline, mpsc::Sender<SpanBatch>) {
        let (tx, rx) = mpsc::channel(PIPELINE_CHANNEL);
        let stop = CancellationToken::new();
        let fanout = Fanout { exporters };
        let task = tokio::spawn(Batcher::new(batch).run(rx, fanout, stop.clone()));
        (Pipeline { stop, task }, tx)
    }

    /// Closes the input (later sends fail and are counted by their sender), flushes what was
    /// queued, then lets every exporter drain its queue until `deadline`.
    pub async fn shutdown(self, deadline: tokio::time::Instant) {
        self.stop.cancel();
        let fanout = match tokio::time::timeout_at(deadline, self.task).await {
            Ok(Ok(fanout)) => fanout,
            Ok(Err(e)) => {
                tracing::error!("the batcher failed: {e}");
                return;
            }
            Err(_) => {
                tracing::error!("the batcher did not flush within the grace period");
                return;
            }
        };
        for exporter in fanout.exporters {
            exporter.shutdown(deadline).await;
        }
    }
}

/// The consumer of a pipeline without `tail_sampling`: every accepted span goes straight to the
/// export pipeline, one chunk per resource and scope as received.
pub struct PassThrough {
    out: mpsc::Sender<SpanBatch>,
}

impl PassThrough {
    pub fn new(out: mpsc::Sender<SpanBatch>) -> Self {
        Self { out }
    }
}

impl TraceConsumer for PassThrough {
    fn consume<'a>(&'a self, request: Incoming<'a>) -> BoxFuture<'a, Result<(), Refusal>> {
        Box::pin(async move {
            let origins: Vec<Arc<Origin>> =
                request.parsed.origins.into_iter().map(Arc::new).collect();
            let chunks = chunks_by_origin(&request.parsed.spans, &origins, request.body);
            if chunks.is_empty() {
                return Ok(());
            }
            self.out
                .send(SpanBatch { chunks })
                .await
                .map_err(|_| Refusal::ShuttingDown)
        })
    }
}
