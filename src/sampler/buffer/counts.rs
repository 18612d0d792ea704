//! The buffer's live totals (traces, spans, bytes) and its metric handles.
//!
//! Totals are added once per request per shard, after the shard's lock is released (the atomics
//! are shared by every core: one update per request instead of per trace), and subtracted as
//! traces leave. A trace can leave before its addition is published (a decider or an early
//! decision can take it in between), so the totals are signed and read as at least zero: the
//! order of adding and subtracting does not matter.

use std::sync::atomic::{AtomicI64, Ordering};

use crate::telemetry::catalog::{self, BatchedHistogram};

/// Additions to the live totals not yet published.
#[derive(Debug, Default, Clone, Copy)]
pub(super) struct Added {
    pub traces: usize,
    pub spans: usize,
    pub bytes: usize,
}

/// Traces, spans and bytes buffered now.
#[derive(Debug, Default)]
pub(super) struct LiveCounts {
    traces: AtomicI64,
    spans: AtomicI64,
    bytes: AtomicI64,
}

fn read(counter: &AtomicI64) -> usize {
    counter.load(Ordering::Relaxed).max(0) as usize
}

impl LiveCounts {
    pub fn traces(&self) -> usize {
        read(&self.traces)
    }

    pub fn spans(&self) -> usize {
        read(&self.spans)
    }

    pub fn bytes(&self) -> usize {
        read(&self.bytes)
    }

    pub fn add(&self, added: Added) {
        for (counter, n) in [
            (&self.traces, added.traces),
            (&self.spans, added.spans),
            (&self.bytes, added.bytes),
        ] {
            if n > 0 {
                counter.fetch_add(n as i64, Ordering::Relaxed);
            }
        }
    }

    /// Takes one removed trace of `spans` spans and `bytes` bytes out of the totals.
    pub fn remove_trace(&self, spans: u32, bytes: usize) {
        self.traces.fetch_sub(1, Ordering::Relaxed);
        self.spans.fetch_sub(i64::from(spans), Ordering::Relaxed);
        self.bytes.fetch_sub(bytes as i64, Ordering::Relaxed);
    }
}

/// Metric handles used on every request or decision, registered once: looking a metric up by
/// name and labels on each use costs more than the update.
pub(super) struct BufferMetrics {
    pub new_traces: metrics::Counter,
    pub traces_sampled: metrics::Counter,
    pub traces_not_sampled: metrics::Counter,
    pub traces_dropped: metrics::Counter,
    pub dropped_too_early: metrics::Counter,
    pub late_span_age: metrics::Histogram,
    pub removal_age: BatchedHistogram,
    pub timer_latency: metrics::Histogram,
    pub early_release_sampled: metrics::Counter,
    pub early_release_not_sampled: metrics::Counter,
    pub spans_not_sampled: metrics::Counter,
    pub decision_lateness: BatchedHistogram,
    pub traces_on_memory: metrics::Gauge,
    pub buffered_spans: metrics::Gauge,
    pub buffered_bytes: metrics::Gauge,
    pub too_large: metrics::Counter,
    pub late_sampled: metrics::Counter,
    pub late_not_sampled: metrics::Counter,
    pub early_num_traces: metrics::Counter,
    pub early_bytes: metrics::Counter,
    pub refusals: metrics::Counter,
    pub dropped_pipeline_closed: metrics::Counter,
    pub dropped_shutdown: metrics::Counter,
}

impl BufferMetrics {
    pub fn register() -> Self {
        use catalog::*;
        Self {
            new_traces: NEW_TRACES.counter(&[]),
            traces_sampled: TRACES_DECIDED.counter(&["true", "sampled"]),
            traces_not_sampled: TRACES_DECIDED.counter(&["false", "not_sampled"]),
            traces_dropped: TRACES_DECIDED.counter(&["false", "dropped"]),
            dropped_too_early: TRACES_DROPPED_TOO_EARLY.counter(&[]),
            late_span_age: LATE_SPAN_AGE.histogram(&[]),
            removal_age: TRACE_REMOVAL_AGE.batched_histogram(&[]),
            timer_latency: DECISION_TIMER_LATENCY.histogram(&[]),
            early_release_sampled: EARLY_RELEASES_FROM_CACHE.counter(&["true"]),
            early_release_not_sampled: EARLY_RELEASES_FROM_CACHE.counter(&["false"]),
            spans_not_sampled: SPANS_NOT_SAMPLED.counter(&[]),
            decision_lateness: DECISION_LATENESS.batched_histogram(&[]),
            traces_on_memory: TRACES_ON_MEMORY.gauge(&[]),
            buffered_spans: BUFFERED_SPANS.gauge(&[]),
            buffered_bytes: BUFFERED_BYTES.gauge(&[]),
            too_large: TRACES_TOO_LARGE.counter(&[]),
            late_sampled: LATE_SPANS.counter(&["sampled"]),
            late_not_sampled: LATE_SPANS.counter(&["not_sampled"]),
            early_num_traces: TRACES_DECIDED_EARLY.counter(&["num_traces"]),
            early_bytes: TRACES_DECIDED_EARLY.counter(&["max_buffered_bytes"]),
            refusals: OVERFLOW_REFUSALS.counter(&[]),
            dropped_pipeline_closed: SPANS_DROPPED.counter(&["pipeline_closed"]),
            dropped_shutdown: SPANS_DROPPED.counter(&["shutdown"]),
        }
    }
}
