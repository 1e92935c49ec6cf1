//! Verification of a restore by an independent read of the target: every
//! table of the backup is read back from the target servers and its row
//! count and content hash recomputed, never taken from the restore's own
//! counters.

use std::time::Duration;

use futures_util::StreamExt;
use shard_agent::manifest::{Manifest, TableManifest};
use shard_agent::readback::table_digest;
use shard_agent::{AgentError, DbError};
use tokio::task::JoinSet;
use topology::Shard;

use crate::quality::TableResult;

/// How long a read of one table may take before its shard counts as unavailable.
const READ_TIMEOUT: Duration = Duration::from_secs(300);

/// Whether the server itself answered with an error (a missing table or
/// database): the shard is available, the table is not complete. Anything
/// else (refused connection, timeout, broken socket) makes it unavailable.
fn server_answered(e: &AgentError) -> bool {
    let db = match e {
        AgentError::Connect { source, .. } | AgentError::Query { source, .. } => source,
        _ => return false,
    };
    match db {
        DbError::Mysql(mysql_async::Error::Server(_)) => true,
        DbError::Postgres(p) => p.as_db_error().is_some(),
        _ => false,
    }
}

/// Reads back every table of the backup's shards from the target shard
/// each maps to (`(source name, target shard)`). Returns the tables and the
/// source shard names whose target answered every read.
pub async fn read_back(m: &Manifest, pairs: &[(String, Shard)]) -> (Vec<TableResult>, Vec<String>) {
    let mut tasks = JoinSet::new();
    for (name, shard) in pairs {
        let Some(source) = m.shards.get(name) else {
            continue;
        };
        let (tables, shard, name) = (source.table_list.clone(), shard.clone(), name.clone());
        // Tables of one shard are read `parallelism` at a time: the
        // verification of a big shard should not take longer than its load.
        let parallelism = shard.parallelism.max(1);
        tasks.spawn(async move {
            let results: Vec<(TableResult, bool)> = futures_util::stream::iter(tables)
                .map(|t| {
                    let (shard, name) = (shard.clone(), name.clone());
                    async move { check_table(&shard, &name, &t).await }
                })
                .buffer_unordered(parallelism)
                .collect()
                .await;
            let answered = results.iter().all(|(_, a)| *a);
            let out = results.into_iter().map(|(r, _)| r).collect::<Vec<_>>();
            (name, out, answered)
        });
    }
    let mut tables = Vec::new();
    let mut available = Vec::new();
    while let Some(joined) = tasks.join_next().await {
        if let Ok((name, mut t, answered)) = joined {
            tables.append(&mut t);
            if answered {
                available.push(name);
            }
        }
    }
    tables.sort_by(|a, b| (&a.shard, &a.table).cmp(&(&b.shard, &b.table)));
    (tables, available)
}

/// Reads one table back; returns its result and whether the server answered.
async fn check_table(shard: &Shard, name: &str, t: &TableManifest) -> (TableResult, bool) {
    let mut answered = true;
    let read = tokio::time::timeout(READ_TIMEOUT, table_digest(shard, t)).await;
    let (found, ok) = match read {
        Ok(Ok(d)) => (d.rows, d.rows == t.rows && d.hex() == t.content_hash),
        Ok(Err(e)) if server_answered(&e) => {
            tracing::debug!("reading back {} on {name}: {e}", t.qualified());
            (0, false)
        }
        Ok(Err(e)) => {
            tracing::warn!("reading back {} on {name}: {e}", t.qualified());
            answered = false;
            (0, false)
        }
        Err(_) => {
            tracing::warn!(
                "reading back {} on {name}: no answer in time",
                t.qualified()
            );
            answered = false;
            (0, false)
        }
    };
    (
        TableResult {
            shard: name.to_string(),
            table: t.qualified(),
            rows_expected: t.rows,
            rows_found: found,
            hash_ok: ok,
        },
        answered,
    )
}
