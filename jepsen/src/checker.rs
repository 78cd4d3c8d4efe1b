//! The log checker: a pure function of a history and the nodes' final logs.
//!
//! What it checks, with the plain log's dense offsets:
//! - every acknowledged append is in the final log, at the offset it was acknowledged with
//!   (else *lost* or *two values at one offset*);
//! - no value appears twice (*duplicate*), no value appears that was never appended
//!   (*phantom*), no append that certainly failed appears (*failed append applied*);
//! - a replay (an acknowledged append re-sent under its original session and sequence) that
//!   was acknowledged names the value's one offset in the final log (*replay applied
//!   again*; a replay applied again also shows as a duplicate);
//! - the final log has no gaps;
//! - *realtime order*: an append acknowledged before another began has the lower offset;
//! - every acknowledged read returned records of the final log at their offsets, and saw
//!   every append acknowledged before it began (*stale read*: linearizability);
//! - the nodes' final logs are equal (*divergence*; their state digests are the
//!   [`digests`] checker's).
//!
//! "Outcome unknown" appends (`info`) may or may not be in the final log, at most once.
//!
//! Every checker reports its coverage: how many times it checked each property it claims.
//! A property checked zero times makes a verdict without anomalies `unknown`, never
//! `valid`.

use std::collections::{BTreeMap, HashMap};

use serde::{Deserialize, Serialize};

use crate::history::{Call, Op, OpType};

/// A node's final state: its plain log.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FinalNode {
    /// The node.
    pub node: u64,
    /// Its retained log: `(offset, value)`, in order.
    pub log: Vec<(u64, String)>,
}

/// One anomaly found.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Anomaly {
    /// Its kind: `lost`, `duplicate`, `phantom`, `failed-append-applied`,
    /// `replay-applied-again`,
    /// `two-values-at-one-offset`, `gap`, `realtime-order`, `bad-read`, `stale-read`,
    /// `divergence`.
    pub kind: String,
    /// What exactly.
    pub detail: String,
}

/// Counts of what the history holds.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Stats {
    /// Appends acknowledged.
    pub appends_ok: u64,
    /// Appends that certainly failed.
    pub appends_failed: u64,
    /// Appends with unknown outcome.
    pub appends_unknown: u64,
    /// Unknown appends found in the final log.
    pub unknown_applied: u64,
    /// Reads acknowledged.
    pub reads_ok: u64,
    /// Reads not acknowledged.
    pub reads_not_ok: u64,
    /// Records in the final log.
    pub final_records: u64,
    /// Replays answered with their first answer.
    #[serde(default)]
    pub replays_ok: u64,
    /// Replays refused (older sequence, expired session).
    #[serde(default)]
    pub replays_refused: u64,
    /// Replays with unknown outcome.
    #[serde(default)]
    pub replays_unknown: u64,
}

/// The verdict on a run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Validity {
    /// No anomaly.
    Valid,
    /// At least one anomaly.
    Invalid,
    /// The checker could not decide (no final state).
    Unknown,
}

/// The log checker's result.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LogVerdict {
    /// The verdict.
    pub validity: Validity,
    /// The anomalies, at most [`ANOMALIES_SHOWN`] of each kind.
    pub anomalies: Vec<Anomaly>,
    /// Anomalies per kind, in all.
    pub counts: BTreeMap<String, u64>,
    /// How many times each property was checked.
    pub coverage: Coverage,
    /// What the history holds.
    pub stats: Stats,
}

/// How many times each property a checker claims was checked in a run.
pub type Coverage = BTreeMap<String, u64>;

/// A verdict from what a checker found and what it covered: invalid with any anomaly;
/// else unknown if some property was checked zero times (or none is claimed); else valid.
pub(crate) fn judge(findings: &Findings, coverage: &Coverage) -> Validity {
    if !findings.counts.is_empty() {
        Validity::Invalid
    } else if coverage.is_empty() || coverage.values().any(|&times| times == 0) {
        Validity::Unknown
    } else {
        Validity::Valid
    }
}

/// What every checker's verdict tells the report.
pub trait Verdict: Serialize {
    /// The verdict.
    fn validity(&self) -> Validity;
    /// Anomalies per kind, in all.
    fn counts(&self) -> &BTreeMap<String, u64>;
    /// The anomalies listed.
    fn anomalies(&self) -> &[Anomaly];
    /// How many times each property was checked.
    fn coverage(&self) -> &Coverage;
    /// What the history holds, as JSON.
    fn stats(&self) -> serde_json::Value;
}

/// Implements [`Verdict`] for a verdict struct with the usual fields.
macro_rules! impl_verdict {
    ($($verdict:ty),*) => {$(
        impl Verdict for $verdict {
            fn validity(&self) -> Validity {
                self.validity
            }
            fn counts(&self) -> &BTreeMap<String, u64> {
                &self.counts
            }
            fn anomalies(&self) -> &[Anomaly] {
                &self.anomalies
            }
            fn coverage(&self) -> &Coverage {
                &self.coverage
            }
            fn stats(&self) -> serde_json::Value {
                serde_json::to_value(&self.stats).unwrap_or_default()
            }
        }
    )*};
}

impl_verdict!(
    LogVerdict,
    digests::DigestsVerdict,
    log_fences::LogFencesVerdict,
    timers::TimersVerdict,
    workflows::WorkflowsVerdict
);

/// Most anomalies of one kind listed in a verdict (all are counted).
pub const ANOMALIES_SHOWN: u64 = 20;

/// A completed client operation: its invocation time, completion time and result.
#[derive(Debug, Clone)]
pub(crate) struct Finished<'a> {
    pub(crate) invoked_ns: u64,
    pub(crate) completed_ns: u64,
    pub(crate) kind: OpType,
    pub(crate) call: &'a Call,
    pub(crate) invoked: &'a Call,
}

/// Pairs each client invocation with its completion (a process has one operation at a
/// time); an invocation without completion counts as `info`.
pub(crate) fn completed(history: &[Op]) -> Vec<Finished<'_>> {
    let mut open: HashMap<u64, &Op> = HashMap::new();
    let mut out = Vec::new();
    for op in history
        .iter()
        .filter(|op| op.process != crate::history::NEMESIS)
    {
        if op.kind == OpType::Invoke {
            open.insert(op.process, op);
        } else if let Some(invoke) = open.remove(&op.process) {
            out.push(Finished {
                invoked_ns: invoke.time_ns,
                completed_ns: op.time_ns,
                kind: op.kind,
                call: &op.call,
                invoked: &invoke.call,
            });
        }
    }
    for invoke in open.into_values() {
        out.push(Finished {
            invoked_ns: invoke.time_ns,
            completed_ns: u64::MAX,
            kind: OpType::Info,
            call: &invoke.call,
            invoked: &invoke.call,
        });
    }
    out
}

#[derive(Debug, Default)]
pub(crate) struct Findings {
    pub(crate) anomalies: Vec<Anomaly>,
    pub(crate) counts: BTreeMap<String, u64>,
}

impl Findings {
    pub(crate) fn add(&mut self, kind: &str, detail: String) {
        let count = self.counts.entry(kind.to_owned()).or_default();
        *count += 1;
        if *count <= ANOMALIES_SHOWN {
            self.anomalies.push(Anomaly {
                kind: kind.to_owned(),
                detail,
            });
        }
    }
}

/// For each of `queries` (sorted by time), the largest offset among `events` whose time is
/// before the query's: a sweep over both sorted lists.
fn max_before(events: &mut [(u64, u64)], queries: &[(u64, usize)]) -> Vec<Option<u64>> {
    events.sort_unstable();
    let mut out = vec![None; queries.len()];
    let mut best: Option<u64> = None;
    let mut next = 0;
    for &(time, slot) in queries {
        while next < events.len() && events[next].0 < time {
            best = Some(best.map_or(events[next].1, |b| b.max(events[next].1)));
            next += 1;
        }
        out[slot] = best;
    }
    out
}

/// Checks a log workload's history against the nodes' final states.
pub fn check_log(history: &[Op], finals: &[FinalNode]) -> LogVerdict {
    let mut findings = Findings {
        anomalies: Vec::new(),
        counts: BTreeMap::new(),
    };
    let mut stats = Stats::default();
    let Some(reference) = finals.iter().max_by_key(|f| f.log.len()) else {
        return LogVerdict {
            validity: Validity::Unknown,
            anomalies: vec![Anomaly {
                kind: "no-final-state".into(),
                detail: "no node could be read at the end".into(),
            }],
            counts: BTreeMap::new(),
            coverage: Coverage::new(),
            stats,
        };
    };
    check_nodes_agree(finals, reference, &mut findings);
    let final_log = &reference.log;
    stats.final_records = final_log.len() as u64;
    let mut at: HashMap<&str, Vec<u64>> = HashMap::new();
    for (i, (offset, value)) in final_log.iter().enumerate() {
        let expected = final_log[0].0 + i as u64;
        if *offset != expected {
            findings.add("gap", format!("offset {offset} where {expected} was next"));
        }
        at.entry(value.as_str()).or_default().push(*offset);
    }
    let value_at: HashMap<u64, &str> = final_log.iter().map(|(o, v)| (*o, v.as_str())).collect();
    for (value, offsets) in &at {
        if offsets.len() > 1 {
            findings.add("duplicate", format!("{value:?} at offsets {offsets:?}"));
        }
    }
    let ops = completed(history);
    check_appends(&ops, &at, &value_at, &mut findings, &mut stats);
    check_replays(&ops, &at, &mut findings, &mut stats);
    check_order_and_reads(&ops, &value_at, &mut findings, &mut stats);
    stats.reads_not_ok = ops
        .iter()
        .filter(|op| op.kind != OpType::Ok && matches!(op.invoked, Call::Read { .. }))
        .count() as u64;
    let coverage = Coverage::from([
        ("acknowledged appends located".to_owned(), stats.appends_ok),
        ("acknowledged reads compared".to_owned(), stats.reads_ok),
        (
            "node logs compared with the longest".to_owned(),
            finals.len() as u64 - 1,
        ),
    ]);
    LogVerdict {
        validity: judge(&findings, &coverage),
        anomalies: findings.anomalies,
        counts: findings.counts,
        coverage,
        stats,
    }
}

fn check_nodes_agree(finals: &[FinalNode], reference: &FinalNode, findings: &mut Findings) {
    for node in finals {
        let common = node.log.len().min(reference.log.len());
        if node.log[..common] != reference.log[..common] || node.log.len() != reference.log.len() {
            findings.add(
                "divergence",
                format!(
                    "node {} holds {} records, node {} {}; they differ",
                    node.node,
                    node.log.len(),
                    reference.node,
                    reference.log.len()
                ),
            );
        }
    }
}

fn check_appends(
    ops: &[Finished<'_>],
    at: &HashMap<&str, Vec<u64>>,
    value_at: &HashMap<u64, &str>,
    findings: &mut Findings,
    stats: &mut Stats,
) {
    let mut invoked: HashMap<&str, OpType> = HashMap::new();
    let mut acked_offsets: HashMap<u64, &str> = HashMap::new();
    for op in ops {
        let Call::Append { value, .. } = op.invoked else {
            continue;
        };
        invoked.insert(value.as_str(), op.kind);
        let found = at.get(value.as_str());
        match (op.kind, op.call) {
            (OpType::Ok, Call::Append { offset, .. }) => {
                stats.appends_ok += 1;
                let Some(offset) = offset else {
                    findings.add(
                        "bad-ack",
                        format!("append {value:?} acknowledged without an offset"),
                    );
                    continue;
                };
                if let Some(other) = acked_offsets.insert(*offset, value.as_str()) {
                    findings.add(
                        "two-values-at-one-offset",
                        format!("{other:?} and {value:?} both acknowledged at {offset}"),
                    );
                }
                match (found, value_at.get(offset)) {
                    (None, _) => findings.add("lost", format!("{value:?} acknowledged at offset {offset} is not in the final log")),
                    (Some(_), Some(v)) if *v == value.as_str() => {}
                    (Some(offsets), held) => findings.add(
                        "two-values-at-one-offset",
                        format!("{value:?} acknowledged at {offset} but found at {offsets:?}; {offset} holds {held:?}"),
                    ),
                }
            }
            (OpType::Fail, _) => {
                stats.appends_failed += 1;
                if found.is_some() {
                    findings.add(
                        "failed-append-applied",
                        format!("{value:?} was refused yet is in the final log"),
                    );
                }
            }
            _ => {
                stats.appends_unknown += 1;
                if found.is_some() {
                    stats.unknown_applied += 1;
                }
            }
        }
    }
    for value in at.keys() {
        if !invoked.contains_key(value) {
            findings.add(
                "phantom",
                format!("{value:?} is in the final log but was never appended"),
            );
        }
    }
}

fn check_replays(
    ops: &[Finished<'_>],
    at: &HashMap<&str, Vec<u64>>,
    findings: &mut Findings,
    stats: &mut Stats,
) {
    for op in ops {
        let Call::Replay { value, .. } = op.invoked else {
            continue;
        };
        match (op.kind, op.call) {
            (OpType::Ok, Call::Replay { offset, .. }) => {
                stats.replays_ok += 1;
                let found = at.get(value.as_str()).map_or(&[][..], Vec::as_slice);
                if offset.is_none_or(|offset| found != [offset]) {
                    findings.add(
                        "replay-applied-again",
                        format!(
                            "a replay of {value:?} was acknowledged at {offset:?}; the final log holds it at {found:?}"
                        ),
                    );
                }
            }
            (OpType::Fail, _) => stats.replays_refused += 1,
            _ => stats.replays_unknown += 1,
        }
    }
}

fn check_order_and_reads(
    ops: &[Finished<'_>],
    value_at: &HashMap<u64, &str>,
    findings: &mut Findings,
    stats: &mut Stats,
) {
    // Acknowledged appends: (completion time, offset).
    let mut acked: Vec<(u64, u64)> = ops
        .iter()
        .filter_map(|op| match (op.kind, op.call) {
            (
                OpType::Ok,
                Call::Append {
                    offset: Some(o), ..
                },
            ) => Some((op.completed_ns, *o)),
            _ => None,
        })
        .collect();
    // Queries: every acknowledged append and read, by invocation time.
    let mut queries: Vec<(u64, usize)> = Vec::new();
    let relevant: Vec<&Finished<'_>> = ops
        .iter()
        .filter(|op| {
            op.kind == OpType::Ok
                && matches!(
                    op.call,
                    Call::Append {
                        offset: Some(_),
                        ..
                    } | Call::Read { .. }
                )
        })
        .collect();
    for (slot, op) in relevant.iter().enumerate() {
        queries.push((op.invoked_ns, slot));
    }
    queries.sort_unstable();
    let before = max_before(&mut acked, &queries);
    for (op, seen_before) in relevant.iter().zip(before) {
        match op.call {
            Call::Append {
                value,
                offset: Some(offset),
            } => {
                if let Some(earlier) = seen_before
                    && earlier >= *offset
                {
                    findings.add(
                        "realtime-order",
                        format!("{value:?} got offset {offset}, yet offset {earlier} was acknowledged before it began"),
                    );
                }
            }
            Call::Read {
                node,
                from,
                records,
                next_offset,
            } => {
                stats.reads_ok += 1;
                check_read(
                    *node,
                    *from,
                    records,
                    *next_offset,
                    seen_before,
                    value_at,
                    findings,
                );
            }
            _ => {}
        }
    }
}

fn check_read(
    node: u64,
    from: u64,
    records: &[(u64, String)],
    next_offset: Option<u64>,
    seen_before: Option<u64>,
    value_at: &HashMap<u64, &str>,
    findings: &mut Findings,
) {
    for (i, (offset, value)) in records.iter().enumerate() {
        if *offset != from + i as u64 {
            findings.add(
                "bad-read",
                format!(
                    "a read of node {node} from {from} returned offset {offset} at position {i}"
                ),
            );
        }
        if value_at.get(offset) != Some(&value.as_str()) {
            findings.add(
                "bad-read",
                format!(
                    "a read of node {node} saw {value:?} at {offset}; the final log holds {:?}",
                    value_at.get(offset)
                ),
            );
        }
    }
    let next = next_offset.unwrap_or(from + records.len() as u64);
    if let Some(earlier) = seen_before
        && next <= earlier
    {
        findings.add(
            "stale-read",
            format!("a read of node {node} ended at offset {next}, yet offset {earlier} was acknowledged before it began"),
        );
    }
}

pub mod digests;
pub mod log_fences;
pub mod timers;
pub mod workflows;

#[cfg(test)]
mod tests;
