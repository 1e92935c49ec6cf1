//! How a mark is shown: the `--json` document of `mark` and its text.

use serde_json::json;
use shard_agent::manifest::Mark;

pub fn summary(m: &Mark) -> serde_json::Value {
    let shards: serde_json::Map<String, serde_json::Value> = m
        .cut
        .shards
        .iter()
        .map(|(name, c)| {
            let s = m.shards.get(name);
            (
                name.clone(),
                json!({
                    "position": c.position,
                    "write_block_ms": c.write_block_ms,
                    "tables": s.map(|s| s.table_list.len()).unwrap_or(0),
                    "rows": s.map(|s| s.table_list.iter().map(|t| t.rows).sum::<u64>()).unwrap_or(0),
                }),
            )
        })
        .collect();
    json!({
        "name": m.name,
        "cluster": m.cluster,
        "taken_at": m.cut.taken_at,
        "write_block_ms": m.cut.write_block_ms,
        "attempts": m.cut.attempts,
        "shards": shards,
    })
}

pub fn summary_text(mark: &Mark) -> String {
    let mut out = format!(
        "mark {} of cluster {}: commits blocked {} ms cluster-wide, at {}\n",
        mark.name, mark.cluster, mark.cut.write_block_ms, mark.cut.taken_at
    );
    for (name, c) in &mark.cut.shards {
        let tables = mark
            .shards
            .get(name)
            .map(|s| s.table_list.len())
            .unwrap_or(0);
        out.push_str(&format!(
            "  {name:<12} {tables:>4} tables hashed  {}\n",
            c.position
        ));
    }
    out
}
