//! End-to-end tests against real MariaDB and PostgreSQL servers.
//!
//! Run through `scripts/test`, which starts and seeds the shared sandbox and
//! passes its directory in `SHARDCUT_SANDBOX`. Tests that stop or misconfigure
//! servers start private sandboxes on their own ports, so the shared one is
//! never disturbed.

// Test code: a panic with the failing value is the desired outcome.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

mod backup;
mod check;
mod consistency;
mod contracts;
mod drill;
mod faults;
mod objects;
mod pitr;
mod remote;
mod restore;
mod service;
mod tls;
mod untrusted;
mod verify;
