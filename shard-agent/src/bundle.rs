//! Bundles: the chunks of small tables stored many to an object.
//!
//! A table stored as a chunk of its own costs the repository an object
//! per table: on a file system a new inode, a directory entry and a sync
//! each. With thousands of small tables per shard that, not the rows, was
//! the backup's cost (docs/BENCHMARKS.md, "Many tables"). So a range whose
//! only chunk stores at most [`CHUNK_MAX`] bytes is appended to the
//! shard's open bundle instead, and a bundle is stored once it holds
//! [`TARGET_BYTES`]: 10,000 tables of 20 rows make a handful of objects.
//!
//! The chunk keeps everything it had (its own checksum, sizes, row count);
//! the manifest adds where it lies ([`BundlePlace`]) and lists the shard's
//! bundles with their own size and checksum ([`StoredBundle`]), so copies
//! and syncs treat a bundle as any other object. Readers take a bundled
//! chunk out of its bundle and check the chunk's own checksum, so damage
//! in one part of a bundle fails only the tables whose bytes it touched.
//! A bundle is read whole (an encrypted repository seals objects whole),
//! through a small cache ([`BundleCache`]): restores take the bundled
//! tables in bundle order, so each bundle is read about once.

use std::collections::{BTreeMap, VecDeque};
use std::sync::{Arc, Mutex, PoisonError};

use crate::checksum::xxh3_hex;
use crate::manifest::{keys, BundlePlace, ChunkRef, ShardManifest, StoredBundle, TableManifest};
use crate::repo::{RepoError, Repository};

/// A range's only chunk goes into a bundle when it stores at most this.
pub const CHUNK_MAX: usize = 32 << 10;
/// A bundle is stored once it holds at least this many bytes.
pub const TARGET_BYTES: usize = 1 << 20;
/// The largest bundle shardcut writes; a manifest recording a larger one
/// is refused before anything is read (a manifest is not trusted).
pub const MAX_BYTES: u64 = (TARGET_BYTES + CHUNK_MAX) as u64;
/// Bundles a [`BundleCache`] keeps: at most 16 × [`MAX_BYTES`] of memory.
const CACHED: usize = 16;

/// Whether a backup bundles small tables' chunks: yes, unless
/// `SHARDCUT_BUNDLES=off` (to compare with one object per chunk).
pub fn enabled() -> bool {
    !std::env::var("SHARDCUT_BUNDLES").is_ok_and(|v| v.eq_ignore_ascii_case("off"))
}

/// One shard's bundles being written, shared by its dump workers.
pub struct BundleWriter {
    repo: Arc<dyn Repository>,
    backup_id: String,
    shard: String,
    state: Mutex<State>,
}

#[derive(Default)]
struct State {
    /// The bundle being filled; its index is `next`.
    open: Vec<u8>,
    next: u32,
    /// Bundles stored, by index (several workers may store at once).
    stored: BTreeMap<u32, StoredBundle>,
}

impl std::fmt::Debug for BundleWriter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BundleWriter")
            .field("backup_id", &self.backup_id)
            .field("shard", &self.shard)
            .finish_non_exhaustive()
    }
}

impl BundleWriter {
    pub fn new(repo: Arc<dyn Repository>, backup_id: &str, shard: &str) -> Self {
        BundleWriter {
            repo,
            backup_id: backup_id.to_string(),
            shard: shard.to_string(),
            state: Mutex::new(State::default()),
        }
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        // Only appends and moves happen under the lock; a panic elsewhere
        // leaves it consistent.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Appends a chunk's stored bytes (at most [`CHUNK_MAX`]) and returns
    /// where they lie. Stores the bundle (unsynced, as chunks are) when it
    /// is full. Blocking: call it from a blocking thread.
    pub fn add(&self, stored: &[u8]) -> Result<BundlePlace, RepoError> {
        let (place, full) = self.append(stored);
        if let Some(full) = full {
            self.store_full(full)?;
        }
        Ok(place)
    }

    /// Appends a chunk's stored bytes (at most [`CHUNK_MAX`]) without
    /// storing anything: returns where they lie and, when the bundle is
    /// full with them, the bundle, which the caller must pass to
    /// [`BundleWriter::store_full`] (blocking). Never blocks on I/O.
    pub fn append(&self, stored: &[u8]) -> (BundlePlace, Option<FullBundle>) {
        let mut s = self.state();
        let place = BundlePlace {
            index: s.next,
            offset: s.open.len() as u64,
        };
        s.open.extend_from_slice(stored);
        let full = if s.open.len() >= TARGET_BYTES {
            s.next += 1;
            Some(FullBundle {
                index: place.index,
                data: std::mem::take(&mut s.open),
            })
        } else {
            None
        };
        (place, full)
    }

    /// Stores a bundle [`BundleWriter::append`] filled. Blocking.
    pub fn store_full(&self, full: FullBundle) -> Result<(), RepoError> {
        self.store(full.index, &full.data)
    }

    fn store(&self, index: u32, data: &[u8]) -> Result<(), RepoError> {
        let key = keys::bundle(&self.backup_id, &self.shard, index);
        self.repo.put_unsynced(&key, data)?;
        let bundle = StoredBundle {
            key,
            bytes_stored: data.len() as u64,
            xxh3: xxh3_hex(data),
        };
        self.state().stored.insert(index, bundle);
        Ok(())
    }

    /// Stores the open bundle and returns every bundle, in index order.
    /// Call it once every chunk is in (after the workers are joined); a
    /// bundle some worker failed to store is an error here too. Blocking.
    pub fn finish(&self) -> Result<Vec<StoredBundle>, RepoError> {
        let (index, data) = {
            let mut s = self.state();
            (s.next, std::mem::take(&mut s.open))
        };
        if !data.is_empty() {
            self.store(index, &data)?;
        }
        let s = self.state();
        let out: Vec<StoredBundle> = s.stored.values().cloned().collect();
        let expected = if data.is_empty() { index } else { index + 1 };
        if out.len() != expected as usize {
            return Err(RepoError::Store {
                location: self.repo.location(),
                what: format!("bundles of {}", self.shard),
                message: format!("{} of {expected} bundles were stored", out.len()).into(),
            });
        }
        Ok(out)
    }
}

/// A bundle filled by [`BundleWriter::append`], still to be stored.
pub struct FullBundle {
    index: u32,
    data: Vec<u8>,
}

/// The bundle a chunk lies in, checked against the manifest: `Ok(None)`
/// for a chunk stored on its own.
pub fn bundle_of<'m>(
    shard: &'m ShardManifest,
    c: &ChunkRef,
) -> Result<Option<(&'m StoredBundle, u64)>, String> {
    let Some(place) = c.bundle else {
        return Ok(None);
    };
    match shard.bundles.get(place.index as usize) {
        Some(b) => Ok(Some((b, place.offset))),
        None => Err(format!(
            "chunk {} names bundle {}, which the manifest does not list (it lists {})",
            c.key,
            place.index,
            shard.bundles.len()
        )),
    }
}

/// A table's place in the order that reads each bundle about once: where
/// its first chunk lies (`None`, first, for a table whose chunks are
/// objects of their own). Restores and checks take tables in this order.
pub fn reading_order(t: &TableManifest) -> Option<BundlePlace> {
    t.chunks.first().and_then(|c| c.bundle)
}

/// Why a bundled chunk could not be read.
#[derive(Debug, thiserror::Error)]
pub enum BundleError {
    /// Reading the bundle failed (missing, unreadable, larger than
    /// recorded, failing authentication).
    #[error(transparent)]
    Repo(#[from] RepoError),
    /// The manifest places the chunk where the bundle cannot hold it.
    #[error("{0}")]
    Refused(String),
}

/// Recently read bundles, shared by the readers of one restore or check.
#[derive(Default)]
pub struct BundleCache {
    /// Least recently used first.
    entries: Mutex<VecDeque<(String, Arc<Vec<u8>>)>>,
}

impl std::fmt::Debug for BundleCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BundleCache").finish_non_exhaustive()
    }
}

impl BundleCache {
    fn entries(&self) -> std::sync::MutexGuard<'_, VecDeque<(String, Arc<Vec<u8>>)>> {
        self.entries.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The `len` stored bytes at `offset` in `bundle`, read through the
    /// cache. The chunk's own checksum is the caller's to check. Blocking.
    pub fn chunk(
        &self,
        repo: &dyn Repository,
        bundle: &StoredBundle,
        offset: u64,
        len: u64,
    ) -> Result<Vec<u8>, BundleError> {
        let data = self.bundle(repo, bundle)?;
        let end = offset
            .checked_add(len)
            .filter(|end| *end <= data.len() as u64);
        match end {
            Some(end) => Ok(data[offset as usize..end as usize].to_vec()),
            None => Err(BundleError::Refused(format!(
                "bundle {} holds {} bytes, not the {len} at {offset} the manifest places there",
                bundle.key,
                data.len()
            ))),
        }
    }

    fn bundle(
        &self,
        repo: &dyn Repository,
        bundle: &StoredBundle,
    ) -> Result<Arc<Vec<u8>>, BundleError> {
        {
            let mut entries = self.entries();
            if let Some(i) = entries.iter().position(|(k, _)| *k == bundle.key) {
                if let Some(hit) = entries.remove(i) {
                    let data = hit.1.clone();
                    entries.push_back(hit);
                    return Ok(data);
                }
            }
        }
        if bundle.bytes_stored > MAX_BYTES {
            return Err(BundleError::Refused(format!(
                "bundle {} is recorded as {} bytes, more than the {MAX_BYTES} shardcut writes: not read",
                bundle.key, bundle.bytes_stored
            )));
        }
        let data = Arc::new(repo.get_at_most(&bundle.key, bundle.bytes_stored)?);
        let mut entries = self.entries();
        entries.push_back((bundle.key.clone(), data.clone()));
        while entries.len() > CACHED {
            entries.pop_front();
        }
        Ok(data)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::repo::MemoryRepository;

    fn chunk(bundle: Option<BundlePlace>, len: usize) -> ChunkRef {
        ChunkRef {
            key: "backups/b/shards/s/db/t.r00000-p0000.zst".into(),
            rows: 1,
            bytes_raw: len as u64,
            bytes_stored: len as u64,
            xxh3: String::new(),
            raw_xxh3: String::new(),
            bundle,
        }
    }

    #[test]
    fn chunks_come_back_from_their_bundles() {
        let repo: Arc<dyn Repository> = Arc::new(MemoryRepository::default());
        let writer = BundleWriter::new(repo.clone(), "b", "s/1");
        let pieces: Vec<Vec<u8>> = (0..100u8).map(|i| vec![i; CHUNK_MAX]).collect();
        let places: Vec<BundlePlace> = pieces.iter().map(|p| writer.add(p).unwrap()).collect();
        let bundles = writer.finish().unwrap();
        // 100 × 32 KiB in bundles of at least 1 MiB: 3 full ones and the rest.
        assert_eq!(bundles.len(), 4, "{bundles:?}");
        assert_eq!(bundles[0].key, "backups/b/bundles/s%2F1/b00000.bundle");
        let shard = ShardManifest {
            bundles: bundles.clone(),
            ..Default::default()
        };
        let cache = BundleCache::default();
        for (piece, place) in pieces.iter().zip(&places) {
            let c = chunk(Some(*place), piece.len());
            let (b, offset) = bundle_of(&shard, &c).unwrap().unwrap();
            let got = cache.chunk(&*repo, b, offset, c.bytes_stored).unwrap();
            assert_eq!(&got, piece);
        }
        for b in &bundles {
            assert_eq!(xxh3_hex(&repo.get(&b.key).unwrap()), b.xxh3);
        }
    }

    #[test]
    fn hostile_places_are_refused_without_reading_past_the_bundle() {
        let repo: Arc<dyn Repository> = Arc::new(MemoryRepository::default());
        let writer = BundleWriter::new(repo.clone(), "b", "s");
        writer.add(b"0123456789").unwrap();
        let bundles = writer.finish().unwrap();
        let shard = ShardManifest {
            bundles,
            ..Default::default()
        };
        let missing = chunk(
            Some(BundlePlace {
                index: 7,
                offset: 0,
            }),
            3,
        );
        assert!(bundle_of(&shard, &missing)
            .unwrap_err()
            .contains("names bundle 7, which the manifest does not list"));
        let cache = BundleCache::default();
        let b = &shard.bundles[0];
        assert!(cache
            .chunk(&*repo, b, 8, 3)
            .unwrap_err()
            .to_string()
            .contains("holds 10 bytes, not the 3 at 8"));
        assert!(cache.chunk(&*repo, b, u64::MAX, 3).is_err());
        let huge = StoredBundle {
            bytes_stored: u64::MAX,
            ..b.clone()
        };
        assert!(BundleCache::default()
            .chunk(&*repo, &huge, 0, 1)
            .unwrap_err()
            .to_string()
            .contains("not read"));
    }
}
