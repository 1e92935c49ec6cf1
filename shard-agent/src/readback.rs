//! Reading a live table back and computing its row count and content hash
//! with the same canonical encoding the dump uses, from a fresh query (never
//! from a backup's own counters). Verification of restores compares this
//! against the manifest; tests compare it against a backup of the source.

use std::time::Duration;

use futures_util::StreamExt;
use mysql_async::prelude::Queryable;
use topology::Shard;

use crate::dump::chunk::RowDigest;
use crate::dump::mysql_value::encode_row;
use crate::error::AgentError;
use crate::manifest::TableManifest;
use crate::{connect, mysql, postgres};

const TIMEOUT: Duration = Duration::from_secs(10);

/// Digest of the table `t` names (database, schema, name, columns), read
/// from `shard` now.
pub async fn table_digest(shard: &Shard, t: &TableManifest) -> Result<RowDigest, AgentError> {
    let columns: Vec<&str> = t.columns.iter().map(|c| c.name.as_str()).collect();
    match &t.schema {
        None => mysql_digest(shard, &t.database, &t.name, &columns).await,
        Some(schema) => postgres_digest(shard, &t.database, schema, &t.name, &columns).await,
    }
}

pub async fn mysql_digest(
    shard: &Shard,
    db: &str,
    table: &str,
    columns: &[&str],
) -> Result<RowDigest, AgentError> {
    let mut conn = connect::mysql(shard, None, TIMEOUT).await?;
    let version: Option<String> = conn
        .query_first("SELECT VERSION()")
        .await
        .map_err(mysql::query_err(shard, "reading the server version"))?;
    let mariadb = version.is_some_and(|v| v.contains("MariaDB"));
    mysql::setup_reader(&mut conn, shard, mariadb).await?;
    let cols: Vec<String> = columns.iter().map(|c| mysql::ident(c)).collect();
    let sql = format!(
        "SELECT {} FROM {}.{}",
        cols.join(", "),
        mysql::ident(db),
        mysql::ident(table)
    );
    let err = mysql::query_err(shard, &format!("reading back {db}.{table}"));
    let mut result = conn.exec_iter(sql.as_str(), ()).await.map_err(&err)?;
    let mut digest = RowDigest::default();
    let mut line = Vec::new();
    while let Some(row) = result.next().await.map_err(&err)? {
        line.clear();
        encode_row(&mut line, &row);
        digest.add_line(&line);
    }
    drop(result);
    drop(conn.disconnect().await);
    Ok(digest)
}

pub async fn postgres_digest(
    shard: &Shard,
    db: &str,
    schema: &str,
    table: &str,
    columns: &[&str],
) -> Result<RowDigest, AgentError> {
    let client = postgres::reader(shard, db, TIMEOUT).await?;
    let cols: Vec<String> = columns.iter().map(|c| postgres::ident(c)).collect();
    let sql = format!(
        "COPY (SELECT {} FROM {}.{}) TO STDOUT",
        cols.join(", "),
        postgres::ident(schema),
        postgres::ident(table)
    );
    let err = postgres::pg_err(shard, &format!("reading back {db}.{schema}.{table}"));
    let stream = client.copy_out(sql.as_str()).await.map_err(&err)?;
    futures_util::pin_mut!(stream);
    let mut digest = RowDigest::default();
    let mut carry = Vec::new();
    while let Some(piece) = stream.next().await {
        carry.extend_from_slice(&piece.map_err(&err)?);
        let mut start = 0;
        while let Some(nl) = carry[start..].iter().position(|b| *b == b'\n') {
            digest.add_line(&carry[start..start + nl]);
            start += nl + 1;
        }
        carry.drain(..start);
    }
    Ok(digest)
}
