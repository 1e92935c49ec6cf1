//! Replaying captured binlog segments into a MySQL/MariaDB target.
//!
//! Row events are applied the way `mariadb-binlog | mariadb` applies them:
//! as `BINLOG '<base64>'` statements carrying the original format
//! description, table map and row events, so the server decodes full row
//! images itself, for every column type, with no value conversion on our
//! side. Statements logged as text (DDL) are executed as logged, in the
//! database they were logged in. Transactions are framed with BEGIN/COMMIT
//! from the GTID and XID events, so a target never holds half of one.
//!
//! Needs the `BINLOG REPLAY` privilege (or SUPER) on the target.

use base64::Engine as _;
use mysql_async::binlog::events::{Event, EventData};
use mysql_async::binlog::BinlogVersion;
use mysql_async::prelude::Queryable;
use mysql_async::Conn;
use mysql_common::binlog::EventStreamReader;
use topology::Shard;

use super::capture::{event, mariadb_gtid, query_text, BINLOG_MAGIC, STREAM};
use crate::capture::{load_segment, CaptureError};
use crate::connect;
use crate::position::{BinlogCoordinates, Position};
use crate::replay::{excerpt, segments, ReplayError, ReplayReport};
use crate::repo::Repository;

/// Statement-end flag of a row event (flags follow the 6-byte table id).
const STMT_END_F: u16 = 0x0001;

fn coords(p: &Position) -> Option<&BinlogCoordinates> {
    match p {
        Position::Mariadb { binlog, .. } | Position::Mysql { binlog, .. } => Some(binlog),
        Position::Postgres { .. } => None,
    }
}

fn after(a: &BinlogCoordinates, b: &BinlogCoordinates) -> bool {
    let pa = Position::Mariadb {
        gtid: String::new(),
        binlog: a.clone(),
    };
    let pb = Position::Mariadb {
        gtid: String::new(),
        binlog: b.clone(),
    };
    matches!(pa.compare(&pb), Ok(std::cmp::Ordering::Greater))
}

/// Applies the transactions of `source`'s binlog stream that end after
/// `from` and at or before `to` to `target`.
pub async fn replay(
    repo: &dyn Repository,
    source: &str,
    target: &Shard,
    from: &Position,
    to: &Position,
) -> Result<ReplayReport, ReplayError> {
    let refused = |what: String| ReplayError::Refused {
        shard: target.name.clone(),
        what,
    };
    let (from_position, to_position) = (from, to);
    let (from, to) = match (coords(from), coords(to)) {
        (Some(f), Some(t)) => (f.clone(), t.clone()),
        _ => return Err(refused("positions are not binlog positions".into())),
    };
    let mut report = ReplayReport::default();
    let segs = segments(repo, source, STREAM, (from_position, to_position))?;
    let mut conn = connect::mysql(target, None, std::time::Duration::from_secs(10)).await?;
    let mut applied = from.clone();
    for seg in segs {
        let (Some(first), Some(last)) = (coords(&seg.first), coords(&seg.last)) else {
            continue;
        };
        if !after(last, &from) || !after(&to, first) {
            continue;
        }
        let raw = load_segment(repo, &seg)?;
        let file = last.file.clone();
        let n = apply_segment(&mut conn, target, &raw, &file, &mut applied, &to, &seg.key).await?;
        report.segments += 1;
        report.transactions += n.0;
        report.statements += n.1;
    }
    drop(conn.disconnect().await);
    Ok(report)
}

/// One statement to run for a transaction, with what to name on failure.
struct Step {
    sql: String,
    at: u32,
}

/// The binlog event at the start of `rest` (its header's size field
/// checked against what is there) and what follows it.
pub(crate) fn next_event(rest: &[u8]) -> Result<(&[u8], &[u8]), String> {
    let Some(h) = rest.get(9..13) else {
        return Err(format!("truncated event header of {} bytes", rest.len()));
    };
    let size = u32::from_le_bytes([h[0], h[1], h[2], h[3]]) as usize;
    if size < 19 || size > rest.len() {
        return Err(format!("truncated event of {size} bytes"));
    }
    Ok(rest.split_at(size))
}

async fn apply_segment(
    conn: &mut Conn,
    target: &Shard,
    raw: &[u8],
    file: &str,
    applied: &mut BinlogCoordinates,
    to: &BinlogCoordinates,
    key: &str,
) -> Result<(u64, u64), ReplayError> {
    let corrupt = |what: String| {
        ReplayError::Capture(CaptureError::Corrupt {
            key: key.to_string(),
            what,
        })
    };
    if !raw.starts_with(&BINLOG_MAGIC) {
        return Err(corrupt("not a binlog segment".into()));
    }
    let b64 = base64::engine::general_purpose::STANDARD;
    let mut esr = EventStreamReader::new(BinlogVersion::Version4);
    let mut rest = &raw[4..];
    let mut fde_sent = false;
    let mut txn = TxnSteps::default();
    let (mut txns, mut stmts) = (0u64, 0u64);
    while rest.len() >= 19 {
        let (bytes, tail) = next_event(rest).map_err(corrupt)?;
        rest = tail;
        let ev: Event = esr
            .read(bytes)
            .map_err(|e| corrupt(format!("unreadable event: {e}")))?
            .ok_or_else(|| corrupt("empty event".into()))?;
        let h = ev.header();
        if h.event_type_raw() == event::FORMAT_DESCRIPTION {
            if !fde_sent {
                run(
                    conn,
                    target,
                    &format!("BINLOG '{}'", b64.encode(bytes)),
                    file,
                    "the format description",
                )
                .await?;
                fde_sent = true;
            }
            continue;
        }
        if txn.begin(&ev) || !txn.add(&ev, bytes, file).map_err(corrupt)? {
            continue;
        }
        txn.active = false;
        let end = BinlogCoordinates {
            file: file.to_string(),
            offset: u64::from(h.log_pos()),
        };
        if !after(&end, applied) || after(&end, to) {
            continue;
        }
        for s in txn.steps.drain(..) {
            let what = if txn.gtid.is_empty() {
                format!("{file}:{}", s.at)
            } else {
                format!("{file}:{} (GTID {})", s.at, txn.gtid)
            };
            run(conn, target, &s.sql, &what, &s.sql).await?;
            stmts += 1;
        }
        *applied = end;
        txns += 1;
    }
    if txn.active {
        return Err(corrupt("the segment ends inside a transaction".into()));
    }
    Ok((txns, stmts))
}

/// The statements of the transaction being read from a segment.
#[derive(Default)]
struct TxnSteps {
    steps: Vec<Step>,
    /// Table-map and row events not yet turned into a `BINLOG` statement.
    pending: Vec<u8>,
    active: bool,
    /// Ends with its first non-`BEGIN` query (DDL) rather than a commit.
    standalone: bool,
    /// MySQL's GTID event does not say; the first query decides.
    undecided: bool,
    /// The newest MariaDB GTID, for error messages.
    gtid: String,
}

impl TxnSteps {
    /// Starts a transaction at `ev` when none is open. Returns whether
    /// `ev` only started it (a GTID event) and is done with.
    fn begin(&mut self, ev: &Event) -> bool {
        if self.active {
            return false;
        }
        *self = TxnSteps {
            active: true,
            gtid: std::mem::take(&mut self.gtid),
            ..Default::default()
        };
        let h = ev.header();
        match h.event_type_raw() {
            event::MARIADB_GTID => {
                self.standalone = ev.data().get(12).is_some_and(|f| f & 1 != 0);
                self.gtid = mariadb_gtid(ev).unwrap_or_default();
                if !self.standalone {
                    self.steps.push(Step {
                        sql: "BEGIN".into(),
                        at: h.log_pos(),
                    });
                }
                true
            }
            event::MYSQL_GTID | event::MYSQL_ANONYMOUS_GTID => {
                self.undecided = true;
                true
            }
            _ => false,
        }
    }

    /// Adds `ev` (whose encoding is `bytes`) to the transaction. Returns
    /// whether it ends it, or what is wrong with the segment.
    fn add(&mut self, ev: &Event, bytes: &[u8], file: &str) -> Result<bool, String> {
        let at = ev.header().log_pos();
        match ev.header().event_type_raw() {
            event::XID => {
                flush_rows(&mut self.steps, &mut self.pending, at);
                self.steps.push(Step {
                    sql: "COMMIT".into(),
                    at,
                });
                return Ok(true);
            }
            event::QUERY | event::MARIADB_QUERY_COMPRESSED => {
                let q = query_text(ev)
                    .ok_or_else(|| format!("unreadable query event at {file}:{at}"))?;
                return Ok(self.query(ev, q, at));
            }
            event::TABLE_MAP => self.pending.extend_from_slice(bytes),
            t if event::is_rows(t) => {
                self.pending.extend_from_slice(bytes);
                let flags = ev
                    .data()
                    .get(6..8)
                    .map(|f| u16::from_le_bytes([f[0], f[1]]));
                if flags.is_some_and(|f| f & STMT_END_F != 0) {
                    flush_rows(&mut self.steps, &mut self.pending, at);
                }
            }
            // Annotations, and variables of statement-based logging that
            // row events do not need.
            _ => {}
        }
        Ok(false)
    }

    /// Adds query `q` of event `ev`; returns whether it ends the
    /// transaction.
    fn query(&mut self, ev: &Event, q: String, at: u32) -> bool {
        let begin = q.eq_ignore_ascii_case("BEGIN");
        if self.undecided {
            self.undecided = false;
            self.standalone = !begin;
        }
        if begin {
            self.steps.push(Step {
                sql: "BEGIN".into(),
                at,
            });
            return false;
        }
        if q.eq_ignore_ascii_case("COMMIT") || q.eq_ignore_ascii_case("ROLLBACK") {
            flush_rows(&mut self.steps, &mut self.pending, at);
            self.steps.push(Step {
                sql: q.to_uppercase(),
                at,
            });
            return true;
        }
        let schema = match ev.read_data() {
            Ok(Some(EventData::QueryEvent(qe))) => qe.schema().to_string(),
            _ => String::new(),
        };
        if !schema.is_empty() {
            self.steps.push(Step {
                sql: format!("USE {}", super::sql::ident(&schema)),
                at,
            });
        }
        self.steps.push(Step { sql: q, at });
        self.standalone
    }
}

fn flush_rows(steps: &mut Vec<Step>, pending: &mut Vec<u8>, at: u32) {
    if pending.is_empty() {
        return;
    }
    let b64 = base64::engine::general_purpose::STANDARD;
    steps.push(Step {
        sql: format!("BINLOG '{}'", b64.encode(&pending)),
        at,
    });
    pending.clear();
}

async fn run(
    conn: &mut Conn,
    target: &Shard,
    sql: &str,
    at: &str,
    shown: &str,
) -> Result<(), ReplayError> {
    conn.query_drop(sql).await.map_err(|e| {
        // Leave no half transaction behind on the target.
        let shown = if shown.starts_with("BINLOG ") {
            "row events (BINLOG …)".to_string()
        } else {
            format!("`{}`", excerpt(shown))
        };
        ReplayError::Apply {
            shard: target.name.clone(),
            at: at.to_string(),
            what: format!("the target refused {shown}: {e}"),
        }
    })
}
