use super::TopologyFile;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use topology::Topology;

use crate::exit;
use crate::flow::capture::{capture, remove, CaptureMode, CaptureOptions};
use crate::flow::status::StreamStatus;
use crate::progress::Bars;
use crate::render::capture::{metrics_text, streams_text};

/// Capture every shard's changes (binlog, logical decoding) into the
/// repository, from the newest backup's cut onward, so the cluster can be
/// restored to a mark after that backup.
#[derive(Debug, clap::Args)]
#[command(group(clap::ArgGroup::new("mode").required(true).args(["once", "follow", "remove"])))]
pub struct Capture {
    #[command(flatten)]
    topology: TopologyFile,
    /// Take a mark, catch every shard up to it, and exit.
    #[arg(long)]
    once: bool,
    /// Run until SIGTERM/SIGINT, catching up every `--interval`; the
    /// current round (and its segment) finishes before exit.
    #[arg(long)]
    follow: bool,
    /// Stop capturing: drop the PostgreSQL slots and publications (the
    /// server stops retaining WAL for them) and forget the capture state.
    /// Stored segments stay.
    #[arg(long)]
    remove: bool,
    /// Only these shards (repeatable).
    #[arg(long = "shard", value_name = "NAME")]
    shards: Vec<String>,
    /// With --once: do not take a mark first (only catch up).
    #[arg(long)]
    no_mark: bool,
    /// With --follow: pause between rounds.
    #[arg(long, default_value = "1s", value_parser = topology::parse_duration, value_name = "DURATION")]
    interval: Duration,
    /// With --follow: also take a mark (named auto-…) this often.
    #[arg(long, value_parser = topology::parse_duration, value_name = "DURATION")]
    mark_every: Option<Duration>,
    /// Warn when a PostgreSQL slot retains more WAL than this (MiB).
    #[arg(long, default_value_t = 1024, value_name = "MIB")]
    warn_retained_wal_mib: u64,
    /// Write Prometheus metrics (text format) to this file after every round.
    #[arg(long, value_name = "FILE")]
    metrics: Option<PathBuf>,
    /// Print one JSON document on stdout.
    #[arg(long)]
    json: bool,
}

impl Capture {
    pub async fn run(self) -> anyhow::Result<u8> {
        let topology = Topology::load(&self.topology)?;
        if self.remove {
            let removed = remove(&topology, &self.shards).await?;
            let mut out = String::new();
            for (shard, stream) in &removed {
                out.push_str(&format!(
                    "removed capture of {shard} {stream} (segments kept)\n"
                ));
            }
            if removed.is_empty() {
                out.push_str("no capture to remove\n");
            }
            exit::emit(&out)?;
            return Ok(exit::SUCCESS);
        }
        let stop = Arc::new(AtomicBool::new(false));
        let mode = if self.once {
            CaptureMode::Once {
                mark: !self.no_mark,
            }
        } else {
            stop_on_signal(stop.clone());
            CaptureMode::Follow {
                interval: self.interval,
                mark_every: self.mark_every,
            }
        };
        let opts = CaptureOptions {
            shards: self.shards.clone(),
            mode,
            warn_retained_wal_bytes: self.warn_retained_wal_mib << 20,
            stop,
        };
        let metrics = self.metrics.clone();
        let mut after_round = |list: &[StreamStatus]| match &metrics {
            Some(path) => write_metrics(path, list),
            None => Ok(()),
        };
        let outcome = capture(&topology, &opts, &Bars, &mut after_round).await?;
        if let Some(m) = &outcome.mark {
            if !self.json {
                eprintln!("capture: mark {m} taken and reached on every shard");
            }
        }
        if self.json {
            exit::emit(&format!(
                "{}\n",
                serde_json::to_string_pretty(
                    &serde_json::json!({ "mark": outcome.mark, "streams": outcome.streams })
                )?
            ))?;
        } else {
            exit::emit(&streams_text(&outcome.streams))?;
        }
        Ok(exit::SUCCESS)
    }
}

/// Sets `stop` on SIGTERM or SIGINT: the current round (and its segment)
/// finishes before capture exits.
pub(super) fn stop_on_signal(stop: Arc<AtomicBool>) {
    tokio::spawn(async move {
        let mut term =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(s) => s,
                Err(_) => return,
            };
        tokio::select! {
            _ = term.recv() => {}
            _ = tokio::signal::ctrl_c() => {}
        }
        eprintln!("capture: stopping after the current round");
        stop.store(true, Ordering::Relaxed);
    });
}

fn write_metrics(path: &std::path::Path, list: &[StreamStatus]) -> anyhow::Result<()> {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, metrics_text(list))
        .map_err(|e| anyhow::anyhow!("writing {}: {e}", tmp.display()))?;
    std::fs::rename(&tmp, path).map_err(|e| anyhow::anyhow!("writing {}: {e}", path.display()))?;
    Ok(())
}
