//! The engine-independent half of a shard's data dump: work items shared by
//! the workers through a queue, joining the workers (first error cancels the
//! rest), and merging range results into per-table manifests.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use crate::dump::chunk::{store_file, ChunkError, ChunkWriter, RowDigest, Scratch};
use crate::dump::{DumpOptions, KeyRange};
use crate::error::AgentError;
use crate::manifest::{ChunkRef, Column, StoredBundle, StoredFile, TableManifest};

/// A table, or one primary-key range of it.
pub struct Item {
    pub table: usize,
    pub range_no: usize,
    pub range: KeyRange,
}

pub struct ItemResult {
    pub table: usize,
    pub range_no: usize,
    pub digest: RowDigest,
    pub chunks: Vec<ChunkRef>,
    pub millis: u64,
}

/// Ends one work item. After a failed stream it waits for the chunk in
/// flight (nothing may be written once the caller gives up) and returns the
/// error; otherwise it stores what is left and describes the item.
pub async fn finish_item(
    writer: ChunkWriter,
    streamed: Result<(), AgentError>,
    storage: &(dyn Fn(ChunkError) -> AgentError + Sync),
    item: &Item,
    started: std::time::Instant,
) -> Result<(ItemResult, Scratch), AgentError> {
    if let Err(e) = streamed {
        writer.abandon().await;
        return Err(e);
    }
    let (digest, chunks, scratch) = writer.finish().await.map_err(storage)?;
    let result = ItemResult {
        table: item.table,
        range_no: item.range_no,
        digest,
        chunks,
        millis: u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX),
    };
    Ok((result, scratch))
}

#[derive(Clone)]
pub struct Queue(Arc<Mutex<VecDeque<Item>>>);

impl Queue {
    /// Items in the order given; callers put the biggest tables first so
    /// one big table does not finish last alone.
    pub fn new(items: Vec<Item>) -> Self {
        Queue(Arc::new(Mutex::new(VecDeque::from(items))))
    }

    /// The next item, or `None` when the queue is empty; an error once
    /// another worker has failed.
    pub fn next(&self, shard: &str, cancel: &AtomicBool) -> Result<Option<Item>, AgentError> {
        if cancel.load(Ordering::Relaxed) {
            return Err(AgentError::Cancelled {
                shard: shard.to_string(),
            });
        }
        // The lock only guards a pop; a panic elsewhere cannot corrupt it.
        Ok(self.0.lock().unwrap_or_else(|p| p.into_inner()).pop_front())
    }

    /// The next item and the ones after it that `join` takes, in queue
    /// order: `join` sees the first item too, and the batch ends at the
    /// first item it refuses (left in the queue unless it is the first).
    /// Empty when the queue is; an error once another worker has failed.
    pub fn next_batch(
        &self,
        shard: &str,
        cancel: &AtomicBool,
        mut join: impl FnMut(&Item) -> bool,
    ) -> Result<Vec<Item>, AgentError> {
        if cancel.load(Ordering::Relaxed) {
            return Err(AgentError::Cancelled {
                shard: shard.to_string(),
            });
        }
        let mut queue = self.0.lock().unwrap_or_else(|p| p.into_inner());
        let Some(first) = queue.pop_front() else {
            return Ok(Vec::new());
        };
        let more = join(&first);
        let mut batch = vec![first];
        while more && queue.front().is_some_and(&mut join) {
            batch.extend(queue.pop_front());
        }
        Ok(batch)
    }
}

/// Waits for every worker. The first failure sets `cancel` so the others
/// stop at their next row, and is the error returned.
pub async fn join_workers(
    mut tasks: tokio::task::JoinSet<Result<Vec<ItemResult>, AgentError>>,
    shard: &str,
    cancel: &AtomicBool,
) -> Result<Vec<ItemResult>, AgentError> {
    let mut results = Vec::new();
    let mut first_error = None;
    while let Some(joined) = tasks.join_next().await {
        let failure = match joined {
            Ok(Ok(mut r)) => {
                results.append(&mut r);
                continue;
            }
            Ok(Err(e)) => e,
            Err(source) => AgentError::Panicked {
                shard: shard.to_string(),
                task: "a dump worker",
                source,
            },
        };
        cancel.store(true, Ordering::Relaxed);
        // A worker cancelled because of another is not the cause.
        if first_error.is_none() || matches!(first_error, Some(AgentError::Cancelled { .. })) {
            first_error = Some(failure);
        }
    }
    match first_error {
        Some(e) => Err(e),
        None => Ok(results),
    }
}

/// Makes every chunk of `results` stored as an object of its own durable:
/// they were stored unsynced ([`crate::repo::Repository::put_unsynced`]),
/// and a shard's dump reports only what is on the device. One pass over
/// all of them costs the file system far less than a sync a chunk
/// (docs/BENCHMARKS.md, "Many tables"). Bundled chunks are made durable
/// with their bundles ([`finish_bundles`]).
pub async fn sync_chunks(
    opts: &DumpOptions,
    shard: &str,
    results: &[ItemResult],
) -> Result<(), AgentError> {
    let keys: Vec<String> = results
        .iter()
        .flat_map(|r| r.chunks.iter())
        .filter(|c| c.bundle.is_none())
        .map(|c| c.key.clone())
        .collect();
    let repo = opts.repo.clone();
    blocking_storage(shard, "syncing the chunks", move || {
        let names: Vec<&str> = keys.iter().map(String::as_str).collect();
        repo.sync_objects(&names)
    })
    .await
}

/// Makes the shard's schema files durable: they are stored unsynced
/// ([`crate::dump::chunk::store_file`]) like the chunks, and the manifest
/// that names them is only written after this.
pub async fn sync_schema(
    opts: &DumpOptions,
    shard: &str,
    files: &[StoredFile],
) -> Result<(), AgentError> {
    let keys: Vec<String> = files.iter().map(|f| f.key.clone()).collect();
    let repo = opts.repo.clone();
    blocking_storage(shard, "syncing the schema files", move || {
        let names: Vec<&str> = keys.iter().map(String::as_str).collect();
        repo.sync_objects(&names)
    })
    .await
}

/// Stores the shard's last bundle and makes every bundle durable; returns
/// them for the shard's manifest. Called once the shard's workers are
/// done, after its last database.
pub async fn finish_bundles(
    opts: &DumpOptions,
    shard: &str,
) -> Result<Vec<StoredBundle>, AgentError> {
    let Some(bundles) = opts.bundles.clone() else {
        return Ok(Vec::new());
    };
    let repo = opts.repo.clone();
    blocking_storage(shard, "storing the bundles of small tables", move || {
        let stored = bundles.finish()?;
        let names: Vec<&str> = stored.iter().map(|b| b.key.as_str()).collect();
        repo.sync_objects(&names)?;
        Ok(stored)
    })
    .await
}

/// Runs repository work on a blocking thread; a failure is the shard's
/// storage error, `what` naming the step.
async fn blocking_storage<T: Send + 'static>(
    shard: &str,
    what: &str,
    work: impl FnOnce() -> Result<T, crate::repo::RepoError> + Send + 'static,
) -> Result<T, AgentError> {
    let failed = |source: ChunkError| AgentError::Storage {
        shard: shard.to_string(),
        what: what.to_string(),
        source,
    };
    match tokio::task::spawn_blocking(work).await {
        Ok(r) => r.map_err(|e| failed(e.into())),
        Err(e) => Err(failed(ChunkError::Join(e.to_string()))),
    }
}

/// The key prefix of one range of one table:
/// `backups/<id>/shards/<shard>/<db>/<table-segment>.rNNNNN`. Every name is
/// percent-encoded into its own key segment. A table's chunks lie beside
/// the other tables' in the database's folder: a folder per table cost a
/// `mkdir` and a directory inode per table (docs/BENCHMARKS.md, "Many
/// tables"). The names stay distinct: the suffix `.r<digits>-p<digits>.zst`
/// holds no other dot. Restores read the keys from the manifest, so
/// backups in the older layout read as before.
pub fn range_prefix(
    opts: &DumpOptions,
    shard: &str,
    db: &str,
    table_segment: &str,
    range_no: usize,
) -> String {
    format!(
        "{}shards/{}/{}/{table_segment}.r{range_no:05}",
        crate::manifest::keys::backup_prefix(&opts.backup_id),
        crate::manifest::keys::segment(shard),
        crate::manifest::keys::segment(db),
    )
}

/// Rows a dump streams between two progress reports and cancellation checks.
pub const REPORT_EVERY_ROWS: u64 = 4096;

/// Adds streamed rows and bytes to the progress, then stops the stream if
/// another worker has failed (it sets `cancel`).
pub fn report_progress(
    opts: &DumpOptions,
    shard: &str,
    rows: u64,
    bytes: u64,
) -> Result<(), AgentError> {
    opts.progress.add(rows, bytes);
    if opts.cancel.load(Ordering::Relaxed) {
        return Err(AgentError::Cancelled {
            shard: shard.to_string(),
        });
    }
    Ok(())
}

/// Maps a storage failure while writing `table` to the shard's error.
pub fn storage_error(
    shard: &str,
    table: String,
) -> impl Fn(crate::dump::chunk::ChunkError) -> AgentError + '_ {
    move |source| AgentError::Storage {
        shard: shard.to_string(),
        what: format!("storing {table}"),
        source,
    }
}

/// What the dump of one table needs to describe it in the manifest.
pub struct TableMeta<'a> {
    pub database: &'a str,
    pub schema: Option<&'a str>,
    pub name: &'a str,
    pub columns: &'a [(String, String)],
    pub primary_key: &'a [String],
    pub references: &'a [String],
    /// See [`TableManifest::system_versioned`].
    pub system_versioned: bool,
}

/// Merges range results (in range order) into one manifest entry per table;
/// `tables[i]` describes table index `i` of the items.
pub fn merge(mut results: Vec<ItemResult>, tables: &[TableMeta<'_>]) -> Vec<TableManifest> {
    results.sort_by_key(|r| (r.table, r.range_no));
    // Results in table order, taken table by table in one pass (scanning
    // every result for every table was quadratic in the tables).
    let mut results = results.into_iter().peekable();
    tables
        .iter()
        .enumerate()
        .map(|(i, t)| {
            let mut digest = RowDigest::default();
            let mut chunks = Vec::new();
            let mut millis = 0;
            while results.peek().is_some_and(|r| r.table < i) {
                results.next();
            }
            while let Some(mut r) = results.next_if(|r| r.table == i) {
                digest.merge(r.digest);
                chunks.append(&mut r.chunks);
                millis += r.millis;
            }
            TableManifest {
                database: t.database.to_string(),
                schema: t.schema.map(str::to_string),
                name: t.name.to_string(),
                columns: t
                    .columns
                    .iter()
                    .map(|(n, ty)| Column {
                        name: n.clone(),
                        data_type: ty.clone(),
                    })
                    .collect(),
                primary_key: t.primary_key.to_vec(),
                references: t.references.to_vec(),
                system_versioned: t.system_versioned,
                rows: digest.rows,
                content_hash: digest.hex(),
                bytes_raw: chunks.iter().map(|c| c.bytes_raw).sum(),
                bytes_stored: chunks.iter().map(|c| c.bytes_stored).sum(),
                duration_ms: millis,
                chunks,
            }
        })
        .collect()
}

/// Compresses and stores one schema file, described for the manifest.
pub async fn store_schema(
    opts: &DumpOptions,
    shard: &str,
    key: String,
    raw: Vec<u8>,
    section: &str,
    database: &str,
) -> Result<StoredFile, AgentError> {
    let (bytes_raw, bytes_stored, xxh3) =
        store_file(opts.repo.clone(), key.clone(), raw, opts.compression)
            .await
            .map_err(|source| AgentError::Storage {
                shard: shard.to_string(),
                what: format!("storing the {section} schema of {database}"),
                source,
            })?;
    Ok(StoredFile {
        key,
        section: section.to_string(),
        database: database.to_string(),
        bytes_raw,
        bytes_stored,
        xxh3,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_batch_takes_the_items_that_join_in_queue_order() {
        let item = |table| Item {
            table,
            range_no: 0,
            range: (None, None),
        };
        let queue = Queue::new((0..6).map(item).collect());
        let cancel = AtomicBool::new(false);
        let tables = |batch: Vec<Item>| batch.iter().map(|i| i.table).collect::<Vec<_>>();
        // Up to three at a time, and never table 4.
        let join = || {
            let mut taken = 0;
            move |i: &Item| {
                let yes = i.table != 4 && taken < 3;
                taken += usize::from(yes);
                yes
            }
        };
        assert_eq!(
            tables(queue.next_batch("s", &cancel, join()).unwrap()),
            [0, 1, 2]
        );
        // Table 4 stops the batch and stays first in the queue.
        assert_eq!(tables(queue.next_batch("s", &cancel, join()).unwrap()), [3]);
        // A first item that does not join is a batch of itself.
        assert_eq!(tables(queue.next_batch("s", &cancel, join()).unwrap()), [4]);
        assert_eq!(tables(queue.next_batch("s", &cancel, join()).unwrap()), [5]);
        assert!(queue.next_batch("s", &cancel, |_| true).unwrap().is_empty());
        cancel.store(true, Ordering::Relaxed);
        assert!(queue.next_batch("s", &cancel, |_| true).is_err());
    }

    fn result(table: usize, range_no: usize, rows: u64) -> ItemResult {
        ItemResult {
            table,
            range_no,
            digest: RowDigest { rows, sum: rows },
            chunks: vec![ChunkRef {
                key: format!("t{table}/r{range_no}"),
                rows,
                bytes_raw: rows,
                bytes_stored: rows,
                xxh3: String::new(),
                raw_xxh3: String::new(),
                bundle: None,
            }],
            millis: 1,
        }
    }

    #[test]
    fn merge_gives_each_table_its_ranges_in_order_whatever_order_they_finished_in() {
        let names = ["a", "b", "c", "d"];
        let meta: Vec<TableMeta<'_>> = names
            .iter()
            .map(|n| TableMeta {
                database: "db",
                schema: None,
                name: n,
                columns: &[],
                primary_key: &[],
                references: &[],
                system_versioned: false,
            })
            .collect();
        // Table 1 has no ranges (its results never came); 3 has three.
        let results = vec![
            result(3, 2, 30),
            result(0, 0, 5),
            result(3, 0, 10),
            result(2, 0, 7),
            result(3, 1, 20),
        ];
        let merged = merge(results, &meta);
        let rows: Vec<u64> = merged.iter().map(|t| t.rows).collect();
        assert_eq!(rows, [5, 0, 7, 60]);
        let keys: Vec<&str> = merged[3].chunks.iter().map(|c| c.key.as_str()).collect();
        assert_eq!(keys, ["t3/r0", "t3/r1", "t3/r2"]);
        assert!(merged[1].chunks.is_empty());
        assert_eq!(merged[3].duration_ms, 3);
    }
}
