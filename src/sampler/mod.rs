//! The sampler tier: `processors.tail_sampling`. Receivers hand it requests ([`Sampler`] is their
//! [`TraceConsumer`]); the [`buffer`] holds every trace until its decision and sends kept traces
//! to the export pipeline; with `cluster` (a tailgate extension) the [`cluster`] keeps traces
//! whole while the sampler set changes, forwarding spans this sampler does not own and handing
//! off buffered traces whose owner changed.
//!
//! - [`config`]: the `tail_sampling` block in the Collector's shape, validated into
//!   [`SamplerSettings`];
//! - [`buffer`]: the sharded trace store, its deadlines, limits and deciders;
//! - [`cluster`]: sampler-to-sampler coordination.

pub mod buffer;
pub mod cluster;
pub mod config;

use std::sync::Arc;

use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

pub use buffer::{BufferCompression, BufferSettings, TraceBuffer};
pub use cluster::{Cluster, ClusterSettings, Decisions, FORWARDED_HEADER};

use crate::otlp::{BoxFuture, Incoming, Refusal, SpanBatch, TraceConsumer};
use crate::policy::{PolicyConfig, PolicySet};

/// A sampler, validated.
#[derive(Debug, Clone)]
pub struct SamplerSettings {
    pub buffer: BufferSettings,
    pub policies: Vec<PolicyConfig>,
    pub sample_on_first_match: bool,
    pub cluster: Option<ClusterSettings>,
}

/// The running sampler: the buffer, its deciders, and the cluster when configured.
pub struct Sampler {
    buffer: Arc<TraceBuffer>,
    cluster: Option<Arc<Cluster>>,
    deciders: std::sync::Mutex<Vec<JoinHandle<()>>>,
    deciders_stop: CancellationToken,
}

impl Sampler {
    /// Starts the buffer's deciders and, with `cluster`, the peer resolver. Kept traces go to
    /// `out`. Cluster tasks stop when `background` is cancelled.
    pub fn start(
        settings: &SamplerSettings,
        out: mpsc::Sender<SpanBatch>,
        background: CancellationToken,
    ) -> Sampler {
        let policies = PolicySet::new(&settings.policies, settings.sample_on_first_match);
        let buffer = TraceBuffer::new(settings.buffer.clone(), policies, out);
        let deciders_stop = CancellationToken::new();
        let deciders = buffer.spawn_deciders(deciders_stop.clone());
        let cluster = settings
            .cluster
            .as_ref()
            .map(|c| Cluster::start(c, Arc::clone(&buffer), background));
        Sampler {
            buffer,
            cluster,
            deciders: std::sync::Mutex::new(deciders),
            deciders_stop,
        }
    }

    /// Applies a reloaded sampler config: its policies and buffer settings from now on (see
    /// [`TraceBuffer::reload`]). The caller has checked that nothing that needs a restart changed.
    pub fn reload(&self, settings: &SamplerSettings) {
        let policies = PolicySet::new(&settings.policies, settings.sample_on_first_match);
        self.buffer.reload(settings.buffer.clone(), policies);
    }

    /// Spans still buffered (undecided).
    pub fn buffered_spans(&self) -> usize {
        self.buffer.buffered_spans()
    }

    /// The first phase of shutdown for a clustered sampler: stop owning traces, hand the buffer
    /// to the peers, and keep forwarding what still arrives until the balancers have noticed, at
    /// most until `by`. Does nothing without `cluster`.
    pub async fn leave(&self, by: Instant) {
        if let Some(cluster) = &self.cluster {
            cluster.leave(by).await;
        }
    }

    /// Settles the buffer once the receivers have stopped: hands off what a peer now owns,
    /// stops the deciders, decides (or drops, with `drop_pending_traces_on_shutdown`) every
    /// trace still buffered, and drains the cluster's forwarding queues until `deadline`.
    pub async fn settle(&self, deadline: Instant) {
        if let Some(cluster) = &self.cluster {
            // What arrived while leaving; acknowledged requests only, so nothing waits after.
            let _ = tokio::time::timeout_at(deadline, cluster.hand_off(Decisions::Move)).await;
        }
        self.deciders_stop.cancel();
        let deciders =
            std::mem::take(&mut *self.deciders.lock().unwrap_or_else(|p| p.into_inner()));
        for task in deciders {
            let _ = task.await;
        }
        tracing::info!(
            traces = self.buffer.live_traces(),
            "settling buffered traces"
        );
        self.buffer.drain().await;
    }
}

impl TraceConsumer for Sampler {
    fn consume<'a>(&'a self, request: Incoming<'a>) -> BoxFuture<'a, Result<(), Refusal>> {
        Box::pin(async move {
            match &self.cluster {
                Some(cluster) => cluster.accept(request).await,
                None => self
                    .buffer
                    .ingest(request.parsed, request.body)
                    .await
                    .map(|_| ())
                    .map_err(|_| Refusal::Full),
            }
        })
    }
}
