//! The cluster's job history: one record per backup, drill, restore or
//! expiry, whoever ran it (`shardcut serve`, or the command line), kept in
//! the cluster's repository so that every host working on the cluster reads
//! the same history, on object storage too.
//!
//! Keys: `history/<cluster>/jobs/<id>.json` (the record, rewritten as the job moves
//! from queued to running to its end), `<id>.result.json` (the document the
//! command's `--json` prints) and, for drills and restores,
//! `<id>.report.html`. A job ID starts with its UTC time, so keys sort by
//! time and old records are skipped without being read.

use std::sync::Arc;

use serde::{Deserialize, Serialize};
use shard_agent::manifest::Manifest;
use shard_agent::repo::{RepoError, Repository};
use topology::Topology;

use super::restore::Outcome;

/// A record is a few hundred bytes; anything larger is not one of ours.
const MAX_RECORD: u64 = 64 << 10;
/// A drill's document lists every table; thousands of tables fit.
const MAX_RESULT: u64 = 64 << 20;

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum JobKind {
    Backup,
    Incremental,
    Drill,
    Restore,
    Expire,
}

impl JobKind {
    pub const ALL: [JobKind; 5] = [
        JobKind::Backup,
        JobKind::Incremental,
        JobKind::Drill,
        JobKind::Restore,
        JobKind::Expire,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            JobKind::Backup => "backup",
            JobKind::Incremental => "incremental",
            JobKind::Drill => "drill",
            JobKind::Restore => "restore",
            JobKind::Expire => "expire",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum JobStatus {
    Queued,
    Running,
    Succeeded,
    Failed,
    Skipped,
}

impl JobStatus {
    pub const ALL: [JobStatus; 5] = [
        JobStatus::Queued,
        JobStatus::Running,
        JobStatus::Succeeded,
        JobStatus::Failed,
        JobStatus::Skipped,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            JobStatus::Queued => "queued",
            JobStatus::Running => "running",
            JobStatus::Succeeded => "succeeded",
            JobStatus::Failed => "failed",
            JobStatus::Skipped => "skipped",
        }
    }

    pub fn is_final(self) -> bool {
        matches!(
            self,
            JobStatus::Succeeded | JobStatus::Failed | JobStatus::Skipped
        )
    }
}

/// Who started a job.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Trigger {
    Schedule,
    Api,
    Cli,
}

/// The figures a job's trends are drawn from.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Figures {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub quality: Option<QualityFigures>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rto_seconds: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rpo_seconds: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bytes_stored: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub backup_seconds: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub write_block_ms: Option<u64>,
}

#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct QualityFigures {
    pub score: f64,
    pub recovered: f64,
    pub complete: f64,
    pub available: f64,
}

/// One job, as kept in the history.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct JobRecord {
    pub id: String,
    pub cluster: String,
    pub kind: JobKind,
    pub status: JobStatus,
    pub trigger: Trigger,
    /// Where it ran: a restarted service finds its own interrupted jobs.
    pub host: String,
    pub pid: u32,
    /// The host's boot: after a reboot the pid names another process.
    #[serde(default)]
    pub boot: String,
    pub queued_at: String,
    #[serde(default)]
    pub started_at: Option<String>,
    #[serde(default)]
    pub finished_at: Option<String>,
    /// The shard a drill restores.
    #[serde(default)]
    pub shard: Option<String>,
    /// The backup a backup job writes, or a drill or restore reads.
    #[serde(default)]
    pub backup_id: Option<String>,
    /// Why it failed or was skipped.
    #[serde(default)]
    pub error: Option<String>,
    #[serde(default)]
    pub figures: Figures,
    /// A report page was stored with it (drills and restores).
    #[serde(default)]
    pub has_report: bool,
    /// A backup this job may have left without a manifest, whose objects
    /// the next start removes (a job cancelled while its work may still
    /// be writing).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub cleanup: bool,
}

impl JobRecord {
    /// A new record, queued now on this host.
    pub fn new(cluster: &str, kind: JobKind, trigger: Trigger) -> JobRecord {
        let now = chrono::Utc::now();
        let id = format!(
            "{}-{}-{}",
            now.format("%Y%m%dT%H%M%S%3fZ"),
            kind.as_str(),
            &crate::lock::new_token()[..8]
        );
        JobRecord {
            id,
            cluster: cluster.to_string(),
            kind,
            status: JobStatus::Queued,
            trigger,
            host: crate::lock::host_name(),
            pid: std::process::id(),
            boot: crate::lock::boot_id(),
            queued_at: now.to_rfc3339(),
            started_at: None,
            finished_at: None,
            shard: None,
            backup_id: None,
            error: None,
            figures: Figures::default(),
            has_report: false,
            cleanup: false,
        }
    }

    pub fn start(&mut self) {
        self.status = JobStatus::Running;
        self.started_at = Some(chrono::Utc::now().to_rfc3339());
    }

    pub fn finish(&mut self, status: JobStatus, error: Option<String>) {
        self.status = status;
        self.error = error;
        self.finished_at = Some(chrono::Utc::now().to_rfc3339());
    }

    /// Seconds from start to end, once finished.
    pub fn duration_seconds(&self) -> Option<f64> {
        let start = parse_time(self.started_at.as_deref()?)?;
        let end = parse_time(self.finished_at.as_deref()?)?;
        Some((end - start).num_milliseconds() as f64 / 1000.0)
    }

    /// Whether the process that ran it has ended, seen from this process
    /// just started (which has no job yet: a record with its own pid is a
    /// predecessor's that had the same pid, as a container's pid 1 does).
    pub fn orphaned_here(&self) -> bool {
        self.host == crate::lock::host_name()
            && ((!self.boot.is_empty() && self.boot != crate::lock::boot_id())
                || self.pid == std::process::id()
                || crate::lock::gone_here(&self.host, self.pid))
    }

    /// When it was queued.
    pub fn queued(&self) -> Option<chrono::DateTime<chrono::Utc>> {
        parse_time(&self.queued_at)
    }
}

pub fn parse_time(text: &str) -> Option<chrono::DateTime<chrono::Utc>> {
    chrono::DateTime::parse_from_rfc3339(text)
        .ok()
        .map(|t| t.with_timezone(&chrono::Utc))
}

/// A job ID as this module makes them: time, kind, random hex. Anything
/// else (from a URL, say) never becomes a repository key.
pub fn is_job_id(id: &str) -> bool {
    !id.is_empty() && id.len() <= 64 && id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
}

/// The figures of a backup.
pub fn backup_figures(m: &Manifest) -> Figures {
    let seconds = parse_time(&m.started_at)
        .zip(parse_time(&m.finished_at))
        .map(|(a, b)| (b - a).num_milliseconds() as f64 / 1000.0);
    Figures {
        bytes_stored: Some(m.shards.values().map(|s| s.bytes_stored).sum()),
        backup_seconds: seconds,
        write_block_ms: Some(m.cut.write_block_ms),
        ..Figures::default()
    }
}

/// The figures of a verified drill or restore.
pub fn outcome_figures(o: &Outcome) -> Figures {
    Figures {
        quality: Some(QualityFigures {
            score: o.q.score,
            recovered: o.q.recovered,
            complete: o.q.complete,
            available: o.q.available,
        }),
        rto_seconds: Some(o.rto),
        rpo_seconds: Some(o.rpo),
        ..Figures::default()
    }
}

/// The history of one cluster, in its repository.
#[derive(Clone)]
pub struct History {
    repo: Arc<dyn Repository>,
    /// `history/<cluster>/jobs/`: clusters that share a repository keep
    /// histories of their own.
    jobs: String,
}

impl History {
    /// The history in the topology's repository (the main one, never a
    /// replica: a copy does not carry it).
    pub fn open(topology: &Topology) -> Result<History, RepoError> {
        Ok(History::in_repository(
            super::open_repository(topology)?,
            &topology.cluster,
        ))
    }

    /// The history of `cluster` in `repo` (a cluster name is a safe key
    /// segment: the topology checks it).
    pub fn in_repository(repo: Arc<dyn Repository>, cluster: &str) -> History {
        History {
            repo,
            jobs: format!("history/{cluster}/jobs/"),
        }
    }

    fn key(&self, id: &str, suffix: &str) -> String {
        format!("{}{id}{suffix}", self.jobs)
    }

    /// The repository the history lies in.
    pub fn repository(&self) -> &Arc<dyn Repository> {
        &self.repo
    }

    /// Saves a job: its result and report first, then the record that
    /// says they are there.
    pub fn save_job(
        &self,
        record: &JobRecord,
        result: Option<&serde_json::Value>,
        report: Option<&str>,
    ) -> Result<(), RepoError> {
        if let Some(doc) = result {
            self.save_result(&record.id, doc)?;
        }
        if let Some(html) = report {
            self.save_report(&record.id, html)?;
        }
        self.save(record)
    }

    pub fn save(&self, record: &JobRecord) -> Result<(), RepoError> {
        let data = serde_json::to_vec_pretty(record).unwrap_or_default();
        self.repo.put(&self.key(&record.id, ".json"), &data)
    }

    pub fn save_result(&self, id: &str, doc: &serde_json::Value) -> Result<(), RepoError> {
        let data = serde_json::to_vec_pretty(doc).unwrap_or_default();
        self.repo.put(&self.key(id, ".result.json"), &data)
    }

    pub fn save_report(&self, id: &str, html: &str) -> Result<(), RepoError> {
        self.repo
            .put(&self.key(id, ".report.html"), html.as_bytes())
    }

    /// The records queued since `since`, oldest first, at most `limit`
    /// (the newest). A record that cannot be read is skipped with a
    /// warning: one damaged object does not hide the rest.
    pub fn load(
        &self,
        since: chrono::DateTime<chrono::Utc>,
        limit: usize,
    ) -> Result<Vec<JobRecord>, RepoError> {
        self.load_new(since, limit, &|_| None)
    }

    /// As [`History::load`], taking the records `known` returns instead of
    /// reading them again (a service rereading the history every minute
    /// reads only what changed: records it does not hold as finished).
    pub fn load_new(
        &self,
        since: chrono::DateTime<chrono::Utc>,
        limit: usize,
        known: &dyn Fn(&str) -> Option<JobRecord>,
    ) -> Result<Vec<JobRecord>, RepoError> {
        let floor = since.format("%Y%m%dT%H%M%S").to_string();
        let mut ids: Vec<String> = self
            .repo
            .list(&self.jobs)?
            .into_iter()
            .filter_map(|k| {
                let id = k.strip_prefix(self.jobs.as_str())?.strip_suffix(".json")?;
                (is_job_id(id) && id >= floor.as_str()).then(|| id.to_string())
            })
            .collect();
        ids.sort();
        let skip = ids.len().saturating_sub(limit);
        let mut out = Vec::new();
        for id in &ids[skip..] {
            if let Some(r) = known(id) {
                out.push(r);
                continue;
            }
            match self.load_one(id) {
                Ok(Some(r)) => out.push(r),
                Ok(None) => {}
                Err(e) => tracing::warn!("history: skipping job record {id}: {e}"),
            }
        }
        Ok(out)
    }

    /// Removes the records (with their results and reports) of jobs queued
    /// before `before`; returns how many jobs.
    pub fn prune(&self, before: chrono::DateTime<chrono::Utc>) -> Result<usize, RepoError> {
        let floor = before.format("%Y%m%dT%H%M%S").to_string();
        let mut jobs = std::collections::BTreeSet::new();
        for k in self.repo.list(&self.jobs)? {
            let Some(name) = k.strip_prefix(self.jobs.as_str()) else {
                continue;
            };
            let id = name.split('.').next().unwrap_or("");
            if is_job_id(id) && id < floor.as_str() {
                self.repo.delete(&k)?;
                jobs.insert(id.to_string());
            }
        }
        Ok(jobs.len())
    }

    /// One record, `None` if there is none.
    pub fn load_one(&self, id: &str) -> Result<Option<JobRecord>, RepoError> {
        if !is_job_id(id) {
            return Ok(None);
        }
        let k = self.key(id, ".json");
        match self.repo.get_at_most(&k, MAX_RECORD) {
            Ok(data) => match serde_json::from_slice::<JobRecord>(&data) {
                Ok(r) if r.id == id => Ok(Some(r)),
                Ok(r) => {
                    tracing::warn!("history: {k} names job {}, not {id}; ignored", r.id);
                    Ok(None)
                }
                Err(e) => {
                    tracing::warn!("history: {k} is not a job record: {e}");
                    Ok(None)
                }
            },
            Err(RepoError::NotFound { .. }) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// The job's result document, if stored.
    pub fn result(&self, id: &str) -> Result<Option<serde_json::Value>, RepoError> {
        Ok(self
            .object(id, ".result.json")?
            .and_then(|d| serde_json::from_slice(&d).ok()))
    }

    /// The job's report page, if stored.
    pub fn report(&self, id: &str) -> Result<Option<Vec<u8>>, RepoError> {
        self.object(id, ".report.html")
    }

    fn object(&self, id: &str, suffix: &str) -> Result<Option<Vec<u8>>, RepoError> {
        if !is_job_id(id) {
            return Ok(None);
        }
        match self.repo.get_at_most(&self.key(id, suffix), MAX_RESULT) {
            Ok(d) => Ok(Some(d)),
            Err(RepoError::NotFound { .. }) => Ok(None),
            Err(e) => Err(e),
        }
    }
}

/// A command-line run, recorded in the history when it ends (a killed
/// command leaves no record, rather than one that says "running" for
/// ever). The history is a record, not a condition of the run: when it
/// cannot be written, a warning says why.
pub struct CliRun {
    history: Option<History>,
    pub record: JobRecord,
}

impl CliRun {
    pub fn start(topology: &Topology, kind: JobKind) -> CliRun {
        let mut record = JobRecord::new(&topology.cluster, kind, Trigger::Cli);
        record.start();
        CliRun {
            history: History::open(topology).ok(),
            record,
        }
    }

    /// Records the end: `error` is `None` on success. A run that failed
    /// may have failed for want of the right key: then nothing is written
    /// (a record sealed with a wrong key would need a second key to read).
    /// A run that succeeded has shown that its key opens the repository.
    pub async fn finish(
        mut self,
        error: Option<String>,
        result: Option<serde_json::Value>,
        report: Option<String>,
    ) {
        let Some(history) = self.history.take() else {
            return;
        };
        let status = if error.is_some() {
            JobStatus::Failed
        } else {
            JobStatus::Succeeded
        };
        self.record.has_report = report.is_some();
        self.record.finish(status, error);
        let record = self.record;
        let id = record.id.clone();
        let saved = tokio::task::spawn_blocking(move || {
            // A repository that refuses this key (or these credentials)
            // is what the run's own error already says: no second line.
            if record.status == JobStatus::Failed {
                if let Err(e) = super::check_key(history.repo.as_ref()) {
                    tracing::debug!("job {} not recorded: {e}", record.id);
                    return Ok(());
                }
            }
            history.save_job(&record, result.as_ref(), report.as_deref())
        })
        .await;
        match saved {
            Ok(Ok(())) => {}
            Ok(Err(e)) => tracing::warn!("could not record job {id} in the history: {e}"),
            Err(e) => tracing::warn!("could not record job {id} in the history: {e}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn job_ids_sort_by_time_and_are_safe_keys() {
        let a = JobRecord::new("c", JobKind::Backup, Trigger::Api);
        std::thread::sleep(std::time::Duration::from_millis(5));
        let b = JobRecord::new("c", JobKind::Drill, Trigger::Schedule);
        assert!(a.id < b.id, "{} < {}", a.id, b.id);
        assert!(is_job_id(&a.id));
        for bad in ["", "../x", "a/b", ".hidden", "a b", "x%2f"] {
            assert!(!is_job_id(bad), "{bad}");
        }
    }

    #[test]
    fn clusters_sharing_a_repository_keep_histories_apart() {
        let repo: Arc<dyn Repository> = Arc::new(shard_agent::repo::MemoryRepository::default());
        let (a, b) = (
            History::in_repository(repo.clone(), "a"),
            History::in_repository(repo, "b"),
        );
        let r = JobRecord::new("a", JobKind::Backup, Trigger::Cli);
        a.save(&r).unwrap();
        let since = chrono::Utc::now() - chrono::Duration::days(1);
        assert_eq!(a.load(since, 10).unwrap().len(), 1);
        assert!(b.load(since, 10).unwrap().is_empty());
        assert_eq!(
            b.prune(chrono::Utc::now() + chrono::Duration::days(1))
                .unwrap(),
            0
        );
        assert_eq!(
            a.load(since, 10).unwrap().len(),
            1,
            "b's pruning leaves a's"
        );
    }

    #[test]
    fn records_round_trip_through_a_repository() {
        let repo: Arc<dyn Repository> = Arc::new(shard_agent::repo::MemoryRepository::default());
        let h = History::in_repository(repo, "c");
        let mut r = JobRecord::new("c", JobKind::Backup, Trigger::Cli);
        h.save(&r).unwrap();
        r.start();
        r.finish(JobStatus::Failed, Some("disk full".into()));
        h.save(&r).unwrap();
        h.save_result(&r.id, &serde_json::json!({"x": 1})).unwrap();
        let since = chrono::Utc::now() - chrono::Duration::days(1);
        let all = h.load(since, 10).unwrap();
        assert_eq!(all, vec![r.clone()]);
        assert_eq!(h.result(&r.id).unwrap(), Some(serde_json::json!({"x": 1})));
        assert_eq!(h.load_one("../etc").unwrap(), None);
        // Pruned with its result.
        assert_eq!(
            h.prune(chrono::Utc::now() - chrono::Duration::days(1))
                .unwrap(),
            0
        );
        assert_eq!(
            h.prune(chrono::Utc::now() + chrono::Duration::days(1))
                .unwrap(),
            1
        );
        assert!(h.load(since, 10).unwrap().is_empty());
        assert_eq!(h.result(&r.id).unwrap(), None);
        h.save(&r).unwrap();
        // Older than `since`: not read at all.
        let later = chrono::Utc::now() + chrono::Duration::days(1);
        assert!(h.load(later, 10).unwrap().is_empty());
    }
}
