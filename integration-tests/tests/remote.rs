//! Remote shard agents (`shard-agent serve`): the same backup as in-process
//! agents, over HTTPS with mutual TLS (a client without the right
//! certificate refused), refused without the right token, limited to the
//! repositories and hosts it is allowed, a clear failure when an agent is
//! killed mid-backup, and a dump stopped when its orchestrator is.

use std::io::{BufRead, BufReader, Read, Write};
use std::path::Path;
use std::process::{Child, Command, Stdio};

use crate::support::{self, bin, db, shardcut, PrivateSandbox};

/// A running `shard-agent serve`, killed when dropped.
pub(crate) struct AgentProcess {
    child: Child,
    pub(crate) addr: String,
}

impl AgentProcess {
    /// A plain-HTTP agent (`--insecure`) allowed to write below `allowed`.
    fn start(listen: &str, token_file: &Path, allowed: &Path) -> AgentProcess {
        Self::start_with(listen, token_file, allowed, &["--insecure"])
    }

    pub(crate) fn start_with(
        listen: &str,
        token_file: &Path,
        allowed: &Path,
        extra: &[&str],
    ) -> AgentProcess {
        Self::start_env(listen, token_file, allowed, extra, &[])
    }

    /// [`AgentProcess::start_with`] with `env` set for the agent.
    fn start_env(
        listen: &str,
        token_file: &Path,
        allowed: &Path,
        extra: &[&str],
        env: &[(&str, &str)],
    ) -> AgentProcess {
        let mut child = Command::new(bin("shard-agent"))
            .args(["serve", "--listen", listen, "--token-file"])
            .arg(token_file)
            .arg("--allow-repository")
            .arg(allowed)
            .args(extra)
            .envs(env.iter().copied())
            .stderr(Stdio::piped())
            .stdout(Stdio::null())
            .spawn()
            .unwrap();
        let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
        let addr = loop {
            let line = lines
                .next()
                .expect("agent exited before listening")
                .unwrap();
            if let Some(a) = line.split("listening on ").nth(1) {
                let a = a.trim();
                break a.split("://").nth(1).unwrap_or(a).to_string();
            }
        };
        std::thread::spawn(move || lines.for_each(drop));
        AgentProcess { child, addr }
    }
}

impl Drop for AgentProcess {
    fn drop(&mut self) {
        drop(self.child.kill());
        drop(self.child.wait());
    }
}

/// A topology variant in which every shard is served by the plain-HTTP
/// agent at `agent`.
pub(crate) fn with_agents(
    src: &Path,
    dir: &Path,
    agent: &str,
    token_file: &Path,
) -> std::path::PathBuf {
    let lines = format!(
        "agent: http://{agent}\n    agent_insecure: true\n    agent_token_file: {}",
        token_file.display()
    );
    with_agent_lines(src, dir, &lines)
}

/// A topology variant with `lines` (agent settings) added to every shard.
fn with_agent_lines(src: &Path, dir: &Path, lines: &str) -> std::path::PathBuf {
    let text = std::fs::read_to_string(src).unwrap();
    let mut replace = Vec::new();
    for line in text
        .lines()
        .filter(|l| l.trim_start().starts_with("password_file:"))
    {
        replace.push((line.to_string(), format!("{line}\n    {lines}")));
    }
    let pairs: Vec<(&str, &str)> = replace
        .iter()
        .map(|(a, b)| (a.as_str(), b.as_str()))
        .collect();
    support::topology_variant(src, dir, &pairs)
}

pub(crate) fn token(dir: &Path, name: &str, value: &str) -> std::path::PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, value).unwrap();
    p
}

#[test]
fn remote_agents_back_up_the_same_as_in_process_ones() {
    let dir = tempfile::tempdir().unwrap();
    let good = token(dir.path(), "token", "a-long-random-agent-token-0123456789");
    let agent = AgentProcess::start("127.0.0.1:0", &good, dir.path());

    let remote_dir = dir.path().join("remote");
    std::fs::create_dir_all(&remote_dir).unwrap();
    let remote = with_agents(
        &support::sandbox_topology(),
        &remote_dir,
        &agent.addr,
        &good,
    );
    let local_dir = dir.path().join("local");
    std::fs::create_dir_all(&local_dir).unwrap();
    let local = support::topology_variant(&support::sandbox_topology(), &local_dir, &[]);

    let r = shardcut(&["backup", "-t", remote.to_str().unwrap(), "--json"]);
    assert_eq!(r.code, 0, "{r:?}");
    // Settling goes over the API too (a failure there is only a warning).
    assert!(!r.stderr.contains("could not settle"), "{r:?}");
    let l = shardcut(&["backup", "-t", local.to_str().unwrap(), "--json"]);
    assert_eq!(l.code, 0, "{l:?}");
    let rm = support::manifest(&remote, r.json()["backup_id"].as_str().unwrap());
    let lm = support::manifest(&local, l.json()["backup_id"].as_str().unwrap());
    assert_eq!(
        rm.shards.keys().collect::<Vec<_>>(),
        lm.shards.keys().collect::<Vec<_>>()
    );
    let repo = db::repository(&db::topology(&remote));
    for (name, rs) in &rm.shards {
        let ls = &lm.shards[name];
        let summary = |s: &shard_agent::manifest::ShardManifest| {
            s.table_list
                .iter()
                .map(|t| (t.qualified(), t.rows, t.content_hash.clone()))
                .collect::<Vec<_>>()
        };
        assert_eq!(
            summary(rs),
            summary(ls),
            "shard {name}: remote and in-process backups differ"
        );
        // The agent wrote the chunks itself; they read back to the manifest's hash.
        for t in &rs.table_list {
            assert_eq!(
                db::digest_of(&db::table_lines(&repo, rs, t)).hex(),
                t.content_hash
            );
        }
    }
}

/// Agent settings for an HTTPS agent on `port`, reached as `localhost`
/// (the name its certificate carries), with `client` (a certificate and
/// key file pair) for mutual TLS.
fn https_lines(port: &str, certs: &Path, ca: &str, client: Option<&str>, token: &Path) -> String {
    let mut lines = format!(
        "agent: https://localhost:{port}\n    agent_ca_file: {}\n    agent_token_file: {}",
        certs.join(ca).display(),
        token.display()
    );
    if let Some(c) = client {
        lines.push_str(&format!(
            "\n    agent_cert_file: {}\n    agent_key_file: {}",
            certs.join(format!("{c}.pem")).display(),
            certs.join(format!("{c}.key")).display()
        ));
    }
    lines
}

#[test]
fn agents_over_https_with_mutual_tls_refuse_clients_without_the_right_certificate() {
    let dir = tempfile::tempdir().unwrap();
    let certs = support::tls_certs(&dir.path().join("tls"));
    let good = token(dir.path(), "token", "a-long-random-agent-token-0123456789");
    let cert = certs.join("server.pem");
    let key = certs.join("server.key");
    let ca = certs.join("ca.pem");
    let agent = AgentProcess::start_with(
        "127.0.0.1:0",
        &good,
        dir.path(),
        &[
            "--tls-cert",
            cert.to_str().unwrap(),
            "--tls-key",
            key.to_str().unwrap(),
            "--client-ca",
            ca.to_str().unwrap(),
        ],
    );
    let port = agent.addr.rsplit(':').next().unwrap().to_string();
    let variant = |name: &str, ca: &str, client: Option<&str>| {
        let d = dir.path().join(name);
        std::fs::create_dir_all(&d).unwrap();
        with_agent_lines(
            &support::sandbox_topology(),
            &d,
            &https_lines(&port, &certs, ca, client, &good),
        )
    };

    // With the client certificate: the backup is taken through the agent.
    let ok = variant("mtls", "ca.pem", Some("client"));
    let run = shardcut(&["backup", "-t", ok.to_str().unwrap(), "--json"]);
    assert_eq!(run.code, 0, "{run:?}");
    let id = run.json()["backup_id"].as_str().unwrap().to_string();
    let verify = shardcut(&["verify", "--backup", &id, "-t", ok.to_str().unwrap()]);
    assert_eq!(verify.code, 0, "{verify:?}");
    let check = shardcut(&["check", "-t", ok.to_str().unwrap(), "--json"]);
    assert!(
        check.stdout.contains("HTTPS, mutual TLS"),
        "preflight should name the agent transport: {check:?}"
    );

    // Without a client certificate, or with one another CA signed: refused
    // in the handshake, before any request (the token never crosses).
    for (name, client) in [("nocert", None), ("othercert", Some("other-client"))] {
        let topo = variant(name, "ca.pem", client);
        let run = shardcut(&["backup", "-t", topo.to_str().unwrap()]);
        assert_eq!(run.code, 1, "{name}: {run:?}");
        assert!(run.stderr.contains("TLS refused"), "{name}: {run:?}");
        assert!(
            run.stderr
                .contains(&format!("agent https://localhost:{port}")),
            "{name}: {run:?}"
        );
        assert_eq!(
            shardcut(&["list", "-t", topo.to_str().unwrap(), "--json"]).json()["backups"],
            serde_json::json!([]),
            "{name}"
        );
    }

    // An agent whose certificate the topology's CA did not sign is refused.
    let topo = variant("wrongca", "other-ca.pem", Some("client"));
    let run = shardcut(&["backup", "-t", topo.to_str().unwrap()]);
    assert_eq!(run.code, 1, "{run:?}");
    assert!(run.stderr.contains("certificate"), "{run:?}");

    // Plain HTTP to the HTTPS port gets no HTTP answer.
    let mut s = std::net::TcpStream::connect(&agent.addr).unwrap();
    s.set_read_timeout(Some(std::time::Duration::from_secs(10)))
        .unwrap();
    write!(
        s,
        "GET /v1/version HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer a-long-random-agent-token-0123456789\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut answer = Vec::new();
    drop(s.read_to_end(&mut answer));
    assert!(
        !String::from_utf8_lossy(&answer).contains("\"api\""),
        "plain HTTP answered on the TLS port"
    );

    // A topology naming a plain http:// agent without agent_insecure is refused.
    let d = dir.path().join("plain");
    std::fs::create_dir_all(&d).unwrap();
    let plain = with_agent_lines(
        &support::sandbox_topology(),
        &d,
        &format!(
            "agent: http://127.0.0.1:{port}\n    agent_token_file: {}",
            good.display()
        ),
    );
    let run = shardcut(&["check", "-t", plain.to_str().unwrap()]);
    assert_eq!(run.code, 2, "{run:?}");
    assert!(run.stderr.contains("agent_insecure"), "{run:?}");
}

#[test]
fn an_agent_writes_only_below_allowed_repositories_and_reaches_only_allowed_hosts() {
    let dir = tempfile::tempdir().unwrap();
    let good = token(dir.path(), "token", "a-long-random-agent-token-0123456789");
    let elsewhere = tempfile::tempdir().unwrap();
    // Allowed: another directory only; hosts: the default (loopback).
    let agent = AgentProcess::start("127.0.0.1:0", &good, elsewhere.path());
    let topo = with_agents(&support::sandbox_topology(), dir.path(), &agent.addr, &good);
    let run = shardcut(&["backup", "-t", topo.to_str().unwrap()]);
    assert_eq!(run.code, 1, "{run:?}");
    assert!(
        run.stderr
            .contains("is not below a directory this agent may write"),
        "{run:?}"
    );
    assert_eq!(
        std::fs::read_dir(dir.path().join("repo").join("backups"))
            .map(|d| d.count())
            .unwrap_or(0),
        0,
        "the refused agent wrote into the repository"
    );

    // Allowed repository, but a host list without 127.0.0.1.
    let agent = AgentProcess::start_with(
        "127.0.0.1:0",
        &good,
        dir.path(),
        &["--insecure", "--allow-host", "db.internal"],
    );
    let d = dir.path().join("hosts");
    std::fs::create_dir_all(&d).unwrap();
    let topo = with_agents(&support::sandbox_topology(), &d, &agent.addr, &good);
    let run = shardcut(&["backup", "-t", topo.to_str().unwrap()]);
    assert_eq!(run.code, 1, "{run:?}");
    assert!(
        run.stderr
            .contains("host 127.0.0.1 is not one this agent may connect to"),
        "{run:?}"
    );

    // serve refuses to start without TLS or --insecure.
    let out = Command::new(bin("shard-agent"))
        .args(["serve", "--listen", "127.0.0.1:0", "--token-file"])
        .arg(&good)
        .arg("--allow-repository")
        .arg(dir.path())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--insecure"));
}

#[test]
fn wrong_or_missing_token_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let good = token(dir.path(), "token", "a-long-random-agent-token-0123456789");
    let bad = token(dir.path(), "bad", "not-the-agent-token-at-all-000000");
    let agent = AgentProcess::start("127.0.0.1:0", &good, dir.path());
    let topo = with_agents(&support::sandbox_topology(), dir.path(), &agent.addr, &bad);
    let run = shardcut(&["backup", "-t", topo.to_str().unwrap()]);
    assert_eq!(run.code, 1, "{run:?}");
    assert!(
        run.stderr.contains("shard mysql-0: agent http://"),
        "{run:?}"
    );
    assert!(
        run.stderr.contains("refused the agent token (401)"),
        "{run:?}"
    );
    assert!(
        !run.all().contains("not-the-agent-token"),
        "token printed: {run:?}"
    );
    assert_eq!(
        shardcut(&["list", "-t", topo.to_str().unwrap(), "--json"]).json()["backups"],
        serde_json::json!([])
    );

    // Raw requests without a token, or with another one, get 401 and nothing else.
    for header in ["", "Authorization: Bearer nope\r\n"] {
        let mut s = std::net::TcpStream::connect(&agent.addr).unwrap();
        write!(
            s,
            "GET /v1/version HTTP/1.1\r\nHost: x\r\n{header}Connection: close\r\n\r\n"
        )
        .unwrap();
        let mut answer = String::new();
        s.read_to_string(&mut answer).unwrap();
        assert!(answer.starts_with("HTTP/1.1 401"), "{answer}");
        assert!(!answer.contains("\"api\""), "{answer}");
    }
    // The right token is accepted.
    let mut s = std::net::TcpStream::connect(&agent.addr).unwrap();
    write!(
        s,
        "GET /v1/version HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer a-long-random-agent-token-0123456789\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut answer = String::new();
    s.read_to_string(&mut answer).unwrap();
    let api = format!("\"api\":{}", shard_agent::api::API_VERSION);
    assert!(
        answer.starts_with("HTTP/1.1 200") && answer.contains(&api),
        "{answer}"
    );
}

#[test]
fn agent_killed_mid_backup_fails_clearly_and_next_backup_succeeds() {
    let sb = PrivateSandbox::up(1, 1, "ready");
    let dir = tempfile::tempdir().unwrap();
    let good = token(dir.path(), "token", "a-long-random-agent-token-0123456789");
    // A fixed port (not :0): the agent is started again on the same address.
    let listen = format!("127.0.0.1:{}", support::free_port());
    let agent = AgentProcess::start(&listen, &good, dir.path());
    let topo = with_agents(&sb.topology(), dir.path(), &listen, &good);
    let arg = topo.to_str().unwrap();
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(db::setup_all(
        &db::topology(&topo),
        &[
            "CREATE DATABASE app",
            "CREATE TABLE app.t (id INT PRIMARY KEY) ENGINE=InnoDB",
            "INSERT INTO app.t VALUES (1)",
        ],
        "app",
        "CREATE TABLE t (id int PRIMARY KEY); INSERT INTO t VALUES (1);",
    ));

    let mut child = Command::new(bin("shardcut"))
        .args(["backup", "-t", arg, "--test-pause-before-dump", "3s"])
        .stderr(Stdio::piped())
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    let mut stderr = BufReader::new(child.stderr.take().unwrap());
    let mut seen = String::new();
    while !seen.contains("pausing") {
        let mut line = String::new();
        assert!(
            stderr.read_line(&mut line).unwrap() > 0,
            "backup ended early: {seen}"
        );
        seen.push_str(&line);
    }
    drop(agent); // killed while it holds the shards' snapshots
    let status = child.wait().unwrap();
    stderr.read_to_string(&mut seen).unwrap();
    assert_eq!(status.code(), Some(1), "{seen}");
    assert!(seen.contains("failed and was discarded"), "{seen}");
    assert!(seen.contains(&format!("agent http://{listen}")), "{seen}");
    assert!(seen.contains("unreachable"), "{seen}");
    assert_eq!(
        shardcut(&["list", "-t", arg, "--json"]).json()["backups"],
        serde_json::json!([])
    );

    let _agent = AgentProcess::start(&listen, &good, dir.path());
    let run = shardcut(&["backup", "-t", arg]);
    assert_eq!(run.code, 0, "{run:?}");
    assert_eq!(
        shardcut(&["list", "-t", arg, "--json"]).json()["backups"]
            .as_array()
            .unwrap()
            .len(),
        1
    );
}

#[test]
fn restore_replay_and_capture_run_on_the_agents_over_mutual_tls() {
    let src = PrivateSandbox::up(1, 1, "ready");
    let tgt = PrivateSandbox::up(1, 1, "ready");
    let dir = tempfile::tempdir().unwrap();
    let certs = support::tls_certs(&dir.path().join("tls"));
    let good = token(dir.path(), "token", "a-long-random-agent-token-0123456789");
    let (cert, key, ca) = (
        certs.join("server.pem"),
        certs.join("server.key"),
        certs.join("ca.pem"),
    );
    let tls_args = [
        "--tls-cert",
        cert.to_str().unwrap(),
        "--tls-key",
        key.to_str().unwrap(),
        "--client-ca",
        ca.to_str().unwrap(),
    ];
    let listen = format!("127.0.0.1:{}", support::free_port());
    let port = listen.rsplit(':').next().unwrap().to_string();
    let agent = AgentProcess::start_with(&listen, &good, dir.path(), &tls_args);
    let lines = https_lines(&port, &certs, "ca.pem", Some("client"), &good);
    let with = |sb: &PrivateSandbox, name: &str| {
        let d = dir.path().join(name);
        std::fs::create_dir_all(&d).unwrap();
        with_agent_lines(&sb.topology(), &d, &lines)
    };
    let (src_topo, tgt_topo) = (with(&src, "src"), with(&tgt, "tgt"));
    let (arg, tgt_arg) = (src_topo.to_str().unwrap(), tgt_topo.to_str().unwrap());
    let rt = tokio::runtime::Runtime::new().unwrap();
    let source = db::topology(&src.topology());
    rt.block_on(db::setup_all(
        &source,
        &[
            "CREATE DATABASE bank",
            "CREATE TABLE bank.ledger (id INT PRIMARY KEY, side VARCHAR(10), amount INT) ENGINE=InnoDB",
            "INSERT INTO bank.ledger VALUES (1, 'debit', 10)",
        ],
        "bank",
        "CREATE TABLE ledger (id int PRIMARY KEY, side text, amount int); INSERT INTO ledger VALUES (1, 'credit', 10);",
    ));

    // Capture starts through the agent (it opens the slot and reads the
    // binlog on the database host), then a backup, then later writes.
    let ok = |args: &[&str]| {
        let r = shardcut(args);
        assert_eq!(r.code, 0, "{args:?}: {r:?}");
        r
    };
    ok(&["capture", "-t", arg, "--once", "--no-mark"]);
    ok(&["backup", "-t", arg]);
    rt.block_on(async {
        let my = source.shards.iter().find(|s| s.name == "mysql-0").unwrap();
        let pg = source.shards.iter().find(|s| s.name == "pg-0").unwrap();
        let mut c = db::mysql(my, Some("bank")).await;
        for sql in [
            "INSERT INTO ledger VALUES (2, 'debit', 7)",
            "UPDATE ledger SET amount = 11 WHERE id = 1",
        ] {
            mysql_async::prelude::Queryable::query_drop(&mut c, sql)
                .await
                .unwrap();
        }
        db::pg(pg, "bank")
            .await
            .batch_execute("INSERT INTO ledger VALUES (2, 'credit', 7); UPDATE ledger SET amount = 11 WHERE id = 1;")
            .await
            .unwrap();
    });
    ok(&["capture", "-t", arg, "--once"]);

    // Restore, replay and read-back run on the target's agent: Q = 1 and
    // the target equals the source by the servers' own checksums.
    let run = ok(&[
        "restore", "-t", arg, "--target", tgt_arg, "--until", "latest", "--json",
    ]);
    assert_eq!(run.json()["quality"]["score"], 1.0, "{run:?}");
    let target = db::topology(&tgt.topology());
    rt.block_on(async {
        let (sm, tm) = (&source.shards[0], &target.shards[0]);
        let (sp, tp) = (&source.shards[1], &target.shards[1]);
        assert_eq!(
            db::mysql_checksum(tm, "bank.ledger").await,
            db::mysql_checksum(sm, "bank.ledger").await
        );
        assert_eq!(
            db::pg_digest(tp, "bank", "public", "ledger").await,
            db::pg_digest(sp, "bank", "public", "ledger").await
        );
    });

    // Without the agent, none of it runs: capture, status's server
    // figures and restore all name the agent that is gone.
    drop(agent);
    let run = shardcut(&["capture", "-t", arg, "--once", "--no-mark"]);
    assert_eq!(run.code, 1, "{run:?}");
    assert!(
        run.stderr
            .contains(&format!("agent https://localhost:{port}")),
        "{run:?}"
    );
    let run = shardcut(&[
        "restore",
        "-t",
        arg,
        "--target",
        tgt_arg,
        "--until",
        "latest",
        "--overwrite",
    ]);
    assert_ne!(run.code, 0, "{run:?}");
    assert!(
        run.stderr
            .contains(&format!("agent https://localhost:{port}")),
        "{run:?}"
    );
}

/// An orchestrator killed while a remote agent dumps: the dump went on
/// into the discarded backup, holding its snapshot connections (on
/// MariaDB the metadata locks of the tables it read, which DDL waits for)
/// until it ended. The agent now stops a dump nobody has asked about for
/// a while (2 minutes; 2 s here): its connections close. The dump is held
/// open in its schema read for 30 s by a test hook.
#[test]
fn an_agent_stops_a_dump_its_orchestrator_no_longer_polls() {
    use mysql_async::prelude::Queryable;
    let sb = PrivateSandbox::up(1, 0, "ready");
    let dir = tempfile::tempdir().unwrap();
    let good = token(dir.path(), "token", "a-long-random-agent-token-0123456789");
    let listen = format!("127.0.0.1:{}", support::free_port());
    let _agent = AgentProcess::start_env(
        &listen,
        &good,
        dir.path(),
        &["--insecure"],
        &[
            ("SHARDCUT_AGENT_DUMP_UNPOLLED_SECS", "2"),
            ("SHARDCUT_TEST_SCHEMA_PAUSE_MS", "30000"),
        ],
    );
    let topo = with_agents(&sb.topology(), dir.path(), &listen, &good);
    let shard = db::topology(&topo).shards[0].clone();
    let rt = tokio::runtime::Runtime::new().unwrap();
    let mut c = rt.block_on(async {
        let mut c = db::mysql(&shard, None).await;
        c.query_drop(
            "CREATE DATABASE app; CREATE TABLE app.t (id INT PRIMARY KEY); \
             INSERT INTO app.t VALUES (1)",
        )
        .await
        .unwrap();
        c
    });
    // The backup user's other sessions: the agent's.
    let mut agent_sessions = || -> i64 {
        rt.block_on(c.query_first::<i64, _>(
            "SELECT COUNT(*) FROM information_schema.PROCESSLIST \
             WHERE USER = 'shardcut' AND ID <> CONNECTION_ID()",
        ))
        .unwrap()
        .unwrap_or(0)
    };
    let mut child = Command::new(bin("shardcut"))
        .args(["backup", "-t", topo.to_str().unwrap()])
        .stderr(Stdio::null())
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    // Past the cut, into the dump (held in its schema read).
    std::thread::sleep(std::time::Duration::from_secs(4));
    assert!(agent_sessions() > 0, "the agent is dumping");
    child.kill().unwrap();
    child.wait().unwrap();
    let killed = std::time::Instant::now();
    while agent_sessions() > 0 && killed.elapsed() < std::time::Duration::from_secs(12) {
        std::thread::sleep(std::time::Duration::from_millis(250));
    }
    assert_eq!(
        agent_sessions(),
        0,
        "the agent still dumps {:?} after its orchestrator was killed",
        killed.elapsed()
    );
    rt.block_on(c.disconnect()).unwrap();
}

/// A shard whose manifest is larger than a web framework's usual request
/// limit of 2 MiB (a shard of thousands of tables; here 24 tables of 1,500
/// columns) restores through its agent: the restore sends the shard's
/// manifest to the agent, which refused any request over 2 MiB ("answered
/// HTTP 413"), so such a shard backed up through its agent and could not
/// be restored through one.
#[test]
fn a_shard_whose_manifest_exceeds_two_mebibytes_restores_through_its_agent() {
    let src = PrivateSandbox::up(0, 1, "ready");
    let tgt = PrivateSandbox::up(0, 1, "ready");
    let dir = tempfile::tempdir().unwrap();
    let good = token(dir.path(), "token", "a-long-random-agent-token-0123456789");
    let agent = AgentProcess::start("127.0.0.1:0", &good, dir.path());
    let with = |sb: &PrivateSandbox, name: &str| {
        let d = dir.path().join(name);
        std::fs::create_dir_all(&d).unwrap();
        with_agents(&sb.topology(), &d, &agent.addr, &good)
    };
    let (src_topo, tgt_topo) = (with(&src, "src"), with(&tgt, "tgt"));
    let (arg, tgt_arg) = (src_topo.to_str().unwrap(), tgt_topo.to_str().unwrap());
    let rt = tokio::runtime::Runtime::new().unwrap();
    let source = db::topology(&src.topology());
    rt.block_on(db::setup_all(
        &source,
        &[],
        "wide",
        "DO $$ DECLARE cols text; one text := 'c0001' || repeat('x', 58); BEGIN \
           SELECT string_agg(format('%I int', 'c' || lpad(g::text, 4, '0') || repeat('x', 58)), ', ') \
             INTO cols FROM generate_series(1, 1500) g; \
           FOR i IN 1..24 LOOP \
             EXECUTE format('CREATE TABLE wide%s (id int PRIMARY KEY, %s)', i, cols); \
             EXECUTE format('INSERT INTO wide%s (id, %I) VALUES (1, 1), (2, 2)', i, one); \
           END LOOP; END $$;",
    ));
    let run = shardcut(&["backup", "-t", arg, "--json"]);
    assert_eq!(run.code, 0, "{run:?}");
    let id = run.json()["backup_id"].as_str().unwrap().to_string();
    let m = support::manifest(&src_topo, &id);
    let size = serde_json::to_vec(&m.shards["pg-0"]).unwrap().len();
    assert!(size > 2 << 20, "the shard's manifest is {size} bytes");

    let run = shardcut(&["restore", "-t", arg, "--target", tgt_arg, "--json"]);
    assert_eq!(run.code, 0, "{run:?}");
    assert_eq!(run.json()["quality"]["score"], 1.0, "{run:?}");
    let target = db::topology(&tgt.topology());
    rt.block_on(async {
        for t in ["wide1", "wide24"] {
            assert_eq!(
                db::pg_digest(&target.shards[0], "wide", "public", t).await,
                db::pg_digest(&source.shards[0], "wide", "public", t).await,
                "{t}"
            );
        }
    });
}
