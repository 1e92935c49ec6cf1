//! Opening connections to a shard with the session settings shardcut relies on.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Mutex;
use std::time::Duration;

use topology::{Endpoint, Shard, TlsMode};

use crate::error::{AgentError, DbError};
use crate::tls;

/// How long a connection attempt may take before the shard counts as unreachable.
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

pub(crate) fn connect_error(shard: &Shard, source: DbError) -> AgentError {
    AgentError::Connect {
        shard: shard.name.clone(),
        endpoint: shard.endpoint.to_string(),
        source,
    }
}

pub(crate) fn timeout_error(shard: &Shard, timeout: Duration) -> AgentError {
    AgentError::ConnectTimeout {
        shard: shard.name.clone(),
        endpoint: shard.endpoint.to_string(),
        timeout,
    }
}

/// Endpoints (host:port) that answered `prefer` without TLS: later
/// connections go there in clear at once, since every refused TLS attempt
/// counts against MariaDB's `max_connect_errors` for this host.
static PLAIN_ONLY: Mutex<BTreeSet<String>> = Mutex::new(BTreeSet::new());

fn plain_only(key: &str) -> bool {
    PLAIN_ONLY.lock().map(|s| s.contains(key)).unwrap_or(false)
}

fn remember_plain_only(key: String) {
    if let Ok(mut s) = PLAIN_ONLY.lock() {
        s.insert(key);
    }
}

/// For `verify-ca` MySQL endpoints: a name their certificate is valid for.
static CERT_NAME: Mutex<BTreeMap<String, String>> = Mutex::new(BTreeMap::new());

fn cert_name(key: &str) -> Option<String> {
    CERT_NAME.lock().ok().and_then(|m| m.get(key).cloned())
}

/// `verify-ca` on MySQL: mysql_async checks the certificate's name and
/// cannot be told not to (its switch misses rustls's current error), so
/// shardcut first opens TLS itself, checking the chain against the CA and
/// noting the names the certificate carries, and then has mysql_async
/// check the chain and one of those names. Once per endpoint and process.
async fn learn_cert_name(shard: &Shard, timeout: Duration) -> Result<(), AgentError> {
    let key = mysql_key(shard);
    if shard.tls.mode != TlsMode::VerifyCa || cert_name(&key).is_some() {
        return Ok(());
    }
    let ca = shard.tls.ca_pem.as_deref().unwrap_or_default();
    let (config, names) = tls::recording_config(ca).map_err(|e| connect_error(shard, e.into()))?;
    let host = &shard.endpoint.host;
    let probe = crate::engine::mysql::wire::WireConn::tls_probe(host, shard.endpoint.port, config);
    match tokio::time::timeout(timeout, probe).await {
        Ok(Ok(())) => {}
        Ok(Err(crate::engine::mysql::wire::WireError::Unsupported(_))) => {
            return Err(connect_error(shard, tls::TlsError::NotOffered.into()))
        }
        Ok(Err(e)) => return Err(connect_error(shard, DbError::Wire(e))),
        Err(_) => return Err(timeout_error(shard, timeout)),
    }
    let name = names
        .lock()
        .ok()
        .and_then(|n| n.first().cloned())
        .unwrap_or_else(|| host.clone());
    if let Ok(mut m) = CERT_NAME.lock() {
        m.insert(key, name);
    }
    Ok(())
}

/// The TLS client configuration for a shard's database connections;
/// `None` when its mode is `disable`.
pub fn db_tls_config(shard: &Shard) -> Result<Option<rustls::ClientConfig>, AgentError> {
    if shard.tls.mode == TlsMode::Disable {
        return Ok(None);
    }
    tls::client_config(shard.tls.mode, shard.tls.ca_pem.as_deref(), None)
        .map(Some)
        .map_err(|e| connect_error(shard, e.into()))
}

/// mysql_async's TLS options for `mode` (it builds its own rustls
/// configuration from them).
fn mysql_ssl(shard: &Shard) -> Option<mysql_async::SslOpts> {
    let roots = || {
        let pem = shard.tls.ca_pem.clone().unwrap_or_default().into_bytes();
        vec![pem.into()]
    };
    let opts = mysql_async::SslOpts::default();
    match shard.tls.mode {
        TlsMode::Disable => None,
        TlsMode::Prefer | TlsMode::Require => Some(opts.with_danger_accept_invalid_certs(true)),
        TlsMode::VerifyCa => {
            let opts = opts
                .with_root_certs(roots())
                .with_disable_built_in_roots(true);
            Some(match cert_name(&mysql_key(shard)) {
                Some(name) => opts.with_danger_tls_hostname_override(Some(name)),
                None => opts.with_danger_skip_domain_validation(true),
            })
        }
        TlsMode::VerifyFull => Some(
            opts.with_root_certs(roots())
                .with_disable_built_in_roots(true),
        ),
    }
}

/// Connection options for a MySQL/MariaDB shard. TCP only: a socket path
/// would silently point at whatever server owns it on this host. The
/// cleartext authentication plugin stays off (mysql_async's default): no
/// password leaves in clear whatever the server asks.
pub fn mysql_opts(shard: &Shard, database: Option<&str>) -> mysql_async::Opts {
    let Endpoint {
        host, port, user, ..
    } = &shard.endpoint;
    let ssl = if plain_only(&mysql_key(shard)) {
        None
    } else {
        mysql_ssl(shard)
    };
    tls::install_provider();
    mysql_async::OptsBuilder::default()
        .ip_or_hostname(host.clone())
        .tcp_port(*port)
        .user(Some(user.clone()))
        .pass(shard.password.as_ref().map(|p| p.expose().to_string()))
        .db_name(database.map(str::to_string))
        .prefer_socket(false)
        .ssl_opts(ssl)
        .into()
}

fn mysql_key(shard: &Shard) -> String {
    format!("mysql {}:{}", shard.endpoint.host, shard.endpoint.port)
}

/// A MySQL/MariaDB session for shardcut's work, in the session it relies
/// on whatever defaults the server gives (no row limit, autocommit, no
/// limit on statement or idle-transaction time:
/// [`mysql_session_baseline`]).
pub async fn mysql(
    shard: &Shard,
    database: Option<&str>,
    timeout: Duration,
) -> Result<mysql_async::Conn, AgentError> {
    use mysql_async::prelude::Queryable;
    let mut conn = mysql_session(shard, database, timeout).await?;
    let sql = mysql_session_baseline(is_mariadb(&conn));
    conn.query_drop(sql)
        .await
        .map_err(|e| crate::error::db_err(shard, "setting up the session")(DbError::Mysql(e)))?;
    Ok(conn)
}

async fn mysql_session(
    shard: &Shard,
    database: Option<&str>,
    timeout: Duration,
) -> Result<mysql_async::Conn, AgentError> {
    learn_cert_name(shard, timeout).await?;
    let fut = mysql_async::Conn::new(mysql_opts(shard, database));
    match tokio::time::timeout(timeout, fut).await {
        Ok(Ok(conn)) => Ok(conn),
        Ok(Err(mysql_async::Error::Driver(
            mysql_async::DriverError::NoClientSslFlagFromServer,
        ))) if shard.tls.mode == TlsMode::Prefer => {
            // `prefer` against a server without TLS: in clear, as libpq does.
            remember_plain_only(mysql_key(shard));
            let fut = mysql_async::Conn::new(mysql_opts(shard, database));
            match tokio::time::timeout(timeout, fut).await {
                Ok(Ok(conn)) => Ok(conn),
                Ok(Err(e)) => Err(connect_error(shard, e.into())),
                Err(_) => Err(timeout_error(shard, timeout)),
            }
        }
        Ok(Err(mysql_async::Error::Driver(
            mysql_async::DriverError::NoClientSslFlagFromServer,
        ))) => Err(connect_error(shard, tls::TlsError::NotOffered.into())),
        Ok(Err(e)) => Err(connect_error(shard, e.into())),
        Err(_) => Err(timeout_error(shard, timeout)),
    }
}

/// Connects to `database` (default: the URL's database, else `postgres`),
/// with the server's limits on statement, lock-wait, transaction and idle
/// time lifted for the session ([`PG_LIMITS_OFF`]).
/// The connection task is spawned; it ends when the client is dropped.
pub async fn postgres(
    shard: &Shard,
    database: Option<&str>,
    timeout: Duration,
) -> Result<tokio_postgres::Client, AgentError> {
    let Endpoint {
        host,
        port,
        user,
        database: default_db,
    } = &shard.endpoint;
    let mut cfg = tokio_postgres::Config::new();
    cfg.host(host)
        .port(*port)
        .user(user)
        .dbname(database.or(default_db.as_deref()).unwrap_or("postgres"))
        .application_name("shardcut")
        .connect_timeout(timeout);
    if let Some(p) = &shard.password {
        cfg.password(p.expose());
    }
    let dbname = database.or(default_db.as_deref()).unwrap_or("postgres");
    let checked = tokio::time::timeout(timeout, check_password_exchange(shard, dbname));
    match checked.await {
        Ok(r) => r?,
        Err(_) => return Err(timeout_error(shard, timeout)),
    }
    let tls = db_tls_config(shard)?;
    cfg.ssl_mode(match shard.tls.mode {
        TlsMode::Disable => tokio_postgres::config::SslMode::Disable,
        TlsMode::Prefer => tokio_postgres::config::SslMode::Prefer,
        _ => tokio_postgres::config::SslMode::Require,
    });
    let connected = match tls {
        None => {
            tokio::time::timeout(timeout, async {
                let (client, conn) = cfg.connect(tokio_postgres::NoTls).await?;
                spawn_connection(conn);
                Ok::<_, tokio_postgres::Error>(client)
            })
            .await
        }
        Some(config) => {
            let connector = tokio_postgres_rustls::MakeRustlsConnect::new(config);
            tokio::time::timeout(timeout, async {
                let (client, conn) = cfg.connect(connector).await?;
                spawn_connection(conn);
                Ok::<_, tokio_postgres::Error>(client)
            })
            .await
        }
    };
    let client = match connected {
        Ok(Ok(client)) => client,
        Ok(Err(e)) => return Err(connect_error(shard, e.into())),
        Err(_) => return Err(timeout_error(shard, timeout)),
    };
    client.batch_execute(PG_LIMITS_OFF).await.map_err(|e| {
        crate::error::db_err(shard, "lifting the session's time limits")(DbError::Postgres(e))
    })?;
    Ok(client)
}

fn spawn_connection<T>(connection: T)
where
    T: std::future::Future<Output = Result<(), tokio_postgres::Error>> + Send + 'static,
{
    tokio::spawn(async move {
        if let Err(e) = connection.await {
            tracing::debug!("postgres connection closed: {e}");
        }
    });
}

/// (host, port, user, database) whose password exchange was found safe.
static SAFE_EXCHANGE: Mutex<BTreeSet<String>> = Mutex::new(BTreeSet::new());

/// tokio-postgres answers whatever authentication the server asks for,
/// the cleartext `password` and `md5` methods included. Where the
/// connection may be in clear (`disable`, or `prefer` against a server
/// without TLS), shardcut first asks the server which method it wants,
/// without sending anything secret, and refuses those two unless the
/// topology allows them. Once per (host, port, user, database).
async fn check_password_exchange(shard: &Shard, database: &str) -> Result<(), AgentError> {
    if shard.tls.allow_cleartext_password
        || shard.password.is_none()
        || !matches!(shard.tls.mode, TlsMode::Disable | TlsMode::Prefer)
    {
        return Ok(());
    }
    let Endpoint {
        host, port, user, ..
    } = &shard.endpoint;
    let key = format!("{host}\0{port}\0{user}\0{database}");
    if SAFE_EXCHANGE
        .lock()
        .map(|s| s.contains(&key))
        .unwrap_or(false)
    {
        return Ok(());
    }
    let probe = crate::engine::postgres::wire::Login {
        host,
        port: *port,
        user,
        password: None,
        database,
        tls: db_tls_config(shard)?,
        tls_required: false,
        allow_cleartext_password: false,
    };
    match crate::engine::postgres::wire::CopyConn::password_method(&probe).await {
        Ok(Some(method)) => Err(connect_error(shard, DbError::CleartextPassword { method })),
        // Errors (a refused connection, an unknown user) are left for the
        // real connection to report in the library's words.
        Ok(None) => {
            if let Ok(mut s) = SAFE_EXCHANGE.lock() {
                s.insert(key);
            }
            Ok(())
        }
        Err(_) => Ok(()),
    }
}

/// Whether `conn`'s server is MariaDB (10 and up; MySQL is at 9 at most).
pub(crate) fn is_mariadb(conn: &mysql_async::Conn) -> bool {
    conn.server_version().0 >= 10
}

/// The session every shardcut connection works in, whatever defaults the
/// server gives its sessions (`SET GLOBAL`, `my.cnf`, `init_connect`):
/// - `sql_select_limit` unlimited: a server-wide limit (a DBA's guard
///   against huge ad-hoc reads) cut every table's read short without an
///   error; with 1,000, a backup of a table of 1.5 million rows held 1,000
///   and was called complete;
/// - `autocommit` on: with it off server-wide, a restore's loads stayed in
///   transactions never committed, and the workers deadlocked;
/// - `sql_big_selects` on (a `max_join_size` refuses none of its reads);
/// - no limit on a statement's time (MariaDB 10.1 and later), nor (10.3.2
///   and later) on an idle transaction's, each in an executable comment
///   for the versions that have it: a DBA's guard against
///   runaway application queries, which a restore's loads and key builds,
///   a replayed `ALTER TABLE` and a spare snapshot connection waiting its
///   turn pass by design. With a server-wide `max_statement_time` of 50
///   ms, a restore failed on its first chunk ("max_statement_time
///   exceeded"). MySQL limits only `SELECT`s (`max_execution_time`).
///
/// pg_dump does the same for its own sessions on PostgreSQL
/// ([`PG_LIMITS_OFF`]).
pub(crate) fn mysql_session_baseline(mariadb: bool) -> &'static str {
    if mariadb {
        "SET SESSION sql_select_limit = 18446744073709551615, SESSION autocommit = 1, \
         SESSION sql_big_selects = 1 /*M!100100 , SESSION max_statement_time = 0 */ \
         /*M!100302 , SESSION idle_transaction_timeout = 0, \
         SESSION idle_readonly_transaction_timeout = 0, SESSION idle_write_transaction_timeout = 0 */"
    } else {
        "SET SESSION sql_select_limit = 18446744073709551615, SESSION autocommit = 1, \
         SESSION sql_big_selects = 1, SESSION max_execution_time = 0"
    }
}

/// The server's limits on a session's time lifted for shardcut's work, as
/// pg_dump lifts them for its own: a DBA's guard against runaway
/// application sessions (set server-wide, or on a database or role),
/// which a backup's snapshot, a restore's loads and index builds, and the
/// idle control session of a long restore pass. With `statement_timeout`
/// at 50 ms on the target, a restore was refused as if the target lacked
/// the source's locale. Only the settings the server has
/// (`idle_session_timeout` is PostgreSQL 14's, `transaction_timeout`
/// 17's), so that an older server does not refuse the statement.
pub(crate) const PG_LIMITS_OFF: &str =
        "SELECT pg_catalog.set_config(name, '0', false) FROM pg_catalog.pg_settings \
         WHERE name IN ('statement_timeout', 'lock_timeout', 'idle_in_transaction_session_timeout', \
         'idle_session_timeout', 'transaction_timeout')";
