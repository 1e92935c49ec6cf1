use super::TopologyFile;
use std::path::PathBuf;
use std::time::Duration;

use super::restore::{finish, parse_map, record_outcome};
use crate::flow::drill::{drill, DrillPlan};
use crate::flow::history::{CliRun, JobKind};
use crate::progress::Bars;

/// Recovery drill: restore one shard into a scratch server, verify, score,
/// and measure RTO and RPO. The shard's databases on the scratch server are
/// replaced (a scratch server holds nothing else worth keeping).
#[derive(Debug, clap::Args)]
pub struct Drill {
    #[command(flatten)]
    topology: TopologyFile,
    /// The shard to drill.
    #[arg(long, value_name = "NAME")]
    shard: String,
    /// Topology of the scratch servers: the shard goes to the scratch shard
    /// of the same name, else to the one given by --map, else to the only
    /// scratch shard of the same engine.
    #[arg(long, value_name = "FILE")]
    target: PathBuf,
    /// Restore the shard into this scratch shard (`SRC=DST`).
    #[arg(long = "map", value_name = "SRC=DST", value_parser = parse_map)]
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
    /// Read the backups from this replica (the topology's `replicas:`)
    /// instead of the main repository: a failover, or a drill of the
    /// second region.
    #[arg(long, value_name = "NAME")]
    repository: Option<String>,
    /// Test only: wait between the restore and its verification.
    #[arg(long, hide = true, value_parser = topology::parse_duration)]
    test_pause_before_verify: Option<Duration>,
}

impl Drill {
    pub async fn run(self) -> anyhow::Result<u8> {
        let plan = DrillPlan {
            source: &self.topology,
            repository: self.repository.as_deref(),
            target: &self.target,
            shard: &self.shard,
            backup: &self.backup,
            map: self.map.clone(),
            pause_before_verify: self.test_pause_before_verify,
        };
        // Recorded where it reads from: a drill of a replica (a failover)
        // must not wait on the main region.
        let topology = crate::flow::copy::choose_repository(
            topology::Topology::load(&self.topology)?,
            self.repository.as_deref(),
        )?;
        let mut run = CliRun::start(&topology, JobKind::Drill);
        run.record.shard = Some(self.shard.clone());
        let outcome = match drill(&plan, &Bars).await {
            Ok(o) => o,
            Err(e) => {
                run.finish(Some(crate::exit::one_line(&e)), None, None)
                    .await;
                return Err(e);
            }
        };
        record_outcome(run, &outcome, "drill").await;
        finish(outcome, "drill", self.json, self.report.as_deref())
    }
}
