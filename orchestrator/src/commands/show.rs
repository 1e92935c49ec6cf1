use super::TopologyFile;
use topology::Topology;

use crate::flow::copy::choose_repository;

use crate::flow::{find_backup, open_repository};
use crate::render::backup::summary_text;
use crate::{exit, render};

/// Show one backup: its cut, shards and tables (`latest` for the newest);
/// or a mark (`mark:NAME`): its positions and the expected replay time of
/// a restore to it.
#[derive(Debug, clap::Args)]
pub struct Show {
    /// Backup ID, `latest`, or `mark:NAME`.
    id: String,
    #[command(flatten)]
    topology: TopologyFile,
    /// Print the whole manifest as JSON on stdout.
    #[arg(long)]
    json: bool,
    /// Read the backups from this replica (the topology's `replicas:`)
    /// instead of the main repository: a failover, or a drill of the
    /// second region.
    #[arg(long, value_name = "NAME")]
    repository: Option<String>,
}

impl Show {
    pub async fn run(self) -> anyhow::Result<u8> {
        let topology =
            choose_repository(Topology::load(&self.topology)?, self.repository.as_deref())?;
        let repo = open_repository(&topology)?;
        if let Some(name) = self.id.strip_prefix("mark:") {
            return show_mark(repo.as_ref(), &topology.cluster, name, self.json);
        }
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

/// A mark: when it was taken, each shard's position, and what a restore to
/// it would replay and how long that is expected to take.
fn show_mark(
    repo: &dyn shard_agent::repo::Repository,
    cluster: &str,
    name: &str,
    json: bool,
) -> anyhow::Result<u8> {
    let mark = crate::pitr::find_mark(repo, cluster, name)?;
    let expected =
        crate::flow::status::expected_replay(repo, cluster, &crate::pitr::Until::Mark(name.into()))
            .map_err(|e| exit::one_line(&e));
    if json {
        let doc = serde_json::json!({
            "mark": mark,
            "expected_replay": match &expected {
                Ok(e) => serde_json::json!(e),
                Err(why) => serde_json::json!({"unknown": why}),
            },
        });
        exit::emit(&format!("{}\n", serde_json::to_string_pretty(&doc)?))?;
        return Ok(exit::SUCCESS);
    }
    let mut out = format!(
        "mark {} of cluster {}, taken at {}\n",
        mark.name, mark.cluster, mark.cut.taken_at
    );
    for (shard, s) in &mark.cut.shards {
        out += &format!("  {shard:<12} {}\n", s.position);
    }
    match &expected {
        Ok(e) => out += &format!("{}\n", crate::rto::describe(e)),
        Err(why) => out += &format!("expected replay: unknown ({why})\n"),
    }
    exit::emit(&out)?;
    Ok(exit::SUCCESS)
}
