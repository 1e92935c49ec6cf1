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
pub fn check_key(repo: &dyn Repository) -> Result<(), RepoError> {
    let newest = repo
        .list(keys::BACKUPS)?
        .into_iter()
        .rfind(|k| keys::backup_of_manifest(k).is_some());
    match newest.map(|k| repo.get_at_most(&k, MANIFEST_MAX)) {
        Some(Err(e)) if e.is_key_problem() => Err(e),
        _ => Ok(()),
    }
}

/// A manifest as found in the repository, or why it could not be read.
pub struct Listed {
    pub id: String,
    pub manifest: Result<Manifest, String>,
}

/// Every backup of `cluster` (and unreadable manifests, which are shown
/// rather than hidden), oldest first.
pub fn list_backups(repo: &dyn Repository, cluster: &str) -> Result<Vec<Listed>, RepoError> {
    let mut out = Vec::new();
    // The backups' folders, not every object in them: a manifest is at
    // `backups/<id>/manifest.json`, and a folder without one is a backup
    // in progress or left by a crash.
    for folder in repo.list_folder(keys::BACKUPS)? {
        let Some(id) = folder.strip_suffix('/') else {
            continue;
        };
        let key = keys::manifest(id);
        if keys::backup_of_manifest(&key) != Some(id) {
            continue;
        }
        let manifest = match repo.get_at_most(&key, MANIFEST_MAX) {
            Err(RepoError::NotFound { .. }) => continue,
            Ok(data) => serde_json::from_slice::<Manifest>(&data)
                .map_err(|e| format!("unreadable manifest {key}: {e}"))
                .and_then(|m| {
                    // Everything a manifest names is found under its own
                    // folder: one copied or moved into another folder
                    // would make restore read, and expire delete, the
                    // wrong backup.
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
                }),
            // Without the right key no manifest is readable: that is
            // the answer, not a list of unreadable backups.
            Err(e) if e.is_key_problem() => return Err(e),
            Err(e) => Err(e.to_string()),
        };
        if matches!(&manifest, Ok(m) if m.cluster != cluster) {
            continue;
        }
        out.push(Listed {
            id: id.to_string(),
            manifest,
        });
    }
    out.sort_by(|a, b| a.id.cmp(&b.id));
    Ok(out)
}

/// Every backup of `cluster` as [`list_backups`] finds them, with the
/// newest mark each can be restored to (`list`, and the API's list).
pub fn list_backups_reach(
    repo: &dyn Repository,
    cluster: &str,
) -> anyhow::Result<(Vec<Listed>, BTreeMap<String, crate::pitr::Reach>)> {
    let listed = list_backups(repo, cluster)?;
    let manifests = listed.iter().filter_map(|l| l.manifest.as_ref().ok());
    let reach = crate::pitr::reach(repo, cluster, manifests)?;
    Ok((listed, reach))
}

/// Resolves `latest` or an ID to a readable manifest.
pub fn find_backup(repo: &dyn Repository, cluster: &str, id: &str) -> anyhow::Result<Manifest> {
    let listed = list_backups(repo, cluster)?;
    let found = if id == "latest" {
        listed.into_iter().rev().find(|l| l.manifest.is_ok())
    } else {
        listed.into_iter().find(|l| l.id == id)
    };
    match found {
        Some(Listed {
            manifest: Ok(m), ..
        }) => Ok(m),
        Some(Listed {
            manifest: Err(e), ..
        }) => Err(anyhow::anyhow!(e)),
        None => {
            let key = keys::manifest(id);
            Err(InvalidInput(format!(
                "no complete backup `{id}` of cluster {cluster} in {} (looked for {key})",
                repo.location()
            ))
            .into())
        }
    }
}
