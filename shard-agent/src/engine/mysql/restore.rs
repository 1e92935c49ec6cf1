//! Restoring a MySQL/MariaDB shard.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use futures_util::StreamExt;
use mysql_async::prelude::Queryable;
use mysql_async::{Conn, Row};
use topology::Shard;

use super::lexer::{reaches_outside, sequences_named, Quoting};
use super::restore_keys::split_secondary_keys;
use super::schema::{sequence_state, DatabaseSchema, Object};
use super::sql::number;
use super::sql::{ident, query_err, quote_literal, PLAIN_SQL_MODE, SYSTEM_DATABASES};
use super::stored_sql::{
    creation_settings, definer_of, first_foreign, first_unsettable, one_statement, Kind,
};
use crate::bundle::reading_order;
use crate::connect;
use crate::error::AgentError;
use crate::manifest::{qualified_name, ShardManifest, TableManifest};
use crate::restore::queue::ChunkQueue;
use crate::restore::{
    check_schema_files, chunk_items, databases, join_loaders, load_checked, ready_during,
    refuse_system_database, schema_files, Recorded, RestoreOptions, ShardRestore,
};

const TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// Column types whose values the dump holds as text but which MariaDB
/// reads as their native binary form when given a binary string; they are
/// loaded through a variable converted to text.
const TEXT_FORM_TYPES: &[&str] = &["uuid", "inet6", "inet4"];

/// The column list and `SET` clause of a `LOAD DATA` for `t`.
fn load_columns(t: &crate::manifest::TableManifest) -> String {
    let mut cols = Vec::new();
    let mut sets = Vec::new();
    for (i, c) in t.columns.iter().enumerate() {
        if TEXT_FORM_TYPES.contains(&c.data_type.to_lowercase().as_str()) {
            cols.push(format!("@c{i}"));
            sets.push(format!("{} = CONVERT(@c{i} USING utf8mb4)", ident(&c.name)));
        } else {
            cols.push(ident(&c.name));
        }
    }
    let mut out = format!("({})", cols.join(", "));
    if !sets.is_empty() {
        out.push_str(&format!(" SET {}", sets.join(", ")));
    }
    out
}

fn selected_name(opts: &RestoreOptions, db: &str, table: &str) -> bool {
    opts.tables
        .as_ref()
        .is_none_or(|list| list.contains(&qualified_name(db, None, table)))
}

/// The character set, time zone and SQL mode of a restoring session.
/// Strict: a value the column cannot take fails the load instead of
/// silently becoming NULL or a truncated value.
const RESTORE_SETTINGS: &str = "SET NAMES utf8mb4, SESSION time_zone = '+00:00', \
    SESSION sql_mode = 'STRICT_ALL_TABLES,NO_AUTO_VALUE_ON_ZERO,NO_ENGINE_SUBSTITUTION'";

/// Lets a session load the history of a system-versioned table as it was,
/// system time included (MariaDB 10.11 and later).
const INSERT_HISTORY: &str = "SET SESSION system_versioning_insert_history = 1";

/// Session settings of a restoring connection. Foreign keys and unique
/// checks are off during the load (the data was consistent when dumped);
/// `NO_AUTO_VALUE_ON_ZERO` keeps stored zeros in auto-increment columns.
/// Unless `binlog`, the session's writes stay out of the binary log; a
/// user without the privilege for that (SUPER / BINLOG ADMIN) restores
/// logged, with a warning, rather than not at all.
async fn session(conn: &mut Conn, shard: &Shard, binlog: bool) -> Result<(), AgentError> {
    for s in [
        RESTORE_SETTINGS,
        "SET SESSION foreign_key_checks = 0",
        "SET SESSION unique_checks = 0",
    ] {
        conn.query_drop(s).await.map_err(query_err(shard, s))?;
    }
    if !binlog {
        not_logged(conn, shard).await?;
    }
    Ok(())
}

/// Turns the session's binary logging off (restores and replays are not
/// logged unless `--binlog` asks); a user who may not is warned about,
/// and the session goes on logged.
pub(super) async fn not_logged(conn: &mut Conn, shard: &Shard) -> Result<(), AgentError> {
    const NOT_LOGGED: &str = "SET SESSION sql_log_bin = 0";
    match conn.query_drop(NOT_LOGGED).await {
        Ok(()) => Ok(()),
        // ER_SPECIFIC_ACCESS_DENIED_ERROR
        Err(mysql_async::Error::Server(e)) if e.code == 1227 => {
            tracing::warn!(
                "{}: the restore is written to the binary log: the user may not turn it off ({})",
                shard.name,
                e.message
            );
            Ok(())
        }
        Err(e) => Err(query_err(shard, NOT_LOGGED)(e)),
    }
}

async fn exec(conn: &mut Conn, shard: &Shard, what: &str, sql: &str) -> Result<(), AgentError> {
    conn.query_drop(sql).await.map_err(query_err(shard, what))
}

/// Runs `sql` from the backup's schema file as exactly one statement
/// ([`one_statement`]) on MariaDB, whose versions start at 10 (MySQL's
/// are 5, 8 and 9). MySQL has no `EXECUTE IMMEDIATE`, and cannot prepare
/// a routine's or trigger's `CREATE`: there the statement goes as it is,
/// checked only to be the `CREATE` of its object.
async fn exec_stored(
    conn: &mut Conn,
    shard: &Shard,
    what: &str,
    sql: &str,
) -> Result<(), AgentError> {
    if super::is_mariadb(conn) {
        exec(conn, shard, what, &one_statement(sql)).await
    } else {
        exec(conn, shard, what, sql).await
    }
}

/// Runs `sql`, a routine's, trigger's or event's `CREATE` from the schema
/// file, as [`exec_stored`] does, under `settings` (the `SET` of
/// [`creation_settings`]: the SQL mode, time zone, character set and
/// collation it was created under, which the server keeps with it), then
/// puts the restore's back. On MariaDB the text is first assigned to a
/// variable under the restore's mode and character set, which reads it as
/// [`quote_literal`] wrote it, so that the object's mode
/// (`NO_BACKSLASH_ESCAPES`, `ANSI_QUOTES`) applies to the statement alone;
/// `EXECUTE IMMEDIATE` converts it into the object's client character set.
async fn exec_stored_under(
    conn: &mut Conn,
    shard: &Shard,
    what: &str,
    sql: &str,
    settings: &str,
) -> Result<(), AgentError> {
    const TEXT: &str = "@shardcut_create";
    let mariadb = super::is_mariadb(conn);
    if mariadb {
        exec(
            conn,
            shard,
            what,
            &format!("SET {TEXT} = {}", quote_literal(sql)),
        )
        .await?;
    }
    let created = match exec(conn, shard, what, settings).await {
        Ok(()) if mariadb => exec(conn, shard, what, &format!("EXECUTE IMMEDIATE {TEXT}")).await,
        Ok(()) => exec(conn, shard, what, sql).await,
        Err(e) => Err(e),
    };
    // The restore's settings back whatever happened; the first error is
    // the one told.
    let back = exec(
        conn,
        shard,
        "setting the restore's character set and SQL mode again",
        RESTORE_SETTINGS,
    )
    .await;
    let cleared = match mariadb {
        true => exec(conn, shard, what, &format!("SET {TEXT} = NULL")).await,
        false => Ok(()),
    };
    created.and(back).and(cleared)
}

/// The schema of `db` from its file, each statement checked to be the
/// `CREATE` of its object ([`first_foreign`]), and no table's to reach
/// another host or files ([`reaches_outside`]).
async fn read_schema(
    source: &ShardManifest,
    target: &Shard,
    opts: &RestoreOptions,
    db: &str,
) -> Result<DatabaseSchema, AgentError> {
    let file = schema_files(source, db, "database")
        .into_iter()
        .next()
        .ok_or_else(|| AgentError::Damaged {
            shard: target.name.clone(),
            what: format!("the backup has no schema file for database {db}"),
        })?;
    let raw = load_checked(opts, &file.into(), &target.name).await?;
    let schema: DatabaseSchema =
        serde_json::from_slice(&raw).map_err(|source| AgentError::Schema {
            shard: target.name.clone(),
            what: format!("schema file {} is not readable", file.key),
            source,
        })?;
    if let Some((kind, name)) = first_foreign(db, &schema) {
        let object = match kind {
            Kind::Database => format!("database {db}"),
            _ => format!("{} {db}.{name}", kind.noun()),
        };
        return Err(AgentError::Damaged {
            shard: target.name.clone(),
            what: format!(
                "schema file {}: the statement of {object} is not the {} of it; nothing was restored from it",
                file.key,
                kind.statement()
            ),
        });
    }
    if let Some((kind, name, why)) = first_unsettable(&schema) {
        return Err(AgentError::Damaged {
            shard: target.name.clone(),
            what: format!(
                "schema file {}: {} {db}.{name}: {why}; nothing was restored from it",
                file.key,
                kind.noun()
            ),
        });
    }
    let outside = schema
        .sequences
        .iter()
        .map(|t| (Kind::Sequence, t))
        .chain(schema.tables.iter().map(|t| (Kind::Table, t)))
        .find_map(|(kind, t)| {
            reaches_outside(&t.sql, Quoting::DEFAULT).map(|option| (kind, &t.name, option))
        });
    if let Some((kind, name, option)) = outside {
        return Err(AgentError::Damaged {
            shard: target.name.clone(),
            what: format!(
                "schema file {}: {} {db}.{name} has {option}, which reaches beyond the server's own tables (another host, or files); a backup holds InnoDB tables only; nothing was restored from it",
                file.key,
                kind.noun()
            ),
        });
    }
    if let Some(s) = schema.sequences.iter().find(|s| s.state.is_none()) {
        return Err(AgentError::Damaged {
            shard: target.name.clone(),
            what: format!(
                "schema file {}: sequence {db}.{} has no state; nothing was restored from it",
                file.key, s.name
            ),
        });
    }
    Ok(schema)
}

/// Per table, the secondary keys built after its data is loaded.
type TableKeys = Vec<(String, Vec<String>)>;

/// Makes `db` the session's database.
async fn use_database(control: &mut Conn, target: &Shard, db: &str) -> Result<(), AgentError> {
    let sql = format!("USE {}", ident(db));
    exec(control, target, "selecting the database", &sql).await
}

/// Creates database `db` on the target with its sequences; returns its
/// schema. A table may take its `DEFAULT` from a sequence of another
/// database, which is then created before it (see `restore`).
async fn create_database(
    control: &mut Conn,
    source: &ShardManifest,
    target: &Shard,
    opts: &RestoreOptions,
    db: &str,
) -> Result<DatabaseSchema, AgentError> {
    let schema = read_schema(source, target, opts, db).await?;
    prepare_database(control, target, db, opts.overwrite).await?;
    exec_stored(
        control,
        target,
        &format!("creating database {db}"),
        &schema.create_database,
    )
    .await?;
    use_database(control, target, db).await?;
    // Every sequence of the database, whatever tables are selected: a
    // table taking its DEFAULT from one cannot be created without it.
    for seq in &schema.sequences {
        create_sequence(control, target, db, seq).await?;
    }
    Ok(schema)
}

/// Creates the selected tables of database `db` (created with its
/// sequences by [`create_database`]), without the secondary keys that are
/// built after the load; returns the deferred keys per table.
async fn create_tables(
    control: &mut Conn,
    source: &ShardManifest,
    target: &Shard,
    opts: &RestoreOptions,
    db: &str,
    schema: &DatabaseSchema,
) -> Result<TableKeys, AgentError> {
    use_database(control, target, db).await?;
    // A table another one references keeps its keys: the foreign key
    // may need one of them.
    let referenced: HashSet<&str> = source
        .table_list
        .iter()
        .flat_map(|t| &t.references)
        .map(String::as_str)
        .collect();
    let mut deferred_keys = Vec::new();
    for t in schema
        .tables
        .iter()
        .filter(|t| selected_name(opts, db, &t.name))
    {
        let split = match referenced.contains(qualified_name(db, None, &t.name).as_str()) {
            true => None,
            false => split_secondary_keys(&t.sql),
        };
        let create = match split {
            Some((create, keys)) => {
                deferred_keys.push((t.name.clone(), keys));
                create
            }
            None => t.sql.clone(),
        };
        exec_stored(
            control,
            target,
            &format!("creating table {db}.{}", t.name),
            &create,
        )
        .await?;
    }
    Ok(deferred_keys)
}

/// Creates sequence `seq` of `db` and sets its state, then reads the state
/// back: a sequence restored at its start would give again values the
/// restored rows hold.
async fn create_sequence(
    control: &mut Conn,
    target: &Shard,
    db: &str,
    seq: &Object,
) -> Result<(), AgentError> {
    let what = format!("creating sequence {db}.{}", seq.name);
    exec_stored(control, target, &what, &seq.sql).await?;
    // Checked when the schema file was read.
    let Some(state) = seq.state else {
        return Err(AgentError::Damaged {
            shard: target.name.clone(),
            what: format!("sequence {db}.{} has no state", seq.name),
        });
    };
    let what = format!("setting the state of sequence {db}.{}", seq.name);
    exec(control, target, &what, &state.insert_sql(db, &seq.name)).await?;
    let now = sequence_state(control, target, db, &seq.name).await?;
    if now != state {
        return Err(AgentError::Tool {
            shard: target.name.clone(),
            what: format!(
                "sequence {db}.{} is {now:?} after its restore, not {state:?} as backed up",
                seq.name
            ),
        });
    }
    Ok(())
}

/// Creates the routines, views, triggers and events of every restored
/// database, once all their tables are loaded: triggers after the data,
/// so they do not fire during the load; routines before views, which may
/// call them; views in rounds, each creating those whose tables and
/// views exist by then (one over another whose name sorts after it, or
/// over a table of another database), until all are or a round creates
/// none, which fails naming the first view left and the server's error.
/// A database restored whole (every table selected, as `--database`
/// does) gets all of them; of one restored in part, only the selected
/// tables' triggers come back: views, routines and events may use tables
/// that are not restored.
async fn create_objects(
    control: &mut Conn,
    source: &ShardManifest,
    target: &Shard,
    opts: &RestoreOptions,
    schemas: &[(String, DatabaseSchema)],
) -> Result<(), AgentError> {
    let wanted = |db: &str, o: &Object| wanted(source, opts, db, o);
    let each = |pick: fn(&DatabaseSchema) -> &Vec<Object>| -> Vec<(&str, &Object)> {
        schemas
            .iter()
            .flat_map(|(db, s)| {
                pick(s)
                    .iter()
                    .filter(move |o| wanted(db, o))
                    .map(move |o| (db.as_str(), o))
            })
            .collect()
    };
    let mut at = InDatabase::default();
    create_each(control, target, &mut at, "routine", each(|s| &s.routines)).await?;
    let mut views = each(|s| &s.views);
    while !views.is_empty() {
        let before = views.len();
        let mut left = Vec::new();
        let mut first_error = None;
        for (db, o) in views {
            at.enter(control, target, db).await?;
            let what = format!("creating view {db}.{}", o.name);
            if let Err(e) = exec_stored(control, target, &what, &o.sql).await {
                first_error.get_or_insert(e);
                left.push((db, o));
            }
        }
        match first_error {
            // A round that created none: the views left cannot be.
            Some(e) if left.len() == before => return Err(e),
            _ => views = left,
        }
    }
    for (kind, objects) in [
        ("trigger", each(|s| &s.triggers)),
        ("event", each(|s| &s.events)),
    ] {
        create_each(control, target, &mut at, kind, objects).await?;
    }
    Ok(())
}

/// Whether the restore creates object `o` of database `db` (a view,
/// routine, trigger or event): every one of a database restored whole, a
/// trigger of a selected table otherwise.
fn wanted(source: &ShardManifest, opts: &RestoreOptions, db: &str, o: &Object) -> bool {
    opts.whole_database(source, db)
        || o.table
            .as_deref()
            .is_some_and(|t| selected_name(opts, db, t))
}

/// Creates `objects` of one `kind`, in their order.
async fn create_each(
    control: &mut Conn,
    target: &Shard,
    at: &mut InDatabase,
    kind: &str,
    objects: Vec<(&str, &Object)>,
) -> Result<(), AgentError> {
    for (db, o) in objects {
        at.enter(control, target, db).await?;
        let what = format!("creating {kind} {db}.{}", o.name);
        // Checked when the schema file was read.
        let names = super::is_mariadb(control);
        let settings = creation_settings(o, names).map_err(|why| AgentError::Damaged {
            shard: target.name.clone(),
            what: format!("{what}: {why}"),
        })?;
        match settings {
            Some(set) => exec_stored_under(control, target, &what, &o.sql, &set).await?,
            None => exec_stored(control, target, &what, &o.sql).await?,
        }
    }
    Ok(())
}

/// The control session's current database (`SHOW CREATE` gives a
/// routine's, trigger's or event's name without its database).
#[derive(Default)]
struct InDatabase(Option<String>);

impl InDatabase {
    async fn enter(&mut self, conn: &mut Conn, target: &Shard, db: &str) -> Result<(), AgentError> {
        if self.0.as_deref() != Some(db) {
            let sql = format!("USE {}", ident(db));
            exec(conn, target, &format!("using database {db}"), &sql).await?;
            self.0 = Some(db.to_string());
        }
        Ok(())
    }
}

pub(super) async fn restore(
    source: &ShardManifest,
    target: &Shard,
    opts: &RestoreOptions,
) -> Result<ShardRestore, AgentError> {
    check_schema_files(source, &target.name, opts).await?;
    let mut done = ShardRestore::default();
    let mut control = connect::mysql(target, None, TIMEOUT).await?;
    session(&mut control, target, opts.binlog).await?;
    let restored = databases(source, opts);
    // Databases are created (with their sequences) one at a time, each
    // just before its tables, unless a table restored earlier takes its
    // DEFAULT from one's sequence: then that one is created first. So a
    // failure leaves the databases after it as they were.
    let mut made = HashSet::new();
    let mut pending: HashMap<String, DatabaseSchema> = HashMap::new();
    let mut schemas = Vec::new();
    for db in &restored {
        if made.insert(db.clone()) {
            let schema = create_database(&mut control, source, target, opts, db).await?;
            done.databases.push(db.clone());
            pending.insert(db.clone(), schema);
        }
        let Some(schema) = pending.remove(db) else {
            continue;
        };
        let needed: Vec<String> = schema
            .tables
            .iter()
            .filter(|t| selected_name(opts, db, &t.name))
            .flat_map(|t| sequences_named(&t.sql, db))
            .map(|(d, _)| d)
            .filter(|d| restored.contains(d))
            .collect();
        for other in needed {
            if made.insert(other.clone()) {
                let created = create_database(&mut control, source, target, opts, &other).await?;
                done.databases.push(other.clone());
                pending.insert(other, created);
            }
        }
        let deferred_keys = create_tables(&mut control, source, target, opts, db, &schema).await?;
        let db = db.clone();

        let began = std::time::Instant::now();
        let keys = Arc::new(Mutex::new(deferred_keys.into_iter().collect()));
        load_data(source, target, opts, &db, &keys).await?;
        let loaded = began.elapsed();
        // Tables no worker finished (those without chunks) get their keys now.
        let left: Vec<(String, Vec<String>)> =
            std::mem::take(&mut *lock(&keys)).into_iter().collect();
        let left_count = left.len();
        build_keys(target, opts, &db, left).await?;
        tracing::info!(
            "{}: {db}: data loaded and keys built in {:.2} s, then the keys of {left_count} table(s) without data in {:.2} s",
            target.name,
            loaded.as_secs_f64(),
            (began.elapsed() - loaded).as_secs_f64()
        );
        done.tables += source
            .table_list
            .iter()
            .filter(|t| t.database == db && opts.selected(t))
            .count();
        done.chunks += chunk_items(source, &db, opts).len();
        schemas.push((db, schema));
    }
    create_objects(&mut control, source, target, opts, &schemas).await?;
    done.notes = missing_definers(&mut control, source, opts, &schemas).await;
    drop(control.disconnect().await);
    Ok(done)
}

/// One note per definer of the views, routines, triggers and events the
/// restore created that the target does not have: MariaDB creates them
/// anyway, and then refuses every use of them ("The user specified as a
/// definer does not exist"): a trigger's, every write to its table. A
/// definer the restore's user may not look up is passed over.
async fn missing_definers(
    control: &mut Conn,
    source: &ShardManifest,
    opts: &RestoreOptions,
    schemas: &[(String, DatabaseSchema)],
) -> Vec<String> {
    let mut by_definer: std::collections::BTreeMap<(String, Option<String>), Vec<String>> =
        Default::default();
    for (db, s) in schemas {
        let groups = [
            (Kind::View, &s.views),
            (Kind::Routine, &s.routines),
            (Kind::Trigger, &s.triggers),
            (Kind::Event, &s.events),
        ];
        for (kind, objects) in groups {
            for o in objects.iter().filter(|o| wanted(source, opts, db, o)) {
                if let Some(definer) = definer_of(kind, o) {
                    by_definer.entry(definer).or_default().push(format!(
                        "{} {}",
                        kind.noun(),
                        qualified_name(db, None, &o.name)
                    ));
                }
            }
        }
    }
    let mut notes = Vec::new();
    for ((user, host), objects) in by_definer {
        let account = match &host {
            Some(h) => format!("{}@{}", quote_literal(&user), quote_literal(h)),
            None => quote_literal(&user),
        };
        // The grants themselves are not kept (they may show a password
        // hash): only whether the account is there.
        let missing = match control
            .query_drop(format!("SHOW GRANTS FOR {account}"))
            .await
        {
            Err(mysql_async::Error::Server(e)) => e.code == 1141,
            _ => false,
        };
        if missing {
            // Names from the backup: control characters shown, not sent
            // to the terminal.
            let account = crate::error::printable(&account);
            let objects: Vec<String> = objects.iter().map(|o| crate::error::printable(o)).collect();
            notes.push(format!(
                "definer {account} of {} does not exist on the target, which refuses every use of them until it does (a trigger's, every write to its table): create that account (or role) with its grants",
                objects.join(", ")
            ));
        }
    }
    notes
}

/// Whether the target holds sequence `db`.`name`.
async fn sequence_exists(
    conn: &mut Conn,
    shard: &Shard,
    db: &str,
    name: &str,
) -> Result<bool, AgentError> {
    let sql = format!(
        "SELECT COUNT(*) FROM information_schema.TABLES \
         WHERE TABLE_SCHEMA = {} AND TABLE_NAME = {} AND TABLE_TYPE = 'SEQUENCE'",
        quote_literal(db),
        quote_literal(name)
    );
    let what = "looking for a sequence on the target";
    let found: Option<u64> = conn
        .query_first(&sql)
        .await
        .map_err(query_err(shard, what))?;
    Ok(found.unwrap_or(0) > 0)
}

/// Whether `db` exists on the target, and how many tables it holds.
async fn inspect(conn: &mut Conn, shard: &Shard, db: &str) -> Result<(u64, u64), AgentError> {
    let lit = format!("'{}'", db.replace('\\', "\\\\").replace('\'', "''"));
    let rows: Vec<Row> = conn
        .query(format!(
            "SELECT (SELECT COUNT(*) FROM information_schema.SCHEMATA WHERE SCHEMA_NAME = {lit}), \
             (SELECT COUNT(*) FROM information_schema.TABLES WHERE TABLE_SCHEMA = {lit}) \
             + (SELECT COUNT(*) FROM information_schema.ROUTINES WHERE ROUTINE_SCHEMA = {lit}) \
             + (SELECT COUNT(*) FROM information_schema.EVENTS WHERE EVENT_SCHEMA = {lit})"
        ))
        .await
        .map_err(query_err(shard, "inspecting the target"))?;
    let de = |e| AgentError::Query {
        shard: shard.name.clone(),
        what: "inspecting the target".into(),
        source: e,
    };
    Ok(match rows.first() {
        Some(r) => (
            number(r, 0).map_err(de)?.unwrap_or(0),
            number(r, 1).map_err(de)?.unwrap_or(0),
        ),
        None => (0, 0),
    })
}

/// Refuses, without changing anything, a target database that exists and
/// holds anything (tables, views, routines, events, large objects), unless
/// `overwrite`.
pub(super) async fn check_target(
    source: &ShardManifest,
    target: &Shard,
    opts: &RestoreOptions,
) -> Result<(), AgentError> {
    let mut conn = connect::mysql(target, None, TIMEOUT).await?;
    // The character set and collation are set only where the statement
    // goes through a variable (see `create_each`).
    let mariadb = super::is_mariadb(&conn);
    let mut settings = std::collections::BTreeMap::new();
    // The sequences the restore creates, and those its tables' DEFAULTs
    // take values from.
    let mut created = HashSet::new();
    let mut used = Vec::new();
    for db in databases(source, opts) {
        refuse_system_database(target, &db, SYSTEM_DATABASES)?;
        // Every schema file is read and checked before anything changes.
        let schema = read_schema(source, target, opts, &db).await?;
        created.extend(
            schema
                .sequences
                .iter()
                .map(|s| (db.clone(), s.name.clone())),
        );
        for t in schema
            .tables
            .iter()
            .filter(|t| selected_name(opts, &db, &t.name))
        {
            for seq in sequences_named(&t.sql, &db) {
                used.push((qualified_name(&db, None, &t.name), seq));
            }
        }
        // Only MariaDB has sequences: a MySQL target would fail at the
        // first, after the database was created (and where statements go
        // as they are, a sequence's could only be foreign).
        if let Some(seq) = schema.sequences.first().filter(|_| !mariadb) {
            return Err(AgentError::Tool {
                shard: target.name.clone(),
                what: format!(
                    "sequence {db}.{} needs a MariaDB target, and this one is not; nothing was changed",
                    seq.name
                ),
            });
        }
        let programs = [
            ("routine", &schema.routines),
            ("trigger", &schema.triggers),
            ("event", &schema.events),
        ];
        for (kind, objects) in programs {
            for o in objects.iter().filter(|o| wanted(source, opts, &db, o)) {
                if let Ok(Some(set)) = creation_settings(o, mariadb) {
                    settings
                        .entry(set)
                        .or_insert_with(|| format!("{kind} {db}.{}", o.name));
                }
            }
        }
    }
    // The SQL modes and time zones the objects were created under, each
    // tried once: one the target does not know (a mode of another
    // version, a named zone without the server's zone tables) fails the
    // restore now, not after every table is loaded.
    for (set, first) in &settings {
        let what = format!("setting what {first} was created under (the target refuses it)");
        exec(&mut conn, target, &what, set).await?;
    }
    exec(
        &mut conn,
        target,
        "setting the character set",
        "SET NAMES utf8mb4",
    )
    .await?;
    let restored = databases(source, opts);
    let versioned = source
        .table_list
        .iter()
        .find(|t| t.system_versioned && opts.selected(t) && restored.contains(&t.database));
    if let Some(t) = versioned {
        if let Err(e) = conn.query_drop(INSERT_HISTORY).await {
            return Err(AgentError::Tool {
                shard: target.name.clone(),
                what: format!(
                    "table {} is system-versioned: loading its history needs system_versioning_insert_history (MariaDB 10.11 and later), which the target refuses ({e}); nothing was changed",
                    t.qualified()
                ),
            });
        }
    }
    // Rows are loaded with LOAD DATA LOCAL INFILE, which a server with
    // `local_infile` off refuses: found at the first table, after the
    // databases before it were replaced.
    let loads = source
        .table_list
        .iter()
        .find(|t| t.rows > 0 && opts.selected(t) && restored.contains(&t.database));
    if let Some(t) = loads {
        let on: Option<String> = conn
            .query_first("SELECT @@GLOBAL.local_infile")
            .await
            .map_err(query_err(target, "reading local_infile"))?;
        if !matches!(on.as_deref(), Some("1" | "ON")) {
            return Err(AgentError::Tool {
                shard: target.name.clone(),
                what: format!(
                    "the target's local_infile is off, and the restore loads rows (of {} and others) with LOAD DATA LOCAL INFILE: SET GLOBAL local_infile = ON, and put it in the server's config; nothing was changed",
                    t.qualified()
                ),
            });
        }
    }
    exec(&mut conn, target, "setting the SQL mode", PLAIN_SQL_MODE).await?;
    // Under the plain mode: the names are quoted for it.
    for (table, (db, name)) in used.iter().filter(|(_, seq)| !created.contains(seq)) {
        let sequence = qualified_name(db, None, name);
        // One of a database this restore replaces counts only if the
        // restore creates it.
        let missing = if restored.contains(db) {
            format!("which is not in the backup of database {db}, which this restore replaces")
        } else if !sequence_exists(&mut conn, target, db, name).await? {
            format!("which this restore does not create and the target does not hold; restore it too (database {db}) or create it on the target first")
        } else {
            continue;
        };
        return Err(AgentError::Tool {
            shard: target.name.clone(),
            what: format!(
                "table {table} takes its DEFAULT from sequence {sequence}, {missing}; nothing was changed"
            ),
        });
    }
    for db in databases(source, opts) {
        let (_, objects) = inspect(&mut conn, target, &db).await?;
        if objects > 0 && !opts.overwrite {
            return Err(refusal(target, &db, objects));
        }
    }
    drop(conn.disconnect().await);
    Ok(())
}

fn refusal(shard: &Shard, db: &str, objects: u64) -> AgentError {
    AgentError::TargetNotEmpty {
        shard: shard.name.clone(),
        database: db.to_string(),
        objects,
    }
}

/// Drops a target database that exists (the caller checked `overwrite`).
async fn prepare_database(
    conn: &mut Conn,
    shard: &Shard,
    db: &str,
    overwrite: bool,
) -> Result<(), AgentError> {
    refuse_system_database(shard, db, SYSTEM_DATABASES)?;
    let (exists, objects) = inspect(conn, shard, db).await?;
    if exists == 0 {
        return Ok(());
    }
    if objects > 0 && !overwrite {
        return Err(refusal(shard, db, objects));
    }
    exec(
        conn,
        shard,
        &format!("dropping database {db}"),
        &format!("DROP DATABASE {}", ident(db)),
    )
    .await
}

/// A chunk to load.
struct LoadItem {
    chunk: Recorded,
    /// The rows the manifest records for the chunk.
    rows: u64,
    /// The table's `LOAD DATA` statement.
    sql: Arc<str>,
    table: Arc<str>,
}

/// Fails unless the `LOAD DATA` just run on `conn` loaded all `rows` of
/// its chunk without a warning. With `LOCAL` the server reads the file as
/// if `IGNORE` were given, whatever the SQL mode: a duplicate key skips
/// the row and a value the column cannot hold is cut or changed, each a
/// warning only, and the statement succeeds. Only the read-back would
/// find it, as a mismatch naming neither the chunk nor the cause.
async fn loaded_whole(
    conn: &mut Conn,
    target: &Shard,
    what: &str,
    rows: u64,
) -> Result<(), AgentError> {
    let (loaded, warnings) = (conn.affected_rows(), conn.get_warnings());
    if loaded == rows && warnings == 0 {
        return Ok(());
    }
    let shown: Vec<(String, u32, String)> = conn
        .query("SHOW WARNINGS LIMIT 3")
        .await
        .map_err(query_err(target, "SHOW WARNINGS"))?;
    let shown: Vec<String> = shown
        .into_iter()
        .map(|(level, code, message)| format!("{level} {code}: {message}"))
        .collect();
    Err(AgentError::Tool {
        shard: target.name.clone(),
        what: format!(
            "{what}: the server loaded {loaded} of the chunk's {rows} rows, with {warnings} warning(s){}",
            if shown.is_empty() {
                String::new()
            } else {
                format!(" ({})", shown.join("; "))
            }
        ),
    })
}

/// Secondary keys still to add, by table name: taken out by whoever adds them.
type DeferredKeys = Mutex<HashMap<String, Vec<String>>>;

fn lock(keys: &DeferredKeys) -> std::sync::MutexGuard<'_, HashMap<String, Vec<String>>> {
    keys.lock().unwrap_or_else(|p| p.into_inner())
}

/// Loads every chunk of `db` with `LOAD DATA LOCAL INFILE`, in parallel,
/// workers on different tables (see [`ChunkQueue`]). A table whose last
/// chunk is in is announced as restored or, if it has deferred keys, goes
/// to the key builders (as `pg_restore -j` builds a table's indexes once
/// its data is in), which add them on connections of their own and
/// announce it during the build; the loading worker goes straight on to
/// its next table. A key build reads the whole table, from disk when the
/// buffer pool is small, so it overlaps with loads that keep the
/// processors busy instead of waiting on the disk in the load workers'
/// place.
async fn load_data(
    source: &ShardManifest,
    target: &Shard,
    opts: &RestoreOptions,
    db: &str,
    keys: &Arc<DeferredKeys>,
) -> Result<(), AgentError> {
    let mut selected: Vec<&TableManifest> = source
        .table_list
        .iter()
        .filter(|t| t.database == db && opts.selected(t))
        .collect();
    // Small tables in the order of their bundles (each read about once).
    selected.sort_by_key(|t| reading_order(t));
    let history = selected.iter().any(|t| t.system_versioned);
    let tables: Vec<Vec<LoadItem>> = selected
        .into_iter()
        .map(|t| {
            let sql: Arc<str> = format!(
                "LOAD DATA LOCAL INFILE 'shardcut-chunk' INTO TABLE {}.{} CHARACTER SET binary \
                 FIELDS TERMINATED BY '\\t' ESCAPED BY '\\\\' LINES TERMINATED BY '\\n' {}",
                ident(&t.database),
                ident(&t.name),
                load_columns(t)
            )
            .into();
            let table: Arc<str> = t.name.as_str().into();
            t.chunks
                .iter()
                .map(|c| {
                    Ok(LoadItem {
                        chunk: Recorded::chunk(source, c, &target.name)?,
                        rows: c.rows,
                        sql: sql.clone(),
                        table: table.clone(),
                    })
                })
                .collect::<Result<Vec<_>, AgentError>>()
        })
        .collect::<Result<_, _>>()?;
    let queue = Arc::new(ChunkQueue::new(tables));
    let workers = opts.parallelism.max(1);
    let (to_build, builders) = key_builders(workers, target, opts, db, keys);
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..workers {
        let (queue, target, opts, to_build, keys, db) = (
            queue.clone(),
            target.clone(),
            opts.clone(),
            to_build.clone(),
            keys.clone(),
            db.to_string(),
        );
        tasks.spawn(async move {
            let mut conn = connect::mysql(&target, None, TIMEOUT).await?;
            session(&mut conn, &target, opts.binlog).await?;
            if history {
                let what = "letting the session load system-versioned history";
                exec(&mut conn, &target, what, INSERT_HISTORY).await?;
            }
            while let Some(taken) = queue.take() {
                let LoadItem {
                    chunk,
                    rows,
                    sql,
                    table,
                } = taken.item;
                let raw = load_checked(&opts, &chunk, &target.name).await?;
                let key = chunk.key;
                let data = Bytes::from(raw);
                conn.set_infile_handler(async move {
                    Ok(futures_util::stream::once(async move { Ok(data) }).boxed())
                });
                let what = format!("loading {db}.{table} from {key}");
                conn.query_drop(&*sql)
                    .await
                    .map_err(query_err(&target, &what))?;
                loaded_whole(&mut conn, &target, &what, rows).await?;
                if !queue.done(taken.table) {
                    continue;
                }
                if !lock(&keys).contains_key(&*table) {
                    opts.table_ready(qualified_name(&db, None, &table));
                } else if to_build.send(table).is_err() {
                    // A builder failed and closed the queue: the restore
                    // has failed, so loading stops; the builder's error is
                    // the one reported.
                    break;
                }
            }
            drop(conn.disconnect().await);
            Ok::<(), AgentError>(())
        });
    }
    // The builders stop once every loader (and this) dropped its sender.
    drop(to_build);
    let loaded = join_loaders(tasks, &target.name).await;
    let built = join_loaders(builders, &target.name).await;
    loaded.and(built)
}

/// Starts `workers` key builders. Each takes the name of a table whose
/// data is in and that has deferred keys, adds them on a connection of its
/// own, and announces the table as restored while they build (its rows are
/// final; see [`ready_during`]). They stop once every sender is
/// dropped; a builder that fails closes the queue, so that sending (and
/// with it loading) stops.
fn key_builders(
    workers: usize,
    target: &Shard,
    opts: &RestoreOptions,
    db: &str,
    keys: &Arc<DeferredKeys>,
) -> (
    tokio::sync::mpsc::UnboundedSender<Arc<str>>,
    tokio::task::JoinSet<Result<(), AgentError>>,
) {
    // At most one message per table.
    let (to_build, builds) = tokio::sync::mpsc::unbounded_channel::<Arc<str>>();
    let builds = Arc::new(tokio::sync::Mutex::new(builds));
    let mut builders = tokio::task::JoinSet::new();
    for _ in 0..workers {
        let (builds, target, opts, keys, db) = (
            builds.clone(),
            target.clone(),
            opts.clone(),
            keys.clone(),
            db.to_string(),
        );
        builders.spawn(async move {
            let mut conn = None;
            loop {
                let next = builds.lock().await.recv().await;
                let Some(table) = next else {
                    break;
                };
                let ready = || opts.table_ready(qualified_name(&db, None, &table));
                let adds = lock(&keys).remove(&*table);
                let Some(adds) = adds else {
                    ready();
                    continue;
                };
                let build = add_keys_on(&mut conn, &target, &opts, &db, &table, &adds);
                let built = ready_during(build, ready).await;
                if let Err(e) = built {
                    builds.lock().await.close();
                    return Err(e);
                }
            }
            if let Some(conn) = conn {
                drop(conn.disconnect().await);
            }
            Ok::<(), AgentError>(())
        });
    }
    (to_build, builders)
}

/// Adds the secondary keys left out of `CREATE TABLE`, one `ALTER TABLE`
/// per table (one pass over its rows for all its keys), `parallelism`
/// tables at a time.
async fn build_keys(
    target: &Shard,
    opts: &RestoreOptions,
    db: &str,
    keys: Vec<(String, Vec<String>)>,
) -> Result<(), AgentError> {
    let queue = Arc::new(std::sync::Mutex::new(keys));
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..opts.parallelism.max(1) {
        let (queue, target, binlog, db) =
            (queue.clone(), target.clone(), opts.binlog, db.to_string());
        tasks.spawn(async move {
            let mut conn = connect::mysql(&target, None, TIMEOUT).await?;
            session(&mut conn, &target, binlog).await?;
            loop {
                let next = queue.lock().unwrap_or_else(|p| p.into_inner()).pop();
                let Some((table, adds)) = next else {
                    break;
                };
                add_keys(&mut conn, &target, &db, &table, &adds).await?;
            }
            drop(conn.disconnect().await);
            Ok::<(), AgentError>(())
        });
    }
    join_loaders(tasks, &target.name).await
}

/// [`add_keys`] on a key builder's connection, opened on first use.
async fn add_keys_on(
    conn: &mut Option<Conn>,
    target: &Shard,
    opts: &RestoreOptions,
    db: &str,
    table: &str,
    adds: &[String],
) -> Result<(), AgentError> {
    let conn = match conn {
        Some(conn) => conn,
        None => {
            let mut fresh = connect::mysql(target, None, TIMEOUT).await?;
            session(&mut fresh, target, opts.binlog).await?;
            conn.insert(fresh)
        }
    };
    add_keys(conn, target, db, table, adds).await
}

/// One `ALTER TABLE` for all of a table's deferred keys: one pass over its rows.
async fn add_keys(
    conn: &mut Conn,
    target: &Shard,
    db: &str,
    table: &str,
    adds: &[String],
) -> Result<(), AgentError> {
    let sql = format!(
        "ALTER TABLE {}.{} {}",
        ident(db),
        ident(table),
        adds.join(", ")
    );
    // The key clauses are the stored CREATE TABLE's lines: one statement.
    exec_stored(
        conn,
        target,
        &format!("adding the keys of {db}.{table}"),
        &sql,
    )
    .await
}
