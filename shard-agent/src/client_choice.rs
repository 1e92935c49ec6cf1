//! Which client reads table data: shardcut's own readers (`mysql::wire`,
//! `postgres::wire`) or the libraries.
//!
//! Endpoints where one of shardcut's own readers (`mysql::wire`,
//! `postgres::wire`) was refused, so that later connections to them go
//! straight to the library client: every refused attempt costs a
//! connection (and, on MariaDB, counts against the host's
//! `max_connect_errors` until a connection succeeds).

use std::collections::BTreeSet;
use std::sync::Mutex;

/// Which client a reader may use.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReaderKind {
    /// shardcut's own reader if the server lets it in, else the library.
    Auto,
    /// The library only (for comparing the two).
    Library,
}

static LIBRARY_ONLY: Mutex<BTreeSet<String>> = Mutex::new(BTreeSet::new());

/// Whether `key` (engine, user, host and port) was refused before.
pub(crate) fn library_only(key: &str) -> bool {
    LIBRARY_ONLY
        .lock()
        .map(|set| set.contains(key))
        .unwrap_or(false)
}

pub(crate) fn remember_library_only(key: String) {
    if let Ok(mut set) = LIBRARY_ONLY.lock() {
        set.insert(key);
    }
}
