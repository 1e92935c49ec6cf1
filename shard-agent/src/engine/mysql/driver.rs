//! MySQL/MariaDB behind the engine interface: each operation delegates to
//! the phase module that implements it.

use std::time::Duration;

use async_trait::async_trait;
use topology::{Engine, Shard};

use super::reader::ReaderKind;
use super::{capture, preflight, readback, replay, restore, Session};
use crate::capture::{CaptureError, RoundReport, StreamState};
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

/// The MySQL/MariaDB engine.
pub struct Mysql;

#[async_trait]
impl Driver for Mysql {
    fn kind(&self) -> Engine {
        Engine::Mysql
    }

    fn blocks_in_first_wave(&self) -> bool {
        false
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
        let table = (t.database.as_str(), t.name.as_str(), t.system_versioned);
        readback::digest(shard, table, (&columns, t.rows), kind).await
    }

    fn streams_of(&self, _databases: &[String]) -> Vec<String> {
        vec![capture::STREAM.to_string()]
    }

    async fn live_streams(&self, _shard: &Shard) -> Result<Vec<String>, CaptureError> {
        Ok(vec![capture::STREAM.to_string()])
    }

    async fn start_stream(
        &self,
        shard: &Shard,
        _cluster: &str,
        _stream: &str,
        from: Option<Position>,
    ) -> Result<StreamState, CaptureError> {
        let from = match from {
            Some(p) => p,
            None => capture::current_position(shard).await?,
        };
        capture::start(shard, from).await
    }

    async fn catch_up(
        &self,
        state: &mut StreamState,
        round: &CatchUp<'_>,
    ) -> Result<RoundReport, CaptureError> {
        let id = capture::server_id(round.cluster, &round.shard.name);
        capture::catch_up(
            round.shard,
            round.repo,
            state,
            id,
            round.compression,
            round.stop,
        )
        .await
    }

    async fn remove_stream(
        &self,
        _shard: &Shard,
        _state: &StreamState,
    ) -> Result<(), CaptureError> {
        // A binlog reader holds nothing on the server between rounds.
        Ok(())
    }

    async fn stream_server(&self, shard: &Shard, _state: &StreamState) -> StreamServer {
        StreamServer {
            position: capture::current_position(shard).await.ok(),
            ..StreamServer::default()
        }
    }

    fn replay_carries_ddl(&self) -> bool {
        true
    }

    async fn replay(
        &self,
        repo: &dyn Repository,
        source: &str,
        _stream: &str,
        target: &Shard,
        (from, to): (&Position, &Position),
        options: ReplayOptions,
    ) -> Result<ReplayReport, ReplayError> {
        replay::replay(repo, source, target, (from, to), options).await
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
