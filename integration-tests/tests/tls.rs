//! TLS on database connections: each `tls` mode means what it says, on
//! both engines, for the libraries and for shardcut's own readers, and no
//! password leaves in clear unless the topology allows it.

use std::path::{Path, PathBuf};

use crate::support::{db, shardcut, PrivateSandbox};

/// A topology of the sandbox's shards whose names end in `suffix`,
/// reached at `host`, with `lines` (TLS settings) on every shard.
fn variant(sb: &PrivateSandbox, dir: &Path, name: &str, lines: &str, host: &str) -> PathBuf {
    variant_of(sb, dir, name, lines, host, "-0")
}

fn variant_of(
    sb: &PrivateSandbox,
    dir: &Path,
    name: &str,
    lines: &str,
    host: &str,
    suffix: &str,
) -> PathBuf {
    let d = dir.join(name);
    std::fs::create_dir_all(&d).unwrap();
    let topo = db::topology(&sb.topology());
    let mut text = format!(
        "cluster: {name}\nrepository: {}\nshards:\n",
        d.join("repo").display()
    );
    for s in topo.shards.iter().filter(|s| s.name.ends_with(suffix)) {
        let scheme = match s.engine {
            topology::Engine::Mysql => "mysql",
            topology::Engine::Postgres => "postgres",
        };
        let path = if s.engine == topology::Engine::Postgres {
            "/postgres"
        } else {
            ""
        };
        text.push_str(&format!(
            "  - name: {}\n    engine: {scheme}\n    url: {scheme}://shardcut@{host}:{}{path}\n    password_file: {}\n{lines}\n",
            s.name,
            s.endpoint.port,
            sb.dir().join("secrets").join(format!("{}.password", s.name)).display()
        ));
    }
    let path = d.join("topology.yaml");
    std::fs::write(&path, text).unwrap();
    path
}

/// Makes both servers refuse every connection without TLS: the MariaDB
/// account requires SSL, PostgreSQL's pg_hba rejects `hostnossl`.
async fn require_tls_on_the_servers(sb: &PrivateSandbox, topology: &Path) {
    let topo = db::topology(topology);
    for shard in &topo.shards {
        match shard.engine {
            topology::Engine::Mysql => {
                let mut c = db::mysql(shard, None).await;
                for host in ["127.0.0.1", "localhost"] {
                    mysql_async::prelude::Queryable::query_drop(
                        &mut c,
                        format!("ALTER USER 'shardcut'@'{host}' REQUIRE SSL"),
                    )
                    .await
                    .unwrap();
                }
            }
            topology::Engine::Postgres => {
                let hba = sb.dir().join(&shard.name).join("data/pg_hba.conf");
                let old = std::fs::read_to_string(&hba).unwrap();
                std::fs::write(
                    &hba,
                    format!(
                        "hostnossl all all 0.0.0.0/0 reject\nhostnossl all all ::/0 reject\n{old}"
                    ),
                )
                .unwrap();
                db::pg(shard, "postgres")
                    .await
                    .batch_execute("SELECT pg_reload_conf()")
                    .await
                    .unwrap();
            }
        }
    }
}

#[test]
fn verify_full_refuses_a_wrong_host_name_and_backs_up_and_restores_over_tls() {
    // Shards -0 are backed up; shards -1 are the restore targets.
    let sb = PrivateSandbox::up_tls(2, 2, "ready");
    let dir = tempfile::tempdir().unwrap();
    let ca = sb.dir().join("tls/ca.pem");
    let rt = tokio::runtime::Runtime::new().unwrap();
    let plain = sb.topology();
    rt.block_on(db::setup_all(
        &db::topology(&plain),
        &[
            "CREATE DATABASE app",
            "USE app",
            "CREATE TABLE app.t (id INT PRIMARY KEY, v VARCHAR(40)) ENGINE=InnoDB",
            "INSERT INTO app.t SELECT seq, CONCAT('row ', seq) FROM seq_1_to_2000",
        ],
        "app",
        "CREATE TABLE t (id int PRIMARY KEY, v text); INSERT INTO t SELECT g, 'row ' || g FROM generate_series(1, 2000) g;",
    ));
    rt.block_on(require_tls_on_the_servers(&sb, &plain));
    let full = format!("    tls: verify-full\n    ca_file: {}", ca.display());

    // The servers' certificates name `localhost`: verify-full against
    // 127.0.0.1 is refused, on both engines, naming the certificate.
    let wrong = variant(&sb, dir.path(), "wrong-name", &full, "127.0.0.1");
    let run = shardcut(&["backup", "-t", wrong.to_str().unwrap()]);
    assert_eq!(run.code, 1, "{run:?}");
    for shard in ["mysql-0", "pg-0"] {
        assert!(run.stderr.contains(&format!("shard {shard}")), "{run:?}");
    }
    assert!(run.stderr.contains("certificate"), "{run:?}");
    assert!(
        run.stderr.contains("NotValidForName") || run.stderr.contains("not valid for name"),
        "{run:?}"
    );

    // The right name: backup, restore shards -0 into shards -1, read back,
    // Q = 1.
    let right = variant(&sb, dir.path(), "right-name", &full, "localhost");
    let arg = right.to_str().unwrap();
    let check = shardcut(&["check", "-t", arg, "--json"]);
    assert_eq!(check.code, 0, "{check:?}");
    let run = shardcut(&["backup", "-t", arg, "--json"]);
    assert_eq!(run.code, 0, "{run:?}");
    let id = run.json()["backup_id"].as_str().unwrap().to_string();
    let target = variant_of(&sb, dir.path(), "target", &full, "localhost", "-1");
    let restore = shardcut(&[
        "restore",
        "-t",
        arg,
        "--backup",
        &id,
        "--target",
        target.to_str().unwrap(),
        "--map",
        "mysql-0=mysql-1",
        "--map",
        "pg-0=pg-1",
        "--overwrite",
        "--json",
    ]);
    assert_eq!(restore.code, 0, "{restore:?}");
    assert_eq!(restore.json()["quality"]["score"], 1.0, "{restore:?}");

    // verify-ca checks the chain, not the name: 127.0.0.1 is accepted on
    // both engines (and backs up); a CA that did not sign the servers'
    // certificates is refused.
    let ca_lines = format!("    tls: verify-ca\n    ca_file: {}", ca.display());
    let ca_ip = variant(&sb, dir.path(), "ca-ip", &ca_lines, "127.0.0.1");
    let run = shardcut(&["backup", "-t", ca_ip.to_str().unwrap()]);
    assert_eq!(run.code, 0, "{run:?}");
    let other = variant(
        &sb,
        dir.path(),
        "other-ca",
        &format!(
            "    tls: verify-ca\n    ca_file: {}",
            sb.dir().join("tls/other-ca.pem").display()
        ),
        "localhost",
    );
    let run = shardcut(&["check", "-t", other.to_str().unwrap()]);
    assert_ne!(run.code, 0, "{run:?}");
    for shard in ["mysql-0", "pg-0"] {
        assert!(
            run.stdout.contains(&format!("{shard}: UNREACHABLE")),
            "{run:?}"
        );
    }
    assert!(run.all().contains("certificate"), "{run:?}");

    // The servers now refuse connections without TLS: `disable` fails,
    // which shows the connections above really were encrypted.
    let off = variant(&sb, dir.path(), "disable", "    tls: disable", "127.0.0.1");
    let run = shardcut(&["check", "-t", off.to_str().unwrap()]);
    assert_ne!(run.code, 0, "{run:?}");
}

#[test]
fn a_password_is_not_sent_in_clear_unless_the_topology_allows_it() {
    let sb = PrivateSandbox::up(0, 1, "ready");
    let dir = tempfile::tempdir().unwrap();
    // The server asks for the password in clear (`password` method).
    let hba = sb.dir().join("pg-0/data/pg_hba.conf");
    let old = std::fs::read_to_string(&hba).unwrap();
    std::fs::write(
        &hba,
        format!("host all shardcut 127.0.0.1/32 password\n{old}"),
    )
    .unwrap();
    let rt = tokio::runtime::Runtime::new().unwrap();
    let allowed = variant(
        &sb,
        dir.path(),
        "allowed",
        "    tls: disable\n    allow_cleartext_password: true",
        "127.0.0.1",
    );
    rt.block_on(async {
        let topo = db::topology(&allowed);
        db::pg(&topo.shards[0], "postgres")
            .await
            .batch_execute("SELECT pg_reload_conf()")
            .await
            .unwrap();
    });
    let refused = variant(&sb, dir.path(), "refused", "    tls: disable", "127.0.0.1");
    let run = shardcut(&["check", "-t", refused.to_str().unwrap()]);
    assert_ne!(run.code, 0, "{run:?}");
    assert!(
        run.all().contains("asks for the password in clear (`password` method) over a connection without TLS; nothing was sent"),
        "{run:?}"
    );
    let run = shardcut(&["check", "-t", allowed.to_str().unwrap()]);
    assert_eq!(run.code, 0, "{run:?}");
}
