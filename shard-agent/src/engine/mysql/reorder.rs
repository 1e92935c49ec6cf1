//! Replayed row changes put in key order, so that the target reads and
//! writes each page once for many changes instead of once a change.
//!
//! A target whose buffer pool is far smaller than its tables spends its
//! replay on page reads and the write-back of evicted dirty pages: in
//! source order, nearly every change lands on a page that left memory
//! since the last change to it. Sorted by primary key over a window of
//! many source transactions, the changes to one page follow each other.
//!
//! Only changes that commute are reordered: single-row statements on a
//! table whose primary key is its only unique key, made of integer
//! columns (equal keys are equal values, with no collation to ask), that
//! no foreign key links and no trigger watches, and that do not change
//! the key. Changes to one key keep their source order (the sort is
//! stable), so every row ends as the source left it; the restore reads
//! the target back against the mark's hashes as always.

use std::collections::{HashMap, HashSet};

use mysql_async::prelude::Queryable;
use mysql_async::Conn;
use mysql_common::binlog::events::{RowsEventData, TableMapEvent};
use mysql_common::binlog::row::BinlogRow;
use mysql_common::binlog::value::BinlogValue;
use mysql_common::constants::ColumnType;
use mysql_common::value::Value;

/// A table by database and name, as a table map event names it.
pub(super) type Table = (String, String);

/// Where a single-row change sorts: its table and its key's values.
pub(super) type SortKey = (Table, Vec<i128>);

/// Bytes held for sorting by all of a replay's connections together, at
/// most: 16 MiB a connection with the default 4, large enough that a
/// window holds several changes to most pages of tables many times the
/// buffer pool (measured: windows of 4, 8, 16 and 32 MiB gave 6,019,
/// 7,241, 9,179-9,501 and 9,635 transactions/s).
const WINDOWS_BYTES: usize = 64 << 20;
/// A connection's window, at least, however many connections there are.
const MIN_WINDOW_BYTES: usize = 1 << 20;

/// The tables whose single-row changes may be reordered, with the
/// positions of their primary key's columns.
#[derive(Debug, Default)]
pub(super) struct Orderable(HashMap<Table, Vec<usize>>);

const INTEGER_TYPES: &[&str] = &["tinyint", "smallint", "mediumint", "int", "bigint"];

impl Orderable {
    /// Reads the target's catalog (restored from the base, and changed
    /// since only by replayed DDL, after which it is read again); `linked`
    /// are the tables its foreign keys name.
    pub(super) async fn read(
        conn: &mut Conn,
        linked: &HashSet<Table>,
    ) -> Result<Self, mysql_async::Error> {
        let system = super::sql::SYSTEM_DATABASES
            .iter()
            .map(|d| format!("'{d}'"))
            .collect::<Vec<_>>()
            .join(", ");
        // Every unique index's columns, in index order.
        let unique: Vec<(String, String, String, u64, String)> = conn
            .query(format!(
                "SELECT s.TABLE_SCHEMA, s.TABLE_NAME, s.INDEX_NAME, c.ORDINAL_POSITION, c.DATA_TYPE \
                 FROM information_schema.STATISTICS s JOIN information_schema.COLUMNS c \
                   ON c.TABLE_SCHEMA = s.TABLE_SCHEMA AND c.TABLE_NAME = s.TABLE_NAME \
                  AND c.COLUMN_NAME = s.COLUMN_NAME \
                 WHERE s.NON_UNIQUE = 0 AND s.TABLE_SCHEMA NOT IN ({system}) \
                 ORDER BY s.TABLE_SCHEMA, s.TABLE_NAME, s.INDEX_NAME, s.SEQ_IN_INDEX"
            ))
            .await?;
        let triggered: Vec<(String, String)> = conn
            .query(
                "SELECT EVENT_OBJECT_SCHEMA, EVENT_OBJECT_TABLE FROM information_schema.TRIGGERS",
            )
            .await?;
        let mut excluded: HashSet<Table> = triggered.into_iter().collect();
        excluded.extend(linked.iter().cloned());
        Ok(Self::from_catalog(unique, &excluded))
    }

    /// From every unique index's columns (schema, table, index, 1-based
    /// column position, data type), in index order, and the tables that
    /// foreign keys or triggers involve.
    fn from_catalog(
        unique: Vec<(String, String, String, u64, String)>,
        excluded: &HashSet<Table>,
    ) -> Self {
        let mut indexes: HashMap<Table, HashMap<String, Vec<(u64, String)>>> = HashMap::new();
        for (schema, table, index, position, data_type) in unique {
            indexes
                .entry((schema, table))
                .or_default()
                .entry(index)
                .or_default()
                .push((position, data_type));
        }
        let mut tables = HashMap::new();
        for (table, by_name) in indexes {
            if excluded.contains(&table) || by_name.len() != 1 {
                continue;
            }
            let Some(columns) = by_name.get("PRIMARY") else {
                continue;
            };
            let integer = columns
                .iter()
                .all(|(_, t)| INTEGER_TYPES.contains(&t.to_ascii_lowercase().as_str()));
            let positions: Option<Vec<usize>> = columns
                .iter()
                .map(|(p, _)| usize::try_from(*p).ok()?.checked_sub(1))
                .collect();
            if let (true, Some(positions)) = (integer, positions) {
                tables.insert(table, positions);
            }
        }
        Orderable(tables)
    }

    /// Where the one row `rows` changes sorts; `None` when the change
    /// must keep its place: a table not orderable, several rows, an image
    /// without every column, a value not an integer, or a changed key.
    pub(super) fn key(&self, map: &TableMapEvent<'_>, rows: &RowsEventData<'_>) -> Option<SortKey> {
        let table = (
            map.database_name().into_owned(),
            map.table_name().into_owned(),
        );
        let positions = self.0.get(&table)?;
        let n = usize::try_from(rows.num_columns()).ok()?;
        let before_full = rows
            .columns_before_image()
            .is_none_or(|b| b.len() >= n && b.iter().take(n).all(|x| *x));
        let after_full = rows
            .columns_after_image()
            .is_none_or(|b| b.len() >= n && b.iter().take(n).all(|x| *x));
        if !before_full || !after_full || positions.iter().any(|&p| p >= n) {
            return None;
        }
        for &p in positions {
            let integer = matches!(
                map.get_column_type(p),
                Ok(Some(
                    ColumnType::MYSQL_TYPE_TINY
                        | ColumnType::MYSQL_TYPE_SHORT
                        | ColumnType::MYSQL_TYPE_INT24
                        | ColumnType::MYSQL_TYPE_LONG
                        | ColumnType::MYSQL_TYPE_LONGLONG
                ))
            );
            if !integer {
                return None;
            }
        }
        let mut all = rows.rows(map);
        let (before, after) = all.next()?.ok()?;
        if all.next().is_some() {
            return None;
        }
        let values = |row: &BinlogRow| -> Option<Vec<i128>> {
            positions
                .iter()
                .map(|&p| match row.as_ref(p)? {
                    BinlogValue::Value(Value::Int(i)) => Some(i128::from(*i)),
                    BinlogValue::Value(Value::UInt(u)) => Some(i128::from(*u)),
                    _ => None,
                })
                .collect()
        };
        let key = match (before.as_ref(), after.as_ref()) {
            (Some(b), Some(a)) => {
                let k = values(b)?;
                (values(a)? == k).then_some(k)?
            }
            (Some(row), None) | (None, Some(row)) => values(row)?,
            (None, None) => return None,
        };
        Some((table, key))
    }
}

/// Single-row changes held on one connection until they are sent in key
/// order.
pub(super) struct Window {
    steps: Vec<(SortKey, Vec<u8>)>,
    /// What the held changes take, their keys counted.
    bytes: usize,
    limit: usize,
}

impl Window {
    /// A window of one of `connections` replay connections: its share of
    /// [`WINDOWS_BYTES`].
    pub(super) fn new(connections: usize) -> Self {
        Window {
            steps: Vec::new(),
            bytes: 0,
            limit: (WINDOWS_BYTES / connections.max(1)).max(MIN_WINDOW_BYTES),
        }
    }

    pub(super) fn push(&mut self, key: SortKey, rows: Vec<u8>) {
        let ((db, table), values) = &key;
        self.bytes += rows.len()
            + db.len()
            + table.len()
            + values.len() * std::mem::size_of::<i128>()
            + std::mem::size_of::<(SortKey, Vec<u8>)>();
        self.steps.push((key, rows));
    }

    pub(super) fn is_full(&self) -> bool {
        self.bytes >= self.limit
    }

    /// The held changes in key order, changes to one key in source order;
    /// the window is empty after.
    pub(super) fn drain(&mut self) -> Vec<Vec<u8>> {
        let mut steps = std::mem::take(&mut self.steps);
        self.bytes = 0;
        steps.sort_by(|a, b| a.0.cmp(&b.0));
        steps.into_iter().map(|(_, rows)| rows).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn index(t: &str, i: &str, pos: u64, ty: &str) -> (String, String, String, u64, String) {
        ("db".into(), t.into(), i.into(), pos, ty.into())
    }

    #[test]
    fn only_tables_whose_one_unique_key_is_an_integer_primary_key_are_orderable() {
        let catalog = vec![
            index("plain", "PRIMARY", 1, "int"),
            index("pair", "PRIMARY", 2, "bigint"),
            index("pair", "PRIMARY", 1, "int"),
            index("texts", "PRIMARY", 1, "varchar"),
            index("unique_too", "PRIMARY", 1, "int"),
            index("unique_too", "email", 3, "varchar"),
            index("linked", "PRIMARY", 1, "int"),
            index("only_unique", "u", 1, "int"),
        ];
        let excluded: HashSet<Table> = [("db".to_string(), "linked".to_string())].into();
        let o = Orderable::from_catalog(catalog, &excluded);
        let t = |n: &str| ("db".to_string(), n.to_string());
        assert_eq!(o.0.get(&t("plain")), Some(&vec![0]));
        // Key columns in index order, as positions in the row.
        assert_eq!(o.0.get(&t("pair")), Some(&vec![1, 0]));
        for n in ["texts", "unique_too", "linked", "only_unique"] {
            assert!(!o.0.contains_key(&t(n)), "{n} must keep source order");
        }
    }

    #[test]
    fn a_window_sorts_by_table_and_key_and_keeps_the_order_of_one_key() {
        let mut w = Window::new(4);
        assert_eq!(w.limit, 16 << 20);
        assert_eq!(Window::new(64).limit, 1 << 20);
        let k = |t: &str, v: i128| (("db".to_string(), t.to_string()), vec![v]);
        w.push(k("b", 1), b"b1".to_vec());
        w.push(k("a", 9), b"a9-first".to_vec());
        w.push(k("a", 2), b"a2".to_vec());
        w.push(k("a", 9), b"a9-second".to_vec());
        let order: Vec<Vec<u8>> = w.drain();
        assert_eq!(
            order,
            vec![
                b"a2".to_vec(),
                b"a9-first".to_vec(),
                b"a9-second".to_vec(),
                b"b1".to_vec()
            ]
        );
        assert!(w.drain().is_empty());
    }
}
