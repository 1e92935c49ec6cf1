//! Cross-shard consistency under load: while transfers move amounts between
//! shards (debit committed on one shard, then credit committed on another),
//! every backup must contain the debit of every credit it contains. Without
//! the write block the same check finds violations, so it can fail.

use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

use mysql_async::prelude::Queryable;
use shard_agent::engine::mysql::value::decode_line;
use topology::{Engine, Shard, Topology};

use crate::support::{self, db, PrivateSandbox};

pub const MYSQL_SETUP: &[&str] = &[
    "DROP DATABASE IF EXISTS bank",
    "CREATE DATABASE bank",
    "CREATE TABLE bank.accounts (id INT PRIMARY KEY, balance BIGINT NOT NULL) ENGINE=InnoDB",
    "INSERT INTO bank.accounts VALUES (1, 1000000000)",
    "CREATE TABLE bank.ledger (transfer_id BIGINT NOT NULL, kind VARCHAR(6) NOT NULL, \
     amount BIGINT NOT NULL, PRIMARY KEY (transfer_id, kind), KEY by_amount (amount)) ENGINE=InnoDB",
];
pub const PG_SETUP: &str = "CREATE TABLE accounts (id int PRIMARY KEY, balance bigint NOT NULL); \
    INSERT INTO accounts VALUES (1, 1000000000); \
    CREATE TABLE ledger (transfer_id bigint NOT NULL, kind text NOT NULL, amount bigint NOT NULL, \
    PRIMARY KEY (transfer_id, kind));";

/// One leg of a transfer, committed on its own.
enum Conn {
    My(mysql_async::Conn),
    Pg(tokio_postgres::Client),
}

impl Conn {
    async fn open(shard: &Shard) -> Conn {
        match shard.engine {
            Engine::Mysql => Conn::My(db::mysql(shard, Some("bank")).await),
            Engine::Postgres => Conn::Pg(db::pg(shard, "bank").await),
        }
    }

    async fn leg(&mut self, id: u64, kind: &str, amount: i64) {
        let delta = if kind == "debit" { -amount } else { amount };
        match self {
            Conn::My(c) => {
                let sql = format!(
                    "START TRANSACTION; UPDATE accounts SET balance = balance + ({delta}) WHERE id = 1; \
                     INSERT INTO ledger VALUES ({id}, '{kind}', {amount}); COMMIT"
                );
                c.query_drop(sql).await.unwrap();
            }
            Conn::Pg(c) => {
                let sql = format!(
                    "BEGIN; UPDATE accounts SET balance = balance + ({delta}) WHERE id = 1; \
                     INSERT INTO ledger VALUES ({id}, '{kind}', {amount}); COMMIT"
                );
                c.batch_execute(&sql).await.unwrap();
            }
        }
    }
}

/// Moves amounts between random pairs of shards until `stop`.
pub async fn workload(topo: Topology, seed: u64, next_id: Arc<AtomicU64>, stop: Arc<AtomicBool>) {
    let mut conns = Vec::new();
    for s in &topo.shards {
        conns.push(Conn::open(s).await);
    }
    let n = conns.len() as u64;
    let mut x = seed;
    while !stop.load(Ordering::Relaxed) {
        x = x
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        let from = ((x >> 33) % n) as usize;
        let to = ((from as u64 + 1 + (x >> 40) % (n - 1)) % n) as usize;
        let id = next_id.fetch_add(1, Ordering::Relaxed);
        let amount = 1 + (x >> 50) as i64 % 100;
        conns[from].leg(id, "debit", amount).await;
        conns[to].leg(id, "credit", amount).await;
    }
}

/// Credits without their debit in one backup, read through the project's
/// own chunk reader; also returns how many transfers the backup holds.
fn violations(topo_path: &std::path::Path, id: &str) -> (usize, usize) {
    let m = support::manifest(topo_path, id);
    let topo = db::topology(topo_path);
    let repo = db::repository(&topo);
    let (mut debits, mut credits) = (HashSet::new(), HashSet::new());
    for s in &topo.shards {
        let q = match s.engine {
            Engine::Mysql => "bank.ledger",
            Engine::Postgres => "bank.public.ledger",
        };
        for line in db::table_lines(&repo, &m.shards[&s.name], db::find_table(&m, &s.name, q)) {
            let fields = decode_line(&line);
            let tid: u64 = String::from_utf8(fields[0].clone().unwrap())
                .unwrap()
                .parse()
                .unwrap();
            match fields[1].as_deref() {
                Some(b"debit") => assert!(debits.insert(tid), "duplicate debit {tid}"),
                Some(b"credit") => assert!(credits.insert(tid), "duplicate credit {tid}"),
                other => panic!("unexpected ledger kind {other:?}"),
            }
        }
    }
    (credits.difference(&debits).count(), debits.len())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_credit_has_its_debit_in_every_backup() {
    let sb = PrivateSandbox::up(2, 2, "ready");
    let dir = tempfile::tempdir().unwrap();
    let topo_path = support::topology_variant(&sb.topology(), dir.path(), &[]);
    let topo = db::topology(&topo_path);
    db::setup_all(&topo, MYSQL_SETUP, "bank", PG_SETUP).await;

    let next_id = Arc::new(AtomicU64::new(1));
    let stop = Arc::new(AtomicBool::new(false));
    let mut workers = Vec::new();
    for seed in [7, 11] {
        workers.push(tokio::spawn(workload(
            topo.clone(),
            seed,
            next_id.clone(),
            stop.clone(),
        )));
    }
    let arg = topo_path.to_str().unwrap();
    tokio::time::sleep(std::time::Duration::from_millis(500)).await;

    let mut checked = Vec::new();
    for _ in 0..3 {
        let before = next_id.load(Ordering::Relaxed);
        let id = support::backup_id(arg).await;
        let (bad, transfers) = violations(&topo_path, &id);
        assert_eq!(bad, 0, "backup {id} has {bad} credits without their debit");
        assert!(
            transfers as u64 >= before.saturating_sub(1) / 2,
            "backup holds the transfers before it"
        );
        checked.push((id, transfers));
    }
    // One worker that moves on to a fresh snapshot connection after every
    // table, as workers do every 1,000 tables: the spare connections opened
    // their snapshots under the same write block, so the ledger read on
    // one holds the same transfers as the other shards'. A larger table
    // goes first, so the ledger is read on a spare.
    for s in topo.shards.iter().filter(|s| s.engine == Engine::Mysql) {
        let mut c = db::mysql(s, Some("bank")).await;
        c.query_drop(
            "CREATE TABLE filler (id INT PRIMARY KEY) ENGINE=InnoDB; \
             INSERT INTO filler SELECT seq FROM seq_1_to_200000; ANALYZE TABLE filler",
        )
        .await
        .unwrap();
    }
    let one_dir = tempfile::tempdir().unwrap();
    let one = support::topology_variant(
        &sb.topology(),
        one_dir.path(),
        &[("parallelism: 4", "parallelism: 1")],
    );
    for _ in 0..2 {
        let run = support::shardcut_env_async(
            &["backup", "-t", one.to_str().unwrap(), "--json"],
            &[("SHARDCUT_TABLES_PER_SNAPSHOT", "1")],
        )
        .await;
        assert_eq!(run.code, 0, "{run:?}");
        let id = run.json()["backup_id"].as_str().unwrap().to_string();
        let (bad, transfers) = violations(&one, &id);
        assert_eq!(
            bad, 0,
            "backup {id} (a snapshot connection a table) has {bad} credits without their debit"
        );
        assert!(transfers > 0, "backup {id} holds no transfer");
    }
    let mut unsafe_bad = 0;
    for _ in 0..3 {
        let run =
            support::shardcut_async(&["backup", "-t", arg, "--json", "--test-no-write-block"])
                .await;
        assert_eq!(run.code, 0, "{run:?}");
        let id = run.json()["backup_id"].as_str().unwrap().to_string();
        unsafe_bad += violations(&topo_path, &id).0;
    }
    stop.store(true, Ordering::Relaxed);
    for w in workers {
        w.await.unwrap();
    }
    let total = next_id.load(Ordering::Relaxed);
    assert!(
        total > 200,
        "the workload made only {total} transfers; the test proves nothing"
    );
    assert!(
        checked.windows(2).all(|w| w[1].1 > w[0].1),
        "each later backup must hold more transfers: writes went on between backups ({checked:?})"
    );
    assert!(
        unsafe_bad > 0,
        "without the write block, per-shard snapshots should have split some transfers"
    );
    eprintln!("consistent backups: {checked:?}; violations without the block: {unsafe_bad}; transfers: {total}");

    // Restore the last consistent backup into a second cluster and check it
    // there with plain SQL: every credit has its debit, and every shard's
    // balance equals its own ledger.
    let target = PrivateSandbox::up(2, 2, "ready");
    let (id, transfers) = checked.last().unwrap().clone();
    let restored = db::topology(&target.topology());
    let logged_before = mysql_gtid_positions(&restored).await;
    let run = support::shardcut_async(&[
        "restore",
        "-t",
        arg,
        "--backup",
        &id,
        "--target",
        target.topology().to_str().unwrap(),
        "--json",
    ])
    .await;
    assert_eq!(run.code, 0, "{run:?}");
    assert_eq!(run.json()["quality"]["score"], 1.0);
    // Restores stay out of the target's binary log unless --binlog.
    assert_eq!(
        mysql_gtid_positions(&restored).await,
        logged_before,
        "the restore wrote to the target's binary log"
    );
    // The secondary key left out of CREATE TABLE during the load is back.
    for s in restored.shards.iter().filter(|s| s.engine == Engine::Mysql) {
        let mut c = db::mysql(s, None).await;
        let cols: Option<String> = c
            .query_first(
                "SELECT GROUP_CONCAT(COLUMN_NAME ORDER BY SEQ_IN_INDEX) FROM information_schema.STATISTICS \
                 WHERE TABLE_SCHEMA = 'bank' AND TABLE_NAME = 'ledger' AND INDEX_NAME = 'by_amount' \
                 AND NON_UNIQUE = 1",
            )
            .await
            .unwrap();
        assert_eq!(cols.as_deref(), Some("amount"), "{}: key by_amount", s.name);
    }
    let (debits, credits) = bank_state(&restored).await;
    assert_eq!(
        debits.len(),
        transfers,
        "the restore holds the backup's transfers"
    );
    let orphans = credits.difference(&debits).count();
    assert_eq!(
        orphans, 0,
        "restored cluster has {orphans} credits without their debit"
    );
}

/// `@@gtid_binlog_pos` of every MariaDB shard: what its binary log holds.
async fn mysql_gtid_positions(topo: &Topology) -> Vec<String> {
    let mut out = Vec::new();
    for s in topo.shards.iter().filter(|s| s.engine == Engine::Mysql) {
        let mut c = db::mysql(s, None).await;
        let pos: Option<String> = c.query_first("SELECT @@gtid_binlog_pos").await.unwrap();
        out.push(pos.unwrap_or_default());
    }
    out
}

/// Every shard's ledger of a bank cluster, checked on the way: each shard's
/// balance must equal its own ledger. Returns the transfer ids debited and
/// credited across the cluster.
pub async fn bank_state(topo: &Topology) -> (HashSet<i64>, HashSet<i64>) {
    let (mut debits, mut credits) = (HashSet::new(), HashSet::new());
    for s in &topo.shards {
        let (ledger, balance): (Vec<(i64, String, i64)>, i64) = match s.engine {
            Engine::Mysql => {
                let mut c = db::mysql(s, Some("bank")).await;
                let rows: Vec<(i64, String, i64)> = c
                    .query("SELECT transfer_id, kind, amount FROM ledger")
                    .await
                    .unwrap();
                let b: Option<i64> = c
                    .query_first("SELECT balance FROM accounts WHERE id = 1")
                    .await
                    .unwrap();
                (rows, b.unwrap())
            }
            Engine::Postgres => {
                let c = db::pg(s, "bank").await;
                let rows = c
                    .query("SELECT transfer_id, kind, amount FROM ledger", &[])
                    .await
                    .unwrap()
                    .iter()
                    .map(|r| (r.get(0), r.get(1), r.get(2)))
                    .collect();
                let b: i64 = c
                    .query_one("SELECT balance FROM accounts WHERE id = 1", &[])
                    .await
                    .unwrap()
                    .get(0);
                (rows, b)
            }
        };
        let mut expected = 1_000_000_000i64;
        for (tid, kind, amount) in ledger {
            if kind == "debit" {
                expected -= amount;
                debits.insert(tid);
            } else {
                expected += amount;
                credits.insert(tid);
            }
        }
        assert_eq!(
            balance, expected,
            "{}: restored balance differs from its restored ledger",
            s.name
        );
    }
    (debits, credits)
}
