//! Wires the stages of one pipeline and runs them until shutdown.
//!
//! Start-up: exporters, then the buffer and its deciders, then every listener is bound (so a
//! taken port fails start-up, before the daemon reports ready). Shutdown, upstream first: mark
//! not-ready and stop the receivers (in-flight requests finish), stop the deciders and settle every
//! buffered trace, close the pipeline so the batcher flushes, then let the exporters drain their
//! queues until the grace period ends.

use std::sync::Arc;

use metrics_exporter_prometheus::PrometheusHandle;
use tokio::net::TcpListener;
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::buffer::{BufferSettings, TraceBuffer};
use crate::config::{Config, ExtensionConfig, ProcessorConfig, ReceiverConfig};
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

/// Runs the daemon until `shutdown` is cancelled, then shuts down within the grace period.
pub async fn run(
    config: Config,
    metrics: Option<PrometheusHandle>,
    shutdown: CancellationToken,
) -> Result<(), AppError> {
    let pipeline = config.traces_pipeline().clone();
    let grace = config.service.shutdown_grace_period;

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
    let pipeline_task = tokio::spawn(run_pipeline(
        kept_rx,
        batch,
        Fanout { exporters },
        async move { deadline_rx.await.unwrap_or_else(|_| Instant::now()) },
    ));

    let deciders_stop = CancellationToken::new();
    let (intake, buffer, deciders) = match &tail_sampling {
        Some(ts) => {
            let policies = PolicySet::new(&ts.policies, ts.sample_on_first_match);
            let buffer = TraceBuffer::new(BufferSettings::from(ts), policies, kept_tx);
            let deciders = buffer.spawn_deciders(deciders_stop.clone());
            (Intake::Sample(Arc::clone(&buffer)), Some(buffer), deciders)
        }
        None => (Intake::PassThrough(kept_tx), None, Vec::new()),
    };
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
    tracing::info!(grace = ?grace, "shutting down: stopping receivers");
    health.set_ready(false);
    receivers_stop.cancel();
    for task in receiver_tasks {
        if tokio::time::timeout_at(deadline, task).await.is_err() {
            tracing::warn!("a receiver did not stop within the grace period");
        }
    }
    deciders_stop.cancel();
    for task in deciders {
        let _ = task.await;
    }
    if let Some(buffer) = buffer {
        let pending = buffer.live_traces();
        tracing::info!(traces = pending, "settling buffered traces");
        buffer.drain().await;
    }
    let _ = deadline_tx.send(deadline);
    if tokio::time::timeout_at(deadline + std::time::Duration::from_secs(1), pipeline_task)
        .await
        .is_err()
    {
        tracing::error!("export pipeline did not finish within the grace period");
    }
    ops_stop.cancel();
    for task in ops_tasks {
        let _ = tokio::time::timeout(std::time::Duration::from_secs(2), task).await;
    }
    tracing::info!("shutdown complete");
    Ok(())
}
