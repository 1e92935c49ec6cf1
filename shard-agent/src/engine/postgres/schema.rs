//! The PostgreSQL schema as of the cut's snapshot, in the two sections that
//! PostgreSQL's own tools restore around the data: `pre-data` (types,
//! tables, functions, sequences) and `post-data` (indexes, constraints,
//! foreign keys, triggers, rules). Produced by `pg_dump --snapshot`, which
//! reads the catalog as of the same exported snapshot as the data.

use std::path::PathBuf;
use std::process::Stdio;

use topology::Shard;

use crate::error::AgentError;

/// The newest installed PostgreSQL client program `name`: Debian keeps one
/// per major version under /usr/lib/postgresql, and pg_dump must not be
/// older than the server.
pub fn pg_binary(name: &str) -> PathBuf {
    newest_binary(name)
        .map(|(_, p)| p)
        .unwrap_or_else(|| PathBuf::from(name))
}

/// The newest installed client program `name` under /usr/lib/postgresql,
/// with its major version.
fn newest_binary(name: &str) -> Option<(u32, PathBuf)> {
    let mut best: Option<(u32, PathBuf)> = None;
    if let Ok(entries) = std::fs::read_dir("/usr/lib/postgresql") {
        for e in entries.flatten() {
            let version = e.file_name().to_str().and_then(|v| v.parse::<u32>().ok());
            let path = e.path().join("bin").join(name);
            if let Some(v) = version {
                if path.exists() && best.as_ref().is_none_or(|(b, _)| v > *b) {
                    best = Some((v, path));
                }
            }
        }
    }
    best
}

/// A fingerprint of a schema section as pg_dump wrote it, to tell a later
/// one of another schema from: XXH3 of its lines but those that change
/// from one pg_dump run to the next over the same schema (comments, blank
/// lines, the random key of `\restrict`), the session settings pg_dump
/// begins with (which its versions add to) and those of capture's own
/// publication (shardcut's, kept current by capture, not the DBA's).
/// Prefixed with pg_dump's major version (`17:…`): fingerprints of two
/// versions are not compared.
pub(super) fn fingerprint(sql: &[u8]) -> String {
    let version = newest_binary("pg_dump").map_or_else(|| "?".to_string(), |(v, _)| v.to_string());
    format!("{version}:{}", fingerprint_of(sql))
}

fn fingerprint_of(sql: &[u8]) -> String {
    let mut h = twox_hash::XxHash3_64::new();
    // The settings pg_dump begins a section with; later ones
    // (`default_tablespace` or `default_table_access_method` before an
    // object, a function body's lines) are the schema's.
    let mut head = true;
    for line in sql.split(|&b| b == b'\n') {
        let ours = [&b"CREATE PUBLICATION "[..], b"ALTER PUBLICATION "]
            .iter()
            .any(|p| {
                line.strip_prefix(*p)
                    .and_then(|rest| rest.split(|&b| b == b' ' || b == b';').next())
                    .and_then(|name| std::str::from_utf8(name).ok())
                    .is_some_and(super::capture::is_slot_name)
            });
        let setting =
            line.starts_with(b"SET ") || line.starts_with(b"SELECT pg_catalog.set_config(");
        if line.is_empty()
            || line.starts_with(b"--")
            || (head && setting)
            || line.starts_with(b"\\restrict ")
            || line.starts_with(b"\\unrestrict ")
            || ours
        {
            continue;
        }
        head = false;
        std::hash::Hasher::write(&mut h, line);
        std::hash::Hasher::write(&mut h, b"\n");
    }
    format!("{:016x}", std::hash::Hasher::finish(&h))
}

/// The shard's CA certificates in a file of this process's own (0600),
/// for libpq's `PGSSLROOTCERT`; removed when dropped.
pub struct CaFile(PathBuf);

impl CaFile {
    fn write(pem: &str) -> std::io::Result<CaFile> {
        use std::io::Write;
        use std::os::unix::fs::OpenOptionsExt;
        static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let path = std::env::temp_dir().join(format!("shardcut-ca-{}-{n}.pem", std::process::id()));
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&path)?;
        f.write_all(pem.as_bytes())?;
        Ok(CaFile(path))
    }
}

impl Drop for CaFile {
    fn drop(&mut self) {
        drop(std::fs::remove_file(&self.0));
    }
}

/// A PostgreSQL client program (`pg_dump`, `psql`) set up to reach `db` on
/// `shard`: connection arguments, the shard's TLS mode, no password prompt,
/// killed if dropped. The password goes through the child's environment
/// only, never its command line (visible in ps) or a log line. The
/// [`CaFile`] must outlive the program.
pub fn client_command(
    shard: &Shard,
    program: &str,
    db: &str,
) -> Result<(tokio::process::Command, Option<CaFile>), AgentError> {
    let e = &shard.endpoint;
    let mut cmd = tokio::process::Command::new(pg_binary(program));
    cmd.arg("--no-password")
        .arg("--host")
        .arg(&e.host)
        .arg("--port")
        .arg(e.port.to_string())
        .arg("--username")
        .arg(&e.user)
        .arg("--dbname")
        .arg(dbname_conninfo(db))
        .env("PGAPPNAME", "shardcut")
        .kill_on_drop(true);
    if let Some(p) = &shard.password {
        cmd.env("PGPASSWORD", p.expose());
    }
    cmd.env("PGSSLMODE", shard.tls.mode.as_str());
    let ca = match &shard.tls.ca_pem {
        Some(pem) if shard.tls.mode.verifies() => {
            let file = CaFile::write(pem).map_err(|source| AgentError::Program {
                shard: shard.name.clone(),
                program: format!("{program} (writing its CA file)"),
                source,
            })?;
            cmd.env("PGSSLROOTCERT", &file.0);
            Some(file)
        }
        _ => None,
    };
    Ok((cmd, ca))
}

/// `db` as a libpq connection string naming just that database. The
/// client programs read a `--dbname` holding `=` (or starting with
/// `postgresql://`) as a connection string, so a database named
/// `dbname=x host=elsewhere` would otherwise send them, and the password,
/// to another server; inside single quotes, with `\` and `'` escaped by a
/// backslash, every name is taken as a name.
pub fn dbname_conninfo(db: &str) -> String {
    let mut out = String::with_capacity(db.len() + 10);
    out.push_str("dbname='");
    for c in db.chars() {
        if c == '\\' || c == '\'' {
            out.push('\\');
        }
        out.push(c);
    }
    out.push('\'');
    out
}

/// The schema of `db` as of `snapshot`, as the SQL of its two sections
/// (`pre-data`, `post-data`). One `pg_dump --schema-only` into a
/// custom-format archive reads the catalog once (it locks and reads every
/// table's definition: 1.7 s of the server's and pg_dump's time at 10,000
/// tables); `pg_restore` then writes each section's SQL from the archive,
/// locally. Two pg_dump runs, one a section, read the catalog twice. The
/// archive goes through pipes, never a file: a killed backup leaves
/// nothing behind.
pub(super) async fn sections(
    shard: &Shard,
    db: &str,
    snapshot: &str,
    excluded: &[String],
) -> Result<(Vec<u8>, Vec<u8>), AgentError> {
    let (mut cmd, _ca) = client_command(shard, "pg_dump", db)?;
    cmd.arg("--schema-only")
        .arg("--format=custom")
        .arg(format!("--snapshot={snapshot}"));
    for t in excluded {
        cmd.arg(format!("--exclude-table={t}"));
    }
    let archive = run(shard, cmd, None, "pg_dump --schema-only", db).await?;
    let section = |name: &'static str| {
        let mut cmd = tokio::process::Command::new(pg_binary("pg_restore"));
        cmd.arg(format!("--section={name}"))
            .arg("--file=-")
            .kill_on_drop(true);
        run(shard, cmd, Some(&archive), name, db)
    };
    let (pre, post) = tokio::join!(section("pre-data"), section("post-data"));
    Ok((pre?, post?))
}

/// Runs a PostgreSQL client program to its end, `input` on its standard
/// input; its standard output, or an error with its standard error on
/// one line.
async fn run(
    shard: &Shard,
    mut cmd: tokio::process::Command,
    input: Option<&[u8]>,
    what: &str,
    db: &str,
) -> Result<Vec<u8>, AgentError> {
    use tokio::io::AsyncWriteExt;
    cmd.stdin(if input.is_some() {
        Stdio::piped()
    } else {
        Stdio::null()
    })
    .stdout(Stdio::piped())
    .stderr(Stdio::piped());
    let program = cmd.as_std().get_program().to_string_lossy().to_string();
    let failed = |source: std::io::Error| AgentError::Program {
        shard: shard.name.clone(),
        program: program.clone(),
        source,
    };
    let mut child = cmd.spawn().map_err(failed)?;
    let stdin = child.stdin.take();
    // Written while the output is read: either may fill its pipe first.
    let write = async {
        if let (Some(mut pipe), Some(data)) = (stdin, input) {
            // A program that stops reading ends with its own error, which
            // is the one reported.
            let _ = pipe.write_all(data).await;
        }
    };
    let (_, out) = tokio::join!(write, child.wait_with_output());
    let out = out.map_err(failed)?;
    if !out.status.success() {
        let stderr = String::from_utf8_lossy(&out.stderr);
        return Err(AgentError::Tool {
            shard: shard.name.clone(),
            what: format!(
                "{what} of {db} failed ({}): {}",
                out.status,
                stderr.trim().replace('\n', " ")
            ),
        });
    }
    Ok(out.stdout)
}

#[cfg(test)]
mod tests {
    use super::dbname_conninfo;

    #[test]
    fn database_names_are_quoted_as_connection_string_values() {
        assert_eq!(dbname_conninfo("shop"), "dbname='shop'");
        assert_eq!(
            dbname_conninfo("dbname=x host=evil port=1"),
            "dbname='dbname=x host=evil port=1'"
        );
        assert_eq!(dbname_conninfo(r"a'b\c"), r"dbname='a\'b\\c'");
        assert_eq!(
            dbname_conninfo("postgresql://evil/x"),
            "dbname='postgresql://evil/x'"
        );
    }

    /// What changes between two pg_dump runs over one schema does not
    /// count; capture's own publication does not (another one does); an
    /// index does.
    #[test]
    fn a_schema_fingerprint_tells_only_the_schema_apart() {
        let base = b"\\restrict AbC\n--\n-- Name: t_pkey\n--\n\nALTER TABLE ONLY public.t\n    ADD CONSTRAINT t_pkey PRIMARY KEY (id);\n\\unrestrict AbC\n";
        let again = b"\\restrict XyZ\n-- Name: t_pkey; Type: CONSTRAINT\nALTER TABLE ONLY public.t\n    ADD CONSTRAINT t_pkey PRIMARY KEY (id);\nCREATE PUBLICATION shardcut_03a5e29f64ce202e WITH (publish_via_partition_root = true);\nALTER PUBLICATION shardcut_03a5e29f64ce202e ADD TABLE ONLY public.t;\n\\unrestrict XyZ\n";
        let print = super::fingerprint_of;
        assert_eq!(print(base), print(again));
        let theirs = [
            &base[..],
            b"CREATE PUBLICATION app WITH (publish = 'insert');\n",
        ]
        .concat();
        assert_ne!(print(base), print(&theirs));
        let indexed = [
            &base[..],
            b"CREATE INDEX t_label ON public.t USING btree (label);\n",
        ]
        .concat();
        assert_ne!(print(base), print(&indexed));
        // pg_dump 17 begins with one more setting; a setting between
        // objects, or a function body's line, is the schema's.
        let newer = [&b"SET transaction_timeout = 0;\n"[..], base].concat();
        assert_eq!(print(base), print(&newer));
        let moved = [&base[..], b"SET default_tablespace = fast;\n"].concat();
        assert_ne!(print(base), print(&moved));
    }
}
