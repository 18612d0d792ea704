//! Sampling policies: the Collector's `tail_sampling` policy types and its rule for combining
//! their decisions into one.
//!
//! Policies are pure functions of a trace's data ([`TraceView`]): no I/O, evaluated once per trace
//! at its deadline. A trace view is built from the buffered encoded spans; policies that need more
//! than the summary fields read them from the span bytes. [`PolicySet::decide`] runs the policies
//! in order and combines their answers exactly as the Collector does, counting each policy's
//! answer in `otelcol_processor_tail_sampling_count_traces_sampled`.

mod latency;
mod probabilistic;
mod status_code;

use serde::Deserialize;

use crate::config::{null_as_default, ConfigError};
use crate::wire::{Origin, SpanInfo, TraceId};

pub use latency::LatencyConfig;
pub use probabilistic::{ProbabilisticConfig, ProbabilisticPolicy};
pub use status_code::StatusCodeConfig;

/// One policy's answer for one trace (the Collector's `samplingpolicy.Decision`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Decision {
    NotSampled,
    Sampled,
    /// An inverted match that did not match: keep unless something else says no.
    InvertSampled,
    /// An inverted match that matched: overrides `Sampled`.
    InvertNotSampled,
    /// A `drop` policy matched: overrides everything.
    Dropped,
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

/// A policy evaluator.
pub trait Policy: Send + Sync {
    fn evaluate(&self, trace: &TraceView<'_>) -> Decision;
}

/// `processors.tail_sampling.policies[i]`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PolicyConfig {
    #[serde(default)]
    pub name: String,
    #[serde(rename = "type", default)]
    pub kind: String,
    #[serde(default, deserialize_with = "null_as_default")]
    pub latency: Option<LatencyConfig>,
    #[serde(default, deserialize_with = "null_as_default")]
    pub status_code: Option<StatusCodeConfig>,
    #[serde(default, deserialize_with = "null_as_default")]
    pub probabilistic: Option<ProbabilisticConfig>,
}

/// Policy types this build evaluates.
pub const SUPPORTED_TYPES: &[&str] = &["always_sample", "latency", "probabilistic", "status_code"];

impl PolicyConfig {
    pub fn validate(&self, path: &str, errors: &mut Vec<ConfigError>) {
        if self.name.is_empty() {
            errors.push(ConfigError::new(
                format!("{path}.name"),
                "every policy needs a name",
            ));
        }
        match self.kind.as_str() {
            "always_sample" => {}
            "latency" => self
                .latency
                .clone()
                .unwrap_or_default()
                .validate(&format!("{path}.latency"), errors),
            "status_code" => self
                .status_code
                .clone()
                .unwrap_or_default()
                .validate(&format!("{path}.status_code"), errors),
            "probabilistic" => self
                .probabilistic
                .clone()
                .unwrap_or_default()
                .validate(&format!("{path}.probabilistic"), errors),
            "" => errors.push(ConfigError::new(
                format!("{path}.type"),
                "every policy needs a type",
            )),
            other => errors.push(ConfigError::new(
                format!("{path}.type"),
                format!(
                    "policy type `{other}` is not supported; supported types: {}",
                    SUPPORTED_TYPES.join(", ")
                ),
            )),
        }
    }

    /// Builds the evaluator. Only called on validated config.
    pub fn build(&self) -> Box<dyn Policy> {
        match self.kind.as_str() {
            "always_sample" => Box::new(AlwaysSample),
            "latency" => Box::new(self.latency.clone().unwrap_or_default().build()),
            "status_code" => Box::new(self.status_code.clone().unwrap_or_default().build()),
            "probabilistic" => Box::new(self.probabilistic.clone().unwrap_or_default().build()),
            other => unreachable!("policy type {other} passed validation"),
        }
    }
}

/// `always_sample`: keeps every trace.
pub struct AlwaysSample;

impl Policy for AlwaysSample {
    fn evaluate(&self, _: &TraceView<'_>) -> Decision {
        Decision::Sampled
    }
}

/// Whether at least one span satisfies `condition`: the Collector's `hasSpanWithCondition`.
pub fn any_span(trace: &TraceView<'_>, mut condition: impl FnMut(&SpanRecord<'_>) -> bool) -> bool {
    trace.spans.iter().any(|s| condition(s))
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
}

/// The configured policies, in order, with the combination rule.
pub struct PolicySet {
    policies: Vec<NamedPolicy>,
    sample_on_first_match: bool,
}

impl PolicySet {
    pub fn new(configs: &[PolicyConfig], sample_on_first_match: bool) -> Self {
        Self {
            policies: configs
                .iter()
                .map(|c| NamedPolicy {
                    name: c.name.clone(),
                    policy: c.build(),
                })
                .collect(),
            sample_on_first_match,
        }
    }

    /// A set that keeps everything (a pipeline without `tail_sampling`).
    pub fn keep_all() -> Self {
        Self {
            policies: vec![NamedPolicy {
                name: "always_sample".into(),
                policy: Box::new(AlwaysSample),
            }],
            sample_on_first_match: true,
        }
    }

    /// Runs the policies and combines their answers the Collector's way: any `Dropped` or
    /// `InvertNotSampled` means not sampled; otherwise any `Sampled`, or an `InvertSampled`
    /// with no plain `NotSampled`, means sampled.
    pub fn decide(&self, trace: &TraceView<'_>) -> FinalDecision {
        let mut seen = Seen::default();
        for p in &self.policies {
            let decision = p.policy.evaluate(trace);
            let sampled = matches!(decision, Decision::Sampled | Decision::InvertSampled);
            metrics::counter!(
                "otelcol_processor_tail_sampling_count_traces_sampled",
                "policy" => p.name.clone(),
                "sampled" => if sampled { "true" } else { "false" },
            )
            .increment(1);
            seen.record(decision);
            if self.sample_on_first_match && decision == Decision::Sampled {
                break;
            }
        }
        seen.combine()
    }
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
pub(crate) mod testing {
    //! Builders for trace views in policy table tests.
    use super::*;
    use crate::wire::status;

    pub static NO_ORIGIN: std::sync::LazyLock<Origin> = std::sync::LazyLock::new(Origin::default);

    /// A span summary with the given start/end (ns) and status code.
    pub fn span(start: u64, end: u64, status_code: u8) -> SpanRecord<'static> {
        SpanRecord {
            origin: &NO_ORIGIN,
            bytes: &[],
            info: SpanInfo {
                trace_id: [7; 16],
                start_unix_nano: start,
                end_unix_nano: end,
                status_code: status_code as i32,
                is_root: false,
            },
        }
    }

    pub fn trace(spans: Vec<SpanRecord<'static>>) -> TraceView<'static> {
        TraceView {
            trace_id: [7; 16],
            spans,
        }
    }

    pub const OK: u8 = status::OK;
    pub const ERROR: u8 = status::ERROR;
    pub const UNSET: u8 = status::UNSET;
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Fixed(Decision);
    impl Policy for Fixed {
        fn evaluate(&self, _: &TraceView<'_>) -> Decision {
            self.0
        }
    }

    fn set(decisions: &[Decision], first_match: bool) -> PolicySet {
        PolicySet {
            policies: decisions
                .iter()
                .enumerate()
                .map(|(i, d)| NamedPolicy {
                    name: format!("p{i}"),
                    policy: Box::new(Fixed(*d)),
                })
                .collect(),
            sample_on_first_match: first_match,
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
        assert_eq!(
            set(&[Sampled, Dropped], false).decide(&trace),
            FinalDecision::NotSampled
        );
        assert_eq!(
            set(&[Sampled, Dropped], true).decide(&trace),
            FinalDecision::Sampled
        );
    }

    #[test]
    fn unsupported_and_incomplete_policies_are_config_errors() {
        let mut errors = vec![];
        PolicyConfig {
            name: "".into(),
            kind: "numeric_attribute".into(),
            ..Default::default()
        }
        .validate("p[0]", &mut errors);
        let text: Vec<String> = errors.iter().map(|e| e.to_string()).collect();
        assert!(text.iter().any(|e| e.starts_with("p[0].name")), "{text:?}");
        assert!(
            text.iter()
                .any(|e| e.starts_with("p[0].type") && e.contains("numeric_attribute")),
            "{text:?}"
        );
    }
}
