//! The topology's `schedule:`: cron expressions fire jobs; runs missed
//! while the service was down are recorded (as skipped), never run in a
//! burst; `capture: follow` keeps capture running and restarts it when it
//! dies.

use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use topology::CronSpec;

use super::jobs::{lock, JobRequest};
use super::{Cluster, Service};
use crate::flow::capture::{capture, CaptureMode, CaptureOptions};
use crate::flow::history::{JobKind, JobRecord, JobStatus, Trigger};
use crate::flow::Observer;

/// Capture's pause between rounds under the service.
const CAPTURE_INTERVAL: Duration = Duration::from_secs(1);
/// The first wait before capture is restarted after it died.
const CAPTURE_BACKOFF_FIRST: Duration = Duration::from_secs(1);
/// The longest wait before capture is restarted after it died.
const CAPTURE_BACKOFF_MAX: Duration = Duration::from_secs(60);
/// Missed runs are counted up to this many.
const MISSED_COUNT_MAX: usize = 10_000;

fn entries(cluster: &Cluster) -> Vec<(JobKind, CronSpec)> {
    let Some(s) = &cluster.topology.schedule else {
        return Vec::new();
    };
    [
        (JobKind::Backup, &s.backup),
        (JobKind::Incremental, &s.incremental),
        (JobKind::Drill, &s.drill),
        (JobKind::Expire, &s.expire),
    ]
    .into_iter()
    .filter_map(|(k, c)| c.clone().map(|c| (k, c)))
    .collect()
}

fn request(kind: JobKind) -> JobRequest {
    match kind {
        JobKind::Backup => JobRequest::Backup { incremental: false },
        JobKind::Incremental => JobRequest::Backup { incremental: true },
        JobKind::Drill => JobRequest::Drill {
            shard: None,
            backup: "latest".into(),
        },
        JobKind::Restore | JobKind::Expire => JobRequest::Expire,
    }
}

/// The runs of `spec` after `from` up to `to` (inclusive): how many (at
/// most [`MISSED_COUNT_MAX`]), the first and the last.
fn runs_between(
    spec: &CronSpec,
    tz: topology::Tz,
    from: DateTime<Utc>,
    to: DateTime<Utc>,
) -> Option<(usize, DateTime<Utc>, DateTime<Utc>)> {
    let first = spec.next_after(from, tz).filter(|t| *t <= to)?;
    let (mut count, mut last) = (1, first);
    while count < MISSED_COUNT_MAX {
        match spec.next_after(last, tz) {
            Some(t) if t <= to => {
                count += 1;
                last = t;
            }
            _ => break,
        }
    }
    Some((count, first, last))
}

/// Records, per scheduled kind, the runs that fell between the newest
/// scheduled job in the history and now: the service was not running then.
pub async fn record_missed(cluster: &Cluster, now: DateTime<Utc>) {
    let tz = cluster.topology.timezone;
    let records = cluster.records();
    for (kind, spec) in entries(cluster) {
        let Some(last) = records
            .iter()
            .rev()
            .filter(|r| r.kind == kind && r.trigger == Trigger::Schedule)
            .find_map(JobRecord::queued)
        else {
            continue;
        };
        let Some((count, first, latest)) = runs_between(&spec, tz, last, now) else {
            continue;
        };
        let mut r = JobRecord::new(cluster.name(), kind, Trigger::Schedule);
        r.finish(
            JobStatus::Skipped,
            Some(format!(
                "missed {count} scheduled run(s) (`{}`) from {} to {} while shardcut serve was not running; not run late",
                spec.as_str(),
                first.to_rfc3339(),
                latest.to_rfc3339()
            )),
        );
        tracing::warn!(
            "cluster {}: {}",
            cluster.name(),
            r.error.as_deref().unwrap_or("")
        );
        cluster.save(&r, None, None).await;
    }
}

/// Fires the cluster's scheduled jobs after `start` until `stop` changes.
pub async fn run(
    service: Arc<Service>,
    cluster: Arc<Cluster>,
    start: DateTime<Utc>,
    mut stop: tokio::sync::watch::Receiver<bool>,
) {
    let entries = entries(&cluster);
    if entries.is_empty() {
        return;
    }
    let tz = cluster.topology.timezone;
    let mut cursor = start;
    loop {
        let Some(next) = entries
            .iter()
            .filter_map(|(_, spec)| spec.next_after(cursor, tz))
            .min()
        else {
            return;
        };
        let wait = (next - Utc::now()).to_std().unwrap_or(Duration::ZERO);
        tokio::select! {
            _ = tokio::time::sleep(wait) => {}
            _ = stop.changed() => return,
        }
        for (kind, spec) in &entries {
            if spec.next_after(cursor, tz) == Some(next) {
                let record = service
                    .submit(&cluster, request(*kind), Trigger::Schedule)
                    .await;
                tracing::info!(
                    "cluster {}: scheduled {} → job {} {}",
                    cluster.name(),
                    kind.as_str(),
                    record.id,
                    record.status.as_str()
                );
            }
        }
        // A pause longer than the schedule's period (the host slept) skips
        // the runs in between instead of firing them all at once.
        cursor = next.max(Utc::now());
    }
}

/// An observer that only logs.
struct Quiet;
impl Observer for Quiet {}

/// Keeps capture running for the cluster; restarts it, after a growing
/// pause, when it dies; on shutdown lets its round finish.
pub async fn follow_capture(
    service: Arc<Service>,
    cluster: Arc<Cluster>,
    mut stop: tokio::sync::watch::Receiver<bool>,
) {
    let mut backoff = CAPTURE_BACKOFF_FIRST;
    loop {
        let stop_flag: Arc<AtomicBool> = service.capture_stop.clone();
        let opts = CaptureOptions {
            shards: Vec::new(),
            mode: CaptureMode::Follow {
                interval: CAPTURE_INTERVAL,
                mark_every: None,
            },
            warn_retained_wal_bytes: 1 << 30,
            stop: stop_flag,
        };
        let c = cluster.clone();
        let finished_a_round = Arc::new(AtomicBool::new(false));
        let rounded = finished_a_round.clone();
        let mut after_round = move |list: &[crate::flow::status::StreamStatus]| {
            rounded.store(true, std::sync::atomic::Ordering::Relaxed);
            let mut state = lock(&c.capture);
            state.streams = list.to_vec();
            state.at = Some(Utc::now().to_rfc3339());
            state.error = None;
            Ok(())
        };
        // In a task of its own: a panic in capture is a death like any
        // other, and capture is restarted.
        let cl = cluster.clone();
        let result = tokio::spawn(async move {
            capture(&cl.topology, &opts, &Quiet, &mut after_round)
                .await
                .map(|_| ())
        })
        .await;
        if service.stopping() {
            return;
        }
        let why = match result {
            Ok(Ok(())) => "capture ended".to_string(),
            Ok(Err(e)) => crate::exit::one_line(&e),
            Err(e) => format!("capture stopped unexpectedly: {e}"),
        };
        let ran = finished_a_round.load(std::sync::atomic::Ordering::Relaxed);
        let (pause, next) = restart_pause(backoff, ran);
        backoff = next;
        tracing::warn!(
            "cluster {}: capture stopped ({why}); restarting in {} s",
            cluster.name(),
            pause.as_secs()
        );
        {
            let mut state = lock(&cluster.capture);
            state.error = Some(why);
            state.restarts += 1;
        }
        tokio::select! {
            _ = tokio::time::sleep(pause) => {}
            _ = stop.changed() => return,
        }
    }
}

/// The pause before capture is restarted, and the one after that if it
/// dies again: doubling up to [`CAPTURE_BACKOFF_MAX`] while capture dies
/// before finishing a round, and back to the first second once a run
/// finished one (`ran`), so a capture that ran for days does not wait the
/// longest pause for the failures of days ago.
fn restart_pause(backoff: Duration, ran: bool) -> (Duration, Duration) {
    let pause = match ran {
        true => CAPTURE_BACKOFF_FIRST,
        false => backoff,
    };
    (pause, (pause * 2).min(CAPTURE_BACKOFF_MAX))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn capture_restarts_wait_longer_only_while_no_round_finishes() {
        let mut backoff = CAPTURE_BACKOFF_FIRST;
        let mut pauses = Vec::new();
        for ran in [false, false, false, true, false] {
            let (pause, next) = restart_pause(backoff, ran);
            pauses.push(pause.as_secs());
            backoff = next;
        }
        assert_eq!(pauses, [1, 2, 4, 1, 2]);
        let mut backoff = CAPTURE_BACKOFF_FIRST;
        for _ in 0..20 {
            backoff = restart_pause(backoff, false).1;
        }
        assert_eq!(backoff, CAPTURE_BACKOFF_MAX);
    }

    #[test]
    fn missed_runs_are_counted_in_the_topology_timezone() {
        let spec = CronSpec::parse("0 2 * * *").unwrap();
        let berlin: topology::Tz = "Europe/Berlin".parse().unwrap();
        let from = DateTime::parse_from_rfc3339("2026-12-01T00:00:00Z")
            .unwrap()
            .with_timezone(&Utc);
        let to = DateTime::parse_from_rfc3339("2026-12-03T12:00:00Z")
            .unwrap()
            .with_timezone(&Utc);
        let (n, first, last) = runs_between(&spec, berlin, from, to).unwrap();
        assert_eq!(n, 3);
        // 02:00 in Berlin in winter is 01:00 UTC.
        assert_eq!(first.to_rfc3339(), "2026-12-01T01:00:00+00:00");
        assert_eq!(last.to_rfc3339(), "2026-12-03T01:00:00+00:00");
        assert!(runs_between(&spec, berlin, to, to).is_none());
    }
}
