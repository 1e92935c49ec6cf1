//! What a person sees on stderr while a flow runs: a progress bar per shard
//! during a dump (drawn by indicatif on a terminal; plain periodic lines
//! otherwise, for logs, cron and CI), and the flow's notes.

use std::io::{IsTerminal, Write};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};
use shard_agent::dump::Progress;

use crate::flow::Observer;
use crate::render;

/// The command line's observer: progress on stderr, notes on stderr.
pub struct Bars;

impl Observer for Bars {
    fn dump_started(&self, shards: Vec<(String, Arc<Progress>)>) -> Box<dyn Send> {
        Box::new(Display::start(shards))
    }

    fn note(&self, text: &str) {
        eprintln!("{text}");
    }
}

/// Redraws the shards' progress until dropped.
struct Display {
    task: tokio::task::JoinHandle<()>,
}

impl Display {
    fn start(shards: Vec<(String, Arc<Progress>)>) -> Display {
        let task = if std::io::stderr().is_terminal() {
            tokio::spawn(bars(shards))
        } else {
            tokio::spawn(lines(shards))
        };
        Display { task }
    }
}

impl Drop for Display {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// One bar per shard: rows against the server's estimate, bytes, rate, ETA.
async fn bars(shards: Vec<(String, Arc<Progress>)>) {
    let multi = MultiProgress::with_draw_target(ProgressDrawTarget::stderr());
    let style = ProgressStyle::with_template(
        "{prefix:<12} [{bar:20}] {human_pos:>12} rows {msg} ETA {eta}",
    )
    .unwrap_or_else(|_| ProgressStyle::default_bar())
    .progress_chars("#> ");
    let bars: Vec<(ProgressBar, Arc<Progress>)> = shards
        .into_iter()
        .map(|(name, p)| {
            let bar = multi.add(ProgressBar::new(0).with_style(style.clone()));
            bar.set_prefix(name);
            (bar, p)
        })
        .collect();
    let started = Instant::now();
    loop {
        tokio::time::sleep(Duration::from_millis(250)).await;
        let secs = started.elapsed().as_secs_f64().max(0.001);
        for (bar, p) in &bars {
            let rows = p.rows.load(Ordering::Relaxed);
            let bytes = p.bytes.load(Ordering::Relaxed);
            // The estimate is the server's; never let the bar run past it.
            bar.set_length(p.rows_estimate.load(Ordering::Relaxed).max(rows));
            bar.set_position(rows);
            bar.set_message(format!(
                "{:>10} {:>10}/s",
                render::bytes(bytes),
                render::bytes((bytes as f64 / secs) as u64)
            ));
        }
    }
}

/// A line per shard every 5 s, for output that is not a terminal.
async fn lines(shards: Vec<(String, Arc<Progress>)>) {
    let started = Instant::now();
    loop {
        tokio::time::sleep(Duration::from_secs(5)).await;
        let secs = started.elapsed().as_secs_f64().max(0.001);
        let mut out = String::new();
        for (name, p) in &shards {
            let rows = p.rows.load(Ordering::Relaxed);
            let bytes = p.bytes.load(Ordering::Relaxed);
            let est = p.rows_estimate.load(Ordering::Relaxed);
            let frac = if est > 0 {
                (rows as f64 / est as f64).min(1.0)
            } else {
                0.0
            };
            let eta = if frac > 0.01 && frac < 1.0 {
                format!("ETA {:.0} s", secs / frac - secs)
            } else {
                String::new()
            };
            out.push_str(&format!(
                "progress {name}: {} rows, {}, {}/s {eta}\n",
                render::count(rows),
                render::bytes(bytes),
                render::bytes((bytes as f64 / secs) as u64)
            ));
        }
        // Progress output is best effort; a closed stderr must not fail the backup.
        drop(std::io::stderr().lock().write_all(out.as_bytes()));
    }
}
