//! What a PostgreSQL backup keeps must need nothing `exclude_tables`
//! leaves out (docs/ARCHITECTURE.md, Decisions, "What a backup keeps
//! needs nothing it leaves out").

use std::collections::{HashMap, HashSet};

use tokio_postgres::Client;
use topology::Shard;

use super::pg_err;
use crate::error::AgentError;

/// Fails, naming both, if something the backup keeps needs a relation
/// that `exclude_tables` leaves out of database `db`: a view or
/// materialized view reading it, a column's `DEFAULT` taking from a
/// sequence, a foreign key, a policy, a trigger or a function body naming
/// it, a column or function of its row type, a table inheriting from it
/// or a partition of it; or if a partition is left out of a partitioned
/// table that is kept (whose read takes the partition's rows). pg_dump
/// leaves the relation out and keeps the rest, whose `CREATE` (or load)
/// then fails the restore ("relation … does not exist") of a backup
/// called complete. Run before the cut and again in its snapshot.
pub(super) async fn nothing_kept_needs_what_is_left_out(
    client: &Client,
    shard: &Shard,
    db: &str,
) -> Result<(), AgentError> {
    if !shard.exclude_tables.iter().any(|t| t.database == db) {
        return Ok(());
    }
    let err = pg_err(shard, &format!("reading the dependencies of {db}"));
    // Each relation, and for a sequence a column owns (`serial`, `a`) or
    // an identity column's (`i`) its table.
    let relations = client
        .query(
            "SELECT c.oid, c.reltype, n.nspname::text, c.relname::text, \
               own.deptype::text, own.refobjid \
             FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace \
             LEFT JOIN pg_depend own ON c.relkind = 'S' AND own.classid = 'pg_class'::regclass \
               AND own.objid = c.oid AND own.refclassid = 'pg_class'::regclass \
               AND own.deptype IN ('a', 'i') \
             WHERE c.relkind IN ('r', 'p', 'S', 'v', 'm', 'f') \
             AND n.nspname NOT IN ('pg_catalog', 'information_schema')",
            &[],
        )
        .await
        .map_err(&err)?;
    struct Relation {
        oid: u32,
        row_type: u32,
        name: String,
        named: bool,
        owner: Option<(String, u32)>,
    }
    let mut listed = Vec::new();
    let mut named = HashSet::new();
    for r in relations {
        let schema: String = r.try_get(2).map_err(&err)?;
        let name: String = r.try_get(3).map_err(&err)?;
        let deptype: Option<String> = r.try_get(4).map_err(&err)?;
        let owner: Option<u32> = r.try_get(5).map_err(&err)?;
        let relation = Relation {
            oid: r.try_get(0).map_err(&err)?,
            row_type: r.try_get(1).map_err(&err)?,
            named: shard.excludes(db, Some(&schema), &name),
            name: crate::manifest::qualified_name(db, Some(&schema), &name),
            owner: deptype.zip(owner),
        };
        if relation.named {
            named.insert(relation.oid);
        }
        listed.push(relation);
    }
    // Left out as pg_dump leaves it out: by name, and an owned sequence
    // as its table says (`dump::sequence_kept`).
    let mut excluded: HashMap<u32, String> = HashMap::new();
    // The row type of each relation left out, and the relation.
    let mut row_types: HashMap<u32, u32> = HashMap::new();
    for r in listed {
        let left_out = match &r.owner {
            Some((deptype, owner)) => {
                let owner_kept = !named.contains(owner);
                !super::dump::sequence_kept(r.named, Some(deptype), Some(owner_kept))
            }
            None => r.named,
        };
        if left_out {
            if r.row_type != 0 {
                row_types.insert(r.row_type, r.oid);
            }
            excluded.insert(r.oid, r.name);
        }
    }
    if excluded.is_empty() {
        return Ok(());
    }
    let refused = |what: String| AgentError::Tool {
        shard: shard.name.clone(),
        what: format!("database {db}: {what}"),
    };
    let oids: Vec<u32> = excluded.keys().copied().collect();
    let families = client
        .query(
            "SELECT i.inhrelid, i.inhparent, c.relispartition, \
               quote_ident(cn.nspname) || '.' || quote_ident(c.relname), \
               quote_ident(pn.nspname) || '.' || quote_ident(p.relname) \
             FROM pg_inherits i \
             JOIN pg_class c ON c.oid = i.inhrelid JOIN pg_namespace cn ON cn.oid = c.relnamespace \
             JOIN pg_class p ON p.oid = i.inhparent JOIN pg_namespace pn ON pn.oid = p.relnamespace \
             WHERE i.inhrelid = ANY($1) OR i.inhparent = ANY($1) \
             ORDER BY 4, 5",
            &[&oids],
        )
        .await
        .map_err(&err)?;
    for r in families {
        let child: u32 = r.try_get(0).map_err(&err)?;
        let parent: u32 = r.try_get(1).map_err(&err)?;
        let partition: bool = r.try_get(2).map_err(&err)?;
        let child_name: String = r.try_get(3).map_err(&err)?;
        let parent_name: String = r.try_get(4).map_err(&err)?;
        let kind = if partition {
            "partition"
        } else {
            "inheriting table"
        };
        match (excluded.contains_key(&child), excluded.contains_key(&parent)) {
            (false, true) => {
                return Err(refused(format!(
                    "{kind} {child_name} of {parent_name}, which the shard's exclude_tables leaves out, is kept, so no restore could create it; leave out {parent_name} with every {kind} of it, or none"
                )))
            }
            (true, false) if partition => {
                return Err(refused(format!(
                    "partition {child_name} is left out by the shard's exclude_tables while {parent_name} is kept, whose rows are read with its partitions', so no restore could load them; leave out {parent_name} with every partition of it, or none"
                )))
            }
            _ => {}
        }
    }
    let types: Vec<u32> = row_types.keys().copied().collect();
    // What depends on them (or on their row types) by a normal
    // dependency, with the relation that holds it (none for a function),
    // described for the message.
    let dependents = client
        .query(
            "SELECT DISTINCT d.refobjid, d.refclassid = 'pg_type'::regclass, \
               COALESCE(rw.ev_class, ad.adrelid, co.conrelid, pol.polrelid, tg.tgrelid, \
                 CASE WHEN d.classid = 'pg_class'::regclass THEN d.objid END, 0::oid), \
               CASE \
                 WHEN rw.rulename = '_RETURN' THEN \
                   CASE rc.relkind WHEN 'm' THEN 'materialized view ' ELSE 'view ' END \
                   || quote_ident(rn.nspname) || '.' || quote_ident(rc.relname) \
                 WHEN ad.oid IS NOT NULL THEN 'the DEFAULT of column ' || quote_ident(a.attname) \
                   || ' of table ' || quote_ident(an.nspname) || '.' || quote_ident(ac.relname) \
                 ELSE pg_describe_object(d.classid, d.objid, d.objsubid) \
               END \
             FROM pg_depend d \
             LEFT JOIN pg_rewrite rw ON d.classid = 'pg_rewrite'::regclass AND rw.oid = d.objid \
             LEFT JOIN pg_class rc ON rc.oid = rw.ev_class \
             LEFT JOIN pg_namespace rn ON rn.oid = rc.relnamespace \
             LEFT JOIN pg_attrdef ad ON d.classid = 'pg_attrdef'::regclass AND ad.oid = d.objid \
             LEFT JOIN pg_attribute a ON a.attrelid = ad.adrelid AND a.attnum = ad.adnum \
             LEFT JOIN pg_class ac ON ac.oid = ad.adrelid \
             LEFT JOIN pg_namespace an ON an.oid = ac.relnamespace \
             LEFT JOIN pg_constraint co ON d.classid = 'pg_constraint'::regclass AND co.oid = d.objid \
             LEFT JOIN pg_policy pol ON d.classid = 'pg_policy'::regclass AND pol.oid = d.objid \
             LEFT JOIN pg_trigger tg ON d.classid = 'pg_trigger'::regclass AND tg.oid = d.objid \
             WHERE d.deptype = 'n' AND ( \
               (d.refclassid = 'pg_class'::regclass AND d.refobjid = ANY($1)) \
               OR (d.refclassid = 'pg_type'::regclass AND d.refobjid = ANY($2))) \
             ORDER BY 4",
            &[&oids, &types],
        )
        .await
        .map_err(&err)?;
    for r in dependents {
        let referenced: u32 = r.try_get(0).map_err(&err)?;
        let by_type: bool = r.try_get(1).map_err(&err)?;
        let holder: u32 = r.try_get(2).map_err(&err)?;
        let what: Option<String> = r.try_get(3).map_err(&err)?;
        let needed = match by_type {
            true => row_types.get(&referenced).copied().unwrap_or(referenced),
            false => referenced,
        };
        // A view of a relation left out, left out itself, is no loss.
        if holder == needed || excluded.contains_key(&holder) {
            continue;
        }
        let needed = excluded.get(&needed).cloned().unwrap_or_default();
        let what = crate::replay::excerpt(&what.unwrap_or_default());
        let of_type = if by_type { "the row type of " } else { "" };
        return Err(refused(format!(
            "{what} needs {of_type}{needed}, which the shard's exclude_tables leaves out, so no restore could create it; back up {needed}, or leave out (or change) what needs it"
        )));
    }
    Ok(())
}
