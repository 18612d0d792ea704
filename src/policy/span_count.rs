//! `span_count`: keeps a trace whose number of spans lies in `[min_spans, max_spans]`, both
//! inclusive; `max_spans: 0` (the default) means no upper bound.
//!
//! The count is every span buffered for the trace at decision time, as the Collector's
//! `SpanCount`. Bounds are 32-bit, as in the Collector's config.

use serde::Deserialize;

use super::{sampled_if, Decision, Policy, PolicyError, TraceView};

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SpanCountConfig {
    #[serde(default)]
    pub min_spans: i32,
    #[serde(default)]
    pub max_spans: i32,
}

impl SpanCountConfig {
    pub fn build(&self) -> SpanCountPolicy {
        SpanCountPolicy {
            min: i64::from(self.min_spans),
            max: i64::from(self.max_spans),
        }
    }
}

pub struct SpanCountPolicy {
    min: i64,
    max: i64,
}

impl Policy for SpanCountPolicy {
    fn evaluate(&self, trace: &TraceView<'_>) -> Result<Decision, PolicyError> {
        let count = trace.spans.len() as i64;
        let upper_ok = self.max == 0 || count <= self.max;
        Ok(sampled_if(count >= self.min && upper_ok))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::testing::*;

    #[test]
    fn the_span_count_must_lie_within_the_inclusive_bounds() {
        use Decision::*;
        let cases = [
            // (min, max, spans, decision)
            (2, 0, 1, NotSampled),
            (2, 0, 2, Sampled),
            (2, 0, 500, Sampled),
            (2, 5, 5, Sampled),
            (2, 5, 6, NotSampled),
            (0, 3, 0, Sampled),
            (3, 3, 3, Sampled),
            // A maximum below the minimum never matches, as in the Collector.
            (5, 2, 3, NotSampled),
        ];
        for (min, max, n, want) in cases {
            let t = trace((0..n).map(|_| span(0, 1, UNSET)).collect());
            let p = SpanCountConfig {
                min_spans: min,
                max_spans: max,
            }
            .build();
            assert_eq!(p.evaluate(&t), Ok(want), "[{min}, {max}] with {n} spans");
        }
    }
}
