use super::TopologyFile;
use std::time::Duration;

use topology::Topology;

use crate::cut::CutTestHooks;
use crate::exit;
use crate::flow::backup::{backup, BackupOptions};
use crate::flow::history::{backup_figures, CliRun, JobKind};
use crate::progress::Bars;
use crate::render::backup::{summary_json, summary_text};

/// Take a consistent backup of every shard of the cluster.
#[derive(Debug, clap::Args)]
pub struct Backup {
    #[command(flatten)]
    topology: TopologyFile,
    /// Print one JSON document on stdout (logs go to stderr).
    #[arg(long)]
    json: bool,
    /// Record a mark plus the changes captured since the previous backup
    /// instead of dumping everything (needs `shardcut capture` running
    /// since the chain's full backup).
    #[arg(long)]
    incremental: bool,
    /// Rows per primary-key range; a table holding more than a worker's share
    /// of its shard (1/parallelism of its rows) is split and dumped in parallel.
    #[arg(long, default_value_t = 250_000, value_name = "ROWS")]
    chunk_rows: u64,
    /// How long to wait for each shard to accept a connection.
    #[arg(long, default_value = "5s", value_parser = topology::parse_duration, value_name = "DURATION")]
    connect_timeout: Duration,
    /// Test only: hold the write block this long after marking.
    #[arg(long, hide = true, value_parser = topology::parse_duration)]
    test_hold_block: Option<Duration>,
    /// Test only: take per-shard snapshots one after another without a write block.
    #[arg(long, hide = true)]
    test_no_write_block: bool,
    /// Test only: wait this long between the cut and the dump.
    #[arg(long, hide = true, value_parser = topology::parse_duration)]
    test_pause_before_dump: Option<Duration>,
    /// Test only: wait this long between reading the catalogs and the cut.
    #[arg(long, hide = true, value_parser = topology::parse_duration)]
    test_pause_before_cut: Option<Duration>,
}

impl Backup {
    pub async fn run(self) -> anyhow::Result<u8> {
        let topology = Topology::load(&self.topology)?;
        let opts = BackupOptions {
            incremental: self.incremental,
            chunk_rows: self.chunk_rows,
            connect_timeout: self.connect_timeout,
            hooks: CutTestHooks {
                hold_block: self.test_hold_block,
                no_write_block: self.test_no_write_block,
            },
            pause_before_dump: self.test_pause_before_dump,
            pause_before_cut: self.test_pause_before_cut,
            id: None,
        };
        let kind = if self.incremental {
            JobKind::Incremental
        } else {
            JobKind::Backup
        };
        let mut run = CliRun::start(&topology, kind);
        let manifest = match backup(&topology, &opts, &Bars).await {
            Ok(m) => m,
            Err(e) => {
                run.finish(Some(exit::one_line(&e)), None, None).await;
                return Err(e);
            }
        };
        run.record.backup_id = Some(manifest.backup_id.clone());
        run.record.figures = backup_figures(&manifest);
        run.finish(None, Some(summary_json(&manifest)), None).await;
        if self.json {
            exit::emit(&format!(
                "{}\n",
                serde_json::to_string_pretty(&summary_json(&manifest))?
            ))?;
        } else {
            exit::emit(&summary_text(&manifest))?;
        }
        Ok(exit::SUCCESS)
    }
}
