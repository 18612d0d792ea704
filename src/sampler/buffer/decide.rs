//! Deciding traces: one decider task per shard sleeps until the shard's front deadline (tokio
//! time, so tests pause the clock) and decides every expired trace. Policies run on a
//! [`TraceView`] of the trace's spans, built from the stored summaries without walking the span
//! bytes; the decision is remembered in the shard's decision cache, and kept chunks go to the
//! export pipeline. At shutdown [`TraceBuffer::drain`] settles whatever is still buffered.
//!
//! No policy, regex, OTTL condition or decompression runs under a shard lock: due traces are
//! taken out under the lock ([`TraceBuffer::take_for_decision`], which leaves a marker in the
//! shard's `deciding` map), judged with no lock held, and their decisions recorded under the lock
//! again ([`TraceBuffer::settle`]). A span that arrives for a trace while it is being judged
//! waits beside the marker and follows the decision, as if it had arrived just before it.
//!
//! What goes out with a decision: with `record_policy`, a kept trace's scopes carry
//! `tailsampling.policy` (the policy that kept it); with `dry_run`, every trace is forwarded and
//! each span carries `tailsampling.sampled`.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::cache::Remembered;
use super::shard::{Pending, ShardState, TraceChunks, TraceEntry, SHARDS};
use super::store::Stored;
use super::TraceBuffer;
use crate::otlp::annotate::{
    bool_attribute, string_attribute, with_scope_attribute, with_span_attribute,
};
use crate::otlp::{Chunk, Origin, SpanBatch, TraceId};
use crate::policy::{FinalDecision, PolicySet, PolicyTally, SpanRecord, TraceView, Verdict};
use crate::telemetry::catalog::HistogramBatch;

/// Traces decided per lock acquisition, so a burst of deadlines does not starve receivers.
const DECIDE_BATCH: usize = 512;

/// The span attribute `dry_run` adds (Refinery's and the OTel community's name for it).
pub const DRY_RUN_ATTRIBUTE: &str = "tailsampling.sampled";
/// The scope attribute `record_policy` adds, as the Collector's record-policy feature does.
pub const POLICY_ATTRIBUTE: &str = "tailsampling.policy";

/// What a decision round decided, counted into the metrics once per round.
#[derive(Default)]
struct RoundOutcome {
    sampled: u64,
    dropped: u64,
    not_sampled: u64,
    spans_not_sampled: u64,
}

/// A trace taken out of its shard to be decided.
pub(super) struct Due {
    id: TraceId,
    entry: TraceEntry,
}

/// A chunk of a trace in `dry_run`, its spans marked with the decision.
pub(super) fn mark_dry_run(chunk: Chunk, sampled: bool) -> Chunk {
    let run = with_span_attribute(&chunk.run, &bool_attribute(DRY_RUN_ATTRIBUTE, sampled));
    Chunk { run, ..chunk }
}

impl TraceBuffer {
    /// Takes a due trace out of its shard's map for deciding (the caller holds the lock and has
    /// removed `entry` from the map): it leaves the live totals, and spans that arrive for it
    /// until [`TraceBuffer::settle`] records its decision wait beside a marker. Its age goes in
    /// `removal_ages`, the round's batch of `sampling_trace_removal_age`.
    pub(super) fn take_for_decision(
        &self,
        state: &mut ShardState,
        id: TraceId,
        entry: TraceEntry,
        now: Instant,
        removal_ages: &mut HistogramBatch<'_>,
    ) -> Due {
        self.counts.remove_trace(entry.spans, entry.memory);
        removal_ages.record(
            now.saturating_duration_since(entry.first_seen)
                .as_secs_f64(),
        );
        state.deciding.insert(id, Pending::default());
        Due { id, entry }
    }

    /// Judges traces taken out of `shard` with no lock held, then records their decisions under
    /// the shard's lock. Returns the chunks to export.
    pub(super) fn settle(&self, shard: usize, due: Vec<Due>) -> Vec<Chunk> {
        if due.is_empty() {
            return Vec::new();
        }
        let settings = self.settings();
        let policies = self.policies();
        // The policies' metrics are counted for the round and added once after it.
        let mut tally = PolicyTally::default();
        // Summaries are stored raw beside a compressed payload too.
        for chunk in due.iter().flat_map(|d| &d.entry.chunks) {
            chunk.prefetch_summaries();
        }
        let judged: Vec<(TraceId, Verdict, u32, Option<Vec<Chunk>>)> = due
            .into_iter()
            .map(|Due { id, entry }| {
                let (verdict, chunks) =
                    self.evaluate(&policies, &mut tally, id, entry.chunks, settings.dry_run);
                (id, verdict, entry.spans, chunks)
            })
            .collect();
        policies.flush(&mut tally);
        // Each exported trace: its judged chunks, the spans that joined while it was judged.
        let mut exported: Vec<(Vec<Chunk>, Vec<Stored>, Verdict)> = Vec::new();
        let now = Instant::now();
        let mut outcome = RoundOutcome::default();
        {
            let mut state = self.lock(shard);
            for (id, verdict, spans, chunks) in judged {
                let pending = state.deciding.remove(&id).unwrap_or_default();
                let sampled = verdict.decision == FinalDecision::Sampled;
                let remembered = if sampled {
                    Remembered::Sampled
                } else {
                    Remembered::NotSampled
                };
                state.cache.remember_buffered_at(&id, remembered, now);
                let all_spans = u64::from(spans + pending.spans);
                if sampled {
                    outcome.sampled += 1;
                } else {
                    if verdict.dropped {
                        outcome.dropped += 1;
                    } else {
                        outcome.not_sampled += 1;
                    }
                    outcome.spans_not_sampled += all_spans;
                }
                if let Some(chunks) = chunks {
                    exported.push((chunks, pending.chunks, verdict));
                }
                // Pending spans of a trace not exported are dropped with it (counted above).
            }
        }
        // Counted once per round, after the lock: an atomic increment per trace was a few per
        // cent of a one-span trace's cost.
        for (counter, n) in [
            (&self.metrics.traces_sampled, outcome.sampled),
            (&self.metrics.traces_dropped, outcome.dropped),
            (&self.metrics.traces_not_sampled, outcome.not_sampled),
            (&self.metrics.spans_not_sampled, outcome.spans_not_sampled),
        ] {
            if n > 0 {
                counter.increment(n);
            }
        }
        self.room.notify_waiters();
        // Pending spans are decompressed and everything annotated outside the lock too.
        self.finish_chunks(&settings, &policies, exported)
    }

    /// Turns the exported traces into chunks: spans that joined while a trace was judged
    /// added, `dry_run` and `record_policy` attributes applied.
    fn finish_chunks(
        &self,
        settings: &super::BufferSettings,
        policies: &PolicySet,
        exported: Vec<(Vec<Chunk>, Vec<Stored>, Verdict)>,
    ) -> Vec<Chunk> {
        let annotate = settings.dry_run || settings.record_policy;
        let mut out = Vec::new();
        // Scopes annotated once per origin and policy, not per chunk. The original origin is
        // held too, so its address (the key) cannot be reused while the map lives.
        let mut origins: HashMap<(usize, usize), (Arc<Origin>, Arc<Origin>)> = HashMap::new();
        for (chunks, pending, verdict) in exported {
            let trace = chunks
                .into_iter()
                .chain(pending.into_iter().map(|s| s.into_chunk(&self.codec, None)));
            if !annotate {
                out.extend(trace);
                continue;
            }
            let sampled = verdict.decision == FinalDecision::Sampled;
            let policy = verdict.policy.filter(|_| settings.record_policy && sampled);
            for mut chunk in trace {
                if let Some(policy) = policy {
                    let key = (Arc::as_ptr(&chunk.origin) as usize, policy);
                    let (_, annotated) = origins.entry(key).or_insert_with(|| {
                        let name = policies.policy_name(policy);
                        let kv = string_attribute(POLICY_ATTRIBUTE, name);
                        (
                            Arc::clone(&chunk.origin),
                            with_scope_attribute(&chunk.origin, &kv),
                        )
                    });
                    chunk.origin = Arc::clone(annotated);
                }
                if settings.dry_run {
                    chunk = mark_dry_run(chunk, sampled);
                }
                out.push(chunk);
            }
        }
        out
    }

    /// Builds the trace's view from its stored chunks (decompressing them when compressed),
    /// runs the policies, and returns the verdict with the chunks to export: those of a kept
    /// trace, or with `dry_run` those of every trace.
    fn evaluate(
        &self,
        policies: &PolicySet,
        tally: &mut PolicyTally,
        id: TraceId,
        stored: TraceChunks,
        dry_run: bool,
    ) -> (Verdict, Option<Vec<Chunk>>) {
        let decompressed: Vec<Option<Box<[u8]>>> = if self.codec.compresses() {
            stored
                .iter()
                .map(|s| s.raw_run().is_none().then(|| self.codec.decompress(s)))
                .collect()
        } else {
            Vec::new()
        };
        let verdict = {
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
            policies.judge_counted(
                &TraceView {
                    trace_id: id,
                    spans,
                },
                tally,
            )
        };
        if verdict.decision != FinalDecision::Sampled && !dry_run {
            return (verdict, None);
        }
        let mut decompressed = decompressed.into_iter();
        let chunks = stored
            .into_iter()
            .map(|s| s.into_chunk(&self.codec, decompressed.next().flatten()))
            .collect();
        (verdict, Some(chunks))
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
            let started = std::time::Instant::now();
            let now = Instant::now();
            // Declared before the lock, so they are added to their series after it is released.
            let mut lateness = self.metrics.decision_lateness.batch();
            let mut removal_ages = self.metrics.removal_age.batch();
            let (due, next) = {
                let mut state = self.lock(shard);
                let mut due = Vec::new();
                while due.len() < DECIDE_BATCH {
                    let Some((id, entry)) = state.pop_due(now) else {
                        break;
                    };
                    lateness.record((now - entry.deadline).as_secs_f64());
                    due.push(self.take_for_decision(&mut state, id, entry, now, &mut removal_ages));
                }
                (due, state.front_deadline())
            };
            drop((lateness, removal_ages));
            let decided = due.len();
            let kept = self.settle(shard, due);
            if decided > 0 {
                self.update_gauges();
                self.metrics
                    .timer_latency
                    .record(started.elapsed().as_secs_f64());
            }
            if !kept.is_empty() {
                self.send(SpanBatch { chunks: kept }).await;
            }
            if decided == DECIDE_BATCH {
                continue;
            }
            let wake = &self.shards[shard].wake;
            // Woken by a new earliest deadline (a first trace, a root span's shorter wait, a
            // reload).
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = wake.notified() => {}
                _ = tokio::time::sleep_until(next.unwrap_or(now)), if next.is_some() => {}
            }
        }
    }

    /// Settles every buffered trace at shutdown: decides it now, or with
    /// `drop_pending_traces_on_shutdown` drops it (counted and logged).
    pub async fn drain(&self) {
        let mut dropped_traces = 0usize;
        let mut dropped_spans = 0usize;
        let drop_pending = self.settings().drop_pending_on_shutdown;
        for shard in 0..SHARDS {
            let mut removal_ages = self.metrics.removal_age.batch();
            let due = {
                let mut state = self.lock(shard);
                let mut due = Vec::new();
                let now = Instant::now();
                let far_future = now + Duration::from_secs(86_400 * 365);
                while let Some((id, entry)) = state.pop_due(far_future) {
                    if drop_pending {
                        self.counts.remove_trace(entry.spans, entry.memory);
                        dropped_traces += 1;
                        dropped_spans += entry.spans as usize;
                    } else {
                        due.push(self.take_for_decision(
                            &mut state,
                            id,
                            entry,
                            now,
                            &mut removal_ages,
                        ));
                    }
                }
                due
            };
            let kept = self.settle(shard, due);
            if !kept.is_empty() {
                self.send(SpanBatch { chunks: kept }).await;
            }
        }
        if dropped_traces > 0 {
            self.metrics
                .dropped_shutdown
                .increment(dropped_spans as u64);
            self.metrics
                .dropped_too_early
                .increment(dropped_traces as u64);
            tracing::warn!(
                traces = dropped_traces,
                spans = dropped_spans,
                "drop_pending_traces_on_shutdown: dropped undecided traces"
            );
        }
        self.update_gauges();
    }
}
