//! How a backup's manifest is shown: the `--json` document of `backup` and
//! `show`, and the text summary.

use std::collections::BTreeMap;

use serde_json::json;
use shard_agent::manifest::Manifest;

use crate::flow::Listed;
use crate::pitr::Reach;

use super::{bytes, count};

pub fn summary_json(m: &Manifest) -> serde_json::Value {
    let shards: serde_json::Map<String, serde_json::Value> = m
        .shards
        .iter()
        .map(|(name, s)| {
            (
                name.clone(),
                json!({
                    "engine": s.engine,
                    "server": s.server,
                    "tables": s.tables,
                    "rows": s.rows,
                    "bytes_raw": s.bytes_raw,
                    "bytes_stored": s.bytes_stored,
                    "duration_ms": s.duration_ms,
                }),
            )
        })
        .collect();
    json!({
        "backup_id": m.backup_id,
        "kind": m.kind,
        "chain": m.chain.as_ref().map(|c| json!({
            "parent": c.parent,
            "base": c.base,
            "mark": c.mark,
            "segments": c.segments.len(),
            "transactions": c.segments.iter().map(|s| s.transactions).sum::<u64>(),
        })),
        "cluster": m.cluster,
        "status": m.status,
        "started_at": m.started_at,
        "finished_at": m.finished_at,
        "cut": m.cut,
        "shards": shards,
    })
}

pub fn summary_text(m: &Manifest) -> String {
    let mut out = format!(
        "backup {} of cluster {}: {}\n  cut: commits blocked {} ms cluster-wide (attempt {}), at {}\n",
        m.backup_id, m.cluster, m.status, m.cut.write_block_ms, m.cut.attempts, m.cut.taken_at
    );
    if let Some(c) = &m.chain {
        out.push_str(&format!(
            "  incremental: full backup {} + {} captured segment(s) ({} transactions) to mark {}; parent {}\n",
            c.base,
            c.segments.len(),
            c.segments.iter().map(|s| s.transactions).sum::<u64>(),
            c.mark,
            c.parent
        ));
    }
    out.push_str(&format!(
        "  {:<12} {:>7} {:>14} {:>11} {:>11} {:>9} {:>10}  position\n",
        "shard", "tables", "rows", "raw", "stored", "time", "block"
    ));
    for (name, s) in &m.shards {
        let (pos, block) = m
            .cut
            .shards
            .get(name)
            .map(|c| (c.position.to_string(), c.write_block_ms))
            .unwrap_or_default();
        out.push_str(&format!(
            "  {name:<12} {:>7} {:>14} {:>11} {:>11} {:>7.1} s {:>7} ms  {pos}\n",
            s.tables,
            count(s.rows),
            bytes(s.bytes_raw),
            bytes(s.bytes_stored),
            s.duration_ms as f64 / 1000.0,
            block
        ));
    }
    out
}

/// The `--json` document of `list`.
pub fn list_json(
    cluster: &str,
    listed: &[Listed],
    reach: &BTreeMap<String, Reach>,
) -> serde_json::Value {
    let items: Vec<serde_json::Value> = listed
        .iter()
        .map(|l| match &l.manifest {
            Ok(m) => json!({
                "backup_id": m.backup_id,
                "kind": m.kind,
                "base": m.chain.as_ref().map(|c| c.base.clone()),
                "parent": m.chain.as_ref().map(|c| c.parent.clone()),
                "mark": m.chain.as_ref().map(|c| c.mark.clone()),
                "status": m.status,
                "started_at": m.started_at,
                "finished_at": m.finished_at,
                "write_block_ms": m.cut.write_block_ms,
                "shards": m.shards.len(),
                "rows": m.shards.values().map(|s| s.rows).sum::<u64>(),
                "bytes_stored": m.shards.values().map(|s| s.bytes_stored).sum::<u64>(),
                "restorable_to": reach.get(&m.backup_id),
            }),
            Err(e) => json!({"backup_id": l.id, "status": "unreadable", "error": e}),
        })
        .collect();
    json!({"cluster": cluster, "backups": items})
}
