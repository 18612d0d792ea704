//! [`Gateway`]: the real `tailgate` binary, run as a child process on a config string.
//!
//! The config is written to a temp file and the binary is started as
//! `tailgate --config <file>`, with stdout and stderr captured to one log file in the same temp
//! directory. The health and metrics addresses are read from the config itself
//! (`extensions.health_check.endpoint` and `path`; `service.telemetry.metrics.readers[].pull.
//! exporter.prometheus` or the older `service.telemetry.metrics.address`), so any config works.
//!
//! A thread blocks in `Child::wait` and publishes the exit status on a watch channel: waiting for
//! exit is a wait on that channel, never a poll. Readiness is the one poll (GET the health
//! endpoint every 50 ms), since a starting process has no other way to say it is listening.
//!
//! When a test panics while a `Gateway` is alive, dropping it prints the captured log to stderr,
//! so a failing test shows what the gateway said. Drop also kills the process if it is still
//! running.

use std::fs::{self, File};
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use tempfile::TempDir;
use tokio::sync::watch;

use super::http::{self, HttpResponse};

/// How long [`Gateway::start`] waits for the health endpoint to answer 200.
pub const READY_TIMEOUT: Duration = Duration::from_secs(30);
/// The interval of the readiness poll.
const READY_POLL: Duration = Duration::from_millis(50);
/// Timeout of one health or metrics request.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);

/// A running (or exited) `tailgate` process; see the module docs.
pub struct Gateway {
    pid: u32,
    exit: watch::Receiver<Option<ExitStatus>>,
    config_path: PathBuf,
    log_path: PathBuf,
    health_url: Option<String>,
    metrics_url: Option<String>,
    // Last: the directory goes away only after everything else is dropped.
    _dir: TempDir,
}

impl Gateway {
    /// Starts the gateway on `config` and waits until its health endpoint answers 200.
    /// Panics (printing the config and log, as any panic with a live `Gateway` does) if it exits
    /// or is not ready within [`READY_TIMEOUT`].
    pub async fn start(config: &str) -> Gateway {
        Self::start_with_env(config, &[]).await
    }

    /// [`Gateway::start`] with extra environment variables (e.g. `RUST_LOG`, or values the
    /// config references as `${env:NAME}`).
    pub async fn start_with_env(config: &str, env: &[(&str, &str)]) -> Gateway {
        let gateway = Self::spawn(config, env);
        if let Err(error) = gateway.wait_ready(READY_TIMEOUT).await {
            // Dropping `gateway` while panicking prints its config and log.
            panic!("tailgate did not become ready: {error}");
        }
        gateway
    }

    /// Starts the process without waiting for anything.
    pub fn spawn(config: &str, env: &[(&str, &str)]) -> Gateway {
        let dir = tempfile::tempdir().expect("create a temp dir for the gateway");
        let config_path = dir.path().join("config.yaml");
        fs::write(&config_path, config).expect("write the gateway config");
        let log_path = dir.path().join("tailgate.log");
        let log = File::create(&log_path).expect("create the gateway log file");
        let stderr = log.try_clone().expect("clone the log file handle");

        // `TAILGATE_TEST_BIN` runs the tests against another build (an earlier commit's binary,
        // to show a test fails there).
        let binary = std::env::var_os("TAILGATE_TEST_BIN")
            .map(PathBuf::from)
            .unwrap_or_else(|| PathBuf::from(env!("CARGO_BIN_EXE_tailgate")));
        // Run in the temp dir, so relative paths in a config (the `file` exporter's) land there.
        let mut child = Command::new(binary)
            .current_dir(dir.path())
            .arg("--config")
            .arg(&config_path)
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .stdout(Stdio::from(log))
            .stderr(Stdio::from(stderr))
            .spawn()
            .expect("spawn the tailgate binary");
        let pid = child.id();

        let (exited, exit) = watch::channel(None);
        std::thread::Builder::new()
            .name(format!("wait-tailgate-{pid}"))
            .spawn(move || {
                let status = child.wait().expect("wait for the tailgate process");
                exited.send_replace(Some(status));
            })
            .expect("spawn the process-waiting thread");

        let (health_url, metrics_url) = endpoints_of(config);
        Gateway {
            pid,
            exit,
            config_path,
            log_path,
            health_url,
            metrics_url,
            _dir: dir,
        }
    }

    /// Runs the gateway on `config` until it exits by itself (e.g. a config error), at most
    /// `timeout`; returns its exit status and output. Panics if it is still running then.
    pub async fn run_until_exit(config: &str, timeout: Duration) -> (ExitStatus, String) {
        let gateway = Self::spawn(config, &[]);
        let status = gateway.wait_exit(timeout).await;
        (status, gateway.logs())
    }

    /// Polls the health endpoint until it answers 200, the process exits, or `timeout` passes.
    pub async fn wait_ready(&self, timeout: Duration) -> Result<(), String> {
        let url = self
            .health_url
            .as_deref()
            .ok_or("the config has no extensions.health_check.endpoint to poll")?;
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.exit_status() {
                return Err(format!("tailgate exited with {status} while starting"));
            }
            let last = match http::get(url, REQUEST_TIMEOUT).await {
                Ok(response) if response.status == 200 => return Ok(()),
                Ok(response) => format!("GET {url} answered {}", response.status),
                Err(error) => error,
            };
            if Instant::now() >= deadline {
                return Err(format!("not healthy within {timeout:?}; last: {last}"));
            }
            tokio::time::sleep(READY_POLL).await;
        }
    }

    /// The process ID.
    pub fn pid(&self) -> u32 {
        self.pid
    }

    /// The process's working directory (a temp dir, removed with the `Gateway`).
    pub fn dir(&self) -> &Path {
        self._dir.path()
    }

    /// Where the config was written.
    pub fn config_path(&self) -> &Path {
        &self.config_path
    }

    /// `http://<health endpoint><path>`, if the config has a health_check extension.
    pub fn health_url(&self) -> Option<&str> {
        self.health_url.as_deref()
    }

    /// `http://<metrics address>/metrics`, if the config sets one.
    pub fn metrics_url(&self) -> Option<&str> {
        self.metrics_url.as_deref()
    }

    /// Everything the process wrote to stdout and stderr so far.
    pub fn logs(&self) -> String {
        fs::read(&self.log_path)
            .map(|bytes| String::from_utf8_lossy(&bytes).into_owned())
            .unwrap_or_else(|e| format!("<cannot read {}: {e}>", self.log_path.display()))
    }

    /// GET the health endpoint once.
    pub async fn health(&self) -> Result<HttpResponse, String> {
        let url = self
            .health_url
            .as_deref()
            .ok_or("the config has no extensions.health_check.endpoint")?;
        http::get(url, REQUEST_TIMEOUT).await
    }

    /// Scrapes the Prometheus text from the metrics endpoint. Panics on failure.
    pub async fn metrics(&self) -> String {
        let Some(url) = self.metrics_url.as_deref() else {
            panic!("the gateway config sets no metrics address");
        };
        match http::get(url, REQUEST_TIMEOUT).await {
            Ok(response) if response.status == 200 => response.text(),
            Ok(response) => panic!(
                "GET {url} answered {}: {}",
                response.status,
                response.text()
            ),
            Err(error) => panic!("{error}"),
        }
    }

    /// The value of metric `name` over the series whose labels include all of `labels`, summed
    /// if several match (so `&[]` gives the total over all label sets); 0 if none matches, as
    /// a counter that was never incremented has no series. `name` and the label keys must be
    /// ones tailgate declares (see [`assert_declared`]), so a 0 never stands for a renamed
    /// metric. See [`parse_metric`].
    pub async fn metric(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        self.metric_opt(name, labels).await.unwrap_or(0.0)
    }

    /// Like [`Gateway::metric`], but `None` when no series matches.
    pub async fn metric_opt(&self, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
        assert_declared(name, labels);
        parse_metric(&self.metrics().await, name, labels)
    }

    /// Sends SIGTERM (graceful shutdown). Panics if the process already exited.
    pub fn sigterm(&self) {
        self.signal("TERM");
    }

    /// Sends SIGKILL. Panics if the process already exited.
    pub fn kill(&self) {
        self.signal("KILL");
    }

    fn signal(&self, name: &str) {
        if let Some(status) = self.exit_status() {
            panic!("cannot send SIG{name}: tailgate already exited with {status}");
        }
        let status = Command::new("kill")
            .args([format!("-{name}"), self.pid.to_string()])
            .status()
            .expect("run kill");
        assert!(
            status.success(),
            "kill -{name} {} failed: {status}",
            self.pid
        );
    }

    /// The exit status, if the process has exited.
    pub fn exit_status(&self) -> Option<ExitStatus> {
        *self.exit.borrow()
    }

    /// Waits for the process to exit. Panics if it is still running after `timeout`.
    pub async fn wait_exit(&self, timeout: Duration) -> ExitStatus {
        let mut exit = self.exit.clone();
        let waited = tokio::time::timeout(timeout, exit.wait_for(Option::is_some))
            .await
            .map(|r| r.map(|status| *status));
        match waited {
            Ok(Ok(status)) => status.expect("wait_for returned an exit status"),
            Ok(Err(_)) => panic!("the process-waiting thread died"),
            Err(_) => panic!("tailgate still running {timeout:?} after it was expected to exit"),
        }
    }
}

impl Drop for Gateway {
    fn drop(&mut self) {
        if std::thread::panicking() {
            let config = fs::read_to_string(&self.config_path).unwrap_or_default();
            eprintln!(
                "--- tailgate config (pid {}) ---\n{}\n--- tailgate log ---\n{}\n--- end of tailgate log ---",
                self.pid,
                config.trim_end(),
                self.logs().trim_end()
            );
        }
        if self.exit_status().is_none() {
            // The waiting thread reaps the process; a failure here means it just exited.
            let _ = Command::new("kill")
                .args(["-KILL", &self.pid.to_string()])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status();
        }
    }
}

/// The health URL and metrics URL a config asks for, if any.
pub fn endpoints_of(config: &str) -> (Option<String>, Option<String>) {
    let Ok(yaml) = serde_yaml::from_str::<serde_yaml::Value>(config) else {
        return (None, None);
    };
    // `health_check` or a named instance such as `health_check/1`.
    let health = yaml
        .get("extensions")
        .and_then(|e| e.as_mapping())
        .and_then(|extensions| {
            extensions.iter().find_map(|(id, block)| {
                let id = id.as_str()?;
                (id == "health_check" || id.starts_with("health_check/")).then_some(block)
            })
        })
        .and_then(|block| {
            let endpoint = block.get("endpoint")?.as_str()?;
            let path = block.get("path").and_then(|p| p.as_str()).unwrap_or("/");
            Some(format!("http://{}{path}", connectable(endpoint)))
        });

    let metrics_config = yaml
        .get("service")
        .and_then(|s| s.get("telemetry"))
        .and_then(|t| t.get("metrics"));
    let from_readers = metrics_config
        .and_then(|m| m.get("readers"))
        .and_then(|r| r.as_sequence())
        .and_then(|readers| {
            readers.iter().find_map(|reader| {
                let prometheus = reader.get("pull")?.get("exporter")?.get("prometheus")?;
                let host = prometheus
                    .get("host")
                    .and_then(|h| h.as_str())
                    .unwrap_or("localhost");
                let port = prometheus.get("port")?.as_u64()?;
                Some(connectable(&format!("{host}:{port}")))
            })
        });
    let from_address = metrics_config
        .and_then(|m| m.get("address"))
        .and_then(|a| a.as_str())
        .map(connectable);
    let metrics = from_readers
        .or(from_address)
        .map(|addr| format!("http://{addr}/metrics"));
    (health, metrics)
}

/// A listen address turned into one a client can connect to: `0.0.0.0:p`, `[::]:p` and `:p`
/// become `127.0.0.1:p`.
fn connectable(listen: &str) -> String {
    let listen = listen
        .trim_start_matches("http://")
        .trim_start_matches("https://");
    match listen.rsplit_once(':') {
        Some(("" | "0.0.0.0" | "[::]", port)) => format!("127.0.0.1:{port}"),
        _ => listen.to_string(),
    }
}

/// Reads metric `name` from Prometheus text exposition: the sum over the samples named exactly
/// `name` whose labels include every pair in `labels`; `None` if there is no such sample.
pub fn parse_metric_unchecked(text: &str, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    let mut total = None;
    for line in text.lines() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let Some(sample) = parse_sample(line) else {
            continue;
        };
        if sample.name != name {
            continue;
        }
        let matches = labels
            .iter()
            .all(|(key, want)| sample.labels.iter().any(|(k, v)| k == key && v == want));
        if matches {
            *total.get_or_insert(0.0) += sample.value;
        }
    }
    total
}

/// [`parse_metric_unchecked`] of a metric tailgate declares: panics (see [`assert_declared`])
/// if `name` or a label key is not in the catalog, so an absent series proves the counter did
/// not move rather than that it was renamed.
pub fn parse_metric(text: &str, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    assert_declared(name, labels);
    parse_metric_unchecked(text, name, labels)
}

/// Panics unless `name` is a series name some metric of `src/telemetry/catalog.rs` exports
/// (under any naming rule) and every key of `labels` is one of its label names.
pub fn assert_declared(name: &str, labels: &[(&str, &str)]) {
    use tailgate::telemetry::catalog::{Naming, ALL};
    let namings = [
        Naming::COLLECTOR_DEFAULT,
        Naming::PROMETHEUS,
        Naming {
            type_suffix: true,
            units: false,
        },
        Naming {
            type_suffix: false,
            units: true,
        },
    ];
    let metric = ALL.iter().find(|m| {
        namings
            .iter()
            .any(|n| m.exported_series_names(*n).iter().any(|s| s == name))
    });
    let Some(metric) = metric else {
        panic!(
            "`{name}` is not a metric tailgate declares (src/telemetry/catalog.rs): a check \
             on it would pass for a renamed metric"
        );
    };
    for (key, _) in labels {
        assert!(
            metric.labels.contains(key) || (*key == "le" && !metric.buckets.is_empty()),
            "metric `{name}` has no label `{key}` (it has {:?})",
            metric.labels
        );
    }
}

/// One sample of Prometheus text exposition.
struct Sample<'a> {
    name: &'a str,
    labels: Vec<(String, String)>,
    value: f64,
}

/// One sample line: `name{k="v",...} value [timestamp]` or `name value [timestamp]`.
fn parse_sample(line: &str) -> Option<Sample<'_>> {
    let name_end = line.find(|c: char| c == '{' || c.is_whitespace())?;
    let name = &line[..name_end];
    let mut rest = &line[name_end..];
    let mut labels = Vec::new();
    if let Some(inner) = rest.strip_prefix('{') {
        let mut chars = inner.char_indices();
        let close = loop {
            let (i, c) = chars.next()?;
            match c {
                '}' => break i,
                ',' | ' ' => continue,
                _ => {}
            }
            // A label: name="value", the value with \\, \" and \n escapes.
            let mut key = String::from(c);
            key.extend(chars.by_ref().map(|(_, c)| c).take_while(|&c| c != '='));
            if chars.next()?.1 != '"' {
                return None;
            }
            let mut value = String::new();
            loop {
                match chars.next()?.1 {
                    '"' => break,
                    '\\' => match chars.next()?.1 {
                        'n' => value.push('\n'),
                        other => value.push(other),
                    },
                    c => value.push(c),
                }
            }
            labels.push((key.trim().to_string(), value));
        };
        rest = &inner[close + 1..];
    }
    let value = rest.split_whitespace().next()?.parse::<f64>().ok()?;
    Some(Sample {
        name,
        labels,
        value,
    })
}
