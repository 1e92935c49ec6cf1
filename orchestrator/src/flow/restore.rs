//! Restore and drill: a backup (all shards, or some) restored into the
//! servers of a target topology, brought to a mark by replaying captured
//! changes if asked, then verified by reading the target back and scored.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use shard_agent::capture::StreamState;
use shard_agent::manifest::{Manifest, Mark};
use shard_agent::replay::ReplayOptions;
use shard_agent::repo::Repository;
use shard_agent::restore::{RestoreOptions, TableReady};
use tokio::task::JoinSet;
use topology::{Shard, Topology};

use super::steps::rpo_seconds;
use super::{find_backup, list_backups, open_repository, Observer};
use crate::exit::{self, InvalidInput};
use crate::pitr::{self, Until};
use crate::quality::{score, Quality, TableResult};
use crate::readback::Verifier;
use crate::rto::{self, ReplayRate};
use crate::selection::{select, Request};

/// What to restore where.
pub struct Plan<'a> {
    pub source: &'a Path,
    /// Read from this replica instead of the main repository.
    pub repository: Option<&'a str>,
    pub target: &'a Path,
    pub backup: &'a str,
    /// Empty: every shard of the backup.
    pub shards: Vec<String>,
    /// Source shard → target shard, for shards whose names differ.
    pub map: Vec<(String, String)>,
    /// Without a map entry or a same-named target shard, use the target's
    /// only shard of the same engine (drills into a scratch server).
    pub auto_map: bool,
    /// Replay captured changes up to this point after restoring the base.
    pub until: Option<Until>,
    pub overwrite: bool,
    /// Log the restore's writes in a MySQL/MariaDB target's binary log.
    pub binlog: bool,
    /// Test only: wait between the restore and its verification.
    pub pause_before_verify: Option<Duration>,
    /// Which databases and tables; empty: all.
    pub select: Request,
}

/// Per source shard, the qualified names of the tables to restore; `None`:
/// all of them.
type Selection = BTreeMap<String, Option<Vec<String>>>;

/// A restore and its verification.
pub struct Outcome {
    /// What was expected on the target: the backup's selected tables, or
    /// the mark's state after a point-in-time restore.
    pub m: Manifest,
    pub tables: Vec<TableResult>,
    pub q: Quality,
    pub per_shard: BTreeMap<String, Quality>,
    /// Seconds from the first write to the end of verification.
    pub rto: f64,
    pub rpo: f64,
    /// One line per shard whose restore, replay or read-back failed.
    pub failures: Vec<String>,
    /// Per shard whose captured changes were replayed: what and how fast.
    pub replays: Vec<ReplayRate>,
    /// What the shards' restores said the DBA should know, each line
    /// beginning with its shard.
    pub notes: Vec<String>,
}

/// Restores what `plan` asks for into its target, replays captured
/// changes to a mark if asked, then reads the target back and scores it.
/// A failed restore is reported with what it left, never as a success.
pub async fn restore_verified(plan: &Plan<'_>, observer: &dyn Observer) -> anyhow::Result<Outcome> {
    let source = super::copy::choose_repository(Topology::load(plan.source)?, plan.repository)?;
    let target = Topology::load(plan.target)?;
    let repo = open_repository(&source)?;
    let (m, mark, rpo) = resolve(plan, &repo, &source, observer).await?;
    let (pairs, selection) = select_scope(plan, &m, &source, &target)?;
    let shards: Vec<String> = pairs.iter().map(|(s, _)| s.clone()).collect();
    let opts_for = |name: &str, dst: &Shard| RestoreOptions {
        repo: repo.clone(),
        overwrite: plan.overwrite,
        binlog: plan.binlog,
        parallelism: dst.parallelism,
        tables: selection.get(name).cloned().flatten(),
        ready: None,
        bundles: Default::default(),
    };
    // What refuses the backup or the target is the user's to change (exit
    // 2); a target or an agent out of reach is a failure (exit 1).
    let (mut refusals, mut failed) = (Vec::new(), false);
    for (name, dst) in &pairs {
        let checked = match crate::agent::driver(dst) {
            Ok(driver) => {
                driver
                    .check_target(&m.shards[name], dst, &opts_for(name, dst))
                    .await
            }
            Err(e) => Err(e),
        };
        if let Err(e) = checked {
            failed |= !e.is_refusal();
            refusals.push(exit::one_line(&anyhow::Error::new(e)));
        }
    }
    if failed {
        anyhow::bail!("{}", refusals.join("; "));
    }
    if !refusals.is_empty() {
        return Err(InvalidInput(refusals.join("; ")).into());
    }

    let in_scope = expected_state(&m, &selection, mark.as_ref());
    // Verification reads the target whatever happened, so a failed restore
    // is reported with what it left, never as a success. A table is read
    // back as soon as its restore announces it final, while other tables
    // still load; not when changes are replayed after the load (the
    // tables change again) or a test pauses before verification.
    let mut verifier = Verifier::new(&in_scope, &pairs);
    let early = mark.is_none() && plan.pause_before_verify.is_none();

    let started = Instant::now();
    let (restored, mut failures, mut notes) =
        run_restores(&m, &pairs, &opts_for, &mut verifier, early).await;
    let mut replays = Vec::new();
    if let Some(mark) = &mark {
        for drift in pitr::schema_drift(&m, mark, &shards) {
            tracing::warn!("{drift}");
            notes.push(drift);
        }
        let options = ReplayOptions {
            binlog: plan.binlog,
            ..Default::default()
        };
        let (done, failed) = replay_all(&repo, &m, mark, &pairs, &restored, options).await;
        failures.extend(failed);
        for rate in &done {
            // The measurement is for estimates only: a repository that
            // refuses it does not fail the restore.
            if let Err(e) = rto::record(repo.as_ref(), rate) {
                tracing::warn!("recording the replay rate of {}: {e}", rate.shard);
            }
        }
        replays = done;
    }
    if let Some(pause) = plan.pause_before_verify {
        observer.note(&format!(
            "restore: done; pausing {} ms before verification (test hook)",
            pause.as_millis()
        ));
        tokio::time::sleep(pause).await;
    }
    let (reading, early_reads) = (Instant::now(), verifier.started_early());
    let (tables, available) = verifier.finish().await;
    tracing::info!(
        "verification read back {} table(s), {early_reads} of them while the restore ran; {:.2} s after the restore",
        tables.len(),
        reading.elapsed().as_secs_f64()
    );
    let rto = started.elapsed().as_secs_f64();
    let (q, per_shard) = score(&tables, &shards, &available);
    for s in shards.iter().filter(|s| !available.contains(s)) {
        failures.push(format!(
            "{s}: the target did not answer reads on every restored table (unavailable)"
        ));
    }
    Ok(Outcome {
        m: if mark.is_some() { in_scope } else { m },
        tables,
        q,
        per_shard,
        rto,
        rpo,
        failures,
        replays,
        notes,
    })
}

/// The backup to restore and, for a point-in-time restore, the mark to
/// bring it to (an incremental backup is its full base brought to its
/// mark); with the RPO that follows.
async fn resolve(
    plan: &Plan<'_>,
    repo: &Arc<dyn Repository>,
    source: &Topology,
    observer: &dyn Observer,
) -> anyhow::Result<(Manifest, Option<Mark>, f64)> {
    let (cluster, mut id, r) = (
        source.cluster.clone(),
        plan.backup.to_string(),
        repo.clone(),
    );
    // An incremental backup restores as its full base brought to its mark.
    let mut until = plan.until.clone();
    if until.is_none() {
        let found = find_backup(r.as_ref(), &cluster, &id)?;
        if let Some(chain) = &found.chain {
            observer.note(&format!(
                "shardcut: backup {} is incremental: restoring its full backup {} and replaying to its mark {}",
                found.backup_id, chain.base, chain.mark
            ));
            until = Some(Until::Mark(chain.mark.clone()));
            id = chain.base.clone();
        }
    }
    let (m, mark) = match &until {
        None => (
            tokio::task::spawn_blocking(move || find_backup(r.as_ref(), &cluster, &id)).await??,
            None,
        ),
        Some(until) => {
            if !plan.select.databases.is_empty() || !plan.select.tables.is_empty() {
                return Err(InvalidInput(
                    "--until restores whole shards; it cannot be combined with --database or --table".into(),
                )
                .into());
            }
            let (base, mark, note) = point_in_time(plan, r.as_ref(), &cluster, &id, until)?;
            observer.note(&format!(
                "shardcut: until {note}; base backup {}",
                base.backup_id
            ));
            (base, Some(mark))
        }
    };
    let rpo = match &mark {
        Some(mk) => rpo_seconds(&Manifest {
            cut: mk.cut.clone(),
            ..m.clone()
        }),
        None => rpo_seconds(&m),
    };
    Ok((m, mark, rpo))
}

/// The (source, target) shard pairs to restore and each one's selected
/// tables (`None`: all); shards with nothing selected drop out.
fn select_scope(
    plan: &Plan<'_>,
    m: &Manifest,
    source: &Topology,
    target: &Topology,
) -> anyhow::Result<(Vec<(String, Shard)>, Selection)> {
    let mut pairs = scope(plan, m, source, target)?;
    // The tables each shard restores; shards with nothing selected drop out.
    let mut selection = BTreeMap::new();
    let mut problems = Vec::new();
    for (name, _) in &pairs {
        match select(name, &m.shards[name], &plan.select) {
            Ok(s) => {
                selection.insert(name.clone(), s);
            }
            Err(e) => problems.push(e),
        }
    }
    if !problems.is_empty() {
        return Err(InvalidInput(problems.join("; ")).into());
    }
    pairs.retain(|(name, _)| !matches!(selection.get(name), Some(Some(list)) if list.is_empty()));
    if pairs.is_empty() {
        return Err(InvalidInput(format!(
            "no table of backup {} matches --database {:?} / --table {:?}",
            m.backup_id, plan.select.databases, plan.select.tables
        ))
        .into());
    }
    Ok((pairs, selection))
}

/// What the target must hold afterwards: the selected tables of each
/// shard, or at a mark the mark's tables, row counts and content hashes
/// (read from the source under the mark's block).
fn expected_state(m: &Manifest, selection: &Selection, mark: Option<&Mark>) -> Manifest {
    let mut in_scope = m.clone();
    for (name, shard) in in_scope.shards.iter_mut() {
        if let Some(Some(list)) = selection.get(name) {
            shard.table_list.retain(|t| list.contains(&t.qualified()));
        }
    }
    if let Some(mark) = mark {
        for (name, shard) in in_scope.shards.iter_mut() {
            if let Some(at_mark) = mark.shards.get(name) {
                shard.table_list = at_mark.table_list.clone();
            }
        }
        in_scope.cut = mark.cut.clone();
        in_scope.backup_id = format!("{} + changes to mark {}", m.backup_id, mark.name);
    }
    in_scope
}

/// Restores every pair at once, handing each table the restore announces
/// final to the verifier; returns the shards restored, one line per shard
/// that failed, and the restores' notes.
async fn run_restores(
    m: &Manifest,
    pairs: &[(String, Shard)],
    opts_for: &(dyn Fn(&str, &Shard) -> RestoreOptions + Sync),
    verifier: &mut Verifier,
    early: bool,
) -> (Vec<String>, Vec<String>, Vec<String>) {
    let (ready_tx, mut ready_rx) = tokio::sync::mpsc::unbounded_channel();
    let mut tasks = JoinSet::new();
    for (name, dst) in pairs {
        let (src, dst) = (m.shards[name].clone(), dst.clone());
        let mut opts = opts_for(name, &dst);
        opts.ready = early.then(|| TableReady {
            shard: name.clone(),
            tx: ready_tx.clone(),
        });
        let name = name.clone();
        tasks.spawn(async move {
            let began = Instant::now();
            let r = match crate::agent::driver(&dst) {
                Ok(driver) => driver.restore(&src, &dst, &opts).await,
                Err(e) => Err(e),
            };
            (name, r.map(|done| (done, began.elapsed())))
        });
    }
    drop(ready_tx);
    let mut failures = Vec::new();
    let mut restored = Vec::new();
    let mut notes = Vec::new();
    loop {
        let joined = tokio::select! {
            Some((name, table)) = ready_rx.recv() => {
                verifier.start(&name, &table);
                continue;
            }
            joined = tasks.join_next() => joined,
        };
        let Some(joined) = joined else {
            break;
        };
        match joined {
            Ok((name, Ok((done, took)))) => {
                tracing::info!(
                    "{name}: restored {} database(s), {} table(s), {} chunk(s) in {:.2} s",
                    done.databases.len(),
                    done.tables,
                    done.chunks,
                    took.as_secs_f64()
                );
                for note in &done.notes {
                    tracing::warn!("{name}: {note}");
                    notes.push(format!("{name}: {note}"));
                }
                restored.push(name);
            }
            Ok((name, Err(e))) => failures.push(exit::shard_line(&name, &anyhow::Error::new(e))),
            Err(e) => failures.push(format!("a restore task panicked: {e}")),
        }
    }
    (restored, failures, notes)
}

/// The (source shard, target shard) pairs to restore, after refusing what
/// cannot be done safely.
fn scope(
    plan: &Plan<'_>,
    m: &Manifest,
    source: &Topology,
    target: &Topology,
) -> anyhow::Result<Vec<(String, Shard)>> {
    let shards: Vec<String> = if plan.shards.is_empty() {
        m.shards.keys().cloned().collect()
    } else {
        plan.shards.clone()
    };
    let mut problems = Vec::new();
    let mut pairs = Vec::new();
    for name in &shards {
        let Some(src) = m.shards.get(name) else {
            problems.push(format!("backup {} has no shard `{name}`", m.backup_id));
            continue;
        };
        let mapped = plan
            .map
            .iter()
            .find(|(s, _)| s == name)
            .map(|(_, d)| d.as_str());
        let dst = match mapped {
            Some(d) => target.shard(d),
            None => target.shard(name).or_else(|| {
                let same_engine: Vec<&Shard> = target
                    .shards
                    .iter()
                    .filter(|t| t.engine == src.engine_kind())
                    .collect();
                (plan.auto_map && same_engine.len() == 1).then(|| same_engine[0])
            }),
        };
        let Some(dst) = dst else {
            problems.push(format!(
                "target topology {} has no shard `{}` (map another with --map {name}=TARGET_SHARD)",
                plan.target.display(),
                mapped.unwrap_or(name)
            ));
            continue;
        };
        if dst.name != *name {
            tracing::info!("restoring shard {name} into target shard {}", dst.name);
        }
        if src.engine_kind() != dst.engine {
            problems.push(format!(
                "shard `{name}` is {:?} in the backup but {} in the target",
                src.engine, dst.engine
            ));
        }
        for s in &source.shards {
            if s.endpoint.host == dst.endpoint.host && s.endpoint.port == dst.endpoint.port {
                problems.push(format!(
                    "target shard `{}` ({}:{}) is the server of source shard `{}`: restoring there would overwrite the source; restore into another server",
                    dst.name, dst.endpoint.host, dst.endpoint.port, s.name
                ));
            }
        }
        if pairs
            .iter()
            .any(|(_, d): &(String, Shard)| d.name == dst.name)
        {
            problems.push(format!(
                "two source shards map to target shard `{}`",
                dst.name
            ));
        }
        pairs.push((name.clone(), dst.clone()));
    }
    if problems.is_empty() {
        Ok(pairs)
    } else {
        Err(InvalidInput(problems.join("; ")).into())
    }
}

/// The base backup and mark of a point-in-time restore, refused before
/// anything is touched if captured changes do not lead there.
fn point_in_time(
    plan: &Plan<'_>,
    repo: &dyn Repository,
    cluster: &str,
    id: &str,
    until: &Until,
) -> anyhow::Result<(Manifest, Mark, String)> {
    // Current and retired capture generations: a backup an older
    // generation covers can still be brought forward with it.
    let states = StreamState::all_generations(repo)?;
    let (mark, note) = pitr::resolve(repo, cluster, until, &states)?;
    let shards: Vec<String> = if plan.shards.is_empty() {
        mark.shards.keys().cloned().collect()
    } else {
        plan.shards.clone()
    };
    let base = if id == "latest" {
        let backups = list_backups(repo, cluster)?
            .into_iter()
            .filter_map(|l| l.manifest.ok())
            .collect();
        let chosen = pitr::choose_base(backups, &mark, &shards, &states)?;
        // Listed manifests are summaries: the base is read whole, and
        // checked again with its tables.
        let b = find_backup(repo, cluster, &chosen.backup_id)?;
        pitr::base_fits(&b, &mark, &shards, &states).map_err(InvalidInput)?;
        b
    } else {
        let b = find_backup(repo, cluster, id)?;
        pitr::base_fits(&b, &mark, &shards, &states).map_err(InvalidInput)?;
        b
    };
    let refusals = pitr::ddl_refusals(&base, &mark, &shards);
    if !refusals.is_empty() {
        return Err(InvalidInput(refusals.join("; ")).into());
    }
    // A whole restore brings every shard of the base backup: one the mark
    // does not cover would stay as of the backup, under a report of the
    // mark.
    if plan.shards.is_empty() {
        let uncovered: Vec<&str> = base
            .shards
            .keys()
            .filter(|s| !mark.shards.contains_key(*s))
            .map(String::as_str)
            .collect();
        if !uncovered.is_empty() {
            return Err(InvalidInput(format!(
                "backup {} holds shard(s) {} that mark `{}` does not cover: restored, they would stay as they were at the backup, not at the mark; name the shards to restore with --shard ({})",
                base.backup_id,
                uncovered.join(", "),
                mark.name,
                mark.shards.keys().map(String::as_str).collect::<Vec<_>>().join(", ")
            ))
            .into());
        }
    }
    Ok((base, mark, note))
}

/// Replays captured changes into every shard whose base restore succeeded;
/// returns what each shard's replay did and how fast, and one failure line
/// per shard that failed.
async fn replay_all(
    repo: &Arc<dyn Repository>,
    base: &Manifest,
    mark: &Mark,
    pairs: &[(String, Shard)],
    restored: &[String],
    options: ReplayOptions,
) -> (Vec<ReplayRate>, Vec<String>) {
    let ranges = pitr::ranges(base, mark);
    let mut tasks = JoinSet::new();
    for (name, dst) in pairs.iter().filter(|(n, _)| restored.contains(n)) {
        let (Some((from, to)), Some(sm)) =
            (ranges.get(name).cloned(), base.shards.get(name).cloned())
        else {
            continue;
        };
        let (repo, dst, name) = (repo.clone(), dst.clone(), name.clone());
        let at = mark.shards.get(&name).cloned();
        let options = options.clone();
        tasks.spawn(async move {
            let started = Instant::now();
            let r = pitr::replay_shard(
                repo.as_ref(),
                &name,
                &sm,
                &dst,
                (&from, &to),
                at.as_ref(),
                options,
            )
            .await;
            (name, r, started.elapsed().as_secs_f64())
        });
    }
    let (mut done, mut failures) = (Vec::new(), Vec::new());
    while let Some(joined) = tasks.join_next().await {
        match joined {
            Ok((name, Ok(r), seconds)) => {
                for note in &r.notes {
                    tracing::warn!("{name}: {note}");
                }
                let ordered = match r.reordered {
                    0 => String::new(),
                    n => format!(" ({n} single-row change(s) applied in key order)"),
                };
                tracing::info!(
                    "{name}: replayed {} transaction(s) from {} segment(s) in {seconds:.2} s{ordered}",
                    r.transactions,
                    r.segments
                );
                done.push(ReplayRate {
                    shard: name,
                    transactions: r.transactions,
                    statements: r.statements,
                    seconds,
                    measured_at: chrono::Utc::now().to_rfc3339(),
                    notes: r.notes,
                    reordered: r.reordered,
                });
            }
            Ok((name, Err(e), _)) => failures.push(format!(
                "{name}: replay: {}",
                exit::one_line(&anyhow::Error::new(e))
            )),
            Err(e) => failures.push(format!("a replay task panicked: {e}")),
        }
    }
    done.sort_by(|a, b| a.shard.cmp(&b.shard));
    (done, failures)
}
