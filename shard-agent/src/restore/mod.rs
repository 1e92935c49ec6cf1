//! Restoring one shard of a backup into a target server.
//!
//! Order, as the native tools do it: what must exist before data (database,
//! tables, types), then the data in parallel (MySQL `LOAD DATA LOCAL
//! INFILE`, PostgreSQL `COPY FROM STDIN`, each streamed from one chunk at a
//! time), then what is built after it (indexes, constraints, foreign keys,
//! triggers, views, routines, sequence values). Restoring never reports
//! success by itself: the orchestrator verifies by reading the target back.
//! This module holds what every engine's restore shares (options, the
//! chunk queue, checked loading); each engine restores in
//! `engine/<name>/restore.rs`.

pub(crate) mod queue;

use std::sync::Arc;

use topology::Shard;

use crate::bundle::{bundle_of, BundleCache, BundleError};
use crate::dump::chunk::decompress_bounded;
use crate::error::AgentError;
use crate::manifest::{ChunkRef, ShardManifest, StoredBundle, StoredFile, TableManifest};
use crate::repo::Repository;

#[derive(Clone)]
pub struct RestoreOptions {
    pub repo: Arc<dyn Repository>,
    /// Replace target databases that exist and are not empty.
    pub overwrite: bool,
    /// MySQL/MariaDB: keep the load in the target's binary log. Off by
    /// default (as myloader): logging every restored row in ROW format
    /// writes the data twice, and a restore target rarely has replicas
    /// that need it.
    pub binlog: bool,
    /// Data-load workers (from the target shard's `parallelism`).
    pub parallelism: usize,
    /// Restore only these tables (qualified names); `None`: all of them.
    /// The caller has already added foreign-key parents or refused.
    pub tables: Option<Vec<String>>,
    /// Told the qualified name ([`TableManifest::qualified`]) of each table
    /// as soon as the restore will not change its rows again (loaded, its
    /// keys built), so that the caller can read it back while other tables
    /// load. A table that is never announced (empty, loaded chunk by chunk,
    /// or restored by a path that does not announce) is simply verified
    /// after the whole restore.
    pub ready: Option<TableReady>,
    /// Bundles read for this restore ([`crate::bundle`]), shared by its
    /// load workers.
    pub bundles: Arc<BundleCache>,
}

/// Where a restore announces its finished tables, as `(shard, table)`:
/// `shard` is the caller's name for this restore (restores of several
/// shards may share one channel). One message per table, so the channel
/// holds at most as many names as the backup has tables.
#[derive(Clone)]
pub struct TableReady {
    pub shard: String,
    pub tx: tokio::sync::mpsc::UnboundedSender<(String, String)>,
}

impl RestoreOptions {
    pub(crate) fn selected(&self, t: &TableManifest) -> bool {
        self.tables
            .as_ref()
            .is_none_or(|list| list.contains(&t.qualified()))
    }

    /// Whether every table `source` holds of `db` is selected: the
    /// database comes back whole (`--database`), and with it what is not
    /// a table (views, routines, events, materialized views' contents),
    /// which a restore of some of its tables leaves out.
    pub(crate) fn whole_database(&self, source: &ShardManifest, db: &str) -> bool {
        source
            .table_list
            .iter()
            .filter(|t| t.database == db)
            .all(|t| self.selected(t))
    }

    /// Announces a table as restored; a caller that stopped listening does
    /// not stop the restore.
    pub(crate) fn table_ready(&self, qualified: String) {
        if let Some(ready) = &self.ready {
            drop(ready.tx.send((ready.shard.clone(), qualified)));
        }
    }
}

/// How long a table's index or key build runs before the table is
/// announced as restored (see [`ready_during`]).
const BUILD_HEAD_START: std::time::Duration = std::time::Duration::from_millis(50);

/// Runs `build`, index or key builds on tables whose rows are loaded, and
/// calls `ready` (which announces those tables for their read-back) once
/// the build has run for [`BUILD_HEAD_START`], or when it ends if sooner.
/// A build reads the rows but does not change them, so the read-back may
/// read the table meanwhile, on the other processor. The head start lets
/// the build take its lock first: MariaDB needs the table to itself for a
/// moment as an in-place key build starts, and a read that came first
/// would make the whole build wait for it. The read-back's statement holds
/// its lock only while it runs and waits for nothing else, so the two can
/// wait for each other but never deadlock.
pub(crate) async fn ready_during<T>(
    build: impl std::future::Future<Output = T>,
    ready: impl FnOnce(),
) -> T {
    tokio::pin!(build);
    tokio::select! {
        built = &mut build => {
            ready();
            built
        }
        () = tokio::time::sleep(BUILD_HEAD_START) => {
            ready();
            build.await
        }
    }
}

/// What a restore of one shard did.
#[derive(Debug, Default, serde::Serialize, serde::Deserialize)]
pub struct ShardRestore {
    pub databases: Vec<String>,
    pub tables: usize,
    pub chunks: usize,
    /// What the DBA should know of what was restored, one line each (on
    /// PostgreSQL, privileges left out that name roles the target lacks).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub notes: Vec<String>,
}

/// Refuses a database the backup names that is one of the target
/// server's own (`system`): a manifest is read from the repository, which
/// is not trusted, and restoring drops a database before recreating it.
pub(crate) fn refuse_system_database(
    target: &Shard,
    db: &str,
    system: &[&str],
) -> Result<(), AgentError> {
    if system.iter().any(|s| s.eq_ignore_ascii_case(db)) {
        return Err(AgentError::SystemDatabase {
            shard: target.name.clone(),
            database: db.to_string(),
        });
    }
    Ok(())
}

/// Waits for every load worker; returns the first failure. A worker that
/// fails stops by itself; the others finish their chunks (a restore that
/// failed is reported as such whatever else loaded).
pub(crate) async fn join_loaders(
    mut tasks: tokio::task::JoinSet<Result<(), AgentError>>,
    shard: &str,
) -> Result<(), AgentError> {
    let mut first = None;
    while let Some(joined) = tasks.join_next().await {
        let r = joined.map_err(|source| AgentError::Panicked {
            shard: shard.to_string(),
            task: "a load worker",
            source,
        })?;
        if let Err(e) = r {
            first.get_or_insert(e);
        }
    }
    match first {
        Some(e) => Err(e),
        None => Ok(()),
    }
}

/// What the manifest records of one stored object: where it is, its
/// checksum, and how large it decompresses.
#[derive(Debug, Clone)]
pub(crate) struct Recorded {
    pub key: String,
    pub xxh3: String,
    pub bytes_raw: u64,
    pub bytes_stored: u64,
    /// A bundled chunk: its bundle and where in it (`key` is then only
    /// its name).
    pub bundle: Option<(StoredBundle, u64)>,
}

impl Recorded {
    /// Chunk `c` of a table of `source`; a chunk naming a bundle the
    /// manifest does not list is damage, refused by name.
    pub(crate) fn chunk(
        source: &ShardManifest,
        c: &ChunkRef,
        shard: &str,
    ) -> Result<Self, AgentError> {
        let bundle = bundle_of(source, c).map_err(|what| AgentError::Damaged {
            shard: shard.to_string(),
            what,
        })?;
        Ok(Recorded {
            key: c.key.clone(),
            xxh3: c.xxh3.clone(),
            bytes_raw: c.bytes_raw,
            bytes_stored: c.bytes_stored,
            bundle: bundle.map(|(b, offset)| (b.clone(), offset)),
        })
    }
}

impl From<&StoredFile> for Recorded {
    fn from(f: &StoredFile) -> Self {
        Recorded {
            key: f.key.clone(),
            xxh3: f.xxh3.clone(),
            bytes_raw: f.bytes_raw,
            bytes_stored: f.bytes_stored,
            bundle: None,
        }
    }
}

/// Verifies a stored object's checksum before it is applied, and
/// decompresses it no larger than recorded: a damaged chunk is refused by
/// name rather than loaded as garbage, and a tampered one cannot expand
/// beyond what the manifest says.
pub(crate) async fn load_checked(
    opts: &RestoreOptions,
    object: &Recorded,
    shard: &str,
) -> Result<Vec<u8>, AgentError> {
    let (r, o, cache) = (opts.repo.clone(), object.clone(), opts.bundles.clone());
    let fail = |what: String| AgentError::Damaged {
        shard: shard.to_string(),
        what,
    };
    tokio::task::spawn_blocking(move || {
        let k = &o.key;
        let stored = match &o.bundle {
            Some((bundle, offset)) => cache.chunk(&*r, bundle, *offset, o.bytes_stored),
            None => r.get_at_most(k, o.bytes_stored).map_err(BundleError::from),
        }
        .map_err(|e| format!("{k}: {e}"))?;
        let got = crate::checksum::xxh3_hex(&stored);
        if got != o.xxh3 {
            return Err(format!(
                "chunk {k} is damaged (checksum {got}, manifest {}); run `shardcut verify`",
                o.xxh3
            ));
        }
        decompress_bounded(&stored, o.bytes_raw)
            .map_err(|e| format!("{k} does not decompress: {e}"))
    })
    .await
    .map_err(|source| AgentError::Panicked {
        shard: shard.to_string(),
        task: "a chunk reader",
        source,
    })?
    .map_err(fail)
}

/// Reads and checks every schema file the restore will run, before it runs
/// any: a damaged or tampered one (in an encrypted repository: one that
/// fails authentication) stops the restore before the first statement on
/// the target, not after some databases were made.
pub(crate) async fn check_schema_files(
    source: &ShardManifest,
    target: &str,
    opts: &RestoreOptions,
) -> Result<(), AgentError> {
    for db in databases(source, opts) {
        for f in source.schema.iter().filter(|f| f.database == db) {
            load_checked(opts, &f.into(), target).await?;
        }
    }
    Ok(())
}

/// The schema files of one database in a section.
pub(crate) fn schema_files<'m>(
    source: &'m ShardManifest,
    db: &str,
    section: &str,
) -> Vec<&'m StoredFile> {
    source
        .schema
        .iter()
        .filter(|f| f.database == db && f.section == section)
        .collect()
}

/// Databases of a shard's backup to restore, in manifest order, without
/// repeats: all of them, or those holding a selected table.
pub(crate) fn databases(source: &ShardManifest, opts: &RestoreOptions) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    let names: Vec<&String> = match &opts.tables {
        None => source
            .schema
            .iter()
            .map(|f| &f.database)
            .chain(source.table_list.iter().map(|t| &t.database))
            .collect(),
        Some(_) => source
            .table_list
            .iter()
            .filter(|t| opts.selected(t))
            .map(|t| &t.database)
            .collect(),
    };
    for name in names {
        if !out.contains(name) {
            out.push(name.clone());
        }
    }
    out
}

/// Work items for the data load: every chunk of every selected table of `db`.
pub(crate) fn chunk_items<'m>(
    source: &'m ShardManifest,
    db: &str,
    opts: &RestoreOptions,
) -> Vec<(&'m TableManifest, usize)> {
    source
        .table_list
        .iter()
        .filter(|t| t.database == db && opts.selected(t))
        .flat_map(|t| (0..t.chunks.len()).map(move |i| (t, i)))
        .collect()
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;
    use std::time::Duration;

    use super::ready_during;

    #[tokio::test]
    async fn a_table_is_announced_while_its_build_runs() {
        // The build ends only once the table has been announced: a build
        // announced after it ends would never end.
        let announced = Arc::new(tokio::sync::Notify::new());
        let heard = announced.clone();
        let build = async move {
            heard.notified().await;
            "built"
        };
        let built = tokio::time::timeout(
            Duration::from_secs(30),
            ready_during(build, || announced.notify_one()),
        )
        .await;
        assert_eq!(built.ok(), Some("built"));
    }

    #[tokio::test]
    async fn a_build_that_ends_first_is_announced_once_when_it_ends() {
        let calls = AtomicUsize::new(0);
        let seen_by_build = ready_during(async { calls.load(Ordering::SeqCst) }, || {
            calls.fetch_add(1, Ordering::SeqCst);
        })
        .await;
        assert_eq!(seen_by_build, 0);
        assert_eq!(calls.load(Ordering::SeqCst), 1);
    }
}
