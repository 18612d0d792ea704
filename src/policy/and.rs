//! `and`: keeps a trace when every sub-policy in `and_sub_policy` keeps it.
//!
//! As in the Collector, sub-policies run in order and the first `NotSampled` (or inverted
//! not-sampled) answer ends the evaluation with `NotSampled`: later sub-policies, including rate
//! limiters that would spend budget, are not asked. Any other answer (`Sampled`, an inverted
//! sample, even `Dropped`) lets the evaluation go on; if none said no the answer is `Sampled`. A
//! sub-policy that fails makes the `and` fail.

use super::{Decision, Policy, PolicyError, TraceView};

pub struct AndPolicy {
    subs: Vec<Box<dyn Policy>>,
}

impl AndPolicy {
    pub fn new(subs: Vec<Box<dyn Policy>>) -> Self {
        Self { subs }
    }
}

/// Whether every sub-policy lets the trace through, asking them in order and stopping at the
/// first no (shared with `drop`).
pub(crate) fn all_match(
    subs: &[Box<dyn Policy>],
    trace: &TraceView<'_>,
) -> Result<bool, PolicyError> {
    for sub in subs {
        match sub.evaluate(trace)? {
            Decision::NotSampled | Decision::InvertNotSampled => return Ok(false),
            Decision::Sampled | Decision::InvertSampled | Decision::Dropped => {}
        }
    }
    Ok(true)
}

impl Policy for AndPolicy {
    fn evaluate(&self, trace: &TraceView<'_>) -> Result<Decision, PolicyError> {
        Ok(if all_match(&self.subs, trace)? {
            Decision::Sampled
        } else {
            Decision::NotSampled
        })
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::policy::config::AndConfig;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;

    /// A sub-policy with a fixed answer that counts how often it is asked.
    pub struct Fixed(pub Result<Decision, PolicyError>, pub Arc<AtomicUsize>);

    impl Policy for Fixed {
        fn evaluate(&self, _: &TraceView<'_>) -> Result<Decision, PolicyError> {
            self.1.fetch_add(1, Ordering::Relaxed);
            self.0.clone()
        }
    }

    pub fn fixed(answers: &[Decision]) -> (Vec<Box<dyn Policy>>, Vec<Arc<AtomicUsize>>) {
        let counters: Vec<_> = answers
            .iter()
            .map(|_| Arc::new(AtomicUsize::new(0)))
            .collect();
        let subs = answers
            .iter()
            .zip(&counters)
            .map(|(d, c)| Box::new(Fixed(Ok(*d), Arc::clone(c))) as Box<dyn Policy>)
            .collect();
        (subs, counters)
    }

    #[test]
    fn every_sub_policy_must_let_the_trace_through() {
        use Decision::*;
        let cases: &[(&[Decision], Decision)] = &[
            (&[Sampled, Sampled], Sampled),
            (&[Sampled, NotSampled], NotSampled),
            (&[NotSampled, Sampled], NotSampled),
            (&[Sampled, InvertNotSampled], NotSampled),
            (&[InvertSampled, Sampled], Sampled),
            // A dropped answer inside an `and` does not stop it, as in the Collector.
            (&[Dropped, Sampled], Sampled),
        ];
        let t = crate::policy::testing::trace(vec![]);
        for (answers, want) in cases {
            let p = AndPolicy {
                subs: fixed(answers).0,
            };
            assert_eq!(p.evaluate(&t), Ok(*want), "{answers:?}");
        }
    }

    #[test]
    fn evaluation_stops_at_the_first_no() {
        use Decision::*;
        let (subs, counters) = fixed(&[Sampled, NotSampled, Sampled]);
        let t = crate::policy::testing::trace(vec![]);
        assert_eq!(AndPolicy { subs }.evaluate(&t), Ok(NotSampled));
        let asked: Vec<usize> = counters.iter().map(|c| c.load(Ordering::Relaxed)).collect();
        assert_eq!(asked, [1, 1, 0]);
    }

    #[test]
    fn a_failing_sub_policy_fails_the_and() {
        let err = PolicyError::Ottl {
            condition: "c".into(),
            message: "m".into(),
        };
        let p = AndPolicy {
            subs: vec![Box::new(Fixed(Err(err.clone()), Arc::default()))],
        };
        assert_eq!(p.evaluate(&crate::policy::testing::trace(vec![])), Err(err));
    }

    #[test]
    fn real_sub_policies_combine_on_real_spans() {
        use crate::policy::testing::*;
        let config: AndConfig = serde_yaml::from_str(
            r#"
and_sub_policy:
  - name: svc
    type: string_attribute
    string_attribute: {key: service.name, values: [checkout]}
  - name: errors
    type: status_code
    status_code: {status_codes: [ERROR]}
"#,
        )
        .unwrap();
        let p = config.build();
        let checkout = leak_origin(vec![("service.name", text("checkout"))]);
        let failing = SpanBuilder::new().status(2, "").build_in(checkout);
        let fine = SpanBuilder::new().status(1, "").build_in(checkout);
        let other = SpanBuilder::new().status(2, "").build();
        assert_eq!(
            p.evaluate(&trace(vec![fine, failing])),
            Ok(Decision::Sampled)
        );
        assert_eq!(p.evaluate(&trace(vec![fine])), Ok(Decision::NotSampled));
        assert_eq!(p.evaluate(&trace(vec![other])), Ok(Decision::NotSampled));
    }

    #[test]
    fn an_empty_list_is_a_config_error() {
        let mut errors = vec![];
        AndConfig::default().validate("p.and", &mut errors);
        assert_eq!(errors[0].path, "p.and.and_sub_policy");
    }
}
