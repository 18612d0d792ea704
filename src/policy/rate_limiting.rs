//! `rate_limiting`: keeps traces while a token bucket of spans allows them.
//!
//! The Collector's token bucket (since v0.153): `spans_per_second` tokens a second, holding at
//! most `burst_capacity` (default, or when 0: twice `spans_per_second`). A trace takes as many
//! tokens as it has spans; if the bucket holds fewer it is not sampled and takes nothing, and a
//! trace with more spans than the burst is never sampled. See [`super::limiter`].

use serde::Deserialize;

use super::limiter::TokenBucket;
use super::{sampled_if, Decision, Policy, PolicyError, TraceView};
use crate::yaml::ConfigError;

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RateLimitingConfig {
    #[serde(default)]
    pub spans_per_second: i64,
    #[serde(default)]
    pub burst_capacity: i64,
}

/// Checks a rate and its burst are not negative (shared with `bytes_limiting`).
pub(crate) fn validate_rate(
    path: &str,
    rate_field: &str,
    rate: i64,
    burst: i64,
    errors: &mut Vec<ConfigError>,
) {
    if rate < 0 {
        errors.push(ConfigError::new(
            format!("{path}.{rate_field}"),
            format!("{rate_field} must not be negative, got {rate}"),
        ));
    }
    if burst < 0 {
        errors.push(ConfigError::new(
            format!("{path}.burst_capacity"),
            format!("burst_capacity must not be negative, got {burst}"),
        ));
    }
}

/// The Collector's default burst: twice the rate.
pub(crate) fn burst_or_default(rate: i64, burst: i64) -> i64 {
    if burst > 0 {
        burst
    } else {
        rate.saturating_mul(2)
    }
}

impl RateLimitingConfig {
    pub fn validate(&self, path: &str, errors: &mut Vec<ConfigError>) {
        validate_rate(
            path,
            "spans_per_second",
            self.spans_per_second,
            self.burst_capacity,
            errors,
        );
    }

    pub fn build(&self) -> RateLimitingPolicy {
        RateLimitingPolicy {
            bucket: TokenBucket::new(
                self.spans_per_second,
                burst_or_default(self.spans_per_second, self.burst_capacity),
            ),
        }
    }
}

pub struct RateLimitingPolicy {
    bucket: TokenBucket,
}

impl Policy for RateLimitingPolicy {
    fn evaluate(&self, trace: &TraceView<'_>) -> Result<Decision, PolicyError> {
        Ok(sampled_if(self.bucket.allow(trace.spans.len() as u64)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::testing::*;
    use std::time::Duration;
    use tokio::time::advance;
    use Decision::*;

    fn spans(n: usize) -> crate::policy::TraceView<'static> {
        trace((0..n).map(|_| span(0, 1, UNSET)).collect())
    }

    fn policy(sps: i64, burst: i64) -> RateLimitingPolicy {
        RateLimitingConfig {
            spans_per_second: sps,
            burst_capacity: burst,
        }
        .build()
    }

    #[tokio::test(start_paused = true)]
    async fn traces_pass_until_the_bucket_is_empty_then_as_it_refills() {
        let p = policy(3, 3);
        let steps: &[(u64, usize, Decision)] = &[
            // (ms to advance first, spans, decision)
            (0, 3, Sampled),
            (0, 1, NotSampled),
            (334, 1, Sampled),
            (0, 1, NotSampled),
            (1000, 2, Sampled),
            (0, 1, Sampled),
            (0, 1, NotSampled),
        ];
        for (i, &(ms, n, want)) in steps.iter().enumerate() {
            advance(Duration::from_millis(ms)).await;
            assert_eq!(p.evaluate(&spans(n)), Ok(want), "step {i}");
        }
    }

    #[tokio::test(start_paused = true)]
    async fn the_default_burst_is_twice_the_rate() {
        let p = policy(10, 0);
        assert_eq!(p.evaluate(&spans(20)), Ok(Sampled));
        assert_eq!(p.evaluate(&spans(1)), Ok(NotSampled));
        let p = policy(10, 0);
        assert_eq!(p.evaluate(&spans(21)), Ok(NotSampled));
    }

    #[tokio::test(start_paused = true)]
    async fn a_trace_larger_than_the_burst_never_passes_but_smaller_ones_do() {
        let p = policy(100, 5);
        assert_eq!(p.evaluate(&spans(6)), Ok(NotSampled));
        assert_eq!(p.evaluate(&spans(5)), Ok(Sampled));
        advance(Duration::from_secs(10)).await;
        assert_eq!(p.evaluate(&spans(6)), Ok(NotSampled));
    }

    #[tokio::test(start_paused = true)]
    async fn a_zero_rate_keeps_nothing() {
        let p = policy(0, 0);
        assert_eq!(p.evaluate(&spans(1)), Ok(NotSampled));
    }

    /// The YAML paths `validate` reports for the given rate and burst, under `r`.
    fn error_paths(spans_per_second: i64, burst_capacity: i64) -> Vec<String> {
        let mut errors = vec![];
        RateLimitingConfig {
            spans_per_second,
            burst_capacity,
        }
        .validate("r", &mut errors);
        errors.into_iter().map(|e| e.path).collect()
    }

    #[test]
    fn negative_rates_are_config_errors() {
        assert_eq!(
            error_paths(-1, -2),
            ["r.spans_per_second", "r.burst_capacity"]
        );
    }

    #[test]
    fn zero_rates_are_not_config_errors() {
        assert!(error_paths(0, 0).is_empty());
    }
}
