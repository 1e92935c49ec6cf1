//! Storing and reading capture segments.
//!
//! A segment is two objects: the data (`<sort>.<ext>.zst`) and its
//! description (`<sort>.json`), written in that order. A description is
//! only written once its data is stored, so a listed segment is complete;
//! data without a description (a crash between the two) is ignored and
//! later replaced.

use super::spill::{HashingWriter, SpillBuffer};
use crate::checksum::xxh3_hex;
use serde::{Deserialize, Serialize};
use topology::Compression;

use super::{keys, CaptureError};
use crate::dump::chunk::{compress, decompress_bounded};
use crate::position::Position;
use crate::repo::Repository;

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SegmentMeta {
    pub shard: String,
    pub stream: String,
    /// Number of the segment in its stream (0, 1, …): a missing one shows
    /// as a gap.
    pub seq: u64,
    /// Key of the data object.
    pub key: String,
    /// The position just before the segment's first transaction.
    pub first: Position,
    /// The position just after its last transaction.
    pub last: Position,
    pub first_commit: Option<String>,
    pub last_commit: Option<String>,
    pub transactions: u64,
    pub bytes_raw: u64,
    pub bytes_stored: u64,
    /// xxh3-64 of the stored bytes, hex.
    pub xxh3: String,
    /// xxh3-64 of the raw bytes, hex.
    pub raw_xxh3: String,
    /// The capture generation the segment belongs to (see
    /// [`super::StreamState::generation`]).
    #[serde(default)]
    pub generation: u32,
}

impl SegmentMeta {
    /// The description of segment `seq` of `shard`'s `stream`, from
    /// `first` to `last`, before [`store_segment`] completes it with its
    /// key, sizes and checksums; no commit and no transaction yet.
    pub fn unstored(
        (shard, stream): (&str, &str),
        (seq, generation): (u64, u32),
        first: Position,
        last: Position,
    ) -> SegmentMeta {
        SegmentMeta {
            shard: shard.to_string(),
            stream: stream.to_string(),
            seq,
            key: String::new(),
            first,
            last,
            first_commit: None,
            last_commit: None,
            transactions: 0,
            bytes_raw: 0,
            bytes_stored: 0,
            xxh3: String::new(),
            raw_xxh3: String::new(),
            generation,
        }
    }
}

/// A segment's data as captured, before it is stored.
pub struct SegmentData<'a> {
    /// Orders the segments of a stream (their keys sort by it).
    pub sort: &'a str,
    /// Names the raw format (`binlog`, `pgoutput`).
    pub ext: &'a str,
    /// In memory, or spilled to a file when a transaction was that large.
    pub raw: &'a mut SpillBuffer,
}

/// A spilled segment compressed, in pieces, into an anonymous temporary
/// file: its stored bytes' file, their XXH3 and their length.
fn compress_spilled(
    raw: &mut SpillBuffer,
    compression: Compression,
) -> std::io::Result<(std::fs::File, String, u64)> {
    let mut out = HashingWriter::new(tempfile::tempfile()?);
    match compression {
        Compression::None => raw.write_to(&mut out)?,
        Compression::Zstd(level) => {
            let mut enc = zstd::stream::write::Encoder::new(&mut out, level)?;
            raw.write_to(&mut enc)?;
            enc.finish()?;
        }
    }
    let (hex, len) = (out.hex(), out.written);
    Ok((out.into_inner(), hex, len))
}

/// Compresses and stores a segment's data, then its description (`meta`,
/// completed here with the key, sizes and checksums), under the stream
/// `meta` names.
pub fn store_segment(
    repo: &dyn Repository,
    mut meta: SegmentMeta,
    data: SegmentData<'_>,
    compression: Compression,
) -> Result<SegmentMeta, CaptureError> {
    let (sort, ext) = (data.sort, data.ext);
    let prefix = format!(
        "{}{}",
        keys::segments(&meta.shard, &meta.stream),
        keys::generation_prefix(meta.generation)
    );
    let key = format!("{prefix}{sort}.{ext}.zst");
    let failed = |e: std::io::Error| CaptureError::Corrupt {
        key: key.clone(),
        what: format!("compressing: {e}"),
    };
    match data.raw.in_memory() {
        Some(raw) => {
            let stored = compress(raw, compression).map_err(failed)?;
            repo.put(&key, &stored)?;
            meta.bytes_stored = stored.len() as u64;
            meta.xxh3 = xxh3_hex(&stored);
            meta.raw_xxh3 = xxh3_hex(raw);
        }
        None => {
            let (mut file, hex, len) = compress_spilled(data.raw, compression).map_err(failed)?;
            repo.put_file(&key, &mut file)?;
            meta.bytes_stored = len;
            meta.xxh3 = hex;
            meta.raw_xxh3 = data.raw.xxh3_hex().map_err(failed)?;
        }
    }
    // The description makes the segment listed: its data's name first.
    repo.sync_names(&[&key])?;
    meta.key = key;
    meta.bytes_raw = data.raw.len();
    let doc = serde_json::to_vec_pretty(&meta).map_err(|e| CaptureError::Corrupt {
        key: meta.key.clone(),
        what: e.to_string(),
    })?;
    let desc = format!("{prefix}{sort}.json");
    repo.put(&desc, &doc)?;
    repo.sync_names(&[&desc])?;
    Ok(meta)
}

/// Every complete segment of a stream, in stream order.
pub fn list_segments(
    repo: &dyn Repository,
    shard: &str,
    stream: &str,
) -> Result<Vec<SegmentMeta>, CaptureError> {
    let mut out = Vec::new();
    for key in repo.list(&keys::segments(shard, stream))? {
        if !key.ends_with(".json") {
            continue;
        }
        out.push(read_description(repo, &key)?.0);
    }
    // By number, not by name: names changed form once (see the MySQL
    // capture's `sort_key`).
    out.sort_by_key(|m| (m.generation, m.seq));
    Ok(out)
}

/// Reads the segment description at `key` (at most
/// [`super::DOCUMENT_MAX`] bytes): the description, and its bytes as
/// stored. A description naming any other object than its own data
/// (`<name>.<format>.zst` beside `<name>.json`) is refused: replay would
/// read that object, `expire` delete it, `copy` copy it.
pub fn read_description(
    repo: &dyn Repository,
    key: &str,
) -> Result<(SegmentMeta, Vec<u8>), CaptureError> {
    let data = super::read_document(repo, key)?;
    let corrupt = |what: String| CaptureError::Corrupt {
        key: key.to_string(),
        what,
    };
    let meta: SegmentMeta = serde_json::from_slice(&data).map_err(|e| corrupt(e.to_string()))?;
    if data_stem(&meta.key).is_none() || data_stem(&meta.key) != key.strip_suffix(".json") {
        return Err(corrupt(format!(
            "it names {} as its data, which is not beside it: the repository is damaged or was tampered with",
            meta.key
        )));
    }
    Ok((meta, data))
}

/// A segment's data key (`<name>.<format>.zst`) without its extensions:
/// its description's key without `.json`.
pub fn data_stem(key: &str) -> Option<&str> {
    let (stem, format) = key.strip_suffix(".zst")?.rsplit_once('.')?;
    (!format.contains('/')).then_some(stem)
}

/// Reads a segment's raw bytes, refusing damaged data by name.
pub fn load_segment(repo: &dyn Repository, meta: &SegmentMeta) -> Result<Vec<u8>, CaptureError> {
    let stored = repo.get_at_most(&meta.key, meta.bytes_stored)?;
    let got = xxh3_hex(&stored);
    if got != meta.xxh3 {
        return Err(CaptureError::Corrupt {
            key: meta.key.clone(),
            what: format!(
                "checksum mismatch (stored {got}, recorded {}); the segment is damaged",
                meta.xxh3
            ),
        });
    }
    let raw = decompress_bounded(&stored, meta.bytes_raw).map_err(|e| CaptureError::Corrupt {
        key: meta.key.clone(),
        what: format!("does not decompress: {e}"),
    })?;
    let got = xxh3_hex(&raw);
    if got != meta.raw_xxh3 {
        return Err(CaptureError::Corrupt {
            key: meta.key.clone(),
            what: format!("raw checksum mismatch ({got}, recorded {})", meta.raw_xxh3),
        });
    }
    Ok(raw)
}

#[cfg(test)]
mod tests {
    use super::{list_segments, store_segment, SegmentData, SegmentMeta};
    use crate::capture::spill::SpillBuffer;
    use crate::position::{Lsn, Position};
    use crate::repo::{MemoryRepository, Repository};

    /// A description naming an object other than its own data (here the
    /// newest backup's manifest) is refused when segments are listed, so
    /// `expire` never deletes it and replay never reads it.
    #[test]
    fn a_description_naming_another_object_than_its_data_is_refused() {
        let repo = MemoryRepository::default();
        let at = Position::Postgres { lsn: Lsn(16) };
        let meta = SegmentMeta {
            transactions: 1,
            ..SegmentMeta::unstored(("s", "d"), (0, 0), at.clone(), at)
        };
        let mut raw = SpillBuffer::from_vec(b"a transaction".to_vec());
        let data = SegmentData {
            sort: "0000000000000010",
            ext: "pgoutput",
            raw: &mut raw,
        };
        let meta = store_segment(&repo, meta, data, topology::Compression::None).unwrap();
        assert_eq!(list_segments(&repo, "s", "d").unwrap()[0].key, meta.key);

        let description = "capture/s/d/seg/0000000000000010.json";
        for planted in [
            "backups/20261206T000000.000Z-0000/manifest.json",
            "capture/s/d/seg/0000000000000011.pgoutput.zst",
            "capture/s/d/seg/0000000000000010.pgoutput/x.zst",
        ] {
            let mut doc: serde_json::Value =
                serde_json::from_slice(&repo.get(description).unwrap()).unwrap();
            doc["key"] = planted.into();
            repo.put(description, &serde_json::to_vec(&doc).unwrap())
                .unwrap();
            let err = list_segments(&repo, "s", "d").unwrap_err().to_string();
            assert_eq!(
                err,
                format!("capture object {description} is unreadable: it names {planted} as its data, which is not beside it: the repository is damaged or was tampered with")
            );
        }
    }
}
