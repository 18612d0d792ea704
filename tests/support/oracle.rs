//! Expected values for the end-to-end tests, computed without tailgate's code: the Collector's
//! probabilistic decision and its `loadbalancing` ring, each written here from the Collector's
//! source and checked against the Collector's own published test vectors (in
//! `tests/harness_selftest.rs`). An e2e test that took its expectation from `tailgate::policy` or `tailgate::routing`
//! would pass whatever those computed.

use std::collections::BTreeMap;

/// The Collector's `probabilistic` policy (tailsamplingprocessor/internal/sampling/
/// probabilistic.go): FNV-1a 64 over the salt (`default-hash-seed` when empty) then the 16
/// trace-ID bytes, kept when at or below `MaxUint64 * percentage / 100` as Go's `big.Float`
/// computes it.
pub fn probabilistic_keeps(salt: &str, percentage: f64, trace_id: &[u8; 16]) -> bool {
    let salt = if salt.is_empty() {
        "default-hash-seed"
    } else {
        salt
    };
    let mut hash: u64 = 14_695_981_039_346_656_037; // FNV-1a 64 offset basis
    for &byte in salt.as_bytes().iter().chain(trace_id) {
        hash ^= byte as u64;
        hash = hash.wrapping_mul(1_099_511_628_211); // FNV 64 prime
    }
    hash <= big_float_threshold(percentage / 100.0)
}

/// `uint64(big.Float(MaxUint64) * big.Float(ratio))`: the exact product rounded to 64
/// significant bits (nearest, ties to even), then truncated; negative gives 0, overflow the max.
fn big_float_threshold(ratio: f64) -> u64 {
    // Zero, negative and NaN alike give 0.
    if ratio.is_nan() || ratio <= 0.0 {
        return 0;
    }
    if ratio >= 1.0 {
        return u64::MAX;
    }
    // ratio < 1 is m / 2^k exactly with m odd or k minimal; find them by doubling.
    let (mut m, mut k) = (ratio, 0u32);
    while m.fract() != 0.0 {
        m *= 2.0;
        k += 1;
    }
    let m = m as u128;
    // Exact product p = (2^64 - 1) * m / 2^k, as the integer numerator n = (2^64 - 1) * m.
    let n = (u64::MAX as u128) * m;
    let bits = 128 - n.leading_zeros();
    // Round n to 64 significant bits.
    let (mut top, mut shift) = (n, 0u32);
    if bits > 64 {
        shift = bits - 64;
        top = n >> shift;
        let rest = n - (top << shift);
        let half = 1u128 << (shift - 1);
        if rest > half || (rest == half && top % 2 == 1) {
            top += 1;
        }
    }
    // Value = top * 2^shift / 2^k, truncated.
    let value = if shift >= k {
        top << (shift - k)
    } else if k - shift >= 128 {
        0
    } else {
        top >> (k - shift)
    };
    value.min(u64::MAX as u128) as u64
}

/// CRC-32 (IEEE 802.3, reflected, polynomial 0xEDB88320), bit by bit: Go's
/// `crc32.ChecksumIEEE`.
pub fn crc32_ieee(data: &[u8]) -> u32 {
    let mut crc = !0u32;
    for &byte in data {
        crc ^= byte as u32;
        for _ in 0..8 {
            crc = if crc & 1 == 1 {
                (crc >> 1) ^ 0xEDB8_8320
            } else {
                crc >> 1
            };
        }
    }
    !crc
}

/// The Collector's `loadbalancing` ring (loadbalancingexporter/consistent_hashing.go):
/// endpoints in sorted order, each with `points` points at `crc32(endpoint ‖ byte(i)) % 36000`,
/// a position taken by the first endpoint to claim it.
#[derive(Debug, Clone)]
pub struct CollectorRing {
    points: BTreeMap<u32, String>,
}

impl CollectorRing {
    pub fn new(endpoints: &[String]) -> Self {
        Self::with_points(endpoints, 100)
    }

    pub fn with_points(endpoints: &[String], points: usize) -> Self {
        let mut sorted = endpoints.to_vec();
        sorted.sort();
        sorted.dedup();
        let mut ring = BTreeMap::new();
        for endpoint in &sorted {
            for i in 0..points {
                let mut key = endpoint.as_bytes().to_vec();
                key.push(i as u8);
                ring.entry(crc32_ieee(&key) % 36_000)
                    .or_insert_with(|| endpoint.clone());
            }
        }
        CollectorRing { points: ring }
    }

    /// The endpoint owning `identifier`: the first point at or after `crc32(identifier) % 36000`,
    /// wrapping around.
    pub fn endpoint_for(&self, identifier: &[u8]) -> &str {
        let position = crc32_ieee(identifier) % 36_000;
        self.points
            .range(position..)
            .next()
            .or_else(|| self.points.iter().next())
            .map(|(_, e)| e.as_str())
            .expect("a ring with at least one endpoint")
    }

    pub fn positions(&self) -> Vec<(u32, &str)> {
        self.points.iter().map(|(p, e)| (*p, e.as_str())).collect()
    }
}
