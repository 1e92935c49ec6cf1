//! One shard's part in a backup, engine-independent.
//!
//! The orchestrator drives every shard through the same steps:
//! [`Session::prepare`] (connect, check readiness, read the catalog),
//! [`Session::settle`] (wait for stuck writers and vacuum, blocking nothing),
//! [`Session::block`] (block commits, bounded by a timeout, guarded by a
//! lease), [`Session::mark`] (open the snapshots and record the position
//! while still blocked), [`Session::release`], then [`Session::dump`].
//! The block must be held until every shard has recorded its position, or
//! the cut is not consistent; the lease guarantees it is never held longer
//! than `write_block_lease` whatever happens to the orchestrator.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use topology::{Compression, Engine, Shard};

use crate::error::AgentError;
use crate::manifest::ShardManifest;
use crate::position::Position;
use crate::repo::Repository;
use crate::{mysql, postgres};

#[derive(Debug, Clone)]
pub struct CutOptions {
    pub write_block_timeout: Duration,
    pub write_block_lease: Duration,
    pub connect_timeout: Duration,
}

#[derive(Debug, Clone)]
pub struct DumpOptions {
    pub repo: Arc<dyn Repository>,
    pub backup_id: String,
    pub compression: Compression,
    /// Target rows per primary-key range; tables with more rows are split.
    pub chunk_rows: u64,
    /// Count and hash every table without storing anything (marks).
    pub digest_only: bool,
    pub progress: Arc<Progress>,
    /// Set by anyone who wants every worker to stop at its next row.
    pub cancel: Arc<AtomicBool>,
}

/// Live counters of one shard's dump, read by the progress display.
#[derive(Debug, Default)]
pub struct Progress {
    pub rows: AtomicU64,
    pub bytes: AtomicU64,
    pub rows_estimate: AtomicU64,
}

impl Progress {
    pub fn add(&self, rows: u64, bytes: u64) {
        self.rows.fetch_add(rows, Ordering::Relaxed);
        self.bytes.fetch_add(bytes, Ordering::Relaxed);
    }
}

/// Why a block attempt did not succeed.
#[derive(Debug, thiserror::Error)]
pub enum BlockError {
    #[error("shard {shard}: could not block commits within {} ms{}", timeout.as_millis(), holder.as_ref().map(|h| format!("; held up by {h}")).unwrap_or_default())]
    Timeout {
        shard: String,
        timeout: Duration,
        /// What held the block up, e.g. the oldest open transaction and its age.
        holder: Option<String>,
    },
    #[error(transparent)]
    Failed(#[from] AgentError),
}

pub enum Session {
    Mysql(Box<mysql::Session>),
    Postgres(Box<postgres::Session>),
}

impl Session {
    /// Connects, refuses a shard that is not ready, and reads the catalog.
    pub async fn prepare(shard: &Shard, opts: &CutOptions) -> Result<Session, AgentError> {
        let report = crate::preflight::check(shard, opts.connect_timeout).await?;
        if !report.ready {
            let problems: Vec<String> = report
                .findings
                .iter()
                .filter(|f| f.level == crate::preflight::Level::Fail)
                .map(|f| {
                    format!(
                        "{} is {} ({})",
                        f.item,
                        f.value,
                        f.fix.as_deref().unwrap_or("")
                    )
                })
                .collect();
            return Err(AgentError::NotReady {
                shard: shard.name.clone(),
                problems: problems.join("; "),
            });
        }
        Ok(match shard.engine {
            Engine::Mysql => Session::Mysql(Box::new(
                mysql::Session::prepare(shard, opts, report.server).await?,
            )),
            Engine::Postgres => Session::Postgres(Box::new(
                postgres::Session::prepare(shard, opts, report.server).await?,
            )),
        })
    }

    pub fn shard(&self) -> &str {
        match self {
            Session::Mysql(s) => &s.shard.name,
            Session::Postgres(s) => &s.shard.name,
        }
    }

    pub fn engine(&self) -> Engine {
        match self {
            Session::Mysql(_) => Engine::Mysql,
            Session::Postgres(_) => Engine::Postgres,
        }
    }

    /// Does, blocking nothing, what would otherwise lengthen the block.
    /// PostgreSQL: waits until a block could start without queueing behind
    /// writers that are stuck on each other or behind a vacuum (see
    /// `postgres::settle` and `postgres::guard`, which keeps vacuum off the
    /// tables until the block ends); bounded, for jams by the longer of
    /// `write_block_timeout` and 5 s, for an autovacuum by
    /// `deadlock_timeout` + 1 s. MariaDB (whose block waits for neither):
    /// syncs a binlog left to the OS, where this host can reach it (see
    /// `mysql::presync`), within `write_block_timeout`. Returns the time
    /// spent.
    pub async fn settle(&mut self) -> Duration {
        match self {
            Session::Mysql(s) => s.settle().await,
            Session::Postgres(s) => s.settle().await,
        }
    }

    /// Blocks commits on the selected tables, within `write_block_timeout`.
    /// On timeout nothing is left blocked.
    pub async fn block(&mut self) -> Result<(), BlockError> {
        match self {
            Session::Mysql(s) => s.block().await,
            Session::Postgres(s) => s.block().await,
        }
    }

    /// Opens the snapshots every worker will read from and records the
    /// shard's position. Only valid while blocked.
    pub async fn mark(&mut self) -> Result<Position, AgentError> {
        match self {
            Session::Mysql(s) => s.mark().await,
            Session::Postgres(s) => s.mark().await,
        }
    }

    /// Ends the block. Returns how long commits were blocked. Idempotent.
    pub async fn release(&mut self) -> Result<Duration, AgentError> {
        match self {
            Session::Mysql(s) => s.release().await,
            Session::Postgres(s) => s.release().await,
        }
    }

    /// Dumps schema and data from the snapshots into the repository.
    pub async fn dump(self, mut opts: DumpOptions) -> Result<ShardManifest, AgentError> {
        let started = Instant::now();
        if opts.digest_only {
            opts.repo = Arc::new(crate::repo::NullRepository);
            opts.compression = Compression::None;
        }
        let mut m = match self {
            Session::Mysql(s) => s.dump(&opts).await?,
            Session::Postgres(s) => s.dump(&opts).await?,
        };
        m.duration_ms = u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX);
        m.tables = m.table_list.len() as u64;
        m.rows = m.table_list.iter().map(|t| t.rows).sum();
        m.bytes_raw = m.table_list.iter().map(|t| t.bytes_raw).sum::<u64>()
            + m.schema.iter().map(|f| f.bytes_raw).sum::<u64>();
        m.bytes_stored = m.table_list.iter().map(|t| t.bytes_stored).sum::<u64>()
            + m.schema.iter().map(|f| f.bytes_stored).sum::<u64>();
        Ok(m)
    }
}

/// Ends a block on its own if the orchestrator does not move on in time.
/// Dropping the guard (on release) disarms it.
pub struct Lease {
    task: tokio::task::JoinHandle<()>,
}

impl Lease {
    /// After `lease`, runs `expire` (which must end the block server-side,
    /// e.g. by killing the blocking session from another connection).
    pub fn arm<F>(lease: Duration, shard: String, expire: F) -> Lease
    where
        F: std::future::Future<Output = Result<(), AgentError>> + Send + 'static,
    {
        let task = tokio::spawn(async move {
            tokio::time::sleep(lease).await;
            tracing::warn!(
                "shard {shard}: lease of {} ms on the write block (or the guard before it) expired; ending it",
                lease.as_millis()
            );
            if let Err(e) = expire.await {
                tracing::error!("shard {shard}: releasing an expired block failed: {e}");
            }
        });
        Lease { task }
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// A primary-key range `[lo, hi)`; `None` is unbounded on that side.
pub type KeyRange = (Option<i128>, Option<i128>);

/// Whether a table of `rows` (estimated) is worth splitting into key
/// ranges: it must have more than `chunk_rows` rows and more than its share
/// of the shard's `total_rows` among `workers`. Ranges exist so that one
/// big table does not leave the other workers idle; a table no bigger than
/// one worker's share gains nothing from them, and on PostgreSQL a range
/// costs more to read than a whole table (an index scan instead of a plain
/// `COPY`: 20 % more server and client CPU on sysbench tables, measured in
/// docs/BENCHMARKS.md).
pub fn worth_splitting(rows: u64, total_rows: u64, workers: usize, chunk_rows: u64) -> bool {
    let workers = u64::try_from(workers.max(1)).unwrap_or(u64::MAX);
    rows > chunk_rows && rows.saturating_mul(workers) > total_rows
}

/// Splits `[min, max]` into ranges of about `chunk_rows` rows, assuming
/// keys are spread evenly. The first range is open below and the last open
/// above, so no row is missed even if the estimate is off.
pub fn plan_ranges(min: i128, max: i128, rows_estimate: u64, chunk_rows: u64) -> Vec<KeyRange> {
    let chunk_rows = chunk_rows.max(1);
    let pieces = (rows_estimate / chunk_rows + 1).clamp(1, 10_000);
    let span = max - min + 1;
    if pieces <= 1 || span <= 1 {
        return vec![(None, None)];
    }
    let step = (span / i128::from(pieces)).max(1);
    let mut out = Vec::new();
    let mut lo: Option<i128> = None;
    let mut next = min + step;
    while next <= max {
        out.push((lo, Some(next)));
        lo = Some(next);
        next += step;
    }
    out.push((lo, None));
    out
}

/// `WHERE` clause for a range over column `pk` (already quoted). The bounds
/// are integers computed here, never user text, so inlining them is safe.
pub fn range_predicate(pk: &str, range: &KeyRange) -> String {
    match range {
        (None, None) => String::new(),
        (Some(lo), None) => format!(" WHERE {pk} >= {lo}"),
        (None, Some(hi)) => format!(" WHERE {pk} < {hi}"),
        (Some(lo), Some(hi)) => format!(" WHERE {pk} >= {lo} AND {pk} < {hi}"),
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn tables_are_split_only_beyond_their_share_of_the_shard() {
        use super::worth_splitting;
        // Four equal tables on two workers: each is half a worker's share.
        assert!(!worth_splitting(500_000, 2_000_000, 2, 250_000));
        // One table dominating the shard.
        assert!(worth_splitting(1_500_000, 1_800_000, 2, 250_000));
        // The only table.
        assert!(worth_splitting(500_000, 500_000, 4, 50_000));
        // Small tables are never split.
        assert!(!worth_splitting(100, 100, 4, 1000));
    }

    use super::*;

    #[test]
    fn ranges_cover_everything_once() {
        assert_eq!(plan_ranges(1, 100, 50, 1000), vec![(None, None)]);
        let r = plan_ranges(1, 1000, 1000, 250);
        assert_eq!(r.first().unwrap().0, None);
        assert_eq!(r.last().unwrap().1, None);
        for w in r.windows(2) {
            assert_eq!(w[0].1, w[1].0, "ranges must be contiguous");
        }
        assert!(r.len() >= 4 && r.len() <= 6, "{r:?}");
        let extreme = plan_ranges(
            i128::from(i64::MIN),
            i128::from(i64::MAX),
            1_000_000,
            100_000,
        );
        assert!(extreme.len() > 5);
    }
}
