//! `composite`: sub-policies in order, each with a share of a spans-per-second budget.
//!
//! As in the Collector's `composite.go` and `composite_helper.go`:
//! - Each sub-policy's budget is `percent`% of `max_total_spans_per_second` for the
//!   `rate_allocation` entry naming it; an entry with `percent <= 0` gets an equal share
//!   (`max_total_spans_per_second / number of sub-policies`). A sub-policy that no entry names
//!   gets a budget of 0. Budgets are truncated to whole spans.
//! - For each trace, sub-policies are asked in `composite_sub_policy` order. The first that
//!   answers `Sampled` decides: the trace is kept if its spans fit in that sub-policy's remaining
//!   budget for the current second, and otherwise not kept (later sub-policies are not tried).
//!   If none samples, the trace is not kept. A failing sub-policy fails the composite.
//! - Budgets are counted per one-second window and reset at each new window. tailgate's windows
//!   start at the policy's first evaluation rather than on wall-clock second boundaries.
//!
//! Collector quirks kept on purpose:
//! - `policy_order` is accepted but not used; the order is that of `composite_sub_policy`.
//! - `max_total_spans_per_second` is not enforced across sub-policies: each sub-policy's own count
//!   is compared with it, so the sub-policies together may keep up to the sum of their budgets.

use std::sync::Mutex;

use tokio::time::Instant;

use super::{Decision, Policy, PolicyError, TraceView};

struct Sub {
    policy: Box<dyn Policy>,
    budget: i64,
}

pub struct CompositePolicy {
    subs: Vec<Sub>,
    max_total: i64,
    window: Mutex<Window>,
}

impl CompositePolicy {
    /// `subs`: each sub-policy with its spans-per-second budget, in evaluation order.
    pub fn new(max_total: i64, subs: Vec<(Box<dyn Policy>, i64)>) -> Self {
        let count = subs.len();
        Self {
            subs: subs
                .into_iter()
                .map(|(policy, budget)| Sub { policy, budget })
                .collect(),
            max_total,
            window: Mutex::new(Window {
                start: None,
                second: 0,
                spent: vec![0; count],
            }),
        }
    }
}

struct Window {
    /// When the policy was first evaluated; windows are whole seconds after it.
    start: Option<Instant>,
    second: u64,
    /// Spans kept this second, per sub-policy.
    spent: Vec<i64>,
}

impl Policy for CompositePolicy {
    fn evaluate(&self, trace: &TraceView<'_>) -> Result<Decision, PolicyError> {
        let spans = trace.spans.len() as i64;
        for (i, sub) in self.subs.iter().enumerate() {
            match sub.policy.evaluate(trace)? {
                Decision::Sampled | Decision::InvertSampled => {}
                _ => continue,
            }
            let now = Instant::now();
            let mut w = self.window.lock().unwrap_or_else(|e| e.into_inner());
            let start = *w.start.get_or_insert(now);
            let second = now.saturating_duration_since(start).as_secs();
            if second != w.second {
                w.second = second;
                w.spent.iter_mut().for_each(|s| *s = 0);
            }
            let after = w.spent[i].saturating_add(spans);
            if after <= sub.budget && after <= self.max_total {
                w.spent[i] = after;
                return Ok(Decision::Sampled);
            }
            return Ok(Decision::NotSampled);
        }
        Ok(Decision::NotSampled)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::config::CompositeConfig;
    use crate::policy::testing::*;
    use std::time::Duration;
    use tokio::time::advance;
    use Decision::*;

    fn config(yaml: &str) -> CompositeConfig {
        let c: CompositeConfig = serde_yaml::from_str(yaml).unwrap();
        let mut errors = vec![];
        c.validate("c", &mut errors);
        assert!(errors.is_empty(), "{errors:?}");
        c
    }

    const TWO_TIERS: &str = r#"
max_total_spans_per_second: 10
policy_order: [errors, everything]
composite_sub_policy:
  - name: errors
    type: status_code
    status_code: {status_codes: [ERROR]}
  - name: everything
    type: always_sample
rate_allocation:
  - {policy: errors, percent: 60}
  - {policy: everything, percent: 40}
"#;

    fn spans(n: usize, status: u8) -> TraceView<'static> {
        trace((0..n).map(|_| span(0, 1, status)).collect())
    }

    #[test]
    fn budgets_follow_the_rate_allocation() {
        let c = config(
            r#"
max_total_spans_per_second: 1000
composite_sub_policy:
  - {name: a, type: always_sample}
  - {name: b, type: always_sample}
  - {name: c, type: always_sample}
  - {name: unlisted, type: always_sample}
rate_allocation:
  - {policy: a, percent: 50}
  - {policy: b, percent: 0}
  - {policy: c, percent: 33}
"#,
        );
        // b gets an equal share (1000 / 4), the unlisted policy nothing; shares truncate.
        assert_eq!(c.budgets(), [500, 250, 330, 0]);
    }

    #[tokio::test(start_paused = true)]
    async fn the_first_sampling_sub_policy_spends_its_own_budget() {
        let p = config(TWO_TIERS).build();
        // errors: budget 6 spans per second.
        assert_eq!(p.evaluate(&spans(4, ERROR)), Ok(Sampled));
        assert_eq!(p.evaluate(&spans(2, ERROR)), Ok(Sampled));
        // Over the errors budget: not kept, and the `everything` tier is not tried.
        assert_eq!(p.evaluate(&spans(1, ERROR)), Ok(NotSampled));
        // Other traces spend the `everything` budget of 4.
        assert_eq!(p.evaluate(&spans(4, OK)), Ok(Sampled));
        assert_eq!(p.evaluate(&spans(1, OK)), Ok(NotSampled));
        // A new second resets every budget.
        advance(Duration::from_secs(1)).await;
        assert_eq!(p.evaluate(&spans(6, ERROR)), Ok(Sampled));
        assert_eq!(p.evaluate(&spans(4, OK)), Ok(Sampled));
    }

    #[tokio::test(start_paused = true)]
    async fn a_refused_trace_leaves_room_for_a_smaller_one() {
        let p = config(TWO_TIERS).build();
        assert_eq!(p.evaluate(&spans(5, ERROR)), Ok(Sampled));
        assert_eq!(p.evaluate(&spans(3, ERROR)), Ok(NotSampled));
        assert_eq!(p.evaluate(&spans(1, ERROR)), Ok(Sampled));
    }

    #[tokio::test(start_paused = true)]
    async fn the_total_is_compared_per_sub_policy_like_the_collector() {
        let p = config(
            r#"
max_total_spans_per_second: 10
composite_sub_policy:
  - {name: a, type: status_code, status_code: {status_codes: [ERROR]}}
  - {name: b, type: always_sample}
rate_allocation:
  - {policy: a, percent: 100}
  - {policy: b, percent: 100}
"#,
        )
        .build();
        // Each tier may keep 10 spans, 20 in all, although the total says 10.
        assert_eq!(p.evaluate(&spans(10, ERROR)), Ok(Sampled));
        assert_eq!(p.evaluate(&spans(10, OK)), Ok(Sampled));
        assert_eq!(p.evaluate(&spans(1, OK)), Ok(NotSampled));
    }

    #[tokio::test(start_paused = true)]
    async fn an_unallocated_sub_policy_never_keeps_anything() {
        let p = config(
            r#"
max_total_spans_per_second: 100
composite_sub_policy:
  - {name: a, type: always_sample}
rate_allocation: []
"#,
        )
        .build();
        assert_eq!(p.evaluate(&spans(1, OK)), Ok(NotSampled));
    }

    #[tokio::test(start_paused = true)]
    async fn and_sub_policies_work_inside_a_composite() {
        let p = config(
            r#"
max_total_spans_per_second: 100
composite_sub_policy:
  - name: slow-errors
    type: and
    and:
      and_sub_policy:
        - {name: e, type: status_code, status_code: {status_codes: [ERROR]}}
        - {name: s, type: latency, latency: {threshold_ms: 1}}
rate_allocation:
  - {policy: slow-errors, percent: 100}
"#,
        )
        .build();
        let slow_error = trace(vec![span(0, 5_000_000, ERROR)]);
        let fast_error = trace(vec![span(0, 10, ERROR)]);
        assert_eq!(p.evaluate(&slow_error), Ok(Sampled));
        assert_eq!(p.evaluate(&fast_error), Ok(NotSampled));
    }

    /// A sub-policy that always answers one decision (no leaf policy answers `InvertSampled`
    /// since the Collector's v0.156, but an `and`/`not` built on older semantics may).
    struct Answers(Decision);

    impl Policy for Answers {
        fn evaluate(&self, _: &TraceView<'_>) -> Result<Decision, PolicyError> {
            Ok(self.0)
        }
    }

    #[tokio::test(start_paused = true)]
    async fn an_inverted_sampled_answer_counts_as_sampled_and_spends_the_budget() {
        let p = CompositePolicy::new(
            3,
            vec![
                (Box::new(Answers(InvertNotSampled)) as Box<dyn Policy>, 3),
                (Box::new(Answers(InvertSampled)), 3),
            ],
        );
        assert_eq!(
            p.evaluate(&spans(3, OK)),
            Ok(Sampled),
            "kept within the budget"
        );
        assert_eq!(
            p.evaluate(&spans(1, OK)),
            Ok(NotSampled),
            "and it was spent"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn an_allocation_over_100_percent_is_still_capped_by_the_total() {
        let c = config(
            r#"
max_total_spans_per_second: 10
composite_sub_policy:
  - {name: a, type: always_sample}
rate_allocation:
  - {policy: a, percent: 150}
"#,
        );
        assert_eq!(c.budgets(), [15], "150% of 10, the Collector's arithmetic");
        let p = c.build();
        assert_eq!(p.evaluate(&spans(10, OK)), Ok(Sampled));
        assert_eq!(
            p.evaluate(&spans(1, OK)),
            Ok(NotSampled),
            "the total caps it at 10"
        );
    }
}
