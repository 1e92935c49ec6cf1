//! Copies of the repository in other regions (`shardcut copy --to NAME`).
//!
//! A copy moves what the replica lacks, by name: capture segments and
//! their descriptions, retired generations, marks, then each backup's
//! chunks and schema files and, last, its manifest; the capture streams'
//! states (the only objects that change) when they differ. A backup's
//! objects are first compared with the checksums their manifest records;
//! every object written is confirmed by the replica's own hash of what it
//! stored (`Repository::put_verified`: an S3 store's MD5, a directory's
//! read-back) before the replica's manifest is written, so a replica lists
//! only backups whose every object arrived intact.
//!
//! Objects go through each repository's own layer: read (and, if the
//! source is encrypted, authenticated) with the source's key, written with
//! the replica's. A copy killed midway leaves objects without a manifest,
//! which no command lists; the next copy skips the objects already there
//! and finishes it.

use std::collections::{BTreeMap, BTreeSet, HashSet, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

use anyhow::Context;
use serde::Serialize;
use shard_agent::checksum::xxh3_hex;
use shard_agent::manifest::{keys, Manifest};
use shard_agent::repo::{RepoError, Repository};
use topology::Topology;

use super::{list_backups, open_repository};
use crate::exit::InvalidInput;
use crate::lock::RepoLock;

/// Objects copied at once: object stores answer one request at a time per
/// connection, so throughput comes from several in flight.
const WORKERS: usize = 8;

/// Which backups a copy takes (capture segments and marks always go).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Which {
    Latest,
    Id(String),
    All,
}

#[derive(Debug, Default, Serialize)]
pub struct CopyReport {
    pub replica: String,
    pub repository: String,
    /// Backups whose manifest this copy wrote to the replica.
    pub backups_copied: Vec<String>,
    /// Selected backups the replica already had.
    pub backups_present: Vec<String>,
    pub objects_copied: u64,
    pub bytes_copied: u64,
    /// Objects the replica already had (by name).
    pub objects_skipped: u64,
    /// Copied objects the replica confirmed by its own hash.
    pub objects_verified: u64,
    pub lag: ReplicaLag,
}

/// How far a replica is behind its source.
#[derive(Debug, Default, Clone, Serialize)]
pub struct ReplicaLag {
    pub backups_missing: Vec<String>,
    /// The newest complete backup on the replica.
    pub newest_backup: Option<String>,
    /// Capture segments, descriptions and marks the replica lacks.
    pub capture_objects_missing: u64,
}

/// The topology's replica `name`, or a clear refusal.
pub fn replica_topology(topology: &Topology, name: &str) -> Result<Topology, InvalidInput> {
    topology.using_replica(name).ok_or_else(|| {
        let known: Vec<&str> = topology.replicas.iter().map(|r| r.name.as_str()).collect();
        InvalidInput(format!(
            "{}: no replica named `{name}` (replicas: {})",
            topology.source.display(),
            if known.is_empty() {
                "none; add them under `replicas:`".to_string()
            } else {
                known.join(", ")
            }
        ))
    })
}

/// The topology as given, or read from the replica `name` instead.
pub fn choose_repository(topology: Topology, name: Option<&str>) -> Result<Topology, InvalidInput> {
    match name {
        Some(name) => replica_topology(&topology, name),
        None => Ok(topology),
    }
}

/// One copy round into the replica `to`.
pub async fn copy(topology: &Topology, to: &str, which: &Which) -> anyhow::Result<CopyReport> {
    let replica = replica_topology(topology, to)?;
    let source = open_repository(topology)?;
    let dest = open_repository(&replica)?;
    let lock = RepoLock::acquire(dest.clone(), &topology.cluster, "copy")
        .with_context(|| format!("replica {to}"))?;
    let (cluster, which, name) = (topology.cluster.clone(), which.clone(), to.to_string());
    let (src, dst) = (source.clone(), dest.clone());
    let report = tokio::task::spawn_blocking(move || {
        copy_round(src.as_ref(), dst.as_ref(), &cluster, &which, &name)
    })
    .await
    .context("the copy panicked")?;
    lock.ensure_held()?;
    lock.release();
    report
}

/// Counters shared by the copying threads.
#[derive(Default)]
struct Tally {
    copied: AtomicU64,
    bytes: AtomicU64,
    skipped: AtomicU64,
}

struct Copier<'a> {
    source: &'a dyn Repository,
    dest: &'a dyn Repository,
    replica: &'a str,
    tally: Tally,
}

impl Copier<'_> {
    /// Copies `key`, then reads it back from the replica and compares.
    /// `recorded`: the checksum a manifest records for it.
    fn one(&self, key: &str, recorded: Option<&str>) -> anyhow::Result<()> {
        let data = self
            .source
            .get(key)
            .with_context(|| format!("reading {key} to copy"))?;
        let hash = xxh3_hex(&data);
        if let Some(want) = recorded {
            if hash != want {
                anyhow::bail!(
                    "source object {key} is damaged (checksum {hash}, manifest {want}); run `shardcut verify` on the source; the replica keeps what it had"
                );
            }
        }
        // Written and confirmed by the store's own hash of what it holds.
        self.dest
            .put_verified(key, &data)
            .with_context(|| format!("replica {}: writing {key}", self.replica))?;
        self.tally.copied.fetch_add(1, Ordering::Relaxed);
        self.tally
            .bytes
            .fetch_add(data.len() as u64, Ordering::Relaxed);
        Ok(())
    }

    /// Copies every `(key, recorded checksum)` on [`WORKERS`] threads; the
    /// first failure stops the others and is returned.
    fn many(&self, work: Vec<(String, Option<String>)>) -> anyhow::Result<()> {
        let queue = Mutex::new(VecDeque::from(work));
        let failed: Mutex<Option<anyhow::Error>> = Mutex::new(None);
        let next = || {
            if failed.lock().map(|f| f.is_some()).unwrap_or(true) {
                return None;
            }
            queue.lock().ok()?.pop_front()
        };
        std::thread::scope(|s| {
            for _ in 0..WORKERS {
                s.spawn(|| {
                    while let Some((key, recorded)) = next() {
                        if let Err(e) = self.one(&key, recorded.as_deref()) {
                            if let Ok(mut f) = failed.lock() {
                                f.get_or_insert(e);
                            }
                        }
                    }
                });
            }
        });
        match failed.into_inner() {
            Ok(Some(e)) => Err(e),
            Ok(None) => Ok(()),
            Err(_) => anyhow::bail!("a copying thread panicked"),
        }
    }

    /// Of `keys`, those the replica lacks (the rest are counted as skipped).
    fn missing(
        &self,
        keys: Vec<String>,
        present: &HashSet<String>,
    ) -> Vec<(String, Option<String>)> {
        let mut out = Vec::new();
        for k in keys {
            if present.contains(&k) {
                self.tally.skipped.fetch_add(1, Ordering::Relaxed);
            } else {
                out.push((k, None));
            }
        }
        out
    }
}

/// A stream's state: the one kind of object that changes in place.
fn is_state(key: &str) -> bool {
    key.starts_with("capture/") && key.ends_with("/state.json") && key.matches('/').count() == 3
}

/// Capture objects and marks in the order a reader needs them: data
/// before the descriptions that name it, marks after both.
fn capture_keys(source: &dyn Repository) -> Result<Vec<Vec<String>>, RepoError> {
    let capture: Vec<String> = source
        .list("capture/")?
        .into_iter()
        .filter(|k| !is_state(k))
        .collect();
    let (described, descriptions): (Vec<String>, Vec<String>) =
        capture.into_iter().partition(|k| !k.ends_with(".json"));
    Ok(vec![described, descriptions, source.list("marks/")?])
}

/// The selected backups, each after the backups its chain restores from,
/// of the source's complete backups (`complete`).
fn selected(
    source: &dyn Repository,
    complete: &BTreeMap<String, Manifest>,
    cluster: &str,
    which: &Which,
) -> anyhow::Result<Vec<Manifest>> {
    let mut wanted: Vec<String> = match which {
        Which::All => complete.keys().cloned().collect(),
        Which::Latest => complete.keys().last().cloned().into_iter().collect(),
        Which::Id(id) => {
            if !complete.contains_key(id) {
                return Err(InvalidInput(format!(
                    "no complete backup `{id}` of cluster {cluster} in {}",
                    source.location()
                ))
                .into());
            }
            vec![id.clone()]
        }
    };
    // An incremental backup restores from its base and parents: they go too.
    let mut i = 0;
    while i < wanted.len() {
        if let Some(chain) = complete.get(&wanted[i]).and_then(|m| m.chain.as_ref()) {
            for needed in [&chain.base, &chain.parent] {
                if !wanted.contains(needed) {
                    wanted.push(needed.clone());
                }
            }
        }
        i += 1;
    }
    wanted.sort();
    Ok(wanted
        .into_iter()
        .filter_map(|id| complete.get(&id).cloned())
        .collect())
}

fn copy_round(
    source: &dyn Repository,
    dest: &dyn Repository,
    cluster: &str,
    which: &Which,
    replica: &str,
) -> anyhow::Result<CopyReport> {
    let copier = Copier {
        source,
        dest,
        replica,
        tally: Tally::default(),
    };
    let present: HashSet<String> = dest.list("")?.into_iter().collect();
    for group in capture_keys(source)? {
        copier.many(copier.missing(group, &present))?;
    }
    let mut report = CopyReport {
        replica: replica.to_string(),
        repository: dest.location(),
        ..CopyReport::default()
    };
    let complete = complete_backups(source, cluster)?;
    for m in selected(source, &complete, cluster, which)? {
        let manifest_key = keys::manifest(&m.backup_id);
        let recorded: BTreeMap<&str, &str> = m.object_checksums().collect();
        let objects = source
            .list(&keys::backup_prefix(&m.backup_id))?
            .into_iter()
            .filter(|k| *k != manifest_key)
            .collect();
        let work = copier
            .missing(objects, &present)
            .into_iter()
            .map(|(k, _)| {
                let sum = recorded.get(k.as_str()).map(|s| s.to_string());
                (k, sum)
            })
            .collect();
        // A backup already on the replica still gets back an object lost
        // there since (its manifest stays).
        copier.many(work)?;
        if present.contains(&manifest_key) {
            copier.tally.skipped.fetch_add(1, Ordering::Relaxed);
            report.backups_present.push(m.backup_id.clone());
            continue;
        }
        // Every object is there and verified: the manifest may follow.
        let needed: Vec<&str> = m.object_keys();
        dest.sync_names(&needed)?;
        copier.one(&manifest_key, None)?;
        dest.sync_names(&[&manifest_key])?;
        report.backups_copied.push(m.backup_id.clone());
    }
    // The streams' states last: they name segments copied above.
    for key in source.list("capture/")?.into_iter().filter(|k| is_state(k)) {
        let data = source.get(&key)?;
        match dest.get(&key) {
            Ok(there) if there == data => {
                copier.tally.skipped.fetch_add(1, Ordering::Relaxed);
            }
            Ok(_) | Err(RepoError::NotFound { .. }) => copier.one(&key, None)?,
            Err(e) => return Err(e.into()),
        }
    }
    report.objects_copied = copier.tally.copied.load(Ordering::Relaxed);
    report.bytes_copied = copier.tally.bytes.load(Ordering::Relaxed);
    report.objects_skipped = copier.tally.skipped.load(Ordering::Relaxed);
    // Every object copied was confirmed by the replica's hash, or the copy failed.
    report.objects_verified = report.objects_copied;
    // The lag from what this round already knows: the source's backups,
    // what the replica had and what was copied; only the capture objects
    // are listed again (capture may have stored more meanwhile).
    let mut on_replica: BTreeSet<String> = present
        .iter()
        .filter_map(|k| keys::backup_of_manifest(k).map(str::to_string))
        .collect();
    on_replica.extend(report.backups_copied.iter().cloned());
    report.lag = lag_of(source, dest, complete.keys(), &on_replica)?;
    Ok(report)
}

/// What the replica lacks of the source, by name.
pub fn lag(
    source: &dyn Repository,
    dest: &dyn Repository,
    cluster: &str,
) -> anyhow::Result<ReplicaLag> {
    let complete = complete_backups(source, cluster)?;
    let on_replica: BTreeSet<String> = complete_backups(dest, cluster)?.into_keys().collect();
    lag_of(source, dest, complete.keys(), &on_replica)
}

/// The complete, readable backups of `cluster` in `repo`, by ID.
fn complete_backups(
    repo: &dyn Repository,
    cluster: &str,
) -> anyhow::Result<BTreeMap<String, Manifest>> {
    Ok(list_backups(repo, cluster)?
        .into_iter()
        .filter_map(|l| l.manifest.ok().map(|m| (l.id, m)))
        .collect())
}

/// The lag of `dest`: the source's `complete` backups it lacks, and the
/// capture objects and marks it lacks (listed on both sides now).
fn lag_of<'a>(
    source: &dyn Repository,
    dest: &dyn Repository,
    complete: impl Iterator<Item = &'a String>,
    on_replica: &BTreeSet<String>,
) -> anyhow::Result<ReplicaLag> {
    let mut there: HashSet<String> = dest.list("capture/")?.into_iter().collect();
    there.extend(dest.list("marks/")?);
    let capture_objects_missing = capture_keys(source)?
        .into_iter()
        .flatten()
        .filter(|k| !there.contains(k))
        .count() as u64;
    Ok(ReplicaLag {
        backups_missing: complete
            .filter(|id| !on_replica.contains(*id))
            .cloned()
            .collect(),
        newest_backup: on_replica.last().cloned(),
        capture_objects_missing,
    })
}

/// Each replica's lag, for `status` (an unreachable replica is reported,
/// not fatal).
pub fn replica_lags(topology: &Topology) -> Vec<(String, Result<ReplicaLag, String>)> {
    let source = match open_repository(topology) {
        Ok(s) => s,
        Err(e) => {
            let why = crate::exit::one_line(&anyhow::Error::new(e));
            return topology
                .replicas
                .iter()
                .map(|r| (r.name.clone(), Err(why.clone())))
                .collect();
        }
    };
    topology
        .replicas
        .iter()
        .map(|r| {
            let result = replica_topology(topology, &r.name)
                .map_err(anyhow::Error::new)
                .and_then(|t| open_repository(&t).map_err(anyhow::Error::new))
                .and_then(|dest| lag(source.as_ref(), dest.as_ref(), &topology.cluster))
                .map_err(|e| crate::exit::one_line(&e));
            (r.name.clone(), result)
        })
        .collect()
}
