//! Scaling the sampler tier with buffers past one receive limit: a sampler joins, one leaves,
//! two leave at once, while every trace is half sent, and every span the balancer acknowledged
//! must reach the backend exactly once, each trace decided whole by one sampler.
//!
//! The buffers are sized so that moving them the naive way (one request per peer) would exceed
//! the samplers' receive limit several times over. To keep the test to seconds the samplers take
//! 1 MiB per request (a quarter of the Collector's default, so the cluster sends peers requests
//! of at most 256 KiB) and buffer about 6 MB each before the change: a sampler that joins takes
//! about 1.5 MB from each of three peers, and one that leaves hands about 1.7 MB to each of
//! three. (`bench/scale.sh` runs the same scenarios at production size with default limits.)
//! Each trace's first half is sent before the change and its second half after it, so both the
//! hand-off of buffered traces and the forwarding of spans that reach a former owner are
//! exercised.
//!
//! The scenarios share the machine's two cores, so they run one at a time.

mod support;

use std::collections::BTreeMap;
use std::time::Duration;

use opentelemetry_proto::tonic::trace::v1::Span;
use support::cluster::{balancer_config, dns_resolver, ip, wait_for_metric, Ports, TierSampler};
use support::dns::DnsServer;
use support::oracle::CollectorRing;
use support::{free_port, otlp, Gateway, RecordingBackend};
use tokio::sync::Mutex;

/// One scenario at a time: each runs six processes.
static ONE_AT_A_TIME: Mutex<()> = Mutex::const_new(());

/// Traces sent per scenario; 4 spans of about 1.1 KB each: about 40 MB.
const TRACES: u64 = 9_000;
/// `max_recv_msg_size_mib` of every sampler.
const RECEIVE_LIMIT_MIB: u32 = 1;
const SPANS_PER_TRACE: u64 = 4;
const PAYLOAD: usize = 1_000;
/// Long enough for the first halves, the change and the second halves to happen before any
/// trace is due, on a loaded machine with debug builds.
const DECISION_WAIT: &str = "25s";
const WAIT: Duration = Duration::from_secs(120);

/// A running tier: DNS, backend, samplers by last address byte, balancer.
struct Tier {
    dns: DnsServer,
    backend: RecordingBackend,
    ports: Ports,
    resolver: String,
    samplers: BTreeMap<u8, Gateway>,
    balancer: Gateway,
    balancer_port: u16,
}

impl Tier {
    async fn start(first_octets: &[u8]) -> Tier {
        // A hand-off can leave a sampler with a batch over the backend's 4 MiB limit; the
        // exporter splits a batch the backend refuses for its size and sends the halves, so
        // such refusals are expected here (and checked in `stop`: only size refusals, and
        // `check_every_span_once` proves the halves arrived).
        let backend = RecordingBackend::builder(support::Protocol::Grpc)
            .allow_refusals()
            .start()
            .await
            .unwrap();
        let ports = Ports::free();
        let dns = DnsServer::start(
            support::cluster::SAMPLERS,
            first_octets.iter().map(|&l| ip(l)).collect(),
        );
        let resolver = dns_resolver(&ports, &dns, "200ms");
        let mut samplers = BTreeMap::new();
        for &last in first_octets {
            let sampler = sampler(last, ports, &resolver).start(&backend).await;
            samplers.insert(last, sampler);
        }
        let (port, health, metrics) = (free_port(), free_port(), free_port());
        let balancer = Gateway::start(&balancer_config(port, health, metrics, &resolver)).await;
        wait_for_metric(
            &balancer,
            "otelcol_loadbalancer_num_backends",
            first_octets.len() as f64,
            WAIT,
        )
        .await;
        Tier {
            dns,
            backend,
            ports,
            resolver,
            samplers,
            balancer,
            balancer_port: port,
        }
    }

    fn set_dns(&self, octets: &[u8]) {
        self.dns.set_answer(octets.iter().map(|&l| ip(l)).collect());
    }

    /// Sends one half (spans 1-2 or 3-4) of every trace, 100 traces per request, through the
    /// balancer; every request must be acknowledged.
    async fn send_half(&self, half: u64) {
        let endpoint = format!("http://127.0.0.1:{}", self.balancer_port);
        let mut client = otlp::grpc_client(&endpoint).await;
        let payload = "p".repeat(PAYLOAD);
        for first in (1..=TRACES).step_by(100) {
            let spans: Vec<Span> = (first..(first + 100).min(TRACES + 1))
                .flat_map(|t| {
                    let payload = payload.clone();
                    (0..SPANS_PER_TRACE / 2).map(move |i| {
                        let mut span = otlp::span(
                            otlp::trace_id(u128::from(t)),
                            otlp::span_id(half * 2 + i + 1),
                            "work",
                        );
                        span.attributes.push(otlp::kv("payload", &payload));
                        span
                    })
                })
                .collect();
            client
                .export(otlp::request("api", spans))
                .await
                .unwrap_or_else(|status| panic!("the balancer refused a request: {status}"));
        }
    }

    /// Waits for every span at the backend and checks: each (trace, span) exactly once, each
    /// trace whole and decided by one sampler. Returns the traces each sampler decided.
    async fn check_every_span_once(&self) -> BTreeMap<String, usize> {
        let total = (TRACES * SPANS_PER_TRACE) as usize;
        if let Err(e) = self.backend.wait_for_spans(total, WAIT).await {
            panic!("{e}");
        }
        let mut seen: BTreeMap<(String, String), usize> = BTreeMap::new();
        let mut deciders: BTreeMap<String, std::collections::BTreeSet<String>> = BTreeMap::new();
        for request in self.backend.accepted_requests() {
            let sampler = request.header("x-sampler").unwrap_or("?").to_string();
            for span in request.spans() {
                deciders
                    .entry(span.trace_id())
                    .or_default()
                    .insert(sampler.clone());
                *seen.entry((span.trace_id(), span.span_id())).or_default() += 1;
            }
        }
        let duplicated: Vec<_> = seen.iter().filter(|(_, n)| **n > 1).collect();
        assert!(
            duplicated.is_empty(),
            "{} spans arrived more than once, e.g. {:?}",
            duplicated.len(),
            &duplicated[..duplicated.len().min(3)]
        );
        assert_eq!(seen.len(), total, "every span arrived");
        let split: Vec<_> = deciders.iter().filter(|(_, s)| s.len() != 1).collect();
        assert!(
            split.is_empty(),
            "{} traces were decided by more than one sampler, e.g. {:?}",
            split.len(),
            &split[..split.len().min(3)]
        );
        let mut per_sampler = BTreeMap::new();
        for samplers in deciders.into_values() {
            *per_sampler
                .entry(samplers.into_iter().next().unwrap())
                .or_default() += 1;
        }
        per_sampler
    }

    /// How many traces each sampler owns when the ring holds `octets`, by the Collector's ring
    /// (an independent implementation, not tailgate's): who must decide them.
    fn owners(&self, octets: &[u8]) -> BTreeMap<String, usize> {
        let endpoints: Vec<String> = octets
            .iter()
            .map(|&l| format!("{}:{}", ip(l), self.ports.otlp))
            .collect();
        let ring = CollectorRing::new(&endpoints);
        let mut owners = BTreeMap::new();
        for t in 1..=TRACES {
            let owner = ring.endpoint_for(&otlp::trace_id(u128::from(t)));
            let host = owner.split(':').next().unwrap().to_string();
            *owners.entry(host).or_default() += 1;
        }
        owners
    }

    /// The sum of a counter over the given samplers.
    async fn sum(&self, octets: &[u8], metric: &str) -> f64 {
        let mut total = 0.0;
        for last in octets {
            total += self.samplers[last].metric(metric, &[]).await;
        }
        total
    }

    /// Stops every process still running, checking the samplers exit cleanly. The samplers leave
    /// the DNS answer first, so none waits out its leave period for the resolver.
    async fn stop(self) {
        self.set_dns(&[]);
        self.balancer.sigterm();
        for sampler in self.samplers.values() {
            sampler.sigterm();
        }
        for sampler in self.samplers.values() {
            assert!(
                sampler.wait_exit(WAIT).await.success(),
                "{}",
                sampler.logs()
            );
        }
        self.balancer.wait_exit(WAIT).await;
        for refused in self.backend.refused_requests() {
            assert_eq!(
                refused.code,
                tonic::Code::ResourceExhausted,
                "only size refusals are expected: {}",
                refused.reason
            );
        }
    }
}

fn sampler<'a>(last: u8, ports: Ports, resolver: &'a str) -> TierSampler<'a> {
    TierSampler {
        last,
        ports,
        resolver: Some(resolver),
        decision_wait: DECISION_WAIT,
        grace: "60s",
        receive_limit_mib: RECEIVE_LIMIT_MIB,
    }
}

/// Asserts a sampler holds more than four receive limits, so that moving a quarter of its buffer
/// in one request (what a joining sampler takes) would already be refused.
async fn assert_buffered_past_one_receive_limit(gateway: &Gateway) {
    let bytes = gateway.metric("tailgate_buffered_bytes", &[]).await;
    let limit = f64::from(RECEIVE_LIMIT_MIB) * 1024.0 * 1024.0;
    assert!(
        bytes > 4.0 * limit,
        "the sampler buffers only {bytes} bytes: the test would not cross the receive limit"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sampler_joining_takes_its_share_of_buffered_traces_and_nothing_is_lost() {
    let _one = ONE_AT_A_TIME.lock().await;
    let mut tier = Tier::start(&[2, 3, 4]).await;
    tier.send_half(0).await;
    for sampler in tier.samplers.values() {
        assert_buffered_past_one_receive_limit(sampler).await;
    }
    let joining = sampler(5, tier.ports, &tier.resolver)
        .start(&tier.backend)
        .await;
    tier.samplers.insert(5, joining);
    tier.set_dns(&[2, 3, 4, 5]);
    wait_for_metric(
        &tier.balancer,
        "otelcol_loadbalancer_num_backends",
        4.0,
        WAIT,
    )
    .await;
    tier.send_half(1).await;

    let per_sampler = tier.check_every_span_once().await;
    let owners = tier.owners(&[2, 3, 4, 5]);
    assert_eq!(
        per_sampler, owners,
        "every trace was decided by its owner in the new ring, the new sampler its share"
    );
    // Every trace the new sampler owns was buffered elsewhere (its first half) and handed over:
    // at least that many hand-offs. Not exactly that many: while the samplers' views of the
    // peer set differ (each re-resolves on its own 200 ms timer) a trace can be handed back and
    // forth before it settles (measured: 3985 hand-offs for 2358 moving traces), which the
    // exactly-once checks above prove costs nothing.
    let handed = tier
        .sum(&[2, 3, 4], "tailgate_cluster_handed_off_traces")
        .await;
    assert!(
        handed >= owners["127.0.0.5"] as f64,
        "{handed} hand-offs for {} traces that moved",
        owners["127.0.0.5"]
    );
    assert_eq!(
        tier.sum(&[2, 3, 4, 5], "tailgate_cluster_kept_traces")
            .await,
        0.0
    );
    tier.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sampler_leaving_hands_off_its_whole_buffer_and_nothing_is_lost() {
    let _one = ONE_AT_A_TIME.lock().await;
    let mut tier = Tier::start(&[2, 3, 4, 5]).await;
    tier.send_half(0).await;
    assert_buffered_past_one_receive_limit(&tier.samplers[&3]).await;
    let leaving = tier.samplers.remove(&3).unwrap();
    leaving.sigterm();
    tier.set_dns(&[2, 4, 5]);
    wait_for_metric(
        &tier.balancer,
        "otelcol_loadbalancer_num_backends",
        3.0,
        WAIT,
    )
    .await;
    tier.send_half(1).await;

    assert!(
        leaving.wait_exit(WAIT).await.success(),
        "{}",
        leaving.logs()
    );
    let per_sampler = tier.check_every_span_once().await;
    assert_eq!(
        per_sampler,
        tier.owners(&[2, 4, 5]),
        "the leaving sampler decided nothing itself; each trace its new owner"
    );
    assert!(
        leaving
            .logs()
            .contains("handed off traces to their new owners"),
        "{}",
        leaving.logs()
    );
    tier.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_samplers_leaving_at_once_lose_nothing_and_pass_nothing_back_and_forth() {
    let _one = ONE_AT_A_TIME.lock().await;
    let mut tier = Tier::start(&[2, 3, 4, 5]).await;
    tier.send_half(0).await;
    let first = tier.samplers.remove(&3).unwrap();
    let second = tier.samplers.remove(&4).unwrap();
    first.sigterm();
    second.sigterm();
    tier.set_dns(&[2, 5]);
    wait_for_metric(
        &tier.balancer,
        "otelcol_loadbalancer_num_backends",
        2.0,
        WAIT,
    )
    .await;
    tier.send_half(1).await;

    for leaving in [&first, &second] {
        assert!(
            leaving.wait_exit(WAIT).await.success(),
            "{}",
            leaving.logs()
        );
    }
    let per_sampler = tier.check_every_span_once().await;
    assert_eq!(
        per_sampler,
        tier.owners(&[2, 5]),
        "only the staying samplers decided, each trace its owner"
    );
    tier.stop().await;
}
