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
/// `decision_wait` worth of spans every `decision_wait` and allocates as much again. mimalloc
/// does not purge each page a delay after it was freed: the first free after a purge starts the
/// clock, and when it runs out every page free at that moment goes back to the OS, however
/// recently it was freed; then the buffer faults and zeroes them in again. With the default
/// (1 s) that was 13-21 % of the sampler's CPU profile at a steady 200k spans/s; with 10 s one
/// purge of a warm 1.3 GB buffer (2,000-byte spans at 530k spans/s) cost 240k faults and
/// 0.3-0.6 CPU-s, every 10 s. A minute makes that a sixth, and still hands memory back after a
/// burst; the memory limiter does not wait for it (it releases free memory itself before it
/// refuses: [`release_free_memory`]). `MIMALLOC_PURGE_DELAY` overrides it.
const ALLOCATOR_PURGE_DELAY_MS: std::ffi::c_long = 60_000;

/// mimalloc's option numbers (`mi_option_t` in mimalloc 3's `mimalloc.h`; libmimalloc-sys does
/// not name these two). They differ between mimalloc 2 and 3 (`allow_thp` is 37 in 2), so the
/// crates are pinned exactly in Cargo.toml and the C library's version is checked before they are
/// used.
const MI_OPTION_PURGE_DELAY: libmimalloc_sys::mi_option_t = 15;
const MI_OPTION_ALLOW_THP: libmimalloc_sys::mi_option_t = 43;
/// The mimalloc major version the numbers above are for (`mi_version()` is major*10000 + ...).
const MI_OPTIONS_MAJOR: i32 = 3;

/// Sets the allocator up for the buffer's pattern, before the runtime starts:
///
/// - the purge delay above;
/// - no transparent huge pages. mimalloc asks for them (`MADV_HUGEPAGE`), and with the usual
///   `defrag = madvise` the kernel then compacts memory in the page-fault path: while the buffer
///   grows, ingest cost 1.8 CPU-s per million spans with huge pages and 0.7 without, and at a
///   steady 400k spans/s 0.85-0.93 against 1.00-1.08. mimalloc reads its own option only at
///   start-up, so the process-wide switch (`PR_SET_THP_DISABLE`) is set too.
///   `MIMALLOC_ALLOW_THP=1` keeps huge pages.
///
/// Returns warnings to log once logging is up (it is not yet).
fn tune_allocator() -> Vec<String> {
    let mut warnings = Vec::new();
    // SAFETY: mi_version only reads a constant.
    let version = unsafe { libmimalloc_sys::mi_version() };
    let options_known = version / 10_000 == MI_OPTIONS_MAJOR;
    if !options_known {
        warnings.push(format!(
            "mimalloc {version} is not the major version {MI_OPTIONS_MAJOR} tailgate's allocator \
             options are numbered for: purge delay and huge-page options left at their defaults"
        ));
    }
    // SAFETY: these set allocator options and a process flag; no memory is touched, and options
    // may be set at any time.
    unsafe {
        if options_known && std::env::var_os("MIMALLOC_PURGE_DELAY").is_none() {
            libmimalloc_sys::mi_option_set(MI_OPTION_PURGE_DELAY, ALLOCATOR_PURGE_DELAY_MS);
        }
        if std::env::var_os("MIMALLOC_ALLOW_THP").is_none() {
            if options_known {
                libmimalloc_sys::mi_option_set(MI_OPTION_ALLOW_THP, 0);
            }
            if libc::prctl(libc::PR_SET_THP_DISABLE, 1, 0, 0, 0) != 0 {
                warnings.push(format!(
                    "prctl(PR_SET_THP_DISABLE) failed ({}): transparent huge pages stay on",
                    std::io::Error::last_os_error()
                ));
            }
        }
    }
    warnings
}

/// Returns mimalloc's free memory to the OS now rather than at the end of its purge delay (the
/// memory limiter's stand-in for the Collector's forced garbage collection).
fn release_free_memory() {
    // SAFETY: mi_collect only walks the allocator's own structures. `force` purges every arena's
    // free pages, whichever thread freed them.
    unsafe { libmimalloc_sys::mi_collect(true) }
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
usage: tailgate --config <file.yaml> [--watch-config] [--feature-gates <gates>]
                                                  run the gateway (SIGHUP reloads the config;
                                                  --watch-config also reloads when it changes)
       tailgate validate --config <file.yaml>    check a config and exit
       tailgate replay --config <file.yaml> <traces> [--output json]
                                                  run the configured policies over recorded traces
       tailgate --version";

/// The Collector's feature gate that records the deciding policy on kept traces.
const RECORD_POLICY_GATE: &str = "processor.tailsamplingprocessor.recordpolicy";

enum Command {
    Run(Options),
    Validate(Options),
    Replay(Options, PathBuf, bool),
    Version,
}

struct Options {
    config: PathBuf,
    watch: bool,
    /// `--feature-gates`: the Collector's gates; the record-policy one turns `record_policy` on.
    record_policy: bool,
}

impl Options {
    /// Loads and validates the config, with the feature gates applied.
    fn load(&self) -> Result<Settings, String> {
        let mut config =
            Config::load(&self.config).map_err(|e| format!("{}: {e}", self.config.display()))?;
        if self.record_policy {
            if let tailgate::config::Role::Sampler {
                sampler: Some(sampler),
                ..
            } = &mut config.settings.role
            {
                sampler.buffer.record_policy = true;
            }
        }
        Ok(config.settings)
    }
}

/// Reads `--feature-gates` as the Collector does: comma-separated ids, `+id` or `id` to enable,
/// `-id` to disable. Unknown gates are refused, as the Collector refuses them.
fn record_policy_gate(gates: &str) -> Result<bool, String> {
    let mut on = false;
    for gate in gates.split(',').map(str::trim).filter(|g| !g.is_empty()) {
        let (enable, id) = match gate.strip_prefix('-') {
            Some(id) => (false, id),
            None => (true, gate.strip_prefix('+').unwrap_or(gate)),
        };
        if id != RECORD_POLICY_GATE {
            return Err(format!(
                "unknown feature gate `{id}` (tailgate knows `{RECORD_POLICY_GATE}`)"
            ));
        }
        on = enable;
    }
    Ok(on)
}

fn parse_args(args: &[String]) -> Result<Command, String> {
    let mut sub = None;
    let mut config = None;
    let mut watch = false;
    let mut record_policy = false;
    let mut json = false;
    let mut traces = None;
    let mut i = 0;
    let value = |i: &mut usize, flag: &str| -> Result<String, String> {
        *i += 1;
        args.get(*i).cloned().ok_or(format!("{flag} needs a value"))
    };
    while i < args.len() {
        let arg = args[i].as_str();
        match arg {
            "validate" | "replay" if i == 0 => sub = Some(arg),
            "--version" | "-v" => return Ok(Command::Version),
            "--help" | "-h" => return Err(String::new()),
            "--config" | "-c" => config = Some(value(&mut i, "--config")?),
            _ if arg.starts_with("--config=") => {
                config = Some(arg["--config=".len()..].to_string())
            }
            "--watch-config" => watch = true,
            "--feature-gates" => record_policy = record_policy_gate(&value(&mut i, arg)?)?,
            _ if arg.starts_with("--feature-gates=") => {
                record_policy = record_policy_gate(&arg["--feature-gates=".len()..])?
            }
            "--output" => match value(&mut i, arg)?.as_str() {
                "json" => json = true,
                "text" => json = false,
                other => return Err(format!("--output is `json` or `text`, not `{other}`")),
            },
            "--output=json" => json = true,
            _ if sub == Some("replay") && !arg.starts_with('-') && traces.is_none() => {
                traces = Some(PathBuf::from(arg))
            }
            _ => return Err(format!("unknown argument `{arg}`")),
        }
        i += 1;
    }
    let options = Options {
        config: PathBuf::from(config.ok_or("--config is required")?),
        watch,
        record_policy,
    };
    Ok(match sub {
        Some("validate") => Command::Validate(options),
        Some("replay") => Command::Replay(
            options,
            traces.ok_or("replay needs a file of traces")?,
            json,
        ),
        _ => Command::Run(options),
    })
}

fn main() -> ExitCode {
    let allocator_warnings = tune_allocator();
    telemetry::process::set_memory_release(release_free_memory);
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
    let options = match command {
        Command::Version => {
            println!("tailgate {}", env!("CARGO_PKG_VERSION"));
            return ExitCode::SUCCESS;
        }
        Command::Validate(options) => {
            return match options.load() {
                Ok(settings) => {
                    // What is accepted but has no effect is said here too, not only at start.
                    for notice in &settings.notices {
                        eprintln!("warning: {notice}");
                    }
                    println!("{}: config is valid", options.config.display());
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("{e}");
                    ExitCode::from(1)
                }
            };
        }
        Command::Replay(options, traces, json) => {
            let settings = match options.load() {
                Ok(settings) => settings,
                Err(e) => {
                    eprintln!("{e}");
                    return ExitCode::from(1);
                }
            };
            return match tailgate::replay::run(&settings, &traces) {
                Ok(report) => {
                    if json {
                        println!("{}", report.to_json());
                    } else {
                        print!("{}", report.to_text());
                    }
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("tailgate replay: {e}");
                    ExitCode::from(1)
                }
            };
        }
        Command::Run(options) => options,
    };
    let settings = match options.load() {
        Ok(settings) => settings,
        Err(e) => {
            eprintln!("{e}");
            return ExitCode::from(1);
        }
    };
    match run(settings, options, allocator_warnings) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("tailgate: {e:#}");
            ExitCode::from(1)
        }
    }
}

fn run(settings: Settings, options: Options, warnings: Vec<String>) -> anyhow::Result<()> {
    telemetry::init_logs(&settings.telemetry.logs);
    for warning in warnings {
        tracing::warn!("{warning}");
    }
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
        let watch = options.watch.then(|| options.config.clone());
        let reload = tailgate::app::Reload {
            load: Box::new(move || options.load()),
            watch,
        };
        tailgate::app::run(settings, metrics, shutdown, Some(reload)).await?;
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
            matches!(parse_args(&args(&["--config", "a.yaml"])), Ok(Command::Run(o)) if o.config.as_path() == std::path::Path::new("a.yaml") && !o.watch && !o.record_policy)
        );
        assert!(matches!(
            parse_args(&args(&["validate", "--config=b.yaml"])),
            Ok(Command::Validate(_))
        ));
        assert!(matches!(
            parse_args(&args(&["--config", "a.yaml", "--watch-config"])),
            Ok(Command::Run(o)) if o.watch
        ));
        assert!(matches!(
            parse_args(&args(&["replay", "--config", "a.yaml", "t.jsonl", "--output", "json"])),
            Ok(Command::Replay(_, t, true)) if t.as_path() == std::path::Path::new("t.jsonl")
        ));
        assert!(parse_args(&args(&["replay", "--config", "a.yaml"])).is_err());
        assert!(parse_args(&args(&[])).is_err());
        assert!(parse_args(&args(&["--bogus"])).is_err());
    }

    #[test]
    fn the_allocator_is_the_mimalloc_major_version_its_options_are_numbered_for() {
        // SAFETY: reads a constant.
        let version = unsafe { libmimalloc_sys::mi_version() };
        assert_eq!(version / 10_000, MI_OPTIONS_MAJOR, "mimalloc {version}");
        assert!(tune_allocator().is_empty(), "{:?}", tune_allocator());
        // SAFETY: reads an option.
        let delay = unsafe { libmimalloc_sys::mi_option_get(MI_OPTION_PURGE_DELAY) };
        if std::env::var_os("MIMALLOC_PURGE_DELAY").is_none() {
            assert_eq!(delay, ALLOCATOR_PURGE_DELAY_MS);
        }
    }

    #[test]
    fn the_record_policy_feature_gate_is_read_as_the_collector_writes_it() {
        for (gates, on) in [
            ("processor.tailsamplingprocessor.recordpolicy", true),
            ("+processor.tailsamplingprocessor.recordpolicy", true),
            ("-processor.tailsamplingprocessor.recordpolicy", false),
        ] {
            let a = args(&["--config", "a.yaml", "--feature-gates", gates]);
            assert!(
                matches!(parse_args(&a), Ok(Command::Run(o)) if o.record_policy == on),
                "{gates}"
            );
        }
        let unknown = parse_args(&args(&["-c", "a.yaml", "--feature-gates=some.other.gate"]));
        assert!(matches!(unknown, Err(e) if e.contains("some.other.gate")));
    }
}
