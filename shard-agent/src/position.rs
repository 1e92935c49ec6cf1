//! Typed replication positions, compared only within their kind.
//!
//! A cut is a map from shard name to [`Position`]. Comparing positions of
//! different kinds (an LSN with a binlog offset) is a logic error, reported
//! as an error value rather than a panic or a silent `false`.

use std::cmp::Ordering;
use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// A PostgreSQL WAL location (`16/B374D848`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Lsn(pub u64);

impl fmt::Display for Lsn {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:X}/{:X}", self.0 >> 32, self.0 & 0xFFFF_FFFF)
    }
}

impl FromStr for Lsn {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let (hi, lo) = s
            .split_once('/')
            .ok_or_else(|| format!("`{s}` is not an LSN"))?;
        let hi = u64::from_str_radix(hi, 16).map_err(|_| format!("`{s}` is not an LSN"))?;
        let lo = u64::from_str_radix(lo, 16).map_err(|_| format!("`{s}` is not an LSN"))?;
        if hi > u64::from(u32::MAX) || lo > u64::from(u32::MAX) {
            return Err(format!("`{s}` is not an LSN"));
        }
        Ok(Lsn((hi << 32) | lo))
    }
}

impl Serialize for Lsn {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.to_string())
    }
}

impl<'de> Deserialize<'de> for Lsn {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// Binlog coordinates: file name and byte offset in it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BinlogCoordinates {
    pub file: String,
    pub offset: u64,
}

impl BinlogCoordinates {
    /// Binlog files are `<base>.<number>`; order by number, then offset.
    fn cmp_within(&self, other: &Self) -> Option<Ordering> {
        let seq = |f: &str| f.rsplit_once('.').and_then(|(_, n)| n.parse::<u64>().ok());
        let (a, b) = (seq(&self.file)?, seq(&other.file)?);
        Some(a.cmp(&b).then(self.offset.cmp(&other.offset)))
    }
}

/// Where a shard stood at the moment of a cut.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Position {
    /// MariaDB: its GTID position (`domain-server-seq,...`) and binlog coordinates.
    Mariadb {
        gtid: String,
        #[serde(flatten)]
        binlog: BinlogCoordinates,
    },
    /// MySQL: `gtid_executed` and binlog coordinates.
    Mysql {
        gtid_executed: String,
        #[serde(flatten)]
        binlog: BinlogCoordinates,
    },
    /// PostgreSQL: the WAL insert location.
    Postgres { lsn: Lsn },
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("cannot compare a {0} position with a {1} position")]
pub struct IncomparablePositions(&'static str, &'static str);

impl Position {
    pub fn kind(&self) -> &'static str {
        match self {
            Position::Mariadb { .. } => "mariadb",
            Position::Mysql { .. } => "mysql",
            Position::Postgres { .. } => "postgres",
        }
    }

    /// Orders two positions of the same kind.
    pub fn compare(&self, other: &Position) -> Result<Ordering, IncomparablePositions> {
        let err = || IncomparablePositions(self.kind(), other.kind());
        match (self, other) {
            (Position::Postgres { lsn: a }, Position::Postgres { lsn: b }) => Ok(a.cmp(b)),
            (Position::Mariadb { binlog: a, .. }, Position::Mariadb { binlog: b, .. })
            | (Position::Mysql { binlog: a, .. }, Position::Mysql { binlog: b, .. }) => {
                a.cmp_within(b).ok_or_else(err)
            }
            _ => Err(err()),
        }
    }
}

impl fmt::Display for Position {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Position::Mariadb { gtid, binlog } => {
                write!(f, "gtid {gtid} ({}:{})", binlog.file, binlog.offset)
            }
            Position::Mysql {
                gtid_executed,
                binlog,
            } => write!(
                f,
                "gtid {gtid_executed} ({}:{})",
                binlog.file, binlog.offset
            ),
            Position::Postgres { lsn } => write!(f, "lsn {lsn}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lsn_round_trip() {
        let l: Lsn = "16/B374D848".parse().unwrap();
        assert_eq!(l.0, 0x16_B374_D848);
        assert_eq!(l.to_string(), "16/B374D848");
        assert!("16".parse::<Lsn>().is_err());
        assert!("1FFFFFFFF/0".parse::<Lsn>().is_err());
    }

    #[test]
    fn compare_within_kind_only() {
        let pg = |n| Position::Postgres { lsn: Lsn(n) };
        let maria = |file: &str, offset| Position::Mariadb {
            gtid: "0-1-5".into(),
            binlog: BinlogCoordinates {
                file: file.into(),
                offset,
            },
        };
        assert_eq!(pg(1).compare(&pg(2)), Ok(Ordering::Less));
        assert_eq!(
            maria("bin.000010", 4).compare(&maria("bin.000009", 900)),
            Ok(Ordering::Greater)
        );
        assert_eq!(
            pg(1).compare(&maria("bin.000001", 4)),
            Err(IncomparablePositions("postgres", "mariadb"))
        );
    }

    #[test]
    fn json_shape() {
        let p = Position::Mariadb {
            gtid: "0-1-5".into(),
            binlog: BinlogCoordinates {
                file: "bin.000002".into(),
                offset: 342,
            },
        };
        let j = serde_json::to_value(&p).unwrap();
        assert_eq!(
            j,
            serde_json::json!({"kind": "mariadb", "gtid": "0-1-5", "file": "bin.000002", "offset": 342})
        );
        assert_eq!(serde_json::from_value::<Position>(j).unwrap(), p);
    }
}
