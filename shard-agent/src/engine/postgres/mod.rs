//! A PostgreSQL shard's session: per selected database a connection that
//! holds the write block and one that exports the snapshot; the phases are
//! in `cut`, `schema` (pg_dump pre-/post-data) and `dump` (COPY data),
//! `exclusions` (what a backup keeps needs nothing it leaves out); the
//! other phases in `preflight`, `capture`, `restore`, `replay` and
//! `readback`, all behind [`driver::Postgres`].

mod activity;
pub mod binary_copy;
pub(crate) mod binary_load;
mod capture;
pub mod copy_reader;
mod cut;
pub mod driver;
mod dump;
mod exclusions;
mod guard;
mod matviews;
pub(crate) mod preflight;
mod privileges;
mod properties;
mod readback;
pub(crate) mod replay;
mod restore;
mod restore_post;
pub(crate) mod schema;
mod settle;
pub mod wire;

use std::collections::HashMap;
use std::time::{Duration, Instant};

use tokio_postgres::Client;
use topology::Shard;

use crate::connect;
use crate::cut::{catalog_change, CutOptions, Lease, TableShape};
use crate::error::{AgentError, DbError};
use preflight::SYSTEM_DATABASES;

#[derive(Debug, Clone)]
pub struct Table {
    pub schema: String,
    pub name: String,
    /// A partitioned parent is read through its partitions (`FROM t`);
    /// a plain table with `FROM ONLY t`, so inheritance children are not
    /// counted twice.
    pub partitioned: bool,
    pub columns: Vec<(String, String)>,
    pub primary_key: Vec<String>,
    /// Parent tables by foreign key, as `db.schema.table`.
    pub references: Vec<String>,
    pub integer_key: bool,
    pub rows_estimate: u64,
}

impl Table {
    pub fn qualified(&self) -> String {
        format!("{}.{}", ident(&self.schema), ident(&self.name))
    }
}

pub(crate) struct Database {
    pub name: String,
    /// Holds the vacuum guard from settling on (see `guard`), then
    /// `LOCK TABLE … IN EXCLUSIVE MODE` during the block.
    block: Client,
    block_pid: i32,
    /// `block` is inside its transaction (guard or block held).
    open: bool,
    /// Holds the exported snapshot open for the whole dump.
    snap: Client,
    snapshot_id: Option<String>,
    pub tables: Vec<Table>,
}

pub struct Session {
    pub(crate) shard: Shard,
    pub(crate) server: String,
    opts: CutOptions,
    pub(crate) databases: Vec<Database>,
    lease: Option<Lease>,
    blocked_since: Option<Instant>,
    /// The last settle found no jam: any jam a lock try meets since then
    /// began after it (see `settle`).
    settled: bool,
}

/// Double-quotes an identifier.
pub fn ident(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

/// ` (a, b)`: the column list of a `COPY` of `names`, quoted; nothing for
/// a table without columns (PostgreSQL allows them, and refuses `()`).
pub(crate) fn copy_columns<'a>(names: impl IntoIterator<Item = &'a str>) -> String {
    let quoted: Vec<String> = names.into_iter().map(ident).collect();
    if quoted.is_empty() {
        String::new()
    } else {
        format!(" ({})", quoted.join(", "))
    }
}

/// The partitioned tables of the connected database (their rows live in
/// their partitions), as (schema, name): one query for every table.
pub(crate) async fn partitioned_tables(
    client: &Client,
) -> Result<std::collections::HashSet<(String, String)>, tokio_postgres::Error> {
    Ok(client
        .query(
            "SELECT n.nspname::text, c.relname::text FROM pg_class c \
             JOIN pg_namespace n ON n.oid = c.relnamespace WHERE c.relkind = 'p'",
            &[],
        )
        .await?
        .iter()
        .filter_map(|r| Some((r.try_get(0).ok()?, r.try_get(1).ok()?)))
        .collect())
}

pub(crate) fn pg_err(shard: &Shard, what: &str) -> impl Fn(tokio_postgres::Error) -> AgentError {
    let shard = shard.name.clone();
    let what = what.to_string();
    move |e| AgentError::Query {
        shard: shard.clone(),
        what: what.clone(),
        source: DbError::Postgres(e),
    }
}

/// Session settings under which COPY text output is canonical and exact.
/// Each must succeed: a silently failed `SET` would change the dump.
/// `row_security = off` (as pg_dump sets it): a table whose policies
/// would hide rows from the user is refused by the server, naming it,
/// instead of read filtered without a word.
pub(crate) const READER_SETTINGS: &str = "SET TimeZone = 'UTC'; SET DateStyle = 'ISO, YMD'; \
     SET IntervalStyle = 'postgres'; SET extra_float_digits = 3; SET bytea_output = 'hex'; \
     SET client_encoding = 'UTF8'; SET standard_conforming_strings = on; \
     SET default_transaction_read_only = off; SET row_security = off";

pub(crate) async fn reader(
    shard: &Shard,
    db: &str,
    timeout: Duration,
) -> Result<Client, AgentError> {
    let client = connect::postgres(shard, Some(db), timeout).await?;
    client
        .batch_execute(READER_SETTINGS)
        .await
        .map_err(pg_err(shard, "setting up the session"))?;
    Ok(client)
}

/// The databases of a shard that backups (and capture) cover: the
/// topology's list, or every database but the system ones.
pub(crate) async fn selected_databases(
    shard: &Shard,
    timeout: Duration,
) -> Result<Vec<String>, AgentError> {
    let admin = connect::postgres(shard, None, timeout).await?;
    databases_of(&admin, shard).await
}

/// The databases of `shard` that backups cover, as `client` sees them (in
/// a snapshot: as of the snapshot).
async fn databases_of(client: &Client, shard: &Shard) -> Result<Vec<String>, AgentError> {
    let rows = client
        .query(
            "SELECT datname::text FROM pg_database WHERE datallowconn AND NOT datistemplate ORDER BY 1",
            &[],
        )
        .await
        .map_err(pg_err(shard, "listing databases"))?;
    let mut names = Vec::new();
    for r in rows {
        let name: String = r.try_get(0).map_err(pg_err(shard, "listing databases"))?;
        let selected = match &shard.databases {
            Some(list) => list.contains(&name),
            None => !SYSTEM_DATABASES.contains(&name.as_str()),
        };
        if selected {
            names.push(name);
        }
    }
    Ok(names)
}

impl Session {
    pub(crate) async fn prepare(
        shard: &Shard,
        opts: &CutOptions,
        server: String,
    ) -> Result<Session, AgentError> {
        let names = selected_databases(shard, opts.connect_timeout).await?;
        let mut databases = Vec::new();
        for name in names {
            let block = reader(shard, &name, opts.connect_timeout).await?;
            let pid: i32 = block
                .query_one("SELECT pg_backend_pid()", &[])
                .await
                .and_then(|r| r.try_get(0))
                .map_err(pg_err(shard, "reading the backend pid"))?;
            let snap = reader(shard, &name, opts.connect_timeout).await?;
            let tables = catalog(&snap, shard, &name).await?;
            databases.push(Database {
                name,
                block,
                block_pid: pid,
                open: false,
                snap,
                snapshot_id: None,
                tables,
            });
        }
        Ok(Session {
            shard: shard.clone(),
            server,
            opts: opts.clone(),
            databases,
            lease: None,
            blocked_since: None,
            settled: false,
        })
    }
}

impl Session {
    /// Fails with [`AgentError::ChangedBeforeCut`] if DDL created a
    /// selected database between the catalog read in `prepare` and the
    /// cut. PostgreSQL's catalog is transactional: read in an exported
    /// snapshot, it is the cut's.
    pub(super) async fn check_databases_at_cut(&self) -> Result<(), AgentError> {
        let Some(first) = self.databases.first() else {
            return Ok(());
        };
        for name in databases_of(&first.snap, &self.shard).await? {
            if !self.databases.iter().any(|d| d.name == name) {
                return Err(AgentError::ChangedBeforeCut {
                    shard: self.shard.name.clone(),
                    change: format!("database {name} was created"),
                });
            }
        }
        Ok(())
    }

    /// As [`Self::check_databases_at_cut`], for the tables of `db` and
    /// their columns, read in its snapshot (the block's `LOCK TABLE` covers
    /// only the tables listed before).
    pub(super) async fn check_tables_at_cut(&self, db: &Database) -> Result<(), AgentError> {
        let began = std::time::Instant::now();
        // Large objects are not tables, and pg_dump's schema leaves them
        // out: a backup without them would be called complete.
        let objects = preflight::large_objects(&db.snap, &self.shard, &db.name).await?;
        if objects > 0 {
            return Err(AgentError::Tool {
                shard: self.shard.name.clone(),
                what: format!(
                    "database {} holds {objects} large object(s), which shardcut does not back up; store them in bytea columns, or leave the database out of the shard's `databases`",
                    db.name
                ),
            });
        }
        // DDL between the catalog and the cut may have made something
        // kept need what is left out: checked again in the snapshot.
        exclusions::nothing_kept_needs_what_is_left_out(&db.snap, &self.shard, &db.name).await?;
        let (at_cut, _) = tables_with_columns(&db.snap, &self.shard, &db.name).await?;
        tracing::debug!(
            "{}: catalog of {} table(s) of {} checked at the cut in {} ms",
            self.shard.name,
            at_cut.len(),
            db.name,
            began.elapsed().as_millis()
        );
        let shapes = |tables: &[Table]| -> Vec<TableShape> {
            tables
                .iter()
                .map(|t| TableShape {
                    name: crate::manifest::qualified_name(&db.name, Some(&t.schema), &t.name),
                    columns: t.columns.clone(),
                })
                .collect()
        };
        match catalog_change(&shapes(&db.tables), &shapes(&at_cut)) {
            Some(change) => Err(AgentError::ChangedBeforeCut {
                shard: self.shard.name.clone(),
                change,
            }),
            None => Ok(()),
        }
    }
}

async fn catalog(client: &Client, shard: &Shard, db: &str) -> Result<Vec<Table>, AgentError> {
    let err = pg_err(shard, &format!("reading the catalog of {db}"));
    let (mut tables, oids) = tables_with_columns(client, shard, db).await?;
    exclusions::nothing_kept_needs_what_is_left_out(client, shard, db).await?;
    let index: HashMap<u32, usize> = oids.iter().enumerate().map(|(i, o)| (*o, i)).collect();
    let keys = client
        .query(
            "SELECT i.indrelid, a.attname::text FROM pg_index i \
             JOIN unnest($1::oid[]) AS listed(oid) ON i.indrelid = listed.oid \
             JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = ANY(i.indkey::int2[]) \
             WHERE i.indisprimary \
             ORDER BY i.indrelid, array_position(i.indkey::int2[], a.attnum)",
            &[&oids],
        )
        .await
        .map_err(&err)?;
    for r in keys {
        let oid: u32 = r.try_get(0).map_err(&err)?;
        if let Some(&i) = index.get(&oid) {
            tables[i].primary_key.push(r.try_get(1).map_err(&err)?);
        }
    }
    let fks = client
        .query(
            "SELECT DISTINCT c.conrelid, n.nspname::text, p.relname::text FROM pg_constraint c \
             JOIN pg_class p ON p.oid = c.confrelid JOIN pg_namespace n ON n.oid = p.relnamespace \
             WHERE c.contype = 'f' AND c.conrelid = ANY($1) AND c.confrelid <> c.conrelid",
            &[&oids],
        )
        .await
        .map_err(&err)?;
    for r in fks {
        let oid: u32 = r.try_get(0).map_err(&err)?;
        let schema: String = r.try_get(1).map_err(&err)?;
        let name: String = r.try_get(2).map_err(&err)?;
        if let Some(&i) = index.get(&oid) {
            tables[i]
                .references
                .push(crate::manifest::qualified_name(db, Some(&schema), &name));
        }
    }
    for t in &mut tables {
        t.integer_key = t.primary_key.len() == 1
            && t.columns.iter().any(|(c, ty)| {
                c == &t.primary_key[0] && matches!(ty.as_str(), "smallint" | "integer" | "bigint")
            });
    }
    Ok(tables)
}

/// The selected tables of `db` with their stored columns, as `client`
/// sees them (in a snapshot: as of the snapshot), and their oids.
async fn tables_with_columns(
    client: &Client,
    shard: &Shard,
    db: &str,
) -> Result<(Vec<Table>, Vec<u32>), AgentError> {
    let err = pg_err(shard, &format!("reading the catalog of {db}"));
    let rows = client
        .query(
            "SELECT c.oid, n.nspname::text, c.relname::text, c.relkind = 'p', \
             greatest(c.reltuples, 0)::int8 \
             FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace \
             WHERE c.relkind IN ('r', 'p') AND NOT c.relispartition \
             AND n.nspname NOT IN ('pg_catalog', 'information_schema') \
             AND n.nspname NOT LIKE 'pg\\_toast%' AND n.nspname NOT LIKE 'pg\\_temp%' \
             ORDER BY 2, 3",
            &[],
        )
        .await
        .map_err(&err)?;
    let mut tables = Vec::new();
    let mut oids = Vec::new();
    for r in rows {
        let oid: u32 = r.try_get(0).map_err(&err)?;
        let schema: String = r.try_get(1).map_err(&err)?;
        let name: String = r.try_get(2).map_err(&err)?;
        if shard.excludes(db, Some(&schema), &name) {
            continue;
        }
        let estimate: i64 = r.try_get(4).map_err(&err)?;
        oids.push(oid);
        tables.push(Table {
            schema,
            name,
            partitioned: r.try_get(3).map_err(&err)?,
            columns: Vec::new(),
            primary_key: Vec::new(),
            references: Vec::new(),
            integer_key: false,
            rows_estimate: u64::try_from(estimate).unwrap_or(0),
        });
    }
    // Where each table is in `tables`, for the rows of the queries below
    // (a search of `oids` per row grows with the square of the tables).
    // The tables go to the server as an array joined like a table: on
    // 10,000 tables 35 ms where `attrelid = ANY($1)` took 60 ms.
    let index: HashMap<u32, usize> = oids.iter().enumerate().map(|(i, o)| (*o, i)).collect();
    let cols = client
        .query(
            "SELECT attrelid, attname::text, format_type(atttypid, atttypmod) FROM pg_attribute \
             JOIN unnest($1::oid[]) AS listed(oid) ON attrelid = listed.oid \
             WHERE attnum > 0 AND NOT attisdropped AND attgenerated = '' \
             ORDER BY attrelid, attnum",
            &[&oids],
        )
        .await
        .map_err(&err)?;
    for r in cols {
        let oid: u32 = r.try_get(0).map_err(&err)?;
        if let Some(&i) = index.get(&oid) {
            tables[i]
                .columns
                .push((r.try_get(1).map_err(&err)?, r.try_get(2).map_err(&err)?));
        }
    }
    Ok((tables, oids))
}
