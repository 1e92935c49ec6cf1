//! Capture status: per stream, how far the repository holds the shard's
//! changes against the server's current position, the WAL a PostgreSQL
//! slot retains, the newest mark, and the expected replay to a mark.

use serde::Serialize;
use shard_agent::capture::{RoundReport, StreamState};
use shard_agent::engine;
use shard_agent::manifest::Manifest;
use shard_agent::position::Position;
use shard_agent::repo::Repository;
use topology::Topology;

use super::{list_backups, open_repository};
use crate::pitr::{self, list_marks, Until};
use crate::rto::{self, Estimate, Expected};

/// One stream's figures after a round, for output and metrics.
#[derive(Debug, Clone, Serialize)]
pub struct StreamStatus {
    pub shard: String,
    pub stream: String,
    /// The capture generation (a stream removed and started again is a
    /// new one).
    pub generation: u32,
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
    /// `capture --follow`: why the stream's last round failed, while it
    /// waits to be tried again.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub failing: Option<String>,
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

/// Seconds from the RFC 3339 time `at` to now (0 for a time unreadable or
/// to come).
pub fn seconds_since(at: &str) -> f64 {
    chrono::DateTime::parse_from_rfc3339(at)
        .map(|t| {
            (chrono::Utc::now() - t.with_timezone(&chrono::Utc)).num_milliseconds() as f64 / 1000.0
        })
        .unwrap_or(0.0)
        .max(0.0)
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
        seconds_since(&state.updated_at)
    } else {
        0.0
    };
    StreamStatus {
        shard: state.shard.clone(),
        stream: state.stream.clone(),
        generation: state.generation,
        progress: state.progress.clone(),
        server_position: server,
        lag_bytes: lag,
        lag_seconds,
        last_commit: state.last_commit.clone(),
        retained_wal_bytes: retained,
        segments: r.map(|r| r.segments).unwrap_or(0),
        transactions: r.map(|r| r.transactions).unwrap_or(0),
        failing: None,
    }
}

/// The cluster's capture, as `status` shows it.
#[derive(Debug, Serialize)]
pub struct CaptureStatus {
    pub cluster: String,
    pub streams: Vec<StreamStatus>,
    pub marks: usize,
    /// The newest mark's name and time.
    pub newest_mark: Option<(String, String)>,
    /// What could not be read (a shard down, a slot missing).
    pub problems: Vec<String>,
    /// Generations stopped by `capture --remove` whose segments are kept:
    /// restores they cover still work.
    pub retired: Vec<StreamState>,
    /// What `restore --until latest` would replay, and how long it is
    /// expected to take; or why that cannot be said.
    pub expected_replay: Result<crate::rto::Estimate, String>,
    /// Each replica repository's lag behind this one, or why it is unknown.
    pub replicas: Vec<(String, Result<super::copy::ReplicaLag, String>)>,
}

/// Reads every stream's state and asks each shard's server where it is.
pub async fn status(topology: &Topology) -> anyhow::Result<CaptureStatus> {
    let repo = open_repository(topology)?;
    let states = StreamState::all(repo.as_ref())?;
    let mut streams = Vec::new();
    let mut problems = Vec::new();
    for st in &states {
        let Some(shard) = topology.shard(&st.shard) else {
            continue;
        };
        let server = match crate::agent::driver(shard) {
            Ok(driver) => driver.stream_server(shard, st).await,
            Err(e) => engine::StreamServer {
                problem: Some(e.to_string()),
                ..Default::default()
            },
        };
        problems.extend(server.problem);
        streams.push(status_of(st, None, server.position, server.retained_bytes));
    }
    let marks = list_marks(repo.as_ref(), &topology.cluster)?;
    Ok(CaptureStatus {
        cluster: topology.cluster.clone(),
        streams,
        marks: marks.len(),
        newest_mark: marks
            .last()
            .map(|m| (m.name.clone(), m.cut.taken_at.clone())),
        problems,
        retired: StreamState::retired(repo.as_ref())?,
        expected_replay: expected_replay(repo.as_ref(), &topology.cluster, &Until::Latest)
            .map_err(|e| crate::exit::one_line(&e)),
        replicas: {
            let t = topology.clone();
            tokio::task::spawn_blocking(move || super::copy::replica_lags(&t)).await?
        },
    })
}

/// What replaying to `until` would take, from the repository alone.
pub fn expected_replay(
    repo: &dyn Repository,
    cluster: &str,
    until: &Until,
) -> anyhow::Result<Estimate> {
    let states = StreamState::all_generations(repo)?;
    let (mark, _) = pitr::resolve(repo, cluster, until, &states)?;
    let shards: Vec<String> = mark.shards.keys().cloned().collect();
    let backups: Vec<Manifest> = list_backups(repo, cluster)?
        .into_iter()
        .filter_map(|l| l.manifest.ok())
        .collect();
    let base = pitr::choose_base(backups, &mark, &shards, &states)?;
    let mut out = Vec::new();
    for (shard, (from, to)) in pitr::ranges(&base, &mark) {
        let Some(sm) = base.shards.get(&shard) else {
            continue;
        };
        let mut transactions = 0;
        for stream in pitr::streams_of(sm) {
            transactions += shard_agent::replay::segments(repo, &shard, &stream, (&from, &to))?
                .iter()
                .filter(|s| overlaps(&s.first, &s.last, &from, &to))
                .map(|s| s.transactions)
                .sum::<u64>();
        }
        let rate = rto::load(repo, &shard);
        let seconds = rate
            .as_ref()
            .and_then(rto::ReplayRate::per_second)
            .map(|r| transactions as f64 / r);
        out.push(Expected {
            shard,
            transactions,
            seconds,
            rate,
        });
    }
    let seconds = out
        .iter()
        .map(|e| e.seconds)
        .try_fold(0.0f64, |acc, s| s.map(|s| acc.max(s)));
    Ok(Estimate {
        mark: mark.name,
        base: base.backup_id,
        shards: out,
        seconds,
    })
}

/// Whether a segment from `first` to `last` holds changes after `from`
/// and before `to`.
fn overlaps(first: &Position, last: &Position, from: &Position, to: &Position) -> bool {
    use std::cmp::Ordering::{Greater, Less};
    matches!(last.compare(from), Ok(Greater)) && matches!(first.compare(to), Ok(Less))
}
