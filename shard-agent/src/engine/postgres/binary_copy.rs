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
//! `smallint`, `integer`, `bigint` (decimal digits), `boolean` (`t`/`f`),
//! `numeric` (its base-10000 groups as digits, exactly its scale after the
//! point; `NaN`, `Infinity`, `-Infinity`), `date`, `timestamp` and
//! `timestamp with time zone` (ISO, as the reader sessions' `DateStyle`
//! and `TimeZone = UTC` print them, ` BC` and the infinities included)
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
    Numeric,
    Date,
    Timestamp,
    /// `timestamp with time zone`, printed in the session's UTC.
    TimestampTz,
}

#[cfg(test)]
impl Column {
    /// Every kind, for the tests that go through them all.
    pub const ALL: [Column; 9] = [
        Column::Int2,
        Column::Int4,
        Column::Int8,
        Column::Bool,
        Column::Text,
        Column::Numeric,
        Column::Date,
        Column::Timestamp,
        Column::TimestampTz,
    ];
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
                "numeric" => Column::Numeric,
                _ if numeric_with_precision(ty) => Column::Numeric,
                "date" => Column::Date,
                _ if timestamp(ty, " without time zone") => Column::Timestamp,
                _ if timestamp(ty, " with time zone") => Column::TimestampTz,
                "text" | "character varying" | "bpchar" => Column::Text,
                _ if with_length("character varying") || with_length("character") => Column::Text,
                _ => return None,
            })
        })
        .collect()
}

/// `timestamp` or `timestamp(n)` followed by `zone`.
fn timestamp(ty: &str, zone: &str) -> bool {
    ty.strip_prefix("timestamp")
        .and_then(|rest| rest.strip_suffix(zone))
        .is_some_and(|p| {
            p.is_empty()
                || p.strip_prefix('(')
                    .and_then(|p| p.strip_suffix(')'))
                    .is_some_and(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()))
        })
}

/// `numeric(p)` or `numeric(p,s)`.
fn numeric_with_precision(ty: &str) -> bool {
    ty.strip_prefix("numeric(")
        .and_then(|rest| rest.strip_suffix(')'))
        .is_some_and(|args| {
            let mut parts = args.split(',');
            let digits = |p: Option<&str>| {
                p.is_some_and(|p| {
                    let p = p.trim().strip_prefix('-').unwrap_or(p.trim());
                    !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit())
                })
            };
            digits(parts.next()) && parts.clone().count() <= 1 && parts.all(|p| digits(Some(p)))
        })
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
pub(super) fn text_of(out: &mut Vec<u8>, col: Column, value: &[u8]) -> Result<(), Malformed> {
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
        Column::Numeric => numeric(out, value).ok_or_else(wrong)?,
        Column::Date => {
            let v: [u8; 4] = value.try_into().map_err(|_| wrong())?;
            match i32::from_be_bytes(v) {
                i32::MAX => out.extend_from_slice(b"infinity"),
                i32::MIN => out.extend_from_slice(b"-infinity"),
                days => {
                    let year = date(out, i64::from(days));
                    bc(out, year);
                }
            }
        }
        Column::Timestamp | Column::TimestampTz => {
            let v: [u8; 8] = value.try_into().map_err(|_| wrong())?;
            match i64::from_be_bytes(v) {
                i64::MAX => out.extend_from_slice(b"infinity"),
                i64::MIN => out.extend_from_slice(b"-infinity"),
                us => {
                    let year = date(out, us.div_euclid(DAY_US));
                    time_of_day(out, us.rem_euclid(DAY_US));
                    if col == Column::TimestampTz {
                        out.extend_from_slice(b"+00");
                    }
                    bc(out, year);
                }
            }
        }
    }
    Ok(())
}

const DAY_US: i64 = 86_400_000_000;

/// Appends the date `days` after 2000-01-01 (proleptic Gregorian) as
/// `YYYY-MM-DD`, the year at least four digits and, before year 1, counted
/// back from 1 BC as the server prints it; returns the astronomical year
/// (0 is 1 BC).
fn date(out: &mut Vec<u8>, days: i64) -> i64 {
    // Days since 0000-03-01, so that a leap day ends each year; eras of
    // 400 years (146,097 days) repeat.
    let z = days + 730_425;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    let shown = if year > 0 { year } else { 1 - year };
    zero_padded(out, shown, 4);
    out.push(b'-');
    two(out, month);
    out.push(b'-');
    two(out, day);
    year
}

/// ` HH:MM:SS`, and the microseconds without their trailing zeros if any.
fn time_of_day(out: &mut Vec<u8>, us: i64) {
    let secs = us / 1_000_000;
    out.push(b' ');
    two(out, secs / 3600);
    out.push(b':');
    two(out, secs / 60 % 60);
    out.push(b':');
    two(out, secs % 60);
    let mut fraction = us % 1_000_000;
    if fraction != 0 {
        let mut width = 6;
        while fraction % 10 == 0 {
            fraction /= 10;
            width -= 1;
        }
        out.push(b'.');
        zero_padded(out, fraction, width);
    }
}

/// `n` in at least `width` digits, zeros in front.
fn zero_padded(out: &mut Vec<u8>, n: i64, width: usize) {
    let mut digits = itoa::Buffer::new();
    let digits = digits.format(n).as_bytes();
    out.extend(std::iter::repeat_n(
        b'0',
        width.saturating_sub(digits.len()),
    ));
    out.extend_from_slice(digits);
}

fn two(out: &mut Vec<u8>, n: i64) {
    out.extend_from_slice(&[b'0' + (n / 10) as u8, b'0' + (n % 10) as u8]);
}

/// The server's ` BC` after a date or time before year 1.
fn bc(out: &mut Vec<u8>, year: i64) {
    if year <= 0 {
        out.extend_from_slice(b" BC");
    }
}

/// A `numeric` as the server prints it: `NaN`, `Infinity`, `-Infinity`, or
/// the digits of its base-10000 groups, the integer part without leading
/// zeros (at least `0`) and exactly `dscale` digits after the point.
/// `None` if the value is not a well-formed binary numeric.
fn numeric(out: &mut Vec<u8>, value: &[u8]) -> Option<()> {
    let word = |i: usize| -> Option<i16> {
        let b = value.get(2 * i..2 * i + 2)?;
        Some(i16::from_be_bytes([b[0], b[1]]))
    };
    // A count of groups up to 65,535: PostgreSQL reads it unsigned.
    let ndigits = usize::from(word(0)? as u16);
    let weight = i64::from(word(1)?);
    let sign = word(2)? as u16;
    let dscale = usize::try_from(word(3)?).ok()?;
    if value.len() != 8 + 2 * ndigits {
        return None;
    }
    match sign {
        0xC000 => {
            out.extend_from_slice(b"NaN");
            return Some(());
        }
        0xD000 => {
            out.extend_from_slice(b"Infinity");
            return Some(());
        }
        0xF000 => {
            out.extend_from_slice(b"-Infinity");
            return Some(());
        }
        0x4000 => out.push(b'-'),
        0x0000 => {}
        _ => return None,
    }
    // Checked once here, read in place below: no allocation per value.
    if (0..ndigits).any(|i| !word(4 + i).is_some_and(|d| (0..10_000).contains(&d))) {
        return None;
    }
    // The group whose exponent of 10,000 is `e` sits at index weight - e.
    let group = |e: i64| -> u16 {
        usize::try_from(weight - e)
            .ok()
            .filter(|i| *i < ndigits)
            .and_then(|i| word(4 + i))
            .map_or(0, |d| d as u16)
    };
    if weight < 0 {
        out.push(b'0');
    } else {
        let mut e = weight;
        out.extend_from_slice(itoa::Buffer::new().format(group(e)).as_bytes());
        while e > 0 {
            e -= 1;
            push_group(out, group(e), 4);
        }
    }
    if dscale > 0 {
        out.push(b'.');
        let mut left = dscale;
        let mut e = -1;
        while left > 0 {
            let take = left.min(4);
            push_group(out, group(e), take);
            left -= take;
            e -= 1;
        }
    }
    Some(())
}

/// The first `take` of a group's four decimal digits, zero-padded.
fn push_group(out: &mut Vec<u8>, group: u16, take: usize) {
    let digits = [
        b'0' + (group / 1000) as u8,
        b'0' + (group / 100 % 10) as u8,
        b'0' + (group / 10 % 10) as u8,
        b'0' + (group % 10) as u8,
    ];
    out.extend_from_slice(&digits[..take]);
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

    /// A binary numeric of `groups` (base 10,000) with `weight`, `sign`, `dscale`.
    fn num(groups: &[i16], weight: i16, sign: u16, dscale: i16) -> Vec<u8> {
        let mut v = Vec::new();
        for w in [groups.len() as i16, weight, sign as i16, dscale] {
            v.extend_from_slice(&w.to_be_bytes());
        }
        for g in groups {
            v.extend_from_slice(&g.to_be_bytes());
        }
        v
    }

    #[test]
    fn numerics_print_as_the_server_prints_them() {
        let text = |v: Vec<u8>| {
            let mut out = Vec::new();
            numeric(&mut out, &v).map(|()| String::from_utf8(out).unwrap())
        };
        let cases: [(Vec<u8>, &str); 10] = [
            (num(&[], 0, 0, 0), "0"),
            (num(&[], 0, 0, 2), "0.00"),
            (num(&[1, 5000], 0, 0, 2), "1.50"),
            (num(&[12, 3456, 7800], 1, 0x4000, 4), "-123456.7800"),
            (num(&[5], -1, 0, 5), "0.00050"),
            (num(&[1], -2, 0, 8), "0.00000001"),
            (num(&[1], 2, 0, 0), "100000000"),
            (num(&[9999, 9999], 0, 0, 3), "9999.999"),
            (num(&[], 0, 0xC000, 0), "NaN"),
            (num(&[], 0, 0xF000, 0), "-Infinity"),
        ];
        for (v, want) in cases {
            assert_eq!(text(v).as_deref(), Some(want));
        }
        // A group out of range, a length that does not match, a sign of none.
        assert_eq!(text(num(&[10_000], 0, 0, 0)), None);
        assert_eq!(text(num(&[1], 0, 0, 0)[..9].to_vec()), None);
        assert_eq!(text(num(&[1], 0, 0x1000, 0)), None);
    }

    #[test]
    fn dates_and_timestamps_print_as_the_server_prints_them() {
        let text = |col: Column, v: &[u8]| {
            let mut out = Vec::new();
            text_of(&mut out, col, v).unwrap();
            String::from_utf8(out).unwrap()
        };
        let day = |d: i32| text(Column::Date, &d.to_be_bytes());
        assert_eq!(day(0), "2000-01-01");
        assert_eq!(day(59), "2000-02-29");
        assert_eq!(day(-1), "1999-12-31");
        assert_eq!(day(-730_119), "0001-01-01");
        assert_eq!(day(-730_120), "0001-12-31 BC");
        assert_eq!(day(2_914_269), "9978-12-31");
        assert_eq!(day(i32::MAX), "infinity");
        let ts = |col, us: i64| text(col, &us.to_be_bytes());
        assert_eq!(ts(Column::Timestamp, 0), "2000-01-01 00:00:00");
        assert_eq!(ts(Column::Timestamp, -1), "1999-12-31 23:59:59.999999");
        assert_eq!(
            ts(Column::Timestamp, 3_723_500_000),
            "2000-01-01 01:02:03.5"
        );
        assert_eq!(
            ts(Column::TimestampTz, 1_230_000),
            "2000-01-01 00:00:01.23+00"
        );
        assert_eq!(
            ts(Column::TimestampTz, -730_120 * DAY_US),
            "0001-12-31 00:00:00+00 BC"
        );
        assert_eq!(ts(Column::Timestamp, i64::MIN), "-infinity");
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
        let more = [
            "bigint",
            "smallint",
            "boolean",
            "numeric",
            "numeric(12,2)",
            "numeric(5)",
        ];
        assert_eq!(columns(&more).map(|c| c.len()), Some(6));
        for other in [
            "numeric(12,2)[]",
            "numeric(x)",
            "numeric(1,2,3)",
            "timestamp(6)",
            "time without time zone",
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
