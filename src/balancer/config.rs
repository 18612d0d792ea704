//! `exporters.loadbalancing` (also spelled `load_balancing`) in the Collector's shape, validated
//! into [`BalancerSettings`].

use serde::Deserialize;

use super::BalancerSettings;
use crate::exporter::config::OtlpExporterConfig;
use crate::routing::{BackendTemplate, ResolverConfig, RoutingKey};
use crate::yaml::ConfigError;

/// `exporters.loadbalancing.protocol`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ProtocolConfig {
    pub otlp: OtlpExporterConfig,
}

/// `exporters.loadbalancing`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LoadBalancingConfig {
    /// `traceID` (default) or `service`.
    pub routing_key: RoutingKey,
    pub protocol: ProtocolConfig,
    pub resolver: ResolverConfig,
}

impl LoadBalancingConfig {
    /// The settings of the exporter named `name` at `path`, or `None` with the errors added.
    pub fn settings(
        &self,
        name: &str,
        path: &str,
        errors: &mut Vec<ConfigError>,
    ) -> Option<BalancerSettings> {
        let before = errors.len();
        let otlp = &self.protocol.otlp;
        let client = otlp.template_settings(&format!("{path}.protocol.otlp"), errors);
        let resolver = self.resolver.settings(&format!("{path}.resolver"), errors);
        if errors.len() > before {
            return None;
        }
        Some(BalancerSettings {
            name: name.to_string(),
            routing: self.routing_key,
            template: BackendTemplate {
                client,
                retry: otlp.retry_on_failure.clone(),
                queue: otlp.sending_queue.clone(),
            },
            resolver: resolver?,
        })
    }
}
