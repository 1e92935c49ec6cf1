//! Direct database access for tests: connections from a topology's shard,
//! and reading a backup's chunks back through the project's reader.

use std::path::Path;
use std::time::Duration;

use mysql_async::prelude::Queryable;
use shard_agent::dump::chunk::{decompress, RowDigest};
use shard_agent::manifest::{ChunkRef, Manifest, ShardManifest, TableManifest};
use shard_agent::repo::{LocalRepository, Repository};
use topology::{Engine, RepositoryLocation, Shard, Topology};

const T: Duration = Duration::from_secs(10);

pub fn topology(path: &Path) -> Topology {
    Topology::load(path).unwrap_or_else(|e| panic!("{e}"))
}

pub async fn mysql(shard: &Shard, db: Option<&str>) -> mysql_async::Conn {
    shard_agent::connect::mysql(shard, db, T).await.unwrap()
}

pub async fn pg(shard: &Shard, db: &str) -> tokio_postgres::Client {
    shard_agent::connect::postgres(shard, Some(db), T)
        .await
        .unwrap()
}

/// Runs setup SQL on every shard: `mysql_sql` (one statement per entry) on
/// MariaDB shards, `pg_db` is created and `pg_sql` run in it on PostgreSQL.
pub async fn setup_all(topo: &Topology, mysql_sql: &[&str], pg_db: &str, pg_sql: &str) {
    for shard in &topo.shards {
        match shard.engine {
            Engine::Mysql => {
                let mut c = mysql(shard, None).await;
                for s in mysql_sql {
                    c.query_drop(*s)
                        .await
                        .unwrap_or_else(|e| panic!("{s}: {e}"));
                }
            }
            Engine::Postgres => {
                let admin = pg(shard, "postgres").await;
                admin
                    .batch_execute(&format!("DROP DATABASE IF EXISTS {pg_db} WITH (FORCE)"))
                    .await
                    .unwrap();
                admin
                    .batch_execute(&format!("CREATE DATABASE {pg_db}"))
                    .await
                    .unwrap();
                pg(shard, pg_db).await.batch_execute(pg_sql).await.unwrap();
            }
        }
    }
}

/// `COUNT(*)` of a table, independent of shardcut's own reading.
pub async fn count_rows(shard: &Shard, t: &TableManifest) -> u64 {
    match &t.schema {
        None => {
            let mut c = mysql(shard, None).await;
            let n: Option<u64> = c
                .query_first(format!(
                    "SELECT COUNT(*) FROM `{}`.`{}`",
                    t.database, t.name
                ))
                .await
                .unwrap();
            n.unwrap()
        }
        Some(schema) => {
            let c = pg(shard, &t.database).await;
            let row = c
                .query_one(
                    &format!("SELECT count(*) FROM ONLY \"{schema}\".\"{}\"", t.name),
                    &[],
                )
                .await
                .unwrap();
            u64::try_from(row.get::<_, i64>(0)).unwrap()
        }
    }
}

pub fn repository(topo: &Topology) -> LocalRepository {
    let RepositoryLocation::Local(path) = &topo.repository.location else {
        panic!("not a directory repository: {}", topo.repository)
    };
    LocalRepository::open(path).unwrap()
}

/// Where a chunk's stored bytes lie: the key of the object that holds
/// them and their range in it (a bundle holds many small tables' chunks,
/// one after another).
pub fn stored_at(s: &ShardManifest, c: &ChunkRef) -> (String, std::ops::Range<usize>) {
    let len = usize::try_from(c.bytes_stored).unwrap();
    match c.bundle {
        Some(place) => {
            let start = usize::try_from(place.offset).unwrap();
            let bundle = &s.bundles[usize::try_from(place.index).unwrap()];
            (bundle.key.clone(), start..start + len)
        }
        None => (c.key.clone(), 0..len),
    }
}

/// Every stored line of one table of shard `s`, with each chunk's checksum
/// verified.
pub fn table_lines(repo: &dyn Repository, s: &ShardManifest, t: &TableManifest) -> Vec<Vec<u8>> {
    let mut lines = Vec::new();
    for c in &t.chunks {
        let (key, range) = stored_at(s, c);
        let stored = repo.get(&key).unwrap()[range].to_vec();
        assert_eq!(
            format!("{:016x}", twox_hash::XxHash3_64::oneshot(&stored)),
            c.xxh3,
            "checksum of {}",
            c.key
        );
        let raw = decompress(&stored).unwrap();
        assert_eq!(raw.len() as u64, c.bytes_raw, "{}", c.key);
        let before = lines.len();
        lines.extend(
            raw.split(|b| *b == b'\n')
                .filter(|l| !l.is_empty())
                .map(<[u8]>::to_vec),
        );
        assert_eq!((lines.len() - before) as u64, c.rows, "rows of {}", c.key);
    }
    lines
}

pub fn digest_of(lines: &[Vec<u8>]) -> RowDigest {
    let mut d = RowDigest::default();
    for l in lines {
        d.add_line(l);
    }
    d
}

pub fn find_table<'m>(m: &'m Manifest, shard: &str, qualified: &str) -> &'m TableManifest {
    m.shards[shard]
        .table_list
        .iter()
        .find(|t| t.qualified() == qualified)
        .unwrap_or_else(|| panic!("{qualified} not in the backup of {shard}"))
}

/// `CHECKSUM TABLE`, MariaDB's own digest of a table's contents.
pub async fn mysql_checksum(shard: &Shard, table: &str) -> Option<u64> {
    let mut c = mysql(shard, None).await;
    let row: Option<(String, Option<u64>)> = c
        .query_first(format!("CHECKSUM TABLE {table}"))
        .await
        .unwrap();
    row.unwrap().1
}

/// The one number `sql` (a `SELECT COUNT(*) …`) gives on MariaDB shard
/// `shard`.
pub async fn mysql_count(shard: &Shard, sql: &str) -> Option<i64> {
    let mut c = mysql(shard, None).await;
    let n = c.query_first(sql).await.unwrap();
    c.disconnect().await.unwrap();
    n
}

/// The state of MariaDB sequence `name` (its table's one row), as text.
pub async fn mysql_sequence_state(shard: &Shard, name: &str) -> String {
    let mut c = mysql(shard, None).await;
    let state: Option<String> = c
        .query_first(format!(
            "SELECT CONCAT_WS(',', next_not_cached_value, minimum_value, maximum_value, \
             start_value, increment, cache_size, cycle_option, cycle_count) FROM {name}"
        ))
        .await
        .unwrap();
    c.disconnect().await.unwrap();
    state.unwrap()
}

/// Every version of every row of MariaDB system-versioned table `name`
/// (columns `id` and `v`) with its system time (columns `start` and
/// `end`), in order, times in UTC.
pub async fn mysql_versions(shard: &Shard, name: &str, (start, end): (&str, &str)) -> Vec<String> {
    let mut c = mysql(shard, None).await;
    c.query_drop("SET time_zone = '+00:00'").await.unwrap();
    let rows: Vec<String> = c
        .query(format!(
            "SELECT CONCAT_WS(',', id, IFNULL(v, 'null'), {start}, {end}) FROM {name} \
             FOR SYSTEM_TIME ALL ORDER BY id, {start}"
        ))
        .await
        .unwrap();
    c.disconnect().await.unwrap();
    rows
}

/// md5 of every row's text, ordered by that text: independent of row order
/// and of shardcut's encoders.
pub async fn pg_digest(shard: &Shard, database: &str, schema: &str, table: &str) -> String {
    let c = pg(shard, database).await;
    let sql = format!(
        "SELECT md5(coalesce(string_agg(x, E'\\n' ORDER BY x), '')) FROM (SELECT t::text AS x FROM ONLY \"{schema}\".\"{table}\" t) s"
    );
    c.query_one(&sql, &[]).await.unwrap().get(0)
}
