//! Verification of a restore by an independent read of the target: every
//! table of the backup is read back from the target servers and its row
//! count and content hash recomputed, never taken from the restore's own
//! counters.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;
use std::time::Duration;

use shard_agent::client_choice::ReaderKind;
use shard_agent::manifest::{Manifest, TableManifest};
use shard_agent::AgentError;
use tokio::sync::Semaphore;
use tokio::task::JoinSet;
use topology::Shard;

use crate::agent::ShardDriver;
use crate::quality::TableResult;

/// How long a read of one table may take before its shard counts as unavailable.
const READ_TIMEOUT: Duration = Duration::from_secs(300);

/// Whether the server itself answered with an error (a missing table or
/// database): the shard is available, the table is not complete. Anything
/// else (refused connection, timeout, broken socket) makes it unavailable.
fn server_answered(e: &AgentError) -> bool {
    let db = match e {
        AgentError::Connect { source, .. } | AgentError::Query { source, .. } => source,
        _ => return false,
    };
    db.is_server_error()
}

/// Reads back every table of the backup's shards from the target shard
/// each maps to (`(source name, target shard)`). Returns the tables and the
/// source shard names whose target answered every read.
pub async fn read_back(m: &Manifest, pairs: &[(String, Shard)]) -> (Vec<TableResult>, Vec<String>) {
    Verifier::new(m, pairs).finish().await
}

/// One shard's part of a verification.
struct ShardReads {
    target: Shard,
    /// Tables of one shard are read `parallelism` at a time: the
    /// verification of a big shard should not take longer than its load.
    permits: Arc<Semaphore>,
    /// Tables not started yet, by qualified name.
    waiting: BTreeMap<String, TableManifest>,
    /// The shard's driver, made once (for a remote agent it holds the
    /// HTTPS client, so every table's read reuses its connections).
    driver: Option<Arc<ShardDriver>>,
}

/// Reads tables back as they become ready: [`Verifier::start`] while a
/// restore still loads other tables, [`Verifier::finish`] for all the
/// rest. Every table of the manifest's shards is read exactly once.
pub struct Verifier {
    shards: BTreeMap<String, ShardReads>,
    tasks: JoinSet<(String, TableResult, bool)>,
    /// What each read task reads, to report a read that panicked.
    reading: HashMap<tokio::task::Id, (String, TableManifest)>,
    started_early: usize,
}

impl Verifier {
    pub fn new(m: &Manifest, pairs: &[(String, Shard)]) -> Self {
        let shards = pairs
            .iter()
            .filter_map(|(name, shard)| {
                let source = m.shards.get(name)?;
                let reads = ShardReads {
                    target: shard.clone(),
                    permits: Arc::new(Semaphore::new(shard.parallelism.max(1))),
                    waiting: source
                        .table_list
                        .iter()
                        .map(|t| (t.qualified(), t.clone()))
                        .collect(),
                    driver: None,
                };
                Some((name.clone(), reads))
            })
            .collect();
        Verifier {
            shards,
            tasks: JoinSet::new(),
            reading: HashMap::new(),
            started_early: 0,
        }
    }

    /// Starts reading back `table` (qualified) of source shard `name`; a
    /// table not in the manifest's scope, or already started, is ignored.
    pub fn start(&mut self, name: &str, table: &str) {
        if self.spawn(name, table) {
            self.started_early += 1;
        }
    }

    /// How many tables [`Verifier::start`] began.
    pub fn started_early(&self) -> usize {
        self.started_early
    }

    fn spawn(&mut self, name: &str, table: &str) -> bool {
        let Some(reads) = self.shards.get_mut(name) else {
            return false;
        };
        let Some(t) = reads.waiting.remove(table) else {
            return false;
        };
        if reads.driver.is_none() {
            // A driver that cannot be made is reported by each read.
            reads.driver = crate::agent::driver(&reads.target).ok().map(Arc::new);
        }
        let (shard, permits, name, driver) = (
            reads.target.clone(),
            reads.permits.clone(),
            name.to_string(),
            reads.driver.clone(),
        );
        let what = (name.clone(), t.clone());
        let handle = self.tasks.spawn(async move {
            // The semaphore is never closed: a permit always comes.
            let _permit = permits.acquire_owned().await.ok();
            let (result, answered) = check_table(driver, &shard, &name, &t).await;
            (name, result, answered)
        });
        self.reading.insert(handle.id(), what);
        true
    }

    /// Reads every table not started yet and waits for all reads. Returns
    /// the tables and the source shard names whose target answered every
    /// read.
    pub async fn finish(mut self) -> (Vec<TableResult>, Vec<String>) {
        let left: Vec<(String, String)> = self
            .shards
            .iter()
            .flat_map(|(name, r)| r.waiting.keys().map(move |t| (name.clone(), t.clone())))
            .collect();
        for (name, table) in left {
            self.spawn(&name, &table);
        }
        let mut tables = Vec::new();
        let mut unanswered = BTreeSet::new();
        while let Some(joined) = self.tasks.join_next_with_id().await {
            match joined {
                Ok((id, (name, result, answered))) => {
                    self.reading.remove(&id);
                    if !answered {
                        unanswered.insert(name);
                    }
                    tables.push(result);
                }
                // A read that panicked found nothing and its shard did not
                // answer it.
                Err(e) => {
                    tracing::warn!("a read-back task failed: {e}");
                    if let Some((name, t)) = self.reading.remove(&e.id()) {
                        tables.push(TableResult {
                            shard: name.clone(),
                            table: t.qualified(),
                            rows_expected: t.rows,
                            rows_found: 0,
                            hash_ok: false,
                        });
                        unanswered.insert(name);
                    }
                }
            }
        }
        tables.sort_by(|a, b| (&a.shard, &a.table).cmp(&(&b.shard, &b.table)));
        let available = self
            .shards
            .into_keys()
            .filter(|name| !unanswered.contains(name))
            .collect();
        (tables, available)
    }
}

/// Reads one table back; returns its result and whether the server answered.
async fn check_table(
    driver: Option<Arc<ShardDriver>>,
    shard: &Shard,
    name: &str,
    t: &TableManifest,
) -> (TableResult, bool) {
    let mut answered = true;
    let digest = async {
        let driver = match driver {
            Some(d) => d,
            None => Arc::new(crate::agent::driver(shard)?),
        };
        driver.table_digest(shard, t, ReaderKind::Auto).await
    };
    let read = tokio::time::timeout(READ_TIMEOUT, digest).await;
    let (found, ok) = match read {
        Ok(Ok(d)) => (d.rows, d.rows == t.rows && d.hex() == t.content_hash),
        Ok(Err(e)) if server_answered(&e) => {
            tracing::debug!("reading back {} on {name}: {e}", t.qualified());
            (0, false)
        }
        Ok(Err(e)) => {
            tracing::warn!("reading back {} on {name}: {e}", t.qualified());
            answered = false;
            (0, false)
        }
        Err(_) => {
            tracing::warn!(
                "reading back {} on {name}: no answer in time",
                t.qualified()
            );
            answered = false;
            (0, false)
        }
    };
    (
        TableResult {
            shard: name.to_string(),
            table: t.qualified(),
            rows_expected: t.rows,
            rows_found: found,
            hash_ok: ok,
        },
        answered,
    )
}
