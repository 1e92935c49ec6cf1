//! The recovery-quality score: Q = recovered × complete × available.
//!
//! - recovered: rows read back from the target ÷ rows in the manifest, each
//!   table capped at its expected count (extra rows count against complete);
//! - complete: tables whose row count and content hash both match ÷ tables
//!   in scope;
//! - available: shards that accepted a connection and answered a read on
//!   every restored table ÷ shards in scope.
//!
//! Q is 1 only when all three are exactly 1. See docs/QUALITY.md.

use std::collections::BTreeMap;

use serde::Serialize;

/// One table as read back from the target.
#[derive(Debug, Clone, Serialize)]
pub struct TableResult {
    #[serde(skip)]
    pub shard: String,
    #[serde(skip)]
    pub table: String,
    pub rows_expected: u64,
    pub rows_found: u64,
    pub hash_ok: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Quality {
    pub score: f64,
    pub recovered: f64,
    pub complete: f64,
    pub available: f64,
}

impl Quality {
    fn of(tables: &[&TableResult], available: f64) -> Quality {
        let expected: u64 = tables.iter().map(|t| t.rows_expected).sum();
        let found: u64 = tables
            .iter()
            .map(|t| t.rows_found.min(t.rows_expected))
            .sum();
        let recovered = if expected == 0 {
            1.0
        } else {
            found as f64 / expected as f64
        };
        let matched = tables
            .iter()
            .filter(|t| t.hash_ok && t.rows_found == t.rows_expected)
            .count();
        let complete = if tables.is_empty() {
            1.0
        } else {
            matched as f64 / tables.len() as f64
        };
        Quality {
            score: recovered * complete * available,
            recovered,
            complete,
            available,
        }
    }

    /// One table's score: its recovered fraction, whether it is complete,
    /// and whether its shard was available.
    pub fn of_table(t: &TableResult, shard_available: bool) -> Quality {
        Quality::of(&[t], if shard_available { 1.0 } else { 0.0 })
    }

    pub fn perfect(&self) -> bool {
        self.recovered == 1.0 && self.complete == 1.0 && self.available == 1.0
    }
}

/// The cluster's score and each shard's. `available` lists the shards in
/// scope that answered every read.
pub fn score(
    tables: &[TableResult],
    in_scope: &[String],
    available: &[String],
) -> (Quality, BTreeMap<String, Quality>) {
    let all: Vec<&TableResult> = tables.iter().collect();
    let up = in_scope.iter().filter(|s| available.contains(s)).count();
    let cluster_available = if in_scope.is_empty() {
        1.0
    } else {
        up as f64 / in_scope.len() as f64
    };
    let per_shard = in_scope
        .iter()
        .map(|s| {
            let mine: Vec<&TableResult> = tables.iter().filter(|t| &t.shard == s).collect();
            let a = if available.contains(s) { 1.0 } else { 0.0 };
            (s.clone(), Quality::of(&mine, a))
        })
        .collect();
    (Quality::of(&all, cluster_available), per_shard)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(shard: &str, expected: u64, found: u64, hash_ok: bool) -> TableResult {
        TableResult {
            shard: shard.into(),
            table: "t".into(),
            rows_expected: expected,
            rows_found: found,
            hash_ok,
        }
    }

    #[test]
    fn perfect_only_when_everything_matches() {
        let scope = vec!["a".to_string(), "b".to_string()];
        let (q, _) = score(&[t("a", 10, 10, true), t("b", 5, 5, true)], &scope, &scope);
        assert!(q.perfect());
        assert_eq!(q.score, 1.0);
    }

    #[test]
    fn worked_example() {
        // The example of docs/QUALITY.md: 1000 + 3000 rows expected, 750 of
        // the first table found; b's table right; shard c unreachable.
        let scope = vec!["a".to_string(), "b".to_string(), "c".to_string()];
        let avail = vec!["a".to_string(), "b".to_string()];
        let tables = [
            t("a", 1000, 750, false),
            t("b", 3000, 3000, true),
            t("c", 1000, 0, false),
        ];
        let (q, per) = score(&tables, &scope, &avail);
        assert_eq!(q.recovered, 3750.0 / 5000.0);
        assert_eq!(q.complete, 1.0 / 3.0);
        assert_eq!(q.available, 2.0 / 3.0);
        assert!((q.score - 0.75 / 3.0 * 2.0 / 3.0).abs() < 1e-12);
        assert_eq!(per["b"].score, 1.0);
        assert_eq!(per["a"].recovered, 0.75);
        assert_eq!(per["c"].available, 0.0);
        let a = Quality::of_table(&tables[0], true);
        assert_eq!((a.recovered, a.complete, a.score), (0.75, 0.0, 0.0));
        assert_eq!(Quality::of_table(&tables[1], true).score, 1.0);
        assert_eq!(Quality::of_table(&tables[1], false).score, 0.0);
    }

    #[test]
    fn extra_rows_cap_recovered_and_break_complete() {
        let scope = vec!["a".to_string()];
        let (q, _) = score(&[t("a", 10, 12, false)], &scope, &scope);
        assert_eq!(q.recovered, 1.0);
        assert_eq!(q.complete, 0.0);
        assert_eq!(q.score, 0.0);
    }
}
