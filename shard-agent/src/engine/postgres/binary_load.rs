//! Loading `COPY` text chunks in `COPY … FROM STDIN (FORMAT binary)`.
//!
//! Why: the server's text input scans every byte of a row twice (for the
//! line's end, then for each field's delimiters and escapes) and parses
//! every number from its digits. Given the binary format it reads each
//! field's length and takes integers as they are: loading the side-by-side
//! benchmark's `sbtest` table (two `integer`, two `character(n)` columns)
//! cost the server about a quarter less CPU (docs/BENCHMARKS.md). The
//! chunks stay in the text format (what the backup stores and the row
//! hashes are defined on); this client turns each line into a binary tuple
//! as it sends it.
//!
//! It does so for the column types [`super::binary_copy`] prints, whose
//! text the dump's reader sessions write in one form: integers in decimal,
//! `t`/`f`, `numeric` digits with an optional point (`NaN`, `Infinity`,
//! `-Infinity`), ISO dates and timestamps in UTC (`+00`) with ` BC`, the
//! infinities, and strings with COPY's escapes (`\\`, `\b \f \n \r \t \v`)
//! and `\N` for NULL. A table with a column of any other type is loaded in
//! the text format, as before.
//!
//! A chunk's bytes come from the repository and are checked here as they
//! are turned: a line with too few or too many fields, a value that is
//! not in the form the dump writes (a number out of its type's range, a
//! date that does not exist, an escape COPY never writes, a bare carriage
//! return) is refused, naming the line, rather than guessed at. What the
//! binary form hands the server it checks as it checks text: strings for
//! their encoding, `character(n)` and `numeric(p,s)` for their type
//! modifiers, timestamps for their range.

use super::binary_copy::Column;

/// The binary COPY header: signature, flags 0, no extension.
pub(crate) const HEADER: &[u8; 19] = b"PGCOPY\n\xff\r\n\0\0\0\0\0\0\0\0\0";
/// The field count -1 that ends a binary COPY stream.
pub(crate) const TRAILER: [u8; 2] = (-1i16).to_be_bytes();

/// Why a line was refused.
pub(crate) type Refused = String;

/// The turner of one table's text lines into binary tuples.
#[derive(Debug)]
pub(crate) struct BinaryLoad {
    columns: Vec<Column>,
    /// The field count every tuple starts with.
    count: [u8; 2],
}

impl BinaryLoad {
    /// For a table of these columns; `None` with no column or more than a
    /// tuple can count (PostgreSQL allows 1,600).
    pub fn new(columns: Vec<Column>) -> Option<Self> {
        let count = i16::try_from(columns.len()).ok().filter(|n| *n > 0)?;
        Some(BinaryLoad {
            columns,
            count: count.to_be_bytes(),
        })
    }

    /// Appends to `out` the tuple of every line of `text`: lines end with
    /// LF, the last one may not. `first` is the number of the first line
    /// in its chunk, for errors. Returns the number of lines.
    pub fn rows(&self, text: &[u8], first: usize, out: &mut Vec<u8>) -> Result<usize, Refused> {
        let mut lines = 0;
        let mut rest = text;
        while !rest.is_empty() {
            let (line, next) = match memchr::memchr(b'\n', rest) {
                Some(nl) => (&rest[..nl], &rest[nl + 1..]),
                None => (rest, &rest[rest.len()..]),
            };
            self.row(line, out)
                .map_err(|why| format!("line {}: {why}", first + lines))?;
            lines += 1;
            rest = next;
        }
        Ok(lines)
    }

    fn row(&self, line: &[u8], out: &mut Vec<u8>) -> Result<(), Refused> {
        out.extend_from_slice(&self.count);
        let mut rest = line;
        let last = self.columns.len() - 1;
        for (i, col) in self.columns.iter().enumerate() {
            let tab = memchr::memchr(b'\t', rest);
            let field = match (tab, i == last) {
                (Some(t), false) => {
                    let field = &rest[..t];
                    rest = &rest[t + 1..];
                    field
                }
                (None, true) => rest,
                (Some(_), true) => {
                    return Err(format!("more than {} fields", self.columns.len()));
                }
                (None, false) => {
                    return Err(format!(
                        "{} fields where the table has {}",
                        i + 1,
                        self.columns.len()
                    ));
                }
            };
            field_of(out, *col, field)?;
        }
        Ok(())
    }
}

/// Appends one field: its length (-1 for NULL) and its binary value.
fn field_of(out: &mut Vec<u8>, col: Column, text: &[u8]) -> Result<(), Refused> {
    if text == b"\\N" {
        out.extend_from_slice(&(-1i32).to_be_bytes());
        return Ok(());
    }
    let at = out.len();
    out.extend_from_slice(&[0; 4]);
    let wrong = || {
        let shown = String::from_utf8_lossy(&text[..text.len().min(40)]).into_owned();
        format!("{shown:?} is not {col:?} text as the dump writes it")
    };
    match col {
        Column::Int2 => {
            let v = int(text, i64::from(i16::MIN), i64::from(i16::MAX)).ok_or_else(wrong)?;
            out.extend_from_slice(&(v as i16).to_be_bytes());
        }
        Column::Int4 => {
            let v = int(text, i64::from(i32::MIN), i64::from(i32::MAX)).ok_or_else(wrong)?;
            out.extend_from_slice(&(v as i32).to_be_bytes());
        }
        Column::Int8 => {
            let v = int(text, i64::MIN, i64::MAX).ok_or_else(wrong)?;
            out.extend_from_slice(&v.to_be_bytes());
        }
        Column::Bool => match text {
            b"t" => out.push(1),
            b"f" => out.push(0),
            _ => return Err(wrong()),
        },
        Column::Text => unescape(out, text)?,
        Column::Numeric => numeric(out, text).ok_or_else(wrong)?,
        Column::Date => {
            let days = match text {
                b"infinity" => i32::MAX,
                b"-infinity" => i32::MIN,
                _ => {
                    let (body, bc) = era(text);
                    let (days, rest) = date(body, bc).ok_or_else(wrong)?;
                    if !rest.is_empty() {
                        return Err(wrong());
                    }
                    i32::try_from(days).map_err(|_| wrong())?
                }
            };
            out.extend_from_slice(&days.to_be_bytes());
        }
        Column::Timestamp | Column::TimestampTz => {
            let us = match text {
                b"infinity" => i64::MAX,
                b"-infinity" => i64::MIN,
                _ => timestamp(text, col == Column::TimestampTz).ok_or_else(wrong)?,
            };
            out.extend_from_slice(&us.to_be_bytes());
        }
    }
    let len = i32::try_from(out.len() - at - 4).map_err(|_| "a value over 2 GiB".to_string())?;
    out[at..at + 4].copy_from_slice(&len.to_be_bytes());
    Ok(())
}

/// A decimal integer (an optional `-`, then digits) within `min..=max`.
fn int(text: &[u8], min: i64, max: i64) -> Option<i64> {
    let (negative, digits) = match text.split_first() {
        Some((b'-', rest)) => (true, rest),
        _ => (false, text),
    };
    if digits.is_empty() || digits.len() > 20 {
        return None;
    }
    // Summed below zero, so that i64::MIN fits.
    let mut v: i64 = 0;
    for &d in digits {
        if !d.is_ascii_digit() {
            return None;
        }
        v = v.checked_mul(10)?.checked_sub(i64::from(d - b'0'))?;
    }
    let v = if negative { v } else { v.checked_neg()? };
    (min..=max).contains(&v).then_some(v)
}

/// COPY's text escapes undone: `\\`, and `\b \f \n \r \t \v` for those
/// control characters, the only ones the server writes with a TAB
/// delimiter. Any other escape, and a carriage return not escaped (which
/// the server's text input takes for a line's end), are refused.
fn unescape(out: &mut Vec<u8>, text: &[u8]) -> Result<(), Refused> {
    let mut rest = text;
    while let Some(p) = memchr::memchr2(b'\\', b'\r', rest) {
        out.extend_from_slice(&rest[..p]);
        if rest[p] == b'\r' {
            return Err("a carriage return that is not escaped".into());
        }
        let byte = match rest.get(p + 1) {
            Some(b'\\') => b'\\',
            Some(b'b') => 0x08,
            Some(b'f') => 0x0C,
            Some(b'n') => b'\n',
            Some(b'r') => b'\r',
            Some(b't') => b'\t',
            Some(b'v') => 0x0B,
            Some(&other) => {
                return Err(format!(
                    "the escape \\{} that COPY never writes",
                    char::from(other).escape_default()
                ))
            }
            None => return Err("a backslash at the end of a value".into()),
        };
        out.push(byte);
        rest = &rest[p + 2..];
    }
    out.extend_from_slice(rest);
    Ok(())
}

/// `numeric` text (`-`, digits, an optional point and digits; `NaN`,
/// `Infinity`, `-Infinity`) as the binary form: groups of four decimal
/// digits in base 10,000, the weight of the first, the sign and the count
/// of digits after the point (its display scale), without leading or
/// trailing zero groups, as the server sends it.
fn numeric(out: &mut Vec<u8>, text: &[u8]) -> Option<()> {
    let special = |sign: u16| [0u16, 0, sign, 0].map(u16::to_be_bytes).concat();
    match text {
        b"NaN" => {
            out.extend_from_slice(&special(0xC000));
            return Some(());
        }
        b"Infinity" => {
            out.extend_from_slice(&special(0xD000));
            return Some(());
        }
        b"-Infinity" => {
            out.extend_from_slice(&special(0xF000));
            return Some(());
        }
        _ => {}
    }
    let (negative, body) = match text.split_first() {
        Some((b'-', rest)) => (true, rest),
        _ => (false, text),
    };
    let (whole, fraction) = match memchr::memchr(b'.', body) {
        Some(p) => (&body[..p], &body[p + 1..]),
        None => (body, &body[body.len()..]),
    };
    if whole.is_empty()
        || (body.len() > whole.len() && fraction.is_empty())
        || !whole.iter().chain(fraction).all(u8::is_ascii_digit)
    {
        return None;
    }
    // PostgreSQL's limits: 131,072 digits before the point, 16,383 after.
    let whole = &whole[whole.iter().position(|&d| d != b'0').unwrap_or(whole.len())..];
    if whole.len() > 131_072 || fraction.len() > 16_383 {
        return None;
    }
    let dscale = fraction.len() as u16;
    // The digit at position i of `whole ++ fraction` (missing ones are 0),
    // counted from the group boundary left of the first whole digit.
    let lead = (4 - whole.len() % 4) % 4;
    let int_groups = (whole.len() + lead) / 4;
    let frac_groups = fraction.len().div_ceil(4);
    let digit = |i: usize| -> u16 {
        let i = i.checked_sub(lead);
        let d = match i {
            Some(i) if i < whole.len() => whole[i],
            Some(i) => fraction.get(i - whole.len()).copied().unwrap_or(b'0'),
            None => b'0',
        };
        u16::from(d - b'0')
    };
    let group = |g: usize| (0..4).fold(0u16, |acc, k| acc * 10 + digit(g * 4 + k));
    let total = int_groups + frac_groups;
    let first = (0..total).find(|&g| group(g) != 0);
    let Some(first) = first else {
        // Zero: no groups, weight 0, positive, its scale kept.
        out.extend_from_slice(&[0u16, 0, 0, dscale].map(u16::to_be_bytes).concat());
        return Some(());
    };
    let last = (first..total)
        .rev()
        .find(|&g| group(g) != 0)
        .unwrap_or(first);
    let ndigits = u16::try_from(last - first + 1).ok()?;
    let weight = i16::try_from(int_groups as i64 - 1 - first as i64).ok()?;
    out.extend_from_slice(&ndigits.to_be_bytes());
    out.extend_from_slice(&weight.to_be_bytes());
    out.extend_from_slice(&(if negative { 0x4000u16 } else { 0 }).to_be_bytes());
    out.extend_from_slice(&dscale.to_be_bytes());
    for g in first..=last {
        out.extend_from_slice(&group(g).to_be_bytes());
    }
    Some(())
}

/// The text without a trailing ` BC`, and whether it had one.
fn era(text: &[u8]) -> (&[u8], bool) {
    match text.strip_suffix(b" BC") {
        Some(body) => (body, true),
        None => (text, false),
    }
}

/// `YYYY-MM-DD` at the start of `text` (the year four digits or more) as
/// days since 2000-01-01, and the rest; a `bc` year counts back from 1 BC
/// (astronomical year 0). `None` for a date that does not exist.
fn date(text: &[u8], bc: bool) -> Option<(i64, &[u8])> {
    let dash = memchr::memchr(b'-', text)?;
    let (year, rest) = (&text[..dash], &text[dash + 1..]);
    if year.len() < 4 || year.len() > 7 || !year.iter().all(u8::is_ascii_digit) {
        return None;
    }
    // Years are printed from 1 on, before it counted back with ` BC`.
    let year = int(year, 1, i64::MAX)?;
    let year = if bc { 1 - year } else { year };
    let (month, day) = (two(rest.get(0..2)?)?, two(rest.get(3..5)?)?);
    if rest.get(2) != Some(&b'-') || !(1..=12).contains(&month) {
        return None;
    }
    let leap = year.rem_euclid(4) == 0 && (year.rem_euclid(100) != 0 || year.rem_euclid(400) == 0);
    let month_days = match month {
        2 if leap => 29,
        2 => 28,
        4 | 6 | 9 | 11 => 30,
        _ => 31,
    };
    if !(1..=month_days).contains(&day) {
        return None;
    }
    // Days since 0000-03-01, so that a leap day ends each year; eras of
    // 400 years (146,097 days) repeat.
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let yoe = y.rem_euclid(400);
    let mp = (month + 9) % 12;
    let doy = (153 * mp + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    Some((era * 146_097 + doe - 730_425, &rest[5..]))
}

/// Two decimal digits.
fn two(text: &[u8]) -> Option<i64> {
    match text {
        [a @ b'0'..=b'9', b @ b'0'..=b'9'] => Some(i64::from((a - b'0') * 10 + (b - b'0'))),
        _ => None,
    }
}

/// `YYYY-MM-DD HH:MM:SS[.ffffff]`, then `+00` if `zoned`, then an
/// optional ` BC`, as microseconds since 2000-01-01 00:00 (UTC).
fn timestamp(text: &[u8], zoned: bool) -> Option<i64> {
    let (body, bc) = era(text);
    let body = if zoned {
        body.strip_suffix(b"+00")?
    } else {
        body
    };
    let (days, rest) = date(body, bc)?;
    let rest = rest.strip_prefix(b" ")?;
    let (h, m, s) = (
        two(rest.get(0..2)?)?,
        two(rest.get(3..5)?)?,
        two(rest.get(6..8)?)?,
    );
    if rest.get(2) != Some(&b':') || rest.get(5) != Some(&b':') || h > 23 || m > 59 || s > 59 {
        return None;
    }
    let mut micros = 0;
    match &rest[8..] {
        [] => {}
        [b'.', digits @ ..] if (1..=6).contains(&digits.len()) => {
            for (k, &d) in digits.iter().enumerate() {
                if !d.is_ascii_digit() {
                    return None;
                }
                micros += i64::from(d - b'0') * 10i64.pow(5 - k as u32);
            }
        }
        _ => return None,
    }
    days.checked_mul(86_400_000_000)?
        .checked_add(((h * 60 + m) * 60 + s) * 1_000_000 + micros)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dump::chunk::RowDigest;
    use crate::engine::postgres::binary_copy::{text_of, BinaryCopy};
    use proptest::prelude::*;

    /// Whether the read-back's parser hashes this binary stream as it
    /// hashes the lines of `text`.
    fn reads_back_as(columns: &[Column], binary: &[u8], text: &[u8]) -> bool {
        let mut parser = BinaryCopy::new(columns.to_vec());
        let mut digest = RowDigest::default();
        parser.feed(&mut digest, binary).unwrap();
        parser.finish().unwrap();
        let mut lines = RowDigest::default();
        for line in text.split(|&b| b == b'\n').filter(|l| !l.is_empty()) {
            lines.add_line(line);
        }
        digest == lines
    }

    fn stream(columns: &[Column], text: &[u8]) -> Result<Vec<u8>, Refused> {
        let load = BinaryLoad::new(columns.to_vec()).expect("columns");
        let mut out = HEADER.to_vec();
        load.rows(text, 1, &mut out)?;
        out.extend_from_slice(&TRAILER);
        Ok(out)
    }

    #[test]
    fn every_kind_turns_into_what_the_read_back_prints_again() {
        let columns = Column::ALL;
        let lines: &[&[u8]] = &[
            b"-32768\t-2147483648\t-9223372036854775808\tt\ta\\tb\\\\c\\nd\\r\\b\\f\\v\x01\t-0.0001\t0001-01-01 BC\t2024-02-29 23:59:59.999999\t1999-12-31 00:00:00+00",
            b"32767\t2147483647\t9223372036854775807\tf\t\t123456789.123456789\t2000-01-01\t2000-01-01 00:00:00\t0044-03-15 12:00:00.5+00 BC",
            b"\\N\t\\N\t\\N\t\\N\t\\N\t\\N\t\\N\t\\N\t\\N",
            b"0\t0\t0\tt\t\xc3\xa9t\xc3\xa9 \\\\N\tNaN\tinfinity\t-infinity\tinfinity",
            b"7\t8\t9\tf\t\\\\N\t0.000\t5874897-12-31\t294276-12-31 23:59:59.999999\t4713-01-01 00:00:00+00 BC",
            b"1\t2\t3\tt\tx\t-Infinity\t-infinity\t1900-02-28 01:02:03.04\t2100-03-01 00:00:00+00",
            b"1\t2\t3\tt\tx\t10000\t1600-02-29\t0401-02-29 00:00:00 BC\t1970-01-01 00:00:00+00",
        ];
        let mut text = lines.join(&b'\n');
        text.push(b'\n');
        let binary = stream(&columns, &text).unwrap();
        assert!(reads_back_as(&columns, &binary, &text));
    }

    #[test]
    fn numeric_groups_weight_and_scale_are_the_servers() {
        let one = |t: &str| {
            let mut out = Vec::new();
            numeric(&mut out, t.as_bytes()).unwrap();
            out.chunks(2)
                .map(|w| i16::from_be_bytes([w[0], w[1]]))
                .collect::<Vec<_>>()
        };
        // ndigits, weight, sign, dscale, groups (as numeric_send gives them).
        assert_eq!(one("12345.678"), [3, 1, 0, 3, 1, 2345, 6780]);
        assert_eq!(one("-0.0001"), [1, -1, 0x4000, 4, 1]);
        assert_eq!(one("100000000"), [1, 2, 0, 0, 1]);
        assert_eq!(one("0.00"), [0, 0, 0, 2]);
        assert_eq!(one("0"), [0, 0, 0, 0]);
    }

    /// The largest numeric text PostgreSQL holds: 131,072 digits before the
    /// point and 16,383 after, 36,864 groups, more than an i16 counts.
    #[test]
    fn the_widest_numeric_turns_and_reads_back() {
        let text = [
            vec![b'9'; 131_072],
            vec![b'.'],
            vec![b'9'; 16_383],
            vec![b'\n'],
        ]
        .concat();
        let binary = stream(&[Column::Numeric], &text).unwrap();
        let groups = u16::from_be_bytes([binary[HEADER.len() + 6], binary[HEADER.len() + 7]]);
        assert_eq!(groups, 36_864);
        assert!(reads_back_as(&[Column::Numeric], &binary, &text));
        let wider = [vec![b'1'; 131_073], vec![b'\n']].concat();
        assert!(stream(&[Column::Numeric], &wider).is_err());
    }

    #[test]
    fn values_not_as_the_dump_writes_them_are_refused_with_their_line() {
        use Column::*;
        for (columns, text, why) in [
            (&[Int4][..], &b"1\n2147483648\n"[..], "line 2"),
            (&[Int2], b"-32769", "Int2"),
            (&[Int8], b"9223372036854775808", "Int8"),
            (&[Int4], b" 1", "Int4"),
            (&[Int4], b"\n", "Int4"),
            (&[Int4], b"1.0", "Int4"),
            (&[Bool], b"true", "Bool"),
            (&[Text], b"a\\x41", "escape \\x"),
            (&[Text], b"a\\.", "escape \\."),
            (&[Text], b"a\\", "backslash at the end"),
            (&[Text], b"a\rb", "carriage return"),
            (&[Int4, Int4], b"1", "1 fields where the table has 2"),
            (&[Int4, Int4], b"1\t2\t3", "more than 2 fields"),
            (&[Numeric], b"1e5", "Numeric"),
            (&[Numeric], b"1.", "Numeric"),
            (&[Numeric], b".5", "Numeric"),
            (&[Numeric], b"+1", "Numeric"),
            (&[Date], b"2023-02-29", "Date"),
            (&[Date], b"2023-13-01", "Date"),
            (&[Date], b"0000-01-01", "Date"),
            (&[Date], b"23-01-01", "Date"),
            (&[Date], b"2023-01-01 00:00:00", "Date"),
            (&[Timestamp], b"2023-01-01 24:00:00", "Timestamp"),
            (&[Timestamp], b"2023-01-01 00:00:00.1234567", "Timestamp"),
            (&[Timestamp], b"2023-01-01T00:00:00", "Timestamp"),
            (&[TimestampTz], b"2023-01-01 00:00:00+01", "TimestampTz"),
            (&[TimestampTz], b"2023-01-01 00:00:00", "TimestampTz"),
        ] {
            let err = stream(columns, text).unwrap_err();
            assert!(
                err.contains(why),
                "{:?}: {err}",
                String::from_utf8_lossy(text)
            );
        }
    }

    fn column() -> impl Strategy<Value = Column> {
        proptest::sample::select(Column::ALL.to_vec())
    }

    /// A binary value of `col` as the server could send it.
    fn value(col: Column) -> BoxedStrategy<Option<Vec<u8>>> {
        let v: BoxedStrategy<Vec<u8>> = match col {
            Column::Int2 => any::<i16>().prop_map(|v| v.to_be_bytes().to_vec()).boxed(),
            Column::Int4 => any::<i32>().prop_map(|v| v.to_be_bytes().to_vec()).boxed(),
            Column::Int8 => any::<i64>().prop_map(|v| v.to_be_bytes().to_vec()).boxed(),
            Column::Bool => any::<bool>().prop_map(|v| vec![u8::from(v)]).boxed(),
            Column::Text => proptest::collection::vec(1u8..=255, 0..40).boxed(),
            Column::Numeric => (
                proptest::collection::vec(0i16..10_000, 0..6),
                -8i16..8,
                any::<bool>(),
                0u16..30,
            )
                .prop_map(|(mut groups, weight, negative, dscale)| {
                    // As the server sends it: no zero group at either end,
                    // no digit past the scale, zero positive.
                    while groups.first() == Some(&0) {
                        groups.remove(0);
                    }
                    let keep = (i64::from(weight) + 1 + (i64::from(dscale) + 3) / 4).max(0);
                    groups.truncate(keep as usize);
                    if let Some(last) = groups.len().checked_sub(1) {
                        let exp = i64::from(weight) - last as i64;
                        let cut = -exp * 4 - i64::from(dscale);
                        if cut > 0 {
                            groups[last] -= groups[last] % 10i16.pow(cut as u32);
                        }
                    }
                    while groups.last() == Some(&0) {
                        groups.pop();
                    }
                    let (weight, negative) = if groups.is_empty() {
                        (0, false)
                    } else {
                        (weight, negative)
                    };
                    let mut out = Vec::new();
                    for w in [
                        groups.len() as i16,
                        weight,
                        if negative { 0x4000 } else { 0 },
                        dscale as i16,
                    ] {
                        out.extend_from_slice(&w.to_be_bytes());
                    }
                    for g in groups {
                        out.extend_from_slice(&g.to_be_bytes());
                    }
                    out
                })
                .boxed(),
            Column::Date => (-2_451_545i32..2_145_031_948)
                .prop_map(|v| v.to_be_bytes().to_vec())
                .boxed(),
            Column::Timestamp | Column::TimestampTz => (-211_813_488_000_000_000i64
                ..9_223_371_331_200_000_000)
                .prop_map(|v| v.to_be_bytes().to_vec())
                .boxed(),
        };
        proptest::option::weighted(0.9, v).boxed()
    }

    /// A row of binary values, `None` for NULL.
    type Row = Vec<Option<Vec<u8>>>;

    fn table() -> impl Strategy<Value = (Vec<Column>, Vec<Row>)> {
        proptest::collection::vec(column(), 1..6).prop_flat_map(|columns| {
            let row = columns.iter().map(|c| value(*c)).collect::<Vec<_>>();
            (Just(columns), proptest::collection::vec(row, 0..8))
        })
    }

    proptest! {
        /// Binary rows the server could send, printed by the read-back's
        /// parser, turn back into the same bytes here.
        #[test]
        fn printed_rows_turn_back_into_their_binary((columns, rows) in table()) {
            let (mut binary, mut text) = (HEADER.to_vec(), Vec::new());
            for row in &rows {
                binary.extend_from_slice(&(columns.len() as i16).to_be_bytes());
                for (i, (v, col)) in row.iter().zip(&columns).enumerate() {
                    if i > 0 {
                        text.push(b'\t');
                    }
                    match v {
                        Some(v) => {
                            binary.extend_from_slice(&(v.len() as i32).to_be_bytes());
                            binary.extend_from_slice(v);
                            text_of(&mut text, *col, v).unwrap();
                        }
                        None => {
                            binary.extend_from_slice(&(-1i32).to_be_bytes());
                            text.extend_from_slice(b"\\N");
                        }
                    }
                }
                text.push(b'\n');
            }
            binary.extend_from_slice(&TRAILER);
            prop_assert_eq!(stream(&columns, &text).unwrap(), binary);
        }

    }
}
