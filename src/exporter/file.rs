//! The `file` exporter (kept traces as OTLP JSON lines, or length-prefixed protobuf) and the
//! `debug` exporter (a log line per batch, per span, or the whole batch as JSON).
//!
//! Both decode the batch into the generated OTLP types to print it; they are for demos and
//! debugging, off the hot path.

use std::io::Write;
use std::sync::Mutex;

use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use prost::Message;

use super::settings::{FileFormat, FileSettings, Verbosity};
use super::SendError;
use crate::otlp::json::to_otlp_json;
use crate::otlp::EncodedBatch;

pub struct FileTransport {
    file: Mutex<std::fs::File>,
    json: bool,
}

impl FileTransport {
    pub fn new(settings: &FileSettings) -> Result<Self, String> {
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&settings.path)
            .map_err(|e| format!("cannot open {}: {e}", settings.path.display()))?;
        Ok(Self {
            file: Mutex::new(file),
            json: settings.format == FileFormat::Json,
        })
    }

    pub fn send(&self, batch: &EncodedBatch) -> Result<(), SendError> {
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

pub struct DebugTransport {
    verbosity: Verbosity,
}

impl DebugTransport {
    pub fn new(verbosity: Verbosity) -> Self {
        Self { verbosity }
    }

    pub fn send(&self, batch: &EncodedBatch) -> Result<(), SendError> {
        match self.verbosity {
            Verbosity::Basic => {
                tracing::info!(spans = batch.spans, bytes = batch.body.len(), "Traces")
            }
            Verbosity::Normal => {
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
            Verbosity::Detailed => {
                let json = to_otlp_json(&batch.body).map_err(SendError::permanent)?;
                tracing::info!(batch = %String::from_utf8_lossy(&json), "Traces");
            }
        }
        Ok(())
    }
}
