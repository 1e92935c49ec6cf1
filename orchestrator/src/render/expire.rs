//! How expiry is shown.

use serde_json::json;

use crate::flow::expire::Expired;

pub fn text(e: &Expired) -> String {
    let verb = if e.dry_run { "would delete" } else { "deleted" };
    let mut text = String::new();
    for (id, kind) in &e.backups {
        text.push_str(&format!("{verb} backup {id} ({kind})\n"));
    }
    for name in &e.marks {
        text.push_str(&format!("{verb} mark {name}\n"));
    }
    let seg_bytes: u64 = e.segments.iter().map(|s| s.bytes_stored).sum();
    text.push_str(&format!(
        "{verb} {} backup(s), {} mark(s), {} captured segment(s) ({} bytes); kept {} backup(s): {}\n",
        e.backups.len(),
        e.marks.len(),
        e.segments.len(),
        seg_bytes,
        e.kept.len(),
        e.kept.iter().cloned().collect::<Vec<_>>().join(", ")
    ));
    text
}

pub fn summary(e: &Expired) -> serde_json::Value {
    json!({
        "dry_run": e.dry_run,
        "kept": e.kept,
        "expired_backups": e.backups.iter().map(|(id, _)| id).collect::<Vec<_>>(),
        "expired_marks": e.marks,
        "expired_segments": e.segments.len(),
        "expired_segment_bytes": e.segments.iter().map(|s| s.bytes_stored).sum::<u64>(),
    })
}
