//! The PostgreSQL part of the global cut.
//!
//! Block: in every selected database, one transaction takes
//! `LOCK TABLE … IN EXCLUSIVE MODE` on all selected tables, which blocks
//! writers but not readers. Attempts wait briefly and retry with growing
//! waits (see [`FIRST_LOCK_WAIT`]) until `write_block_timeout`. Mark: while the
//! locks are held, a second connection per database opens a
//! `REPEATABLE READ READ ONLY` transaction and exports its snapshot (the
//! lock holder cannot export it: ending its transaction to release the
//! block would destroy the snapshot). The LSN is read while still blocked,
//! and it is the WAL *insert* position: every commit record of a
//! transaction the snapshot sees lies before it, even one committed
//! asynchronously whose WAL is not flushed yet (the *write* position could
//! lie before such a record, and replay would apply it twice).

use std::time::{Duration, Instant};

use tokio_postgres::SimpleQueryMessage;
use topology::Shard;

use super::guard;
use super::settle::{self, Jam, STUCK_WAIT};
use super::{pg_err, Database, Session};
use crate::connect;
use crate::cut::{BlockError, Lease};
use crate::error::AgentError;
use crate::position::{Lsn, Position};

/// The snapshot id and WAL position in the row of the mark's query.
fn snapshot_and_lsn(messages: &[SimpleQueryMessage]) -> Option<(String, String)> {
    messages.iter().find_map(|m| match m {
        SimpleQueryMessage::Row(row) => Some((row.get(0)?.to_string(), row.get(1)?.to_string())),
        _ => None,
    })
}

/// Ends the given backends from a fresh connection (releases their locks).
async fn terminate(shard: Shard, pids: Vec<i32>, timeout: Duration) -> Result<(), AgentError> {
    let admin = connect::postgres(&shard, None, timeout).await?;
    admin
        .execute(
            "SELECT pg_terminate_backend(p) FROM unnest($1::int4[]) AS p",
            &[&pids],
        )
        .await
        .map_err(pg_err(&shard, "ending the blocking sessions"))?;
    Ok(())
}

/// Replaces `db`'s block connection with a new one (and its backend pid):
/// the old one was ended, or is being ended, by a lease or a termination.
async fn reconnect_block(
    shard: &Shard,
    db: &mut Database,
    timeout: Duration,
) -> Result<(), AgentError> {
    db.block = super::reader(shard, &db.name, timeout).await?;
    db.block_pid = db
        .block
        .query_one("SELECT pg_backend_pid()", &[])
        .await
        .and_then(|r| r.try_get(0))
        .map_err(pg_err(shard, "reading the backend pid"))?;
    Ok(())
}

/// The session holding a lock on one of `tables` the longest.
async fn holder(shard: &Shard, db: &str, exclude: i32, timeout: Duration) -> Option<String> {
    let client = connect::postgres(shard, Some(db), timeout).await.ok()?;
    let row = client
        .query_opt(
            &format!(
                "SELECT {}, l.relation::regclass::text \
             FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid \
             WHERE l.granted AND l.relation IS NOT NULL AND l.pid NOT IN ($1, pg_backend_pid()) \
             AND l.mode IN ('RowExclusiveLock', 'ShareUpdateExclusiveLock', 'ShareLock', \
                            'ShareRowExclusiveLock', 'ExclusiveLock', 'AccessExclusiveLock') \
             AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database()) \
             ORDER BY a.xact_start LIMIT 1",
                super::activity::COLUMNS
            ),
            &[&exclude],
        )
        .await
        .ok()??;
    let a = super::activity::Activity::read(&row)?;
    let table: Option<String> = row.try_get(5).ok()?;
    Some(format!(
        "pid {} ({}) holding a lock that conflicts with the block on {db}.{} in a transaction open for {} s, {}: `{}`",
        a.pid,
        a.who,
        table.unwrap_or_default(),
        a.age.unwrap_or(0),
        a.state.unwrap_or_default(),
        a.query
    ))
}

/// Pause between two tries, so the writers that made a try fail can
/// finish, and so the loop does not take a core the writers need.
const RETRY_PAUSE: Duration = Duration::from_millis(1);

/// How long a first-phase try waits for its one table.
const ONE_TABLE_WAIT: Duration = Duration::from_millis(10);

/// The first second-phase try's lock wait, doubled after each failure.
const FIRST_LOCK_WAIT: Duration = Duration::from_millis(20);

/// Why one database could not be locked.
enum LockFailure {
    /// The locks were not all granted within the budget; retryable.
    Busy,
    /// Writers jammed (see [`settle`]) after the attempt began; every
    /// further try would only hold writers up until the jam clears, so the
    /// attempt is given up and retried after settling.
    Jammed(Jam),
    /// Anything else (connection lost, permission denied, ...).
    Failed(AgentError),
}

/// Locks granted, and since when writers may have been held up.
struct Locked {
    /// When the successful try was sent, moved back by the time of every
    /// failed try (a failed try held up some writers until its rollback),
    /// so the shard's write-block time never flatters.
    since: Instant,
}

/// The SQL of one try, run in a savepoint of the open block transaction
/// (see [`guard::try_in_savepoint`]). `wait_for` is the table the try waits
/// for (all of them when `None`), for at most `wait`; the others it takes
/// `NOWAIT`.
fn try_sql(tables: &[String], wait_for: Option<usize>, wait: Duration) -> String {
    let ms = wait.as_millis().max(1);
    let mut sql = format!("SET LOCAL lock_timeout = '{ms}ms';");
    match wait_for {
        None => sql.push_str(&format!(
            " LOCK TABLE {} IN EXCLUSIVE MODE",
            tables.join(", ")
        )),
        Some(k) => {
            sql.push_str(&format!(" LOCK TABLE {} IN EXCLUSIVE MODE;", tables[k]));
            let rest: Vec<&str> = (0..tables.len())
                .filter(|&i| i != k)
                .map(|i| tables[i].as_str())
                .collect();
            if !rest.is_empty() {
                sql.push_str(&format!(
                    " LOCK TABLE {} IN EXCLUSIVE MODE NOWAIT",
                    rest.join(", ")
                ));
            }
        }
    }
    sql
}

/// Takes `EXCLUSIVE` locks on `tables` in the open transaction on `block`
/// before `deadline`; on success the transaction stays open, holding them.
/// `look` is another connection to the database, for jam checks: the block
/// transaction would see `pg_stat_activity` as it was when it began.
///
/// `LOCK TABLE a, b` takes its locks one at a time, and a writer that
/// holds `b` and then wants `a` deadlocks with a `LOCK` that holds `a` and
/// waits for `b`. PostgreSQL breaks that only after `deadlock_timeout`
/// (1 s by default), with every writer of `a` queued behind. Under writers
/// whose transactions touch several tables in any order (sysbench's do)
/// such a `LOCK` deadlocks on most tries (measured: docs/BENCHMARKS.md).
/// So for the first half of the budget a try waits for one table only,
/// holding nothing else, which cannot deadlock, and then takes the others
/// `NOWAIT`, which cannot wait; the table waited for rotates from try to
/// try. When writers overlap so much that the other tables are never free
/// at once, that starves; the second half therefore waits for all tables
/// in the lock queue, ahead of later writers, with a wait that starts
/// short (a deadlocked try ends quickly) and doubles (so a long
/// transaction can still be waited out). In the first half, once tries
/// have failed for [`STUCK_WAIT`], a failure also looks for a jam that
/// began after settling, and gives the attempt up if there is one.
async fn lock_tables(
    shard: &Shard,
    db: &str,
    block: &tokio_postgres::Client,
    look: &tokio_postgres::Client,
    tables: &[String],
    deadline: Instant,
    settled: bool,
) -> Result<Locked, LockFailure> {
    if tables.is_empty() {
        return Ok(Locked {
            since: Instant::now(),
        });
    }
    let started = Instant::now();
    let first_phase_until = started + deadline.saturating_duration_since(started) / 2;
    let mut held_up = Duration::ZERO;
    let mut wait = FIRST_LOCK_WAIT;
    let mut last_look = started;
    for round in 1u32.. {
        let now = Instant::now();
        let left = deadline.saturating_duration_since(now);
        let sql = if now < first_phase_until {
            let k = round as usize % tables.len();
            try_sql(tables, Some(k), ONE_TABLE_WAIT.min(left))
        } else {
            let this = wait.min(left);
            wait *= 2;
            try_sql(tables, None, this)
        };
        match try_lock(shard, db, block, &sql).await {
            Ok(()) => {
                tracing::debug!(
                    "{}: locked the tables of {db} after {} ms, try {round}",
                    shard.name,
                    started.elapsed().as_millis()
                );
                return Ok(Locked {
                    since: now.checked_sub(held_up).unwrap_or(started),
                });
            }
            Err(LockFailure::Busy) => {
                held_up += now.elapsed();
                if Instant::now() + RETRY_PAUSE >= deadline {
                    return Err(LockFailure::Busy);
                }
                // Only first-phase tries are short enough (10 ms) that no
                // writer queued behind one of ours can look jammed.
                let first_phase = now < first_phase_until;
                if first_phase
                    && started.elapsed() >= STUCK_WAIT
                    && last_look.elapsed() >= STUCK_WAIT / 5
                {
                    last_look = Instant::now();
                    if let Some(jam) = new_jam(look, db, settled, started.elapsed()).await {
                        return Err(LockFailure::Jammed(jam));
                    }
                }
                tokio::time::sleep(RETRY_PAUSE).await;
            }
            Err(failed) => return Err(failed),
        }
    }
    Err(LockFailure::Busy)
}

/// A jam on `db` that began after settling. If settling found none, every
/// jam did (its first waiter may have waited, unjammed, since before);
/// if settling gave up, only one whose waiting began within the attempt's
/// `elapsed` time: an older one is waited out like any lock holder.
async fn new_jam(
    look: &tokio_postgres::Client,
    db: &str,
    settled: bool,
    elapsed: Duration,
) -> Option<Jam> {
    match settle::jam(look, &[db.to_string()]).await {
        Ok(Some(jam)) if settled || jam.waited <= elapsed => Some(jam),
        Ok(_) => None,
        Err(e) => {
            tracing::debug!("cannot look for lock waits on {db}: {e}");
            None
        }
    }
}

/// One try of `sql`; a try that found a lock taken (or deadlocked) is
/// rolled back to its savepoint and reported as [`LockFailure::Busy`].
async fn try_lock(
    shard: &Shard,
    db: &str,
    block: &tokio_postgres::Client,
    sql: &str,
) -> Result<(), LockFailure> {
    // The server bounds every wait (`NOWAIT`, `lock_timeout`); the
    // client-side bound only catches a server that stops answering.
    match tokio::time::timeout(Duration::from_secs(30), guard::try_in_savepoint(block, sql)).await {
        Ok(Ok(true)) => Ok(()),
        Ok(Ok(false)) | Err(_) => Err(LockFailure::Busy),
        Ok(Err(e)) => Err(LockFailure::Failed(pg_err(
            shard,
            &format!("locking tables of {db}"),
        )(e))),
    }
}

impl Session {
    pub(crate) async fn block(&mut self) -> Result<(), BlockError> {
        if self.lease.as_ref().is_some_and(Lease::expired) {
            tracing::warn!(
                "{}: the vacuum guard taken while settling was ended by its lease; the block starts afresh",
                self.shard.name
            );
            self.reopen_blocks().await?;
        }
        let started = Instant::now();
        let timeout = self.opts.write_block_timeout;
        let deadline = started + timeout;
        let shard = self.shard.clone();
        let mut outcome: Result<(), (Option<String>, Option<AgentError>)> = Ok(());
        // Writers may be held up from the first database's locks on.
        let mut since: Option<Instant> = None;
        for db in &mut self.databases {
            let tables: Vec<String> = db.tables.iter().map(|t| t.qualified()).collect();
            if !db.open {
                // Not settled first (an agent driven without /settle).
                if let Err(e) = db.block.batch_execute("BEGIN").await {
                    outcome = Err((None, Some(pg_err(&shard, "beginning the block")(e))));
                    break;
                }
                db.open = true;
            }
            let settled = self.settled;
            let locked = lock_tables(
                &shard, &db.name, &db.block, &db.snap, &tables, deadline, settled,
            )
            .await;
            match locked {
                Ok(locked) => {
                    since = Some(since.map_or(locked.since, |s| s.min(locked.since)));
                }
                Err(LockFailure::Busy) => {
                    let h = holder(&shard, &db.name, db.block_pid, self.opts.connect_timeout).await;
                    outcome = Err((h, None));
                    break;
                }
                Err(LockFailure::Jammed(jam)) => {
                    tracing::debug!("{}: giving the attempt up: {jam}", shard.name);
                    outcome = Err((Some(format!("{} on {}", jam, db.name)), None));
                    break;
                }
                Err(LockFailure::Failed(e)) => {
                    outcome = Err((None, Some(e)));
                    break;
                }
            }
        }
        match outcome {
            Ok(()) => {
                self.blocked_since = Some(since.unwrap_or(started));
                let pids = self.databases.iter().map(|d| d.block_pid).collect();
                self.lease = Some(Lease::arm(
                    self.opts.write_block_lease,
                    shard.name.clone(),
                    terminate(shard.clone(), pids, self.opts.connect_timeout),
                ));
                Ok(())
            }
            Err((holder, failure)) => {
                // Roll back every database's block transaction, also the
                // ones that did get their locks.
                if let Err(e) = self.rollback_blocks().await {
                    return Err(BlockError::Failed(e));
                }
                Err(match failure {
                    Some(e) => BlockError::Failed(e),
                    None => BlockError::Timeout {
                        shard: shard.name.clone(),
                        timeout,
                        holder,
                    },
                })
            }
        }
    }

    /// Prepares a block attempt without holding any writer up: takes the
    /// vacuum guard in every selected database (see [`guard`]; waiting at
    /// most `deadlock_timeout` + 1 s, and only for autovacuums), then waits
    /// until no writer is jammed (see [`settle`]), at most the write-block
    /// timeout or [`crate::cut::SETTLE_AT_LEAST`], whichever is longer.
    /// Returns the time it took.
    pub(crate) async fn settle(&mut self) -> Duration {
        let started = Instant::now();
        if self.databases.is_empty() {
            return Duration::ZERO;
        }
        let budget = self.opts.settle_budget();
        // A block transaction left open (an attempt never asked to block)
        // starts afresh, and so do the snapshots of an attempt that failed
        // after this shard marked.
        if let Err(e) = self.end_block_transactions("ROLLBACK").await {
            tracing::debug!("{}: {e}", self.shard.name);
        }
        if let Err(e) = self.end_snapshots().await {
            tracing::debug!("{}: {e}", self.shard.name);
        }
        for db in &mut self.databases {
            let tables: Vec<String> = db.tables.iter().map(|t| t.qualified()).collect();
            let taken = guard::take(&self.shard.name, &db.name, &db.block, &db.snap, &tables).await;
            match taken {
                Ok(_held) => db.open = true,
                Err(e) => {
                    // The block attempt that follows reports real errors.
                    tracing::debug!("{}: no vacuum guard on {}: {e}", self.shard.name, db.name);
                    db.open = db.block.batch_execute("ROLLBACK").await.is_err();
                }
            }
        }
        // The guard holds no writer up, but left open (an orchestrator gone
        // between settling and blocking, with a remote agent) it would keep
        // vacuum and DDL off the tables, and writers queue behind waiting
        // DDL. So it is leased (`CutOptions::settled_lease`). A block
        // re-arms the lease; a failed one or a release ends the guard.
        let pids = self.databases.iter().map(|d| d.block_pid).collect();
        self.lease = Some(Lease::arm(
            self.opts.settled_lease(),
            self.shard.name.clone(),
            terminate(self.shard.clone(), pids, self.opts.connect_timeout),
        ));
        let names: Vec<String> = self.databases.iter().map(|d| d.name.clone()).collect();
        let look = &self.databases[0].snap;
        let (waited, clear) = settle::settle(look, &names, budget).await;
        self.settled = clear;
        if waited >= STUCK_WAIT {
            tracing::info!(
                "{}: waited {} ms for its writers to stop waiting on each other's locks",
                self.shard.name,
                waited.as_millis()
            );
        }
        started.elapsed()
    }

    /// Ends every open block transaction with `how` (`COMMIT` or
    /// `ROLLBACK`); the first failure is returned, after trying them all.
    async fn end_block_transactions(&mut self, how: &str) -> Result<(), AgentError> {
        let mut failed = None;
        for db in &mut self.databases {
            if !db.open {
                continue;
            }
            match db.block.batch_execute(how).await {
                Ok(()) => db.open = false,
                Err(e) => {
                    failed.get_or_insert(pg_err(
                        &self.shard,
                        &format!("ending the block transaction on {} ({how})", db.name),
                    )(e));
                }
            }
        }
        failed.map_or(Ok(()), Err)
    }

    async fn rollback_blocks(&mut self) -> Result<(), AgentError> {
        self.lease = None;
        self.blocked_since = None;
        let mut stuck = Vec::new();
        for db in &mut self.databases {
            if db.block.batch_execute("ROLLBACK").await.is_err() {
                stuck.push(db.block_pid);
            }
            db.open = false;
        }
        if !stuck.is_empty() {
            terminate(self.shard.clone(), stuck, self.opts.connect_timeout).await?;
            // The terminated connections are replaced so a retry can block again.
            for db in &mut self.databases {
                if db.block.is_closed() || db.block.batch_execute("SELECT 1").await.is_err() {
                    reconnect_block(&self.shard, db, self.opts.connect_timeout).await?;
                }
            }
        }
        Ok(())
    }

    /// After the settle lease ran out (an orchestrator that came back
    /// later than [`crate::cut::CutOptions::settled_lease`]), the lease
    /// has ended every block connection, and the vacuum guard with them:
    /// each is replaced by a new one, with no transaction open, so the
    /// block begins its own.
    async fn reopen_blocks(&mut self) -> Result<(), AgentError> {
        self.lease = None;
        for db in &mut self.databases {
            db.open = false;
            reconnect_block(&self.shard, db, self.opts.connect_timeout).await?;
        }
        Ok(())
    }

    /// Opens and exports each database's snapshot and reads the WAL
    /// position, while blocked: one round trip per database, all databases
    /// at once. The transaction's snapshot is taken when its first
    /// statement starts, so the WAL insert position that statement reads
    /// lies after every commit the snapshot sees; the position kept is the
    /// highest of the databases' (the tables of all of them are blocked, so
    /// nothing they hold commits between one read and another).
    pub(crate) async fn mark(&mut self) -> Result<Position, AgentError> {
        let shard = self.shard.clone();
        // A snapshot of an earlier attempt must not be exported again.
        self.end_snapshots().await?;
        let marks = self.databases.iter_mut().map(|db| {
            let shard = &shard;
            async move {
                let what = format!("exporting the snapshot of {}", db.name);
                let messages = db
                    .snap
                    .simple_query(
                        "BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY; \
                         SELECT pg_export_snapshot(), pg_current_wal_insert_lsn()::text",
                    )
                    .await
                    .map_err(pg_err(shard, &what))?;
                let (id, lsn) = snapshot_and_lsn(&messages).ok_or_else(|| AgentError::Tool {
                    shard: shard.name.clone(),
                    what: format!("{what}: the server returned no snapshot and WAL position"),
                })?;
                let lsn: Lsn = lsn.parse().map_err(|e: String| AgentError::Tool {
                    shard: shard.name.clone(),
                    what: e,
                })?;
                db.snapshot_id = Some(id);
                Ok::<_, AgentError>(lsn)
            }
        });
        let lsns = futures_util::future::try_join_all(marks).await?;
        let lsn = lsns.into_iter().max().ok_or_else(|| AgentError::Tool {
            shard: shard.name.clone(),
            what: "no database selected on this shard".into(),
        })?;
        Ok(Position::Postgres { lsn })
    }

    /// Ends the snapshot transactions a mark opened, when a cut attempt
    /// stopped after this shard marked (another shard could not block):
    /// the next attempt's snapshots are new ones, and settling reads
    /// `pg_stat_activity` on these connections, which a transaction would
    /// show as it was when the transaction began.
    async fn end_snapshots(&mut self) -> Result<(), AgentError> {
        for db in &mut self.databases {
            if db.snapshot_id.take().is_some() {
                db.snap.batch_execute("ROLLBACK").await.map_err(pg_err(
                    &self.shard,
                    &format!("ending the snapshot of {}", db.name),
                ))?;
            }
        }
        Ok(())
    }

    pub(crate) async fn release(&mut self) -> Result<Duration, AgentError> {
        let Some(since) = self.blocked_since else {
            // Settled but never blocked (another shard's block failed): the
            // vacuum guard must not stay open until the next attempt.
            self.lease = None;
            self.end_block_transactions("ROLLBACK").await?;
            return Ok(Duration::ZERO);
        };
        let mut failed = None;
        for db in &mut self.databases {
            db.open = false;
            if let Err(e) = db.block.batch_execute("COMMIT").await {
                failed.get_or_insert(pg_err(
                    &self.shard,
                    &format!("releasing the block on {}", db.name),
                )(e));
            }
        }
        let held = since.elapsed();
        self.lease = None;
        self.blocked_since = None;
        match failed {
            None => Ok(held),
            Some(e) => {
                // The block must end even if COMMIT failed.
                let pids = self.databases.iter().map(|d| d.block_pid).collect();
                drop(terminate(self.shard.clone(), pids, self.opts.connect_timeout).await);
                Err(e)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tables() -> Vec<String> {
        ["\"s\".\"a\"", "\"s\".\"b\"", "\"s\".\"c\""]
            .iter()
            .map(|t| t.to_string())
            .collect()
    }

    #[test]
    fn a_first_phase_try_waits_for_one_table_and_takes_the_rest_nowait() {
        let sql = try_sql(&tables(), Some(1), Duration::from_millis(10));
        assert_eq!(
            sql,
            "SET LOCAL lock_timeout = '10ms'; \
             LOCK TABLE \"s\".\"b\" IN EXCLUSIVE MODE; \
             LOCK TABLE \"s\".\"a\", \"s\".\"c\" IN EXCLUSIVE MODE NOWAIT"
        );
    }

    #[test]
    fn a_single_table_is_simply_waited_for() {
        let one = vec!["\"s\".\"a\"".to_string()];
        let sql = try_sql(&one, Some(0), Duration::from_micros(10));
        // A wait under a millisecond still waits (0 would mean forever).
        assert_eq!(
            sql,
            "SET LOCAL lock_timeout = '1ms'; LOCK TABLE \"s\".\"a\" IN EXCLUSIVE MODE;"
        );
    }

    #[test]
    fn a_second_phase_try_waits_for_all_tables() {
        let sql = try_sql(&tables(), None, Duration::from_millis(160));
        assert_eq!(
            sql,
            "SET LOCAL lock_timeout = '160ms'; \
             LOCK TABLE \"s\".\"a\", \"s\".\"b\", \"s\".\"c\" IN EXCLUSIVE MODE"
        );
    }
}
