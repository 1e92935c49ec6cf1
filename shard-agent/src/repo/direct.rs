//! Writing a new file around the page cache (`O_DIRECT`).
//!
//! Why: a buffered write copies every chunk into the page cache, and the
//! fsync that makes it durable then writes it back from there. On the
//! machines measured (docs/BENCHMARKS.md, "Writing chunks around the page
//! cache") that cost the backup's process several times the CPU of handing
//! the buffer to the device directly. It also keeps a backup that runs on a
//! database host from filling the page cache with chunks nobody reads soon,
//! evicting the database's own cached pages.
//!
//! Direct I/O needs the buffer's address, the file offset and the length
//! aligned to the device's logical block size. [`ALIGN`] (4 KiB) satisfies
//! every common device; the data is copied into an aligned scratch buffer,
//! padded with zeros to a whole block, written at offset 0, and the file is
//! then cut back to the data's length before it is synced. A file system
//! that refuses direct I/O answers `EINVAL`, reported as
//! [`Outcome::Refused`] so the caller can write the file through the page
//! cache instead.

use std::cell::RefCell;
use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

/// Alignment of the buffer address, offset and length.
const ALIGN: usize = 4096;
/// A scratch buffer larger than this is freed after use instead of kept for
/// the thread's next write, so one odd large object does not stay resident.
const KEEP_AT_MOST: usize = 16 << 20;

thread_local! {
    /// Per thread: writes run on the blocking pool, one at a time a thread.
    static SCRATCH: RefCell<Vec<u8>> = const { RefCell::new(Vec::new()) };
}

/// What became of a direct write.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Outcome {
    /// The file holds the data and is synced.
    Written,
    /// The file system refused direct I/O before anything was written
    /// (`EINVAL` from the open or the first write). The file may exist,
    /// empty; the caller removes it and writes through the page cache.
    Refused,
}

/// Creates `path`, which must not exist yet, holding exactly `data`, and
/// syncs it (data and size) to the device.
///
/// On error the file may exist, partly written; the caller removes it.
pub(super) fn write_new(path: &Path, data: &[u8]) -> io::Result<Outcome> {
    let mut file = match OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(super::FILE_MODE)
        .custom_flags(libc::O_DIRECT)
        .open(path)
    {
        Ok(f) => f,
        Err(e) if refused(&e) => return Ok(Outcome::Refused),
        Err(e) => return Err(e),
    };
    let padded = data.len().div_ceil(ALIGN) * ALIGN;
    let outcome = SCRATCH.with_borrow_mut(|buf| {
        // Room for the padded data wherever the allocation starts; growing
        // zero-fills only the new part, and the tail is zeroed below.
        if buf.len() < padded + ALIGN {
            buf.resize(padded + ALIGN, 0);
        }
        let start = buf.as_ptr().align_offset(ALIGN);
        if start >= ALIGN {
            // Not expected for bytes; the page cache can take it instead.
            return Ok(Outcome::Refused);
        }
        let block = &mut buf[start..start + padded];
        block[..data.len()].copy_from_slice(data);
        block[data.len()..].fill(0);
        let outcome = write_block(&mut file, block);
        if buf.len() > KEEP_AT_MOST {
            *buf = Vec::new();
        }
        outcome
    })?;
    if outcome == Outcome::Written {
        file.set_len(data.len() as u64)?;
        file.sync_all()?;
    }
    Ok(outcome)
}

/// Writes the whole aligned `block` at the file's start. A refusal counts
/// only before the first byte: an `EINVAL` later (a short write left the
/// offset unaligned) is an error like any other, so a full disk is
/// reported as one instead of turning into a quiet fallback.
fn write_block(file: &mut File, block: &[u8]) -> io::Result<Outcome> {
    let mut done = 0;
    while done < block.len() {
        match file.write(&block[done..]) {
            Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
            Ok(n) => done += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) if done == 0 && refused(&e) => return Ok(Outcome::Refused),
            Err(e) => return Err(e),
        }
    }
    Ok(Outcome::Written)
}

/// The file system (or device) does not do direct I/O with this alignment.
fn refused(e: &io::Error) -> bool {
    e.raw_os_error() == Some(libc::EINVAL)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exact_bytes_at_every_block_boundary() {
        let dir = tempfile::tempdir().unwrap();
        let data: Vec<u8> = (0..3 * ALIGN + 7).map(|i| (i % 251) as u8 + 1).collect();
        for len in [0, 1, ALIGN - 1, ALIGN, ALIGN + 1, 2 * ALIGN, data.len()] {
            let path = dir.path().join(format!("f{len}"));
            // The test directory is on the file system the integration
            // tests and benchmarks keep their repositories on.
            assert_eq!(
                write_new(&path, &data[..len]).unwrap(),
                Outcome::Written,
                "length {len}: the test directory's file system refused direct I/O"
            );
            assert_eq!(std::fs::read(&path).unwrap(), &data[..len], "length {len}");
        }
    }

    #[test]
    fn never_replaces_an_existing_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("x");
        std::fs::write(&path, b"kept").unwrap();
        let e = write_new(&path, b"new").unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::AlreadyExists);
        assert_eq!(std::fs::read(&path).unwrap(), b"kept");
    }
}
