//! Where the samplers are: the `resolver` block of the `loadbalancing` exporter, in the
//! Collector's shape, and the task that keeps the endpoint set current.
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
//!
//! A resolver publishes the sorted endpoint set on a `watch` channel; the balancer builds a
//! [`Ring`](super::ring::Ring) from each new set. The endpoint strings are what the ring hashes,
//! so they are formed exactly as the Collector forms them (`resolver_static.go`,
//! `resolver_dns.go`, `loadbalancer.go` in opentelemetry-collector-contrib):
//!
//! - `static`: the hostnames as written, sorted. No port is added: `sampler-1` hashes as
//!   `sampler-1`, and only the connection goes to port 4317 ([`endpoint_with_port`]).
//! - `dns`: every address the name resolves to (A and AAAA, as Go's `LookupIPAddr`), IPv4 as
//!   `10.0.0.7`, IPv6 as `[fd00::7]`, with `:port` appended only when `port` is set, sorted.
//!   The Collector's `port` has no default, so `port` unset puts bare IPs on the ring (and
//!   connects to 4317); setting `port: "4317"` puts `ip:4317` on the ring, which routes traces
//!   differently. A mixed fleet must use the same `port` setting everywhere.
//!
//! The `dns` task resolves at start and then every `interval`. A failed, timed-out or empty
//! resolution keeps the last good set, logs one warning (one attempt per interval, so at most one
//! line per interval), counts `otelcol_loadbalancer_num_resolutions{success="false"}`, and tries
//! again at the next tick. Start-up never waits for or fails on DNS: the set starts empty. The
//! watch value changes only when the sorted set changes.

use std::future::Future;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use serde::{Deserialize, Deserializer};
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio::time::MissedTickBehavior;
use tokio_util::sync::CancellationToken;

use super::dns::{self, DnsError};
use crate::config::ConfigError;

/// The port connections go to when an endpoint has none (the Collector's `defaultPort`).
pub const DEFAULT_PORT: &str = "4317";
const DEFAULT_INTERVAL: Duration = Duration::from_secs(5);
const DEFAULT_TIMEOUT: Duration = Duration::from_secs(1);
/// Port of a `nameserver` given without one.
const DNS_PORT: u16 = 53;

const NUM_RESOLUTIONS: &str = "otelcol_loadbalancer_num_resolutions";
const NUM_BACKENDS: &str = "otelcol_loadbalancer_num_backends";
const NUM_BACKEND_UPDATES: &str = "otelcol_loadbalancer_num_backend_updates";

/// `exporters.loadbalancing.resolver`.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ResolverConfig {
    #[serde(rename = "static", default, deserialize_with = "present")]
    pub r#static: Option<StaticResolverConfig>,
    #[serde(default, deserialize_with = "present")]
    pub dns: Option<DnsResolverConfig>,
    /// The Collector's Kubernetes resolver. Not implemented; accepted here only so that
    /// [`validate`](Self::validate) can say so at its path instead of "unknown field".
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
    #[serde(default = "default_interval", with = "crate::config::duration::go")]
    pub interval: Duration,
    /// How long one resolution may take. Zero means the default, as in the Collector.
    #[serde(default = "default_timeout", with = "crate::config::duration::go")]
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
    /// to `errors`.
    pub fn validate(&self, path: &str, errors: &mut Vec<ConfigError>) {
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

/// The static resolver's endpoints: the hostnames as written, sorted, without duplicates
/// (duplicates never changed the Collector's ring: the first copy claims every point).
pub fn static_endpoints(hostnames: &[String]) -> Vec<String> {
    let mut endpoints = hostnames.to_vec();
    endpoints.sort();
    endpoints.dedup();
    endpoints
}

/// The DNS resolver's endpoints for `addresses`: `ip` or `[ipv6]`, then `:port` when `port` is
/// set; sorted as strings (so `10.0.0.10` before `10.0.0.9`, as Go's `sort.Strings`), without
/// duplicates.
pub fn dns_endpoints(addresses: &[IpAddr], port: &str) -> Vec<String> {
    let mut endpoints: Vec<String> = addresses
        .iter()
        .map(|address| {
            // Go's `To4()` is non-nil for IPv4-mapped IPv6 addresses, which then print as IPv4.
            let host = match address {
                IpAddr::V4(v4) => v4.to_string(),
                IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
                    Some(v4) => v4.to_string(),
                    None => format!("[{v6}]"),
                },
            };
            if port.is_empty() {
                host
            } else {
                format!("{host}:{port}")
            }
        })
        .collect();
    endpoints.sort();
    endpoints.dedup();
    endpoints
}

/// The address to connect to for a ring endpoint: the endpoint itself if it names a port, else
/// `endpoint:4317` (the Collector's `endpointWithPort`). Unlike the Collector, a bracketed IPv6
/// address without a port (`[fd00::7]`) also gets the default port: the Collector sees its colon
/// and leaves it portless.
pub fn endpoint_with_port(endpoint: &str) -> String {
    let has_port = if endpoint.starts_with('[') {
        endpoint.contains("]:")
    } else {
        endpoint.contains(':')
    };
    if has_port {
        endpoint.to_string()
    } else {
        format!("{endpoint}:{DEFAULT_PORT}")
    }
}

/// Why one resolution produced no endpoints.
#[derive(Debug, thiserror::Error)]
pub enum ResolveError {
    #[error(transparent)]
    Dns(#[from] DnsError),
    #[error("the system resolver failed for `{hostname}`: {source}")]
    System { hostname: String, source: io::Error },
    #[error("no answer within {0:?}")]
    Timeout(Duration),
    #[error("`{0}` resolved to no addresses")]
    Empty(String),
}

/// The running resolver: a task publishing endpoint sets until `shutdown` is cancelled or every
/// receiver is dropped. When it stops, the sender is dropped, so receivers' `changed()` returns
/// an error.
#[derive(Debug)]
pub struct Resolver {
    task: JoinHandle<()>,
}

impl Resolver {
    /// Starts resolving `config` (which must have passed [`ResolverConfig::validate`]). Call
    /// inside a Tokio runtime.
    ///
    /// The receiver starts at the empty set and is marked changed whenever a new set is
    /// published: the static set right away, the first DNS set once the first resolution
    /// succeeds. Start-up never waits for DNS.
    pub fn start(
        config: &ResolverConfig,
        shutdown: CancellationToken,
    ) -> (Resolver, watch::Receiver<Vec<String>>) {
        let (tx, rx) = watch::channel(Vec::new());
        let task = if let Some(dns) = &config.dns {
            let hostname = dns.hostname.clone();
            // Validated config: an unparseable nameserver was already reported.
            let nameserver = dns
                .nameserver
                .as_deref()
                .and_then(|text| parse_nameserver(text).ok());
            let timeout = dns.effective_timeout();
            let lookup = move || {
                let hostname = hostname.clone();
                async move {
                    match nameserver {
                        Some(server) => Ok(dns::lookup_ip(server, &hostname, timeout).await?),
                        None => system_lookup(&hostname).await,
                    }
                }
            };
            tokio::spawn(run_dns(dns.clone(), lookup, tx, shutdown))
        } else {
            let hostnames = config
                .r#static
                .as_ref()
                .map(|s| s.hostnames.clone())
                .unwrap_or_default();
            tokio::spawn(run_static(hostnames, tx, shutdown))
        };
        (Resolver { task }, rx)
    }

    /// Waits for the resolver's task to end (after `shutdown` is cancelled).
    pub async fn stopped(self) {
        let _ = self.task.await;
    }
}

async fn system_lookup(hostname: &str) -> Result<Vec<IpAddr>, ResolveError> {
    // The port is irrelevant: only the addresses are used.
    let addrs = tokio::net::lookup_host((hostname, 0))
        .await
        .map_err(|source| ResolveError::System {
            hostname: hostname.to_string(),
            source,
        })?;
    Ok(addrs.map(|addr| addr.ip()).collect())
}

async fn run_static(
    hostnames: Vec<String>,
    tx: watch::Sender<Vec<String>>,
    shutdown: CancellationToken,
) {
    metrics::counter!(NUM_RESOLUTIONS, "resolver" => "static", "success" => "true").increment(1);
    publish(&tx, static_endpoints(&hostnames), "static");
    // Keep the sender alive: a closed channel tells receivers the resolver stopped.
    tokio::select! {
        _ = shutdown.cancelled() => {}
        _ = tx.closed() => {}
    }
}

/// The DNS loop. `lookup` does one resolution; it is a parameter so the loop's timing and
/// keep-the-last-good-set logic can be tested with scripted answers and a paused clock.
async fn run_dns<L, F>(
    config: DnsResolverConfig,
    mut lookup: L,
    tx: watch::Sender<Vec<String>>,
    shutdown: CancellationToken,
) where
    L: FnMut() -> F,
    F: Future<Output = Result<Vec<IpAddr>, ResolveError>>,
{
    let timeout = config.effective_timeout();
    // The first tick completes at once: resolve at start, then every interval, at a fixed rate
    // (as the Collector's ticker) rather than interval-after-the-last-attempt.
    let mut ticker = tokio::time::interval(config.effective_interval());
    ticker.set_missed_tick_behavior(MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            biased;
            _ = shutdown.cancelled() => return,
            _ = tx.closed() => return,
            _ = ticker.tick() => {}
        }
        let attempt = tokio::time::timeout(timeout, lookup());
        let outcome = tokio::select! {
            biased;
            _ = shutdown.cancelled() => return,
            outcome = attempt => outcome,
        };
        let resolved = match outcome {
            Err(_elapsed) => Err(ResolveError::Timeout(timeout)),
            Ok(Ok(addresses)) if addresses.is_empty() => {
                Err(ResolveError::Empty(config.hostname.clone()))
            }
            Ok(result) => result,
        };
        match resolved {
            Ok(addresses) => {
                metrics::counter!(NUM_RESOLUTIONS, "resolver" => "dns", "success" => "true")
                    .increment(1);
                publish(&tx, dns_endpoints(&addresses, &config.port), "dns");
            }
            Err(error) => {
                metrics::counter!(NUM_RESOLUTIONS, "resolver" => "dns", "success" => "false")
                    .increment(1);
                tracing::warn!(
                    hostname = %config.hostname,
                    %error,
                    kept_endpoints = tx.borrow().len(),
                    "DNS resolution failed; keeping the last resolved endpoints"
                );
            }
        }
    }
}

/// Replaces the published set if it differs; receivers are woken only on a change.
fn publish(tx: &watch::Sender<Vec<String>>, endpoints: Vec<String>, resolver: &'static str) {
    let count = endpoints.len();
    let mut new = Some(endpoints);
    let changed = tx.send_if_modified(|current| {
        let endpoints = new.take().expect("called once");
        if *current == endpoints {
            false
        } else {
            *current = endpoints;
            true
        }
    });
    if changed {
        metrics::gauge!(NUM_BACKENDS, "resolver" => resolver).set(count as f64);
        metrics::counter!(NUM_BACKEND_UPDATES, "resolver" => resolver).increment(1);
        tracing::info!(resolver, endpoints = ?*tx.borrow(), "sampler endpoints changed");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::VecDeque;
    use std::sync::{Arc, Mutex};
    use tokio::time::Instant;

    fn parse(yaml: &str) -> Result<ResolverConfig, String> {
        serde_yaml::from_str(yaml).map_err(|e| e.to_string())
    }

    fn errors_of(config: &ResolverConfig) -> Vec<ConfigError> {
        let mut errors = Vec::new();
        config.validate("exporters.loadbalancing.resolver", &mut errors);
        errors
    }

    fn ip(text: &str) -> IpAddr {
        text.parse().unwrap()
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

    #[test]
    fn dns_endpoints_are_formed_and_sorted_as_the_collector_forms_them() {
        let addresses = [
            ip("10.0.0.9"),
            ip("10.0.0.10"),
            ip("fd00::7"),
            ip("::ffff:10.0.0.8"),
            ip("10.0.0.9"),
        ];
        assert_eq!(
            dns_endpoints(&addresses, ""),
            ["10.0.0.10", "10.0.0.8", "10.0.0.9", "[fd00::7]"]
        );
        assert_eq!(
            dns_endpoints(&addresses, "4317"),
            [
                "10.0.0.10:4317",
                "10.0.0.8:4317",
                "10.0.0.9:4317",
                "[fd00::7]:4317"
            ]
        );
    }

    #[test]
    fn static_endpoints_are_the_hostnames_as_written_sorted() {
        let hostnames: Vec<String> = ["sampler-2", "sampler-1:4317", "sampler-2"]
            .map(String::from)
            .to_vec();
        assert_eq!(
            static_endpoints(&hostnames),
            ["sampler-1:4317", "sampler-2"]
        );
    }

    #[test]
    fn connections_go_to_port_4317_when_the_endpoint_names_none() {
        for (endpoint, want) in [
            ("sampler-1", "sampler-1:4317"),
            ("sampler-1:55690", "sampler-1:55690"),
            ("10.0.0.7", "10.0.0.7:4317"),
            ("[fd00::7]", "[fd00::7]:4317"),
            ("[fd00::7]:4317", "[fd00::7]:4317"),
        ] {
            assert_eq!(endpoint_with_port(endpoint), want);
        }
    }

    /// One scripted answer per resolution.
    enum Step {
        Answer(Vec<&'static str>),
        Fail,
        /// Takes longer than any timeout.
        Hang,
    }

    /// Runs `run_dns` with scripted answers; returns the receiver and a count of lookups started.
    fn scripted(
        interval: Duration,
        steps: Vec<Step>,
        shutdown: CancellationToken,
    ) -> (watch::Receiver<Vec<String>>, watch::Receiver<usize>) {
        let config = DnsResolverConfig {
            hostname: "samplers.test".into(),
            port: "4317".into(),
            interval,
            timeout: Duration::from_millis(100),
            nameserver: None,
        };
        let steps = Arc::new(Mutex::new(VecDeque::from(steps)));
        let (calls_tx, calls_rx) = watch::channel(0usize);
        let lookup = move || {
            calls_tx.send_modify(|n| *n += 1);
            let step = steps.lock().unwrap().pop_front();
            async move {
                match step {
                    Some(Step::Answer(ips)) => Ok(ips.into_iter().map(ip).collect()),
                    Some(Step::Fail) | None => Err(ResolveError::Dns(DnsError::Rcode {
                        name: "samplers.test".into(),
                        rcode: 2,
                    })),
                    Some(Step::Hang) => {
                        tokio::time::sleep(Duration::from_secs(3600)).await;
                        Ok(vec![])
                    }
                }
            }
        };
        let (tx, rx) = watch::channel(Vec::new());
        tokio::spawn(run_dns(config, lookup, tx, shutdown));
        (rx, calls_rx)
    }

    async fn wait_for_calls(calls: &mut watch::Receiver<usize>, n: usize) {
        calls.wait_for(|c| *c >= n).await.unwrap();
    }

    fn strings(list: &[&str]) -> Vec<String> {
        list.iter().map(|s| s.to_string()).collect()
    }

    #[tokio::test(start_paused = true)]
    async fn the_first_set_is_published_at_once_and_refreshed_every_interval() {
        let start = Instant::now();
        let interval = Duration::from_secs(5);
        let (mut rx, _calls) = scripted(
            interval,
            vec![
                Step::Answer(vec!["10.0.0.2", "10.0.0.1"]),
                Step::Answer(vec!["10.0.0.3", "10.0.0.1", "10.0.0.2"]),
            ],
            CancellationToken::new(),
        );
        rx.changed().await.unwrap();
        assert_eq!(start.elapsed(), Duration::ZERO);
        assert_eq!(
            *rx.borrow_and_update(),
            strings(&["10.0.0.1:4317", "10.0.0.2:4317"])
        );

        rx.changed().await.unwrap();
        assert_eq!(start.elapsed(), interval);
        assert_eq!(
            *rx.borrow_and_update(),
            strings(&["10.0.0.1:4317", "10.0.0.2:4317", "10.0.0.3:4317"])
        );
    }

    #[tokio::test(start_paused = true)]
    async fn failed_empty_and_timed_out_resolutions_keep_the_last_good_set() {
        let (mut rx, mut calls) = scripted(
            Duration::from_secs(1),
            vec![
                Step::Answer(vec!["10.0.0.1"]),
                Step::Fail,
                Step::Answer(vec![]),
                Step::Hang,
                Step::Fail,
                Step::Answer(vec!["10.0.0.2"]),
            ],
            CancellationToken::new(),
        );
        rx.changed().await.unwrap();
        assert_eq!(*rx.borrow_and_update(), strings(&["10.0.0.1:4317"]));

        // Lookup 5 (a failure, which completes at once) starting means lookups 2-4 (fail, empty,
        // hang past the timeout) have been handled in full.
        wait_for_calls(&mut calls, 5).await;
        assert!(!rx.has_changed().unwrap());
        assert_eq!(*rx.borrow(), strings(&["10.0.0.1:4317"]));

        rx.changed().await.unwrap();
        assert_eq!(*rx.borrow_and_update(), strings(&["10.0.0.2:4317"]));
    }

    #[tokio::test(start_paused = true)]
    async fn the_same_set_again_does_not_wake_receivers() {
        let (mut rx, mut calls) = scripted(
            Duration::from_secs(1),
            vec![
                Step::Answer(vec!["10.0.0.1", "10.0.0.2"]),
                Step::Answer(vec!["10.0.0.2", "10.0.0.1"]),
                Step::Answer(vec!["10.0.0.1", "10.0.0.2", "10.0.0.1"]),
            ],
            CancellationToken::new(),
        );
        rx.changed().await.unwrap();
        rx.borrow_and_update();
        wait_for_calls(&mut calls, 4).await;
        assert!(!rx.has_changed().unwrap());
    }

    #[tokio::test(start_paused = true)]
    async fn a_failing_first_resolution_starts_empty_and_the_set_arrives_later() {
        let start = Instant::now();
        let (mut rx, _calls) = scripted(
            Duration::from_secs(2),
            vec![Step::Fail, Step::Answer(vec!["10.0.0.1"])],
            CancellationToken::new(),
        );
        assert!(rx.borrow().is_empty());
        rx.changed().await.unwrap();
        assert_eq!(start.elapsed(), Duration::from_secs(2));
        assert_eq!(*rx.borrow(), strings(&["10.0.0.1:4317"]));
    }

    #[tokio::test(start_paused = true)]
    async fn shutdown_stops_the_resolver_and_closes_the_channel() {
        let shutdown = CancellationToken::new();
        let (mut rx, _calls) = scripted(
            Duration::from_secs(1),
            vec![Step::Answer(vec!["10.0.0.1"])],
            shutdown.clone(),
        );
        rx.changed().await.unwrap();
        shutdown.cancel();
        assert!(rx.changed().await.is_err());
    }

    #[tokio::test]
    async fn the_static_resolver_publishes_its_sorted_hostnames_once() {
        let config = parse("static:\n  hostnames: [sampler-2:4317, sampler-1:4317]\n").unwrap();
        let shutdown = CancellationToken::new();
        let (resolver, mut rx) = Resolver::start(&config, shutdown.clone());
        rx.changed().await.unwrap();
        assert_eq!(
            *rx.borrow_and_update(),
            strings(&["sampler-1:4317", "sampler-2:4317"])
        );
        shutdown.cancel();
        assert!(rx.changed().await.is_err());
        resolver.stopped().await;
    }

    #[tokio::test]
    async fn without_a_nameserver_the_system_resolver_is_used() {
        // An IP literal resolves to itself without any DNS traffic.
        let config = parse("dns:\n  hostname: 127.0.0.1\n").unwrap();
        let shutdown = CancellationToken::new();
        let (resolver, mut rx) = Resolver::start(&config, shutdown.clone());
        tokio::time::timeout(Duration::from_secs(10), rx.changed())
            .await
            .expect("resolved within 10s")
            .unwrap();
        assert_eq!(*rx.borrow(), strings(&["127.0.0.1"]));
        shutdown.cancel();
        resolver.stopped().await;
    }
}
