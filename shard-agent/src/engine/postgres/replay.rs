//! Replaying captured pgoutput segments into a PostgreSQL target.
//!
//! Each captured transaction becomes one target transaction of INSERT,
//! UPDATE, DELETE and TRUNCATE statements. Values travel as the text the
//! source's output functions produced (under the same session settings on
//! both sides), written as quoted literals that the target casts to the
//! column type, so no value is reinterpreted on the way. Rows are found by
//! their replica identity (the primary key, or the whole old row); an
//! UPDATE or DELETE that does not hit exactly one row means the target
//! has diverged, and replay stops rather than going on silently.
//!
//! Logical decoding carries no DDL: a relation whose columns differ from
//! the restored table's is refused, naming the table and both column lists.

use std::collections::HashMap;

use std::sync::Arc;

use futures_util::StreamExt;
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
}

impl Relation {
    fn qualified(&self) -> String {
        format!("{}.{}", ident(&self.schema), ident(&self.name))
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
    let (checked, types, version) = match same {
        Some(old) => (old.checked, old.types.clone(), old.version),
        None => (
            false,
            Vec::new(),
            DESCRIPTIONS.fetch_add(1, std::sync::atomic::Ordering::Relaxed),
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
            rel.qualified()
        )
    }
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
    let mut report = ReplayReport::default();
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
    client
        .batch_execute("SET synchronous_commit = off")
        .await
        .map_err(|e| ReplayError::Apply {
            shard: target.name.clone(),
            at: format!("database {db}"),
            what: crate::error::DbError::from(e).to_string(),
        })?;
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
            client: &client,
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
        client: &client,
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
    std::env::var("SHARDCUT_REPLAY_PREPARED")
        .ok()
        .and_then(|v| v.parse::<usize>().ok())
        .filter(|n| *n > 0)
        .unwrap_or(PREPARED_STATEMENTS)
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
                    rel.qualified(),
                    sets.join(", "),
                    conds.join(" AND ")
                )
            }
            _ => {
                let conds = assignments(&self.key, &mut param);
                format!(
                    "DELETE FROM {} WHERE {}",
                    rel.qualified(),
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

struct Ctx<'a> {
    client: &'a Client,
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
                Some(b'R') => describe(&mut r, relations).ok_or_else(bad)?,
                Some(kind @ (b'I' | b'U' | b'D' | b'T')) if wanted => {
                    let change = Change { lsn, commit_lsn };
                    let op = self.change(*kind, &mut r, relations, change, group).await?;
                    if let Some(op) = op {
                        self.push(group, op, commit_lsn).await?;
                        count += 1;
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
        if !group.open {
            self.client
                .batch_execute("BEGIN")
                .await
                .map_err(|e| self.apply_err(commit_lsn, format!("BEGIN: {e}")))?;
            group.open = true;
        }
        group.first.get_or_insert(commit_lsn);
        group.last = commit_lsn;
        group.bytes += op.bytes();
        group.ops.push(op);
        group.statements += 1;
        if group.ops.len() >= BATCH_STATEMENTS || group.bytes >= BATCH_BYTES {
            self.send(group).await?;
        }
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
        self.send(group).await?;
        self.client
            .batch_execute("COMMIT")
            .await
            .map_err(|e| self.apply_err(group.last, format!("COMMIT: {e}")))?;
        let prepared = std::mem::take(&mut group.prepared);
        *group = Group {
            prepared,
            ..Group::default()
        };
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
    ) -> Result<Option<Op>, ReplayError> {
        let bad = || self.corrupt(format!("unreadable change at {}", Lsn(at.lsn)));
        match kind {
            b'I' => {
                let id = r.u32().ok_or_else(bad)?;
                let _n = r.u8().ok_or_else(bad)?;
                let new = r.tuple().ok_or_else(bad)?;
                let rel = self.relation(relations, id, at.lsn, at.commit_lsn).await?;
                let all: Vec<usize> = (0..rel.columns.len()).collect();
                let typed = rel.types.len() == rel.columns.len();
                if let Some(params) = texts(&new, &all, true).filter(|_| typed) {
                    let shape = Shape::new(&rel, b'I', all, Vec::new());
                    return self
                        .prepared(group, shape, &rel, params, at)
                        .await
                        .map(Some);
                }
                let cols: Vec<String> = rel.columns.iter().map(|c| ident(&c.0)).collect();
                let vals: Vec<String> = new.iter().map(literal).collect();
                // The source's value for an identity column GENERATED
                // ALWAYS, not a new one from the target's sequence.
                Ok(Some(Op::Text {
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
                let rel = self.relation(relations, id, at.lsn, at.commit_lsn).await?;
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
                    return Ok(None);
                }
                let key = old.as_ref().unwrap_or(&new);
                if let Some(keys) = rel.key_columns() {
                    if let (Some(mut params), Some(kp)) =
                        (texts(&new, &set, true), texts(key, &keys, false))
                    {
                        params.extend(kp);
                        let shape = Shape::new(&rel, b'U', set, keys);
                        return self
                            .prepared(group, shape, &rel, params, at)
                            .await
                            .map(Some);
                    }
                }
                let sets: Vec<String> = set
                    .iter()
                    .map(|i| format!("{} = {}", ident(&rel.columns[*i].0), literal(&new[*i])))
                    .collect();
                Ok(Some(Op::Text {
                    sql: format!(
                        "UPDATE {} SET {} {}",
                        rel.qualified(),
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
                let rel = self.relation(relations, id, at.lsn, at.commit_lsn).await?;
                if let Some(keys) = rel.key_columns() {
                    if let Some(params) = texts(&old, &keys, false) {
                        let shape = Shape::new(&rel, b'D', Vec::new(), keys);
                        return self
                            .prepared(group, shape, &rel, params, at)
                            .await
                            .map(Some);
                    }
                }
                Ok(Some(Op::Text {
                    sql: format!("DELETE FROM {} {}", rel.qualified(), identity(&rel, &old)),
                    one: true,
                }))
            }
            b'T' => {
                let n = r.u32().ok_or_else(bad)?;
                let options = r.u8().ok_or_else(bad)?;
                let mut names = Vec::new();
                for _ in 0..n {
                    let id = r.u32().ok_or_else(bad)?;
                    names.push(
                        self.relation(relations, id, at.lsn, at.commit_lsn)
                            .await?
                            .qualified(),
                    );
                }
                let cascade = if options & 1 != 0 { " CASCADE" } else { "" };
                let restart = if options & 2 != 0 {
                    " RESTART IDENTITY"
                } else {
                    ""
                };
                Ok(Some(Op::Text {
                    sql: format!("TRUNCATE {}{restart}{cascade}", names.join(", ")),
                    one: false,
                }))
            }
            _ => Ok(None),
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
        lsn: u64,
        commit_lsn: Lsn,
    ) -> Result<Relation, ReplayError> {
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
