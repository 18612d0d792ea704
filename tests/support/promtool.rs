//! Runs Prometheus' `promtool` (Debian's `prometheus` package; `tests/run.sh` installs it when it
//! is missing and apt is there). A missing `promtool` fails the test that needs it, with the
//! command that installs it: these checks are the point of the tests, never skipped.

#![allow(dead_code)]

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

/// How to get promtool, for failure messages.
pub const INSTALL_HINT: &str = "apt-get install -y prometheus (Debian/Ubuntu; it ships promtool), \
     or put promtool on PATH, or point $TAILGATE_TEST_PROMTOOL at it";

/// The promtool binary: `$TAILGATE_TEST_PROMTOOL`, else `promtool` on `PATH`. Panics with
/// [`INSTALL_HINT`] if there is none.
pub fn promtool() -> PathBuf {
    if let Some(path) = std::env::var_os("TAILGATE_TEST_PROMTOOL") {
        return PathBuf::from(path);
    }
    let found = std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|dir| dir.join("promtool"))
            .find(|candidate| candidate.is_file())
    });
    found.unwrap_or_else(|| panic!("promtool is not installed; install it with: {INSTALL_HINT}"))
}

/// What promtool said.
#[derive(Debug)]
pub struct Verdict {
    pub success: bool,
    /// stdout and stderr together.
    pub output: String,
}

fn verdict(output: Output) -> Verdict {
    Verdict {
        success: output.status.success(),
        output: format!(
            "{}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        ),
    }
}

/// `promtool check metrics` on Prometheus text exposition.
pub fn check_metrics(text: &str) -> Verdict {
    let mut child = Command::new(promtool())
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("run promtool: {e}; install it with: {INSTALL_HINT}"));
    let mut stdin = child.stdin.take().expect("piped stdin");
    let text = text.to_string();
    // Write from another thread so a full stdout pipe cannot block both sides.
    let writer = std::thread::spawn(move || stdin.write_all(text.as_bytes()));
    let output = child.wait_with_output().expect("wait for promtool");
    writer
        .join()
        .expect("writer thread")
        .expect("write to promtool");
    verdict(output)
}

/// `promtool <args...>` run in `dir`.
pub fn run(dir: &Path, args: &[&str]) -> Verdict {
    let output = Command::new(promtool())
        .args(args)
        .current_dir(dir)
        .output()
        .unwrap_or_else(|e| panic!("run promtool {args:?}: {e}; install it with: {INSTALL_HINT}"));
    verdict(output)
}
