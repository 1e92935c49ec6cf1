//! The validated topology. Every value here has passed validation; code that
//! holds a [`Topology`] may rely on its invariants without checking again.

use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::secret::Secret;

/// The version of the topology format this build reads.
pub const FORMAT_VERSION: u32 = 1;

#[derive(Debug, Clone)]
pub struct Topology {
    /// The file this topology was read from (for messages).
    pub source: PathBuf,
    /// `[a-z0-9][a-z0-9-]*`.
    pub cluster: String,
    pub repository: RepositoryLocation,
    pub defaults: Defaults,
    /// At least one; names are unique.
    pub shards: Vec<Shard>,
}

impl Topology {
    pub fn shard(&self, name: &str) -> Option<&Shard> {
        self.shards.iter().find(|s| s.name == name)
    }

    /// A stable digest of everything that identifies the cluster's layout,
    /// without secrets (they are not part of the serialized view), so a
    /// manifest can record which topology a backup was taken with.
    pub fn digest(&self) -> String {
        let view = DigestView {
            version: FORMAT_VERSION,
            cluster: &self.cluster,
            shards: self
                .shards
                .iter()
                .map(|s| DigestShard {
                    name: &s.name,
                    engine: s.engine,
                    host: &s.endpoint.host,
                    port: s.endpoint.port,
                    user: &s.endpoint.user,
                    databases: s.databases.as_deref(),
                    exclude_tables: s.exclude_tables.iter().map(|t| t.to_string()).collect(),
                })
                .collect(),
        };
        let bytes = serde_json::to_vec(&view).unwrap_or_default();
        format!("{:016x}", twox_hash::XxHash3_64::oneshot(&bytes))
    }
}

#[derive(Serialize)]
struct DigestView<'a> {
    version: u32,
    cluster: &'a str,
    shards: Vec<DigestShard<'a>>,
}

#[derive(Serialize)]
struct DigestShard<'a> {
    name: &'a str,
    engine: Engine,
    host: &'a str,
    port: u16,
    user: &'a str,
    databases: Option<&'a [String]>,
    exclude_tables: Vec<String>,
}

/// Where backups are kept. Relative paths are resolved against the directory
/// of the topology file, so a topology means the same from any working directory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RepositoryLocation {
    Local(PathBuf),
}

impl std::fmt::Display for RepositoryLocation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            RepositoryLocation::Local(p) => write!(f, "{}", p.display()),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Defaults {
    /// Dump/restore workers per shard, 1..=64.
    pub parallelism: usize,
    /// The default TLS settings of every shard's database connections.
    pub tls: DbTls,
    /// The longest the global cut may block commits on any shard.
    pub write_block_timeout: Duration,
    /// How long an agent keeps a write block without hearing from the
    /// orchestrator before it releases on its own. Always greater than
    /// `write_block_timeout`.
    pub write_block_lease: Duration,
    pub compression: Compression,
}

impl Default for Defaults {
    fn default() -> Self {
        Defaults {
            parallelism: default_parallelism(),
            tls: DbTls::default(),
            write_block_timeout: default_write_block_timeout(),
            write_block_lease: default_write_block_lease(),
            compression: Compression::Zstd(DEFAULT_ZSTD_LEVEL),
        }
    }
}

/// zstd level 1: on sysbench-like data it stores 45% of the raw size
/// where level 3 stores 50%, at half the CPU time (docs/BENCHMARKS.md):
/// compression is the largest cost of a backup on a small machine.
pub const DEFAULT_ZSTD_LEVEL: i32 = 1;

pub(crate) fn default_parallelism() -> usize {
    4
}
pub(crate) fn default_write_block_timeout() -> Duration {
    Duration::from_secs(2)
}
pub(crate) fn default_write_block_lease() -> Duration {
    Duration::from_secs(10)
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Compression {
    None,
    /// zstd at a level in 1..=19.
    Zstd(i32),
}

impl std::fmt::Display for Compression {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Compression::None => f.write_str("none"),
            Compression::Zstd(l) => write!(f, "zstd:{l}"),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Engine {
    /// MySQL or MariaDB.
    Mysql,
    Postgres,
}

impl std::fmt::Display for Engine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Engine::Mysql => "mysql",
            Engine::Postgres => "postgres",
        })
    }
}

/// Host, port, user and (PostgreSQL) the database to connect to first.
/// Never holds a password: a password inside a URL is refused at load time.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Endpoint {
    pub host: String,
    pub port: u16,
    pub user: String,
    /// The maintenance database for PostgreSQL (default `postgres`); for
    /// MySQL an optional default schema.
    pub database: Option<String>,
}

impl std::fmt::Display for Endpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}@{}:{}", self.user, self.host, self.port)
    }
}

#[derive(Debug, Clone)]
pub struct Shard {
    /// `[a-z0-9][a-z0-9-]*`, unique in the topology.
    pub name: String,
    pub engine: Engine,
    pub endpoint: Endpoint,
    pub password: Option<Secret>,
    /// The databases to back up; `None` means every non-system database.
    pub databases: Option<Vec<String>>,
    pub exclude_tables: Vec<TableRef>,
    /// Per-shard override of `defaults.parallelism`.
    pub parallelism: usize,
    /// A remote agent on the database host; `None` means in-process.
    pub agent: Option<AgentSpec>,
    /// How connections to this shard's server are protected.
    pub tls: DbTls,
}

impl Shard {
    /// Whether a table is excluded by `exclude_tables`.
    pub fn excludes(&self, database: &str, schema: Option<&str>, table: &str) -> bool {
        self.exclude_tables.iter().any(|t| {
            t.database == database
                && t.table == table
                && match (&t.schema, schema) {
                    (None, None) => true,
                    (None, Some(s)) => s == "public",
                    (Some(ts), Some(s)) => ts == s,
                    (Some(_), None) => false,
                }
        })
    }
}

/// `db.table`, or for PostgreSQL also `db.schema.table` (`db.table` means
/// schema `public`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TableRef {
    pub database: String,
    pub schema: Option<String>,
    pub table: String,
}

impl std::fmt::Display for TableRef {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.schema {
            Some(s) => write!(f, "{}.{}.{}", self.database, s, self.table),
            None => write!(f, "{}.{}", self.database, self.table),
        }
    }
}

#[derive(Debug, Clone)]
pub struct AgentSpec {
    /// `https://host:port` (or, with `agent_insecure`, `http://`) of
    /// `shard-agent serve`.
    pub url: url::Url,
    pub token: Secret,
    pub tls: AgentTls,
}

/// How the orchestrator talks to a remote agent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AgentTls {
    /// Plain HTTP: only with `agent_insecure: true`; preflight warns.
    Insecure,
    /// HTTPS, the agent's certificate checked against `ca_pem`; with a
    /// client certificate and key (mutual TLS) when the agent asks for one.
    Https {
        ca_pem: String,
        /// PEM of the client certificate chain and of its private key.
        identity: Option<(String, Secret)>,
    },
}

/// TLS modes for database connections, named and meant as libpq's
/// `sslmode`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, Default)]
#[serde(rename_all = "kebab-case")]
pub enum TlsMode {
    /// Never TLS.
    Disable,
    /// TLS when the server offers it, its certificate not checked; plain
    /// otherwise (then no password is sent in clear: see
    /// [`DbTls::allow_cleartext_password`]).
    #[default]
    Prefer,
    /// TLS or nothing; the certificate is not checked.
    Require,
    /// TLS, the certificate chain checked against the CA file.
    VerifyCa,
    /// TLS, the chain checked and the host name (or IP) matched.
    VerifyFull,
}

impl TlsMode {
    pub fn as_str(self) -> &'static str {
        match self {
            TlsMode::Disable => "disable",
            TlsMode::Prefer => "prefer",
            TlsMode::Require => "require",
            TlsMode::VerifyCa => "verify-ca",
            TlsMode::VerifyFull => "verify-full",
        }
    }

    pub fn parse(text: &str) -> Option<TlsMode> {
        [
            TlsMode::Disable,
            TlsMode::Prefer,
            TlsMode::Require,
            TlsMode::VerifyCa,
            TlsMode::VerifyFull,
        ]
        .into_iter()
        .find(|m| m.as_str() == text)
    }

    /// Whether the server's certificate is checked against a CA.
    pub fn verifies(self) -> bool {
        matches!(self, TlsMode::VerifyCa | TlsMode::VerifyFull)
    }
}

impl std::fmt::Display for TlsMode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// TLS settings of one shard's database connections.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct DbTls {
    pub mode: TlsMode,
    /// PEM text of the CA certificates (read from `ca_file` at load time);
    /// present whenever `mode` verifies.
    pub ca_pem: Option<String>,
    /// Whether a password may be sent in clear (PostgreSQL `password`) or
    /// as MD5 over a connection without TLS. Off unless the topology says so.
    pub allow_cleartext_password: bool,
}
