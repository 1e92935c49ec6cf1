//! Another session as `pg_stat_activity` shows it, for a message that
//! names what a backup or capture waits on. Its statement is the server's
//! bytes, another user's text: shown with control characters escaped, so
//! that a message stays one line.

use tokio_postgres::Row;

/// The columns [`Activity::read`] reads, first in a query joining
/// `pg_stat_activity a`: pid, who (the user, or the backend type of a
/// server process), how long its transaction has been open (seconds),
/// its state and the head of its statement.
pub(super) const COLUMNS: &str = "a.pid, coalesce('user ' || a.usename::text, a.backend_type), \
     extract(epoch FROM now() - a.xact_start)::int8, a.state, left(a.query, 80)";

/// One session. Without `pg_read_all_stats` another user's age, state and
/// statement are hidden (NULL).
pub(super) struct Activity {
    pub pid: i32,
    pub who: String,
    pub age: Option<i64>,
    pub state: Option<String>,
    /// Control characters escaped.
    pub query: String,
}

impl Activity {
    /// The session in the first columns of `row`, which are [`COLUMNS`].
    pub(super) fn read(row: &Row) -> Option<Activity> {
        Some(Activity {
            pid: row.try_get(0).ok()?,
            who: row
                .try_get::<_, Option<String>>(1)
                .ok()?
                .unwrap_or_default(),
            age: row.try_get(2).ok()?,
            state: row.try_get(3).ok()?,
            query: printable_query(row.try_get(4).ok()?),
        })
    }
}

/// Another session's statement for a message: control characters escaped.
pub(super) fn printable_query(query: Option<String>) -> String {
    crate::error::printable(&query.unwrap_or_default())
}
