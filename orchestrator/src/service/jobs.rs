//! Jobs: what the service runs for a request or a schedule, one at a time
//! per cluster. A job is recorded in the cluster's history when it starts
//! and when it ends; one due while another runs is recorded as skipped.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use serde::Deserialize;
use serde_json::json;
use shard_agent::dump::Progress;
use topology::Topology;

use super::{Cluster, Service};
use crate::exit;
use crate::flow::backup::{backup, BackupOptions};
use crate::flow::drill::{drill, DrillPlan};
use crate::flow::expire::{expire, ExpireOptions};
use crate::flow::history::{
    backup_figures, outcome_figures, JobKind, JobRecord, JobStatus, Trigger,
};
use crate::flow::restore::{restore_verified, Plan};
use crate::flow::steps::new_backup_id;
use crate::flow::Observer;
use crate::lock::LockError;
use crate::pitr::{parse_until, Until};
use crate::render::backup::summary_json;
use crate::report::{outcome_document, outcome_page, outcome_problem};
use crate::selection::Request as Selection;

/// The options of a restore, as `POST …/restores` takes them (those of
/// `shardcut restore`; `target` names one of the service's `--target`
/// topologies by its cluster name).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RestoreRequest {
    pub target: String,
    #[serde(default = "latest")]
    pub backup: String,
    #[serde(default)]
    pub until: Option<String>,
    #[serde(default)]
    pub shards: Vec<String>,
    #[serde(default)]
    pub map: BTreeMap<String, String>,
    #[serde(default)]
    pub databases: Vec<String>,
    #[serde(default)]
    pub tables: Vec<String>,
    #[serde(default)]
    pub with_parents: bool,
    #[serde(default)]
    pub overwrite: bool,
    #[serde(default)]
    pub binlog: bool,
}

fn latest() -> String {
    "latest".into()
}

/// What a job does.
#[derive(Debug, Clone)]
pub enum JobRequest {
    Backup {
        incremental: bool,
    },
    /// `shard: None`: the next shard in rotation.
    Drill {
        shard: Option<String>,
        backup: String,
    },
    Restore {
        request: RestoreRequest,
        target: PathBuf,
        until: Option<Until>,
    },
    Expire,
}

impl JobRequest {
    pub fn kind(&self) -> JobKind {
        match self {
            JobRequest::Backup { incremental: false } => JobKind::Backup,
            JobRequest::Backup { incremental: true } => JobKind::Incremental,
            JobRequest::Drill { .. } => JobKind::Drill,
            JobRequest::Restore { .. } => JobKind::Restore,
            JobRequest::Expire => JobKind::Expire,
        }
    }

    /// A restore request checked against what the service knows.
    pub fn restore(
        service: &Service,
        cluster: &Cluster,
        request: RestoreRequest,
    ) -> Result<JobRequest, String> {
        let Some(target) = service.targets.get(&request.target) else {
            return Err(format!(
                "no restore target `{}`; this service restores into: {}",
                request.target,
                service
                    .targets
                    .keys()
                    .map(String::as_str)
                    .collect::<Vec<_>>()
                    .join(", ")
            ));
        };
        for s in &request.shards {
            if cluster.topology.shard(s).is_none() {
                return Err(format!("cluster {} has no shard `{s}`", cluster.name()));
            }
        }
        let until = request.until.as_deref().map(parse_until).transpose()?;
        Ok(JobRequest::Restore {
            target: target.clone(),
            until,
            request,
        })
    }
}

/// What a running job reports: its last step and, while dumping, each
/// shard's rows and bytes.
#[derive(Default)]
pub struct JobProgress {
    phase: Mutex<Option<String>>,
    shards: Mutex<Vec<(String, Arc<Progress>)>>,
}

impl JobProgress {
    pub fn to_json(&self) -> serde_json::Value {
        let phase = self.phase.lock().map(|p| p.clone()).unwrap_or_default();
        let shards: serde_json::Map<String, serde_json::Value> = self
            .shards
            .lock()
            .map(|s| {
                s.iter()
                    .map(|(name, p)| {
                        use std::sync::atomic::Ordering::Relaxed;
                        (
                            name.clone(),
                            json!({
                                "rows": p.rows.load(Relaxed),
                                "rows_estimate": p.rows_estimate.load(Relaxed),
                                "bytes": p.bytes.load(Relaxed),
                            }),
                        )
                    })
                    .collect()
            })
            .unwrap_or_default();
        json!({"phase": phase, "shards": shards})
    }
}

impl Observer for JobProgress {
    fn dump_started(&self, shards: Vec<(String, Arc<Progress>)>) -> Box<dyn Send> {
        if let Ok(mut s) = self.shards.lock() {
            *s = shards;
        }
        Box::new(())
    }

    fn note(&self, text: &str) {
        tracing::info!("{text}");
        if let Ok(mut p) = self.phase.lock() {
            *p = Some(text.to_string());
        }
    }
}

/// A job the service knows: its record and, while it runs, its progress.
pub struct Job {
    pub record: JobRecord,
    pub progress: Option<Arc<JobProgress>>,
    pub abort: Option<tokio::task::AbortHandle>,
}

/// What a finished job leaves.
struct Done {
    status: JobStatus,
    error: Option<String>,
    result: Option<serde_json::Value>,
    report: Option<String>,
}

impl Service {
    /// Starts a job on `cluster`, or records it as skipped when another job
    /// of the cluster is running (or the service is stopping). Returns the
    /// record as it stands.
    pub async fn submit(
        self: &Arc<Self>,
        cluster: &Arc<Cluster>,
        request: JobRequest,
        trigger: Trigger,
    ) -> JobRecord {
        let mut record = JobRecord::new(cluster.name(), request.kind(), trigger);
        if let JobRequest::Drill { shard, .. } = &request {
            record.shard = shard.clone();
        }
        let busy_with = {
            let mut busy = lock(&cluster.busy);
            if self.stopping() {
                Some("shardcut serve is shutting down".to_string())
            } else if let Some(other) = busy.as_ref() {
                Some(format!(
                    "job {other} was running on cluster {}; one job at a time per cluster",
                    cluster.name()
                ))
            } else {
                *busy = Some(record.id.clone());
                None
            }
        };
        if let Some(why) = busy_with {
            tracing::warn!(
                "job {} ({}) skipped: {why}",
                record.id,
                record.kind.as_str()
            );
            record.finish(JobStatus::Skipped, Some(why));
            cluster.save(&record, None, None).await;
            self.remember(&record, None);
            return record;
        }
        // The cluster is claimed: from here on the job must run or be
        // recorded, even if the request that asked for it goes away (a
        // client that hangs up cancels this handler, never the job).
        let (service, cl, claimed) = (self.clone(), cluster.clone(), record.clone());
        let started = tokio::spawn(async move { service.start(&cl, request, claimed).await });
        match started.await {
            Ok(record) => record,
            Err(e) => {
                // Only a panic gets here; free the cluster.
                record.finish(
                    JobStatus::Failed,
                    Some(format!("the job could not start: {e}")),
                );
                self.remember(&record, None);
                *lock(&cluster.busy) = None;
                record
            }
        }
    }

    /// Starts a job on a claimed cluster: records it as running, runs it,
    /// and records its end from a task of its own.
    async fn start(
        self: &Arc<Self>,
        cluster: &Arc<Cluster>,
        request: JobRequest,
        mut record: JobRecord,
    ) -> JobRecord {
        if let JobRequest::Backup { .. } = request {
            record.backup_id = Some(new_backup_id());
        }
        record.start();
        let progress = Arc::new(JobProgress::default());
        self.remember(&record, Some(progress.clone()));
        cluster.save(&record, None, None).await;
        let (service, cl, rec) = (self.clone(), cluster.clone(), record.clone());
        let work = tokio::spawn(async move {
            service
                .execute(&cl, &request, &rec, progress.as_ref())
                .await
        });
        if let Some(job) = lock(&self.jobs).get_mut(&record.id) {
            job.abort = Some(work.abort_handle());
        }
        // The job's end is recorded whatever it is: done, cancelled at
        // shutdown, or a panic in a flow (the cluster is freed either way;
        // a lock the flow held stops being renewed and expires).
        let (service, cl, rec) = (self.clone(), cluster.clone(), record.clone());
        tokio::spawn(async move {
            let done = match work.await {
                Ok(done) => done,
                Err(e) => {
                    let mut why = if e.is_cancelled() {
                        "cancelled: shardcut serve was stopped before the job finished".to_string()
                    } else {
                        format!("the job stopped unexpectedly: {e}")
                    };
                    let mut updated = rec.clone();
                    // Work inside a blocking call may still be writing (a
                    // manifest even): what it leaves is looked at by the
                    // next start, never removed under its feet.
                    if matches!(rec.kind, JobKind::Backup | JobKind::Incremental) {
                        updated.cleanup = true;
                        why.push_str(
                            "; a backup it left without a manifest is removed at the next start",
                        );
                    }
                    let done = Done {
                        status: JobStatus::Failed,
                        error: Some(why),
                        result: None,
                        report: None,
                    };
                    (done, updated)
                }
            };
            service.complete(&cl, rec, done).await;
        });
        record
    }

    /// Records the end of a job and frees its cluster.
    async fn complete(&self, cluster: &Cluster, mut record: JobRecord, done: (Done, JobRecord)) {
        let (done, updated) = done;
        record.figures = updated.figures;
        record.backup_id = updated.backup_id;
        record.shard = updated.shard;
        record.cleanup = updated.cleanup;
        record.has_report = done.report.is_some();
        record.finish(done.status, done.error);
        tracing::info!(
            "job {} ({}) {}{}",
            record.id,
            record.kind.as_str(),
            record.status.as_str(),
            record
                .error
                .as_deref()
                .map(|e| format!(": {e}"))
                .unwrap_or_default()
        );
        cluster.save(&record, done.result, done.report).await;
        self.remember(&record, None);
        let mut busy = lock(&cluster.busy);
        if busy.as_deref() == Some(record.id.as_str()) {
            *busy = None;
        }
    }

    /// Runs the flow of `request`; never fails, an error is the job's.
    async fn execute(
        &self,
        cluster: &Cluster,
        request: &JobRequest,
        record: &JobRecord,
        progress: &JobProgress,
    ) -> (Done, JobRecord) {
        let mut record = record.clone();
        let topology = &cluster.topology;
        let result = match request {
            JobRequest::Backup { incremental } => {
                let opts = BackupOptions {
                    incremental: *incremental,
                    id: record.backup_id.clone(),
                    hooks: crate::cut::CutTestHooks {
                        hold_block: self.hooks.hold_block,
                        no_write_block: false,
                    },
                    ..BackupOptions::default()
                };
                backup(topology, &opts, progress).await.map(|m| {
                    record.backup_id = Some(m.backup_id.clone());
                    record.figures = backup_figures(&m);
                    Done {
                        status: JobStatus::Succeeded,
                        error: None,
                        result: Some(summary_json(&m)),
                        report: None,
                    }
                })
            }
            JobRequest::Drill { shard, backup } => {
                let shard = match shard {
                    Some(s) => s.clone(),
                    None => cluster.next_drill_shard(),
                };
                record.shard = Some(shard.clone());
                match &cluster.drill_target {
                    None => Err(exit::InvalidInput(format!(
                        "cluster {} has no drill_target in its topology",
                        cluster.name()
                    ))
                    .into()),
                    Some(target) => {
                        let plan = DrillPlan {
                            source: &topology.source,
                            repository: None,
                            target,
                            shard: &shard,
                            backup,
                            map: Vec::new(),
                            pause_before_verify: None,
                        };
                        drill(&plan, progress)
                            .await
                            .map(|o| verified(&mut record, &o, "drill"))
                    }
                }
            }
            JobRequest::Restore {
                request,
                target,
                until,
            } => {
                let plan = Plan {
                    source: &topology.source,
                    repository: None,
                    target,
                    backup: &request.backup,
                    shards: request.shards.clone(),
                    map: request
                        .map
                        .iter()
                        .map(|(a, b)| (a.clone(), b.clone()))
                        .collect(),
                    auto_map: false,
                    until: until.clone(),
                    overwrite: request.overwrite,
                    binlog: request.binlog,
                    pause_before_verify: None,
                    select: Selection {
                        databases: request.databases.clone(),
                        tables: request.tables.clone(),
                        with_parents: request.with_parents,
                    },
                };
                restore_verified(&plan, progress)
                    .await
                    .map(|o| verified(&mut record, &o, "restore"))
            }
            JobRequest::Expire => {
                let opts = expire_options(topology);
                let history = cluster.history.clone();
                let before = chrono::Utc::now() - chrono::Duration::days(super::HISTORY_KEEP_DAYS);
                match expire(topology, &opts).await {
                    Ok(e) => {
                        let mut doc = crate::render::expire::summary(&e);
                        // The history is kept for HISTORY_KEEP_DAYS.
                        let pruned = tokio::task::spawn_blocking(move || history.prune(before))
                            .await
                            .map_err(anyhow::Error::from)
                            .and_then(|r| r.map_err(anyhow::Error::from));
                        match pruned {
                            Ok(n) => {
                                if let Some(o) = doc.as_object_mut() {
                                    o.insert("history_jobs_removed".into(), json!(n));
                                }
                                Ok(Done {
                                    status: JobStatus::Succeeded,
                                    error: None,
                                    result: Some(doc),
                                    report: None,
                                })
                            }
                            Err(e) => Err(e.context("removing old job history")),
                        }
                    }
                    Err(e) => Err(e),
                }
            }
        };
        let done = result.unwrap_or_else(|e| {
            // Another process holds the repository lock: this job did not
            // run, it was not a failure of the cluster.
            let held = e
                .chain()
                .any(|c| matches!(c.downcast_ref::<LockError>(), Some(LockError::Held { .. })));
            Done {
                status: if held {
                    JobStatus::Skipped
                } else {
                    JobStatus::Failed
                },
                error: Some(exit::one_line(&e)),
                result: None,
                report: None,
            }
        });
        (done, record)
    }
}

/// A verified restore or drill: succeeded only with Q = 1 and every shard
/// restored.
fn verified(record: &mut JobRecord, o: &crate::flow::restore::Outcome, kind: &str) -> Done {
    record.backup_id = Some(o.m.backup_id.clone());
    record.figures = outcome_figures(o);
    let problem = outcome_problem(o, kind);
    Done {
        status: if problem.is_none() {
            JobStatus::Succeeded
        } else {
            JobStatus::Failed
        },
        error: problem,
        result: Some(outcome_document(o, kind)),
        report: Some(outcome_page(o, kind)),
    }
}

/// What a scheduled expiry keeps: the topology's `schedule:` policy, else
/// the default.
pub fn expire_options(topology: &Topology) -> ExpireOptions {
    let (keep_last, keep_within) = match &topology.schedule {
        Some(s) => (s.keep_last, s.keep_within),
        None => (topology::DEFAULT_KEEP_LAST, None),
    };
    ExpireOptions {
        keep_last,
        keep_within,
        dry_run: false,
    }
}

pub fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}
