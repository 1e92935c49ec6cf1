use super::TopologyFile;
use std::time::Duration;

use topology::Topology;

use crate::exit;
use crate::flow::check::check;
use crate::render::check::human;

/// Check that every shard is reachable and ready for backup, and say what to fix.
#[derive(Debug, clap::Args)]
pub struct Check {
    #[command(flatten)]
    topology: TopologyFile,
    /// Print one JSON document on stdout instead of the report.
    #[arg(long)]
    json: bool,
    /// How long to wait for each shard to accept a connection.
    #[arg(long, value_name = "DURATION", default_value = "5s", value_parser = parse_timeout)]
    connect_timeout: Duration,
}

fn parse_timeout(s: &str) -> Result<Duration, String> {
    topology::parse_duration(s)
}

impl Check {
    pub async fn run(self) -> anyhow::Result<u8> {
        let topology = Topology::load(&self.topology)?;
        let report = check(&topology, &self.topology, self.connect_timeout).await?;
        if self.json {
            exit::emit(&format!("{}\n", serde_json::to_string_pretty(&report)?))?;
        } else {
            exit::emit(&human(&report))?;
        }
        Ok(if report.ready {
            exit::SUCCESS
        } else {
            exit::FAILURE
        })
    }
}
