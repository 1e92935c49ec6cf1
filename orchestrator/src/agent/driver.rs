//! The engine interface of a shard, wherever its agent runs: in this
//! process (the engine's own [`Driver`]) or on the database host, where
//! [`RemoteDriver`] forwards each call to `shard-agent serve` as a job and
//! turns the answer back into the same type. Flows ask [`driver`] for a
//! shard's driver and never care which it is.

use std::time::Duration;

use async_trait::async_trait;
use serde::de::DeserializeOwned;
use shard_agent::api::{CaughtUp, DriverCall, JobStarted, JobStatus, RestoreSpec, ShardSpec};
use shard_agent::capture::{CaptureError, RoundReport, StreamState};
use shard_agent::client_choice::ReaderKind;
use shard_agent::cut::CutOptions;
use shard_agent::dump::chunk::RowDigest;
use shard_agent::engine::{self, CatchUp, CutSession, Driver, StreamServer};
use shard_agent::manifest::{ShardManifest, TableManifest};
use shard_agent::position::Position;
use shard_agent::preflight::{Depth, ShardReport};
use shard_agent::replay::{ReplayError, ReplayOptions, ReplayReport};
use shard_agent::repo::Repository;
use shard_agent::restore::{RestoreOptions, ShardRestore};
use shard_agent::AgentError;
use topology::{Engine, Shard};

use super::AgentClient;

/// A shard's driver: the engine's own, or its remote agent's.
pub enum ShardDriver {
    Local(&'static dyn Driver),
    Remote(Box<RemoteDriver>),
}

impl std::ops::Deref for ShardDriver {
    type Target = dyn Driver;

    fn deref(&self) -> &(dyn Driver + 'static) {
        match self {
            ShardDriver::Local(d) => *d,
            ShardDriver::Remote(r) => r.as_ref(),
        }
    }
}

/// The driver that reaches `shard`: through its agent when the topology
/// names one, else in this process.
pub fn driver(shard: &Shard) -> Result<ShardDriver, AgentError> {
    match &shard.agent {
        None => Ok(ShardDriver::Local(engine::driver(shard.engine))),
        Some(spec) => Ok(ShardDriver::Remote(Box::new(RemoteDriver {
            engine: shard.engine,
            client: AgentClient::new(shard, spec)?,
        }))),
    }
}

/// Polls of a job start this often and slow down to [`POLL_MAX`].
const POLL_FIRST: Duration = Duration::from_millis(10);
const POLL_MAX: Duration = Duration::from_millis(500);

pub struct RemoteDriver {
    engine: Engine,
    client: AgentClient,
}

impl RemoteDriver {
    fn local(&self) -> &'static dyn Driver {
        engine::driver(self.engine)
    }

    /// Runs `call` on the agent and waits for its answer. Every poll is a
    /// request with a timeout, so a vanished agent ends the wait; a job
    /// whose orchestrator stopped polling is stopped by the agent.
    async fn run<T: DeserializeOwned>(&self, call: &DriverCall) -> Result<T, AgentError> {
        let started: JobStarted = self
            .client
            .call(reqwest::Method::POST, "/v1/jobs", Some(call))
            .await?;
        let path = format!("/v1/jobs/{}", started.job);
        let mut wait = POLL_FIRST;
        loop {
            tokio::time::sleep(wait).await;
            wait = (wait * 2).min(POLL_MAX);
            let status: JobStatus = self
                .client
                .call(reqwest::Method::GET, &path, None::<&()>)
                .await?;
            match status {
                JobStatus::Running => {}
                JobStatus::Done { result } => {
                    return serde_json::from_value(result)
                        .map_err(|e| self.client.err(format!("sent an unreadable answer: {e}")))
                }
                JobStatus::Failed {
                    error,
                    refusal: false,
                } => return Err(self.client.err(error)),
                JobStatus::Failed { error, .. } => {
                    return Err(AgentError::RemoteRefusal {
                        shard: self.client.shard.clone(),
                        agent: self.client.base.clone(),
                        what: error,
                    })
                }
            }
        }
    }

    fn restore_spec(opts: &RestoreOptions) -> RestoreSpec {
        RestoreSpec {
            repository: opts.repo.reference(),
            overwrite: opts.overwrite,
            binlog: opts.binlog,
            parallelism: opts.parallelism,
            tables: opts.tables.clone(),
        }
    }
}

#[async_trait]
impl Driver for RemoteDriver {
    fn kind(&self) -> Engine {
        self.engine
    }

    fn blocks_in_first_wave(&self) -> bool {
        self.local().blocks_in_first_wave()
    }

    async fn preflight(
        &self,
        shard: &Shard,
        timeout: Duration,
        depth: Depth,
    ) -> Result<ShardReport, AgentError> {
        let timeout_ms = u64::try_from(timeout.as_millis()).unwrap_or(u64::MAX);
        self.run(&DriverCall::Preflight {
            shard: ShardSpec::from_shard(shard),
            timeout_ms,
            depth,
        })
        .await
    }

    async fn open(
        &self,
        shard: &Shard,
        _opts: &CutOptions,
        _server: String,
    ) -> Result<Box<dyn CutSession>, AgentError> {
        // Cut sessions hold a write block between calls: they live in the
        // agent's session API (see `Agent::prepare`), not in jobs.
        Err(self.client.err(format!(
            "shard {}: cut sessions go through the agent's session API",
            shard.name
        )))
    }

    async fn check_target(
        &self,
        source: &ShardManifest,
        target: &Shard,
        opts: &RestoreOptions,
    ) -> Result<(), AgentError> {
        self.run(&DriverCall::CheckTarget {
            source: Box::new(source.clone()),
            target: ShardSpec::from_shard(target),
            options: Self::restore_spec(opts),
        })
        .await
    }

    async fn restore(
        &self,
        source: &ShardManifest,
        target: &Shard,
        opts: &RestoreOptions,
    ) -> Result<ShardRestore, AgentError> {
        self.run(&DriverCall::Restore {
            source: Box::new(source.clone()),
            target: ShardSpec::from_shard(target),
            options: Self::restore_spec(opts),
        })
        .await
    }

    async fn table_digest(
        &self,
        shard: &Shard,
        t: &TableManifest,
        kind: ReaderKind,
    ) -> Result<RowDigest, AgentError> {
        self.run(&DriverCall::TableDigest {
            shard: ShardSpec::from_shard(shard),
            table: Box::new(t.clone()),
            library_only: kind == ReaderKind::Library,
        })
        .await
    }

    fn streams_of(&self, databases: &[String]) -> Vec<String> {
        self.local().streams_of(databases)
    }

    async fn live_streams(&self, shard: &Shard) -> Result<Vec<String>, CaptureError> {
        Ok(self
            .run(&DriverCall::LiveStreams {
                shard: ShardSpec::from_shard(shard),
            })
            .await?)
    }

    async fn start_stream(
        &self,
        shard: &Shard,
        cluster: &str,
        stream: &str,
        from: Option<Position>,
    ) -> Result<StreamState, CaptureError> {
        Ok(self
            .run(&DriverCall::StartStream {
                shard: ShardSpec::from_shard(shard),
                cluster: cluster.to_string(),
                stream: stream.to_string(),
                from,
            })
            .await?)
    }

    async fn catch_up(
        &self,
        state: &mut StreamState,
        round: &CatchUp<'_>,
    ) -> Result<RoundReport, CaptureError> {
        let caught: CaughtUp = self
            .run(&DriverCall::CatchUp {
                shard: ShardSpec::from_shard(round.shard),
                cluster: round.cluster.to_string(),
                repository: round.repo.reference(),
                compression: round.compression,
                state: Box::new(state.clone()),
            })
            .await?;
        *state = caught.state;
        Ok(caught.report)
    }

    async fn remove_stream(&self, shard: &Shard, state: &StreamState) -> Result<(), CaptureError> {
        Ok(self
            .run(&DriverCall::RemoveStream {
                shard: ShardSpec::from_shard(shard),
                state: Box::new(state.clone()),
            })
            .await?)
    }

    async fn stream_server(&self, shard: &Shard, state: &StreamState) -> StreamServer {
        let call = DriverCall::StreamServer {
            shard: ShardSpec::from_shard(shard),
            state: Box::new(state.clone()),
        };
        match self.run(&call).await {
            Ok(s) => s,
            Err(e) => StreamServer {
                problem: Some(e.to_string()),
                ..StreamServer::default()
            },
        }
    }

    fn replay_carries_ddl(&self) -> bool {
        self.local().replay_carries_ddl()
    }

    async fn replay(
        &self,
        repo: &dyn Repository,
        source: &str,
        stream: &str,
        target: &Shard,
        range: (&Position, &Position),
        options: ReplayOptions,
    ) -> Result<ReplayReport, ReplayError> {
        Ok(self
            .run(&DriverCall::Replay {
                repository: repo.reference(),
                source: source.to_string(),
                stream: stream.to_string(),
                target: ShardSpec::from_shard(target),
                from: range.0.clone(),
                to: range.1.clone(),
                options,
            })
            .await?)
    }

    async fn finish_replay(&self, target: &Shard, at: &ShardManifest) -> Result<(), ReplayError> {
        Ok(self
            .run(&DriverCall::FinishReplay {
                target: ShardSpec::from_shard(target),
                at: Box::new(at.clone()),
            })
            .await?)
    }
}
