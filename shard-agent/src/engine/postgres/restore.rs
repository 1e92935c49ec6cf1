//! Restoring a PostgreSQL shard: pre-data schema (run through the server,
//! never psql), data with `COPY … FROM STDIN` per chunk, post-data schema,
//! then sequence values.

use std::sync::Arc;

use bytes::Bytes;
use futures_util::SinkExt;
use tokio::sync::OnceCell;
use topology::Shard;

use super::binary_copy;
use super::binary_load::{self, BinaryLoad};
use super::preflight::SYSTEM_DATABASES;
use super::privileges::{self, LeftOut, Roles};
use super::properties::DatabaseProperties;
use super::restore_post::{Build, PostData};
use super::{ident, partitioned_tables, pg_err, reader};
use crate::bundle::reading_order;
use crate::connect;
use crate::error::AgentError;
use crate::manifest::{ShardManifest, TableManifest};
use crate::restore::{
    check_schema_files, chunk_items, databases, join_loaders, load_checked, ready_during,
    refuse_system_database, schema_files, Recorded, RestoreOptions, ShardRestore,
};

const TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

pub(super) async fn restore(
    source: &ShardManifest,
    target: &Shard,
    opts: &RestoreOptions,
) -> Result<ShardRestore, AgentError> {
    check_schema_files(source, &target.name, opts).await?;
    let mut done = ShardRestore::default();
    let roles = target_roles(target).await?;
    for db in databases(source, opts) {
        let properties = database_properties(source, target, opts, &db).await?;
        prepare_database(target, &db, opts.overwrite, properties.as_ref()).await?;
        done.databases.push(db.clone());
        let mut left = run_section(source, target, opts, &db, "pre-data", &roles).await?;
        let (post, post_left) = post_data(source, target, opts, &db, &roles).await?;
        left.add(post_left);
        let post = Arc::new(post);
        let began = std::time::Instant::now();
        let chunked = load_data(source, target, opts, &db, &post).await?;
        let loaded = began.elapsed();
        run_post_data(target, opts, &db, &post, || {
            for t in chunked {
                opts.table_ready(t);
            }
        })
        .await?;
        tracing::info!(
            "{}: {db}: data loaded (with the indexes of whole tables) in {:.2} s, then the rest of post-data in {:.2} s",
            target.name,
            loaded.as_secs_f64(),
            (began.elapsed() - loaded).as_secs_f64()
        );
        left.add(run_section(source, target, opts, &db, "sequences", &roles).await?);
        done.notes.extend(left.note(&db));
        // Refreshed from the restored tables: those of a database restored
        // whole, none of one restored in part (its views may read tables
        // left out).
        if opts.whole_database(source, &db) {
            for f in schema_files(source, &db, "matviews") {
                let sql = refreshes_sql(f, target, opts).await?;
                run_sql(target, &db, &sql, "materialized-view").await?;
            }
        }
        drop_unselected(source, target, opts, &db).await?;
        // Last: a setting may keep the restore's own sessions from writing
        // (`default_transaction_read_only`).
        if let Some(p) = &properties {
            let admin = connect::postgres(target, None, TIMEOUT).await?;
            done.notes.extend(p.apply(&admin, &db).await);
        }
        done.tables += source
            .table_list
            .iter()
            .filter(|t| t.database == db && opts.selected(t))
            .count();
        done.chunks += chunk_items(source, &db, opts).len();
    }
    Ok(done)
}

/// Whether `db` exists on the target, and how many tables it holds.
async fn inspect(shard: &Shard, db: &str) -> Result<(bool, i64), AgentError> {
    let admin = connect::postgres(shard, None, TIMEOUT).await?;
    let exists = admin
        .query_opt("SELECT 1 FROM pg_database WHERE datname = $1", &[&db])
        .await
        .map_err(pg_err(shard, "inspecting the target"))?
        .is_some();
    if exists {
        let client = connect::postgres(shard, Some(db), TIMEOUT).await?;
        let tables: i64 = client
            .query_one(
                "SELECT (SELECT count(*) FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace \
                 WHERE c.relkind IN ('r', 'p', 'v', 'm', 'S', 'f') \
                 AND n.nspname NOT IN ('pg_catalog', 'information_schema') \
                 AND n.nspname NOT LIKE 'pg\\_toast%') \
                 + (SELECT count(*) FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace \
                 WHERE n.nspname NOT IN ('pg_catalog', 'information_schema')) \
                 + (SELECT count(*) FROM pg_largeobject_metadata)",
                &[],
            )
            .await
            .and_then(|r| r.try_get(0))
            .map_err(pg_err(shard, "inspecting the target"))?;
        return Ok((true, tables));
    }
    Ok((false, 0))
}

fn refusal(shard: &Shard, db: &str, objects: i64) -> AgentError {
    AgentError::TargetNotEmpty {
        shard: shard.name.clone(),
        database: db.to_string(),
        objects: u64::try_from(objects).unwrap_or(0),
    }
}

/// Refuses, without changing anything, a target database that exists and
/// holds anything (tables, views, routines, events, large objects), unless
/// `overwrite`.
pub(super) async fn check_target(
    source: &ShardManifest,
    target: &Shard,
    opts: &RestoreOptions,
) -> Result<(), AgentError> {
    let roles = target_roles(target).await?;
    let mut encodings = std::collections::BTreeSet::new();
    for db in databases(source, opts) {
        refuse_system_database(target, &db, SYSTEM_DATABASES)?;
        if let Some(p) = database_properties(source, target, opts, &db).await? {
            encodings.insert(p.create_options().unwrap_or_default());
        }
        // Every schema file is read and checked before anything changes.
        for section in ["pre-data", "sequences"] {
            for f in schema_files(source, &db, section) {
                section_sql(f, target, opts, &roles).await?;
            }
        }
        post_data(source, target, opts, &db, &roles).await?;
        for f in schema_files(source, &db, "matviews") {
            refreshes_sql(f, target, opts).await?;
        }
    }
    for db in databases(source, opts) {
        let (_, objects) = inspect(target, &db).await?;
        if objects > 0 && !opts.overwrite {
            return Err(refusal(target, &db, objects));
        }
    }
    // Each encoding and locale the databases need, tried once on a
    // database created and dropped at once: a target whose host lacks one
    // refuses the restore before any database is replaced.
    for options in encodings.iter().filter(|o| !o.is_empty()) {
        try_encoding(target, options).await?;
    }
    Ok(())
}

/// A name for a database the restore makes for a moment (`kind`: what
/// for), unique to this process.
fn staged_name(kind: &str) -> String {
    static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    // Agents in containers share process ids: the clock tells them apart.
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos());
    format!(
        "shardcut-{kind}-{}-{nanos:08x}-{}",
        std::process::id(),
        NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
    )
}

/// Whether `CREATE DATABASE` failed refusing an encoding or a locale, by
/// its SQLSTATE: an invalid locale name or server encoding (42809), an
/// encoding that does not match the locale (22023), an unknown encoding
/// (42704), a server built without ICU (0A000), a locale provider it does
/// not know (42P17), or an option older than the server
/// (`LOCALE_PROVIDER`, `ICU_LOCALE`, `ICU_RULES`, `BUILTIN_LOCALE`: 42601).
/// Any other failure (a cancelled statement, a missing privilege, a
/// template in use) is reported as itself, not as a locale to install.
fn refuses_locale(e: &tokio_postgres::Error) -> bool {
    const LOCALE_REFUSALS: [&str; 6] = ["42809", "22023", "42704", "0A000", "42P17", "42601"];
    e.code()
        .is_some_and(|c| LOCALE_REFUSALS.contains(&c.code()))
}

/// Whether the target creates a database with `options` (the source's
/// encoding and locale), by creating one and dropping it.
async fn try_encoding(target: &Shard, options: &str) -> Result<(), AgentError> {
    let admin = connect::postgres(target, None, TIMEOUT).await?;
    admin
        .batch_execute("SET standard_conforming_strings = on")
        .await
        .map_err(pg_err(target, "setting up the session"))?;
    let name = staged_name("probe");
    admin
        .batch_execute(&format!("CREATE DATABASE {}{options}", ident(&name)))
        .await
        .map_err(|e| match refuses_locale(&e) {
            true => AgentError::Tool {
                shard: target.name.clone(),
                what: format!(
                    "the target refuses the source's encoding and locale ({}): {}; install that locale on the target's host, or restore into a server that has it; nothing was changed",
                    options.trim(),
                    crate::error::one_line(&e)
                ),
            },
            false => AgentError::Tool {
                shard: target.name.clone(),
                what: format!(
                    "creating a database on the target to try the source's encoding and locale ({}) failed: {}; nothing was changed",
                    options.trim(),
                    crate::error::one_line(&e)
                ),
            },
        })?;
    admin
        .batch_execute(&format!("DROP DATABASE {} WITH (FORCE)", ident(&name)))
        .await
        .map_err(pg_err(
            target,
            &format!("dropping {name}, made to try the source's locale"),
        ))
}

/// The properties of `db` the backup holds (encoding, locale, settings,
/// comment), checked to make a `CREATE DATABASE`; `None` in a backup from
/// before they were kept.
async fn database_properties(
    source: &ShardManifest,
    target: &Shard,
    opts: &RestoreOptions,
    db: &str,
) -> Result<Option<DatabaseProperties>, AgentError> {
    let Some(f) = schema_files(source, db, "properties").into_iter().next() else {
        return Ok(None);
    };
    let raw = load_checked(opts, &f.into(), &target.name).await?;
    let damaged = |what: String| AgentError::Damaged {
        shard: target.name.clone(),
        what: format!(
            "schema file {}: {what}; nothing was restored from it",
            f.key
        ),
    };
    let p: DatabaseProperties =
        serde_json::from_slice(&raw).map_err(|e| damaged(format!("not readable ({e})")))?;
    p.create_options().map_err(damaged)?;
    Ok(Some(p))
}

/// Replaces (the caller checked `overwrite`) or creates `db` empty, with
/// the encoding and locale of `properties` when the backup holds them.
/// Replacing, the new database is created under another name first, then
/// put in place of the old: a target that refuses the source's encoding
/// or locale (one its host lacks) fails the restore with the old database
/// still there.
async fn prepare_database(
    shard: &Shard,
    db: &str,
    overwrite: bool,
    properties: Option<&DatabaseProperties>,
) -> Result<(), AgentError> {
    refuse_system_database(shard, db, SYSTEM_DATABASES)?;
    let (exists, objects) = inspect(shard, db).await?;
    if objects > 0 && !overwrite {
        return Err(refusal(shard, db, objects));
    }
    let options = match properties {
        Some(p) => p.create_options().map_err(|what| AgentError::Tool {
            shard: shard.name.clone(),
            what: format!("database {db}: {what}"),
        })?,
        None => String::new(),
    };
    let admin = connect::postgres(shard, None, TIMEOUT).await?;
    // The options are literals written for standard strings.
    admin
        .batch_execute("SET standard_conforming_strings = on")
        .await
        .map_err(pg_err(shard, "setting up the session"))?;
    let creating = |name: &str| format!("CREATE DATABASE {}{options}", ident(name));
    let refused = |e: tokio_postgres::Error| {
        if options.is_empty() || !refuses_locale(&e) {
            return pg_err(shard, &format!("creating database {db}"))(e);
        }
        let why = crate::error::one_line(&e);
        AgentError::Tool {
            shard: shard.name.clone(),
            what: format!(
                "creating database {db} with the source's encoding and locale ({}) failed: {why}; install that locale on the target's host, or restore into a server that has it",
                options.trim()
            ),
        }
    };
    if !exists {
        return admin.batch_execute(&creating(db)).await.map_err(refused);
    }
    let staged = staged_name("restore");
    admin
        .batch_execute(&creating(&staged))
        .await
        .map_err(refused)?;
    let dropped = admin
        .batch_execute(&format!("DROP DATABASE {} WITH (FORCE)", ident(db)))
        .await;
    if let Err(e) = dropped {
        drop(
            admin
                .batch_execute(&format!("DROP DATABASE IF EXISTS {}", ident(&staged)))
                .await,
        );
        return Err(pg_err(shard, &format!("dropping database {db}"))(e));
    }
    admin
        .batch_execute(&format!(
            "ALTER DATABASE {} RENAME TO {}",
            ident(&staged),
            ident(db)
        ))
        .await
        .map_err(pg_err(
            shard,
            &format!("renaming the new database {staged} to {db} (the old one is dropped; rename it by hand)"),
        ))?;
    Ok(())
}

/// A section's SQL with ownership statements left out (as
/// `pg_restore --no-owner` does): objects belong to the restoring user,
/// since the source's roles need not exist on the target. Privileges
/// naming roles the target lacks are left out too, and what was
/// ([`privileges::known_roles_only`]); a policy naming one is refused.
async fn section_sql(
    f: &crate::manifest::StoredFile,
    target: &Shard,
    opts: &RestoreOptions,
    roles: &Roles,
) -> Result<(String, LeftOut), AgentError> {
    let sql = load_checked(opts, &f.into(), &target.name).await?;
    for_target(&String::from_utf8_lossy(&sql), roles).map_err(|refused| match refused {
        Refused::Damaged(what) => AgentError::Damaged {
            shard: target.name.clone(),
            what: format!(
                "schema file {}: {what}; nothing was restored from it",
                f.key
            ),
        },
        Refused::Target(why) => AgentError::Tool {
            shard: target.name.clone(),
            what: format!("schema file {}: {why}; nothing was changed", f.key),
        },
    })
}

/// Why a section's SQL is not run on a target.
#[derive(Debug, PartialEq)]
enum Refused {
    /// The file holds what pg_dump never writes.
    Damaged(String),
    /// The target lacks what it needs (a policy's role).
    Target(String),
}

/// A section's SQL as it runs on a target that has `roles`: ownership
/// statements and privileges naming missing roles left out, and checked
/// for what pg_dump never writes ([`schema_sql`]) on the very text that
/// runs: lines left out must not join what was around them into a
/// statement a check of the whole file did not see.
fn for_target(text: &str, roles: &Roles) -> Result<(String, LeftOut), Refused> {
    let sql = schema_sql(text).map_err(Refused::Damaged)?;
    let (sql, left) = privileges::known_roles_only(&sql, roles).map_err(Refused::Target)?;
    if let Some(line) = copy_with_program(&sql) {
        return Err(Refused::Damaged(format!(
            "line {line} (once privileges naming missing roles are left out) has a COPY … FROM/TO PROGRAM, which runs a command on the database server"
        )));
    }
    Ok((sql, left))
}

/// The target's roles, which privileges in the schema may name.
async fn target_roles(target: &Shard) -> Result<Roles, AgentError> {
    let admin = connect::postgres(target, None, TIMEOUT).await?;
    let rows = admin
        .query("SELECT rolname::text FROM pg_roles", &[])
        .await
        .map_err(pg_err(target, "listing the target's roles"))?;
    rows.iter()
        .map(|r| r.try_get::<_, String>(0))
        .collect::<Result<Roles, _>>()
        .map_err(pg_err(target, "listing the target's roles"))
}

/// The statements of a materialized-view file, checked line by line
/// ([`super::matviews::checked`]).
async fn refreshes_sql(
    f: &crate::manifest::StoredFile,
    target: &Shard,
    opts: &RestoreOptions,
) -> Result<String, AgentError> {
    let sql = load_checked(opts, &f.into(), &target.name).await?;
    super::matviews::checked(&String::from_utf8_lossy(&sql)).map_err(|what| AgentError::Damaged {
        shard: target.name.clone(),
        what: format!(
            "materialized-view file {}: {what}; nothing was restored from it",
            f.key
        ),
    })
}

/// The SQL of a pg_dump section as shardcut runs it: without ownership
/// changes (the restoring user owns what it creates) and without pg_dump's
/// `\restrict`/`\unrestrict` lines, the only psql meta-commands it writes.
/// Schema SQL goes to the server through the driver, never through psql,
/// so a meta-command planted in a backup (`\!` runs a shell command in
/// psql) cannot run; any other line that starts one is refused all the
/// same, naming the line, as the sign of a tampered file.
pub(super) fn schema_sql(text: &str) -> Result<String, String> {
    let mut out = String::with_capacity(text.len());
    for (n, line) in text.lines().enumerate() {
        if line.starts_with("ALTER ") && line.contains(" OWNER TO ") {
            continue;
        }
        if is_dump_guard(line) {
            continue;
        }
        if line.trim_start().starts_with('\\') {
            let shown: String = line.chars().take(60).collect();
            return Err(format!(
                "line {} holds a psql meta-command ({shown:?}), which pg_dump never writes there",
                n + 1
            ));
        }
        out.push_str(line);
        out.push('\n');
    }
    if let Some(line) = copy_with_program(&out) {
        return Err(format!(
            "line {line} has a COPY … FROM/TO PROGRAM, which runs a command on the database server and which pg_dump never writes in a schema section"
        ));
    }
    Ok(out)
}

/// The line of the first `COPY` statement in `sql` that reads from or
/// writes to `PROGRAM` (the server would run that program as its own OS
/// user). A schema-only dump holds no `COPY` at all; this looks for the
/// words `COPY … FROM|TO PROGRAM` in one statement, across lines and
/// whatever the case or spacing, so that splitting it over lines does not
/// hide it. Words are looked at everywhere, in strings, comments and
/// function bodies too, so a function body or an `EXECUTE`d string that
/// holds such a statement is refused as well. A statement ends only at a
/// `;` outside any string, quoted name, dollar quote or comment under both
/// readings of a backslash in a plain string ([`statement_ends`]; the file
/// itself may turn `standard_conforming_strings` off): a `;` hidden in a
/// string (`COPY (SELECT ';') TO PROGRAM …`) or a comment ends nothing.
fn copy_with_program(sql: &str) -> Option<usize> {
    let bytes = sql.as_bytes();
    let escaping: std::collections::HashSet<usize> =
        statement_ends(bytes, true).into_iter().collect();
    let mut ends = statement_ends(bytes, false)
        .into_iter()
        .filter(|i| escaping.contains(i))
        .peekable();
    let (mut line, mut in_copy, mut prev) = (1usize, false, &b""[..]);
    let mut word_start = None;
    for (i, &b) in bytes.iter().chain(std::iter::once(&b' ')).enumerate() {
        if is_word_byte(b) {
            word_start.get_or_insert(i);
            continue;
        }
        if let Some(from) = word_start.take() {
            let word = &bytes[from..i];
            if word.eq_ignore_ascii_case(b"COPY") {
                in_copy = true;
            } else if in_copy
                && word.eq_ignore_ascii_case(b"PROGRAM")
                && (prev.eq_ignore_ascii_case(b"FROM") || prev.eq_ignore_ascii_case(b"TO"))
            {
                return Some(line);
            }
            prev = word;
        }
        if ends.peek() == Some(&i) {
            ends.next();
            in_copy = false;
        }
        if b == b'\n' {
            line += 1;
        }
    }
    None
}

/// A byte of a word: ASCII letters, digits, `_`, and any byte of a
/// multi-byte UTF-8 character (SQL's own signs are ASCII, and no byte of a
/// multi-byte character is).
fn is_word_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b == b'_' || b >= 0x80
}

/// Where the `;`s that end a statement are in `sql`, by PostgreSQL's
/// lexical rules: not inside `'…'` (a backslash escapes in `E'…'`, and in
/// every string where `backslash_escapes`, as with
/// `standard_conforming_strings` off), `"…"`, `$tag$…$tag$`, `-- …` or a
/// nested `/* … */`. Each of those left open runs to the end.
fn statement_ends(sql: &[u8], backslash_escapes: bool) -> Vec<usize> {
    let n = sql.len();
    let mut ends = Vec::new();
    let mut i = 0;
    while i < n {
        let after_word = i > 0 && is_word_byte(sql[i - 1]);
        match sql[i] {
            b';' => {
                ends.push(i);
                i += 1;
            }
            b'\'' => {
                let escapes = backslash_escapes
                    || (after_word
                        && matches!(sql[i - 1], b'E' | b'e')
                        && !(i > 1 && is_word_byte(sql[i - 2])));
                i += 1;
                while i < n && sql[i] != b'\'' {
                    i += if escapes && sql[i] == b'\\' { 2 } else { 1 };
                }
                // `''` inside a string reads as two strings side by side.
                i += 1;
            }
            b'"' => {
                i += 1;
                while i < n && sql[i] != b'"' {
                    i += 1;
                }
                i += 1;
            }
            b'-' if sql.get(i + 1) == Some(&b'-') => {
                while i < n && sql[i] != b'\n' {
                    i += 1;
                }
            }
            b'/' if sql.get(i + 1) == Some(&b'*') => {
                let mut depth = 0u32;
                while i < n {
                    if sql[i..].starts_with(b"/*") {
                        depth += 1;
                        i += 2;
                    } else if sql[i..].starts_with(b"*/") {
                        depth -= 1;
                        i += 2;
                        if depth == 0 {
                            break;
                        }
                    } else {
                        i += 1;
                    }
                }
            }
            b'$' if !after_word && !sql.get(i + 1).is_some_and(u8::is_ascii_digit) => {
                // `$tag$…$tag$` or `$$…$$`; `$1` (a parameter) opens nothing.
                let tag_end = sql[i + 1..]
                    .iter()
                    .position(|&b| !is_word_byte(b))
                    .map(|k| i + 1 + k);
                match tag_end {
                    Some(j) if sql[j] == b'$' => {
                        let tag = &sql[i..=j];
                        i = j + 1;
                        while i < n && !sql[i..].starts_with(tag) {
                            i += 1;
                        }
                        i += tag.len();
                    }
                    _ => i += 1,
                }
            }
            _ => i += 1,
        }
    }
    ends
}

/// pg_dump's `\restrict KEY` / `\unrestrict KEY` line around a plain dump.
fn is_dump_guard(line: &str) -> bool {
    let key = line
        .strip_prefix("\\restrict ")
        .or_else(|| line.strip_prefix("\\unrestrict "));
    key.is_some_and(|k| !k.is_empty() && k.bytes().all(|b| b.is_ascii_alphanumeric()))
}

/// The database's post-data section, planned (see [`PostData`]). The dump
/// writes one post-data file per database; should there be several, their
/// statements are planned together, with the first one's settings.
async fn post_data(
    source: &ShardManifest,
    target: &Shard,
    opts: &RestoreOptions,
    db: &str,
    roles: &Roles,
) -> Result<(PostData, LeftOut), AgentError> {
    let (mut sql, mut keys, mut left) = (String::new(), Vec::new(), LeftOut::default());
    for f in schema_files(source, db, "post-data") {
        let (part, part_left) = section_sql(f, target, opts, roles).await?;
        sql.push_str(&part);
        left.add(part_left);
        keys.push(f.key.as_str());
    }
    let plan = PostData::plan(&sql);
    // Checked again as it will run: one block at a time.
    for piece in plan.pieces() {
        if let Some(line) = copy_with_program(&piece) {
            let object = piece
                .lines()
                .find(|l| l.starts_with("-- Name: "))
                .unwrap_or("its settings");
            let object: String = object.chars().take(120).collect();
            return Err(AgentError::Damaged {
                shard: target.name.clone(),
                what: format!(
                    "schema file {}, block {object:?}: its line {line} has a COPY … FROM/TO PROGRAM, which runs a command on the database server and which pg_dump never writes in a schema section; nothing was restored from it",
                    keys.join(", ")
                ),
            });
        }
    }
    Ok((plan, left))
}

/// Runs a pg_dump section through the server; what it left out.
async fn run_section(
    source: &ShardManifest,
    target: &Shard,
    opts: &RestoreOptions,
    db: &str,
    section: &str,
    roles: &Roles,
) -> Result<LeftOut, AgentError> {
    let mut left = LeftOut::default();
    for f in schema_files(source, db, section) {
        let (sql, part_left) = section_sql(f, target, opts, roles).await?;
        run_sql(target, db, &sql, section).await?;
        left.add(part_left);
    }
    Ok(left)
}

/// Runs schema SQL on `db` through the server, all of it or nothing (one
/// implicit transaction), stopping at the first error.
async fn run_sql(target: &Shard, db: &str, sql: &str, section: &str) -> Result<(), AgentError> {
    let client = connect::postgres(target, Some(db), TIMEOUT).await?;
    client.batch_execute(sql).await.map_err(pg_err(
        target,
        &format!("restoring the {section} schema of {db}"),
    ))
}

/// The post-data statements no load worker built, as `pg_restore -j` runs
/// them once all data is in: indexes and constraints other than foreign
/// keys (each on one table) `parallelism` at a time on their own
/// connections (two on one table wait for each other's lock), those that
/// keep reads out first; then foreign keys, triggers and the rest, in the
/// dump's order, in one batch. `ready` is called during the index builds
/// that let reads through (see [`ready_during`]).
async fn run_post_data(
    target: &Shard,
    opts: &RestoreOptions,
    db: &str,
    post: &PostData,
    ready: impl FnOnce(),
) -> Result<(), AgentError> {
    let (reading, locking): (Vec<Build>, Vec<Build>) =
        post.remaining().into_iter().partition(|b| b.lets_reads);
    let settings = Arc::new(post.settings.clone());
    let sessions = opts.parallelism.max(1);
    let build = |blocks: Vec<Build>| {
        let (shard, settings) = (target.clone(), settings.clone());
        drain(blocks, sessions, target, db, move |worker, block: Build| {
            let (shard, settings) = (shard.clone(), settings.clone());
            async move {
                let client = worker.post(&shard, &settings).await?;
                client.batch_execute(&block.sql).await.map_err(pg_err(
                    &shard,
                    &format!("building the indexes of {}", worker.db),
                ))
            }
        })
    };
    build(locking).await?;
    ready_during(build(reading), ready).await?;
    if let Some(sql) = &post.rest {
        run_sql(target, db, sql, "post-data").await?;
    }
    Ok(())
}

/// A partial restore runs pg_dump's schema sections whole (they are plain
/// SQL and cannot be filtered by table), then drops the tables that were
/// not selected (and, through CASCADE, views built on them). They hold no
/// data: only selected tables were loaded.
async fn drop_unselected(
    source: &ShardManifest,
    target: &Shard,
    opts: &RestoreOptions,
    db: &str,
) -> Result<(), AgentError> {
    let unselected: Vec<String> = source
        .table_list
        .iter()
        .filter(|t| t.database == db && !opts.selected(t))
        .map(|t| {
            format!(
                "{}.{}",
                ident(t.schema.as_deref().unwrap_or("public")),
                ident(&t.name)
            )
        })
        .collect();
    if unselected.is_empty() {
        return Ok(());
    }
    let client = reader(target, db, TIMEOUT).await?;
    client
        .batch_execute(&format!(
            "DROP TABLE IF EXISTS {} CASCADE",
            unselected.join(", ")
        ))
        .await
        .map_err(pg_err(
            target,
            &format!("removing the tables of {db} that were not selected"),
        ))
}

/// One table's load: its `COPY` statement (without options) and its chunks.
struct TableLoad {
    name: String,
    schema: String,
    table: String,
    copy: String,
    chunks: Vec<Recorded>,
    /// Its rows go to its partitions.
    partitioned: bool,
    bytes_raw: u64,
    /// Where every column's text is turned into binary here (see
    /// [`binary_load`]), the chunks are loaded in the binary format.
    binary: Option<Arc<BinaryLoad>>,
}

impl TableLoad {
    /// Its `COPY` statement, with `FREEZE` if `freeze`.
    fn sql(&self, freeze: bool) -> String {
        let options: Vec<&str> = [
            self.binary.is_some().then_some("FORMAT binary"),
            freeze.then_some("FREEZE"),
        ]
        .into_iter()
        .flatten()
        .collect();
        if options.is_empty() {
            return self.copy.clone();
        }
        format!("{} WITH ({})", self.copy, options.join(", "))
    }
}

/// Where a table's load comes in the workers' list, which they take from
/// the end: bundled tables (small) first in the list, in reverse bundle
/// order, so that they are taken in bundle order, after every other table,
/// taken largest first.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum LoadOrder {
    Bundled(std::cmp::Reverse<crate::manifest::BundlePlace>),
    Own(u64),
}

impl LoadOrder {
    fn of(t: &TableManifest) -> Self {
        match reading_order(t) {
            Some(place) => LoadOrder::Bundled(std::cmp::Reverse(place)),
            None => LoadOrder::Own(t.bytes_raw),
        }
    }
}

/// A plain table at least this large is loaded truncated in its load's
/// transaction, so that `COPY … FREEZE` can write its rows frozen; a
/// smaller one is not worth the new relation file TRUNCATE makes (with
/// thousands of small tables that was a file created and one unlinked per
/// table).
const FREEZE_MIN_BYTES: u64 = 1 << 20;

/// Loads every chunk of `db` with `COPY … FROM STDIN`, in parallel.
///
/// With at least as many tables as workers, each worker loads whole tables,
/// largest first, in one transaction that first truncates the (new, empty)
/// table: then `COPY … FREEZE` may write the rows already frozen and their
/// pages all-visible, so the index builds and the verification read that
/// follow do not rewrite every page to set hint bits. Right after a plain
/// table's load commits, the same worker builds its indexes and
/// constraints (while the others go on loading) and announces the table as
/// restored during the build (see [`ready_during`]). With fewer tables
/// than workers, chunks are loaded in parallel, each in its own
/// transaction, so that one big table still loads on every worker; its
/// indexes wait for all data, and the tables are returned, to be announced
/// while those are built.
async fn load_data(
    source: &ShardManifest,
    target: &Shard,
    opts: &RestoreOptions,
    db: &str,
    post: &Arc<PostData>,
) -> Result<Vec<String>, AgentError> {
    let partitioned = {
        let client = reader(target, db, TIMEOUT).await?;
        partitioned_tables(&client).await.map_err(pg_err(
            target,
            &format!("listing the partitioned tables of {db}"),
        ))?
    };
    let mut tables: Vec<(LoadOrder, TableLoad)> = source
        .table_list
        .iter()
        .filter(|t| t.database == db && opts.selected(t) && !t.chunks.is_empty())
        .map(|t| {
            let types: Vec<&str> = t.columns.iter().map(|c| c.data_type.as_str()).collect();
            let binary = binary_copy::columns(&types)
                .and_then(BinaryLoad::new)
                .map(Arc::new);
            let schema = t.schema.clone().unwrap_or_else(|| "public".into());
            let load = TableLoad {
                name: t.qualified(),
                copy: format!(
                    "COPY {}.{}{} FROM STDIN",
                    ident(&schema),
                    ident(&t.name),
                    super::copy_columns(t.columns.iter().map(|c| c.name.as_str()))
                ),
                partitioned: partitioned.contains(&(schema.clone(), t.name.clone())),
                schema,
                table: t.name.clone(),
                chunks: t
                    .chunks
                    .iter()
                    .map(|c| Recorded::chunk(source, c, &target.name))
                    .collect::<Result<_, _>>()?,
                bytes_raw: t.bytes_raw,
                binary,
            };
            Ok((LoadOrder::of(t), load))
        })
        .collect::<Result<_, AgentError>>()?;
    let workers = opts.parallelism.max(1);
    if tables.len() < workers {
        let tables: Vec<TableLoad> = tables.into_iter().map(|(_, t)| t).collect();
        let names = tables.iter().map(|t| t.name.clone()).collect();
        load_chunks(tables, target, opts, db).await?;
        return Ok(names);
    }
    // Workers pop from the end: the largest table goes first, the bundled
    // ones last, in the order of their bundles.
    tables.sort_by_key(|(order, _)| *order);
    let tables = tables.into_iter().map(|(_, t)| t).collect();
    let (shard, opts, post) = (target.clone(), opts.clone(), post.clone());
    drain(tables, workers, target, db, move |worker, t| {
        let (shard, opts, post) = (shard.clone(), opts.clone(), post.clone());
        async move {
            let client = worker.load(&shard).await?;
            let frozen = load_table(client, &shard, &opts, &t).await?;
            // A partitioned table's indexes span its partitions, which
            // other statements build; they wait for all data.
            let mut blocks = if frozen {
                post.take(&(t.schema.clone(), t.table.clone()))
            } else {
                Vec::new()
            };
            if blocks.is_empty() {
                opts.table_ready(t.name.clone());
                return Ok(());
            }
            // In the dump's order, where pg_dump puts a table's constraints
            // (which keep reads out) before its indexes: the table is
            // announced during the index builds after the last of them.
            let reads_wait = blocks
                .iter()
                .rposition(|b| !b.lets_reads)
                .map_or(0, |i| i + 1);
            let reading = blocks.split_off(reads_wait);
            let client = worker.post(&shard, &post.settings).await?;
            let what = format!("building the indexes of {}", t.name);
            let build = |blocks: Vec<Build>| async {
                for block in blocks {
                    client
                        .batch_execute(&block.sql)
                        .await
                        .map_err(pg_err(&shard, &what))?;
                }
                Ok::<(), AgentError>(())
            };
            build(blocks).await?;
            ready_during(build(reading), || opts.table_ready(t.name.clone())).await
        }
    })
    .await?;
    Ok(Vec::new())
}

/// Runs `work` on every item with `workers` workers, each taking the next
/// item off the end of the list (callers order it last-first); the first
/// error fails the load.
async fn drain<T, F, Fut>(
    items: Vec<T>,
    workers: usize,
    target: &Shard,
    db: &str,
    work: F,
) -> Result<(), AgentError>
where
    T: Send + 'static,
    F: Fn(Arc<Worker>, T) -> Fut + Clone + Send + 'static,
    Fut: std::future::Future<Output = Result<(), AgentError>> + Send,
{
    let queue = Arc::new(std::sync::Mutex::new(items));
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..workers.max(1) {
        let (queue, work) = (queue.clone(), work.clone());
        let worker = Arc::new(Worker {
            db: db.to_string(),
            load: OnceCell::new(),
            post: OnceCell::new(),
        });
        tasks.spawn(async move {
            loop {
                let next = queue.lock().unwrap_or_else(|p| p.into_inner()).pop();
                let Some(item) = next else {
                    break;
                };
                work(worker.clone(), item).await?;
            }
            Ok::<(), AgentError>(())
        });
    }
    join_loaders(tasks, &target.name).await
}

/// A worker's two sessions, each opened when first needed: one loads data,
/// one builds indexes with pg_dump's settings (which may name another
/// client encoding than the one the chunks are in, so they never reach
/// the loading session).
struct Worker {
    db: String,
    load: OnceCell<tokio_postgres::Client>,
    post: OnceCell<tokio_postgres::Client>,
}

impl Worker {
    /// The loading session: its commits do not wait for the WAL flush (a
    /// crash mid-restore fails the restore whatever was committed).
    async fn load(&self, target: &Shard) -> Result<&tokio_postgres::Client, AgentError> {
        self.load
            .get_or_try_init(|| async {
                let client = reader(target, &self.db, TIMEOUT).await?;
                client
                    .batch_execute("SET synchronous_commit = off")
                    .await
                    .map_err(pg_err(target, "setting up a load session"))?;
                Ok(client)
            })
            .await
    }

    /// The index-building session, set up with pg_dump's `settings`.
    async fn post(
        &self,
        target: &Shard,
        settings: &str,
    ) -> Result<&tokio_postgres::Client, AgentError> {
        self.post
            .get_or_try_init(|| async {
                let client = connect::postgres(target, Some(&self.db), TIMEOUT).await?;
                client.batch_execute(settings).await.map_err(pg_err(
                    target,
                    &format!("building the indexes of {}", self.db),
                ))?;
                Ok(client)
            })
            .await
    }
}

/// The text a binary load turns at a time: a piece ends at the first line
/// end past this many bytes, and goes to the server before the next one is
/// turned.
const BINARY_PIECE: usize = 256 << 10;

/// Sends one checked chunk through `COPY` (`sql`, in the binary format if
/// `binary`). A chunk that cannot be turned into binary tuples aborts the
/// `COPY` (the sink is dropped unfinished) with the line it stopped at.
async fn copy_chunk(
    client: &tokio_postgres::Client,
    target: &Shard,
    opts: &RestoreOptions,
    sql: &str,
    binary: Option<&BinaryLoad>,
    table: &str,
    chunk: &Recorded,
) -> Result<(), AgentError> {
    let raw = load_checked(opts, chunk, &target.name).await?;
    let key = &chunk.key;
    let what = format!("loading {table} from {key}");
    let sink = client
        .copy_in::<_, Bytes>(sql)
        .await
        .map_err(pg_err(target, &what))?;
    futures_util::pin_mut!(sink);
    let Some(binary) = binary else {
        sink.send(Bytes::from(raw))
            .await
            .map_err(pg_err(target, &what))?;
        return sink.finish().await.map(drop).map_err(pg_err(target, &what));
    };
    // The header goes out with the first piece, the trailer with the last
    // (an empty chunk is one piece of both).
    let mut out = binary_load::HEADER.to_vec();
    let (mut rest, mut line) = (raw.as_slice(), 1);
    loop {
        let end = match rest.get(BINARY_PIECE..) {
            Some(tail) => {
                memchr::memchr(b'\n', tail).map_or(rest.len(), |nl| BINARY_PIECE + nl + 1)
            }
            None => rest.len(),
        };
        line += binary
            .rows(&rest[..end], line, &mut out)
            .map_err(|why| AgentError::Damaged {
                shard: target.name.clone(),
                what: format!("chunk {key} of {table}, {why}; nothing of it was loaded"),
            })?;
        rest = &rest[end..];
        if rest.is_empty() {
            out.extend_from_slice(&binary_load::TRAILER);
        }
        sink.send(Bytes::from(std::mem::take(&mut out)))
            .await
            .map_err(pg_err(target, &what))?;
        if rest.is_empty() {
            break;
        }
        out.reserve(BINARY_PIECE + (BINARY_PIECE >> 2));
    }
    sink.finish().await.map_err(pg_err(target, &what))?;
    Ok(())
}

/// Loads a whole table in one transaction: a plain table of at least
/// [`FREEZE_MIN_BYTES`] truncated first, so that it can take its rows
/// frozen. A partitioned table cannot (its rows go to its partitions); it
/// and smaller tables are loaded unfrozen, a table of one chunk by a lone
/// `COPY` (atomic on its own). Returns whether the table was a plain one.
async fn load_table(
    client: &tokio_postgres::Client,
    target: &Shard,
    opts: &RestoreOptions,
    t: &TableLoad,
) -> Result<bool, AgentError> {
    let what = format!("loading {}", t.name);
    let freeze = !t.partitioned && t.bytes_raw >= FREEZE_MIN_BYTES;
    let sql = t.sql(freeze);
    let binary = t.binary.as_deref();
    if let (false, [chunk]) = (freeze, t.chunks.as_slice()) {
        copy_chunk(client, target, opts, &sql, binary, &t.name, chunk).await?;
        return Ok(!t.partitioned);
    }
    let target_name = format!("{}.{}", ident(&t.schema), ident(&t.table));
    let begin = if !freeze {
        "BEGIN".to_string()
    } else {
        format!("BEGIN; TRUNCATE ONLY {target_name}")
    };
    client
        .batch_execute(&begin)
        .await
        .map_err(pg_err(target, &what))?;
    for chunk in &t.chunks {
        if let Err(e) = copy_chunk(client, target, opts, &sql, binary, &t.name, chunk).await {
            drop(client.batch_execute("ROLLBACK").await);
            return Err(e);
        }
    }
    client
        .batch_execute("COMMIT")
        .await
        .map_err(pg_err(target, &what))?;
    Ok(!t.partitioned)
}

/// Loads chunks in parallel, each in its own transaction.
async fn load_chunks(
    tables: Vec<TableLoad>,
    target: &Shard,
    opts: &RestoreOptions,
    db: &str,
) -> Result<(), AgentError> {
    // Workers pop from the end: reversed, chunks load in key order.
    let items: Vec<(String, String, Option<Arc<BinaryLoad>>, Recorded)> = tables
        .into_iter()
        .flat_map(|t| {
            let sql = t.sql(false);
            let (name, binary) = (t.name, t.binary);
            t.chunks
                .into_iter()
                .map(move |c| (name.clone(), sql.clone(), binary.clone(), c))
        })
        .rev()
        .collect();
    let (shard, load_opts) = (target.clone(), opts.clone());
    drain(
        items,
        opts.parallelism,
        target,
        db,
        move |worker, (table, sql, binary, chunk)| {
            let (shard, opts) = (shard.clone(), load_opts.clone());
            async move {
                let client = worker.load(&shard).await?;
                copy_chunk(
                    client,
                    &shard,
                    &opts,
                    &sql,
                    binary.as_deref(),
                    &table,
                    &chunk,
                )
                .await
            }
        },
    )
    .await
}

#[cfg(test)]
mod tests {
    use super::{for_target, schema_sql, Refused, Roles};

    /// A `COPY … TO PROGRAM` whose pieces a privilege line kept apart, in
    /// a planted block: checked before the line was left out, the `;` of
    /// the GRANT ended the COPY; what runs is checked, and it is refused.
    #[test]
    fn a_program_joined_by_a_privilege_left_out_is_refused() {
        let planted = "-- Name: x; Type: ACL; Schema: -; Owner: -\n\
                       COPY (SELECT 1) TO\n\
                       GRANT ALL ON SCHEMA public TO no_such_role;\n\
                       PROGRAM 'touch /tmp/pwned';\n";
        let none = Roles::new();
        match for_target(planted, &none) {
            Err(Refused::Damaged(what)) => assert!(what.contains("PROGRAM"), "{what}"),
            other => panic!("not refused: {other:?}"),
        }
        // With the role there, the line stays, and the COPY is one the
        // server would refuse as it is (`TO` then `GRANT`): it goes.
        let roles: Roles = ["no_such_role".to_string()].into_iter().collect();
        assert!(for_target(planted, &roles).is_ok());
    }

    #[test]
    fn pg_dump_guards_and_owners_go_and_meta_commands_are_refused() {
        let dump = "\\restrict AbC123\nSET lock_timeout = 0;\nCREATE TABLE t (a int);\nALTER TABLE t OWNER TO someone;\n\\unrestrict AbC123\n";
        assert_eq!(
            schema_sql(dump).unwrap(),
            "SET lock_timeout = 0;\nCREATE TABLE t (a int);\n"
        );
        for bad in [
            "CREATE TABLE t (a int);\n\\! touch /tmp/x\n",
            "\\unrestrict AbC123\n\\! touch /tmp/x\n",
            "  \\copy t from program 'id'\n",
            "\\restrict\n",
            "\\restrict a;b\n",
        ] {
            let err = schema_sql(bad).unwrap_err();
            assert!(err.contains("psql meta-command"), "{bad:?}: {err}");
        }
    }

    #[test]
    fn copy_from_or_to_a_program_is_refused_however_it_is_written() {
        for (bad, line) in [
            ("CREATE TABLE t (a int);\nCOPY t FROM PROGRAM 'id';\n", 2),
            ("copy t\n  from\n  program 'id';\n", 3),
            ("CREATE FUNCTION f() RETURNS void AS $$\nBEGIN\n  COPY t TO PROGRAM 'curl x';\nEND $$ LANGUAGE plpgsql;\n", 3),
            ("COPY (SELECT 1) TO\tPROGRAM 'x';\n", 1),
            // A `;` that ends nothing: in a string, a comment, a quoted
            // name, a dollar quote, an E'' string, or in a string where the
            // file's own `SET standard_conforming_strings = off` makes a
            // backslash escape.
            ("COPY (SELECT ';') TO PROGRAM 'id';\n", 1),
            ("COPY t /*;*/ FROM PROGRAM 'id';\n", 1),
            ("COPY t /* /* ; */ ; */ FROM PROGRAM 'id';\n", 1),
            ("COPY t -- ;\nFROM PROGRAM 'id';\n", 2),
            ("COPY \"a;b\" FROM PROGRAM 'id';\n", 1),
            ("COPY (SELECT $q$;$q$) TO PROGRAM 'id';\n", 1),
            ("COPY (SELECT $$;$$) TO PROGRAM 'id';\n", 1),
            ("COPY (SELECT E'\\';') TO PROGRAM 'id';\n", 1),
            (
                "SET standard_conforming_strings = off;\nCOPY (SELECT '\\';') TO PROGRAM 'id';\n",
                2,
            ),
            // In a string that EXECUTE runs.
            (
                "DO $$ BEGIN EXECUTE 'COPY t TO PROGRAM ''id'''; END $$;\n",
                1,
            ),
        ] {
            let err = schema_sql(bad).unwrap_err();
            assert!(err.contains(&format!("line {line} has a COPY")), "{bad:?}: {err}");
        }
        // Words alone, or a COPY that reads a file or STDIN, are no program.
        for good in [
            "COMMENT ON TABLE t IS 'copied from the program';\n",
            "COPY t FROM STDIN;\n",
            "CREATE TABLE program (a int);\nCOPY program FROM STDIN;\n",
            // A statement with COPY ends at its `;`, in a function body
            // too, and what follows is another statement.
            "CREATE FUNCTION f() RETURNS void AS $$ BEGIN COPY t TO STDOUT; END $$ LANGUAGE plpgsql;\nCREATE VIEW v AS SELECT 1 FROM program;\n",
            "COMMENT ON TABLE t IS 'a;b';\nCOPY t FROM STDIN;\nSELECT 1 FROM program;\n",
            "PREPARE p AS SELECT $1 FROM t; COPY t FROM STDIN; SELECT 1 FROM program;\n",
        ] {
            assert!(schema_sql(good).is_ok(), "{good:?}");
        }
    }
}
