//! A minimal PostgreSQL client for the connections that read table data
//! with `COPY … TO STDOUT`.
//!
//! Why it exists: tokio-postgres hands every `CopyData` message (one per
//! row) from its connection task to the caller through a channel, as a
//! `Bytes` split off its read buffer; profiles of a PostgreSQL backup put
//! that path (message parse, split, reference counts, the channel and its
//! wake-ups) at about 12 % of the client's CPU, on a machine the server
//! shares. This client reads messages into one buffer and hands each row
//! out as a slice of it, in the task that writes the chunk.
//!
//! What it speaks: TCP, protocol 3.0, trust, cleartext, MD5 and
//! SCRAM-SHA-256 authentication (the exchange itself is postgres-protocol's,
//! as tokio-postgres uses it), simple queries whose rows are discarded or
//! whose first row is read as text, and `COPY … TO STDOUT`. Nothing else:
//! no TLS, no Unix socket, no GSSAPI or SSPI. Where the server needs any of
//! that the connect fails with [`PgWireError::Unsupported`], and the caller
//! reads through tokio-postgres (`postgres::copy_reader`).

pub(crate) mod frame;
mod login;

use bytes::BytesMut;
use postgres_protocol::message::frontend;

use frame::Frames;
pub use login::Login;

#[derive(Debug, thiserror::Error)]
pub enum PgWireError {
    #[error("{0}")]
    Io(std::io::Error),
    #[error("the server closed the connection")]
    Closed,
    /// The server's own error (boxed: it is four strings, and every
    /// `Result` carrying a `DbError` would grow by them).
    #[error(transparent)]
    Server(Box<ServerError>),
    #[error("protocol error: {0}")]
    Protocol(String),
    /// Something this client does not implement; the caller falls back to
    /// tokio-postgres.
    #[error("not supported by shardcut's COPY reader: {0}")]
    Unsupported(String),
}

impl From<crate::readbuf::FillError> for PgWireError {
    fn from(e: crate::readbuf::FillError) -> Self {
        match e {
            crate::readbuf::FillError::Io(e) => PgWireError::Io(e),
            crate::readbuf::FillError::Closed => PgWireError::Closed,
        }
    }
}

/// An ErrorResponse, worded as tokio-postgres's are shown.
#[derive(Debug, thiserror::Error)]
#[error("{severity}: {message}{}", detail.as_ref().map(|d| format!(" ({d})")).unwrap_or_default())]
pub struct ServerError {
    pub severity: String,
    /// The SQLSTATE.
    pub code: String,
    pub message: String,
    pub detail: Option<String>,
}

/// Parses an ErrorResponse body: fields of a type byte and a
/// NUL-terminated string, up to a NUL type byte.
fn server_error(body: &[u8]) -> PgWireError {
    let (mut severity, mut code, mut message, mut detail) =
        (String::from("ERROR"), String::new(), String::new(), None);
    let mut rest = body;
    while let Some((&field, tail)) = rest.split_first() {
        if field == 0 {
            break;
        }
        let end = memchr::memchr(0, tail).unwrap_or(tail.len());
        let text = String::from_utf8_lossy(&tail[..end]).into_owned();
        match field {
            b'S' => severity = text,
            b'C' => code = text,
            b'M' => message = text,
            b'D' => detail = Some(text),
            _ => {}
        }
        rest = tail.get(end + 1..).unwrap_or_default();
    }
    PgWireError::Server(Box::new(ServerError {
        severity,
        code,
        message,
        detail,
    }))
}

fn unexpected(kind: u8, during: &str) -> PgWireError {
    PgWireError::Protocol(format!(
        "unexpected message '{}' {during}",
        char::from(kind)
    ))
}

/// Messages that may arrive at any time and carry nothing a reader needs:
/// NoticeResponse, ParameterStatus, NotificationResponse.
fn asynchronous(kind: u8) -> bool {
    matches!(kind, b'N' | b'S' | b'A')
}

pub struct CopyConn {
    frames: Frames,
}

impl CopyConn {
    /// Sends `sql` as a simple query.
    async fn send_query(&mut self, sql: &str) -> Result<(), PgWireError> {
        let mut out = BytesMut::new();
        frontend::query(sql, &mut out).map_err(|e| PgWireError::Protocol(e.to_string()))?;
        self.frames.send(&out).await
    }

    /// After `kind`, a message this client did not expect: reads up to
    /// ReadyForQuery, so the connection stays usable, and returns `err`.
    /// A COPY FROM (or COPY BOTH) the server has started waits for the
    /// client, so it is refused first, or the wait would never end.
    async fn fail_after(&mut self, kind: u8, err: PgWireError) -> Result<(), PgWireError> {
        if matches!(kind, b'G' | b'W') {
            let mut out = BytesMut::new();
            frontend::copy_fail("shardcut's COPY reader only reads", &mut out)
                .map_err(|e| PgWireError::Protocol(e.to_string()))?;
            self.frames.send(&out).await?;
        }
        loop {
            if self.frames.advance().await? == b'Z' {
                return Err(err);
            }
        }
    }

    /// Runs `sql` (one or more statements) and discards any rows. Fails
    /// with the server's error if any statement fails.
    pub async fn execute(&mut self, sql: &str) -> Result<(), PgWireError> {
        self.first_row(sql).await.map(drop)
    }

    /// Runs `sql` and returns its first row's first column as text (`None`
    /// for no row or a NULL); other rows and columns are discarded.
    pub async fn first_row(&mut self, sql: &str) -> Result<Option<String>, PgWireError> {
        self.send_query(sql).await?;
        let mut first: Option<Option<String>> = None;
        let mut failed = None;
        loop {
            match self.frames.advance().await? {
                b'Z' => {
                    return match failed {
                        Some(e) => Err(e),
                        None => Ok(first.flatten()),
                    }
                }
                b'E' => failed = Some(server_error(self.frames.body())),
                b'D' if first.is_none() => first = Some(first_column(self.frames.body())?),
                b'C' | b'T' | b'D' | b'I' => {}
                k if asynchronous(k) => {}
                k => {
                    let err = unexpected(k, "after a simple query");
                    return self.fail_after(k, err).await.map(|_| None);
                }
            }
        }
    }

    /// Starts `sql`, a `COPY … TO STDOUT`; its data is read with
    /// [`CopyOut::next`], to the end, before the connection is used again.
    pub async fn copy_out(&mut self, sql: &str) -> Result<CopyOut<'_>, PgWireError> {
        self.send_query(sql).await?;
        loop {
            match self.frames.advance().await? {
                b'H' => {
                    return Ok(CopyOut {
                        conn: self,
                        done: false,
                    })
                }
                b'E' => {
                    let err = server_error(self.frames.body());
                    self.fail_after(b'E', err).await?;
                }
                k if asynchronous(k) => {}
                k => {
                    let err = unexpected(k, "where COPY data was due");
                    self.fail_after(k, err).await?;
                }
            }
        }
    }

    /// Ends the session; errors are irrelevant once nothing more is read.
    pub async fn close(mut self) {
        let mut out = BytesMut::new();
        frontend::terminate(&mut out);
        drop(self.frames.send(&out).await);
        self.frames.shutdown().await;
    }
}

/// The first column of a DataRow body as text.
fn first_column(body: &[u8]) -> Result<Option<String>, PgWireError> {
    let short = || PgWireError::Protocol("short DataRow".into());
    let columns = body.get(..2).ok_or_else(short)?;
    if columns == [0, 0] {
        return Ok(None);
    }
    let len = body.get(2..6).ok_or_else(short)?;
    let len = i32::from_be_bytes([len[0], len[1], len[2], len[3]]);
    let Ok(len) = usize::try_from(len) else {
        return Ok(None);
    };
    let value = body.get(6..6 + len).ok_or_else(short)?;
    Ok(Some(String::from_utf8_lossy(value).into_owned()))
}

/// A running `COPY … TO STDOUT`.
pub struct CopyOut<'c> {
    conn: &'c mut CopyConn,
    done: bool,
}

impl CopyOut<'_> {
    /// The next piece of COPY data (the server sends one row per message,
    /// LF included), or `None` once the COPY has ended and the connection
    /// is ready for the next statement.
    pub async fn next(&mut self) -> Result<Option<&[u8]>, PgWireError> {
        if self.done {
            return Ok(None);
        }
        let frames = &mut self.conn.frames;
        let mut failed = None;
        loop {
            match frames.advance().await? {
                b'd' if failed.is_none() => break,
                b'c' | b'C' | b'd' => {}
                b'E' => failed = Some(server_error(frames.body())),
                b'Z' => {
                    self.done = true;
                    return match failed {
                        Some(e) => Err(e),
                        None => Ok(None),
                    };
                }
                k if asynchronous(k) => {}
                k => {
                    self.done = true;
                    let err = unexpected(k, "in COPY data");
                    return self.conn.fail_after(k, err).await.map(|_| None);
                }
            }
        }
        Ok(Some(self.conn.frames.body()))
    }
}

#[cfg(test)]
mod tests;
