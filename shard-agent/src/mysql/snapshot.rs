//! Dumping a MySQL/MariaDB shard from its consistent snapshot.
//!
//! Every worker connection opened its snapshot while commits were blocked,
//! so all of them see the same state. Work items (a table, or a primary-key
//! range of one) are shared through a queue; each worker streams its rows
//! through the binary protocol into a [`ChunkWriter`].

use std::collections::VecDeque;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use mysql_async::prelude::Queryable;
use mysql_async::{Conn, Row, Value};
use topology::{Engine, Shard};

use super::schema::database_schema;
use super::{ident, query_err, Session, Table};
use crate::dump::chunk::{store_file, ChunkWriter, RowDigest};
use crate::dump::mysql_value::encode_row;
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

fn table_prefix(opts: &DumpOptions, shard: &str, t: &Table) -> String {
    format!(
        "{}shards/{}/{}/{}",
        keys::backup_prefix(&opts.backup_id),
        keys::segment(shard),
        keys::segment(&t.database),
        keys::segment(&t.name)
    )
}

fn as_i128(v: &Value) -> Option<i128> {
    match v {
        Value::Int(i) => Some(i128::from(*i)),
        Value::UInt(u) => Some(i128::from(*u)),
        Value::Bytes(b) => std::str::from_utf8(b).ok()?.parse().ok(),
        _ => None,
    }
}

impl Session {
    pub(crate) async fn dump(mut self, opts: &DumpOptions) -> Result<ShardManifest, AgentError> {
        let shard = self.shard.clone();
        let mut manifest = ShardManifest {
            engine: Some(Engine::Mysql),
            server: self.server.clone(),
            ..Default::default()
        };
        // Schema from the control session (free since the release).
        for db in self.databases.clone() {
            let tables: Vec<&Table> = self.tables.iter().filter(|t| t.database == db).collect();
            let schema = database_schema(&mut self.control, &shard, &db, &tables).await?;
            let raw = serde_json::to_vec_pretty(&schema).map_err(|e| AgentError::Tool {
                shard: shard.name.clone(),
                what: format!("encoding the schema of {db}: {e}"),
            })?;
            let key = format!(
                "{}shards/{}/{}/schema.json.zst",
                keys::backup_prefix(&opts.backup_id),
                keys::segment(&shard.name),
                keys::segment(&db)
            );
            let (bytes_raw, bytes_stored, xxh3) =
                store_file(opts.repo.clone(), key.clone(), raw, opts.compression)
                    .await
                    .map_err(|source| AgentError::Storage {
                        shard: shard.name.clone(),
                        what: format!("storing the schema of {db}"),
                        source,
                    })?;
            manifest.schema.push(StoredFile {
                key,
                section: "database".into(),
                database: db,
                bytes_raw,
                bytes_stored,
                xxh3,
            });
        }

        let items = self.plan(opts).await?;
        opts.progress.rows_estimate.store(
            self.tables.iter().map(|t| t.rows_estimate).sum(),
            Ordering::Relaxed,
        );
        let queue = Arc::new(Mutex::new(VecDeque::from(items)));
        let tables = Arc::new(self.tables.clone());
        let mut tasks = tokio::task::JoinSet::new();
        for conn in std::mem::take(&mut self.workers) {
            tasks.spawn(worker(
                conn,
                shard.clone(),
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
        if let Some(e) = first_error {
            return Err(e);
        }
        drop(self.control.disconnect().await);
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
                database: t.database.clone(),
                schema: None,
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
        Ok(manifest)
    }

    /// Splits tables with an integer key into ranges, reading bounds inside
    /// the snapshot so they match what the workers will see.
    async fn plan(&mut self, opts: &DumpOptions) -> Result<Vec<Item>, AgentError> {
        let mut items = Vec::new();
        let shard = self.shard.clone();
        for (i, t) in self.tables.iter().enumerate() {
            let mut ranges = vec![(None, None)];
            if t.integer_key && t.rows_estimate > opts.chunk_rows {
                if let Some(conn) = self.workers.first_mut() {
                    let pk = ident(&t.primary_key[0]);
                    let sql = format!(
                        "SELECT MIN({pk}), MAX({pk}) FROM {}.{}",
                        ident(&t.database),
                        ident(&t.name)
                    );
                    let rows: Vec<Row> = conn.query(&sql).await.map_err(query_err(&shard, &sql))?;
                    if let Some(r) = rows.first() {
                        if let (Some(Some(lo)), Some(Some(hi))) =
                            (r.as_ref(0).map(as_i128), r.as_ref(1).map(as_i128))
                        {
                            ranges = plan_ranges(lo, hi, t.rows_estimate, opts.chunk_rows);
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
        // Largest tables first, so one big table does not finish last alone.
        items.sort_by_key(|it| std::cmp::Reverse(self.tables[it.table].rows_estimate));
        Ok(items)
    }
}

async fn worker(
    mut conn: Conn,
    shard: Shard,
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
        done.push(dump_item(&mut conn, &shard, &tables[item.table], item, &opts).await?);
    }
    // Ends the read-only snapshot transaction; an error here cannot affect
    // data already stored.
    drop(conn.disconnect().await);
    Ok(done)
}

async fn dump_item(
    conn: &mut Conn,
    shard: &Shard,
    t: &Table,
    item: Item,
    opts: &DumpOptions,
) -> Result<ItemResult, AgentError> {
    let started = Instant::now();
    let cols: Vec<String> = t.columns.iter().map(|(c, _)| ident(c)).collect();
    let predicate = match t.primary_key.first() {
        Some(pk) if t.integer_key => range_predicate(&ident(pk), &item.range),
        _ => String::new(),
    };
    let sql = format!(
        "SELECT {} FROM {}.{}{predicate}",
        cols.join(", "),
        ident(&t.database),
        ident(&t.name)
    );
    let what = format!("reading {}.{}", t.database, t.name);
    let prefix = format!(
        "{}/r{:05}",
        table_prefix(opts, &shard.name, t),
        item.range_no
    );
    let mut writer = ChunkWriter::new(opts.repo.clone(), prefix, opts.compression);
    let storage = |source| AgentError::Storage {
        shard: shard.name.clone(),
        what: format!("storing {}.{}", t.database, t.name),
        source,
    };
    let mut result = conn
        .exec_iter(sql.as_str(), ())
        .await
        .map_err(query_err(shard, &what))?;
    let mut rows_since = 0u64;
    let mut bytes_since = 0usize;
    while let Some(row) = result.next().await.map_err(query_err(shard, &what))? {
        let (buf, start) = writer.row_buffer();
        encode_row(buf, &row);
        bytes_since += buf.len() - start + 1;
        writer.end_row(start).await.map_err(storage)?;
        rows_since += 1;
        if rows_since == 4096 {
            opts.progress.add(rows_since, bytes_since as u64);
            (rows_since, bytes_since) = (0, 0);
            if opts.cancel.load(Ordering::Relaxed) {
                return Err(AgentError::Cancelled {
                    shard: shard.name.clone(),
                });
            }
        }
    }
    opts.progress.add(rows_since, bytes_since as u64);
    let (digest, chunks) = writer.finish().await.map_err(storage)?;
    Ok(ItemResult {
        table: item.table,
        range_no: item.range_no,
        digest,
        chunks,
        millis: u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX),
    })
}
