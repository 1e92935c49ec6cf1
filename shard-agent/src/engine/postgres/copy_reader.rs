//! The connections that read table data with `COPY … TO STDOUT` (dump
//! workers, read-back): the COPY reader in `wire` where the server and the
//! account allow it, tokio-postgres where they do not. The server writes
//! the COPY text either way, so the lines (and a table's content hash) do
//! not depend on which client read them.

use std::pin::Pin;
use std::time::Duration;

use bytes::Bytes;
use futures_util::StreamExt;
use tokio_postgres::{Client, CopyOutStream, SimpleQueryMessage};
use topology::{Endpoint, Shard, TlsMode};

use super::wire::{self, CopyConn, Login, PgWireError};
use super::READER_SETTINGS;
use crate::client_choice::{library_only, remember_library_only, ReaderKind};
use crate::connect;
use crate::error::{db_err, AgentError, DbError};

pub enum CopyReader {
    Wire(CopyConn),
    Library(Client),
}

pub enum CopyOut<'c> {
    Wire(wire::CopyOut<'c>),
    Library {
        stream: Pin<Box<CopyOutStream>>,
        /// The piece handed out last; kept so that it can be lent.
        piece: Bytes,
    },
}

impl CopyReader {
    /// Connects to database `db` of `shard` within `timeout`, with the
    /// session settings under which COPY text is canonical.
    pub async fn connect(
        shard: &Shard,
        db: &str,
        timeout: Duration,
        kind: ReaderKind,
    ) -> Result<CopyReader, AgentError> {
        let Endpoint {
            host, port, user, ..
        } = &shard.endpoint;
        let key = format!("postgres://{user}@{host}:{port}");
        if kind == ReaderKind::Library || library_only(&key) {
            let client = super::reader(shard, db, timeout).await?;
            return Ok(CopyReader::Library(client));
        }
        let login = Login {
            host,
            port: *port,
            user,
            password: shard.password.as_ref().map(|p| p.expose().as_bytes()),
            database: db,
            tls: connect::db_tls_config(shard)?,
            tls_required: shard.tls.mode != TlsMode::Prefer,
            allow_cleartext_password: shard.tls.allow_cleartext_password,
        };
        match tokio::time::timeout(timeout, CopyConn::connect(&login)).await {
            Ok(Ok(mut conn)) => {
                for settings in [READER_SETTINGS, connect::PG_LIMITS_OFF] {
                    conn.execute(settings)
                        .await
                        .map_err(|e| db_err(shard, "setting up the session")(e.into()))?;
                }
                Ok(CopyReader::Wire(conn))
            }
            Ok(Err(PgWireError::Unsupported(why))) => {
                tracing::debug!("{}: reading through tokio-postgres: {why}", shard.name);
                remember_library_only(key);
                Ok(CopyReader::Library(
                    super::reader(shard, db, timeout).await?,
                ))
            }
            Ok(Err(e)) => Err(connect::connect_error(shard, DbError::PgWire(e))),
            Err(_) => Err(connect::timeout_error(shard, timeout)),
        }
    }

    /// Runs `sql` (one or more statements) and discards any rows.
    pub async fn execute(&mut self, sql: &str) -> Result<(), DbError> {
        match self {
            CopyReader::Wire(c) => Ok(c.execute(sql).await?),
            CopyReader::Library(c) => Ok(c.batch_execute(sql).await?),
        }
    }

    /// Whether `sql` returns at least one row.
    pub async fn exists(&mut self, sql: &str) -> Result<bool, DbError> {
        match self {
            CopyReader::Wire(c) => Ok(c.first_row(sql).await?.is_some()),
            CopyReader::Library(c) => Ok(c
                .simple_query(sql)
                .await?
                .iter()
                .any(|m| matches!(m, SimpleQueryMessage::Row(_)))),
        }
    }

    /// The first column of `sql`'s first row, as text; `None` for no row
    /// or a NULL.
    pub async fn first_value(&mut self, sql: &str) -> Result<Option<String>, DbError> {
        match self {
            CopyReader::Wire(c) => Ok(c.first_row(sql).await?),
            CopyReader::Library(c) => Ok(c
                .simple_query(sql)
                .await?
                .iter()
                .find_map(|m| match m {
                    SimpleQueryMessage::Row(r) => Some(r.get(0).map(str::to_string)),
                    _ => None,
                })
                .flatten()),
        }
    }

    /// Starts `sql`, a `COPY … TO STDOUT`; read it to the end with
    /// [`CopyOut::next`] before using the connection again.
    pub async fn copy_out(&mut self, sql: &str) -> Result<CopyOut<'_>, DbError> {
        match self {
            CopyReader::Wire(c) => Ok(CopyOut::Wire(c.copy_out(sql).await?)),
            CopyReader::Library(c) => Ok(CopyOut::Library {
                stream: Box::pin(c.copy_out(sql).await?),
                piece: Bytes::new(),
            }),
        }
    }

    /// Ends the session; errors are irrelevant once nothing more is read.
    pub async fn close(self) {
        match self {
            CopyReader::Wire(c) => c.close().await,
            CopyReader::Library(c) => drop(c),
        }
    }
}

impl CopyOut<'_> {
    /// The next piece of COPY text (whole rows, LF-terminated, from the
    /// server; a row is never known to be split, but callers allow it), or
    /// `None` after the last.
    pub async fn next(&mut self) -> Result<Option<&[u8]>, DbError> {
        match self {
            CopyOut::Wire(c) => Ok(c.next().await?),
            CopyOut::Library { stream, piece } => match stream.next().await {
                Some(p) => {
                    *piece = p?;
                    Ok(Some(&piece[..]))
                }
                None => Ok(None),
            },
        }
    }
}

/// `sql`'s text as a literal (`standard_conforming_strings` is on in every
/// reader session).
pub fn literal(text: &str) -> String {
    format!("'{}'", text.replace('\'', "''"))
}
