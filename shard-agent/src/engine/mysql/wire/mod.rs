//! A minimal MySQL/MariaDB client for the connections that read table data.
//!
//! Why it exists: mysql_async decodes every result row into a `Row` of
//! owned values (an allocation per value and per row, its buffer pool's
//! queue, a clock read per packet, and an OK- and ERR-packet parse attempt
//! per binary row). Profiles of a MariaDB backup put that at about a third
//! of the client's CPU time, on a machine the server shares. This client
//! reads row packets into one buffer and encodes each value from there
//! (see `binary`), which is all a dump or a read-back needs.
//!
//! What it speaks: TCP (and TLS), the 4.1 protocol,
//! `mysql_native_password`, text queries whose results are discarded or
//! whose rows of integer and string columns are streamed (one at a time, or
//! several sent in one write), and prepared
//! statements without parameters whose rows are streamed (on MariaDB
//! 10.2+ prepared and executed in one write). Nothing else: no other
//! authentication method, no compression. Where the server needs any of
//! that the connect fails with [`WireError::Unsupported`], and the caller
//! reads through mysql_async (`mysql::reader`).

pub(crate) mod binary;
mod cursor;
pub(crate) mod handshake;
pub(crate) mod packet;

use std::fmt;

use tokio::net::TcpStream;

use crate::tls::Stream;

use binary::ColumnDef;
use cursor::Cursor;
use packet::PacketStream;

const COM_QUIT: u8 = 0x01;
const COM_QUERY: u8 = 0x03;
const COM_STMT_PREPARE: u8 = 0x16;
const COM_STMT_EXECUTE: u8 = 0x17;
const COM_STMT_CLOSE: u8 = 0x19;
const SERVER_MORE_RESULTS_EXISTS: u16 = 0x08;
/// The statement id MariaDB 10.2+ reads as "the statement just prepared".
const LAST_PREPARED: u32 = u32::MAX;

/// A `COM_STMT_EXECUTE` body for statement `id`: no cursor, one iteration,
/// no parameters.
fn execute_body(id: u32) -> Vec<u8> {
    let mut body = Vec::with_capacity(9);
    body.extend_from_slice(&id.to_le_bytes());
    body.push(0); // no cursor
    body.extend_from_slice(&1u32.to_le_bytes());
    body
}

#[derive(Debug, thiserror::Error)]
pub enum WireError {
    #[error("{0}")]
    Io(std::io::Error),
    #[error("the server closed the connection")]
    Closed,
    /// The server's own error, as mysql_async shows it.
    #[error("ERROR {code} ({state}): {message}")]
    Server {
        code: u16,
        state: String,
        message: String,
    },
    #[error("protocol error: {0}")]
    Protocol(String),
    /// Something this client does not implement; the caller falls back to
    /// mysql_async.
    #[error("not supported by shardcut's row reader: {0}")]
    Unsupported(String),
}

impl From<crate::readbuf::FillError> for WireError {
    fn from(e: crate::readbuf::FillError) -> Self {
        match e {
            crate::readbuf::FillError::Io(e) => WireError::Io(e),
            crate::readbuf::FillError::Closed => WireError::Closed,
        }
    }
}

/// Parses an ERR packet.
fn server_error(payload: &[u8]) -> WireError {
    let mut c = Cursor::new(payload);
    c.skip(1);
    let code = c.u16().unwrap_or(0);
    let mut state = String::from("HY000");
    if c.rest().first() == Some(&b'#') {
        c.skip(1);
        if let Some(s) = c.take(5) {
            state = String::from_utf8_lossy(s).into_owned();
        }
    }
    WireError::Server {
        code,
        state,
        message: String::from_utf8_lossy(c.rest()).into_owned(),
    }
}

/// An EOF packet (0xFE, shorter than 9 bytes; a longer one starting 0xFE
/// is a row or a length). Returns its status flags.
fn eof_status(payload: &[u8]) -> Option<u16> {
    if payload.first() == Some(&0xFE) && payload.len() < 9 {
        let mut c = Cursor::new(payload);
        c.skip(3); // header, warnings
        Some(c.u16().unwrap_or(0))
    } else {
        None
    }
}

/// Status flags of an OK packet (after affected rows and last insert id).
fn ok_status(payload: &[u8]) -> u16 {
    let mut c = Cursor::new(payload);
    c.skip(1);
    c.lenenc();
    c.lenenc();
    c.u16().unwrap_or(0)
}

/// The protocol a statement's rows are read in: the binary one (a
/// prepared statement) reads every type; the text one (a plain query)
/// costs the server one statement instead of two, and is used where every
/// column is [`binary::ColumnDef::text_exact`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Protocol {
    Binary,
    Text,
}

pub struct Login<'a> {
    pub host: &'a str,
    pub port: u16,
    pub user: &'a str,
    pub password: &'a [u8],
    pub database: Option<&'a str>,
    /// TLS to start when the server offers it (`None`: `tls: disable`).
    pub tls: Option<rustls::ClientConfig>,
    /// Whether a server without TLS is refused rather than read in clear.
    pub tls_required: bool,
}

pub struct WireConn {
    packets: PacketStream,
    /// Whether a prepare and its execution go out together (MariaDB 10.2+).
    direct_execute: bool,
}

impl fmt::Debug for WireConn {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("WireConn")
    }
}

impl WireConn {
    /// Connects and authenticates. The caller bounds the time.
    pub async fn connect(login: &Login<'_>) -> Result<WireConn, WireError> {
        let stream = TcpStream::connect((login.host, login.port))
            .await
            .map_err(WireError::Io)?;
        stream.set_nodelay(true).map_err(WireError::Io)?;
        let mut packets = PacketStream::new(Stream::Plain(stream));
        let greeting = handshake::parse_greeting(packets.read().await?)?;
        let mut caps =
            handshake::client_capabilities(greeting.capabilities, login.database.is_some())?;
        match &login.tls {
            Some(config) if greeting.capabilities & handshake::CLIENT_SSL != 0 => {
                caps |= handshake::CLIENT_SSL;
                packets.write(&handshake::ssl_request(caps)).await?;
                let seq = packets.seq();
                let tls = packets
                    .into_stream()
                    .upgrade(config.clone(), login.host)
                    .await
                    .map_err(WireError::Io)?;
                packets = PacketStream::new(tls);
                packets.set_seq(seq);
            }
            // The library reports it in its words.
            Some(_) if login.tls_required => {
                return Err(WireError::Unsupported("a server without TLS".into()))
            }
            _ => {}
        }
        let response = handshake::response(
            caps,
            login.user,
            login.password,
            &greeting.scramble,
            login.database,
        );
        packets.write(&response).await?;
        // The answer: OK, ERR, or a request to switch methods.
        let reply = packets.read().await?;
        match reply.first() {
            Some(0x00) => {}
            Some(0xFF) => return Err(server_error(reply)),
            Some(0xFE) => {
                let mut c = Cursor::new(&reply[1..]);
                let plugin = c.until_nul();
                if plugin != handshake::NATIVE_PASSWORD {
                    return Err(WireError::Unsupported(format!(
                        "authentication method {}",
                        String::from_utf8_lossy(plugin)
                    )));
                }
                let data = c.rest();
                let scramble = data.strip_suffix(b"\0").unwrap_or(data).to_vec();
                let auth = handshake::native_scramble(login.password, &scramble);
                packets.write(&auth).await?;
                let reply = packets.read().await?;
                match reply.first() {
                    Some(0x00) => {}
                    Some(0xFF) => return Err(server_error(reply)),
                    _ => {
                        return Err(WireError::Unsupported(
                            "a further authentication step".into(),
                        ))
                    }
                }
            }
            _ => {
                return Err(WireError::Unsupported(
                    "an authentication exchange other than mysql_native_password".into(),
                ))
            }
        }
        Ok(WireConn {
            packets,
            direct_execute: greeting.direct_execute,
        })
    }

    /// Starts TLS with `config` and hangs up before logging in: how
    /// `verify-ca` learns the names on the server's certificate (see
    /// [`crate::tls::recording_config`]). Sends no credentials.
    pub async fn tls_probe(
        host: &str,
        port: u16,
        config: rustls::ClientConfig,
    ) -> Result<(), WireError> {
        let stream = TcpStream::connect((host, port))
            .await
            .map_err(WireError::Io)?;
        let mut packets = PacketStream::new(Stream::Plain(stream));
        let greeting = handshake::parse_greeting(packets.read().await?)?;
        if greeting.capabilities & handshake::CLIENT_SSL == 0 {
            return Err(WireError::Unsupported("a server without TLS".into()));
        }
        let caps = handshake::client_capabilities(greeting.capabilities, false)?;
        packets.write(&handshake::ssl_request(caps)).await?;
        let mut tls = packets
            .into_stream()
            .upgrade(config, host)
            .await
            .map_err(WireError::Io)?;
        drop(tokio::io::AsyncWriteExt::shutdown(&mut tls).await);
        Ok(())
    }

    /// Frames a command to go out with the next one that is sent.
    fn queue_command(&mut self, code: u8, body: &[u8]) {
        self.packets.reset_seq();
        let mut payload = Vec::with_capacity(body.len() + 1);
        payload.push(code);
        payload.extend_from_slice(body);
        self.packets.queue(&payload);
    }

    /// Sends a command, after any queued ones.
    async fn command(&mut self, code: u8, body: &[u8]) -> Result<(), WireError> {
        self.queue_command(code, body);
        self.packets.flush().await
    }

    /// Reads packets up to and including an EOF; returns its status.
    async fn skip_to_eof(&mut self) -> Result<u16, WireError> {
        loop {
            let p = self.packets.read().await?;
            if let Some(status) = eof_status(p) {
                return Ok(status);
            }
            if p.first() == Some(&0xFF) {
                return Err(server_error(p));
            }
        }
    }

    /// Runs a statement through the text protocol and discards any result.
    pub async fn query_drop(&mut self, sql: &str) -> Result<(), WireError> {
        self.command(COM_QUERY, sql.as_bytes()).await?;
        loop {
            let p = self.packets.read().await?;
            let status = match p.first() {
                Some(0x00) => ok_status(p),
                Some(0xFF) => return Err(server_error(p)),
                Some(0xFB) => {
                    return Err(WireError::Unsupported("LOAD DATA LOCAL".into()));
                }
                _ => {
                    // A result set: column definitions, then rows.
                    self.skip_to_eof().await?;
                    self.skip_to_eof().await?
                }
            };
            if status & SERVER_MORE_RESULTS_EXISTS == 0 {
                return Ok(());
            }
        }
    }

    /// Prepares and executes `sql` (no parameters) and returns its rows;
    /// with [`Protocol::Text`], runs it as a plain query instead.
    ///
    /// On MariaDB 10.2 and later the prepare and the execution go out in
    /// one write, the execution naming "the statement just prepared": one
    /// round trip per statement instead of two, which with thousands of
    /// small tables is most of a table's cost. The statement's close is
    /// queued to go out with the next command (it has no reply).
    pub async fn rows(&mut self, sql: &str, protocol: Protocol) -> Result<Rows<'_>, WireError> {
        if protocol == Protocol::Text {
            return self.text_rows(sql).await;
        }
        let direct = self.direct_execute;
        self.queue_command(COM_STMT_PREPARE, sql.as_bytes());
        if direct {
            self.queue_command(COM_STMT_EXECUTE, &execute_body(LAST_PREPARED));
        }
        self.packets.flush().await?;
        // Both replies begin at sequence number 1, as every command's does.
        self.packets.set_seq(1);
        let p = self.packets.read().await?;
        if p.first() == Some(&0xFF) {
            let failed = server_error(p);
            if direct {
                // The execution fails too ("unknown prepared statement");
                // the prepare's error is the one that says why.
                self.packets.set_seq(1);
                let p = self.packets.read().await?;
                if p.first() != Some(&0xFF) {
                    return Err(WireError::Protocol(
                        "an execution succeeded after its prepare failed".into(),
                    ));
                }
            }
            return Err(failed);
        }
        let mut c = Cursor::new(p);
        let bad = || WireError::Protocol("malformed reply to a prepare".into());
        c.skip(1).ok_or_else(bad)?;
        let id = c.u32().ok_or_else(bad)?;
        let ncols = c.u16().ok_or_else(bad)?;
        let nparams = c.u16().ok_or_else(bad)?;
        if nparams > 0 {
            self.skip_to_eof().await?;
        }
        if ncols > 0 {
            self.skip_to_eof().await?;
        }
        if direct {
            self.packets.set_seq(1);
        } else {
            self.command(COM_STMT_EXECUTE, &execute_body(id)).await?;
        }
        let p = self.packets.read().await?;
        let columns = match p.first() {
            Some(0xFF) => {
                let failed = server_error(p);
                self.queue_command(COM_STMT_CLOSE, &id.to_le_bytes());
                return Err(failed);
            }
            // No result set (not a SELECT): no rows.
            Some(0x00) => None,
            _ => Some(
                Cursor::new(p)
                    .lenenc()
                    .ok_or_else(|| WireError::Protocol("malformed column count".into()))?,
            ),
        };
        let mut cols = Vec::new();
        match columns {
            Some(n) => {
                for _ in 0..n {
                    cols.push(binary::column_def(self.packets.read().await?)?);
                }
                self.skip_to_eof().await?;
            }
            None => self.queue_command(COM_STMT_CLOSE, &id.to_le_bytes()),
        }
        Ok(Rows {
            conn: self,
            statement: Some(id),
            cols,
            done: columns.is_none(),
        })
    }

    /// Runs `sql` as a plain query and returns its rows, read in the text
    /// protocol. A column that is not [`binary::ColumnDef::text_exact`]
    /// is an error (the caller chose the protocol from the column types it
    /// expected): the connection is then in the middle of a result, and
    /// is not to be used again.
    async fn text_rows(&mut self, sql: &str) -> Result<Rows<'_>, WireError> {
        self.command(COM_QUERY, sql.as_bytes()).await?;
        self.text_result().await
    }

    /// Sends plain queries in one write, without waiting for any reply:
    /// the server finds each next one already there when it has answered
    /// the one before, instead of a round trip per statement. Read their
    /// results in order with [`WireConn::sent_text_rows`], each to its end.
    /// Keep the batch small (a few KiB): it is written before any reply is
    /// read, so it must fit in the sockets' buffers.
    pub async fn send_queries(&mut self, sqls: &[String]) -> Result<(), WireError> {
        for sql in sqls {
            self.queue_command(COM_QUERY, sql.as_bytes());
        }
        self.packets.flush().await
    }

    /// The rows of the next query sent by [`WireConn::send_queries`], as
    /// [`WireConn::rows`] gives them in [`Protocol::Text`].
    pub async fn sent_text_rows(&mut self) -> Result<Rows<'_>, WireError> {
        // Every command's reply begins at sequence number 1.
        self.packets.set_seq(1);
        self.text_result().await
    }

    /// Reads a plain query's reply up to its first row.
    async fn text_result(&mut self) -> Result<Rows<'_>, WireError> {
        let p = self.packets.read().await?;
        let columns = match p.first() {
            Some(0xFF) => return Err(server_error(p)),
            Some(0x00) => None,
            Some(0xFB) => return Err(WireError::Unsupported("LOAD DATA LOCAL".into())),
            _ => Some(
                Cursor::new(p)
                    .lenenc()
                    .ok_or_else(|| WireError::Protocol("malformed column count".into()))?,
            ),
        };
        let mut cols = Vec::new();
        if let Some(n) = columns {
            for _ in 0..n {
                let col = binary::column_def(self.packets.read().await?)?;
                if !col.text_exact() {
                    return Err(WireError::Protocol(format!(
                        "a column of type {:?} where the table's columns read as text",
                        col.ty
                    )));
                }
                cols.push(col);
            }
            self.skip_to_eof().await?;
        }
        Ok(Rows {
            conn: self,
            statement: None,
            cols,
            done: columns.is_none(),
        })
    }

    /// Says goodbye; errors are irrelevant once nothing more is read.
    pub async fn disconnect(mut self) {
        if self.command(COM_QUIT, &[]).await.is_ok() {
            self.packets.shutdown().await;
        }
    }
}

/// The rows of one executed statement. Read them to the end: the
/// connection is not usable for anything else before that.
pub struct Rows<'c> {
    conn: &'c mut WireConn,
    /// The prepared statement (binary protocol), closed after its rows.
    statement: Option<u32>,
    cols: Vec<ColumnDef>,
    done: bool,
}

impl Rows<'_> {
    /// Appends the next row's canonical line to `out`; `false` after the
    /// last row, when the statement has been closed.
    pub async fn next_line(&mut self, out: &mut Vec<u8>) -> Result<bool, WireError> {
        if self.done {
            return Ok(false);
        }
        let p = self.conn.packets.read().await?;
        match p.first() {
            Some(0xFF) => Err(server_error(p)),
            _ if eof_status(p).is_some() => {
                self.done = true;
                if let Some(id) = self.statement {
                    // COM_STMT_CLOSE has no reply: it goes with the next command.
                    self.conn.queue_command(COM_STMT_CLOSE, &id.to_le_bytes());
                }
                Ok(false)
            }
            // A text row starts with its first value (0x00 is an empty one).
            _ if self.statement.is_none() => {
                binary::encode_text_row(out, p, &self.cols)?;
                Ok(true)
            }
            Some(0x00) => {
                binary::encode_row(out, p, &self.cols)?;
                Ok(true)
            }
            _ => Err(WireError::Protocol(
                "unexpected packet in a result set".into(),
            )),
        }
    }
}

#[cfg(test)]
mod tests {
    //! Against a scripted server on 127.0.0.1: the exchanges a real
    //! MariaDB does not offer on demand (another authentication method, a
    //! payload split over wire packets). The row path is covered against
    //! real servers by the integration tests.

    use tokio::net::TcpListener;

    use crate::error::DbError;

    use super::handshake::tests::sample_greeting;
    use super::*;

    /// A server that greets, reads the handshake response, and answers
    /// with `reply`; returns the port and the response it received.
    async fn server(reply: Vec<u8>) -> (u16, tokio::task::JoinHandle<Vec<u8>>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let task = tokio::spawn(async move {
            let (mut p, response) = greet(&listener, &reply).await;
            // Hold the connection until the client has read the reply.
            drop(p.read().await);
            response
        });
        (port, task)
    }

    /// Accepts a connection, greets, reads the handshake response and
    /// answers with `reply`; returns the stream and the response.
    async fn greet(listener: &TcpListener, reply: &[u8]) -> (PacketStream, Vec<u8>) {
        let (s, _) = listener.accept().await.unwrap();
        let mut p = PacketStream::new(Stream::Plain(s));
        p.write(&sample_greeting()).await.unwrap();
        let response = p.read().await.unwrap().to_vec();
        p.write(reply).await.unwrap();
        (p, response)
    }

    fn login(port: u16) -> Login<'static> {
        Login {
            host: "127.0.0.1",
            port,
            user: "backup",
            password: b"not-the-real-one",
            database: None,
            tls: None,
            tls_required: false,
        }
    }

    #[tokio::test]
    async fn another_authentication_method_is_unsupported() {
        let (port, task) =
            server(b"\xfeclient_ed25519\0abcdefghijklmnopqrstuvwxyz01234567\0".to_vec()).await;
        match WireConn::connect(&login(port)).await {
            Err(WireError::Unsupported(why)) => assert!(why.contains("client_ed25519"), "{why}"),
            other => panic!("expected Unsupported, got {other:?}"),
        }
        let response = task.await.unwrap();
        // The response carries the user and a 20-byte scramble, never the password.
        assert!(response.windows(7).any(|w| w == b"backup\0"));
        assert!(!response.windows(8).any(|w| w == b"not-the-"));
    }

    #[tokio::test]
    async fn a_refused_login_is_the_server_error() {
        let mut err = vec![0xFF];
        err.extend_from_slice(&1045u16.to_le_bytes());
        err.extend_from_slice(b"#28000Access denied for user 'backup'@'localhost'");
        let (port, _task) = server(err).await;
        let e = WireConn::connect(&login(port)).await.unwrap_err();
        assert_eq!(
            e.to_string(),
            "ERROR 1045 (28000): Access denied for user 'backup'@'localhost'"
        );
        assert!(DbError::from(e).is_server_error());
    }

    /// A text result of one VARCHAR column `v` holding `value`.
    fn text_result(p: &mut PacketStream, value: &[u8]) {
        p.queue(&[1]);
        let mut def = Vec::new();
        for field in [&b"def"[..], b"d", b"t", b"t", b"v", b"v"] {
            def.push(field.len() as u8);
            def.extend_from_slice(field);
        }
        def.push(0x0c);
        def.extend_from_slice(&45u16.to_le_bytes());
        def.extend_from_slice(&128u32.to_le_bytes());
        def.push(253); // VAR_STRING
        def.extend_from_slice(&[0, 0, 0, 0, 0]); // flags, decimals, filler
        p.queue(&def);
        p.queue(&[0xFE, 0, 0, 0, 0]);
        let mut row = vec![value.len() as u8];
        row.extend_from_slice(value);
        p.queue(&row);
        p.queue(&[0xFE, 0, 0, 0, 0]);
    }

    #[tokio::test]
    async fn queries_sent_together_go_out_before_any_reply_and_are_read_in_order() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let task = tokio::spawn(async move {
            let (mut p, _) = greet(&listener, &[0, 0, 0, 2, 0, 0, 0]).await;
            // Every query is read before anything is answered: a client
            // that waited for a reply in between would wait forever.
            let mut queries = Vec::new();
            for _ in 0..3 {
                p.reset_seq();
                queries.push(p.read().await.unwrap().to_vec());
            }
            p.set_seq(1);
            text_result(&mut p, b"first");
            p.flush().await.unwrap();
            p.set_seq(1);
            text_result(&mut p, b"second");
            p.flush().await.unwrap();
            p.set_seq(1);
            let mut err = vec![0xFF];
            err.extend_from_slice(&1146u16.to_le_bytes());
            err.extend_from_slice(b"#42S02Table 'd.gone' doesn't exist");
            p.write(&err).await.unwrap();
            drop(p.read().await);
            queries
        });
        let mut conn = WireConn::connect(&login(port)).await.unwrap();
        let sqls: Vec<String> = [
            "SELECT v FROM d.a",
            "SELECT v FROM d.b",
            "SELECT v FROM d.gone",
        ]
        .map(String::from)
        .to_vec();
        let read = async {
            conn.send_queries(&sqls).await.unwrap();
            let mut lines = Vec::new();
            for _ in 0..2 {
                let mut rows = conn.sent_text_rows().await.unwrap();
                let mut line = Vec::new();
                while rows.next_line(&mut line).await.unwrap() {
                    line.push(b'|');
                }
                lines.push(String::from_utf8(line).unwrap());
            }
            let third = conn.sent_text_rows().await.map(|_| ());
            (lines, third)
        };
        let (lines, third) = tokio::time::timeout(std::time::Duration::from_secs(10), read)
            .await
            .expect("the replies never came: the queries did not all go out at once");
        assert_eq!(lines, ["first|", "second|"]);
        assert_eq!(
            third.unwrap_err().to_string(),
            "ERROR 1146 (42S02): Table 'd.gone' doesn't exist"
        );
        conn.disconnect().await;
        let queries = task.await.unwrap();
        for (q, sql) in queries.iter().zip(&sqls) {
            assert_eq!(q[0], COM_QUERY);
            assert_eq!(&q[1..], sql.as_bytes());
        }
    }

    #[tokio::test]
    async fn payloads_of_16_mib_and_more_are_joined() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let big: Vec<u8> = (0..(17usize << 20)).map(|i| (i % 251) as u8).collect();
        let exact = vec![7u8; 0xFF_FFFF];
        let (b2, e2) = (big.clone(), exact.clone());
        let writer = tokio::spawn(async move {
            let (s, _) = listener.accept().await.unwrap();
            let mut p = PacketStream::new(Stream::Plain(s));
            for payload in [&b2[..], b"small", &e2[..], b""] {
                p.write(payload).await.unwrap();
            }
        });
        let mut r = PacketStream::new(Stream::Plain(TcpStream::connect(addr).await.unwrap()));
        assert_eq!(r.read().await.unwrap(), &big[..]);
        assert_eq!(r.read().await.unwrap(), b"small");
        assert_eq!(r.read().await.unwrap(), &exact[..]);
        assert_eq!(r.read().await.unwrap(), b"");
        writer.await.unwrap();
        assert!(matches!(r.read().await, Err(WireError::Closed)));
    }
}
