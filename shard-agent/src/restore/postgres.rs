//! Restoring a PostgreSQL shard: pre-data schema with psql, data with
//! `COPY … FROM STDIN` per chunk, post-data schema, then sequence values.

use std::process::Stdio;
use std::sync::Arc;

use bytes::Bytes;
use futures_util::SinkExt;
use tokio::io::AsyncWriteExt;
use topology::Shard;

use super::{
    chunk_items, databases, join_loaders, load_checked, schema_files, RestoreOptions, ShardRestore,
};
use crate::connect;
use crate::error::AgentError;
use crate::manifest::ShardManifest;
use crate::postgres::schema::client_command;
use crate::postgres::{ident, pg_err, reader};

const TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

pub(super) async fn restore(
    source: &ShardManifest,
    target: &Shard,
    opts: &RestoreOptions,
) -> Result<ShardRestore, AgentError> {
    let mut done = ShardRestore::default();
    for db in databases(source, opts) {
        prepare_database(target, &db, opts.overwrite).await?;
        done.databases.push(db.clone());
        run_section(source, target, opts, &db, "pre-data").await?;
        load_data(source, target, opts, &db).await?;
        run_post_data(source, target, opts, &db).await?;
        for f in schema_files(source, &db, "sequences") {
            let sql = load_checked(&opts.repo, &f.key, &f.xxh3, &target.name).await?;
            let client = reader(target, &db, TIMEOUT).await?;
            client
                .batch_execute(&String::from_utf8_lossy(&sql))
                .await
                .map_err(pg_err(target, &format!("setting the sequences of {db}")))?;
        }
        drop_unselected(source, target, opts, &db).await?;
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
                "SELECT count(*) FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace \
                 WHERE c.relkind IN ('r', 'p') AND n.nspname NOT IN ('pg_catalog', 'information_schema')",
                &[],
            )
            .await
            .and_then(|r| r.try_get(0))
            .map_err(pg_err(shard, "inspecting the target"))?;
        return Ok((true, tables));
    }
    Ok((false, 0))
}

fn refusal(shard: &Shard, db: &str, tables: i64) -> AgentError {
    AgentError::Tool {
        shard: shard.name.clone(),
        what: format!(
            "target database {db} exists and holds {tables} table(s); nothing was changed. Use --overwrite to replace it"
        ),
    }
}

/// Refuses, without changing anything, a target database that exists and
/// holds tables, unless `overwrite`.
pub(super) async fn check_target(
    source: &ShardManifest,
    target: &Shard,
    opts: &RestoreOptions,
) -> Result<(), AgentError> {
    for db in databases(source, opts) {
        let (_, tables) = inspect(target, &db).await?;
        if tables > 0 && !opts.overwrite {
            return Err(refusal(target, &db, tables));
        }
    }
    Ok(())
}

/// Replaces (the caller checked `overwrite`) or creates `db` empty.
async fn prepare_database(shard: &Shard, db: &str, overwrite: bool) -> Result<(), AgentError> {
    let (exists, tables) = inspect(shard, db).await?;
    if tables > 0 && !overwrite {
        return Err(refusal(shard, db, tables));
    }
    let admin = connect::postgres(shard, None, TIMEOUT).await?;
    if exists {
        admin
            .batch_execute(&format!("DROP DATABASE {} WITH (FORCE)", ident(db)))
            .await
            .map_err(pg_err(shard, &format!("dropping database {db}")))?;
    }
    admin
        .batch_execute(&format!("CREATE DATABASE {}", ident(db)))
        .await
        .map_err(pg_err(shard, &format!("creating database {db}")))?;
    Ok(())
}

/// A section's SQL with ownership statements left out (as
/// `pg_restore --no-owner` does): objects belong to the restoring user,
/// since the source's roles need not exist on the target.
async fn section_sql(
    f: &crate::manifest::StoredFile,
    target: &Shard,
    opts: &RestoreOptions,
) -> Result<String, AgentError> {
    let sql = load_checked(&opts.repo, &f.key, &f.xxh3, &target.name).await?;
    Ok(String::from_utf8_lossy(&sql)
        .lines()
        .filter(|l| !(l.starts_with("ALTER ") && l.contains(" OWNER TO ")))
        .map(|l| format!("{l}\n"))
        .collect())
}

/// Runs a pg_dump section with psql.
async fn run_section(
    source: &ShardManifest,
    target: &Shard,
    opts: &RestoreOptions,
    db: &str,
    section: &str,
) -> Result<(), AgentError> {
    for f in schema_files(source, db, section) {
        let sql = section_sql(f, target, opts).await?;
        psql(target, db, &sql, section).await?;
    }
    Ok(())
}

/// Feeds `sql` to psql (stopping at the first error).
async fn psql(target: &Shard, db: &str, sql: &str, section: &str) -> Result<(), AgentError> {
    let mut cmd = client_command(target, "psql", db);
    cmd.args(["-X", "-q", "-v", "ON_ERROR_STOP=1"])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    let tool = |what: String| AgentError::Tool {
        shard: target.name.clone(),
        what,
    };
    let mut child = cmd
        .spawn()
        .map_err(|err| tool(format!("cannot run psql: {err}")))?;
    if let Some(mut stdin) = child.stdin.take() {
        stdin.write_all(sql.as_bytes()).await.map_err(|err| {
            tool(format!(
                "feeding the {section} schema of {db} to psql: {err}"
            ))
        })?;
    }
    let out = child
        .wait_with_output()
        .await
        .map_err(|err| tool(format!("waiting for psql: {err}")))?;
    if !out.status.success() {
        return Err(tool(format!(
            "restoring the {section} schema of {db} failed: {}",
            String::from_utf8_lossy(&out.stderr)
                .trim()
                .replace('\n', " ")
        )));
    }
    Ok(())
}

/// pg_dump's plain SQL split into its preamble (session settings) and one
/// block per object, each with the object's type from its `-- Name: …;
/// Type: …;` header.
fn split_objects(sql: &str) -> (String, Vec<(String, String)>) {
    let lines: Vec<&str> = sql.lines().collect();
    let starts: Vec<usize> = lines
        .iter()
        .enumerate()
        .filter(|(i, l)| l.starts_with("-- Name: ") && *i > 0 && lines[i - 1] == "--")
        .map(|(i, _)| i - 1)
        .collect();
    let join = |range: &[&str]| range.iter().map(|l| format!("{l}\n")).collect::<String>();
    let preamble = join(&lines[..starts.first().copied().unwrap_or(lines.len())]);
    let mut blocks = Vec::new();
    for (n, start) in starts.iter().enumerate() {
        let end = starts.get(n + 1).copied().unwrap_or(lines.len());
        let kind = lines[start + 1]
            .split("; Type: ")
            .nth(1)
            .and_then(|t| t.split(';').next())
            .unwrap_or("")
            .to_string();
        blocks.push((kind, join(&lines[*start..end])));
    }
    (preamble, blocks)
}

/// The post-data section, as `pg_restore -j` runs it: indexes and
/// constraints other than foreign keys (each on one table) are built
/// `parallelism` at a time on their own connections (two on one table wait
/// for each other's lock); then foreign keys, triggers and the rest, in the
/// dump's order, through psql.
async fn run_post_data(
    source: &ShardManifest,
    target: &Shard,
    opts: &RestoreOptions,
    db: &str,
) -> Result<(), AgentError> {
    for f in schema_files(source, db, "post-data") {
        let sql = section_sql(f, target, opts).await?;
        let (preamble, blocks) = split_objects(&sql);
        let (parallel, rest): (Vec<_>, Vec<_>) = blocks
            .into_iter()
            .partition(|(kind, _)| kind == "INDEX" || kind == "CONSTRAINT");
        // psql meta-commands (`\restrict`) only mean something to psql.
        let no_meta = |sql: &str| -> String {
            sql.lines()
                .filter(|l| !l.starts_with('\\'))
                .map(|l| format!("{l}\n"))
                .collect()
        };
        let queue = Arc::new(std::sync::Mutex::new(
            parallel
                .into_iter()
                .map(|(_, b)| no_meta(&b))
                .rev()
                .collect::<Vec<_>>(),
        ));
        let mut tasks = tokio::task::JoinSet::new();
        for _ in 0..opts.parallelism.max(1) {
            let (queue, target, db, settings) = (
                queue.clone(),
                target.clone(),
                db.to_string(),
                no_meta(&preamble),
            );
            tasks.spawn(async move {
                let client = connect::postgres(&target, Some(&db), TIMEOUT).await?;
                let what = format!("building the indexes of {db}");
                client
                    .batch_execute(&settings)
                    .await
                    .map_err(pg_err(&target, &what))?;
                loop {
                    let next = queue.lock().unwrap_or_else(|p| p.into_inner()).pop();
                    let Some(block) = next else {
                        break;
                    };
                    client
                        .batch_execute(&block)
                        .await
                        .map_err(pg_err(&target, &what))?;
                }
                Ok::<(), AgentError>(())
            });
        }
        join_loaders(tasks, &target.name).await?;
        if !rest.is_empty() {
            let mut sql = preamble;
            for (_, b) in rest {
                sql.push_str(&b);
            }
            psql(target, db, &sql, "post-data").await?;
        }
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

/// Loads every chunk of `db` with `COPY … FROM STDIN`, in parallel.
async fn load_data(
    source: &ShardManifest,
    target: &Shard,
    opts: &RestoreOptions,
    db: &str,
) -> Result<(), AgentError> {
    let items: Vec<(String, String, String, String)> = chunk_items(source, db, opts)
        .into_iter()
        .map(|(t, i)| {
            let cols: Vec<String> = t.columns.iter().map(|c| ident(&c.name)).collect();
            let sql = format!(
                "COPY {}.{} ({}) FROM STDIN",
                ident(t.schema.as_deref().unwrap_or("public")),
                ident(&t.name),
                cols.join(", ")
            );
            (
                t.chunks[i].key.clone(),
                t.chunks[i].xxh3.clone(),
                sql,
                t.qualified(),
            )
        })
        .collect();
    let queue = Arc::new(std::sync::Mutex::new(items));
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..opts.parallelism.max(1) {
        let (queue, target, opts, db) =
            (queue.clone(), target.clone(), opts.clone(), db.to_string());
        tasks.spawn(async move {
            let client = reader(&target, &db, TIMEOUT).await?;
            loop {
                let next = queue.lock().unwrap_or_else(|p| p.into_inner()).pop();
                let Some((key, xxh3, sql, table)) = next else {
                    break;
                };
                let raw = load_checked(&opts.repo, &key, &xxh3, &target.name).await?;
                let what = format!("loading {table} from {key}");
                let sink = client
                    .copy_in::<_, Bytes>(sql.as_str())
                    .await
                    .map_err(pg_err(&target, &what))?;
                futures_util::pin_mut!(sink);
                sink.send(Bytes::from(raw))
                    .await
                    .map_err(pg_err(&target, &what))?;
                sink.finish().await.map_err(pg_err(&target, &what))?;
            }
            Ok::<(), AgentError>(())
        });
    }
    join_loaders(tasks, &target.name).await
}
