//! Bytes of a captured transaction or segment in bounded memory: held in
//! memory up to a threshold, then in an anonymous temporary file (deleted
//! by the kernel when it is closed, even if the process dies). A
//! transaction of any size is captured, and its segment compressed and
//! stored, with at most the threshold of it in memory.

use std::fs::File;
use std::hash::Hasher;
use std::io::{self, Read, Seek, SeekFrom, Write};

/// Above this many bytes a transaction (or segment) goes to disk. A
/// segment is closed at 16 MiB, so only a transaction larger than this
/// ever spills. `SHARDCUT_CAPTURE_SPILL_BYTES` overrides it (a host with
/// little memory; tests use a small value to take the spilled path).
pub const DEFAULT_SPILL_BYTES: usize = 64 << 20;

/// The threshold in force: the environment's, else the default (read
/// once: every captured transaction starts a buffer).
pub fn spill_bytes() -> usize {
    static BYTES: std::sync::OnceLock<usize> = std::sync::OnceLock::new();
    *BYTES.get_or_init(|| {
        crate::knobs::count("SHARDCUT_CAPTURE_SPILL_BYTES").unwrap_or(DEFAULT_SPILL_BYTES)
    })
}

/// Tells that a transaction of `bytes` bytes captured from `shard` was
/// held in a temporary file (past [`spill_bytes`]): a DBA sees the large
/// transaction, and that its capture stayed in bounded memory.
pub fn spilled_note(shard: &str, bytes: u64) {
    tracing::info!(
        "{shard}: a transaction of {bytes} bytes was held in a temporary file while captured (past {} bytes)",
        spill_bytes()
    );
}

/// Pieces of a spilled buffer are copied through a buffer this large.
const COPY_PIECE: usize = 1 << 20;

#[derive(Debug)]
pub struct SpillBuffer {
    mem: Vec<u8>,
    file: Option<File>,
    len: u64,
    spill_at: usize,
}

/// An empty buffer that spills past [`spill_bytes`].
impl Default for SpillBuffer {
    fn default() -> Self {
        SpillBuffer::new(spill_bytes())
    }
}

impl SpillBuffer {
    pub fn new(spill_at: usize) -> Self {
        SpillBuffer {
            mem: Vec::new(),
            file: None,
            len: 0,
            spill_at,
        }
    }

    /// A buffer of bytes already in memory, never spilled.
    pub fn from_vec(mem: Vec<u8>) -> Self {
        SpillBuffer {
            len: mem.len() as u64,
            mem,
            file: None,
            spill_at: usize::MAX,
        }
    }

    pub fn len(&self) -> u64 {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    pub fn is_spilled(&self) -> bool {
        self.file.is_some()
    }

    /// The bytes, when they are all in memory.
    pub fn in_memory(&self) -> Option<&[u8]> {
        self.file.is_none().then_some(&self.mem[..])
    }

    pub fn extend(&mut self, bytes: &[u8]) -> io::Result<()> {
        self.len += bytes.len() as u64;
        if let Some(f) = &mut self.file {
            return f.write_all(bytes);
        }
        self.mem.extend_from_slice(bytes);
        if self.mem.len() > self.spill_at {
            let mut f = tempfile::tempfile()?;
            f.write_all(&self.mem)?;
            self.file = Some(f);
            self.mem = Vec::new();
        }
        Ok(())
    }

    /// Appends all of `other` (which is left as it was).
    pub fn append(&mut self, other: &mut SpillBuffer) -> io::Result<()> {
        match &mut other.file {
            None => self.extend(&other.mem),
            Some(f) => {
                f.seek(SeekFrom::Start(0))?;
                let mut piece = vec![0u8; COPY_PIECE];
                loop {
                    let n = f.read(&mut piece)?;
                    if n == 0 {
                        // Back to the end, where `other` goes on writing.
                        f.seek(SeekFrom::End(0))?;
                        return Ok(());
                    }
                    self.extend(&piece[..n])?;
                }
            }
        }
    }

    /// Empties the buffer; a file goes, and a large memory buffer is
    /// released rather than kept.
    pub fn clear(&mut self) {
        self.file = None;
        self.len = 0;
        if self.mem.capacity() > self.spill_at.min(DEFAULT_SPILL_BYTES) {
            self.mem = Vec::new();
        } else {
            self.mem.clear();
        }
    }

    /// Writes every byte to `w`, in pieces.
    pub fn write_to(&mut self, w: &mut dyn Write) -> io::Result<()> {
        match &mut self.file {
            None => w.write_all(&self.mem),
            Some(f) => {
                f.seek(SeekFrom::Start(0))?;
                let copied = io::copy(f, w)?;
                f.seek(SeekFrom::End(0))?;
                if copied != self.len {
                    return Err(io::Error::other(format!(
                        "spill file holds {copied} bytes, {} were written",
                        self.len
                    )));
                }
                Ok(())
            }
        }
    }

    /// XXH3-64 of the bytes, as [`crate::checksum::xxh3_hex`] gives it.
    pub fn xxh3_hex(&mut self) -> io::Result<String> {
        let mut h = HashingWriter::new(io::sink());
        self.write_to(&mut h)?;
        Ok(h.hex())
    }
}

/// Passes writes through and hashes them (XXH3-64) and counts them.
pub struct HashingWriter<W> {
    inner: W,
    hasher: twox_hash::XxHash3_64,
    pub written: u64,
}

impl<W: Write> HashingWriter<W> {
    pub fn new(inner: W) -> Self {
        HashingWriter {
            inner,
            hasher: twox_hash::XxHash3_64::default(),
            written: 0,
        }
    }

    pub fn hex(&self) -> String {
        format!("{:016x}", self.hasher.finish())
    }

    pub fn into_inner(self) -> W {
        self.inner
    }
}

impl<W: Write> Write for HashingWriter<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.hasher.write(&buf[..n]);
        self.written += n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::checksum::xxh3_hex;

    #[test]
    fn a_buffer_spills_past_its_threshold_and_reads_back_the_same() {
        let data: Vec<u8> = (0..200_000u32).map(|i| (i % 251) as u8).collect();
        let mut b = SpillBuffer::new(10_000);
        for piece in data.chunks(777) {
            b.extend(piece).expect("extend");
        }
        assert!(b.is_spilled());
        assert!(b.in_memory().is_none());
        assert_eq!(b.len(), data.len() as u64);
        let mut out = Vec::new();
        b.write_to(&mut out).expect("write");
        assert_eq!(out, data);
        assert_eq!(b.xxh3_hex().expect("hash"), xxh3_hex(&data));
        // Appending a spilled buffer to another, and writing on after a read.
        let mut seg = SpillBuffer::new(10_000);
        seg.extend(b"head").expect("extend");
        seg.append(&mut b).expect("append");
        b.extend(b"tail").expect("extend");
        let mut out = Vec::new();
        seg.write_to(&mut out).expect("write");
        assert_eq!(&out[..4], b"head");
        assert_eq!(&out[4..], &data[..]);
        let mut out = Vec::new();
        b.write_to(&mut out).expect("write");
        assert_eq!(&out[data.len()..], b"tail");
        b.clear();
        assert!(b.is_empty() && !b.is_spilled());
    }

    #[test]
    fn a_small_buffer_stays_in_memory() {
        let mut b = SpillBuffer::new(1 << 20);
        b.extend(b"abc").expect("extend");
        assert_eq!(b.in_memory(), Some(&b"abc"[..]));
    }
}
