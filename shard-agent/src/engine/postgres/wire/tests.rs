//! Against a scripted server on 127.0.0.1: the exchanges a real PostgreSQL
//! does not offer on demand (another authentication method, MD5, a row
//! arriving in fragments, an error in the middle of a COPY). SCRAM and the
//! row path are covered against real servers by the integration tests.

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use crate::error::DbError;

use super::*;

/// A backend message: type, length (counting itself), body.
fn msg(kind: u8, body: &[u8]) -> Vec<u8> {
    let mut out = vec![kind];
    out.extend_from_slice(&(body.len() as u32 + 4).to_be_bytes());
    out.extend_from_slice(body);
    out
}

fn auth(code: u32, data: &[u8]) -> Vec<u8> {
    let mut body = code.to_be_bytes().to_vec();
    body.extend_from_slice(data);
    msg(b'R', &body)
}

fn ready() -> Vec<u8> {
    msg(b'Z', b"I")
}

fn error(severity: &str, code: &str, message: &str) -> Vec<u8> {
    let mut body = Vec::new();
    for (field, text) in [(b'S', severity), (b'C', code), (b'M', message)] {
        body.push(field);
        body.extend_from_slice(text.as_bytes());
        body.push(0);
    }
    body.push(0);
    msg(b'E', &body)
}

/// The startup message's body (it has no type byte).
async fn read_startup(s: &mut TcpStream) -> Vec<u8> {
    let len = s.read_u32().await.unwrap() as usize;
    let mut body = vec![0; len - 4];
    s.read_exact(&mut body).await.unwrap();
    body
}

async fn read_msg(s: &mut TcpStream) -> (u8, Vec<u8>) {
    let kind = s.read_u8().await.unwrap();
    let len = s.read_u32().await.unwrap() as usize;
    let mut body = vec![0; len - 4];
    s.read_exact(&mut body).await.unwrap();
    (kind, body)
}

/// A server that runs `script` on the accepted connection and returns what
/// it gives back.
async fn server<F, Fut, T>(script: F) -> (u16, tokio::task::JoinHandle<T>)
where
    F: FnOnce(TcpStream) -> Fut + Send + 'static,
    Fut: std::future::Future<Output = T> + Send,
    T: Send + 'static,
{
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let task = tokio::spawn(async move {
        let (s, _) = listener.accept().await.unwrap();
        script(s).await
    });
    (port, task)
}

const PASSWORD: &[u8] = b"not-the-real-one";

fn login(port: u16) -> Login<'static> {
    Login {
        host: "127.0.0.1",
        port,
        user: "backup",
        password: Some(PASSWORD),
        database: "shop",
        tls: None,
        tls_required: false,
        allow_cleartext_password: true,
    }
}

#[tokio::test]
async fn another_authentication_method_is_unsupported() {
    let (port, task) = server(|mut s| async move {
        let startup = read_startup(&mut s).await;
        // GSSAPI
        s.write_all(&auth(7, b"")).await.unwrap();
        drop(s.read_u8().await);
        startup
    })
    .await;
    match CopyConn::connect(&login(port)).await {
        Err(PgWireError::Unsupported(why)) => assert!(why.contains("request 7"), "{why}"),
        Err(e) => panic!("expected Unsupported, got {e:?}"),
        Ok(_) => panic!("expected Unsupported, got a connection"),
    }
    let startup = task.await.unwrap();
    assert!(startup.windows(12).any(|w| w == b"user\0backup\0"));
    assert!(startup.windows(14).any(|w| w == b"database\0shop\0"));
    assert!(!startup.windows(8).any(|w| w == b"not-the-"));
}

#[tokio::test]
async fn a_refused_login_is_the_server_error() {
    let (port, _task) = server(|mut s| async move {
        read_startup(&mut s).await;
        let refusal = error(
            "FATAL",
            "28P01",
            "password authentication failed for user \"backup\"",
        );
        s.write_all(&refusal).await.unwrap();
        drop(s.read_u8().await);
    })
    .await;
    let err = match CopyConn::connect(&login(port)).await {
        Err(e) => e,
        Ok(_) => panic!("a refused login connected"),
    };
    assert_eq!(
        err.to_string(),
        "FATAL: password authentication failed for user \"backup\""
    );
    let db = DbError::PgWire(err);
    assert!(db.is_auth_failure() && db.is_server_error());
}

#[tokio::test]
async fn md5_sends_the_salted_hash_never_the_password() {
    let salt = [1, 2, 3, 4];
    let (port, task) = server(move |mut s| async move {
        read_startup(&mut s).await;
        s.write_all(&auth(5, &salt)).await.unwrap();
        let answer = read_msg(&mut s).await;
        s.write_all(&[auth(0, b""), ready()].concat())
            .await
            .unwrap();
        drop(s.read_u8().await);
        answer
    })
    .await;
    let conn = CopyConn::connect(&login(port)).await.unwrap();
    conn.close().await;
    let (kind, body) = task.await.unwrap();
    let expected = postgres_protocol::authentication::md5_hash(b"backup", PASSWORD, salt);
    assert_eq!(kind, b'p');
    assert_eq!(body, [expected.as_bytes(), b"\0"].concat());
}

/// Logs in without a password, answers the first query with `reply` sent
/// in `fragment`-byte pieces, then answers one more query with success.
async fn copy_server(reply: Vec<u8>, fragment: usize) -> u16 {
    let (port, _task) = server(move |mut s| async move {
        read_startup(&mut s).await;
        let hello = [
            auth(0, b""),
            msg(b'S', b"server_version\x0015.0\0"),
            msg(b'K', &[0; 8]),
            ready(),
        ]
        .concat();
        s.write_all(&hello).await.unwrap();
        let (kind, _) = read_msg(&mut s).await;
        assert_eq!(kind, b'Q');
        for piece in reply.chunks(fragment) {
            s.write_all(piece).await.unwrap();
            s.flush().await.unwrap();
        }
        let (kind, _) = read_msg(&mut s).await;
        assert_eq!(kind, b'Q');
        let done = [msg(b'C', b"SET\0"), ready()].concat();
        s.write_all(&done).await.unwrap();
        drop(s.read_u8().await);
    })
    .await;
    port
}

async fn read_copy(conn: &mut CopyConn) -> Result<Vec<u8>, PgWireError> {
    let mut copy = conn.copy_out("COPY t TO STDOUT").await?;
    let mut out = Vec::new();
    while let Some(piece) = copy.next().await? {
        out.extend_from_slice(piece);
    }
    Ok(out)
}

#[tokio::test]
async fn rows_in_fragments_and_beyond_the_buffer_arrive_whole() {
    let big = vec![b'x'; 700 << 10];
    let rows: Vec<Vec<u8>> = vec![
        b"1\ta\n".to_vec(),
        [&b"2\t"[..], &big, b"\n"].concat(),
        b"3\t\\N\n".to_vec(),
    ];
    let mut reply = msg(b'H', &[0, 0, 2, 0, 0, 0, 0]);
    reply.extend(msg(b'N', b"SNOTICE\0Mhello\0\0"));
    for r in &rows {
        reply.extend(msg(b'd', r));
    }
    reply.extend([msg(b'c', b""), msg(b'C', b"COPY 3\0"), ready()].concat());
    let port = copy_server(reply, 4093).await;
    let mut conn = CopyConn::connect(&login(port)).await.unwrap();
    assert_eq!(read_copy(&mut conn).await.unwrap(), rows.concat());
    conn.execute("SET x = 1").await.unwrap();
}

#[tokio::test]
async fn an_error_inside_the_copy_is_the_server_error_and_the_session_goes_on() {
    let mut reply = msg(b'H', &[0, 0, 1, 0, 0]);
    reply.extend(msg(b'd', b"1\ta\n"));
    reply.extend(error(
        "ERROR",
        "57014",
        "canceling statement due to user request",
    ));
    reply.extend(ready());
    let port = copy_server(reply, 7).await;
    let mut conn = CopyConn::connect(&login(port)).await.unwrap();
    match read_copy(&mut conn).await {
        Err(e @ PgWireError::Server(_)) => assert_eq!(
            e.to_string(),
            "ERROR: canceling statement due to user request"
        ),
        other => panic!("expected the server's error, got {other:?}"),
    }
    conn.execute("SET x = 1").await.unwrap();
}

#[tokio::test]
async fn a_copy_from_the_server_starts_is_refused_not_waited_for() {
    let (port, task) = server(|mut s| async move {
        read_startup(&mut s).await;
        s.write_all(&[auth(0, b""), ready()].concat())
            .await
            .unwrap();
        read_msg(&mut s).await;
        // CopyInResponse: the server now waits for the client's data.
        s.write_all(&msg(b'G', &[0, 0, 0])).await.unwrap();
        let answer = read_msg(&mut s).await;
        let end = [error("ERROR", "57014", "COPY from stdin failed"), ready()].concat();
        s.write_all(&end).await.unwrap();
        drop(s.read_u8().await);
        answer
    })
    .await;
    let mut conn = CopyConn::connect(&login(port)).await.unwrap();
    let run = tokio::time::timeout(
        std::time::Duration::from_secs(10),
        conn.execute("COPY t FROM STDIN"),
    )
    .await
    .expect("the client waited for the server, which waited for it");
    match run {
        Err(PgWireError::Protocol(why)) => assert!(why.contains("'G'"), "{why}"),
        other => panic!("expected a protocol error, got {other:?}"),
    }
    conn.close().await;
    let (kind, _) = task.await.unwrap();
    assert_eq!(kind, b'f', "CopyFail");
}
