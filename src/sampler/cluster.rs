//! Sampler-to-sampler coordination, so traces stay whole while the sampler tier scales, shrinks
//! and rolls (`processors.tail_sampling.cluster`, a tailgate extension).
//!
//! The problem: balancers route each trace to the ring owner of its trace ID. When the sampler set
//! changes, the owner of a trace that is already buffered can change, and its later spans go to
//! the new owner: two samplers would each decide half a trace.
//!
//! The design: every sampler resolves the same peer set as the balancers (same resolver config
//! shape, same ring), so every node computes the same owner for a trace ([`Peers`]).
//!
//! - **Forwarding.** A sampler receiving spans of a trace it does not own forwards them to the
//!   owner, and answers the client only once the owner acknowledged them; what an owner does not
//!   take stays here (a later sweep hands it on). A request is taken or refused whole: the
//!   buffer's `block_on_overflow` check comes before anything is forwarded.
//! - **Hand-off.** When the peer set changes, and every resolution interval, a sampler takes every
//!   buffered trace it no longer owns out of its buffer and sends it to the owner in requests of
//!   at most [`MAX_PEER_REQUEST`] bytes (well under any receiver's 4 MiB limit), one at a time per
//!   peer and each acknowledged before the next: a slow peer slows the hand-off, not the other
//!   way round. Each trace carries how long it still had to wait, so moving does not restart its
//!   `decision_wait`; decisions whose trace moved go with it, so the new owner's late spans
//!   follow them. A trace counts as handed off only once acknowledged; one that a peer refuses is
//!   tried on whoever owns it next, and one that nobody takes goes back into this buffer, to be
//!   decided here. Nothing is dropped.
//! - **Leaving.** On SIGTERM a sampler removes itself from its own ring, hands off its whole
//!   buffer, and keeps its receivers open (forwarding everything) until the resolver no longer
//!   lists it and balancers have had a quiet period to notice, bounded by its share of the
//!   shutdown grace period. Meanwhile it refuses peer traffic with [`LEAVING_MESSAGE`]; a peer
//!   that hears this routes around it, so two samplers leaving at once do not pass traces back
//!   and forth.
//! - **No loops.** Peer requests carry the `tailgate-forwarded` hop count. A sampler that is not
//!   leaving buffers a peer request whatever its own ring says (its view may briefly differ from
//!   the sender's); the sweep moves such traces once the views agree. A peer request is never
//!   forwarded again, so a span crosses at most one hop between samplers.
//!
//! [`LEAVING_MESSAGE`]: crate::otlp::LEAVING_MESSAGE

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::buffer::{Carried, HandedTrace, TraceBuffer};
use crate::exporter::Refused;
use crate::otlp::handoff::{self, MovedDecision, Timing, DECISION_BYTES};
use crate::otlp::{
    parse_export_request, Chunk, EncodedBatch, Incoming, ParsedRequest, Refusal, RequestBuilder,
    SpanRef,
};
use crate::routing::peers::{Owner, PeerView, Peers};
use crate::routing::{BackendTemplate, Resolver, ResolverSettings};
use crate::telemetry::catalog;

pub use crate::otlp::FORWARDED_HEADER;

/// Largest request a sampler sends a peer: a quarter of the default 4 MiB receive limit, so a
/// peer with default limits always takes it whatever the framing adds. A sampler whose own gRPC
/// receiver takes less uses a quarter of that (peers are assumed to run the same config).
pub const MAX_PEER_REQUEST: usize = 1 << 20;

/// Rounds of handing off what peers refused before the rest goes back into this buffer.
const HAND_OFF_ROUNDS: usize = 3;

/// `processors.tail_sampling.cluster`, validated.
#[derive(Debug, Clone)]
pub struct ClusterSettings {
    /// This sampler exactly as the resolver lists it.
    pub me: String,
    pub resolver: ResolverSettings,
    /// How to reach a peer.
    pub peers: BackendTemplate,
    /// After the resolver stops listing a leaving sampler, how long it keeps forwarding.
    pub quiet_period: Duration,
    /// How often buffered traces owned elsewhere are handed off.
    pub sweep_interval: Duration,
    /// Largest request sent to a peer ([`MAX_PEER_REQUEST`], or less with small receive limits).
    pub max_request_bytes: usize,
}

/// The cluster's metric handles.
struct ClusterMetrics {
    forwarded_spans: metrics::Counter,
    forward_failed_spans: metrics::Counter,
    handed_off_traces: metrics::Counter,
    handed_off_spans: metrics::Counter,
    requests_ok: metrics::Counter,
    requests_failed: metrics::Counter,
    bytes: metrics::Counter,
    latency: metrics::Histogram,
    kept_traces: metrics::Counter,
    decisions_sent: metrics::Counter,
    decisions_adopted: metrics::Counter,
    refused_leaving: metrics::Counter,
}

impl ClusterMetrics {
    fn register() -> Self {
        use catalog::*;
        Self {
            forwarded_spans: CLUSTER_FORWARDED_SPANS.counter(&[]),
            forward_failed_spans: CLUSTER_FORWARD_FAILED_SPANS.counter(&[]),
            handed_off_traces: CLUSTER_HANDED_OFF_TRACES.counter(&[]),
            handed_off_spans: CLUSTER_HANDED_OFF_SPANS.counter(&[]),
            requests_ok: CLUSTER_PEER_REQUESTS.counter(&["ok"]),
            requests_failed: CLUSTER_PEER_REQUESTS.counter(&["failed"]),
            bytes: CLUSTER_PEER_BYTES.counter(&[]),
            latency: CLUSTER_PEER_REQUEST_SECONDS.histogram(&[]),
            kept_traces: CLUSTER_KEPT_TRACES.counter(&[]),
            decisions_sent: CLUSTER_MOVED_DECISIONS.counter(&["sent"]),
            decisions_adopted: CLUSTER_MOVED_DECISIONS.counter(&["adopted"]),
            refused_leaving: CLUSTER_REFUSED_WHILE_LEAVING.counter(&[]),
        }
    }
}

/// One sampler's view of its peers, and the forwarding and hand-off built on it.
pub struct Cluster {
    peers: Peers,
    buffer: Arc<TraceBuffer>,
    resolved: watch::Receiver<Vec<String>>,
    quiet_period: Duration,
    sweep_interval: Duration,
    max_request: usize,
    metrics: ClusterMetrics,
    /// One hand-off at a time: a sweep and a peer change must not take the same traces twice.
    hand_off: tokio::sync::Mutex<()>,
    _resolver: Resolver,
}

/// Whether a hand-off also sends the decisions of traces that moved: only when the peer set
/// changed (a decision moves once; the periodic sweep moves traces only).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decisions {
    Move,
    Stay,
}

/// A request's spans by who takes them.
struct Split<'a> {
    mine: Vec<SpanRef>,
    theirs: HashMap<usize, Vec<&'a SpanRef>>,
}

impl Cluster {
    /// Starts resolving peers and handing off traces whenever the peer set changes.
    pub fn start(
        settings: &ClusterSettings,
        buffer: Arc<TraceBuffer>,
        shutdown: CancellationToken,
    ) -> Arc<Cluster> {
        let (resolver, resolved) = Resolver::start(&settings.resolver, shutdown.clone());
        let cluster = Arc::new(Cluster {
            peers: Peers::new(&settings.me, settings.peers.client.clone()),
            buffer,
            resolved: resolved.clone(),
            quiet_period: settings.quiet_period,
            sweep_interval: settings.sweep_interval,
            max_request: settings.max_request_bytes,
            metrics: ClusterMetrics::register(),
            hand_off: tokio::sync::Mutex::new(()),
            _resolver: resolver,
        });
        let watcher = Arc::clone(&cluster);
        tokio::spawn(async move { watcher.follow_peers(resolved, shutdown).await });
        cluster
    }

    async fn follow_peers(
        &self,
        mut resolved: watch::Receiver<Vec<String>>,
        shutdown: CancellationToken,
    ) {
        let mut sweep = tokio::time::interval(self.sweep_interval);
        sweep.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            let current = resolved.borrow_and_update().clone();
            if self.peers.set_resolved(&current) {
                self.hand_off(Decisions::Move).await;
            }
            tokio::select! {
                _ = shutdown.cancelled() => return,
                changed = resolved.changed() => if changed.is_err() { return },
                // Spans of peer requests are buffered even when this sampler's ring names another
                // owner (that is what stops two samplers with different views bouncing them).
                // Once the views agree, the sweep moves such traces to their owner.
                _ = sweep.tick() => {
                    let changed = self.peers.expire_marks();
                    self.hand_off(if changed { Decisions::Move } else { Decisions::Stay }).await;
                }
            }
        }
    }

    /// Takes a request a receiver accepted: the spans this sampler owns are buffered, the rest
    /// forwarded to their owners (or kept here when an owner does not take them).
    pub async fn accept(&self, request: Incoming<'_>) -> Result<(), Refusal> {
        if request.hops > 0 {
            return self.accept_from_peer(request).await;
        }
        let view = self.peers.view();
        let split = split_by_owner(&view, &request.parsed.spans);
        if split.theirs.is_empty() {
            return self.ingest(request.parsed, request.body, None).await;
        }
        // Taken or refused whole: nothing is forwarded if the rest would be refused.
        self.buffer
            .wait_for_room(&split.mine)
            .await
            .map_err(|_| Refusal::Full)?;
        let mut keep = split.mine;
        for (peer, spans) in split.theirs {
            keep.extend(
                self.forward(&view, peer, &request.parsed, request.body, spans)
                    .await,
            );
        }
        let parsed = ParsedRequest {
            origins: request.parsed.origins,
            spans: keep,
        };
        self.ingest(parsed, request.body, None).await
    }

    /// A hand-off or forwarded spans from a peer: buffered here whatever this sampler's ring
    /// says, with the deadlines and decisions that came along; refused while leaving.
    async fn accept_from_peer(&self, request: Incoming<'_>) -> Result<(), Refusal> {
        if self.peers.is_leaving() {
            self.metrics.refused_leaving.increment(1);
            return Err(Refusal::Leaving);
        }
        let extensions = handoff::read(request.body);
        if !extensions.decisions.is_empty() {
            let adopted = self.buffer.adopt_decisions(&extensions.decisions);
            self.metrics.decisions_adopted.increment(adopted as u64);
        }
        let carried: Carried = extensions
            .timings
            .iter()
            .map(|t| (t.trace_id, Duration::from_millis(t.remaining_ms)))
            .collect();
        let carried = (!carried.is_empty()).then_some(&carried);
        self.ingest(request.parsed, request.body, carried).await
    }

    async fn ingest(
        &self,
        parsed: ParsedRequest,
        body: &[u8],
        carried: Option<&Carried>,
    ) -> Result<(), Refusal> {
        self.buffer
            .ingest_with(parsed, body, carried)
            .await
            .map(|_| ())
            .map_err(|_| Refusal::Full)
    }

    /// Forwards `spans` of a client request to `peer` in bounded requests; returns the spans it
    /// did not take, for this sampler to keep.
    async fn forward(
        &self,
        view: &PeerView,
        peer: usize,
        request: &ParsedRequest,
        body: &[u8],
        spans: Vec<&SpanRef>,
    ) -> Vec<SpanRef> {
        let mut kept = Vec::new();
        for part in bounded_parts(&spans, self.max_request) {
            let mut builder = RequestBuilder::new();
            let framed: Vec<Vec<u8>> = part
                .iter()
                .map(|s| {
                    let mut run = Vec::new();
                    crate::otlp::write::put_framed_span(&mut run, &body[s.range.0..s.range.1]);
                    run
                })
                .collect();
            for (span, run) in part.iter().zip(&framed) {
                builder.push(&request.origins[span.origin], run, 1);
            }
            let batch = builder.finish();
            match self.send(view, peer, &batch).await {
                Ok(()) => self.metrics.forwarded_spans.increment(batch.spans as u64),
                Err(_) => {
                    self.metrics
                        .forward_failed_spans
                        .increment(batch.spans as u64);
                    kept.extend(part.iter().map(|s| **s));
                }
            }
        }
        kept
    }

    /// Sends one request to a peer and waits for its answer, counting it; a peer that says it is
    /// leaving is routed around from now on.
    async fn send(
        &self,
        view: &PeerView,
        peer: usize,
        batch: &EncodedBatch,
    ) -> Result<(), Refused> {
        let started = Instant::now();
        let result = view.send(peer, batch, 1).await;
        self.metrics.latency.record(started.elapsed().as_secs_f64());
        self.metrics.bytes.increment(batch.body.len() as u64);
        match result {
            Ok(()) => {
                self.metrics.requests_ok.increment(1);
                Ok(())
            }
            Err(error) => {
                self.metrics.requests_failed.increment(1);
                if error.refused == Refused::PeerLeaving {
                    self.peers.mark_peer_leaving(view.endpoint(peer));
                } else {
                    tracing::debug!(peer = view.endpoint(peer), error = %error.message, "peer request failed");
                }
                Err(error.refused)
            }
        }
    }

    /// Sends every buffered trace this sampler no longer owns to its owner (and, when the peer
    /// set changed, the remembered decisions of traces that moved); what no owner takes goes
    /// back into the buffer.
    pub async fn hand_off(&self, decisions: Decisions) {
        let _one_at_a_time = self.hand_off.lock().await;
        let view = self.peers.view();
        if !view.has_peers() {
            return;
        }
        let traces = self.buffer.take_traces(|id| view.owner(id) != Owner::Me);
        if decisions == Decisions::Move {
            let moved = self
                .buffer
                .foreign_decisions(|position| view.owner_at(position) != Owner::Me);
            if !moved.is_empty() {
                self.send_decisions(&view, moved).await;
            }
        }
        if traces.is_empty() {
            return;
        }
        let (count, spans) = (traces.len(), span_count(&traces));
        let left = self.hand_off_traces(traces).await;
        let kept = left.len();
        if kept > 0 {
            static KEPT_LOG: std::sync::LazyLock<crate::telemetry::LogEvery> =
                std::sync::LazyLock::new(|| {
                    crate::telemetry::LogEvery::new(std::time::Duration::from_secs(10))
                });
            self.metrics.kept_traces.increment(kept as u64);
            if KEPT_LOG.ready() {
                tracing::warn!(
                    traces = kept,
                    "no peer took these traces; they stay here and are decided here (counted in tailgate_cluster_kept_traces)"
                );
            }
            self.put_back(left).await;
        }
        tracing::info!(
            traces = count - kept,
            spans,
            kept,
            "handed off traces to their new owners"
        );
    }

    /// Tries each trace on its owner, then what was refused on whoever owns it next, for a few
    /// rounds; returns what no peer took.
    async fn hand_off_traces(&self, mut traces: Vec<HandedTrace>) -> Vec<HandedTrace> {
        for round in 0..HAND_OFF_ROUNDS {
            if round > 0 {
                tokio::time::sleep(Duration::from_millis(100 << round)).await;
            }
            let view = self.peers.view();
            let mut by_owner: HashMap<usize, Vec<HandedTrace>> = HashMap::new();
            let mut left = Vec::new();
            for trace in traces {
                match view.owner(&trace.id) {
                    Owner::Peer(peer) => by_owner.entry(peer).or_default().push(trace),
                    Owner::Me => left.push(trace),
                }
            }
            let sends = by_owner
                .into_iter()
                .map(|(peer, traces)| self.hand_off_to(&view, peer, traces));
            for refused in futures_util::future::join_all(sends).await {
                left.extend(refused);
            }
            traces = left;
            if traces.is_empty() || !self.peers.view().has_peers() {
                break;
            }
            // Traces the current view gives this sampler are home: no more rounds for them.
            let view = self.peers.view();
            if traces.iter().all(|t| view.owner(&t.id) == Owner::Me) {
                break;
            }
        }
        traces
    }

    /// Hands traces to one peer, one bounded request at a time; returns what it did not take.
    async fn hand_off_to(
        &self,
        view: &PeerView,
        peer: usize,
        traces: Vec<HandedTrace>,
    ) -> Vec<HandedTrace> {
        let mut refused = Vec::new();
        let mut pending = traces.into_iter().peekable();
        while pending.peek().is_some() {
            let (batch, part) = next_hand_off_request(&mut pending, self.max_request);
            match self.send(view, peer, &batch).await {
                Ok(()) => {
                    self.metrics.handed_off_traces.increment(part.len() as u64);
                    self.metrics.handed_off_spans.increment(batch.spans as u64);
                }
                Err(_) => {
                    refused.extend(part);
                    // A peer that failed once is not sent the rest now: they go to the next round.
                    refused.extend(pending);
                    break;
                }
            }
        }
        refused
    }

    /// Sends remembered decisions to the owners of their traces (best effort: a decision that
    /// does not arrive only means a late span starts a new trace there).
    async fn send_decisions(&self, view: &PeerView, decisions: Vec<(u32, MovedDecision)>) {
        let mut by_owner: HashMap<usize, Vec<MovedDecision>> = HashMap::new();
        for (position, d) in decisions {
            if let Owner::Peer(peer) = view.owner_at(position) {
                by_owner.entry(peer).or_default().push(d);
            }
        }
        for (peer, decisions) in by_owner {
            for part in decisions.chunks((self.max_request / DECISION_BYTES).max(1)) {
                let body = handoff::append(&[], &[], part);
                let batch = EncodedBatch { body, spans: 0 };
                if self.send(view, peer, &batch).await.is_ok() {
                    self.metrics.decisions_sent.increment(part.len() as u64);
                }
            }
        }
    }

    /// Puts traces no peer took back into the buffer, with the deadlines they had.
    async fn put_back(&self, traces: Vec<HandedTrace>) {
        let mut pending = traces.into_iter().peekable();
        while pending.peek().is_some() {
            let (batch, part) = next_hand_off_request(&mut pending, self.max_request);
            let Ok(parsed) = parse_export_request(&batch.body) else {
                continue;
            };
            let carried: Carried = part.iter().map(|t| (t.id, t.remaining)).collect();
            // These were buffered here before: taken back even at a limit.
            self.buffer.put_back(parsed, &batch.body, &carried).await;
        }
    }

    /// Leaves the cluster: stops owning traces, hands off the buffer, and returns once the
    /// resolver no longer lists this sampler and the quiet period has passed (or `deadline`).
    /// With no other peer, the buffer stays here and is decided at shutdown.
    pub async fn leave(&self, deadline: Instant) {
        self.peers.set_leaving();
        if !self.peers.view().has_peers() {
            tracing::info!("no other sampler to hand off to; deciding buffered traces locally");
            return;
        }
        self.hand_off(Decisions::Move).await;
        let mut resolved = self.resolved.clone();
        while resolved
            .borrow_and_update()
            .iter()
            .any(|e| e == self.peers.me())
        {
            if tokio::time::timeout_at(deadline, resolved.changed())
                .await
                .is_err()
            {
                tracing::warn!("still listed by the resolver at the end of the leave period");
                return;
            }
        }
        tracing::info!(quiet = ?self.quiet_period, "no longer listed by the resolver; forwarding while balancers catch up");
        tokio::time::sleep_until((Instant::now() + self.quiet_period).min(deadline)).await;
    }
}

/// A request's spans by owner.
fn split_by_owner<'a>(view: &PeerView, spans: &'a [SpanRef]) -> Split<'a> {
    let mut mine = Vec::with_capacity(spans.len());
    let mut theirs: HashMap<usize, Vec<&SpanRef>> = HashMap::new();
    for span in spans {
        match view.owner(&span.info.trace_id) {
            Owner::Me => mine.push(*span),
            Owner::Peer(peer) => theirs.entry(peer).or_default().push(span),
        }
    }
    Split { mine, theirs }
}

/// `spans` cut into runs of at most about `limit` encoded bytes (a span larger than the limit
/// goes alone).
fn bounded_parts<'a, 'b>(spans: &'b [&'a SpanRef], limit: usize) -> Vec<&'b [&'a SpanRef]> {
    let mut parts = Vec::new();
    let (mut start, mut bytes) = (0, 0);
    for (i, span) in spans.iter().enumerate() {
        let size = span.range.1 - span.range.0 + 8;
        if i > start && bytes + size > limit {
            parts.push(&spans[start..i]);
            start = i;
            bytes = 0;
        }
        bytes += size;
    }
    if start < spans.len() {
        parts.push(&spans[start..]);
    }
    parts
}

fn span_count(traces: &[HandedTrace]) -> usize {
    traces
        .iter()
        .flat_map(|t| t.chunks.iter().map(|c| c.spans as usize))
        .sum()
}

/// The next hand-off request from `pending`: whole traces while they fit in `limit` bytes (at
/// least one), with their timings.
fn next_hand_off_request(
    pending: &mut std::iter::Peekable<impl Iterator<Item = HandedTrace>>,
    limit: usize,
) -> (EncodedBatch, Vec<HandedTrace>) {
    let mut part: Vec<HandedTrace> = Vec::new();
    let mut bytes = 0;
    while let Some(next) = pending.peek() {
        let size = trace_bytes(&next.chunks) + 32;
        if !part.is_empty() && bytes + size > limit {
            break;
        }
        bytes += size;
        part.push(pending.next().expect("peeked"));
    }
    let chunks: Vec<&Chunk> = part.iter().flat_map(|t| &t.chunks).collect();
    let mut builder = RequestBuilder::new();
    for chunk in &chunks {
        builder.push(&chunk.origin, &chunk.run, chunk.spans as usize);
    }
    let spans_request = builder.finish();
    let timings: Vec<Timing> = part
        .iter()
        .map(|t| Timing {
            trace_id: t.id,
            remaining_ms: t.remaining.as_millis() as u64,
        })
        .collect();
    let body = handoff::append(&spans_request.body, &timings, &[]);
    (
        EncodedBatch {
            body,
            spans: spans_request.spans,
        },
        part,
    )
}

/// Bytes a trace's chunks take in a request (spans plus their resources and scopes, counted per
/// chunk: an upper bound).
fn trace_bytes(chunks: &[Chunk]) -> usize {
    chunks
        .iter()
        .map(|c| c.run.len() + c.origin.heap_bytes() + 16)
        .sum()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::otlp::testing::{request, span, S1};

    fn traces(n: u8, spans_each: usize, span_bytes: usize) -> Vec<HandedTrace> {
        (1..=n)
            .map(|t| {
                let id = [t; 16];
                let mut s = span(&id, &S1, &[], 0);
                s.extend(std::iter::repeat_n(0u8, 0));
                let body = request(vec![(
                    vec![],
                    vec![(0..spans_each)
                        .map(|_| {
                            let mut padded = span(&id, &S1, &[], 0);
                            // A `name` field (5) of filler brings the span to about span_bytes.
                            padded.push(0x2a);
                            crate::otlp::wire::put_varint(&mut padded, span_bytes as u64);
                            padded.extend(std::iter::repeat_n(b'x', span_bytes));
                            padded
                        })
                        .collect()],
                )]);
                let parsed = parse_export_request(&body).unwrap();
                let origins: Vec<Arc<crate::otlp::Origin>> =
                    parsed.origins.into_iter().map(Arc::new).collect();
                let groups = crate::otlp::group::group_by_trace(&parsed.spans, &origins, &body);
                HandedTrace {
                    id,
                    chunks: groups.into_iter().flat_map(|g| g.chunks).collect(),
                    remaining: Duration::from_millis(1000 + u64::from(t)),
                }
            })
            .collect()
    }

    #[test]
    fn hand_off_requests_stay_under_the_limit_and_carry_every_trace_and_its_deadline() {
        // 40 traces of 10 spans of ~10 KB: 4 MB, far over one request.
        let all = traces(40, 10, 10_000);
        let total_spans = span_count(&all);
        let mut pending = all.into_iter().peekable();
        let mut seen_traces = 0;
        let mut seen_spans = 0;
        let mut requests = 0;
        while pending.peek().is_some() {
            let (batch, part) = next_hand_off_request(&mut pending, MAX_PEER_REQUEST);
            requests += 1;
            assert!(
                batch.body.len() <= MAX_PEER_REQUEST + 64 * 1024,
                "request of {} bytes",
                batch.body.len()
            );
            let parsed = parse_export_request(&batch.body).unwrap();
            assert_eq!(parsed.spans.len(), batch.spans);
            let found = handoff::read(&batch.body);
            assert_eq!(found.timings.len(), part.len());
            for (timing, trace) in found.timings.iter().zip(&part) {
                assert_eq!(timing.trace_id, trace.id);
                assert_eq!(timing.remaining_ms, trace.remaining.as_millis() as u64);
            }
            seen_traces += part.len();
            seen_spans += batch.spans;
        }
        assert_eq!(seen_traces, 40);
        assert_eq!(seen_spans, total_spans);
        assert!(requests >= 4, "{requests} requests for 4 MB");
    }

    #[test]
    fn a_trace_larger_than_the_limit_goes_alone() {
        let big = traces(1, 30, 50_000);
        let mut pending = big.into_iter().peekable();
        let (batch, part) = next_hand_off_request(&mut pending, MAX_PEER_REQUEST);
        assert_eq!(part.len(), 1);
        assert_eq!(batch.spans, 30);
        assert!(pending.peek().is_none());
    }

    #[test]
    fn forwarded_parts_are_bounded() {
        let refs: Vec<SpanRef> = (0..100)
            .map(|i| SpanRef {
                range: (i * 50_000, (i + 1) * 50_000),
                origin: 0,
                info: crate::otlp::SpanInfo {
                    trace_id: [1; 16],
                    start_unix_nano: 0,
                    end_unix_nano: 0,
                    status_code: 0,
                    is_root: false,
                },
            })
            .collect();
        let spans: Vec<&SpanRef> = refs.iter().collect();
        let parts = bounded_parts(&spans, MAX_PEER_REQUEST);
        assert_eq!(parts.iter().map(|p| p.len()).sum::<usize>(), 100);
        for p in &parts {
            let bytes: usize = p.iter().map(|s| s.range.1 - s.range.0).sum();
            assert!(bytes <= MAX_PEER_REQUEST, "{bytes}");
        }
    }
}
