//! The expected replay time of a point-in-time restore, from the replay
//! rate a shard last achieved: every restore that replays captured changes
//! (`--until`, or a restore or drill of an incremental backup) records its
//! rate in the repository (kept here, with the estimate's types and text);
//! `flow::status::expected_replay` divides the transactions waiting between
//! the base backup and a mark by it, for `status` and `show mark:NAME`, so a
//! DBA knows the recovery time before the bad day.

use serde::{Deserialize, Serialize};
use shard_agent::repo::Repository;

/// Where the rates are kept, one file a source shard.
const RATES: &str = "replay-rates/";

/// The most a rate file may take (shardcut writes a few hundred bytes);
/// a larger one is no measurement, and is not read.
const RATE_MAX: u64 = 64 << 10;

/// A replay smaller than this measures connection set-up more than
/// replay: it replaces a measurement only when there is none, or a smaller
/// one.
const SIZEABLE: u64 = 1000;

/// What one replay of a shard's captured changes achieved.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ReplayRate {
    pub shard: String,
    pub transactions: u64,
    pub statements: u64,
    pub seconds: f64,
    /// RFC 3339.
    pub measured_at: String,
    /// What the replay said about the target's rate (such as a buffer
    /// pool far smaller than its tables).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub notes: Vec<String>,
    /// Of `statements`, the single-row changes applied in key order.
    #[serde(default)]
    pub reordered: u64,
}

impl ReplayRate {
    /// Source transactions replayed per second; `None` for a measurement
    /// that cannot give one.
    pub fn per_second(&self) -> Option<f64> {
        (self.seconds > 0.0 && self.transactions > 0 && self.seconds.is_finite())
            .then(|| self.transactions as f64 / self.seconds)
    }
}

fn key(shard: &str) -> String {
    format!(
        "{RATES}{}.json",
        shard_agent::manifest::keys::segment(shard)
    )
}

/// The rate last recorded for `shard`. The file comes from the repository:
/// unreadable, or naming another shard, it is no measurement.
pub fn load(repo: &dyn Repository, shard: &str) -> Option<ReplayRate> {
    let data = repo.get_at_most(&key(shard), RATE_MAX).ok()?;
    let rate: ReplayRate = serde_json::from_slice(&data).ok()?;
    (rate.shard == shard && rate.per_second().is_some()).then_some(rate)
}

/// Records `rate` unless it is too small to replace what is there.
pub fn record(repo: &dyn Repository, rate: &ReplayRate) -> anyhow::Result<()> {
    if rate.per_second().is_none() {
        return Ok(());
    }
    if let Some(old) = load(repo, &rate.shard) {
        if rate.transactions < SIZEABLE && old.transactions >= rate.transactions {
            return Ok(());
        }
    }
    repo.put(&key(&rate.shard), &serde_json::to_vec_pretty(rate)?)?;
    Ok(())
}

/// One shard's expected replay to a mark.
#[derive(Debug, Clone, Serialize)]
pub struct Expected {
    pub shard: String,
    /// Captured transactions between the base backup's cut and the mark
    /// (whole segments: an upper bound by at most one segment).
    pub transactions: u64,
    /// `None` until a restore has replayed this shard's changes.
    pub seconds: Option<f64>,
    pub rate: Option<ReplayRate>,
}

/// The replay a restore `--until` would do: its mark, its base backup and,
/// per shard, the transactions to replay and the expected time.
#[derive(Debug, Clone, Serialize)]
pub struct Estimate {
    pub mark: String,
    pub base: String,
    pub shards: Vec<Expected>,
    /// Shards replay in parallel: the slowest one's time (`None` when a
    /// shard has no measured rate).
    pub seconds: Option<f64>,
}

/// One line for humans: "about 12 s (34,567 transactions at 2,880/s on
/// mysql-0 …)".
pub fn describe(e: &Estimate) -> String {
    let per: Vec<String> = e
        .shards
        .iter()
        .map(|s| match (&s.rate, s.seconds) {
            (Some(r), Some(secs)) => format!(
                "{}: {} transaction(s), {:.1} s at {:.0}/s (measured {})",
                s.shard,
                crate::render::count(s.transactions),
                secs,
                r.per_second().unwrap_or(0.0),
                r.measured_at
            ),
            _ => format!(
                "{}: {} transaction(s), rate not measured yet (a restore --until, or a drill of an incremental backup, measures it)",
                s.shard,
                crate::render::count(s.transactions)
            ),
        })
        .collect();
    let total = match e.seconds {
        Some(s) => format!("about {s:.1} s"),
        None => "unknown".to_string(),
    };
    format!(
        "expected replay to mark {} from backup {}: {total}\n  {}",
        e.mark,
        e.base,
        per.join("\n  ")
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rate(shard: &str, transactions: u64, seconds: f64) -> ReplayRate {
        ReplayRate {
            reordered: 0,
            shard: shard.into(),
            transactions,
            statements: transactions * 4,
            seconds,
            measured_at: "2026-12-04T00:00:00Z".into(),
            notes: Vec::new(),
        }
    }

    #[test]
    fn a_small_replay_does_not_replace_a_sizeable_measurement() {
        let repo = shard_agent::repo::MemoryRepository::default();
        record(&repo, &rate("a", 50_000, 10.0)).unwrap();
        record(&repo, &rate("a", 12, 0.5)).unwrap();
        assert_eq!(load(&repo, "a").unwrap().transactions, 50_000);
        record(&repo, &rate("a", 20_000, 2.0)).unwrap();
        assert_eq!(load(&repo, "a").unwrap().per_second(), Some(10_000.0));
        // Nothing measured: nothing recorded.
        record(&repo, &rate("b", 0, 0.0)).unwrap();
        assert!(load(&repo, "b").is_none());
    }

    #[test]
    fn a_rate_file_naming_another_shard_is_no_measurement() {
        let repo = shard_agent::repo::MemoryRepository::default();
        let data = serde_json::to_vec(&rate("b", 5000, 1.0)).unwrap();
        repo.put(&key("a"), &data).unwrap();
        assert!(load(&repo, "a").is_none());
        repo.put(&key("a"), b"{not json").unwrap();
        assert!(load(&repo, "a").is_none());
    }
}
