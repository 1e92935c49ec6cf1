use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use serde_json::json;
use shard_agent::manifest::{keys, Mark, MANIFEST_FORMAT};
use shard_agent::repo::{RepoError, Repository};
use shard_agent::session::CutOptions;
use topology::Topology;

use super::backup::{dump_all, prepare_all};
use super::open_repository;
use crate::cut::{global_cut, CutTestHooks};
use crate::exit::{self, InvalidInput};

/// Record a consistent restore point: the same bounded global write block
/// as a backup's cut, every shard's position recorded under it, and every
/// table's row count and content hash read from snapshots opened under it
/// (after the block is released). Nothing is dumped.
#[derive(Debug, clap::Args)]
pub struct MarkCmd {
    #[arg(short, long = "topology", value_name = "FILE")]
    topology: PathBuf,
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
        let mark = take_mark(&topology, &repo, &self.name, self.connect_timeout).await?;
        if self.json {
            exit::emit(&format!(
                "{}\n",
                serde_json::to_string_pretty(&summary(&mark))?
            ))?;
        } else {
            let mut out = format!(
                "mark {} of cluster {}: commits blocked {} ms cluster-wide, at {}\n",
                mark.name, mark.cluster, mark.cut.write_block_ms, mark.cut.taken_at
            );
            for (name, c) in &mark.cut.shards {
                let tables = mark
                    .shards
                    .get(name)
                    .map(|s| s.table_list.len())
                    .unwrap_or(0);
                out.push_str(&format!(
                    "  {name:<12} {tables:>4} tables hashed  {}\n",
                    c.position
                ));
            }
            exit::emit(&out)?;
        }
        Ok(exit::SUCCESS)
    }
}

pub fn summary(m: &Mark) -> serde_json::Value {
    let shards: serde_json::Map<String, serde_json::Value> = m
        .cut
        .shards
        .iter()
        .map(|(name, c)| {
            let s = m.shards.get(name);
            (
                name.clone(),
                json!({
                    "position": c.position,
                    "write_block_ms": c.write_block_ms,
                    "tables": s.map(|s| s.table_list.len()).unwrap_or(0),
                    "rows": s.map(|s| s.table_list.iter().map(|t| t.rows).sum::<u64>()).unwrap_or(0),
                }),
            )
        })
        .collect();
    json!({
        "name": m.name,
        "cluster": m.cluster,
        "taken_at": m.cut.taken_at,
        "write_block_ms": m.cut.write_block_ms,
        "attempts": m.cut.attempts,
        "shards": shards,
    })
}

fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 128
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-' || b == b'.')
        && !name.starts_with('.')
}

/// Takes and stores a mark; refuses a name already used.
pub async fn take_mark(
    topology: &Topology,
    repo: &Arc<dyn Repository>,
    name: &str,
    connect_timeout: Duration,
) -> anyhow::Result<Mark> {
    if !valid_name(name) {
        return Err(InvalidInput(format!(
            "mark name `{name}`: use letters, digits, `_`, `-` and `.` (not first)"
        ))
        .into());
    }
    let key = keys::mark(name);
    match repo.get(&key) {
        Ok(_) => {
            return Err(InvalidInput(format!(
                "mark `{name}` already exists in {}",
                repo.location()
            ))
            .into())
        }
        Err(RepoError::NotFound { .. }) => {}
        Err(e) => return Err(e.into()),
    }
    let opts = CutOptions {
        write_block_timeout: topology.defaults.write_block_timeout,
        write_block_lease: topology.defaults.write_block_lease,
        connect_timeout,
    };
    let mut sessions = prepare_all(topology, &opts).await?;
    let cut = global_cut(&mut sessions, &CutTestHooks::default()).await?;
    let mut shards = dump_all(
        sessions,
        repo,
        &format!("mark-{name}"),
        topology.defaults.compression,
        250_000,
        true,
    )
    .await
    .map_err(|causes| anyhow::anyhow!("mark {name} failed and was not stored: {causes}"))?;
    for s in shards.values_mut() {
        s.schema.clear();
        for t in &mut s.table_list {
            t.chunks.clear();
            t.bytes_stored = 0;
        }
        s.bytes_stored = 0;
    }
    let mark = Mark {
        format: MANIFEST_FORMAT,
        name: name.to_string(),
        cluster: topology.cluster.clone(),
        topology_digest: topology.digest(),
        tool_version: env!("CARGO_PKG_VERSION").to_string(),
        cut,
        hashed: true,
        shards,
    };
    let data = serde_json::to_vec_pretty(&mark)?;
    let r = repo.clone();
    tokio::task::spawn_blocking(move || {
        r.put_if_absent(&key, &data)?;
        r.sync_names(&[&key])
    })
    .await??;
    Ok(mark)
}
