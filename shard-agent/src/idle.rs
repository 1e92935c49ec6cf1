//! Connections kept for reuse by repeated short reads. Verification reads
//! every restored table back; with thousands of small tables, a new
//! connection per table (TCP, TLS, authentication and a server process or
//! thread each time) was most of the read-back's time.
//!
//! A connection is kept only after a read that succeeded, under a key made
//! of everything that chose and authenticated it (shard, endpoint, user,
//! database, client kind, TLS settings and a keyed hash of the password):
//! a read for another spec, or the same spec with another password, never
//! gets it. At most [`PER_KEY`] wait per key, for at most [`MAX_IDLE`].

use std::collections::HashMap;
use std::hash::{BuildHasher, Hasher};
use std::sync::{LazyLock, Mutex};
use std::time::{Duration, Instant};

use topology::Shard;

/// Connections kept per key, at most.
pub const PER_KEY: usize = 8;
/// How long a kept connection may wait for its next use.
pub const MAX_IDLE: Duration = Duration::from_secs(30);

/// Idle connections of one kind.
pub struct Idle<C> {
    kept: Mutex<HashMap<String, Vec<(C, Instant)>>>,
}

impl<C> Default for Idle<C> {
    fn default() -> Self {
        Idle {
            kept: Mutex::new(HashMap::new()),
        }
    }
}

impl<C> Idle<C> {
    /// A kept connection for `key`, if one waited less than [`MAX_IDLE`];
    /// older ones are dropped (closed).
    pub fn take(&self, key: &str) -> Option<C> {
        let mut kept = self.kept.lock().unwrap_or_else(|p| p.into_inner());
        let list = kept.get_mut(key)?;
        while let Some((c, since)) = list.pop() {
            if since.elapsed() < MAX_IDLE {
                return Some(c);
            }
        }
        kept.remove(key);
        None
    }

    /// Keeps `c` for reuse under `key` (dropped when [`PER_KEY`] wait).
    pub fn put(&self, key: String, c: C) {
        let mut kept = self.kept.lock().unwrap_or_else(|p| p.into_inner());
        kept.retain(|_, list| {
            list.retain(|(_, since)| since.elapsed() < MAX_IDLE);
            !list.is_empty()
        });
        let list = kept.entry(key).or_default();
        if list.len() < PER_KEY {
            list.push((c, Instant::now()));
        }
    }
}

/// Hashes passwords with keys drawn at random once per process, so that
/// nobody can make two passwords share a key.
static PASSWORD_HASH: LazyLock<std::collections::hash_map::RandomState> =
    LazyLock::new(std::collections::hash_map::RandomState::new);

/// The key of connections to database `db` of `shard` by a client `kind`.
pub fn key(shard: &Shard, db: &str, kind: &str) -> String {
    let mut h = PASSWORD_HASH.build_hasher();
    if let Some(p) = &shard.password {
        h.write(p.expose().as_bytes());
    }
    let e = &shard.endpoint;
    format!(
        "{}\u{0}{}\u{0}{}\u{0}{}\u{0}{db}\u{0}{kind}\u{0}{:?}\u{0}{:x}",
        shard.name,
        e.host,
        e.port,
        e.user,
        shard.tls,
        h.finish()
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_connection_is_reused_only_under_its_own_key_and_not_when_stale() {
        let idle: Idle<u32> = Idle::default();
        idle.put("a".into(), 1);
        assert_eq!(idle.take("b"), None);
        assert_eq!(idle.take("a"), Some(1));
        assert_eq!(idle.take("a"), None);
        for i in 0..(PER_KEY as u32 + 3) {
            idle.put("a".into(), i);
        }
        let mut n = 0;
        while idle.take("a").is_some() {
            n += 1;
        }
        assert_eq!(n, PER_KEY);
    }

    #[test]
    fn another_password_is_another_key() {
        let mut a = Shard {
            name: "s".into(),
            engine: topology::Engine::Postgres,
            endpoint: topology::Endpoint {
                host: "127.0.0.1".into(),
                port: 5432,
                user: "u".into(),
                database: None,
            },
            password: None,
            databases: None,
            exclude_tables: Vec::new(),
            parallelism: 1,
            agent: None,
            tls: Default::default(),
        };
        let mut b = a.clone();
        a.password = Some(topology::Secret::new("one"));
        b.password = Some(topology::Secret::new("two"));
        assert_ne!(key(&a, "db", "wire"), key(&b, "db", "wire"));
        assert_eq!(key(&a, "db", "wire"), key(&a.clone(), "db", "wire"));
        assert_ne!(key(&a, "db", "wire"), key(&a, "other", "wire"));
    }
}
