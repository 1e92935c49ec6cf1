//! The steps several flows share: opening every shard's session, dumping
//! every shard at once, and committing or discarding what a backup stored.

use std::collections::BTreeMap;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use shard_agent::cut::CutOptions;
use shard_agent::dump::{DumpOptions, Progress};
use shard_agent::manifest::{
    keys, BackupKind, BackupStatus, Chain, Cut, Manifest, ShardManifest, MANIFEST_FORMAT,
};
use shard_agent::repo::Repository;
use shard_agent::AgentError;
use tokio::task::JoinSet;
use topology::{Compression, Topology};

use super::Observer;
use crate::agent::Agent;
use crate::exit;

/// A backup's ID sorts in the order backups were taken: `latest` and
/// `expire --keep-last` take the newest by ID. Milliseconds keep that true
/// for backups taken within one second (the repository lock runs them one
/// after another, and each takes longer than a millisecond); the salt keeps
/// IDs distinct across repositories that are merged or copied.
pub fn new_backup_id() -> String {
    let now = chrono::Utc::now();
    let salt = twox_hash::XxHash3_64::oneshot(
        format!(
            "{}-{}",
            std::process::id(),
            now.timestamp_nanos_opt().unwrap_or(0)
        )
        .as_bytes(),
    );
    backup_id(now, salt as u16)
}

fn backup_id(at: chrono::DateTime<chrono::Utc>, salt: u16) -> String {
    format!("{}-{salt:04x}", at.format("%Y%m%dT%H%M%S%.3fZ"))
}

/// The cut options of `topology` with this connect timeout.
pub fn cut_options(topology: &Topology, connect_timeout: Duration) -> CutOptions {
    CutOptions {
        write_block_timeout: topology.defaults.write_block_timeout,
        write_block_lease: topology.defaults.write_block_lease,
        connect_timeout,
    }
}

/// What every shard's dump writes (or, `digest_only`, only hashes).
pub struct DumpPlan<'a> {
    pub id: &'a str,
    pub compression: Compression,
    pub chunk_rows: u64,
    pub digest_only: bool,
}

/// Dumps every shard at once from its snapshot (or only hashes it, with
/// `digest_only`); on any failure cancels the others and returns the
/// causes on one line.
pub async fn dump_all(
    sessions: Vec<Agent>,
    repo: &Arc<dyn Repository>,
    plan: &DumpPlan<'_>,
    observer: &dyn Observer,
) -> Result<BTreeMap<String, ShardManifest>, String> {
    let cancel = Arc::new(AtomicBool::new(false));
    let mut progress_list = Vec::new();
    let mut tasks = JoinSet::new();
    for session in sessions {
        let name = session.shard().to_string();
        let progress = Arc::new(Progress::default());
        progress_list.push((name.clone(), progress.clone()));
        let opts = DumpOptions {
            repo: repo.clone(),
            backup_id: plan.id.to_string(),
            compression: plan.compression,
            chunk_rows: plan.chunk_rows,
            digest_only: plan.digest_only,
            progress,
            cancel: cancel.clone(),
            bundles: None,
        };
        tasks.spawn(async move { (name, session.dump(opts).await) });
    }
    let display = observer.dump_started(progress_list);
    let mut shards = BTreeMap::new();
    let mut errors = Vec::new();
    while let Some(joined) = tasks.join_next().await {
        match joined {
            Ok((name, Ok(m))) => {
                shards.insert(name, m);
            }
            Ok((_, Err(e))) => {
                cancel.store(true, std::sync::atomic::Ordering::Relaxed);
                errors.push(e);
            }
            Err(e) => {
                cancel.store(true, std::sync::atomic::Ordering::Relaxed);
                errors.push(AgentError::Tool {
                    shard: "?".into(),
                    what: format!("a shard task panicked: {e}"),
                });
            }
        }
    }
    drop(display);
    // A shard cancelled because another failed is noise next to the cause.
    if !errors.is_empty() {
        let causes: Vec<String> = errors
            .into_iter()
            .filter(|e| !matches!(e, AgentError::Cancelled { .. }))
            .map(|e| exit::one_line(&anyhow::Error::new(e)))
            .collect();
        return Err(causes.join("; "));
    }
    Ok(shards)
}

/// What a backup holds: its cut, every shard's part, and for an
/// incremental backup its place in its chain.
pub struct Contents {
    pub cut: Cut,
    pub shards: BTreeMap<String, ShardManifest>,
    pub chain: Option<Chain>,
}

/// The manifest of a backup of `topology` that completed just now; an
/// incremental one if it has a chain.
pub fn complete_manifest(
    topology: &Topology,
    id: &str,
    started_at: String,
    contents: Contents,
) -> Manifest {
    Manifest {
        format: MANIFEST_FORMAT,
        backup_id: id.to_string(),
        cluster: topology.cluster.clone(),
        topology_digest: topology.digest(),
        tool_version: env!("CARGO_PKG_VERSION").to_string(),
        status: BackupStatus::Complete,
        started_at,
        finished_at: chrono::Utc::now().to_rfc3339(),
        cut: contents.cut,
        shards: contents.shards,
        kind: if contents.chain.is_some() {
            BackupKind::Incremental
        } else {
            BackupKind::Full
        },
        chain: contents.chain,
    }
}

/// Writes a backup's manifest, the object whose presence makes it a backup:
/// after every object it names is durable under its name, and durable
/// itself before the command reports success. Compact JSON: indented, a
/// 10,000-table manifest was twice the bytes to write and sync (9.7 MB
/// against 4.8 MB); `shardcut show --json` prints it indented.
pub async fn store_manifest(repo: &Arc<dyn Repository>, m: &Manifest) -> anyhow::Result<()> {
    let data = serde_json::to_vec(m)?;
    let key = keys::manifest(&m.backup_id);
    let objects: Vec<String> = m.object_keys().into_iter().map(String::from).collect();
    let r = repo.clone();
    tokio::task::spawn_blocking(move || {
        let names: Vec<&str> = objects.iter().map(String::as_str).collect();
        r.sync_names(&names)?;
        r.put(&key, &data)?;
        r.sync_names(&[&key])
    })
    .await
    .context("writing the manifest")??;
    Ok(())
}

/// Prepares every shard at once; reports every shard that failed.
pub async fn prepare_all(topology: &Topology, opts: &CutOptions) -> anyhow::Result<Vec<Agent>> {
    let mut tasks = JoinSet::new();
    for (i, shard) in topology.shards.iter().cloned().enumerate() {
        let opts = opts.clone();
        tasks.spawn(async move { (i, Agent::prepare(&shard, &opts).await) });
    }
    let mut sessions: Vec<Option<Agent>> = (0..topology.shards.len()).map(|_| None).collect();
    let mut errors = Vec::new();
    while let Some(joined) = tasks.join_next().await {
        match joined {
            Ok((i, Ok(s))) => sessions[i] = Some(s),
            Ok((_, Err(e))) => errors.push(exit::one_line(&anyhow::Error::new(e))),
            Err(e) => errors.push(format!("a prepare task panicked: {e}")),
        }
    }
    if !errors.is_empty() {
        errors.sort();
        anyhow::bail!("{}", errors.join("; "));
    }
    Ok(sessions.into_iter().flatten().collect())
}

/// Removes what a failed backup stored. Best effort: without a manifest
/// the objects are not a backup either way.
pub async fn discard(repo: Arc<dyn Repository>, id: &str) {
    let prefix = keys::backup_prefix(id);
    let manifest = keys::manifest(id);
    let result = tokio::task::spawn_blocking(move || {
        // The manifest first, if the failure came after it was stored (its
        // last sync failed, say): a manifest left naming deleted objects
        // would list the failed backup as complete.
        repo.delete(&manifest)?;
        repo.sync_names(&[&manifest])?;
        repo.delete_folder(&prefix)
    })
    .await;
    if !matches!(result, Ok(Ok(()))) {
        tracing::warn!("could not remove all objects of the failed backup {id}");
    }
}

/// Seconds since the backup's cut.
pub fn rpo_seconds(m: &Manifest) -> f64 {
    chrono::DateTime::parse_from_rfc3339(&m.cut.taken_at)
        .map(|t| {
            (chrono::Utc::now() - t.with_timezone(&chrono::Utc)).num_milliseconds() as f64 / 1000.0
        })
        .unwrap_or(0.0)
}

#[cfg(test)]
mod tests {
    use super::backup_id;

    #[test]
    fn ids_sort_by_time_whatever_their_salt() {
        let t = chrono::DateTime::parse_from_rfc3339("2026-11-24T04:44:38.120Z")
            .map(|t| t.to_utc())
            .expect("a valid time");
        let first = backup_id(t, 0xffff);
        let next = backup_id(t + chrono::Duration::milliseconds(1), 0x0000);
        assert_eq!(first, "20261124T044438.120Z-ffff");
        assert!(first < next, "{first} !< {next}");
        let next_second = backup_id(t + chrono::Duration::milliseconds(880), 0);
        assert!(next < next_second, "{next} !< {next_second}");
    }
}
