//! The `file` exporter (kept traces as OTLP JSON lines, or length-prefixed protobuf) and the
//! `debug` exporter (a log line per batch, per span, or the whole batch as JSON).
//!
//! Both decode the batch into the generated OTLP types to print it; they are for demos and
//! debugging, off the hot path.

use std::io::Write;
use std::sync::Mutex;

use prost::Message;
use serde::Deserialize;

use super::{ExportBatch, SendError};
use crate::config::ConfigError;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;

/// Renders an encoded request as OTLP JSON (hex IDs, camelCase fields).
pub fn to_otlp_json(body: &[u8]) -> Result<Vec<u8>, String> {
    let request = ExportTraceServiceRequest::decode(body).map_err(|e| e.to_string())?;
    serde_json::to_vec(&request).map_err(|e| e.to_string())
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct FileExporterConfig {
    pub path: String,
    /// `json` (default, one request per line) or `proto` (4-byte big-endian length + message).
    pub format: String,
}

impl Default for FileExporterConfig {
    fn default() -> Self {
        Self {
            path: String::new(),
            format: "json".into(),
        }
    }
}

impl FileExporterConfig {
    pub fn validate(&self, path: &str, errors: &mut Vec<ConfigError>) {
        if self.path.is_empty() {
            errors.push(ConfigError::new(format!("{path}.path"), "path is required"));
        }
        if !matches!(self.format.as_str(), "json" | "proto") {
            errors.push(ConfigError::new(
                format!("{path}.format"),
                format!("unsupported format `{}`; use json or proto", self.format),
            ));
        }
    }
}

pub struct FileTransport {
    file: Mutex<std::fs::File>,
    json: bool,
}

impl FileTransport {
    pub fn new(config: &FileExporterConfig) -> Result<Self, String> {
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&config.path)
            .map_err(|e| format!("cannot open {}: {e}", config.path))?;
        Ok(Self {
            file: Mutex::new(file),
            json: config.format == "json",
        })
    }

    pub fn send(&self, batch: &ExportBatch) -> Result<(), SendError> {
        let mut out = Vec::with_capacity(batch.body.len() * 2);
        if self.json {
            out = to_otlp_json(&batch.body).map_err(SendError::permanent)?;
            out.push(b'\n');
        } else {
            out.extend_from_slice(&(batch.body.len() as u32).to_be_bytes());
            out.extend_from_slice(&batch.body);
        }
        let mut file = self.file.lock().unwrap_or_else(|p| p.into_inner());
        file.write_all(&out)
            .and_then(|_| file.flush())
            .map_err(|e| SendError::permanent(format!("write failed: {e}")))
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DebugExporterConfig {
    /// `basic` (a line per batch), `normal` (a line per span) or `detailed` (the batch as JSON).
    pub verbosity: String,
    pub sampling_initial: u64,
    pub sampling_thereafter: u64,
}

impl Default for DebugExporterConfig {
    fn default() -> Self {
        Self {
            verbosity: "basic".into(),
            sampling_initial: 2,
            sampling_thereafter: 1,
        }
    }
}

impl DebugExporterConfig {
    pub fn validate(&self, path: &str, errors: &mut Vec<ConfigError>) {
        if !matches!(self.verbosity.as_str(), "basic" | "normal" | "detailed") {
            errors.push(ConfigError::new(
                format!("{path}.verbosity"),
                format!(
                    "unknown verbosity `{}`; use basic, normal or detailed",
                    self.verbosity
                ),
            ));
        }
    }
}

pub struct DebugTransport {
    verbosity: String,
}

impl DebugTransport {
    pub fn new(config: &DebugExporterConfig) -> Self {
        Self {
            verbosity: config.verbosity.clone(),
        }
    }

    pub fn send(&self, batch: &ExportBatch) -> Result<(), SendError> {
        match self.verbosity.as_str() {
            "basic" => tracing::info!(spans = batch.spans, bytes = batch.body.len(), "Traces"),
            "normal" => {
                let request = ExportTraceServiceRequest::decode(&batch.body[..])
                    .map_err(|e| SendError::permanent(e.to_string()))?;
                for rs in &request.resource_spans {
                    for ss in &rs.scope_spans {
                        for span in &ss.spans {
                            let trace_id: String =
                                span.trace_id.iter().map(|b| format!("{b:02x}")).collect();
                            tracing::info!(trace_id, name = %span.name, status = span.status.as_ref().map_or(0, |s| s.code), "span");
                        }
                    }
                }
            }
            _ => {
                let json = to_otlp_json(&batch.body).map_err(SendError::permanent)?;
                tracing::info!(batch = %String::from_utf8_lossy(&json), "Traces");
            }
        }
        Ok(())
    }
}
