//! End to end: a front-tier balancer and a sampler tier on 127.0.0.2-5, found through a DNS
//! server the test runs, exporting to one recording backend. Each sampler tags its exports with
//! an `x-sampler` header, so the test sees which sampler decided every trace.

mod support;

use std::collections::{BTreeMap, BTreeSet};
use std::net::Ipv4Addr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use support::config::indent;
use support::dns::DnsServer;
use support::oracle::CollectorRing;
use support::{free_port, otlp, Gateway, RecordingBackend};

const WAIT: Duration = Duration::from_secs(30);
const NAME: &str = "samplers.tailgate.test";

fn ip(last: u8) -> Ipv4Addr {
    Ipv4Addr::new(127, 0, 0, last)
}

/// A port free on 127.0.0.1; the tests use it on every sampler address.
struct Ports {
    otlp: u16,
    health: u16,
    metrics: u16,
}

impl Ports {
    fn free() -> Self {
        Ports {
            otlp: free_port(),
            health: free_port(),
            metrics: free_port(),
        }
    }
}

fn dns_resolver(ports: &Ports, dns: &DnsServer) -> String {
    format!(
        "dns:\n  hostname: {NAME}\n  port: \"{}\"\n  interval: 200ms\n  nameserver: {}\n",
        ports.otlp,
        dns.addr()
    )
}

/// A sampler on `127.0.0.<last>`, always sampling after 1 s, coordinating with its peers.
fn sampler_config(
    last: u8,
    ports: &Ports,
    resolver: Option<&str>,
    backend: &RecordingBackend,
) -> String {
    let host = ip(last);
    let cluster = resolver
        .map(|r| {
            format!(
                "    cluster:\n      endpoint: {host}:{otlp}\n      resolver:\n{r}",
                otlp = ports.otlp,
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
processors:
  tail_sampling:
    # Room for a trace's second half to reach its sampler on a loaded 2-core machine running
    # five gateways (1 s was too tight to be sure of).
    decision_wait: 3s
    policies:
      - name: all
        type: always_sample
{cluster}exporters:
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
  shutdown_grace_period: 20s
  telemetry:
    metrics:
      address: {host}:{metrics}
  pipelines:
    traces:
      receivers: [otlp]
      processors: [tail_sampling]
      exporters: [otlp]
",
        otlp = ports.otlp,
        health = ports.health,
        metrics = ports.metrics,
        backend = backend.addr(),
    )
}

fn balancer_config(port: u16, health: u16, metrics: u16, resolver: &str) -> String {
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
        timeout: 2s
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

/// Sends traces of four spans, each trace split over two requests with other traces' spans in
/// between: the first halves of a batch, then the second halves.
async fn send_traces(endpoint: &str, first: u128, count: u128) {
    let mut client = otlp::grpc_client(endpoint).await;
    for chunk_start in (first..first + count).step_by(25) {
        let ids: Vec<u128> = (chunk_start..(chunk_start + 25).min(first + count)).collect();
        for half in 0..2u64 {
            let spans = ids
                .iter()
                .flat_map(|&t| {
                    (0..2u64).map(move |i| {
                        otlp::span(otlp::trace_id(t), otlp::span_id(half * 2 + i + 1), "step")
                    })
                })
                .collect();
            client.export(otlp::request("api", spans)).await.unwrap();
        }
    }
}

/// For each trace the backend received: the samplers that exported it and its span count.
fn placements(backend: &RecordingBackend) -> BTreeMap<String, (BTreeSet<String>, usize)> {
    let mut map: BTreeMap<String, (BTreeSet<String>, usize)> = BTreeMap::new();
    for request in backend.accepted_requests() {
        let sampler = request.header("x-sampler").unwrap_or("?").to_string();
        for span in request.spans() {
            let entry = map.entry(span.trace_id()).or_default();
            entry.0.insert(sampler.clone());
            entry.1 += 1;
        }
    }
    map
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_trace_lands_whole_on_the_sampler_the_collector_ring_picks() {
    let backend = RecordingBackend::start_grpc().await;
    let ports = Ports::free();
    let dns = DnsServer::start(NAME, vec![ip(2), ip(3), ip(4)]);
    let resolver = dns_resolver(&ports, &dns);
    let mut samplers = Vec::new();
    for last in 2..=4 {
        samplers
            .push(Gateway::start(&sampler_config(last, &ports, Some(&resolver), &backend)).await);
    }
    let (port, health, metrics) = (free_port(), free_port(), free_port());
    let balancer = Gateway::start(&balancer_config(port, health, metrics, &resolver)).await;
    wait_for_backends(&balancer, 3.0).await;

    send_traces(&format!("http://127.0.0.1:{port}"), 1, 300).await;
    backend.wait_for_spans(1200, WAIT).await.unwrap();

    let endpoints: Vec<String> = (2..=4)
        .map(|l| format!("{}:{}", ip(l), ports.otlp))
        .collect();
    // The Collector's ring, implemented independently of tailgate's (tests/support/oracle.rs).
    let ring = CollectorRing::new(&endpoints);
    let mut per_sampler: BTreeMap<String, usize> = BTreeMap::new();
    let mut expected: BTreeMap<String, usize> = BTreeMap::new();
    for (trace, (samplers, spans)) in placements(&backend) {
        assert_eq!(spans, 4, "trace {trace} is whole");
        assert_eq!(
            samplers.len(),
            1,
            "trace {trace} was decided by {samplers:?}"
        );
        let sampler = samplers.into_iter().next().unwrap();
        let id = u128::from_str_radix(&trace, 16).unwrap().to_be_bytes();
        let owner = ring
            .endpoint_for(&id)
            .split(':')
            .next()
            .unwrap()
            .to_string();
        assert_eq!(
            owner, sampler,
            "trace {trace} went where the Collector's ring says"
        );
        *per_sampler.entry(sampler).or_default() += 1;
        *expected.entry(owner).or_default() += 1;
    }
    assert_eq!(per_sampler.len(), 3, "{per_sampler:?}");
    assert_eq!(per_sampler, expected, "each sampler got exactly its share");
    assert_eq!(
        balancer
            .metric("otelcol_loadbalancer_num_backends", &[])
            .await,
        3.0
    );
    // Nothing was forwarded between samplers: balancer and samplers agreed on every owner. (The
    // counter is registered at start, so a renamed metric fails here rather than passing.)
    for sampler in &samplers {
        assert_eq!(
            sampler
                .metric_opt("tailgate_cluster_forwarded_spans", &[])
                .await,
            Some(0.0)
        );
    }
}

async fn wait_for_backends(balancer: &Gateway, n: f64) {
    let deadline = tokio::time::Instant::now() + WAIT;
    while balancer
        .metric_opt("otelcol_loadbalancer_num_backends", &[])
        .await
        != Some(n)
    {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the balancer never saw {n} samplers"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn adding_and_removing_samplers_under_traffic_splits_and_loses_no_trace() {
    let backend = RecordingBackend::start_grpc().await;
    let ports = Ports::free();
    let dns = DnsServer::start(NAME, vec![ip(2), ip(3), ip(4)]);
    let resolver = dns_resolver(&ports, &dns);
    let mut samplers = BTreeMap::new();
    for last in 2..=4u8 {
        samplers.insert(
            last,
            Gateway::start(&sampler_config(last, &ports, Some(&resolver), &backend)).await,
        );
    }
    let (port, health, metrics) = (free_port(), free_port(), free_port());
    let balancer = Gateway::start(&balancer_config(port, health, metrics, &resolver)).await;
    wait_for_backends(&balancer, 3.0).await;

    // Traffic flows for the whole test, 50 traces at a time.
    let stop = Arc::new(AtomicBool::new(false));
    let sent = Arc::new(AtomicU64::new(0));
    let traffic = {
        let (stop, sent) = (Arc::clone(&stop), Arc::clone(&sent));
        let endpoint = format!("http://127.0.0.1:{port}");
        tokio::spawn(async move {
            let mut next = 1u128;
            while !stop.load(Ordering::SeqCst) {
                send_traces(&endpoint, next, 50).await;
                next += 50;
                sent.store((next - 1) as u64, Ordering::SeqCst);
            }
        })
    };
    let wait_sent = |at_least: u64| {
        let sent = Arc::clone(&sent);
        async move {
            let deadline = tokio::time::Instant::now() + WAIT;
            while sent.load(Ordering::SeqCst) < at_least {
                assert!(tokio::time::Instant::now() < deadline, "traffic stalled");
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    };
    wait_sent(300).await;

    // Scale up: a fourth sampler joins and the DNS answer grows.
    samplers.insert(
        5,
        Gateway::start(&sampler_config(5, &ports, Some(&resolver), &backend)).await,
    );
    dns.set_answer(vec![ip(2), ip(3), ip(4), ip(5)]);
    wait_for_backends(&balancer, 4.0).await;
    let after_join = sent.load(Ordering::SeqCst);
    wait_sent(after_join + 300).await;

    // Scale down: one sampler is told to stop and leaves the DNS answer at the same time.
    let leaving = samplers.remove(&3).unwrap();
    leaving.sigterm();
    dns.set_answer(vec![ip(2), ip(4), ip(5)]);
    wait_for_backends(&balancer, 3.0).await;
    let after_leave = sent.load(Ordering::SeqCst);
    wait_sent(after_leave + 300).await;
    assert!(
        leaving.wait_exit(WAIT).await.success(),
        "{}",
        leaving.logs()
    );

    stop.store(true, Ordering::SeqCst);
    traffic.await.unwrap();
    let total = sent.load(Ordering::SeqCst) as usize;
    backend
        .wait_for_spans(total * 4, WAIT)
        .await
        .unwrap_or_else(|e| panic!("{e}"));

    let placed = placements(&backend);
    assert_eq!(placed.len(), total, "every trace arrived");
    let split: Vec<_> = placed
        .iter()
        .filter(|(_, (s, n))| s.len() != 1 || *n != 4)
        .collect();
    assert!(
        split.is_empty(),
        "{} traces split or incomplete: {:?}",
        split.len(),
        &split[..split.len().min(5)]
    );
    let by_sampler: BTreeSet<String> = placed.values().flat_map(|(s, _)| s.clone()).collect();
    assert!(
        by_sampler.contains("127.0.0.5"),
        "the new sampler took traces: {by_sampler:?}"
    );
    assert!(
        leaving.logs().contains("handed off") || leaving.logs().contains("no longer listed"),
        "{}",
        leaving.logs()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sampler_refusing_connections_for_a_while_loses_nothing() {
    let backend = RecordingBackend::start_grpc().await;
    let ports = Ports::free();
    let first = Gateway::start(&sampler_config(2, &ports, None, &backend)).await;
    let resolver = format!(
        "static:\n  hostnames: [\"{}:{p}\", \"{}:{p}\"]\n",
        ip(2),
        ip(3),
        p = ports.otlp
    );
    let (port, health, metrics) = (free_port(), free_port(), free_port());
    let balancer = Gateway::start(&balancer_config(port, health, metrics, &resolver)).await;
    send_traces(&format!("http://127.0.0.1:{port}"), 1, 200).await;

    // Sampler .3 is not running: its traces wait in the balancer's retry queue while the
    // other sampler's traces go through.
    let ring = CollectorRing::new(&[
        format!("{}:{}", ip(2), ports.otlp),
        format!("{}:{}", ip(3), ports.otlp),
    ]);
    let to_first = (1..=200u128)
        .filter(|t| {
            ring.endpoint_for(&otlp::trace_id(*t))
                .starts_with("127.0.0.2:")
        })
        .count();
    assert!(to_first > 0 && to_first < 200);
    backend.wait_for_spans(to_first * 4, WAIT).await.unwrap();
    let deadline = tokio::time::Instant::now() + WAIT;
    while balancer
        .metric_opt(
            "otelcol_loadbalancer_backend_outcome",
            &[("success", "false")],
        )
        .await
        .is_none()
    {
        assert!(
            tokio::time::Instant::now() < deadline,
            "no failed attempt to the down sampler"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    let second = Gateway::start(&sampler_config(3, &ports, None, &backend)).await;
    backend.wait_for_spans(800, WAIT).await.unwrap();
    let placed = placements(&backend);
    assert_eq!(placed.len(), 200);
    assert!(placed.values().all(|(s, n)| s.len() == 1 && *n == 4));
    drop((first, second));
}
