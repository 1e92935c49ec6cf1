use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::Serialize;
use shard_agent::capture::{self, CaptureError, RoundReport, StreamState};
use shard_agent::position::Position;
use shard_agent::repo::Repository;
use tokio::task::JoinSet;
use topology::{Compression, Engine, Shard, Topology};

use super::mark::take_mark;
use super::open_repository;
use crate::exit::{self, InvalidInput};
use crate::lock::RepoLock;

/// Capture every shard's changes (binlog, logical decoding) into the
/// repository, from the newest backup's cut onward, so the cluster can be
/// restored to a mark after that backup.
#[derive(Debug, clap::Args)]
#[command(group(clap::ArgGroup::new("mode").required(true).args(["once", "follow", "remove"])))]
pub struct Capture {
    #[arg(short, long = "topology", value_name = "FILE")]
    topology: PathBuf,
    /// Take a mark, catch every shard up to it, and exit.
    #[arg(long)]
    once: bool,
    /// Run until SIGTERM/SIGINT, catching up every `--interval`; the
    /// current round (and its segment) finishes before exit.
    #[arg(long)]
    follow: bool,
    /// Stop capturing: drop the PostgreSQL slots and publications (the
    /// server stops retaining WAL for them) and forget the capture state.
    /// Stored segments stay.
    #[arg(long)]
    remove: bool,
    /// Only these shards (repeatable).
    #[arg(long = "shard", value_name = "NAME")]
    shards: Vec<String>,
    /// With --once: do not take a mark first (only catch up).
    #[arg(long)]
    no_mark: bool,
    /// With --follow: pause between rounds.
    #[arg(long, default_value = "1s", value_parser = topology::parse_duration, value_name = "DURATION")]
    interval: Duration,
    /// With --follow: also take a mark (named auto-…) this often.
    #[arg(long, value_parser = topology::parse_duration, value_name = "DURATION")]
    mark_every: Option<Duration>,
    /// Warn when a PostgreSQL slot retains more WAL than this (MiB).
    #[arg(long, default_value_t = 1024, value_name = "MIB")]
    warn_retained_wal_mib: u64,
    /// Write Prometheus metrics (text format) to this file after every round.
    #[arg(long, value_name = "FILE")]
    metrics: Option<PathBuf>,
    /// Print one JSON document on stdout.
    #[arg(long)]
    json: bool,
}

/// One stream's figures after a round, for output and metrics.
#[derive(Debug, Clone, Serialize)]
pub struct StreamStatus {
    pub shard: String,
    pub stream: String,
    pub progress: Position,
    pub server_position: Option<Position>,
    /// Bytes of change stream not yet stored (unknown across binlog files).
    pub lag_bytes: Option<u64>,
    /// Seconds since the stored position last moved, when behind; 0 when
    /// caught up.
    pub lag_seconds: f64,
    pub last_commit: Option<String>,
    pub retained_wal_bytes: Option<u64>,
    pub segments: u64,
    pub transactions: u64,
}

pub fn lag_bytes(progress: &Position, server: &Position) -> Option<u64> {
    match (progress, server) {
        (Position::Postgres { lsn: a }, Position::Postgres { lsn: b }) => {
            Some(b.0.saturating_sub(a.0))
        }
        (Position::Mariadb { binlog: a, .. }, Position::Mariadb { binlog: b, .. })
        | (Position::Mysql { binlog: a, .. }, Position::Mysql { binlog: b, .. }) => {
            (a.file == b.file).then(|| b.offset.saturating_sub(a.offset))
        }
        _ => None,
    }
}

pub fn status_of(
    state: &StreamState,
    r: Option<&RoundReport>,
    server: Option<Position>,
    retained: Option<u64>,
) -> StreamStatus {
    let lag = server.as_ref().and_then(|s| lag_bytes(&state.progress, s));
    let behind = lag.is_none_or(|l| l > 0) && server.is_some();
    let lag_seconds = if behind {
        chrono::DateTime::parse_from_rfc3339(&state.updated_at)
            .map(|t| {
                (chrono::Utc::now() - t.with_timezone(&chrono::Utc)).num_milliseconds() as f64
                    / 1000.0
            })
            .unwrap_or(0.0)
            .max(0.0)
    } else {
        0.0
    };
    StreamStatus {
        shard: state.shard.clone(),
        stream: state.stream.clone(),
        progress: state.progress.clone(),
        server_position: server,
        lag_bytes: lag,
        lag_seconds,
        last_commit: state.last_commit.clone(),
        retained_wal_bytes: retained,
        segments: r.map(|r| r.segments).unwrap_or(0),
        transactions: r.map(|r| r.transactions).unwrap_or(0),
    }
}

/// Prometheus text format for the streams' lag and retained WAL.
pub fn metrics_text(list: &[StreamStatus]) -> String {
    let mut out = String::new();
    let esc = |s: &str| s.replace('\\', "\\\\").replace('"', "\\\"");
    let mut family = |name: &str, help: &str, value: &dyn Fn(&StreamStatus) -> Option<f64>| {
        out.push_str(&format!("# HELP {name} {help}\n# TYPE {name} gauge\n"));
        for s in list {
            if let Some(v) = value(s) {
                out.push_str(&format!(
                    "{name}{{shard=\"{}\",stream=\"{}\"}} {v}\n",
                    esc(&s.shard),
                    esc(&s.stream)
                ));
            }
        }
    };
    family(
        "shardcut_capture_lag_bytes",
        "Change stream bytes not yet stored in the repository.",
        &|s| s.lag_bytes.map(|b| b as f64),
    );
    family(
        "shardcut_capture_lag_seconds",
        "Seconds the stored position has been behind the server (0 when caught up).",
        &|s| Some(s.lag_seconds),
    );
    family(
        "shardcut_capture_retained_wal_bytes",
        "WAL a PostgreSQL capture slot keeps on the server.",
        &|s| s.retained_wal_bytes.map(|b| b as f64),
    );
    family(
        "shardcut_capture_last_commit_timestamp_seconds",
        "Commit time of the newest stored transaction.",
        &|s| {
            s.last_commit
                .as_deref()
                .and_then(|t| chrono::DateTime::parse_from_rfc3339(t).ok())
                .map(|t| t.timestamp() as f64)
        },
    );
    out
}

impl Capture {
    pub async fn run(self) -> anyhow::Result<u8> {
        let topology = Topology::load(&self.topology)?;
        let repo = open_repository(&topology)?;
        for s in &self.shards {
            if topology.shard(s).is_none() {
                return Err(InvalidInput(format!("the topology has no shard `{s}`")).into());
            }
        }
        let shards: Vec<Shard> = topology
            .shards
            .iter()
            .filter(|s| self.shards.is_empty() || self.shards.contains(&s.name))
            .cloned()
            .collect();
        if self.remove {
            return self.remove(&repo, &shards).await;
        }
        let lock = RepoLock::acquire(repo.clone(), &topology.cluster, "capture")?;
        let result = self.capture(&topology, &repo, &shards).await;
        lock.release();
        result
    }

    async fn capture(
        &self,
        topology: &Topology,
        repo: &Arc<dyn Repository>,
        shards: &[Shard],
    ) -> anyhow::Result<u8> {
        let mut streams = ensure_streams(topology, repo, shards).await?;
        let stop = Arc::new(AtomicBool::new(false));
        let compression = topology.defaults.compression;
        if self.once {
            let target = if self.no_mark {
                None
            } else {
                let name = format!("auto-{}", chrono::Utc::now().format("%Y%m%dT%H%M%S%.3fZ"));
                Some(take_mark(topology, repo, &name, Duration::from_secs(5)).await?)
            };
            let (next, last) = catch_up_to(
                streams,
                repo,
                compression,
                &topology.cluster,
                target.as_ref(),
                &stop,
            )
            .await?;
            streams = next;
            let list = self.report(&streams, &last);
            if let Some(m) = &target {
                if !self.json {
                    eprintln!("capture: mark {} taken and reached on every shard", m.name);
                }
            }
            self.emit(&list, target.as_ref().map(|m| m.name.as_str()))?;
            return Ok(exit::SUCCESS);
        }
        // --follow
        {
            let stop = stop.clone();
            tokio::spawn(async move {
                let mut term =
                    match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
                    {
                        Ok(s) => s,
                        Err(_) => return,
                    };
                tokio::select! {
                    _ = term.recv() => {}
                    _ = tokio::signal::ctrl_c() => {}
                }
                eprintln!("capture: stopping after the current round");
                stop.store(true, Ordering::Relaxed);
            });
        }
        let mut last_mark = Instant::now();
        loop {
            let (next, reports) =
                round(streams, repo, compression, &topology.cluster, &stop).await?;
            streams = next;
            let list = self.report(&streams, &reports);
            if let Some(path) = &self.metrics {
                write_metrics(path, &list)?;
            }
            if stop.load(Ordering::Relaxed) {
                self.emit(&list, None)?;
                return Ok(exit::SUCCESS);
            }
            if self
                .mark_every
                .is_some_and(|every| last_mark.elapsed() >= every)
            {
                let name = format!("auto-{}", chrono::Utc::now().format("%Y%m%dT%H%M%S%.3fZ"));
                match take_mark(topology, repo, &name, Duration::from_secs(5)).await {
                    Ok(m) => tracing::info!("mark {} taken", m.name),
                    Err(e) => eprintln!(
                        "shardcut: capture: taking a mark failed: {}",
                        exit::one_line(&e)
                    ),
                }
                last_mark = Instant::now();
            }
            let until = Instant::now() + self.interval;
            while Instant::now() < until && !stop.load(Ordering::Relaxed) {
                tokio::time::sleep(Duration::from_millis(50).min(self.interval)).await;
            }
        }
    }

    fn report(
        &self,
        streams: &[(Shard, StreamState)],
        reports: &[RoundReport],
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
            if let Some(w) = s.retained_wal_bytes {
                if w > self.warn_retained_wal_mib << 20 {
                    eprintln!(
                        "shardcut: warning: shard {} database {}: the capture slot retains {} MiB of WAL (over {} MiB); capture is falling behind or stopped",
                        s.shard, s.stream, w >> 20, self.warn_retained_wal_mib
                    );
                }
            }
            out.push(s);
        }
        out
    }

    fn emit(&self, list: &[StreamStatus], mark: Option<&str>) -> anyhow::Result<()> {
        if self.json {
            exit::emit(&format!(
                "{}\n",
                serde_json::to_string_pretty(
                    &serde_json::json!({ "mark": mark, "streams": list })
                )?
            ))?;
        } else {
            let mut out = String::new();
            for s in list {
                out.push_str(&format!(
                    "  {:<12} {:<10} stored to {}  lag {}  +{} txn in {} segment(s){}\n",
                    s.shard,
                    s.stream,
                    s.progress,
                    s.lag_bytes
                        .map(|b| format!("{b} B"))
                        .unwrap_or_else(|| "?".into()),
                    s.transactions,
                    s.segments,
                    s.retained_wal_bytes
                        .map(|w| format!("  retained WAL {} KiB", w >> 10))
                        .unwrap_or_default()
                ));
            }
            exit::emit(&out)?;
        }
        Ok(())
    }

    async fn remove(&self, repo: &Arc<dyn Repository>, shards: &[Shard]) -> anyhow::Result<u8> {
        let states = StreamState::all(repo.as_ref())?;
        let mut removed = 0;
        for st in states
            .iter()
            .filter(|st| shards.iter().any(|s| s.name == st.shard))
        {
            let Some(shard) = shards.iter().find(|s| s.name == st.shard) else {
                continue;
            };
            if st.engine == Engine::Postgres {
                capture::postgres::remove(shard, st).await?;
            }
            repo.delete(&capture::keys::state(&st.shard, &st.stream))?;
            removed += 1;
            exit::emit(&format!(
                "removed capture of {} {} (segments kept)\n",
                st.shard, st.stream
            ))?;
        }
        if removed == 0 {
            exit::emit("no capture to remove\n")?;
        }
        Ok(exit::SUCCESS)
    }
}

fn write_metrics(path: &std::path::Path, list: &[StreamStatus]) -> anyhow::Result<()> {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, metrics_text(list))
        .map_err(|e| anyhow::anyhow!("writing {}: {e}", tmp.display()))?;
    std::fs::rename(&tmp, path).map_err(|e| anyhow::anyhow!("writing {}: {e}", path.display()))?;
    Ok(())
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
            }
            None => acc.push(r),
        }
    }
    acc
}

/// Every stream of the shards, started where missing: a binlog stream at
/// the newest backup's cut (or the server's position without one), a
/// PostgreSQL stream at its new slot's consistent point.
pub async fn ensure_streams(
    topology: &Topology,
    repo: &Arc<dyn Repository>,
    shards: &[Shard],
) -> anyhow::Result<Vec<(Shard, StreamState)>> {
    let newest = super::list_backups(repo.as_ref(), &topology.cluster)?
        .into_iter()
        .rev()
        .find_map(|l| l.manifest.ok());
    let mut out = Vec::new();
    for shard in shards {
        match shard.engine {
            Engine::Mysql => {
                let st = match StreamState::load(
                    repo.as_ref(),
                    &shard.name,
                    capture::mysql::STREAM,
                )? {
                    Some(st) => st,
                    None => {
                        let from = newest
                            .as_ref()
                            .and_then(|m| m.cut.shards.get(&shard.name))
                            .map(|c| c.position.clone());
                        let st = match from {
                            Some(p) => match capture::mysql::start(shard, p).await {
                                Ok(st) => st,
                                Err(e) => {
                                    eprintln!("shardcut: capture of {}: {e}; starting at the server's current position", shard.name);
                                    capture::mysql::start(
                                        shard,
                                        capture::mysql::current_position(shard).await?,
                                    )
                                    .await?
                                }
                            },
                            None => {
                                capture::mysql::start(
                                    shard,
                                    capture::mysql::current_position(shard).await?,
                                )
                                .await?
                            }
                        };
                        st.save(repo.as_ref())?;
                        eprintln!("capture of {} starts at {}", shard.name, st.started);
                        st
                    }
                };
                out.push((shard.clone(), st));
            }
            Engine::Postgres => {
                for db in capture::postgres::databases(shard).await? {
                    let st = match StreamState::load(repo.as_ref(), &shard.name, &db)? {
                        Some(st) => st,
                        None => {
                            let st =
                                capture::postgres::start(shard, &topology.cluster, &db).await?;
                            st.save(repo.as_ref())?;
                            eprintln!(
                                "capture of {} database {db} starts at {} (slot {}); backups from now on can be brought forward",
                                shard.name,
                                st.started,
                                st.slot.as_deref().unwrap_or("")
                            );
                            st
                        }
                    };
                    out.push((shard.clone(), st));
                }
            }
        }
    }
    Ok(out)
}

/// Rounds until every stream has stored its shard's position of `target`
/// (one round without a target); gives up after two minutes.
pub async fn catch_up_to(
    mut streams: Vec<(Shard, StreamState)>,
    repo: &Arc<dyn Repository>,
    compression: Compression,
    cluster: &str,
    target: Option<&shard_agent::manifest::Mark>,
    stop: &Arc<AtomicBool>,
) -> anyhow::Result<(Vec<(Shard, StreamState)>, Vec<RoundReport>)> {
    let deadline = Instant::now() + Duration::from_secs(120);
    let mut last = Vec::new();
    loop {
        let (next, reports) = round(streams, repo, compression, cluster, stop).await?;
        streams = next;
        last = merge(last, reports);
        let reached = target.is_none_or(|m| {
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

/// One catch-up round of every stream at once.
async fn round(
    streams: Vec<(Shard, StreamState)>,
    repo: &Arc<dyn Repository>,
    compression: Compression,
    cluster: &str,
    stop: &Arc<AtomicBool>,
) -> anyhow::Result<(Vec<(Shard, StreamState)>, Vec<RoundReport>)> {
    let mut tasks = JoinSet::new();
    for (i, (shard, mut st)) in streams.into_iter().enumerate() {
        let (repo, stop, cluster) = (repo.clone(), stop.clone(), cluster.to_string());
        tasks.spawn(async move {
            let r: Result<RoundReport, CaptureError> = match shard.engine {
                Engine::Mysql => {
                    let id = capture::mysql::server_id(&cluster, &shard.name);
                    capture::mysql::catch_up(&shard, repo.as_ref(), &mut st, id, compression, &stop)
                        .await
                }
                Engine::Postgres => {
                    capture::postgres::catch_up(&shard, repo.as_ref(), &mut st, compression, &stop)
                        .await
                }
            };
            (i, shard, st, r)
        });
    }
    let mut back = Vec::new();
    let mut reports = Vec::new();
    let mut errors = Vec::new();
    while let Some(joined) = tasks.join_next().await {
        let (i, shard, st, r) =
            joined.map_err(|e| anyhow::anyhow!("a capture task panicked: {e}"))?;
        match r {
            Ok(rep) => reports.push(rep),
            Err(e) => errors.push(format!(
                "{} {}: {}",
                st.shard,
                st.stream,
                exit::one_line(&anyhow::Error::new(e))
            )),
        }
        back.push((i, shard, st));
    }
    if !errors.is_empty() {
        errors.sort();
        anyhow::bail!("capture failed: {}", errors.join("; "));
    }
    back.sort_by_key(|(i, _, _)| *i);
    Ok((
        back.into_iter().map(|(_, s, st)| (s, st)).collect(),
        reports,
    ))
}
