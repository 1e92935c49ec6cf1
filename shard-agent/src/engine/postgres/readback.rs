//! Reading a PostgreSQL table back for verification.

use std::time::Duration;

use topology::Shard;

use super::binary_copy::{self, BinaryCopy};
use super::copy_reader::{literal, CopyReader};
use super::ident;
use crate::client_choice::ReaderKind;
use crate::dump::chunk::RowDigest;
use crate::error::AgentError;

const TIMEOUT: Duration = Duration::from_secs(10);

/// Read-back connections kept between tables (see [`crate::idle`]).
static IDLE: std::sync::LazyLock<crate::idle::Idle<CopyReader>> =
    std::sync::LazyLock::new(Default::default);

/// Reads `db`.`schema`.`table` back through the client `kind` chooses;
/// `columns` are its (name, type) from the manifest.
pub(super) async fn digest(
    shard: &Shard,
    db: &str,
    schema: &str,
    table: &str,
    columns: &[(&str, &str)],
    kind: ReaderKind,
) -> Result<RowDigest, AgentError> {
    let key = crate::idle::key(shard, db, &format!("{kind:?}"));
    // A kept connection may have died since (a server restart): the read
    // is tried once more on a new one before it counts as failed.
    if let Some(kept) = IDLE.take(&key) {
        if let Ok((digest, client)) = read(kept, shard, db, schema, table, columns).await {
            IDLE.put(key, client);
            return Ok(digest);
        }
    }
    let client = CopyReader::connect(shard, db, TIMEOUT, kind).await?;
    let (digest, client) = read(client, shard, db, schema, table, columns).await?;
    // Read whole and answered: kept for the next table's read.
    IDLE.put(key, client);
    Ok(digest)
}

/// Reads a table back on `client`; gives the client back when the read
/// went through.
async fn read(
    mut client: CopyReader,
    shard: &Shard,
    db: &str,
    schema: &str,
    table: &str,
    columns: &[(&str, &str)],
) -> Result<(RowDigest, CopyReader), AgentError> {
    let what = format!("reading back {db}.{schema}.{table}");
    let err = |source| AgentError::Query {
        shard: shard.name.clone(),
        what: what.clone(),
        source,
    };
    // As the dump reads it: a partitioned table with its partitions, any
    // other without its inheritance children (they are tables of their
    // own in the backup). A missing table reads as a plain one, and the
    // COPY then fails with the server's own error.
    let partitioned = client
        .exists(&format!(
            "SELECT 1 FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace \
             WHERE n.nspname = {} AND c.relname = {} AND c.relkind = 'p'",
            literal(schema),
            literal(table)
        ))
        .await
        .map_err(err)?;
    let cols: Vec<String> = columns.iter().map(|(c, _)| ident(c)).collect();
    // Where every column's text form can be printed here, the server
    // sends the binary format, which costs it less (see `binary_copy`).
    let types: Vec<&str> = columns.iter().map(|(_, ty)| *ty).collect();
    let binary = binary_copy::columns(&types).map(BinaryCopy::new);
    let sql = format!(
        "COPY (SELECT {} FROM {}{}.{}) TO STDOUT{}",
        cols.join(", "),
        if partitioned { "" } else { "ONLY " },
        ident(schema),
        ident(table),
        if binary.is_some() {
            " (FORMAT binary)"
        } else {
            ""
        }
    );
    let malformed = |why: String| AgentError::Tool {
        shard: shard.name.clone(),
        what: format!("{what}: {why}"),
    };
    let mut digest = RowDigest::default();
    let mut carry = Vec::new();
    {
        let mut copy = client.copy_out(sql.as_str()).await.map_err(err)?;
        match binary {
            Some(mut parser) => {
                while let Some(piece) = copy.next().await.map_err(err)? {
                    parser.feed(&mut digest, piece).map_err(malformed)?;
                }
                parser.finish().map_err(malformed)?;
            }
            None => {
                while let Some(piece) = copy.next().await.map_err(err)? {
                    digest_lines(&mut digest, &mut carry, piece);
                }
            }
        }
    }
    if !carry.is_empty() {
        return Err(malformed("COPY output ended in the middle of a row".into()));
    }
    Ok((digest, client))
}

/// Adds the rows of one piece of `COPY` text output to `digest`. Rows end
/// with LF (an LF inside a value is escaped); `carry` holds the unfinished
/// row of the previous piece and keeps this piece's unfinished end. The
/// server sends one row per message, so the carry is rarely used and rows
/// are hashed where they arrived.
fn digest_lines(digest: &mut RowDigest, carry: &mut Vec<u8>, piece: &[u8]) {
    let mut rest = piece;
    if !carry.is_empty() {
        let Some(nl) = memchr::memchr(b'\n', rest) else {
            carry.extend_from_slice(rest);
            return;
        };
        carry.extend_from_slice(&rest[..nl]);
        digest.add_line(carry);
        carry.clear();
        rest = &rest[nl + 1..];
    }
    let mut start = 0;
    for nl in memchr::memchr_iter(b'\n', rest) {
        digest.add_line(&rest[start..nl]);
        start = nl + 1;
    }
    carry.extend_from_slice(&rest[start..]);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rows_split_anywhere_hash_as_whole_rows() {
        let text = b"1\ta\n22\tbb\n333\tccc\n";
        let mut whole = RowDigest::default();
        for line in [&b"1\ta"[..], b"22\tbb", b"333\tccc"] {
            whole.add_line(line);
        }
        for cut in 0..text.len() {
            for cut2 in cut..text.len() {
                let (mut d, mut carry) = (RowDigest::default(), Vec::new());
                for piece in [&text[..cut], &text[cut..cut2], &text[cut2..]] {
                    digest_lines(&mut d, &mut carry, piece);
                }
                assert_eq!(d, whole, "pieces cut at {cut} and {cut2}");
                assert!(carry.is_empty());
            }
        }
        let (mut d, mut carry) = (RowDigest::default(), Vec::new());
        digest_lines(&mut d, &mut carry, b"1\ta\n22");
        assert_eq!((d.rows, carry.as_slice()), (1, &b"22"[..]));
    }
}
