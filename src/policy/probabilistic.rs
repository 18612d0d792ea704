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
                    "sampling_percentage must be a number of at least 0 (100 or more keeps every \
                     trace), got {}",
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

/// `uint64(big.Float(MaxUint64) * big.Float(ratio))` as Go computes it: the product rounded to a
/// 64-bit mantissa (nearest, ties to even), then truncated toward zero and clamped.
///
/// For a `ratio` below 1 the rounding never changes the truncated result, so this truncates the
/// exact product. With `ratio = m * 2^e` (`m` the 53-bit or, below 2^-1022, shorter mantissa of
/// bit length `k`), the product `(2^64 - 1) * m = 2^64 * m - m` has `k + 64` bits; the `k` bits
/// below its top 64 are `2^k - m`, which is at most half of `2^k` only when `m` is `2^(k-1)`,
/// and then the product has `k + 63` bits and nothing below its top 64. So the rounding only ever
/// rounds down, and since `ratio * (2^64 - 1)` is below 2^64, the 64-bit mantissa reaches at
/// least the units: rounded down, it is still at or above the truncated product.
pub fn threshold_for_ratio(ratio: f64) -> u64 {
    if ratio.is_nan() || ratio <= 0.0 {
        return 0;
    }
    if ratio >= 1.0 {
        return u64::MAX;
    }
    // ratio = mantissa * 2^-shift exactly, with shift >= 53 because ratio < 1.
    let bits = ratio.to_bits();
    let raw_exp = ((bits >> 52) & 0x7ff) as u32;
    let frac = bits & ((1u64 << 52) - 1);
    let (mantissa, shift) = if raw_exp == 0 {
        (frac, 1074)
    } else {
        (frac | (1u64 << 52), 1075 - raw_exp)
    };
    let product = u128::from(mantissa) * u128::from(u64::MAX);
    // Below 2^-64 the product is under 1 (every subnormal is).
    product.checked_shr(shift).map_or(0, |value| value as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_negative_or_non_finite_percentage_is_a_config_error_at_its_path() {
        let errors_for = |percentage: f64| {
            let mut errors = Vec::new();
            ProbabilisticConfig {
                hash_salt: String::new(),
                sampling_percentage: percentage,
            }
            .validate(
                "processors.tail_sampling.policies[2].probabilistic",
                &mut errors,
            );
            errors.iter().map(|e| e.to_string()).collect::<Vec<_>>()
        };
        for bad in [-0.5, f64::NAN, f64::INFINITY] {
            let errors = errors_for(bad);
            assert_eq!(errors.len(), 1, "{bad}: {errors:?}");
            assert!(
                errors[0].starts_with(
                    "processors.tail_sampling.policies[2].probabilistic.sampling_percentage: "
                ),
                "{errors:?}"
            );
        }
        // As in the Collector, over 100 keeps everything rather than failing.
        for good in [0.0, 0.01, 100.0, 150.0] {
            assert_eq!(errors_for(good), Vec::<String>::new(), "{good}");
        }
    }

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
        // 2^-k: (2^64 - 1) / 2^k truncates to 2^(64-k) - 1, down to 0 at 2^-64 and below.
        for k in 1..=64 {
            let ratio = 2f64.powi(-k);
            assert_eq!(threshold_for_ratio(ratio), (1u64 << (64 - k)) - 1, "2^-{k}");
        }
        for tiny in [2f64.powi(-65), f64::MIN_POSITIVE, 5e-324] {
            assert_eq!(threshold_for_ratio(tiny), 0, "{tiny:e}");
        }
        assert_eq!(threshold_for_ratio(f64::NAN), 0);
        assert_eq!(threshold_for_ratio(f64::INFINITY), u64::MAX);
        assert_eq!(threshold_for_ratio(-0.5), 0);
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

    /// `(trace ID, kept at 50% with the default salt, kept at 50% with no salt at all,
    /// kept at 33% with salt "test-salt")`, computed outside this code by an FNV-1a and an
    /// exact-rational threshold written in Python from the Collector's probabilistic.go (see
    /// docs/TESTING.md). A policy that ignored or misapplied the salt would match the first
    /// column with odds of 2^-32.
    const DECISIONS: [(&str, bool, bool, bool); 32] = [
        ("aa805e5568349938d979070ac076ed2f", false, true, false),
        ("6bc3d5123be939b85654bbf5d00d9c6a", false, false, false),
        ("ee33a12bed44475e6dd2acaf548c0333", false, false, false),
        ("252348dfb07c5a822e640f0c514b0545", false, false, false),
        ("cd78621aef37174df04c031e88362183", false, false, false),
        ("1afae4b8562f0ac85ce0679c8220b819", false, true, true),
        ("8b28e492d8ea726d2cb64a2677e3cff1", false, true, true),
        ("abd92f0366340520794690eed6846fce", false, true, true),
        ("a4bba65911af7761633102d6136b3a6d", false, false, false),
        ("fbb0bca37010cbd6e94b4f5802546aee", true, true, false),
        ("e7b99438c79f979ae65ceb3aa4a325f7", false, true, false),
        ("cf8b97eccceeb6ab39deb0034a10b98b", true, true, true),
        ("65e5c7a3b617628147aa2828602d5bcb", false, false, true),
        ("af57c1adbe2ce65b6a4aa7e39278f3ed", false, true, false),
        ("92c277668c2b0b27eea107772ce513dd", true, false, true),
        ("562787561c099933a2d2ab132313f0df", false, false, false),
        ("bccb90eda0005ee3e171e792fac6cb79", true, false, false),
        ("ba736345a2eac8539c747d525032ea00", false, false, false),
        ("56e2c36946c53bae828a8c5813e961c6", false, false, false),
        ("3ea5739c86289c1edac84bf22dc20c7a", true, false, false),
        ("1dddfa9adde6f9501d667981ebea69b3", false, false, true),
        ("93adf221f2600eeecbeb8caa854d61d8", false, false, true),
        ("a4aa5bbfd10370ffc4bc2176be26af50", false, false, false),
        ("9739f33d19cf9977bba178906e612970", false, false, false),
        ("73555954063e893f67ae62b5ba4d44a3", true, true, false),
        ("1db9057546af0bfc6aabb6ca36c72236", true, true, false),
        ("0eb214d2c9c3a6624829153396361861", false, true, false),
        ("937e50d71b97cdfa5788214fbbe44733", true, false, false),
        ("134da6672f00a0711df7407870d76c9b", true, true, false),
        ("13cfb32ec6c5c8d8737047a41b5ff920", false, true, false),
        ("cc7786fe836500e3eb868abd08c324a3", true, true, true),
        ("7ca5cea1fe85cf61d9e2f3cc52535932", false, true, false),
    ];

    fn id(hex: &str) -> [u8; 16] {
        let mut id = [0u8; 16];
        for (i, byte) in id.iter_mut().enumerate() {
            *byte = u8::from_str_radix(&hex[2 * i..2 * i + 2], 16).unwrap();
        }
        id
    }

    #[test]
    fn decisions_match_an_independent_implementation_for_every_salt() {
        let default = ProbabilisticPolicy::new("", 50.0);
        let explicit = ProbabilisticPolicy::new("default-hash-seed", 50.0);
        let salted = ProbabilisticPolicy::new("test-salt", 33.0);
        for (hex, with_default_salt, without_salt, with_test_salt) in DECISIONS {
            let id = id(hex);
            assert_eq!(default.keeps(&id), with_default_salt, "{hex}, empty salt");
            assert_eq!(
                explicit.keeps(&id),
                with_default_salt,
                "{hex}, explicit salt"
            );
            assert_eq!(salted.keeps(&id), with_test_salt, "{hex}, test-salt at 33%");
            // The unsalted hash differs on many of these: proof the salt is hashed in.
            let unsalted = fnv1a_64(&[&id]) <= threshold_for_ratio(0.5);
            assert_eq!(unsalted, without_salt, "{hex}, no salt");
        }
        let differ = DECISIONS.iter().filter(|d| d.1 != d.2).count();
        assert!(
            differ >= 8,
            "the vectors tell salted from unsalted ({differ})"
        );
        // One hash, exactly: FNV-1a 64 of "default-hash-seed" then sixteen zero bytes.
        assert_eq!(
            fnv1a_64(&[DEFAULT_HASH_SALT.as_bytes(), &[0u8; 16]]),
            0xe195_36ee_d1bb_ac3d
        );
    }

    #[test]
    fn thresholds_equal_exact_rational_arithmetic() {
        // floor(round64((2^64 - 1) * ratio)), computed with Python's fractions.Fraction (and
        // equal to floor((2^64 - 1) * ratio) for 200,000 random ratios below 1).
        for (ratio, want) in [
            (0.2, 3_689_348_814_741_910_527u64),
            (0.33, 6_087_425_544_324_152_319),
            (0.05, 922_337_203_685_477_631),
            (0.1, 1_844_674_407_370_955_263),
            (0.001, 18_446_744_073_709_551),
            // Above one half the product is at least 2^63 and Go's rounding is at the units.
            (0.75, 13_835_058_055_282_163_711),
            (0.9, 16_602_069_666_338_596_863),
            (0.99, 18_262_276_632_972_455_935),
            (0.999, 18_428_297_329_635_842_047),
            (0.5000000000000001, 9_223_372_036_854_777_855),
            (1.5, u64::MAX),
        ] {
            assert_eq!(threshold_for_ratio(ratio), want, "ratio {ratio}");
        }
    }

    /// Deterministic, well-mixed trace IDs (splitmix64), standing in for the Collector test's
    /// seeded `math/rand` IDs.
    fn random_ids(n: usize) -> impl Iterator<Item = [u8; 16]> {
        let mut state = 1u64;
        let mut next = move || {
            state = state.wrapping_add(0x9e37_79b9_7f4a_7c15);
            let mut z = state;
            z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
            z ^ (z >> 31)
        };
        (0..n).map(move |_| {
            let mut id = [0u8; 16];
            id[..8].copy_from_slice(&next().to_be_bytes());
            id[8..].copy_from_slice(&next().to_be_bytes());
            id
        })
    }

    #[test]
    fn the_collectors_probabilistic_test_table_holds() {
        // probabilistic_test.go, TestProbabilisticSampling: 100,000 random trace IDs, the kept
        // share within 0.2 percentage points of the expected one.
        for (name, percentage, salt, expected) in [
            ("100%", 100.0, "", 100.0),
            ("0%", 0.0, "", 0.0),
            ("25%", 25.0, "", 25.0),
            ("33%", 33.0, "", 33.0),
            ("33% - custom salt", 33.0, "test-salt", 33.0),
            ("-%50", -50.0, "", 0.0),
            ("150%", 150.0, "", 100.0),
        ] {
            let policy = ProbabilisticPolicy::new(salt, percentage);
            let n = 100_000;
            let kept = random_ids(n).filter(|id| policy.keeps(id)).count();
            let share = kept as f64 / n as f64 * 100.0;
            assert!(
                (share - expected).abs() <= 0.2,
                "{name}: kept {share}%, expected {expected}%"
            );
        }
    }
}
