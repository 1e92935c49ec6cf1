//! Startup and authentication. The password leaves this module only inside
//! the authentication exchange; no error built here contains it.

use bytes::BytesMut;
use postgres_protocol::authentication::md5_hash;
use postgres_protocol::authentication::sasl::{ChannelBinding, ScramSha256, SCRAM_SHA_256};
use postgres_protocol::message::frontend;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::tls::Stream;

use super::frame::Frames;
use super::{asynchronous, server_error, unexpected, CopyConn, PgWireError};

const AUTH_OK: u32 = 0;
const AUTH_CLEARTEXT: u32 = 3;
const AUTH_MD5: u32 = 5;
const AUTH_SASL: u32 = 10;
const AUTH_SASL_CONTINUE: u32 = 11;
const AUTH_SASL_FINAL: u32 = 12;

pub struct Login<'a> {
    pub host: &'a str,
    pub port: u16,
    pub user: &'a str,
    pub password: Option<&'a [u8]>,
    pub database: &'a str,
    /// TLS to start when the server offers it (`None`: `tls: disable`).
    pub tls: Option<rustls::ClientConfig>,
    /// Whether a server without TLS is refused rather than read in clear.
    pub tls_required: bool,
    /// Whether the `password` and `md5` methods may answer over a
    /// connection without TLS.
    pub allow_cleartext_password: bool,
}

/// SSLRequest: length 8, then the code 1234.5679.
const SSL_REQUEST: [u8; 8] = [0, 0, 0, 8, 0x04, 0xd2, 0x16, 0x2f];

/// Opens the TCP connection and, as `login.tls` says, starts TLS.
async fn open(login: &Login<'_>) -> Result<Frames, PgWireError> {
    if login.host.starts_with('/') {
        return Err(PgWireError::Unsupported("a Unix socket".into()));
    }
    let mut stream = TcpStream::connect((login.host, login.port))
        .await
        .map_err(PgWireError::Io)?;
    // Rows arrive in small messages; this client's own messages are
    // whole statements, sent at once.
    stream.set_nodelay(true).map_err(PgWireError::Io)?;
    let Some(config) = &login.tls else {
        return Ok(Frames::new(Stream::Plain(stream)));
    };
    stream
        .write_all(&SSL_REQUEST)
        .await
        .map_err(PgWireError::Io)?;
    let mut answer = [0u8; 1];
    stream
        .read_exact(&mut answer)
        .await
        .map_err(PgWireError::Io)?;
    match answer[0] {
        b'S' => {
            let tls = Stream::Plain(stream)
                .upgrade(config.clone(), login.host)
                .await
                .map_err(PgWireError::Io)?;
            Ok(Frames::new(tls))
        }
        // The library reports it in its words.
        b'N' if login.tls_required => Err(PgWireError::Unsupported("a server without TLS".into())),
        b'N' => Ok(Frames::new(Stream::Plain(stream))),
        other => Err(PgWireError::Protocol(format!(
            "answer {other:#04x} to a TLS request"
        ))),
    }
}

fn startup(login: &Login<'_>) -> Result<BytesMut, PgWireError> {
    let mut out = BytesMut::new();
    frontend::startup_message(
        [
            ("user", login.user),
            ("database", login.database),
            ("application_name", "shardcut"),
            ("client_encoding", "UTF8"),
        ],
        &mut out,
    )
    .map_err(encode_err)?;
    Ok(out)
}

/// The 4-byte authentication code at the start of an 'R' body.
fn auth_code(body: &[u8]) -> Result<u32, PgWireError> {
    body.get(..4)
        .map(|c| u32::from_be_bytes([c[0], c[1], c[2], c[3]]))
        .ok_or_else(|| PgWireError::Protocol("short authentication request".into()))
}

fn encode_err(e: std::io::Error) -> PgWireError {
    PgWireError::Protocol(format!("cannot encode a message: {e}"))
}

impl CopyConn {
    /// Connects and logs in; returns once the server is ready for a query.
    pub async fn connect(login: &Login<'_>) -> Result<CopyConn, PgWireError> {
        let mut frames = open(login).await?;
        let mut out = startup(login)?;
        frames.send(&out).await?;
        let in_clear = !frames.is_tls() && !login.allow_cleartext_password;
        let mut scram: Option<ScramSha256> = None;
        loop {
            let kind = frames.advance().await?;
            match kind {
                b'R' => {
                    let body = frames.body();
                    let code = auth_code(body)?;
                    let data = &body[4..];
                    out.clear();
                    if in_clear && matches!(code, AUTH_CLEARTEXT | AUTH_MD5) {
                        // The library path checks and says why.
                        return Err(PgWireError::Unsupported(
                            "a password in clear or MD5 without TLS".into(),
                        ));
                    }
                    match code {
                        AUTH_OK => continue,
                        AUTH_CLEARTEXT => {
                            frontend::password_message(password(login)?, &mut out)
                                .map_err(encode_err)?;
                        }
                        AUTH_MD5 => {
                            let salt: [u8; 4] = data.try_into().map_err(|_| {
                                PgWireError::Protocol("MD5 request without a 4-byte salt".into())
                            })?;
                            let hash = md5_hash(login.user.as_bytes(), password(login)?, salt);
                            frontend::password_message(hash.as_bytes(), &mut out)
                                .map_err(encode_err)?;
                        }
                        AUTH_SASL => {
                            let offered = data
                                .split(|b| *b == 0)
                                .any(|m| m == SCRAM_SHA_256.as_bytes());
                            if !offered {
                                return Err(PgWireError::Unsupported(format!(
                                    "SASL mechanisms {}",
                                    String::from_utf8_lossy(data).replace('\0', " ").trim()
                                )));
                            }
                            // No TLS, so no channel binding: the same choice
                            // tokio-postgres makes without TLS.
                            let s =
                                ScramSha256::new(password(login)?, ChannelBinding::unsupported());
                            frontend::sasl_initial_response(SCRAM_SHA_256, s.message(), &mut out)
                                .map_err(encode_err)?;
                            scram = Some(s);
                        }
                        AUTH_SASL_CONTINUE => {
                            let s = scram
                                .as_mut()
                                .ok_or_else(|| unexpected(kind, "before SASL"))?;
                            s.update(data).map_err(|e| {
                                PgWireError::Protocol(format!("SCRAM exchange: {e}"))
                            })?;
                            frontend::sasl_response(s.message(), &mut out).map_err(encode_err)?;
                        }
                        AUTH_SASL_FINAL => {
                            let s = scram
                                .as_mut()
                                .ok_or_else(|| unexpected(kind, "before SASL"))?;
                            // Checks the server's signature: a server that
                            // does not know the password is refused.
                            s.finish(data).map_err(|e| {
                                PgWireError::Protocol(format!("SCRAM exchange: {e}"))
                            })?;
                            continue;
                        }
                        other => {
                            return Err(PgWireError::Unsupported(format!(
                                "authentication request {other}"
                            )))
                        }
                    }
                    frames.send(&out).await?;
                }
                b'E' => return Err(server_error(frames.body())),
                // BackendKeyData (no cancel is ever sent: a dropped
                // connection ends its statement) and NegotiateProtocolVersion.
                b'K' | b'v' => {}
                b'Z' => return Ok(CopyConn { frames }),
                k if asynchronous(k) => {}
                k => return Err(unexpected(k, "during login")),
            }
        }
    }
}

impl CopyConn {
    /// Which password method the server asks for, when it is one that
    /// would send the password in clear (`password`) or as MD5 over a
    /// connection without TLS; `None` when the exchange is safe (TLS, SCRAM,
    /// trust). Sends the startup message only, never a password.
    pub async fn password_method(login: &Login<'_>) -> Result<Option<&'static str>, PgWireError> {
        let mut frames = open(login).await?;
        if frames.is_tls() {
            return Ok(None);
        }
        frames.send(&startup(login)?).await?;
        loop {
            match frames.advance().await? {
                b'R' => {
                    let method = match auth_code(frames.body())? {
                        AUTH_CLEARTEXT => Some("in clear (`password` method)"),
                        AUTH_MD5 => Some("as MD5 (`md5` method)"),
                        _ => None,
                    };
                    frames.shutdown().await;
                    return Ok(method);
                }
                b'E' => return Err(server_error(frames.body())),
                k if asynchronous(k) => {}
                k => return Err(unexpected(k, "before authentication")),
            }
        }
    }
}

/// The configured password, where the server asks for one. Without one,
/// tokio-postgres reports the missing password in its own words.
fn password<'a>(login: &Login<'a>) -> Result<&'a [u8], PgWireError> {
    login
        .password
        .ok_or_else(|| PgWireError::Unsupported("a password is asked for and none is set".into()))
}
