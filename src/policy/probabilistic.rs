//! `probabilistic`: keeps `sampling_percentage` percent of traces, chosen by hashing the trace ID.
//!
//! The hash is the Collector's, bit for bit: FNV-1a 64 over the salt's bytes then the 16 trace-ID
//! bytes (salt `default-hash-seed` when unset), kept when the hash is at or below
//! `MaxUint64 * percentage / 100` computed as Go's `big.Float` does (64-bit mantissa, rounded to
//! nearest even, then truncated). A fleet mixing Collectors and tailgates keeps the same traces.

use serde::Deserialize;

use super::{sampled_if, Decision, Policy, PolicyError, TraceView};
use crate::yaml::ConfigError;

const DEFAULT_HASH_SALT: &str = "default-hash-seed";

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProbabilisticConfig {
    #[serde(default)]
    pub hash_salt: String,
    #[serde(default)]
    pub sampling_percentage: f64,
}

impl ProbabilisticConfig {
    pub fn validate(&self, path: &str, errors: &mut Vec<ConfigError>) {
        if !(self.sampling_percentage.is_finite() && self.sampling_percentage >= 0.0) {
            errors.push(ConfigError::new(
                format!("{path}.sampling_percentage"),
                format!(
                    "sampling_percentage must be a number from 0 to 100, got {}",
                    self.sampling_percentage
                ),
            ));
        }
    }

    pub fn build(&self) -> ProbabilisticPolicy {
        ProbabilisticPolicy::new(&self.hash_salt, self.sampling_percentage)
    }
}

pub struct ProbabilisticPolicy {
    salt: Vec<u8>,
    threshold: u64,
}

impl ProbabilisticPolicy {
    pub fn new(salt: &str, percentage: f64) -> Self {
        let salt = if salt.is_empty() {
            DEFAULT_HASH_SALT
        } else {
            salt
        };
        Self {
            salt: salt.as_bytes().to_vec(),
            threshold: threshold_for_ratio(percentage / 100.0),
        }
    }

    pub fn keeps(&self, trace_id: &[u8; 16]) -> bool {
        fnv1a_64(&[&self.salt, trace_id]) <= self.threshold
    }
}

impl Policy for ProbabilisticPolicy {
    fn evaluate(&self, trace: &TraceView<'_>) -> Result<Decision, PolicyError> {
        Ok(sampled_if(self.keeps(&trace.trace_id)))
    }
}

/// FNV-1a, 64-bit, over the concatenation of `parts`.
pub fn fnv1a_64(parts: &[&[u8]]) -> u64 {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for part in parts {
        for &byte in *part {
            hash ^= u64::from(byte);
            hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
        }
    }
    hash
}

/// `uint64(big.Float(MaxUint64) * big.Float(ratio))` with Go's semantics: the product is rounded
/// to a 64-bit mantissa (nearest, ties to even), then truncated toward zero and clamped.
pub fn threshold_for_ratio(ratio: f64) -> u64 {
    if ratio.is_nan() || ratio <= 0.0 {
        return 0;
    }
    // ratio = mantissa * 2^exponent exactly, with a 53-bit integer mantissa.
    let bits = ratio.to_bits();
    let raw_exp = ((bits >> 52) & 0x7ff) as i32;
    let frac = bits & ((1u64 << 52) - 1);
    let (mantissa, exponent) = if raw_exp == 0 {
        (frac, -1074)
    } else {
        (frac | (1u64 << 52), raw_exp - 1075)
    };
    let mut product = u128::from(mantissa) * u128::from(u64::MAX);
    let mut exponent = exponent;
    // Round the product to 64 significant bits.
    let width = 128 - product.leading_zeros() as i32;
    if width > 64 {
        let shift = (width - 64) as u32;
        let kept = product >> shift;
        let remainder = product & ((1u128 << shift) - 1);
        let half = 1u128 << (shift - 1);
        let mut rounded = kept;
        if remainder > half || (remainder == half && kept & 1 == 1) {
            rounded += 1;
        }
        product = rounded;
        exponent += shift as i32;
    }
    // value = product * 2^exponent; truncate toward zero and clamp to u64.
    let value = if exponent >= 0 {
        if exponent >= 64 || (product << exponent) >> exponent != product {
            return u64::MAX;
        }
        product << exponent
    } else if exponent <= -128 {
        0
    } else {
        product >> (-exponent) as u32
    };
    u64::try_from(value).unwrap_or(u64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fnv1a_matches_the_published_test_vectors() {
        // Vectors from the FNV reference (draft-eastlake-fnv): "", "a", "foobar".
        assert_eq!(fnv1a_64(&[b""]), 0xcbf29ce484222325);
        assert_eq!(fnv1a_64(&[b"a"]), 0xaf63dc4c8601ec8c);
        assert_eq!(fnv1a_64(&[b"foobar"]), 0x85944171f73967e8);
        assert_eq!(fnv1a_64(&[b"foo", b"bar"]), fnv1a_64(&[b"foobar"]));
    }

    #[test]
    fn thresholds_follow_go_big_float_rounding() {
        assert_eq!(threshold_for_ratio(0.0), 0);
        assert_eq!(threshold_for_ratio(1.0), u64::MAX);
        assert_eq!(threshold_for_ratio(2.0), u64::MAX);
        // (2^64-1)/2 = 2^63 - 0.5 fits 64 mantissa bits exactly and truncates to 2^63 - 1.
        assert_eq!(threshold_for_ratio(0.5), (1u64 << 63) - 1);
        // 0.25 likewise: 2^62 - 0.25 truncates to 2^62 - 1.
        assert_eq!(threshold_for_ratio(0.25), (1u64 << 62) - 1);
        // 0.1 is not exact in binary; the result must sit within one ulp of the real product.
        let t = threshold_for_ratio(0.1) as f64;
        assert!((t / u64::MAX as f64 - 0.1).abs() < 1e-15);
    }

    #[test]
    fn the_kept_share_matches_the_percentage() {
        let policy = ProbabilisticPolicy::new("", 5.0);
        let mut kept = 0;
        let n = 100_000u64;
        for i in 0..n {
            let mut id = [0u8; 16];
            id[..8].copy_from_slice(&i.to_be_bytes());
            id[8..].copy_from_slice(&(i.wrapping_mul(0x9e37_79b9_7f4a_7c15)).to_le_bytes());
            kept += policy.keeps(&id) as u64;
        }
        let share = kept as f64 / n as f64;
        assert!((0.045..0.055).contains(&share), "kept {share}");
    }

    #[test]
    fn the_salt_changes_which_traces_are_kept_but_is_deterministic() {
        let a = ProbabilisticPolicy::new("one", 50.0);
        let b = ProbabilisticPolicy::new("two", 50.0);
        let ids: Vec<[u8; 16]> = (0u8..64)
            .map(|i| [i.wrapping_mul(37).wrapping_add(1); 16])
            .collect();
        let ka: Vec<bool> = ids.iter().map(|id| a.keeps(id)).collect();
        let kb: Vec<bool> = ids.iter().map(|id| b.keeps(id)).collect();
        assert_ne!(ka, kb);
        assert_eq!(ka, ids.iter().map(|id| a.keeps(id)).collect::<Vec<_>>());
    }

    #[test]
    fn an_empty_salt_means_the_collectors_default_salt() {
        let id = [0xab; 16];
        let explicit = ProbabilisticPolicy::new(DEFAULT_HASH_SALT, 50.0);
        let empty = ProbabilisticPolicy::new("", 50.0);
        assert_eq!(explicit.keeps(&id), empty.keeps(&id));
        assert_eq!(
            fnv1a_64(&[DEFAULT_HASH_SALT.as_bytes(), &id]),
            fnv1a_64(&[b"default-hash-seed", &id])
        );
    }
}
