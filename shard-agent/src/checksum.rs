//! Checksums of whole chunks, segments and files: XXH3-64, printed as 16
//! hex digits. Computed with twox-hash, which picks AVX2 (or NEON) at run
//! time: xxhash-rust only uses what the build targets (SSE2 for a portable
//! x86-64 binary), and chunk checksums were 9 % of a MariaDB backup's client
//! CPU. Both compute the same XXH3 (tested below against xxhash-rust, kept
//! as a dev-dependency for that test only), so every stored checksum stays
//! valid. Row hashes and names are hashed with twox-hash too: one XXH3
//! implementation in the program.

/// XXH3-64 of `data` as 16 lowercase hex digits.
pub fn xxh3_hex(data: &[u8]) -> String {
    format!("{:016x}", twox_hash::XxHash3_64::oneshot(data))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn same_as_xxhash_rust_at_every_length_class() {
        let data: Vec<u8> = (0..(1usize << 20) + 4099)
            .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
            .collect();
        for len in [
            0,
            1,
            3,
            4,
            8,
            9,
            16,
            17,
            128,
            129,
            240,
            241,
            1024,
            1025,
            65_536,
            data.len(),
        ] {
            assert_eq!(
                xxh3_hex(&data[..len]),
                format!("{:016x}", xxhash_rust::xxh3::xxh3_64(&data[..len])),
                "length {len}"
            );
        }
    }
}
