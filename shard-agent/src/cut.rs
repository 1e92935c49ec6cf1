//! The engine-neutral pieces of the global cut: the options every engine's
//! block honours, why a block can fail, and the lease that ends a block on
//! its own. The block must be held until every shard has recorded its
//! position, or the cut is not consistent; the lease guarantees it is never
//! held longer than `write_block_lease` whatever happens to the
//! orchestrator (and what a shard takes while settling no longer than
//! [`CutOptions::settled_lease`]). And what DDL did to the selected tables
//! between the catalog read before the cut and the cut ([`catalog_change`]).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use crate::error::AgentError;

#[derive(Debug, Clone)]
pub struct CutOptions {
    pub write_block_timeout: Duration,
    pub write_block_lease: Duration,
    pub connect_timeout: Duration,
}

/// The least time a shard's settling may wait. Settling blocks no commit,
/// so it may wait longer than a block may last: long enough for a deadlock
/// among writers to be broken at PostgreSQL's default `deadlock_timeout`
/// (1 s), with room for a raised one.
pub const SETTLE_AT_LEAST: Duration = Duration::from_secs(5);

impl CutOptions {
    /// The longest a shard's settling may take: the write-block timeout or
    /// [`SETTLE_AT_LEAST`], whichever is longer.
    pub fn settle_budget(&self) -> Duration {
        self.write_block_timeout.max(SETTLE_AT_LEAST)
    }

    /// The lease on what a shard takes while settling and holds until its
    /// block (MariaDB's backup stages, PostgreSQL's vacuum guard): every
    /// shard settles at once and blocks only after the slowest, so it must
    /// outlast the longest settling ([`Self::settle_budget`]) and a block
    /// attempt, plus the block's own lease. Leased for the block's lease
    /// alone, MariaDB's stages were ended while a PostgreSQL shard waited
    /// out a jam longer than it, and the cut failed on the killed session.
    pub fn settled_lease(&self) -> Duration {
        self.settle_budget() + self.write_block_timeout + self.write_block_lease
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

/// Ends a block on its own if the orchestrator does not move on in time.
/// Dropping the guard (on release) disarms it.
pub struct Lease {
    task: tokio::task::JoinHandle<()>,
    expired: Arc<AtomicBool>,
}

impl Lease {
    /// After `lease`, runs `expire` (which must end the block server-side,
    /// e.g. by killing the blocking session from another connection).
    pub fn arm<F>(lease: Duration, shard: String, expire: F) -> Lease
    where
        F: std::future::Future<Output = Result<(), AgentError>> + Send + 'static,
    {
        let expired = Arc::new(AtomicBool::new(false));
        let flag = expired.clone();
        let task = tokio::spawn(async move {
            tokio::time::sleep(lease).await;
            flag.store(true, Ordering::SeqCst);
            tracing::warn!(
                "shard {shard}: lease of {} ms on the write block (or the guard before it) expired; ending it",
                lease.as_millis()
            );
            if let Err(e) = expire.await {
                tracing::error!("shard {shard}: releasing an expired block failed: {e}");
            }
        });
        Lease { task, expired }
    }

    /// Whether the lease ran out (and its `expire` has run or is running).
    pub fn expired(&self) -> bool {
        self.expired.load(Ordering::SeqCst)
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// A selected table as the dump reads it: its qualified name and its
/// stored columns (name, type) in order. The catalog that plans a dump is
/// read before the cut, so each engine lists these again as of the cut and
/// compares ([`catalog_change`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct TableShape {
    pub name: String,
    pub columns: Vec<(String, String)>,
}

/// What DDL changed between the tables listed `before` the cut and those
/// there `at_cut`, in words (the first change by name); `None` if nothing.
/// A table created meanwhile would be missing from the backup, a column
/// added meanwhile missing from its rows though its schema has it.
pub(crate) fn catalog_change(before: &[TableShape], at_cut: &[TableShape]) -> Option<String> {
    use std::collections::BTreeMap;
    let old: BTreeMap<&str, &TableShape> = before.iter().map(|t| (t.name.as_str(), t)).collect();
    let new: BTreeMap<&str, &TableShape> = at_cut.iter().map(|t| (t.name.as_str(), t)).collect();
    let listed = |t: &TableShape| {
        let cols: Vec<String> = t
            .columns
            .iter()
            .map(|(c, ty)| format!("{c} {ty}"))
            .collect();
        cols.join(", ")
    };
    for (name, t) in &new {
        match old.get(name) {
            None => return Some(format!("table {name} was created")),
            Some(o) if o.columns != t.columns => {
                return Some(format!(
                    "the columns of {name} changed (from {} to {})",
                    listed(o),
                    listed(t)
                ))
            }
            Some(_) => {}
        }
    }
    old.keys()
        .find(|name| !new.contains_key(*name))
        .map(|name| format!("table {name} was dropped or renamed"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicUsize;

    #[test]
    fn a_catalog_change_names_the_first_table_created_altered_or_gone() {
        let t = |name: &str, cols: &[&str]| TableShape {
            name: name.into(),
            columns: cols.iter().map(|c| (c.to_string(), "int".into())).collect(),
        };
        let before = [t("app.a", &["id"]), t("app.b", &["id", "v"])];
        assert_eq!(catalog_change(&before, &before), None);
        let created = [
            t("app.a", &["id"]),
            t("app.b", &["id", "v"]),
            t("app.c", &["id"]),
        ];
        assert_eq!(
            catalog_change(&before, &created).as_deref(),
            Some("table app.c was created")
        );
        let altered = [t("app.a", &["id"]), t("app.b", &["id", "v", "w"])];
        assert_eq!(
            catalog_change(&before, &altered).as_deref(),
            Some("the columns of app.b changed (from id int, v int to id int, v int, w int)")
        );
        assert_eq!(
            catalog_change(&before, &before[..1]).as_deref(),
            Some("table app.b was dropped or renamed")
        );
    }

    #[tokio::test]
    async fn a_lease_says_when_it_expired_and_a_dropped_one_never_does() {
        let ran = Arc::new(AtomicUsize::new(0));
        let expire = |ran: Arc<AtomicUsize>| async move {
            ran.fetch_add(1, Ordering::SeqCst);
            Ok(())
        };
        let lease = Lease::arm(Duration::from_millis(20), "s".into(), expire(ran.clone()));
        assert!(!lease.expired());
        let dropped = Lease::arm(Duration::from_millis(20), "s".into(), expire(ran.clone()));
        drop(dropped);
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert!(lease.expired());
        assert_eq!(ran.load(Ordering::SeqCst), 1, "only the kept lease expires");
    }

    #[test]
    fn what_is_taken_while_settling_outlasts_the_longest_settling_and_a_block() {
        let opts = CutOptions {
            write_block_timeout: Duration::from_secs(1),
            write_block_lease: Duration::from_secs(3),
            connect_timeout: Duration::from_secs(5),
        };
        assert_eq!(opts.settle_budget(), SETTLE_AT_LEAST);
        assert_eq!(opts.settled_lease(), Duration::from_secs(5 + 1 + 3));
        let long = CutOptions {
            write_block_timeout: Duration::from_secs(8),
            ..opts
        };
        assert_eq!(long.settle_budget(), Duration::from_secs(8));
    }
}
