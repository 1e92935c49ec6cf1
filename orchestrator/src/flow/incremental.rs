//! `shardcut backup --incremental`: a mark plus the captured changes since
//! the chain's full backup, instead of a dump of everything.
//!
//! Restoring one is restoring its full base and replaying the listed
//! segments up to its mark, exactly a point-in-time restore to that mark;
//! it is verified against the mark's content hashes like any restore.

use std::collections::BTreeSet;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::Duration;

use shard_agent::capture::StreamState;
use shard_agent::manifest::{Chain, Manifest, SegmentRef};
use shard_agent::position::Position;
use shard_agent::repo::Repository;
use topology::Topology;

use super::capture::{catch_up_to, ensure_streams, warn_replay_refuses, CatchUpTarget, Started};
use super::mark::take_mark;
use super::steps::{complete_manifest, store_manifest, Contents};
use super::{list_backups, Observer};
use crate::exit::InvalidInput;
use crate::lock::{LockError, RepoLock};
use crate::pitr::{base_fits, ddl_refusals, schema_drift, streams_of};

fn before(a: &Position, b: &Position) -> bool {
    matches!(a.compare(b), Ok(std::cmp::Ordering::Less))
}

pub async fn take(
    topology: &Topology,
    repo: &Arc<dyn Repository>,
    id: &str,
    connect_timeout: Duration,
    observer: &dyn Observer,
    lock: &RepoLock,
) -> anyhow::Result<Manifest> {
    let started_at = chrono::Utc::now().to_rfc3339();
    let parent = list_backups(repo.as_ref(), &topology.cluster)?
        .into_iter()
        .rev()
        .find_map(|l| l.manifest.ok())
        .ok_or_else(|| {
            InvalidInput(format!(
                "cluster {} has no backup to continue: take a full backup first",
                topology.cluster
            ))
        })?;
    let base_id = parent
        .chain
        .as_ref()
        .map(|c| c.base.clone())
        .unwrap_or_else(|| parent.backup_id.clone());
    let base = super::find_backup(repo.as_ref(), &topology.cluster, &base_id)?;
    // The same shards as the base: a shard added since has no data in any
    // backup (a mark holds none), one removed would get no changes.
    let now: BTreeSet<&str> = topology.shards.iter().map(|s| s.name.as_str()).collect();
    let then: BTreeSet<&str> = base.shards.keys().map(String::as_str).collect();
    if let Some(name) = now.difference(&then).next() {
        return Err(InvalidInput(format!(
            "shard {name} is not in the full backup {base_id} an incremental backup would build on: take a full backup"
        ))
        .into());
    }
    if let Some(name) = then.difference(&now).next() {
        return Err(InvalidInput(format!(
            "shard {name} of the full backup {base_id} is not in the topology: take a full backup"
        ))
        .into());
    }
    // Capture must already cover every shard: otherwise the changes since
    // the base cannot be in the repository.
    let states = StreamState::all(repo.as_ref())?;
    for (name, sm) in &base.shards {
        for stream in streams_of(sm) {
            if !states
                .iter()
                .any(|s| &s.shard == name && s.stream == stream)
            {
                return Err(InvalidInput(format!(
                    "shard {name}: no capture of {stream}; incremental backups need `shardcut capture` running since the full backup {base_id}"
                ))
                .into());
            }
        }
    }
    let mark = take_mark(
        topology,
        repo,
        &format!("backup-{id}"),
        connect_timeout,
        observer,
    )
    .await?;
    // Catch capture up to the mark: here, or, if `capture --follow` holds
    // the capture lock, by waiting for it (two writers of one stream would
    // race on its state).
    match RepoLock::acquire(repo.clone(), &topology.cluster, "capture") {
        Ok(lock) => {
            // An incremental backup needs every shard's changes: a shard
            // whose capture is refused fails it.
            let streams = ensure_streams(topology, repo, &topology.shards, observer)
                .await
                .and_then(Started::all);
            let result = match streams {
                Ok(streams) => {
                    let stop = Arc::new(AtomicBool::new(false));
                    let target = CatchUpTarget {
                        topology,
                        repo,
                        mark: Some(&mark),
                        stop: &stop,
                    };
                    catch_up_to(streams, &target).await.map(|(_, reports)| {
                        for r in &reports {
                            warn_replay_refuses(r, observer);
                        }
                    })
                }
                Err(e) => Err(e),
            };
            lock.release();
            result?;
        }
        Err(LockError::Held { .. }) => wait_for_capture(repo.as_ref(), &mark).await?,
        Err(e) => return Err(e.into()),
    }
    let states = StreamState::all_generations(repo.as_ref())?;
    let shards: Vec<String> = base.shards.keys().cloned().collect();
    base_fits(&base, &mark, &shards, &states).map_err(|why| {
        anyhow::anyhow!("incremental backup {id}: the captured changes do not lead from {base_id} to its mark: {why}")
    })?;
    // Its restore is the base brought to its mark: one that would be
    // refused (a PostgreSQL table created, dropped or altered since the
    // base) is not written as a backup; a schema change it restores
    // without is said now, as its restore will say it.
    let refusals = ddl_refusals(&base, &mark, &shards);
    if !refusals.is_empty() {
        anyhow::bail!(
            "incremental backup {id}: not written, since it could not be restored ({}): take a full backup",
            refusals.join("; ")
        );
    }
    for drift in schema_drift(&base, &mark, &shards) {
        observer.note(&format!(
            "shardcut: warning: incremental backup {id}: {drift}"
        ));
    }
    let segments = chain_segments(repo.as_ref(), &base, &mark)?;
    let mut shard_list = mark.shards.clone();
    for s in shard_list.values_mut() {
        s.bytes_stored = 0;
        s.bytes_raw = 0;
    }
    let contents = Contents {
        cut: mark.cut.clone(),
        shards: shard_list,
        chain: Some(Chain {
            parent: parent.backup_id.clone(),
            base: base_id,
            mark: mark.name.clone(),
            segments,
        }),
    };
    let manifest = complete_manifest(topology, id, started_at, contents);
    lock.ensure_held()?;
    store_manifest(repo, &manifest).await?;
    Ok(manifest)
}

/// The stored segments that hold each shard's changes from the base cut
/// to the mark.
fn chain_segments(
    repo: &dyn Repository,
    base: &Manifest,
    mark: &shard_agent::manifest::Mark,
) -> anyhow::Result<Vec<SegmentRef>> {
    let mut segments = Vec::new();
    for (name, sm) in &base.shards {
        let (Some(from), Some(to)) = (
            base.cut.shards.get(name).map(|c| &c.position),
            mark.cut.shards.get(name).map(|c| &c.position),
        ) else {
            continue;
        };
        for stream in streams_of(sm) {
            // The generation that holds the changes after the base cut.
            for seg in shard_agent::replay::segments(repo, name, &stream, (from, to))? {
                if before(from, &seg.last) && before(&seg.first, to) {
                    segments.push(SegmentRef {
                        key: seg.key,
                        xxh3: seg.xxh3,
                        bytes_stored: seg.bytes_stored,
                        transactions: seg.transactions,
                    });
                }
            }
        }
    }
    Ok(segments)
}

/// Waits (at most two minutes) until a running capture has stored every
/// shard's changes up to `mark`.
async fn wait_for_capture(
    repo: &dyn Repository,
    mark: &shard_agent::manifest::Mark,
) -> anyhow::Result<()> {
    let deadline = std::time::Instant::now() + Duration::from_secs(120);
    loop {
        let states = StreamState::all(repo)?;
        let reached = mark.cut.shards.iter().all(|(name, c)| {
            let mine: Vec<&StreamState> = states.iter().filter(|s| &s.shard == name).collect();
            !mine.is_empty() && mine.iter().all(|s| !before(&s.progress, &c.position))
        });
        if reached {
            return Ok(());
        }
        if std::time::Instant::now() > deadline {
            anyhow::bail!(
                "the running capture did not reach mark {} within 120 s",
                mark.name
            );
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}
