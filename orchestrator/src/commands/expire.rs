use super::TopologyFile;
use std::time::Duration;

use topology::Topology;

use crate::exit;
use crate::flow::expire::{expire, ExpireOptions};
use crate::flow::history::{CliRun, JobKind};
use crate::render::expire::{summary, text};

/// Delete old backups, marks and captured segments, never anything a kept
/// backup or a restorable mark still needs.
///
/// Kept: the newest `--keep-last` backups, those started within
/// `--keep-within`, and the full base of every kept incremental. A mark is
/// kept while a kept full backup precedes it (it can still be restored
/// to); a segment while it holds changes after the oldest kept full
/// backup's cut on its shard.
#[derive(Debug, clap::Args)]
pub struct Expire {
    #[command(flatten)]
    topology: TopologyFile,
    /// Keep this many newest backups (at least 1).
    #[arg(long, value_name = "N")]
    keep_last: usize,
    /// Also keep every backup started within this long.
    #[arg(long, value_parser = topology::parse_duration, value_name = "DURATION")]
    keep_within: Option<Duration>,
    /// Say what would be deleted; delete nothing.
    #[arg(long)]
    dry_run: bool,
    /// Print one JSON document on stdout.
    #[arg(long)]
    json: bool,
}

impl Expire {
    pub async fn run(self) -> anyhow::Result<u8> {
        let opts = ExpireOptions {
            keep_last: self.keep_last,
            keep_within: self.keep_within,
            dry_run: self.dry_run,
        };
        if opts.keep_last == 0 {
            return Err(exit::InvalidInput(
                "--keep-last must be at least 1: expire never deletes every backup".into(),
            )
            .into());
        }
        let topology = Topology::load(&self.topology)?;
        // A dry run changes nothing: it is a question, not a job to record.
        let run = match self.dry_run {
            true => None,
            false => Some(CliRun::start(&topology, JobKind::Expire)),
        };
        let expired = match expire(&topology, &opts).await {
            Ok(e) => e,
            Err(e) => {
                if let Some(run) = run {
                    run.finish(Some(exit::one_line(&e)), None, None).await;
                }
                return Err(e);
            }
        };
        if let Some(run) = run {
            run.finish(None, Some(summary(&expired)), None).await;
        }
        if self.json {
            exit::emit(&format!(
                "{}\n",
                serde_json::to_string_pretty(&summary(&expired))?
            ))?;
        } else {
            exit::emit(&text(&expired))?;
        }
        Ok(exit::SUCCESS)
    }
}
