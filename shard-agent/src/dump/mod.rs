//! Engine-neutral parts of a dump: the options every engine's dump takes,
//! its live progress counters, key-range planning, chunk writing
//! (`chunk`), the work queue (`work`) and chunk packing (`pack`).

pub mod chunk;
pub mod pack;
pub mod work;

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

use topology::Compression;

use crate::bundle::BundleWriter;
use crate::repo::Repository;

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
    /// The shard's bundles of small chunks, set by the engine's dump for
    /// its workers ([`DumpOptions::with_bundles`]); `None`: every chunk is
    /// an object of its own.
    pub bundles: Option<Arc<BundleWriter>>,
}

impl DumpOptions {
    /// These options with a bundle writer for `shard`'s small chunks
    /// (unless bundling is turned off, [`crate::bundle::enabled`]).
    pub fn with_bundles(&self, shard: &str) -> DumpOptions {
        let bundles = crate::bundle::enabled()
            .then(|| Arc::new(BundleWriter::new(self.repo.clone(), &self.backup_id, shard)));
        DumpOptions {
            bundles,
            ..self.clone()
        }
    }
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
