//! Durations as written in a topology: an integer and a unit (`500ms`, `2s`, `5m`, `1h`, `14d`).

use std::time::Duration;

/// Parses `N` followed by `ms`, `s`, `m`, `h` or `d`. A bare number is refused
/// because `2` could mean seconds or milliseconds and a write-block timeout
/// that is off by a factor of 1000 is dangerous.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    let split = text
        .find(|c: char| !c.is_ascii_digit())
        .ok_or_else(|| format!("`{text}` has no unit; write e.g. `500ms`, `2s`, `5m` or `1h`"))?;
    let (digits, unit) = text.split_at(split);
    if digits.is_empty() {
        return Err(format!(
            "`{text}` is not a duration; write e.g. `500ms`, `2s`, `5m` or `1h`"
        ));
    }
    let n: u64 = digits
        .parse()
        .map_err(|_| format!("`{text}`: number out of range"))?;
    let millis = match unit {
        "ms" => Some(n),
        "s" => n.checked_mul(1_000),
        "m" => n.checked_mul(60_000),
        "h" => n.checked_mul(3_600_000),
        // Retention is said in days.
        "d" => n.checked_mul(86_400_000),
        _ => {
            return Err(format!(
                "`{text}`: unknown unit `{unit}`; use ms, s, m, h or d"
            ))
        }
    }
    .ok_or_else(|| format!("`{text}`: number out of range"))?;
    Ok(Duration::from_millis(millis))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn units() {
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("2s"), Ok(Duration::from_secs(2)));
        assert_eq!(parse_duration("5m"), Ok(Duration::from_secs(300)));
        assert_eq!(parse_duration("1h"), Ok(Duration::from_secs(3600)));
        assert_eq!(parse_duration("14d"), Ok(Duration::from_secs(14 * 86400)));
    }

    #[test]
    fn refusals() {
        assert!(parse_duration("2").unwrap_err().contains("no unit"));
        assert!(parse_duration("2 days")
            .unwrap_err()
            .contains("unknown unit"));
        assert!(parse_duration("s").unwrap_err().contains("not a duration"));
        assert!(parse_duration("-1s")
            .unwrap_err()
            .contains("not a duration"));
    }
}
