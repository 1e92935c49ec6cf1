//! `shardcut serve`: scheduled and requested jobs over the REST API, the
//! history in the repository, metrics, the OpenAPI document, and a service
//! killed in the middle of a backup. The cluster is a private sandbox of
//! this test's own (the kill holds its write block).

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::support::{self, http, PrivateSandbox};

const TOKEN: &str = "service-test-token-0123456789abcdef";

struct Serve {
    child: Child,
    base: String,
    log: PathBuf,
}

impl Serve {
    fn start(dir: &Path, name: &str, topology: &Path, extra: &[&str]) -> Serve {
        Self::start_env(dir, name, topology, extra, &[])
    }

    /// [`Serve::start`] with `env` set for the service.
    fn start_env(
        dir: &Path,
        name: &str,
        topology: &Path,
        extra: &[&str],
        env: &[(&str, &str)],
    ) -> Serve {
        let port = support::free_port();
        let token = dir.join("token");
        std::fs::write(&token, format!("{TOKEN}\n")).unwrap();
        let log = dir.join(format!("{name}.log"));
        let mut args = vec![
            "serve".to_string(),
            "-t".into(),
            topology.display().to_string(),
            "--listen".into(),
            format!("127.0.0.1:{port}"),
            "--token-file".into(),
            token.display().to_string(),
            "--insecure".into(),
            "-v".into(),
        ];
        args.extend(extra.iter().map(|s| s.to_string()));
        let child = Command::new(support::bin("shardcut"))
            .args(&args)
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .expect("start shardcut serve");
        let s = Serve {
            child,
            base: format!("http://127.0.0.1:{port}"),
            log,
        };
        let deadline = Instant::now() + Duration::from_secs(30);
        while http("GET", &s.url("/healthz"), None, None).0 != 200 {
            assert!(
                Instant::now() < deadline,
                "serve did not start:\n{}",
                s.log()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        s
    }

    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    fn get(&self, path: &str) -> serde_json::Value {
        let (code, body) = http("GET", &self.url(path), Some(TOKEN), None);
        assert_eq!(code, 200, "GET {path}: {body}");
        serde_json::from_str(&body).unwrap_or_else(|e| panic!("GET {path}: {e}: {body}"))
    }

    fn post(&self, path: &str, body: &str) -> String {
        let (code, text) = http("POST", &self.url(path), Some(TOKEN), Some(body));
        assert_eq!(code, 202, "POST {path}: {text}");
        let v: serde_json::Value = serde_json::from_str(&text).unwrap();
        v["job_id"].as_str().unwrap().to_string()
    }

    /// Polls a job until it is final.
    fn wait(&self, id: &str) -> serde_json::Value {
        let deadline = Instant::now() + Duration::from_secs(180);
        loop {
            let j = self.get(&format!("/v1/jobs/{id}"));
            if !matches!(j["status"].as_str(), Some("queued" | "running")) {
                return j;
            }
            assert!(
                Instant::now() < deadline,
                "job {id} never ended: {j}\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// SIGTERM, and the exit status.
    fn terminate(mut self) -> std::process::ExitStatus {
        let pid = self.child.id().to_string();
        let ok = Command::new("kill").args(["-TERM", &pid]).status().unwrap();
        assert!(ok.success());
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "serve did not stop on SIGTERM:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

impl Drop for Serve {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The source cluster's topology with `extra` YAML appended, its repository
/// in `dir/repo`.
fn topology_with(src: &Path, dir: &Path, file: &str, extra: &str) -> PathBuf {
    let base = support::topology_variant(src, dir, &[]);
    let text = std::fs::read_to_string(&base).unwrap() + extra;
    let path = dir.join(file);
    std::fs::write(&path, text).unwrap();
    path
}

fn jobs(serve: &Serve) -> Vec<serde_json::Value> {
    serve.get("/v1/jobs?limit=1000")["jobs"]
        .as_array()
        .unwrap()
        .clone()
}

fn find<'a>(
    jobs: &'a [serde_json::Value],
    kind: &str,
    trigger: &str,
    status: &str,
) -> Option<&'a serde_json::Value> {
    jobs.iter()
        .find(|j| j["kind"] == kind && j["trigger"] == trigger && j["status"] == status)
}

/// Waits until the service's backup holds the write block on both shards.
fn wait_for_block(serve: &Serve) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while !serve.log().contains("all 2 shards blocked") {
        assert!(
            Instant::now() < deadline,
            "no write block:\n{}",
            serve.log()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A write on every shard of the sandbox, each bounded by a lock timeout:
/// fails if any shard is still blocked.
fn write_on_every_shard(sandbox: &PrivateSandbox) {
    use mysql_async::prelude::Queryable;
    let topo = support::db::topology(&sandbox.topology());
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        for shard in &topo.shards {
            let write = async {
                match shard.engine {
                    topology::Engine::Mysql => {
                        let mut c = support::db::mysql(shard, Some("shop")).await;
                        c.query_drop(
                            "SET SESSION lock_wait_timeout = 5; \
                             CREATE TABLE IF NOT EXISTS svc_probe (i int); \
                             INSERT INTO svc_probe VALUES (1)",
                        )
                        .await
                        .map_err(|e| e.to_string())
                    }
                    topology::Engine::Postgres => support::db::pg(shard, "shop")
                        .await
                        .batch_execute(
                            "SET lock_timeout = '5s'; \
                             CREATE TABLE IF NOT EXISTS svc_probe (i int); \
                             INSERT INTO svc_probe VALUES (1)",
                        )
                        .await
                        .map_err(|e| e.to_string()),
                }
            };
            let res = tokio::time::timeout(Duration::from_secs(20), write).await;
            assert!(
                matches!(res, Ok(Ok(()))),
                "shard {} still blocked: {res:?}",
                shard.name
            );
        }
    });
}

#[test]
fn serve_runs_schedules_and_requests_records_history_and_survives_a_kill() {
    let dir = tempfile::tempdir().unwrap();
    let source = PrivateSandbox::up(1, 1, "ready");
    source.seed();
    let scratch = PrivateSandbox::up(1, 1, "ready");
    let scheduled = topology_with(
        &source.topology(),
        dir.path(),
        "scheduled.yaml",
        &format!(
            "schedule:\n  backup: \"*/8 * * * * *\"\n  drill: \"4/8 * * * * *\"\ndrill_target: {}\n",
            scratch.topology().display()
        ),
    );

    // 1. Schedules fire; a scheduled backup and drill succeed.
    let serve = Serve::start(dir.path(), "scheduled", &scheduled, &[]);
    assert_eq!(http("GET", &serve.url("/v1/jobs"), None, None).0, 401);
    assert_eq!(
        http(
            "GET",
            &serve.url("/v1/jobs"),
            Some("wrong-token-0123456789"),
            None
        )
        .0,
        401
    );
    assert_eq!(
        http(
            "POST",
            &serve.url("/v1/clusters/sandbox/backups"),
            None,
            Some("{}")
        )
        .0,
        401,
        "no job without a token"
    );
    let deadline = Instant::now() + Duration::from_secs(180);
    let (backup, drill) = loop {
        let all = jobs(&serve);
        if let (Some(b), Some(d)) = (
            find(&all, "backup", "schedule", "succeeded"),
            find(&all, "drill", "schedule", "succeeded"),
        ) {
            break (b.clone(), d.clone());
        }
        assert!(
            Instant::now() < deadline,
            "no scheduled backup and drill succeeded: {all:?}\n{}",
            serve.log()
        );
        std::thread::sleep(Duration::from_millis(500));
    };
    let drill = serve.get(&format!("/v1/jobs/{}", drill["id"].as_str().unwrap()));
    assert_eq!(drill["result"]["quality"]["score"], 1.0, "{drill}");
    assert_eq!(drill["result"]["kind"], "drill");
    let drilled = drill["shard"].as_str().unwrap();
    assert!(drill["result"]["shards"][drilled].is_object(), "{drill}");
    let (code, page) = http(
        "GET",
        &serve.url(drill["report"].as_str().unwrap()),
        Some(TOKEN),
        None,
    );
    assert_eq!(code, 200);
    assert!(
        page.contains("Recovery quality Q"),
        "the drill's report page"
    );

    // Metrics parse strictly and carry the drill's score.
    let (code, text) = http("GET", &serve.url("/metrics"), None, None);
    assert_eq!(code, 200);
    let samples = support::parse_prometheus(&text);
    let score = samples
        .iter()
        .find(|s| s.name == "shardcut_quality_score" && s.label("kind") == Some("drill"))
        .unwrap_or_else(|| panic!("no drill score in\n{text}"));
    assert_eq!(score.value, 1.0);
    assert_eq!(score.label("cluster"), Some("sandbox"));
    assert!(samples
        .iter()
        .any(|s| s.name == "shardcut_last_success_timestamp_seconds"
            && s.label("kind") == Some("backup")
            && s.value > 1.7e9));
    assert!(samples.iter().any(|s| s.name == "shardcut_jobs"
        && s.label("kind") == Some("drill")
        && s.label("status") == Some("succeeded")
        && s.value >= 1.0));

    // The OpenAPI document is valid, and every operation in it answers
    // with a status it documents.
    let doc = serve.get("/v1/openapi.json");
    let doc_path = dir.path().join("openapi.json");
    std::fs::write(&doc_path, doc.to_string()).unwrap();
    let check = Command::new(support::root().join("scripts/openapi-check"))
        .arg(&doc_path)
        .output()
        .unwrap();
    assert!(
        check.status.success(),
        "{}",
        String::from_utf8_lossy(&check.stdout)
    );
    let backup_id = backup["backup_id"].as_str().unwrap();
    let mut operations = 0;
    for (path, item) in doc["paths"].as_object().unwrap() {
        for (method, op) in item.as_object().unwrap() {
            let url = path
                .replace("{cluster}", "sandbox")
                .replace(
                    "/jobs/{id}",
                    &format!("/jobs/{}", backup["id"].as_str().unwrap()),
                )
                .replace("{id}", backup_id);
            // A POST with a body it refuses: the route answers, no job starts.
            let body = (method == "post").then_some("{\"no_such_field\": 1}");
            let (code, text) = http(&method.to_uppercase(), &serve.url(&url), Some(TOKEN), body);
            let documented = op["responses"].as_object().unwrap();
            assert!(
                documented.contains_key(&code.to_string()),
                "{method} {url} answered {code}, not documented: {text}"
            );
            assert_ne!(code, 404, "{method} {url} is not routed: {text}");
            operations += 1;
        }
    }
    assert_eq!(operations, 11, "every route of the API is documented");
    assert_eq!(
        http(
            "GET",
            &serve.url("/v1/clusters/nope/backups"),
            Some(TOKEN),
            None
        )
        .0,
        404
    );

    // The dashboard: one section per cluster with its charts.
    let (code, dash) = http("GET", &serve.url("/"), Some(TOKEN), None);
    assert_eq!(code, 200);
    for chart in [
        "quality",
        "rto",
        "rpo",
        "size",
        "duration",
        "write_block",
        "failures",
    ] {
        assert!(dash.contains(&format!("data-chart='{chart}'")), "{chart}");
    }
    assert!(!dash.contains("<script"), "no script");
    assert_eq!(
        http("GET", &serve.url("/"), None, None).0,
        401,
        "sign-in page"
    );

    // SIGTERM: a clean stop, no job left running.
    let status = serve.terminate();
    assert!(status.success(), "{status:?}");

    // Down for longer than the longest gap between runs (12 s): the runs
    // missed meanwhile are recorded as skipped at the next start, not run
    // late in a burst.
    std::thread::sleep(Duration::from_secs(13));
    let serve = Serve::start(dir.path(), "restarted-schedule", &scheduled, &[]);
    let all = jobs(&serve);
    for kind in ["backup", "drill"] {
        let missed = all
            .iter()
            .find(|j| {
                j["kind"] == kind
                    && j["status"] == "skipped"
                    && j["trigger"] == "schedule"
                    && j["error"].as_str().unwrap_or("").starts_with("missed")
            })
            .unwrap_or_else(|| panic!("no missed {kind} recorded: {all:?}"));
        assert!(missed["started_at"].is_null(), "not run: {missed}");
    }
    assert!(serve.terminate().success());

    // 2. Requests, on a service without schedules, over the same history.
    let plain = topology_with(&source.topology(), dir.path(), "plain.yaml", "");
    let scratch_topology = scratch.topology().display().to_string();
    let serve = Serve::start(
        dir.path(),
        "requests",
        &plain,
        &["--test-hold-block", "2s", "--target", &scratch_topology],
    );
    let before = jobs(&serve);
    assert!(
        before.iter().any(|j| j["id"] == drill["id"]),
        "the history survives a restart"
    );
    assert!(
        before
            .iter()
            .all(|j| !matches!(j["status"].as_str(), Some("running" | "queued"))),
        "a clean stop leaves nothing running: {before:?}"
    );
    let first = serve.post("/v1/clusters/sandbox/backups", "{\"incremental\": false}");
    let second = serve.post("/v1/clusters/sandbox/backups", "{}");
    let skipped = serve.get(&format!("/v1/jobs/{second}"));
    assert_eq!(skipped["status"], "skipped", "{skipped}");
    assert!(
        skipped["error"].as_str().unwrap().contains(&first),
        "{skipped}"
    );
    let done = serve.wait(&first);
    assert_eq!(done["status"], "succeeded", "{done}\n{}", serve.log());
    let id = done["result"]["backup_id"].as_str().unwrap().to_string();
    assert_eq!(done["backup_id"], id.as_str());
    assert_eq!(done["result"]["shards"].as_object().unwrap().len(), 2);
    let listed = serve.get("/v1/clusters/sandbox/backups");
    assert!(
        listed["backups"]
            .as_array()
            .unwrap()
            .iter()
            .any(|b| b["backup_id"] == id.as_str() && b["status"] == "complete"),
        "{listed}"
    );
    let shown = serve.get(&format!("/v1/clusters/sandbox/backups/{id}"));
    assert_eq!(shown["backup_id"], id.as_str());
    // A restore by request, into a --target topology named by its cluster.
    let (code, text) = http(
        "POST",
        &serve.url("/v1/clusters/sandbox/restores"),
        Some(TOKEN),
        Some("{\"target\": \"/etc/passwd\"}"),
    );
    assert_eq!(
        code, 400,
        "a target is a known cluster, never a path: {text}"
    );
    let restore = serve.post(
        "/v1/clusters/sandbox/restores",
        &format!("{{\"target\": \"sandbox\", \"backup\": \"{id}\", \"overwrite\": true}}"),
    );
    let restored = serve.wait(&restore);
    assert_eq!(restored["status"], "succeeded", "{restored}");
    assert_eq!(restored["result"]["kind"], "restore");
    assert_eq!(restored["result"]["quality"]["score"], 1.0);
    assert_eq!(restored["result"]["shards"].as_object().unwrap().len(), 2);
    // The history is in the repository: the command line reads it too.
    let run = support::shardcut(&["history", "-t", plain.to_str().unwrap(), "--json"]);
    assert_eq!(run.code, 0, "{run:?}");
    let recorded = run.json();
    for job in [&first, &second] {
        assert!(
            recorded["jobs"]
                .as_array()
                .unwrap()
                .iter()
                .any(|j| j["id"] == job.as_str()),
            "{job} in the history"
        );
    }

    // SIGTERM while a backup runs: the backup finishes, then the service
    // stops.
    let graceful = serve.post("/v1/clusters/sandbox/backups", "{}");
    assert!(serve.terminate().success());

    // SIGTERM while a backup outlasts --shutdown-timeout: it is cancelled,
    // recorded as failed, and the service stops within the bound.
    let serve = Serve::start(
        dir.path(),
        "cancelled",
        &plain,
        &["--test-hold-block", "20s", "--shutdown-timeout", "1s"],
    );
    let j = serve.get(&format!("/v1/jobs/{graceful}"));
    assert_eq!(j["status"], "succeeded", "finished before the stop: {j}");
    let cancelled = serve.post("/v1/clusters/sandbox/backups", "{}");
    wait_for_block(&serve);
    let stopping = Instant::now();
    assert!(serve.terminate().success());
    assert!(
        stopping.elapsed() < Duration::from_secs(15),
        "stopped within the bound, not after the 20 s block: {:?}",
        stopping.elapsed()
    );
    write_on_every_shard(&source);

    // 3. SIGKILL while the write block is held: the next start marks the
    // job failed, lists no partial backup, and no shard stays blocked.
    let serve = Serve::start(dir.path(), "killed", &plain, &["--test-hold-block", "2s"]);
    let j = serve.get(&format!("/v1/jobs/{cancelled}"));
    assert_eq!(j["status"], "failed", "{j}");
    assert!(j["error"].as_str().unwrap().contains("cancelled"), "{j}");
    assert!(
        !dir.path()
            .join("repo/backups")
            .join(j["backup_id"].as_str().unwrap())
            .exists(),
        "the cancelled backup's objects are removed"
    );
    let killed = serve.post("/v1/clusters/sandbox/backups", "{}");
    wait_for_block(&serve);
    let mut serve = serve;
    serve.child.kill().unwrap();
    serve.child.wait().unwrap();
    drop(serve);
    write_on_every_shard(&source);
    let serve = Serve::start(dir.path(), "restarted", &plain, &[]);
    let j = serve.get(&format!("/v1/jobs/{killed}"));
    assert_eq!(j["status"], "failed", "{j}");
    assert!(j["error"].as_str().unwrap().contains("interrupted"), "{j}");
    let partial = j["backup_id"].as_str().unwrap();
    let listed = serve.get("/v1/clusters/sandbox/backups");
    assert!(
        listed["backups"]
            .as_array()
            .unwrap()
            .iter()
            .all(|b| b["backup_id"] != partial),
        "no partial backup listed: {listed}"
    );
    assert!(
        !dir.path().join("repo/backups").join(partial).exists(),
        "the partial backup's objects are removed"
    );
    // And the service still takes backups (the dead run's lock is taken over).
    let again = serve.post("/v1/clusters/sandbox/backups", "{}");
    assert_eq!(serve.wait(&again)["status"], "succeeded", "{}", serve.log());
}

#[test]
fn serve_speaks_https_with_its_certificate_and_refuses_to_start_in_clear_by_default() {
    let dir = tempfile::tempdir().unwrap();
    let topology = support::topology_variant(&support::sandbox_topology(), dir.path(), &[]);
    let token = dir.path().join("token");
    std::fs::write(&token, TOKEN).unwrap();
    // Neither TLS nor --insecure: refused, exit 2, with the way out.
    let run = support::shardcut(&[
        "serve",
        "-t",
        topology.to_str().unwrap(),
        "--listen",
        "127.0.0.1:0",
        "--token-file",
        token.to_str().unwrap(),
    ]);
    assert_eq!(run.code, 2, "{run:?}");
    assert!(run.stderr.contains("--insecure"), "{run:?}");
    // A short token: refused.
    std::fs::write(dir.path().join("short"), "abc").unwrap();
    let run = support::shardcut(&[
        "serve",
        "-t",
        topology.to_str().unwrap(),
        "--listen",
        "127.0.0.1:0",
        "--token-file",
        dir.path().join("short").to_str().unwrap(),
        "--insecure",
    ]);
    assert_eq!(run.code, 2, "{run:?}");
    assert!(run.stderr.contains("shorter than 16"), "{run:?}");

    let certs = support::tls_certs(&dir.path().join("tls"));
    let port = support::free_port();
    let mut child = Command::new(support::bin("shardcut"))
        .args(["serve", "-t", topology.to_str().unwrap()])
        .args(["--listen", &format!("127.0.0.1:{port}")])
        .args(["--token-file", token.to_str().unwrap()])
        .args(["--tls-cert", certs.join("server.pem").to_str().unwrap()])
        .args(["--tls-key", certs.join("server.key").to_str().unwrap()])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let https = |path: &str, auth: bool| {
        let mut cmd = Command::new("curl");
        cmd.args([
            "-s",
            "-o",
            "/dev/null",
            "-w",
            "%{http_code}",
            "--max-time",
            "10",
        ])
        .args(["--cacert", certs.join("ca.pem").to_str().unwrap()])
        .args(["--resolve", &format!("localhost:{port}:127.0.0.1")]);
        if auth {
            cmd.args(["-H", &format!("Authorization: Bearer {TOKEN}")]);
        }
        let out = cmd
            .arg(format!("https://localhost:{port}{path}"))
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let deadline = Instant::now() + Duration::from_secs(30);
    while https("/healthz", false) != "200" {
        assert!(Instant::now() < deadline, "no HTTPS answer");
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(https("/v1/jobs", true), "200");
    assert_eq!(https("/v1/jobs", false), "401");
    let (code, _) = http(
        "GET",
        &format!("http://127.0.0.1:{port}/healthz"),
        None,
        None,
    );
    assert_ne!(code, 200, "no answer in clear on the HTTPS port");
    let _ = child.kill();
    let _ = child.wait();
}

/// The value of the first sample of `name` in the service's metrics.
fn metric(serve: &Serve, name: &str) -> Option<f64> {
    let (code, text) = http("GET", &serve.url("/metrics"), None, None);
    assert_eq!(code, 200);
    support::parse_prometheus(&text)
        .into_iter()
        .find(|s| s.name == name)
        .map(|s| s.value)
}

#[test]
fn capture_followed_by_the_service_is_restarted_until_its_shard_answers() {
    let dir = tempfile::tempdir().unwrap();
    let source = PrivateSandbox::up(1, 0, "ready");
    let topology = topology_with(
        &source.topology(),
        dir.path(),
        "follow.yaml",
        "schedule:\n  capture: follow\n",
    );
    // The shard is down when the service starts: capture cannot start.
    source.stop("mysql-0");
    let serve = Serve::start(dir.path(), "follow", &topology, &[]);
    let deadline = Instant::now() + Duration::from_secs(60);
    while metric(&serve, "shardcut_capture_restarts").unwrap_or(0.0) < 1.0 {
        assert!(
            Instant::now() < deadline,
            "capture never restarted:\n{}",
            serve.log()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    assert_eq!(metric(&serve, "shardcut_capture_up"), Some(0.0));
    let (_, page) = http("GET", &serve.url("/"), Some(TOKEN), None);
    assert!(page.contains("stopped: "), "the dashboard says why");
    // Back up: the next restart captures, and its lag is measured.
    source.start("mysql-0");
    let deadline = Instant::now() + Duration::from_secs(90);
    while metric(&serve, "shardcut_capture_up") != Some(1.0)
        || metric(&serve, "shardcut_capture_lag_seconds").is_none()
    {
        assert!(
            Instant::now() < deadline,
            "capture never came up:\n{}",
            serve.log()
        );
        std::thread::sleep(Duration::from_millis(500));
    }
    assert!(
        dir.path().join("repo/capture/mysql-0").exists(),
        "capture stores into the repository"
    );
    // Down while capture runs: capture retries the stream without ending,
    // and the metrics say so (it was `up` with no lag before).
    source.stop("mysql-0");
    let deadline = Instant::now() + Duration::from_secs(60);
    while metric(&serve, "shardcut_capture_failing") != Some(1.0) {
        assert!(
            Instant::now() < deadline,
            "the stream never showed failing:\n{}",
            serve.log()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    assert_eq!(metric(&serve, "shardcut_capture_up"), Some(0.0));
    source.start("mysql-0");
    // SIGTERM: capture finishes its round and the service stops cleanly.
    assert!(serve.terminate().success());
}

/// A second service starting on the repository while the first one's
/// backup runs, on a machine of the same host name (two VMs cloned with
/// their name, or no /etc/hostname on either; here the first passes for
/// another machine by a test hook): the first one's job record looks like
/// one of this host's from an earlier boot. The second service
/// took the job for one whose process had died with that boot, and
/// removed the backup's objects while the first service was still writing
/// it; the first then committed a manifest naming chunks that were gone.
/// Now the job's process holds the repository lock, so the job is left to
/// it, and looked at again once that lock would have been renewed: left
/// if it was, recovered if not.
#[test]
fn a_backup_running_on_a_machine_of_the_same_name_is_left_to_it() {
    use mysql_async::prelude::Queryable;
    let source = PrivateSandbox::up(1, 0, "ready");
    let dir = tempfile::tempdir().unwrap();
    let topo = topology_with(&source.topology(), dir.path(), "t.yaml", "");
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let t = support::db::topology(&topo);
        let mut c = support::db::mysql(&t.shards[0], None).await;
        // Large enough that its chunks are objects of their own, written
        // while the schema read is held.
        c.query_drop(
            "CREATE DATABASE big; CREATE TABLE big.t (id INT PRIMARY KEY, v VARCHAR(64)); \
             USE big; INSERT INTO big.t SELECT seq, REPEAT('x', 60) FROM seq_1_to_200000",
        )
        .await
        .unwrap();
    });
    let first = Serve::start_env(
        dir.path(),
        "first",
        &topo,
        &[],
        &[
            ("SHARDCUT_TEST_SCHEMA_PAUSE_MS", "15000"),
            ("SHARDCUT_TEST_BOOT_ID", "the-other-machine"),
        ],
    );
    let repo = dir.path().join("repo");
    let (job, backup, folder) = paused_backup(&first, &repo);
    let written = walk(&folder).len();
    let second = Serve::start(dir.path(), "second", &topo, &[]);
    assert!(
        second.log().contains(&format!("job {job}: its process"))
            && second.log().contains("it holds the repository lock"),
        "{}",
        second.log()
    );
    assert!(
        walk(&folder).len() >= written,
        "the running backup's objects were removed:\n{}",
        second.log()
    );
    let done = first.wait(&job);
    assert_eq!(done["status"], "succeeded", "{done}\n{}", first.log());
    let run = support::shardcut(&["verify", "--backup", &backup, "-t", topo.to_str().unwrap()]);
    assert_eq!(run.code, 0, "{run:?}\n{}", second.log());
    drop(second);

    // The other machine's service dies while its job is left to it: once
    // its lock is not renewed, the job is recovered after all (marked
    // failed, its objects removed).
    let (job, backup, folder) = paused_backup(&first, &repo);
    let third = Serve::start(dir.path(), "third", &topo, &[]);
    assert!(
        third.log().contains(&format!("job {job}: its process")),
        "{}",
        third.log()
    );
    drop(first);
    let deadline = Instant::now() + Duration::from_secs(120);
    let record = loop {
        let j = third.get(&format!("/v1/jobs/{job}"));
        if j["status"] != "running" {
            break j;
        }
        assert!(
            Instant::now() < deadline,
            "never recovered: {j}\n{}",
            third.log()
        );
        std::thread::sleep(Duration::from_millis(500));
    };
    assert_eq!(record["status"], "failed", "{record}");
    assert!(
        record["error"]
            .as_str()
            .unwrap_or("")
            .contains("interrupted"),
        "{record}"
    );
    let left = walk(&folder);
    assert!(
        left.is_empty(),
        "backup {backup}'s objects stay: {left:?}\n{}",
        third.log()
    );
}

/// Starts a backup on `serve` (held in its schema read) and waits until
/// it has written a chunk: the job, its backup and the backup's folder in
/// `repo`.
fn paused_backup(serve: &Serve, repo: &Path) -> (String, String, PathBuf) {
    let job = serve.post("/v1/clusters/sandbox/backups", "{}");
    let record_path = repo.join(format!("history/sandbox/jobs/{job}.json"));
    let deadline = Instant::now() + Duration::from_secs(30);
    let (backup, folder) = loop {
        let record: serde_json::Value = std::fs::read(&record_path)
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())
            .unwrap_or_default();
        if let Some(id) = record["backup_id"].as_str() {
            let folder = repo.join("backups").join(id);
            if walk(&folder)
                .iter()
                .any(|f| f.to_string_lossy().contains("big"))
            {
                break (id.to_string(), folder);
            }
        }
        assert!(
            Instant::now() < deadline,
            "no chunk written:\n{}",
            serve.log()
        );
        std::thread::sleep(Duration::from_millis(100));
    };
    let record: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&record_path).unwrap()).unwrap();
    assert_eq!(record["status"], "running", "{record}");
    assert_eq!(record["boot"], "the-other-machine", "{record}");
    (job, backup, folder)
}

/// Every file below `dir`.
fn walk(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut todo = vec![dir.to_path_buf()];
    while let Some(d) = todo.pop() {
        for e in std::fs::read_dir(&d).into_iter().flatten().flatten() {
            let p = e.path();
            if p.is_dir() {
                todo.push(p);
            } else {
                out.push(p);
            }
        }
    }
    out
}
