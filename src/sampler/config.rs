//! `processors.tail_sampling`: the Collector's tail sampling processor config.

use serde::Deserialize;
use std::time::Duration;

use super::buffer::{BufferCompression, BufferSettings};
use super::cluster::{ClusterSettings, FORWARDED_HEADER};
use super::SamplerSettings;
use crate::exporter::config::{OtlpExporterConfig, TlsClientConfig};
use crate::exporter::RetryConfig;
use crate::policy::PolicyConfig;
use crate::routing::{BackendTemplate, ResolverConfig, ResolverSettings};
use crate::yaml::{duration, ConfigError};

/// The smallest non-zero `max_buffered_bytes`: below a request or two of spans the limit would
/// decide every trace at once.
pub const MIN_BUFFERED_BYTES: u64 = 1 << 20;

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TailSamplingConfig {
    /// Wait from a trace's first span to its decision.
    #[serde(with = "duration::go")]
    pub decision_wait: Duration,
    /// Traces held at once; at the limit the oldest trace is decided early.
    pub num_traces: u64,
    /// Sizing hint for the trace map, as in the Collector.
    pub expected_new_traces_per_sec: u64,
    pub decision_cache: DecisionCacheConfig,
    /// On shutdown, drop undecided traces (counted) instead of deciding them.
    pub drop_pending_traces_on_shutdown: bool,
    /// Stop evaluating policies at the first one that samples.
    pub sample_on_first_match: bool,
    pub policies: Vec<PolicyConfig>,
    /// Once a trace's root span (no parent) is in, decide it this long after, if that is sooner
    /// than `decision_wait`. 0 (default) turns it off.
    #[serde(with = "duration::go")]
    pub decision_wait_after_root_received: Duration,
    /// A trace whose buffered spans exceed this many bytes is decided not sampled at once.
    /// 0 (default) means no limit.
    pub maximum_trace_size_bytes: u64,
    /// At `num_traces`, refuse new spans with a retryable status (gRPC UNAVAILABLE, HTTP 503)
    /// instead of deciding the oldest trace early.
    pub block_on_overflow: bool,
    /// tailgate extension: a limit on the memory the buffered traces hold, in bytes (an estimate
    /// counting span bytes as stored, per-span summaries and per-trace bookkeeping). At the limit
    /// the oldest traces are decided early, or with `block_on_overflow` requests are refused with
    /// a retryable status. 0 (default) means no limit.
    pub max_buffered_bytes: u64,
    /// tailgate extension: `none` (default) or `zstd`, to compress each trace's buffered span
    /// bytes (with a dictionary trained on the first spans received) and decompress them at
    /// decision time: less memory per buffered span for some CPU.
    pub buffer_compression: BufferCompression,
    /// tailgate extension: coordinate with the other samplers so traces stay whole while the
    /// sampler set changes (see `sampler::cluster`).
    pub cluster: Option<ClusterConfig>,
    /// tailgate extension (Refinery's dry run): forward every trace, each span carrying
    /// `tailsampling.sampled` with the decision that would have been taken.
    pub dry_run: bool,
    /// The Collector's `processor.tailsamplingprocessor.recordpolicy` feature gate as a key (it
    /// is also turned on by that gate in `--feature-gates`): kept traces' scopes carry
    /// `tailsampling.policy`, the name of the policy that kept them.
    pub record_policy: bool,
    /// The Collector's independent decision loops by trace-ID hash (v0.159). tailgate's buffer
    /// always runs that way: [`super::buffer`]'s shards each have their own decider, so the
    /// value is checked (at least 1) and otherwise changes nothing.
    pub num_shards: Option<u64>,
    /// `trace-complete` (default): decide `decision_wait` after a trace's first span.
    /// `span-ingest`: decide each trace as its first batch arrives; later spans follow the
    /// cached decision. Policies that keep state across traces are refused with it.
    pub sampling_strategy: SamplingStrategy,
    /// A disk-backed buffer: not supported yet, refused with a message saying so.
    pub tail_storage: Option<serde_yaml::Value>,
}

/// `sampling_strategy`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
pub enum SamplingStrategy {
    #[default]
    #[serde(rename = "trace-complete")]
    TraceComplete,
    #[serde(rename = "span-ingest")]
    SpanIngest,
}

impl Default for TailSamplingConfig {
    fn default() -> Self {
        Self {
            decision_wait: Duration::from_secs(30),
            num_traces: 50_000,
            expected_new_traces_per_sec: 0,
            decision_cache: DecisionCacheConfig::default(),
            drop_pending_traces_on_shutdown: false,
            sample_on_first_match: false,
            policies: Vec::new(),
            decision_wait_after_root_received: Duration::ZERO,
            maximum_trace_size_bytes: 0,
            block_on_overflow: false,
            max_buffered_bytes: 0,
            buffer_compression: BufferCompression::None,
            cluster: None,
            dry_run: false,
            record_policy: false,
            num_shards: None,
            sampling_strategy: SamplingStrategy::TraceComplete,
            tail_storage: None,
        }
    }
}

/// `decision_cache`: how many decided trace IDs are remembered so late spans follow the decision.
///
/// The Collector disables the caches when unset but keeps decided traces in its map until
/// `num_traces` newer ones push them out, so late spans follow the decision for that long. tailgate
/// frees a trace's spans at decision time, so when a size is unset it remembers `num_traces`
/// decisions of that kind (a few bytes each) to give the same behaviour. An explicit 0 disables.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DecisionCacheConfig {
    pub sampled_cache_size: Option<usize>,
    pub non_sampled_cache_size: Option<usize>,
}

impl TailSamplingConfig {
    /// The sampler's settings, or `None` with the errors added.
    pub fn settings(&self, path: &str, errors: &mut Vec<ConfigError>) -> Option<SamplerSettings> {
        let before = errors.len();
        if self.decision_wait.is_zero() {
            errors.push(ConfigError::new(
                format!("{path}.decision_wait"),
                "decision_wait must be greater than 0",
            ));
        }
        if self.num_traces == 0 {
            errors.push(ConfigError::new(
                format!("{path}.num_traces"),
                "num_traces must be greater than 0",
            ));
        }
        if self.max_buffered_bytes > 0 && self.max_buffered_bytes < MIN_BUFFERED_BYTES {
            errors.push(ConfigError::new(
                format!("{path}.max_buffered_bytes"),
                format!(
                    "max_buffered_bytes {} is too small to hold a request's spans; use 0 (no \
                     limit) or at least {MIN_BUFFERED_BYTES} (1 MiB)",
                    self.max_buffered_bytes
                ),
            ));
        }
        if self.policies.is_empty() {
            errors.push(ConfigError::new(
                format!("{path}.policies"),
                "at least one policy is required",
            ));
        }
        if self.num_shards == Some(0) {
            errors.push(ConfigError::new(
                format!("{path}.num_shards"),
                "num_shards must be at least 1",
            ));
        }
        if self.tail_storage.is_some() {
            errors.push(ConfigError::new(
                format!("{path}.tail_storage"),
                "the disk-backed buffer is not supported yet: tailgate buffers traces in memory \
                 (bound it with num_traces and max_buffered_bytes)",
            ));
        }
        if self.sampling_strategy == SamplingStrategy::SpanIngest {
            for (i, policy) in self.policies.iter().enumerate() {
                if let Some((at, kind)) = stateful_policy(policy) {
                    errors.push(ConfigError::new(
                        format!("{path}.policies[{i}]{at}"),
                        format!(
                            "policy type `{kind}` keeps state across traces and cannot be used \
                             with sampling_strategy: span-ingest"
                        ),
                    ));
                }
            }
        }
        let cluster = self
            .cluster
            .as_ref()
            .map(|c| c.settings(&format!("{path}.cluster"), errors));
        let mut names = std::collections::HashSet::new();
        for (i, policy) in self.policies.iter().enumerate() {
            let p = format!("{path}.policies[{i}]");
            policy.validate(&p, errors);
            if !policy.name.is_empty() && !names.insert(policy.name.as_str()) {
                errors.push(ConfigError::new(
                    format!("{p}.name"),
                    format!("duplicate policy name `{}`", policy.name),
                ));
            }
        }
        if errors.len() > before {
            return None;
        }
        // span-ingest: a trace is decided as soon as its first batch is in the buffer; the
        // decision cache makes its later spans follow.
        let decision_wait = match self.sampling_strategy {
            SamplingStrategy::TraceComplete => self.decision_wait,
            SamplingStrategy::SpanIngest => Duration::ZERO,
        };
        Some(SamplerSettings {
            buffer: BufferSettings {
                decision_wait,
                wait_after_root: self.decision_wait_after_root_received,
                max_trace_bytes: self.maximum_trace_size_bytes as usize,
                block_on_overflow: self.block_on_overflow,
                num_traces: self.num_traces as usize,
                max_buffered_bytes: self.max_buffered_bytes as usize,
                compression: self.buffer_compression,
                sampled_cache_size: self.sampled_cache_size(),
                non_sampled_cache_size: self.non_sampled_cache_size(),
                drop_pending_on_shutdown: self.drop_pending_traces_on_shutdown,
                dry_run: self.dry_run,
                record_policy: self.record_policy,
            },
            policies: self.policies.clone(),
            sample_on_first_match: self.sample_on_first_match,
            cluster: cluster.flatten(),
        })
    }

    pub fn sampled_cache_size(&self) -> usize {
        self.decision_cache
            .sampled_cache_size
            .unwrap_or(self.num_traces as usize)
    }

    pub fn non_sampled_cache_size(&self) -> usize {
        self.decision_cache
            .non_sampled_cache_size
            .unwrap_or(self.num_traces as usize)
    }
}

/// The first policy in `policy` (itself or nested) whose decision depends on other traces
/// (rate and byte budgets), as the YAML path below the policy and its type.
fn stateful_policy(policy: &crate::policy::PolicyConfig) -> Option<(String, &'static str)> {
    fn leaf(kind: &str) -> Option<&'static str> {
        match kind {
            "rate_limiting" => Some("rate_limiting"),
            "bytes_limiting" => Some("bytes_limiting"),
            "composite" => Some("composite"),
            _ => None,
        }
    }
    if let Some(kind) = leaf(&policy.kind) {
        return Some((String::new(), kind));
    }
    let subs: Vec<(String, &str, Option<&crate::policy::config::NotConfig>)> =
        match policy.kind.as_str() {
            "and" => policy
                .and
                .iter()
                .flat_map(|a| {
                    a.and_sub_policy.iter().enumerate().map(|(i, s)| {
                        (
                            format!(".and.and_sub_policy[{i}]"),
                            s.kind.as_str(),
                            s.not.as_ref(),
                        )
                    })
                })
                .collect(),
            "drop" => policy
                .drop
                .iter()
                .flat_map(|a| {
                    a.drop_sub_policy.iter().enumerate().map(|(i, s)| {
                        (
                            format!(".drop.drop_sub_policy[{i}]"),
                            s.kind.as_str(),
                            s.not.as_ref(),
                        )
                    })
                })
                .collect(),
            "not" => policy
                .not
                .iter()
                .filter_map(|n| n.not_sub_policy.as_ref())
                .map(|s| (".not.not_sub_policy".to_string(), s.kind.as_str(), None))
                .collect(),
            _ => vec![],
        };
    for (at, kind, not) in subs {
        if let Some(kind) = leaf(kind) {
            return Some((at, kind));
        }
        if let Some(sub) = not.and_then(|n| n.not_sub_policy.as_ref()) {
            if let Some(kind) = leaf(&sub.kind) {
                return Some((format!("{at}.not.not_sub_policy"), kind));
            }
        }
    }
    None
}

/// `processors.tail_sampling.cluster`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ClusterConfig {
    /// This sampler exactly as the resolver lists it: `ip:port` when the resolver has a `port`
    /// (e.g. `${env:POD_IP}:4317`), the bare IP when it has none.
    pub endpoint: String,
    pub resolver: ResolverConfig,
    /// The OTLP exporter template for sampler-to-sampler traffic.
    pub protocol: ClusterProtocol,
    /// After the resolver stops listing a leaving sampler, how long it keeps forwarding so that
    /// balancers resolve too. Default: twice the DNS interval (or 1s with a static resolver).
    #[serde(with = "duration::go_opt")]
    pub leave_quiet_period: Option<Duration>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ClusterProtocol {
    pub otlp: OtlpExporterConfig,
}

impl Default for ClusterProtocol {
    fn default() -> Self {
        Self {
            otlp: OtlpExporterConfig {
                tls: TlsClientConfig {
                    insecure: true,
                    ..Default::default()
                },
                compression: "none".into(),
                retry_on_failure: RetryConfig {
                    initial_interval: Duration::from_millis(100),
                    max_interval: Duration::from_secs(1),
                    max_elapsed_time: Duration::from_secs(60),
                    ..Default::default()
                },
                ..Default::default()
            },
        }
    }
}

impl ClusterConfig {
    /// The cluster's settings, or `None` with the errors added.
    pub fn settings(&self, path: &str, errors: &mut Vec<ConfigError>) -> Option<ClusterSettings> {
        let before = errors.len();
        if self.endpoint.is_empty() {
            errors.push(ConfigError::new(
                format!("{path}.endpoint"),
                "endpoint (this sampler's ip:port as its peers resolve it) is required",
            ));
        } else if self.endpoint.starts_with(':') {
            errors.push(ConfigError::new(
                format!("{path}.endpoint"),
                format!(
                    "endpoint `{}` has no host (is the environment variable it comes from unset?)",
                    self.endpoint
                ),
            ));
        }
        let resolver = self.resolver.settings(&format!("{path}.resolver"), errors);
        let otlp = &self.protocol.otlp;
        let mut client = otlp.template_settings(&format!("{path}.protocol.otlp"), errors);
        if errors.len() > before {
            return None;
        }
        let resolver = resolver?;
        // Sampler-to-sampler requests say so, and how many samplers they have passed.
        client.headers.push((
            http::header::HeaderName::from_static(FORWARDED_HEADER),
            http::header::HeaderValue::from_static("1"),
        ));
        // How often buffered traces owned elsewhere are handed off: the resolution interval.
        let sweep_interval = resolver.interval();
        Some(ClusterSettings {
            me: self.endpoint.clone(),
            quiet_period: self.leave_quiet_period.unwrap_or(match &resolver {
                ResolverSettings::Dns(dns) => dns.interval * 2,
                ResolverSettings::Static { .. } => Duration::from_secs(1),
            }),
            sweep_interval,
            max_request_bytes: super::cluster::MAX_PEER_REQUEST,
            resolver,
            peers: BackendTemplate {
                client,
                retry: otlp.retry_on_failure.clone(),
                queue: otlp.sending_queue.clone(),
            },
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::yaml::parse_block;

    fn parse(yaml: &str) -> Result<TailSamplingConfig, ConfigError> {
        parse_block(
            "processors.tail_sampling",
            serde_yaml::from_str(yaml).unwrap(),
        )
    }

    fn errors(config: &TailSamplingConfig) -> Vec<ConfigError> {
        let mut errors = Vec::new();
        config.settings("processors.tail_sampling", &mut errors);
        errors
    }

    const POLICY: &str = "policies: [{name: all, type: always_sample}]";

    #[test]
    fn the_byte_limit_and_compression_extensions_parse_and_default_to_off() {
        let config = parse(POLICY).unwrap();
        assert_eq!(config.max_buffered_bytes, 0);
        assert_eq!(config.buffer_compression, BufferCompression::None);
        let config = parse(&format!(
            "{{max_buffered_bytes: 536870912, buffer_compression: zstd, {POLICY}}}"
        ))
        .unwrap();
        assert_eq!(config.max_buffered_bytes, 512 << 20);
        assert_eq!(config.buffer_compression, BufferCompression::Zstd);
        assert!(errors(&config).is_empty());
    }

    #[test]
    fn an_unknown_compression_or_a_tiny_byte_limit_is_an_error_at_its_path() {
        let err = parse(&format!("{{buffer_compression: lz4, {POLICY}}}")).unwrap_err();
        assert_eq!(err.path, "processors.tail_sampling.buffer_compression");
        assert!(err.message.contains("zstd"), "{}", err.message);
        let config = parse(&format!("{{max_buffered_bytes: 1000, {POLICY}}}")).unwrap();
        let errors = errors(&config);
        assert_eq!(errors.len(), 1);
        assert_eq!(
            errors[0].path,
            "processors.tail_sampling.max_buffered_bytes"
        );
    }
}
