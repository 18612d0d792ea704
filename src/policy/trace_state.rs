//! `trace_state`: keeps a trace when any span's W3C `tracestate` has `key` set to one of `values`.
//!
//! Matches the Collector, which parses each span's trace state with OpenTelemetry-Go's strict
//! `ParseTraceState`: a span whose trace state is not valid W3C (bad key or value characters,
//! duplicate keys, more than 32 members, a member without `=`) matches nothing. Configured values
//! that are empty, or for which `key=value` would exceed 256 characters, are ignored.

use std::collections::HashSet;

use serde::Deserialize;

use super::{Decision, Policy, PolicyError, TraceView};
use crate::otlp::attributes::SpanFields;

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TraceStateConfig {
    #[serde(default)]
    pub key: String,
    #[serde(default)]
    pub values: Vec<String>,
}

impl TraceStateConfig {
    pub fn build(&self) -> TraceStatePolicy {
        TraceStatePolicy {
            key: self.key.clone().into_bytes(),
            values: self
                .values
                .iter()
                .filter(|v| !v.is_empty() && self.key.len() + v.len() < 256)
                .map(|v| v.clone().into_bytes())
                .collect(),
        }
    }
}

pub struct TraceStatePolicy {
    key: Vec<u8>,
    values: HashSet<Vec<u8>>,
}

impl Policy for TraceStatePolicy {
    fn evaluate(&self, trace: &TraceView<'_>) -> Result<Decision, PolicyError> {
        for span in &trace.spans {
            let raw = SpanFields::read(span.bytes)?.trace_state;
            if let Ok(Some(value)) = get(raw, &self.key) {
                if self.values.contains(value) {
                    return Ok(Decision::Sampled);
                }
            }
        }
        Ok(Decision::NotSampled)
    }
}

/// Most list members a W3C trace state may hold.
const MAX_MEMBERS: usize = 32;

/// The value of `key` in a W3C trace state: `Ok(None)` when absent, `Err(())` when the trace
/// state is not valid (then the Collector's policy and OTTL's `trace_state["k"]` see nothing).
/// An empty trace state is valid and empty.
pub fn get<'a>(raw: &'a [u8], key: &[u8]) -> Result<Option<&'a [u8]>, ()> {
    let mut keys: [&[u8]; MAX_MEMBERS] = [b""; MAX_MEMBERS];
    let mut count = 0;
    let mut found = None;
    for member in raw.split(|&b| b == b',') {
        if member.is_empty() {
            continue;
        }
        let eq = member.iter().position(|&b| b == b'=').ok_or(())?;
        let k = trim_start(&member[..eq]);
        let v = trim_end(&member[eq + 1..]);
        if !valid_key(k) || !valid_value(v) {
            return Err(());
        }
        if keys[..count].contains(&k) || count == MAX_MEMBERS {
            return Err(());
        }
        keys[count] = k;
        count += 1;
        if k == key {
            found = Some(v);
        }
    }
    Ok(found)
}

fn trim_start(s: &[u8]) -> &[u8] {
    let skip = s.iter().take_while(|&&b| b == b' ' || b == b'\t').count();
    &s[skip..]
}

fn trim_end(s: &[u8]) -> &[u8] {
    let keep = s.len()
        - s.iter()
            .rev()
            .take_while(|&&b| b == b' ' || b == b'\t')
            .count();
    &s[..keep]
}

fn key_rest_ok(rest: &[u8]) -> bool {
    rest.iter()
        .all(|&b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"_-*/".contains(&b))
}

/// `simple-key = lcalpha 0*255(...)` or `tenant-id "@" system-id`.
fn valid_key(key: &[u8]) -> bool {
    match key.iter().position(|&b| b == b'@') {
        None => {
            key.first().is_some_and(u8::is_ascii_lowercase)
                && key.len() <= 256
                && key_rest_ok(&key[1..])
        }
        Some(at) => {
            let (tenant, system) = (&key[..at], &key[at + 1..]);
            tenant
                .first()
                .is_some_and(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
                && tenant.len() <= 241
                && key_rest_ok(&tenant[1..])
                && system.first().is_some_and(u8::is_ascii_lowercase)
                && system.len() <= 14
                && key_rest_ok(&system[1..])
        }
    }
}

/// `value = 0*255(chr) nblk-chr`, printable ASCII without `,` and `=`, not ending in a space.
fn valid_value(value: &[u8]) -> bool {
    let Some((&last, rest)) = value.split_last() else {
        return false;
    };
    let chr = |b: u8| (0x20..=0x7e).contains(&b) && b != b',' && b != b'=';
    value.len() <= 256 && rest.iter().all(|&b| chr(b)) && chr(last) && last != b' '
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::testing::*;
    use Decision::*;

    #[test]
    fn multi_tenant_keys_check_every_part() {
        assert!(valid_key(b"tenant@system"));
        assert!(valid_key(b"1tenant@sys"), "a tenant may start with a digit");
        // A system ID of at most 14 characters (a missed mutant let any length through).
        assert!(valid_key(b"t@abcdefghijklmn"));
        assert!(!valid_key(b"t@abcdefghijklmno"), "15 characters");
        assert!(!valid_key(b"T@sys"), "an upper-case tenant");
        assert!(!valid_key(b"t@Sys"), "an upper-case system");
        assert!(!valid_key(b"t@"), "no system");
    }

    #[test]
    fn parsing_follows_the_w3c_rules_as_opentelemetry_go_applies_them() {
        fn ok<'a>(raw: &'a str, key: &str) -> Result<Option<&'a [u8]>, ()> {
            get(raw.as_bytes(), key.as_bytes())
        }
        assert_eq!(ok("", "a"), Ok(None));
        assert_eq!(ok("a=1,b=2", "b"), Ok(Some(&b"2"[..])));
        assert_eq!(ok("a=1 , b=2", "b"), Ok(Some(&b"2"[..])));
        assert_eq!(ok("a=1,,b=2", "a"), Ok(Some(&b"1"[..])));
        assert_eq!(ok("tenant@vendor=x", "tenant@vendor"), Ok(Some(&b"x"[..])));
        assert_eq!(ok("a= x", "a"), Ok(Some(&b" x"[..])));
        assert_eq!(ok("a=1", "b"), Ok(None));
        for bad in [
            "A=1", "a", "a=1,a=2", "a=", "a=x,y", "1a=x", "a=b=c", "a =1", "a=\u{e9}",
        ] {
            assert_eq!(ok(bad, "a"), Err(()), "{bad}");
        }
        let many: Vec<String> = (0..33).map(|i| format!("k{i}=v")).collect();
        assert_eq!(ok(&many.join(","), "k0"), Err(()));
        assert_eq!(ok(&many[..32].join(","), "k0"), Ok(Some(&b"v"[..])));
    }

    fn decide(values: &[&str], states: &[&str]) -> Decision {
        let t = trace(
            states
                .iter()
                .map(|s| SpanBuilder::new().trace_state(s).build())
                .collect(),
        );
        TraceStateConfig {
            key: "team".into(),
            values: values.iter().map(|v| v.to_string()).collect(),
        }
        .build()
        .evaluate(&t)
        .unwrap()
    }

    #[test]
    fn a_listed_value_for_the_key_on_any_span_keeps_the_trace() {
        let cases = [
            (&["core"][..], &["team=core"][..], Sampled),
            (&["core", "edge"], &["x=1", "vendor=a,team=edge"], Sampled),
            (&["core"], &["team=other"], NotSampled),
            (&["core"], &["other=core"], NotSampled),
            (&["core"], &[""], NotSampled),
            // An invalid trace state matches nothing, even if the key is there.
            (&["core"], &["team=core,team=core"], NotSampled),
            (&["core"], &["Bad=1,team=core"], NotSampled),
        ];
        for (values, states, want) in cases {
            assert_eq!(decide(values, states), want, "{values:?} {states:?}");
        }
    }

    #[test]
    fn empty_and_overlong_configured_values_are_ignored() {
        let long = "v".repeat(252);
        assert_eq!(decide(&[&long], &[&format!("team={long}")]), NotSampled);
        let fits = "v".repeat(251);
        assert_eq!(decide(&[&fits], &[&format!("team={fits}")]), Sampled);
    }
}
