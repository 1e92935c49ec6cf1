//! Repository integrity of one backup, without any database: every chunk
//! and schema file the manifest names must be present, of the recorded
//! size and checksum, decompress, parse into rows of the table's width, and
//! add up to the recorded row count and content hash.
//!
//! Chunks are checked in parallel on rayon's pool; each check holds one
//! decompressed chunk (at most a few MiB), so memory stays bounded.

use crate::checksum::xxh3_hex;
use rayon::prelude::*;
use serde::Serialize;

use crate::bundle::{bundle_of, reading_order, BundleCache, BundleError};
use crate::dump::chunk::{decompress_bounded, decompresses, RowDigest};
use crate::manifest::{ChunkRef, Manifest, ShardManifest, TableManifest};
use crate::repo::{RepoError, Repository};

/// One damaged object.
#[derive(Debug, Clone, Serialize)]
pub struct Damage {
    pub shard: String,
    /// `db.table`, or `None` for a schema file.
    pub table: Option<String>,
    pub key: String,
    pub problem: String,
}

#[derive(Debug, Clone, Serialize)]
pub struct TableCheck {
    pub shard: String,
    pub table: String,
    pub rows_expected: u64,
    /// Rows found in the chunks that could be read.
    pub rows_found: u64,
    /// Row count and content hash both match, and no chunk is damaged.
    pub hash_ok: bool,
}

#[derive(Debug, Default, Serialize)]
pub struct Integrity {
    pub tables: Vec<TableCheck>,
    pub damage: Vec<Damage>,
}

impl Integrity {
    pub fn ok(&self) -> bool {
        self.damage.is_empty() && self.tables.iter().all(|t| t.hash_ok)
    }
}

/// The fields of one canonical line: TAB-separated for both engines. A
/// row of a table without columns (PostgreSQL allows them) is an empty
/// line, as is a row of one empty text: no field for the one, one for
/// the other.
fn width(line: &[u8], columns: usize) -> usize {
    if line.is_empty() && columns == 0 {
        return 0;
    }
    line.iter().filter(|b| **b == b'\t').count() + 1
}

/// Where a chunk's bytes are read from: the repository, and the bundles
/// of the shard its table belongs to.
struct Source<'a> {
    repo: &'a dyn Repository,
    shard: &'a ShardManifest,
    bundles: &'a BundleCache,
}

/// Checks one chunk; returns its rows' digest or what is wrong with it.
fn check_chunk(from: &Source<'_>, t: &TableManifest, c: &ChunkRef) -> Result<RowDigest, String> {
    let stored = match bundle_of(from.shard, c)? {
        Some((bundle, offset)) => from
            .bundles
            .chunk(from.repo, bundle, offset, c.bytes_stored)
            .map_err(|e| match e {
                BundleError::Repo(RepoError::NotFound { .. }) => {
                    format!("missing (bundle {})", bundle.key)
                }
                other => other.to_string(),
            })?,
        // No larger than recorded: a replaced object is refused by its
        // size before it is read into memory.
        None => from
            .repo
            .get_at_most(&c.key, c.bytes_stored)
            .map_err(|e| match e {
                RepoError::NotFound { .. } => "missing".to_string(),
                other => other.to_string(),
            })?,
    };
    if stored.len() as u64 != c.bytes_stored {
        return Err(format!(
            "size {} bytes, manifest says {}",
            stored.len(),
            c.bytes_stored
        ));
    }
    let sum = xxh3_hex(&stored);
    if sum != c.xxh3 {
        return Err(format!(
            "checksum mismatch (stored {sum}, manifest {})",
            c.xxh3
        ));
    }
    let raw = decompress_bounded(&stored, c.bytes_raw)
        .map_err(|e| format!("does not decompress: {e}"))?;
    if xxh3_hex(&raw) != c.raw_xxh3 || raw.len() as u64 != c.bytes_raw {
        return Err("decompressed content differs from what was written".into());
    }
    let mut digest = RowDigest::default();
    // Every row ends with a line end: a chunk of one row whose only
    // column is empty text is "\n", one row, not none.
    let body = match raw.strip_suffix(b"\n") {
        Some(body) => Some(body),
        None if raw.is_empty() => None,
        None => return Err("its last row has no line end".into()),
    };
    if let Some(body) = body {
        for (i, line) in body.split(|b| *b == b'\n').enumerate() {
            let width = width(line, t.columns.len());
            if width != t.columns.len() {
                return Err(format!(
                    "row {} has {} fields, the table has {} columns",
                    i + 1,
                    width,
                    t.columns.len()
                ));
            }
            digest.add_line(line);
        }
    }
    if digest.rows != c.rows {
        return Err(format!("{} rows, manifest says {}", digest.rows, c.rows));
    }
    Ok(digest)
}

/// What is wrong with a whole stored object (schema file, capture
/// segment), if anything: missing, larger than the `stored` bytes
/// recorded for it (refused before it is read), checksum, or it does not
/// decompress: within `raw` bytes where its manifest records that size,
/// else (a capture segment, whose raw size only its own description
/// records) streamed into nothing, so that no size is held in memory.
fn object_problem(
    repo: &dyn Repository,
    key: &str,
    xxh3: &str,
    (stored, raw): (u64, Option<u64>),
) -> Option<String> {
    match repo.get_at_most(key, stored) {
        Err(RepoError::NotFound { .. }) => Some("missing".to_string()),
        Err(e) => Some(e.to_string()),
        Ok(d) if xxh3_hex(&d) != xxh3 => Some("checksum mismatch".to_string()),
        Ok(d) => match raw {
            Some(limit) => decompress_bounded(&d, limit).err(),
            None => decompresses(&d).err(),
        }
        .map(|e| format!("does not decompress: {e}")),
    }
}

/// Checks every object of backup `m` in `repo`. For an incremental
/// backup: every captured segment it lists (its full base is a backup of
/// its own, checked with it by the caller).
pub fn check_backup(repo: &dyn Repository, m: &Manifest) -> Integrity {
    let mut out = Integrity::default();
    if let Some(chain) = &m.chain {
        for seg in &chain.segments {
            if let Some(problem) =
                object_problem(repo, &seg.key, &seg.xxh3, (seg.bytes_stored, None))
            {
                let shard = seg.key.split('/').nth(1).unwrap_or("?").to_string();
                out.damage.push(Damage {
                    shard,
                    table: None,
                    key: seg.key.clone(),
                    problem,
                });
            }
        }
        return out;
    }
    let bundles = BundleCache::default();
    for (shard, s) in &m.shards {
        let from = Source {
            repo,
            shard: s,
            bundles: &bundles,
        };
        for f in &s.schema {
            if let Some(problem) =
                object_problem(repo, &f.key, &f.xxh3, (f.bytes_stored, Some(f.bytes_raw)))
            {
                out.damage.push(Damage {
                    shard: shard.clone(),
                    table: None,
                    key: f.key.clone(),
                    problem,
                });
            }
        }
        // Tables in the order of their bundles, so that each bundle is read
        // about once (rayon hands each thread a run of neighbours);
        // reported in manifest order.
        let mut order: Vec<usize> = (0..s.table_list.len()).collect();
        order.sort_by_key(|&i| reading_order(&s.table_list[i]));
        let mut checked: Vec<(usize, TableCheck, Vec<Damage>)> = order
            .par_iter()
            .map(|&i| {
                let t = &s.table_list[i];
                let results: Vec<Result<RowDigest, String>> = t
                    .chunks
                    .par_iter()
                    .map(|c| check_chunk(&from, t, c))
                    .collect();
                let mut digest = RowDigest::default();
                let mut damage = Vec::new();
                for (c, r) in t.chunks.iter().zip(results) {
                    match r {
                        Ok(d) => digest.merge(d),
                        Err(problem) => damage.push(Damage {
                            shard: shard.clone(),
                            table: Some(t.qualified()),
                            key: c.key.clone(),
                            problem,
                        }),
                    }
                }
                let check = TableCheck {
                    shard: shard.clone(),
                    table: t.qualified(),
                    rows_expected: t.rows,
                    rows_found: digest.rows,
                    hash_ok: damage.is_empty()
                        && digest.rows == t.rows
                        && digest.hex() == t.content_hash,
                };
                (i, check, damage)
            })
            .collect();
        checked.sort_by_key(|(i, ..)| *i);
        for (_, check, mut damage) in checked {
            out.tables.push(check);
            out.damage.append(&mut damage);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::dump::chunk::{ChunkWriter, Scratch};
    use crate::manifest::Column;
    use crate::repo::MemoryRepository;

    /// One column of text: a chunk holding `rows`, checked as verify does.
    async fn checked(rows: &[&[u8]]) -> Result<RowDigest, String> {
        checked_of(1, rows).await
    }

    /// A table of `columns` columns of text: a chunk holding `rows`,
    /// checked as verify does.
    async fn checked_of(columns: usize, rows: &[&[u8]]) -> Result<RowDigest, String> {
        let repo: Arc<dyn Repository> = Arc::new(MemoryRepository::default());
        let mut w = ChunkWriter::new(
            repo.clone(),
            "t/r00000".into(),
            topology::Compression::Zstd(1),
            Scratch::default(),
        );
        for row in rows {
            w.push(row).await.unwrap();
        }
        let (digest, chunks, _) = w.finish().await.unwrap();
        let table = TableManifest {
            database: "d".into(),
            schema: None,
            name: "t".into(),
            columns: (0..columns)
                .map(|i| Column {
                    name: format!("c{i}"),
                    data_type: "text".into(),
                })
                .collect(),
            primary_key: vec![],
            references: vec![],
            system_versioned: false,
            rows: digest.rows,
            content_hash: String::new(),
            bytes_raw: 0,
            bytes_stored: 0,
            duration_ms: 0,
            chunks: chunks.clone(),
        };
        let shard = ShardManifest::default();
        let bundles = BundleCache::default();
        let from = Source {
            repo: repo.as_ref(),
            shard: &shard,
            bundles: &bundles,
        };
        let found = check_chunk(&from, &table, &chunks[0])?;
        assert_eq!(found, digest);
        Ok(found)
    }

    /// A row whose only column is empty text is stored as a bare line end:
    /// a chunk of that one row holds one row, not none (verify called such
    /// a backup damaged: "0 rows, manifest says 1").
    #[tokio::test]
    async fn rows_of_one_empty_column_are_counted() {
        assert_eq!(checked(&[b""]).await.unwrap().rows, 1);
        assert_eq!(checked(&[b"", b""]).await.unwrap().rows, 2);
        assert_eq!(checked(&[b"a", b"", b"b"]).await.unwrap().rows, 3);
    }

    /// A PostgreSQL table without columns holds rows as empty lines: verify
    /// called such a backup damaged ("row 1 has 1 fields, the table has 0
    /// columns"), while the restore brought it back.
    #[tokio::test]
    async fn rows_of_a_table_without_columns_are_counted() {
        assert_eq!(checked_of(0, &[b"", b"", b""]).await.unwrap().rows, 3);
        assert!(checked_of(0, &[b"", b"x"])
            .await
            .unwrap_err()
            .contains("row 2 has 1 fields"));
        assert!(checked_of(2, &[b""])
            .await
            .unwrap_err()
            .contains("row 1 has 1 fields"));
    }
}
