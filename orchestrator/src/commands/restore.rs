use std::path::{Path, PathBuf};

use super::TopologyFile;
use crate::exit;
use crate::flow::history::{outcome_figures, CliRun, JobKind};
use crate::flow::restore::{restore_verified, Outcome, Plan};
use crate::pitr::{parse_until, Until};
use crate::progress::Bars;
use crate::report::{human, outcome_document, outcome_page, outcome_problem, write_dir, Run};
use crate::selection::Request;

/// Restore a backup (all shards, or some) into the servers of a target
/// topology, then verify by reading the target back and score the result.
#[derive(Debug, clap::Args)]
pub struct Restore {
    #[command(flatten)]
    topology: TopologyFile,
    /// Backup ID, or `latest`. With `--until`: the base to start from
    /// (default: the newest backup that captured changes lead to the target).
    #[arg(long, value_name = "ID", default_value = "latest")]
    backup: String,
    /// Restore to a point after the backup by replaying captured changes:
    /// `latest` (the newest mark capture has reached), `mark:NAME`, or a
    /// time (the newest mark at or before it; consistent across shards).
    #[arg(long, value_name = "POINT", value_parser = parse_until)]
    until: Option<Until>,
    /// Topology of the servers to restore into; shards map by name.
    #[arg(long, value_name = "FILE")]
    target: PathBuf,
    /// Restore only this shard (repeatable).
    #[arg(long = "shard", value_name = "NAME")]
    shards: Vec<String>,
    /// Restore source shard SRC into target shard DST (repeatable); shards
    /// not mapped go to the target shard of the same name.
    #[arg(long = "map", value_name = "SRC=DST", value_parser = parse_map)]
    map: Vec<(String, String)>,
    /// Restore only this database (repeatable).
    #[arg(long = "database", value_name = "DB")]
    databases: Vec<String>,
    /// Restore only this table, `DB.TABLE` (PostgreSQL also
    /// `DB.SCHEMA.TABLE`) (repeatable).
    #[arg(long = "table", value_name = "DB.TABLE")]
    tables: Vec<String>,
    /// Also restore the tables that selected tables reference by foreign
    /// key (transitively) instead of refusing.
    #[arg(long)]
    with_parents: bool,
    /// Replace target databases that exist and hold tables.
    #[arg(long)]
    overwrite: bool,
    /// MySQL/MariaDB: write the restored rows to the target's binary log
    /// too (so that the target's replicas receive them). Default: not
    /// logged, as myloader does; the restore is verified by read-back.
    #[arg(long)]
    binlog: bool,
    /// Write report.json, report.html and metrics.prom into this directory.
    #[arg(long, value_name = "DIR")]
    report: Option<PathBuf>,
    /// Print one JSON document on stdout.
    #[arg(long)]
    json: bool,
    /// Read the backups from this replica (the topology's `replicas:`)
    /// instead of the main repository: a failover, or a drill of the
    /// second region.
    #[arg(long, value_name = "NAME")]
    repository: Option<String>,
}

impl Restore {
    pub async fn run(self) -> anyhow::Result<u8> {
        let plan = Plan {
            source: &self.topology,
            repository: self.repository.as_deref(),
            target: &self.target,
            backup: &self.backup,
            shards: self.shards.clone(),
            map: self.map.clone(),
            auto_map: false,
            until: self.until.clone(),
            overwrite: self.overwrite,
            binlog: self.binlog,
            pause_before_verify: None,
            select: Request {
                databases: self.databases.clone(),
                tables: self.tables.clone(),
                with_parents: self.with_parents,
            },
        };
        // Recorded where it reads from: a drill of a replica (a failover)
        // must not wait on the main region.
        let topology = crate::flow::copy::choose_repository(
            topology::Topology::load(&self.topology)?,
            self.repository.as_deref(),
        )?;
        let run = CliRun::start(&topology, JobKind::Restore);
        let outcome = match restore_verified(&plan, &Bars).await {
            Ok(o) => o,
            Err(e) => {
                run.finish(Some(exit::one_line(&e)), None, None).await;
                return Err(e);
            }
        };
        record_outcome(run, &outcome, "restore").await;
        finish(outcome, "restore", self.json, self.report.as_deref())
    }
}

/// Records a verified restore or drill in the history: its figures, its
/// document and its report page.
pub async fn record_outcome(mut run: CliRun, o: &Outcome, kind: &str) {
    run.record.backup_id = Some(o.m.backup_id.clone());
    run.record.figures = outcome_figures(o);
    run.finish(
        outcome_problem(o, kind),
        Some(outcome_document(o, kind)),
        Some(outcome_page(o, kind)),
    )
    .await;
}

pub fn parse_map(text: &str) -> Result<(String, String), String> {
    match text.split_once('=') {
        Some((a, b)) if !a.is_empty() && !b.is_empty() => Ok((a.to_string(), b.to_string())),
        _ => Err(format!("`{text}`: expected SRC=DST")),
    }
}

/// Prints and writes the report of a restore or drill; the exit code
/// follows Q, except that a failed restore step is an operational failure
/// (exit 1).
pub fn finish(o: Outcome, kind: &str, json: bool, report_dir: Option<&Path>) -> anyhow::Result<u8> {
    let run = Run::of(&o, kind);
    let doc = outcome_document(&o, kind);
    if json {
        exit::emit(&format!("{}\n", serde_json::to_string_pretty(&doc)?))?;
    } else {
        let mut text = human(kind, &o.m, &o.tables, o.q, &o.per_shard, o.rto);
        for r in &o.replays {
            text += &format!(
                "{}: replayed {} transaction(s) in {:.1} s ({:.0}/s)\n",
                r.shard,
                r.transactions,
                r.seconds,
                r.per_second().unwrap_or(0.0)
            );
        }
        for note in &o.notes {
            text += &format!("note: {note}\n");
        }
        exit::emit(&text)?;
    }
    if let Some(dir) = report_dir {
        write_dir(dir, &doc, &o.m, &o.tables, o.q, &o.per_shard, &run)
            .map_err(|e| anyhow::anyhow!("writing the report into {}: {e}", dir.display()))?;
    }
    let restore_failed: Vec<&String> = o
        .failures
        .iter()
        .filter(|f| !f.ends_with("(unavailable)"))
        .collect();
    if !restore_failed.is_empty() {
        anyhow::bail!(
            "{kind} of backup {} failed on {} shard(s): {}. What was restored before the failure stays on the target; \
             rerun with --overwrite to replace it, or drop those databases",
            o.m.backup_id,
            restore_failed.len(),
            restore_failed.iter().map(|s| s.as_str()).collect::<Vec<_>>().join("; ")
        );
    }
    for f in &o.failures {
        eprintln!("shardcut: {f}");
    }
    Ok(if o.q.perfect() {
        exit::SUCCESS
    } else {
        exit::DEGRADED
    })
}
