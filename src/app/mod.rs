//! Wires the stages of the one traces pipeline from validated [`Settings`] and runs them until
//! shutdown.
//!
//! The role decides the stages: a front-tier balancer (receivers → [`Balancer`] → one exporter
//! per sampler), or a sampler (receivers → [`Sampler`] → batcher → exporters), or, without
//! `tail_sampling`, a pass-through (receivers → batcher → exporters). Receivers only know the
//! [`TraceConsumer`] they feed.
//!
//! Start-up: exporters, then the sampler or balancer, then every listener is bound (so a taken
//! port fails start-up before the daemon reports ready). Shutdown is the sequence in
//! [`shutdown`], upstream first.

pub mod reload;
mod shutdown;

use std::net::SocketAddr;
use std::sync::Arc;

use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::balancer::Balancer;
use crate::config::{Role, Settings};
use crate::exporter::{Exporter, PassThrough, Pipeline};
use crate::otlp::TraceConsumer;
use crate::processor::Processors;
use crate::receiver::limiter::MemoryLimiter;
use crate::receiver::{serve_grpc, serve_http, Door};
use crate::sampler::Sampler;
use crate::telemetry::{self, Health};
pub use reload::Reload;
use shutdown::Shutdown;

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

/// Resolves a `host:port` listen endpoint (an empty host means every interface, as in Go) and
/// binds it.
async fn bind(what: &str, endpoint: &str) -> Result<TcpListener, AppError> {
    let err = |source| AppError::Bind {
        what: what.to_string(),
        endpoint: endpoint.to_string(),
        source,
    };
    let addr = resolve_listen(endpoint).await.map_err(err)?;
    TcpListener::bind(addr).await.map_err(err)
}

async fn resolve_listen(endpoint: &str) -> std::io::Result<SocketAddr> {
    let endpoint = if endpoint.starts_with(':') {
        format!("0.0.0.0{endpoint}")
    } else {
        endpoint.to_string()
    };
    let mut addrs = tokio::net::lookup_host(endpoint.as_str()).await?;
    addrs
        .next()
        .ok_or_else(|| std::io::Error::other(format!("`{endpoint}` resolves to no address")))
}

/// The running stages downstream of the receivers, by role.
pub(crate) enum Stages {
    Sampler {
        /// `None` in a pass-through pipeline.
        sampler: Option<Arc<Sampler>>,
        pipeline: Pipeline,
    },
    Balancer(Arc<Balancer>),
}

/// Starts the stages for the role; returns them with the consumer receivers feed.
fn start_stages(
    role: &Role,
    background: &CancellationToken,
) -> Result<(Stages, Arc<dyn TraceConsumer>), AppError> {
    match role {
        Role::Balancer(settings) => {
            let balancer = Arc::new(Balancer::start(settings, background.clone()));
            let consumer: Arc<dyn TraceConsumer> = balancer.clone();
            Ok((Stages::Balancer(balancer), consumer))
        }
        Role::Sampler {
            sampler,
            batch,
            exporters,
        } => {
            let exporters = exporters
                .iter()
                .map(|settings| {
                    Exporter::start(settings, None).map_err(|message| AppError::Exporter {
                        name: settings.name.clone(),
                        message,
                    })
                })
                .collect::<Result<Vec<_>, _>>()?;
            let (pipeline, input) = Pipeline::start(exporters, batch.clone());
            let Some(settings) = sampler else {
                let consumer: Arc<dyn TraceConsumer> = Arc::new(PassThrough::new(input));
                let stages = Stages::Sampler {
                    sampler: None,
                    pipeline,
                };
                return Ok((stages, consumer));
            };
            let sampler = Arc::new(Sampler::start(settings, input, background.clone()));
            let consumer: Arc<dyn TraceConsumer> = sampler.clone();
            let stages = Stages::Sampler {
                sampler: Some(sampler),
                pipeline,
            };
            Ok((stages, consumer))
        }
    }
}

/// Binds every receiver's listeners and starts serving them.
async fn start_receivers(
    settings: &Settings,
    consumer: &Arc<dyn TraceConsumer>,
    stop: &CancellationToken,
) -> Result<Vec<JoinHandle<()>>, AppError> {
    let mut tasks = Vec::new();
    for receiver in &settings.receivers {
        let name = receiver.name.clone();
        let door = Door::new(&name, &receiver.door);
        if let Some(grpc) = &receiver.grpc {
            let listener = bind(&format!("{name} grpc"), &grpc.endpoint).await?;
            tracing::info!(receiver = %name, endpoint = %local(&listener), "OTLP/gRPC receiver listening");
            let (consumer, stop, grpc, name, door) = (
                Arc::clone(consumer),
                stop.clone(),
                grpc.clone(),
                name.clone(),
                Arc::clone(&door),
            );
            tasks.push(tokio::spawn(async move {
                if let Err(e) = serve_grpc(listener, consumer, &name, &grpc, door, stop).await {
                    tracing::error!("OTLP/gRPC receiver failed: {e}");
                }
            }));
        }
        if let Some(http) = &receiver.http {
            let listener = bind(&format!("{name} http"), &http.endpoint).await?;
            tracing::info!(receiver = %name, endpoint = %local(&listener), "OTLP/HTTP receiver listening");
            let (consumer, stop, http) = (Arc::clone(consumer), stop.clone(), http.clone());
            tasks.push(tokio::spawn(async move {
                if let Err(e) = serve_http(listener, consumer, &name, &http, door, stop).await {
                    tracing::error!("OTLP/HTTP receiver failed: {e}");
                }
            }));
        }
    }
    Ok(tasks)
}

fn local(listener: &TcpListener) -> String {
    listener
        .local_addr()
        .map(|a| a.to_string())
        .unwrap_or_default()
}

/// Binds and serves `/metrics` and the health endpoints.
async fn start_operations(
    settings: &Settings,
    metrics: Option<telemetry::Metrics>,
    health: &Health,
    stop: &CancellationToken,
) -> Result<Vec<JoinHandle<std::io::Result<()>>>, AppError> {
    let mut tasks = Vec::new();
    if let (Some(metrics), Some(address)) = (metrics, &settings.telemetry.metrics_address) {
        let listener = bind("metrics", address).await?;
        let router = telemetry::metrics_router(metrics);
        tasks.push(tokio::spawn(telemetry::serve(
            listener,
            router,
            stop.clone(),
        )));
    }
    for check in &settings.health_checks {
        let listener = bind("health_check", &check.endpoint).await?;
        tasks.push(tokio::spawn(telemetry::serve(
            listener,
            health.router(&check.path),
            stop.clone(),
        )));
    }
    Ok(tasks)
}

/// Runs the daemon until `shutdown` is cancelled, then shuts down within the grace period.
pub async fn run(
    settings: Settings,
    metrics: Option<telemetry::Metrics>,
    shutdown: CancellationToken,
    reload: Option<Reload>,
) -> Result<(), AppError> {
    for notice in &settings.notices {
        tracing::warn!("{notice}");
    }
    // Resolvers and peer-following tasks: stopped last.
    let background = CancellationToken::new();
    let (stages, consumer) = start_stages(&settings.role, &background)?;
    // Filter, resource and attributes run before anything is buffered or routed.
    let consumer = Processors::wrap(&settings.span_processors, consumer);
    // The memory limiter guards the door, whatever its place in `processors`.
    let consumer: Arc<dyn TraceConsumer> = match &settings.memory_limiter {
        Some(limits) => MemoryLimiter::start(limits, consumer, background.clone()),
        None => consumer,
    };
    // Bind everything before reporting ready.
    let receivers_stop = CancellationToken::new();
    let receivers = start_receivers(&settings, &consumer, &receivers_stop).await?;
    // The receivers hold the consumer from here on; when they stop, nothing else feeds it.
    drop(consumer);
    let health = Health::default();
    let operations_stop = CancellationToken::new();
    let operations = start_operations(&settings, metrics, &health, &operations_stop).await?;

    health.set_ready(true);
    tracing::info!("tailgate is ready");
    let reload_stop = CancellationToken::new();
    let reloads = reload.map(|reload| {
        let sampler = match &stages {
            Stages::Sampler { sampler, .. } => sampler.clone(),
            Stages::Balancer(_) => None,
        };
        tokio::spawn(reload::run(
            reload,
            settings.clone(),
            sampler,
            reload_stop.clone(),
        ))
    });
    shutdown.cancelled().await;
    reload_stop.cancel();
    if let Some(task) = reloads {
        let _ = task.await;
    }

    Shutdown {
        grace: settings.shutdown_grace,
        health,
        receivers_stop,
        receivers,
        stages,
        background,
        operations_stop,
        operations,
    }
    .run()
    .await;
    Ok(())
}
