//! Operating the daemon: logs, Prometheus metrics at `/metrics`, the `health_check` extension, and
//! the small HTTP-serving helper they share.
//!
//! Metric names follow the Collector's where the meaning is the same (`otelcol_receiver_*`,
//! `otelcol_exporter_*`, `otelcol_processor_tail_sampling_*`), so dashboards carry over;
//! tailgate's own carry the `tailgate_` prefix. Every place that drops data increments a counter
//! and logs through a [`LogEvery`] so a flood of drops cannot flood the log.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::http::StatusCode;
use axum::routing::get;
use axum::Router;
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use serde::Deserialize;
use tokio_util::sync::CancellationToken;

use crate::config::ConfigError;

/// `service.telemetry`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TelemetryConfig {
    pub logs: LogsConfig,
    pub metrics: MetricsConfig,
}

/// `service.telemetry.logs`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LogsConfig {
    /// `debug`, `info`, `warn` or `error`.
    pub level: String,
    /// `console` or `json`.
    pub encoding: String,
}

impl Default for LogsConfig {
    fn default() -> Self {
        Self {
            level: "info".into(),
            encoding: "console".into(),
        }
    }
}

/// `service.telemetry.metrics`: either the older `address` form or the current `readers` form
/// with one Prometheus pull reader.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MetricsConfig {
    /// Where `/metrics` is served (the Collector's default is `localhost:8888`).
    pub address: String,
    /// `none` turns metrics off; `basic`, `normal` and `detailed` all serve every metric.
    pub level: String,
    pub readers: Vec<MetricReaderConfig>,
}

impl Default for MetricsConfig {
    fn default() -> Self {
        Self {
            address: "localhost:8888".into(),
            level: "normal".into(),
            readers: Vec::new(),
        }
    }
}

impl MetricsConfig {
    /// The `host:port` `/metrics` is served on: the pull reader's, else `address`.
    pub fn listen_address(&self) -> String {
        self.readers
            .iter()
            .find_map(|r| r.pull.as_ref())
            .map(|p| {
                let prom = &p.exporter.prometheus;
                format!("{}:{}", prom.host, prom.port)
            })
            .unwrap_or_else(|| self.address.clone())
    }
}

/// `service.telemetry.metrics.readers[i]`: only `pull` readers (Prometheus) are served.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MetricReaderConfig {
    pub pull: Option<PullReaderConfig>,
    pub periodic: Option<serde_yaml::Value>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PullReaderConfig {
    pub exporter: PullExporterConfig,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PullExporterConfig {
    pub prometheus: PrometheusReaderConfig,
}

/// `...pull.exporter.prometheus`. The `without_*` switches are accepted and have no effect:
/// tailgate's metric names never carry type suffixes, units or scope info.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PrometheusReaderConfig {
    pub host: String,
    pub port: u16,
    pub without_scope_info: bool,
    pub without_type_suffix: bool,
    pub without_units: bool,
}

impl Default for PrometheusReaderConfig {
    fn default() -> Self {
        Self {
            host: "localhost".into(),
            port: 8888,
            without_scope_info: false,
            without_type_suffix: false,
            without_units: false,
        }
    }
}

impl TelemetryConfig {
    pub fn validate(&self, path: &str, errors: &mut Vec<ConfigError>) {
        if !matches!(
            self.logs.level.as_str(),
            "debug" | "info" | "warn" | "error"
        ) {
            errors.push(ConfigError::new(
                format!("{path}.logs.level"),
                format!(
                    "unknown log level `{}`; use debug, info, warn or error",
                    self.logs.level
                ),
            ));
        }
        if !matches!(self.logs.encoding.as_str(), "console" | "json") {
            errors.push(ConfigError::new(
                format!("{path}.logs.encoding"),
                format!(
                    "unknown log encoding `{}`; use console or json",
                    self.logs.encoding
                ),
            ));
        }
        if !matches!(
            self.metrics.level.as_str(),
            "none" | "basic" | "normal" | "detailed"
        ) {
            errors.push(ConfigError::new(
                format!("{path}.metrics.level"),
                format!(
                    "unknown metrics level `{}`; use none, basic, normal or detailed",
                    self.metrics.level
                ),
            ));
        }
        if self.metrics.level != "none" {
            check_endpoint(
                &self.metrics.address,
                &format!("{path}.metrics.address"),
                errors,
            );
        }
    }
}

/// Checks that an endpoint is `host:port` (host may be empty, meaning all interfaces).
pub fn check_endpoint(endpoint: &str, path: &str, errors: &mut Vec<ConfigError>) {
    let ok = endpoint
        .rsplit_once(':')
        .is_some_and(|(_, port)| port.parse::<u16>().is_ok());
    if !ok {
        errors.push(ConfigError::new(
            path,
            format!("endpoint `{endpoint}` must be host:port"),
        ));
    }
}

/// Resolves a `host:port` listen endpoint; an empty host means all interfaces, as in Go.
pub async fn resolve_listen(endpoint: &str) -> std::io::Result<SocketAddr> {
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

/// Installs the log subscriber. `RUST_LOG` overrides the configured level.
pub fn init_logs(config: &LogsConfig) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(&config.level));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(std::io::stderr);
    let _ = if config.encoding == "json" {
        builder.json().try_init()
    } else {
        builder.try_init()
    };
}

/// Installs the global Prometheus recorder and returns its handle.
pub fn install_metrics() -> Result<PrometheusHandle, String> {
    PrometheusBuilder::new()
        .set_buckets_for_metric(
            Matcher::Suffix("_seconds".into()),
            &[
                0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
            ],
        )
        .map_err(|e| e.to_string())?
        .install_recorder()
        .map_err(|e| format!("cannot install the metrics recorder: {e}"))
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

/// The `/metrics` endpoint. Also runs the recorder's periodic upkeep.
pub fn metrics_router(handle: PrometheusHandle, shutdown: CancellationToken) -> Router {
    let upkeep = handle.clone();
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_secs(5));
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tick.tick() => upkeep.run_upkeep(),
            }
        }
    });
    Router::new().route(
        "/metrics",
        get(move || {
            let handle = handle.clone();
            async move {
                (
                    [(
                        axum::http::header::CONTENT_TYPE,
                        "text/plain; version=0.0.4",
                    )],
                    handle.render(),
                )
            }
        }),
    )
}

/// `extensions.health_check`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct HealthCheckConfig {
    pub endpoint: String,
    pub path: String,
}

impl Default for HealthCheckConfig {
    fn default() -> Self {
        Self {
            endpoint: "localhost:13133".into(),
            path: "/".into(),
        }
    }
}

impl HealthCheckConfig {
    pub fn validate(&self, path: &str, errors: &mut Vec<ConfigError>) {
        check_endpoint(&self.endpoint, &format!("{path}.endpoint"), errors);
        if !self.path.starts_with('/') {
            errors.push(ConfigError::new(
                format!("{path}.path"),
                format!("path `{}` must start with /", self.path),
            ));
        }
    }
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

    #[test]
    fn log_every_lets_the_first_line_through_then_throttles() {
        let log = LogEvery::new(Duration::from_secs(3600));
        assert!(log.ready());
        assert!(!log.ready());
    }

    #[test]
    fn endpoints_must_have_a_port() {
        let mut errors = vec![];
        check_endpoint("localhost:8888", "a", &mut errors);
        check_endpoint(":4317", "b", &mut errors);
        check_endpoint("localhost", "c", &mut errors);
        assert_eq!(errors.len(), 1);
        assert_eq!(errors[0].path, "c");
    }
}
