//! The server's binlog filters (`binlog-do-db`, `binlog-ignore-db`):
//! startup options that keep the changes of some databases out of the
//! binary log, where capture cannot read them.
//!
//! With row-based logging a row change is filtered by the database of its
//! table, and a statement (all DDL) by the session's default database
//! (`USE`), whatever database it names.

use mysql_async::prelude::Queryable;
use mysql_async::{Conn, Row};
use topology::Shard;

use super::sql::text;
use crate::error::DbError;

/// The filters in force, as `SHOW MASTER STATUS` lists them (empty when
/// the options are not set, or the binary log is off).
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub(crate) struct BinlogFilters {
    pub do_db: Vec<String>,
    pub ignore_db: Vec<String>,
}

impl BinlogFilters {
    /// From the two columns' text: the server joins each option's
    /// databases with commas.
    pub fn parse(do_db: &str, ignore_db: &str) -> Self {
        let list = |s: &str| {
            s.split(',')
                .map(str::trim)
                .filter(|d| !d.is_empty())
                .map(str::to_string)
                .collect()
        };
        BinlogFilters {
            do_db: list(do_db),
            ignore_db: list(ignore_db),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.do_db.is_empty() && self.ignore_db.is_empty()
    }

    /// Whether the row changes of `db`'s tables are left out of the
    /// binary log. Read on the safe side: an ignored name matches in any
    /// letter case (the server folds names when `lower_case_table_names`
    /// is set), a name to log only exactly.
    pub fn leaves_out(&self, db: &str) -> bool {
        (!self.do_db.is_empty() && !self.do_db.iter().any(|d| d == db))
            || self.ignore_db.iter().any(|d| d.eq_ignore_ascii_case(db))
    }

    /// The options as a DBA would write them, for messages.
    pub fn describe(&self) -> String {
        let mut parts = Vec::new();
        if !self.do_db.is_empty() {
            parts.push(format!("binlog-do-db={}", self.do_db.join(",")));
        }
        if !self.ignore_db.is_empty() {
            parts.push(format!("binlog-ignore-db={}", self.ignore_db.join(",")));
        }
        parts.join(" ")
    }

    /// Why capture of `shard` cannot be trusted, when the filters leave
    /// out any of `databases` (the shard's selected ones): a restore to a
    /// later point would lack their changes. Or, with `binlog-do-db` at
    /// all, the DDL of a session without a listed default database (no
    /// `USE`: `ALTER TABLE shop.t …` from most tools), which the server
    /// leaves out whatever tables it names.
    pub fn refusal(&self, databases: &[String]) -> Option<String> {
        let left: Vec<&str> = databases
            .iter()
            .filter(|d| self.leaves_out(d))
            .map(String::as_str)
            .collect();
        if !left.is_empty() {
            return Some(format!(
                "the server's {} keeps the changes of database(s) {} out of the binary log, so capture cannot read them and a restore to a later point would lack them; \
                 remove the option from the server's configuration and restart it, or leave those databases out of the shard's `databases`",
                self.describe(),
                left.join(", ")
            ));
        }
        (!self.do_db.is_empty()).then(|| {
            format!(
                "the server's {} logs a statement only when its session's default database is listed, so DDL run without `USE` (ALTER TABLE db.t …) is not in the binary log and a restore to a later point would lack it; \
                 remove the option from the server's configuration and restart it",
                self.describe()
            )
        })
    }
}

/// The server's binlog filters.
pub(crate) async fn read(conn: &mut Conn) -> Result<BinlogFilters, DbError> {
    let rows: Vec<Row> = conn.query("SHOW MASTER STATUS").await?;
    let Some(row) = rows.first() else {
        return Ok(BinlogFilters::default());
    };
    Ok(BinlogFilters::parse(
        &text(row, 2)?.unwrap_or_default(),
        &text(row, 3)?.unwrap_or_default(),
    ))
}

/// Why capture of `shard` is refused on the server `conn` is connected
/// to, if it is ([`BinlogFilters::refusal`]).
pub(crate) async fn capture_refusal(
    conn: &mut Conn,
    shard: &Shard,
) -> Result<Option<String>, DbError> {
    let filters = read(conn).await?;
    if filters.is_empty() {
        return Ok(None);
    }
    Ok(filters.refusal(&super::selected_databases(conn, shard).await?))
}

#[cfg(test)]
mod tests {
    use super::BinlogFilters;

    #[test]
    fn a_database_is_left_out_by_an_ignore_list_or_by_a_do_list_without_it() {
        let none = BinlogFilters::parse("", "");
        assert!(none.is_empty() && !none.leaves_out("shop"));
        assert_eq!(none.refusal(&["shop".into()]), None);

        let ignore = BinlogFilters::parse("", "hidden,scratch");
        assert!(ignore.leaves_out("hidden") && ignore.leaves_out("SCRATCH"));
        assert!(!ignore.leaves_out("shop"));

        let only = BinlogFilters::parse("shop", "");
        assert!(!only.leaves_out("shop"));
        assert!(only.leaves_out("Shop") && only.leaves_out("bank"));

        let dbs = ["bank".to_string(), "hidden".into(), "shop".into()];
        assert_eq!(
            ignore.refusal(&dbs).unwrap(),
            "the server's binlog-ignore-db=hidden,scratch keeps the changes of database(s) hidden out of the binary log, so capture cannot read them and a restore to a later point would lack them; \
             remove the option from the server's configuration and restart it, or leave those databases out of the shard's `databases`"
        );
        assert!(only.refusal(&dbs).unwrap().starts_with(
            "the server's binlog-do-db=shop keeps the changes of database(s) bank, hidden out"
        ));
        // Listing every covered database still loses DDL run without USE.
        assert!(only
            .refusal(&["shop".to_string()])
            .unwrap()
            .starts_with("the server's binlog-do-db=shop logs a statement only when"));
        assert_eq!(ignore.refusal(&["shop".to_string()]), None);
    }
}
