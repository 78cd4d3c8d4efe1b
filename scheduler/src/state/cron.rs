//! Cron schedules: standard five-field expressions (minute, hour, day of month, month, day of
//! week), evaluated in UTC.
//!
//! An expression is parsed once, when its schedule is registered, into a [`CronSpec`] the
//! state keeps (the parser is croner's; `L`, `W` and `#` are refused). Occurrences are then
//! computed from the spec alone by [`next_after`], a pure function of the spec and a time:
//! firing never parses again, so every replica computes the same occurrences even if a
//! later parser would read the expression differently.

use std::str::FromStr;

use chrono::{DateTime, Datelike, Days, NaiveDate, Timelike, Utc};
use croner::Cron;
use rkyv::{Archive, Deserialize, Serialize};

/// A registered schedule.
#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
#[rkyv(attr(allow(missing_docs, reason = "rkyv's archived twin of a documented type")))]
pub struct Schedule {
    /// The expression, as registered.
    pub cron: String,
    /// The expression, parsed at registration: what firing reads.
    pub spec: CronSpec,
    /// The kind of workflow each occurrence starts.
    pub kind: String,
    /// Their input.
    pub input: Vec<u8>,
    /// The timer of the next occurrence.
    pub timer: u64,
}

/// How the day-of-month and day-of-week fields combine (as in Vixie cron).
#[derive(Archive, Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq)]
#[rkyv(attr(allow(missing_docs, reason = "rkyv's archived twin of a documented type")))]
pub enum DayRule {
    /// Both fields are `*`: every day.
    Any,
    /// Only the day of month is restricted.
    MonthDay,
    /// Only the day of week is restricted.
    WeekDay,
    /// Both are restricted: a day matching either.
    Either,
    /// Both are restricted and the day-of-week field starts with `+`: a day matching both.
    Both,
}

/// A parsed five-field cron expression: the allowed values of each field as bits.
#[derive(Archive, Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq)]
#[rkyv(attr(allow(missing_docs, reason = "rkyv's archived twin of a documented type")))]
pub struct CronSpec {
    /// Bit `m`: minute `m` (0–59).
    pub minutes: u64,
    /// Bit `h`: hour `h` (0–23).
    pub hours: u32,
    /// Bit `d`: day of month `d` (1–31).
    pub month_days: u32,
    /// Bit `m`: month `m` (1–12).
    pub months: u16,
    /// Bit `d`: weekday `d`, Sunday 0 (0–6).
    pub week_days: u8,
    /// How the two day fields combine.
    pub days: DayRule,
}

/// Days after which the Gregorian calendar, weekdays included, repeats (400 years): a spec
/// with no occurrence in this many days after a time has none at all.
const CALENDAR_CYCLE_DAYS: u64 = 146_097;

const MINUTES_VALID: u64 = (1 << 60) - 1;

fn bits<T: From<u8> + std::ops::BitOr<Output = T> + std::ops::Shl<u16, Output = T>>(
    values: &[u16],
) -> T {
    values
        .iter()
        .fold(T::from(0), |acc, &value| acc | (T::from(1) << value))
}

/// Parses a standard five-field cron expression.
///
/// # Errors
/// What is wrong with it.
pub(super) fn parse(expression: &str) -> Result<CronSpec, String> {
    let fields = expression.split_whitespace().count();
    if fields != 5 {
        return Err(format!(
            "{fields} fields; a cron expression has five (minute hour day-of-month month day-of-week)"
        ));
    }
    let cron = Cron::from_str(expression).map_err(|e| e.to_string())?;
    let pattern = &cron.pattern;
    if pattern.days.has_modifiers() || pattern.days_of_week.has_modifiers() {
        return Err("L, W and # are not supported".to_owned());
    }
    let days = match (
        pattern.is_dom_wildcard(),
        pattern.is_dow_wildcard(),
        pattern.matches_dom_and_dow(),
    ) {
        (true, true, _) => DayRule::Any,
        (false, true, _) => DayRule::MonthDay,
        (true, false, _) => DayRule::WeekDay,
        (false, false, false) => DayRule::Either,
        (false, false, true) => DayRule::Both,
    };
    // The parser folds weekday 7 into 0; a stray 7 is Sunday all the same.
    let week_days: u8 = pattern
        .days_of_week
        .values()
        .iter()
        .fold(0, |acc, &day| acc | 1 << (day % 7));
    Ok(CronSpec {
        minutes: bits(&pattern.minutes.values()),
        hours: bits(&pattern.hours.values()),
        month_days: bits(&pattern.days.values()),
        months: bits(&pattern.months.values()),
        week_days,
        days,
    })
}

impl CronSpec {
    fn day_matches(&self, date: NaiveDate) -> bool {
        let month_day = (self.month_days >> date.day()) & 1 == 1;
        let week_day = (self.week_days >> date.weekday().num_days_from_sunday()) & 1 == 1;
        let day = match self.days {
            DayRule::Any => true,
            DayRule::MonthDay => month_day,
            DayRule::WeekDay => week_day,
            DayRule::Either => month_day || week_day,
            DayRule::Both => month_day && week_day,
        };
        day && (self.months >> date.month()) & 1 == 1
    }

    /// The first allowed `(hour, minute)` at or after `hour:minute` on a matching day.
    fn time_from(&self, hour: u32, minute: u32) -> Option<(u32, u32)> {
        (hour..24)
            .filter(|&h| (self.hours >> h) & 1 == 1)
            .find_map(|h| {
                let from = if h == hour { minute } else { 0 };
                let allowed = self.minutes & MINUTES_VALID & (u64::MAX << from);
                (allowed != 0).then(|| (h, allowed.trailing_zeros()))
            })
    }
}

/// The first occurrence of `spec` strictly after `after_ms` (ms since the Unix epoch), at
/// second 0 of its minute; `None` if it never occurs (or only past what dates represent).
pub(super) fn next_after(spec: &CronSpec, after_ms: u64) -> Option<u64> {
    let start_ms = (after_ms / 60_000).checked_add(1)?.checked_mul(60_000)?;
    let start = DateTime::<Utc>::from_timestamp_millis(i64::try_from(start_ms).ok()?)?;
    let first_day = start.date_naive();
    let mut from = (start.hour(), start.minute());
    for offset in 0..=CALENDAR_CYCLE_DAYS {
        let date = first_day.checked_add_days(Days::new(offset))?;
        if spec.day_matches(date)
            && let Some((hour, minute)) = spec.time_from(from.0, from.1)
        {
            let at = date.and_hms_opt(hour, minute, 0)?.and_utc();
            return u64::try_from(at.timestamp_millis()).ok();
        }
        from = (0, 0);
    }
    None
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

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
        assert!(parse("@daily").is_err());
    }

    #[test]
    fn month_dependent_modifiers_are_refused() {
        for expression in ["0 0 L * *", "0 0 15W * *", "0 0 * * 5L", "0 0 * * 1#2"] {
            assert_eq!(
                parse(expression),
                Err("L, W and # are not supported".to_owned()),
                "{expression}"
            );
        }
    }

    #[test]
    fn an_expression_that_never_occurs_has_no_next_occurrence() {
        let february_30 = parse("0 0 30 2 *").expect("parses");
        assert_eq!(next_after(&february_30, 0), None);
        // Weekday 7 is Sunday: 2026-01-04 is the first Sunday of 2026.
        let sunday = parse("0 12 * * 7").expect("parses");
        assert_eq!(
            next_after(&sunday, 1_767_225_600_000),
            Some(1_767_528_000_000)
        );
    }

    fn field(min: u16, max: u16) -> impl Strategy<Value = String> {
        let value = min..=max;
        prop_oneof![
            Just("*".to_owned()),
            value.clone().prop_map(|v| v.to_string()),
            (value.clone(), value.clone()).prop_map(|(a, b)| format!("{}-{}", a.min(b), a.max(b))),
            (1u16..8).prop_map(|step| format!("*/{step}")),
            (value.clone(), 1u16..8).prop_map(move |(a, step)| format!("{a}-{max}/{step}")),
            (value.clone(), value).prop_map(|(a, b)| format!("{a},{b}")),
        ]
    }

    fn expression() -> impl Strategy<Value = String> {
        (
            field(0, 59),
            field(0, 23),
            prop_oneof![4 => field(1, 31), 1 => Just("?".to_owned())],
            field(1, 12),
            (any::<bool>(), field(0, 7)).prop_map(|(and, f)| if and { format!("+{f}") } else { f }),
        )
            .prop_map(|(m, h, dom, mon, dow)| format!("{m} {h} {dom} {mon} {dow}"))
    }

    proptest! {
        /// The stored spec's occurrences are croner's (the parser the expression went
        /// through), from 2000 to 2100.
        #[test]
        fn occurrences_match_the_parser_library(
            expression in expression(),
            after_ms in 946_684_800_000u64..4_102_444_800_000,
        ) {
            let Ok(spec) = parse(&expression) else {
                // `a-b/step` ranges the library refuses, say.
                return Ok(());
            };
            let cron = Cron::from_str(&expression).expect("parsed once already");
            let after = DateTime::<Utc>::from_timestamp_millis(
                i64::try_from(after_ms).expect("in range"),
            )
            .expect("in range");
            let expected = cron
                .find_next_occurrence(&after, false)
                .ok()
                .and_then(|next| u64::try_from(next.timestamp_millis()).ok());
            prop_assert_eq!(next_after(&spec, after_ms), expected, "{}", expression);
        }
    }
}
