//! The engine interface: everything shardcut does that depends on which
//! database a shard runs, in two traits.
//!
//! [`Driver`] holds an engine's stateless operations, one per phase
//! (preflight, opening a cut session, restore, read-back, capture, replay);
//! [`CutSession`] is one shard's open session through the global cut and
//! the dump. Engine-neutral code (the session wrapper, chunking, queues,
//! manifests, the repository, verification, the orchestrator) sees an
//! engine only through these traits, chosen by [`crate::engine::driver`].

use std::sync::atomic::AtomicBool;
use std::time::Duration;

use async_trait::async_trait;
use topology::{Compression, Engine, Shard};

use crate::capture::{CaptureError, RoundReport, StreamState};
use crate::client_choice::ReaderKind;
use crate::cut::{BlockError, CutOptions};
use crate::dump::chunk::RowDigest;
use crate::dump::DumpOptions;
use crate::error::AgentError;
use crate::manifest::{ShardManifest, TableManifest};
use crate::position::Position;
use crate::preflight::{Depth, ShardReport};
use crate::replay::{ReplayError, ReplayOptions, ReplayReport};
use crate::repo::Repository;
use crate::restore::{RestoreOptions, ShardRestore};

/// One engine's operations. Implementations are unit structs registered in
/// [`crate::engine::driver`].
#[async_trait]
pub trait Driver: Send + Sync {
    /// The topology's name for this engine.
    fn kind(&self) -> Engine;

    /// Whether this engine's shards block in the cut's first wave. A
    /// PostgreSQL shard may need many tries to get its table locks, each
    /// holding some writers up for a few milliseconds at most, while a
    /// MariaDB shard's `BACKUP STAGE BLOCK_COMMIT` blocks commits from the
    /// moment it is asked for and takes a bounded time: so the PostgreSQL
    /// shards lock first, and the others block only once they all have,
    /// instead of holding their writers while the PostgreSQL shards keep
    /// trying.
    fn blocks_in_first_wave(&self) -> bool;

    /// Connects to `shard` and checks it. An unreachable shard or refused
    /// login is an `Err`; a reachable shard that is not ready is an `Ok`
    /// report with `ready == false`. `depth` says whether each table's
    /// size (and on MariaDB its row estimate) is read.
    async fn preflight(
        &self,
        shard: &Shard,
        timeout: Duration,
        depth: Depth,
    ) -> Result<ShardReport, AgentError>;

    /// Opens a cut session on a shard that passed preflight (`server` is
    /// its version string) and reads its catalog.
    async fn open(
        &self,
        shard: &Shard,
        opts: &CutOptions,
        server: String,
    ) -> Result<Box<dyn CutSession>, AgentError>;

    /// Refuses, before anything is changed, a target whose databases exist
    /// and hold anything (unless `opts.overwrite`).
    async fn check_target(
        &self,
        source: &ShardManifest,
        target: &Shard,
        opts: &RestoreOptions,
    ) -> Result<(), AgentError>;

    /// Restores `source` (one shard's part of a manifest) into `target`.
    async fn restore(
        &self,
        source: &ShardManifest,
        target: &Shard,
        opts: &RestoreOptions,
    ) -> Result<ShardRestore, AgentError>;

    /// Reads the table `t` names back from `shard` now and digests it with
    /// the dump's canonical encoding, through the client `kind` chooses.
    async fn table_digest(
        &self,
        shard: &Shard,
        t: &TableManifest,
        kind: ReaderKind,
    ) -> Result<RowDigest, AgentError>;

    /// The capture streams a backup of a shard with these databases needs
    /// replayed (one binlog, or one stream per database).
    fn streams_of(&self, databases: &[String]) -> Vec<String>;

    /// The capture streams a live shard has.
    async fn live_streams(&self, shard: &Shard) -> Result<Vec<String>, CaptureError>;

    /// Starts capturing `stream` of `shard`, from `from` where the engine
    /// can choose (a binlog position) or else from now; `None`: from the
    /// server's current position.
    async fn start_stream(
        &self,
        shard: &Shard,
        cluster: &str,
        stream: &str,
        from: Option<Position>,
    ) -> Result<StreamState, CaptureError>;

    /// Stores a stream's changes up to the server's current end, advancing
    /// and saving `state` after every stored segment.
    async fn catch_up(
        &self,
        state: &mut StreamState,
        round: &CatchUp<'_>,
    ) -> Result<RoundReport, CaptureError>;

    /// Releases what a stream holds on the server (a replication slot).
    async fn remove_stream(&self, shard: &Shard, state: &StreamState) -> Result<(), CaptureError>;

    /// Where the server is now relative to a stream, for `status`.
    async fn stream_server(&self, shard: &Shard, state: &StreamState) -> StreamServer;

    /// Whether captured changes carry table definitions (CREATE, ALTER,
    /// DROP TABLE); if not, replay refuses marks whose tables differ from
    /// the base backup's.
    fn replay_carries_ddl(&self) -> bool;

    /// Applies the transactions of `source`'s `stream` after `from` and at
    /// or before `to` to `target`.
    async fn replay(
        &self,
        repo: &dyn Repository,
        source: &str,
        stream: &str,
        target: &Shard,
        range: (&Position, &Position),
        options: ReplayOptions,
    ) -> Result<ReplayReport, ReplayError>;

    /// After every stream of `target` was replayed to a mark: what the
    /// changes themselves do not carry, from the mark's record of the
    /// shard `at` (PostgreSQL: each sequence moved forward to at least its
    /// value at the mark). Nothing by default.
    async fn finish_replay(&self, _target: &Shard, _at: &ShardManifest) -> Result<(), ReplayError> {
        Ok(())
    }
}

/// One shard's session through the global cut, then its dump.
#[async_trait]
pub trait CutSession: Send {
    /// Does, holding no commit up, what would otherwise lengthen the
    /// block: PostgreSQL waits until a block could start without queueing
    /// behind writers stuck on each other or behind a vacuum; MariaDB syncs
    /// a binlog left to the OS and takes the backup stages before
    /// `BLOCK_COMMIT`, which close the tables not in use (DDL waits from
    /// then on, as under the block). Bounded; returns the time spent.
    async fn settle(&mut self) -> Duration;

    /// Blocks commits on the selected tables, within `write_block_timeout`.
    /// On timeout nothing is left blocked.
    async fn block(&mut self) -> Result<(), BlockError>;

    /// Opens the snapshots every worker will read from and records the
    /// shard's position. Only valid while blocked; the orchestrator calls
    /// it as soon as this shard is blocked, before the other shards are.
    /// Snapshots of an attempt that failed after this are ended by the
    /// next `settle` or `mark`.
    async fn mark(&mut self) -> Result<Position, AgentError>;

    /// Ends the block. Returns how long commits were blocked. Idempotent.
    async fn release(&mut self) -> Result<Duration, AgentError>;

    /// Dumps schema and data from the snapshots into the repository.
    async fn dump(self: Box<Self>, opts: &DumpOptions) -> Result<ShardManifest, AgentError>;
}

/// What one catch-up round of one stream needs besides its state.
pub struct CatchUp<'a> {
    pub shard: &'a Shard,
    pub cluster: &'a str,
    pub repo: &'a dyn Repository,
    pub compression: Compression,
    /// Set to stop at the next whole transaction.
    pub stop: &'a AtomicBool,
}

/// The server's side of a capture stream, as far as it could be read.
#[derive(Debug, Default, serde::Serialize, serde::Deserialize)]
pub struct StreamServer {
    /// The server's current position; `None` if it could not be read.
    pub position: Option<Position>,
    /// Bytes of WAL the stream's slot holds back on the server.
    pub retained_bytes: Option<u64>,
    /// What could not be read, for the status report.
    pub problem: Option<String>,
}
