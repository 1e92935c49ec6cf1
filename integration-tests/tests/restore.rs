//! `shardcut restore`: a round trip of the seeded sandbox into a second
//! cluster, checked with the servers' own means (not shardcut's code), the
//! refusal of a non-empty target, and a damaged chunk.

use mysql_async::prelude::Queryable;
use topology::{Engine, Shard};

use crate::support::{self, db, PrivateSandbox};

/// Counts of schema objects that must survive a restore.
async fn mysql_objects(shard: &Shard) -> Vec<i64> {
    let mut c = db::mysql(shard, None).await;
    let mut out = Vec::new();
    for sql in [
        "SELECT COUNT(*) FROM information_schema.VIEWS WHERE TABLE_SCHEMA = 'shop'",
        "SELECT COUNT(*) FROM information_schema.TRIGGERS WHERE TRIGGER_SCHEMA = 'shop'",
        "SELECT COUNT(*) FROM information_schema.REFERENTIAL_CONSTRAINTS WHERE CONSTRAINT_SCHEMA = 'shop'",
        "SELECT COUNT(DISTINCT TABLE_NAME, INDEX_NAME) FROM information_schema.STATISTICS WHERE TABLE_SCHEMA = 'shop'",
        "SELECT COUNT(*) FROM information_schema.ROUTINES WHERE ROUTINE_SCHEMA = 'shop'",
    ] {
        let n: Option<i64> = c.query_first(sql).await.unwrap();
        out.push(n.unwrap());
    }
    out
}

async fn pg_objects(shard: &Shard) -> Vec<i64> {
    let c = db::pg(shard, "shop").await;
    let mut out = Vec::new();
    for sql in [
        "SELECT count(*) FROM pg_views WHERE schemaname = 'public'",
        "SELECT count(*) FROM pg_trigger WHERE NOT tgisinternal",
        "SELECT count(*) FROM pg_constraint WHERE contype = 'f'",
        "SELECT count(*) FROM pg_indexes WHERE schemaname = 'public'",
        "SELECT count(*) FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace WHERE n.nspname = 'public'",
    ] {
        out.push(c.query_one(sql, &[]).await.unwrap().get(0));
    }
    out
}

/// Every index of the database, as the server prints its definition, and
/// whether it is valid: the restore builds them while other tables load.
async fn pg_index_definitions(shard: &Shard, database: &str) -> Vec<(String, bool)> {
    let c = db::pg(shard, database).await;
    c.query(
        "SELECT pg_get_indexdef(i.indexrelid), i.indisvalid FROM pg_index i \
         JOIN pg_class c ON c.oid = i.indrelid JOIN pg_namespace n ON n.oid = c.relnamespace \
         WHERE n.nspname NOT IN ('pg_catalog', 'pg_toast', 'information_schema') ORDER BY 1",
        &[],
    )
    .await
    .unwrap()
    .iter()
    .map(|r| (r.get(0), r.get(1)))
    .collect()
}

/// Restores backup `id` of the cluster `src` into `tgt`; returns the JSON
/// report of a restore that succeeded with Q = 1.
/// `restore` of backup `id` from `src` into `target`, with `extra` options.
async fn restore_into(src: &str, id: &str, target: &str, extra: &[&str]) -> support::Run {
    let args = [
        &["restore", "-t", src, "--backup", id, "--target", target],
        extra,
    ]
    .concat();
    support::shardcut_async(&args).await
}

async fn restored_fully(src: &str, id: &str, tgt: &str) -> serde_json::Value {
    let run = restore_into(src, id, tgt, &["--json"]).await;
    assert_eq!(run.code, 0, "{run:?}");
    let j = run.json();
    assert_eq!(j["quality"]["score"], 1.0, "{j}");
    j
}

/// A MariaDB source sandbox with `setup` run on it, and a MariaDB target
/// sandbox; the source's shard and the connection `setup` ran on.
async fn mariadb_source_and_target(
    setup: &str,
) -> (
    PrivateSandbox,
    PrivateSandbox,
    topology::Shard,
    mysql_async::Conn,
) {
    let source = PrivateSandbox::up(1, 0, "ready");
    let target = PrivateSandbox::up(1, 0, "ready");
    let shard = source.first_shard();
    let mut c = db::mysql(&shard, None).await;
    c.query_drop(setup).await.unwrap();
    (source, target, shard, c)
}

/// Backs up `source`'s cluster and restores it whole into `target`'s
/// (Q = 1); the restore's JSON report and the target's first shard.
async fn backed_up_and_restored(
    source: &PrivateSandbox,
    target: &PrivateSandbox,
) -> (serde_json::Value, topology::Shard) {
    let src_path = source.topology();
    let id = support::backup_id(src_path.to_str().unwrap()).await;
    let tgt_path = target.topology();
    let j = restored_fully(src_path.to_str().unwrap(), &id, tgt_path.to_str().unwrap()).await;
    (j, target.first_shard())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn round_trip_into_a_second_cluster_equals_the_source() {
    let dir = tempfile::tempdir().unwrap();
    let src_path = support::topology_variant(&support::sandbox_topology(), dir.path(), &[]);
    let src_arg = src_path.to_str().unwrap();
    let id = support::backup_id(src_arg).await;
    let target = PrivateSandbox::up(2, 2, "ready");
    let tgt_path = target.topology();
    let tgt_arg = tgt_path.to_str().unwrap();

    let j = restored_fully(src_arg, &id, tgt_arg).await;
    assert!(j["rto_seconds"].as_f64().unwrap() > 0.0);
    assert_eq!(
        j["shards"]["mysql-1"]["tables"]["shop.all_types"]["hash_ok"],
        true
    );
    assert_eq!(
        j["shards"]["pg-0"]["tables"]["shop.public.orders"]["rows_found"],
        5000
    );

    let src = db::topology(&src_path);
    let tgt = db::topology(&tgt_path);
    let m = support::manifest(&src_path, &id);
    let mut compared = 0;
    for (name, sm) in &m.shards {
        let (s, t) = (src.shard(name).unwrap(), tgt.shard(name).unwrap());
        for table in &sm.table_list {
            match s.engine {
                Engine::Mysql => {
                    let q = format!("`{}`.`{}`", table.database, table.name);
                    let (a, b) = (
                        db::mysql_checksum(s, &q).await,
                        db::mysql_checksum(t, &q).await,
                    );
                    assert!(a.is_some(), "{q}");
                    assert_eq!(a, b, "{name} {q}: CHECKSUM TABLE differs");
                }
                Engine::Postgres => {
                    let schema = table.schema.as_deref().unwrap();
                    let a = db::pg_digest(s, &table.database, schema, &table.name).await;
                    let b = db::pg_digest(t, &table.database, schema, &table.name).await;
                    assert_eq!(a, b, "{name} {}: row digest differs", table.qualified());
                }
            }
            compared += 1;
        }
        let (a, b) = match s.engine {
            Engine::Mysql => (mysql_objects(s).await, mysql_objects(t).await),
            Engine::Postgres => (pg_objects(s).await, pg_objects(t).await),
        };
        assert!(
            a.iter().all(|n| *n > 0),
            "{name}: the seed has views, triggers, FKs, indexes, routines: {a:?}"
        );
        assert_eq!(
            a, b,
            "{name}: schema objects (views, triggers, FKs, indexes, routines)"
        );
        if s.engine == Engine::Postgres {
            let (a, b) = (
                pg_index_definitions(s, "shop").await,
                pg_index_definitions(t, "shop").await,
            );
            assert!(a.len() >= 4 && a.iter().all(|(_, valid)| *valid), "{a:?}");
            assert_eq!(a, b, "{name}: index definitions");
        }
    }
    assert_eq!(compared, 28);
    // Sequences continue where the source left off.
    let c = db::pg(tgt.shard("pg-0").unwrap(), "shop").await;
    let seq: Option<String> = c
        .query_one(
            "SELECT pg_get_serial_sequence('public.events_nopk', 'id')",
            &[],
        )
        .await
        .map(|r| r.get(0))
        .unwrap_or(None);
    if let Some(seq) = seq {
        let (src_v, tgt_v): (i64, i64) = (
            db::pg(src.shard("pg-0").unwrap(), "shop")
                .await
                .query_one(&format!("SELECT last_value FROM {seq}"), &[])
                .await
                .unwrap()
                .get(0),
            c.query_one(&format!("SELECT last_value FROM {seq}"), &[])
                .await
                .unwrap()
                .get(0),
        );
        assert_eq!(src_v, tgt_v);
    }

    // A second restore onto the same, now non-empty, target is refused.
    let again = restore_into(src_arg, &id, tgt_arg, &[]).await;
    assert_eq!(again.code, 2, "{again:?}");
    assert!(
        again.stderr.contains("exists and holds") && again.stderr.contains("nothing was changed"),
        "{again:?}"
    );

    // A target out of reach is a failure (exit 1), not a refusal of what
    // was asked (exit 2, "bad arguments" to a nightly job): its servers'
    // ports closed.
    let closed = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let text = std::fs::read_to_string(&tgt_path).unwrap();
    let unreachable: String = text
        .lines()
        .map(|l| match l.split_once("@127.0.0.1:") {
            Some((head, port)) => format!(
                "{head}@127.0.0.1:{closed}{}\n",
                port.trim_start_matches(|c: char| c.is_ascii_digit())
            ),
            None => format!("{l}\n"),
        })
        .collect();
    let away = dir.path().join("unreachable.yaml");
    std::fs::write(&away, unreachable).unwrap();
    let run = restore_into(src_arg, &id, away.to_str().unwrap(), &[]).await;
    assert_eq!(run.code, 1, "{run:?}");
    assert!(run.stderr.contains("cannot connect"), "{run:?}");

    // Restoring onto the source servers themselves is refused.
    let onto_source = restore_into(src_arg, &id, src_arg, &[]).await;
    assert_eq!(onto_source.code, 2, "{onto_source:?}");
    assert!(
        onto_source.stderr.contains("would overwrite the source"),
        "{onto_source:?}"
    );

    // A damaged chunk: the restore names it and does not claim success.
    let chunk = &db::find_table(&m, "pg-1", "shop.public.order_lines").chunks[0];
    let (object, range) = db::stored_at(&m.shards["pg-1"], chunk);
    let path = dir.path().join("repo").join(object);
    let mut bytes = std::fs::read(&path).unwrap();
    bytes[range.end - 1] ^= 0xff;
    std::fs::write(&path, bytes).unwrap();
    let damaged = restore_into(
        src_arg,
        &id,
        tgt_arg,
        &["--shard", "pg-1", "--overwrite", "--json"],
    )
    .await;
    assert_ne!(damaged.code, 0, "{damaged:?}");
    assert!(
        damaged
            .stderr
            .contains(&format!("chunk {} is damaged", chunk.key)),
        "{damaged:?}"
    );
    let j = damaged.json();
    assert!(j["quality"]["score"].as_f64().unwrap() < 1.0, "{j}");
    assert_eq!(
        j["shards"]["pg-1"]["tables"]["shop.public.order_lines"]["hash_ok"],
        false
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn partial_restore_of_one_table_with_and_without_its_parents() {
    let dir = tempfile::tempdir().unwrap();
    let src_path = support::topology_variant(&support::sandbox_topology(), dir.path(), &[]);
    let src_arg = src_path.to_str().unwrap();
    assert_eq!(
        support::shardcut_async(&["backup", "-t", src_arg])
            .await
            .code,
        0
    );
    let target = PrivateSandbox::up(1, 1, "ready");
    let tgt_arg = target.topology();
    let tgt_arg = tgt_arg.to_str().unwrap();
    let tgt = db::topology(&target.topology());
    let src = db::topology(&src_path);
    let base = [
        "restore", "-t", src_arg, "--target", tgt_arg, "--shard", "mysql-0", "--shard", "pg-0",
    ];

    // orders references customers: alone it is refused, and nothing is created.
    let mut args = base.to_vec();
    args.extend(["--table", "shop.orders"]);
    let refused = support::shardcut_async(&args).await;
    assert_eq!(refused.code, 2, "{refused:?}");
    assert!(
        refused.stderr.contains("shop.orders needs shop.customers"),
        "{refused:?}"
    );
    assert!(
        refused
            .stderr
            .contains("shop.public.orders needs shop.public.customers"),
        "{refused:?}"
    );
    let mut c = db::mysql(tgt.shard("mysql-0").unwrap(), None).await;
    let shop: Option<i64> = c
        .query_first("SELECT COUNT(*) FROM information_schema.SCHEMATA WHERE SCHEMA_NAME = 'shop'")
        .await
        .unwrap();
    assert_eq!(shop, Some(0), "a refused restore changes nothing");

    // With its parents it restores both tables and nothing else.
    args.extend(["--with-parents", "--json"]);
    let run = support::shardcut_async(&args).await;
    assert_eq!(run.code, 0, "{run:?}");
    let j = run.json();
    assert_eq!(j["quality"]["score"], 1.0);
    let keys = |shard: &str| -> Vec<String> {
        j["shards"][shard]["tables"]
            .as_object()
            .unwrap()
            .keys()
            .cloned()
            .collect()
    };
    assert_eq!(keys("mysql-0"), vec!["shop.customers", "shop.orders"]);
    assert_eq!(
        keys("pg-0"),
        vec!["shop.public.customers", "shop.public.orders"]
    );
    let tables: Vec<String> = c
        .query("SELECT TABLE_NAME FROM information_schema.TABLES WHERE TABLE_SCHEMA = 'shop' ORDER BY 1")
        .await
        .unwrap();
    assert_eq!(tables, vec!["customers", "orders"]);
    for t in ["`shop`.`customers`", "`shop`.`orders`"] {
        assert_eq!(
            db::mysql_checksum(src.shard("mysql-0").unwrap(), t).await,
            db::mysql_checksum(tgt.shard("mysql-0").unwrap(), t).await,
            "{t}"
        );
    }
    let pg = db::pg(tgt.shard("pg-0").unwrap(), "shop").await;
    let pg_tables: Vec<String> = pg
        .query(
            "SELECT tablename::text FROM pg_tables WHERE schemaname = 'public' ORDER BY 1",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(pg_tables, vec!["customers", "orders"]);
    for t in ["customers", "orders"] {
        assert_eq!(
            db::pg_digest(src.shard("pg-0").unwrap(), "shop", "public", t).await,
            db::pg_digest(tgt.shard("pg-0").unwrap(), "shop", "public", t).await,
            "{t}"
        );
    }

    // A whole database (`--database`) comes back with its views and
    // routines: a restore of all its tables is no partial one. They were
    // left out before, without a word, under Q = 1.
    let mut args = base.to_vec();
    args.extend(["--database", "shop", "--overwrite", "--json"]);
    let run = support::shardcut_async(&args).await;
    assert_eq!(run.code, 0, "{run:?}");
    assert_eq!(run.json()["quality"]["score"], 1.0, "{run:?}");
    let objects =
        "SELECT CONCAT(ROUTINE_TYPE, ' ', ROUTINE_NAME) FROM information_schema.ROUTINES \
         WHERE ROUTINE_SCHEMA = 'shop' UNION ALL SELECT CONCAT('VIEW ', TABLE_NAME) \
         FROM information_schema.VIEWS WHERE TABLE_SCHEMA = 'shop' ORDER BY 1";
    let mut s = db::mysql(src.shard("mysql-0").unwrap(), None).await;
    let want: Vec<String> = s.query(objects).await.unwrap();
    assert!(
        want.contains(&"VIEW customer_totals".to_string()),
        "{want:?}"
    );
    let got: Vec<String> = c.query(objects).await.unwrap();
    assert_eq!(got, want);
}

/// Tables of every kind PostgreSQL has, each dumped and read back as what
/// it holds itself: an inheritance parent without its children's rows, a
/// partitioned table with its partitions' rows, names that need quoting.
const PG_KINDS: &str = r#"
CREATE SCHEMA "Odd Schema";
CREATE TABLE parent (id int PRIMARY KEY, a int);
CREATE TABLE child (b int) INHERITS (parent);
CREATE INDEX child_b ON child (b);
INSERT INTO parent SELECT g, g FROM generate_series(1, 1000) g;
INSERT INTO child SELECT g, g, g FROM generate_series(1001, 1500) g;
CREATE TABLE meas (id bigint NOT NULL, at date NOT NULL, v int, PRIMARY KEY (id, at)) PARTITION BY RANGE (at);
CREATE TABLE meas_2025 PARTITION OF meas FOR VALUES FROM ('2025-01-01') TO ('2026-01-01');
CREATE TABLE meas_2026 PARTITION OF meas FOR VALUES FROM ('2026-01-01') TO ('2027-01-01');
CREATE INDEX meas_v ON meas (v);
INSERT INTO meas SELECT g, date '2025-01-01' + (g % 700), g % 97 FROM generate_series(1, 20000) g;
CREATE TABLE "Odd Schema"."Mixed ""Case"" T" (id int PRIMARY KEY, "ON" text UNIQUE);
CREATE INDEX "idx ON x" ON "Odd Schema"."Mixed ""Case"" T" ("ON");
INSERT INTO "Odd Schema"."Mixed ""Case"" T" SELECT g, 'v' || g FROM generate_series(1, 5000) g;
CREATE SCHEMA "a.b";
CREATE TABLE "a.b".c (id int PRIMARY KEY);
INSERT INTO "a.b".c SELECT generate_series(1, 7);
CREATE SCHEMA a;
CREATE TABLE a."b.c" (id int PRIMARY KEY);
INSERT INTO a."b.c" SELECT generate_series(1, 11);
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_inheritance_partitions_and_quoted_names_round_trip() {
    let source = PrivateSandbox::up(0, 1, "ready");
    let dir = tempfile::tempdir().unwrap();
    let src_path = support::topology_variant(&source.topology(), dir.path(), &[]);
    let src = db::topology(&src_path);
    db::setup_all(&src, &[], "kinds", PG_KINDS).await;
    let src_arg = src_path.to_str().unwrap();
    let id = support::backup_id(src_arg).await;

    let target = PrivateSandbox::up(0, 1, "ready");
    let tgt_path = target.topology();
    let tgt_arg = tgt_path.to_str().unwrap();
    let j = restored_fully(src_arg, &id, tgt_arg).await;
    let tables = &j["shards"]["pg-0"]["tables"];
    for (table, rows) in [
        ("kinds.public.parent", 1000),
        ("kinds.public.child", 500),
        ("kinds.public.meas", 20000),
        ("kinds.Odd Schema.\"Mixed \"\"Case\"\" T\"", 5000),
        ("kinds.\"a.b\".c", 7),
        ("kinds.a.\"b.c\"", 11),
    ] {
        assert_eq!(tables[table]["rows_found"], rows, "{table}: {j}");
        assert_eq!(tables[table]["hash_ok"], true, "{table}: {j}");
    }

    let (s, t) = (
        src.shard("pg-0").unwrap(),
        db::topology(&tgt_path).shard("pg-0").unwrap().clone(),
    );
    // Rows stay where they were: in the parent or the child, in each partition.
    let counts = |shard: Shard| async move {
        db::pg(&shard, "kinds")
            .await
            .query_one(
                "SELECT (SELECT count(*) FROM ONLY parent), (SELECT count(*) FROM parent), \
                 (SELECT count(*) FROM meas_2025), (SELECT count(*) FROM meas_2026)",
                &[],
            )
            .await
            .map(|r| (0..4).map(|i| r.get(i)).collect::<Vec<i64>>())
            .unwrap()
    };
    let (from, to) = (counts(s.clone()).await, counts(t.clone()).await);
    assert_eq!(&from[..2], &[1000, 1500]);
    assert_eq!(from, to);
    let (a, b) = (
        pg_index_definitions(s, "kinds").await,
        pg_index_definitions(&t, "kinds").await,
    );
    assert!(a.len() >= 8 && a.iter().all(|(_, valid)| *valid), "{a:?}");
    assert_eq!(a, b, "index definitions");
    // Schema `a.b` with table `c` and schema `a` with table `b.c`: two
    // tables, whose chunks once shared one name.
    for shard in [src.shard("pg-0").unwrap().clone(), t] {
        let c = db::pg(&shard, "kinds").await;
        let row = c
            .query_one(
                "SELECT (SELECT count(*) FROM \"a.b\".c), (SELECT count(*) FROM a.\"b.c\")",
                &[],
            )
            .await
            .unwrap();
        let (x, y): (i64, i64) = (row.get(0), row.get(1));
        assert_eq!((x, y), (7, 11), "{}", shard.name);
    }
}

/// MariaDB views restored in an order that works for any schema: a view
/// over a view whose name sorts after it, a view calling a stored
/// function, and a view over a table of a database restored after its
/// own. Views were created before routines, in name order, database by
/// database, so each of these failed the restore ("doesn't exist") after
/// its data was loaded; now routines come first and views are created
/// once every database's tables are, in rounds until all are (or a round
/// creates none, which fails naming the view and the server's error).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mariadb_views_over_views_functions_and_other_databases_restore() {
    let source = PrivateSandbox::up(1, 0, "ready");
    let src = db::topology(&source.topology());
    let mut c = db::mysql(&src.shards[0], None).await;
    c.query_drop(
        "CREATE DATABASE aa; CREATE DATABASE objs; CREATE DATABASE zz; \
         CREATE TABLE zz.t2 (id INT PRIMARY KEY); INSERT INTO zz.t2 VALUES (1), (2), (3); \
         CREATE TABLE objs.t (id INT PRIMARY KEY); INSERT INTO objs.t VALUES (1), (2), (3), (4); \
         CREATE FUNCTION objs.f_double(x INT) RETURNS INT DETERMINISTIC RETURN x * 2; \
         CREATE VIEW objs.b_base AS SELECT id, objs.f_double(id) AS d FROM objs.t; \
         CREATE VIEW objs.a_top AS SELECT id, d FROM objs.b_base WHERE id > 1; \
         CREATE VIEW aa.v AS SELECT id FROM zz.t2; \
         CREATE TABLE objs.`par.ent` (id INT PRIMARY KEY, code INT NOT NULL, UNIQUE KEY by_code (code)); \
         INSERT INTO objs.`par.ent` VALUES (1, 10), (2, 20); \
         CREATE TABLE objs.child (id INT PRIMARY KEY, code INT, \
           FOREIGN KEY (code) REFERENCES objs.`par.ent` (code)); \
         INSERT INTO objs.child VALUES (1, 20)",
    )
    .await
    .unwrap();
    c.disconnect().await.unwrap();
    let src_path = source.topology();
    let id = support::backup_id(src_path.to_str().unwrap()).await;

    let target = PrivateSandbox::up(1, 0, "ready");
    let tgt_path = target.topology();
    let (src_arg, tgt_arg) = (src_path.to_str().unwrap(), tgt_path.to_str().unwrap());
    let run = restore_into(src_arg, &id, tgt_arg, &["--json"]).await;
    assert_eq!(run.code, 0, "{run:?}");
    assert_eq!(run.json()["quality"]["score"], 1.0, "{run:?}");
    let tgt = db::topology(&tgt_path);
    let mut c = db::mysql(&tgt.shards[0], None).await;
    let top: Vec<(i32, i32)> = c
        .query("SELECT id, d FROM objs.a_top ORDER BY id")
        .await
        .unwrap();
    assert_eq!(top, [(2, 4), (3, 6), (4, 8)]);
    let cross: Option<i64> = c.query_first("SELECT COUNT(*) FROM aa.v").await.unwrap();
    assert_eq!(cross, Some(3));
    c.disconnect().await.unwrap();

    // A view over a database the backup leaves out cannot be created:
    // its rows verify (Q = 1), but the restore failed, and the report,
    // the JSON and the metrics say so (they showed Q = 1 only, and moved
    // the time of the last success).
    let mut c = db::mysql(&src.shards[0], None).await;
    c.query_drop(
        "CREATE DATABASE other; CREATE TABLE other.t (id INT PRIMARY KEY); \
         CREATE VIEW objs.vx AS SELECT id FROM other.t",
    )
    .await
    .unwrap();
    c.disconnect().await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let yaml = std::fs::read_to_string(&src_path).unwrap();
    let only_objs: String = yaml
        .lines()
        .flat_map(|l| {
            let extra = l
                .trim_start()
                .starts_with("password_file:")
                .then_some("    databases: [objs]");
            std::iter::once(l).chain(extra)
        })
        .map(|l| format!("{l}\n"))
        .collect();
    assert!(only_objs.contains("databases: [objs]"), "{yaml}");
    let subset = dir.path().join("subset.yaml");
    std::fs::write(&subset, only_objs).unwrap();
    let id = support::backup_id(subset.to_str().unwrap()).await;
    let reports = dir.path().join("reports");
    let run = restore_into(
        subset.to_str().unwrap(),
        &id,
        tgt_arg,
        &[
            "--overwrite",
            "--json",
            "--report",
            reports.to_str().unwrap(),
        ],
    )
    .await;
    assert_eq!(run.code, 1, "{run:?}");
    assert!(run.stderr.contains("creating view objs.vx"), "{run:?}");
    let doc = run.json();
    assert_eq!(doc["quality"]["score"], 1.0, "{run:?}");
    let failures = doc["failures"].as_array().unwrap();
    assert!(
        failures.len() == 1
            && failures[0]
                .as_str()
                .unwrap()
                .contains("creating view objs.vx"),
        "{doc}"
    );
    let stored: serde_json::Value =
        serde_json::from_slice(&std::fs::read(reports.join("report.json")).unwrap()).unwrap();
    assert_eq!(stored["failures"], doc["failures"]);
    let page = std::fs::read_to_string(reports.join("report.html")).unwrap();
    assert!(page.contains("The restore failed"), "{page}");
    let metrics = std::fs::read_to_string(reports.join("metrics.prom")).unwrap();
    assert!(
        !metrics.contains("shardcut_last_success_timestamp_seconds{"),
        "{metrics}"
    );
}

/// PostgreSQL materialized views come back populated as they were:
/// `pg_dump --schema-only` creates them `WITH NO DATA` and leaves their
/// `REFRESH` to its data section, so a restore left every one
/// unpopulated (its first read failed). The backup records the populated
/// ones in creation order (one over another comes after it), and the
/// restore refreshes them from the restored tables; one kept empty at the
/// source stays empty.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_materialized_views_come_back_populated_as_they_were() {
    let source = PrivateSandbox::up(0, 1, "ready");
    let src = db::topology(&source.topology());
    db::pg(&src.shards[0], "postgres")
        .await
        .batch_execute("CREATE DATABASE mv")
        .await
        .unwrap();
    db::pg(&src.shards[0], "mv")
        .await
        .batch_execute(
            "CREATE TABLE t (id int PRIMARY KEY); \
             INSERT INTO t SELECT generate_series(1, 40); \
             CREATE MATERIALIZED VIEW totals AS SELECT count(*) AS n FROM t; \
             CREATE MATERIALIZED VIEW doubled AS SELECT n * 2 AS n2 FROM totals; \
             CREATE MATERIALIZED VIEW later AS SELECT id FROM t WITH NO DATA",
        )
        .await
        .unwrap();
    let src_path = source.topology();
    let id = support::backup_id(src_path.to_str().unwrap()).await;

    let target = PrivateSandbox::up(0, 1, "ready");
    let tgt_path = target.topology();
    let j = restored_fully(src_path.to_str().unwrap(), &id, tgt_path.to_str().unwrap()).await;
    assert_eq!(j["quality"]["score"], 1.0);
    let tgt = db::topology(&tgt_path);
    let c = db::pg(&tgt.shards[0], "mv").await;
    let n2: i64 = c
        .query_one("SELECT n2 FROM doubled", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(n2, 80);
    let populated: bool = c
        .query_one(
            "SELECT relispopulated FROM pg_class WHERE relname = 'later'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert!(!populated, "a view empty at the source was refreshed");
}

/// A MariaDB server whose global SQL mode holds `NO_BACKSLASH_ESCAPES` and
/// `ANSI_QUOTES`, source and target: the catalog's and the schema's
/// sessions used the server's mode, so the database named `a\b` matched
/// none of the catalog's literals (backed up "complete" without its
/// table), and `SHOW CREATE` wrote names in double quotes. Those sessions
/// now run with no SQL mode, and the round trip holds every row (Q = 1).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_reading_backslashes_and_quotes_its_own_way_round_trips() {
    let source = PrivateSandbox::up(1, 0, "ready");
    let target = PrivateSandbox::up(1, 0, "ready");
    let modes =
        "SET GLOBAL sql_mode = CONCAT(@@GLOBAL.sql_mode, ',NO_BACKSLASH_ESCAPES,ANSI_QUOTES')";
    for sb in [&source, &target] {
        let shard = sb.first_shard();
        let mut c = db::mysql(&shard, None).await;
        c.query_drop(modes).await.unwrap();
        c.disconnect().await.unwrap();
    }
    let shard = source.first_shard();
    let mut c = db::mysql(&shard, None).await;
    c.query_drop(
        "CREATE DATABASE `a\\b`; CREATE TABLE `a\\b`.`t` (id INT PRIMARY KEY, v VARCHAR(8)); \
         INSERT INTO `a\\b`.`t` VALUES (1, 'x'), (2, 'y')",
    )
    .await
    .unwrap();
    c.disconnect().await.unwrap();
    let src_path = source.topology();
    let id = support::backup_id(src_path.to_str().unwrap()).await;
    let m = support::manifest(&src_path, &id);
    let t = db::find_table(&m, "mysql-0", "a\\b.t");
    assert_eq!(t.rows, 2);
    restored_fully(
        src_path.to_str().unwrap(),
        &id,
        target.topology().to_str().unwrap(),
    )
    .await;
}

/// What the server keeps with each routine, trigger and event: the SQL
/// mode it was created under, an event's time zone, and the client
/// character set and connection collation, from the source.
async fn mariadb_creation_settings(shard: &Shard) -> Vec<(String, String, String, String)> {
    let mut c = db::mysql(shard, None).await;
    let rows: Vec<(String, String, String, String)> = c
        .query(
            "SELECT CONCAT('routine ', ROUTINE_NAME), SQL_MODE, '', \
               CONCAT(CHARACTER_SET_CLIENT, ' ', COLLATION_CONNECTION) FROM information_schema.ROUTINES \
               WHERE ROUTINE_SCHEMA = 'modes' \
             UNION ALL SELECT CONCAT('trigger ', TRIGGER_NAME), SQL_MODE, '', \
               CONCAT(CHARACTER_SET_CLIENT, ' ', COLLATION_CONNECTION) FROM information_schema.TRIGGERS \
               WHERE TRIGGER_SCHEMA = 'modes' \
             UNION ALL SELECT CONCAT('event ', EVENT_NAME), SQL_MODE, CONCAT(TIME_ZONE, ' ', STARTS), \
               CONCAT(CHARACTER_SET_CLIENT, ' ', COLLATION_CONNECTION) \
               FROM information_schema.EVENTS WHERE EVENT_SCHEMA = 'modes' \
             ORDER BY 1",
        )
        .await
        .unwrap();
    c.disconnect().await.unwrap();
    rows
}

/// MariaDB tables `WITH SYSTEM VERSIONING` are backed up with their
/// history (every version of every row, with its system time) and restored
/// with it as it was: a backup of a shard holding one used to fail, naming
/// it. A table with the hidden `row_start`/`row_end` and one declaring its
/// own system time columns (invisible) alike; the history answers
/// `FOR SYSTEM_TIME AS OF` as the source's does.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mariadb_system_versioned_tables_come_back_with_their_history() {
    let (source, target, shard, mut c) = mariadb_source_and_target(
        "CREATE DATABASE hist; \
         CREATE TABLE hist.h (id INT PRIMARY KEY, v INT, KEY (v)) WITH SYSTEM VERSIONING; \
         CREATE TABLE hist.e (id INT PRIMARY KEY, v INT, \
           s TIMESTAMP(6) GENERATED ALWAYS AS ROW START INVISIBLE, \
           t TIMESTAMP(6) GENERATED ALWAYS AS ROW END INVISIBLE, \
           PERIOD FOR SYSTEM_TIME (s, t)) WITH SYSTEM VERSIONING; \
         INSERT INTO hist.h SELECT seq, seq FROM hist.seq_1_to_50; \
         INSERT INTO hist.e VALUES (1, 1), (2, 2)",
    )
    .await;
    tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    let between: String = c
        .query_first("SELECT DATE_FORMAT(NOW(6), '%Y-%m-%d %H:%i:%s.%f')")
        .await
        .unwrap()
        .unwrap();
    tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    c.query_drop(
        "UPDATE hist.h SET v = v * 10 WHERE id % 3 = 0; DELETE FROM hist.h WHERE id > 45; \
         UPDATE hist.h SET v = NULL WHERE id = 1; \
         UPDATE hist.e SET v = 20 WHERE id = 2; DELETE FROM hist.e WHERE id = 1",
    )
    .await
    .unwrap();
    let as_of =
        format!("SELECT COUNT(*), SUM(v) FROM hist.h FOR SYSTEM_TIME AS OF TIMESTAMP '{between}'");
    let then: (i64, i64) = c.query_first(&as_of).await.unwrap().unwrap();
    assert_eq!(then, (50, 1275));
    c.disconnect().await.unwrap();
    let h = db::mysql_versions(&shard, "hist.h", ("row_start", "row_end")).await;
    let e = db::mysql_versions(&shard, "hist.e", ("s", "t")).await;
    assert_eq!((h.len(), e.len()), (50 + 16 + 1, 3), "{h:?} {e:?}");

    let (j, restored) = backed_up_and_restored(&source, &target).await;
    assert_eq!(
        j["shards"]["mysql-0"]["tables"]["hist.h"]["rows_found"], 67,
        "{j}"
    );
    assert_eq!(
        db::mysql_versions(&restored, "hist.h", ("row_start", "row_end")).await,
        h
    );
    assert_eq!(db::mysql_versions(&restored, "hist.e", ("s", "t")).await, e);
    let mut c = db::mysql(&restored, None).await;
    let at_target: (i64, i64) = c.query_first(&as_of).await.unwrap().unwrap();
    assert_eq!(at_target, then);
    // The restored table goes on keeping history.
    c.query_drop("UPDATE hist.e SET v = 21 WHERE id = 2")
        .await
        .unwrap();
    let kept: i64 = c
        .query_first("SELECT COUNT(*) FROM hist.e FOR SYSTEM_TIME ALL")
        .await
        .unwrap()
        .unwrap();
    assert_eq!(kept, 4);
    c.disconnect().await.unwrap();
}

/// MariaDB sequences are backed up with their definition and state, and
/// restored before the tables taking their keys from them: a backup of a
/// shard holding one used to fail, naming it. Restored, each is where the
/// source's was (past every value handed out, its cache included), so the
/// target's next row gets a key no restored row holds; an ascending, a
/// descending and a cycling sequence (in its second round) alike.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mariadb_sequences_come_back_where_they_were() {
    let (source, target, shard, c) = mariadb_source_and_target(
        "CREATE DATABASE tickets; \
         CREATE SEQUENCE tickets.ids START WITH 100 INCREMENT BY 5 CACHE 3; \
         CREATE SEQUENCE tickets.down START WITH -1 INCREMENT BY -1 MINVALUE -1000 MAXVALUE -1 CACHE 0; \
         CREATE SEQUENCE tickets.`a round` START WITH 1 MAXVALUE 3 CYCLE CACHE 0; \
         CREATE TABLE tickets.ticket (id BIGINT PRIMARY KEY DEFAULT NEXTVAL(tickets.ids), \
           down BIGINT DEFAULT NEXTVAL(tickets.down), note VARCHAR(20)); \
         INSERT INTO tickets.ticket (note) SELECT CONCAT('t', seq) FROM tickets.seq_1_to_10; \
         SELECT NEXTVAL(tickets.`a round`) FROM tickets.seq_1_to_4; \
         CREATE DATABASE orders; \
         CREATE TABLE orders.o (id BIGINT PRIMARY KEY DEFAULT NEXTVAL(tickets.ids), note VARCHAR(8)); \
         INSERT INTO orders.o (note) VALUES ('x'), ('y')",
    )
    .await;
    let names = ["tickets.ids", "tickets.down", "tickets.`a round`"];
    let mut expected = Vec::new();
    for name in names {
        expected.push(db::mysql_sequence_state(&shard, name).await);
    }
    // The cycling one is in its second round.
    assert!(expected[2].ends_with(",1,1"), "{expected:?}");
    c.disconnect().await.unwrap();

    // `orders` is restored before `tickets`, whose sequence its table
    // takes its DEFAULT from: every sequence is created before any table
    // (the restore failed creating orders.o).
    let src_path = source.topology();
    let src = src_path.to_str().unwrap();
    let backup = support::backup_id(src).await;
    let tgt_path = target.topology();
    let tgt = tgt_path.to_str().unwrap();
    restored_fully(src, &backup, tgt).await;
    let restored = target.first_shard();
    let mut found = Vec::new();
    for name in names {
        found.push(db::mysql_sequence_state(&restored, name).await);
    }
    assert_eq!(found, expected);
    for table in ["tickets.ticket", "orders.o"] {
        let at_source = db::mysql_checksum(&shard, table).await;
        assert!(at_source.is_some(), "{table}");
        assert_eq!(
            db::mysql_checksum(&restored, table).await,
            at_source,
            "{table}"
        );
    }
    let mut c = db::mysql(&restored, None).await;
    c.query_drop("INSERT INTO tickets.ticket (note) VALUES ('after')")
        .await
        .unwrap();
    let (id, down): (i64, i64) = c
        .query_first("SELECT id, down FROM tickets.ticket WHERE note = 'after'")
        .await
        .unwrap()
        .unwrap();
    let next = |state: &str| -> i64 { state.split(',').next().unwrap().parse().unwrap() };
    assert_eq!((id, down), (next(&expected[0]), next(&expected[1])));

    // Restoring `orders` alone into a target without `tickets` is refused
    // before anything changes, naming the sequence; with `tickets` there,
    // it restores.
    c.query_drop("DROP DATABASE tickets").await.unwrap();
    let alone = ["--database", "orders", "--overwrite", "--json"];
    let run = restore_into(src, &backup, tgt, &alone).await;
    assert_eq!(run.code, 1, "{run:?}");
    assert!(
        run.stderr.contains(
            "table orders.o takes its DEFAULT from sequence tickets.ids, which this restore does not create and the target does not hold"
        ) && run.stderr.contains("nothing was changed"),
        "{run:?}"
    );
    assert_eq!(
        db::mysql_checksum(&restored, "orders.o").await,
        db::mysql_checksum(&shard, "orders.o").await,
        "orders.o was left as it was"
    );
    c.query_drop("CREATE DATABASE tickets; CREATE SEQUENCE tickets.ids")
        .await
        .unwrap();
    let run = restore_into(src, &backup, tgt, &alone).await;
    assert_eq!(run.code, 0, "{run:?}");
    assert_eq!(run.json()["quality"]["score"], 1.0, "{run:?}");
    c.disconnect().await.unwrap();
}

/// MariaDB routines, triggers and events come back with the SQL mode,
/// client character set and connection collation they were created under,
/// and an event with its time zone: they were created
/// under the restore session's (`STRICT_ALL_TABLES,NO_AUTO_VALUE_ON_ZERO,…`,
/// `+00:00`), so a function written for `PIPES_AS_CONCAT` returned `0`
/// for `'a' || 'b'`, one written for `NO_BACKSLASH_ESCAPES` read `'\n'` as
/// a newline, one written for `ANSI_QUOTES` selected the string `"v"`
/// instead of the column, one created under `utf8mb4_bin` compared
/// `'a' = 'A'` as true (the restore's `utf8mb4_general_ci`), and an
/// event's schedule moved by its zone's offset. One created under a
/// `latin1` client returns the same characters. Triggers created in lower
/// case (`SHOW CREATE TRIGGER` keeps their text as typed) made the restore
/// refuse the backup ("the statement of trigger modes.t_au is not the
/// CREATE TRIGGER of it"), and so did an aggregate function (`CREATE …
/// AGGREGATE FUNCTION`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mariadb_routines_triggers_and_events_keep_their_sql_mode_and_time_zone() {
    let (source, target, shard, mut c) = mariadb_source_and_target(
        "CREATE DATABASE modes; \
         CREATE TABLE modes.t (id INT PRIMARY KEY, v VARCHAR(16)); \
         INSERT INTO modes.t VALUES (1, 'one'); \
         SET SESSION sql_mode = 'PIPES_AS_CONCAT,ANSI_QUOTES'; \
         CREATE FUNCTION modes.joined() RETURNS VARCHAR(16) DETERMINISTIC RETURN 'a' || 'b'; \
         CREATE FUNCTION modes.quoted() RETURNS VARCHAR(16) READS SQL DATA \
           RETURN (SELECT \"v\" FROM modes.t WHERE id = 1); \
         SET SESSION sql_mode = 'NO_BACKSLASH_ESCAPES'; \
         CREATE FUNCTION modes.slash() RETURNS INT DETERMINISTIC RETURN CHAR_LENGTH('\\n'); \
         SET SESSION sql_mode = 'PIPES_AS_CONCAT'; \
         CREATE TRIGGER modes.t_bi BEFORE INSERT ON modes.t FOR EACH ROW SET NEW.v = NEW.v || '!'; \
         SET SESSION sql_mode = 'STRICT_TRANS_TABLES', time_zone = '+05:00'; \
         CREATE EVENT modes.tick ON SCHEDULE EVERY 1 DAY STARTS '2030-01-01 02:00:00' DISABLE \
           DO DELETE FROM modes.t WHERE id < 0; \
         SET SESSION sql_mode = DEFAULT, time_zone = DEFAULT; \
         create trigger if not exists modes.t_au\n  after update on modes.t for each row set @n = 1; \
         Create Trigger modes.t_bd before delete on modes.t for each row set @d = 1; \
         CREATE AGGREGATE FUNCTION modes.total(x INT) RETURNS INT DETERMINISTIC BEGIN \
           DECLARE s INT DEFAULT 0; DECLARE CONTINUE HANDLER FOR NOT FOUND RETURN s; \
           LOOP FETCH GROUP NEXT ROW; SET s = s + x; END LOOP; END; \
         SET NAMES utf8mb4 COLLATE utf8mb4_bin; \
         CREATE FUNCTION modes.cased() RETURNS INT DETERMINISTIC RETURN 'a' = 'A'; \
         SET NAMES latin1; \
         CREATE FUNCTION modes.accent() RETURNS VARCHAR(16) CHARSET utf8mb4 DETERMINISTIC \
           RETURN CONCAT('é', '-'); \
         SET NAMES utf8mb4",
    )
    .await;
    let answers = "SELECT modes.joined(), modes.quoted(), modes.slash(), modes.cased(), \
                   HEX(modes.accent()), (SELECT modes.total(id) FROM modes.t)";
    type Answers = (String, String, i64, i64, String, i64);
    let at_source: Answers = c.query_first(answers).await.unwrap().unwrap();
    assert_eq!(
        (
            &at_source.0,
            &at_source.1,
            at_source.2,
            at_source.3,
            at_source.5
        ),
        (&"ab".to_string(), &"one".to_string(), 2, 0, 1)
    );
    c.disconnect().await.unwrap();
    let expected = mariadb_creation_settings(&shard).await;
    assert_eq!(expected.len(), 10, "{expected:?}");
    assert!(
        expected
            .iter()
            .any(|(w, _, _, n)| w == "routine cased" && n == "utf8mb4 utf8mb4_bin"),
        "{expected:?}"
    );
    assert!(
        expected
            .iter()
            .any(|(w, _, _, n)| w == "routine accent" && n.starts_with("latin1 ")),
        "{expected:?}"
    );
    assert!(
        expected.iter().any(|(w, m, z, _)| w == "event tick"
            && m == "STRICT_TRANS_TABLES"
            && z.starts_with("+05:00 2030-01-01 02:00:00")),
        "{expected:?}"
    );

    let (_, restored) = backed_up_and_restored(&source, &target).await;
    assert_eq!(mariadb_creation_settings(&restored).await, expected);
    let mut c = db::mysql(&restored, None).await;
    let at_target: Answers = c.query_first(answers).await.unwrap().unwrap();
    assert_eq!(at_target, at_source);
    // The trigger concatenates under its mode (the restore session's
    // read `||` as OR).
    c.query_drop("INSERT INTO modes.t (id, v) VALUES (2, 'x')")
        .await
        .unwrap();
    let v: Option<String> = c
        .query_first("SELECT v FROM modes.t WHERE id = 2")
        .await
        .unwrap();
    assert_eq!(v.as_deref(), Some("x!"));
    c.disconnect().await.unwrap();
}

/// A MariaDB target whose `local_infile` is off refuses the restore's
/// `LOAD DATA LOCAL INFILE`: the restore found it at its first table,
/// after `--overwrite` had dropped that table's database, and the target
/// was left without it. Now it is refused before anything changes,
/// naming the setting; with it on, the same restore is whole.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_mariadb_target_refusing_local_infile_is_refused_before_anything_changes() {
    let (source, target, _, c) = mariadb_source_and_target(
        "CREATE DATABASE shop; CREATE TABLE shop.t (id INT PRIMARY KEY, v VARCHAR(8)); \
         INSERT INTO shop.t VALUES (1, 'a'), (2, 'b')",
    )
    .await;
    c.disconnect().await.unwrap();
    let tgt = target.first_shard();
    let mut t = db::mysql(&tgt, None).await;
    t.query_drop(
        "CREATE DATABASE shop; CREATE TABLE shop.kept (id INT PRIMARY KEY); \
         INSERT INTO shop.kept VALUES (7); SET GLOBAL local_infile = OFF",
    )
    .await
    .unwrap();
    let src_path = source.topology();
    let src = src_path.to_str().unwrap();
    let id = support::backup_id(src).await;
    let tgt_path = target.topology();
    let run = restore_into(src, &id, tgt_path.to_str().unwrap(), &["--overwrite"]).await;
    assert_eq!(run.code, 1, "{run:?}");
    assert!(
        run.stderr.contains("the target's local_infile is off, and the restore loads rows (of shop.t and others) with LOAD DATA LOCAL INFILE: SET GLOBAL local_infile = ON")
            && run.stderr.contains("nothing was changed"),
        "{run:?}"
    );
    let kept: Vec<i64> = t.query("SELECT id FROM shop.kept").await.unwrap();
    assert_eq!(kept, vec![7], "the target's database was left as it was");
    t.query_drop("SET GLOBAL local_infile = ON").await.unwrap();
    t.disconnect().await.unwrap();
    let run = restore_into(
        src,
        &id,
        tgt_path.to_str().unwrap(),
        &["--overwrite", "--json"],
    )
    .await;
    assert_eq!(run.code, 0, "{run:?}");
    assert_eq!(run.json()["quality"]["score"], 1.0, "{run:?}");
}

/// Roles belong to the server, and a drill's scratch server or a rebuilt
/// one often has none of the source's: a PostgreSQL database granting
/// anything to a role the target lacked failed every restore at its
/// pre-data ("role "app_ro" does not exist"), after the database was
/// created. Grants, revokes and default privileges naming such roles are
/// now left out and named in the report (a missing role holds nothing), a
/// grant made by a missing role is made by the restoring user, and a
/// policy naming one, whose absence would change what others may read,
/// refuses the restore before anything changes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_privileges_naming_roles_the_target_lacks_are_left_out_by_name() {
    let source = PrivateSandbox::up(0, 1, "ready");
    let target = PrivateSandbox::up(0, 1, "ready");
    let (src, tgt) = (source.first_shard(), target.first_shard());
    let admin = db::pg(&src, "postgres").await;
    // One at a time: CREATE DATABASE may not run in a transaction block.
    for sql in [
        "CREATE DATABASE shop",
        "CREATE ROLE app_ro; CREATE ROLE app_kept; CREATE ROLE grantor_r; CREATE ROLE app_rw",
    ] {
        admin.batch_execute(sql).await.unwrap();
    }
    db::pg(&src, "shop")
        .await
        .batch_execute(
            "CREATE TABLE t (id int PRIMARY KEY, n int); \
             INSERT INTO t SELECT g, g FROM generate_series(1, 20) g; \
             GRANT SELECT ON t TO app_ro; GRANT UPDATE ON t TO app_kept; \
             GRANT USAGE ON SCHEMA public TO grantor_r; \
             GRANT SELECT ON t TO grantor_r WITH GRANT OPTION; \
             SET ROLE grantor_r; GRANT SELECT ON t TO app_kept; RESET ROLE; \
             ALTER DEFAULT PRIVILEGES IN SCHEMA public GRANT SELECT ON TABLES TO app_ro; \
             ALTER TABLE t ENABLE ROW LEVEL SECURITY; \
             CREATE POLICY p ON t TO app_rw USING (n > 5)",
        )
        .await
        .unwrap();
    let tgt_admin = db::pg(&tgt, "postgres").await;
    tgt_admin
        .batch_execute("CREATE ROLE app_kept")
        .await
        .unwrap();
    let src_path = source.topology();
    let src_arg = src_path.to_str().unwrap();
    let id = support::backup_id(src_arg).await;
    let tgt_path = target.topology();
    let tgt_arg = tgt_path.to_str().unwrap();

    let run = restore_into(src_arg, &id, tgt_arg, &[]).await;
    assert_eq!(run.code, 1, "{run:?}");
    assert!(
        run.stderr.contains(
            "`CREATE POLICY p ON public.t TO app_rw USING ((n > 5))` applies to role app_rw, which the target does not have"
        ) && run.stderr.contains("nothing was changed"),
        "{run:?}"
    );
    let created = tgt_admin
        .query("SELECT 1 FROM pg_database WHERE datname = 'shop'", &[])
        .await
        .unwrap();
    assert!(created.is_empty(), "nothing should have changed");

    tgt_admin.batch_execute("CREATE ROLE app_rw").await.unwrap();
    let report = tempfile::tempdir().unwrap();
    let report_arg = report.path().to_str().unwrap();
    let run = restore_into(src_arg, &id, tgt_arg, &["--json", "--report", report_arg]).await;
    assert_eq!(run.code, 0, "{run:?}");
    let j = run.json();
    assert_eq!(j["quality"]["score"], 1.0, "{j}");
    let notes = j["notes"].as_array().cloned().unwrap_or_default();
    assert_eq!(notes.len(), 1, "{j}");
    let note = notes[0].as_str().unwrap_or_default();
    assert!(
        note.starts_with("pg-0: database shop: ")
            && note.contains("naming role(s) the target does not have: app_ro, grantor_r;"),
        "{note}"
    );
    assert!(run.stderr.contains(note), "{run:?}");
    let page = std::fs::read_to_string(report.path().join("report.html")).unwrap();
    assert!(
        page.contains("To know about this restore")
            && page.contains("naming role(s) the target does not have: app_ro, grantor_r;"),
        "the report page shows the note"
    );
    // What names roles the target has came back: the grants to app_kept
    // (one made by the restoring user instead of grantor_r), the policy.
    let c = db::pg(&tgt, "shop").await;
    let row = c
        .query_one(
            "SELECT has_table_privilege('app_kept', 'public.t', 'SELECT'), \
             has_table_privilege('app_kept', 'public.t', 'UPDATE'), \
             (SELECT count(*) FROM pg_policies WHERE policyname = 'p' AND roles = '{app_rw}')",
            &[],
        )
        .await
        .unwrap();
    let (select, update, policies): (bool, bool, i64) = (row.get(0), row.get(1), row.get(2));
    assert_eq!((select, update, policies), (true, true, 1));
}

/// MariaDB creates a view, routine, trigger or event whose definer the
/// server lacks, and then refuses every use of it: a trigger's, every
/// write to its table. A restore into a server without the source's
/// accounts scored Q = 1 and said nothing, while the application's
/// inserts failed ("The user specified as a definer ('app'@'%') does not
/// exist"). The restore now names each missing definer and its objects.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_mariadb_restore_names_definers_the_target_lacks() {
    let (source, target, _, c) = mariadb_source_and_target(
        "CREATE DATABASE shop; CREATE TABLE shop.t (id INT PRIMARY KEY, v VARCHAR(8)); \
         INSERT INTO shop.t VALUES (1, 'a'); CREATE USER 'app'@'%'; \
         GRANT ALL ON shop.* TO 'app'@'%'; \
         CREATE DEFINER = 'app'@'%' TRIGGER shop.t_bi BEFORE INSERT ON shop.t \
           FOR EACH ROW SET NEW.v = UPPER(NEW.v); \
         CREATE DEFINER = 'app'@'%' VIEW shop.v AS SELECT id FROM shop.t; \
         CREATE VIEW shop.mine AS SELECT v FROM shop.t",
    )
    .await;
    c.disconnect().await.unwrap();
    let (j, restored) = backed_up_and_restored(&source, &target).await;
    let notes = j["notes"].as_array().cloned().unwrap_or_default();
    assert_eq!(
        notes,
        vec![serde_json::json!(
            "mysql-0: definer 'app'@'%' of view shop.v, trigger shop.t_bi does not exist on the target, which refuses every use of them until it does (a trigger's, every write to its table): create that account (or role) with its grants"
        )],
        "{j}"
    );
    // What the note is about: the target refuses the writes.
    let mut t = db::mysql(&restored, None).await;
    let refused = t
        .query_drop("INSERT INTO shop.t VALUES (2, 'b')")
        .await
        .unwrap_err()
        .to_string();
    assert!(refused.contains("definer"), "{refused}");
    t.disconnect().await.unwrap();
}

/// A PostgreSQL database comes back with its own encoding, collation and
/// character classes, its ICU locale, its settings and its comment: the
/// restore created every database with the target's defaults, so one in
/// LATIN1 came back in UTF8, one sorting by an ICU locale sorted by
/// another (`b, B` where the source has `B, b`), and one whose
/// applications found their tables by its `search_path` came back
/// without it, all with Q = 1. Replacing a database (`--overwrite`) goes
/// through a new one put in its place.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_databases_keep_their_encoding_locale_settings_and_comment() {
    let source = PrivateSandbox::up(0, 1, "ready");
    let target = PrivateSandbox::up(0, 1, "ready");
    let (src, tgt) = (source.first_shard(), target.first_shard());
    let admin = db::pg(&src, "postgres").await;
    for sql in [
        "CREATE DATABASE latin ENCODING 'LATIN1' LC_COLLATE 'C' LC_CTYPE 'C' TEMPLATE template0",
        "CREATE DATABASE sorted TEMPLATE template0 LOCALE_PROVIDER icu ICU_LOCALE 'de-DE' ENCODING 'UTF8'",
        "ALTER DATABASE sorted SET search_path = app, public",
        "ALTER DATABASE sorted SET work_mem = '64MB'",
        "ALTER DATABASE sorted SET app.tenant = 'acme'",
        "ALTER DATABASE sorted SET log_statement = 'all'",
        "COMMENT ON DATABASE sorted IS 'the app''s'",
    ] {
        admin.batch_execute(sql).await.unwrap();
    }
    db::pg(&src, "latin")
        .await
        .batch_execute(
            "CREATE TABLE t (id int PRIMARY KEY, s text); INSERT INTO t VALUES (1, 'Grüße')",
        )
        .await
        .unwrap();
    db::pg(&src, "sorted")
        .await
        .batch_execute(
            "CREATE SCHEMA app; CREATE TABLE app.t (id int PRIMARY KEY, s text); \
             INSERT INTO app.t VALUES (1, 'b'), (2, 'B'), (3, 'a'), (4, 'ä')",
        )
        .await
        .unwrap();
    // The target holds a database of that name already: it is replaced.
    db::pg(&tgt, "postgres")
        .await
        .batch_execute("CREATE DATABASE sorted")
        .await
        .unwrap();
    let src_path = source.topology();
    let id = support::backup_id(src_path.to_str().unwrap()).await;
    let run = restore_into(
        src_path.to_str().unwrap(),
        &id,
        target.topology().to_str().unwrap(),
        &["--json", "--overwrite"],
    )
    .await;
    assert_eq!(run.code, 0, "{run:?}");
    assert_eq!(run.json()["quality"]["score"], 1.0, "{run:?}");

    let properties =
        "SELECT datname::text, pg_encoding_to_char(encoding)::text, datcollate::text, \
        datctype::text, datlocprovider::text, COALESCE(daticulocale, '')::text, \
        COALESCE((SELECT array_to_string(ARRAY(SELECT x FROM unnest(setconfig) x \
                  WHERE x NOT LIKE 'log_statement=%' ORDER BY x), ';') FROM pg_db_role_setting \
                  WHERE setdatabase = d.oid AND setrole = 0), ''), \
        COALESCE(shobj_description(d.oid, 'pg_database'), '') \
        FROM pg_database d WHERE datname IN ('latin', 'sorted') ORDER BY 1";
    type Props = Vec<(
        String,
        String,
        String,
        String,
        String,
        String,
        String,
        String,
    )>;
    let read = |c: tokio_postgres::Client| async move {
        let rows = c.query(properties, &[]).await.unwrap();
        rows.iter()
            .map(|r| {
                (
                    r.get(0),
                    r.get(1),
                    r.get(2),
                    r.get(3),
                    r.get(4),
                    r.get(5),
                    r.get(6),
                    r.get(7),
                )
            })
            .collect::<Props>()
    };
    let at_source = read(admin).await;
    assert_eq!(at_source[0].1, "LATIN1");
    assert_eq!(at_source[1].5, "de-DE");
    assert_eq!(
        at_source[1].6,
        "app.tenant=acme;search_path=app, public;work_mem=64MB"
    );
    let tgt_admin = db::pg(&tgt, "postgres").await;
    let audit = tgt_admin
        .query(
            "SELECT 1 FROM pg_db_role_setting s JOIN pg_database d ON d.oid = s.setdatabase \
             WHERE d.datname = 'sorted' AND array_to_string(s.setconfig, ';') LIKE '%log_statement%'",
            &[],
        )
        .await
        .unwrap();
    assert!(
        audit.is_empty(),
        "a superuser's setting is not taken from a backup"
    );
    assert!(
        run.stderr.contains(
            "its setting \"log_statement=all\" was not restored (only settings of context `user`"
        ),
        "{run:?}"
    );
    assert_eq!(read(tgt_admin).await, at_source);
    // The settings work: the table is found by the search_path, sorted
    // by the ICU locale.
    let order: Vec<String> = db::pg(&tgt, "sorted")
        .await
        .query("SELECT s FROM t ORDER BY s", &[])
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(order, ["a", "ä", "b", "B"]);
}

/// The restore first tries the source's encoding and locale by creating a
/// database on the target. Any failure of that was reported as a locale
/// to install ("the target refuses the source's encoding and locale: …
/// permission denied to create database; install that locale"), sending
/// the DBA after the wrong thing; a failure other than a refused encoding
/// or locale is now reported as itself.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_postgres_target_user_that_may_not_create_databases_is_not_told_to_install_a_locale() {
    let source = PrivateSandbox::up(0, 1, "ready");
    let target = PrivateSandbox::up(0, 1, "ready");
    let admin = db::pg(&source.first_shard(), "postgres").await;
    admin.batch_execute("CREATE DATABASE shop").await.unwrap();
    db::pg(&source.first_shard(), "shop")
        .await
        .batch_execute("CREATE TABLE t (id int PRIMARY KEY); INSERT INTO t VALUES (1)")
        .await
        .unwrap();
    db::pg(&target.first_shard(), "postgres")
        .await
        .batch_execute("CREATE ROLE weak LOGIN PASSWORD 'weak-pw' NOCREATEDB")
        .await
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let password = dir.path().join("weak.password");
    std::fs::write(&password, "weak-pw").unwrap();
    let tgt_text = std::fs::read_to_string(target.topology()).unwrap();
    let password_line = tgt_text
        .lines()
        .find(|l| l.trim_start().starts_with("password_file:"))
        .unwrap()
        .to_string();
    let weak = support::topology_variant(
        &target.topology(),
        dir.path(),
        &[
            ("postgres://shardcut@", "postgres://weak@"),
            (
                password_line.as_str(),
                &format!("    password_file: {}", password.display()),
            ),
        ],
    );
    let src_path = source.topology();
    let src = src_path.to_str().unwrap();
    let id = support::backup_id(src).await;
    let run = restore_into(src, &id, weak.to_str().unwrap(), &[]).await;
    assert_eq!(run.code, 1, "{run:?}");
    assert!(
        run.stderr
            .contains("creating a database on the target to try the source's encoding and locale")
            && run
                .stderr
                .contains("permission denied to create database; nothing was changed")
            && !run.stderr.contains("install that locale"),
        "{run:?}"
    );
}
