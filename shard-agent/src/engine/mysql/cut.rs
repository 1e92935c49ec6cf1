//! The MySQL/MariaDB part of the global cut.
//!
//! MariaDB: `BACKUP STAGE START`, `FLUSH` and `BLOCK_DDL` while settling
//! (commits go on), then `BACKUP STAGE BLOCK_COMMIT` blocks commits (reads
//! and running statements go on); MySQL: `FLUSH TABLES WITH READ LOCK`.
//! Each waits at most `lock_wait_timeout` inside the server and at most
//! `write_block_timeout` on our side; on a timeout the blocking session is
//! killed from another connection, so nothing stays blocked, and the
//! stages taken while settling are leased like the block.

use std::time::{Duration, Instant};

use mysql_async::prelude::Queryable;
use mysql_async::{Conn, Row};
use topology::Shard;

use super::sql::query_err;
use super::sql::{number, text};
use super::{binlog_status, db_err, CatalogAtCut, Session};
use crate::connect;
use crate::cut::{BlockError, CutOptions, Lease};
use crate::error::AgentError;
use crate::position::Position;

/// The binlog position (file, offset and GTID set) `control` reads.
pub(super) async fn position(
    control: &mut Conn,
    shard: &Shard,
    mariadb: bool,
) -> Result<Position, AgentError> {
    let err = query_err(shard, "reading the binlog position");
    let de = |e| AgentError::Query {
        shard: shard.name.clone(),
        what: "reading the binlog position".into(),
        source: e,
    };
    let binlog = binlog_status(control)
        .await
        .map_err(de)?
        .ok_or_else(|| AgentError::NotReady {
            shard: shard.name.clone(),
            problems: "the binary log is off (SHOW MASTER STATUS is empty)".into(),
        })?;
    let sql = if mariadb {
        "SELECT @@GLOBAL.gtid_binlog_pos"
    } else {
        "SELECT @@GLOBAL.gtid_executed"
    };
    let rows: Vec<Row> = control.query(sql).await.map_err(&err)?;
    let gtid = match rows.first() {
        Some(r) => text(r, 0).map_err(de)?.unwrap_or_default(),
        None => String::new(),
    };
    Ok(if mariadb {
        Position::Mariadb { gtid, binlog }
    } else {
        Position::Mysql {
            gtid_executed: gtid,
            binlog,
        }
    })
}

/// Opens the connection that will hold the block, with the server-side
/// wait bounded by the write-block timeout.
pub(super) async fn control_connection(
    shard: &Shard,
    opts: &CutOptions,
) -> Result<(Conn, u32), AgentError> {
    let mut conn = connect::mysql(shard, None, opts.connect_timeout).await?;
    let secs = opts.write_block_timeout.as_secs_f64().ceil().max(1.0) as u64;
    // The catalog and the schema are read on this session too.
    let set = format!("SET SESSION lock_wait_timeout = {secs}, SESSION sql_mode = ''");
    conn.query_drop(&set)
        .await
        .map_err(query_err(shard, &set))?;
    let id = conn.id();
    Ok((conn, id))
}

/// Kills a session from a fresh connection (ends its block server-side).
async fn kill(shard: Shard, id: u32, timeout: Duration) -> Result<(), AgentError> {
    let mut admin = connect::mysql(&shard, None, timeout).await?;
    match admin.query_drop(format!("KILL {id}")).await {
        Ok(()) => Ok(()),
        // 1094: unknown thread id; it is gone already, which is what we want.
        Err(mysql_async::Error::Server(e)) if e.code == 1094 => Ok(()),
        Err(e) => Err(query_err(&shard, "killing the blocking session")(e)),
    }
}

/// The oldest open transaction or longest running statement, to name what
/// held up a block.
async fn holder(shard: &Shard, exclude: u32, timeout: Duration) -> Option<String> {
    let mut conn = connect::mysql(shard, None, timeout).await.ok()?;
    let sql = format!(
        "SELECT p.ID, p.USER, p.TIME, p.STATE, LEFT(COALESCE(p.INFO, ''), 80), \
         TIMESTAMPDIFF(SECOND, t.trx_started, NOW()) \
         FROM information_schema.PROCESSLIST p \
         LEFT JOIN information_schema.INNODB_TRX t ON t.trx_mysql_thread_id = p.ID \
         WHERE p.ID NOT IN ({exclude}, CONNECTION_ID()) AND (t.trx_id IS NOT NULL OR p.COMMAND <> 'Sleep') \
         ORDER BY COALESCE(TIMESTAMPDIFF(SECOND, t.trx_started, NOW()), p.TIME) DESC LIMIT 1"
    );
    let rows: Vec<Row> = conn.query(sql).await.ok()?;
    let row = rows.first()?;
    let id = number(row, 0).ok()??;
    let user = text(row, 1).ok()?.unwrap_or_default();
    let time = number(row, 2).ok()?.unwrap_or(0);
    let state = text(row, 3).ok()?.unwrap_or_default();
    let info = text(row, 4).ok()?.unwrap_or_default();
    let trx_age = number(row, 5).ok()?;
    drop(conn.disconnect().await);
    Some(match trx_age {
        Some(age) => format!(
            "session {id} (user {user}) with a transaction open for {age} s{}",
            if info.is_empty() {
                String::new()
            } else {
                format!(", running `{info}`")
            }
        ),
        None => {
            format!("session {id} (user {user}) running for {time} s in state `{state}`: `{info}`")
        }
    })
}

/// MariaDB's backup stages taken while settling, before the block: `FLUSH`
/// closes every table not in use (InnoDB's included) and `BLOCK_DDL` waits
/// out DDL and writes to non-transactional tables; neither holds commits
/// up. Left to the block (`BLOCK_COMMIT` takes the stages it skips), the
/// closing held commits for as long as it took, which grows with the
/// tables open on the server: `BLOCK_COMMIT` took 63-75 ms with 12,000
/// open tables, 2-3 ms once they were closed (docs/BENCHMARKS.md, "The
/// cut's block and the server's open tables"). From `FLUSH` on, writes to
/// non-transactional tables and DDL wait until the release, as they did
/// under the block.
const STAGES_BEFORE_BLOCK: [&str; 3] = [
    "BACKUP STAGE START",
    "BACKUP STAGE FLUSH",
    "BACKUP STAGE BLOCK_DDL",
];

impl Session {
    /// MariaDB: syncs the binlog from this host if the server leaves it to
    /// the OS (see `presync`), so that `BLOCK_COMMIT` does not do it while
    /// commits wait, then takes the stages before the block
    /// ([`STAGES_BEFORE_BLOCK`]). Returns the time spent; never fails the
    /// cut.
    pub(crate) async fn settle(&mut self) -> Duration {
        if !self.mariadb {
            return Duration::ZERO;
        }
        let started = Instant::now();
        match super::presync::binlog(&mut self.control, self.opts.write_block_timeout).await {
            Ok(took) => tracing::info!(
                "{}: synced the binlog in {} ms before blocking (sync_binlog leaves it to the OS)",
                self.shard.name,
                took.as_millis()
            ),
            Err(why) => tracing::debug!(
                "{}: binlog not synced before blocking: {why}",
                self.shard.name
            ),
        }
        self.stage().await;
        // DDL waits from `BLOCK_DDL` on: the catalog read before is checked
        // against the cut's here, holding no commit up. Without the stages
        // the block checks it.
        if self.staged && matches!(self.catalog, CatalogAtCut::Unchecked) {
            self.catalog = match self.check_catalog_at_cut().await {
                Ok(()) => CatalogAtCut::Unchanged,
                Err(e) => CatalogAtCut::Changed(e),
            };
        }
        started.elapsed()
    }

    /// Takes [`STAGES_BEFORE_BLOCK`] on the control session and arms the
    /// lease on them (`CutOptions::settled_lease`: they must outlast every
    /// other shard's settling). If they cannot be taken within
    /// `write_block_timeout` the control session is replaced (which ends
    /// whatever stage it reached) and the block takes every stage itself.
    async fn stage(&mut self) {
        if self.staged || self.blocked_since.is_some() {
            return;
        }
        let started = Instant::now();
        let timeout = self.opts.write_block_timeout;
        let control = &mut self.control;
        let attempt = tokio::time::timeout(timeout, async {
            for s in STAGES_BEFORE_BLOCK {
                control.query_drop(s).await?;
            }
            Ok::<(), mysql_async::Error>(())
        })
        .await;
        let why = match attempt {
            Ok(Ok(())) => {
                self.staged = true;
                self.lease = Some(Lease::arm(
                    self.opts.settled_lease(),
                    self.shard.name.clone(),
                    kill(
                        self.shard.clone(),
                        self.control_id,
                        self.opts.connect_timeout,
                    ),
                ));
                tracing::debug!(
                    "{}: BACKUP STAGE BLOCK_DDL reached in {} ms, before the block",
                    self.shard.name,
                    started.elapsed().as_millis()
                );
                return;
            }
            Ok(Err(e)) => e.to_string(),
            Err(_elapsed) => format!("not within {} ms", timeout.as_millis()),
        };
        tracing::info!(
            "{}: the backup stages before the block were not taken ({why}); the block takes them",
            self.shard.name
        );
        if let Err(e) = self.reset_control().await {
            tracing::warn!("{}: replacing the control session: {e}", self.shard.name);
        }
    }

    pub(crate) async fn block(&mut self) -> Result<(), BlockError> {
        match std::mem::replace(&mut self.catalog, CatalogAtCut::Unchecked) {
            CatalogAtCut::Changed(e) => return Err(BlockError::Failed(e)),
            found => self.catalog = found,
        }
        if self.staged && self.lease.as_ref().is_some_and(Lease::expired) {
            // The orchestrator came later than the stages' lease: it killed
            // the control session, so the block takes every stage itself.
            tracing::warn!(
                "{}: the backup stages taken while settling were ended by their lease; the block takes them",
                self.shard.name
            );
            self.reset_control().await?;
        }
        let started = Instant::now();
        let stmts: &[&str] = if self.staged {
            &["BACKUP STAGE BLOCK_COMMIT"]
        } else if self.mariadb {
            &["BACKUP STAGE START", "BACKUP STAGE BLOCK_COMMIT"]
        } else {
            &["FLUSH TABLES WITH READ LOCK"]
        };
        let timeout = self.opts.write_block_timeout;
        let control = &mut self.control;
        let shard_name = &self.shard.name;
        let attempt = tokio::time::timeout(timeout, async {
            for s in stmts {
                control.query_drop(*s).await?;
                tracing::debug!(
                    "{}: {s} done after {} ms",
                    shard_name,
                    started.elapsed().as_millis()
                );
            }
            Ok::<(), mysql_async::Error>(())
        })
        .await;
        match attempt {
            Ok(Ok(())) => {
                self.blocked_since = Some(started);
                let (shard, id, t) = (
                    self.shard.clone(),
                    self.control_id,
                    self.opts.connect_timeout,
                );
                // The block's own lease, as PostgreSQL's: MariaDB blocks
                // in the last wave, so no shard still settles or blocks
                // after it (leased for the settling too, commits stayed
                // blocked 9 s instead of 3 s with a 3 s lease).
                self.lease = Some(Lease::arm(
                    self.opts.write_block_lease,
                    self.shard.name.clone(),
                    kill(shard, id, t),
                ));
                if !matches!(self.catalog, CatalogAtCut::Unchanged) {
                    // Blocked without the stages taken while settling: DDL
                    // has waited only since now.
                    if let Err(e) = self.check_catalog_at_cut().await {
                        drop(self.reset_control().await);
                        return Err(BlockError::Failed(e));
                    }
                    self.catalog = CatalogAtCut::Unchanged;
                }
                Ok(())
            }
            Ok(Err(mysql_async::Error::Server(e))) if e.code == 1205 => Err(self.give_up().await),
            Err(_elapsed) => Err(self.give_up().await),
            Ok(Err(e)) => {
                let err = query_err(&self.shard, "blocking commits")(e);
                // Whatever stage was reached must not stay in force.
                drop(self.reset_control().await);
                Err(BlockError::Failed(err))
            }
        }
    }

    /// After a timed-out block: name the holder, then make sure nothing of
    /// ours is left blocked by replacing the control session.
    async fn give_up(&mut self) -> BlockError {
        let holder = holder(&self.shard, self.control_id, self.opts.connect_timeout).await;
        if let Err(e) = self.reset_control().await {
            return BlockError::Failed(e);
        }
        BlockError::Timeout {
            shard: self.shard.name.clone(),
            timeout: self.opts.write_block_timeout,
            holder,
        }
    }

    /// Kills the control session (ending any block or pending block it has)
    /// and opens a new one for the next attempt.
    async fn reset_control(&mut self) -> Result<(), AgentError> {
        self.lease = None;
        self.staged = false;
        self.catalog = CatalogAtCut::Unchecked;
        self.blocked_since = None;
        kill(
            self.shard.clone(),
            self.control_id,
            self.opts.connect_timeout,
        )
        .await?;
        let (conn, id) = control_connection(&self.shard, &self.opts).await?;
        let old = std::mem::replace(&mut self.control, conn);
        self.control_id = id;
        drop(old);
        Ok(())
    }

    /// Opens every snapshot connection's snapshot and reads the binlog
    /// position on the control session, all at once: commits are blocked,
    /// so the snapshots and the position are of the same state, and the
    /// block lasts until the slowest of them answers.
    pub(crate) async fn mark(&mut self) -> Result<Position, AgentError> {
        let shard = &self.shard;
        let snapshots = futures_util::future::try_join_all(
            self.workers
                .iter_mut()
                .map(|w| w.query_drop("START TRANSACTION WITH CONSISTENT SNAPSHOT, READ ONLY")),
        );
        let snapshots = async {
            snapshots
                .await
                .map(drop)
                .map_err(db_err(shard, "opening the snapshot"))
        };
        let ((), position) =
            tokio::try_join!(snapshots, position(&mut self.control, shard, self.mariadb))?;
        Ok(position)
    }

    /// Ends the block, or the stages taken while settling if the cut
    /// attempt stopped before this shard blocked; returns how long commits
    /// were blocked.
    pub(crate) async fn release(&mut self) -> Result<Duration, AgentError> {
        if self.blocked_since.is_none() && !self.staged {
            return Ok(Duration::ZERO);
        }
        let stmt = if self.mariadb {
            "BACKUP STAGE END"
        } else {
            "UNLOCK TABLES"
        };
        let result = self.control.query_drop(stmt).await;
        let held = self.block_elapsed();
        self.lease = None;
        self.staged = false;
        self.catalog = CatalogAtCut::Unchecked;
        self.blocked_since = None;
        match result {
            Ok(()) => Ok(held),
            Err(e) => {
                // The block must end even if the statement failed.
                drop(self.reset_control().await);
                Err(query_err(&self.shard, "releasing the block")(e))
            }
        }
    }
}
