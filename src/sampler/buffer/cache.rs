//! The decision cache: which recently decided traces were kept and which were not, so spans that
//! arrive after a decision follow it instead of starting a new, partial trace.
//!
//! Each entry is a 64-bit fingerprint of the trace ID (its two halves XORed: trace IDs are random,
//! so collisions are negligible), held in a hash set plus an insertion-order ring for FIFO
//! eviction: two 8-byte copies of the fingerprint plus hash-table overhead per decided trace,
//! where the Collector keeps decided traces' decoded spans until `num_traces` pushes them out.

use std::collections::{HashSet, VecDeque};
use std::hash::{BuildHasherDefault, Hasher};

use crate::otlp::TraceId;

/// Fingerprint of a trace ID used as the cache key.
pub fn fingerprint(id: &TraceId) -> u64 {
    let hi = u64::from_le_bytes(id[..8].try_into().unwrap());
    let lo = u64::from_le_bytes(id[8..].try_into().unwrap());
    hi ^ lo.rotate_left(29)
}

/// A hasher for keys that are already uniformly random (trace IDs and their fingerprints): it
/// mixes the bytes cheaply instead of running SipHash over them.
#[derive(Default, Clone, Copy)]
pub struct IdHasher(u64);

impl Hasher for IdHasher {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        for chunk in bytes.chunks(8) {
            let mut word = [0u8; 8];
            word[..chunk.len()].copy_from_slice(chunk);
            self.0 = (self.0.rotate_left(23) ^ u64::from_le_bytes(word))
                .wrapping_mul(0x9e37_79b9_7f4a_7c15);
        }
    }

    fn write_u64(&mut self, n: u64) {
        self.0 = (self.0 ^ n).wrapping_mul(0x9e37_79b9_7f4a_7c15);
    }
}

pub type IdBuildHasher = BuildHasherDefault<IdHasher>;

/// A bounded set of trace fingerprints with FIFO eviction.
#[derive(Debug)]
pub struct FifoSet {
    members: HashSet<u64, IdBuildHasher>,
    order: VecDeque<u64>,
    capacity: usize,
}

impl FifoSet {
    pub fn new(capacity: usize) -> Self {
        Self {
            members: HashSet::default(),
            order: VecDeque::new(),
            capacity,
        }
    }

    pub fn contains(&self, key: u64) -> bool {
        self.members.contains(&key)
    }

    pub fn insert(&mut self, key: u64) {
        if self.capacity == 0 || !self.members.insert(key) {
            return;
        }
        self.order.push_back(key);
        if self.order.len() > self.capacity {
            if let Some(old) = self.order.pop_front() {
                self.members.remove(&old);
            }
        }
    }
}

/// What the cache remembers about a trace.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Remembered {
    Sampled,
    NotSampled,
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

    /// Remembers the decision for a trace that was buffered. A trace is buffered only when the
    /// cache knows nothing of it (its spans would otherwise have followed the remembered
    /// decision), and nothing else remembers it while it is buffered, so neither set holds it
    /// and there is nothing to remove from the other set (which cost a hash lookup, usually a
    /// cache miss, per decision).
    pub fn remember_buffered(&mut self, id: &TraceId, decision: Remembered) {
        let key = fingerprint(id);
        debug_assert!(!self.sampled.contains(key) && !self.not_sampled.contains(key));
        match decision {
            Remembered::Sampled => self.sampled.insert(key),
            Remembered::NotSampled => self.not_sampled.insert(key),
        }
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
