//! Replaying captured pgoutput segments into a PostgreSQL target.
//!
//! Many captured transactions become one target transaction. Changes to a
//! table with a key are netted by key (see [`Net`]) and applied a table at
//! a time, by one DELETE, UPDATE and INSERT from arrays of values, on up
//! to [`crate::replay::workers`] connections; the rest become INSERT,
//! UPDATE, DELETE and TRUNCATE statements of their own. Values travel as
//! the text the source's output functions produced (under the same
//! session settings on both sides), cast by the target to the column
//! type, so no value is reinterpreted on the way. Rows are found by their
//! replica identity (the primary key, or the whole old row); a change that
//! does not find its row means the target has diverged, and replay stops
//! rather than going on silently.
//!
//! Logical decoding carries no DDL: a relation whose columns differ from
//! the restored table's is refused, naming the table and both column lists.

use std::collections::HashMap;

use std::sync::Arc;

use futures_util::StreamExt;
use tokio_postgres::types::Type;
use tokio_postgres::{Client, SimpleQueryMessage};
use topology::Shard;

use super::capture::be_u64;
use super::{ident, reader};
use crate::capture::{load_segment, CaptureError};
use crate::position::{Lsn, Position};
use crate::replay::{excerpt, segments, ReplayError, ReplayReport};
use crate::repo::Repository;

/// Statements sent in one simple-query message, at most.
const BATCH_STATEMENTS: usize = 1000;
/// Bytes of statements sent in one message, about, at most.
const BATCH_BYTES: usize = 1 << 20;
/// Source transactions applied in one target transaction, at most.
const GROUP_TRANSACTIONS: u64 = 5000;
/// Statements applied in one target transaction, at most (a source
/// transaction larger than this is still applied whole, in one).
const GROUP_STATEMENTS: u64 = 50_000;

#[derive(Debug, Clone)]
pub(crate) struct Relation {
    schema: String,
    name: String,
    /// (column name, part of the replica identity key)
    columns: Vec<(String, bool)>,
    /// `REPLICA IDENTITY FULL`: every column is the "key", and identical
    /// rows may exist, so a change touches one of them.
    full: bool,
    /// Checked against the target once, on first use.
    checked: bool,
    /// The target's column types with their modifiers (`format_type`:
    /// `character(8)`, not `character`, which means one character), read
    /// when checked.
    types: Vec<String>,
    /// Distinguishes descriptions of one relation ID whose columns differ
    /// (statements prepared for one are not used for another).
    version: u64,
    /// A partitioned table (changes published through the root): its rows
    /// are in its partitions. Read when checked.
    partitioned: bool,
    /// Netted changes may update rows in place: the key is the table's
    /// only unique (or exclusion) constraint and no other column is an
    /// identity `GENERATED ALWAYS` (which an UPDATE may not set). Read
    /// when checked.
    updatable: bool,
}

impl Relation {
    fn qualified(&self) -> String {
        format!("{}.{}", ident(&self.schema), ident(&self.name))
    }

    /// The table as an UPDATE or DELETE names it: its own rows only, not
    /// those of tables inheriting from it (each has its own changes), but
    /// a partitioned table's partitions, which hold its rows.
    fn rows_of(&self) -> String {
        if self.partitioned {
            self.qualified()
        } else {
            format!("ONLY {}", self.qualified())
        }
    }

    /// The key's columns, when rows are found by a key (not `REPLICA
    /// IDENTITY FULL`) and the target's column types are known.
    fn key_columns(&self) -> Option<Vec<usize>> {
        let keys: Vec<usize> = (0..self.columns.len())
            .filter(|i| self.columns[*i].1)
            .collect();
        (!self.full && !keys.is_empty() && self.types.len() == self.columns.len()).then_some(keys)
    }
}

/// A tuple's column values: `None` is SQL NULL; `Unchanged` a TOASTed value
/// the update did not touch.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Value {
    Null,
    Unchanged,
    Text(String),
}

pub(crate) struct Reader<'a> {
    d: &'a [u8],
    at: usize,
}

impl<'a> Reader<'a> {
    fn u8(&mut self) -> Option<u8> {
        let v = *self.d.get(self.at)?;
        self.at += 1;
        Some(v)
    }
    fn u16(&mut self) -> Option<u16> {
        let v = u16::from_be_bytes(self.d.get(self.at..self.at + 2)?.try_into().ok()?);
        self.at += 2;
        Some(v)
    }
    fn u32(&mut self) -> Option<u32> {
        let v = u32::from_be_bytes(self.d.get(self.at..self.at + 4)?.try_into().ok()?);
        self.at += 4;
        Some(v)
    }
    fn cstr(&mut self) -> Option<String> {
        let end = self.d.get(self.at..)?.iter().position(|b| *b == 0)?;
        let s = String::from_utf8_lossy(&self.d[self.at..self.at + end]).into_owned();
        self.at += end + 1;
        Some(s)
    }
    pub(crate) fn new(d: &'a [u8], at: usize) -> Self {
        Reader { d, at }
    }

    pub(crate) fn tuple(&mut self) -> Option<Vec<Value>> {
        let n = self.u16()?;
        let mut out = Vec::with_capacity(n as usize);
        for _ in 0..n {
            out.push(match self.u8()? {
                b'n' => Value::Null,
                b'u' => Value::Unchanged,
                b't' => {
                    let len = self.u32()? as usize;
                    let bytes = self.d.get(self.at..self.at + len)?;
                    self.at += len;
                    Value::Text(String::from_utf8_lossy(bytes).into_owned())
                }
                _ => return None,
            });
        }
        Some(out)
    }
}

/// The record at `at` of a segment: its LSN, its pgoutput message and
/// where the next record starts; `None` when the segment is cut short.
/// Each record is the LSN (8 bytes), the message's length (4) and the
/// message, all read from the repository and checked against its end.
pub(crate) fn next_record(raw: &[u8], at: usize) -> Option<(u64, &[u8], usize)> {
    let lsn = be_u64(raw, at)?;
    let len = raw
        .get(at.checked_add(8)?..at.checked_add(12)?)
        .map(|b| u32::from_be_bytes([b[0], b[1], b[2], b[3]]) as usize)?;
    let start = at.checked_add(12)?;
    let end = start.checked_add(len)?;
    Some((lsn, raw.get(start..end)?, end))
}

/// Where a change lies: its record and its transaction's commit.
#[derive(Clone, Copy)]
struct Change {
    lsn: u64,
    commit_lsn: Lsn,
}

/// Numbers relation descriptions (see [`Relation::version`]).
static DESCRIPTIONS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

/// Records a relation description ('R'); a relation already checked
/// against the target stays checked while its columns are the same.
pub(crate) fn describe(r: &mut Reader<'_>, relations: &mut HashMap<u32, Relation>) -> Option<()> {
    let id = r.u32()?;
    let schema = r.cstr()?;
    let name = r.cstr()?;
    let full = r.u8()? == b'f';
    let n = r.u16()?;
    let mut columns = Vec::new();
    for _ in 0..n {
        let flags = r.u8()?;
        let col = r.cstr()?;
        let _type = r.u32()?;
        let _typmod = r.u32()?;
        columns.push((col, flags & 1 != 0));
    }
    let same = relations.get(&id).filter(|old| {
        old.columns == columns && old.schema == schema && old.name == name && old.full == full
    });
    let (checked, types, version, partitioned, updatable) = match same {
        Some(old) => (
            old.checked,
            old.types.clone(),
            old.version,
            old.partitioned,
            old.updatable,
        ),
        None => (
            false,
            Vec::new(),
            DESCRIPTIONS.fetch_add(1, std::sync::atomic::Ordering::Relaxed),
            false,
            false,
        ),
    };
    relations.insert(
        id,
        Relation {
            schema,
            name,
            columns,
            full,
            checked,
            types,
            version,
            partitioned,
            updatable,
        },
    );
    Some(())
}

fn literal(v: &Value) -> String {
    match v {
        Value::Null => "NULL".into(),
        Value::Unchanged => "DEFAULT".into(),
        Value::Text(t) => quote(t),
    }
}

/// `t` as an SQL string literal (`standard_conforming_strings` is on).
fn quote(t: &str) -> String {
    format!("'{}'", t.replace('\'', "''"))
}

/// `WHERE` clause for the row an old tuple (or the new one) identifies.
fn identity(rel: &Relation, key: &[Value]) -> String {
    let keyed: Vec<usize> = (0..rel.columns.len())
        .filter(|i| rel.columns[*i].1)
        .collect();
    let cols: Vec<usize> = if keyed.is_empty() {
        (0..rel.columns.len()).collect()
    } else {
        keyed
    };
    let conds: Vec<String> = cols
        .iter()
        .filter_map(|i| {
            let (name, _) = &rel.columns[*i];
            match key.get(*i)? {
                Value::Null => Some(format!("{} IS NULL", ident(name))),
                Value::Unchanged => None,
                v => Some(format!("{} = {}", ident(name), literal(v))),
            }
        })
        .collect();
    let cond = conds.join(" AND ");
    if !rel.full && rel.columns.iter().any(|c| c.1) {
        format!("WHERE {cond}")
    } else {
        // REPLICA IDENTITY FULL: one of possibly several identical rows.
        format!(
            "WHERE ctid = (SELECT ctid FROM {} WHERE {cond} LIMIT 1)",
            rel.rows_of()
        )
    }
}

/// A replay session: as a logical replication apply worker, committing
/// without waiting for the disk, joining key arrays by index.
async fn session(target: &Shard, db: &str) -> Result<Client, ReplayError> {
    let client = reader(target, db, std::time::Duration::from_secs(10)).await?;
    // As a logical replication apply worker: the target's triggers and
    // foreign-key actions do not fire (their effects on the source are in
    // the captured changes themselves; firing them again would change or
    // repeat rows).
    client
        .batch_execute("SET session_replication_role = replica")
        .await
        .map_err(|e| ReplayError::Refused {
            shard: target.name.clone(),
            what: format!(
                "replay must not fire the target's triggers, which needs SET session_replication_role = replica (a superuser, or GRANT SET ON PARAMETER session_replication_role to the restoring user): {}",
                crate::error::DbError::from(e)
            ),
        })?;
    // The target serves nobody until the restore is verified: its commits
    // need not wait for the disk one by one. The last commit waits for
    // everything (see `Group::finish`).
    // Netted changes join a table to an array of keys: by its key's
    // index, key after key, however many there are (a hash join would
    // read the whole table for each batch).
    client
        .batch_execute(
            "SET synchronous_commit = off; SET enable_hashjoin = off; SET enable_mergejoin = off",
        )
        .await
        .map_err(|e| ReplayError::Apply {
            shard: target.name.clone(),
            at: format!("database {db}"),
            what: crate::error::DbError::from(e).to_string(),
        })?;
    Ok(client)
}

/// Applies the transactions of `source`'s stream `db` that commit at or
/// after `from` and before `to` to database `db` of `target`.
pub async fn replay(
    repo: &dyn Repository,
    source: &str,
    db: &str,
    target: &Shard,
    from: &Position,
    to: &Position,
) -> Result<ReplayReport, ReplayError> {
    let segs = segments(repo, source, db, (from, to))?;
    let (Position::Postgres { lsn: from }, Position::Postgres { lsn: to }) = (from, to) else {
        return Err(ReplayError::Refused {
            shard: target.name.clone(),
            what: "positions are not WAL positions".into(),
        });
    };
    let client = session(target, db).await?;
    let quieted = quiet_triggers(&client, target, db).await?;
    let applied = apply_all(&client, repo, segs, target, db, (*from, *to)).await;
    // Enabled again whatever the replay did. A replay that failed may
    // leave the session in its open (or aborted) transaction: enabled
    // there, the triggers would be disabled again when it rolls back.
    if applied.is_err() {
        drop(client.batch_execute("ROLLBACK").await);
    }
    let woken = wake_triggers(&client, target, db, &quieted).await;
    let mut report = match (applied, woken) {
        (Ok(report), Ok(())) => report,
        (Err(e), Ok(())) | (Ok(_), Err(e)) => return Err(e),
        (Err(e), Err(stuck)) => {
            // The replay's failure is the one reported; what it leaves
            // disabled is said too.
            tracing::warn!("{}: {stuck}", target.name);
            return Err(e);
        }
    };
    if !quieted.is_empty() {
        let names: Vec<String> = quieted
            .iter()
            .take(8)
            .map(|t| format!("{} on {}", t.name, t.table))
            .collect();
        report.notes.push(format!(
            "database {db}: {} trigger(s) that fire on replicated changes (ENABLE ALWAYS or REPLICA) were disabled while the changes replayed, their effects being in the changes already, and enabled again as they were: {}{}",
            quieted.len(),
            names.join(", "),
            if quieted.len() > 8 { ", …" } else { "" }
        ));
    }
    Ok(report)
}

/// A trigger disabled while changes replay ([`quiet_triggers`]).
struct Quieted {
    /// The table, schema-qualified and quoted.
    table: String,
    name: String,
    /// `A` (ENABLE ALWAYS) or `R` (ENABLE REPLICA).
    mode: String,
}

/// Disables the target database's triggers that fire even in replica
/// mode (`ENABLE ALWAYS`, `ENABLE REPLICA`; the replay's sessions are in
/// it, so the others do not fire). Their effects on the source are in the
/// captured changes already: fired again they repeat rows, and their rows
/// written on one of the replay's connections (tables are dealt to
/// several) made another wait on them while the replay waited on that
/// one: the restore hung. `ONLY` each table: a partitioned table's
/// trigger is not set on its partitions' copies, which are listed (and
/// set back) as they are.
async fn quiet_triggers(
    client: &Client,
    target: &Shard,
    db: &str,
) -> Result<Vec<Quieted>, ReplayError> {
    let failed = |what: String| ReplayError::Apply {
        shard: target.name.clone(),
        at: format!("database {db}"),
        what,
    };
    let rows = client
        .query(
            "SELECT pg_catalog.format('%I.%I', n.nspname, c.relname), t.tgname::text, t.tgenabled::text \
             FROM pg_catalog.pg_trigger t JOIN pg_catalog.pg_class c ON c.oid = t.tgrelid \
             JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace \
             WHERE NOT t.tgisinternal AND t.tgenabled IN ('A', 'R') ORDER BY 1, 2",
            &[],
        )
        .await
        .map_err(|e| failed(format!("listing the triggers that fire on replicated changes: {}", crate::error::DbError::from(e))))?;
    let mut quieted = Vec::new();
    for row in rows {
        let t = Quieted {
            table: row.try_get(0).map_err(|e| failed(e.to_string()))?,
            name: row.try_get(1).map_err(|e| failed(e.to_string()))?,
            mode: row.try_get(2).map_err(|e| failed(e.to_string()))?,
        };
        let sql = format!(
            "ALTER TABLE ONLY {} DISABLE TRIGGER {}",
            t.table,
            ident(&t.name)
        );
        if let Err(e) = client.batch_execute(&sql).await {
            // Those disabled so far are enabled again.
            drop(wake_triggers(client, target, db, &quieted).await);
            return Err(failed(format!(
                "disabling trigger {} on {} for the replay (it fires on replicated changes, ENABLE ALWAYS or REPLICA, and would repeat what the changes hold): {}",
                t.name,
                t.table,
                crate::error::DbError::from(e)
            )));
        }
        quieted.push(t);
    }
    Ok(quieted)
}

/// Enables the triggers [`quiet_triggers`] disabled again, each as it was.
async fn wake_triggers(
    client: &Client,
    target: &Shard,
    db: &str,
    quieted: &[Quieted],
) -> Result<(), ReplayError> {
    let mut first = None;
    for t in quieted {
        let mode = if t.mode == "R" { "REPLICA" } else { "ALWAYS" };
        let sql = format!(
            "ALTER TABLE ONLY {} ENABLE {mode} TRIGGER {}",
            t.table,
            ident(&t.name)
        );
        if let Err(e) = client.batch_execute(&sql).await {
            first.get_or_insert(format!(
                "enabling trigger {} on {} again after the replay (ENABLE {mode}) failed: {}; it stays disabled",
                t.name,
                t.table,
                crate::error::DbError::from(e)
            ));
        }
    }
    match first {
        None => Ok(()),
        Some(what) => Err(ReplayError::Apply {
            shard: target.name.clone(),
            at: format!("database {db}"),
            what,
        }),
    }
}

/// Applies the segments `segs` of stream `db` between `from` and `to`.
async fn apply_all(
    client: &Client,
    repo: &dyn Repository,
    segs: Vec<crate::capture::SegmentMeta>,
    target: &Shard,
    db: &str,
    (from, to): (Lsn, Lsn),
) -> Result<ReplayReport, ReplayError> {
    let (from, to) = (&from, &to);
    let mut report = ReplayReport::default();
    let net = netting();
    // Connections netted changes apply on (one when changes are not
    // netted); the others open when a table is first dealt to them.
    let ways = if net { crate::replay::workers() } else { 1 };
    let mut relations: HashMap<u32, Relation> = HashMap::new();
    let mut group = Group::default();
    let mut applied = Lsn(0);
    for seg in segs {
        let (Position::Postgres { lsn: last }, Position::Postgres { lsn: first }) =
            (&seg.last, &seg.first)
        else {
            continue;
        };
        // Every segment starts with the relation descriptions it uses, so
        // segments outside the range need not be read. A commit before
        // `to` (a record boundary) cannot lie in a segment starting at or
        // after it.
        if *last <= *from || *first >= *to {
            continue;
        }
        let raw = load_segment(repo, &seg)?;
        let ctx = Ctx {
            client,
            ways,
            net,
            target,
            db,
            key: &seg.key,
            from: *from,
            to: *to,
        };
        let (t, s) = ctx
            .apply_segment(&raw, &mut relations, &mut group, &mut applied)
            .await?;
        if t > 0 {
            report.segments += 1;
        }
        report.transactions += t;
        report.statements += s;
    }
    let ctx = Ctx {
        client,
        ways,
        net,
        target,
        db,
        key: "",
        from: *from,
        to: *to,
    };
    ctx.finish(&mut group).await?;
    Ok(report)
}

/// The target transaction that source transactions are added to, and the
/// statements not sent yet. Many source transactions commit as one, and
/// their statements are sent many at once (pipelined): the target commits
/// once a group and the replay waits one round trip a batch, not one a
/// statement.
#[derive(Default)]
struct Group {
    open: bool,
    /// Statements not sent yet.
    ops: Vec<Op>,
    /// Their text and parameters' bytes, about.
    bytes: usize,
    transactions: u64,
    statements: u64,
    /// Commit LSNs of the group's first and newest source transaction.
    first: Option<Lsn>,
    last: Lsn,
    /// The session's prepared statements, kept across groups.
    prepared: Prepared,
    /// Changes to tables with a key, netted by key, not applied yet (by
    /// relation description, see [`Relation::version`]).
    net: HashMap<u64, Net>,
    /// How many changes and bytes of values they hold.
    net_changes: usize,
    net_bytes: usize,
    /// Statements sent on the main connection since it last committed.
    direct: bool,
    /// The connection each table's netted changes apply on (0: the main
    /// one), kept across groups.
    assigned: HashMap<(String, String), usize>,
    /// The other connections, opened as tables are dealt to them (`i` is
    /// `extra[i - 1]`).
    extra: Vec<Client>,
}

impl Group {
    /// Where the group's source transactions lie, for error messages.
    fn span(&self) -> String {
        match self.first {
            Some(first) if first != self.last => {
                format!("transactions committed from {first} to {}", self.last)
            }
            _ => format!("transaction committed at {}", self.last),
        }
    }
}

/// Prepared statements by shape: their names and texts.
type Prepared = HashMap<Shape, (Arc<str>, Arc<str>)>;

/// Numbers the session's prepared statements.
static PREPARED_NAMES: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

/// Prepared statements kept at most (past that, the cache starts again):
/// each holds a plan in the target session's memory.
const PREPARED_STATEMENTS: usize = 4096;

/// The limit in force: `SHARDCUT_REPLAY_PREPARED` (a target with little
/// memory; tests use a small value to take the path that starts again),
/// else [`PREPARED_STATEMENTS`].
fn prepared_statements() -> usize {
    crate::knobs::count("SHARDCUT_REPLAY_PREPARED").unwrap_or(PREPARED_STATEMENTS)
}

/// What a prepared statement does: to which description of a relation,
/// which change, setting which columns, finding the row by which.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct Shape {
    version: u64,
    kind: u8,
    set: Vec<usize>,
    key: Vec<usize>,
}

impl Shape {
    fn new(rel: &Relation, kind: u8, set: Vec<usize>, key: Vec<usize>) -> Self {
        Shape {
            version: rel.version,
            kind,
            set,
            key,
        }
    }

    /// The statement's text and its number of parameters: the values of
    /// `set`, then of `key`, each a text parameter cast to its column's
    /// type.
    fn sql(&self, rel: &Relation) -> (String, usize) {
        let mut n = 0usize;
        let mut param = |i: usize| {
            n += 1;
            format!("${n}::text::{}", rel.types[i])
        };
        // `column = $n::text::type` for each of `cols`, numbered on.
        let assignments = |cols: &[usize], param: &mut dyn FnMut(usize) -> String| -> Vec<String> {
            cols.iter()
                .map(|i| format!("{} = {}", ident(&rel.columns[*i].0), param(*i)))
                .collect()
        };
        let sql = match self.kind {
            b'I' => {
                let cols: Vec<String> =
                    self.set.iter().map(|i| ident(&rel.columns[*i].0)).collect();
                let vals: Vec<String> = self.set.iter().map(|i| param(*i)).collect();
                format!(
                    "INSERT INTO {} ({}) OVERRIDING SYSTEM VALUE VALUES ({})",
                    rel.qualified(),
                    cols.join(", "),
                    vals.join(", ")
                )
            }
            b'U' => {
                let sets = assignments(&self.set, &mut param);
                let conds = assignments(&self.key, &mut param);
                format!(
                    "UPDATE {} SET {} WHERE {}",
                    rel.rows_of(),
                    sets.join(", "),
                    conds.join(" AND ")
                )
            }
            _ => {
                let conds = assignments(&self.key, &mut param);
                format!(
                    "DELETE FROM {} WHERE {}",
                    rel.rows_of(),
                    conds.join(" AND ")
                )
            }
        };
        (sql, n)
    }
}

/// The values at `cols` of a tuple as text parameters; `None` when one is
/// an unchanged TOASTed value, or NULL where `nulls` is false (a key).
fn texts(tuple: &[Value], cols: &[usize], nulls: bool) -> Option<Vec<Option<String>>> {
    cols.iter()
        .map(|i| match tuple.get(*i)? {
            Value::Text(t) => Some(Some(t.clone())),
            Value::Null if nulls => Some(None),
            _ => None,
        })
        .collect()
}

/// What a change became.
enum Outcome {
    /// A statement to send in order.
    Op(Op),
    /// Netted into its relation's pending changes.
    Netted,
    Nothing,
}

/// Whether changes are netted: unless `SHARDCUT_REPLAY_NET` is `off`
/// (every change is then a statement of its own, as before netting;
/// benchmarks compare the two, and a test takes both paths).
fn netting() -> bool {
    std::env::var("SHARDCUT_REPLAY_NET").map_or(true, |v| v != "off")
}

/// Netted changes applied at once, at most (see [`Net`]).
const NET_CHANGES: usize = 20_000;
/// Bytes of values they hold, about, at most.
const NET_BYTES: usize = 8 << 20;
/// Columns a relation may have for its changes to be netted: each is one
/// array argument of `unnest`.
const NET_COLUMNS: usize = 90;

/// Changes to one relation, netted by key: for each key the changes
/// touched, whether a row with it was there before them and the row it
/// holds after them. They apply as one `DELETE` of every key that was
/// there and one `INSERT` of every row there after: the table ends as the
/// changes left it, and no state on the way holds a row the source did
/// not have at the end, so no unique constraint trips on the order (the
/// session's triggers and foreign-key checks are off, as for every
/// replayed change). Two statements for thousands of changes instead of
/// one each: the target parses, plans and executes far less.
struct Net {
    rel: Relation,
    rows: HashMap<Vec<String>, Netted>,
}

struct Netted {
    existed: bool,
    row: Option<Vec<Value>>,
}

/// The key of `tuple` when changes to `rel` are netted and `row` (the
/// row after the change; empty for a delete) can be inserted whole: the
/// relation has a key (not `REPLICA IDENTITY FULL`), its column types are
/// known and few enough, and no value is an unchanged TOASTed one.
fn netted_key(rel: &Relation, tuple: &[Value], row: &[Value]) -> Option<Vec<String>> {
    let keys = rel.key_columns()?;
    if rel.columns.len() > NET_COLUMNS
        || row.iter().any(|v| matches!(v, Value::Unchanged))
        || (!row.is_empty() && row.len() != rel.columns.len())
    {
        return None;
    }
    keys.iter()
        .map(|i| match tuple.get(*i)? {
            Value::Text(t) => Some(t.clone()),
            _ => None,
        })
        .collect()
}

impl Group {
    /// Nets a change of `rel`: the row with key `was` (none for an
    /// insert) now has key `is` and holds `row` (none for a delete).
    fn netted(
        &mut self,
        rel: &Relation,
        was: Option<Vec<String>>,
        is: Vec<String>,
        row: Option<Vec<Value>>,
    ) {
        let net = self.net.entry(rel.version).or_insert_with(|| Net {
            rel: rel.clone(),
            rows: HashMap::new(),
        });
        let size = |r: &Option<Vec<Value>>| {
            r.iter()
                .flatten()
                .map(|v| match v {
                    Value::Text(t) => t.len() + 8,
                    _ => 8,
                })
                .sum::<usize>()
        };
        self.net_bytes += is.iter().map(|k| k.len() + 8).sum::<usize>() + size(&row);
        self.net_changes += 1;
        self.statements += 1;
        // An insert finds no row with its key; an update or a delete
        // finds one (the first change of a key in the net says which).
        let found = was.is_some();
        if let Some(was) = was.filter(|w| *w != is) {
            // The key changed: the old key's row is gone, and the new key
            // had none.
            net.rows
                .entry(was)
                .or_insert(Netted {
                    existed: true,
                    row: None,
                })
                .row = None;
            net.rows
                .entry(is)
                .or_insert(Netted {
                    existed: false,
                    row: None,
                })
                .row = row;
            return;
        }
        net.rows
            .entry(is)
            .or_insert(Netted {
                existed: found,
                row: None,
            })
            .row = row;
    }
}

/// A value as a text array element: `None` is NULL.
fn text(v: Option<&Value>) -> Option<&str> {
    match v {
        Some(Value::Text(t)) => Some(t.as_str()),
        _ => None,
    }
}

/// Text arrays as the parameters of a statement.
fn text_arrays<'a>(
    args: &'a [Vec<Option<&'a str>>],
) -> Vec<(&'a (dyn tokio_postgres::types::ToSql + Sync), Type)> {
    args.iter()
        .map(|a| {
            (
                a as &(dyn tokio_postgres::types::ToSql + Sync),
                Type::TEXT_ARRAY,
            )
        })
        .collect()
}

/// One statement of a group.
enum Op {
    /// With literals, sent as a simple query.
    Text { sql: String, one: bool },
    /// A statement prepared in the session (by name; `sql` is its text)
    /// and its parameters, sent as `EXECUTE name(…)`.
    Prepared {
        name: Arc<str>,
        sql: Arc<str>,
        params: Vec<Option<String>>,
        one: bool,
    },
}

impl Op {
    /// Whether it must change exactly one row.
    fn one(&self) -> bool {
        match self {
            Op::Text { one, .. } | Op::Prepared { one, .. } => *one,
        }
    }

    fn bytes(&self) -> usize {
        match self {
            Op::Text { sql, .. } => sql.len(),
            Op::Prepared { name, params, .. } => {
                name.len() + params.iter().flatten().map(|p| p.len() + 8).sum::<usize>()
            }
        }
    }

    /// Appends the statement's text to a batch.
    fn write(&self, out: &mut String) {
        match self {
            Op::Text { sql, .. } => out.push_str(sql),
            Op::Prepared { name, params, .. } => {
                out.push_str("EXECUTE ");
                out.push_str(name);
                out.push('(');
                for (i, p) in params.iter().enumerate() {
                    if i > 0 {
                        out.push_str(", ");
                    }
                    match p {
                        Some(t) => out.push_str(&quote(t)),
                        None => out.push_str("NULL"),
                    }
                }
                out.push(')');
            }
        }
        out.push_str(";\n");
    }

    /// Whether its text holds a NUL byte (from the repository), which
    /// would cut the message short.
    fn has_nul(&self) -> bool {
        match self {
            Op::Text { sql, .. } => sql.contains('\0'),
            Op::Prepared { params, .. } => params.iter().flatten().any(|p| p.contains('\0')),
        }
    }

    /// The statement for an error message.
    fn shown(&self) -> String {
        match self {
            Op::Text { sql, .. } => excerpt(sql),
            Op::Prepared { sql, params, .. } => {
                let vals: Vec<String> = params
                    .iter()
                    .map(|p| p.as_deref().map_or_else(|| "NULL".into(), quote))
                    .collect();
                excerpt(&format!("{sql} with ({})", vals.join(", ")))
            }
        }
    }
}

/// What applying netted changes needs: the connection, and where the
/// changes lie, for errors.
struct NetCtx<'a> {
    client: &'a Client,
    shard: &'a str,
    at: String,
}

impl NetCtx<'_> {
    /// One relation's netted changes: a `DELETE` of each key whose row
    /// is gone, an `UPDATE` of each row that is still there (when the key
    /// is the table's only unique constraint, so rows updated together
    /// cannot collide on another; else it is deleted and inserted again),
    /// and an `INSERT` of each new row. The `DELETE` and `UPDATE` must find
    /// every row they name. Values go as text arrays, each element cast to
    /// its column's type by the statement, as for every other change.
    async fn apply(&self, net: Net) -> Result<(), ReplayError> {
        let rel = &net.rel;
        // Only changes to a table with a key are netted (`netted_key`).
        let Some(keys) = rel.key_columns() else {
            return Err(self.err(format!(
                "changes to {} were netted, but it has no key to find rows by",
                rel.qualified()
            )));
        };
        let set: Vec<usize> = (0..rel.columns.len())
            .filter(|i| !keys.contains(i))
            .collect();
        let update = rel.updatable && !set.is_empty();
        let (mut gone, mut changed, mut new) = (Vec::new(), Vec::new(), Vec::new());
        for (k, n) in &net.rows {
            match (&n.row, n.existed) {
                (None, true) => gone.push(k),
                (Some(row), true) if update => changed.push((k, row)),
                (Some(row), true) => {
                    gone.push(k);
                    new.push(row);
                }
                (Some(row), false) => new.push(row),
                (None, false) => {}
            }
        }
        let t = rel.qualified();
        let col = |i: usize| ident(&rel.columns[i].0);
        let list = |n: usize, f: &dyn Fn(usize) -> String| -> String {
            (0..n).map(f).collect::<Vec<_>>().join(", ")
        };
        let matched = keys
            .iter()
            .enumerate()
            .map(|(j, i)| format!("t.{} = v.k{j}::{}", col(*i), rel.types[*i]))
            .collect::<Vec<_>>()
            .join(" AND ");
        let returning = list(keys.len(), &|j| format!("t.{}::text", col(keys[j])));
        if !gone.is_empty() {
            let args: Vec<Vec<Option<&str>>> = (0..keys.len())
                .map(|j| gone.iter().map(|k| Some(k[j].as_str())).collect())
                .collect();
            let sql = format!(
                "DELETE FROM {} AS t USING unnest({}) AS v({}) WHERE {matched} RETURNING {returning}",
                rel.rows_of(),
                list(keys.len(), &|j| format!("${}::text[]", j + 1)),
                list(keys.len(), &|j| format!("k{j}")),
            );
            self.keyed(rel, &keys, &sql, &args, &gone, "delete").await?;
        }
        if !changed.is_empty() {
            let ks: Vec<&Vec<String>> = changed.iter().map(|(k, _)| *k).collect();
            let mut args: Vec<Vec<Option<&str>>> = (0..keys.len())
                .map(|j| ks.iter().map(|k| Some(k[j].as_str())).collect())
                .collect();
            args.extend(set.iter().map(|i| {
                changed
                    .iter()
                    .map(|(_, row)| text(row.get(*i)))
                    .collect::<Vec<_>>()
            }));
            let sql = format!(
                "UPDATE {} AS t SET {} FROM unnest({}) AS v({}, {}) WHERE {matched} RETURNING {returning}",
                rel.rows_of(),
                list(set.len(), &|j| format!(
                    "{} = v.c{j}::{}",
                    col(set[j]),
                    rel.types[set[j]]
                )),
                list(keys.len() + set.len(), &|j| format!("${}::text[]", j + 1)),
                list(keys.len(), &|j| format!("k{j}")),
                list(set.len(), &|j| format!("c{j}")),
            );
            self.keyed(rel, &keys, &sql, &args, &ks, "update").await?;
        }
        if new.is_empty() {
            return Ok(());
        }
        let n = rel.columns.len();
        let args: Vec<Vec<Option<&str>>> = (0..n)
            .map(|j| new.iter().map(|row| text(row.get(j))).collect())
            .collect();
        let sql = format!(
            "INSERT INTO {t} ({}) OVERRIDING SYSTEM VALUE SELECT {} FROM unnest({}) AS v({})",
            list(n, &col),
            list(n, &|j| format!("v.c{j}::{}", rel.types[j])),
            list(n, &|j| format!("${}::text[]", j + 1)),
            list(n, &|j| format!("c{j}")),
        );
        self.run(&sql, &args, "insert", new.len(), &t).await?;
        Ok(())
    }

    /// Runs a statement that returns nothing (BEGIN, COMMIT).
    async fn sql(&self, sql: &str) -> Result<(), ReplayError> {
        self.client
            .batch_execute(sql)
            .await
            .map_err(|e| self.err(format!("{sql}: {}", crate::error::DbError::from(e))))
    }

    /// Runs a netted statement changing `n` rows of table `t`.
    async fn run(
        &self,
        sql: &str,
        args: &[Vec<Option<&str>>],
        what: &str,
        n: usize,
        t: &str,
    ) -> Result<Vec<tokio_postgres::Row>, ReplayError> {
        self.client
            .query_typed(sql, &text_arrays(args))
            .await
            .map_err(|e| {
                self.err(format!(
                    "the target refused the {what} of {n} rows of {t}: {}",
                    crate::error::DbError::from(e)
                ))
            })
    }

    /// Runs a netted `DELETE` or `UPDATE` of the rows with keys `expected`
    /// (its `RETURNING` gives the keys it found) and checks it found each.
    async fn keyed(
        &self,
        rel: &Relation,
        keys: &[usize],
        sql: &str,
        args: &[Vec<Option<&str>>],
        expected: &[&Vec<String>],
        what: &str,
    ) -> Result<(), ReplayError> {
        let t = rel.qualified();
        let rows = self.run(sql, args, what, expected.len(), &t).await?;
        if rows.len() == expected.len() {
            return Ok(());
        }
        let found: std::collections::HashSet<Vec<String>> = rows
            .iter()
            .map(|r| {
                (0..keys.len())
                    .map(|j| r.try_get::<_, String>(j).unwrap_or_default())
                    .collect()
            })
            .collect();
        let missing: Vec<String> = expected
            .iter()
            .filter(|k| !found.contains(**k))
            .take(3)
            .map(|k| {
                keys.iter()
                    .zip(k.iter())
                    .map(|(i, v)| format!("{} = {}", ident(&rel.columns[*i].0), quote(v)))
                    .collect::<Vec<_>>()
                    .join(" AND ")
            })
            .collect();
        if missing.is_empty() {
            return Err(self.err(
                format!(
                    "the {what} of the {} rows of {t} that the changes name changed {}: the target does not hold the state the changes were made on",
                    expected.len(),
                    rows.len()
                ),
            ));
        }
        Err(self.err(
            format!(
                "{} of {} rows of {t} that the changes update or delete are not on the target (such as the row with {}): the target does not hold the state the changes were made on",
                expected.len().saturating_sub(rows.len()),
                expected.len(),
                missing.join("; ")
            ),
        ))
    }

    fn err(&self, what: String) -> ReplayError {
        ReplayError::Apply {
            shard: self.shard.to_string(),
            at: self.at.clone(),
            what,
        }
    }
}

struct Ctx<'a> {
    client: &'a Client,
    /// Connections netted changes apply on, `client` included, each table
    /// always on the same one (see [`Ctx::flush_net`]).
    ways: usize,
    /// Whether changes to tables with a key are netted (see [`Net`]).
    net: bool,
    target: &'a Shard,
    db: &'a str,
    key: &'a str,
    from: Lsn,
    to: Lsn,
}

impl Ctx<'_> {
    fn corrupt(&self, what: String) -> ReplayError {
        ReplayError::Capture(CaptureError::Corrupt {
            key: self.key.to_string(),
            what,
        })
    }

    async fn apply_segment(
        &self,
        raw: &[u8],
        relations: &mut HashMap<u32, Relation>,
        group: &mut Group,
        applied: &mut Lsn,
    ) -> Result<(u64, u64), ReplayError> {
        let mut at = 0usize;
        let mut commit_lsn = Lsn(0);
        let mut wanted = false;
        let (mut txns, mut count) = (0u64, 0u64);
        while at < raw.len() {
            let (lsn, data, next) =
                next_record(raw, at).ok_or_else(|| self.corrupt("truncated record".into()))?;
            at = next;
            let mut r = Reader::new(data, 1);
            let bad = || self.corrupt(format!("unreadable change at {}", Lsn(lsn)));
            match data.first() {
                Some(b'B') => {
                    // A Begin carries its transaction's commit LSN: whether
                    // it is replayed is known before its changes are read,
                    // so they stream to the target however many there are.
                    commit_lsn = Lsn(be_u64(data, 1).ok_or_else(bad)?);
                    wanted =
                        commit_lsn >= self.from && commit_lsn < self.to && commit_lsn > *applied;
                }
                Some(b'R') => {
                    let id = data
                        .get(1..5)
                        .map(|b| u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
                        .ok_or_else(bad)?;
                    let before = relations.get(&id).map(|r| r.version);
                    describe(&mut r, relations).ok_or_else(bad)?;
                    // Netted changes to the old description go first.
                    if before.is_some_and(|v| group.net.contains_key(&v))
                        && relations.get(&id).map(|r| r.version) != before
                    {
                        self.flush_net(group).await?;
                    }
                }
                Some(kind @ (b'I' | b'U' | b'D' | b'T')) if wanted => {
                    let change = Change { lsn, commit_lsn };
                    match self.change(*kind, &mut r, relations, change, group).await? {
                        Outcome::Op(op) => {
                            // In order after every netted change before it.
                            self.flush_net(group).await?;
                            self.push(group, op, commit_lsn).await?;
                            count += 1;
                        }
                        Outcome::Netted => {
                            count += 1;
                            if group.net_changes >= NET_CHANGES || group.net_bytes >= NET_BYTES {
                                self.flush_net(group).await?;
                            }
                        }
                        Outcome::Nothing => {}
                    }
                }
                Some(b'C') if wanted => {
                    wanted = false;
                    *applied = commit_lsn;
                    txns += 1;
                    group.transactions += 1;
                    if group.transactions >= GROUP_TRANSACTIONS
                        || group.statements >= GROUP_STATEMENTS
                    {
                        self.commit(group).await?;
                    }
                }
                // Types, origins, logical messages, and the changes of
                // transactions outside the range: nothing to apply.
                _ => {}
            }
        }
        Ok((txns, count))
    }

    /// Adds a statement to the group (opening it), sending the batch when
    /// it is full.
    async fn push(&self, group: &mut Group, op: Op, commit_lsn: Lsn) -> Result<(), ReplayError> {
        if op.has_nul() {
            return Err(self.corrupt(format!("a change at {commit_lsn} holds a NUL byte")));
        }
        self.begin(group, commit_lsn).await?;
        group.bytes += op.bytes();
        group.direct = true;
        group.ops.push(op);
        group.statements += 1;
        if group.ops.len() >= BATCH_STATEMENTS || group.bytes >= BATCH_BYTES {
            self.send(group).await?;
        }
        Ok(())
    }

    /// Opens the group if needed, for a change of the transaction that
    /// commits at `commit_lsn`.
    async fn begin(&self, group: &mut Group, commit_lsn: Lsn) -> Result<(), ReplayError> {
        if !group.open {
            self.client
                .batch_execute("BEGIN")
                .await
                .map_err(|e| self.apply_err(commit_lsn, format!("BEGIN: {e}")))?;
            group.open = true;
        }
        group.first.get_or_insert(commit_lsn);
        group.last = commit_lsn;
        Ok(())
    }

    /// Sends the group's unsent statements in one simple-query message and
    /// checks that each that must change one row did; a statement the
    /// target refuses is named (the replies before the error count the
    /// statements that ran).
    async fn send(&self, group: &mut Group) -> Result<(), ReplayError> {
        if group.ops.is_empty() {
            return Ok(());
        }
        let mut sql = String::with_capacity(group.bytes + 32 * group.ops.len());
        for op in &group.ops {
            op.write(&mut sql);
        }
        let fail = |what: String| ReplayError::Apply {
            shard: self.target.name.clone(),
            at: format!("database {} {}", self.db, group.span()),
            what,
        };
        let mut problem = None;
        let mut done = 0usize;
        match self.client.simple_query_raw(&sql).await {
            Err(e) => {
                problem = Some(format!(
                    "the target refused the batch: {}",
                    crate::error::DbError::from(e)
                ))
            }
            Ok(stream) => {
                let mut stream = std::pin::pin!(stream);
                while let Some(message) = stream.next().await {
                    match message {
                        Ok(SimpleQueryMessage::CommandComplete(n)) => {
                            let op = group.ops.get(done);
                            done += 1;
                            if let Some(op) = op.filter(|op| op.one() && n != 1) {
                                problem = Some(format!(
                                    "`{}` changed {n} rows instead of 1: the target does not hold the state the change was made on",
                                    op.shown()
                                ));
                                break;
                            }
                        }
                        Ok(_) => {}
                        Err(e) => {
                            let shown = group
                                .ops
                                .get(done)
                                .map(Op::shown)
                                .unwrap_or_else(|| "the batch".into());
                            problem = Some(format!(
                                "the target refused `{shown}`: {}",
                                crate::error::DbError::from(e)
                            ));
                            break;
                        }
                    }
                }
            }
        }
        if problem.is_none() && done != group.ops.len() {
            problem = Some(format!(
                "the target answered {done} of {} statements",
                group.ops.len()
            ));
        }
        if let Some(what) = problem {
            drop(self.client.batch_execute("ROLLBACK").await);
            return Err(fail(what));
        }
        group.ops.clear();
        group.bytes = 0;
        Ok(())
    }

    /// Sends what is pending and commits the group.
    async fn commit(&self, group: &mut Group) -> Result<(), ReplayError> {
        if !group.open {
            return Ok(());
        }
        self.flush_net(group).await?;
        self.send(group).await?;
        self.client
            .batch_execute("COMMIT")
            .await
            .map_err(|e| self.apply_err(group.last, format!("COMMIT: {e}")))?;
        let prepared = std::mem::take(&mut group.prepared);
        let assigned = std::mem::take(&mut group.assigned);
        let extra = std::mem::take(&mut group.extra);
        *group = Group {
            prepared,
            assigned,
            extra,
            ..Group::default()
        };
        Ok(())
    }

    /// [`netted_key`], when this replay nets changes.
    fn netted_key(&self, rel: &Relation, tuple: &[Value], row: &[Value]) -> Option<Vec<String>> {
        netted_key(rel, tuple, row).filter(|_| self.net)
    }

    /// Applies the netted changes, after the statements before them.
    ///
    /// With more connections, tables are dealt to them (each table always
    /// to the same one, so its changes keep their order) and applied at
    /// once; the others commit theirs at once, in a transaction of their
    /// own, and the main connection first commits statements it sent, so
    /// that no connection waits for a row lock another holds. Order
    /// between tables does not matter: no trigger or foreign-key check
    /// runs in a replay session.
    async fn flush_net(&self, group: &mut Group) -> Result<(), ReplayError> {
        if group.net.is_empty() {
            return Ok(());
        }
        self.send(group).await?;
        let nets = std::mem::take(&mut group.net);
        group.net_changes = 0;
        group.net_bytes = 0;
        let at = format!("database {} {}", self.db, group.span());
        if self.ways == 1 {
            let ctx = NetCtx {
                client: self.client,
                shard: &self.target.name,
                at,
            };
            for net in nets.into_values() {
                ctx.apply(net).await?;
            }
            return Ok(());
        }
        if group.direct {
            self.client
                .batch_execute("COMMIT; BEGIN")
                .await
                .map_err(|e| self.apply_err(group.last, format!("COMMIT: {e}")))?;
            group.direct = false;
        }
        let ways = self.ways;
        let mut shares: Vec<Vec<Net>> = (0..ways).map(|_| Vec::new()).collect();
        for net in nets.into_values() {
            let table = (net.rel.schema.clone(), net.rel.name.clone());
            let n = group.assigned.len();
            let i = *group.assigned.entry(table).or_insert(n % ways);
            shares[i].push(net);
        }
        let needed = shares.iter().rposition(|s| !s.is_empty()).unwrap_or(0);
        while group.extra.len() < needed {
            group.extra.push(session(self.target, self.db).await?);
        }
        let extra = &group.extra;
        let runs = shares
            .into_iter()
            .enumerate()
            .filter(|(_, share)| !share.is_empty())
            .map(|(i, share)| {
                let client = if i == 0 { self.client } else { &extra[i - 1] };
                let ctx = NetCtx {
                    client,
                    shard: &self.target.name,
                    at: at.clone(),
                };
                async move {
                    if i > 0 {
                        ctx.sql("BEGIN").await?;
                    }
                    for net in share {
                        ctx.apply(net).await?;
                    }
                    if i > 0 {
                        ctx.sql("COMMIT").await?;
                    }
                    Ok::<(), ReplayError>(())
                }
            });
        futures_util::future::try_join_all(runs).await?;
        Ok(())
    }

    /// Commits the last group and waits until every commit of the replay
    /// is on disk (the session's commits did not wait, one by one).
    async fn finish(&self, group: &mut Group) -> Result<(), ReplayError> {
        self.commit(group).await?;
        self.client
            .batch_execute(
                "BEGIN; SET LOCAL synchronous_commit = on; SELECT pg_catalog.txid_current(); COMMIT",
            )
            .await
            .map_err(|e| self.apply_err(group.last, format!("the final durable commit: {e}")))
    }

    /// The statement a row change ('I', 'U', 'D') or truncation ('T')
    /// becomes; `None` for an update that changes nothing replayable.
    /// Changes to a table with a key become prepared statements with the
    /// values as text parameters, cast by the statement to the column
    /// types (the target parses and plans each shape once); the rest
    /// (`REPLICA IDENTITY FULL`, TRUNCATE) become statements with literals.
    async fn change(
        &self,
        kind: u8,
        r: &mut Reader<'_>,
        relations: &mut HashMap<u32, Relation>,
        at: Change,
        group: &mut Group,
    ) -> Result<Outcome, ReplayError> {
        let bad = || self.corrupt(format!("unreadable change at {}", Lsn(at.lsn)));
        match kind {
            b'I' => {
                let id = r.u32().ok_or_else(bad)?;
                let _n = r.u8().ok_or_else(bad)?;
                let new = r.tuple().ok_or_else(bad)?;
                let rel = self.relation(relations, id, at).await?;
                if let Some(k) = self.netted_key(&rel, &new, &new) {
                    self.begin(group, at.commit_lsn).await?;
                    group.netted(&rel, None, k, Some(new));
                    return Ok(Outcome::Netted);
                }
                let all: Vec<usize> = (0..rel.columns.len()).collect();
                let typed = rel.types.len() == rel.columns.len();
                if let Some(params) = texts(&new, &all, true).filter(|_| typed) {
                    let shape = Shape::new(&rel, b'I', all, Vec::new());
                    return self
                        .prepared(group, shape, &rel, params, at)
                        .await
                        .map(Outcome::Op);
                }
                let cols: Vec<String> = rel.columns.iter().map(|c| ident(&c.0)).collect();
                let vals: Vec<String> = new.iter().map(literal).collect();
                // The source's value for an identity column GENERATED
                // ALWAYS, not a new one from the target's sequence.
                Ok(Outcome::Op(Op::Text {
                    sql: format!(
                        "INSERT INTO {} ({}) OVERRIDING SYSTEM VALUE VALUES ({})",
                        rel.qualified(),
                        cols.join(", "),
                        vals.join(", ")
                    ),
                    one: true,
                }))
            }
            b'U' => {
                let id = r.u32().ok_or_else(bad)?;
                let mut kind = r.u8().ok_or_else(bad)?;
                let mut old = None;
                if kind == b'K' || kind == b'O' {
                    old = Some(r.tuple().ok_or_else(bad)?);
                    kind = r.u8().ok_or_else(bad)?;
                }
                if kind != b'N' {
                    return Err(bad());
                }
                let new = r.tuple().ok_or_else(bad)?;
                let rel = self.relation(relations, id, at).await?;
                let key = old.as_ref().unwrap_or(&new);
                if let (Some(was), Some(is)) = (
                    self.netted_key(&rel, key, &new),
                    self.netted_key(&rel, &new, &new),
                ) {
                    self.begin(group, at.commit_lsn).await?;
                    group.netted(&rel, Some(was), is, Some(new));
                    return Ok(Outcome::Netted);
                }
                // Unchanged TOASTed values ('u') keep the target's value;
                // a key column is set only when the key changed (an identity
                // GENERATED ALWAYS column may not be set to a value at all).
                let set: Vec<usize> = rel
                    .columns
                    .iter()
                    .zip(&new)
                    .enumerate()
                    .filter(|(_, (_, v))| !matches!(v, Value::Unchanged))
                    .filter(|(i, ((_, key), v))| {
                        !*key || old.as_ref().is_some_and(|o| o.get(*i) != Some(*v))
                    })
                    .map(|(i, _)| i)
                    .collect();
                if set.is_empty() {
                    return Ok(Outcome::Nothing);
                }
                if let Some(keys) = rel.key_columns() {
                    if let (Some(mut params), Some(kp)) =
                        (texts(&new, &set, true), texts(key, &keys, false))
                    {
                        params.extend(kp);
                        let shape = Shape::new(&rel, b'U', set, keys);
                        return self
                            .prepared(group, shape, &rel, params, at)
                            .await
                            .map(Outcome::Op);
                    }
                }
                let sets: Vec<String> = set
                    .iter()
                    .map(|i| format!("{} = {}", ident(&rel.columns[*i].0), literal(&new[*i])))
                    .collect();
                Ok(Outcome::Op(Op::Text {
                    sql: format!(
                        "UPDATE {} SET {} {}",
                        rel.rows_of(),
                        sets.join(", "),
                        identity(&rel, key)
                    ),
                    one: true,
                }))
            }
            b'D' => {
                let id = r.u32().ok_or_else(bad)?;
                let _kind = r.u8().ok_or_else(bad)?;
                let old = r.tuple().ok_or_else(bad)?;
                let rel = self.relation(relations, id, at).await?;
                if let Some(k) = self.netted_key(&rel, &old, &[]) {
                    self.begin(group, at.commit_lsn).await?;
                    group.netted(&rel, Some(k.clone()), k, None);
                    return Ok(Outcome::Netted);
                }
                if let Some(keys) = rel.key_columns() {
                    if let Some(params) = texts(&old, &keys, false) {
                        let shape = Shape::new(&rel, b'D', Vec::new(), keys);
                        return self
                            .prepared(group, shape, &rel, params, at)
                            .await
                            .map(Outcome::Op);
                    }
                }
                Ok(Outcome::Op(Op::Text {
                    sql: format!("DELETE FROM {} {}", rel.rows_of(), identity(&rel, &old)),
                    one: true,
                }))
            }
            b'T' => {
                let n = r.u32().ok_or_else(bad)?;
                let options = r.u8().ok_or_else(bad)?;
                let mut names = Vec::new();
                for _ in 0..n {
                    let id = r.u32().ok_or_else(bad)?;
                    names.push(self.relation(relations, id, at).await?.qualified());
                }
                let cascade = if options & 1 != 0 { " CASCADE" } else { "" };
                let restart = if options & 2 != 0 {
                    " RESTART IDENTITY"
                } else {
                    ""
                };
                Ok(Outcome::Op(Op::Text {
                    sql: format!("TRUNCATE {}{restart}{cascade}", names.join(", ")),
                    one: false,
                }))
            }
            _ => Ok(Outcome::Nothing),
        }
    }

    /// The execution of `shape`'s prepared statement with `params`, the
    /// statement prepared on first use (SQL `PREPARE`: executing it by name
    /// in a batch skips parsing and planning each change, and a batch
    /// stays one message).
    async fn prepared(
        &self,
        group: &mut Group,
        shape: Shape,
        rel: &Relation,
        params: Vec<Option<String>>,
        at: Change,
    ) -> Result<Op, ReplayError> {
        if let Some((name, sql)) = group.prepared.get(&shape) {
            return Ok(Op::Prepared {
                name: name.clone(),
                sql: sql.clone(),
                params,
                one: true,
            });
        }
        if group.prepared.len() >= prepared_statements() {
            // The unsent statements execute prepared ones by name: they go
            // before every prepared statement is deallocated.
            self.send(group).await?;
            self.client
                .batch_execute("DEALLOCATE ALL")
                .await
                .map_err(|e| self.apply_err(at.commit_lsn, format!("DEALLOCATE ALL: {e}")))?;
            group.prepared.clear();
        }
        let (sql, n) = shape.sql(rel);
        let name = format!(
            "shardcut_replay_{}",
            PREPARED_NAMES.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
        );
        let types = vec!["text"; n].join(", ");
        self.client
            .batch_execute(&format!("PREPARE {name} ({types}) AS {sql}"))
            .await
            .map_err(|e| {
                self.apply_err(
                    at.commit_lsn,
                    format!(
                        "preparing `{}`: {}",
                        excerpt(&sql),
                        crate::error::DbError::from(e)
                    ),
                )
            })?;
        let (name, sql) = (Arc::<str>::from(name), Arc::<str>::from(sql));
        group.prepared.insert(shape, (name.clone(), sql.clone()));
        Ok(Op::Prepared {
            name,
            sql,
            params,
            one: true,
        })
    }

    /// The relation `id`, checked against the target table on first use
    /// (only for transactions that will be applied).
    async fn relation(
        &self,
        relations: &mut HashMap<u32, Relation>,
        id: u32,
        at: Change,
    ) -> Result<Relation, ReplayError> {
        let (lsn, commit_lsn) = (at.lsn, at.commit_lsn);
        let rel = relations.get(&id).cloned().ok_or_else(|| {
            self.corrupt(format!(
                "a change at {} names relation {id}, which was never described",
                Lsn(lsn)
            ))
        })?;
        let wanted = commit_lsn >= self.from && commit_lsn < self.to;
        if rel.checked || !wanted {
            return Ok(rel);
        }
        let rows = self
            .client
            .query(
                "SELECT a.attname::text, pg_catalog.format_type(a.atttypid, a.atttypmod) FROM pg_attribute a \
                 WHERE a.attrelid = to_regclass($1) AND a.attnum > 0 AND NOT a.attisdropped \
                 AND a.attgenerated = '' ORDER BY a.attnum",
                &[&rel.qualified()],
            )
            .await
            .map_err(|e| {
                self.apply_err(
                    commit_lsn,
                    format!("reading the columns of {}: {e}", rel.qualified()),
                )
            })?;
        let target: Vec<String> = rows.iter().filter_map(|r| r.try_get(0).ok()).collect();
        let captured: Vec<String> = rel.columns.iter().map(|c| c.0.clone()).collect();
        if target.is_empty() {
            return Err(ReplayError::Refused {
                shard: self.target.name.clone(),
                what: format!(
                    "captured changes at {commit_lsn} write to {}.{}.{}, which the base backup does not have: it was created after the backup, and PostgreSQL logical decoding does not carry CREATE TABLE; restore to a point before it, or take a new backup",
                    self.db, rel.schema, rel.name
                ),
            });
        }
        if target != captured {
            return Err(ReplayError::Refused {
                shard: self.target.name.clone(),
                what: format!(
                    "captured changes at {commit_lsn} write to {}.{}.{} with columns ({}) but the restored table has ({}): its definition changed (ALTER TABLE) after the base backup, and PostgreSQL logical decoding does not carry DDL; restore to a point before it, or take a new backup",
                    self.db,
                    rel.schema,
                    rel.name,
                    captured.join(", "),
                    target.join(", ")
                ),
            });
        }
        let types: Vec<String> = rows.iter().filter_map(|r| r.try_get(1).ok()).collect();
        if types.len() != target.len() {
            return Err(self.apply_err(
                commit_lsn,
                format!("reading the column types of {}", rel.qualified()),
            ));
        }
        let mut rel = rel;
        rel.checked = true;
        rel.types = types;
        let kind = self
            .client
            .query_one(
                "SELECT c.relkind = 'p', \
                 (SELECT count(*) FROM pg_index i WHERE i.indrelid = c.oid AND (i.indisunique OR i.indisexclusion)), \
                 ARRAY(SELECT a.attname::text FROM pg_attribute a WHERE a.attrelid = c.oid AND a.attnum > 0 \
                       AND NOT a.attisdropped AND a.attidentity = 'a') \
                 FROM pg_class c WHERE c.oid = to_regclass($1)",
                &[&rel.qualified()],
            )
            .await
            .and_then(|r| {
                Ok((
                    r.try_get::<_, bool>(0)?,
                    r.try_get::<_, i64>(1)?,
                    r.try_get::<_, Vec<String>>(2)?,
                ))
            })
            .map_err(|e| {
                self.apply_err(
                    commit_lsn,
                    format!("reading the kind of {}: {e}", rel.qualified()),
                )
            })?;
        let (partitioned, unique, always) = kind;
        rel.partitioned = partitioned;
        rel.updatable = unique == 1
            && always
                .iter()
                .all(|a| rel.columns.iter().any(|(name, key)| name == a && *key));
        relations.insert(id, rel.clone());
        Ok(rel)
    }

    fn apply_err(&self, commit_lsn: Lsn, what: String) -> ReplayError {
        ReplayError::Apply {
            shard: self.target.name.clone(),
            at: format!("database {} transaction committed at {commit_lsn}", self.db),
            what,
        }
    }
}

/// Moves each sequence of the target forward to at least its value at the
/// mark: logical decoding carries no sequence changes, and a sequence left
/// where the base backup had it would hand out keys the source already
/// used. A sequence already further is left alone.
pub async fn sequences_forward(
    target: &Shard,
    sequences: &[crate::manifest::SequenceValue],
) -> Result<(), ReplayError> {
    let mut by_db: std::collections::BTreeMap<&str, Vec<&crate::manifest::SequenceValue>> =
        Default::default();
    for s in sequences {
        by_db.entry(s.database.as_str()).or_default().push(s);
    }
    for (db, seqs) in by_db {
        let client = reader(target, db, std::time::Duration::from_secs(10)).await?;
        for s in seqs {
            // `name` comes from the repository: it is passed as a value and
            // resolved by to_regclass, never spliced into the statement.
            client
                .query(
                    "SELECT pg_catalog.setval(to_regclass($1), $2, $3) FROM pg_sequences p \
                     WHERE to_regclass($1) IS NOT NULL \
                     AND to_regclass(quote_ident(p.schemaname) || '.' || quote_ident(p.sequencename)) = to_regclass($1) \
                     AND (p.last_value IS NULL OR p.last_value < $2)",
                    &[&s.name, &s.last_value, &s.is_called],
                )
                .await
                .map_err(|e| ReplayError::Apply {
                    shard: target.name.clone(),
                    at: format!("database {db} sequence {}", s.name),
                    what: crate::error::DbError::from(e).to_string(),
                })?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::{netted_key, Group, Relation, Value};

    fn rel() -> Relation {
        Relation {
            schema: "public".into(),
            name: "t".into(),
            columns: vec![("id".into(), true), ("v".into(), false)],
            full: false,
            checked: true,
            types: vec!["integer".into(), "text".into()],
            version: 1,
            partitioned: false,
            updatable: true,
        }
    }

    fn row(id: &str, v: &str) -> Vec<Value> {
        vec![Value::Text(id.into()), Value::Text(v.into())]
    }

    fn key(id: &str) -> Vec<String> {
        vec![id.into()]
    }

    /// (existed before, row after) of each key the changes touched.
    fn net(g: &Group) -> Vec<(String, bool, Option<String>)> {
        let mut out: Vec<_> = g.net[&1]
            .rows
            .iter()
            .map(|(k, n)| {
                let v = n.row.as_ref().map(|r| match &r[1] {
                    Value::Text(t) => t.clone(),
                    other => format!("{other:?}"),
                });
                (k[0].clone(), n.existed, v)
            })
            .collect();
        out.sort();
        out
    }

    #[test]
    fn changes_net_to_each_keys_state_before_and_after() {
        let r = rel();
        let mut g = Group::default();
        // Inserted then deleted: nothing to do, nothing was there.
        g.netted(&r, None, key("1"), Some(row("1", "a")));
        g.netted(&r, Some(key("1")), key("1"), None);
        // Updated twice: there before, the last row after.
        g.netted(&r, Some(key("2")), key("2"), Some(row("2", "b")));
        g.netted(&r, Some(key("2")), key("2"), Some(row("2", "c")));
        // Deleted, then inserted again: there before and after.
        g.netted(&r, Some(key("3")), key("3"), None);
        g.netted(&r, None, key("3"), Some(row("3", "d")));
        // Key changed 4 -> 5, then 5 -> 4: 4 there before and after, 5
        // neither.
        g.netted(&r, Some(key("4")), key("5"), Some(row("5", "e")));
        g.netted(&r, Some(key("5")), key("4"), Some(row("4", "f")));
        assert_eq!(
            net(&g),
            vec![
                ("1".into(), false, None),
                ("2".into(), true, Some("c".into())),
                ("3".into(), true, Some("d".into())),
                ("4".into(), true, Some("f".into())),
                ("5".into(), false, None),
            ]
        );
        assert_eq!(g.net_changes, 8);
    }

    #[test]
    fn an_unchanged_toasted_value_or_a_null_key_is_not_netted() {
        let r = rel();
        let toasted = vec![Value::Text("1".into()), Value::Unchanged];
        assert_eq!(netted_key(&r, &toasted, &toasted), None);
        let null_key = vec![Value::Null, Value::Text("x".into())];
        assert_eq!(netted_key(&r, &null_key, &null_key), None);
        assert_eq!(netted_key(&r, &row("7", "x"), &[]), Some(key("7")));
        let full = Relation {
            full: true,
            ..rel()
        };
        assert_eq!(netted_key(&full, &row("7", "x"), &[]), None);
    }
}
