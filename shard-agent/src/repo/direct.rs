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
//! that refuses direct I/O answers `EINVAL`, which [`is_refusal`] recognises
//! so the caller can write the file through the page cache instead.

use std::cell::RefCell;
use std::fs::OpenOptions;
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

/// Creates `path`, which must not exist yet, holding exactly `data`, and
/// syncs it (data and size) to the device.
///
/// On error the file may exist, partly written; the caller removes it.
pub(super) fn write_new(path: &Path, data: &[u8]) -> io::Result<()> {
    let mut file = OpenOptions::new()
        .write(true)
        .create_new(true)
        .custom_flags(libc::O_DIRECT)
        .open(path)?;
    let padded = data.len().div_ceil(ALIGN) * ALIGN;
    SCRATCH.with_borrow_mut(|buf| {
        // Room for the padded data wherever the allocation starts; growing
        // zero-fills only the new part, and the tail is zeroed below.
        if buf.len() < padded + ALIGN {
            buf.resize(padded + ALIGN, 0);
        }
        let start = buf.as_ptr().align_offset(ALIGN);
        if start >= ALIGN {
            // Not expected for bytes; treated as a refusal, so the caller
            // writes through the page cache.
            return Err(io::Error::from_raw_os_error(libc::EINVAL));
        }
        let block = &mut buf[start..start + padded];
        block[..data.len()].copy_from_slice(data);
        block[data.len()..].fill(0);
        let written = file.write_all(block);
        if buf.len() > KEEP_AT_MOST {
            *buf = Vec::new();
        }
        written
    })?;
    file.set_len(data.len() as u64)?;
    file.sync_all()
}

/// The file system (or device) does not do direct I/O with this alignment.
pub(super) fn is_refusal(e: &io::Error) -> bool {
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
            match write_new(&path, &data[..len]) {
                Ok(()) => {}
                // Nothing to check where the test's directory refuses it.
                Err(e) if is_refusal(&e) => return,
                Err(e) => panic!("{len}: {e}"),
            }
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
