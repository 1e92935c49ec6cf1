//! Point-in-time planning: which mark a `--until` names, which backup is
//! its base, whether captured changes cover the way from one to the other,
//! and the replay itself.
//!
//! A target is always a mark: the only positions known to be consistent
//! across shards. `latest` is the newest mark that capture has caught up
//! with on every shard; a time is the newest mark at or before it.

use std::cmp::Ordering;
use std::collections::BTreeMap;

use shard_agent::capture::StreamState;
use shard_agent::engine;
use shard_agent::manifest::{keys, Manifest, Mark, ShardManifest, MANIFEST_MAX};
use shard_agent::position::Position;
use shard_agent::replay::{ReplayError, ReplayOptions, ReplayReport};
use shard_agent::repo::Repository;
use topology::Shard;

use crate::exit::InvalidInput;

/// What `--until` asks for.
#[derive(Debug, Clone)]
pub enum Until {
    Latest,
    Mark(String),
    Time(chrono::DateTime<chrono::Utc>),
}

pub fn parse_until(text: &str) -> Result<Until, String> {
    if text == "latest" {
        return Ok(Until::Latest);
    }
    if let Some(name) = text.strip_prefix("mark:") {
        return Ok(Until::Mark(name.to_string()));
    }
    if let Ok(t) = chrono::DateTime::parse_from_rfc3339(text) {
        return Ok(Until::Time(t.with_timezone(&chrono::Utc)));
    }
    for f in ["%Y-%m-%d %H:%M:%S", "%Y-%m-%dT%H:%M:%S"] {
        if let Ok(t) = chrono::NaiveDateTime::parse_from_str(text, f) {
            return Ok(Until::Time(t.and_utc()));
        }
    }
    Err(format!(
        "`{text}`: expected latest, mark:NAME, or a time (RFC 3339, or YYYY-MM-DD HH:MM:SS in UTC)"
    ))
}

/// Every mark of `cluster`, oldest first.
pub fn list_marks(repo: &dyn Repository, cluster: &str) -> anyhow::Result<Vec<Mark>> {
    let mut out = Vec::new();
    for key in repo.list("marks/")? {
        if !key.ends_with(".json") {
            continue;
        }
        let data = repo.get_at_most(&key, MANIFEST_MAX)?;
        let m = parse_mark(&key, &data)?;
        if m.cluster == cluster {
            out.push(m);
        }
    }
    out.sort_by(|a, b| a.cut.taken_at.cmp(&b.cut.taken_at));
    Ok(out)
}

/// The mark stored at `key`, which must be the one its name gives:
/// `expire` deletes a mark by its name, and restore finds it by it.
fn parse_mark(key: &str, data: &[u8]) -> anyhow::Result<Mark> {
    let m: Mark =
        serde_json::from_slice(data).map_err(|e| anyhow::anyhow!("unreadable mark {key}: {e}"))?;
    if keys::mark(&m.name) != key {
        anyhow::bail!(
            "mark {key} names mark `{}`, stored elsewhere: the repository is damaged or was tampered with",
            m.name
        );
    }
    Ok(m)
}

pub fn find_mark(repo: &dyn Repository, cluster: &str, name: &str) -> anyhow::Result<Mark> {
    match repo.get_at_most(&keys::mark(name), MANIFEST_MAX) {
        Ok(data) => {
            let m = parse_mark(&keys::mark(name), &data)?;
            if m.cluster != cluster {
                return Err(InvalidInput(format!(
                    "mark `{name}` belongs to cluster {}",
                    m.cluster
                ))
                .into());
            }
            Ok(m)
        }
        Err(shard_agent::repo::RepoError::NotFound { .. }) => Err(InvalidInput(format!(
            "no mark `{name}` of cluster {cluster} in {}",
            repo.location()
        ))
        .into()),
        Err(e) => Err(e.into()),
    }
}

/// The capture streams a shard's backup needs replayed.
pub fn streams_of(sm: &ShardManifest) -> Vec<String> {
    engine::driver(sm.engine_kind()).streams_of(&databases(sm))
}

fn at_or_before(a: &Position, b: &Position) -> bool {
    matches!(a.compare(b), Ok(Ordering::Less | Ordering::Equal))
}

/// Why captured changes of `shard` do not lead from `from` to `to`, if so.
pub fn coverage_gap(
    states: &[StreamState],
    shard: &str,
    streams: &[String],
    from: &Position,
    to: &Position,
) -> Option<String> {
    for stream in streams {
        // Any generation that covers the range will do; otherwise the
        // newest one says why not.
        let mut mine: Vec<&StreamState> = states
            .iter()
            .filter(|s| s.shard == shard && &s.stream == stream)
            .collect();
        if mine
            .iter()
            .any(|s| at_or_before(&s.started, from) && at_or_before(to, &s.progress))
        {
            continue;
        }
        mine.sort_by_key(|s| s.generation);
        let Some(s) = mine.last() else {
            return Some(format!(
                "shard {shard}: no capture of {stream} (run `shardcut capture`)"
            ));
        };
        if !at_or_before(&s.started, from) {
            return Some(format!(
                "shard {shard}: capture of {stream} started at {} after {from}",
                s.started
            ));
        }
        if !at_or_before(to, &s.progress) {
            return Some(format!(
                "shard {shard}: capture of {stream} has reached {}, not yet {to} (run `shardcut capture --once`)",
                s.progress
            ));
        }
    }
    None
}

/// Databases a shard's part of a manifest covers.
pub fn databases(m: &ShardManifest) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    for d in m
        .table_list
        .iter()
        .map(|t| &t.database)
        .chain(m.schema.iter().map(|f| &f.database))
    {
        if !out.contains(d) {
            out.push(d.clone());
        }
    }
    out
}

/// Whether capture has reached the mark on every shard.
fn mark_covered(mark: &Mark, states: &[StreamState]) -> bool {
    mark.cut.shards.iter().all(|(name, c)| {
        let Some(sm) = mark.shards.get(name) else {
            return false;
        };
        let streams = streams_of(sm);
        streams.iter().all(|stream| {
            states.iter().any(|s| {
                &s.shard == name && &s.stream == stream && at_or_before(&c.position, &s.progress)
            })
        })
    })
}

/// The mark `until` names, and a sentence on how it was chosen.
pub fn resolve(
    repo: &dyn Repository,
    cluster: &str,
    until: &Until,
    states: &[StreamState],
) -> anyhow::Result<(Mark, String)> {
    match until {
        Until::Mark(name) => Ok((find_mark(repo, cluster, name)?, format!("mark {name}"))),
        Until::Latest => {
            let marks = list_marks(repo, cluster)?;
            let m = marks.into_iter().rev().find(|m| mark_covered(m, states)).ok_or_else(|| {
                InvalidInput(format!(
                    "no mark of cluster {cluster} is covered by captured changes yet; run `shardcut capture --once` (it takes a mark and catches up)"
                ))
            })?;
            let note = format!("latest: mark {} taken at {}", m.name, m.cut.taken_at);
            Ok((m, note))
        }
        Until::Time(t) => {
            let marks = list_marks(repo, cluster)?;
            let m = marks
                .into_iter()
                .rev()
                .find(|m| {
                    chrono::DateTime::parse_from_rfc3339(&m.cut.taken_at)
                        .is_ok_and(|taken| taken.with_timezone(&chrono::Utc) <= *t)
                })
                .ok_or_else(|| {
                    InvalidInput(format!(
                        "no mark of cluster {cluster} at or before {}",
                        t.to_rfc3339()
                    ))
                })?;
            let note = format!(
                "{}: restoring to mark {} taken at {}, the latest consistent point at or before that time",
                t.to_rfc3339(),
                m.name,
                m.cut.taken_at
            );
            Ok((m, note))
        }
    }
}

/// Whether `base` can start a replay to `mark` for `shards`; `Err` says why not.
pub fn base_fits(
    base: &Manifest,
    mark: &Mark,
    shards: &[String],
    states: &[StreamState],
) -> Result<(), String> {
    if let Some(c) = &base.chain {
        return Err(format!(
            "backup {} is incremental (it holds no data); use its full backup {}",
            base.backup_id, c.base
        ));
    }
    for name in shards {
        let (Some(b), Some(mk), Some(sm)) = (
            base.cut.shards.get(name),
            mark.cut.shards.get(name),
            base.shards.get(name),
        ) else {
            return Err(format!(
                "shard {name} is not in both backup {} and mark {}",
                base.backup_id, mark.name
            ));
        };
        if !at_or_before(&b.position, &mk.position) {
            return Err(format!(
                "backup {} is newer than mark {} on shard {name}",
                base.backup_id, mark.name
            ));
        }
        if let Some(gap) = coverage_gap(states, name, &streams_of(sm), &b.position, &mk.position) {
            return Err(gap);
        }
        let range = (&b.position, &mk.position);
        if let Some(gap) = unpublished_gap(states, name, sm, range, &base.backup_id) {
            return Err(gap);
        }
    }
    Ok(())
}

/// Why the captured changes miss some of a base's tables from its cut on:
/// a PostgreSQL table that capture's publication took in only after the
/// cut (one created while capture ran, taken in at its next round), or not
/// at all (without a replica identity). Any generation covering the range
/// without such a table will do. Looks at `sm`'s tables: a backup's
/// summary, as listings keep it, has none, and passes.
fn unpublished_gap(
    states: &[StreamState],
    shard: &str,
    sm: &ShardManifest,
    (from, to): (&Position, &Position),
    backup: &str,
) -> Option<String> {
    let since_cut = format!(", after the cut of backup {backup}: its changes since the cut are not all in the repository; use a backup taken since");
    'streams: for stream in streams_of(sm) {
        let mut why = None;
        let covering = states.iter().filter(|s| {
            s.shard == shard
                && s.stream == stream
                && at_or_before(&s.started, from)
                && at_or_before(to, &s.progress)
        });
        for s in covering {
            let late = sm
                .table_list
                .iter()
                .filter(|t| t.database == stream)
                .find_map(|t| {
                    let q = t.qualified();
                    if s.unpublished.contains(&q) {
                        return Some(format!("table {q} is not captured (it is not in capture's publication: it has no replica identity){since_cut}"));
                    }
                    if s.unlogged.contains(&q) {
                        return Some(format!("table {q} is unlogged or has an unlogged partition: PostgreSQL writes no WAL for its changes, so capture holds none of them since the cut of backup {backup}; make it logged (ALTER TABLE … SET LOGGED, on each unlogged partition) and use a backup taken after capture's next round, or exclude it in the topology"));
                    }
                    match s.published_from.get(&q) {
                        Some(p) if !at_or_before(p, from) => Some(format!(
                            "table {q} is captured only from {p} (it was created while capture ran){since_cut}"
                        )),
                        _ => None,
                    }
                });
            match late {
                None => continue 'streams,
                Some(w) => why = Some(w),
            }
        }
        if let Some(w) = why {
            return Some(format!("shard {shard}: {w}"));
        }
    }
    None
}

/// The shards of `shards` in both `base` and `mark` whose captured
/// changes carry no DDL (PostgreSQL's), with their manifest in each.
fn without_ddl<'a>(
    base: &'a Manifest,
    mark: &'a Mark,
    shards: &'a [String],
) -> impl Iterator<Item = (&'a str, &'a ShardManifest, &'a ShardManifest)> {
    shards.iter().filter_map(|name| {
        let (b, m) = (base.shards.get(name)?, mark.shards.get(name)?);
        (!engine::driver(b.engine_kind()).replay_carries_ddl()).then_some((name.as_str(), b, m))
    })
}

/// An engine whose captured changes carry no table definitions (PostgreSQL
/// logical decoding) cannot replay CREATE, DROP or ALTER TABLE: refuse a
/// mark whose tables differ from the base's, before anything is restored.
pub fn ddl_refusals(base: &Manifest, mark: &Mark, shards: &[String]) -> Vec<String> {
    let mut out = Vec::new();
    for (name, b, m) in without_ddl(base, mark, shards) {
        for t in &m.table_list {
            match b.table_list.iter().find(|x| x.qualified() == t.qualified()) {
                None => out.push(format!(
                    "shard {name}: table {} exists at mark {} but not in backup {}: PostgreSQL logical decoding does not carry CREATE TABLE; restore to an earlier mark or take a new backup",
                    t.qualified(), mark.name, base.backup_id
                )),
                Some(x) => {
                    let a: Vec<&str> = x.columns.iter().map(|c| c.name.as_str()).collect();
                    let c: Vec<&str> = t.columns.iter().map(|c| c.name.as_str()).collect();
                    if a != c {
                        out.push(format!(
                            "shard {name}: table {} has columns ({}) at mark {} but ({}) in backup {}: PostgreSQL logical decoding does not carry ALTER TABLE; restore to an earlier mark or take a new backup",
                            t.qualified(), c.join(", "), mark.name, a.join(", "), base.backup_id
                        ));
                        continue;
                    }
                    // The same names, another type (ALTER COLUMN … TYPE):
                    // replayed into the backup's column, the values fit or
                    // fail, and the restored table is not the source's.
                    let retyped: Vec<String> = x
                        .columns
                        .iter()
                        .zip(&t.columns)
                        .filter(|(old, new)| retyped(&old.data_type, &new.data_type))
                        .map(|(old, new)| {
                            format!("{} {} → {}", new.name, old.data_type, new.data_type)
                        })
                        .collect();
                    if !retyped.is_empty() {
                        out.push(format!(
                            "shard {name}: table {} has column types changed between backup {} and mark {} ({}): PostgreSQL logical decoding does not carry ALTER TABLE; restore to an earlier mark or take a new backup",
                            t.qualified(), base.backup_id, mark.name, retyped.join(", ")
                        ));
                    }
                }
            }
        }
        for t in &b.table_list {
            if !m.table_list.iter().any(|x| x.qualified() == t.qualified()) {
                out.push(format!(
                    "shard {name}: table {} of backup {} is gone at mark {}: PostgreSQL logical decoding does not carry DROP TABLE; restore to an earlier mark or take a new backup",
                    t.qualified(), base.backup_id, mark.name
                ));
            }
        }
    }
    out
}

/// Whether a column's type `before` (as `format_type` named it) is
/// another than `after`: a name qualified on one side only (a
/// `search_path` set on the database or role between the two) is
/// compared without its schema, names qualified on both sides whole.
fn retyped(before: &str, after: &str) -> bool {
    let (b, a) = (unqualified(before), unqualified(after));
    if b.len() != before.len() && a.len() != after.len() {
        before != after
    } else {
        b != a
    }
}

/// A type as `format_type` names it, without the schema it qualifies a
/// type with when the session's `search_path` does not reach it
/// (`public.mood`, `"My App".kind[]`): a `search_path` set on the role or
/// the database between a backup and a mark changes that, not the type.
fn unqualified(ty: &str) -> &str {
    let rest = if let Some(quoted) = ty.strip_prefix('"') {
        // A quoted name ends at a quote not doubled.
        let mut chars = quoted.char_indices().peekable();
        let mut end = None;
        while let Some((i, c)) = chars.next() {
            if c == '"' {
                if chars.peek().map(|&(_, n)| n) == Some('"') {
                    chars.next();
                } else {
                    end = Some(i + 1);
                    break;
                }
            }
        }
        end.map(|e| &quoted[e..])
    } else {
        let e = ty
            .find(|c: char| !(c.is_alphanumeric() || c == '_' || c == '$'))
            .unwrap_or(ty.len());
        Some(&ty[e..])
    };
    match rest.and_then(|r| r.strip_prefix('.')) {
        Some(name) => name,
        None => ty,
    }
}

/// Where the schema a base backup restores differs from the mark's
/// beyond its tables' columns, which [`ddl_refusals`] compares: an index,
/// key, trigger, view, function, type, default or grant added, changed or
/// dropped between them, which a replay of logical decoding cannot carry.
/// The restore keeps the backup's; a line per database and section, for
/// its report (backups and marks made before fingerprints were recorded
/// compare nothing).
pub fn schema_drift(base: &Manifest, mark: &Mark, shards: &[String]) -> Vec<String> {
    let mut out = Vec::new();
    for (name, b, m) in without_ddl(base, mark, shards) {
        let (then, now) = (&b.schema_fingerprints, &m.schema_fingerprints);
        // A database without tables made or dropped in between (one with
        // tables is refused by `ddl_refusals`); only when both sides
        // recorded fingerprints.
        let databases = |prints: &BTreeMap<String, String>| -> std::collections::BTreeSet<String> {
            prints
                .keys()
                .filter_map(|k| k.rsplit_once('/').map(|(db, _)| db.to_string()))
                .collect()
        };
        if !then.is_empty() && !now.is_empty() {
            let (before, after) = (databases(then), databases(now));
            for db in after.difference(&before) {
                out.push(format!(
                    "{name}: database {db} exists at mark {} but not in backup {}: the restore does not create it, since PostgreSQL logical decoding does not carry CREATE DATABASE",
                    mark.name, base.backup_id
                ));
            }
            for db in before.difference(&after) {
                out.push(format!(
                    "{name}: database {db} of backup {} is gone at mark {}: the restore creates it as the backup had it, since PostgreSQL logical decoding does not carry DROP DATABASE",
                    base.backup_id, mark.name
                ));
            }
        }
        for (key, print) in now {
            let Some(before) = then.get(key) else {
                continue;
            };
            // Written by pg_dump of another major version, or of one not
            // known: not compared.
            let version = |p: &str| p.split_once(':').map(|(v, _)| v.to_string());
            if before == print
                || version(before) != version(print)
                || version(print).as_deref() == Some("?")
            {
                continue;
            }
            let (db, section) = key.rsplit_once('/').unwrap_or((key.as_str(), ""));
            let what = match section {
                "pre-data" => "types, functions, views, defaults, checks or grants",
                "post-data" => "indexes, keys, triggers, rules or policies",
                _ => "schema",
            };
            out.push(format!(
                "{name}: database {db}: its {what} ({section}) changed between backup {} and mark {}; the restore has the backup's, since PostgreSQL logical decoding does not carry DDL: run the change again on the target, or restore from a backup taken after it",
                base.backup_id, mark.name
            ));
        }
    }
    out
}

/// A mark a backup can be restored to.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Reach {
    pub mark: String,
    pub taken_at: String,
}

/// For each full backup of `backups`, the newest mark captured changes
/// bring it to, through whichever generation covers it: a backup whose
/// generation was removed reaches as far as that generation got. Backups
/// no mark is reachable from are left out. `whole` reads a backup whole,
/// by its ID, when its summary is not enough.
pub fn reach<'a>(
    repo: &dyn Repository,
    cluster: &str,
    backups: impl Iterator<Item = &'a Manifest>,
    whole: impl Fn(&str) -> Option<Manifest>,
) -> anyhow::Result<BTreeMap<String, Reach>> {
    let mut out = BTreeMap::new();
    let backups: Vec<&Manifest> = backups.filter(|m| m.chain.is_none()).collect();
    if backups.is_empty() {
        return Ok(out);
    }
    let states = StreamState::all_generations(repo)?;
    if states.is_empty() {
        return Ok(out);
    }
    let marks = list_marks(repo, cluster)?;
    for summary in backups {
        // Listed backups are summaries, without their tables: one whose
        // cut came before capture took a table in (or while one is left
        // out) is read whole, one at a time, since whether it holds that
        // table decides.
        let whole = took_tables_in_after(summary, &states)
            .then(|| whole(&summary.backup_id))
            .flatten();
        let base = whole.as_ref().unwrap_or(summary);
        let shards: Vec<String> = base.shards.keys().cloned().collect();
        if let Some(m) = marks
            .iter()
            .rev()
            .find(|m| base_fits(base, m, &shards, &states).is_ok())
        {
            out.insert(
                base.backup_id.clone(),
                Reach {
                    mark: m.name.clone(),
                    taken_at: m.cut.taken_at.clone(),
                },
            );
        }
    }
    Ok(out)
}

/// Whether capture of a shard of `base` took a table in after its cut, or
/// leaves one out: [`unpublished_gap`] then needs its tables.
fn took_tables_in_after(base: &Manifest, states: &[StreamState]) -> bool {
    base.cut.shards.iter().any(|(shard, cut)| {
        states.iter().filter(|s| &s.shard == shard).any(|s| {
            !s.unpublished.is_empty()
                || !s.unlogged.is_empty()
                || s.published_from
                    .values()
                    .any(|p| !at_or_before(p, &cut.position))
        })
    })
}

/// The newest backup of `cluster` that can start a replay to `mark`.
pub fn choose_base(
    backups: Vec<Manifest>,
    mark: &Mark,
    shards: &[String],
    states: &[StreamState],
) -> anyhow::Result<Manifest> {
    let mut reasons = Vec::new();
    // Only a full backup holds data to start from.
    for b in backups.into_iter().rev().filter(|b| b.chain.is_none()) {
        match base_fits(&b, mark, shards, states) {
            Ok(()) => return Ok(b),
            Err(why) => reasons.push(format!("{}: {why}", b.backup_id)),
        }
    }
    Err(InvalidInput(format!(
        "no backup can be brought to mark {} with the captured changes ({})",
        mark.name,
        if reasons.is_empty() {
            "there is no backup".to_string()
        } else {
            reasons.join("; ")
        }
    ))
    .into())
}

/// Replays one shard's captured changes from the base cut to the mark into
/// its target.
pub async fn replay_shard(
    repo: &dyn Repository,
    source: &str,
    sm: &ShardManifest,
    target: &Shard,
    (from, to): (&Position, &Position),
    at: Option<&ShardManifest>,
    options: ReplayOptions,
) -> Result<ReplayReport, ReplayError> {
    let driver = crate::agent::driver(target)?;
    let mut total = ReplayReport::default();
    // Only what the base backup selected: the rest of a server's binlog
    // has nowhere to land on the target.
    let options = ReplayOptions {
        scope: sm.selection.clone(),
        ..options
    };
    for stream in streams_of(sm) {
        let r = driver
            .replay(repo, source, &stream, target, (from, to), options.clone())
            .await?;
        total.segments += r.segments;
        total.transactions += r.transactions;
        total.statements += r.statements;
        total.notes.extend(r.notes);
        total.reordered += r.reordered;
    }
    if let Some(at) = at {
        // Only the databases this restore brought back: the mark is read
        // from the repository, and a sequence it names elsewhere (another
        // database of the target server) is not this restore's to move.
        let restored = databases(sm);
        let mut at = at.clone();
        at.sequences.retain(|s| restored.contains(&s.database));
        driver.finish_replay(target, &at).await?;
    }
    Ok(total)
}

/// Per shard: (base position, mark position).
pub fn ranges(base: &Manifest, mark: &Mark) -> BTreeMap<String, (Position, Position)> {
    base.cut
        .shards
        .iter()
        .filter_map(|(name, b)| {
            let m = mark.cut.shards.get(name)?;
            Some((name.clone(), (b.position.clone(), m.position.clone())))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use shard_agent::manifest::{BackupKind, BackupStatus, Cut, Manifest, Mark, ShardManifest};
    use topology::Engine;

    use super::{retyped, schema_drift, unqualified};

    /// A PostgreSQL shard's backup and mark holding these fingerprints.
    fn pair(then: &[(&str, &str)], now: &[(&str, &str)]) -> (Manifest, Mark) {
        let shard = |prints: &[(&str, &str)]| {
            let sm = ShardManifest {
                engine: Some(Engine::Postgres),
                schema_fingerprints: prints
                    .iter()
                    .map(|(k, v)| (k.to_string(), v.to_string()))
                    .collect(),
                ..Default::default()
            };
            BTreeMap::from([("pg-0".to_string(), sm)])
        };
        let cut = Cut {
            write_block_ms: 0,
            attempts: 1,
            taken_at: String::new(),
            shards: BTreeMap::new(),
        };
        let base = Manifest {
            format: 1,
            backup_id: "B".into(),
            cluster: "c".into(),
            topology_digest: String::new(),
            tool_version: String::new(),
            status: BackupStatus::Complete,
            started_at: String::new(),
            finished_at: String::new(),
            cut: cut.clone(),
            shards: shard(then),
            kind: BackupKind::Full,
            chain: None,
        };
        let mark = Mark {
            format: 1,
            name: "M".into(),
            cluster: "c".into(),
            topology_digest: String::new(),
            tool_version: String::new(),
            cut,
            hashed: true,
            shards: shard(now),
        };
        (base, mark)
    }

    #[test]
    fn a_schema_changed_since_the_base_is_named_by_database_and_section() {
        let drift = |then: &[(&str, &str)], now: &[(&str, &str)]| {
            let (base, mark) = pair(then, now);
            schema_drift(&base, &mark, &["pg-0".to_string()])
        };
        let same = [("app/pre-data", "17:aa"), ("app/post-data", "17:bb")];
        assert!(drift(&same, &same).is_empty());
        let indexed = [("app/pre-data", "17:aa"), ("app/post-data", "17:cc")];
        let notes = drift(&same, &indexed);
        assert_eq!(notes.len(), 1, "{notes:?}");
        assert!(
            notes[0].starts_with("pg-0: database app: its indexes, keys, triggers, rules or policies (post-data) changed between backup B and mark M"),
            "{notes:?}"
        );
        // Another pg_dump, or one of no known version: not compared.
        let newer = [("app/pre-data", "18:aa"), ("app/post-data", "18:cc")];
        assert!(drift(&same, &newer).is_empty());
        let unknown = [("app/pre-data", "?:aa"), ("app/post-data", "?:cc")];
        assert!(drift(&unknown, &unknown.map(|(k, _)| (k, "?:dd"))).is_empty());
        // A database without tables made or dropped in between.
        let more = [
            &same[..],
            &[("extra/pre-data", "17:ee"), ("extra/post-data", "17:ff")],
        ]
        .concat();
        let made = drift(&same, &more);
        assert!(
            made.len() == 1
                && made[0].contains("database extra exists at mark M but not in backup B"),
            "{made:?}"
        );
        let dropped = drift(&more, &same);
        assert!(
            dropped.len() == 1
                && dropped[0].contains("database extra of backup B is gone at mark M"),
            "{dropped:?}"
        );
        // A backup from before fingerprints: nothing said.
        assert!(drift(&[], &more).is_empty());
    }

    #[test]
    fn a_type_qualified_on_both_sides_is_compared_whole() {
        assert!(!retyped("mood", "public.mood"));
        assert!(!retyped("public.mood", "mood"));
        assert!(!retyped("public.mood", "public.mood"));
        assert!(retyped("a.status", "b.status"));
        assert!(retyped("integer", "bigint"));
        assert!(retyped("mood", "public.feeling"));
    }

    #[test]
    fn a_type_is_compared_without_the_schema_search_path_made_it_show() {
        assert_eq!(unqualified("public.mood"), "mood");
        assert_eq!(unqualified("public.mood[]"), "mood[]");
        assert_eq!(
            unqualified("public.geometry(Point,4326)"),
            "geometry(Point,4326)"
        );
        assert_eq!(unqualified("\"My App\".\"Kind\"[]"), "\"Kind\"[]");
        assert_eq!(unqualified("\"a\"\"b\".t"), "t");
        for plain in [
            "character varying(8)",
            "integer[]",
            "numeric(10,2)",
            "double precision",
            "timestamp(6) with time zone",
            "\"unterminated",
            "\"Kind\"",
        ] {
            assert_eq!(unqualified(plain), plain);
        }
    }
}
