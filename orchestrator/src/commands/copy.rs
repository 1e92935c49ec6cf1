use super::TopologyFile;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use topology::Topology;

use crate::exit;
use crate::flow::copy::{copy, CopyReport, Which};

/// Copy backups, capture segments and marks into a replica repository
/// (the topology's `replicas:`, another region): only what it lacks, each
/// object confirmed by the replica's own hash before its manifest is written.
#[derive(Debug, clap::Args)]
pub struct Copy {
    #[command(flatten)]
    topology: TopologyFile,
    /// The replica to copy into.
    #[arg(long, value_name = "NAME")]
    to: String,
    /// The backup to copy (`latest` for the newest); its chain's backups
    /// go with an incremental one. Default: latest.
    #[arg(long, value_name = "ID", conflicts_with = "all")]
    backup: Option<String>,
    /// Copy every backup.
    #[arg(long)]
    all: bool,
    /// Keep copying new segments, marks and backups as they appear, until
    /// SIGINT or SIGTERM (implies --all).
    #[arg(long)]
    follow: bool,
    /// With --follow: the wait between rounds.
    #[arg(long, value_name = "DURATION", default_value = "10s", value_parser = topology::parse_duration)]
    interval: Duration,
    /// Print one JSON document per round on stdout.
    #[arg(long)]
    json: bool,
}

impl Copy {
    pub async fn run(self) -> anyhow::Result<u8> {
        let topology = Topology::load(&self.topology)?;
        let which = match (&self.backup, self.all || self.follow) {
            (_, true) => Which::All,
            (Some(id), false) if id != "latest" => Which::Id(id.clone()),
            _ => Which::Latest,
        };
        let stop = Arc::new(AtomicBool::new(false));
        if self.follow {
            super::capture::stop_on_signal(stop.clone());
        }
        loop {
            let report = copy(&topology, &self.to, &which).await?;
            self.show(&report)?;
            if !self.follow {
                return Ok(exit::SUCCESS);
            }
            let until = tokio::time::Instant::now() + self.interval;
            while tokio::time::Instant::now() < until {
                if stop.load(Ordering::Relaxed) {
                    return Ok(exit::SUCCESS);
                }
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            if stop.load(Ordering::Relaxed) {
                return Ok(exit::SUCCESS);
            }
        }
    }

    fn show(&self, r: &CopyReport) -> anyhow::Result<()> {
        if self.json {
            let line = if self.follow {
                serde_json::to_string(r)?
            } else {
                serde_json::to_string_pretty(r)?
            };
            return Ok(exit::emit(&format!("{line}\n"))?);
        }
        let mut out = format!(
            "copy to {} ({}): {} object(s), {} copied and verified; {} already there\n",
            r.replica,
            r.repository,
            r.objects_copied,
            crate::render::bytes(r.bytes_copied),
            r.objects_skipped
        );
        for id in &r.backups_copied {
            out.push_str(&format!("  backup {id}: copied\n"));
        }
        for id in &r.backups_present {
            out.push_str(&format!("  backup {id}: already there\n"));
        }
        for id in &r.partial_copies_removed {
            out.push_str(&format!(
                "  backup {id}: a partial copy removed (a copy stopped before its manifest; the source no longer has it)\n"
            ));
        }
        out.push_str(&format!(
            "  lag: {} backup(s) and {} capture object(s) not on the replica; newest there: {}\n",
            r.lag.backups_missing.len(),
            r.lag.capture_objects_missing,
            r.lag.newest_backup.as_deref().unwrap_or("none")
        ));
        Ok(exit::emit(&out)?)
    }
}
