//! The telemetry catalog: every metric tailgate exports, declared once with its name, kind,
//! unit, labels and help text, and the series registered for it. Code registers handles through
//! these declarations ([`Metric::counter`] and friends) once, when a component is built, and
//! updates the handles on the hot path (an atomic add); nothing formats a metric name or a label
//! string per request.
//!
//! Names are OpenTelemetry instrument names, as the Collector declares its own (dots already
//! turned into underscores): `otelcol_receiver_accepted_spans`, unit `{spans}`. What Prometheus
//! shows is decided when `/metrics` is rendered, by [`Naming`]: the Collector's default reader
//! shows the names as they are; a configured Prometheus reader adds `_total` to counters and a
//! unit suffix (`_seconds`, `_bytes`) unless `without_type_suffix` / `without_units` say not to.
//! tailgate's own metrics (`tailgate_` prefix) follow the same rule, so no declared name carries
//! a type or unit suffix that the rule would add.
//!
//! Each declaration holds its series (label values → shared atomic storage). A series stays
//! until [`Metric::forget_unused`] removes it, which the exporters of front-tier backends and
//! sampler peers do once they have drained after leaving the ring: their series disappear from
//! `/metrics` instead of showing the last values of an endpoint that no longer exists.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};

use metrics::{Counter, Gauge, Histogram, HistogramFn};

/// What kind of series a metric is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Counter,
    Gauge,
    Histogram,
}

impl Kind {
    /// The Prometheus `# TYPE`.
    pub fn prometheus_type(self) -> &'static str {
        match self {
            Kind::Counter => "counter",
            Kind::Gauge => "gauge",
            Kind::Histogram => "histogram",
        }
    }
}

/// How metric names are shown to Prometheus: the OpenTelemetry-to-Prometheus rule the
/// Collector's Prometheus reader applies, with its two switches.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Naming {
    /// `_total` after a counter's name (the reader's `without_type_suffix: false`).
    pub type_suffix: bool,
    /// The unit after the name (`without_units: false`): `s` → `_seconds`, `ms` →
    /// `_milliseconds`, `By` → `_bytes`, `1` → `_ratio` on gauges; `{spans}`-style units add
    /// nothing. A name that already ends in its unit is left alone.
    pub units: bool,
}

impl Naming {
    /// The Collector without `service.telemetry.metrics.readers`: names as declared.
    pub const COLLECTOR_DEFAULT: Naming = Naming {
        type_suffix: false,
        units: false,
    };
    /// A Prometheus pull reader with both switches unset: `_total` and unit suffixes.
    pub const PROMETHEUS: Naming = Naming {
        type_suffix: true,
        units: true,
    };
}

impl Default for Naming {
    fn default() -> Self {
        Naming::COLLECTOR_DEFAULT
    }
}

/// One series' storage.
#[derive(Debug, Clone)]
pub(crate) enum Storage {
    /// A counter's count, or a gauge's `f64` bits.
    Value(Arc<AtomicU64>),
    Histogram(Arc<Buckets>),
}

impl Storage {
    /// Whether anything other than the catalog holds this series.
    fn in_use(&self) -> bool {
        match self {
            Storage::Value(v) => Arc::strong_count(v) > 1,
            Storage::Histogram(h) => Arc::strong_count(h) > 1,
        }
    }
}

/// A fixed-bucket histogram: one atomic per bucket (not cumulative; rendering adds them up),
/// the count, and the sum as `f64` bits.
#[derive(Debug)]
pub(crate) struct Buckets {
    pub bounds: &'static [f64],
    /// `bounds.len() + 1` counts; the last is above every bound.
    pub counts: Box<[AtomicU64]>,
    pub count: AtomicU64,
    pub sum: AtomicU64,
}

impl Buckets {
    fn new(bounds: &'static [f64]) -> Self {
        Buckets {
            bounds,
            counts: (0..=bounds.len()).map(|_| AtomicU64::new(0)).collect(),
            count: AtomicU64::new(0),
            sum: AtomicU64::new(0f64.to_bits()),
        }
    }

    /// The first bucket whose bound is at or above `value` (the last one: above every bound).
    fn bucket_of(&self, value: f64) -> usize {
        self.bounds.partition_point(|&bound| bound < value)
    }

    /// Adds `count` observations summing to `sum` (their buckets are the caller's to count).
    fn add_observations(&self, count: u64, sum: f64) {
        let _ = self
            .sum
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |bits| {
                Some((f64::from_bits(bits) + sum).to_bits())
            });
        self.count.fetch_add(count, Ordering::Relaxed);
    }
}

impl HistogramFn for Buckets {
    fn record(&self, value: f64) {
        self.counts[self.bucket_of(value)].fetch_add(1, Ordering::Relaxed);
        self.add_observations(1, value);
    }
}

/// A handle to a histogram series for loops that observe many values at once: a
/// [`HistogramBatch`] counts them locally and adds them to the series when dropped, one atomic
/// add per bucket touched, where [`Histogram::record`] takes three atomic operations per value
/// (a decision round records two values for each of up to 512 traces).
#[derive(Debug, Clone, Default)]
pub struct BatchedHistogram(Option<Arc<Buckets>>);

impl BatchedHistogram {
    /// A batch that is added to the series when dropped.
    pub fn batch(&self) -> HistogramBatch<'_> {
        HistogramBatch {
            buckets: self.0.as_deref(),
            counts: Vec::new(),
            sum: 0.0,
        }
    }
}

/// Observations counted locally, added to their series on drop (see [`BatchedHistogram`]).
pub struct HistogramBatch<'a> {
    buckets: Option<&'a Buckets>,
    /// Per bucket, as in [`Buckets::counts`]; empty until the first observation.
    counts: Vec<u64>,
    sum: f64,
}

impl HistogramBatch<'_> {
    pub fn record(&mut self, value: f64) {
        let Some(buckets) = self.buckets else {
            return;
        };
        if self.counts.is_empty() {
            self.counts = vec![0; buckets.counts.len()];
        }
        self.counts[buckets.bucket_of(value)] += 1;
        self.sum += value;
    }
}

impl Drop for HistogramBatch<'_> {
    fn drop(&mut self) {
        let Some(buckets) = self.buckets else {
            return;
        };
        let mut count = 0;
        for (total, &n) in buckets.counts.iter().zip(&self.counts) {
            if n > 0 {
                total.fetch_add(n, Ordering::Relaxed);
                count += n;
            }
        }
        if count > 0 {
            buckets.add_observations(count, self.sum);
        }
    }
}

/// A registered series: its label values (in the declared order) and storage.
#[derive(Debug, Clone)]
pub(crate) struct Series {
    pub values: Box<[Box<str>]>,
    pub storage: Storage,
}

/// One metric's declaration and its series.
#[derive(Debug)]
pub struct Metric {
    /// The OpenTelemetry instrument name (dots as underscores), without type or unit suffix.
    pub name: &'static str,
    pub kind: Kind,
    /// The OpenTelemetry unit: `s`, `ms`, `By`, `1`, or an annotation such as `{spans}`.
    pub unit: &'static str,
    /// The label names every series of this metric carries, in order.
    pub labels: &'static [&'static str],
    pub help: &'static str,
    /// A histogram's bucket upper bounds, ascending; empty for other kinds.
    pub buckets: &'static [f64],
    series: RwLock<Vec<Series>>,
}

impl Metric {
    /// A metric outside the catalog, for tests that must not share series with other tests.
    #[cfg(test)]
    pub(crate) const fn for_test(
        name: &'static str,
        kind: Kind,
        unit: &'static str,
        labels: &'static [&'static str],
        buckets: &'static [f64],
    ) -> Metric {
        Metric {
            name,
            kind,
            unit,
            labels,
            help: "A test metric.",
            buckets,
            series: RwLock::new(Vec::new()),
        }
    }

    /// The name Prometheus shows under `naming`.
    pub fn exported_name(&self, naming: Naming) -> String {
        let mut name = self.name.to_string();
        if naming.units {
            if let Some(unit) = self.unit_suffix() {
                if !name.ends_with(&format!("_{unit}")) {
                    name.push('_');
                    name.push_str(unit);
                }
            }
        }
        if naming.type_suffix && self.kind == Kind::Counter && !name.ends_with("_total") {
            name.push_str("_total");
        }
        name
    }

    /// Every name a Prometheus query can use for this metric under `naming`: the family name,
    /// and for a histogram its `_bucket`, `_sum` and `_count` series.
    pub fn exported_series_names(&self, naming: Naming) -> Vec<String> {
        let name = self.exported_name(naming);
        match self.kind {
            Kind::Histogram => ["_bucket", "_sum", "_count"]
                .iter()
                .map(|suffix| format!("{name}{suffix}"))
                .chain(std::iter::once(name.clone()))
                .collect(),
            _ => vec![name],
        }
    }

    /// The Prometheus unit word for the OpenTelemetry unit, if the rule adds one.
    fn unit_suffix(&self) -> Option<&'static str> {
        match self.unit {
            "s" => Some("seconds"),
            "ms" => Some("milliseconds"),
            "us" => Some("microseconds"),
            "By" => Some("bytes"),
            "1" if self.kind == Kind::Gauge => Some("ratio"),
            _ => None,
        }
    }

    /// The counter series with these label values (in the declared order).
    pub fn counter(&'static self, values: &[&str]) -> Counter {
        debug_assert_eq!(self.kind, Kind::Counter, "{} is not a counter", self.name);
        match self.storage(values) {
            Storage::Value(v) => Counter::from_arc(v),
            Storage::Histogram(_) => Counter::noop(),
        }
    }

    /// The gauge series with these label values.
    pub fn gauge(&'static self, values: &[&str]) -> Gauge {
        debug_assert_eq!(self.kind, Kind::Gauge, "{} is not a gauge", self.name);
        match self.storage(values) {
            Storage::Value(v) => Gauge::from_arc(v),
            Storage::Histogram(_) => Gauge::noop(),
        }
    }

    /// The histogram series with these label values.
    /// [`Metric::histogram`] as a [`BatchedHistogram`].
    pub fn batched_histogram(&'static self, values: &[&str]) -> BatchedHistogram {
        debug_assert_eq!(
            self.kind,
            Kind::Histogram,
            "{} is not a histogram",
            self.name
        );
        match self.storage(values) {
            Storage::Histogram(h) => BatchedHistogram(Some(h)),
            Storage::Value(_) => BatchedHistogram(None),
        }
    }

    pub fn histogram(&'static self, values: &[&str]) -> Histogram {
        debug_assert_eq!(
            self.kind,
            Kind::Histogram,
            "{} is not a histogram",
            self.name
        );
        match self.storage(values) {
            Storage::Histogram(h) => Histogram::from_arc(h),
            Storage::Value(_) => Histogram::noop(),
        }
    }

    /// Removes the series with these label values if no handle to it is left (so a component
    /// that registers the same series again keeps it). Returns whether it was removed.
    pub fn forget_unused(&self, values: &[&str]) -> bool {
        let mut series = self.series.write().unwrap_or_else(|p| p.into_inner());
        let Some(i) = series.iter().position(|s| same_values(&s.values, values)) else {
            return false;
        };
        if series[i].storage.in_use() {
            return false;
        }
        series.remove(i);
        true
    }

    /// A copy of the registered series (shared storage), in registration order.
    pub(crate) fn series(&self) -> Vec<Series> {
        self.series
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// The storage of the series with these values, registered now if it is new.
    fn storage(&self, values: &[&str]) -> Storage {
        debug_assert_eq!(
            values.len(),
            self.labels.len(),
            "{}: label values do not match the declared labels {:?}",
            self.name,
            self.labels
        );
        let found = |series: &[Series]| {
            series
                .iter()
                .find(|s| same_values(&s.values, values))
                .map(|s| s.storage.clone())
        };
        if let Some(storage) = found(&self.series.read().unwrap_or_else(|p| p.into_inner())) {
            return storage;
        }
        let mut series = self.series.write().unwrap_or_else(|p| p.into_inner());
        if let Some(storage) = found(&series) {
            return storage;
        }
        let storage = match self.kind {
            Kind::Counter => Storage::Value(Arc::new(AtomicU64::new(0))),
            Kind::Gauge => Storage::Value(Arc::new(AtomicU64::new(0f64.to_bits()))),
            Kind::Histogram => Storage::Histogram(Arc::new(Buckets::new(self.buckets))),
        };
        series.push(Series {
            values: values.iter().map(|v| Box::from(*v)).collect(),
            storage: storage.clone(),
        });
        storage
    }
}

fn same_values(registered: &[Box<str>], values: &[&str]) -> bool {
    registered.len() == values.len() && registered.iter().zip(values).all(|(a, b)| &**a == *b)
}

macro_rules! declare {
    ($($(#[$doc:meta])* $id:ident = $kind:ident $name:literal [$($label:literal),*] $unit:literal
        $(buckets [$($bound:literal),*])? $help:literal;)*) => {
        $(
            $(#[$doc])*
            pub static $id: Metric = Metric {
                name: $name,
                kind: Kind::$kind,
                unit: $unit,
                labels: &[$($label),*],
                help: $help,
                buckets: &[$($($bound),*)?],
                series: RwLock::new(Vec::new()),
            };
        )*
        /// Every declared metric, in the order `/metrics` shows them.
        pub static ALL: &[&Metric] = &[$(&$id),*];
    };
}

declare! {
    // Receivers.
    RECEIVER_ACCEPTED_SPANS = Counter "otelcol_receiver_accepted_spans" ["receiver", "transport"] "{spans}"
        "Spans the receiver accepted and handed on.";
    RECEIVER_REFUSED_SPANS = Counter "otelcol_receiver_refused_spans" ["receiver", "transport"] "{spans}"
        "Spans of valid requests the receiver refused with a retryable status (buffer full, no sampler, shutting down).";
    RECEIVER_REJECTED_REQUESTS = Counter "tailgate_receiver_rejected_requests" ["transport", "reason"] "{requests}"
        "Requests refused as invalid, by reason: structural damage found at the door (truncated, bad_varint, bad_wire_type, bad_field_number, bad_id, invalid_utf8, too_deep), malformed_json, too_large, bad_compression, unsupported_media_type or unsupported_encoding.";
    RECEIVER_THROTTLED_REQUESTS = Counter "tailgate_receiver_throttled_requests" ["receiver", "transport"] "{requests}"
        "Requests refused with a retryable status (UNAVAILABLE / 503) because the receiver already held max_in_flight_mib of request bodies.";
    RECEIVER_IN_FLIGHT_BYTES = Gauge "tailgate_receiver_in_flight" ["receiver"] "By"
        "Bytes of request bodies the receiver holds right now, against max_in_flight_mib.";
    RECEIVER_REPAIRED_SPANS = Counter "tailgate_receiver_repaired_spans" ["receiver", "transport"] "{spans}"
        "Spans accepted after invalid UTF-8 in them, or in their resource or scope, was replaced with U+FFFD (receivers.otlp.invalid_utf8: repair).";

    RECEIVER_UNAUTHENTICATED_REQUESTS = Counter "tailgate_receiver_unauthenticated_requests" ["receiver", "transport"] "{requests}"
        "Requests refused before their body was read because their credentials were missing or wrong (UNAUTHENTICATED / HTTP 401).";

    RECEIVER_TLS_HANDSHAKE_FAILURES = Counter "tailgate_receiver_tls_handshake_failures" ["transport"] "{connections}"
        "Connections to a TLS receiver that did not complete a handshake (no or an untrusted client certificate, a plain-text client, a timeout).";

    MEMORY_LIMITER_REFUSED_REQUESTS = Counter "tailgate_memory_limiter_refused_requests" [] "{requests}"
        "Requests the memory_limiter refused with a retryable status because memory was above its soft limit (their spans are also in otelcol_receiver_refused_spans).";
    MEMORY_LIMITER_RELEASES = Counter "tailgate_memory_limiter_memory_releases" [] "{releases}"
        "Times the memory_limiter, above its soft limit, had the allocator return its free memory to the OS before deciding (the Collector's forced garbage collections).";
    MEMORY_LIMITER_SOFT_LIMIT = Gauge "tailgate_memory_limiter_soft_limit_bytes" [] "By"
        "The memory_limiter's soft limit (limit minus spike limit): above it new data is refused.";

    // The filter, resource and attributes processors.
    FILTER_SPANS_FILTERED = Counter "otelcol_processor_filter_spans_filtered" ["filter"] "{spans}"
        "Spans a filter processor dropped because they matched its conditions, before they were buffered.";
    FILTER_ERRORS = Counter "tailgate_processor_filter_errors" ["filter"] "{spans}"
        "Spans a filter condition failed on at run time; they were kept.";

    // The sampler's buffer and decisions.
    NEW_TRACES = Counter "otelcol_processor_tail_sampling_new_trace_id_received" [] "{traces}"
        "Traces the buffer started holding.";
    TRACES_DECIDED = Counter "otelcol_processor_tail_sampling_global_count_traces_sampled" ["sampled", "decision"] "{traces}"
        "Traces decided, by whether they were kept.";
    POLICY_DECISIONS = Counter "otelcol_processor_tail_sampling_count_traces_sampled" ["policy", "sampled", "decision"] "{traces}"
        "Each policy's answer for each trace it evaluated.";
    POLICY_SPAN_DECISIONS = Counter "otelcol_processor_tail_sampling_count_spans_sampled" ["policy", "sampled", "decision"] "{spans}"
        "Spans of the traces each policy evaluated, by its answer.";
    POLICY_EXECUTIONS = Counter "otelcol_processor_tail_sampling_sampling_policy_executions" ["policy"] "{executions}"
        "Times each policy was evaluated.";
    POLICY_CPU_TIME = Counter "otelcol_processor_tail_sampling_sampling_policy_cpu_time" ["policy"] "{nanoseconds}"
        "Time spent evaluating each policy, in nanoseconds (divide by sampling_policy_executions for the mean).";
    DECISION_TIMER_LATENCY = Histogram "otelcol_processor_tail_sampling_sampling_decision_timer_latency" [] "s"
        buckets [0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0]
        "Time one decision round of a shard took: popping the due traces, running the policies, recording the decisions.";
    TRACE_REMOVAL_AGE = Histogram "otelcol_processor_tail_sampling_sampling_trace_removal_age" [] "s"
        buckets [1.0, 5.0, 10.0, 20.0, 30.0, 60.0, 120.0, 300.0]
        "Age of a trace (from its first span) when it left the buffer, decided.";
    LATE_SPAN_AGE = Histogram "otelcol_processor_tail_sampling_sampling_late_span_age" [] "s"
        buckets [0.1, 0.5, 1.0, 5.0, 10.0, 30.0, 60.0, 300.0]
        "Time from a trace's decision to the arrival of a late span of it (spans decided by the cache).";
    EARLY_RELEASES_FROM_CACHE = Counter "otelcol_processor_tail_sampling_early_releases_from_cache_decision" ["sampled"] "{spans}"
        "Late spans released or dropped at once because the decision cache remembered their trace.";
    TRACES_DROPPED_TOO_EARLY = Counter "otelcol_processor_tail_sampling_sampling_trace_dropped_too_early" [] "{traces}"
        "Traces dropped undecided (drop_pending_traces_on_shutdown); at the buffer's limits tailgate decides traces early instead (tailgate_traces_decided_early).";
    POLICY_ERRORS = Counter "otelcol_processor_tail_sampling_sampling_policy_evaluation_error" [] "{errors}"
        "Policy evaluations that failed; the policy was skipped for that trace.";
    TRACES_ON_MEMORY = Gauge "otelcol_processor_tail_sampling_sampling_traces_on_memory" [] "{traces}"
        "Traces buffered awaiting their decision.";
    BUFFERED_SPANS = Gauge "tailgate_buffered_spans" [] "{spans}"
        "Spans buffered awaiting their trace's decision.";
    BUFFERED_BYTES = Gauge "tailgate_buffered_bytes" [] "By"
        "Memory counted against max_buffered_bytes: stored span bytes, summaries and per-trace bookkeeping.";
    BUFFER_MAX_TRACES = Gauge "tailgate_buffer_max_traces" [] "{traces}"
        "The configured num_traces: traces the buffer holds before it decides the oldest early (or refuses, with block_on_overflow).";
    BUFFER_MAX_BYTES = Gauge "tailgate_buffer_max_bytes" [] "By"
        "The configured max_buffered_bytes, when set: the limit tailgate_buffered_bytes is held under.";
    DECISION_WAIT = Gauge "tailgate_decision_wait" [] "s"
        "The configured decision_wait: how long a trace is buffered from its first span to its decision.";
    SPANS_NOT_SAMPLED = Counter "tailgate_spans_not_sampled" [] "{spans}"
        "Spans of traces decided not sampled.";
    DECISION_LATENESS = Histogram "tailgate_decision_lateness" [] "s"
        buckets [0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0]
        "How long after its deadline a trace was decided.";
    TRACES_TOO_LARGE = Counter "tailgate_traces_too_large" [] "{traces}"
        "Traces that passed maximum_trace_size_bytes and were decided not sampled.";
    LATE_SPANS = Counter "tailgate_late_spans" ["decision"] "{spans}"
        "Spans that arrived after their trace was decided, by the decision they followed.";
    TRACES_DECIDED_EARLY = Counter "tailgate_traces_decided_early" ["reason"] "{traces}"
        "Traces decided before decision_wait because the buffer reached a limit.";
    OVERFLOW_REFUSALS = Counter "tailgate_buffer_overflow_refusals" [] "{requests}"
        "Requests refused because the buffer was full with block_on_overflow.";
    SPANS_DROPPED = Counter "tailgate_spans_dropped" ["reason"] "{spans}"
        "Spans dropped outside the export path (shutdown with drop_pending_traces_on_shutdown, a buffer still settling when the grace period ran out, pipeline closed, no peer).";

    // The sampler cluster.
    CLUSTER_FORWARDED_SPANS = Counter "tailgate_cluster_forwarded_spans" [] "{spans}"
        "Spans a sampler forwarded to the peer that owns their trace.";
    CLUSTER_HANDED_OFF_TRACES = Counter "tailgate_cluster_handed_off_traces" [] "{traces}"
        "Buffered traces a sampler handed to their new owner.";
    CLUSTER_HANDED_OFF_SPANS = Counter "tailgate_cluster_handed_off_spans" [] "{spans}"
        "Spans of the traces a sampler handed to their new owner.";
    CLUSTER_FORWARD_FAILED_SPANS = Counter "tailgate_cluster_forward_failed_spans" [] "{spans}"
        "Spans whose owner did not acknowledge their forward (refused, unreachable, or gone): kept here instead, and handed on later.";
    CLUSTER_PEER_REQUESTS = Counter "tailgate_cluster_peer_requests" ["outcome"] "{requests}"
        "Requests sent to peers (forwards, hand-offs, moved decisions), by whether the peer acknowledged them.";
    CLUSTER_PEER_BYTES = Counter "tailgate_cluster_peer_bytes" [] "By"
        "Bytes of the requests sent to peers.";
    CLUSTER_PEER_REQUEST_SECONDS = Histogram "tailgate_cluster_peer_request_duration" [] "s"
        buckets [0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0]
        "How long a peer took to answer a request.";
    CLUSTER_KEPT_TRACES = Counter "tailgate_cluster_kept_traces" [] "{traces}"
        "Traces to hand off that no peer took: kept here and decided here.";
    CLUSTER_MOVED_DECISIONS = Counter "tailgate_cluster_moved_decisions" ["direction"] "{decisions}"
        "Decisions sent to the new owner of their trace, or adopted from the previous one.";
    CLUSTER_REFUSED_WHILE_LEAVING = Counter "tailgate_cluster_refused_while_leaving" [] "{requests}"
        "Peer requests this sampler refused because it is leaving (the peer routes around it).";

    // Exporters.
    EXPORTER_SENT_SPANS = Counter "otelcol_exporter_sent_spans" ["exporter"] "{spans}"
        "Spans the backend acknowledged.";
    EXPORTER_SEND_FAILED_SPANS = Counter "otelcol_exporter_send_failed_spans" ["exporter"] "{spans}"
        "Spans dropped after a permanent failure, exhausted retries, or the end of the shutdown grace period.";
    EXPORTER_ENQUEUE_FAILED_SPANS = Counter "otelcol_exporter_enqueue_failed_spans" ["exporter"] "{spans}"
        "Spans dropped because the sending queue was full.";
    EXPORTER_QUEUE_SIZE = Gauge "otelcol_exporter_queue_size" ["exporter", "data_type"] "{batches}"
        "Batches in the sending queue.";
    EXPORTER_QUEUE_CAPACITY = Gauge "otelcol_exporter_queue_capacity" ["exporter", "data_type"] "{batches}"
        "Batches the sending queue holds.";
    EXPORTER_RETRIES = Counter "tailgate_exporter_retries" ["exporter"] "{retries}"
        "Export attempts that failed with a retryable error and were retried.";
    EXPORTER_SPLIT_BATCHES = Counter "tailgate_exporter_split_batches" ["exporter"] "{batches}"
        "Batches split in two after the receiver refused them as too large or invalid, so that the rest is delivered.";
    EXPORTER_BAD_RESPONSES = Counter "tailgate_exporter_bad_responses" ["kind"] "{responses}"
        "Backend answers tailgate could not use as sent: a response body over 64 KiB or still arriving at the timeout, an undecodable success response, a retry delay over 5 minutes (capped), a partial_success rejecting more spans than were sent.";
    EXPORTER_REJECTED_SPANS = Counter "tailgate_exporter_rejected_spans" [] "{spans}"
        "Spans a backend accepted the request for but rejected individually (partial_success).";

    // The front tier.
    LB_BACKEND_OUTCOME = Counter "otelcol_loadbalancer_backend_outcome" ["endpoint", "success"] "{outcomes}"
        "Export attempts to each backend, by outcome.";
    LB_NUM_RESOLUTIONS = Counter "otelcol_loadbalancer_num_resolutions" ["resolver", "success"] "{resolutions}"
        "Resolutions of the backend set, by outcome.";
    LB_NUM_BACKENDS = Gauge "otelcol_loadbalancer_num_backends" ["resolver"] "{backends}"
        "Backends in the current set.";
    LB_REROUTED_SPANS = Counter "tailgate_loadbalancer_rerouted_spans" ["exporter"] "{spans}"
        "Spans queued for a backend that left the ring, routed again to their new owner.";
    LB_NUM_BACKEND_UPDATES = Counter "otelcol_loadbalancer_num_backend_updates" ["resolver"] "{updates}"
        "Times the backend set changed.";

    // Configuration.
    CONFIG_RELOADS = Counter "tailgate_config_reloads" ["result"] "{reloads}"
        "Config reloads (SIGHUP or --watch-config): applied, partial (changes that need a restart were not applied) or failed (the file did not validate; the running config stays).";

    // The process, read when /metrics is scraped (see telemetry::process), never registered.
    PROCESS_UPTIME = Counter "otelcol_process_uptime" [] "s"
        "Seconds since the process started.";
    PROCESS_CPU_SECONDS = Counter "otelcol_process_cpu_seconds" [] "s"
        "CPU time the process used, user and system, in seconds.";
    PROCESS_MEMORY_RSS = Gauge "otelcol_process_memory_rss" [] "By"
        "Resident set size: physical memory the process holds.";
    PROCESS_HEAP = Gauge "otelcol_process_runtime_heap_alloc_bytes" [] "By"
        "Heap memory the allocator (mimalloc) has committed: live allocations plus free space it keeps in its pages, not yet returned to the OS.";
}

/// The metrics whose values are read from the process at scrape time.
pub static PROCESS: &[&Metric] = &[
    &PROCESS_UPTIME,
    &PROCESS_CPU_SECONDS,
    &PROCESS_MEMORY_RSS,
    &PROCESS_HEAP,
];

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_metric_is_declared_once_with_help_and_no_suffix_the_rule_adds() {
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
            assert!(
                !metric.name.ends_with("_total"),
                "{}: `_total` is added by the naming rule, not declared",
                metric.name
            );
            assert_eq!(
                metric.kind == Kind::Histogram,
                !metric.buckets.is_empty(),
                "{}: histograms, and only they, declare buckets",
                metric.name
            );
            assert!(metric.buckets.windows(2).all(|w| w[0] < w[1]));
        }
    }

    #[test]
    fn exported_names_follow_the_collectors_prometheus_rule() {
        let cases: &[(&Metric, &str, &str)] = &[
            (
                &RECEIVER_ACCEPTED_SPANS,
                "otelcol_receiver_accepted_spans",
                "otelcol_receiver_accepted_spans_total",
            ),
            (
                &PROCESS_UPTIME,
                "otelcol_process_uptime",
                "otelcol_process_uptime_seconds_total",
            ),
            (
                &PROCESS_CPU_SECONDS,
                "otelcol_process_cpu_seconds",
                "otelcol_process_cpu_seconds_total",
            ),
            (
                &PROCESS_MEMORY_RSS,
                "otelcol_process_memory_rss",
                "otelcol_process_memory_rss_bytes",
            ),
            (
                &PROCESS_HEAP,
                "otelcol_process_runtime_heap_alloc_bytes",
                "otelcol_process_runtime_heap_alloc_bytes",
            ),
            (
                &EXPORTER_QUEUE_SIZE,
                "otelcol_exporter_queue_size",
                "otelcol_exporter_queue_size",
            ),
            (
                &DECISION_LATENESS,
                "tailgate_decision_lateness",
                "tailgate_decision_lateness_seconds",
            ),
            (
                &CLUSTER_HANDED_OFF_SPANS,
                "tailgate_cluster_handed_off_spans",
                "tailgate_cluster_handed_off_spans_total",
            ),
        ];
        for (metric, default, prometheus) in cases {
            assert_eq!(metric.exported_name(Naming::COLLECTOR_DEFAULT), *default);
            assert_eq!(metric.exported_name(Naming::PROMETHEUS), *prometheus);
        }
        let units_only = Naming {
            type_suffix: false,
            units: true,
        };
        assert_eq!(
            PROCESS_UPTIME.exported_name(units_only),
            "otelcol_process_uptime_seconds"
        );
        let total_only = Naming {
            type_suffix: true,
            units: false,
        };
        assert_eq!(
            PROCESS_UPTIME.exported_name(total_only),
            "otelcol_process_uptime_total"
        );
    }

    static TEST_COUNTER: Metric = Metric {
        name: "tailgate_test_counter",
        kind: Kind::Counter,
        unit: "{things}",
        labels: &["endpoint"],
        help: "test",
        buckets: &[],
        series: RwLock::new(Vec::new()),
    };

    #[test]
    fn a_series_is_shared_by_its_handles_and_forgotten_only_when_none_is_left() {
        let a = TEST_COUNTER.counter(&["a:4317"]);
        let again = TEST_COUNTER.counter(&["a:4317"]);
        a.increment(2);
        again.increment(3);
        let value = |metric: &Metric| match &metric.series()[0].storage {
            Storage::Value(v) => v.load(Ordering::Relaxed),
            Storage::Histogram(_) => unreachable!(),
        };
        assert_eq!(value(&TEST_COUNTER), 5);
        assert!(
            !TEST_COUNTER.forget_unused(&["a:4317"]),
            "handles are alive"
        );
        drop((a, again));
        assert!(!TEST_COUNTER.forget_unused(&["b:4317"]), "never registered");
        assert!(TEST_COUNTER.forget_unused(&["a:4317"]));
        assert!(TEST_COUNTER.series().is_empty());
        // Registered again, it starts over.
        let _b = TEST_COUNTER.counter(&["a:4317"]);
        assert_eq!(value(&TEST_COUNTER), 0);
    }

    static TEST_HISTOGRAM: Metric = Metric {
        name: "tailgate_test_histogram",
        kind: Kind::Histogram,
        unit: "s",
        labels: &[],
        help: "test",
        buckets: &[0.1, 1.0],
        series: RwLock::new(Vec::new()),
    };

    #[test]
    fn a_histogram_counts_each_value_in_the_first_bucket_at_or_above_it() {
        let h = TEST_HISTOGRAM.histogram(&[]);
        for v in [0.05, 0.1, 0.5, 1.0, 7.0] {
            h.record(v);
        }
        let (counts, count, sum) = histogram_state(&TEST_HISTOGRAM);
        assert_eq!(counts, [2, 2, 1]);
        assert_eq!(count, 5);
        assert!((sum - 8.65).abs() < 1e-9);
    }

    /// A one-series histogram's bucket counts, count and sum.
    fn histogram_state(metric: &Metric) -> (Vec<u64>, u64, f64) {
        let Storage::Histogram(b) = &metric.series()[0].storage else {
            unreachable!()
        };
        let counts: Vec<u64> = b.counts.iter().map(|c| c.load(Ordering::Relaxed)).collect();
        let sum = f64::from_bits(b.sum.load(Ordering::Relaxed));
        (counts, b.count.load(Ordering::Relaxed), sum)
    }

    static TEST_BATCHED: Metric = Metric {
        name: "tailgate_test_batched_histogram",
        kind: Kind::Histogram,
        unit: "s",
        labels: &[],
        help: "test",
        buckets: &[0.1, 1.0],
        series: RwLock::new(Vec::new()),
    };

    #[test]
    fn a_batch_adds_to_its_series_what_recording_each_value_would_when_dropped() {
        let h = TEST_BATCHED.batched_histogram(&[]);
        let read = || histogram_state(&TEST_BATCHED);
        drop(h.batch());
        assert_eq!(
            read(),
            (vec![0, 0, 0], 0, 0.0),
            "an empty batch adds nothing"
        );
        let mut batch = h.batch();
        for v in [0.05, 0.1, 0.5, 1.0, 7.0] {
            batch.record(v);
        }
        assert_eq!(read().1, 0, "nothing is added before the batch is dropped");
        drop(batch);
        let mut batch = h.batch();
        batch.record(0.01);
        drop(batch);
        let (counts, count, sum) = read();
        assert_eq!((counts, count), (vec![3, 2, 1], 6));
        assert!((sum - 8.66).abs() < 1e-9, "{sum}");
    }
}
