//! Loading the Collector-format YAML config and validating it into [`Settings`], the only thing
//! the runtime is built from.
//!
//! The file has the OpenTelemetry Collector's shape (`receivers`, `processors`, `exporters`,
//! `extensions`, `service`). Components are keyed by ID (`type` or `type/name`); the type picks
//! the config struct, which lives beside the component (`receiver::config`, `sampler::config`,
//! `exporter::config`, `balancer::config`, `routing::config`; `service.telemetry` and
//! `health_check` in [`telemetry`]). Loading happens in three steps, each of which reports
//! problems with the YAML path they sit at:
//!
//! 1. `${env:NAME}` references are expanded (as the Collector does);
//! 2. each component's block is deserialized on its own (`deny_unknown_fields` everywhere, paths
//!    from `serde_path_to_error`), so one bad block does not hide errors in the others;
//! 3. each block is validated into its typed settings, and the pipeline into a [`Role`]; every
//!    error is collected.
//!
//! A config string (a compression name, an encoding, a verbosity) is matched here, once; the
//! settings hold enums, parsed endpoints and durations.

pub mod telemetry;

use serde::Deserialize;
use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::time::Duration;

use crate::auth::{AuthExtensionConfig, AuthenticatorRef, ClientAuth, ServerAuth};
use crate::balancer::config::LoadBalancingConfig;
use crate::balancer::BalancerSettings;
use crate::exporter::config::{
    DebugExporterConfig, FileExporterConfig, OtlpExporterConfig, OtlpHttpExporterConfig,
};
use crate::exporter::{BatchConfig, ExporterSettings};
use crate::processor::{AttributesConfig, FilterConfig, ResourceConfig, StageSettings};
use crate::receiver::config::OtlpReceiverConfig;
use crate::receiver::limiter::{MemoryLimiterConfig, MemoryLimiterSettings};
use crate::receiver::ReceiverSettings;
use crate::sampler::config::TailSamplingConfig;
use crate::sampler::SamplerSettings;
use crate::telemetry::{HealthSettings, TelemetrySettings};
use crate::yaml::{duration, expand_env, parse_block, ConfigError};
use telemetry::{HealthCheckConfig, TelemetryConfig};

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
    MemoryLimiter(MemoryLimiterConfig),
    Filter(FilterConfig),
    Resource(ResourceConfig),
    Attributes(AttributesConfig),
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
    /// `bearertokenauth` and `basicauth`, used by receivers and exporters through `auth`.
    Auth(AuthExtensionConfig),
    /// `pprof` and `zpages`: accepted so production configs load unchanged, but they do nothing
    /// in tailgate (a warning at start-up says so). The block is kept as written.
    Inert {
        kind: String,
    },
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

impl Default for ServiceConfig {
    fn default() -> Self {
        Self {
            extensions: vec![],
            pipelines: BTreeMap::new(),
            telemetry: TelemetryConfig::default(),
            shutdown_grace_period: default_grace(),
        }
    }
}

/// What the process is, by its pipeline.
#[derive(Debug, Clone)]
#[allow(clippy::large_enum_variant)]
pub enum Role {
    /// Receivers → (tail sampling) → (batch) → exporters. Without `tail_sampling` every span
    /// passes through.
    Sampler {
        sampler: Option<SamplerSettings>,
        batch: Option<BatchConfig>,
        exporters: Vec<ExporterSettings>,
    },
    /// Receivers → the `loadbalancing` exporter.
    Balancer(BalancerSettings),
}

/// A validated config: everything the runtime is built from.
#[derive(Debug, Clone)]
pub struct Settings {
    /// The receivers of the traces pipeline, in pipeline order.
    pub receivers: Vec<ReceiverSettings>,
    pub role: Role,
    /// The `health_check` extensions listed in `service.extensions`.
    pub health_checks: Vec<HealthSettings>,
    pub telemetry: TelemetrySettings,
    pub shutdown_grace: Duration,
    /// Things in the config that are accepted but have no effect, logged as warnings at start.
    pub notices: Vec<String>,
    /// The pipeline's `memory_limiter`, applied at the door whatever its position.
    pub memory_limiter: Option<MemoryLimiterSettings>,
    /// The pipeline's `filter`, `resource` and `attributes` processors, in pipeline order.
    pub span_processors: Vec<StageSettings>,
}

/// The whole config, every component parsed into its typed block, and the settings it validated
/// into.
#[derive(Debug, Clone)]
pub struct Config {
    pub receivers: BTreeMap<String, ReceiverConfig>,
    pub processors: BTreeMap<String, ProcessorConfig>,
    pub exporters: BTreeMap<String, ExporterConfig>,
    pub extensions: BTreeMap<String, ExtensionConfig>,
    pub service: ServiceConfig,
    pub settings: Settings,
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

/// The config's blocks, parsed one by one.
#[derive(Default)]
struct Parsed {
    receivers: BTreeMap<String, ReceiverConfig>,
    processors: BTreeMap<String, ProcessorConfig>,
    exporters: BTreeMap<String, ExporterConfig>,
    extensions: BTreeMap<String, ExtensionConfig>,
    service: ServiceConfig,
    /// Whether the service block parsed; when not, its pipelines are not checked on top.
    service_ok: bool,
    /// Components declared in the file whose block failed to parse (`processors.tail_sampling`):
    /// their own error is reported, so references to them are not reported again.
    unparsed: BTreeSet<String>,
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
        let raw = read_raw(text)?;
        let mut errors = Vec::new();
        let parsed = parse_components(raw, &mut errors);
        let settings = parsed.settings(&mut errors);
        match settings {
            Some(settings) if errors.is_empty() => Ok(Config {
                receivers: parsed.receivers,
                processors: parsed.processors,
                exporters: parsed.exporters,
                extensions: parsed.extensions,
                service: parsed.service,
                settings,
            }),
            _ => Err(LoadError::Invalid(errors)),
        }
    }
}

/// Expands environment references and reads the top-level blocks.
fn read_raw(text: &str) -> Result<RawConfig, LoadError> {
    let invalid =
        |path: String, message: String| LoadError::Invalid(vec![ConfigError::new(path, message)]);
    let text =
        expand_env(text, |name| std::env::var(name).ok()).map_err(|m| invalid(String::new(), m))?;
    let value: serde_yaml::Value = serde_yaml::from_str(&text)
        .map_err(|e| invalid(String::new(), format!("not valid YAML: {e}")))?;
    serde_path_to_error::deserialize(value).map_err(|err| {
        let path = err.path().to_string();
        let path = if path == "." { String::new() } else { path };
        invalid(path, err.into_inner().to_string())
    })
}

/// Parses every component block by its type, and the service block.
fn parse_components(raw: RawConfig, errors: &mut Vec<ConfigError>) -> Parsed {
    let mut parsed = Parsed::default();
    for (id, value) in raw.receivers {
        let path = format!("receivers.{id}");
        let result = match ComponentId::parse(&id).kind.as_str() {
            "otlp" => parse_block(&path, value).map(ReceiverConfig::Otlp),
            other => Err(unsupported("receiver", other, &path)),
        };
        if let Some(c) = keep(result, &path, errors, &mut parsed.unparsed) {
            parsed.receivers.insert(id, c);
        }
    }
    for (id, value) in raw.processors {
        let path = format!("processors.{id}");
        let result = match ComponentId::parse(&id).kind.as_str() {
            "tail_sampling" => {
                parse_tail_sampling(&path, value, errors).map(ProcessorConfig::TailSampling)
            }
            "batch" => parse_block(&path, value).map(ProcessorConfig::Batch),
            "memory_limiter" => parse_block(&path, value).map(ProcessorConfig::MemoryLimiter),
            "filter" => parse_block(&path, value).map(ProcessorConfig::Filter),
            "resource" => parse_block(&path, value).map(ProcessorConfig::Resource),
            "attributes" => parse_block(&path, value).map(ProcessorConfig::Attributes),
            other => Err(unsupported("processor", other, &path)),
        };
        if let Some(c) = keep(result, &path, errors, &mut parsed.unparsed) {
            parsed.processors.insert(id, c);
        }
    }
    for (id, value) in raw.exporters {
        let path = format!("exporters.{id}");
        let result = match ComponentId::parse(&id).kind.as_str() {
            "otlp" | "otlp_grpc" => parse_block(&path, value).map(ExporterConfig::Otlp),
            "otlphttp" | "otlp_http" => parse_block(&path, value).map(ExporterConfig::OtlpHttp),
            "debug" => parse_block(&path, value).map(ExporterConfig::Debug),
            "file" => parse_block(&path, value).map(ExporterConfig::File),
            "loadbalancing" | "load_balancing" => {
                parse_block(&path, value).map(ExporterConfig::LoadBalancing)
            }
            other => Err(unsupported("exporter", other, &path)),
        };
        if let Some(c) = keep(result, &path, errors, &mut parsed.unparsed) {
            parsed.exporters.insert(id, c);
        }
    }
    for (id, value) in raw.extensions {
        let path = format!("extensions.{id}");
        let result = match ComponentId::parse(&id).kind.as_str() {
            "health_check" => parse_block(&path, value).map(ExtensionConfig::HealthCheck),
            "bearertokenauth" => parse_block(&path, value)
                .map(|c| ExtensionConfig::Auth(AuthExtensionConfig::BearerToken(c))),
            "basicauth" => parse_block(&path, value)
                .map(|c| ExtensionConfig::Auth(AuthExtensionConfig::Basic(c))),
            kind @ ("pprof" | "zpages") => Ok(ExtensionConfig::Inert {
                kind: kind.to_string(),
            }),
            other => Err(unsupported("extension", other, &path)),
        };
        if let Some(c) = keep(result, &path, errors, &mut parsed.unparsed) {
            parsed.extensions.insert(id, c);
        }
    }
    for id in raw.connectors.keys() {
        errors.push(ConfigError::new(
            format!("connectors.{id}"),
            "connectors are not supported by tailgate",
        ));
    }
    match parse_block::<Option<ServiceConfig>>("service", raw.service) {
        Ok(Some(service)) => {
            parsed.service = service;
            parsed.service_ok = true;
        }
        Ok(None) => errors.push(ConfigError::new("service", "the service block is empty")),
        Err(e) => errors.push(e),
    }
    parsed
}

/// A parsed block, or its error recorded (and the component remembered as unparsed).
fn keep<T>(
    result: Result<T, ConfigError>,
    path: &str,
    errors: &mut Vec<ConfigError>,
    unparsed: &mut BTreeSet<String>,
) -> Option<T> {
    match result {
        Ok(v) => Some(v),
        Err(e) => {
            unparsed.insert(path.to_string());
            errors.push(e);
            None
        }
    }
}

/// Every component's settings by ID, for the pipeline to pick from.
struct ComponentSettings {
    receivers: BTreeMap<String, ReceiverSettings>,
    samplers: BTreeMap<String, SamplerSettings>,
    batches: BTreeMap<String, BatchConfig>,
    limiters: BTreeMap<String, MemoryLimiterSettings>,
    stages: BTreeMap<String, StageSettings>,
    exporters: BTreeMap<String, ExporterSettings>,
    balancers: BTreeMap<String, BalancerSettings>,
    health_checks: BTreeMap<String, HealthSettings>,
}

impl Parsed {
    /// Validates every block and the pipeline; the settings when nothing was wrong.
    fn settings(&self, errors: &mut Vec<ConfigError>) -> Option<Settings> {
        let components = self.component_settings(errors);
        let telemetry = self.service.telemetry.settings("service.telemetry", errors);
        if !self.service_ok {
            return None;
        }
        let health_checks = self.service_extensions(&components, errors);
        let mut notices = self.inert_extensions();
        let (receivers, mut role) = self.traces_pipeline(&components, errors, &mut notices)?;
        fit_peer_requests(&mut role, &receivers);
        let memory_limiter = self.pipeline_limiter(&components);
        let span_processors = self.pipeline_stages(&components);
        Some(Settings {
            receivers,
            role,
            health_checks,
            telemetry,
            shutdown_grace: self.service.shutdown_grace_period,
            notices,
            memory_limiter,
            span_processors,
        })
    }

    /// Validates every declared component, used by a pipeline or not.
    fn component_settings(&self, errors: &mut Vec<ConfigError>) -> ComponentSettings {
        let mut out = ComponentSettings {
            receivers: BTreeMap::new(),
            samplers: BTreeMap::new(),
            batches: BTreeMap::new(),
            limiters: BTreeMap::new(),
            stages: BTreeMap::new(),
            exporters: BTreeMap::new(),
            balancers: BTreeMap::new(),
            health_checks: BTreeMap::new(),
        };
        for (id, receiver) in &self.receivers {
            let path = format!("receivers.{id}");
            let ReceiverConfig::Otlp(c) = receiver;
            if let Some(mut s) = c.settings(id, &path, errors) {
                let p = &c.protocols;
                if let (Some(g), Some(cfg)) = (&mut s.grpc, &p.grpc) {
                    let at = format!("{path}.protocols.grpc.auth");
                    g.auth = self.server_auth(cfg.auth.as_ref(), &at, errors);
                }
                if let (Some(h), Some(cfg)) = (&mut s.http, &p.http) {
                    let at = format!("{path}.protocols.http.auth");
                    h.auth = self.server_auth(cfg.auth.as_ref(), &at, errors);
                }
                out.receivers.insert(id.clone(), s);
            }
        }
        for (id, processor) in &self.processors {
            let path = format!("processors.{id}");
            match processor {
                ProcessorConfig::TailSampling(c) => {
                    if let Some(s) = c.settings(&path, errors) {
                        out.samplers.insert(id.clone(), s);
                    }
                }
                ProcessorConfig::Batch(c) => {
                    c.validate(&path, errors);
                    out.batches.insert(id.clone(), c.clone());
                }
                ProcessorConfig::MemoryLimiter(c) => {
                    let total = crate::telemetry::process::total_memory_bytes();
                    if let Some(s) = c.settings(&path, total, errors) {
                        out.limiters.insert(id.clone(), s);
                    }
                }
                ProcessorConfig::Filter(c) => {
                    if let Some(s) = c.settings(id, &path, errors) {
                        out.stages.insert(id.clone(), s);
                    }
                }
                ProcessorConfig::Resource(c) => {
                    if let Some(s) = c.settings(&path, errors) {
                        out.stages.insert(id.clone(), s);
                    }
                }
                ProcessorConfig::Attributes(c) => {
                    if let Some(s) = c.settings(&path, errors) {
                        out.stages.insert(id.clone(), s);
                    }
                }
            }
        }
        for (id, exporter) in &self.exporters {
            let path = format!("exporters.{id}");
            let settings = match exporter {
                ExporterConfig::Otlp(c) => {
                    let auth = self.client_auth(c.auth.as_ref(), &format!("{path}.auth"), errors);
                    c.settings_with_auth(id, &path, auth, errors)
                }
                ExporterConfig::OtlpHttp(c) => {
                    let auth = self.client_auth(c.auth.as_ref(), &format!("{path}.auth"), errors);
                    c.settings_with_auth(id, &path, auth, errors)
                }
                ExporterConfig::Debug(c) => c.settings(id, &path, errors),
                ExporterConfig::File(c) => c.settings(id, &path, errors),
                ExporterConfig::LoadBalancing(c) => {
                    if let Some(s) = c.settings(id, &path, errors) {
                        out.balancers.insert(id.clone(), s);
                    }
                    continue;
                }
            };
            if let Some(s) = settings {
                out.exporters.insert(id.clone(), s);
            }
        }
        for (id, extension) in &self.extensions {
            if let ExtensionConfig::HealthCheck(c) = extension {
                let s = c.settings(&format!("extensions.{id}"), errors);
                out.health_checks.insert(id.clone(), s);
            }
        }
        out
    }

    /// The authentication extension `auth` (at `path`) names: defined under `extensions` as
    /// one, and enabled in `service.extensions`, as the Collector requires.
    fn authenticator(
        &self,
        auth: &AuthenticatorRef,
        path: &str,
        errors: &mut Vec<ConfigError>,
    ) -> Option<&AuthExtensionConfig> {
        let name = &auth.authenticator;
        let at = format!("{path}.authenticator");
        if name.is_empty() {
            errors.push(ConfigError::new(at, "name the authentication extension"));
            return None;
        }
        let found = match self.extensions.get(name) {
            Some(ExtensionConfig::Auth(a)) => a,
            Some(_) => {
                errors.push(ConfigError::new(
                    at,
                    format!("extension `{name}` is not an authenticator (use bearertokenauth or basicauth)"),
                ));
                return None;
            }
            None if self.is_unparsed("extensions", name) => return None,
            None => {
                errors.push(ConfigError::new(
                    at,
                    format!("authenticator `{name}` is not defined under `extensions`"),
                ));
                return None;
            }
        };
        if !self.service.extensions.contains(name) {
            errors.push(ConfigError::new(
                at,
                format!("authenticator `{name}` is not enabled: add it to service.extensions"),
            ));
            return None;
        }
        Some(found)
    }

    fn server_auth(
        &self,
        auth: Option<&AuthenticatorRef>,
        path: &str,
        errors: &mut Vec<ConfigError>,
    ) -> Option<ServerAuth> {
        let auth = auth?;
        let ext = self.authenticator(auth, path, errors)?;
        let name = &auth.authenticator;
        ext.server(name, &format!("extensions.{name}"), errors)
    }

    fn client_auth(
        &self,
        auth: Option<&AuthenticatorRef>,
        path: &str,
        errors: &mut Vec<ConfigError>,
    ) -> Option<ClientAuth> {
        let auth = auth?;
        let ext = self.authenticator(auth, path, errors)?;
        ext.client(&format!("extensions.{}", auth.authenticator), errors)
    }

    /// A warning for each enabled extension that tailgate accepts but does not implement, so
    /// that nobody waits for a profiling or zPages endpoint that never comes.
    fn inert_extensions(&self) -> Vec<String> {
        let mut notices = Vec::new();
        for (i, ext) in self.service.extensions.iter().enumerate() {
            if let Some(ExtensionConfig::Inert { kind }) = self.extensions.get(ext) {
                let what = match kind.as_str() {
                    "pprof" => "no profiling endpoint is served",
                    _ => "no zPages are served; use /metrics and the logs",
                };
                notices.push(format!(
                    "service.extensions[{i}]: extension `{ext}` is accepted but does nothing in tailgate: {what}"
                ));
            }
        }
        notices
    }

    /// The health checks `service.extensions` enables; undefined names are errors.
    fn service_extensions(
        &self,
        components: &ComponentSettings,
        errors: &mut Vec<ConfigError>,
    ) -> Vec<HealthSettings> {
        let mut health_checks = Vec::new();
        for (i, ext) in self.service.extensions.iter().enumerate() {
            match components.health_checks.get(ext) {
                Some(h) => health_checks.push(h.clone()),
                None if self.extensions.contains_key(ext)
                    || self.unparsed.contains(&format!("extensions.{ext}")) => {}
                None => errors.push(ConfigError::new(
                    format!("service.extensions[{i}]"),
                    format!("extension `{ext}` is not defined under `extensions`"),
                )),
            }
        }
        health_checks
    }

    /// Checks `service.pipelines` and picks the one traces pipeline's components.
    fn traces_pipeline(
        &self,
        components: &ComponentSettings,
        errors: &mut Vec<ConfigError>,
        notices: &mut Vec<String>,
    ) -> Option<(Vec<ReceiverSettings>, Role)> {
        let pipelines = &self.service.pipelines;
        for id in pipelines.keys() {
            let kind = ComponentId::parse(id).kind;
            if kind != "traces" {
                errors.push(ConfigError::new(
                    format!("service.pipelines.{id}"),
                    format!("`{kind}` pipelines are not supported: tailgate handles traces only"),
                ));
            }
        }
        let traces: Vec<(&String, &PipelineConfig)> = pipelines
            .iter()
            .filter(|(id, _)| ComponentId::parse(id).kind == "traces")
            .collect();
        let (id, pipeline) = match traces.as_slice() {
            [] => {
                errors.push(ConfigError::new(
                    "service.pipelines",
                    "a `traces` pipeline is required",
                ));
                return None;
            }
            [one] => *one,
            _ => {
                errors.push(ConfigError::new(
                    "service.pipelines",
                    "only one traces pipeline is supported; found several",
                ));
                return None;
            }
        };
        let base = format!("service.pipelines.{id}");
        let receivers = self.pipeline_receivers(&base, pipeline, components, errors);
        let role = self.pipeline_role(&base, pipeline, components, errors, notices);
        Some((receivers, role?))
    }

    /// The traces pipeline's memory limiter (at most one; checked with the pipeline).
    fn pipeline_limiter(&self, components: &ComponentSettings) -> Option<MemoryLimiterSettings> {
        let (_, pipeline) = self
            .service
            .pipelines
            .iter()
            .find(|(id, _)| ComponentId::parse(id).kind == "traces")?;
        pipeline
            .processors
            .iter()
            .find_map(|p| components.limiters.get(p).cloned())
    }

    /// The traces pipeline's filter, resource and attributes processors, in its order.
    fn pipeline_stages(&self, components: &ComponentSettings) -> Vec<StageSettings> {
        let Some((_, pipeline)) = self
            .service
            .pipelines
            .iter()
            .find(|(id, _)| ComponentId::parse(id).kind == "traces")
        else {
            return Vec::new();
        };
        pipeline
            .processors
            .iter()
            .filter_map(|p| components.stages.get(p).cloned())
            .collect()
    }

    /// Whether `section.name` failed to parse (its own error was reported).
    fn is_unparsed(&self, section: &str, name: &str) -> bool {
        self.unparsed.contains(&format!("{section}.{name}"))
    }

    fn pipeline_receivers(
        &self,
        base: &str,
        pipeline: &PipelineConfig,
        components: &ComponentSettings,
        errors: &mut Vec<ConfigError>,
    ) -> Vec<ReceiverSettings> {
        if pipeline.receivers.is_empty() {
            errors.push(ConfigError::new(
                format!("{base}.receivers"),
                "at least one receiver is required",
            ));
        }
        let mut receivers = Vec::new();
        for (i, r) in pipeline.receivers.iter().enumerate() {
            match components.receivers.get(r) {
                Some(s) => receivers.push(s.clone()),
                None if self.receivers.contains_key(r) || self.is_unparsed("receivers", r) => {}
                None => errors.push(ConfigError::new(
                    format!("{base}.receivers[{i}]"),
                    format!("receiver `{r}` is not defined under `receivers`"),
                )),
            }
        }
        receivers
    }

    /// The processors and exporters of the pipeline, as a sampler or a balancer.
    fn pipeline_role(
        &self,
        base: &str,
        pipeline: &PipelineConfig,
        components: &ComponentSettings,
        errors: &mut Vec<ConfigError>,
        notices: &mut Vec<String>,
    ) -> Option<Role> {
        let before = errors.len();
        let mut samplers = Vec::new();
        let mut batches = Vec::new();
        let mut limiters = Vec::new();
        let mut span_stages = Vec::new();
        for (i, p) in pipeline.processors.iter().enumerate() {
            match self.processors.get(p) {
                None if self.is_unparsed("processors", p) => {}
                None => errors.push(ConfigError::new(
                    format!("{base}.processors[{i}]"),
                    format!("processor `{p}` is not defined under `processors`"),
                )),
                Some(ProcessorConfig::TailSampling(_)) => samplers.push(p),
                Some(ProcessorConfig::Batch(_)) => batches.push(p),
                Some(ProcessorConfig::MemoryLimiter(_)) => limiters.push(p),
                Some(
                    ProcessorConfig::Filter(_)
                    | ProcessorConfig::Resource(_)
                    | ProcessorConfig::Attributes(_),
                ) => span_stages.push(p),
            }
        }
        if samplers.len() > 1 || batches.len() > 1 || limiters.len() > 1 {
            errors.push(ConfigError::new(
                format!("{base}.processors"),
                "at most one tail_sampling, one batch and one memory_limiter processor per pipeline",
            ));
        }
        let (exporters, mut balancers) =
            self.pipeline_exporters(base, pipeline, components, errors);
        let front_tier = pipeline.exporters.iter().any(|e| {
            matches!(
                self.exporters.get(e),
                Some(ExporterConfig::LoadBalancing(_))
            )
        });
        if front_tier && !samplers.is_empty() {
            errors.push(ConfigError::new(
                format!("{base}.processors"),
                "tail_sampling and loadbalancing do not go in one pipeline: run a front tier (loadbalancing) and a sampler tier (tail_sampling)",
            ));
        }
        if errors.len() > before {
            return None;
        }
        if let Some(balancer) = balancers.pop() {
            let inert: Vec<&String> = pipeline
                .processors
                .iter()
                .filter(|p| !limiters.contains(p) && !span_stages.contains(p))
                .collect();
            if !inert.is_empty() {
                notices.push(format!(
                    "{base}.processors: {inert:?} have no effect in a front-tier pipeline: each request's spans are routed, one request per sampler, as they arrive",
                ));
            }
            return Some(Role::Balancer(balancer));
        }
        Some(Role::Sampler {
            sampler: samplers
                .first()
                .and_then(|p| components.samplers.get(*p).cloned()),
            batch: batches
                .first()
                .and_then(|p| components.batches.get(*p).cloned()),
            exporters,
        })
    }

    /// The pipeline's exporters and balancers, checked against what is defined.
    fn pipeline_exporters(
        &self,
        base: &str,
        pipeline: &PipelineConfig,
        components: &ComponentSettings,
        errors: &mut Vec<ConfigError>,
    ) -> (Vec<ExporterSettings>, Vec<BalancerSettings>) {
        if pipeline.exporters.is_empty() {
            errors.push(ConfigError::new(
                format!("{base}.exporters"),
                "at least one exporter is required",
            ));
        }
        let mut exporters = Vec::new();
        let mut balancers = Vec::new();
        for (i, e) in pipeline.exporters.iter().enumerate() {
            if let Some(b) = components.balancers.get(e) {
                balancers.push(b.clone());
            } else if let Some(x) = components.exporters.get(e) {
                exporters.push(x.clone());
            } else if !self.exporters.contains_key(e) && !self.is_unparsed("exporters", e) {
                errors.push(ConfigError::new(
                    format!("{base}.exporters[{i}]"),
                    format!("exporter `{e}` is not defined under `exporters`"),
                ));
            }
        }
        let declared_balancers = pipeline
            .exporters
            .iter()
            .filter(|e| {
                matches!(
                    self.exporters.get(*e),
                    Some(ExporterConfig::LoadBalancing(_))
                )
            })
            .count();
        if declared_balancers > 0 && pipeline.exporters.len() > 1 {
            errors.push(ConfigError::new(
                format!("{base}.exporters"),
                "a front-tier pipeline has the loadbalancing exporter as its only exporter",
            ));
        }
        (exporters, balancers)
    }
}

/// A clustered sampler sends its peers requests of at most a quarter of what its own gRPC
/// receivers take (peers are assumed to run the same config), and never more than the cluster's
/// default.
fn fit_peer_requests(role: &mut Role, receivers: &[ReceiverSettings]) {
    let Role::Sampler {
        sampler: Some(sampler),
        ..
    } = role
    else {
        return;
    };
    let Some(cluster) = &mut sampler.cluster else {
        return;
    };
    if let Some(smallest) = receivers
        .iter()
        .filter_map(|r| r.grpc.as_ref().map(|g| g.max_message_bytes))
        .min()
    {
        cluster.max_request_bytes = cluster.max_request_bytes.min(smallest / 4).max(64 * 1024);
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
    if let Some(why) = retired(what, kind) {
        return ConfigError::new(path, format!("{what} type `{kind}` {why}"));
    }
    ConfigError::new(
        path,
        format!("{what} type `{kind}` is not supported by tailgate"),
    )
}

/// Components the Collector itself has removed: a config still naming one gets the Collector's
/// own answer (and the version that removed it), not a bare "not supported".
fn retired(what: &str, kind: &str) -> Option<&'static str> {
    Some(match (what, kind) {
        ("extension", "memory_ballast") => {
            "was removed from the Collector too (v0.107.0); remove it: tailgate has no garbage \
             collector to pad, and the memory_limiter processor bounds memory"
        }
        ("exporter", "logging") => {
            "was removed from the Collector too (v0.111.0); use the debug exporter"
        }
        ("exporter", "jaeger" | "jaeger_thrift") => {
            "was removed from the Collector too (v0.85.0); Jaeger takes OTLP: use the otlp \
             exporter (port 4317) or otlphttp (port 4318)"
        }
        _ => return None,
    })
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
    fn the_receivers_invalid_utf8_option_is_read_and_a_bad_value_named() {
        let refuse = GUIDE.replace(
            "  otlp:\n    protocols:",
            "  otlp:\n    invalid_utf8: refuse\n    protocols:",
        );
        let settings = Config::from_yaml(&refuse).unwrap().settings;
        assert_eq!(
            settings.receivers[0].door.invalid_utf8,
            crate::otlp::InvalidUtf8::Refuse
        );
        let default = Config::from_yaml(GUIDE).unwrap().settings;
        assert_eq!(
            default.receivers[0].door.invalid_utf8,
            crate::otlp::InvalidUtf8::Repair
        );
        let errors = errors_of(&refuse.replace("invalid_utf8: refuse", "invalid_utf8: drop"));
        assert!(
            errors[0].starts_with("receivers.otlp.invalid_utf8:") && errors[0].contains("drop"),
            "{errors:?}"
        );
    }

    #[test]
    fn pprof_and_zpages_are_accepted_with_a_startup_warning() {
        let yaml = GUIDE.replace(
            "service:\n",
            "extensions:\n  pprof:\n    endpoint: localhost:1777\n  zpages:\nservice:\n  extensions: [pprof, zpages]\n",
        );
        let config = Config::from_yaml(&yaml).unwrap();
        let notices = config.settings.notices.join("\n");
        assert!(
            notices
                .contains("service.extensions[0]: extension `pprof` is accepted but does nothing"),
            "{notices}"
        );
        assert!(
            notices.contains("service.extensions[1]: extension `zpages`"),
            "{notices}"
        );
    }

    #[test]
    fn components_the_collector_removed_are_errors_saying_so_with_the_version() {
        let yaml = GUIDE
            .replace(
                "service:\n",
                "extensions:\n  memory_ballast:\n    size_mib: 512\nservice:\n",
            )
            .replace(
                "exporters:\n",
                "exporters:\n  logging:\n    verbosity: detailed\n  jaeger:\n    endpoint: jaeger:14250\n",
            );
        let joined = errors_of(&yaml).join("\n");
        for (path, version) in [
            ("extensions.memory_ballast", "v0.107.0"),
            ("exporters.logging", "v0.111.0"),
            ("exporters.jaeger", "v0.85.0"),
        ] {
            assert!(
                joined.contains(&format!("{path}: "))
                    && joined.contains(&format!("removed from the Collector too ({version})")),
                "{path}: {joined}"
            );
        }
    }

    #[test]
    fn tail_storage_is_refused_as_not_supported_yet() {
        let yaml = GUIDE.replace(
            "decision_wait: 30s",
            "decision_wait: 30s\n    tail_storage:\n      directory: /var/lib/otel",
        );
        let errors = errors_of(&yaml);
        assert!(
            errors
                .iter()
                .any(|e| e.starts_with("processors.tail_sampling.tail_storage:")
                    && e.contains("disk-backed buffer is not supported yet")),
            "{errors:?}"
        );
    }

    #[test]
    fn num_shards_is_accepted_and_zero_is_an_error() {
        let yaml = GUIDE.replace(
            "decision_wait: 30s",
            "decision_wait: 30s\n    num_shards: 4",
        );
        Config::from_yaml(&yaml).unwrap();
        let yaml = GUIDE.replace(
            "decision_wait: 30s",
            "decision_wait: 30s\n    num_shards: 0",
        );
        let errors = errors_of(&yaml);
        assert!(
            errors[0].starts_with("processors.tail_sampling.num_shards:"),
            "{errors:?}"
        );
    }

    #[test]
    fn span_ingest_decides_at_once_and_refuses_stateful_policies() {
        let yaml = GUIDE.replace(
            "decision_wait: 30s",
            "decision_wait: 30s\n    sampling_strategy: span-ingest",
        );
        let config = Config::from_yaml(&yaml).unwrap();
        let Role::Sampler {
            sampler: Some(sampler),
            ..
        } = &config.settings.role
        else {
            panic!("not a sampler")
        };
        assert_eq!(sampler.buffer.decision_wait, Duration::ZERO);
        let yaml = yaml.replace(
            "      - name: baseline",
            "      - name: budget\n        type: and\n        and:\n          and_sub_policy:\n            - name: a\n              type: always_sample\n            - name: r\n              type: rate_limiting\n              rate_limiting:\n                spans_per_second: 10\n      - name: baseline",
        );
        let errors = errors_of(&yaml);
        assert!(
            errors.iter().any(|e| e.starts_with(
                "processors.tail_sampling.policies[2].and.and_sub_policy[1]: policy type `rate_limiting` keeps state"
            )),
            "{errors:?}"
        );
        let yaml = GUIDE.replace(
            "decision_wait: 30s",
            "decision_wait: 30s\n    sampling_strategy: eventually",
        );
        let errors = errors_of(&yaml);
        assert!(
            errors[0].starts_with("processors.tail_sampling.sampling_strategy"),
            "{errors:?}"
        );
    }
}
