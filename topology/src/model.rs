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
    pub repository: RepositoryConfig,
    /// Further repositories (other regions) that `copy` keeps up to date
    /// and reading commands may use instead (`--repository NAME`).
    pub replicas: Vec<Replica>,
    pub defaults: Defaults,
    /// At least one; names are unique.
    pub shards: Vec<Shard>,
    /// The timezone `schedule:` is read in (IANA name; default UTC).
    pub timezone: chrono_tz::Tz,
    /// When `shardcut serve` runs this cluster's jobs; `None`: only on
    /// request.
    pub schedule: Option<Schedule>,
    /// The topology of the scratch servers that scheduled drills restore
    /// into (a path relative to this file's directory).
    pub drill_target: Option<PathBuf>,
}

impl Topology {
    pub fn shard(&self, name: &str) -> Option<&Shard> {
        self.shards.iter().find(|s| s.name == name)
    }

    pub fn replica(&self, name: &str) -> Option<&Replica> {
        self.replicas.iter().find(|r| r.name == name)
    }

    /// The same cluster read from the replica `name` instead of the main
    /// repository (a failover, or a drill of the second region).
    pub fn using_replica(&self, name: &str) -> Option<Topology> {
        let replica = self.replica(name)?;
        // Read from a replica, the cluster has no further copies to show.
        Some(Topology {
            repository: replica.repository.clone(),
            replicas: Vec::new(),
            ..self.clone()
        })
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

/// Where backups are kept, and the key that seals them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RepositoryConfig {
    pub location: RepositoryLocation,
    /// Set: every object is encrypted and authenticated with this key.
    pub encryption: Option<Encryption>,
}

impl std::fmt::Display for RepositoryConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.location.fmt(f)
    }
}

/// Where backups are kept. Relative paths are resolved against the directory
/// of the topology file, so a topology means the same from any working directory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RepositoryLocation {
    Local(PathBuf),
    S3(S3Location),
}

impl std::fmt::Display for RepositoryLocation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            RepositoryLocation::Local(p) => write!(f, "{}", p.display()),
            RepositoryLocation::S3(s) => s.fmt(f),
        }
    }
}

/// A further repository that `copy` keeps up to date.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Replica {
    /// `[a-z0-9][a-z0-9-]*`, unique among the replicas.
    pub name: String,
    pub repository: RepositoryConfig,
}

/// A bucket (and a prefix in it) of an S3-compatible object store.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct S3Location {
    pub bucket: String,
    /// Without leading or trailing `/`; empty for the whole bucket.
    pub prefix: String,
    /// `http(s)://host[:port]` of an S3-compatible store; `None` for AWS.
    pub endpoint: Option<String>,
    pub region: String,
    pub access_key: Secret,
    pub secret_key: Secret,
    pub session_token: Option<Secret>,
    /// PEM text of the CA certificates an `https` endpoint's certificate
    /// must chain to (read from `ca_file` at load time); `None`: the
    /// system's roots.
    pub ca_pem: Option<String>,
}

impl std::fmt::Display for S3Location {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "s3://{}", self.bucket)?;
        if !self.prefix.is_empty() {
            write!(f, "/{}", self.prefix)?;
        }
        if let Some(endpoint) = &self.endpoint {
            write!(f, " at {endpoint}")?;
        }
        Ok(())
    }
}

/// The keys of an encrypted repository: new objects are sealed with `key`;
/// objects sealed with any of `old_keys` stay readable (key rotation).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Encryption {
    pub key: RepositoryKey,
    pub old_keys: Vec<RepositoryKey>,
}

/// A 256-bit repository key. `Debug` never shows it.
#[derive(Clone, PartialEq, Eq)]
pub struct RepositoryKey([u8; 32]);

impl RepositoryKey {
    /// The length of a key's text form: 64 hexadecimal digits.
    pub const TEXT_LEN: usize = 64;

    pub fn from_bytes(bytes: [u8; 32]) -> Self {
        RepositoryKey(bytes)
    }

    /// Reads the text form (64 hexadecimal digits, surrounding white space
    /// ignored), as `shardcut keygen` writes it.
    pub fn parse(text: &str) -> Option<Self> {
        let text = text.trim();
        if text.len() != Self::TEXT_LEN {
            return None;
        }
        let mut out = [0u8; 32];
        for (i, pair) in text.as_bytes().chunks(2).enumerate() {
            let digit = |c: u8| char::from(c).to_digit(16);
            let (hi, lo) = (digit(pair[0])?, digit(pair[1])?);
            out[i] = u8::try_from(hi * 16 + lo).ok()?;
        }
        Some(RepositoryKey(out))
    }

    /// The text form [`RepositoryKey::parse`] reads.
    pub fn to_text(&self) -> String {
        self.0.iter().map(|b| format!("{b:02x}")).collect()
    }

    /// The key itself, for the cipher.
    pub fn expose(&self) -> &[u8; 32] {
        &self.0
    }
}

impl std::fmt::Debug for RepositoryKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("RepositoryKey(****)")
    }
}

/// A cron expression (five fields, or six with seconds first), checked
/// when the topology is loaded.
#[derive(Debug, Clone)]
pub struct CronSpec {
    text: String,
    cron: croner::Cron,
}

impl CronSpec {
    pub fn parse(text: &str) -> Result<CronSpec, String> {
        let cron = text
            .parse::<croner::Cron>()
            .map_err(|e| format!("`{text}` is not a cron expression: {e}"))?;
        Ok(CronSpec {
            text: text.to_string(),
            cron,
        })
    }

    pub fn as_str(&self) -> &str {
        &self.text
    }

    /// The first time the expression fires strictly after `after`, read in
    /// `tz` (so `0 2 * * *` is 02:00 local time, across DST changes).
    pub fn next_after(
        &self,
        after: chrono::DateTime<chrono::Utc>,
        tz: chrono_tz::Tz,
    ) -> Option<chrono::DateTime<chrono::Utc>> {
        // Whole seconds: the expression's times are, and a start a few
        // milliseconds after one must not count it again.
        let after = chrono::SubsecRound::trunc_subsecs(after, 0);
        self.cron
            .find_next_occurrence(&after.with_timezone(&tz), false)
            .ok()
            .map(|t| t.with_timezone(&chrono::Utc))
    }
}

/// Whether `serve` keeps capture running for the cluster.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum CaptureSchedule {
    #[default]
    Off,
    /// Capture follows the servers and is restarted when it dies.
    Follow,
}

/// The cluster's jobs under `shardcut serve` (`schedule:`).
#[derive(Debug, Clone, Default)]
pub struct Schedule {
    pub backup: Option<CronSpec>,
    pub incremental: Option<CronSpec>,
    /// A drill of the next shard in rotation into `drill_target`.
    pub drill: Option<CronSpec>,
    pub expire: Option<CronSpec>,
    pub capture: CaptureSchedule,
    /// What a scheduled expiry keeps: this many newest backups (≥ 1)…
    pub keep_last: usize,
    /// …and every backup started within this long.
    pub keep_within: Option<Duration>,
}

/// Backups a scheduled expiry keeps when `keep_last` is not given.
pub const DEFAULT_KEEP_LAST: usize = 7;

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
