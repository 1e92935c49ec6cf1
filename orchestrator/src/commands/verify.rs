use std::collections::BTreeMap;
use std::path::PathBuf;

use serde_json::json;
use shard_agent::integrity::{check_backup, Integrity};
use topology::Topology;

use shard_agent::manifest::Manifest;

use super::{find_backup, open_repository};
use crate::quality::score;
use crate::readback::read_back;
use crate::report::{full_report, human as report_text, rpo_seconds, write_dir, Run};
use crate::{exit, render};

/// Check a backup's integrity in the repository, with no database: every
/// chunk and schema file present, of the right size and checksum, readable,
/// and adding up to the manifest's row counts and content hashes.
#[derive(Debug, clap::Args)]
pub struct Verify {
    /// Backup ID, or `latest`.
    #[arg(long, value_name = "ID")]
    backup: String,
    /// The cluster's topology file.
    #[arg(short, long = "topology", value_name = "FILE")]
    topology: PathBuf,
    /// Instead of the repository, verify the tables restored on the
    /// servers of this topology against the backup (read back and scored).
    #[arg(long, value_name = "FILE")]
    target: Option<PathBuf>,
    /// With --target: write report.json, report.html and metrics.prom here.
    #[arg(long, value_name = "DIR", requires = "target")]
    report: Option<PathBuf>,
    /// Print one JSON document on stdout.
    #[arg(long)]
    json: bool,
}

impl Verify {
    pub async fn run(self) -> anyhow::Result<u8> {
        let topology = Topology::load(&self.topology)?;
        let repo = open_repository(&topology)?;
        let (cluster, id) = (topology.cluster.clone(), self.backup.clone());
        if let Some(target) = &self.target {
            let r = repo.clone();
            let m = tokio::task::spawn_blocking(move || find_backup(r.as_ref(), &cluster, &id))
                .await??;
            return self.verify_target(&m, target).await;
        }
        let (m, report) = tokio::task::spawn_blocking(move || {
            let m = find_backup(repo.as_ref(), &cluster, &id)?;
            let mut report = check_backup(repo.as_ref(), &m);
            // An incremental backup is only as good as its full base.
            if let Some(chain) = &m.chain {
                let base = find_backup(repo.as_ref(), &cluster, &chain.base)?;
                let mut more = check_backup(repo.as_ref(), &base);
                report.tables.append(&mut more.tables);
                report.damage.append(&mut more.damage);
            }
            Ok::<_, anyhow::Error>((m, report))
        })
        .await??;
        if self.json {
            exit::emit(&format!(
                "{}\n",
                serde_json::to_string_pretty(&to_json(&m.backup_id, &report))?
            ))?;
        } else {
            exit::emit(&human(&m.backup_id, &report))?;
        }
        Ok(if report.ok() {
            exit::SUCCESS
        } else {
            exit::DEGRADED
        })
    }
}

impl Verify {
    async fn verify_target(&self, m: &Manifest, target: &std::path::Path) -> anyhow::Result<u8> {
        let target = Topology::load(target)?;
        let shards: Vec<String> = m.shards.keys().cloned().collect();
        let missing: Vec<&String> = shards
            .iter()
            .filter(|s| target.shard(s).is_none())
            .collect();
        if !missing.is_empty() {
            return Err(crate::exit::InvalidInput(format!(
                "target topology has no shard {}",
                missing
                    .iter()
                    .map(|s| format!("`{s}`"))
                    .collect::<Vec<_>>()
                    .join(", ")
            ))
            .into());
        }
        let run = Run {
            kind: "verify",
            rto_seconds: None,
            rpo_seconds: rpo_seconds(m),
        };
        let pairs: Vec<(String, topology::Shard)> = shards
            .iter()
            .filter_map(|s| target.shard(s).map(|t| (s.clone(), t.clone())))
            .collect();
        let (tables, available) = read_back(m, &pairs).await;
        let (q, per_shard) = score(&tables, &shards, &available);
        let doc = full_report(m, &tables, q, &per_shard, &run);
        if self.json {
            exit::emit(&format!("{}\n", serde_json::to_string_pretty(&doc)?))?;
        } else {
            exit::emit(&report_text(
                "target verification",
                m,
                &tables,
                q,
                &per_shard,
                0.0,
            ))?;
        }
        if let Some(dir) = &self.report {
            write_dir(dir, &doc, m, &tables, q, &per_shard, &run)
                .map_err(|e| anyhow::anyhow!("writing the report into {}: {e}", dir.display()))?;
        }
        Ok(if q.perfect() {
            exit::SUCCESS
        } else {
            exit::DEGRADED
        })
    }
}

fn to_json(id: &str, r: &Integrity) -> serde_json::Value {
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

fn human(id: &str, r: &Integrity) -> String {
    let bad_tables = r.tables.iter().filter(|t| !t.hash_ok).count();
    let rows: u64 = r.tables.iter().map(|t| t.rows_found).sum();
    let mut out = format!(
        "backup {id}: {} tables, {} rows checked: {}\n",
        r.tables.len(),
        render::count(rows),
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
            render::count(t.rows_found),
            render::count(t.rows_expected),
            if t.rows_found == t.rows_expected {
                ", content hash differs"
            } else {
                ""
            }
        ));
    }
    out
}
