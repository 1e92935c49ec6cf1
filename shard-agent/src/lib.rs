//! The shard agent: everything that happens on one shard.
//!
//! One agent serves one shard. The orchestrator drives agents through the
//! same calls whether they run in-process (the default) or as a
//! `shard-agent serve` daemon on the database host, so the code path that
//! touches a database is the same in both deployments.

pub mod api;
pub mod capture;
pub mod checksum;
pub mod client_choice;
pub mod connect;
pub mod dump;
pub mod error;
pub mod integrity;
pub mod manifest;
pub mod mysql;
pub mod position;
pub mod postgres;
pub mod preflight;
pub mod readback;
mod readbuf;
pub mod replay;
pub mod repo;
pub mod restore;
pub mod serve;
pub mod session;

pub use error::{AgentError, DbError};
