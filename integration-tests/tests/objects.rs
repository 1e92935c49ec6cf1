//! Repositories in an S3-compatible object store (the SeaweedFS server
//! `scripts/s3` starts on loopback, which checks request signatures) and
//! encrypted repositories: backups under load, restores, drills and
//! point-in-time recovery from a bucket; what a bucket holds (no row in
//! clear); tampered objects, wrong keys and wrong credentials.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

use mysql_async::prelude::Queryable;
use shard_agent::repo::{RepoError, Repository};
use topology::{Engine, Topology};

use crate::consistency::{bank_state, workload, MYSQL_SETUP, PG_SETUP};
use crate::pitr::{checksums, ledger_cluster, on_both, run_ok_async};
use crate::support::{self, db, ObjectStore, PrivateSandbox};

const BUCKET: &str = "east";

/// Every database on every server of `topo`, to show that nothing ran there.
async fn databases(topo: &Topology) -> Vec<String> {
    let mut out = Vec::new();
    for s in &topo.shards {
        match s.engine {
            Engine::Mysql => {
                let mut c = db::mysql(s, None).await;
                let names: Vec<String> = c.query("SHOW DATABASES").await.unwrap();
                out.extend(names.into_iter().map(|n| format!("{}:{n}", s.name)));
            }
            Engine::Postgres => {
                let c = db::pg(s, "postgres").await;
                for row in c
                    .query("SELECT datname FROM pg_database ORDER BY 1", &[])
                    .await
                    .unwrap()
                {
                    out.push(format!("{}:{}", s.name, row.get::<_, String>(0)));
                }
            }
        }
    }
    out
}

/// The last line a failed command printed on stderr, which must be its only one.
fn one_line_error(run: &support::Run) -> String {
    let lines: Vec<&str> = run
        .stderr
        .lines()
        .filter(|l| !l.trim().is_empty())
        .collect();
    assert_eq!(lines.len(), 1, "one line of error: {run:?}");
    lines[0].to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_encrypted_bucket_holds_a_consistent_backup_taken_under_load_and_restores_it_with_q_1() {
    let store = ObjectStore::get();
    let sb = PrivateSandbox::up(1, 1, "ready");
    let dir = tempfile::tempdir().unwrap();
    let topo_path = support::topology_variant(&sb.topology(), dir.path(), &[]);
    let key = support::keygen(dir.path(), "repo.key");
    let prefix = support::unique_prefix("load");
    support::move_repository(
        &topo_path,
        &store.repository_yaml(
            BUCKET,
            &prefix,
            &format!("  encryption:\n    key_file: {}\n", key.display()),
        ),
    );
    let topo = db::topology(&topo_path);
    let arg = topo_path.to_str().unwrap();
    // A marker in a row of each engine: it must appear in no stored object.
    let marker = format!("marker-{prefix}-in-a-row");
    let mut my_setup: Vec<String> = MYSQL_SETUP.iter().map(|s| s.to_string()).collect();
    my_setup.push("CREATE TABLE bank.notes (id INT PRIMARY KEY, note TEXT)".into());
    my_setup.push(format!("INSERT INTO bank.notes VALUES (1, '{marker}')"));
    let my_refs: Vec<&str> = my_setup.iter().map(String::as_str).collect();
    let pg_setup = format!(
        "{PG_SETUP} CREATE TABLE notes (id int PRIMARY KEY, note text); INSERT INTO notes VALUES (1, '{marker}');"
    );
    db::setup_all(&topo, &my_refs, "bank", &pg_setup).await;

    // The consistency test's transfers between the shards, during the backup.
    let next_id = Arc::new(AtomicU64::new(1));
    let stop = Arc::new(AtomicBool::new(false));
    let workers: Vec<_> = [5u64, 9]
        .into_iter()
        .map(|seed| tokio::spawn(workload(topo.clone(), seed, next_id.clone(), stop.clone())))
        .collect();
    tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    let id = support::backup_id(arg).await;
    stop.store(true, Ordering::Relaxed);
    for w in workers {
        w.await.unwrap();
    }
    assert!(
        next_id.load(Ordering::Relaxed) > 20,
        "the load made too few transfers"
    );

    // The bucket: objects, every one sealed, none holding the marker.
    let raw = store.repository(BUCKET, &prefix);
    let keys = raw.list("").unwrap();
    assert!(
        keys.iter().any(|k| k.ends_with("/manifest.json"))
            && keys.iter().any(|k| k.ends_with(".zst")),
        "{keys:?}"
    );
    for k in &keys {
        let bytes = raw.get(k).unwrap();
        assert!(bytes.starts_with(b"SHCTSEAL"), "{k} is not sealed");
        assert!(
            !bytes.windows(marker.len()).any(|w| w == marker.as_bytes()),
            "{k} holds the marker in clear"
        );
    }

    // Restored from the bucket into a second cluster: Q = 1, and every
    // credit has its debit there.
    let target = PrivateSandbox::up(1, 1, "ready");
    let tgt = target.topology();
    let run = run_ok_async(&[
        "restore",
        "-t",
        arg,
        "--backup",
        &id,
        "--target",
        tgt.to_str().unwrap(),
        "--json",
    ])
    .await;
    assert_eq!(run.json()["quality"]["score"], 1.0, "{run:?}");
    let restored = db::topology(&tgt);
    let (debits, credits) = bank_state(&restored).await;
    assert!(!debits.is_empty(), "the backup holds transfers");
    assert_eq!(
        credits.difference(&debits).count(),
        0,
        "credits without their debit"
    );
    let mut c = db::mysql(&restored.shards[0], Some("bank")).await;
    let note: Option<String> = c.query_first("SELECT note FROM notes").await.unwrap();
    assert_eq!(note.as_deref(), Some(marker.as_str()));

    // A drill of one shard from the bucket.
    let run = run_ok_async(&[
        "drill",
        "-t",
        arg,
        "--shard",
        "pg-0",
        "--target",
        tgt.to_str().unwrap(),
        "--json",
    ])
    .await;
    assert_eq!(run.json()["quality"]["score"], 1.0, "{run:?}");
    // And `verify` reads every object back through the key.
    let run = run_ok_async(&["verify", "-t", arg, "--backup", &id]).await;
    assert!(run.stdout.contains("OK"), "{run:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tampered_objects_and_wrong_keys_stop_a_restore_before_any_sql() {
    let store = ObjectStore::get();
    let dir = tempfile::tempdir().unwrap();
    let src = support::topology_variant(&support::sandbox_topology(), dir.path(), &[]);
    let key = support::keygen(dir.path(), "repo.key");
    let prefix = support::unique_prefix("tamper");
    let with_key = |file: &std::path::Path| {
        store.repository_yaml(
            BUCKET,
            &prefix,
            &format!("  encryption:\n    key_file: {}\n", file.display()),
        )
    };
    support::move_repository(&src, &with_key(&key));
    let arg = src.to_str().unwrap();
    let id = support::backup_id(arg).await;

    let target = PrivateSandbox::up(1, 1, "ready");
    let tgt = target.topology();
    let tgt_arg = tgt.to_str().unwrap();
    let restored = db::topology(&tgt);
    let before = databases(&restored).await;
    let restore = || async {
        support::shardcut_async(&[
            "restore", "-t", arg, "--backup", &id, "--target", tgt_arg, "--shard", "mysql-0",
        ])
        .await
    };

    let raw = store.repository(BUCKET, &prefix);
    let manifest = shard_agent::manifest::keys::manifest(&id);
    let schema = raw
        .list(&format!("backups/{id}/shards/mysql-0/"))
        .unwrap()
        .into_iter()
        .find(|k| k.ends_with("/shop/schema.json.zst"))
        .expect("a schema object");
    for object in [&manifest, &schema] {
        let good = raw.get(object).unwrap();
        let mut bad = good.clone();
        let at = good.len() / 2;
        bad[at] ^= 0x20;
        raw.put(object, &bad).unwrap();
        let run = restore().await;
        assert_ne!(run.code, 0, "{object}: {run:?}");
        let line = one_line_error(&run);
        assert!(
            line.contains(object.as_str()) && line.contains("fails authentication"),
            "{object}: {line}"
        );
        assert_eq!(databases(&restored).await, before, "SQL ran on the target");
        raw.put(object, &good).unwrap();
    }

    // Another backup's manifest in this one's place is refused the same way.
    let second = support::backup_id(arg).await;
    let other = raw
        .get(&shard_agent::manifest::keys::manifest(&second))
        .unwrap();
    let good = raw.get(&manifest).unwrap();
    raw.put(&manifest, &other).unwrap();
    let run = restore().await;
    assert_ne!(run.code, 0, "{run:?}");
    assert!(
        one_line_error(&run).contains("fails authentication"),
        "{run:?}"
    );
    raw.put(&manifest, &good).unwrap();

    // A wrong key: exit 2, naming the key id the objects need.
    let wrong = support::keygen(dir.path(), "wrong.key");
    support::move_repository(&src, &with_key(&wrong));
    for args in [
        vec!["list", "-t", arg],
        vec![
            "restore", "-t", arg, "--backup", &id, "--target", tgt_arg, "--shard", "mysql-0",
        ],
    ] {
        let run = support::shardcut_async(&args).await;
        assert_eq!(run.code, 2, "{args:?}: {run:?}");
        let line = one_line_error(&run);
        assert!(line.contains("not a configured key"), "{line}");
        let key_text = std::fs::read_to_string(&wrong).unwrap();
        assert!(
            !run.all().contains(key_text.trim()),
            "the key in the output"
        );
    }
    // A backup with the wrong key is refused before it writes anything
    // (it would leave a repository that needs two keys), and `check` says why.
    let objects_before = raw.list("").unwrap();
    let run = support::shardcut_async(&["backup", "-t", arg]).await;
    assert_eq!(run.code, 2, "{run:?}");
    assert!(
        one_line_error(&run).contains("not a configured key"),
        "{run:?}"
    );
    assert_eq!(
        raw.list("").unwrap(),
        objects_before,
        "the refused backup wrote"
    );
    let run = support::shardcut_async(&["check", "-t", arg]).await;
    assert_ne!(run.code, 0, "{run:?}");
    assert!(run.stdout.contains("not a configured key"), "{run:?}");
    // No key at all: exit 2 as well.
    support::move_repository(&src, &store.repository_yaml(BUCKET, &prefix, ""));
    let run = support::shardcut_async(&["list", "-t", arg]).await;
    assert_eq!(run.code, 2, "{run:?}");
    assert!(one_line_error(&run).contains("gives no key"), "{run:?}");
    assert_eq!(databases(&restored).await, before, "SQL ran on the target");

    // With the right key again, the restore works.
    support::move_repository(&src, &with_key(&key));
    let run = restore().await;
    assert_eq!(run.code, 0, "{run:?}");
    assert_ne!(databases(&restored).await, before);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn capture_into_a_bucket_and_restore_until_latest() {
    let store = ObjectStore::get();
    let dir = tempfile::tempdir().unwrap();
    let (_sb, topo_path, topo) = ledger_cluster(dir.path(), "(1, 10), (2, 20)").await;
    let prefix = support::unique_prefix("pitr");
    support::move_repository(&topo_path, &store.repository_yaml(BUCKET, &prefix, ""));
    let arg = topo_path.to_str().unwrap();
    run_ok_async(&["capture", "-t", arg, "--once", "--no-mark"]).await;
    support::backup_id(arg).await;
    on_both(&topo, "INSERT INTO ledger VALUES (3, 30)").await;
    on_both(&topo, "UPDATE ledger SET amount = amount + 1 WHERE id = 1").await;
    on_both(&topo, "DELETE FROM ledger WHERE id = 2").await;
    run_ok_async(&["capture", "-t", arg, "--once"]).await;
    let at_latest = checksums(&topo, &["ledger"]).await;

    let raw = store.repository(BUCKET, &prefix);
    assert!(
        raw.list("")
            .unwrap()
            .iter()
            .any(|k| k.starts_with("capture/")),
        "segments in the bucket"
    );
    let target = PrivateSandbox::up(1, 1, "ready");
    let run = run_ok_async(&[
        "restore",
        "-t",
        arg,
        "--target",
        target.topology().to_str().unwrap(),
        "--until",
        "latest",
        "--json",
    ])
    .await;
    assert_eq!(run.json()["quality"]["score"], 1.0, "{run:?}");
    let restored = db::topology(&target.topology());
    let mut got = checksums(&restored, &["ledger"]).await;
    // Same tables, keyed by the target's shard names (the same here).
    got.retain(|k, _| at_latest.contains_key(k));
    assert_eq!(got, at_latest);
}

#[test]
fn wrong_credentials_fail_in_one_line_and_leave_nothing() {
    let store = ObjectStore::get();
    let dir = tempfile::tempdir().unwrap();
    let src = support::topology_variant(&support::sandbox_topology(), dir.path(), &[]);
    let prefix = support::unique_prefix("denied");
    let wrong = dir.path().join("wrong-secret");
    std::fs::write(&wrong, "not-the-secret-key-0123").unwrap();
    let yaml = store.repository_yaml(BUCKET, &prefix, "").replace(
        &store.secret_key_file.display().to_string(),
        &wrong.display().to_string(),
    );
    support::move_repository(&src, &yaml);
    let arg = src.to_str().unwrap();
    for args in [vec!["backup", "-t", arg], vec!["list", "-t", arg]] {
        let run = support::shardcut(&args);
        assert_eq!(run.code, 1, "{args:?}: {run:?}");
        let line = one_line_error(&run);
        assert!(
            line.contains("access denied") && line.contains(&format!("s3://{BUCKET}/{prefix}")),
            "{line}"
        );
        assert!(!run.all().contains("not-the-secret-key-0123"), "{run:?}");
    }
    let run = support::shardcut(&["check", "-t", arg]);
    assert_ne!(run.code, 0, "{run:?}");
    assert!(run.stdout.contains("access denied"), "{run:?}");
    assert!(
        store
            .repository(BUCKET, &prefix)
            .list("")
            .unwrap()
            .is_empty(),
        "the failed backup left objects"
    );
}

/// A store serving HTTPS under a private CA: with `ca_file` naming that
/// CA a backup goes in and verifies; without it, or with another CA, the
/// store's certificate is refused in one line and nothing is written.
/// Remote agents reach it with `--s3-ca-file`, and fail without it.
#[test]
fn a_bucket_over_https_takes_a_backup_with_its_ca_and_refuses_another_certificate() {
    let tls = support::TlsObjectStore::up();
    let store = &tls.store;
    let ca = store.ca_file.clone().expect("S3_CA_FILE of a --tls store");
    assert!(store.endpoint.starts_with("https://"), "{}", store.endpoint);
    let dir = tempfile::tempdir().unwrap();
    let src = support::topology_variant(&support::sandbox_topology(), dir.path(), &[]);
    let arg = src.to_str().unwrap();
    let prefix = support::unique_prefix("https");
    for (ca_line, what) in [
        (String::new(), "the system's roots"),
        (
            format!(
                "  ca_file: {}\n",
                tls.certs().join("other-ca.pem").display()
            ),
            "another CA",
        ),
    ] {
        support::move_repository(&src, &store.repository_yaml("tls", &prefix, &ca_line));
        let run = support::shardcut(&["backup", "-t", arg]);
        assert_eq!(run.code, 1, "{what}: {run:?}");
        let line = one_line_error(&run);
        assert!(
            line.contains("s3://tls/") && line.contains("certificate"),
            "{what}: {line}"
        );
    }
    assert!(
        store
            .repository("tls", &prefix)
            .list("")
            .unwrap()
            .is_empty(),
        "a refused backup left objects"
    );
    let ca_line = format!("  ca_file: {}\n", ca.display());
    support::move_repository(&src, &store.repository_yaml("tls", &prefix, &ca_line));
    let run = support::shardcut(&["backup", "-t", arg, "--json"]);
    assert_eq!(run.code, 0, "{run:?}");
    let id = run.json()["backup_id"].as_str().unwrap().to_string();
    let run = support::shardcut(&["verify", "--backup", &id, "-t", arg, "--json"]);
    assert_eq!(run.code, 0, "{run:?}");
    let chunks = store
        .repository("tls", &prefix)
        .list(&format!("backups/{id}/"))
        .unwrap();
    assert!(chunks.len() > 2, "the backup's objects: {chunks:?}");

    // Remote agents write their chunks over HTTPS too: with the CA given
    // by `--s3-ca-file`, and not without it.
    use crate::remote::{token, with_agents};
    let secret = token(dir.path(), "token", "a-long-random-agent-token-0123456789");
    let allowed = format!("s3://tls/{prefix}");
    for (n, extra) in [(1, vec![]), (2, vec!["--s3-ca-file", ca.to_str().unwrap()])] {
        let a = bucket_agent(store, &secret, &allowed, &extra);
        let at = dir.path().join(format!("agents-{n}"));
        std::fs::create_dir_all(&at).unwrap();
        let topo = with_agents(&support::sandbox_topology(), &at, &a.addr, &secret);
        support::move_repository(&topo, &store.repository_yaml("tls", &prefix, &ca_line));
        let topo = topo.to_str().unwrap();
        let run = support::shardcut(&["backup", "-t", topo, "--json"]);
        if extra.is_empty() {
            assert_eq!(run.code, 1, "an agent without the CA: {run:?}");
            assert!(run.stderr.contains("certificate"), "{run:?}");
        } else {
            assert_eq!(run.code, 0, "an agent with --s3-ca-file: {run:?}");
            let id = run.json()["backup_id"].as_str().unwrap().to_string();
            let run = support::shardcut(&["verify", "--backup", &id, "-t", topo]);
            assert_eq!(run.code, 0, "{run:?}");
        }
    }
}

#[test]
fn the_bucket_keeps_the_repository_contract() {
    let store = ObjectStore::get();
    let prefix = support::unique_prefix("contract");
    let repo = store.repository(BUCKET, &prefix);
    assert!(matches!(repo.get("a/b"), Err(RepoError::NotFound { .. })));
    repo.put("a/b", b"one").unwrap();
    repo.put("a/c/d", b"two").unwrap();
    repo.put("ab", b"three").unwrap();
    repo.put("a/b%2Fc", b"four").unwrap();
    assert_eq!(repo.get("a/b%2Fc").unwrap(), b"four");
    // The store's size is looked at before the body is read.
    assert_eq!(repo.get_at_most("a/b%2Fc", 4).unwrap(), b"four");
    assert!(matches!(
        repo.get_at_most("a/b%2Fc", 3),
        Err(RepoError::TooLarge {
            size: 4,
            max: 3,
            ..
        })
    ));
    assert_eq!(repo.list("a/").unwrap(), vec!["a/b", "a/b%2Fc", "a/c/d"]);
    assert_eq!(
        repo.list("a").unwrap(),
        vec!["a/b", "a/b%2Fc", "a/c/d", "ab"]
    );
    assert_eq!(repo.list("a/b").unwrap(), vec!["a/b", "a/b%2Fc"]);
    // The lock: a conditional put, refused when the object exists.
    repo.put_if_absent("lock", b"held").unwrap();
    assert!(matches!(
        repo.put_if_absent("lock", b"x"),
        Err(RepoError::AlreadyExists { .. })
    ));
    assert_eq!(repo.get("lock").unwrap(), b"held");
    repo.delete("a/b").unwrap();
    repo.delete("a/b").unwrap();
    assert!(matches!(repo.get("a/b"), Err(RepoError::NotFound { .. })));
    // A file larger than one part goes up in parts and comes back whole.
    let mut file = tempfile::tempfile().unwrap();
    let big: Vec<u8> = (0..20u32 << 20).map(|i| (i % 251) as u8).collect();
    std::io::Write::write_all(&mut file, &big).unwrap();
    repo.put_file("big", &mut file).unwrap();
    assert!(repo.get("big").unwrap() == big, "multipart object differs");
    for k in repo.list("").unwrap() {
        repo.delete(&k).unwrap();
    }
    assert!(repo.list("").unwrap().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_copy_in_a_second_region_resumes_after_a_kill_is_verified_and_drills_with_q_1() {
    let store = ObjectStore::get();
    let dir = tempfile::tempdir().unwrap();
    let src = support::topology_variant(&support::sandbox_topology(), dir.path(), &[]);
    let (east_key, west_key) = (
        support::keygen(dir.path(), "east.key"),
        support::keygen(dir.path(), "west.key"),
    );
    let prefix = support::unique_prefix("copy");
    let west = store.replica_yaml(
        "dr-west",
        "west",
        &prefix,
        &format!("    encryption:\n      key_file: {}\n", west_key.display()),
    );
    let yaml = format!(
        "{}{west}",
        store.repository_yaml(
            BUCKET,
            &prefix,
            &format!("  encryption:\n    key_file: {}\n", east_key.display())
        )
    );
    support::move_repository(&src, &yaml);
    let arg = src.to_str().unwrap();
    // Many small chunks, so that the copy takes long enough to be killed.
    let run = run_ok_async(&["backup", "-t", arg, "--chunk-rows", "40", "--json"]).await;
    let id = run.json()["backup_id"].as_str().unwrap().to_string();
    let status = run_ok_async(&["status", "-t", arg, "--json"]).await;
    assert_eq!(
        status.json()["replicas"][0]["backups_missing"][0],
        id.as_str(),
        "status shows the replica's lag: {status:?}"
    );

    // A copy killed once some objects are on the replica.
    let replica = store.repository("west", &prefix);
    let manifest = shard_agent::manifest::keys::manifest(&id);
    let mut child = tokio::process::Command::new(support::bin("shardcut"))
        .args(["copy", "-t", arg, "--to", "dr-west"])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let before_kill = loop {
        let n = replica.list("backups/").unwrap().len();
        if n >= 20 {
            break n;
        }
        assert!(
            child.try_wait().unwrap().is_none(),
            "the copy ended before the kill"
        );
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    };
    child.kill().await.unwrap();
    let listed = replica.list("backups/").unwrap();
    assert!(
        !listed.contains(&manifest),
        "the copy finished before it was killed ({before_kill} objects seen); the test needs a bigger backup"
    );
    let run = run_ok_async(&["list", "-t", arg, "--repository", "dr-west", "--json"]).await;
    assert!(
        !run.stdout.contains(&id),
        "a half-copied backup is listed: {run:?}"
    );

    // The next copy finishes it: only what is missing moves.
    let run = run_ok_async(&["copy", "-t", arg, "--to", "dr-west", "--json"]).await;
    let j = run.json();
    assert_eq!(j["backups_copied"][0], id.as_str(), "{run:?}");
    let copied = j["objects_copied"].as_u64().unwrap();
    // What the killed copy stored, but its record of whose folder it is.
    let stored = listed.iter().filter(|k| !k.ends_with("/started.json"));
    assert!(
        j["objects_skipped"].as_u64().unwrap() >= stored.count() as u64,
        "{run:?}"
    );
    assert!(
        copied > 0 && copied < replica.list("").unwrap().len() as u64,
        "{run:?}"
    );
    assert_eq!(j["objects_verified"], j["objects_copied"]);
    assert_eq!(
        j["lag"]["backups_missing"].as_array().unwrap().len(),
        0,
        "{run:?}"
    );
    // A second run has nothing to copy.
    let run = run_ok_async(&["copy", "-t", arg, "--to", "dr-west", "--json"]).await;
    assert_eq!(run.json()["bytes_copied"], 0, "{run:?}");
    assert_eq!(run.json()["backups_present"][0], id.as_str(), "{run:?}");

    // The replica is sealed with its own key: the source's does not open it.
    let raw = replica.get(&manifest).unwrap();
    assert!(raw.starts_with(b"SHCTSEAL"));
    let east_only = dir.path().join("east-only.yaml");
    std::fs::copy(&src, &east_only).unwrap();
    support::move_repository(
        &east_only,
        &store.repository_yaml(
            "west",
            &prefix,
            &format!("  encryption:\n    key_file: {}\n", east_key.display()),
        ),
    );
    let run = support::shardcut_async(&["list", "-t", east_only.to_str().unwrap()]).await;
    assert_eq!(run.code, 2, "{run:?}");

    // A drill of one shard from the second region.
    let scratch = PrivateSandbox::up(1, 1, "ready");
    let run = run_ok_async(&[
        "drill",
        "-t",
        arg,
        "--repository",
        "dr-west",
        "--shard",
        "pg-1",
        "--target",
        scratch.topology().to_str().unwrap(),
        "--json",
    ])
    .await;
    assert_eq!(run.json()["quality"]["score"], 1.0, "{run:?}");

    // An object lost on the replica: verify finds it, the next copy puts it back.
    let m = support::manifest(&src, &id);
    let chunk = &db::find_table(&m, "mysql-1", "shop.orders").chunks[0];
    let (object, _) = db::stored_at(&m.shards["mysql-1"], chunk);
    replica.delete(&object).unwrap();
    let lost = &chunk.key;
    let verify_west = [
        "verify",
        "-t",
        arg,
        "--repository",
        "dr-west",
        "--backup",
        &id,
    ];
    let run = support::shardcut_async(&verify_west).await;
    assert_eq!(run.code, 3, "{run:?}");
    assert!(run.stdout.contains(lost.as_str()), "{run:?}");
    let run = run_ok_async(&["copy", "-t", arg, "--to", "dr-west", "--json"]).await;
    assert_eq!(run.json()["objects_copied"], 1, "{run:?}");
    run_ok_async(&verify_west).await;
}

/// A plain-HTTP agent on a port of its own that writes into `store`,
/// below `allowed`, with `extra` options.
fn bucket_agent(
    store: &ObjectStore,
    token_file: &std::path::Path,
    allowed: &str,
    extra: &[&str],
) -> crate::remote::AgentProcess {
    let mut args = vec![
        "--insecure",
        "--s3-endpoint",
        &store.endpoint,
        "--s3-access-key-file",
        store.access_key_file.to_str().unwrap(),
        "--s3-secret-key-file",
        store.secret_key_file.to_str().unwrap(),
    ];
    args.extend_from_slice(extra);
    crate::remote::AgentProcess::start_with(
        "127.0.0.1:0",
        token_file,
        std::path::Path::new(allowed),
        &args,
    )
}

#[test]
fn remote_agents_write_their_chunks_into_an_encrypted_bucket_with_their_own_key() {
    use crate::remote::{token, with_agents};
    let store = ObjectStore::get();
    let dir = tempfile::tempdir().unwrap();
    let key = support::keygen(dir.path(), "repo.key");
    let other = support::keygen(dir.path(), "other.key");
    let prefix = support::unique_prefix("agent");
    let secret = token(dir.path(), "token", "a-long-random-agent-token-0123456789");
    let allowed = format!("s3://{BUCKET}/{prefix}");
    let start = |key_file: &std::path::Path| {
        bucket_agent(
            &store,
            &secret,
            &allowed,
            &["--repository-key-file", key_file.to_str().unwrap()],
        )
    };
    let agent = start(&key);
    let topo = with_agents(
        &support::sandbox_topology(),
        dir.path(),
        &agent.addr,
        &secret,
    );
    support::move_repository(
        &topo,
        &store.repository_yaml(
            BUCKET,
            &prefix,
            &format!("  encryption:\n    key_file: {}\n", key.display()),
        ),
    );
    let arg = topo.to_str().unwrap();
    let run = support::shardcut(&["backup", "-t", arg, "--json"]);
    assert_eq!(run.code, 0, "{run:?}");
    let id = run.json()["backup_id"].as_str().unwrap().to_string();
    // The agents' chunks are in the bucket, sealed; verify reads every one
    // back through the key and finds the manifest's row hashes.
    let m = support::manifest(&topo, &id);
    let raw = store.repository(BUCKET, &prefix);
    for s in m.shards.values() {
        for t in &s.table_list {
            for c in &t.chunks {
                let (object, _) = db::stored_at(s, c);
                assert!(
                    raw.get(&object).unwrap().starts_with(b"SHCTSEAL"),
                    "{object}"
                );
            }
        }
    }
    let run = support::shardcut(&["verify", "-t", arg, "--backup", &id]);
    assert_eq!(run.code, 0, "{run:?}");

    // An agent holding another key refuses to write, naming both key ids.
    drop(agent);
    let wrong = start(&other);
    std::fs::create_dir_all(dir.path().join("second")).unwrap();
    let topo2 = with_agents(
        &support::sandbox_topology(),
        &dir.path().join("second"),
        &wrong.addr,
        &secret,
    );
    support::move_repository(
        &topo2,
        &store.repository_yaml(
            BUCKET,
            &prefix,
            &format!("  encryption:\n    key_file: {}\n", key.display()),
        ),
    );
    let run = support::shardcut(&["backup", "-t", topo2.to_str().unwrap()]);
    assert_eq!(run.code, 1, "{run:?}");
    assert!(
        run.stderr
            .contains("this agent's --repository-key-file is key id"),
        "{run:?}"
    );
    assert_eq!(
        support::shardcut(&["list", "-t", arg, "--json"]).json()["backups"]
            .as_array()
            .map(Vec::len),
        Some(1),
        "the refused backup is not listed"
    );

    // An agent holding a key writes nothing in clear: a topology (or any
    // token holder) naming no key is refused, and no object is stored.
    drop(wrong);
    let keyed = start(&key);
    std::fs::create_dir_all(dir.path().join("third")).unwrap();
    let plain_prefix = format!("{prefix}/plain");
    let topo3 = with_agents(
        &support::sandbox_topology(),
        &dir.path().join("third"),
        &keyed.addr,
        &secret,
    );
    support::move_repository(&topo3, &store.repository_yaml(BUCKET, &plain_prefix, ""));
    let run = support::shardcut(&["backup", "-t", topo3.to_str().unwrap()]);
    assert_eq!(run.code, 1, "{run:?}");
    assert!(
        run.stderr
            .contains("the request names no key, but this agent seals with key id"),
        "{run:?}"
    );
    let stored = store
        .repository(BUCKET, &plain_prefix)
        .list("backups/")
        .unwrap();
    assert!(stored.is_empty(), "{stored:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_backup_into_a_bucket_is_never_listed_and_copy_follow_keeps_up() {
    let store = ObjectStore::get();
    let dir = tempfile::tempdir().unwrap();
    let src = support::topology_variant(&support::sandbox_topology(), dir.path(), &[]);
    let prefix = support::unique_prefix("follow");
    let yaml = format!(
        "{}{}",
        store.repository_yaml(BUCKET, &prefix, ""),
        store.replica_yaml("dr-west", "west", &prefix, "")
    );
    support::move_repository(&src, &yaml);
    let arg = src.to_str().unwrap();
    let east = store.repository(BUCKET, &prefix);

    // A backup killed once its chunks are arriving in the bucket.
    let mut child = tokio::process::Command::new(support::bin("shardcut"))
        .args(["backup", "-t", arg, "--chunk-rows", "40"])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    loop {
        if east.list("backups/").unwrap().len() >= 10 {
            break;
        }
        assert!(
            child.try_wait().unwrap().is_none(),
            "the backup ended before the kill"
        );
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    }
    child.kill().await.unwrap();
    assert!(
        !east
            .list("backups/")
            .unwrap()
            .iter()
            .any(|k| k.ends_with("/manifest.json")),
        "the backup finished before it was killed"
    );
    let run = run_ok_async(&["list", "-t", arg, "--json"]).await;
    assert_eq!(
        run.json()["backups"].as_array().map(Vec::len),
        Some(0),
        "{run:?}"
    );

    // `copy --follow` takes each new backup to the replica as it appears.
    let mut follow = tokio::process::Command::new(support::bin("shardcut"))
        .args([
            "copy",
            "-t",
            arg,
            "--to",
            "dr-west",
            "--follow",
            "--interval",
            "1s",
        ])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // The killed run's lock (this host, a dead process) does not stop the next.
    let id = support::backup_id(arg).await;
    let manifest = shard_agent::manifest::keys::manifest(&id);
    let west = store.repository("west", &prefix);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(90);
    while !west.list("backups/").unwrap().contains(&manifest) {
        assert!(follow.try_wait().unwrap().is_none(), "copy --follow exited");
        assert!(
            std::time::Instant::now() < deadline,
            "backup {id} never reached the replica"
        );
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
    let pid = follow.id().unwrap().to_string();
    let term = std::process::Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .unwrap();
    assert!(term.success());
    let out = follow.wait_with_output().await.unwrap();
    assert!(out.status.success(), "copy --follow after SIGTERM: {out:?}");
    let run = run_ok_async(&["list", "-t", arg, "--repository", "dr-west", "--json"]).await;
    let listed = run.json()["backups"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    assert_eq!(listed.len(), 1, "{run:?}");
    assert_eq!(listed[0]["backup_id"], id.as_str(), "{run:?}");

    // The cluster's next expiry removes what the killed backup left in the
    // bucket, and nothing else.
    let run = run_ok_async(&["expire", "-t", arg, "--keep-last", "5", "--json"]).await;
    let removed = run.json()["unfinished_removed"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    assert_eq!(removed.len(), 1, "{run:?}");
    let killed = removed[0]["backup_id"].as_str().unwrap().to_string();
    assert_ne!(killed, id);
    assert!(removed[0]["objects"].as_u64().unwrap() >= 10, "{run:?}");
    assert!(east.list(&format!("backups/{killed}/")).unwrap().is_empty());
    assert!(east.list("backups/").unwrap().contains(&manifest));
    run_ok_async(&["verify", "-t", arg, "--backup", &id]).await;
}

/// A proxy on 127.0.0.1 in front of the store that answers the first
/// `refuse` requests with `503 SlowDown` (as S3 does when throttling) and
/// passes every later connection through. Returns its endpoint and the
/// number of requests it refused.
fn throttling_proxy(upstream: &str, refuse: usize) -> (String, Arc<AtomicU64>) {
    use std::io::{BufRead, BufReader, Read, Write};
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let upstream = upstream.trim_start_matches("http://").to_string();
    let refused = Arc::new(AtomicU64::new(0));
    let count = refused.clone();
    std::thread::spawn(move || {
        for conn in listener.incoming() {
            let Ok(mut client) = conn else { continue };
            if (count.load(Ordering::SeqCst) as usize) < refuse {
                // Read the whole request, then refuse it and close.
                let mut reader = BufReader::new(client.try_clone().unwrap());
                let mut length = 0usize;
                loop {
                    let mut line = String::new();
                    if reader.read_line(&mut line).unwrap_or(0) == 0 || line == "\r\n" {
                        break;
                    }
                    if let Some(v) = line.to_ascii_lowercase().strip_prefix("content-length:") {
                        length = v.trim().parse().unwrap_or(0);
                    }
                }
                let mut body = vec![0u8; length];
                drop(reader.read_exact(&mut body));
                let xml = "<Error><Code>SlowDown</Code><Message>Please reduce your request rate.</Message></Error>";
                drop(write!(
                    client,
                    "HTTP/1.1 503 Slow Down\r\nContent-Type: application/xml\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{xml}",
                    xml.len()
                ));
                count.fetch_add(1, Ordering::SeqCst);
                continue;
            }
            let Ok(server) = std::net::TcpStream::connect(&upstream) else {
                continue;
            };
            let (mut c2, mut s2) = (client.try_clone().unwrap(), server.try_clone().unwrap());
            std::thread::spawn(move || drop(std::io::copy(&mut c2, &mut s2)));
            let (mut server, mut client) = (server, client);
            std::thread::spawn(move || drop(std::io::copy(&mut server, &mut client)));
        }
    });
    (format!("http://{addr}"), refused)
}

#[test]
fn throttling_is_retried_and_an_unreachable_store_is_one_line() {
    let store = ObjectStore::get();
    let dir = tempfile::tempdir().unwrap();
    let src = support::topology_variant(&support::sandbox_topology(), dir.path(), &[]);
    let prefix = support::unique_prefix("throttled");
    let (endpoint, refused) = throttling_proxy(&store.endpoint, 3);
    let yaml = store
        .repository_yaml(BUCKET, &prefix, "")
        .replace(&store.endpoint, &endpoint);
    support::move_repository(&src, &yaml);
    let arg = src.to_str().unwrap();
    let run = support::shardcut(&["backup", "-t", arg, "--json"]);
    assert_eq!(run.code, 0, "{run:?}");
    assert_eq!(
        refused.load(Ordering::SeqCst),
        3,
        "the proxy refused three requests"
    );
    let id = run.json()["backup_id"].as_str().unwrap().to_string();
    let run = support::shardcut(&["verify", "-t", arg, "--backup", &id]);
    assert_eq!(run.code, 0, "{run:?}");

    // Nothing listens: the retries end, and the error is one line naming
    // the repository.
    let closed = format!("http://127.0.0.1:{}", support::free_port());
    support::move_repository(
        &src,
        &store
            .repository_yaml(BUCKET, &prefix, "")
            .replace(&store.endpoint, &closed),
    );
    let run = support::shardcut(&["list", "-t", arg]);
    assert_eq!(run.code, 1, "{run:?}");
    let line = one_line_error(&run);
    assert!(
        line.contains(&closed) && line.contains("list backups/"),
        "{line}"
    );
}
