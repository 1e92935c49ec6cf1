//! MySQL/MariaDB capture: the binlog read over the replication protocol.
//!
//! A round asks for the binlog from the stream's stored position in
//! non-blocking mode (the server ends the stream at the end of its last
//! binlog) and cuts what it reads into segments of whole transactions.
//! A segment never spans two binlog files, so every event's `log_pos`
//! together with the segment's file is an exact position.
//!
//! A segment's data is itself a binlog file: the magic number, the format
//! description event the server sent, then the transactions' events byte
//! for byte. `mariadb-binlog` reads it like any binlog.
//!
//! On MariaDB a round resumes by GTID (`@slave_connect_state`), as a
//! replica does with `MASTER_USE_GTID`: the stored GTID position names the
//! same point of the history on the primary and on every replica that logs
//! what it applies, so capture continues on a promoted replica (binlog
//! files of its own) and after a server restart (a new file) without a gap
//! and without a repeat. The server refuses a position its binlog does not
//! hold (a replica that was behind, or has transactions of its own), and
//! the round says so. File and offset are kept beside the GTIDs; they are
//! what a stream with no transaction yet, and MySQL, resume from.

use std::sync::atomic::{AtomicBool, Ordering};

use futures_util::StreamExt;
use mysql_async::binlog::events::{Event, EventData};
use mysql_async::binlog::BinlogVersion;
use mysql_async::prelude::Queryable;
use mysql_async::{BinlogStreamRequest, Row};
use topology::{Compression, Engine, Shard};

use crate::capture::spill::{spill_bytes, spilled_note, SpillBuffer};
use crate::capture::{
    store_segment, CaptureError, RoundReport, SegmentData, SegmentMeta, StreamState,
    SEGMENT_RAW_BYTES,
};
use crate::connect;
use crate::position::{BinlogCoordinates, Gtid, GtidPosition, Position};
use crate::repo::Repository;

/// The one stream of a MySQL/MariaDB shard.
pub const STREAM: &str = "binlog";
/// Every binlog file starts with these bytes.
pub const BINLOG_MAGIC: [u8; 4] = [0xfe, b'b', b'i', b'n'];

pub mod event {
    //! Event type codes used here (MySQL and MariaDB).
    pub const QUERY: u8 = 2;
    pub const ROTATE: u8 = 4;
    pub const FORMAT_DESCRIPTION: u8 = 15;
    pub const XID: u8 = 16;
    pub const TABLE_MAP: u8 = 19;
    pub const MYSQL_GTID: u8 = 33;
    pub const MYSQL_ANONYMOUS_GTID: u8 = 34;
    pub const MARIADB_GTID: u8 = 162;
    pub const MARIADB_QUERY_COMPRESSED: u8 = 165;

    /// MariaDB's compressed row events (`log_bin_compress`), which a
    /// `BINLOG` statement does not take ("Only Format_description_log_event
    /// and row events are allowed in BINLOG statements (but
    /// Write_rows_compressed_v1 was provided)").
    pub fn is_compressed_rows(t: u8) -> bool {
        matches!(t, 166..=171)
    }

    /// Row events: v1, v2 and MariaDB's compressed ones.
    pub fn is_rows(t: u8) -> bool {
        matches!(t, 23..=25 | 30..=32 | 166..=171)
    }
}

const CONNECT_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// The server's current binlog position, of the kind its cuts record
/// (MariaDB's GTID position, or MySQL's executed set), so that the two
/// compare.
pub async fn current_position(shard: &Shard) -> Result<Position, CaptureError> {
    let mut conn = connect::mysql(shard, None, CONNECT_TIMEOUT).await?;
    let mariadb = super::is_mariadb(&conn);
    let at = super::cut::position(&mut conn, shard, mariadb).await;
    drop(conn.disconnect().await);
    Ok(at?)
}

/// A refusal when the server's binlog filters keep changes of a database
/// capture of `shard` covers out of the binary log
/// ([`super::binlog_filters`]): replaying from such a binlog would leave
/// them out, and a restore to a later point lack them.
async fn filters_refusal(conn: &mut mysql_async::Conn, shard: &Shard) -> Result<(), CaptureError> {
    match super::binlog_filters::capture_refusal(conn, shard).await {
        Ok(None) => {}
        Ok(Some(why)) => return Err(CaptureError::stream(&shard.name, why)),
        Err(e) => {
            return Err(CaptureError::stream(
                &shard.name,
                format!("reading the binlog filters: {e}"),
            ))
        }
    }
    compression_refusal(conn, shard).await
}

/// Refuses a MariaDB server that compresses its binary log
/// (`log_bin_compress`): replay can apply neither its compressed
/// statements (the driver does not decode them) nor its compressed row
/// events (a `BINLOG` statement does not take them), so every change
/// logged past `log_bin_compress_min_len` would stop a restore to a later
/// mark. Looked at when capture starts and at every round, as the
/// setting changes without a restart.
async fn compression_refusal(
    conn: &mut mysql_async::Conn,
    shard: &Shard,
) -> Result<(), CaptureError> {
    if !super::is_mariadb(conn) {
        return Ok(());
    }
    let on: Option<String> = conn
        .query_first("SELECT @@GLOBAL.log_bin_compress")
        .await
        .map_err(|e| CaptureError::stream(&shard.name, format!("reading log_bin_compress: {e}")))?;
    match on.as_deref() {
        Some("1" | "ON") => Err(CaptureError::stream(
            &shard.name,
            "capture refused: the server compresses its binary log (log_bin_compress is on), \
             and replay can apply neither its compressed statements nor its compressed row events: \
             SET GLOBAL log_bin_compress = OFF and put log_bin_compress=OFF in the config",
        )),
        _ => Ok(()),
    }
}

/// The binlog files the server `conn` is connected to still has.
async fn binlog_files(
    conn: &mut mysql_async::Conn,
    shard: &Shard,
) -> Result<Vec<String>, CaptureError> {
    let rows: Vec<Row> = conn
        .query("SHOW BINARY LOGS")
        .await
        .map_err(|e| CaptureError::stream(&shard.name, format!("SHOW BINARY LOGS failed: {e}")))?;
    Ok(rows
        .iter()
        .filter_map(|r| r.get_opt::<String, _>(0).and_then(Result::ok))
        .collect())
}

fn coordinates(p: &Position) -> Option<&BinlogCoordinates> {
    match p {
        Position::Mariadb { binlog, .. } | Position::Mysql { binlog, .. } => Some(binlog),
        Position::Postgres { .. } => None,
    }
}

/// Name of segment `seq` of the stream. Earlier versions named segments
/// by binlog file number and offset, which a failover to a server with its
/// own binlog files would reuse: the number is the stream's own, and the
/// `s` sorts these after the older names of the generation.
fn sort_key(seq: u64) -> String {
    format!("s{seq:012}")
}

/// A new stream state starting at `from` (a backup's cut, or the server's
/// current position), refusing a start whose binlog file is gone.
pub async fn start(shard: &Shard, from: Position) -> Result<StreamState, CaptureError> {
    let c = coordinates(&from)
        .ok_or_else(|| CaptureError::stream(&shard.name, "not a binlog position"))?;
    // A GTID position is looked up by the server itself when the first
    // round asks for it (and refused there if its binlog lacks it); the
    // file of a position of another server says nothing.
    let by_gtid = from.gtid_position().is_some();
    // The filters refused before a stream exists, as each round refuses
    // them.
    let mut conn = connect::mysql(shard, None, CONNECT_TIMEOUT).await?;
    let looked = match filters_refusal(&mut conn, shard).await {
        Ok(()) => binlog_files(&mut conn, shard).await,
        Err(e) => Err(e),
    };
    drop(conn.disconnect().await);
    let files = looked?;
    if !by_gtid && !files.contains(&c.file) {
        return Err(CaptureError::stream(
            &shard.name,
            format!(
                "binlog file {} (capture start) is no longer on the server",
                c.file
            ),
        ));
    }
    let now = chrono::Utc::now().to_rfc3339();
    Ok(StreamState {
        shard: shard.name.clone(),
        stream: STREAM.into(),
        engine: Engine::Mysql,
        started: from.clone(),
        started_at: now.clone(),
        progress: from,
        updated_at: now,
        last_commit: None,
        next_seq: 0,
        generation: 0,
        slot: None,
        published_from: Default::default(),
        unpublished: Vec::new(),
        unlogged: Vec::new(),
    })
}

/// One open segment: whole transactions of one binlog file. Its bytes, as
/// a transaction's, go to a temporary file past [`spill_bytes`]: a
/// transaction of any size is captured in bounded memory.
struct Open {
    raw: SpillBuffer,
    first: BinlogCoordinates,
    last: BinlogCoordinates,
    /// The GTID position before its first transaction and after its last.
    gtid_first: String,
    gtid: String,
    first_commit: Option<u32>,
    last_commit: Option<u32>,
    transactions: u64,
}

/// The transaction being read: its events, and how it ends.
#[derive(Default)]
struct Txn {
    raw: SpillBuffer,
    active: bool,
    /// Ends with its first non-`BEGIN` query (DDL) rather than an XID.
    standalone: bool,
    /// MySQL's GTID event does not say; the first query decides.
    undecided: bool,
    /// The GTID position before it.
    gtid_before: String,
}

impl Txn {
    /// The transaction `ev` starts, or `None` for an event that belongs to
    /// no transaction.
    fn begin(ev: &Event) -> Option<Txn> {
        match ev.header().event_type_raw() {
            event::MARIADB_GTID => Some(Txn {
                active: true,
                // FL_STANDALONE: a statement outside BEGIN … COMMIT.
                standalone: ev.data().get(12).is_some_and(|f| f & 1 != 0),
                ..Default::default()
            }),
            event::MYSQL_GTID | event::MYSQL_ANONYMOUS_GTID => Some(Txn {
                active: true,
                undecided: true,
                ..Default::default()
            }),
            event::QUERY | event::MARIADB_QUERY_COMPRESSED => {
                let begin = query_text(ev).is_some_and(|q| q.eq_ignore_ascii_case("BEGIN"));
                Some(Txn {
                    active: true,
                    standalone: !begin,
                    ..Default::default()
                })
            }
            _ => None,
        }
    }

    /// Whether `ev` (already added) ends the transaction.
    fn ends_with(&mut self, ev: &Event) -> bool {
        match ev.header().event_type_raw() {
            event::XID => true,
            event::QUERY | event::MARIADB_QUERY_COMPRESSED => {
                let q = query_text(ev).unwrap_or_default();
                let is_begin = q.eq_ignore_ascii_case("BEGIN");
                if self.undecided {
                    self.undecided = false;
                    self.standalone = !is_begin;
                }
                self.standalone && !is_begin
                    || q.eq_ignore_ascii_case("COMMIT")
                    || q.eq_ignore_ascii_case("ROLLBACK")
            }
            _ => false,
        }
    }
}

fn rfc3339(ts: u32) -> String {
    chrono::DateTime::from_timestamp(i64::from(ts), 0)
        .map(|t| t.to_rfc3339())
        .unwrap_or_default()
}

/// Reads the binlog from `state.progress` to the server's end and stores
/// it; advances and saves `state` after every stored segment.
pub async fn catch_up(
    shard: &Shard,
    repo: &dyn Repository,
    state: &mut StreamState,
    server_id: u32,
    compression: Compression,
    stop: &AtomicBool,
) -> Result<RoundReport, CaptureError> {
    let name = shard.name.clone();
    let fail = |what: String| CaptureError::stream(&name, what);
    let start = coordinates(&state.progress)
        .cloned()
        .ok_or_else(|| fail("the stream state holds no binlog position".into()))?;
    let by_gtid = match state.progress.gtid_position() {
        Some(Ok(g)) => Some(g),
        Some(Err(e)) => return Err(fail(format!("the stream state's GTID position: {e}"))),
        None => None,
    };
    let mut conn = connect::mysql(shard, None, CONNECT_TIMEOUT).await?;
    // The options need a restart to change, which a long-running capture
    // rides out: each round looks again.
    filters_refusal(&mut conn, shard).await?;
    // MariaDB sends its own GTID events (and not dummies) only to a
    // replica that says it understands them.
    conn.query_drop("SET @mariadb_slave_capability = 4")
        .await
        .map_err(|e| fail(format!("setting the replica capability: {e}")))?;
    let (file, offset, from) = match &by_gtid {
        Some(g) => {
            same_history(&mut conn, g).await.map_err(fail)?;
            // The text is printed from the parsed position: digits,
            // dashes and commas only.
            conn.query_drop(format!("SET @slave_connect_state = '{g}'"))
                .await
                .map_err(|e| fail(format!("setting the GTID to resume from: {e}")))?;
            // Refuse, rather than skip, a position the server's binlog
            // does not hold exactly.
            conn.query_drop("SET @slave_gtid_strict_mode = 1")
                .await
                .map_err(|e| fail(format!("setting GTID strict mode: {e}")))?;
            (String::new(), 4, format!("GTID {g}"))
        }
        None => (
            start.file.clone(),
            start.offset,
            format!("{}:{}", start.file, start.offset),
        ),
    };
    let request = BinlogStreamRequest::new(server_id)
        .with_filename(file.as_bytes())
        .with_pos(offset)
        .with_non_blocking();
    let mut stream = conn
        .get_binlog_stream(request)
        .await
        .map_err(|e| fail(format!("requesting the binlog from {from}: {e}")))?;
    let gtid = by_gtid.clone().unwrap_or_default();
    let mut round = Round {
        shard,
        repo,
        state,
        compression,
        report: RoundReport {
            shard: name.clone(),
            stream: STREAM.into(),
            ..Default::default()
        },
        pos: start,
        gtid,
        by_gtid: by_gtid.is_some(),
        fde: None,
        open: None,
    };
    let mut txn = Txn::default();
    let mut scratch = Vec::new();
    let selection = crate::manifest::Selection::of(shard);
    let lower = super::logged_sql::folded(&selection);
    loop {
        if stop.load(Ordering::Relaxed) && !txn.active {
            break;
        }
        let Some(next) = stream.next().await else {
            break;
        };
        let ev = next.map_err(|e| round.read_error(&e.to_string()))?;
        scratch.clear();
        ev.write(BinlogVersion::Version4, &mut scratch)
            .map_err(|e| fail(format!("re-encoding an event: {e}")))?;
        if round.between(&ev, &scratch, &mut txn)? {
            continue;
        }
        txn.raw.extend(&scratch).map_err(|e| {
            fail(format!(
                "holding a large transaction in a temporary file: {e}"
            ))
        })?;
        round.look_ahead_of_replay(&ev, &selection, &lower);
        if txn.ends_with(&ev) {
            round.commit(std::mem::take(&mut txn), &ev)?;
        }
    }
    drop(stream.close().await);
    round.close()?;
    // Nothing open: the position after the last whole transaction (or the
    // last event between transactions) is stored.
    round.advance_to_pos()?;
    let mut report = round.report;
    report.progress = Some(state.progress.clone());
    report.server_position = current_position(shard).await.ok();
    Ok(report)
}

/// Whether the server's binlog holds the history up to `stored`, where
/// the stream stopped: its GTID position is at or after it, on the same
/// history. A promoted replica that had not caught up, a server restored
/// from a backup, or another cluster's server would otherwise answer a
/// resume with nothing, or with transactions that do not follow.
async fn same_history(conn: &mut mysql_async::Conn, stored: &GtidPosition) -> Result<(), String> {
    let text: Option<String> = conn
        .query_first("SELECT @@GLOBAL.gtid_binlog_pos")
        .await
        .map_err(|e| format!("reading the server's GTID position: {e}"))?;
    let server: GtidPosition = text
        .unwrap_or_default()
        .parse()
        .map_err(|e| format!("the server's gtid_binlog_pos: {e}"))?;
    let new_backup = "restores up to where it stopped still work; to capture this server, \
                      end the stream with `shardcut capture --remove` and take a new backup";
    match stored.compare(&server) {
        Ok(std::cmp::Ordering::Less | std::cmp::Ordering::Equal) => Ok(()),
        Ok(std::cmp::Ordering::Greater) => Err(format!(
            "the server's binlog ends at GTID {} before {stored}, where capture stopped: \
             it lacks transactions this stream has stored (a replica promoted before it caught up, \
             or another server); {new_backup}",
            if server.is_empty() {
                "(none)".to_string()
            } else {
                server.to_string()
            }
        )),
        Err(e) => Err(format!(
            "the server's history is not the one capture read: {e}; {new_backup}"
        )),
    }
}

/// Why replay refuses a compressed query event (MariaDB's
/// `log_bin_compress`): the driver does not decode them.
pub(super) const COMPRESSED_QUERY: &str = "a compressed statement (the server's log_bin_compress is on), which replay cannot read; SET GLOBAL log_bin_compress = OFF";

/// Why replay refuses a compressed row event ([`event::is_compressed_rows`]).
pub(super) const COMPRESSED_ROWS: &str = "a compressed row event (the server's log_bin_compress is on), which replay cannot apply; SET GLOBAL log_bin_compress = OFF";

/// One catch-up round of the binlog stream: where it stands, and the
/// segment being filled.
struct Round<'a> {
    shard: &'a Shard,
    repo: &'a dyn Repository,
    state: &'a mut StreamState,
    compression: Compression,
    report: RoundReport,
    /// Just after the last whole transaction (or event between them).
    pos: BinlogCoordinates,
    /// The GTID position after the newest transaction seen.
    gtid: GtidPosition,
    /// The round asked for the binlog by GTID: the server's first event
    /// names the file it starts in.
    by_gtid: bool,
    /// The server's format description event, which opens every segment.
    fde: Option<Vec<u8>>,
    open: Option<Open>,
}

impl Round<'_> {
    /// Reads a logged statement of a transaction as replay will
    /// (`logged_sql::place`, under the topology's selection) and notes one
    /// replay would refuse: a change logged as a statement (a session with
    /// `binlog_format` STATEMENT or MIXED), DDL that crosses the
    /// selection's edge, a table map naming a table of the selection in
    /// another letter case (`lower` is `selection` folded). Capture stores
    /// it all the same (marks before it still restore), but the DBA hears
    /// of it now, not when a restore to a later mark fails after its base
    /// is restored.
    fn look_ahead_of_replay(
        &mut self,
        ev: &Event,
        selection: &crate::manifest::Selection,
        lower: &crate::manifest::Selection,
    ) {
        // Past the round's last name, nothing more to read.
        if self.report.replay_refuses.len() >= crate::capture::REFUSES_NAMED {
            return;
        }
        if ev.header().event_type_raw() == event::TABLE_MAP {
            let Ok(Some(EventData::TableMapEvent(map))) = ev.read_data() else {
                return;
            };
            let held = super::logged_sql::map_held(
                &map.database_name(),
                &map.table_name(),
                selection,
                lower,
            );
            // Each statement maps its tables again: named once a round.
            if let Err(why) = held {
                if !self.report.replay_refuses.iter().any(|r| r.ends_with(&why)) {
                    self.name_refused(ev, why);
                }
            }
            return;
        }
        if event::is_compressed_rows(ev.header().event_type_raw()) {
            self.name_refused(ev, COMPRESSED_ROWS.into());
            return;
        }
        if !matches!(
            ev.header().event_type_raw(),
            event::QUERY | event::MARIADB_QUERY_COMPRESSED
        ) {
            return;
        }
        let Ok(Some(EventData::QueryEvent(qe))) = ev.read_data() else {
            if ev.header().event_type_raw() == event::MARIADB_QUERY_COMPRESSED {
                self.name_refused(ev, COMPRESSED_QUERY.into());
            }
            return;
        };
        let q = qe.query().trim().to_string();
        if ["BEGIN", "COMMIT", "ROLLBACK"]
            .iter()
            .any(|w| q.eq_ignore_ascii_case(w))
        {
            return;
        }
        let placed = super::logged_sql::logged_settings(&qe)
            .map(|(quoting, _)| super::logged_sql::place(&q, &qe.schema(), selection, quoting));
        let why = match placed {
            Ok(super::logged_sql::Placement::Refuse(why)) | Err(why) => why,
            Ok(_) => return,
        };
        self.name_refused(ev, format!("`{}`: {why}", super::logged_sql::shown(&q)));
    }

    /// Notes event `ev`, which replay will refuse for `why`, in the round's
    /// report (at most [`crate::capture::REFUSES_NAMED`] a round: see
    /// [`Self::look_ahead_of_replay`]).
    fn name_refused(&mut self, ev: &Event, why: String) {
        self.report.replay_refuses.push(format!(
            "{}:{}: {why}",
            self.pos.file,
            ev.header().log_pos()
        ));
    }

    fn fail(&self, what: String) -> CaptureError {
        CaptureError::stream(&self.shard.name, what)
    }

    fn read_error(&self, text: &str) -> CaptureError {
        let pos = &self.pos;
        if self.by_gtid && self.fde.is_none() && text.contains("1236") {
            self.fail(format!(
                "the server's binlog does not hold GTID position {} where capture stopped ({text}); \
                 a server promoted with transactions missing or of its own cannot continue this stream: \
                 end it with `shardcut capture --remove` and take a new backup",
                self.gtid
            ))
        } else if text.contains("1236") || text.contains("first log file") {
            self.fail(format!(
                "the server no longer has the binlog from {}:{} ({text}); capture cannot continue without a gap: take a new backup",
                pos.file, pos.offset
            ))
        } else {
            self.fail(format!(
                "reading the binlog at {}:{}: {text}",
                pos.file, pos.offset
            ))
        }
    }

    /// Handles an event that is not part of a transaction's body (a
    /// rotate, the format description, anything between transactions), or
    /// starts `txn` at a transaction's first event. Returns whether the
    /// event is done with.
    fn between(&mut self, ev: &Event, raw: &[u8], txn: &mut Txn) -> Result<bool, CaptureError> {
        let h = ev.header();
        let artificial = h.log_pos() == 0;
        match h.event_type_raw() {
            event::ROTATE => {
                // The artificial rotate the server sends first names the
                // file we asked for (and arrives before the format
                // description, so its checksum is not known yet): skip it.
                // A later artificial one is the server moving on to the
                // next file without a rotate event in the binlog itself:
                // the old file ended with a stop event (a restart, a
                // crash). Positions from then on are in the new file.
                if artificial && self.fde.is_none() {
                    // Asked for by GTID, the server starts where it found
                    // it: that file's name is the position's file.
                    if self.by_gtid {
                        let file = first_rotate_file(raw)
                            .ok_or_else(|| self.fail("unreadable first rotate event".into()))?;
                        self.pos = BinlogCoordinates { file, offset: 4 };
                    }
                    return Ok(true);
                }
                let (new_file, offset) = match ev.read_data() {
                    Ok(Some(EventData::RotateEvent(r))) => (r.name().to_string(), r.position()),
                    _ => return Err(self.fail("unreadable rotate event".into())),
                };
                if artificial && new_file == self.pos.file {
                    return Ok(true);
                }
                self.close()?;
                self.pos = BinlogCoordinates {
                    file: new_file,
                    offset: if artificial { offset.max(4) } else { 4 },
                };
                self.advance_to_pos()?;
                return Ok(true);
            }
            event::FORMAT_DESCRIPTION => {
                self.fde = Some(raw.to_vec());
                return Ok(true);
            }
            _ => {}
        }
        if txn.active {
            return Ok(false);
        }
        match Txn::begin(ev) {
            Some(mut started) => {
                started.gtid_before = self.gtid.to_string();
                if h.event_type_raw() == event::MARIADB_GTID {
                    if let Some(g) = gtid_of(ev) {
                        self.gtid.record(g);
                    }
                }
                *txn = started;
                Ok(false)
            }
            None => {
                // Between transactions: checkpoints, GTID lists, heartbeats.
                if !artificial {
                    self.pos.offset = u64::from(h.log_pos());
                }
                Ok(true)
            }
        }
    }

    /// Adds a whole transaction, ending with event `last`, to the open
    /// segment, which is stored once it is full.
    fn commit(&mut self, mut txn: Txn, last: &Event) -> Result<(), CaptureError> {
        let end = last.header();
        let end_at = BinlogCoordinates {
            file: self.pos.file.clone(),
            offset: u64::from(end.log_pos()),
        };
        let Some(fde) = self.fde.as_ref() else {
            return Err(self.fail("the server sent no format description event".into()));
        };
        let spilled = |e: std::io::Error| {
            CaptureError::stream(
                &self.shard.name,
                format!("holding a large transaction in a temporary file: {e}"),
            )
        };
        let seg = self.open.get_or_insert_with(|| Open {
            raw: SpillBuffer::new(spill_bytes()),
            first: self.pos.clone(),
            last: self.pos.clone(),
            gtid_first: txn.gtid_before.clone(),
            gtid: String::new(),
            first_commit: None,
            last_commit: None,
            transactions: 0,
        });
        if seg.raw.is_empty() {
            seg.raw.extend(&BINLOG_MAGIC).map_err(spilled)?;
            seg.raw.extend(fde).map_err(spilled)?;
        }
        if txn.raw.is_spilled() {
            spilled_note(&self.shard.name, txn.raw.len());
        }
        seg.raw.append(&mut txn.raw).map_err(spilled)?;
        seg.last = end_at.clone();
        seg.gtid = self.gtid.to_string();
        seg.first_commit.get_or_insert(end.timestamp());
        seg.last_commit = Some(end.timestamp());
        seg.transactions += 1;
        let full = seg.raw.len() >= SEGMENT_RAW_BYTES as u64;
        self.pos = end_at;
        if full {
            self.close()?;
        }
        Ok(())
    }

    /// Stores the open segment (if any) and advances the state past it.
    fn close(&mut self) -> Result<(), CaptureError> {
        let Some(seg) = self.open.take() else {
            return Ok(());
        };
        let at = |c: &BinlogCoordinates, g: &str| self.position(c, g);
        let meta = SegmentMeta {
            first_commit: seg.first_commit.map(rfc3339),
            last_commit: seg.last_commit.map(rfc3339),
            transactions: seg.transactions,
            ..SegmentMeta::unstored(
                (&self.shard.name, STREAM),
                (self.state.next_seq, self.state.generation),
                at(&seg.first, &seg.gtid_first),
                at(&seg.last, &seg.gtid),
            )
        };
        let sort = sort_key(self.state.next_seq);
        let mut raw = seg.raw;
        let data = SegmentData {
            sort: &sort,
            ext: "binlog",
            raw: &mut raw,
        };
        let meta = store_segment(self.repo, meta, data, self.compression)?;
        self.state.next_seq += 1;
        self.report.segments += 1;
        self.report.transactions += meta.transactions;
        self.report.bytes_stored += meta.bytes_stored;
        self.state.last_commit = meta.last_commit.clone();
        self.advance(&seg.last)
    }

    fn advance_to_pos(&mut self) -> Result<(), CaptureError> {
        let pos = self.pos.clone();
        self.advance(&pos)
    }

    /// A position of the stream's kind: MariaDB with its GTID position,
    /// MySQL by its coordinates (its GTID sets are not tracked here).
    fn position(&self, c: &BinlogCoordinates, gtid: &str) -> Position {
        match self.state.progress {
            Position::Mysql { .. } => Position::Mysql {
                gtid_executed: String::new(),
                binlog: c.clone(),
            },
            _ => Position::Mariadb {
                gtid: gtid.to_string(),
                binlog: c.clone(),
            },
        }
    }

    fn advance(&mut self, pos: &BinlogCoordinates) -> Result<(), CaptureError> {
        let new = self.position(pos, &self.gtid.to_string());
        if new == self.state.progress {
            return Ok(());
        }
        self.state.progress = new;
        self.state.updated_at = chrono::Utc::now().to_rfc3339();
        self.state.save(self.repo)
    }
}

/// The GTID of a MariaDB GTID event (body: seq u64, domain u32).
pub fn gtid_of(ev: &Event) -> Option<Gtid> {
    let d = ev.data();
    let seq = u64::from_le_bytes(d.get(0..8)?.try_into().ok()?);
    let domain = u32::from_le_bytes(d.get(8..12)?.try_into().ok()?);
    Some(Gtid {
        domain,
        server: ev.header().server_id(),
        seq,
    })
}

/// The file a rotate event names, from its encoding `raw`: the header,
/// the 8-byte position, the name, and a CRC32 of what precedes it when
/// the server checksums events. The first event of a stream comes before
/// the format description that says whether it does, so the CRC decides.
fn first_rotate_file(raw: &[u8]) -> Option<String> {
    let mut name = raw.get(19 + 8..)?;
    if let Some(body) = raw.len().checked_sub(4).and_then(|n| raw.get(..n)) {
        let crc = raw
            .get(body.len()..)
            .and_then(|c| <[u8; 4]>::try_from(c).ok());
        if crc.is_some_and(|c| u32::from_le_bytes(c) == crc32fast::hash(body)) {
            name = name.get(..name.len().checked_sub(4)?)?;
        }
    }
    let name = std::str::from_utf8(name).ok()?;
    let plausible = !name.is_empty()
        && name.len() <= 512
        && name.bytes().all(|b| b.is_ascii_graphic() && b != b'/');
    plausible.then(|| name.to_string())
}

/// The statement of a query event.
pub fn query_text(ev: &Event) -> Option<String> {
    match ev.read_data() {
        Ok(Some(EventData::QueryEvent(q))) => Some(q.query().trim().to_string()),
        _ => None,
    }
}

/// A server id for a capture stream: stable per shard, in a range real
/// servers rarely use, so two capture streams never evict each other.
pub fn server_id(cluster: &str, shard: &str) -> u32 {
    let h = twox_hash::XxHash3_64::oneshot(format!("{cluster}/{shard}").as_bytes());
    0x5C00_0000 | (h as u32 & 0x00FF_FFFF)
}
