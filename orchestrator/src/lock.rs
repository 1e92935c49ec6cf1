//! The repository lock that keeps two backups of one cluster apart.
//!
//! The lock is an object created with put-if-absent. It carries an expiry
//! that the holder renews while it runs; a crashed run stops renewing, so
//! its lock expires and the next run takes it over instead of waiting for
//! a human. Releasing deletes it.

use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use shard_agent::repo::{RepoError, Repository};

/// How long a lock stays valid without renewal.
const LOCK_TTL: Duration = Duration::from_secs(60);

#[derive(Debug, Serialize, Deserialize)]
struct LockBody {
    owner: String,
    host: String,
    pid: u32,
    purpose: String,
    started_at: String,
    /// Unix seconds after which the lock may be taken over.
    expires_at: i64,
}

#[derive(Debug, thiserror::Error)]
pub enum LockError {
    #[error("another {purpose} of cluster {cluster} is running ({owner}, since {started_at}); its lock expires at {expires} if that run has died")]
    Held {
        cluster: String,
        purpose: String,
        owner: String,
        started_at: String,
        expires: String,
    },
    #[error(transparent)]
    Repo(#[from] RepoError),
}

/// Whether the holder ran on this host and its process is gone (killed or
/// crashed): then its lock can be taken over at once instead of at expiry.
fn dead_here(h: &LockBody) -> bool {
    let me = body("", "");
    h.host == me.host
        && h.pid != me.pid
        && !std::path::Path::new(&format!("/proc/{}", h.pid)).exists()
}

pub struct RepoLock {
    repo: Arc<dyn Repository>,
    key: String,
    renew: tokio::task::JoinHandle<()>,
}

fn body(purpose: &str, started_at: &str) -> LockBody {
    let host = std::fs::read_to_string("/etc/hostname")
        .map(|h| h.trim().to_string())
        .unwrap_or_else(|_| "localhost".into());
    LockBody {
        owner: format!("pid {} on {host}", std::process::id()),
        pid: std::process::id(),
        host,
        purpose: purpose.to_string(),
        started_at: started_at.to_string(),
        expires_at: chrono::Utc::now().timestamp() + LOCK_TTL.as_secs() as i64,
    }
}

impl RepoLock {
    pub fn acquire(
        repo: Arc<dyn Repository>,
        cluster: &str,
        purpose: &str,
    ) -> Result<RepoLock, LockError> {
        // Backups share one lock; other purposes (capture) have their own,
        // so a running capture does not keep backups out.
        let key = if purpose == "backup" {
            format!("locks/{cluster}.lock")
        } else {
            format!("locks/{cluster}.{purpose}.lock")
        };
        let started_at = chrono::Utc::now().to_rfc3339();
        let encode = |b: &LockBody| serde_json::to_vec(b).unwrap_or_default();
        for _ in 0..2 {
            match repo.put_if_absent(&key, &encode(&body(purpose, &started_at))) {
                Ok(()) => {
                    let (r, k, p, s) = (
                        repo.clone(),
                        key.clone(),
                        purpose.to_string(),
                        started_at.clone(),
                    );
                    let renew = tokio::spawn(async move {
                        loop {
                            tokio::time::sleep(LOCK_TTL / 3).await;
                            let data = serde_json::to_vec(&body(&p, &s)).unwrap_or_default();
                            let (r2, k2) = (r.clone(), k.clone());
                            let put = tokio::task::spawn_blocking(move || r2.put(&k2, &data)).await;
                            if !matches!(put, Ok(Ok(()))) {
                                tracing::warn!("could not renew the repository lock {k}");
                            }
                        }
                    });
                    return Ok(RepoLock { repo, key, renew });
                }
                Err(RepoError::AlreadyExists { .. }) => {
                    let held: Option<LockBody> = repo
                        .get(&key)
                        .ok()
                        .and_then(|d| serde_json::from_slice(&d).ok());
                    match held {
                        Some(h)
                            if h.expires_at > chrono::Utc::now().timestamp() && !dead_here(&h) =>
                        {
                            return Err(LockError::Held {
                                cluster: cluster.to_string(),
                                purpose: h.purpose,
                                owner: h.owner,
                                started_at: h.started_at,
                                expires: chrono::DateTime::from_timestamp(h.expires_at, 0)
                                    .map(|t| t.to_rfc3339())
                                    .unwrap_or_default(),
                            })
                        }
                        // Expired or unreadable (a crash mid-write): take it over.
                        _ => {
                            tracing::warn!("taking over the expired lock {key}");
                            repo.delete(&key)?;
                        }
                    }
                }
                Err(e) => return Err(e.into()),
            }
        }
        Err(LockError::Held {
            cluster: cluster.to_string(),
            purpose: purpose.to_string(),
            owner: "another run that took it over at the same moment".into(),
            started_at,
            expires: "soon".into(),
        })
    }

    pub fn release(self) {
        self.renew.abort();
        if let Err(e) = self.repo.delete(&self.key) {
            tracing::warn!("could not remove the repository lock {}: {e}", self.key);
        }
    }
}
