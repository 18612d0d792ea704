//! Moving traces and decisions between samplers (the cluster's hand-off): taking buffered traces
//! out, undecided, with the time they still had to wait; and adopting decisions another sampler
//! took for traces this one now owns. Traces coming in are added by `ingest` with their carried
//! deadlines ([`Carried`]).

use std::collections::HashMap;
use std::time::Duration;

use tokio::time::Instant;

use super::cache::IdBuildHasher;
use super::shard::{shard_of_fingerprint, SHARDS};
use super::TraceBuffer;
use crate::otlp::handoff::MovedDecision;
use crate::otlp::{Chunk, TraceId};

/// A trace taken out of the buffer for another sampler.
#[derive(Debug)]
pub struct HandedTrace {
    pub id: TraceId,
    pub chunks: Vec<Chunk>,
    /// How long it still had to wait for its decision here.
    pub remaining: Duration,
}

/// For traces handed over by another sampler: how long each still has to wait for its decision.
pub type Carried = HashMap<TraceId, Duration, IdBuildHasher>;

impl TraceBuffer {
    /// Removes every buffered trace whose ID satisfies `hand_off` and returns its spans with the
    /// time it still had to wait, for a sampler that no longer owns those traces to send them to
    /// their new owner. The traces are not decided here and nothing is remembered about them.
    pub fn take_traces(&self, hand_off: impl Fn(&TraceId) -> bool) -> Vec<HandedTrace> {
        let mut taken = Vec::new();
        let now = Instant::now();
        for shard in 0..SHARDS {
            let mut state = self.lock(shard);
            let ids: Vec<TraceId> = state
                .traces
                .ids()
                .filter(|id| hand_off(id))
                .copied()
                .collect();
            for id in ids {
                if let Some(entry) = state.traces.remove(&id) {
                    self.counts.remove_trace(entry.spans, entry.memory);
                    let chunks = entry
                        .chunks
                        .into_iter()
                        .map(|s| s.into_chunk(&self.codec, None))
                        .collect();
                    taken.push(HandedTrace {
                        id,
                        chunks,
                        remaining: entry.deadline.saturating_duration_since(now),
                    });
                }
            }
        }
        self.update_gauges();
        taken
    }

    /// Remembers decisions another sampler took, for traces this sampler owns now: their late
    /// spans follow them here. Returns how many were new here.
    pub fn adopt_decisions(&self, decisions: &[MovedDecision]) -> usize {
        let mut adopted = 0;
        let mut by_shard: Vec<Vec<MovedDecision>> = vec![Vec::new(); SHARDS];
        for d in decisions {
            by_shard[shard_of_fingerprint(d.fingerprint)].push(*d);
        }
        for (shard, decisions) in by_shard.into_iter().enumerate() {
            if decisions.is_empty() {
                continue;
            }
            let mut state = self.lock(shard);
            for d in decisions {
                adopted += usize::from(state.cache.adopt(d));
            }
        }
        adopted
    }

    /// The remembered decisions, with their ring positions (`crc32(trace ID) % 36000`), of
    /// traces whose position `is_foreign` says another sampler owns now.
    pub fn foreign_decisions(&self, is_foreign: impl Fn(u32) -> bool) -> Vec<(u32, MovedDecision)> {
        (0..SHARDS)
            .flat_map(|shard| self.lock(shard).cache.foreign(&is_foreign))
            .collect()
    }
}
