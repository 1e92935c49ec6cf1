//! `shard-agent serve`: the agent as a daemon on a database host.
//!
//! It exposes the [`Session`] steps over HTTP (see [`crate::api`]). A session
//! lives in this process between calls, so the write block is held here, on
//! the database host; the block's lease is armed here too, which is what
//! releases it if the orchestrator vanishes. Dumps run in the background;
//! the orchestrator polls their progress and collects the shard manifest.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::extract::{DefaultBodyLimit, Path, Request, State};
use axum::http::{HeaderMap, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use topology::Secret;

pub mod http;
mod jobs;

use crate::api::*;
use crate::cut::{BlockError, CutOptions};
use crate::dump::{DumpOptions, Progress};
use crate::error::{one_line, AgentError};
use crate::manifest::ShardManifest;
use crate::repo::reference::{self, Place, Reference};
use crate::repo::{LocalRepository, Repository, S3Repository, SealedRepository};
use crate::session::Session;

/// Sessions idle this long (not dumping) are dropped, which closes their
/// connections: an orchestrator that died after `prepare` leaks nothing.
const IDLE_SESSION_TTL: Duration = Duration::from_secs(15 * 60);

/// A dump whose orchestrator has not asked for its status this long (it
/// asks every 300 ms while the backup goes on) is stopped: the
/// orchestrator died or gave up, the backup is discarded, and the dump
/// would go on writing into its folder and holding its snapshots (on
/// MariaDB, the metadata locks of the tables read, which DDL waits for).
/// `SHARDCUT_AGENT_DUMP_UNPOLLED_SECS` sets another time (tests).
fn dump_unpolled_limit() -> Duration {
    crate::knobs::count("SHARDCUT_AGENT_DUMP_UNPOLLED_SECS")
        .map_or(Duration::from_secs(120), |s| Duration::from_secs(s as u64))
}

enum Phase {
    Ready(Box<Session>),
    /// Taken out for a call in progress.
    Busy,
    Dumping {
        progress: Arc<Progress>,
        cancel: Arc<AtomicBool>,
        result: Arc<Mutex<Option<Result<ShardManifest, String>>>>,
        /// Ends the dump task at once (its connections close with it).
        abort: tokio::task::AbortHandle,
    },
}

struct Entry {
    phase: Phase,
    touched: Instant,
}

/// A driver call running (or finished and not yet collected).
struct Job {
    result: Arc<Mutex<Option<Result<serde_json::Value, jobs::JobFailure>>>>,
    abort: tokio::task::AbortHandle,
    touched: Instant,
}

#[derive(Clone)]
struct AppState {
    token: Arc<Secret>,
    sessions: Arc<Mutex<HashMap<String, Entry>>>,
    next_id: Arc<AtomicU64>,
    repositories: Arc<AllowedRepositories>,
    allowed_hosts: Arc<Vec<String>>,
    jobs: Arc<Mutex<HashMap<String, Job>>>,
}

type Reply = Result<Response, (StatusCode, Json<ErrorBody>)>;

fn fail(status: StatusCode, kind: &str, error: String) -> (StatusCode, Json<ErrorBody>) {
    (
        status,
        Json(ErrorBody {
            error,
            kind: kind.to_string(),
            timeout_ms: 0,
            holder: None,
        }),
    )
}

fn agent_fail(e: AgentError) -> (StatusCode, Json<ErrorBody>) {
    let kind = if matches!(e, AgentError::NotReady { .. }) {
        "not_ready"
    } else {
        "failed"
    };
    fail(StatusCode::INTERNAL_SERVER_ERROR, kind, one_line(&e))
}

async fn auth(
    State(st): State<AppState>,
    headers: HeaderMap,
    req: Request,
    next: Next,
) -> Response {
    let given = headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .unwrap_or("");
    if http::same(given.as_bytes(), st.token.expose().as_bytes()) {
        next.run(req).await
    } else {
        fail(
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            "missing or wrong agent token".into(),
        )
        .into_response()
    }
}

async fn version() -> Json<VersionInfo> {
    Json(VersionInfo {
        api: API_VERSION,
        version: env!("CARGO_PKG_VERSION").to_string(),
    })
}

async fn prepare(State(st): State<AppState>, Json(req): Json<PrepareRequest>) -> Reply {
    let shard = req.shard.into_shard();
    allowed_host(&st, &shard.name, &shard.endpoint.host)?;
    let opts = CutOptions {
        write_block_timeout: Duration::from_millis(req.write_block_timeout_ms),
        write_block_lease: Duration::from_millis(req.write_block_lease_ms),
        connect_timeout: Duration::from_millis(req.connect_timeout_ms),
    };
    let session = Session::prepare(&shard, &opts).await.map_err(agent_fail)?;
    let id = format!("s{}", st.next_id.fetch_add(1, Ordering::Relaxed));
    tracing::info!("session {id}: prepared shard {}", shard.name);
    lock(&st).insert(
        id.clone(),
        Entry {
            phase: Phase::Ready(Box::new(session)),
            touched: Instant::now(),
        },
    );
    Ok(Json(PrepareResponse { session: id }).into_response())
}

/// Refuses a database host this agent was not allowed to connect to.
fn allowed_host(
    st: &AppState,
    shard: &str,
    host: &str,
) -> Result<(), (StatusCode, Json<ErrorBody>)> {
    if st.allowed_hosts.iter().any(|h| h == host) {
        return Ok(());
    }
    Err(fail(
        StatusCode::FORBIDDEN,
        "forbidden",
        format!(
            "shard {shard}: host {host} is not one this agent may connect to (shard-agent serve --allow-host)"
        ),
    ))
}

/// Opens the repository a request names ([`Reference`]), or refuses: a
/// directory below one of the allowed ones, or a bucket and prefix an
/// allowed entry covers, reached with this agent's own endpoint and
/// credentials; sealed with this agent's key, which must be the one the
/// reference names.
fn allowed_repository(
    st: &AppState,
    text: &str,
) -> Result<Arc<dyn Repository>, (StatusCode, Json<ErrorBody>)> {
    let forbidden = |why: String| fail(StatusCode::FORBIDDEN, "forbidden", why);
    let reference = Reference::parse(text).map_err(|e| forbidden(format!("repository {e}")))?;
    let inner: Arc<dyn Repository> = match &reference.place {
        Place::Directory(path) => {
            let allowed = std::fs::canonicalize(path).ok().filter(|p| {
                st.repositories
                    .directories
                    .iter()
                    .any(|root| p.starts_with(root))
            });
            let Some(canonical) = allowed else {
                return Err(forbidden(format!(
                    "repository {path} is not below a directory this agent may write (shard-agent serve --allow-repository)"
                )));
            };
            Arc::new(
                LocalRepository::open(&canonical).map_err(|e| {
                    fail(StatusCode::INTERNAL_SERVER_ERROR, "failed", e.to_string())
                })?,
            )
        }
        Place::Bucket { bucket, prefix } => {
            let shown = reference::bucket_text(bucket, prefix);
            let covered = st
                .repositories
                .buckets
                .iter()
                .any(|(b, p)| b == bucket && reference::prefix_within(prefix, p));
            if !covered {
                return Err(forbidden(format!(
                    "repository {shown} is not a bucket and prefix this agent may write (shard-agent serve --allow-repository s3://BUCKET/PREFIX)"
                )));
            }
            let Some(store) = &st.repositories.store else {
                return Err(forbidden(format!(
                    "repository {shown}: this agent has no object store credentials (AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, or --s3-access-key-file and --s3-secret-key-file)"
                )));
            };
            let location = topology::S3Location {
                bucket: bucket.clone(),
                prefix: prefix.clone(),
                ..store.clone()
            };
            Arc::new(
                S3Repository::open(&location).map_err(|e| {
                    fail(StatusCode::INTERNAL_SERVER_ERROR, "failed", e.to_string())
                })?,
            )
        }
    };
    match (&reference.key_id, &st.repositories.encryption) {
        (None, None) => Ok(Arc::new(SealedRepository::plain(inner))),
        // An agent given a key writes nothing in clear: a token holder
        // naming no key would have it store rows unsealed where only
        // sealed objects belong.
        (None, Some(keys)) => Err(forbidden(format!(
            "repository {}: the request names no key, but this agent seals with key id {}: it writes nothing unsealed",
            inner.location(),
            SealedRepository::new(inner.clone(), keys)
                .key_ids()
                .first()
                .cloned()
                .unwrap_or_default()
        ))),
        (Some(id), Some(keys)) => {
            let sealed = SealedRepository::new(inner, keys);
            if sealed.key_ids().first() == Some(id) {
                Ok(Arc::new(sealed))
            } else {
                Err(forbidden(format!(
                    "repository {}: sealed with key id {id}, but this agent's --repository-key-file is key id {}",
                    sealed.location(),
                    sealed.key_ids().first().cloned().unwrap_or_default()
                )))
            }
        }
        (Some(id), None) => Err(forbidden(format!(
            "repository {}: encrypted (key id {id}), but this agent has no key (shard-agent serve --repository-key-file)",
            inner.location()
        ))),
    }
}

fn jobs(st: &AppState) -> std::sync::MutexGuard<'_, HashMap<String, Job>> {
    st.jobs.lock().unwrap_or_else(|p| p.into_inner())
}

async fn start_job(State(st): State<AppState>, Json(call): Json<DriverCall>) -> Reply {
    let spec = call.shard();
    allowed_host(&st, &spec.name, &spec.host)?;
    let repo = match call.repository() {
        Some(path) => Some(allowed_repository(&st, path)?),
        None => None,
    };
    let id = format!("j{}", st.next_id.fetch_add(1, Ordering::Relaxed));
    tracing::info!("job {id}: {} on shard {}", op_name(&call), spec.name);
    let result = Arc::new(Mutex::new(None));
    let task = tokio::spawn(jobs::run(call, repo));
    let abort = task.abort_handle();
    let slot = result.clone();
    tokio::spawn(async move {
        // A panic in the call is a failed job, not one running forever.
        let r = match task.await {
            Ok(r) => r,
            Err(e) if e.is_cancelled() => Err("cancelled".to_string().into()),
            Err(e) => Err(format!("the job ended abnormally: {e}").into()),
        };
        *slot.lock().unwrap_or_else(|p| p.into_inner()) = Some(r);
    });
    jobs(&st).insert(
        id.clone(),
        Job {
            result,
            abort,
            touched: Instant::now(),
        },
    );
    Ok((StatusCode::ACCEPTED, Json(JobStarted { job: id })).into_response())
}

fn op_name(call: &DriverCall) -> &'static str {
    match call {
        DriverCall::Preflight { .. } => "preflight",
        DriverCall::CheckTarget { .. } => "check_target",
        DriverCall::Restore { .. } => "restore",
        DriverCall::TableDigest { .. } => "table_digest",
        DriverCall::LiveStreams { .. } => "live_streams",
        DriverCall::StartStream { .. } => "start_stream",
        DriverCall::CatchUp { .. } => "catch_up",
        DriverCall::RemoveStream { .. } => "remove_stream",
        DriverCall::StreamServer { .. } => "stream_server",
        DriverCall::Replay { .. } => "replay",
        DriverCall::FinishReplay { .. } => "finish_replay",
    }
}

async fn job_status(State(st): State<AppState>, Path(id): Path<String>) -> Reply {
    let mut map = jobs(&st);
    let job = map
        .get_mut(&id)
        .ok_or_else(|| fail(StatusCode::NOT_FOUND, "not_found", format!("no job {id}")))?;
    job.touched = Instant::now();
    let done = job.result.lock().unwrap_or_else(|p| p.into_inner()).take();
    let status = match done {
        None => return Ok(Json(JobStatus::Running).into_response()),
        Some(Ok(result)) => JobStatus::Done { result },
        Some(Err(f)) => JobStatus::Failed {
            error: f.error,
            refusal: f.refusal,
        },
    };
    map.remove(&id);
    Ok(Json(status).into_response())
}

async fn cancel_job(State(st): State<AppState>, Path(id): Path<String>) -> StatusCode {
    if let Some(job) = jobs(&st).remove(&id) {
        job.abort.abort();
    }
    StatusCode::NO_CONTENT
}

fn lock(st: &AppState) -> std::sync::MutexGuard<'_, HashMap<String, Entry>> {
    // Entries are replaced whole, so a panic elsewhere cannot leave one torn.
    st.sessions.lock().unwrap_or_else(|p| p.into_inner())
}

/// Takes a ready session out for one call; it is put back by [`put_back`].
fn take(st: &AppState, id: &str) -> Result<Box<Session>, (StatusCode, Json<ErrorBody>)> {
    let mut map = lock(st);
    let entry = map.get_mut(id).ok_or_else(|| {
        fail(
            StatusCode::NOT_FOUND,
            "not_found",
            format!("no session {id}"),
        )
    })?;
    entry.touched = Instant::now();
    match std::mem::replace(&mut entry.phase, Phase::Busy) {
        Phase::Ready(s) => Ok(s),
        other => {
            entry.phase = other;
            Err(fail(
                StatusCode::CONFLICT,
                "failed",
                format!("session {id} is busy or dumping"),
            ))
        }
    }
}

fn put_back(st: &AppState, id: &str, s: Box<Session>) {
    if let Some(entry) = lock(st).get_mut(id) {
        entry.phase = Phase::Ready(s);
        entry.touched = Instant::now();
    }
}

async fn settle(State(st): State<AppState>, Path(id): Path<String>) -> Reply {
    let mut s = take(&st, &id)?;
    let waited = s.settle().await;
    put_back(&st, &id, s);
    Ok(Json(SettleResponse {
        waited_ms: u64::try_from(waited.as_millis()).unwrap_or(u64::MAX),
    })
    .into_response())
}

async fn block(State(st): State<AppState>, Path(id): Path<String>) -> Reply {
    let mut s = take(&st, &id)?;
    let r = s.block().await;
    put_back(&st, &id, s);
    match r {
        Ok(()) => Ok(StatusCode::NO_CONTENT.into_response()),
        Err(BlockError::Timeout {
            shard,
            timeout,
            holder,
        }) => Err((
            StatusCode::CONFLICT,
            Json(ErrorBody {
                error: format!("shard {shard}: could not block commits"),
                kind: "block_timeout".into(),
                timeout_ms: u64::try_from(timeout.as_millis()).unwrap_or(u64::MAX),
                holder,
            }),
        )),
        Err(BlockError::Failed(e)) => Err(agent_fail(e)),
    }
}

async fn mark(State(st): State<AppState>, Path(id): Path<String>) -> Reply {
    let mut s = take(&st, &id)?;
    let r = s.mark().await;
    put_back(&st, &id, s);
    Ok(Json(MarkResponse {
        position: r.map_err(agent_fail)?,
    })
    .into_response())
}

async fn release(State(st): State<AppState>, Path(id): Path<String>) -> Reply {
    let mut s = take(&st, &id)?;
    let r = s.release().await;
    put_back(&st, &id, s);
    let held = r.map_err(agent_fail)?;
    Ok(Json(ReleaseResponse {
        held_ms: u64::try_from(held.as_millis()).unwrap_or(u64::MAX),
    })
    .into_response())
}

async fn start_dump(
    State(st): State<AppState>,
    Path(id): Path<String>,
    Json(req): Json<DumpRequest>,
) -> Reply {
    let repo = allowed_repository(&st, &req.repository)?;
    let s = take(&st, &id)?;
    let progress = Arc::new(Progress::default());
    let cancel = Arc::new(AtomicBool::new(false));
    let result = Arc::new(Mutex::new(None));
    let opts = DumpOptions {
        repo,
        backup_id: req.backup_id,
        compression: req.compression,
        chunk_rows: req.chunk_rows,
        digest_only: req.digest_only,
        progress: progress.clone(),
        cancel: cancel.clone(),
        bundles: None,
    };
    let dump = tokio::spawn(async move { s.dump(opts).await.map_err(|e| one_line(&e)) });
    if let Some(entry) = lock(&st).get_mut(&id) {
        entry.touched = Instant::now();
        entry.phase = Phase::Dumping {
            progress,
            cancel,
            result: result.clone(),
            abort: dump.abort_handle(),
        };
    }
    tokio::spawn(async move {
        // A panic in the dump is a failed session, not one "running" forever.
        let r = match dump.await {
            Ok(r) => r,
            Err(e) => Err(format!("the dump task ended abnormally: {e}")),
        };
        *result.lock().unwrap_or_else(|p| p.into_inner()) = Some(r);
    });
    Ok(StatusCode::ACCEPTED.into_response())
}

async fn dump_status(State(st): State<AppState>, Path(id): Path<String>) -> Reply {
    let mut map = lock(&st);
    let entry = map.get_mut(&id).ok_or_else(|| {
        fail(
            StatusCode::NOT_FOUND,
            "not_found",
            format!("no session {id}"),
        )
    })?;
    entry.touched = Instant::now();
    let Phase::Dumping {
        progress, result, ..
    } = &entry.phase
    else {
        return Err(fail(
            StatusCode::CONFLICT,
            "failed",
            format!("session {id} is not dumping"),
        ));
    };
    let done = result.lock().unwrap_or_else(|p| p.into_inner()).take();
    let status = match done {
        None => DumpStatus::Running {
            rows: progress.rows.load(Ordering::Relaxed),
            bytes: progress.bytes.load(Ordering::Relaxed),
            rows_estimate: progress.rows_estimate.load(Ordering::Relaxed),
        },
        Some(Ok(m)) => DumpStatus::Done {
            manifest: Box::new(m),
        },
        Some(Err(error)) => DumpStatus::Failed { error },
    };
    if !matches!(status, DumpStatus::Running { .. }) {
        map.remove(&id);
    }
    Ok(Json(status).into_response())
}

async fn close(State(st): State<AppState>, Path(id): Path<String>) -> StatusCode {
    if let Some(entry) = lock(&st).remove(&id) {
        if let Phase::Dumping { cancel, .. } = entry.phase {
            cancel.store(true, Ordering::Relaxed);
        }
    }
    StatusCode::NO_CONTENT
}

/// The repositories a request may name, and this agent's own means of
/// reaching and sealing them (no secret ever comes with a request).
#[derive(Debug, Default)]
pub struct AllowedRepositories {
    /// Directories a dump may write below (canonical paths).
    pub directories: Vec<PathBuf>,
    /// Buckets and prefixes (`s3://bucket/prefix`), by whole segments.
    pub buckets: Vec<(String, String)>,
    /// Endpoint, region and credentials for buckets (bucket and prefix
    /// come from the request).
    pub store: Option<topology::S3Location>,
    /// The key that seals objects, and older keys that open them.
    pub encryption: Option<topology::Encryption>,
}

/// How `shard-agent serve` runs: who may call it, over what, and what a
/// caller may point it at.
pub struct ServeConfig {
    pub token: Secret,
    /// `None` serves plain HTTP (only with `--insecure`).
    pub tls: Option<Arc<rustls::ServerConfig>>,
    /// What a request may point the agent at, and how it reaches it.
    pub repositories: AllowedRepositories,
    /// Database hosts a session may connect to, as given in the topology.
    pub allowed_hosts: Vec<String>,
    /// Connections served at once; more are closed at once.
    pub max_connections: usize,
}

/// The largest job request: a restore's carries the shard's manifest,
/// which may be as large as a manifest is (about a kilobyte a table),
/// where the framework's default refused anything over 2 MiB. Only a
/// caller holding the token gets this far.
const JOB_REQUEST_MAX: usize = crate::manifest::MANIFEST_MAX as usize;

async fn bounded(req: Request, next: Next) -> Response {
    match tokio::time::timeout(http::REQUEST_TIMEOUT, next.run(req)).await {
        Ok(r) => r,
        Err(_) => fail(
            StatusCode::REQUEST_TIMEOUT,
            "timeout",
            format!(
                "request not answered within {} s",
                http::REQUEST_TIMEOUT.as_secs()
            ),
        )
        .into_response(),
    }
}

/// Serves until SIGTERM or Ctrl-C. `on_bound` is called with the bound
/// address once the listener accepts connections.
pub async fn serve(
    listen: &str,
    config: ServeConfig,
    on_bound: impl FnOnce(std::net::SocketAddr),
) -> std::io::Result<()> {
    let state = AppState {
        token: Arc::new(config.token),
        sessions: Arc::new(Mutex::new(HashMap::new())),
        next_id: Arc::new(AtomicU64::new(1)),
        repositories: Arc::new(config.repositories),
        allowed_hosts: Arc::new(config.allowed_hosts),
        jobs: Arc::new(Mutex::new(HashMap::new())),
    };
    let reaper = state.clone();
    let unpolled = dump_unpolled_limit();
    tokio::spawn(async move {
        loop {
            tokio::time::sleep(Duration::from_secs(30).min(unpolled / 2)).await;
            lock(&reaper).retain(|id, e| match &e.phase {
                Phase::Dumping { cancel, abort, .. } => {
                    let keep = e.touched.elapsed() < unpolled;
                    if !keep {
                        tracing::warn!(
                            "session {id}: its dump was not polled for {} s (the orchestrator is gone); stopping it",
                            unpolled.as_secs()
                        );
                        cancel.store(true, Ordering::Relaxed);
                        abort.abort();
                    }
                    keep
                }
                _ => {
                    let keep = e.touched.elapsed() < IDLE_SESSION_TTL;
                    if !keep {
                        tracing::warn!("session {id}: idle for too long; closing it");
                    }
                    keep
                }
            });
            // A job nobody has asked about for as long is an orphan (its
            // orchestrator is gone): stopped and forgotten.
            jobs(&reaper).retain(|id, j| {
                let keep = j.touched.elapsed() < IDLE_SESSION_TTL;
                if !keep {
                    tracing::warn!("job {id}: not polled for too long; stopping it");
                    j.abort.abort();
                }
                keep
            });
        }
    });
    let app = Router::new()
        .route("/v1/version", get(version))
        .route("/v1/sessions", post(prepare))
        .route("/v1/sessions/{id}/settle", post(settle))
        .route("/v1/sessions/{id}/block", post(block))
        .route("/v1/sessions/{id}/mark", post(mark))
        .route("/v1/sessions/{id}/release", post(release))
        .route("/v1/sessions/{id}/dump", post(start_dump).get(dump_status))
        .route("/v1/sessions/{id}", axum::routing::delete(close))
        .route(
            "/v1/jobs",
            post(start_job).layer(DefaultBodyLimit::max(JOB_REQUEST_MAX)),
        )
        .route("/v1/jobs/{id}", get(job_status).delete(cancel_job))
        .layer(middleware::from_fn_with_state(state.clone(), auth))
        .layer(middleware::from_fn(bounded))
        .with_state(state);
    let listener = tokio::net::TcpListener::bind(listen).await?;
    on_bound(listener.local_addr()?);
    http::serve_router(
        listener,
        app,
        config.tls,
        config.max_connections,
        http::shutdown_signal(),
    )
    .await;
    Ok(())
}
