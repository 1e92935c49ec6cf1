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

/// A stream's segments, checked to be a gap-free sequence.
pub fn segments(
    repo: &dyn Repository,
    shard: &str,
    stream: &str,
) -> Result<Vec<SegmentMeta>, ReplayError> {
    let segs = list_segments(repo, shard, stream)?;
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
