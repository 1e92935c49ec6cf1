use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use serde_json::json;
use shard_agent::manifest::{keys, Manifest, MANIFEST_FORMAT};
use shard_agent::repo::Repository;
use shard_agent::session::{CutOptions, DumpOptions, Progress};
use shard_agent::AgentError;
use tokio::task::JoinSet;
use topology::Topology;

use super::open_repository;
use crate::agent::Agent;
use crate::cut::{global_cut, CutTestHooks};
use crate::lock::RepoLock;
use crate::{exit, progress, render};

/// Take a consistent backup of every shard of the cluster.
#[derive(Debug, clap::Args)]
pub struct Backup {
    /// The cluster's topology file.
    #[arg(short, long = "topology", value_name = "FILE")]
    topology: PathBuf,
    /// Print one JSON document on stdout (logs go to stderr).
    #[arg(long)]
    json: bool,
    /// Record a mark plus the changes captured since the previous backup
    /// instead of dumping everything (needs `shardcut capture` running
    /// since the chain's full backup).
    #[arg(long)]
    incremental: bool,
    /// Rows per primary-key range; a table holding more than a worker's share
    /// of its shard (1/parallelism of its rows) is split and dumped in parallel.
    #[arg(long, default_value_t = 250_000, value_name = "ROWS")]
    chunk_rows: u64,
    /// How long to wait for each shard to accept a connection.
    #[arg(long, default_value = "5s", value_parser = topology::parse_duration, value_name = "DURATION")]
    connect_timeout: Duration,
    /// Test only: hold the write block this long after marking.
    #[arg(long, hide = true, value_parser = topology::parse_duration)]
    test_hold_block: Option<Duration>,
    /// Test only: take per-shard snapshots one after another without a write block.
    #[arg(long, hide = true)]
    test_no_write_block: bool,
    /// Test only: wait this long between the cut and the dump.
    #[arg(long, hide = true, value_parser = topology::parse_duration)]
    test_pause_before_dump: Option<Duration>,
}

/// A backup's ID sorts in the order backups were taken: `latest` and
/// `expire --keep-last` take the newest by ID. Milliseconds keep that true
/// for backups taken within one second (the repository lock runs them one
/// after another, and each takes longer than a millisecond); the salt keeps
/// IDs distinct across repositories that are merged or copied.
fn new_backup_id() -> String {
    let now = chrono::Utc::now();
    let salt = xxhash_rust::xxh3::xxh3_64(
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

impl Backup {
    pub async fn run(self) -> anyhow::Result<u8> {
        let topology = Topology::load(&self.topology)?;
        let repo = open_repository(&topology)?;
        let lock = RepoLock::acquire(repo.clone(), &topology.cluster, "backup")?;
        let id = new_backup_id();
        let result = if self.incremental {
            super::incremental::take(&topology, &repo, &id, self.connect_timeout).await
        } else {
            self.take(&topology, repo.clone(), &id).await
        };
        if result.is_err() {
            discard(repo.clone(), &id).await;
        }
        lock.release();
        let manifest = result?;
        if self.json {
            crate::exit::emit(&format!(
                "{}\n",
                serde_json::to_string_pretty(&summary_json(&manifest))?
            ))?;
        } else {
            crate::exit::emit(&summary_text(&manifest))?;
        }
        Ok(exit::SUCCESS)
    }

    async fn take(
        &self,
        topology: &Topology,
        repo: Arc<dyn Repository>,
        id: &str,
    ) -> anyhow::Result<Manifest> {
        let started_at = chrono::Utc::now().to_rfc3339();
        let cut_opts = CutOptions {
            write_block_timeout: topology.defaults.write_block_timeout,
            write_block_lease: topology.defaults.write_block_lease,
            connect_timeout: self.connect_timeout,
        };
        tracing::info!("backup {id}: preparing {} shards", topology.shards.len());
        let mut sessions = prepare_all(topology, &cut_opts).await?;
        let hooks = CutTestHooks {
            hold_block: self.test_hold_block,
            no_write_block: self.test_no_write_block,
        };
        let cut = global_cut(&mut sessions, &hooks).await?;
        tracing::info!(
            "backup {id}: cut taken, commits blocked for {} ms",
            cut.write_block_ms
        );
        if let Some(pause) = self.test_pause_before_dump {
            eprintln!(
                "backup: cut taken; pausing {} ms before the dump (test hook)",
                pause.as_millis()
            );
            tokio::time::sleep(pause).await;
        }

        let shards = dump_all(
            sessions,
            &repo,
            id,
            topology.defaults.compression,
            self.chunk_rows,
            false,
        )
        .await
        .map_err(|causes| anyhow::anyhow!("backup {id} failed and was discarded: {causes}"))?;
        let manifest = Manifest {
            format: MANIFEST_FORMAT,
            backup_id: id.to_string(),
            cluster: topology.cluster.clone(),
            topology_digest: topology.digest(),
            tool_version: env!("CARGO_PKG_VERSION").to_string(),
            status: "complete".into(),
            started_at,
            finished_at: chrono::Utc::now().to_rfc3339(),
            cut,
            shards,
            kind: "full".into(),
            chain: None,
        };
        // The manifest goes last: only now does the backup exist.
        store_manifest(&repo, &manifest).await?;
        Ok(manifest)
    }
}

/// Dumps every shard at once from its snapshot (or only hashes it, with
/// `digest_only`); on any failure cancels the others and returns the
/// causes on one line.
pub async fn dump_all(
    sessions: Vec<Agent>,
    repo: &Arc<dyn Repository>,
    id: &str,
    compression: topology::Compression,
    chunk_rows: u64,
    digest_only: bool,
) -> Result<BTreeMap<String, shard_agent::manifest::ShardManifest>, String> {
    let cancel = Arc::new(AtomicBool::new(false));
    let mut progress_list = Vec::new();
    let mut tasks = JoinSet::new();
    for session in sessions {
        let name = session.shard().to_string();
        let progress = Arc::new(Progress::default());
        progress_list.push((name.clone(), progress.clone()));
        let opts = DumpOptions {
            repo: repo.clone(),
            backup_id: id.to_string(),
            compression,
            chunk_rows,
            digest_only,
            progress,
            cancel: cancel.clone(),
        };
        tasks.spawn(async move { (name, session.dump(opts).await) });
    }
    let display = progress::Display::start(progress_list);
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

/// Writes a backup's manifest, the object whose presence makes it a backup:
/// after every object it names is durable under its name, and durable
/// itself before the command reports success.
pub async fn store_manifest(repo: &Arc<dyn Repository>, m: &Manifest) -> anyhow::Result<()> {
    let data = serde_json::to_vec_pretty(m)?;
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
async fn discard(repo: Arc<dyn Repository>, id: &str) {
    let prefix = keys::backup_prefix(id);
    let result = tokio::task::spawn_blocking(move || {
        for key in repo.list(&prefix)? {
            repo.delete(&key)?;
        }
        Ok::<(), shard_agent::repo::RepoError>(())
    })
    .await;
    if !matches!(result, Ok(Ok(()))) {
        tracing::warn!("could not remove all objects of the failed backup {id}");
    }
}

pub fn summary_json(m: &Manifest) -> serde_json::Value {
    let shards: serde_json::Map<String, serde_json::Value> = m
        .shards
        .iter()
        .map(|(name, s)| {
            (
                name.clone(),
                json!({
                    "engine": s.engine,
                    "server": s.server,
                    "tables": s.tables,
                    "rows": s.rows,
                    "bytes_raw": s.bytes_raw,
                    "bytes_stored": s.bytes_stored,
                    "duration_ms": s.duration_ms,
                }),
            )
        })
        .collect();
    json!({
        "backup_id": m.backup_id,
        "kind": m.kind,
        "chain": m.chain.as_ref().map(|c| json!({
            "parent": c.parent,
            "base": c.base,
            "mark": c.mark,
            "segments": c.segments.len(),
            "transactions": c.segments.iter().map(|s| s.transactions).sum::<u64>(),
        })),
        "cluster": m.cluster,
        "status": m.status,
        "started_at": m.started_at,
        "finished_at": m.finished_at,
        "cut": m.cut,
        "shards": shards,
    })
}

pub fn summary_text(m: &Manifest) -> String {
    let mut out = format!(
        "backup {} of cluster {}: {}\n  cut: commits blocked {} ms cluster-wide (attempt {}), at {}\n",
        m.backup_id, m.cluster, m.status, m.cut.write_block_ms, m.cut.attempts, m.cut.taken_at
    );
    if let Some(c) = &m.chain {
        out.push_str(&format!(
            "  incremental: full backup {} + {} captured segment(s) ({} transactions) to mark {}; parent {}\n",
            c.base,
            c.segments.len(),
            c.segments.iter().map(|s| s.transactions).sum::<u64>(),
            c.mark,
            c.parent
        ));
    }
    out.push_str(&format!(
        "  {:<12} {:>7} {:>14} {:>11} {:>11} {:>9} {:>10}  position\n",
        "shard", "tables", "rows", "raw", "stored", "time", "block"
    ));
    for (name, s) in &m.shards {
        let (pos, block) = m
            .cut
            .shards
            .get(name)
            .map(|c| (c.position.to_string(), c.write_block_ms))
            .unwrap_or_default();
        out.push_str(&format!(
            "  {name:<12} {:>7} {:>14} {:>11} {:>11} {:>7.1} s {:>7} ms  {pos}\n",
            s.tables,
            render::count(s.rows),
            render::bytes(s.bytes_raw),
            render::bytes(s.bytes_stored),
            s.duration_ms as f64 / 1000.0,
            block
        ));
    }
    out
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
