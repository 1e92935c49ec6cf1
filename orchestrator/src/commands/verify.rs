use std::path::PathBuf;

use super::TopologyFile;
use topology::Topology;

use crate::flow::copy::choose_repository;

use crate::exit;
use crate::flow::verify::{verify_repository, verify_target};
use crate::render::verify::{human, to_json};
use crate::report::{full_report, human as report_text, write_dir, Run};

/// Check a backup's integrity in the repository, with no database: every
/// chunk and schema file present, of the right size and checksum, readable,
/// and adding up to the manifest's row counts and content hashes.
#[derive(Debug, clap::Args)]
pub struct Verify {
    /// Backup ID, or `latest`.
    #[arg(long, value_name = "ID")]
    backup: String,
    #[command(flatten)]
    topology: TopologyFile,
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
    /// Read the backups from this replica (the topology's `replicas:`)
    /// instead of the main repository: a failover, or a drill of the
    /// second region.
    #[arg(long, value_name = "NAME")]
    repository: Option<String>,
}

impl Verify {
    pub async fn run(self) -> anyhow::Result<u8> {
        let topology =
            choose_repository(Topology::load(&self.topology)?, self.repository.as_deref())?;
        if let Some(target) = &self.target {
            return self.target(&topology, target).await;
        }
        let (m, report) = verify_repository(&topology, &self.backup).await?;
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

    async fn target(&self, topology: &Topology, target: &std::path::Path) -> anyhow::Result<u8> {
        let c = verify_target(topology, &self.backup, target).await?;
        let run = Run {
            kind: "verify",
            rto_seconds: None,
            rpo_seconds: c.rpo,
            failures: &[],
            notes: &[],
        };
        let doc = full_report(&c.m, &c.tables, c.q, &c.per_shard, &run);
        if self.json {
            exit::emit(&format!("{}\n", serde_json::to_string_pretty(&doc)?))?;
        } else {
            exit::emit(&report_text(
                "target verification",
                &c.m,
                &c.tables,
                c.q,
                &c.per_shard,
                0.0,
            ))?;
        }
        if let Some(dir) = &self.report {
            write_dir(dir, &doc, &c.m, &c.tables, c.q, &c.per_shard, &run)
                .map_err(|e| anyhow::anyhow!("writing the report into {}: {e}", dir.display()))?;
        }
        Ok(if c.q.perfect() {
            exit::SUCCESS
        } else {
            exit::DEGRADED
        })
    }
}
