//! Keeping (auto)vacuum off the tables of a cut.
//!
//! Every lock mode that blocks writers also conflicts with the `SHARE
//! UPDATE EXCLUSIVE` lock that `VACUUM` and `ANALYZE` hold for their whole
//! run, and an autovacuum of a big table runs for minutes. The cut's lock
//! tries wait milliseconds at a time, so they never waited long enough for
//! PostgreSQL's own remedy: a lock request that has waited
//! `deadlock_timeout` behind an autovacuum has the server cancel it
//! (unless it runs to prevent transaction-id wraparound). Measured: a
//! backup started after loading 4 × 500,000 rows failed all four attempts,
//! held up by autovacuum on one table and then on the next
//! (docs/BENCHMARKS.md).
//!
//! So settling first takes `SHARE UPDATE EXCLUSIVE` on the selected tables,
//! in the transaction that will hold the block. That mode conflicts with
//! vacuum but not with writers (`ROW EXCLUSIVE`), so its wait holds no
//! writer up, and once it has waited `deadlock_timeout` the server cancels
//! the autovacuum. It waits only for autovacuums the server cancels: any
//! other holder (manual `VACUUM`, DDL, an autovacuum preventing
//! wraparound) would not leave in time, and the cut's tries name it. The
//! guard is held until the block ends: autovacuum skips a table it cannot
//! lock at once, so none starts on these tables between settling and
//! blocking. Lock tries run in a savepoint, so a failed try gives up its
//! own locks only.

use std::time::{Duration, Instant};

use tokio_postgres::error::SqlState;
use tokio_postgres::Client;

/// Savepoint that scopes one guard or lock try inside the block transaction.
pub(super) const TRY_SAVEPOINT: &str = "shardcut_try";

/// How long the guard waits for an autovacuum: just past
/// `deadlock_timeout`, when the server cancels it.
async fn budget(look: &Client) -> Duration {
    let deadlock_timeout = look
        .query_one(
            "SELECT setting::int8 FROM pg_settings WHERE name = 'deadlock_timeout'",
            &[],
        )
        .await
        .and_then(|r| r.try_get::<_, i64>(0))
        .map(|ms| Duration::from_millis(u64::try_from(ms).unwrap_or(0)))
        .unwrap_or(Duration::from_secs(1));
    deadlock_timeout + Duration::from_secs(1)
}

/// Opens the block transaction on `block` and takes `SHARE UPDATE
/// EXCLUSIVE` on `tables` (qualified, quoted names). `look` is another
/// connection to the same database, used to see what holds a table.
/// Waits (at most `deadlock_timeout` + 1 s) only when every holder is an
/// autovacuum the server will cancel; a manual `VACUUM`, an autovacuum preventing
/// wraparound, or DDL would not go away in time, and the cut's own tries
/// name them. `Ok(false)`: the transaction is open without the guard.
/// Errors are the connection's own (the transaction state is then unknown
/// and the caller rolls back).
pub(super) async fn take(
    shard: &str,
    db: &str,
    block: &Client,
    look: &Client,
    tables: &[String],
) -> Result<bool, tokio_postgres::Error> {
    let started = Instant::now();
    block.batch_execute("BEGIN").await?;
    if tables.is_empty() {
        return Ok(true);
    }
    let list = tables.join(", ");
    if try_in_savepoint(
        block,
        &format!("LOCK TABLE {list} IN SHARE UPDATE EXCLUSIVE MODE NOWAIT"),
    )
    .await?
    {
        return Ok(true);
    }
    let holders = holders(look, tables).await;
    if let Some(h) = holders.iter().find(|h| !h.cancellable) {
        tracing::debug!("{shard}: no vacuum guard on {db}: {}", h.what);
        return Ok(false);
    }
    let budget = budget(look).await;
    for h in &holders {
        tracing::info!(
            "{shard}: {}; waiting up to {} ms for the server to cancel it \
             (it does after deadlock_timeout; writers go on meanwhile)",
            h.what,
            budget.as_millis()
        );
    }
    let ms = budget.as_millis().max(1);
    let granted = try_in_savepoint(
        block,
        &format!(
            "SET LOCAL lock_timeout = '{ms}ms'; LOCK TABLE {list} IN SHARE UPDATE EXCLUSIVE MODE"
        ),
    )
    .await?;
    let waited = started.elapsed();
    if granted {
        tracing::info!(
            "{shard}: vacuum out of the way on {db} after {} ms",
            waited.as_millis()
        );
    } else {
        tracing::debug!(
            "{shard}: no vacuum guard on {db} after {} ms; the cut tries anyway",
            waited.as_millis()
        );
    }
    Ok(granted)
}

/// Runs `sql` in the savepoint [`TRY_SAVEPOINT`]. `Ok(false)` when it did
/// not get its locks (lock timeout, `NOWAIT`, deadlock): the savepoint is
/// rolled back, which releases what the try took and undoes its `SET
/// LOCAL`, and the transaction goes on. A granted try keeps its savepoint
/// open; it ends with the transaction.
pub(super) async fn try_in_savepoint(
    block: &Client,
    sql: &str,
) -> Result<bool, tokio_postgres::Error> {
    match block
        .batch_execute(&format!("SAVEPOINT {TRY_SAVEPOINT}; {sql}"))
        .await
    {
        Ok(()) => Ok(true),
        Err(e)
            if e.code() == Some(&SqlState::LOCK_NOT_AVAILABLE)
                || e.code() == Some(&SqlState::T_R_DEADLOCK_DETECTED) =>
        {
            block
                .batch_execute(&format!(
                    "ROLLBACK TO SAVEPOINT {TRY_SAVEPOINT}; RELEASE SAVEPOINT {TRY_SAVEPOINT}"
                ))
                .await?;
            Ok(false)
        }
        Err(e) => Err(e),
    }
}

/// A session holding a lock on a selected table that the guard waits for.
struct Holder {
    /// For the log: `autovacuum worker pid N (`autovacuum: VACUUM public.t`) holds app.t`.
    what: String,
    /// An autovacuum not preventing wraparound: the server cancels it.
    cancellable: bool,
}

/// Every session holding a lock on one of `tables` that conflicts with
/// `SHARE UPDATE EXCLUSIVE`. Empty if the look fails: the guard then
/// waits its budget, which holds no writer up.
async fn holders(look: &Client, tables: &[String]) -> Vec<Holder> {
    let rows = look
        .query(
            "SELECT a.pid, coalesce('user ' || a.usename::text, a.backend_type), \
             left(a.query, 100), current_database() || '.' || l.relation::regclass::text, \
             a.backend_type = 'autovacuum worker' AND a.query NOT LIKE '%to prevent wraparound%' \
             FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid \
             WHERE l.granted AND l.locktype = 'relation' AND l.pid <> pg_backend_pid() \
             AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database()) \
             AND l.mode IN ('ShareUpdateExclusiveLock', 'ShareLock', 'ShareRowExclusiveLock', \
                            'ExclusiveLock', 'AccessExclusiveLock') \
             AND l.relation = ANY($1::text[]::regclass[])",
            &[&tables],
        )
        .await
        .unwrap_or_default();
    rows.iter()
        .filter_map(|row| {
            let pid: i32 = row.try_get(0).ok()?;
            let who: Option<String> = row.try_get(1).ok()?;
            let query: Option<String> = row.try_get(2).ok()?;
            let table: Option<String> = row.try_get(3).ok()?;
            let cancellable: Option<bool> = row.try_get(4).ok()?;
            Some(Holder {
                what: format!(
                    "{} pid {pid} (`{}`) holds {}",
                    who.unwrap_or_default(),
                    super::activity::printable_query(query),
                    table.unwrap_or_default()
                ),
                cancellable: cancellable.unwrap_or(false),
            })
        })
        .collect()
}
