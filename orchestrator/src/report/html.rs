//! report.html: one self-contained page (inline CSS and SVG, no external
//! assets) that a DBA opens in a browser: the cluster's Q and its three
//! parts per shard as bars, failing tables first, RTO, RPO, sizes and the
//! write-block time per shard.

use std::collections::BTreeMap;

use shard_agent::manifest::Manifest;

use super::run::Run;
use crate::quality::{Quality, TableResult};
use crate::render;

pub(crate) fn esc(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
        .replace('\'', "&#39;")
}

fn colour(v: f64) -> &'static str {
    if v >= 1.0 {
        "#2e7d32"
    } else if v >= 0.9 {
        "#f9a825"
    } else {
        "#c62828"
    }
}

/// Horizontal bars, one per (label, length in 0..=1, text shown at the
/// end). `scored` colours bars by value (quality); otherwise they are neutral.
fn bars(rows: &[(String, f64, String)], width: u32, scored: bool) -> String {
    let h = 22;
    let label_w = 170;
    let mut svg = format!(
        "<svg xmlns='http://www.w3.org/2000/svg' width='{}' height='{}' role='img'>",
        width,
        rows.len() as u32 * h + 4
    );
    for (i, (label, v, text)) in rows.iter().enumerate() {
        let y = i as u32 * h + 2;
        let bar = ((width - label_w - 60) as f64 * v.clamp(0.0, 1.0)) as u32;
        svg.push_str(&format!(
            "<text x='0' y='{}' font-size='13'>{}</text><rect x='{label_w}' y='{y}' width='{}' height='{}' fill='#eee'/>\
             <rect x='{label_w}' y='{y}' width='{bar}' height='{}' fill='{}'/><text x='{}' y='{}' font-size='13'>{}</text>",
            y + 15,
            esc(label),
            width - label_w - 60,
            h - 6,
            h - 6,
            if scored { colour(*v) } else { "#1565c0" },
            width - 55,
            y + 15,
            esc(text)
        ));
    }
    svg.push_str("</svg>");
    svg
}

/// What failed, first on the page: rows that verify do not make a run
/// that failed a success.
fn failed(run: &Run<'_>) -> String {
    boxed(
        ("failed", "#ffebee", "#c62828"),
        &format!("The {} failed", run.kind),
        run.failures,
    )
}

/// What the restores said the DBA should know, after any failure.
fn noted(run: &Run<'_>) -> String {
    boxed(
        ("notes", "#fff8e1", "#f9a825"),
        &format!("To know about this {}", run.kind),
        run.notes,
    )
}

/// `lines` as a list under `title` in a box of class `class` with its
/// background and border colours; nothing when there are none.
fn boxed((class, background, border): (&str, &str, &str), title: &str, lines: &[String]) -> String {
    if lines.is_empty() {
        return String::new();
    }
    let items: String = lines
        .iter()
        .map(|l| format!("<li>{}</li>", esc(l)))
        .collect();
    format!(
        "<div class='{class}' style='background:{background};border:2px solid {border};padding:0.5em 1em'>\
         <strong>{}</strong><ul>{items}</ul></div>",
        esc(title)
    )
}

pub fn page(
    m: &Manifest,
    tables: &[TableResult],
    q: Quality,
    per_shard: &BTreeMap<String, Quality>,
    run: &Run<'_>,
) -> String {
    let mut quality_rows = Vec::new();
    for (shard, sq) in per_shard {
        for (part, v) in [
            ("Q", sq.score),
            ("recovered", sq.recovered),
            ("complete", sq.complete),
            ("available", sq.available),
        ] {
            quality_rows.push((format!("{shard} {part}"), v, format!("{v:.4}")));
        }
    }
    let max_block = m
        .cut
        .shards
        .values()
        .map(|c| c.write_block_ms)
        .max()
        .unwrap_or(1)
        .max(1) as f64;
    let block_rows: Vec<(String, f64, String)> = m
        .cut
        .shards
        .iter()
        .map(|(s, c)| {
            (
                s.clone(),
                c.write_block_ms as f64 / max_block,
                format!("{} ms", c.write_block_ms),
            )
        })
        .collect();
    let mut sorted: Vec<&TableResult> = tables.iter().collect();
    sorted.sort_by_key(|t| (t.hash_ok, t.shard.clone(), t.table.clone()));
    let mut rows = String::new();
    for t in sorted {
        rows.push_str(&format!(
            "<tr class='{}'><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
            if t.hash_ok { "ok" } else { "bad" },
            esc(&t.shard),
            esc(&t.table),
            render::count(t.rows_expected),
            render::count(t.rows_found),
            if t.hash_ok { "match" } else { "MISMATCH" }
        ));
    }
    let stored: u64 = m.shards.values().map(|s| s.bytes_stored).sum();
    let raw: u64 = m.shards.values().map(|s| s.bytes_raw).sum();
    format!(
        "<!doctype html><html><head><meta charset='utf-8'><title>shardcut {kind} report: {cluster}</title><style>\
         body{{font-family:sans-serif;margin:2em;color:#222}} .score{{font-size:3em;font-weight:bold;color:{col}}}\
         table{{border-collapse:collapse}} td,th{{padding:3px 10px;border-bottom:1px solid #ddd;text-align:left}}\
         tr.bad td{{background:#ffebee}} .facts td:first-child{{color:#666}}</style></head><body>\
         <h1>shardcut {kind} report: cluster {cluster}</h1>\
         {failed}{noted}<div>Recovery quality Q</div><div class='score'>{score:.4}</div>\
         <div>recovered {rec:.4} × complete {com:.4} × available {ava:.4}</div>\
         <h2>Facts</h2><table class='facts'>\
         <tr><td>backup</td><td>{id}</td></tr><tr><td>cut taken at</td><td>{taken}</td></tr>\
         <tr><td>RTO (restore to verified)</td><td>{rto}</td></tr><tr><td>RPO (age of the cut)</td><td>{rpo:.0} s</td></tr>\
         <tr><td>size</td><td>{raw} raw, {stored} stored</td></tr><tr><td>write block (cluster)</td><td>{block} ms</td></tr>\
         <tr><td>generated</td><td>{now}</td></tr></table>\
         <h2>Quality per shard</h2>{qbars}<h2>Write block per shard</h2>{bbars}\
         <h2>Tables (failing first)</h2><table><tr><th>shard</th><th>table</th><th>rows expected</th><th>rows found</th><th>content</th></tr>{rows}</table>\
         </body></html>\n",
        kind = esc(run.kind),
        failed = failed(run),
        noted = noted(run),
        cluster = esc(&m.cluster),
        col = colour(q.score),
        score = q.score,
        rec = q.recovered,
        com = q.complete,
        ava = q.available,
        id = esc(&m.backup_id),
        taken = esc(&m.cut.taken_at),
        rto = run.rto_seconds.map(|r| format!("{r:.1} s")).unwrap_or_else(|| "n/a (no restore)".into()),
        rpo = run.rpo_seconds,
        raw = render::bytes(raw),
        stored = render::bytes(stored),
        block = m.cut.write_block_ms,
        now = chrono::Utc::now().to_rfc3339(),
        qbars = bars(&quality_rows, 640, true),
        bbars = bars(&block_rows, 640, false),
    )
}
