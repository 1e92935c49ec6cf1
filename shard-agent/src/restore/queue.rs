//! Which chunk a load worker takes next.
//!
//! Workers spread over tables: each takes the next chunk of the table the
//! fewest workers are loading (the one with the most chunks left among
//! those). Two loads into one table contend for its locks (InnoDB holds a
//! table's AUTO-INC lock for a whole `LOAD DATA`, so two of them into one
//! table run one after the other), while loads into different tables run
//! side by side. With fewer tables than workers, several workers still
//! share a table rather than wait. A table's chunks are handed out in key
//! order.

use std::collections::VecDeque;
use std::sync::Mutex;

struct TableWork<T> {
    chunks: VecDeque<T>,
    active: usize,
}

pub(super) struct ChunkQueue<T> {
    tables: Mutex<Vec<TableWork<T>>>,
}

/// A taken chunk, and the table to report it done for.
pub(super) struct Taken<T> {
    pub table: usize,
    pub item: T,
}

impl<T> ChunkQueue<T> {
    /// One entry per table, its chunks in load order.
    pub fn new(tables: Vec<Vec<T>>) -> Self {
        ChunkQueue {
            tables: Mutex::new(
                tables
                    .into_iter()
                    .map(|chunks| TableWork {
                        chunks: chunks.into(),
                        active: 0,
                    })
                    .collect(),
            ),
        }
    }

    pub fn take(&self) -> Option<Taken<T>> {
        let mut tables = self.tables.lock().unwrap_or_else(|p| p.into_inner());
        let table = tables
            .iter()
            .enumerate()
            .filter(|(_, t)| !t.chunks.is_empty())
            .min_by_key(|(_, t)| (t.active, std::cmp::Reverse(t.chunks.len())))
            .map(|(i, _)| i)?;
        let work = &mut tables[table];
        let item = work.chunks.pop_front()?;
        work.active += 1;
        Some(Taken { table, item })
    }

    pub fn done(&self, table: usize) {
        let mut tables = self.tables.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(t) = tables.get_mut(table) {
            t.active = t.active.saturating_sub(1);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn workers_spread_over_tables_and_share_the_last_one() {
        let q = ChunkQueue::new(vec![vec![1, 2, 3], vec![10, 20], vec![100]]);
        let a = q.take().unwrap();
        let b = q.take().unwrap();
        let c = q.take().unwrap();
        // One worker per table while there are idle tables, largest first.
        assert_eq!((a.table, a.item), (0, 1));
        assert_eq!((b.table, b.item), (1, 10));
        assert_eq!((c.table, c.item), (2, 100));
        q.done(c.table);
        // Table 2 is finished; the freed worker joins the table with the
        // most chunks left, in key order.
        let d = q.take().unwrap();
        assert_eq!((d.table, d.item), (0, 2));
        q.done(a.table);
        q.done(b.table);
        q.done(d.table);
        let rest: Vec<i32> = std::iter::from_fn(|| q.take().map(|t| t.item)).collect();
        assert_eq!(rest, vec![3, 20]);
    }
}
