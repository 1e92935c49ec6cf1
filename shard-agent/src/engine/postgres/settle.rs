//! Waiting, holding nothing, until the shard's writers stop waiting on
//! each other, so that a cut does not start its block inside a jam.
//!
//! A `LOCK TABLE` queues behind every conflicting lock already granted.
//! Two writers deadlocked on row locks keep theirs until the server's
//! `deadlock_timeout` (1 s by default) ends one of them, and a transaction
//! that stays open keeps its locks for as long as it runs. A cut that
//! tries to lock meanwhile holds up this shard's other writers with each
//! try, and on a cluster cut every shard already blocked holds its writers
//! for the whole wait. Measured: about 1 cut in 30 started inside a writer
//! deadlock under sysbench and blocked for a second (docs/BENCHMARKS.md).
//!
//! So the orchestrator asks every shard to settle before each cut attempt,
//! and a lock try that keeps failing checks for a jam that began after
//! settling (then the attempt is given up and retried after settling).
//! A jam is a session of the selected databases that has waited longer
//! than [`STUCK_WAIT`] for a row or table lock; a writer waiting for
//! another's commit waits milliseconds and is not one. Advisory-lock
//! waits are not counted: applications may wait on those for minutes.

use std::time::{Duration, Instant};

use tokio_postgres::Client;

/// A lock wait longer than this is a jam; a wait behind another writer's
/// commit takes a few milliseconds, a deadlock `deadlock_timeout`.
pub(super) const STUCK_WAIT: Duration = Duration::from_millis(50);

/// Pause between two looks while settling.
const POLL: Duration = Duration::from_millis(5);

/// The longest jammed lock wait at the moment of asking.
pub(super) struct Jam {
    pub pid: i32,
    pub waited: Duration,
    /// `transactionid`, `tuple` (row locks) or `relation` (table locks).
    pub on: String,
}

impl std::fmt::Display for Jam {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "pid {} waiting {} ms for a {} lock (writers deadlocked, or queued behind a long transaction)",
            self.pid,
            self.waited.as_millis(),
            self.on
        )
    }
}

/// The longest lock wait over [`STUCK_WAIT`] among other sessions of
/// `databases`. The wait is measured from the start of the waiting
/// statement (`pg_locks.waitstart` needs PostgreSQL 14; shardcut supports
/// 13), which can only overstate it: a cut then waits longer before
/// blocking, or gives an attempt up early, never blocks longer.
pub(super) async fn jam(
    client: &Client,
    databases: &[String],
) -> Result<Option<Jam>, tokio_postgres::Error> {
    let row = client
        .query_opt(
            "SELECT pid, (extract(epoch FROM clock_timestamp() - query_start) * 1000)::float8, \
             wait_event::text FROM pg_stat_activity \
             WHERE wait_event_type = 'Lock' AND wait_event IN ('relation', 'tuple', 'transactionid') \
             AND datname = ANY($1) AND pid <> pg_backend_pid() AND query_start IS NOT NULL \
             AND clock_timestamp() - query_start > $2::float8 * interval '1 millisecond' \
             ORDER BY query_start LIMIT 1",
            &[&databases, &(STUCK_WAIT.as_secs_f64() * 1000.0)],
        )
        .await?;
    let Some(row) = row else {
        return Ok(None);
    };
    let ms: f64 = row.try_get(1)?;
    Ok(Some(Jam {
        pid: row.try_get(0)?,
        waited: Duration::from_secs_f64(ms.max(0.0) / 1000.0),
        on: row.try_get::<_, Option<String>>(2)?.unwrap_or_default(),
    }))
}

/// Waits until [`jam`] finds none, at most `budget`; returns how long it
/// waited, and whether the last look found no jam. Holds no lock, so the
/// wait costs the writers nothing. A failed look ends the wait: the block
/// that follows reports real errors itself.
pub(super) async fn settle(
    client: &Client,
    databases: &[String],
    budget: Duration,
) -> (Duration, bool) {
    let started = Instant::now();
    let clear = loop {
        match jam(client, databases).await {
            Ok(None) => break true,
            Ok(Some(j)) if started.elapsed() + POLL < budget => {
                tracing::trace!("settling: {j}");
                tokio::time::sleep(POLL).await;
            }
            Ok(Some(j)) => {
                tracing::debug!(
                    "still jammed after {} ms ({j}); the cut tries anyway",
                    started.elapsed().as_millis()
                );
                break false;
            }
            Err(e) => {
                tracing::debug!("cannot look for lock waits: {e}");
                break false;
            }
        }
    };
    (started.elapsed(), clear)
}
