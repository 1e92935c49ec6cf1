//! `shard-agent`: the per-shard worker as a command of its own, to run on a
//! database host. `check` runs the preflight of one shard from that host.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use topology::Topology;

/// Per-shard worker of shardcut.
#[derive(Debug, Parser)]
#[command(name = "shard-agent", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Debug, Subcommand)]
enum Cmd {
    /// Check one shard of a topology from this host and print its readiness as JSON.
    Check {
        /// The cluster's topology file.
        #[arg(short, long = "topology", value_name = "FILE")]
        topology: PathBuf,
        /// The shard to check.
        #[arg(long)]
        shard: String,
    },
    /// Serve the agent API for the orchestrator (run on the database host).
    Serve {
        /// Address to listen on, e.g. 0.0.0.0:7070 (a private interface: the
        /// API carries shard passwords and has no TLS yet).
        #[arg(long, value_name = "ADDR")]
        listen: String,
        /// File holding the bearer token clients must present (at least 16 characters).
        #[arg(long, value_name = "FILE")]
        token_file: PathBuf,
    },
}

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(c) => c,
        Err(e) => {
            let code = if e.use_stderr() { 2 } else { 0 };
            drop(e.print());
            return ExitCode::from(code);
        }
    };
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("shard-agent: cannot start the async runtime: {e}");
            return ExitCode::from(1);
        }
    };
    match cli.command {
        Cmd::Check { topology, shard } => runtime.block_on(check(&topology, &shard)),
        Cmd::Serve { listen, token_file } => runtime.block_on(serve(&listen, &token_file)),
    }
}

async fn serve(listen: &str, token_file: &std::path::Path) -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let token = match std::fs::read_to_string(token_file) {
        Ok(t) => t.trim_end_matches(['\n', '\r']).to_string(),
        Err(e) => {
            eprintln!(
                "shard-agent: cannot read token file {}: {e}",
                token_file.display()
            );
            return ExitCode::from(2);
        }
    };
    if token.len() < 16 {
        eprintln!(
            "shard-agent: token in {} is shorter than 16 characters; use a long random token",
            token_file.display()
        );
        return ExitCode::from(2);
    }
    let result = shard_agent::serve::serve(listen, topology::Secret::new(token), |addr| {
        eprintln!(
            "shard-agent {} listening on {addr}",
            env!("CARGO_PKG_VERSION")
        );
    })
    .await;
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("shard-agent: cannot serve on {listen}: {e}");
            ExitCode::from(1)
        }
    }
}

async fn check(path: &std::path::Path, name: &str) -> ExitCode {
    let topology = match Topology::load(path) {
        Ok(t) => t,
        Err(e) => {
            eprintln!("shard-agent: {e}");
            return ExitCode::from(2);
        }
    };
    let Some(shard) = topology.shard(name) else {
        eprintln!("shard-agent: {}: no shard named `{name}`", path.display());
        return ExitCode::from(2);
    };
    match shard_agent::engine::driver(shard.engine)
        .preflight(shard, shard_agent::connect::DEFAULT_CONNECT_TIMEOUT)
        .await
    {
        Ok(report) => match serde_json::to_string_pretty(&report) {
            Ok(json) => {
                println!("{json}");
                ExitCode::from(if report.ready { 0 } else { 1 })
            }
            Err(e) => {
                eprintln!("shard-agent: cannot encode the report: {e}");
                ExitCode::from(1)
            }
        },
        Err(e) => {
            eprintln!("shard-agent: {e}");
            ExitCode::from(1)
        }
    }
}
