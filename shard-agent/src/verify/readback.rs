//! Reading a live table back and computing its row count and content hash
//! with the same canonical encoding the dump uses, from a fresh query (never
//! from a backup's own counters). Verification of restores compares this
//! against the manifest; tests compare it against a backup of the source.
//! Each engine reads its tables in `engine/<name>/readback.rs`.

use topology::Shard;

pub use crate::client_choice::ReaderKind;
use crate::dump::chunk::RowDigest;
use crate::engine;
use crate::error::AgentError;
use crate::manifest::TableManifest;

/// Digest of the table `t` names (database, schema, name, columns), read
/// from `shard` now.
pub async fn table_digest(shard: &Shard, t: &TableManifest) -> Result<RowDigest, AgentError> {
    table_digest_through(shard, t, ReaderKind::Auto).await
}

/// As [`table_digest`], through the client `kind` chooses (tests read
/// through the libraries alone too, to show both clients read the same
/// lines).
pub async fn table_digest_through(
    shard: &Shard,
    t: &TableManifest,
    kind: ReaderKind,
) -> Result<RowDigest, AgentError> {
    engine::driver(shard.engine)
        .table_digest(shard, t, kind)
        .await
}
