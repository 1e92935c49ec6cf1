//! The repository lock that keeps two backups of one cluster apart.
//!
//! The lock is an object created with put-if-absent. It carries an expiry
//! that the holder renews while it runs; a crashed run stops renewing, so
//! its lock expires and the next run takes it over instead of waiting for
//! a human. Releasing deletes it.
//!
//! Each acquisition writes a token of its own into the lock. Renewing,
//! releasing and committing first check that the lock still carries that
//! token: a run whose lock was taken over (because it stalled past the
//! expiry, or two takeovers raced) finds out, stops renewing, commits
//! nothing more and fails with [`LockError::Lost`].

use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use shard_agent::repo::{RepoError, Repository};

/// How long a lock stays valid without renewal.
pub(crate) const LOCK_TTL: Duration = Duration::from_secs(60);

/// A lock as stored: who holds it, for what, until when.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct LockBody {
    owner: String,
    pub host: String,
    pub pid: u32,
    purpose: String,
    started_at: String,
    /// Unix seconds after which the lock may be taken over.
    pub expires_at: i64,
    /// Which acquisition holds it (absent in locks of older versions).
    #[serde(default)]
    pub token: String,
    /// The boot of the holder's machine ([`boot_id`]; absent in locks of
    /// older versions).
    #[serde(default)]
    pub boot: String,
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
    #[error("the repository lock {key} was lost: {why}; this run stopped before committing anything more")]
    Lost { key: String, why: String },
    #[error(transparent)]
    Repo(#[from] RepoError),
}

/// Whether the holder ran on this host and its process is gone (killed or
/// crashed): then its lock can be taken over at once instead of at expiry.
/// A holder of another boot of a host of this name (or of no known boot:
/// an older version's lock) may be another machine of the same name,
/// whose processes this one cannot see: its lock waits for its expiry
/// (after a reboot, at most [`LOCK_TTL`]).
fn dead_here(h: &LockBody) -> bool {
    !h.boot.is_empty() && h.boot == boot_id() && gone_here(&h.host, h.pid)
}

/// The key of `cluster`'s lock for `purpose`. Backups share one lock;
/// other purposes (capture) have their own, so a running capture does not
/// keep backups out.
fn lock_key(cluster: &str, purpose: &str) -> String {
    if purpose == "backup" {
        format!("locks/{cluster}.lock")
    } else {
        format!("locks/{cluster}.{purpose}.lock")
    }
}

/// Who holds a lock, as it says.
pub(crate) type Holder = LockBody;

/// Who holds `cluster`'s lock for `purpose` now: `None` when nobody does
/// (no lock, one that is unreadable, or one past its expiry).
pub(crate) fn holder(
    repo: &dyn Repository,
    cluster: &str,
    purpose: &str,
) -> Result<Option<Holder>, RepoError> {
    Ok(match read_lock(repo, &lock_key(cluster, purpose))? {
        Found::Held(h) if h.expires_at > chrono::Utc::now().timestamp() => Some(h),
        _ => None,
    })
}

pub struct RepoLock {
    repo: Arc<dyn Repository>,
    key: String,
    token: String,
    /// Set by the renewal task when it finds the lock gone or another's.
    lost: Arc<std::sync::Mutex<Option<String>>>,
    /// When the lock this run last wrote expires (Unix seconds): past it,
    /// another run may have taken it over, whatever this run wrote since.
    held_until: Arc<std::sync::atomic::AtomicI64>,
    renew: tokio::task::JoinHandle<()>,
}

/// A token no other acquisition has: the kernel's random bytes.
pub(crate) fn new_token() -> String {
    let mut bytes = [0u8; 16];
    let read = std::fs::File::open("/dev/urandom")
        .and_then(|mut f| std::io::Read::read_exact(&mut f, &mut bytes));
    if read.is_err() {
        // No /dev/urandom: pid and clock still tell two runs apart.
        let t = chrono::Utc::now().timestamp_nanos_opt().unwrap_or_default();
        bytes[..8].copy_from_slice(&t.to_le_bytes());
        bytes[8..12].copy_from_slice(&std::process::id().to_le_bytes());
    }
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The most a lock may take: shardcut writes a few hundred bytes. A larger
/// one is unreadable (never read into memory), as a lock cut short is.
const LOCK_MAX: u64 = 64 << 10;

/// A lock as read from the repository.
enum Found {
    Absent,
    Held(LockBody),
    /// Not a lock shardcut wrote whole (cut short by a crash, or not
    /// shardcut's), and why.
    Unreadable(String),
}

/// The lock at `key`, read no larger than [`LOCK_MAX`].
fn read_lock(repo: &dyn Repository, key: &str) -> Result<Found, RepoError> {
    match repo.get_at_most(key, LOCK_MAX) {
        Ok(data) => Ok(match serde_json::from_slice::<LockBody>(&data) {
            Ok(body) => Found::Held(body),
            Err(e) => Found::Unreadable(format!("not a lock: {e}")),
        }),
        Err(RepoError::TooLarge { size, .. }) => Ok(Found::Unreadable(format!(
            "{size} bytes, more than the {LOCK_MAX} a lock takes: not read"
        ))),
        Err(RepoError::NotFound { .. }) => Ok(Found::Absent),
        Err(e) => Err(e),
    }
}

/// The token in the lock at `key` now: `Ok(None)` when there is no lock,
/// empty when it is unreadable.
fn current_token(repo: &dyn Repository, key: &str) -> Result<Option<String>, RepoError> {
    Ok(match read_lock(repo, key)? {
        Found::Absent => None,
        Found::Held(body) => Some(body.token),
        Found::Unreadable(_) => Some(String::new()),
    })
}

enum Renewal {
    Done,
    /// The lock is another's, or gone: final.
    Lost(String),
    /// The repository failed; retried at the next renewal unless the lock
    /// has expired meanwhile.
    Failed(String),
}

/// One renewal: rewrites the lock if it is still this run's.
fn renew_once(repo: &dyn Repository, key: &str, fresh: &LockBody) -> Renewal {
    match current_token(repo, key) {
        Ok(Some(t)) if t == fresh.token => {
            let data = serde_json::to_vec(fresh).unwrap_or_default();
            match repo.put(key, &data) {
                Ok(()) => Renewal::Done,
                Err(e) => Renewal::Failed(format!("renewal failed: {e}")),
            }
        }
        Ok(Some(_)) => Renewal::Lost("another run took it over".into()),
        Ok(None) => Renewal::Lost("it was removed".into()),
        Err(e) => Renewal::Failed(format!("cannot read it: {e}")),
    }
}

/// This machine's name, as locks and job records give it.
pub(crate) fn host_name() -> String {
    std::fs::read_to_string("/etc/hostname")
        .map(|h| h.trim().to_string())
        .unwrap_or_else(|_| "localhost".into())
}

/// This boot of this machine (`/proc/sys/kernel/random/boot_id`) and this
/// process's pid namespace (`/proc/self/ns/pid`): processes with the same
/// value see each other's pids. Containers share their machine's boot but
/// not its pids. Empty where the machine tells neither. Read once a
/// process: a service's recovery compares it with each of up to 5,000
/// job records.
pub(crate) fn boot_id() -> String {
    static BOOT: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    BOOT.get_or_init(read_boot_id).clone()
}

fn read_boot_id() -> String {
    // Test hook: a process that passes for another machine's of this
    // host name.
    if let Ok(boot) = std::env::var("SHARDCUT_TEST_BOOT_ID") {
        return boot;
    }
    let boot = std::fs::read_to_string("/proc/sys/kernel/random/boot_id")
        .map(|b| b.trim().to_string())
        .unwrap_or_default();
    let pids = std::fs::read_link("/proc/self/ns/pid")
        .map(|l| l.to_string_lossy().into_owned())
        .unwrap_or_default();
    if boot.is_empty() && pids.is_empty() {
        String::new()
    } else {
        format!("{boot} {pids}")
    }
}

/// Whether process `pid` of this host has ended.
pub(crate) fn gone_here(host: &str, pid: u32) -> bool {
    host == host_name()
        && pid != std::process::id()
        && !std::path::Path::new(&format!("/proc/{pid}")).exists()
}

fn body(purpose: &str, started_at: &str) -> LockBody {
    let host = host_name();
    LockBody {
        owner: format!("pid {} on {host}", std::process::id()),
        pid: std::process::id(),
        host,
        purpose: purpose.to_string(),
        started_at: started_at.to_string(),
        expires_at: chrono::Utc::now().timestamp() + LOCK_TTL.as_secs() as i64,
        token: String::new(),
        boot: boot_id(),
    }
}

impl RepoLock {
    pub fn acquire(
        repo: Arc<dyn Repository>,
        cluster: &str,
        purpose: &str,
    ) -> Result<RepoLock, LockError> {
        let key = lock_key(cluster, purpose);
        let started_at = chrono::Utc::now().to_rfc3339();
        let token = new_token();
        let fresh = |p: &str, s: &str, t: &str| LockBody {
            token: t.to_string(),
            ..body(p, s)
        };
        for _ in 0..2 {
            let written = fresh(purpose, &started_at, &token);
            let data = serde_json::to_vec(&written).unwrap_or_default();
            match repo.put_if_absent(&key, &data) {
                Ok(()) => {
                    let lost = Arc::new(std::sync::Mutex::new(None));
                    let held_until =
                        Arc::new(std::sync::atomic::AtomicI64::new(written.expires_at));
                    let renew = tokio::spawn(renew_loop(
                        repo.clone(),
                        key.clone(),
                        written,
                        (lost.clone(), held_until.clone()),
                    ));
                    return Ok(RepoLock {
                        repo,
                        key,
                        token,
                        lost,
                        held_until,
                        renew,
                    });
                }
                Err(RepoError::AlreadyExists { .. }) => {
                    // A lock this run cannot open (another key) is not a
                    // crashed one: taking it over would break a live run's.
                    let found = match read_lock(repo.as_ref(), &key) {
                        Ok(found) => found,
                        Err(e) if e.is_key_problem() => return Err(e.into()),
                        Err(e) => Found::Unreadable(e.to_string()),
                    };
                    // Expired or unreadable (a crash mid-write): taken over,
                    // unless it changed since it was read (another run took
                    // it over first).
                    let (seen, lock) = match found {
                        Found::Held(h)
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
                            });
                        }
                        Found::Held(h) => (h.token, format!("the expired lock {key}")),
                        Found::Unreadable(why) => {
                            (String::new(), format!("the unreadable lock {key} ({why})"))
                        }
                        // Gone since: the next try puts this run's.
                        Found::Absent => continue,
                    };
                    if current_token(repo.as_ref(), &key)? == Some(seen) {
                        tracing::warn!("taking over {lock}");
                        repo.delete(&key)?;
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

    /// Fails with [`LockError::Lost`] unless this run still holds the
    /// lock. Called before each commit (a manifest, a capture round, a
    /// deletion), so a run that lost its lock changes nothing more.
    pub fn ensure_held(&self) -> Result<(), LockError> {
        let lost = |why: String| LockError::Lost {
            key: self.key.clone(),
            why,
        };
        if let Some(why) = self.lost.lock().ok().and_then(|g| g.clone()) {
            return Err(lost(why));
        }
        let until = self.held_until.load(std::sync::atomic::Ordering::SeqCst);
        if chrono::Utc::now().timestamp() >= until {
            return Err(lost(format!(
                "it expired at {} before it was renewed: another run may have taken it over",
                chrono::DateTime::from_timestamp(until, 0)
                    .map(|t| t.to_rfc3339())
                    .unwrap_or_default()
            )));
        }
        match current_token(self.repo.as_ref(), &self.key)? {
            Some(t) if t == self.token => Ok(()),
            Some(_) => Err(lost("another run took it over".into())),
            None => Err(lost("it was removed".into())),
        }
    }

    /// Removes the lock, if it is still this run's.
    pub fn release(self) {
        self.renew.abort();
        match current_token(self.repo.as_ref(), &self.key) {
            Ok(Some(t)) if t == self.token => {
                if let Err(e) = self.repo.delete(&self.key) {
                    tracing::warn!("could not remove the repository lock {}: {e}", self.key);
                }
            }
            Ok(_) => tracing::warn!(
                "the repository lock {} is no longer this run's; left as it is",
                self.key
            ),
            Err(e) => tracing::warn!("could not read the repository lock {}: {e}", self.key),
        }
    }
}

/// A lock dropped without `release` (its run panicked or was cancelled)
/// stops being renewed: it expires, and the next run takes it over.
impl Drop for RepoLock {
    fn drop(&mut self) {
        self.renew.abort();
    }
}

/// Renews the lock every third of its lifetime until it is found lost,
/// or until renewals have failed for longer than the lock lives.
async fn renew_loop(
    repo: Arc<dyn Repository>,
    key: String,
    template: LockBody,
    (lost, held_until): (
        Arc<std::sync::Mutex<Option<String>>>,
        Arc<std::sync::atomic::AtomicI64>,
    ),
) {
    let mut renewed = std::time::Instant::now();
    loop {
        tokio::time::sleep(LOCK_TTL / 3).await;
        let fresh = LockBody {
            expires_at: chrono::Utc::now().timestamp() + LOCK_TTL.as_secs() as i64,
            token: template.token.clone(),
            purpose: template.purpose.clone(),
            started_at: template.started_at.clone(),
            owner: template.owner.clone(),
            host: template.host.clone(),
            pid: template.pid,
            boot: template.boot.clone(),
        };
        let expires_at = fresh.expires_at;
        let (r, k) = (repo.clone(), key.clone());
        let outcome = tokio::task::spawn_blocking(move || renew_once(r.as_ref(), &k, &fresh))
            .await
            .unwrap_or_else(|e| Renewal::Failed(format!("renewal task failed: {e}")));
        // The lock is only checked, then written: a write that lands after
        // the lock it renews expired may overwrite another run's, which
        // took it over meanwhile. Neither run can trust it then.
        let expired =
            chrono::Utc::now().timestamp() >= held_until.load(std::sync::atomic::Ordering::SeqCst);
        let outcome = match outcome {
            Renewal::Done if expired => {
                Renewal::Lost("the renewal landed after the lock had expired".into())
            }
            other => other,
        };
        let (why, gone) = match outcome {
            Renewal::Done => {
                held_until.store(expires_at, std::sync::atomic::Ordering::SeqCst);
                renewed = std::time::Instant::now();
                continue;
            }
            Renewal::Lost(why) => (why, true),
            Renewal::Failed(why) => (why, false),
        };
        if gone || renewed.elapsed() >= LOCK_TTL {
            tracing::error!("repository lock {key} lost: {why}");
            if let Ok(mut g) = lost.lock() {
                *g = Some(why);
            }
            return;
        }
        tracing::warn!("could not renew the repository lock {key}: {why}; retrying");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use shard_agent::repo::LocalRepository;

    fn repo(dir: &std::path::Path) -> Arc<dyn Repository> {
        Arc::new(LocalRepository::open(dir).expect("repository"))
    }

    /// A run whose lock expired before it was renewed (renewals failed or
    /// landed late) stops committing, even while the stored lock still
    /// carries its token: another run may have taken it over meanwhile, or
    /// have had it overwritten by the late renewal.
    #[tokio::test]
    async fn a_lock_past_its_expiry_is_no_longer_held() {
        let dir = tempfile::tempdir().expect("temp dir");
        let lock = RepoLock::acquire(repo(dir.path()), "shop", "backup").expect("acquire");
        lock.ensure_held().expect("held right after acquiring");
        lock.held_until.store(
            chrono::Utc::now().timestamp() - 1,
            std::sync::atomic::Ordering::SeqCst,
        );
        match lock.ensure_held() {
            Err(LockError::Lost { why, .. }) => {
                assert!(why.contains("before it was renewed"), "{why}")
            }
            other => panic!("expected Lost, got {other:?}"),
        }
    }

    #[tokio::test]
    async fn a_lock_taken_over_by_another_run_is_lost_and_left_alone() {
        let dir = tempfile::tempdir().expect("temp dir");
        let repo = repo(dir.path());
        let lock = RepoLock::acquire(repo.clone(), "shop", "backup").expect("acquire");
        lock.ensure_held().expect("held right after acquiring");
        // A second run while it is held is refused.
        assert!(matches!(
            RepoLock::acquire(repo.clone(), "shop", "backup"),
            Err(LockError::Held { .. })
        ));
        // Another run takes it over (as after an expiry): this run finds
        // out before its next commit, and its release leaves the other's.
        let other = LockBody {
            token: "another-run".into(),
            ..body("backup", "then")
        };
        let key = "locks/shop.lock";
        repo.put(key, &serde_json::to_vec(&other).expect("json"))
            .expect("put");
        match lock.ensure_held() {
            Err(LockError::Lost { why, .. }) => assert!(why.contains("took it over"), "{why}"),
            other => panic!("expected Lost, got {other:?}"),
        }
        lock.release();
        let left: LockBody =
            serde_json::from_slice(&repo.get(key).expect("still there")).expect("json");
        assert_eq!(left.token, "another-run");
    }

    #[tokio::test]
    async fn a_removed_lock_is_lost_and_a_released_one_is_gone() {
        let dir = tempfile::tempdir().expect("temp dir");
        let repo = repo(dir.path());
        let lock = RepoLock::acquire(repo.clone(), "shop", "capture").expect("acquire");
        repo.delete("locks/shop.capture.lock").expect("delete");
        assert!(matches!(lock.ensure_held(), Err(LockError::Lost { .. })));
        lock.release();
        let again = RepoLock::acquire(repo.clone(), "shop", "capture").expect("free again");
        again.release();
        assert!(matches!(
            repo.get("locks/shop.capture.lock"),
            Err(RepoError::NotFound { .. })
        ));
    }

    /// A lock of a process this machine does not have, on a host of this
    /// name: taken over at once when it is of this boot (the process died
    /// here), but not when it is of another boot, which may be another
    /// machine of the same name whose run is alive.
    #[tokio::test]
    async fn a_lock_of_another_boot_of_this_host_name_waits_for_its_expiry() {
        let dir = tempfile::tempdir().expect("temp dir");
        let repo = repo(dir.path());
        // A pid no process has: above the kernel's largest.
        let gone = LockBody {
            token: "gone".into(),
            pid: 4_194_305,
            ..body("backup", "then")
        };
        for (boot, taken) in [(boot_id(), true), ("another-boot".to_string(), false)] {
            let lock = LockBody {
                boot: boot.clone(),
                ..gone.clone()
            };
            repo.put("locks/shop.lock", &serde_json::to_vec(&lock).expect("json"))
                .expect("put");
            match RepoLock::acquire(repo.clone(), "shop", "backup") {
                Ok(l) if taken => l.release(),
                Err(LockError::Held { .. }) if !taken => {
                    let h = holder(repo.as_ref(), "shop", "backup").expect("read");
                    assert_eq!(h.map(|h| h.pid), Some(4_194_305));
                }
                Ok(_) => panic!("boot {boot}: taken over"),
                Err(e) => panic!("boot {boot}: {e}"),
            }
        }
    }

    #[tokio::test]
    async fn an_expired_lock_is_taken_over_with_a_new_token() {
        let dir = tempfile::tempdir().expect("temp dir");
        let repo = repo(dir.path());
        let stale = LockBody {
            token: "crashed-run".into(),
            host: "another-host".into(),
            expires_at: chrono::Utc::now().timestamp() - 1,
            ..body("backup", "long ago")
        };
        repo.put(
            "locks/shop.lock",
            &serde_json::to_vec(&stale).expect("json"),
        )
        .expect("put");
        let lock = RepoLock::acquire(repo.clone(), "shop", "backup").expect("take over");
        lock.ensure_held().expect("held");
        let now: LockBody =
            serde_json::from_slice(&repo.get("locks/shop.lock").expect("lock")).expect("json");
        assert_ne!(now.token, "crashed-run");
        assert_eq!(now.token.len(), 32);
        lock.release();
    }

    #[tokio::test]
    async fn a_lock_sealed_with_another_key_is_not_taken_over() {
        use shard_agent::repo::SealedRepository;
        use topology::{Encryption, RepositoryKey};
        let dir = tempfile::tempdir().expect("temp dir");
        let place = repo(dir.path());
        let sealed = |byte: u8| -> Arc<dyn Repository> {
            Arc::new(SealedRepository::new(
                place.clone(),
                &Encryption {
                    key: RepositoryKey::from_bytes([byte; 32]),
                    old_keys: Vec::new(),
                },
            ))
        };
        let right = sealed(1);
        let lock = RepoLock::acquire(right.clone(), "shop", "backup").expect("acquire");
        // A run with the wrong key cannot read the lock: that is its error,
        // not a sign of a crashed run whose lock may be taken over.
        match RepoLock::acquire(sealed(2), "shop", "backup") {
            Err(LockError::Repo(e)) => assert!(e.is_key_problem(), "{e}"),
            Err(other) => panic!("expected the key problem, got {other}"),
            Ok(_) => panic!("a live lock was taken over by a run with another key"),
        }
        lock.ensure_held().expect("still held by the right run");
        lock.release();
    }
}
