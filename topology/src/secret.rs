//! A value that must never reach a log, an error message, a manifest or a report.

use std::fmt;

/// A password or token. `Debug` and `Display` print `****`; it deliberately
/// has no `Serialize`, so it cannot be written into a manifest or JSON output
/// by accident. The only way to read it is [`Secret::expose`], which call
/// sites use exactly where the value is handed to a driver.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    pub fn new(value: impl Into<String>) -> Self {
        Secret(value.into())
    }

    /// The secret itself, for handing to a database driver or an HTTP header.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(****)")
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("****")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn never_prints_its_value() {
        let s = Secret::new("hunter2-very-secret");
        assert_eq!(format!("{s}"), "****");
        assert_eq!(format!("{s:?}"), "Secret(****)");
        assert_eq!(format!("{:#?}", Some(&s)), "Some(\n    Secret(****),\n)");
        assert_eq!(s.expose(), "hunter2-very-secret");
    }
}
