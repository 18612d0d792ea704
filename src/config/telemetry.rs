//! `service.telemetry` and the `health_check` extension in the Collector's shape, validated into
//! the telemetry module's settings.

use serde::Deserialize;

use crate::telemetry::{HealthSettings, LogSettings, Naming, TelemetrySettings};
use crate::yaml::{check_listen_endpoint, ConfigError};

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
    fn pull_reader(&self) -> Option<&PrometheusReaderConfig> {
        self.readers
            .iter()
            .find_map(|r| r.pull.as_ref())
            .map(|p| &p.exporter.prometheus)
    }

    /// The `host:port` `/metrics` is served on: the pull reader's, else `address`.
    pub fn listen_address(&self) -> String {
        self.pull_reader()
            .map(|prom| format!("{}:{}", prom.host, prom.port))
            .unwrap_or_else(|| self.address.clone())
    }

    /// How metric names are shown. Without a pull reader (the `address` form, or nothing), as
    /// the Collector's default reader shows them: no `_total`, no unit suffix. With one, as a
    /// Prometheus reader the user configured: `_total` on counters and unit suffixes unless
    /// `without_type_suffix` / `without_units` turn them off (the OpenTelemetry Prometheus
    /// exporter's defaults, which the Collector used for explicit readers until its newest
    /// releases made both switches default to true; see README "Metrics").
    pub fn naming(&self) -> Naming {
        match self.pull_reader() {
            None => Naming::COLLECTOR_DEFAULT,
            Some(prom) => Naming {
                type_suffix: !prom.without_type_suffix,
                units: !prom.without_units,
            },
        }
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

/// `...pull.exporter.prometheus`. `without_type_suffix` and `without_units` decide the metric
/// names ([`MetricsConfig::naming`]); `without_scope_info` is accepted and has nothing to turn
/// off (tailgate shows no scope labels or `otel_scope_info`).
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
    /// The telemetry settings; problems are added to `errors`.
    pub fn settings(&self, path: &str, errors: &mut Vec<ConfigError>) -> TelemetrySettings {
        let level = match self.logs.level.as_str() {
            "debug" => "debug",
            "info" => "info",
            "warn" => "warn",
            "error" => "error",
            _ => "info",
        };
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
            check_listen_endpoint(
                &self.metrics.address,
                &format!("{path}.metrics.address"),
                errors,
            );
        }
        TelemetrySettings {
            logs: LogSettings {
                level,
                json: self.logs.encoding == "json",
            },
            metrics_address: (self.metrics.level != "none").then(|| self.metrics.listen_address()),
            naming: self.metrics.naming(),
        }
    }
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
    pub fn settings(&self, path: &str, errors: &mut Vec<ConfigError>) -> HealthSettings {
        check_listen_endpoint(&self.endpoint, &format!("{path}.endpoint"), errors);
        if !self.path.starts_with('/') {
            errors.push(ConfigError::new(
                format!("{path}.path"),
                format!("path `{}` must start with /", self.path),
            ));
        }
        HealthSettings {
            endpoint: self.endpoint.clone(),
            path: self.path.clone(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn naming(yaml: &str) -> Naming {
        let config: TelemetryConfig = serde_yaml::from_str(yaml).unwrap();
        let mut errors = Vec::new();
        let settings = config.settings("service.telemetry", &mut errors);
        assert!(errors.is_empty(), "{errors:?}");
        settings.naming
    }

    #[test]
    fn metric_names_follow_the_reader_the_config_asks_for() {
        let default = naming("metrics: {address: 127.0.0.1:8888}");
        assert_eq!(default, Naming::COLLECTOR_DEFAULT);
        assert_eq!(naming("{}"), Naming::COLLECTOR_DEFAULT);
        let reader = "metrics:\n  readers:\n    - pull:\n        exporter:\n          prometheus:\n            host: 0.0.0.0\n            port: 8888\n";
        assert_eq!(naming(reader), Naming::PROMETHEUS);
        let without_total = format!("{reader}            without_type_suffix: true\n");
        assert_eq!(
            naming(&without_total),
            Naming {
                type_suffix: false,
                units: true
            }
        );
        let without_either = format!("{without_total}            without_units: true\n");
        assert_eq!(naming(&without_either), Naming::COLLECTOR_DEFAULT);
    }
}
