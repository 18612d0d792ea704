//! Where the samplers are: the task that keeps the endpoint set of a `resolver` block current
//! (see [`super::config`] for the block).
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
use std::net::IpAddr;
use std::time::Duration;

use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio::time::MissedTickBehavior;
use tokio_util::sync::CancellationToken;

use super::dns::{DnsClient, DnsError};
use crate::telemetry::catalog;
use std::net::SocketAddr;

/// The port connections go to when an endpoint has none (the Collector's `defaultPort`).
pub const DEFAULT_PORT: &str = "4317";

/// Where the samplers are, once validated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ResolverSettings {
    /// The hostnames as written.
    Static {
        hostnames: Vec<String>,
    },
    Dns(DnsSettings),
}

/// `resolver.dns`, validated: zero durations replaced by the defaults, the nameserver parsed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DnsSettings {
    pub hostname: String,
    /// Appended to each address as written; empty for bare IPs (see [`super::resolver`]).
    pub port: String,
    pub interval: Duration,
    pub timeout: Duration,
    pub nameserver: Option<SocketAddr>,
}

impl ResolverSettings {
    /// How often the set is looked at again: the DNS interval, or a second for a static set.
    pub fn interval(&self) -> Duration {
        match self {
            ResolverSettings::Static { .. } => Duration::from_secs(1),
            ResolverSettings::Dns(dns) => dns.interval,
        }
    }
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
    /// Starts resolving. Call inside a Tokio runtime.
    ///
    /// The receiver starts at the empty set and is marked changed whenever a new set is
    /// published: the static set right away, the first DNS set once the first resolution
    /// succeeds. Start-up never waits for DNS.
    pub fn start(
        settings: &ResolverSettings,
        shutdown: CancellationToken,
    ) -> (Resolver, watch::Receiver<Vec<String>>) {
        let (tx, rx) = watch::channel(Vec::new());
        let task = match settings {
            ResolverSettings::Dns(dns) => {
                let hostname = dns.hostname.clone();
                let client = dns
                    .nameserver
                    .map(|server| DnsClient::new(server, dns.timeout));
                let lookup = move || {
                    let hostname = hostname.clone();
                    let client = client.clone();
                    async move {
                        match client {
                            Some(client) => Ok(client.lookup_ip(&hostname).await?),
                            None => system_lookup(&hostname).await,
                        }
                    }
                };
                tokio::spawn(run_dns(dns.clone(), lookup, tx, shutdown))
            }
            ResolverSettings::Static { hostnames } => {
                tokio::spawn(run_static(hostnames.clone(), tx, shutdown))
            }
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
    catalog::LB_NUM_RESOLUTIONS
        .counter(&["static", "true"])
        .increment(1);
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
    config: DnsSettings,
    mut lookup: L,
    tx: watch::Sender<Vec<String>>,
    shutdown: CancellationToken,
) where
    L: FnMut() -> F,
    F: Future<Output = Result<Vec<IpAddr>, ResolveError>>,
{
    let timeout = config.timeout;
    let succeeded = catalog::LB_NUM_RESOLUTIONS.counter(&["dns", "true"]);
    let failed = catalog::LB_NUM_RESOLUTIONS.counter(&["dns", "false"]);
    // The first tick completes at once: resolve at start, then every interval, at a fixed rate
    // (as the Collector's ticker) rather than interval-after-the-last-attempt.
    let mut ticker = tokio::time::interval(config.interval);
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
                succeeded.increment(1);
                publish(&tx, dns_endpoints(&addresses, &config.port), "dns");
            }
            Err(error) => {
                failed.increment(1);
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
        catalog::LB_NUM_BACKENDS
            .gauge(&[resolver])
            .set(count as f64);
        catalog::LB_NUM_BACKEND_UPDATES
            .counter(&[resolver])
            .increment(1);
        tracing::info!(resolver, endpoints = ?*tx.borrow(), "sampler endpoints changed");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::VecDeque;
    use std::sync::{Arc, Mutex};
    use tokio::time::Instant;

    fn ip(text: &str) -> IpAddr {
        text.parse().unwrap()
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
        let config = DnsSettings {
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
                        rcode: "SERVFAIL".into(),
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
        let config = ResolverSettings::Static {
            hostnames: vec!["sampler-2:4317".into(), "sampler-1:4317".into()],
        };
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
        let settings = ResolverSettings::Dns(DnsSettings {
            hostname: "127.0.0.1".into(),
            port: String::new(),
            interval: Duration::from_secs(5),
            timeout: Duration::from_secs(1),
            nameserver: None,
        });
        let shutdown = CancellationToken::new();
        let (resolver, mut rx) = Resolver::start(&settings, shutdown.clone());
        tokio::time::timeout(Duration::from_secs(10), rx.changed())
            .await
            .expect("resolved within 10s")
            .unwrap();
        assert_eq!(*rx.borrow(), strings(&["127.0.0.1"]));
        shutdown.cancel();
        resolver.stopped().await;
    }
}
