//! Turning a stream of encoded rows into stored chunks.
//!
//! Rows arrive as canonical lines (one row each, no trailing newline). The
//! writer hashes each line (xxh3-64, summed into an order-independent table
//! hash), buffers lines up to [`CHUNK_RAW_BYTES`], then compresses and
//! stores the buffer on a blocking thread while the caller fills another
//! buffer: reading from the server and compressing overlap, so neither the
//! server nor the compressor waits for the other. At most [`IN_FLIGHT`]
//! chunks are in flight per writer (the next full buffer waits for the
//! oldest), which is what keeps memory flat: each worker holds
//! `IN_FLIGHT + 1` raw buffers and their compressed copies, whatever the
//! table's size. Those buffers and the zstd
//! contexts live in a [`Scratch`] that a worker reuses for every range it
//! dumps: allocating them afresh per chunk, on whichever blocking thread
//! runs it, made the allocator's footprint grow with the number of chunks.

use std::hash::Hasher;
use std::sync::Arc;

use topology::Compression;
use twox_hash::XxHash3_64;

use super::pack::{Packer, TRIAL_BYTES};
use crate::bundle::BundleWriter;
use crate::checksum::xxh3_hex;
use crate::manifest::{BundlePlace, ChunkRef};
use crate::repo::{RepoError, Repository};

/// Raw bytes per chunk before compression.
pub const CHUNK_RAW_BYTES: usize = 4 << 20;

/// Row count and order-independent content hash of some rows.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct RowDigest {
    pub rows: u64,
    /// Wrapping sum of xxh3-64 of each row's canonical line.
    pub sum: u64,
}

impl RowDigest {
    pub fn add_line(&mut self, line: &[u8]) {
        self.rows += 1;
        self.sum = self.sum.wrapping_add(XxHash3_64::oneshot(line));
    }
    pub fn merge(&mut self, other: RowDigest) {
        self.rows += other.rows;
        self.sum = self.sum.wrapping_add(other.sum);
    }
    pub fn hex(&self) -> String {
        format!("{:016x}", self.sum)
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ChunkError {
    #[error("compressing {key}: {source}")]
    Compress {
        key: String,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    Store(#[from] RepoError),
    #[error("a chunk writer thread failed: {0}")]
    Join(String),
}

/// One chunk's buffers and compression context.
struct Buffers {
    raw: Vec<u8>,
    packed: Vec<u8>,
    packer: Option<Packer>,
}

impl Default for Buffers {
    fn default() -> Self {
        Buffers {
            raw: Vec::with_capacity(CHUNK_RAW_BYTES + (64 << 10)),
            packed: Vec::new(),
            packer: None,
        }
    }
}

/// A worker's reusable buffers: the one being filled and, once chunks have
/// been stored, spares for the next (the others are allocated as the first
/// chunks go out, at most [`IN_FLIGHT`] more than the one being filled).
#[derive(Default)]
pub struct Scratch {
    fill: Buffers,
    spare: Vec<Buffers>,
}

/// Chunks a writer may have being compressed and stored at once. With one,
/// the reader waited whenever a chunk's compression (slowed by sharing the
/// processors with the server) and storing (about 4 ms of direct write and
/// fsync here) took longer than filling the next buffer, and the server
/// waited on a full socket meanwhile: 37-319 ms per backup of 2 × 0.88 s
/// (docs/BENCHMARKS.md).
const IN_FLIGHT: usize = 2;

/// A range's only chunk of at most this many raw bytes is compressed and
/// bundled by the writer's own task ([`ChunkWriter::bundle_here`]); zstd
/// needs a few microseconds for it.
const INLINE_RAW_BYTES: usize = 16 << 10;
// zstd's worst case for that many bytes (`ZSTD_COMPRESSBOUND`, plus a
// frame's checksum) fits in a bundled chunk.
const _: () = assert!(
    INLINE_RAW_BYTES + (INLINE_RAW_BYTES >> 8) + (((128 << 10) - INLINE_RAW_BYTES) >> 11) + 4
        <= crate::bundle::CHUNK_MAX
);

impl Buffers {
    /// Compresses `self.raw` into `self.packed`. `quick` is the range's
    /// choice of match search (see [`pack`](super::pack)); `None` before
    /// its first chunk, which then makes it, unless it is the range's only
    /// chunk (`only`) and no larger than the trial: a choice no later chunk
    /// uses would compress it three times instead of once (a table of 20
    /// rows: zstd was a fifth of a 10,000-table backup's own processor
    /// time, docs/BENCHMARKS.md). Returns the stored bytes and the choice.
    fn compress(
        &mut self,
        compression: Compression,
        quick: Option<bool>,
        only: bool,
    ) -> std::io::Result<(&[u8], Option<bool>)> {
        match compression {
            Compression::None => Ok((&self.raw, quick)),
            Compression::Zstd(level) => {
                let packer = match &mut self.packer {
                    Some(p) => p,
                    None => self.packer.insert(Packer::new(level)?),
                };
                let quick = match quick {
                    Some(q) => q,
                    None if only && self.raw.len() <= TRIAL_BYTES => false,
                    None => packer.choose(&self.raw, &mut self.packed)?,
                };
                packer.compress(&self.raw, &mut self.packed, quick)?;
                Ok((&self.packed, Some(quick)))
            }
        }
    }
}

/// The chunk being compressed and stored on a blocking thread.
type InFlight = tokio::task::JoinHandle<Result<(ChunkRef, Buffers, Option<bool>), ChunkError>>;

/// A chunk cut from the rows: what is known of it before it is compressed.
struct Cut {
    key: String,
    rows: u64,
    raw_xxh3: String,
}

impl Cut {
    fn compress_error(&self, source: std::io::Error) -> ChunkError {
        ChunkError::Compress {
            key: self.key.clone(),
            source,
        }
    }

    /// The chunk's record once `stored` holds its `raw_len` bytes compressed.
    fn chunk(self, raw_len: u64, stored: &[u8], bundle: Option<BundlePlace>) -> ChunkRef {
        ChunkRef {
            key: self.key,
            rows: self.rows,
            bytes_raw: raw_len,
            bytes_stored: stored.len() as u64,
            xxh3: xxh3_hex(stored),
            raw_xxh3: self.raw_xxh3,
            bundle,
        }
    }
}

/// Writes one range of one table as numbered chunks under `prefix`.
pub struct ChunkWriter {
    repo: Arc<dyn Repository>,
    prefix: String,
    compression: Compression,
    scratch: Scratch,
    /// Oldest first; at most [`IN_FLIGHT`].
    in_flight: std::collections::VecDeque<InFlight>,
    rows_in_buf: u64,
    next_part: u32,
    /// This range's choice of match search, made by its first chunk.
    quick: Option<bool>,
    /// XXH3 of the buffer being filled, fed line by line while the line is
    /// still in cache: hashing the whole 4 MiB buffer afterwards read it
    /// back from memory, 9 % of a MariaDB backup's client CPU.
    raw_hash: XxHash3_64,
    pub digest: RowDigest,
    pub chunks: Vec<ChunkRef>,
    /// Where the range's only chunk goes if it is small ([`crate::bundle`]).
    bundles: Option<Arc<BundleWriter>>,
}

impl ChunkWriter {
    /// `prefix` is the key prefix of this range, e.g.
    /// `backups/ID/shards/s/db/t.r00003`; parts get `-p0000.zst` appended.
    pub fn new(
        repo: Arc<dyn Repository>,
        prefix: String,
        compression: Compression,
        mut scratch: Scratch,
    ) -> Self {
        scratch.fill.raw.clear();
        ChunkWriter {
            repo,
            prefix,
            compression,
            scratch,
            in_flight: std::collections::VecDeque::with_capacity(IN_FLIGHT),
            rows_in_buf: 0,
            next_part: 0,
            quick: None,
            raw_hash: XxHash3_64::new(),
            digest: RowDigest::default(),
            chunks: Vec::new(),
            bundles: None,
        }
    }

    /// Puts the range's chunk into `bundles` if it is the only one and
    /// stores at most [`crate::bundle::CHUNK_MAX`] bytes.
    pub fn bundled(mut self, bundles: Option<Arc<BundleWriter>>) -> Self {
        self.bundles = bundles;
        self
    }

    /// Appends one row's canonical line and stores a chunk when the buffer is full.
    pub async fn push(&mut self, line: &[u8]) -> Result<(), ChunkError> {
        self.digest.add_line(line);
        let start = self.scratch.fill.raw.len();
        self.scratch.fill.raw.extend_from_slice(line);
        self.scratch.fill.raw.push(b'\n');
        self.raw_hash.write(&self.scratch.fill.raw[start..]);
        self.rows_in_buf += 1;
        if self.scratch.fill.raw.len() >= CHUNK_RAW_BYTES {
            self.flush(false).await?;
        }
        Ok(())
    }

    /// Gives direct access to the buffer for encoders that write a row in
    /// place; call [`ChunkWriter::end_row`] after each row.
    pub fn row_buffer(&mut self) -> (&mut Vec<u8>, usize) {
        let start = self.scratch.fill.raw.len();
        (&mut self.scratch.fill.raw, start)
    }

    /// Finishes a row written in place from `start`: hashes it and adds the newline.
    pub async fn end_row(&mut self, start: usize) -> Result<(), ChunkError> {
        self.digest.add_line(&self.scratch.fill.raw[start..]);
        self.scratch.fill.raw.push(b'\n');
        self.raw_hash.write(&self.scratch.fill.raw[start..]);
        self.rows_in_buf += 1;
        if self.scratch.fill.raw.len() >= CHUNK_RAW_BYTES {
            self.flush(false).await?;
        }
        Ok(())
    }

    /// Waits for the oldest chunk in flight, if any, and records it (chunks
    /// are recorded in the order they were cut); returns its buffers for
    /// reuse.
    async fn land(&mut self) -> Result<Option<Buffers>, ChunkError> {
        let Some(handle) = self.in_flight.pop_front() else {
            return Ok(None);
        };
        let (chunk, buffers, quick) = handle
            .await
            .map_err(|e| ChunkError::Join(e.to_string()))??;
        self.chunks.push(chunk);
        self.quick = self.quick.or(quick);
        Ok(Some(buffers))
    }

    /// Sends the filled buffer to be compressed and stored, once fewer than
    /// [`IN_FLIGHT`] chunks are; the caller goes on filling another buffer.
    /// `last`: the range ends with this chunk (then, if it is also the
    /// first and small, it may go into a bundle).
    async fn flush(&mut self, last: bool) -> Result<(), ChunkError> {
        if self.scratch.fill.raw.is_empty() {
            return Ok(());
        }
        let only = last && self.next_part == 0;
        if only && self.scratch.fill.raw.len() <= INLINE_RAW_BYTES {
            if let Some(bundles) = self.bundles.clone() {
                return self.bundle_here(&bundles).await;
            }
        }
        let landed = match self.in_flight.len() >= IN_FLIGHT {
            true => self.land().await?,
            false => None,
        };
        let mut next = match landed {
            Some(b) => b,
            None => self.scratch.spare.pop().unwrap_or_default(),
        };
        next.raw.clear();
        let mut full = std::mem::replace(&mut self.scratch.fill, next);
        let cut = self.cut();
        let bundles = match only {
            true => self.bundles.clone(),
            false => None,
        };
        let repo = self.repo.clone();
        let compression = self.compression;
        // The first chunk's choice is known once it has landed; chunks cut
        // before that make their own.
        let quick = self.quick;
        self.in_flight
            .push_back(tokio::task::spawn_blocking(move || {
                let raw_len = full.raw.len() as u64;
                let (stored, quick) = full
                    .compress(compression, quick, only)
                    .map_err(|source| cut.compress_error(source))?;
                let bundle = match bundles {
                    Some(b) if stored.len() <= crate::bundle::CHUNK_MAX => Some(b.add(stored)?),
                    _ => {
                        repo.put_unsynced(&cut.key, stored)?;
                        None
                    }
                };
                let chunk = cut.chunk(raw_len, stored, bundle);
                Ok::<_, ChunkError>((chunk, full, quick))
            }));
        Ok(())
    }

    /// Ends the chunk being filled: its key, rows and raw checksum, the
    /// counters reset for the next.
    fn cut(&mut self) -> Cut {
        let key = format!("{}-p{:04}.zst", self.prefix, self.next_part);
        self.next_part += 1;
        Cut {
            key,
            rows: std::mem::take(&mut self.rows_in_buf),
            raw_xxh3: format!(
                "{:016x}",
                std::mem::replace(&mut self.raw_hash, XxHash3_64::new()).finish()
            ),
        }
    }

    /// A small range's only chunk, compressed and appended to the shard's
    /// bundle on this thread: handing it to a blocking thread and back
    /// (two thread wake-ups for a few microseconds of zstd) was the larger
    /// part of the writer's cost for a table of a few rows
    /// (docs/BENCHMARKS.md, "Many tables: what changed"). Only a bundle it
    /// fills is written, on a blocking thread.
    async fn bundle_here(&mut self, bundles: &Arc<BundleWriter>) -> Result<(), ChunkError> {
        let cut = self.cut();
        let fill = &mut self.scratch.fill;
        let raw_len = fill.raw.len() as u64;
        let (stored, quick) = fill
            .compress(self.compression, self.quick, true)
            .map_err(|source| cut.compress_error(source))?;
        // Cannot happen (`INLINE_RAW_BYTES` is checked against zstd's
        // worst case below); a bundle must never hold a larger chunk.
        if stored.len() > crate::bundle::CHUNK_MAX {
            return Err(cut.compress_error(std::io::Error::other(format!(
                "{} bytes stored, more than a bundled chunk may hold",
                stored.len()
            ))));
        }
        let (place, full) = bundles.append(stored);
        let chunk = cut.chunk(raw_len, stored, Some(place));
        if let Some(full) = full {
            let bundles = bundles.clone();
            tokio::task::spawn_blocking(move || bundles.store_full(full))
                .await
                .map_err(|e| ChunkError::Join(e.to_string()))??;
        }
        self.chunks.push(chunk);
        self.quick = self.quick.or(quick);
        self.scratch.fill.raw.clear();
        Ok(())
    }

    /// Stores what is left and returns the range's digest and chunks, and
    /// the scratch buffers for the worker's next range.
    pub async fn finish(mut self) -> Result<(RowDigest, Vec<ChunkRef>, Scratch), ChunkError> {
        if let Err(e) = self.flush(true).await {
            self.drain().await;
            return Err(e);
        }
        loop {
            match self.land().await {
                Ok(Some(b)) => self.scratch.spare.push(b),
                Ok(None) => break,
                Err(e) => {
                    self.drain().await;
                    return Err(e);
                }
            }
        }
        Ok((self.digest, self.chunks, self.scratch))
    }

    /// Waits for every chunk still in flight, whatever its outcome.
    async fn drain(&mut self) {
        while !self.in_flight.is_empty() {
            drop(self.land().await);
        }
    }

    /// Waits for the chunks in flight of a range that failed, so that nothing
    /// is written into the repository after the caller gave up (a failed
    /// backup's objects are removed once every worker has returned).
    pub async fn abandon(mut self) {
        self.drain().await;
    }
}

pub fn compress(raw: &[u8], compression: Compression) -> std::io::Result<Vec<u8>> {
    match compression {
        Compression::None => Ok(raw.to_vec()),
        Compression::Zstd(level) => zstd::bulk::compress(raw, level),
    }
}

/// Decompresses a stored chunk or schema file. zstd frames are recognised
/// by their magic number, so `compression: none` backups read the same way.
/// As [`decompress`], for stored bytes that are not trusted: refuses, in
/// bounded memory, data that decompresses to more than `limit` bytes (the
/// size the manifest records), so a small object cannot expand into all of
/// the machine's memory.
pub fn decompress_bounded(stored: &[u8], limit: u64) -> std::io::Result<Vec<u8>> {
    use std::io::Read;
    let too_big = || {
        std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!("decompresses to more than the {limit} bytes recorded for it"),
        )
    };
    if !stored.starts_with(&ZSTD_MAGIC) {
        if stored.len() as u64 > limit {
            return Err(too_big());
        }
        return Ok(stored.to_vec());
    }
    // Reserve what the record promises, but never more than a chunk's
    // worth on its word alone: the rest grows as data really arrives.
    let reserve = usize::try_from(limit.min(64 << 20)).unwrap_or(0);
    let mut out = Vec::with_capacity(reserve);
    // Within that, in one pass straight into `out`: the streaming decoder
    // below decodes into its own window and copies out of it, into a
    // buffer it zeroes first (6 % of a PostgreSQL restore's own processor
    // time, docs/BENCHMARKS.md). Bytes that do not fit, or do not decode,
    // go the streaming way for the error that says which.
    if reserve as u64 == limit {
        let mut one_pass = zstd::bulk::Decompressor::new()?;
        if one_pass.decompress_to_buffer(stored, &mut out).is_ok() && out.len() as u64 <= limit {
            return Ok(out);
        }
        out.clear();
    }
    zstd::stream::read::Decoder::new(stored)?
        .take(limit.saturating_add(1))
        .read_to_end(&mut out)?;
    if out.len() as u64 > limit {
        return Err(too_big());
    }
    Ok(out)
}

/// The first bytes of a zstd frame; stored bytes without them are stored
/// as they are.
const ZSTD_MAGIC: [u8; 4] = [0x28, 0xB5, 0x2F, 0xFD];

/// Whether `stored` decompresses, without keeping what it decompresses to
/// (for an object whose raw size nothing records: `verify` of a capture
/// segment).
pub fn decompresses(stored: &[u8]) -> std::io::Result<()> {
    if stored.starts_with(&ZSTD_MAGIC) {
        zstd::stream::copy_decode(stored, std::io::sink())?;
    }
    Ok(())
}

pub fn decompress(stored: &[u8]) -> std::io::Result<Vec<u8>> {
    if stored.starts_with(&ZSTD_MAGIC) {
        zstd::stream::decode_all(stored)
    } else {
        Ok(stored.to_vec())
    }
}

/// Compresses and stores a whole small object (schema files).
pub async fn store_file(
    repo: Arc<dyn Repository>,
    key: String,
    raw: Vec<u8>,
    compression: Compression,
) -> Result<(u64, u64, String), ChunkError> {
    tokio::task::spawn_blocking(move || {
        let stored = compress(&raw, compression).map_err(|source| ChunkError::Compress {
            key: key.clone(),
            source,
        })?;
        repo.put_unsynced(&key, &stored)?;
        Ok((raw.len() as u64, stored.len() as u64, xxh3_hex(&stored)))
    })
    .await
    .map_err(|e| ChunkError::Join(e.to_string()))?
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::repo::MemoryRepository;

    /// A range's only chunk, no larger than the trial, is compressed once
    /// with the level's own search (no choice is made for later chunks that
    /// do not exist); a first chunk with more to come still chooses, and
    /// random digits choose the quick search.
    #[test]
    fn a_ranges_only_small_chunk_makes_no_choice() {
        let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
        let mut b = Buffers::default();
        while b.raw.len() < 64 << 10 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            b.raw.push(b'0' + (x % 10) as u8);
            if x % 40 == 0 {
                b.raw.push(b'\n');
            }
        }
        let raw = b.raw.clone();
        let level = Compression::Zstd(1);
        let (stored, quick) = b.compress(level, None, true).unwrap();
        assert_eq!(quick, Some(false));
        assert_eq!(decompress(stored).unwrap(), raw);
        let (stored, quick) = b.compress(level, None, false).unwrap();
        assert_eq!(quick, Some(true), "random digits take the quick search");
        assert_eq!(decompress(stored).unwrap(), raw);
        // Larger than the trial, even an only chunk chooses.
        while b.raw.len() <= TRIAL_BYTES {
            b.raw.extend_from_slice(&raw);
        }
        let (_, quick) = b.compress(level, None, true).unwrap();
        assert_eq!(quick, Some(true));
    }

    #[test]
    fn a_bomb_is_refused_at_its_recorded_size() {
        let raw = vec![b'x'; 10 << 20];
        let stored = compress(&raw, Compression::Zstd(3)).unwrap();
        assert!(stored.len() < 64 << 10, "{}", stored.len());
        assert_eq!(decompress_bounded(&stored, raw.len() as u64).unwrap(), raw);
        let err = decompress_bounded(&stored, (raw.len() / 100) as u64).unwrap_err();
        assert!(
            err.to_string().contains("more than the 104857 bytes"),
            "{err}"
        );
        assert!(decompress_bounded(b"plain", 4).is_err());
        assert_eq!(decompress_bounded(b"plain", 5).unwrap(), b"plain");
    }

    #[test]
    fn frames_decode_in_one_pass_or_fail_as_the_stream_does() {
        // Text that compresses, in two frames back to back: both decode.
        let raw: Vec<u8> = (0..200_000u32)
            .flat_map(|i| format!("{i}\t{}\n", i.wrapping_mul(2_654_435_761)).into_bytes())
            .collect();
        let (a, b) = raw.split_at(raw.len() / 3);
        let mut two = compress(a, Compression::Zstd(1)).unwrap();
        two.extend(compress(b, Compression::Zstd(1)).unwrap());
        assert_eq!(decompress_bounded(&two, raw.len() as u64).unwrap(), raw);
        // One byte short of its size, or cut off: an error. With a byte
        // changed: an error, or bytes that are not the original (the
        // chunk's checksum, checked first, is what refuses them).
        let err = decompress_bounded(&two, raw.len() as u64 - 1).unwrap_err();
        assert!(err.to_string().contains("more than the"), "{err}");
        let cut = &two[..two.len() - 7];
        assert!(decompress_bounded(cut, raw.len() as u64).is_err());
        let mut changed = two.clone();
        let mid = changed.len() / 2;
        changed[mid] ^= 0x5A;
        if let Ok(out) = decompress_bounded(&changed, raw.len() as u64) {
            assert_ne!(out, raw);
        }
    }

    fn writer(level: i32) -> (Arc<dyn Repository>, ChunkWriter) {
        let repo: Arc<dyn Repository> = Arc::new(MemoryRepository::default());
        let w = ChunkWriter::new(
            repo.clone(),
            "t/r00000".into(),
            Compression::Zstd(level),
            Scratch::default(),
        );
        (repo, w)
    }

    #[tokio::test]
    async fn chunks_round_trip_and_digest_is_order_independent() {
        let (repo, mut w) = writer(3);
        let big = vec![b'x'; 1 << 20];
        for i in 0..10u8 {
            let mut line = big.clone();
            line[0] = i;
            w.push(&line).await.unwrap();
        }
        let (digest, chunks, _) = w.finish().await.unwrap();
        assert_eq!(digest.rows, 10);
        assert_eq!(chunks.len(), 3, "4 MiB chunks of 1 MiB rows");
        // Recorded in the order they were cut, though several were in flight.
        let keys: Vec<&str> = chunks.iter().map(|c| c.key.as_str()).collect();
        assert_eq!(
            keys,
            [
                "t/r00000-p0000.zst",
                "t/r00000-p0001.zst",
                "t/r00000-p0002.zst"
            ]
        );
        assert_eq!(chunks.iter().map(|c| c.rows).sum::<u64>(), 10);
        let mut again = RowDigest::default();
        for c in chunks.iter().rev() {
            let raw = decompress(&repo.get(&c.key).unwrap()).unwrap();
            assert_eq!(format!("{:016x}", XxHash3_64::oneshot(&raw)), c.raw_xxh3);
            for line in raw.split(|b| *b == b'\n').filter(|l| !l.is_empty()) {
                again.add_line(line);
            }
        }
        assert_eq!(again, digest);
    }

    /// Small ranges' only chunks, bundled by the writer's own task (at most
    /// `INLINE_RAW_BYTES`) or on a blocking thread (larger), with one
    /// scratch for all of them: each comes back from its bundle whole, with
    /// its recorded checksums and rows, and the bundles they filled are
    /// stored.
    #[tokio::test]
    async fn small_ranges_come_back_from_their_bundles() {
        let repo: Arc<dyn Repository> = Arc::new(MemoryRepository::default());
        let bundles = Arc::new(BundleWriter::new(repo.clone(), "b", "s"));
        let mut scratch = Scratch::default();
        let mut x: u64 = 0x2545_F491_4F6C_DD1D;
        let mut expected = Vec::new();
        let mut chunks = Vec::new();
        for range in 0..150usize {
            let mut w = ChunkWriter::new(
                repo.clone(),
                format!("t{range}/r00000"),
                Compression::Zstd(1),
                scratch,
            )
            .bundled(Some(bundles.clone()));
            // Random text, hardly compressible: 150 ranges fill bundles.
            let size = if range % 10 == 0 { 24 << 10 } else { 12 << 10 };
            let mut raw = Vec::new();
            while raw.len() < size {
                let mut line = Vec::new();
                for _ in 0..100 {
                    x ^= x << 13;
                    x ^= x >> 7;
                    x ^= x << 17;
                    line.push(b'a' + (x % 26) as u8);
                }
                w.push(&line).await.unwrap();
                raw.extend_from_slice(&line);
                raw.push(b'\n');
            }
            let (digest, mut got, s) = w.finish().await.unwrap();
            scratch = s;
            assert_eq!(got.len(), 1, "range {range}");
            assert_eq!(got[0].rows, digest.rows);
            assert!(got[0].bundle.is_some(), "range {range} is bundled");
            expected.push(raw);
            chunks.append(&mut got);
        }
        let stored = tokio::task::spawn_blocking(move || bundles.finish())
            .await
            .unwrap()
            .unwrap();
        assert!(stored.len() >= 2, "{} bundles", stored.len());
        let shard = crate::manifest::ShardManifest {
            bundles: stored,
            ..Default::default()
        };
        let cache = crate::bundle::BundleCache::default();
        for (c, raw) in chunks.iter().zip(&expected) {
            let (b, offset) = crate::bundle::bundle_of(&shard, c).unwrap().unwrap();
            let bytes = cache.chunk(&*repo, b, offset, c.bytes_stored).unwrap();
            assert_eq!(xxh3_hex(&bytes), c.xxh3, "{}", c.key);
            let back = decompress(&bytes).unwrap();
            assert_eq!(&back, raw, "{}", c.key);
            assert_eq!(c.bytes_raw, raw.len() as u64);
            assert_eq!(format!("{:016x}", XxHash3_64::oneshot(&back)), c.raw_xxh3);
        }
    }

    /// Fails the first put at once; every later put is slow and counted.
    /// Everything else is [`NullRepository`]'s.
    #[derive(Debug, Default)]
    struct FirstPutFails {
        puts: std::sync::atomic::AtomicUsize,
        stored: std::sync::atomic::AtomicUsize,
        rest: crate::repo::NullRepository,
    }

    impl Repository for FirstPutFails {
        fn location(&self) -> String {
            self.rest.location()
        }
        fn put(&self, key: &str, _data: &[u8]) -> Result<(), RepoError> {
            use std::sync::atomic::Ordering;
            if self.puts.fetch_add(1, Ordering::SeqCst) == 0 {
                return Err(RepoError::Io {
                    location: self.location(),
                    op: "writing",
                    key: key.to_string(),
                    source: std::io::Error::other("device gone"),
                });
            }
            std::thread::sleep(std::time::Duration::from_millis(200));
            self.stored.fetch_add(1, Ordering::SeqCst);
            Ok(())
        }
        fn put_if_absent(&self, key: &str, data: &[u8]) -> Result<(), RepoError> {
            self.put(key, data)
        }
        fn get(&self, key: &str) -> Result<Vec<u8>, RepoError> {
            self.rest.get(key)
        }
        fn list(&self, prefix: &str) -> Result<Vec<String>, RepoError> {
            self.rest.list(prefix)
        }
        fn delete(&self, key: &str) -> Result<(), RepoError> {
            self.rest.delete(key)
        }
        fn sync_names(&self, keys: &[&str]) -> Result<(), RepoError> {
            self.rest.sync_names(keys)
        }
    }

    /// A failed store is reported only once no other chunk of the range
    /// is still being stored: the caller removes a failed backup's objects
    /// right after, and nothing may land behind that.
    #[tokio::test]
    async fn a_failed_finish_leaves_nothing_being_stored() {
        use std::sync::atomic::Ordering;
        let repo = Arc::new(FirstPutFails::default());
        let mut w = ChunkWriter::new(
            repo.clone(),
            "t/r00000".into(),
            Compression::None,
            Scratch::default(),
        );
        // Two full chunks and a partial one: the first fails, the second
        // is still being stored when the third is cut.
        let row = vec![b'x'; 1 << 20];
        for _ in 0..9 {
            w.push(&row).await.unwrap();
        }
        let err = w.finish().await.err().expect("the first put failed");
        assert!(err.to_string().contains("device gone"), "{err}");
        let stored = repo.stored.load(Ordering::SeqCst);
        let puts = repo.puts.load(Ordering::SeqCst);
        tokio::time::sleep(std::time::Duration::from_millis(400)).await;
        assert_eq!(repo.stored.load(Ordering::SeqCst), stored);
        assert_eq!(repo.puts.load(Ordering::SeqCst), puts);
        assert_eq!(puts, stored + 1, "every put started had ended");
    }

    /// Rows written in place, of many sizes: each chunk's `raw_xxh3`, fed
    /// line by line, is the XXH3 of the chunk's whole raw bytes.
    #[tokio::test]
    async fn raw_checksums_fed_by_line_match_the_whole_chunk() {
        let (repo, mut w) = writer(1);
        for i in 0..60_000u32 {
            let (buf, start) = w.row_buffer();
            let len = (i as usize * 7919) % 300;
            buf.extend((0..len).map(|j| b'a' + ((i as usize + j) % 26) as u8));
            w.end_row(start).await.unwrap();
            w.push(b"1\tsecond kind of row").await.unwrap();
        }
        let (digest, chunks, _) = w.finish().await.unwrap();
        assert_eq!(digest.rows, 120_000);
        assert!(chunks.len() >= 2, "{} chunks", chunks.len());
        for c in &chunks {
            let raw = decompress(&repo.get(&c.key).unwrap()).unwrap();
            assert_eq!(
                format!("{:016x}", XxHash3_64::oneshot(&raw)),
                c.raw_xxh3,
                "{}",
                c.key
            );
        }
    }
}
