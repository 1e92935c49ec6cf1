use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use serde::Serialize;
use shard_agent::preflight::{self, Finding, Level, ShardReport};
use tokio::sync::Semaphore;
use tokio::task::JoinSet;
use topology::{RepositoryLocation, Topology};

use crate::exit;
use crate::render;

/// Check that every shard is reachable and ready for backup, and say what to fix.
#[derive(Debug, clap::Args)]
pub struct Check {
    /// The cluster's topology file.
    #[arg(short, long = "topology", value_name = "FILE")]
    topology: PathBuf,
    /// Print one JSON document on stdout instead of the report.
    #[arg(long)]
    json: bool,
    /// How long to wait for each shard to accept a connection.
    #[arg(long, value_name = "DURATION", default_value = "5s", value_parser = parse_timeout)]
    connect_timeout: Duration,
}

fn parse_timeout(s: &str) -> Result<Duration, String> {
    topology::parse_duration(s)
}

/// Shards checked at once; a preflight is a few small queries per shard.
const MAX_CONCURRENT_CHECKS: usize = 16;

#[derive(Serialize)]
struct ShardOutcome {
    shard: String,
    reachable: bool,
    ready: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    error: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    report: Option<ShardReport>,
}

#[derive(Serialize)]
struct RepositoryStatus {
    path: String,
    exists: bool,
    free_bytes: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    problem: Option<String>,
}

#[derive(Serialize)]
struct CheckReport {
    cluster: String,
    topology: String,
    ready: bool,
    shards: Vec<ShardOutcome>,
    repository: RepositoryStatus,
}

impl Check {
    pub async fn run(self) -> anyhow::Result<u8> {
        let topology = Topology::load(&self.topology)?;
        let shards = check_all(&topology, self.connect_timeout).await?;
        let repository = repository_status(&topology.repository);
        let ready = shards.iter().all(|s| s.ready) && repository.problem.is_none();
        let report = CheckReport {
            cluster: topology.cluster.clone(),
            topology: self.topology.display().to_string(),
            ready,
            shards,
            repository,
        };
        if self.json {
            crate::exit::emit(&format!("{}\n", serde_json::to_string_pretty(&report)?))?;
        } else {
            crate::exit::emit(&human(&report))?;
        }
        Ok(if ready { exit::SUCCESS } else { exit::FAILURE })
    }
}

/// Checks every shard in parallel; one shard's failure never hides another's.
async fn check_all(topology: &Topology, timeout: Duration) -> anyhow::Result<Vec<ShardOutcome>> {
    let limit = Arc::new(Semaphore::new(MAX_CONCURRENT_CHECKS));
    let mut tasks = JoinSet::new();
    for (i, shard) in topology.shards.iter().cloned().enumerate() {
        let permit = limit.clone().acquire_owned().await?;
        tasks.spawn(async move {
            let result = preflight::check(&shard, timeout).await;
            drop(permit);
            (i, shard.name, result)
        });
    }
    let mut outcomes: Vec<Option<ShardOutcome>> =
        (0..topology.shards.len()).map(|_| None).collect();
    while let Some(joined) = tasks.join_next().await {
        let (i, shard, result) = joined.context("a preflight task panicked")?;
        outcomes[i] = Some(match result {
            Ok(report) => ShardOutcome {
                shard,
                reachable: true,
                ready: report.ready,
                error: None,
                report: Some(report),
            },
            Err(e) => ShardOutcome {
                shard,
                reachable: false,
                ready: false,
                error: Some(exit::one_line(&anyhow::Error::new(e))),
                report: None,
            },
        });
    }
    Ok(outcomes.into_iter().flatten().collect())
}

/// Free space where the repository lives (or will be created).
fn repository_status(location: &RepositoryLocation) -> RepositoryStatus {
    let RepositoryLocation::Local(path) = location;
    let exists = path.exists();
    let probe = nearest_existing(path);
    let free = probe.as_deref().and_then(|p| fs4::available_space(p).ok());
    let problem = match (&probe, exists) {
        (None, _) => Some("no parent directory of it exists".to_string()),
        (Some(_), true) if !path.is_dir() => Some("exists but is not a directory".to_string()),
        _ => None,
    };
    RepositoryStatus {
        path: path.display().to_string(),
        exists,
        free_bytes: free,
        problem,
    }
}

fn nearest_existing(path: &Path) -> Option<PathBuf> {
    path.ancestors().find(|p| p.exists()).map(Path::to_path_buf)
}

fn human(r: &CheckReport) -> String {
    let mut out = format!(
        "cluster {}: {} shard(s), topology {}\n",
        r.cluster,
        r.shards.len(),
        r.topology
    );
    for s in &r.shards {
        out.push('\n');
        match (&s.report, &s.error) {
            (Some(rep), _) => shard_section(&mut out, rep),
            (None, Some(err)) => {
                out.push_str(&format!("{}: UNREACHABLE\n    {err}\n", s.shard));
                out.push_str("    fix: start the server, or correct this shard's url and password in the topology\n");
            }
            (None, None) => {}
        }
    }
    let repo = &r.repository;
    out.push_str(&format!("\nrepository {}: ", repo.path));
    match repo.free_bytes {
        Some(n) => out.push_str(&format!("{} free", render::bytes(n))),
        None => out.push_str("free space unknown"),
    }
    if !repo.exists {
        out.push_str(" (does not exist yet; backup will create it)");
    }
    if let Some(p) = &repo.problem {
        out.push_str(&format!("\n    FAIL {p}"));
    }
    out.push('\n');
    let not_ready: Vec<&str> = r
        .shards
        .iter()
        .filter(|s| !s.ready)
        .map(|s| s.shard.as_str())
        .collect();
    let ready = r.shards.len() - not_ready.len();
    out.push_str(&format!("\n{ready} of {} shard(s) ready", r.shards.len()));
    if !not_ready.is_empty() {
        out.push_str(&format!("; not ready: {}", not_ready.join(", ")));
    }
    out.push('\n');
    out
}

fn shard_section(out: &mut String, rep: &ShardReport) {
    out.push_str(&format!(
        "{}: {} at {}: {}\n",
        rep.shard,
        rep.server,
        rep.endpoint,
        if rep.ready { "READY" } else { "NOT READY" }
    ));
    for f in &rep.findings {
        finding_line(out, f);
    }
    let rows: u64 = rep.tables.iter().filter_map(|t| t.rows_estimate).sum();
    let bytes: u64 = rep.tables.iter().map(|t| t.bytes).sum();
    let mut dbs: Vec<&str> = rep.tables.iter().map(|t| t.database.as_str()).collect();
    dbs.dedup();
    out.push_str(&format!(
        "    selected: {} table(s) in {} database(s), ~{} rows, {}\n",
        rep.tables.len(),
        dbs.len(),
        render::count(rows),
        render::bytes(bytes)
    ));
    for t in &rep.tables {
        let name = match &t.schema {
            Some(s) => format!("{}.{s}.{}", t.database, t.table),
            None => format!("{}.{}", t.database, t.table),
        };
        let rows = t
            .rows_estimate
            .map(render::count)
            .unwrap_or_else(|| "?".to_string());
        out.push_str(&format!(
            "      {name:<40} ~{rows:>12} rows {:>10}\n",
            render::bytes(t.bytes)
        ));
    }
}

fn finding_line(out: &mut String, f: &Finding) {
    let tag = match f.level {
        Level::Ok => "ok  ",
        Level::Warn => "WARN",
        Level::Fail => "FAIL",
    };
    out.push_str(&format!("    {tag} {:<24} {}\n", f.item, f.value));
    if let Some(fix) = &f.fix {
        out.push_str(&format!("         fix: {fix}\n"));
    }
}
