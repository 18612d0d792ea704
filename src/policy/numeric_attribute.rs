//! `numeric_attribute`: keeps a trace when a resource or span attribute `key` holds an integer in
//! `[min_value, max_value]` (both inclusive).
//!
//! Matches the Collector, quirks included:
//! - `0` means "not set" for either bound (the Collector passes a nil bound for a zero value), so
//!   the open side is `i64::MIN` / `i64::MAX`; `min_value: 0, max_value: 10` also keeps `-5`.
//!   At least one bound must be non-zero, and `min_value <= max_value` when both are set.
//! - The value is read with pdata's `Int()`: a double, string or bool attribute reads as `0`, so
//!   it matches whenever `0` lies within the bounds.
//! - `invert_match` keeps the trace when no resource or span matches and drops it (plain
//!   `NotSampled`) when one does. Collector v0.156 removed the old inverted decisions
//!   (`disableinvertdecisions` was made permanent), so the answer no longer vetoes other
//!   policies; use a `drop` policy for that.

use serde::Deserialize;

use super::attributes::any_resource_or_span_attribute;
use super::{sampled_if, Decision, Policy, PolicyError, TraceView};
use crate::yaml::ConfigError;

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NumericAttributeConfig {
    #[serde(default)]
    pub key: String,
    #[serde(default)]
    pub min_value: i64,
    #[serde(default)]
    pub max_value: i64,
    #[serde(default)]
    pub invert_match: bool,
}

impl NumericAttributeConfig {
    pub fn validate(&self, path: &str, errors: &mut Vec<ConfigError>) {
        if self.min_value == 0 && self.max_value == 0 {
            errors.push(ConfigError::new(
                path,
                "set min_value or max_value (0 means unset, as in the Collector)",
            ));
        } else if self.min_value != 0 && self.max_value != 0 && self.min_value > self.max_value {
            errors.push(ConfigError::new(
                format!("{path}.min_value"),
                format!(
                    "min_value ({}) must not be greater than max_value ({})",
                    self.min_value, self.max_value
                ),
            ));
        }
    }

    pub fn build(&self) -> NumericAttributePolicy {
        let bound = |v: i64, unset: i64| if v == 0 { unset } else { v };
        NumericAttributePolicy {
            key: self.key.clone().into_bytes(),
            min: bound(self.min_value, i64::MIN),
            max: bound(self.max_value, i64::MAX),
            invert: self.invert_match,
        }
    }
}

pub struct NumericAttributePolicy {
    key: Vec<u8>,
    min: i64,
    max: i64,
    invert: bool,
}

impl Policy for NumericAttributePolicy {
    fn evaluate(&self, trace: &TraceView<'_>) -> Result<Decision, PolicyError> {
        let matched = any_resource_or_span_attribute(trace, &self.key, |_, value| {
            (self.min..=self.max).contains(&value.int_or_zero())
        })?;
        Ok(sampled_if(matched != self.invert))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::testing::*;

    fn decide(min: i64, max: i64, invert: bool, spans: Vec<SpanRecord<'static>>) -> Decision {
        NumericAttributeConfig {
            key: "code".into(),
            min_value: min,
            max_value: max,
            invert_match: invert,
        }
        .build()
        .evaluate(&trace(spans))
        .unwrap()
    }

    use crate::policy::SpanRecord;
    use Decision::*;

    fn with(v: Option<Val>) -> SpanRecord<'static> {
        SpanBuilder::new().attr("code", v).build()
    }

    #[test]
    fn bounds_are_inclusive_and_both_levels_are_searched() {
        let cases = [
            (with(int(400)), Sampled),
            (with(int(499)), Sampled),
            (with(int(399)), NotSampled),
            (with(int(500)), NotSampled),
            (
                SpanBuilder::new().resource_attr("code", int(450)).build(),
                Sampled,
            ),
            (
                SpanBuilder::new().attr("other", int(450)).build(),
                NotSampled,
            ),
        ];
        for (span, want) in cases {
            assert_eq!(decide(400, 499, false, vec![span]), want);
        }
    }

    #[test]
    fn equal_bounds_are_a_valid_one_value_range() {
        let mut errors = Vec::new();
        NumericAttributeConfig {
            key: "code".into(),
            min_value: 5,
            max_value: 5,
            invert_match: false,
        }
        .validate("p", &mut errors);
        assert!(errors.is_empty());
        assert_eq!(decide(5, 5, false, vec![with(int(5))]), Sampled);
        assert_eq!(decide(5, 5, false, vec![with(int(6))]), NotSampled);
    }

    #[test]
    fn any_span_of_the_trace_may_match() {
        assert_eq!(
            decide(400, 499, false, vec![with(int(200)), with(int(404))]),
            Sampled
        );
    }

    #[test]
    fn a_zero_bound_means_unbounded_on_that_side() {
        assert_eq!(decide(0, 10, false, vec![with(int(-1_000_000))]), Sampled);
        assert_eq!(decide(10, 0, false, vec![with(int(i64::MAX))]), Sampled);
        assert_eq!(decide(10, 0, false, vec![with(int(9))]), NotSampled);
    }

    #[test]
    fn non_integer_values_read_as_zero_like_pdata() {
        // A double is not converted: 450.0 reads as 0, outside [400, 499] ...
        assert_eq!(
            decide(400, 499, false, vec![with(double(450.0))]),
            NotSampled
        );
        // ... but inside a range that holds 0.
        assert_eq!(decide(-5, 5, false, vec![with(text("404"))]), Sampled);
        assert_eq!(decide(-5, 5, false, vec![with(empty())]), Sampled);
    }

    #[test]
    fn invert_match_answers_plainly() {
        assert_eq!(decide(400, 499, true, vec![with(int(404))]), NotSampled);
        assert_eq!(decide(400, 499, true, vec![with(int(200))]), Sampled);
        // A trace without the attribute at all is kept.
        assert_eq!(
            decide(400, 499, true, vec![SpanBuilder::new().build()]),
            Sampled
        );
        // One matching span anywhere is enough to answer no.
        assert_eq!(
            decide(400, 499, true, vec![with(int(200)), with(int(450))]),
            NotSampled
        );
    }

    #[test]
    fn unset_or_crossed_bounds_are_config_errors() {
        let mut errors = vec![];
        NumericAttributeConfig {
            key: "k".into(),
            ..Default::default()
        }
        .validate("a", &mut errors);
        NumericAttributeConfig {
            key: "k".into(),
            min_value: 10,
            max_value: 5,
            invert_match: false,
        }
        .validate("b", &mut errors);
        NumericAttributeConfig {
            key: "k".into(),
            min_value: -10,
            max_value: 0,
            invert_match: false,
        }
        .validate("c", &mut errors);
        let paths: Vec<&str> = errors.iter().map(|e| e.path.as_str()).collect();
        assert_eq!(paths, ["a", "b.min_value"]);
    }
}
