//! The repository is untrusted input: what it holds may have been written
//! by anyone who can reach it, and must never make shardcut run something
//! on a database server.

use shard_agent::capture::keys;
use shard_agent::repo::Repository;

use crate::support::{self, db, PrivateSandbox};

/// A stream state whose slot name carries SQL is refused before any
/// statement reaches the source: `capture --remove` would otherwise send
/// the name inside `DROP PUBLICATION`, and a catch-up inside the decoding
/// call.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tampered_slot_name_in_the_capture_state_runs_nothing() {
    let sb = PrivateSandbox::up(0, 1, "ready");
    let dir = tempfile::tempdir().unwrap();
    let topo_path = support::topology_variant(&sb.topology(), dir.path(), &[]);
    let arg = topo_path.to_str().unwrap();
    let topo = db::topology(&topo_path);
    db::setup_all(
        &topo,
        &[],
        "bank",
        "CREATE TABLE accounts (id int PRIMARY KEY); INSERT INTO accounts VALUES (1)",
    )
    .await;
    let run = support::shardcut(&["capture", "-t", arg, "--once", "--no-mark"]);
    assert_eq!(run.code, 0, "{run:?}");

    let shard = &topo.shards[0];
    let repo = db::repository(&topo);
    let key = keys::state(&shard.name, "bank");
    let mut state: serde_json::Value = serde_json::from_slice(&repo.get(&key).unwrap()).unwrap();
    let real_slot = state["slot"].as_str().unwrap().to_string();
    state["slot"] = "x; DROP TABLE accounts".into();
    repo.put(&key, &serde_json::to_vec(&state).unwrap())
        .unwrap();

    for args in [
        &["capture", "-t", arg, "--once", "--no-mark"][..],
        &["capture", "-t", arg, "--remove"][..],
    ] {
        let run = support::shardcut(args);
        assert_eq!(run.code, 1, "{args:?}: {run:?}");
        assert!(
            run.stderr.contains("which shardcut never creates"),
            "{args:?}: {}",
            run.stderr
        );
    }
    let run = support::shardcut(&["status", "-t", arg, "--json"]);
    assert_eq!(run.code, 1, "{run:?}");
    assert!(
        run.stdout.contains("which shardcut never creates"),
        "{run:?}"
    );

    let client = db::pg(shard, "bank").await;
    let rows: i64 = client
        .query_one("SELECT count(*) FROM accounts", &[])
        .await
        .expect("the table is still there")
        .get(0);
    assert_eq!(rows, 1);
    let slots: i64 = client
        .query_one(
            "SELECT count(*) FROM pg_replication_slots WHERE slot_name = $1",
            &[&real_slot],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(slots, 1, "the real slot is untouched");
    // Leave no slot behind: it would hold WAL on the sandbox server.
    client
        .execute("SELECT pg_drop_replication_slot($1)", &[&real_slot])
        .await
        .unwrap();
}

/// A manifest naming a server's own database (`mysql`, `postgres`) is
/// refused before the target is touched, even with `--overwrite`: a
/// restore drops each database it recreates.
#[test]
fn a_manifest_naming_a_system_database_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let src = support::topology_variant(&support::sandbox_topology(), dir.path(), &[]);
    let src_arg = src.to_str().unwrap();
    let run = support::shardcut(&["backup", "-t", src_arg, "--json"]);
    assert_eq!(run.code, 0, "{run:?}");
    let id = run.json()["backup_id"].as_str().unwrap().to_string();
    let repo = db::repository(&db::topology(&src));
    let key = shard_agent::manifest::keys::manifest(&id);
    let mut m: serde_json::Value = serde_json::from_slice(&repo.get(&key).unwrap()).unwrap();
    for (shard, from, to) in [("mysql-0", "db1", "mysql"), ("pg-0", "shop", "postgres")] {
        let s = &mut m["shards"][shard];
        for list in ["schema", "table_list"] {
            for entry in s[list].as_array_mut().unwrap() {
                if entry["database"] == from {
                    entry["database"] = to.into();
                }
            }
        }
    }
    repo.put(&key, &serde_json::to_vec(&m).unwrap()).unwrap();

    let scratch = PrivateSandbox::up(1, 1, "ready");
    let target = scratch.topology();
    for (shard, system) in [("mysql-0", "mysql"), ("pg-0", "postgres")] {
        let run = support::shardcut(&[
            "restore",
            "-t",
            src_arg,
            "--backup",
            &id,
            "--target",
            target.to_str().unwrap(),
            "--shard",
            shard,
            "--overwrite",
        ]);
        assert_eq!(run.code, 2, "{run:?}");
        assert!(
            run.stderr
                .contains(&format!("names the system database `{system}`")),
            "{}",
            run.stderr
        );
    }
    // The scratch servers' own databases are still there and in use.
    let scratch_topo = db::topology(&target);
    let run = support::shardcut(&["check", "-t", target.to_str().unwrap()]);
    assert_eq!(run.code, 0, "{run:?}");
    assert_eq!(scratch_topo.shards.len(), 2);
}
