//! `drop`: answers `Dropped`, which overrides every other policy, when every sub-policy in
//! `drop_sub_policy` matches; otherwise `NotSampled`.
//!
//! The sub-policies are combined exactly as in `and` (in order, stopping at the first no). The
//! [`super::PolicySet`] evaluates `drop` policies before all others and stops at the first
//! `Dropped`, as the Collector does.

use super::and::all_match;
use super::{Decision, Policy, PolicyError, TraceView};

pub struct DropPolicy {
    subs: Vec<Box<dyn Policy>>,
}

impl DropPolicy {
    pub fn new(subs: Vec<Box<dyn Policy>>) -> Self {
        Self { subs }
    }
}

impl Policy for DropPolicy {
    fn evaluate(&self, trace: &TraceView<'_>) -> Result<Decision, PolicyError> {
        Ok(if all_match(&self.subs, trace)? {
            Decision::Dropped
        } else {
            Decision::NotSampled
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::and::tests::fixed;
    use crate::policy::config::DropConfig;
    use crate::policy::testing::*;
    use Decision::*;

    #[test]
    fn all_sub_policies_matching_drops_the_trace() {
        let cases: &[(&[Decision], Decision)] = &[
            (&[Sampled], Dropped),
            (&[Sampled, Sampled], Dropped),
            (&[Sampled, NotSampled], NotSampled),
            (&[InvertNotSampled], NotSampled),
            (&[InvertSampled], Dropped),
        ];
        for (answers, want) in cases {
            let p = DropPolicy {
                subs: fixed(answers).0,
            };
            assert_eq!(p.evaluate(&trace(vec![])), Ok(*want), "{answers:?}");
        }
    }

    #[test]
    fn health_checks_without_errors_are_dropped_but_failing_ones_are_not() {
        // The pattern the Collector docs recommend since `not` may nest in `drop`.
        let config: DropConfig = serde_yaml::from_str(
            r#"
drop_sub_policy:
  - name: probe
    type: string_attribute
    string_attribute: {key: http.route, values: [/live, /ready]}
  - name: no-error
    type: not
    not:
      not_sub_policy:
        name: any-error
        type: status_code
        status_code: {status_codes: [ERROR]}
"#,
        )
        .unwrap();
        let mut errors = vec![];
        config.validate("d", &mut errors);
        assert!(errors.is_empty(), "{errors:?}");
        let p = config.build();
        let probe_ok = SpanBuilder::new()
            .attr("http.route", text("/live"))
            .status(1, "")
            .build();
        let probe_err = SpanBuilder::new()
            .attr("http.route", text("/live"))
            .status(2, "")
            .build();
        let api = SpanBuilder::new().attr("http.route", text("/api")).build();
        assert_eq!(p.evaluate(&trace(vec![probe_ok])), Ok(Dropped));
        assert_eq!(p.evaluate(&trace(vec![probe_err])), Ok(NotSampled));
        assert_eq!(p.evaluate(&trace(vec![api])), Ok(NotSampled));
    }

    #[test]
    fn an_empty_list_is_a_config_error_not_a_drop_everything() {
        let mut errors = vec![];
        DropConfig::default().validate("p.drop", &mut errors);
        assert_eq!(errors[0].path, "p.drop.drop_sub_policy");
    }
}
