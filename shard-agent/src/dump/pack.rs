//! Compressing chunks, and choosing per range whether zstd's match search
//! pays.
//!
//! At level 1 zstd spends most of its time looking for repeated strings.
//! On data with few of them (random digits, hashes, UUIDs: sysbench's
//! `c` and `pad` columns are all random digits) that search finds mostly
//! chance matches of 6-8 bytes that save almost nothing, and the ratio
//! comes from entropy-coding the literals. Profiled on a PostgreSQL
//! backup of sysbench tables, `ZSTD_compressBlock_fast` was 38 % of the
//! client's samples. A match search that skips ahead quickly where it finds
//! nothing (`targetLength` 16 for the fast strategy, a 4 KiB-entry hash
//! table) with the literals still Huffman-coded compressed a 4 MiB chunk of
//! that data at 458 MB/s instead of 268 MB/s, to 45.6 % instead of 45.1 %
//! of its size. On repetitive data the same settings store much more
//! (an orders-like table: 38 % instead of 22 %).
//!
//! So for the default level, each range's first chunk decides: its first
//! [`TRIAL_BYTES`] are compressed both ways, and the quick search is used
//! for the range if it stores at most [`QUICK_SLACK_PERCENT`] more. Any
//! other level is used as zstd defines it. Either way the output is a
//! standard zstd frame.

use zstd::zstd_safe::{CParameter, ParamSwitch};

/// Bytes of a range's first chunk compressed both ways to choose.
pub const TRIAL_BYTES: usize = 256 << 10;

/// The quick search is chosen when its trial output is at most this many
/// percent larger than level 1's.
pub const QUICK_SLACK_PERCENT: usize = 3;

/// The level whose match search is chosen per range (the default).
const ADAPTIVE_LEVEL: i32 = 1;

/// A zstd context, kept for every chunk a worker compresses.
pub struct Packer {
    context: zstd::bulk::Compressor<'static>,
    level: i32,
    /// The parameters currently set: quick search or the level's own.
    quick: bool,
}

impl Packer {
    pub fn new(level: i32) -> std::io::Result<Self> {
        Ok(Packer {
            context: zstd::bulk::Compressor::new(level)?,
            level,
            quick: false,
        })
    }

    /// Whether chunks of this level are compressed with a per-range choice.
    fn adapts(&self) -> bool {
        self.level == ADAPTIVE_LEVEL
    }

    /// Switches between the quick match search and the level's own
    /// parameters (0 restores a parameter to the level's default).
    fn set_quick(&mut self, quick: bool) -> std::io::Result<()> {
        if self.quick == quick {
            return Ok(());
        }
        let (target, hash_log, literals) = if quick {
            (16, 12, ParamSwitch::Enable)
        } else {
            (0, 0, ParamSwitch::Auto)
        };
        self.context
            .set_parameter(CParameter::TargetLength(target))?;
        self.context.set_parameter(CParameter::HashLog(hash_log))?;
        self.context
            .set_parameter(CParameter::LiteralCompressionMode(literals))?;
        self.quick = quick;
        Ok(())
    }

    /// Compresses `raw` into `out` (cleared first), with the quick search
    /// if `quick`.
    fn pack(&mut self, raw: &[u8], out: &mut Vec<u8>, quick: bool) -> std::io::Result<usize> {
        self.set_quick(quick)?;
        out.clear();
        out.reserve(zstd::zstd_safe::compress_bound(raw.len()));
        self.context.compress_to_buffer(raw, out)
    }

    /// Whether the quick search pays on data like `raw`: compresses its
    /// first [`TRIAL_BYTES`] both ways into `scratch`. Always `false`, at
    /// no cost, unless [`Packer::adapts`].
    pub fn choose(&mut self, raw: &[u8], scratch: &mut Vec<u8>) -> std::io::Result<bool> {
        if !self.adapts() {
            return Ok(false);
        }
        let sample = &raw[..raw.len().min(TRIAL_BYTES)];
        let full = self.pack(sample, scratch, false)?;
        let quick = self.pack(sample, scratch, true)?;
        Ok(quick * 100 <= full * (100 + QUICK_SLACK_PERCENT))
    }

    /// Compresses a chunk into `out`; `quick` as chosen for its range
    /// (ignored unless [`Packer::adapts`]).
    pub fn compress(&mut self, raw: &[u8], out: &mut Vec<u8>, quick: bool) -> std::io::Result<()> {
        let quick = quick && self.adapts();
        self.pack(raw, out, quick)?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Lines like sysbench's: random digits in dash-separated groups.
    fn random_digits(bytes: usize) -> Vec<u8> {
        let mut out = Vec::with_capacity(bytes + 200);
        let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
        let mut id = 0u64;
        while out.len() < bytes {
            id += 1;
            out.extend_from_slice(format!("{id}\t").as_bytes());
            for group in 0..10 {
                if group > 0 {
                    out.push(b'-');
                }
                for _ in 0..11 {
                    x ^= x << 13;
                    x ^= x >> 7;
                    x ^= x << 17;
                    out.push(b'0' + (x % 10) as u8);
                }
            }
            out.push(b'\n');
        }
        out
    }

    /// Lines with much repetition: a few names and states, counters.
    fn repetitive(bytes: usize) -> Vec<u8> {
        let states = ["pending", "shipped", "delivered", "cancelled"];
        let mut out = Vec::with_capacity(bytes + 200);
        let mut i = 0usize;
        while out.len() < bytes {
            i += 1;
            out.extend_from_slice(
                format!(
                    "{i}\tcustomer-{}@example.com\t{}\t2026-{:02}-{:02} 12:00:00\t{{\"sku\": \"SKU-{}\"}}\n",
                    i % 97,
                    states[i % 4],
                    i % 12 + 1,
                    i % 28 + 1,
                    i % 500
                )
                .as_bytes(),
            );
        }
        out
    }

    fn level1_size(raw: &[u8]) -> usize {
        zstd::bulk::compress(raw, 1).unwrap().len()
    }

    #[test]
    fn random_digits_take_the_quick_search_and_stay_within_the_slack() {
        let raw = random_digits(1 << 20);
        let mut p = Packer::new(1).unwrap();
        let mut scratch = Vec::new();
        assert!(p.choose(&raw, &mut scratch).unwrap());
        let mut out = Vec::new();
        p.compress(&raw, &mut out, true).unwrap();
        assert!(out.len() * 100 <= level1_size(&raw) * (100 + QUICK_SLACK_PERCENT));
        assert_eq!(zstd::bulk::decompress(&out, raw.len()).unwrap(), raw);
    }

    #[test]
    fn repetitive_data_keeps_the_level_and_compresses_as_level_1() {
        let raw = repetitive(1 << 20);
        let mut p = Packer::new(1).unwrap();
        let mut scratch = Vec::new();
        // A quick chunk before, so the parameters must really be restored.
        p.compress(&random_digits(1 << 16), &mut scratch, true)
            .unwrap();
        assert!(!p.choose(&raw, &mut scratch).unwrap());
        let mut out = Vec::new();
        p.compress(&raw, &mut out, false).unwrap();
        assert_eq!(out.len(), level1_size(&raw));
        assert_eq!(zstd::bulk::decompress(&out, raw.len()).unwrap(), raw);
    }

    #[test]
    fn other_levels_ignore_the_choice() {
        let raw = random_digits(1 << 18);
        let mut p = Packer::new(3).unwrap();
        assert!(!p.choose(&raw, &mut Vec::new()).unwrap());
        let mut out = Vec::new();
        p.compress(&raw, &mut out, true).unwrap();
        assert_eq!(out.len(), zstd::bulk::compress(&raw, 3).unwrap().len());
    }
}
