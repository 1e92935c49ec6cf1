//! The shard agent: everything that happens on one shard.
//!
//! One agent serves one shard. The orchestrator drives agents through the
//! same calls whether they run in-process (the default) or as a
//! `shard-agent serve` daemon on the database host, so the code path that
//! touches a database is the same in both deployments.
//!
//! Engine-specific code lives in `engine/<name>/`, one folder per engine
//! behind the [`engine::Driver`] interface; the other modules are
//! engine-neutral phases (cut, dump, capture, restore, replay, verify) and
//! the storage they write (manifest, repository).

pub mod api;
pub mod bundle;
pub mod capture;
pub mod checksum;
pub mod client_choice;
pub mod connect;
pub mod cut;
pub mod dump;
pub mod engine;
pub mod error;
pub mod idle;
mod knobs;
pub mod manifest;
pub mod position;
pub mod preflight;
mod readbuf;
pub mod replay;
pub mod repo;
pub mod restore;
pub mod serve;
pub mod session;
pub mod tls;
pub mod verify;

pub use error::{AgentError, DbError};
#[cfg(test)]
mod untrusted_input_tests;
