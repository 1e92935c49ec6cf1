//! Every refusal of a topology names the file, line, column and field path.

use std::path::{Path, PathBuf};

use topology::{Topology, TopologyError};

fn env(key: &str) -> Option<String> {
    match key {
        "GOOD_PASSWORD" => Some("s3cr3t-Pa55word".to_string()),
        "EMPTY" => Some(String::new()),
        _ => None,
    }
}

fn parse(text: &str) -> Result<Topology, TopologyError> {
    Topology::parse(text, Path::new("/etc/shardcut/t.yaml"), &env)
}

/// The one-line renderings of all violations.
fn lines(text: &str) -> Vec<String> {
    let err = parse(text).expect_err("topology should be refused");
    let out = err.to_string();
    assert_eq!(out.lines().count(), err.violations().len());
    out.lines().map(str::to_string).collect()
}

const GOOD: &str = "\
cluster: shop
repository: ./backups
shards:
  - name: users-0
    engine: mysql
    url: mysql://backup@127.0.0.1:3307
    password_env: GOOD_PASSWORD
";

#[test]
fn good_topology_loads_with_defaults() {
    let t = parse(GOOD).unwrap();
    assert_eq!(t.cluster, "shop");
    assert_eq!(t.shards[0].endpoint.port, 3307);
    assert_eq!(t.shards[0].parallelism, 4);
    assert_eq!(t.defaults.write_block_timeout.as_millis(), 2000);
    assert_eq!(
        t.repository.to_string(),
        "/etc/shardcut/./backups",
        "relative repository resolves against the topology's directory"
    );
}

#[test]
fn unknown_field() {
    let l = lines(&GOOD.replace("password_env:", "pasword_env:"));
    assert_eq!(
        l,
        vec!["/etc/shardcut/t.yaml:7:5: shards[0].pasword_env: unknown field; expected one of: name, engine, url, password_env, password_file, databases, exclude_tables, parallelism, agent, agent_token_env, agent_token_file, agent_ca_file, agent_cert_file, agent_key_file, agent_insecure, tls, ca_file, allow_cleartext_password"]
    );
}

#[test]
fn duplicate_shard_names() {
    let text = format!(
        "{GOOD}  - name: users-0\n    engine: mysql\n    url: mysql://backup@127.0.0.1:3308\n"
    );
    assert_eq!(
        lines(&text),
        vec!["/etc/shardcut/t.yaml:8:5: shards[1].name: duplicate shard name `users-0` (first used by shards[0])"]
    );
}

#[test]
fn password_inside_url_is_refused_without_echoing_it() {
    let l = lines(&GOOD.replace("backup@", "backup:hunter2@"));
    assert_eq!(l.len(), 1);
    assert!(
        l[0].starts_with(
            "/etc/shardcut/t.yaml:6:5: shards[0].url: a password inside the URL is refused"
        ),
        "{l:?}"
    );
    assert!(!l[0].contains("hunter2"));
}

#[test]
fn missing_env_var() {
    assert_eq!(
        lines(&GOOD.replace("GOOD_PASSWORD", "NOPE_PASSWORD")),
        vec!["/etc/shardcut/t.yaml:7:5: shards[0].password_env: environment variable `NOPE_PASSWORD` is not set"]
    );
    assert_eq!(
        lines(&GOOD.replace("GOOD_PASSWORD", "EMPTY")),
        vec!["/etc/shardcut/t.yaml:7:5: shards[0].password_env: environment variable `EMPTY` is empty"]
    );
}

#[test]
fn unreadable_password_file() {
    let l = lines(&GOOD.replace(
        "password_env: GOOD_PASSWORD",
        "password_file: /nonexistent/pw",
    ));
    assert_eq!(l.len(), 1);
    assert!(
        l[0].starts_with(
            "/etc/shardcut/t.yaml:7:5: shards[0].password_file: cannot read /nonexistent/pw: "
        ),
        "{l:?}"
    );
}

#[test]
fn password_file_is_read_and_trimmed() {
    let dir = tempfile::tempdir().unwrap();
    let pw = dir.path().join("pw");
    std::fs::write(&pw, "from-file\n").unwrap();
    let text = GOOD.replace(
        "password_env: GOOD_PASSWORD",
        &format!("password_file: {}", pw.display()),
    );
    let t = parse(&text).unwrap();
    assert_eq!(t.shards[0].password.as_ref().unwrap().expose(), "from-file");
}

#[test]
fn engine_and_scheme_mismatch() {
    assert_eq!(
        lines(&GOOD.replace("engine: mysql", "engine: postgres")),
        vec!["/etc/shardcut/t.yaml:6:5: shards[0].url: scheme `mysql` does not match engine `postgres`; use postgres://"]
    );
}

#[test]
fn bad_duration() {
    let text = GOOD.replace(
        "shards:",
        "defaults:\n  write_block_timeout: 2 seconds\nshards:",
    );
    assert_eq!(
        lines(&text),
        vec!["/etc/shardcut/t.yaml:4:3: defaults.write_block_timeout: `2 seconds`: unknown unit ` seconds`; use ms, s, m, h or d"]
    );
}

#[test]
fn every_violation_is_reported() {
    let text = "\
cluster: Shop
repository: ./b
colour: blue
shards:
  - name: a
    engine: oracle
    url: mysql://u@h:1
  - name: a
    engine: mysql
    url: mysql://u:pw@h:1
    password_env: MISSING
  - name: c
    engine: postgres
";
    let l = lines(text);
    let expected = [
        "/etc/shardcut/t.yaml:3:1: colour: unknown field",
        "/etc/shardcut/t.yaml:1:1: cluster: `Shop` is not a valid name",
        "/etc/shardcut/t.yaml:6:5: shards[0].engine: unknown engine `oracle`",
        "/etc/shardcut/t.yaml:10:5: shards[1].url: a password inside the URL is refused",
        "/etc/shardcut/t.yaml:11:5: shards[1].password_env: environment variable `MISSING` is not set",
        "/etc/shardcut/t.yaml:12:5: shards[2].url: required field missing",
    ];
    assert_eq!(l.len(), expected.len(), "{l:#?}");
    for (got, want) in l.iter().zip(expected) {
        assert!(got.starts_with(want), "got {got}\nwant {want}");
    }
}

#[test]
fn yaml_syntax_error_has_a_location() {
    let l = lines("cluster: shop\nshards: [\n");
    assert_eq!(l.len(), 1);
    assert!(l[0].starts_with("/etc/shardcut/t.yaml:"), "{l:?}");
    assert!(l[0].contains("not valid YAML"), "{l:?}");
}

#[test]
fn agent_needs_a_token() {
    let text = format!("{GOOD}    agent: http://10.0.0.5:7070\n    agent_insecure: true\n");
    assert_eq!(
        lines(&text),
        vec!["/etc/shardcut/t.yaml:4:5: shards[0].agent_token_env: required: give agent_token_env or agent_token_file"]
    );
}

#[test]
fn secrets_never_print() {
    let text =
        format!("{GOOD}    agent: http://10.0.0.5:7070\n    agent_insecure: true\n    agent_token_env: GOOD_PASSWORD\n");
    let t = parse(&text).unwrap();
    let shown = format!("{t:?} {t:#?}");
    assert!(!shown.contains("s3cr3t-Pa55word"), "secret leaked in Debug");
    assert!(shown.contains("****"));
    assert!(!t.digest().contains("s3cr3t"));
    // The same secret in a refused file does not leak through the error either.
    let bad = text.replace("cluster: shop", "cluster: Bad_Name");
    let err = parse(&bad).unwrap_err();
    assert!(!format!("{err} {err:?}").contains("s3cr3t-Pa55word"));
}

#[test]
fn every_example_topology_parses() {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..");
    let mut seen = 0;
    for dir in ["examples", "docs"] {
        let Ok(entries) = std::fs::read_dir(root.join(dir)) else {
            continue;
        };
        for entry in entries {
            let path = entry.unwrap().path();
            if path.extension().is_some_and(|e| e == "yaml" || e == "yml") {
                // Keys must look like keys (64 hex digits); the rest is any text.
                let any_env = |name: &str| {
                    Some(if name.ends_with("REPOSITORY_KEY") {
                        "00".repeat(32)
                    } else {
                        "example-secret".to_string()
                    })
                };
                Topology::load_with_env(&path, &any_env)
                    .unwrap_or_else(|e| panic!("example {} does not load:\n{e}", path.display()));
                seen += 1;
            }
        }
    }
    assert!(seen >= 2, "expected the example topologies, found {seen}");
}

/// A topology in a directory of its own, with `ca.pem` and `not-pem.txt`
/// beside it, so relative file names resolve.
fn load_with_files(extra: &str) -> Result<Topology, TopologyError> {
    let dir = tempfile::tempdir().expect("test setup");
    std::fs::write(
        dir.path().join("ca.pem"),
        "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n",
    )
    .expect("test setup");
    std::fs::write(dir.path().join("not-pem.txt"), "hello").expect("test setup");
    let path = dir.path().join("t.yaml");
    std::fs::write(&path, format!("{GOOD}{extra}")).expect("test setup");
    Topology::load_with_env(&path, &env)
}

fn problems(extra: &str) -> String {
    load_with_files(extra)
        .expect_err("should be refused")
        .to_string()
}

#[test]
fn tls_settings_are_checked_at_load() {
    use topology::{AgentTls, TlsMode};
    // Default: prefer, no CA, no cleartext passwords.
    let t = load_with_files("").expect("test setup");
    assert_eq!(t.shards[0].tls.mode, TlsMode::Prefer);
    assert!(!t.shards[0].tls.allow_cleartext_password);
    let t = load_with_files("    tls: verify-full\n    ca_file: ca.pem\n").expect("test setup");
    assert_eq!(t.shards[0].tls.mode, TlsMode::VerifyFull);
    assert!(t.shards[0]
        .tls
        .ca_pem
        .as_deref()
        .expect("present")
        .contains("BEGIN CERTIFICATE"));

    let p = problems("    tls: verify-full\n");
    assert!(
        p.contains("shards[0].tls: tls: verify-full checks the server's certificate: give ca_file"),
        "{p}"
    );
    let p = problems("    tls: maybe\n");
    assert!(
        p.contains("`maybe`: use disable, prefer, require, verify-ca or verify-full"),
        "{p}"
    );
    let p = problems("    tls: verify-ca\n    ca_file: not-pem.txt\n");
    assert!(
        p.contains("shards[0].ca_file:") && p.contains("holds no PEM certificate"),
        "{p}"
    );
    let p = problems("    allow_cleartext_password: yes please\n");
    assert!(
        p.contains("shards[0].allow_cleartext_password: expected true or false"),
        "{p}"
    );

    // Agents: https needs its CA; http needs agent_insecure; a client
    // certificate needs its key.
    let token = "    agent_token_env: GOOD_PASSWORD\n";
    let p = problems(&format!("    agent: http://10.0.0.5:7070\n{token}"));
    assert!(
        p.contains("plain http carries the shard passwords in clear"),
        "{p}"
    );
    let p = problems(&format!("    agent: https://10.0.0.5:7070\n{token}"));
    assert!(
        p.contains("shards[0].agent_ca_file: required with an https:// agent"),
        "{p}"
    );
    let p = problems(&format!(
        "    agent: https://10.0.0.5:7070\n    agent_ca_file: ca.pem\n    agent_cert_file: ca.pem\n{token}"
    ));
    assert!(
        p.contains("give agent_cert_file and agent_key_file together"),
        "{p}"
    );
    let p = problems("    agent_ca_file: ca.pem\n");
    assert!(
        p.contains("`agent_ca_file` without `agent` has no use"),
        "{p}"
    );
    let t = load_with_files(&format!(
        "    agent: https://10.0.0.5:7070\n    agent_ca_file: ca.pem\n{token}"
    ))
    .expect("test setup");
    assert!(matches!(
        t.shards[0].agent.as_ref().expect("present").tls,
        AgentTls::Https { identity: None, .. }
    ));
}
