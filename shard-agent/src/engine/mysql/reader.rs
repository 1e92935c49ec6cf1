//! The connections that read table data (dump workers, read-back): the
//! row reader in `wire` where the server and the account allow it,
//! mysql_async where they do not. Both encode rows through the same
//! function, so a table's lines, and so its content hash, do not depend on
//! which one read it.

use std::time::Duration;

use mysql_async::prelude::Queryable;
use mysql_async::{BinaryProtocol, Conn, QueryResult};
use topology::{Endpoint, Shard, TlsMode};

use super::value::encode_row;
pub use super::wire::Protocol;
use super::wire::{self, Login, WireConn, WireError};
pub use crate::client_choice::ReaderKind;
use crate::client_choice::{library_only, remember_library_only};
use crate::connect;
use crate::error::{AgentError, DbError};

pub enum Reader {
    Wire(WireConn),
    Library(Conn),
}

pub enum Rows<'c> {
    Wire(wire::Rows<'c>),
    Library(QueryResult<'c, 'static, BinaryProtocol>),
}

impl Reader {
    /// Connects to `shard` (no default database), within `timeout`.
    pub async fn connect(
        shard: &Shard,
        timeout: Duration,
        kind: ReaderKind,
    ) -> Result<Reader, AgentError> {
        let Endpoint {
            host, port, user, ..
        } = &shard.endpoint;
        let key = format!("mysql://{user}@{host}:{port}");
        if kind == ReaderKind::Library || library_only(&key) {
            return Ok(Reader::Library(connect::mysql(shard, None, timeout).await?));
        }
        let login = Login {
            host,
            port: *port,
            user,
            password: shard
                .password
                .as_ref()
                .map(|p| p.expose().as_bytes())
                .unwrap_or_default(),
            database: None,
            tls: connect::db_tls_config(shard)?,
            tls_required: shard.tls.mode != TlsMode::Prefer,
        };
        match tokio::time::timeout(timeout, WireConn::connect(&login)).await {
            Ok(Ok(conn)) => Ok(Reader::Wire(conn)),
            Ok(Err(WireError::Unsupported(why))) => {
                tracing::debug!("{}: reading through mysql_async: {why}", shard.name);
                remember_library_only(key);
                Ok(Reader::Library(connect::mysql(shard, None, timeout).await?))
            }
            Ok(Err(e)) => Err(connect::connect_error(shard, DbError::Wire(e))),
            Err(_) => Err(connect::timeout_error(shard, timeout)),
        }
    }

    /// Runs a statement and discards its result.
    pub async fn query_drop(&mut self, sql: &str) -> Result<(), DbError> {
        match self {
            Reader::Wire(c) => c.query_drop(sql).await.map_err(DbError::Wire),
            Reader::Library(c) => c.query_drop(sql).await.map_err(DbError::Mysql),
        }
    }

    /// Runs `sql` and streams its rows in `protocol` (mysql_async reads
    /// them in the binary protocol whatever it is: the lines are the
    /// same); read them to the end.
    pub async fn rows(&mut self, sql: &str, protocol: Protocol) -> Result<Rows<'_>, DbError> {
        match self {
            Reader::Wire(c) => Ok(Rows::Wire(c.rows(sql, protocol).await?)),
            Reader::Library(c) => Ok(Rows::Library(c.exec_iter(sql, ()).await?)),
        }
    }

    /// Whether [`Reader::send_queries`] can send several queries at once
    /// (the row reader in `wire`; mysql_async cannot).
    pub fn sends_batches(&self) -> bool {
        matches!(self, Reader::Wire(_))
    }

    /// Sends plain queries in one write; read their rows in order with
    /// [`Reader::sent_rows`]. Only where [`Reader::sends_batches`].
    pub async fn send_queries(&mut self, sqls: &[String]) -> Result<(), DbError> {
        match self {
            Reader::Wire(c) => c.send_queries(sqls).await.map_err(DbError::Wire),
            Reader::Library(_) => Err(DbError::Wire(WireError::Unsupported(
                "several queries in one write through mysql_async".into(),
            ))),
        }
    }

    /// The rows of the next query sent by [`Reader::send_queries`], in the
    /// text protocol; read them to the end.
    pub async fn sent_rows(&mut self) -> Result<Rows<'_>, DbError> {
        match self {
            Reader::Wire(c) => Ok(Rows::Wire(c.sent_text_rows().await?)),
            Reader::Library(_) => Err(DbError::Wire(WireError::Unsupported(
                "several queries in one write through mysql_async".into(),
            ))),
        }
    }

    /// The canonical line of the first row `sql` returns, if any.
    pub async fn first_line(&mut self, sql: &str) -> Result<Option<Vec<u8>>, DbError> {
        let mut rows = self.rows(sql, Protocol::Binary).await?;
        let mut first = Vec::new();
        let found = rows.next_line(&mut first).await?;
        let mut rest = Vec::new();
        while rows.next_line(&mut rest).await? {
            rest.clear();
        }
        Ok(found.then_some(first))
    }

    /// Ends the session; errors are irrelevant once nothing more is read.
    pub async fn disconnect(self) {
        match self {
            Reader::Wire(c) => c.disconnect().await,
            Reader::Library(c) => drop(c.disconnect().await),
        }
    }
}

/// Tables of at most this many rows whose columns allow it are read in
/// the text protocol. Measured on 4 sysbench tables of 500,000 rows, the
/// text protocol cost the server about 4 % more processor time than the
/// binary one; on 10,000 tables of 20 rows, one statement per table
/// instead of two took a tenth off the backup.
pub const TEXT_ROWS_MAX: u64 = 10_000;

/// The protocol to read a table of about `rows` rows in, from its
/// columns' declared types (`COLUMN_TYPE`, as `int(11) unsigned` or
/// `varchar(32)`): the text protocol for a small table whose every column
/// is an integer or a string type, whose text values are exactly the
/// binary protocol's. The server's own column definitions are checked
/// again when the rows come.
pub fn protocol_for<'a>(mut types: impl Iterator<Item = &'a str>, rows: u64) -> Protocol {
    let exact = |ty: &str| {
        let ty = ty.trim_start().to_ascii_lowercase();
        let name = ty.split(['(', ' ']).next().unwrap_or_default();
        matches!(
            name,
            "tinyint"
                | "smallint"
                | "mediumint"
                | "int"
                | "integer"
                | "bigint"
                | "char"
                | "varchar"
                | "binary"
                | "varbinary"
                | "tinytext"
                | "text"
                | "mediumtext"
                | "longtext"
                | "tinyblob"
                | "blob"
                | "mediumblob"
                | "longblob"
                | "decimal"
                | "enum"
                | "set"
                | "json"
        )
    };
    if rows <= TEXT_ROWS_MAX && types.all(exact) {
        Protocol::Text
    } else {
        Protocol::Binary
    }
}

impl Rows<'_> {
    /// Appends the next row's canonical line to `out`; `false` after the last.
    pub async fn next_line(&mut self, out: &mut Vec<u8>) -> Result<bool, DbError> {
        match self {
            Rows::Wire(r) => Ok(r.next_line(out).await?),
            Rows::Library(r) => match r.next().await? {
                Some(row) => {
                    encode_row(out, &row);
                    Ok(true)
                }
                None => Ok(false),
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn small_tables_of_integers_and_strings_are_read_as_text() {
        let p = |types: &[&str], rows| protocol_for(types.iter().copied(), rows);
        let small = [
            "int(10) unsigned zerofill",
            "varchar(32)",
            "enum('a','b c')",
        ];
        assert_eq!(p(&small, 20), Protocol::Text);
        assert_eq!(
            p(&["BIGINT", "decimal(12,2)", "longblob"], 0),
            Protocol::Text
        );
        // A big table: the binary protocol costs the server less per row.
        assert_eq!(p(&small, TEXT_ROWS_MAX + 1), Protocol::Binary);
        // Types the server formats itself in the text protocol.
        for ty in [
            "double",
            "float",
            "datetime(6)",
            "timestamp",
            "time",
            "date",
            "bit(3)",
            "year(4)",
        ] {
            assert_eq!(p(&["int(11)", ty], 20), Protocol::Binary, "{ty}");
        }
    }
}
