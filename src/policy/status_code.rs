//! `status_code`: keeps a trace when any span's status code is one of `status_codes`.

use serde::Deserialize;

use super::{any_span, sampled_if, Decision, Policy, PolicyError, TraceView};
use crate::yaml::ConfigError;

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StatusCodeConfig {
    #[serde(default)]
    pub status_codes: Vec<String>,
}

fn code_of(name: &str) -> Option<i32> {
    match name {
        "UNSET" => Some(0),
        "OK" => Some(1),
        "ERROR" => Some(2),
        _ => None,
    }
}

impl StatusCodeConfig {
    pub fn validate(&self, path: &str, errors: &mut Vec<ConfigError>) {
        if self.status_codes.is_empty() {
            errors.push(ConfigError::new(
                format!("{path}.status_codes"),
                "status_codes must list at least one of OK, ERROR, UNSET",
            ));
        }
        for (i, name) in self.status_codes.iter().enumerate() {
            if code_of(name).is_none() {
                errors.push(ConfigError::new(
                    format!("{path}.status_codes[{i}]"),
                    format!("unknown status code `{name}`; use OK, ERROR or UNSET"),
                ));
            }
        }
    }

    pub fn build(&self) -> StatusCodePolicy {
        StatusCodePolicy {
            codes: self
                .status_codes
                .iter()
                .filter_map(|n| code_of(n))
                .collect(),
        }
    }
}

pub struct StatusCodePolicy {
    codes: Vec<i32>,
}

impl Policy for StatusCodePolicy {
    fn evaluate(&self, trace: &TraceView<'_>) -> Result<Decision, PolicyError> {
        Ok(sampled_if(any_span(trace, |s| {
            self.codes.contains(&s.info.status_code)
        })))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::testing::*;

    fn policy(codes: &[&str]) -> StatusCodePolicy {
        StatusCodeConfig {
            status_codes: codes.iter().map(|c| c.to_string()).collect(),
        }
        .build()
    }

    #[test]
    fn each_status_name_selects_its_own_code() {
        // UNSET 0, OK 1, ERROR 2 (a missed mutant forgot OK).
        for (name, code) in [("UNSET", 0u8), ("OK", 1), ("ERROR", 2)] {
            let p = policy(&[name]);
            assert_eq!(
                p.evaluate(&trace(vec![span(0, 1, code)])),
                Ok(Decision::Sampled),
                "{name}"
            );
            let other = (code + 1) % 3;
            assert_eq!(
                p.evaluate(&trace(vec![span(0, 1, other)])),
                Ok(Decision::NotSampled),
                "{name} against code {other}"
            );
            let mut errors = Vec::new();
            StatusCodeConfig {
                status_codes: vec![name.to_string()],
            }
            .validate("s", &mut errors);
            assert!(errors.is_empty(), "{name}: {errors:?}");
        }
    }

    #[test]
    fn a_trace_is_kept_when_any_span_has_a_listed_status() {
        let cases: &[(&[&str], &[u8], Decision)] = &[
            (&["ERROR"], &[UNSET, UNSET, ERROR], Decision::Sampled),
            (&["ERROR"], &[OK, UNSET], Decision::NotSampled),
            (&["OK", "ERROR"], &[OK], Decision::Sampled),
            (&["UNSET"], &[UNSET], Decision::Sampled),
            (&["ERROR"], &[], Decision::NotSampled),
        ];
        for (codes, statuses, want) in cases {
            let t = trace(statuses.iter().map(|&s| span(0, 1, s)).collect());
            assert_eq!(
                policy(codes).evaluate(&t),
                Ok(*want),
                "{codes:?} {statuses:?}"
            );
        }
    }

    #[test]
    fn unknown_and_missing_codes_are_rejected() {
        let mut errors = vec![];
        StatusCodeConfig {
            status_codes: vec!["ERROR".into(), "FAILED".into()],
        }
        .validate("x", &mut errors);
        StatusCodeConfig::default().validate("y", &mut errors);
        assert_eq!(errors[0].path, "x.status_codes[1]");
        assert!(errors[0].message.contains("FAILED"));
        assert_eq!(errors[1].path, "y.status_codes");
    }
}
