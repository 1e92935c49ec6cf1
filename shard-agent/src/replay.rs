//! Applying captured changes to a restored shard, from its base backup's
//! cut up to a target position (a mark).
//!
//! Both engines apply whole transactions only, each exactly once: a
//! transaction is applied when it lies after the base position and at or
//! before the target, in stream order. Any statement the target refuses
//! stops the replay with an error naming the stream position and the
//! statement; replay never skips a change it cannot apply. What lies
//! outside the base backup's selection (other databases, tables left out,
//! the server's accounts and settings) is left out, and the report says
//! so.

use serde::Serialize;

use crate::capture::{list_segments, CaptureError, SegmentMeta, StreamState};
use crate::manifest::Selection;
use crate::position::Position;
use crate::repo::Repository;

/// How a replay writes to its target.
#[derive(Debug, Clone, Default, Serialize, serde::Deserialize)]
pub struct ReplayOptions {
    /// MySQL/MariaDB: write the replayed changes to the target's binary
    /// log (as `restore --binlog` does for the base). Default: not logged,
    /// like the base restore.
    #[serde(default)]
    pub binlog: bool,
    /// What the base backup selected (its manifest's). MySQL/MariaDB: the
    /// binlog is the whole server's, and only the changes of these
    /// databases and tables are applied (PostgreSQL's capture reads its
    /// shard's tables only).
    #[serde(default)]
    pub scope: Selection,
}

/// Connections a shard's replay applies changes on at once, at most: on
/// MariaDB row events split by table, on PostgreSQL netted changes split
/// by table.
const WORKERS: usize = 4;

/// The limit in force: `SHARDCUT_REPLAY_WORKERS` (1 applies everything in
/// source order on one connection, as before parallel apply; benchmarks
/// compare the two, and a test takes both paths), else [`WORKERS`].
pub(crate) fn workers() -> usize {
    crate::knobs::count("SHARDCUT_REPLAY_WORKERS")
        .filter(|n| *n <= 64)
        .unwrap_or(WORKERS)
}

/// What replaying one shard did.
#[derive(Debug, Clone, Default, Serialize, serde::Deserialize)]
pub struct ReplayReport {
    pub segments: u64,
    pub transactions: u64,
    pub statements: u64,
    /// What the DBA should know about the target's rate (one line each),
    /// such as a buffer pool too small for the tables the changes touch.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub notes: Vec<String>,
    /// Single-row changes applied in key order rather than source order
    /// (MariaDB/MySQL targets; see `engine::mysql::reorder`).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub reordered: u64,
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

#[derive(Debug, thiserror::Error)]
pub enum ReplayError {
    #[error(transparent)]
    Capture(#[from] CaptureError),
    #[error(transparent)]
    Agent(#[from] crate::AgentError),
    #[error("shard {shard}: replaying {at}: {what}")]
    Apply {
        shard: String,
        at: String,
        what: String,
    },
    #[error("shard {shard}: {what}")]
    Refused { shard: String, what: String },
}

/// The segments of the capture generation of a stream that holds its
/// changes from `from` to `to`, checked to be a gap-free sequence. A
/// stream removed and started again is a new generation; each numbers its
/// segments from 0, and they never mix. The generation is chosen by the
/// stream's states (current and retired): the newest whose capture started
/// at or before `from` and has stored up to `to`; failing that, the newest
/// that started at or before `from`; failing that, the newest.
pub fn segments(
    repo: &dyn Repository,
    shard: &str,
    stream: &str,
    (from, to): (&Position, &Position),
) -> Result<Vec<SegmentMeta>, ReplayError> {
    let all = list_segments(repo, shard, stream)?;
    let mut states: Vec<StreamState> = StreamState::retired(repo)?
        .into_iter()
        .filter(|s| s.shard == shard && s.stream == stream)
        .collect();
    states.extend(StreamState::load(repo, shard, stream)?);
    let at_or_before = |a: &Position, b: &Position| {
        matches!(
            a.compare(b),
            Ok(std::cmp::Ordering::Less | std::cmp::Ordering::Equal)
        )
    };
    let started = |s: &&StreamState| at_or_before(&s.started, from);
    let chosen = states
        .iter()
        .filter(started)
        .filter(|s| at_or_before(to, &s.progress))
        .map(|s| s.generation)
        .max()
        .or_else(|| states.iter().filter(started).map(|s| s.generation).max())
        .or_else(|| all.iter().map(|s| s.generation).max());
    let segs: Vec<SegmentMeta> = all
        .into_iter()
        .filter(|s| Some(s.generation) == chosen)
        .collect();
    for pair in segs.windows(2) {
        if pair[1].seq != pair[0].seq + 1 {
            return Err(ReplayError::Refused {
                shard: shard.to_string(),
                what: format!(
                    "capture stream {stream} has a gap: segment {} follows segment {} ({}); the repository is damaged",
                    pair[1].seq, pair[0].seq, pair[0].key
                ),
            });
        }
    }
    Ok(segs)
}

/// Shortens a statement for an error message.
pub fn excerpt(sql: &str) -> String {
    let one_line: String = sql.split_whitespace().collect::<Vec<_>>().join(" ");
    if one_line.chars().count() > 160 {
        format!("{}…", one_line.chars().take(160).collect::<String>())
    } else {
        one_line
    }
}
