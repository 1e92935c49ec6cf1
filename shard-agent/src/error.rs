//! Errors of the shard agent.
//!
//! Policy: every error names the shard and the endpoint (user@host:port,
//! never a password) and keeps the driver's error as its `source`, so the
//! cause chain survives up to the binary, which renders it on one line.

use std::time::Duration;

/// A driver error from either engine.
#[derive(Debug, thiserror::Error)]
pub enum DbError {
    #[error(transparent)]
    Mysql(#[from] mysql_async::Error),
    /// From shardcut's own row reader (`mysql::wire`).
    #[error(transparent)]
    Wire(#[from] crate::engine::mysql::wire::WireError),
    /// From shardcut's own COPY reader (`postgres::wire`).
    #[error(transparent)]
    PgWire(#[from] crate::engine::postgres::wire::PgWireError),
    /// The server's own message (`ERROR: deadlock detected`), not the
    /// driver's bare "db error"; no source, since the message is its text.
    #[error("{}", postgres_text(.0))]
    Postgres(tokio_postgres::Error),
    #[error("unexpected value in column {column}: {detail}")]
    Decode { column: String, detail: String },
    /// The TLS settings could not be built (a bad CA or key).
    #[error("TLS: {0}")]
    Tls(Box<crate::tls::TlsError>),
    /// The server asked for the password in clear or as MD5 over a
    /// connection without TLS, and the topology does not allow it.
    #[error("the server asks for the password {method} over a connection without TLS; nothing was sent. Set `tls: require` (or verify-ca/verify-full) for this shard, or `allow_cleartext_password: true` on a network you trust")]
    CleartextPassword { method: &'static str },
}

impl DbError {
    /// Whether the server itself answered with an error (as opposed to a
    /// refused or broken connection, or a value shardcut could not read).
    pub fn is_server_error(&self) -> bool {
        match self {
            DbError::Mysql(e) => matches!(e, mysql_async::Error::Server(_)),
            DbError::Wire(e) => matches!(e, crate::engine::mysql::wire::WireError::Server { .. }),
            DbError::Postgres(p) => p.as_db_error().is_some(),
            DbError::PgWire(e) => {
                matches!(e, crate::engine::postgres::wire::PgWireError::Server(_))
            }
            DbError::Decode { .. } | DbError::Tls(_) | DbError::CleartextPassword { .. } => false,
        }
    }
}

impl From<crate::tls::TlsError> for DbError {
    fn from(e: crate::tls::TlsError) -> Self {
        DbError::Tls(Box::new(e))
    }
}

impl From<tokio_postgres::Error> for DbError {
    fn from(e: tokio_postgres::Error) -> Self {
        DbError::Postgres(e)
    }
}

fn postgres_text(e: &tokio_postgres::Error) -> String {
    match e.as_db_error() {
        Some(d) => {
            let mut text = format!("{}: {}", d.severity(), d.message());
            if let Some(detail) = d.detail() {
                text.push_str(&format!(" ({detail})"));
            }
            // The server's own advice ("You might need to increase
            // max_locks_per_transaction.") says what to change.
            if let Some(hint) = d.hint() {
                text.push_str(&format!(" hint: {hint}"));
            }
            text
        }
        None => {
            let mut text = e.to_string();
            if let Some(src) = std::error::Error::source(e) {
                text.push_str(&format!(": {src}"));
            }
            text
        }
    }
}

impl DbError {
    /// Whether the server refused the credentials (as opposed to being
    /// unreachable), so the message can say which to fix.
    pub fn is_auth_failure(&self) -> bool {
        match self {
            DbError::Mysql(mysql_async::Error::Server(e)) => e.code == 1045 || e.code == 1698,
            DbError::Wire(crate::engine::mysql::wire::WireError::Server { code, .. }) => {
                *code == 1045 || *code == 1698
            }
            DbError::Postgres(e) => e.code().is_some_and(|c| {
                *c == tokio_postgres::error::SqlState::INVALID_PASSWORD
                    || *c == tokio_postgres::error::SqlState::INVALID_AUTHORIZATION_SPECIFICATION
            }),
            DbError::PgWire(crate::engine::postgres::wire::PgWireError::Server(e)) => {
                // invalid_password, invalid_authorization_specification
                e.code == "28P01" || e.code == "28000"
            }
            _ => false,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    #[error("shard {shard} ({endpoint}): {}: {source}", if source.is_auth_failure() { "login refused (check the user and password)" } else { "cannot connect" })]
    Connect {
        shard: String,
        endpoint: String,
        #[source]
        source: DbError,
    },
    #[error("shard {shard} ({endpoint}): no connection within {} ms", timeout.as_millis())]
    ConnectTimeout {
        shard: String,
        endpoint: String,
        timeout: Duration,
    },
    #[error("shard {shard} is not ready for backup: {problems}; run `shardcut check` for details")]
    NotReady { shard: String, problems: String },
    #[error("shard {shard}: {what}: {source}")]
    Storage {
        shard: String,
        what: String,
        #[source]
        source: crate::dump::chunk::ChunkError,
    },
    /// Something else went wrong on the shard; `what` says what.
    #[error("shard {shard}: {what}")]
    Tool { shard: String, what: String },
    /// A restore target already holds a database the backup would create,
    /// with something in it (tables, views, routines, events, large objects).
    #[error("shard {shard}: target database {database} exists and holds {objects} object(s) (tables, views, routines, events or large objects); nothing was changed. Use --overwrite to replace it")]
    TargetNotEmpty {
        shard: String,
        database: String,
        objects: u64,
    },
    /// A backup names one of the server's own databases; a restore never
    /// replaces those.
    #[error("shard {shard}: the backup names the system database `{database}`, which a restore never replaces; nothing was changed (the manifest was damaged or tampered with, or the database was selected explicitly: restore it by other means)")]
    SystemDatabase { shard: String, database: String },
    /// A task of the shard's work panicked: a bug, and the work is not done.
    #[error("shard {shard}: {task} panicked: {source}")]
    Panicked {
        shard: String,
        task: &'static str,
        #[source]
        source: tokio::task::JoinError,
    },
    /// The backup's contents are not what its manifest promises (damaged,
    /// tampered with, or written by an incompatible version).
    #[error("shard {shard}: {what}")]
    Damaged { shard: String, what: String },
    /// A schema document could not be written or read.
    #[error("shard {shard}: {what}: {source}")]
    Schema {
        shard: String,
        what: String,
        #[source]
        source: serde_json::Error,
    },
    /// DDL changed the selected tables (or databases) between the catalog
    /// read before the cut and the cut: a backup planned from that catalog
    /// would not hold what the cut holds.
    #[error("shard {shard}: {change} between the catalog read before the cut and the cut (DDL ran meanwhile); a backup planned before would miss it, so none is kept: run the backup again")]
    ChangedBeforeCut { shard: String, change: String },
    /// A `SHOW CREATE …` that gave no definition: a backup without it would
    /// restore without that object.
    #[error("shard {shard}: {statement} returned no definition; the backup user may not be allowed to see it (GRANT SELECT ON *.* lets it read every definition)")]
    NoDefinition { shard: String, statement: String },
    /// A client program (pg_dump, psql) could not be started or waited for.
    #[error("shard {shard}: cannot run {program}: {source}")]
    Program {
        shard: String,
        program: String,
        #[source]
        source: std::io::Error,
    },
    #[error("shard {shard}: agent {agent}: {what}")]
    Remote {
        shard: String,
        agent: String,
        what: String,
    },
    /// A remote agent's refusal of what it was given
    /// ([`AgentError::is_refusal`] there).
    #[error("shard {shard}: agent {agent}: {what}")]
    RemoteRefusal {
        shard: String,
        agent: String,
        what: String,
    },
    #[error("shard {shard}: cancelled because another shard failed")]
    Cancelled { shard: String },
    #[error("shard {shard}: {what} failed: {source}")]
    Query {
        shard: String,
        what: String,
        #[source]
        source: DbError,
    },
}

impl AgentError {
    /// Whether this refuses what the command was given (a backup that is
    /// damaged or names a system database, a target that is not empty),
    /// the user's to change, rather than something that failed (a server
    /// or agent out of reach, a query, storage): exit 2 against 1.
    pub fn is_refusal(&self) -> bool {
        matches!(
            self,
            AgentError::TargetNotEmpty { .. }
                | AgentError::SystemDatabase { .. }
                | AgentError::Damaged { .. }
                | AgentError::Schema { .. }
                | AgentError::RemoteRefusal { .. }
        )
    }
}

/// Maps a driver error of `what` on `shard` to [`AgentError::Query`]; built
/// once per statement, not per row (the two names are cloned per error).
pub(crate) fn db_err(shard: &topology::Shard, what: &str) -> impl Fn(DbError) -> AgentError {
    let shard = shard.name.clone();
    let what = what.to_string();
    move |source| AgentError::Query {
        shard: shard.clone(),
        what: what.clone(),
        source,
    }
}

/// `text` (a name read from a backup or a server) for a message: its
/// control characters written as escapes (`\n`, `\u{1b}`), never sent to
/// a terminal, and everything else as it is.
pub fn printable(text: &str) -> String {
    text.chars()
        .map(|c| match c.is_control() {
            true => c.escape_debug().to_string(),
            false => c.to_string(),
        })
        .collect()
}

/// An error and its sources on one line, each source once (libraries wrap
/// a cause and repeat its text).
pub fn one_line(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut cur = e.source();
    while let Some(s) = cur {
        let t = s.to_string();
        if !out.contains(&t) {
            out.push_str(": ");
            out.push_str(&t);
        }
        cur = s.source();
    }
    out
}

#[cfg(test)]
mod tests {
    #[test]
    fn printable_escapes_control_characters_only() {
        assert_eq!(
            super::printable("'app'@'%' \u{1b}[2J\nnext"),
            "'app'@'%' \\u{1b}[2J\\nnext"
        );
    }
}
