//! `processors.batch`: collects kept spans into export requests of about `send_batch_size` spans,
//! or whatever arrived within `timeout`, grouped by resource and scope
//! ([`crate::otlp::encode_chunks`]).
//!
//! The batcher reads the pipeline's input channel until told to stop; then it closes the channel
//! (a later send fails, and the sender counts the drop), takes what was already queued, flushes,
//! and returns.

use std::time::Duration;

use serde::Deserialize;
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::Fanout;
use crate::otlp::{encode_chunks, Chunk, SpanBatch};
use crate::yaml::{duration, ConfigError};

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct BatchConfig {
    #[serde(with = "duration::go")]
    pub timeout: Duration,
    pub send_batch_size: usize,
    /// Upper bound on a batch's spans; 0 means no bound.
    pub send_batch_max_size: usize,
    /// tailgate extension: upper bound on a batch's encoded size in bytes, so export requests
    /// stay under the backends' receive limits (Tempo's, Jaeger's and the Collector's are 4 MiB
    /// by default) whatever the spans weigh. 0 means no bound.
    pub send_batch_max_bytes: usize,
}

/// `send_batch_max_bytes` by default, and the bound without a `batch` processor: under 4 MiB
/// with room for the request's resource and scope framing.
pub const DEFAULT_MAX_BATCH_BYTES: usize = 4_000_000;

/// What a chunk adds to a request at most: its spans and its resource and scope.
fn chunk_bytes(chunk: &Chunk) -> usize {
    chunk.run.len() + chunk.origin.heap_bytes() + 16
}

impl Default for BatchConfig {
    fn default() -> Self {
        Self {
            timeout: Duration::from_millis(200),
            send_batch_size: 8192,
            send_batch_max_size: 0,
            send_batch_max_bytes: DEFAULT_MAX_BATCH_BYTES,
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

/// Accumulates kept chunks and flushes them to the exporters.
pub struct Batcher {
    config: Option<BatchConfig>,
}

impl Batcher {
    /// `None`: no `batch` processor, every arrival is sent as it comes.
    pub fn new(config: Option<BatchConfig>) -> Self {
        Self { config }
    }

    /// Runs until `stop` is cancelled, then takes what is still queued in `input`, flushes it
    /// and returns the exporters so the caller can drain them.
    pub async fn run(
        self,
        mut input: mpsc::Receiver<SpanBatch>,
        fanout: Fanout,
        stop: CancellationToken,
    ) -> Fanout {
        let Some(config) = self.config else {
            while let Some(kept) = next(&mut input, &stop).await {
                // As it comes, but never one request over the byte bound.
                let mut part: Vec<Chunk> = Vec::new();
                let mut part_bytes = 0;
                for chunk in kept.chunks {
                    let bytes = chunk_bytes(&chunk);
                    if !part.is_empty() && part_bytes + bytes > DEFAULT_MAX_BATCH_BYTES {
                        fanout.send(encode_chunks(&part)).await;
                        part.clear();
                        part_bytes = 0;
                    }
                    part_bytes += bytes;
                    part.push(chunk);
                }
                if !part.is_empty() {
                    fanout.send(encode_chunks(&part)).await;
                }
            }
            return fanout;
        };
        let max_bytes = if config.send_batch_max_bytes > 0 {
            config.send_batch_max_bytes
        } else {
            usize::MAX
        };
        let limit = if config.send_batch_max_size > 0 {
            config.send_batch_max_size
        } else {
            usize::MAX
        };
        let threshold = config.send_batch_size.max(1).min(limit);
        let mut pending: Vec<Chunk> = Vec::new();
        let mut pending_spans = 0usize;
        let mut pending_bytes = 0usize;
        let mut flush_at: Option<Instant> = None;
        loop {
            let received = tokio::select! {
                kept = next(&mut input, &stop) => kept,
                _ = tokio::time::sleep_until(flush_at.unwrap_or_else(Instant::now)), if flush_at.is_some() => {
                    flush(&fanout, &mut pending, &mut pending_spans).await;
                    pending_bytes = 0;
                    flush_at = None;
                    continue;
                }
            };
            let Some(kept) = received else { break };
            for chunk in kept.chunks {
                let bytes = chunk_bytes(&chunk);
                if pending_spans > 0
                    && (pending_spans + chunk.spans as usize > limit
                        || pending_bytes + bytes > max_bytes)
                {
                    flush(&fanout, &mut pending, &mut pending_spans).await;
                    pending_bytes = 0;
                }
                pending_spans += chunk.spans as usize;
                pending_bytes += bytes;
                pending.push(chunk);
                if pending_spans >= threshold {
                    flush(&fanout, &mut pending, &mut pending_spans).await;
                    pending_bytes = 0;
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

/// The next batch from the pipeline's input; once `stop` is cancelled the input is closed (later
/// senders are refused) and what was queued before is still returned, then `None`.
async fn next(
    input: &mut mpsc::Receiver<SpanBatch>,
    stop: &CancellationToken,
) -> Option<SpanBatch> {
    tokio::select! {
        biased;
        kept = input.recv() => kept,
        _ = stop.cancelled() => {
            input.close();
            input.recv().await
        }
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
