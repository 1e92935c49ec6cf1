//! Settling a MariaDB shard: syncing its binary log before the block.
//!
//! `BACKUP STAGE BLOCK_COMMIT` syncs the binlog while commits wait. With
//! `sync_binlog = 0` the OS may hold up to 30 s of binlog writes, and that
//! sync took 78-195 ms under load (docs/BENCHMARKS.md), most of the block.
//! When the agent runs on the server's host and may read the binlog, an
//! `fdatasync` of it just before the block does that write-back while
//! commits go on, and the block's own sync is left with what was written
//! since. Anywhere else nothing is done: the block is as correct either
//! way, only longer. Nothing here can fail a cut; whatever stops the sync
//! is logged at debug level.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use mysql_async::prelude::Queryable;
use mysql_async::{Conn, Row};

use super::sql::{number, text};

/// Syncs the current binlog file if the server leaves it to the OS and it
/// is reachable here. Returns how long the sync took, or why it was not
/// done.
pub(super) async fn binlog(conn: &mut Conn, bound: Duration) -> Result<Duration, String> {
    let rows: Vec<Row> = conn
        .query("SELECT @@GLOBAL.sync_binlog, @@GLOBAL.log_bin_basename, @@hostname")
        .await
        .map_err(|e| format!("reading the binlog settings: {e}"))?;
    let row = rows.first().ok_or("no binlog settings")?;
    let sync = number(row, 0).map_err(|e| e.to_string())?.unwrap_or(0);
    if sync == 1 {
        return Err("sync_binlog = 1 keeps it synced".into());
    }
    let base = text(row, 1)
        .map_err(|e| e.to_string())?
        .ok_or("the binary log is off")?;
    let host = text(row, 2).map_err(|e| e.to_string())?.unwrap_or_default();
    let here = local_hostname().ok_or("this host's name is unknown")?;
    if host != here {
        return Err(format!("the server runs on {host}, not on {here}"));
    }
    let binlog = super::binlog_status(conn)
        .await
        .map_err(|e| format!("reading the binlog position: {e}"))?
        .ok_or("the binary log is off")?;
    if binlog.file.is_empty() {
        return Err("the server names no binlog file".into());
    }
    let path = current_file(Path::new(&base), &binlog.file)?;
    let started = Instant::now();
    let task = tokio::task::spawn_blocking(move || sync_file(&path, binlog.offset));
    match tokio::time::timeout(bound, task).await {
        Ok(Ok(Ok(()))) => Ok(started.elapsed()),
        Ok(Ok(Err(why))) => Err(why),
        Ok(Err(e)) => Err(format!("the sync task failed: {e}")),
        // The sync goes on in the background; the block's own sync then
        // waits for less.
        Err(_) => Err(format!(
            "the sync took over {} ms; blocking anyway",
            bound.as_millis()
        )),
    }
}

/// `log_bin_basename` is the binlog's path without its extension; the
/// file `SHOW MASTER STATUS` names lies beside it. Both come from the
/// server: the base must be absolute and the file a plain file name, so
/// that no other file of this host is opened.
fn current_file(base: &Path, file: &str) -> Result<PathBuf, String> {
    let plain = !file.is_empty() && file != "." && file != ".." && !file.contains('/');
    match base.parent() {
        Some(dir) if base.is_absolute() && plain => Ok(dir.join(file)),
        _ => Err(format!(
            "the server names its binlog {file:?} beside {}, not a file this agent opens",
            base.display()
        )),
    }
}

/// Syncs `path`'s data. A file shorter than the server's position is not
/// the server's binlog (the same path on another machine behind a
/// forwarded port, say) and is left alone.
fn sync_file(path: &Path, offset: u64) -> Result<(), String> {
    // Opening a FIFO or a device could block or do more than read: only a
    // regular file is opened.
    let kind = std::fs::metadata(path).map_err(|e| format!("{}: {e}", path.display()))?;
    if !kind.is_file() {
        return Err(format!(
            "{} is not a regular file: not its binlog",
            path.display()
        ));
    }
    let f = std::fs::File::open(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let len = f
        .metadata()
        .map_err(|e| format!("{}: {e}", path.display()))?
        .len();
    if len < offset {
        return Err(format!(
            "{} holds {len} bytes, less than the server's position {offset}: not its binlog",
            path.display()
        ));
    }
    f.sync_data()
        .map_err(|e| format!("syncing {}: {e}", path.display()))
}

fn local_hostname() -> Option<String> {
    let name = std::fs::read_to_string("/proc/sys/kernel/hostname").ok()?;
    let name = name.trim();
    (!name.is_empty()).then(|| name.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_current_file_lies_beside_the_basename() {
        assert_eq!(
            current_file(Path::new("/var/lib/mysql/binlog"), "binlog.000042"),
            Ok(PathBuf::from("/var/lib/mysql/binlog.000042"))
        );
        for (base, file) in [
            ("/var/lib/mysql/binlog", "../../etc/shadow"),
            ("/var/lib/mysql/binlog", "/etc/shadow"),
            ("/var/lib/mysql/binlog", ".."),
            ("/var/lib/mysql/binlog", ""),
            ("binlog", "binlog.000042"),
        ] {
            assert!(
                current_file(Path::new(base), file).is_err(),
                "{base} {file}"
            );
        }
    }

    #[test]
    fn a_fifo_is_not_opened() {
        let dir = tempfile::tempdir().unwrap();
        let fifo = dir.path().join("binlog.000001");
        let made = std::process::Command::new("mkfifo")
            .arg(&fifo)
            .status()
            .unwrap();
        assert!(made.success());
        // Opening the FIFO for reading would block this thread for good.
        let err = sync_file(&fifo, 0).unwrap_err();
        assert!(
            err.ends_with("is not a regular file: not its binlog"),
            "{err}"
        );
    }

    #[test]
    fn a_file_shorter_than_the_position_is_not_synced() {
        let dir = std::env::temp_dir().join(format!("shardcut-presync-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("binlog.000001");
        std::fs::write(&path, b"0123456789").unwrap();
        assert_eq!(sync_file(&path, 10), Ok(()));
        let err = sync_file(&path, 11).unwrap_err();
        assert!(err.contains("less than the server's position 11"), "{err}");
        let missing = sync_file(&dir.join("binlog.000002"), 0).unwrap_err();
        assert!(missing.contains("binlog.000002"), "{missing}");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
