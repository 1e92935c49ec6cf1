//! PostgreSQL behind the engine interface: each operation delegates to
//! the phase module that implements it.

use std::time::Duration;

use async_trait::async_trait;
use topology::{Engine, Shard};

use super::{capture, preflight, readback, replay, restore, Session};
use crate::capture::{CaptureError, RoundReport, StreamState};
use crate::client_choice::ReaderKind;
use crate::cut::{BlockError, CutOptions};
use crate::dump::chunk::RowDigest;
use crate::dump::DumpOptions;
use crate::engine::interface::{CatchUp, CutSession, Driver, StreamServer};
use crate::error::AgentError;
use crate::manifest::{ShardManifest, TableManifest};
use crate::position::Position;
use crate::preflight::{Depth, ShardReport};
use crate::replay::{ReplayError, ReplayOptions, ReplayReport};
use crate::repo::Repository;
use crate::restore::{RestoreOptions, ShardRestore};

/// The PostgreSQL engine.
pub struct Postgres;

#[async_trait]
impl Driver for Postgres {
    fn kind(&self) -> Engine {
        Engine::Postgres
    }

    fn blocks_in_first_wave(&self) -> bool {
        true
    }

    async fn preflight(
        &self,
        shard: &Shard,
        timeout: Duration,
        depth: Depth,
    ) -> Result<ShardReport, AgentError> {
        preflight::check(shard, timeout, depth).await
    }

    async fn open(
        &self,
        shard: &Shard,
        opts: &CutOptions,
        server: String,
    ) -> Result<Box<dyn CutSession>, AgentError> {
        Ok(Box::new(Session::prepare(shard, opts, server).await?))
    }

    async fn check_target(
        &self,
        source: &ShardManifest,
        target: &Shard,
        opts: &RestoreOptions,
    ) -> Result<(), AgentError> {
        restore::check_target(source, target, opts).await
    }

    async fn restore(
        &self,
        source: &ShardManifest,
        target: &Shard,
        opts: &RestoreOptions,
    ) -> Result<ShardRestore, AgentError> {
        restore::restore(source, target, opts).await
    }

    async fn table_digest(
        &self,
        shard: &Shard,
        t: &TableManifest,
        kind: ReaderKind,
    ) -> Result<RowDigest, AgentError> {
        let columns: Vec<(&str, &str)> = t
            .columns
            .iter()
            .map(|c| (c.name.as_str(), c.data_type.as_str()))
            .collect();
        let Some(schema) = t.schema.as_deref() else {
            return Err(AgentError::Damaged {
                shard: shard.name.clone(),
                what: format!("table {} has no schema in the manifest", t.qualified()),
            });
        };
        readback::digest(shard, &t.database, schema, &t.name, &columns, kind).await
    }

    fn streams_of(&self, databases: &[String]) -> Vec<String> {
        databases.to_vec()
    }

    async fn live_streams(&self, shard: &Shard) -> Result<Vec<String>, CaptureError> {
        capture::databases(shard).await
    }

    async fn start_stream(
        &self,
        shard: &Shard,
        cluster: &str,
        stream: &str,
        _from: Option<Position>,
    ) -> Result<StreamState, CaptureError> {
        // A slot starts at its own consistent point; logical decoding
        // cannot start earlier.
        capture::start(shard, cluster, stream).await
    }

    async fn catch_up(
        &self,
        state: &mut StreamState,
        round: &CatchUp<'_>,
    ) -> Result<RoundReport, CaptureError> {
        capture::catch_up(
            round.shard,
            round.repo,
            state,
            round.compression,
            round.stop,
        )
        .await
    }

    async fn remove_stream(&self, shard: &Shard, state: &StreamState) -> Result<(), CaptureError> {
        capture::remove(shard, state).await
    }

    async fn stream_server(&self, shard: &Shard, state: &StreamState) -> StreamServer {
        capture::server_state(shard, state).await
    }

    fn replay_carries_ddl(&self) -> bool {
        // Logical decoding carries rows only, never CREATE/ALTER/DROP TABLE.
        false
    }

    async fn replay(
        &self,
        repo: &dyn Repository,
        source: &str,
        stream: &str,
        target: &Shard,
        (from, to): (&Position, &Position),
        // The binary-log choice is MySQL's; PostgreSQL's WAL is the
        // server's own.
        _options: ReplayOptions,
    ) -> Result<ReplayReport, ReplayError> {
        replay::replay(repo, source, stream, target, from, to).await
    }

    async fn finish_replay(&self, target: &Shard, at: &ShardManifest) -> Result<(), ReplayError> {
        replay::sequences_forward(target, &at.sequences).await
    }
}

#[async_trait]
impl CutSession for Session {
    async fn settle(&mut self) -> Duration {
        Session::settle(self).await
    }

    async fn block(&mut self) -> Result<(), BlockError> {
        Session::block(self).await
    }

    async fn mark(&mut self) -> Result<Position, AgentError> {
        Session::mark(self).await
    }

    async fn release(&mut self) -> Result<Duration, AgentError> {
        Session::release(self).await
    }

    async fn dump(self: Box<Self>, opts: &DumpOptions) -> Result<ShardManifest, AgentError> {
        Session::dump(*self, opts).await
    }
}
