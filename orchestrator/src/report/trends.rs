//! Trends of a cluster's job history as a self-contained HTML section
//! (inline SVG, no script, no external asset): Q and its three factors,
//! RTO, RPO, backup size and duration, write-block time, and failed or
//! skipped jobs per day; then the jobs themselves. The service's dashboard
//! and `shardcut history --html` (the nightly report) draw the same.

use std::fmt::Write as _;

use chrono::{DateTime, Utc};

use super::html::esc;
use crate::flow::history::{parse_time, JobKind, JobRecord, JobStatus, QualityFigures};
use crate::render;

const W: f64 = 460.0;
const H: f64 = 170.0;
const LEFT: f64 = 56.0;
const RIGHT: f64 = 10.0;
const TOP: f64 = 10.0;
const BOTTOM: f64 = 24.0;

struct Series<'a> {
    name: &'a str,
    colour: &'a str,
    points: Vec<(DateTime<Utc>, f64)>,
}

/// The page's style, shared by the dashboard and the history page.
pub const STYLE: &str = "body{font-family:sans-serif;margin:1.5em;color:#222;background:#fafafa}\
h1{margin:0 0 .3em}h2{margin:1.2em 0 .4em;border-bottom:1px solid #ccc}\
.charts{display:flex;flex-wrap:wrap;gap:12px}\
figure.chart{margin:0;background:#fff;border:1px solid #ddd;padding:6px}\
figcaption{font-size:.85em;font-weight:bold;margin-bottom:2px}\
table{border-collapse:collapse;font-size:.85em;background:#fff}\
td,th{border:1px solid #ddd;padding:2px 6px;text-align:left}\
.succeeded{color:#2e7d32}.failed{color:#c62828;font-weight:bold}.skipped{color:#b26a00}.running,.queued{color:#1565c0}\
.summary td{border:none;padding:1px 10px 1px 0}.muted{color:#777}";

fn when(r: &JobRecord) -> Option<DateTime<Utc>> {
    r.finished_at
        .as_deref()
        .and_then(parse_time)
        .or_else(|| r.queued())
}

fn fmt_value(v: f64, unit: &str) -> String {
    match unit {
        "bytes" => render::bytes(v.max(0.0) as u64),
        "s" => format!("{v:.1} s"),
        "ms" => format!("{v:.0} ms"),
        _ => format!("{v:.3}"),
    }
}

/// The axes of a chart: the y range's two ends, the time range's two
/// ends.
fn axes(y_hi: &str, y_lo: &str, from: DateTime<Utc>, to: DateTime<Utc>) -> String {
    format!(
        "<line x1='{LEFT}' y1='{TOP}' x2='{LEFT}' y2='{b}' stroke='#999'/>\
         <line x1='{LEFT}' y1='{b}' x2='{r}' y2='{b}' stroke='#999'/>\
         <text x='{lx}' y='{ty}' font-size='10' text-anchor='end'>{y_hi}</text>\
         <text x='{lx}' y='{b}' font-size='10' text-anchor='end'>{y_lo}</text>\
         <text x='{LEFT}' y='{dy}' font-size='10'>{d0}</text>\
         <text x='{r}' y='{dy}' font-size='10' text-anchor='end'>{d1}</text>",
        b = H - BOTTOM,
        r = W - RIGHT,
        lx = LEFT - 4.0,
        ty = TOP + 8.0,
        dy = H - 8.0,
        d0 = from.format("%Y-%m-%d %H:%M"),
        d1 = to.format("%Y-%m-%d %H:%M"),
    )
}

/// A line chart over `[from, to]`; `y_max` fixed (Q) or from the data.
fn line_chart(
    id: &str,
    title: &str,
    unit: &str,
    series: &[Series<'_>],
    from: DateTime<Utc>,
    to: DateTime<Utc>,
    y_fixed: Option<(f64, f64)>,
) -> String {
    let points: usize = series.iter().map(|s| s.points.len()).sum();
    let (y_lo, y_hi) = y_fixed.unwrap_or_else(|| {
        let max = series
            .iter()
            .flat_map(|s| s.points.iter().map(|p| p.1))
            .fold(0.0_f64, f64::max);
        (0.0, if max > 0.0 { max * 1.1 } else { 1.0 })
    });
    let span = (to - from).num_seconds().max(1) as f64;
    let x = |t: DateTime<Utc>| LEFT + (t - from).num_seconds() as f64 / span * (W - LEFT - RIGHT);
    let y = |v: f64| TOP + (1.0 - (v - y_lo) / (y_hi - y_lo)) * (H - TOP - BOTTOM);
    let mut svg = format!(
        "<figure class='chart' data-chart='{id}' data-points='{points}'><figcaption>{}</figcaption>\
         <svg xmlns='http://www.w3.org/2000/svg' width='{W}' height='{H}' role='img' aria-label='{}'>",
        esc(title),
        esc(title)
    );
    svg += &axes(
        &esc(&fmt_value(y_hi, unit)),
        &esc(&fmt_value(y_lo, unit)),
        from,
        to,
    );
    if points == 0 {
        let _ = write!(
            svg,
            "<text x='{}' y='{}' font-size='12' fill='#777' text-anchor='middle'>no runs in this period</text>",
            (LEFT + W) / 2.0,
            H / 2.0
        );
    }
    for (i, s) in series.iter().enumerate() {
        let path: Vec<String> = s
            .points
            .iter()
            .map(|(t, v)| format!("{:.1},{:.1}", x(*t), y(*v)))
            .collect();
        if path.len() > 1 {
            let _ = write!(
                svg,
                "<polyline fill='none' stroke='{}' stroke-width='1.5' points='{}'/>",
                s.colour,
                path.join(" ")
            );
        }
        for (t, v) in &s.points {
            let _ = write!(
                svg,
                "<circle cx='{:.1}' cy='{:.1}' r='2.5' fill='{}'><title>{} {}: {}</title></circle>",
                x(*t),
                y(*v),
                s.colour,
                t.format("%Y-%m-%d %H:%M:%S"),
                esc(s.name),
                esc(&fmt_value(*v, unit))
            );
        }
        if series.len() > 1 {
            let _ = write!(
                svg,
                "<text x='{}' y='{}' font-size='10' fill='{}'>{}</text>",
                LEFT + 6.0 + 80.0 * i as f64,
                H - BOTTOM - 4.0,
                s.colour,
                esc(s.name)
            );
        }
    }
    svg.push_str("</svg></figure>");
    svg
}

/// The bars' width: a day, or an hour or a minute on a short history.
fn bucket(span: chrono::Duration) -> (chrono::Duration, &'static str) {
    if span > chrono::Duration::days(3) {
        (chrono::Duration::days(1), "day")
    } else if span > chrono::Duration::hours(3) {
        (chrono::Duration::hours(1), "hour")
    } else {
        (chrono::Duration::minutes(1), "minute")
    }
}

/// Failed and skipped jobs per day (per hour or minute on a short
/// history), as bars.
fn failures_chart(records: &[JobRecord], from: DateTime<Utc>, to: DateTime<Utc>) -> String {
    let (width, unit) = bucket(to - from);
    let days = ((to - from).num_seconds() / width.num_seconds().max(1)).max(1) as usize;
    let mut failed = vec![0u32; days + 1];
    let mut skipped = vec![0u32; days + 1];
    for r in records {
        let Some(t) = when(r) else { continue };
        if t < from {
            continue;
        }
        let d = (((t - from).num_seconds() / width.num_seconds().max(1)).max(0) as usize).min(days);
        match r.status {
            JobStatus::Failed => failed[d] += 1,
            JobStatus::Skipped => skipped[d] += 1,
            _ => {}
        }
    }
    let total: u32 = failed.iter().chain(&skipped).sum();
    let max = failed
        .iter()
        .zip(&skipped)
        .map(|(a, b)| a + b)
        .max()
        .unwrap_or(0)
        .max(1);
    let bw = (W - LEFT - RIGHT) / (days + 1) as f64;
    let ph = H - TOP - BOTTOM;
    let mut svg = format!(
        "<figure class='chart' data-chart='failures' data-points='{total}'><figcaption>Failed and skipped jobs per {unit}</figcaption>\
         <svg xmlns='http://www.w3.org/2000/svg' width='{W}' height='{H}' role='img' aria-label='failed and skipped jobs per {unit}'>"
    );
    svg += &axes(&max.to_string(), "0", from, to);
    for d in 0..=days {
        let x = LEFT + d as f64 * bw;
        let hf = f64::from(failed[d]) / f64::from(max) * ph;
        let hs = f64::from(skipped[d]) / f64::from(max) * ph;
        let base = H - BOTTOM;
        if failed[d] > 0 {
            let _ = write!(
                svg,
                "<rect x='{x:.1}' y='{:.1}' width='{:.1}' height='{hf:.1}' fill='#c62828'><title>{} failed</title></rect>",
                base - hf,
                (bw - 1.0).max(1.0),
                failed[d]
            );
        }
        if skipped[d] > 0 {
            let _ = write!(
                svg,
                "<rect x='{x:.1}' y='{:.1}' width='{:.1}' height='{hs:.1}' fill='#f9a825'><title>{} skipped</title></rect>",
                base - hf - hs,
                (bw - 1.0).max(1.0),
                skipped[d]
            );
        }
    }
    svg.push_str("</svg></figure>");
    svg
}

fn points(
    records: &[JobRecord],
    pick: impl Fn(&JobRecord) -> Option<f64>,
    from: DateTime<Utc>,
) -> Vec<(DateTime<Utc>, f64)> {
    records
        .iter()
        .filter(|r| r.status != JobStatus::Skipped)
        .filter_map(|r| Some((when(r)?, pick(r)?)))
        // A figure from a damaged record is not drawn.
        .filter(|(t, v)| *t >= from && v.is_finite())
        .filter(|(t, _)| *t <= Utc::now())
        .collect()
}

/// One line of the quality chart: its name, colour, and which factor.
type Factor = (&'static str, &'static str, fn(&QualityFigures) -> f64);

/// A chart of one figure: its id, title, unit, series name and colour,
/// and where the figure comes from.
struct SingleLine {
    id: &'static str,
    title: &'static str,
    unit: &'static str,
    name: &'static str,
    colour: &'static str,
    pick: fn(&JobRecord) -> Option<f64>,
}

const SINGLE_LINES: [SingleLine; 5] = [
    SingleLine {
        id: "rto",
        title: "RTO: restore to verified",
        unit: "s",
        name: "RTO",
        colour: "#1565c0",
        pick: |r| is_verification(r).then_some(r.figures.rto_seconds)?,
    },
    SingleLine {
        id: "rpo",
        title: "RPO: age of the restored backup",
        unit: "s",
        name: "RPO",
        colour: "#6d4c41",
        pick: |r| is_verification(r).then_some(r.figures.rpo_seconds)?,
    },
    SingleLine {
        id: "size",
        title: "Backup size (stored)",
        unit: "bytes",
        name: "stored",
        colour: "#00838f",
        pick: |r| Some(is_backup(r).then_some(r.figures.bytes_stored)?? as f64),
    },
    SingleLine {
        id: "duration",
        title: "Backup duration",
        unit: "s",
        name: "duration",
        colour: "#5e35b1",
        pick: |r| is_backup(r).then_some(r.figures.backup_seconds)?,
    },
    SingleLine {
        id: "write_block",
        title: "Write-block time of the cut",
        unit: "ms",
        name: "write block",
        colour: "#c62828",
        pick: |r| Some(is_backup(r).then_some(r.figures.write_block_ms)?? as f64),
    },
];

fn is_verification(r: &JobRecord) -> bool {
    matches!(r.kind, JobKind::Drill | JobKind::Restore)
}

fn is_backup(r: &JobRecord) -> bool {
    matches!(r.kind, JobKind::Backup | JobKind::Incremental)
}

/// The charts of one cluster's history over the last `days` days; the
/// time axis starts at the oldest run in that window, so a young history
/// is not squeezed against the right edge.
pub fn charts(records: &[JobRecord], days: i64, now: DateTime<Utc>) -> String {
    let window = now - chrono::Duration::days(days);
    let from = records
        .iter()
        .filter_map(when)
        .filter(|t| *t >= window && *t <= now)
        .min()
        .map(|first| (first - (now - first) / 20).max(window))
        .unwrap_or(window);
    let q = |f: fn(&QualityFigures) -> f64| {
        points(
            records,
            move |r| {
                is_verification(r)
                    .then_some(r.figures.quality.as_ref())
                    .flatten()
                    .map(f)
            },
            from,
        )
    };
    let factors: [Factor; 4] = [
        ("Q", "#1565c0", |x| x.score),
        ("recovered", "#2e7d32", |x| x.recovered),
        ("complete", "#8e24aa", |x| x.complete),
        ("available", "#ef6c00", |x| x.available),
    ];
    let quality = factors.map(|(name, colour, f)| Series {
        name,
        colour,
        points: q(f),
    });
    let mut out = String::from("<div class='charts'>");
    out += &line_chart(
        "quality",
        "Q and its factors (drills and restores)",
        "",
        &quality,
        from,
        now,
        Some((0.0, 1.0)),
    );
    for single in SINGLE_LINES {
        let series = [Series {
            name: single.name,
            colour: single.colour,
            points: points(records, |r| (single.pick)(r), from),
        }];
        out += &line_chart(
            single.id,
            single.title,
            single.unit,
            &series,
            from,
            now,
            None,
        );
    }
    out += &failures_chart(records, from, now);
    out.push_str("</div>");
    out
}

/// The newest `limit` jobs as a table; a drill's or restore's report is
/// linked under `report_base` (`None`: not linked).
pub fn jobs_table(records: &[JobRecord], limit: usize, report_base: Option<&str>) -> String {
    let mut out = String::from(
        "<table class='jobs'><tr><th>job</th><th>kind</th><th>trigger</th><th>status</th><th>queued</th>\
         <th>duration</th><th>shard</th><th>backup</th><th>Q</th><th>error</th><th>report</th></tr>",
    );
    for r in records.iter().rev().take(limit) {
        let link = match (report_base, r.has_report) {
            (Some(base), true) => format!("<a href='{base}{}/report'>report</a>", esc(&r.id)),
            _ => String::new(),
        };
        let _ = write!(
            out,
            "<tr><td>{}</td><td>{}</td><td>{}</td><td class='{s}'>{s}</td><td>{}</td><td>{}</td><td>{}</td>\
             <td>{}</td><td>{}</td><td>{}</td><td>{link}</td></tr>",
            esc(&r.id),
            r.kind.as_str(),
            esc(&format!("{:?}", r.trigger).to_lowercase()),
            esc(r.queued_at.get(..19).unwrap_or(&r.queued_at)),
            r.duration_seconds()
                .map(|d| format!("{d:.1} s"))
                .unwrap_or_default(),
            esc(r.shard.as_deref().unwrap_or("")),
            esc(r.backup_id.as_deref().unwrap_or("")),
            r.figures
                .quality
                .map(|q| format!("{:.4}", q.score))
                .unwrap_or_default(),
            esc(r.error.as_deref().unwrap_or("")),
            s = r.status.as_str(),
        );
    }
    out.push_str("</table>");
    out
}

/// The newest backup and the last verification, in two lines.
pub fn summary(records: &[JobRecord]) -> String {
    let backup = records
        .iter()
        .rev()
        .find(|r| is_backup(r) && r.status == JobStatus::Succeeded);
    let drill = records
        .iter()
        .rev()
        .find(|r| is_verification(r) && r.figures.quality.is_some());
    let mut out = String::from("<table class='summary'>");
    let _ = write!(
        out,
        "<tr><td>newest backup</td><td>{}</td></tr>",
        match backup {
            Some(r) => format!(
                "{} at {} ({}, {})",
                esc(r.backup_id.as_deref().unwrap_or("?")),
                esc(r.finished_at.as_deref().unwrap_or("?")),
                r.figures
                    .bytes_stored
                    .map(render::bytes)
                    .unwrap_or_default(),
                r.duration_seconds()
                    .map(|d| format!("{d:.1} s"))
                    .unwrap_or_default()
            ),
            None => "<span class='muted'>none recorded</span>".into(),
        }
    );
    let _ = write!(
        out,
        "<tr><td>last verification</td><td>{}</td></tr></table>",
        match drill.and_then(|r| r.figures.quality.map(|q| (r, q))) {
            Some((r, q)) => format!(
                "{} of shard {} at {}: Q = {:.4}",
                r.kind.as_str(),
                esc(r.shard.as_deref().unwrap_or("(all)")),
                esc(r.finished_at.as_deref().unwrap_or("?")),
                q.score
            ),
            None => "<span class='muted'>none recorded</span>".into(),
        }
    );
    out
}

/// A whole page for one cluster (the nightly report's history page).
pub fn page(cluster: &str, records: &[JobRecord], days: i64, now: DateTime<Utc>) -> String {
    format!(
        "<!doctype html><html><head><meta charset='utf-8'><title>shardcut history: {c}</title><style>{STYLE}</style></head><body>\
         <h1>shardcut history: {c}</h1><p class='muted'>last {days} days, as of {now}</p>{summary}{charts}<h2>Jobs</h2>{jobs}</body></html>",
        c = esc(cluster),
        now = now.format("%Y-%m-%d %H:%M UTC"),
        summary = summary(records),
        charts = charts(records, days, now),
        jobs = jobs_table(records, 100, None),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::flow::history::Trigger;

    #[test]
    fn text_from_the_history_is_escaped_and_every_run_is_a_point() {
        let mut records = Vec::new();
        for i in 0..3 {
            let mut r = JobRecord::new("c", JobKind::Drill, Trigger::Schedule);
            r.start();
            r.shard = Some("<img src=x onerror=alert(1)>".into());
            r.figures.quality = Some(QualityFigures {
                score: 1.0 - f64::from(i) / 10.0,
                recovered: 1.0,
                complete: 1.0,
                available: 1.0,
            });
            r.figures.rto_seconds = Some(f64::from(i));
            r.finish(
                JobStatus::Failed,
                Some("'><script>alert(1)</script>".into()),
            );
            records.push(r);
        }
        let page = page("c", &records, 30, Utc::now());
        assert!(
            !page.contains("<script") && !page.contains("<img"),
            "escaped"
        );
        assert!(page.contains("&lt;script&gt;") && page.contains("&#39;"));
        assert!(page.contains("data-chart='quality' data-points='12'"));
        assert!(page.contains("data-chart='rto' data-points='3'"));
        assert!(page.contains("data-chart='failures' data-points='3'"));
    }
}
