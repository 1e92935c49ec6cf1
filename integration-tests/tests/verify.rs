//! `shardcut verify --backup`: repository integrity with no database, on
//! real backups damaged the way disks and people damage them.

use shard_agent::repo::Repository;

use crate::support::{self, db, shardcut};

#[test]
fn damaged_backups_are_named_chunk_by_chunk() {
    let dir = tempfile::tempdir().unwrap();
    let topo = support::topology_variant(&support::sandbox_topology(), dir.path(), &[]);
    let arg = topo.to_str().unwrap();
    let run = shardcut(&["backup", "-t", arg, "--json"]);
    assert_eq!(run.code, 0, "{run:?}");
    let id = run.json()["backup_id"].as_str().unwrap().to_string();

    let ok = shardcut(&["verify", "--backup", &id, "-t", arg, "--json"]);
    assert_eq!(ok.code, 0, "{ok:?}");
    let j = ok.json();
    assert_eq!(j["status"], "ok");
    assert_eq!(
        j["shards"]["mysql-0"]["tables"]["shop.all_types"]["rows_found"],
        20
    );
    assert_eq!(
        j["shards"]["pg-1"]["tables"]["shop.public.orders"]["hash_ok"],
        true
    );

    let m = support::manifest(&topo, &id);
    let repo_dir = dir.path().join("repo");
    // Flip one byte in the middle of one chunk. A small table's chunk lies
    // in a bundle with others; only this table is damaged.
    let flipped = &db::find_table(&m, "mysql-1", "shop.orders").chunks[0];
    let (object, range) = db::stored_at(&m.shards["mysql-1"], flipped);
    let path = repo_dir.join(&object);
    let mut bytes = std::fs::read(&path).unwrap();
    bytes[(range.start + range.end) / 2] ^= 0x01;
    std::fs::write(&path, bytes).unwrap();
    let run = shardcut(&["verify", "--backup", &id, "-t", arg]);
    assert_eq!(run.code, 3, "{run:?}");
    assert!(
        run.stdout.contains(&format!(
            "BAD shard mysql-1 table shop.orders {}: checksum mismatch",
            flipped.key
        )),
        "{run:?}"
    );
    assert!(
        run.stdout.contains("DAMAGED (1 table(s), 1 object(s))"),
        "{run:?}"
    );

    // Delete the object holding a chunk of another shard's table: every
    // chunk it holds is missing, each named with its table.
    let pg0 = &m.shards["pg-0"];
    let deleted = &db::find_table(&m, "pg-0", "shop.public.customers").chunks[0];
    let (object, _) = db::stored_at(pg0, deleted);
    assert!(deleted.bundle.is_some(), "a table of 1,000 rows is bundled");
    let lost: Vec<(String, String)> = pg0
        .table_list
        .iter()
        .flat_map(|t| t.chunks.iter().map(move |c| (t, c)))
        .filter(|(_, c)| db::stored_at(pg0, c).0 == object)
        .map(|(t, c)| (t.qualified(), c.key.clone()))
        .collect();
    assert!(
        lost.len() > 1,
        "the bundle holds other tables too: {lost:?}"
    );
    db::repository(&db::topology(&topo))
        .delete(&object)
        .unwrap();
    let run = shardcut(&["verify", "--backup", &id, "-t", arg, "--json"]);
    assert_eq!(run.code, 3, "{run:?}");
    let j = run.json();
    assert_eq!(j["status"], "damaged");
    let damage = j["damage"].as_array().unwrap();
    assert_eq!(damage.len(), 1 + lost.len(), "{j}");
    let missing = format!("missing (bundle {object})");
    for (table, key) in &lost {
        assert!(
            damage.iter().any(|d| d["key"] == key.as_str()
                && d["problem"] == missing.as_str()
                && d["table"] == table.as_str()
                && d["shard"] == "pg-0"),
            "{table}: {j}"
        );
    }
    let t = &j["shards"]["pg-0"]["tables"]["shop.public.customers"];
    assert_eq!(t["hash_ok"], false);
    assert_eq!(t["rows_found"], 0);
    assert_eq!(t["rows_expected"], 1000);

    // A truncated manifest is a clear error, not a verdict.
    let manifest = repo_dir.join(format!("backups/{id}/manifest.json"));
    let text = std::fs::read(&manifest).unwrap();
    std::fs::write(&manifest, &text[..text.len() / 2]).unwrap();
    let run = shardcut(&["verify", "--backup", &id, "-t", arg]);
    assert_eq!(run.code, 1, "{run:?}");
    assert!(
        run.stderr
            .contains(&format!("unreadable manifest backups/{id}/manifest.json")),
        "{run:?}"
    );
    let list = shardcut(&["list", "-t", arg]);
    assert!(
        list.stdout.contains("unreadable"),
        "list shows the damaged backup: {list:?}"
    );
}

/// PostgreSQL allows a table without columns, and it holds rows all the
/// same (empty lines in its chunks): `verify` called such a backup
/// damaged ("row 1 has 1 fields, the table has 0 columns") while the
/// restore brought the rows back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_postgres_table_without_columns_verifies_and_restores_its_rows() {
    let (_sb, _dir, topo_path, topo) = support::private_cluster(0, 1);
    let arg = topo_path.to_str().unwrap();
    db::setup_all(
        &topo,
        &[],
        "shapes",
        "CREATE TABLE shapeless (); \
         INSERT INTO shapeless SELECT FROM generate_series(1, 3); \
         CREATE TABLE shaped (id int PRIMARY KEY); INSERT INTO shaped VALUES (1)",
    )
    .await;
    let id = support::backup_id(arg).await;
    let ok = support::shardcut_async(&["verify", "--backup", &id, "-t", arg, "--json"]).await;
    assert_eq!(ok.code, 0, "{ok:?}");
    assert_eq!(
        ok.json()["shards"]["pg-0"]["tables"]["shapes.public.shapeless"]["rows_found"],
        3,
        "{ok:?}"
    );

    let target = support::PrivateSandbox::up(0, 1, "ready");
    let tgt = target.topology();
    let run = support::shardcut_async(&[
        "restore",
        "-t",
        arg,
        "--target",
        tgt.to_str().unwrap(),
        "--json",
    ])
    .await;
    assert_eq!(run.code, 0, "{run:?}");
    assert_eq!(run.json()["quality"]["score"], 1.0, "{run:?}");
    let restored = db::topology(&tgt);
    let rows: i64 = db::pg(&restored.shards[0], "shapes")
        .await
        .query_one("SELECT count(*) FROM shapeless", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(rows, 3);
}
