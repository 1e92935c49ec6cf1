//! How a cluster's preflight is shown.

use shard_agent::preflight::{Finding, Level, ShardReport};

use crate::flow::check::CheckReport;
use crate::render;

pub fn human(r: &CheckReport) -> String {
    let mut out = format!(
        "cluster {}: {} shard(s), topology {}\n",
        r.cluster,
        r.shards.len(),
        r.topology
    );
    for s in &r.shards {
        out.push('\n');
        match (&s.report, &s.error) {
            (Some(rep), _) => shard_section(&mut out, rep),
            (None, Some(err)) => {
                out.push_str(&format!("{}: UNREACHABLE\n    {err}\n", s.shard));
                out.push_str("    fix: start the server, or correct this shard's url and password in the topology\n");
            }
            (None, None) => {}
        }
    }
    let repo = &r.repository;
    out.push_str(&format!("\nrepository {}: ", repo.path));
    match repo.free_bytes {
        Some(n) => out.push_str(&format!("{} free", render::bytes(n))),
        None => out.push_str("free space unknown"),
    }
    if !repo.exists {
        out.push_str(" (does not exist yet; backup will create it)");
    }
    if let Some(p) = &repo.problem {
        out.push_str(&format!("\n    FAIL {p}"));
    }
    out.push('\n');
    let not_ready: Vec<&str> = r
        .shards
        .iter()
        .filter(|s| !s.ready)
        .map(|s| s.shard.as_str())
        .collect();
    let ready = r.shards.len() - not_ready.len();
    out.push_str(&format!("\n{ready} of {} shard(s) ready", r.shards.len()));
    if !not_ready.is_empty() {
        out.push_str(&format!("; not ready: {}", not_ready.join(", ")));
    }
    out.push('\n');
    out
}

fn shard_section(out: &mut String, rep: &ShardReport) {
    out.push_str(&format!(
        "{}: {} at {}: {}\n",
        rep.shard,
        rep.server,
        rep.endpoint,
        if rep.ready { "READY" } else { "NOT READY" }
    ));
    for f in &rep.findings {
        finding_line(out, f);
    }
    let rows: u64 = rep.tables.iter().filter_map(|t| t.rows_estimate).sum();
    let bytes: u64 = rep.tables.iter().filter_map(|t| t.bytes).sum();
    let mut dbs: Vec<&str> = rep.tables.iter().map(|t| t.database.as_str()).collect();
    dbs.dedup();
    out.push_str(&format!(
        "    selected: {} table(s) in {} database(s), ~{} rows, {}\n",
        rep.tables.len(),
        dbs.len(),
        render::count(rows),
        render::bytes(bytes)
    ));
    for t in &rep.tables {
        let name = match &t.schema {
            Some(s) => format!("{}.{s}.{}", t.database, t.table),
            None => format!("{}.{}", t.database, t.table),
        };
        let rows = t
            .rows_estimate
            .map(render::count)
            .unwrap_or_else(|| "?".to_string());
        out.push_str(&format!(
            "      {name:<40} ~{rows:>12} rows {:>10}\n",
            t.bytes
                .map(render::bytes)
                .unwrap_or_else(|| "?".to_string())
        ));
    }
}

fn finding_line(out: &mut String, f: &Finding) {
    let tag = match f.level {
        Level::Ok => "ok  ",
        Level::Warn => "WARN",
        Level::Fail => "FAIL",
    };
    out.push_str(&format!("    {tag} {:<24} {}\n", f.item, f.value));
    if let Some(fix) = &f.fix {
        out.push_str(&format!("         fix: {fix}\n"));
    }
}
