use std::path::PathBuf;
use std::time::Duration;

use shard_agent::capture::{self, StreamState};
use shard_agent::position::Position;
use topology::{Engine, Topology};

use super::capture::{metrics_text, status_of, StreamStatus};
use super::open_repository;
use crate::exit;
use crate::pitr::list_marks;

/// Capture lag per shard and stream (stored position against the server's
/// current one), retained WAL per PostgreSQL slot, and the newest mark.
#[derive(Debug, clap::Args)]
pub struct Status {
    #[arg(short, long = "topology", value_name = "FILE")]
    topology: PathBuf,
    /// Print one JSON document on stdout.
    #[arg(long)]
    json: bool,
    /// Also write Prometheus metrics (text format) to this file.
    #[arg(long, value_name = "FILE")]
    metrics: Option<PathBuf>,
}

impl Status {
    pub async fn run(self) -> anyhow::Result<u8> {
        let topology = Topology::load(&self.topology)?;
        let repo = open_repository(&topology)?;
        let states = StreamState::all(repo.as_ref())?;
        let mut list: Vec<StreamStatus> = Vec::new();
        let mut problems = Vec::new();
        for st in &states {
            let Some(shard) = topology.shard(&st.shard) else {
                continue;
            };
            let (server, retained) = match st.engine {
                Engine::Mysql => (capture::mysql::current_position(shard).await.ok(), None),
                Engine::Postgres => {
                    match shard_agent::connect::postgres(
                        shard,
                        Some(&st.stream),
                        Duration::from_secs(5),
                    )
                    .await
                    {
                        Ok(client) => {
                            let lsn: Option<String> = client
                                .query_one("SELECT pg_current_wal_insert_lsn()::text", &[])
                                .await
                                .ok()
                                .and_then(|r| r.try_get(0).ok());
                            let pos = lsn
                                .and_then(|l| l.parse().ok())
                                .map(|lsn| Position::Postgres { lsn });
                            let retained = match &st.slot {
                                Some(slot) => {
                                    match capture::postgres::retained_wal(&client, shard, slot)
                                        .await
                                    {
                                        Ok(w) => Some(w),
                                        Err(e) => {
                                            problems.push(e.to_string());
                                            None
                                        }
                                    }
                                }
                                None => None,
                            };
                            (pos, retained)
                        }
                        Err(e) => {
                            problems.push(e.to_string());
                            (None, None)
                        }
                    }
                }
            };
            list.push(status_of(st, None, server, retained));
        }
        let marks = list_marks(repo.as_ref(), &topology.cluster)?;
        let newest = marks
            .last()
            .map(|m| (m.name.clone(), m.cut.taken_at.clone()));
        if let Some(path) = &self.metrics {
            std::fs::write(path, metrics_text(&list))
                .map_err(|e| anyhow::anyhow!("writing {}: {e}", path.display()))?;
        }
        if self.json {
            exit::emit(&format!(
                "{}\n",
                serde_json::to_string_pretty(&serde_json::json!({
                    "cluster": topology.cluster,
                    "streams": list,
                    "marks": marks.len(),
                    "newest_mark": newest.as_ref().map(|(n, t)| serde_json::json!({"name": n, "taken_at": t})),
                    "problems": problems,
                }))?
            ))?;
        } else {
            let mut out = format!("capture of cluster {}:\n", topology.cluster);
            if list.is_empty() {
                out.push_str("  not started (run `shardcut capture --once` or `--follow`)\n");
            }
            for s in &list {
                out.push_str(&format!(
                    "  {:<12} {:<10} stored to {}  server at {}  lag {} / {:.1} s{}\n",
                    s.shard,
                    s.stream,
                    s.progress,
                    s.server_position
                        .as_ref()
                        .map(|p| p.to_string())
                        .unwrap_or_else(|| "?".into()),
                    s.lag_bytes
                        .map(|b| format!("{b} B"))
                        .unwrap_or_else(|| "?".into()),
                    s.lag_seconds,
                    s.retained_wal_bytes
                        .map(|w| format!("  retained WAL {} KiB", w >> 10))
                        .unwrap_or_default()
                ));
            }
            match &newest {
                Some((n, t)) => {
                    out.push_str(&format!("  {} mark(s); newest {n} at {t}\n", marks.len()))
                }
                None => out.push_str("  no marks\n"),
            }
            for p in &problems {
                out.push_str(&format!("  problem: {p}\n"));
            }
            exit::emit(&out)?;
        }
        Ok(if problems.is_empty() {
            exit::SUCCESS
        } else {
            exit::FAILURE
        })
    }
}
