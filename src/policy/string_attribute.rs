//! `string_attribute`: keeps a trace when a resource or span attribute `key` equals one of
//! `values`, or with `enabled_regex_matching` matches one of them as a regular expression.
//!
//! Matches the Collector, quirks included:
//! - Values are read with pdata's `Str()`, so a non-string attribute reads as `""`.
//! - An empty span value never matches, but an empty (or non-string) resource value is tried:
//!   with regex matching, a pattern that matches `""` (such as `.*`) keeps every trace whose
//!   resource has `key` at all.
//! - Exact matching ignores empty entries in `values`.
//! - Regular expressions are Go's (RE2) and unanchored: `/health` also matches `/healthz`. Write
//!   `^/health$` for a whole-string match. See [`super::regex_go`] for the dialect.
//! - `cache_max_size` sizes the Collector's LRU cache of regex results. Results are the same
//!   without it, so it is accepted and not used.
//! - `invert_match` keeps the trace when nothing matches and answers a plain `NotSampled` when
//!   something does (Collector v0.156 behaviour; see `numeric_attribute`).

use std::collections::HashSet;

use regex::Regex;
use serde::Deserialize;

use super::attributes::{any_resource_or_span_attribute, Level};
use super::regex_go;
use super::{sampled_if, Decision, Policy, PolicyError, TraceView};
use crate::yaml::ConfigError;

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StringAttributeConfig {
    #[serde(default)]
    pub key: String,
    #[serde(default)]
    pub values: Vec<String>,
    #[serde(default)]
    pub enabled_regex_matching: bool,
    /// Accepted for compatibility; see the module docs.
    #[serde(default)]
    pub cache_max_size: i64,
    #[serde(default)]
    pub invert_match: bool,
}

impl StringAttributeConfig {
    pub fn validate(&self, path: &str, errors: &mut Vec<ConfigError>) {
        if !self.enabled_regex_matching {
            return;
        }
        for (i, value) in self.values.iter().enumerate() {
            if let Err(e) = regex_go::compile(value) {
                errors.push(ConfigError::new(
                    format!("{path}.values[{i}]"),
                    format!("`{value}` is not a valid regular expression: {e}"),
                ));
            }
        }
    }

    pub fn build(&self) -> StringAttributePolicy {
        let matcher = if self.enabled_regex_matching {
            Matcher::Regex(
                self.values
                    .iter()
                    .map(|v| regex_go::compile(v).expect("validated regular expression"))
                    .collect(),
            )
        } else {
            Matcher::Exact(
                self.values
                    .iter()
                    .filter(|v| !v.is_empty())
                    .map(|v| v.clone().into_bytes())
                    .collect(),
            )
        };
        StringAttributePolicy {
            key: self.key.clone().into_bytes(),
            matcher,
            invert: self.invert_match,
        }
    }
}

enum Matcher {
    Exact(HashSet<Vec<u8>>),
    Regex(Vec<Regex>),
}

impl Matcher {
    fn matches(&self, value: &[u8]) -> bool {
        match self {
            Matcher::Exact(values) => values.contains(value),
            Matcher::Regex(patterns) => {
                let value = String::from_utf8_lossy(value);
                patterns.iter().any(|p| p.is_match(&value))
            }
        }
    }
}

pub struct StringAttributePolicy {
    key: Vec<u8>,
    matcher: Matcher,
    invert: bool,
}

impl Policy for StringAttributePolicy {
    fn evaluate(&self, trace: &TraceView<'_>) -> Result<Decision, PolicyError> {
        let matched = any_resource_or_span_attribute(trace, &self.key, |level, value| {
            let s = value.str_or_empty();
            if level == Level::Span && s.is_empty() {
                return false;
            }
            self.matcher.matches(s)
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

    fn decide(values: &[&str], regex: bool, invert: bool, span: SpanRecord<'static>) -> Decision {
        StringAttributeConfig {
            key: "route".into(),
            values: values.iter().map(|v| v.to_string()).collect(),
            enabled_regex_matching: regex,
            cache_max_size: 0,
            invert_match: invert,
        }
        .build()
        .evaluate(&trace(vec![span]))
        .unwrap()
    }

    fn span_with(v: Option<Val>) -> SpanRecord<'static> {
        SpanBuilder::new().attr("route", v).build()
    }

    fn resource_with(v: Option<Val>) -> SpanRecord<'static> {
        SpanBuilder::new().resource_attr("route", v).build()
    }

    #[test]
    fn exact_values_match_on_spans_and_resources() {
        let cases = [
            (&["/a", "/b"][..], span_with(text("/b")), Sampled),
            (&["/a", "/b"], span_with(text("/c")), NotSampled),
            (&["/a"], resource_with(text("/a")), Sampled),
            (&["/a"], span_with(text("/a/x")), NotSampled),
            (
                &["/a"],
                SpanBuilder::new().attr("other", text("/a")).build(),
                NotSampled,
            ),
            // Case matters.
            (&["/A"], span_with(text("/a")), NotSampled),
        ];
        for (values, span, want) in cases {
            assert_eq!(decide(values, false, false, span), want, "{values:?}");
        }
    }

    #[test]
    fn regexes_are_unanchored_like_go() {
        let cases = [
            (&["/health"][..], span_with(text("/healthz")), Sampled),
            (&["^/health$"], span_with(text("/healthz")), NotSampled),
            (
                &["v[0-9]+/users"],
                span_with(text("/api/v2/users/7")),
                Sampled,
            ),
            (&["^a", "z$"], span_with(text("xyz")), Sampled),
            (&["^a", "z$"], span_with(text("xyza")), NotSampled),
        ];
        for (values, span, want) in cases {
            assert_eq!(decide(values, true, false, span), want, "{values:?}");
        }
    }

    #[test]
    fn empty_and_non_string_values_follow_pdata_str() {
        // A non-string span value reads as "" and empty span values are skipped...
        assert_eq!(decide(&[".*"], true, false, span_with(int(5))), NotSampled);
        assert_eq!(
            decide(&[".*"], true, false, span_with(text(""))),
            NotSampled
        );
        // ...but on the resource "" is matched against the patterns.
        assert_eq!(decide(&[".*"], true, false, resource_with(int(5))), Sampled);
        assert_eq!(
            decide(&["^$"], true, false, resource_with(text(""))),
            Sampled
        );
        // Exact matching never matches "": empty configured values are dropped.
        assert_eq!(
            decide(&[""], false, false, resource_with(text(""))),
            NotSampled
        );
    }

    #[test]
    fn invert_match_answers_plainly() {
        assert_eq!(
            decide(&["/a"], false, true, span_with(text("/a"))),
            NotSampled
        );
        assert_eq!(decide(&["/a"], false, true, span_with(text("/b"))), Sampled);
        assert_eq!(
            decide(&["/a"], false, true, SpanBuilder::new().build()),
            Sampled
        );
        assert_eq!(
            decide(&["^/a"], true, true, resource_with(text("/a/b"))),
            NotSampled
        );
    }

    #[test]
    fn invalid_regexes_are_config_errors_naming_the_value() {
        let mut errors = vec![];
        StringAttributeConfig {
            key: "k".into(),
            values: vec!["ok".into(), "(unclosed".into()],
            enabled_regex_matching: true,
            ..Default::default()
        }
        .validate("s", &mut errors);
        assert_eq!(errors.len(), 1);
        assert_eq!(errors[0].path, "s.values[1]");
        assert!(errors[0].message.contains("(unclosed"));
        // Without regex matching the same value is just a string.
        let mut errors = vec![];
        StringAttributeConfig {
            key: "k".into(),
            values: vec!["(unclosed".into()],
            ..Default::default()
        }
        .validate("s", &mut errors);
        assert!(errors.is_empty());
    }
}
