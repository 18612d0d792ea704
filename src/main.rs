//! The `tailgate` daemon: flags, the allocator, signals and exit codes. Everything else is the
//! library's: the config is validated into settings (`tailgate::config`) and `tailgate::app`
//! runs them.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use tokio_util::sync::CancellationToken;

use tailgate::config::{Config, Settings};
use tailgate::telemetry;

/// mimalloc instead of the system allocator: the data path allocates a few buffers per request
/// and per trace, and glibc's malloc showed up as ~18% of the sampler's CPU profile.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// How long mimalloc keeps freed memory before returning it to the OS. The buffer frees a
/// `decision_wait` worth of spans every `decision_wait` and allocates as much again; with
/// mimalloc's default (1 s) the pages went back to the OS and were faulted and zeroed again:
/// page zeroing was 13-21 % of the sampler's CPU profile at a steady 200k spans/s. Ten seconds
/// covers the churn of any usual `decision_wait` (faults drop from ~3 to ~0.1 per thousand spans)
/// and still hands memory back after a burst. `MIMALLOC_PURGE_DELAY` overrides it.
const ALLOCATOR_PURGE_DELAY_MS: std::ffi::c_long = 10_000;

/// mimalloc's option numbers (`mi_option_t` in mimalloc 3's `mimalloc.h`; libmimalloc-sys does
/// not name these two).
const MI_OPTION_PURGE_DELAY: libmimalloc_sys::mi_option_t = 15;
const MI_OPTION_ALLOW_THP: libmimalloc_sys::mi_option_t = 43;

/// Sets the allocator up for the buffer's pattern, before the runtime starts:
///
/// - the purge delay above;
/// - no transparent huge pages. mimalloc asks for them (`MADV_HUGEPAGE`), and with the usual
///   `defrag = madvise` the kernel then compacts memory in the page-fault path: while the buffer
///   grows, ingest cost 1.8 CPU-s per million spans with huge pages and 0.7 without, and at a
///   steady 400k spans/s 0.85-0.93 against 1.00-1.08. mimalloc reads its own option only at
///   start-up, so the process-wide switch (`PR_SET_THP_DISABLE`) is set too.
///   `MIMALLOC_ALLOW_THP=1` keeps huge pages.
fn tune_allocator() {
    // SAFETY: these set allocator options and a process flag; no memory is touched, and options
    // may be set at any time.
    unsafe {
        if std::env::var_os("MIMALLOC_PURGE_DELAY").is_none() {
            libmimalloc_sys::mi_option_set(MI_OPTION_PURGE_DELAY, ALLOCATOR_PURGE_DELAY_MS);
        }
        if std::env::var_os("MIMALLOC_ALLOW_THP").is_none() {
            libmimalloc_sys::mi_option_set(MI_OPTION_ALLOW_THP, 0);
            libc::prctl(libc::PR_SET_THP_DISABLE, 1, 0, 0, 0);
        }
    }
}

/// The heap as `otelcol_process_runtime_heap_alloc_bytes` reports it: the bytes mimalloc has
/// committed for its heap (live allocations plus the free space in its pages that the purge delay
/// keeps), which it tracks in every build. Go's `HeapAlloc` counts live objects only; mimalloc
/// counts those only in builds with statistics, so this is the nearest honest figure, an upper
/// bound on live allocations, and below RSS by the binary, stacks and other mappings.
fn allocator_heap_bytes() -> Option<u64> {
    let mut committed = 0usize;
    // SAFETY: mi_process_info writes only through the pointers passed; null ones are skipped.
    unsafe {
        libmimalloc_sys::mi_process_info(
            std::ptr::null_mut(),
            std::ptr::null_mut(),
            std::ptr::null_mut(),
            std::ptr::null_mut(),
            std::ptr::null_mut(),
            &mut committed,
            std::ptr::null_mut(),
            std::ptr::null_mut(),
        );
    }
    Some(committed as u64)
}

const USAGE: &str = "\
usage: tailgate --config <file.yaml>             run the gateway
       tailgate validate --config <file.yaml>    check a config and exit
       tailgate --version";

enum Command {
    Run(PathBuf),
    Validate(PathBuf),
    Version,
}

fn parse_args(args: &[String]) -> Result<Command, String> {
    let mut validate = false;
    let mut config = None;
    let mut i = 0;
    while i < args.len() {
        let arg = args[i].as_str();
        match arg {
            "validate" if i == 0 => validate = true,
            "--version" | "-v" => return Ok(Command::Version),
            "--help" | "-h" => return Err(String::new()),
            "--config" | "-c" => {
                i += 1;
                config = Some(args.get(i).ok_or("--config needs a file")?.clone());
            }
            _ if arg.starts_with("--config=") => {
                config = Some(arg["--config=".len()..].to_string())
            }
            _ => return Err(format!("unknown argument `{arg}`")),
        }
        i += 1;
    }
    let config = PathBuf::from(config.ok_or("--config is required")?);
    Ok(if validate {
        Command::Validate(config)
    } else {
        Command::Run(config)
    })
}

fn main() -> ExitCode {
    tune_allocator();
    let args: Vec<String> = std::env::args().skip(1).collect();
    let command = match parse_args(&args) {
        Ok(c) => c,
        Err(message) => {
            if !message.is_empty() {
                eprintln!("tailgate: {message}");
            }
            eprintln!("{USAGE}");
            return ExitCode::from(2);
        }
    };
    let path = match command {
        Command::Version => {
            println!("tailgate {}", env!("CARGO_PKG_VERSION"));
            return ExitCode::SUCCESS;
        }
        Command::Validate(path) => {
            return match Config::load(&path) {
                Ok(config) => {
                    // What is accepted but has no effect is said here too, not only at start.
                    for notice in &config.settings.notices {
                        eprintln!("warning: {notice}");
                    }
                    println!("{}: config is valid", path.display());
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("{}: {e}", path.display());
                    ExitCode::from(1)
                }
            };
        }
        Command::Run(path) => path,
    };
    let config = match Config::load(&path) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("{}: {e}", path.display());
            return ExitCode::from(1);
        }
    };
    match run(config.settings) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("tailgate: {e:#}");
            ExitCode::from(1)
        }
    }
}

fn run(settings: Settings) -> anyhow::Result<()> {
    telemetry::init_logs(&settings.telemetry.logs);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    runtime.block_on(async move {
        let metrics = match settings.telemetry.metrics_address {
            None => None,
            Some(_) => Some(telemetry::Metrics::new(
                settings.telemetry.naming,
                Some(allocator_heap_bytes),
            )),
        };
        let shutdown = CancellationToken::new();
        tokio::spawn(watch_signals(shutdown.clone()));
        tailgate::app::run(settings, metrics, shutdown).await?;
        Ok(())
    })
}

/// The first SIGTERM/SIGINT starts a graceful shutdown; a second one exits at once.
async fn watch_signals(shutdown: CancellationToken) {
    use tokio::signal::unix::{signal, SignalKind};
    let (Ok(mut term), Ok(mut int)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) else {
        tracing::error!("cannot install signal handlers");
        return;
    };
    tokio::select! { _ = term.recv() => {}, _ = int.recv() => {} }
    tracing::info!("signal received: shutting down gracefully (send again to exit at once)");
    shutdown.cancel();
    tokio::select! { _ = term.recv() => {}, _ = int.recv() => {} }
    tracing::warn!("second signal: exiting without finishing shutdown");
    std::process::exit(130);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(a: &[&str]) -> Vec<String> {
        a.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn flags_parse_into_commands() {
        assert!(
            matches!(parse_args(&args(&["--config", "a.yaml"])), Ok(Command::Run(p)) if p.as_path() == std::path::Path::new("a.yaml"))
        );
        assert!(matches!(
            parse_args(&args(&["validate", "--config=b.yaml"])),
            Ok(Command::Validate(_))
        ));
        assert!(parse_args(&args(&[])).is_err());
        assert!(parse_args(&args(&["--bogus"])).is_err());
    }
}
