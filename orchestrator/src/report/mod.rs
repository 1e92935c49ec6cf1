//! What restore, verify and drill print and write: one JSON document, a
//! text summary, and (with `--report DIR`) report.json, a self-contained
//! report.html and metrics.prom for the node_exporter textfile collector.

use std::collections::BTreeMap;

use serde_json::json;
use shard_agent::manifest::Manifest;

use crate::quality::{Quality, TableResult};

pub(crate) mod html;
mod run;
pub mod trends;

pub use run::Run;

pub fn quality_json(q: &Quality) -> serde_json::Value {
    json!({"score": q.score, "recovered": q.recovered, "complete": q.complete, "available": q.available})
}

pub fn report(
    m: &Manifest,
    tables: &[TableResult],
    q: Quality,
    per_shard: &BTreeMap<String, Quality>,
    rto: f64,
) -> serde_json::Value {
    let shards: serde_json::Map<String, serde_json::Value> = per_shard
        .iter()
        .map(|(name, sq)| {
            let t: serde_json::Map<String, serde_json::Value> = tables
                .iter()
                .filter(|t| &t.shard == name)
                .map(|t| {
                    let tq = Quality::of_table(t, sq.available == 1.0);
                    let mut v = json!(t);
                    if let Some(o) = v.as_object_mut() {
                        o.insert("quality".into(), quality_json(&tq));
                    }
                    (t.table.clone(), v)
                })
                .collect();
            (
                name.clone(),
                json!({"quality": quality_json(sq), "tables": t}),
            )
        })
        .collect();
    json!({
        "backup_id": m.backup_id,
        "cluster": m.cluster,
        "cut_taken_at": m.cut.taken_at,
        "quality": quality_json(&q),
        "rto_seconds": rto,
        "shards": shards,
    })
}

pub fn human(
    kind: &str,
    m: &Manifest,
    tables: &[TableResult],
    q: Quality,
    per_shard: &BTreeMap<String, Quality>,
    rto: f64,
) -> String {
    let mut out = format!(
        "{kind} of backup {} verified in {rto:.1} s: Q = {:.4} (recovered {:.4} × complete {:.4} × available {:.4})\n",
        m.backup_id, q.score, q.recovered, q.complete, q.available
    );
    for (name, sq) in per_shard {
        out.push_str(&format!(
            "  {name:<12} Q = {:.4} (recovered {:.4}, complete {:.4}, available {:.0})\n",
            sq.score, sq.recovered, sq.complete, sq.available
        ));
    }
    for t in tables.iter().filter(|t| !t.hash_ok) {
        out.push_str(&format!(
            "  MISMATCH {} {}: {} of {} rows{}\n",
            t.shard,
            t.table,
            t.rows_found,
            t.rows_expected,
            if t.rows_found == t.rows_expected {
                ", content differs"
            } else {
                ""
            }
        ));
    }
    out
}

/// The JSON document with the run's figures added.
pub fn full_report(
    m: &Manifest,
    tables: &[TableResult],
    q: Quality,
    per_shard: &BTreeMap<String, Quality>,
    run: &Run<'_>,
) -> serde_json::Value {
    let mut doc = report(m, tables, q, per_shard, run.rto_seconds.unwrap_or(0.0));
    if let Some(obj) = doc.as_object_mut() {
        if run.rto_seconds.is_none() {
            obj.remove("rto_seconds");
        }
        obj.insert("kind".into(), json!(run.kind));
        obj.insert("failures".into(), json!(run.failures));
        if !run.notes.is_empty() {
            obj.insert("notes".into(), json!(run.notes));
        }
        obj.insert("rpo_seconds".into(), json!(run.rpo_seconds));
        obj.insert("write_block_ms".into(), json!(m.cut.write_block_ms));
        obj.insert(
            "bytes_stored".into(),
            json!(m.shards.values().map(|s| s.bytes_stored).sum::<u64>()),
        );
        obj.insert(
            "bytes_raw".into(),
            json!(m.shards.values().map(|s| s.bytes_raw).sum::<u64>()),
        );
    }
    doc
}

/// The document a restore or drill prints with `--json`: the report with
/// the replay figures, if changes were replayed.
pub fn outcome_document(o: &crate::flow::restore::Outcome, kind: &str) -> serde_json::Value {
    let mut doc = full_report(&o.m, &o.tables, o.q, &o.per_shard, &Run::of(o, kind));
    if let (false, Some(obj)) = (o.replays.is_empty(), doc.as_object_mut()) {
        obj.insert("replay".into(), json!(o.replays));
    }
    doc
}

/// The report page of a restore or drill.
pub fn outcome_page(o: &crate::flow::restore::Outcome, kind: &str) -> String {
    html::page(&o.m, &o.tables, o.q, &o.per_shard, &Run::of(o, kind))
}

/// Why a restore or drill did not succeed: shards whose restore failed,
/// then a score below 1. `None`: verified with Q = 1.
pub fn outcome_problem(o: &crate::flow::restore::Outcome, kind: &str) -> Option<String> {
    let failed: Vec<&str> = o
        .failures
        .iter()
        .filter(|f| !f.ends_with("(unavailable)"))
        .map(String::as_str)
        .collect();
    if !failed.is_empty() {
        return Some(format!(
            "{kind} of backup {} failed on {} shard(s): {}",
            o.m.backup_id,
            failed.len(),
            failed.join("; ")
        ));
    }
    (!o.q.perfect()).then(|| {
        format!(
            "{kind} of backup {} verified with Q = {:.4} < 1 (recovered {:.4}, complete {:.4}, available {:.4})",
            o.m.backup_id, o.q.score, o.q.recovered, o.q.complete, o.q.available
        )
    })
}

/// Writes report.json, report.html and metrics.prom into `dir`.
pub fn write_dir(
    dir: &std::path::Path,
    doc: &serde_json::Value,
    m: &Manifest,
    tables: &[TableResult],
    q: Quality,
    per_shard: &BTreeMap<String, Quality>,
    run: &Run<'_>,
) -> std::io::Result<()> {
    std::fs::create_dir_all(dir)?;
    let previous = std::fs::read_to_string(dir.join("metrics.prom")).unwrap_or_default();
    write_atomic(
        &dir.join("report.json"),
        serde_json::to_string_pretty(doc)?.as_bytes(),
    )?;
    write_atomic(
        &dir.join("report.html"),
        html::page(m, tables, q, per_shard, run).as_bytes(),
    )?;
    write_atomic(
        &dir.join("metrics.prom"),
        metrics(m, q, per_shard, run, &previous).as_bytes(),
    )
}

/// Temp file and rename, so a collector never reads half a file.
fn write_atomic(path: &std::path::Path, data: &[u8]) -> std::io::Result<()> {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, data)?;
    std::fs::rename(tmp, path)
}

pub(crate) fn label(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

/// Prometheus text format. `shardcut_last_success_timestamp_seconds` is set
/// to now only when Q = 1 and no step failed; otherwise the previous
/// file's value is kept, so an alert on its age fires when drills keep
/// failing.
pub fn metrics(
    m: &Manifest,
    q: Quality,
    per_shard: &BTreeMap<String, Quality>,
    run: &Run<'_>,
    previous: &str,
) -> String {
    let c = label(&m.cluster);
    let mut out = String::new();
    for (name, help, get) in [
        (
            "shardcut_quality_score",
            "Recovery-quality score Q = recovered x complete x available of the last run.",
            (|q: &Quality| q.score) as fn(&Quality) -> f64,
        ),
        (
            "shardcut_quality_recovered",
            "Rows read back / rows in the manifest.",
            |q: &Quality| q.recovered,
        ),
        (
            "shardcut_quality_complete",
            "Tables with matching rows and content hash / tables in scope.",
            |q: &Quality| q.complete,
        ),
        (
            "shardcut_quality_available",
            "Shards answering reads on every restored table / shards in scope.",
            |q: &Quality| q.available,
        ),
    ] {
        out.push_str(&format!("# HELP {name} {help}\n# TYPE {name} gauge\n"));
        out.push_str(&format!(
            "{name}{{cluster=\"{c}\",kind=\"{}\"}} {}\n",
            run.kind,
            get(&q)
        ));
        for (shard, sq) in per_shard {
            out.push_str(&format!(
                "{name}{{cluster=\"{c}\",kind=\"{}\",shard=\"{}\"}} {}\n",
                run.kind,
                label(shard),
                get(sq)
            ));
        }
    }
    out.push_str(&format!(
        "# HELP shardcut_backup_age_seconds Age of the verified backup's cut when the run started.\n# TYPE shardcut_backup_age_seconds gauge\nshardcut_backup_age_seconds{{cluster=\"{c}\"}} {}\n",
        run.rpo_seconds
    ));
    if let Some(rto) = run.rto_seconds {
        out.push_str(&format!(
            "# HELP shardcut_restore_duration_seconds Wall time from the start of the restore to verified.\n# TYPE shardcut_restore_duration_seconds gauge\nshardcut_restore_duration_seconds{{cluster=\"{c}\",kind=\"{}\"}} {rto}\n",
            run.kind
        ));
    }
    out.push_str(&format!(
        "# HELP shardcut_write_block_seconds Cluster-wide write-block time of the backup's cut.\n# TYPE shardcut_write_block_seconds gauge\nshardcut_write_block_seconds{{cluster=\"{c}\"}} {}\n",
        m.cut.write_block_ms as f64 / 1000.0
    ));
    let name = "shardcut_last_success_timestamp_seconds";
    let value = if q.perfect() && run.failures.is_empty() {
        Some(format!("{}", chrono::Utc::now().timestamp()))
    } else {
        previous
            .lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.rsplit(' ').next())
            .map(str::to_string)
    };
    if let Some(v) = value {
        out.push_str(&format!(
            "# HELP {name} When a run last verified with Q = 1.\n# TYPE {name} gauge\n{name}{{cluster=\"{c}\"}} {v}\n"
        ));
    }
    out
}
