//! A consistent backup of every shard: prepare every shard, take the
//! global cut, dump every shard from its snapshot in parallel, and write
//! the manifest last. A backup that fails is discarded (its objects
//! removed); without its manifest it never existed.

use std::sync::Arc;
use std::time::Duration;

use shard_agent::manifest::Manifest;
use shard_agent::repo::Repository;
use topology::Topology;

use super::steps::{
    complete_manifest, cut_options, discard, dump_all, new_backup_id, prepare_all, store_manifest,
    Contents, DumpPlan,
};
use super::{open_repository, Observer};
use crate::cut::{global_cut, CutTestHooks};
use crate::lock::RepoLock;

/// How to take a backup.
#[derive(Debug, Clone)]
pub struct BackupOptions {
    /// A mark plus the changes captured since the chain's full backup,
    /// instead of a dump of everything.
    pub incremental: bool,
    /// Rows per primary-key range of a split table.
    pub chunk_rows: u64,
    /// How long to wait for each shard to accept a connection.
    pub connect_timeout: Duration,
    /// Fault-injection hooks of the cut (tests only).
    pub hooks: CutTestHooks,
    /// Test only: wait this long between the cut and the dump.
    pub pause_before_dump: Option<Duration>,
    /// Test only: wait this long between reading the catalogs and the cut.
    pub pause_before_cut: Option<Duration>,
    /// The new backup's ID, when the caller has chosen it (a service
    /// records it before the backup starts, to clean up after a crash);
    /// else a new one.
    pub id: Option<String>,
}

impl Default for BackupOptions {
    fn default() -> Self {
        BackupOptions {
            incremental: false,
            chunk_rows: 250_000,
            connect_timeout: Duration::from_secs(5),
            hooks: CutTestHooks::default(),
            pause_before_dump: None,
            pause_before_cut: None,
            id: None,
        }
    }
}

/// Takes a backup of the cluster under the repository lock; returns its
/// manifest, already stored.
pub async fn backup(
    topology: &Topology,
    opts: &BackupOptions,
    observer: &dyn Observer,
) -> anyhow::Result<Manifest> {
    let repo = open_repository(topology)?;
    let r = repo.clone();
    tokio::task::spawn_blocking(move || super::check_key(r.as_ref())).await??;
    let lock = RepoLock::acquire(repo.clone(), &topology.cluster, "backup")?;
    let id = opts.id.clone().unwrap_or_else(new_backup_id);
    // Whose folder this is, before anything else goes there: if this run
    // is killed, the next expiry of the cluster knows its leftovers.
    let (r, i, c) = (repo.clone(), id.clone(), topology.cluster.clone());
    let recorded = tokio::task::spawn_blocking(move || {
        super::leftovers::record_start(r.as_ref(), &i, &c, super::leftovers::Writer::Backup)
    })
    .await
    .map_err(anyhow::Error::from)
    .and_then(|r| r.map_err(anyhow::Error::from));
    let result = match recorded {
        Err(e) => Err(e),
        Ok(()) if opts.incremental => {
            super::incremental::take(topology, &repo, &id, opts.connect_timeout, observer, &lock)
                .await
        }
        Ok(()) => take_full(topology, &repo, &id, opts, observer, &lock).await,
    };
    if result.is_err() {
        discard(repo.clone(), &id).await;
    }
    lock.release();
    result
}

async fn take_full(
    topology: &Topology,
    repo: &Arc<dyn Repository>,
    id: &str,
    opts: &BackupOptions,
    observer: &dyn Observer,
    lock: &RepoLock,
) -> anyhow::Result<Manifest> {
    let started_at = chrono::Utc::now().to_rfc3339();
    let cut_opts = cut_options(topology, opts.connect_timeout);
    tracing::info!("backup {id}: preparing {} shards", topology.shards.len());
    let mut sessions = prepare_all(topology, &cut_opts).await?;
    if let Some(pause) = opts.pause_before_cut {
        observer.note(&format!(
            "backup: catalogs read; pausing {} ms before the cut (test hook)",
            pause.as_millis()
        ));
        tokio::time::sleep(pause).await;
    }
    let cut = global_cut(&mut sessions, &opts.hooks).await?;
    tracing::info!(
        "backup {id}: cut taken, commits blocked for {} ms",
        cut.write_block_ms
    );
    if let Some(pause) = opts.pause_before_dump {
        observer.note(&format!(
            "backup: cut taken; pausing {} ms before the dump (test hook)",
            pause.as_millis()
        ));
        tokio::time::sleep(pause).await;
    }

    let dump = DumpPlan {
        id,
        compression: topology.defaults.compression,
        chunk_rows: opts.chunk_rows,
        digest_only: false,
    };
    let shards = dump_all(sessions, repo, &dump, observer)
        .await
        .map_err(|causes| anyhow::anyhow!("backup {id} failed and was discarded: {causes}"))?;
    let contents = Contents {
        cut,
        shards,
        chain: None,
    };
    let manifest = complete_manifest(topology, id, started_at, contents);
    // The manifest goes last: only now does the backup exist, and only
    // while this run still holds the lock.
    lock.ensure_held()?;
    store_manifest(repo, &manifest).await?;
    Ok(manifest)
}
