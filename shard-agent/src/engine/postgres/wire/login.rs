//! Startup and authentication. The password leaves this module only inside
//! the authentication exchange; no error built here contains it.

use bytes::BytesMut;
use postgres_protocol::authentication::md5_hash;
use postgres_protocol::authentication::sasl::{ChannelBinding, ScramSha256, SCRAM_SHA_256};
use postgres_protocol::message::frontend;
use tokio::net::TcpStream;

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
}

fn encode_err(e: std::io::Error) -> PgWireError {
    PgWireError::Protocol(format!("cannot encode a message: {e}"))
}

impl CopyConn {
    /// Connects and logs in; returns once the server is ready for a query.
    pub async fn connect(login: &Login<'_>) -> Result<CopyConn, PgWireError> {
        if login.host.starts_with('/') {
            return Err(PgWireError::Unsupported("a Unix socket".into()));
        }
        let stream = TcpStream::connect((login.host, login.port))
            .await
            .map_err(PgWireError::Io)?;
        // Rows arrive in small messages; this client's own messages are
        // whole statements, sent at once.
        stream.set_nodelay(true).map_err(PgWireError::Io)?;
        let mut frames = Frames::new(stream);
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
        frames.send(&out).await?;
        let mut scram: Option<ScramSha256> = None;
        loop {
            let kind = frames.advance().await?;
            match kind {
                b'R' => {
                    let body = frames.body();
                    let code = body
                        .get(..4)
                        .map(|c| u32::from_be_bytes([c[0], c[1], c[2], c[3]]))
                        .ok_or_else(|| {
                            PgWireError::Protocol("short authentication request".into())
                        })?;
                    let data = &body[4..];
                    out.clear();
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

/// The configured password, where the server asks for one. Without one,
/// tokio-postgres reports the missing password in its own words.
fn password<'a>(login: &Login<'a>) -> Result<&'a [u8], PgWireError> {
    login
        .password
        .ok_or_else(|| PgWireError::Unsupported("a password is asked for and none is set".into()))
}
