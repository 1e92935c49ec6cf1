//! `shardcut drill`: one shard into a scratch server, with the report files
//! a nightly job publishes, and a scratch server that goes away mid-drill.

use std::collections::HashSet;

use crate::contracts;
use crate::support::{self, PrivateSandbox};

/// Parses Prometheus text format strictly enough to catch what a collector
/// would reject: every sample is `name{labels} value` with a float value,
/// and every sample's metric has HELP and TYPE lines before it.
fn parse_prom(text: &str) -> Vec<(String, String, f64)> {
    let mut described = HashSet::new();
    let mut samples = Vec::new();
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("# HELP ") {
            described.insert(rest.split(' ').next().unwrap().to_string());
            continue;
        }
        if line.starts_with("# TYPE ") {
            assert!(
                line.ends_with(" gauge") || line.ends_with(" counter"),
                "{line}"
            );
            continue;
        }
        assert!(!line.trim().is_empty(), "blank line in metrics");
        let (series, value) = line
            .rsplit_once(' ')
            .unwrap_or_else(|| panic!("no value: {line}"));
        let value: f64 = value
            .parse()
            .unwrap_or_else(|_| panic!("bad value: {line}"));
        let (name, labels) = match series.split_once('{') {
            Some((n, l)) => {
                assert!(l.ends_with('}'), "{line}");
                for pair in l.trim_end_matches('}').split("\",") {
                    let (k, v) = pair
                        .split_once("=\"")
                        .unwrap_or_else(|| panic!("bad label in {line}"));
                    assert!(
                        k.chars().all(|c| c.is_ascii_alphanumeric() || c == '_'),
                        "{line}"
                    );
                    assert!(!v.contains('\n'), "{line}");
                }
                (n.to_string(), l.to_string())
            }
            None => (series.to_string(), String::new()),
        };
        assert!(
            name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_'),
            "{line}"
        );
        assert!(described.contains(&name), "{name} has no HELP");
        samples.push((name, labels, value));
    }
    samples
}

fn sample(samples: &[(String, String, f64)], name: &str, label_part: &str) -> Option<f64> {
    samples
        .iter()
        .find(|(n, l, _)| n == name && l.contains(label_part))
        .map(|s| s.2)
}

#[test]
fn drill_of_one_shard_writes_json_html_and_prometheus_reports() {
    let dir = tempfile::tempdir().unwrap();
    let src = support::topology_variant(&support::sandbox_topology(), dir.path(), &[]);
    let src_arg = src.to_str().unwrap();
    let run = support::shardcut(&["backup", "-t", src_arg]);
    assert_eq!(run.code, 0, "{run:?}");
    let scratch = PrivateSandbox::up(1, 1, "ready");
    let report = dir.path().join("report");
    let run = support::shardcut(&[
        "drill",
        "-t",
        src_arg,
        "--shard",
        "pg-0",
        "--target",
        scratch.topology().to_str().unwrap(),
        "--report",
        report.to_str().unwrap(),
        "--json",
    ]);
    assert_eq!(run.code, 0, "{run:?}");
    let j = run.json();
    assert_eq!(
        contracts::fields(&j),
        contracts::names(contracts::RESTORE_REPORT)
    );
    assert_eq!(j["kind"], "drill");
    assert_eq!(j["failures"], serde_json::json!([]));
    assert_eq!(j["quality"]["score"], 1.0);
    assert_eq!(j["shards"]["pg-0"]["quality"]["available"], 1.0);
    assert_eq!(
        j["shards"]["pg-0"]["tables"]["shop.public.all_types"]["hash_ok"],
        true
    );
    assert_eq!(
        j["shards"].as_object().unwrap().len(),
        1,
        "only the drilled shard"
    );
    assert!(j["rto_seconds"].as_f64().unwrap() > 0.0);
    assert!(j["rpo_seconds"].as_f64().unwrap() >= 0.0);

    let saved: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(report.join("report.json")).unwrap())
            .unwrap();
    assert_eq!(saved["backup_id"], j["backup_id"]);
    let html = std::fs::read_to_string(report.join("report.html")).unwrap();
    assert!(
        html.contains("Recovery quality Q") && html.contains("1.0000"),
        "score on the page"
    );
    assert!(
        html.contains("<svg") && !html.contains("src=") && !html.contains("href="),
        "self-contained"
    );
    let samples = parse_prom(&std::fs::read_to_string(report.join("metrics.prom")).unwrap());
    assert_eq!(
        sample(&samples, "shardcut_quality_score", "shard=\"pg-0\""),
        Some(1.0)
    );
    assert!(
        sample(
            &samples,
            "shardcut_restore_duration_seconds",
            "cluster=\"sandbox\""
        )
        .unwrap()
            > 0.0
    );
    assert!(sample(
        &samples,
        "shardcut_backup_age_seconds",
        "cluster=\"sandbox\""
    )
    .is_some());
    assert!(sample(
        &samples,
        "shardcut_write_block_seconds",
        "cluster=\"sandbox\""
    )
    .is_some());
    assert!(
        sample(
            &samples,
            "shardcut_last_success_timestamp_seconds",
            "cluster=\"sandbox\""
        )
        .unwrap()
            > 1.7e9
    );
}

#[test]
fn scratch_server_stopped_mid_drill_makes_the_shard_unavailable() {
    let dir = tempfile::tempdir().unwrap();
    let src = support::topology_variant(&support::sandbox_topology(), dir.path(), &[]);
    let src_arg = src.to_str().unwrap();
    assert_eq!(support::shardcut(&["backup", "-t", src_arg]).code, 0);
    let scratch = PrivateSandbox::up(1, 1, "ready");
    let target = scratch.topology();
    let report = dir.path().join("report");
    let args = |extra: &[&'static str]| {
        let mut a = vec![
            "drill",
            "-t",
            src_arg,
            "--shard",
            "mysql-0",
            "--target",
            target.to_str().unwrap(),
        ];
        a.extend_from_slice(&["--report", report.to_str().unwrap(), "--json"]);
        a.extend_from_slice(extra);
        a.into_iter().map(str::to_string).collect::<Vec<_>>()
    };
    let ok = support::shardcut(&args(&[]).iter().map(String::as_str).collect::<Vec<_>>());
    assert_eq!(ok.code, 0, "{ok:?}");
    let before = parse_prom(&std::fs::read_to_string(report.join("metrics.prom")).unwrap());
    let last_success = sample(&before, "shardcut_last_success_timestamp_seconds", "").unwrap();

    let child = std::process::Command::new(support::bin("shardcut"))
        .args(args(&["--test-pause-before-verify", "4s"]))
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(std::time::Duration::from_millis(1500));
    scratch.stop("mysql-0");
    let out = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(3), "{stderr}");
    assert!(
        stderr.contains("mysql-0: the target did not answer reads"),
        "{stderr}"
    );
    let j: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(j["shards"]["mysql-0"]["quality"]["available"], 0.0);
    assert!(j["quality"]["available"].as_f64().unwrap() < 1.0);
    assert!(j["quality"]["score"].as_f64().unwrap() < 1.0);
    let after = parse_prom(&std::fs::read_to_string(report.join("metrics.prom")).unwrap());
    assert_eq!(
        sample(&after, "shardcut_quality_available", "shard=\"mysql-0\""),
        Some(0.0)
    );
    assert_eq!(
        sample(&after, "shardcut_last_success_timestamp_seconds", ""),
        Some(last_success),
        "a failed drill keeps the last success time"
    );
    let html = std::fs::read_to_string(report.join("report.html")).unwrap();
    assert!(html.contains("MISMATCH"), "failing tables listed");
}

#[test]
fn nightly_job_backs_up_and_drills_shards_in_rotation() {
    let dir = tempfile::tempdir().unwrap();
    let src = support::topology_variant(&support::sandbox_topology(), dir.path(), &[]);
    // One scratch server per engine takes every shard in turn.
    let scratch = PrivateSandbox::up(1, 1, "ready");
    let report = dir.path().join("nightly");
    let mut drilled = Vec::new();
    for _ in 0..3 {
        let out = std::process::Command::new(support::root().join("scripts/nightly"))
            .args([
                "-t",
                src.to_str().unwrap(),
                "--scratch",
                scratch.topology().to_str().unwrap(),
            ])
            .args(["--report-dir", report.to_str().unwrap(), "--shardcut"])
            .arg(support::bin("shardcut"))
            .output()
            .unwrap();
        assert_eq!(
            out.status.code(),
            Some(0),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let j: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(report.join("report.json")).unwrap())
                .unwrap();
        assert_eq!(j["kind"], "drill");
        assert_eq!(j["failures"], serde_json::json!([]));
        assert_eq!(j["quality"]["score"], 1.0);
        let shards: Vec<String> = j["shards"].as_object().unwrap().keys().cloned().collect();
        assert_eq!(shards.len(), 1);
        drilled.push(shards[0].clone());
        assert!(report.join("report.html").exists() && report.join("metrics.prom").exists());
    }
    assert_eq!(drilled, vec!["mysql-0", "mysql-1", "pg-0"]);
    // The history page: three nights of backups and drills as trends.
    let page = std::fs::read_to_string(report.join("history.html")).unwrap();
    for (chart, points) in [("quality", 12), ("rto", 3), ("size", 3), ("write_block", 3)] {
        assert!(
            page.contains(&format!("data-chart='{chart}' data-points='{points}'")),
            "{chart} with {points} points in history.html"
        );
    }
    let list = support::shardcut(&["list", "-t", src.to_str().unwrap(), "--json"]).json();
    assert_eq!(
        list["backups"].as_array().unwrap().len(),
        3,
        "one backup per night"
    );
}
