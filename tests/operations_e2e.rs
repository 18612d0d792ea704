//! End to end, on the real binary: day-2 operations. A live reload (SIGHUP) applies new policies
//! to traces already buffered and a bad one changes nothing; `record_policy` and `dry_run` say
//! what a decision was on the spans that reach the backend; `tailgate replay` judges the `file`
//! exporter's output with another policy set.

mod support;

use std::process::Command;
use std::time::Duration;

use opentelemetry_proto::tonic::common::v1::any_value::Value;
use opentelemetry_proto::tonic::common::v1::KeyValue;
use support::{free_port, otlp, Gateway, RecordingBackend, SamplerConfig, SamplerPorts};

const WAIT: Duration = Duration::from_secs(30);

const ERRORS_ONLY: &str = "
- name: errors
  type: status_code
  status_code:
    status_codes: [ERROR]
";

const KEEP_ALL: &str = "
- name: all
  type: always_sample
";

fn sighup(gateway: &Gateway) {
    assert!(gateway.exit_status().is_none(), "tailgate exited early");
    let status = Command::new("kill")
        .args(["-HUP", &gateway.pid().to_string()])
        .status()
        .expect("run kill");
    assert!(status.success());
}

/// Polls `/metrics` until `name{labels}` reaches `n`: a separate process offers no other signal.
async fn wait_for_metric(gateway: &Gateway, name: &str, labels: &[(&str, &str)], n: f64) {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        if let Some(value) = gateway.metric_opt(name, labels).await {
            if value >= n {
                assert_eq!(value, n, "{name}{labels:?}");
                return;
            }
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{name}{labels:?} did not reach {n} in {WAIT:?}; logs:\n{}",
            gateway.logs()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Sends one trace of two spans, the second an error when `error`.
async fn send_trace(endpoint: &str, trace: u128, error: bool) {
    let root = otlp::span(otlp::trace_id(trace), otlp::span_id(1), "job");
    let mut child = otlp::child_of(
        otlp::span(otlp::trace_id(trace), otlp::span_id(2), "step"),
        &root,
    );
    if error {
        otlp::set_error(&mut child, "failed");
    }
    let mut client = otlp::grpc_client(endpoint).await;
    client
        .export(otlp::request("worker", vec![root, child]))
        .await
        .expect("the gateway accepts the trace");
}

fn hex_trace(n: u128) -> String {
    otlp::trace_id(n)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

#[tokio::test]
async fn a_reload_applies_new_policies_to_buffered_traces_and_a_bad_one_changes_nothing() {
    let backend = RecordingBackend::start_grpc().await;
    let ports = SamplerPorts::free();
    let mut config = SamplerConfig::new(ports, ERRORS_ONLY, &backend);
    // Long enough for the reload to land while trace 1 is buffered.
    config.decision_wait = "8s".into();
    let gateway = Gateway::start(&config.render()).await;
    send_trace(&ports.grpc_endpoint(), 1, false).await;
    wait_for_metric(
        &gateway,
        "otelcol_processor_tail_sampling_new_trace_id_received",
        &[],
        1.0,
    )
    .await;

    // The new policy keeps everything; trace 1, buffered under the old one, is judged by it.
    let mut keep_all = config.clone();
    keep_all.policies = KEEP_ALL.into();
    std::fs::write(gateway.config_path(), keep_all.render()).unwrap();
    sighup(&gateway);
    wait_for_metric(
        &gateway,
        "tailgate_config_reloads",
        &[("result", "applied")],
        1.0,
    )
    .await;
    backend.wait_for_spans(2, WAIT).await.unwrap();
    let spans = backend.spans();
    assert!(
        spans.iter().all(|s| s.trace_id() == hex_trace(1)),
        "{spans:?}"
    );

    // A config that does not validate: nothing changes, the errors name the YAML path, and the
    // process serves on with the policy it had.
    let broken = keep_all
        .render()
        .replace("decision_wait: 8s", "decision_wait: soon");
    std::fs::write(gateway.config_path(), broken).unwrap();
    sighup(&gateway);
    wait_for_metric(
        &gateway,
        "tailgate_config_reloads",
        &[("result", "failed")],
        1.0,
    )
    .await;
    assert!(
        gateway
            .logs()
            .contains("processors.tail_sampling.decision_wait"),
        "{}",
        gateway.logs()
    );
    send_trace(&ports.grpc_endpoint(), 2, false).await;
    backend.wait_for_spans(4, WAIT).await.unwrap();
    assert!(gateway.health().await.unwrap().status == 200);

    // A change that needs a restart is named, and the rest applies.
    let mut moved = keep_all.clone();
    moved.ports.grpc = free_port();
    moved.decision_wait = "2s".into();
    std::fs::write(gateway.config_path(), moved.render()).unwrap();
    sighup(&gateway);
    wait_for_metric(
        &gateway,
        "tailgate_config_reloads",
        &[("result", "partial")],
        1.0,
    )
    .await;
    assert!(
        gateway.logs().contains("not_applied=receivers"),
        "{}",
        gateway.logs()
    );
    wait_for_metric(&gateway, "tailgate_decision_wait", &[], 2.0).await;
    // Still listening where it was.
    send_trace(&ports.grpc_endpoint(), 3, false).await;
    backend.wait_for_spans(6, WAIT).await.unwrap();
}

fn bool_attribute(attributes: &[KeyValue], key: &str) -> Option<bool> {
    match attributes
        .iter()
        .find(|kv| kv.key == key)?
        .value
        .as_ref()?
        .value
        .as_ref()?
    {
        Value::BoolValue(b) => Some(*b),
        _ => None,
    }
}

fn string_attribute(attributes: &[KeyValue], key: &str) -> Option<String> {
    match attributes
        .iter()
        .find(|kv| kv.key == key)?
        .value
        .as_ref()?
        .value
        .as_ref()?
    {
        Value::StringValue(s) => Some(s.clone()),
        _ => None,
    }
}

#[tokio::test]
async fn record_policy_puts_the_deciding_policy_on_the_scope_of_kept_traces() {
    let backend = RecordingBackend::start_grpc().await;
    let ports = SamplerPorts::free();
    let policies = "
- name: slow
  type: latency
  latency: {threshold_ms: 60000}
- name: errors
  type: status_code
  status_code: {status_codes: [ERROR]}
";
    let mut config = SamplerConfig::new(ports, policies, &backend);
    config.tail_sampling_extra = "record_policy: true\n".into();
    let gateway = Gateway::start(&config.render()).await;
    send_trace(&ports.grpc_endpoint(), 1, true).await;
    send_trace(&ports.grpc_endpoint(), 2, false).await;
    backend.wait_for_spans(2, WAIT).await.unwrap();
    for span in backend.spans() {
        assert_eq!(span.trace_id(), hex_trace(1));
        let scope = span.scope.expect("a scope");
        assert_eq!(
            scope.name, "tailgate-tests",
            "the scope's own fields are kept"
        );
        assert_eq!(
            string_attribute(&scope.attributes, "tailsampling.policy").as_deref(),
            Some("errors")
        );
        assert_eq!(
            bool_attribute(&span.span.attributes, "tailsampling.sampled"),
            None
        );
    }
    drop(gateway);
}

#[tokio::test]
async fn dry_run_forwards_every_trace_marked_with_the_decision() {
    let backend = RecordingBackend::start_grpc().await;
    let ports = SamplerPorts::free();
    let mut config = SamplerConfig::new(ports, ERRORS_ONLY, &backend);
    config.tail_sampling_extra = "dry_run: true\n".into();
    let gateway = Gateway::start(&config.render()).await;
    send_trace(&ports.grpc_endpoint(), 1, true).await;
    send_trace(&ports.grpc_endpoint(), 2, false).await;
    backend.wait_for_spans(4, WAIT).await.unwrap();
    for span in backend.spans() {
        let expected = span.trace_id() == hex_trace(1);
        assert_eq!(
            bool_attribute(&span.span.attributes, "tailsampling.sampled"),
            Some(expected),
            "{}",
            span.trace_id()
        );
    }
    // Counted as the decision it would have been.
    wait_for_metric(
        &gateway,
        "otelcol_processor_tail_sampling_global_count_traces_sampled",
        &[("sampled", "false"), ("decision", "not_sampled")],
        1.0,
    )
    .await;
}

#[tokio::test]
async fn replay_judges_the_file_exporters_output_with_another_policy_set() {
    let dir = tempfile::tempdir().unwrap();
    let traces = dir.path().join("kept.jsonl");
    let backend = RecordingBackend::start_grpc().await;
    let ports = SamplerPorts::free();
    // Record every trace to a file, as the repository's config.yaml does.
    let mut config = SamplerConfig::new(ports, KEEP_ALL, &backend);
    config.exporter_id = "file".into();
    config.exporter_endpoint = String::new();
    config.exporter_extra = String::new();
    let yaml = config.render().replace(
        "  file:\n    endpoint: \n",
        &format!("  file:\n    path: {}\n", traces.display()),
    );
    assert!(yaml.contains("path: "), "{yaml}");
    let gateway = Gateway::start(&yaml).await;
    for trace in 1..=3 {
        send_trace(&ports.grpc_endpoint(), trace, trace == 2).await;
    }
    wait_for_metric(
        &gateway,
        "otelcol_exporter_sent_spans",
        &[("exporter", "file")],
        6.0,
    )
    .await;
    gateway.sigterm();
    gateway.wait_exit(WAIT).await;

    let replay_config = dir.path().join("errors.yaml");
    let mut errors = SamplerConfig::new(SamplerPorts::free(), ERRORS_ONLY, &backend);
    errors.decision_wait = "30s".into();
    std::fs::write(&replay_config, errors.render()).unwrap();
    let output = Command::new(env!("CARGO_BIN_EXE_tailgate"))
        .arg("replay")
        .arg("--config")
        .arg(&replay_config)
        .arg(&traces)
        .args(["--output", "json"])
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let report: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(
        report,
        serde_json::json!({"traces": 3, "sampled": 1, "policies": {"errors": {"sampled": 1, "not_sampled": 2}}})
    );
    let text = Command::new(env!("CARGO_BIN_EXE_tailgate"))
        .arg("replay")
        .arg("--config")
        .arg(&replay_config)
        .arg(&traces)
        .output()
        .unwrap();
    let text = String::from_utf8(text.stdout).unwrap();
    assert!(text.contains(&hex_trace(2)), "{text}");
    assert!(!text.contains(&hex_trace(1)), "{text}");
}
