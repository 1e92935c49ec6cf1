//! The `--json` documents are a contract with scripts and dashboards: the
//! fields of `backup`, `show`, `list`, `verify` and (in `drill.rs`) the
//! restore report are pinned here, so a change of layout inside the
//! program cannot change what it prints.

use serde_json::Value;

use crate::support::{self, shardcut};

/// The sorted field names of a JSON object.
pub fn fields(v: &Value) -> Vec<String> {
    let mut out: Vec<String> = v
        .as_object()
        .unwrap_or_else(|| panic!("not an object: {v}"))
        .keys()
        .cloned()
        .collect();
    out.sort();
    out
}

pub fn names(list: &[&str]) -> Vec<String> {
    let mut out: Vec<String> = list.iter().map(|s| s.to_string()).collect();
    out.sort();
    out
}

/// Fields of the restore/drill report (`restore --json`, `drill --json`).
pub const RESTORE_REPORT: &[&str] = &[
    "backup_id",
    "bytes_raw",
    "bytes_stored",
    "cluster",
    "cut_taken_at",
    // Steps that failed after the rows were loaded (empty when none).
    "failures",
    "kind",
    "quality",
    "rpo_seconds",
    "rto_seconds",
    "shards",
    "write_block_ms",
];

#[test]
fn backup_show_list_and_verify_documents_keep_their_fields() {
    let dir = tempfile::tempdir().unwrap();
    let topo = support::topology_variant(&support::sandbox_topology(), dir.path(), &[]);
    let arg = topo.to_str().unwrap();

    let run = shardcut(&["backup", "-t", arg, "--json"]);
    assert_eq!(run.code, 0, "{run:?}");
    let backup = run.json();
    assert_eq!(
        fields(&backup),
        names(&[
            "backup_id",
            "chain",
            "cluster",
            "cut",
            "finished_at",
            "kind",
            "shards",
            "started_at",
            "status"
        ])
    );
    assert_eq!(backup["kind"], "full");
    assert_eq!(backup["status"], "complete");
    assert_eq!(
        fields(&backup["cut"]),
        names(&["attempts", "shards", "taken_at", "write_block_ms"])
    );
    for (name, shard) in backup["shards"].as_object().unwrap() {
        assert_eq!(
            fields(shard),
            names(&[
                "bytes_raw",
                "bytes_stored",
                "duration_ms",
                "engine",
                "rows",
                "server",
                "tables"
            ]),
            "shard {name}"
        );
    }
    let id = backup["backup_id"].as_str().unwrap();

    let run = shardcut(&["show", id, "-t", arg, "--json"]);
    assert_eq!(run.code, 0, "{run:?}");
    let show = run.json();
    assert_eq!(
        fields(&show),
        names(&[
            "backup_id",
            "cluster",
            "cut",
            "finished_at",
            "format",
            "kind",
            "shards",
            "started_at",
            "status",
            "tool_version",
            "topology_digest"
        ])
    );
    assert_eq!(show["kind"], "full");
    assert_eq!(show["status"], "complete");

    let run = shardcut(&["list", "-t", arg, "--json"]);
    assert_eq!(run.code, 0, "{run:?}");
    let list = run.json();
    assert_eq!(fields(&list), names(&["backups", "cluster"]));
    let item = list["backups"]
        .as_array()
        .unwrap()
        .iter()
        .find(|b| b["backup_id"] == id)
        .unwrap();
    assert_eq!(
        fields(item),
        names(&[
            "backup_id",
            "base",
            "bytes_stored",
            "finished_at",
            "kind",
            "mark",
            "parent",
            "restorable_to",
            "rows",
            "shards",
            "started_at",
            "status",
            "write_block_ms"
        ])
    );

    let run = shardcut(&["verify", "--backup", id, "-t", arg, "--json"]);
    assert_eq!(run.code, 0, "{run:?}");
    let verify = run.json();
    assert_eq!(
        fields(&verify),
        names(&["backup_id", "damage", "shards", "status"])
    );
    assert_eq!(verify["status"], "ok");
}
