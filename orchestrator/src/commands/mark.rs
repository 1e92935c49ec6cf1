use super::TopologyFile;
use std::time::Duration;

use topology::Topology;

use crate::exit;
use crate::flow::mark::take_mark;
use crate::flow::open_repository;
use crate::progress::Bars;
use crate::render::mark::{summary, summary_text};

/// Record a consistent restore point: the same bounded global write block
/// as a backup's cut, every shard's position recorded under it, and every
/// table's row count and content hash read from snapshots opened under it
/// (after the block is released). Nothing is dumped.
#[derive(Debug, clap::Args)]
pub struct MarkCmd {
    #[command(flatten)]
    topology: TopologyFile,
    /// The mark's name (letters, digits, `_`, `-`, `.`); unique per repository.
    #[arg(long, value_name = "NAME")]
    name: String,
    /// Print one JSON document on stdout.
    #[arg(long)]
    json: bool,
    #[arg(long, default_value = "5s", value_parser = topology::parse_duration, value_name = "DURATION")]
    connect_timeout: Duration,
}

impl MarkCmd {
    pub async fn run(self) -> anyhow::Result<u8> {
        let topology = Topology::load(&self.topology)?;
        let repo = open_repository(&topology)?;
        let mark = take_mark(&topology, &repo, &self.name, self.connect_timeout, &Bars).await?;
        if self.json {
            exit::emit(&format!(
                "{}\n",
                serde_json::to_string_pretty(&summary(&mark))?
            ))?;
        } else {
            exit::emit(&summary_text(&mark))?;
        }
        Ok(exit::SUCCESS)
    }
}
