//! Settings read from the environment, for measuring and for tests that
//! take a path only many tables or much data would otherwise reach
//! (`SHARDCUT_TABLES_PER_SNAPSHOT`, `SHARDCUT_REPLAY_WORKERS`, ...). Each
//! one's default lives where it is used.

/// The positive whole number in the environment variable `name`; `None`
/// when it is unset, not a number, or zero.
pub(crate) fn count(name: &str) -> Option<usize> {
    positive(std::env::var(name).ok().as_deref())
}

fn positive(value: Option<&str>) -> Option<usize> {
    value
        .and_then(|v| v.parse::<usize>().ok())
        .filter(|n| *n > 0)
}

#[cfg(test)]
mod tests {
    #[test]
    fn only_a_positive_number_counts() {
        for (value, want) in [("12", Some(12)), ("0", None), ("-3", None), ("x", None)] {
            assert_eq!(super::positive(Some(value)), want, "{value}");
        }
        assert_eq!(super::positive(None), None);
    }
}
