//! One shard of the buffer: its traces, its deadline queues and its decision cache, behind one
//! mutex.
//!
//! `decision_wait` is the same for every trace, so arrival order is deadline order and a FIFO
//! (`VecDeque`) is a deadline queue with no heap. Traces whose root span arrived with
//! `decision_wait_after_root_received` get a second FIFO, also in deadline order; traces handed
//! over by another sampler keep the deadline they had there, in any order, so they go in a heap.
//! A queue entry is checked against the map only when it reaches the front: an entry whose trace
//! is gone (or was given a new deadline) is stale and skipped then.

use std::cmp::Reverse;
use std::collections::hash_map::Entry;
use std::collections::{BinaryHeap, HashMap, VecDeque};
use std::sync::{Mutex, OnceLock};

use tokio::sync::Notify;
use tokio::time::Instant;

use super::cache::{self, fingerprint, IdBuildHasher};
use super::store::Stored;
use crate::otlp::TraceId;

/// Shards: enough that receivers on different cores rarely meet on one lock.
pub const SHARDS: usize = 16;

/// Which shard holds a trace: a hash of its fingerprint, seeded per process, so crafted trace
/// IDs cannot choose their shard, and a decision known only by fingerprint (one moved from
/// another sampler) finds its shard too.
pub fn shard_of(id: &TraceId) -> usize {
    shard_of_fingerprint(fingerprint(id))
}

/// [`shard_of`] for a trace known by its fingerprint.
pub fn shard_of_fingerprint(fingerprint: u64) -> usize {
    static SEED: OnceLock<[u64; 2]> = OnceLock::new();
    let [a, b] = *SEED.get_or_init(|| {
        // `RandomState` is seeded from the OS once per process.
        use std::hash::{BuildHasher, Hasher};
        let word = |salt: u64| {
            let mut h = std::collections::hash_map::RandomState::new().build_hasher();
            h.write_u64(salt);
            h.finish()
        };
        [word(1), word(2) | 1]
    });
    // A 128-bit multiply folded to 64 bits mixes every input bit into every output bit.
    let full = u128::from(fingerprint ^ a) * u128::from(b);
    (((full >> 64) as u64) ^ (full as u64)) as usize % SHARDS
}

pub(super) struct TraceEntry {
    pub(super) deadline: Instant,
    /// When its first span arrived here (for `sampling_trace_removal_age`).
    pub(super) first_seen: Instant,
    pub(super) chunks: Vec<Stored>,
    pub(super) spans: u32,
    /// Encoded span bytes as received (what `maximum_trace_size_bytes` limits).
    pub(super) bytes: usize,
    /// Memory counted against `max_buffered_bytes`.
    pub(super) memory: usize,
}

/// The queues of `(deadline, trace)` entries a shard decides from, each earliest first.
#[derive(Default)]
pub(super) struct Queues {
    /// In arrival order; deadlines are `arrival + decision_wait`, so arrival order is deadline
    /// order and a FIFO suffices.
    pub(super) arrivals: VecDeque<(Instant, TraceId)>,
    /// For traces whose root span arrived: `root arrival + decision_wait_after_root_received`,
    /// also in deadline order.
    pub(super) roots: VecDeque<(Instant, TraceId)>,
    /// Traces handed over by another sampler, with the deadline they had there: those come in
    /// any order, so a heap.
    pub(super) moved: BinaryHeap<Reverse<(Instant, TraceId)>>,
}

#[derive(Clone, Copy)]
enum Which {
    Arrivals,
    Roots,
    Moved,
}

impl Queues {
    /// Queues a new trace's deadline; returns whether the decider must recompute its next
    /// wake-up. The FIFO stays in deadline order: after a reload shortened `decision_wait`, a
    /// deadline earlier than the FIFO's last goes in the heap instead.
    pub(super) fn push_arrival(&mut self, deadline: Instant, id: TraceId) -> bool {
        Self::push_ordered(&mut self.arrivals, &mut self.moved, deadline, id)
    }

    /// [`Queues::push_arrival`] for a deadline brought forward by a root span.
    pub(super) fn push_root(&mut self, deadline: Instant, id: TraceId) -> bool {
        Self::push_ordered(&mut self.roots, &mut self.moved, deadline, id)
    }

    fn push_ordered(
        fifo: &mut VecDeque<(Instant, TraceId)>,
        heap: &mut BinaryHeap<Reverse<(Instant, TraceId)>>,
        deadline: Instant,
        id: TraceId,
    ) -> bool {
        match fifo.back().map(|&(last, _)| last) {
            Some(last) if last > deadline => {
                heap.push(Reverse((deadline, id)));
                true
            }
            last => {
                fifo.push_back((deadline, id));
                last.is_none()
            }
        }
    }

    fn front(&self, which: Which) -> Option<(Instant, TraceId)> {
        match which {
            Which::Arrivals => self.arrivals.front().copied(),
            Which::Roots => self.roots.front().copied(),
            Which::Moved => self.moved.peek().map(|Reverse(e)| *e),
        }
    }

    fn pop(&mut self, which: Which) {
        match which {
            Which::Arrivals => drop(self.arrivals.pop_front()),
            Which::Roots => drop(self.roots.pop_front()),
            Which::Moved => drop(self.moved.pop()),
        }
    }

    /// The queue whose front is the earliest, with that front.
    fn earliest(&self) -> Option<(Which, Instant, TraceId)> {
        [Which::Arrivals, Which::Roots, Which::Moved]
            .into_iter()
            .filter_map(|w| self.front(w).map(|(d, id)| (w, d, id)))
            .min_by_key(|&(_, d, _)| d)
    }

    /// Pops entries of `which` whose trace is gone or has since been given another deadline, so
    /// its front is live; returns that front's deadline.
    fn live_front(
        &mut self,
        which: Which,
        traces: &HashMap<TraceId, TraceEntry, IdBuildHasher>,
    ) -> Option<Instant> {
        while let Some((deadline, id)) = self.front(which) {
            match traces.get(&id) {
                Some(entry) if entry.deadline == deadline => return Some(deadline),
                _ => self.pop(which),
            }
        }
        None
    }
}

pub(super) struct ShardState {
    pub(super) traces: HashMap<TraceId, TraceEntry, IdBuildHasher>,
    pub(super) queues: Queues,
    pub(super) cache: cache::DecisionCache,
    /// Traces taken out to be decided while the policies run outside the lock, with the spans
    /// that arrived for them meanwhile: those follow the decision when it is recorded.
    pub(super) deciding: HashMap<TraceId, Pending, IdBuildHasher>,
}

/// Spans that arrived for a trace while it was being decided.
#[derive(Default)]
pub(super) struct Pending {
    pub(super) chunks: Vec<Stored>,
    pub(super) spans: u32,
}

impl ShardState {
    /// The earliest live deadline in the shard.
    pub(super) fn front_deadline(&mut self) -> Option<Instant> {
        [Which::Arrivals, Which::Roots, Which::Moved]
            .into_iter()
            .filter_map(|w| self.queues.live_front(w, &self.traces))
            .min()
    }

    /// Removes and returns the trace with the earliest deadline if it is due by `now`.
    pub(super) fn pop_due(&mut self, now: Instant) -> Option<(TraceId, TraceEntry)> {
        // A queue front is checked against the map only once it is due: a stale front (a trace
        // removed early, or given an earlier deadline in another queue) is then skipped.
        loop {
            let (which, deadline, id) = self.queues.earliest()?;
            if deadline > now {
                return None;
            }
            self.queues.pop(which);
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
                queues: Queues::default(),
                cache: cache::DecisionCache::new(sampled_cache, not_sampled_cache),
                deciding: HashMap::default(),
            }),
            wake: Notify::new(),
        }
    }
}
