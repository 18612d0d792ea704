//! `ottl_condition`: keeps a trace when any span matches one of the `span` conditions, or any
//! span event matches one of the `spanevent` conditions, written in the OpenTelemetry
//! Transformation Language.
//!
//! tailgate implements the subset of OTTL that sampling conditions use (see [`parse`] for the
//! grammar and paths, [`eval`] for the semantics): span and span event paths, resource and scope
//! attributes, literals, comparisons, arithmetic (so a span's duration can be written
//! `end_time_unix_nano - start_time_unix_nano`), `and`/`or`/`not`, parentheses and `IsMatch`.
//! Anything else is a config error that quotes the condition and names what is not supported.
//!
//! As in the Collector: spans are visited in order; for each, the span conditions are tried, then
//! every event against the event conditions; the first true condition samples the trace. The
//! conditions of one list are alternatives (OR). When a condition fails at run time, `error_mode`
//! decides: `propagate` (the default, as in the Collector without its alpha
//! `defaultOTTLErrorModeIgnore` gate) fails the policy, which is then skipped and counted in
//! `otelcol_processor_tail_sampling_sampling_policy_evaluation_error`; `ignore` and `silent`
//! treat that condition as false and go on (`ignore` also logs at debug level).

mod eval;
mod parse;

use serde::Deserialize;

use super::{Decision, Policy, PolicyError, TraceView};
use crate::otlp::attributes::{repeated, EventFields, SpanFields};
use crate::yaml::ConfigError;
use eval::{eval_cond, EvalError, Scope};
use parse::{Cond, Context};

/// `Span.events`.
const SPAN_EVENTS: u32 = 11;

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OttlConditionConfig {
    /// `propagate` (default), `ignore` or `silent`.
    #[serde(default)]
    pub error_mode: String,
    #[serde(default)]
    pub span: Vec<String>,
    #[serde(default)]
    pub spanevent: Vec<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ErrorMode {
    Propagate,
    Ignore,
    Silent,
}

fn error_mode(text: &str) -> Option<ErrorMode> {
    match text {
        "" | "propagate" => Some(ErrorMode::Propagate),
        "ignore" => Some(ErrorMode::Ignore),
        "silent" => Some(ErrorMode::Silent),
        _ => None,
    }
}

impl OttlConditionConfig {
    pub fn validate(&self, path: &str, errors: &mut Vec<ConfigError>) {
        if error_mode(&self.error_mode).is_none() {
            errors.push(ConfigError::new(
                format!("{path}.error_mode"),
                format!(
                    "unknown error_mode `{}`; use propagate, ignore or silent",
                    self.error_mode
                ),
            ));
        }
        if self.span.is_empty() && self.spanevent.is_empty() {
            errors.push(ConfigError::new(
                path,
                "expected at least one OTTL condition in `span` or `spanevent`",
            ));
        }
        for (list, field, context) in [
            (&self.span, "span", Context::Span),
            (&self.spanevent, "spanevent", Context::SpanEvent),
        ] {
            for (i, text) in list.iter().enumerate() {
                if let Err(e) = parse::parse(text, context) {
                    errors.push(ConfigError::new(
                        format!("{path}.{field}[{i}]"),
                        format!("condition `{text}`: {e}"),
                    ));
                }
            }
        }
    }

    pub fn build(&self) -> OttlConditionPolicy {
        let parse_all = |list: &[String], context| {
            list.iter()
                .map(|text| {
                    let cond = parse::parse(text, context).expect("validated OTTL condition");
                    (text.clone(), cond)
                })
                .collect()
        };
        OttlConditionPolicy {
            span: parse_all(&self.span, Context::Span),
            spanevent: parse_all(&self.spanevent, Context::SpanEvent),
            mode: error_mode(&self.error_mode).expect("validated error_mode"),
        }
    }
}

pub struct OttlConditionPolicy {
    span: Vec<(String, Cond)>,
    spanevent: Vec<(String, Cond)>,
    mode: ErrorMode,
}

impl OttlConditionPolicy {
    /// Whether any condition of `conditions` holds, applying the error mode.
    fn any(&self, conditions: &[(String, Cond)], scope: &Scope<'_>) -> Result<bool, PolicyError> {
        for (text, cond) in conditions {
            match eval_cond(cond, scope) {
                Ok(true) => return Ok(true),
                Ok(false) => {}
                Err(EvalError::Wire(e)) => return Err(e.into()),
                Err(EvalError::Ottl(message)) => match self.mode {
                    ErrorMode::Propagate => {
                        return Err(PolicyError::Ottl {
                            condition: text.clone(),
                            message,
                        })
                    }
                    ErrorMode::Ignore => {
                        tracing::debug!(condition = %text, %message, "OTTL condition failed; ignored")
                    }
                    ErrorMode::Silent => {}
                },
            }
        }
        Ok(false)
    }
}

impl Policy for OttlConditionPolicy {
    fn evaluate(&self, trace: &TraceView<'_>) -> Result<Decision, PolicyError> {
        for span in &trace.spans {
            let mut scope = Scope {
                span,
                fields: SpanFields::read(span.bytes)?,
                event: None,
            };
            if !self.span.is_empty() && self.any(&self.span, &scope)? {
                return Ok(Decision::Sampled);
            }
            if self.spanevent.is_empty() {
                continue;
            }
            for event in repeated(span.bytes, SPAN_EVENTS) {
                let event = event?;
                scope.event = Some((event, EventFields::read(event)?));
                if self.any(&self.spanevent, &scope)? {
                    return Ok(Decision::Sampled);
                }
            }
        }
        Ok(Decision::NotSampled)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::testing::*;
    use crate::policy::SpanRecord;
    use Decision::*;

    fn policy(mode: &str, span: &[&str], spanevent: &[&str]) -> OttlConditionPolicy {
        let config = OttlConditionConfig {
            error_mode: mode.into(),
            span: span.iter().map(|s| s.to_string()).collect(),
            spanevent: spanevent.iter().map(|s| s.to_string()).collect(),
        };
        let mut errors = vec![];
        config.validate("o", &mut errors);
        assert!(errors.is_empty(), "{errors:?}");
        config.build()
    }

    fn decide(
        span_conds: &[&str],
        spans: Vec<SpanRecord<'static>>,
    ) -> Result<Decision, PolicyError> {
        policy("", span_conds, &[]).evaluate(&trace(spans))
    }

    fn checkout() -> SpanRecord<'static> {
        SpanBuilder::new()
            .name("POST /checkout")
            .kind(2)
            .times(1_000_000_000, 3_500_000_000)
            .status(2, "card declined")
            .trace_state("vendor=abc,team=pay")
            .attr("http.status_code", int(502))
            .attr("http.route", text("/checkout"))
            .attr("retry", boolean(true))
            .attr("ratio", double(0.25))
            .attr("blob", bytes_value(b"\xca\xfe"))
            .attr("tags", array(vec![text("a")]))
            .resource_attr("service.name", text("shop"))
            .scope("io.opentelemetry.http", "1.2.0")
            .scope_attr("lib.kind", text("http"))
            .event("exception", 5, vec![("exception.type", text("Timeout"))])
            .event("retry", 6, vec![("attempt", int(2))])
            .build()
    }

    #[test]
    fn span_conditions_read_every_supported_path() {
        let matching = [
            r#"name == "POST /checkout""#,
            r#"span.name != "GET /""#,
            "kind == SPAN_KIND_SERVER",
            "kind == 2",
            r#"kind.string == "Server""#,
            r#"kind.deprecated_string == "SPAN_KIND_SERVER""#,
            "status.code == STATUS_CODE_ERROR",
            r#"status.message == "card declined""#,
            r#"trace_state == "vendor=abc,team=pay""#,
            r#"trace_state["team"] == "pay""#,
            r#"trace_state["missing"] == """#,
            "start_time_unix_nano == 1000000000",
            "end_time_unix_nano - start_time_unix_nano >= 2500000000",
            "(end_time_unix_nano - start_time_unix_nano) / 1000000 > 2000",
            r#"attributes["http.status_code"] >= 500"#,
            r#"attributes["http.status_code"] == 502.0"#,
            r#"attributes["retry"] == true"#,
            r#"attributes["ratio"] < 1"#,
            r#"attributes["blob"] == 0xcafe"#,
            r#"attributes["missing"] == nil"#,
            r#"attributes["tags"] != nil"#,
            r#"resource.attributes["service.name"] == "shop""#,
            r#"instrumentation_scope.name == "io.opentelemetry.http""#,
            r#"instrumentation_scope.version == "1.2.0""#,
            r#"instrumentation_scope.attributes["lib.kind"] == "http""#,
            r#"IsMatch(attributes["http.route"], "^/check")"#,
            r#"IsMatch(attributes["http.status_code"], "^5\\d\\d$")"#,
            r#"IsMatch(attributes["ratio"], "^0\\.25$")"#,
            r#"IsMatch(attributes["blob"], "^cafe$")"#,
            r#"not IsMatch(name, "GET")"#,
            r#"name == "x" or (kind == 2 and not (status.code == 1))"#,
        ];
        for cond in matching {
            assert_eq!(decide(&[cond], vec![checkout()]), Ok(Sampled), "{cond}");
        }
        let not_matching = [
            r#"name == "post /checkout""#,
            "kind == SPAN_KIND_CLIENT",
            r#"attributes["http.status_code"] == "502""#,
            r#"attributes["http.status_code"] < 500"#,
            r#"attributes["missing"] == """#,
            r#"IsMatch(attributes["missing"], ".*")"#,
            r#"trace_state["team"] == "core""#,
            "end_time_unix_nano - start_time_unix_nano > 2500000000",
            "false",
        ];
        for cond in not_matching {
            assert_eq!(decide(&[cond], vec![checkout()]), Ok(NotSampled), "{cond}");
        }
    }

    /// pdata's `SpanKind.String()` names and the proto enum names OTTL's
    /// `kind.deprecated_string` gives, for every kind; an unknown kind has neither.
    #[test]
    fn every_span_kind_has_its_pdata_and_proto_names() {
        let names = [
            (0, "Unspecified", "SPAN_KIND_UNSPECIFIED"),
            (1, "Internal", "SPAN_KIND_INTERNAL"),
            (2, "Server", "SPAN_KIND_SERVER"),
            (3, "Client", "SPAN_KIND_CLIENT"),
            (4, "Producer", "SPAN_KIND_PRODUCER"),
            (5, "Consumer", "SPAN_KIND_CONSUMER"),
            (9, "", ""),
        ];
        for (kind, string, deprecated) in names {
            let span = || SpanBuilder::new().kind(kind).build();
            let string = format!("kind.string == \"{string}\"");
            let deprecated = format!("kind.deprecated_string == \"{deprecated}\"");
            assert_eq!(decide(&[&string], vec![span()]), Ok(Sampled), "{string}");
            assert_eq!(
                decide(&[&deprecated], vec![span()]),
                Ok(Sampled),
                "{deprecated}"
            );
        }
    }

    #[test]
    fn conditions_in_a_list_are_alternatives_and_any_span_may_match() {
        let plain = SpanBuilder::new().name("GET /").build();
        assert_eq!(
            decide(&[r#"name == "nope""#, r#"name == "GET /""#], vec![plain]),
            Ok(Sampled)
        );
        assert_eq!(
            decide(&[r#"name == "POST /checkout""#], vec![plain, checkout()]),
            Ok(Sampled)
        );
        assert_eq!(decide(&[r#"name == "x""#], vec![plain]), Ok(NotSampled));
    }

    #[test]
    fn span_event_conditions_look_at_each_event_and_its_span() {
        let p = |conds: &[&str]| policy("", &[], conds).evaluate(&trace(vec![checkout()]));
        assert_eq!(p(&[r#"name == "exception""#]), Ok(Sampled));
        assert_eq!(
            p(&[r#"spanevent.name == "retry" and attributes["attempt"] >= 2"#]),
            Ok(Sampled)
        );
        assert_eq!(
            p(&[r#"attributes["exception.type"] == "Timeout""#]),
            Ok(Sampled)
        );
        assert_eq!(
            p(&[r#"span.name == "POST /checkout" and name == "retry""#]),
            Ok(Sampled)
        );
        assert_eq!(
            p(&[r#"resource.attributes["service.name"] == "shop""#]),
            Ok(Sampled)
        );
        assert_eq!(p(&["time_unix_nano == 6"]), Ok(Sampled));
        // Attributes of one event are not seen from another.
        assert_eq!(
            p(&[r#"name == "retry" and attributes["exception.type"] != nil"#]),
            Ok(NotSampled)
        );
        // A span without events never matches event conditions.
        let no_events = SpanBuilder::new().build();
        let q = policy("", &[], &["true"]);
        assert_eq!(q.evaluate(&trace(vec![no_events])), Ok(NotSampled));
    }

    #[test]
    fn run_time_failures_follow_the_error_mode() {
        let failing = r#"attributes["http.status_code"] / 0 > 1"#;
        let fine = r#"name == "POST /checkout""#;
        let t = trace(vec![checkout()]);
        // propagate (the default): the policy fails, naming the condition.
        let err = policy("", &[failing, fine], &[]).evaluate(&t).unwrap_err();
        assert!(
            matches!(&err, PolicyError::Ottl { condition, message }
            if condition == failing && message.contains("divide by zero")),
            "{err}"
        );
        assert!(policy("propagate", &[failing], &[]).evaluate(&t).is_err());
        // ignore and silent: the failing condition is false, the next one still counts.
        for mode in ["ignore", "silent"] {
            assert_eq!(
                policy(mode, &[failing, fine], &[]).evaluate(&t),
                Ok(Sampled),
                "{mode}"
            );
            assert_eq!(
                policy(mode, &[failing], &[]).evaluate(&t),
                Ok(NotSampled),
                "{mode}"
            );
        }
        // `or` stops at the first true operand, so a later failure does not surface.
        assert_eq!(
            policy("", &[&format!("{fine} or {failing}")], &[]).evaluate(&t),
            Ok(Sampled)
        );
        assert!(policy("", &[&format!("{failing} or {fine}")], &[])
            .evaluate(&t)
            .is_err());
        // Math on a string is a failure too, and IsMatch on a slice.
        assert!(policy("", &[r#"attributes["http.route"] - 1 > 0"#], &[])
            .evaluate(&t)
            .is_err());
        assert!(policy("", &[r#"IsMatch(attributes["tags"], "a")"#], &[])
            .evaluate(&t)
            .is_err());
    }

    #[test]
    fn config_errors_quote_the_condition_and_carry_the_path() {
        let config = OttlConditionConfig {
            error_mode: "loud".into(),
            span: vec![r#"name == "ok""#.into(), "IsRootSpan()".into()],
            spanevent: vec!["status.code == 2".into()],
        };
        let mut errors = vec![];
        config.validate("p.ottl_condition", &mut errors);
        let text: Vec<String> = errors.iter().map(|e| e.to_string()).collect();
        assert_eq!(text.len(), 3, "{text:#?}");
        assert!(text[0].starts_with("p.ottl_condition.error_mode: unknown error_mode `loud`"));
        assert!(text[1].starts_with(
            "p.ottl_condition.span[1]: condition `IsRootSpan()`: function `IsRootSpan` is not supported"
        ));
        assert!(text[2]
            .starts_with("p.ottl_condition.spanevent[0]: condition `status.code == 2`: path"));
        let mut errors = vec![];
        OttlConditionConfig::default().validate("q", &mut errors);
        assert!(errors[0].message.contains("at least one OTTL condition"));
    }
}
