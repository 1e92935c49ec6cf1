//! `GET /metrics`: Prometheus text format, from each cluster's history:
//! the figures the reports write (Q and its factors, RTO, RPO, write
//! block), the newest backup's size and duration, job counts and
//! durations, and when each kind of job last succeeded.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use super::Service;
use crate::flow::history::{JobKind, JobRecord, JobStatus};
use crate::report::label;

/// One metric family: its samples are written together, under one HELP
/// and TYPE, as the format requires.
struct Family {
    name: &'static str,
    help: &'static str,
    kind: &'static str,
    samples: Vec<(String, f64)>,
}

impl Family {
    fn gauge(name: &'static str, help: &'static str) -> Family {
        Family {
            name,
            help,
            kind: "gauge",
            samples: Vec::new(),
        }
    }

    fn add(&mut self, labels: &[(&str, &str)], value: f64) {
        let text = labels
            .iter()
            .map(|(k, v)| format!("{k}=\"{}\"", label(v)))
            .collect::<Vec<_>>()
            .join(",");
        self.samples.push((text, value));
    }

    fn write(&self, out: &mut String) {
        if self.samples.is_empty() {
            return;
        }
        let _ = writeln!(out, "# HELP {} {}", self.name, self.help);
        let _ = writeln!(out, "# TYPE {} {}", self.name, self.kind);
        for (labels, value) in &self.samples {
            let _ = writeln!(out, "{}{{{labels}}} {}", self.name, number(*value));
        }
    }
}

/// A sample value as the text format writes it.
fn number(v: f64) -> String {
    if v.is_nan() {
        "NaN".into()
    } else if v.is_infinite() {
        if v > 0.0 { "+Inf" } else { "-Inf" }.into()
    } else {
        format!("{v}")
    }
}

fn newest(records: &[JobRecord], pick: impl Fn(&JobRecord) -> bool) -> Option<&JobRecord> {
    records.iter().rev().find(|r| pick(r))
}

pub fn render(service: &Service) -> String {
    let mut q = [
        Family::gauge(
            "shardcut_quality_score",
            "Recovery-quality score Q = recovered x complete x available of the newest drill or restore.",
        ),
        Family::gauge(
            "shardcut_quality_recovered",
            "Rows read back / rows in the manifest.",
        ),
        Family::gauge(
            "shardcut_quality_complete",
            "Tables with matching rows and content hash / tables in scope.",
        ),
        Family::gauge(
            "shardcut_quality_available",
            "Shards answering reads on every restored table / shards in scope.",
        ),
    ];
    let mut rto = Family::gauge(
        "shardcut_restore_duration_seconds",
        "Wall time from the start of the newest restore or drill to verified.",
    );
    let mut rpo = Family::gauge(
        "shardcut_backup_age_seconds",
        "Age of the verified backup's cut when the newest drill or restore started.",
    );
    let mut block = Family::gauge(
        "shardcut_write_block_seconds",
        "Cluster-wide write-block time of the newest backup's cut.",
    );
    let mut size = Family::gauge(
        "shardcut_backup_bytes_stored",
        "Bytes the newest backup stored in the repository.",
    );
    let mut backup_seconds = Family::gauge(
        "shardcut_backup_duration_seconds",
        "Wall time of the newest backup.",
    );
    let mut jobs = Family::gauge(
        "shardcut_jobs",
        "Jobs in the history of the last 90 days, by kind and status.",
    );
    let mut duration = Family::gauge(
        "shardcut_job_duration_seconds",
        "Wall time of the newest finished job of each kind.",
    );
    let mut success = Family::gauge(
        "shardcut_last_success_timestamp_seconds",
        "When a job of each kind last succeeded (Unix time).",
    );
    let mut running = Family::gauge(
        "shardcut_jobs_running",
        "Jobs running now (0 or 1: one job at a time per cluster).",
    );
    let mut lag_bytes = Family::gauge(
        "shardcut_capture_lag_bytes",
        "Change stream bytes not yet stored in the repository (capture followed by the service).",
    );
    let mut lag_seconds = Family::gauge(
        "shardcut_capture_lag_seconds",
        "Seconds the stored position has been behind the server (0 when caught up).",
    );
    let mut failing = Family::gauge(
        "shardcut_capture_failing",
        "1 while the stream's last round failed and capture waits to try it again.",
    );
    let mut capture_up = Family::gauge(
        "shardcut_capture_up",
        "1 while the service's capture of the cluster runs and no stream of it is failing, 0 otherwise.",
    );
    let mut restarts = Family::gauge(
        "shardcut_capture_restarts",
        "Times the service restarted the cluster's capture since it started.",
    );
    for c in service.clusters.values() {
        let records = c.records();
        let name = c.name();
        for kind in [JobKind::Drill, JobKind::Restore] {
            let Some(r) = newest(&records, |r| r.kind == kind && r.figures.quality.is_some())
            else {
                continue;
            };
            let labels = [("cluster", name), ("kind", kind.as_str())];
            if let Some(qf) = r.figures.quality {
                let values = [qf.score, qf.recovered, qf.complete, qf.available];
                for (family, v) in q.iter_mut().zip(values) {
                    family.add(&labels, v);
                    // A drill restores one shard: its figures are that
                    // shard's, as the drill's own report gives them.
                    if let Some(shard) = r.shard.as_deref().filter(|_| kind == JobKind::Drill) {
                        family.add(&[labels[0], labels[1], ("shard", shard)], v);
                    }
                }
            }
            if let Some(v) = r.figures.rto_seconds {
                rto.add(&labels, v);
            }
        }
        if let Some(v) = newest(&records, |r| r.figures.rpo_seconds.is_some())
            .and_then(|r| r.figures.rpo_seconds)
        {
            rpo.add(&[("cluster", name)], v);
        }
        if let Some(r) = newest(&records, |r| r.figures.bytes_stored.is_some()) {
            let f = &r.figures;
            if let Some(v) = f.write_block_ms {
                block.add(&[("cluster", name)], v as f64 / 1000.0);
            }
            if let Some(v) = f.bytes_stored {
                size.add(&[("cluster", name)], v as f64);
            }
            if let Some(v) = f.backup_seconds {
                backup_seconds.add(&[("cluster", name)], v);
            }
        }
        let mut counts: BTreeMap<(JobKind, JobStatus), u64> = BTreeMap::new();
        for r in &records {
            *counts.entry((r.kind, r.status)).or_default() += 1;
        }
        for kind in JobKind::ALL {
            for status in JobStatus::ALL {
                let n = counts.get(&(kind, status)).copied().unwrap_or(0);
                jobs.add(
                    &[
                        ("cluster", name),
                        ("kind", kind.as_str()),
                        ("status", status.as_str()),
                    ],
                    n as f64,
                );
            }
            let labels = [("cluster", name), ("kind", kind.as_str())];
            if let Some(d) = newest(&records, |r| {
                r.kind == kind && r.duration_seconds().is_some()
            })
            .and_then(JobRecord::duration_seconds)
            {
                duration.add(&labels, d);
            }
            if let Some(t) = newest(&records, |r| {
                r.kind == kind && r.status == JobStatus::Succeeded
            })
            .and_then(|r| r.finished_at.as_deref())
            .and_then(crate::flow::history::parse_time)
            {
                success.add(&labels, t.timestamp() as f64);
            }
        }
        let now_running = records.iter().filter(|r| !r.status.is_final()).count();
        running.add(&[("cluster", name)], now_running as f64);
        if matches!(&c.topology.schedule, Some(s) if s.capture == topology::CaptureSchedule::Follow)
        {
            let state = super::jobs::lock(&c.capture);
            for st in &state.streams {
                let labels = [
                    ("cluster", name),
                    ("shard", st.shard.as_str()),
                    ("stream", st.stream.as_str()),
                ];
                if let Some(b) = st.lag_bytes {
                    lag_bytes.add(&labels, b as f64);
                }
                lag_seconds.add(&labels, st.lag_seconds);
                failing.add(&labels, if st.failing.is_some() { 1.0 } else { 0.0 });
            }
            // A stream whose rounds fail is retried inside capture, which
            // goes on running: it is not up.
            let up = state.at.is_some()
                && state.error.is_none()
                && state.streams.iter().all(|s| s.failing.is_none());
            capture_up.add(&[("cluster", name)], if up { 1.0 } else { 0.0 });
            restarts.add(&[("cluster", name)], state.restarts as f64);
        }
    }
    let mut out = String::new();
    for f in q.iter().chain([
        &rto,
        &rpo,
        &block,
        &size,
        &backup_seconds,
        &jobs,
        &duration,
        &success,
        &running,
        &lag_bytes,
        &lag_seconds,
        &failing,
        &capture_up,
        &restarts,
    ]) {
        f.write(&mut out);
    }
    out
}
