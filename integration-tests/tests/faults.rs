//! Faults during a backup, with real processes and servers: a shard that
//! cannot be blocked, a cut attempt that fails after some shards opened
//! their snapshots, the orchestrator killed while holding the block, a
//! block lease that expires, a shard settling for longer than the block's
//! lease while another holds its backup stages, an orchestrator that
//! comes back to settled shards after their settle lease, a server stopped
//! mid-backup, a repository disk that fills up. In every case no backup is listed and no source is
//! left blocked (or the backup that is listed holds what it should).

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use mysql_async::prelude::Queryable;
use shard_agent::repo::Repository;
use tokio::io::{AsyncBufReadExt, BufReader};
use topology::Topology;

use crate::support::{self, bin, db, shardcut, PrivateSandbox};

const MYSQL_APP: &[&str] = &[
    "DROP DATABASE IF EXISTS app",
    "CREATE DATABASE app",
    "CREATE TABLE app.t (id INT PRIMARY KEY AUTO_INCREMENT, v INT) ENGINE=InnoDB",
    "INSERT INTO app.t (v) VALUES (1), (2), (3)",
];
const PG_APP: &str =
    "CREATE TABLE t (id serial PRIMARY KEY, v int); INSERT INTO t (v) VALUES (1), (2), (3);";

/// Tries one autocommit insert on every shard, each waiting for locks at
/// most `wait`; returns the error of each shard that could not write.
async fn write_everywhere(topo: &Topology, wait: Duration) -> Vec<String> {
    let mut failures = Vec::new();
    for s in &topo.shards {
        let result = match s.engine {
            topology::Engine::Mysql => {
                let mut c = db::mysql(s, Some("app")).await;
                c.query_drop(format!(
                    "SET SESSION lock_wait_timeout = {}; INSERT INTO t (v) VALUES (9)",
                    wait.as_secs().max(1)
                ))
                .await
                .map_err(|e| e.to_string())
            }
            topology::Engine::Postgres => {
                let c = db::pg(s, "app").await;
                c.batch_execute(&format!(
                    "SET lock_timeout = '{}ms'; INSERT INTO t (v) VALUES (9)",
                    wait.as_millis()
                ))
                .await
                .map_err(|e| format!("{e}: {:?}", e.as_db_error().map(|d| d.message())))
            }
        };
        if let Err(e) = result {
            failures.push(format!("{}: {e}", s.name));
        }
    }
    failures
}

fn listed(topo: &std::path::Path) -> usize {
    let run = shardcut(&["list", "-t", topo.to_str().unwrap(), "--json"]);
    assert_eq!(run.code, 0, "{run:?}");
    run.json()["backups"].as_array().unwrap().len()
}

/// Starts `shardcut backup` and waits until its stderr shows `marker`;
/// the rest of stderr is collected by the returned task.
async fn backup_until(
    args: &[&str],
    marker: &str,
) -> (tokio::process::Child, tokio::task::JoinHandle<String>) {
    backup_until_env(args, &[], marker).await
}

/// [`backup_until`] with `env` set for shardcut; its stdout is kept for
/// `wait_with_output`.
async fn backup_until_env(
    args: &[&str],
    env: &[(&str, &str)],
    marker: &str,
) -> (tokio::process::Child, tokio::task::JoinHandle<String>) {
    let mut child = tokio::process::Command::new(bin("shardcut"))
        .arg("backup")
        .args(args)
        .envs(env.iter().copied())
        .stderr(Stdio::piped())
        .stdout(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
    let wait = tokio::time::timeout(Duration::from_secs(60), async {
        while let Some(line) = lines.next_line().await.unwrap() {
            if line.contains(marker) {
                return;
            }
        }
        panic!("shardcut ended before `{marker}`");
    });
    wait.await.expect("marker within 60 s");
    // Keep draining stderr so the child never blocks on a full pipe.
    let rest = tokio::spawn(async move {
        let mut text = String::new();
        while let Ok(Some(line)) = lines.next_line().await {
            text.push_str(&line);
            text.push('\n');
        }
        text
    });
    (child, rest)
}

/// A private sandbox of one MariaDB and one PostgreSQL shard holding the
/// `app` tables, and its topology (written in `dir`) with `settings` in
/// place of the default write-block timeout.
async fn app_sandbox(dir: &Path, settings: &str) -> (PrivateSandbox, PathBuf, Topology) {
    let sb = PrivateSandbox::up(1, 1, "ready");
    let topo_path = support::topology_variant(
        &sb.topology(),
        dir,
        &[("write_block_timeout: 2s", settings)],
    );
    let topo = db::topology(&topo_path);
    db::setup_all(&topo, MYSQL_APP, "app", PG_APP).await;
    (sb, topo_path, topo)
}

/// [`app_sandbox`] with a write-block timeout of 300 ms, so a shard that
/// cannot block fails an attempt fast.
async fn app_sandbox_blocking_300ms(dir: &Path) -> (PrivateSandbox, PathBuf, Topology) {
    app_sandbox(dir, "write_block_timeout: 300ms").await
}

/// A block lease of 3 s (the write-block timeout 1 s).
const SHORT_LEASE: &str = "write_block_timeout: 1s\n  write_block_lease: 3s";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unblockable_shard_fails_the_cut_and_leaves_nothing_blocked() {
    let dir = tempfile::tempdir().unwrap();
    let (_sb, topo_path, topo) = app_sandbox_blocking_300ms(dir.path()).await;
    // A long open write transaction on pg-0 holds a lock the block needs;
    // its statement, named in the error, spans two lines.
    let holder = db::pg(topo.shard("pg-0").unwrap(), "app").await;
    holder
        .batch_execute("BEGIN; UPDATE t SET v = v + 1\nWHERE id = 1")
        .await
        .unwrap();

    let run = support::shardcut_async(&["backup", "-t", topo_path.to_str().unwrap()]).await;
    assert_eq!(run.code, 1, "{run:?}");
    assert!(
        run.stderr
            .contains("could not take a consistent cut after 4 attempts"),
        "{run:?}"
    );
    assert!(
        run.stderr
            .contains("shard pg-0: could not block commits within 300 ms; held up by pid"),
        "{run:?}"
    );
    assert!(run.stderr.contains("in a transaction open for"), "{run:?}");
    // Another session's text is the server's bytes: escaped, so that the
    // error stays one line.
    assert!(
        run.stderr
            .lines()
            .any(|l| l.contains("held up by pid") && l.contains("v = v + 1\\nWHERE id = 1")),
        "{run:?}"
    );
    assert!(
        !run.stderr.contains("shard mysql-0: could not block"),
        "{run:?}"
    );
    eprintln!("unblockable shard, shardcut said:\n{}", run.stderr);
    assert_eq!(listed(&topo_path), 0, "nothing listed as a backup");
    assert!(
        db::repository(&topo).list("backups/").unwrap().is_empty(),
        "no partial objects left"
    );
    // Writers proceed everywhere (the pg insert does not conflict with the holder's row lock).
    assert_eq!(
        write_everywhere(&topo, Duration::from_secs(2)).await,
        Vec::<String>::new()
    );
    holder.batch_execute("COMMIT").await.unwrap();
}

/// A shard marks as soon as it is blocked, so a cut attempt can fail (a
/// later shard could not block) after some shards opened their snapshots.
/// The retry must take new ones: a row committed on pg-0 between the
/// attempts is in the backup. Here mysql-0 cannot block in the first
/// attempt because another session holds `BACKUP STAGE START` (one backup
/// at a time); pg-0 blocks first and marks while mysql-0 waits.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retried_cut_takes_new_snapshots_where_the_failed_attempt_marked() {
    let dir = tempfile::tempdir().unwrap();
    let (_sb, topo_path, topo) = app_sandbox_blocking_300ms(dir.path()).await;
    let arg = topo_path.to_str().unwrap();
    let mut other_backup = db::mysql(topo.shard("mysql-0").unwrap(), None).await;
    other_backup.query_drop("BACKUP STAGE START").await.unwrap();
    let writer = db::pg(topo.shard("pg-0").unwrap(), "app").await;

    let (mut child, rest) = backup_until(
        &["-t", arg],
        "cut attempt 1 failed: shard mysql-0: could not block commits within 300 ms",
    )
    .await;
    // pg-0 marked in the failed attempt. A row commits there, then mysql-0
    // can block: whichever attempt succeeds, pg-0 blocked after this commit.
    writer
        .batch_execute("INSERT INTO t (v) VALUES (4)")
        .await
        .unwrap();
    other_backup.query_drop("BACKUP STAGE END").await.unwrap();
    let status = tokio::time::timeout(Duration::from_secs(60), child.wait())
        .await
        .expect("the backup ends within 60 s")
        .unwrap();
    let stderr = rest.await.unwrap();
    assert!(status.success(), "{status:?}: {stderr}");
    let m = support::manifest(&topo_path, "latest");
    assert!(m.cut.attempts >= 2, "{:?}", m.cut);
    let t = db::find_table(&m, "pg-0", "app.public.t");
    assert_eq!(
        t.rows, 4,
        "pg-0's snapshot must be the successful attempt's, with the row committed after the failed one"
    );
    assert_eq!(db::find_table(&m, "mysql-0", "app.t").rows, 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_orchestrator_never_leaves_writers_blocked() {
    let sb = PrivateSandbox::up(1, 1, "ready");
    let dir = tempfile::tempdir().unwrap();
    let topo_path = support::topology_variant(&sb.topology(), dir.path(), &[]);
    let topo = db::topology(&topo_path);
    db::setup_all(&topo, MYSQL_APP, "app", PG_APP).await;
    let arg = topo_path.to_str().unwrap();

    let (mut child, _) = backup_until(
        &["-t", arg, "--test-hold-block", "60s"],
        "holding the block",
    )
    .await;
    // The block is real: writers on both shards wait and time out.
    let blocked = write_everywhere(&topo, Duration::from_secs(1)).await;
    assert_eq!(blocked.len(), 2, "both shards must be blocked: {blocked:?}");
    assert!(
        blocked[0].starts_with("mysql-0") && blocked[0].contains("Lock wait timeout"),
        "{blocked:?}"
    );
    assert!(
        blocked[1].starts_with("pg-0") && blocked[1].contains("lock timeout"),
        "{blocked:?}"
    );

    child.kill().await.unwrap();
    // Within the lease (10 s by default) writers proceed.
    assert_eq!(
        write_everywhere(&topo, Duration::from_secs(10)).await,
        Vec::<String>::new()
    );
    assert_eq!(listed(&topo_path), 0);
    // The killed run's lock does not stop the next backup.
    let run = support::shardcut_async(&["backup", "-t", arg]).await;
    assert_eq!(run.code, 0, "{run:?}");
    assert_eq!(listed(&topo_path), 1);
}

/// The folders of the backups in the repository at `repo` that have no
/// manifest.
fn unfinished(repo: &Path) -> Vec<PathBuf> {
    let mut out: Vec<PathBuf> = std::fs::read_dir(repo.join("backups"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| !p.join("manifest.json").exists())
        .collect();
    out.sort();
    out
}

/// A backup killed after its cut leaves a folder without a manifest; the
/// next expiry of the cluster removes it whole (a temporary file of a put
/// it never finished included). While the backup runs, expiry is refused;
/// another cluster's backup in progress and a folder of no known writer
/// stay; the complete backup stays and verifies.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expiry_removes_what_a_killed_backup_left_and_nothing_else() {
    let dir = tempfile::tempdir().unwrap();
    let topo_path = support::topology_variant(&support::sandbox_topology(), dir.path(), &[]);
    let arg = topo_path.to_str().unwrap();
    let repo = dir.path().join("repo");
    let run = support::shardcut_async(&["backup", "-t", arg]).await;
    assert_eq!(run.code, 0, "{run:?}");

    let (mut child, _rest) =
        backup_until(&["-t", arg, "--test-pause-before-dump", "60s"], "pausing").await;
    let run = support::shardcut_async(&["expire", "-t", arg, "--keep-last", "5"]).await;
    assert_ne!(run.code, 0, "{run:?}");
    assert!(run.stderr.contains("another backup of cluster"), "{run:?}");
    let killed = unfinished(&repo);
    assert_eq!(killed.len(), 1, "{killed:?}");
    let killed = killed[0].clone();
    assert!(killed.join("started.json").exists());
    child.kill().await.unwrap();
    child.wait().await.unwrap();

    // What a run killed in its dump leaves besides: a chunk, and a put it
    // never finished.
    let db_dir = killed.join("shards/mysql-0/app");
    std::fs::create_dir_all(&db_dir).unwrap();
    std::fs::write(db_dir.join("t.r00000-p0000.zst"), b"rows").unwrap();
    std::fs::write(db_dir.join(".tmp-4242-0"), b"torn").unwrap();
    // Another cluster's backup in progress, and a folder of no known writer.
    let other = repo.join("backups/20990101T000000.000Z-aaaa");
    std::fs::create_dir_all(other.join("shards/s")).unwrap();
    std::fs::write(
        other.join("started.json"),
        br#"{"cluster":"elsewhere","writer":"backup","started_at":"2099-01-01T00:00:00Z","host":"h","pid":1}"#,
    )
    .unwrap();
    std::fs::write(other.join("shards/s/x.zst"), b"rows").unwrap();
    let unknown = repo.join("backups/20990101T000000.000Z-bbbb");
    std::fs::create_dir_all(&unknown).unwrap();
    std::fs::write(unknown.join("x.zst"), b"rows").unwrap();
    let killed_id = killed.file_name().unwrap().to_str().unwrap().to_string();

    let dry = shardcut(&[
        "expire",
        "-t",
        arg,
        "--keep-last",
        "5",
        "--dry-run",
        "--json",
    ]);
    assert_eq!(dry.code, 0, "{dry:?}");
    assert_eq!(
        dry.json()["unfinished_removed"][0]["backup_id"],
        killed_id.as_str()
    );
    assert!(
        db_dir.join("t.r00000-p0000.zst").exists(),
        "a dry run removes nothing"
    );

    let run = shardcut(&["expire", "-t", arg, "--keep-last", "5", "--json"]);
    assert_eq!(run.code, 0, "{run:?}");
    let doc = run.json();
    let removed = doc["unfinished_removed"].as_array().unwrap();
    assert_eq!(removed.len(), 1, "{doc}");
    assert_eq!(removed[0]["backup_id"], killed_id.as_str());
    assert_eq!(removed[0]["objects"], 2, "the record and the chunk: {doc}");
    assert!(!killed.exists(), "nothing of the killed backup stays");
    assert!(other.join("shards/s/x.zst").exists());
    assert!(unknown.join("x.zst").exists());
    let left = doc["unfinished_left"].as_array().unwrap();
    assert_eq!(left.len(), 1, "{doc}");
    assert_eq!(left[0]["backup_id"], "20990101T000000.000Z-bbbb");
    assert!(
        left[0]["why"].as_str().unwrap().contains("holds no"),
        "{doc}"
    );
    assert_eq!(unfinished(&repo), vec![other, unknown]);

    assert_eq!(listed(&topo_path), 1);
    let run = shardcut(&["verify", "-t", arg, "--backup", "latest"]);
    assert_eq!(run.code, 0, "{run:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn block_lease_expires_while_the_orchestrator_stalls() {
    let dir = tempfile::tempdir().unwrap();
    let (_sb, topo_path, topo) = app_sandbox(dir.path(), SHORT_LEASE).await;
    let arg = topo_path.to_str().unwrap().to_string();

    let (child, stderr) = backup_until(
        &["-t", &arg, "--test-hold-block", "20s"],
        "holding the block",
    )
    .await;
    // The orchestrator is alive but does not move on; the agents' lease
    // (3 s) ends the block, so writers waiting up to 6 s get through (the
    // MariaDB block was leased for the settling too, 9 s).
    let started = std::time::Instant::now();
    assert_eq!(
        write_everywhere(&topo, Duration::from_secs(6)).await,
        Vec::<String>::new()
    );
    let waited = started.elapsed();
    let out = child.wait_with_output().await.unwrap();
    let stderr = stderr.await.unwrap();
    assert_eq!(
        out.status.code(),
        Some(1),
        "a cut whose block ended early must fail: {stderr}"
    );
    assert!(stderr.contains("lease"), "{stderr}");
    assert!(
        waited < Duration::from_secs(20),
        "writers were released by the lease, not by the run ending"
    );
    assert_eq!(listed(&topo_path), 0);
}

/// Runs `sql` on a fresh connection to `shard` waiting at most a second
/// for locks; the server's error code if it failed.
async fn within_a_second(shard: &topology::Shard, sql: &str) -> Result<(), u16> {
    let mut c = db::mysql(shard, Some("app")).await;
    let result = c
        .query_drop(format!("SET SESSION lock_wait_timeout = 1; {sql}"))
        .await;
    drop(c.disconnect().await);
    match result {
        Ok(()) => Ok(()),
        Err(mysql_async::Error::Server(e)) => Err(e.code),
        Err(e) => panic!("{sql}: {e}"),
    }
}

/// A MariaDB shard takes `BACKUP STAGE FLUSH` and `BLOCK_DDL` while it
/// settles, so that the block itself is only `BLOCK_COMMIT` (the closing
/// of every unused table no longer happens while commits wait): after
/// settling, DDL waits and commits do not; a cut attempt that ends before
/// the block (another shard could not block) ends the stages on release;
/// after the block, commits wait until the release.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mariadb_settles_into_the_backup_stages_holding_no_commit() {
    use shard_agent::cut::CutOptions;
    const LOCK_WAIT_TIMEOUT: u16 = 1205;
    let sb = PrivateSandbox::up(1, 0, "ready");
    let dir = tempfile::tempdir().unwrap();
    let topo_path = support::topology_variant(&sb.topology(), dir.path(), &[]);
    let topo = db::topology(&topo_path);
    db::setup_all(&topo, MYSQL_APP, "app", PG_APP).await;
    let shard = topo.shard("mysql-0").unwrap();
    let opts = CutOptions {
        write_block_timeout: Duration::from_secs(2),
        write_block_lease: Duration::from_secs(60),
        connect_timeout: Duration::from_secs(10),
    };
    let driver = shard_agent::engine::driver(topology::Engine::Mysql);
    let mut session = driver.open(shard, &opts, "MariaDB".into()).await.unwrap();
    // DDL that leaves the tables' columns as the catalog listed them (a
    // table created between two attempts would fail the second: see
    // `ddl_between_the_catalog_and_the_cut_fails_the_backup_by_name`).
    let ddl = |n: u32| format!("CREATE INDEX ddl_probe_{n} ON t (v)");
    let commit = "INSERT INTO t (v) VALUES (7)";

    session.settle().await;
    assert_eq!(
        within_a_second(shard, &ddl(1)).await,
        Err(LOCK_WAIT_TIMEOUT)
    );
    assert_eq!(within_a_second(shard, commit).await, Ok(()));
    // The attempt ends before this shard blocks: nothing stays staged.
    assert_eq!(session.release().await.unwrap(), Duration::ZERO);
    assert_eq!(within_a_second(shard, &ddl(2)).await, Ok(()));

    session.settle().await;
    session.block().await.unwrap();
    assert_eq!(within_a_second(shard, commit).await, Err(LOCK_WAIT_TIMEOUT));
    session.mark().await.unwrap();
    assert!(session.release().await.unwrap() > Duration::ZERO);
    assert_eq!(within_a_second(shard, commit).await, Ok(()));
    assert_eq!(within_a_second(shard, &ddl(3)).await, Ok(()));
}

/// An orchestrator that comes back to a settled shard only after what the
/// shard took while settling has been ended by its lease (MariaDB's backup
/// stages, PostgreSQL's vacuum guard): the block starts afresh on new
/// sessions instead of failing on the ended ones, holds commits until the
/// release, and the shard writes again after it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_block_after_the_settle_lease_ran_out_starts_afresh() {
    use shard_agent::cut::CutOptions;
    let dir = tempfile::tempdir().unwrap();
    // The cut's settings are `opts` below, not the topology's.
    let (_sb, _, topo) = app_sandbox(dir.path(), "write_block_timeout: 2s").await;
    let opts = CutOptions {
        write_block_timeout: Duration::from_secs(1),
        // Long enough for the writes below to find every shard blocked.
        write_block_lease: Duration::from_secs(4),
        connect_timeout: Duration::from_secs(10),
    };
    let mut sessions = Vec::new();
    for shard in &topo.shards {
        let driver = shard_agent::engine::driver(shard.engine);
        let server = match shard.engine {
            topology::Engine::Mysql => "MariaDB",
            topology::Engine::Postgres => "PostgreSQL",
        };
        let mut session = driver.open(shard, &opts, server.into()).await.unwrap();
        session.settle().await;
        sessions.push((shard.name.clone(), session));
    }
    // The orchestrator stalls past the settle lease.
    tokio::time::sleep(opts.settled_lease() + Duration::from_secs(1)).await;
    for (name, session) in &mut sessions {
        if let Err(e) = session.block().await {
            panic!("{name}: the block after an expired settle lease failed: {e}");
        }
    }
    for (name, session) in &mut sessions {
        session
            .mark()
            .await
            .unwrap_or_else(|e| panic!("{name}: {e}"));
    }
    let blocked = write_everywhere(&topo, Duration::from_secs(1)).await;
    assert_eq!(blocked.len(), 2, "commits wait on every shard: {blocked:?}");
    for (name, session) in &mut sessions {
        let held = session
            .release()
            .await
            .unwrap_or_else(|e| panic!("{name}: {e}"));
        assert!(held > Duration::ZERO, "{name}");
    }
    assert_eq!(
        write_everywhere(&topo, Duration::from_secs(1)).await,
        Vec::<String>::new()
    );
}

/// DDL on a MariaDB table after its rows were read and before its schema
/// was (the schema is read on the control session beside the data, not
/// in the snapshot): the snapshot connection that read the rows keeps the
/// table's metadata lock until the schema pass is over, so the ALTER
/// waits for the backup and the stored schema is the one the rows were
/// read under. Before, the worker's connection ended with its last table,
/// the ALTER ran at once, and the backup paired the new schema with the
/// old rows.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ddl_after_a_mariadb_table_was_read_waits_for_its_schema_to_be_read() {
    let dir = tempfile::tempdir().unwrap();
    let (_sb, topo_path, topo) = app_sandbox(dir.path(), "write_block_timeout: 2s").await;
    let arg = topo_path.to_str().unwrap().to_string();
    // The schema pass also reads app.t's trigger and a view over it, with
    // the ALTER waiting: none of it may wait behind the ALTER in turn.
    let mut my = db::mysql(topo.shard("mysql-0").unwrap(), Some("app")).await;
    my.query_drop(
        "CREATE TRIGGER t_bi BEFORE INSERT ON t FOR EACH ROW SET NEW.v = NEW.v + 1; \
         CREATE VIEW tv AS SELECT id, v FROM t",
    )
    .await
    .unwrap();
    my.disconnect().await.unwrap();
    let (child, stderr) = backup_until_env(
        &["-t", &arg, "--json"],
        &[("SHARDCUT_TEST_SCHEMA_PAUSE_MS", "4000")],
        "before reading the schema",
    )
    .await;
    // The workers read three rows in milliseconds; give them a second.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let shard = topo.shard("mysql-0").unwrap().clone();
    let alter = tokio::spawn(async move {
        let mut c = db::mysql(&shard, Some("app")).await;
        let began = std::time::Instant::now();
        c.query_drop("ALTER TABLE t ADD COLUMN c INT NOT NULL DEFAULT 7")
            .await
            .unwrap();
        began.elapsed()
    });
    let out = tokio::time::timeout(Duration::from_secs(60), child.wait_with_output())
        .await
        .expect("the backup ends within 60 s")
        .unwrap();
    let stderr = stderr.await.unwrap();
    assert_eq!(out.status.code(), Some(0), "{stderr}");
    let waited = tokio::time::timeout(Duration::from_secs(30), alter)
        .await
        .expect("the ALTER ends once the backup has")
        .unwrap();
    // The schema pass resumes 3 s after the ALTER began.
    assert!(
        waited >= Duration::from_secs(2),
        "the ALTER ran in {waited:?}, while the backup still had to read the schema of app.t"
    );
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let id = report["backup_id"].as_str().unwrap();
    let m = support::manifest(&topo_path, id);
    let file = m.shards["mysql-0"]
        .schema
        .iter()
        .find(|f| f.database == "app")
        .expect("the schema file of app");
    let repo = db::repository(&topo);
    let raw = shard_agent::dump::chunk::decompress(&repo.get(&file.key).unwrap()).unwrap();
    let schema: serde_json::Value = serde_json::from_slice(&raw).unwrap();
    let create = schema["tables"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["name"] == "t")
        .expect("app.t in the schema")["sql"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(
        create.contains("`v`") && !create.contains("`c`"),
        "the stored schema of app.t is not the one its rows were read under: {create}"
    );
    for (kind, name) in [("triggers", "t_bi"), ("views", "tv")] {
        assert!(
            schema[kind]
                .as_array()
                .unwrap()
                .iter()
                .any(|o| o["name"] == name),
            "{kind} of app lack {name}: {schema}"
        );
    }
    let columns: Vec<&str> = support::db::find_table(&m, "mysql-0", "app.t")
        .columns
        .iter()
        .map(|c| c.name.as_str())
        .collect();
    assert_eq!(columns, ["id", "v"]);
}

/// DDL between the catalog each shard reads before the cut and the cut:
/// a table created meanwhile, or a column added and filled meanwhile,
/// exists at the cut, so a backup planned from the catalog before would
/// miss its rows (the schema read at the cut holds them, the data not).
/// Each engine lists its tables again as of the cut (MariaDB while its
/// backup stages hold DDL back, PostgreSQL in the exported snapshot) and
/// the backup fails by name, nothing listed; the next backup holds them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ddl_between_the_catalog_and_the_cut_fails_the_backup_by_name() {
    let dir = tempfile::tempdir().unwrap();
    let (_sb, topo_path, topo) = app_sandbox(dir.path(), "write_block_timeout: 2s").await;
    let arg = topo_path.to_str().unwrap().to_string();
    let mut my = db::mysql(topo.shard("mysql-0").unwrap(), Some("app")).await;
    let pg = db::pg(topo.shard("pg-0").unwrap(), "app").await;
    let ddl: [(&str, &str, &str); 3] = [
        // On MariaDB a table created and filled.
        (
            "mysql-0",
            "CREATE TABLE app.created (id INT PRIMARY KEY); INSERT INTO app.created VALUES (1), (2)",
            "table app.created was created",
        ),
        // On PostgreSQL a column added and filled.
        (
            "pg-0",
            "ALTER TABLE t ADD COLUMN c int NOT NULL DEFAULT 7; UPDATE t SET c = 42",
            "the columns of app.public.t changed (from id integer, v integer to id integer, v integer, c integer)",
        ),
        // On MariaDB a table made system-versioned: its system time is
        // not among the columns the server lists, so the dump would read
        // its current rows only and the restore give them new times.
        (
            "mysql-0",
            "ALTER TABLE app.created ADD SYSTEM VERSIONING",
            "the columns of app.created changed (from id int(11) to (system time) WITH SYSTEM VERSIONING, id int(11))",
        ),
    ];
    for (shard, sql, change) in ddl {
        let (child, stderr) = backup_until(
            &["-t", &arg, "--test-pause-before-cut", "3s"],
            "before the cut",
        )
        .await;
        if shard == "mysql-0" {
            my.query_drop(sql).await.unwrap();
        } else {
            pg.batch_execute(sql).await.unwrap();
        }
        let out = child.wait_with_output().await.unwrap();
        let stderr = stderr.await.unwrap();
        assert_eq!(out.status.code(), Some(1), "{shard}: {stderr}");
        assert!(
            stderr.contains(&format!(
                "shard {shard}: {change} between the catalog read before the cut and the cut"
            )),
            "{shard}: {stderr}"
        );
        assert_eq!(listed(&topo_path), 0, "{shard}");
    }
    // The next backup plans from the changed catalog and holds all of it.
    let run = support::shardcut_async(&["backup", "-t", &arg, "--json"]).await;
    assert_eq!(run.code, 0, "{run:?}");
    let id = run.json()["backup_id"].as_str().unwrap().to_string();
    let m = support::manifest(&topo_path, &id);
    let created = m.shards["mysql-0"]
        .table_list
        .iter()
        .find(|t| t.name == "created")
        .expect("app.created in the backup");
    assert_eq!(created.rows, 2);
    assert!(created.system_versioned);
    let t = m.shards["pg-0"]
        .table_list
        .iter()
        .find(|t| t.name == "t")
        .unwrap();
    let columns: Vec<&str> = t.columns.iter().map(|c| c.name.as_str()).collect();
    assert_eq!(columns, ["id", "v", "c"]);
    my.disconnect().await.unwrap();
}

/// A MariaDB table versioned by transaction id (its system time is
/// `BIGINT UNSIGNED`, entries of the server's own transaction registry)
/// fails the backup by name, pointing at `exclude_tables`; with it
/// excluded the rest backs up, a sequence and the table taking its keys
/// from it included. With the sequence excluded too, the backup fails
/// naming the table and the sequence its `DEFAULT` takes from (its restore
/// failed creating the table). (Tables versioned by timestamp are backed
/// up with their history.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_table_versioned_by_transaction_id_fails_the_backup_by_name_unless_excluded() {
    let sb = PrivateSandbox::up(1, 0, "ready");
    let dir = tempfile::tempdir().unwrap();
    let topo_path = support::topology_variant(&sb.topology(), dir.path(), &[]);
    let topo = db::topology(&topo_path);
    db::setup_all(&topo, MYSQL_APP, "app", PG_APP).await;
    let mut c = db::mysql(topo.shard("mysql-0").unwrap(), None).await;
    c.query_drop(
        "CREATE TABLE app.h (id INT PRIMARY KEY, v INT, \
           s BIGINT UNSIGNED GENERATED ALWAYS AS ROW START INVISIBLE, \
           e BIGINT UNSIGNED GENERATED ALWAYS AS ROW END INVISIBLE, \
           PERIOD FOR SYSTEM_TIME (s, e)) ENGINE=InnoDB WITH SYSTEM VERSIONING; \
         INSERT INTO app.h VALUES (1, 1); UPDATE app.h SET v = 2; \
         CREATE SEQUENCE app.s START WITH 100; \
         CREATE TABLE app.u (id INT PRIMARY KEY DEFAULT NEXTVAL(app.s), v INT); \
         INSERT INTO app.u (v) VALUES (1)",
    )
    .await
    .unwrap();
    let arg = topo_path.to_str().unwrap().to_string();
    let yaml = std::fs::read_to_string(&topo_path).unwrap();
    let run = support::shardcut_async(&["backup", "-t", &arg]).await;
    assert_eq!(run.code, 1, "{run:?}");
    assert!(
        run.stderr
            .contains("table app.h is system-versioned by transaction id")
            && run.stderr.contains("exclude_tables"),
        "{run:?}"
    );
    assert_eq!(listed(&topo_path), 0);

    let excluding = |list: &str| {
        let mut excluded = String::new();
        for line in yaml.lines() {
            excluded.push_str(line);
            excluded.push('\n');
            if line.trim_start().starts_with("password_file:") {
                excluded.push_str(&format!("    exclude_tables: [{list}]\n"));
            }
        }
        assert!(excluded.contains("exclude_tables"), "{yaml}");
        std::fs::write(&topo_path, excluded).unwrap();
    };
    // A sequence left out while a selected table takes its DEFAULT from
    // it: no restore could create the table, so the backup fails by name.
    excluding("app.h, app.s");
    let run = support::shardcut_async(&["backup", "-t", &arg]).await;
    assert_eq!(run.code, 1, "{run:?}");
    assert!(
        run.stderr.contains(
            "table app.u: column id takes its DEFAULT from sequence app.s, which this backup leaves out"
        ),
        "{run:?}"
    );
    assert_eq!(listed(&topo_path), 0);
    excluding("app.h");
    let run = support::shardcut_async(&["backup", "-t", &arg, "--json"]).await;
    assert_eq!(run.code, 0, "{run:?}");
    let id = run.json()["backup_id"].as_str().unwrap().to_string();
    let m = support::manifest(&topo_path, &id);
    let names: Vec<String> = m.shards["mysql-0"]
        .table_list
        .iter()
        .map(|t| t.qualified())
        .collect();
    assert_eq!(names, ["app.t", "app.u"]);
    c.disconnect().await.unwrap();
}

/// An object a backup keeps that needs a table, view or sequence
/// `exclude_tables` leaves out fails the backup, naming both: pg_dump (and
/// the MariaDB schema pass) kept a view reading the table and a column's
/// `DEFAULT` taking from the sequence, so the backup was called complete
/// and its restore failed ("relation \"public.hidden\" does not exist",
/// "Table 'app.hidden' doesn't exist"). So do a PostgreSQL partition left
/// out of a kept partitioned table and a MariaDB foreign key to a table
/// left out. With what needs them left out too, the backup restores whole
/// (Q = 1): the trigger of a MariaDB table left out goes with it, and
/// neither a PostgreSQL sequence left out nor the identity sequence of a
/// table left out keeps its state (each failed the restore).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_object_kept_that_needs_a_table_left_out_fails_the_backup_by_name() {
    let sb = PrivateSandbox::up(1, 1, "ready");
    let dir = tempfile::tempdir().unwrap();
    let topo_path = support::topology_variant(&sb.topology(), dir.path(), &[]);
    let topo = db::topology(&topo_path);
    let mysql_setup = [
        MYSQL_APP,
        &[
            "CREATE TABLE app.hidden (id INT PRIMARY KEY)",
            "CREATE VIEW app.v AS SELECT t.id FROM app.t JOIN app.hidden USING (id)",
            "CREATE TRIGGER app.hidden_bi BEFORE INSERT ON app.hidden FOR EACH ROW SET NEW.id = NEW.id",
            "CREATE TABLE app.ref (id INT PRIMARY KEY, FOREIGN KEY (id) REFERENCES app.hidden (id))",
        ],
    ]
    .concat();
    let pg_setup = format!(
        "{PG_APP} CREATE TABLE hidden (id int PRIMARY KEY); \
         CREATE VIEW v AS SELECT t.id FROM t JOIN hidden USING (id); \
         CREATE SEQUENCE s START 500; CREATE TABLE d (id bigint PRIMARY KEY DEFAULT nextval('s')); \
         INSERT INTO d DEFAULT VALUES; CREATE SEQUENCE lone; \
         CREATE TABLE gone (id int GENERATED ALWAYS AS IDENTITY PRIMARY KEY); \
         INSERT INTO gone DEFAULT VALUES; \
         CREATE TABLE d2 (id bigint PRIMARY KEY DEFAULT nextval('gone_id_seq')); \
         CREATE TABLE parted (id int, k int) PARTITION BY LIST (k); \
         CREATE TABLE parted_1 PARTITION OF parted FOR VALUES IN (1); \
         INSERT INTO parted VALUES (1, 1);"
    );
    db::setup_all(&topo, &mysql_setup, "app", &pg_setup).await;
    let arg = topo_path.to_str().unwrap().to_string();
    let yaml = std::fs::read_to_string(&topo_path).unwrap();
    // Each shard's exclude_tables after its password_file line.
    let excluding = |mysql: &str, pg: &str| {
        let mut text = String::new();
        let mut list = "";
        for line in yaml.lines() {
            text.push_str(line);
            text.push('\n');
            if let Some(name) = line.trim_start().strip_prefix("- name:") {
                list = if name.contains("mysql") { mysql } else { pg };
            }
            if line.trim_start().starts_with("password_file:") && !list.is_empty() {
                text.push_str(&format!("    exclude_tables: [{list}]\n"));
            }
        }
        std::fs::write(&topo_path, text).unwrap();
    };
    let fails_with = |what: &'static str| {
        let arg = arg.clone();
        async move {
            let run = support::shardcut_async(&["backup", "-t", &arg]).await;
            assert_eq!(run.code, 1, "{run:?}");
            assert!(run.stderr.contains(what), "{what}: {run:?}");
        }
    };
    excluding("", "app.hidden");
    fails_with(
        "database app: view public.v needs app.public.hidden, which the shard's exclude_tables leaves out",
    )
    .await;
    excluding("", "app.hidden, app.v, app.s");
    fails_with(
        "database app: the DEFAULT of column id of table public.d needs app.public.s, which the shard's exclude_tables leaves out",
    )
    .await;
    excluding("", "app.hidden, app.v, app.parted_1");
    fails_with(
        "database app: partition public.parted_1 is left out by the shard's exclude_tables while public.parted is kept",
    )
    .await;
    // An identity column's sequence goes with its table, named or not.
    excluding("", "app.hidden, app.v, app.gone");
    fails_with(
        "database app: the DEFAULT of column id of table public.d2 needs app.public.gone_id_seq, which the shard's exclude_tables leaves out",
    )
    .await;
    excluding("app.hidden", "app.hidden, app.v");
    fails_with(
        "table app.ref has a foreign key to app.hidden, which the shard's exclude_tables leaves out",
    )
    .await;
    excluding("app.hidden, app.ref", "app.hidden, app.v");
    fails_with(
        "view app.v reads app.hidden, which the shard's exclude_tables leaves out, so no restore could create the view",
    )
    .await;
    assert_eq!(listed(&topo_path), 0);

    // A sequence nothing kept needs may be left out, and a table with an
    // identity column: their states are not kept either (the restore's
    // setval of each failed). The trigger of a table left out goes with
    // it (its restore failed creating it).
    // A serial column's sequence named while its table is kept stays, as
    // pg_dump keeps it (it was refused as needed by the table's default).
    excluding(
        "app.hidden, app.ref, app.v",
        "app.hidden, app.v, app.lone, app.gone, app.d2, app.t_id_seq",
    );
    let run = support::shardcut_async(&["backup", "-t", &arg, "--json"]).await;
    assert_eq!(run.code, 0, "{run:?}");
    let target = PrivateSandbox::up(1, 1, "ready");
    let tgt = target.topology();
    let run = support::shardcut_async(&[
        "restore",
        "-t",
        &arg,
        "--target",
        tgt.to_str().unwrap(),
        "--json",
    ])
    .await;
    assert_eq!(run.code, 0, "{run:?}");
    assert_eq!(run.json()["quality"]["score"], 1.0, "{run:?}");
    // The serial sequence named in exclude_tables kept its state.
    let state = "SELECT last_value::text || ',' || is_called::text FROM t_id_seq";
    let at = |shard: &topology::Shard| {
        let shard = shard.clone();
        async move {
            let row = db::pg(&shard, "app").await.query_one(state, &[]).await;
            row.unwrap().get::<_, String>(0)
        }
    };
    let restored = db::topology(&tgt);
    let source = at(&topo.shards[1]).await;
    assert_eq!(source, "3,true");
    assert_eq!(at(&restored.shards[1]).await, source);
}

/// PostgreSQL tables truncated or rewritten after the cut, before the
/// dump reads them: `TRUNCATE` and a rewriting `ALTER TABLE` are not
/// MVCC-safe, and the snapshot the cut exported then sees the table empty,
/// without an error, so the backup was called complete without its rows.
/// Each worker now compares the storage of the tables it read, as of the
/// snapshot, with their storage now (locked by its reads): the backup
/// fails naming both tables, one a partition of a partitioned table, and
/// lists nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_tables_truncated_after_the_cut_fail_the_backup_by_name() {
    let sb = PrivateSandbox::up(0, 1, "ready");
    let dir = tempfile::tempdir().unwrap();
    // One worker reads every table, so one error names them all.
    let topo_path = support::topology_variant(
        &sb.topology(),
        dir.path(),
        &[("parallelism: 4", "parallelism: 1")],
    );
    let topo = db::topology(&topo_path);
    assert_eq!(topo.shards[0].parallelism, 1);
    let shard = topo.shard("pg-0").unwrap();
    db::pg(shard, "postgres")
        .await
        .batch_execute("CREATE DATABASE app")
        .await
        .unwrap();
    let pg = db::pg(shard, "app").await;
    pg.batch_execute(
        "CREATE TABLE t (id int PRIMARY KEY, v int); \
         INSERT INTO t SELECT g, g FROM generate_series(1, 50) g; \
         CREATE TABLE parted (id int, v int) PARTITION BY RANGE (id); \
         CREATE TABLE parted_low PARTITION OF parted FOR VALUES FROM (0) TO (100); \
         CREATE TABLE parted_high PARTITION OF parted FOR VALUES FROM (100) TO (200); \
         INSERT INTO parted SELECT g, g FROM generate_series(1, 199) g; \
         CREATE TABLE kept (id int PRIMARY KEY); INSERT INTO kept VALUES (1)",
    )
    .await
    .unwrap();
    let arg = topo_path.to_str().unwrap().to_string();
    let (child, stderr) =
        backup_until(&["-t", &arg, "--test-pause-before-dump", "3s"], "pausing").await;
    pg.batch_execute("TRUNCATE t; TRUNCATE parted_high")
        .await
        .unwrap();
    let out = child.wait_with_output().await.unwrap();
    let stderr = stderr.await.unwrap();
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains(
            "table(s) public.parted_high, public.t of database app were truncated or rewritten"
        ),
        "{stderr}"
    );
    assert_eq!(listed(&topo_path), 0);
    // Nothing changed since: the next backup holds what the tables hold.
    let run = support::shardcut_async(&["backup", "-t", &arg, "--json"]).await;
    assert_eq!(run.code, 0, "{run:?}");
}

/// A table dropped after the cut, among small tables whose queries go
/// out together: the batch holding it fails, and with it the backup,
/// named and discarded, never a backup without that table.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_table_dropped_after_the_cut_fails_the_backup_by_name() {
    let sb = PrivateSandbox::up(1, 0, "ready");
    let topo_path = sb.topology();
    let topo = db::topology(&topo_path);
    let shard = topo.shard("mysql-0").unwrap();
    let mut c = db::mysql(shard, None).await;
    c.query_drop("CREATE DATABASE many").await.unwrap();
    for i in 0..40 {
        c.query_drop(format!(
            "CREATE TABLE many.t{i:02} (id int PRIMARY KEY); INSERT INTO many.t{i:02} VALUES ({i})"
        ))
        .await
        .unwrap();
    }
    let arg = topo_path.to_str().unwrap().to_string();
    let (child, stderr) =
        backup_until(&["-t", &arg, "--test-pause-before-dump", "3s"], "pausing").await;
    c.query_drop("DROP TABLE many.t20").await.unwrap();
    let out = child.wait_with_output().await.unwrap();
    let stderr = stderr.await.unwrap();
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    eprintln!("a table dropped after the cut, shardcut said:\n{stderr}");
    assert!(stderr.contains("failed and was discarded"), "{stderr}");
    // Whichever read reaches it first, the schema's (32 statements to a
    // round trip) or the data's (32 queries sent together), names it.
    assert!(
        stderr.contains("SHOW CREATE TABLE `many`.`t20` failed")
            || stderr.contains("reading many.t20 failed"),
        "{stderr}"
    );
    assert!(stderr.contains("doesn't exist"), "{stderr}");
    assert_eq!(listed(&topo_path), 0);
    assert!(
        db::repository(&topo).list("backups/").unwrap().is_empty(),
        "partial objects removed"
    );
    c.disconnect().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_stopped_mid_backup_fails_clearly_and_next_backup_succeeds() {
    let sb = PrivateSandbox::up(1, 1, "ready");
    let dir = tempfile::tempdir().unwrap();
    let topo_path = support::topology_variant(&sb.topology(), dir.path(), &[]);
    let topo = db::topology(&topo_path);
    db::setup_all(&topo, MYSQL_APP, "app", PG_APP).await;
    let arg = topo_path.to_str().unwrap().to_string();

    let (child, stderr) =
        backup_until(&["-t", &arg, "--test-pause-before-dump", "3s"], "pausing").await;
    sb.stop("mysql-0");
    let out = child.wait_with_output().await.unwrap();
    let stderr = stderr.await.unwrap();
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    eprintln!("server stopped mid-backup, shardcut said:\n{stderr}");
    assert!(stderr.contains("failed and was discarded"), "{stderr}");
    assert!(stderr.contains("shard mysql-0"), "{stderr}");
    assert_eq!(listed(&topo_path), 0);
    assert!(
        db::repository(&topo).list("backups/").unwrap().is_empty(),
        "partial objects removed"
    );

    sb.start("mysql-0");
    let run = support::shardcut_async(&["backup", "-t", &arg]).await;
    assert_eq!(run.code, 0, "{run:?}");
    assert_eq!(listed(&topo_path), 1);
}

/// Updates row `id` in the open transaction of `c`, then commits if that
/// worked (an open transaction would block any cut) or rolls back.
async fn update_then_end(c: tokio_postgres::Client, id: i32) -> bool {
    let ok = c
        .batch_execute(&format!("UPDATE t SET v = v + 1 WHERE id = {id}"))
        .await
        .is_ok();
    c.batch_execute(if ok { "COMMIT" } else { "ROLLBACK" })
        .await
        .unwrap();
    ok
}

/// Two writers on pg-0 of `topo` holding a row each, each then waiting for
/// the other's row: deadlocked until their `deadlock_timeout` (`jam`) has
/// passed, when the server ends one. Returns once the jam is past the
/// settling threshold (50 ms); each task tells whether its writer won.
async fn deadlock_pg_writers(
    topo: &Topology,
    jam: Duration,
) -> (tokio::task::JoinHandle<bool>, tokio::task::JoinHandle<bool>) {
    let pg0 = topo.shard("pg-0").unwrap();
    let (a, b) = (db::pg(pg0, "app").await, db::pg(pg0, "app").await);
    for (c, id) in [(&a, 1), (&b, 2)] {
        c.batch_execute(&format!(
            "SET deadlock_timeout = '{}ms'; BEGIN; UPDATE t SET v = v + 1 WHERE id = {id}",
            jam.as_millis()
        ))
        .await
        .unwrap();
    }
    // a waits for b's row, then b for a's.
    let a_waits = tokio::spawn(update_then_end(a, 2));
    tokio::time::sleep(Duration::from_millis(100)).await;
    let b_waits = tokio::spawn(update_then_end(b, 1));
    tokio::time::sleep(Duration::from_millis(200)).await;
    (a_waits, b_waits)
}

/// `shardcut -v backup --json` of `topo_path`, which must succeed at its
/// first cut attempt.
async fn backup_at_the_first_attempt(topo_path: &Path) -> support::Run {
    let run =
        support::shardcut_async(&["-v", "backup", "-t", topo_path.to_str().unwrap(), "--json"])
            .await;
    assert_eq!(run.code, 0, "{run:?}");
    assert_eq!(run.json()["cut"]["attempts"].as_u64(), Some(1), "{run:?}");
    run
}

/// Two writers on pg-0 deadlock on each other's rows, and the server breaks
/// the deadlock only after their `deadlock_timeout` (4 s here). A cut
/// that tried to lock meanwhile would queue behind them, holding up pg-0's
/// other writers and mysql-0's (blocked once pg-0 is) until then; the cut
/// instead waits, blocking nothing, until the jam is over.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cut_waits_out_deadlocked_writers_without_blocking() {
    const JAM: Duration = Duration::from_millis(4000);
    let sb = PrivateSandbox::up(1, 1, "ready");
    let topo_path = sb.topology();
    let topo = db::topology(&topo_path);
    db::setup_all(&topo, MYSQL_APP, "app", PG_APP).await;
    let (a_waits, b_waits) = deadlock_pg_writers(&topo, JAM).await;

    let run = backup_at_the_first_attempt(&topo_path).await;
    let cut = &run.json()["cut"];
    // Queued behind the jam the block would have lasted until it ended.
    let blocked = cut["write_block_ms"].as_u64().unwrap();
    assert!(
        blocked < JAM.as_millis() as u64 / 4,
        "the cut blocked writers for {blocked} ms during a {} ms jam",
        JAM.as_millis()
    );
    assert!(
        run.stderr.contains("pg-0: waited")
            && run
                .stderr
                .contains("for its writers to stop waiting on each other's locks")
            && run.stderr.contains("cut: pg-0 settled for"),
        "{run:?}"
    );
    // The server broke the deadlock: exactly one writer lost.
    let (a_ok, b_ok) = (a_waits.await.unwrap(), b_waits.await.unwrap());
    assert!(a_ok != b_ok, "one victim: a ok {a_ok}, b ok {b_ok}");
}

/// What a shard holds from settling to its block (MariaDB's backup stages,
/// PostgreSQL's vacuum guard) is leased for as long as the slowest shard
/// may settle and block, plus the block's lease. MariaDB's stages were
/// leased for the block's lease alone: with a 3 s lease, pg-0 waiting out
/// a 4.5 s jam while settling outlasted it, the lease killed mysql-0's
/// staged session, and the cut failed on it ("blocking commits").
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backup_stages_outlast_another_shard_settling_past_the_block_lease() {
    let dir = tempfile::tempdir().unwrap();
    let (_sb, topo_path, topo) = app_sandbox(dir.path(), SHORT_LEASE).await;
    let (a_waits, b_waits) = deadlock_pg_writers(&topo, Duration::from_millis(4500)).await;

    let run = backup_at_the_first_attempt(&topo_path).await;
    assert!(
        run.stderr.contains("cut: pg-0 settled for") && !run.stderr.contains("expired; ending it"),
        "{run:?}"
    );
    assert_eq!(listed(&topo_path), 1);
    let (a_ok, b_ok) = (a_waits.await.unwrap(), b_waits.await.unwrap());
    assert!(a_ok != b_ok, "one victim: a ok {a_ok}, b ok {b_ok}");
}

/// An autovacuum holds `SHARE UPDATE EXCLUSIVE` on its table for its whole
/// run, which every lock that blocks writers conflicts with; the cut's
/// short lock tries used to fail on it attempt after attempt. Settling now
/// waits for that lock in a mode writers do not conflict with, long enough
/// for the server to cancel the autovacuum (`deadlock_timeout`), and the
/// cut succeeds at its first attempt.
#[tokio::test]
async fn cut_gets_a_running_autovacuum_out_of_the_way() {
    let sb = PrivateSandbox::up(0, 1, "ready");
    let topo_path = sb.topology();
    let topo = db::topology(&topo_path);
    // A table whose autovacuum crawls: it sleeps 100 ms after every page.
    db::setup_all(
        &topo,
        &[],
        "app",
        "CREATE TABLE churn (id int PRIMARY KEY, v int) WITH (autovacuum_vacuum_cost_delay = 100, \
         autovacuum_vacuum_cost_limit = 1, autovacuum_vacuum_threshold = 0, \
         autovacuum_vacuum_scale_factor = 0, autovacuum_analyze_threshold = 0, \
         autovacuum_analyze_scale_factor = 0); \
         INSERT INTO churn SELECT g, 0 FROM generate_series(1, 50000) g; UPDATE churn SET v = 1;",
    )
    .await;
    let pg0 = topo.shard("pg-0").unwrap();
    let c = db::pg(pg0, "app").await;
    for sql in [
        "ALTER SYSTEM SET autovacuum_naptime = 1",
        "SELECT pg_reload_conf()",
    ] {
        c.batch_execute(sql).await.unwrap();
    }
    let mut worker = None;
    for _ in 0..300 {
        worker = c
            .query_opt(
                "SELECT pid FROM pg_stat_activity WHERE backend_type = 'autovacuum worker' \
                 AND query LIKE 'autovacuum:%churn%'",
                &[],
            )
            .await
            .unwrap()
            .map(|r| r.get::<_, i32>(0));
        if worker.is_some() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let worker = worker.expect("autovacuum started on churn within 30 s");

    let run =
        support::shardcut_async(&["-v", "backup", "-t", topo_path.to_str().unwrap(), "--json"])
            .await;
    assert_eq!(run.code, 0, "{run:?}");
    assert_eq!(run.json()["cut"]["attempts"].as_u64(), Some(1), "{run:?}");
    assert!(
        run.stderr.contains(&format!(
            "pg-0: autovacuum worker pid {worker} (`autovacuum:"
        )) && run.stderr.contains("holds app.churn")
            && run
                .stderr
                .contains("pg-0: vacuum out of the way on app after"),
        "{run:?}"
    );
    // Cancelled by the server, not finished: at 100 ms a page it had minutes to go.
    let still = c
        .query_opt(
            "SELECT 1 FROM pg_stat_activity WHERE pid = $1 AND query LIKE 'autovacuum:%churn%'",
            &[&worker],
        )
        .await
        .unwrap();
    assert!(still.is_none(), "autovacuum {worker} still on churn");
}

/// A small tmpfs mounted for one test, unmounted when dropped.
struct SmallDisk {
    dir: std::path::PathBuf,
}

impl SmallDisk {
    /// None where this process may not mount (not root): nothing to test.
    fn mount(dir: &std::path::Path, bytes: u64) -> Option<SmallDisk> {
        let uid = std::process::Command::new("id").arg("-u").output().unwrap();
        if String::from_utf8_lossy(&uid.stdout).trim() != "0" {
            eprintln!("not root: cannot mount a small file system, nothing tested");
            return None;
        }
        std::fs::create_dir_all(dir).unwrap();
        let out = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={}k", bytes / 1024)])
            .arg("tmpfs")
            .arg(dir)
            .output()
            .unwrap();
        assert!(out.status.success(), "mount: {out:?}");
        Some(SmallDisk {
            dir: dir.to_path_buf(),
        })
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        drop(std::process::Command::new("umount").arg(&self.dir).status());
    }
}

/// Bytes of every file below `dir`.
fn bytes_below(dir: &std::path::Path) -> u64 {
    let mut total = 0;
    for entry in std::fs::read_dir(dir).unwrap() {
        let entry = entry.unwrap();
        let meta = entry.metadata().unwrap();
        total += if meta.is_dir() {
            bytes_below(&entry.path())
        } else {
            meta.len()
        };
    }
    total
}

#[test]
fn full_repository_disk_fails_the_backup_clearly_and_keeps_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let topo_path = support::topology_variant(&support::sandbox_topology(), dir.path(), &[]);
    let topo_arg = topo_path.to_str().unwrap();
    let run = shardcut(&["backup", "-t", topo_arg]);
    assert_eq!(run.code, 0, "{run:?}");
    let needed = bytes_below(&dir.path().join("repo"));

    // The same backup into a repository on a disk with room for half of it.
    let small = dir.path().join("small");
    let Some(_disk) = SmallDisk::mount(&small, (needed / 2).max(16 << 10)) else {
        return;
    };
    let repo = small.join("repo");
    let text = std::fs::read_to_string(&topo_path).unwrap();
    let old_repo = format!("repository: {}", dir.path().join("repo").display());
    assert!(text.contains(&old_repo));
    let small_topo = dir.path().join("small.yaml");
    std::fs::write(
        &small_topo,
        text.replace(&old_repo, &format!("repository: {}", repo.display())),
    )
    .unwrap();
    let run = shardcut(&["backup", "-t", small_topo.to_str().unwrap()]);
    eprintln!(
        "{needed} bytes into a disk of half that, shardcut said:\n{}",
        run.stderr
    );
    assert_eq!(run.code, 1, "{run:?}");
    assert!(run.stderr.contains("No space left on device"), "{run:?}");
    assert!(run.stderr.contains("failed and was discarded"), "{run:?}");
    assert!(
        run.stderr.contains(&repo.display().to_string()),
        "names the repository: {run:?}"
    );
    assert_eq!(
        run.stderr.trim_end().lines().count(),
        1,
        "one line: {run:?}"
    );
    // Nothing of the failed backup is left, the lock is released, and
    // nothing lists it.
    assert_eq!(bytes_below(&repo.join("backups")), 0);
    assert!(std::fs::read_dir(repo.join("locks"))
        .unwrap()
        .next()
        .is_none());
    assert_eq!(listed(&small_topo), 0);
}
