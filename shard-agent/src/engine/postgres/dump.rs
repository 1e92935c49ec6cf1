//! Dumping a PostgreSQL shard from its exported snapshots with
//! `COPY … TO STDOUT` (text format), whose lines are the canonical row
//! encoding: the reader settings fix every output format that could vary.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Instant;

use tokio_postgres::Client;
use topology::{Engine, Shard};

use super::copy_reader::{literal, CopyReader};
use super::{ident, pg_err, schema, Session, Table};
use crate::client_choice::ReaderKind;
use crate::dump::chunk::{ChunkError, ChunkWriter, Scratch};
use crate::dump::work::{
    finish_bundles, finish_item, join_workers, merge, range_prefix, report_progress, storage_error,
    store_schema, sync_chunks, sync_schema, Item, ItemResult, Queue, TableMeta, REPORT_EVERY_ROWS,
};
use crate::dump::{plan_ranges, range_predicate, worth_splitting, DumpOptions, KeyRange};
use crate::error::{db_err, AgentError};
use crate::manifest::{keys, Selection, SequenceValue, ShardManifest};

impl Session {
    pub(crate) async fn dump(self, opts: &DumpOptions) -> Result<ShardManifest, AgentError> {
        let shard = self.shard.clone();
        let opts = &opts.with_bundles(&shard.name);
        let mut manifest = ShardManifest {
            engine: Some(Engine::Postgres),
            server: self.server.clone(),
            selection: Selection::of(&shard),
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
        // Before anything is stored: what the catalog read before the cut
        // planned must be what the cut holds (each database's tables just
        // after its sequences, below).
        self.check_databases_at_cut().await?;
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
            // Sequences first: they are not transactional, so the sooner
            // after the cut the closer to it.
            let (sequences, states) = sequence_values(&db.snap, &shard, &db.name).await?;
            manifest.sequences.extend(states);
            let refreshes = super::matviews::refreshes(&db.snap, &shard, &db.name).await?;
            let properties = super::properties::read(&db.snap).await.map_err(pg_err(
                &shard,
                &format!("reading the properties of database {}", db.name),
            ))?;
            self.check_tables_at_cut(db).await?;
            // The schema (pg_dump in the exported snapshot, 150 ms before
            // the first row when run ahead of the data) is dumped while the
            // workers read the data. Both are awaited whatever
            // happens to the other, so that nothing is still writing into
            // the repository when an error is returned.
            let schema_key = |section: &str| {
                format!(
                    "{}shards/{}/{}/{section}.sql.zst",
                    keys::backup_prefix(&opts.backup_id),
                    keys::segment(&shard.name),
                    keys::segment(&db.name)
                )
            };
            let schema = async {
                let began = Instant::now();
                let (pre, post) = schema::sections(&shard, &db.name, &snapshot, &excluded).await?;
                let prints = [
                    ("pre-data", schema::fingerprint(&pre)),
                    ("post-data", schema::fingerprint(&post)),
                ];
                tracing::debug!(
                    "{}: schema of {} (pg_dump) read in {:.2} s",
                    shard.name,
                    db.name,
                    began.elapsed().as_secs_f64()
                );
                let pre = store_schema(
                    opts,
                    &shard.name,
                    schema_key("pre-data"),
                    pre,
                    "pre-data",
                    &db.name,
                )
                .await?;
                let post = store_schema(
                    opts,
                    &shard.name,
                    schema_key("post-data"),
                    post,
                    "post-data",
                    &db.name,
                )
                .await?;
                Ok::<_, AgentError>((pre, post, prints))
            };
            let tables = Arc::new(db.tables.clone());
            let data = async {
                let began = Instant::now();
                let data =
                    dump_database(&shard, &db.name, &snapshot, &db.snap, tables.clone(), opts)
                        .await;
                tracing::debug!(
                    "{}: data of {} read in {:.2} s",
                    shard.name,
                    db.name,
                    began.elapsed().as_secs_f64()
                );
                data
            };
            let (schema, data) = tokio::join!(schema, data);
            let (pre, post, prints) = schema?;
            manifest.schema.push(pre);
            manifest.schema.push(post);
            for (section, print) in prints {
                manifest
                    .schema_fingerprints
                    .insert(format!("{}/{section}", db.name), print);
            }
            let results = data?;
            if !sequences.is_empty() {
                manifest.schema.push(
                    store_schema(
                        opts,
                        &shard.name,
                        schema_key("sequences"),
                        sequences,
                        "sequences",
                        &db.name,
                    )
                    .await?,
                );
            }
            if !refreshes.is_empty() {
                manifest.schema.push(
                    store_schema(
                        opts,
                        &shard.name,
                        schema_key("matviews"),
                        refreshes,
                        "matviews",
                        &db.name,
                    )
                    .await?,
                );
            }
            let properties = serde_json::to_vec(&properties).map_err(|e| AgentError::Tool {
                shard: shard.name.clone(),
                what: format!("writing the properties of database {}: {e}", db.name),
            })?;
            manifest.schema.push(
                store_schema(
                    opts,
                    &shard.name,
                    format!(
                        "{}shards/{}/{}/properties.json.zst",
                        keys::backup_prefix(&opts.backup_id),
                        keys::segment(&shard.name),
                        keys::segment(&db.name)
                    ),
                    properties,
                    "properties",
                    &db.name,
                )
                .await?,
            );
            collect(&mut manifest, &db.name, &tables, results);
        }
        manifest.bundles = finish_bundles(opts, &shard.name).await?;
        sync_schema(opts, &shard.name, &manifest.schema).await?;
        // Ending the exporting transactions: the snapshots are no longer needed.
        for db in &self.databases {
            drop(db.snap.batch_execute("COMMIT").await);
        }
        Ok(manifest)
    }
}

/// `setval` statements for every sequence of the database. `pg_dump
/// --schema-only` leaves them out (they belong to its data section), yet a
/// restore without them would hand out keys that already exist. Sequences
/// are not transactional, so this reads their state just after the cut: at
/// least as far as the snapshot, never behind it.
async fn sequence_values(
    snap: &Client,
    shard: &Shard,
    db: &str,
) -> Result<(Vec<u8>, Vec<SequenceValue>), AgentError> {
    let what = format!("reading the sequences of {db}");
    let rows = snap
        .query(
            "SELECT format('SELECT pg_catalog.setval(%L, %s, %s);', \
             quote_ident(schemaname) || '.' || quote_ident(sequencename), \
             COALESCE(last_value, start_value), CASE WHEN last_value IS NULL THEN 'false' ELSE 'true' END), \
             has_sequence_privilege(quote_ident(schemaname) || '.' || quote_ident(sequencename), 'SELECT'), \
             schemaname || '.' || sequencename, \
             quote_ident(schemaname) || '.' || quote_ident(sequencename), \
             COALESCE(last_value, start_value)::int8, last_value IS NOT NULL, \
             schemaname::text, sequencename::text, \
             own.deptype::text, own_n.nspname::text, own_c.relname::text \
             FROM pg_sequences s \
             JOIN pg_namespace sn ON sn.nspname = s.schemaname \
             JOIN pg_class sc ON sc.relnamespace = sn.oid AND sc.relname = s.sequencename \
             LEFT JOIN pg_depend own ON own.classid = 'pg_class'::regclass AND own.objid = sc.oid \
               AND own.refclassid = 'pg_class'::regclass AND own.deptype IN ('a', 'i') \
             LEFT JOIN pg_class own_c ON own_c.oid = own.refobjid \
             LEFT JOIN pg_namespace own_n ON own_n.oid = own_c.relnamespace \
             ORDER BY schemaname, sequencename",
            &[],
        )
        .await
        .map_err(pg_err(shard, &what))?;
    let mut out = Vec::new();
    let mut states = Vec::new();
    for r in rows {
        // Kept as pg_dump keeps the sequence, or the restore's setval of
        // it fails (or it restarts where the restored rows hold keys).
        let schema: String = r.try_get(6).map_err(pg_err(shard, &what))?;
        let name: String = r.try_get(7).map_err(pg_err(shard, &what))?;
        let deptype: Option<String> = r.try_get(8).map_err(pg_err(shard, &what))?;
        let owner_schema: Option<String> = r.try_get(9).map_err(pg_err(shard, &what))?;
        let owner_name: Option<String> = r.try_get(10).map_err(pg_err(shard, &what))?;
        let owner_kept = owner_schema
            .zip(owner_name)
            .map(|(s, n)| !shard.excludes(db, Some(&s), &n));
        if !sequence_kept(
            shard.excludes(db, Some(&schema), &name),
            deptype.as_deref(),
            owner_kept,
        ) {
            continue;
        }
        let readable: bool = r.try_get(1).map_err(pg_err(shard, &what))?;
        if !readable {
            let name: String = r.try_get(2).map_err(pg_err(shard, &what))?;
            return Err(AgentError::Tool {
                shard: shard.name.clone(),
                what: format!("{what}: no SELECT privilege on sequence {db}.{name}; GRANT SELECT ON it to the backup user"),
            });
        }
        let line: String = r.try_get(0).map_err(pg_err(shard, &what))?;
        out.extend_from_slice(line.as_bytes());
        out.push(b'\n');
        states.push(SequenceValue {
            database: db.to_string(),
            name: r.try_get(3).map_err(pg_err(shard, &what))?,
            last_value: r.try_get(4).map_err(pg_err(shard, &what))?,
            is_called: r.try_get(5).map_err(pg_err(shard, &what))?,
        });
    }
    Ok((out, states))
}

/// Whether pg_dump keeps a sequence, and so its state is kept: an
/// identity column's (`deptype` `i`) with its table; one a column owns
/// (`a`, `serial`) unless `exclude_tables` names both it and its table
/// (pg_dump keeps it with its table, and for itself); any other unless
/// named (`excluded`). `owner_kept`: its owning table, if any, is kept.
pub(super) fn sequence_kept(
    excluded: bool,
    deptype: Option<&str>,
    owner_kept: Option<bool>,
) -> bool {
    match (deptype, owner_kept) {
        (Some("i"), Some(kept)) => kept,
        (Some("a"), Some(kept)) => kept || !excluded,
        _ => !excluded,
    }
}

fn collect(manifest: &mut ShardManifest, db: &str, tables: &[Table], results: Vec<ItemResult>) {
    let meta: Vec<TableMeta<'_>> = tables
        .iter()
        .map(|t| TableMeta {
            database: db,
            schema: Some(&t.schema),
            name: &t.name,
            columns: &t.columns,
            primary_key: &t.primary_key,
            references: &t.references,
            system_versioned: false,
        })
        .collect();
    manifest.table_list.extend(merge(results, &meta));
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
    let total: u64 = tables.iter().map(|t| t.rows_estimate).sum();
    for (i, t) in tables.iter().enumerate() {
        let mut ranges = vec![(None, None)];
        if t.integer_key
            && worth_splitting(t.rows_estimate, total, shard.parallelism, opts.chunk_rows)
        {
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
    let queue = Queue::new(items);
    let begin = format!(
        "BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY; SET TRANSACTION SNAPSHOT '{}'",
        snapshot.replace('\'', "''")
    );
    // The workers connect at once: each connection's authentication is a
    // few round trips, which one after the other delayed the first row.
    let clients = futures_util::future::try_join_all((0..workers).map(|_| async {
        let timeout = std::time::Duration::from_secs(10);
        let mut client = CopyReader::connect(shard, db, timeout, ReaderKind::Auto).await?;
        client
            .execute(&begin)
            .await
            .map_err(db_err(shard, "importing the snapshot"))?;
        Ok::<_, AgentError>(client)
    }))
    .await?;
    let mut tasks = tokio::task::JoinSet::new();
    for client in clients {
        tasks.spawn(worker(
            client,
            shard.clone(),
            db.to_string(),
            tables.clone(),
            queue.clone(),
            opts.clone(),
        ));
    }
    let results = join_workers(tasks, &shard.name, &opts.cancel).await?;
    sync_chunks(opts, &shard.name, &results).await?;
    Ok(results)
}

async fn worker(
    mut client: CopyReader,
    shard: Shard,
    db: String,
    tables: Arc<Vec<Table>>,
    queue: Queue,
    opts: DumpOptions,
) -> Result<Vec<ItemResult>, AgentError> {
    let mut done = Vec::new();
    let mut read = std::collections::BTreeSet::new();
    let mut scratch = Scratch::default();
    while let Some(item) = queue.next(&shard.name, &opts.cancel)? {
        read.insert(item.table);
        let (result, s) = dump_item(
            &mut client,
            &shard,
            &db,
            &tables[item.table],
            item,
            &opts,
            scratch,
        )
        .await?;
        done.push(result);
        scratch = s;
    }
    let read: Vec<&Table> = read.into_iter().map(|i| &tables[i]).collect();
    not_rewritten(&mut client, &shard, &db, &read).await?;
    drop(client.execute("COMMIT").await);
    client.close().await;
    Ok(done)
}

/// Fails naming the tables of `read` that were truncated or rewritten
/// (`TRUNCATE`, an `ALTER TABLE` that rewrites, `VACUUM FULL`, `CLUSTER`)
/// after the snapshot was taken and before this worker read them: those
/// are not MVCC-safe, and a snapshot from before sees such a table empty,
/// without an error. A table's storage (its `relfilenode`) as of the
/// snapshot is compared with its storage now; the worker holds each
/// table's lock from its read to its commit, so storage unchanged now was
/// unchanged when the rows were read. The cut releases its locks before
/// the dump reaches a table, and a `TRUNCATE` queued behind the block
/// runs first.
async fn not_rewritten(
    client: &mut CopyReader,
    shard: &Shard,
    db: &str,
    read: &[&Table],
) -> Result<(), AgentError> {
    if read.is_empty() {
        return Ok(());
    }
    let rel = |t: &Table| format!("{}::regclass", literal(&t.qualified()));
    let plain: Vec<String> = read
        .iter()
        .filter(|t| !t.partitioned)
        .map(|t| rel(t))
        .collect();
    let mut sources: Vec<String> = read
        .iter()
        .filter(|t| t.partitioned)
        .map(|t| {
            format!(
                "SELECT relid FROM pg_partition_tree({}) WHERE isleaf",
                rel(t)
            )
        })
        .collect();
    if !plain.is_empty() {
        sources.push(format!("SELECT unnest(ARRAY[{}]::oid[])", plain.join(", ")));
    }
    let sql = format!(
        "SELECT string_agg(quote_ident(n.nspname) || '.' || quote_ident(c.relname), ', ' \
         ORDER BY n.nspname, c.relname) \
         FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace \
         WHERE c.oid IN ({}) AND c.relkind = 'r' \
         AND c.relfilenode IS DISTINCT FROM pg_relation_filenode(c.oid)",
        sources.join(" UNION ALL ")
    );
    let what = format!("checking that the tables of {db} read were not rewritten since the cut");
    match client.first_value(&sql).await.map_err(db_err(shard, &what))? {
        None => Ok(()),
        Some(tables) => Err(AgentError::Tool {
            shard: shard.name.clone(),
            what: format!(
                "table(s) {tables} of database {db} were truncated or rewritten (TRUNCATE, ALTER TABLE, VACUUM FULL or CLUSTER) after the cut and before the backup read them: PostgreSQL shows such a table empty to a snapshot from before, so the backup would lack its rows; take it again"
            ),
        }),
    }
}

/// The `COPY` statement that reads one range of a table. A whole plain
/// table is read with `COPY t (cols)`, which scans the heap directly (and,
/// like `ONLY`, leaves inheritance children out); a range needs a query,
/// and a partitioned table is read through its partitions.
pub fn copy_out_sql(t: &Table, range: &KeyRange) -> String {
    if *range == (None, None) && !t.partitioned {
        let cols = super::copy_columns(t.columns.iter().map(|(c, _)| c.as_str()));
        return format!("COPY {}{cols} TO STDOUT", t.qualified());
    }
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
    client: &mut CopyReader,
    shard: &Shard,
    db: &str,
    t: &Table,
    item: Item,
    opts: &DumpOptions,
    scratch: Scratch,
) -> Result<(ItemResult, Scratch), AgentError> {
    let started = Instant::now();
    let sql = copy_out_sql(t, &item.range);
    let what = format!("reading {db}.{}.{}", t.schema, t.name);
    let segment = keys::qualified_segment(&t.schema, &t.name);
    let prefix = range_prefix(opts, &shard.name, db, &segment, item.range_no);
    let mut writer = ChunkWriter::new(opts.repo.clone(), prefix, opts.compression, scratch)
        .bundled(opts.bundles.clone());
    let storage = storage_error(&shard.name, format!("{db}.{}.{}", t.schema, t.name));
    let streamed = stream_rows(client, shard, &sql, &what, opts, &mut writer, &storage).await;
    finish_item(writer, streamed, &storage, &item, started).await
}

/// Streams one COPY into `writer`, a line per row.
async fn stream_rows(
    client: &mut CopyReader,
    shard: &Shard,
    sql: &str,
    what: &str,
    opts: &DumpOptions,
    writer: &mut ChunkWriter,
    storage: &(dyn Fn(ChunkError) -> AgentError + Sync),
) -> Result<(), AgentError> {
    // Built once: `db_err` clones two Strings, which per row showed in profiles.
    let failed = db_err(shard, what);
    let mut copy = client.copy_out(sql).await.map_err(&failed)?;
    // COPY text rows end with LF and escape LF inside values, so lines are
    // rows; a line may span two network buffers, hence the carry.
    let mut carry: Vec<u8> = Vec::new();
    let (mut rows_since, mut bytes_since) = (0u64, 0u64);
    while let Some(piece) = copy.next().await.map_err(&failed)? {
        bytes_since += piece.len() as u64;
        let mut rest: &[u8] = piece;
        while let Some(nl) = memchr::memchr(b'\n', rest) {
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
        if rows_since >= REPORT_EVERY_ROWS {
            report_progress(opts, &shard.name, rows_since, bytes_since)?;
            (rows_since, bytes_since) = (0, 0);
        }
    }
    if !carry.is_empty() {
        return Err(AgentError::Tool {
            shard: shard.name.clone(),
            what: format!("{what}: COPY output ended in the middle of a row"),
        });
    }
    opts.progress.add(rows_since, bytes_since);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::sequence_kept;

    /// A sequence's state is kept exactly when pg_dump keeps the sequence:
    /// an identity column's with its table, whatever names it; a serial
    /// column's unless both it and its table are left out; any other
    /// unless it is left out.
    #[test]
    fn a_sequence_state_is_kept_as_pg_dump_keeps_the_sequence() {
        for (excluded, deptype, owner_kept, kept) in [
            (false, None, None, true),
            (true, None, None, false),
            (false, Some("i"), Some(false), false),
            (true, Some("i"), Some(true), true),
            (true, Some("a"), Some(true), true),
            (false, Some("a"), Some(false), true),
            (true, Some("a"), Some(false), false),
        ] {
            assert_eq!(
                sequence_kept(excluded, deptype, owner_kept),
                kept,
                "{excluded} {deptype:?} {owner_kept:?}"
            );
        }
    }
}
