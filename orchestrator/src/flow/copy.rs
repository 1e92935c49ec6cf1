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
//! The source is read as untrusted as any repository: each object with
//! the size that names it as the most the read may take (a backup's
//! objects with their manifest's sizes, a segment's data with its
//! description's; manifests, marks, states and descriptions with the
//! bounds their readers use), and only what a manifest or a description
//! names is copied of a backup's folder or a segment's data.
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
use shard_agent::capture::{
    data_stem, read_description, read_document, CaptureError, DOCUMENT_MAX,
};
use shard_agent::checksum::xxh3_hex;
use shard_agent::manifest::{keys, Manifest, MANIFEST_MAX};
use shard_agent::repo::{RepoError, Repository};
use topology::Topology;

use super::leftovers::{self, Writer};
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
    /// Partial copies removed from the replica: of backups the source no
    /// longer holds, left by a copy killed before their manifest.
    pub partial_copies_removed: Vec<String>,
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
    /// Copies `job`'s object, read with its bound, compared with its
    /// recorded checksum if it has one, and confirmed by the replica.
    fn one(&self, job: &Job) -> anyhow::Result<()> {
        let key = job.key.as_str();
        let data = self
            .source
            .get_at_most(key, job.max)
            .with_context(|| format!("reading {key} to copy"))?;
        self.put(key, &data, job.recorded.as_deref())
    }

    /// Writes `data`, the source's object `key`, to the replica, after
    /// comparing it with `recorded`, the checksum that names it.
    fn put(&self, key: &str, data: &[u8], recorded: Option<&str>) -> anyhow::Result<()> {
        if let Some(want) = recorded {
            let hash = xxh3_hex(data);
            if hash != want {
                anyhow::bail!(
                    "source object {key} is damaged (checksum {hash}, recorded {want}); run `shardcut verify` on the source; the replica keeps what it had"
                );
            }
        }
        // Written and confirmed by the store's own hash of what it holds.
        self.dest
            .put_verified(key, data)
            .with_context(|| format!("replica {}: writing {key}", self.replica))?;
        self.tally.copied.fetch_add(1, Ordering::Relaxed);
        self.tally
            .bytes
            .fetch_add(data.len() as u64, Ordering::Relaxed);
        Ok(())
    }

    /// A capture segment by its description `key`: its data (read with the
    /// size the description records, compared with its checksum) if the
    /// replica lacks it, then the description if the replica lacks that,
    /// so that no description is there before its data.
    fn segment(&self, key: &str, present: &HashSet<String>) -> anyhow::Result<()> {
        let (meta, description) =
            read_description(self.source, key).with_context(|| format!("reading {key} to copy"))?;
        if present.contains(&meta.key) {
            self.tally.skipped.fetch_add(1, Ordering::Relaxed);
        } else {
            self.one(&Job {
                key: meta.key.clone(),
                max: meta.bytes_stored,
                recorded: Some(meta.xxh3.clone()),
            })?;
        }
        if present.contains(key) {
            self.tally.skipped.fetch_add(1, Ordering::Relaxed);
            Ok(())
        } else {
            self.put(key, &description, None)
        }
    }

    /// Does every piece of `work` on [`WORKERS`] threads; the first
    /// failure stops the others and is returned.
    fn many(&self, work: Vec<Work>, present: &HashSet<String>) -> anyhow::Result<()> {
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
                    while let Some(work) = next() {
                        let done = match &work {
                            Work::Object(job) => self.one(job),
                            Work::Segment(key) => self.segment(key, present),
                        };
                        if let Err(e) = done {
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

    /// Of `jobs`, those whose object the replica lacks (the rest are
    /// counted as skipped).
    fn missing(&self, jobs: Vec<Job>, present: &HashSet<String>) -> Vec<Work> {
        let mut out = Vec::new();
        for job in jobs {
            if present.contains(&job.key) {
                self.tally.skipped.fetch_add(1, Ordering::Relaxed);
            } else {
                out.push(Work::Object(job));
            }
        }
        out
    }
}

/// One object to copy: its key, the most its read may take (what names
/// it records, or what shardcut ever writes of its kind: a larger object
/// planted in the source is refused before it is read), and the checksum
/// recorded for it, if any.
struct Job {
    key: String,
    max: u64,
    recorded: Option<String>,
}

impl Job {
    fn document(key: String, max: u64) -> Job {
        Job {
            key,
            max,
            recorded: None,
        }
    }
}

enum Work {
    Object(Job),
    /// A capture segment, by its description's key.
    Segment(String),
}

/// A stream's state: the one kind of object that changes in place.
fn is_state(key: &str) -> bool {
    key.starts_with("capture/") && key.ends_with("/state.json") && key.matches('/').count() == 3
}

/// The capture objects and marks a copy takes (see [`capture_work`]): all
/// but the states, and segment data only beside its description.
fn capture_keys(source: &dyn Repository) -> Result<Vec<String>, RepoError> {
    let capture: Vec<String> = source
        .list("capture/")?
        .into_iter()
        .filter(|k| !is_state(k))
        .collect();
    let described: HashSet<&str> = capture
        .iter()
        .filter(|k| is_description(k))
        .filter_map(|k| k.strip_suffix(".json"))
        .collect();
    let mut out: Vec<String> = capture
        .iter()
        .filter(|k| k.ends_with(".json") || data_stem(k).is_some_and(|s| described.contains(s)))
        .cloned()
        .collect();
    out.extend(source.list("marks/")?);
    Ok(out)
}

/// A segment's description: a `.json` in a stream's `seg/` folder.
fn is_description(key: &str) -> bool {
    let parts: Vec<&str> = key.split('/').collect();
    matches!(parts.as_slice(), ["capture", _, _, "seg", name] if name.ends_with(".json"))
}

/// What a copy round moves of the source's capture objects and marks, in
/// the order a reader needs them: each segment (its data, then its
/// description), then the retired generations' states, then the marks.
/// Segment data is copied by its description, read with the size that
/// records; data without one (a capture stopped between the two) is
/// nobody's yet and stays behind.
fn capture_work(
    copier: &Copier<'_>,
    present: &HashSet<String>,
) -> Result<[Vec<Work>; 3], RepoError> {
    let data_there: HashSet<&str> = present
        .iter()
        .filter(|k| k.starts_with("capture/"))
        .filter_map(|k| data_stem(k))
        .collect();
    let (mut segments, mut retired) = (Vec::new(), Vec::new());
    for key in copier.source.list("capture/")? {
        if is_description(&key) {
            // A description on the replica is skipped unless its data has
            // been lost there since.
            let whole = key
                .strip_suffix(".json")
                .is_some_and(|stem| data_there.contains(stem));
            if present.contains(&key) && whole {
                copier.tally.skipped.fetch_add(2, Ordering::Relaxed);
            } else {
                segments.push(Work::Segment(key));
            }
        } else if key.ends_with(".json") && !is_state(&key) {
            retired.extend(copier.missing(vec![Job::document(key, DOCUMENT_MAX)], present));
        }
    }
    let marks = copier.source.list("marks/")?;
    let marks = marks
        .into_iter()
        .map(|k| Job::document(k, MANIFEST_MAX))
        .collect();
    Ok([segments, retired, copier.missing(marks, present)])
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
    for work in capture_work(&copier, &present)? {
        copier.many(work, &present)?;
    }
    let mut report = CopyReport {
        replica: replica.to_string(),
        repository: dest.location(),
        ..CopyReport::default()
    };
    let complete = complete_backups(source, cluster)?;
    for listed in selected(source, &complete, cluster, which)? {
        // Listed manifests are summaries: each backup copied is read whole,
        // once; the replica gets the bytes whose objects were copied.
        let (m, document) = super::backup_document(source, cluster, &listed.backup_id)?;
        let manifest_key = keys::manifest(&m.backup_id);
        // What the manifest records, each read with its recorded size as
        // the bound; nothing else in the backup's folder is the backup's.
        let jobs = m
            .stored_objects()
            .map(|o| Job {
                key: o.key.to_string(),
                max: o.bytes_stored,
                recorded: Some(o.xxh3.to_string()),
            })
            .collect();
        let work = copier.missing(jobs, &present);
        if !present.contains(&manifest_key) {
            // Whose folder this is, before its objects: if this copy is
            // killed, a later one can tell what it left.
            leftovers::record_start(dest, &m.backup_id, cluster, Writer::Copy)?;
        }
        // A backup already on the replica still gets back an object lost
        // there since (its manifest stays).
        copier.many(work, &present)?;
        if present.contains(&manifest_key) {
            copier.tally.skipped.fetch_add(1, Ordering::Relaxed);
            report.backups_present.push(m.backup_id.clone());
            continue;
        }
        // Every object is there and verified: the manifest may follow.
        let needed: Vec<&str> = m.object_keys();
        dest.sync_names(&needed)?;
        copier.put(&manifest_key, &document, None)?;
        dest.sync_names(&[&manifest_key])?;
        report.backups_copied.push(m.backup_id.clone());
    }
    // The streams' states last: they name segments copied above.
    for key in source.list("capture/")?.into_iter().filter(|k| is_state(k)) {
        let data = read_document(source, &key).with_context(|| format!("reading {key} to copy"))?;
        match read_document(dest, &key) {
            Ok(there) if there == data => {
                copier.tally.skipped.fetch_add(1, Ordering::Relaxed);
            }
            // Other bytes, none, or a state of the replica's that is no
            // state: replaced by the source's.
            Ok(_)
            | Err(CaptureError::Corrupt { .. })
            | Err(CaptureError::Repo(RepoError::NotFound { .. })) => {
                copier.put(&key, &data, None)?
            }
            Err(e) => {
                return Err(anyhow::Error::new(e).context(format!("replica {replica}: {key}")))
            }
        }
    }
    report.partial_copies_removed = remove_partial_copies(source, dest, cluster, &present)?;
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

/// Removes the folders on the replica, listed in `present`, that hold no
/// manifest and name a backup the source has no folder for: a copy killed
/// before it wrote the manifest, of a backup expired at the source since.
/// What cannot be removed is logged; the IDs removed are returned.
fn remove_partial_copies(
    source: &dyn Repository,
    dest: &dyn Repository,
    cluster: &str,
    present: &HashSet<String>,
) -> anyhow::Result<Vec<String>> {
    let at_source: HashSet<String> = super::backup_folders(source)?.into_iter().collect();
    let mut partial: Vec<String> = present
        .iter()
        .filter_map(|k| k.strip_prefix(keys::BACKUPS)?.split_once('/'))
        .map(|(id, _)| id.to_string())
        .filter(|id| !at_source.contains(id) && !present.contains(&keys::manifest(id)))
        .collect();
    partial.sort();
    partial.dedup();
    let found = leftovers::sweep_copies(dest, cluster, &partial);
    for (id, why) in &found.kept {
        tracing::warn!("replica: backup folder {id} has no manifest and stays: {why}");
    }
    Ok(found.removed.into_iter().map(|l| l.id).collect())
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

#[cfg(test)]
mod tests {
    use shard_agent::capture::spill::SpillBuffer;
    use shard_agent::capture::{store_segment, SegmentData, SegmentMeta};
    use shard_agent::position::{Lsn, Position};
    use shard_agent::repo::{MemoryRepository, RepoError, Repository};

    use super::{copy_round, Which};

    /// A source holding one captured segment of shard `s`, stream `d`:
    /// its description's key and its meta.
    fn one_segment() -> (MemoryRepository, String, SegmentMeta) {
        let source = MemoryRepository::default();
        let at = Position::Postgres { lsn: Lsn(16) };
        let meta = SegmentMeta {
            transactions: 1,
            ..SegmentMeta::unstored(("s", "d"), (0, 0), at.clone(), at)
        };
        let mut raw = SpillBuffer::from_vec(b"one transaction".repeat(100));
        let data = SegmentData {
            sort: "0000000000000010",
            ext: "pgoutput",
            raw: &mut raw,
        };
        let meta = store_segment(&source, meta, data, topology::Compression::Zstd(3)).unwrap();
        let description = format!("{}.json", meta.key.rsplit_once(".pgoutput").unwrap().0);
        assert!(source.exists(&description).unwrap());
        (source, description, meta)
    }

    fn round(source: &MemoryRepository, dest: &MemoryRepository) -> Result<(), String> {
        copy_round(source, dest, "c", &Which::All, "dr")
            .map(drop)
            .map_err(|e| crate::exit::one_line(&e))
    }

    #[test]
    fn a_segment_goes_with_its_description_and_is_skipped_once_there() {
        let (source, description, meta) = one_segment();
        let dest = MemoryRepository::default();
        round(&source, &dest).unwrap();
        assert_eq!(dest.get(&meta.key).unwrap(), source.get(&meta.key).unwrap());
        assert_eq!(
            dest.get(&description).unwrap(),
            source.get(&description).unwrap()
        );
        // Data lost on the replica comes back; its description stays.
        dest.delete(&meta.key).unwrap();
        round(&source, &dest).unwrap();
        assert_eq!(dest.get(&meta.key).unwrap(), source.get(&meta.key).unwrap());
    }

    /// Segment data larger than its description records is refused by its
    /// size, and neither it nor its description reaches the replica.
    #[test]
    fn segment_data_larger_than_its_description_records_is_not_copied() {
        let (source, description, meta) = one_segment();
        let planted = vec![7u8; meta.bytes_stored as usize + 1_000];
        source.put(&meta.key, &planted).unwrap();
        let dest = MemoryRepository::default();
        let err = round(&source, &dest).unwrap_err();
        assert!(
            err.contains(&format!(
                "object {} is {} bytes, more than the {} it may take: not read",
                meta.key,
                planted.len(),
                meta.bytes_stored
            )),
            "{err}"
        );
        assert!(!dest.exists(&meta.key).unwrap() && !dest.exists(&description).unwrap());
    }

    /// A description naming an object that is not its segment's data (here
    /// a mark) is refused; data of the right size but other bytes too.
    #[test]
    fn a_description_naming_another_object_or_other_bytes_is_refused() {
        let (source, description, meta) = one_segment();
        let mut doc: serde_json::Value =
            serde_json::from_slice(&source.get(&description).unwrap()).unwrap();
        doc["key"] = "marks/planted.json".into();
        source
            .put(&description, &serde_json::to_vec(&doc).unwrap())
            .unwrap();
        let dest = MemoryRepository::default();
        let err = round(&source, &dest).unwrap_err();
        assert!(
            err.contains(&format!(
                "capture object {description} is unreadable: it names marks/planted.json as its data, which is not beside it"
            )),
            "{err}"
        );

        let (source, _, meta2) = one_segment();
        let mut other = source.get(&meta2.key).unwrap();
        other[0] ^= 1;
        source.put(&meta.key, &other).unwrap();
        let err = round(&source, &dest).unwrap_err();
        assert!(
            err.contains(&format!("source object {} is damaged", meta.key)),
            "{err}"
        );
        assert!(dest.list("").unwrap().is_empty(), "{:?}", dest.list(""));
    }

    /// A source whose manifest of backup `b1` is `later` from its
    /// `reads`-th read on (a manifest replaced while a copy runs).
    #[derive(Debug)]
    struct Changing {
        inner: MemoryRepository,
        reads: std::sync::atomic::AtomicUsize,
        after: usize,
        later: Vec<u8>,
    }

    impl Repository for Changing {
        fn location(&self) -> String {
            self.inner.location()
        }
        fn put(&self, key: &str, data: &[u8]) -> Result<(), RepoError> {
            self.inner.put(key, data)
        }
        fn put_if_absent(&self, key: &str, data: &[u8]) -> Result<(), RepoError> {
            self.inner.put_if_absent(key, data)
        }
        fn get(&self, key: &str) -> Result<Vec<u8>, RepoError> {
            if key == "backups/b1/manifest.json"
                && self.reads.fetch_add(1, std::sync::atomic::Ordering::SeqCst) >= self.after
            {
                return Ok(self.later.clone());
            }
            self.inner.get(key)
        }
        fn list(&self, prefix: &str) -> Result<Vec<String>, RepoError> {
            self.inner.list(prefix)
        }
        fn delete(&self, key: &str) -> Result<(), RepoError> {
            self.inner.delete(key)
        }
        fn sync_names(&self, keys: &[&str]) -> Result<(), RepoError> {
            self.inner.sync_names(keys)
        }
    }

    /// The replica gets the manifest whose objects the copy checked, even
    /// when the source's changes meanwhile: it read the manifest again to
    /// copy it, and could write one naming objects it never copied.
    #[test]
    fn the_manifest_copied_is_the_one_whose_objects_were_copied() {
        let manifest = |shards: serde_json::Value| {
            serde_json::to_vec(&serde_json::json!({
                "format": 2, "backup_id": "b1", "cluster": "c", "topology_digest": "",
                "tool_version": "", "status": "complete", "started_at": "", "finished_at": "",
                "cut": {"write_block_ms": 0, "attempts": 1, "taken_at": "", "shards": {}},
                "shards": shards,
            }))
            .unwrap()
        };
        let first = manifest(serde_json::json!({}));
        let later = manifest(serde_json::json!({"s": {
            "engine": "postgres", "server": "", "tables": 0, "rows": 0, "bytes_raw": 0,
            "bytes_stored": 0, "duration_ms": 0, "table_list": [],
            "schema": [{"database": "d", "key": "backups/b1/shards/s/d/never-copied",
                        "section": "pre-data", "bytes_raw": 1, "bytes_stored": 1,
                        "xxh3": "0"}],
        }}));
        serde_json::from_slice::<shard_agent::manifest::Manifest>(&later).unwrap();
        let inner = MemoryRepository::default();
        inner.put("backups/b1/manifest.json", &first).unwrap();
        // The listing reads it once, the copy once more.
        let source = Changing {
            inner,
            reads: Default::default(),
            after: 2,
            later,
        };
        let dest = MemoryRepository::default();
        let report = copy_round(&source, &dest, "c", &Which::All, "dr").unwrap();
        assert_eq!(report.backups_copied, ["b1"]);
        let copied = dest.get("backups/b1/manifest.json").unwrap();
        assert_eq!(
            String::from_utf8_lossy(&copied),
            String::from_utf8_lossy(&first)
        );
    }

    /// A copy records whose folder it writes; a later copy removes what a
    /// killed one left of a backup the source no longer has, and nothing
    /// else: not a partial copy the source still has (it completes it),
    /// not another cluster's, not a backup written there by a backup run.
    #[test]
    fn partial_copies_of_backups_gone_from_the_source_are_removed() {
        let source = MemoryRepository::default();
        let manifest = serde_json::to_vec(&serde_json::json!({
            "format": 2, "backup_id": "b2", "cluster": "c", "topology_digest": "",
            "tool_version": "", "status": "complete", "started_at": "", "finished_at": "",
            "cut": {"write_block_ms": 0, "attempts": 1, "taken_at": "", "shards": {}},
            "shards": {},
        }))
        .unwrap();
        source.put("backups/b2/manifest.json", &manifest).unwrap();
        let dest = MemoryRepository::default();
        let left = |id: &str, cluster: &str, writer: &str| {
            let record = serde_json::json!({
                "cluster": cluster, "writer": writer, "started_at": "",
                "host": crate::lock::host_name(), "pid": 4_000_000_000u32,
                "boot": crate::lock::boot_id(),
            });
            dest.put(
                &format!("backups/{id}/started.json"),
                &serde_json::to_vec(&record).unwrap(),
            )
            .unwrap();
            dest.put(&format!("backups/{id}/bundles/s/b00000.bundle"), b"x")
                .unwrap();
        };
        left("b1", "c", "copy");
        left("b2", "c", "copy");
        left("b3", "other", "copy");
        left("b4", "c", "backup");
        let report = copy_round(&source, &dest, "c", &Which::All, "dr").unwrap();
        assert_eq!(report.partial_copies_removed, ["b1"]);
        assert_eq!(report.backups_copied, ["b2"]);
        assert!(dest.list("backups/b1/").unwrap().is_empty());
        for id in ["b3", "b4"] {
            assert_eq!(
                dest.list(&format!("backups/{id}/")).unwrap().len(),
                2,
                "{id}"
            );
        }

        // A copy into an empty replica leaves its record beside the backup.
        let fresh = MemoryRepository::default();
        copy_round(&source, &fresh, "c", &Which::All, "dr").unwrap();
        let record: serde_json::Value =
            serde_json::from_slice(&fresh.get("backups/b2/started.json").unwrap()).unwrap();
        assert_eq!(record["writer"], "copy");
        assert_eq!(record["cluster"], "c");
    }
}
