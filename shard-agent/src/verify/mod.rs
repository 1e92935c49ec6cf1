//! Verification: a backup checked against its own manifest (`integrity`:
//! every object present and matching its checksum, every row count and
//! table hash recomputed from the chunks), and a live table read back and
//! digested as the dump would (`readback`), which restores and drills
//! compare against the manifest.

pub mod integrity;
pub mod readback;
