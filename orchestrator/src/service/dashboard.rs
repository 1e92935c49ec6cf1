//! The dashboard at `GET /`: per cluster, the newest backup, capture lag,
//! the history's trends and its jobs, with links to each drill's report.
//! One self-contained page: inline CSS and SVG, no script.

use std::fmt::Write as _;

use super::jobs::lock;
use super::Service;
use crate::report::html::esc;
use crate::report::trends::{charts, jobs_table, summary, STYLE};

/// The sign-in form: the token becomes a cookie.
pub fn login(problem: Option<&str>) -> String {
    format!(
        "<!doctype html><html><head><meta charset='utf-8'><title>shardcut: sign in</title><style>{STYLE}</style></head><body>\
         <h1>shardcut</h1>{}<form method='post' action='/login'><label>Token <input type='password' name='token' autofocus></label> \
         <button type='submit'>Sign in</button></form></body></html>",
        problem
            .map(|p| format!("<p class='failed'>{}</p>", esc(p)))
            .unwrap_or_default()
    )
}

fn capture_line(service: &Service, name: &str) -> String {
    let Some(c) = service.clusters.get(name) else {
        return String::new();
    };
    let following =
        matches!(&c.topology.schedule, Some(s) if s.capture == topology::CaptureSchedule::Follow);
    if !following {
        return "<span class='muted'>not followed by this service</span>".into();
    }
    let state = lock(&c.capture);
    let mut out = String::new();
    if let Some(e) = &state.error {
        let _ = write!(
            out,
            "<span class='failed'>stopped: {} (restarted {} time(s))</span> ",
            esc(e),
            state.restarts
        );
    }
    for s in &state.streams {
        let _ = write!(
            out,
            "{} {}: {} behind; ",
            esc(&s.shard),
            esc(&s.stream),
            s.lag_bytes
                .map(crate::render::bytes)
                .unwrap_or_else(|| "?".into())
        );
    }
    if let Some(at) = &state.at {
        let _ = write!(out, "<span class='muted'>(round at {})</span>", esc(at));
    }
    out
}

pub fn page(service: &Service, days: i64) -> String {
    let now = chrono::Utc::now();
    let mut body = String::new();
    for (name, c) in &service.clusters {
        let records = c.records();
        let _ = write!(
            body,
            "<section class='cluster' data-cluster='{n}'><h2>{n}</h2>{summary}\
             <table class='summary'><tr><td>capture</td><td>{capture}</td></tr></table>{charts}\
             <h3>Jobs</h3>{jobs}</section>",
            n = esc(name),
            summary = summary(&records),
            capture = capture_line(service, name),
            charts = charts(&records, days, now),
            jobs = jobs_table(&records, 50, Some("/jobs/")),
        );
    }
    format!(
        "<!doctype html><html><head><meta charset='utf-8'><title>shardcut</title><style>{STYLE}</style></head><body>\
         <h1>shardcut</h1><p class='muted'>{now} · last {days} days · <a href='/?days=30'>30 days</a> · <a href='/?days=90'>90 days</a>{stopping}</p>{body}</body></html>",
        now = now.format("%Y-%m-%d %H:%M UTC"),
        stopping = if service.stopping() { " · <b>stopping</b>" } else { "" },
    )
}
