//! Reading a MariaDB/MySQL table back for verification.

use std::time::Duration;

use topology::Shard;

use super::reader::{protocol_for, Reader, ReaderKind};
use super::sql::ident;
use super::{db_err, setup_reader};
use crate::dump::chunk::RowDigest;
use crate::error::AgentError;

const TIMEOUT: Duration = Duration::from_secs(10);

/// Read-back connections kept between tables (see [`crate::idle`]).
static IDLE: std::sync::LazyLock<crate::idle::Idle<Reader>> =
    std::sync::LazyLock::new(Default::default);

/// `columns` are the table's (name, declared type) and `rows` its row
/// count, from its manifest (they choose the protocol, as in the dump);
/// `all_versions` reads every version of a system-versioned table's rows,
/// as the dump did (its manifest's `system_versioned`).
/// `kind` chooses the client; verification uses [`ReaderKind::Auto`], tests
/// also the library alone, to show both read the same lines.
pub(super) async fn digest(
    shard: &Shard,
    (db, table, all_versions): (&str, &str, bool),
    (columns, rows): (&[(&str, &str)], u64),
    kind: ReaderKind,
) -> Result<RowDigest, AgentError> {
    let table = (db, table, all_versions);
    let key = crate::idle::key(shard, "", &format!("{kind:?}"));
    // A kept connection may have died since (a server restart): the read
    // is tried once more on a new one before it counts as failed.
    if let Some(kept) = IDLE.take(&key) {
        if let Ok((digest, conn)) = read(kept, shard, table, (columns, rows)).await {
            IDLE.put(key, conn);
            return Ok(digest);
        }
    }
    let mut conn = Reader::connect(shard, TIMEOUT, kind).await?;
    let version = conn
        .first_line("SELECT VERSION()")
        .await
        .map_err(db_err(shard, "reading the server version"))?;
    let mariadb = version.is_some_and(|v| memchr::memmem::find(&v, b"MariaDB").is_some());
    setup_reader(&mut conn, shard, mariadb).await?;
    let (digest, conn) = read(conn, shard, table, (columns, rows)).await?;
    // Read whole: kept for the next table's read.
    IDLE.put(key, conn);
    Ok(digest)
}

/// Reads a table back on `conn`; gives the connection back when the read
/// went through.
async fn read(
    mut conn: Reader,
    shard: &Shard,
    (db, table, all_versions): (&str, &str, bool),
    (columns, row_count): (&[(&str, &str)], u64),
) -> Result<(RowDigest, Reader), AgentError> {
    let cols: Vec<String> = columns.iter().map(|(c, _)| ident(c)).collect();
    let protocol = protocol_for(columns.iter().map(|(_, ty)| *ty), row_count);
    let versions = if all_versions {
        " FOR SYSTEM_TIME ALL"
    } else {
        ""
    };
    let sql = format!(
        "SELECT {} FROM {}.{}{versions}",
        cols.join(", "),
        ident(db),
        ident(table)
    );
    let err = db_err(shard, &format!("reading back {db}.{table}"));
    let mut rows = conn.rows(&sql, protocol).await.map_err(&err)?;
    let mut digest = RowDigest::default();
    let mut line = Vec::new();
    while rows.next_line(&mut line).await.map_err(&err)? {
        digest.add_line(&line);
        line.clear();
    }
    drop(rows);
    Ok((digest, conn))
}
