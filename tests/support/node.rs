//! Runs the OpenTelemetry JS SDK clients in `tests/clients/js/` with Node.
//!
//! Node is `$TAILGATE_TEST_NODE` if set, else `node` on `PATH`; the SDK packages are the ones
//! pinned in `tests/clients/js/package-lock.json`, installed into its `node_modules` by
//! `npm ci` (`tests/run.sh` does that). Without Node or the packages a test using these clients
//! fails, with the command that installs them: it is never skipped.
//!
//! The client runs on a blocking thread, so the test's runtime keeps serving (a
//! [`super::RecordingBackend`] on the same runtime still answers the gateway).

use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::Duration;

use super::python::AsyncJobsReport;

/// How long [`run_async_jobs`] lets the client run.
pub const ASYNC_JOBS_TIMEOUT: Duration = Duration::from_secs(120);

/// The JS SDK's trace exporters, by the `OTEL_EXPORTER_OTLP_PROTOCOL` name of their protocol.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum JsExporter {
    /// `@opentelemetry/exporter-trace-otlp-http`: OTLP/HTTP with JSON bodies.
    HttpJson,
    /// `@opentelemetry/exporter-trace-otlp-proto`: OTLP/HTTP with protobuf bodies.
    HttpProtobuf,
    /// `@opentelemetry/exporter-trace-otlp-grpc`: OTLP/gRPC.
    Grpc,
}

impl JsExporter {
    pub fn protocol(self) -> &'static str {
        match self {
            JsExporter::HttpJson => "http/json",
            JsExporter::HttpProtobuf => "http/protobuf",
            JsExporter::Grpc => "grpc",
        }
    }
}

/// `tests/clients/js`.
pub fn client_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/clients/js")
}

const INSTALL_HINT: &str = "install Node 20 or later (apt-get install -y nodejs npm) and run \
     `npm ci` in tests/clients/js (tests/run.sh does both checks and the npm ci)";

/// The Node binary; panics with [`INSTALL_HINT`] if there is none, or if the SDK packages are
/// not installed.
pub fn node() -> PathBuf {
    let node = std::env::var_os("TAILGATE_TEST_NODE")
        .map(PathBuf::from)
        .or_else(|| {
            std::env::var_os("PATH").and_then(|paths| {
                std::env::split_paths(&paths)
                    .map(|dir| dir.join("node"))
                    .find(|candidate| candidate.is_file())
            })
        })
        .unwrap_or_else(|| panic!("no `node` for the JS SDK clients; {INSTALL_HINT}"));
    let installed = client_dir().join("node_modules/@opentelemetry/sdk-trace-base/package.json");
    assert!(
        installed.is_file(),
        "the JS SDK packages are not installed ({} is missing); {INSTALL_HINT}",
        installed.display()
    );
    node
}

/// Runs `tests/clients/js/async_jobs.js` with `exporter` against `endpoint` (the OTLP/HTTP base
/// URL, or the OTLP/gRPC endpoint, as `http://host:port`) for `jobs` jobs, asserts it exited 0,
/// and returns its report.
pub async fn run_async_jobs(exporter: JsExporter, endpoint: &str, jobs: usize) -> AsyncJobsReport {
    let node = node();
    let args = [
        "async_jobs.js".to_string(),
        exporter.protocol().to_string(),
        endpoint.to_string(),
        jobs.to_string(),
    ];
    let child = Command::new(&node)
        .args(&args)
        .current_dir(client_dir())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("spawn {} async_jobs.js: {e}", node.display()));
    let pid = child.id();
    let finished = tokio::task::spawn_blocking(move || child.wait_with_output());
    let output = match tokio::time::timeout(ASYNC_JOBS_TIMEOUT, finished).await {
        Ok(joined) => joined
            .expect("client-waiting task panicked")
            .unwrap_or_else(|e| panic!("wait for async_jobs.js: {e}")),
        Err(_) => {
            let _ = Command::new("kill")
                .args(["-KILL", &pid.to_string()])
                .status();
            panic!("async_jobs.js {args:?} still running after {ASYNC_JOBS_TIMEOUT:?}; killed");
        }
    };
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success(),
        "async_jobs.js {args:?} exited with {}\n--- stdout ---\n{stdout}\n--- stderr ---\n{stderr}",
        output.status
    );
    let report: AsyncJobsReport = stdout
        .lines()
        .rev()
        .find(|l| !l.trim().is_empty())
        .and_then(|l| serde_json::from_str(l).ok())
        .unwrap_or_else(|| {
            panic!("async_jobs.js printed no JSON report\n--- stdout ---\n{stdout}\n--- stderr ---\n{stderr}")
        });
    assert_eq!(report.jobs.len(), jobs, "async_jobs.js reported {report:?}");
    report
}
