//! Column definitions and result rows, decoded in place: each value is a
//! [`Val`] borrowing the packet, encoded straight into the caller's
//! buffer. This is the decoding mysql_async does into a `Row` of owned
//! values, without the allocation per value and per row.
//!
//! Rows come in the binary protocol (prepared statements), or in the text
//! protocol for columns whose text is exactly what the binary protocol
//! gives ([`ColumnDef::text_exact`]): integers, parsed and written back,
//! and byte strings, as they are. Both give the same canonical line.

use mysql_async::consts::ColumnType;

use super::cursor::Cursor;
use super::WireError;
use crate::engine::mysql::value::{encode_val, Val};

const UNSIGNED_FLAG: u16 = 0x20;

/// What decoding and encoding a column's values needs.
#[derive(Debug, Clone, Copy)]
pub struct ColumnDef {
    pub ty: ColumnType,
    /// How `ty`'s values are laid out, settled when the column is read.
    kind: Kind,
    pub unsigned: bool,
    pub decimals: u8,
}

fn bad(what: &str) -> WireError {
    WireError::Protocol(format!("malformed {what}"))
}

/// Parses a ColumnDefinition41 packet. A type this reader cannot decode
/// is refused here, once per result, so that decoding a row cannot meet one.
pub fn column_def(payload: &[u8]) -> Result<ColumnDef, WireError> {
    let mut c = Cursor::new(payload);
    // catalog, schema, table, org_table, name, org_name
    for _ in 0..6 {
        c.lenenc_bytes().ok_or_else(|| bad("column definition"))?;
    }
    c.lenenc().ok_or_else(|| bad("column definition"))?;
    c.skip(2 + 4).ok_or_else(|| bad("column definition"))?; // charset, length
    let ty = c.u8().ok_or_else(|| bad("column definition"))?;
    let flags = c.u16().ok_or_else(|| bad("column definition"))?;
    let decimals = c.u8().ok_or_else(|| bad("column definition"))?;
    let (ty, kind) = ColumnType::try_from(ty)
        .ok()
        .and_then(|t| Some((t, kind(t)?)))
        .ok_or_else(|| WireError::Unsupported(format!("column type {ty} in a result")))?;
    Ok(ColumnDef {
        ty,
        kind,
        unsigned: flags & UNSIGNED_FLAG != 0,
        decimals,
    })
}

impl ColumnDef {
    /// Whether the text protocol's value is the binary protocol's, exactly:
    /// an integer (whose text, zero-filled or not, is parsed back into the
    /// same number) or bytes the server sends alike in both. Floats, times
    /// and dates are formatted by the server in the text protocol, and are
    /// read through the binary one.
    pub fn text_exact(&self) -> bool {
        matches!(self.kind, Kind::Int(_) | Kind::Bytes | Kind::Null)
            && self.ty != ColumnType::MYSQL_TYPE_BIT
    }
}

/// How a type's values are laid out in a binary row.
#[derive(Debug, Clone, Copy)]
enum Kind {
    /// Little-endian integer of this many bytes.
    Int(usize),
    Float,
    Double,
    DateTime,
    Time,
    Null,
    /// Length-encoded bytes.
    Bytes,
}

/// `None` for types that never appear in a result row (TIMESTAMP2,
/// DATETIME2, TIME2 and the like are storage formats the server converts
/// before sending).
fn kind(ty: ColumnType) -> Option<Kind> {
    use ColumnType::*;
    Some(match ty {
        MYSQL_TYPE_TINY => Kind::Int(1),
        MYSQL_TYPE_SHORT | MYSQL_TYPE_YEAR => Kind::Int(2),
        MYSQL_TYPE_LONG | MYSQL_TYPE_INT24 => Kind::Int(4),
        MYSQL_TYPE_LONGLONG => Kind::Int(8),
        MYSQL_TYPE_FLOAT => Kind::Float,
        MYSQL_TYPE_DOUBLE => Kind::Double,
        MYSQL_TYPE_TIMESTAMP | MYSQL_TYPE_DATE | MYSQL_TYPE_NEWDATE | MYSQL_TYPE_DATETIME => {
            Kind::DateTime
        }
        MYSQL_TYPE_TIME => Kind::Time,
        MYSQL_TYPE_NULL => Kind::Null,
        MYSQL_TYPE_STRING
        | MYSQL_TYPE_VAR_STRING
        | MYSQL_TYPE_BLOB
        | MYSQL_TYPE_TINY_BLOB
        | MYSQL_TYPE_MEDIUM_BLOB
        | MYSQL_TYPE_LONG_BLOB
        | MYSQL_TYPE_SET
        | MYSQL_TYPE_ENUM
        | MYSQL_TYPE_DECIMAL
        | MYSQL_TYPE_VARCHAR
        | MYSQL_TYPE_BIT
        | MYSQL_TYPE_NEWDECIMAL
        | MYSQL_TYPE_GEOMETRY
        | MYSQL_TYPE_VECTOR
        | MYSQL_TYPE_JSON => Kind::Bytes,
        _ => return None,
    })
}

fn int(c: &mut Cursor<'_>, unsigned: bool, width: usize) -> Option<Val<'static>> {
    let b = c.take(width)?;
    let mut raw = [0u8; 8];
    raw[..width].copy_from_slice(b);
    let u = u64::from_le_bytes(raw);
    Some(if unsigned {
        Val::UInt(u)
    } else {
        // Sign-extend from `width` bytes.
        let shift = 64 - 8 * width as u32;
        Val::Int(((u << shift) as i64) >> shift)
    })
}

fn datetime<'a>(c: &mut Cursor<'a>) -> Option<Val<'a>> {
    let len = usize::from(c.u8()?);
    let mut d = Cursor::new(c.take(len)?);
    let (mut y, mut mo, mut da, mut h, mut mi, mut s, mut us) = (0, 0, 0, 0, 0, 0, 0);
    if len >= 4 {
        (y, mo, da) = (d.u16()?, d.u8()?, d.u8()?);
    }
    if len >= 7 {
        (h, mi, s) = (d.u8()?, d.u8()?, d.u8()?);
    }
    if len == 11 {
        us = d.u32()?;
    }
    Some(Val::Date(y, mo, da, h, mi, s, us))
}

fn time<'a>(c: &mut Cursor<'a>) -> Option<Val<'a>> {
    let len = usize::from(c.u8()?);
    let mut d = Cursor::new(c.take(len)?);
    let (mut neg, mut days, mut h, mut mi, mut s, mut us) = (false, 0, 0, 0, 0, 0);
    if len >= 8 {
        neg = d.u8()? == 1;
        (days, h, mi, s) = (d.u32()?, d.u8()?, d.u8()?, d.u8()?);
    }
    if len == 12 {
        us = d.u32()?;
    }
    Some(Val::Time(neg, days, h, mi, s, us))
}

/// Decodes one value of `col` and appends it; `None` if the packet ends
/// inside it. Inlined into the row loop: returning the value as a
/// `Result<Option<Val>>` and encoding it afterwards cost a store and a
/// misaligned reload of the enum per value, a third of this function's
/// samples in a profile.
#[inline(always)]
fn encode_value(out: &mut Vec<u8>, c: &mut Cursor<'_>, col: &ColumnDef) -> Option<()> {
    let v = match col.kind {
        Kind::Int(width) => int(c, col.unsigned, width)?,
        Kind::Float => Val::Float(f32::from_le_bytes(c.array()?)),
        Kind::Double => Val::Double(f64::from_le_bytes(c.array()?)),
        Kind::DateTime => datetime(c)?,
        Kind::Time => time(c)?,
        Kind::Null => Val::Null,
        Kind::Bytes => Val::Bytes(c.lenenc_bytes()?),
    };
    encode_val(out, v, col.ty, col.decimals);
    Some(())
}

/// Appends the canonical line of one binary row (`payload` starts with its
/// 0x00 header) to `out`.
pub fn encode_row(out: &mut Vec<u8>, payload: &[u8], cols: &[ColumnDef]) -> Result<(), WireError> {
    let mut c = Cursor::new(payload);
    c.skip(1).ok_or_else(|| bad("row"))?;
    // NULL bitmap, offset by 2 bits in result rows.
    let nulls = c.take((cols.len() + 9) / 8).ok_or_else(|| bad("row"))?;
    for (i, col) in cols.iter().enumerate() {
        if i > 0 {
            out.push(b'\t');
        }
        let bit = i + 2;
        if nulls[bit / 8] & (1 << (bit % 8)) != 0 {
            encode_val(out, Val::Null, col.ty, col.decimals);
        } else if encode_value(out, &mut c, col).is_none() {
            return Err(bad("row (a value runs past its end)"));
        }
    }
    Ok(())
}

/// Appends the canonical line of one text-protocol row to `out`: every
/// column must be [`ColumnDef::text_exact`] (checked once per result).
pub fn encode_text_row(
    out: &mut Vec<u8>,
    payload: &[u8],
    cols: &[ColumnDef],
) -> Result<(), WireError> {
    let mut c = Cursor::new(payload);
    for (i, col) in cols.iter().enumerate() {
        if i > 0 {
            out.push(b'\t');
        }
        if c.rest().first() == Some(&0xFB) {
            c.skip(1);
            encode_val(out, Val::Null, col.ty, col.decimals);
            continue;
        }
        let text = c
            .lenenc_bytes()
            .ok_or_else(|| bad("row (a value runs past its end)"))?;
        let v = match col.kind {
            Kind::Int(_) => {
                text_int(text, col.unsigned).ok_or_else(|| bad("integer in a text row"))?
            }
            Kind::Null => Val::Null,
            _ => Val::Bytes(text),
        };
        encode_val(out, v, col.ty, col.decimals);
    }
    if !c.rest().is_empty() {
        return Err(bad("row (bytes after its last value)"));
    }
    Ok(())
}

/// An integer as the text protocol sends it (digits, a leading `-` for a
/// signed one, leading zeros for ZEROFILL).
fn text_int(text: &[u8], unsigned: bool) -> Option<Val<'static>> {
    let s = std::str::from_utf8(text).ok()?;
    Some(if unsigned {
        Val::UInt(s.parse().ok()?)
    } else {
        Val::Int(s.parse().ok()?)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn col(ty: ColumnType, unsigned: bool, decimals: u8) -> ColumnDef {
        ColumnDef {
            ty,
            kind: kind(ty).unwrap(),
            unsigned,
            decimals,
        }
    }

    #[test]
    fn decodes_a_row_of_mixed_types() {
        use ColumnType::*;
        let cols = [
            col(MYSQL_TYPE_TINY, false, 0),
            col(MYSQL_TYPE_LONGLONG, true, 0),
            col(MYSQL_TYPE_VAR_STRING, false, 0),
            col(MYSQL_TYPE_LONG, false, 0),
            col(MYSQL_TYPE_DATETIME, false, 3),
            col(MYSQL_TYPE_TIME, false, 0),
            col(MYSQL_TYPE_DOUBLE, false, 31),
            col(MYSQL_TYPE_SHORT, false, 0),
        ];
        let mut p = vec![0x00];
        // Column 3 (index 3) is NULL: bit 3 + 2 = 5 of the first byte.
        p.extend_from_slice(&[1 << 5, 0]);
        p.push(0xFF); // -1
        p.extend_from_slice(&u64::MAX.to_le_bytes());
        p.extend_from_slice(b"\x04a\tb\\");
        p.extend_from_slice(&[11, 0xE8, 0x07, 3, 10, 1, 59, 59]);
        p.extend_from_slice(&123_000u32.to_le_bytes());
        p.extend_from_slice(&[8, 1, 1, 0, 0, 0, 2, 3, 4]);
        p.extend_from_slice(&0.1f64.to_le_bytes());
        p.extend_from_slice(&(-300i16).to_le_bytes());
        let mut out = Vec::new();
        encode_row(&mut out, &p, &cols).unwrap();
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "-1\t18446744073709551615\ta\\tb\\\\\t\\N\t2024-03-10 01:59:59.123\t-26:03:04\t1e-1\t-300"
        );
    }

    #[test]
    fn a_text_row_gives_the_binary_rows_line() {
        use ColumnType::*;
        let cols = [
            col(MYSQL_TYPE_TINY, false, 0),
            col(MYSQL_TYPE_LONGLONG, true, 0),
            col(MYSQL_TYPE_VAR_STRING, false, 0),
            col(MYSQL_TYPE_LONG, false, 0),
            col(MYSQL_TYPE_NEWDECIMAL, false, 2),
            col(MYSQL_TYPE_SHORT, false, 0),
        ];
        assert!(cols.iter().all(ColumnDef::text_exact));
        let mut binary = vec![0x00, 1 << 5, 0xFF];
        binary.extend_from_slice(&u64::MAX.to_le_bytes());
        binary.extend_from_slice(b"\x04a\tb\\\x05-1.50");
        binary.extend_from_slice(&42i16.to_le_bytes());
        // The same values as text; 42 zero-filled, as ZEROFILL sends it.
        let mut text = b"\x02-1\x1418446744073709551615\x04a\tb\\\xFB\x05-1.50".to_vec();
        text.extend_from_slice(b"\x0500042");
        let (mut a, mut b) = (Vec::new(), Vec::new());
        encode_row(&mut a, &binary, &cols).unwrap();
        encode_text_row(&mut b, &text, &cols).unwrap();
        assert_eq!(String::from_utf8(b).unwrap(), String::from_utf8(a).unwrap());
        // A server's text that is not the integer its column says is refused.
        for bad in [&b"\x02\t1"[..], b"\x01x", b"\x1499999999999999999999"] {
            let mut t = bad.to_vec();
            t.extend_from_slice(&text[3..]);
            assert!(encode_text_row(&mut Vec::new(), &t, &cols).is_err());
        }
        // Float, double, date and time columns are not read as text.
        for ty in [
            MYSQL_TYPE_FLOAT,
            MYSQL_TYPE_DOUBLE,
            MYSQL_TYPE_DATETIME,
            MYSQL_TYPE_TIME,
            MYSQL_TYPE_BIT,
        ] {
            assert!(!col(ty, false, 0).text_exact(), "{ty:?}");
        }
    }

    #[test]
    fn a_short_row_is_an_error_not_a_panic() {
        let cols = [col(ColumnType::MYSQL_TYPE_LONG, false, 0)];
        let mut out = Vec::new();
        assert!(encode_row(&mut out, &[0, 0, 1, 2], &cols).is_err());
        assert!(encode_row(&mut out, &[0], &cols).is_err());
    }
}
