//! Dumping a PostgreSQL shard from its exported snapshots with
//! `COPY … TO STDOUT` (text format), whose lines are the canonical row
//! encoding: the reader settings fix every output format that could vary.

use std::collections::VecDeque;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use futures_util::StreamExt;
use tokio_postgres::Client;
use topology::{Engine, Shard};

use super::{ident, pg_err, reader, schema, Session, Table};
use crate::dump::chunk::{store_file, ChunkWriter, RowDigest};
use crate::error::AgentError;
use crate::manifest::{keys, ChunkRef, Column, ShardManifest, StoredFile, TableManifest};
use crate::session::{plan_ranges, range_predicate, DumpOptions, KeyRange};

struct Item {
    table: usize,
    range_no: usize,
    range: KeyRange,
}

struct ItemResult {
    table: usize,
    range_no: usize,
    digest: RowDigest,
    chunks: Vec<ChunkRef>,
    millis: u64,
}

impl Session {
    pub(crate) async fn dump(self, opts: &DumpOptions) -> Result<ShardManifest, AgentError> {
        let shard = self.shard.clone();
        let mut manifest = ShardManifest {
            engine: Some(Engine::Postgres),
            server: self.server.clone(),
            ..Default::default()
        };
        opts.progress.rows_estimate.store(
            self.databases
                .iter()
                .flat_map(|d| &d.tables)
                .map(|t| t.rows_estimate)
                .sum(),
            Ordering::Relaxed,
        );
        for db in &self.databases {
            let snapshot = db.snapshot_id.clone().ok_or_else(|| AgentError::Tool {
                shard: shard.name.clone(),
                what: format!("database {} has no snapshot (mark was not run)", db.name),
            })?;
            let excluded: Vec<String> = shard
                .exclude_tables
                .iter()
                .filter(|t| t.database == db.name)
                .map(|t| {
                    format!(
                        "{}.{}",
                        ident(t.schema.as_deref().unwrap_or("public")),
                        ident(&t.table)
                    )
                })
                .collect();
            for section in ["pre-data", "post-data"] {
                let sql = schema::section(&shard, &db.name, &snapshot, section, &excluded).await?;
                let key = format!(
                    "{}shards/{}/{}/{section}.sql.zst",
                    keys::backup_prefix(&opts.backup_id),
                    keys::segment(&shard.name),
                    keys::segment(&db.name)
                );
                let (bytes_raw, bytes_stored, xxh3) =
                    store_file(opts.repo.clone(), key.clone(), sql, opts.compression)
                        .await
                        .map_err(|source| AgentError::Storage {
                            shard: shard.name.clone(),
                            what: format!("storing the {section} schema of {}", db.name),
                            source,
                        })?;
                manifest.schema.push(StoredFile {
                    key,
                    section: section.into(),
                    database: db.name.clone(),
                    bytes_raw,
                    bytes_stored,
                    xxh3,
                });
            }
            let tables = Arc::new(db.tables.clone());
            let results =
                dump_database(&shard, &db.name, &snapshot, &db.snap, tables.clone(), opts).await?;
            collect(&mut manifest, &db.name, &tables, results);
        }
        // Ending the exporting transactions: the snapshots are no longer needed.
        for db in &self.databases {
            drop(db.snap.batch_execute("COMMIT").await);
        }
        Ok(manifest)
    }
}

fn collect(manifest: &mut ShardManifest, db: &str, tables: &[Table], mut results: Vec<ItemResult>) {
    results.sort_by_key(|r| (r.table, r.range_no));
    for (i, t) in tables.iter().enumerate() {
        let mut digest = RowDigest::default();
        let mut chunks = Vec::new();
        let mut millis = 0;
        for r in results.iter_mut().filter(|r| r.table == i) {
            digest.merge(r.digest);
            chunks.append(&mut r.chunks);
            millis += r.millis;
        }
        manifest.table_list.push(TableManifest {
            database: db.to_string(),
            schema: Some(t.schema.clone()),
            name: t.name.clone(),
            columns: t
                .columns
                .iter()
                .map(|(n, ty)| Column {
                    name: n.clone(),
                    data_type: ty.clone(),
                })
                .collect(),
            primary_key: t.primary_key.clone(),
            rows: digest.rows,
            content_hash: digest.hex(),
            bytes_raw: chunks.iter().map(|c| c.bytes_raw).sum(),
            bytes_stored: chunks.iter().map(|c| c.bytes_stored).sum(),
            duration_ms: millis,
            chunks,
        });
    }
}

async fn dump_database(
    shard: &Shard,
    db: &str,
    snapshot: &str,
    snap: &Client,
    tables: Arc<Vec<Table>>,
    opts: &DumpOptions,
) -> Result<Vec<ItemResult>, AgentError> {
    let mut items = Vec::new();
    for (i, t) in tables.iter().enumerate() {
        let mut ranges = vec![(None, None)];
        if t.integer_key && t.rows_estimate > opts.chunk_rows {
            let pk = ident(&t.primary_key[0]);
            let sql = format!(
                "SELECT min({pk})::int8, max({pk})::int8 FROM {}",
                t.qualified()
            );
            let row = snap
                .query_one(&sql, &[])
                .await
                .map_err(pg_err(shard, &sql))?;
            let lo: Option<i64> = row.try_get(0).map_err(pg_err(shard, &sql))?;
            let hi: Option<i64> = row.try_get(1).map_err(pg_err(shard, &sql))?;
            if let (Some(lo), Some(hi)) = (lo, hi) {
                ranges = plan_ranges(
                    i128::from(lo),
                    i128::from(hi),
                    t.rows_estimate,
                    opts.chunk_rows,
                );
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
    items.sort_by_key(|it| std::cmp::Reverse(tables[it.table].rows_estimate));
    let workers = shard.parallelism.min(items.len()).max(1);
    let queue = Arc::new(Mutex::new(VecDeque::from(items)));
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..workers {
        let client = reader(shard, db, std::time::Duration::from_secs(10)).await?;
        let begin = format!(
            "BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY; SET TRANSACTION SNAPSHOT '{}'",
            snapshot.replace('\'', "''")
        );
        client
            .batch_execute(&begin)
            .await
            .map_err(pg_err(shard, "importing the snapshot"))?;
        tasks.spawn(worker(
            client,
            shard.clone(),
            db.to_string(),
            tables.clone(),
            queue.clone(),
            opts.clone(),
        ));
    }
    let mut results = Vec::new();
    let mut first_error = None;
    while let Some(joined) = tasks.join_next().await {
        match joined {
            Ok(Ok(mut r)) => results.append(&mut r),
            Ok(Err(e)) => {
                opts.cancel.store(true, Ordering::Relaxed);
                first_error.get_or_insert(e);
            }
            Err(e) => {
                opts.cancel.store(true, Ordering::Relaxed);
                first_error.get_or_insert(AgentError::Tool {
                    shard: shard.name.clone(),
                    what: format!("a dump worker panicked: {e}"),
                });
            }
        }
    }
    match first_error {
        Some(e) => Err(e),
        None => Ok(results),
    }
}

async fn worker(
    client: Client,
    shard: Shard,
    db: String,
    tables: Arc<Vec<Table>>,
    queue: Arc<Mutex<VecDeque<Item>>>,
    opts: DumpOptions,
) -> Result<Vec<ItemResult>, AgentError> {
    let mut done = Vec::new();
    loop {
        if opts.cancel.load(Ordering::Relaxed) {
            return Err(AgentError::Cancelled {
                shard: shard.name.clone(),
            });
        }
        let next = queue.lock().unwrap_or_else(|p| p.into_inner()).pop_front();
        let Some(item) = next else { break };
        done.push(dump_item(&client, &shard, &db, &tables[item.table], item, &opts).await?);
    }
    drop(client.batch_execute("COMMIT").await);
    Ok(done)
}

/// The `COPY` statement that reads one range of a table.
pub fn copy_out_sql(t: &Table, range: &KeyRange) -> String {
    let cols: Vec<String> = t.columns.iter().map(|(c, _)| ident(c)).collect();
    let predicate = match t.primary_key.first() {
        Some(pk) if t.integer_key => range_predicate(&ident(pk), range),
        _ => String::new(),
    };
    let only = if t.partitioned { "" } else { "ONLY " };
    format!(
        "COPY (SELECT {} FROM {only}{}{predicate}) TO STDOUT",
        cols.join(", "),
        t.qualified()
    )
}

async fn dump_item(
    client: &Client,
    shard: &Shard,
    db: &str,
    t: &Table,
    item: Item,
    opts: &DumpOptions,
) -> Result<ItemResult, AgentError> {
    let started = Instant::now();
    let sql = copy_out_sql(t, &item.range);
    let what = format!("reading {db}.{}.{}", t.schema, t.name);
    let prefix = format!(
        "{}shards/{}/{}/{}.{}/r{:05}",
        keys::backup_prefix(&opts.backup_id),
        keys::segment(&shard.name),
        keys::segment(db),
        keys::segment(&t.schema),
        keys::segment(&t.name),
        item.range_no
    );
    let mut writer = ChunkWriter::new(opts.repo.clone(), prefix, opts.compression);
    let storage = |source| AgentError::Storage {
        shard: shard.name.clone(),
        what: format!("storing {db}.{}.{}", t.schema, t.name),
        source,
    };
    let stream = client
        .copy_out(sql.as_str())
        .await
        .map_err(pg_err(shard, &what))?;
    futures_util::pin_mut!(stream);
    // COPY text rows end with LF and escape LF inside values, so lines are
    // rows; a line may span two network buffers, hence the carry.
    let mut carry: Vec<u8> = Vec::new();
    let (mut rows_since, mut bytes_since) = (0u64, 0u64);
    while let Some(piece) = stream.next().await {
        let piece = piece.map_err(pg_err(shard, &what))?;
        bytes_since += piece.len() as u64;
        let mut rest: &[u8] = &piece;
        while let Some(nl) = rest.iter().position(|b| *b == b'\n') {
            if carry.is_empty() {
                writer.push(&rest[..nl]).await.map_err(storage)?;
            } else {
                carry.extend_from_slice(&rest[..nl]);
                writer.push(&carry).await.map_err(storage)?;
                carry.clear();
            }
            rows_since += 1;
            rest = &rest[nl + 1..];
        }
        carry.extend_from_slice(rest);
        if rows_since >= 4096 {
            opts.progress.add(rows_since, bytes_since);
            (rows_since, bytes_since) = (0, 0);
            if opts.cancel.load(Ordering::Relaxed) {
                return Err(AgentError::Cancelled {
                    shard: shard.name.clone(),
                });
            }
        }
    }
    if !carry.is_empty() {
        return Err(AgentError::Tool {
            shard: shard.name.clone(),
            what: format!("{what}: COPY output ended in the middle of a row"),
        });
    }
    opts.progress.add(rows_since, bytes_since);
    let (digest, chunks) = writer.finish().await.map_err(storage)?;
    Ok(ItemResult {
        table: item.table,
        range_no: item.range_no,
        digest,
        chunks,
        millis: u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX),
    })
}
