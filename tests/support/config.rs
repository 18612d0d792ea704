//! Collector-format YAML for a sampler tier under test.
//!
//! [`SamplerConfig`] renders the sampler pipeline docs/ARCHITECTURE.md describes
//! (`receivers: [otlp]` → `processors: [tail_sampling, (batch)]` → one exporter) with every
//! listener on a loopback port from [`SamplerPorts`], the `health_check` extension (which
//! [`super::Gateway`] polls for readiness) and the Prometheus metrics endpoint as
//! `service.telemetry.metrics.address` (the Collector's older form, which it still accepts, and the
//! one tailgate parses; [`super::Gateway`] also understands the newer `readers` form). The exporter
//! points at a
//! [`RecordingBackend`]: `otlp` with `tls.insecure` for a gRPC backend, `otlphttp` for an HTTP
//! one, exactly as a user would write them for Tempo or Jaeger.
//!
//! YAML fragments (policies, extra keys) may be written at any indentation: they are dedented and
//! re-indented to fit.

use super::backend::{Protocol, RecordingBackend};
use super::free_port;

/// The loopback ports a sampler-tier gateway listens on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SamplerPorts {
    /// OTLP/gRPC receiver.
    pub grpc: u16,
    /// OTLP/HTTP receiver.
    pub http: u16,
    /// `health_check` extension.
    pub health: u16,
    /// Prometheus metrics.
    pub metrics: u16,
}

impl SamplerPorts {
    /// Four ports that were free a moment ago (see [`free_port`]).
    pub fn free() -> Self {
        SamplerPorts {
            grpc: free_port(),
            http: free_port(),
            health: free_port(),
            metrics: free_port(),
        }
    }

    /// `http://127.0.0.1:<grpc>`: where an OTLP/gRPC client sends spans.
    pub fn grpc_endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.grpc)
    }

    /// `http://127.0.0.1:<http>`: the OTLP/HTTP base URL (append `/v1/traces`).
    pub fn http_endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.http)
    }
}

/// A sampler-tier config; adjust the public fields, then [`SamplerConfig::render`].
#[derive(Debug, Clone)]
pub struct SamplerConfig {
    pub ports: SamplerPorts,
    /// `processors.tail_sampling.decision_wait`, in the Collector's duration syntax. Default `1s`.
    pub decision_wait: String,
    /// `processors.tail_sampling.policies`: a YAML sequence (`- name: ...` items).
    pub policies: String,
    /// More keys for the `tail_sampling` block (`num_traces: 10`, ...). Default empty.
    pub tail_sampling_extra: String,
    /// Whether the pipeline has a `batch` processor after `tail_sampling`. Default `false`.
    pub batch: bool,
    /// The exporter's component ID. Default `otlp/backend` or `otlphttp/backend`.
    pub exporter_id: String,
    /// The exporter's `endpoint` value.
    pub exporter_endpoint: String,
    /// The exporter's other keys (`tls` for gRPC by default; add `headers`, `retry_on_failure`,
    /// `sending_queue`, `compression`, ...), newline-terminated so more keys can be appended with
    /// `+=`. Replace it rather than adding a second `tls`.
    pub exporter_extra: String,
    /// More keys for the `service` block (e.g. `shutdown_grace_period: 5s`). Default empty.
    pub service_extra: String,
}

impl SamplerConfig {
    /// A sampler on `ports` applying `policies`, exporting to `backend`.
    pub fn new(ports: SamplerPorts, policies: &str, backend: &RecordingBackend) -> Self {
        let (exporter_id, exporter_endpoint, exporter_extra) = match backend.protocol() {
            Protocol::Grpc => (
                "otlp/backend",
                backend.addr().to_string(),
                "tls:\n  insecure: true\n",
            ),
            Protocol::Http => ("otlphttp/backend", backend.endpoint(), ""),
        };
        SamplerConfig {
            ports,
            decision_wait: "1s".to_string(),
            policies: policies.to_string(),
            tail_sampling_extra: String::new(),
            batch: false,
            exporter_id: exporter_id.to_string(),
            exporter_endpoint,
            exporter_extra: exporter_extra.to_string(),
            service_extra: String::new(),
        }
    }

    /// The config file text.
    pub fn render(&self) -> String {
        let SamplerPorts {
            grpc,
            http,
            health,
            metrics,
        } = self.ports;
        let processors = if self.batch {
            "[tail_sampling, batch]"
        } else {
            "[tail_sampling]"
        };
        let mut yaml = format!(
            "\
receivers:
  otlp:
    protocols:
      grpc:
        endpoint: 127.0.0.1:{grpc}
      http:
        endpoint: 127.0.0.1:{http}
processors:
  tail_sampling:
    decision_wait: {decision_wait}
{tail_sampling_extra}    policies:
{policies}",
            decision_wait = self.decision_wait,
            tail_sampling_extra = indent(&self.tail_sampling_extra, 4),
            policies = indent(&self.policies, 6),
        );
        if self.batch {
            yaml += "  batch:\n";
        }
        yaml += &format!(
            "\
exporters:
  {exporter_id}:
    endpoint: {endpoint}
{exporter_extra}extensions:
  health_check:
    endpoint: 127.0.0.1:{health}
service:
  extensions: [health_check]
  telemetry:
    metrics:
      address: 127.0.0.1:{metrics}
{service_extra}  pipelines:
    traces:
      receivers: [otlp]
      processors: {processors}
      exporters: [{exporter_id}]
",
            exporter_id = self.exporter_id,
            endpoint = self.exporter_endpoint,
            exporter_extra = indent(&self.exporter_extra, 4),
            service_extra = indent(&self.service_extra, 2),
        );
        yaml
    }
}

/// The YAML of a sampler on `ports` applying `policies` and exporting to `backend`, with the
/// defaults of [`SamplerConfig::new`].
pub fn sampler_config(ports: &SamplerPorts, policies: &str, backend: &RecordingBackend) -> String {
    SamplerConfig::new(*ports, policies, backend).render()
}

/// Re-indents a YAML fragment: drops blank leading/trailing lines, removes the common leading
/// indentation, then indents every non-blank line by `spaces`. Each line ends with `\n`; an empty
/// fragment stays empty.
pub fn indent(fragment: &str, spaces: usize) -> String {
    let lines: Vec<&str> = fragment.lines().collect();
    let first = lines.iter().position(|l| !l.trim().is_empty());
    let last = lines.iter().rposition(|l| !l.trim().is_empty());
    let (Some(first), Some(last)) = (first, last) else {
        return String::new();
    };
    let lines = &lines[first..=last];
    let common = lines
        .iter()
        .filter(|l| !l.trim().is_empty())
        .map(|l| l.len() - l.trim_start_matches(' ').len())
        .min()
        .unwrap_or(0);
    let pad = " ".repeat(spaces);
    lines
        .iter()
        .map(|l| {
            if l.trim().is_empty() {
                "\n".to_string()
            } else {
                format!("{pad}{}\n", &l[common..])
            }
        })
        .collect()
}
