//! Sampling policies: the Collector's `tail_sampling` policy types and its rule for combining
//! their decisions into one.
//!
//! Policies are functions of a trace's data ([`TraceView`]): no I/O, evaluated once per trace at
//! its deadline. A trace view is built from the buffered encoded spans; policies that need more
//! than the summary fields read them from the span, resource and scope bytes ([`attributes`]).
//! The only state any policy keeps is the budget of the rate limiters (`rate_limiting`,
//! `bytes_limiting`, `composite`), which read the clock through `tokio::time` so tests can pause
//! it.
//!
//! [`PolicySet::decide`] runs the policies in the Collector's order (every `drop` policy first,
//! then the rest as configured) and combines their answers exactly as its `processor.go` does:
//!
//! - a policy that fails to evaluate is skipped (and counted in
//!   `otelcol_processor_tail_sampling_sampling_policy_evaluation_error`);
//! - evaluation stops at the first `Dropped`, and with `sample_on_first_match` at the first
//!   `Sampled`;
//! - then `Dropped` wins, then `InvertNotSampled`, then any `Sampled`, then `InvertSampled` if no
//!   policy said `NotSampled`; anything else is not sampled.
//!
//! Each policy's answer is counted in `otelcol_processor_tail_sampling_count_traces_sampled` with
//! the Collector's `policy`, `sampled` and `decision` labels.
//!
//! Config lives in `config.rs`: one struct per nesting level (top level, `and`/`drop` sub-policy,
//! `not` sub-policy, `composite` sub-policy), each accepting the policy types the Collector accepts
//! at that level, with `deny_unknown_fields` and errors carrying the full YAML path.

mod and;
pub mod attributes;
mod boolean_attribute;
mod bytes_limiting;
mod composite;
pub(crate) mod config;
mod drop;
mod latency;
mod limiter;
mod not;
mod numeric_attribute;
mod ottl;
mod probabilistic;
mod rate_limiting;
mod regex_go;
mod span_count;
mod status_code;
mod string_attribute;
mod trace_flags;
mod trace_state;

use crate::otlp::{read_span, Chunk, Origin, SpanInfo, TraceId, WireError};
use crate::telemetry::catalog;

pub use boolean_attribute::BooleanAttributeConfig;
pub use bytes_limiting::BytesLimitingConfig;
pub use config::{
    AndConfig, AndSubPolicyConfig, CompositeConfig, CompositeSubPolicyConfig, DropConfig,
    NotConfig, NotSubPolicyConfig, PolicyConfig, RateAllocationConfig, SUPPORTED_TYPES,
};
pub use latency::LatencyConfig;
pub use numeric_attribute::NumericAttributeConfig;
pub use ottl::OttlConditionConfig;
pub use probabilistic::{ProbabilisticConfig, ProbabilisticPolicy};
pub use rate_limiting::RateLimitingConfig;
pub use span_count::SpanCountConfig;
pub use status_code::StatusCodeConfig;
pub use string_attribute::StringAttributeConfig;
pub use trace_state::TraceStateConfig;

/// One policy's answer for one trace (the Collector's `samplingpolicy.Decision`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Decision {
    NotSampled,
    Sampled,
    /// The Collector's deprecated inverted "keep unless something else says no". No current
    /// policy returns it (since Collector v0.156 `invert_match` answers plainly), but `not` passes
    /// it through and the final rule still ranks it, as the Collector's does.
    InvertSampled,
    /// The deprecated inverted "no", which overrides `Sampled`. See [`Decision::InvertSampled`].
    InvertNotSampled,
    /// A `drop` policy matched: overrides everything.
    Dropped,
}

impl Decision {
    /// The value of the `sampled` metric label.
    fn sampled_label(self) -> &'static str {
        match self {
            Decision::Sampled | Decision::InvertSampled => "true",
            _ => "false",
        }
    }

    /// Which of the three `(sampled, decision)` label pairs this decision is counted under.
    fn label_set(self) -> usize {
        match self {
            Decision::Sampled | Decision::InvertSampled => 0,
            Decision::NotSampled | Decision::InvertNotSampled => 1,
            Decision::Dropped => 2,
        }
    }

    /// The value of the `decision` metric label.
    fn decision_label(self) -> &'static str {
        match self {
            Decision::Sampled | Decision::InvertSampled => "sampled",
            Decision::NotSampled | Decision::InvertNotSampled => "not_sampled",
            Decision::Dropped => "dropped",
        }
    }
}

/// Why a policy could not decide a trace. The policy is then skipped, as in the Collector.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum PolicyError {
    /// An attribute, event or status of a buffered span is not valid protobuf. (Only the fields
    /// the buffer relies on are validated when spans arrive; the rest is read at decision time.)
    #[error("malformed span data: {0}")]
    Wire(#[from] WireError),
    /// An `ottl_condition` failed at run time (division by zero, math on a string, ...) and its
    /// `error_mode` is `propagate`.
    #[error("OTTL condition `{condition}` failed: {message}")]
    Ottl { condition: String, message: String },
}

/// The data a policy sees: every span buffered for the trace, in arrival order.
#[derive(Debug)]
pub struct TraceView<'a> {
    pub trace_id: TraceId,
    pub spans: Vec<SpanRecord<'a>>,
}

/// One buffered span: its resource/scope, its encoded `Span` bytes and its summary fields.
#[derive(Debug, Clone, Copy)]
pub struct SpanRecord<'a> {
    pub origin: &'a Origin,
    pub bytes: &'a [u8],
    pub info: SpanInfo,
}

impl<'a> TraceView<'a> {
    /// The view of a trace held as exported-form chunks, walking each span for its summary.
    /// (The buffer keeps summaries and builds its views without walking; this serves chunks that
    /// come from elsewhere, and benchmarks.)
    pub fn from_chunks(trace_id: TraceId, chunks: &'a [Chunk]) -> Self {
        let mut spans = Vec::with_capacity(chunks.iter().map(|c| c.spans as usize).sum());
        for chunk in chunks {
            for bytes in chunk.spans() {
                // Every buffered span passed `read_span` at the door, so this cannot fail.
                if let Ok(info) = read_span(bytes, 0) {
                    spans.push(SpanRecord {
                        origin: &chunk.origin,
                        bytes,
                        info,
                    });
                }
            }
        }
        TraceView { trace_id, spans }
    }
}

/// A policy evaluator.
pub trait Policy: Send + Sync {
    fn evaluate(&self, trace: &TraceView<'_>) -> Result<Decision, PolicyError>;
}

/// `always_sample`: keeps every trace.
pub struct AlwaysSample;

impl Policy for AlwaysSample {
    fn evaluate(&self, _: &TraceView<'_>) -> Result<Decision, PolicyError> {
        Ok(Decision::Sampled)
    }
}

/// Whether at least one span satisfies `condition`: the Collector's `hasSpanWithCondition`.
pub fn any_span(trace: &TraceView<'_>, condition: impl FnMut(&SpanRecord<'_>) -> bool) -> bool {
    trace.spans.iter().any(condition)
}

/// `Sampled` when `matched`, else `NotSampled`.
fn sampled_if(matched: bool) -> Decision {
    if matched {
        Decision::Sampled
    } else {
        Decision::NotSampled
    }
}

/// The final decision for a trace.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FinalDecision {
    Sampled,
    NotSampled,
}

struct NamedPolicy {
    name: String,
    policy: Box<dyn Policy>,
    /// `count_traces_sampled` and `count_spans_sampled` handles for this policy, one per label
    /// set (see [`Decision::label_set`]), registered on first use (a series appears once it
    /// has counted something, as the Collector's do): looking a labelled metric up on every
    /// decision cost more than the policies themselves.
    traces: [std::sync::OnceLock<metrics::Counter>; 3],
    spans: [std::sync::OnceLock<metrics::Counter>; 3],
    executions: metrics::Counter,
    cpu_time: metrics::Counter,
}

impl NamedPolicy {
    fn new(name: String, policy: Box<dyn Policy>) -> Self {
        Self {
            traces: Default::default(),
            spans: Default::default(),
            executions: catalog::POLICY_EXECUTIONS.counter(&[&name]),
            cpu_time: catalog::POLICY_CPU_TIME.counter(&[&name]),
            name,
            policy,
        }
    }

    /// Adds one round's counts to this policy's metrics.
    fn flush(&self, counts: &PolicyCounts) {
        if counts.executions > 0 {
            self.executions.increment(counts.executions);
        }
        if counts.cpu_nanos > 0 {
            self.cpu_time.increment(counts.cpu_nanos);
        }
        for (set, decision) in [Decision::Sampled, Decision::NotSampled, Decision::Dropped]
            .into_iter()
            .enumerate()
        {
            if counts.traces[set] == 0 {
                continue;
            }
            let labels = [
                &self.name[..],
                decision.sampled_label(),
                decision.decision_label(),
            ];
            self.traces[set]
                .get_or_init(|| catalog::POLICY_DECISIONS.counter(&labels))
                .increment(counts.traces[set]);
            self.spans[set]
                .get_or_init(|| catalog::POLICY_SPAN_DECISIONS.counter(&labels))
                .increment(counts.spans[set]);
        }
    }
}

/// One policy's counts in a [`PolicyTally`].
#[derive(Debug, Default, Clone, Copy)]
struct PolicyCounts {
    executions: u64,
    cpu_nanos: u64,
    /// Traces and spans per label set ([`Decision::label_set`]).
    traces: [u64; 3],
    spans: [u64; 3],
}

/// The policies' metric counts of a decision round, added to their metrics once per round
/// ([`PolicySet::flush`]) instead of once per trace: three atomic increments per policy and
/// trace cost about as much as a simple policy does.
#[derive(Debug, Default)]
pub struct PolicyTally {
    per_policy: Vec<PolicyCounts>,
}

/// `sampling_policy_cpu_time` is measured on one trace in this many (by trace ID) and scaled.
const TIMED_EVERY: u8 = 16;

/// The configured policies, in evaluation order, with the combination rule.
pub struct PolicySet {
    policies: Vec<NamedPolicy>,
    sample_on_first_match: bool,
    evaluation_errors: std::sync::OnceLock<metrics::Counter>,
}

impl PolicySet {
    /// Builds the set from validated config. `drop` policies are moved to the front (keeping
    /// their relative order), as the Collector does, so `sample_on_first_match` cannot skip them.
    pub fn new(configs: &[PolicyConfig], sample_on_first_match: bool) -> Self {
        let (drops, others): (Vec<&PolicyConfig>, Vec<&PolicyConfig>) =
            configs.iter().partition(|c| c.kind == "drop");
        Self {
            policies: drops
                .into_iter()
                .chain(others)
                .map(|c| NamedPolicy::new(c.name.clone(), c.build()))
                .collect(),
            sample_on_first_match,
            evaluation_errors: Default::default(),
        }
    }

    /// A set that keeps everything (a pipeline without `tail_sampling`).
    pub fn keep_all() -> Self {
        Self {
            policies: vec![NamedPolicy::new(
                "always_sample".into(),
                Box::new(AlwaysSample),
            )],
            sample_on_first_match: true,
            evaluation_errors: Default::default(),
        }
    }

    /// Runs the policies and combines their answers the Collector's way (see the module docs).
    pub fn decide(&self, trace: &TraceView<'_>) -> FinalDecision {
        self.judge(trace).decision
    }

    /// Like [`PolicySet::decide`], and says which policy the decision is attributed to.
    pub fn judge(&self, trace: &TraceView<'_>) -> Verdict {
        let mut tally = PolicyTally::default();
        let verdict = self.judge_counted(trace, &mut tally);
        self.flush(&mut tally);
        verdict
    }

    /// [`PolicySet::judge`] with the metric counts added to `tally`, for the caller to
    /// [`PolicySet::flush`] after a round of traces. A tally belongs to one set.
    pub fn judge_counted(&self, trace: &TraceView<'_>, tally: &mut PolicyTally) -> Verdict {
        if tally.per_policy.len() < self.policies.len() {
            tally
                .per_policy
                .resize(self.policies.len(), PolicyCounts::default());
        }
        let mut seen = Seen::default();
        let mut first_sampled = None;
        let mut first_invert_sampled = None;
        // One trace in TIMED_EVERY has its policies timed (two clock reads per policy were a
        // tenth of the cost of a one-span trace); the time is scaled up to stand for the rest.
        let timed = trace.trace_id[15].is_multiple_of(TIMED_EVERY);
        for (index, (p, counts)) in self.policies.iter().zip(&mut tally.per_policy).enumerate() {
            let started = timed.then(std::time::Instant::now);
            let result = p.policy.evaluate(trace);
            counts.executions += 1;
            if let Some(started) = started {
                let nanos = started.elapsed().as_nanos() as u64;
                counts.cpu_nanos += nanos * u64::from(TIMED_EVERY);
            }
            let decision = match result {
                Ok(decision) => decision,
                Err(error) => {
                    self.evaluation_errors
                        .get_or_init(|| catalog::POLICY_ERRORS.counter(&[]))
                        .increment(1);
                    tracing::debug!(policy = %p.name, %error, "sampling policy error");
                    continue;
                }
            };
            counts.traces[decision.label_set()] += 1;
            counts.spans[decision.label_set()] += trace.spans.len() as u64;
            seen.record(decision);
            match decision {
                Decision::Sampled => {
                    first_sampled.get_or_insert(index);
                }
                Decision::InvertSampled => {
                    first_invert_sampled.get_or_insert(index);
                }
                _ => {}
            }
            if decision == Decision::Dropped {
                break;
            }
            if self.sample_on_first_match && decision == Decision::Sampled {
                break;
            }
        }
        let decision = seen.combine();
        Verdict {
            decision,
            dropped: seen.dropped,
            // The policy a kept trace is attributed to: the first that sampled it, else the
            // first inverted match that made the set keep it.
            policy: match decision {
                FinalDecision::Sampled => first_sampled.or(first_invert_sampled),
                FinalDecision::NotSampled => None,
            },
        }
    }

    /// Adds a tally's counts to the policies' metrics and empties it.
    pub fn flush(&self, tally: &mut PolicyTally) {
        for (p, counts) in self.policies.iter().zip(&mut tally.per_policy) {
            p.flush(counts);
            *counts = PolicyCounts::default();
        }
    }

    /// A set of already-built policies, in this order (for tests that need a policy of their
    /// own making).
    #[cfg(test)]
    pub fn from_policies(policies: Vec<(&str, Box<dyn Policy>)>) -> Self {
        Self {
            policies: policies
                .into_iter()
                .map(|(name, p)| NamedPolicy::new(name.into(), p))
                .collect(),
            sample_on_first_match: false,
            evaluation_errors: Default::default(),
        }
    }

    /// Every policy's own answer for a trace, in evaluation order, each evaluated whatever the
    /// others answered (`tailgate replay` reports them): whether it would sample the trace, or
    /// `None` when it could not evaluate it.
    pub fn answers(&self, trace: &TraceView<'_>) -> Vec<(&str, Option<bool>)> {
        self.policies
            .iter()
            .map(|p| {
                let answer = p
                    .policy
                    .evaluate(trace)
                    .ok()
                    .map(|d| matches!(d, Decision::Sampled | Decision::InvertSampled));
                (p.name.as_str(), answer)
            })
            .collect()
    }

    /// The name of the policy at `index` in evaluation order (see [`Verdict::policy`]).
    pub fn policy_name(&self, index: usize) -> &str {
        &self.policies[index].name
    }

    /// Policies in the set.
    pub fn len(&self) -> usize {
        self.policies.len()
    }

    /// Whether the set has no policy (never: a set keeps everything at least).
    pub fn is_empty(&self) -> bool {
        self.policies.is_empty()
    }
}

/// A trace's decision and what it is attributed to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Verdict {
    pub decision: FinalDecision,
    /// A `drop` policy matched.
    pub dropped: bool,
    /// For a kept trace, the index of the policy that kept it ([`PolicySet::policy_name`]).
    pub policy: Option<usize>,
}

#[derive(Default)]
struct Seen {
    sampled: bool,
    not_sampled: bool,
    invert_sampled: bool,
    invert_not_sampled: bool,
    dropped: bool,
}

impl Seen {
    fn record(&mut self, d: Decision) {
        match d {
            Decision::Sampled => self.sampled = true,
            Decision::NotSampled => self.not_sampled = true,
            Decision::InvertSampled => self.invert_sampled = true,
            Decision::InvertNotSampled => self.invert_not_sampled = true,
            Decision::Dropped => self.dropped = true,
        }
    }

    /// The Collector's `makeDecision` switch: dropped, then inverted-not-sampled, then sampled,
    /// then inverted-sampled without any plain not-sampled.
    fn combine(&self) -> FinalDecision {
        if self.dropped || self.invert_not_sampled {
            FinalDecision::NotSampled
        } else if self.sampled || (self.invert_sampled && !self.not_sampled) {
            FinalDecision::Sampled
        } else {
            FinalDecision::NotSampled
        }
    }
}

#[cfg(test)]
pub(crate) mod testing;

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;

    #[test]
    fn the_sampled_label_is_true_for_both_sampled_answers_only() {
        // The Collector's `sampled` label on count_traces_sampled (a missed mutant answered "").
        for (decision, label) in [
            (Decision::Sampled, "true"),
            (Decision::InvertSampled, "true"),
            (Decision::NotSampled, "false"),
            (Decision::InvertNotSampled, "false"),
            (Decision::Dropped, "false"),
        ] {
            assert_eq!(decision.sampled_label(), label, "{decision:?}");
        }
    }

    struct Fixed(Result<Decision, PolicyError>, Arc<AtomicUsize>);
    impl Policy for Fixed {
        fn evaluate(&self, _: &TraceView<'_>) -> Result<Decision, PolicyError> {
            self.1.fetch_add(1, Ordering::Relaxed);
            self.0.clone()
        }
    }

    fn failing() -> Result<Decision, PolicyError> {
        Err(PolicyError::Ottl {
            condition: "x".into(),
            message: "boom".into(),
        })
    }

    fn set_of(
        results: &[Result<Decision, PolicyError>],
        first_match: bool,
    ) -> (PolicySet, Vec<Arc<AtomicUsize>>) {
        let counters: Vec<_> = results
            .iter()
            .map(|_| Arc::new(AtomicUsize::new(0)))
            .collect();
        let set = PolicySet {
            policies: results
                .iter()
                .zip(&counters)
                .enumerate()
                .map(|(i, (r, c))| {
                    NamedPolicy::new(format!("p{i}"), Box::new(Fixed(r.clone(), Arc::clone(c))))
                })
                .collect(),
            sample_on_first_match: first_match,
            evaluation_errors: Default::default(),
        };
        (set, counters)
    }

    fn set(decisions: &[Decision], first_match: bool) -> PolicySet {
        set_of(
            &decisions.iter().map(|d| Ok(*d)).collect::<Vec<_>>(),
            first_match,
        )
        .0
    }

    /// The value of `metric`'s series with exactly these label values; `None` if it has none.
    fn series_value(metric: &catalog::Metric, values: &[&str]) -> Option<u64> {
        metric
            .series()
            .iter()
            .find(|s| s.values.iter().map(|v| &**v).eq(values.iter().copied()))
            .map(|s| match &s.storage {
                catalog::Storage::Value(v) => v.load(Ordering::Relaxed),
                catalog::Storage::Histogram(_) => panic!("{} is a counter", metric.name),
            })
    }

    /// Each policy's answers land under the Collector's `(policy, sampled, decision)` labels,
    /// with its executions and CPU time, when the round is flushed and not before; a flushed
    /// tally starts again from nothing. The policy names are this test's own, so no other test
    /// shares these series.
    #[test]
    fn each_policys_answers_are_counted_under_its_labels_when_the_round_is_flushed() {
        use Decision::*;
        let policies = [
            ("counted-sampled", Sampled, ["true", "sampled"]),
            ("counted-inverted", InvertSampled, ["true", "sampled"]),
            ("counted-not-sampled", NotSampled, ["false", "not_sampled"]),
            (
                "counted-inverted-not",
                InvertNotSampled,
                ["false", "not_sampled"],
            ),
            // Last, since evaluation stops at a drop.
            ("counted-dropped", Dropped, ["false", "dropped"]),
        ];
        let set = PolicySet::from_policies(
            policies
                .iter()
                .map(|(name, decision, _)| {
                    let policy: Box<dyn Policy> =
                        Box::new(Fixed(Ok(*decision), Arc::new(AtomicUsize::new(0))));
                    (*name, policy)
                })
                .collect(),
        );
        let mut tally = PolicyTally::default();
        // 32 traces of 3 spans; the two whose last ID byte is 0 or 16 are timed.
        for last in 0..32u8 {
            let mut trace = testing::trace(vec![testing::span(0, 1, testing::OK); 3]);
            trace.trace_id[15] = last;
            set.judge_counted(&trace, &mut tally);
        }
        for (name, _, _) in &policies {
            assert_eq!(series_value(&catalog::POLICY_EXECUTIONS, &[name]), Some(0));
        }
        set.flush(&mut tally);
        set.flush(&mut tally); // the second round counted nothing
        let all_labels = [
            ["true", "sampled"],
            ["false", "not_sampled"],
            ["false", "dropped"],
        ];
        for (name, _, labels) in &policies {
            assert_eq!(
                series_value(&catalog::POLICY_EXECUTIONS, &[name]),
                Some(32),
                "{name}"
            );
            for other in all_labels {
                let (traces, spans) = (
                    series_value(&catalog::POLICY_DECISIONS, &[name, other[0], other[1]]),
                    series_value(&catalog::POLICY_SPAN_DECISIONS, &[name, other[0], other[1]]),
                );
                if other == *labels {
                    assert_eq!((traces, spans), (Some(32), Some(96)), "{name} {other:?}");
                } else {
                    assert_eq!((traces, spans), (None, None), "{name} {other:?}");
                }
            }
        }
    }

    /// `tailgate replay`'s per-policy report: every policy answers, even after a drop or a
    /// failure, in evaluation order and under its name.
    #[test]
    fn answers_give_every_policys_own_answer_in_order() {
        use Decision::*;
        let results = [
            Ok(Sampled),
            Ok(InvertSampled),
            Ok(NotSampled),
            Ok(Dropped),
            Ok(InvertNotSampled),
            failing(),
        ];
        let (set, counters) = set_of(&results, true);
        let trace = testing::trace(vec![]);
        assert_eq!(
            set.answers(&trace),
            [
                ("p0", Some(true)),
                ("p1", Some(true)),
                ("p2", Some(false)),
                ("p3", Some(false)),
                ("p4", Some(false)),
                ("p5", None),
            ]
        );
        assert!(counters.iter().all(|c| c.load(Ordering::Relaxed) == 1));
        assert_eq!((set.len(), set.is_empty()), (6, false));
        assert_eq!(set.policy_name(3), "p3");
        let none = PolicySet::from_policies(vec![]);
        assert_eq!((none.len(), none.is_empty()), (0, true));
    }

    /// A policy that takes at least 1 ms per trace.
    struct Slow;
    impl Policy for Slow {
        fn evaluate(&self, _: &TraceView<'_>) -> Result<Decision, PolicyError> {
            std::thread::sleep(std::time::Duration::from_millis(1));
            Ok(Decision::NotSampled)
        }
    }

    /// One trace in TIMED_EVERY is timed and its time scaled by TIMED_EVERY: 32 traces of a
    /// policy taking at least 1 ms each report at least 32 ms (two timed, 16 ms each), and a
    /// multiple of TIMED_EVERY nanoseconds.
    #[test]
    fn policy_cpu_time_is_timed_on_one_trace_in_sixteen_and_scaled() {
        let set = PolicySet::from_policies(vec![("timed-slow", Box::new(Slow))]);
        let mut tally = PolicyTally::default();
        for last in 0..32u8 {
            let mut trace = testing::trace(vec![]);
            trace.trace_id[15] = last;
            set.judge_counted(&trace, &mut tally);
        }
        set.flush(&mut tally);
        let cpu = series_value(&catalog::POLICY_CPU_TIME, &["timed-slow"]).unwrap();
        assert!(cpu >= 32_000_000, "{cpu} ns");
        assert_eq!(cpu % u64::from(TIMED_EVERY), 0, "{cpu} ns");
    }

    /// A kept trace is attributed to the first policy that sampled it, else to the first
    /// inverted match that kept it; a trace not kept to none.
    #[test]
    fn a_kept_trace_is_attributed_to_the_first_policy_that_sampled_it() {
        use Decision::*;
        let trace = testing::trace(vec![]);
        let cases: &[(&[Decision], Option<usize>)] = &[
            (&[NotSampled, Sampled, Sampled], Some(1)),
            (&[InvertSampled, Sampled], Some(1)),
            (&[InvertSampled, InvertSampled], Some(0)),
            (&[NotSampled, InvertSampled, InvertSampled], None),
            (&[InvertSampled], Some(0)),
            (&[Sampled, Dropped], None),
        ];
        for (decisions, want) in cases {
            let verdict = set(decisions, false).judge(&trace);
            assert_eq!(verdict.policy, *want, "{decisions:?}");
        }
    }

    #[test]
    fn decisions_combine_with_the_collectors_precedence() {
        use Decision::*;
        use FinalDecision as F;
        let cases: &[(&[Decision], F)] = &[
            (&[], F::NotSampled),
            (&[NotSampled], F::NotSampled),
            (&[Sampled], F::Sampled),
            (&[NotSampled, Sampled], F::Sampled),
            (&[Sampled, Dropped], F::NotSampled),
            (&[Sampled, InvertNotSampled], F::NotSampled),
            (&[InvertSampled], F::Sampled),
            (&[InvertSampled, NotSampled], F::NotSampled),
            (&[InvertSampled, Sampled, NotSampled], F::Sampled),
            (&[Dropped, InvertSampled], F::NotSampled),
        ];
        let trace = testing::trace(vec![]);
        for (decisions, want) in cases {
            assert_eq!(set(decisions, false).decide(&trace), *want, "{decisions:?}");
        }
    }

    #[test]
    fn sample_on_first_match_stops_at_the_first_sampled_policy() {
        use Decision::*;
        let trace = testing::trace(vec![]);
        // Without first-match a later drop wins; with it, evaluation stops before the drop.
        // (PolicySet::new puts drop policies first, so this order only arises in this test.)
        assert_eq!(
            set(&[Sampled, Dropped], false).decide(&trace),
            FinalDecision::NotSampled
        );
        assert_eq!(
            set(&[Sampled, Dropped], true).decide(&trace),
            FinalDecision::Sampled
        );
        // An inverted "sampled" does not stop the evaluation; the later NotSampled then wins.
        assert_eq!(
            set(&[InvertSampled, NotSampled], true).decide(&trace),
            FinalDecision::NotSampled
        );
    }

    #[test]
    fn evaluation_stops_at_the_first_dropped_decision() {
        let trace = testing::trace(vec![]);
        let (set, counters) = set_of(&[Ok(Decision::Dropped), Ok(Decision::Sampled)], false);
        assert_eq!(set.decide(&trace), FinalDecision::NotSampled);
        assert_eq!(counters[1].load(Ordering::Relaxed), 0);
    }

    #[test]
    fn a_policy_that_fails_is_skipped_and_does_not_decide() {
        let trace = testing::trace(vec![]);
        let cases: &[(Vec<Result<Decision, PolicyError>>, FinalDecision)] = &[
            (vec![failing()], FinalDecision::NotSampled),
            (
                vec![failing(), Ok(Decision::Sampled)],
                FinalDecision::Sampled,
            ),
            // The failure is not a "not sampled": an inverted sample still stands.
            (
                vec![Ok(Decision::InvertSampled), failing()],
                FinalDecision::Sampled,
            ),
        ];
        for (results, want) in cases {
            assert_eq!(set_of(results, false).0.decide(&trace), *want);
        }
    }

    #[test]
    fn drop_policies_are_evaluated_first_whatever_their_position() {
        let configs: Vec<PolicyConfig> = serde_yaml::from_str(
            r#"
- name: everything
  type: always_sample
- name: drop-all-errors
  type: drop
  drop:
    drop_sub_policy:
      - name: errors
        type: status_code
        status_code: {status_codes: [ERROR]}
"#,
        )
        .unwrap();
        let set = PolicySet::new(&configs, true);
        assert_eq!(set.policies[0].name, "drop-all-errors");
        let error = testing::trace(vec![testing::span(0, 1, testing::ERROR)]);
        let ok = testing::trace(vec![testing::span(0, 1, testing::OK)]);
        // With first-match, a sampled always_sample listed first would otherwise win.
        assert_eq!(set.decide(&error), FinalDecision::NotSampled);
        assert_eq!(set.decide(&ok), FinalDecision::Sampled);
    }

    #[test]
    fn unsupported_and_incomplete_policies_are_config_errors() {
        let mut errors = vec![];
        PolicyConfig {
            name: "".into(),
            kind: "span_kind_magic".into(),
            ..Default::default()
        }
        .validate("p[0]", &mut errors);
        let text: Vec<String> = errors.iter().map(|e| e.to_string()).collect();
        assert!(text.iter().any(|e| e.starts_with("p[0].name")), "{text:?}");
        assert!(
            text.iter()
                .any(|e| e.starts_with("p[0].type") && e.contains("span_kind_magic")),
            "{text:?}"
        );
    }
}
