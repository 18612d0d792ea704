//! Checks everything under `deploy/` with no cluster, no Docker and no network:
//!
//! - every tailgate config passes the real binary's `tailgate validate` (with `POD_IP` and the
//!   compose samplers' `TAILGATE_CLUSTER_ENDPOINT` set to dummy values);
//! - `deploy/compose/docker-compose.yaml` matches the Compose Specification's JSON schema, with
//!   `check-jsonschema --builtin-schema vendor.compose-spec` (the schema ships inside the
//!   check-jsonschema package);
//! - every Kubernetes manifest matches the Kubernetes OpenAPI schemas of the oldest and newest
//!   Kubernetes versions we support, with `kubernetes-validate --strict` (the schemas ship inside
//!   the package; `--strict` rejects unknown fields);
//! - the pieces agree with each other: balancers and samplers resolve the same sampler set, each
//!   sampler's `cluster.endpoint` is on it, the kustomization lists every manifest, the
//!   Kubernetes grace periods cover `service.shutdown_grace_period`.
//!
//! - `deploy/compose/prometheus.yaml` passes `promtool check config` and scrapes every tailgate
//!   service of the compose file;
//! - `deploy/prometheus/alerts.yaml` passes `promtool check rules` and its unit tests
//!   (`promtool test rules alerts_test.yaml`);
//! - the Grafana dashboard `deploy/grafana/tailgate.json` parses, its queries are valid PromQL,
//!   and every metric the dashboard and the alerts query is one tailgate exports under the naming
//!   the deploy configs select (read from the metric catalog), covering every part of both tiers.
//!
//! Each validator also gets a deliberately broken input that it must reject, so a validator that
//! stopped checking (or a wrapper that stopped reading its verdict) fails here too.
//!
//! The two schema validators are Python packages pinned in `tests/clients/requirements.txt` and run
//! from `.venv/bin/` (or beside `$TAILGATE_TEST_PYTHON`), which `tests/run.sh` sets up. Without
//! them a test fails and says how to install them: a missing validator is never a pass. promtool
//! (Debian's `prometheus` package, which `tests/run.sh` installs) is required: without it the
//! Prometheus tests fail with the command that installs it.

#[path = "support/promtool.rs"]
mod promtool;

use std::collections::{BTreeMap, BTreeSet};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use serde::Deserialize;
use serde_yaml::Value;

/// Kubernetes versions the manifests must be valid for: the oldest we support (the balancer's
/// `preStop.sleep` action is on by default from 1.30) and the newest kubernetes-validate bundles.
const KUBERNETES_VERSIONS: &[&str] = &["1.30.0", "1.37.0"];

/// Dummy values for the environment variables the deploy configs expand.
const CONFIG_ENV: &[(&str, &str)] = &[
    ("POD_IP", "10.0.0.1"),
    ("TAILGATE_CLUSTER_ENDPOINT", "sampler-1:4317"),
];

/// YAML files in `deploy/` that configure third-party software (Tempo, Grafana): no schema of
/// theirs is available offline, so they are only parsed and checked to be mounted by compose.
const THIRD_PARTY: &[&str] = &[
    "compose/tempo.yaml",
    "compose/grafana-datasources.yaml",
    "compose/grafana-dashboards.yaml",
];

/// Prometheus files, checked with promtool.
const PROMETHEUS_CONFIG: &str = "compose/prometheus.yaml";
const ALERT_RULES: &str = "prometheus/alerts.yaml";
const ALERT_TESTS: &str = "prometheus/alerts_test.yaml";
const DASHBOARD: &str = "grafana/tailgate.json";

/// The scrape jobs of the two tiers, as the alerts and the dashboard name them.
const BALANCER_JOB: &str = "tailgate-balancer";
const SAMPLER_JOB: &str = "tailgate-sampler";

// ---------------------------------------------------------------------------------------------
// Finding and classifying the files

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn deploy_dir() -> PathBuf {
    repo().join("deploy")
}

/// What a YAML file under `deploy/` is, and so how it is checked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    TailgateConfig,
    Compose,
    KubernetesManifest,
    Kustomization,
    ThirdParty,
    PrometheusConfig,
    AlertRules,
    AlertTests,
}

/// Every `.yaml`/`.yml` under `deploy/`, sorted, with its kind. A file that fits no kind fails
/// the test: a new file must be checked by something.
fn deploy_yaml_files() -> Vec<(PathBuf, Kind)> {
    fn walk(dir: &Path, out: &mut Vec<PathBuf>) {
        let entries = std::fs::read_dir(dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display()));
        for entry in entries {
            let path = entry.unwrap().path();
            if path.is_dir() {
                walk(&path, out);
            } else if path
                .extension()
                .is_some_and(|ext| ext == "yaml" || ext == "yml")
            {
                out.push(path);
            }
        }
    }
    let mut paths = Vec::new();
    walk(&deploy_dir(), &mut paths);
    paths.sort();
    assert!(!paths.is_empty(), "no YAML files under deploy/");
    paths
        .into_iter()
        .map(|path| {
            let kind = classify(&path);
            (path, kind)
        })
        .collect()
}

fn classify(path: &Path) -> Kind {
    let relative = path.strip_prefix(deploy_dir()).unwrap();
    let name = relative.to_string_lossy().replace('\\', "/");
    if THIRD_PARTY.contains(&name.as_str()) {
        return Kind::ThirdParty;
    }
    match name.as_str() {
        PROMETHEUS_CONFIG => return Kind::PrometheusConfig,
        ALERT_RULES => return Kind::AlertRules,
        ALERT_TESTS => return Kind::AlertTests,
        _ => {}
    }
    let docs = load_yaml(path);
    let has = |key: &str| docs.iter().all(|doc| doc.get(key).is_some());
    if name == "kubernetes/kustomization.yaml" {
        Kind::Kustomization
    } else if has("receivers") && has("service") {
        Kind::TailgateConfig
    } else if name.starts_with("compose/") && has("services") {
        Kind::Compose
    } else if name.starts_with("kubernetes/") && has("apiVersion") && has("kind") {
        Kind::KubernetesManifest
    } else {
        panic!(
            "deploy/{name} is neither a tailgate config, a compose file, a Kubernetes manifest \
             nor a listed third-party config: teach tests/deploy_manifests.rs to check it"
        )
    }
}

fn files_of(kind: Kind) -> Vec<PathBuf> {
    let files: Vec<PathBuf> = deploy_yaml_files()
        .into_iter()
        .filter(|(_, k)| *k == kind)
        .map(|(path, _)| path)
        .collect();
    assert!(!files.is_empty(), "no {kind:?} files under deploy/");
    files
}

/// Every YAML document in a file (empty documents dropped), with merge keys (`<<: *anchor`)
/// applied as compose applies them.
fn load_yaml(path: &Path) -> Vec<Value> {
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_yaml::Deserializer::from_str(&text)
        .map(|doc| {
            let mut value = Value::deserialize(doc)
                .unwrap_or_else(|e| panic!("{} is not valid YAML: {e}", path.display()));
            value
                .apply_merge()
                .unwrap_or_else(|e| panic!("{}: merge keys: {e}", path.display()));
            value
        })
        .filter(|value| !value.is_null())
        .collect()
}

fn load_one(path: &Path) -> Value {
    let mut docs = load_yaml(path);
    assert_eq!(docs.len(), 1, "{} should hold one document", path.display());
    docs.remove(0)
}

/// `value` at a dotted path of mapping keys; panics naming the path when absent.
fn at<'a>(value: &'a Value, path: &str, file: &Path) -> &'a Value {
    path.split('.').fold(value, |v, key| {
        v.get(key)
            .unwrap_or_else(|| panic!("{}: no `{path}` (missing `{key}`)", file.display()))
    })
}

fn string_at(value: &Value, path: &str, file: &Path) -> String {
    match at(value, path, file) {
        Value::String(s) => s.clone(),
        Value::Number(n) => n.to_string(),
        other => panic!("{}: `{path}` is not a string: {other:?}", file.display()),
    }
}

/// A Go duration as the deploy configs write them (`45s`, `1m`, `1m30s`), in seconds.
fn seconds(duration: &str) -> u64 {
    let mut total = 0;
    let mut number = String::new();
    for c in duration.chars() {
        match c {
            '0'..='9' => number.push(c),
            'h' | 'm' | 's' => {
                let n: u64 = number
                    .parse()
                    .unwrap_or_else(|_| panic!("bad duration {duration}"));
                total += n * match c {
                    'h' => 3600,
                    'm' => 60,
                    _ => 1,
                };
                number.clear();
            }
            _ => panic!("duration `{duration}`: only whole h/m/s are understood here"),
        }
    }
    assert!(number.is_empty(), "duration `{duration}` lacks a unit");
    total
}

// ---------------------------------------------------------------------------------------------
// Running the validators

fn describe(output: &Output) -> String {
    format!(
        "exit status: {}\n--- stdout ---\n{}--- stderr ---\n{}",
        output.status,
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}

fn run(command: &mut Command) -> Output {
    command
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("run {command:?}: {e}"))
}

/// `tailgate validate --config <path>` with `env` set (and nothing else of ours).
fn tailgate_validate(path: &Path, env: &[(&str, &str)]) -> Output {
    let mut command = Command::new(env!("CARGO_BIN_EXE_tailgate"));
    command.args(["validate", "--config"]).arg(path);
    for (name, _) in CONFIG_ENV {
        command.env_remove(name);
    }
    command.envs(env.iter().copied());
    run(&mut command)
}

/// A validator installed from `tests/clients/requirements.txt` into the test venv; panics, saying
/// how to install it, when it is missing.
fn venv_tool(name: &str) -> PathBuf {
    let bin = match std::env::var_os("TAILGATE_TEST_PYTHON") {
        Some(python) => PathBuf::from(python)
            .parent()
            .map(Path::to_path_buf)
            .unwrap_or_default(),
        None => repo().join(".venv/bin"),
    };
    let tool = bin.join(name);
    assert!(
        tool.is_file(),
        "validating deploy/ needs {}; install it: python3 -m venv .venv && .venv/bin/pip install \
         -r tests/clients/requirements.txt (tests/run.sh does this)",
        tool.display()
    );
    tool
}

/// Validates a compose file against the Compose Specification schema bundled in check-jsonschema.
fn check_compose(tool: &Path, file: &Path) -> Result<String, String> {
    let output = run(Command::new(tool)
        .args(["--builtin-schema", "vendor.compose-spec"])
        .arg(file));
    if output.status.success() {
        Ok(describe(&output))
    } else {
        Err(describe(&output))
    }
}

/// Validates Kubernetes manifests with kubernetes-validate, strictly, for every version in
/// [`KUBERNETES_VERSIONS`]. kubernetes-validate only warns (and exits 0) about a kind it has no
/// schema for, so a warning counts as a failure here: a misspelt `kind` must not pass.
fn check_kubernetes(tool: &Path, files: &[PathBuf]) -> Result<String, String> {
    let mut command = Command::new(tool);
    command.args(["--strict", "--quiet"]);
    for version in KUBERNETES_VERSIONS {
        command.args(["--kubernetes-version", version]);
    }
    let output = run(command.args(files));
    let stdout = String::from_utf8_lossy(&output.stdout);
    let complaints = stdout.lines().any(|line| {
        ["WARN", "ERROR", "FATAL"]
            .iter()
            .any(|w| line.starts_with(w))
    });
    if output.status.success() && !complaints {
        Ok(describe(&output))
    } else {
        Err(describe(&output))
    }
}

fn temp_yaml(text: &str) -> tempfile::NamedTempFile {
    let mut file = tempfile::Builder::new().suffix(".yaml").tempfile().unwrap();
    file.write_all(text.as_bytes()).unwrap();
    file.flush().unwrap();
    file
}

// ---------------------------------------------------------------------------------------------
// tailgate configs

#[test]
fn every_tailgate_config_in_deploy_passes_tailgate_validate() {
    let configs = files_of(Kind::TailgateConfig);
    let mut failures = Vec::new();
    for config in &configs {
        let output = tailgate_validate(config, CONFIG_ENV);
        if !output.status.success() {
            failures.push(format!("{}:\n{}", config.display(), describe(&output)));
        }
    }
    assert!(
        failures.is_empty(),
        "invalid configs:\n{}",
        failures.join("\n")
    );
    // Both tiers of both deployments, so a rename cannot silently drop one from the check.
    let names: BTreeSet<String> = configs
        .iter()
        .map(|p| p.strip_prefix(deploy_dir()).unwrap().display().to_string())
        .collect();
    for expected in [
        "compose/balancer.yaml",
        "compose/sampler.yaml",
        "kubernetes/config/balancer.yaml",
        "kubernetes/config/sampler.yaml",
    ] {
        assert!(
            names.contains(expected),
            "deploy/{expected} was not checked: {names:?}"
        );
    }
}

#[test]
fn tailgate_validate_rejects_a_broken_config_and_names_the_path() {
    let broken = temp_yaml(
        "receivers:
  otlp:
    protocols:
      grpc:
processors:
  tail_sampling:
    policies:
      - name: slow
        type: latency
        latency: {threshol_ms: 2000}
exporters:
  debug:
service:
  pipelines:
    traces:
      receivers: [otlp]
      processors: [tail_sampling]
      exporters: [debug]
",
    );
    let output = tailgate_validate(broken.path(), CONFIG_ENV);
    assert!(
        !output.status.success(),
        "accepted a broken config:\n{}",
        describe(&output)
    );
    let text = describe(&output);
    assert!(
        text.contains("processors.tail_sampling.policies[0].latency"),
        "the error does not name the YAML path:\n{text}"
    );
}

// ---------------------------------------------------------------------------------------------
// Compose

#[test]
fn compose_file_matches_the_compose_specification() {
    let tool = venv_tool("check-jsonschema");
    for file in files_of(Kind::Compose) {
        if let Err(report) = check_compose(&tool, &file) {
            panic!(
                "{} does not match the compose spec:\n{report}",
                file.display()
            );
        }
    }
}

#[test]
fn compose_schema_check_rejects_a_broken_compose_file() {
    let tool = venv_tool("check-jsonschema");
    for (what, text) in [
        (
            "an unknown service key",
            "services:\n  tempo:\n    imagee: grafana/tempo\n",
        ),
        (
            "ports as a number",
            "services:\n  tempo:\n    image: x\n    ports: 4317\n",
        ),
        (
            "depends_on as a string",
            "services:\n  a:\n    image: x\n    depends_on: b\n",
        ),
    ] {
        let broken = temp_yaml(text);
        if let Ok(report) = check_compose(&tool, broken.path()) {
            panic!("check-jsonschema accepted {what}:\n{report}");
        }
    }
}

#[test]
fn compose_balancer_and_samplers_agree_on_the_sampler_set() {
    let dir = deploy_dir().join("compose");
    let compose_file = dir.join("docker-compose.yaml");
    let compose = load_one(&compose_file);
    let services = at(&compose, "services", &compose_file)
        .as_mapping()
        .expect("services is a mapping");

    // Every file a service mounts from this directory exists; collect who mounts what.
    let mut mounts = Vec::new();
    for (name, service) in services {
        let name = name.as_str().unwrap().to_string();
        for volume in service
            .get("volumes")
            .and_then(Value::as_sequence)
            .into_iter()
            .flatten()
        {
            let Some(spec) = volume.as_str() else {
                continue;
            };
            let Some(source) = spec
                .split(':')
                .next()
                .filter(|s| s.starts_with("./") || s.starts_with("../"))
            else {
                continue;
            };
            let path = dir.join(source);
            assert!(
                path.is_file() || path.is_dir(),
                "service {name} mounts {source}, which does not exist"
            );
            mounts.push((name.clone(), source.trim_start_matches("./").to_string()));
        }
    }
    let mounted_from_compose = THIRD_PARTY
        .iter()
        .chain([&PROMETHEUS_CONFIG])
        .filter(|f| f.starts_with("compose/"))
        .map(|f| f.trim_start_matches("compose/").to_string());
    let mounted_from_deploy = [ALERT_RULES, "grafana"].map(|f| format!("../{f}"));
    for file in mounted_from_compose.chain(mounted_from_deploy) {
        assert!(
            mounts.iter().any(|(_, source)| *source == file),
            "{file} (in deploy/compose/) is mounted by no service"
        );
    }

    let balancer_file = dir.join("balancer.yaml");
    let sampler_file = dir.join("sampler.yaml");
    let balancer = load_one(&balancer_file);
    let sampler = load_one(&sampler_file);
    let ring = at(
        &balancer,
        "exporters.loadbalancing.resolver",
        &balancer_file,
    );
    assert_eq!(
        ring,
        at(
            &sampler,
            "processors.tail_sampling.cluster.resolver",
            &sampler_file
        ),
        "the balancer and the samplers must resolve the same sampler set"
    );
    let hostnames: BTreeSet<String> = at(ring, "static.hostnames", &balancer_file)
        .as_sequence()
        .expect("static.hostnames is a list")
        .iter()
        .map(|h| h.as_str().unwrap().to_string())
        .collect();

    // Each sampler service is on the ring under its own name, and its config validates with the
    // environment compose gives it.
    let samplers: Vec<&str> = mounts
        .iter()
        .filter(|(_, source)| source == "sampler.yaml")
        .map(|(name, _)| name.as_str())
        .collect();
    assert!(
        samplers.len() >= 2,
        "expected several sampler services, found {samplers:?}"
    );
    let mut endpoints = BTreeSet::new();
    for name in &samplers {
        let service = &services[*name];
        let endpoint = string_at(
            service,
            "environment.TAILGATE_CLUSTER_ENDPOINT",
            &compose_file,
        );
        assert_eq!(
            endpoint.rsplit_once(':').map(|(host, _)| host),
            Some(*name),
            "service {name}'s cluster endpoint `{endpoint}` is not its own service name"
        );
        let output = tailgate_validate(&sampler_file, &[("TAILGATE_CLUSTER_ENDPOINT", &endpoint)]);
        assert!(output.status.success(), "{name}:\n{}", describe(&output));
        endpoints.insert(endpoint);
    }
    assert_eq!(
        endpoints, hostnames,
        "the static resolver must list exactly the sampler services"
    );
}

// ---------------------------------------------------------------------------------------------
// Kubernetes

#[test]
fn kubernetes_manifests_match_the_kubernetes_schemas() {
    let tool = venv_tool("kubernetes-validate");
    let manifests = files_of(Kind::KubernetesManifest);
    if let Err(report) = check_kubernetes(&tool, &manifests) {
        panic!("Kubernetes manifests do not match the schemas:\n{report}");
    }
}

#[test]
fn kubernetes_schema_check_rejects_broken_manifests() {
    let tool = venv_tool("kubernetes-validate");
    let deployment = |container_extra: &str, kind: &str| {
        format!(
            "apiVersion: apps/v1
kind: {kind}
metadata:
  name: broken
spec:
  selector:
    matchLabels: {{app: broken}}
  template:
    metadata:
      labels: {{app: broken}}
    spec:
      containers:
        - name: tailgate
          image: tailgate:dev
{container_extra}"
        )
    };
    // The valid form passes, so the failures below are the edits', not the harness's.
    let valid = temp_yaml(&deployment("", "Deployment"));
    if let Err(report) = check_kubernetes(&tool, &[valid.path().to_path_buf()]) {
        panic!("the unbroken test manifest should pass:\n{report}");
    }
    for (what, text) in [
        (
            "an unknown container field",
            deployment("          imagePulPolicy: Always\n", "Deployment"),
        ),
        (
            "a port that is not a number",
            deployment(
                "          ports:\n            - containerPort: otlp\n",
                "Deployment",
            ),
        ),
        ("a misspelt kind", deployment("", "Deploymnet")),
    ] {
        let broken = temp_yaml(&text);
        if let Ok(report) = check_kubernetes(&tool, &[broken.path().to_path_buf()]) {
            panic!("kubernetes-validate accepted {what}:\n{report}");
        }
    }
}

/// The single resource of `kind` among the manifests, with its file.
fn resource<'a>(manifests: &'a [(PathBuf, Value)], kind: &str, name: &str) -> &'a (PathBuf, Value) {
    manifests
        .iter()
        .find(|(_, doc)| {
            doc.get("kind").and_then(Value::as_str) == Some(kind)
                && doc["metadata"]["name"].as_str() == Some(name)
        })
        .unwrap_or_else(|| panic!("no {kind} {name} in deploy/kubernetes"))
}

#[test]
fn kubernetes_kustomization_and_tiers_fit_together() {
    let dir = deploy_dir().join("kubernetes");
    let kustomization_file = dir.join("kustomization.yaml");
    let kustomization = load_one(&kustomization_file);
    let namespace = string_at(&kustomization, "namespace", &kustomization_file);

    // resources: exactly the manifests in the directory.
    let listed: BTreeSet<String> = at(&kustomization, "resources", &kustomization_file)
        .as_sequence()
        .unwrap()
        .iter()
        .map(|r| r.as_str().unwrap().to_string())
        .collect();
    let manifest_files = files_of(Kind::KubernetesManifest);
    let on_disk: BTreeSet<String> = manifest_files
        .iter()
        .map(|p| p.strip_prefix(&dir).unwrap().display().to_string())
        .collect();
    assert_eq!(
        listed, on_disk,
        "kustomization.yaml resources vs manifests in deploy/kubernetes"
    );

    let manifests: Vec<(PathBuf, Value)> = manifest_files
        .iter()
        .flat_map(|p| load_yaml(p).into_iter().map(move |doc| (p.clone(), doc)))
        .collect();
    for (file, doc) in &manifests {
        let ns = doc["metadata"]["namespace"].as_str().or_else(|| {
            doc["metadata"]["name"]
                .as_str()
                .filter(|_| doc["kind"] == "Namespace")
        });
        assert_eq!(
            ns,
            Some(namespace.as_str()),
            "{}: namespace",
            file.display()
        );
    }

    // configMapGenerator: name → tailgate config file (validated in its own test).
    let generated: Vec<(String, PathBuf)> =
        at(&kustomization, "configMapGenerator", &kustomization_file)
            .as_sequence()
            .unwrap()
            .iter()
            .map(|generator| {
                let name = string_at(generator, "name", &kustomization_file);
                let files = generator["files"].as_sequence().expect("generator files");
                assert_eq!(files.len(), 1, "{name}: one file, config.yaml");
                let spec = files[0].as_str().unwrap();
                let source = spec
                    .strip_prefix("config.yaml=")
                    .unwrap_or_else(|| panic!("{name}: the key must be config.yaml: {spec}"));
                let path = dir.join(source);
                assert_eq!(classify(&path), Kind::TailgateConfig, "{}", path.display());
                (name, path)
            })
            .collect();

    // The headless Service both tiers resolve.
    let (service_file, service) = resource(&manifests, "Service", "tailgate-sampler-headless");
    assert_eq!(
        service["spec"]["clusterIP"],
        "None",
        "{}",
        service_file.display()
    );
    assert_eq!(service["spec"]["publishNotReadyAddresses"], false);
    let service_port = service["spec"]["ports"][0]["port"]
        .as_u64()
        .unwrap()
        .to_string();
    let headless_name = format!("tailgate-sampler-headless.{namespace}.svc.cluster.local");

    let config_of = |deployment: &Value, file: &Path| -> (PathBuf, Value) {
        let volumes = at(deployment, "spec.template.spec.volumes", file)
            .as_sequence()
            .unwrap();
        let config_map = volumes
            .iter()
            .find_map(|v| v.get("configMap").and_then(|c| c.get("name")))
            .and_then(Value::as_str)
            .unwrap_or_else(|| panic!("{}: no ConfigMap volume", file.display()));
        let (_, path) = generated
            .iter()
            .find(|(name, _)| name == config_map)
            .unwrap_or_else(|| panic!("ConfigMap {config_map} is not generated by kustomization"));
        (path.clone(), load_one(path))
    };

    let mut resolvers = Vec::new();
    for (name, resolver_path) in [
        ("tailgate-balancer", "exporters.loadbalancing.resolver"),
        (
            "tailgate-sampler",
            "processors.tail_sampling.cluster.resolver",
        ),
    ] {
        let (file, deployment) = resource(&manifests, "Deployment", name);
        let (config_file, config) = config_of(deployment, file);
        let resolver = at(&config, resolver_path, &config_file).clone();
        assert_eq!(
            string_at(&resolver, "dns.hostname", &config_file),
            headless_name
        );
        assert_eq!(string_at(&resolver, "dns.port", &config_file), service_port);
        resolvers.push(resolver);

        // The pod outlives the graceful shutdown (plus any preStop sleep before SIGTERM).
        let pod = at(deployment, "spec.template.spec", file);
        let container = &pod["containers"][0];
        let grace = pod["terminationGracePeriodSeconds"].as_u64().unwrap();
        let pre_stop = container["lifecycle"]["preStop"]["sleep"]["seconds"]
            .as_u64()
            .unwrap_or(0);
        let shutdown = seconds(&string_at(
            &config,
            "service.shutdown_grace_period",
            &config_file,
        ));
        assert!(
            grace > pre_stop + shutdown,
            "{name}: terminationGracePeriodSeconds {grace} must exceed preStop {pre_stop}s + \
             shutdown_grace_period {shutdown}s"
        );

        // Probes hit the health_check extension's port.
        let health = string_at(&config, "extensions.health_check.endpoint", &config_file);
        let health_port = health.rsplit_once(':').unwrap().1.to_string();
        let ports = container["ports"].as_sequence().unwrap();
        for probe in ["readinessProbe", "livenessProbe"] {
            let port = &container[probe]["httpGet"]["port"];
            let number = match port {
                Value::Number(n) => n.to_string(),
                Value::String(named) => ports
                    .iter()
                    .find(|p| p["name"].as_str() == Some(named))
                    .map(|p| p["containerPort"].as_u64().unwrap().to_string())
                    .unwrap_or_else(|| panic!("{name}: {probe} names unknown port {named}")),
                other => panic!("{name}: {probe} has no httpGet port: {other:?}"),
            };
            assert_eq!(number, health_port, "{name}: {probe} port");
        }
    }
    assert_eq!(
        resolvers[0], resolvers[1],
        "the balancers and the samplers must resolve the same sampler set"
    );

    // Each sampler finds itself on the ring: cluster.endpoint is its pod IP (downward API) and
    // the resolver's port.
    let (file, sampler) = resource(&manifests, "Deployment", "tailgate-sampler");
    let (config_file, config) = config_of(sampler, file);
    assert_eq!(
        string_at(
            &config,
            "processors.tail_sampling.cluster.endpoint",
            &config_file
        ),
        format!("${{env:POD_IP}}:{service_port}")
    );
    let env = at(sampler, "spec.template.spec", file)["containers"][0]["env"]
        .as_sequence()
        .expect("sampler env");
    let pod_ip = env
        .iter()
        .find(|e| e["name"] == "POD_IP")
        .expect("the sampler sets POD_IP");
    assert_eq!(pod_ip["valueFrom"]["fieldRef"]["fieldPath"], "status.podIP");

    let (_, pdb) = resource(&manifests, "PodDisruptionBudget", "tailgate-sampler");
    assert_eq!(
        pdb["spec"]["selector"]["matchLabels"], sampler["spec"]["selector"]["matchLabels"],
        "the sampler PodDisruptionBudget selects the sampler pods"
    );
}

// ---------------------------------------------------------------------------------------------
// Prometheus and Grafana

/// Copies files of `deploy/` into one temp directory, flat, so a config's relative references
/// (`rule_files: [alerts.yaml]`) resolve as they do where compose mounts them side by side.
fn flat_copy(files: &[&str]) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    for file in files {
        let from = deploy_dir().join(file);
        let name = from.file_name().unwrap();
        std::fs::copy(&from, dir.path().join(name))
            .unwrap_or_else(|e| panic!("copy {}: {e}", from.display()));
    }
    dir
}

#[test]
fn prometheus_config_for_compose_passes_promtool_and_scrapes_every_tailgate_service() {
    let dir = flat_copy(&[PROMETHEUS_CONFIG, ALERT_RULES]);
    let verdict = promtool::run(dir.path(), &["check", "config", "prometheus.yaml"]);
    assert!(
        verdict.success,
        "promtool check config:\n{}",
        verdict.output
    );

    // Each tier's job scrapes exactly its compose services, on the port their configs serve.
    let compose_dir = deploy_dir().join("compose");
    let compose_file = compose_dir.join("docker-compose.yaml");
    let compose = load_one(&compose_file);
    let services = at(&compose, "services", &compose_file)
        .as_mapping()
        .unwrap();
    let mut expected: BTreeMap<&str, BTreeSet<String>> = BTreeMap::new();
    for (name, service) in services {
        let mounts: Vec<&str> = service
            .get("volumes")
            .and_then(Value::as_sequence)
            .into_iter()
            .flatten()
            .filter_map(Value::as_str)
            .collect();
        for (config, job) in [
            ("balancer.yaml", BALANCER_JOB),
            ("sampler.yaml", SAMPLER_JOB),
        ] {
            if mounts
                .iter()
                .any(|m| m.starts_with(&format!("./{config}:")))
            {
                let tailgate = load_one(&compose_dir.join(config));
                let prometheus = at(
                    &tailgate,
                    "service.telemetry.metrics.readers",
                    &compose_dir.join(config),
                )[0]["pull"]["exporter"]["prometheus"]
                    .clone();
                let port = prometheus["port"].as_u64().expect("a reader port");
                expected
                    .entry(job)
                    .or_default()
                    .insert(format!("{}:{port}", name.as_str().unwrap()));
            }
        }
    }
    let config_file = deploy_dir().join(PROMETHEUS_CONFIG);
    let config = load_one(&config_file);
    let mut scraped: BTreeMap<&str, BTreeSet<String>> = BTreeMap::new();
    for job in at(&config, "scrape_configs", &config_file)
        .as_sequence()
        .unwrap()
    {
        let name = job["job_name"].as_str().unwrap();
        let name = [BALANCER_JOB, SAMPLER_JOB]
            .into_iter()
            .find(|j| *j == name)
            .unwrap_or_else(|| panic!("unexpected scrape job {name}"));
        for targets in job["static_configs"].as_sequence().unwrap() {
            for target in targets["targets"].as_sequence().unwrap() {
                scraped
                    .entry(name)
                    .or_default()
                    .insert(target.as_str().unwrap().to_string());
            }
        }
    }
    assert_eq!(
        scraped, expected,
        "Prometheus scrapes every tailgate service of compose"
    );
}

#[test]
fn alert_rules_pass_promtool_check_rules() {
    let dir = flat_copy(&[ALERT_RULES]);
    let verdict = promtool::run(dir.path(), &["check", "rules", "alerts.yaml"]);
    assert!(verdict.success, "promtool check rules:\n{}", verdict.output);
    let broken =
        "groups:\n  - name: broken\n    rules:\n      - alert: Broken\n        expr: rate(x[5m]\n";
    std::fs::write(dir.path().join("broken.yaml"), broken).unwrap();
    let verdict = promtool::run(dir.path(), &["check", "rules", "broken.yaml"]);
    assert!(
        !verdict.success,
        "promtool accepted a rule that does not parse:\n{}",
        verdict.output
    );
}

#[test]
fn alert_rules_pass_their_promtool_unit_tests() {
    let dir = flat_copy(&[ALERT_RULES, ALERT_TESTS]);
    let verdict = promtool::run(dir.path(), &["test", "rules", "alerts_test.yaml"]);
    assert!(verdict.success, "promtool test rules:\n{}", verdict.output);

    // Every rule is tested: it appears as an alertname with an expected alert.
    let rules = load_one(&deploy_dir().join(ALERT_RULES));
    let tests = std::fs::read_to_string(deploy_dir().join(ALERT_TESTS)).unwrap();
    let tests: Value = serde_yaml::from_str(&tests).unwrap();
    let fired: BTreeSet<&str> = tests["tests"]
        .as_sequence()
        .unwrap()
        .iter()
        .flat_map(|t| t["alert_rule_test"].as_sequence().unwrap())
        .filter(|case| !case["exp_alerts"].as_sequence().unwrap().is_empty())
        .map(|case| case["alertname"].as_str().unwrap())
        .collect();
    for group in rules["groups"].as_sequence().unwrap() {
        for rule in group["rules"].as_sequence().unwrap() {
            let name = rule["alert"].as_str().expect("alerting rules only");
            assert!(fired.contains(name), "{name} has no test in which it fires");
        }
    }
}

#[test]
fn alert_unit_tests_fail_when_a_rule_does_not_fire_as_expected() {
    let dir = flat_copy(&[ALERT_RULES]);
    // No backend gauge at 3, yet the test expects the no-backends alert.
    let wrong = "rule_files: [alerts.yaml]\nevaluation_interval: 1m\ntests:\n  - interval: 1m\n    input_series:\n      - series: 'otelcol_loadbalancer_num_backends{job=\"tailgate-balancer\",instance=\"b:8888\",resolver=\"dns\"}'\n        values: '3x10'\n    alert_rule_test:\n      - eval_time: 5m\n        alertname: TailgateNoBackends\n        exp_alerts:\n          - exp_labels: {severity: critical, job: tailgate-balancer, instance: 'b:8888', resolver: dns}\n";
    std::fs::write(dir.path().join("wrong_test.yaml"), wrong).unwrap();
    let verdict = promtool::run(dir.path(), &["test", "rules", "wrong_test.yaml"]);
    assert!(
        !verdict.success,
        "promtool passed a test whose alert cannot fire:\n{}",
        verdict.output
    );
}

/// The naming every tailgate config in `deploy/` selects; they must agree, since one dashboard
/// and one set of alerts serve them all.
fn deploy_naming() -> tailgate::telemetry::Naming {
    let env: BTreeMap<&str, &str> = CONFIG_ENV.iter().copied().collect();
    let mut namings = BTreeMap::new();
    for file in files_of(Kind::TailgateConfig) {
        let text = std::fs::read_to_string(&file).unwrap();
        let text =
            tailgate::yaml::expand_env(&text, |name| env.get(name).map(|v| v.to_string())).unwrap();
        let config = tailgate::config::Config::from_yaml(&text)
            .unwrap_or_else(|e| panic!("{}: {e}", file.display()));
        namings.insert(file.display().to_string(), config.settings.telemetry.naming);
    }
    let distinct: BTreeSet<String> = namings.values().map(|n| format!("{n:?}")).collect();
    assert_eq!(
        distinct.len(),
        1,
        "the deploy configs name metrics differently: {namings:?}"
    );
    *namings.values().next().unwrap()
}

/// Every name a query can use for a tailgate metric under `naming`.
fn exported_names(naming: tailgate::telemetry::Naming) -> BTreeSet<String> {
    tailgate::telemetry::catalog::ALL
        .iter()
        .flat_map(|m| m.exported_series_names(naming))
        .collect()
}

/// The metric names a PromQL expression uses: identifiers with tailgate's prefixes, outside
/// quoted strings.
fn metric_names(expr: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    let mut in_string = false;
    let mut word = String::new();
    let mut flush = |word: &mut String| {
        if word.starts_with("otelcol_") || word.starts_with("tailgate_") {
            names.insert(word.clone());
        }
        word.clear();
    };
    for c in expr.chars() {
        if c == '"' {
            in_string = !in_string;
            flush(&mut word);
        } else if !in_string && (c.is_ascii_alphanumeric() || c == '_' || c == ':') {
            word.push(c);
        } else {
            flush(&mut word);
        }
    }
    flush(&mut word);
    names
}

/// Every query of the dashboard: panel targets' `expr` and template variable queries.
fn dashboard_queries() -> Vec<String> {
    let file = deploy_dir().join(DASHBOARD);
    let text = std::fs::read_to_string(&file).unwrap();
    let dashboard: serde_json::Value = serde_json::from_str(&text)
        .unwrap_or_else(|e| panic!("{} is not valid JSON: {e}", file.display()));
    fn walk(value: &serde_json::Value, out: &mut Vec<String>) {
        match value {
            serde_json::Value::Object(map) => {
                for (key, v) in map {
                    match (key.as_str(), v) {
                        ("expr" | "definition", serde_json::Value::String(s)) => {
                            out.push(s.clone())
                        }
                        ("query", serde_json::Value::String(s)) if s.contains('(') => {
                            out.push(s.clone())
                        }
                        _ => walk(v, out),
                    }
                }
            }
            serde_json::Value::Array(items) => items.iter().for_each(|v| walk(v, out)),
            _ => {}
        }
    }
    assert!(dashboard["panels"]
        .as_array()
        .is_some_and(|p| !p.is_empty()));
    assert!(dashboard["uid"].is_string() && dashboard["title"].is_string());
    let mut queries = Vec::new();
    walk(&dashboard, &mut queries);
    assert!(
        queries.len() > 20,
        "the dashboard has {} queries",
        queries.len()
    );
    queries
}

/// Every alert rule's expression.
fn alert_expressions() -> Vec<String> {
    let rules = load_one(&deploy_dir().join(ALERT_RULES));
    rules["groups"]
        .as_sequence()
        .unwrap()
        .iter()
        .flat_map(|g| g["rules"].as_sequence().unwrap())
        .map(|r| r["expr"].as_str().unwrap().to_string())
        .collect()
}

#[test]
fn the_dashboard_and_the_alerts_query_only_metrics_tailgate_exports() {
    let naming = deploy_naming();
    let exported = exported_names(naming);
    let mut used = BTreeSet::new();
    for (what, queries) in [
        ("dashboard", dashboard_queries()),
        ("alerts", alert_expressions()),
    ] {
        for query in queries {
            for name in metric_names(&query) {
                assert!(
                    exported.contains(&name),
                    "the {what} queries {name}, which tailgate does not export under {naming:?} \
                     (in `{query}`)"
                );
                used.insert((what, name));
            }
        }
    }
    // What each must cover, by the names after the naming rule.
    let dashboard_needs = [
        "otelcol_receiver_accepted_spans_total",
        "otelcol_processor_tail_sampling_count_traces_sampled_total",
        "otelcol_processor_tail_sampling_global_count_traces_sampled_total",
        "otelcol_processor_tail_sampling_sampling_traces_on_memory",
        "tailgate_buffer_max_traces",
        "tailgate_buffered_bytes",
        "tailgate_decision_wait_seconds",
        "tailgate_decision_lateness_seconds_bucket",
        "tailgate_late_spans_total",
        "otelcol_exporter_queue_size",
        "otelcol_exporter_queue_capacity",
        "otelcol_exporter_send_failed_spans_total",
        "otelcol_exporter_enqueue_failed_spans_total",
        "otelcol_loadbalancer_num_backends",
        "otelcol_loadbalancer_backend_outcome_total",
        "tailgate_cluster_handed_off_spans_total",
        "tailgate_cluster_handed_off_traces_total",
        "tailgate_cluster_forwarded_spans_total",
        "otelcol_process_cpu_seconds_total",
        "otelcol_process_memory_rss_bytes",
    ];
    let alerts_need = [
        "otelcol_exporter_enqueue_failed_spans_total",
        "otelcol_exporter_send_failed_spans_total",
        "tailgate_spans_dropped_total",
        "otelcol_processor_tail_sampling_sampling_traces_on_memory",
        "tailgate_buffered_bytes",
        "tailgate_decision_lateness_seconds_bucket",
        "otelcol_loadbalancer_num_backends",
    ];
    for (what, needs) in [
        ("dashboard", &dashboard_needs[..]),
        ("alerts", &alerts_need[..]),
    ] {
        for name in needs {
            assert!(
                used.contains(&(what, name.to_string())),
                "the {what} does not use {name}"
            );
        }
    }
    // The jobs they name are the compose Prometheus' jobs.
    for query in dashboard_queries().iter().chain(&alert_expressions()) {
        for (at, _) in query.match_indices("job=\"") {
            let job = query[at + 5..].split('"').next().unwrap();
            assert!(
                [BALANCER_JOB, SAMPLER_JOB].contains(&job),
                "unknown job {job} in {query}"
            );
        }
    }
}

#[test]
fn a_metric_name_tailgate_does_not_export_is_caught() {
    let exported = exported_names(deploy_naming());
    let names = metric_names(
        r#"rate(otelcol_receiver_accepted_spans{job="tailgate_x"}[5m]) / tailgate_late_spans_total"#,
    );
    assert_eq!(
        names,
        BTreeSet::from([
            "otelcol_receiver_accepted_spans".to_string(),
            "tailgate_late_spans_total".to_string()
        ])
    );
    assert!(
        !exported.contains("otelcol_receiver_accepted_spans"),
        "the default-reader name"
    );
    assert!(exported.contains("tailgate_late_spans_total"));
}

#[test]
fn every_dashboard_query_is_valid_promql() {
    // Grafana's variables, as Grafana substitutes them, then each query as a recording rule,
    // which `promtool check rules` parses.
    let mut rules = String::from("groups:\n  - name: dashboard\n    rules:\n");
    for (i, query) in dashboard_queries().iter().enumerate() {
        let query = query
            .replace("$__rate_interval", "1m")
            .replace("$job", ".*")
            .replace("$instance", ".*");
        let query = if query.starts_with("label_values(") {
            // A Grafana function, not PromQL: check the selector inside it.
            let inner = &query["label_values(".len()..query.rfind(',').unwrap()];
            inner.to_string()
        } else {
            query
        };
        rules += &format!(
            "      - record: dashboard:query{i}\n        expr: {}\n",
            serde_json::to_string(&query).unwrap()
        );
    }
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("dashboard.yaml"), &rules).unwrap();
    let verdict = promtool::run(dir.path(), &["check", "rules", "dashboard.yaml"]);
    assert!(verdict.success, "{}\n{rules}", verdict.output);
}
