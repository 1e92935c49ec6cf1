//! What a killed backup left: the folder of a backup that never got its
//! manifest.
//!
//! A backup writes `backups/<id>/started.json` before anything else, naming
//! its cluster. A run that holds the cluster's backup lock knows that no
//! backup of the cluster is running, so a folder of the cluster's without
//! a manifest is a dead run's (killed, or whose own clean-up failed) and
//! can go. A folder without that record (from a shardcut before it, or not
//! shardcut's) or with a record that cannot be read may be another
//! cluster's backup in progress: it is left as it is, and reported.

use std::sync::Arc;

use serde::{Deserialize, Serialize};
use shard_agent::manifest::keys;
use shard_agent::repo::{RepoError, Repository};

use crate::lock::RepoLock;

/// Which kind of run wrote a backup's folder.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Writer {
    /// `shardcut backup` (full or incremental), or the service's.
    Backup,
}

/// The record a run writes into a backup's folder before anything else.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Started {
    pub cluster: String,
    pub writer: Writer,
    pub started_at: String,
    pub host: String,
    pub pid: u32,
}

/// The largest record read back: one is a few hundred bytes.
const STARTED_MAX: u64 = 64 << 10;

/// Stores the record of backup `id` of `cluster`, a run of this process.
pub fn record_start(repo: &dyn Repository, id: &str, cluster: &str) -> Result<(), RepoError> {
    let record = Started {
        cluster: cluster.to_string(),
        writer: Writer::Backup,
        started_at: chrono::Utc::now().to_rfc3339(),
        host: crate::lock::host_name(),
        pid: std::process::id(),
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
}

/// Removes (unless `dry_run`) the folders of `cluster`'s backups that never
/// got a manifest. `held` is the cluster's backup lock, which this run
/// holds: no backup of the cluster writes meanwhile. Another cluster's
/// folders are not looked at further than their record; an empty folder
/// (a directory that an older shardcut's expiry left) is passed over.
pub async fn sweep(
    repo: &Arc<dyn Repository>,
    cluster: &str,
    held: &RepoLock,
    dry_run: bool,
) -> anyhow::Result<Leftovers> {
    held.ensure_held()?;
    let (r, c) = (repo.clone(), cluster.to_string());
    Ok(tokio::task::spawn_blocking(move || sweep_folders(r.as_ref(), &c, dry_run)).await??)
}

fn sweep_folders(
    repo: &dyn Repository,
    cluster: &str,
    dry_run: bool,
) -> Result<Leftovers, RepoError> {
    let mut found = Leftovers::default();
    for id in super::backup_folders(repo)? {
        if repo.exists(&keys::manifest(&id))? {
            continue;
        }
        let prefix = keys::backup_prefix(&id);
        let objects = repo.list(&prefix)?.len();
        if objects == 0 {
            continue;
        }
        let record = keys::started(&id);
        let started = match repo.get_at_most(&record, STARTED_MAX) {
            Ok(data) => match serde_json::from_slice::<Started>(&data) {
                Ok(s) if s.cluster == cluster => s,
                Ok(_) => continue,
                Err(e) => {
                    found
                        .kept
                        .push((id, format!("its record {record} is unreadable: {e}")));
                    continue;
                }
            },
            Err(e) if e.is_key_problem() => return Err(e),
            Err(RepoError::NotFound { .. }) => {
                found.kept.push((
                    id,
                    format!("it holds no {record}: written by a shardcut before records were kept, or not by shardcut; remove it by hand once no run writes there"),
                ));
                continue;
            }
            Err(e) => {
                found
                    .kept
                    .push((id, format!("its record cannot be read: {e}")));
                continue;
            }
        };
        if !dry_run {
            if let Err(e) = repo.delete_folder(&prefix) {
                found
                    .kept
                    .push((id, format!("it could not be removed: {e}")));
                continue;
            }
        }
        found.removed.push(Leftover {
            id,
            started,
            objects,
        });
    }
    Ok(found)
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use shard_agent::manifest::keys;
    use shard_agent::repo::{MemoryRepository, Repository};

    use super::{record_start, sweep};
    use crate::lock::RepoLock;

    fn folder(repo: &dyn Repository, id: &str) -> Vec<String> {
        repo.list(&keys::backup_prefix(id)).unwrap()
    }

    /// Under the cluster's backup lock, the folder of the cluster's backup
    /// that never got a manifest goes; its complete backups, another
    /// cluster's folder and a folder of no known writer stay.
    #[tokio::test]
    async fn only_the_clusters_unfinished_backups_are_removed() {
        let repo: Arc<dyn Repository> = Arc::new(MemoryRepository::default());
        let chunk = |id: &str| format!("backups/{id}/shards/s/db/t.r00000-p0000.zst");
        for (id, cluster) in [("b1", "main"), ("b2", "main"), ("b3", "other")] {
            record_start(repo.as_ref(), id, cluster).unwrap();
            repo.put(&chunk(id), b"rows").unwrap();
        }
        repo.put(&keys::manifest("b1"), b"{}").unwrap();
        repo.put(&chunk("b4"), b"rows").unwrap();
        repo.put(&keys::started("b5"), b"not json").unwrap();
        repo.put(&keys::started("b6"), &vec![b' '; 70_000]).unwrap();

        let lock = RepoLock::acquire(repo.clone(), "main", "backup").unwrap();
        let dry = sweep(&repo, "main", &lock, true).await.unwrap();
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

        let done = sweep(&repo, "main", &lock, false).await.unwrap();
        lock.release();
        assert_eq!(done.removed.len(), 1);
        assert_eq!(done.removed[0].started.cluster, "main");
        assert!(folder(repo.as_ref(), "b2").is_empty());
        assert_eq!(folder(repo.as_ref(), "b1").len(), 3);
        assert_eq!(folder(repo.as_ref(), "b3").len(), 2);
        let kept: Vec<&str> = done.kept.iter().map(|(id, _)| id.as_str()).collect();
        assert_eq!(kept, vec!["b4", "b5", "b6"]);
        assert!(
            done.kept[0].1.contains("holds no backups/b4/started.json"),
            "{:?}",
            done.kept
        );
        assert!(done.kept[1].1.contains("unreadable"), "{:?}", done.kept);
        assert!(
            done.kept[2].1.contains("more than the 65536"),
            "{:?}",
            done.kept
        );
    }
}
