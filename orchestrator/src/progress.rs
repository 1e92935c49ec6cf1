//! Progress of a running dump on stderr: redrawn bars on a terminal, plain
//! periodic lines otherwise (logs, cron, CI).

use std::io::{IsTerminal, Write};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use shard_agent::session::Progress;

use crate::render;

pub struct Display {
    task: tokio::task::JoinHandle<()>,
}

impl Display {
    pub fn start(shards: Vec<(String, Arc<Progress>)>) -> Display {
        let tty = std::io::stderr().is_terminal();
        let every = if tty {
            Duration::from_millis(250)
        } else {
            Duration::from_secs(5)
        };
        let task = tokio::spawn(async move {
            let started = Instant::now();
            let mut drawn = 0;
            loop {
                tokio::time::sleep(every).await;
                let secs = started.elapsed().as_secs_f64().max(0.001);
                let mut out = String::new();
                if tty && drawn > 0 {
                    out.push_str(&format!("\x1b[{drawn}A"));
                }
                for (name, p) in &shards {
                    let rows = p.rows.load(Ordering::Relaxed);
                    let bytes = p.bytes.load(Ordering::Relaxed);
                    let est = p.rows_estimate.load(Ordering::Relaxed);
                    let rate = bytes as f64 / secs;
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
                    if tty {
                        let filled = (frac * 20.0) as usize;
                        out.push_str(&format!(
                            "\x1b[2K{name:<12} [{}{}] {:>12} rows {:>10} {:>10}/s {eta}\n",
                            "#".repeat(filled),
                            " ".repeat(20 - filled),
                            render::count(rows),
                            render::bytes(bytes),
                            render::bytes(rate as u64)
                        ));
                    } else {
                        out.push_str(&format!(
                            "progress {name}: {} rows, {}, {}/s {eta}\n",
                            render::count(rows),
                            render::bytes(bytes),
                            render::bytes(rate as u64)
                        ));
                    }
                }
                drawn = shards.len();
                let mut err = std::io::stderr().lock();
                // Progress output is best effort; a closed stderr must not fail the backup.
                drop(err.write_all(out.as_bytes()));
            }
        });
        Display { task }
    }
}

impl Drop for Display {
    fn drop(&mut self) {
        self.task.abort();
    }
}
