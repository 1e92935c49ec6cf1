//! Applying captured changes to a restored shard, from its base backup's
//! cut up to a target position (a mark).
//!
//! Both engines apply whole transactions only, each exactly once: a
//! transaction is applied when it lies after the base position and at or
//! before the target, in stream order. Any statement the target refuses
//! stops the replay with an error naming the stream position and the
//! statement; replay never skips a change it cannot apply.

use serde::Serialize;

use crate::capture::{list_segments, CaptureError, SegmentMeta};
use crate::position::Position;
use crate::repo::Repository;

/// What replaying one shard did.
#[derive(Debug, Clone, Default, Serialize, serde::Deserialize)]
pub struct ReplayReport {
    pub segments: u64,
    pub transactions: u64,
    pub statements: u64,
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

/// The segments of the capture generation of a stream that holds the
/// changes right after `from`, checked to be a gap-free sequence. A
/// stream removed and started again is a new generation; each generation
/// numbers its segments from 0, and they never mix. The one chosen is the
/// newest that started at or before `from` (generations follow each other
/// in time); without one, the newest.
pub fn segments(
    repo: &dyn Repository,
    shard: &str,
    stream: &str,
    from: &Position,
) -> Result<Vec<SegmentMeta>, ReplayError> {
    let all = list_segments(repo, shard, stream)?;
    let mut firsts: std::collections::BTreeMap<u32, &Position> = Default::default();
    for s in &all {
        firsts.entry(s.generation).or_insert(&s.first);
    }
    let chosen = firsts
        .iter()
        .rev()
        .find(|(_, first)| {
            matches!(
                first.compare(from),
                Ok(std::cmp::Ordering::Less | std::cmp::Ordering::Equal)
            )
        })
        .or_else(|| firsts.iter().next_back())
        .map(|(g, _)| *g);
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
