//! Exit codes, the same for every command, so scripts can tell outcomes apart:
//! 0 success, 1 operational failure (a shard, agent or storage failed),
//! 2 invalid input or usage, 3 finished but degraded.

use shard_agent::repo::RepoError;
use topology::TopologyError;

pub const SUCCESS: u8 = 0;
pub const FAILURE: u8 = 1;
pub const INVALID_INPUT: u8 = 2;
pub const DEGRADED: u8 = 3;

/// Marks an error as the user's input being wrong (exit 2) rather than
/// something failing (exit 1).
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct InvalidInput(pub String);

pub fn code_for(err: &anyhow::Error) -> u8 {
    for cause in err.chain() {
        if cause.is::<TopologyError>() || cause.is::<InvalidInput>() {
            return INVALID_INPUT;
        }
        // A missing or wrong repository key: the fix is in the topology,
        // as for invalid input.
        if cause
            .downcast_ref::<RepoError>()
            .is_some_and(RepoError::is_key_problem)
        {
            return INVALID_INPUT;
        }
    }
    FAILURE
}

/// The error and its causes on one line, except for a topology's list of
/// violations, which is one line per violation by design.
pub fn one_line(err: &anyhow::Error) -> String {
    let mut out = String::new();
    for (i, cause) in err.chain().enumerate() {
        let text = cause.to_string();
        if i > 0 {
            if out.contains(&text) {
                continue;
            }
            out.push_str(": ");
        }
        out.push_str(&text);
    }
    if err.chain().any(|c| c.is::<TopologyError>()) {
        out
    } else {
        collapse_repeats(&out.replace('\n', " "))
    }
}

/// One shard's failure on one line: the shard, then what failed. An
/// agent's error begins with the shard it happened on ("shard NAME: "),
/// said once when it is the same shard; another one (a restore's target)
/// is still shown.
pub fn shard_line(shard: &str, err: &anyhow::Error) -> String {
    let text = one_line(err);
    let text = text
        .strip_prefix(&format!("shard {shard}: "))
        .unwrap_or(&text);
    format!("{shard}: {text}")
}

/// Drivers sometimes wrap an error in a variant with the same prefix
/// (`Input/output error: Input/output error: …`); say it once.
fn collapse_repeats(text: &str) -> String {
    let mut parts: Vec<&str> = Vec::new();
    for part in text.split(": ") {
        if parts.last() != Some(&part) {
            parts.push(part);
        }
    }
    parts.join(": ")
}

/// Writes command output to stdout. A reader that went away (`| head`) is
/// not an error of ours: the rest of the output is dropped quietly.
pub fn emit(text: &str) -> std::io::Result<()> {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    match out.write_all(text.as_bytes()).and_then(|()| out.flush()) {
        Err(e) if e.kind() != std::io::ErrorKind::BrokenPipe => Err(e),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_failed_shard_is_named_once_and_a_different_one_still_shown() {
        let line = |shard: &str, text: &str| shard_line(shard, &anyhow::anyhow!("{text}"));
        assert_eq!(
            line(
                "pg-0",
                "shard pg-0: chunk k of t, line 1: bad; nothing of it was loaded"
            ),
            "pg-0: chunk k of t, line 1: bad; nothing of it was loaded"
        );
        assert_eq!(
            line("pg-0", "shard drill-0: connecting: refused"),
            "pg-0: shard drill-0: connecting: refused"
        );
        assert_eq!(line("pg-0", "shard pg-00: x"), "pg-0: shard pg-00: x");
    }

    #[test]
    fn repeated_prefixes_collapse() {
        assert_eq!(
            collapse_repeats(
                "shard a: cannot connect: Input/output error: Input/output error: refused"
            ),
            "shard a: cannot connect: Input/output error: refused"
        );
    }

    #[test]
    fn topology_errors_are_invalid_input() {
        let e = anyhow::Error::new(InvalidInput("bad".into()));
        assert_eq!(code_for(&e), INVALID_INPUT);
        assert_eq!(code_for(&anyhow::anyhow!("disk full")), FAILURE);
    }
}
