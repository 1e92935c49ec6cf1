//! Errors of the topology crate.
//!
//! Policy: a topology that fails validation yields one [`Violation`] per
//! problem, all of them, so a DBA fixes the file in one pass. Each violation
//! renders as exactly one line `FILE:LINE:COL: PATH: MESSAGE` (line and column
//! when the YAML parser knows them). Messages never contain secret values.

use std::fmt;
use std::path::PathBuf;

/// One problem in a topology file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Violation {
    /// Field path such as `shards[2].url`; empty for the whole document.
    pub path: String,
    /// 1-based line and column of the offending node, when known.
    pub location: Option<(usize, usize)>,
    pub message: String,
}

#[derive(Debug, thiserror::Error)]
pub enum TopologyError {
    #[error("{}: cannot read topology: {source}", path.display())]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{}", render(file, violations))]
    Invalid {
        file: PathBuf,
        violations: Vec<Violation>,
    },
}

impl TopologyError {
    /// The violations, empty for a read error.
    pub fn violations(&self) -> &[Violation] {
        match self {
            TopologyError::Invalid { violations, .. } => violations,
            TopologyError::Read { .. } => &[],
        }
    }
}

fn render(file: &std::path::Path, violations: &[Violation]) -> String {
    let mut out = String::new();
    for (i, v) in violations.iter().enumerate() {
        if i > 0 {
            out.push('\n');
        }
        out.push_str(&Rendered { file, v }.to_string());
    }
    out
}

struct Rendered<'a> {
    file: &'a std::path::Path,
    v: &'a Violation,
}

impl fmt::Display for Rendered<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.file.display())?;
        if let Some((line, col)) = self.v.location {
            write!(f, ":{line}:{col}")?;
        }
        if self.v.path.is_empty() {
            write!(f, ": {}", self.v.message)
        } else {
            write!(f, ": {}: {}", self.v.path, self.v.message)
        }
    }
}
