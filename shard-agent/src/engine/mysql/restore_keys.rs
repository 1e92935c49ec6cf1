//! Secondary keys built after the load rather than row by row during it.
//!
//! Loading into a table whose secondary index is in place inserts every
//! row into that index in key order of the index, not of the load: random
//! page accesses that outgrow the buffer pool. `ALTER TABLE … ADD KEY`
//! after the load sorts once and builds the index bottom-up (as
//! `pg_restore` builds PostgreSQL indexes after the data).
//!
//! Only plain and unique B-tree keys of tables without foreign keys and
//! without partitioning are deferred: a foreign key needs its index at
//! creation (on either side), and full-text, spatial and partitioned
//! definitions stay exactly as the server printed them.

/// `SHOW CREATE TABLE` text without its deferrable secondary keys, and the
/// `ADD …` clauses that put them back; `None` when nothing is deferred.
pub(super) fn split_secondary_keys(create: &str) -> Option<(String, Vec<String>)> {
    let upper = create.to_uppercase();
    if upper.contains("FOREIGN KEY") || upper.contains("PARTITION BY") {
        return None;
    }
    let lines: Vec<&str> = create.lines().collect();
    // Column and key definitions: the lines between `CREATE TABLE … (` and
    // the line opening with `)` (table options).
    let close = lines.iter().rposition(|l| l.starts_with(')'))?;
    if close < 2 || !lines[0].trim_end().ends_with('(') {
        return None;
    }
    let (mut kept, mut deferred) = (Vec::new(), Vec::new());
    for line in &lines[1..close] {
        let item = line.trim_end().trim_end_matches(',');
        let body = item.trim_start();
        if body.starts_with("KEY `") || body.starts_with("UNIQUE KEY `") {
            deferred.push(format!("ADD {body}"));
        } else {
            kept.push(item);
        }
    }
    if deferred.is_empty() || kept.is_empty() {
        return None;
    }
    let mut out = String::new();
    out.push_str(lines[0]);
    out.push('\n');
    out.push_str(&kept.join(",\n"));
    out.push('\n');
    out.push_str(&lines[close..].join("\n"));
    Some((out, deferred))
}

#[cfg(test)]
mod tests {
    use super::*;

    const SYSBENCH: &str = "CREATE TABLE `sbtest1` (\n  `id` int(11) NOT NULL AUTO_INCREMENT,\n  `k` int(11) NOT NULL DEFAULT 0,\n  `c` char(120) NOT NULL DEFAULT '',\n  PRIMARY KEY (`id`),\n  KEY `k_1` (`k`),\n  UNIQUE KEY `u` (`c`) COMMENT 'a, b'\n) ENGINE=InnoDB AUTO_INCREMENT=5 DEFAULT CHARSET=utf8mb4";

    #[test]
    fn plain_and_unique_keys_move_to_the_alter() {
        let (create, keys) = split_secondary_keys(SYSBENCH).unwrap();
        assert_eq!(
            create,
            "CREATE TABLE `sbtest1` (\n  `id` int(11) NOT NULL AUTO_INCREMENT,\n  `k` int(11) NOT NULL DEFAULT 0,\n  `c` char(120) NOT NULL DEFAULT '',\n  PRIMARY KEY (`id`)\n) ENGINE=InnoDB AUTO_INCREMENT=5 DEFAULT CHARSET=utf8mb4"
        );
        assert_eq!(
            keys,
            vec![
                "ADD KEY `k_1` (`k`)",
                "ADD UNIQUE KEY `u` (`c`) COMMENT 'a, b'"
            ]
        );
    }

    #[test]
    fn tables_with_foreign_keys_full_text_only_or_partitions_stay_whole() {
        let fk = SYSBENCH.replace(
            "  PRIMARY KEY (`id`),",
            "  PRIMARY KEY (`id`),\n  CONSTRAINT `f` FOREIGN KEY (`k`) REFERENCES `p` (`id`),",
        );
        assert!(split_secondary_keys(&fk).is_none());
        let parts = format!("{SYSBENCH}\n PARTITION BY HASH (`id`)\nPARTITIONS 2");
        assert!(split_secondary_keys(&parts).is_none());
        let fulltext = "CREATE TABLE `d` (\n  `id` int(11) NOT NULL,\n  `t` text,\n  PRIMARY KEY (`id`),\n  FULLTEXT KEY `ft` (`t`)\n) ENGINE=InnoDB";
        assert!(split_secondary_keys(fulltext).is_none());
    }
}
