//! The `handover` binary: parses the command line, validates the config
//! before binding anything, and maps failures to exit codes (DESIGN.md §7):
//! 0 success, 1 the operation ran and found a problem, 2 usage, 64 bad
//! config.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use handover::config::Config;
use handover::telemetry::{self, LogFormat};

/// Exit code for a bad config file (EX_USAGE from sysexits.h).
const EXIT_CONFIG: u8 = 64;
/// Exit code when the operation ran and found a problem.
const EXIT_PROBLEM: u8 = 1;

#[derive(Debug, Parser)]
#[command(
    name = "handover",
    version,
    about = "Migrate an OpenID Connect server without logging anybody out"
)]
struct Cli {
    /// Log format on stderr.
    #[arg(long, global = true, value_enum, default_value = "text")]
    log_format: LogFormat,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the proxy, sync workers, backfill and admin API.
    Serve {
        /// The config file.
        #[arg(short, long, value_name = "FILE")]
        config: PathBuf,
    },
    /// Validate a config file (and resolve its secrets) without starting anything.
    Check {
        /// The config file.
        #[arg(short, long, value_name = "FILE")]
        config: PathBuf,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Serve { config } => serve(&config, cli.log_format),
        Command::Check { config } => check(&config),
    }
}

fn check(path: &std::path::Path) -> ExitCode {
    match Config::load(path) {
        Ok(_) => {
            eprintln!("handover: {} is valid", path.display());
            ExitCode::SUCCESS
        }
        Err(err) => {
            eprintln!("handover: {err}");
            ExitCode::from(EXIT_CONFIG)
        }
    }
}

fn serve(path: &std::path::Path, log_format: LogFormat) -> ExitCode {
    // Validate before anything else: a bad config never binds a socket.
    let config = match Config::load(path) {
        Ok(config) => config,
        Err(err) => {
            eprintln!("handover: {err}");
            return ExitCode::from(EXIT_CONFIG);
        }
    };
    telemetry::init(log_format);
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(err) => {
            eprintln!("handover: cannot start the async runtime: {err}");
            return ExitCode::from(EXIT_PROBLEM);
        }
    };
    let result = runtime.block_on(async {
        let listeners = handover::app::Listeners::bind(&config).await?;
        handover::app::run(listeners, config, shutdown_signal()).await
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("handover: {err}");
            ExitCode::from(EXIT_PROBLEM)
        }
    }
}

/// Completes on SIGTERM or ctrl-c.
async fn shutdown_signal() {
    #[cfg(unix)]
    {
        let mut term = match tokio::signal::unix::signal(
            tokio::signal::unix::SignalKind::terminate(),
        ) {
            Ok(term) => term,
            Err(err) => {
                tracing::warn!(error = %err, "cannot listen for SIGTERM; only ctrl-c stops the proxy");
                let _ = tokio::signal::ctrl_c().await;
                return;
            }
        };
        tokio::select! {
            _ = term.recv() => {}
            _ = tokio::signal::ctrl_c() => {}
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}
