//! Continuous capture of every shard's changes into the repository: the
//! streams started where missing, catch-up rounds of all streams at once,
//! marks taken along the way, and removal.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use shard_agent::capture::{CaptureError, RoundReport, StreamState};
use shard_agent::engine::CatchUp;
use shard_agent::manifest::{Manifest, Mark};
use shard_agent::repo::Repository;
use tokio::task::JoinSet;
use topology::{Compression, Shard, Topology};

use super::mark::take_mark;
use super::status::{status_of, StreamStatus};
use super::{list_backups, open_repository, Observer};
use crate::exit::{self, InvalidInput};
use crate::lock::RepoLock;

/// How long capture runs.
#[derive(Debug, Clone)]
pub enum CaptureMode {
    /// Catch every stream up once: to a new mark (`mark`), or to the
    /// servers' current ends.
    Once { mark: bool },
    /// Rounds every `interval` until `stop` is set; a mark every
    /// `mark_every`.
    Follow {
        interval: Duration,
        mark_every: Option<Duration>,
    },
}

#[derive(Debug, Clone)]
pub struct CaptureOptions {
    /// Only these shards; empty: all.
    pub shards: Vec<String>,
    pub mode: CaptureMode,
    /// Warn when a slot retains more WAL than this many bytes.
    pub warn_retained_wal_bytes: u64,
    /// Set to end capture after the current round.
    pub stop: Arc<AtomicBool>,
}

/// What capture did, as of its last round.
#[derive(Debug)]
pub struct CaptureOutcome {
    /// The mark `--once` took and reached.
    pub mark: Option<String>,
    pub streams: Vec<StreamStatus>,
}

/// The topology's shards that `names` selects (all when empty); an unknown
/// name is invalid input.
pub fn select_shards(topology: &Topology, names: &[String]) -> anyhow::Result<Vec<Shard>> {
    for s in names {
        if topology.shard(s).is_none() {
            return Err(InvalidInput(format!("the topology has no shard `{s}`")).into());
        }
    }
    Ok(topology
        .shards
        .iter()
        .filter(|s| names.is_empty() || names.contains(&s.name))
        .cloned()
        .collect())
}

/// Captures under the repository's capture lock; `after_round` sees every
/// round's figures (for metrics).
pub async fn capture(
    topology: &Topology,
    opts: &CaptureOptions,
    observer: &dyn Observer,
    after_round: &mut (dyn FnMut(&[StreamStatus]) -> anyhow::Result<()> + Send),
) -> anyhow::Result<CaptureOutcome> {
    let repo = open_repository(topology)?;
    let shards = select_shards(topology, &opts.shards)?;
    let lock = RepoLock::acquire(repo.clone(), &topology.cluster, "capture")?;
    let result = run(topology, &repo, &shards, opts, observer, after_round, &lock).await;
    lock.release();
    result
}

async fn run(
    topology: &Topology,
    repo: &Arc<dyn Repository>,
    shards: &[Shard],
    opts: &CaptureOptions,
    observer: &dyn Observer,
    after_round: &mut (dyn FnMut(&[StreamStatus]) -> anyhow::Result<()> + Send),
    lock: &RepoLock,
) -> anyhow::Result<CaptureOutcome> {
    let started = ensure_streams(topology, repo, shards, observer).await?;
    let refused = Started {
        streams: Vec::new(),
        refused: started.refused,
    };
    let outcome = run_streams(
        topology,
        repo,
        started.streams,
        opts,
        observer,
        after_round,
        lock,
    )
    .await?;
    refused.outcome(outcome)
}

/// Captures `streams`: one round (to a new mark) or rounds until stopped.
async fn run_streams(
    topology: &Topology,
    repo: &Arc<dyn Repository>,
    mut streams: Vec<(Shard, StreamState)>,
    opts: &CaptureOptions,
    observer: &dyn Observer,
    after_round: &mut (dyn FnMut(&[StreamStatus]) -> anyhow::Result<()> + Send),
    lock: &RepoLock,
) -> anyhow::Result<CaptureOutcome> {
    let (interval, mark_every) = match opts.mode {
        CaptureMode::Once { mark } => {
            let target = if mark {
                Some(
                    take_mark(
                        topology,
                        repo,
                        &auto_mark_name(),
                        Duration::from_secs(5),
                        observer,
                    )
                    .await?,
                )
            } else {
                None
            };
            let round = CatchUpTarget {
                topology,
                repo,
                mark: target.as_ref(),
                stop: &opts.stop,
            };
            let (next, last) = catch_up_to(streams, &round).await?;
            let list = figures(&next, &last, opts, observer);
            return Ok(CaptureOutcome {
                mark: target.map(|m| m.name),
                streams: list,
            });
        }
        CaptureMode::Follow {
            interval,
            mark_every,
        } => (interval, mark_every),
    };
    let compression = topology.defaults.compression;
    let mut last_mark = Instant::now();
    let mut retries = Retries::default();
    loop {
        // Two captures writing one stream would corrupt it: a run that
        // lost its lock stops before its next round.
        lock.ensure_held()?;
        // A daemon rides out a server restart or a network drop: a stream
        // that fails is reported and tried again after a growing wait
        // (1 s doubling to 30 s), the others go on; where it stopped is
        // stored, so it resumes exactly there.
        let now = Instant::now();
        let (due, waiting): (Vec<_>, Vec<_>) = streams
            .into_iter()
            .partition(|(_, st)| retries.due(st, now));
        let done = round(due, repo, compression, &topology.cluster, &opts.stop).await?;
        for ((shard, stream), why) in &done.failed {
            let wait = retries.failed((shard.clone(), stream.clone()), why, now);
            observer.note(&format!(
                "shardcut: capture of {shard} {stream} failed: {why}; retrying in {} s",
                wait.as_secs()
            ));
        }
        for (_, st) in &done.streams {
            if !done
                .failed
                .iter()
                .any(|((sh, s), _)| *sh == st.shard && *s == st.stream)
            {
                retries.succeeded(st);
            }
        }
        let reports = done.reports;
        streams = done.streams;
        streams.extend(waiting);
        streams.sort_by(|a, b| (&a.1.shard, &a.1.stream).cmp(&(&b.1.shard, &b.1.stream)));
        let mut list = figures(&streams, &reports, opts, observer);
        for s in &mut list {
            s.failing = retries.why(&s.shard, &s.stream);
            // A failing stream has no server position to be behind of: its
            // lag is the time its stored position has not moved.
            if s.failing.is_some() {
                let state = streams
                    .iter()
                    .find(|(_, st)| st.shard == s.shard && st.stream == s.stream);
                if let Some((_, st)) = state {
                    s.lag_seconds = s
                        .lag_seconds
                        .max(super::status::seconds_since(&st.updated_at));
                }
            }
        }
        after_round(&list)?;
        if opts.stop.load(Ordering::Relaxed) {
            return Ok(CaptureOutcome {
                mark: None,
                streams: list,
            });
        }
        if mark_every.is_some_and(|every| last_mark.elapsed() >= every) {
            match take_mark(
                topology,
                repo,
                &auto_mark_name(),
                Duration::from_secs(5),
                observer,
            )
            .await
            {
                Ok(m) => tracing::info!("mark {} taken", m.name),
                Err(e) => observer.note(&format!(
                    "shardcut: capture: taking a mark failed: {}",
                    exit::one_line(&e)
                )),
            }
            last_mark = Instant::now();
        }
        let until = Instant::now() + interval;
        while Instant::now() < until && !opts.stop.load(Ordering::Relaxed) {
            tokio::time::sleep(Duration::from_millis(50).min(interval)).await;
        }
    }
}

fn auto_mark_name() -> String {
    format!("auto-{}", chrono::Utc::now().format("%Y%m%dT%H%M%S%.3fZ"))
}

/// Every stream's figures after a round; warns of a slot retaining too
/// much WAL.
fn figures(
    streams: &[(Shard, StreamState)],
    reports: &[RoundReport],
    opts: &CaptureOptions,
    observer: &dyn Observer,
) -> Vec<StreamStatus> {
    let mut out = Vec::new();
    for (_, st) in streams {
        let r = reports
            .iter()
            .find(|r| r.shard == st.shard && r.stream == st.stream);
        let s = status_of(
            st,
            r,
            r.and_then(|r| r.server_position.clone()),
            r.and_then(|r| r.retained_wal_bytes),
        );
        if let Some(r) = r {
            warn_replay_refuses(r, observer);
        }
        if let Some(w) = s.retained_wal_bytes {
            if w > opts.warn_retained_wal_bytes {
                observer.note(&format!(
                    "shardcut: warning: shard {} database {}: the capture slot retains {} MiB of WAL (over {} MiB); capture is falling behind or stopped",
                    s.shard, s.stream, w >> 20, opts.warn_retained_wal_bytes >> 20
                ));
            }
        }
        out.push(s);
    }
    out
}

/// Warns of each change a round stored that replay will refuse.
pub(crate) fn warn_replay_refuses(report: &RoundReport, observer: &dyn Observer) {
    for refused in &report.replay_refuses {
        observer.note(&format!(
            "shardcut: warning: shard {}: capture stored a change that replay will refuse, at {refused}; a restore to a mark after it fails unless its base backup was taken after it",
            report.shard
        ));
    }
}

/// Stops capturing the selected shards: releases what each stream holds
/// on its server and forgets its state (stored segments stay). Returns the
/// `(shard, stream)` pairs removed.
pub async fn remove(
    topology: &Topology,
    names: &[String],
) -> anyhow::Result<Vec<(String, String)>> {
    let repo = open_repository(topology)?;
    let shards = select_shards(topology, names)?;
    let mut removed = Vec::new();
    for st in StreamState::all(repo.as_ref())? {
        let Some(shard) = shards.iter().find(|s| s.name == st.shard) else {
            continue;
        };
        crate::agent::driver(shard)?
            .remove_stream(shard, &st)
            .await?;
        // Its segments and a retired record of how far it got stay: restores
        // this generation covers keep working after a new one starts.
        st.retire(repo.as_ref())?;
        removed.push((st.shard, st.stream));
    }
    Ok(removed)
}

/// Reports of several rounds, summed per stream (the last positions win).
fn merge(mut acc: Vec<RoundReport>, new: Vec<RoundReport>) -> Vec<RoundReport> {
    for r in new {
        match acc
            .iter_mut()
            .find(|a| a.shard == r.shard && a.stream == r.stream)
        {
            Some(a) => {
                a.segments += r.segments;
                a.transactions += r.transactions;
                a.bytes_stored += r.bytes_stored;
                a.progress = r.progress;
                a.server_position = r.server_position;
                a.retained_wal_bytes = r.retained_wal_bytes;
                a.replay_refuses.extend(r.replay_refuses);
                a.replay_refuses
                    .truncate(shard_agent::capture::REFUSES_NAMED);
            }
            None => acc.push(r),
        }
    }
    acc
}

/// Every stream of the shards, started where missing: at the newest
/// backup's cut where the engine can start there (a binlog), else at the
/// server's current position (a new slot's consistent point).
pub async fn ensure_streams(
    topology: &Topology,
    repo: &Arc<dyn Repository>,
    shards: &[Shard],
    observer: &dyn Observer,
) -> anyhow::Result<Started> {
    let newest = list_backups(repo.as_ref(), &topology.cluster)?
        .into_iter()
        .rev()
        .find_map(|l| l.manifest.ok());
    let mut started = Started::default();
    for shard in shards {
        // One shard's refusal (a table without a replica identity, a
        // server that is down) does not keep the others from capturing.
        match shard_streams(topology, repo, shard, newest.as_ref(), observer).await {
            Ok(streams) => started.streams.extend(streams),
            Err(e) => {
                let line = exit::shard_line(&shard.name, &e);
                observer.note(&format!("shardcut: capture refused on shard {line}"));
                started.refused.push(line);
            }
        }
    }
    if started.streams.is_empty() && !started.refused.is_empty() {
        anyhow::bail!(
            "capture refused on every shard: {}",
            started.refused.join("; ")
        );
    }
    Ok(started)
}

/// The streams capture started (or found) and the shards it refused.
#[derive(Default)]
pub struct Started {
    pub streams: Vec<(Shard, StreamState)>,
    /// `shard: why`, one per refused shard.
    pub refused: Vec<String>,
}

impl Started {
    /// Every shard's streams, or an error naming the refused shards.
    pub fn all(self) -> anyhow::Result<Vec<(Shard, StreamState)>> {
        if self.refused.is_empty() {
            Ok(self.streams)
        } else {
            anyhow::bail!("capture refused on {}", self.refused.join("; "))
        }
    }

    /// After the other shards were captured: an error if any was refused.
    fn outcome<T>(&self, done: T) -> anyhow::Result<T> {
        if self.refused.is_empty() {
            Ok(done)
        } else {
            anyhow::bail!(
                "capture refused on {}; the other shards were captured",
                self.refused.join("; ")
            )
        }
    }
}

/// The streams of one shard, started where missing.
async fn shard_streams(
    topology: &Topology,
    repo: &Arc<dyn Repository>,
    shard: &Shard,
    newest: Option<&Manifest>,
    observer: &dyn Observer,
) -> anyhow::Result<Vec<(Shard, StreamState)>> {
    let mut out = Vec::new();
    {
        let driver = crate::agent::driver(shard)?;
        for stream in driver.live_streams(shard).await? {
            if let Some(st) = StreamState::load(repo.as_ref(), &shard.name, &stream)? {
                out.push((shard.clone(), st));
                continue;
            }
            let from = newest
                .and_then(|m| m.cut.shards.get(&shard.name))
                .map(|c| c.position.clone());
            let st = match from {
                Some(p) => match driver
                    .start_stream(shard, &topology.cluster, &stream, Some(p))
                    .await
                {
                    Ok(st) => st,
                    Err(e) => {
                        observer.note(&format!("shardcut: capture of {}: {e}; starting at the server's current position", shard.name));
                        driver
                            .start_stream(shard, &topology.cluster, &stream, None)
                            .await?
                    }
                },
                None => {
                    driver
                        .start_stream(shard, &topology.cluster, &stream, None)
                        .await?
                }
            };
            let mut st = st;
            st.generation = StreamState::next_generation(repo.as_ref(), &shard.name, &stream)?;
            st.save(repo.as_ref())?;
            observer.note(&match &st.slot {
                None => format!("capture of {} starts at {}", shard.name, st.started),
                Some(slot) => format!(
                    "capture of {} database {stream} starts at {} (slot {slot}); backups from now on can be brought forward",
                    shard.name, st.started
                ),
            });
            out.push((shard.clone(), st));
        }
    }
    Ok(out)
}

/// Where catching up goes: every stream to its shard's position of `mark`
/// (one round without a mark).
pub struct CatchUpTarget<'a> {
    pub topology: &'a Topology,
    pub repo: &'a Arc<dyn Repository>,
    pub mark: Option<&'a Mark>,
    pub stop: &'a Arc<AtomicBool>,
}

/// Rounds until every stream has stored its shard's position of the
/// target mark (one round without one); gives up after two minutes.
pub async fn catch_up_to(
    mut streams: Vec<(Shard, StreamState)>,
    target: &CatchUpTarget<'_>,
) -> anyhow::Result<(Vec<(Shard, StreamState)>, Vec<RoundReport>)> {
    let deadline = Instant::now() + Duration::from_secs(120);
    let mut last = Vec::new();
    let (repo, compression) = (target.repo, target.topology.defaults.compression);
    loop {
        let (next, reports) = round(
            streams,
            repo,
            compression,
            &target.topology.cluster,
            target.stop,
        )
        .await?
        .all_or_error()?;
        streams = next;
        last = merge(last, reports);
        let reached = target.mark.is_none_or(|m| {
            streams.iter().all(|(_, st)| {
                m.cut.shards.get(&st.shard).is_none_or(|c| {
                    matches!(
                        c.position.compare(&st.progress),
                        Ok(std::cmp::Ordering::Less | std::cmp::Ordering::Equal)
                    )
                })
            })
        });
        if reached {
            return Ok((streams, last));
        }
        if Instant::now() > deadline {
            anyhow::bail!(
                "capture did not reach the mark within 120 s; the stored positions are kept, run capture again"
            );
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Streams with their shard, as rounds pass them along.
type Streams = Vec<(Shard, StreamState)>;

/// What one round did: every stream back (failed ones as far as they got),
/// the reports of those that succeeded, and why the others failed.
struct RoundOutcome {
    streams: Streams,
    reports: Vec<RoundReport>,
    /// `(shard, stream)` and why.
    failed: Vec<((String, String), String)>,
}

impl RoundOutcome {
    /// The round as one result: an error naming every failed stream.
    fn all_or_error(self) -> anyhow::Result<(Streams, Vec<RoundReport>)> {
        if self.failed.is_empty() {
            return Ok((self.streams, self.reports));
        }
        let mut lines: Vec<String> = self
            .failed
            .iter()
            .map(|((shard, stream), why)| format!("{shard} {stream}: {why}"))
            .collect();
        lines.sort();
        anyhow::bail!("capture failed: {}", lines.join("; "))
    }
}

/// One catch-up round of every stream at once.
async fn round(
    streams: Vec<(Shard, StreamState)>,
    repo: &Arc<dyn Repository>,
    compression: Compression,
    cluster: &str,
    stop: &Arc<AtomicBool>,
) -> anyhow::Result<RoundOutcome> {
    let mut tasks = JoinSet::new();
    for (i, (shard, mut st)) in streams.into_iter().enumerate() {
        let (repo, stop, cluster) = (repo.clone(), stop.clone(), cluster.to_string());
        tasks.spawn(async move {
            let round = CatchUp {
                shard: &shard,
                cluster: &cluster,
                repo: repo.as_ref(),
                compression,
                stop: &stop,
            };
            let r: Result<RoundReport, CaptureError> = match crate::agent::driver(&shard) {
                Ok(driver) => driver.catch_up(&mut st, &round).await,
                Err(e) => Err(e.into()),
            };
            (i, shard, st, r)
        });
    }
    let mut back = Vec::new();
    let mut reports = Vec::new();
    let mut failed = Vec::new();
    while let Some(joined) = tasks.join_next().await {
        let (i, shard, st, r) =
            joined.map_err(|e| anyhow::anyhow!("a capture task panicked: {e}"))?;
        match r {
            Ok(rep) => reports.push(rep),
            Err(e) => failed.push((
                (st.shard.clone(), st.stream.clone()),
                exit::one_line(&anyhow::Error::new(e)),
            )),
        }
        back.push((i, shard, st));
    }
    back.sort_by_key(|(i, _, _)| *i);
    Ok(RoundOutcome {
        streams: back.into_iter().map(|(_, s, st)| (s, st)).collect(),
        reports,
        failed,
    })
}

/// The first wait before a failed stream is tried again in `--follow`,
/// doubled after each failure up to [`RETRY_MAX`].
const RETRY_FIRST: Duration = Duration::from_secs(1);
const RETRY_MAX: Duration = Duration::from_secs(30);

/// When each failed stream of `capture --follow` is tried next.
#[derive(Default)]
struct Retries {
    waits: std::collections::HashMap<(String, String), (Instant, Duration)>,
    why: std::collections::HashMap<(String, String), String>,
}

impl Retries {
    fn due(&self, st: &StreamState, now: Instant) -> bool {
        self.waits
            .get(&(st.shard.clone(), st.stream.clone()))
            .is_none_or(|(next, _)| *next <= now)
    }

    /// Why a stream is waiting to be tried again, if it is.
    fn why(&self, shard: &str, stream: &str) -> Option<String> {
        self.why
            .get(&(shard.to_string(), stream.to_string()))
            .cloned()
    }

    /// Records a failure; returns how long until the next try.
    fn failed(&mut self, key: (String, String), why: &str, now: Instant) -> Duration {
        self.why.insert(key.clone(), why.to_string());
        let wait = self
            .waits
            .get(&key)
            .map_or(RETRY_FIRST, |(_, d)| (*d * 2).min(RETRY_MAX));
        self.waits.insert(key, (now + wait, wait));
        wait
    }

    fn succeeded(&mut self, st: &StreamState) {
        let key = (st.shard.clone(), st.stream.clone());
        self.waits.remove(&key);
        self.why.remove(&key);
    }
}
