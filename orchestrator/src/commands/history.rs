use std::path::PathBuf;

use super::TopologyFile;
use topology::Topology;

use crate::exit;
use crate::flow::history::History;
use crate::report::trends;

/// The cluster's job history (backups, drills, restores, expiry, whoever
/// ran them): a list, JSON, or a page of trend charts.
#[derive(Debug, clap::Args)]
pub struct HistoryCmd {
    #[command(flatten)]
    topology: TopologyFile,
    /// How many days back.
    #[arg(long, default_value_t = 30, value_name = "DAYS",
          value_parser = clap::value_parser!(i64).range(1..=crate::service::HISTORY_DAYS))]
    days: i64,
    /// Print the records as one JSON document on stdout.
    #[arg(long)]
    json: bool,
    /// Write the trend charts and jobs as a self-contained HTML page.
    #[arg(long, value_name = "FILE")]
    html: Option<PathBuf>,
}

impl HistoryCmd {
    pub async fn run(self) -> anyhow::Result<u8> {
        let topology = Topology::load(&self.topology)?;
        let history = History::open(&topology)?;
        let now = chrono::Utc::now();
        let since = now - chrono::Duration::days(self.days);
        let records = tokio::task::spawn_blocking(move || history.load(since, 10_000)).await??;
        if let Some(path) = &self.html {
            let page = trends::page(&topology.cluster, &records, self.days, now);
            let tmp = path.with_extension("tmp");
            std::fs::write(&tmp, page)
                .and_then(|()| std::fs::rename(&tmp, path))
                .map_err(|e| anyhow::anyhow!("writing {}: {e}", path.display()))?;
        }
        if self.json {
            exit::emit(&format!(
                "{}\n",
                serde_json::to_string_pretty(&serde_json::json!({
                    "cluster": topology.cluster,
                    "jobs": records,
                }))?
            ))?;
        } else if self.html.is_none() {
            let mut out = format!(
                "{:<40} {:<11} {:<8} {:<9} {:>9} {:>8}  error\n",
                "job", "kind", "trigger", "status", "duration", "Q"
            );
            for r in records.iter().rev() {
                out += &format!(
                    "{:<40} {:<11} {:<8} {:<9} {:>9} {:>8}  {}\n",
                    r.id,
                    r.kind.as_str(),
                    format!("{:?}", r.trigger).to_lowercase(),
                    r.status.as_str(),
                    r.duration_seconds()
                        .map(|d| format!("{d:.1} s"))
                        .unwrap_or_default(),
                    r.figures
                        .quality
                        .map(|q| format!("{:.4}", q.score))
                        .unwrap_or_default(),
                    r.error.as_deref().unwrap_or("")
                );
            }
            exit::emit(&out)?;
        }
        Ok(exit::SUCCESS)
    }
}
