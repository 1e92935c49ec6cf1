//! `shard-agent`: the per-shard worker as a command of its own, to run on a
//! database host. `check` runs the preflight of one shard from that host.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use shard_agent::serve::http::{read_token, ServerTls};
use shard_agent::serve::{AllowedRepositories, ServeConfig};
use topology::{Encryption, RepositoryKey, Secret, Topology};

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
    Serve(Box<ServeArgs>),
}

#[derive(Debug, clap::Args)]
struct ServeArgs {
    /// Address to listen on, e.g. 0.0.0.0:7070.
    #[arg(long, value_name = "ADDR")]
    listen: String,
    /// File holding the bearer token clients must present (at least 16 characters).
    #[arg(long, value_name = "FILE")]
    token_file: PathBuf,
    #[command(flatten)]
    tls: ServerTls,
    /// Clients must present a certificate this CA signed (mutual TLS).
    #[arg(long, value_name = "FILE", requires = "tls_cert")]
    client_ca: Option<PathBuf>,
    /// A directory dumps may write below, or a bucket and prefix
    /// (`s3://BUCKET/PREFIX`) (repeatable; at least one).
    #[arg(long, value_name = "PATH|S3-URL", required = true)]
    allow_repository: Vec<String>,
    /// The S3-compatible endpoint for buckets (default: AWS_ENDPOINT_URL,
    /// else AWS itself).
    #[arg(long, value_name = "URL")]
    s3_endpoint: Option<String>,
    /// The region for buckets (default: AWS_REGION, else us-east-1).
    #[arg(long, value_name = "REGION")]
    s3_region: Option<String>,
    /// File holding the access key id for buckets (default: AWS_ACCESS_KEY_ID).
    #[arg(long, value_name = "FILE")]
    s3_access_key_file: Option<PathBuf>,
    /// File holding the secret access key (default: AWS_SECRET_ACCESS_KEY).
    #[arg(long, value_name = "FILE")]
    s3_secret_key_file: Option<PathBuf>,
    /// PEM file of the CA an https endpoint's certificate must chain to
    /// (default: the system's roots).
    #[arg(long, value_name = "FILE")]
    s3_ca_file: Option<PathBuf>,
    /// The key of an encrypted repository (`shardcut keygen`); repeat for
    /// older keys that still open older objects (the first one seals).
    #[arg(long, value_name = "FILE")]
    repository_key_file: Vec<PathBuf>,
    /// A database host sessions may connect to, as the topology names it
    /// (repeatable; default: 127.0.0.1, ::1 and localhost).
    #[arg(long, value_name = "HOST")]
    allow_host: Vec<String>,
    /// Connections served at once; more are closed.
    #[arg(long, value_name = "N", default_value_t = 64)]
    max_connections: usize,
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
        Cmd::Serve(args) => runtime.block_on(serve(*args)),
    }
}

/// What `serve` needs beside the token, from its flags; a message on error.
fn serve_config(args: &ServeArgs, token: Secret) -> Result<ServeConfig, String> {
    let tls = args.tls.server_config(args.client_ca.as_deref())?;
    let repositories = allowed_repositories(args)?;
    let allowed_hosts = if args.allow_host.is_empty() {
        vec!["127.0.0.1".into(), "::1".into(), "localhost".into()]
    } else {
        args.allow_host.clone()
    };
    Ok(ServeConfig {
        token,
        tls,
        repositories,
        allowed_hosts,
        max_connections: args.max_connections,
    })
}

/// The repositories requests may name, and what reaches and seals them.
fn allowed_repositories(args: &ServeArgs) -> Result<AllowedRepositories, String> {
    let env = |k: &str| std::env::var(k).ok().filter(|v| !v.is_empty());
    let mut out = AllowedRepositories::default();
    for entry in &args.allow_repository {
        if let Some(rest) = entry.strip_prefix("s3://") {
            let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
            if bucket.is_empty() {
                return Err(format!("--allow-repository {entry}: no bucket"));
            }
            out.buckets
                .push((bucket.to_string(), prefix.trim_matches('/').to_string()));
        } else {
            let canonical = std::fs::canonicalize(entry)
                .map_err(|e| format!("--allow-repository {entry}: {e}"))?;
            out.directories.push(canonical);
        }
    }
    let secret =
        |file: &Option<PathBuf>, var: &str, flag: &str| -> Result<Option<Secret>, String> {
            match file {
                Some(p) => std::fs::read_to_string(p)
                    .map(|t| Some(Secret::new(t.trim())))
                    .map_err(|e| format!("{flag} {}: {e}", p.display())),
                None => Ok(env(var).map(Secret::new)),
            }
        };
    if !out.buckets.is_empty() {
        let access = secret(
            &args.s3_access_key_file,
            "AWS_ACCESS_KEY_ID",
            "--s3-access-key-file",
        )?;
        let secret_key = secret(
            &args.s3_secret_key_file,
            "AWS_SECRET_ACCESS_KEY",
            "--s3-secret-key-file",
        )?;
        let (Some(access_key), Some(secret_key)) = (access, secret_key) else {
            return Err("--allow-repository names a bucket: give --s3-access-key-file and --s3-secret-key-file, or set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY".into());
        };
        let ca_pem = match &args.s3_ca_file {
            None => None,
            Some(p) => match std::fs::read_to_string(p) {
                Ok(pem) if pem.contains("-----BEGIN ") => Some(pem),
                Ok(_) => {
                    return Err(format!(
                        "--s3-ca-file {}: holds no PEM certificate",
                        p.display()
                    ))
                }
                Err(e) => return Err(format!("--s3-ca-file {}: {e}", p.display())),
            },
        };
        out.store = Some(topology::S3Location {
            bucket: String::new(),
            prefix: String::new(),
            endpoint: args.s3_endpoint.clone().or_else(|| env("AWS_ENDPOINT_URL")),
            region: args
                .s3_region
                .clone()
                .or_else(|| env("AWS_REGION"))
                .unwrap_or_else(|| "us-east-1".to_string()),
            access_key,
            secret_key,
            session_token: env("AWS_SESSION_TOKEN").map(Secret::new),
            ca_pem,
        });
    }
    let mut keys = Vec::new();
    for p in &args.repository_key_file {
        let text = std::fs::read_to_string(p)
            .map_err(|e| format!("--repository-key-file {}: {e}", p.display()))?;
        keys.push(RepositoryKey::parse(&text).ok_or_else(|| {
            format!(
                "--repository-key-file {}: not a repository key (shardcut keygen writes one)",
                p.display()
            )
        })?);
    }
    let mut keys = keys.into_iter();
    out.encryption = keys.next().map(|key| Encryption {
        key,
        old_keys: keys.collect(),
    });
    Ok(out)
}

async fn serve(args: ServeArgs) -> ExitCode {
    let (listen, token_file) = (args.listen.as_str(), args.token_file.as_path());
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                // rustls's own log of a refused certificate repeats the
                // error a request answers with.
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info,rustls=off")),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let token = match read_token(token_file) {
        Ok(t) => t,
        Err(e) => {
            eprintln!("shard-agent: {e}");
            return ExitCode::from(2);
        }
    };
    let config = match serve_config(&args, token) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("shard-agent: {e}");
            return ExitCode::from(2);
        }
    };
    let scheme = if config.tls.is_some() {
        "https"
    } else {
        "http"
    };
    if config.tls.is_none() {
        tracing::warn!(
            "serving plain HTTP (--insecure): shard passwords cross the network in clear"
        );
    }
    let result = shard_agent::serve::serve(listen, config, |addr| {
        eprintln!(
            "shard-agent {} listening on {scheme}://{addr}",
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
        .preflight(
            shard,
            shard_agent::connect::DEFAULT_CONNECT_TIMEOUT,
            shard_agent::preflight::Depth::Report,
        )
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
