//! Expiry: old backups, marks and captured segments deleted, never
//! anything a kept backup or a restorable mark still needs.
//!
//! Kept: the newest `keep_last` backups, those started within
//! `keep_within`, and the full base of every kept incremental. A mark is
//! kept while a kept full backup precedes it (it can still be restored
//! to); a segment while it holds changes after the oldest kept full
//! backup's cut on its shard.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use shard_agent::capture::{list_segments, SegmentMeta, StreamState};
use shard_agent::manifest::{keys, BackupKind, Manifest};
use shard_agent::position::Position;
use shard_agent::repo::Repository;
use topology::Topology;

use super::leftovers::{self, Leftovers};
use super::{list_backups, open_repository};
use crate::exit::InvalidInput;
use crate::lock::RepoLock;
use crate::pitr::list_marks;

#[derive(Debug, Clone)]
pub struct ExpireOptions {
    /// Keep this many newest backups (at least 1).
    pub keep_last: usize,
    /// Also keep every backup started within this long.
    pub keep_within: Option<Duration>,
    /// Decide, delete nothing.
    pub dry_run: bool,
}

/// What expiry deleted (or, on a dry run, would delete).
#[derive(Debug)]
pub struct Expired {
    pub dry_run: bool,
    pub kept: BTreeSet<String>,
    /// Backup IDs and kinds.
    pub backups: Vec<(String, BackupKind)>,
    pub marks: Vec<String>,
    pub segments: Vec<SegmentMeta>,
    /// Folders of the cluster's backups that never got a manifest (a
    /// killed run's), and folders without a manifest left alone.
    pub leftovers: Leftovers,
}

fn at_or_before(a: &Position, b: &Position) -> bool {
    matches!(
        a.compare(b),
        Ok(std::cmp::Ordering::Less | std::cmp::Ordering::Equal)
    )
}

/// Decides under the repository lock and, unless a dry run, deletes.
pub async fn expire(topology: &Topology, opts: &ExpireOptions) -> anyhow::Result<Expired> {
    if opts.keep_last == 0 {
        return Err(InvalidInput(
            "--keep-last must be at least 1: expire never deletes every backup".into(),
        )
        .into());
    }
    let repo = open_repository(topology)?;
    let lock = RepoLock::acquire(repo.clone(), &topology.cluster, "backup")?;
    let result = decide_and_delete(&repo, &topology.cluster, opts, &lock).await;
    lock.release();
    result
}

async fn decide_and_delete(
    repo: &Arc<dyn Repository>,
    cluster: &str,
    opts: &ExpireOptions,
    lock: &RepoLock,
) -> anyhow::Result<Expired> {
    // Listing and deleting are blocking repository calls.
    let (r, c, o) = (repo.clone(), cluster.to_string(), opts.clone());
    let mut plan = tokio::task::spawn_blocking(move || decide(&c, r.as_ref(), &o)).await??;
    if !opts.dry_run {
        lock.ensure_held()?;
        let r = repo.clone();
        plan = tokio::task::spawn_blocking(move || {
            delete(r.as_ref(), &plan)?;
            Ok::<_, anyhow::Error>(plan)
        })
        .await??;
    }
    // Under the lock no backup of the cluster runs: a folder of its with
    // no manifest is a dead run's.
    plan.leftovers = leftovers::sweep(repo, cluster, lock, opts.dry_run).await;
    Ok(plan)
}

/// What to delete.
fn decide(cluster: &str, repo: &dyn Repository, opts: &ExpireOptions) -> anyhow::Result<Expired> {
    let listed = list_backups(repo, cluster)?;
    let backups: Vec<Manifest> = listed.into_iter().filter_map(|l| l.manifest.ok()).collect();
    let now = chrono::Utc::now();
    let mut keep: BTreeSet<String> = backups
        .iter()
        .rev()
        .take(opts.keep_last)
        .map(|m| m.backup_id.clone())
        .collect();
    if let Some(within) = opts.keep_within {
        // A span longer than time goes back ("keep forever") keeps all.
        let since = chrono::Duration::from_std(within)
            .ok()
            .and_then(|d| now.checked_sub_signed(d))
            .unwrap_or(chrono::DateTime::<chrono::Utc>::MIN_UTC);
        for m in &backups {
            if chrono::DateTime::parse_from_rfc3339(&m.started_at).is_ok_and(|t| t >= since) {
                keep.insert(m.backup_id.clone());
            }
        }
    }
    for m in &backups {
        if let Some(c) = m.chain.as_ref().filter(|_| keep.contains(&m.backup_id)) {
            keep.insert(c.base.clone());
        }
    }
    let kept_fulls: Vec<&Manifest> = backups
        .iter()
        .filter(|m| keep.contains(&m.backup_id) && m.chain.is_none())
        .collect();
    let oldest_full = kept_fulls.first().map(|m| m.cut.taken_at.clone());
    // Per shard: the earliest cut of a kept full backup; changes after
    // it are still needed.
    let mut needed_from: BTreeMap<String, Position> = BTreeMap::new();
    for m in &kept_fulls {
        for (shard, c) in &m.cut.shards {
            let earlier = needed_from
                .get(shard)
                .is_none_or(|p| at_or_before(&c.position, p));
            if earlier {
                needed_from.insert(shard.clone(), c.position.clone());
            }
        }
    }
    let expired: Vec<&Manifest> = backups
        .iter()
        .filter(|m| !keep.contains(&m.backup_id))
        .collect();
    let kept_marks: BTreeSet<String> = backups
        .iter()
        .filter(|m| keep.contains(&m.backup_id))
        .filter_map(|m| m.chain.as_ref().map(|c| c.mark.clone()))
        .collect();
    let marks: Vec<String> = list_marks(repo, cluster)?
        .into_iter()
        .filter(|mk| !kept_marks.contains(&mk.name))
        .filter(|mk| oldest_full.as_ref().is_some_and(|t| mk.cut.taken_at < *t))
        .map(|mk| mk.name)
        .collect();
    let mut segments = Vec::new();
    // Every stream with a current or retired generation; each listing
    // holds the segments of all its generations.
    let mut streams: Vec<(String, String)> = StreamState::all_generations(repo)?
        .into_iter()
        .map(|st| (st.shard, st.stream))
        .collect();
    streams.sort();
    streams.dedup();
    for (shard, stream) in &streams {
        // A shard no kept full backup covers keeps its segments: they
        // are not known to be unneeded.
        let Some(from) = needed_from.get(shard) else {
            continue;
        };
        for seg in list_segments(repo, shard, stream)? {
            if at_or_before(&seg.last, from) {
                segments.push(seg);
            }
        }
    }

    Ok(Expired {
        dry_run: opts.dry_run,
        kept: keep,
        backups: expired
            .iter()
            .map(|m| (m.backup_id.clone(), m.kind))
            .collect(),
        marks,
        segments,
        leftovers: Leftovers::default(),
    })
}

/// Deletes what `plan` names, each backup's manifest first.
fn delete(repo: &dyn Repository, plan: &Expired) -> anyhow::Result<()> {
    for (id, _) in &plan.backups {
        // The manifest first, and gone for good before anything it
        // names: a backup half deleted is never listed, even after a
        // crash.
        let manifest = keys::manifest(id);
        repo.delete(&manifest)?;
        repo.sync_names(&[&manifest])?;
        repo.delete_folder(&keys::backup_prefix(id))?;
    }
    for name in &plan.marks {
        repo.delete(&keys::mark(name))?;
    }
    for seg in &plan.segments {
        // The description first: a listed segment is always complete.
        if let Some(meta) = seg
            .key
            .strip_suffix(".zst")
            .and_then(|k| k.rsplit_once('.'))
            .map(|(stem, _)| format!("{stem}.json"))
        {
            repo.delete(&meta)?;
            repo.sync_names(&[&meta])?;
        }
        repo.delete(&seg.key)?;
    }
    // A retired generation with no segment left covers nothing any more.
    for st in StreamState::retired(repo)? {
        let left = list_segments(repo, &st.shard, &st.stream)?
            .iter()
            .any(|s| s.generation == st.generation);
        if !left {
            repo.delete(&shard_agent::capture::keys::retired(
                &st.shard,
                &st.stream,
                st.generation,
            ))?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use shard_agent::repo::MemoryRepository;

    use super::{decide, ExpireOptions};

    /// `keep_within: 999999999d` ("keep forever") reaches back before any
    /// date there is: it keeps everything instead of panicking on the
    /// subtraction, as every expiry of such a topology did.
    #[test]
    fn a_keep_within_longer_than_time_keeps_all_instead_of_panicking() {
        let opts = ExpireOptions {
            keep_last: 1,
            keep_within: Some(Duration::from_secs(999_999_999 * 86_400)),
            dry_run: true,
        };
        let expired = decide("c", &MemoryRepository::default(), &opts).unwrap();
        assert!(expired.backups.is_empty());
    }
}
