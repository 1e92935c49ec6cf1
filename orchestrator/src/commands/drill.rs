use std::path::PathBuf;
use std::time::Duration;

use super::restore::{restore_verified, Plan};

/// Recovery drill: restore one shard into a scratch server, verify, score,
/// and measure RTO and RPO. The shard's databases on the scratch server are
/// replaced (a scratch server holds nothing else worth keeping).
#[derive(Debug, clap::Args)]
pub struct Drill {
    /// The cluster's topology file.
    #[arg(short, long = "topology", value_name = "FILE")]
    topology: PathBuf,
    /// The shard to drill.
    #[arg(long, value_name = "NAME")]
    shard: String,
    /// Topology of the scratch servers: the shard goes to the scratch shard
    /// of the same name, else to the one given by --map, else to the only
    /// scratch shard of the same engine.
    #[arg(long, value_name = "FILE")]
    target: PathBuf,
    /// Restore the shard into this scratch shard (`SRC=DST`).
    #[arg(long = "map", value_name = "SRC=DST", value_parser = super::restore::parse_map)]
    map: Vec<(String, String)>,
    /// Backup ID, or `latest`.
    #[arg(long, value_name = "ID", default_value = "latest")]
    backup: String,
    /// Write report.json, report.html and metrics.prom into this directory.
    #[arg(long, value_name = "DIR")]
    report: Option<PathBuf>,
    /// Print one JSON document on stdout.
    #[arg(long)]
    json: bool,
    /// Test only: wait between the restore and its verification.
    #[arg(long, hide = true, value_parser = topology::parse_duration)]
    test_pause_before_verify: Option<Duration>,
}

impl Drill {
    pub async fn run(self) -> anyhow::Result<u8> {
        let outcome = restore_verified(&Plan {
            source: &self.topology,
            target: &self.target,
            backup: &self.backup,
            shards: vec![self.shard.clone()],
            map: self.map.clone(),
            auto_map: true,
            until: None,
            overwrite: true,
            binlog: false,
            pause_before_verify: self.test_pause_before_verify,
            select: Default::default(),
        })
        .await?;
        outcome.finish("drill", self.json, self.report.as_deref())
    }
}
