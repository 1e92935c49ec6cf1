use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Instant;

use serde_json::json;
use shard_agent::manifest::Manifest;
use shard_agent::restore::{check_target, restore_shard, RestoreOptions};
use tokio::task::JoinSet;
use topology::Topology;

use super::{find_backup, open_repository};
use crate::exit::{self, InvalidInput};
use crate::quality::{score, Quality, TableResult};
use crate::readback::read_back;

/// Restore a backup (all shards, or some) into the servers of a target
/// topology, then verify by reading the target back and score the result.
#[derive(Debug, clap::Args)]
pub struct Restore {
    /// The source cluster's topology file (where the repository is).
    #[arg(short, long = "topology", value_name = "FILE")]
    topology: PathBuf,
    /// Backup ID, or `latest`.
    #[arg(long, value_name = "ID")]
    backup: String,
    /// Topology of the servers to restore into; shards map by name.
    #[arg(long, value_name = "FILE")]
    target: PathBuf,
    /// Restore only this shard (repeatable).
    #[arg(long = "shard", value_name = "NAME")]
    shards: Vec<String>,
    /// Replace target databases that exist and hold tables.
    #[arg(long)]
    overwrite: bool,
    /// Print one JSON document on stdout.
    #[arg(long)]
    json: bool,
}

impl Restore {
    pub async fn run(self) -> anyhow::Result<u8> {
        let source = Topology::load(&self.topology)?;
        let target = Topology::load(&self.target)?;
        let repo = open_repository(&source)?;
        let (cluster, id, r) = (source.cluster.clone(), self.backup.clone(), repo.clone());
        let m =
            tokio::task::spawn_blocking(move || find_backup(r.as_ref(), &cluster, &id)).await??;
        let shards = self.scope(&m, &source, &target)?;
        let mut refusals = Vec::new();
        for name in &shards {
            if let Some(dst) = target.shard(name) {
                if let Err(e) = check_target(&m.shards[name], dst, self.overwrite).await {
                    refusals.push(exit::one_line(&anyhow::Error::new(e)));
                }
            }
        }
        if !refusals.is_empty() {
            return Err(InvalidInput(refusals.join("; ")).into());
        }

        let started = Instant::now();
        let opts = |parallelism| RestoreOptions {
            repo: repo.clone(),
            overwrite: self.overwrite,
            parallelism,
        };
        let mut tasks = JoinSet::new();
        for name in &shards {
            let (src, dst) = (m.shards[name].clone(), target.shard(name).cloned());
            let Some(dst) = dst else { continue };
            let o = opts(dst.parallelism);
            let name = name.clone();
            tasks.spawn(async move { (name, restore_shard(&src, &dst, &o).await) });
        }
        let mut failures = Vec::new();
        while let Some(joined) = tasks.join_next().await {
            match joined {
                Ok((_, Ok(done))) => tracing::info!(
                    "restored {} database(s), {} table(s), {} chunk(s)",
                    done.databases.len(),
                    done.tables,
                    done.chunks
                ),
                Ok((name, Err(e))) => failures.push(format!(
                    "{name}: {}",
                    exit::one_line(&anyhow::Error::new(e))
                )),
                Err(e) => failures.push(format!("a restore task panicked: {e}")),
            }
        }
        // Verification reads the target whatever happened, so a failed
        // restore is reported with what it left, never as a success.
        let (tables, available) = read_back(&m, &target, &shards).await;
        let rto = started.elapsed().as_secs_f64();
        let (q, per_shard) = score(&tables, &shards, &available);
        let doc = report(&m, &tables, q, &per_shard, rto);
        if self.json {
            exit::emit(&format!("{}\n", serde_json::to_string_pretty(&doc)?))?;
        } else {
            exit::emit(&human(&m, &tables, q, &per_shard, rto))?;
        }
        if !failures.is_empty() {
            failures.sort();
            anyhow::bail!(
                "restore of backup {} failed on {} shard(s): {}. What was restored before the failure stays on the target; \
                 rerun with --overwrite to replace it, or drop those databases",
                m.backup_id,
                failures.len(),
                failures.join("; ")
            );
        }
        Ok(if q.perfect() {
            exit::SUCCESS
        } else {
            exit::DEGRADED
        })
    }

    /// The shards to restore, after refusing what cannot be done safely.
    fn scope(
        &self,
        m: &Manifest,
        source: &Topology,
        target: &Topology,
    ) -> anyhow::Result<Vec<String>> {
        let shards: Vec<String> = if self.shards.is_empty() {
            m.shards.keys().cloned().collect()
        } else {
            self.shards.clone()
        };
        let mut problems = Vec::new();
        for name in &shards {
            let Some(src) = m.shards.get(name) else {
                problems.push(format!("backup {} has no shard `{name}`", m.backup_id));
                continue;
            };
            let Some(dst) = target.shard(name) else {
                problems.push(format!(
                    "target topology {} has no shard `{name}`",
                    self.target.display()
                ));
                continue;
            };
            if src.engine != Some(dst.engine) {
                problems.push(format!(
                    "shard `{name}` is {:?} in the backup but {} in the target",
                    src.engine, dst.engine
                ));
            }
            for s in &source.shards {
                if s.endpoint.host == dst.endpoint.host && s.endpoint.port == dst.endpoint.port {
                    problems.push(format!(
                        "target shard `{name}` ({}:{}) is the server of source shard `{}`: restoring there would overwrite the source; restore into another server",
                        dst.endpoint.host, dst.endpoint.port, s.name
                    ));
                }
            }
        }
        if problems.is_empty() {
            Ok(shards)
        } else {
            Err(InvalidInput(problems.join("; ")).into())
        }
    }
}

fn quality_json(q: &Quality) -> serde_json::Value {
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
                .map(|t| (t.table.clone(), json!(t)))
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
    m: &Manifest,
    tables: &[TableResult],
    q: Quality,
    per_shard: &BTreeMap<String, Quality>,
    rto: f64,
) -> String {
    let mut out = format!(
        "restore of backup {} verified in {rto:.1} s: Q = {:.4} (recovered {:.4} × complete {:.4} × available {:.4})\n",
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
