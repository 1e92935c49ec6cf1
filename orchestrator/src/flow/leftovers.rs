//! What a killed backup left: the folder of a backup that never got its
//! manifest.
//!
//! A backup writes `backups/<id>/started.json` before anything else, naming
//! its cluster, host, boot and pid. A run that holds the cluster's backup
//! lock knows that no other backup of the cluster holds it, so a folder of
//! the cluster's without a manifest is a dead run's (killed, or whose own
//! clean-up failed) and can go, unless its process still runs on this
//! machine (stopped, or this very process: it may still write). Its
//! objects go before its record: what a remote agent still writes there
//! (it gives up on a dump two minutes after its orchestrator stopped
//! asking) stays under the record for the next sweep. A folder without a
//! record (from a shardcut before it, or not shardcut's) or with a record
//! that cannot be read may be another cluster's backup in progress: it is
//! left as it is, and reported.

use std::sync::Arc;

use serde::{Deserialize, Serialize};
use shard_agent::manifest::keys;
use shard_agent::repo::{RepoError, Repository};

use crate::lock::RepoLock;

/// Which kind of run wrote a backup's folder, under which of the
/// cluster's locks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Writer {
    /// `shardcut backup` (full or incremental), or the service's: the
    /// backup lock.
    Backup,
    /// `shardcut copy`, into a replica: the copy lock there.
    Copy,
}

/// The record a run writes into a backup's folder before anything else.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Started {
    pub cluster: String,
    pub writer: Writer,
    pub started_at: String,
    pub host: String,
    pub pid: u32,
    /// The boot of the run's machine (`lock::boot_id`).
    #[serde(default)]
    pub boot: String,
}

impl Started {
    /// Whether the run's process still runs on this machine (this boot):
    /// stopped (SIGSTOP), stalled, or this very process, it may still
    /// write, its manifest even, whatever the lock says.
    fn runs_here(&self) -> bool {
        !self.boot.is_empty()
            && self.boot == crate::lock::boot_id()
            && self.host == crate::lock::host_name()
            && (self.pid == std::process::id()
                || std::path::Path::new(&format!("/proc/{}", self.pid)).exists())
    }
}

/// The largest record read back: one is a few hundred bytes.
const STARTED_MAX: u64 = 64 << 10;

/// Stores the record of backup `id` of `cluster`, written by `writer`, a
/// run of this process.
pub fn record_start(
    repo: &dyn Repository,
    id: &str,
    cluster: &str,
    writer: Writer,
) -> Result<(), RepoError> {
    let record = Started {
        cluster: cluster.to_string(),
        writer,
        started_at: chrono::Utc::now().to_rfc3339(),
        host: crate::lock::host_name(),
        pid: std::process::id(),
        boot: crate::lock::boot_id(),
    };
    let data = serde_json::to_vec(&record).unwrap_or_default();
    repo.put(&keys::started(id), &data)
}

/// A dead run's backup folder, removed (or, on a dry run, to be removed).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Leftover {
    pub id: String,
    pub started: Started,
    /// Objects the folder held.
    pub objects: usize,
}

/// What [`sweep`] found.
#[derive(Debug, Default)]
pub struct Leftovers {
    pub removed: Vec<Leftover>,
    /// Folders without a manifest that stay, each with the reason.
    pub kept: Vec<(String, String)>,
    /// Why the sweep stopped before it looked at every folder, if it did.
    pub stopped: Option<String>,
}

/// What one folder is.
enum Outcome {
    /// Complete, another cluster's, or holding nothing.
    Passed,
    /// A dead run of the cluster's, and the keys its folder held.
    Dead(Leftover, Vec<String>),
    /// To be left, for this reason.
    Kept(String),
}

/// Removes (unless `dry_run`) the folders of `cluster`'s backups that never
/// got a manifest, a folder at a time, each while `held` (the cluster's
/// backup lock) is still this run's: no backup of the cluster writes
/// meanwhile. Never fails: a folder that cannot be looked at or removed
/// is kept, with the reason, and a sweep that cannot go on says why
/// ([`Leftovers::stopped`]); the expiry that runs it has done its work.
pub async fn sweep(
    repo: &Arc<dyn Repository>,
    cluster: &str,
    held: &RepoLock,
    dry_run: bool,
) -> Leftovers {
    let mut found = Leftovers::default();
    let r = repo.clone();
    let listed = tokio::task::spawn_blocking(move || super::backup_folders(r.as_ref()))
        .await
        .map_err(|e| e.to_string())
        .and_then(|f| f.map_err(|e| e.to_string()));
    let folders = match listed {
        Ok(f) => f,
        Err(e) => {
            found.stopped = Some(format!("the backups' folders could not be listed: {e}"));
            return found;
        }
    };
    for id in folders {
        let (r, c, i) = (repo.clone(), cluster.to_string(), id.clone());
        let looked = move || look(r.as_ref(), &c, &i, Writer::Backup);
        let (dead, keys) = match tokio::task::spawn_blocking(looked).await {
            Ok(Outcome::Passed) => continue,
            Ok(Outcome::Kept(why)) => {
                found.kept.push((id, why));
                continue;
            }
            Err(e) => {
                found.kept.push((id, format!("looking at it failed: {e}")));
                continue;
            }
            Ok(Outcome::Dead(l, keys)) => (l, keys),
        };
        if dry_run {
            found.removed.push(dead);
            continue;
        }
        if let Err(e) = held.ensure_held() {
            found.stopped = Some(e.to_string());
            break;
        }
        let (r, i) = (repo.clone(), id.clone());
        match tokio::task::spawn_blocking(move || remove(r.as_ref(), &i, &keys)).await {
            Ok(Ok(())) => found.removed.push(dead),
            Ok(Err(why)) => found.kept.push((id, why)),
            Err(e) => found.kept.push((id, format!("removing it failed: {e}"))),
        }
    }
    found
}

/// Removes the partial copies of `cluster`'s backups `ids` in the replica
/// `dest`, backups the source no longer holds (a copy killed before it
/// wrote the manifest, the backup expired at the source since): no copy
/// will complete them. Run under the cluster's copy lock on the replica;
/// what a copy left of a backup the source still holds stays, for the
/// next copy of it to complete.
pub fn sweep_copies(dest: &dyn Repository, cluster: &str, ids: &[String]) -> Leftovers {
    let mut found = Leftovers::default();
    for id in ids {
        match look(dest, cluster, id, Writer::Copy) {
            Outcome::Passed => {}
            Outcome::Kept(why) => found.kept.push((id.clone(), why)),
            Outcome::Dead(l, keys) => match remove(dest, id, &keys) {
                Ok(()) => found.removed.push(l),
                Err(why) => found.kept.push((id.clone(), why)),
            },
        }
    }
    found
}

/// What the folder of backup `id` is to `cluster`'s runs of `writer`: its
/// manifest is looked for first, then its record (a folder of another
/// cluster or writer is not listed), then whether its run still runs here.
fn look(repo: &dyn Repository, cluster: &str, id: &str, writer: Writer) -> Outcome {
    let prefix = keys::backup_prefix(id);
    match repo.exists(&keys::manifest(id)) {
        Ok(true) => return Outcome::Passed,
        Ok(false) => {}
        Err(e) => return Outcome::Kept(format!("whether it holds a manifest cannot be told: {e}")),
    }
    let record = keys::started(id);
    let started = match repo.get_at_most(&record, STARTED_MAX) {
        Ok(data) => match serde_json::from_slice::<Started>(&data) {
            Ok(s) if s.cluster == cluster && s.writer == writer => s,
            Ok(_) => return Outcome::Passed,
            Err(e) => return Outcome::Kept(format!("its record {record} is unreadable: {e}")),
        },
        // A folder with nothing in it is the directories an older
        // shardcut's expiry left: nothing of a backup.
        Err(RepoError::NotFound { .. }) => {
            return match repo.list(&prefix) {
                Ok(keys) if keys.is_empty() => Outcome::Passed,
                Ok(_) => Outcome::Kept(format!(
                    "it holds no {record}: written by a shardcut before records were kept, or not by shardcut; remove it by hand once no run writes there"
                )),
                Err(e) => Outcome::Kept(format!("it cannot be listed: {e}")),
            };
        }
        Err(e) => return Outcome::Kept(format!("its record cannot be read: {e}")),
    };
    if started.runs_here() {
        return Outcome::Kept(format!(
            "its run (pid {}, this machine) still runs, and may still write there",
            started.pid
        ));
    }
    match repo.list(&prefix) {
        Ok(keys) => Outcome::Dead(
            Leftover {
                id: id.to_string(),
                started,
                objects: keys.len(),
            },
            keys,
        ),
        Err(e) => Outcome::Kept(format!("it cannot be listed: {e}")),
    }
}

/// Removes the folder of backup `id`, a dead run's, which held `keys`
/// when [`look`] listed it, or says why not.
fn remove(repo: &dyn Repository, id: &str, keys: &[String]) -> Result<(), String> {
    let prefix = keys::backup_prefix(id);
    let record = keys::started(id);
    // Everything but the record first. Something may still write there
    // (a remote agent whose orchestrator died goes on until it gives up
    // on it): then its objects stay under the record, and the next
    // expiry finds them.
    for key in keys.iter().filter(|k| **k != record) {
        repo.delete(key)
            .map_err(|e| format!("it could not be removed: {e}"))?;
    }
    let left = repo
        .list(&prefix)
        .map_err(|e| format!("it cannot be listed: {e}"))?;
    let appeared = left.iter().filter(|k| **k != record).count();
    if appeared > 0 {
        return Err(format!(
            "{appeared} objects appeared in it while it was removed (a remote agent still writing?): the next expiry looks again"
        ));
    }
    repo.delete_folder(&prefix)
        .map_err(|e| format!("its record could not be removed: {e}"))
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::Arc;

    use shard_agent::manifest::keys;
    use shard_agent::repo::{MemoryRepository, RepoError, Repository, SealedRepository};

    use super::{record_start, sweep, Started, Writer};
    use crate::lock::RepoLock;

    fn folder(repo: &dyn Repository, id: &str) -> Vec<String> {
        repo.list(&keys::backup_prefix(id)).unwrap()
    }

    /// The record of a run of `cluster` on this machine whose process is
    /// gone, and a chunk.
    fn dead_run(repo: &dyn Repository, id: &str, cluster: &str) {
        let record = Started {
            cluster: cluster.into(),
            writer: Writer::Backup,
            started_at: "2026-12-01T00:00:00Z".into(),
            host: crate::lock::host_name(),
            // Above any pid Linux gives.
            pid: 4_000_000_000,
            boot: crate::lock::boot_id(),
        };
        repo.put(&keys::started(id), &serde_json::to_vec(&record).unwrap())
            .unwrap();
        repo.put(
            &format!("backups/{id}/shards/s/db/t.r00000-p0000.zst"),
            b"rows",
        )
        .unwrap();
    }

    /// Under the cluster's backup lock, the folder of the cluster's backup
    /// that never got a manifest goes; its complete backups, another
    /// cluster's folder, a folder of no known writer, one whose record
    /// cannot be read and one whose run still runs (this process) stay.
    #[tokio::test]
    async fn only_the_clusters_dead_unfinished_backups_are_removed() {
        let repo: Arc<dyn Repository> = Arc::new(MemoryRepository::default());
        for (id, cluster) in [("b1", "main"), ("b2", "main"), ("b3", "other")] {
            dead_run(repo.as_ref(), id, cluster);
        }
        repo.put(&keys::manifest("b1"), b"{}").unwrap();
        repo.put("backups/b4/x.zst", b"rows").unwrap();
        repo.put(&keys::started("b5"), b"not json").unwrap();
        repo.put(&keys::started("b6"), &vec![b' '; 70_000]).unwrap();
        record_start(repo.as_ref(), "b7", "main", Writer::Backup).unwrap();

        let lock = RepoLock::acquire(repo.clone(), "main", "backup").unwrap();
        let dry = sweep(&repo, "main", &lock, true).await;
        assert_eq!(
            dry.removed
                .iter()
                .map(|l| (l.id.as_str(), l.objects))
                .collect::<Vec<_>>(),
            vec![("b2", 2)]
        );
        assert_eq!(
            folder(repo.as_ref(), "b2").len(),
            2,
            "a dry run removes nothing"
        );

        let done = sweep(&repo, "main", &lock, false).await;
        lock.release();
        assert_eq!(done.stopped, None);
        assert_eq!(done.removed.len(), 1);
        assert_eq!(done.removed[0].started.cluster, "main");
        assert!(folder(repo.as_ref(), "b2").is_empty());
        assert_eq!(folder(repo.as_ref(), "b1").len(), 3);
        assert_eq!(folder(repo.as_ref(), "b3").len(), 2);
        assert_eq!(folder(repo.as_ref(), "b7").len(), 1);
        let kept: Vec<&str> = done.kept.iter().map(|(id, _)| id.as_str()).collect();
        assert_eq!(kept, vec!["b4", "b5", "b6", "b7"]);
        let why: Vec<&str> = done.kept.iter().map(|(_, w)| w.as_str()).collect();
        assert!(
            why[0].contains("holds no backups/b4/started.json"),
            "{why:?}"
        );
        assert!(why[1].contains("unreadable"), "{why:?}");
        assert!(why[2].contains("more than the 65536"), "{why:?}");
        assert!(why[3].contains("still runs"), "{why:?}");
    }

    /// A record the repository's layer refuses to open (sealed bytes in a
    /// repository without a key) keeps its folder and stops nothing: a
    /// planted one blocked every expiry of every cluster.
    #[tokio::test]
    async fn a_record_that_cannot_be_opened_keeps_its_folder_and_stops_nothing() {
        let inner: Arc<dyn Repository> = Arc::new(MemoryRepository::default());
        let repo: Arc<dyn Repository> = Arc::new(SealedRepository::plain(inner.clone()));
        inner
            .put(&keys::started("b1"), b"SHCTSEAL\x00\x01planted")
            .unwrap();
        inner.put("backups/b1/x.zst", b"rows").unwrap();
        dead_run(repo.as_ref(), "b2", "main");
        let lock = RepoLock::acquire(repo.clone(), "main", "backup").unwrap();
        let done = sweep(&repo, "main", &lock, false).await;
        lock.release();
        assert_eq!(done.stopped, None);
        assert_eq!(done.removed.len(), 1, "{done:?}");
        assert_eq!(done.kept.len(), 1, "{done:?}");
        assert!(done.kept[0].1.contains("cannot be read"), "{done:?}");
        assert_eq!(folder(repo.as_ref(), "b1").len(), 2);
    }

    /// A repository in which an object appears in the folder `backups/b1/`
    /// as its first object is deleted: a remote agent still writing.
    #[derive(Debug, Default)]
    struct StillWritten {
        inner: MemoryRepository,
        written: AtomicBool,
    }

    impl Repository for StillWritten {
        fn location(&self) -> String {
            self.inner.location()
        }
        fn put(&self, key: &str, data: &[u8]) -> Result<(), RepoError> {
            self.inner.put(key, data)
        }
        fn put_if_absent(&self, key: &str, data: &[u8]) -> Result<(), RepoError> {
            self.inner.put_if_absent(key, data)
        }
        fn get(&self, key: &str) -> Result<Vec<u8>, RepoError> {
            self.inner.get(key)
        }
        fn list(&self, prefix: &str) -> Result<Vec<String>, RepoError> {
            self.inner.list(prefix)
        }
        fn delete(&self, key: &str) -> Result<(), RepoError> {
            if key.starts_with("backups/b1/") && !self.written.swap(true, Ordering::SeqCst) {
                self.inner.put("backups/b1/shards/s/db/late.zst", b"rows")?;
            }
            self.inner.delete(key)
        }
        fn sync_names(&self, keys: &[&str]) -> Result<(), RepoError> {
            self.inner.sync_names(keys)
        }
    }

    /// Objects written while the folder is removed stay, under its record,
    /// and the next sweep removes them.
    #[tokio::test]
    async fn objects_written_meanwhile_keep_the_record_for_the_next_sweep() {
        let repo: Arc<dyn Repository> = Arc::new(StillWritten::default());
        dead_run(repo.as_ref(), "b1", "main");
        let lock = RepoLock::acquire(repo.clone(), "main", "backup").unwrap();
        let first = sweep(&repo, "main", &lock, false).await;
        assert!(first.removed.is_empty(), "{first:?}");
        assert!(first.kept[0].1.contains("1 objects appeared"), "{first:?}");
        assert_eq!(
            folder(repo.as_ref(), "b1"),
            vec!["backups/b1/shards/s/db/late.zst", "backups/b1/started.json"]
        );
        let second = sweep(&repo, "main", &lock, false).await;
        lock.release();
        assert_eq!(second.removed.len(), 1, "{second:?}");
        assert!(folder(repo.as_ref(), "b1").is_empty());
    }
}
