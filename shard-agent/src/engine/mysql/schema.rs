//! The MySQL/MariaDB schema as `SHOW CREATE` gives it, one JSON file per database.

use mysql_async::prelude::Queryable;
use mysql_async::{Conn, Row};
use serde::{Deserialize, Serialize};
use topology::Shard;

use super::lexer;
use super::sql::text;
use super::sql::{ident, query_err, quote_literal};
use super::Table;
use crate::error::{AgentError, DbError};
use crate::manifest::qualified_name;

/// Everything needed to recreate one database, in restore order: the
/// database, sequences (a table's `DEFAULT NEXTVAL(s)` needs its sequence
/// to exist) and tables (before data), then views, routines, triggers and
/// events (after data, so triggers do not fire during the load).
#[derive(Debug, Default, Serialize, Deserialize)]
pub struct DatabaseSchema {
    pub database: String,
    pub create_database: String,
    /// MariaDB sequences (`CREATE SEQUENCE`), each with its state. Absent
    /// in backups from before sequences were backed up (those refused a
    /// shard holding one).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub sequences: Vec<Object>,
    pub tables: Vec<Object>,
    pub views: Vec<Object>,
    pub routines: Vec<Object>,
    pub triggers: Vec<Object>,
    pub events: Vec<Object>,
}

#[derive(Debug, Default, Serialize, Deserialize)]
pub struct Object {
    pub name: String,
    pub sql: String,
    /// For a trigger: the table it belongs to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub table: Option<String>,
    /// For a routine, trigger or event: the `sql_mode` it was created
    /// under, which the server keeps with it and runs its body under
    /// (`PIPES_AS_CONCAT` makes `'a' || 'b'` a concatenation,
    /// `NO_BACKSLASH_ESCAPES` reads `'\n'` as two characters). Absent in
    /// backups from before it was kept.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sql_mode: Option<String>,
    /// For an event: the time zone of its schedule (its `STARTS`, `ENDS`
    /// and `AT` are written in it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub time_zone: Option<String>,
    /// For a routine, trigger or event: the `character_set_client` and
    /// `collation_connection` it was created under, which the server keeps
    /// with it: its string literals have that collation (`'a' = 'A'` is
    /// false under `utf8mb4_bin`, true under `utf8mb4_general_ci`). Absent
    /// in backups from before they were kept.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub character_set_client: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub collation_connection: Option<String>,
    /// For a sequence: its state, read after the cut.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub state: Option<SequenceState>,
}

/// A MariaDB sequence's state: the one row of its table, which an
/// `INSERT` into the sequence sets whole (as a replica applies a logged
/// change of it). `next_not_cached_value` is past every value the server
/// handed out, cached ones included: restored, the sequence goes on as the
/// source would after a restart, never giving a value twice. Read after
/// the cut, it is at or past the cut's; a point-in-time replay then sets
/// it as the binlog logged it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SequenceState {
    pub next_not_cached_value: i128,
    pub minimum_value: i128,
    pub maximum_value: i128,
    pub start_value: i128,
    pub increment: i128,
    pub cache_size: i128,
    pub cycle_option: i128,
    pub cycle_count: i128,
}

impl SequenceState {
    /// The columns of a sequence's table, in [`SequenceState`]'s order.
    pub const COLUMNS: &'static str = "next_not_cached_value, minimum_value, maximum_value, \
         start_value, increment, cache_size, cycle_option, cycle_count";

    fn values(&self) -> [i128; 8] {
        [
            self.next_not_cached_value,
            self.minimum_value,
            self.maximum_value,
            self.start_value,
            self.increment,
            self.cache_size,
            self.cycle_option,
            self.cycle_count,
        ]
    }

    /// The `INSERT` that sets sequence `db`.`name` to this state: numbers
    /// only, whatever the schema file held.
    pub fn insert_sql(&self, db: &str, name: &str) -> String {
        let values: Vec<String> = self.values().iter().map(i128::to_string).collect();
        format!(
            "INSERT INTO {}.{} ({}) VALUES ({})",
            ident(db),
            ident(name),
            Self::COLUMNS,
            values.join(", ")
        )
    }

    /// The `SELECT` of a sequence's state.
    pub fn select_sql(db: &str, name: &str) -> String {
        format!(
            "SELECT {} FROM {}.{}",
            Self::COLUMNS,
            ident(db),
            ident(name)
        )
    }

    /// The state in `row`, a row of [`Self::select_sql`].
    pub fn from_row(row: &Row) -> Result<SequenceState, String> {
        let mut v = [0i128; 8];
        for (i, slot) in v.iter_mut().enumerate() {
            let cell = text(row, i).map_err(|e| e.to_string())?;
            *slot = cell
                .as_deref()
                .and_then(|c| c.parse().ok())
                .ok_or_else(|| format!("column {} is {cell:?}, not an integer", i + 1))?;
        }
        let [next_not_cached_value, minimum_value, maximum_value, start_value, increment, cache_size, cycle_option, cycle_count] =
            v;
        Ok(SequenceState {
            next_not_cached_value,
            minimum_value,
            maximum_value,
            start_value,
            increment,
            cache_size,
            cycle_option,
            cycle_count,
        })
    }
}

/// Reads sequence `db`.`name`: its `SHOW CREATE SEQUENCE` and its state.
pub(super) async fn sequence(
    conn: &mut Conn,
    shard: &Shard,
    db: &str,
    name: &str,
) -> Result<Object, AgentError> {
    let show = format!("SHOW CREATE SEQUENCE {}.{}", ident(db), ident(name));
    let sql = show_create(conn, shard, &show, 1).await?;
    let state = sequence_state(conn, shard, db, name).await?;
    Ok(Object {
        name: name.to_string(),
        sql,
        state: Some(state),
        ..Object::default()
    })
}

/// The state of sequence `db`.`name` now.
pub(super) async fn sequence_state(
    conn: &mut Conn,
    shard: &Shard,
    db: &str,
    name: &str,
) -> Result<SequenceState, AgentError> {
    let sql = SequenceState::select_sql(db, name);
    let rows: Vec<Row> = conn.query(&sql).await.map_err(query_err(shard, &sql))?;
    let row = rows.first().ok_or_else(|| AgentError::Tool {
        shard: shard.name.clone(),
        what: format!("sequence {db}.{name} has no state (no row from `{sql}`)"),
    })?;
    SequenceState::from_row(row).map_err(|why| AgentError::Tool {
        shard: shard.name.clone(),
        what: format!("the state of sequence {db}.{name}: {why}"),
    })
}

/// Reads column `i` of the first row of `SHOW CREATE …`.
async fn show_create(
    conn: &mut Conn,
    shard: &Shard,
    sql: &str,
    column: usize,
) -> Result<String, AgentError> {
    let rows: Vec<Row> = conn.query(sql).await.map_err(query_err(shard, sql))?;
    create_text(&rows, column, shard, sql)
}

/// `SHOW CREATE` of a routine, trigger or event named `name`: the object,
/// with the `sql_mode` it was created under (column 1) and, for an event,
/// its time zone (column 2). The statement is column 2, an event's 3; the
/// `character_set_client` and `collation_connection` follow it.
async fn show_create_stored(
    conn: &mut Conn,
    shard: &Shard,
    sql: &str,
    event: bool,
    name: &str,
) -> Result<Object, AgentError> {
    let column = if event { 3 } else { 2 };
    let rows: Vec<Row> = conn.query(sql).await.map_err(query_err(shard, sql))?;
    let create = create_text(&rows, column, shard, sql)?;
    let cell = |i: usize| -> Result<Option<String>, AgentError> {
        match rows.first() {
            Some(r) => text(r, i).map_err(|source| AgentError::Query {
                shard: shard.name.clone(),
                what: sql.to_string(),
                source,
            }),
            None => Ok(None),
        }
    };
    Ok(Object {
        name: name.to_string(),
        sql: create,
        table: None,
        sql_mode: cell(1)?,
        time_zone: if event { cell(2)? } else { None },
        character_set_client: cell(column + 1)?,
        collation_connection: cell(column + 2)?,
        state: None,
    })
}

/// `SHOW CREATE TABLE` statements sent in one round trip: on 10,000 tables
/// the schema read, beside the data read, took 1.11-1.25 s instead of
/// 1.38-1.59 s (docs/BENCHMARKS.md, "Many tables: what changed").
const SHOW_CREATE_BATCH: usize = 32;

/// Column `column` of the first of `rows`, the result of `sql`. No row, or
/// an empty or NULL definition (what the server gives a user who may not
/// see a routine's body), is an error: stored, it would restore nothing.
fn create_text(
    rows: &[Row],
    column: usize,
    shard: &Shard,
    sql: &str,
) -> Result<String, AgentError> {
    let de = |source: DbError| AgentError::Query {
        shard: shard.name.clone(),
        what: sql.to_string(),
        source,
    };
    let definition = match rows.first() {
        Some(r) => text(r, column).map_err(de)?,
        None => None,
    };
    non_empty(definition, shard, sql)
}

fn non_empty(definition: Option<String>, shard: &Shard, sql: &str) -> Result<String, AgentError> {
    match definition {
        Some(d) if !d.trim().is_empty() => Ok(d),
        _ => Err(AgentError::NoDefinition {
            shard: shard.name.clone(),
            statement: sql.to_string(),
        }),
    }
}

async fn names(
    conn: &mut Conn,
    shard: &Shard,
    sql: String,
) -> Result<Vec<Vec<String>>, AgentError> {
    let rows: Vec<Row> = conn.query(&sql).await.map_err(query_err(shard, &sql))?;
    let mut out = Vec::new();
    for r in &rows {
        let mut v = Vec::new();
        for i in 0..r.len() {
            let cell = text(r, i).map_err(|source| AgentError::Query {
                shard: shard.name.clone(),
                what: sql.clone(),
                source,
            })?;
            v.push(cell.unwrap_or_default());
        }
        out.push(v);
    }
    Ok(out)
}

pub(super) async fn database_schema(
    conn: &mut Conn,
    shard: &Shard,
    database: &str,
    sequences: &[&str],
    tables: &[&Table],
) -> Result<DatabaseSchema, AgentError> {
    let db = ident(database);
    let lit = quote_literal(database);
    let mut s = DatabaseSchema {
        database: database.to_string(),
        create_database: show_create(conn, shard, &format!("SHOW CREATE DATABASE {db}"), 1).await?,
        ..Default::default()
    };
    for name in sequences {
        s.sequences
            .push(sequence(conn, shard, database, name).await?);
    }
    for group in tables.chunks(SHOW_CREATE_BATCH) {
        let statements: Vec<String> = group
            .iter()
            .map(|t| format!("SHOW CREATE TABLE {db}.{}", ident(&t.name)))
            .collect();
        // One round trip for the group: statements separated by `;`, each
        // name quoted whole, so no name can end one.
        let mut results = conn
            .query_iter(statements.join("; "))
            .await
            .map_err(query_err(shard, &statements[0]))?;
        for (t, statement) in group.iter().zip(&statements) {
            let rows: Vec<Row> = results
                .collect()
                .await
                .map_err(query_err(shard, statement))?;
            s.tables.push(Object {
                name: t.name.clone(),
                sql: create_text(&rows, 1, shard, statement)?,
                ..Object::default()
            });
        }
        results
            .drop_result()
            .await
            .map_err(query_err(shard, &statements[0]))?;
    }
    for v in names(
        conn,
        shard,
        format!(
            "SELECT TABLE_NAME FROM information_schema.VIEWS WHERE TABLE_SCHEMA = {lit} ORDER BY 1"
        ),
    )
    .await?
    {
        // A view may be left out like a table; one kept must not read a
        // table, view or sequence left out: no restore could create it.
        if shard.excludes(database, None, &v[0]) {
            continue;
        }
        let sql = show_create(
            conn,
            shard,
            &format!("SHOW CREATE VIEW {db}.{}", ident(&v[0])),
            1,
        )
        .await?;
        let left_out = lexer::qualified_names(&sql)
            .into_iter()
            .find(|(d, n)| shard.excludes(d, None, n));
        if let Some((d, n)) = left_out {
            return Err(AgentError::Tool {
                shard: shard.name.clone(),
                what: format!(
                    "view {} reads {}, which the shard's exclude_tables leaves out, so no restore could create the view; list the view in exclude_tables too, or back up {}",
                    qualified_name(database, None, &v[0]),
                    qualified_name(&d, None, &n),
                    qualified_name(&d, None, &n),
                ),
            });
        }
        s.views.push(Object {
            name: v[0].clone(),
            sql,
            ..Object::default()
        });
    }
    for r in names(conn, shard, format!("SELECT ROUTINE_NAME, ROUTINE_TYPE FROM information_schema.ROUTINES WHERE ROUTINE_SCHEMA = {lit} ORDER BY 2, 1")).await? {
        let kind = if r[1] == "FUNCTION" { "FUNCTION" } else { "PROCEDURE" };
        let show = format!("SHOW CREATE {kind} {db}.{}", ident(&r[0]));
        s.routines.push(show_create_stored(conn, shard, &show, false, &r[0]).await?);
    }
    for t in names(conn, shard, format!("SELECT TRIGGER_NAME, EVENT_OBJECT_TABLE FROM information_schema.TRIGGERS WHERE TRIGGER_SCHEMA = {lit} ORDER BY ACTION_ORDER, 1")).await? {
        // A trigger of a table left out goes with it (its restore would
        // fail creating it on a table that is not there).
        if shard.excludes(database, None, &t[1]) {
            continue;
        }
        let show = format!("SHOW CREATE TRIGGER {db}.{}", ident(&t[0]));
        let trigger = show_create_stored(conn, shard, &show, false, &t[0]).await?;
        s.triggers.push(Object { table: Some(t[1].clone()), ..trigger });
    }
    for e in names(conn, shard, format!("SELECT EVENT_NAME FROM information_schema.EVENTS WHERE EVENT_SCHEMA = {lit} ORDER BY 1")).await? {
        let show = format!("SHOW CREATE EVENT {db}.{}", ident(&e[0]));
        s.events.push(show_create_stored(conn, shard, &show, true, &e[0]).await?);
    }
    Ok(s)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn shard() -> Shard {
        let text = "cluster: c\nrepository: /tmp/r\nshards:\n  - name: m\n    engine: mysql\n    url: mysql://u@127.0.0.1:3306\n";
        let topo = topology::Topology::parse(text, std::path::Path::new("t.yaml"), &|_| None)
            .expect("a valid topology");
        topo.shards[0].clone()
    }

    #[test]
    fn a_show_create_without_a_definition_fails_naming_the_statement() {
        let sql = "SHOW CREATE PROCEDURE `d`.`p`";
        let err = create_text(&[], 2, &shard(), sql).expect_err("no row is no definition");
        let text = err.to_string();
        assert!(
            text.contains(sql) && text.contains("no definition"),
            "{text}"
        );
        for empty in [None, Some(String::new()), Some("  ".to_string())] {
            let err = non_empty(empty.clone(), &shard(), sql).expect_err("empty is no definition");
            assert!(
                matches!(err, AgentError::NoDefinition { .. }),
                "{empty:?}: {err}"
            );
        }
        let d = "CREATE PROCEDURE p() SELECT 1".to_string();
        assert_eq!(non_empty(Some(d.clone()), &shard(), sql).unwrap(), d);
    }

    /// A sequence's state is set with numbers and quoted names only, and a
    /// schema file whose state holds anything but integers is unreadable.
    #[test]
    fn a_sequence_state_reaches_sql_as_numbers_under_quoted_names() {
        let state = SequenceState {
            next_not_cached_value: -11,
            maximum_value: 18_446_744_073_709_551_615,
            cycle_count: 2,
            ..SequenceState::default()
        };
        assert_eq!(
            state.insert_sql("sh`op", "a round"),
            "INSERT INTO `sh``op`.`a round` (next_not_cached_value, minimum_value, maximum_value, \
             start_value, increment, cache_size, cycle_option, cycle_count) \
             VALUES (-11, 0, 18446744073709551615, 0, 0, 0, 0, 2)"
        );
        let json = serde_json::to_string(&state).unwrap();
        let back: SequenceState = serde_json::from_str(&json).unwrap();
        assert_eq!(back, state);
        let planted = json.replace("-11", "\"1); DROP DATABASE shop; --\"");
        assert!(serde_json::from_str::<SequenceState>(&planted).is_err());
    }
}
