//! Taking traces out of the buffer for another sampler (the cluster's hand-off): the traces
//! leave undecided, and nothing is remembered about them here.

use super::shard::SHARDS;
use super::TraceBuffer;
use crate::otlp::{Chunk, TraceId};

impl TraceBuffer {
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
                    self.counts.remove_trace(entry.spans, entry.memory);
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
}
