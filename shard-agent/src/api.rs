//! The remote agent's HTTP API: request and response bodies shared by
//! `shard-agent serve` and the orchestrator's client.
//!
//! Every request carries `Authorization: Bearer <token>`; without the right
//! token the agent answers 401 and does nothing. The orchestrator sends the
//! shard's connection details (including its password) when it opens a
//! session, so an agent needs no configuration beyond its token; the agent
//! should therefore listen on a private interface (TLS is not built in yet).

use serde::{Deserialize, Serialize};
use topology::{Compression, DbTls, Endpoint, Engine, Secret, Shard, TableRef, TlsMode};

use crate::capture::{RoundReport, StreamState};
use crate::manifest::{ShardManifest, TableManifest};
use crate::position::Position;
use crate::preflight::Depth;
use crate::replay::ReplayOptions;

/// Bumped on any incompatible change; the orchestrator refuses a mismatch.
/// 4: a dump's shard manifest may place chunks in bundles, which an
/// orchestrator that does not know them would drop from the backup's
/// manifest.
/// 5: MariaDB sequences and system-versioned tables, which an agent
/// before them would restore without the sequences and read back without
/// the history.
pub const API_VERSION: u32 = 5;

#[derive(Debug, Serialize, Deserialize)]
pub struct VersionInfo {
    pub api: u32,
    pub version: String,
}

/// A shard as sent over the wire. The password travels only here.
#[derive(Serialize, Deserialize)]
pub struct ShardSpec {
    pub name: String,
    pub engine: Engine,
    pub host: String,
    pub port: u16,
    pub user: String,
    pub database: Option<String>,
    pub password: Option<String>,
    pub databases: Option<Vec<String>>,
    pub exclude_tables: Vec<(String, Option<String>, String)>,
    pub parallelism: usize,
    pub tls: TlsMode,
    /// PEM text of the CA the database server's certificate is checked against.
    pub ca_pem: Option<String>,
    pub allow_cleartext_password: bool,
}

impl std::fmt::Debug for ShardSpec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "ShardSpec({} {}@{}:{})",
            self.name, self.user, self.host, self.port
        )
    }
}

impl ShardSpec {
    pub fn from_shard(s: &Shard) -> Self {
        ShardSpec {
            name: s.name.clone(),
            engine: s.engine,
            host: s.endpoint.host.clone(),
            port: s.endpoint.port,
            user: s.endpoint.user.clone(),
            database: s.endpoint.database.clone(),
            password: s.password.as_ref().map(|p| p.expose().to_string()),
            databases: s.databases.clone(),
            exclude_tables: s
                .exclude_tables
                .iter()
                .map(|t| (t.database.clone(), t.schema.clone(), t.table.clone()))
                .collect(),
            parallelism: s.parallelism,
            tls: s.tls.mode,
            ca_pem: s.tls.ca_pem.clone(),
            allow_cleartext_password: s.tls.allow_cleartext_password,
        }
    }

    pub fn into_shard(self) -> Shard {
        Shard {
            name: self.name,
            engine: self.engine,
            endpoint: Endpoint {
                host: self.host,
                port: self.port,
                user: self.user,
                database: self.database,
            },
            password: self.password.map(Secret::new),
            databases: self.databases,
            exclude_tables: self
                .exclude_tables
                .into_iter()
                .map(|(database, schema, table)| TableRef {
                    database,
                    schema,
                    table,
                })
                .collect(),
            parallelism: self.parallelism,
            agent: None,
            tls: DbTls {
                mode: self.tls,
                ca_pem: self.ca_pem,
                allow_cleartext_password: self.allow_cleartext_password,
            },
        }
    }
}

#[derive(Debug, Serialize, Deserialize)]
pub struct PrepareRequest {
    pub shard: ShardSpec,
    pub write_block_timeout_ms: u64,
    pub write_block_lease_ms: u64,
    pub connect_timeout_ms: u64,
}

#[derive(Debug, Serialize, Deserialize)]
pub struct PrepareResponse {
    pub session: String,
}

/// Any failed call: what went wrong, and for a block timeout what held it.
#[derive(Debug, Serialize, Deserialize)]
pub struct ErrorBody {
    pub error: String,
    /// `block_timeout`, `not_ready`, `unauthorized`, `not_found` or `failed`.
    pub kind: String,
    #[serde(default)]
    pub timeout_ms: u64,
    #[serde(default)]
    pub holder: Option<String>,
}

#[derive(Debug, Serialize, Deserialize)]
pub struct MarkResponse {
    pub position: Position,
}

#[derive(Debug, Serialize, Deserialize)]
pub struct ReleaseResponse {
    pub held_ms: u64,
}

#[derive(Debug, Serialize, Deserialize)]
pub struct SettleResponse {
    pub waited_ms: u64,
}

#[derive(Debug, Serialize, Deserialize)]
pub struct DumpRequest {
    pub backup_id: String,
    /// The repository directory as the agent's host sees it.
    pub repository: String,
    pub compression: Compression,
    pub chunk_rows: u64,
    /// Only count and hash rows (a mark); store nothing.
    #[serde(default)]
    pub digest_only: bool,
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(tag = "state", rename_all = "lowercase")]
pub enum DumpStatus {
    Running {
        rows: u64,
        bytes: u64,
        rows_estimate: u64,
    },
    Done {
        manifest: Box<ShardManifest>,
    },
    Failed {
        error: String,
    },
}

/// Restore options as sent to an agent: the repository by its path on the
/// agent's host (a shared mount, as for dumps).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RestoreSpec {
    pub repository: String,
    pub overwrite: bool,
    pub binlog: bool,
    pub parallelism: usize,
    pub tables: Option<Vec<String>>,
}

/// One call of the engine interface ([`crate::engine::Driver`]) run by an
/// agent on its database host: restore, read-back, capture, replay and
/// preflight go through the agent as the dump does.
#[derive(Debug, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum DriverCall {
    Preflight {
        shard: ShardSpec,
        timeout_ms: u64,
        #[serde(default)]
        depth: Depth,
    },
    CheckTarget {
        source: Box<ShardManifest>,
        target: ShardSpec,
        options: RestoreSpec,
    },
    Restore {
        source: Box<ShardManifest>,
        target: ShardSpec,
        options: RestoreSpec,
    },
    TableDigest {
        shard: ShardSpec,
        table: Box<TableManifest>,
        library_only: bool,
    },
    LiveStreams {
        shard: ShardSpec,
    },
    StartStream {
        shard: ShardSpec,
        cluster: String,
        stream: String,
        from: Option<Position>,
    },
    CatchUp {
        shard: ShardSpec,
        cluster: String,
        repository: String,
        compression: Compression,
        state: Box<StreamState>,
    },
    RemoveStream {
        shard: ShardSpec,
        state: Box<StreamState>,
    },
    StreamServer {
        shard: ShardSpec,
        state: Box<StreamState>,
    },
    Replay {
        repository: String,
        source: String,
        stream: String,
        target: ShardSpec,
        from: Position,
        to: Position,
        #[serde(default)]
        options: ReplayOptions,
    },
    FinishReplay {
        target: ShardSpec,
        at: Box<ShardManifest>,
    },
}

impl DriverCall {
    /// The database shard the call connects to.
    pub fn shard(&self) -> &ShardSpec {
        match self {
            DriverCall::Preflight { shard, .. }
            | DriverCall::TableDigest { shard, .. }
            | DriverCall::LiveStreams { shard }
            | DriverCall::StartStream { shard, .. }
            | DriverCall::CatchUp { shard, .. }
            | DriverCall::RemoveStream { shard, .. }
            | DriverCall::StreamServer { shard, .. } => shard,
            DriverCall::CheckTarget { target, .. }
            | DriverCall::Restore { target, .. }
            | DriverCall::Replay { target, .. }
            | DriverCall::FinishReplay { target, .. } => target,
        }
    }

    /// The repository the call reads or writes, if any.
    pub fn repository(&self) -> Option<&str> {
        match self {
            DriverCall::CheckTarget { options, .. } | DriverCall::Restore { options, .. } => {
                Some(&options.repository)
            }
            DriverCall::CatchUp { repository, .. } | DriverCall::Replay { repository, .. } => {
                Some(repository)
            }
            _ => None,
        }
    }
}

/// A catch-up round's outcome: the stream's new state and the round.
#[derive(Debug, Serialize, Deserialize)]
pub struct CaughtUp {
    pub state: StreamState,
    pub report: RoundReport,
}

#[derive(Debug, Serialize, Deserialize)]
pub struct JobStarted {
    pub job: String,
}

/// A job's state; a finished job is answered once and then forgotten.
#[derive(Debug, Serialize, Deserialize)]
#[serde(tag = "state", rename_all = "lowercase")]
pub enum JobStatus {
    Running,
    /// `result` is the call's own answer, as JSON.
    Done {
        result: serde_json::Value,
    },
    Failed {
        error: String,
        /// The job refused what it was given rather than failing
        /// ([`crate::AgentError::is_refusal`]).
        #[serde(default)]
        refusal: bool,
    },
}
