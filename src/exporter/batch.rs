//! `processors.batch`: collects kept spans into export requests of about `send_batch_size` spans,
//! or whatever arrived within `timeout`, grouped by resource and scope.
//!
//! Grouping is by the bytes of the resource and scope encodings, so spans of one service sent in
//! different requests (hence different `Origin` copies) still share one `ResourceSpans`.

use std::collections::HashMap;
use std::time::Duration;

use serde::Deserialize;
use tokio::sync::mpsc;
use tokio::time::Instant;

use super::{ExportBatch, Fanout};
use crate::buffer::{Chunk, Kept};
use crate::config::{duration, ConfigError};
use crate::wire::{self, ResourceGroup, ScopeGroup};

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct BatchConfig {
    #[serde(with = "duration::go")]
    pub timeout: Duration,
    pub send_batch_size: usize,
    /// Upper bound on a batch's spans; 0 means no bound.
    pub send_batch_max_size: usize,
}

impl Default for BatchConfig {
    fn default() -> Self {
        Self {
            timeout: Duration::from_millis(200),
            send_batch_size: 8192,
            send_batch_max_size: 0,
        }
    }
}

impl BatchConfig {
    pub fn validate(&self, path: &str, errors: &mut Vec<ConfigError>) {
        if self.send_batch_max_size != 0 && self.send_batch_max_size < self.send_batch_size {
            errors.push(ConfigError::new(
                format!("{path}.send_batch_max_size"),
                format!(
                    "send_batch_max_size ({}) must be at least send_batch_size ({})",
                    self.send_batch_max_size, self.send_batch_size
                ),
            ));
        }
    }
}

/// Encodes chunks as one `ExportTraceServiceRequest`, grouped by resource then scope.
pub fn encode_chunks(chunks: &[Chunk]) -> ExportBatch {
    type ResourceKey<'a> = (Option<&'a [u8]>, &'a [u8]);
    let mut resources: Vec<ResourceGroup<'_>> = Vec::new();
    let mut resource_index: HashMap<ResourceKey<'_>, usize> = HashMap::new();
    type ScopeKey<'a> = (usize, Option<&'a [u8]>, &'a [u8]);
    let mut scope_index: HashMap<ScopeKey<'_>, usize> = HashMap::new();
    let mut spans = 0;
    for chunk in chunks {
        spans += chunk.spans as usize;
        let o = &chunk.origin;
        let rkey = (o.resource.as_deref(), &o.resource_schema_url[..]);
        let r = *resource_index.entry(rkey).or_insert_with(|| {
            resources.push(ResourceGroup {
                resource: rkey.0,
                resource_schema_url: rkey.1,
                scopes: Vec::new(),
            });
            resources.len() - 1
        });
        let skey = (r, o.scope.as_deref(), &o.scope_schema_url[..]);
        let s = *scope_index.entry(skey).or_insert_with(|| {
            resources[r].scopes.push(ScopeGroup {
                scope: skey.1,
                scope_schema_url: skey.2,
                runs: Vec::new(),
            });
            resources[r].scopes.len() - 1
        });
        resources[r].scopes[s].runs.push(&chunk.run);
    }
    ExportBatch {
        body: wire::encode_export_request(&resources),
        spans,
    }
}

/// Accumulates kept chunks and flushes them to the exporters.
pub struct Batcher {
    config: Option<BatchConfig>,
}

impl Batcher {
    /// `None`: no `batch` processor, every arrival is sent as it comes.
    pub fn new(config: Option<BatchConfig>) -> Self {
        Self { config }
    }

    /// Runs until `input` closes, flushing what is pending at the end; returns the exporters
    /// so the caller can drain them.
    pub async fn run(self, mut input: mpsc::Receiver<Kept>, fanout: Fanout) -> Fanout {
        let Some(config) = self.config else {
            while let Some(kept) = input.recv().await {
                fanout.send(encode_chunks(&kept.chunks)).await;
            }
            return fanout;
        };
        let limit = if config.send_batch_max_size > 0 {
            config.send_batch_max_size
        } else {
            usize::MAX
        };
        let threshold = config.send_batch_size.max(1).min(limit);
        let mut pending: Vec<Chunk> = Vec::new();
        let mut pending_spans = 0usize;
        let mut flush_at: Option<Instant> = None;
        loop {
            let received = tokio::select! {
                kept = input.recv() => kept,
                _ = tokio::time::sleep_until(flush_at.unwrap_or_else(Instant::now)), if flush_at.is_some() => {
                    flush(&fanout, &mut pending, &mut pending_spans).await;
                    flush_at = None;
                    continue;
                }
            };
            let Some(kept) = received else { break };
            for chunk in kept.chunks {
                if pending_spans > 0 && pending_spans + chunk.spans as usize > limit {
                    flush(&fanout, &mut pending, &mut pending_spans).await;
                }
                pending_spans += chunk.spans as usize;
                pending.push(chunk);
                if pending_spans >= threshold {
                    flush(&fanout, &mut pending, &mut pending_spans).await;
                }
            }
            if pending_spans == 0 {
                flush_at = None;
            } else if flush_at.is_none() {
                flush_at = Some(Instant::now() + config.timeout);
            }
        }
        flush(&fanout, &mut pending, &mut pending_spans).await;
        fanout
    }
}

async fn flush(fanout: &Fanout, pending: &mut Vec<Chunk>, pending_spans: &mut usize) {
    if pending.is_empty() {
        return;
    }
    let batch = encode_chunks(pending);
    pending.clear();
    *pending_spans = 0;
    fanout.send(batch).await;
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::Origin;
    use bytes::Bytes;
    use std::sync::Arc;

    fn chunk(resource: &'static [u8], scope: &'static [u8], span: &[u8]) -> Chunk {
        let origin = Arc::new(Origin {
            resource: Some(Bytes::from_static(resource)),
            scope: Some(Bytes::from_static(scope)),
            ..Default::default()
        });
        let mut run = Vec::new();
        wire::put_framed_span(&mut run, span);
        Chunk {
            origin,
            run: run.into(),
            spans: 1,
        }
    }

    #[test]
    fn chunks_with_equal_resources_share_one_resource_spans() {
        use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
        use prost::Message;
        // Two copies of the same resource (as from two requests) and a second scope.
        let a = b"\x0a\x08\x0a\x01k\x12\x03\x0a\x01v";
        let spans: Vec<Vec<u8>> = (1u8..=3)
            .map(|i| {
                crate::views::Span {
                    trace_id: Bytes::from(vec![i; 16]),
                    span_id: Bytes::from(vec![i; 8]),
                    ..Default::default()
                }
                .encode_to_vec()
            })
            .collect();
        let chunks = vec![
            chunk(a, b"\x0a\x01x", &spans[0]),
            chunk(b"", b"\x0a\x01x", &spans[1]),
            chunk(a, b"\x0a\x01y", &spans[2]),
        ];
        let batch = encode_chunks(&chunks);
        assert_eq!(batch.spans, 3);
        let request = ExportTraceServiceRequest::decode(batch.body).unwrap();
        assert_eq!(request.resource_spans.len(), 2);
        let first = &request.resource_spans[0];
        assert_eq!(first.scope_spans.len(), 2);
        assert_eq!(first.scope_spans[0].spans[0].trace_id, vec![1; 16]);
        assert_eq!(first.scope_spans[1].spans[0].trace_id, vec![3; 16]);
    }
}
