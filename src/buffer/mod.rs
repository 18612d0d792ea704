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
    pub num_traces: usize,
    pub sampled_cache_size: usize,
    pub non_sampled_cache_size: usize,
    pub drop_pending_on_shutdown: bool,
}

impl From<&TailSamplingConfig> for BufferSettings {
    fn from(c: &TailSamplingConfig) -> Self {
        Self {
            decision_wait: c.decision_wait,
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
    queue: VecDeque<(Instant, TraceId)>,
    cache: cache::DecisionCache,
}

impl ShardState {
    /// Drops queue entries whose trace was already decided early, so the front is live.
    fn front_deadline(&mut self) -> Option<Instant> {
        while let Some(&(deadline, id)) = self.queue.front() {
            match self.traces.get(&id) {
                Some(entry) if entry.deadline == deadline => return Some(deadline),
                _ => {
                    self.queue.pop_front();
                }
            }
        }
        None
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
}

/// The sharded trace store and its deciders.
pub struct TraceBuffer {
    shards: Box<[Shard]>,
    settings: BufferSettings,
    policies: PolicySet,
    live_traces: AtomicUsize,
    buffered_spans: AtomicUsize,
    buffered_bytes: AtomicUsize,
    out: mpsc::Sender<Kept>,
    early_log: LogEvery,
    late_drop_log: LogEvery,
}

/// Which shard holds a trace. Trace IDs are random; the last bytes are as good as a hash.
fn shard_of(id: &TraceId) -> usize {
    (id[15] as usize ^ id[7] as usize) % SHARDS
}

impl TraceBuffer {
    pub fn new(settings: BufferSettings, policies: PolicySet, out: mpsc::Sender<Kept>) -> Arc<Self> {
        let per_shard = |n: usize| n.div_ceil(SHARDS);
        let shards = (0..SHARDS)
            .map(|_| Shard {
                state: Mutex::new(ShardState {
                    traces: HashMap::default(),
                    queue: VecDeque::new(),
                    cache: cache::DecisionCache::new(
                        per_shard(settings.sampled_cache_size),
                        per_shard(settings.non_sampled_cache_size),
                    ),
                }),
                wake: Notify::new(),
            })
            .collect();
        Arc::new(Self {
            shards,
            settings,
            policies,
            live_traces: AtomicUsize::new(0),
            buffered_spans: AtomicUsize::new(0),
            buffered_bytes: AtomicUsize::new(0),
            out,
            early_log: LogEvery::new(Duration::from_secs(10)),
            late_drop_log: LogEvery::new(Duration::from_secs(10)),
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
    pub async fn ingest(&self, request: ParsedRequest, body: &[u8]) -> IngestOutcome {
        let mut outcome = IngestOutcome::default();
        if request.spans.is_empty() {
            return outcome;
        }
        let origins: Vec<Arc<Origin>> = request.origins.into_iter().map(Arc::new).collect();
        let mut groups = group_by_trace(&request.spans, &origins, body);
        let now = Instant::now();
        let mut kept = Vec::new();
        let mut new_traces = 0usize;
        let mut start = 0;
        while start < groups.len() {
            let shard = shard_of(&groups[start].0);
            let end = start
                + groups[start..]
                    .iter()
                    .take_while(|g| shard_of(&g.0) == shard)
                    .count();
            let mut woke = false;
            {
                let mut state = self.lock(shard);
                for (id, chunks) in groups[start..end].iter_mut() {
                    let chunks = std::mem::take(chunks);
                    let spans: usize = chunks.iter().map(|c| c.spans as usize).sum();
                    let bytes: usize = chunks.iter().map(|c| c.run.len()).sum();
                    if let Some(entry) = state.traces.get_mut(id) {
                        entry.chunks.extend(chunks);
                        entry.spans += spans;
                        entry.bytes += bytes;
                        self.buffered_spans.fetch_add(spans, Ordering::Relaxed);
                        self.buffered_bytes.fetch_add(bytes, Ordering::Relaxed);
                        outcome.buffered += spans;
                        continue;
                    }
                    match state.cache.get(id) {
                        Some(Remembered::Sampled) => {
                            outcome.forwarded_late += spans;
                            kept.extend(chunks);
                        }
                        Some(Remembered::NotSampled) => outcome.dropped_late += spans,
                        None => {
                            let deadline = now + self.settings.decision_wait;
                            woke |= state.queue.is_empty();
                            state.queue.push_back((deadline, *id));
                            state.traces.insert(
                                *id,
                                TraceEntry {
                                    deadline,
                                    chunks,
                                    spans,
                                    bytes,
                                },
                            );
                            new_traces += 1;
                            self.buffered_spans.fetch_add(spans, Ordering::Relaxed);
                            self.buffered_bytes.fetch_add(bytes, Ordering::Relaxed);
                            outcome.buffered += spans;
                        }
                    }
                }
            }
            if woke {
                self.shards[shard].wake.notify_one();
            }
            start = end;
        }
        self.live_traces.fetch_add(new_traces, Ordering::Relaxed);
        metrics::counter!("otelcol_processor_tail_sampling_new_trace_id_received")
            .increment(new_traces as u64);
        while self.live_traces() > self.settings.num_traces {
            match self.decide_oldest_early() {
                Some(chunks) => {
                    outcome.decided_early += 1;
                    kept.extend(chunks);
                }
                None => break,
            }
        }
        self.count_late(&outcome);
        self.update_gauges();
        if !kept.is_empty() {
            self.send(Kept { chunks: kept }).await;
        }
        outcome
    }

    fn count_late(&self, outcome: &IngestOutcome) {
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
        metrics::gauge!("otelcol_processor_tail_sampling_sampling_traces_on_memory")
            .set(self.live_traces() as f64);
        metrics::gauge!("tailgate_buffered_spans").set(self.buffered_spans() as f64);
        metrics::gauge!("tailgate_buffered_bytes")
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
        let (_, shard) = oldest?;
        let mut state = self.lock(shard);
        state.front_deadline()?;
        let (_, id) = state.queue.pop_front()?;
        let entry = state.traces.remove(&id)?;
        Some(self.decide(&mut state, id, entry).unwrap_or_default())
    }

    /// Runs the policies on one trace (removed from the map by the caller), remembers the
    /// decision and returns the chunks to export when kept.
    fn decide(&self, state: &mut ShardState, id: TraceId, entry: TraceEntry) -> Option<Vec<Chunk>> {
        self.live_traces.fetch_sub(1, Ordering::Relaxed);
        self.buffered_spans.fetch_sub(entry.spans, Ordering::Relaxed);
        self.buffered_bytes.fetch_sub(entry.bytes, Ordering::Relaxed);
        let decision = self.policies.decide(&trace_view(id, &entry.chunks));
        let sampled = decision == FinalDecision::Sampled;
        metrics::counter!(
            "otelcol_processor_tail_sampling_global_count_traces_sampled",
            "sampled" => if sampled { "true" } else { "false" },
        )
        .increment(1);
        if sampled {
            state.cache.remember(&id, Remembered::Sampled);
            Some(entry.chunks)
        } else {
            state.cache.remember(&id, Remembered::NotSampled);
            metrics::counter!("tailgate_spans_not_sampled_total").increment(entry.spans as u64);
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
                    match state.front_deadline() {
                        Some(deadline) if deadline <= now => {
                            let (_, id) = state.queue.pop_front().expect("front exists");
                            let entry = state.traces.remove(&id).expect("front is live");
                            metrics::histogram!("tailgate_decision_lateness_seconds")
                                .record((now - deadline).as_secs_f64());
                            if let Some(chunks) = self.decide(&mut state, id, entry) {
                                kept.extend(chunks);
                            }
                            decided += 1;
                        }
                        _ => break,
                    }
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
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = wake.notified(), if next.is_none() => {}
                _ = tokio::time::sleep_until(next.unwrap_or(now)), if next.is_some() => {}
            }
        }
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
                while state.front_deadline().is_some() {
                    let (_, id) = state.queue.pop_front().expect("front exists");
                    let entry = state.traces.remove(&id).expect("front is live");
                    if self.settings.drop_pending_on_shutdown {
                        self.live_traces.fetch_sub(1, Ordering::Relaxed);
                        self.buffered_spans.fetch_sub(entry.spans, Ordering::Relaxed);
                        self.buffered_bytes.fetch_sub(entry.bytes, Ordering::Relaxed);
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

/// Groups a request's spans by trace (ordered by shard) and, within a trace, by origin, copying
/// each group into a chunk.
fn group_by_trace(
    spans: &[wire::SpanRef],
    origins: &[Arc<Origin>],
    body: &[u8],
) -> Vec<(TraceId, Vec<Chunk>)> {
    let mut order: Vec<u32> = (0..spans.len() as u32).collect();
    order.sort_unstable_by_key(|&i| {
        let s = &spans[i as usize];
        (shard_of(&s.info.trace_id), s.info.trace_id, s.origin, i)
    });
    let mut groups: Vec<(TraceId, Vec<Chunk>)> = Vec::new();
    let mut ranges = Vec::new();
    let mut i = 0;
    while i < order.len() {
        let first = &spans[order[i] as usize];
        let mut j = i;
        ranges.clear();
        while j < order.len() {
            let s = &spans[order[j] as usize];
            if s.info.trace_id != first.info.trace_id || s.origin != first.origin {
                break;
            }
            ranges.push(s.range);
            j += 1;
        }
        let chunk = Chunk::from_spans(Arc::clone(&origins[first.origin]), body, &ranges);
        match groups.last_mut() {
            Some((id, chunks)) if *id == first.info.trace_id => chunks.push(chunk),
            _ => groups.push((first.info.trace_id, vec![chunk])),
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
    TraceView { trace_id: id, spans }
}

#[cfg(test)]
mod tests;
