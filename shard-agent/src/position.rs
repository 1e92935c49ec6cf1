//! Typed replication positions, compared only within their kind.
//!
//! A cut is a map from shard name to [`Position`]. Comparing positions of
//! different kinds (an LSN with a binlog offset) is a logic error, reported
//! as an error value rather than a panic or a silent `false`.

use std::cmp::Ordering;
use std::collections::BTreeMap;
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

/// One MariaDB GTID: `domain-server-sequence`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Gtid {
    pub domain: u32,
    pub server: u32,
    pub seq: u64,
}

impl fmt::Display for Gtid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}-{}-{}", self.domain, self.server, self.seq)
    }
}

impl FromStr for Gtid {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let bad = || format!("`{s}` is not a MariaDB GTID (domain-server-sequence)");
        let mut parts = s.trim().splitn(3, '-');
        let mut next = || parts.next().ok_or_else(bad);
        let (d, sv, n) = (next()?, next()?, next()?);
        let digits = |t: &str| !t.is_empty() && t.bytes().all(|b| b.is_ascii_digit());
        if !(digits(d) && digits(sv) && digits(n)) {
            return Err(bad());
        }
        Ok(Gtid {
            domain: d.parse().map_err(|_| bad())?,
            server: sv.parse().map_err(|_| bad())?,
            seq: n.parse().map_err(|_| bad())?,
        })
    }
}

/// A MariaDB GTID position, as `gtid_binlog_pos` and `gtid_slave_pos`
/// write it: the newest GTID of each replication domain. Within a domain,
/// sequence numbers grow in binlog order on the primary and on every
/// replica that logs what it applies, so a position names the same point
/// of the history on any of them: what capture resumes from after a
/// failover, and how positions of different servers compare.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct GtidPosition(BTreeMap<u32, Gtid>);

impl GtidPosition {
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Whether the transaction `g` lies at or before this position.
    pub fn includes(&self, g: &Gtid) -> bool {
        self.0.get(&g.domain).is_some_and(|p| g.seq <= p.seq)
    }

    /// Moves the position past transaction `g` (never back: a
    /// transaction it already includes leaves it as it is).
    pub fn record(&mut self, g: Gtid) {
        if !self.includes(&g) {
            self.0.insert(g.domain, g);
        }
    }

    /// Orders two positions domain by domain. Positions that are ahead in
    /// one domain and behind in another, or that name different
    /// transactions with one sequence number (a server that wrote
    /// transactions of its own, or lost some, before it was promoted),
    /// lie on different histories: not comparable.
    pub fn compare(&self, other: &GtidPosition) -> Result<Ordering, String> {
        let mut order = Ordering::Equal;
        for d in self.0.keys().chain(other.0.keys()) {
            let (a, b) = (self.0.get(d), other.0.get(d));
            let o = a.map_or(0, |g| g.seq).cmp(&b.map_or(0, |g| g.seq));
            if let (Ordering::Equal, Some(a), Some(b)) = (o, a, b) {
                if a.server != b.server {
                    return Err(format!(
                        "GTID positions {self} and {other} diverge: {a} and {b} are different transactions"
                    ));
                }
            }
            order = match (order, o) {
                (Ordering::Equal, o) | (o, Ordering::Equal) => o,
                (x, y) if x == y => x,
                _ => {
                    return Err(format!(
                        "GTID positions {self} and {other} diverge: each is ahead in some domain"
                    ))
                }
            };
        }
        Ok(order)
    }
}

impl fmt::Display for GtidPosition {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, g) in self.0.values().enumerate() {
            if i > 0 {
                f.write_str(",")?;
            }
            write!(f, "{g}")?;
        }
        Ok(())
    }
}

impl FromStr for GtidPosition {
    type Err = String;
    /// `domain-server-seq[,…]`, one per domain; empty for no transaction.
    fn from_str(s: &str) -> Result<Self, String> {
        let mut out = BTreeMap::new();
        for part in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            let g: Gtid = part.parse()?;
            if out.insert(g.domain, g).is_some() {
                return Err(format!(
                    "GTID position `{s}` names domain {} twice",
                    g.domain
                ));
            }
        }
        Ok(GtidPosition(out))
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
#[error("{0}")]
pub struct IncomparablePositions(String);

impl Position {
    pub fn kind(&self) -> &'static str {
        match self {
            Position::Mariadb { .. } => "mariadb",
            Position::Mysql { .. } => "mysql",
            Position::Postgres { .. } => "postgres",
        }
    }

    /// The MariaDB GTID position, when this is one that names any
    /// transaction.
    pub fn gtid_position(&self) -> Option<Result<GtidPosition, String>> {
        match self {
            Position::Mariadb { gtid, .. } if !gtid.trim().is_empty() => Some(gtid.parse()),
            _ => None,
        }
    }

    /// Orders two positions of the same kind. MariaDB positions are
    /// ordered by their GTID positions, which hold across a failover to a
    /// replica (whose binlog files are its own); only when neither names a
    /// transaction, and for MySQL, by binlog file number and offset, which
    /// hold on one server only.
    pub fn compare(&self, other: &Position) -> Result<Ordering, IncomparablePositions> {
        let err = || {
            IncomparablePositions(format!(
                "cannot compare a {} position with a {} position",
                self.kind(),
                other.kind()
            ))
        };
        match (self, other) {
            (Position::Postgres { lsn: a }, Position::Postgres { lsn: b }) => Ok(a.cmp(b)),
            (Position::Mariadb { binlog: a, .. }, Position::Mariadb { binlog: b, .. }) => {
                // A position with no GTID names the start of the
                // history: the server had logged no transaction yet.
                let empty = || Ok(GtidPosition::default());
                match (self.gtid_position(), other.gtid_position()) {
                    (None, None) => a.cmp_within(b).ok_or_else(err),
                    (x, y) => x
                        .unwrap_or_else(empty)
                        .and_then(|x| y.unwrap_or_else(empty).and_then(|y| x.compare(&y)))
                        .map_err(IncomparablePositions),
                }
            }
            (Position::Mysql { binlog: a, .. }, Position::Mysql { binlog: b, .. }) => {
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
            gtid: String::new(),
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
            Err(IncomparablePositions(
                "cannot compare a postgres position with a mariadb position".into()
            ))
        );
    }

    fn at(gtid: &str, file: &str, offset: u64) -> Position {
        Position::Mariadb {
            gtid: gtid.into(),
            binlog: BinlogCoordinates {
                file: file.into(),
                offset,
            },
        }
    }

    #[test]
    fn mariadb_positions_of_two_servers_compare_by_gtid() {
        // The primary's binlog.000007 against a promoted replica's
        // binlog.000002: the files say nothing, the GTIDs do.
        let primary = at("0-1-120", "binlog.000007", 9000);
        let replica = at("0-2-121", "binlog.000002", 400);
        assert_eq!(primary.compare(&replica), Ok(Ordering::Less));
        assert_eq!(replica.compare(&primary), Ok(Ordering::Greater));
        // The same transaction seen on either server.
        assert_eq!(
            at("0-1-120", "binlog.000007", 9000).compare(&at("0-1-120", "binlog.000002", 44)),
            Ok(Ordering::Equal)
        );
        // Several domains: behind or equal in each is before.
        assert_eq!(
            at("0-1-5,1-1-9", "b.000001", 4).compare(&at("0-2-7,1-1-9", "b.000001", 4)),
            Ok(Ordering::Less)
        );
        // A domain one position lacks counts as sequence 0.
        assert_eq!(
            at("0-1-5", "b.000001", 4).compare(&at("0-1-5,3-3-1", "b.000001", 4)),
            Ok(Ordering::Less)
        );
        // Diverged histories are not ordered at all.
        assert!(at("0-1-5,1-1-9", "b.1", 4)
            .compare(&at("0-1-6,1-1-8", "b.1", 4))
            .is_err());
        let e = at("0-1-120", "b.1", 4)
            .compare(&at("0-2-120", "b.1", 4))
            .unwrap_err();
        assert!(e.to_string().contains("different transactions"), "{e}");
        // Hostile text is refused, not guessed at.
        assert!(at("0-1-x", "b.1", 4).compare(&primary).is_err());
        assert!(at("0-1-1,0-1-2", "b.1", 4).compare(&primary).is_err());
        // No GTID yet: the start of the history, on any server.
        assert_eq!(
            at("", "b.000009", 900).compare(&at("0-2-1", "b.000001", 4)),
            Ok(Ordering::Less)
        );
        // Neither has one: binlog coordinates of one server.
        assert_eq!(
            at("", "b.000002", 4).compare(&at("", "b.000001", 900)),
            Ok(Ordering::Greater)
        );
    }

    #[test]
    fn gtid_positions_parse_print_and_include() {
        let p: GtidPosition = "1-2-30, 0-1-5".parse().unwrap();
        assert_eq!(p.to_string(), "0-1-5,1-2-30");
        assert!(p.includes(&"0-9-5".parse().unwrap()));
        assert!(!p.includes(&"0-1-6".parse().unwrap()));
        assert!(!p.includes(&"2-1-1".parse().unwrap()));
        let mut q = p.clone();
        q.record("0-3-6".parse().unwrap());
        assert_eq!(q.to_string(), "0-3-6,1-2-30");
        assert!("".parse::<GtidPosition>().unwrap().is_empty());
        for bad in [
            "0-1",
            "a-1-2",
            "0-1-2-3",
            "0--1-2",
            "0-1-99999999999999999999",
        ] {
            assert!(bad.parse::<GtidPosition>().is_err(), "{bad}");
        }
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
