//! The trace buffer: holds every trace's encoded spans until its decision, decides it on time,
//! and hands kept spans to the export pipeline.
//!
//! Data flow: the receiver parses a request ([`crate::wire::parse_export_request`]) and calls
//! [`TraceBuffer::ingest`]. Spans are grouped by trace and by origin (resource + scope), and each
//! group's span bytes are copied into one [`Chunk`]: a run of spans already framed as
//! `ScopeSpans.spans` fields, so export only wraps it. Copying (one allocation per trace per
//! request) means a long-lived trace never pins its multi-megabyte request body.
//!
//! Traces live in shards keyed by trace ID, each behind its own mutex, so receivers on different
//! cores rarely contend. Each shard keeps a FIFO of `(deadline, trace)`: `decision_wait` is the same
//! for every trace, so arrival order is deadline order and the queue needs no heap. One decider
//! task per shard sleeps until the front deadline (tokio time, so tests pause the clock) and
//! decides every expired trace: policies run on a [`TraceView`] of its spans, the decision is
//! remembered in the shard's [`cache::DecisionCache`], kept chunks go to the exporter channel.
//!
//! Spans that arrive after their trace was decided follow the remembered decision: forwarded at
//! once when kept, dropped and counted when not. At `num_traces` the oldest trace is decided early
//! (not dropped): its spans so far are judged by the policies, and its later spans follow that
//! decision. Each early decision is counted and logged.

mod cache;
mod config;

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use tokio::sync::{mpsc, Notify};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

pub use cache::{fingerprint, IdBuildHasher, Remembered};
pub use config::{DecisionCacheConfig, TailSamplingConfig};

use crate::policy::{FinalDecision, PolicySet, SpanRecord, TraceView};
use crate::telemetry::LogEvery;
use crate::wire::{self, Origin, ParsedRequest, TraceId};

const SHARDS: usize = 16;
/// Traces decided per lock acquisition, so a burst of deadlines does not starve receivers.
const DECIDE_BATCH: usize = 512;

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
            sampled_cache_size: c.sampled_cache_size(),
            non_sampled_cache_size: c.non_sampled_cache_size(),
            drop_pending_on_shutdown: c.drop_pending_traces_on_shutdown,
        }
    }
}

struct TraceEntry {
    deadline: Instant,
    chunks: Vec<Chunk>,
    spans: usize,
    bytes: usize,
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
        let a = live_front(&mut self.queue, &self.traces);
        let b = live_front(&mut self.root_queue, &self.traces);
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
        let entry = self.traces.remove(&id)?;
        Some((id, entry))
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
    /// Traces that passed `maximum_trace_size_bytes` and were decided not sampled.
    pub too_large: usize,
}

/// The buffer is full and `block_on_overflow` is set: the client should retry later.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("the trace buffer is full (num_traces reached); retry later")]
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
}

impl BufferMetrics {
    fn register() -> Self {
        const SAMPLED: &str = "otelcol_processor_tail_sampling_global_count_traces_sampled";
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
        }
    }
}

/// The sharded trace store and its deciders.
pub struct TraceBuffer {
    metrics: BufferMetrics,
    shards: Box<[Shard]>,
    settings: BufferSettings,
    policies: PolicySet,
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

    /// Adds a parsed request's spans to their traces. Kept spans that result (late spans of kept
    /// traces, traces decided early at `num_traces`) are sent to the exporter before returning,
    /// so a slow exporter pushes back on the client.
    ///
    /// With `block_on_overflow`, a request that arrives while the buffer holds `num_traces`
    /// traces is refused whole ([`Overflow`]) for the client to retry.
    pub async fn ingest(
        &self,
        request: ParsedRequest,
        body: &[u8],
    ) -> Result<IngestOutcome, Overflow> {
        let mut outcome = IngestOutcome::default();
        if request.spans.is_empty() {
            return Ok(outcome);
        }
        if self.settings.block_on_overflow && self.live_traces() >= self.settings.num_traces {
            metrics::counter!("tailgate_buffer_overflow_refusals_total").increment(1);
            if self.overflow_log.ready() {
                tracing::warn!(
                    num_traces = self.settings.num_traces,
                    "buffer full with block_on_overflow: refusing requests with a retryable status"
                );
            }
            return Err(Overflow);
        }
        let origins: Vec<Arc<Origin>> = request.origins.into_iter().map(Arc::new).collect();
        let mut groups = group_by_trace(&request.spans, &origins, body);
        let now = Instant::now();
        let mut kept = Vec::new();
        let mut new_traces = 0usize;
        let mut start = 0;
        while start < groups.len() {
            let shard = shard_of(&groups[start].id);
            let end = start
                + groups[start..]
                    .iter()
                    .take_while(|g| shard_of(&g.id) == shard)
                    .count();
            let mut wake = false;
            {
                let mut state = self.lock(shard);
                for group in groups[start..end].iter_mut() {
                    let chunks = std::mem::take(&mut group.chunks);
                    let spans: usize = chunks.iter().map(|c| c.spans as usize).sum();
                    let bytes: usize = chunks.iter().map(|c| c.run.len()).sum();
                    let id = group.id;
                    if !state.traces.contains_key(&id) {
                        match state.cache.get(&id) {
                            Some(Remembered::Sampled) => {
                                outcome.forwarded_late += spans;
                                kept.extend(chunks);
                                continue;
                            }
                            Some(Remembered::NotSampled) => {
                                outcome.dropped_late += spans;
                                continue;
                            }
                            None => {
                                let deadline = now + self.settings.decision_wait;
                                wake |= state.queue.is_empty();
                                state.queue.push_back((deadline, id));
                                state.traces.insert(
                                    id,
                                    TraceEntry {
                                        deadline,
                                        chunks: Vec::new(),
                                        spans: 0,
                                        bytes: 0,
                                    },
                                );
                                new_traces += 1;
                                self.live_traces.fetch_add(1, Ordering::Relaxed);
                            }
                        }
                    }
                    let state = &mut *state;
                    let entry = state.traces.get_mut(&id).expect("present or just inserted");
                    entry.chunks.extend(chunks);
                    entry.spans += spans;
                    entry.bytes += bytes;
                    self.buffered_spans.fetch_add(spans, Ordering::Relaxed);
                    self.buffered_bytes.fetch_add(bytes, Ordering::Relaxed);
                    outcome.buffered += spans;
                    if group.has_root && !self.settings.wait_after_root.is_zero() {
                        let root_deadline = now + self.settings.wait_after_root;
                        if root_deadline < entry.deadline {
                            entry.deadline = root_deadline;
                            wake |= state.root_queue.is_empty();
                            state.root_queue.push_back((root_deadline, id));
                        }
                    }
                    if self.settings.max_trace_bytes > 0
                        && entry.bytes > self.settings.max_trace_bytes
                    {
                        let entry = state.traces.remove(&id).expect("present");
                        self.release(&entry);
                        state.cache.remember(&id, Remembered::NotSampled);
                        outcome.too_large += 1;
                        self.metrics.spans_not_sampled.increment(entry.spans as u64);
                    }
                }
            }
            if wake {
                self.shards[shard].wake.notify_one();
            }
            start = end;
        }
        self.metrics.new_traces.increment(new_traces as u64);
        while self.live_traces() > self.settings.num_traces {
            match self.decide_oldest_early() {
                Some(chunks) => {
                    outcome.decided_early += 1;
                    kept.extend(chunks);
                }
                None => break,
            }
        }
        self.count_outcome(&outcome);
        self.update_gauges();
        if !kept.is_empty() {
            self.send(Kept { chunks: kept }).await;
        }
        Ok(outcome)
    }

    /// Takes a removed trace out of the live counts.
    fn release(&self, entry: &TraceEntry) {
        self.live_traces.fetch_sub(1, Ordering::Relaxed);
        self.buffered_spans
            .fetch_sub(entry.spans, Ordering::Relaxed);
        self.buffered_bytes
            .fetch_sub(entry.bytes, Ordering::Relaxed);
    }

    fn count_outcome(&self, outcome: &IngestOutcome) {
        if outcome.too_large > 0 {
            metrics::counter!("tailgate_traces_too_large_total")
                .increment(outcome.too_large as u64);
            if self.too_large_log.ready() {
                tracing::warn!(
                    traces = outcome.too_large,
                    limit = self.settings.max_trace_bytes,
                    "traces exceeded maximum_trace_size_bytes: decided not sampled (counted in tailgate_traces_too_large_total)"
                );
            }
        }
        if outcome.forwarded_late > 0 {
            metrics::counter!("tailgate_late_spans_total", "decision" => "sampled")
                .increment(outcome.forwarded_late as u64);
        }
        if outcome.dropped_late > 0 {
            metrics::counter!("tailgate_late_spans_total", "decision" => "not_sampled")
                .increment(outcome.dropped_late as u64);
            if self.late_drop_log.ready() {
                tracing::info!(
                    spans = outcome.dropped_late,
                    "dropped late spans of traces already decided not sampled (counted in tailgate_late_spans_total)"
                );
            }
        }
        if outcome.decided_early > 0 {
            metrics::counter!("tailgate_traces_decided_early_total", "reason" => "num_traces")
                .increment(outcome.decided_early as u64);
            if self.early_log.ready() {
                tracing::warn!(
                    num_traces = self.settings.num_traces,
                    traces = outcome.decided_early,
                    "buffer full: deciding the oldest traces before decision_wait (counted in tailgate_traces_decided_early_total)"
                );
            }
        }
    }

    fn update_gauges(&self) {
        self.metrics.traces_on_memory.set(self.live_traces() as f64);
        self.metrics
            .buffered_spans
            .set(self.buffered_spans() as f64);
        self.metrics
            .buffered_bytes
            .set(self.buffered_bytes.load(Ordering::Relaxed) as f64);
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

    /// Finds the oldest buffered trace across shards and decides it now.
    fn decide_oldest_early(&self) -> Option<Vec<Chunk>> {
        let mut oldest: Option<(Instant, usize)> = None;
        for shard in 0..SHARDS {
            if let Some(deadline) = self.lock(shard).front_deadline() {
                if oldest.is_none_or(|(d, _)| deadline < d) {
                    oldest = Some((deadline, shard));
                }
            }
        }
        let (deadline, shard) = oldest?;
        let mut state = self.lock(shard);
        let (id, entry) = state.pop_due(deadline)?;
        Some(self.decide(&mut state, id, entry).unwrap_or_default())
    }

    /// Runs the policies on one trace (removed from the map by the caller), remembers the
    /// decision and returns the chunks to export when kept.
    fn decide(&self, state: &mut ShardState, id: TraceId, entry: TraceEntry) -> Option<Vec<Chunk>> {
        self.release(&entry);
        let decision = self.policies.decide(&trace_view(id, &entry.chunks));
        let sampled = decision == FinalDecision::Sampled;
        if sampled {
            self.metrics.traces_sampled.increment(1);
        } else {
            self.metrics.traces_not_sampled.increment(1);
        }
        if sampled {
            state.cache.remember(&id, Remembered::Sampled);
            Some(entry.chunks)
        } else {
            state.cache.remember(&id, Remembered::NotSampled);
            self.metrics.spans_not_sampled.increment(entry.spans as u64);
            None
        }
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
                    taken.push((id, entry.chunks));
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
                        dropped_spans += entry.spans;
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

/// One trace's spans from one request.
pub struct TraceGroup {
    pub id: TraceId,
    pub chunks: Vec<Chunk>,
    pub has_root: bool,
}

/// Groups a request's spans by trace and, within a trace, by origin, copying each group's span
/// bytes into a [`Chunk`]. Traces come out ordered by buffer shard.
pub fn group_by_trace(
    spans: &[wire::SpanRef],
    origins: &[Arc<Origin>],
    body: &[u8],
) -> Vec<TraceGroup> {
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
    let order: Vec<u32> = keyed.into_iter().map(|k| k.3).collect();
    let mut groups: Vec<TraceGroup> = Vec::new();
    let mut ranges = Vec::new();
    let mut i = 0;
    while i < order.len() {
        let first = &spans[order[i] as usize];
        let mut j = i;
        ranges.clear();
        let mut has_root = false;
        while j < order.len() {
            let s = &spans[order[j] as usize];
            if s.info.trace_id != first.info.trace_id || s.origin != first.origin {
                break;
            }
            ranges.push(s.range);
            has_root |= s.info.is_root;
            j += 1;
        }
        let chunk = Chunk::from_spans(Arc::clone(&origins[first.origin]), body, &ranges);
        match groups.last_mut() {
            Some(group) if group.id == first.info.trace_id => {
                group.chunks.push(chunk);
                group.has_root |= has_root;
            }
            _ => groups.push(TraceGroup {
                id: first.info.trace_id,
                chunks: vec![chunk],
                has_root,
            }),
        }
        i = j;
    }
    groups
}

/// Builds the policies' view of a trace from its chunks.
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
