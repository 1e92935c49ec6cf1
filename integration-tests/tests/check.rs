//! `shardcut check` against real servers: ready, stopped, misconfigured,
//! wrong credentials, invalid input.

use crate::support::{self, shardcut, PrivateSandbox};

#[test]
fn sandbox_is_ready() {
    let topo = support::sandbox_topology();
    let run = shardcut(&["check", "-t", topo.to_str().unwrap(), "--json"]);
    assert_eq!(run.code, 0, "{run:?}");
    let doc = run.json();
    assert_eq!(doc["ready"], true);
    let shards = doc["shards"].as_array().unwrap();
    assert_eq!(shards.len(), 4);
    for s in shards {
        assert_eq!(s["ready"], true, "{s}");
        let report = &s["report"];
        assert!(report["findings"]
            .as_array()
            .unwrap()
            .iter()
            .all(|f| f["level"] != "fail"));
        let tables: Vec<String> = report["tables"]
            .as_array()
            .unwrap()
            .iter()
            .map(|t| {
                format!(
                    "{}.{}",
                    t["database"].as_str().unwrap(),
                    t["table"].as_str().unwrap()
                )
            })
            .collect();
        assert!(tables.contains(&"shop.all_types".to_string()), "{tables:?}");
        if report["engine"] == "mysql" {
            assert!(report["server"].as_str().unwrap().starts_with("MariaDB"));
            for t in ["db1.table1", "db1.table2", "db2.table1", "db2.table2"] {
                assert!(
                    tables.contains(&t.to_string()),
                    "{t} missing from {tables:?}"
                );
            }
        } else {
            assert!(report["server"].as_str().unwrap().starts_with("PostgreSQL"));
        }
    }
    assert!(doc["repository"]["free_bytes"].as_u64().unwrap() > 0);
}

#[test]
fn human_report_names_every_shard_and_no_secret() {
    let topo = support::sandbox_topology();
    let run = shardcut(&["check", "-t", topo.to_str().unwrap()]);
    assert_eq!(run.code, 0, "{run:?}");
    for shard in ["mysql-0", "mysql-1", "pg-0", "pg-1"] {
        assert!(run.stdout.contains(&format!("{shard}: ")), "{run:?}");
        let pw = support::sandbox_password(shard);
        assert!(!run.all().contains(&pw), "password of {shard} printed");
    }
    assert!(run.stdout.contains("4 of 4 shard(s) ready"), "{run:?}");
}

#[test]
fn stopped_shard_is_named_with_exit_1() {
    let sb = PrivateSandbox::up(1, 1, "ready");
    let topo = sb.topology();
    let topo = topo.to_str().unwrap();
    let before = shardcut(&["check", "-t", topo]);
    assert_eq!(before.code, 0, "{before:?}");
    sb.stop("mysql-0");
    let run = shardcut(&["check", "-t", topo]);
    assert_eq!(run.code, 1, "{run:?}");
    assert!(run.stdout.contains("mysql-0: UNREACHABLE"), "{run:?}");
    assert!(run.stdout.contains("Connection refused"), "{run:?}");
    assert!(run.stdout.contains("fix: start the server"), "{run:?}");
    assert!(
        run.stdout
            .contains("1 of 2 shard(s) ready; not ready: mysql-0"),
        "{run:?}"
    );
}

#[test]
fn server_without_binlog_is_not_ready_and_says_what_to_change() {
    let sb = PrivateSandbox::up(1, 1, "bare");
    let run = shardcut(&["check", "-t", sb.topology().to_str().unwrap(), "--json"]);
    assert_eq!(run.code, 1, "{run:?}");
    let doc = run.json();
    let finding = |shard: usize, item: &str| {
        doc["shards"][shard]["report"]["findings"]
            .as_array()
            .unwrap()
            .iter()
            .find(|f| f["item"] == item)
            .unwrap_or_else(|| panic!("no finding {item} in {doc}"))
            .clone()
    };
    let log_bin = finding(0, "log_bin");
    assert_eq!(log_bin["level"], "fail");
    assert_eq!(log_bin["value"], "OFF");
    assert!(log_bin["fix"]
        .as_str()
        .unwrap()
        .contains("enable the binary log"));
    let wal = finding(1, "wal_level");
    assert_eq!(wal["level"], "fail");
    assert_eq!(wal["value"], "replica");
    assert!(wal["fix"]
        .as_str()
        .unwrap()
        .contains("wal_level = 'logical'"));
    let slots = finding(1, "free replication slots");
    assert_eq!(slots["level"], "fail");
}

#[test]
fn wrong_password_is_a_refused_login() {
    let dir = tempfile::tempdir().unwrap();
    let text = std::fs::read_to_string(support::sandbox_topology()).unwrap();
    let bad = dir.path().join("bad.password");
    std::fs::write(&bad, "not-the-password").unwrap();
    let pg0 = support::sandbox().join("secrets/pg-0.password");
    let my0 = support::sandbox().join("secrets/mysql-0.password");
    let text = text
        .replace(my0.to_str().unwrap(), bad.to_str().unwrap())
        .replace(pg0.to_str().unwrap(), bad.to_str().unwrap());
    let topo = dir.path().join("t.yaml");
    std::fs::write(&topo, text).unwrap();
    let run = shardcut(&["check", "-t", topo.to_str().unwrap()]);
    assert_eq!(run.code, 1, "{run:?}");
    for shard in ["mysql-0", "pg-0"] {
        let line = run
            .stdout
            .lines()
            .find(|l| l.contains(&format!("shard {shard} (")))
            .unwrap_or_else(|| panic!("no error line for {shard}: {run:?}"));
        assert!(line.contains("login refused"), "{line}");
    }
    assert!(!run.all().contains("not-the-password"));
    assert!(run.stdout.contains("not ready: mysql-0, pg-0"), "{run:?}");
}

#[test]
fn invalid_topology_exits_2_with_located_lines() {
    let dir = tempfile::tempdir().unwrap();
    let topo = dir.path().join("t.yaml");
    std::fs::write(
        &topo,
        "cluster: x\nrepository: ./r\nshards:\n  - name: a\n    engine: mysql\n    url: postgres://u@h:1\n    colour: red\n",
    )
    .unwrap();
    let run = shardcut(&["check", "-t", topo.to_str().unwrap()]);
    assert_eq!(run.code, 2, "{run:?}");
    let t = topo.display();
    assert!(
        run.stderr
            .contains(&format!("{t}:7:5: shards[0].colour: unknown field")),
        "{run:?}"
    );
    assert!(
        run.stderr.contains(&format!(
            "{t}:6:5: shards[0].url: scheme `postgres` does not match engine `mysql`"
        )),
        "{run:?}"
    );
    let missing = shardcut(&["check", "-t", "/nonexistent/topology.yaml"]);
    assert_eq!(
        missing.code, 2,
        "a missing topology file is invalid input: {missing:?}"
    );
    assert!(missing
        .stderr
        .contains("/nonexistent/topology.yaml: cannot read topology"));
    let usage = shardcut(&["check"]);
    assert_eq!(usage.code, 2, "{usage:?}");
}

#[test]
fn a_selection_larger_than_the_postgres_lock_table_is_refused_by_preflight() {
    let sb = PrivateSandbox::up(0, 1, "ready");
    let shard = sb.first_shard();
    let rt = tokio::runtime::Runtime::new().unwrap();
    // The smallest lock table PostgreSQL allows: 10 × 100 connections.
    rt.block_on(async {
        let c = support::db::pg(&shard, "postgres").await;
        // Two statements: neither may run inside a transaction block.
        for sql in [
            "ALTER SYSTEM SET max_locks_per_transaction = 10",
            "CREATE DATABASE many",
        ] {
            c.batch_execute(sql).await.unwrap();
        }
    });
    sb.stop("pg-0");
    sb.start("pg-0");
    // 1,100 tables, 50 per transaction (each holds a lock per new table).
    rt.block_on(async {
        let c = support::db::pg(&shard, "many").await;
        for batch in 0..22 {
            let sql: String = (0..50)
                .map(|i| format!("CREATE TABLE t{}_{i} (id int PRIMARY KEY);", batch))
                .collect();
            c.batch_execute(&format!("BEGIN; {sql} COMMIT;"))
                .await
                .unwrap();
        }
    });
    let arg = sb.topology();
    let run = shardcut(&["check", "-t", arg.to_str().unwrap(), "--json"]);
    assert_eq!(run.code, 1, "{run:?}");
    let lock = support::first_shard_finding(&run, "lock table");
    assert_eq!(lock["level"], "fail", "{run:?}");
    assert!(
        lock["fix"]
            .as_str()
            .unwrap_or_default()
            .contains("ALTER SYSTEM SET max_locks_per_transaction = "),
        "{lock}"
    );
    // A backup is refused before any lock is taken, with the same words.
    let run = shardcut(&["backup", "-t", arg.to_str().unwrap()]);
    assert_eq!(run.code, 1, "{run:?}");
    assert!(run.stderr.contains("lock table"), "{run:?}");
}

#[test]
fn a_backup_user_allowed_fewer_connections_than_a_backup_opens_is_named() {
    let sb = PrivateSandbox::up(1, 0, "ready");
    let shard = sb.first_shard();
    let rt = tokio::runtime::Runtime::new().unwrap();
    // A backup opens the control connection, a snapshot connection a
    // worker, and one to end a block that outlives its lease: at least
    // three.
    rt.block_on(async {
        use mysql_async::prelude::Queryable;
        let mut c = support::db::mysql(&shard, None).await;
        for sql in [
            "CREATE DATABASE d",
            "CREATE TABLE d.t (id int PRIMARY KEY)",
            "INSERT INTO d.t VALUES (1), (2)",
            "GRANT USAGE ON *.* TO 'shardcut'@'127.0.0.1' WITH MAX_USER_CONNECTIONS 1",
        ] {
            c.query_drop(sql).await.unwrap();
        }
        c.disconnect().await.unwrap();
    });
    let arg = sb.topology();
    let run = shardcut(&["check", "-t", arg.to_str().unwrap(), "--json"]);
    assert_eq!(run.code, 1, "{run:?}");
    let connections = support::first_shard_finding(&run, "connections");
    assert_eq!(connections["level"], "fail", "{run:?}");
    let value = connections["value"].as_str().unwrap_or_default();
    assert!(
        value.contains("max_user_connections 1 for the backup user"),
        "{connections}"
    );
    let fix = connections["fix"].as_str().unwrap_or_default();
    assert!(fix.contains("WITH MAX_USER_CONNECTIONS 3"), "{connections}");
    // The backup it warns of fails, naming the limit.
    let run = shardcut(&["backup", "-t", arg.to_str().unwrap()]);
    assert_eq!(run.code, 1, "{run:?}");
    assert!(run.stderr.contains("max_user_connections"), "{run:?}");
}

/// An Aria table is named among the tables the consistent snapshot does
/// not cover: Aria is crash-safe but keeps no row versions, so the dump
/// reads its rows as they are when it gets there, after the cut. It was
/// counted as transactional, without a warning.
#[test]
fn an_aria_table_is_named_as_outside_the_snapshot() {
    let sb = PrivateSandbox::up(1, 0, "ready");
    let shard = sb.first_shard();
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        use mysql_async::prelude::Queryable;
        let mut c = support::db::mysql(&shard, None).await;
        c.query_drop(
            "CREATE DATABASE d; CREATE TABLE d.a (id int PRIMARY KEY) ENGINE=Aria; \
             CREATE TABLE d.i (id int PRIMARY KEY) ENGINE=InnoDB",
        )
        .await
        .unwrap();
        c.disconnect().await.unwrap();
    });
    let run = shardcut(&["check", "-t", sb.topology().to_str().unwrap(), "--json"]);
    let engines = support::first_shard_finding(&run, "table engines");
    assert_eq!(engines["level"], "warn", "{run:?}");
    assert_eq!(engines["value"], "d.a (Aria)", "{run:?}");
}

/// The readiness check a backup makes before its cut reads no table sizes
/// (on PostgreSQL they cost a look at each table's files) and asks nothing
/// that only makes a warning, and otherwise decides as `shardcut check`
/// does: same verdict, same tables. The check itself still reads every
/// size.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_backup_gate_reads_no_sizes_and_check_reads_them_all() {
    use shard_agent::preflight::Depth;
    let topo = support::db::topology(&support::sandbox_topology());
    let timeout = std::time::Duration::from_secs(10);
    for shard in &topo.shards {
        let driver = shard_agent::engine::driver(shard.engine);
        let report = driver
            .preflight(shard, timeout, Depth::Report)
            .await
            .unwrap();
        let gate = driver.preflight(shard, timeout, Depth::Gate).await.unwrap();
        assert!(
            report.ready && gate.ready,
            "{}: {report:?} {gate:?}",
            shard.name
        );
        let names = |r: &shard_agent::preflight::ShardReport| -> Vec<String> {
            r.tables
                .iter()
                .map(|t| format!("{}.{:?}.{}", t.database, t.schema, t.table))
                .collect()
        };
        assert_eq!(names(&report), names(&gate), "{}", shard.name);
        assert!(!report.tables.is_empty(), "{}", shard.name);
        assert!(
            report.tables.iter().all(|t| t.bytes.is_some()),
            "{}: a size is missing from the check: {:?}",
            shard.name,
            report.tables
        );
        assert!(
            report.tables.iter().any(|t| t.bytes.unwrap_or(0) > 0),
            "{}",
            shard.name
        );
        assert!(
            gate.tables.iter().all(|t| t.bytes.is_none()),
            "{}: the gate read sizes: {:?}",
            shard.name,
            gate.tables
        );
        if shard.engine == topology::Engine::Postgres {
            // shop.events_nopk has neither a key nor a replica identity:
            // a warning in the check, not a question the gate asks.
            let warns = |r: &shard_agent::preflight::ShardReport| {
                r.findings.iter().any(|f| f.item == "replica identity")
            };
            assert!(warns(&report), "{}: {:?}", shard.name, report.findings);
            assert!(!warns(&gate), "{}: {:?}", shard.name, gate.findings);
        }
    }
}
