//! The backup manifest: what a backup contains and how to check it.
//!
//! Written last, after every chunk and schema file is stored; a backup
//! without its manifest does not exist. It never contains secrets: the
//! topology is represented by its digest.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use topology::Engine;

use crate::position::Position;

/// 2: small tables' chunks may lie in bundles ([`ShardManifest::bundles`]).
/// 3: a MariaDB schema file may hold sequences, and a table may be
/// system-versioned ([`TableManifest::system_versioned`]): a shardcut
/// before them would restore without the sequences, and the history
/// without its times.
/// A manifest of a later format is refused rather than misread.
pub const MANIFEST_FORMAT: u32 = 3;

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Manifest {
    pub format: u32,
    pub backup_id: String,
    pub cluster: String,
    pub topology_digest: String,
    pub tool_version: String,
    pub status: BackupStatus,
    pub started_at: String,
    pub finished_at: String,
    pub cut: Cut,
    pub shards: BTreeMap<String, ShardManifest>,
    /// Absent in manifests written before incremental backups: `full`.
    #[serde(default)]
    pub kind: BackupKind,
    /// Incremental backups: where they stand in their chain.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub chain: Option<Chain>,
}

/// A manifest is only ever written for a backup that completed: a backup
/// without its manifest does not exist. The field names that in the
/// document itself; a manifest claiming anything else is refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum BackupStatus {
    Complete,
}

/// What a backup holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum BackupKind {
    /// Dumped data of every table.
    #[default]
    Full,
    /// A mark plus the changes captured since the chain's full backup.
    Incremental,
}

impl std::fmt::Display for BackupStatus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // `pad`, so that width and alignment in format strings apply.
        f.pad(match self {
            BackupStatus::Complete => "complete",
        })
    }
}

impl std::fmt::Display for BackupKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.pad(match self {
            BackupKind::Full => "full",
            BackupKind::Incremental => "incremental",
        })
    }
}

impl Manifest {
    pub fn is_incremental(&self) -> bool {
        self.chain.is_some()
    }

    /// The keys of every object this backup stored itself (schema files
    /// and chunks), which must be durable before its manifest is.
    pub fn object_keys(&self) -> Vec<&str> {
        self.stored_objects().map(|o| o.key).collect()
    }

    /// Each object this backup stored itself, as recorded here: schema
    /// files, chunks stored on their own, and bundles (a bundled chunk is
    /// no object of its own).
    pub fn stored_objects(&self) -> impl Iterator<Item = RecordedObject<'_>> {
        self.shards.values().flat_map(|s| {
            let schema = s.schema.iter().map(|f| RecordedObject {
                key: &f.key,
                xxh3: &f.xxh3,
                bytes_stored: f.bytes_stored,
            });
            let chunks = s.table_list.iter().flat_map(|t| {
                t.chunks
                    .iter()
                    .filter(|c| c.bundle.is_none())
                    .map(|c| RecordedObject {
                        key: &c.key,
                        xxh3: &c.xxh3,
                        bytes_stored: c.bytes_stored,
                    })
            });
            let bundles = s.bundles.iter().map(|b| RecordedObject {
                key: &b.key,
                xxh3: &b.xxh3,
                bytes_stored: b.bytes_stored,
            });
            schema.chain(chunks).chain(bundles)
        })
    }
}

impl Manifest {
    /// The first object this manifest names outside where it may: its
    /// backup's own folder for what the backup stored, the capture
    /// folders for the segments an incremental backup restores with.
    /// Restore would read such an object, `copy` copy it.
    pub fn object_outside(&self) -> Option<&str> {
        let folder = keys::backup_prefix(&self.backup_id);
        let chunks = self.shards.values().flat_map(|s| {
            s.table_list
                .iter()
                .flat_map(|t| t.chunks.iter().map(|c| c.key.as_str()))
        });
        let own = self.stored_objects().map(|o| o.key).chain(chunks);
        let segments = self.chain.iter().flat_map(|c| c.segments.iter());
        own.filter(|k| !k.starts_with(&folder))
            .chain(
                segments
                    .map(|s| s.key.as_str())
                    .filter(|k| !k.starts_with("capture/")),
            )
            .next()
    }
}

/// An object a manifest names: its key, the xxh3-64 of its stored bytes
/// (hex) and their length, which bounds any read of it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RecordedObject<'a> {
    pub key: &'a str,
    pub xxh3: &'a str,
    pub bytes_stored: u64,
}

/// An incremental backup restores as its full base backup plus the
/// captured changes from the base's cut up to its mark; those segments are
/// listed so that verify and expire know exactly what it needs.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Chain {
    /// The previous backup (full or incremental).
    pub parent: String,
    /// The full backup the chain starts from.
    pub base: String,
    /// The mark this backup restores to.
    pub mark: String,
    pub segments: Vec<SegmentRef>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SegmentRef {
    pub key: String,
    /// xxh3-64 of the stored bytes, hex.
    pub xxh3: String,
    pub bytes_stored: u64,
    pub transactions: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Cut {
    /// Cluster-wide: the longest any shard held its writers (blocks end
    /// together, so from the first shard's block to the last release),
    /// plus the time of failed attempts (writers queued behind those too).
    pub write_block_ms: u64,
    /// How many block attempts it took (1 when the first one succeeded).
    pub attempts: u32,
    /// When the positions were recorded (RFC 3339, UTC).
    pub taken_at: String,
    pub shards: BTreeMap<String, ShardCut>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ShardCut {
    pub position: Position,
    pub write_block_ms: u64,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct ShardManifest {
    pub engine: Option<Engine>,
    pub server: String,
    pub tables: u64,
    pub rows: u64,
    pub bytes_raw: u64,
    pub bytes_stored: u64,
    pub duration_ms: u64,
    pub schema: Vec<StoredFile>,
    pub table_list: Vec<TableManifest>,
    /// PostgreSQL: per database and schema section (`DB/pre-data`,
    /// `DB/post-data`), a fingerprint of the schema as pg_dump wrote it,
    /// in backups and marks alike: a restore to a mark tells a schema
    /// changed since its base backup, which a replay of logical decoding
    /// cannot carry (`orchestrator::pitr::schema_drift`).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub schema_fingerprints: BTreeMap<String, String>,
    /// PostgreSQL: every sequence's state just after the cut. A restore
    /// sets them from the backup's schema files; a replay to a mark moves
    /// each forward to the mark's value (logical decoding carries no
    /// sequence changes).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub sequences: Vec<SequenceValue>,
    /// Objects holding many small tables' chunks each (see
    /// [`crate::bundle`]); a chunk names its bundle by its index here.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub bundles: Vec<StoredBundle>,
    /// What the topology selected on the shard's server when the backup
    /// was taken: a replay to a mark applies the changes of these
    /// databases and tables only. Absent in manifests written before it
    /// was recorded: every database but the server's own.
    #[serde(default, skip_serializing_if = "Selection::is_everything")]
    pub selection: Selection,
}

/// The databases and tables a backup of a shard selected (the topology's
/// `databases` and `exclude_tables`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Selection {
    /// The databases; absent: every database but the server's own.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub databases: Option<Vec<String>>,
    /// Tables of those databases left out.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub excluded: Vec<TableName>,
}

/// A table's name: its database, its schema (PostgreSQL), its name.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct TableName {
    pub database: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub schema: Option<String>,
    pub name: String,
}

impl Selection {
    /// What `shard`'s topology entry selects.
    pub fn of(shard: &topology::Shard) -> Self {
        Selection {
            databases: shard.databases.clone(),
            excluded: shard
                .exclude_tables
                .iter()
                .map(|t| TableName {
                    database: t.database.clone(),
                    schema: t.schema.clone(),
                    name: t.table.clone(),
                })
                .collect(),
        }
    }

    fn is_everything(&self) -> bool {
        *self == Selection::default()
    }

    /// Whether database `db` is selected. `system` lists the server's own
    /// databases, never selected, whatever a manifest says.
    pub fn database(&self, db: &str, system: &[&str]) -> bool {
        !system.contains(&db)
            && self
                .databases
                .as_ref()
                .is_none_or(|list| list.iter().any(|d| d == db))
    }

    /// Whether table `name` of database `db` (schema `schema`) is selected.
    pub fn table(&self, db: &str, schema: Option<&str>, name: &str, system: &[&str]) -> bool {
        self.database(db, system)
            && !self
                .excluded
                .iter()
                .any(|t| t.database == db && t.schema.as_deref() == schema && t.name == name)
    }
}

/// An object holding the chunks of many small tables, one after another.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoredBundle {
    pub key: String,
    pub bytes_stored: u64,
    /// xxh3-64 of the whole object, hex.
    pub xxh3: String,
}

/// Where a bundled chunk lies: its bundle (an index into
/// [`ShardManifest::bundles`]) and its first byte there; its length is the
/// chunk's `bytes_stored`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct BundlePlace {
    pub index: u32,
    pub offset: u64,
}

/// A sequence's state: `setval(name, last_value, is_called)` restores it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SequenceValue {
    pub database: String,
    /// Schema-qualified, each part quoted as an identifier where needed.
    pub name: String,
    pub last_value: i64,
    pub is_called: bool,
}

impl ShardManifest {
    /// The shard's engine. The field is absent only in manifests written
    /// before PostgreSQL support, which were all MySQL/MariaDB backups.
    pub fn engine_kind(&self) -> Engine {
        self.engine.unwrap_or(Engine::Mysql)
    }
}

/// A schema file: `SHOW CREATE` output (MySQL) or a `pg_dump` section.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct StoredFile {
    pub key: String,
    /// `database` (MySQL: one file per database), `pre-data`, `post-data`.
    pub section: String,
    pub database: String,
    pub bytes_raw: u64,
    pub bytes_stored: u64,
    /// xxh3-64 of the stored (compressed) bytes, hex.
    pub xxh3: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Column {
    pub name: String,
    /// The server's type name (`bigint`, `decimal(38,10)`, `timestamptz`, …).
    pub data_type: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TableManifest {
    pub database: String,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub schema: Option<String>,
    pub name: String,
    pub columns: Vec<Column>,
    pub primary_key: Vec<String>,
    /// Tables this one references by foreign key (qualified like
    /// [`TableManifest::qualified`], same shard): restoring this table
    /// alone needs them.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub references: Vec<String>,
    pub rows: u64,
    /// MariaDB: the table is `WITH SYSTEM VERSIONING`. Its rows are every
    /// version of every row (`FOR SYSTEM_TIME ALL`), its last two columns
    /// their system time (row start, row end), which the restore loads as
    /// they were (`system_versioning_insert_history`).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub system_versioned: bool,
    /// Order-independent content hash: the wrapping sum of the xxh3-64 of
    /// every row's canonical encoding, hex. Recomputable from a restored table.
    pub content_hash: String,
    pub bytes_raw: u64,
    pub bytes_stored: u64,
    pub duration_ms: u64,
    pub chunks: Vec<ChunkRef>,
}

impl TableManifest {
    /// `db.table` or `db.schema.table` (see [`qualified_name`]).
    pub fn qualified(&self) -> String {
        qualified_name(&self.database, self.schema.as_deref(), &self.name)
    }
}

/// `db.table` or `db.schema.table`, one name per table: a part holding a
/// dot or a double quote is written in double quotes (`"` doubled), so
/// schema `a.b` with table `c` (`db."a.b".c`) and schema `a` with table
/// `b.c` (`db.a."b.c"`) are told apart. Names without either read as
/// before.
pub fn qualified_name(database: &str, schema: Option<&str>, name: &str) -> String {
    let part = |p: &str| {
        if p.contains(['.', '"']) {
            format!("\"{}\"", p.replace('"', "\"\""))
        } else {
            p.to_string()
        }
    };
    match schema {
        Some(s) => format!("{}.{}.{}", part(database), part(s), part(name)),
        None => format!("{}.{}", part(database), part(name)),
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ChunkRef {
    pub key: String,
    pub rows: u64,
    pub bytes_raw: u64,
    pub bytes_stored: u64,
    /// xxh3-64 of the stored (compressed) bytes, hex.
    pub xxh3: String,
    /// xxh3-64 of the raw (decompressed) bytes, hex.
    pub raw_xxh3: String,
    /// Set when the chunk lies in a bundle: then `key` names it (for
    /// messages) but no object of that name exists.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bundle: Option<BundlePlace>,
}

/// A consistent restore point: the same bounded global write block as a
/// backup's cut, every shard's position recorded under it, no data dumped.
/// With `hashed`, every table's row count and content hash were read from
/// snapshots opened under the block, so a restore to the mark is verified
/// against the state the source really had.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Mark {
    pub format: u32,
    pub name: String,
    pub cluster: String,
    pub topology_digest: String,
    pub tool_version: String,
    pub cut: Cut,
    pub hashed: bool,
    /// Per shard: the tables at the mark (columns, and with `hashed` rows
    /// and content hash); no chunks and no schema files.
    pub shards: BTreeMap<String, ShardManifest>,
}

/// The most a manifest or a mark may take. shardcut writes about a
/// kilobyte a table (1.9 MB for 2,000 tables of two columns), so this is
/// room for about a million tables; a larger one, planted in the
/// repository, is refused by its size before it is read into memory.
pub const MANIFEST_MAX: u64 = 1 << 30;

/// Keys of a backup in the repository.
pub mod keys {
    /// Where every backup's objects live, one folder per backup ID.
    pub const BACKUPS: &str = "backups/";

    pub fn mark(name: &str) -> String {
        format!("marks/{}.json", segment(name))
    }
    pub fn backup_prefix(id: &str) -> String {
        format!("backups/{id}/")
    }
    pub fn manifest(id: &str) -> String {
        format!("backups/{id}/manifest.json")
    }
    /// Written first by the run that writes backup `id`: which cluster's
    /// run it is, so that what a killed run left can be told from another
    /// cluster's backup in progress.
    pub fn started(id: &str) -> String {
        format!("backups/{id}/started.json")
    }
    /// Bundle `index` of `shard` in backup `id`: beside the `shards/`
    /// folder, so that no database or table name can reach its key.
    pub fn bundle(id: &str, shard: &str, index: u32) -> String {
        format!("backups/{id}/bundles/{}/b{index:05}.bundle", segment(shard))
    }
    /// The backup ID whose manifest `key` is (the inverse of [`manifest`]);
    /// `None` for any other key.
    pub fn backup_of_manifest(key: &str) -> Option<&str> {
        let id = key.strip_prefix(BACKUPS)?.strip_suffix("/manifest.json")?;
        (!id.is_empty() && !id.contains('/')).then_some(id)
    }
    /// The name of a PostgreSQL table in keys: `schema.table`, the schema's
    /// dots encoded too, so that the first dot separates the two (schema
    /// `a.b` with table `c` and schema `a` with table `b.c` stay apart).
    pub fn qualified_segment(schema: &str, table: &str) -> String {
        format!("{}.{}", segment(schema).replace('.', "%2E"), segment(table))
    }
    /// A name made safe as one key segment: bytes outside `[A-Za-z0-9_.-]`
    /// are percent-encoded, so any table name maps to one distinct segment.
    pub fn segment(name: &str) -> String {
        let mut out = String::new();
        for b in name.bytes() {
            if b.is_ascii_alphanumeric() || b == b'_' || b == b'-' || (b == b'.' && !out.is_empty())
            {
                out.push(char::from(b));
            } else {
                out.push_str(&format!("%{b:02X}"));
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::keys::{qualified_segment, segment};

    #[test]
    fn segments_are_safe_and_distinct() {
        assert_eq!(segment("orders"), "orders");
        assert_eq!(segment("a/b"), "a%2Fb");
        assert_eq!(segment(".."), "%2E.");
        assert_eq!(segment("naïve"), "na%C3%AFve");
        assert_ne!(segment("a b"), segment("a_b"));
        assert_ne!(qualified_segment("a.b", "c"), qualified_segment("a", "b.c"));
        assert_eq!(qualified_segment("public", "t.1"), "public.t.1");
        use super::qualified_name;
        assert_eq!(qualified_name("db", Some("public"), "t"), "db.public.t");
        assert_eq!(qualified_name("db", None, "t"), "db.t");
        assert_eq!(qualified_name("db", Some("a.b"), "c"), "db.\"a.b\".c");
        assert_eq!(qualified_name("db", Some("a"), "b.c"), "db.a.\"b.c\"");
        assert_eq!(
            qualified_name("db", Some("a"), "say \"hi\""),
            "db.a.\"say \"\"hi\"\"\""
        );
    }

    #[test]
    fn manifest_keys_name_their_backup() {
        use super::keys::{backup_of_manifest, manifest};
        assert_eq!(
            backup_of_manifest(&manifest("20261124T044438.120Z-ffff")),
            Some("20261124T044438.120Z-ffff")
        );
        assert_eq!(backup_of_manifest("backups/a/b/manifest.json"), None);
        assert_eq!(backup_of_manifest("backups/a/chunk.zst"), None);
        assert_eq!(backup_of_manifest("backups//manifest.json"), None);
    }
}
