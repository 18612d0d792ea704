//! A sampler tier with `cluster` on and a front-tier balancer in front of it, on loopback
//! addresses (`127.0.0.<n>`, one per sampler, all on the same ports), found through a
//! [`DnsServer`] the test runs: the Collector-format YAML of each, and starting them.
//!
//! Every sampler tags its exports with an `x-sampler` header (its address), so a test sees which
//! sampler decided every trace.

use std::net::Ipv4Addr;
use std::time::Duration;

use super::config::indent;
use super::dns::DnsServer;
use super::{free_port, Gateway, RecordingBackend};

/// The DNS name the samplers are found under.
pub const SAMPLERS: &str = "samplers.tailgate.test";

/// `127.0.0.<last>`.
pub fn ip(last: u8) -> Ipv4Addr {
    Ipv4Addr::new(127, 0, 0, last)
}

/// Ports free on 127.0.0.1; every sampler uses them on its own address.
#[derive(Debug, Clone, Copy)]
pub struct Ports {
    pub otlp: u16,
    pub health: u16,
    pub metrics: u16,
}

impl Ports {
    pub fn free() -> Self {
        Ports {
            otlp: free_port(),
            health: free_port(),
            metrics: free_port(),
        }
    }
}

/// The `dns` resolver block for the samplers, re-resolving every `interval`.
pub fn dns_resolver(ports: &Ports, dns: &DnsServer, interval: &str) -> String {
    format!(
        "dns:\n  hostname: {SAMPLERS}\n  port: \"{}\"\n  interval: {interval}\n  nameserver: {}\n",
        ports.otlp,
        dns.addr()
    )
}

/// How a sampler of the tier is configured.
#[derive(Debug, Clone)]
pub struct TierSampler<'a> {
    pub last: u8,
    pub ports: Ports,
    /// The `cluster.resolver` block; `None` for a sampler without `cluster`.
    pub resolver: Option<&'a str>,
    pub decision_wait: &'a str,
    pub grace: &'a str,
    /// `max_recv_msg_size_mib` of the sampler's gRPC receiver (the Collector's default is 4).
    pub receive_limit_mib: u32,
}

impl TierSampler<'_> {
    /// The sampler's config: `always_sample` after `decision_wait`, batched, exporting to
    /// `backend`.
    pub fn config(&self, backend: &RecordingBackend) -> String {
        let host = ip(self.last);
        let cluster = self
            .resolver
            .map(|r| {
                format!(
                    "    cluster:\n      endpoint: {host}:{otlp}\n      resolver:\n{r}",
                    otlp = self.ports.otlp,
                    r = indent(r, 8)
                )
            })
            .unwrap_or_default();
        format!(
            "receivers:
  otlp:
    protocols:
      grpc:
        endpoint: {host}:{otlp}
        max_recv_msg_size_mib: {limit}
processors:
  tail_sampling:
    decision_wait: {wait}
    num_traces: 1000000
    policies:
      - name: all
        type: always_sample
{cluster}  batch:
exporters:
  otlp:
    endpoint: {backend}
    tls: {{insecure: true}}
    compression: none
    headers: {{x-sampler: \"{host}\"}}
    retry_on_failure: {{initial_interval: 100ms, max_interval: 500ms}}
extensions:
  health_check:
    endpoint: {host}:{health}
service:
  extensions: [health_check]
  shutdown_grace_period: {grace}
  telemetry:
    metrics:
      address: {host}:{metrics}
  pipelines:
    traces:
      receivers: [otlp]
      processors: [tail_sampling, batch]
      exporters: [otlp]
",
            otlp = self.ports.otlp,
            health = self.ports.health,
            metrics = self.ports.metrics,
            backend = backend.addr(),
            wait = self.decision_wait,
            grace = self.grace,
            limit = self.receive_limit_mib,
        )
    }

    pub async fn start(&self, backend: &RecordingBackend) -> Gateway {
        Gateway::start(&self.config(backend)).await
    }
}

/// A front-tier balancer on 127.0.0.1 with the given resolver block.
pub fn balancer_config(port: u16, health: u16, metrics: u16, resolver: &str) -> String {
    let resolver = indent(resolver, 6);
    format!(
        "receivers:
  otlp:
    protocols:
      grpc:
        endpoint: 127.0.0.1:{port}
exporters:
  loadbalancing:
    routing_key: traceID
    protocol:
      otlp:
        tls: {{insecure: true}}
        compression: none
        timeout: 5s
        retry_on_failure: {{initial_interval: 100ms, max_interval: 500ms, max_elapsed_time: 0s}}
    resolver:
{resolver}extensions:
  health_check:
    endpoint: 127.0.0.1:{health}
service:
  extensions: [health_check]
  telemetry:
    metrics:
      address: 127.0.0.1:{metrics}
  pipelines:
    traces:
      receivers: [otlp]
      exporters: [loadbalancing]
"
    )
}

/// Waits until `gateway` reports `n` for metric `name` (polling: the metric lives in another
/// process), at most `timeout`.
pub async fn wait_for_metric(gateway: &Gateway, name: &str, n: f64, timeout: Duration) {
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        let value = gateway.metric_opt(name, &[]).await;
        if value == Some(n) {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{name} is {value:?}, not {n}, after {timeout:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
