//! The `inlong-dataproxy` command line.
//!
//! `bench` (the main job) measures the producer against the embedded local DataProxy + Manager or
//! a real cluster; `send` sends lines from files or stdin; `serve` runs the local DataProxy nodes +
//! Manager from [`inlong_dataproxy_testkit`]. Every failure is one line on stderr and a non-zero
//! exit status; nothing panics on bad input. SIGINT and SIGTERM end `send` and `bench` with their
//! summary and status 130 or 143 (see `cli::interrupt`).

mod cli;

use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    let args = cli::Cli::parse();
    cli::install_tracing();
    match cli::run(args) {
        Ok(code) => code,
        Err(error) => {
            eprintln!("error: {error}");
            ExitCode::FAILURE
        }
    }
}
