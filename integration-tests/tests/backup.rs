//! `shardcut backup` of the seeded sandbox: the manifest, the chunks and
//! the JSON contract agree with what the source tables hold.

use shard_agent::engine::mysql::reader::{Reader, ReaderKind};
use shard_agent::engine::postgres::copy_reader::CopyReader;
use shard_agent::repo::Repository;
use shard_agent::verify::readback;
use topology::Engine;

use crate::support::{self, db, shardcut};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backup_matches_every_source_table() {
    let dir = tempfile::tempdir().unwrap();
    // Many workers and small ranges, so that tables with an integer key
    // hold more than a worker's share of their shard and are split into
    // several chunks.
    let topo_path = support::topology_variant(
        &support::sandbox_topology(),
        dir.path(),
        &[("parallelism: 4", "parallelism: 16")],
    );
    let topo_arg = topo_path.to_str().unwrap();
    let run = support::shardcut_async(&[
        "backup",
        "-v",
        "-t",
        topo_arg,
        "--json",
        "--chunk-rows",
        "1000",
    ])
    .await;
    assert_eq!(run.code, 0, "{run:?}");
    // The sandbox's MariaDB shards leave the binlog to the OS
    // (sync_binlog = 0) and run on this host: each cut syncs it before
    // blocking, so that BACKUP STAGE BLOCK_COMMIT does not under the block.
    for shard in ["mysql-0", "mysql-1"] {
        assert!(
            run.stderr
                .contains(&format!("{shard}: synced the binlog in ")),
            "{}",
            run.stderr
        );
    }
    let j = run.json();
    let id = j["backup_id"].as_str().unwrap().to_string();
    assert_eq!(j["cluster"], "sandbox");
    assert_eq!(j["status"], "complete");
    assert!(j["started_at"].is_string() && j["finished_at"].is_string());
    assert!(j["cut"]["write_block_ms"].is_u64());
    for shard in ["mysql-0", "mysql-1", "pg-0", "pg-1"] {
        let cut = &j["cut"]["shards"][shard];
        assert!(cut["write_block_ms"].is_u64(), "{j}");
        let kind = cut["position"]["kind"].as_str().unwrap();
        if shard.starts_with("mysql") {
            assert_eq!(kind, "mariadb");
            assert!(
                cut["position"]["gtid"].as_str().unwrap().starts_with("0-"),
                "{cut}"
            );
            assert!(cut["position"]["file"]
                .as_str()
                .unwrap()
                .starts_with("mysql-bin."));
        } else {
            assert_eq!(kind, "postgres");
            assert!(cut["position"]["lsn"].as_str().unwrap().contains('/'));
        }
        let s = &j["shards"][shard];
        for field in ["tables", "rows", "bytes_raw", "bytes_stored"] {
            assert!(s[field].as_u64().unwrap() > 0, "{shard}.{field} in {j}");
        }
        assert!(
            s["bytes_stored"].as_u64() < s["bytes_raw"].as_u64(),
            "compressed"
        );
    }

    let m = support::manifest(&topo_path, &id);
    let topo = db::topology(&topo_path);
    let repo = db::repository(&topo);
    let mut split = std::collections::BTreeMap::new();
    for (name, sm) in &m.shards {
        let shard = topo.shard(name).unwrap();
        if shard.engine == Engine::Mysql {
            // The dump and the read-back below went through shardcut's own
            // row reader, not mysql_async: the comparison with the library
            // alone (further down) compares two different decoders.
            let reader =
                Reader::connect(shard, std::time::Duration::from_secs(10), ReaderKind::Auto)
                    .await
                    .unwrap();
            assert!(matches!(reader, Reader::Wire(_)), "{name}: own row reader");
            reader.disconnect().await;
        } else {
            // Likewise shardcut's own COPY reader (over SCRAM-SHA-256, the
            // sandbox's authentication), compared below with tokio-postgres.
            let timeout = std::time::Duration::from_secs(10);
            let db = &sm.table_list[0].database;
            let reader = CopyReader::connect(shard, db, timeout, ReaderKind::Auto)
                .await
                .unwrap();
            assert!(
                matches!(reader, CopyReader::Wire(_)),
                "{name}: own COPY reader"
            );
            reader.close().await;
        }
        let expected = match shard.engine {
            Engine::Mysql => vec![
                "db1.table1",
                "db1.table2",
                "db2.table1",
                "db2.table2",
                "shop.all_types",
                "shop.events_nopk",
            ],
            Engine::Postgres => vec![
                "shop.public.all_types",
                "shop.public.events_nopk",
                "shop.public.order_lines",
            ],
        };
        for q in expected {
            db::find_table(&m, name, q);
        }
        assert_eq!(sm.table_list.len() as u64, sm.tables);
        for t in &sm.table_list {
            let count = db::count_rows(shard, t).await;
            assert_eq!(
                t.rows,
                count,
                "{name} {}: manifest rows vs COUNT(*)",
                t.qualified()
            );
            let direct = readback::table_digest(shard, t).await.unwrap();
            assert_eq!(direct.rows, t.rows, "{name} {}", t.qualified());
            assert_eq!(
                direct.hex(),
                t.content_hash,
                "{name} {}: content hash",
                t.qualified()
            );
            // The same lines through mysql_async or tokio-postgres alone.
            let library = readback::table_digest_through(shard, t, ReaderKind::Library)
                .await
                .unwrap();
            assert_eq!(
                library.hex(),
                t.content_hash,
                "{name} {}: through the library client",
                t.qualified()
            );
            let lines = db::table_lines(&repo, sm, t);
            assert_eq!(
                db::digest_of(&lines),
                direct,
                "{name} {}: chunks read back",
                t.qualified()
            );
            if t.chunks.len() > 1 {
                *split.entry(format!("{:?}", shard.engine)).or_insert(0) += 1;
            }
        }
        assert!(!sm.schema.is_empty(), "{name} has schema files");
        if shard.engine == Engine::Postgres {
            let sections: Vec<&str> = sm.schema.iter().map(|f| f.section.as_str()).collect();
            assert_eq!(
                sections,
                vec!["pre-data", "post-data", "sequences", "properties"],
                "{name}"
            );
        }
        for f in &sm.schema {
            let raw = shard_agent::dump::chunk::decompress(&repo.get(&f.key).unwrap()).unwrap();
            let text = String::from_utf8(raw).unwrap();
            match shard.engine {
                Engine::Mysql if f.database == "shop" => {
                    assert!(text.contains("CREATE TABLE `orders`"), "{}", f.key);
                    assert!(text.contains("FOREIGN KEY"), "{}", f.key);
                    assert!(text.contains("customer_totals"), "view in {}", f.key);
                    assert!(text.contains("TRIGGER"), "trigger in {}", f.key);
                }
                Engine::Postgres if f.section == "pre-data" => {
                    assert!(text.contains("CREATE TABLE public.orders"), "{}", f.key)
                }
                Engine::Postgres if f.section == "properties" => {
                    assert!(text.contains("\"encoding\":\"UTF8\""), "{}: {text}", f.key)
                }
                Engine::Postgres if f.section == "sequences" => {
                    assert!(
                        text.contains("SELECT pg_catalog.setval('public."),
                        "{}: {text}",
                        f.key
                    )
                }
                Engine::Postgres => assert!(text.contains("FOREIGN KEY"), "{}", f.key),
                _ => {}
            }
        }
    }
    // Both engines' range reads were checked against the source above.
    assert_eq!(
        split.keys().collect::<Vec<_>>(),
        ["Mysql", "Postgres"],
        "range splitting should have produced multi-chunk tables on both engines: {split:?}"
    );

    // A range's only chunk, if small, lies in its shard's bundle, not in an
    // object of its own; the backup's objects are exactly what its manifest
    // names (schema files, chunks stored alone, bundles), the manifest, and
    // the record of the run that wrote them.
    for (name, sm) in &m.shards {
        let mut bundled = 0;
        for t in &sm.table_list {
            let range = |c: &shard_agent::manifest::ChunkRef| {
                c.key.rsplit_once("-p").map(|(r, _)| r.to_string())
            };
            for c in &t.chunks {
                let alone = t.chunks.iter().filter(|o| range(o) == range(c)).count() == 1;
                let small = alone && c.bytes_stored <= shard_agent::bundle::CHUNK_MAX as u64;
                assert_eq!(c.bundle.is_some(), small, "{name} {}: {c:?}", t.qualified());
                bundled += usize::from(small);
            }
        }
        assert!(bundled >= 2, "{name}: {bundled} bundled chunks");
        assert!(
            !sm.bundles.is_empty() && sm.bundles.len() < bundled,
            "{name}"
        );
    }
    let mut named: Vec<String> = m.object_keys().into_iter().map(String::from).collect();
    named.push(format!("backups/{id}/manifest.json"));
    named.push(format!("backups/{id}/started.json"));
    named.sort();
    let stored = repo.list(&format!("backups/{id}/")).unwrap();
    assert_eq!(stored, named, "the backup's objects");

    let list = shardcut(&["list", "-t", topo_arg, "--json"]).json();
    let ids: Vec<&str> = list["backups"]
        .as_array()
        .unwrap()
        .iter()
        .map(|b| b["backup_id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, vec![id.as_str()]);
}

/// A shard of many tables lists its columns, primary keys and foreign keys
/// at once, on three connections; a few tables, one listing after
/// another on one. The seeded MariaDB shards listed both ways (the
/// threshold lowered to one table) give the same catalog: every table's
/// columns with their types, its primary key in key order (order_lines'
/// has two columns) and its parent tables (orders and order_lines have
/// foreign keys).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_catalog_listed_at_once_is_the_catalog_listed_in_turn() {
    let dir = tempfile::tempdir().unwrap();
    let topo_path = support::topology_variant(&support::sandbox_topology(), dir.path(), &[]);
    let topo_arg = topo_path.to_str().unwrap();
    let mut catalogs = Vec::new();
    for at_once_from in ["1000000", "1"] {
        let run = support::shardcut_env_async(
            &["backup", "-t", topo_arg, "--json"],
            &[("SHARDCUT_CATALOG_AT_ONCE_FROM", at_once_from)],
        )
        .await;
        assert_eq!(run.code, 0, "{run:?}");
        let id = run.json()["backup_id"].as_str().unwrap().to_string();
        let m = support::manifest(&topo_path, &id);
        let mut catalog = Vec::new();
        for (name, sm) in m.shards.iter().filter(|(n, _)| n.starts_with("mysql")) {
            for t in &sm.table_list {
                let columns: Vec<String> = t
                    .columns
                    .iter()
                    .map(|c| format!("{} {}", c.name, c.data_type))
                    .collect();
                catalog.push(format!(
                    "{name} {}: columns {columns:?}, key {:?}, parents {:?}",
                    t.qualified(),
                    t.primary_key,
                    t.references
                ));
            }
        }
        catalogs.push(catalog);
    }
    let [in_turn, at_once] = [&catalogs[0], &catalogs[1]];
    assert_eq!(in_turn, at_once);
    let has = |what: &str| in_turn.iter().any(|l| l.contains(what));
    assert!(
        has(r#"shop.order_lines: columns"#)
            && has(r#"key ["order_id", "line_no"], parents ["shop.orders"]"#)
            && has(r#"parents ["shop.customers"]"#),
        "{in_turn:#?}"
    );
}

#[test]
fn concurrent_backup_of_one_repository_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let topo_path = support::topology_variant(&support::sandbox_topology(), dir.path(), &[]);
    std::fs::create_dir_all(dir.path().join("repo/locks")).unwrap();
    // A live holder: this test process itself, of this machine's boot
    // and pid namespace (a lock of no known boot waits for its expiry).
    let boot = format!(
        "{} {}",
        std::fs::read_to_string("/proc/sys/kernel/random/boot_id")
            .unwrap()
            .trim(),
        std::fs::read_link("/proc/self/ns/pid").unwrap().display()
    );
    let body = serde_json::json!({
        "owner": "the test", "host": std::fs::read_to_string("/etc/hostname").unwrap().trim(),
        "pid": std::process::id(), "purpose": "backup", "started_at": "now",
        "expires_at": 4_000_000_000i64, "boot": boot,
    });
    std::fs::write(dir.path().join("repo/locks/sandbox.lock"), body.to_string()).unwrap();
    let run = shardcut(&["backup", "-t", topo_path.to_str().unwrap()]);
    assert_eq!(run.code, 1, "{run:?}");
    assert!(
        run.stderr
            .contains("another backup of cluster sandbox is running"),
        "{run:?}"
    );
    // A holder that died (no such process) does not block the next run.
    let dead = body.to_string().replace(
        &format!("\"pid\":{}", std::process::id()),
        "\"pid\":999999999",
    );
    std::fs::write(dir.path().join("repo/locks/sandbox.lock"), dead).unwrap();
    let run = shardcut(&["backup", "-t", topo_path.to_str().unwrap()]);
    assert_eq!(run.code, 0, "{run:?}");
    assert!(
        !dir.path().join("repo/locks/sandbox.lock").exists(),
        "lock released"
    );
}

/// Tables whose columns are all integers and strings are read in the text
/// protocol (one statement per table instead of a prepare and an
/// execution); their lines must be those the binary protocol gives, edge
/// values included: the backup's hashes must equal a read through
/// mysql_async's binary protocol, and the read-back a restore's
/// verification does (shardcut's own reader, which chooses the protocol
/// from the manifest's column types as the backup did).
#[test]
fn integer_and_string_tables_read_as_text_hash_as_the_binary_protocol_reads_them() {
    use shard_agent::engine::mysql::reader::{protocol_for, Protocol};
    let sb = support::PrivateSandbox::up(1, 0, "ready");
    let topo_path = sb.topology();
    let shard = sb.first_shard();
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        use mysql_async::prelude::Queryable;
        let mut c = db::mysql(&shard, None).await;
        for sql in [
            "CREATE DATABASE d",
            "CREATE TABLE d.text_exact (id bigint unsigned PRIMARY KEY, \
             ti tinyint, tu tinyint unsigned, si smallint zerofill, mi mediumint, \
             i int(5) unsigned zerofill, bi bigint, c char(4), vc varchar(20), \
             bn binary(3), vb varbinary(8), tx text, bl blob, dc decimal(12,4), \
             e enum('a','b c'), s set('x','y'), j json)",
            "INSERT INTO d.text_exact VALUES \
             (18446744073709551615, -128, 255, 7, -8388608, 42, -9223372036854775808, \
              'ab', 'tab\\there\\nline', 'a', x'00FBFF0A09', '\\\\N', x'FB', -12345678.1234, \
              'b c', 'x,y', '{\"k\": [1, null]}'), \
             (0, 127, 0, 65535, 8388607, 4294967295, 9223372036854775807, \
              '', '', x'000000', '', '', '', 0.0001, 'a', '', 'null'), \
             (5, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, \
              NULL, NULL, NULL, NULL)",
            // A float: this one is read in the binary protocol.
            "CREATE TABLE d.with_float (id int PRIMARY KEY, f double)",
            "INSERT INTO d.with_float VALUES (1, 0.1), (2, -1e300)",
        ] {
            c.query_drop(sql).await.unwrap();
        }
        c.disconnect().await.unwrap();
    });
    let m = backed_up(&topo_path);
    let text = db::find_table(&m, "mysql-0", "d.text_exact");
    let float = db::find_table(&m, "mysql-0", "d.with_float");
    let protocol = |t: &shard_agent::manifest::TableManifest| {
        protocol_for(t.columns.iter().map(|c| c.data_type.as_str()), t.rows)
    };
    assert_eq!(protocol(text), Protocol::Text);
    assert_eq!(protocol(float), Protocol::Binary);
    assert_eq!(text.rows, 3);
    rt.block_on(async {
        read_back_as_stored(&shard, &[text, float]).await;
        // A prepare that fails is sent together with its execution: both
        // errors are read, the prepare's is the one reported, and the
        // connection stays in step for the next statement, in either
        // protocol.
        let timeout = std::time::Duration::from_secs(10);
        let mut conn = Reader::connect(&shard, timeout, ReaderKind::Auto)
            .await
            .unwrap();
        assert!(matches!(conn, Reader::Wire(_)), "own row reader");
        for protocol in [Protocol::Binary, Protocol::Text, Protocol::Binary] {
            let e = conn
                .rows("SELECT id FROM d.no_such_table", protocol)
                .await
                .err()
                .expect("a missing table is an error");
            assert!(e.to_string().contains("doesn't exist"), "{e}");
            let line = conn.first_line("SELECT 41 + 1").await.unwrap();
            assert_eq!(line.as_deref(), Some(&b"42"[..]));
        }
        conn.disconnect().await;
    });
}

/// Small tables are read with their queries sent together (up to 32 in
/// one write) and their `SHOW CREATE TABLE`s in one round trip of many
/// statements. Each table's stored rows, hash and definition must be its
/// own, whatever its name (a semicolon, a backquote and comment marks,
/// which would end or hide a statement if a name were not quoted whole),
/// with a table that is read alone (a datetime column: binary protocol)
/// among them.
#[test]
fn small_tables_read_together_each_keep_their_own_rows_and_definition() {
    use mysql_async::prelude::Queryable;
    let sb = support::PrivateSandbox::up(1, 0, "ready");
    let topo_path = sb.topology();
    let shard = sb.first_shard();
    let mut names: Vec<String> = (0..66).map(|i| format!("t{i:02}")).collect();
    names.extend(["semi;colon", "back`tick", "dash-- x", "ünï /* c */"].map(String::from));
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let mut c = db::mysql(&shard, None).await;
        c.query_drop("CREATE DATABASE batch").await.unwrap();
        for (i, name) in names.iter().enumerate() {
            // Table i has a column of its own, n<i>, and i + 1 rows naming it.
            let q = format!("batch.`{}`", name.replace('`', "``"));
            c.query_drop(format!(
                "CREATE TABLE {q} (id int PRIMARY KEY, v varchar(40), n{i} int)"
            ))
            .await
            .unwrap();
            let rows: Vec<String> = (0..=i)
                .map(|r| format!("({r}, '{} row {r}', {i})", name.replace('\'', "''")))
                .collect();
            c.query_drop(format!("INSERT INTO {q} VALUES {}", rows.join(", ")))
                .await
                .unwrap();
        }
        c.query_drop("CREATE TABLE batch.alone (id int PRIMARY KEY, at datetime(6))")
            .await
            .unwrap();
        c.query_drop("INSERT INTO batch.alone VALUES (1, '2026-12-05 10:00:00.5')")
            .await
            .unwrap();
        c.disconnect().await.unwrap();
    });
    let m = backed_up(&topo_path);
    let mut tables = Vec::new();
    for (i, name) in names.iter().enumerate() {
        let t = db::find_table(&m, "mysql-0", &format!("batch.{name}"));
        assert_eq!(t.rows, i as u64 + 1, "{name}");
        tables.push(t);
    }
    tables.push(db::find_table(&m, "mysql-0", "batch.alone"));
    rt.block_on(read_back_as_stored(&shard, &tables));

    let repo = db::repository(&db::topology(&topo_path));
    let key = repo
        .list(&format!("backups/{}/shards/mysql-0/", m.backup_id))
        .unwrap()
        .into_iter()
        .find(|k| k.ends_with("/batch/schema.json.zst"))
        .expect("the schema of batch");
    let schema: serde_json::Value =
        serde_json::from_slice(&zstd::decode_all(&repo.get(&key).unwrap()[..]).unwrap()).unwrap();
    let stored = schema["tables"].as_array().unwrap();
    assert_eq!(stored.len(), names.len() + 1);
    for t in stored {
        let (name, sql) = (t["name"].as_str().unwrap(), t["sql"].as_str().unwrap());
        let quoted = format!("CREATE TABLE `{}`", name.replace('`', "``"));
        assert!(sql.starts_with(&quoted), "{name}: {sql}");
        match names.iter().position(|n| n == name) {
            Some(i) => assert!(sql.contains(&format!("`n{i}` int")), "{name}: {sql}"),
            None => assert!(
                name == "alone" && sql.contains("datetime(6)"),
                "{name}: {sql}"
            ),
        }
    }
}

/// PostgreSQL tables of integer, boolean, numeric and string columns are
/// read back in the binary COPY format, the text lines printed by
/// shardcut: the hashes must be those of the backup, which read the
/// server's COPY text, for every control character, backslashes, multibyte
/// text, padded `character(n)` values, numerics of every weight and
/// scale, NaN and the infinities, and dates and timestamps from 4713 BC to
/// their largest values (written from a session in another time zone),
/// and the widest numeric (36,864 base-10000 groups, more than an i16).
/// Restored into another server, where the same tables are loaded in the
/// binary format from the stored text (a big one in pieces, frozen), every
/// table holds what the source holds, by the server's own row text.
#[test]
fn postgres_tables_read_back_and_load_in_binary_as_their_copy_text() {
    use shard_agent::engine::postgres::binary_copy;
    let sb = support::PrivateSandbox::up(0, 1, "ready");
    let topo_path = sb.topology();
    let shard = sb.first_shard();
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let c = db::pg(&shard, "postgres").await;
        c.batch_execute("CREATE DATABASE d").await.unwrap();
        let c = db::pg(&shard, "d").await;
        c.batch_execute(
            "SET TimeZone = 'Asia/Kolkata'; \
             CREATE TABLE plain (id bigint PRIMARY KEY, s smallint, i integer, b boolean, \
               t text, v varchar(300), vn varchar, c char(6), n numeric, m numeric(12,2), \
               d date, ts timestamp(6), tz timestamptz(3)); \
             INSERT INTO plain VALUES \
               (-9223372036854775808, -32768, -2147483648, true, '', '', '', '', 'NaN', 0, \
                '4713-01-01 BC', '4713-01-01 00:00:00 BC', '4713-01-02 00:00:00+00 BC'), \
               (9223372036854775807, 32767, 2147483647, false, 'a\\b', 'é ü 中', E'x\\\\y', 'ab', \
                'Infinity', -9999999999.99, '5874897-12-31', '294276-12-31 23:59:59.999999', \
                '294276-12-30 23:59:59.999+00'), \
               (1, 1, 1, true, 'x', 'x', 'x', 'x', '-Infinity', 0.01, 'infinity', '-infinity', \
                'infinity'), \
               (0, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL); \
             INSERT INTO plain SELECT 100 + n, n, n, n % 2 = 0, chr(n), 'x' || chr(n) || 'y', \
               repeat(chr(n), 3), chr(n), (n - 16) * power(10::numeric, 2 * n - 32) / 7, \
               round((n - 16) * 1234567.891 / 3, 2), date '2000-01-01' + (n - 16) * 100003, \
               timestamp '2000-01-01' + (n - 16) * interval '100003 days 1 hour 2 minutes 3.00045 seconds', \
               timestamptz '2000-01-01 00:00:00+00' + (n - 16) * interval '77777 days 13 hours 0.5 seconds' \
               FROM generate_series(1, 31) n; \
             INSERT INTO plain SELECT 200 + n, n, n, true, '', '', '', '', \
               round(123456789.123456789::numeric * n - 2000, n), n / 100.0, \
               date '0001-01-01' - n, timestamp '0001-01-01 00:00:00' - n * interval '1 microsecond', \
               timestamptz '1999-12-31 23:59:59.9+00' + n * interval '10 milliseconds' \
               FROM generate_series(0, 12) n; \
             INSERT INTO plain (id, n) VALUES (300, \
               (repeat('9', 131072) || '.' || repeat('9', 16383))::numeric); \
             CREATE TABLE mixed (id int PRIMARY KEY, f double precision, span interval); \
             INSERT INTO mixed VALUES (1, 0.1, '1 day 02:03:04'), (2, NULL, NULL); \
             CREATE TABLE big (id int PRIMARY KEY, t text, n numeric(20,4), at timestamptz); \
             INSERT INTO big SELECT g, \
               repeat(chr(9) || chr(10) || chr(13) || '\\' || md5(g::text), 1 + g % 5), \
               g * 12345.6789 - 1e9, timestamptz '1999-01-01 00:00:00+00' + g * interval '1.25 seconds' \
               FROM generate_series(1, 30000) g;",
        )
        .await
        .unwrap();
    });
    let m = backed_up(&topo_path);
    let plain = db::find_table(&m, "pg-0", "d.public.plain");
    let mixed = db::find_table(&m, "pg-0", "d.public.mixed");
    for (t, binary) in [(plain, true), (mixed, false)] {
        let types: Vec<&str> = t.columns.iter().map(|c| c.data_type.as_str()).collect();
        assert_eq!(binary_copy::columns(&types).is_some(), binary, "{types:?}");
    }
    assert_eq!(plain.rows, 49);
    rt.block_on(read_back_as_stored(&shard, &[plain, mixed]));

    let big = db::find_table(&m, "pg-0", "d.public.big");
    assert!(big.bytes_raw > 2 << 20, "{} bytes", big.bytes_raw);
    let target = support::PrivateSandbox::up(0, 1, "ready");
    let run = shardcut(&[
        "restore",
        "-t",
        topo_path.to_str().unwrap(),
        "--backup",
        &m.backup_id,
        "--target",
        target.topology().to_str().unwrap(),
        "--json",
    ]);
    assert_eq!(run.code, 0, "{run:?}");
    assert_eq!(run.json()["quality"]["score"], 1.0, "{run:?}");
    let restored = target.first_shard();
    rt.block_on(async {
        for t in ["plain", "mixed", "big"] {
            assert_eq!(
                db::pg_digest(&restored, "d", "public", t).await,
                db::pg_digest(&shard, "d", "public", t).await,
                "table {t}"
            );
        }
    });
}

/// Backs up the cluster at `topology`; returns the backup's manifest.
fn backed_up(topology: &std::path::Path) -> shard_agent::manifest::Manifest {
    let run = shardcut(&["backup", "-t", topology.to_str().unwrap(), "--json"]);
    assert_eq!(run.code, 0, "{run:?}");
    let id = run.json()["backup_id"].as_str().unwrap().to_string();
    support::manifest(topology, &id)
}

/// Reads `tables` back through the library client and through shardcut's
/// own reader: both must give the rows and the hash the backup stored.
async fn read_back_as_stored(
    shard: &topology::Shard,
    tables: &[&shard_agent::manifest::TableManifest],
) {
    for t in tables {
        for kind in [ReaderKind::Library, ReaderKind::Auto] {
            let d = readback::table_digest_through(shard, t, kind)
                .await
                .unwrap();
            assert_eq!(
                (d.rows, d.hex()),
                (t.rows, t.content_hash.clone()),
                "{} through {kind:?}",
                t.name
            );
        }
    }
}

/// PostgreSQL large objects are neither tables nor in pg_dump's schema:
/// a backup of a database holding them was called complete (and its
/// restore scored Q = 1) without them. Now the check names the database
/// and the backup fails; without them the database backs up.
#[test]
fn a_postgres_database_holding_large_objects_fails_the_backup_by_name() {
    let sb = support::PrivateSandbox::up(0, 1, "ready");
    let shard = sb.first_shard();
    let rt = tokio::runtime::Runtime::new().unwrap();
    let lo: u32 = rt.block_on(async {
        db::pg(&shard, "postgres")
            .await
            .batch_execute("CREATE DATABASE blobs")
            .await
            .unwrap();
        let c = db::pg(&shard, "blobs").await;
        c.batch_execute("CREATE TABLE docs (id int PRIMARY KEY, body oid)")
            .await
            .unwrap();
        let lo: u32 = c
            .query_one("SELECT lo_from_bytea(0, 'the body')", &[])
            .await
            .unwrap()
            .get(0);
        c.execute("INSERT INTO docs VALUES (1, $1)", &[&lo])
            .await
            .unwrap();
        lo
    });
    let dir = tempfile::tempdir().unwrap();
    let topo = support::topology_variant(&sb.topology(), dir.path(), &[]);
    let arg = topo.to_str().unwrap();
    let run = shardcut(&["check", "-t", arg]);
    assert_ne!(run.code, 0, "{run:?}");
    assert!(
        run.stdout
            .contains("blobs (1) hold large objects, which shardcut does not back up"),
        "{run:?}"
    );
    let run = shardcut(&["backup", "-t", arg, "--json"]);
    assert_eq!(run.code, 1, "{run:?}");
    assert!(
        run.stderr.contains("blobs (1) hold large objects"),
        "{run:?}"
    );
    let listed = shardcut(&["list", "-t", arg, "--json"]);
    assert_eq!(listed.json()["backups"].as_array().unwrap().len(), 0);

    rt.block_on(async {
        let c = db::pg(&shard, "blobs").await;
        c.execute("SELECT lo_unlink($1)", &[&lo]).await.unwrap();
    });
    let m = backed_up(&topo);
    assert_eq!(db::find_table(&m, "pg-0", "blobs.public.docs").rows, 1);
}

/// A PostgreSQL table with row-level security, backed up by a user that
/// is neither a superuser, its owner nor BYPASSRLS (`pg_read_all_data`
/// does not bypass policies, and it is what preflight asks for): its
/// policies would filter the dump's COPY without a word, and the backup
/// would hold only the rows the user may see, called complete. The
/// readers turn `row_security` off, as pg_dump does, so the server
/// refuses instead and the backup fails naming the table; the same user
/// with BYPASSRLS backs up every row.
#[test]
fn a_table_whose_policies_hide_rows_from_the_backup_user_fails_the_backup_by_name() {
    let sb = support::PrivateSandbox::up(0, 1, "ready");
    let shard = sb.first_shard();
    let password = shard.password.as_ref().unwrap().expose().to_string();
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let c = db::pg(&shard, "postgres").await;
        c.batch_execute(&format!(
            "CREATE ROLE limited LOGIN REPLICATION PASSWORD '{password}' IN ROLE pg_read_all_data"
        ))
        .await
        .unwrap();
        c.batch_execute("CREATE DATABASE d").await.unwrap();
        let c = db::pg(&shard, "d").await;
        c.batch_execute(
            "CREATE TABLE tenant_rows (id int PRIMARY KEY, tenant text NOT NULL); \
             INSERT INTO tenant_rows SELECT g, 'tenant' || g % 3 FROM generate_series(1, 30) g; \
             ALTER TABLE tenant_rows ENABLE ROW LEVEL SECURITY; \
             CREATE POLICY own ON tenant_rows USING (tenant = current_user); \
             GRANT UPDATE ON tenant_rows TO limited",
        )
        .await
        .unwrap();
    });
    let dir = tempfile::tempdir().unwrap();
    let limited = support::topology_variant(
        &sb.topology(),
        dir.path(),
        &[("postgres://shardcut@", "postgres://limited@")],
    );
    let arg = limited.to_str().unwrap();
    let run = shardcut(&["backup", "-t", arg, "--json"]);
    assert_eq!(run.code, 1, "{run:?}");
    assert!(
        run.stderr.contains("d.public.tenant_rows") && run.stderr.contains("row-level security"),
        "{run:?}"
    );
    let listed = shardcut(&["list", "-t", arg, "--json"]);
    assert_eq!(listed.json()["backups"].as_array().unwrap().len(), 0);

    rt.block_on(async {
        let c = db::pg(&shard, "postgres").await;
        c.batch_execute("ALTER ROLE limited BYPASSRLS")
            .await
            .unwrap();
    });
    let m = backed_up(&limited);
    assert_eq!(db::find_table(&m, "pg-0", "d.public.tenant_rows").rows, 30);
}
