//! Live reload: on SIGHUP, and with `--watch-config` whenever the file's contents change, the
//! config is read and validated again. A config that does not validate changes nothing: the
//! errors are logged with their YAML paths and the process serves on. One that validates applies
//! what can change under load, and names what cannot:
//!
//! - applied: the `tail_sampling` policies and `sample_on_first_match`, `decision_wait`,
//!   `decision_wait_after_root_received`, `num_traces`, `max_buffered_bytes`,
//!   `maximum_trace_size_bytes`, `block_on_overflow`, `drop_pending_traces_on_shutdown`,
//!   `dry_run` and `record_policy`. Buffered traces stay buffered, keep their deadlines and are
//!   decided by the new policies; counters continue.
//! - not applied until a restart (logged by name, the rest still applies): receivers, exporters,
//!   the batch processor, extensions, telemetry, the role (adding or removing `tail_sampling`,
//!   or the load balancer), the cluster, the decision cache sizes and `buffer_compression`.
//!
//! Each reload is counted in `tailgate_config_reloads{result}`: `applied`, `partial` (something
//! that needs a restart changed) or `failed`.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use crate::config::{Role, Settings};
use crate::sampler::{Sampler, SamplerSettings};
use crate::telemetry::catalog;

/// Loads and validates the config again; the error is printable with its YAML paths.
pub type LoadConfig = Box<dyn Fn() -> Result<Settings, String> + Send + Sync>;

/// Where reloads come from.
pub struct Reload {
    pub load: LoadConfig,
    /// `--watch-config`: the file to watch for changes (checked every second).
    pub watch: Option<PathBuf>,
}

/// How often `--watch-config` looks at the file.
const WATCH_INTERVAL: Duration = Duration::from_secs(1);

/// What a reload did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReloadOutcome {
    Applied,
    /// Applied, except these changes, which need a restart.
    Partial(Vec<&'static str>),
    Failed(String),
}

impl ReloadOutcome {
    fn label(&self) -> &'static str {
        match self {
            ReloadOutcome::Applied => "applied",
            ReloadOutcome::Partial(_) => "partial",
            ReloadOutcome::Failed(_) => "failed",
        }
    }
}

/// Applies `new` over `running` (updating it to what now runs) and says what happened.
pub fn apply(running: &mut Settings, new: Settings, sampler: Option<&Sampler>) -> ReloadOutcome {
    let mut needs_restart = Vec::new();
    let differs =
        |a: &dyn std::fmt::Debug, b: &dyn std::fmt::Debug| format!("{a:?}") != format!("{b:?}");
    if differs(&running.receivers, &new.receivers) {
        needs_restart.push("receivers");
    }
    if differs(&running.health_checks, &new.health_checks) {
        needs_restart.push("extensions");
    }
    if differs(&running.telemetry, &new.telemetry) {
        needs_restart.push("service.telemetry");
    }
    if running.shutdown_grace != new.shutdown_grace {
        needs_restart.push("shutdown_grace_period");
    }
    match (&mut running.role, new.role) {
        (
            Role::Sampler {
                sampler: old_sampler,
                batch: old_batch,
                exporters: old_exporters,
            },
            Role::Sampler {
                sampler: new_sampler,
                batch,
                exporters,
            },
        ) => {
            if differs(old_batch, &batch) {
                needs_restart.push("processors.batch");
            }
            if differs(old_exporters, &exporters) {
                needs_restart.push("exporters");
            }
            match (old_sampler.as_mut(), new_sampler, sampler) {
                (Some(old), Some(new), Some(sampler)) => {
                    let merged = reloadable(old, new, &mut needs_restart);
                    sampler.reload(&merged);
                    *old = merged;
                }
                (None, None, _) => {}
                _ => needs_restart.push("processors.tail_sampling (added or removed)"),
            }
        }
        (Role::Balancer(old), Role::Balancer(new)) => {
            if differs(old, &new) {
                needs_restart.push("exporters.loadbalancing");
            }
        }
        _ => needs_restart.push("the role (sampler or load balancer)"),
    }
    if needs_restart.is_empty() {
        ReloadOutcome::Applied
    } else {
        ReloadOutcome::Partial(needs_restart)
    }
}

/// The new sampler settings with what cannot change while running kept from the old ones.
fn reloadable(
    old: &SamplerSettings,
    mut new: SamplerSettings,
    needs_restart: &mut Vec<&'static str>,
) -> SamplerSettings {
    if format!("{:?}", old.cluster) != format!("{:?}", new.cluster) {
        needs_restart.push("processors.tail_sampling.cluster");
        new.cluster = old.cluster.clone();
    }
    if old.buffer.sampled_cache_size != new.buffer.sampled_cache_size
        || old.buffer.non_sampled_cache_size != new.buffer.non_sampled_cache_size
    {
        needs_restart.push("processors.tail_sampling.decision_cache");
        new.buffer.sampled_cache_size = old.buffer.sampled_cache_size;
        new.buffer.non_sampled_cache_size = old.buffer.non_sampled_cache_size;
    }
    if old.buffer.compression != new.buffer.compression {
        needs_restart.push("processors.tail_sampling.buffer_compression");
        new.buffer.compression = old.buffer.compression;
    }
    new
}

/// Reloads on SIGHUP and, with `watch`, on changes to the file, until `stop`.
pub async fn run(
    reload: Reload,
    mut running: Settings,
    sampler: Option<Arc<Sampler>>,
    stop: CancellationToken,
) {
    use tokio::signal::unix::{signal, SignalKind};
    let mut hangup = match signal(SignalKind::hangup()) {
        Ok(s) => Some(s),
        Err(error) => {
            tracing::error!(%error, "cannot install the SIGHUP handler: reload by signal is off");
            None
        }
    };
    let read = |path: &PathBuf| std::fs::read(path).ok();
    let mut seen = reload.watch.as_ref().and_then(read);
    let mut tick = tokio::time::interval(WATCH_INTERVAL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        let cause = tokio::select! {
            _ = stop.cancelled() => return,
            Some(()) = async { hangup.as_mut()?.recv().await } => "SIGHUP",
            _ = tick.tick(), if reload.watch.is_some() => {
                let now = reload.watch.as_ref().and_then(read);
                if now == seen {
                    continue;
                }
                seen = now;
                "the config file changed"
            }
        };
        let outcome = match (reload.load)() {
            Ok(new) => apply(&mut running, new, sampler.as_deref()),
            Err(errors) => ReloadOutcome::Failed(errors),
        };
        catalog::CONFIG_RELOADS
            .counter(&[outcome.label()])
            .increment(1);
        match &outcome {
            ReloadOutcome::Applied => tracing::info!(cause, "config reloaded"),
            ReloadOutcome::Partial(names) => tracing::warn!(
                cause,
                not_applied = %names.join(", "),
                "config reloaded; these changes need a restart and were not applied"
            ),
            ReloadOutcome::Failed(errors) => tracing::error!(
                cause,
                %errors,
                "config reload failed: the running config stays"
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;

    fn settings(yaml: &str) -> Settings {
        Config::from_yaml(yaml).unwrap().settings
    }

    const BASE: &str = r#"
receivers:
  otlp: {protocols: {grpc: {endpoint: "127.0.0.1:4317"}}}
processors:
  tail_sampling:
    decision_wait: 10s
    policies: [{name: errors, type: status_code, status_code: {status_codes: [ERROR]}}]
exporters:
  otlp: {endpoint: "127.0.0.1:4327", tls: {insecure: true}}
service:
  pipelines:
    traces: {receivers: [otlp], processors: [tail_sampling], exporters: [otlp]}
"#;

    fn sampler_of(settings: &Settings) -> &SamplerSettings {
        match &settings.role {
            Role::Sampler {
                sampler: Some(s), ..
            } => s,
            _ => panic!("not a sampler"),
        }
    }

    #[tokio::test]
    async fn policy_and_timing_changes_apply_and_restart_only_changes_are_named() {
        let mut running = settings(BASE);
        let (out, _rx) = tokio::sync::mpsc::channel(1);
        let sampler = Sampler::start(sampler_of(&running), out, CancellationToken::new());
        let new = BASE
            .replace("decision_wait: 10s", "decision_wait: 3s")
            .replace(
                "type: status_code, status_code: {status_codes: [ERROR]}",
                "type: always_sample",
            );
        assert_eq!(
            apply(&mut running, settings(&new), Some(&sampler)),
            ReloadOutcome::Applied
        );
        let now = sampler_of(&running);
        assert_eq!(now.buffer.decision_wait, Duration::from_secs(3));
        assert_eq!(now.policies[0].kind, "always_sample");

        let moved = new
            .replace("127.0.0.1:4317", "127.0.0.1:4417")
            .replace("decision_wait: 3s", "decision_wait: 4s")
            .replace(
                "tail_sampling:\n",
                "tail_sampling:\n    decision_cache: {sampled_cache_size: 7}\n",
            );
        assert_eq!(
            apply(&mut running, settings(&moved), Some(&sampler)),
            ReloadOutcome::Partial(vec!["receivers", "processors.tail_sampling.decision_cache"])
        );
        let now = sampler_of(&running);
        assert_eq!(
            now.buffer.decision_wait,
            Duration::from_secs(4),
            "the rest applied"
        );
        assert_ne!(now.buffer.sampled_cache_size, 7, "the cache size kept");
        // The running receivers are what is compared next time: still the old address.
        assert!(format!("{:?}", running.receivers).contains("4317"));
    }
}
