//! The buffer's limits: `num_traces` and `max_buffered_bytes` (a tailgate extension), and what
//! happens at them. By default the oldest traces are decided early (their spans so far are judged
//! by the policies; later spans follow that decision), counted by limit and logged. With
//! `block_on_overflow` a request that would start a trace at `num_traces` (or any request at
//! `max_buffered_bytes`) waits for decisions to make room, at most [`OVERFLOW_MAX_WAIT`], and is
//! then refused whole, for the client to retry.

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::time::Duration;

use tokio::time::Instant;

use super::decide::Due;
use super::shard::{shard_of, SHARDS};
use super::{BufferSettings, IngestOutcome, Overflow, TraceBuffer};
use crate::otlp::{Chunk, SpanRef, TraceId};

/// With `block_on_overflow`, how long a request waits for room before it is refused. The
/// Collector blocks the call until there is room, for as long as the client waits; tailgate
/// bounds the wait so a client that gave up does not hold a request open, and answers within the
/// OpenTelemetry SDKs' default 10 s export timeout.
pub const OVERFLOW_MAX_WAIT: Duration = Duration::from_secs(5);

impl TraceBuffer {
    /// With `block_on_overflow`, whether `spans` must wait for room: at `max_buffered_bytes`
    /// every request waits; at `num_traces` only one that would start a trace. Spans of traces
    /// already buffered, being decided, or decided (they follow the cached decision) add no
    /// trace, and are taken, as the Collector takes them.
    fn must_wait(&self, spans: &[SpanRef]) -> bool {
        let settings = self.settings();
        if !settings.block_on_overflow {
            return false;
        }
        if settings.max_buffered_bytes > 0 && self.buffered_bytes() >= settings.max_buffered_bytes {
            return true;
        }
        self.live_traces() >= settings.num_traces && !self.all_traces_known(spans)
    }

    /// Whether every span's trace is buffered, being decided, or in the decision cache.
    fn all_traces_known(&self, spans: &[SpanRef]) -> bool {
        let now = Instant::now();
        let mut last: Option<&TraceId> = None;
        for span in spans {
            let id = &span.info.trace_id;
            if last == Some(id) {
                continue;
            }
            last = Some(id);
            let state = self.lock(shard_of(id));
            let known = state.traces.contains_key(id)
                || state.deciding.contains_key(id)
                || state.cache.get_with_age(id, now).is_some();
            if !known {
                return false;
            }
        }
        true
    }

    /// With `block_on_overflow`, waits while `spans` cannot be taken (see
    /// [`TraceBuffer::must_wait`]), until decisions make room, at most [`OVERFLOW_MAX_WAIT`];
    /// then refuses, counted and logged.
    pub async fn wait_for_room(&self, spans: &[SpanRef]) -> Result<(), Overflow> {
        if !self.must_wait(spans) {
            return Ok(());
        }
        let deadline = Instant::now() + OVERFLOW_MAX_WAIT;
        loop {
            let room = self.room.notified();
            tokio::pin!(room);
            // Registered before the check, so a decision between the check and the wait wakes it.
            room.as_mut().enable();
            if !self.must_wait(spans) {
                return Ok(());
            }
            if tokio::time::timeout_at(deadline, room).await.is_err() {
                if !self.must_wait(spans) {
                    return Ok(());
                }
                self.metrics.refusals.increment(1);
                self.log_overflow();
                return Err(Overflow);
            }
        }
    }

    fn log_overflow(&self) {
        if self.overflow_log.ready() {
            let settings = self.settings();
            tracing::warn!(
                num_traces = settings.num_traces,
                max_buffered_bytes = settings.max_buffered_bytes,
                "buffer full with block_on_overflow: refusing requests with a retryable status \
                 (counted in tailgate_buffer_overflow_refusals)"
            );
        }
    }

    /// Over `num_traces`, and so due to decide traces early (`settings`: the ones in force, read
    /// once by the caller).
    pub(super) fn over_traces(&self, settings: &BufferSettings) -> bool {
        self.live_traces() > settings.num_traces
    }

    /// Over `max_buffered_bytes`, and so due to decide traces early. Not with
    /// `block_on_overflow`: there, a request accepted just under the limit may take the buffer
    /// past it by its own size, and the requests after it are refused until decisions make room.
    pub(super) fn over_bytes(&self, settings: &BufferSettings) -> bool {
        !settings.block_on_overflow
            && settings.max_buffered_bytes > 0
            && self.buffered_bytes() > settings.max_buffered_bytes
    }

    /// Decides the oldest traces now until the buffer is back within `num_traces` and
    /// `max_buffered_bytes`, in global age order: every shard is locked (in index order; no
    /// other path holds more than one shard lock, so this cannot deadlock) and their queues are
    /// merged by deadline, so taking the few hundred traces a request pushes over the limit
    /// costs one lock acquisition per shard, not a scan of every shard per trace. The policies
    /// run after the locks are released, one round per shard.
    pub(super) fn decide_early(&self, kept: &mut Vec<Chunk>, outcome: &mut IngestOutcome) {
        let settings = self.settings();
        if !self.over_traces(&settings) && !self.over_bytes(&settings) {
            return;
        }
        let now = Instant::now();
        let mut due: Vec<Vec<Due>> = (0..SHARDS).map(|_| Vec::new()).collect();
        // Added to its series when dropped, after the locks.
        let mut removal_ages = self.metrics.removal_age.batch();
        {
            let mut states: Vec<_> = (0..SHARDS).map(|shard| self.lock(shard)).collect();
            // Each shard's earliest queued deadline: a lower bound of its oldest live trace
            // (a queue entry may be stale, the trace gone or given a later deadline).
            let mut fronts: BinaryHeap<Reverse<(Instant, usize)>> = states
                .iter()
                .enumerate()
                .filter_map(|(shard, state)| Some(Reverse((state.earliest_deadline()?, shard))))
                .collect();
            while let Some(Reverse((_, shard))) = fronts.pop() {
                let for_traces = self.over_traces(&settings);
                if !for_traces && !self.over_bytes(&settings) {
                    break;
                }
                // Every other shard's live traces are due no earlier than the next front, so a
                // trace of this shard due by then is the oldest of all.
                let by = fronts.peek().map(|Reverse((deadline, _))| *deadline);
                let state = &mut *states[shard];
                if let Some((id, entry)) = state.pop_due_by(by) {
                    due[shard].push(self.take_for_decision(
                        state,
                        id,
                        entry,
                        now,
                        &mut removal_ages,
                    ));
                    if for_traces {
                        outcome.decided_early += 1;
                    } else {
                        outcome.decided_early_for_bytes += 1;
                    }
                }
                if let Some(deadline) = state.earliest_deadline() {
                    fronts.push(Reverse((deadline, shard)));
                }
            }
        }
        for (shard, due) in due.into_iter().enumerate() {
            kept.extend(self.settle(shard, due));
        }
    }
}
