//! A recovery drill: one shard of a backup restored into a scratch server,
//! verified and scored, with its RTO and RPO. The shard's databases on the
//! scratch server are replaced (a scratch server holds nothing else worth
//! keeping).

use std::path::Path;
use std::time::Duration;

use super::restore::{restore_verified, Outcome, Plan};
use super::Observer;

/// What to drill where.
pub struct DrillPlan<'a> {
    pub source: &'a Path,
    /// Read from this replica instead of the main repository.
    pub repository: Option<&'a str>,
    /// Topology of the scratch servers.
    pub target: &'a Path,
    pub shard: &'a str,
    /// Backup ID, or `latest`.
    pub backup: &'a str,
    /// Source shard → scratch shard, where the names differ.
    pub map: Vec<(String, String)>,
    /// Test only: wait between the restore and its verification.
    pub pause_before_verify: Option<Duration>,
}

/// Restores the shard into the scratch shard of the same name, else the
/// one `map` names, else the only scratch shard of its engine.
pub async fn drill(plan: &DrillPlan<'_>, observer: &dyn Observer) -> anyhow::Result<Outcome> {
    let restore = Plan {
        source: plan.source,
        repository: plan.repository,
        target: plan.target,
        backup: plan.backup,
        shards: vec![plan.shard.to_string()],
        map: plan.map.clone(),
        auto_map: true,
        until: None,
        overwrite: true,
        binlog: false,
        pause_before_verify: plan.pause_before_verify,
        select: Default::default(),
    };
    restore_verified(&restore, observer).await
}
