//! `boolean_attribute`: keeps a trace when a resource or span attribute `key` equals `value`.
//!
//! Matches the Collector, quirks included: the attribute is read with pdata's `Bool()`, so a
//! non-boolean attribute reads as `false` and `value: false` matches any span or resource that has
//! `key` with a non-boolean value. `invert_match` keeps the trace when nothing matches and answers
//! a plain `NotSampled` when something does (Collector v0.156 behaviour; see `numeric_attribute`).

use serde::Deserialize;

use super::attributes::any_resource_or_span_attribute;
use super::{sampled_if, Decision, Policy, PolicyError, TraceView};

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BooleanAttributeConfig {
    #[serde(default)]
    pub key: String,
    #[serde(default)]
    pub value: bool,
    #[serde(default)]
    pub invert_match: bool,
}

impl BooleanAttributeConfig {
    pub fn build(&self) -> BooleanAttributePolicy {
        BooleanAttributePolicy {
            key: self.key.clone().into_bytes(),
            value: self.value,
            invert: self.invert_match,
        }
    }
}

pub struct BooleanAttributePolicy {
    key: Vec<u8>,
    value: bool,
    invert: bool,
}

impl Policy for BooleanAttributePolicy {
    fn evaluate(&self, trace: &TraceView<'_>) -> Result<Decision, PolicyError> {
        let matched = any_resource_or_span_attribute(trace, &self.key, |_, v| {
            v.bool_or_false() == self.value
        })?;
        Ok(sampled_if(matched != self.invert))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::testing::*;
    use crate::policy::SpanRecord;
    use Decision::*;

    fn decide(value: bool, invert: bool, span: SpanRecord<'static>) -> Decision {
        BooleanAttributeConfig {
            key: "force".into(),
            value,
            invert_match: invert,
        }
        .build()
        .evaluate(&trace(vec![span]))
        .unwrap()
    }

    fn span_with(v: Option<Val>) -> SpanRecord<'static> {
        SpanBuilder::new().attr("force", v).build()
    }

    #[test]
    fn the_value_must_match_on_a_span_or_its_resource() {
        let cases = [
            (true, span_with(boolean(true)), Sampled),
            (true, span_with(boolean(false)), NotSampled),
            (false, span_with(boolean(false)), Sampled),
            (
                true,
                SpanBuilder::new()
                    .resource_attr("force", boolean(true))
                    .build(),
                Sampled,
            ),
            (true, SpanBuilder::new().build(), NotSampled),
            (false, SpanBuilder::new().build(), NotSampled),
        ];
        for (value, span, want) in cases {
            assert_eq!(decide(value, false, span), want);
        }
    }

    #[test]
    fn non_boolean_values_read_as_false_like_pdata() {
        assert_eq!(decide(false, false, span_with(text("true"))), Sampled);
        assert_eq!(decide(true, false, span_with(text("true"))), NotSampled);
        assert_eq!(decide(false, false, span_with(int(1))), Sampled);
    }

    #[test]
    fn invert_match_answers_plainly() {
        assert_eq!(decide(true, true, span_with(boolean(true))), NotSampled);
        assert_eq!(decide(true, true, span_with(boolean(false))), Sampled);
        assert_eq!(decide(true, true, SpanBuilder::new().build()), Sampled);
    }
}
