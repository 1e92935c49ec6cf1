use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::time::Duration;

use serde_json::json;
use shard_agent::capture::{list_segments, StreamState};
use shard_agent::manifest::{keys, Manifest};
use shard_agent::position::Position;
use shard_agent::repo::Repository;
use topology::Topology;

use super::{list_backups, open_repository};
use crate::exit::{self, InvalidInput};
use crate::lock::RepoLock;
use crate::pitr::list_marks;

/// Delete old backups, marks and captured segments, never anything a kept
/// backup or a restorable mark still needs.
///
/// Kept: the newest `--keep-last` backups, those started within
/// `--keep-within`, and the full base of every kept incremental. A mark is
/// kept while a kept full backup precedes it (it can still be restored
/// to); a segment while it holds changes after the oldest kept full
/// backup's cut on its shard.
#[derive(Debug, clap::Args)]
pub struct Expire {
    #[arg(short, long = "topology", value_name = "FILE")]
    topology: PathBuf,
    /// Keep this many newest backups (at least 1).
    #[arg(long, value_name = "N")]
    keep_last: usize,
    /// Also keep every backup started within this long.
    #[arg(long, value_parser = topology::parse_duration, value_name = "DURATION")]
    keep_within: Option<Duration>,
    /// Say what would be deleted; delete nothing.
    #[arg(long)]
    dry_run: bool,
    /// Print one JSON document on stdout.
    #[arg(long)]
    json: bool,
}

fn at_or_before(a: &Position, b: &Position) -> bool {
    matches!(
        a.compare(b),
        Ok(std::cmp::Ordering::Less | std::cmp::Ordering::Equal)
    )
}

impl Expire {
    pub async fn run(self) -> anyhow::Result<u8> {
        if self.keep_last == 0 {
            return Err(InvalidInput(
                "--keep-last must be at least 1: expire never deletes every backup".into(),
            )
            .into());
        }
        let topology = Topology::load(&self.topology)?;
        let repo = open_repository(&topology)?;
        let lock = RepoLock::acquire(repo.clone(), &topology.cluster, "backup")?;
        let json = self.json;
        let r = repo.clone();
        // Listing and deleting are blocking repository calls.
        let result = tokio::task::spawn_blocking(move || self.expire(&topology, r.as_ref())).await;
        lock.release();
        let (plan, summary) = result??;
        if json {
            exit::emit(&format!("{}\n", serde_json::to_string_pretty(&summary)?))?;
        } else {
            exit::emit(&plan)?;
        }
        Ok(exit::SUCCESS)
    }

    fn expire(
        &self,
        topology: &Topology,
        repo: &dyn Repository,
    ) -> anyhow::Result<(String, serde_json::Value)> {
        let listed = list_backups(repo, &topology.cluster)?;
        let backups: Vec<Manifest> = listed.into_iter().filter_map(|l| l.manifest.ok()).collect();
        let now = chrono::Utc::now();
        let mut keep: BTreeSet<String> = backups
            .iter()
            .rev()
            .take(self.keep_last)
            .map(|m| m.backup_id.clone())
            .collect();
        if let Some(within) = self.keep_within {
            let since = now - chrono::Duration::from_std(within).unwrap_or(chrono::Duration::MAX);
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
        let marks: Vec<String> = list_marks(repo, &topology.cluster)?
            .into_iter()
            .filter(|mk| !kept_marks.contains(&mk.name))
            .filter(|mk| oldest_full.as_ref().is_some_and(|t| mk.cut.taken_at < *t))
            .map(|mk| mk.name)
            .collect();
        let mut segments = Vec::new();
        for st in StreamState::all(repo)? {
            // A shard no kept full backup covers keeps its segments: they
            // are not known to be unneeded.
            let Some(from) = needed_from.get(&st.shard) else {
                continue;
            };
            for seg in list_segments(repo, &st.shard, &st.stream)? {
                if at_or_before(&seg.last, from) {
                    segments.push(seg);
                }
            }
        }

        let verb = if self.dry_run {
            "would delete"
        } else {
            "deleted"
        };
        let mut text = String::new();
        for m in &expired {
            text.push_str(&format!("{verb} backup {} ({})\n", m.backup_id, m.kind));
        }
        for name in &marks {
            text.push_str(&format!("{verb} mark {name}\n"));
        }
        let seg_bytes: u64 = segments.iter().map(|s| s.bytes_stored).sum();
        text.push_str(&format!(
            "{verb} {} backup(s), {} mark(s), {} captured segment(s) ({} bytes); kept {} backup(s): {}\n",
            expired.len(),
            marks.len(),
            segments.len(),
            seg_bytes,
            keep.len(),
            keep.iter().cloned().collect::<Vec<_>>().join(", ")
        ));
        let summary = json!({
            "dry_run": self.dry_run,
            "kept": keep,
            "expired_backups": expired.iter().map(|m| &m.backup_id).collect::<Vec<_>>(),
            "expired_marks": marks,
            "expired_segments": segments.len(),
            "expired_segment_bytes": seg_bytes,
        });
        if self.dry_run {
            return Ok((text, summary));
        }
        for m in &expired {
            // The manifest first, and gone for good before anything it
            // names: a backup half deleted is never listed, even after a
            // crash.
            let manifest = keys::manifest(&m.backup_id);
            repo.delete(&manifest)?;
            repo.sync_names(&[&manifest])?;
            for key in repo.list(&keys::backup_prefix(&m.backup_id))? {
                repo.delete(&key)?;
            }
        }
        for name in &marks {
            repo.delete(&keys::mark(name))?;
        }
        for seg in &segments {
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
        Ok((text, summary))
    }
}
