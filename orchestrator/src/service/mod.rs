//! `shardcut serve`: the workflow layer as a long-running service. Jobs
//! (backups, drills, restores, expiry) run on request over a REST API or
//! on the topologies' schedules, one at a time per cluster, and every job
//! is kept in the cluster's history in its repository. A dashboard draws
//! the history's trends.
//!
//! One module per concern: `jobs` (running and recording a job),
//! `schedule` (cron and capture), `api` (routes, auth), `openapi` (the
//! API's description), `metrics` (Prometheus text), `dashboard` (the page).

mod api;
mod dashboard;
mod jobs;
mod metrics;
mod openapi;
mod schedule;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use shard_agent::manifest::keys;
use shard_agent::repo::RepoError;
use topology::{Secret, Topology};

use crate::flow::history::{History, JobKind, JobRecord, JobStatus};
use crate::flow::status::StreamStatus;
use crate::lock::Holder;
use jobs::{lock, Job, JobProgress};

/// How far back the service reads a cluster's history.
pub const HISTORY_DAYS: i64 = 90;
/// A scheduled expiry removes job records older than this.
pub const HISTORY_KEEP_DAYS: i64 = 400;
/// At most this many records per cluster are read.
const HISTORY_LIMIT: usize = 5000;

/// Test-only fault hooks.
#[derive(Debug, Clone, Default)]
pub struct Hooks {
    /// Hold every backup's write block this long.
    pub hold_block: Option<Duration>,
}

/// How `serve` runs.
pub struct Config {
    pub topologies: Vec<Topology>,
    /// Topologies restores may write into, by cluster name.
    pub targets: BTreeMap<String, PathBuf>,
    pub token: Secret,
    pub tls: Option<Arc<rustls::ServerConfig>>,
    pub max_connections: usize,
    /// How long running jobs may take to finish after SIGTERM before they
    /// are cancelled.
    pub shutdown_timeout: Duration,
    pub hooks: Hooks,
}

/// Capture as followed by the service: the last round's streams, or why
/// it stopped.
#[derive(Default)]
pub struct CaptureState {
    pub streams: Vec<StreamStatus>,
    pub at: Option<String>,
    pub error: Option<String>,
    pub restarts: u64,
}

/// One cluster the service runs jobs for.
pub struct Cluster {
    pub topology: Topology,
    pub drill_target: Option<PathBuf>,
    pub history: History,
    /// The job running now.
    busy: Mutex<Option<String>>,
    /// Records of the last [`HISTORY_DAYS`], oldest first: loaded at start,
    /// kept up to date with this service's jobs, reloaded now and then for
    /// other hosts' runs.
    records: Mutex<Vec<JobRecord>>,
    pub capture: Mutex<CaptureState>,
}

impl Cluster {
    pub fn name(&self) -> &str {
        &self.topology.cluster
    }

    /// Saves a record (and a result and report) in the history; a failure
    /// is logged: the job's outcome stands, in memory and in the log.
    async fn save(
        &self,
        record: &JobRecord,
        result: Option<serde_json::Value>,
        report: Option<String>,
    ) {
        {
            let mut records = lock(&self.records);
            match records.iter_mut().find(|r| r.id == record.id) {
                Some(r) => *r = record.clone(),
                None => records.push(record.clone()),
            }
        }
        let (history, rec) = (self.history.clone(), record.clone());
        let saved = tokio::task::spawn_blocking(move || {
            history.save_job(&rec, result.as_ref(), report.as_deref())
        })
        .await;
        match saved {
            Ok(Ok(())) => {}
            Ok(Err(e)) => tracing::error!("job {}: history not written: {e}", record.id),
            Err(e) => tracing::error!("job {}: history not written: {e}", record.id),
        }
    }

    /// The records of the history, oldest first.
    pub fn records(&self) -> Vec<JobRecord> {
        lock(&self.records).clone()
    }

    /// The shard after the one drilled last (by name order), the first
    /// one if none was.
    fn next_drill_shard(&self) -> String {
        let mut names: Vec<&str> = self
            .topology
            .shards
            .iter()
            .map(|s| s.name.as_str())
            .collect();
        names.sort_unstable();
        let last = lock(&self.records)
            .iter()
            .rev()
            .filter(|r| r.kind == JobKind::Drill && r.status != JobStatus::Skipped)
            .find_map(|r| r.shard.clone());
        let next = match last.and_then(|l| names.iter().position(|n| *n == l)) {
            Some(i) => names[(i + 1) % names.len()],
            None => names[0],
        };
        next.to_string()
    }

    /// Rereads the history (other hosts' and the command line's runs).
    /// `live`: the jobs this service runs now, whose records in memory are
    /// newer than any read back.
    async fn reload(&self, live: &std::collections::HashSet<String>) {
        let history = self.history.clone();
        let since = chrono::Utc::now() - chrono::Duration::days(HISTORY_DAYS);
        let finished: std::collections::HashMap<String, JobRecord> = lock(&self.records)
            .iter()
            .filter(|r| r.status.is_final())
            .map(|r| (r.id.clone(), r.clone()))
            .collect();
        let known = move |id: &str| finished.get(id).cloned();
        let loaded = match tokio::task::spawn_blocking(move || {
            history.load_new(since, HISTORY_LIMIT, &known)
        })
        .await
        {
            Ok(Ok(loaded)) => loaded,
            Ok(Err(e)) => {
                tracing::warn!("cluster {}: cannot read the history: {e}", self.name());
                return;
            }
            Err(e) => {
                tracing::warn!("cluster {}: cannot read the history: {e}", self.name());
                return;
            }
        };
        let floor = (chrono::Utc::now() - chrono::Duration::days(HISTORY_DAYS))
            .format("%Y%m%dT%H%M%S")
            .to_string();
        let mut records = lock(&self.records);
        let memory = std::mem::take(&mut *records);
        *records = merge(memory, loaded, live, &floor, HISTORY_LIMIT);
    }

    /// One record, by ID.
    fn find(&self, id: &str) -> Option<JobRecord> {
        lock(&self.records).iter().find(|r| r.id == id).cloned()
    }
}

/// The records in memory merged with those read back: kept from memory
/// what is final there (it may have ended while the history was read) and
/// the jobs running here (`live`); the rest as read (another process's
/// job ends there, not here). Oldest first, none older than `floor`, and
/// at most `limit` besides the live ones (the oldest go first): memory
/// must not grow with requests the service turned away, each of which is
/// a record.
fn merge(
    memory: Vec<JobRecord>,
    loaded: Vec<JobRecord>,
    live: &std::collections::HashSet<String>,
    floor: &str,
    limit: usize,
) -> Vec<JobRecord> {
    let mut mine: std::collections::HashMap<String, JobRecord> = memory
        .into_iter()
        .filter(|r| r.status.is_final() || live.contains(&r.id))
        .map(|r| (r.id.clone(), r))
        .collect();
    let mut merged: Vec<JobRecord> = loaded
        .into_iter()
        .map(|r| mine.remove(&r.id).unwrap_or(r))
        .collect();
    merged.extend(mine.into_values().filter(|m| m.id.as_str() >= floor));
    merged.sort_by(|a, b| a.id.cmp(&b.id));
    let mut excess = merged.len().saturating_sub(limit);
    merged.retain(|r| {
        let drop = excess > 0 && !live.contains(&r.id);
        excess -= usize::from(drop);
        !drop
    });
    merged
}

/// The service: its clusters, its jobs, and how to stop.
pub struct Service {
    pub clusters: BTreeMap<String, Arc<Cluster>>,
    pub targets: BTreeMap<String, PathBuf>,
    token: Secret,
    tls: bool,
    jobs: Mutex<BTreeMap<String, Job>>,
    stopping: AtomicBool,
    /// Set once SIGTERM came: capture finishes its round and ends.
    capture_stop: Arc<AtomicBool>,
    hooks: Hooks,
}

impl Service {
    pub fn stopping(&self) -> bool {
        self.stopping.load(Ordering::Relaxed)
    }

    /// Keeps a running job's record and progress; a finished job is left
    /// to its cluster's records (saved before this is called).
    fn remember(&self, record: &JobRecord, progress: Option<Arc<JobProgress>>) {
        let mut jobs = lock(&self.jobs);
        if record.status.is_final() {
            jobs.remove(&record.id);
            return;
        }
        let abort = jobs.get(&record.id).and_then(|j| j.abort.clone());
        jobs.insert(
            record.id.clone(),
            Job {
                record: record.clone(),
                progress,
                abort,
            },
        );
    }

    /// A job by ID: this service's, or any in a cluster's history.
    pub fn job(&self, id: &str) -> Option<(JobRecord, Option<serde_json::Value>)> {
        if let Some(j) = lock(&self.jobs).get(id) {
            return Some((j.record.clone(), j.progress.as_ref().map(|p| p.to_json())));
        }
        self.clusters
            .values()
            .find_map(|c| c.find(id))
            .map(|r| (r, None))
    }

    /// The IDs of the jobs running here.
    fn live(&self) -> std::collections::HashSet<String> {
        lock(&self.jobs).keys().cloned().collect()
    }

    /// Jobs still running: ID and abort handle.
    fn running(&self) -> Vec<(String, Option<tokio::task::AbortHandle>)> {
        lock(&self.jobs)
            .values()
            .filter(|j| !j.record.status.is_final())
            .map(|j| (j.record.id.clone(), j.abort.clone()))
            .collect()
    }
}

/// Loads each cluster's history and marks what an earlier service (or
/// command) on this host left running as failed; a backup it left without
/// a manifest has its objects removed. A job whose process may still run
/// ([`liveness`]) is looked at again once its lock would have been renewed.
async fn recover(cluster: &Arc<Cluster>) {
    cluster.reload(&Default::default()).await;
    // Jobs cancelled while their work may still have been writing (their
    // backup is removed now if it has no manifest), and jobs whose process
    // ended before they did.
    let candidates: Vec<JobRecord> = cluster
        .records()
        .into_iter()
        .filter(|r| {
            if r.status.is_final() {
                r.cleanup
            } else {
                r.orphaned_here()
            }
        })
        .collect();
    if candidates.is_empty() {
        return;
    }
    // Read once for all of them: the lock changes only as often as it is
    // renewed.
    let holder = match lock_holder(cluster).await {
        Some(Ok(h)) => Some(h),
        _ => None,
    };
    let mut deferred = Vec::new();
    for r in candidates {
        match liveness(holder.as_ref(), &r) {
            Liveness::Ended => recover_one(cluster, r).await,
            Liveness::Maybe(holder) => {
                tracing::warn!(
                    "job {}: its process (pid {} on {}) may still run, on another machine or container of that name ({}): looking again once its repository lock would have been renewed",
                    r.id,
                    r.pid,
                    r.host,
                    if holder.is_some() {
                        "it holds the repository lock"
                    } else {
                        "its job is younger than a lock's lifetime"
                    }
                );
                deferred.push((r.id, holder));
            }
            Liveness::Unknown => tracing::warn!(
                "job {}: the repository lock cannot be read: left as it is",
                r.id
            ),
        }
    }
    if !deferred.is_empty() {
        tokio::spawn(look_again(cluster.clone(), deferred));
    }
}

/// Whether the process of a job may still run.
enum Liveness {
    /// It ran here (this boot, these pids) and is gone; or it holds no
    /// lock, and its job is older than a lock's lifetime.
    Ended,
    /// It holds the cluster's repository lock (that holder), or its job is
    /// too young to have taken it yet (none): it may run where this
    /// process cannot see it.
    Maybe(Option<Holder>),
    /// The lock cannot be read.
    Unknown,
}

/// Whether job `r`'s process may still run. A record of this host's name
/// from another boot or pid namespace may be another machine's or
/// container's of the same name, whose process this one cannot see: a
/// live one holds the cluster's repository lock, renewed every third of a
/// lock's lifetime, or is about to take it.
/// `holder` is who holds the cluster's lock (`None`: it cannot be read).
fn liveness(holder: Option<&Option<Holder>>, r: &JobRecord) -> Liveness {
    // A record without a boot (an older version's, or a machine that
    // tells none) is of no known boot: only the lock says.
    let this_boot = !r.boot.is_empty() && r.boot == crate::lock::boot_id();
    if this_boot && crate::lock::gone_here(&r.host, r.pid) {
        return Liveness::Ended;
    }
    match holder {
        Some(Some(h)) if holds(h, r) => Liveness::Maybe(Some(h.clone())),
        Some(_) if young(r) => Liveness::Maybe(None),
        Some(_) => Liveness::Ended,
        None => Liveness::Unknown,
    }
}

/// Whether the lock of `h` is held by the process of job `r`: its host,
/// pid and boot.
fn holds(h: &Holder, r: &JobRecord) -> bool {
    h.host == r.host && h.pid == r.pid && h.boot == r.boot
}

/// Whether job `r` started (or was queued) less than a lock's lifetime
/// ago: a backup saves its record before it takes the lock.
fn young(r: &JobRecord) -> bool {
    let since = r.started_at.as_deref().unwrap_or(&r.queued_at);
    crate::flow::history::parse_time(since).is_some_and(|t| {
        chrono::Utc::now().signed_duration_since(t).num_seconds()
            < crate::lock::LOCK_TTL.as_secs() as i64 + 5
    })
}

/// Who holds the cluster's repository lock for backups; `None` when the
/// reading task failed.
async fn lock_holder(cluster: &Cluster) -> Option<Result<Option<Holder>, RepoError>> {
    let repo = cluster.history.repository().clone();
    let name = cluster.name().to_string();
    tokio::task::spawn_blocking(move || crate::lock::holder(repo.as_ref(), &name, "backup"))
        .await
        .ok()
}

/// Recovers job `r`: a cancelled one's leftover backup removed, one whose
/// process ended marked failed.
async fn recover_one(cluster: &Cluster, mut r: JobRecord) {
    if !r.status.is_final() {
        return fail_orphan(cluster, r).await;
    }
    if let Some(id) = &r.backup_id {
        if discard_locked(cluster, id).await.is_none() {
            return;
        }
    }
    r.cleanup = false;
    cluster.save(&r, None, None).await;
}

/// [`discard_uncommitted`] holding the cluster's repository lock: a run
/// still writing that backup (its process judged gone by a clock or a
/// name that deceived) then loses its lock and commits nothing, rather
/// than a manifest naming objects removed here. `None` when the lock is
/// another run's now: the objects stay.
async fn discard_locked(cluster: &Cluster, id: &str) -> Option<ManifestState> {
    let repo = cluster.history.repository().clone();
    match crate::lock::RepoLock::acquire(repo, cluster.name(), "backup") {
        Ok(lock) => {
            let found = discard_uncommitted(cluster, id).await;
            lock.release();
            Some(found)
        }
        Err(e) => {
            tracing::warn!("backup {id}: its objects stay for now: {e}");
            None
        }
    }
}

/// The jobs `deferred` by [`recover`], with the lock holder each had,
/// looked at again once that lock would have been renewed (a lock's
/// lifetime, and a little): a job whose process renewed the same lock, or
/// whose young job took it since, is left to it; the others are
/// recovered.
async fn look_again(cluster: Arc<Cluster>, deferred: Vec<(String, Option<Holder>)>) {
    tokio::time::sleep(crate::lock::LOCK_TTL + Duration::from_secs(5)).await;
    let Some(Ok(now)) = lock_holder(&cluster).await else {
        tracing::warn!("the repository lock cannot be read: jobs left as they are");
        return;
    };
    // Other hosts' records as they are now; this service's job running
    // in the cluster stays as memory has it.
    let live = lock(&cluster.busy).iter().cloned().collect();
    cluster.reload(&live).await;
    let records = cluster.records();
    for (id, before) in deferred {
        let Some(r) = records.iter().find(|r| r.id == id).cloned() else {
            continue;
        };
        if !r.cleanup && r.status.is_final() {
            continue;
        }
        let alive = now.as_ref().is_some_and(|h| {
            holds(h, &r)
                && before
                    .as_ref()
                    .is_none_or(|b| h.token == b.token && h.expires_at > b.expires_at)
        });
        if alive {
            tracing::info!("job {id}: its process holds the repository lock: left to it");
        } else {
            recover_one(&cluster, r).await;
        }
    }
}

/// Marks job `r`, whose process ended before it finished, as failed; a
/// backup it left without a manifest has its objects removed.
async fn fail_orphan(cluster: &Cluster, mut r: JobRecord) {
    let mut why = format!(
        "interrupted: the process running it (pid {} on {}) ended before it finished",
        r.pid, r.host
    );
    if let (JobKind::Backup | JobKind::Incremental, Some(id)) = (r.kind, &r.backup_id) {
        match discard_locked(cluster, id).await {
            Some(ManifestState::Present) => why.push_str(&format!(
                "; backup {id} had been committed (its manifest is in the repository) and is kept"
            )),
            Some(_) => {}
            None => {
                // Removed at the next start, when the lock is free.
                r.cleanup = true;
            }
        }
    }
    tracing::warn!("job {}: {why}", r.id);
    r.finish(JobStatus::Failed, Some(why));
    cluster.save(&r, None, None).await;
}

/// Whether a backup's manifest is in the repository.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum ManifestState {
    Present,
    Absent,
    Unknown,
}

/// Removes the objects of backup `id` unless its manifest was written (a
/// backup is complete once its manifest exists, and is then kept).
pub(super) async fn discard_uncommitted(cluster: &Cluster, id: &str) -> ManifestState {
    // The ID comes from a job record, read from the repository: only an ID
    // of the form backups have names a folder to remove.
    if !is_backup_id(id) {
        tracing::warn!("job record names `{id}`, not a backup ID: nothing removed");
        return ManifestState::Unknown;
    }
    let repo = cluster.history.repository().clone();
    let (r, key) = (repo.clone(), keys::manifest(id));
    // Only a manifest known to be absent lets the objects go: when the
    // repository cannot tell, they stay (no command lists a folder without
    // a manifest as a backup; expire removes one with its cluster's
    // record, `flow::leftovers`).
    let found = match tokio::task::spawn_blocking(move || r.exists(&key)).await {
        Ok(Ok(true)) => ManifestState::Present,
        Ok(Ok(false)) => ManifestState::Absent,
        _ => ManifestState::Unknown,
    };
    if found == ManifestState::Absent {
        tracing::warn!("backup {id} has no manifest: removing its objects");
        crate::flow::steps::discard(repo, id).await;
    }
    found
}

/// `YYYYMMDDTHHMMSS.mmmZ-salt`, as `steps::new_backup_id` makes them.
fn is_backup_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= 64
        && id.starts_with(|c: char| c.is_ascii_digit())
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'-')
}

/// Serves until SIGTERM: recovers each cluster's history, starts the
/// schedules and capture, answers the API; on SIGTERM lets running jobs
/// finish (cancelling them after `shutdown_timeout`) and capture complete
/// its round.
pub async fn serve(config: Config, listener: tokio::net::TcpListener) -> anyhow::Result<()> {
    let mut clusters = BTreeMap::new();
    for topology in config.topologies {
        let history = History::open(&topology)?;
        let name = topology.cluster.clone();
        if clusters.contains_key(&name) {
            return Err(crate::exit::InvalidInput(format!(
                "two topologies name cluster {name}; serve each cluster once"
            ))
            .into());
        }
        let cluster = Cluster {
            drill_target: topology.drill_target.clone(),
            topology,
            history,
            busy: Mutex::new(None),
            records: Mutex::new(Vec::new()),
            capture: Mutex::new(CaptureState::default()),
        };
        clusters.insert(name, Arc::new(cluster));
    }
    // Before the API answers: what the last run left, and the scheduled
    // runs missed since.
    let start = chrono::Utc::now();
    for c in clusters.values() {
        recover(c).await;
        schedule::record_missed(c, start).await;
    }
    let service = Arc::new(Service {
        clusters,
        targets: config.targets,
        token: config.token,
        tls: config.tls.is_some(),
        jobs: Mutex::new(BTreeMap::new()),
        stopping: AtomicBool::new(false),
        capture_stop: Arc::new(AtomicBool::new(false)),
        hooks: config.hooks,
    });
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let mut background = tokio::task::JoinSet::new();
    for cluster in service.clusters.values() {
        background.spawn(schedule::run(
            service.clone(),
            cluster.clone(),
            start,
            stop_rx.clone(),
        ));
        if matches!(&cluster.topology.schedule, Some(s) if s.capture == topology::CaptureSchedule::Follow)
        {
            background.spawn(schedule::follow_capture(
                service.clone(),
                cluster.clone(),
                stop_rx.clone(),
            ));
        }
        let (c, s, mut rx) = (cluster.clone(), service.clone(), stop_rx.clone());
        background.spawn(async move {
            loop {
                tokio::select! {
                    _ = tokio::time::sleep(Duration::from_secs(60)) => c.reload(&s.live()).await,
                    _ = rx.changed() => return,
                }
            }
        });
    }
    let app = api::router(service.clone());
    let (http_tx, http_rx) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(shard_agent::serve::http::serve_router(
        listener,
        app,
        config.tls,
        config.max_connections,
        async move {
            let _ = http_rx.await;
        },
    ));
    shard_agent::serve::http::shutdown_signal().await;
    tracing::warn!("stopping: no new jobs; waiting for running jobs and the capture round");
    service.stopping.store(true, Ordering::Relaxed);
    service.capture_stop.store(true, Ordering::Relaxed);
    let _ = stop_tx.send(true);
    let deadline = tokio::time::Instant::now() + config.shutdown_timeout;
    while !service.running().is_empty() && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    for (id, abort) in service.running() {
        tracing::warn!(
            "job {id}: cancelled after {} s of shutdown",
            config.shutdown_timeout.as_secs()
        );
        if let Some(a) = abort {
            a.abort();
        }
    }
    // A cancelled job is recorded (and its partial backup removed) by the
    // task that watches it.
    let recorded = tokio::time::Instant::now() + Duration::from_secs(30);
    while !service.running().is_empty() && tokio::time::Instant::now() < recorded {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Capture ends after its round; the schedules at once.
    let rest = tokio::time::timeout(config.shutdown_timeout.max(Duration::from_secs(1)), async {
        while background.join_next().await.is_some() {}
    })
    .await;
    if rest.is_err() {
        tracing::warn!("capture did not finish its round in time; stopping it");
        background.abort_all();
    }
    let _ = http_tx.send(());
    let _ = server.await;
    Ok(())
}

#[cfg(test)]
mod tests {
    use crate::flow::history::{JobKind, JobRecord, JobStatus, Trigger};

    #[test]
    fn a_reread_history_keeps_what_memory_knows_better_and_nothing_stale() {
        let running = |kind| {
            let mut r = JobRecord::new("c", kind, Trigger::Api);
            r.start();
            r
        };
        let finished = |r: &JobRecord| {
            let mut f = r.clone();
            f.finish(JobStatus::Succeeded, None);
            f
        };
        // Another process's job, seen running, has ended since.
        let theirs = running(JobKind::Backup);
        // This service's job, running here now.
        let live = running(JobKind::Drill);
        // This service's job that ended while the history was read.
        let ended = running(JobKind::Expire);
        let memory = vec![theirs.clone(), live.clone(), finished(&ended)];
        let loaded = vec![finished(&theirs), live.clone(), ended.clone()];
        let live_ids = [live.id.clone()].into_iter().collect();
        let merged = super::merge(memory.clone(), loaded.clone(), &live_ids, "", 10);
        let status = |id: &str| merged.iter().find(|r| r.id == id).map(|r| r.status);
        assert_eq!(status(&theirs.id), Some(JobStatus::Succeeded));
        assert_eq!(status(&live.id), Some(JobStatus::Running));
        assert_eq!(status(&ended.id), Some(JobStatus::Succeeded));
        assert_eq!(merged.len(), 3);
        // Past the limit the oldest go (IDs sort by time, then kind), never
        // a live one.
        let ids = |m: &[JobRecord]| -> Vec<String> { m.iter().map(|r| r.id.clone()).collect() };
        let merged = super::merge(memory.clone(), loaded.clone(), &live_ids, "", 2);
        assert_eq!(ids(&merged), [live.id.clone(), ended.id.clone()]);
        let merged = super::merge(memory, loaded, &live_ids, "", 0);
        assert_eq!(ids(&merged), vec![live.id.clone()]);
    }

    #[test]
    fn only_backup_ids_name_a_folder_to_remove() {
        assert!(super::is_backup_id(&crate::flow::steps::new_backup_id()));
        for bad in ["", "../x", "a/b", ".", "..", "x y", "backups"] {
            assert!(!super::is_backup_id(bad), "{bad}");
        }
    }
}
