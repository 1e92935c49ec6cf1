//! A MySQL/MariaDB shard's session: connections, catalog, and the phases
//! in `cut` (block, mark, release), `schema` and `dump` (data); the other
//! phases in `preflight`, `capture`, `restore`, `replay` and `readback`,
//! all behind [`driver::Mysql`].

mod binlog_filters;
mod capture;
mod cut;
pub mod driver;
mod dump;
mod lexer;
mod logged_sql;
pub(crate) mod preflight;
mod presync;
mod readback;
pub mod reader;
mod reorder;
pub(crate) mod replay;
mod restore;
mod restore_keys;
pub(crate) mod schema;
pub(crate) mod sql;
mod stored_sql;
pub mod value;
pub mod wire;

use std::time::{Duration, Instant};

use mysql_async::prelude::Queryable;
use mysql_async::{Conn, Row};
use topology::Shard;

use crate::cut::{catalog_change, CutOptions, Lease, TableShape};
use crate::error::{AgentError, DbError};
use crate::manifest::qualified_name;
use crate::position::BinlogCoordinates;
use reader::{Reader, ReaderKind};
use sql::{literal_list, number, query_err, text, texts, SYSTEM_DATABASES};

/// How `information_schema.TABLES` lists a MariaDB table `WITH SYSTEM
/// VERSIONING` (which the catalog once passed over without a word: a
/// backup "complete" without it). It is backed up with its history: every
/// version of every row, with its system time ([`SystemTime`]).
const SYSTEM_VERSIONED: &str = "SYSTEM VERSIONED";

/// What the check at the cut lists first among a system-versioned table's
/// columns, on both sides: a table that gained or lost its versioning
/// between the catalog and the cut is a change (its system time is not
/// among the columns the server lists, or is listed as generated).
fn versioning_marker() -> (String, String) {
    (
        "(system time)".to_string(),
        "WITH SYSTEM VERSIONING".to_string(),
    )
}

/// How `information_schema.TABLES` lists a MariaDB sequence. Its schema
/// file keeps its `CREATE SEQUENCE` and state (`schema::sequence`); it has
/// no rows to dump.
const SEQUENCE: &str = "SEQUENCE";

/// A shard of at least this many tables lists its columns, primary keys and
/// foreign keys at once on several connections (see
/// `Session::list_details`); below it the listings take milliseconds and a
/// connection more would cost about as much. `SHARDCUT_CATALOG_AT_ONCE_FROM`
/// sets another number (tests list a few tables both ways).
fn details_at_once_from() -> usize {
    crate::knobs::count("SHARDCUT_CATALOG_AT_ONCE_FROM").unwrap_or(1_000)
}

/// Where each `(database, table)` of the catalog is in the table list.
type TableIndex = std::collections::HashMap<(String, String), usize>;

/// The columns holding a system-versioned table's system time, each with
/// its `COLUMN_TYPE`: its row start and row end. `row_start` and `row_end`
/// (hidden, `timestamp(6)`) unless the table declares its own (`GENERATED
/// ALWAYS AS ROW START`, listed with that generation expression).
#[derive(Debug, Clone)]
pub struct SystemTime {
    pub start: (String, String),
    pub end: (String, String),
}

impl Default for SystemTime {
    fn default() -> Self {
        let implicit = |name: &str| (name.to_string(), "timestamp(6)".to_string());
        SystemTime {
            start: implicit("row_start"),
            end: implicit("row_end"),
        }
    }
}

/// A selected table and what the dump needs to know about it.
#[derive(Debug, Clone)]
pub struct Table {
    pub database: String,
    pub name: String,
    /// Stored (non-generated) columns with their `COLUMN_TYPE`; a
    /// system-versioned table's system time last ([`Table::system_time`]).
    pub columns: Vec<(String, String)>,
    pub primary_key: Vec<String>,
    /// Parent tables by foreign key, as `db.table`.
    pub references: Vec<String>,
    /// Whether the primary key is one integer column, so it can be split
    /// (a system-versioned table's is not: its key holds row end too).
    pub integer_key: bool,
    /// For a table `WITH SYSTEM VERSIONING`: its system time's columns.
    pub system_time: Option<SystemTime>,
    pub rows_estimate: u64,
}

/// A column whose `DEFAULT` takes values from a sequence: the table's
/// place in the catalog, the column, and the sequence `(database, name)`.
type SequenceUse = (usize, String, (String, String));

pub struct Session {
    pub(crate) shard: Shard,
    pub(crate) server: String,
    mariadb: bool,
    opts: CutOptions,
    /// Holds the write block.
    control: Conn,
    control_id: u32,
    /// Snapshot connections, each holding the same consistent snapshot:
    /// one per dump worker, and with many tables spares that the workers
    /// move on to ([`snapshot_connections`]).
    workers: Vec<Reader>,
    tables: Vec<Table>,
    /// The selected sequences, as `(database, name)`.
    sequences: Vec<(String, String)>,
    databases: Vec<String>,
    lease: Option<Lease>,
    /// Whether `control` holds MariaDB's backup stages up to `BLOCK_DDL`,
    /// taken while settling (see `cut::STAGES_BEFORE_BLOCK`).
    staged: bool,
    /// What `check_catalog_at_cut` found while DDL waits; `Unchecked`
    /// again whenever DDL may run again.
    catalog: CatalogAtCut,
    blocked_since: Option<Instant>,
}

/// The catalog read before the cut, compared with the server's as of the
/// cut (`Session::check_catalog_at_cut`).
enum CatalogAtCut {
    Unchecked,
    Unchanged,
    /// The error the block fails with.
    Changed(AgentError),
}

pub(crate) use crate::error::db_err;

/// Dump workers of a shard with `tables` tables: its parallelism, no more
/// than there are tables.
pub(crate) fn dump_workers(shard: &Shard, tables: usize) -> usize {
    shard.parallelism.min(tables).max(1)
}

/// Tables a snapshot connection reads before its worker moves on to a
/// fresh one. A transaction keeps a metadata lock on every table it read
/// until it ends, and MariaDB looks through all of them (a list) for each
/// new table: with 10,000 tables in one transaction that search was two
/// thirds of the server's time and the read took 7.1 s instead of 1.6 s
/// (docs/BENCHMARKS.md, "Many tables"). `SHARDCUT_TABLES_PER_SNAPSHOT`
/// sets another number (tests make the workers move on every table).
pub(crate) fn tables_per_snapshot() -> usize {
    crate::knobs::count("SHARDCUT_TABLES_PER_SNAPSHOT").unwrap_or(1000)
}

/// Snapshot connections for `workers` workers reading `tables` tables: a
/// connection per [`tables_per_snapshot`] tables, at least one a worker
/// and at most eight. All open their snapshots under the write block, so
/// a worker that moves on reads the same state.
pub(crate) fn snapshot_connections(workers: usize, tables: usize) -> usize {
    let workers = workers.max(1);
    tables
        .div_ceil(tables_per_snapshot())
        .clamp(workers, workers * 8)
}

/// The server's current binlog file and offset (`SHOW MASTER STATUS`), or
/// `None` when the binary log is off.
pub(crate) async fn binlog_status(conn: &mut Conn) -> Result<Option<BinlogCoordinates>, DbError> {
    let rows: Vec<Row> = conn
        .query("SHOW MASTER STATUS")
        .await
        .map_err(DbError::Mysql)?;
    let Some(row) = rows.first() else {
        return Ok(None);
    };
    Ok(Some(BinlogCoordinates {
        file: text(row, 0)?.unwrap_or_default(),
        offset: number(row, 1)?.unwrap_or(0),
    }))
}

/// Session settings of every connection that reads data. Each statement's
/// failure is an error: a silently failed `SET` would change what is dumped.
pub(crate) async fn setup_reader(
    conn: &mut Reader,
    shard: &Shard,
    mariadb: bool,
) -> Result<(), AgentError> {
    let mut stmts = vec![
        "SET NAMES utf8mb4",
        // No conversion of results: strings are dumped as the bytes stored.
        "SET SESSION character_set_results = NULL",
        "SET SESSION time_zone = '+00:00'",
        "SET SESSION sql_mode = ''",
        "SET SESSION net_write_timeout = 3600",
        "SET SESSION net_read_timeout = 3600",
        "SET SESSION wait_timeout = 86400",
        "SET SESSION TRANSACTION ISOLATION LEVEL REPEATABLE READ",
    ];
    // A reader through mysql_async came from `connect::mysql`, which set
    // the session baseline already; the wire reader sets it here.
    if matches!(conn, Reader::Wire(_)) {
        stmts.push(crate::connect::mysql_session_baseline(mariadb));
    }
    if mariadb {
        // A whole-table read has no plan to choose; without this MariaDB
        // reads each table's engine-independent statistics (three system
        // tables) on its first open after the cut's flush: a tenth of the
        // server's time in a backup of 10,000 small tables.
        stmts.push("SET SESSION use_stat_tables = 'NEVER'");
    }
    for s in stmts {
        conn.query_drop(s).await.map_err(db_err(shard, s))?;
    }
    Ok(())
}

/// Whether the catalog selects database `db` of `shard`: the topology's
/// list, or every database but the system ones.
fn selects(shard: &Shard, db: &str) -> bool {
    match &shard.databases {
        Some(list) => list.iter().any(|d| d == db),
        None => !SYSTEM_DATABASES.contains(&db),
    }
}

/// The databases on the server that `shard` selects, in name order.
pub(crate) async fn selected_databases(
    conn: &mut Conn,
    shard: &Shard,
) -> Result<Vec<String>, DbError> {
    let rows: Vec<Row> = conn
        .query("SELECT SCHEMA_NAME FROM information_schema.SCHEMATA ORDER BY SCHEMA_NAME")
        .await?;
    let mut out = Vec::new();
    for row in &rows {
        if let Some(db) = text(row, 0)? {
            if selects(shard, &db) {
                out.push(db);
            }
        }
    }
    Ok(out)
}

/// The columns of the databases `dbs` (an SQL list) in order, with their
/// `COLUMN_TYPE`, `EXTRA` (see [`stored_column`]), generation expression
/// (`ROW START`, `ROW END`: a system time's declared columns) and
/// `COLUMN_DEFAULT` (a sequence it takes values from).
fn columns_sql(dbs: &str) -> String {
    format!(
        "SELECT TABLE_SCHEMA, TABLE_NAME, COLUMN_NAME, COLUMN_TYPE, EXTRA, GENERATION_EXPRESSION, \
         COLUMN_DEFAULT \
         FROM information_schema.COLUMNS WHERE TABLE_SCHEMA IN {dbs} \
         ORDER BY TABLE_SCHEMA, TABLE_NAME, ORDINAL_POSITION"
    )
}

/// Whether a row of [`columns_sql`] is a stored column: a generated one is
/// not dumped (the restore computes it).
fn stored_column(row: &Row) -> Result<bool, DbError> {
    let extra = text(row, 4)?.unwrap_or_default().to_uppercase();
    Ok(!["VIRTUAL", "STORED", "PERSISTENT"]
        .iter()
        .any(|g| extra.contains(g)))
}

pub(crate) use crate::connect::is_mariadb;

impl Session {
    pub(crate) async fn prepare(
        shard: &Shard,
        opts: &CutOptions,
        server: String,
    ) -> Result<Session, AgentError> {
        let mariadb = server.starts_with("MariaDB");
        let (control, control_id) = cut::control_connection(shard, opts).await?;
        let mut session = Session {
            shard: shard.clone(),
            server,
            mariadb,
            opts: opts.clone(),
            control,
            control_id,
            workers: Vec::new(),
            tables: Vec::new(),
            sequences: Vec::new(),
            databases: Vec::new(),
            lease: None,
            staged: false,
            catalog: CatalogAtCut::Unchecked,
            blocked_since: None,
        };
        let began = Instant::now();
        session.read_catalog().await?;
        let catalog = began.elapsed();
        let n = snapshot_connections(
            dump_workers(shard, session.tables.len()),
            session.tables.len(),
        );
        // Opened together: a shard of many tables has several per worker.
        let connects = (0..n).map(|_| async {
            let mut conn = Reader::connect(shard, opts.connect_timeout, ReaderKind::Auto).await?;
            setup_reader(&mut conn, shard, mariadb).await?;
            Ok::<_, AgentError>(conn)
        });
        session.workers = futures_util::future::try_join_all(connects).await?;
        tracing::debug!(
            "{}: catalog of {} table(s) read in {:.2} s, {n} snapshot connection(s) opened in {:.2} s",
            shard.name,
            session.tables.len(),
            catalog.as_secs_f64(),
            (began.elapsed() - catalog).as_secs_f64()
        );
        Ok(session)
    }

    /// Lists the selected databases and tables with columns and keys.
    async fn read_catalog(&mut self) -> Result<(), AgentError> {
        let shard = self.shard.clone();
        self.databases = selected_databases(&mut self.control, &shard)
            .await
            .map_err(db_err(&shard, "listing databases"))?;
        if self.databases.is_empty() {
            return Ok(());
        }
        let dbs = literal_list(&self.databases);
        let index = self.list_tables(&dbs).await?;
        let [columns, keys, references] = self.list_details(&dbs).await?;
        let uses = self.add_columns(&columns, &index)?;
        self.sequences_held(uses)?;
        self.add_primary_keys(&keys, &index)?;
        self.add_references(&references, &index)?;
        for t in &mut self.tables {
            t.integer_key = t.system_time.is_none()
                && t.primary_key.len() == 1
                && t.columns
                    .iter()
                    .any(|(c, ty)| c == &t.primary_key[0] && ty.to_lowercase().contains("int"));
            if let Some(time) = &t.system_time {
                // Versioned by transaction id, the history names entries
                // of the server's own transaction registry.
                if ![&time.start.1, &time.end.1]
                    .iter()
                    .all(|ty| ty.to_lowercase().starts_with("timestamp"))
                {
                    return Err(AgentError::Tool {
                        shard: shard.name.clone(),
                        what: format!(
                            "table {} is system-versioned by transaction id ({} {}), whose history refers to the server's own transaction registry, which shardcut cannot back up; list it in the shard's exclude_tables to back up the rest",
                            qualified_name(&t.database, None, &t.name),
                            time.start.0,
                            time.start.1
                        ),
                    });
                }
                t.columns.push(time.start.clone());
                t.columns.push(time.end.clone());
            }
        }
        Ok(())
    }

    /// The selected base tables of `dbs` (an SQL list), and its sequences
    /// apart (`self.sequences`); returns where each
    /// `(database, table)` is in `self.tables`. Tables and columns are read
    /// in two queries joined here: the same join in SQL (COLUMNS with
    /// TABLES) took 95 ms on MariaDB 10.11 for four tables, each query
    /// alone about 1 ms.
    async fn list_tables(&mut self, dbs: &str) -> Result<TableIndex, AgentError> {
        let shard = self.shard.clone();
        let de = db_err(&shard, "reading the catalog");
        let mut index = TableIndex::new();
        let rows: Vec<Row> = self
            .control
            .query(format!(
                "SELECT TABLE_SCHEMA, TABLE_NAME, TABLE_ROWS, TABLE_TYPE FROM information_schema.TABLES \
                 WHERE TABLE_TYPE IN ('BASE TABLE', 'SYSTEM VERSIONED', 'SEQUENCE') AND TABLE_SCHEMA IN {dbs} \
                 ORDER BY TABLE_SCHEMA, TABLE_NAME"
            ))
            .await
            .map_err(query_err(&shard, "listing tables"))?;
        for row in &rows {
            let Some([db, table]) = texts(row).map_err(&de)? else {
                continue;
            };
            if !self.databases.contains(&db) || shard.excludes(&db, None, &table) {
                continue;
            }
            let kind = text(row, 3).map_err(&de)?.unwrap_or_default();
            if kind == SEQUENCE {
                self.sequences.push((db, table));
                continue;
            }
            index.insert((db.clone(), table.clone()), self.tables.len());
            self.tables.push(Table {
                database: db,
                name: table,
                columns: Vec::new(),
                primary_key: Vec::new(),
                references: Vec::new(),
                integer_key: false,
                system_time: (kind == SYSTEM_VERSIONED).then(SystemTime::default),
                rows_estimate: number(row, 2).map_err(&de)?.unwrap_or(0),
            });
        }
        Ok(index)
    }

    /// The columns, primary keys and foreign keys of `dbs` (an SQL list),
    /// as the server lists them. On a shard of at least
    /// [`details_at_once_from`] tables the three listings run at once,
    /// on the control session and on connections of their own, which
    /// close before the snapshot connections open (so the backup never has
    /// more open than it would after). Each makes the server open every
    /// table, on one processor: one after another they were most of the
    /// time before a 10,000-table backup's cut (docs/BENCHMARKS.md).
    async fn list_details(&mut self, dbs: &str) -> Result<[Vec<Row>; 3], AgentError> {
        let shard = self.shard.clone();
        let listings = [
            (columns_sql(dbs), "listing columns"),
            (
                format!(
                    "SELECT TABLE_SCHEMA, TABLE_NAME, COLUMN_NAME FROM information_schema.STATISTICS \
                     WHERE INDEX_NAME = 'PRIMARY' AND TABLE_SCHEMA IN {dbs} \
                     ORDER BY TABLE_SCHEMA, TABLE_NAME, SEQ_IN_INDEX"
                ),
                "listing primary keys",
            ),
            (
                format!(
                    "SELECT DISTINCT TABLE_SCHEMA, TABLE_NAME, REFERENCED_TABLE_SCHEMA, REFERENCED_TABLE_NAME \
                     FROM information_schema.KEY_COLUMN_USAGE \
                     WHERE REFERENCED_TABLE_NAME IS NOT NULL AND TABLE_SCHEMA IN {dbs} \
                     ORDER BY 1, 2, 3, 4"
                ),
                "listing foreign keys",
            ),
        ];
        let tables = self.tables.len();
        let mut helpers = if tables >= details_at_once_from() {
            let snapshots = snapshot_connections(dump_workers(&shard, tables), tables);
            let opts = &self.opts;
            let opened = (0..snapshots.min(listings.len() - 1))
                .map(|_| async { cut::control_connection(&shard, opts).await.map(|(c, _)| c) });
            futures_util::future::try_join_all(opened).await?
        } else {
            Vec::new()
        };
        let mut lists: [Vec<Row>; 3] = Default::default();
        {
            let mut sessions: Vec<&mut Conn> = helpers.iter_mut().collect();
            sessions.push(&mut self.control);
            let n = sessions.len();
            let shard = &shard;
            let listings = &listings;
            // Listing i runs on session i mod n, in order on each session.
            let runs = sessions
                .into_iter()
                .enumerate()
                .map(|(k, conn)| async move {
                    let mut got = Vec::new();
                    for (i, (sql, what)) in listings.iter().enumerate().skip(k).step_by(n) {
                        let rows: Vec<Row> =
                            conn.query(sql).await.map_err(query_err(shard, what))?;
                        got.push((i, rows));
                    }
                    Ok::<_, AgentError>(got)
                });
            for (i, rows) in futures_util::future::try_join_all(runs)
                .await?
                .into_iter()
                .flatten()
            {
                lists[i] = rows;
            }
        }
        futures_util::future::join_all(helpers.into_iter().map(Conn::disconnect)).await;
        Ok(lists)
    }

    /// Adds each listed table's stored (non-generated) columns.
    /// Returns, for each column whose `DEFAULT` takes values from a
    /// sequence, the table, the column and the sequence.
    fn add_columns(
        &mut self,
        rows: &[Row],
        index: &TableIndex,
    ) -> Result<Vec<SequenceUse>, AgentError> {
        let de = db_err(&self.shard, "reading the catalog");
        let mut uses = Vec::new();
        for row in rows {
            let Some([db, table, col, ty]) = texts(row).map_err(&de)? else {
                continue;
            };
            // Views have columns too; only the base tables listed above count.
            let Some(&i) = index.get(&(db, table)) else {
                continue;
            };
            let t = &mut self.tables[i];
            // Only MariaDB has sequences, and writes a default's literal
            // quoted (MySQL writes `DEFAULT 'nextval(s)'` bare).
            if let Some(default) = text(row, 6).map_err(&de)?.filter(|_| self.mariadb) {
                for seq in lexer::sequences_named(&default, &t.database) {
                    uses.push((i, col.clone(), seq));
                }
            }
            match (text(row, 5).map_err(&de)?.as_deref(), &mut t.system_time) {
                (Some("ROW START"), Some(time)) => time.start = (col, ty),
                (Some("ROW END"), Some(time)) => time.end = (col, ty),
                _ if stored_column(row).map_err(&de)? => t.columns.push((col, ty)),
                _ => {}
            }
        }
        Ok(uses)
    }

    /// Fails, naming them, if a selected table takes its `DEFAULT` from a
    /// sequence the backup leaves out (listed in `exclude_tables`, or in a
    /// database it does not select): its restore could not create the
    /// table, which needs the sequence. Checked before the cut, so that
    /// such a backup fails at once rather than its restore after the
    /// target's database was created.
    fn sequences_held(&self, uses: Vec<SequenceUse>) -> Result<(), AgentError> {
        let missing = uses
            .into_iter()
            .find(|(_, _, seq)| !self.sequences.contains(seq));
        match missing {
            None => Ok(()),
            Some((i, col, (db, name))) => {
                let t = &self.tables[i];
                Err(AgentError::Tool {
                    shard: self.shard.name.clone(),
                    what: format!(
                        "table {}: column {col} takes its DEFAULT from sequence {}, which this backup leaves out (in the shard's exclude_tables, or in a database it does not select), so no restore could create the table; back up the sequence too, or list the table in exclude_tables",
                        qualified_name(&t.database, None, &t.name),
                        qualified_name(&db, None, &name),
                    ),
                })
            }
        }
    }

    /// Adds each listed table's primary key columns, in key order.
    fn add_primary_keys(&mut self, rows: &[Row], index: &TableIndex) -> Result<(), AgentError> {
        let de = db_err(&self.shard, "reading the catalog");
        for row in rows {
            let Some([db, table, col]) = texts(row).map_err(&de)? else {
                continue;
            };
            if let Some(&i) = index.get(&(db, table)) {
                self.tables[i].primary_key.push(col);
            }
        }
        Ok(())
    }

    /// Adds the parent tables each listed table references by foreign key.
    fn add_references(&mut self, rows: &[Row], index: &TableIndex) -> Result<(), AgentError> {
        let de = db_err(&self.shard, "reading the catalog");
        for row in rows {
            let Some([db, table, rdb, rtable]) = texts(row).map_err(&de)? else {
                continue;
            };
            let own = qualified_name(&db, None, &table);
            if let Some(&i) = index.get(&(db, table)) {
                let parent = qualified_name(&rdb, None, &rtable);
                // The restored table would keep a foreign key to a table
                // that is not there, and refuse every write setting it.
                if self.shard.excludes(&rdb, None, &rtable) {
                    return Err(AgentError::Tool {
                        shard: self.shard.name.clone(),
                        what: format!(
                            "table {own} has a foreign key to {parent}, which the shard's exclude_tables leaves out, so the restored table would refuse every write that sets the key; back up {parent}, or leave out {own} too"
                        ),
                    });
                }
                let t = &mut self.tables[i];
                if !t.references.contains(&parent) && parent != own {
                    t.references.push(parent);
                }
            }
        }
        Ok(())
    }

    /// The selected databases, and their tables with stored columns, as
    /// the server lists them now: while DDL waits, as of the cut.
    async fn shapes_now(&mut self) -> Result<(Vec<String>, Vec<TableShape>), AgentError> {
        let shard = self.shard.clone();
        let de = db_err(&shard, "reading the catalog at the cut");
        let databases = selected_databases(&mut self.control, &shard)
            .await
            .map_err(db_err(&shard, "listing databases at the cut"))?;
        if databases.is_empty() {
            return Ok((databases, Vec::new()));
        }
        let dbs = literal_list(&databases);
        // Names and kinds only, the kind picked here: the catalog's row
        // estimates, or a condition on the kind in SQL, make the server
        // open every table (at 10,000 tables just closed by `FLUSH`: 10-18
        // ms this way, 114-119 ms with `WHERE TABLE_TYPE = …`).
        let rows: Vec<Row> = self
            .control
            .query(format!(
                "SELECT TABLE_SCHEMA, TABLE_NAME, TABLE_TYPE FROM information_schema.TABLES \
                 WHERE TABLE_SCHEMA IN {dbs}"
            ))
            .await
            .map_err(query_err(&shard, "listing tables at the cut"))?;
        let mut tables = std::collections::BTreeMap::new();
        let mut sequences = std::collections::BTreeSet::new();
        for row in &rows {
            if let Some([db, table, kind]) = texts(row).map_err(&de)? {
                // Every kind the catalog lists: a system-versioned table
                // or a sequence created meanwhile is a change too.
                let listed = kind == "BASE TABLE" || kind == SEQUENCE || kind == SYSTEM_VERSIONED;
                if listed && !shard.excludes(&db, None, &table) {
                    if kind == SEQUENCE {
                        // Compared by name only: its columns are the
                        // server's own.
                        sequences.insert((db.clone(), table.clone()));
                    }
                    let columns = match kind == SYSTEM_VERSIONED {
                        true => vec![versioning_marker()],
                        false => Vec::new(),
                    };
                    tables.insert((db, table), columns);
                }
            }
        }
        let rows: Vec<Row> = self
            .control
            .query(columns_sql(&dbs))
            .await
            .map_err(query_err(&shard, "listing columns at the cut"))?;
        for row in &rows {
            let Some([db, table, col, ty]) = texts(row).map_err(&de)? else {
                continue;
            };
            let key = (db, table);
            if sequences.contains(&key) {
                continue;
            }
            if let Some(columns) = tables.get_mut(&key) {
                if stored_column(row).map_err(&de)? {
                    columns.push((col, ty));
                }
            }
        }
        let shapes = tables
            .into_iter()
            .map(|((db, table), columns)| TableShape {
                name: qualified_name(&db, None, &table),
                columns,
            })
            .collect();
        Ok((databases, shapes))
    }

    /// Fails with [`AgentError::ChangedBeforeCut`] if DDL created a
    /// selected database or changed the selected tables since the catalog
    /// was read. Valid only while DDL waits (from `BACKUP STAGE BLOCK_DDL`,
    /// or under the block), when the server's listing is the cut's.
    async fn check_catalog_at_cut(&mut self) -> Result<(), AgentError> {
        let began = Instant::now();
        let (databases, at_cut) = self.shapes_now().await?;
        let change = match databases.iter().find(|d| !self.databases.contains(d)) {
            Some(db) => Some(format!("database {db} was created")),
            None => {
                // A system time as the listing at the cut has it: the
                // marker, not its columns.
                let tables = self.tables.iter().map(|t| TableShape {
                    name: qualified_name(&t.database, None, &t.name),
                    columns: match &t.system_time {
                        Some(_) => std::iter::once(versioning_marker())
                            .chain(
                                t.columns[..t.columns.len().saturating_sub(2)]
                                    .iter()
                                    .cloned(),
                            )
                            .collect(),
                        None => t.columns.clone(),
                    },
                });
                let sequences = self.sequences.iter().map(|(db, name)| TableShape {
                    name: qualified_name(db, None, name),
                    columns: Vec::new(),
                });
                let before: Vec<TableShape> = tables.chain(sequences).collect();
                catalog_change(&before, &at_cut)
            }
        };
        tracing::debug!(
            "{}: catalog of {} table(s) checked at the cut in {} ms",
            self.shard.name,
            at_cut.len(),
            began.elapsed().as_millis()
        );
        match change {
            Some(change) => Err(AgentError::ChangedBeforeCut {
                shard: self.shard.name.clone(),
                change,
            }),
            None => Ok(()),
        }
    }

    pub(crate) fn block_elapsed(&self) -> Duration {
        self.blocked_since.map(|t| t.elapsed()).unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn many_tables_get_spare_snapshot_connections() {
        use super::snapshot_connections;
        assert_eq!(snapshot_connections(2, 10), 2);
        assert_eq!(snapshot_connections(2, 2_000), 2);
        assert_eq!(snapshot_connections(2, 10_000), 10);
        assert_eq!(snapshot_connections(2, 1_000_000), 16);
        assert_eq!(snapshot_connections(0, 0), 1);
    }
}
