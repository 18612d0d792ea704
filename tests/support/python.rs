//! Runs the OpenTelemetry Python SDK clients in `tests/clients/`.
//!
//! The interpreter is `$TAILGATE_TEST_PYTHON` if set, else `.venv/bin/python` in the crate root
//! (`tests/run.sh` creates that venv from `tests/clients/requirements.txt`: `opentelemetry-sdk` and
//! `opentelemetry-exporter-otlp-proto-grpc`).
//! Without one, a test using these clients fails with a message saying how to create the venv
//! (`tests/run.sh` does): a missing prerequisite is never a silent pass.
//!
//! The client runs on a blocking thread, so the test's runtime keeps serving (a
//! [`super::RecordingBackend`] on a current-thread runtime still answers the client's exports).

use std::path::PathBuf;
use std::process::{Command, ExitStatus, Stdio};
use std::time::Duration;

use serde::Deserialize;

/// How long [`run_async_jobs`] lets the client run.
pub const ASYNC_JOBS_TIMEOUT: Duration = Duration::from_secs(120);

/// How to install what these clients need, for failure messages.
pub const INSTALL_HINT: &str = "python3 -m venv .venv && .venv/bin/pip install -r \
                                tests/clients/requirements.txt (tests/run.sh does this)";

/// The Python interpreter to run clients with; panics, saying how to create it, if there is none.
pub fn python() -> PathBuf {
    let venv = match std::env::var_os("TAILGATE_TEST_PYTHON") {
        Some(path) => PathBuf::from(path),
        None => PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(".venv/bin/python"),
    };
    assert!(
        venv.exists(),
        "the Python SDK clients need {} (or $TAILGATE_TEST_PYTHON); create it: {INSTALL_HINT}",
        venv.display()
    );
    venv
}

/// The path of a client script in `tests/clients/`.
pub fn client_script(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/clients")
        .join(name)
}

/// A finished client process.
#[derive(Debug)]
pub struct ClientRun {
    pub status: ExitStatus,
    pub stdout: String,
    pub stderr: String,
}

/// Runs `tests/clients/<script> <args...>` to completion (at most `timeout`, then it is killed
/// and this panics). Panics, saying how to install it, if there is no Python venv.
pub async fn run_client(script: &str, args: &[String], timeout: Duration) -> ClientRun {
    let python = python();
    let child = Command::new(&python)
        .arg(client_script(script))
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("spawn {} {script}: {e}", python.display()));
    let pid = child.id();
    let finished = tokio::task::spawn_blocking(move || child.wait_with_output());
    let output = match tokio::time::timeout(timeout, finished).await {
        Ok(joined) => joined
            .expect("client-waiting task panicked")
            .unwrap_or_else(|e| panic!("wait for {script}: {e}")),
        Err(_) => {
            let _ = Command::new("kill")
                .args(["-KILL", &pid.to_string()])
                .status();
            panic!("tests/clients/{script} {args:?} still running after {timeout:?}; killed");
        }
    };
    ClientRun {
        status: output.status,
        stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
    }
}

/// What `async_jobs.py` reports: one entry per job.
#[derive(Debug, Clone, Deserialize)]
pub struct AsyncJobsReport {
    pub jobs: Vec<AsyncJob>,
}

/// One job of `async_jobs.py`: a trace of 4 spans (API server + producer, worker consumer + db).
#[derive(Debug, Clone, Deserialize)]
pub struct AsyncJob {
    /// 1-based job number.
    pub job: usize,
    /// Lower-case hex trace ID.
    pub trace_id: String,
    pub kind: JobKind,
    /// Spans the client sent for this trace.
    pub spans: usize,
}

/// Which policy a job's trace is built to trigger.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum JobKind {
    /// The worker's `db query` span has status ERROR (every 5th job).
    Error,
    /// The trace spans 2.5 s from the API span's start to the worker span's end (every 7th job
    /// that is not an error).
    Slow,
    /// Neither: a few hundred milliseconds end to end, no error.
    Normal,
}

impl AsyncJobsReport {
    /// The jobs of one kind.
    pub fn of_kind(&self, kind: JobKind) -> impl Iterator<Item = &AsyncJob> {
        self.jobs.iter().filter(move |j| j.kind == kind)
    }

    /// The number of spans the client sent in all.
    pub fn total_spans(&self) -> usize {
        self.jobs.iter().map(|j| j.spans).sum()
    }
}

/// Runs `async_jobs.py` against an OTLP/gRPC `endpoint` (`http://host:port`) for `jobs` jobs,
/// asserts it exited 0, and returns its report.
pub async fn run_async_jobs(endpoint: &str, jobs: usize) -> AsyncJobsReport {
    let args = [endpoint.to_string(), jobs.to_string()];
    let run = run_client("async_jobs.py", &args, ASYNC_JOBS_TIMEOUT).await;
    assert!(
        run.status.success(),
        "async_jobs.py exited with {}\n--- stdout ---\n{}\n--- stderr ---\n{}",
        run.status,
        run.stdout,
        run.stderr
    );
    let line = run.stdout.lines().rev().find(|l| !l.trim().is_empty());
    let report: AsyncJobsReport = line
        .and_then(|l| serde_json::from_str(l).ok())
        .unwrap_or_else(|| {
            panic!(
                "async_jobs.py printed no JSON report\n--- stdout ---\n{}\n--- stderr ---\n{}",
                run.stdout, run.stderr
            )
        });
    assert_eq!(report.jobs.len(), jobs, "async_jobs.py reported {report:?}");
    report
}
