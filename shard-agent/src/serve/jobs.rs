//! Engine-interface calls ([`DriverCall`]) run by the agent as jobs:
//! restore, read-back, capture rounds, replay and preflight, on the
//! database host, as the dump is. A job runs in a task of its own; its
//! answer is the call's own result as JSON, which the orchestrator's
//! remote driver turns back into the same type.

use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::Duration;

use serde::Serialize;

use crate::api::{CaughtUp, DriverCall, RestoreSpec};
use crate::client_choice::ReaderKind;
use crate::engine::{self, CatchUp};
use crate::error::{one_line, AgentError};
use crate::repo::Repository;
use crate::restore::RestoreOptions;

fn json<T: Serialize>(value: &T) -> Result<serde_json::Value, JobFailure> {
    serde_json::to_value(value).map_err(|e| format!("cannot encode the answer: {e}").into())
}

/// Why a job failed: its error on one line, and whether it is a refusal
/// of what it was given (see [`AgentError::is_refusal`]) rather than
/// something failing.
pub(super) struct JobFailure {
    pub error: String,
    pub refusal: bool,
}

impl From<String> for JobFailure {
    fn from(error: String) -> JobFailure {
        JobFailure {
            error,
            refusal: false,
        }
    }
}

/// A call's answer as JSON, or its error on one line.
fn answer<T: Serialize, E: std::error::Error + 'static>(
    r: Result<T, E>,
) -> Result<serde_json::Value, JobFailure> {
    match r {
        Ok(v) => json(&v),
        Err(e) => Err(JobFailure {
            error: one_line(&e),
            refusal: (&e as &(dyn std::error::Error + 'static))
                .downcast_ref::<AgentError>()
                .is_some_and(AgentError::is_refusal),
        }),
    }
}

fn restore_options(spec: RestoreSpec, repo: Arc<dyn Repository>) -> RestoreOptions {
    RestoreOptions {
        repo,
        overwrite: spec.overwrite,
        binlog: spec.binlog,
        parallelism: spec.parallelism.clamp(1, 64),
        tables: spec.tables,
        // Tables are read back after the whole restore (the announcement
        // channel does not cross the network).
        ready: None,
        bundles: Default::default(),
    }
}

/// Runs one call. `repo` is the call's repository, opened by the caller
/// after checking it is one this agent may use.
pub(super) async fn run(
    call: DriverCall,
    repo: Option<Arc<dyn Repository>>,
) -> Result<serde_json::Value, JobFailure> {
    let repository = || -> Result<Arc<dyn Repository>, String> {
        repo.clone()
            .ok_or_else(|| "the call names no repository".to_string())
    };
    match call {
        DriverCall::Preflight {
            shard,
            timeout_ms,
            depth,
        } => {
            let s = shard.into_shard();
            answer(
                engine::driver(s.engine)
                    .preflight(&s, Duration::from_millis(timeout_ms), depth)
                    .await,
            )
        }
        DriverCall::CheckTarget {
            source,
            target,
            options,
        } => {
            let t = target.into_shard();
            let opts = restore_options(options, repository()?);
            answer(
                engine::driver(t.engine)
                    .check_target(&source, &t, &opts)
                    .await,
            )
        }
        DriverCall::Restore {
            source,
            target,
            options,
        } => {
            let t = target.into_shard();
            let opts = restore_options(options, repository()?);
            answer(engine::driver(t.engine).restore(&source, &t, &opts).await)
        }
        DriverCall::TableDigest {
            shard,
            table,
            library_only,
        } => {
            let s = shard.into_shard();
            let kind = if library_only {
                ReaderKind::Library
            } else {
                ReaderKind::Auto
            };
            answer(
                engine::driver(s.engine)
                    .table_digest(&s, &table, kind)
                    .await,
            )
        }
        DriverCall::LiveStreams { shard } => {
            let s = shard.into_shard();
            answer(engine::driver(s.engine).live_streams(&s).await)
        }
        DriverCall::StartStream {
            shard,
            cluster,
            stream,
            from,
        } => {
            let s = shard.into_shard();
            answer(
                engine::driver(s.engine)
                    .start_stream(&s, &cluster, &stream, from)
                    .await,
            )
        }
        DriverCall::CatchUp {
            shard,
            cluster,
            repository: _,
            compression,
            state,
        } => {
            let s = shard.into_shard();
            let repo = repository()?;
            // A round ends on its own; the orchestrator stops between rounds.
            let stop = AtomicBool::new(false);
            let round = CatchUp {
                shard: &s,
                cluster: &cluster,
                repo: repo.as_ref(),
                compression,
                stop: &stop,
            };
            let mut state = *state;
            let report = engine::driver(s.engine)
                .catch_up(&mut state, &round)
                .await
                .map_err(|e| one_line(&e))?;
            json(&CaughtUp { state, report })
        }
        DriverCall::RemoveStream { shard, state } => {
            let s = shard.into_shard();
            answer(engine::driver(s.engine).remove_stream(&s, &state).await)
        }
        DriverCall::StreamServer { shard, state } => {
            let s = shard.into_shard();
            json(&engine::driver(s.engine).stream_server(&s, &state).await)
        }
        DriverCall::FinishReplay { target, at } => {
            let t = target.into_shard();
            answer(engine::driver(t.engine).finish_replay(&t, &at).await)
        }
        DriverCall::Replay {
            repository: _,
            source,
            stream,
            target,
            from,
            to,
            options,
        } => {
            let t = target.into_shard();
            let repo = repository()?;
            answer(
                engine::driver(t.engine)
                    .replay(repo.as_ref(), &source, &stream, &t, (&from, &to), options)
                    .await,
            )
        }
    }
}
