//! Change capture, marks and point-in-time restore against real servers:
//! the state at a mark and the latest state are restored exactly (checked
//! with the servers' own CHECKSUM TABLE and md5 of row text), a mark taken
//! during cross-shard transfers restores consistently, a capture killed
//! mid-run loses and repeats nothing, DDL replays (MariaDB) or is refused
//! by name (PostgreSQL), and stored binlog segments read with
//! `mariadb-binlog`.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use mysql_async::prelude::Queryable;
use shard_agent::repo::Repository;
use topology::{Engine, Topology};

use crate::consistency::{bank_state, workload, MYSQL_SETUP, PG_SETUP};
use crate::support::{self, db, PrivateSandbox};

/// Each bank table's checksum on every shard, by the server's own means.
pub(crate) async fn checksums(topo: &Topology, tables: &[&str]) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    for s in &topo.shards {
        for t in tables {
            let v = match s.engine {
                Engine::Mysql => format!("{:?}", db::mysql_checksum(s, &format!("bank.{t}")).await),
                Engine::Postgres => db::pg_digest(s, "bank", "public", t).await,
            };
            out.insert(format!("{}/{t}", s.name), v);
        }
    }
    out
}

fn run_ok(args: &[&str]) -> support::Run {
    let run = support::shardcut(args);
    assert_eq!(run.code, 0, "shardcut {args:?}: {run:?}");
    run
}

pub(crate) async fn run_ok_async(args: &[&str]) -> support::Run {
    let run = support::shardcut_async(args).await;
    assert_eq!(run.code, 0, "shardcut {args:?}: {run:?}");
    run
}

/// `restore --until UNTIL` from `source` into `target`, with `extra`
/// options, as it ended.
pub(crate) async fn restore_until(
    source: &str,
    target: &str,
    until: &str,
    extra: &[&str],
) -> support::Run {
    let args = [
        &[
            "restore", "-t", source, "--target", target, "--until", until,
        ],
        extra,
    ]
    .concat();
    support::shardcut_async(&args).await
}

/// [`restore_until`] that must succeed with Q = 1.
async fn restored_q1(source: &str, target: &str, until: &str, extra: &[&str]) -> support::Run {
    let run = restore_until(source, target, until, &[extra, &["--json"]].concat()).await;
    assert_eq!(run.code, 0, "{run:?}");
    assert_eq!(run.json()["quality"]["score"], 1.0, "{run:?}");
    run
}

/// `restore --until UNTIL --json` of the newest backup into `target`; it
/// must succeed with Q = 1.
async fn restore_q1(source: &str, target: &std::path::Path, until: &str) -> support::Run {
    restored_q1(source, target.to_str().unwrap(), until, &[]).await
}

/// `restore --backup BACKUP --until UNTIL --overwrite --json` from
/// `source` into `target`; it must succeed.
async fn restore_backup_until(
    source: &str,
    backup: &str,
    target: &str,
    until: &str,
) -> support::Run {
    let run = restore_until(
        source,
        target,
        until,
        &["--backup", backup, "--overwrite", "--json"],
    )
    .await;
    assert_eq!(run.code, 0, "{run:?}");
    run
}

fn start_workload(
    topo: &Topology,
    next_id: &Arc<AtomicU64>,
) -> (Arc<AtomicBool>, Vec<tokio::task::JoinHandle<()>>) {
    let stop = Arc::new(AtomicBool::new(false));
    let workers = [3u64, 5]
        .into_iter()
        .map(|seed| tokio::spawn(workload(topo.clone(), seed, next_id.clone(), stop.clone())))
        .collect();
    (stop, workers)
}

async fn stop_workload(stop: Arc<AtomicBool>, workers: Vec<tokio::task::JoinHandle<()>>) {
    stop.store(true, Ordering::Relaxed);
    for w in workers {
        w.await.unwrap();
    }
}

fn follow(topo: &str) -> std::process::Child {
    std::process::Command::new(support::bin("shardcut"))
        .args(["capture", "-t", topo, "--follow", "--interval", "100ms"])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restores_to_marks_and_latest_exactly_through_a_killed_capture() {
    let sb = PrivateSandbox::up(2, 2, "ready");
    let dir = tempfile::tempdir().unwrap();
    let topo_path = support::topology_variant(&sb.topology(), dir.path(), &[]);
    let arg = topo_path.to_str().unwrap();
    let topo = db::topology(&topo_path);
    db::setup_all(&topo, MYSQL_SETUP, "bank", PG_SETUP).await;
    let tables = ["accounts", "ledger"];

    // Capture starts (slots created) before the backup it continues.
    run_ok_async(&["capture", "-t", arg, "--once", "--no-mark"]).await;
    let next_id = Arc::new(AtomicU64::new(1));
    let (stop, workers) = start_workload(&topo, &next_id);
    tokio::time::sleep(Duration::from_millis(400)).await;
    run_ok_async(&["backup", "-t", arg, "--json"]).await;

    // Capture runs while writes go on, and is killed (SIGKILL) mid-run.
    let mut capture = follow(arg);
    tokio::time::sleep(Duration::from_millis(1500)).await;
    capture.kill().unwrap();
    capture.wait().unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    stop_workload(stop, workers).await;
    let at_quiet = checksums(&topo, &tables).await;
    run_ok_async(&["mark", "-t", arg, "--name", "quiet"]).await;

    // Writes resume; a mark is taken while transfers are in flight; capture
    // is restarted and killed again.
    let (stop, workers) = start_workload(&topo, &next_id);
    let mut capture = follow(arg);
    tokio::time::sleep(Duration::from_millis(700)).await;
    run_ok_async(&["mark", "-t", arg, "--name", "busy"]).await;
    tokio::time::sleep(Duration::from_millis(700)).await;
    capture.kill().unwrap();
    capture.wait().unwrap();
    tokio::time::sleep(Duration::from_millis(500)).await;
    stop_workload(stop, workers).await;
    let transfers = next_id.load(Ordering::Relaxed);
    assert!(
        transfers > 100,
        "the workload made only {transfers} transfers"
    );
    let at_end = checksums(&topo, &tables).await;
    assert_ne!(
        at_quiet, at_end,
        "writes after the mark must change the data"
    );
    // Caught up after capture --once. PostgreSQL writes WAL records of its
    // own, with no transaction (its background writer logs the running
    // transactions every 15 s): one may land between the capture and the
    // status (seen once: 56 bytes, no transaction). A round more catches
    // it; a capture that never catches up fails every round.
    let mut status = serde_json::Value::Null;
    for _ in 0..4 {
        run_ok_async(&["capture", "-t", arg, "--once"]).await;
        status = run_ok_async(&["status", "-t", arg, "--json"]).await.json();
        let streams = status["streams"].as_array().unwrap();
        if streams.iter().all(|s| s["lag_bytes"] == 0) {
            break;
        }
    }
    for s in status["streams"].as_array().unwrap() {
        assert_eq!(s["lag_bytes"], 0, "caught up after capture --once: {s}");
    }

    let target = PrivateSandbox::up(2, 2, "ready");
    let tgt = target.topology();
    let tgt_arg = tgt.to_str().unwrap();
    let restored = db::topology(&tgt);

    // The mark taken with writes stopped: equal to what the source held.
    restored_q1(arg, tgt_arg, "mark:quiet", &[]).await;
    assert_eq!(
        checksums(&restored, &tables).await,
        at_quiet,
        "restore to mark quiet"
    );

    // The mark taken during transfers: consistent across shards.
    restored_q1(arg, tgt_arg, "mark:busy", &["--overwrite"]).await;
    let (debits, credits) = bank_state(&restored).await;
    let orphans = credits.difference(&debits).count();
    assert_eq!(
        orphans, 0,
        "restored to mark busy: {orphans} credits without their debit"
    );
    assert!(!credits.is_empty(), "mark busy holds transfers");

    // Latest: the final state.
    restored_q1(arg, tgt_arg, "latest", &["--overwrite"]).await;
    assert_eq!(
        checksums(&restored, &tables).await,
        at_end,
        "restore to latest"
    );
    // A mark of three of the four shards (taken with a topology that lacks
    // pg-1): a whole restore to it would leave pg-1 as it was at the
    // backup, under a report of the mark, so it is refused naming the
    // shard; nothing is restored.
    let yaml = std::fs::read_to_string(&topo_path).unwrap();
    let without = yaml.replace(
        &format!("  - name: pg-1\n{}", shard_lines(&topo_path, "pg-1")),
        "",
    );
    assert_ne!(without, yaml, "pg-1 left out");
    let three = dir.path().join("three.yaml");
    std::fs::write(&three, without).unwrap();
    run_ok_async(&["mark", "-t", three.to_str().unwrap(), "--name", "three"]).await;
    run_ok_async(&["capture", "-t", arg, "--once", "--no-mark"]).await;
    let run = restore_until(arg, tgt_arg, "mark:three", &["--overwrite"]).await;
    assert_eq!(run.code, 2, "{run:?}");
    assert!(
        run.stderr
            .contains("holds shard(s) pg-1 that mark `three` does not cover"),
        "{run:?}"
    );

    eprintln!("pitr: {transfers} transfers; marks quiet and busy and latest restored exactly");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ddl_replays_on_mariadb_is_refused_by_name_on_postgres_and_segments_read_with_mariadb_binlog(
) {
    let sb = PrivateSandbox::up(1, 1, "ready");
    let dir = tempfile::tempdir().unwrap();
    let topo_path = support::topology_variant(&sb.topology(), dir.path(), &[]);
    let arg = topo_path.to_str().unwrap();
    let topo = db::topology(&topo_path);
    db::setup_all(&topo, MYSQL_SETUP, "bank", PG_SETUP).await;
    run_ok(&["capture", "-t", arg, "--once", "--no-mark"]);
    run_ok(&["backup", "-t", arg]);
    let my = topo
        .shards
        .iter()
        .find(|s| s.engine == Engine::Mysql)
        .unwrap();
    let pg = topo
        .shards
        .iter()
        .find(|s| s.engine == Engine::Postgres)
        .unwrap();
    let mut c = db::mysql(my, Some("bank")).await;
    for sql in [
        "INSERT INTO ledger VALUES (1, 'debit', 5)",
        "ALTER TABLE ledger ADD COLUMN note VARCHAR(20) DEFAULT 'x'",
        "INSERT INTO ledger VALUES (2, 'debit', 6, 'after ddl')",
        "CREATE TABLE audit (id INT PRIMARY KEY, what TEXT)",
        "INSERT INTO audit VALUES (1, 'created after the backup')",
        // DDL under a mode of its own: replayed under the replay's, the
        // name in double quotes was a syntax error, and the function
        // joined with OR.
        "SET SESSION sql_mode = 'ANSI_QUOTES,PIPES_AS_CONCAT'",
        "CREATE TABLE \"quoted\" (id INT PRIMARY KEY)",
        "CREATE FUNCTION joined() RETURNS VARCHAR(8) DETERMINISTIC RETURN 'a' || 'b'",
        // A backslash read as these modes read it: in a name (no escape
        // under ANSI_QUOTES) and at the end of a string (no escape under
        // NO_BACKSLASH_ESCAPES). The replay stopped at both.
        "CREATE TABLE \"back\\slash\" (id INT PRIMARY KEY)",
        "SET SESSION sql_mode = 'NO_BACKSLASH_ESCAPES'",
        "ALTER TABLE ledger COMMENT 'C:\\temp\\'",
        "SET SESSION sql_mode = DEFAULT",
        "INSERT INTO quoted VALUES (1)",
        "INSERT INTO `back\\slash` VALUES (7)",
    ] {
        c.query_drop(sql).await.unwrap();
    }
    let mode_of_joined = "SELECT SQL_MODE FROM information_schema.ROUTINES \
                          WHERE ROUTINE_SCHEMA = 'bank' AND ROUTINE_NAME = 'joined'";
    let source_mode: Option<String> = c.query_first(mode_of_joined).await.unwrap();
    let p = db::pg(pg, "bank").await;
    p.batch_execute("INSERT INTO ledger VALUES (1, 'credit', 5)")
        .await
        .unwrap();
    run_ok(&["capture", "-t", arg, "--once"]);

    // MariaDB's DDL replays: both tables equal the source afterwards.
    let target = PrivateSandbox::up(1, 1, "ready");
    let tgt = target.topology();
    let tgt_arg = tgt.to_str().unwrap();
    let run = run_ok(&[
        "restore", "-t", arg, "--target", tgt_arg, "--until", "latest", "--json",
    ]);
    assert_eq!(run.json()["quality"]["score"], 1.0, "{run:?}");
    let tmy = db::topology(&tgt)
        .shards
        .into_iter()
        .find(|s| s.engine == Engine::Mysql)
        .unwrap();
    for t in [
        "bank.ledger",
        "bank.audit",
        "bank.quoted",
        "bank.`back\\slash`",
    ] {
        let source = db::mysql_checksum(my, t).await;
        assert!(source.is_some(), "{t}");
        assert_eq!(
            db::mysql_checksum(&tmy, t).await,
            source,
            "{t} after replaying ADD COLUMN / CREATE TABLE"
        );
    }
    let mut t = db::mysql(&tmy, Some("bank")).await;
    let comment: Option<String> = t
        .query_first(
            "SELECT TABLE_COMMENT FROM information_schema.TABLES \
             WHERE TABLE_SCHEMA = 'bank' AND TABLE_NAME = 'ledger'",
        )
        .await
        .unwrap();
    assert_eq!(comment.as_deref(), Some("C:\\temp\\"));
    let joined: Option<String> = t.query_first("SELECT joined()").await.unwrap();
    assert_eq!(joined.as_deref(), Some("ab"));
    let target_mode: Option<String> = t.query_first(mode_of_joined).await.unwrap();
    assert_eq!(target_mode, source_mode);
    assert!(
        source_mode
            .as_deref()
            .is_some_and(|m| m.contains("ANSI_QUOTES")),
        "{source_mode:?}"
    );
    t.disconnect().await.unwrap();

    // The stored segment is a binlog file mariadb-binlog reads.
    let repo = db::repository(&topo);
    let segs = shard_agent::capture::list_segments(&repo, &my.name, "binlog").unwrap();
    assert!(!segs.is_empty());
    let raw = shard_agent::capture::load_segment(&repo, segs.last().unwrap()).unwrap();
    let file = dir.path().join("segment.binlog");
    std::fs::write(&file, raw).unwrap();
    let out = std::process::Command::new("mariadb-binlog")
        .args([
            "--base64-output=decode-rows",
            "--verbose",
            file.to_str().unwrap(),
        ])
        .output()
        .expect("mariadb-binlog (package mariadb-client) runs");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "mariadb-binlog: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        text.contains("ADD COLUMN note"),
        "mariadb-binlog shows the DDL:\n{text}"
    );
    assert!(
        text.contains("### INSERT INTO `bank`.`audit`"),
        "mariadb-binlog decodes the rows:\n{text}"
    );

    // PostgreSQL: a column added after the backup cannot be replayed
    // (logical decoding carries no DDL): refused by name, target untouched.
    p.batch_execute(
        "ALTER TABLE ledger ADD COLUMN note text; INSERT INTO ledger VALUES (2, 'credit', 6, 'y')",
    )
    .await
    .unwrap();
    run_ok(&["capture", "-t", arg, "--once"]);
    let run = support::shardcut(&[
        "restore",
        "-t",
        arg,
        "--target",
        tgt_arg,
        "--until",
        "latest",
        "--overwrite",
    ]);
    assert_eq!(run.code, 2, "{run:?}");
    assert!(
        run.stderr.contains("bank.public.ledger") && run.stderr.contains("ALTER TABLE"),
        "the refusal names the table and the kind of change: {}",
        run.stderr
    );

    // The slot's retained WAL is reported; removing capture drops the slot.
    let status = run_ok(&["status", "-t", arg, "--json"]).json();
    let pg_stream = status["streams"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["shard"] == pg.name.as_str())
        .unwrap()
        .clone();
    assert!(pg_stream["retained_wal_bytes"].is_u64(), "{pg_stream}");
    let slots = |c: tokio_postgres::Client| async move {
        c.query_one(
            "SELECT count(*) FROM pg_replication_slots WHERE slot_name LIKE 'shardcut_%'",
            &[],
        )
        .await
        .unwrap()
        .get::<_, i64>(0)
    };
    assert_eq!(slots(db::pg(pg, "bank").await).await, 1);
    run_ok(&["capture", "-t", arg, "--remove"]);
    assert_eq!(
        slots(db::pg(pg, "bank").await).await,
        0,
        "capture --remove drops the slot"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn incremental_chains_and_expire_keep_what_kept_points_need() {
    let sb = PrivateSandbox::up(1, 1, "ready");
    let dir = tempfile::tempdir().unwrap();
    let topo_path = support::topology_variant(&sb.topology(), dir.path(), &[]);
    let arg = topo_path.to_str().unwrap();
    let topo = db::topology(&topo_path);
    db::setup_all(&topo, MYSQL_SETUP, "bank", PG_SETUP).await;
    let tables = ["accounts", "ledger"];
    let next_id = Arc::new(AtomicU64::new(1));
    // Writes for `ms`, and on until some transfers are in: on a loaded
    // machine the workers' connections can take the whole window, and a
    // window with no change leaves no segment for expire to find.
    let writes = |ms: u64| {
        let (topo, next_id) = (topo.clone(), next_id.clone());
        async move {
            let from = next_id.load(Ordering::Relaxed);
            let (stop, workers) = start_workload(&topo, &next_id);
            tokio::time::sleep(Duration::from_millis(ms)).await;
            let deadline = std::time::Instant::now() + Duration::from_secs(60);
            while next_id.load(Ordering::Relaxed) < from + 10 {
                assert!(
                    std::time::Instant::now() < deadline,
                    "no transfers within 60 s"
                );
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            stop_workload(stop, workers).await;
        }
    };
    let backup = |extra: &'static [&'static str]| {
        let mut args = vec!["backup", "-t", arg, "--json"];
        args.extend_from_slice(extra);
        let run = run_ok(&args);
        run.json()["backup_id"].as_str().unwrap().to_string()
    };

    // No capture yet: an incremental backup is refused by name.
    run_ok(&["backup", "-t", arg]);
    let refused = support::shardcut(&["backup", "-t", arg, "--incremental"]);
    assert_eq!(refused.code, 2, "{refused:?}");
    assert!(refused.stderr.contains("no capture"), "{}", refused.stderr);

    run_ok(&["capture", "-t", arg, "--once", "--no-mark"]);
    // After a full backup of fewer shards than the topology names now, an
    // incremental one is refused: the new shard's rows are in no backup.
    // It was stored complete before, and restoring it failed.
    let text = std::fs::read_to_string(&topo_path).unwrap();
    let (mysql_only, _) = text.split_once("  - name: pg-0").unwrap();
    let one = dir.path().join("mysql-only.yaml");
    std::fs::write(&one, mysql_only).unwrap();
    run_ok(&["backup", "-t", one.to_str().unwrap()]);
    let refused = support::shardcut(&["backup", "-t", arg, "--incremental"]);
    assert_eq!(refused.code, 2, "{refused:?}");
    assert!(
        refused
            .stderr
            .contains("shard pg-0 is not in the full backup"),
        "{}",
        refused.stderr
    );

    let full_a = backup(&[]);
    writes(400).await;
    let incr_b = backup(&["--incremental"]);
    writes(400).await;
    let full_c = backup(&[]);
    writes(400).await;
    let incr_d = backup(&["--incremental"]);
    let at_d = checksums(&topo, &tables).await;
    writes(400).await;
    run_ok(&["mark", "-t", arg, "--name", "after-d"]);
    let at_mark = checksums(&topo, &tables).await;
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let after_mark_time = chrono::Utc::now().to_rfc3339();
    tokio::time::sleep(Duration::from_millis(1100)).await;
    writes(300).await;
    run_ok(&["capture", "-t", arg, "--once"]);

    let list = run_ok(&["list", "-t", arg, "--json"]).json();
    let kinds: Vec<(String, String, String)> = list["backups"]
        .as_array()
        .unwrap()
        .iter()
        .map(|b| {
            (
                b["backup_id"].as_str().unwrap().to_string(),
                b["kind"].as_str().unwrap().to_string(),
                b["base"].as_str().unwrap_or("").to_string(),
            )
        })
        .collect();
    assert!(
        kinds.contains(&(incr_b.clone(), "incremental".into(), full_a.clone())),
        "{kinds:?}"
    );
    assert!(
        kinds.contains(&(incr_d.clone(), "incremental".into(), full_c.clone())),
        "{kinds:?}"
    );

    // A dry run deletes nothing; the real run keeps D and its base C only.
    let repo_dir = db::topology(&topo_path);
    let count = || {
        let repo = db::repository(&repo_dir);
        repo.list("").unwrap().len()
    };
    let before = count();
    run_ok(&["expire", "-t", arg, "--keep-last", "1", "--dry-run"]);
    assert_eq!(count(), before, "--dry-run deleted objects");
    let run = run_ok(&["expire", "-t", arg, "--keep-last", "1", "--json"]);
    let kept: Vec<String> = serde_json::from_value(run.json()["kept"].clone()).unwrap();
    assert_eq!(kept, vec![full_c.clone(), incr_d.clone()], "{run:?}");
    assert!(
        run.json()["expired_segments"].as_u64().unwrap() > 0,
        "old segments are expired: {run:?}"
    );
    assert!(count() < before);

    // What was kept still restores exactly: D (C + its segments) and the
    // mark after it.
    let target = PrivateSandbox::up(1, 1, "ready");
    let tgt = target.topology();
    let tgt_arg = tgt.to_str().unwrap();
    let restored = db::topology(&tgt);
    let run = run_ok(&[
        "restore", "-t", arg, "--target", tgt_arg, "--backup", &incr_d, "--json",
    ]);
    assert_eq!(run.json()["quality"]["score"], 1.0, "{run:?}");
    assert_eq!(
        checksums(&restored, &tables).await,
        at_d,
        "restore of incremental D"
    );
    let run = run_ok(&[
        "restore",
        "-t",
        arg,
        "--target",
        tgt_arg,
        "--until",
        "mark:after-d",
        "--overwrite",
        "--json",
    ]);
    assert_eq!(run.json()["quality"]["score"], 1.0, "{run:?}");
    assert_eq!(
        checksums(&restored, &tables).await,
        at_mark,
        "restore to the mark after D"
    );
    // A time restores to the newest mark at or before it, and says which.
    let run = run_ok(&[
        "restore",
        "-t",
        arg,
        "--target",
        tgt_arg,
        "--until",
        &after_mark_time,
        "--overwrite",
        "--json",
    ]);
    assert!(run.stderr.contains("mark after-d"), "{}", run.stderr);
    assert_eq!(
        checksums(&restored, &tables).await,
        at_mark,
        "restore to a time after mark after-d"
    );
    let verify = run_ok(&["verify", "-t", arg, "--backup", &incr_d]);
    assert!(verify.stdout.contains("OK"), "{verify:?}");
    // Its mark gone, the incremental backup cannot be restored: verify says
    // so (it passed before, checking only the segments and the base).
    let mark = shard_agent::manifest::keys::mark(&format!("backup-{incr_d}"));
    db::repository(&repo_dir).delete(&mark).unwrap();
    let verify = support::shardcut(&["verify", "-t", arg, "--backup", &incr_d]);
    assert_eq!(verify.code, 3, "{verify:?}");
    assert!(
        verify.stdout.contains(&format!(
            "BAD {mark}: the mark this incremental backup restores to is unreadable"
        )),
        "{verify:?}"
    );
}

/// `shardcut capture` with a spill threshold of `spill` bytes.
fn capture_spilling(topology: &str, spill: &str, extra: &[&str]) -> support::Run {
    let out = std::process::Command::new(support::bin("shardcut"))
        .args(["capture", "-t", topology, "--once"])
        .args(extra)
        .env("SHARDCUT_CAPTURE_SPILL_BYTES", spill)
        .output()
        .unwrap();
    let run = support::Run::from(out);
    assert_eq!(run.code, 0, "{run:?}");
    run
}

/// A transaction far larger than the spill threshold is held in a
/// temporary file while captured, on both engines (the capture says so per
/// shard), and replays exactly. MariaDB capture held a transaction, and
/// the segment it went into, in memory however large.
#[tokio::test(flavor = "multi_thread")]
async fn a_transaction_larger_than_memory_allows_is_captured_on_disk_and_replays_exactly() {
    let sb = PrivateSandbox::up(1, 1, "ready");
    let dir = tempfile::tempdir().unwrap();
    let topo_path = support::topology_variant(&sb.topology(), dir.path(), &[]);
    let arg = topo_path.to_str().unwrap();
    let topo = db::topology(&topo_path);
    db::setup_all(
        &topo,
        &[
            "CREATE DATABASE bank",
            "CREATE TABLE bank.big (id INT PRIMARY KEY, payload TEXT) ENGINE=InnoDB",
            "INSERT INTO bank.big VALUES (0, 'seed')",
        ],
        "bank",
        "CREATE TABLE big (id int PRIMARY KEY, payload text); INSERT INTO big VALUES (0, 'seed');",
    )
    .await;
    let (my, pg) = (&topo.shards[0], &topo.shards[1]);
    // 64 KiB: any transaction over that is held in a file, not in memory.
    let spill = "65536";
    capture_spilling(arg, spill, &["--no-mark"]);
    run_ok_async(&["backup", "-t", arg]).await;
    // One transaction of some 4 MiB (60 times the threshold), then a small
    // one, on each engine.
    let pg_client = db::pg(pg, "bank").await;
    pg_client
        .batch_execute(
            "BEGIN; INSERT INTO big SELECT g, repeat(md5(g::text), 2) FROM generate_series(1, 30000) g; \
             UPDATE big SET payload = upper(payload) WHERE id % 7 = 0; DELETE FROM big WHERE id % 11 = 0; COMMIT; \
             INSERT INTO big VALUES (-1, 'after');",
        )
        .await
        .unwrap();
    let mut c = db::mysql(my, Some("bank")).await;
    c.query_drop(
        "BEGIN; INSERT INTO big SELECT seq, REPEAT(MD5(seq), 2) FROM seq_1_to_30000; \
         UPDATE big SET payload = UPPER(payload) WHERE id % 7 = 0; DELETE FROM big WHERE id % 11 = 0; COMMIT; \
         INSERT INTO big VALUES (-1, 'after')",
    )
    .await
    .unwrap();
    // One row event of 1.8 MB: its BINLOG text (2.4 MB) passes the
    // target's 2 MiB max_allowed_packet below, and goes in two fragments
    // (the replay failed with "Packet too large").
    c.query_drop("ALTER TABLE big MODIFY payload MEDIUMTEXT")
        .await
        .unwrap();
    c.query_drop("INSERT INTO big VALUES (-2, REPEAT('x', 1800000))")
        .await
        .unwrap();
    c.disconnect().await.unwrap();
    let run = capture_spilling(arg, spill, &["-v"]);
    for shard in ["mysql-0", "pg-0"] {
        assert!(
            run.stderr
                .lines()
                .any(|l| l.contains(&format!("{shard}: a transaction of "))
                    && l.contains("held in a temporary file")),
            "{shard}: {run:?}"
        );
    }

    // The big transactions' segments are far larger than the threshold.
    let repo = db::repository(&topo);
    for (shard, stream) in [("pg-0", "bank"), ("mysql-0", "binlog")] {
        let segs = shard_agent::capture::list_segments(&repo, shard, stream).unwrap();
        let largest = segs.iter().map(|s| s.bytes_raw).max().unwrap_or(0);
        assert!(
            largest > 40 * 65536,
            "{shard}: largest segment {largest} bytes"
        );
    }

    let target = PrivateSandbox::up(1, 1, "ready");
    let tgt = target.topology();
    let t = db::topology(&tgt);
    // The MariaDB transaction's INSERT is one statement of some 2.5 MiB of
    // row events: replay sends it in pieces, each well under a 2 MiB
    // max_allowed_packet (sent whole, the target refused it); the row of
    // 1.8 MB goes in two fragments.
    db::mysql(&t.shards[0], None)
        .await
        .query_drop("SET GLOBAL max_allowed_packet = 2097152")
        .await
        .unwrap();
    restore_q1(arg, &tgt, "latest").await;
    assert_eq!(
        db::pg_digest(&t.shards[1], "bank", "public", "big").await,
        db::pg_digest(pg, "bank", "public", "big").await
    );
    assert_eq!(
        db::mysql_checksum(&t.shards[0], "bank.big").await,
        db::mysql_checksum(my, "bank.big").await
    );
}

const PG_KINDS: &str = r#"
CREATE TYPE mood AS ENUM ('sad', 'ok', 'happy');
CREATE DOMAIN positive AS int CHECK (VALUE > 0);
CREATE TABLE kinds (
    id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    c_int int NOT NULL,
    c_gen bigint GENERATED ALWAYS AS (c_int * 2) STORED,
    c_mood mood, c_pos positive, c_arr int[], c_bytea bytea, c_num numeric,
    c_ts timestamptz, c_big text, last_update timestamptz);
CREATE TABLE by_default (id int GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY, v text);
CREATE TABLE typmods (id int PRIMARY KEY, c_char char(8), c_bit bit(4), c_varbit varbit(8),
    c_vc varchar(5), c_num numeric(6,2), c_ts timestamp(2), c_chars char(3)[]);
CREATE TABLE dups (a int, b text);
ALTER TABLE dups REPLICA IDENTITY FULL;
CREATE TABLE parted (id int, region text, v int, PRIMARY KEY (id, region)) PARTITION BY LIST (region);
CREATE TABLE parted_eu PARTITION OF parted FOR VALUES IN ('eu');
CREATE TABLE parted_us PARTITION OF parted FOR VALUES IN ('us');
CREATE TABLE uniq (id int PRIMARY KEY, code text UNIQUE);
CREATE TABLE animal (id int PRIMARY KEY, name text);
CREATE TABLE dog (good bool) INHERITS (animal);
ALTER TABLE dog ADD PRIMARY KEY (id);
CREATE TABLE parent (id int PRIMARY KEY);
CREATE TABLE child (id int PRIMARY KEY, parent_id int REFERENCES parent ON DELETE CASCADE);
CREATE TABLE audit (id serial PRIMARY KEY, what text);
CREATE FUNCTION touch() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN NEW.last_update := clock_timestamp(); RETURN NEW; END $$;
CREATE TRIGGER kinds_touch BEFORE INSERT OR UPDATE ON kinds FOR EACH ROW EXECUTE FUNCTION touch();
CREATE FUNCTION note() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN INSERT INTO audit (what) VALUES ('parent ' || NEW.id); RETURN NEW; END $$;
CREATE TRIGGER parent_note AFTER INSERT ON parent FOR EACH ROW EXECUTE FUNCTION note();
INSERT INTO kinds (c_int, c_mood, c_pos, c_arr, c_bytea, c_num, c_ts, c_big)
    VALUES (1, 'ok', 5, '{1,2,NULL}', '\x00ff', 'NaN', 'infinity',
            (SELECT string_agg(md5(i::text), '') FROM generate_series(1, 4000) i)),
           (2, 'sad', 7, '{}', '', '-Infinity', '-infinity', NULL);
INSERT INTO by_default (v) VALUES ('one');
INSERT INTO typmods VALUES (1, 'ab', B'1010', B'1', 'abc', 1.5, '2026-01-01 00:00:00.25', '{x,yz}');
INSERT INTO dups VALUES (1, 'a'), (1, 'a'), (1, 'a'), (2, 'b');
INSERT INTO parted VALUES (1, 'eu', 1), (2, 'us', 2);
INSERT INTO parent VALUES (1), (2);
INSERT INTO child VALUES (10, 1), (11, 1), (20, 2);
INSERT INTO animal VALUES (1, 'cat'), (2, 'owl');
INSERT INTO uniq VALUES (1, 'a'), (2, 'b');
INSERT INTO dog VALUES (1, 'rex', true), (2, 'fido', false);
"#;

/// Changes after the base backup that logical decoding sends specially.
const PG_KIND_CHANGES: &str = r#"
INSERT INTO kinds (c_int, c_mood, c_pos, c_arr, c_bytea, c_num, c_ts, c_big)
    VALUES (3, 'happy', 9, '{{1,2},{3,4}}', '\xdeadbeef', 'Infinity', '1970-01-01 00:00:00+00', repeat('y', 300000));
UPDATE kinds SET c_int = c_int + 10 WHERE id = 1;
UPDATE kinds SET c_mood = 'happy', c_num = 1.5 WHERE id = 2;
DELETE FROM kinds WHERE id = 3;
INSERT INTO by_default (v) VALUES ('two');
INSERT INTO typmods VALUES (2, 'abcdefgh', B'0110', B'10101010', 'hello', 1234.56, '2026-12-04 01:02:03.45', '{abc,d}');
UPDATE typmods SET c_char = 'xy', c_bit = B'1111', c_num = 9.99 WHERE id = 1;
INSERT INTO by_default (id, v) VALUES (100, 'explicit');
UPDATE dups SET b = 'changed' WHERE ctid = (SELECT ctid FROM dups WHERE a = 1 LIMIT 1);
DELETE FROM dups WHERE ctid = (SELECT ctid FROM dups WHERE a = 1 AND b = 'a' LIMIT 1);
INSERT INTO dups VALUES (2, 'b');
INSERT INTO parted VALUES (3, 'eu', 3);
UPDATE parted SET region = 'us' WHERE id = 1;
UPDATE parted SET v = v + 1 WHERE id = 2;
INSERT INTO parent VALUES (3);
INSERT INTO child VALUES (30, 3);
DELETE FROM parent WHERE id = 1;
UPDATE ONLY animal SET name = 'lion' WHERE id = 1;
BEGIN;
UPDATE uniq SET code = 'swap' WHERE id = 1;
UPDATE uniq SET code = 'a' WHERE id = 2;
UPDATE uniq SET code = 'b' WHERE id = 1;
COMMIT;
DELETE FROM ONLY animal WHERE id = 2;
"#;

const MY_KINDS: &[&str] = &[
    "CREATE DATABASE bank",
    "CREATE TABLE bank.kinds (id INT AUTO_INCREMENT PRIMARY KEY, a INT NOT NULL, v INT AS (a * 2) VIRTUAL, s INT AS (a * 3) STORED, big LONGTEXT, ts TIMESTAMP(6) NULL) ENGINE=InnoDB",
    "CREATE TABLE bank.nokey (a INT, b VARCHAR(20)) ENGINE=InnoDB",
    "CREATE TRIGGER bank.kinds_touch BEFORE UPDATE ON bank.kinds FOR EACH ROW SET NEW.ts = NOW(6)",
    "INSERT INTO bank.kinds (a, big) VALUES (1, REPEAT('x', 100000)), (2, NULL)",
    "INSERT INTO bank.nokey VALUES (1, 'a'), (1, 'a'), (2, 'b')",
    "CREATE TABLE bank.owner (id INT PRIMARY KEY, name VARCHAR(40)) ENGINE=InnoDB",
    "CREATE TABLE bank.pet (id INT PRIMARY KEY, owner_id INT NOT NULL, name VARCHAR(40), \
     FOREIGN KEY (owner_id) REFERENCES bank.owner (id)) ENGINE=InnoDB",
    "INSERT INTO bank.owner VALUES (0, 'first')",
    "INSERT INTO bank.pet VALUES (0, 0, NULL)",
    // A sequence: the server logs each refill of its cache as a row of
    // its table, which replay applies as it does any row.
    "CREATE SEQUENCE bank.ids START WITH 100 INCREMENT BY 5 CACHE 3",
    "CREATE TABLE bank.ticket (id BIGINT PRIMARY KEY DEFAULT NEXTVAL(bank.ids), note VARCHAR(20)) ENGINE=InnoDB",
    "INSERT INTO bank.ticket (note) VALUES ('a'), ('b')",
    // A system-versioned table: replay brings its history, system time
    // included, as the row events logged it.
    "CREATE TABLE bank.hist (id INT PRIMARY KEY, v INT) ENGINE=InnoDB WITH SYSTEM VERSIONING",
    "INSERT INTO bank.hist VALUES (1, 1), (2, 2)",
];

const MY_KIND_CHANGES: &[&str] = &[
    "INSERT INTO bank.kinds (a, big) VALUES (3, 'three')",
    "UPDATE bank.kinds SET a = a + 10 WHERE id = 1",
    "DELETE FROM bank.kinds WHERE id = 2",
    "UPDATE bank.nokey SET b = 'changed' WHERE a = 1 LIMIT 1",
    "INSERT INTO bank.nokey VALUES (3, 'c')",
    // Replay applies tables on parallel connections: the child table is
    // seen first, then its parent, then children of new parents. A child
    // row must never reach the target before its parent on another
    // connection (linked tables share one).
    "UPDATE bank.pet SET name = 'rex' WHERE id = 0",
    "INSERT INTO bank.owner SELECT seq, CONCAT('owner ', seq) FROM bank.seq_1_to_2000",
    "INSERT INTO bank.pet SELECT seq, seq, 'pet' FROM bank.seq_1_to_2000",
    "INSERT INTO bank.ticket (note) SELECT CONCAT('t', seq) FROM bank.seq_1_to_20",
    "UPDATE bank.hist SET v = v + 1",
    "DELETE FROM bank.hist WHERE id = 1",
    "INSERT INTO bank.hist VALUES (3, 3)",
];

/// The system time of `bank.hist` (hidden, as the server names it).
const HIST_TIME: (&str, &str) = ("row_start", "row_end");

const PG_KIND_TABLES: &[&str] = &[
    "kinds",
    "by_default",
    "typmods",
    "dups",
    "parted_eu",
    "parted_us",
    "parent",
    "child",
    "audit",
    "animal",
    "dog",
    "uniq",
];

/// Sequences of the PostgreSQL shard's `bank` database and their values.
async fn sequences(shard: &topology::Shard) -> BTreeMap<String, i64> {
    db::pg(shard, "bank")
        .await
        .query(
            "SELECT sequencename::text, coalesce(last_value, 0) FROM pg_sequences ORDER BY 1",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn every_column_kind_triggers_and_sequences_replay_exactly_to_a_mark_and_latest() {
    let sb = PrivateSandbox::up(1, 1, "ready");
    let dir = tempfile::tempdir().unwrap();
    let topo_path = support::topology_variant(&sb.topology(), dir.path(), &[]);
    let arg = topo_path.to_str().unwrap();
    let topo = db::topology(&topo_path);
    db::setup_all(&topo, MY_KINDS, "bank", PG_KINDS).await;
    let (my, pg) = (&topo.shards[0], &topo.shards[1]);
    run_ok_async(&["capture", "-t", arg, "--once", "--no-mark"]).await;
    run_ok_async(&["backup", "-t", arg]).await;
    let mut c = db::mysql(my, None).await;
    for sql in MY_KIND_CHANGES {
        c.query_drop(*sql).await.unwrap();
    }
    db::pg(pg, "bank")
        .await
        .batch_execute(PG_KIND_CHANGES)
        .await
        .unwrap();
    run_ok_async(&["mark", "-t", arg, "--name", "kinds"]).await;
    let at_mark = sequences(pg).await;
    let ids_at_mark = db::mysql_sequence_state(my, "bank.ids").await;
    let hist_at_mark = db::mysql_versions(my, "bank.hist", HIST_TIME).await;
    assert_eq!(hist_at_mark.len(), 5, "{hist_at_mark:?}");
    // More after the mark: `latest` must reach them too.
    db::pg(pg, "bank")
        .await
        .batch_execute("INSERT INTO parent VALUES (4); UPDATE kinds SET c_int = 0 WHERE id = 2;")
        .await
        .unwrap();
    c.query_drop("INSERT INTO bank.kinds (a) VALUES (4)")
        .await
        .unwrap();
    c.query_drop("INSERT INTO bank.ticket (note) SELECT CONCAT('u', seq) FROM bank.seq_1_to_7")
        .await
        .unwrap();
    c.query_drop("UPDATE bank.hist SET v = 30 WHERE id = 3")
        .await
        .unwrap();
    run_ok_async(&["capture", "-t", arg, "--once"]).await;
    let ids_latest = db::mysql_sequence_state(my, "bank.ids").await;
    assert_ne!(ids_latest, ids_at_mark);

    let target = PrivateSandbox::up(1, 1, "ready");
    let tgt = target.topology();
    let tgt_arg = tgt.to_str().unwrap();
    let t = db::topology(&tgt);
    // Changes to tables with a key are netted and applied a table at a
    // time; the rest (an update that leaves a TOASTed value as it was, a
    // table without a key) are statements in between. The last run applies
    // every change as a statement, keeping at most 2 prepared: it
    // deallocates them in the middle of a batch that executes them, and
    // MariaDB's replay applies every change in source order on one
    // connection.
    for (until, net, prepared) in [
        ("mark:kinds", "on", "4096"),
        ("latest", "on", "4096"),
        ("latest", "off", "2"),
    ] {
        let out = tokio::process::Command::new(support::bin("shardcut"))
            .args(["restore", "-t", arg, "--target", tgt_arg, "--until", until])
            .args(["--overwrite", "--json"])
            .env("SHARDCUT_REPLAY_PREPARED", prepared)
            .env("SHARDCUT_REPLAY_NET", net)
            .env(
                "SHARDCUT_REPLAY_WORKERS",
                if net == "on" { "4" } else { "1" },
            )
            .output()
            .await
            .unwrap();
        let run = support::Run::from(out);
        assert_eq!(run.code, 0, "{until}: {run:?}");
        assert_eq!(run.json()["quality"]["score"], 1.0, "{until}: {run:?}");
        if until == "latest" {
            for table in PG_KIND_TABLES {
                assert_eq!(
                    db::pg_digest(&t.shards[1], "bank", "public", table).await,
                    db::pg_digest(pg, "bank", "public", table).await,
                    "{until}: {table}"
                );
            }
            for table in [
                "bank.kinds",
                "bank.nokey",
                "bank.owner",
                "bank.pet",
                "bank.ticket",
            ] {
                assert_eq!(
                    db::mysql_checksum(&t.shards[0], table).await,
                    db::mysql_checksum(my, table).await,
                    "{until}: {table}"
                );
            }
        }
        // The MariaDB sequence is as the source's was at that point, and
        // gives the target's next row a key no restored row holds.
        let ids = if until == "latest" {
            &ids_latest
        } else {
            &ids_at_mark
        };
        assert_eq!(
            &db::mysql_sequence_state(&t.shards[0], "bank.ids").await,
            ids,
            "{until}"
        );
        let hist = if until == "latest" {
            db::mysql_versions(my, "bank.hist", HIST_TIME).await
        } else {
            hist_at_mark.clone()
        };
        assert_eq!(
            db::mysql_versions(&t.shards[0], "bank.hist", HIST_TIME).await,
            hist,
            "{until}"
        );
        let mut tc = db::mysql(&t.shards[0], None).await;
        tc.query_drop("INSERT INTO bank.ticket (note) VALUES ('on the target')")
            .await
            .unwrap();
        tc.disconnect().await.unwrap();
        // No PostgreSQL sequence is behind the source's at the mark.
        let restored = sequences(&t.shards[1]).await;
        for (name, value) in &at_mark {
            assert!(
                restored.get(name).is_some_and(|v| v >= value),
                "{until}: sequence {name} at {:?}, the source had {value} at the mark",
                restored.get(name)
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_table_capture_refuses_is_named_by_check_and_stops_only_its_own_shard() {
    let sb = PrivateSandbox::up(1, 1, "ready");
    let dir = tempfile::tempdir().unwrap();
    let topo_path = support::topology_variant(&sb.topology(), dir.path(), &[]);
    let arg = topo_path.to_str().unwrap();
    let topo = db::topology(&topo_path);
    db::setup_all(
        &topo,
        &[
            "CREATE DATABASE bank",
            "CREATE TABLE bank.ledger (id INT PRIMARY KEY, amount INT) ENGINE=InnoDB",
        ],
        "bank",
        "CREATE TABLE keyed (id int PRIMARY KEY); CREATE TABLE payment_p1 (id int, amount int); \
         CREATE UNLOGGED TABLE scratch (id int PRIMARY KEY); \
         CREATE TABLE parted (id int PRIMARY KEY) PARTITION BY RANGE (id); \
         CREATE UNLOGGED TABLE parted_1 PARTITION OF parted FOR VALUES FROM (0) TO (10);",
    )
    .await;
    // check is READY (a backup works) and names the tables capture refuses.
    let check = support::shardcut_async(&["check", "-t", arg, "--json"]).await;
    assert_eq!(check.code, 0, "{check:?}");
    assert!(
        check.stdout.contains("bank.public.payment_p1"),
        "check should name the table without a replica identity: {check:?}"
    );
    assert!(
        check.stdout.contains(
            "no WAL is written for their changes: bank.public.parted, bank.public.scratch"
        ),
        "check should name the unlogged table: {check:?}"
    );
    // Capture: the MariaDB shard's stream starts; the PostgreSQL shard is
    // refused by name; exit 1.
    let run = support::shardcut_async(&["capture", "-t", arg, "--once", "--no-mark"]).await;
    assert_eq!(run.code, 1, "{run:?}");
    assert!(
        run.stderr.contains("capture refused on pg-0") && run.stderr.contains("payment_p1"),
        "{run:?}"
    );
    assert!(
        run.stderr
            .contains("table(s) public.parted, public.scratch are unlogged or have unlogged partitions; PostgreSQL writes no WAL"),
        "{run:?}"
    );
    assert!(
        run.stderr.contains("the other shards were captured"),
        "{run:?}"
    );
    let repo = db::repository(&topo);
    assert!(
        shard_agent::capture::StreamState::load(&repo, "mysql-0", "binlog")
            .unwrap()
            .is_some(),
        "the MariaDB shard's capture should have started"
    );
    assert!(
        shard_agent::capture::StreamState::load(&repo, "pg-0", "bank")
            .unwrap()
            .is_none()
    );
}

/// A private sandbox of one MariaDB and one PostgreSQL shard whose `bank`
/// database holds `ledger (id, amount)` on both, with `rows` (an SQL
/// VALUES list, or empty) in it; its topology file is written into `dir`.
pub(crate) async fn ledger_cluster(
    dir: &std::path::Path,
    rows: &str,
) -> (PrivateSandbox, std::path::PathBuf, Topology) {
    let sb = PrivateSandbox::up(1, 1, "ready");
    let topo_path = support::topology_variant(&sb.topology(), dir, &[]);
    let topo = db::topology(&topo_path);
    let insert = if rows.is_empty() {
        String::new()
    } else {
        format!("INSERT INTO ledger VALUES {rows};")
    };
    let my_insert = insert.replace("INTO ledger", "INTO bank.ledger");
    let mut mysql = vec![
        "CREATE DATABASE bank",
        "CREATE TABLE bank.ledger (id INT PRIMARY KEY, amount INT) ENGINE=InnoDB",
    ];
    if !rows.is_empty() {
        mysql.push(my_insert.trim_end_matches(';'));
    }
    let pg = format!("CREATE TABLE ledger (id int PRIMARY KEY, amount int); {insert}");
    db::setup_all(&topo, &mysql, "bank", &pg).await;
    (sb, topo_path, topo)
}

/// Runs `sql` in the `bank` database of both shards of `topo`.
pub(crate) async fn on_both(topo: &Topology, sql: &str) {
    db::mysql(&topo.shards[0], Some("bank"))
        .await
        .query_drop(sql)
        .await
        .unwrap();
    db::pg(&topo.shards[1], "bank")
        .await
        .batch_execute(sql)
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn a_restarted_capture_is_a_new_generation_and_both_generations_restore() {
    let dir = tempfile::tempdir().unwrap();
    let (_sb, topo_path, topo) = ledger_cluster(dir.path(), "").await;
    let arg = topo_path.to_str().unwrap();
    let topo = &topo;
    let write = |from: i32, to: i32| async move {
        for i in from..to {
            on_both(topo, &format!("INSERT INTO ledger VALUES ({i}, {i})")).await;
        }
    };
    // Generation 0: capture, a backup, writes, a mark it reaches.
    run_ok_async(&["capture", "-t", arg, "--once", "--no-mark"]).await;
    let first = support::backup_id(arg).await;
    write(0, 10).await;
    run_ok_async(&["mark", "-t", arg, "--name", "gen0"]).await;
    let at_gen0 = checksums(topo, &["ledger"]).await;
    let gen0_end = run_ok_async(&["capture", "-t", arg, "--once", "--json"]).await;
    // Removed, writes nobody captures, and started again: generation 1.
    run_ok_async(&["capture", "-t", arg, "--remove"]).await;
    write(10, 20).await;
    run_ok_async(&["capture", "-t", arg, "--once", "--no-mark"]).await;
    let second = support::backup_id(arg).await;
    write(20, 30).await;
    let gen1_end = run_ok_async(&["capture", "-t", arg, "--once", "--json"]).await;
    // `list` says how far each backup can be brought: the first as far as
    // its generation got, the second to the newest mark.
    let list = run_ok_async(&["list", "-t", arg, "--json"]).await.json();
    let reach = |id: &str| {
        list["backups"]
            .as_array()
            .unwrap()
            .iter()
            .find(|b| b["backup_id"] == id)
            .map(|b| b["restorable_to"]["mark"].clone())
    };
    assert_eq!(
        reach(&first),
        Some(gen0_end.json()["mark"].clone()),
        "{list}"
    );
    assert_eq!(
        reach(&second),
        Some(gen1_end.json()["mark"].clone()),
        "{list}"
    );
    let status = run_ok_async(&["status", "-t", arg, "--json"]).await;
    let retired = status.json()["retired_generations"]
        .as_array()
        .unwrap()
        .len();
    assert_eq!(retired, 2, "one retired generation per stream: {status:?}");
    assert!(
        status.json()["streams"]
            .as_array()
            .unwrap()
            .iter()
            .all(|s| s["generation"] == 1),
        "{status:?}"
    );

    let target = PrivateSandbox::up(1, 1, "ready");
    let tgt = target.topology();
    let tgt_arg = tgt.to_str().unwrap();
    let t = db::topology(&tgt);
    let restore = |backup: String, until: &'static str| async move {
        restore_backup_until(arg, &backup, tgt_arg, until).await
    };
    // The second backup, brought forward by generation 1.
    let run = restore(second.clone(), "latest").await;
    assert_eq!(run.json()["quality"]["score"], 1.0, "{run:?}");
    assert_eq!(
        checksums(&t, &["ledger"])
            .await
            .values()
            .collect::<Vec<_>>(),
        checksums(topo, &["ledger"])
            .await
            .values()
            .collect::<Vec<_>>()
    );
    // The first backup, to a mark generation 0 reached.
    let run = restore(first.clone(), "mark:gen0").await;
    assert_eq!(run.json()["quality"]["score"], 1.0, "{run:?}");
    assert_eq!(
        checksums(&t, &["ledger"])
            .await
            .values()
            .collect::<Vec<_>>(),
        at_gen0.values().collect::<Vec<_>>()
    );
    // Expire keeps both backups and what each needs.
    run_ok_async(&["expire", "-t", arg, "--keep-last", "2"]).await;
    let run = restore(first, "mark:gen0").await;
    assert_eq!(run.json()["quality"]["score"], 1.0, "{run:?}");
    let run = restore(second, "latest").await;
    assert_eq!(run.json()["quality"]["score"], 1.0, "{run:?}");
}

/// Transfers for `ms` milliseconds, on fresh connections.
async fn transfers(topo: &Topology, next_id: &Arc<AtomicU64>, ms: u64) {
    let (stop, workers) = start_workload(topo, next_id);
    tokio::time::sleep(Duration::from_millis(ms)).await;
    stop_workload(stop, workers).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn capture_follow_rides_out_server_restarts_and_a_binlog_rotation() {
    let sb = PrivateSandbox::up(1, 1, "ready");
    let dir = tempfile::tempdir().unwrap();
    let topo_path = support::topology_variant(&sb.topology(), dir.path(), &[]);
    let arg = topo_path.to_str().unwrap();
    let topo = db::topology(&topo_path);
    db::setup_all(&topo, MYSQL_SETUP, "bank", PG_SETUP).await;
    run_ok_async(&["capture", "-t", arg, "--once", "--no-mark"]).await;
    let next_id = Arc::new(AtomicU64::new(1));
    transfers(&topo, &next_id, 300).await;
    run_ok_async(&["backup", "-t", arg]).await;

    let metrics = dir.path().join("capture.prom");
    let mut capture = std::process::Command::new(support::bin("shardcut"))
        .args([
            "capture",
            "-t",
            arg,
            "--follow",
            "--interval",
            "100ms",
            "--metrics",
        ])
        .arg(&metrics)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    transfers(&topo, &next_id, 800).await;
    // A rotation, then both servers restarted (MariaDB starts a new
    // binlog file, ending the old one without a rotate event).
    let mut c = db::mysql(&topo.shards[0], None).await;
    c.query_drop("FLUSH BINARY LOGS").await.unwrap();
    drop(c);
    transfers(&topo, &next_id, 500).await;
    for shard in ["mysql-0", "pg-0"] {
        sb.stop(shard);
    }
    // While the servers are down, the metrics say which streams wait.
    let failing = "shardcut_capture_failing{shard=\"mysql-0\",stream=\"binlog\"} 1";
    let mut seen = false;
    for _ in 0..50 {
        tokio::time::sleep(Duration::from_millis(100)).await;
        if std::fs::read_to_string(&metrics).is_ok_and(|m| m.contains(failing)) {
            seen = true;
            break;
        }
    }
    assert!(seen, "metrics never showed the failing stream");
    for shard in ["mysql-0", "pg-0"] {
        sb.start(shard);
    }
    transfers(&topo, &next_id, 800).await;
    // Long enough for the retry after the restart (waits double from 1 s).
    tokio::time::sleep(Duration::from_secs(8)).await;
    let m = std::fs::read_to_string(&metrics).unwrap();
    assert!(
        !m.contains(failing),
        "the stream should be captured again: {m}"
    );
    assert!(
        capture.try_wait().unwrap().is_none(),
        "capture --follow exited while a server restarted"
    );
    let term = std::process::Command::new("kill")
        .args(["-TERM", &capture.id().to_string()])
        .status()
        .unwrap();
    assert!(term.success());
    let status = capture.wait().unwrap();
    assert_eq!(status.code(), Some(0), "capture --follow after SIGTERM");

    // It resumes exactly where it stopped: a later round continues the
    // stream (on MariaDB, in the new binlog file) and reaches a new mark.
    run_ok_async(&["capture", "-t", arg, "--once"]).await;
    let target = PrivateSandbox::up(1, 1, "ready");
    let tgt = target.topology();
    restore_q1(arg, &tgt, "latest").await;
    let t = db::topology(&tgt);
    let (debits, credits) = bank_state(&t).await;
    assert_eq!(debits, credits, "every credit with its debit");
    assert!(!debits.is_empty());
    assert_eq!(
        checksums(&t, &["accounts", "ledger"])
            .await
            .values()
            .collect::<Vec<_>>(),
        checksums(&topo, &["accounts", "ledger"])
            .await
            .values()
            .collect::<Vec<_>>()
    );
}

/// MariaDB replay puts single-row changes in key order where they
/// commute, and keeps source order where it matters: a table with a
/// second unique key (values swapped between rows would collide in key
/// order, also when the key is added during the replay), tables a foreign
/// key links (a child before its parent), and an update that moves a row
/// to another key. Every table ends equal to the
/// source, and the restore says how many changes went in key order.
#[tokio::test(flavor = "multi_thread")]
async fn replay_in_key_order_keeps_source_order_where_it_matters() {
    let sb = PrivateSandbox::up(1, 0, "ready");
    let dir = tempfile::tempdir().unwrap();
    let topo_path = support::topology_variant(&sb.topology(), dir.path(), &[]);
    let arg = topo_path.to_str().unwrap();
    let topo = db::topology(&topo_path);
    let my = &topo.shards[0];
    let mut c = db::mysql(my, None).await;
    for sql in [
        "CREATE DATABASE shop",
        "CREATE TABLE shop.plain (id INT PRIMARY KEY, v INT) ENGINE=InnoDB",
        "CREATE TABLE shop.uniq (id INT PRIMARY KEY, u INT NOT NULL UNIQUE) ENGINE=InnoDB",
        "CREATE TABLE shop.parent (id INT PRIMARY KEY) ENGINE=InnoDB",
        "CREATE TABLE shop.child (id INT PRIMARY KEY, parent_id INT NOT NULL, \
         FOREIGN KEY (parent_id) REFERENCES shop.parent (id)) ENGINE=InnoDB",
        "CREATE TABLE shop.moved (id INT PRIMARY KEY, v VARCHAR(10)) ENGINE=InnoDB",
        "CREATE TABLE shop.later (id INT PRIMARY KEY, u INT) ENGINE=InnoDB",
        "INSERT INTO shop.plain VALUES (1, 0), (2, 0), (3, 0)",
        "INSERT INTO shop.later VALUES (1, 1), (2, 2)",
        "INSERT INTO shop.uniq VALUES (2, 2), (5, 5)",
    ] {
        c.query_drop(sql).await.unwrap();
    }
    run_ok(&["capture", "-t", arg, "--once", "--no-mark"]);
    run_ok(&["backup", "-t", arg]);
    // One statement a transaction, keys in falling order: key order is
    // not source order.
    let mut changes = Vec::new();
    for round in 0..20 {
        for id in [3, 2, 1] {
            changes.push(format!(
                "UPDATE shop.plain SET v = {} WHERE id = {id}",
                round * 10 + id
            ));
        }
    }
    changes.extend(
        [
            // Row 5 gives up u = 5, then row 2 takes it: row 2 first
            // would be a duplicate.
            "UPDATE shop.uniq SET u = 100 WHERE id = 5",
            "UPDATE shop.uniq SET u = 5 WHERE id = 2",
            // The parent before its child ("child" sorts first).
            "INSERT INTO shop.parent VALUES (10)",
            "INSERT INTO shop.child VALUES (1, 10)",
            // A row inserted at 9 and moved to 1: the move keeps its place.
            "INSERT INTO shop.moved VALUES (9, 'nine')",
            "UPDATE shop.moved SET id = 1 WHERE id = 9",
            "INSERT INTO shop.moved VALUES (9, 'again')",
            "DELETE FROM shop.plain WHERE id = 3",
            "INSERT INTO shop.plain VALUES (3, -1)",
            // A unique key added during the replay: `later` stops being
            // reordered from there on (row 1 first would collide).
            "ALTER TABLE shop.later ADD UNIQUE (u)",
            "UPDATE shop.later SET u = 100 WHERE id = 2",
            "UPDATE shop.later SET u = 2 WHERE id = 1",
        ]
        .map(String::from),
    );
    for sql in &changes {
        c.query_drop(sql).await.unwrap();
    }
    run_ok(&["capture", "-t", arg, "--once"]);

    let target = PrivateSandbox::up(1, 0, "ready");
    let tgt = target.topology();
    let run = run_ok(&[
        "restore",
        "-t",
        arg,
        "--target",
        tgt.to_str().unwrap(),
        "--until",
        "latest",
        "--json",
    ]);
    assert_eq!(run.json()["quality"]["score"], 1.0, "{run:?}");
    let tmy = &db::topology(&tgt).shards[0];
    for t in ["plain", "uniq", "parent", "child", "moved", "later"] {
        let t = format!("shop.{t}");
        assert_eq!(
            db::mysql_checksum(tmy, &t).await,
            db::mysql_checksum(my, &t).await,
            "{t} after the replay"
        );
    }
    // In key order: the 60 updates of `plain`, its delete and insert, and
    // the two inserts into `moved` (not the move between them); none of
    // the changes to `uniq`, `parent`, `child` or `later`.
    let replay = &run.json()["replay"][0];
    assert_eq!(replay["reordered"], 64, "{run:?}");
}

/// A restore `--until` reports each shard's replay (transactions and time)
/// and records its rate, from which `status` and `show mark:NAME` state the
/// expected replay time. A base whose recorded cut was moved back (a
/// tampered manifest) makes the replay meet a change the base already
/// holds: it stops, naming the change, and the restore fails; it is never
/// reported as a success.
#[tokio::test(flavor = "multi_thread")]
async fn replay_reports_its_rate_and_stops_naming_a_change_the_target_cannot_take() {
    let dir = tempfile::tempdir().unwrap();
    let (_sb, topo_path, topo) = ledger_cluster(dir.path(), "(1, 1), (2, 2), (3, 3)").await;
    let arg = topo_path.to_str().unwrap();
    let topo = &topo;
    let sql = |s: String| async move { on_both(topo, &s).await };
    run_ok_async(&["capture", "-t", arg, "--once", "--no-mark"]).await;
    // Captured, and already in the base.
    sql("DELETE FROM ledger WHERE id = 2".into()).await;
    let backup = support::backup_id(arg).await;
    for i in 100..130 {
        sql(format!("INSERT INTO ledger VALUES ({i}, {i})")).await;
    }
    run_ok_async(&["capture", "-t", arg, "--once"]).await;

    let target = PrivateSandbox::up(1, 1, "ready");
    let tgt = target.topology();
    let tgt_arg = tgt.to_str().unwrap();
    let restore = || async {
        support::shardcut_async(&[
            "restore",
            "-t",
            arg,
            "--target",
            tgt_arg,
            "--until",
            "latest",
            "--overwrite",
            "--json",
        ])
        .await
    };
    // Without --binlog the replay, like the base restore, writes nothing
    // to the target's binary log.
    let target_topo = db::topology(&tgt);
    let binlog_pos = || async {
        let mut c = db::mysql(&target_topo.shards[0], None).await;
        let pos: Option<String> = c
            .query_first("SELECT @@global.gtid_binlog_pos")
            .await
            .unwrap();
        pos.unwrap_or_default()
    };
    let before = binlog_pos().await;
    let run = restore().await;
    assert_eq!(run.code, 0, "{run:?}");
    assert_eq!(run.json()["quality"]["score"], 1.0, "{run:?}");
    assert_eq!(binlog_pos().await, before, "the target's binary log grew");
    let replays = run.json()["replay"].as_array().cloned().unwrap_or_default();
    assert_eq!(replays.len(), 2, "{run:?}");
    for r in &replays {
        assert_eq!(r["transactions"], 30, "the 30 inserts after the base: {r}");
        assert!(r["seconds"].as_f64().unwrap() > 0.0, "{r}");
    }
    // The rate just measured gives the expected replay time of --until
    // latest, and of the mark by name.
    let status = run_ok_async(&["status", "-t", arg, "--json"]).await;
    let expected = &status.json()["expected_replay"];
    let mark = expected["mark"].as_str().unwrap().to_string();
    assert!(expected["seconds"].as_f64().unwrap() > 0.0, "{status:?}");
    for s in expected["shards"].as_array().unwrap() {
        // Whole segments are counted: the one holding the delete before
        // the base as well.
        let n = s["transactions"].as_u64().unwrap();
        assert!((30..=31).contains(&n), "{status:?}");
        assert!(s["seconds"].as_f64().unwrap() > 0.0, "{status:?}");
    }
    let show = run_ok_async(&["show", &format!("mark:{mark}"), "-t", arg]).await;
    assert!(
        show.stdout.contains("expected replay to mark") && show.stdout.contains(" s at "),
        "{show:?}"
    );

    // A MariaDB target whose buffer pool is far smaller than its tables
    // (a table of 1 GiB by the persistent statistics, against the
    // sandbox's 64 MiB) gets a hint naming the setting; the tables above,
    // which fit, got none.
    assert!(!run.stderr.contains("buffer pool"), "{run:?}");
    let mut c = db::mysql(&target_topo.shards[0], None).await;
    c.query_drop(
        "INSERT INTO mysql.innodb_table_stats \
         (database_name, table_name, last_update, n_rows, clustered_index_size, sum_of_other_index_sizes) \
         VALUES ('ballast', 'big', NOW(), 1, 65536, 0)",
    )
    .await
    .unwrap();
    let run = restore().await;
    assert_eq!(run.code, 0, "{run:?}");
    assert!(
        run.stderr.contains(
            "mysql-0: the target's InnoDB buffer pool (64 MiB) holds 6% of its tables (1024 MiB)"
        ) && run
            .stderr
            .contains("SET GLOBAL innodb_buffer_pool_size = 1152M"),
        "{run:?}"
    );
    assert!(!run.stderr.contains("pg-0: the target's"), "{run:?}");
    let notes: Vec<(String, String)> = run.json()["replay"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|r| {
            let shard = r["shard"].as_str().unwrap_or_default().to_string();
            r["notes"]
                .as_array()
                .cloned()
                .unwrap_or_default()
                .into_iter()
                .map(move |n| (shard.clone(), n.as_str().unwrap_or_default().to_string()))
        })
        .collect();
    assert!(
        notes.len() == 1
            && notes[0].0 == "mysql-0"
            && notes[0]
                .1
                .contains("SET GLOBAL innodb_buffer_pool_size = 1152M"),
        "the hint in the JSON report: {notes:?}"
    );
    c.query_drop("DELETE FROM mysql.innodb_table_stats WHERE database_name = 'ballast'")
        .await
        .unwrap();

    // Tampered: the base's recorded cut moved back to where capture
    // started, before the delete the base already holds.
    let repo = db::repository(topo);
    let key = format!("backups/{backup}/manifest.json");
    let mut m: serde_json::Value = serde_json::from_slice(&repo.get(&key).unwrap()).unwrap();
    for (shard, stream) in [("mysql-0", "binlog"), ("pg-0", "bank")] {
        let state = shard_agent::capture::StreamState::load(&repo, shard, stream)
            .unwrap()
            .unwrap();
        m["cut"]["shards"][shard]["position"] = serde_json::to_value(&state.started).unwrap();
    }
    repo.put(&key, &serde_json::to_vec(&m).unwrap()).unwrap();
    let run = restore().await;
    assert_eq!(
        run.code, 1,
        "a replay that stopped is a failed restore: {run:?}"
    );
    assert!(
        run.stderr.contains("pg-0: replay")
            && run.stderr.contains(r#"rows of "public"."ledger" that the changes update or delete are not on the target (such as the row with "id" = '2')"#)
            && run.stderr.contains("the target does not hold the state the changes were made on"),
        "{run:?}"
    );
    assert!(
        run.stderr.contains("mysql-0: replay")
            && run.stderr.contains("the target refused row events"),
        "{run:?}"
    );
}

/// `url:` and `password_file:` of shard `name` in a sandbox topology.
fn shard_lines(sandbox_topology: &std::path::Path, name: &str) -> String {
    let text = std::fs::read_to_string(sandbox_topology).unwrap();
    let mut lines = text
        .lines()
        .skip_while(|l| l.trim() != format!("- name: {name}"));
    lines.next().expect("shard in the sandbox topology");
    lines
        .take_while(|l| !l.trim_start().starts_with("- name:"))
        .filter(|l| !l.trim().is_empty())
        .map(|l| format!("{l}\n"))
        .collect()
}

/// A cluster of MariaDB shard `m` on sandbox server `mysql` and
/// PostgreSQL shard `p`, with its repository in `dir`.
fn failover_topology(
    sb: &PrivateSandbox,
    dir: &std::path::Path,
    mysql: &str,
) -> std::path::PathBuf {
    let yaml = format!(
        "cluster: failover\nrepository: {}\nshards:\n  - name: m\n{}  - name: p\n{}",
        dir.join("repo").display(),
        shard_lines(&sb.topology(), mysql),
        shard_lines(&sb.topology(), "pg-0"),
    );
    let path = dir.join(format!("topology-{mysql}.yaml"));
    std::fs::write(&path, yaml).unwrap();
    path
}

/// `gtid_binlog_pos` of a MariaDB shard.
async fn binlog_gtid(shard: &topology::Shard) -> String {
    let mut c = db::mysql(shard, None).await;
    let pos: Option<String> = c
        .query_first("SELECT @@GLOBAL.gtid_binlog_pos")
        .await
        .unwrap();
    pos.unwrap()
}

/// Capture follows a MariaDB primary, then a failover to its replica (a
/// server whose binlog files are its own): capture resumes there by GTID,
/// with nothing lost or repeated, and a backup from before the failover is
/// restored to a mark after it, and to one before it. A server whose
/// binlog lacks what the stream has stored is refused by name.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn capture_resumes_by_gtid_on_a_promoted_replica_and_restores_across_the_failover() {
    let sb = PrivateSandbox::up(2, 1, "ready");
    let dir = tempfile::tempdir().unwrap();
    let before_path = failover_topology(&sb, dir.path(), "mysql-0");
    let after_path = failover_topology(&sb, dir.path(), "mysql-1");
    let (before, after) = (before_path.to_str().unwrap(), after_path.to_str().unwrap());
    let topo_before = db::topology(&before_path);
    let topo_after = db::topology(&after_path);
    let (primary, replica) = (&topo_before.shards[0], &topo_after.shards[0]);

    // mysql-1 replicates mysql-0 by GTID, logging what it applies. Its
    // binlog files are its own: numbered apart from the primary's, as a
    // replica's are once either has rotated on its own.
    let port = |s: &topology::Shard| s.endpoint.port;
    let password = std::fs::read_to_string(sb.dir().join("secrets/mysql-0.password")).unwrap();
    let mut r = db::mysql(replica, None).await;
    r.query_drop("FLUSH BINARY LOGS").await.unwrap();
    r.query_drop("FLUSH BINARY LOGS").await.unwrap();
    r.query_drop(format!(
        "CHANGE MASTER TO MASTER_HOST = '127.0.0.1', MASTER_PORT = {}, MASTER_USER = 'shardcut', \
         MASTER_PASSWORD = '{}', MASTER_USE_GTID = slave_pos",
        port(primary),
        password
            .trim_end()
            .replace('\\', "\\\\")
            .replace('\'', "''"),
    ))
    .await
    .unwrap();
    r.query_drop("START SLAVE").await.unwrap();
    db::setup_all(&topo_before, MYSQL_SETUP, "bank", PG_SETUP).await;

    run_ok_async(&["capture", "-t", before, "--once", "--no-mark"]).await;
    let next_id = Arc::new(AtomicU64::new(1));
    transfers(&topo_before, &next_id, 300).await;
    let base = support::backup_id(before).await;
    transfers(&topo_before, &next_id, 500).await;
    run_ok_async(&["mark", "-t", before, "--name", "before-failover"]).await;
    let at_mark = checksums(&topo_before, &["accounts", "ledger"]).await;
    run_ok_async(&["capture", "-t", before, "--once"]).await;
    transfers(&topo_before, &next_id, 500).await;
    run_ok_async(&["capture", "-t", before, "--once", "--no-mark"]).await;
    // More writes capture has not read yet; the replica gets them all.
    transfers(&topo_before, &next_id, 300).await;
    let wait = format!(
        "SELECT MASTER_GTID_WAIT('{}', 30)",
        binlog_gtid(primary).await
    );
    let caught_up: Option<i64> = r.query_first(wait).await.unwrap();
    assert_eq!(caught_up, Some(0), "the replica caught up");

    // A server without the stream's history is refused by name, and the
    // stream is left where it was.
    let stranger = PrivateSandbox::up(1, 0, "ready");
    let stranger_path = dir.path().join("stranger.yaml");
    let text = std::fs::read_to_string(&before_path).unwrap().replace(
        &shard_lines(&sb.topology(), "mysql-0"),
        &shard_lines(&stranger.topology(), "mysql-0"),
    );
    std::fs::write(&stranger_path, text).unwrap();
    let state_key = "capture/m/binlog/state.json";
    let repo = db::repository(&topo_before);
    let stored = repo.get(state_key).unwrap();
    let run = support::shardcut(&[
        "capture",
        "-t",
        stranger_path.to_str().unwrap(),
        "--once",
        "--no-mark",
    ]);
    assert_ne!(run.code, 0, "{run:?}");
    assert!(
        run.stderr.contains("shard m")
            && run
                .stderr
                .contains("lacks transactions this stream has stored"),
        "{run:?}"
    );
    assert_eq!(
        repo.get(state_key).unwrap(),
        stored,
        "the stream state is unchanged"
    );
    drop(stranger);

    // The failover: the primary goes away, the replica is promoted, and the
    // topology names it. It starts binlog files of its own, and rotates.
    sb.stop("mysql-0");
    r.query_drop("STOP SLAVE").await.unwrap();
    r.query_drop("RESET SLAVE ALL").await.unwrap();
    drop(r);
    transfers(&topo_after, &next_id, 300).await;
    let mut c = db::mysql(replica, None).await;
    c.query_drop("FLUSH BINARY LOGS").await.unwrap();
    drop(c);
    transfers(&topo_after, &next_id, 300).await;
    run_ok_async(&["capture", "-t", after, "--once"]).await;
    let state: shard_agent::capture::StreamState =
        serde_json::from_slice(&repo.get(state_key).unwrap()).unwrap();
    let server_id = format!("-{}-", port(replica));
    match &state.progress {
        shard_agent::position::Position::Mariadb { gtid, .. } => {
            assert!(gtid.contains(&server_id), "resumed on the replica: {gtid}");
            assert_eq!(
                *gtid,
                binlog_gtid(replica).await,
                "caught up with the replica"
            );
        }
        other => panic!("not a MariaDB position: {other}"),
    }

    let target = PrivateSandbox::up(1, 1, "ready");
    let tgt_dir = tempfile::tempdir().unwrap();
    let tgt = support::topology_variant(
        &target.topology(),
        tgt_dir.path(),
        &[("name: mysql-0", "name: m"), ("name: pg-0", "name: p")],
    );
    let t = db::topology(&tgt);
    let tgt_arg = tgt.to_str().unwrap();
    let restore = |backup: String, until: &'static str| async move {
        restore_backup_until(after, &backup, tgt_arg, until).await
    };
    // The backup from before the failover, to the newest mark: its
    // changes come from both servers.
    let run = restore(base.clone(), "latest").await;
    assert_eq!(run.json()["quality"]["score"], 1.0, "{run:?}");
    let source_now = checksums(&topo_after, &["accounts", "ledger"]).await;
    let restored = checksums(&t, &["accounts", "ledger"]).await;
    assert_eq!(restored, source_now);
    let (debits, credits) = bank_state(&t).await;
    assert_eq!(debits, credits, "every credit with its debit");
    // The same backup to the mark before the failover.
    let run = restore(base, "mark:before-failover").await;
    assert_eq!(run.json()["quality"]["score"], 1.0, "{run:?}");
    assert_eq!(checksums(&t, &["accounts", "ledger"]).await, at_mark);

    // A backup of the promoted server continues the same stream.
    let second = support::backup_id(after).await;
    transfers(&topo_after, &next_id, 300).await;
    run_ok_async(&["capture", "-t", after, "--once"]).await;
    let run = restore(second, "latest").await;
    assert_eq!(run.json()["quality"]["score"], 1.0, "{run:?}");
    assert_eq!(
        checksums(&t, &["accounts", "ledger"]).await,
        checksums(&topo_after, &["accounts", "ledger"]).await
    );
}

/// A PostgreSQL table created while capture runs: pgoutput sends only the
/// changes of published tables, and the publication listed the tables of
/// when capture started, so none of the new table's changes were ever
/// captured, and a restore to a later mark lacked them. Now each capture
/// round takes new tables into the publication and records from where
/// each is captured: a backup whose cut came before that cannot be
/// brought to a mark (refused by name), one taken since restores to a
/// mark exactly, the new table's changes included. An unlogged table is
/// left out of the publication (the server refuses it there) until it is
/// made logged.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_postgres_table_created_while_capture_runs_is_captured_from_the_next_round() {
    let dir = tempfile::tempdir().unwrap();
    let (_sb, topo_path, topo) = ledger_cluster(dir.path(), "(1, 10)").await;
    let arg = topo_path.to_str().unwrap();
    let pg = &topo.shards[1];
    let on_pg = |sql: String| async move {
        db::pg(pg, "bank").await.batch_execute(&sql).await.unwrap();
    };
    run_ok_async(&["capture", "-t", arg, "--once", "--no-mark"]).await;
    on_pg(
        "CREATE TABLE notes (id int PRIMARY KEY, body text); \
           INSERT INTO notes SELECT g, 'note ' || g FROM generate_series(1, 5) g"
            .into(),
    )
    .await;
    let before = support::backup_id(arg).await;
    on_pg("INSERT INTO notes SELECT g, 'note ' || g FROM generate_series(6, 10) g".into()).await;
    let first = run_ok_async(&["capture", "-t", arg, "--once", "--json"]).await;
    let first_mark = format!("mark:{}", first.json()["mark"].as_str().unwrap());

    let target = PrivateSandbox::up(1, 1, "ready");
    let tgt = target.topology();
    let refused = restore_until(
        arg,
        tgt.to_str().unwrap(),
        &first_mark,
        &["--backup", &before],
    )
    .await;
    assert_eq!(refused.code, 2, "{refused:?}");
    assert!(
        refused
            .stderr
            .contains("table bank.public.notes is captured only from")
            && refused.stderr.contains(&before),
        "{refused:?}"
    );
    // `list` does not offer that backup as restorable to the mark either.
    let list = run_ok_async(&["list", "-t", arg, "--json"]).await.json();
    let listed = list["backups"]
        .as_array()
        .unwrap()
        .iter()
        .find(|b| b["backup_id"] == before.as_str())
        .cloned()
        .unwrap();
    assert!(listed["restorable_to"].is_null(), "{listed}");

    // An unlogged table created while capture runs: the server writes no
    // WAL for it and refuses it in a publication, which failed every
    // capture round after it. The round now goes on without it, and a
    // backup holding it cannot be brought to a later mark, by name.
    on_pg(
        "CREATE UNLOGGED TABLE scratch (id int PRIMARY KEY); INSERT INTO scratch VALUES (1)".into(),
    )
    .await;
    run_ok_async(&["capture", "-t", arg, "--once", "--no-mark"]).await;
    let holding = support::backup_id(arg).await;
    on_pg("INSERT INTO scratch VALUES (2)".into()).await;
    let third = run_ok_async(&["capture", "-t", arg, "--once", "--json"]).await;
    let third_mark = format!("mark:{}", third.json()["mark"].as_str().unwrap());
    let refused = restore_until(
        arg,
        tgt.to_str().unwrap(),
        &third_mark,
        &["--backup", &holding],
    )
    .await;
    assert_eq!(refused.code, 2, "{refused:?}");
    assert!(
        refused.stderr.contains(&format!(
            "table bank.public.scratch is unlogged or has an unlogged partition: PostgreSQL writes no WAL for its changes, so capture holds none of them since the cut of backup {holding}"
        )),
        "{refused:?}"
    );
    // Made logged, it is taken in at the next round, from then on.
    on_pg("ALTER TABLE scratch SET LOGGED".into()).await;
    run_ok_async(&["capture", "-t", arg, "--once", "--no-mark"]).await;

    let since = support::backup_id(arg).await;
    on_pg(
        "INSERT INTO notes SELECT g, 'note ' || g FROM generate_series(11, 15) g; \
           UPDATE notes SET body = 'changed' WHERE id = 3; DELETE FROM notes WHERE id = 4; \
           INSERT INTO scratch VALUES (3); DELETE FROM scratch WHERE id = 1"
            .into(),
    )
    .await;
    on_both(&topo, "INSERT INTO ledger VALUES (2, 20)").await;
    let second = run_ok_async(&["capture", "-t", arg, "--once", "--json"]).await;
    let second_mark = format!("mark:{}", second.json()["mark"].as_str().unwrap());
    let run = restore_backup_until(arg, &since, tgt.to_str().unwrap(), &second_mark).await;
    assert_eq!(run.json()["quality"]["score"], 1.0, "{run:?}");
    let restored = db::topology(&tgt);
    assert_eq!(
        db::pg_digest(&restored.shards[1], "bank", "public", "notes").await,
        db::pg_digest(pg, "bank", "public", "notes").await,
        "the new table's changes after the backup were replayed"
    );
    assert_eq!(
        db::pg_digest(&restored.shards[1], "bank", "public", "scratch").await,
        db::pg_digest(pg, "bank", "public", "scratch").await,
        "the table made logged had its changes after the backup replayed"
    );

    // A published partitioned table that gains an unlogged partition: the
    // server goes on publishing it, without that partition's changes. The
    // next round records it, and a backup holding it cannot be brought to
    // a later mark, by name.
    on_pg(
        "CREATE TABLE parted (id int PRIMARY KEY) PARTITION BY RANGE (id); \
           CREATE TABLE parted_1 PARTITION OF parted FOR VALUES FROM (0) TO (10)"
            .into(),
    )
    .await;
    run_ok_async(&["capture", "-t", arg, "--once", "--no-mark"]).await;
    on_pg("CREATE UNLOGGED TABLE parted_2 PARTITION OF parted FOR VALUES FROM (10) TO (20)".into())
        .await;
    let holding_parted = support::backup_id(arg).await;
    on_pg("INSERT INTO parted VALUES (1), (11)".into()).await;
    let last = run_ok_async(&["capture", "-t", arg, "--once", "--json"]).await;
    let last_mark = format!("mark:{}", last.json()["mark"].as_str().unwrap());
    let refused = restore_until(
        arg,
        tgt.to_str().unwrap(),
        &last_mark,
        &["--backup", &holding_parted],
    )
    .await;
    assert_eq!(refused.code, 2, "{refused:?}");
    assert!(
        refused
            .stderr
            .contains("table bank.public.parted is unlogged or has an unlogged partition"),
        "{refused:?}"
    );
}

/// The names a query `sql` on `shard` returns, one a row.
pub(crate) async fn names(shard: &topology::Shard, sql: &str) -> Vec<String> {
    db::mysql(shard, None).await.query(sql).await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_mariadb_replay_applies_only_what_its_base_backup_selected() {
    let (_sb, _dir, topo_path, _) = support::private_cluster(1, 0);
    support::add_to_every_shard(
        &topo_path,
        "    databases: [bank]\n    exclude_tables: [bank.audit]\n",
    );
    let arg = topo_path.to_str().unwrap();
    let topo = db::topology(&topo_path);
    let my = &topo.shards[0];
    let mut c = db::mysql(my, None).await;
    for sql in MYSQL_SETUP.iter().copied().chain([
        "CREATE TABLE bank.audit (id INT PRIMARY KEY, what VARCHAR(40))",
        "CREATE DATABASE side",
        "CREATE TABLE side.t (id INT PRIMARY KEY, v INT)",
        "INSERT INTO side.t VALUES (1, 10)",
        "INSERT INTO bank.ledger VALUES (1, 'debit', 5)",
    ]) {
        c.query_drop(sql).await.unwrap();
    }
    run_ok_async(&["capture", "-t", arg, "--once", "--no-mark"]).await;
    run_ok_async(&["backup", "-t", arg]).await;

    // After the backup: changes in the selected database, and changes the
    // base left out: another database (by name and by USE), a table left
    // out, statements spanning both, accounts.
    let mut c = db::mysql(my, None).await;
    for sql in [
        "INSERT INTO bank.ledger VALUES (2, 'debit', 6)",
        "INSERT INTO side.t VALUES (2, 20)",
        "INSERT INTO bank.audit VALUES (1, 'left out')",
        "ALTER TABLE bank.audit ADD COLUMN at INT",
        "CREATE TABLE side.w (id INT PRIMARY KEY)",
        "USE side",
        "CREATE TABLE u (id INT PRIMARY KEY)",
        "INSERT INTO u VALUES (1)",
        "USE bank",
        "CREATE TABLE newer (id INT PRIMARY KEY, v INT)",
        "INSERT INTO newer VALUES (1, 1), (2, 2)",
        "UPDATE bank.ledger l, side.t s SET l.amount = l.amount + 1, s.v = s.v + 1",
        "UPDATE side.t s, bank.ledger l SET s.v = s.v + 1, l.amount = l.amount + 1",
        "DELETE bank.newer, side.t FROM bank.newer JOIN side.t ON newer.id = t.id WHERE newer.id = 2",
        "CREATE DATABASE other",
        "CREATE TABLE other.t (id INT PRIMARY KEY)",
        "CREATE USER 'planted'@'%' IDENTIFIED BY 'planted-pw'",
        "GRANT ALL PRIVILEGES ON *.* TO 'planted'@'%'",
        "DROP TABLE side.w",
        "INSERT INTO bank.ledger VALUES (3, 'debit', 7)",
    ] {
        c.query_drop(sql).await.unwrap();
    }
    run_ok_async(&["capture", "-t", arg, "--once"]).await;

    let target = PrivateSandbox::up(1, 0, "ready");
    let tgt = target.topology();
    let run = restored_q1(arg, tgt.to_str().unwrap(), "latest", &[]).await;
    let restored = db::topology(&tgt);
    let tmy = &restored.shards[0];
    for t in ["bank.accounts", "bank.ledger", "bank.newer"] {
        assert_eq!(
            db::mysql_checksum(tmy, t).await,
            db::mysql_checksum(my, t).await,
            "{t} as on the source"
        );
    }
    assert_eq!(
        names(tmy, "SELECT TABLE_NAME FROM information_schema.TABLES WHERE TABLE_SCHEMA = 'bank' ORDER BY 1").await,
        ["accounts", "ledger", "newer"],
        "the table left out stays out"
    );
    assert_eq!(
        names(tmy, "SELECT SCHEMA_NAME FROM information_schema.SCHEMATA WHERE SCHEMA_NAME IN ('side', 'other')").await,
        Vec::<String>::new(),
        "databases the backup did not select stay out"
    );
    assert_eq!(
        names(tmy, "SELECT User FROM mysql.user WHERE User = 'planted'").await,
        Vec::<String>::new(),
        "accounts are not the shard backup's to make"
    );
    let notes = run.json()["replay"][0]["notes"].to_string();
    assert!(
        notes.contains("row event(s) of bank.audit, side.t, side.u")
            && notes.contains("CREATE USER ×1, GRANT ×1")
            && !notes.contains("planted-pw"),
        "the replay says what it left out, and no password: {run:?}"
    );

    // A statement that moves a table across the line cannot be placed: the
    // replay refuses it by name rather than apply half of it.
    c.query_drop("RENAME TABLE bank.newer TO side.newer")
        .await
        .unwrap();
    run_ok_async(&["capture", "-t", arg, "--once"]).await;
    let refused = restore_until(arg, tgt.to_str().unwrap(), "latest", &["--overwrite"]).await;
    assert_eq!(refused.code, 1, "{refused:?}");
    assert!(
        refused.stderr.contains("mysql-0: replay")
            && refused
                .stderr
                .contains("`RENAME TABLE bank.newer TO side.newer`: it names both")
            && refused.stderr.contains("cannot be applied in part"),
        "{refused:?}"
    );
}

/// A MariaDB server whose binlog filters keep a selected database's
/// changes out of the binary log: capture read that binlog as if it were
/// whole, and a restore to a later mark lacked the database's changes
/// (found only by the read-back, with Q = 0.375). Now `check` names the
/// option, and capture refuses the shard by name, before a stream exists,
/// until the database is left out of the selection.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_mariadb_binlog_filter_leaving_out_a_selected_database_is_refused_by_name() {
    let sb = PrivateSandbox::up(1, 0, "ready");
    let cnf = sb.dir().join("mysql-0/my.cnf");
    let mut text = std::fs::read_to_string(&cnf).unwrap();
    text.push_str("binlog-ignore-db = hidden\n");
    std::fs::write(&cnf, text).unwrap();
    sb.stop("mysql-0");
    sb.start("mysql-0");
    let dir = tempfile::tempdir().unwrap();
    let topo_path = support::topology_variant(&sb.topology(), dir.path(), &[]);
    let arg = topo_path.to_str().unwrap();
    let topo = db::topology(&topo_path);
    let mut c = db::mysql(&topo.shards[0], None).await;
    for sql in [
        "CREATE DATABASE hidden",
        "CREATE TABLE hidden.t (id INT PRIMARY KEY, v INT)",
        "CREATE DATABASE shop",
        "CREATE TABLE shop.t (id INT PRIMARY KEY, v INT)",
    ] {
        c.query_drop(sql).await.unwrap();
    }
    c.disconnect().await.unwrap();

    let check = support::shardcut_async(&["check", "-t", arg, "--json"]).await;
    assert_eq!(check.code, 0, "a backup works: {check:?}");
    let finding = support::first_shard_finding(&check, "binlog filters");
    assert_eq!(finding["level"], "warn", "{check:?}");
    assert_eq!(finding["value"], "binlog-ignore-db=hidden", "{check:?}");
    assert!(
        finding["fix"]
            .as_str()
            .is_some_and(|f| f.starts_with("capture refuses this shard")),
        "{finding}"
    );

    let run = support::shardcut_async(&["capture", "-t", arg, "--once", "--no-mark"]).await;
    assert_eq!(run.code, 1, "{run:?}");
    assert!(
        run.stderr.contains(
            "capture refused on shard mysql-0: the server's binlog-ignore-db=hidden keeps the changes of database(s) hidden out of the binary log"
        ),
        "{run:?}"
    );
    let repo = db::repository(&topo);
    assert!(
        shard_agent::capture::StreamState::load(&repo, "mysql-0", "binlog")
            .unwrap()
            .is_none(),
        "no stream should have started"
    );

    // Without the filtered database in the selection, capture runs.
    support::add_to_every_shard(&topo_path, "    databases: [shop]\n");
    run_ok_async(&["capture", "-t", arg, "--once", "--no-mark"]).await;
    assert!(
        shard_agent::capture::StreamState::load(&repo, "mysql-0", "binlog")
            .unwrap()
            .is_some()
    );
}

/// Servers whose DBA changed the defaults of every session: MariaDB's
/// `sql_select_limit` and `autocommit` server-wide, and limits on
/// statement time and idle transactions (a guard against runaway
/// application queries: MariaDB's `max_statement_time` and
/// `idle_*_transaction_timeout`, PostgreSQL's `statement_timeout`,
/// `idle_in_transaction_session_timeout` and `idle_session_timeout`, here
/// on the role). With a `sql_select_limit` of 1,000 a backup held 1,000
/// rows of each table and was called complete; with `autocommit` off a
/// restore's loads deadlocked; a MariaDB restore failed on its first chunk
/// ("max_statement_time exceeded"), a PostgreSQL one was refused as if
/// the target lacked the source's locale. Every shardcut session now sets
/// the session it relies on, as pg_dump does for its own.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn servers_with_restrictive_session_defaults_back_up_capture_and_restore_exactly() {
    let dir = tempfile::tempdir().unwrap();
    let (_sb, topo_path, topo) = ledger_cluster(dir.path(), "(1, 10)").await;
    let arg = topo_path.to_str().unwrap();
    let (my, pg) = (&topo.shards[0], &topo.shards[1]);
    let target = PrivateSandbox::up(1, 1, "ready");
    let tgt = target.topology();
    let restored = db::topology(&tgt);
    let (tmy, tpg) = (&restored.shards[0], &restored.shards[1]);

    // The test's own statements run on sessions opened before the
    // server's defaults change, so that they pass whatever shardcut sets.
    let mut c = db::mysql(my, Some("bank")).await;
    let p = db::pg(pg, "bank").await;
    let mut tc = db::mysql(tmy, None).await;
    let tp = db::pg(tpg, "postgres").await;
    c.query_drop(
        "CREATE TABLE big (id INT PRIMARY KEY, a INT, b VARCHAR(40), KEY ka (a)) ENGINE=InnoDB",
    )
    .await
    .unwrap();
    c.query_drop("INSERT INTO big SELECT seq, seq * 7 % 10007, MD5(seq) FROM seq_1_to_100000")
        .await
        .unwrap();
    p.batch_execute(
        "CREATE TABLE big (id int PRIMARY KEY, a int, b text); \
         INSERT INTO big SELECT g, g * 7 % 10007, md5(g::text) FROM generate_series(1, 100000) g; \
         CREATE INDEX ka ON big (a)",
    )
    .await
    .unwrap();
    const MARIADB_LIMITS: &str = "SET GLOBAL sql_select_limit = 1000, GLOBAL autocommit = 0, \
         GLOBAL max_statement_time = 0.05, \
         GLOBAL idle_transaction_timeout = 1, GLOBAL idle_readonly_transaction_timeout = 1, \
         GLOBAL idle_write_transaction_timeout = 1";
    const PG_LIMITS: &str = "ALTER ROLE CURRENT_USER SET statement_timeout = '50ms'; \
         ALTER ROLE CURRENT_USER SET idle_in_transaction_session_timeout = '1s'; \
         ALTER ROLE CURRENT_USER SET idle_session_timeout = '1s'";
    c.query_drop(MARIADB_LIMITS).await.unwrap();
    tc.query_drop(MARIADB_LIMITS).await.unwrap();
    p.batch_execute(PG_LIMITS).await.unwrap();
    tp.batch_execute(PG_LIMITS).await.unwrap();

    run_ok_async(&["capture", "-t", arg, "--once", "--no-mark"]).await;
    let backup = run_ok_async(&["backup", "-t", arg, "--json"]).await.json();
    for shard in ["mysql-0", "pg-0"] {
        assert_eq!(
            backup["shards"][shard]["rows"], 100_001,
            "every row of big and ledger on {shard}: {backup}"
        );
    }
    // Changes to replay: a key built on 100,000 rows (MariaDB replays
    // DDL) and an update of half of them.
    c.query_drop("UPDATE big SET a = a + 1 WHERE id <= 50000")
        .await
        .unwrap();
    c.query_drop("ALTER TABLE big ADD KEY kb (b)")
        .await
        .unwrap();
    p.batch_execute("UPDATE big SET a = a + 1 WHERE id <= 50000")
        .await
        .unwrap();
    run_ok_async(&["capture", "-t", arg, "--once"]).await;
    restored_q1(arg, tgt.to_str().unwrap(), "latest", &[]).await;

    // The servers' defaults back, for the comparisons' own sessions.
    for conn in [&mut c, &mut tc] {
        conn.query_drop(
            "SET GLOBAL sql_select_limit = DEFAULT, GLOBAL autocommit = 1, \
             GLOBAL max_statement_time = 0, GLOBAL idle_transaction_timeout = 0, \
             GLOBAL idle_readonly_transaction_timeout = 0, GLOBAL idle_write_transaction_timeout = 0",
        )
        .await
        .unwrap();
    }
    for client in [&p, &tp] {
        client
            .batch_execute("ALTER ROLE CURRENT_USER RESET ALL")
            .await
            .unwrap();
    }
    for t in ["bank.big", "bank.ledger"] {
        assert_eq!(
            db::mysql_checksum(tmy, t).await,
            db::mysql_checksum(my, t).await,
            "{t} as on the source"
        );
    }
    assert_eq!(
        names(tmy, "SELECT INDEX_NAME FROM information_schema.STATISTICS WHERE TABLE_SCHEMA = 'bank' AND TABLE_NAME = 'big' AND SEQ_IN_INDEX = 1 ORDER BY BINARY INDEX_NAME").await,
        ["PRIMARY", "ka", "kb"],
        "the replayed key is built"
    );
    assert_eq!(
        db::pg_digest(tpg, "bank", "public", "big").await,
        db::pg_digest(pg, "bank", "public", "big").await
    );
}

/// Backup `before` restored into a new MariaDB sandbox to mark `ahead`
/// (Q = 1), `shop.t` as the mark has it, before a change replay refuses:
/// the sandbox, its topology and the restore's run.
async fn restored_ahead(
    arg: &str,
    before: &str,
) -> (PrivateSandbox, std::path::PathBuf, support::Run) {
    let target = PrivateSandbox::up(1, 0, "ready");
    let tgt = target.topology();
    let run = restored_q1(
        arg,
        tgt.to_str().unwrap(),
        "mark:ahead",
        &["--backup", before],
    )
    .await;
    assert_eq!(
        names(
            &db::topology(&tgt).shards[0],
            "SELECT CONCAT(id, '=', v) FROM shop.t ORDER BY id"
        )
        .await,
        ["1=10", "2=21"],
        "the state at the mark, before the change replay refuses"
    );
    (target, tgt, run)
}

/// A change to a table whose name differs from a selected one only in
/// its letter case (`SHOP.t` beside the selected `shop`, two databases on
/// a server that keeps case) cannot be replayed exactly: a target folding
/// names would apply it to `shop.t`. Replay refuses it, but refused it
/// wherever its table map lay in a segment it read, so a restore to a
/// mark before it in the same segment failed too, and capture stored it
/// without a word. Capture now names it, and replay refuses it only
/// where it would apply it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_table_named_in_another_letter_case_is_named_by_capture_and_stops_only_restores_past_it()
{
    let (_sb, _dir, topo_path, topo) = support::private_cluster(1, 0);
    support::add_to_every_shard(&topo_path, "    databases: [shop]\n");
    let arg = topo_path.to_str().unwrap();
    let my = &topo.shards[0];
    let mut c = db::mysql(my, None).await;
    // `SHOP` beside `shop`: the sandbox's servers keep case
    // (`lower_case_table_names` 0, Linux's default).
    c.query_drop(
        "CREATE DATABASE shop; CREATE TABLE shop.t (id INT PRIMARY KEY, v INT); \
         INSERT INTO shop.t VALUES (1, 10), (2, 20); \
         CREATE DATABASE SHOP; CREATE TABLE SHOP.t (id INT PRIMARY KEY, v INT); \
         CREATE DATABASE side; CREATE TABLE side.t (id INT PRIMARY KEY)",
    )
    .await
    .unwrap();
    run_ok_async(&["capture", "-t", arg, "--once", "--no-mark"]).await;
    let before = support::backup_id(arg).await;
    c.query_drop("UPDATE shop.t SET v = v + 1 WHERE id = 2")
        .await
        .unwrap();
    run_ok_async(&["mark", "-t", arg, "--name", "ahead"]).await;
    c.query_drop("INSERT INTO side.t VALUES (1)").await.unwrap();
    c.query_drop("INSERT INTO SHOP.t VALUES (1, 99)")
        .await
        .unwrap();
    // One round: the mark and the changes after it in one segment.
    let run = run_ok_async(&["capture", "-t", arg, "--once", "--no-mark"]).await;
    const CASE: &str = "a table map names SHOP.t, a database or table of the selection, or of the server's own, in another letter case";
    assert!(
        run.stderr.contains(
            "shardcut: warning: shard mysql-0: capture stored a change that replay will refuse, at mysql-bin."
        ) && run.stderr.contains(CASE),
        "{run:?}"
    );

    let (_target, tgt, ahead) = restored_ahead(arg, &before).await;
    // The changes past the mark are not applied, so not counted among
    // what the replay left out either: it counted every transaction it
    // read, and said it left out side.t's row.
    assert!(!ahead.stderr.contains("left out the changes"), "{ahead:?}");
    run_ok_async(&["mark", "-t", arg, "--name", "past"]).await;
    run_ok_async(&["capture", "-t", arg, "--once", "--no-mark"]).await;
    let refused = restore_until(
        arg,
        tgt.to_str().unwrap(),
        "mark:past",
        &["--backup", &before, "--overwrite"],
    )
    .await;
    assert_eq!(refused.code, 1, "{refused:?}");
    assert!(refused.stderr.contains(CASE), "{refused:?}");
}

/// A session that logs its changes as statements (`binlog_format`
/// STATEMENT or MIXED, which a session may set for itself) writes changes
/// replay cannot apply exactly, and refuses. Capture stored them without a
/// word: the DBA heard of it only when a restore to a later mark failed,
/// after its base was restored. Capture now reads each logged statement as
/// replay will and names the ones replay will refuse when it stores them.
/// And replay refused such a change wherever it lay in a segment it read,
/// so a mark taken before it in the same segment could not be restored
/// either; it now refuses only a change it would apply. A base taken
/// after such a change restores past it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_change_replay_will_refuse_is_named_by_capture_and_stops_only_restores_past_it() {
    let (_sb, _dir, topo_path, topo) = support::private_cluster(1, 0);
    let arg = topo_path.to_str().unwrap();
    let my = &topo.shards[0];
    let mut c = db::mysql(my, None).await;
    c.query_drop(
        "CREATE DATABASE shop; CREATE TABLE shop.t (id INT PRIMARY KEY, v INT); \
         INSERT INTO shop.t VALUES (1, 10), (2, 20)",
    )
    .await
    .unwrap();
    run_ok_async(&["capture", "-t", arg, "--once", "--no-mark"]).await;
    let before = support::backup_id(arg).await;
    c.query_drop("UPDATE shop.t SET v = v + 1 WHERE id = 2")
        .await
        .unwrap();
    run_ok_async(&["mark", "-t", arg, "--name", "ahead"]).await;
    c.query_drop("SET SESSION binlog_format = 'STATEMENT'")
        .await
        .unwrap();
    c.query_drop("UPDATE shop.t SET v = v + 1 WHERE id = 1")
        .await
        .unwrap();
    c.query_drop("SET SESSION binlog_format = 'ROW'")
        .await
        .unwrap();
    // One round: the mark and the change after it in one segment.
    let run = run_ok_async(&["capture", "-t", arg, "--once", "--no-mark"]).await;
    assert!(
        run.stderr.contains("shardcut: warning: shard mysql-0: capture stored a change that replay will refuse, at mysql-bin.")
            && run.stderr.contains(
                "`UPDATE shop.t SET v = v + 1 WHERE id = 1`: a change logged as a statement, not as rows (capture needs binlog_format=ROW); a restore to a mark after it fails unless its base backup was taken after it"
            ),
        "{run:?}"
    );

    let (_target, tgt, _) = restored_ahead(arg, &before).await;
    let restored = db::topology(&tgt);

    let after = support::backup_id(arg).await;
    c.query_drop("UPDATE shop.t SET v = v + 1 WHERE id = 2")
        .await
        .unwrap();
    let quiet = run_ok_async(&["capture", "-t", arg, "--once"]).await;
    assert!(!quiet.stderr.contains("replay will refuse"), "{quiet:?}");
    let refused = restore_until(
        arg,
        tgt.to_str().unwrap(),
        "latest",
        &["--backup", &before, "--overwrite"],
    )
    .await;
    assert_eq!(refused.code, 1, "{refused:?}");
    assert!(
        refused
            .stderr
            .contains("a change logged as a statement, not as rows"),
        "{refused:?}"
    );
    restored_q1(
        arg,
        tgt.to_str().unwrap(),
        "latest",
        &["--backup", &after, "--overwrite"],
    )
    .await;
    assert_eq!(
        db::mysql_checksum(&restored.shards[0], "shop.t").await,
        db::mysql_checksum(my, "shop.t").await
    );

    // An XA transaction is framed by statements replay refuses, and ends
    // with an event it does not read as an end: passed over like another
    // refused change, it took the transactions after it in, and a base
    // holding it would have skipped them. It stops the replay where it
    // is read.
    for sql in [
        "XA START 'x'",
        "INSERT INTO shop.t VALUES (3, 30)",
        "XA END 'x'",
        "XA PREPARE 'x'",
        "XA COMMIT 'x'",
    ] {
        c.query_drop(sql).await.unwrap();
    }
    let holding_xa = support::backup_id(arg).await;
    c.query_drop("UPDATE shop.t SET v = v + 1 WHERE id = 2")
        .await
        .unwrap();
    run_ok_async(&["capture", "-t", arg, "--once"]).await;
    let refused = restore_until(
        arg,
        tgt.to_str().unwrap(),
        "latest",
        &["--backup", &holding_xa, "--overwrite"],
    )
    .await;
    assert_eq!(refused.code, 1, "{refused:?}");
    assert!(
        refused.stderr.contains("`XA ")
            && refused
                .stderr
                .contains("a statement of a kind a replay does not run (XA …)"),
        "{refused:?}"
    );
    let past_xa = support::backup_id(arg).await;

    // MariaDB's log_bin_compress logs long statements and row events
    // compressed, which replay can neither read nor apply: it called the
    // segment damaged ("unreadable query event"), or the target refused
    // the rows, after the base was restored, and neither check nor capture
    // said a word. Now check requires it off and capture refuses the shard
    // while it is on; what was logged compressed while capture was not
    // looking is named when stored, and refused by that name.
    c.query_drop("SET GLOBAL log_bin_compress = ON, GLOBAL log_bin_compress_min_len = 10")
        .await
        .unwrap();
    let check = support::shardcut_async(&["check", "-t", arg, "--json"]).await;
    let finding = support::first_shard_finding(&check, "log_bin_compress");
    assert_eq!(finding["level"], "fail", "{check:?}");
    c.query_drop("CREATE TABLE shop.notes (id INT PRIMARY KEY, body VARCHAR(80))")
        .await
        .unwrap();
    c.query_drop("INSERT INTO shop.notes VALUES (1, 'a note long enough to be compressed')")
        .await
        .unwrap();
    let run = support::shardcut_async(&["capture", "-t", arg, "--once", "--no-mark"]).await;
    assert_eq!(run.code, 1, "{run:?}");
    assert!(
        run.stderr.contains(
            "capture refused: the server compresses its binary log (log_bin_compress is on)"
        ),
        "{run:?}"
    );
    c.query_drop("SET GLOBAL log_bin_compress = OFF")
        .await
        .unwrap();
    let run = run_ok_async(&["capture", "-t", arg, "--once"]).await;
    for what in [
        "a compressed statement (the server's log_bin_compress is on), which replay cannot read",
        "a compressed row event (the server's log_bin_compress is on), which replay cannot apply",
    ] {
        assert!(run.stderr.contains(what), "{what}: {run:?}");
    }
    let refused = restore_until(
        arg,
        tgt.to_str().unwrap(),
        "latest",
        &["--backup", &past_xa, "--overwrite"],
    )
    .await;
    assert_eq!(refused.code, 1, "{refused:?}");
    assert!(
        refused
            .stderr
            .contains("a compressed statement (the server's log_bin_compress is on)")
            && !refused.stderr.contains("unreadable"),
        "{refused:?}"
    );
    // A base taken after them restores past them.
    let later = support::backup_id(arg).await;
    c.query_drop("INSERT INTO shop.notes VALUES (2, 'a second note, logged uncompressed')")
        .await
        .unwrap();
    run_ok_async(&["capture", "-t", arg, "--once"]).await;
    restored_q1(
        arg,
        tgt.to_str().unwrap(),
        "latest",
        &["--backup", &later, "--overwrite"],
    )
    .await;
    assert_eq!(
        names(&restored.shards[0], "SELECT id FROM shop.notes ORDER BY id").await,
        ["1", "2"]
    );
}

/// A PostgreSQL replication slot is made only once every transaction that
/// had written when it began has ended: behind a write transaction left
/// open, the start of capture waited without a word (a `capture --once`
/// was still silent after 30 s). It still waits, since ending that
/// transaction is the DBA's call, but names what it waits for, and goes on
/// by itself once it has ended.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_postgres_capture_start_names_the_open_transaction_it_waits_for() {
    let (_sb, _dir, topo_path, topo, app) = pg_shop().await;
    let arg = topo_path.to_str().unwrap().to_string();
    let pg = &topo.shards[0];
    app.batch_execute("CREATE TABLE t (id int PRIMARY KEY)")
        .await
        .unwrap();
    app.batch_execute("BEGIN").await.unwrap();
    app.batch_execute("INSERT INTO t VALUES (1)").await.unwrap();
    let capture = tokio::spawn(async move {
        support::shardcut_async(&["capture", "-t", &arg, "--once", "--no-mark"]).await
    });
    // Once capture's session waits on the open transaction, its first note
    // comes 5 s into the wait.
    let look = db::pg(pg, "postgres").await;
    let mut waited = Duration::ZERO;
    loop {
        let waiting: i64 = look
            .query_one(
                "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock' \
                 AND query LIKE '%pg_create_logical_replication_slot%'",
                &[],
            )
            .await
            .unwrap()
            .get(0);
        if waiting > 0 {
            break;
        }
        assert!(waited < Duration::from_secs(60), "capture never waited");
        tokio::time::sleep(Duration::from_millis(100)).await;
        waited += Duration::from_millis(100);
    }
    tokio::time::sleep(Duration::from_secs(8)).await;
    assert!(
        !capture.is_finished(),
        "capture waits for the open transaction"
    );
    app.batch_execute("COMMIT").await.unwrap();
    let run = capture.await.unwrap();
    assert_eq!(run.code, 0, "{run:?}");
    assert!(
        run.stderr
            .contains("pg-0: starting capture of shop waits for pid ")
            && run
                .stderr
                .contains("(user shardcut, a transaction open for ")
            && run
                .stderr
                .contains("idle in transaction: `INSERT INTO t VALUES (1)`) to end")
            && run
                .stderr
                .contains("capture of pg-0 database shop starts at lsn"),
        "{run:?}"
    );
}

/// A private cluster of one PostgreSQL shard holding database `shop`: the
/// sandbox, the topology's folder, path and contents, and a session in
/// `shop`.
async fn pg_shop() -> (
    PrivateSandbox,
    tempfile::TempDir,
    std::path::PathBuf,
    Topology,
    tokio_postgres::Client,
) {
    let (sb, dir, topo_path, topo) = support::private_cluster(0, 1);
    db::pg(&topo.shards[0], "postgres")
        .await
        .batch_execute("CREATE DATABASE shop")
        .await
        .unwrap();
    let app = db::pg(&topo.shards[0], "shop").await;
    (sb, dir, topo_path, topo, app)
}

/// Schema changes after the base backup that PostgreSQL logical decoding
/// does not carry. A column whose type changed, its name kept (`ALTER
/// TABLE … ALTER COLUMN … TYPE`): the restore compared the backup's and
/// the mark's column names only, and replayed the changes into the
/// restored column of the old type (Q = 1, the values fitting). It is now
/// refused by name before anything is restored, as an added or dropped
/// column is. An index (or another object beside the columns) created
/// after the backup was left out without a word; the restore now says
/// so. A mark before either restores as it did.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_postgres_schema_changed_after_the_base_is_refused_or_named() {
    let (_sb, _dir, topo_path, _, app) = pg_shop().await;
    let arg = topo_path.to_str().unwrap();
    app.batch_execute(
        "CREATE TYPE mood AS ENUM ('sad', 'ok'); \
         CREATE TABLE t (id int PRIMARY KEY, n int, label varchar(8), m mood); \
         INSERT INTO t VALUES (1, 10, 'a', 'ok')",
    )
    .await
    .unwrap();
    run_ok_async(&["capture", "-t", arg, "--once", "--no-mark"]).await;
    run_ok_async(&["backup", "-t", arg]).await;
    // A search_path that no longer reaches public: the catalog then names
    // the enum `public.mood`, the same type.
    app.batch_execute(
        "ALTER DATABASE shop SET search_path = \"$user\"; \
         INSERT INTO public.t VALUES (2, 20, 'b', 'sad')",
    )
    .await
    .unwrap();
    run_ok_async(&["mark", "-t", arg, "--name", "same-schema"]).await;
    app.batch_execute(
        "CREATE INDEX t_label ON public.t (label); INSERT INTO public.t VALUES (3, 30, 'c', 'ok')",
    )
    .await
    .unwrap();
    run_ok_async(&["mark", "-t", arg, "--name", "indexed"]).await;
    let incremental = run_ok_async(&["backup", "-t", arg, "--incremental", "--json"]).await;
    let incremental_id = incremental.json()["backup_id"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(
        incremental.stderr.contains("shardcut: warning: incremental backup ")
            && incremental.stderr.contains(
                "database shop: its indexes, keys, triggers, rules or policies (post-data) changed between backup"
            ),
        "{incremental:?}"
    );
    app.batch_execute(
        "ALTER TABLE public.t ALTER COLUMN n TYPE bigint, ALTER COLUMN label TYPE varchar(64); \
         INSERT INTO public.t VALUES (4, 40, 'd', 'ok')",
    )
    .await
    .unwrap();
    // An incremental backup past it could not be restored: not written.
    let listed = || async {
        support::shardcut_async(&["list", "-t", arg, "--json"])
            .await
            .json()["backups"]
            .as_array()
            .unwrap()
            .len()
    };
    let before = listed().await;
    let refused = support::shardcut_async(&["backup", "-t", arg, "--incremental"]).await;
    assert_eq!(refused.code, 1, "{refused:?}");
    assert!(
        refused.stderr.contains(
            "not written, since it could not be restored (shard pg-0: table shop.public.t has column types changed"
        ) && refused.stderr.contains("): take a full backup"),
        "{refused:?}"
    );
    assert_eq!(listed().await, before, "no backup written");
    run_ok_async(&["capture", "-t", arg, "--once"]).await;

    let target = PrivateSandbox::up(0, 1, "ready");
    let tgt = target.topology();
    let restored = db::topology(&tgt);
    let rows = || async {
        db::pg(&restored.shards[0], "shop")
            .await
            .query(
                "SELECT concat_ws('=', id, n, label, m) FROM public.t ORDER BY id",
                &[],
            )
            .await
            .unwrap()
            .iter()
            .map(|r| r.get(0))
            .collect::<Vec<String>>()
    };
    let same = restored_q1(arg, tgt.to_str().unwrap(), "mark:same-schema", &[]).await;
    assert_eq!(rows().await, ["1=10=a=ok", "2=20=b=sad"]);
    assert!(
        same.json().get("notes").is_none(),
        "the same schema at the mark, with capture's publication kept current: {same:?}"
    );

    let indexed = restored_q1(arg, tgt.to_str().unwrap(), "mark:indexed", &["--overwrite"]).await;
    assert_eq!(rows().await, ["1=10=a=ok", "2=20=b=sad", "3=30=c=ok"]);
    assert!(
        indexed.json()["notes"].to_string().contains(
            "pg-0: database shop: its indexes, keys, triggers, rules or policies (post-data) changed between backup"
        ),
        "{indexed:?}"
    );

    // The incremental backup written across the index restores the same,
    // and says so too.
    let from_incremental = support::shardcut_async(&[
        "restore",
        "-t",
        arg,
        "--target",
        tgt.to_str().unwrap(),
        "--backup",
        &incremental_id,
        "--overwrite",
        "--json",
    ])
    .await;
    assert_eq!(from_incremental.code, 0, "{from_incremental:?}");
    assert!(
        from_incremental.json()["notes"]
            .to_string()
            .contains("(post-data) changed between backup"),
        "{from_incremental:?}"
    );
    assert_eq!(rows().await, ["1=10=a=ok", "2=20=b=sad", "3=30=c=ok"]);

    let refused = restore_until(arg, tgt.to_str().unwrap(), "latest", &["--overwrite"]).await;
    assert_eq!(refused.code, 2, "{refused:?}");
    assert!(
        refused.stderr.contains("table shop.public.t has column types changed between backup")
            && refused.stderr.contains(
                "(n integer → bigint, label character varying(8) → character varying(64)): PostgreSQL logical decoding does not carry ALTER TABLE"
            ),
        "{refused:?}"
    );
    assert_eq!(
        rows().await,
        ["1=10=a=ok", "2=20=b=sad", "3=30=c=ok"],
        "refused before the target changed"
    );
}

/// Triggers that fire on replicated changes (`ENABLE ALWAYS`, `ENABLE
/// REPLICA`): the replay's sessions run as a replica, so those fired
/// again, repeating what the captured changes already hold. An AFTER
/// trigger writing an audit row on one of the replay's connections made
/// the audit table's own replayed rows wait on it on another, while the
/// replay waited on that one: the restore hung (forever). They are now
/// disabled while the changes replay and enabled again as they were.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_triggers_that_fire_on_replicated_changes_do_not_fire_again_in_a_replay() {
    let (_sb, _dir, topo_path, _, app) = pg_shop().await;
    let arg = topo_path.to_str().unwrap();
    app.batch_execute(
        "CREATE TABLE a (id int PRIMARY KEY, v int); \
         CREATE TABLE audit (id serial PRIMARY KEY, a_id int); \
         CREATE FUNCTION log_a() RETURNS trigger LANGUAGE plpgsql AS \
           $$BEGIN INSERT INTO audit (a_id) VALUES (NEW.id); RETURN NEW; END$$; \
         CREATE FUNCTION tenfold() RETURNS trigger LANGUAGE plpgsql AS \
           $$BEGIN NEW.v := NEW.v * 10; RETURN NEW; END$$; \
         CREATE TRIGGER a_log AFTER INSERT ON a FOR EACH ROW EXECUTE FUNCTION log_a(); \
         CREATE TRIGGER a_tenfold BEFORE INSERT ON a FOR EACH ROW EXECUTE FUNCTION tenfold(); \
         ALTER TABLE a ENABLE ALWAYS TRIGGER a_log; \
         ALTER TABLE a ENABLE REPLICA TRIGGER a_tenfold; \
         INSERT INTO a VALUES (1, 1); \
         CREATE TABLE p (id int PRIMARY KEY, v int) PARTITION BY RANGE (id); \
         CREATE TABLE p1 PARTITION OF p FOR VALUES FROM (0) TO (100); \
         CREATE TABLE p2 PARTITION OF p FOR VALUES FROM (100) TO (200); \
         CREATE TRIGGER p_log AFTER INSERT ON p FOR EACH ROW EXECUTE FUNCTION log_a(); \
         ALTER TABLE p ENABLE ALWAYS TRIGGER p_log; \
         ALTER TABLE p2 DISABLE TRIGGER p_log",
    )
    .await
    .unwrap();
    run_ok_async(&["capture", "-t", arg, "--once", "--no-mark"]).await;
    run_ok_async(&["backup", "-t", arg]).await;
    app.batch_execute(
        "INSERT INTO a SELECT g, g FROM generate_series(2, 50) g; \
         INSERT INTO p SELECT g, g FROM generate_series(1, 150) g",
    )
    .await
    .unwrap();
    run_ok_async(&["capture", "-t", arg, "--once"]).await;

    let target = PrivateSandbox::up(0, 1, "ready");
    let tgt = target.topology();
    let run = tokio::time::timeout(
        Duration::from_secs(180),
        restore_until(arg, tgt.to_str().unwrap(), "latest", &["--json"]),
    )
    .await
    .expect("the restore ends (it hung on its own connections)");
    assert_eq!(run.code, 0, "{run:?}");
    assert_eq!(run.json()["quality"]["score"], 1.0, "{run:?}");
    assert!(
        run.json()["replay"][0]["notes"].to_string().contains(
            "4 trigger(s) that fire on replicated changes (ENABLE ALWAYS or REPLICA) were disabled while the changes replayed"
        ),
        "{run:?}"
    );
    let restored = db::topology(&tgt);
    let t = db::pg(&restored.shards[0], "shop").await;
    let one = |sql: &'static str| {
        let t = &t;
        async move { t.query_one(sql, &[]).await.unwrap().get::<_, i64>(0) }
    };
    assert_eq!(
        one("SELECT count(*) FROM audit").await,
        app.query_one("SELECT count(*) FROM audit", &[])
            .await
            .unwrap()
            .get::<_, i64>(0),
        "one audit row a row of a and of p1, as on the source"
    );
    assert_eq!(
        one("SELECT sum(v)::bigint FROM a").await,
        app.query_one("SELECT sum(v)::bigint FROM a", &[])
            .await
            .unwrap()
            .get::<_, i64>(0),
        "the values as the source has them (its REPLICA trigger does not fire there, nor in the replay)"
    );
    let modes: Vec<String> = t
        .query(
            "SELECT tgrelid::regclass::text || '.' || tgname || '=' || tgenabled::text FROM pg_trigger WHERE NOT tgisinternal ORDER BY 1",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(
        modes,
        [
            "a.a_log=A",
            "a.a_tenfold=R",
            "p.p_log=A",
            "p1.p_log=A",
            "p2.p_log=D"
        ],
        "enabled again as they were, a partition's copy too"
    );
}
