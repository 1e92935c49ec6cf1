//! Reading a table back in `COPY … TO STDOUT (FORMAT binary)` and hashing
//! the lines the text format would have given.
//!
//! Why: a verified restore makes the server write every restored row a
//! second time, for the read-back. In the text format the server prints
//! each value and scans every byte of every string for characters to
//! escape; in the binary format it sends integers as they are and strings
//! as stored, which cost it about a quarter less (docs/BENCHMARKS.md). The
//! row hashes are defined on the text lines, so this client prints them
//! itself, for the column types whose text form it can give exactly:
//! `smallint`, `integer`, `bigint` (decimal digits), `boolean` (`t`/`f`)
//! and `text`, `character varying`, `character` (the stored string, with
//! COPY's escapes: backslash, and `\b \f \n \r \t \v` for those control
//! characters, every other byte as it is; the reader sessions use
//! `client_encoding=UTF8`, which embeds no ASCII byte in a multibyte
//! character). Any other type is read in the text format.
//!
//! The stream comes from the server and is checked as it is parsed: the
//! signature, a field count equal to the column count, lengths that fit
//! their types, nothing after the trailer.

use crate::dump::chunk::RowDigest;

/// How one column's binary value becomes its COPY text.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Column {
    Int2,
    Int4,
    Int8,
    Bool,
    Text,
}

/// The columns of a table whose types (as `format_type` names them, from
/// the manifest) all have a text form this client prints; `None` if any
/// does not.
pub fn columns(types: &[&str]) -> Option<Vec<Column>> {
    types
        .iter()
        .map(|ty| {
            let with_length = |name: &str| {
                ty.strip_prefix(name)
                    .and_then(|rest| rest.strip_prefix('('))
                    .and_then(|rest| rest.strip_suffix(')'))
                    .is_some_and(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()))
            };
            Some(match *ty {
                "smallint" => Column::Int2,
                "integer" => Column::Int4,
                "bigint" => Column::Int8,
                "boolean" => Column::Bool,
                "text" | "character varying" | "bpchar" => Column::Text,
                _ if with_length("character varying") || with_length("character") => Column::Text,
                _ => return None,
            })
        })
        .collect()
}

/// The first bytes of every binary COPY stream.
const SIGNATURE: &[u8] = b"PGCOPY\n\xff\r\n\0";
/// A header extension longer than this is refused (PostgreSQL sends none).
const MAX_EXTENSION: usize = 1 << 20;
/// PostgreSQL's largest field value (1 GiB).
const MAX_FIELD: usize = 1 << 30;
/// The most of a row kept while waiting for its end: PostgreSQL sends a
/// row in one message of at most 1 GiB, so a server that sends more
/// without finishing the row is refused rather than buffered.
const MAX_CARRY: usize = MAX_FIELD + (1 << 20);

#[derive(Debug, PartialEq, Eq)]
enum State {
    Header,
    Tuples,
    Ended,
}

/// The parser of one binary COPY stream, fed piece by piece.
pub(crate) struct BinaryCopy {
    columns: Vec<Column>,
    state: State,
    /// The unparsed end of the pieces so far (a tuple cut between pieces).
    carry: Vec<u8>,
    line: Vec<u8>,
    max_carry: usize,
}

/// Why a stream is refused.
pub(crate) type Malformed = String;

impl BinaryCopy {
    pub fn new(columns: Vec<Column>) -> Self {
        BinaryCopy {
            columns,
            state: State::Header,
            carry: Vec::new(),
            line: Vec::new(),
            max_carry: MAX_CARRY,
        }
    }

    /// Hashes every whole tuple of `piece` (after what earlier pieces left).
    pub fn feed(&mut self, digest: &mut RowDigest, piece: &[u8]) -> Result<(), Malformed> {
        if self.carry.is_empty() {
            let used = self.parse(digest, piece)?;
            self.carry.extend_from_slice(&piece[used..]);
        } else {
            let mut buf = std::mem::take(&mut self.carry);
            buf.extend_from_slice(piece);
            let used = self.parse(digest, &buf)?;
            buf.drain(..used);
            self.carry = buf;
        }
        if self.carry.len() > self.max_carry {
            return Err(format!(
                "a row of more than {} bytes without its end",
                self.max_carry
            ));
        }
        Ok(())
    }

    /// After the last piece: the stream must have ended with its trailer.
    pub fn finish(&self) -> Result<(), Malformed> {
        if self.state == State::Ended && self.carry.is_empty() {
            Ok(())
        } else {
            Err("the binary COPY output ended in the middle of a row".into())
        }
    }

    /// Parses what `buf` holds whole; returns the bytes used.
    fn parse(&mut self, digest: &mut RowDigest, buf: &[u8]) -> Result<usize, Malformed> {
        let mut at = 0;
        loop {
            match self.state {
                State::Header => {
                    let Some(fixed) = buf.get(at..at + SIGNATURE.len() + 8) else {
                        return Ok(at);
                    };
                    if &fixed[..SIGNATURE.len()] != SIGNATURE {
                        return Err("not a binary COPY stream (its signature)".into());
                    }
                    let flags = be_u32(&fixed[SIGNATURE.len()..]);
                    // Bits 16-31 are critical: none is known but OIDs (16),
                    // which a COPY of a SELECT never sends.
                    if flags >> 16 != 0 {
                        return Err(format!("binary COPY header flags {flags:#x}"));
                    }
                    let extension = be_u32(&fixed[SIGNATURE.len() + 4..]) as usize;
                    if extension > MAX_EXTENSION {
                        return Err(format!(
                            "a binary COPY header extension of {extension} bytes"
                        ));
                    }
                    let end = at + fixed.len() + extension;
                    if buf.len() < end {
                        return Ok(at);
                    }
                    at = end;
                    self.state = State::Tuples;
                }
                State::Tuples => match self.tuple(&buf[at..])? {
                    Some((used, true)) => {
                        digest.add_line(&self.line);
                        at += used;
                    }
                    Some((used, false)) => {
                        at += used;
                        self.state = State::Ended;
                    }
                    None => return Ok(at),
                },
                State::Ended if at == buf.len() => return Ok(at),
                State::Ended => return Err("bytes after the binary COPY trailer".into()),
            }
        }
    }

    /// One tuple at the start of `buf` into `self.line`: `None` if `buf`
    /// does not hold all of it, else the bytes it took and whether it was a
    /// row (`false`: the trailer).
    fn tuple(&mut self, buf: &[u8]) -> Result<Option<(usize, bool)>, Malformed> {
        let Some(count) = buf.get(..2) else {
            return Ok(None);
        };
        let count = i16::from_be_bytes([count[0], count[1]]);
        if count == -1 {
            return Ok(Some((2, false)));
        }
        if usize::try_from(count).ok() != Some(self.columns.len()) {
            return Err(format!(
                "a row of {count} fields where the table has {}",
                self.columns.len()
            ));
        }
        self.line.clear();
        let mut at = 2;
        for (i, col) in self.columns.iter().enumerate() {
            if i > 0 {
                self.line.push(b'\t');
            }
            let Some(len) = buf.get(at..at + 4) else {
                return Ok(None);
            };
            let len = i32::from_be_bytes([len[0], len[1], len[2], len[3]]);
            at += 4;
            if len == -1 {
                self.line.extend_from_slice(b"\\N");
                continue;
            }
            let len = usize::try_from(len)
                .ok()
                .filter(|n| *n <= MAX_FIELD)
                .ok_or_else(|| format!("a field length of {len}"))?;
            let Some(value) = buf.get(at..at + len) else {
                return Ok(None);
            };
            at += len;
            text_of(&mut self.line, *col, value)?;
        }
        Ok(Some((at, true)))
    }
}

fn be_u32(b: &[u8]) -> u32 {
    u32::from_be_bytes([b[0], b[1], b[2], b[3]])
}

/// Appends the COPY text of one binary value of `col`.
fn text_of(out: &mut Vec<u8>, col: Column, value: &[u8]) -> Result<(), Malformed> {
    let wrong = || format!("a {col:?} value of {} bytes", value.len());
    let mut digits = itoa::Buffer::new();
    match col {
        Column::Int2 => {
            let v: [u8; 2] = value.try_into().map_err(|_| wrong())?;
            out.extend_from_slice(digits.format(i16::from_be_bytes(v)).as_bytes());
        }
        Column::Int4 => {
            let v: [u8; 4] = value.try_into().map_err(|_| wrong())?;
            out.extend_from_slice(digits.format(i32::from_be_bytes(v)).as_bytes());
        }
        Column::Int8 => {
            let v: [u8; 8] = value.try_into().map_err(|_| wrong())?;
            out.extend_from_slice(digits.format(i64::from_be_bytes(v)).as_bytes());
        }
        Column::Bool => match value {
            [0] => out.push(b'f'),
            [1] => out.push(b't'),
            _ => return Err(wrong()),
        },
        Column::Text => escape(out, value),
    }
    Ok(())
}

/// Whether `value` holds a control character or a backslash. Checked 32
/// bytes at a time without stopping inside them, which the compiler turns
/// into vector instructions (`Iterator::any` stops at each byte, and was
/// most of this parser's time on strings that need no escape).
fn needs_escape(value: &[u8]) -> bool {
    value.chunks(32).any(|chunk| {
        chunk
            .iter()
            .fold(false, |hit, &b| hit | (b < 0x20) | (b == b'\\'))
    })
}

/// COPY's text escapes, as the server applies them with a TAB delimiter.
fn escape(out: &mut Vec<u8>, value: &[u8]) {
    if !needs_escape(value) {
        out.extend_from_slice(value);
        return;
    }
    for &b in value {
        let escaped = match b {
            b'\\' => b'\\',
            0x08 => b'b',
            0x0C => b'f',
            b'\n' => b'n',
            b'\r' => b'r',
            b'\t' => b't',
            0x0B => b'v',
            _ => {
                out.push(b);
                continue;
            }
        };
        out.extend_from_slice(&[b'\\', escaped]);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn field(out: &mut Vec<u8>, value: Option<&[u8]>) {
        match value {
            Some(v) => {
                out.extend_from_slice(&(v.len() as i32).to_be_bytes());
                out.extend_from_slice(v);
            }
            None => out.extend_from_slice(&(-1i32).to_be_bytes()),
        }
    }

    /// A stream of two rows of (smallint, integer, bigint, boolean, text).
    fn stream() -> Vec<u8> {
        let mut s = SIGNATURE.to_vec();
        s.extend_from_slice(&0u32.to_be_bytes());
        s.extend_from_slice(&0u32.to_be_bytes());
        for row in [
            [
                Some(&(-32768i16).to_be_bytes()[..]),
                Some(&i32::MAX.to_be_bytes()[..]),
                Some(&i64::MIN.to_be_bytes()[..]),
                Some(&[1][..]),
                Some("a\\b\tc\nd\re\x08\x0b\x0c\x01 é".as_bytes()),
            ],
            [
                None,
                Some(&0i32.to_be_bytes()[..]),
                None,
                Some(&[0][..]),
                Some(&b""[..]),
            ],
        ] {
            s.extend_from_slice(&5i16.to_be_bytes());
            for v in row {
                field(&mut s, v);
            }
        }
        s.extend_from_slice(&(-1i16).to_be_bytes());
        s
    }

    fn cols() -> Vec<Column> {
        use Column::*;
        vec![Int2, Int4, Int8, Bool, Text]
    }

    #[test]
    fn binary_rows_hash_as_their_copy_text_in_pieces_cut_anywhere() {
        let mut text = RowDigest::default();
        text.add_line(
            "-32768\t2147483647\t-9223372036854775808\tt\ta\\\\b\\tc\\nd\\re\\b\\v\\f\x01 é"
                .as_bytes(),
        );
        text.add_line(b"\\N\t0\t\\N\tf\t");
        let s = stream();
        for cut in 0..s.len() {
            for cut2 in (cut..s.len()).step_by(7) {
                let (mut d, mut p) = (RowDigest::default(), BinaryCopy::new(cols()));
                for piece in [&s[..cut], &s[cut..cut2], &s[cut2..]] {
                    p.feed(&mut d, piece).unwrap();
                }
                p.finish().unwrap();
                assert_eq!(d, text, "pieces cut at {cut} and {cut2}");
            }
        }
    }

    #[test]
    fn a_malformed_stream_is_refused() {
        let s = stream();
        let run = |bytes: &[u8], columns: Vec<Column>| {
            let mut p = BinaryCopy::new(columns);
            p.feed(&mut RowDigest::default(), bytes)
                .and_then(|()| p.finish())
        };
        assert!(run(&s, cols()).is_ok());
        // Cut short, or with bytes after the trailer.
        assert!(run(&s[..s.len() - 1], cols()).is_err());
        assert!(run(&[&s[..], b"x"].concat(), cols()).is_err());
        // Another signature; a row of other columns than the table's.
        let mut other = s.clone();
        other[0] = b'X';
        assert!(run(&other, cols()).is_err());
        assert!(run(&s, cols()[..4].to_vec()).is_err());
        let mut wide = cols();
        wide[0] = Column::Int8;
        assert!(run(&s, wide).is_err());
        // A boolean that is neither 0 nor 1; a negative length.
        let mut b = s.clone();
        let at = s.windows(5).position(|w| w == [0, 0, 0, 1, 1]).unwrap();
        b[at + 4] = 2;
        assert!(run(&b, cols()).is_err());
        let mut n = s.clone();
        n[21..25].copy_from_slice(&(-2i32).to_be_bytes());
        assert!(run(&n, cols()).is_err());
        // A row that does not end is not buffered past the limit.
        let mut p = BinaryCopy::new(cols());
        p.max_carry = 64;
        let mut d = RowDigest::default();
        let mut endless = s[..19].to_vec();
        endless.extend_from_slice(&5i16.to_be_bytes());
        endless.extend_from_slice(&1000i32.to_be_bytes());
        p.feed(&mut d, &endless).unwrap();
        let e = p.feed(&mut d, &[b'x'; 100]).unwrap_err();
        assert!(e.contains("without its end"), "{e}");
    }

    #[test]
    fn only_types_with_an_exact_text_form_are_read_in_binary() {
        assert_eq!(
            columns(&[
                "integer",
                "character(120)",
                "character varying(60)",
                "text",
                "bpchar"
            ]),
            Some(vec![
                Column::Int4,
                Column::Text,
                Column::Text,
                Column::Text,
                Column::Text
            ])
        );
        assert_eq!(
            columns(&["bigint", "smallint", "boolean"]).map(|c| c.len()),
            Some(3)
        );
        for other in [
            "numeric(12,2)",
            "timestamp(6) without time zone",
            "double precision",
            "integer[]",
            "bytea",
            "character(x)",
            "character varying(60)[]",
            "json",
        ] {
            assert_eq!(columns(&["integer", other]), None, "{other}");
        }
    }
}
