//! `shardcut`: the coordinator of consistent backups of sharded clusters.

use std::process::ExitCode;

use clap::Parser;

mod agent;
mod commands;
mod cut;
mod exit;
mod flow;
mod lock;
mod pitr;
mod progress;
mod quality;
mod readback;
mod render;
mod report;
mod rto;
mod selection;
mod service;

/// Consistent backups of sharded MySQL/MariaDB and PostgreSQL clusters.
#[derive(Debug, Parser)]
#[command(name = "shardcut", version, about)]
struct Cli {
    /// More log output on stderr (-v info, -vv debug). RUST_LOG overrides.
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    verbose: u8,
    #[command(subcommand)]
    command: commands::Command,
}

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            // clap prints help/version to stdout with success, usage errors to stderr.
            let code = if e.use_stderr() {
                exit::INVALID_INPUT
            } else {
                exit::SUCCESS
            };
            drop(e.print());
            return ExitCode::from(code);
        }
    };
    init_logging(cli.verbose);
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("shardcut: cannot start the async runtime: {e}");
            return ExitCode::from(exit::FAILURE);
        }
    };
    match runtime.block_on(cli.command.run()) {
        Ok(code) => ExitCode::from(code),
        Err(err) => {
            eprintln!("shardcut: {}", exit::one_line(&err));
            ExitCode::from(exit::code_for(&err))
        }
    }
}

fn init_logging(verbose: u8) {
    // rustls logs a refused certificate as an error of its own, before the
    // error it returns reaches the one line a failed command prints.
    let default = match verbose {
        0 => "warn,rustls=off",
        1 => "info,rustls=off",
        _ => "debug",
    };
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_target(false)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
}
