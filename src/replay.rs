//! `tailgate replay --config FILE TRACES`: runs the configured `tail_sampling` policies over
//! recorded traces and reports what they would keep, so a policy change can be tried before it
//! is deployed.
//!
//! TRACES is OTLP JSON lines (one `ExportTraceServiceRequest` per line, what the `file` exporter
//! and the Collector's file exporter write), or OTLP protobuf: one `ExportTraceServiceRequest`,
//! or a sequence of them each preceded by its length as a 4-byte big-endian integer (the
//! Collector file exporter's `format: proto`). Spans are grouped by trace across the whole file;
//! each trace is judged once, whole, in order of first appearance.
//!
//! What differs from a live sampler: there is no clock. `rate_limiting`, `bytes_limiting` and the
//! composite's rate allocation count per second of the sampler's own clock, and replay runs in
//! well under a second, so they see every trace of the file in the same second.

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;

use crate::config::{Role, Settings};
use crate::otlp::group::group_by_trace;
use crate::otlp::json::json_to_protobuf;
use crate::otlp::{parse_export_request, Chunk, Origin, TraceId};
use crate::policy::{FinalDecision, PolicySet, TraceView};

/// What the policies did with the traces of a file.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Report {
    pub traces: usize,
    pub sampled: usize,
    /// Each policy's own answers, in evaluation order: (name, sampled, not sampled).
    pub policies: Vec<(String, usize, usize)>,
    /// The kept traces' IDs, in hex.
    pub kept: Vec<String>,
}

impl Report {
    /// `{"traces": N, "sampled": N, "policies": {"NAME": {"sampled": N, "not_sampled": N}}}`.
    pub fn to_json(&self) -> String {
        let mut policies = serde_json::Map::new();
        for (name, sampled, not_sampled) in &self.policies {
            policies.insert(
                name.clone(),
                serde_json::json!({"sampled": sampled, "not_sampled": not_sampled}),
            );
        }
        serde_json::json!({
            "traces": self.traces,
            "sampled": self.sampled,
            "policies": policies,
        })
        .to_string()
    }

    /// A table of the policies, the keep rate, and the kept traces' IDs.
    pub fn to_text(&self) -> String {
        use std::fmt::Write;
        let mut out = String::new();
        let rate = if self.traces == 0 {
            0.0
        } else {
            100.0 * self.sampled as f64 / self.traces as f64
        };
        let _ = writeln!(
            out,
            "traces: {}  sampled: {}  keep rate: {rate:.1}%",
            self.traces, self.sampled
        );
        let width = self
            .policies
            .iter()
            .map(|(name, _, _)| name.len())
            .max()
            .unwrap_or(6)
            .max(6);
        let _ = writeln!(
            out,
            "{:width$}  {:>8}  {:>11}",
            "policy", "sampled", "not_sampled"
        );
        for (name, sampled, not_sampled) in &self.policies {
            let _ = writeln!(out, "{name:width$}  {sampled:>8}  {not_sampled:>11}");
        }
        let _ = writeln!(out, "kept traces:");
        for id in &self.kept {
            let _ = writeln!(out, "{id}");
        }
        out
    }
}

/// Runs the policies of `settings` over the traces in `path`.
pub fn run(settings: &Settings, path: &Path) -> Result<Report, String> {
    let Role::Sampler {
        sampler: Some(sampler),
        ..
    } = &settings.role
    else {
        return Err("the config has no tail_sampling processor in its traces pipeline".into());
    };
    let policies = PolicySet::new(&sampler.policies, sampler.sample_on_first_match);
    let data = std::fs::read(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let requests = read_requests(&data).map_err(|e| format!("{}: {e}", path.display()))?;
    Ok(judge(&policies, &requests))
}

/// The encoded requests in a file (see the module docs for the forms read).
pub fn read_requests(data: &[u8]) -> Result<Vec<Vec<u8>>, String> {
    let text_start = data.iter().find(|b| !b.is_ascii_whitespace());
    if text_start == Some(&b'{') {
        let mut requests = Vec::new();
        for (n, line) in data.split(|&b| b == b'\n').enumerate() {
            if line.iter().all(u8::is_ascii_whitespace) {
                continue;
            }
            let body = json_to_protobuf(line).map_err(|e| format!("line {}: {e}", n + 1))?;
            requests.push(body.to_vec());
        }
        return Ok(requests);
    }
    if let Some(requests) = length_prefixed(data) {
        return Ok(requests);
    }
    parse_export_request(data)
        .map(|_| vec![data.to_vec()])
        .map_err(|e| format!("neither OTLP JSON lines nor OTLP protobuf: {e}"))
}

/// A sequence of 4-byte big-endian lengths each followed by a valid request, if that is what
/// `data` is exactly.
fn length_prefixed(data: &[u8]) -> Option<Vec<Vec<u8>>> {
    let mut requests = Vec::new();
    let mut rest = data;
    while !rest.is_empty() {
        let len = u32::from_be_bytes(rest.get(..4)?.try_into().ok()?) as usize;
        let body = rest.get(4..4 + len)?;
        parse_export_request(body).ok()?;
        requests.push(body.to_vec());
        rest = &rest[4 + len..];
    }
    (!requests.is_empty()).then_some(requests)
}

/// Groups the requests' spans by trace and judges each trace.
pub fn judge(policies: &PolicySet, requests: &[Vec<u8>]) -> Report {
    let mut order: Vec<TraceId> = Vec::new();
    let mut traces: HashMap<TraceId, Vec<Chunk>> = HashMap::new();
    for body in requests {
        let Ok(parsed) = parse_export_request(body) else {
            continue; // read_requests validated every request
        };
        let origins: Vec<Arc<Origin>> = parsed.origins.into_iter().map(Arc::new).collect();
        for group in group_by_trace(&parsed.spans, &origins, body) {
            traces
                .entry(group.id)
                .or_insert_with(|| {
                    order.push(group.id);
                    Vec::new()
                })
                .extend(group.chunks);
        }
    }
    let mut report = Report {
        traces: order.len(),
        policies: Vec::new(),
        ..Report::default()
    };
    let mut counts: Vec<(String, usize, usize)> = Vec::new();
    for id in order {
        let chunks = &traces[&id];
        let view = TraceView::from_chunks(id, chunks);
        for (i, (name, answer)) in policies.answers(&view).into_iter().enumerate() {
            if counts.len() <= i {
                counts.push((name.to_string(), 0, 0));
            }
            match answer {
                Some(true) => counts[i].1 += 1,
                _ => counts[i].2 += 1,
            }
        }
        if policies.decide(&view) == FinalDecision::Sampled {
            report.sampled += 1;
            report
                .kept
                .push(id.iter().map(|b| format!("{b:02x}")).collect());
        }
    }
    report.policies = counts;
    report
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::PolicyConfig;

    fn policies(yaml: &str) -> PolicySet {
        let configs: Vec<PolicyConfig> = serde_yaml::from_str(yaml).unwrap();
        PolicySet::new(&configs, false)
    }

    /// One JSON line with a span of each `(trace byte, status code)`.
    fn line(spans: &[(u8, u8)]) -> String {
        let spans: Vec<String> = spans
            .iter()
            .enumerate()
            .map(|(i, &(t, code))| {
                format!(
                    r#"{{"traceId":"{}","spanId":"{:016x}","name":"s","startTimeUnixNano":"1","endTimeUnixNano":"2","status":{{"code":{code}}}}}"#,
                    format!("{t:02x}").repeat(16),
                    i + 1
                )
            })
            .collect();
        format!(
            r#"{{"resourceSpans":[{{"scopeSpans":[{{"spans":[{}]}}]}}]}}"#,
            spans.join(",")
        )
    }

    #[test]
    fn traces_spread_over_lines_are_judged_whole() {
        // Trace 1's error span is on the second line: the trace is judged whole and kept.
        let file = format!("{}\n{}\n", line(&[(1, 0), (2, 0)]), line(&[(1, 2), (3, 1)]));
        let requests = read_requests(file.as_bytes()).unwrap();
        let set = policies(
            "[{name: errors, type: status_code, status_code: {status_codes: [ERROR]}},
              {name: ok, type: status_code, status_code: {status_codes: [OK]}}]",
        );
        let report = judge(&set, &requests);
        assert_eq!(report.traces, 3);
        assert_eq!(report.sampled, 2);
        assert_eq!(
            report.policies,
            vec![("errors".to_string(), 1, 2), ("ok".to_string(), 1, 2)]
        );
        assert_eq!(report.kept, vec!["01".repeat(16), "03".repeat(16)]);
        assert_eq!(
            report.to_json(),
            r#"{"policies":{"errors":{"not_sampled":2,"sampled":1},"ok":{"not_sampled":2,"sampled":1}},"sampled":2,"traces":3}"#
        );
    }

    #[test]
    fn length_prefixed_protobuf_and_a_single_message_are_read() {
        let one = json_to_protobuf(line(&[(1, 2)]).as_bytes()).unwrap();
        let two = json_to_protobuf(line(&[(2, 0)]).as_bytes()).unwrap();
        let mut prefixed = Vec::new();
        for body in [&one, &two] {
            prefixed.extend_from_slice(&(body.len() as u32).to_be_bytes());
            prefixed.extend_from_slice(body);
        }
        assert_eq!(read_requests(&prefixed).unwrap().len(), 2);
        assert_eq!(read_requests(&one).unwrap(), vec![one.to_vec()]);
        assert!(read_requests(b"\x0a\xff garbage").is_err());
        let bad_line = format!("{}\n{{\"resourceSpans\": 7}}\n", line(&[(1, 0)]));
        let error = read_requests(bad_line.as_bytes()).unwrap_err();
        assert!(error.starts_with("line 2:"), "{error}");
    }
}
