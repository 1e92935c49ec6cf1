//! Verification of a backup: in the repository with no database (every
//! object present, of the right checksum, readable, adding up to the
//! manifest's row counts and content hashes), or on the servers it was
//! restored into (read back and scored).

use std::collections::BTreeMap;
use std::path::Path;

use shard_agent::manifest::{keys, Manifest};
use shard_agent::verify::integrity::{check_backup, Damage, Integrity};
use topology::{Shard, Topology};

use super::steps::rpo_seconds;
use super::{find_backup, open_repository};
use crate::exit::InvalidInput;
use crate::quality::{score, Quality, TableResult};
use crate::readback::read_back;

/// Checks backup `id` (or `latest`) in the repository; an incremental
/// backup together with its full base, since it is only as good as that.
pub async fn verify_repository(
    topology: &Topology,
    id: &str,
) -> anyhow::Result<(Manifest, Integrity)> {
    let repo = open_repository(topology)?;
    let (cluster, id) = (topology.cluster.clone(), id.to_string());
    tokio::task::spawn_blocking(move || {
        let m = find_backup(repo.as_ref(), &cluster, &id)?;
        let mut report = check_backup(repo.as_ref(), &m);
        if let Some(chain) = &m.chain {
            let base = find_backup(repo.as_ref(), &cluster, &chain.base)?;
            let mut more = check_backup(repo.as_ref(), &base);
            report.tables.append(&mut more.tables);
            report.damage.append(&mut more.damage);
            // Its restore finds the mark it leads to by name.
            if let Err(e) = crate::pitr::find_mark(repo.as_ref(), &cluster, &chain.mark) {
                report.damage.push(Damage {
                    shard: String::new(),
                    table: None,
                    key: keys::mark(&chain.mark),
                    problem: format!(
                        "the mark this incremental backup restores to is unreadable: {}",
                        crate::exit::one_line(&e)
                    ),
                });
            }
        }
        Ok::<_, anyhow::Error>((m, report))
    })
    .await?
}

/// A backup's tables read back from the servers they were restored into.
pub struct TargetCheck {
    pub m: Manifest,
    pub tables: Vec<TableResult>,
    pub q: Quality,
    pub per_shard: BTreeMap<String, Quality>,
    pub rpo: f64,
}

/// Reads back every table of backup `id` from the same-named shards of the
/// `target` topology and scores them against the manifest.
pub async fn verify_target(
    topology: &Topology,
    id: &str,
    target: &Path,
) -> anyhow::Result<TargetCheck> {
    let repo = open_repository(topology)?;
    let (cluster, id) = (topology.cluster.clone(), id.to_string());
    let m =
        tokio::task::spawn_blocking(move || find_backup(repo.as_ref(), &cluster, &id)).await??;
    let target = Topology::load(target)?;
    let shards: Vec<String> = m.shards.keys().cloned().collect();
    let missing: Vec<&String> = shards
        .iter()
        .filter(|s| target.shard(s).is_none())
        .collect();
    if !missing.is_empty() {
        return Err(InvalidInput(format!(
            "target topology has no shard {}",
            missing
                .iter()
                .map(|s| format!("`{s}`"))
                .collect::<Vec<_>>()
                .join(", ")
        ))
        .into());
    }
    let pairs: Vec<(String, Shard)> = shards
        .iter()
        .filter_map(|s| target.shard(s).map(|t| (s.clone(), t.clone())))
        .collect();
    let (tables, available) = read_back(&m, &pairs).await;
    let (q, per_shard) = score(&tables, &shards, &available);
    let rpo = rpo_seconds(&m);
    Ok(TargetCheck {
        m,
        tables,
        q,
        per_shard,
        rpo,
    })
}
