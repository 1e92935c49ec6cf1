//! Dumping a MySQL/MariaDB shard from its consistent snapshot.
//!
//! Every worker connection opened its snapshot while commits were blocked,
//! so all of them see the same state. Work items (a table, or a primary-key
//! range of one) are shared through a queue; each worker streams its rows
//! through the binary protocol into a [`ChunkWriter`], encoding each row
//! straight into the chunk buffer (see [`Reader`]).

use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Instant;

use topology::{Engine, Shard};

use super::reader::{protocol_for, Protocol, Reader};
use super::schema::database_schema;
use super::sql::ident;
use super::stored_sql::restore_refusal;
use super::value::decode_line;
use super::{db_err, dump_workers, tables_per_snapshot, Session, Table};
use crate::dump::chunk::{ChunkError, ChunkWriter, Scratch};
use crate::dump::work::{
    finish_bundles, finish_item, join_workers, merge, range_prefix, report_progress, storage_error,
    store_schema, sync_chunks, sync_schema, Item, ItemResult, Queue, TableMeta, REPORT_EVERY_ROWS,
};
use crate::dump::{plan_ranges, range_predicate, worth_splitting, DumpOptions};
use crate::error::AgentError;
use crate::manifest::{keys, Selection, ShardManifest, StoredFile};

/// A field of a canonical line as an integer; `None` for NULL or text.
fn as_i128(field: &Option<Vec<u8>>) -> Option<i128> {
    std::str::from_utf8(field.as_deref()?).ok()?.parse().ok()
}

impl Session {
    pub(crate) async fn dump(mut self, opts: &DumpOptions) -> Result<ShardManifest, AgentError> {
        let shard = self.shard.clone();
        let opts = &opts.with_bundles(&shard.name);
        let mut manifest = ShardManifest {
            engine: Some(Engine::Mysql),
            server: self.server.clone(),
            selection: Selection::of(&shard),
            ..Default::default()
        };
        let queue = Queue::new(self.plan(opts).await?);
        opts.progress.rows_estimate.store(
            self.tables.iter().map(|t| t.rows_estimate).sum(),
            Ordering::Relaxed,
        );
        let tables = Arc::new(self.tables.clone());
        let mut conns = std::mem::take(&mut self.workers);
        let spares = conns.split_off(dump_workers(&shard, self.tables.len()).min(conns.len()));
        let spares = Arc::new(Mutex::new(spares));
        let held: Held = Arc::new(Mutex::new(Some(Vec::new())));
        let data = async {
            let began = Instant::now();
            let mut tasks = tokio::task::JoinSet::new();
            for conn in conns {
                tasks.spawn(worker(
                    conn,
                    spares.clone(),
                    held.clone(),
                    shard.clone(),
                    tables.clone(),
                    queue.clone(),
                    opts.clone(),
                ));
            }
            let results = join_workers(tasks, &shard.name, &opts.cancel).await;
            // Spares no worker took end their snapshots too.
            let unused =
                std::mem::take(&mut *spares.lock().unwrap_or_else(PoisonError::into_inner));
            for conn in unused {
                conn.disconnect().await;
            }
            tracing::debug!(
                "{}: data read in {:.2} s",
                shard.name,
                began.elapsed().as_secs_f64()
            );
            results
        };
        // The schema from the control session (free since the release),
        // while the workers read the data: with thousands of tables its
        // `SHOW CREATE` round trips took 1.2-1.6 s before the first row.
        // A failure stops the workers; both are awaited whatever happens to
        // the other, so nothing is still writing when an error is returned.
        let schema = async {
            if let Some(ms) = crate::knobs::count("SHARDCUT_TEST_SCHEMA_PAUSE_MS") {
                tracing::warn!(
                    "{}: pausing {ms} ms before reading the schema (test hook)",
                    shard.name
                );
                tokio::time::sleep(std::time::Duration::from_millis(ms as u64)).await;
            }
            let began = Instant::now();
            let files = schema_files(
                &mut self.control,
                &self.databases,
                (&self.sequences, &self.tables),
                &shard,
                opts,
            )
            .await;
            if files.is_err() {
                opts.cancel.store(true, Ordering::Relaxed);
            }
            // Every table's schema is read: DDL may go on.
            let done = held.lock().unwrap_or_else(PoisonError::into_inner).take();
            for conn in done.into_iter().flatten() {
                conn.disconnect().await;
            }
            tracing::debug!(
                "{}: schema of {} table(s) read in {:.2} s",
                shard.name,
                self.tables.len(),
                began.elapsed().as_secs_f64()
            );
            files
        };
        let (schema, results) = tokio::join!(schema, data);
        // A failed schema read is the cause of the workers' cancellation.
        manifest.schema = schema?;
        let results = results?;
        let began = Instant::now();
        sync_chunks(opts, &shard.name, &results).await?;
        sync_schema(opts, &shard.name, &manifest.schema).await?;
        manifest.bundles = finish_bundles(opts, &shard.name).await?;
        tracing::debug!(
            "{}: chunks and bundles synced in {:.2} s",
            shard.name,
            began.elapsed().as_secs_f64()
        );
        drop(self.control.disconnect().await);
        let meta: Vec<TableMeta<'_>> = tables
            .iter()
            .map(|t| TableMeta {
                database: &t.database,
                schema: None,
                name: &t.name,
                columns: &t.columns,
                primary_key: &t.primary_key,
                references: &t.references,
                system_versioned: t.system_time.is_some(),
            })
            .collect();
        manifest.table_list = merge(results, &meta);
        Ok(manifest)
    }

    /// Splits tables with an integer key into ranges, reading bounds inside
    /// the snapshot so they match what the workers will see.
    async fn plan(&mut self, opts: &DumpOptions) -> Result<Vec<Item>, AgentError> {
        let mut items = Vec::new();
        let shard = self.shard.clone();
        let total: u64 = self.tables.iter().map(|t| t.rows_estimate).sum();
        for (i, t) in self.tables.iter().enumerate() {
            let mut ranges = vec![(None, None)];
            if t.integer_key
                && worth_splitting(t.rows_estimate, total, shard.parallelism, opts.chunk_rows)
            {
                if let Some(conn) = self.workers.first_mut() {
                    let pk = ident(&t.primary_key[0]);
                    let sql = format!(
                        "SELECT MIN({pk}), MAX({pk}) FROM {}.{}",
                        ident(&t.database),
                        ident(&t.name)
                    );
                    let line = conn.first_line(&sql).await.map_err(db_err(&shard, &sql))?;
                    if let Some(line) = line {
                        if let [lo, hi] = decode_line(&line).as_slice() {
                            if let (Some(lo), Some(hi)) = (as_i128(lo), as_i128(hi)) {
                                ranges = plan_ranges(lo, hi, t.rows_estimate, opts.chunk_rows);
                            }
                        }
                    }
                }
            }
            for (range_no, range) in ranges.into_iter().enumerate() {
                items.push(Item {
                    table: i,
                    range_no,
                    range,
                });
            }
        }
        items.sort_by_key(|it| std::cmp::Reverse(self.tables[it.table].rows_estimate));
        Ok(items)
    }
}

/// Reads, stores and describes the schema of every selected database.
async fn schema_files(
    control: &mut mysql_async::Conn,
    databases: &[String],
    (sequences, tables): (&[(String, String)], &[Table]),
    shard: &Shard,
    opts: &DumpOptions,
) -> Result<Vec<StoredFile>, AgentError> {
    let mut files = Vec::new();
    for db in databases {
        let in_db: Vec<&Table> = tables.iter().filter(|t| &t.database == db).collect();
        let sequences_in_db: Vec<&str> = sequences
            .iter()
            .filter(|(d, _)| d == db)
            .map(|(_, name)| name.as_str())
            .collect();
        let schema = database_schema(control, shard, db, &sequences_in_db, &in_db).await?;
        if let Some(what) = restore_refusal(&schema) {
            return Err(AgentError::Tool {
                shard: shard.name.clone(),
                what,
            });
        }
        let raw = serde_json::to_vec_pretty(&schema).map_err(|source| AgentError::Schema {
            shard: shard.name.clone(),
            what: format!("encoding the schema of {db}"),
            source,
        })?;
        let key = format!(
            "{}shards/{}/{}/schema.json.zst",
            keys::backup_prefix(&opts.backup_id),
            keys::segment(&shard.name),
            keys::segment(db)
        );
        files.push(store_schema(opts, &shard.name, key, raw, "database", db).await?);
    }
    Ok(files)
}

/// Spare snapshot connections, taken by workers that have read
/// [`tables_per_snapshot`] items on theirs.
type Spares = Arc<Mutex<Vec<Reader>>>;

/// Snapshot connections a worker is done with, kept open until the
/// schema pass is over (`None` once it is). The schema is read on the
/// control session, not in the snapshot; a connection's transaction holds
/// the metadata lock of every table it read, so DDL on such a table waits
/// for the schema pass instead of giving a schema newer than the rows.
/// (`SHOW CREATE` takes a high-priority lock, which a waiting ALTER does
/// not hold up.)
type Held = Arc<Mutex<Option<Vec<Reader>>>>;

/// Ends `conn`'s snapshot, or keeps it in `held` while the schema pass
/// still runs.
async fn retire(held: &Held, conn: Reader) {
    let conn = match held.lock().unwrap_or_else(PoisonError::into_inner).as_mut() {
        Some(kept) => {
            kept.push(conn);
            None
        }
        None => Some(conn),
    };
    if let Some(conn) = conn {
        conn.disconnect().await;
    }
}

/// Small tables a worker reads with one write of their queries
/// ([`Reader::send_queries`]): a table of at most [`BATCH_ROWS`] rows (by
/// the estimate), read whole in the text protocol. The server finds each
/// next query waiting instead of a round trip per table: on 10,000 tables
/// of 20 rows the data read took 1.34-1.51 s instead of 1.61-1.94 s
/// (docs/BENCHMARKS.md, "Many tables: what changed").
const BATCH_TABLES: usize = 32;
const BATCH_ROWS: u64 = 1_000;
/// The queries of a batch are written before any reply is read, so they
/// must fit in the sockets' buffers whatever the server is doing.
const BATCH_SQL_BYTES: usize = 16 * 1024;

async fn worker(
    mut conn: Reader,
    spares: Spares,
    held: Held,
    shard: Shard,
    tables: Arc<Vec<Table>>,
    queue: Queue,
    opts: DumpOptions,
) -> Result<Vec<ItemResult>, AgentError> {
    let mut done = Vec::new();
    let mut scratch = Scratch::default();
    let (per_snapshot, mut read) = (tables_per_snapshot(), 0);
    loop {
        let mut sqls = Vec::new();
        let mut bytes = 0;
        let batching = conn.sends_batches();
        let items = queue.next_batch(&shard.name, &opts.cancel, |item| {
            let t = &tables[item.table];
            if !batching || sqls.len() == BATCH_TABLES || !batchable(t, item) {
                return false;
            }
            let sql = select_sql(t, item);
            if bytes + sql.len() > BATCH_SQL_BYTES && !sqls.is_empty() {
                return false;
            }
            bytes += sql.len();
            sqls.push(sql);
            true
        })?;
        if items.is_empty() {
            break;
        }
        if read >= per_snapshot {
            let fresh = spares.lock().unwrap_or_else(PoisonError::into_inner).pop();
            if let Some(fresh) = fresh {
                retire(&held, std::mem::replace(&mut conn, fresh)).await;
                read = 0;
            }
        }
        read += items.len();
        // A fresh connection is the same kind as the one before; whatever
        // it is, a batch it cannot send is read one table at a time.
        let sent = sqls.len() > 1 && conn.sends_batches();
        if sent {
            let what = format!("sending the queries of {} tables", sqls.len());
            conn.send_queries(&sqls)
                .await
                .map_err(db_err(&shard, &what))?;
        }
        // `sqls` holds the statements of the batch's first items, in order.
        let mut built = sqls.into_iter();
        for item in items {
            let t = &tables[item.table];
            let sql = built.next();
            let statement = if sent {
                Statement::Sent
            } else {
                let protocol =
                    protocol_for(t.columns.iter().map(|(_, ty)| ty.as_str()), t.rows_estimate);
                Statement::Run(sql.unwrap_or_else(|| select_sql(t, &item)), protocol)
            };
            let (result, s) =
                dump_item(&mut conn, &shard, t, item, statement, &opts, scratch).await?;
            done.push(result);
            scratch = s;
        }
    }
    // Ends the read-only snapshot transaction (once the schema is read);
    // an error here cannot affect data already stored.
    retire(&held, conn).await;
    Ok(done)
}

/// Whether `item` can go in a batch: a whole small table read as text.
fn batchable(t: &Table, item: &Item) -> bool {
    item.range == (None, None)
        && t.rows_estimate <= BATCH_ROWS
        && protocol_for(t.columns.iter().map(|(_, ty)| ty.as_str()), t.rows_estimate)
            == Protocol::Text
}

/// The statement that reads `item`: its table's stored columns (with a
/// system-versioned table's system time, of every version), in the item's
/// key range.
fn select_sql(t: &Table, item: &Item) -> String {
    let cols: Vec<String> = t.columns.iter().map(|(c, _)| ident(c)).collect();
    let predicate = match t.primary_key.first() {
        Some(pk) if t.integer_key => range_predicate(&ident(pk), &item.range),
        _ => String::new(),
    };
    // Every version of every row: the history is the table's too.
    let versions = match t.system_time {
        Some(_) => " FOR SYSTEM_TIME ALL",
        None => "",
    };
    format!(
        "SELECT {} FROM {}.{}{versions}{predicate}",
        cols.join(", "),
        ident(&t.database),
        ident(&t.name)
    )
}

/// Where an item's rows come from: a statement run now, or the next of
/// those sent together.
enum Statement {
    Run(String, Protocol),
    Sent,
}

async fn dump_item(
    conn: &mut Reader,
    shard: &Shard,
    t: &Table,
    item: Item,
    statement: Statement,
    opts: &DumpOptions,
    scratch: Scratch,
) -> Result<(ItemResult, Scratch), AgentError> {
    let started = Instant::now();
    let what = format!("reading {}.{}", t.database, t.name);
    let prefix = range_prefix(
        opts,
        &shard.name,
        &t.database,
        &keys::segment(&t.name),
        item.range_no,
    );
    let mut writer = ChunkWriter::new(opts.repo.clone(), prefix, opts.compression, scratch)
        .bundled(opts.bundles.clone());
    let storage = storage_error(&shard.name, format!("{}.{}", t.database, t.name));
    let streamed = stream_rows(conn, shard, statement, &what, opts, &mut writer, &storage).await;
    finish_item(writer, streamed, &storage, &item, started).await
}

/// Streams one range's rows into `writer`, encoded.
async fn stream_rows(
    conn: &mut Reader,
    shard: &Shard,
    statement: Statement,
    what: &str,
    opts: &DumpOptions,
    writer: &mut ChunkWriter,
    storage: &(dyn Fn(ChunkError) -> AgentError + Sync),
) -> Result<(), AgentError> {
    // Built once: `db_err` clones two Strings, which per row showed in profiles.
    let failed = db_err(shard, what);
    let rows = match &statement {
        Statement::Run(sql, protocol) => conn.rows(sql, *protocol).await,
        Statement::Sent => conn.sent_rows().await,
    };
    let mut rows = rows.map_err(&failed)?;
    let (mut rows_since, mut bytes_since) = (0u64, 0usize);
    loop {
        let (buf, start) = writer.row_buffer();
        if !rows.next_line(buf).await.map_err(&failed)? {
            break;
        }
        bytes_since += buf.len() - start + 1;
        writer.end_row(start).await.map_err(storage)?;
        rows_since += 1;
        if rows_since == REPORT_EVERY_ROWS {
            report_progress(opts, &shard.name, rows_since, bytes_since as u64)?;
            (rows_since, bytes_since) = (0, 0);
        }
    }
    opts.progress.add(rows_since, bytes_since as u64);
    Ok(())
}
