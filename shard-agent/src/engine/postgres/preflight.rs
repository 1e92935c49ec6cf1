//! Readiness of a PostgreSQL shard.

use std::time::Duration;

use tokio_postgres::Client;
use topology::Shard;

use crate::connect;
use crate::error::{db_err, AgentError, DbError};
use crate::preflight::{missing_databases, Depth, Finding, ShardReport, TableInfo};

/// Databases of the server itself, never backed up unless named explicitly.
pub const SYSTEM_DATABASES: &[&str] = &["postgres", "template0", "template1"];

pub(super) async fn check(
    shard: &Shard,
    timeout: Duration,
    depth: Depth,
) -> Result<ShardReport, AgentError> {
    let client = connect::postgres(shard, None, timeout).await?;
    let (version, mut f, locks) = server_findings(&client, shard).await?;
    let present = databases(&client)
        .await
        .map_err(db_err(shard, "listing databases"))?;
    f.extend(missing_databases(shard, &present));
    let selected: Vec<String> = match &shard.databases {
        Some(list) => list
            .iter()
            .filter(|d| present.contains(d))
            .cloned()
            .collect(),
        None => present
            .iter()
            .filter(|d| !SYSTEM_DATABASES.contains(&d.as_str()))
            .cloned()
            .collect(),
    };
    drop(client);
    let mut access = Access::default();
    for db in &selected {
        let client = connect::postgres(shard, Some(db), timeout).await?;
        access.list_tables(&client, shard, db, depth).await?;
        let objects = large_objects(&client, shard, db).await?;
        if objects > 0 {
            access.large_objects.push(format!("{db} ({objects})"));
        }
        if depth == Depth::Gate {
            // Replica identities only make a warning, which a backup's
            // gate does not show.
            continue;
        }
        let plan = super::capture::published_tables(&client, shard, db)
            .await
            .map_err(|e| {
                db_err(shard, &format!("reading the replica identities of {db}"))(e.into())
            })?;
        access
            .no_identity
            .extend(plan.no_identity.iter().map(|t| format!("{db}.{t}")));
        access
            .unlogged
            .extend(plan.unlogged.iter().map(|t| format!("{db}.{t}")));
    }
    f.push(access.finding());
    f.push(none_found(
        "row-level security",
        &access.filtered,
        ("no policy applies to the backup user", |l| {
            format!("policies would hide rows of {l} from the backup user")
        }),
        "ALTER ROLE the backup user WITH BYPASSRLS, or exclude the listed tables in the topology",
    ));
    f.push(none_found(
        "large objects",
        &access.large_objects,
        ("none in the selected databases", |l| {
            format!("{l} hold large objects, which shardcut does not back up")
        }),
        "store them in bytea columns, or leave those databases out of the shard's `databases`",
    ));
    f.push(lock_table_check(
        access.tables.len() as i64,
        locks.0,
        locks.1,
    ));
    if !access.no_identity.is_empty() {
        // A backup works; capture (point-in-time recovery) refuses them.
        f.push(Finding::warn(
            "replica identity",
            format!(
                "no primary key or replica identity: {}",
                access.no_identity.join(", ")
            ),
            "capture refuses these tables: add a primary key, run ALTER TABLE … REPLICA IDENTITY FULL, or exclude them in the topology",
        ));
    }
    if !access.unlogged.is_empty() {
        // Backed up like any table; capture cannot read their changes.
        f.push(Finding::warn(
            "unlogged tables",
            format!(
                "no WAL is written for their changes: {}",
                access.unlogged.join(", ")
            ),
            "capture refuses these tables: ALTER TABLE … SET LOGGED, or exclude them in the topology",
        ));
    }
    Ok(ShardReport::new(
        shard,
        format!("PostgreSQL {version}"),
        f,
        access.tables,
    ))
}

/// Lock slots the cut needs beside one per selected table: other sessions'
/// locks, the catalog's, the snapshot readers'.
const LOCK_HEADROOM: i64 = 64;

/// Whether the server's shared lock table holds a lock on every one of
/// `tables` selected tables at once, as the cut takes them. It holds
/// `max_locks_per_transaction` (`per_tx`) × (`max_connections` +
/// `max_prepared_transactions`) (`sessions`) locks; past that, `LOCK TABLE`
/// fails with "out of shared memory" (pg_dump has the same limit).
fn lock_table_check(tables: i64, per_tx: i64, sessions: i64) -> Finding {
    let capacity = per_tx.saturating_mul(sessions.max(1));
    let needed = tables + LOCK_HEADROOM;
    // The smallest multiple of 64 that fits, as a setting to suggest.
    let suggest = ((needed + sessions.max(1) - 1) / sessions.max(1) + 63) / 64 * 64;
    Finding::require(
        "lock table",
        format!(
            "{tables} selected tables; the server holds {capacity} locks (max_locks_per_transaction {per_tx} × {sessions} connections)"
        ),
        needed <= capacity,
        format!(
            "the cut locks every selected table at once and would fail with \"out of shared memory\": ALTER SYSTEM SET max_locks_per_transaction = {suggest} and restart the server, or select fewer tables (databases, exclude_tables)"
        ),
    )
}

/// The server's version and the findings on its settings and the backup
/// user's role.
async fn server_findings(
    client: &Client,
    shard: &Shard,
) -> Result<(String, Vec<Finding>, (i64, i64)), AgentError> {
    let err = db_err(shard, "reading server settings");
    let row = client
        .query_one(
            "SELECT current_setting('server_version'), current_setting('server_version_num')::int, \
             current_setting('wal_level'), current_setting('max_replication_slots')::int, \
             current_setting('max_wal_senders')::int, \
             (SELECT count(*)::int FROM pg_replication_slots), \
             r.rolsuper, r.rolreplication, \
             current_setting('max_locks_per_transaction')::int8, \
             current_setting('max_connections')::int8 + current_setting('max_prepared_transactions')::int8 \
             FROM pg_roles r WHERE r.rolname = current_user",
            &[],
        )
        .await
        .map_err(|e| err(e.into()))?;
    let text = |i: usize| row.try_get::<_, String>(i).map_err(|e| err(e.into()));
    let int = |i: usize| row.try_get::<_, i32>(i).map_err(|e| err(e.into()));
    let flag = |i: usize| row.try_get::<_, bool>(i).map_err(|e| err(e.into()));
    let (version, num, wal_level) = (text(0)?, int(1)?, text(2)?);
    let (max_slots, max_senders, used_slots) = (int(3)?, int(4)?, int(5)?);
    let (superuser, replication) = (flag(6)?, flag(7)?);
    let big = |i: usize| row.try_get::<_, i64>(i).map_err(|e| err(e.into()));
    let locks = (big(8)?, big(9)?);

    let mut f = vec![
        Finding::require(
            "wal_level",
            &wal_level,
            wal_level == "logical",
            "ALTER SYSTEM SET wal_level = 'logical' and restart the server",
        ),
        Finding::require(
            "free replication slots",
            format!("{} of {max_slots}", max_slots - used_slots),
            max_slots - used_slots >= 1,
            "raise max_replication_slots (ALTER SYSTEM SET max_replication_slots = 10, restart) or drop unused slots (SELECT pg_drop_replication_slot(name))",
        ),
        Finding::require(
            "max_wal_senders",
            max_senders.to_string(),
            max_senders >= 1,
            "ALTER SYSTEM SET max_wal_senders = 10 and restart",
        ),
        Finding::require(
            "replication privilege",
            if superuser { "superuser".to_string() } else { format!("REPLICATION {}", if replication { "yes" } else { "no" }) },
            superuser || replication,
            "ALTER ROLE the backup user WITH REPLICATION",
        ),
    ];
    if num < 130_000 {
        f.push(Finding::warn(
            "server_version",
            &version,
            "PostgreSQL 13 or newer is what shardcut is tested with",
        ));
    }
    Ok((version, f, locks))
}

/// The selected tables of every database, and those the backup user
/// cannot read or lock.
/// A check that fails when `found` lists anything: its value says `none`
/// or, of the list, `some`.
fn none_found(
    check: &str,
    found: &[String],
    (none, some): (&str, fn(String) -> String),
    fix: &str,
) -> Finding {
    let value = if found.is_empty() {
        none.to_string()
    } else {
        some(found.join(", "))
    };
    Finding::require(check, value, found.is_empty(), fix)
}

#[derive(Default)]
struct Access {
    tables: Vec<TableInfo>,
    unreadable: Vec<String>,
    unlockable: Vec<String>,
    /// Tables whose row-level security policies apply to the backup user.
    filtered: Vec<String>,
    /// `db.table` without a primary key or replica identity.
    no_identity: Vec<String>,
    /// `db.table` of the unlogged tables.
    unlogged: Vec<String>,
    /// Databases holding large objects, with their count.
    large_objects: Vec<String>,
}

/// How many large objects `db` holds (`pg_largeobject_metadata` is
/// readable by every user, unlike their data).
pub(super) async fn large_objects(
    client: &Client,
    shard: &Shard,
    db: &str,
) -> Result<i64, AgentError> {
    let err = db_err(shard, &format!("counting the large objects of {db}"));
    client
        .query_one(
            "SELECT count(*) FROM pg_catalog.pg_largeobject_metadata",
            &[],
        )
        .await
        .map_err(|e| err(e.into()))?
        .try_get(0)
        .map_err(|e| err(e.into()))
}

impl Access {
    async fn list_tables(
        &mut self,
        client: &Client,
        shard: &Shard,
        db: &str,
        depth: Depth,
    ) -> Result<(), AgentError> {
        let err = db_err(shard, &format!("listing tables of {db}"));
        let size = match depth {
            Depth::Report => "pg_total_relation_size(c.oid)::int8",
            Depth::Gate => "NULL::int8",
        };
        let rows = client
            .query(
                &format!(
                    "SELECT n.nspname::text, c.relname::text, c.reltuples::float8, {size}, \
                     has_table_privilege(c.oid, 'SELECT'), \
                     has_table_privilege(c.oid, 'UPDATE, DELETE, TRUNCATE'), \
                     c.relrowsecurity AND NOT (SELECT rolsuper OR rolbypassrls FROM pg_roles \
                       WHERE rolname = current_user) \
                     AND (c.relforcerowsecurity OR NOT pg_has_role(c.relowner, 'USAGE')) \
                     FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace \
                     WHERE c.relkind IN ('r', 'p') AND NOT c.relispartition \
                     AND n.nspname NOT IN ('pg_catalog', 'information_schema') \
                     AND n.nspname NOT LIKE 'pg\\_toast%' AND n.nspname NOT LIKE 'pg\\_temp%' \
                     ORDER BY 1, 2"
                ),
                &[],
            )
            .await
            .map_err(|e| err(e.into()))?;
        let decode = |e: tokio_postgres::Error| err(e.into());
        for row in rows {
            let schema: String = row.try_get(0).map_err(decode)?;
            let table: String = row.try_get(1).map_err(decode)?;
            if shard.excludes(db, Some(&schema), &table) {
                continue;
            }
            let reltuples: f64 = row.try_get(2).map_err(decode)?;
            let bytes: Option<i64> = row.try_get(3).map_err(decode)?;
            let can_read: bool = row.try_get(4).map_err(decode)?;
            let can_lock: bool = row.try_get(5).map_err(decode)?;
            let filtered: bool = row.try_get(6).map_err(decode)?;
            let name = format!("{db}.{schema}.{table}");
            if filtered {
                self.filtered.push(name.clone());
            }
            if !can_read {
                self.unreadable.push(name.clone());
            }
            if !can_lock {
                self.unlockable.push(name);
            }
            self.tables.push(TableInfo {
                database: db.to_string(),
                schema: Some(schema),
                table,
                // reltuples is -1 for a table never vacuumed or analyzed.
                rows_estimate: (reltuples >= 0.0).then_some(reltuples as u64),
                bytes: bytes.map(|b| u64::try_from(b).unwrap_or(0)),
            });
        }
        Ok(())
    }

    fn finding(&self) -> Finding {
        Finding::require(
            "table privileges",
            if self.unreadable.is_empty() && self.unlockable.is_empty() {
                format!("SELECT and lock on all {} tables", self.tables.len())
            } else {
                format!(
                    "no SELECT on: {}; cannot lock (needs UPDATE, DELETE or TRUNCATE): {}",
                    none_if_empty(&self.unreadable),
                    none_if_empty(&self.unlockable)
                )
            },
            self.unreadable.is_empty() && self.unlockable.is_empty(),
            "GRANT pg_read_all_data and UPDATE (or TRUNCATE) on the listed tables to the backup user, or make it a superuser",
        )
    }
}

fn none_if_empty(v: &[String]) -> String {
    if v.is_empty() {
        "none".to_string()
    } else {
        v.join(", ")
    }
}

async fn databases(client: &Client) -> Result<Vec<String>, DbError> {
    let rows = client
        .query(
            "SELECT datname::text FROM pg_database WHERE datallowconn AND NOT datistemplate ORDER BY 1",
            &[],
        )
        .await?;
    rows.iter()
        .map(|r| r.try_get::<_, String>(0).map_err(DbError::from))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::preflight::Level;

    #[test]
    fn the_lock_table_must_hold_every_selected_table() {
        let ok = lock_table_check(1_000, 64, 100);
        assert_eq!(ok.level, Level::Ok, "{ok:?}");
        let full = lock_table_check(10_000, 64, 100);
        assert_eq!(full.level, Level::Fail);
        let fix = full.fix.unwrap_or_default();
        // 10,064 slots over 100 connections: 101 per transaction, as 128.
        assert!(fix.contains("max_locks_per_transaction = 128"), "{fix}");
        assert!(lock_table_check(10_000, 128, 100).level == Level::Ok);
    }
}
