//! Which tables of a shard a partial restore brings back.
//!
//! `--database` selects whole databases, `--table` single tables. A table
//! whose foreign keys point at tables that are not selected cannot be
//! restored alone (its rows would reference nothing): it is refused with
//! the list of missing parents, or, with `--with-parents`, the parents (and
//! theirs, transitively) are added.

use petgraph::graphmap::DiGraphMap;
use petgraph::visit::Dfs;
use shard_agent::manifest::ShardManifest;

/// What the user asked for.
#[derive(Debug, Clone, Default)]
pub struct Request {
    pub databases: Vec<String>,
    /// `db.table`, or for PostgreSQL `db.schema.table` (`db.table` means
    /// schema `public`).
    pub tables: Vec<String>,
    pub with_parents: bool,
}

impl Request {
    pub fn is_all(&self) -> bool {
        self.databases.is_empty() && self.tables.is_empty()
    }
}

/// The qualified names to restore on this shard: `Ok(None)` for all,
/// `Ok(Some(empty))` when nothing on this shard matches.
pub fn select(
    shard: &str,
    m: &ShardManifest,
    req: &Request,
) -> Result<Option<Vec<String>>, String> {
    if req.is_all() {
        return Ok(None);
    }
    let names: Vec<String> = m.table_list.iter().map(|t| t.qualified()).collect();
    let matches = |want: &str, t: &shard_agent::manifest::TableManifest| {
        t.qualified() == want
            || (t.schema.as_deref() == Some("public")
                && format!("{}.{}", t.database, t.name) == want)
    };
    let mut chosen: Vec<String> = m
        .table_list
        .iter()
        .filter(|t| req.databases.contains(&t.database) || req.tables.iter().any(|w| matches(w, t)))
        .map(|t| t.qualified())
        .collect();
    let mut graph: DiGraphMap<&str, ()> = DiGraphMap::new();
    for t in &m.table_list {
        let child = names
            .iter()
            .find(|n| **n == t.qualified())
            .map(String::as_str);
        if let Some(child) = child {
            graph.add_node(child);
            for parent in &t.references {
                if let Some(p) = names.iter().find(|n| *n == parent) {
                    graph.add_edge(child, p.as_str(), ());
                }
            }
        }
    }
    let mut needed: Vec<String> = Vec::new();
    let mut missing: Vec<String> = Vec::new();
    for start in &chosen {
        let mut dfs = Dfs::new(&graph, start.as_str());
        while let Some(node) = dfs.next(&graph) {
            if !chosen.iter().any(|c| c == node) && !needed.iter().any(|n| n == node) {
                needed.push(node.to_string());
                missing.push(format!("{start} needs {node}"));
            }
        }
    }
    if !missing.is_empty() && !req.with_parents {
        missing.sort();
        return Err(format!(
            "shard {shard}: tables reference parents that are not selected ({}); add --with-parents, or select them",
            missing.join(", ")
        ));
    }
    chosen.append(&mut needed);
    chosen.sort();
    Ok(Some(chosen))
}

#[cfg(test)]
mod tests {
    use super::*;
    use shard_agent::manifest::TableManifest;

    fn table(db: &str, name: &str, refs: &[&str]) -> TableManifest {
        TableManifest {
            database: db.into(),
            schema: None,
            name: name.into(),
            columns: vec![],
            primary_key: vec![],
            references: refs.iter().map(|r| r.to_string()).collect(),
            system_versioned: false,
            rows: 0,
            content_hash: String::new(),
            bytes_raw: 0,
            bytes_stored: 0,
            duration_ms: 0,
            chunks: vec![],
        }
    }

    fn shard() -> ShardManifest {
        ShardManifest {
            table_list: vec![
                table("shop", "customers", &[]),
                table("shop", "orders", &["shop.customers"]),
                table("shop", "order_lines", &["shop.orders"]),
                table("db1", "t", &[]),
            ],
            ..Default::default()
        }
    }

    #[test]
    fn parents_are_refused_or_followed_transitively() {
        let req = Request {
            tables: vec!["shop.order_lines".into()],
            ..Default::default()
        };
        let err = select("s", &shard(), &req).unwrap_err();
        assert!(err.contains("shop.order_lines needs shop.orders"), "{err}");
        assert!(
            err.contains("shop.order_lines needs shop.customers"),
            "{err}"
        );
        let req = Request {
            with_parents: true,
            ..req
        };
        assert_eq!(
            select("s", &shard(), &req).unwrap().unwrap(),
            vec!["shop.customers", "shop.order_lines", "shop.orders"]
        );
    }

    #[test]
    fn databases_and_parentless_tables() {
        let req = Request {
            databases: vec!["db1".into()],
            tables: vec!["shop.customers".into()],
            ..Default::default()
        };
        assert_eq!(
            select("s", &shard(), &req).unwrap().unwrap(),
            vec!["db1.t", "shop.customers"]
        );
        assert_eq!(select("s", &shard(), &Request::default()).unwrap(), None);
    }
}
