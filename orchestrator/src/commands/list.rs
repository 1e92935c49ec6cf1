use super::TopologyFile;
use topology::Topology;

use crate::flow::copy::choose_repository;

use crate::flow::{list_backups_reach, open_repository};
use crate::render::backup::list_json;
use crate::{exit, render};

/// List the cluster's backups, oldest first.
#[derive(Debug, clap::Args)]
pub struct List {
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
}

impl List {
    pub async fn run(self) -> anyhow::Result<u8> {
        let topology =
            choose_repository(Topology::load(&self.topology)?, self.repository.as_deref())?;
        let repo = open_repository(&topology)?;
        let cluster = topology.cluster.clone();
        let (listed, reach) =
            tokio::task::spawn_blocking(move || list_backups_reach(repo.as_ref(), &cluster))
                .await??;
        if self.json {
            crate::exit::emit(&format!(
                "{}\n",
                serde_json::to_string_pretty(&list_json(&topology.cluster, &listed, &reach))?
            ))?;
        } else {
            let mut out = format!(
                "{:<24} {:<10} {:<26} {:>6} {:>14} {:>11} {:>9}  {:<25}  chain\n",
                "backup",
                "status",
                "started",
                "shards",
                "rows",
                "stored",
                "block",
                "restorable to mark"
            );
            for l in &listed {
                out += &match &l.manifest {
                    Ok(m) => format!(
                        "{:<24} {:<10} {:<26} {:>6} {:>14} {:>11} {:>6} ms  {:<25}  {}\n",
                        m.backup_id,
                        m.status,
                        m.started_at.get(..19).unwrap_or(&m.started_at),
                        m.shards.len(),
                        render::count(m.shards.values().map(|s| s.rows).sum()),
                        render::bytes(m.shards.values().map(|s| s.bytes_stored).sum()),
                        m.cut.write_block_ms,
                        reach.get(&m.backup_id).map_or("-", |r| r.mark.as_str()),
                        match &m.chain {
                            None => "full".to_string(),
                            Some(c) => format!(
                                "incremental: {} -> {} ({} segments, mark {})",
                                c.base,
                                c.parent,
                                c.segments.len(),
                                c.mark
                            ),
                        }
                    ),
                    Err(e) => format!("{:<24} unreadable: {e}\n", l.id),
                };
            }
            crate::exit::emit(&out)?;
        }
        Ok(exit::SUCCESS)
    }
}
