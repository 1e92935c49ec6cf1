//! The workflow layer: every command's work as a function that takes typed
//! options and returns a typed result. `commands/` only parses arguments,
//! calls one flow and renders what it returns; a service calls the same
//! flows. Flows never print: what a person should see while one runs goes
//! through an [`Observer`].

pub mod backup;
pub mod capture;
pub mod check;
pub mod copy;
pub mod drill;
pub mod expire;
pub mod history;
pub mod incremental;
pub mod leftovers;
pub mod mark;
pub mod restore;
pub mod status;
pub mod steps;
pub mod verify;

use std::collections::BTreeMap;
use std::sync::Arc;

use shard_agent::dump::Progress;
use shard_agent::manifest::{keys, Manifest, MANIFEST_FORMAT, MANIFEST_MAX};
use shard_agent::repo::{LocalRepository, RepoError, Repository, S3Repository, SealedRepository};
use topology::{RepositoryLocation, Topology};

use crate::exit::InvalidInput;

/// What a flow tells the person (or service) that started it, while it
/// runs. Every method has a quiet default.
pub trait Observer: Send + Sync {
    /// A dump of these shards starts; the returned guard is dropped when it
    /// ends (a progress display stops then).
    fn dump_started(&self, shards: Vec<(String, Arc<Progress>)>) -> Box<dyn Send> {
        drop(shards);
        Box::new(())
    }

    /// A line for the operator (stderr on the command line).
    fn note(&self, text: &str) {
        tracing::info!("{text}");
    }
}

/// The topology's repository: a directory or a bucket, under the layer that
/// seals (encrypts and authenticates) every object when the topology gives
/// a key, and otherwise refuses sealed objects with a clear error. Remote
/// agents open the same repository from its reference
/// (`Repository::reference`), with their own credentials and key.
pub fn open_repository(topology: &Topology) -> Result<Arc<dyn Repository>, RepoError> {
    let config = &topology.repository;
    let inner: Arc<dyn Repository> = match &config.location {
        RepositoryLocation::Local(path) => Arc::new(LocalRepository::open(path)?),
        RepositoryLocation::S3(location) => Arc::new(S3Repository::open(location)?),
    };
    Ok(Arc::new(match &config.encryption {
        Some(encryption) => SealedRepository::new(inner, encryption),
        None => SealedRepository::plain(inner),
    }))
}

/// Refuses a key that does not open the repository's newest manifest, before
/// a command writes anything sealed with it (a backup written with a wrong
/// key would make a repository that needs two keys).
/// The backups are found by their folders, not by listing every object of
/// every backup.
pub fn check_key(repo: &dyn Repository) -> Result<(), RepoError> {
    let mut folders = backup_folders(repo)?;
    folders.sort();
    for id in folders.iter().rev() {
        match repo.get_at_most(&keys::manifest(id), MANIFEST_MAX) {
            Err(RepoError::NotFound { .. }) => continue,
            Err(e) if e.is_key_problem() => return Err(e),
            _ => return Ok(()),
        }
    }
    Ok(())
}

/// A manifest as found in the repository, or why it could not be read.
/// From [`list_backups`], a readable manifest is a summary (see there).
pub struct Listed {
    pub id: String,
    pub manifest: Result<Manifest, String>,
}

/// Every backup of `cluster` (and unreadable manifests, which are shown
/// rather than hidden), oldest first. Each manifest is kept as a summary:
/// what each shard stored table by table (its tables, bundles and
/// sequences), which grows with the tables, is dropped once the manifest
/// is read (33 backups of a 10,000-table shard took 491 MiB to list
/// before). A command that works on one backup reads it whole with
/// [`find_backup`].
pub fn list_backups(repo: &dyn Repository, cluster: &str) -> Result<Vec<Listed>, RepoError> {
    let mut out = Vec::new();
    for id in backup_folders(repo)? {
        let manifest = match read_manifest(repo, &id)? {
            None => continue,
            Some(Ok(m)) if m.cluster != cluster => continue,
            Some(manifest) => manifest.map(summary),
        };
        out.push(Listed { id, manifest });
    }
    out.sort_by(|a, b| a.id.cmp(&b.id));
    Ok(out)
}

/// The IDs of the backups' folders, in no particular order: a manifest is
/// at `backups/<id>/manifest.json`, and a folder without one is a backup
/// in progress or left by a crash.
pub(crate) fn backup_folders(repo: &dyn Repository) -> Result<Vec<String>, RepoError> {
    Ok(repo
        .list_folder(keys::BACKUPS)?
        .into_iter()
        .filter_map(|f| f.strip_suffix('/').map(str::to_string))
        .filter(|id| keys::backup_of_manifest(&keys::manifest(id)) == Some(id.as_str()))
        .collect())
}

/// The manifest of backup `id` whole: `None` if there is none, the reason
/// if it is unreadable. Without the right key no manifest is readable:
/// that is the answer (an error), not an unreadable backup.
fn read_manifest(
    repo: &dyn Repository,
    id: &str,
) -> Result<Option<Result<Manifest, String>>, RepoError> {
    Ok(read_manifest_document(repo, id)?.map(|read| read.map(|(m, _)| m)))
}

/// A manifest read, and the bytes it was read from; or why it is
/// unreadable.
type ManifestRead = Result<(Manifest, Vec<u8>), String>;

/// [`read_manifest`], with the bytes it was read from.
fn read_manifest_document(
    repo: &dyn Repository,
    id: &str,
) -> Result<Option<ManifestRead>, RepoError> {
    let key = keys::manifest(id);
    let data = match repo.get_at_most(&key, MANIFEST_MAX) {
        Err(RepoError::NotFound { .. }) => return Ok(None),
        Err(e) if e.is_key_problem() => return Err(e),
        Err(e) => return Ok(Some(Err(e.to_string()))),
        Ok(data) => data,
    };
    let manifest = serde_json::from_slice::<Manifest>(&data)
        .map_err(|e| format!("unreadable manifest {key}: {e}"))
        .and_then(|m| {
            // Everything a manifest names is found under its own folder:
            // one copied or moved into another folder would make restore
            // read, and expire delete, the wrong backup.
            if m.format > MANIFEST_FORMAT {
                Err(format!(
                    "manifest {key} is of format {}, written by a newer shardcut; this one reads formats up to {MANIFEST_FORMAT}",
                    m.format
                ))
            } else if m.backup_id != id {
                Err(format!(
                    "manifest {key} names backup {}, not {id} where it lies: the repository is damaged or was tampered with",
                    m.backup_id
                ))
            } else if let Some(object) = m.object_outside() {
                Err(format!(
                    "manifest {key} names object {object}, outside its backup's folder: the repository is damaged or was tampered with"
                ))
            } else {
                Ok(m)
            }
        });
    Ok(Some(manifest.map(|m| (m, data))))
}

/// `m` without what each shard stored table by table: its tables'
/// entries, bundles and sequences (the counts stay). The schema files
/// stay: they name the shard's databases.
fn summary(mut m: Manifest) -> Manifest {
    for s in m.shards.values_mut() {
        s.table_list = Vec::new();
        s.bundles = Vec::new();
        s.sequences = Vec::new();
    }
    m
}

/// Resolves `latest` or an ID to a readable manifest, read whole.
pub fn find_backup(repo: &dyn Repository, cluster: &str, id: &str) -> anyhow::Result<Manifest> {
    let not_found = || {
        InvalidInput(format!(
            "no complete backup `{id}` of cluster {cluster} in {} (looked for {})",
            repo.location(),
            keys::manifest(id)
        ))
    };
    if id == "latest" {
        let mut ids = backup_folders(repo)?;
        ids.sort();
        for id in ids.iter().rev() {
            if let Some(Ok(m)) = read_manifest(repo, id)? {
                if m.cluster == cluster {
                    return Ok(m);
                }
            }
        }
        return Err(not_found().into());
    }
    Ok(backup_document(repo, cluster, id)?.0)
}

/// Backup `id` (not `latest`) of `cluster`, and the bytes its manifest was
/// read from: a copy writes those, the manifest whose objects it copied
/// and checked, not what the source holds by the time it reads again.
pub(crate) fn backup_document(
    repo: &dyn Repository,
    cluster: &str,
    id: &str,
) -> anyhow::Result<(Manifest, Vec<u8>)> {
    let not_found = || {
        InvalidInput(format!(
            "no complete backup `{id}` of cluster {cluster} in {} (looked for {})",
            repo.location(),
            keys::manifest(id)
        ))
    };
    // An ID is a folder's name, nothing else.
    if id == "." || id == ".." || keys::backup_of_manifest(&keys::manifest(id)) != Some(id) {
        return Err(not_found().into());
    }
    match read_manifest_document(repo, id)? {
        Some(Ok((m, data))) if m.cluster == cluster => Ok((m, data)),
        Some(Err(why)) => Err(anyhow::anyhow!(why)),
        _ => Err(not_found().into()),
    }
}

/// Every backup of `cluster` as [`list_backups`] finds them, with the
/// newest mark each can be restored to (`list`, and the API's list).
pub fn list_backups_reach(
    repo: &dyn Repository,
    cluster: &str,
) -> anyhow::Result<(Vec<Listed>, BTreeMap<String, crate::pitr::Reach>)> {
    let listed = list_backups(repo, cluster)?;
    let manifests = listed.iter().filter_map(|l| l.manifest.as_ref().ok());
    let reach = crate::pitr::reach(repo, cluster, manifests, |id| {
        find_backup(repo, cluster, id).ok()
    })?;
    Ok((listed, reach))
}
