//! A mark: a consistent restore point. The same bounded global write
//! block as a backup's cut, every shard's position recorded under it, and
//! every table's row count and content hash read from snapshots opened
//! under it (after the block is released). Nothing is dumped.

use std::sync::Arc;
use std::time::Duration;

use shard_agent::manifest::{keys, Mark, MANIFEST_FORMAT};
use shard_agent::repo::Repository;
use topology::Topology;

use super::steps::{cut_options, dump_all, prepare_all, DumpPlan};
use super::Observer;
use crate::cut::{global_cut, CutTestHooks};
use crate::exit::InvalidInput;

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
    observer: &dyn Observer,
) -> anyhow::Result<Mark> {
    if !valid_name(name) {
        return Err(InvalidInput(format!(
            "mark name `{name}`: use letters, digits, `_`, `-` and `.` (not first)"
        ))
        .into());
    }
    let key = keys::mark(name);
    if repo.exists(&key)? {
        return Err(InvalidInput(format!(
            "mark `{name}` already exists in {}",
            repo.location()
        ))
        .into());
    }
    let mut sessions = prepare_all(topology, &cut_options(topology, connect_timeout)).await?;
    let cut = global_cut(&mut sessions, &CutTestHooks::default()).await?;
    let plan = DumpPlan {
        id: &format!("mark-{name}"),
        compression: topology.defaults.compression,
        chunk_rows: 250_000,
        digest_only: true,
    };
    let mut shards = dump_all(sessions, repo, &plan, observer)
        .await
        .map_err(|causes| anyhow::anyhow!("mark {name} failed and was not stored: {causes}"))?;
    for s in shards.values_mut() {
        s.schema.clear();
        s.bundles.clear();
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
