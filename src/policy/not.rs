//! `not`: answers the opposite of its single `not_sub_policy`: `Sampled` becomes `NotSampled` and
//! back. Other answers (the deprecated inverted ones, `Dropped`) pass through unchanged, and a
//! failing sub-policy makes the `not` fail, as in the Collector.

use super::{Decision, Policy, PolicyError, TraceView};

pub struct NotPolicy {
    sub: Box<dyn Policy>,
}

impl NotPolicy {
    pub fn new(sub: Box<dyn Policy>) -> Self {
        Self { sub }
    }
}

impl Policy for NotPolicy {
    fn evaluate(&self, trace: &TraceView<'_>) -> Result<Decision, PolicyError> {
        Ok(match self.sub.evaluate(trace)? {
            Decision::Sampled => Decision::NotSampled,
            Decision::NotSampled => Decision::Sampled,
            other => other,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::and::tests::{fixed, Fixed};
    use crate::policy::config::NotConfig;
    use crate::policy::testing::*;
    use Decision::*;

    #[test]
    fn sampled_and_not_sampled_swap_and_the_rest_pass_through() {
        let cases = [
            (Sampled, NotSampled),
            (NotSampled, Sampled),
            (InvertSampled, InvertSampled),
            (InvertNotSampled, InvertNotSampled),
            (Dropped, Dropped),
        ];
        for (inner, want) in cases {
            let mut subs = fixed(&[inner]).0;
            let p = NotPolicy {
                sub: subs.remove(0),
            };
            assert_eq!(p.evaluate(&trace(vec![])), Ok(want), "{inner:?}");
        }
    }

    #[test]
    fn a_failing_sub_policy_fails_the_not() {
        let err = PolicyError::Ottl {
            condition: "c".into(),
            message: "m".into(),
        };
        let p = NotPolicy {
            sub: Box::new(Fixed(Err(err.clone()), Default::default())),
        };
        assert_eq!(p.evaluate(&trace(vec![])), Err(err));
    }

    #[test]
    fn a_real_sub_policy_is_inverted() {
        let config: NotConfig = serde_yaml::from_str(
            "not_sub_policy: {name: slow, type: latency, latency: {threshold_ms: 100}}",
        )
        .unwrap();
        let p = config.build();
        let slow = trace(vec![span(0, 200_000_000, UNSET)]);
        let fast = trace(vec![span(0, 1_000_000, UNSET)]);
        assert_eq!(p.evaluate(&slow), Ok(NotSampled));
        assert_eq!(p.evaluate(&fast), Ok(Sampled));
    }

    #[test]
    fn a_missing_sub_policy_is_a_config_error() {
        let mut errors = vec![];
        NotConfig::default().validate("p.not", &mut errors);
        assert_eq!(errors[0].path, "p.not.not_sub_policy");
    }
}
