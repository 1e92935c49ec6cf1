//! The orchestrator's view of a shard agent: in-process (a [`Session`] in
//! this process) or remote (`shard-agent serve` on the database host, over
//! HTTP). Both expose the same steps, so the cut and the dump are driven by
//! one code path whatever the deployment.

use std::sync::atomic::Ordering;
use std::time::Duration;

use shard_agent::api::*;
use shard_agent::cut::{BlockError, CutOptions};
use shard_agent::dump::DumpOptions;
use shard_agent::manifest::ShardManifest;
use shard_agent::position::Position;
use shard_agent::session::Session;
use shard_agent::AgentError;
use topology::{Engine, Shard};

pub use client::AgentClient;
use client::Failure;
pub use driver::{driver, ShardDriver};

mod client;
mod driver;

pub enum Agent {
    Local(Box<Session>),
    Remote(Remote),
}

pub struct Remote {
    client: AgentClient,
    engine: Engine,
    session: String,
}

impl std::ops::Deref for Remote {
    type Target = AgentClient;

    fn deref(&self) -> &AgentClient {
        &self.client
    }
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

/// A remote dump whose progress has not moved for this long is given up
/// (the agent may be wedged); the orchestrator never polls forever.
const DUMP_STALL_LIMIT: Duration = Duration::from_secs(30 * 60);

impl Agent {
    pub async fn prepare(shard: &Shard, opts: &CutOptions) -> Result<Agent, AgentError> {
        match &shard.agent {
            None => Ok(Agent::Local(Box::new(Session::prepare(shard, opts).await?))),
            Some(spec) => {
                let mut remote = Remote {
                    client: AgentClient::new(shard, spec)?,
                    engine: shard.engine,
                    session: String::new(),
                };
                let v: VersionInfo = remote
                    .call(reqwest::Method::GET, "/v1/version", None::<&()>)
                    .await?;
                if v.api != API_VERSION {
                    return Err(remote.err(format!(
                        "speaks agent API v{} (version {}), this shardcut needs v{API_VERSION}; install matching versions",
                        v.api, v.version
                    )));
                }
                let req = PrepareRequest {
                    shard: ShardSpec::from_shard(shard),
                    write_block_timeout_ms: millis(opts.write_block_timeout),
                    write_block_lease_ms: millis(opts.write_block_lease),
                    connect_timeout_ms: millis(opts.connect_timeout),
                };
                let r: PrepareResponse = remote
                    .call(reqwest::Method::POST, "/v1/sessions", Some(&req))
                    .await?;
                remote.session = r.session;
                Ok(Agent::Remote(remote))
            }
        }
    }

    pub fn shard(&self) -> &str {
        match self {
            Agent::Local(s) => s.shard(),
            Agent::Remote(r) => &r.shard,
        }
    }

    /// Whether this shard blocks in the cut's first wave (see
    /// [`shard_agent::engine::Driver::blocks_in_first_wave`]).
    pub fn blocks_first(&self) -> bool {
        let engine = match self {
            Agent::Local(s) => s.engine(),
            Agent::Remote(r) => r.engine,
        };
        shard_agent::engine::driver(engine).blocks_in_first_wave()
    }

    /// See [`Session::settle`].
    pub async fn settle(&mut self) -> Result<Duration, AgentError> {
        match self {
            Agent::Local(s) => Ok(s.settle().await),
            Agent::Remote(r) => {
                let path = format!("/v1/sessions/{}/settle", r.session);
                let m: SettleResponse = r.call(reqwest::Method::POST, &path, None::<&()>).await?;
                Ok(Duration::from_millis(m.waited_ms))
            }
        }
    }

    pub async fn block(&mut self) -> Result<(), BlockError> {
        match self {
            Agent::Local(s) => s.block().await,
            Agent::Remote(r) => {
                let path = format!("/v1/sessions/{}/block", r.session);
                match r.send(reqwest::Method::POST, &path, None::<&()>).await {
                    Ok(_) => Ok(()),
                    Err(Failure::Api(body)) if body.kind == "block_timeout" => {
                        Err(BlockError::Timeout {
                            shard: r.shard.clone(),
                            timeout: Duration::from_millis(body.timeout_ms),
                            holder: body.holder,
                        })
                    }
                    Err(f) => Err(BlockError::Failed(r.failure(f))),
                }
            }
        }
    }

    /// Opens the shard's snapshots and records its position; only while
    /// it is blocked. The snapshots of an earlier attempt that failed are
    /// not reused: PostgreSQL ends them when it settles or marks again,
    /// and MySQL/MariaDB's `START TRANSACTION` ends the open transaction.
    pub async fn mark(&mut self) -> Result<Position, AgentError> {
        match self {
            Agent::Local(s) => s.mark().await,
            Agent::Remote(r) => {
                let path = format!("/v1/sessions/{}/mark", r.session);
                let m: MarkResponse = r.call(reqwest::Method::POST, &path, None::<&()>).await?;
                Ok(m.position)
            }
        }
    }

    pub async fn release(&mut self) -> Result<Duration, AgentError> {
        match self {
            Agent::Local(s) => s.release().await,
            Agent::Remote(r) => {
                let path = format!("/v1/sessions/{}/release", r.session);
                let m: ReleaseResponse = r.call(reqwest::Method::POST, &path, None::<&()>).await?;
                Ok(Duration::from_millis(m.held_ms))
            }
        }
    }

    /// Dumps the shard. A remote agent writes into the repository itself
    /// (at the same path on its host: a shared mount); this side only
    /// polls its progress and collects the shard's manifest.
    pub async fn dump(self, opts: DumpOptions) -> Result<ShardManifest, AgentError> {
        match self {
            Agent::Local(s) => s.dump(opts).await,
            Agent::Remote(r) => {
                let path = format!("/v1/sessions/{}/dump", r.session);
                let req = DumpRequest {
                    backup_id: opts.backup_id.clone(),
                    repository: opts.repo.reference(),
                    compression: opts.compression,
                    chunk_rows: opts.chunk_rows,
                    digest_only: opts.digest_only,
                };
                r.send(reqwest::Method::POST, &path, Some(&req))
                    .await
                    .map_err(|f| r.failure(f))?;
                let polled = poll_dump(&r, &path, &opts).await;
                if polled.is_err() {
                    // Whatever ended the wait (cancelled, a failed status
                    // call, no progress), the agent's dump must not go on
                    // into a discarded backup. Best effort: an agent that
                    // hears nothing more stops the dump on its own.
                    drop(
                        r.send(
                            reqwest::Method::DELETE,
                            &format!("/v1/sessions/{}", r.session),
                            None::<&()>,
                        )
                        .await,
                    );
                }
                polled
            }
        }
    }
}

/// Polls a remote dump at `path` until it ends; its shard manifest.
async fn poll_dump(
    r: &Remote,
    path: &str,
    opts: &DumpOptions,
) -> Result<ShardManifest, AgentError> {
    let mut last = (u64::MAX, u64::MAX);
    let mut moved = std::time::Instant::now();
    loop {
        if opts.cancel.load(Ordering::Relaxed) {
            return Err(AgentError::Cancelled {
                shard: r.shard.clone(),
            });
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
        let status: DumpStatus = r.call(reqwest::Method::GET, path, None::<&()>).await?;
        match status {
            DumpStatus::Running {
                rows,
                bytes,
                rows_estimate,
            } => {
                if (rows, bytes) != last {
                    last = (rows, bytes);
                    moved = std::time::Instant::now();
                } else if moved.elapsed() > DUMP_STALL_LIMIT {
                    return Err(r.err(format!(
                        "dump made no progress for {} min; giving up",
                        DUMP_STALL_LIMIT.as_secs() / 60
                    )));
                }
                opts.progress.rows.store(rows, Ordering::Relaxed);
                opts.progress.bytes.store(bytes, Ordering::Relaxed);
                opts.progress
                    .rows_estimate
                    .store(rows_estimate, Ordering::Relaxed);
            }
            DumpStatus::Done { manifest } => return Ok(*manifest),
            DumpStatus::Failed { error } => return Err(r.err(format!("dump failed: {error}"))),
        }
    }
}
