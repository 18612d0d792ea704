//! Adding a request's spans to their traces.
//!
//! Outside any lock, the request's spans are grouped by trace and origin and copied into stored
//! chunks ([`TraceBuffer::store_by_trace`]); then each shard's traces are added under that
//! shard's lock, one lock acquisition per shard per request ([`TraceBuffer::add_to_shard`]).
//! Spans of a trace already decided follow the remembered decision instead.

use std::cmp::Reverse;
use std::sync::Arc;

use tokio::time::Instant;

use super::cache::Remembered;
use super::counts::Added;
use super::decide::mark_dry_run;
use super::handoff::Carried;
use super::shard::{shard_of, ShardState, TraceChunks, TraceEntry, TraceSlot};
use super::store::{BlockBuilder, Stored};
use super::{BufferSettings, IngestOutcome, Overflow, TraceBuffer, TRACE_OVERHEAD};
use crate::otlp::group::for_each_trace_run;
use crate::otlp::{Chunk, Origin, ParsedRequest, SpanBatch, SpanRef, SpanSummary, TraceId};

/// One trace's spans from one request, as stored chunks.
pub(super) struct Incoming {
    pub id: TraceId,
    /// Chunks in the request's `stored` vector: the next `chunks` of them.
    pub chunks: usize,
    pub spans: u32,
    pub bytes: usize,
    pub memory: usize,
    pub has_root: bool,
}

/// When a request's spans arrived, and the deadlines handed-over traces carry.
#[derive(Clone, Copy)]
struct Arrival<'a> {
    now: Instant,
    carried: Option<&'a Carried>,
    settings: &'a BufferSettings,
}

/// What adding one shard's traces produced, besides the outcome counts.
#[derive(Default)]
struct ShardResult {
    added: Added,
    new_traces: usize,
    /// The shard's decider must recompute its next deadline.
    wake: bool,
}

impl TraceBuffer {
    /// Adds a parsed request's spans to their traces. Kept spans that result (late spans of kept
    /// traces, traces decided early at a limit) are sent to the exporter before returning, so a
    /// slow exporter pushes back on the client.
    ///
    /// With `block_on_overflow`, a request that arrives while the buffer holds `num_traces`
    /// traces or `max_buffered_bytes` bytes waits for decisions to make room, at most
    /// [`super::limits::OVERFLOW_MAX_WAIT`], and is then refused whole ([`Overflow`]) for the
    /// client to retry.
    pub async fn ingest(
        &self,
        request: ParsedRequest,
        body: &[u8],
    ) -> Result<IngestOutcome, Overflow> {
        self.ingest_with(request, body, None).await
    }

    /// [`TraceBuffer::ingest`] for spans handed over by another sampler: a trace listed in
    /// `carried` is decided when its remaining wait there runs out (or earlier, if it was due
    /// here already), not a whole `decision_wait` from now.
    pub async fn ingest_with(
        &self,
        request: ParsedRequest,
        body: &[u8],
        carried: Option<&Carried>,
    ) -> Result<IngestOutcome, Overflow> {
        if request.spans.is_empty() {
            return Ok(IngestOutcome::default());
        }
        self.wait_for_room(&request.spans).await?;
        Ok(self.add(request, body, carried).await)
    }

    /// Takes back traces this sampler had buffered and could not hand off, with their
    /// deadlines, even at a limit (they were within it when they first came).
    pub async fn put_back(&self, request: ParsedRequest, body: &[u8], carried: &Carried) {
        self.add(request, body, Some(carried)).await;
    }

    async fn add(
        &self,
        request: ParsedRequest,
        body: &[u8],
        carried: Option<&Carried>,
    ) -> IngestOutcome {
        let mut outcome = IngestOutcome::default();
        let origins: Vec<Arc<Origin>> = request.origins.into_iter().map(Arc::new).collect();
        let (incoming, stored) = self.store_by_trace(&request.spans, &origins, body);
        let mut stored = stored.into_iter();
        let now = Instant::now();
        let settings = self.settings();
        let mut kept = Vec::new();
        let mut new_traces = 0usize;
        // `incoming` is ordered by shard: take one shard's run of traces at a time.
        let mut start = 0;
        while start < incoming.len() {
            let shard = shard_of(&incoming[start].id);
            let end = start
                + incoming[start..]
                    .iter()
                    .take_while(|g| shard_of(&g.id) == shard)
                    .count();
            let result = self.add_to_shard(
                shard,
                &incoming[start..end],
                &mut stored,
                Arrival {
                    now,
                    carried,
                    settings: &settings,
                },
                &mut kept,
                &mut outcome,
            );
            self.counts.add(result.added);
            new_traces += result.new_traces;
            if result.wake {
                self.shards[shard].wake.notify_one();
            }
            start = end;
        }
        self.metrics.new_traces.increment(new_traces as u64);
        if self.over_traces(&settings) || self.over_bytes(&settings) {
            self.decide_early(&mut kept, &mut outcome);
        }
        self.count_outcome(&outcome);
        self.update_gauges();
        if !kept.is_empty() {
            self.send(SpanBatch { chunks: kept }).await;
        }
        outcome
    }

    /// Adds the traces of one shard (`groups`, whose chunks are the next ones of `stored`) under
    /// its lock. The live totals it adds are returned, to be published after the lock.
    fn add_to_shard(
        &self,
        shard: usize,
        groups: &[Incoming],
        stored: &mut impl Iterator<Item = Stored>,
        arrival: Arrival<'_>,
        kept: &mut Vec<Chunk>,
        outcome: &mut IngestOutcome,
    ) -> ShardResult {
        // One loop under one lock acquisition: every step needs the same four shard fields and
        // the same running totals, and this is the hottest loop of ingest.
        let mut result = ShardResult::default();
        let mut guard = self.lock(shard);
        let ShardState {
            traces,
            queues,
            cache,
            deciding,
        } = &mut *guard;
        let now = arrival.now;
        // Skips the lookup in the (nearly always empty) map of traces being decided.
        let deciding_empty = deciding.is_empty();
        for group in groups {
            let chunks = stored.by_ref().take(group.chunks);
            let id = group.id;
            let entry = match traces.entry(id) {
                TraceSlot::Buffered(entry) => entry,
                TraceSlot::Vacant(vacant) => {
                    let pending = if deciding_empty {
                        None
                    } else {
                        deciding.get_mut(&id)
                    };
                    if let Some(pending) = pending {
                        // Its policies are running now: these spans follow their decision.
                        pending.chunks.extend(chunks);
                        pending.spans += group.spans;
                        outcome.buffered += group.spans as usize;
                        continue;
                    }
                    match cache.get_with_age(&id, now) {
                        Some((remembered, age)) => {
                            self.metrics.late_span_age.record(age.as_secs_f64());
                            let sampled = remembered == Remembered::Sampled;
                            if sampled {
                                outcome.forwarded_late += group.spans as usize;
                            } else {
                                outcome.dropped_late += group.spans as usize;
                            }
                            if sampled || arrival.settings.dry_run {
                                kept.extend(chunks.map(|c| {
                                    let chunk = c.into_chunk(&self.codec, None);
                                    if arrival.settings.dry_run {
                                        mark_dry_run(chunk, sampled)
                                    } else {
                                        chunk
                                    }
                                }));
                            } else {
                                chunks.for_each(drop);
                            }
                            continue;
                        }
                        None => {
                            let deadline = now + arrival.settings.decision_wait;
                            result.wake |= queues.push_arrival(deadline, id);
                            result.new_traces += 1;
                            result.added.traces += 1;
                            result.added.bytes += TRACE_OVERHEAD;
                            vacant.insert(TraceEntry {
                                deadline,
                                first_seen: now,
                                chunks: TraceChunks::new(),
                                spans: 0,
                                bytes: 0,
                                memory: TRACE_OVERHEAD,
                            })
                        }
                    }
                }
            };
            entry.chunks.extend(chunks);
            entry.spans += group.spans;
            entry.bytes += group.bytes;
            entry.memory += group.memory;
            result.added.spans += group.spans as usize;
            result.added.bytes += group.memory;
            outcome.buffered += group.spans as usize;
            if group.has_root && !arrival.settings.wait_after_root.is_zero() {
                let root_deadline = now + arrival.settings.wait_after_root;
                if root_deadline < entry.deadline {
                    entry.deadline = root_deadline;
                    result.wake |= queues.push_root(root_deadline, id);
                }
            }
            if let Some(remaining) = arrival.carried.and_then(|c| c.get(&id)) {
                // Moving a trace does not restart its wait.
                let carried_deadline = now + (*remaining).min(arrival.settings.decision_wait);
                if carried_deadline < entry.deadline {
                    entry.deadline = carried_deadline;
                    queues.moved.push(Reverse((carried_deadline, id)));
                    result.wake = true;
                }
            }
            if arrival.settings.max_trace_bytes > 0
                && entry.bytes > arrival.settings.max_trace_bytes
            {
                let entry = traces.remove(&id).expect("present");
                self.counts.remove_trace(entry.spans, entry.memory);
                cache.remember_buffered_at(&id, Remembered::NotSampled, now);
                outcome.too_large += 1;
                self.metrics
                    .spans_not_sampled
                    .increment(u64::from(entry.spans));
            }
        }
        result
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
        let bucket = |id: &TraceId| shard_of(id) as u8;
        for_each_trace_run(spans, bucket, |trace_id, origin, run| {
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
}
