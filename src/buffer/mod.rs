//! The trace buffer: holds every trace's encoded spans until its decision, decides it on time,
//! and hands kept spans to the export pipeline.
//!
//! Data flow: the receiver parses a request ([`crate::wire::parse_export_request`]) and calls
//! [`TraceBuffer::ingest`]. Spans are grouped by trace and by origin (resource + scope), and each
//! group's span bytes are copied into one stored chunk ([`store::Stored`]): a run of spans already
//! framed as `ScopeSpans.spans` fields, so export only wraps it, followed by each span's summary
//! (start, end, status, root, length: [`crate::wire::SpanSummary`], 21 bytes) so that a decision
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

mod cache;
mod config;
pub mod store;

use std::collections::hash_map::Entry;
use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use tokio::sync::{mpsc, Notify};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

pub use cache::{fingerprint, IdBuildHasher, Remembered};
pub use config::{BufferCompression, DecisionCacheConfig, TailSamplingConfig};

use crate::policy::{FinalDecision, PolicySet, SpanRecord, TraceView};
use crate::telemetry::LogEvery;
use crate::wire::{self, Origin, ParsedRequest, SpanRef, SpanSummary, TraceId};
use store::{BlockBuilder, Codec, Stored};

const SHARDS: usize = 16;
/// Traces decided per lock acquisition, so a burst of deadlines does not starve receivers.
const DECIDE_BATCH: usize = 512;
/// Bytes counted per buffered trace besides its chunks: its map slot (key and entry, at the map's
/// typical load), its queue entry and its chunk vector's spare room.
pub const TRACE_OVERHEAD: usize = 192;

/// A run of one trace's spans from one origin, framed as `ScopeSpans.spans` fields.
#[derive(Debug, Clone)]
pub struct Chunk {
    pub origin: Arc<Origin>,
    pub run: Box<[u8]>,
    pub spans: u32,
}

impl Chunk {
    /// Builds a chunk from spans of one request. `spans` are byte ranges in `body`.
    pub fn from_spans(origin: Arc<Origin>, body: &[u8], spans: &[(usize, usize)]) -> Chunk {
        let size: usize = spans
            .iter()
            .map(|&(a, b)| wire::len_field_size(b - a))
            .sum();
        let mut run = Vec::with_capacity(size);
        for &(a, b) in spans {
            wire::put_framed_span(&mut run, &body[a..b]);
        }
        Chunk {
            origin,
            run: run.into_boxed_slice(),
            spans: spans.len() as u32,
        }
    }

    /// Each framed span's encoded `Span` bytes.
    pub fn spans(&self) -> impl Iterator<Item = &[u8]> {
        wire::framed_spans(&self.run)
    }
}

/// Spans on their way to export: a whole kept trace, late spans of one, or (without
/// `tail_sampling`) everything received.
#[derive(Debug, Default)]
pub struct Kept {
    pub chunks: Vec<Chunk>,
}

impl Kept {
    pub fn span_count(&self) -> usize {
        self.chunks.iter().map(|c| c.spans as usize).sum()
    }
}

/// Buffer limits and timing, from [`TailSamplingConfig`].
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
}

impl From<&TailSamplingConfig> for BufferSettings {
    fn from(c: &TailSamplingConfig) -> Self {
        Self {
            decision_wait: c.decision_wait,
            wait_after_root: c.decision_wait_after_root_received,
            max_trace_bytes: c.maximum_trace_size_bytes as usize,
            block_on_overflow: c.block_on_overflow,
            num_traces: c.num_traces as usize,
            max_buffered_bytes: c.max_buffered_bytes as usize,
            compression: c.buffer_compression,
            sampled_cache_size: c.sampled_cache_size(),
            non_sampled_cache_size: c.non_sampled_cache_size(),
            drop_pending_on_shutdown: c.drop_pending_traces_on_shutdown,
        }
    }
}

struct TraceEntry {
    deadline: Instant,
    chunks: Vec<Stored>,
    spans: u32,
    /// Encoded span bytes as received (what `maximum_trace_size_bytes` limits).
    bytes: usize,
    /// Memory counted against `max_buffered_bytes`.
    memory: usize,
}

struct ShardState {
    traces: HashMap<TraceId, TraceEntry, IdBuildHasher>,
    /// `(deadline, trace)` in arrival order; deadlines are `arrival + decision_wait`.
    queue: VecDeque<(Instant, TraceId)>,
    /// `(deadline, trace)` for traces whose root span arrived, deadlines
    /// `root arrival + decision_wait_after_root_received`: also in deadline order.
    root_queue: VecDeque<(Instant, TraceId)>,
    cache: cache::DecisionCache,
}

/// Pops queue entries whose trace is gone or has since been given another deadline, so the
/// front is live. Returns the front deadline.
fn live_front(
    queue: &mut VecDeque<(Instant, TraceId)>,
    traces: &HashMap<TraceId, TraceEntry, IdBuildHasher>,
) -> Option<Instant> {
    while let Some(&(deadline, id)) = queue.front() {
        match traces.get(&id) {
            Some(entry) if entry.deadline == deadline => return Some(deadline),
            _ => {
                queue.pop_front();
            }
        }
    }
    None
}

impl ShardState {
    /// The earliest live deadline in the shard.
    fn front_deadline(&mut self) -> Option<Instant> {
        let a = live_front(&mut self.queue, &self.traces);
        let b = live_front(&mut self.root_queue, &self.traces);
        match (a, b) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// Removes and returns the trace with the earliest deadline if it is due by `now`.
    fn pop_due(&mut self, now: Instant) -> Option<(TraceId, TraceEntry)> {
        // A queue front is checked against the map only once it is due: a stale front (a trace
        // removed early, or moved to the root queue) is then skipped.
        loop {
            let a = self.queue.front().map(|&(d, _)| d);
            let b = self.root_queue.front().map(|&(d, _)| d);
            let queue = match (a, b) {
                (Some(a), Some(b)) if b < a => &mut self.root_queue,
                (Some(_), _) => &mut self.queue,
                (None, Some(_)) => &mut self.root_queue,
                (None, None) => return None,
            };
            let &(deadline, id) = queue.front()?;
            if deadline > now {
                return None;
            }
            queue.pop_front();
            if let Entry::Occupied(entry) = self.traces.entry(id) {
                if entry.get().deadline == deadline {
                    return Some((id, entry.remove()));
                }
            }
        }
    }
}

struct Shard {
    state: Mutex<ShardState>,
    wake: Notify,
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

/// Metric handles used on every request or decision, registered once: looking a metric up by
/// name and labels on each use costs more than the update.
struct BufferMetrics {
    new_traces: metrics::Counter,
    traces_sampled: metrics::Counter,
    traces_not_sampled: metrics::Counter,
    spans_not_sampled: metrics::Counter,
    decision_lateness: metrics::Histogram,
    traces_on_memory: metrics::Gauge,
    buffered_spans: metrics::Gauge,
    buffered_bytes: metrics::Gauge,
    too_large: metrics::Counter,
    late_sampled: metrics::Counter,
    late_not_sampled: metrics::Counter,
    early_num_traces: metrics::Counter,
    early_bytes: metrics::Counter,
    refusals: metrics::Counter,
}

impl BufferMetrics {
    fn register() -> Self {
        const SAMPLED: &str = "otelcol_processor_tail_sampling_global_count_traces_sampled";
        const LATE: &str = "tailgate_late_spans_total";
        const EARLY: &str = "tailgate_traces_decided_early_total";
        Self {
            new_traces: metrics::counter!("otelcol_processor_tail_sampling_new_trace_id_received"),
            traces_sampled: metrics::counter!(SAMPLED, "sampled" => "true"),
            traces_not_sampled: metrics::counter!(SAMPLED, "sampled" => "false"),
            spans_not_sampled: metrics::counter!("tailgate_spans_not_sampled_total"),
            decision_lateness: metrics::histogram!("tailgate_decision_lateness_seconds"),
            traces_on_memory: metrics::gauge!(
                "otelcol_processor_tail_sampling_sampling_traces_on_memory"
            ),
            buffered_spans: metrics::gauge!("tailgate_buffered_spans"),
            buffered_bytes: metrics::gauge!("tailgate_buffered_bytes"),
            too_large: metrics::counter!("tailgate_traces_too_large_total"),
            late_sampled: metrics::counter!(LATE, "decision" => "sampled"),
            late_not_sampled: metrics::counter!(LATE, "decision" => "not_sampled"),
            early_num_traces: metrics::counter!(EARLY, "reason" => "num_traces"),
            early_bytes: metrics::counter!(EARLY, "reason" => "max_buffered_bytes"),
            refusals: metrics::counter!("tailgate_buffer_overflow_refusals_total"),
        }
    }
}

/// The sharded trace store and its deciders.
pub struct TraceBuffer {
    metrics: BufferMetrics,
    shards: Box<[Shard]>,
    settings: BufferSettings,
    policies: PolicySet,
    codec: Codec,
    live_traces: AtomicUsize,
    buffered_spans: AtomicUsize,
    buffered_bytes: AtomicUsize,
    out: mpsc::Sender<Kept>,
    early_log: LogEvery,
    late_drop_log: LogEvery,
    too_large_log: LogEvery,
    overflow_log: LogEvery,
}

/// Which shard holds a trace. Trace IDs are random; the last bytes are as good as a hash.
fn shard_of(id: &TraceId) -> usize {
    (id[15] as usize ^ id[7] as usize) % SHARDS
}

/// Additions to the live counts not yet published (see [`TraceBuffer::publish`]).
#[derive(Default)]
struct Added {
    traces: usize,
    spans: usize,
    bytes: usize,
}

/// One trace's spans from one request, as stored chunks (see [`TraceBuffer::ingest`]).
struct Incoming {
    id: TraceId,
    /// Chunks in the request's `stored` vector: the next `chunks` of them.
    chunks: usize,
    spans: u32,
    bytes: usize,
    memory: usize,
    has_root: bool,
}

impl TraceBuffer {
    pub fn new(
        settings: BufferSettings,
        policies: PolicySet,
        out: mpsc::Sender<Kept>,
    ) -> Arc<Self> {
        let per_shard = |n: usize| n.div_ceil(SHARDS);
        let shards = (0..SHARDS)
            .map(|_| Shard {
                state: Mutex::new(ShardState {
                    traces: HashMap::default(),
                    queue: VecDeque::new(),
                    root_queue: VecDeque::new(),
                    cache: cache::DecisionCache::new(
                        per_shard(settings.sampled_cache_size),
                        per_shard(settings.non_sampled_cache_size),
                    ),
                }),
                wake: Notify::new(),
            })
            .collect();
        Arc::new(Self {
            metrics: BufferMetrics::register(),
            shards,
            codec: Codec::new(settings.compression == BufferCompression::Zstd),
            settings,
            policies,
            live_traces: AtomicUsize::new(0),
            buffered_spans: AtomicUsize::new(0),
            buffered_bytes: AtomicUsize::new(0),
            out,
            early_log: LogEvery::new(Duration::from_secs(10)),
            late_drop_log: LogEvery::new(Duration::from_secs(10)),
            too_large_log: LogEvery::new(Duration::from_secs(10)),
            overflow_log: LogEvery::new(Duration::from_secs(10)),
        })
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
        self.live_traces.load(Ordering::Relaxed)
    }

    /// Spans currently buffered.
    pub fn buffered_spans(&self) -> usize {
        self.buffered_spans.load(Ordering::Relaxed)
    }

    /// Memory currently counted against `max_buffered_bytes` (see the module docs).
    pub fn buffered_bytes(&self) -> usize {
        self.buffered_bytes.load(Ordering::Relaxed)
    }

    /// Whether the dictionary of `buffer_compression: zstd` is trained (for tests and benches).
    pub fn has_compression_dictionary(&self) -> bool {
        self.codec.has_dictionary()
    }

    fn over_traces(&self) -> bool {
        self.live_traces() > self.settings.num_traces
    }

    /// Over `max_buffered_bytes`, and so due to decide traces early. Not with
    /// `block_on_overflow`: there, a request accepted just under the limit may take the buffer
    /// past it by its own size, and the requests after it are refused until decisions make room.
    fn over_bytes(&self) -> bool {
        !self.settings.block_on_overflow
            && self.settings.max_buffered_bytes > 0
            && self.buffered_bytes() > self.settings.max_buffered_bytes
    }

    /// Adds a parsed request's spans to their traces. Kept spans that result (late spans of kept
    /// traces, traces decided early at a limit) are sent to the exporter before returning, so a
    /// slow exporter pushes back on the client.
    ///
    /// With `block_on_overflow`, a request that arrives while the buffer holds `num_traces`
    /// traces or `max_buffered_bytes` bytes is refused whole ([`Overflow`]) for the client to
    /// retry.
    pub async fn ingest(
        &self,
        request: ParsedRequest,
        body: &[u8],
    ) -> Result<IngestOutcome, Overflow> {
        let mut outcome = IngestOutcome::default();
        if request.spans.is_empty() {
            return Ok(outcome);
        }
        if self.settings.block_on_overflow {
            let full_bytes = self.settings.max_buffered_bytes > 0
                && self.buffered_bytes() >= self.settings.max_buffered_bytes;
            if full_bytes || self.live_traces() >= self.settings.num_traces {
                self.metrics.refusals.increment(1);
                if self.overflow_log.ready() {
                    tracing::warn!(
                        num_traces = self.settings.num_traces,
                        max_buffered_bytes = self.settings.max_buffered_bytes,
                        "buffer full with block_on_overflow: refusing requests with a retryable status"
                    );
                }
                return Err(Overflow);
            }
        }
        let origins: Vec<Arc<Origin>> = request.origins.into_iter().map(Arc::new).collect();
        let (incoming, stored) = self.store_by_trace(&request.spans, &origins, body);
        let mut stored = stored.into_iter();
        let now = Instant::now();
        let mut kept = Vec::new();
        let mut new_traces = 0usize;
        let mut start = 0;
        while start < incoming.len() {
            let shard = shard_of(&incoming[start].id);
            let end = start
                + incoming[start..]
                    .iter()
                    .take_while(|g| shard_of(&g.id) == shard)
                    .count();
            let mut wake = false;
            // Counts added under this shard's lock, published once after it (atomics are shared
            // by every core; one update per request instead of per trace).
            let mut added = Added::default();
            {
                let mut guard = self.lock(shard);
                let ShardState {
                    traces,
                    queue,
                    root_queue,
                    cache,
                } = &mut *guard;
                for group in &incoming[start..end] {
                    let chunks = stored.by_ref().take(group.chunks);
                    let id = group.id;
                    let entry = match traces.entry(id) {
                        Entry::Occupied(entry) => entry.into_mut(),
                        Entry::Vacant(vacant) => match cache.get(&id) {
                            Some(Remembered::Sampled) => {
                                outcome.forwarded_late += group.spans as usize;
                                kept.extend(chunks.map(|c| c.into_chunk(&self.codec, None)));
                                continue;
                            }
                            Some(Remembered::NotSampled) => {
                                outcome.dropped_late += group.spans as usize;
                                chunks.for_each(drop);
                                continue;
                            }
                            None => {
                                let deadline = now + self.settings.decision_wait;
                                wake |= queue.is_empty();
                                queue.push_back((deadline, id));
                                new_traces += 1;
                                added.traces += 1;
                                added.bytes += TRACE_OVERHEAD;
                                vacant.insert(TraceEntry {
                                    deadline,
                                    chunks: Vec::new(),
                                    spans: 0,
                                    bytes: 0,
                                    memory: TRACE_OVERHEAD,
                                })
                            }
                        },
                    };
                    entry.chunks.extend(chunks);
                    entry.spans += group.spans;
                    entry.bytes += group.bytes;
                    entry.memory += group.memory;
                    added.spans += group.spans as usize;
                    added.bytes += group.memory;
                    outcome.buffered += group.spans as usize;
                    if group.has_root && !self.settings.wait_after_root.is_zero() {
                        let root_deadline = now + self.settings.wait_after_root;
                        if root_deadline < entry.deadline {
                            entry.deadline = root_deadline;
                            wake |= root_queue.is_empty();
                            root_queue.push_back((root_deadline, id));
                        }
                    }
                    if self.settings.max_trace_bytes > 0
                        && entry.bytes > self.settings.max_trace_bytes
                    {
                        let entry = traces.remove(&id).expect("present");
                        self.publish(std::mem::take(&mut added));
                        self.release(&entry);
                        cache.remember_buffered(&id, Remembered::NotSampled);
                        outcome.too_large += 1;
                        self.metrics
                            .spans_not_sampled
                            .increment(u64::from(entry.spans));
                    }
                }
            }
            self.publish(added);
            if wake {
                self.shards[shard].wake.notify_one();
            }
            start = end;
        }
        self.metrics.new_traces.increment(new_traces as u64);
        if self.over_traces() || self.over_bytes() {
            self.decide_early(&mut kept, &mut outcome);
        }
        self.count_outcome(&outcome);
        self.update_gauges();
        if !kept.is_empty() {
            self.send(Kept { chunks: kept }).await;
        }
        Ok(outcome)
    }

    /// Groups a request's spans by trace and origin into stored chunks (compressed when
    /// configured), outside any lock. Traces come out ordered by shard; each [`Incoming`] owns
    /// the next `chunks` entries of the returned vector.
    fn store_by_trace(
        &self,
        spans: &[SpanRef],
        origins: &[Arc<Origin>],
        body: &[u8],
    ) -> (Vec<Incoming>, Vec<Stored>) {
        let raw_bytes: usize = spans.iter().map(|s| s.range.1 - s.range.0).sum();
        let mut block = BlockBuilder::new(&self.codec, spans.len(), raw_bytes);
        let mut incoming: Vec<Incoming> = Vec::new();
        let mut ranges = Vec::new();
        let mut summaries = Vec::new();
        for_each_trace_run(spans, |trace_id, origin, run| {
            ranges.clear();
            summaries.clear();
            let mut has_root = false;
            for s in run {
                ranges.push(s.range);
                summaries.push(SpanSummary::of(&s.info, s.range.1 - s.range.0));
                has_root |= s.info.is_root;
            }
            let size = block.push(Arc::clone(&origins[origin]), body, &ranges, &summaries);
            match incoming.last_mut() {
                Some(last) if last.id == trace_id => {
                    last.chunks += 1;
                    last.spans += size.spans;
                    last.bytes += size.run_len;
                    last.memory += size.memory;
                    last.has_root |= has_root;
                }
                _ => incoming.push(Incoming {
                    id: trace_id,
                    chunks: 1,
                    spans: size.spans,
                    bytes: size.run_len,
                    memory: size.memory,
                    has_root,
                }),
            }
        });
        (incoming, block.finish())
    }

    /// Adds newly buffered traces, spans and bytes to the live counts.
    fn publish(&self, added: Added) {
        if added.traces > 0 {
            self.live_traces.fetch_add(added.traces, Ordering::Relaxed);
        }
        if added.spans > 0 {
            self.buffered_spans
                .fetch_add(added.spans, Ordering::Relaxed);
        }
        if added.bytes > 0 {
            self.buffered_bytes
                .fetch_add(added.bytes, Ordering::Relaxed);
        }
    }

    /// Takes a removed trace out of the live counts.
    fn release(&self, entry: &TraceEntry) {
        self.live_traces.fetch_sub(1, Ordering::Relaxed);
        self.buffered_spans
            .fetch_sub(entry.spans as usize, Ordering::Relaxed);
        self.buffered_bytes
            .fetch_sub(entry.memory, Ordering::Relaxed);
    }

    fn count_outcome(&self, outcome: &IngestOutcome) {
        if outcome.too_large > 0 {
            self.metrics.too_large.increment(outcome.too_large as u64);
            if self.too_large_log.ready() {
                tracing::warn!(
                    traces = outcome.too_large,
                    limit = self.settings.max_trace_bytes,
                    "traces exceeded maximum_trace_size_bytes: decided not sampled (counted in tailgate_traces_too_large_total)"
                );
            }
        }
        if outcome.forwarded_late > 0 {
            self.metrics
                .late_sampled
                .increment(outcome.forwarded_late as u64);
        }
        if outcome.dropped_late > 0 {
            self.metrics
                .late_not_sampled
                .increment(outcome.dropped_late as u64);
            if self.late_drop_log.ready() {
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
                num_traces = self.settings.num_traces,
                max_buffered_bytes = self.settings.max_buffered_bytes,
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

    async fn send(&self, kept: Kept) {
        let spans = kept.span_count();
        if self.out.send(kept).await.is_err() {
            // Only during shutdown after the pipeline stopped; never silently.
            metrics::counter!("tailgate_spans_dropped_total", "reason" => "pipeline_closed")
                .increment(spans as u64);
            tracing::error!(spans, "export pipeline closed; dropping kept spans");
        }
    }

    /// Decides the oldest traces now until the buffer is back within `num_traces` and
    /// `max_buffered_bytes`. Takes the shard with the oldest front deadline and decides its
    /// traces while they are older than every other shard's front, so the traces go about in
    /// global age order with one lock acquisition per run rather than per trace.
    fn decide_early(&self, kept: &mut Vec<Chunk>, outcome: &mut IngestOutcome) {
        let mut fronts: Vec<(Instant, usize)> = Vec::with_capacity(SHARDS);
        while self.over_traces() || self.over_bytes() {
            fronts.clear();
            for shard in 0..SHARDS {
                if let Some(deadline) = self.lock(shard).front_deadline() {
                    fronts.push((deadline, shard));
                }
            }
            fronts.sort_unstable();
            let Some(&(_, shard)) = fronts.first() else {
                return;
            };
            let next_front = fronts.get(1).map(|&(deadline, _)| deadline);
            let mut state = self.lock(shard);
            let mut decided = 0;
            loop {
                let for_traces = self.over_traces();
                if !for_traces && !self.over_bytes() {
                    break;
                }
                let Some(front) = state.front_deadline() else {
                    break;
                };
                if decided > 0 && next_front.is_some_and(|next| front > next) {
                    break;
                }
                let Some((id, entry)) = state.pop_due(front) else {
                    break;
                };
                if let Some(chunks) = self.decide(&mut state, id, entry) {
                    kept.extend(chunks);
                }
                if for_traces {
                    outcome.decided_early += 1;
                } else {
                    outcome.decided_early_for_bytes += 1;
                }
                decided += 1;
            }
            if decided == 0 {
                return;
            }
        }
    }

    /// Runs the policies on one trace (removed from the map by the caller), remembers the
    /// decision and returns the chunks to export when kept.
    fn decide(&self, state: &mut ShardState, id: TraceId, entry: TraceEntry) -> Option<Vec<Chunk>> {
        self.release(&entry);
        let spans = entry.spans;
        let kept = self.evaluate(id, entry.chunks);
        if kept.is_some() {
            self.metrics.traces_sampled.increment(1);
            state.cache.remember_buffered(&id, Remembered::Sampled);
        } else {
            self.metrics.traces_not_sampled.increment(1);
            state.cache.remember_buffered(&id, Remembered::NotSampled);
            self.metrics.spans_not_sampled.increment(u64::from(spans));
        }
        kept
    }

    /// Builds the trace's view from its stored chunks (decompressing them when compressed),
    /// runs the policies, and returns the chunks for export when the trace is sampled.
    fn evaluate(&self, id: TraceId, stored: Vec<Stored>) -> Option<Vec<Chunk>> {
        let decompressed: Vec<Option<Box<[u8]>>> = if self.codec.compresses() {
            stored
                .iter()
                .map(|s| s.raw_run().is_none().then(|| self.codec.decompress(s)))
                .collect()
        } else {
            Vec::new()
        };
        let decision = {
            let total: u32 = stored.iter().map(|s| s.spans).sum();
            let mut spans = Vec::with_capacity(total as usize);
            for (i, chunk) in stored.iter().enumerate() {
                let run = match decompressed.get(i) {
                    Some(Some(run)) => &run[..],
                    _ => chunk.raw_run().expect("not compressed"),
                };
                // The summaries' lengths locate each span: the run's bytes are not read here.
                let mut end = 0;
                for summary in chunk.summaries() {
                    let start = end;
                    end += summary.framed_len();
                    let bytes = &run[end - summary.len as usize..end];
                    debug_assert_eq!(run[start], 0x12, "a framed span starts here");
                    spans.push(SpanRecord {
                        origin: &chunk.origin,
                        bytes,
                        info: summary.info(id, bytes),
                    });
                }
            }
            self.policies.decide(&TraceView {
                trace_id: id,
                spans,
            })
        };
        if decision != FinalDecision::Sampled {
            return None;
        }
        let mut decompressed = decompressed.into_iter();
        Some(
            stored
                .into_iter()
                .map(|s| s.into_chunk(&self.codec, decompressed.next().flatten()))
                .collect(),
        )
    }

    /// Starts one decider task per shard. They stop when `shutdown` is cancelled; call
    /// [`TraceBuffer::drain`] afterwards to settle what is still buffered.
    pub fn spawn_deciders(
        self: &Arc<Self>,
        shutdown: CancellationToken,
    ) -> Vec<tokio::task::JoinHandle<()>> {
        (0..SHARDS)
            .map(|shard| {
                let buffer = Arc::clone(self);
                let shutdown = shutdown.clone();
                tokio::spawn(async move { buffer.run_decider(shard, shutdown).await })
            })
            .collect()
    }

    async fn run_decider(&self, shard: usize, shutdown: CancellationToken) {
        loop {
            let now = Instant::now();
            let (kept, decided, next) = {
                let mut state = self.lock(shard);
                let mut kept = Vec::new();
                let mut decided = 0;
                while decided < DECIDE_BATCH {
                    let Some((id, entry)) = state.pop_due(now) else {
                        break;
                    };
                    self.metrics
                        .decision_lateness
                        .record((now - entry.deadline).as_secs_f64());
                    if let Some(chunks) = self.decide(&mut state, id, entry) {
                        kept.extend(chunks);
                    }
                    decided += 1;
                }
                (kept, decided, state.front_deadline())
            };
            if decided > 0 {
                self.update_gauges();
            }
            if !kept.is_empty() {
                self.send(Kept { chunks: kept }).await;
            }
            if decided == DECIDE_BATCH {
                continue;
            }
            let wake = &self.shards[shard].wake;
            // Woken by a new earliest deadline (a first trace, or a root span's shorter wait).
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = wake.notified() => {}
                _ = tokio::time::sleep_until(next.unwrap_or(now)), if next.is_some() => {}
            }
        }
    }

    /// Removes every buffered trace whose ID satisfies `hand_off` and returns its spans, for a
    /// sampler that no longer owns those traces to send them to their new owner. The traces are
    /// not decided here and nothing is remembered about them.
    pub fn take_traces(&self, hand_off: impl Fn(&TraceId) -> bool) -> Vec<(TraceId, Vec<Chunk>)> {
        let mut taken = Vec::new();
        for shard in 0..SHARDS {
            let mut state = self.lock(shard);
            let ids: Vec<TraceId> = state
                .traces
                .keys()
                .filter(|id| hand_off(id))
                .copied()
                .collect();
            for id in ids {
                if let Some(entry) = state.traces.remove(&id) {
                    self.release(&entry);
                    let chunks = entry
                        .chunks
                        .into_iter()
                        .map(|s| s.into_chunk(&self.codec, None))
                        .collect();
                    taken.push((id, chunks));
                }
            }
        }
        self.update_gauges();
        taken
    }

    /// Settles every buffered trace at shutdown: decides it now, or with
    /// `drop_pending_traces_on_shutdown` drops it (counted and logged).
    pub async fn drain(&self) {
        let mut dropped_traces = 0usize;
        let mut dropped_spans = 0usize;
        for shard in 0..SHARDS {
            let kept = {
                let mut state = self.lock(shard);
                let mut kept = Vec::new();
                let far_future = Instant::now() + Duration::from_secs(86_400 * 365);
                while let Some((id, entry)) = state.pop_due(far_future) {
                    if self.settings.drop_pending_on_shutdown {
                        self.release(&entry);
                        dropped_traces += 1;
                        dropped_spans += entry.spans as usize;
                    } else if let Some(chunks) = self.decide(&mut state, id, entry) {
                        kept.extend(chunks);
                    }
                }
                kept
            };
            if !kept.is_empty() {
                self.send(Kept { chunks: kept }).await;
            }
        }
        if dropped_traces > 0 {
            metrics::counter!("tailgate_spans_dropped_total", "reason" => "shutdown")
                .increment(dropped_spans as u64);
            tracing::warn!(
                traces = dropped_traces,
                spans = dropped_spans,
                "drop_pending_traces_on_shutdown: dropped undecided traces"
            );
        }
        self.update_gauges();
    }
}

/// Calls `f(trace ID, origin index, spans)` for every run of a request's spans that share a
/// trace and an origin, in arrival order within the run. Traces come ordered by buffer shard,
/// and a trace's runs are consecutive.
fn for_each_trace_run<'s>(
    spans: &'s [SpanRef],
    mut f: impl FnMut(TraceId, usize, &mut dyn Iterator<Item = &'s SpanRef>),
) {
    // Sort span indexes by (shard, trace, origin, arrival), with the keys computed once.
    let mut keyed: Vec<(u8, u128, u32, u32)> = spans
        .iter()
        .enumerate()
        .map(|(i, s)| {
            let id = &s.info.trace_id;
            (
                shard_of(id) as u8,
                u128::from_be_bytes(*id),
                s.origin as u32,
                i as u32,
            )
        })
        .collect();
    keyed.sort_unstable();
    let mut i = 0;
    while i < keyed.len() {
        let (_, trace, origin, _) = keyed[i];
        let j = i + keyed[i..]
            .iter()
            .take_while(|k| k.1 == trace && k.2 == origin)
            .count();
        let mut run = keyed[i..j].iter().map(|k| &spans[k.3 as usize]);
        f(trace.to_be_bytes(), origin as usize, &mut run);
        i = j;
    }
}

/// One trace's spans from one request.
pub struct TraceGroup {
    pub id: TraceId,
    pub chunks: Vec<Chunk>,
}

/// Groups a request's spans by trace and, within a trace, by origin, copying each group's span
/// bytes into a [`Chunk`]. Traces come out ordered by buffer shard.
pub fn group_by_trace(
    spans: &[wire::SpanRef],
    origins: &[Arc<Origin>],
    body: &[u8],
) -> Vec<TraceGroup> {
    let mut groups: Vec<TraceGroup> = Vec::new();
    let mut ranges = Vec::new();
    for_each_trace_run(spans, |id, origin, run| {
        ranges.clear();
        ranges.extend(run.map(|s| s.range));
        let chunk = Chunk::from_spans(Arc::clone(&origins[origin]), body, &ranges);
        match groups.last_mut() {
            Some(group) if group.id == id => group.chunks.push(chunk),
            _ => groups.push(TraceGroup {
                id,
                chunks: vec![chunk],
            }),
        }
    });
    groups
}

/// Builds the policies' view of a trace from exported-form chunks, walking each span for its
/// summary. (The buffer itself keeps summaries and does not walk; this serves chunks that come
/// from elsewhere, and benchmarks.)
pub fn trace_view(id: TraceId, chunks: &[Chunk]) -> TraceView<'_> {
    let mut spans = Vec::with_capacity(chunks.iter().map(|c| c.spans as usize).sum());
    for chunk in chunks {
        for bytes in chunk.spans() {
            // Every buffered span passed `read_span` at the door, so this cannot fail.
            if let Ok(info) = wire::read_span(bytes, 0) {
                spans.push(SpanRecord {
                    origin: &chunk.origin,
                    bytes,
                    info,
                });
            }
        }
    }
    TraceView {
        trace_id: id,
        spans,
    }
}

#[cfg(test)]
mod tests;
