//! The `tailgate` daemon: parses flags, loads the config, installs signal handling, runs the app.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use tokio_util::sync::CancellationToken;

use tailgate::config::Config;
use tailgate::telemetry;

/// mimalloc instead of the system allocator: the data path allocates a few buffers per request
/// and per trace, and glibc's malloc showed up as ~18% of the sampler's CPU profile.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

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
                Ok(_) => {
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
    match run(config) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("tailgate: {e:#}");
            ExitCode::from(1)
        }
    }
}

fn run(config: Config) -> anyhow::Result<()> {
    telemetry::init_logs(&config.service.telemetry.logs);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    runtime.block_on(async move {
        let metrics = if config.service.telemetry.metrics.level == "none" {
            None
        } else {
            Some(telemetry::install_metrics().map_err(anyhow::Error::msg)?)
        };
        let shutdown = CancellationToken::new();
        tokio::spawn(watch_signals(shutdown.clone()));
        tailgate::app::run(config, metrics, shutdown).await?;
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
