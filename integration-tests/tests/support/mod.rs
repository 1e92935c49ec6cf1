//! Helpers shared by the integration tests: the shared sandbox, private
//! sandboxes for fault tests, and running the `shardcut` binary.

#![allow(dead_code)]

pub mod db;

use std::collections::BTreeSet;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::{Mutex, PoisonError};

/// The repository root.
pub fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// The directory of the shared, seeded sandbox started by `scripts/test`.
pub fn sandbox() -> PathBuf {
    let dir = std::env::var_os("SHARDCUT_SANDBOX").expect(
        "SHARDCUT_SANDBOX is not set: run the integration tests with scripts/test, \
         which starts the sandbox servers they need",
    );
    PathBuf::from(dir)
}

pub fn sandbox_topology() -> PathBuf {
    sandbox().join("topology.yaml")
}

/// A built binary of the workspace, next to the test executable's directory.
pub fn bin(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("current test executable");
    let dir = exe
        .parent()
        .and_then(Path::parent)
        .expect("test executable lives in target/<profile>/deps");
    let path = dir.join(name);
    assert!(
        path.exists(),
        "{} not built: run `cargo build --workspace` first (scripts/test does)",
        path.display()
    );
    path
}

/// The result of running a command: exit code, stdout, stderr.
pub struct Run {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

impl Run {
    pub fn from(out: Output) -> Self {
        Run {
            code: out.status.code().unwrap_or(-1),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        }
    }

    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.stdout).unwrap_or_else(|e| {
            panic!(
                "stdout is not one JSON document ({e}):\n{}\nstderr:\n{}",
                self.stdout, self.stderr
            )
        })
    }

    pub fn all(&self) -> String {
        format!("{}{}", self.stdout, self.stderr)
    }
}

impl std::fmt::Debug for Run {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "exit {}\n--- stdout\n{}\n--- stderr\n{}",
            self.code, self.stdout, self.stderr
        )
    }
}

pub fn shardcut(args: &[&str]) -> Run {
    let out = Command::new(bin("shardcut"))
        .args(args)
        .output()
        .expect("run shardcut");
    Run::from(out)
}

fn sandbox_script(args: &[&str]) -> Run {
    let out = Command::new(root().join("scripts/sandbox"))
        .args(args)
        .output()
        .expect("run scripts/sandbox");
    Run::from(out)
}

/// Certificates `scripts/tls-certs` generates into `dir` (a test CA, a
/// server certificate for `localhost` only, a client certificate, and an
/// unrelated CA with its own client certificate); returns `dir`.
pub fn tls_certs(dir: &Path) -> PathBuf {
    let out = Command::new(root().join("scripts/tls-certs"))
        .arg(dir)
        .output()
        .expect("run scripts/tls-certs");
    let run = Run::from(out);
    assert_eq!(run.code, 0, "scripts/tls-certs failed: {run:?}");
    dir.to_path_buf()
}

/// A TCP port on 127.0.0.1 for a test's own listener, free when asked.
///
/// Chosen at random in 5000..9999, below the ports `scripts/s3` (10000 and
/// up) and `scripts/sandbox` (20000 and up) choose, and below the kernel's
/// ephemeral range: a port from that range could be taken by any outgoing
/// connection between this check and the listener's start. Ports handed
/// out are kept for the life of the test process, so two tests never get
/// one port.
pub fn free_port() -> u16 {
    use std::hash::{BuildHasher, Hasher};
    static HANDED_OUT: Mutex<BTreeSet<u16>> = Mutex::new(BTreeSet::new());
    let mut handed_out = HANDED_OUT.lock().unwrap_or_else(PoisonError::into_inner);
    for _ in 0..1000 {
        let mut h = std::collections::hash_map::RandomState::new().build_hasher();
        h.write_usize(handed_out.len());
        let port = 5000 + (h.finish() % 5000) as u16;
        if !handed_out.contains(&port) && TcpListener::bind(("127.0.0.1", port)).is_ok() {
            handed_out.insert(port);
            return port;
        }
    }
    panic!("no free port on 127.0.0.1 in 5000..9999 not handed out already");
}

/// A sandbox of a test's own, on its own ports, torn down when dropped.
pub struct PrivateSandbox {
    dir: tempfile::TempDir,
}

impl PrivateSandbox {
    /// Starts `mysql` MariaDB and `postgres` PostgreSQL instances with
    /// `profile` (`ready` or `bare`). `scripts/sandbox` chooses ports that are
    /// free and claimed by no other sandbox, so tests run in parallel with
    /// each other and with sandboxes already running (the demo's).
    pub fn up(mysql: u32, postgres: u32, profile: &str) -> Self {
        Self::up_with(mysql, postgres, profile, &[])
    }

    /// As [`PrivateSandbox::up`], with TLS on every server: certificates
    /// from `scripts/tls-certs` in `dir()/tls` (the servers' name is
    /// `localhost` only).
    pub fn up_tls(mysql: u32, postgres: u32, profile: &str) -> Self {
        Self::up_with(mysql, postgres, profile, &["--tls"])
    }

    fn up_with(mysql: u32, postgres: u32, profile: &str, extra: &[&str]) -> Self {
        let dir = tempfile::Builder::new()
            .prefix("shardcut-it.")
            .tempdir()
            .expect("temp dir");
        let path = dir.path().to_str().expect("utf-8 temp path").to_string();
        let (my, pg) = (mysql.to_string(), postgres.to_string());
        let mut args = vec![
            "up",
            "--dir",
            &path,
            "--mysql",
            &my,
            "--postgres",
            &pg,
            "--profile",
            profile,
        ];
        args.extend_from_slice(extra);
        let run = sandbox_script(&args);
        let sandbox = PrivateSandbox { dir };
        assert_eq!(run.code, 0, "sandbox up failed: {run:?}");
        sandbox
    }

    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    pub fn topology(&self) -> PathBuf {
        self.dir.path().join("topology.yaml")
    }

    /// The sandbox's first shard, as its topology describes it.
    pub fn first_shard(&self) -> topology::Shard {
        db::topology(&self.topology()).shards.swap_remove(0)
    }

    pub fn stop(&self, shard: &str) {
        let dir = self.dir().to_str().expect("utf-8").to_string();
        let run = sandbox_script(&["stop-one", "--dir", &dir, "--shard", shard]);
        assert_eq!(run.code, 0, "stop-one failed: {run:?}");
    }
}

impl PrivateSandbox {
    pub fn start(&self, shard: &str) {
        let dir = self.dir().to_str().expect("utf-8").to_string();
        let run = sandbox_script(&["start-one", "--dir", &dir, "--shard", shard]);
        assert_eq!(run.code, 0, "start-one failed: {run:?}");
    }
}

impl Drop for PrivateSandbox {
    fn drop(&mut self) {
        if let Some(dir) = self.dir.path().to_str() {
            let run = sandbox_script(&["down", "--dir", dir]);
            if run.code != 0 {
                eprintln!("warning: private sandbox teardown failed: {run:?}");
            }
        }
    }
}

/// A password of the shared sandbox, to prove it never shows up in output.
pub fn sandbox_password(shard: &str) -> String {
    std::fs::read_to_string(sandbox().join("secrets").join(format!("{shard}.password")))
        .expect("sandbox password file")
        .trim_end()
        .to_string()
}

/// A copy of the topology at `src`, written into `dir`, with the repository
/// moved to `dir/repo` (so tests never contend for one repository lock) and
/// each `(from, to)` text replacement applied.
pub fn topology_variant(src: &Path, dir: &Path, replace: &[(&str, &str)]) -> PathBuf {
    let mut text = std::fs::read_to_string(src).expect("read topology");
    let repo_line = text
        .lines()
        .find(|l| l.starts_with("repository:"))
        .expect("repository line")
        .to_string();
    text = text.replace(
        &repo_line,
        &format!("repository: {}", dir.join("repo").display()),
    );
    for (from, to) in replace {
        assert!(text.contains(from), "`{from}` not in the topology");
        text = text.replace(from, to);
    }
    let path = dir.join("topology.yaml");
    std::fs::write(&path, text).expect("write topology");
    path
}

/// The finding `item` of the first shard in a `check --json` run (null
/// when there is none).
pub fn first_shard_finding(run: &Run, item: &str) -> serde_json::Value {
    run.json()["shards"][0]["report"]["findings"]
        .as_array()
        .and_then(|all| all.iter().find(|f| f["item"] == item).cloned())
        .unwrap_or_default()
}

/// Adds `lines` (YAML keys of a shard, each line indented as one) to
/// every shard of the topology at `path`.
pub fn add_to_every_shard(path: &Path, lines: &str) {
    let mut text = String::new();
    for line in std::fs::read_to_string(path)
        .expect("read topology")
        .lines()
    {
        text.push_str(line);
        text.push('\n');
        if line.trim_start().starts_with("password_file:") {
            text.push_str(lines);
        }
    }
    assert!(text.contains(lines), "no shard in {}", path.display());
    std::fs::write(path, text).expect("write topology");
}

/// A private sandbox of `mysql` MariaDB and `postgres` PostgreSQL shards,
/// and a topology of it in a temporary directory of its own (its
/// repository there too): the sandbox, the directory, the topology's path
/// and the topology.
pub fn private_cluster(
    mysql: u32,
    postgres: u32,
) -> (
    PrivateSandbox,
    tempfile::TempDir,
    PathBuf,
    topology::Topology,
) {
    let sb = PrivateSandbox::up(mysql, postgres, "ready");
    let dir = tempfile::tempdir().expect("temp dir");
    let path = topology_variant(&sb.topology(), dir.path(), &[]);
    let topo = db::topology(&path);
    (sb, dir, path, topo)
}

/// The manifest of backup `id` as `shardcut show --json` prints it.
pub fn manifest(topology: &Path, id: &str) -> shard_agent::manifest::Manifest {
    let run = shardcut(&[
        "show",
        id,
        "-t",
        topology.to_str().expect("utf-8"),
        "--json",
    ]);
    assert_eq!(run.code, 0, "{run:?}");
    serde_json::from_str(&run.stdout).expect("manifest JSON")
}

/// Runs shardcut without blocking the async runtime.
pub async fn shardcut_async(args: &[&str]) -> Run {
    let out = tokio::process::Command::new(bin("shardcut"))
        .args(args)
        .output()
        .await
        .expect("run shardcut");
    Run::from(out)
}

/// As [`shardcut_async`], with `env` added to shardcut's environment.
pub async fn shardcut_env_async(args: &[&str], env: &[(&str, &str)]) -> Run {
    let out = tokio::process::Command::new(bin("shardcut"))
        .args(args)
        .envs(env.iter().copied())
        .output()
        .await
        .expect("run shardcut");
    Run::from(out)
}

/// Takes a backup of the cluster at `topology`; returns its ID (the
/// backup must succeed).
pub async fn backup_id(topology: &str) -> String {
    let run = shardcut_async(&["backup", "-t", topology, "--json"]).await;
    assert_eq!(run.code, 0, "{run:?}");
    run.json()["backup_id"]
        .as_str()
        .expect("backup_id in the JSON")
        .to_string()
}

/// The S3-compatible store `scripts/test` starts beside the sandbox
/// (`scripts/s3 up --dir SANDBOX`): its endpoint and credential files.
pub struct ObjectStore {
    pub endpoint: String,
    pub access_key_file: PathBuf,
    pub secret_key_file: PathBuf,
    /// The CA of a store serving HTTPS (`scripts/s3 up --tls`).
    pub ca_file: Option<PathBuf>,
}

impl ObjectStore {
    pub fn get() -> Self {
        Self::of(&sandbox())
    }

    /// The store `scripts/s3 up --dir DIR` started.
    pub fn of(dir: &Path) -> Self {
        let env = dir.join("s3/env");
        let text = std::fs::read_to_string(&env).unwrap_or_else(|e| {
            panic!(
                "no object store at {}: {e}; start one with scripts/s3 up --dir $SHARDCUT_SANDBOX (scripts/test does)",
                env.display()
            )
        });
        let var = |name: &str| {
            text.lines()
                .find_map(|l| l.strip_prefix(&format!("{name}=")))
                .unwrap_or_else(|| panic!("{name} missing from {}", env.display()))
                .to_string()
        };
        ObjectStore {
            endpoint: var("S3_ENDPOINT"),
            access_key_file: var("S3_ACCESS_KEY_FILE").into(),
            secret_key_file: var("S3_SECRET_KEY_FILE").into(),
            ca_file: text
                .lines()
                .find_map(|l| l.strip_prefix("S3_CA_FILE="))
                .map(PathBuf::from),
        }
    }

    /// The YAML of a `repository:` mapping for `s3://BUCKET/PREFIX`, with
    /// `extra` lines (already indented by two spaces) appended.
    pub fn repository_yaml(&self, bucket: &str, prefix: &str, extra: &str) -> String {
        format!(
            "repository:\n  url: s3://{bucket}/{prefix}\n  endpoint: {}\n  access_key_file: {}\n  secret_key_file: {}\n{extra}",
            self.endpoint,
            self.access_key_file.display(),
            self.secret_key_file.display()
        )
    }

    /// The YAML of a `replicas:` list with one replica `name` in
    /// `s3://BUCKET/PREFIX`, with `extra` lines (indented by four spaces).
    pub fn replica_yaml(&self, name: &str, bucket: &str, prefix: &str, extra: &str) -> String {
        format!(
            "replicas:\n  - name: {name}\n    url: s3://{bucket}/{prefix}\n    endpoint: {}\n    access_key_file: {}\n    secret_key_file: {}\n{extra}",
            self.endpoint,
            self.access_key_file.display(),
            self.secret_key_file.display()
        )
    }

    /// The bucket's objects below `prefix`, as stored (raw bytes).
    pub fn repository(&self, bucket: &str, prefix: &str) -> shard_agent::repo::S3Repository {
        let read = |p: &Path| {
            std::fs::read_to_string(p)
                .expect("credential file")
                .trim()
                .to_string()
        };
        shard_agent::repo::S3Repository::open(&topology::S3Location {
            bucket: bucket.to_string(),
            prefix: prefix.to_string(),
            endpoint: Some(self.endpoint.clone()),
            region: "us-east-1".to_string(),
            access_key: topology::Secret::new(read(&self.access_key_file)),
            secret_key: topology::Secret::new(read(&self.secret_key_file)),
            session_token: None,
            ca_pem: self
                .ca_file
                .as_ref()
                .map(|p| std::fs::read_to_string(p).expect("the store's CA")),
        })
        .expect("open the bucket")
    }
}

/// A store of the test's own, serving HTTPS with a certificate of a CA
/// `scripts/tls-certs` made (`scripts/s3 up --tls`); stopped on drop.
pub struct TlsObjectStore {
    dir: tempfile::TempDir,
    pub store: ObjectStore,
}

impl TlsObjectStore {
    pub fn up() -> Self {
        let dir = tempfile::tempdir().expect("a directory for the store");
        let out = Command::new(root().join("scripts/s3"))
            .args(["up", "--dir"])
            .arg(dir.path())
            .args(["--buckets", "tls", "--tls"])
            .stdin(std::process::Stdio::null())
            .output()
            .expect("run scripts/s3");
        assert!(
            out.status.success(),
            "scripts/s3 up --tls: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let store = ObjectStore::of(dir.path());
        TlsObjectStore { dir, store }
    }

    /// The directory of `scripts/tls-certs`' certificates.
    pub fn certs(&self) -> PathBuf {
        self.dir.path().join("s3/tls")
    }
}

impl Drop for TlsObjectStore {
    fn drop(&mut self) {
        let _ = Command::new(root().join("scripts/s3"))
            .args(["down", "--dir"])
            .arg(self.dir.path())
            .stdin(std::process::Stdio::null())
            .output();
    }
}

/// A prefix no other test uses.
pub fn unique_prefix(name: &str) -> String {
    static N: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    format!(
        "{name}-{}-{}-{}",
        std::process::id(),
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_millis())
            .unwrap_or_default(),
        N.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
    )
}

/// Rewrites the topology at `path` so that its repository is `yaml` (a
/// `repository:` mapping as [`ObjectStore::repository_yaml`] writes).
pub fn move_repository(path: &Path, yaml: &str) {
    let text = std::fs::read_to_string(path).expect("read topology");
    let mut out = String::new();
    let mut inside = false;
    for line in text.lines() {
        if line.starts_with("repository:") {
            // The field and its indented lines (a mapping) give way to `yaml`.
            inside = true;
            out.push_str(yaml.trim_end());
            out.push('\n');
            continue;
        }
        if inside && line.starts_with(' ') {
            continue;
        }
        inside = false;
        out.push_str(line);
        out.push('\n');
    }
    std::fs::write(path, out).expect("write topology");
}

/// A new repository key in `dir/name`, made by `shardcut keygen`.
pub fn keygen(dir: &Path, name: &str) -> PathBuf {
    let path = dir.join(name);
    let run = shardcut(&["keygen", "--out", path.to_str().expect("utf-8")]);
    assert_eq!(run.code, 0, "{run:?}");
    path
}

impl PrivateSandbox {
    /// Seeds the sandbox's shards with the shared sandbox's test data.
    pub fn seed(&self) {
        let dir = self.dir().to_str().expect("utf-8").to_string();
        let run = sandbox_script(&["seed", "--dir", &dir]);
        assert_eq!(run.code, 0, "seed failed: {run:?}");
    }
}

/// An HTTP request by curl: the status and the body. `token` goes in an
/// Authorization header; `body` is sent as JSON.
pub fn http(method: &str, url: &str, token: Option<&str>, body: Option<&str>) -> (u16, String) {
    let mut cmd = Command::new("curl");
    cmd.args([
        "-s",
        "-X",
        method,
        "-o",
        "-",
        "-w",
        "\n%{http_code}",
        "--max-time",
        "60",
    ]);
    if let Some(t) = token {
        // From a config on stdin, not the command line.
        cmd.args(["-K", "-"]);
        cmd.stdin(std::process::Stdio::piped());
        let _ = t;
    }
    if let Some(b) = body {
        cmd.args(["-H", "Content-Type: application/json", "--data-binary", b]);
    }
    cmd.arg(url);
    cmd.stdout(std::process::Stdio::piped());
    let mut child = cmd.spawn().expect("run curl");
    if let Some(t) = token {
        use std::io::Write;
        let mut stdin = child.stdin.take().expect("curl stdin");
        writeln!(stdin, "header = \"Authorization: Bearer {t}\"").expect("write curl config");
    }
    let out = child.wait_with_output().expect("curl output");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let (body, code) = text.rsplit_once('\n').unwrap_or(("", &text));
    (
        code.trim()
            .parse()
            .unwrap_or_else(|_| panic!("curl gave no status: {text}")),
        body.to_string(),
    )
}

/// One sample of Prometheus text.
#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    pub name: String,
    pub labels: Vec<(String, String)>,
    pub value: f64,
}

impl Sample {
    pub fn label(&self, name: &str) -> Option<&str> {
        self.labels
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }
}

fn metric_name_ok(s: &str) -> bool {
    let mut c = s.chars();
    matches!(c.next(), Some(f) if f.is_ascii_alphabetic() || f == '_' || f == ':')
        && c.all(|x| x.is_ascii_alphanumeric() || x == '_' || x == ':')
}

fn label_name_ok(s: &str) -> bool {
    let mut c = s.chars();
    matches!(c.next(), Some(f) if f.is_ascii_alphabetic() || f == '_')
        && c.all(|x| x.is_ascii_alphanumeric() || x == '_')
}

/// `a="x",b="y"}` (after the `{`): the labels and the text after `}`.
fn parse_labels<'a>(r: &'a str, line: &str) -> (Vec<(String, String)>, &'a str) {
    let mut labels: Vec<(String, String)> = Vec::new();
    let mut rest = r;
    loop {
        if let Some(after) = rest.strip_prefix('}') {
            return (labels, after);
        }
        let eq = rest
            .find('=')
            .unwrap_or_else(|| panic!("bad labels: {line}"));
        let name = &rest[..eq];
        assert!(label_name_ok(name), "bad label name in {line}");
        let mut chars = rest[eq + 1..]
            .strip_prefix('"')
            .unwrap_or_else(|| panic!("unquoted label value: {line}"))
            .chars();
        let mut value = String::new();
        loop {
            match chars.next() {
                None => panic!("unterminated label value: {line}"),
                Some('\\') => match chars.next() {
                    Some('\\') => value.push('\\'),
                    Some('"') => value.push('"'),
                    Some('n') => value.push('\n'),
                    e => panic!("bad escape {e:?} in {line}"),
                },
                Some('"') => break,
                Some(c) => value.push(c),
            }
        }
        assert!(labels.iter().all(|(n, _)| n != name), "label twice: {line}");
        labels.push((name.to_string(), value));
        rest = chars.as_str();
        if let Some(r2) = rest.strip_prefix(',') {
            rest = r2;
        } else {
            assert!(rest.starts_with('}'), "bad label list: {line}");
        }
    }
}

/// Parses Prometheus text exposition format (0.0.4) strictly, panicking
/// with the line on anything a collector would reject: names and label
/// names by the format's grammar, label values quoted with only `\\`,
/// `\"` and `\n` escapes, values as floats (`NaN`, `+Inf`, `-Inf`), an
/// optional integer timestamp; HELP and TYPE at most once per family and
/// TYPE before its samples; a family's samples together; no series twice;
/// a newline at the end.
pub fn parse_prometheus(text: &str) -> Vec<Sample> {
    use std::collections::HashSet;
    assert!(text.is_empty() || text.ends_with('\n'), "no final newline");
    let mut helped = HashSet::new();
    let mut typed = std::collections::HashMap::new();
    let mut closed: HashSet<String> = HashSet::new();
    let mut current: Option<String> = None;
    let mut seen = HashSet::new();
    let mut samples = Vec::new();
    let family_of = |name: &str, typed: &std::collections::HashMap<String, String>| {
        for suffix in ["_bucket", "_sum", "_count"] {
            if let Some(base) = name.strip_suffix(suffix) {
                if matches!(
                    typed.get(base).map(String::as_str),
                    Some("histogram" | "summary")
                ) {
                    return base.to_string();
                }
            }
        }
        name.to_string()
    };
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix('#') {
            let rest = rest.trim_start();
            if let Some(h) = rest.strip_prefix("HELP ") {
                let name = h.split(' ').next().unwrap_or("");
                assert!(metric_name_ok(name), "bad name in {line}");
                assert!(helped.insert(name.to_string()), "HELP twice: {line}");
            } else if let Some(t) = rest.strip_prefix("TYPE ") {
                let mut parts = t.split(' ');
                let (name, kind) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
                assert!(parts.next().is_none(), "{line}");
                assert!(metric_name_ok(name), "bad name in {line}");
                assert!(
                    ["counter", "gauge", "histogram", "summary", "untyped"].contains(&kind),
                    "bad type in {line}"
                );
                assert!(
                    typed.insert(name.to_string(), kind.to_string()).is_none(),
                    "TYPE twice: {line}"
                );
            }
            continue;
        }
        assert!(!line.trim().is_empty(), "blank line in metrics");
        // name
        let name_end = line
            .find(['{', ' '])
            .unwrap_or_else(|| panic!("no value: {line}"));
        let name = &line[..name_end];
        assert!(metric_name_ok(name), "bad metric name in {line}");
        let (labels, rest) = match line[name_end..].strip_prefix('{') {
            Some(r) => parse_labels(r, line),
            None => (Vec::new(), &line[name_end..]),
        };
        let rest = rest
            .strip_prefix(' ')
            .unwrap_or_else(|| panic!("no space before value: {line}"));
        let mut parts = rest.split(' ');
        let value_text = parts.next().unwrap_or("");
        let value = match value_text {
            "NaN" => f64::NAN,
            "+Inf" => f64::INFINITY,
            "-Inf" => f64::NEG_INFINITY,
            v => v
                .parse::<f64>()
                .unwrap_or_else(|_| panic!("bad value: {line}")),
        };
        if let Some(ts) = parts.next() {
            ts.parse::<i64>()
                .unwrap_or_else(|_| panic!("bad timestamp: {line}"));
        }
        assert!(parts.next().is_none(), "trailing text: {line}");
        let family = family_of(name, &typed);
        assert!(
            typed.contains_key(&family),
            "{family} has no TYPE before its samples"
        );
        assert!(helped.contains(&family), "{family} has no HELP");
        if current.as_deref() != Some(family.as_str()) {
            assert!(
                !closed.contains(&family),
                "samples of {family} are not together: {line}"
            );
            if let Some(c) = current.take() {
                closed.insert(c);
            }
            current = Some(family.clone());
        }
        let mut key: Vec<(String, String)> = labels.clone();
        key.sort();
        assert!(seen.insert((name.to_string(), key)), "series twice: {line}");
        samples.push(Sample {
            name: name.to_string(),
            labels,
            value,
        });
    }
    samples
}
