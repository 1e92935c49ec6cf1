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

use std::sync::Arc;
use std::time::{Duration, Instant};

use topology::{Compression, Engine, Shard};

use crate::cut::{BlockError, CutOptions};
use crate::dump::DumpOptions;
use crate::engine::{self, CutSession};
use crate::error::AgentError;
use crate::manifest::ShardManifest;
use crate::position::Position;
use crate::preflight::Depth;

/// One shard's session: the engine's own session behind the engine
/// interface, and the engine-neutral bookkeeping around it.
pub struct Session {
    engine: Engine,
    shard: String,
    inner: Box<dyn CutSession>,
}

impl Session {
    /// Connects, refuses a shard that is not ready, and reads the catalog.
    pub async fn prepare(shard: &Shard, opts: &CutOptions) -> Result<Session, AgentError> {
        let driver = engine::driver(shard.engine);
        let report = driver
            .preflight(shard, opts.connect_timeout, Depth::Gate)
            .await?;
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
        Ok(Session {
            engine: shard.engine,
            shard: shard.name.clone(),
            inner: driver.open(shard, opts, report.server).await?,
        })
    }

    pub fn shard(&self) -> &str {
        &self.shard
    }

    pub fn engine(&self) -> Engine {
        self.engine
    }

    /// Does, blocking nothing, what would otherwise lengthen the block
    /// (see [`CutSession::settle`]). Returns the time spent.
    pub async fn settle(&mut self) -> Duration {
        self.inner.settle().await
    }

    /// Blocks commits on the selected tables, within `write_block_timeout`.
    /// On timeout nothing is left blocked.
    pub async fn block(&mut self) -> Result<(), BlockError> {
        self.inner.block().await
    }

    /// Opens the snapshots every worker will read from and records the
    /// shard's position. Only valid while blocked.
    pub async fn mark(&mut self) -> Result<Position, AgentError> {
        self.inner.mark().await
    }

    /// Ends the block. Returns how long commits were blocked. Idempotent.
    pub async fn release(&mut self) -> Result<Duration, AgentError> {
        self.inner.release().await
    }

    /// Dumps schema and data from the snapshots into the repository.
    pub async fn dump(self, mut opts: DumpOptions) -> Result<ShardManifest, AgentError> {
        let started = Instant::now();
        if opts.digest_only {
            opts.repo = Arc::new(crate::repo::NullRepository);
            opts.compression = Compression::None;
        }
        let mut m = self.inner.dump(&opts).await?;
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
