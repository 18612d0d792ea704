//! Wires the stages of one pipeline and runs them until shutdown.
//!
//! The pipeline decides the role: with the `loadbalancing` exporter this process is a front-tier
//! balancer (receiver → router → one exporter per sampler); otherwise a sampler (receiver →
//! buffer → batcher → exporters), optionally coordinating with its peers (`cluster`), or a
//! pass-through without `tail_sampling`.
//!
//! Start-up: exporters, then the buffer and its deciders, then every listener is bound (so a
//! taken port fails start-up, before the daemon reports ready). Shutdown, upstream first: mark
//! not-ready; a clustered sampler leaves (hands its buffer to its peers and forwards while the
//! balancers notice); stop the receivers (in-flight requests finish); stop the deciders and settle
//! every buffered trace; close the pipeline so the batcher flushes; let the exporters drain their
//! queues until the grace period ends.

use std::sync::Arc;
use std::time::Duration;

use metrics_exporter_prometheus::PrometheusHandle;
use tokio::net::TcpListener;
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::balancer::{Cluster, Resolver, Router};
use crate::buffer::{BufferSettings, TraceBuffer};
use crate::config::{Config, ExporterConfig, ExtensionConfig, ProcessorConfig, ReceiverConfig};
use crate::exporter::{run_pipeline, Exporter, Fanout};
use crate::policy::PolicySet;
use crate::receiver::{serve_grpc, serve_http, Intake};
use crate::telemetry::{self, Health};

/// Kept-span messages in flight between the buffer and the batcher.
const KEPT_CHANNEL: usize = 1024;

#[derive(Debug, thiserror::Error)]
pub enum AppError {
    #[error("cannot listen on {endpoint} ({what}): {source}")]
    Bind {
        what: String,
        endpoint: String,
        source: std::io::Error,
    },
    #[error("exporter {name}: {message}")]
    Exporter { name: String, message: String },
}

async fn bind(what: &str, endpoint: &str) -> Result<TcpListener, AppError> {
    let err = |source| AppError::Bind {
        what: what.to_string(),
        endpoint: endpoint.to_string(),
        source,
    };
    let addr = telemetry::resolve_listen(endpoint).await.map_err(err)?;
    TcpListener::bind(addr).await.map_err(err)
}

/// The running stages downstream of the receivers, by role.
enum Stages {
    Sampler {
        buffer: Option<Arc<TraceBuffer>>,
        cluster: Option<Arc<Cluster>>,
        deciders: Vec<JoinHandle<()>>,
        deciders_stop: CancellationToken,
        pipeline: JoinHandle<()>,
        deadline_tx: oneshot::Sender<Instant>,
    },
    Balancer {
        router: Arc<Router>,
        _resolver: Resolver,
    },
}

/// Starts the stages for the config's role and returns them with the intake receivers feed.
fn start_stages(
    config: &Config,
    background: &CancellationToken,
) -> Result<(Stages, Intake), AppError> {
    let pipeline = config.traces_pipeline();
    if let [name] = pipeline.exporters.as_slice() {
        if let ExporterConfig::LoadBalancing(lb) = &config.exporters[name] {
            if !pipeline.processors.is_empty() {
                tracing::info!(
                    processors = ?pipeline.processors,
                    "the batch processor has no effect in a front-tier pipeline: each request's spans are routed, one request per sampler, as they arrive"
                );
            }
            let routing = lb.routing_key;
            let router = Arc::new(Router::new(name, routing, lb.protocol.otlp.clone(), &[]));
            let (resolver, mut endpoints) = Resolver::start(&lb.resolver, background.clone());
            let follower = Arc::clone(&router);
            let stop = background.clone();
            tokio::spawn(async move {
                loop {
                    let current = endpoints.borrow_and_update().clone();
                    follower.set_endpoints(&current);
                    tokio::select! {
                        _ = stop.cancelled() => return,
                        changed = endpoints.changed() => if changed.is_err() { return },
                    }
                }
            });
            let intake = Intake::Balance(Arc::clone(&router));
            return Ok((
                Stages::Balancer {
                    router,
                    _resolver: resolver,
                },
                intake,
            ));
        }
    }

    let mut exporters = Vec::new();
    for name in &pipeline.exporters {
        let exporter = Exporter::start(name, &config.exporters[name]).map_err(|message| {
            AppError::Exporter {
                name: name.clone(),
                message,
            }
        })?;
        exporters.push(exporter);
    }
    let mut tail_sampling = None;
    let mut batch = None;
    for name in &pipeline.processors {
        match &config.processors[name] {
            ProcessorConfig::TailSampling(c) => tail_sampling = Some(c.clone()),
            ProcessorConfig::Batch(c) => batch = Some(c.clone()),
        }
    }
    let (kept_tx, kept_rx) = mpsc::channel(KEPT_CHANNEL);
    let (deadline_tx, deadline_rx) = oneshot::channel::<Instant>();
    let pipeline = tokio::spawn(run_pipeline(
        kept_rx,
        batch,
        Fanout { exporters },
        async move { deadline_rx.await.unwrap_or_else(|_| Instant::now()) },
    ));
    let deciders_stop = CancellationToken::new();
    let Some(ts) = tail_sampling else {
        let stages = Stages::Sampler {
            buffer: None,
            cluster: None,
            deciders: Vec::new(),
            deciders_stop,
            pipeline,
            deadline_tx,
        };
        return Ok((stages, Intake::PassThrough(kept_tx)));
    };
    let policies = PolicySet::new(&ts.policies, ts.sample_on_first_match);
    let buffer = TraceBuffer::new(BufferSettings::from(&ts), policies, kept_tx);
    let deciders = buffer.spawn_deciders(deciders_stop.clone());
    let cluster = ts
        .cluster
        .as_ref()
        .map(|c| Cluster::start(c, Arc::clone(&buffer), background.clone()));
    let intake = Intake::Sample {
        buffer: Arc::clone(&buffer),
        cluster: cluster.clone(),
    };
    let stages = Stages::Sampler {
        buffer: Some(buffer),
        cluster,
        deciders,
        deciders_stop,
        pipeline,
        deadline_tx,
    };
    Ok((stages, intake))
}

/// Runs the daemon until `shutdown` is cancelled, then shuts down within the grace period.
pub async fn run(
    config: Config,
    metrics: Option<PrometheusHandle>,
    shutdown: CancellationToken,
) -> Result<(), AppError> {
    let pipeline = config.traces_pipeline().clone();
    let grace = config.service.shutdown_grace_period;
    // Resolvers and peer-following tasks: stopped last.
    let background = CancellationToken::new();
    let (stages, intake) = start_stages(&config, &background)?;
    let intake = Arc::new(intake);

    // Bind everything before reporting ready.
    let receivers_stop = CancellationToken::new();
    let ops_stop = CancellationToken::new();
    let mut receiver_tasks: Vec<JoinHandle<()>> = Vec::new();
    for name in &pipeline.receivers {
        let ReceiverConfig::Otlp(otlp) = &config.receivers[name];
        if let Some(grpc) = &otlp.protocols.grpc {
            let listener = bind(&format!("{name} grpc"), &grpc.endpoint).await?;
            tracing::info!(receiver = %name, endpoint = %listener.local_addr().map(|a| a.to_string()).unwrap_or_default(), "OTLP/gRPC receiver listening");
            let max = (grpc.max_recv_msg_size_mib * 1024 * 1024) as usize;
            let (intake, stop) = (Arc::clone(&intake), receivers_stop.clone());
            receiver_tasks.push(tokio::spawn(async move {
                if let Err(e) = serve_grpc(listener, intake, max, stop).await {
                    tracing::error!("OTLP/gRPC receiver failed: {e}");
                }
            }));
        }
        if let Some(http) = &otlp.protocols.http {
            let listener = bind(&format!("{name} http"), &http.endpoint).await?;
            tracing::info!(receiver = %name, endpoint = %listener.local_addr().map(|a| a.to_string()).unwrap_or_default(), "OTLP/HTTP receiver listening");
            let (intake, stop) = (Arc::clone(&intake), receivers_stop.clone());
            let (path, limit) = (http.traces_url_path.clone(), http.body_limit());
            receiver_tasks.push(tokio::spawn(async move {
                if let Err(e) = serve_http(listener, intake, &path, limit, stop).await {
                    tracing::error!("OTLP/HTTP receiver failed: {e}");
                }
            }));
        }
    }
    drop(intake);

    let health = Health::default();
    let mut ops_tasks = Vec::new();
    if let Some(handle) = metrics {
        let address = config.service.telemetry.metrics.listen_address();
        let listener = bind("metrics", &address).await?;
        let router = telemetry::metrics_router(handle, ops_stop.clone());
        ops_tasks.push(tokio::spawn(telemetry::serve(
            listener,
            router,
            ops_stop.clone(),
        )));
    }
    for name in &config.service.extensions {
        let ExtensionConfig::HealthCheck(hc) = &config.extensions[name];
        let listener = bind(name, &hc.endpoint).await?;
        ops_tasks.push(tokio::spawn(telemetry::serve(
            listener,
            health.router(&hc.path),
            ops_stop.clone(),
        )));
    }

    health.set_ready(true);
    tracing::info!("tailgate is ready");
    shutdown.cancelled().await;

    let deadline = Instant::now() + grace;
    tracing::info!(grace = ?grace, "shutting down");
    health.set_ready(false);
    if let Stages::Sampler {
        cluster: Some(cluster),
        ..
    } = &stages
    {
        // Keep receiving (and forwarding) while the peers and balancers learn we are leaving.
        let leave_by = Instant::now() + grace / 2;
        cluster.leave(leave_by).await;
    }
    receivers_stop.cancel();
    for task in receiver_tasks {
        if tokio::time::timeout_at(deadline, task).await.is_err() {
            tracing::warn!("a receiver did not stop within the grace period");
        }
    }
    match stages {
        Stages::Balancer { router, .. } => router.shutdown(deadline).await,
        Stages::Sampler {
            buffer,
            cluster,
            deciders,
            deciders_stop,
            pipeline,
            deadline_tx,
        } => {
            if let Some(cluster) = &cluster {
                cluster.hand_off().await;
                cluster.shutdown(deadline).await;
            }
            deciders_stop.cancel();
            for task in deciders {
                let _ = task.await;
            }
            if let Some(buffer) = buffer {
                tracing::info!(traces = buffer.live_traces(), "settling buffered traces");
                buffer.drain().await;
            }
            // The cluster's peer follower holds the buffer (and so the pipeline's input) open.
            drop(cluster);
            background.cancel();
            let _ = deadline_tx.send(deadline);
            if tokio::time::timeout_at(deadline + Duration::from_secs(1), pipeline)
                .await
                .is_err()
            {
                tracing::error!("export pipeline did not finish within the grace period");
            }
        }
    }
    background.cancel();
    ops_stop.cancel();
    for task in ops_tasks {
        let _ = tokio::time::timeout(Duration::from_secs(2), task).await;
    }
    tracing::info!("shutdown complete");
    Ok(())
}
