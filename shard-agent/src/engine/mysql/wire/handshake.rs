//! The connection handshake: the server's greeting, our response, and the
//! `mysql_native_password` scramble, the only authentication this reader
//! speaks. Any other method the server asks for (`caching_sha2_password`,
//! `ed25519`, …) is [`WireError::Unsupported`], on which the caller reads
//! through mysql_async instead; the password never leaves this module
//! except scrambled.

use sha1::{Digest, Sha1};

use super::cursor::Cursor;
use super::WireError;

pub const CLIENT_LONG_PASSWORD: u32 = 0x1;
pub const CLIENT_LONG_FLAG: u32 = 0x4;
pub const CLIENT_CONNECT_WITH_DB: u32 = 0x8;
pub const CLIENT_PROTOCOL_41: u32 = 0x200;
pub const CLIENT_SSL: u32 = 0x800;
pub const CLIENT_TRANSACTIONS: u32 = 0x2000;
pub const CLIENT_SECURE_CONNECTION: u32 = 0x8000;
pub const CLIENT_MULTI_RESULTS: u32 = 0x2_0000;
pub const CLIENT_PLUGIN_AUTH: u32 = 0x8_0000;
/// utf8mb4_general_ci; the session sets its character sets explicitly.
const CHARSET: u8 = 45;
pub const NATIVE_PASSWORD: &[u8] = b"mysql_native_password";

/// What the server's greeting tells the client.
pub struct Greeting {
    pub capabilities: u32,
    pub scramble: Vec<u8>,
    /// MariaDB 10.2 or later: a `COM_STMT_EXECUTE` may name the statement
    /// just prepared as id 0xFFFFFFFF, so a prepare and its execution go
    /// in one write. Such a server names itself MariaDB and leaves the
    /// first capability bit (`CLIENT_MYSQL` in MariaDB's documentation)
    /// unset, as MariaDB's protocol documentation describes.
    pub direct_execute: bool,
}

fn short(what: &str) -> WireError {
    WireError::Protocol(format!("the server's greeting is cut short ({what})"))
}

pub fn parse_greeting(payload: &[u8]) -> Result<Greeting, WireError> {
    let mut c = Cursor::new(payload);
    match c.u8() {
        Some(10) => {}
        Some(0xFF) => return Err(super::server_error(payload)),
        Some(v) => {
            return Err(WireError::Unsupported(format!(
                "handshake protocol version {v}"
            )))
        }
        None => return Err(short("empty")),
    }
    let version = c.until_nul();
    let mariadb = version.windows(7).any(|w| w == b"MariaDB");
    c.skip(4).ok_or_else(|| short("connection id"))?;
    let mut scramble = c.take(8).ok_or_else(|| short("scramble"))?.to_vec();
    c.skip(1).ok_or_else(|| short("filler"))?;
    let low = c.u16().ok_or_else(|| short("capabilities"))?;
    let mut capabilities = u32::from(low);
    // A pre-4.1 greeting ends here; such servers are not supported.
    if c.rest().is_empty() {
        return Err(WireError::Unsupported("a pre-4.1 server".into()));
    }
    c.skip(1).ok_or_else(|| short("character set"))?;
    c.skip(2).ok_or_else(|| short("status"))?;
    let high = c.u16().ok_or_else(|| short("capabilities"))?;
    capabilities |= u32::from(high) << 16;
    let data_len = c.u8().ok_or_else(|| short("scramble length"))?;
    c.skip(10).ok_or_else(|| short("reserved"))?;
    if capabilities & CLIENT_SECURE_CONNECTION != 0 {
        let n = usize::from(data_len).saturating_sub(8).max(13);
        let part = c.take(n).ok_or_else(|| short("scramble"))?;
        // The second part ends with a NUL that is not part of the scramble.
        scramble.extend_from_slice(part.strip_suffix(b"\0").unwrap_or(part));
    }
    // The method the server names last is not needed: the response names
    // mysql_native_password, and a server wanting another asks to switch.
    Ok(Greeting {
        capabilities,
        scramble,
        direct_execute: mariadb && capabilities & CLIENT_LONG_PASSWORD == 0,
    })
}

/// `mysql_native_password`: SHA1(password) XOR SHA1(scramble, SHA1(SHA1(password))).
/// An empty password is sent as an empty response.
pub fn native_scramble(password: &[u8], scramble: &[u8]) -> Vec<u8> {
    if password.is_empty() {
        return Vec::new();
    }
    let stage1 = Sha1::digest(password);
    let stage2 = Sha1::digest(stage1);
    let mut h = Sha1::new();
    h.update(scramble.get(..20).unwrap_or(scramble));
    h.update(stage2);
    let mix = h.finalize();
    stage1.iter().zip(mix.iter()).map(|(a, b)| a ^ b).collect()
}

/// The capabilities this reader uses, limited to what the server offers.
pub fn client_capabilities(server: u32, with_db: bool) -> Result<u32, WireError> {
    let need = CLIENT_PROTOCOL_41 | CLIENT_SECURE_CONNECTION;
    if server & need != need {
        return Err(WireError::Unsupported(
            "a server without the 4.1 protocol".into(),
        ));
    }
    let mut caps = CLIENT_LONG_PASSWORD
        | CLIENT_LONG_FLAG
        | CLIENT_PROTOCOL_41
        | CLIENT_TRANSACTIONS
        | CLIENT_SECURE_CONNECTION
        | CLIENT_MULTI_RESULTS
        | CLIENT_PLUGIN_AUTH;
    if with_db {
        caps |= CLIENT_CONNECT_WITH_DB;
    }
    Ok(caps & server)
}

/// SSLRequest: the first 32 bytes of a HandshakeResponse41, with
/// `CLIENT_SSL` set; TLS starts right after it.
pub fn ssl_request(caps: u32) -> Vec<u8> {
    let mut out = Vec::with_capacity(32);
    out.extend_from_slice(&(caps | CLIENT_SSL).to_le_bytes());
    out.extend_from_slice(&(1u32 << 24).to_le_bytes());
    out.push(CHARSET);
    out.extend_from_slice(&[0; 23]);
    out
}

/// HandshakeResponse41, answering with `mysql_native_password` whatever
/// the server proposed: a server whose account uses another method asks
/// to switch, and that is where an unsupported method shows.
pub fn response(
    caps: u32,
    user: &str,
    password: &[u8],
    scramble: &[u8],
    database: Option<&str>,
) -> Vec<u8> {
    let mut out = Vec::with_capacity(128);
    out.extend_from_slice(&caps.to_le_bytes());
    out.extend_from_slice(&(1u32 << 24).to_le_bytes());
    out.push(CHARSET);
    out.extend_from_slice(&[0; 23]);
    out.extend_from_slice(user.as_bytes());
    out.push(0);
    let auth = native_scramble(password, scramble);
    // 20 bytes or none: always fits the one-byte length.
    out.push(auth.len() as u8);
    out.extend_from_slice(&auth);
    if caps & CLIENT_CONNECT_WITH_DB != 0 {
        out.extend_from_slice(database.unwrap_or_default().as_bytes());
        out.push(0);
    }
    if caps & CLIENT_PLUGIN_AUTH != 0 {
        out.extend_from_slice(NATIVE_PASSWORD);
        out.push(0);
    }
    out
}

#[cfg(test)]
pub(super) mod tests {
    use super::*;

    #[test]
    fn native_scramble_matches_the_server_check() {
        // The server stores SHA1(SHA1(password)) and checks
        // SHA1(scramble, stored) XOR response == SHA1(password).
        let password = b"s3cret";
        let scramble: Vec<u8> = (1..=20).collect();
        let response = native_scramble(password, &scramble);
        let stored = Sha1::digest(Sha1::digest(password));
        let mut h = Sha1::new();
        h.update(&scramble);
        h.update(stored);
        let stage1: Vec<u8> = h
            .finalize()
            .iter()
            .zip(&response)
            .map(|(a, b)| a ^ b)
            .collect();
        assert_eq!(Sha1::digest(&stage1).as_slice(), stored.as_slice());
        assert!(native_scramble(b"", &scramble).is_empty());
    }

    /// A MariaDB greeting with the scramble `abcdefghijklmnopqrst`.
    pub(in crate::engine::mysql::wire) fn sample_greeting() -> Vec<u8> {
        let caps = CLIENT_PROTOCOL_41 | CLIENT_SECURE_CONNECTION | CLIENT_PLUGIN_AUTH;
        let mut g = vec![10];
        g.extend_from_slice(b"10.11.6-MariaDB\0");
        g.extend_from_slice(&7u32.to_le_bytes());
        g.extend_from_slice(b"abcdefgh\0");
        g.extend_from_slice(&(caps as u16).to_le_bytes());
        g.push(45);
        g.extend_from_slice(&2u16.to_le_bytes());
        g.extend_from_slice(&((caps >> 16) as u16).to_le_bytes());
        g.push(21);
        g.extend_from_slice(&[0; 10]);
        g.extend_from_slice(b"ijklmnopqrst\0mysql_native_password\0");
        g
    }

    #[test]
    fn greeting_yields_the_whole_scramble() {
        let g = sample_greeting();
        let caps = CLIENT_PROTOCOL_41 | CLIENT_SECURE_CONNECTION | CLIENT_PLUGIN_AUTH;
        let parsed = parse_greeting(&g).unwrap();
        assert_eq!(parsed.scramble, b"abcdefghijklmnopqrst");
        assert_eq!(parsed.capabilities, caps);
        assert!(parsed.direct_execute);
        // A server that sets the first capability bit (MySQL, or a MariaDB
        // before 10.2) gets a prepare and an execution one after another.
        let mut older = g.clone();
        older[30] |= CLIENT_LONG_PASSWORD as u8;
        assert!(!parse_greeting(&older).unwrap().direct_execute);
        let mut mysql = g.clone();
        mysql[1..16].copy_from_slice(b"8.0.36-MySQL-xx");
        assert!(!parse_greeting(&mysql).unwrap().direct_execute);
        assert!(matches!(
            parse_greeting(&g[..20]),
            Err(WireError::Protocol(_))
        ));
    }
}
