//! `schedule:`, `timezone:` and `drill_target:`: what `shardcut serve` runs
//! when, checked when the topology loads.

#![allow(clippy::unwrap_used)]

use std::path::Path;

use topology::{CaptureSchedule, Topology, TopologyError, DEFAULT_KEEP_LAST};

fn parse(text: &str) -> Result<Topology, TopologyError> {
    let doc = format!(
        "cluster: shop\nrepository: /var/backups/shop\n{text}shards:\n  - name: a\n    engine: mysql\n    url: mysql://backup@127.0.0.1:3307\n"
    );
    Topology::parse(&doc, Path::new("/etc/shardcut/t.yaml"), &|_| None)
}

fn utc(text: &str) -> chrono::DateTime<chrono::Utc> {
    chrono::DateTime::parse_from_rfc3339(text)
        .unwrap()
        .with_timezone(&chrono::Utc)
}

#[test]
fn a_schedule_in_the_topology_timezone() {
    let t = parse(
        "timezone: Europe/Berlin\nschedule:\n  backup: \"0 2 * * *\"\n  incremental: \"0 */4 * * *\"\n  drill: \"30 3 * * *\"\n  expire: \"0 5 * * *\"\n  capture: follow\n  keep_within: 14d\ndrill_target: scratch.yaml\n",
    )
    .unwrap();
    let s = t.schedule.as_ref().unwrap();
    assert_eq!(s.capture, CaptureSchedule::Follow);
    assert_eq!(s.keep_last, DEFAULT_KEEP_LAST);
    assert_eq!(
        s.keep_within,
        Some(std::time::Duration::from_secs(14 * 86400))
    );
    assert_eq!(
        t.drill_target.as_deref(),
        Some(Path::new("/etc/shardcut/scratch.yaml")),
        "relative to the topology file"
    );
    let backup = s.backup.as_ref().unwrap();
    // 02:00 in Berlin: 01:00 UTC in winter, 00:00 UTC in summer.
    assert_eq!(
        backup.next_after(utc("2026-12-04T12:00:00Z"), t.timezone),
        Some(utc("2026-12-05T01:00:00Z"))
    );
    assert_eq!(
        backup.next_after(utc("2026-07-04T12:00:00Z"), t.timezone),
        Some(utc("2026-07-05T00:00:00Z"))
    );
    // A start a few milliseconds after a run does not count it again.
    assert_eq!(
        backup.next_after(utc("2026-12-05T01:00:00.004Z"), t.timezone),
        Some(utc("2026-12-06T01:00:00Z"))
    );
}

#[test]
fn seconds_are_an_optional_sixth_field() {
    let t = parse("schedule:\n  backup: \"*/5 * * * * *\"\n").unwrap();
    let b = t.schedule.unwrap().backup.unwrap();
    assert_eq!(
        b.next_after(utc("2026-12-04T12:00:01Z"), t.timezone),
        Some(utc("2026-12-04T12:00:05Z"))
    );
}

#[test]
fn no_schedule_is_no_schedule() {
    let t = parse("").unwrap();
    assert!(t.schedule.is_none());
    assert_eq!(t.timezone, topology::Tz::UTC);
}

#[test]
fn every_schedule_mistake_is_named() {
    let err = parse(
        "timezone: Mars/Olympus\nschedule:\n  backup: \"every night\"\n  drill: \"0 3 * * *\"\n  capture: always\n  keep_last: 0\n  hourly: \"0 * * * *\"\n",
    )
    .unwrap_err()
    .to_string();
    for needle in [
        "timezone",
        "Mars/Olympus",
        "schedule.backup",
        "every night",
        "drill_target",
        "schedule.capture",
        "schedule.keep_last",
        "schedule.hourly",
    ] {
        assert!(err.contains(needle), "`{needle}` not in:\n{err}");
    }
}
