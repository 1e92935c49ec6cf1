//! Preflight of a whole cluster: every shard reachable and ready for
//! backup (checked in parallel, one shard's failure never hiding
//! another's), and room where the repository lives.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use serde::Serialize;
use shard_agent::preflight::{self, Depth, ShardReport};
use tokio::sync::Semaphore;
use tokio::task::JoinSet;
use topology::{RepositoryLocation, Topology};

use crate::exit;

/// Shards checked at once; a preflight is a few small queries per shard.
const MAX_CONCURRENT_CHECKS: usize = 16;

#[derive(Serialize)]
pub struct ShardOutcome {
    pub shard: String,
    pub reachable: bool,
    pub ready: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub report: Option<ShardReport>,
}

#[derive(Serialize)]
pub struct RepositoryStatus {
    pub path: String,
    pub exists: bool,
    pub free_bytes: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub problem: Option<String>,
}

#[derive(Serialize)]
pub struct CheckReport {
    pub cluster: String,
    /// The topology file, as given.
    pub topology: String,
    pub ready: bool,
    pub shards: Vec<ShardOutcome>,
    pub repository: RepositoryStatus,
}

/// Checks every shard and the repository; `file` is the topology's path
/// as the user gave it, for the report.
pub async fn check(
    topology: &Topology,
    file: &Path,
    timeout: Duration,
) -> anyhow::Result<CheckReport> {
    let shards = check_all(topology, timeout).await?;
    let repository = repository_status(topology);
    let ready = shards.iter().all(|s| s.ready) && repository.problem.is_none();
    Ok(CheckReport {
        cluster: topology.cluster.clone(),
        topology: file.display().to_string(),
        ready,
        shards,
        repository,
    })
}

/// Checks every shard in parallel; one shard's failure never hides another's.
async fn check_all(topology: &Topology, timeout: Duration) -> anyhow::Result<Vec<ShardOutcome>> {
    let limit = Arc::new(Semaphore::new(MAX_CONCURRENT_CHECKS));
    let mut tasks = JoinSet::new();
    for (i, shard) in topology.shards.iter().cloned().enumerate() {
        let permit = limit.clone().acquire_owned().await?;
        tasks.spawn(async move {
            let result = match crate::agent::driver(&shard) {
                Ok(driver) => driver.preflight(&shard, timeout, Depth::Report).await,
                Err(e) => Err(e),
            };
            let result = result.map(|mut report| {
                report.findings.extend(preflight::agent_finding(&shard));
                report
            });
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

/// Free space where a directory repository lives (or will be created); for
/// an object store, whether it answers a listing with these credentials.
fn repository_status(topology: &Topology) -> RepositoryStatus {
    let path = match &topology.repository.location {
        RepositoryLocation::Local(path) => path,
        RepositoryLocation::S3(location) => {
            let listed = super::open_repository(topology)
                .and_then(|repo| super::check_key(repo.as_ref()))
                .map_err(|e| exit::one_line(&anyhow::Error::new(e)));
            return RepositoryStatus {
                path: location.to_string(),
                exists: listed.is_ok(),
                free_bytes: None,
                problem: listed.err(),
            };
        }
    };
    let exists = path.exists();
    let probe = nearest_existing(path);
    let free = probe.as_deref().and_then(|p| fs4::available_space(p).ok());
    let problem = match (&probe, exists) {
        (None, _) => Some("no parent directory of it exists".to_string()),
        (Some(_), true) if !path.is_dir() => Some("exists but is not a directory".to_string()),
        // An existing repository must open with the topology's key.
        (Some(_), true) => super::open_repository(topology)
            .and_then(|repo| super::check_key(repo.as_ref()))
            .err()
            .map(|e| exit::one_line(&anyhow::Error::new(e))),
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
