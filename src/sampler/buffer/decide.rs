//! Deciding traces: one decider task per shard sleeps until the shard's front deadline (tokio
//! time, so tests pause the clock) and decides every expired trace. Policies run on a
//! [`TraceView`] of the trace's spans, built from the stored summaries without walking the span
//! bytes; the decision is remembered in the shard's decision cache, and kept chunks go to the
//! export pipeline. At shutdown [`TraceBuffer::drain`] settles whatever is still buffered.

use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::cache::Remembered;
use super::shard::{ShardState, TraceEntry, SHARDS};
use super::store::Stored;
use super::TraceBuffer;
use crate::otlp::{Chunk, SpanBatch, TraceId};
use crate::policy::{FinalDecision, SpanRecord, TraceView};

/// Traces decided per lock acquisition, so a burst of deadlines does not starve receivers.
const DECIDE_BATCH: usize = 512;

impl TraceBuffer {
    /// Runs the policies on one trace (removed from the map by the caller), remembers the
    /// decision and returns the chunks to export when kept.
    pub(super) fn decide(
        &self,
        state: &mut ShardState,
        id: TraceId,
        entry: TraceEntry,
    ) -> Option<Vec<Chunk>> {
        self.counts.remove_trace(entry.spans, entry.memory);
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
                self.send(SpanBatch { chunks: kept }).await;
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
                        self.counts.remove_trace(entry.spans, entry.memory);
                        dropped_traces += 1;
                        dropped_spans += entry.spans as usize;
                    } else if let Some(chunks) = self.decide(&mut state, id, entry) {
                        kept.extend(chunks);
                    }
                }
                kept
            };
            if !kept.is_empty() {
                self.send(SpanBatch { chunks: kept }).await;
            }
        }
        if dropped_traces > 0 {
            self.metrics
                .dropped_shutdown
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
