//! Which chunk a load worker takes next.
//!
//! Workers load different tables, one table at a time, largest first: a
//! worker takes the next chunk of a table nobody is loading, preferring
//! one already started (normally its own) over a new one, and among new
//! ones the one with the most chunks. Two loads into one table contend for
//! its locks (InnoDB holds a table's AUTO-INC lock for a whole `LOAD DATA`,
//! so two of them into one table run one after the other), while loads
//! into different tables run side by side. Finishing tables one after
//! another rather than all at the end lets each table's key build (which
//! reads the whole table, from disk when the buffer pool is small) run
//! while other tables still load. With fewer tables than workers, several
//! workers still share a table rather than wait. A table's chunks are
//! handed out in key order. The worker that finishes a table's last chunk
//! learns it from [`ChunkQueue::done`], so that the table's keys can be
//! built while the others go on loading.

use std::collections::VecDeque;
use std::sync::Mutex;

struct TableWork<T> {
    chunks: VecDeque<T>,
    /// Chunks of this table being loaded now.
    active: usize,
    /// Whether any chunk was handed out: a started table is finished before
    /// another is begun, so that tables finish one after another.
    started: bool,
}

pub(crate) struct ChunkQueue<T> {
    tables: Mutex<Vec<TableWork<T>>>,
}

/// A taken chunk, and the table to report it done for.
pub(crate) struct Taken<T> {
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
                        started: false,
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
            .min_by_key(|(_, t)| (t.active, !t.started, std::cmp::Reverse(t.chunks.len())))
            .map(|(i, _)| i)?;
        let work = &mut tables[table];
        let item = work.chunks.pop_front()?;
        work.active += 1;
        work.started = true;
        Some(Taken { table, item })
    }

    /// Reports a taken chunk of `table` loaded; true for exactly one
    /// caller per table: the one whose chunk was the table's last to finish.
    pub fn done(&self, table: usize) -> bool {
        let mut tables = self.tables.lock().unwrap_or_else(|p| p.into_inner());
        match tables.get_mut(table) {
            Some(t) => {
                t.active = t.active.saturating_sub(1);
                t.active == 0 && t.chunks.is_empty()
            }
            None => false,
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
        // Table 2's only chunk was its last.
        assert!(q.done(c.table));
        // Table 2 is finished; the freed worker joins the table with the
        // most chunks left, in key order.
        let d = q.take().unwrap();
        assert_eq!((d.table, d.item), (0, 2));
        assert!(!q.done(a.table));
        assert!(!q.done(b.table));
        let e = q.take().unwrap();
        let f = q.take().unwrap();
        assert_eq!((e.table, e.item), (1, 20));
        assert_eq!((f.table, f.item), (0, 3));
        assert!(q.done(e.table));
        // Table 0's last chunk (3) was taken while chunk 2 still loaded:
        // whichever of the two finishes second finishes the table.
        assert!(!q.done(d.table));
        assert!(q.done(f.table));
        assert!(q.take().is_none());
    }

    #[test]
    fn a_worker_finishes_its_table_before_beginning_another() {
        let q = ChunkQueue::new(vec![vec![1, 2, 3], vec![10, 20, 30], vec![100, 200]]);
        let a = q.take().unwrap();
        let b = q.take().unwrap();
        assert_eq!((a.table, b.table), (0, 1));
        // Table 0 goes on, though table 2 has not begun.
        assert!(!q.done(a.table));
        let c = q.take().unwrap();
        assert_eq!((c.table, c.item), (0, 2));
        assert!(!q.done(b.table));
        assert!(!q.done(c.table));
        let (d, e) = (q.take().unwrap(), q.take().unwrap());
        assert_eq!([(d.table, d.item), (e.table, e.item)], [(1, 20), (0, 3)]);
        // Table 0 is finished: its worker begins table 2.
        assert!(q.done(e.table));
        let f = q.take().unwrap();
        assert_eq!((f.table, f.item), (2, 100));
    }
}
