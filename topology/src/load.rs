//! Reading and validating a topology file.
//!
//! The document is parsed into a YAML value tree and then walked field by
//! field. Every problem is collected (not just the first), located by its
//! path, and reported together; only a document that produced no problem
//! becomes a [`Topology`].

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_yaml_ng::{Mapping, Value};

use crate::duration::parse_duration;
use crate::error::{TopologyError, Violation};
use crate::locate::locate_all;
use crate::model::*;
use crate::secret::Secret;
use crate::url::parse_endpoint;

/// Looks up an environment variable; injected so tests need not mutate the
/// process environment.
pub type EnvLookup<'a> = &'a dyn Fn(&str) -> Option<String>;

impl Topology {
    /// Loads and validates the topology at `path`, resolving secrets from the
    /// process environment and from password files.
    pub fn load(path: &Path) -> Result<Topology, TopologyError> {
        Self::load_with_env(path, &|k| std::env::var(k).ok())
    }

    pub fn load_with_env(path: &Path, env: EnvLookup<'_>) -> Result<Topology, TopologyError> {
        let text = std::fs::read_to_string(path).map_err(|source| TopologyError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        Self::parse(&text, path, env)
    }

    /// Validates `text` as if read from `source` (relative paths in it are
    /// resolved against `source`'s directory).
    pub fn parse(text: &str, source: &Path, env: EnvLookup<'_>) -> Result<Topology, TopologyError> {
        let invalid = |violations| TopologyError::Invalid {
            file: source.to_path_buf(),
            violations,
        };
        let doc: Value = serde_yaml_ng::from_str(text).map_err(|e| {
            invalid(vec![Violation {
                path: String::new(),
                location: e.location().map(|l| (l.line(), l.column())),
                message: format!("not valid YAML: {e}"),
            }])
        })?;
        let base_dir = source
            .parent()
            .map(Path::to_path_buf)
            .unwrap_or_else(|| PathBuf::from("."));
        let mut cx = Checker {
            problems: Vec::new(),
            env,
            base_dir,
        };
        let topology = cx.topology(&doc, source);
        if cx.problems.is_empty() {
            if let Some(t) = topology {
                return Ok(t);
            }
        }
        let positions = locate_all(text);
        let violations = cx
            .problems
            .into_iter()
            .map(|(path, message)| Violation {
                location: position_of(&positions, &path),
                path,
                message,
            })
            .collect();
        Err(invalid(violations))
    }
}

/// The position of `path`, or of its nearest located ancestor (a missing
/// field is reported where its parent stands).
fn position_of(positions: &HashMap<String, (usize, usize)>, path: &str) -> Option<(usize, usize)> {
    let mut p = path;
    loop {
        if let Some(at) = positions.get(p) {
            return Some(*at);
        }
        let cut = p.rfind(['.', '['])?;
        p = &p[..cut];
    }
}

struct Checker<'e> {
    problems: Vec<(String, String)>,
    env: EnvLookup<'e>,
    base_dir: PathBuf,
}

/// A mapping whose keys have been checked against the known field names.
struct Fields<'v> {
    path: String,
    map: &'v Mapping,
}

impl<'v> Fields<'v> {
    fn get(&self, key: &str) -> Option<&'v Value> {
        self.map.get(key).filter(|v| !v.is_null())
    }
    fn at(&self, key: &str) -> String {
        if self.path.is_empty() {
            key.to_string()
        } else {
            format!("{}.{key}", self.path)
        }
    }
}

/// The fields of a repository mapping that only an object store has.
const S3_FIELDS: &[&str] = &[
    "endpoint",
    "region",
    "access_key_env",
    "access_key_file",
    "secret_key_env",
    "secret_key_file",
    "ca_file",
];

fn is_name(s: &str) -> bool {
    let mut chars = s.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_lowercase() || c.is_ascii_digit())
        && chars.all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
        && s.len() <= 63
}

impl Checker<'_> {
    fn problem(&mut self, path: impl Into<String>, message: impl Into<String>) {
        self.problems.push((path.into(), message.into()));
    }

    fn fields<'v>(&mut self, path: &str, value: &'v Value, known: &[&str]) -> Option<Fields<'v>> {
        let Some(map) = value.as_mapping() else {
            self.problem(path, "expected a mapping of fields");
            return None;
        };
        let f = Fields {
            path: path.to_string(),
            map,
        };
        for key in map.keys() {
            match key.as_str() {
                Some(k) if known.contains(&k) => {}
                Some(k) => self.problem(
                    f.at(k),
                    format!("unknown field; expected one of: {}", known.join(", ")),
                ),
                None => self.problem(path, "field names must be strings"),
            }
        }
        Some(f)
    }

    fn string(&mut self, f: &Fields<'_>, key: &str, required: bool) -> Option<String> {
        match f.get(key) {
            None => {
                if required {
                    self.problem(f.at(key), "required field missing");
                }
                None
            }
            Some(Value::String(s)) => Some(s.clone()),
            Some(_) => {
                self.problem(f.at(key), "expected a string");
                None
            }
        }
    }

    fn name(&mut self, f: &Fields<'_>, key: &str) -> Option<String> {
        let s = self.string(f, key, true)?;
        if is_name(&s) {
            Some(s)
        } else {
            self.problem(
                f.at(key),
                format!(
                    "`{s}` is not a valid name; use [a-z0-9][a-z0-9-]* (at most 63 characters)"
                ),
            );
            None
        }
    }

    fn string_list(&mut self, f: &Fields<'_>, key: &str) -> Option<Vec<String>> {
        let v = f.get(key)?;
        let Some(seq) = v.as_sequence() else {
            self.problem(f.at(key), "expected a list of strings");
            return None;
        };
        let mut out = Vec::new();
        for (i, item) in seq.iter().enumerate() {
            match item.as_str() {
                Some(s) if !s.is_empty() => {
                    if out.iter().any(|o| o == s) {
                        self.problem(format!("{}[{i}]", f.at(key)), format!("`{s}` listed twice"));
                    }
                    out.push(s.to_string());
                }
                _ => self.problem(format!("{}[{i}]", f.at(key)), "expected a non-empty string"),
            }
        }
        Some(out)
    }

    fn duration(&mut self, f: &Fields<'_>, key: &str, default: Duration) -> Duration {
        let Some(text) = self.string(f, key, false) else {
            if f.get(key).is_some() {
                return default;
            }
            return default;
        };
        match parse_duration(&text) {
            Ok(d) if d.is_zero() => {
                self.problem(f.at(key), "must be greater than zero");
                default
            }
            Ok(d) => d,
            Err(e) => {
                self.problem(f.at(key), e);
                default
            }
        }
    }

    fn topology(&mut self, doc: &Value, source: &Path) -> Option<Topology> {
        let f = self.fields(
            "",
            doc,
            &[
                "version",
                "cluster",
                "repository",
                "replicas",
                "defaults",
                "shards",
                "timezone",
                "schedule",
                "drill_target",
            ],
        )?;
        if let Some(v) = f.get("version") {
            if v.as_u64() != Some(u64::from(FORMAT_VERSION)) {
                self.problem(
                    "version",
                    format!("this build reads topology format version {FORMAT_VERSION}"),
                );
            }
        }
        let cluster = self.name(&f, "cluster");
        let repository = self.repository(&f);
        let replicas = self.replicas(&f);
        let defaults = match f.get("defaults") {
            Some(v) => self.defaults(v),
            None => Some(Defaults::default()),
        };
        let shards = self.shards(&f, defaults.as_ref());
        let timezone = self.timezone(&f);
        let schedule = match f.get("schedule") {
            Some(v) => self.schedule(v).map(Some),
            None => Some(None),
        };
        let drill_target = self
            .string(&f, "drill_target", false)
            .map(|p| self.path(&p));
        let wants_drill = f
            .get("schedule")
            .and_then(|v| v.as_mapping())
            .is_some_and(|m| m.get("drill").is_some_and(|d| !d.is_null()));
        if wants_drill && drill_target.is_none() {
            self.problem(
                "drill_target",
                "required when schedule.drill is set: the scratch servers' topology file",
            );
        }
        Some(Topology {
            source: source.to_path_buf(),
            cluster: cluster?,
            repository: repository?,
            replicas: replicas?,
            defaults: defaults?,
            shards: shards?,
            timezone: timezone?,
            schedule: schedule?,
            drill_target,
        })
    }

    fn timezone(&mut self, f: &Fields<'_>) -> Option<chrono_tz::Tz> {
        let Some(text) = self.string(f, "timezone", false) else {
            return f.get("timezone").is_none().then_some(chrono_tz::Tz::UTC);
        };
        match text.parse::<chrono_tz::Tz>() {
            Ok(tz) => Some(tz),
            Err(_) => {
                self.problem(
                    "timezone",
                    format!("`{text}` is not an IANA timezone name (such as UTC or Europe/Berlin)"),
                );
                None
            }
        }
    }

    /// `schedule:`: cron expressions per job kind, `capture: follow`, and
    /// what a scheduled expiry keeps.
    fn schedule(&mut self, v: &Value) -> Option<Schedule> {
        let f = self.fields(
            "schedule",
            v,
            &[
                "backup",
                "incremental",
                "drill",
                "expire",
                "capture",
                "keep_last",
                "keep_within",
            ],
        )?;
        let mut ok = true;
        let mut cron = |c: &mut Self, key: &str| -> Option<CronSpec> {
            let text = c.string(&f, key, false)?;
            match CronSpec::parse(&text) {
                Ok(spec) => Some(spec),
                Err(e) => {
                    c.problem(f.at(key), e);
                    ok = false;
                    None
                }
            }
        };
        let backup = cron(self, "backup");
        let incremental = cron(self, "incremental");
        let drill = cron(self, "drill");
        let expire = cron(self, "expire");
        let capture = match self.string(&f, "capture", false).as_deref() {
            None => CaptureSchedule::Off,
            Some("follow") => CaptureSchedule::Follow,
            Some("off") => CaptureSchedule::Off,
            Some(other) => {
                self.problem(
                    f.at("capture"),
                    format!("`{other}`: expected follow or off"),
                );
                ok = false;
                CaptureSchedule::Off
            }
        };
        let keep_last = match f.get("keep_last") {
            None => DEFAULT_KEEP_LAST,
            Some(v) => match v.as_u64() {
                Some(n) if n >= 1 => usize::try_from(n).unwrap_or(usize::MAX),
                _ => {
                    self.problem(
                        f.at("keep_last"),
                        "expected a whole number of at least 1 (expire never deletes every backup)",
                    );
                    ok = false;
                    DEFAULT_KEEP_LAST
                }
            },
        };
        let keep_within = f
            .get("keep_within")
            .map(|_| self.duration(&f, "keep_within", Duration::ZERO));
        ok.then_some(Schedule {
            backup,
            incremental,
            drill,
            expire,
            capture,
            keep_last,
            keep_within,
        })
    }

    /// `repository:` is a directory (a path or `file://` URL), or a mapping
    /// with `url` (a directory or `s3://bucket/prefix`), the object store's
    /// fields and `encryption`.
    fn repository(&mut self, f: &Fields<'_>) -> Option<RepositoryConfig> {
        match f.get("repository") {
            Some(Value::Mapping(_)) => {}
            _ => {
                let text = self.string(f, "repository", true)?;
                let location = match text.strip_prefix("s3://") {
                    // The AWS conventions give the rest.
                    Some(rest) => {
                        let empty = Mapping::new();
                        let r = Fields {
                            path: "repository".to_string(),
                            map: &empty,
                        };
                        RepositoryLocation::S3(self.s3_location(&r, rest)?)
                    }
                    None => self.local_repository("repository", &text)?,
                };
                return Some(RepositoryConfig {
                    location,
                    encryption: None,
                });
            }
        }
        let value = f.get("repository")?;
        self.repository_mapping("repository", value, &[])
    }

    /// Further repositories a `copy` keeps up to date (other regions):
    /// each a `name` and the fields of a `repository:` mapping.
    fn replicas(&mut self, f: &Fields<'_>) -> Option<Vec<Replica>> {
        let Some(v) = f.get("replicas") else {
            return Some(Vec::new());
        };
        let Some(seq) = v.as_sequence() else {
            self.problem(
                "replicas",
                "expected a list of repositories, each with a name",
            );
            return None;
        };
        let mut out: Vec<Replica> = Vec::new();
        let mut ok = true;
        for (i, item) in seq.iter().enumerate() {
            let at = format!("replicas[{i}]");
            let name = item
                .as_mapping()
                .and_then(|m| m.get("name"))
                .and_then(Value::as_str)
                .map(str::to_string);
            let name = match name {
                Some(n) if is_name(&n) => n,
                Some(n) => {
                    self.problem(
                        format!("{at}.name"),
                        format!("`{n}` is not a valid name; use [a-z0-9][a-z0-9-]* (at most 63 characters)"),
                    );
                    ok = false;
                    continue;
                }
                None => {
                    self.problem(format!("{at}.name"), "required field missing");
                    ok = false;
                    continue;
                }
            };
            if out.iter().any(|r| r.name == name) {
                self.problem(
                    format!("{at}.name"),
                    format!("duplicate replica name `{name}`"),
                );
                ok = false;
            }
            match self.repository_mapping(&at, item, &["name"]) {
                Some(repository) => out.push(Replica { name, repository }),
                None => ok = false,
            }
        }
        ok.then_some(out)
    }

    /// A repository given as a mapping at `at` (`extra`: further field
    /// names the caller reads itself).
    fn repository_mapping(
        &mut self,
        at: &str,
        value: &Value,
        extra: &[&str],
    ) -> Option<RepositoryConfig> {
        let mut known = vec!["url", "encryption"];
        known.extend_from_slice(S3_FIELDS);
        known.extend_from_slice(extra);
        let r = self.fields(at, value, &known)?;
        let url = self.string(&r, "url", true)?;
        let location = if let Some(rest) = url.strip_prefix("s3://") {
            RepositoryLocation::S3(self.s3_location(&r, rest)?)
        } else {
            for key in S3_FIELDS {
                if r.get(key).is_some() {
                    self.problem(r.at(key), "only for an s3:// repository");
                }
            }
            self.local_repository(&r.at("url"), &url)?
        };
        let encryption = match r.get("encryption") {
            Some(v) => Some(self.encryption(&r.at("encryption"), v)?),
            None => None,
        };
        Some(RepositoryConfig {
            location,
            encryption,
        })
    }

    fn local_repository(&mut self, at: &str, text: &str) -> Option<RepositoryLocation> {
        let path = if let Some(rest) = text.strip_prefix("file://") {
            PathBuf::from(rest)
        } else if text.contains("://") {
            self.problem(
                at,
                "a repository is a directory (a path or file:// URL) or s3://bucket/prefix",
            );
            return None;
        } else {
            PathBuf::from(text)
        };
        if path.as_os_str().is_empty() {
            self.problem(at, "empty path");
            return None;
        }
        let path = if path.is_absolute() {
            path
        } else {
            self.base_dir.join(path)
        };
        Some(RepositoryLocation::Local(path))
    }

    /// `rest` is what follows `s3://`. Credentials, endpoint and region come
    /// from the fields, else from the AWS conventions (`AWS_ACCESS_KEY_ID`,
    /// `AWS_SECRET_ACCESS_KEY`, `AWS_SESSION_TOKEN`, `AWS_ENDPOINT_URL_S3` or
    /// `AWS_ENDPOINT_URL`, `AWS_REGION` or `AWS_DEFAULT_REGION`).
    fn s3_location(&mut self, r: &Fields<'_>, rest: &str) -> Option<S3Location> {
        let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
        let prefix = prefix.trim_matches('/');
        let bucket_ok = (3..=63).contains(&bucket.len())
            && bucket
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'.')
            && !bucket.starts_with(['-', '.'])
            && !bucket.ends_with(['-', '.']);
        let prefix_ok = prefix.split('/').all(|seg| {
            prefix.is_empty()
                || (!seg.is_empty()
                    && seg != "."
                    && seg != ".."
                    && !seg.chars().any(|c| c.is_control()))
        });
        if !bucket_ok {
            self.problem(
                r.at("url"),
                format!("`{bucket}` is not a bucket name (3 to 63 of a-z, 0-9, `.` and `-`)"),
            );
        }
        if !prefix_ok {
            self.problem(
                r.at("url"),
                format!("`{prefix}`: a prefix's parts are not empty, `.` or `..`"),
            );
        }
        let endpoint = match self.string(r, "endpoint", false) {
            Some(text) => self.s3_endpoint(&r.at("endpoint"), &text),
            None => match (self.env)("AWS_ENDPOINT_URL_S3")
                .or_else(|| (self.env)("AWS_ENDPOINT_URL"))
                .filter(|v| !v.is_empty())
            {
                Some(text) => self.s3_endpoint("AWS_ENDPOINT_URL", &text),
                None => Some(None),
            },
        };
        let region = self
            .string(r, "region", false)
            .or_else(|| (self.env)("AWS_REGION"))
            .or_else(|| (self.env)("AWS_DEFAULT_REGION"))
            .filter(|v| !v.is_empty())
            .unwrap_or_else(|| "us-east-1".to_string());
        let access_key = self.aws_secret(r, "access_key", "AWS_ACCESS_KEY_ID");
        let secret_key = self.aws_secret(r, "secret_key", "AWS_SECRET_ACCESS_KEY");
        // A session token belongs to credentials from the environment.
        let session_token = (r.get("access_key_env").is_none()
            && r.get("access_key_file").is_none())
        .then(|| (self.env)("AWS_SESSION_TOKEN"))
        .flatten()
        .filter(|v| !v.is_empty())
        .map(Secret::new);
        let ca_pem = self.pem_file(r, "ca_file", "certificate");
        let https = match &endpoint {
            Some(Some(e)) => e.starts_with("https://"),
            _ => true,
        };
        if matches!(ca_pem, Some(Some(_))) && !https {
            self.problem(
                r.at("ca_file"),
                "a CA is for an https endpoint; this one is plain http",
            );
            return None;
        }
        if !(bucket_ok && prefix_ok) {
            return None;
        }
        Some(S3Location {
            bucket: bucket.to_string(),
            prefix: prefix.to_string(),
            endpoint: endpoint?,
            region,
            access_key: access_key?,
            secret_key: secret_key?,
            session_token,
            ca_pem: ca_pem?,
        })
    }

    fn s3_endpoint(&mut self, at: &str, text: &str) -> Option<Option<String>> {
        match ::url::Url::parse(text) {
            Ok(u)
                if matches!(u.scheme(), "http" | "https")
                    && u.host_str().is_some_and(|h| !h.is_empty())
                    && u.username().is_empty()
                    && u.password().is_none()
                    && u.query().is_none()
                    && u.fragment().is_none()
                    && u.path() == "/" =>
            {
                Some(Some(text.trim_end_matches('/').to_string()))
            }
            Ok(u) if !u.username().is_empty() || u.password().is_some() => {
                // Not echoed: what is there may be a secret.
                self.problem(
                    at,
                    "credentials inside the endpoint URL are refused; use access_key_env/secret_key_env or the _file fields",
                );
                None
            }
            _ => {
                // Echoed without anything before an `@`: a URL that does
                // not parse may still hold credentials.
                let shown = match text.split_once("://") {
                    Some((scheme, rest)) => match rest.rsplit_once('@') {
                        Some((_, host)) => format!("{scheme}://…@{host}"),
                        None => text.to_string(),
                    },
                    None => match text.rsplit_once('@') {
                        Some((_, host)) => format!("…@{host}"),
                        None => text.to_string(),
                    },
                };
                self.problem(
                    at,
                    format!("`{shown}` is not an endpoint of the form http(s)://host[:port]"),
                );
                None
            }
        }
    }

    /// `<name>_env` or `<name>_file`, else the AWS variable `aws_var`.
    fn aws_secret(&mut self, r: &Fields<'_>, name: &str, aws_var: &str) -> Option<Secret> {
        let env_key = format!("{name}_env");
        let file_key = format!("{name}_file");
        match self.secret(r, &env_key, &file_key, false)? {
            Some(secret) => Some(secret),
            None => match (self.env)(aws_var).filter(|v| !v.is_empty()) {
                Some(value) => Some(Secret::new(value)),
                None => {
                    self.problem(
                        r.at(&env_key),
                        format!("required: give {env_key} or {file_key}, or set {aws_var}"),
                    );
                    None
                }
            },
        }
    }

    fn encryption(&mut self, at: &str, v: &Value) -> Option<Encryption> {
        let e = self.fields(at, v, &["key_env", "key_file", "old_key_files"])?;
        let key = self
            .secret(&e, "key_env", "key_file", true)?
            .and_then(|secret| self.repository_key(&e.at("key_file"), secret.expose()));
        let mut old_keys = Vec::new();
        for (i, file) in self
            .string_list(&e, "old_key_files")
            .unwrap_or_default()
            .into_iter()
            .enumerate()
        {
            let path = self.base_dir.join(&file);
            let at = format!("{}[{i}]", e.at("old_key_files"));
            match std::fs::read_to_string(&path) {
                Ok(text) => {
                    if let Some(k) = self.repository_key(&at, &text) {
                        old_keys.push(k);
                    }
                }
                Err(err) => self.problem(at, format!("cannot read {}: {err}", path.display())),
            }
        }
        Some(Encryption {
            key: key?,
            old_keys,
        })
    }

    fn repository_key(&mut self, at: &str, text: &str) -> Option<RepositoryKey> {
        let key = RepositoryKey::parse(text);
        if key.is_none() {
            self.problem(
                at,
                format!(
                    "not a repository key ({} hexadecimal digits; `shardcut keygen --out FILE` writes one)",
                    RepositoryKey::TEXT_LEN
                ),
            );
        }
        key
    }

    fn defaults(&mut self, v: &Value) -> Option<Defaults> {
        let f = self.fields(
            "defaults",
            v,
            &[
                "parallelism",
                "write_block_timeout",
                "write_block_lease",
                "compression",
                "tls",
                "ca_file",
                "allow_cleartext_password",
            ],
        )?;
        let tls = self.db_tls(&f, &DbTls::default());
        let parallelism = self.parallelism(&f).unwrap_or_else(default_parallelism);
        let write_block_timeout =
            self.duration(&f, "write_block_timeout", default_write_block_timeout());
        let write_block_lease = self.duration(&f, "write_block_lease", default_write_block_lease());
        if write_block_lease <= write_block_timeout {
            self.problem(
                f.at("write_block_lease"),
                format!(
                    "must be longer than write_block_timeout ({} ms), or agents would release blocks the orchestrator still counts on",
                    write_block_timeout.as_millis()
                ),
            );
        }
        let compression = match self.string(&f, "compression", false) {
            None => Compression::Zstd(crate::model::DEFAULT_ZSTD_LEVEL),
            Some(text) => match parse_compression(&text) {
                Ok(c) => c,
                Err(e) => {
                    self.problem(f.at("compression"), e);
                    Compression::Zstd(crate::model::DEFAULT_ZSTD_LEVEL)
                }
            },
        };
        Some(Defaults {
            parallelism,
            tls: tls?,
            write_block_timeout,
            write_block_lease,
            compression,
        })
    }

    fn parallelism(&mut self, f: &Fields<'_>) -> Option<usize> {
        let v = f.get("parallelism")?;
        match v.as_u64() {
            Some(n @ 1..=64) => usize::try_from(n).ok(),
            _ => {
                self.problem(f.at("parallelism"), "expected a whole number from 1 to 64");
                None
            }
        }
    }

    fn shards(&mut self, f: &Fields<'_>, defaults: Option<&Defaults>) -> Option<Vec<Shard>> {
        let Some(v) = f.get("shards") else {
            self.problem("shards", "required field missing; list at least one shard");
            return None;
        };
        let Some(seq) = v.as_sequence() else {
            self.problem("shards", "expected a list of shards");
            return None;
        };
        if seq.is_empty() {
            self.problem("shards", "list at least one shard");
        }
        let mut seen: HashMap<String, usize> = HashMap::new();
        let mut out = Vec::new();
        let mut all_ok = true;
        for (i, item) in seq.iter().enumerate() {
            match self.shard(i, item, defaults) {
                Some(s) => {
                    if let Some(first) = seen.get(&s.name) {
                        self.problem(
                            format!("shards[{i}].name"),
                            format!(
                                "duplicate shard name `{}` (first used by shards[{first}])",
                                s.name
                            ),
                        );
                    } else {
                        seen.insert(s.name.clone(), i);
                    }
                    out.push(s);
                }
                None => all_ok = false,
            }
        }
        all_ok.then_some(out)
    }

    fn shard(&mut self, i: usize, v: &Value, defaults: Option<&Defaults>) -> Option<Shard> {
        let path = format!("shards[{i}]");
        let f = self.fields(
            &path,
            v,
            &[
                "name",
                "engine",
                "url",
                "password_env",
                "password_file",
                "databases",
                "exclude_tables",
                "parallelism",
                "agent",
                "agent_token_env",
                "agent_token_file",
                "agent_ca_file",
                "agent_cert_file",
                "agent_key_file",
                "agent_insecure",
                "tls",
                "ca_file",
                "allow_cleartext_password",
            ],
        )?;
        let name = self.name(&f, "name");
        let engine = match self.string(&f, "engine", true).as_deref() {
            Some("mysql") | Some("mariadb") => Some(Engine::Mysql),
            Some("postgres") | Some("postgresql") => Some(Engine::Postgres),
            Some(other) => {
                self.problem(
                    f.at("engine"),
                    format!("unknown engine `{other}`; use mysql or postgres"),
                );
                None
            }
            None => None,
        };
        let endpoint =
            self.string(&f, "url", true)
                .and_then(|text| match parse_endpoint(&text, engine) {
                    Ok(e) => Some(e),
                    Err(problems) => {
                        for p in problems {
                            self.problem(f.at("url"), p);
                        }
                        None
                    }
                });
        let password = self.secret(&f, "password_env", "password_file", false);
        let databases = self.string_list(&f, "databases");
        if matches!(&databases, Some(d) if d.is_empty()) {
            self.problem(
                f.at("databases"),
                "empty list; omit the field to back up every database",
            );
        }
        let exclude_tables = self
            .string_list(&f, "exclude_tables")
            .unwrap_or_default()
            .iter()
            .enumerate()
            .filter_map(|(j, t)| {
                self.table_ref(&format!("{}[{j}]", f.at("exclude_tables")), t, engine)
            })
            .collect();
        let parallelism = self
            .parallelism(&f)
            .or(defaults.map(|d| d.parallelism))
            .unwrap_or_else(default_parallelism);
        let agent = self.agent(&f);
        let tls = self.db_tls(&f, &defaults.map(|d| d.tls.clone()).unwrap_or_default());
        Some(Shard {
            name: name?,
            engine: engine?,
            endpoint: endpoint?,
            password: password?,
            databases,
            exclude_tables,
            parallelism,
            agent: agent?,
            tls: tls?,
        })
    }

    fn boolean(&mut self, f: &Fields<'_>, key: &str) -> Option<bool> {
        let v = f.get(key)?;
        match v.as_bool() {
            Some(b) => Some(b),
            None => {
                self.problem(f.at(key), "expected true or false");
                None
            }
        }
    }

    /// A path relative to the topology file's directory.
    fn path(&self, text: &str) -> PathBuf {
        let p = PathBuf::from(text);
        if p.is_absolute() {
            p
        } else {
            self.base_dir.join(p)
        }
    }

    /// The PEM text of the file `key` names (`Some(None)` if absent),
    /// read now so that an unreadable or non-PEM file is a topology
    /// problem, not a failure in the middle of a backup.
    fn pem_file(&mut self, f: &Fields<'_>, key: &str, what: &str) -> Option<Option<String>> {
        let Some(text) = self.string(f, key, false) else {
            return if f.get(key).is_some() {
                None
            } else {
                Some(None)
            };
        };
        let p = self.path(&text);
        match std::fs::read_to_string(&p) {
            Ok(pem) if pem.contains("-----BEGIN ") => Some(Some(pem)),
            Ok(_) => {
                self.problem(f.at(key), format!("{} holds no PEM {what}", p.display()));
                None
            }
            Err(e) => {
                self.problem(f.at(key), format!("cannot read {}: {e}", p.display()));
                None
            }
        }
    }

    /// `tls`, `ca_file` and `allow_cleartext_password` over `inherited`.
    fn db_tls(&mut self, f: &Fields<'_>, inherited: &DbTls) -> Option<DbTls> {
        let mode = match self.string(f, "tls", false) {
            None => inherited.mode,
            Some(text) => match TlsMode::parse(&text) {
                Some(m) => m,
                None => {
                    self.problem(
                        f.at("tls"),
                        format!("`{text}`: use disable, prefer, require, verify-ca or verify-full"),
                    );
                    return None;
                }
            },
        };
        let ca_pem = match self.pem_file(f, "ca_file", "certificate")? {
            Some(pem) => Some(pem),
            None => inherited.ca_pem.clone(),
        };
        if mode.verifies() && ca_pem.is_none() {
            self.problem(
                f.at("tls"),
                format!("tls: {mode} checks the server's certificate: give ca_file (the CA that signed it)"),
            );
            return None;
        }
        let allow_cleartext_password = self
            .boolean(f, "allow_cleartext_password")
            .unwrap_or(inherited.allow_cleartext_password);
        Some(DbTls {
            mode,
            ca_pem,
            allow_cleartext_password,
        })
    }

    fn table_ref(&mut self, path: &str, text: &str, engine: Option<Engine>) -> Option<TableRef> {
        let parts: Vec<&str> = text.split('.').collect();
        match (parts.as_slice(), engine) {
            ([db, t], _) if !db.is_empty() && !t.is_empty() => Some(TableRef {
                database: db.to_string(),
                schema: None,
                table: t.to_string(),
            }),
            ([db, s, t], Some(Engine::Postgres) | None)
                if !db.is_empty() && !s.is_empty() && !t.is_empty() =>
            {
                Some(TableRef {
                    database: db.to_string(),
                    schema: Some(s.to_string()),
                    table: t.to_string(),
                })
            }
            _ => {
                let form = if engine == Some(Engine::Mysql) {
                    "db.table"
                } else {
                    "db.table or db.schema.table"
                };
                self.problem(path, format!("`{text}` is not of the form {form}"));
                None
            }
        }
    }

    /// Resolves a secret given by an env var name or a file path. `Some(None)`
    /// means none was configured (allowed unless `required`).
    fn secret(
        &mut self,
        f: &Fields<'_>,
        env_key: &str,
        file_key: &str,
        required: bool,
    ) -> Option<Option<Secret>> {
        let env_name = self.string(f, env_key, false);
        let file = self.string(f, file_key, false);
        match (env_name, file) {
            (Some(_), Some(_)) => {
                self.problem(
                    f.at(file_key),
                    format!("give either {env_key} or {file_key}, not both"),
                );
                None
            }
            (Some(var), None) => match (self.env)(&var) {
                Some(value) if !value.is_empty() => Some(Some(Secret::new(value))),
                Some(_) => {
                    self.problem(
                        f.at(env_key),
                        format!("environment variable `{var}` is empty"),
                    );
                    None
                }
                None => {
                    self.problem(
                        f.at(env_key),
                        format!("environment variable `{var}` is not set"),
                    );
                    None
                }
            },
            (None, Some(file)) => {
                let p = PathBuf::from(&file);
                let p = if p.is_absolute() {
                    p
                } else {
                    self.base_dir.join(p)
                };
                match std::fs::read_to_string(&p) {
                    Ok(text) => {
                        let value = text
                            .strip_suffix('\n')
                            .map(|t| t.strip_suffix('\r').unwrap_or(t))
                            .unwrap_or(&text);
                        if value.is_empty() {
                            self.problem(f.at(file_key), format!("{} is empty", p.display()));
                            None
                        } else {
                            Some(Some(Secret::new(value)))
                        }
                    }
                    Err(e) => {
                        self.problem(f.at(file_key), format!("cannot read {}: {e}", p.display()));
                        None
                    }
                }
            }
            (None, None) => {
                if required {
                    self.problem(
                        f.at(env_key),
                        format!("required: give {env_key} or {file_key}"),
                    );
                    None
                } else {
                    Some(None)
                }
            }
        }
    }

    fn agent(&mut self, f: &Fields<'_>) -> Option<Option<AgentSpec>> {
        let Some(text) = self.string(f, "agent", false) else {
            let stray = [
                "agent_token_env",
                "agent_token_file",
                "agent_ca_file",
                "agent_cert_file",
                "agent_key_file",
                "agent_insecure",
            ]
            .into_iter()
            .find(|k| f.get(k).is_some());
            if let Some(key) = stray {
                self.problem(f.at(key), format!("`{key}` without `agent` has no use"));
                return None;
            }
            return Some(None);
        };
        let insecure = self.boolean(f, "agent_insecure").unwrap_or(false);
        let url = match url::Url::parse(&text) {
            Ok(u) if u.scheme() == "http" && !insecure => {
                self.problem(
                    f.at("agent"),
                    "plain http carries the shard passwords in clear: use https:// with agent_ca_file, or set agent_insecure: true on a network you trust",
                );
                None
            }
            Ok(u)
                if matches!(u.scheme(), "http" | "https")
                    && u.host_str().is_some()
                    && u.port().is_some() =>
            {
                if u.password().is_some() || !u.username().is_empty() {
                    self.problem(
                        f.at("agent"),
                        "credentials inside the agent URL are refused; use agent_token_env",
                    );
                    None
                } else {
                    Some(u)
                }
            }
            Ok(_) => {
                self.problem(
                    f.at("agent"),
                    "expected https://HOST:PORT of a `shard-agent serve`",
                );
                None
            }
            Err(e) => {
                self.problem(f.at("agent"), format!("not a valid URL: {e}"));
                None
            }
        };
        let token = self.secret(f, "agent_token_env", "agent_token_file", true);
        let tls = self.agent_tls(f, url.as_ref(), insecure);
        Some(Some(AgentSpec {
            url: url?,
            token: token??,
            tls: tls?,
        }))
    }

    fn agent_tls(
        &mut self,
        f: &Fields<'_>,
        url: Option<&url::Url>,
        insecure: bool,
    ) -> Option<AgentTls> {
        let ca = self.pem_file(f, "agent_ca_file", "certificate");
        let cert = self.pem_file(f, "agent_cert_file", "certificate");
        let key = self.pem_file(f, "agent_key_file", "private key");
        if url.is_some_and(|u| u.scheme() == "http") {
            if let Some(k) = ["agent_ca_file", "agent_cert_file", "agent_key_file"]
                .into_iter()
                .find(|k| f.get(k).is_some())
            {
                self.problem(f.at(k), "has no use with an http:// agent");
                return None;
            }
            return Some(AgentTls::Insecure);
        }
        if insecure {
            self.problem(f.at("agent_insecure"), "has no use with an https:// agent");
            return None;
        }
        let Some(ca_pem) = ca? else {
            self.problem(
                f.at("agent_ca_file"),
                "required with an https:// agent: the CA that signed the agent's certificate",
            );
            return None;
        };
        let identity = match (cert?, key?) {
            (Some(c), Some(k)) => Some((c, Secret::new(k))),
            (None, None) => None,
            _ => {
                self.problem(
                    f.at("agent_cert_file"),
                    "give agent_cert_file and agent_key_file together",
                );
                return None;
            }
        };
        Some(AgentTls::Https { ca_pem, identity })
    }
}

fn parse_compression(text: &str) -> Result<Compression, String> {
    match text {
        "none" => Ok(Compression::None),
        "zstd" => Ok(Compression::Zstd(crate::model::DEFAULT_ZSTD_LEVEL)),
        _ => {
            let level = text
                .strip_prefix("zstd:")
                .and_then(|l| l.parse::<i32>().ok())
                .ok_or_else(|| format!("`{text}`: use none, zstd or zstd:LEVEL"))?;
            if (1..=19).contains(&level) {
                Ok(Compression::Zstd(level))
            } else {
                Err(format!("`{text}`: zstd level must be 1 to 19"))
            }
        }
    }
}
