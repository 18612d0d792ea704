//! Policy config at each nesting level, as the Collector's `config.go` shapes it.
//!
//! The Collector nests policies three ways, and each level accepts a different set of types:
//!
//! | level | struct | types |
//! |---|---|---|
//! | `policies[i]` | [`PolicyConfig`] | shared types, `and`, `not`, `drop`, `composite` |
//! | `and_sub_policy[i]`, `drop_sub_policy[i]` | [`AndSubPolicyConfig`] | shared types, `not` |
//! | `not_sub_policy` | [`NotSubPolicyConfig`] | shared types |
//! | `composite_sub_policy[i]` | [`CompositeSubPolicyConfig`] | shared types, `and` |
//!
//! The shared types are the leaf policies ([`SHARED_TYPES`]). `not` inside `and`/`drop` is the
//! Collector's since v0.156. Every level has `name`, `type` and one optional block per type it
//! accepts; as in the Collector, blocks for other types than `type` are accepted and ignored.
//! There is no `flatten` (docs/ARCHITECTURE.md, "Config"): a macro writes the shared fields into
//! each struct.

use std::borrow::Cow;

use serde::Deserialize;

use std::collections::HashMap;

use super::and::AndPolicy;
use super::boolean_attribute::BooleanAttributeConfig;
use super::bytes_limiting::BytesLimitingConfig;
use super::composite::CompositePolicy;
use super::drop::DropPolicy;
use super::latency::LatencyConfig;
use super::not::NotPolicy;
use super::numeric_attribute::NumericAttributeConfig;
use super::ottl::OttlConditionConfig;
use super::probabilistic::ProbabilisticConfig;
use super::rate_limiting::RateLimitingConfig;
use super::span_count::SpanCountConfig;
use super::status_code::StatusCodeConfig;
use super::string_attribute::StringAttributeConfig;
use super::trace_flags::TraceFlagsPolicy;
use super::trace_state::TraceStateConfig;
use super::{AlwaysSample, Policy};
use crate::yaml::{null_as_default, ConfigError};

/// Leaf policy types, accepted at every level (the Collector's `sharedPolicyCfg`).
pub const SHARED_TYPES: &[&str] = &[
    "always_sample",
    "boolean_attribute",
    "bytes_limiting",
    "latency",
    "numeric_attribute",
    "ottl_condition",
    "probabilistic",
    "rate_limiting",
    "span_count",
    "status_code",
    "string_attribute",
    "trace_flags",
    "trace_state",
];

/// Every policy type this build evaluates (all of the Collector's, as of v0.161).
pub const SUPPORTED_TYPES: &[&str] = &[
    "always_sample",
    "and",
    "boolean_attribute",
    "bytes_limiting",
    "composite",
    "drop",
    "latency",
    "not",
    "numeric_attribute",
    "ottl_condition",
    "probabilistic",
    "rate_limiting",
    "span_count",
    "status_code",
    "string_attribute",
    "trace_flags",
    "trace_state",
];

/// A type's block, or its defaults when the block is absent.
fn block<T: Clone + Default>(b: &Option<T>) -> Cow<'_, T> {
    match b {
        Some(b) => Cow::Borrowed(b),
        None => Cow::Owned(T::default()),
    }
}

macro_rules! policy_config {
    (
        $(#[$doc:meta])*
        $name:ident { $($(#[$fdoc:meta])* $field:ident: $ty:ty,)* }
    ) => {
        $(#[$doc])*
        #[derive(Debug, Clone, Default, Deserialize)]
        #[serde(deny_unknown_fields)]
        pub struct $name {
            /// Names the policy in metrics; required at the top level only, as in the Collector.
            #[serde(default)]
            pub name: String,
            #[serde(rename = "type", default)]
            pub kind: String,
            #[serde(default, deserialize_with = "null_as_default")]
            pub latency: Option<LatencyConfig>,
            #[serde(default, deserialize_with = "null_as_default")]
            pub numeric_attribute: Option<NumericAttributeConfig>,
            #[serde(default, deserialize_with = "null_as_default")]
            pub probabilistic: Option<ProbabilisticConfig>,
            #[serde(default, deserialize_with = "null_as_default")]
            pub status_code: Option<StatusCodeConfig>,
            #[serde(default, deserialize_with = "null_as_default")]
            pub string_attribute: Option<StringAttributeConfig>,
            #[serde(default, deserialize_with = "null_as_default")]
            pub rate_limiting: Option<RateLimitingConfig>,
            #[serde(default, deserialize_with = "null_as_default")]
            pub bytes_limiting: Option<BytesLimitingConfig>,
            #[serde(default, deserialize_with = "null_as_default")]
            pub span_count: Option<SpanCountConfig>,
            #[serde(default, deserialize_with = "null_as_default")]
            pub trace_state: Option<TraceStateConfig>,
            #[serde(default, deserialize_with = "null_as_default")]
            pub boolean_attribute: Option<BooleanAttributeConfig>,
            #[serde(default, deserialize_with = "null_as_default")]
            pub ottl_condition: Option<OttlConditionConfig>,
            $(
                $(#[$fdoc])*
                #[serde(default, deserialize_with = "null_as_default")]
                pub $field: Option<$ty>,
            )*
        }

        impl $name {
            fn shared(&self) -> Shared<'_> {
                Shared {
                    kind: &self.kind,
                    latency: &self.latency,
                    numeric_attribute: &self.numeric_attribute,
                    probabilistic: &self.probabilistic,
                    status_code: &self.status_code,
                    string_attribute: &self.string_attribute,
                    rate_limiting: &self.rate_limiting,
                    bytes_limiting: &self.bytes_limiting,
                    span_count: &self.span_count,
                    trace_state: &self.trace_state,
                    boolean_attribute: &self.boolean_attribute,
                    ottl_condition: &self.ottl_condition,
                }
            }
        }
    };
}

policy_config! {
    /// `processors.tail_sampling.policies[i]`.
    PolicyConfig {
        and: AndConfig,
        not: NotConfig,
        drop: DropConfig,
        composite: CompositeConfig,
    }
}

policy_config! {
    /// An item of `and.and_sub_policy` or `drop.drop_sub_policy`.
    AndSubPolicyConfig {
        not: NotConfig,
    }
}

policy_config! {
    /// `not.not_sub_policy`: a single policy, not a list.
    NotSubPolicyConfig {}
}

policy_config! {
    /// An item of `composite.composite_sub_policy`.
    CompositeSubPolicyConfig {
        and: AndConfig,
    }
}

/// The leaf blocks of one policy config, whatever its level.
struct Shared<'a> {
    kind: &'a str,
    latency: &'a Option<LatencyConfig>,
    numeric_attribute: &'a Option<NumericAttributeConfig>,
    probabilistic: &'a Option<ProbabilisticConfig>,
    status_code: &'a Option<StatusCodeConfig>,
    string_attribute: &'a Option<StringAttributeConfig>,
    rate_limiting: &'a Option<RateLimitingConfig>,
    bytes_limiting: &'a Option<BytesLimitingConfig>,
    span_count: &'a Option<SpanCountConfig>,
    trace_state: &'a Option<TraceStateConfig>,
    boolean_attribute: &'a Option<BooleanAttributeConfig>,
    ottl_condition: &'a Option<OttlConditionConfig>,
}

impl Shared<'_> {
    /// Validates a leaf type's block; `false` when `kind` is not a leaf type.
    fn validate(&self, path: &str, errors: &mut Vec<ConfigError>) -> bool {
        let at = |block: &str| format!("{path}.{block}");
        match self.kind {
            "always_sample" | "trace_flags" => {}
            "latency" => block(self.latency).validate(&at("latency"), errors),
            "numeric_attribute" => {
                block(self.numeric_attribute).validate(&at("numeric_attribute"), errors)
            }
            "probabilistic" => block(self.probabilistic).validate(&at("probabilistic"), errors),
            "status_code" => block(self.status_code).validate(&at("status_code"), errors),
            "string_attribute" => {
                block(self.string_attribute).validate(&at("string_attribute"), errors)
            }
            "rate_limiting" => block(self.rate_limiting).validate(&at("rate_limiting"), errors),
            "bytes_limiting" => block(self.bytes_limiting).validate(&at("bytes_limiting"), errors),
            "span_count" | "trace_state" | "boolean_attribute" => {}
            "ottl_condition" => block(self.ottl_condition).validate(&at("ottl_condition"), errors),
            _ => return false,
        }
        true
    }

    /// Builds a leaf policy; `None` when `kind` is not a leaf type.
    fn build(&self) -> Option<Box<dyn Policy>> {
        Some(match self.kind {
            "always_sample" => Box::new(AlwaysSample),
            "trace_flags" => Box::new(TraceFlagsPolicy),
            "latency" => Box::new(block(self.latency).build()),
            "numeric_attribute" => Box::new(block(self.numeric_attribute).build()),
            "probabilistic" => Box::new(block(self.probabilistic).build()),
            "status_code" => Box::new(block(self.status_code).build()),
            "string_attribute" => Box::new(block(self.string_attribute).build()),
            "rate_limiting" => Box::new(block(self.rate_limiting).build()),
            "bytes_limiting" => Box::new(block(self.bytes_limiting).build()),
            "span_count" => Box::new(block(self.span_count).build()),
            "trace_state" => Box::new(block(self.trace_state).build()),
            "boolean_attribute" => Box::new(block(self.boolean_attribute).build()),
            "ottl_condition" => Box::new(block(self.ottl_condition).build()),
            _ => return None,
        })
    }
}

/// The error for a `type` that is missing or not accepted at this level.
fn type_error(path: &str, kind: &str, level: &str, extra: &[&str]) -> ConfigError {
    let path = format!("{path}.type");
    if kind.is_empty() {
        return ConfigError::new(path, "every policy needs a type");
    }
    let mut supported: Vec<&str> = SHARED_TYPES.iter().chain(extra).copied().collect();
    supported.sort_unstable();
    let what = if SUPPORTED_TYPES.contains(&kind) {
        format!("policy type `{kind}` cannot be used {level}")
    } else {
        format!("policy type `{kind}` is not supported")
    };
    ConfigError::new(
        path,
        format!("{what}; supported types here: {}", supported.join(", ")),
    )
}

impl PolicyConfig {
    pub fn validate(&self, path: &str, errors: &mut Vec<ConfigError>) {
        if self.name.is_empty() {
            errors.push(ConfigError::new(
                format!("{path}.name"),
                "every policy needs a name",
            ));
        }
        if self.shared().validate(path, errors) {
            return;
        }
        match self.kind.as_str() {
            "and" => block(&self.and).validate(&format!("{path}.and"), errors),
            "not" => block(&self.not).validate(&format!("{path}.not"), errors),
            "drop" => block(&self.drop).validate(&format!("{path}.drop"), errors),
            "composite" => block(&self.composite).validate(&format!("{path}.composite"), errors),
            other => errors.push(type_error(
                path,
                other,
                "at the top level",
                &["and", "composite", "drop", "not"],
            )),
        }
    }

    /// Builds the evaluator. Only called on validated config.
    pub fn build(&self) -> Box<dyn Policy> {
        if let Some(policy) = self.shared().build() {
            return policy;
        }
        match self.kind.as_str() {
            "and" => Box::new(block(&self.and).build()),
            "not" => Box::new(block(&self.not).build()),
            "drop" => Box::new(block(&self.drop).build()),
            "composite" => Box::new(block(&self.composite).build()),
            other => unreachable!("policy type {other} passed validation"),
        }
    }
}

impl AndSubPolicyConfig {
    /// `within` names the parent for messages: "in an `and` policy" or "in a `drop` policy".
    pub fn validate(&self, path: &str, within: &str, errors: &mut Vec<ConfigError>) {
        if self.shared().validate(path, errors) {
            return;
        }
        match self.kind.as_str() {
            "not" => block(&self.not).validate(&format!("{path}.not"), errors),
            other => errors.push(type_error(path, other, within, &["not"])),
        }
    }

    pub fn build(&self) -> Box<dyn Policy> {
        if let Some(policy) = self.shared().build() {
            return policy;
        }
        match self.kind.as_str() {
            "not" => Box::new(block(&self.not).build()),
            other => unreachable!("policy type {other} passed validation"),
        }
    }
}

impl NotSubPolicyConfig {
    pub fn validate(&self, path: &str, errors: &mut Vec<ConfigError>) {
        if !self.shared().validate(path, errors) {
            errors.push(type_error(path, &self.kind, "in a `not` policy", &[]));
        }
    }

    pub fn build(&self) -> Box<dyn Policy> {
        match self.shared().build() {
            Some(policy) => policy,
            None => unreachable!("policy type {} passed validation", self.kind),
        }
    }
}

impl CompositeSubPolicyConfig {
    pub fn validate(&self, path: &str, errors: &mut Vec<ConfigError>) {
        if self.shared().validate(path, errors) {
            return;
        }
        match self.kind.as_str() {
            "and" => block(&self.and).validate(&format!("{path}.and"), errors),
            other => errors.push(type_error(path, other, "in a `composite` policy", &["and"])),
        }
    }

    pub fn build(&self) -> Box<dyn Policy> {
        if let Some(policy) = self.shared().build() {
            return policy;
        }
        match self.kind.as_str() {
            "and" => Box::new(block(&self.and).build()),
            other => unreachable!("policy type {other} passed validation"),
        }
    }
}

// ---------------------------------------------------------------------------------------------
// The combining policies' blocks. They nest the level structs above (and those nest them), so
// they live in this file; the policies they build are in `and.rs`, `not.rs`, `drop.rs` and
// `composite.rs`.

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AndConfig {
    #[serde(default)]
    pub and_sub_policy: Vec<AndSubPolicyConfig>,
}

/// Validates an `and_sub_policy` or `drop_sub_policy` list.
fn validate_list(
    path: &str,
    list: &[AndSubPolicyConfig],
    within: &str,
    errors: &mut Vec<ConfigError>,
) {
    if list.is_empty() {
        errors.push(ConfigError::new(
            path,
            format!("list at least one sub-policy; an empty list would match every trace {within}"),
        ));
    }
    for (i, sub) in list.iter().enumerate() {
        sub.validate(&format!("{path}[{i}]"), within, errors);
    }
}

impl AndConfig {
    pub fn validate(&self, path: &str, errors: &mut Vec<ConfigError>) {
        validate_list(
            &format!("{path}.and_sub_policy"),
            &self.and_sub_policy,
            "in an `and` policy",
            errors,
        );
    }

    pub fn build(&self) -> AndPolicy {
        AndPolicy::new(self.and_sub_policy.iter().map(|c| c.build()).collect())
    }
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NotConfig {
    #[serde(default)]
    pub not_sub_policy: Option<NotSubPolicyConfig>,
}

impl NotConfig {
    pub fn validate(&self, path: &str, errors: &mut Vec<ConfigError>) {
        let path = format!("{path}.not_sub_policy");
        match &self.not_sub_policy {
            Some(sub) => sub.validate(&path, errors),
            None => errors.push(ConfigError::new(
                path,
                "a `not` policy needs a not_sub_policy",
            )),
        }
    }

    pub fn build(&self) -> NotPolicy {
        NotPolicy::new(
            self.not_sub_policy
                .as_ref()
                .expect("validated not_sub_policy")
                .build(),
        )
    }
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DropConfig {
    #[serde(default)]
    pub drop_sub_policy: Vec<AndSubPolicyConfig>,
}

impl DropConfig {
    pub fn validate(&self, path: &str, errors: &mut Vec<ConfigError>) {
        validate_list(
            &format!("{path}.drop_sub_policy"),
            &self.drop_sub_policy,
            "in a `drop` policy",
            errors,
        );
    }

    pub fn build(&self) -> DropPolicy {
        DropPolicy::new(self.drop_sub_policy.iter().map(|c| c.build()).collect())
    }
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CompositeConfig {
    #[serde(default)]
    pub max_total_spans_per_second: i64,
    /// Accepted and not used, as in the Collector.
    #[serde(default)]
    pub policy_order: Vec<String>,
    #[serde(default)]
    pub composite_sub_policy: Vec<CompositeSubPolicyConfig>,
    #[serde(default)]
    pub rate_allocation: Vec<RateAllocationConfig>,
}

/// `composite.rate_allocation[i]`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RateAllocationConfig {
    #[serde(default)]
    pub policy: String,
    #[serde(default)]
    pub percent: i64,
}

impl CompositeConfig {
    pub fn validate(&self, path: &str, errors: &mut Vec<ConfigError>) {
        for (i, sub) in self.composite_sub_policy.iter().enumerate() {
            sub.validate(&format!("{path}.composite_sub_policy[{i}]"), errors);
        }
        // The Collector ignores an allocation whose name matches no sub-policy, so a typo there
        // silently leaves the intended sub-policy a budget of 0: refuse it instead.
        let names: Vec<&str> = self
            .composite_sub_policy
            .iter()
            .map(|s| s.name.as_str())
            .collect();
        for (i, allocation) in self.rate_allocation.iter().enumerate() {
            if !names.contains(&allocation.policy.as_str()) {
                errors.push(ConfigError::new(
                    format!("{path}.rate_allocation[{i}].policy"),
                    format!(
                        "`{}` names no composite_sub_policy (they are: {})",
                        allocation.policy,
                        names.join(", ")
                    ),
                ));
            }
        }
    }

    /// Each sub-policy's spans-per-second budget, the Collector's way.
    pub(super) fn budgets(&self) -> Vec<i64> {
        let total = self.max_total_spans_per_second as f64;
        let equal_share = total / self.composite_sub_policy.len() as f64;
        let mut by_name: HashMap<&str, f64> = HashMap::new();
        for a in &self.rate_allocation {
            let share = if a.percent > 0 {
                a.percent as f64 / 100.0 * total
            } else {
                equal_share
            };
            by_name.insert(&a.policy, share);
        }
        self.composite_sub_policy
            .iter()
            .map(|s| by_name.get(s.name.as_str()).map_or(0, |&v| v as i64))
            .collect()
    }

    pub fn build(&self) -> CompositePolicy {
        let subs = self
            .composite_sub_policy
            .iter()
            .zip(self.budgets())
            .map(|(c, budget)| (c.build(), budget))
            .collect();
        CompositePolicy::new(self.max_total_spans_per_second, subs)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{Config, ProcessorConfig};

    fn errors_of(yaml: &str) -> Vec<String> {
        let configs: Vec<PolicyConfig> = serde_yaml::from_str(yaml).unwrap();
        let mut errors = vec![];
        for (i, c) in configs.iter().enumerate() {
            c.validate(&format!("p[{i}]"), &mut errors);
        }
        errors.iter().map(|e| e.to_string()).collect()
    }

    fn parse_error(yaml: &str) -> String {
        let value: serde_yaml::Value = serde_yaml::from_str(yaml).unwrap();
        let err = serde_path_to_error::deserialize::<_, Vec<PolicyConfig>>(value).unwrap_err();
        format!("{}: {}", err.path(), err.inner())
    }

    #[test]
    fn a_rate_allocation_naming_no_sub_policy_is_an_error_not_a_zero_budget() {
        let errors = errors_of(
            r#"
- name: comp
  type: composite
  composite:
    max_total_spans_per_second: 10
    composite_sub_policy:
      - {name: errors, type: status_code, status_code: {status_codes: [ERROR]}}
      - {name: rest, type: always_sample}
    rate_allocation:
      - {policy: errors, percent: 50}
      - {policy: erors, percent: 50}
"#,
        );
        assert_eq!(
            errors,
            ["p[0].composite.rate_allocation[1].policy: `erors` names no composite_sub_policy (they are: errors, rest)"]
        );
    }

    #[test]
    fn errors_in_nested_policies_carry_the_full_yaml_path() {
        let errors = errors_of(
            r#"
- name: nested
  type: and
  and:
    and_sub_policy:
      - {name: a, type: always_sample}
      - name: b
        type: numeric_attribute
        numeric_attribute: {key: k, min_value: 10, max_value: 5}
      - name: c
        type: not
        not:
          not_sub_policy:
            name: d
            type: string_attribute
            string_attribute: {key: k, values: ["("], enabled_regex_matching: true}
- name: comp
  type: composite
  composite:
    max_total_spans_per_second: 10
    composite_sub_policy:
      - name: e
        type: and
        and:
          and_sub_policy:
            - {name: f, type: rate_limiting, rate_limiting: {spans_per_second: -1}}
"#,
        );
        let want = [
            "p[0].and.and_sub_policy[1].numeric_attribute.min_value",
            "p[0].and.and_sub_policy[2].not.not_sub_policy.string_attribute.values[0]",
            "p[1].composite.composite_sub_policy[0].and.and_sub_policy[0].rate_limiting.spans_per_second",
        ];
        assert_eq!(errors.len(), want.len(), "{errors:#?}");
        for (e, w) in errors.iter().zip(want) {
            assert!(e.starts_with(&format!("{w}:")), "{e} should start with {w}");
        }
    }

    #[test]
    fn each_level_accepts_the_types_the_collector_accepts_there() {
        let cases = [
            // composite inside and: not accepted.
            (
                "[{name: x, type: and, and: {and_sub_policy: [{name: y, type: composite}]}}]",
                Some("p[0].and.and_sub_policy[0].type: policy type `composite` cannot be used in an `and` policy"),
            ),
            // not inside drop: accepted.
            (
                "[{name: x, type: drop, drop: {drop_sub_policy: [{name: y, type: not, not: {not_sub_policy: {type: always_sample}}}]}}]",
                None,
            ),
            // and inside not: not accepted.
            (
                "[{name: x, type: not, not: {not_sub_policy: {name: y, type: and}}}]",
                Some("p[0].not.not_sub_policy.type: policy type `and` cannot be used in a `not` policy"),
            ),
            // and inside composite: accepted; drop inside composite: not.
            (
                "[{name: x, type: composite, composite: {composite_sub_policy: [{name: y, type: and, and: {and_sub_policy: [{type: trace_flags}]}}]}}]",
                None,
            ),
            (
                "[{name: x, type: composite, composite: {composite_sub_policy: [{name: y, type: drop}]}}]",
                Some("p[0].composite.composite_sub_policy[0].type: policy type `drop` cannot be used in a `composite` policy"),
            ),
            (
                "[{name: x, type: bogus}]",
                Some("p[0].type: policy type `bogus` is not supported; supported types here: always_sample, and,"),
            ),
            ("[{name: x}]", Some("p[0].type: every policy needs a type")),
        ];
        for (yaml, want) in cases {
            let errors = errors_of(yaml);
            match want {
                None => assert!(errors.is_empty(), "{yaml}: {errors:?}"),
                Some(w) => assert!(
                    errors.iter().any(|e| e.starts_with(w)),
                    "{yaml}: {errors:?}"
                ),
            }
        }
    }

    #[test]
    fn blocks_a_level_does_not_have_are_unknown_fields_with_their_path() {
        let e = parse_error(
            "[{name: x, type: and, and: {and_sub_policy: [{name: y, type: always_sample, composite: {}}]}}]",
        );
        assert!(
            e.starts_with("[0].and.and_sub_policy[0].composite: unknown field `composite`"),
            "{e}"
        );
        let e = parse_error("[{name: x, type: trace_flags, trace_flags: {}}]");
        assert!(e.contains("unknown field `trace_flags`"), "{e}");
        let e = parse_error(
            "[{name: x, type: numeric_attribute, numeric_attribute: {key: k, min_value: 1, max: 2}}]",
        );
        assert!(
            e.starts_with("[0].numeric_attribute.max: unknown field `max`"),
            "{e}"
        );
    }

    const FIXTURE: &str = include_str!("../../tests/fixtures/all_policies.yaml");

    #[test]
    fn the_all_policies_fixture_loads_and_validates() {
        let yaml = FIXTURE
            .replace("${env:TG_GRPC_PORT}", "14317")
            .replace("${env:TG_HEALTH_PORT}", "13133")
            .replace("${env:TG_METRICS_PORT}", "18888")
            .replace("${env:TG_BACKEND_PORT}", "24317");
        let config = match Config::from_yaml(&yaml) {
            Ok(c) => c,
            Err(e) => panic!("{e}"),
        };
        let ProcessorConfig::TailSampling(ts) = &config.processors["tail_sampling"] else {
            panic!("tail_sampling is not a tail sampling processor")
        };
        let mut types: Vec<&str> = vec![];
        fn walk<'a>(p: &'a PolicyConfig, out: &mut Vec<&'a str>) {
            out.push(&p.kind);
            if let Some(and) = &p.and {
                for s in &and.and_sub_policy {
                    out.push(&s.kind);
                }
            }
            if let Some(drop) = &p.drop {
                for s in &drop.drop_sub_policy {
                    out.push(&s.kind);
                    if let Some(n) = s.not.as_ref().and_then(|n| n.not_sub_policy.as_ref()) {
                        out.push(&n.kind);
                    }
                }
            }
            if let Some(n) = p.not.as_ref().and_then(|n| n.not_sub_policy.as_ref()) {
                out.push(&n.kind);
            }
            if let Some(c) = &p.composite {
                for s in &c.composite_sub_policy {
                    out.push(&s.kind);
                }
            }
        }
        for p in &ts.policies {
            walk(p, &mut types);
        }
        for kind in SUPPORTED_TYPES {
            assert!(types.contains(kind), "the fixture has no `{kind}` policy");
        }
        // And it builds.
        let _ = super::super::PolicySet::new(&ts.policies, ts.sample_on_first_match);
    }
}
