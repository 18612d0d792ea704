//! `processors.tail_sampling`: the Collector's tail sampling processor config.

use serde::Deserialize;
use std::time::Duration;

use crate::balancer::ClusterConfig;
use crate::config::{duration, ConfigError};
use crate::policy::PolicyConfig;

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
    /// tailgate extension: coordinate with the other samplers so traces stay whole while the
    /// sampler set changes (see `balancer::cluster`).
    pub cluster: Option<ClusterConfig>,
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
            cluster: None,
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
    pub fn validate(&self, path: &str, errors: &mut Vec<ConfigError>) {
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
        if self.policies.is_empty() {
            errors.push(ConfigError::new(
                format!("{path}.policies"),
                "at least one policy is required",
            ));
        }
        if let Some(cluster) = &self.cluster {
            cluster.validate(&format!("{path}.cluster"), errors);
        }
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
