use std::path::PathBuf;

use topology::Topology;

use crate::flow::{find_backup, open_repository};
use crate::render::backup::summary_text;
use crate::{exit, render};

/// Show one backup: its cut, shards and tables (`latest` for the newest).
#[derive(Debug, clap::Args)]
pub struct Show {
    /// Backup ID, or `latest`.
    id: String,
    /// The cluster's topology file.
    #[arg(
        short,
        long = "topology",
        value_name = "FILE",
        env = "SHARDCUT_TOPOLOGY"
    )]
    topology: PathBuf,
    /// Print the whole manifest as JSON on stdout.
    #[arg(long)]
    json: bool,
}

impl Show {
    pub async fn run(self) -> anyhow::Result<u8> {
        let topology = Topology::load(&self.topology)?;
        let repo = open_repository(&topology)?;
        let (cluster, id) = (topology.cluster.clone(), self.id.clone());
        let m = tokio::task::spawn_blocking(move || find_backup(repo.as_ref(), &cluster, &id))
            .await??;
        if self.json {
            crate::exit::emit(&format!("{}\n", serde_json::to_string_pretty(&m)?))?;
            return Ok(exit::SUCCESS);
        }
        let mut out = summary_text(&m);
        for (name, s) in &m.shards {
            out += &format!("\n{name} ({}):\n", s.server);
            for t in &s.table_list {
                out += &format!(
                    "  {:<40} {:>12} rows {:>10} -> {:>10} in {:>3} chunk(s)  hash {}\n",
                    t.qualified(),
                    render::count(t.rows),
                    render::bytes(t.bytes_raw),
                    render::bytes(t.bytes_stored),
                    t.chunks.len(),
                    t.content_hash
                );
            }
        }
        crate::exit::emit(&out)?;
        Ok(exit::SUCCESS)
    }
}
