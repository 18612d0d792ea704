//! Operating the daemon: logs, Prometheus metrics at `/metrics` (every metric declared once in the
//! [`catalog`], shown by [`exposition`] under the configured [`Naming`], with the [`process`]
//! metrics read at scrape time), the health endpoint, and the small HTTP-serving helper they
//! share.
//!
//! Every place that drops data increments a counter and logs through a [`LogEvery`], so a flood
//! of drops cannot flood the log. This module knows no stage; stages use it.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::http::StatusCode;
use axum::routing::get;
use axum::Router;
use tokio_util::sync::CancellationToken;

pub mod catalog;
pub mod exposition;
pub mod process;

pub use catalog::Naming;
pub use process::HeapReader;

/// Log settings, from `service.telemetry.logs`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogSettings {
    /// A `tracing` level filter: `debug`, `info`, `warn` or `error`.
    pub level: &'static str,
    /// JSON lines instead of the human-readable console format.
    pub json: bool,
}

impl Default for LogSettings {
    fn default() -> Self {
        Self {
            level: "info",
            json: false,
        }
    }
}

/// `service.telemetry`, validated.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TelemetrySettings {
    pub logs: LogSettings,
    /// Where `/metrics` is served; `None` with `level: none`.
    pub metrics_address: Option<String>,
    /// How metric names are shown (from the Prometheus reader's `without_*` switches).
    pub naming: Naming,
}

/// The `health_check` extension, validated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HealthSettings {
    /// `host:port` to listen on.
    pub endpoint: String,
    pub path: String,
}

/// Installs the log subscriber. `RUST_LOG` overrides the configured level.
pub fn init_logs(settings: &LogSettings) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(settings.level));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(std::io::stderr);
    let _ = if settings.json {
        builder.json().try_init()
    } else {
        builder.try_init()
    };
}

/// What `/metrics` shows: every registered series under one naming, and the process metrics.
#[derive(Debug, Clone)]
pub struct Metrics {
    naming: Naming,
    process: process::ProcessStats,
}

impl Metrics {
    /// Starts the process clock (uptime counts from here). `heap` reads the allocator's heap
    /// size; without it `otelcol_process_runtime_heap_alloc_bytes` is not shown.
    pub fn new(naming: Naming, heap: Option<HeapReader>) -> Self {
        Metrics {
            naming,
            process: process::ProcessStats::new(heap),
        }
    }

    /// The Prometheus text exposition.
    pub fn render(&self) -> String {
        exposition::render(self.naming, &self.process.sample())
    }
}

/// Serves `router` on `addr` until `shutdown` is cancelled.
pub async fn serve(
    listener: tokio::net::TcpListener,
    router: Router,
    shutdown: CancellationToken,
) -> std::io::Result<()> {
    axum::serve(listener, router)
        .with_graceful_shutdown(async move { shutdown.cancelled().await })
        .await
}

/// The `/metrics` endpoint.
pub fn metrics_router(metrics: Metrics) -> Router {
    Router::new().route(
        "/metrics",
        get(move || {
            let text = metrics.render();
            async move {
                (
                    [(
                        axum::http::header::CONTENT_TYPE,
                        "text/plain; version=0.0.4",
                    )],
                    text,
                )
            }
        }),
    )
}

/// Whether the daemon is serving: set once the receivers listen, cleared when shutdown starts.
#[derive(Debug, Default, Clone)]
pub struct Health(Arc<AtomicBool>);

impl Health {
    pub fn set_ready(&self, ready: bool) {
        self.0.store(ready, Ordering::SeqCst);
    }

    pub fn is_ready(&self) -> bool {
        self.0.load(Ordering::SeqCst)
    }

    /// The health endpoint: 200 while serving, 503 before and during shutdown.
    pub fn router(&self, path: &str) -> Router {
        let health = self.clone();
        Router::new().route(
            path,
            get(move || {
                let ready = health.is_ready();
                async move {
                    if ready {
                        (StatusCode::OK, r#"{"status":"Server available"}"#)
                    } else {
                        (
                            StatusCode::SERVICE_UNAVAILABLE,
                            r#"{"status":"Server not available"}"#,
                        )
                    }
                }
            }),
        )
    }
}

/// Lets a log line through at most once per interval; used where drops can repeat per request.
#[derive(Debug)]
pub struct LogEvery {
    interval_ms: u64,
    start: Instant,
    last_ms: AtomicU64,
}

impl LogEvery {
    pub fn new(interval: Duration) -> Self {
        Self {
            interval_ms: interval.as_millis() as u64,
            start: Instant::now(),
            last_ms: AtomicU64::new(u64::MAX),
        }
    }

    /// True for the first call and then once per interval.
    pub fn ready(&self) -> bool {
        let now = self.start.elapsed().as_millis() as u64;
        let last = self.last_ms.load(Ordering::Relaxed);
        if last != u64::MAX && now.saturating_sub(last) < self.interval_ms {
            return false;
        }
        self.last_ms
            .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
            .is_ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `app::run` creates the health state not ready and sets it ready only once every receiver
    /// and endpoint is bound; shutdown sets it back first. Here: what each state answers.
    #[tokio::test]
    async fn health_answers_503_until_ready_and_again_once_shutdown_begins() {
        use tower_service::Service;
        let health = Health::default();
        let status = |health: &Health| {
            let mut router = health.router("/healthz");
            async move {
                let request = http::Request::get("/healthz")
                    .body(axum::body::Body::empty())
                    .unwrap();
                router.call(request).await.unwrap().status()
            }
        };
        assert_eq!(
            status(&health).await,
            StatusCode::SERVICE_UNAVAILABLE,
            "before start"
        );
        health.set_ready(true);
        assert_eq!(status(&health).await, StatusCode::OK, "serving");
        health.set_ready(false);
        assert_eq!(
            status(&health).await,
            StatusCode::SERVICE_UNAVAILABLE,
            "shutting down"
        );
    }

    #[test]
    fn log_every_lets_the_first_line_through_then_throttles() {
        let log = LogEvery::new(Duration::from_secs(3600));
        assert!(log.ready());
        assert!(!log.ready());
    }
}
