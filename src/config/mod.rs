//! Loading and validating the Collector-format YAML config.
//!
//! The file has the OpenTelemetry Collector's shape (`receivers`, `processors`, `exporters`,
//! `extensions`, `service`). Components are keyed by ID (`type` or `type/name`); the type picks
//! the config struct, which lives in the module that runs the component (`receiver`, `buffer`,
//! `exporter`, `telemetry`). Loading happens in three steps, each of which reports problems with
//! the YAML path they sit at:
//!
//! 1. `${env:NAME}` references are expanded (as the Collector does);
//! 2. each component's block is deserialized on its own (`deny_unknown_fields` everywhere, paths
//!    from `serde_path_to_error`), so one bad block does not hide errors in the others;
//! 3. [`Config::validate`] checks values and cross-references and collects every error.
//!
//! Runtime types are built only from a `Config` that passed all three.

pub mod duration;

use serde::de::DeserializeOwned;
use serde::Deserialize;
use std::collections::BTreeMap;
use std::fmt;
use std::path::Path;
use std::time::Duration;

use crate::balancer::LoadBalancingConfig;
use crate::buffer::TailSamplingConfig;
use crate::exporter::{
    BatchConfig, DebugExporterConfig, FileExporterConfig, OtlpExporterConfig,
    OtlpHttpExporterConfig,
};
use crate::receiver::OtlpReceiverConfig;
use crate::telemetry::{HealthCheckConfig, TelemetryConfig};

/// One problem in the config, at a YAML path such as
/// `processors.tail_sampling.policies[2].latency.threshold_ms`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    pub path: String,
    pub message: String,
}

impl ConfigError {
    pub fn new(path: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            path: path.into(),
            message: message.into(),
        }
    }
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.path.is_empty() {
            write!(f, "{}", self.message)
        } else {
            write!(f, "{}: {}", self.path, self.message)
        }
    }
}

/// Why a config could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error("cannot read config file {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("invalid config ({} error{}):\n{}", .0.len(), if .0.len() == 1 { "" } else { "s" }, list(.0))]
    Invalid(Vec<ConfigError>),
}

fn list(errors: &[ConfigError]) -> String {
    errors
        .iter()
        .map(|e| format!("  - {e}"))
        .collect::<Vec<_>>()
        .join("\n")
}

/// A component ID: `type` or `type/name`.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct ComponentId {
    pub kind: String,
    pub name: Option<String>,
}

impl ComponentId {
    pub fn parse(id: &str) -> Self {
        match id.split_once('/') {
            Some((kind, name)) => Self {
                kind: kind.to_string(),
                name: Some(name.to_string()),
            },
            None => Self {
                kind: id.to_string(),
                name: None,
            },
        }
    }
}

#[derive(Debug, Clone)]
pub enum ReceiverConfig {
    Otlp(OtlpReceiverConfig),
}

// Config enums are built once at start-up; boxing the large variants would buy nothing.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone)]
pub enum ProcessorConfig {
    TailSampling(TailSamplingConfig),
    Batch(BatchConfig),
}

#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone)]
pub enum ExporterConfig {
    Otlp(OtlpExporterConfig),
    OtlpHttp(OtlpHttpExporterConfig),
    Debug(DebugExporterConfig),
    File(FileExporterConfig),
    LoadBalancing(LoadBalancingConfig),
}

#[derive(Debug, Clone)]
pub enum ExtensionConfig {
    HealthCheck(HealthCheckConfig),
}

/// `service.pipelines.<id>`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PipelineConfig {
    #[serde(default)]
    pub receivers: Vec<String>,
    #[serde(default)]
    pub processors: Vec<String>,
    #[serde(default)]
    pub exporters: Vec<String>,
}

/// `service`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServiceConfig {
    #[serde(default)]
    pub extensions: Vec<String>,
    #[serde(default)]
    pub pipelines: BTreeMap<String, PipelineConfig>,
    #[serde(default)]
    pub telemetry: TelemetryConfig,
    /// tailgate extension: how long shutdown may take (decide pending traces, drain exports)
    /// before the process exits anyway. Default 30s.
    #[serde(default = "default_grace", with = "duration::go")]
    pub shutdown_grace_period: Duration,
}

fn default_grace() -> Duration {
    Duration::from_secs(30)
}

/// The whole config, every component parsed into its typed block.
#[derive(Debug, Clone)]
pub struct Config {
    pub receivers: BTreeMap<String, ReceiverConfig>,
    pub processors: BTreeMap<String, ProcessorConfig>,
    pub exporters: BTreeMap<String, ExporterConfig>,
    pub extensions: BTreeMap<String, ExtensionConfig>,
    pub service: ServiceConfig,
    /// Components declared in the file whose block failed to parse (`processors.tail_sampling`):
    /// their own error is reported, so references to them are not reported again.
    unparsed: std::collections::BTreeSet<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    #[serde(default)]
    receivers: BTreeMap<String, serde_yaml::Value>,
    #[serde(default)]
    processors: BTreeMap<String, serde_yaml::Value>,
    #[serde(default)]
    exporters: BTreeMap<String, serde_yaml::Value>,
    #[serde(default)]
    extensions: BTreeMap<String, serde_yaml::Value>,
    #[serde(default)]
    connectors: BTreeMap<String, serde_yaml::Value>,
    service: serde_yaml::Value,
}

/// Deserializes one block, reporting errors at `path` + the path inside the block. An empty
/// block (`otlp:` with nothing under it) means "all defaults", as in the Collector.
pub fn parse_block<T: DeserializeOwned + Default>(
    path: &str,
    value: serde_yaml::Value,
) -> Result<T, ConfigError> {
    if value.is_null() {
        return Ok(T::default());
    }
    serde_path_to_error::deserialize(value).map_err(|err| {
        let inner = err.path().to_string();
        let full = if inner == "." {
            path.to_string()
        } else {
            format!("{path}.{inner}")
        };
        ConfigError::new(full, err.into_inner().to_string())
    })
}

/// Serde helper: a block that is present but empty (`grpc:`) is `Some(default)`, not `None`.
pub fn null_as_default<'de, D, T>(d: D) -> Result<Option<T>, D::Error>
where
    D: serde::Deserializer<'de>,
    T: Deserialize<'de> + Default,
{
    Ok(Some(Option::<T>::deserialize(d)?.unwrap_or_default()))
}

/// Expands `${env:NAME}`, `${NAME}` and `${env:NAME:-default}` from the environment, as the
/// Collector's config resolver does. `$$` is a literal `$`.
pub fn expand_env(text: &str, lookup: impl Fn(&str) -> Option<String>) -> Result<String, String> {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(at) = rest.find('$') {
        out.push_str(&rest[..at]);
        rest = &rest[at..];
        if rest.starts_with("$$") {
            out.push('$');
            rest = &rest[2..];
        } else if rest.starts_with("${") {
            let end = rest
                .find('}')
                .ok_or_else(|| format!("unterminated `${{` in `{}`", first_line(rest)))?;
            let inner = &rest[2..end];
            let inner = inner.strip_prefix("env:").unwrap_or(inner);
            let (name, default) = match inner.split_once(":-") {
                Some((n, d)) => (n, Some(d)),
                None => (inner, None),
            };
            if name.is_empty() || !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
                return Err(format!(
                    "`${{{inner}}}` is not an environment variable reference"
                ));
            }
            match (lookup(name), default) {
                (Some(v), _) => out.push_str(&v),
                (None, Some(d)) => out.push_str(d),
                (None, None) => {} // the Collector expands an unset variable to empty
            }
            rest = &rest[end + 1..];
        } else {
            out.push('$');
            rest = &rest[1..];
        }
    }
    out.push_str(rest);
    Ok(out)
}

fn first_line(s: &str) -> &str {
    s.lines().next().unwrap_or(s)
}

impl Config {
    /// Reads, parses and validates a config file.
    pub fn load(path: &Path) -> Result<Config, LoadError> {
        let text = std::fs::read_to_string(path).map_err(|source| LoadError::Read {
            path: path.display().to_string(),
            source,
        })?;
        Self::from_yaml(&text)
    }

    /// Parses and validates config text; every error found is returned together.
    pub fn from_yaml(text: &str) -> Result<Config, LoadError> {
        let text = expand_env(text, |name| std::env::var(name).ok())
            .map_err(|m| LoadError::Invalid(vec![ConfigError::new("", m)]))?;
        let value: serde_yaml::Value = serde_yaml::from_str(&text).map_err(|e| {
            LoadError::Invalid(vec![ConfigError::new("", format!("not valid YAML: {e}"))])
        })?;
        let raw: RawConfig = match serde_path_to_error::deserialize(value) {
            Ok(raw) => raw,
            Err(err) => {
                let path = err.path().to_string();
                let path = if path == "." { String::new() } else { path };
                return Err(LoadError::Invalid(vec![ConfigError::new(
                    path,
                    err.into_inner().to_string(),
                )]));
            }
        };
        let mut errors = Vec::new();
        let mut config = Config {
            receivers: BTreeMap::new(),
            processors: BTreeMap::new(),
            exporters: BTreeMap::new(),
            extensions: BTreeMap::new(),
            service: ServiceConfig {
                extensions: vec![],
                pipelines: BTreeMap::new(),
                telemetry: TelemetryConfig::default(),
                shutdown_grace_period: default_grace(),
            },
            unparsed: Default::default(),
        };
        for (id, value) in raw.receivers {
            let path = format!("receivers.{id}");
            let parsed = match ComponentId::parse(&id).kind.as_str() {
                "otlp" => parse_block(&path, value).map(ReceiverConfig::Otlp),
                other => Err(unsupported("receiver", other, &path)),
            };
            if parsed.is_err() {
                config.unparsed.insert(format!("receivers.{id}"));
            }
            collect(parsed, &mut errors, |c| {
                config.receivers.insert(id.clone(), c);
            });
        }
        for (id, value) in raw.processors {
            let path = format!("processors.{id}");
            let parsed = match ComponentId::parse(&id).kind.as_str() {
                "tail_sampling" => parse_tail_sampling(&path, value, &mut errors)
                    .map(ProcessorConfig::TailSampling),
                "batch" => parse_block(&path, value).map(ProcessorConfig::Batch),
                other => Err(unsupported("processor", other, &path)),
            };
            if parsed.is_err() {
                config.unparsed.insert(format!("processors.{id}"));
            }
            collect(parsed, &mut errors, |c| {
                config.processors.insert(id.clone(), c);
            });
        }
        for (id, value) in raw.exporters {
            let path = format!("exporters.{id}");
            let parsed = match ComponentId::parse(&id).kind.as_str() {
                "otlp" | "otlp_grpc" => parse_block(&path, value).map(ExporterConfig::Otlp),
                "otlphttp" | "otlp_http" => parse_block(&path, value).map(ExporterConfig::OtlpHttp),
                "debug" => parse_block(&path, value).map(ExporterConfig::Debug),
                "file" => parse_block(&path, value).map(ExporterConfig::File),
                "loadbalancing" | "load_balancing" => {
                    parse_block(&path, value).map(ExporterConfig::LoadBalancing)
                }
                other => Err(unsupported("exporter", other, &path)),
            };
            if parsed.is_err() {
                config.unparsed.insert(format!("exporters.{id}"));
            }
            collect(parsed, &mut errors, |c| {
                config.exporters.insert(id.clone(), c);
            });
        }
        for (id, value) in raw.extensions {
            let path = format!("extensions.{id}");
            let parsed = match ComponentId::parse(&id).kind.as_str() {
                "health_check" => parse_block(&path, value).map(ExtensionConfig::HealthCheck),
                other => Err(unsupported("extension", other, &path)),
            };
            if parsed.is_err() {
                config.unparsed.insert(format!("extensions.{id}"));
            }
            collect(parsed, &mut errors, |c| {
                config.extensions.insert(id.clone(), c);
            });
        }
        for id in raw.connectors.keys() {
            errors.push(ConfigError::new(
                format!("connectors.{id}"),
                "connectors are not supported by tailgate",
            ));
        }
        let service_ok = match parse_block::<Option<ServiceConfig>>("service", raw.service) {
            Ok(Some(service)) => {
                config.service = service;
                true
            }
            Ok(None) => {
                errors.push(ConfigError::new("service", "the service block is empty"));
                false
            }
            Err(e) => {
                errors.push(e);
                false
            }
        };
        let mut found = config.validate();
        if !service_ok {
            // The pipelines were not read; do not report them missing on top of the real error.
            found.retain(|e| !e.path.starts_with("service"));
        }
        errors.extend(found);
        if errors.is_empty() {
            Ok(config)
        } else {
            Err(LoadError::Invalid(errors))
        }
    }

    /// Checks values and cross-references; returns every problem found.
    pub fn validate(&self) -> Vec<ConfigError> {
        let mut errors = Vec::new();
        for (id, receiver) in &self.receivers {
            match receiver {
                ReceiverConfig::Otlp(c) => c.validate(&format!("receivers.{id}"), &mut errors),
            }
        }
        for (id, processor) in &self.processors {
            let path = format!("processors.{id}");
            match processor {
                ProcessorConfig::TailSampling(c) => c.validate(&path, &mut errors),
                ProcessorConfig::Batch(c) => c.validate(&path, &mut errors),
            }
        }
        for (id, exporter) in &self.exporters {
            let path = format!("exporters.{id}");
            match exporter {
                ExporterConfig::Otlp(c) => c.validate(&path, &mut errors),
                ExporterConfig::OtlpHttp(c) => c.validate(&path, &mut errors),
                ExporterConfig::Debug(c) => c.validate(&path, &mut errors),
                ExporterConfig::File(c) => c.validate(&path, &mut errors),
                ExporterConfig::LoadBalancing(c) => c.validate(&path, &mut errors),
            }
        }
        for (id, extension) in &self.extensions {
            match extension {
                ExtensionConfig::HealthCheck(c) => {
                    c.validate(&format!("extensions.{id}"), &mut errors)
                }
            }
        }
        self.service
            .telemetry
            .validate("service.telemetry", &mut errors);
        for (i, ext) in self.service.extensions.iter().enumerate() {
            if !self.extensions.contains_key(ext)
                && !self.unparsed.contains(&format!("extensions.{ext}"))
            {
                errors.push(ConfigError::new(
                    format!("service.extensions[{i}]"),
                    format!("extension `{ext}` is not defined under `extensions`"),
                ));
            }
        }
        self.validate_pipelines(&mut errors);
        errors
    }

    fn validate_pipelines(&self, errors: &mut Vec<ConfigError>) {
        let pipelines = &self.service.pipelines;
        let traces: Vec<&String> = pipelines
            .keys()
            .filter(|id| ComponentId::parse(id).kind == "traces")
            .collect();
        for id in pipelines.keys() {
            let kind = ComponentId::parse(id).kind;
            if kind != "traces" {
                errors.push(ConfigError::new(
                    format!("service.pipelines.{id}"),
                    format!("`{kind}` pipelines are not supported: tailgate handles traces only"),
                ));
            }
        }
        match traces.len() {
            0 => errors.push(ConfigError::new(
                "service.pipelines",
                "a `traces` pipeline is required",
            )),
            1 => {}
            _ => errors.push(ConfigError::new(
                "service.pipelines",
                "only one traces pipeline is supported; found several",
            )),
        }
        for id in traces {
            let p = &pipelines[id];
            let base = format!("service.pipelines.{id}");
            if p.receivers.is_empty() {
                errors.push(ConfigError::new(
                    format!("{base}.receivers"),
                    "at least one receiver is required",
                ));
            }
            if p.exporters.is_empty() {
                errors.push(ConfigError::new(
                    format!("{base}.exporters"),
                    "at least one exporter is required",
                ));
            }
            for (i, r) in p.receivers.iter().enumerate() {
                if !self.receivers.contains_key(r)
                    && !self.unparsed.contains(&format!("receivers.{r}"))
                {
                    errors.push(ConfigError::new(
                        format!("{base}.receivers[{i}]"),
                        format!("receiver `{r}` is not defined under `receivers`"),
                    ));
                }
            }
            let mut seen_tail_sampling = 0;
            let mut seen_batch = 0;
            for (i, pr) in p.processors.iter().enumerate() {
                match self.processors.get(pr) {
                    None if self.unparsed.contains(&format!("processors.{pr}")) => {}
                    None => errors.push(ConfigError::new(
                        format!("{base}.processors[{i}]"),
                        format!("processor `{pr}` is not defined under `processors`"),
                    )),
                    Some(ProcessorConfig::TailSampling(_)) => seen_tail_sampling += 1,
                    Some(ProcessorConfig::Batch(_)) => seen_batch += 1,
                }
            }
            if seen_tail_sampling > 1 || seen_batch > 1 {
                errors.push(ConfigError::new(
                    format!("{base}.processors"),
                    "at most one tail_sampling and one batch processor per pipeline",
                ));
            }
            let balancers = p
                .exporters
                .iter()
                .filter(|e| {
                    matches!(
                        self.exporters.get(*e),
                        Some(ExporterConfig::LoadBalancing(_))
                    )
                })
                .count();
            if balancers > 0 && p.exporters.len() > 1 {
                errors.push(ConfigError::new(
                    format!("{base}.exporters"),
                    "a front-tier pipeline has the loadbalancing exporter as its only exporter",
                ));
            }
            if balancers > 0 && seen_tail_sampling > 0 {
                errors.push(ConfigError::new(
                    format!("{base}.processors"),
                    "tail_sampling and loadbalancing do not go in one pipeline: run a front tier (loadbalancing) and a sampler tier (tail_sampling)",
                ));
            }
            for (i, e) in p.exporters.iter().enumerate() {
                if !self.exporters.contains_key(e)
                    && !self.unparsed.contains(&format!("exporters.{e}"))
                {
                    errors.push(ConfigError::new(
                        format!("{base}.exporters[{i}]"),
                        format!("exporter `{e}` is not defined under `exporters`"),
                    ));
                }
            }
        }
    }

    /// The one traces pipeline (validated to exist).
    pub fn traces_pipeline(&self) -> &PipelineConfig {
        self.service
            .pipelines
            .iter()
            .find(|(id, _)| ComponentId::parse(id).kind == "traces")
            .map(|(_, p)| p)
            .expect("validated config has a traces pipeline")
    }
}

/// Parses `tail_sampling` with each policy on its own, so a mistake in one policy does not hide
/// mistakes in the others. Policy errors go to `errors`; the block is returned if its own keys
/// parsed.
fn parse_tail_sampling(
    path: &str,
    mut value: serde_yaml::Value,
    errors: &mut Vec<ConfigError>,
) -> Result<TailSamplingConfig, ConfigError> {
    let policies = match value.as_mapping_mut() {
        Some(map) => map.remove("policies"),
        None => None,
    };
    let mut config: TailSamplingConfig = parse_block(path, value)?;
    match policies {
        None | Some(serde_yaml::Value::Null) => {}
        Some(serde_yaml::Value::Sequence(items)) => {
            for (i, item) in items.into_iter().enumerate() {
                match parse_block(&format!("{path}.policies[{i}]"), item) {
                    Ok(policy) => config.policies.push(policy),
                    Err(e) => errors.push(e),
                }
            }
        }
        Some(_) => errors.push(ConfigError::new(
            format!("{path}.policies"),
            "policies must be a list",
        )),
    }
    Ok(config)
}

fn unsupported(what: &str, kind: &str, path: &str) -> ConfigError {
    ConfigError::new(
        path,
        format!("{what} type `{kind}` is not supported by tailgate"),
    )
}

fn collect<T>(result: Result<T, ConfigError>, errors: &mut Vec<ConfigError>, ok: impl FnOnce(T)) {
    match result {
        Ok(v) => ok(v),
        Err(e) => errors.push(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn errors_of(yaml: &str) -> Vec<String> {
        match Config::from_yaml(yaml) {
            Ok(_) => panic!("config was accepted:\n{yaml}"),
            Err(LoadError::Invalid(errors)) => errors.iter().map(|e| e.to_string()).collect(),
            Err(e) => panic!("{e}"),
        }
    }

    const GUIDE: &str = r#"
receivers:
  otlp:
    protocols:
      grpc:
        endpoint: 0.0.0.0:4317
      http:
        endpoint: 0.0.0.0:4318
processors:
  tail_sampling:
    decision_wait: 30s
    num_traces: 50000
    expected_new_traces_per_sec: 1000
    policies:
      - name: errors
        type: status_code
        status_code:
          status_codes: [ERROR]
      - name: slow
        type: latency
        latency:
          threshold_ms: 2000
      - name: baseline
        type: probabilistic
        probabilistic:
          sampling_percentage: 5
  batch:
exporters:
  otlphttp/tempo:
    endpoint: http://tempo:4318
service:
  pipelines:
    traces:
      receivers: [otlp]
      processors: [tail_sampling, batch]
      exporters: [otlphttp/tempo]
"#;

    #[test]
    fn the_published_guide_config_loads_unchanged() {
        let config = Config::from_yaml(GUIDE).unwrap();
        let ProcessorConfig::TailSampling(ts) = &config.processors["tail_sampling"] else {
            panic!()
        };
        assert_eq!(ts.decision_wait, Duration::from_secs(30));
        assert_eq!(ts.num_traces, 50_000);
        assert_eq!(ts.policies.len(), 3);
        assert!(matches!(
            config.exporters["otlphttp/tempo"],
            ExporterConfig::OtlpHttp(_)
        ));
    }

    #[test]
    fn a_misspelt_key_is_named_with_its_path() {
        let yaml = GUIDE.replace("threshold_ms: 2000", "threshol_ms: 2000");
        let errors = errors_of(&yaml);
        assert_eq!(errors.len(), 1, "{errors:?}");
        assert!(
            errors[0].starts_with("processors.tail_sampling.policies[1].latency.threshol_ms:")
                && errors[0].contains("unknown field `threshol_ms`"),
            "{errors:?}"
        );
    }

    #[test]
    fn a_wrongly_typed_value_is_named_with_its_full_path() {
        let yaml = GUIDE.replace("threshold_ms: 2000", "threshold_ms: slow");
        let errors = errors_of(&yaml);
        assert!(
            errors[0].starts_with("processors.tail_sampling.policies[1].latency.threshold_ms:"),
            "{errors:?}"
        );
    }

    #[test]
    fn every_error_is_listed_not_just_the_first() {
        let yaml = GUIDE
            .replace("decision_wait: 30s", "decision_wait: 30 seconds")
            .replace(
                "otlphttp/tempo:\n    endpoint: http://tempo:4318",
                "kafka:\n    brokers: [x]",
            )
            .replace("endpoint: 0.0.0.0:4318", "endpoint: nowhere");
        let errors = errors_of(&yaml);
        let joined = errors.join("\n");
        assert!(
            joined.contains("processors.tail_sampling.decision_wait: duration `30 seconds`"),
            "{joined}"
        );
        assert!(
            joined.contains("exporters.kafka: exporter type `kafka` is not supported"),
            "{joined}"
        );
        assert!(
            joined.contains("receivers.otlp.protocols.http.endpoint"),
            "{joined}"
        );
        assert!(
            joined.contains(
                "service.pipelines.traces.exporters[0]: exporter `otlphttp/tempo` is not defined"
            ),
            "{joined}"
        );
        // A block that failed to parse is not also reported as undefined where it is used.
        assert!(
            !joined.contains("processor `tail_sampling` is not defined"),
            "{joined}"
        );
    }

    #[test]
    fn unknown_components_and_dangling_references_are_errors() {
        let yaml = GUIDE.replace(
            "processors: [tail_sampling, batch]",
            "processors: [tail_sampling, batch, memory_limiter]",
        );
        let errors = errors_of(&yaml);
        assert!(
            errors
                .iter()
                .any(|e| e.starts_with("service.pipelines.traces.processors[2]")
                    && e.contains("memory_limiter")),
            "{errors:?}"
        );
    }

    #[test]
    fn unsupported_policy_types_are_an_error_naming_the_policy() {
        let yaml = GUIDE.replace("type: probabilistic", "type: span_kind_magic");
        let errors = errors_of(&yaml);
        assert!(
            errors.iter().any(
                |e| e.starts_with("processors.tail_sampling.policies[2].type")
                    && e.contains("span_kind_magic")
            ),
            "{errors:?}"
        );
    }

    #[test]
    fn the_collectors_current_metrics_reader_form_is_accepted() {
        let yaml = GUIDE.replace(
            "service:\n",
            "service:\n  telemetry:\n    metrics:\n      level: detailed\n      readers:\n        - pull:\n            exporter:\n              prometheus:\n                host: 127.0.0.1\n                port: 9999\n",
        );
        let config = Config::from_yaml(&yaml).unwrap();
        assert_eq!(
            config.service.telemetry.metrics.listen_address(),
            "127.0.0.1:9999"
        );
    }

    #[test]
    fn a_bad_service_block_is_reported_once() {
        let yaml = GUIDE.replace("service:\n", "service:\n  telemetri: {}\n");
        let errors = errors_of(&yaml);
        assert_eq!(errors.len(), 1, "{errors:?}");
        assert!(errors[0].contains("telemetri"), "{errors:?}");
    }

    #[test]
    fn environment_references_expand() {
        let lookup = |name: &str| (name == "TEMPO").then(|| "tempo:4317".to_string());
        assert_eq!(
            expand_env("a: ${env:TEMPO}\nb: ${MISSING:-dflt}\nc: $$x", lookup).unwrap(),
            "a: tempo:4317\nb: dflt\nc: $x"
        );
        assert!(expand_env("a: ${env:TEMPO", lookup).is_err());
    }
}
