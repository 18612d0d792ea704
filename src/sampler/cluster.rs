//! Sampler-to-sampler coordination, so traces stay whole while the sampler tier scales, shrinks
//! and rolls (`processors.tail_sampling.cluster`, a tailgate extension).
//!
//! The problem: balancers route each trace to the ring owner of its trace ID. When the sampler set
//! changes, the owner of a trace that is already buffered can change, and its later spans go to
//! the new owner — two samplers would each decide half a trace.
//!
//! The design: every sampler resolves the same peer set as the balancers (same resolver config
//! shape, same ring), so every node computes the same owner for a trace.
//!
//! - **Forwarding.** A sampler receiving spans of a trace it does not own forwards them to the
//!   owner instead of buffering them (the balancers may not have seen the change yet).
//! - **Hand-off.** When the peer set changes, a sampler takes every buffered trace it no longer
//!   owns out of its buffer and sends it to the new owner, which adds it to whatever it already
//!   holds for that trace.
//! - **Leaving.** On SIGTERM a sampler removes itself from its own ring, hands off its whole
//!   buffer, and keeps its receivers open — forwarding everything — until the resolver no longer
//!   lists it and balancers have had two resolution intervals to notice, bounded by half the
//!   shutdown grace period. Only then does it stop receiving and exit.
//! - **No loops.** Forwarded and handed-off requests carry the `tailgate-forwarded` header; a
//!   sampler that is not leaving buffers such a request whatever its ring says, so two samplers
//!   whose views briefly differ cannot bounce spans between them on every request.
//! - **Convergence.** Every resolution interval a sweep hands off buffered traces this sampler
//!   does not own (forwarded spans that arrived while views differed). Views converge within
//!   one interval, so with `decision_wait` well above the interval every trace is whole at its
//!   owner before its deadline.
//!
//! What this does not do: a handed-off trace's decision timer restarts at the new owner (it is
//! decided up to one `decision_wait` later), and decisions already taken are not handed off (a
//! late span of a decided trace that reaches a new owner starts a new trace there).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::buffer::TraceBuffer;
use crate::otlp::{ParsedRequest, SpanRef};
use crate::routing::{BackendTemplate, Resolver, ResolverSettings, Router, RoutingKey};
use crate::telemetry::catalog;

pub use crate::otlp::FORWARDED_HEADER;

/// `processors.tail_sampling.cluster`, validated.
#[derive(Debug, Clone)]
pub struct ClusterSettings {
    /// This sampler exactly as the resolver lists it.
    pub me: String,
    pub resolver: ResolverSettings,
    /// How to reach a peer; its requests carry [`FORWARDED_HEADER`].
    pub peers: BackendTemplate,
    /// After the resolver stops listing a leaving sampler, how long it keeps forwarding.
    pub quiet_period: Duration,
    /// How often buffered traces owned elsewhere are handed off.
    pub sweep_interval: Duration,
}

/// One sampler's view of its peers.
pub struct Cluster {
    me: String,
    router: Router,
    buffer: Arc<TraceBuffer>,
    leaving: AtomicBool,
    peers: watch::Receiver<Vec<String>>,
    quiet_period: Duration,
    sweep_interval: Duration,
    _resolver: Resolver,
}

impl Cluster {
    /// Starts resolving peers and handing off traces whenever the peer set changes.
    pub fn start(
        settings: &ClusterSettings,
        buffer: Arc<TraceBuffer>,
        shutdown: CancellationToken,
    ) -> Arc<Cluster> {
        let (resolver, peers) = Resolver::start(&settings.resolver, shutdown.clone());
        let router = Router::new(
            "tail_sampling/cluster",
            RoutingKey::TraceId,
            settings.peers.clone(),
        );
        let cluster = Arc::new(Cluster {
            me: settings.me.clone(),
            router,
            buffer,
            leaving: AtomicBool::new(false),
            peers: peers.clone(),
            quiet_period: settings.quiet_period,
            sweep_interval: settings.sweep_interval,
            _resolver: resolver,
        });
        let watcher = Arc::clone(&cluster);
        tokio::spawn(async move {
            let current = peers.borrow().clone();
            watcher.apply_peers(&current).await;
            watcher.follow_peers(peers, shutdown).await
        });
        cluster
    }

    async fn follow_peers(
        &self,
        mut peers: watch::Receiver<Vec<String>>,
        shutdown: CancellationToken,
    ) {
        let mut sweep = tokio::time::interval(self.sweep_interval);
        sweep.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                changed = peers.changed() => {
                    if changed.is_err() {
                        return;
                    }
                    let endpoints = peers.borrow_and_update().clone();
                    self.apply_peers(&endpoints).await;
                }
                // Forwarded spans are buffered even when this sampler's ring names another owner
                // (that is what stops two samplers with different views bouncing them). Once
                // the views converge, a periodic sweep moves such traces to their owner.
                _ = sweep.tick() => self.hand_off().await,
            }
        }
    }

    /// Installs a peer set (minus this sampler when leaving) and hands off what moved.
    async fn apply_peers(&self, endpoints: &[String]) {
        let leaving = self.leaving.load(Ordering::SeqCst);
        let ring: Vec<String> = endpoints
            .iter()
            .filter(|e| !(leaving && **e == self.me))
            .cloned()
            .collect();
        if !leaving && !ring.is_empty() && !ring.contains(&self.me) {
            tracing::warn!(
                endpoint = %self.me,
                peers = ?ring,
                "this sampler's cluster.endpoint is not among the resolved peers: it will forward every span"
            );
        }
        if self.router.set_endpoints(&ring) {
            self.hand_off().await;
        }
    }

    /// Whether this sampler buffers `trace` itself. With no peers known (the resolver has not
    /// answered yet) a sampler keeps everything rather than refuse spans.
    fn owns(&self, trace: &[u8; 16]) -> bool {
        if self.leaving.load(Ordering::SeqCst) {
            return false;
        }
        match self.router.owner_of_trace(trace) {
            Some(owner) => owner == self.me,
            None => true,
        }
    }

    /// Splits a request: spans of traces this sampler owns are returned for buffering; the rest
    /// are forwarded to their owners. A forwarded request is kept whole unless this sampler is
    /// leaving.
    pub async fn split(
        &self,
        mut request: ParsedRequest,
        body: &[u8],
        forwarded: bool,
    ) -> ParsedRequest {
        let leaving = self.leaving.load(Ordering::SeqCst);
        if forwarded && !leaving {
            return request;
        }
        let (mine, theirs): (Vec<SpanRef>, Vec<SpanRef>) = request
            .spans
            .drain(..)
            .partition(|s| self.owns(&s.info.trace_id));
        if !theirs.is_empty() {
            let others = ParsedRequest {
                origins: request.origins.clone(),
                spans: theirs.clone(),
            };
            match self.router.route_request(others, body).await {
                Ok(spans) => catalog::CLUSTER_FORWARDED_SPANS
                    .counter(&[])
                    .increment(spans as u64),
                // No other peer is known: keep the spans here rather than lose them.
                Err(_) => request.spans.extend(theirs),
            }
        }
        request.spans.extend(mine);
        request
    }

    /// Sends every buffered trace this sampler no longer owns to its owner.
    pub async fn hand_off(&self) {
        let traces = self.buffer.take_traces(|id| !self.owns(id));
        if traces.is_empty() {
            return;
        }
        let count = traces.len();
        let spans: usize = traces
            .iter()
            .flat_map(|(_, chunks)| chunks.iter().map(|c| c.spans as usize))
            .sum();
        match self.router.route_traces(traces).await {
            Ok(_) => {
                catalog::CLUSTER_HANDED_OFF_TRACES
                    .counter(&[])
                    .increment(count as u64);
                catalog::CLUSTER_HANDED_OFF_SPANS
                    .counter(&[])
                    .increment(spans as u64);
                tracing::info!(
                    traces = count,
                    spans,
                    "handed off traces to their new owners"
                );
            }
            Err(_) => {
                // Only reachable if every peer vanished between the ownership check and here.
                catalog::SPANS_DROPPED
                    .counter(&["no_peer"])
                    .increment(spans as u64);
                tracing::error!(traces = count, spans, "no peer to hand traces off to; dropped (counted in tailgate_spans_dropped_total)");
            }
        }
    }

    /// Leaves the cluster: stops owning traces, hands off the buffer, and returns once the
    /// resolver no longer lists this sampler and the quiet period has passed (or `deadline`).
    /// Returns false, leaving nothing handed off, when there is no other peer to leave to.
    pub async fn leave(&self, deadline: Instant) -> bool {
        let others: Vec<String> = self
            .router
            .endpoints()
            .into_iter()
            .filter(|e| *e != self.me)
            .collect();
        if others.is_empty() {
            tracing::info!("no other sampler to hand off to; deciding buffered traces locally");
            return false;
        }
        self.leaving.store(true, Ordering::SeqCst);
        let current = self.peers.borrow().clone();
        self.apply_peers(&current).await;
        self.hand_off().await;
        let mut peers = self.peers.clone();
        while peers.borrow_and_update().contains(&self.me) {
            if tokio::time::timeout_at(deadline, peers.changed())
                .await
                .is_err()
            {
                tracing::warn!("still listed by the resolver at the end of the leave period");
                return true;
            }
        }
        tracing::info!(quiet = ?self.quiet_period, "no longer listed by the resolver; forwarding while balancers catch up");
        tokio::time::sleep_until((Instant::now() + self.quiet_period).min(deadline)).await;
        true
    }

    /// Drains the forwarding queues until `deadline`.
    pub async fn shutdown(&self, deadline: Instant) {
        self.router.shutdown(deadline).await;
    }
}
