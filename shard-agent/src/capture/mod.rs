//! Continuous change capture: every shard's change stream, stored in the
//! repository as ordered, compressed, checksummed segments.
//!
//! A shard has one or more *streams*: MySQL/MariaDB one (its binlog),
//! PostgreSQL one per database (logical decoding is per database). Each
//! stream has a state object (where capture started and how far it has
//! stored) and segments, each holding whole transactions only, keyed by
//! their first position so they list in order.
//!
//! Crash safety: a round stores a segment, then advances the state. A crash
//! between the two leaves the state behind the segment; the next round reads
//! the same changes again and stores a segment under the same key (same
//! first position), replacing it. Replay also skips any transaction at or
//! before the position it has applied, so nothing can apply twice.

mod segment;
pub mod spill;

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use topology::Engine;

use crate::manifest::keys::segment as key_segment;
use crate::position::Position;
use crate::repo::{RepoError, Repository};

pub use segment::{
    data_stem, list_segments, load_segment, read_description, store_segment, SegmentData,
    SegmentMeta,
};

/// Raw bytes of a segment before it is closed; a single transaction larger
/// than this still goes into one segment whole.
pub const SEGMENT_RAW_BYTES: usize = 16 << 20;

/// Where one stream's capture started and how far it has stored.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct StreamState {
    pub shard: String,
    /// `binlog`, or the PostgreSQL database name.
    pub stream: String,
    pub engine: Engine,
    /// The first position capture covers: changes after it are captured.
    pub started: Position,
    pub started_at: String,
    /// Every change up to this position is stored in segments.
    pub progress: Position,
    pub updated_at: String,
    /// Commit time of the newest stored transaction (RFC 3339).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_commit: Option<String>,
    /// Number of the next segment to store.
    #[serde(default)]
    pub next_seq: u64,
    /// PostgreSQL: the replication slot and publication this stream reads.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub slot: Option<String>,
    /// Which run of capture this is: a stream removed (`capture --remove`)
    /// and started again is a new generation, whose segments never mix
    /// with an older one's. 0 for the first.
    #[serde(default)]
    pub generation: u32,
    /// PostgreSQL: tables added to the stream's publication after it was
    /// created (tables created since, taken in at the next capture round),
    /// by their qualified name, each with the position from which its
    /// changes are captured. Changes before it were not: a base backup
    /// holding such a table cannot be brought forward from a cut before it.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub published_from: BTreeMap<String, Position>,
    /// PostgreSQL: selected tables not in the publication (without a
    /// replica identity, which publishing would break, or about to be
    /// added): their changes are not captured.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub unpublished: Vec<String>,
    /// PostgreSQL: selected tables not in the publication because they are
    /// unlogged (created while capture ran): the server writes no WAL for
    /// their changes, so none is captured. One made logged is taken in at
    /// the next round, from then on ([`StreamState::published_from`]).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub unlogged: Vec<String>,
}

/// The most a stream state or a segment description may take: shardcut
/// writes them in a kilobyte or two (positions and counts). A larger one,
/// planted in the repository, is refused by its size before it is read.
pub const DOCUMENT_MAX: u64 = 1 << 20;

/// Reads a stream state or a segment description, at most
/// [`DOCUMENT_MAX`] bytes.
pub fn read_document(repo: &dyn Repository, key: &str) -> Result<Vec<u8>, CaptureError> {
    match repo.get_at_most(key, DOCUMENT_MAX) {
        Err(RepoError::TooLarge { size, max, .. }) => Err(CaptureError::Corrupt {
            key: key.to_string(),
            what: format!(
                "{size} bytes, more than the {max} a state or segment description of shardcut's ever takes: not read"
            ),
        }),
        other => Ok(other?),
    }
}

pub mod keys {
    use super::key_segment;

    pub fn shard_prefix(shard: &str) -> String {
        format!("capture/{}/", key_segment(shard))
    }
    pub fn stream_prefix(shard: &str, stream: &str) -> String {
        format!("capture/{}/{}/", key_segment(shard), key_segment(stream))
    }
    pub fn state(shard: &str, stream: &str) -> String {
        format!("{}state.json", stream_prefix(shard, stream))
    }
    pub fn segments(shard: &str, stream: &str) -> String {
        format!("{}seg/", stream_prefix(shard, stream))
    }
    /// The state of a generation that was stopped (`capture --remove`):
    /// kept while its segments are, so that restores it covers still work.
    pub fn retired(shard: &str, stream: &str, generation: u32) -> String {
        format!(
            "{}retired/{generation:06}.json",
            stream_prefix(shard, stream)
        )
    }
    /// Where a generation's segment names start within [`segments`]: the
    /// first generation's have no prefix (as before generations existed),
    /// later ones `gNNNNNN-`, which sorts after every earlier one.
    pub fn generation_prefix(generation: u32) -> String {
        if generation == 0 {
            String::new()
        } else {
            format!("g{generation:06}-")
        }
    }
}

impl StreamState {
    pub fn load(
        repo: &dyn Repository,
        shard: &str,
        stream: &str,
    ) -> Result<Option<StreamState>, CaptureError> {
        match Self::read(repo, &keys::state(shard, stream)) {
            Err(CaptureError::Repo(RepoError::NotFound { .. })) => Ok(None),
            other => other.map(Some),
        }
    }

    pub fn save(&self, repo: &dyn Repository) -> Result<(), CaptureError> {
        let data = serde_json::to_vec_pretty(self).map_err(|e| CaptureError::Corrupt {
            key: keys::state(&self.shard, &self.stream),
            what: e.to_string(),
        })?;
        let key = keys::state(&self.shard, &self.stream);
        repo.put(&key, &data)?;
        repo.sync_names(&[&key])?;
        Ok(())
    }

    /// Ends this generation: its state is kept as a retired one (its
    /// segments stay), and the stream has no current state any more.
    pub fn retire(&self, repo: &dyn Repository) -> Result<(), CaptureError> {
        let key = keys::retired(&self.shard, &self.stream, self.generation);
        let data = serde_json::to_vec_pretty(self).map_err(|e| CaptureError::Corrupt {
            key: key.clone(),
            what: e.to_string(),
        })?;
        repo.put(&key, &data)?;
        repo.sync_names(&[&key])?;
        let state = keys::state(&self.shard, &self.stream);
        repo.delete(&state)?;
        repo.sync_names(&[&state])?;
        Ok(())
    }

    /// The states of stopped generations of every stream.
    pub fn retired(repo: &dyn Repository) -> Result<Vec<StreamState>, CaptureError> {
        Self::retired_in(repo, &Self::stream_folders(repo)?)
    }

    fn retired_in(
        repo: &dyn Repository,
        folders: &[String],
    ) -> Result<Vec<StreamState>, CaptureError> {
        let mut out = Vec::new();
        for folder in folders {
            let retired = format!("{folder}retired/");
            for name in repo.list_folder(&retired)? {
                if name.ends_with(".json") {
                    out.push(Self::read(repo, &format!("{retired}{name}"))?);
                }
            }
        }
        Ok(out)
    }

    fn current_in(
        repo: &dyn Repository,
        folders: &[String],
    ) -> Result<Vec<StreamState>, CaptureError> {
        let mut out = Vec::new();
        for folder in folders {
            match Self::read(repo, &format!("{folder}state.json")) {
                Err(CaptureError::Repo(RepoError::NotFound { .. })) => {}
                other => out.push(other?),
            }
        }
        Ok(out)
    }

    /// Every stream's folder (`capture/<shard>/<stream>/`), found a level
    /// at a time: never by listing the streams' segments, of which a
    /// long-lived stream has thousands.
    fn stream_folders(repo: &dyn Repository) -> Result<Vec<String>, CaptureError> {
        let mut out = Vec::new();
        for shard in repo.list_folder("capture/")? {
            if !shard.ends_with('/') {
                continue;
            }
            let shard = format!("capture/{shard}");
            for stream in repo.list_folder(&shard)? {
                if stream.ends_with('/') {
                    out.push(format!("{shard}{stream}"));
                }
            }
        }
        Ok(out)
    }

    fn read(repo: &dyn Repository, key: &str) -> Result<StreamState, CaptureError> {
        let data = read_document(repo, key)?;
        serde_json::from_slice(&data).map_err(|e| CaptureError::Corrupt {
            key: key.to_string(),
            what: e.to_string(),
        })
    }

    /// Current and retired states: what captured changes cover.
    pub fn all_generations(repo: &dyn Repository) -> Result<Vec<StreamState>, CaptureError> {
        let folders = Self::stream_folders(repo)?;
        let mut out = Self::current_in(repo, &folders)?;
        out.extend(Self::retired_in(repo, &folders)?);
        Ok(out)
    }

    /// The generation a stream started now gets: after every generation
    /// whose state or segments are in the repository.
    pub fn next_generation(
        repo: &dyn Repository,
        shard: &str,
        stream: &str,
    ) -> Result<u32, CaptureError> {
        let mut next = None::<u32>;
        let mut seen = |g: u32| next = Some(next.map_or(g + 1, |n| n.max(g + 1)));
        for st in Self::retired(repo)? {
            if st.shard == shard && st.stream == stream {
                seen(st.generation);
            }
        }
        for seg in list_segments(repo, shard, stream)? {
            seen(seg.generation);
        }
        Ok(next.unwrap_or(0))
    }

    /// Every stream state of every shard in the repository.
    pub fn all(repo: &dyn Repository) -> Result<Vec<StreamState>, CaptureError> {
        Self::current_in(repo, &Self::stream_folders(repo)?)
    }
}

/// What one catch-up round of one stream did.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct RoundReport {
    pub shard: String,
    pub stream: String,
    pub segments: u64,
    pub transactions: u64,
    pub bytes_stored: u64,
    /// The stream's stored position after the round.
    pub progress: Option<Position>,
    /// The server's current position when the round ended.
    pub server_position: Option<Position>,
    /// Bytes of WAL the slot retains (PostgreSQL).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retained_wal_bytes: Option<u64>,
    /// MariaDB: changes the round stored that replay will refuse (where,
    /// the statement's head, why), the first [`REFUSES_NAMED`]; a restore
    /// to a mark after one fails unless its base backup was taken after it.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub replay_refuses: Vec<String>,
}

/// The most changes replay will refuse that a round report names.
pub const REFUSES_NAMED: usize = 5;

#[derive(Debug, thiserror::Error)]
pub enum CaptureError {
    #[error(transparent)]
    Repo(#[from] RepoError),
    #[error("capture object {key} is unreadable: {what}")]
    Corrupt { key: String, what: String },
    #[error(transparent)]
    Agent(#[from] crate::AgentError),
    #[error("shard {shard}: {what}")]
    Stream { shard: String, what: String },
}

impl CaptureError {
    pub fn stream(shard: &str, what: impl Into<String>) -> CaptureError {
        CaptureError::Stream {
            shard: shard.to_string(),
            what: what.into(),
        }
    }
}
