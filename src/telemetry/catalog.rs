//! The telemetry catalog: every metric tailgate exports, declared once with its name, kind,
//! unit, labels and help text. Code registers handles through these declarations
//! ([`Metric::counter`] and friends) once, when a component is built, and updates the handles on
//! the hot path; nothing formats a metric name or a label string per request.
//!
//! Names follow the Collector's where the meaning is the same, so dashboards and alerts carry
//! over; tailgate's own carry the `tailgate_` prefix.

use metrics::{Counter, Gauge, Histogram, Label, Unit};

/// What kind of series a metric is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Counter,
    Gauge,
    Histogram,
}

/// One metric's declaration.
#[derive(Debug)]
pub struct Metric {
    pub name: &'static str,
    pub kind: Kind,
    pub unit: Unit,
    /// The label names every series of this metric carries, in order.
    pub labels: &'static [&'static str],
    pub help: &'static str,
}

impl Metric {
    fn labels(&self, values: &[&str]) -> Vec<Label> {
        debug_assert_eq!(
            values.len(),
            self.labels.len(),
            "{}: label values do not match the declared labels {:?}",
            self.name,
            self.labels
        );
        self.labels
            .iter()
            .zip(values)
            .map(|(name, value)| Label::new(*name, value.to_string()))
            .collect()
    }

    /// The counter series with these label values (in the declared order).
    pub fn counter(&'static self, values: &[&str]) -> Counter {
        debug_assert_eq!(self.kind, Kind::Counter, "{} is not a counter", self.name);
        metrics::counter!(self.name, self.labels(values))
    }

    /// The gauge series with these label values.
    pub fn gauge(&'static self, values: &[&str]) -> Gauge {
        debug_assert_eq!(self.kind, Kind::Gauge, "{} is not a gauge", self.name);
        metrics::gauge!(self.name, self.labels(values))
    }

    /// The histogram series with these label values.
    pub fn histogram(&'static self, values: &[&str]) -> Histogram {
        debug_assert_eq!(
            self.kind,
            Kind::Histogram,
            "{} is not a histogram",
            self.name
        );
        metrics::histogram!(self.name, self.labels(values))
    }
}

macro_rules! declare {
    ($($(#[$doc:meta])* $id:ident = $kind:ident $name:literal [$($label:literal),*] $unit:ident $help:literal;)*) => {
        $(
            $(#[$doc])*
            pub static $id: Metric = Metric {
                name: $name,
                kind: Kind::$kind,
                unit: Unit::$unit,
                labels: &[$($label),*],
                help: $help,
            };
        )*
        /// Every declared metric.
        pub static ALL: &[&Metric] = &[$(&$id),*];
    };
}

declare! {
    // Receivers.
    RECEIVER_ACCEPTED_SPANS = Counter "otelcol_receiver_accepted_spans" ["receiver", "transport"] Count
        "Spans the receiver accepted and handed on.";
    RECEIVER_REFUSED_SPANS = Counter "otelcol_receiver_refused_spans" ["receiver", "transport"] Count
        "Spans of valid requests the receiver refused with a retryable status (buffer full, no sampler, shutting down).";
    RECEIVER_REJECTED_REQUESTS = Counter "tailgate_receiver_rejected_requests_total" ["transport", "reason"] Count
        "Requests refused as invalid (malformed, too large, bad compression, unsupported media type or encoding).";

    // The sampler's buffer and decisions.
    NEW_TRACES = Counter "otelcol_processor_tail_sampling_new_trace_id_received" [] Count
        "Traces the buffer started holding.";
    TRACES_DECIDED = Counter "otelcol_processor_tail_sampling_global_count_traces_sampled" ["sampled"] Count
        "Traces decided, by whether they were kept.";
    POLICY_DECISIONS = Counter "otelcol_processor_tail_sampling_count_traces_sampled" ["policy", "sampled", "decision"] Count
        "Each policy's answer for each trace it evaluated.";
    POLICY_ERRORS = Counter "otelcol_processor_tail_sampling_sampling_policy_evaluation_error" [] Count
        "Policy evaluations that failed; the policy was skipped for that trace.";
    TRACES_ON_MEMORY = Gauge "otelcol_processor_tail_sampling_sampling_traces_on_memory" [] Count
        "Traces buffered awaiting their decision.";
    BUFFERED_SPANS = Gauge "tailgate_buffered_spans" [] Count
        "Spans buffered awaiting their trace's decision.";
    BUFFERED_BYTES = Gauge "tailgate_buffered_bytes" [] Bytes
        "Memory counted against max_buffered_bytes: stored span bytes, summaries and per-trace bookkeeping.";
    SPANS_NOT_SAMPLED = Counter "tailgate_spans_not_sampled_total" [] Count
        "Spans of traces decided not sampled.";
    DECISION_LATENESS = Histogram "tailgate_decision_lateness_seconds" [] Seconds
        "How long after its deadline a trace was decided.";
    TRACES_TOO_LARGE = Counter "tailgate_traces_too_large_total" [] Count
        "Traces that passed maximum_trace_size_bytes and were decided not sampled.";
    LATE_SPANS = Counter "tailgate_late_spans_total" ["decision"] Count
        "Spans that arrived after their trace was decided, by the decision they followed.";
    TRACES_DECIDED_EARLY = Counter "tailgate_traces_decided_early_total" ["reason"] Count
        "Traces decided before decision_wait because the buffer reached a limit.";
    OVERFLOW_REFUSALS = Counter "tailgate_buffer_overflow_refusals_total" [] Count
        "Requests refused because the buffer was full with block_on_overflow.";
    SPANS_DROPPED = Counter "tailgate_spans_dropped_total" ["reason"] Count
        "Spans dropped outside the export path (shutdown with drop_pending_traces_on_shutdown, pipeline closed, no peer).";

    // The sampler cluster.
    CLUSTER_FORWARDED_SPANS = Counter "tailgate_cluster_forwarded_spans_total" [] Count
        "Spans a sampler forwarded to the peer that owns their trace.";
    CLUSTER_HANDED_OFF_TRACES = Counter "tailgate_cluster_handed_off_traces_total" [] Count
        "Buffered traces a sampler handed to their new owner.";
    CLUSTER_HANDED_OFF_SPANS = Counter "tailgate_cluster_handed_off_spans_total" [] Count
        "Spans of the traces a sampler handed to their new owner.";
    CLUSTER_FORWARD_FAILED_SPANS = Counter "tailgate_cluster_forward_failed_spans_total" [] Count
        "Spans whose owner did not acknowledge their forward (refused, unreachable, or gone): kept here instead, and handed on later.";
    CLUSTER_PEER_REQUESTS = Counter "tailgate_cluster_peer_requests_total" ["outcome"] Count
        "Requests sent to peers (forwards, hand-offs, moved decisions), by whether the peer acknowledged them.";
    CLUSTER_PEER_BYTES = Counter "tailgate_cluster_peer_bytes_total" [] Bytes
        "Bytes of the requests sent to peers.";
    CLUSTER_PEER_REQUEST_SECONDS = Histogram "tailgate_cluster_peer_request_seconds" [] Seconds
        "How long a peer took to answer a request.";
    CLUSTER_KEPT_TRACES = Counter "tailgate_cluster_kept_traces_total" [] Count
        "Traces to hand off that no peer took: kept here and decided here.";
    CLUSTER_MOVED_DECISIONS = Counter "tailgate_cluster_moved_decisions_total" ["direction"] Count
        "Decisions sent to the new owner of their trace, or adopted from the previous one.";
    CLUSTER_REFUSED_WHILE_LEAVING = Counter "tailgate_cluster_refused_while_leaving_total" [] Count
        "Peer requests this sampler refused because it is leaving (the peer routes around it).";

    // Exporters.
    EXPORTER_SENT_SPANS = Counter "otelcol_exporter_sent_spans" ["exporter"] Count
        "Spans the backend acknowledged.";
    EXPORTER_SEND_FAILED_SPANS = Counter "otelcol_exporter_send_failed_spans" ["exporter"] Count
        "Spans dropped after a permanent failure, exhausted retries, or the end of the shutdown grace period.";
    EXPORTER_ENQUEUE_FAILED_SPANS = Counter "otelcol_exporter_enqueue_failed_spans" ["exporter"] Count
        "Spans dropped because the sending queue was full.";
    EXPORTER_QUEUE_SIZE = Gauge "otelcol_exporter_queue_size" ["exporter"] Count
        "Batches in the sending queue.";
    EXPORTER_QUEUE_CAPACITY = Gauge "otelcol_exporter_queue_capacity" ["exporter"] Count
        "Batches the sending queue holds.";
    EXPORTER_RETRIES = Counter "tailgate_exporter_retries_total" ["exporter"] Count
        "Export attempts that failed with a retryable error and were retried.";
    EXPORTER_SPLIT_BATCHES = Counter "tailgate_exporter_split_batches_total" ["exporter"] Count
        "Batches split in two after the receiver refused them as too large or invalid, so that the rest is delivered.";
    EXPORTER_REJECTED_SPANS = Counter "tailgate_exporter_rejected_spans_total" [] Count
        "Spans a backend accepted the request for but rejected individually (partial_success).";

    // The front tier.
    LB_BACKEND_OUTCOME = Counter "otelcol_loadbalancer_backend_outcome" ["endpoint", "success"] Count
        "Export attempts to each backend, by outcome.";
    LB_NUM_RESOLUTIONS = Counter "otelcol_loadbalancer_num_resolutions" ["resolver", "success"] Count
        "Resolutions of the backend set, by outcome.";
    LB_NUM_BACKENDS = Gauge "otelcol_loadbalancer_num_backends" ["resolver"] Count
        "Backends in the current set.";
    LB_REROUTED_SPANS = Counter "tailgate_loadbalancer_rerouted_spans_total" ["exporter"] Count
        "Spans queued for a backend that left the ring, routed again to their new owner.";
    LB_NUM_BACKEND_UPDATES = Counter "otelcol_loadbalancer_num_backend_updates" ["resolver"] Count
        "Times the backend set changed.";
}

/// Gives the recorder every metric's help text and unit (Prometheus `# HELP`).
pub fn describe_all() {
    for metric in ALL {
        let (name, unit, help) = (metric.name, metric.unit, metric.help);
        match metric.kind {
            Kind::Counter => metrics::describe_counter!(name, unit, help),
            Kind::Gauge => metrics::describe_gauge!(name, unit, help),
            Kind::Histogram => metrics::describe_histogram!(name, unit, help),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_metric_is_declared_once_with_help() {
        let mut names: Vec<&str> = ALL.iter().map(|m| m.name).collect();
        names.sort_unstable();
        let before = names.len();
        names.dedup();
        assert_eq!(names.len(), before, "a metric name is declared twice");
        for metric in ALL {
            assert!(!metric.help.is_empty(), "{} has no help text", metric.name);
            assert!(
                metric.name.starts_with("otelcol_") || metric.name.starts_with("tailgate_"),
                "{}",
                metric.name
            );
        }
    }
}
