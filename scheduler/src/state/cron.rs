//! Cron schedules: standard five-field expressions (minute, hour, day of month, month, day of
//! week), evaluated in UTC. Pure functions of the expression and a time, so every replica
//! computes the same occurrences.

use std::str::FromStr;

use chrono::{DateTime, Utc};
use croner::Cron;
use rkyv::{Archive, Deserialize, Serialize};

/// A registered schedule.
#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
#[rkyv(attr(allow(missing_docs, reason = "rkyv's archived twin of a documented type")))]
pub struct Schedule {
    /// The expression.
    pub cron: String,
    /// The kind of workflow each occurrence starts.
    pub kind: String,
    /// Their input.
    pub input: Vec<u8>,
    /// The timer of the next occurrence.
    pub timer: u64,
}

/// Parses a standard five-field cron expression.
///
/// # Errors
/// What is wrong with it.
pub(super) fn parse(expression: &str) -> Result<Cron, String> {
    let fields = expression.split_whitespace().count();
    if fields != 5 {
        return Err(format!(
            "{fields} fields; a cron expression has five (minute hour day-of-month month day-of-week)"
        ));
    }
    Cron::from_str(expression).map_err(|e| e.to_string())
}

/// The first occurrence of `cron` strictly after `after_ms` (ms since the Unix epoch), if
/// any within the library's search horizon.
pub(super) fn next_after(cron: &Cron, after_ms: u64) -> Option<u64> {
    let after = DateTime::<Utc>::from_timestamp_millis(i64::try_from(after_ms).ok()?)?;
    let next = cron.find_next_occurrence(&after, false).ok()?;
    u64::try_from(next.timestamp_millis()).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn next_occurrence_is_strictly_after() {
        let every_five = parse("*/5 * * * *").expect("parses");
        // 2026-01-01T00:00:00Z
        let midnight = 1_767_225_600_000;
        assert_eq!(next_after(&every_five, midnight), Some(midnight + 300_000));
        assert_eq!(
            next_after(&every_five, midnight + 1),
            Some(midnight + 300_000)
        );
    }

    #[test]
    fn malformed_expressions_are_refused() {
        assert!(parse("* * * *").is_err());
        assert!(parse("0 0 * * * *").is_err());
        assert!(parse("61 * * * *").is_err());
        assert!(parse("every day").is_err());
    }
}
