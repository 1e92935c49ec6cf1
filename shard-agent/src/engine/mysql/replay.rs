//! Replaying captured binlog segments into a MySQL/MariaDB target.
//!
//! Row events are applied the way `mariadb-binlog | mariadb` applies them:
//! as `BINLOG '<base64>'` statements carrying the original format
//! description, table map and row events, so the server decodes full row
//! images itself, for every column type, with no value conversion on our
//! side. Statements logged as text (DDL) are executed as logged, in the
//! database they were logged in. Only what the base backup selected is
//! applied: row events of other databases' tables or of tables left out,
//! and statements that [`super::logged_sql`] places outside, are left out
//! and counted in the report. Source transactions are grouped into
//! target transactions, and row events apply on parallel connections by
//! table (see [`replay`]), single-row changes that commute in key order
//! (see [`super::reorder`]): a replay that stops may leave part of a source
//! transaction applied, on a target that then fails its restore.
//!
//! Needs the `BINLOG REPLAY` privilege (or SUPER) on the target.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use base64::Engine as _;
use mysql_async::binlog::events::{Event, EventData, TableMapEvent};
use mysql_async::binlog::BinlogVersion;
use mysql_async::prelude::Queryable;
use mysql_async::Conn;
use mysql_common::binlog::EventStreamReader;
use topology::Shard;

use super::capture::{event, gtid_of, query_text, BINLOG_MAGIC, STREAM};
use super::lexer::{several_statements, Quoting};
use super::logged_sql::{self, logged_settings, Placement};
use super::reorder::{Orderable, SortKey, Table, Window};
use super::sql::quote_literal;
use super::stored_sql::one_statement;
use crate::capture::{load_segment, CaptureError};
use crate::connect;
use crate::manifest::Selection;
use crate::position::{BinlogCoordinates, Gtid, GtidPosition, Position};
use crate::replay::{excerpt, segments, ReplayError, ReplayOptions, ReplayReport};
use crate::repo::Repository;

/// Statement-end flag of a row event (flags follow the 6-byte table id).
const STMT_END_F: u16 = 0x0001;

fn coords(p: &Position) -> Option<&BinlogCoordinates> {
    match p {
        Position::Mariadb { binlog, .. } | Position::Mysql { binlog, .. } => Some(binlog),
        Position::Postgres { .. } => None,
    }
}

/// Where replay stands: by GTID when the base and the target both carry
/// a GTID position (MariaDB; the segments may come from several servers
/// after a failover), else by the binlog coordinates of one server.
enum Applied {
    Gtid {
        applied: GtidPosition,
        to: GtidPosition,
    },
    Coordinates {
        applied: BinlogCoordinates,
        to: BinlogCoordinates,
    },
}

impl Applied {
    /// Whether the transaction with GTID `gtid` ending at `end` is still
    /// to apply; if so, it counts as applied from now on.
    fn take(&mut self, gtid: Option<Gtid>, end: &BinlogCoordinates) -> Result<bool, String> {
        match self {
            Applied::Gtid { applied, to } => {
                let g = gtid.ok_or_else(|| {
                    format!(
                        "the transaction ending at {}:{} has no GTID",
                        end.file, end.offset
                    )
                })?;
                if applied.includes(&g) || !to.includes(&g) {
                    return Ok(false);
                }
                applied.record(g);
                Ok(true)
            }
            Applied::Coordinates { applied, to } => {
                if !after(end, applied) || after(end, to) {
                    return Ok(false);
                }
                *applied = end.clone();
                Ok(true)
            }
        }
    }
}

fn after(a: &BinlogCoordinates, b: &BinlogCoordinates) -> bool {
    let pa = Position::Mariadb {
        gtid: String::new(),
        binlog: a.clone(),
    };
    let pb = Position::Mariadb {
        gtid: String::new(),
        binlog: b.clone(),
    };
    matches!(pa.compare(&pb), Ok(std::cmp::Ordering::Greater))
}

/// ER_UNKNOWN_SYSTEM_VARIABLE.
const UNKNOWN_SYSTEM_VARIABLE: u16 = 1193;

/// Row events sent in one `BINLOG` statement, at most (its base64 text is
/// a third larger, well under the server's smallest `max_allowed_packet`
/// default of 16 MiB).
const ROWS_PER_STATEMENT: usize = 1 << 20;
/// Source transactions applied in one target transaction, at most.
const GROUP_TRANSACTIONS: u64 = 2000;
/// Row-event bytes applied in one target transaction, at most.
const GROUP_BYTES: usize = 32 << 20;

/// Applies the transactions of `source`'s binlog stream that end after
/// `from` and at or before `to` to `target`.
///
/// Many source transactions are applied in one target transaction (a
/// group), their row events sent together in few `BINLOG` statements: the
/// target commits once a group instead of once a source transaction, and
/// waits for one round trip a megabyte of changes instead of three a
/// transaction.
///
/// Row events apply in parallel on several connections, split by table:
/// each table (with every table a foreign key links it to) belongs to one
/// connection, which applies its changes in source order for every row
/// (single-row changes that commute in key order, see
/// [`super::reorder`]), so every row ends as the source left it. A
/// statement whose changes span tables of two connections (a trigger's, a
/// multi-table update), a statement logged as text, and DDL run alone,
/// after every connection has committed.
pub async fn replay(
    repo: &dyn Repository,
    source: &str,
    target: &Shard,
    (from, to): (&Position, &Position),
    options: ReplayOptions,
) -> Result<ReplayReport, ReplayError> {
    let refused = |what: String| ReplayError::Refused {
        shard: target.name.clone(),
        what,
    };
    let (from_position, to_position) = (from, to);
    let mut applied = match (
        from.gtid_position(),
        to.gtid_position(),
        coords(from),
        coords(to),
    ) {
        (Some(f), Some(t), _, _) => Applied::Gtid {
            applied: f.map_err(&refused)?,
            to: t.map_err(&refused)?,
        },
        (_, _, Some(f), Some(t)) => Applied::Coordinates {
            applied: f.clone(),
            to: t.clone(),
        },
        _ => return Err(refused("positions are not binlog positions".into())),
    };
    let mut report = ReplayReport::default();
    let segs = segments(repo, source, STREAM, (from_position, to_position))?;
    let target = Arc::new(target.clone());
    let mut apply = Applier::new(target.clone(), options.binlog).await?;
    let mut left = LeftOut::new(&options.scope);
    report.notes.extend(pool_note(&mut apply.main.conn).await);
    // Segments wholly at or before the base, or wholly after the target,
    // are not read. Replaying by GTID, only GTID positions decide that:
    // the coordinates of a segment from before a failover say nothing
    // about a target on the promoted server.
    let by_gtid = matches!(applied, Applied::Gtid { .. });
    let at_or_before = |a: &Position, b: &Position| {
        (!by_gtid || a.gtid_position().is_some() && b.gtid_position().is_some())
            && matches!(
                a.compare(b),
                Ok(std::cmp::Ordering::Less | std::cmp::Ordering::Equal)
            )
    };
    for seg in segs {
        let Some(last) = coords(&seg.last) else {
            continue;
        };
        if at_or_before(&seg.last, from_position) || at_or_before(to_position, &seg.first) {
            continue;
        }
        let raw = load_segment(repo, &seg)?;
        let file = last.file.clone();
        let n = apply_segment(&mut apply, &raw, &file, &mut applied, &seg.key, &mut left).await?;
        report.segments += 1;
        report.transactions += n.0;
        report.statements += n.1;
    }
    // Read after the connections have sent their last windows.
    let reordered = apply.main.reordered.clone();
    apply.finish().await?;
    report.reordered = reordered.load(Ordering::Relaxed);
    report.notes.extend(left.notes());
    Ok(report)
}

/// Tables named in a replay's note on what it left out, at most.
const NAMED_TABLES: usize = 8;

/// What a transaction being read leaves out, added to the replay's
/// [`LeftOut`] if it is applied.
#[derive(Default)]
struct LeftOfTxn {
    row_events: u64,
    statements: u64,
    /// `db.table` of the tables whose row events it leaves out, the
    /// first [`NAMED_TABLES`] and one more (so that the note says there
    /// were more).
    tables: Vec<String>,
    /// A kind per statement on the server itself ([`Placement::Server`]).
    server: Vec<String>,
}

/// What a replay leaves out of the binlog, for its report: the changes
/// of what the base backup does not hold, and statements on the server
/// itself.
struct LeftOut<'a> {
    scope: &'a Selection,
    /// `scope` in lower case ([`logged_sql::folded`]).
    lower: Selection,
    row_events: u64,
    /// `db.table` of the first [`NAMED_TABLES`] tables whose row events
    /// were left out.
    tables: BTreeSet<String>,
    more_tables: bool,
    statements: u64,
    /// By kind (a keyword or two of a fixed list, see
    /// [`Placement::Server`]).
    server: BTreeMap<String, u64>,
}

impl<'a> LeftOut<'a> {
    fn new(scope: &'a Selection) -> Self {
        LeftOut {
            scope,
            lower: logged_sql::folded(scope),
            row_events: 0,
            tables: BTreeSet::new(),
            more_tables: false,
            statements: 0,
            server: BTreeMap::new(),
        }
    }

    /// Whether the changes of table `db`.`table` (as a table map names
    /// it) are applied. A name the server would read as another is
    /// refused ([`logged_sql::map_held`]).
    fn holds(&self, db: &str, table: &str) -> Result<bool, String> {
        logged_sql::map_held(db, table, self.scope, &self.lower)
    }

    /// Counts what an applied transaction left out: a transaction the
    /// replay passes over (in the base already, or past its end) is not
    /// counted, nor are the tables it names.
    fn add(&mut self, txn: LeftOfTxn) {
        self.row_events += txn.row_events;
        self.statements += txn.statements;
        for name in txn.tables {
            if self.tables.len() < NAMED_TABLES {
                self.tables.insert(name);
            } else if !self.tables.contains(&name) {
                self.more_tables = true;
            }
        }
        for kind in txn.server {
            *self.server.entry(kind).or_default() += 1;
        }
    }

    fn notes(&self) -> Vec<String> {
        let mut out = Vec::new();
        if self.row_events > 0 || self.statements > 0 {
            let mut tables: Vec<&str> = self.tables.iter().map(String::as_str).collect();
            if self.more_tables {
                tables.push("…");
            }
            out.push(format!(
                "left out the changes of what the base backup does not hold (other databases, tables left out): {} row event(s){}, {} statement(s)",
                self.row_events,
                if tables.is_empty() {
                    String::new()
                } else {
                    format!(" of {}", tables.join(", "))
                },
                self.statements
            ));
        }
        if !self.server.is_empty() {
            let kinds: Vec<String> = self
                .server
                .iter()
                .map(|(k, n)| format!("{k} ×{n}"))
                .collect();
            out.push(format!(
                "left out statements on accounts, server settings or table maintenance, which a shard backup does not hold: {}",
                kinds.join(", ")
            ));
        }
        out
    }
}

/// A hint when the target's InnoDB buffer pool is far smaller than its
/// tables (by the persistent statistics, read once): the changes then
/// wait on a device read for most rows they touch, on the target as on
/// the source, and the replay runs at a fraction of the rate the same
/// target reaches with the tables in memory (measured on sysbench's
/// tables, changes in key order: 8,988-9,263 transactions a second with
/// a 64 MiB pool against 16,142-17,127 with 1 GiB; in source order, before
/// key order, 2,818-3,348 against 13,661-16,697). Nothing when the
/// statistics cannot be read: a hint never stops a replay.
async fn pool_note(conn: &mut Conn) -> Option<String> {
    let sizes: Option<(u64, u64)> = conn
        .query_first(
            "SELECT @@innodb_buffer_pool_size, \
             CAST(COALESCE(SUM(clustered_index_size + sum_of_other_index_sizes), 0) \
                  * @@innodb_page_size AS UNSIGNED) \
             FROM mysql.innodb_table_stats WHERE database_name NOT IN ('mysql', 'sys')",
        )
        .await
        .map_err(|e| tracing::debug!("the target's table sizes: {e}"))
        .ok()
        .flatten();
    let (pool, tables) = sizes?;
    small_pool(pool, tables)
}

/// The hint for a buffer pool of `pool` bytes and tables of `tables`
/// bytes, when the pool holds less than half of them.
fn small_pool(pool: u64, tables: u64) -> Option<String> {
    const MIB: u64 = 1 << 20;
    // The sizes come from the server: no arithmetic on them may overflow.
    if pool == 0 || tables <= pool.saturating_mul(2) {
        return None;
    }
    // Rounded up to a whole 128 MiB, the unit MariaDB resizes by.
    let enough = tables.div_ceil(128 * MIB).saturating_mul(128);
    Some(format!(
        "the target's InnoDB buffer pool ({} MiB) holds {}% of its tables ({} MiB): most replayed changes wait for a page read; replay runs faster (about twice as fast on sysbench's tables) with SET GLOBAL innodb_buffer_pool_size = {enough}M (or more) on the target before the restore",
        pool / MIB,
        u128::from(pool) * 100 / u128::from(tables),
        tables / MIB,
    ))
}

/// A session set up for replay.
async fn session(target: &Shard, binlog: bool) -> Result<Conn, ReplayError> {
    let mut conn = connect::mysql(target, None, std::time::Duration::from_secs(10)).await?;
    // MariaDB writes a statement's text before each of its table maps in
    // the target's binary log (an annotation): the text of a `BINLOG`
    // statement is its base64, repeated once for every statement it holds,
    // which grows the target's binary log with the square of the group
    // (measured: 11 GB from 10 s of sysbench writes). MySQL has no such
    // variable, and does not annotate by default.
    match conn
        .query_drop("SET SESSION binlog_annotate_row_events = OFF")
        .await
    {
        Err(mysql_async::Error::Server(e)) if e.code == UNKNOWN_SYSTEM_VARIABLE => {}
        other => other.map_err(|e| ReplayError::Apply {
            shard: target.name.clone(),
            at: "the session set-up".into(),
            what: e.to_string(),
        })?,
    }
    // Statements of a segment are read as this SQL mode and character set
    // read them (no `ANSI_QUOTES`, backslashes escaping in strings, no
    // multi-byte character ending in a backslash), and sent inside a
    // string quoted for them: the target's global settings must not
    // change where a string ends.
    conn.query_drop(format!("{}; SET NAMES utf8mb4", super::sql::PLAIN_SQL_MODE))
        .await
        .map_err(|e| ReplayError::Apply {
            shard: target.name.clone(),
            at: "the session set-up".into(),
            what: e.to_string(),
        })?;
    // The base restore is not logged unless asked (`--binlog`): neither
    // are the changes replayed onto it, which would reach the target's
    // replicas without the rows they change.
    if !binlog {
        super::restore::not_logged(&mut conn, target).await?;
    }
    Ok(conn)
}

/// One step of a source transaction: row events to send in a `BINLOG`
/// statement, with the tables they change and, for a single-row change
/// that may be reordered, where it sorts; or a statement logged as text.
enum Step {
    Rows(Vec<u8>, Vec<Table>, Option<SortKey>),
    /// A statement built here (`USE`, a savepoint's), run as it is.
    Sql(String),
    /// A statement from the segment, run as exactly one statement, and
    /// the `SET` of the SQL mode and time zone it was logged under
    /// ([`logged_settings`]), if not the replay session's, and how that
    /// mode reads quotes.
    Logged(String, Option<String>, Quoting),
}

/// The replay session's SQL mode and time zone, put back after a logged
/// statement that ran under its own.
const REPLAY_SETTINGS: &str = "SET SESSION sql_mode = '', time_zone = @@GLOBAL.time_zone";

/// One connection's open target transaction, that source transactions (or
/// their statements) are added to.
struct Session {
    conn: Conn,
    /// The target is MariaDB (which has `EXECUTE IMMEDIATE`), not MySQL.
    mariadb: bool,
    shard: Arc<Shard>,
    open: bool,
    /// Row events not sent yet.
    rows: Vec<u8>,
    /// Where the first and the newest source transaction in the group
    /// ended (for errors).
    first: Option<String>,
    last: String,
    transactions: u64,
    bytes: usize,
    /// The format description sent last: row events are decoded by it.
    fde: Vec<u8>,
    /// Single-row changes held to be sent in key order.
    window: Window,
    /// The group holds reordered changes: it ends by its size alone, so
    /// that windows span many source transactions.
    ordered: bool,
    /// Changes sent in key order, by every connection of the replay.
    reordered: Arc<AtomicU64>,
    /// The target's `max_allowed_packet`, read with the first row events.
    packet_limit: Option<usize>,
}

/// How row events go to the target in a `BINLOG` statement, by the size
/// of their base64 text and the target's `max_allowed_packet`.
#[derive(Debug, PartialEq, Eq)]
enum BinlogSend {
    /// `BINLOG '…'`.
    Whole,
    /// In two user variables, each sent under the limit, then `BINLOG
    /// @binlog_fragment_0, @binlog_fragment_1` (MariaDB 10.2 and later,
    /// as `mariadb-binlog` writes an event larger than the packet): the
    /// server joins them before decoding.
    Fragments,
    /// Too large even for two fragments (or for one on MySQL): the
    /// smallest `max_allowed_packet` that would take it.
    TooLarge(usize),
}

/// Room in a packet for the statement around a `BINLOG` text (`SET
/// @binlog_fragment_0 = '…'`) and the packet's header.
const STATEMENT_ROOM: usize = 1024;

fn binlog_send(text: usize, limit: usize, mariadb: bool) -> BinlogSend {
    // The server keeps the setting a multiple of 1 KiB, rounded down.
    let needed = |packet: usize| BinlogSend::TooLarge(packet.next_multiple_of(1024));
    if text + STATEMENT_ROOM <= limit {
        BinlogSend::Whole
    } else if mariadb && text.div_ceil(2) + STATEMENT_ROOM <= limit {
        BinlogSend::Fragments
    } else if mariadb {
        needed(text.div_ceil(2) + STATEMENT_ROOM)
    } else {
        needed(text + STATEMENT_ROOM)
    }
}

/// The server's largest `max_allowed_packet`: 1 GiB.
const LARGEST_PACKET: usize = 1 << 30;

impl Session {
    fn new(conn: Conn, shard: Arc<Shard>, reordered: Arc<AtomicU64>) -> Self {
        Session {
            mariadb: super::is_mariadb(&conn),
            conn,
            shard,
            open: false,
            rows: Vec::new(),
            first: None,
            last: String::new(),
            transactions: 0,
            bytes: 0,
            fde: Vec::new(),
            window: Window::new(crate::replay::workers()),
            ordered: false,
            reordered,
            packet_limit: None,
        }
    }

    /// Sends row events `rows` (of the source transactions `at`) in a
    /// `BINLOG` statement. Statements hold about [`ROWS_PER_STATEMENT`],
    /// but one row event is never cut: a row holding a value of several
    /// MiB makes one, whose base64 text is a third larger than it. Past
    /// the target's `max_allowed_packet` it goes in two fragments
    /// ([`BinlogSend::Fragments`]); past twice that, the replay fails
    /// naming the setting, before sending it.
    async fn binlog(&mut self, rows: &[u8], at: &str) -> Result<(), ReplayError> {
        let text = base64::engine::general_purpose::STANDARD.encode(rows);
        let send = binlog_send(text.len(), self.packet_limit(at).await?, self.mariadb);
        const SHOWN: &str = "BINLOG …";
        match send {
            BinlogSend::Whole => self.run(&format!("BINLOG '{text}'"), at, SHOWN).await,
            BinlogSend::Fragments => {
                let (a, b) = text.split_at(text.len() / 2);
                self.run(&format!("SET @binlog_fragment_0 = '{a}'"), at, SHOWN).await?;
                self.run(&format!("SET @binlog_fragment_1 = '{b}'"), at, SHOWN).await?;
                drop(text);
                for sql in [
                    "BINLOG @binlog_fragment_0, @binlog_fragment_1",
                    "SET @binlog_fragment_0 = NULL, @binlog_fragment_1 = NULL",
                ] {
                    self.run(sql, at, SHOWN).await?;
                }
                Ok(())
            }
            BinlogSend::TooLarge(needed) => Err(ReplayError::Apply {
                shard: self.shard.name.clone(),
                at: at.to_string(),
                what: format!(
                    "row events of {} bytes ({} bytes as base64) do not fit the target's max_allowed_packet of {} bytes{}; {}",
                    rows.len(),
                    text.len(),
                    self.packet_limit.unwrap_or(0),
                    if self.mariadb { ", even in two fragments" } else { "" },
                    match needed <= LARGEST_PACKET {
                        true => format!("set it to at least {needed} on the target (SET GLOBAL max_allowed_packet = {needed}) and restore again"),
                        false => format!("they would need {needed}, past the server's largest ({LARGEST_PACKET})"),
                    }
                ),
            }),
        }
    }

    /// The target's `max_allowed_packet` (this session's, as it connected),
    /// read once, with the first row events (of the source transactions
    /// `at`).
    async fn packet_limit(&mut self, at: &str) -> Result<usize, ReplayError> {
        if let Some(limit) = self.packet_limit {
            return Ok(limit);
        }
        let sql = "SELECT @@SESSION.max_allowed_packet";
        let found: Option<u64> =
            self.conn
                .query_first(sql)
                .await
                .map_err(|e| ReplayError::Apply {
                    shard: self.shard.name.clone(),
                    at: at.to_string(),
                    what: format!("reading the target's max_allowed_packet: {e}"),
                })?;
        let limit = usize::try_from(found.unwrap_or(0)).unwrap_or(usize::MAX);
        self.packet_limit = Some(limit);
        Ok(limit)
    }

    /// Where the group's source transactions lie, for error messages.
    fn span(&self) -> String {
        match &self.first {
            Some(first) if *first != self.last => {
                format!("the transactions ending from {first} to {}", self.last)
            }
            _ => format!("the transaction ending at {}", self.last),
        }
    }

    async fn run(&mut self, sql: &str, at: &str, shown: &str) -> Result<(), ReplayError> {
        run(&mut self.conn, &self.shard.name, sql, at, shown).await
    }

    /// Sends a format description event (once per distinct one).
    async fn format(&mut self, event: &[u8], at: &str) -> Result<(), ReplayError> {
        if !self.fde.is_empty() && decoding(&self.fde) == decoding(event) {
            return Ok(());
        }
        self.commit().await?;
        let b64 = base64::engine::general_purpose::STANDARD;
        let sql = format!("BINLOG '{}'", b64.encode(event));
        self.run(&sql, at, "the format description").await?;
        self.fde = event.to_vec();
        Ok(())
    }

    /// Opens the group if needed, for a source transaction ending at `at`.
    async fn begin(&mut self, at: &str) -> Result<(), ReplayError> {
        if !self.open {
            self.run("BEGIN", at, "BEGIN").await?;
            self.open = true;
        }
        self.first.get_or_insert_with(|| at.to_string());
        if self.last != at {
            self.last = at.to_string();
        }
        Ok(())
    }

    /// Adds the row events of one statement; one that sorts at `key` is
    /// held in the window, the others flush it first.
    async fn rows(
        &mut self,
        rows: Vec<u8>,
        at: &str,
        key: Option<SortKey>,
    ) -> Result<(), ReplayError> {
        self.begin(at).await?;
        self.bytes += rows.len();
        match key {
            Some(key) => {
                self.ordered = true;
                self.window.push(key, rows);
                if self.window.is_full() {
                    self.flush_window().await?;
                }
            }
            None => {
                self.flush_window().await?;
                self.append(&rows).await?;
            }
        }
        Ok(())
    }

    /// Appends row events to the statement being built, which is sent
    /// first when they would take it past [`ROWS_PER_STATEMENT`]: a
    /// `BINLOG` statement holds about that much, or one piece of a
    /// statement ([`TxnSteps::cut_statement`]).
    async fn append(&mut self, rows: &[u8]) -> Result<(), ReplayError> {
        if self.rows.len() + rows.len() > ROWS_PER_STATEMENT {
            self.send_rows().await?;
        }
        self.rows.extend_from_slice(rows);
        if self.rows.len() >= ROWS_PER_STATEMENT {
            self.send_rows().await?;
        }
        Ok(())
    }

    /// Sends the window's changes, in key order.
    async fn flush_window(&mut self) -> Result<(), ReplayError> {
        let sorted = self.window.drain();
        self.reordered
            .fetch_add(sorted.len() as u64, Ordering::Relaxed);
        for rows in sorted {
            self.append(&rows).await?;
        }
        Ok(())
    }

    /// Runs a statement in the group's transaction; an error shows it as
    /// `shown`.
    async fn sql(&mut self, sql: &str, shown: &str, at: &str) -> Result<(), ReplayError> {
        self.begin(at).await?;
        self.flush_window().await?;
        self.send_rows().await?;
        let what = self.span();
        self.run(sql, &what, shown).await
    }

    /// The statements that run `sql`, a statement of a segment, under
    /// `settings` (its SQL mode and time zone, [`logged_settings`], whose
    /// mode reads quotes by `quoting`) and then put the replay session's
    /// back, each with how an error shows it. On
    /// MariaDB the text is assigned to a variable under the replay's mode
    /// first, so that the statement's mode (`NO_BACKSLASH_ESCAPES`) does
    /// not change how the quoting of `EXECUTE IMMEDIATE` reads.
    fn logged(
        &self,
        sql: &str,
        settings: Option<&str>,
        quoting: Quoting,
        at: &str,
    ) -> Result<Vec<(String, String)>, ReplayError> {
        let shown = logged_sql::shown(sql);
        let Some(set) = settings else {
            return Ok(vec![(self.one(sql, quoting, at)?, shown)]);
        };
        let own = |q: &str| (q.to_string(), q.to_string());
        Ok(if self.mariadb {
            vec![
                (
                    format!("SET @shardcut_logged = {}", quote_literal(sql)),
                    shown.clone(),
                ),
                own(set),
                ("EXECUTE IMMEDIATE @shardcut_logged".to_string(), shown),
                own(REPLAY_SETTINGS),
                own("SET @shardcut_logged = NULL"),
            ]
        } else {
            vec![
                own(set),
                (self.one(sql, quoting, at)?, shown),
                own(REPLAY_SETTINGS),
            ]
        })
    }

    /// Statement `sql` of a segment, made to run as exactly one statement:
    /// sent as a query, `CREATE TABLE t (…); GRANT …` would run both (the
    /// MySQL library always asks for multi-statement queries). MariaDB
    /// runs it with `EXECUTE IMMEDIATE`, which refuses a text of several;
    /// MySQL has none, and a text of several (its quotes read by
    /// `quoting`, as the server reads them under the statement's mode) is
    /// refused here.
    fn one(&self, sql: &str, quoting: Quoting, at: &str) -> Result<String, ReplayError> {
        if self.mariadb {
            Ok(one_statement(sql))
        } else if several_statements(sql, quoting) {
            Err(ReplayError::Refused {
                shard: self.shard.name.clone(),
                what: format!(
                    "replaying {at}: `{}` holds more than one statement, which replay runs on MariaDB only",
                    logged_sql::shown(sql)
                ),
            })
        } else {
            Ok(sql.to_string())
        }
    }

    /// Counts a source transaction (or the part of one this session
    /// applied) as added, committing the group when it is full.
    async fn added(&mut self) -> Result<(), ReplayError> {
        self.transactions += 1;
        if (self.transactions >= GROUP_TRANSACTIONS && !self.ordered) || self.bytes >= GROUP_BYTES {
            self.commit().await?;
        }
        Ok(())
    }

    async fn send_rows(&mut self) -> Result<(), ReplayError> {
        if self.rows.is_empty() {
            return Ok(());
        }
        let rows = std::mem::take(&mut self.rows);
        let what = self.span();
        let sent = self.binlog(&rows, &what).await;
        self.rows = rows;
        self.rows.clear();
        sent
    }

    /// Sends what is pending and commits the group.
    async fn commit(&mut self) -> Result<(), ReplayError> {
        if !self.open {
            return Ok(());
        }
        self.flush_window().await?;
        self.send_rows().await?;
        let what = self.span();
        self.run("COMMIT", &what, "COMMIT").await?;
        self.open = false;
        self.ordered = false;
        self.first = None;
        self.transactions = 0;
        self.bytes = 0;
        Ok(())
    }
}

/// What a parallel connection is sent.
enum Msg {
    /// One statement's row events, of the source transaction ending at
    /// the given place; `true` when it is the last of its transaction on
    /// this connection. The permit holds its share of [`QUEUED_KIB`]
    /// until it is applied.
    Rows(
        Vec<u8>,
        Option<SortKey>,
        String,
        bool,
        tokio::sync::OwnedSemaphorePermit,
    ),
    Format(Vec<u8>),
    /// Commit, then answer.
    Sync(tokio::sync::oneshot::Sender<()>),
}

/// Messages queued for one parallel connection, at most.
const QUEUE: usize = 256;
/// KiB of row events queued for the parallel connections and not yet
/// applied, at most: the queues hold statements, whatever their size.
const QUEUED_KIB: usize = 64 << 10;

struct Worker {
    tx: tokio::sync::mpsc::Sender<Msg>,
    handle: Option<tokio::task::JoinHandle<Result<(), ReplayError>>>,
    /// Sent something since it last committed.
    dirty: bool,
}

/// A parallel connection's loop: applies what it is sent, in order, and
/// commits what it holds when the queue closes. On an error it stops; its
/// connection closes and the target rolls back its open group.
async fn work(mut s: Session, mut rx: tokio::sync::mpsc::Receiver<Msg>) -> Result<(), ReplayError> {
    while let Some(m) = rx.recv().await {
        match m {
            Msg::Rows(rows, key, at, last, permit) => {
                s.rows(rows, &at, key).await?;
                drop(permit);
                if last {
                    s.added().await?;
                }
            }
            Msg::Format(fde) => s.format(&fde, "the format description").await?,
            Msg::Sync(ack) => {
                s.commit().await?;
                ack.send(()).ok();
            }
        }
    }
    s.commit().await?;
    drop(s.conn.disconnect().await);
    Ok(())
}

/// Applies source transactions: row events on parallel connections by
/// table, the rest on the main connection alone.
struct Applier {
    main: Session,
    binlog: bool,
    workers: Workers,
    most: usize,
    /// Each table's component: the tables foreign keys link it to share
    /// one (named by one of them), and so one connection.
    components: HashMap<Table, Table>,
    /// Which connection applies each component.
    assigned: HashMap<Table, usize>,
    /// What the queues may hold (see [`QUEUED_KIB`]).
    queued: Arc<tokio::sync::Semaphore>,
    /// Every table a foreign key names, on either side.
    linked_tables: HashSet<Table>,
    /// The tables whose single-row changes the parallel connections put
    /// in key order.
    orderable: Orderable,
}

/// The parallel connections; a replay that stopped leaves none committing
/// behind it.
#[derive(Default)]
struct Workers(Vec<Worker>);

impl Drop for Workers {
    fn drop(&mut self) {
        for w in &mut self.0 {
            if let Some(h) = w.handle.take() {
                h.abort();
            }
        }
    }
}

impl Applier {
    async fn new(shard: Arc<Shard>, binlog: bool) -> Result<Self, ReplayError> {
        let conn = session(&shard, binlog).await?;
        let mut a = Applier {
            main: Session::new(conn, shard, Arc::default()),
            binlog,
            workers: Workers::default(),
            most: crate::replay::workers(),
            components: HashMap::new(),
            assigned: HashMap::new(),
            queued: Arc::new(tokio::sync::Semaphore::new(QUEUED_KIB)),
            linked_tables: HashSet::new(),
            orderable: Orderable::default(),
        };
        a.linked().await?;
        a.orderable().await?;
        Ok(a)
    }

    /// Reads which tables' changes may be reordered (none when one
    /// connection applies everything in source order).
    async fn orderable(&mut self) -> Result<(), ReplayError> {
        if self.most == 1 || !reorder_enabled() {
            return Ok(());
        }
        let read = Orderable::read(&mut self.main.conn, &self.linked_tables).await;
        self.orderable =
            read.map_err(self.catalog_error("which tables' changes may be reordered"))?;
        Ok(())
    }

    /// An error reading `what` from the target's catalog.
    fn catalog_error(&self, what: &str) -> impl FnOnce(mysql_async::Error) -> ReplayError {
        let (shard, at) = (self.main.shard.name.clone(), format!("reading {what}"));
        move |e| ReplayError::Apply {
            shard,
            at,
            what: e.to_string(),
        }
    }

    /// Reads which tables foreign keys link (the target's own, restored
    /// from the base, and changed only by DDL, after which this is read
    /// again): a child row must not reach the target before its parent
    /// on another connection.
    async fn linked(&mut self) -> Result<(), ReplayError> {
        if self.most == 1 {
            return Ok(());
        }
        let rows: Result<Vec<(String, String, String, String)>, _> = self
            .main
            .conn
            .query(
                "SELECT CONSTRAINT_SCHEMA, TABLE_NAME, UNIQUE_CONSTRAINT_SCHEMA, REFERENCED_TABLE_NAME \
                 FROM information_schema.REFERENTIAL_CONSTRAINTS",
            )
            .await;
        let rows = rows.map_err(self.catalog_error("the target's foreign keys"))?;
        self.linked_tables.clear();
        let mut parent: HashMap<Table, Table> = HashMap::new();
        fn root(parent: &HashMap<Table, Table>, t: &Table) -> Table {
            let mut at = t.clone();
            while let Some(p) = parent.get(&at).filter(|p| **p != at) {
                at = p.clone();
            }
            at
        }
        for (cs, ct, ps, pt) in rows {
            let (child, referenced) = ((cs, ct), (ps, pt));
            self.linked_tables.insert(child.clone());
            self.linked_tables.insert(referenced.clone());
            let (a, b) = (root(&parent, &child), root(&parent, &referenced));
            if a != b {
                parent.insert(a, b);
            }
        }
        let linked: Vec<Table> = parent.keys().cloned().collect();
        self.components = linked
            .into_iter()
            .map(|t| {
                let r = root(&parent, &t);
                (t, r)
            })
            .collect();
        Ok(())
    }

    /// The connection for a statement changing `tables`, if one applies
    /// them all.
    fn route(&mut self, tables: &[Table]) -> Option<usize> {
        let mut at = None;
        for t in tables {
            let c = self.components.get(t).unwrap_or(t);
            let n = self.assigned.len();
            let most = self.most;
            let w = *self.assigned.entry(c.clone()).or_insert(n % most);
            if at.is_some_and(|a| a != w) {
                return None;
            }
            at = Some(w);
        }
        at
    }

    /// Sends a format description to every connection.
    async fn format(&mut self, event: &[u8], at: &str) -> Result<(), ReplayError> {
        self.main.format(event, at).await?;
        for i in 0..self.workers.0.len() {
            self.send(i, Msg::Format(event.to_vec())).await?;
        }
        Ok(())
    }

    /// Connection `i`, connected and sent the format description first.
    async fn worker(&mut self, i: usize) -> Result<(), ReplayError> {
        while self.workers.0.len() <= i {
            let conn = session(&self.main.shard, self.binlog).await?;
            let (tx, rx) = tokio::sync::mpsc::channel(QUEUE);
            let s = Session::new(conn, self.main.shard.clone(), self.main.reordered.clone());
            self.workers.0.push(Worker {
                tx,
                handle: Some(tokio::spawn(work(s, rx))),
                dirty: false,
            });
            if !self.main.fde.is_empty() {
                let n = self.workers.0.len() - 1;
                let fde = self.main.fde.clone();
                self.send(n, Msg::Format(fde)).await?;
            }
        }
        Ok(())
    }

    /// Sends `m` to connection `i`; if it stopped, its error.
    async fn send(&mut self, i: usize, m: Msg) -> Result<(), ReplayError> {
        self.workers.0[i].dirty = true;
        if self.workers.0[i].tx.send(m).await.is_ok() {
            return Ok(());
        }
        Err(self.stopped(i).await)
    }

    /// Waits for connection `i` to end: what it ended with.
    async fn join(&mut self, i: usize) -> Result<(), ReplayError> {
        let Some(handle) = self.workers.0[i].handle.take() else {
            return Ok(());
        };
        handle.await.map_err(|e| ReplayError::Apply {
            shard: self.main.shard.name.clone(),
            at: format!("replay connection {i}"),
            what: e.to_string(),
        })?
    }

    /// Why connection `i` stopped.
    async fn stopped(&mut self, i: usize) -> ReplayError {
        match self.join(i).await {
            Err(e) => e,
            Ok(()) => ReplayError::Apply {
                shard: self.main.shard.name.clone(),
                at: format!("replay connection {i}"),
                what: "it stopped before the replay ended".into(),
            },
        }
    }

    /// Waits until every parallel connection has committed what it was
    /// sent.
    async fn sync(&mut self) -> Result<(), ReplayError> {
        let mut acks = Vec::new();
        for i in 0..self.workers.0.len() {
            if !self.workers.0[i].dirty {
                continue;
            }
            let (ack, done) = tokio::sync::oneshot::channel();
            self.send(i, Msg::Sync(ack)).await?;
            acks.push((i, done));
        }
        for (i, done) in acks {
            if done.await.is_err() {
                return Err(self.stopped(i).await);
            }
            self.workers.0[i].dirty = false;
        }
        Ok(())
    }

    /// Adds a source transaction that ended at `at`; returns the number
    /// of statements it became.
    async fn add(&mut self, txn: TxnSteps, at: String) -> Result<u64, ReplayError> {
        let n = txn.steps.len() as u64;
        if txn.standalone {
            // DDL commits implicitly: it runs alone, as logged, after
            // everything before it.
            self.sync().await?;
            self.main.commit().await?;
            let what = txn.position(&at);
            // Only DDL naming a foreign key or renaming a table can link
            // tables anew (a link dropped only leaves two tables on one
            // connection): the catalog is not read again for every DDL.
            let relinks = txn.steps.iter().any(|s| match s {
                Step::Sql(q) | Step::Logged(q, ..) => {
                    let q = q.to_ascii_uppercase();
                    ["REFERENCES", "FOREIGN", "RENAME"]
                        .iter()
                        .any(|w| q.contains(w))
                }
                Step::Rows(..) => false,
            });
            // Only DDL that creates, alters or renames can make a table's
            // changes stop commuting (a unique key, a trigger, a foreign
            // key, a table made anew); dropping one only leaves a table in
            // source order that could be sorted.
            let reorders = txn.steps.iter().any(|s| match s {
                Step::Sql(q) | Step::Logged(q, ..) => {
                    let q = q.to_ascii_uppercase();
                    ["CREATE", "ALTER", "RENAME"].iter().any(|w| q.contains(w))
                }
                Step::Rows(..) => false,
            });
            for step in txn.steps {
                match step {
                    Step::Sql(sql) => self.main.run(&sql, &what, &sql).await?,
                    Step::Logged(sql, settings, quoting) => {
                        let steps = self
                            .main
                            .logged(&sql, settings.as_deref(), quoting, &what)?;
                        for (q, shown) in steps {
                            self.main.run(&q, &what, &shown).await?
                        }
                    }
                    Step::Rows(rows, ..) => self.main.binlog(&rows, &what).await?,
                }
            }
            if relinks {
                self.linked().await?;
            }
            if reorders {
                self.orderable().await?;
            }
            return Ok(n);
        }
        let mut routes = Vec::with_capacity(txn.steps.len());
        for step in &txn.steps {
            match step {
                Step::Rows(_, tables, _) if self.most > 1 => match self.route(tables) {
                    Some(w) => routes.push(w),
                    None => break,
                },
                _ => break,
            }
        }
        if routes.len() < txn.steps.len() {
            // In source order, on the main connection, after everything
            // before it; what follows waits for its commit.
            self.sync().await?;
            for step in txn.steps {
                match step {
                    Step::Rows(rows, ..) => self.main.rows(rows, &at, None).await?,
                    Step::Sql(sql) => self.main.sql(&sql, &sql, &at).await?,
                    Step::Logged(sql, settings, quoting) => {
                        let steps = self.main.logged(&sql, settings.as_deref(), quoting, &at)?;
                        for (q, shown) in steps {
                            self.main.sql(&q, &shown, &at).await?
                        }
                    }
                }
            }
            self.main.added().await?;
            return Ok(n);
        }
        self.main.commit().await?;
        let mut last = vec![None; self.workers.0.len().max(self.most)];
        for (k, w) in routes.iter().enumerate() {
            last[*w] = Some(k);
        }
        for (k, (step, w)) in txn.steps.into_iter().zip(routes).enumerate() {
            if let Step::Rows(rows, _, key) = step {
                self.worker(w).await?;
                let kib = (rows.len() / 1024 + 1).min(QUEUED_KIB) as u32;
                let permit = self
                    .queued
                    .clone()
                    .acquire_many_owned(kib)
                    .await
                    .map_err(|e| ReplayError::Apply {
                        shard: self.main.shard.name.clone(),
                        at: at.clone(),
                        what: e.to_string(),
                    })?;
                self.send(
                    w,
                    Msg::Rows(rows, key, at.clone(), last[w] == Some(k), permit),
                )
                .await?;
            }
        }
        Ok(n)
    }

    /// Commits everything: the main connection's group, then each
    /// parallel connection's, reporting the first error.
    async fn finish(mut self) -> Result<(), ReplayError> {
        self.main.commit().await?;
        let mut first = Ok(());
        for i in 0..self.workers.0.len() {
            // Closing its queue ends the connection's loop, which commits.
            let (tx, _) = tokio::sync::mpsc::channel(1);
            drop(std::mem::replace(&mut self.workers.0[i].tx, tx));
            let ended = self.join(i).await;
            if first.is_ok() {
                first = ended;
            }
        }
        first?;
        drop(self.main.conn.disconnect().await);
        Ok(())
    }
}

/// Whether single-row changes are reordered by key: unless
/// `SHARDCUT_REPLAY_REORDER` is `off` (to measure, or to rule it out).
fn reorder_enabled() -> bool {
    std::env::var("SHARDCUT_REPLAY_REORDER").map_or(true, |v| v != "off")
}

/// What row events are decoded by in a format description event: the
/// binlog version, the server version, the common header length, the
/// post-header lengths and the checksum algorithm. Not the event header
/// (time, position), the creation time or the checksum, which differ
/// between the segments of one server and would end a group at every
/// segment.
fn decoding(event: &[u8]) -> (&[u8], &[u8]) {
    let versions = event.get(19..71).unwrap_or_default();
    let rest = event
        .get(75..event.len().saturating_sub(4))
        .unwrap_or_default();
    (versions, rest)
}

/// The binlog event at the start of `rest` (its header's size field
/// checked against what is there) and what follows it.
pub(crate) fn next_event(rest: &[u8]) -> Result<(&[u8], &[u8]), String> {
    let Some(h) = rest.get(9..13) else {
        return Err(format!("truncated event header of {} bytes", rest.len()));
    };
    let size = u32::from_le_bytes([h[0], h[1], h[2], h[3]]) as usize;
    if size < 19 || size > rest.len() {
        return Err(format!("truncated event of {size} bytes"));
    }
    Ok(rest.split_at(size))
}

async fn apply_segment(
    apply: &mut Applier,
    raw: &[u8],
    file: &str,
    applied: &mut Applied,
    key: &str,
    left: &mut LeftOut<'_>,
) -> Result<(u64, u64), ReplayError> {
    let corrupt = |what: String| {
        ReplayError::Capture(CaptureError::Corrupt {
            key: key.to_string(),
            what,
        })
    };
    let shard = apply.main.shard.name.clone();
    let stopped = |stop: Stop| match stop {
        Stop::Corrupt(what) => corrupt(what),
        Stop::Refused(what) => ReplayError::Refused {
            shard: shard.clone(),
            what,
        },
    };
    if !raw.starts_with(&BINLOG_MAGIC) {
        return Err(corrupt("not a binlog segment".into()));
    }
    let mut esr = EventStreamReader::new(BinlogVersion::Version4);
    let mut rest = &raw[4..];
    let mut txn = TxnSteps::default();
    let (mut txns, mut stmts) = (0u64, 0u64);
    while rest.len() >= 19 {
        let (bytes, tail) = next_event(rest).map_err(corrupt)?;
        rest = tail;
        let ev: Event = esr
            .read(bytes)
            .map_err(|e| corrupt(format!("unreadable event: {e}")))?
            .ok_or_else(|| corrupt("empty event".into()))?;
        let h = ev.header();
        if h.event_type_raw() == event::FORMAT_DESCRIPTION {
            let at = format!("{file}:{}", h.log_pos());
            apply.format(bytes, &at).await?;
            continue;
        }
        if txn.begin(&ev)
            || !txn
                .add(&ev, bytes, file, &apply.orderable, left)
                .map_err(stopped)?
        {
            continue;
        }
        let end = BinlogCoordinates {
            file: file.to_string(),
            offset: u64::from(h.log_pos()),
        };
        let mut done = std::mem::take(&mut txn);
        if !applied.take(done.gtid, &end).map_err(corrupt)? {
            continue;
        }
        if let Some(why) = done.refused.take() {
            return Err(stopped(Stop::Refused(why)));
        }
        left.add(std::mem::take(&mut done.left));
        stmts += apply.add(done, format!("{file}:{}", end.offset)).await?;
        txns += 1;
    }
    if txn.active {
        return Err(corrupt("the segment ends inside a transaction".into()));
    }
    Ok((txns, stmts))
}

/// The steps of the transaction being read from a segment.
#[derive(Default)]
struct TxnSteps {
    steps: Vec<Step>,
    /// Table-map and row events of the statement being read.
    pending: Vec<u8>,
    /// Its table map events kept, which begin each piece of it
    /// ([`TxnSteps::cut_statement`]).
    maps_bytes: Vec<u8>,
    /// The tables its table maps name.
    tables: Vec<Table>,
    /// Its table map events and row events, counted, and where its change
    /// sorts when it is one row of one table (see [`Orderable::key`]).
    maps: usize,
    row_events: usize,
    map: Option<TableMapEvent<'static>>,
    key: Option<SortKey>,
    active: bool,
    /// Ends with its first non-`BEGIN` query (DDL) rather than a commit.
    standalone: bool,
    /// MySQL's GTID event does not say; the first query decides.
    undecided: bool,
    /// The transaction's MariaDB GTID, once its GTID event is read.
    gtid: Option<Gtid>,
    /// The table ids the statement being read maps to tables the replay
    /// leaves out.
    left_out: HashSet<u64>,
    /// Where its last row event that is kept starts in `pending`, and
    /// whether that event ends with a checksum.
    last_rows: Option<(usize, bool)>,
    /// Why a statement of it cannot be placed (see [`logged_sql::place`]):
    /// the replay stops here if the transaction is to be applied.
    refused: Option<String>,
    /// What it leaves out, for the report if it is applied.
    left: LeftOfTxn,
}

/// Why a segment's transaction cannot be applied.
enum Stop {
    /// The segment is damaged.
    Corrupt(String),
    /// A statement cannot be placed (see [`logged_sql::place`]).
    Refused(String),
}

/// Sets the statement-end flag of the row event at the start of
/// `pending` (its flags follow the 19-byte header and the 6-byte table
/// id), and its checksum anew when it ends with one: the row event that
/// ended the statement was of a table the replay leaves out, and the
/// server applies a statement's changes when it reads its end.
fn end_statement(pending: &mut [u8], checksum: bool) {
    let size = match next_event(pending) {
        Ok((event, _)) => event.len(),
        Err(_) => return,
    };
    let event = &mut pending[..size];
    if let Some(f) = event.get_mut(19 + 6..19 + 8) {
        let flags = u16::from_le_bytes([f[0], f[1]]) | STMT_END_F;
        f.copy_from_slice(&flags.to_le_bytes());
    }
    if let Some(body) = event.len().checked_sub(4).filter(|_| checksum) {
        let crc = crc32fast::hash(&event[..body]);
        event[body..].copy_from_slice(&crc.to_le_bytes());
    }
}

impl TxnSteps {
    /// Where the transaction ending at `at` lies, for error messages.
    fn position(&self, at: &str) -> String {
        match &self.gtid {
            None => at.to_string(),
            Some(g) => format!("{at} (GTID {g})"),
        }
    }

    /// Starts a transaction at `ev` when none is open. Returns whether
    /// `ev` only started it (a GTID event) and is done with.
    fn begin(&mut self, ev: &Event) -> bool {
        if self.active {
            return false;
        }
        *self = TxnSteps {
            active: true,
            ..Default::default()
        };
        match ev.header().event_type_raw() {
            event::MARIADB_GTID => {
                self.standalone = ev.data().get(12).is_some_and(|f| f & 1 != 0);
                self.gtid = gtid_of(ev);
                true
            }
            event::MYSQL_GTID | event::MYSQL_ANONYMOUS_GTID => {
                self.undecided = true;
                true
            }
            _ => false,
        }
    }

    /// Adds `ev` (whose encoding is `bytes`) to the transaction. Returns
    /// whether it ends it, or what is wrong with the segment.
    fn add(
        &mut self,
        ev: &Event,
        bytes: &[u8],
        file: &str,
        orderable: &Orderable,
        left: &LeftOut<'_>,
    ) -> Result<bool, Stop> {
        let at = ev.header().log_pos();
        match ev.header().event_type_raw() {
            event::XID => {
                self.flush_rows();
                return Ok(true);
            }
            event::QUERY | event::MARIADB_QUERY_COMPRESSED => {
                let Some(q) = query_text(ev) else {
                    if ev.header().event_type_raw() == event::MARIADB_QUERY_COMPRESSED {
                        self.refused.get_or_insert(format!(
                            "replaying {file}:{at}: {}",
                            super::capture::COMPRESSED_QUERY
                        ));
                        return Ok(self.standalone);
                    }
                    return Err(Stop::Corrupt(format!(
                        "unreadable query event at {file}:{at}"
                    )));
                };
                // A statement that frames its transaction (XA's, a
                // COMMIT or ROLLBACK with more words), refused, leaves
                // where the transaction ends unknown (XA PREPARE's event
                // is not read as an end): passed over, it would take the
                // transactions after it in. It stops the replay where it
                // is read.
                let first = q
                    .split(|c: char| !c.is_ascii_alphabetic())
                    .next()
                    .unwrap_or_default();
                let frames = ["XA", "COMMIT", "ROLLBACK"]
                    .iter()
                    .any(|w| first.eq_ignore_ascii_case(w));
                return match self.query(ev, q, left) {
                    Ok(ends) => Ok(ends),
                    Err(why) if frames => {
                        Err(Stop::Refused(format!("replaying {file}:{at}: {why}")))
                    }
                    // Refused only if the transaction is applied: one
                    // before the base's cut or past the mark, in the same
                    // segment, is passed over like the rest of it.
                    Err(why) => {
                        self.refused
                            .get_or_insert(format!("replaying {file}:{at}: {why}"));
                        Ok(self.standalone)
                    }
                };
            }
            event::TABLE_MAP => {
                let Ok(Some(EventData::TableMapEvent(map))) = ev.read_data() else {
                    return Err(Stop::Corrupt(format!(
                        "unreadable table map event at {file}:{at}"
                    )));
                };
                let table = (
                    map.database_name().into_owned(),
                    map.table_name().into_owned(),
                );
                // A name the server would read as another stops the
                // replay if the transaction is applied (its rows are not
                // sent meanwhile): a restore to a mark before it is not
                // held up by it.
                let held = left.holds(&table.0, &table.1).unwrap_or_else(|why| {
                    self.refused
                        .get_or_insert(format!("replaying {file}:{at}: {why}"));
                    false
                });
                if !held {
                    self.left_out.insert(map.table_id());
                    let name = logged_sql::map_name(&table.0, &table.1);
                    let names = &mut self.left.tables;
                    if names.len() <= NAMED_TABLES && !names.contains(&name) {
                        names.push(name);
                    }
                    return Ok(false);
                }
                self.tables.push(table);
                self.maps += 1;
                self.map = (self.maps == 1).then(|| map.into_owned());
                self.pending.extend_from_slice(bytes);
                self.maps_bytes.extend_from_slice(bytes);
            }
            t if event::is_compressed_rows(t) => {
                // A `BINLOG` statement does not take them: refused by name
                // if the transaction is applied, not sent to the target.
                self.refused.get_or_insert(format!(
                    "replaying {file}:{at}: {}",
                    super::capture::COMPRESSED_ROWS
                ));
            }
            t if event::is_rows(t) => {
                let flags = ev
                    .data()
                    .get(6..8)
                    .map(|f| u16::from_le_bytes([f[0], f[1]]));
                let ends = flags.is_some_and(|f| f & STMT_END_F != 0);
                let id = ev.data().get(..6).map(|b| {
                    b.iter()
                        .rev()
                        .fold(0u64, |id, byte| id << 8 | u64::from(*byte))
                });
                if id.is_some_and(|id| self.left_out.contains(&id)) {
                    self.left.row_events += 1;
                    if ends {
                        if let Some((start, checksum)) = self.last_rows {
                            end_statement(&mut self.pending[start..], checksum);
                        }
                        self.flush_rows();
                    }
                    return Ok(false);
                }
                if self.last_rows.is_some() && self.pending.len() + bytes.len() > ROWS_PER_STATEMENT
                {
                    self.cut_statement();
                }
                self.last_rows = Some((self.pending.len(), ev.checksum().is_some()));
                self.pending.extend_from_slice(bytes);
                self.row_events += 1;
                self.key = match (&self.map, ev.read_data()) {
                    (Some(map), Ok(Some(EventData::RowsEvent(rows)))) if self.row_events == 1 => {
                        orderable.key(map, &rows)
                    }
                    _ => None,
                };
                if ends {
                    self.flush_rows();
                }
            }
            // Annotations, and variables of statement-based logging that
            // row events do not need.
            _ => {}
        }
        Ok(false)
    }

    /// Adds query `q` of event `ev`, where [`logged_sql::place`] says;
    /// returns whether it ends the transaction, or why it cannot be
    /// placed. BEGIN, COMMIT and ROLLBACK frame it: the target's
    /// transaction is the group's. (A transaction logged with ROLLBACK
    /// holds only changes to non-transactional tables, which the source
    /// kept: they are applied.)
    fn query(&mut self, ev: &Event, q: String, left: &LeftOut<'_>) -> Result<bool, String> {
        let begin = q.eq_ignore_ascii_case("BEGIN");
        if self.undecided {
            self.undecided = false;
            self.standalone = !begin;
        }
        if begin {
            return Ok(false);
        }
        if q.eq_ignore_ascii_case("COMMIT") || q.eq_ignore_ascii_case("ROLLBACK") {
            self.flush_rows();
            return Ok(true);
        }
        self.flush_rows();
        let (schema, (quoting, settings)) = match ev.read_data() {
            Ok(Some(EventData::QueryEvent(qe))) => (
                qe.schema().to_string(),
                logged_settings(&qe)
                    .map_err(|why| format!("`{}`: {why}", logged_sql::shown(&q)))?,
            ),
            _ => (String::new(), (Quoting::DEFAULT, None)),
        };
        match logged_sql::place(&q, &schema, left.scope, quoting) {
            Placement::Apply(sql) => {
                if !schema.is_empty() {
                    self.steps
                        .push(Step::Sql(format!("USE {}", super::sql::ident(&schema))));
                }
                self.steps.push(Step::Logged(sql, settings, quoting));
            }
            Placement::Built(sql) => self.steps.push(Step::Sql(sql)),
            Placement::Outside => self.left.statements += 1,
            Placement::Server(kind) => self.left.server.push(kind),
            Placement::Refuse(why) => {
                return Err(format!("`{}`: {why}", logged_sql::shown(&q)));
            }
        }
        Ok(self.standalone)
    }

    /// Ends the statement being read where it stands, as a step of its
    /// own (its last kept row event marked as the statement's end), and
    /// begins the rest of it with the same table maps. A statement's row
    /// events go to the target in pieces of about [`ROWS_PER_STATEMENT`]:
    /// sent whole, one `INSERT … SELECT` of 256 MiB was a `BINLOG`
    /// statement the target (and the client library) refused past
    /// `max_allowed_packet`. A piece without its table maps is passed
    /// over by the server without an error (tried on MariaDB 10.11: of a
    /// statement sent in three, only the first piece's rows were there).
    fn cut_statement(&mut self) {
        if let Some((start, checksum)) = self.last_rows.take() {
            end_statement(&mut self.pending[start..], checksum);
        }
        let mut tables = self.tables.clone();
        tables.sort_unstable();
        tables.dedup();
        let piece = std::mem::replace(&mut self.pending, self.maps_bytes.clone());
        self.steps.push(Step::Rows(piece, tables, None));
    }

    fn flush_rows(&mut self) {
        let key = self
            .key
            .take()
            .filter(|_| self.maps == 1 && self.row_events == 1);
        // A row event kept since the statement began, or since its last
        // piece was cut: after a cut, a statement ended by a row event of a
        // table left out has nothing more to send than its table maps.
        let kept = self.last_rows.is_some();
        (self.maps, self.row_events, self.map) = (0, 0, None);
        self.left_out.clear();
        self.last_rows = None;
        self.maps_bytes.clear();
        if !kept {
            // Table maps only: every row event (since the last piece) was
            // of a table left out.
            self.pending.clear();
            self.tables.clear();
        } else if !self.pending.is_empty() {
            // Each table once, found in n log n: a segment may map a table
            // any number of times.
            let mut tables = std::mem::take(&mut self.tables);
            tables.sort_unstable();
            tables.dedup();
            self.steps
                .push(Step::Rows(std::mem::take(&mut self.pending), tables, key));
        }
    }
}

async fn run(
    conn: &mut Conn,
    shard: &str,
    sql: &str,
    at: &str,
    shown: &str,
) -> Result<(), ReplayError> {
    conn.query_drop(sql).await.map_err(|e| {
        // Leave no half transaction behind on the target.
        let shown = if shown.starts_with("BINLOG ") {
            "row events (BINLOG …)".to_string()
        } else {
            format!("`{}`", excerpt(shown))
        };
        ReplayError::Apply {
            shard: shard.to_string(),
            at: at.to_string(),
            what: format!("the target refused {shown}: {e}"),
        }
    })
}

#[cfg(test)]
mod tests {
    /// Row events whose text fits the packet go whole; on MariaDB, up to
    /// twice that in two fragments; beyond, the replay fails with the
    /// setting that would take them (on MySQL, which has no fragments,
    /// past one packet).
    #[test]
    fn a_row_event_larger_than_the_packet_goes_in_fragments_or_fails_with_the_setting() {
        use super::{binlog_send, BinlogSend, STATEMENT_ROOM};
        let limit = 2 << 20;
        assert_eq!(
            binlog_send(limit - STATEMENT_ROOM, limit, true),
            BinlogSend::Whole
        );
        assert_eq!(
            binlog_send(limit - STATEMENT_ROOM + 1, limit, true),
            BinlogSend::Fragments
        );
        assert_eq!(
            binlog_send(2 * (limit - STATEMENT_ROOM), limit, true),
            BinlogSend::Fragments
        );
        assert_eq!(
            binlog_send(2 * (limit - STATEMENT_ROOM) + 1, limit, true),
            BinlogSend::TooLarge(limit + 1024)
        );
        assert_eq!(
            binlog_send(limit - STATEMENT_ROOM + 1, limit, false),
            BinlogSend::TooLarge(limit + 1024)
        );
        assert_eq!(binlog_send(5000, 4096, true), BinlogSend::Fragments);
        assert_eq!(binlog_send(5000, 4096, false), BinlogSend::TooLarge(6144));
    }

    use super::{decoding, end_statement, small_pool, LeftOut, STMT_END_F};

    /// A table map is applied or left out by the name the server reads:
    /// a NUL, or a name held or not by its letter case, is refused.
    #[test]
    fn a_table_map_naming_a_table_the_server_reads_otherwise_is_refused() {
        let every = crate::manifest::Selection::default();
        let left = LeftOut::new(&every);
        assert_eq!(left.holds("bank", "Ledger"), Ok(true));
        assert_eq!(left.holds("mysql", "user"), Ok(false));
        let nul = left.holds("mysql\0x", "user").unwrap_err();
        assert!(
            nul.contains("mysql\\0x.user") && nul.contains("NUL"),
            "{nul}"
        );
        let case = left.holds("MYSQL", "user").unwrap_err();
        assert!(
            case.contains("MYSQL.user") && case.contains("letter case"),
            "{case}"
        );
        let bank = crate::manifest::Selection {
            databases: Some(vec!["bank".into()]),
            excluded: Vec::new(),
        };
        let left = LeftOut::new(&bank);
        assert_eq!(left.holds("bank", "t"), Ok(true));
        assert_eq!(left.holds("side", "t"), Ok(false));
        assert!(left.holds("Bank", "t").is_err());
    }

    /// A row event of `size` bytes with flags `flags`, ending with its
    /// CRC32, followed by `after`.
    fn rows_event(size: usize, flags: u16, after: &[u8]) -> Vec<u8> {
        let mut e = vec![0u8; size];
        e[9..13].copy_from_slice(&(size as u32).to_le_bytes());
        e[19..25].copy_from_slice(&[7, 0, 0, 0, 0, 0]);
        e[25..27].copy_from_slice(&flags.to_le_bytes());
        let crc = crc32fast::hash(&e[..size - 4]);
        e[size - 4..].copy_from_slice(&crc.to_le_bytes());
        e.extend_from_slice(after);
        e
    }

    #[test]
    fn a_kept_row_event_is_made_its_statements_end_with_its_checksum_anew() {
        let mut pending = rows_event(40, 0x0002, b"next");
        end_statement(&mut pending, true);
        assert_eq!(
            pending,
            rows_event(40, 0x0002 | STMT_END_F, b"next"),
            "the flag is set, the checksum matches, what follows is untouched"
        );
        // Without a checksum, the last four bytes are the event's own.
        let mut plain = rows_event(40, 0, b"");
        let tail = plain[36..].to_vec();
        end_statement(&mut plain, false);
        assert_eq!(plain[25..27], STMT_END_F.to_le_bytes());
        assert_eq!(plain[36..], tail[..]);
        // A damaged length leaves the bytes as they were.
        let mut short = rows_event(40, 0, b"");
        short[9..13].copy_from_slice(&400u32.to_le_bytes());
        let before = short.clone();
        end_statement(&mut short, true);
        assert_eq!(short, before);
    }

    /// A format description event: header, binlog version, server version,
    /// creation time, header length, post-header lengths, checksum
    /// algorithm and checksum.
    fn fde(when: u8, created: u8, server: &[u8], crc: u8) -> Vec<u8> {
        let mut e = vec![when; 19];
        e.extend_from_slice(&[4, 0]);
        let mut version = server.to_vec();
        version.resize(50, 0);
        e.extend_from_slice(&version);
        e.extend_from_slice(&[created; 4]);
        e.push(19);
        e.extend_from_slice(&[8; 20]);
        e.push(1);
        e.extend_from_slice(&[crc; 4]);
        e
    }

    #[test]
    fn a_buffer_pool_far_smaller_than_the_tables_gets_a_hint_with_the_setting() {
        const MIB: u64 = 1 << 20;
        assert_eq!(small_pool(64 * MIB, 128 * MIB), None);
        assert_eq!(small_pool(0, 128 * MIB), None);
        // Sizes from a hostile server do not overflow.
        assert_eq!(small_pool(u64::MAX, u64::MAX), None);
        assert!(small_pool(1, u64::MAX).is_some());
        let hint = small_pool(64 * MIB, 480 * MIB).expect("a hint");
        assert!(
            hint.contains("buffer pool (64 MiB) holds 13% of its tables (480 MiB)"),
            "{hint}"
        );
        assert!(
            hint.contains("SET GLOBAL innodb_buffer_pool_size = 512M"),
            "{hint}"
        );
    }

    #[test]
    fn segments_of_one_server_decode_alike_and_another_version_does_not() {
        let a = fde(1, 0, b"10.11.19-MariaDB", 7);
        let b = fde(2, 9, b"10.11.19-MariaDB", 8);
        assert_eq!(decoding(&a), decoding(&b));
        let c = fde(1, 0, b"11.4.2-MariaDB", 7);
        assert_ne!(decoding(&a), decoding(&c));
        let mut d = a.clone();
        d[80] = 9; // a post-header length
        assert_ne!(decoding(&a), decoding(&d));
    }
}
