//! The global cut across all shards.
//!
//! Before each attempt every shard settles: waits, holding no commit up,
//! until its writers are not stuck on each other (a deadlock among them
//! would otherwise hold up the cut's locks, and every blocked shard with
//! them), and does what the block would otherwise do while commits wait
//! (a MariaDB shard syncs its binlog and closes its unused tables).
//! Shards are then asked to block in two waves (see [`Agent::blocks_first`]),
//! each wave all at once. Each shard opens its snapshots and records its
//! position as soon as it is blocked (the shards of the first wave while
//! the second blocks), and only when every shard is blocked and marked are
//! all blocks released. A shard commits nothing between its block and its
//! release, and no release comes before the last block: so there is an
//! instant at which every shard was blocked, and what each shard recorded
//! is its state at that instant, however early in its own block it was
//! recorded. If any shard cannot block within its timeout, every shard is
//! released and the cut is retried with backoff (the snapshots of a
//! failed attempt end when the shard settles or marks again: see
//! [`Agent::mark`]); after the last attempt the error names every shard
//! that failed and what held it up.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use futures_util::future::join_all;
use shard_agent::cut::BlockError;
use shard_agent::manifest::{Cut, ShardCut};
use shard_agent::position::Position;
use shard_agent::AgentError;

use crate::agent::Agent;

pub const MAX_ATTEMPTS: u32 = 4;
const FIRST_BACKOFF: Duration = Duration::from_millis(250);
/// A settle at least this long is logged: the agents' threshold for a jam,
/// so shorter ones are just the time of a look.
const SETTLE_WORTH_NOTING: Duration = Duration::from_millis(50);

#[derive(Debug, thiserror::Error)]
pub enum CutError {
    #[error(
        "could not take a consistent cut after {attempts} attempts: {}",
        join(reasons)
    )]
    Unblockable { attempts: u32, reasons: Vec<String> },
    #[error("the cut failed: {}", join(errors))]
    Failed { errors: Vec<String> },
}

fn join(v: &[String]) -> String {
    v.join("; ")
}

/// Test-only behaviour, never set in production runs.
#[derive(Debug, Clone, Default)]
pub struct CutTestHooks {
    /// Hold the block this long after marking (to kill the process meanwhile).
    pub hold_block: Option<Duration>,
    /// Do not block at all: snapshot shards one after another with a pause,
    /// as independent per-shard tools would. Proves the consistency check
    /// can fail.
    pub no_write_block: bool,
}

pub async fn global_cut(sessions: &mut [Agent], hooks: &CutTestHooks) -> Result<Cut, CutError> {
    if hooks.no_write_block {
        return unblocked(sessions).await;
    }
    let mut backoff = FIRST_BACKOFF;
    // Writers queue behind a block attempt that fails too: its time counts
    // in the cut's write-block time, not only the attempt that succeeded.
    let mut failed_attempts = Duration::ZERO;
    for attempt in 1..=MAX_ATTEMPTS {
        settle_all(sessions).await;
        let started = Instant::now();
        let (marks, failures) = block_and_mark(sessions).await;
        if !failures.is_empty() {
            release_all(sessions).await;
            failed_attempts += started.elapsed();
            let retry = failures
                .iter()
                .all(|f| matches!(f, BlockError::Timeout { .. }));
            let reasons: Vec<String> = failures.iter().map(|f| f.to_string()).collect();
            if retry && attempt < MAX_ATTEMPTS {
                tracing::warn!(
                    "cut attempt {attempt} failed: {}; retrying in {} ms",
                    join(&reasons),
                    backoff.as_millis()
                );
                tokio::time::sleep(backoff).await;
                backoff *= 2;
                continue;
            }
            return Err(if retry {
                CutError::Unblockable {
                    attempts: attempt,
                    reasons,
                }
            } else {
                CutError::Failed { errors: reasons }
            });
        }
        // Every shard is blocked now: the instant the cut stands for.
        let taken_at = chrono::Utc::now().to_rfc3339();
        tracing::info!(
            "cut: all {} shards blocked and their positions recorded after {} ms",
            sessions.len(),
            started.elapsed().as_millis()
        );
        if let Some(hold) = hooks.hold_block {
            eprintln!(
                "cut: holding the block for {} ms (test hook)",
                hold.as_millis()
            );
            tokio::time::sleep(hold).await;
        }
        let releases = join_all(sessions.iter_mut().map(|s| s.release())).await;
        tracing::debug!("cut: released at {} ms", started.elapsed().as_millis());
        // The longest any shard held its writers: blocks end together, so
        // that is from the first shard's block to the last release.
        let longest = releases
            .iter()
            .filter_map(|r| r.as_ref().ok())
            .max()
            .copied()
            .unwrap_or_default();
        let cluster_ms = millis(longest + failed_attempts);
        let mut errors = Vec::new();
        let mut shards = BTreeMap::new();
        for ((s, mark), release) in sessions.iter().zip(marks).zip(releases) {
            match (mark, release) {
                (Ok(position), Ok(held)) => {
                    shards.insert(
                        s.shard().to_string(),
                        ShardCut {
                            position,
                            write_block_ms: millis(held),
                        },
                    );
                }
                (Err(e), _) | (_, Err(e)) => errors.push(describe(e)),
            }
        }
        if !errors.is_empty() {
            return Err(CutError::Failed { errors });
        }
        return Ok(Cut {
            write_block_ms: cluster_ms,
            attempts: attempt,
            taken_at,
            shards,
        });
    }
    Err(CutError::Unblockable {
        attempts: MAX_ATTEMPTS,
        reasons: vec![],
    })
}

fn describe(e: AgentError) -> String {
    format!(
        "{e} (the block may have ended early, e.g. its lease expired, so the cut cannot be trusted)"
    )
}

/// Lets every shard wait, holding no commit up, for writers stuck on each
/// other and for vacuum to leave its tables, and sync a MariaDB binlog
/// and close its unused tables, which the block would otherwise do (see
/// [`Agent::settle`]), all at
/// once, so that the blocks that follow start together and none waits out
/// a jam while others hold their writers. A shard that cannot settle is
/// left to its block, which reports what is wrong.
async fn settle_all(sessions: &mut [Agent]) {
    let started = Instant::now();
    let settled = join_all(sessions.iter_mut().map(|s| s.settle())).await;
    for (s, r) in sessions.iter().zip(settled) {
        match r {
            Ok(waited) if waited >= SETTLE_WORTH_NOTING => tracing::info!(
                "cut: {} settled for {} ms before blocking, holding no commit up \
                 (writers waiting on each other's locks, a vacuum on a table, a \
                 binlog sync, or MariaDB closing its unused tables, which would \
                 otherwise fall under the block)",
                s.shard(),
                waited.as_millis()
            ),
            Ok(_) => {}
            Err(e) => tracing::warn!("cut: {} could not settle: {e}", s.shard()),
        }
    }
    tracing::debug!("cut: settled in {} ms", started.elapsed().as_millis());
}

/// Blocks every shard, the ones that [block first](Agent::blocks_first)
/// before the others, and has each record its position (see
/// [`Agent::mark`]) as soon as it is blocked: the first wave's shards mark
/// while the second wave blocks, so the cut's block spans two waves, not
/// three. Stops after a wave with a failure. Returns each shard's mark, in
/// the order of `sessions`, and the failures to block (none: all shards
/// are blocked, and nothing of the attempt may be released before this
/// returns).
async fn block_and_mark(
    sessions: &mut [Agent],
) -> (Vec<Result<Position, AgentError>>, Vec<BlockError>) {
    let first = sessions.iter_mut().filter(|s| s.blocks_first());
    let blocked = join_all(first.map(|s| s.block())).await;
    let failures: Vec<BlockError> = blocked.into_iter().filter_map(Result::err).collect();
    if !failures.is_empty() {
        return (Vec::new(), failures);
    }
    let second = join_all(sessions.iter_mut().map(|s| async move {
        if !s.blocks_first() {
            s.block().await?;
        }
        Ok::<_, BlockError>(s.mark().await)
    }))
    .await;
    let (mut marks, mut failures) = (Vec::new(), Vec::new());
    for outcome in second {
        match outcome {
            Ok(mark) => marks.push(mark),
            Err(e) => failures.push(e),
        }
    }
    (marks, failures)
}

async fn release_all(sessions: &mut [Agent]) {
    for r in join_all(sessions.iter_mut().map(|s| s.release())).await {
        if let Err(e) = r {
            tracing::error!("releasing a block failed: {e}");
        }
    }
}

async fn unblocked(sessions: &mut [Agent]) -> Result<Cut, CutError> {
    let mut shards = BTreeMap::new();
    let mut errors = Vec::new();
    let taken_at = chrono::Utc::now().to_rfc3339();
    for s in sessions.iter_mut() {
        match s.mark().await {
            Ok(position) => {
                shards.insert(
                    s.shard().to_string(),
                    ShardCut {
                        position,
                        write_block_ms: 0,
                    },
                );
            }
            Err(e) => errors.push(e.to_string()),
        }
        tokio::time::sleep(Duration::from_millis(150)).await;
    }
    if errors.is_empty() {
        Ok(Cut {
            write_block_ms: 0,
            attempts: 1,
            taken_at,
            shards,
        })
    } else {
        Err(CutError::Failed { errors })
    }
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}
