//! The `resolver` block, in the Collector's shape (`exporters.loadbalancing.resolver`, and
//! `processors.tail_sampling.cluster.resolver`), validated into [`ResolverSettings`].
//!
//! ```yaml
//! resolver:
//!   static:
//!     hostnames: [sampler-1:4317, sampler-2:4317]
//!   # or
//!   dns:
//!     hostname: samplers.observability.svc.cluster.local
//!     port: "4317"        # optional
//!     interval: 5s        # default 5s
//!     timeout: 1s         # default 1s
//!     nameserver: 10.96.0.10:53   # tailgate extension, optional
//! ```

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use serde::{Deserialize, Deserializer};

use super::resolver::{endpoint_with_port, DnsSettings, ResolverSettings};
use crate::yaml::ConfigError;

const DEFAULT_INTERVAL: Duration = Duration::from_secs(5);
const DEFAULT_TIMEOUT: Duration = Duration::from_secs(1);
/// Port of a `nameserver` given without one.
const DNS_PORT: u16 = 53;

/// `exporters.loadbalancing.resolver`.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ResolverConfig {
    #[serde(rename = "static", default, deserialize_with = "present")]
    pub r#static: Option<StaticResolverConfig>,
    #[serde(default, deserialize_with = "present")]
    pub dns: Option<DnsResolverConfig>,
    /// The Collector's Kubernetes resolver. Not implemented; accepted here only so that
    /// [`settings`](Self::settings) can say so at its path instead of "unknown field".
    #[serde(default, deserialize_with = "present")]
    pub k8s: Option<serde_yaml::Value>,
    /// The Collector's AWS Cloud Map resolver. Not implemented, as `k8s`.
    #[serde(default, deserialize_with = "present")]
    pub aws_cloud_map: Option<serde_yaml::Value>,
}

/// `resolver.static`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StaticResolverConfig {
    /// `host` or `host:port` of each sampler.
    #[serde(default)]
    pub hostnames: Vec<String>,
}

/// `resolver.dns`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DnsResolverConfig {
    /// The name whose A/AAAA records are the samplers (a headless Service's name).
    #[serde(default)]
    pub hostname: String,
    /// Appended to every resolved address when set. The Collector takes a string and has no
    /// default; empty means bare IPs on the ring and connections to [`DEFAULT_PORT`]. An integer
    /// is accepted too.
    #[serde(default, deserialize_with = "port_string")]
    pub port: String,
    /// How often to resolve again. Zero means the default, as in the Collector.
    #[serde(default = "default_interval", with = "crate::yaml::duration::go")]
    pub interval: Duration,
    /// How long one resolution may take. Zero means the default, as in the Collector.
    #[serde(default = "default_timeout", with = "crate::yaml::duration::go")]
    pub timeout: Duration,
    /// tailgate extension: `ip` or `ip:port` (port 53 if absent) of a DNS server to ask
    /// directly, instead of the system resolver. Skips the system resolver's caching and search
    /// domains, so give `hostname` in full.
    #[serde(default)]
    pub nameserver: Option<String>,
}

impl Default for DnsResolverConfig {
    fn default() -> Self {
        Self {
            hostname: String::new(),
            port: String::new(),
            interval: DEFAULT_INTERVAL,
            timeout: DEFAULT_TIMEOUT,
            nameserver: None,
        }
    }
}

fn default_interval() -> Duration {
    DEFAULT_INTERVAL
}

fn default_timeout() -> Duration {
    DEFAULT_TIMEOUT
}

/// A key that is present counts as configured even when its block is empty (`dns:` alone), as
/// in the Collector, where it then fails for lack of a hostname.
fn present<'de, D, T>(deserializer: D) -> Result<Option<T>, D::Error>
where
    D: Deserializer<'de>,
    T: Deserialize<'de> + Default,
{
    Option::<T>::deserialize(deserializer).map(|value| Some(value.unwrap_or_default()))
}

fn port_string<'de, D: Deserializer<'de>>(deserializer: D) -> Result<String, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Port {
        Text(String),
        Number(u64),
    }
    Ok(match Port::deserialize(deserializer)? {
        Port::Text(text) => text,
        Port::Number(number) => number.to_string(),
    })
}

impl ResolverConfig {
    /// Checks the block at `path` (e.g. `exporters.loadbalancing.resolver`), adding every problem
    /// to `errors`; the settings when there was none.
    pub fn settings(&self, path: &str, errors: &mut Vec<ConfigError>) -> Option<ResolverSettings> {
        let before = errors.len();
        let mut configured = Vec::new();
        if let Some(config) = &self.r#static {
            configured.push("static");
            config.validate(&format!("{path}.static"), errors);
        }
        if let Some(config) = &self.dns {
            configured.push("dns");
            config.validate(&format!("{path}.dns"), errors);
        }
        if self.k8s.is_some() {
            configured.push("k8s");
            errors.push(ConfigError::new(
                format!("{path}.k8s"),
                "the `k8s` resolver is not supported by tailgate; use `dns` with the samplers' \
                 headless Service name, or `static`",
            ));
        }
        if self.aws_cloud_map.is_some() {
            configured.push("aws_cloud_map");
            errors.push(ConfigError::new(
                format!("{path}.aws_cloud_map"),
                "the `aws_cloud_map` resolver is not supported by tailgate; use `dns` or `static`",
            ));
        }
        match configured.len() {
            0 => errors.push(ConfigError::new(
                path,
                "no resolver specified: set `static` or `dns`",
            )),
            1 => {}
            _ => errors.push(ConfigError::new(
                path,
                format!(
                    "only one resolver may be specified, found {}",
                    configured.join(" and ")
                ),
            )),
        }
        if errors.len() > before {
            return None;
        }
        match (&self.r#static, &self.dns) {
            (Some(s), _) => Some(ResolverSettings::Static {
                hostnames: s.hostnames.clone(),
            }),
            (None, Some(dns)) => Some(ResolverSettings::Dns(DnsSettings {
                hostname: dns.hostname.clone(),
                port: dns.port.clone(),
                interval: dns.effective_interval(),
                timeout: dns.effective_timeout(),
                nameserver: dns
                    .nameserver
                    .as_deref()
                    .map(|n| parse_nameserver(n).expect("validated above")),
            })),
            (None, None) => None,
        }
    }
}

impl StaticResolverConfig {
    fn validate(&self, path: &str, errors: &mut Vec<ConfigError>) {
        if self.hostnames.is_empty() {
            errors.push(ConfigError::new(
                format!("{path}.hostnames"),
                "no endpoints specified for the static resolver",
            ));
        }
        for (i, hostname) in self.hostnames.iter().enumerate() {
            if let Err(message) = check_endpoint(hostname) {
                errors.push(ConfigError::new(format!("{path}.hostnames[{i}]"), message));
            }
        }
    }
}

/// A static endpoint must be `host` or `host:port` with a numeric port, so that connecting to
/// it cannot fail for a reason the config could have caught.
fn check_endpoint(endpoint: &str) -> Result<(), String> {
    if endpoint.trim().is_empty() {
        return Err("hostname is empty".into());
    }
    if endpoint.chars().any(char::is_whitespace) {
        return Err(format!("hostname `{endpoint}` contains whitespace"));
    }
    let with_port = endpoint_with_port(endpoint);
    match with_port.rsplit_once(':') {
        Some((host, port)) if !host.is_empty() && port.parse::<u16>().is_ok_and(|p| p > 0) => {
            Ok(())
        }
        _ => Err(format!(
            "`{endpoint}` is not `host` or `host:port` with a port from 1 to 65535"
        )),
    }
}

impl DnsResolverConfig {
    fn validate(&self, path: &str, errors: &mut Vec<ConfigError>) {
        if self.hostname.trim().is_empty() {
            errors.push(ConfigError::new(
                format!("{path}.hostname"),
                "no hostname specified to resolve the backends",
            ));
        }
        if !self.port.is_empty() && !self.port.parse::<u16>().is_ok_and(|p| p > 0) {
            errors.push(ConfigError::new(
                format!("{path}.port"),
                format!("port `{}` is not a number from 1 to 65535", self.port),
            ));
        }
        if let Some(nameserver) = &self.nameserver {
            if let Err(message) = parse_nameserver(nameserver) {
                errors.push(ConfigError::new(format!("{path}.nameserver"), message));
            }
        }
    }

    /// The interval in effect: zero means the default, as in the Collector.
    pub fn effective_interval(&self) -> Duration {
        if self.interval.is_zero() {
            DEFAULT_INTERVAL
        } else {
            self.interval
        }
    }

    /// The timeout in effect: zero means the default, as in the Collector.
    pub fn effective_timeout(&self) -> Duration {
        if self.timeout.is_zero() {
            DEFAULT_TIMEOUT
        } else {
            self.timeout
        }
    }
}

/// `ip` or `ip:port` (`[ipv6]:port`); port 53 when absent.
pub fn parse_nameserver(text: &str) -> Result<SocketAddr, String> {
    if let Ok(addr) = text.parse::<SocketAddr>() {
        return Ok(addr);
    }
    let bare = text.trim_start_matches('[').trim_end_matches(']');
    bare.parse::<IpAddr>()
        .map(|ip| SocketAddr::new(ip, DNS_PORT))
        .map_err(|_| {
            format!("nameserver `{text}` is not an IP address with an optional port, like `10.96.0.10:53`")
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(yaml: &str) -> Result<ResolverConfig, String> {
        serde_yaml::from_str(yaml).map_err(|e| e.to_string())
    }

    fn errors_of(config: &ResolverConfig) -> Vec<ConfigError> {
        let mut errors = Vec::new();
        config.settings("exporters.loadbalancing.resolver", &mut errors);
        errors
    }

    #[test]
    fn a_dns_block_takes_the_collectors_fields_and_defaults() {
        let config = parse("dns:\n  hostname: samplers.svc\n").unwrap();
        let dns = config.dns.clone().unwrap();
        assert_eq!(dns.hostname, "samplers.svc");
        assert_eq!(dns.port, "");
        assert_eq!(dns.interval, Duration::from_secs(5));
        assert_eq!(dns.timeout, Duration::from_secs(1));
        assert_eq!(dns.nameserver, None);
        assert!(errors_of(&config).is_empty());

        let config = parse(
            "dns:\n  hostname: samplers.svc\n  port: 4317\n  interval: 250ms\n  timeout: 100ms\n  nameserver: 127.0.0.1:5353\n",
        )
        .unwrap();
        let dns = config.dns.clone().unwrap();
        assert_eq!(dns.port, "4317");
        assert_eq!(dns.interval, Duration::from_millis(250));
        assert_eq!(dns.timeout, Duration::from_millis(100));
        assert!(errors_of(&config).is_empty());
        let quoted = parse("dns:\n  hostname: samplers.svc\n  port: \"4317\"\n").unwrap();
        assert_eq!(quoted.dns.unwrap().port, "4317");
    }

    #[test]
    fn a_zero_interval_or_timeout_means_the_default_as_in_the_collector() {
        let config = parse("dns:\n  hostname: s\n  interval: 0s\n  timeout: 0s\n").unwrap();
        let dns = config.dns.unwrap();
        assert_eq!(dns.effective_interval(), Duration::from_secs(5));
        assert_eq!(dns.effective_timeout(), Duration::from_secs(1));
    }

    #[test]
    fn a_static_block_takes_hostnames() {
        let config = parse("static:\n  hostnames: [b:4317, a]\n").unwrap();
        assert_eq!(
            config.r#static.clone().unwrap().hostnames,
            vec!["b:4317", "a"]
        );
        assert!(errors_of(&config).is_empty());
    }

    #[test]
    fn unknown_keys_are_rejected() {
        let err = parse("dns:\n  hostname: s\n  mode: srv\n").unwrap_err();
        assert!(err.contains("mode"), "{err}");
        let err = parse("srv:\n  hostname: s\n").unwrap_err();
        assert!(err.contains("srv"), "{err}");
    }

    #[test]
    fn kubernetes_and_cloud_map_resolvers_are_not_supported_errors_at_their_path() {
        let config = parse("k8s:\n  service: samplers.observability\n").unwrap();
        let errors = errors_of(&config);
        assert_eq!(errors.len(), 1, "{errors:?}");
        assert_eq!(errors[0].path, "exporters.loadbalancing.resolver.k8s");
        assert!(errors[0].message.contains("not supported"), "{errors:?}");

        let config = parse("aws_cloud_map:\n").unwrap();
        let errors = errors_of(&config);
        assert_eq!(
            errors[0].path,
            "exporters.loadbalancing.resolver.aws_cloud_map"
        );
        assert!(errors[0].message.contains("not supported"), "{errors:?}");
    }

    #[test]
    fn exactly_one_resolver_must_be_given() {
        let errors = errors_of(&parse("{}").unwrap());
        assert_eq!(errors.len(), 1);
        assert_eq!(errors[0].path, "exporters.loadbalancing.resolver");
        assert!(errors[0].message.contains("no resolver"), "{errors:?}");

        let both = parse("static:\n  hostnames: [a]\ndns:\n  hostname: s\n").unwrap();
        let errors = errors_of(&both);
        assert_eq!(errors.len(), 1, "{errors:?}");
        assert!(errors[0].message.contains("static and dns"), "{errors:?}");
    }

    #[test]
    fn empty_or_malformed_values_are_errors_at_their_paths() {
        // A present but empty block counts as configured and fails on its contents.
        let errors = errors_of(&parse("dns:\n").unwrap());
        assert_eq!(errors.len(), 1, "{errors:?}");
        assert_eq!(
            errors[0].path,
            "exporters.loadbalancing.resolver.dns.hostname"
        );

        let errors = errors_of(&parse("static:\n  hostnames: []\n").unwrap());
        assert_eq!(
            errors[0].path,
            "exporters.loadbalancing.resolver.static.hostnames"
        );

        let errors =
            errors_of(&parse("static:\n  hostnames: [ok:4317, '', 'b:x', 'c:0']\n").unwrap());
        let paths: Vec<_> = errors.iter().map(|e| e.path.as_str()).collect();
        assert_eq!(
            paths,
            [
                "exporters.loadbalancing.resolver.static.hostnames[1]",
                "exporters.loadbalancing.resolver.static.hostnames[2]",
                "exporters.loadbalancing.resolver.static.hostnames[3]",
            ]
        );

        let errors = errors_of(
            &parse("dns:\n  hostname: s\n  port: http\n  nameserver: dns.local\n").unwrap(),
        );
        let paths: Vec<_> = errors.iter().map(|e| e.path.as_str()).collect();
        assert_eq!(
            paths,
            [
                "exporters.loadbalancing.resolver.dns.port",
                "exporters.loadbalancing.resolver.dns.nameserver",
            ]
        );
        assert!(errors[0].message.contains("`http`"), "{errors:?}");
        assert!(errors[1].message.contains("`dns.local`"), "{errors:?}");
    }

    #[test]
    fn a_nameserver_without_a_port_uses_53() {
        assert_eq!(
            parse_nameserver("10.96.0.10"),
            Ok("10.96.0.10:53".parse().unwrap())
        );
        assert_eq!(
            parse_nameserver("127.0.0.1:5353"),
            Ok("127.0.0.1:5353".parse().unwrap())
        );
        assert_eq!(
            parse_nameserver("[fd00::10]:53"),
            Ok("[fd00::10]:53".parse().unwrap())
        );
        assert_eq!(
            parse_nameserver("fd00::10"),
            Ok("[fd00::10]:53".parse().unwrap())
        );
    }
}
