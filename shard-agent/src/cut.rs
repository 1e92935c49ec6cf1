//! The engine-neutral pieces of the global cut: the options every engine's
//! block honours, why a block can fail, and the lease that ends a block on
//! its own. The block must be held until every shard has recorded its
//! position, or the cut is not consistent; the lease guarantees it is never
//! held longer than `write_block_lease` whatever happens to the
//! orchestrator.

use std::time::Duration;

use crate::error::AgentError;

#[derive(Debug, Clone)]
pub struct CutOptions {
    pub write_block_timeout: Duration,
    pub write_block_lease: Duration,
    pub connect_timeout: Duration,
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
