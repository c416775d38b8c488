//! Argument parsing and dispatch for the `inlong-dataproxy` binary.

mod serve;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// A fast client SDK for Apache InLong DataProxy, and a local DataProxy + Manager to try it on.
#[derive(Debug, Parser)]
#[command(name = "inlong-dataproxy", version, about)]
pub struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run local DataProxy nodes and a Manager that lists them (for tests and benchmarks).
    Serve(serve::ServeArgs),
}

/// Logs go to stderr, filtered by `RUST_LOG` (default: warnings).
pub fn install_tracing() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn"));
    let _ =
        tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).try_init();
}

/// Runs the chosen subcommand.
pub fn run(cli: Cli) -> Result<ExitCode, String> {
    match cli.command {
        Command::Serve(args) => serve::run(&args),
    }
}
