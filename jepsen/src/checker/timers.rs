//! The timers checker: a pure function of a history and the timers' final records.
//!
//! - every acknowledged timer has exactly one committed fire by the end (*lost-timer* if it
//!   never fired); a timer whose scheduling certainly failed does not exist
//!   (*failed-timer-scheduled*);
//! - every delivery a node made carries the committed fire's token `(term, index)`; a
//!   repeat of that token is fine, any other token never committed (*zombie-fire*);
//! - never early: the first delivery of an acknowledged relative timer arrives no sooner
//!   than its scheduling was invoked plus its delay, on the harness's clock, with no
//!   tolerance; an absolute timer (due at a wall-clock time the harness chose, its delay
//!   after the harness's wall clock at the invocation) no sooner than that less the nodes'
//!   `max_clock_skew` — checked only when no node's clock was off by more than that between
//!   its scheduling and its delivery (a clock fault's recorded offset; healed offsets count
//!   until [`CLOCK_HEAL_LAG`] later); and the committed fire is stamped no sooner than its
//!   due time (*early-fire*).
//!
//! Coverage: acknowledged timers checked for their fire, deliveries whose token was checked,
//! and first deliveries checked never early. A fire no watcher saw (a lagging watcher drops
//! deliveries) is counted apart (`fired_unobserved`): for it only the stamp is checked.

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::{Anomaly, Coverage, Findings, Validity, completed, judge};
use crate::history::{Call, Op, OpType};

/// How long a node may still run on a healed clock offset: libfaketime re-reads its offset
/// file at most once a second.
pub const CLOCK_HEAL_LAG: Duration = Duration::from_secs(2);

/// A timer's final record, read from the cluster after the run.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FinalTimer {
    /// Whether it fired.
    pub fired: bool,
    /// Its due time by the leader's clock.
    pub due_ms: u64,
    /// The fire's token: term.
    pub term: u64,
    /// The fire's token: index.
    pub index: u64,
    /// The fire's stamp.
    pub fired_ms: u64,
}

/// Counts of what the history holds.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TimerStats {
    /// Schedules acknowledged.
    pub scheduled_ok: u64,
    /// Schedules that certainly failed.
    pub scheduled_failed: u64,
    /// Schedules with unknown outcome.
    pub scheduled_unknown: u64,
    /// Timers fired by the end.
    pub fired: u64,
    /// Deliveries seen by the watchers.
    pub deliveries: u64,
    /// Latest first delivery after due, in ms (a lateness bound, harness clock).
    pub max_lateness_ms: u64,
    /// Acknowledged absolute timers (the rest are relative).
    pub absolute_ok: u64,
    /// Absolute timers whose earliness was not checked: a node's clock was off by more than
    /// the tolerance while they were pending.
    pub absolute_unchecked: u64,
    /// Acknowledged timers whose first delivery a watcher saw, checked never early.
    pub early_checked: u64,
    /// Acknowledged timers that fired but whose delivery no watcher saw (a lagging watcher
    /// drops deliveries): their earliness rests on the committed stamp alone.
    pub fired_unobserved: u64,
}

/// The timers checker's result.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TimersVerdict {
    /// The verdict.
    pub validity: Validity,
    /// The anomalies, at most [`super::ANOMALIES_SHOWN`] of each kind.
    pub anomalies: Vec<Anomaly>,
    /// Anomalies per kind.
    pub counts: BTreeMap<String, u64>,
    /// How many times each property was checked.
    pub coverage: Coverage,
    /// What the history holds.
    pub stats: TimerStats,
}

/// Checks a timers workload's history against the final records (`name` → record; a
/// name missing from it does not exist in the cluster); `max_clock_skew` is the nodes'
/// setting, the tolerance of absolute timers.
pub fn check_timers(
    history: &[Op],
    finals: &BTreeMap<String, FinalTimer>,
    max_clock_skew: Duration,
) -> TimersVerdict {
    let mut findings = Findings::default();
    let mut stats = TimerStats::default();
    let first_delivery = check_deliveries(history, finals, &mut findings, &mut stats);
    let skewed = clock_beyond(history, max_clock_skew);
    let schedules = Schedules {
        finals,
        first_delivery: &first_delivery,
        skewed: &skewed,
        tolerance_ns: nanos(max_clock_skew),
    };
    schedules.check(history, &mut findings, &mut stats);
    let coverage = Coverage::from([
        (
            "acknowledged timers checked for one committed fire".to_owned(),
            stats.scheduled_ok,
        ),
        ("deliveries token-checked".to_owned(), stats.deliveries),
        (
            "first deliveries checked never early".to_owned(),
            stats.early_checked,
        ),
    ]);
    TimersVerdict {
        validity: judge(&findings, &coverage),
        anomalies: findings.anomalies,
        counts: findings.counts,
        coverage,
        stats,
    }
}

/// Checks every delivery's token; returns each name's first delivery time.
fn check_deliveries<'a>(
    history: &'a [Op],
    finals: &BTreeMap<String, FinalTimer>,
    findings: &mut Findings,
    stats: &mut TimerStats,
) -> HashMap<&'a str, u64> {
    let mut first_delivery: HashMap<&str, u64> = HashMap::new();
    for op in history {
        let Call::Fire {
            node,
            name,
            term,
            index,
        } = &op.call
        else {
            continue;
        };
        stats.deliveries += 1;
        let committed = finals
            .get(name)
            .filter(|f| f.fired)
            .map(|f| (f.term, f.index));
        if committed != Some((*term, *index)) {
            findings.add(
                "zombie-fire",
                format!("node {node} delivered {name:?} with token ({term}, {index}); the committed fire is {committed:?}"),
            );
        }
        let first = first_delivery.entry(name.as_str()).or_insert(op.time_ns);
        *first = (*first).min(op.time_ns);
    }
    first_delivery
}

fn nanos(duration: Duration) -> u64 {
    u64::try_from(duration.as_nanos()).unwrap_or(u64::MAX)
}

/// The periods (harness clock, ns) when a clock fault had some node's wall clock off by
/// more than `tolerance`, each extended by [`CLOCK_HEAL_LAG`]; one never healed lasts.
fn clock_beyond(history: &[Op], tolerance: Duration) -> Vec<(u64, u64)> {
    let tolerance_ms = u64::try_from(tolerance.as_millis()).unwrap_or(u64::MAX);
    let mut periods = Vec::new();
    let mut open = None;
    for op in history {
        let Call::Fault {
            clock_offset_ms: Some(offset),
            ..
        } = op.call
        else {
            continue;
        };
        if offset <= tolerance_ms {
            continue;
        }
        if op.kind == OpType::Invoke {
            open = Some(op.time_ns);
        } else if let Some(start) = open.take() {
            periods.push((start, op.time_ns.saturating_add(nanos(CLOCK_HEAL_LAG))));
        }
    }
    if let Some(start) = open {
        periods.push((start, u64::MAX));
    }
    periods
}

/// What checking the schedules needs.
struct Schedules<'a> {
    finals: &'a BTreeMap<String, FinalTimer>,
    first_delivery: &'a HashMap<&'a str, u64>,
    /// Periods when absolute timers cannot be held to the tolerance.
    skewed: &'a [(u64, u64)],
    /// How early an absolute timer may be delivered.
    tolerance_ns: u64,
}

impl Schedules<'_> {
    /// Checks every schedule against its final record and its first delivery.
    fn check(&self, history: &[Op], findings: &mut Findings, stats: &mut TimerStats) {
        for op in completed(history) {
            let Call::Schedule { name, .. } = op.invoked else {
                continue;
            };
            let last = self.finals.get(name);
            match op.kind {
                OpType::Ok => self.check_acknowledged(op.invoked, op.invoked_ns, findings, stats),
                OpType::Fail => {
                    stats.scheduled_failed += 1;
                    if last.is_some() {
                        findings.add(
                            "failed-timer-scheduled",
                            format!("{name:?} was refused yet exists"),
                        );
                    }
                }
                OpType::Info | OpType::Invoke => {
                    stats.scheduled_unknown += 1;
                    if last.is_some_and(|r| r.fired) {
                        stats.fired += 1;
                    }
                }
            }
        }
    }

    /// An acknowledged schedule (`invoked` at `invoked_ns`): fired once, never early.
    fn check_acknowledged(
        &self,
        invoked: &Call,
        invoked_ns: u64,
        findings: &mut Findings,
        stats: &mut TimerStats,
    ) {
        let Call::Schedule {
            name,
            delay_ms,
            at_ms,
            ..
        } = invoked
        else {
            return;
        };
        stats.scheduled_ok += 1;
        stats.absolute_ok += u64::from(at_ms.is_some());
        match self.finals.get(name) {
            Some(record) if record.fired => {
                stats.fired += 1;
                if record.fired_ms < record.due_ms {
                    findings.add(
                        "early-fire",
                        format!(
                            "{name:?} fired at {} before its due time {}",
                            record.fired_ms, record.due_ms
                        ),
                    );
                }
            }
            _ => findings.add(
                "lost-timer",
                format!("{name:?} was acknowledged but never fired"),
            ),
        }
        let fired = self.finals.get(name).is_some_and(|record| record.fired);
        let Some(&delivered) = self.first_delivery.get(name.as_str()) else {
            stats.fired_unobserved += u64::from(fired);
            return;
        };
        let earliest = invoked_ns + delay_ms * 1_000_000;
        stats.max_lateness_ms = stats
            .max_lateness_ms
            .max(delivered.saturating_sub(earliest) / 1_000_000);
        let tolerance = if at_ms.is_some() {
            self.tolerance(invoked_ns, delivered, stats)
        } else {
            Some(0)
        };
        stats.early_checked += u64::from(tolerance.is_some());
        if let Some(tolerance) = tolerance
            && delivered + tolerance < earliest
        {
            findings.add(
                "early-fire",
                format!(
                    "{name:?} delivered {} µs before its delay since the schedule began \
                     (tolerance {} ms)",
                    (earliest - delivered) / 1_000,
                    tolerance / 1_000_000
                ),
            );
        }
    }

    /// How early an absolute timer pending from `invoked` to `delivered` may be delivered;
    /// `None` (counted as unchecked) when a clock fault beyond the tolerance overlapped.
    fn tolerance(&self, invoked: u64, delivered: u64, stats: &mut TimerStats) -> Option<u64> {
        let overlapped = self
            .skewed
            .iter()
            .any(|&(start, end)| start <= delivered && invoked <= end);
        if overlapped {
            stats.absolute_unchecked += 1;
            None
        } else {
            Some(self.tolerance_ns)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn op(time_ns: u64, process: u64, kind: OpType, call: Call) -> Op {
        Op {
            index: 0,
            time_ns,
            process,
            kind,
            call,
            error: None,
        }
    }

    fn schedule(name: &str, delay_ms: u64) -> Call {
        Call::Schedule {
            name: name.into(),
            delay_ms,
            at_ms: None,
            due_ms: None,
        }
    }

    fn fire(name: &str, index: u64) -> Call {
        Call::Fire {
            node: 1,
            name: name.into(),
            term: 2,
            index,
        }
    }

    const MS: u64 = 1_000_000;
    /// The nodes' `max_clock_skew`.
    const SKEW: Duration = Duration::from_millis(500);

    /// `t` scheduled at 0 ms with a 100 ms delay, acknowledged at 5 ms.
    fn scheduled(kind: OpType) -> Vec<Op> {
        vec![
            op(0, 1, OpType::Invoke, schedule("t", 100)),
            op(5 * MS, 1, kind, schedule("t", 100)),
        ]
    }

    fn fired(index: u64) -> BTreeMap<String, FinalTimer> {
        [(
            "t".to_owned(),
            FinalTimer {
                fired: true,
                due_ms: 1_100,
                term: 2,
                index,
                fired_ms: 1_101,
            },
        )]
        .into()
    }

    fn kinds(verdict: &TimersVerdict) -> Vec<&str> {
        verdict.counts.keys().map(String::as_str).collect()
    }

    #[test]
    fn a_timer_fired_once_on_time_with_repeated_deliveries_is_valid() {
        let mut history = scheduled(OpType::Ok);
        history.push(op(101 * MS, 1_001, OpType::Ok, fire("t", 9)));
        history.push(op(103 * MS, 1_002, OpType::Ok, fire("t", 9)));
        let verdict = check_timers(&history, &fired(9), SKEW);
        assert_eq!(verdict.validity, Validity::Valid, "{verdict:?}");
        assert_eq!(verdict.stats.deliveries, 2);
        assert_eq!(verdict.stats.max_lateness_ms, 1);
    }

    #[test]
    fn lost_early_and_zombie_fires_are_found() {
        let lost = check_timers(&scheduled(OpType::Ok), &BTreeMap::new(), SKEW);
        assert_eq!(kinds(&lost), ["lost-timer"]);
        let mut early = scheduled(OpType::Ok);
        early.push(op(99 * MS, 1_001, OpType::Ok, fire("t", 9)));
        assert_eq!(
            kinds(&check_timers(&early, &fired(9), SKEW)),
            ["early-fire"]
        );
        let mut zombie = scheduled(OpType::Ok);
        zombie.push(op(150 * MS, 1_003, OpType::Ok, fire("t", 8)));
        assert_eq!(
            kinds(&check_timers(&zombie, &fired(9), SKEW)),
            ["zombie-fire"]
        );
        let mut stamped_early = fired(9);
        stamped_early.get_mut("t").expect("t").fired_ms = 1_000;
        assert_eq!(
            kinds(&check_timers(&scheduled(OpType::Ok), &stamped_early, SKEW)),
            ["early-fire"]
        );
    }

    #[test]
    fn failed_schedules_must_not_exist_and_unknown_ones_may() {
        assert_eq!(
            kinds(&check_timers(&scheduled(OpType::Fail), &fired(9), SKEW)),
            ["failed-timer-scheduled"]
        );
        assert!(
            check_timers(&scheduled(OpType::Fail), &BTreeMap::new(), SKEW)
                .counts
                .is_empty()
        );
        // No timer was acknowledged, so nothing was checked: unknown, not valid.
        let unknown = check_timers(&scheduled(OpType::Info), &BTreeMap::new(), SKEW);
        assert!(unknown.counts.is_empty());
        assert_eq!(unknown.validity, Validity::Unknown);
        assert!(
            check_timers(&scheduled(OpType::Info), &fired(9), SKEW)
                .counts
                .is_empty()
        );
    }

    /// `t` scheduled at 0 ms as an absolute timer 1000 ms ahead, acknowledged at 5 ms, first
    /// delivered at `delivered_ms`; `clock` is a clock fault (offset, from, to in ms).
    fn absolute(delivered_ms: u64, clock: Option<(u64, u64, u64)>) -> TimersVerdict {
        let call = Call::Schedule {
            name: "t".into(),
            delay_ms: 1_000,
            at_ms: Some(1_700_000_001_000),
            due_ms: None,
        };
        let mut history = vec![
            op(0, 1, OpType::Invoke, call.clone()),
            op(5 * MS, 1, OpType::Ok, call),
            op(delivered_ms * MS, 1_001, OpType::Ok, fire("t", 9)),
        ];
        if let Some((offset, from, to)) = clock {
            let fault = Call::Fault {
                fault: "clock".into(),
                detail: String::new(),
                clock_offset_ms: Some(offset),
            };
            history.push(op(from * MS, 0, OpType::Invoke, fault.clone()));
            history.push(op(to * MS, 0, OpType::Ok, fault));
        }
        history.sort_by_key(|op| op.time_ns);
        check_timers(&history, &fired(9), SKEW)
    }

    #[test]
    fn an_absolute_timer_may_be_early_by_the_clock_skew_tolerance_only() {
        let within = absolute(700, None);
        assert_eq!(within.validity, Validity::Valid, "{within:?}");
        assert_eq!(within.stats.absolute_ok, 1);
        assert_eq!(within.stats.absolute_unchecked, 0);
        assert_eq!(kinds(&absolute(400, None)), ["early-fire"]);
        // A small skew (within the tolerance) does not excuse more.
        assert_eq!(kinds(&absolute(400, Some((300, 100, 900)))), ["early-fire"]);
    }

    #[test]
    fn a_clock_jump_beyond_the_tolerance_leaves_absolute_timers_unchecked_meanwhile() {
        let jumped = absolute(100, Some((3_000, 50, 80)));
        assert!(jumped.counts.is_empty(), "{jumped:?}");
        assert_eq!(jumped.stats.absolute_unchecked, 1);
        // Its only timer's earliness went unchecked: the verdict cannot be valid.
        assert_eq!(jumped.coverage["first deliveries checked never early"], 0);
        assert_eq!(jumped.validity, Validity::Unknown);
        // A healed offset lingers for CLOCK_HEAL_LAG.
        assert_eq!(
            absolute(100, Some((3_000, 10, 20)))
                .stats
                .absolute_unchecked,
            1
        );
        // A jump that begins after the delivery excuses nothing.
        assert_eq!(
            kinds(&absolute(400, Some((3_000, 500, 600)))),
            ["early-fire"]
        );
    }

    #[test]
    fn a_relative_timer_has_no_tolerance_even_when_clocks_jump() {
        let mut history = scheduled(OpType::Ok);
        let fault = Call::Fault {
            fault: "clock".into(),
            detail: String::new(),
            clock_offset_ms: Some(5_000),
        };
        history.insert(0, op(0, 0, OpType::Invoke, fault.clone()));
        history.push(op(99 * MS, 1_001, OpType::Ok, fire("t", 9)));
        history.push(op(200 * MS, 0, OpType::Ok, fault));
        assert_eq!(
            kinds(&check_timers(&history, &fired(9), SKEW)),
            ["early-fire"]
        );
    }
}
