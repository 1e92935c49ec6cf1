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
    for l in &e.leftovers.removed {
        text.push_str(&format!(
            "{verb} backup folder {} ({} objects): a backup of this cluster that never finished (started {} by pid {} on {})\n",
            l.id, l.objects, l.started.started_at, l.started.pid, l.started.host
        ));
    }
    for (id, why) in &e.leftovers.kept {
        text.push_str(&format!(
            "left alone: backup folder {id} has no manifest, and {why}\n"
        ));
    }
    if let Some(why) = &e.leftovers.stopped {
        text.push_str(&format!(
            "not every backup folder was looked at for what killed backups left: {why}\n"
        ));
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
        "unfinished_removed": e.leftovers.removed.iter().map(|l| json!({
            "backup_id": l.id,
            "objects": l.objects,
            "started_at": l.started.started_at,
        })).collect::<Vec<_>>(),
        "unfinished_stopped": e.leftovers.stopped,
        "unfinished_left": e.leftovers.kept.iter().map(|(id, why)| json!({
            "backup_id": id,
            "why": why,
        })).collect::<Vec<_>>(),
    })
}
