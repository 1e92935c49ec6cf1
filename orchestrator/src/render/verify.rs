//! How a repository verification is shown.

use std::collections::BTreeMap;

use serde_json::json;
use shard_agent::verify::integrity::Integrity;

use super::count;

pub fn to_json(id: &str, r: &Integrity) -> serde_json::Value {
    let mut shards: BTreeMap<String, serde_json::Map<String, serde_json::Value>> = BTreeMap::new();
    for t in &r.tables {
        shards.entry(t.shard.clone()).or_default().insert(
            t.table.clone(),
            json!({"rows_expected": t.rows_expected, "rows_found": t.rows_found, "hash_ok": t.hash_ok}),
        );
    }
    let shards: serde_json::Map<String, serde_json::Value> = shards
        .into_iter()
        .map(|(s, tables)| (s, json!({ "tables": tables })))
        .collect();
    json!({
        "backup_id": id,
        "status": if r.ok() { "ok" } else { "damaged" },
        "damage": r.damage,
        "shards": shards,
    })
}

pub fn human(id: &str, r: &Integrity) -> String {
    let bad_tables = r.tables.iter().filter(|t| !t.hash_ok).count();
    let rows: u64 = r.tables.iter().map(|t| t.rows_found).sum();
    let mut out = format!(
        "backup {id}: {} tables, {} rows checked: {}\n",
        r.tables.len(),
        count(rows),
        if r.ok() {
            "OK".to_string()
        } else {
            format!(
                "DAMAGED ({bad_tables} table(s), {} object(s))",
                r.damage.len()
            )
        }
    );
    for d in &r.damage {
        if d.shard.is_empty() {
            out.push_str(&format!("  BAD {}: {}\n", d.key, d.problem));
            continue;
        }
        out.push_str(&format!(
            "  BAD shard {} {} {}: {}\n",
            d.shard,
            d.table
                .as_deref()
                .map(|t| format!("table {t}"))
                .unwrap_or_else(|| "schema".into()),
            d.key,
            d.problem
        ));
    }
    for t in r.tables.iter().filter(|t| !t.hash_ok) {
        out.push_str(&format!(
            "  table {} on {}: {} of {} rows readable{}\n",
            t.table,
            t.shard,
            count(t.rows_found),
            count(t.rows_expected),
            if t.rows_found == t.rows_expected {
                ", content hash differs"
            } else {
                ""
            }
        ));
    }
    out
}
