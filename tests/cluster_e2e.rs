//! The sampler cluster's rules between peers, end to end on two samplers (127.0.0.2 and .3):
//! a peer request is buffered where it lands and never forwarded again (the hop rule), a client's
//! spans for a trace another sampler owns are forwarded to it, a leaving sampler refuses peer
//! traffic so its peers route around it, and a decision moves to a trace's new owner so its late
//! spans follow it there.

mod support;

use std::collections::BTreeSet;
use std::time::Duration;

use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use support::cluster::{dns_resolver, ip, Ports, TierSampler, SAMPLERS};
use support::dns::DnsServer;
use support::{otlp, RecordingBackend};
use tailgate::routing::Ring;

const WAIT: Duration = Duration::from_secs(30);

fn sampler<'a>(last: u8, ports: Ports, resolver: &'a str, grace: &'a str) -> TierSampler<'a> {
    TierSampler {
        last,
        ports,
        resolver: Some(resolver),
        // Time for a hand-off sweep to move a trace before its decision, on a loaded 2-core
        // machine (1 s was too tight to be sure of).
        decision_wait: "3s",
        grace,
        receive_limit_mib: 4,
    }
}

fn endpoint(last: u8, ports: &Ports) -> String {
    format!("{}:{}", ip(last), ports.otlp)
}

/// Trace numbers in `1..` whose owner on the ring of `endpoints` is `owner`: inputs chosen so
/// the test knows which sampler must take them (the ring itself is checked elsewhere).
fn traces_owned_by(endpoints: &[String], owner: &str, n: usize) -> Vec<u128> {
    let ring = Ring::new(endpoints);
    (1u128..)
        .filter(|t| ring.endpoint_for(&otlp::trace_id(*t)) == Some(owner))
        .take(n)
        .collect()
}

fn one_span_each(traces: &[u128], span: u64) -> ExportTraceServiceRequest {
    let spans = traces
        .iter()
        .map(|&t| otlp::span(otlp::trace_id(t), otlp::span_id(span), "work"))
        .collect();
    otlp::request("api", spans)
}

/// Sends `request` to a sampler directly, as a peer would (`hops` set) or as a client.
async fn send(
    to: &str,
    request: ExportTraceServiceRequest,
    hops: Option<u32>,
) -> Result<(), tonic::Status> {
    let mut client = otlp::grpc_client(&format!("http://{to}")).await;
    let mut request = tonic::Request::new(request);
    if let Some(hops) = hops {
        request
            .metadata_mut()
            .insert("tailgate-forwarded", hops.to_string().parse().unwrap());
    }
    client.export(request).await.map(|_| ())
}

/// The samplers that exported each of `traces`.
fn exported_by(backend: &RecordingBackend, traces: &[u128]) -> BTreeSet<String> {
    let wanted: BTreeSet<String> = traces
        .iter()
        .map(|t| support::hex(&otlp::trace_id(*t)))
        .collect();
    backend
        .accepted_requests()
        .iter()
        .filter(|r| r.spans().iter().any(|s| wanted.contains(&s.trace_id())))
        .map(|r| r.header("x-sampler").unwrap_or("?").to_string())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_request_is_kept_where_it_lands_and_a_client_request_goes_to_the_owner() {
    let backend = RecordingBackend::start_grpc().await;
    let ports = Ports::free();
    let endpoints = vec![endpoint(2, &ports), endpoint(3, &ports)];
    let resolver = format!(
        "static:\n  hostnames: [\"{}\", \"{}\"]\n",
        endpoints[0], endpoints[1]
    );
    let a = sampler(2, ports, &resolver, "5s").start(&backend).await;
    let b = sampler(3, ports, &resolver, "5s").start(&backend).await;
    let owned_by_b = traces_owned_by(&endpoints, &endpoints[1], 20);

    // As a peer: A takes B's traces into its own buffer (it does not forward a peer's request
    // again); its next sweep hands them to B, their owner, which decides them.
    send(&endpoints[0], one_span_each(&owned_by_b[..10], 1), Some(1))
        .await
        .unwrap();
    backend.wait_for_spans(10, WAIT).await.unwrap();
    assert_eq!(
        exported_by(&backend, &owned_by_b[..10]),
        BTreeSet::from([ip(3).to_string()])
    );
    assert_eq!(
        a.metric_opt("tailgate_cluster_forwarded_spans", &[]).await,
        Some(0.0)
    );
    assert_eq!(
        a.metric_opt("tailgate_cluster_handed_off_traces", &[])
            .await,
        Some(10.0)
    );

    // As a client: A forwards them to B, which decides them.
    send(&endpoints[0], one_span_each(&owned_by_b[10..], 1), None)
        .await
        .unwrap();
    backend.wait_for_spans(20, WAIT).await.unwrap();
    assert_eq!(
        exported_by(&backend, &owned_by_b[10..]),
        BTreeSet::from([ip(3).to_string()])
    );
    assert_eq!(
        a.metric_opt("tailgate_cluster_forwarded_spans", &[]).await,
        Some(10.0)
    );
    drop((a, b));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_leaving_sampler_refuses_peer_traffic_and_still_takes_clients() {
    let backend = RecordingBackend::start_grpc().await;
    let ports = Ports::free();
    let endpoints = vec![endpoint(2, &ports), endpoint(3, &ports)];
    let resolver = format!(
        "static:\n  hostnames: [\"{}\", \"{}\"]\n",
        endpoints[0], endpoints[1]
    );
    // A static resolver never stops listing A, so A keeps receiving for its whole leave period
    // (half the grace period).
    let a = sampler(2, ports, &resolver, "8s").start(&backend).await;
    let b = sampler(3, ports, &resolver, "8s").start(&backend).await;
    a.sigterm();
    // Health turns 503 when shutdown starts: A is leaving from then on.
    let deadline = tokio::time::Instant::now() + WAIT;
    while a.health().await.map(|r| r.status.as_u16()) != Ok(503) {
        assert!(
            tokio::time::Instant::now() < deadline,
            "A never started leaving"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let owned_by_a = traces_owned_by(&endpoints, &endpoints[0], 5);
    let refused = send(&endpoints[0], one_span_each(&owned_by_a, 1), Some(1))
        .await
        .unwrap_err();
    assert_eq!(refused.code(), tonic::Code::FailedPrecondition, "{refused}");
    assert!(refused.message().contains("leaving"), "{refused}");
    // A client is still served: A owns nothing now and forwards to B.
    send(&endpoints[0], one_span_each(&owned_by_a, 2), None)
        .await
        .unwrap();
    backend.wait_for_spans(5, WAIT).await.unwrap();
    assert_eq!(
        exported_by(&backend, &owned_by_a),
        BTreeSet::from([ip(3).to_string()])
    );
    assert!(a.wait_exit(WAIT).await.success(), "{}", a.logs());
    drop(b);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_decision_moves_with_its_trace_so_a_late_span_follows_it_at_the_new_owner() {
    let backend = RecordingBackend::start_grpc().await;
    let ports = Ports::free();
    let dns = DnsServer::start(SAMPLERS, vec![ip(2)]);
    let resolver = dns_resolver(&ports, &dns, "100ms");
    let a = sampler(2, ports, &resolver, "5s").start(&backend).await;
    let b = sampler(3, ports, &resolver, "5s").start(&backend).await;
    let endpoints = vec![endpoint(2, &ports), endpoint(3, &ports)];
    // Traces that A owns alone and B owns once it joins.
    let moving = traces_owned_by(&endpoints, &endpoints[1], 5);
    send(&endpoints[0], one_span_each(&moving, 1), None)
        .await
        .unwrap();
    backend.wait_for_spans(5, WAIT).await.unwrap();

    dns.set_answer(vec![ip(2), ip(3)]);
    support::cluster::wait_for_metric(&b, "tailgate_cluster_moved_decisions", 5.0, WAIT).await;
    // A late span of each reaches B, its owner now: it follows the kept decision (sent at once)
    // instead of starting a new trace there.
    send(&endpoints[1], one_span_each(&moving, 2), None)
        .await
        .unwrap();
    backend.wait_for_spans(10, WAIT).await.unwrap();
    assert_eq!(
        b.metric("tailgate_late_spans", &[("decision", "sampled")])
            .await,
        5.0
    );
    assert_eq!(
        b.metric("otelcol_processor_tail_sampling_new_trace_id_received", &[])
            .await,
        0.0,
        "no new trace was started at the new owner"
    );
    drop((a, b));
}
