//! Opening connections to a shard with the session settings shardcut relies on.

use std::time::Duration;

use topology::{Endpoint, Shard};

use crate::error::{AgentError, DbError};

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

/// Connection options for a MySQL/MariaDB shard. TCP only: a socket path
/// would silently point at whatever server owns it on this host.
pub fn mysql_opts(shard: &Shard, database: Option<&str>) -> mysql_async::Opts {
    let Endpoint {
        host, port, user, ..
    } = &shard.endpoint;
    mysql_async::OptsBuilder::default()
        .ip_or_hostname(host.clone())
        .tcp_port(*port)
        .user(Some(user.clone()))
        .pass(shard.password.as_ref().map(|p| p.expose().to_string()))
        .db_name(database.map(str::to_string))
        .prefer_socket(false)
        .into()
}

pub async fn mysql(
    shard: &Shard,
    database: Option<&str>,
    timeout: Duration,
) -> Result<mysql_async::Conn, AgentError> {
    let fut = mysql_async::Conn::new(mysql_opts(shard, database));
    match tokio::time::timeout(timeout, fut).await {
        Ok(Ok(conn)) => Ok(conn),
        Ok(Err(e)) => Err(connect_error(shard, e.into())),
        Err(_) => Err(timeout_error(shard, timeout)),
    }
}

/// Connects to `database` (default: the URL's database, else `postgres`).
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
    let fut = cfg.connect(tokio_postgres::NoTls);
    match tokio::time::timeout(timeout, fut).await {
        Ok(Ok((client, connection))) => {
            tokio::spawn(async move {
                if let Err(e) = connection.await {
                    tracing::debug!("postgres connection closed: {e}");
                }
            });
            Ok(client)
        }
        Ok(Err(e)) => Err(connect_error(shard, e.into())),
        Err(_) => Err(timeout_error(shard, timeout)),
    }
}
