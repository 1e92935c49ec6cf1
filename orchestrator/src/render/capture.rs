//! How capture is shown: the per-stream lines of `capture`, the status
//! report of `status`, and Prometheus metrics.

use crate::flow::status::{CaptureStatus, StreamStatus};

/// Prometheus text format for the streams' lag and retained WAL.
pub fn metrics_text(list: &[StreamStatus]) -> String {
    let mut out = String::new();
    let esc = |s: &str| s.replace('\\', "\\\\").replace('"', "\\\"");
    let mut family = |name: &str, help: &str, value: &dyn Fn(&StreamStatus) -> Option<f64>| {
        out.push_str(&format!("# HELP {name} {help}\n# TYPE {name} gauge\n"));
        for s in list {
            if let Some(v) = value(s) {
                out.push_str(&format!(
                    "{name}{{shard=\"{}\",stream=\"{}\"}} {v}\n",
                    esc(&s.shard),
                    esc(&s.stream)
                ));
            }
        }
    };
    family(
        "shardcut_capture_lag_bytes",
        "Change stream bytes not yet stored in the repository.",
        &|s| s.lag_bytes.map(|b| b as f64),
    );
    family(
        "shardcut_capture_lag_seconds",
        "Seconds the stored position has been behind the server (0 when caught up).",
        &|s| Some(s.lag_seconds),
    );
    family(
        "shardcut_capture_failing",
        "1 while the stream's last round failed and capture --follow waits to try again.",
        &|s| Some(if s.failing.is_some() { 1.0 } else { 0.0 }),
    );
    family(
        "shardcut_capture_retained_wal_bytes",
        "WAL a PostgreSQL capture slot keeps on the server.",
        &|s| s.retained_wal_bytes.map(|b| b as f64),
    );
    family(
        "shardcut_capture_last_commit_timestamp_seconds",
        "Commit time of the newest stored transaction.",
        &|s| {
            s.last_commit
                .as_deref()
                .and_then(|t| chrono::DateTime::parse_from_rfc3339(t).ok())
                .map(|t| t.timestamp() as f64)
        },
    );
    out
}

/// The lines `capture` prints after its last round.
pub fn streams_text(list: &[StreamStatus]) -> String {
    let mut out = String::new();
    for s in list {
        out.push_str(&format!(
            "  {:<12} {:<10} stored to {}  lag {}  +{} txn in {} segment(s){}\n",
            s.shard,
            s.stream,
            s.progress,
            s.lag_bytes
                .map(|b| format!("{b} B"))
                .unwrap_or_else(|| "?".into()),
            s.transactions,
            s.segments,
            s.retained_wal_bytes
                .map(|w| format!("  retained WAL {} KiB", w >> 10))
                .unwrap_or_default()
        ));
    }
    out
}

/// The `--json` document of `status`.
pub fn status_json(s: &CaptureStatus) -> serde_json::Value {
    serde_json::json!({
        "cluster": s.cluster,
        "streams": s.streams,
        "marks": s.marks,
        "newest_mark": s.newest_mark.as_ref().map(|(n, t)| serde_json::json!({"name": n, "taken_at": t})),
        "problems": s.problems,
        "expected_replay": match &s.expected_replay {
            Ok(e) => serde_json::json!(e),
            Err(why) => serde_json::json!({"unknown": why}),
        },
        "replicas": s.replicas.iter().map(|(name, lag)| match lag {
            Ok(l) => serde_json::json!({
                "name": name,
                "backups_missing": l.backups_missing,
                "newest_backup": l.newest_backup,
                "capture_objects_missing": l.capture_objects_missing,
            }),
            Err(why) => serde_json::json!({"name": name, "error": why}),
        }).collect::<Vec<_>>(),
        "retired_generations": s.retired.iter().map(|r| serde_json::json!({
            "shard": r.shard,
            "stream": r.stream,
            "generation": r.generation,
            "started": r.started,
            "progress": r.progress,
        })).collect::<Vec<_>>(),
    })
}

/// The text of `status`.
pub fn status_text(s: &CaptureStatus) -> String {
    let mut out = format!("capture of cluster {}:\n", s.cluster);
    if s.streams.is_empty() {
        out.push_str("  not started (run `shardcut capture --once` or `--follow`)\n");
    }
    for s in &s.streams {
        out.push_str(&format!(
            "  {:<12} {:<10} stored to {}  server at {}  lag {} / {:.1} s{}\n",
            s.shard,
            s.stream,
            s.progress,
            s.server_position
                .as_ref()
                .map(|p| p.to_string())
                .unwrap_or_else(|| "?".into()),
            s.lag_bytes
                .map(|b| format!("{b} B"))
                .unwrap_or_else(|| "?".into()),
            s.lag_seconds,
            s.retained_wal_bytes
                .map(|w| format!("  retained WAL {} KiB", w >> 10))
                .unwrap_or_default()
        ));
    }
    for (name, lag) in &s.replicas {
        out.push_str(&match lag {
            Ok(l) => format!(
                "  replica {name}: {} backup(s) and {} capture object(s) behind; newest backup there: {}\n",
                l.backups_missing.len(),
                l.capture_objects_missing,
                l.newest_backup.as_deref().unwrap_or("none")
            ),
            Err(why) => format!("  replica {name}: lag unknown: {why}\n"),
        });
    }
    for r in &s.retired {
        out.push_str(&format!(
            "  {:<12} {:<10} generation {} (removed) covers {} to {}\n",
            r.shard, r.stream, r.generation, r.started, r.progress
        ));
    }
    match &s.newest_mark {
        Some((n, t)) => out.push_str(&format!("  {} mark(s); newest {n} at {t}\n", s.marks)),
        None => out.push_str("  no marks\n"),
    }
    match &s.expected_replay {
        Ok(e) => out.push_str(&format!("  {}\n", crate::rto::describe(e))),
        Err(why) => out.push_str(&format!(
            "  expected replay of --until latest: unknown ({why})\n"
        )),
    }
    for p in &s.problems {
        out.push_str(&format!("  problem: {p}\n"));
    }
    out
}
