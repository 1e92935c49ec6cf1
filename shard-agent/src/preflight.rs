//! Preflight: is this shard reachable and ready to be backed up?
//!
//! A report lists every check with its observed value and, when it fails,
//! the exact change that fixes it. `Fail` findings make the shard not
//! ready; `Warn` findings are shown but do not block a backup. Each engine
//! runs its own checks (`engine/<name>/preflight.rs`) and reports in these
//! engine-neutral types.

use serde::{Deserialize, Serialize};
use topology::{AgentTls, Engine, Shard, TlsMode};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Level {
    Ok,
    Warn,
    Fail,
}

/// One check and what it found.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Finding {
    pub level: Level,
    /// What was checked, e.g. `binlog_format`.
    pub item: String,
    /// What the server reported.
    pub value: String,
    /// What to change, for a failed or warned check.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fix: Option<String>,
}

impl Finding {
    pub fn ok(item: &str, value: impl Into<String>) -> Self {
        Finding {
            level: Level::Ok,
            item: item.to_string(),
            value: value.into(),
            fix: None,
        }
    }
    pub fn fail(item: &str, value: impl Into<String>, fix: impl Into<String>) -> Self {
        Finding {
            level: Level::Fail,
            item: item.to_string(),
            value: value.into(),
            fix: Some(fix.into()),
        }
    }
    pub fn warn(item: &str, value: impl Into<String>, fix: impl Into<String>) -> Self {
        Finding {
            level: Level::Warn,
            item: item.to_string(),
            value: value.into(),
            fix: Some(fix.into()),
        }
    }
    /// `ok` when `good`, else `fail` with `fix`.
    pub fn require(
        item: &str,
        value: impl Into<String>,
        good: bool,
        fix: impl Into<String>,
    ) -> Self {
        if good {
            Self::ok(item, value)
        } else {
            Self::fail(item, value, fix)
        }
    }
}

/// How the database connection is protected. Engine-neutral; a warning
/// at worst.
pub fn tls_finding(shard: &Shard) -> Finding {
    let mode = shard.tls.mode;
    match mode {
        TlsMode::VerifyFull | TlsMode::VerifyCa => Finding::ok("tls", mode.as_str()),
        TlsMode::Require => Finding::warn(
            "tls",
            mode.as_str(),
            "encrypted, but the server is not authenticated: set tls: verify-full and ca_file",
        ),
        TlsMode::Disable | TlsMode::Prefer => Finding::warn(
            "tls",
            mode.as_str(),
            "connections may be in clear: set tls: verify-full and ca_file (a password is never sent in clear or as MD5 unless allow_cleartext_password)",
        ),
    }
}

/// How the orchestrator reaches the shard's agent, if it has one (added
/// by the orchestrator: the agent itself does not know how it is reached).
pub fn agent_finding(shard: &Shard) -> Option<Finding> {
    let agent = shard.agent.as_ref()?;
    Some(match agent.tls {
            AgentTls::Insecure => Finding::warn(
                "agent_transport",
                format!("plain HTTP to {}", agent.url),
                "the shard password crosses the network in clear: run `shard-agent serve --tls-cert --tls-key [--client-ca]` and use an https:// agent URL with agent_ca_file",
            ),
            AgentTls::Https { ref identity, .. } => Finding::ok(
                "agent_transport",
                if identity.is_some() {
                    "HTTPS, mutual TLS"
                } else {
                    "HTTPS"
                },
            ),
    })
}

/// A table the topology selects, with the server's own estimates.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TableInfo {
    pub database: String,
    /// PostgreSQL schema; `None` for MySQL.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub schema: Option<String>,
    pub table: String,
    /// The server's estimate; `None` when it has none (never analyzed) or
    /// when the preflight did not ask ([`Depth::Gate`]).
    pub rows_estimate: Option<u64>,
    /// Data and index bytes; `None` when the preflight did not ask.
    #[serde(default)]
    pub bytes: Option<u64>,
}

/// How much of each table a preflight reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Depth {
    /// All that `shardcut check` shows, each table's size and row estimate
    /// included.
    #[default]
    Report,
    /// Only whether the shard is ready, as a backup asks before its cut:
    /// no table sizes, no MariaDB row estimates (each makes the server
    /// open or look at every table), and no query that only feeds a
    /// warning (PostgreSQL's replica identities). Sizes cost PostgreSQL a
    /// look at every table's files (`pg_total_relation_size`: listing
    /// 10,000 tables took 0.45 s with them, 0.09 s without), and a backup
    /// uses neither.
    Gate,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ShardReport {
    pub shard: String,
    pub engine: Engine,
    pub endpoint: String,
    /// e.g. `MariaDB 10.11.19`, `PostgreSQL 15.19`.
    pub server: String,
    pub ready: bool,
    pub findings: Vec<Finding>,
    pub tables: Vec<TableInfo>,
}

impl ShardReport {
    pub(crate) fn new(
        shard: &Shard,
        server: String,
        mut findings: Vec<Finding>,
        tables: Vec<TableInfo>,
    ) -> Self {
        findings.push(tls_finding(shard));
        ShardReport {
            shard: shard.name.clone(),
            engine: shard.engine,
            endpoint: shard.endpoint.to_string(),
            server,
            ready: findings.iter().all(|f| f.level != Level::Fail),
            findings,
            tables,
        }
    }
}

/// Findings for databases the topology names that the server lacks.
pub(crate) fn missing_databases(shard: &Shard, present: &[String]) -> Vec<Finding> {
    let Some(wanted) = &shard.databases else {
        return Vec::new();
    };
    wanted
        .iter()
        .filter(|d| !present.contains(d))
        .map(|d| {
            Finding::fail(
                "databases",
                format!("`{d}` does not exist"),
                format!(
                    "create database `{d}` or remove it from shards.{}.databases",
                    shard.name
                ),
            )
        })
        .collect()
}
