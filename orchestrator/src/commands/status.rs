use std::path::PathBuf;

use super::TopologyFile;
use topology::Topology;

use crate::flow::copy::choose_repository;

use crate::exit;
use crate::flow::status::status;
use crate::render::capture::{metrics_text, status_json, status_text};

/// Capture lag per shard and stream (stored position against the server's
/// current one), retained WAL per PostgreSQL slot, and the newest mark.
#[derive(Debug, clap::Args)]
pub struct Status {
    #[command(flatten)]
    topology: TopologyFile,
    /// Print one JSON document on stdout.
    #[arg(long)]
    json: bool,
    /// Read the backups from this replica (the topology's `replicas:`)
    /// instead of the main repository: a failover, or a drill of the
    /// second region.
    #[arg(long, value_name = "NAME")]
    repository: Option<String>,
    /// Also write Prometheus metrics (text format) to this file.
    #[arg(long, value_name = "FILE")]
    metrics: Option<PathBuf>,
}

impl Status {
    pub async fn run(self) -> anyhow::Result<u8> {
        let topology =
            choose_repository(Topology::load(&self.topology)?, self.repository.as_deref())?;
        let report = status(&topology).await?;
        if let Some(path) = &self.metrics {
            std::fs::write(path, metrics_text(&report.streams))
                .map_err(|e| anyhow::anyhow!("writing {}: {e}", path.display()))?;
        }
        if self.json {
            exit::emit(&format!(
                "{}\n",
                serde_json::to_string_pretty(&status_json(&report))?
            ))?;
        } else {
            exit::emit(&status_text(&report))?;
        }
        Ok(if report.problems.is_empty() {
            exit::SUCCESS
        } else {
            exit::FAILURE
        })
    }
}
