//! End to end: what `/metrics` shows, on the real binary. Names follow the rule the Collector's
//! Prometheus reader applies (README "Metrics"): with a configured pull reader `_total` and unit
//! suffixes, which `promtool check metrics` accepts without a word, on the sampler tier and the
//! front tier; with the default reader (the `address` form) the names as declared, which
//! promtool flags only for the missing `_total`, exactly as it flags the Collector's own default
//! endpoint. Series of a front-tier backend that left the resolver go away.

mod support;

use std::collections::BTreeSet;
use std::net::Ipv4Addr;
use std::time::Duration;

use support::dns::DnsServer;
use support::{free_port, otlp, parse_metric, promtool, Gateway, RecordingBackend};
use support::{SamplerConfig, SamplerPorts};
use tailgate::telemetry::catalog;
use tailgate::telemetry::Naming;

const WAIT: Duration = Duration::from_secs(30);

const KEEP_ALL: &str = "
- name: all
  type: always_sample
";

/// `config` with its `service.telemetry.metrics.address` replaced by a Prometheus pull reader on
/// the same port, with `switches` (lines such as `without_units: true`) in its block.
fn with_reader(config: &str, host: &str, port: u16, switches: &[&str]) -> String {
    let address = format!("      address: {host}:{port}\n");
    assert!(config.contains(&address), "{config}");
    let mut reader = format!(
        "      readers:\n        - pull:\n            exporter:\n              prometheus:\n                host: {host}\n                port: {port}\n"
    );
    for switch in switches {
        reader += &format!("                {switch}\n");
    }
    config.replace(&address, &reader)
}

/// Sends `traces` traces of two spans each over OTLP/gRPC.
async fn send_traces(endpoint: &str, first: u128, traces: u128) {
    let mut client = otlp::grpc_client(endpoint).await;
    let spans = (first..first + traces)
        .flat_map(|t| (1..=2).map(move |s| otlp::span(otlp::trace_id(t), otlp::span_id(s), "job")))
        .collect();
    client.export(otlp::request("api", spans)).await.unwrap();
}

/// Scrapes until `name` (with `labels`) reaches `at_least`. A separate process offers no other
/// signal than its metrics; each scrape is a real request, bounded by `WAIT`.
async fn wait_for_metric(gateway: &Gateway, name: &str, labels: &[(&str, &str)], at_least: f64) {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let value = gateway.metric(name, labels).await;
        if value >= at_least {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{name}{labels:?} is {value}, not {at_least}, after {WAIT:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The family names of the `# TYPE` lines, with their types.
fn families(text: &str) -> Vec<(String, String)> {
    text.lines()
        .filter_map(|line| line.strip_prefix("# TYPE "))
        .map(|rest| {
            let (name, kind) = rest.split_once(' ').expect("`# TYPE name type`");
            (name.to_string(), kind.to_string())
        })
        .collect()
}

/// Every family shown is a catalog metric under `naming`, with the catalog's type and a
/// `# HELP` line.
fn assert_families_are_declared(text: &str, naming: Naming) {
    let shown = families(text);
    assert!(!shown.is_empty(), "no families in\n{text}");
    for (name, kind) in &shown {
        let metric = catalog::ALL
            .iter()
            .find(|m| m.exported_name(naming) == *name)
            .unwrap_or_else(|| panic!("{name} is shown but the catalog declares no such metric"));
        assert_eq!(kind, metric.kind.prometheus_type(), "{name}");
        assert!(
            text.contains(&format!("# HELP {name} {}\n", metric.help)),
            "{name} has its help text"
        );
    }
}

fn assert_promtool_is_silent(tier: &str, text: &str) {
    let verdict = promtool::check_metrics(text);
    assert!(
        verdict.success && verdict.output.trim().is_empty(),
        "promtool check metrics on the {tier}'s /metrics said:\n{}\n--- /metrics ---\n{text}",
        verdict.output
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_sampler_shows_the_collectors_prometheus_names_and_promtool_has_nothing_to_say() {
    let backend = RecordingBackend::start_grpc().await;
    let ports = SamplerPorts::free();
    let mut config = SamplerConfig::new(ports, KEEP_ALL, &backend);
    config.decision_wait = "200ms".into();
    let config = with_reader(&config.render(), "127.0.0.1", ports.metrics, &[]);
    let gateway = Gateway::start(&config).await;

    send_traces(&ports.grpc_endpoint(), 1, 10).await;
    backend.wait_for_spans(20, WAIT).await.unwrap();
    wait_for_metric(&gateway, "otelcol_exporter_sent_spans_total", &[], 20.0).await;

    let text = gateway.metrics().await;
    assert_promtool_is_silent("sampler", &text);
    assert_families_are_declared(&text, Naming::PROMETHEUS);
    let value = |name: &str, labels: &[(&str, &str)]| {
        parse_metric(&text, name, labels)
            .unwrap_or_else(|| panic!("no {name}{labels:?} in\n{text}"))
    };
    assert_eq!(
        value(
            "otelcol_receiver_accepted_spans_total",
            &[("receiver", "otlp"), ("transport", "grpc")]
        ),
        20.0
    );
    assert_eq!(
        value(
            "otelcol_processor_tail_sampling_global_count_traces_sampled_total",
            &[("sampled", "true")]
        ),
        10.0
    );
    assert_eq!(
        value(
            "otelcol_exporter_sent_spans_total",
            &[("exporter", "otlp/backend")]
        ),
        20.0
    );
    assert_eq!(value("tailgate_decision_lateness_seconds_count", &[]), 10.0);
    let queue = [("exporter", "otlp/backend"), ("data_type", "traces")];
    // The Collector's default sending_queue.queue_size.
    assert_eq!(value("otelcol_exporter_queue_capacity", &queue), 1000.0);
    assert_eq!(value("otelcol_exporter_queue_size", &queue), 0.0);
    assert_eq!(value("tailgate_buffer_max_traces", &[]), 50_000.0);
    assert_eq!(value("tailgate_decision_wait_seconds", &[]), 0.2);
    // The process: uptime and CPU are counters of seconds, memory gauges of bytes.
    assert!(value("otelcol_process_uptime_seconds_total", &[]) > 0.0);
    assert!(value("otelcol_process_cpu_seconds_total", &[]) > 0.0);
    let rss = value("otelcol_process_memory_rss_bytes", &[]);
    let heap = value("otelcol_process_runtime_heap_alloc_bytes", &[]);
    assert!(rss > 1e6, "rss {rss}");
    assert!(
        heap > 0.0 && heap < rss * 4.0,
        "heap {heap} against rss {rss}"
    );
}

/// A sampler listening on `host` (a 127.0.0.x address), always sampling after 200 ms.
fn sampler_on(
    host: Ipv4Addr,
    otlp: u16,
    health: u16,
    metrics: u16,
    backend: &RecordingBackend,
) -> String {
    format!(
        "receivers:
  otlp:
    protocols:
      grpc:
        endpoint: {host}:{otlp}
processors:
  tail_sampling:
    decision_wait: 200ms
    policies:
      - name: all
        type: always_sample
exporters:
  otlp:
    endpoint: {backend}
    tls: {{insecure: true}}
extensions:
  health_check:
    endpoint: {host}:{health}
service:
  extensions: [health_check]
  telemetry:
    metrics:
      address: {host}:{metrics}
  pipelines:
    traces:
      receivers: [otlp]
      processors: [tail_sampling]
      exporters: [otlp]
",
        backend = backend.addr()
    )
}

fn balancer(otlp: u16, health: u16, metrics: u16, resolver: &str) -> String {
    format!(
        "receivers:
  otlp:
    protocols:
      grpc:
        endpoint: 127.0.0.1:{otlp}
exporters:
  loadbalancing:
    protocol:
      otlp:
        tls: {{insecure: true}}
        timeout: 2s
    resolver:
      {resolver}
extensions:
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_front_tier_and_its_sampler_satisfy_promtool() {
    let backend = RecordingBackend::start_grpc().await;
    let host = Ipv4Addr::LOCALHOST;
    let (s_otlp, s_health, s_metrics) = (free_port(), free_port(), free_port());
    let sampler_config = sampler_on(host, s_otlp, s_health, s_metrics, &backend);
    let sampler = Gateway::start(&with_reader(&sampler_config, "127.0.0.1", s_metrics, &[])).await;
    let (b_otlp, b_health, b_metrics) = (free_port(), free_port(), free_port());
    let resolver = format!("static: {{hostnames: [\"127.0.0.1:{s_otlp}\"]}}");
    let balancer_config = balancer(b_otlp, b_health, b_metrics, &resolver);
    let front = Gateway::start(&with_reader(&balancer_config, "127.0.0.1", b_metrics, &[])).await;

    send_traces(&format!("http://127.0.0.1:{b_otlp}"), 1, 10).await;
    backend.wait_for_spans(20, WAIT).await.unwrap();
    wait_for_metric(&front, "otelcol_exporter_sent_spans_total", &[], 20.0).await;

    let text = front.metrics().await;
    assert_promtool_is_silent("front tier", &text);
    assert_families_are_declared(&text, Naming::PROMETHEUS);
    let endpoint = format!("127.0.0.1:{s_otlp}");
    assert_eq!(
        parse_metric(
            &text,
            "otelcol_loadbalancer_num_backends",
            &[("resolver", "static")]
        ),
        Some(1.0)
    );
    assert!(parse_metric(
        &text,
        "otelcol_loadbalancer_backend_outcome_total",
        &[("endpoint", &endpoint), ("success", "true")]
    )
    .is_some_and(|n| n >= 1.0));
    assert_eq!(
        parse_metric(
            &text,
            "otelcol_exporter_sent_spans_total",
            &[("exporter", &format!("loadbalancing/{endpoint}"))]
        ),
        Some(20.0)
    );

    wait_for_metric(&sampler, "otelcol_exporter_sent_spans_total", &[], 20.0).await;
    let text = sampler.metrics().await;
    assert_promtool_is_silent("sampler", &text);
    assert_families_are_declared(&text, Naming::PROMETHEUS);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_reader_config_gets_the_names_the_collector_gives_it() {
    let backend = RecordingBackend::start_grpc().await;
    // (reader switches, or None for the default reader; the naming the catalog should apply;
    // the uptime and accepted-spans names that shows)
    let both = Naming::PROMETHEUS;
    let neither = Naming::COLLECTOR_DEFAULT;
    let units_only = Naming {
        type_suffix: false,
        units: true,
    };
    let total_only = Naming {
        type_suffix: true,
        units: false,
    };
    let cases: &[(Option<&[&str]>, Naming, &str, &str)] = &[
        (
            None,
            neither,
            "otelcol_process_uptime",
            "otelcol_receiver_accepted_spans",
        ),
        (
            Some(&[]),
            both,
            "otelcol_process_uptime_seconds_total",
            "otelcol_receiver_accepted_spans_total",
        ),
        (
            Some(&["without_type_suffix: true"]),
            units_only,
            "otelcol_process_uptime_seconds",
            "otelcol_receiver_accepted_spans",
        ),
        (
            Some(&["without_units: true"]),
            total_only,
            "otelcol_process_uptime_total",
            "otelcol_receiver_accepted_spans_total",
        ),
        (
            Some(&["without_type_suffix: true", "without_units: true"]),
            neither,
            "otelcol_process_uptime",
            "otelcol_receiver_accepted_spans",
        ),
    ];
    for (switches, naming, uptime, accepted) in cases {
        let ports = SamplerPorts::free();
        let mut config = SamplerConfig::new(ports, KEEP_ALL, &backend).render();
        if let Some(switches) = switches {
            config = with_reader(&config, "127.0.0.1", ports.metrics, switches);
        }
        let gateway = Gateway::start(&config).await;
        send_traces(&ports.grpc_endpoint(), 1, 1).await;
        let text = gateway.metrics().await;
        let names: BTreeSet<String> = families(&text).into_iter().map(|(n, _)| n).collect();
        assert!(
            names.contains(*uptime),
            "{switches:?}: {uptime} in {names:?}"
        );
        assert!(
            names.contains(*accepted),
            "{switches:?}: {accepted} in {names:?}"
        );
        assert_families_are_declared(&text, *naming);
        drop(gateway);
    }

    // The default reader's names are the Collector's default endpoint's: promtool's only
    // complaint about them is the one it makes about the Collector's, the missing `_total`.
    let ports = SamplerPorts::free();
    let gateway = Gateway::start(&SamplerConfig::new(ports, KEEP_ALL, &backend).render()).await;
    send_traces(&ports.grpc_endpoint(), 1, 1).await;
    let text = gateway.metrics().await;
    let verdict = promtool::check_metrics(&text);
    let complaints: Vec<&str> = verdict
        .output
        .lines()
        .filter(|l| !l.trim().is_empty())
        .collect();
    assert!(!complaints.is_empty(), "promtool lints the default names");
    for complaint in complaints {
        assert!(
            complaint.ends_with("counter metrics should have \"_total\" suffix"),
            "{complaint}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn series_of_a_backend_that_left_the_resolver_are_removed() {
    const NAME: &str = "samplers.metrics.test";
    let backend = RecordingBackend::start_grpc().await;
    let (otlp, health, metrics) = (free_port(), free_port(), free_port());
    let hosts = [Ipv4Addr::new(127, 0, 0, 2), Ipv4Addr::new(127, 0, 0, 3)];
    let mut samplers = Vec::new();
    for host in hosts {
        samplers.push(Gateway::start(&sampler_on(host, otlp, health, metrics, &backend)).await);
    }
    let dns = DnsServer::start(NAME, hosts.to_vec());
    let resolver = format!(
        "dns: {{hostname: {NAME}, port: \"{otlp}\", interval: 200ms, nameserver: \"{}\"}}",
        dns.addr()
    );
    let (b_otlp, b_health, b_metrics) = (free_port(), free_port(), free_port());
    let front = Gateway::start(&balancer(b_otlp, b_health, b_metrics, &resolver)).await;
    wait_for_metric(&front, "otelcol_loadbalancer_num_backends", &[], 2.0).await;
    send_traces(&format!("http://127.0.0.1:{b_otlp}"), 1, 40).await;
    backend.wait_for_spans(80, WAIT).await.unwrap();

    let staying = format!("{}:{otlp}", hosts[0]);
    let leaving = format!("{}:{otlp}", hosts[1]);
    let text = front.metrics().await;
    for endpoint in [&staying, &leaving] {
        let exporter = format!("loadbalancing/{endpoint}");
        assert!(
            parse_metric(
                &text,
                "otelcol_exporter_queue_capacity",
                &[("exporter", &exporter)]
            )
            .is_some(),
            "{exporter} has its queue gauges\n{text}"
        );
        assert!(
            parse_metric(
                &text,
                "otelcol_loadbalancer_backend_outcome",
                &[("endpoint", endpoint)]
            )
            .is_some_and(|n| n >= 1.0),
            "{endpoint} took traffic\n{text}"
        );
    }

    dns.set_answer(vec![hosts[0]]);
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let text = front.metrics().await;
        if parse_metric(&text, "otelcol_loadbalancer_num_backends", &[]) == Some(1.0)
            && !text.contains(&leaving)
        {
            let exporter = format!("loadbalancing/{staying}");
            assert!(
                parse_metric(
                    &text,
                    "otelcol_exporter_sent_spans",
                    &[("exporter", &exporter)]
                )
                .is_some_and(|n| n >= 1.0),
                "the staying backend keeps its series\n{text}"
            );
            assert!(parse_metric(
                &text,
                "otelcol_loadbalancer_backend_outcome",
                &[("endpoint", &staying)]
            )
            .is_some());
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the series of {leaving} are still shown {WAIT:?} after it left\n{text}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    drop(samplers);
}
