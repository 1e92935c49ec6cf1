//! The REST API: JSON in and out, a bearer token on every route but
//! `/healthz` and `/metrics`; the dashboard also takes the token from its
//! cookie, on GET requests only (a cookie never authorizes a change).

use std::sync::Arc;

use axum::extract::{Path, Query, Request, State};
use axum::http::{header, HeaderMap, Method, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{Html, IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use axum::{Form, Json, Router};
use serde::Deserialize;
use serde_json::json;
use shard_agent::serve::http::same;

use super::jobs::{JobRequest, RestoreRequest};
use super::{dashboard, metrics, openapi, Cluster, Service};
use crate::exit;
use crate::flow::history::Trigger;
use crate::flow::{find_backup, list_backups_reach, open_repository};
use crate::render::backup::list_json;

/// The dashboard's cookie.
pub const COOKIE: &str = "shardcut_token";
/// The dashboard's pages run no script and load nothing from elsewhere.
const PAGE_POLICY: &str =
    "default-src 'none'; style-src 'unsafe-inline'; img-src data:; form-action 'self'; frame-ancestors 'none'";

/// A stored report page: the dashboard's policy, and a sandbox.
const REPORT_POLICY: &str =
    "sandbox; default-src 'none'; style-src 'unsafe-inline'; img-src data:; form-action 'none'; frame-ancestors 'none'";

fn page(status: StatusCode, html: String) -> Response {
    (
        status,
        [(header::CONTENT_SECURITY_POLICY, PAGE_POLICY)],
        Html(html),
    )
        .into_response()
}

/// Request bodies are small JSON documents.
const MAX_BODY: usize = 64 << 10;

type Failure = (StatusCode, Json<serde_json::Value>);

fn fail(status: StatusCode, error: impl Into<String>) -> Failure {
    (status, Json(json!({"error": error.into()})))
}

fn given_token(headers: &HeaderMap, cookie_too: bool) -> Option<String> {
    if let Some(t) = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
    {
        return Some(t.to_string());
    }
    if !cookie_too {
        return None;
    }
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .find_map(|kv| {
            kv.trim()
                .strip_prefix(COOKIE)?
                .strip_prefix('=')
                .and_then(unhex)
        })
}

/// The cookie carries the token hex-encoded: any token is a valid cookie
/// value then.
fn hex(text: &str) -> String {
    text.bytes().map(|b| format!("{b:02x}")).collect()
}

fn unhex(text: &str) -> Option<String> {
    if text.len() % 2 != 0 || text.len() > 1024 {
        return None;
    }
    let bytes: Option<Vec<u8>> = (0..text.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(text.get(i..i + 2)?, 16).ok())
        .collect();
    String::from_utf8(bytes?).ok()
}

fn authorized(service: &Service, headers: &HeaderMap, cookie_too: bool) -> bool {
    given_token(headers, cookie_too)
        .is_some_and(|t| same(t.as_bytes(), service.token.expose().as_bytes()))
}

async fn auth(State(service): State<Arc<Service>>, req: Request, next: Next) -> Response {
    let cookie_too = req.method() == Method::GET;
    if authorized(&service, req.headers(), cookie_too) {
        return next.run(req).await;
    }
    if req.method() == Method::GET && req.uri().path() == "/" {
        return page(StatusCode::UNAUTHORIZED, dashboard::login(None));
    }
    fail(StatusCode::UNAUTHORIZED, "missing or wrong token").into_response()
}

/// A request is answered within the agent's bound (a status that cannot
/// reach a shard gives up rather than hold the connection).
async fn bounded(req: Request, next: Next) -> Response {
    let limit = shard_agent::serve::http::REQUEST_TIMEOUT;
    match tokio::time::timeout(limit, next.run(req)).await {
        Ok(r) => r,
        Err(_) => fail(
            StatusCode::GATEWAY_TIMEOUT,
            format!("not answered within {} s", limit.as_secs()),
        )
        .into_response(),
    }
}

pub fn router(service: Arc<Service>) -> Router {
    let guarded = Router::new()
        .route("/", get(dashboard_page))
        .route("/jobs/{id}/report", get(job_report))
        .route("/v1/openapi.json", get(openapi_doc))
        .route("/v1/jobs", get(list_jobs))
        .route("/v1/jobs/{id}", get(get_job))
        .route(
            "/v1/clusters/{cluster}/backups",
            get(list).post(post_backup),
        )
        .route("/v1/clusters/{cluster}/backups/{id}", get(show))
        .route("/v1/clusters/{cluster}/drills", post(post_drill))
        .route("/v1/clusters/{cluster}/restores", post(post_restore))
        .route("/v1/clusters/{cluster}/status", get(status))
        .layer(middleware::from_fn_with_state(service.clone(), auth));
    Router::new()
        .route("/healthz", get(healthz))
        .route("/metrics", get(metrics_text))
        .route("/login", post(login))
        .merge(guarded)
        .fallback(|| async { fail(StatusCode::NOT_FOUND, "no such route") })
        .layer(axum::extract::DefaultBodyLimit::max(MAX_BODY))
        .layer(middleware::from_fn(bounded))
        .with_state(service)
}

fn cluster(service: &Service, name: &str) -> Result<Arc<Cluster>, Failure> {
    service.clusters.get(name).cloned().ok_or_else(|| {
        fail(
            StatusCode::NOT_FOUND,
            format!("this service runs no cluster `{name}`"),
        )
    })
}

async fn healthz(State(service): State<Arc<Service>>) -> Json<serde_json::Value> {
    Json(json!({
        "status": if service.stopping() { "stopping" } else { "ok" },
        "version": env!("CARGO_PKG_VERSION"),
    }))
}

async fn metrics_text(State(service): State<Arc<Service>>) -> Response {
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        metrics::render(&service),
    )
        .into_response()
}

async fn openapi_doc() -> Json<serde_json::Value> {
    Json(openapi::document())
}

#[derive(Deserialize)]
struct LoginForm {
    token: String,
}

/// The dashboard's sign-in: a right token becomes an HttpOnly, SameSite
/// cookie.
async fn login(State(service): State<Arc<Service>>, Form(form): Form<LoginForm>) -> Response {
    if !same(form.token.as_bytes(), service.token.expose().as_bytes()) {
        return page(
            StatusCode::UNAUTHORIZED,
            dashboard::login(Some("wrong token")),
        );
    }
    let secure = if service.tls { "; Secure" } else { "" };
    let cookie = format!(
        "{COOKIE}={}; HttpOnly; SameSite=Strict; Path=/{secure}",
        hex(&form.token)
    );
    ([(header::SET_COOKIE, cookie)], Redirect::to("/")).into_response()
}

#[derive(Deserialize)]
struct DashboardQuery {
    #[serde(default)]
    days: Option<i64>,
}

async fn dashboard_page(
    State(service): State<Arc<Service>>,
    Query(q): Query<DashboardQuery>,
) -> Response {
    let days = match q.days {
        Some(d) if (1..=super::HISTORY_DAYS).contains(&d) => d,
        _ => 30,
    };
    page(StatusCode::OK, dashboard::page(&service, days))
}

async fn job_report(
    State(service): State<Arc<Service>>,
    Path(id): Path<String>,
) -> Result<Response, Failure> {
    let Some((record, _)) = service.job(&id) else {
        return Err(fail(StatusCode::NOT_FOUND, format!("no job {id}")));
    };
    let c = cluster(&service, &record.cluster)?;
    let history = c.history.clone();
    let page = tokio::task::spawn_blocking(move || history.report(&id))
        .await
        .map_err(|e| fail(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?
        .map_err(|e| fail(StatusCode::BAD_GATEWAY, e.to_string()))?;
    match page {
        // The page is the service's own, read back from the repository:
        // served with a policy that lets it run nothing and load nothing.
        Some(bytes) => Ok((
            [
                (header::CONTENT_TYPE, "text/html; charset=utf-8"),
                // Read back from the repository: a sandboxed page, which
                // can neither run nor navigate anything.
                (header::CONTENT_SECURITY_POLICY, REPORT_POLICY),
            ],
            bytes,
        )
            .into_response()),
        None => Err(fail(
            StatusCode::NOT_FOUND,
            format!("job {} has no report", record.id),
        )),
    }
}

#[derive(Deserialize)]
struct JobsQuery {
    #[serde(default)]
    cluster: Option<String>,
    #[serde(default)]
    limit: Option<usize>,
}

async fn list_jobs(
    State(service): State<Arc<Service>>,
    Query(q): Query<JobsQuery>,
) -> Result<Json<serde_json::Value>, Failure> {
    let limit = q.limit.unwrap_or(100).clamp(1, 1000);
    let mut all = Vec::new();
    for c in service.clusters.values() {
        if q.cluster.as_deref().is_some_and(|n| n != c.name()) {
            continue;
        }
        all.extend(c.records());
    }
    if let Some(n) = &q.cluster {
        cluster(&service, n)?;
    }
    all.sort_by(|a, b| b.id.cmp(&a.id));
    all.truncate(limit);
    let jobs: Vec<serde_json::Value> = all.iter().map(|r| job_json(r, None, None)).collect();
    Ok(Json(json!({ "jobs": jobs })))
}

fn job_json(
    r: &crate::flow::history::JobRecord,
    progress: Option<serde_json::Value>,
    result: Option<serde_json::Value>,
) -> serde_json::Value {
    json!({
        "id": r.id,
        "cluster": r.cluster,
        "kind": r.kind,
        "status": r.status,
        "trigger": r.trigger,
        "queued_at": r.queued_at,
        "started_at": r.started_at,
        "finished_at": r.finished_at,
        "shard": r.shard,
        "backup_id": r.backup_id,
        "progress": progress,
        "result": result,
        "error": r.error,
        "figures": r.figures,
        "report": r.has_report.then(|| format!("/jobs/{}/report", r.id)),
    })
}

async fn get_job(
    State(service): State<Arc<Service>>,
    Path(id): Path<String>,
) -> Result<Json<serde_json::Value>, Failure> {
    let Some((record, progress)) = service.job(&id) else {
        return Err(fail(StatusCode::NOT_FOUND, format!("no job {id}")));
    };
    let result = if record.status.is_final() {
        let c = cluster(&service, &record.cluster)?;
        let (history, rid) = (c.history.clone(), record.id.clone());
        tokio::task::spawn_blocking(move || history.result(&rid))
            .await
            .map_err(|e| fail(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?
            .map_err(|e| fail(StatusCode::BAD_GATEWAY, e.to_string()))?
    } else {
        None
    };
    Ok(Json(job_json(&record, progress, result)))
}

fn accepted(record: &crate::flow::history::JobRecord) -> Response {
    (
        StatusCode::ACCEPTED,
        [(header::LOCATION, format!("/v1/jobs/{}", record.id))],
        Json(json!({"job_id": record.id, "status": record.status})),
    )
        .into_response()
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct BackupBody {
    #[serde(default)]
    incremental: bool,
}

/// A JSON body, or an empty one (all defaults).
fn body<T: serde::de::DeserializeOwned + Default>(bytes: &[u8]) -> Result<T, Failure> {
    if bytes.iter().all(u8::is_ascii_whitespace) {
        return Ok(T::default());
    }
    serde_json::from_slice(bytes)
        .map_err(|e| fail(StatusCode::BAD_REQUEST, format!("request body: {e}")))
}

async fn post_backup(
    State(service): State<Arc<Service>>,
    Path(name): Path<String>,
    bytes: axum::body::Bytes,
) -> Result<Response, Failure> {
    let c = cluster(&service, &name)?;
    let b: BackupBody = body(&bytes)?;
    let record = service
        .submit(
            &c,
            JobRequest::Backup {
                incremental: b.incremental,
            },
            Trigger::Api,
        )
        .await;
    Ok(accepted(&record))
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct DrillBody {
    #[serde(default)]
    shard: Option<String>,
    #[serde(default)]
    backup: Option<String>,
}

async fn post_drill(
    State(service): State<Arc<Service>>,
    Path(name): Path<String>,
    bytes: axum::body::Bytes,
) -> Result<Response, Failure> {
    let c = cluster(&service, &name)?;
    let b: DrillBody = body(&bytes)?;
    if c.drill_target.is_none() {
        return Err(fail(
            StatusCode::BAD_REQUEST,
            format!("cluster {name} has no drill_target in its topology"),
        ));
    }
    if let Some(s) = &b.shard {
        if c.topology.shard(s).is_none() {
            return Err(fail(
                StatusCode::BAD_REQUEST,
                format!("cluster {name} has no shard `{s}`"),
            ));
        }
    }
    let request = JobRequest::Drill {
        shard: b.shard,
        backup: b.backup.unwrap_or_else(|| "latest".into()),
    };
    let record = service.submit(&c, request, Trigger::Api).await;
    Ok(accepted(&record))
}

async fn post_restore(
    State(service): State<Arc<Service>>,
    Path(name): Path<String>,
    bytes: axum::body::Bytes,
) -> Result<Response, Failure> {
    let c = cluster(&service, &name)?;
    let r: RestoreRequest = serde_json::from_slice(&bytes)
        .map_err(|e| fail(StatusCode::BAD_REQUEST, format!("request body: {e}")))?;
    let request =
        JobRequest::restore(&service, &c, r).map_err(|e| fail(StatusCode::BAD_REQUEST, e))?;
    let record = service.submit(&c, request, Trigger::Api).await;
    Ok(accepted(&record))
}

/// A flow's error as an HTTP answer: what was asked for does not exist
/// (404), or the repository or a shard failed (502).
fn flow_fail(e: &anyhow::Error) -> Failure {
    let status = if exit::code_for(e) == exit::INVALID_INPUT {
        StatusCode::NOT_FOUND
    } else {
        StatusCode::BAD_GATEWAY
    };
    fail(status, exit::one_line(e))
}

async fn list(
    State(service): State<Arc<Service>>,
    Path(name): Path<String>,
) -> Result<Json<serde_json::Value>, Failure> {
    let c = cluster(&service, &name)?;
    let topology = c.topology.clone();
    let doc = tokio::task::spawn_blocking(move || {
        let repo = open_repository(&topology)?;
        let (listed, reach) = list_backups_reach(repo.as_ref(), &topology.cluster)?;
        Ok::<_, anyhow::Error>(list_json(&topology.cluster, &listed, &reach))
    })
    .await
    .map_err(|e| fail(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?
    .map_err(|e| flow_fail(&e))?;
    Ok(Json(doc))
}

async fn show(
    State(service): State<Arc<Service>>,
    Path((name, id)): Path<(String, String)>,
) -> Result<Json<serde_json::Value>, Failure> {
    let c = cluster(&service, &name)?;
    let topology = c.topology.clone();
    let m = tokio::task::spawn_blocking(move || {
        let repo = open_repository(&topology)?;
        find_backup(repo.as_ref(), &topology.cluster, &id)
    })
    .await
    .map_err(|e| fail(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?
    .map_err(|e| flow_fail(&e))?;
    Ok(Json(serde_json::to_value(&m).unwrap_or_default()))
}

async fn status(
    State(service): State<Arc<Service>>,
    Path(name): Path<String>,
) -> Result<Json<serde_json::Value>, Failure> {
    let c = cluster(&service, &name)?;
    let report = crate::flow::status::status(&c.topology)
        .await
        .map_err(|e| flow_fail(&e))?;
    Ok(Json(crate::render::capture::status_json(&report)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_cookie_carries_any_token_and_only_on_request() {
        let token = "a token; with=odd \"chars\" ü";
        assert_eq!(unhex(&hex(token)).as_deref(), Some(token));
        assert_eq!(unhex("zz"), None);
        assert_eq!(unhex("abc"), None);
        let mut headers = HeaderMap::new();
        headers.insert(
            header::COOKIE,
            format!("other=1; {COOKIE}={}", hex(token)).parse().unwrap(),
        );
        assert_eq!(given_token(&headers, true).as_deref(), Some(token));
        assert_eq!(given_token(&headers, false), None, "not for changes");
        headers.insert(header::AUTHORIZATION, "Bearer abc".parse().unwrap());
        assert_eq!(given_token(&headers, false).as_deref(), Some("abc"));
    }
}
