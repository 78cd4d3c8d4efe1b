//! The timers checker: a pure function of a history and the timers' final records.
//!
//! - every acknowledged timer has exactly one committed fire by the end (*lost-timer* if it
//!   never fired); a timer whose scheduling certainly failed does not exist
//!   (*failed-timer-scheduled*);
//! - every delivery a node made carries the committed fire's token `(term, index)`; a
//!   repeat of that token is fine, any other token never committed (*zombie-fire*);
//! - never early: the first delivery of an acknowledged relative timer arrives no sooner
//!   than its scheduling was invoked plus its delay, on the harness's clock, with no
//!   tolerance; and the committed fire is stamped no sooner than its due time (*early-fire*).

use std::collections::{BTreeMap, HashMap};

use serde::{Deserialize, Serialize};

use super::{Anomaly, Findings, Validity, completed};
use crate::history::{Call, Op, OpType};

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
    /// What the history holds.
    pub stats: TimerStats,
}

/// Checks a timers workload's history against the final records (`name` → record; a
/// name missing from it does not exist in the cluster).
pub fn check_timers(history: &[Op], finals: &BTreeMap<String, FinalTimer>) -> TimersVerdict {
    let mut findings = Findings::default();
    let mut stats = TimerStats::default();
    let first_delivery = check_deliveries(history, finals, &mut findings, &mut stats);
    check_schedules(history, finals, &first_delivery, &mut findings, &mut stats);
    let validity = if findings.anomalies.is_empty() {
        Validity::Valid
    } else {
        Validity::Invalid
    };
    TimersVerdict {
        validity,
        anomalies: findings.anomalies,
        counts: findings.counts,
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

/// Checks every schedule against its final record and its first delivery.
fn check_schedules(
    history: &[Op],
    finals: &BTreeMap<String, FinalTimer>,
    first_delivery: &HashMap<&str, u64>,
    findings: &mut Findings,
    stats: &mut TimerStats,
) {
    for op in completed(history) {
        let Call::Schedule { name, delay_ms, .. } = op.invoked else {
            continue;
        };
        let last = finals.get(name);
        match op.kind {
            OpType::Ok => {
                stats.scheduled_ok += 1;
                match last {
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
                if let Some(&delivered) = first_delivery.get(name.as_str()) {
                    let earliest = op.invoked_ns + delay_ms * 1_000_000;
                    if delivered < earliest {
                        findings.add(
                            "early-fire",
                            format!("{name:?} delivered {} µs before its delay since the schedule began", (earliest - delivered) / 1_000),
                        );
                    } else {
                        stats.max_lateness_ms = stats
                            .max_lateness_ms
                            .max((delivered - earliest) / 1_000_000);
                    }
                }
            }
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
        let verdict = check_timers(&history, &fired(9));
        assert_eq!(verdict.validity, Validity::Valid, "{verdict:?}");
        assert_eq!(verdict.stats.deliveries, 2);
        assert_eq!(verdict.stats.max_lateness_ms, 1);
    }

    #[test]
    fn lost_early_and_zombie_fires_are_found() {
        let lost = check_timers(&scheduled(OpType::Ok), &BTreeMap::new());
        assert_eq!(kinds(&lost), ["lost-timer"]);
        let mut early = scheduled(OpType::Ok);
        early.push(op(99 * MS, 1_001, OpType::Ok, fire("t", 9)));
        assert_eq!(kinds(&check_timers(&early, &fired(9))), ["early-fire"]);
        let mut zombie = scheduled(OpType::Ok);
        zombie.push(op(150 * MS, 1_003, OpType::Ok, fire("t", 8)));
        assert_eq!(kinds(&check_timers(&zombie, &fired(9))), ["zombie-fire"]);
        let mut stamped_early = fired(9);
        stamped_early.get_mut("t").expect("t").fired_ms = 1_000;
        assert_eq!(
            kinds(&check_timers(&scheduled(OpType::Ok), &stamped_early)),
            ["early-fire"]
        );
    }

    #[test]
    fn failed_schedules_must_not_exist_and_unknown_ones_may() {
        assert_eq!(
            kinds(&check_timers(&scheduled(OpType::Fail), &fired(9))),
            ["failed-timer-scheduled"]
        );
        assert_eq!(
            check_timers(&scheduled(OpType::Fail), &BTreeMap::new()).validity,
            Validity::Valid
        );
        assert_eq!(
            check_timers(&scheduled(OpType::Info), &BTreeMap::new()).validity,
            Validity::Valid
        );
        assert_eq!(
            check_timers(&scheduled(OpType::Info), &fired(9)).validity,
            Validity::Valid
        );
    }
}
