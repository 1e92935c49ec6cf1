//! One file per subcommand; each is a clap struct with a `run()`.

mod backup;
mod capture;
mod check;
mod drill;
mod expire;
mod incremental;
mod list;
mod mark;
mod restore;
mod show;
mod status;
mod verify;

use std::sync::Arc;

use clap::Subcommand;
use shard_agent::manifest::{keys, Manifest};
use shard_agent::repo::{LocalRepository, RepoError, Repository};
use topology::{RepositoryLocation, Topology};

use crate::exit::InvalidInput;

#[derive(Debug, Subcommand)]
pub enum Command {
    Check(check::Check),
    Drill(drill::Drill),
    Expire(expire::Expire),
    Backup(backup::Backup),
    Capture(capture::Capture),
    Mark(mark::MarkCmd),
    Status(status::Status),
    List(list::List),
    Restore(restore::Restore),
    Show(show::Show),
    Verify(verify::Verify),
}

impl Command {
    /// Runs the command and returns its exit code.
    pub async fn run(self) -> anyhow::Result<u8> {
        match self {
            Command::Check(c) => c.run().await,
            Command::Drill(c) => c.run().await,
            Command::Expire(c) => c.run().await,
            Command::Backup(c) => c.run().await,
            Command::Capture(c) => c.run().await,
            Command::Mark(c) => c.run().await,
            Command::Status(c) => c.run().await,
            Command::List(c) => c.run().await,
            Command::Restore(c) => c.run().await,
            Command::Show(c) => c.run().await,
            Command::Verify(c) => c.run().await,
        }
    }
}

pub fn open_repository(topology: &Topology) -> Result<Arc<dyn Repository>, RepoError> {
    match &topology.repository {
        RepositoryLocation::Local(path) => Ok(Arc::new(LocalRepository::open(path)?)),
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
    for key in repo.list("backups/")? {
        let Some(id) = key
            .strip_prefix("backups/")
            .and_then(|k| k.strip_suffix("/manifest.json"))
        else {
            continue;
        };
        if id.contains('/') {
            continue;
        }
        let manifest = match repo.get(&key) {
            Ok(data) => serde_json::from_slice::<Manifest>(&data)
                .map_err(|e| format!("unreadable manifest {key}: {e}")),
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
