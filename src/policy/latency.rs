//! `latency`: keeps a trace whose duration (earliest span start to latest span end) exceeds
//! `threshold_ms`, or, with `upper_threshold_ms`, lies in `(threshold_ms, upper_threshold_ms]`.
//!
//! The lower bound is exclusive in both forms, as in the Collector since v0.157 (its PR #49595;
//! before, a trace of exactly `threshold_ms` was kept when no upper bound was set).
//!
//! Matches the Collector exactly, including a quirk: it walks spans in arrival order and stops at
//! the first span after which the running duration satisfies the bounds. With an upper bound, a
//! trace whose final duration exceeds it is still kept if an earlier running duration fell inside
//! the window. Durations are truncated to whole milliseconds, as Go's `Duration.Milliseconds`.

use serde::Deserialize;

use super::{Decision, Policy, PolicyError, TraceView};
use crate::yaml::ConfigError;

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LatencyConfig {
    #[serde(default)]
    pub threshold_ms: i64,
    #[serde(default)]
    pub upper_threshold_ms: i64,
}

impl LatencyConfig {
    pub fn validate(&self, path: &str, errors: &mut Vec<ConfigError>) {
        if self.upper_threshold_ms != 0 && self.upper_threshold_ms < self.threshold_ms {
            errors.push(ConfigError::new(
                format!("{path}.upper_threshold_ms"),
                format!(
                    "upper_threshold_ms ({}) must not be less than threshold_ms ({})",
                    self.upper_threshold_ms, self.threshold_ms
                ),
            ));
        }
    }

    pub fn build(&self) -> LatencyPolicy {
        LatencyPolicy {
            threshold_ms: self.threshold_ms,
            upper_threshold_ms: self.upper_threshold_ms,
        }
    }
}

pub struct LatencyPolicy {
    threshold_ms: i64,
    upper_threshold_ms: i64,
}

impl Policy for LatencyPolicy {
    fn evaluate(&self, trace: &TraceView<'_>) -> Result<Decision, PolicyError> {
        let (mut min, mut max) = (0u64, 0u64);
        for span in &trace.spans {
            let (start, end) = (span.info.start_unix_nano, span.info.end_unix_nano);
            if min == 0 || start < min {
                min = start;
            }
            if max == 0 || end > max {
                max = end;
            }
            // Signed: a span may end before it starts; Go's Sub then gives a negative duration.
            let duration_ms = ((max as i128 - min as i128) / 1_000_000) as i64;
            let hit = if self.upper_threshold_ms == 0 {
                duration_ms > self.threshold_ms
            } else {
                self.threshold_ms < duration_ms && duration_ms <= self.upper_threshold_ms
            };
            if hit {
                return Ok(Decision::Sampled);
            }
        }
        Ok(Decision::NotSampled)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::testing::*;

    const MS: u64 = 1_000_000;

    fn decide(threshold: i64, upper: i64, spans: &[(u64, u64)]) -> Decision {
        let t = trace(
            spans
                .iter()
                .map(|&(s, e)| span(s * MS, e * MS, UNSET))
                .collect(),
        );
        LatencyConfig {
            threshold_ms: threshold,
            upper_threshold_ms: upper,
        }
        .build()
        .evaluate(&t)
        .unwrap()
    }

    #[test]
    fn duration_runs_from_the_earliest_start_to_the_latest_end() {
        // Neither span alone is 2 s long, together they span 2.5 s.
        assert_eq!(
            decide(2000, 0, &[(1000, 2000), (2500, 3500)]),
            Decision::Sampled
        );
        assert_eq!(
            decide(2000, 0, &[(1000, 2000), (1500, 2999)]),
            Decision::NotSampled
        );
    }

    #[test]
    fn the_earliest_start_counts_whichever_span_comes_first_in_the_trace() {
        // The Collector takes the minimum start and maximum end over all spans, in any order.
        assert_eq!(
            decide(2000, 0, &[(2500, 3500), (1000, 2000)]),
            Decision::Sampled
        );
    }

    #[test]
    fn an_upper_threshold_below_the_lower_is_an_error_and_an_equal_one_is_not() {
        let errors = |threshold_ms, upper_threshold_ms| {
            let mut errors = Vec::new();
            LatencyConfig {
                threshold_ms,
                upper_threshold_ms,
            }
            .validate("p", &mut errors);
            errors.into_iter().map(|e| e.path).collect::<Vec<_>>()
        };
        assert_eq!(errors(100, 99), ["p.upper_threshold_ms"]);
        assert!(errors(100, 100).is_empty());
        assert!(errors(100, 0).is_empty(), "0 means no upper bound");
    }

    #[test]
    fn the_lower_threshold_is_exclusive_without_an_upper_bound_too() {
        assert_eq!(decide(100, 0, &[(1, 102)]), Decision::Sampled);
        assert_eq!(decide(100, 0, &[(1, 101)]), Decision::NotSampled);
    }

    #[test]
    fn with_an_upper_bound_the_window_is_lower_exclusive_upper_inclusive() {
        assert_eq!(decide(100, 200, &[(1, 101)]), Decision::NotSampled);
        assert_eq!(decide(100, 200, &[(1, 102)]), Decision::Sampled);
        assert_eq!(decide(100, 200, &[(1, 201)]), Decision::Sampled);
        assert_eq!(decide(100, 200, &[(1, 202)]), Decision::NotSampled);
    }

    #[test]
    fn an_earlier_running_duration_inside_the_window_keeps_the_trace_like_the_collector() {
        // After the first span the duration is 150 ms (inside), after the second 500 ms (above).
        assert_eq!(decide(100, 200, &[(1, 151), (1, 501)]), Decision::Sampled);
        // In the other order the running duration jumps straight to 500 ms.
        assert_eq!(
            decide(100, 200, &[(1, 501), (1, 151)]),
            Decision::NotSampled
        );
    }

    #[test]
    fn sub_millisecond_remainders_are_truncated() {
        let t = trace(vec![span(MS, MS + 100 * MS - 1, UNSET)]);
        let p = LatencyConfig {
            threshold_ms: 100,
            upper_threshold_ms: 0,
        }
        .build();
        assert_eq!(p.evaluate(&t), Ok(Decision::NotSampled));
    }

    #[test]
    fn an_upper_bound_below_the_threshold_is_rejected() {
        let mut errors = vec![];
        LatencyConfig {
            threshold_ms: 500,
            upper_threshold_ms: 100,
        }
        .validate("l", &mut errors);
        assert_eq!(errors[0].path, "l.upper_threshold_ms");
    }
}
