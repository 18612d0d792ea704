//! The decision cache: which recently decided traces were kept and which were not, so spans that
//! arrive after a decision follow it instead of starting a new, partial trace.
//!
//! Each entry is a 64-bit fingerprint of the trace ID (its two halves mixed: trace IDs are random,
//! so collisions are negligible; the same function on every sampler, so a decision can move to
//! another sampler by fingerprint), held in one hash map for both kinds with when it was decided
//! (for `sampling_late_span_age`) and the trace's ring position: 24 bytes plus hash-table
//! overhead per decided trace, where the Collector keeps decided traces' decoded spans until
//! `num_traces` pushes them out.

use std::collections::hash_map::RandomState;
use std::collections::HashMap;
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

/// Two random words, from the OS's randomness (`RandomState` is seeded from it).
fn random_seed() -> [u64; 2] {
    let word = |salt: u64| {
        let mut h = RandomState::new().build_hasher();
        h.write_u64(salt);
        h.finish()
    };
    [word(1), word(2)]
}

/// The per-process random seed of the buffer's hash maps and sets.
fn process_seed() -> [u64; 2] {
    static SEED: OnceLock<[u64; 2]> = OnceLock::new();
    *SEED.get_or_init(random_seed)
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
        Self::with_seed(process_seed())
    }
}

impl IdBuildHasher {
    pub fn with_seed(seed: [u64; 2]) -> Self {
        Self { seed }
    }

    /// A builder with a seed of its own, not the maps' one: for a hash whose bits must say
    /// nothing about where a key sits in the maps.
    pub fn with_random_seed() -> Self {
        Self::with_seed(random_seed())
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

/// One remembered decision.
#[derive(Debug, Clone, Copy)]
struct Entry {
    /// Its kind's count of decisions remembered before it: the entry is forgotten once its
    /// kind's capacity of newer ones has been remembered.
    seq: u64,
    /// When it was remembered, in milliseconds since the cache's epoch (wrapping: the age of a
    /// decision older than 49 days is not asked for).
    at: u32,
    /// The trace's ring position (`crc32(trace ID) % 36000`), so that when the sampler set
    /// changes the decisions whose owner moved can be found without the IDs; `u16::MAX` for a
    /// decision adopted from another sampler (it moves once).
    position: u16,
    sampled: bool,
}

/// The sampled and not-sampled decisions of one buffer shard, each kind remembered FIFO up to
/// its own capacity.
///
/// One hash map for both kinds, so a new trace costs one lookup (usually a cache miss) instead
/// of one per kind. Eviction is by count, not by removal: an entry is live while fewer than its
/// kind's capacity of newer decisions of that kind were remembered, which is exactly what a FIFO
/// of that capacity would hold. Forgotten entries are swept out in one pass over the map once
/// they make up a third of it, instead of with a lookup of the oldest key per decision.
#[derive(Debug)]
pub struct DecisionCache {
    entries: HashMap<u64, Entry, IdBuildHasher>,
    /// Per kind (sampled, not sampled): how many decisions are remembered at most, and how many
    /// were remembered so far.
    capacity: [u64; 2],
    remembered: [u64; 2],
    epoch: Instant,
}

fn kind(sampled: bool) -> usize {
    usize::from(!sampled)
}

impl DecisionCache {
    pub fn new(sampled: usize, not_sampled: usize) -> Self {
        Self {
            entries: HashMap::default(),
            capacity: [sampled as u64, not_sampled as u64],
            remembered: [0, 0],
            epoch: Instant::now(),
        }
    }

    fn millis(&self, at: Instant) -> u32 {
        at.saturating_duration_since(self.epoch).as_millis() as u32
    }

    fn is_live(&self, entry: &Entry) -> bool {
        let k = kind(entry.sampled);
        entry.seq + self.capacity[k] >= self.remembered[k]
    }

    fn live(&self, key: u64) -> Option<&Entry> {
        self.entries.get(&key).filter(|e| self.is_live(e))
    }

    /// Remembers `key` unless a live entry has it (the first decision stays).
    fn insert(&mut self, key: u64, sampled: bool, position: u16, at: Instant) -> bool {
        let k = kind(sampled);
        if self.capacity[k] == 0 || self.live(key).is_some() {
            return false;
        }
        let entry = Entry {
            seq: self.remembered[k],
            at: self.millis(at),
            position,
            sampled,
        };
        self.remembered[k] += 1;
        self.entries.insert(key, entry);
        let live_at_most = self.capacity[0] + self.capacity[1];
        if self.entries.len() as u64 > live_at_most + live_at_most / 2 {
            let (capacity, remembered) = (self.capacity, self.remembered);
            self.entries.retain(|_, e| {
                let k = kind(e.sampled);
                e.seq + capacity[k] >= remembered[k]
            });
        }
        true
    }

    #[cfg(test)]
    pub fn get(&self, id: &TraceId) -> Option<Remembered> {
        self.live(fingerprint(id))
            .map(|e| Remembered::from(e.sampled))
    }

    /// The remembered decision for a trace and how long ago it was taken (or adopted here).
    pub fn get_with_age(&self, id: &TraceId, now: Instant) -> Option<(Remembered, Duration)> {
        let entry = self.live(fingerprint(id))?;
        let age = Duration::from_millis(u64::from(self.millis(now).wrapping_sub(entry.at)));
        Some((Remembered::from(entry.sampled), age))
    }

    #[cfg(test)]
    pub fn remember_buffered(&mut self, id: &TraceId, decision: Remembered) {
        self.remember_buffered_at(id, decision, Instant::now());
    }

    /// Remembers the decision for a trace that was buffered. Its fingerprint may be known
    /// already: a decision adopted from a peer while the trace was being decided, or another
    /// trace ID with the same fingerprint (crafted IDs can collide: the fingerprint is the same
    /// function on every sampler, so it is not seeded). Then the first decision stays.
    pub fn remember_buffered_at(&mut self, id: &TraceId, decision: Remembered, now: Instant) {
        let sampled = decision == Remembered::Sampled;
        self.insert(fingerprint(id), sampled, ring_position(id), now);
    }

    /// Remembers a decision another sampler took (it moved here with the trace's ownership),
    /// unless this cache already knows the trace. Its ring position is not known here and not
    /// needed again: a decision moves once, to the owner.
    /// Returns whether the decision was new here.
    pub fn adopt(&mut self, moved: MovedDecision) -> bool {
        self.insert(moved.fingerprint, moved.sampled, u16::MAX, Instant::now())
    }

    /// The decisions, with their traces' ring positions, of traces whose position `is_foreign`
    /// says another sampler owns now: kept ones first, each kind oldest first.
    pub fn foreign(&self, is_foreign: impl Fn(u32) -> bool) -> Vec<(u32, MovedDecision)> {
        let mut moved: Vec<(usize, u64, u32, MovedDecision)> = self
            .entries
            .iter()
            .filter(|(_, e)| {
                e.position != u16::MAX && is_foreign(u32::from(e.position)) && self.is_live(e)
            })
            .map(|(&fingerprint, e)| {
                let decision = MovedDecision {
                    fingerprint,
                    sampled: e.sampled,
                };
                (kind(e.sampled), e.seq, u32::from(e.position), decision)
            })
            .collect();
        moved.sort_unstable_by_key(|&(k, seq, _, _)| (k, seq));
        moved.into_iter().map(|(_, _, p, d)| (p, d)).collect()
    }
}

impl From<bool> for Remembered {
    fn from(sampled: bool) -> Self {
        if sampled {
            Remembered::Sampled
        } else {
            Remembered::NotSampled
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

    fn id(n: u32) -> TraceId {
        let mut id = [0u8; 16];
        id[..4].copy_from_slice(&n.to_le_bytes());
        id[12..].copy_from_slice(&n.wrapping_mul(2_654_435_761).to_le_bytes());
        id
    }

    #[test]
    fn each_kind_remembers_exactly_its_last_decisions_however_many_came_before() {
        let mut cache = DecisionCache::new(10, 3);
        for n in 0..1000 {
            cache.remember_buffered(&id(n), Remembered::Sampled);
            if n % 100 == 0 {
                cache.remember_buffered(&id(1_000_000 + n), Remembered::NotSampled);
            }
        }
        let kept: Vec<u32> = (0..1000).filter(|&n| cache.get(&id(n)).is_some()).collect();
        assert_eq!(kept, (990..1000).collect::<Vec<_>>());
        let not_kept: Vec<u32> = (0..1000)
            .filter(|&n| cache.get(&id(1_000_000 + n)).is_some())
            .collect();
        assert_eq!(not_kept, [700, 800, 900]);
        assert_eq!(
            cache.get(&id(1_000_900)),
            Some(Remembered::NotSampled),
            "each kind answers its own decision"
        );
        // Forgotten decisions are swept out as they pile up, not kept forever.
        assert!(
            cache.entries.len() <= 13 + 13 / 2 + 1,
            "{} entries held for 13 live ones",
            cache.entries.len()
        );
    }

    #[test]
    fn the_first_decision_for_a_fingerprint_stays() {
        let mut cache = DecisionCache::new(4, 4);
        cache.remember_buffered(&id(1), Remembered::NotSampled);
        cache.remember_buffered(&id(1), Remembered::Sampled);
        assert_eq!(cache.get(&id(1)), Some(Remembered::NotSampled));
        let moved = MovedDecision {
            fingerprint: fingerprint(&id(1)),
            sampled: true,
        };
        assert!(!cache.adopt(moved), "known here already");
        let moved = MovedDecision {
            fingerprint: fingerprint(&id(2)),
            sampled: true,
        };
        assert!(cache.adopt(moved));
        assert_eq!(cache.get(&id(2)), Some(Remembered::Sampled));
    }

    #[test]
    fn foreign_decisions_are_the_live_ones_kept_first_oldest_first_never_adopted_ones() {
        let mut cache = DecisionCache::new(2, 2);
        for n in 1..=3 {
            cache.remember_buffered(&id(n), Remembered::Sampled);
            cache.remember_buffered(&id(10 + n), Remembered::NotSampled);
        }
        cache.adopt(MovedDecision {
            fingerprint: 77,
            sampled: true,
        });
        let moved: Vec<(u64, bool)> = cache
            .foreign(|_| true)
            .into_iter()
            .map(|(_, d)| (d.fingerprint, d.sampled))
            .collect();
        // Capacity 2 per kind: the adopted decision pushed the oldest kept one (3) out, and
        // is itself never moved again.
        let f = |n| fingerprint(&id(n));
        assert_eq!(moved, [(f(3), true), (f(12), false), (f(13), false)]);
        let positions: Vec<u32> = cache
            .foreign(|_| true)
            .into_iter()
            .map(|(p, _)| p)
            .collect();
        assert_eq!(positions[0], u32::from(ring_position(&id(3))));
        assert!(cache.foreign(|_| false).is_empty());
    }
}
