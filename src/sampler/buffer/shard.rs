//! One shard of the buffer: its traces, its deadline queues and its decision cache, behind one
//! mutex.
//!
//! `decision_wait` is the same for every trace, so arrival order is deadline order and a FIFO
//! (`VecDeque`) is a deadline queue with no heap. Traces whose root span arrived with
//! `decision_wait_after_root_received` get a second FIFO, also in deadline order; traces handed
//! over by another sampler keep the deadline they had there, in any order, so they go in a heap.
//! A queue entry is checked against the map only when it reaches the front: an entry whose trace
//! is gone (or was given a new deadline) is stale and skipped then.
//!
//! The traces themselves are held in arrival order ([`TraceTable`]): a small hash index from
//! trace ID to a sequence number, and the entries in a ring. A trace is decided about
//! `decision_wait` after it arrived, when every cache line of a hash map holding whole entries
//! (tens of MB at production rates) has long been evicted, so each lookup there cost two or
//! three misses; the index is a fifth of that size, and the ring is written at its back and read
//! at its front, in the order the hardware prefetcher follows.

use std::cmp::Reverse;
use std::collections::hash_map::Entry;
use std::collections::{BinaryHeap, HashMap, VecDeque};
use std::hash::BuildHasher;
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
    // Seeded apart from the shards' maps, so a key's shard says nothing about its bucket there.
    static HASHER: OnceLock<IdBuildHasher> = OnceLock::new();
    shard_with(
        HASHER.get_or_init(IdBuildHasher::with_random_seed),
        fingerprint,
    )
}

/// [`shard_of_fingerprint`] with the given hasher. Its two folded multiplies spread
/// fingerprints that differ only in their low bits; the single one this function first had put
/// 256 such fingerprints into 8 shards or fewer for about 1 seed in 200.
fn shard_with(hasher: &IdBuildHasher, fingerprint: u64) -> usize {
    hasher.hash_one(fingerprint) as usize % SHARDS
}

/// A buffered trace's stored chunks. Most traces arrive in one request (one chunk): held inline
/// in the map entry, that chunk costs no allocation of its own and no extra cache miss when the
/// trace is decided.
pub(super) type TraceChunks = smallvec::SmallVec<[Stored; 1]>;

pub(super) struct TraceEntry {
    pub(super) deadline: Instant,
    /// When its first span arrived here (for `sampling_trace_removal_age`).
    pub(super) first_seen: Instant,
    pub(super) chunks: TraceChunks,
    pub(super) spans: u32,
    /// Encoded span bytes as received (what `maximum_trace_size_bytes` limits).
    pub(super) bytes: usize,
    /// Memory counted against `max_buffered_bytes`.
    pub(super) memory: usize,
}

/// Slots below which [`TraceTable`] never compacts (a small table's empty slots cost nothing).
const COMPACT_MIN_SLOTS: usize = 1024;
/// Stale index entries below which [`TraceTable`] never sweeps its index.
const SWEEP_MIN_STALE: usize = 1024;

/// A shard's buffered traces: an index from trace ID to sequence number, and the entries in
/// arrival order. A trace removed out of order (decided early, handed off, given an earlier
/// deadline) leaves an empty slot until the front reaches it, or until empty slots are a third
/// of the table and it is compacted.
///
/// The trace taken at decision is nearly always the oldest, at the front of the ring. It is
/// taken from there without probing the index, whose entry for it stays behind, stale: a
/// sequence number below `first`, which no live trace has (`first` only grows, and compaction
/// renumbers live traces from `first` up). Probing would be a cache miss per trace (the index
/// is as large as a `decision_wait` of traces, and the entry was last touched that long ago);
/// the stale entries are swept out in one sequential pass once they are half as many as the
/// live ones.
#[derive(Default)]
pub(super) struct TraceTable {
    /// Live traces' sequence numbers, and stale entries (below `first`) of traces taken from the
    /// front.
    index: HashMap<TraceId, u64, IdBuildHasher>,
    /// Slot `i` holds sequence number `first + i`.
    slots: VecDeque<Option<(TraceId, TraceEntry)>>,
    first: u64,
    /// Traces buffered (the index's entries less the stale ones).
    live: usize,
}

/// A trace ID not in the table, with the index slot to insert it at.
pub(super) struct VacantTrace<'a> {
    index: IndexSlot<'a>,
    slots: &'a mut VecDeque<Option<(TraceId, TraceEntry)>>,
    first: u64,
    live: &'a mut usize,
}

/// Where a new trace's sequence number goes: a new index entry, or a stale one of the same ID.
enum IndexSlot<'a> {
    New(std::collections::hash_map::VacantEntry<'a, TraceId, u64>),
    Stale(std::collections::hash_map::OccupiedEntry<'a, TraceId, u64>),
}

impl<'a> VacantTrace<'a> {
    /// Adds the trace at the back of the arrival order.
    pub(super) fn insert(self, entry: TraceEntry) -> &'a mut TraceEntry {
        let seq = self.first + self.slots.len() as u64;
        let id = match self.index {
            IndexSlot::New(vacant) => {
                let id = *vacant.key();
                vacant.insert(seq);
                id
            }
            IndexSlot::Stale(mut stale) => {
                stale.insert(seq);
                *stale.key()
            }
        };
        *self.live += 1;
        self.slots.push_back(Some((id, entry)));
        &mut self
            .slots
            .back_mut()
            .and_then(Option::as_mut)
            .expect("just pushed")
            .1
    }
}

/// A trace looked up for adding spans: buffered already, or not.
pub(super) enum TraceSlot<'a> {
    Buffered(&'a mut TraceEntry),
    Vacant(VacantTrace<'a>),
}

impl TraceTable {
    /// The slot of a live trace's sequence number; `None` for a stale one.
    fn position(&self, seq: u64) -> Option<usize> {
        let position = seq.checked_sub(self.first)? as usize;
        debug_assert!(
            position < self.slots.len(),
            "a live sequence number is in the ring"
        );
        Some(position)
    }

    /// The slot of a buffered trace.
    fn find(&self, id: &TraceId) -> Option<usize> {
        self.position(*self.index.get(id)?)
    }

    pub(super) fn contains_key(&self, id: &TraceId) -> bool {
        self.find(id).is_some()
    }

    pub(super) fn get(&self, id: &TraceId) -> Option<&TraceEntry> {
        let position = self.find(id)?;
        self.slots[position].as_ref().map(|(_, e)| e)
    }

    pub(super) fn entry(&mut self, id: TraceId) -> TraceSlot<'_> {
        let first = self.first;
        let index = match self.index.entry(id) {
            Entry::Occupied(found) => match found.get().checked_sub(first) {
                Some(position) => {
                    let (_, entry) = self.slots[position as usize]
                        .as_mut()
                        .expect("indexed slot is full");
                    return TraceSlot::Buffered(entry);
                }
                None => IndexSlot::Stale(found),
            },
            Entry::Vacant(vacant) => IndexSlot::New(vacant),
        };
        TraceSlot::Vacant(VacantTrace {
            index,
            slots: &mut self.slots,
            first,
            live: &mut self.live,
        })
    }

    /// Removes a trace, if buffered and `keep` does not hold for its entry.
    pub(super) fn remove_unless(
        &mut self,
        id: &TraceId,
        keep: impl FnOnce(&TraceEntry) -> bool,
    ) -> Option<TraceEntry> {
        let at_front = matches!(self.slots.front(), Some(Some((front, _))) if front == id);
        let position = if at_front { 0 } else { self.find(id)? };
        let (_, entry) = self.slots[position].as_ref().expect("indexed slot is full");
        if keep(entry) {
            return None;
        }
        if !at_front {
            // Out of order: the entry is at hand (just probed), so it goes now.
            self.index.remove(id);
        }
        let (_, entry) = self.slots[position].take().expect("indexed slot is full");
        self.live -= 1;
        while let Some(None) = self.slots.front() {
            self.slots.pop_front();
            self.first += 1;
        }
        if self.slots.len() > COMPACT_MIN_SLOTS && self.slots.len() > self.live + self.live / 2 {
            self.compact();
        }
        if self.index.len() - self.live > SWEEP_MIN_STALE + self.live / 2 {
            let first = self.first;
            self.index.retain(|_, seq| *seq >= first);
        }
        Some(entry)
    }

    /// Drops the empty slots behind the front, renumbering the traces after them. Without it a
    /// trace that stays (its root span never came, while `decision_wait_after_root_received`
    /// decides the others within a second) would hold a whole `decision_wait` of arrivals'
    /// empty slots behind it, memory `max_buffered_bytes` does not count. Run when a third of
    /// the slots are empty, so its cost is a constant per removal. The new numbers start at
    /// `first`, so stale index entries stay below it.
    fn compact(&mut self) {
        let live = std::mem::take(&mut self.slots).into_iter().flatten();
        for (i, (id, entry)) in live.enumerate() {
            *self.index.get_mut(&id).expect("a live slot is indexed") = self.first + i as u64;
            self.slots.push_back(Some((id, entry)));
        }
    }

    pub(super) fn remove(&mut self, id: &TraceId) -> Option<TraceEntry> {
        self.remove_unless(id, |_| false)
    }

    /// The IDs of the buffered traces, in arrival order.
    pub(super) fn ids(&self) -> impl Iterator<Item = &TraceId> + '_ {
        self.slots.iter().flatten().map(|(id, _)| id)
    }
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
    fn live_front(&mut self, which: Which, traces: &TraceTable) -> Option<Instant> {
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
    pub(super) traces: TraceTable,
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

    /// The earliest deadline in the shard's queues, unchecked: no later than the earliest live
    /// deadline (the entry may be stale), and `None` only when the shard holds no trace.
    pub(super) fn earliest_deadline(&self) -> Option<Instant> {
        self.queues.earliest().map(|(_, deadline, _)| deadline)
    }

    /// Removes and returns the trace with the earliest deadline if it is due by `now`.
    pub(super) fn pop_due(&mut self, now: Instant) -> Option<(TraceId, TraceEntry)> {
        self.pop_due_by(Some(now))
    }

    /// Removes and returns the trace with the earliest deadline if it is due by `by` (any
    /// deadline with `None`).
    pub(super) fn pop_due_by(&mut self, by: Option<Instant>) -> Option<(TraceId, TraceEntry)> {
        // A queue front is checked against the map only once it is due: a stale front (a trace
        // removed early, or given an earlier deadline in another queue) is then skipped.
        loop {
            let (which, deadline, id) = self.queues.earliest()?;
            if by.is_some_and(|by| deadline > by) {
                return None;
            }
            self.queues.pop(which);
            if let Some(entry) = self.traces.remove_unless(&id, |e| e.deadline != deadline) {
                return Some((id, entry));
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
                traces: TraceTable::default(),
                queues: Queues::default(),
                cache: cache::DecisionCache::new(sampled_cache, not_sampled_cache),
                deciding: HashMap::default(),
            }),
            wake: Notify::new(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(spans: u32) -> TraceEntry {
        let now = Instant::now();
        TraceEntry {
            deadline: now,
            first_seen: now,
            chunks: TraceChunks::new(),
            spans,
            bytes: 0,
            memory: 0,
        }
    }

    fn add(table: &mut TraceTable, id: u8, spans: u32) {
        match table.entry([id; 16]) {
            TraceSlot::Vacant(vacant) => drop(vacant.insert(entry(spans))),
            TraceSlot::Buffered(_) => panic!("trace {id} was buffered already"),
        }
    }

    #[test]
    fn the_trace_table_finds_each_trace_and_forgets_removed_ones() {
        let mut table = TraceTable::default();
        for id in 1..=4 {
            add(&mut table, id, u32::from(id) * 10);
        }
        match table.entry([3; 16]) {
            TraceSlot::Buffered(e) => e.spans += 1,
            TraceSlot::Vacant(_) => panic!("trace 3 is buffered"),
        }
        assert_eq!(table.get(&[3; 16]).map(|e| e.spans), Some(31));
        // Out of order: the slot stays until the front reaches it.
        assert_eq!(table.remove(&[2; 16]).map(|e| e.spans), Some(20));
        assert_eq!(table.get(&[2; 16]).map(|e| e.spans), None);
        assert!(!table.contains_key(&[2; 16]));
        assert_eq!((table.first, table.slots.len()), (0, 4));
        // The front: it and the empty slot behind it go.
        assert_eq!(table.remove(&[1; 16]).map(|e| e.spans), Some(10));
        assert_eq!((table.first, table.slots.len()), (2, 2));
        assert_eq!(table.get(&[4; 16]).map(|e| e.spans), Some(40));
        assert_eq!(table.remove(&[1; 16]).map(|e| e.spans), None);
        // A trace added now goes at the back and is found there.
        add(&mut table, 5, 50);
        let ids: Vec<u8> = table.ids().map(|id| id[0]).collect();
        assert_eq!(ids, [3, 4, 5]);
        assert_eq!(table.get(&[5; 16]).map(|e| e.spans), Some(50));
    }

    #[test]
    fn remove_unless_leaves_a_trace_its_predicate_keeps() {
        let mut table = TraceTable::default();
        add(&mut table, 1, 10);
        assert!(table.remove_unless(&[1; 16], |e| e.spans == 10).is_none());
        assert!(table.contains_key(&[1; 16]));
        assert_eq!(
            table
                .remove_unless(&[1; 16], |e| e.spans != 10)
                .map(|e| e.spans),
            Some(10)
        );
        assert!(!table.contains_key(&[1; 16]));
        assert!(table.slots.is_empty());
        assert!(table.remove_unless(&[9; 16], |_| false).is_none());
    }

    #[test]
    fn empty_slots_behind_a_trace_that_stays_are_compacted_away() {
        // One trace whose root never comes stays at the front while the 10,000 after it are
        // decided early (as with decision_wait_after_root_received).
        let mut table = TraceTable::default();
        let id = |n: u32| {
            let mut id = [0u8; 16];
            id[..4].copy_from_slice(&n.to_le_bytes());
            id
        };
        for n in 0..10_001u32 {
            match table.entry(id(n)) {
                TraceSlot::Vacant(vacant) => drop(vacant.insert(entry(n))),
                TraceSlot::Buffered(_) => panic!("trace {n} was buffered already"),
            }
        }
        for n in 1..10_001u32 {
            if n % 1000 != 0 {
                assert_eq!(table.remove(&id(n)).map(|e| e.spans), Some(n));
            }
        }
        let live = 11;
        assert_eq!((table.index.len(), table.live), (live, live));
        assert!(
            table.slots.len() <= COMPACT_MIN_SLOTS + 1,
            "{} slots held for {live} traces",
            table.slots.len()
        );
        // Every trace is still found, in arrival order, after the renumbering.
        let ids: Vec<u32> = table
            .ids()
            .map(|i| u32::from_le_bytes(i[..4].try_into().unwrap()))
            .collect();
        assert_eq!(
            ids,
            [0, 1000, 2000, 3000, 4000, 5000, 6000, 7000, 8000, 9000, 10_000]
        );
        for n in (0..=10_000).step_by(1000) {
            assert_eq!(table.get(&id(n)).map(|e| e.spans), Some(n));
        }
        assert_eq!(table.remove(&id(0)).map(|e| e.spans), Some(0));
        assert_eq!(table.get(&id(1000)).map(|e| e.spans), Some(1000));
    }

    #[test]
    fn traces_taken_from_the_front_leave_stale_index_entries_that_are_swept() {
        let id = |n: u32| {
            let mut id = [0u8; 16];
            id[..4].copy_from_slice(&n.to_le_bytes());
            id
        };
        let add_n = |table: &mut TraceTable, n: u32| match table.entry(id(n)) {
            TraceSlot::Vacant(vacant) => drop(vacant.insert(entry(n))),
            TraceSlot::Buffered(_) => panic!("trace {n} was buffered already"),
        };
        let mut table = TraceTable::default();
        for n in 0..3 {
            add_n(&mut table, n);
        }
        // Taken at the front: its index entry stays, stale, and is not taken for a live one.
        assert_eq!(table.remove(&id(0)).map(|e| e.spans), Some(0));
        assert_eq!((table.index.len(), table.live), (3, 2));
        assert!(!table.contains_key(&id(0)));
        assert!(table.get(&id(0)).is_none());
        assert!(table.remove(&id(0)).is_none());
        // The same ID again reuses the stale entry, at the back.
        add_n(&mut table, 0);
        assert_eq!((table.index.len(), table.live), (3, 3));
        let ids: Vec<u8> = table.ids().map(|i| i[0]).collect();
        assert_eq!(ids, [1, 2, 0]);
        assert!(matches!(table.entry(id(0)), TraceSlot::Buffered(e) if e.spans == 0));

        // Thousands taken from the front behind one that stays: compaction renumbers the live
        // ones from `first`, the sweep drops the stale entries, and every live trace is found.
        let mut table = TraceTable::default();
        for n in 0..20_000 {
            add_n(&mut table, n);
            if n >= 10 {
                // Oldest first, as decisions take them; trace 5 stays in the middle for a
                // while, so both paths (the front and the index) are taken.
                let oldest = n - 10;
                if oldest != 5 {
                    assert_eq!(table.remove(&id(oldest)).map(|e| e.spans), Some(oldest));
                }
            }
            if n == 15_000 {
                assert_eq!(table.remove(&id(5)).map(|e| e.spans), Some(5));
            }
            assert!(
                table.index.len() - table.live <= SWEEP_MIN_STALE + table.live / 2,
                "{} index entries for {} traces",
                table.index.len(),
                table.live
            );
        }
        assert_eq!(table.live, 10);
        for n in 0..20_000 {
            assert_eq!(table.contains_key(&id(n)), n >= 19_990, "trace {n}");
        }
        for n in 19_990..20_000 {
            assert_eq!(table.get(&id(n)).map(|e| e.spans), Some(n));
        }
    }

    #[test]
    fn fingerprints_that_differ_in_their_low_bits_spread_over_the_shards_for_every_seed() {
        // Trace IDs that differ only in their first byte (what an unseeded "last bytes" shard
        // function put all in one shard), under 5,000 seeds: with one folded multiply, about 1
        // seed in 200 put them in 8 shards or fewer.
        let mut state = 0x1234_5678_9abc_def0u64;
        let mut next = || {
            // splitmix64
            state = state.wrapping_add(0x9e37_79b9_7f4a_7c15);
            let mut z = state;
            z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
            z ^ (z >> 31)
        };
        for _ in 0..5000 {
            let seed = [next(), next()];
            let hasher = IdBuildHasher::with_seed(seed);
            let shards: std::collections::BTreeSet<usize> = (0..=255u8)
                .map(|b| {
                    let mut id = [0u8; 16];
                    id[0] = b;
                    shard_with(&hasher, fingerprint(&id))
                })
                .collect();
            assert!(shards.len() > SHARDS / 2, "seed {seed:x?}: {shards:?}");
        }
    }
}
