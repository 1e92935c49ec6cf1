//! The shard topology: what a cluster is made of and how to reach each shard.
//!
//! A topology is loaded from YAML ([`Topology::load`]) and is fully validated
//! before anything connects anywhere: every violation in the file is reported
//! at once, each on its own line naming the file, the line and column, and the
//! field path (`shards[2].url: ...`). Secrets are resolved at load time into
//! [`Secret`] values that never print.

mod duration;
mod error;
mod load;
mod locate;
mod model;
mod secret;
mod url;

pub use chrono_tz::Tz;
pub use duration::parse_duration;
pub use error::{TopologyError, Violation};
pub use model::{
    AgentSpec, AgentTls, CaptureSchedule, Compression, CronSpec, DbTls, Defaults, Encryption,
    Endpoint, Engine, Replica, RepositoryConfig, RepositoryKey, RepositoryLocation, S3Location,
    Schedule, Shard, TableRef, TlsMode, Topology, DEFAULT_KEEP_LAST, FORMAT_VERSION,
};
pub use secret::Secret;
