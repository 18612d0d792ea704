//! One shard of the buffer: its traces, its deadline queues and its decision cache, behind one
//! mutex.
//!
//! `decision_wait` is the same for every trace, so arrival order is deadline order and a FIFO
//! (`VecDeque`) is a deadline queue with no heap. Traces whose root span arrived with
//! `decision_wait_after_root_received` get a second FIFO, also in deadline order. A queue entry
//! is checked against the map only when it reaches the front: an entry whose trace is gone (or
//! was given a new deadline) is stale and skipped then.

use std::collections::hash_map::Entry;
use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;

use tokio::sync::Notify;
use tokio::time::Instant;

use super::cache::{self, IdBuildHasher};
use super::store::Stored;
use crate::otlp::TraceId;

/// Shards: enough that receivers on different cores rarely meet on one lock.
pub const SHARDS: usize = 16;

/// Which shard holds a trace. Trace IDs are random; the last bytes are as good as a hash.
pub fn shard_of(id: &TraceId) -> usize {
    (id[15] as usize ^ id[7] as usize) % SHARDS
}

pub(super) struct TraceEntry {
    pub(super) deadline: Instant,
    pub(super) chunks: Vec<Stored>,
    pub(super) spans: u32,
    /// Encoded span bytes as received (what `maximum_trace_size_bytes` limits).
    pub(super) bytes: usize,
    /// Memory counted against `max_buffered_bytes`.
    pub(super) memory: usize,
}

pub(super) struct ShardState {
    pub(super) traces: HashMap<TraceId, TraceEntry, IdBuildHasher>,
    /// `(deadline, trace)` in arrival order; deadlines are `arrival + decision_wait`.
    pub(super) queue: VecDeque<(Instant, TraceId)>,
    /// `(deadline, trace)` for traces whose root span arrived, deadlines
    /// `root arrival + decision_wait_after_root_received`: also in deadline order.
    pub(super) root_queue: VecDeque<(Instant, TraceId)>,
    pub(super) cache: cache::DecisionCache,
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
    pub(super) fn front_deadline(&mut self) -> Option<Instant> {
        let a = live_front(&mut self.queue, &self.traces);
        let b = live_front(&mut self.root_queue, &self.traces);
        match (a, b) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// Removes and returns the trace with the earliest deadline if it is due by `now`.
    pub(super) fn pop_due(&mut self, now: Instant) -> Option<(TraceId, TraceEntry)> {
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

pub(super) struct Shard {
    pub(super) state: Mutex<ShardState>,
    pub(super) wake: Notify,
}

impl Shard {
    /// An empty shard whose decision cache remembers up to the given numbers of decisions.
    pub(super) fn new(sampled_cache: usize, not_sampled_cache: usize) -> Self {
        Shard {
            state: Mutex::new(ShardState {
                traces: HashMap::default(),
                queue: VecDeque::new(),
                root_queue: VecDeque::new(),
                cache: cache::DecisionCache::new(sampled_cache, not_sampled_cache),
            }),
            wake: Notify::new(),
        }
    }
}
