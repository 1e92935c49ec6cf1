//! Readiness of a MySQL or MariaDB shard.

use std::collections::HashMap;
use std::time::Duration;

use mysql_async::prelude::Queryable;
use mysql_async::{Conn, Row};
use topology::Shard;

use super::binlog_filters::BinlogFilters;
use super::sql::{literal_list, number, text, PLAIN_SQL_MODE, SYSTEM_DATABASES};
use crate::connect;
use crate::error::{AgentError, DbError};
use crate::preflight::{missing_databases, Depth, Finding, ShardReport, TableInfo};

pub(super) async fn check(
    shard: &Shard,
    timeout: Duration,
    depth: Depth,
) -> Result<ShardReport, AgentError> {
    let mut conn = connect::mysql(shard, None, timeout).await?;
    conn.query_drop(PLAIN_SQL_MODE)
        .await
        .map_err(super::sql::query_err(shard, PLAIN_SQL_MODE))?;
    let q = |what: &str| {
        let shard = shard.name.clone();
        let what = what.to_string();
        move |source: DbError| AgentError::Query {
            shard,
            what,
            source,
        }
    };
    let vars = variables(&mut conn)
        .await
        .map_err(q("reading server variables"))?;
    let var = |k: &str| vars.get(k).cloned().unwrap_or_default();
    let version = var("version");
    let mariadb = version.contains("MariaDB") || var("version_comment").contains("MariaDB");
    let server = format!(
        "{} {}",
        if mariadb { "MariaDB" } else { "MySQL" },
        version.split('-').next().unwrap_or(&version)
    );

    let mut f = binlog_findings(&vars, mariadb);
    let infile = var("local_infile");
    f.push(if infile == "ON" || infile == "1" {
        Finding::ok("local_infile", infile)
    } else {
        Finding::warn(
            "local_infile",
            infile,
            "SET GLOBAL local_infile = ON to restore into this server (restores stream data with LOAD DATA LOCAL INFILE)",
        )
    });
    f.extend(
        privileges(&mut conn, mariadb)
            .await
            .map_err(q("reading grants"))?,
    );

    let (databases, tables) = tables(&mut conn, shard, depth)
        .await
        .map_err(q("listing tables"))?;
    f.extend(missing_databases(shard, &databases));
    let non_tx: Vec<String> = tables
        .iter()
        // Aria is crash-safe but has no MVCC: the snapshot does not cover
        // it, and its rows are read as they are when the dump gets there.
        .filter(|(_, engine)| !matches!(engine.as_str(), "InnoDB" | ""))
        .map(|(t, engine)| format!("{}.{} ({engine})", t.database, t.table))
        .collect();
    // Only a warning, which a backup's gate does not show.
    if depth == Depth::Report && matches!(var("log_bin").as_str(), "ON" | "1") {
        let filters = super::binlog_filters::read(&mut conn)
            .await
            .map_err(q("reading the binlog filters"))?;
        let selected = match &shard.databases {
            Some(list) => list.clone(),
            None => databases.clone(),
        };
        f.push(binlog_filter_finding(&filters, &selected));
    }
    f.push(table_caches(&vars, tables.len()));
    let use_now = connection_use(&mut conn)
        .await
        .map_err(q("reading the connections in use"))?;
    f.push(connections(shard, &vars, use_now, tables.len()));
    if !non_tx.is_empty() {
        f.push(Finding::warn(
            "table engines",
            non_tx.join(", "),
            "convert to InnoDB (ALTER TABLE … ENGINE=InnoDB): non-transactional tables are not covered by the consistent snapshot",
        ));
    }
    drop(conn.disconnect().await);
    Ok(ShardReport::new(
        shard,
        server,
        f,
        tables.into_iter().map(|(t, _)| t).collect(),
    ))
}

/// Whether the server's binlog filters keep changes of the `selected`
/// databases, which capture needs, out of the binary log.
fn binlog_filter_finding(filters: &BinlogFilters, selected: &[String]) -> Finding {
    if filters.is_empty() {
        return Finding::ok("binlog filters", "none");
    }
    match filters.refusal(selected) {
        // A backup works; capture refuses the shard.
        Some(why) => Finding::warn(
            "binlog filters",
            filters.describe(),
            format!("capture refuses this shard: {why}"),
        ),
        None => Finding::warn(
            "binlog filters",
            filters.describe(),
            "DDL is filtered by the session's default database (USE), not the tables it names: DDL on a selected table run from a filtered database is not in the binary log, and a restore to a later point lacks it; remove the options from the server's configuration",
        ),
    }
}

/// Findings on the binary log and GTIDs, which capture and the cut's
/// recorded position depend on.
fn binlog_findings(vars: &HashMap<String, String>, mariadb: bool) -> Vec<Finding> {
    let var = |k: &str| vars.get(k).cloned().unwrap_or_default();
    let mut f = Vec::new();
    let log_bin = var("log_bin");
    f.push(Finding::require(
        "log_bin",
        &log_bin,
        log_bin == "ON" || log_bin == "1",
        "enable the binary log: set log_bin (e.g. log_bin=mysql-bin) in the server's config and restart",
    ));
    if log_bin == "ON" || log_bin == "1" {
        f.push(sync_binlog(&var("sync_binlog")));
    }
    let fmt = var("binlog_format");
    f.push(Finding::require(
        "binlog_format",
        &fmt,
        fmt == "ROW",
        "SET GLOBAL binlog_format = 'ROW' and put binlog_format=ROW in the config",
    ));
    let image = var("binlog_row_image");
    f.push(Finding::require(
        "binlog_row_image",
        &image,
        image == "FULL",
        "SET GLOBAL binlog_row_image = 'FULL' and put binlog_row_image=FULL in the config",
    ));
    // MariaDB compresses the statements and row events it logs past
    // `log_bin_compress_min_len` (256 bytes by default), which replay can
    // neither read nor apply: capture refuses such a server.
    if let Some(compress) = vars.get("log_bin_compress") {
        f.push(Finding::require(
            "log_bin_compress",
            compress,
            compress == "OFF" || compress == "0",
            "capture refuses a server that compresses its binary log (replay can apply neither compressed statements nor compressed row events): SET GLOBAL log_bin_compress = OFF and put log_bin_compress=OFF in the config",
        ));
    }
    if let Some(meta) = vars.get("binlog_row_metadata") {
        f.push(if meta == "FULL" {
            Finding::ok("binlog_row_metadata", meta)
        } else {
            Finding::warn(
                "binlog_row_metadata",
                meta,
                "SET GLOBAL binlog_row_metadata = 'FULL' so captured row events carry column names",
            )
        });
    }
    if mariadb {
        let pos = var("gtid_binlog_pos");
        let strict = var("gtid_strict_mode");
        f.push(Finding::ok(
            "gtid_binlog_pos",
            if pos.is_empty() {
                "(empty: no transaction logged yet)".to_string()
            } else {
                pos
            },
        ));
        f.push(if strict == "ON" || strict == "1" {
            Finding::ok("gtid_strict_mode", strict)
        } else {
            Finding::warn(
                "gtid_strict_mode",
                strict,
                "SET GLOBAL gtid_strict_mode = ON so GTID gaps and duplicates are errors, not silent divergence",
            )
        });
    } else {
        let mode = var("gtid_mode");
        f.push(Finding::require(
            "gtid_mode",
            &mode,
            mode == "ON",
            "enable GTIDs: gtid_mode=ON and enforce_gtid_consistency=ON in the config",
        ));
    }
    f
}

/// A backup reads every selected table's definition and opens every one:
/// with more tables than the server's caches hold, each is read from disk
/// again, and the server's work per table grows with the table count
/// (docs/BENCHMARKS.md, "Many tables": 10,000 tables backed up in 10 s
/// with caches that hold them, 15 s with the defaults).
fn table_caches(vars: &HashMap<String, String>, tables: usize) -> Finding {
    let get = |k: &str| vars.get(k).and_then(|v| v.parse::<usize>().ok());
    let (defs, open) = (get("table_definition_cache"), get("table_open_cache"));
    let value = format!(
        "{tables} tables; table_definition_cache {}, table_open_cache {}",
        defs.map_or("(unknown)".to_string(), |n| n.to_string()),
        open.map_or("(unknown)".to_string(), |n| n.to_string())
    );
    if defs.is_some_and(|n| n < tables) || open.is_some_and(|n| n < tables) {
        Finding::warn(
            "table caches",
            value,
            format!(
                "SET GLOBAL table_definition_cache = {tables} and table_open_cache = {tables} (at least the number of tables), and put them in the config: with fewer, a backup makes the server open tables from disk again and again"
            ),
        )
    } else {
        Finding::ok("table caches", value)
    }
}

/// The connections a backup of `tables` tables opens on the server: the
/// control connection that holds the cut, and the snapshot connections
/// (one a worker, more on a shard of many tables: [`super::snapshot_connections`]).
/// A server or an account whose limit is below that refuses the backup as
/// it starts; a server with fewer free connections right now is warned
/// about.
fn connections(
    shard: &Shard,
    vars: &HashMap<String, String>,
    use_now: ConnectionUse,
    tables: usize,
) -> Finding {
    // The control connection, the snapshots, and the one a lease opens to
    // end a block that outlived it (`KILL` from a fresh connection): with
    // the limit at the first two, that one is refused and the block stays.
    let needed = 2 + super::snapshot_connections(super::dump_workers(shard, tables), tables);
    let max = vars
        .get("max_connections")
        .and_then(|v| v.parse::<usize>().ok());
    let ConnectionUse { in_use, per_user } = use_now;
    let shown = |n: Option<usize>| n.map_or("(unknown)".to_string(), |n| n.to_string());
    let mut value = format!(
        "a backup opens {needed} ({tables} tables, parallelism {}; one only to end a block that outlives its lease); max_connections {}, {} in use",
        shard.parallelism,
        shown(max),
        shown(in_use)
    );
    if let Some(n) = per_user {
        value.push_str(&format!(", max_user_connections {n} for the backup user"));
    }
    let short = if per_user.is_some_and(|m| m < needed) {
        Some(format!(
            "give the backup user at least {needed} connections (GRANT USAGE ON *.* TO the user WITH MAX_USER_CONNECTIONS {needed}, or max_user_connections in the config), or lower the shard's parallelism"
        ))
    } else if max.is_some_and(|m| m < needed) {
        Some(format!(
            "SET GLOBAL max_connections to {needed} more than the server's other clients need (and in the config), or lower the shard's parallelism"
        ))
    } else {
        None
    };
    if let Some(fix) = short {
        return Finding::fail("connections", value, fix);
    }
    match (max, in_use) {
        (Some(max), Some(used)) if max.saturating_sub(used) < needed => Finding::warn(
            "connections",
            value,
            format!(
                "SET GLOBAL max_connections = {} (and in the config): fewer connections are free now than a backup opens",
                used.saturating_add(needed)
            ),
        ),
        _ => Finding::ok("connections", value),
    }
}

/// What the server says of its connections right now.
#[derive(Clone, Copy, Debug, Default)]
struct ConnectionUse {
    /// `Threads_connected`, this connection included.
    in_use: Option<usize>,
    /// The backup user's own limit, as the session's `max_user_connections`
    /// shows it (the account's `MAX_USER_CONNECTIONS`, or else the global
    /// setting); `None` for no limit (0).
    per_user: Option<usize>,
}

async fn connection_use(conn: &mut Conn) -> Result<ConnectionUse, DbError> {
    let rows: Vec<Row> = conn
        .query("SHOW GLOBAL STATUS LIKE 'Threads_connected'")
        .await?;
    let in_use = match rows.first() {
        Some(row) => text(row, 1)?.and_then(|v| v.parse().ok()),
        None => None,
    };
    let rows: Vec<Row> = conn.query("SELECT @@SESSION.max_user_connections").await?;
    let per_user = match rows.first() {
        Some(row) => number(row, 0)?,
        None => None,
    }
    .filter(|n| *n > 0)
    .and_then(|n| usize::try_from(n).ok());
    Ok(ConnectionUse { in_use, per_user })
}

/// `sync_binlog = 0` leaves the binary log to the OS's write-back. A host
/// crash can then lose binlog events of commits InnoDB kept, which
/// point-in-time recovery replays; and `BACKUP STAGE BLOCK_COMMIT` syncs
/// the binlog while it blocks commits, so the cut's write block grows with
/// the binlog written since the OS last flushed it (docs/BENCHMARKS.md:
/// 78-195 ms after 30 s of writes, 0 ms with `sync_binlog = 1`), unless
/// the agent runs on the server's host and syncs it first (`presync`).
fn sync_binlog(value: &str) -> Finding {
    if value.parse::<u64>().is_ok_and(|n| n >= 1) {
        Finding::ok("sync_binlog", value)
    } else {
        Finding::warn(
            "sync_binlog",
            if value.is_empty() { "(unknown)" } else { value },
            "SET GLOBAL sync_binlog = 1 and put it in the config: with 0 a host crash can lose binlog events that point-in-time recovery needs, and every cut blocks commits while the server syncs the unsynced binlog (unless the agent runs on this server's host and may read its binlog)",
        )
    }
}

async fn variables(conn: &mut Conn) -> Result<HashMap<String, String>, DbError> {
    let rows: Vec<Row> = conn
        .query(
            "SHOW GLOBAL VARIABLES WHERE Variable_name IN ('version', 'version_comment', 'log_bin', \
             'binlog_format', 'binlog_row_image', 'binlog_row_metadata', 'gtid_binlog_pos', \
             'gtid_strict_mode', 'gtid_mode', 'local_infile', 'server_id', 'sync_binlog', \
             'table_definition_cache', 'table_open_cache', 'max_connections', 'log_bin_compress')",
        )
        .await?;
    let mut out = HashMap::new();
    for row in &rows {
        if let (Some(k), v) = (text(row, 0)?, text(row, 1)?) {
            out.insert(k, v.unwrap_or_default());
        }
    }
    Ok(out)
}

/// Privileges a backup needs, and for each what it is for. MariaDB 10.5+
/// renamed REPLICATION CLIENT to BINLOG MONITOR; either is accepted.
const NEEDED: &[(&[&str], &str)] = &[
    (&["SELECT"], "read every table"),
    (&["RELOAD"], "BACKUP STAGE / FLUSH for the global cut"),
    (
        &["LOCK TABLES"],
        "lock tables during the cut on servers without backup stages",
    ),
    (&["SHOW VIEW"], "dump view definitions"),
    (&["TRIGGER"], "dump triggers"),
    (&["EVENT"], "dump scheduled events"),
    (
        &["REPLICATION CLIENT", "BINLOG MONITOR"],
        "read the binlog position",
    ),
    (
        &["REPLICATION SLAVE", "REPLICATION REPLICA"],
        "capture the binlog",
    ),
    (&["PROCESS"], "name the session that holds up a cut"),
];

async fn privileges(conn: &mut Conn, _mariadb: bool) -> Result<Vec<Finding>, DbError> {
    let rows: Vec<Row> = conn.query("SHOW GRANTS FOR CURRENT_USER()").await?;
    let mut global: Vec<String> = Vec::new();
    let mut all = false;
    for row in &rows {
        let Some(grant) = text(row, 0)? else { continue };
        let upper = grant.to_uppercase();
        let Some(rest) = upper.strip_prefix("GRANT ") else {
            continue;
        };
        let Some((privs, target)) = rest.split_once(" ON ") else {
            continue;
        };
        if !target.trim_start().starts_with("*.*") {
            continue;
        }
        if privs.trim() == "ALL PRIVILEGES" || privs.trim() == "ALL" {
            all = true;
        }
        global.extend(privs.split(',').map(|p| p.trim().to_string()));
    }
    let missing: Vec<String> = NEEDED
        .iter()
        .filter(|(names, _)| !all && !names.iter().any(|n| global.iter().any(|g| g == n)))
        .map(|(names, why)| format!("{} ({why})", names[0]))
        .collect();
    Ok(vec![if missing.is_empty() {
        Finding::ok(
            "privileges",
            if all {
                "ALL PRIVILEGES ON *.*".to_string()
            } else {
                "sufficient".to_string()
            },
        )
    } else {
        let names: Vec<&str> = missing
            .iter()
            .map(|m| m.split(" (").next().unwrap_or(m))
            .collect();
        Finding::fail(
            "privileges",
            format!("missing {}", missing.join(", ")),
            format!("GRANT {} ON *.* TO the backup user", names.join(", ")),
        )
    }])
}

/// Existing non-system databases, and the selected base tables with their
/// storage engine.
async fn tables(
    conn: &mut Conn,
    shard: &Shard,
    depth: Depth,
) -> Result<(Vec<String>, Vec<(TableInfo, String)>), DbError> {
    let rows: Vec<Row> = conn
        .query("SELECT SCHEMA_NAME FROM information_schema.SCHEMATA ORDER BY SCHEMA_NAME")
        .await?;
    let mut databases = Vec::new();
    for row in &rows {
        if let Some(d) = text(row, 0)? {
            if !SYSTEM_DATABASES.contains(&d.as_str()) {
                databases.push(d);
            }
        }
    }
    let selected: Vec<String> = match &shard.databases {
        Some(list) => list.clone(),
        None => databases.clone(),
    };
    if selected.is_empty() {
        return Ok((databases, Vec::new()));
    }
    // The row estimate and sizes make the server open each table in its
    // storage engine; the engine's name is in the table's definition.
    let sizes = match depth {
        Depth::Report => "TABLE_ROWS, COALESCE(DATA_LENGTH, 0) + COALESCE(INDEX_LENGTH, 0)",
        Depth::Gate => "NULL, NULL",
    };
    let rows: Vec<Row> = conn
        .query(format!(
            "SELECT TABLE_SCHEMA, TABLE_NAME, ENGINE, {sizes} \
             FROM information_schema.TABLES \
             WHERE TABLE_TYPE IN ('BASE TABLE', 'SYSTEM VERSIONED') AND TABLE_SCHEMA IN {} \
             ORDER BY TABLE_SCHEMA, TABLE_NAME",
            literal_list(&selected)
        ))
        .await?;
    let mut out = Vec::new();
    for row in &rows {
        let (Some(db), Some(name)) = (text(row, 0)?, text(row, 1)?) else {
            continue;
        };
        let selected = match &shard.databases {
            Some(list) => list.contains(&db),
            None => databases.contains(&db),
        };
        if !selected || shard.excludes(&db, None, &name) {
            continue;
        }
        out.push((
            TableInfo {
                database: db,
                schema: None,
                table: name,
                rows_estimate: number(row, 3)?,
                bytes: number(row, 4)?,
            },
            text(row, 2)?.unwrap_or_default(),
        ));
    }
    Ok((databases, out))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::preflight::Level;

    #[test]
    fn an_unsynced_binlog_is_a_warning() {
        assert_eq!(sync_binlog("0").level, Level::Warn);
        assert_eq!(sync_binlog("").level, Level::Warn);
        assert_eq!(sync_binlog("1").level, Level::Ok);
        assert_eq!(sync_binlog("100").level, Level::Ok);
    }

    #[test]
    fn too_few_connections_for_a_backup_are_named() {
        let text = "cluster: c\nrepository: /tmp/r\ndefaults:\n  parallelism: 2\nshards:\n  - name: m\n    engine: mysql\n    url: mysql://u@127.0.0.1:3306\n";
        let topo = topology::Topology::parse(text, std::path::Path::new("t.yaml"), &|_| None)
            .expect("a valid topology");
        let shard = &topo.shards[0];
        let vars = |max: &str| HashMap::from([("max_connections".to_string(), max.to_string())]);
        let used = |in_use: usize, per_user: Option<usize>| ConnectionUse {
            in_use: Some(in_use),
            per_user,
        };
        // 10,000 tables, 2 workers: the control connection, 10 snapshots
        // and the lease's.
        let ok = connections(shard, &vars("151"), used(10, None), 10_000);
        assert_eq!(ok.level, Level::Ok, "{ok:?}");
        assert!(ok.value.contains("a backup opens 12"), "{ok:?}");
        let busy = connections(shard, &vars("151"), used(145, None), 10_000);
        assert_eq!(busy.level, Level::Warn, "{busy:?}");
        let fix = busy.fix.unwrap_or_default();
        assert!(fix.contains("max_connections = 157"), "{fix}");
        assert_eq!(
            connections(shard, &vars("8"), used(1, None), 10_000).level,
            Level::Fail
        );
        let per_user = connections(shard, &vars("151"), used(1, Some(5)), 10_000);
        assert_eq!(per_user.level, Level::Fail, "{per_user:?}");
        let fix = per_user.fix.unwrap_or_default();
        assert!(fix.contains("MAX_USER_CONNECTIONS 12"), "{fix}");
        // Ten tables: the control connection, one a worker, the lease's.
        assert!(connections(shard, &vars("151"), used(1, None), 10)
            .value
            .contains("a backup opens 4"));
    }

    #[test]
    fn more_tables_than_the_table_caches_hold_is_a_warning() {
        let vars = |defs: &str, open: &str| {
            HashMap::from([
                ("table_definition_cache".to_string(), defs.to_string()),
                ("table_open_cache".to_string(), open.to_string()),
            ])
        };
        let w = table_caches(&vars("400", "2000"), 10_000);
        assert_eq!(w.level, Level::Warn);
        let fix = w.fix.unwrap_or_default();
        assert!(fix.contains("table_definition_cache = 10000"), "{fix}");
        assert_eq!(table_caches(&vars("400", "2000"), 300).level, Level::Ok);
        assert_eq!(
            table_caches(&vars("12000", "2000"), 5000).level,
            Level::Warn
        );
        assert_eq!(
            table_caches(&vars("12000", "12000"), 10_000).level,
            Level::Ok
        );
        assert_eq!(table_caches(&HashMap::new(), 10_000).level, Level::Ok);
    }
}
