//! The PostgreSQL part of the global cut.
//!
//! Block: in every selected database, one transaction takes
//! `LOCK TABLE … IN EXCLUSIVE MODE` on all selected tables, which blocks
//! writers but not readers, waiting at most `lock_timeout`. Mark: while the
//! locks are held, a second connection per database opens a
//! `REPEATABLE READ READ ONLY` transaction and exports its snapshot (the
//! lock holder cannot export it: ending its transaction to release the
//! block would destroy the snapshot). The LSN is read while still blocked,
//! and it is the WAL *insert* position: every commit record of a
//! transaction the snapshot sees lies before it, even one committed
//! asynchronously whose WAL is not flushed yet (the *write* position could
//! lie before such a record, and replay would apply it twice).

use std::time::{Duration, Instant};

use tokio_postgres::error::SqlState;
use topology::Shard;

use super::{pg_err, Session};
use crate::connect;
use crate::error::AgentError;
use crate::position::{Lsn, Position};
use crate::session::{BlockError, Lease};

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

/// The session holding a lock on one of `tables` the longest.
async fn holder(shard: &Shard, db: &str, exclude: i32, timeout: Duration) -> Option<String> {
    let client = connect::postgres(shard, Some(db), timeout).await.ok()?;
    let row = client
        .query_opt(
            "SELECT a.pid, a.usename::text, \
             extract(epoch FROM now() - a.xact_start)::int8, a.state, left(a.query, 80), \
             l.relation::regclass::text \
             FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid \
             WHERE l.granted AND l.relation IS NOT NULL AND l.pid NOT IN ($1, pg_backend_pid()) \
             AND l.mode IN ('RowExclusiveLock', 'ShareUpdateExclusiveLock', 'ShareLock', \
                            'ShareRowExclusiveLock', 'ExclusiveLock', 'AccessExclusiveLock') \
             AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database()) \
             ORDER BY a.xact_start LIMIT 1",
            &[&exclude],
        )
        .await
        .ok()??;
    let pid: i32 = row.try_get(0).ok()?;
    let user: Option<String> = row.try_get(1).ok()?;
    let age: Option<i64> = row.try_get(2).ok()?;
    let state: Option<String> = row.try_get(3).ok()?;
    let query: Option<String> = row.try_get(4).ok()?;
    let table: Option<String> = row.try_get(5).ok()?;
    Some(format!(
        "pid {pid} (user {}) holding a write lock on {db}.{} in a transaction open for {} s, {}: `{}`",
        user.unwrap_or_default(),
        table.unwrap_or_default(),
        age.unwrap_or(0),
        state.unwrap_or_default(),
        query.unwrap_or_default()
    ))
}

impl Session {
    pub(crate) async fn block(&mut self) -> Result<(), BlockError> {
        let started = Instant::now();
        let timeout = self.opts.write_block_timeout;
        let ms = timeout.as_millis().max(1);
        let shard = self.shard.clone();
        let mut outcome: Result<(), (Option<String>, Option<AgentError>)> = Ok(());
        for db in &self.databases {
            let tables: Vec<String> = db.tables.iter().map(|t| t.qualified()).collect();
            let mut sql = format!("BEGIN; SET LOCAL lock_timeout = '{ms}ms';");
            if !tables.is_empty() {
                sql.push_str(&format!(
                    " LOCK TABLE {} IN EXCLUSIVE MODE;",
                    tables.join(", ")
                ));
            }
            let attempt = tokio::time::timeout(
                timeout + Duration::from_secs(1),
                db.block.batch_execute(&sql),
            )
            .await;
            match attempt {
                Ok(Ok(())) => {}
                // A deadlock with a writer that holds one selected table
                // and waits for another is as retryable as a timeout: the
                // cut backs off and tries again.
                Ok(Err(e))
                    if e.code() == Some(&SqlState::LOCK_NOT_AVAILABLE)
                        || e.code() == Some(&SqlState::T_R_DEADLOCK_DETECTED) =>
                {
                    let h = holder(&shard, &db.name, db.block_pid, self.opts.connect_timeout).await;
                    outcome = Err((h, None));
                    break;
                }
                Err(_elapsed) => {
                    let h = holder(&shard, &db.name, db.block_pid, self.opts.connect_timeout).await;
                    outcome = Err((h, None));
                    break;
                }
                Ok(Err(e)) => {
                    outcome = Err((
                        None,
                        Some(pg_err(&shard, &format!("locking tables of {}", db.name))(e)),
                    ));
                    break;
                }
            }
        }
        match outcome {
            Ok(()) => {
                self.blocked_since = Some(started);
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

    async fn rollback_blocks(&mut self) -> Result<(), AgentError> {
        self.lease = None;
        self.blocked_since = None;
        let mut stuck = Vec::new();
        for db in &self.databases {
            if db.block.batch_execute("ROLLBACK").await.is_err() {
                stuck.push(db.block_pid);
            }
        }
        if !stuck.is_empty() {
            terminate(self.shard.clone(), stuck, self.opts.connect_timeout).await?;
            // The terminated connections are replaced so a retry can block again.
            for db in &mut self.databases {
                if db.block.is_closed() || db.block.batch_execute("SELECT 1").await.is_err() {
                    db.block =
                        super::reader(&self.shard, &db.name, self.opts.connect_timeout).await?;
                    db.block_pid = db
                        .block
                        .query_one("SELECT pg_backend_pid()", &[])
                        .await
                        .and_then(|r| r.try_get(0))
                        .map_err(pg_err(&self.shard, "reading the backend pid"))?;
                }
            }
        }
        Ok(())
    }

    pub(crate) async fn mark(&mut self) -> Result<Position, AgentError> {
        let shard = self.shard.clone();
        for db in &mut self.databases {
            let what = format!("exporting the snapshot of {}", db.name);
            db.snap
                .batch_execute("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY")
                .await
                .map_err(pg_err(&shard, &what))?;
            let id: String = db
                .snap
                .query_one("SELECT pg_export_snapshot()", &[])
                .await
                .and_then(|r| r.try_get(0))
                .map_err(pg_err(&shard, &what))?;
            db.snapshot_id = Some(id);
        }
        let first = self.databases.first().ok_or_else(|| AgentError::Tool {
            shard: shard.name.clone(),
            what: "no database selected on this shard".into(),
        })?;
        let lsn: String = first
            .snap
            .query_one("SELECT pg_current_wal_insert_lsn()::text", &[])
            .await
            .and_then(|r| r.try_get(0))
            .map_err(pg_err(&shard, "reading the WAL position"))?;
        let lsn: Lsn = lsn.parse().map_err(|e: String| AgentError::Tool {
            shard: shard.name.clone(),
            what: e,
        })?;
        Ok(Position::Postgres { lsn })
    }

    pub(crate) async fn release(&mut self) -> Result<Duration, AgentError> {
        let Some(since) = self.blocked_since else {
            return Ok(Duration::ZERO);
        };
        let mut failed = None;
        for db in &self.databases {
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
