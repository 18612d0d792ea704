//! The decision cache: which recently decided traces were kept and which were not, so spans that
//! arrive after a decision follow it instead of starting a new, partial trace.
//!
//! Each entry is a 64-bit fingerprint of the trace ID (its two halves mixed: trace IDs are random,
//! so collisions are negligible; the same function on every sampler, so a decision can move to
//! another sampler by fingerprint), held in a hash map (with when it was decided, for `sampling_late_span_age`) plus an insertion-order ring for FIFO
//! eviction that also keeps the trace's ring position: about 30 bytes plus hash-table overhead per
//! decided trace, where the Collector keeps decided traces' decoded spans until `num_traces`
//! pushes them out.

use std::collections::hash_map::RandomState;
use std::collections::{HashMap, VecDeque};
use std::hash::{BuildHasher, Hasher};
use std::sync::OnceLock;
use std::time::Duration;

use tokio::time::Instant;

use crate::otlp::handoff::MovedDecision;
use crate::otlp::TraceId;
use crate::routing::ring::position_of;

/// Fingerprint of a trace ID used as the cache key.
pub fn fingerprint(id: &TraceId) -> u64 {
    let hi = u64::from_le_bytes(id[..8].try_into().unwrap());
    let lo = u64::from_le_bytes(id[8..].try_into().unwrap());
    hi ^ lo.rotate_left(29)
}

/// The per-process random seed of the buffer's hash maps and sets.
fn process_seed() -> [u64; 2] {
    static SEED: OnceLock<[u64; 2]> = OnceLock::new();
    *SEED.get_or_init(|| {
        // `RandomState` is seeded from the OS.
        let word = |salt: u64| {
            let mut h = RandomState::new().build_hasher();
            h.write_u64(salt);
            h.finish()
        };
        [word(1), word(2)]
    })
}

/// A hasher for trace IDs and fingerprints, seeded per process: trace IDs come from clients, and
/// an unseeded, invertible mix would let crafted IDs pile into one bucket and stall a shard. It
/// folds each 64-bit word into the state with a 128-bit multiply against the seed (the
/// construction of foldhash), which is as cheap as the unseeded mix it replaces.
#[derive(Clone, Copy)]
pub struct IdHasher {
    state: u64,
    seed: u64,
}

#[inline(always)]
fn folded_multiply(a: u64, b: u64) -> u64 {
    let full = u128::from(a) * u128::from(b);
    (full as u64) ^ ((full >> 64) as u64)
}

impl Hasher for IdHasher {
    fn finish(&self) -> u64 {
        folded_multiply(self.state, self.seed ^ 0x9e37_79b9_7f4a_7c15)
    }

    fn write(&mut self, bytes: &[u8]) {
        for chunk in bytes.chunks(8) {
            let mut word = [0u8; 8];
            word[..chunk.len()].copy_from_slice(chunk);
            self.write_u64(u64::from_le_bytes(word));
        }
    }

    fn write_u64(&mut self, n: u64) {
        self.state = folded_multiply(self.state ^ n, self.seed);
    }
}

/// Builds [`IdHasher`]s with the process's seed.
#[derive(Clone, Copy)]
pub struct IdBuildHasher {
    seed: [u64; 2],
}

impl Default for IdBuildHasher {
    fn default() -> Self {
        Self {
            seed: process_seed(),
        }
    }
}

impl BuildHasher for IdBuildHasher {
    type Hasher = IdHasher;

    fn build_hasher(&self) -> IdHasher {
        IdHasher {
            state: self.seed[0],
            seed: self.seed[1] | 1,
        }
    }
}

/// A bounded set of trace fingerprints with FIFO eviction, each with when it was added.
#[derive(Debug)]
pub struct FifoSet {
    /// Fingerprint → when it was added, in milliseconds since the set's epoch (wrapping: the
    /// age of a decision older than 49 days is not asked for).
    members: HashMap<u64, u32, IdBuildHasher>,
    /// Insertion order, with each trace's ring position (`crc32(trace ID) % 36000`), so that when
    /// the sampler set changes the decisions whose owner moved can be found without the IDs.
    order: VecDeque<(u64, u16)>,
    capacity: usize,
    epoch: Instant,
}

impl FifoSet {
    pub fn new(capacity: usize) -> Self {
        Self {
            members: HashMap::default(),
            order: VecDeque::new(),
            capacity,
            epoch: Instant::now(),
        }
    }

    fn millis(&self, at: Instant) -> u32 {
        at.saturating_duration_since(self.epoch).as_millis() as u32
    }

    pub fn contains(&self, key: u64) -> bool {
        self.members.contains_key(&key)
    }

    /// How long ago `key` was added, if it is a member.
    pub fn age(&self, key: u64, now: Instant) -> Option<Duration> {
        let added = *self.members.get(&key)?;
        Some(Duration::from_millis(u64::from(
            self.millis(now).wrapping_sub(added),
        )))
    }

    /// Adds `key` (at ring `position`) unless present; the oldest key goes when full.
    pub fn insert(&mut self, key: u64, position: u16) {
        self.insert_at(key, position, Instant::now());
    }

    /// [`FifoSet::insert`] with the time of the decision given (one clock read per round).
    pub fn insert_at(&mut self, key: u64, position: u16, now: Instant) {
        if self.capacity == 0 {
            return;
        }
        let at = self.millis(now);
        if let std::collections::hash_map::Entry::Vacant(slot) = self.members.entry(key) {
            slot.insert(at);
        } else {
            return;
        }
        self.order.push_back((key, position));
        if self.order.len() > self.capacity {
            if let Some((old, _)) = self.order.pop_front() {
                self.members.remove(&old);
            }
        }
    }

    /// Every key with its ring position, oldest first.
    pub fn entries(&self) -> impl Iterator<Item = (u64, u16)> + '_ {
        self.order.iter().copied()
    }
}

/// What the cache remembers about a trace.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Remembered {
    Sampled,
    NotSampled,
}

/// Ring positions fit 16 bits (the ring has 36000).
fn ring_position(id: &TraceId) -> u16 {
    position_of(id) as u16
}

/// The sampled and not-sampled caches of one buffer shard.
#[derive(Debug)]
pub struct DecisionCache {
    sampled: FifoSet,
    not_sampled: FifoSet,
}

impl DecisionCache {
    pub fn new(sampled: usize, not_sampled: usize) -> Self {
        Self {
            sampled: FifoSet::new(sampled),
            not_sampled: FifoSet::new(not_sampled),
        }
    }

    #[cfg(test)]
    pub fn get(&self, id: &TraceId) -> Option<Remembered> {
        let key = fingerprint(id);
        if self.sampled.contains(key) {
            Some(Remembered::Sampled)
        } else if self.not_sampled.contains(key) {
            Some(Remembered::NotSampled)
        } else {
            None
        }
    }

    /// The remembered decision for a trace and how long ago it was taken (or adopted here).
    pub fn get_with_age(&self, id: &TraceId, now: Instant) -> Option<(Remembered, Duration)> {
        let key = fingerprint(id);
        if let Some(age) = self.sampled.age(key, now) {
            Some((Remembered::Sampled, age))
        } else {
            self.not_sampled
                .age(key, now)
                .map(|age| (Remembered::NotSampled, age))
        }
    }

    /// Remembers the decision for a trace that was buffered. A trace is buffered only when the
    /// cache knows nothing of it (its spans would otherwise have followed the remembered
    /// decision), so usually neither set holds it and there is nothing to remove from the other
    /// set (which cost a hash lookup, usually a cache miss, per decision). Its fingerprint may be
    /// known all the same: a decision adopted from a peer while the trace was being decided, or
    /// another trace ID with the same fingerprint (crafted IDs can collide: the fingerprint is
    /// the same function on every sampler, so it is not seeded). Then the first decision stays.
    #[cfg(test)]
    pub fn remember_buffered(&mut self, id: &TraceId, decision: Remembered) {
        self.remember_buffered_at(id, decision, Instant::now());
    }

    /// [`DecisionCache::remember_buffered`] with the time of the decision given.
    pub fn remember_buffered_at(&mut self, id: &TraceId, decision: Remembered, now: Instant) {
        let key = fingerprint(id);
        let position = ring_position(id);
        match decision {
            Remembered::Sampled => self.sampled.insert_at(key, position, now),
            Remembered::NotSampled => self.not_sampled.insert_at(key, position, now),
        }
    }

    /// Remembers a decision another sampler took (it moved here with the trace's ownership),
    /// unless this cache already knows the trace. Its ring position is not known here and not
    /// needed again: a decision moves once, to the owner.
    /// Returns whether the decision was new here.
    pub fn adopt(&mut self, moved: MovedDecision) -> bool {
        let key = moved.fingerprint;
        if self.sampled.contains(key) || self.not_sampled.contains(key) {
            return false;
        }
        if moved.sampled {
            self.sampled.insert(key, u16::MAX);
        } else {
            self.not_sampled.insert(key, u16::MAX);
        }
        true
    }

    /// The decisions, with their traces' ring positions, of traces whose position `is_foreign`
    /// says another sampler owns now.
    pub fn foreign(&self, is_foreign: impl Fn(u32) -> bool) -> Vec<(u32, MovedDecision)> {
        let pick = |set: &FifoSet, sampled: bool| {
            set.entries()
                .filter(|&(_, position)| position != u16::MAX && is_foreign(u32::from(position)))
                .map(move |(fingerprint, position)| {
                    (
                        u32::from(position),
                        MovedDecision {
                            fingerprint,
                            sampled,
                        },
                    )
                })
                .collect::<Vec<_>>()
        };
        let mut moved = pick(&self.sampled, true);
        moved.extend(pick(&self.not_sampled, false));
        moved
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_oldest_decision_is_forgotten_first() {
        let mut cache = DecisionCache::new(2, 1);
        let ids: Vec<TraceId> = (1u8..=3).map(|i| [i; 16]).collect();
        for id in &ids {
            cache.remember_buffered(id, Remembered::Sampled);
        }
        assert_eq!(cache.get(&ids[0]), None);
        assert_eq!(cache.get(&ids[1]), Some(Remembered::Sampled));
        assert_eq!(cache.get(&ids[2]), Some(Remembered::Sampled));
        cache.remember_buffered(&[9; 16], Remembered::NotSampled);
        cache.remember_buffered(&[8; 16], Remembered::NotSampled);
        assert_eq!(cache.get(&[9; 16]), None);
        assert_eq!(cache.get(&[8; 16]), Some(Remembered::NotSampled));
    }

    #[test]
    fn a_zero_sized_cache_remembers_nothing() {
        let mut cache = DecisionCache::new(0, 0);
        cache.remember_buffered(&[1; 16], Remembered::Sampled);
        cache.remember_buffered(&[2; 16], Remembered::NotSampled);
        assert_eq!(cache.get(&[1; 16]), None);
        assert_eq!(cache.get(&[2; 16]), None);
    }
}
