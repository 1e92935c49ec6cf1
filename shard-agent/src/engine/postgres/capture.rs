//! PostgreSQL capture: a logical replication slot per database, decoded by
//! `pgoutput` through `pg_logical_slot_peek_binary_changes`.
//!
//! Why nothing is lost or applied twice: the slot is created before any
//! cut that capture continues from, so the server retains and decodes
//! every transaction that commits after that point. A cut records the WAL
//! *insert* position while every selected table is locked against writes,
//! after every earlier writer to them has fully committed: a transaction
//! whose commit record lies before that position is in the snapshot, one
//! after it is not. Replay applies exactly the transactions with
//! `cut ≤ commit LSN < target`.
//!
//! A round peeks (does not consume), stores what it read as segments of
//! whole transactions, and only then advances the slot. A crash in
//! between re-reads the same transactions next round; those whose end is
//! not after the stored progress are dropped, so each is stored once.
//!
//! Segment format: records of `u64 lsn (BE) | u32 length (BE) | pgoutput
//! message`, transactions framed by their Begin and Commit messages.
//! Relation messages are always kept (also from dropped transactions): a
//! later transaction in the same decoding call refers to them.

use std::sync::atomic::{AtomicBool, Ordering};

use futures_util::{pin_mut, TryStreamExt};
use tokio_postgres::Client;
use topology::{Compression, Engine, Shard};

use crate::capture::spill::{spill_bytes, spilled_note, SpillBuffer};
use crate::capture::{
    store_segment, CaptureError, RoundReport, SegmentData, SegmentMeta, StreamState,
    SEGMENT_RAW_BYTES,
};
use crate::connect;
use crate::engine::interface::StreamServer;
use crate::position::{Lsn, Position};
use crate::repo::Repository;

const CONNECT_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);
/// Changes per decoding call; a call always ends at a commit.
const CHANGES_PER_CALL: i32 = 50_000;

/// Slot and publication name of one database's stream: stable, valid as
/// a slot name (lower case, digits, underscore), unique per cluster, shard
/// and database.
pub fn slot_name(cluster: &str, shard: &str, db: &str) -> String {
    let h = twox_hash::XxHash3_64::oneshot(format!("{cluster}/{shard}/{db}").as_bytes());
    format!("shardcut_{h:016x}")
}

/// Whether `name` is a slot name [`slot_name`] makes.
pub(super) fn is_slot_name(name: &str) -> bool {
    name.strip_prefix("shardcut_").is_some_and(|h| {
        h.len() == 16
            && h.bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    })
}

/// The replication slot (and publication) a stream state names. The state
/// is read from the repository, which is not trusted, and the name reaches
/// SQL text (a publication name cannot be a parameter): anything but a
/// name shardcut makes is refused before a statement is sent.
fn checked_slot<'s>(shard: &Shard, state: &'s StreamState) -> Result<&'s str, CaptureError> {
    let slot = state
        .slot
        .as_deref()
        .ok_or_else(|| CaptureError::stream(&shard.name, "the stream state names no slot"))?;
    if !is_slot_name(slot) {
        return Err(CaptureError::stream(
            &shard.name,
            format!(
                "the capture state of database {} names the replication slot {slot:?}, which shardcut never creates (it makes shardcut_ and 16 hex digits): the repository's capture state is damaged or was tampered with; nothing was run on the server",
                state.stream
            ),
        ));
    }
    Ok(slot)
}

fn err(shard: &Shard, what: &str) -> impl Fn(tokio_postgres::Error) -> CaptureError {
    let shard = shard.name.clone();
    let what = what.to_string();
    move |e| {
        let detail = e
            .as_db_error()
            .map(|d| d.message().to_string())
            .unwrap_or_else(|| e.to_string());
        CaptureError::stream(&shard, format!("{what}: {detail}"))
    }
}

/// The databases of a shard that capture covers (those a backup covers).
pub async fn databases(shard: &Shard) -> Result<Vec<String>, CaptureError> {
    Ok(super::selected_databases(shard, CONNECT_TIMEOUT).await?)
}

async fn lsn_of(client: &Client, shard: &Shard, sql: &str) -> Result<Lsn, CaptureError> {
    let text: String = client
        .query_one(sql, &[])
        .await
        .and_then(|r| r.try_get(0))
        .map_err(err(shard, "reading the WAL position"))?;
    text.parse()
        .map_err(|e: String| CaptureError::stream(&shard.name, e))
}

/// Creates the publication and the slot of `db` (if missing) and returns
/// a new stream state starting at the slot's consistent point. Refuses
/// tables without a replica identity (once published, UPDATE and DELETE
/// on them would fail on the source) and unlogged tables (the server has
/// no WAL of their changes to decode, and refuses them in a publication).
pub async fn start(shard: &Shard, cluster: &str, db: &str) -> Result<StreamState, CaptureError> {
    let client = connect::postgres(shard, Some(db), CONNECT_TIMEOUT).await?;
    let name = slot_name(cluster, &shard.name, db);
    let plan = published_tables(&client, shard, db)
        .await
        .map_err(err(shard, &format!("reading the tables of {db}")))?;
    // Both kinds named at once, so that one round of fixes does.
    let mut refused = Vec::new();
    if !plan.no_identity.is_empty() {
        refused.push(format!(
            "table(s) {} have no primary key or replica identity; once published for capture, UPDATE and DELETE on them would fail on the source. \
             Add a primary key, run `ALTER TABLE … REPLICA IDENTITY FULL`, or exclude them in the topology",
            plan.no_identity.join(", ")
        ));
    }
    if !plan.unlogged.is_empty() {
        refused.push(format!(
            "table(s) {} are unlogged or have unlogged partitions; PostgreSQL writes no WAL for their changes, so capture cannot read them and a restore to a later point would lack them. \
             Make them logged (`ALTER TABLE … SET LOGGED`, on each unlogged partition of a partitioned one), or exclude them in the topology",
            plan.unlogged.join(", ")
        ));
    }
    if !refused.is_empty() {
        return Err(CaptureError::stream(
            &shard.name,
            format!("database {db}: {}", refused.join("; ")),
        ));
    }
    let pid: i32 = client
        .query_one("SELECT pg_backend_pid()", &[])
        .await
        .and_then(|r| r.try_get(0))
        .map_err(err(shard, "reading the backend pid"))?;
    naming_waits(
        shard,
        db,
        pid,
        create_publication_and_slot(shard, &client, db, &name, &plan.tables),
    )
    .await
}

/// How long capture's start waits on other sessions before it names
/// them, and then how often it names them again.
const FIRST_WAIT_NOTE: std::time::Duration = std::time::Duration::from_secs(5);
const WAIT_NOTE_EVERY: std::time::Duration = std::time::Duration::from_secs(30);

/// Runs `work`, the start of capture on the session of backend `pid`,
/// and names every so often the sessions it waits for. A logical slot is
/// created only once every transaction that holds a transaction id when
/// it begins has ended, and a publication waits for the locks of the
/// tables it takes: behind a write transaction left open, capture's start
/// waited without a word (tried: `capture --once` still waiting after 30
/// s behind an open `INSERT`). It still waits (the DBA decides whether to
/// end that transaction), but says for what (`pg_blocking_pids`).
async fn naming_waits<T>(
    shard: &Shard,
    db: &str,
    pid: i32,
    work: impl std::future::Future<Output = T>,
) -> T {
    let watch = async {
        let mut pause = FIRST_WAIT_NOTE;
        loop {
            tokio::time::sleep(pause).await;
            pause = WAIT_NOTE_EVERY;
            if let Some(who) = blockers(shard, db, pid).await {
                tracing::warn!(
                    "{}: starting capture of {db} waits for {who} to end: a replication slot is made only once the transactions open when it began have ended; it goes on by itself once they do",
                    shard.name
                );
            }
        }
    };
    tokio::select! {
        done = work => done,
        never = watch => never,
    }
}

/// The sessions backend `pid` waits for, the longest open first, in words:
/// pid, user, how long its transaction has been open, its state and the
/// head of its statement.
async fn blockers(shard: &Shard, db: &str, pid: i32) -> Option<String> {
    let look = connect::postgres(shard, Some(db), CONNECT_TIMEOUT)
        .await
        .ok()?;
    let rows = look
        .query(
            &format!(
                "SELECT {} FROM pg_stat_activity a WHERE a.pid = ANY (pg_blocking_pids($1)) \
                 ORDER BY a.xact_start LIMIT 3",
                super::activity::COLUMNS
            ),
            &[&pid],
        )
        .await
        .ok()?;
    let named: Vec<String> = rows
        .iter()
        .filter_map(|r| {
            let a = super::activity::Activity::read(r)?;
            Some(format!(
                "pid {} ({}, a transaction open for {}, {}: `{}`)",
                a.pid,
                a.who,
                a.age
                    .map_or("an unknown time".to_string(), |a| format!("{a} s")),
                a.state.unwrap_or_else(|| "state unknown".into()),
                a.query
            ))
        })
        .collect();
    (!named.is_empty()).then(|| named.join(", "))
}

/// A table of `db` capture publishes.
pub(super) struct Publishable {
    /// Quoted, schema-qualified, for SQL.
    pub quoted: String,
    /// As a manifest names it ([`crate::manifest::qualified_name`]).
    pub qualified: String,
    /// Without a primary key or replica identity: once published, UPDATE
    /// and DELETE on it would fail on the source.
    pub no_identity: bool,
    /// Unlogged, or partitioned with an unlogged partition: the server
    /// writes no WAL for their changes (and refuses an unlogged table in a
    /// publication, but takes a partitioned one holding such a partition,
    /// whose changes would then be lost in silence).
    pub unlogged: bool,
}

/// The tables of `db` capture publishes (the topology's exclusions left
/// out), in name order.
pub(super) async fn publishable(
    client: &Client,
    shard: &Shard,
    db: &str,
) -> Result<Vec<Publishable>, tokio_postgres::Error> {
    let rows = client
        .query(
            "SELECT quote_ident(n.nspname) || '.' || quote_ident(c.relname), \
             n.nspname::text, c.relname::text, \
             c.relreplident = 'n' OR (c.relreplident = 'd' AND NOT EXISTS \
               (SELECT 1 FROM pg_index i WHERE i.indrelid = c.oid AND i.indisprimary)), \
             EXISTS (WITH RECURSIVE tree(oid) AS (SELECT c.oid UNION ALL \
               SELECT i.inhrelid FROM pg_inherits i JOIN tree ON i.inhparent = tree.oid) \
               SELECT 1 FROM tree JOIN pg_class pc ON pc.oid = tree.oid WHERE pc.relpersistence = 'u') \
             FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace \
             WHERE c.relkind IN ('r', 'p') AND NOT c.relispartition \
             AND n.nspname NOT IN ('pg_catalog', 'information_schema') \
             AND n.nspname NOT LIKE 'pg\\_toast%' AND n.nspname NOT LIKE 'pg\\_temp%' ORDER BY 1",
            &[],
        )
        .await?;
    let mut out = Vec::new();
    for r in &rows {
        let schema: String = r.try_get(1)?;
        let table: String = r.try_get(2)?;
        if shard.excludes(db, Some(&schema), &table) {
            continue;
        }
        out.push(Publishable {
            quoted: r.try_get(0)?,
            qualified: crate::manifest::qualified_name(db, Some(&schema), &table),
            no_identity: r.try_get(3)?,
            unlogged: r.try_get(4)?,
        });
    }
    Ok(out)
}

/// The selected tables of a database as capture's publication takes them
/// (quoted, schema-qualified; the topology's exclusions left out).
pub(super) struct PublishPlan {
    /// Those the publication lists: every table but the unlogged ones.
    pub tables: Vec<String>,
    /// Those without a primary key or replica identity, which capture
    /// refuses.
    pub no_identity: Vec<String>,
    /// The unlogged ones, which capture refuses (the server writes no WAL
    /// for them).
    pub unlogged: Vec<String>,
}

/// How capture's publication takes the tables of `db` ([`PublishPlan`]).
pub(super) async fn published_tables(
    client: &Client,
    shard: &Shard,
    db: &str,
) -> Result<PublishPlan, tokio_postgres::Error> {
    let all = publishable(client, shard, db).await?;
    let quoted = |keep: fn(&Publishable) -> bool| {
        all.iter()
            .filter(|t| keep(t))
            .map(|t| t.quoted.clone())
            .collect()
    };
    Ok(PublishPlan {
        tables: quoted(|t| !t.unlogged),
        no_identity: quoted(|t| t.no_identity && !t.unlogged),
        unlogged: quoted(|t| t.unlogged),
    })
}

/// Takes tables created since the publication was into it, as each round
/// begins, and records in `state` from where their changes are captured
/// ([`StreamState::published_from`]): pgoutput sends only the changes of
/// published tables, so a table created while capture ran was never
/// captured, and a restore to a mark replayed none of its changes. A
/// table without a replica identity is not published (UPDATE and DELETE
/// on it would then fail on the source): it stays in
/// [`StreamState::unpublished`], which restores to a mark refuse, and the
/// round goes on for the rest. An unlogged table, which the server
/// refuses in a publication, stays in [`StreamState::unlogged`] alike
/// (before, it failed every round). The names are recorded before the
/// publication changes, so a crash between the two leaves them
/// unpublished, not covered from the start.
async fn cover_new_tables(
    client: &Client,
    shard: &Shard,
    repo: &dyn Repository,
    state: &mut StreamState,
    publication: &str,
) -> Result<(), CaptureError> {
    let db = state.stream.clone();
    let tables = publishable(client, shard, &db)
        .await
        .map_err(err(shard, &format!("reading the tables of {db}")))?;
    let published: std::collections::HashSet<String> = client
        .query(
            "SELECT quote_ident(schemaname) || '.' || quote_ident(tablename) \
             FROM pg_publication_tables WHERE pubname = $1",
            &[&publication],
        )
        .await
        .map_err(err(shard, &format!("reading publication {publication}")))?
        .iter()
        .map(|r| r.try_get(0))
        .collect::<Result<_, _>>()
        .map_err(err(shard, &format!("reading publication {publication}")))?;
    let missing: Vec<&Publishable> = tables
        .iter()
        .filter(|t| !published.contains(&t.quoted))
        .collect();
    // Published by a round that stopped before recording it.
    // Published by a round that stopped before recording it, or a
    // published partitioned table whose unlogged partitions are all
    // logged now: captured whole from this round on.
    let recorded_late: Vec<&Publishable> = tables
        .iter()
        .filter(|t| {
            published.contains(&t.quoted)
                && (state.unpublished.contains(&t.qualified)
                    || (!t.unlogged && state.unlogged.contains(&t.qualified)))
        })
        .collect();
    let (mut unlogged, missing): (Vec<&Publishable>, Vec<&Publishable>) =
        missing.into_iter().partition(|t| t.unlogged);
    // A published partitioned table that has an unlogged partition now
    // (created, attached or set unlogged since): the server goes on
    // publishing it without that partition's changes.
    unlogged.extend(
        tables
            .iter()
            .filter(|t| t.unlogged && published.contains(&t.quoted)),
    );
    let (to_add, no_identity): (Vec<&Publishable>, Vec<&Publishable>) =
        missing.into_iter().partition(|t| !t.no_identity);
    let before = (
        state.published_from.clone(),
        state.unpublished.clone(),
        state.unlogged.clone(),
    );
    if !to_add.is_empty() {
        for t in &to_add {
            if !state.unpublished.contains(&t.qualified) {
                state.unpublished.push(t.qualified.clone());
            }
        }
        state.save(repo)?;
        let list: Vec<&str> = to_add.iter().map(|t| t.quoted.as_str()).collect();
        client
            .batch_execute(&format!(
                "ALTER PUBLICATION {} ADD TABLE {}",
                super::ident(publication),
                list.join(", ")
            ))
            .await
            .map_err(err(
                shard,
                &format!("adding {} to publication {publication}", list.join(", ")),
            ))?;
    }
    if !to_add.is_empty() || !recorded_late.is_empty() {
        // Every change committed after this is decoded with the table in
        // the publication.
        let from = Position::Postgres {
            lsn: lsn_of(client, shard, "SELECT pg_current_wal_insert_lsn()::text").await?,
        };
        for t in to_add.iter().chain(&recorded_late) {
            state
                .published_from
                .insert(t.qualified.clone(), from.clone());
            state.unpublished.retain(|q| q != &t.qualified);
            state.unlogged.retain(|q| q != &t.qualified);
            tracing::info!(
                "{}: table {} added to publication {publication}; its changes are captured from {from}",
                shard.name,
                t.qualified
            );
        }
    }
    // Each named once, when it is first left out.
    let uncaptured = [
        (
            &no_identity,
            &mut state.unpublished,
            "has no primary key or replica identity and is not captured: restores to a point after a backup holding it are refused until it has one",
        ),
        (
            &unlogged,
            &mut state.unlogged,
            "is unlogged and is not captured (PostgreSQL writes no WAL for it): restores to a point after a backup holding it are refused until it is made logged (ALTER TABLE … SET LOGGED, on each unlogged partition of a partitioned one)",
        ),
    ];
    for (tables, list, why) in uncaptured {
        for t in tables.iter() {
            if !list.contains(&t.qualified) {
                tracing::warn!("{}: table {} {why}", shard.name, t.qualified);
                list.push(t.qualified.clone());
            }
        }
    }
    // A table gone (dropped) is no longer waiting.
    let present = |q: &String| tables.iter().any(|t| &t.qualified == q);
    state.unpublished.retain(present);
    state.unlogged.retain(present);
    if (&state.published_from, &state.unpublished, &state.unlogged)
        != (&before.0, &before.1, &before.2)
    {
        state.save(repo)?;
    }
    Ok(())
}

async fn create_publication_and_slot(
    shard: &Shard,
    client: &Client,
    db: &str,
    name: &str,
    tables: &[String],
) -> Result<StreamState, CaptureError> {
    let exists: bool = client
        .query_one(
            "SELECT EXISTS (SELECT 1 FROM pg_publication WHERE pubname = $1)",
            &[&name],
        )
        .await
        .and_then(|r| r.try_get(0))
        .map_err(err(shard, "looking up the publication"))?;
    if !exists {
        let list = if tables.is_empty() {
            String::new()
        } else {
            format!(" FOR TABLE {}", tables.join(", "))
        };
        client
            .batch_execute(&format!(
                "CREATE PUBLICATION {name}{list} WITH (publish_via_partition_root = true)"
            ))
            .await
            .map_err(err(shard, &format!("creating publication {name} in {db}")))?;
    }
    let existing = client
        .query_opt(
            "SELECT confirmed_flush_lsn::text FROM pg_replication_slots WHERE slot_name = $1",
            &[&name],
        )
        .await
        .map_err(err(shard, "looking up the slot"))?;
    let lsn: String = match existing {
        Some(r) => r
            .try_get::<_, Option<String>>(0)
            .map_err(err(shard, "looking up the slot"))?
            .unwrap_or_default(),
        None => client
            .query_one(
                "SELECT lsn::text FROM pg_create_logical_replication_slot($1, 'pgoutput')",
                &[&name],
            )
            .await
            .and_then(|r| r.try_get(0))
            .map_err(err(shard, &format!("creating replication slot {name}")))?,
    };
    let lsn: Lsn = lsn
        .parse()
        .map_err(|e: String| CaptureError::stream(&shard.name, e))?;
    let now = chrono::Utc::now().to_rfc3339();
    Ok(StreamState {
        shard: shard.name.clone(),
        stream: db.to_string(),
        engine: Engine::Postgres,
        started: Position::Postgres { lsn },
        started_at: now.clone(),
        progress: Position::Postgres { lsn },
        updated_at: now,
        last_commit: None,
        next_seq: 0,
        generation: 0,
        slot: Some(name.to_string()),
        published_from: Default::default(),
        unpublished: Vec::new(),
        unlogged: Vec::new(),
    })
}

/// Drops the slot and publication of a stream (the server stops retaining
/// WAL for it). Stored segments stay.
pub async fn remove(shard: &Shard, state: &StreamState) -> Result<(), CaptureError> {
    if state.slot.is_none() {
        return Ok(());
    }
    let name = checked_slot(shard, state)?;
    let client = connect::postgres(shard, Some(&state.stream), CONNECT_TIMEOUT).await?;
    client
        .execute(
            "SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots WHERE slot_name = $1",
            &[&name],
        )
        .await
        .map_err(err(shard, &format!("dropping replication slot {name}")))?;
    client
        .batch_execute(&format!(
            "DROP PUBLICATION IF EXISTS {}",
            super::ident(name)
        ))
        .await
        .map_err(err(shard, &format!("dropping publication {name}")))?;
    Ok(())
}

/// WAL the stream's slot keeps on the server, in bytes.
pub async fn retained_wal(client: &Client, shard: &Shard, slot: &str) -> Result<u64, CaptureError> {
    let row = client
        .query_opt(
            "SELECT pg_wal_lsn_diff(pg_current_wal_lsn(), restart_lsn)::int8 FROM pg_replication_slots WHERE slot_name = $1",
            &[&slot],
        )
        .await
        .map_err(err(shard, "reading the slot's retained WAL"))?;
    match row {
        Some(r) => Ok(r
            .try_get::<_, Option<i64>>(0)
            .map_err(err(shard, "reading the slot's retained WAL"))?
            .unwrap_or(0)
            .max(0) as u64),
        None => Err(CaptureError::stream(
            &shard.name,
            format!("replication slot {slot} is gone; capture of this database cannot continue without a gap: take a new backup"),
        )),
    }
}

/// A segment being filled.
struct Open {
    raw: SpillBuffer,
    first: Lsn,
    last: Lsn,
    first_commit: Option<i64>,
    last_commit: Option<i64>,
    transactions: u64,
}

/// The server's current WAL position and what the stream's slot holds
/// back, read from the stream's database.
pub(super) async fn server_state(shard: &Shard, state: &StreamState) -> StreamServer {
    let client = match connect::postgres(shard, Some(&state.stream), CONNECT_TIMEOUT).await {
        Ok(client) => client,
        Err(e) => {
            return StreamServer {
                problem: Some(e.to_string()),
                ..StreamServer::default()
            }
        }
    };
    let lsn: Option<String> = client
        .query_one("SELECT pg_current_wal_insert_lsn()::text", &[])
        .await
        .ok()
        .and_then(|r| r.try_get(0).ok());
    let mut out = StreamServer {
        position: lsn
            .and_then(|l| l.parse().ok())
            .map(|lsn| Position::Postgres { lsn }),
        ..StreamServer::default()
    };
    if state.slot.is_some() {
        let retained = match checked_slot(shard, state) {
            Ok(slot) => retained_wal(&client, shard, slot).await,
            Err(e) => Err(e),
        };
        match retained {
            Ok(w) => out.retained_bytes = Some(w),
            Err(e) => out.problem = Some(e.to_string()),
        }
    }
    out
}

/// pgoutput timestamps: microseconds since 2000-01-01 UTC.
pub fn pg_time(micros: i64) -> String {
    const EPOCH_2000: i64 = 946_684_800;
    chrono::DateTime::from_timestamp(
        EPOCH_2000 + micros.div_euclid(1_000_000),
        (micros.rem_euclid(1_000_000) * 1000) as u32,
    )
    .map(|t| t.to_rfc3339())
    .unwrap_or_default()
}

pub fn be_u64(d: &[u8], at: usize) -> Option<u64> {
    Some(u64::from_be_bytes(d.get(at..at + 8)?.try_into().ok()?))
}

/// Reads changes from the slot up to the server's flushed WAL and stores
/// them; advances the slot and `state` after storing.
pub async fn catch_up(
    shard: &Shard,
    repo: &dyn Repository,
    state: &mut StreamState,
    compression: Compression,
    stop: &AtomicBool,
) -> Result<RoundReport, CaptureError> {
    let db = state.stream.clone();
    let slot = checked_slot(shard, state)?.to_string();
    // The reader's settings fix the text form of every value (time zone,
    // date style, float digits, bytea): replay sets the same ones.
    let client = super::reader(shard, &db, CONNECT_TIMEOUT).await?;
    let mut report = RoundReport {
        shard: shard.name.clone(),
        stream: db.clone(),
        ..Default::default()
    };
    retained_wal(&client, shard, &slot).await?;
    cover_new_tables(&client, shard, repo, state, &slot).await?;
    loop {
        let flushed = lsn_of(&client, shard, "SELECT pg_current_wal_flush_lsn()::text").await?;
        let (rows, stored_end) =
            one_call(shard, &client, repo, state, &slot, compression, &mut report).await?;
        let Position::Postgres { lsn: progress } = state.progress.clone() else {
            return Err(CaptureError::stream(
                &shard.name,
                "the stream state holds no LSN",
            ));
        };
        // Every commit that ended by `flushed` was in that call's output.
        let reached = if rows < CHANGES_PER_CALL as u64 {
            progress.max(flushed).max(stored_end)
        } else {
            progress.max(stored_end)
        };
        if reached > progress {
            state.progress = Position::Postgres { lsn: reached };
            state.updated_at = chrono::Utc::now().to_rfc3339();
            state.save(repo)?;
        }
        client
            .query_one(
                "SELECT pg_replication_slot_advance($1, $2::text::pg_lsn)::text",
                &[&slot, &reached.to_string()],
            )
            .await
            .map_err(err(shard, &format!("advancing replication slot {slot}")))?;
        if rows < CHANGES_PER_CALL as u64 || stop.load(Ordering::Relaxed) {
            break;
        }
    }
    report.progress = Some(state.progress.clone());
    report.server_position = Some(Position::Postgres {
        lsn: lsn_of(&client, shard, "SELECT pg_current_wal_insert_lsn()::text").await?,
    });
    report.retained_wal_bytes = Some(retained_wal(&client, shard, &slot).await?);
    Ok(report)
}

/// One decoding call: streams its rows into segments. Returns how many
/// rows it read and the end LSN of the last stored transaction.
async fn one_call(
    shard: &Shard,
    client: &Client,
    repo: &dyn Repository,
    state: &mut StreamState,
    slot: &str,
    compression: Compression,
    report: &mut RoundReport,
) -> Result<(u64, Lsn), CaptureError> {
    let Position::Postgres { lsn: done } = state.progress.clone() else {
        return Err(CaptureError::stream(
            &shard.name,
            "the stream state holds no LSN",
        ));
    };
    // The slot name is checked to be one of ours ([a-z0-9_]), safe to
    // inline (see `checked_slot`).
    let sql = format!(
        "SELECT lsn::text, data FROM pg_logical_slot_peek_binary_changes('{slot}', NULL, {CHANGES_PER_CALL}, \
         'proto_version', '1', 'publication_names', '{slot}')"
    );
    let params: [&(dyn tokio_postgres::types::ToSql + Sync); 0] = [];
    let stream = client
        .query_raw(sql.as_str(), params)
        .await
        .map_err(err(shard, &format!("decoding slot {slot}")))?;
    pin_mut!(stream);
    let mut rows = 0u64;
    let mut open: Option<Open> = None;
    // A transaction is held whole until its commit: in a buffer that goes
    // to disk past `spill_bytes()`, so that one of any size is captured in
    // bounded memory (and stored as a segment of its own).
    let spill = spill_bytes();
    let mut txn = SpillBuffer::new(spill);
    let spilled = |e: std::io::Error| {
        CaptureError::stream(
            &shard.name,
            format!("holding a large transaction in a temporary file: {e}"),
        )
    };
    let mut keep: Vec<u8> = Vec::new();
    let mut in_txn = false;
    let mut stored_end = done;
    // Where the next segment starts, and the relation descriptions every
    // segment repeats at its start so that it can be replayed on its own.
    let mut cursor = done;
    let mut relations: std::collections::HashMap<u32, Vec<u8>> = Default::default();
    while let Some(row) = stream
        .try_next()
        .await
        .map_err(err(shard, &format!("decoding slot {slot}")))?
    {
        rows += 1;
        let lsn: String = row.try_get(0).map_err(err(shard, "reading a change"))?;
        let lsn: Lsn = lsn
            .parse()
            .map_err(|e: String| CaptureError::stream(&shard.name, e))?;
        let data: &[u8] = row.try_get(1).map_err(err(shard, "reading a change"))?;
        // A field of a begin or commit message, which pgoutput always sends.
        let field = |data: &[u8], at: usize, what: &str| {
            be_u64(data, at).ok_or_else(|| {
                CaptureError::stream(
                    &shard.name,
                    format!(
                        "slot {slot}: the {what} message at {lsn} is {} bytes, too short for pgoutput's: nothing of it was stored",
                        data.len()
                    ),
                )
            })
        };
        let mut record = Vec::with_capacity(data.len() + 12);
        record.extend_from_slice(&lsn.0.to_be_bytes());
        record.extend_from_slice(&(data.len() as u32).to_be_bytes());
        record.extend_from_slice(data);
        match data.first() {
            Some(b'B') => {
                in_txn = true;
                txn.clear();
                keep.clear();
                field(data, 9, "begin")?;
                txn.extend(&record).map_err(spilled)?;
            }
            Some(b'C') => {
                txn.extend(&record).map_err(spilled)?;
                in_txn = false;
                // A commit without its end position would read as one
                // stored before and be dropped while the slot moves past it.
                let end = Lsn(field(data, 10, "commit")?);
                let commit_time = field(data, 18, "commit")? as i64;
                let seg = open_segment(&mut open, cursor, &relations, spill).map_err(spilled)?;
                if end <= done {
                    // Stored by an earlier round that ended before the slot
                    // advanced: keep only its relation descriptions.
                    seg.raw.extend(&keep).map_err(spilled)?;
                } else {
                    if txn.is_spilled() {
                        spilled_note(&shard.name, txn.len());
                    }
                    seg.raw.append(&mut txn).map_err(spilled)?;
                    seg.last = end;
                    seg.first_commit.get_or_insert(commit_time);
                    seg.last_commit = Some(commit_time);
                    seg.transactions += 1;
                }
                txn.clear();
                keep.clear();
                if seg.raw.len() >= SEGMENT_RAW_BYTES as u64 {
                    if let Some(e) = close(repo, shard, state, &mut open, compression, report)? {
                        stored_end = e;
                        cursor = e;
                    }
                }
            }
            Some(b'R') | Some(b'Y') => {
                if data.first() == Some(&b'R') {
                    if let Some(id) = data.get(1..5) {
                        relations.insert(
                            u32::from_be_bytes([id[0], id[1], id[2], id[3]]),
                            record.clone(),
                        );
                    }
                }
                if in_txn {
                    txn.extend(&record).map_err(spilled)?;
                    keep.extend_from_slice(&record);
                } else {
                    open_segment(&mut open, cursor, &relations, spill)
                        .and_then(|seg| seg.raw.extend(&record))
                        .map_err(spilled)?;
                }
            }
            _ => {
                if in_txn {
                    txn.extend(&record).map_err(spilled)?;
                }
            }
        }
    }
    if let Some(e) = close(repo, shard, state, &mut open, compression, report)? {
        stored_end = e;
    }
    Ok((rows, stored_end))
}

/// The open segment, opened at `first` with the known relations if none is.
fn open_segment<'a>(
    open: &'a mut Option<Open>,
    first: Lsn,
    relations: &std::collections::HashMap<u32, Vec<u8>>,
    spill: usize,
) -> std::io::Result<&'a mut Open> {
    if open.is_none() {
        let mut raw = SpillBuffer::new(spill);
        for r in relations.values() {
            raw.extend(r)?;
        }
        *open = Some(Open {
            raw,
            first,
            last: first,
            first_commit: None,
            last_commit: None,
            transactions: 0,
        });
    }
    open.as_mut()
        .ok_or_else(|| std::io::Error::other("no open segment"))
}

/// Stores the open segment if it holds a transaction; returns its end.
fn close(
    repo: &dyn Repository,
    shard: &Shard,
    state: &mut StreamState,
    open: &mut Option<Open>,
    compression: Compression,
    report: &mut RoundReport,
) -> Result<Option<Lsn>, CaptureError> {
    let Some(mut seg) = open.take() else {
        return Ok(None);
    };
    if seg.transactions == 0 {
        return Ok(None);
    }
    let meta = SegmentMeta {
        first_commit: seg.first_commit.map(pg_time),
        last_commit: seg.last_commit.map(pg_time),
        transactions: seg.transactions,
        ..SegmentMeta::unstored(
            (&shard.name, &state.stream),
            (state.next_seq, state.generation),
            Position::Postgres { lsn: seg.first },
            Position::Postgres { lsn: seg.last },
        )
    };
    let data = SegmentData {
        sort: &format!("{:016X}", seg.first.0),
        ext: "pgoutput",
        raw: &mut seg.raw,
    };
    let meta = store_segment(repo, meta, data, compression)?;
    state.next_seq += 1;
    report.segments += 1;
    report.transactions += meta.transactions;
    report.bytes_stored += meta.bytes_stored;
    state.progress = Position::Postgres { lsn: seg.last };
    state.last_commit = meta.last_commit.clone();
    state.updated_at = chrono::Utc::now().to_rfc3339();
    state.save(repo)?;
    Ok(Some(seg.last))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_slot_names_shardcut_makes_pass() {
        assert!(is_slot_name(&slot_name("shop", "pg-0", "bank")));
        for bad in [
            "",
            "shardcut_",
            "shardcut_0123456789abcdeF",
            "shardcut_0123456789abcdef0",
            "other_0123456789abcdef",
            "shardcut_01234567', NULL, 1, 'proto_version', '1'); DROP TABLE t; --",
            "shardcut_0123456789abcde; DROP TABLE accounts",
        ] {
            assert!(!is_slot_name(bad), "{bad:?}");
        }
    }
}
