//! Materialized views' contents. `pg_dump --schema-only` creates every
//! materialized view `WITH NO DATA` and leaves out the `REFRESH` its data
//! section would hold, so a restore left them unpopulated ("materialized
//! view … has not been populated" on the first read). A backup records,
//! in the snapshot, which of them were populated, in the order they were
//! created (a view over another comes after it); a restore refreshes
//! those, after the data and post-data, from the restored tables (as
//! pg_restore does). The file comes from the repository: each of its lines
//! must be one `REFRESH` of one quoted name, as the backup writes it.

use tokio_postgres::Client;
use topology::Shard;

use super::pg_err;
use crate::error::AgentError;

const REFRESH: &str = "REFRESH MATERIALIZED VIEW ";

/// One `REFRESH MATERIALIZED VIEW schema.name;` line for each populated
/// materialized view of `db` that `shard` does not exclude, in creation
/// order, read through `snap` (the snapshot's transaction).
pub(super) async fn refreshes(
    snap: &Client,
    shard: &Shard,
    db: &str,
) -> Result<Vec<u8>, AgentError> {
    let what = format!("listing the materialized views of {db}");
    let rows = snap
        .query(
            "SELECT n.nspname::text, c.relname::text, \
             quote_ident(n.nspname) || '.' || quote_ident(c.relname) \
             FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace \
             WHERE c.relkind = 'm' AND c.relispopulated ORDER BY c.oid",
            &[],
        )
        .await
        .map_err(pg_err(shard, &what))?;
    let mut out = Vec::new();
    for r in rows {
        let schema: String = r.try_get(0).map_err(pg_err(shard, &what))?;
        let name: String = r.try_get(1).map_err(pg_err(shard, &what))?;
        if shard.excludes(db, Some(&schema), &name) {
            continue;
        }
        let quoted: String = r.try_get(2).map_err(pg_err(shard, &what))?;
        out.extend_from_slice(format!("{REFRESH}{quoted};\n").as_bytes());
    }
    Ok(out)
}

/// The statements of a materialized-view file, each line checked to be
/// exactly what [`refreshes`] writes; otherwise the first line that is not.
pub(super) fn checked(text: &str) -> Result<String, String> {
    for (n, line) in text.lines().enumerate() {
        let name = line
            .strip_prefix(REFRESH)
            .and_then(|rest| rest.strip_suffix(';'));
        let valid = name
            .and_then(identifier)
            .and_then(|rest| rest.strip_prefix('.'))
            .and_then(identifier)
            .is_some_and(str::is_empty);
        if !valid {
            return Err(format!(
                "line {} is not one refresh of a materialized view by its quoted name",
                n + 1
            ));
        }
    }
    Ok(text.to_string())
}

/// The rest of `s` after one identifier as `quote_ident` writes it: plain
/// (`[a-z_][a-z0-9_]*`), or in double quotes with each inner quote
/// doubled.
fn identifier(s: &str) -> Option<&str> {
    if let Some(inner) = s.strip_prefix('"') {
        let mut at = 0;
        loop {
            let close = at + inner[at..].find('"')?;
            if inner[close + 1..].starts_with('"') {
                at = close + 2;
            } else {
                return (close > 0).then(|| &inner[close + 1..]);
            }
        }
    }
    let end = s
        .find(|c: char| !(c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_'))
        .unwrap_or(s.len());
    let first = s.as_bytes().first()?;
    (end > 0 && !first.is_ascii_digit()).then(|| &s[end..])
}

#[cfg(test)]
mod tests {
    use super::checked;

    #[test]
    fn only_refreshes_of_quoted_names_pass() {
        let good = "REFRESH MATERIALIZED VIEW public.totals;\n\
                    REFRESH MATERIALIZED VIEW \"Sales\".\"by \"\"day\"\"; x\";\n";
        assert_eq!(checked(good).unwrap(), good);
        assert_eq!(checked("").unwrap(), "");
        for bad in [
            "REFRESH MATERIALIZED VIEW public.t; DROP TABLE public.t;",
            "REFRESH MATERIALIZED VIEW public.t;\nDROP DATABASE other;",
            "REFRESH MATERIALIZED VIEW t;",
            "REFRESH MATERIALIZED VIEW public.\"t;",
            "REFRESH MATERIALIZED VIEW public.\"\";",
            "REFRESH MATERIALIZED VIEW public.T;",
            "REFRESH MATERIALIZED VIEW public.1t;",
            "REFRESH MATERIALIZED VIEW public.t",
            "refresh materialized view public.t;",
            "REFRESH MATERIALIZED VIEW public.t;--",
            "COPY t TO PROGRAM 'touch /tmp/x';",
        ] {
            assert!(checked(bad).is_err(), "{bad}");
        }
    }
}
