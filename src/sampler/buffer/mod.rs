//! The trace buffer: holds every trace's encoded spans until its decision, decides it on time,
//! and hands kept spans to the export pipeline.
//!
//! Data flow: the receiver parses a request ([`crate::otlp::parse_export_request`]) and the
//! sampler calls
//! [`TraceBuffer::ingest`]. Spans are grouped by trace and by origin (resource + scope), and each
//! group's span bytes are copied into one stored chunk ([`store::Stored`]): a run of spans already
//! framed as `ScopeSpans.spans` fields, so export only wraps it, followed by each span's summary
//! (start, end, status, root, length: [`crate::otlp::SpanSummary`], 21 bytes) so that a decision
//! builds its [`TraceView`] without walking the spans a second time. The chunks of one request are
//! packed into a few shared blocks of up to 64 KiB ([`store::BlockBuilder`]) rather than one
//! allocation each; a kept trace's chunks are copied out of the blocks when it is decided, so
//! nothing that waits for export pins a block, and no buffered span ever pins its request body.
//! With `buffer_compression: zstd` each chunk's run is compressed (see [`store`]) and decompressed
//! once, at decision time.
//!
//! Traces live in shards keyed by trace ID, each behind its own mutex, so receivers on different
//! cores rarely contend. Each shard keeps a FIFO of `(deadline, trace)`: `decision_wait` is the same
//! for every trace, so arrival order is deadline order and the queue needs no heap. One decider
//! task per shard sleeps until the front deadline (tokio time, so tests pause the clock) and
//! decides every expired trace: policies run on a [`TraceView`] of its spans, the decision is
//! remembered in the shard's [`cache::DecisionCache`], kept chunks go to the exporter channel.
//!
//! Spans that arrive after their trace was decided follow the remembered decision: forwarded at
//! once when kept, dropped and counted when not.
//!
//! Limits: `num_traces` and `max_buffered_bytes` (a tailgate extension). The byte count is an
//! estimate of the heap the buffer holds: each stored chunk's allocation and header plus a fixed
//! [`TRACE_OVERHEAD`] per trace for its map slot, queue entry and chunk vector. At either limit
//! the oldest traces are decided early (not dropped): their spans so far are judged by the
//! policies, and their later spans follow that decision. Each early decision is counted (by
//! limit) and logged. With `block_on_overflow` a request that arrives at a limit is refused whole
//! instead, for the client to retry.
//!
//! The code is split by concern: [`shard`] (a shard's state and deadline queues), `ingest`
//! (adding a request's spans), `limits` (`num_traces`, `max_buffered_bytes`,
//! `block_on_overflow`), `decide` (deciders, policies, shutdown drain), `handoff` (taking traces
//! out for another sampler), [`store`] (how chunks are held), [`cache`] (the decision cache) and
//! `counts` (live totals and metric handles).

mod cache;
mod counts;
mod decide;
mod handoff;
mod ingest;
mod limits;
pub mod shard;
pub mod store;

use std::sync::{Arc, MutexGuard, RwLock};
use std::time::Duration;

use tokio::sync::mpsc;

pub use cache::{fingerprint, IdBuildHasher, Remembered};
pub use handoff::{Carried, HandedTrace};

use crate::otlp::SpanBatch;
use crate::policy::PolicySet;
use crate::telemetry::LogEvery;
use counts::{BufferMetrics, LiveCounts};
use shard::{Shard, ShardState, SHARDS};
use store::Codec;

/// Bytes counted per buffered trace besides its chunks: its map slot (key and entry, at the map's
/// typical load), its queue entry and its chunk vector's spare room.
pub const TRACE_OVERHEAD: usize = 192;

/// `buffer_compression` (a tailgate extension): how buffered span bytes are held.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum BufferCompression {
    #[default]
    None,
    Zstd,
}

/// Buffer limits and timing, from `processors.tail_sampling`.
#[derive(Debug, Clone)]
pub struct BufferSettings {
    pub decision_wait: Duration,
    /// `decision_wait_after_root_received`; zero when off.
    pub wait_after_root: Duration,
    /// `maximum_trace_size_bytes`; zero when off.
    pub max_trace_bytes: usize,
    /// `block_on_overflow`.
    pub block_on_overflow: bool,
    pub num_traces: usize,
    /// `max_buffered_bytes` (tailgate extension); zero when off.
    pub max_buffered_bytes: usize,
    /// `buffer_compression` (tailgate extension).
    pub compression: BufferCompression,
    pub sampled_cache_size: usize,
    pub non_sampled_cache_size: usize,
    pub drop_pending_on_shutdown: bool,
    /// `dry_run` (a tailgate extension, as Refinery offers): every trace is forwarded, each span
    /// carrying `tailsampling.sampled` with the decision that would have been taken.
    pub dry_run: bool,
    /// `record_policy` (the Collector's `processor.tailsamplingprocessor.recordpolicy` feature
    /// gate): a kept trace's scopes carry `tailsampling.policy`, the policy that kept it.
    pub record_policy: bool,
}

/// What happened to the spans of one request.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct IngestOutcome {
    /// Spans added to buffered traces (new or existing).
    pub buffered: usize,
    /// Late spans of kept traces, forwarded at once.
    pub forwarded_late: usize,
    /// Late spans of traces decided not sampled, dropped.
    pub dropped_late: usize,
    /// Traces decided before their deadline because `num_traces` was reached.
    pub decided_early: usize,
    /// Traces decided before their deadline because `max_buffered_bytes` was reached.
    pub decided_early_for_bytes: usize,
    /// Traces that passed `maximum_trace_size_bytes` and were decided not sampled.
    pub too_large: usize,
}

/// The buffer is full and `block_on_overflow` is set: the client should retry later.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("the trace buffer is full (num_traces or max_buffered_bytes reached); retry later")]
pub struct Overflow;

/// The sharded trace store and its deciders.
pub struct TraceBuffer {
    metrics: BufferMetrics,
    shards: Box<[Shard]>,
    /// Swapped whole by [`TraceBuffer::reload`]; read once per request or decision round.
    settings: RwLock<Arc<BufferSettings>>,
    policies: RwLock<Arc<PolicySet>>,
    codec: Codec,
    counts: LiveCounts,
    out: mpsc::Sender<SpanBatch>,
    /// Notified when decisions free room (requests waiting under `block_on_overflow`).
    room: tokio::sync::Notify,
    early_log: LogEvery,
    late_drop_log: LogEvery,
    too_large_log: LogEvery,
    overflow_log: LogEvery,
    closed_log: LogEvery,
}

impl TraceBuffer {
    pub fn new(
        settings: BufferSettings,
        policies: PolicySet,
        out: mpsc::Sender<SpanBatch>,
    ) -> Arc<Self> {
        let per_shard = |n: usize| n.div_ceil(SHARDS);
        let shards = (0..SHARDS)
            .map(|_| {
                Shard::new(
                    per_shard(settings.sampled_cache_size),
                    per_shard(settings.non_sampled_cache_size),
                )
            })
            .collect();
        let log = || LogEvery::new(Duration::from_secs(10));
        show_limits(&settings);
        Arc::new(Self {
            metrics: BufferMetrics::register(),
            shards,
            codec: Codec::new(settings.compression == BufferCompression::Zstd),
            settings: RwLock::new(Arc::new(settings)),
            policies: RwLock::new(Arc::new(policies)),
            counts: LiveCounts::default(),
            out,
            room: tokio::sync::Notify::new(),
            early_log: log(),
            late_drop_log: log(),
            too_large_log: log(),
            overflow_log: log(),
            closed_log: log(),
        })
    }

    /// The settings in force.
    pub(super) fn settings(&self) -> Arc<BufferSettings> {
        Arc::clone(&self.settings.read().unwrap_or_else(|p| p.into_inner()))
    }

    /// The policies in force.
    pub(super) fn policies(&self) -> Arc<PolicySet> {
        Arc::clone(&self.policies.read().unwrap_or_else(|p| p.into_inner()))
    }

    /// Applies a reloaded configuration from now on: new traces wait the new `decision_wait`,
    /// the limits and flags apply to the next request, and every trace still buffered is
    /// decided by the new policies when it is due. Buffered traces keep their deadlines. The
    /// cache sizes and `buffer_compression` are fixed when the buffer is built and are not
    /// changed here (the caller refuses a reload that changes them).
    pub fn reload(&self, settings: BufferSettings, policies: PolicySet) {
        *self.policies.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(policies);
        *self.settings.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(settings);
        show_limits(&self.settings());
        for shard in self.shards.iter() {
            // A shorter wait may make a shard's front due sooner than its decider sleeps.
            shard.wake.notify_one();
        }
    }

    fn lock(&self, shard: usize) -> MutexGuard<'_, ShardState> {
        // A panic while holding a shard lock is a bug; keep serving the other traces.
        self.shards[shard]
            .state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Traces currently buffered.
    pub fn live_traces(&self) -> usize {
        self.counts.traces()
    }

    /// Spans currently buffered.
    pub fn buffered_spans(&self) -> usize {
        self.counts.spans()
    }

    /// Memory currently counted against `max_buffered_bytes` (see the module docs).
    pub fn buffered_bytes(&self) -> usize {
        self.counts.bytes()
    }

    /// Whether the dictionary of `buffer_compression: zstd` is trained (for tests and benches).
    pub fn has_compression_dictionary(&self) -> bool {
        self.codec.has_dictionary()
    }

    fn count_outcome(&self, outcome: &IngestOutcome) {
        if outcome.too_large > 0 {
            self.metrics.too_large.increment(outcome.too_large as u64);
            if self.too_large_log.ready() {
                tracing::warn!(
                    traces = outcome.too_large,
                    limit = self.settings().max_trace_bytes,
                    "traces exceeded maximum_trace_size_bytes: decided not sampled (counted in tailgate_traces_too_large_total)"
                );
            }
        }
        if outcome.forwarded_late > 0 {
            let spans = outcome.forwarded_late as u64;
            self.metrics.late_sampled.increment(spans);
            self.metrics.early_release_sampled.increment(spans);
        }
        if outcome.dropped_late > 0 {
            let spans = outcome.dropped_late as u64;
            self.metrics.late_not_sampled.increment(spans);
            self.metrics.early_release_not_sampled.increment(spans);
            if !self.settings().dry_run && self.late_drop_log.ready() {
                tracing::info!(
                    spans = outcome.dropped_late,
                    "dropped late spans of traces already decided not sampled (counted in tailgate_late_spans_total)"
                );
            }
        }
        if outcome.decided_early > 0 {
            self.metrics
                .early_num_traces
                .increment(outcome.decided_early as u64);
        }
        if outcome.decided_early_for_bytes > 0 {
            self.metrics
                .early_bytes
                .increment(outcome.decided_early_for_bytes as u64);
        }
        if (outcome.decided_early > 0 || outcome.decided_early_for_bytes > 0)
            && self.early_log.ready()
        {
            tracing::warn!(
                num_traces = self.settings().num_traces,
                max_buffered_bytes = self.settings().max_buffered_bytes,
                traces_at_num_traces = outcome.decided_early,
                traces_at_max_buffered_bytes = outcome.decided_early_for_bytes,
                "buffer full: deciding the oldest traces before decision_wait (counted in tailgate_traces_decided_early_total)"
            );
        }
    }

    fn update_gauges(&self) {
        self.metrics.traces_on_memory.set(self.live_traces() as f64);
        self.metrics
            .buffered_spans
            .set(self.buffered_spans() as f64);
        self.metrics
            .buffered_bytes
            .set(self.buffered_bytes() as f64);
    }

    /// Hands kept spans to the export pipeline.
    async fn send(&self, kept: SpanBatch) {
        let spans = kept.span_count();
        if self.out.send(kept).await.is_err() {
            // Only after the pipeline was closed at shutdown; never silently.
            self.metrics.dropped_pipeline_closed.increment(spans as u64);
            if self.closed_log.ready() {
                tracing::error!(
                    spans,
                    "export pipeline closed; dropping kept spans (counted in tailgate_spans_dropped_total)"
                );
            }
        }
    }
}

#[cfg(test)]
mod tests;

/// The buffer's configured limits as gauges, so dashboards and alerts can show how full it is
/// (`otelcol_processor_tail_sampling_sampling_traces_on_memory` against `num_traces`,
/// `tailgate_buffered_bytes` against `max_buffered_bytes`) and how long traces wait.
fn show_limits(settings: &BufferSettings) {
    use crate::telemetry::catalog;
    catalog::BUFFER_MAX_TRACES
        .gauge(&[])
        .set(settings.num_traces as f64);
    if settings.max_buffered_bytes > 0 {
        // Absent when unset: alerts divide by it.
        catalog::BUFFER_MAX_BYTES
            .gauge(&[])
            .set(settings.max_buffered_bytes as f64);
    }
    catalog::DECISION_WAIT
        .gauge(&[])
        .set(settings.decision_wait.as_secs_f64());
}
