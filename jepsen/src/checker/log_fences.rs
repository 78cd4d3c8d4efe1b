//! The log-fences checker: every journal entry a workflow ends with was recorded by the run
//! that held the workflow's fence when the record committed — judged from the committed
//! Raft log, not from the state machine's bookkeeping.
//!
//! After a run the harness stops the nodes and reads each node's whole log: the ranges it
//! copied before purging them (`keel_raft::purged_log`) and the live log. The checker
//! - merges the nodes' entries up to the committed index and checks that no index holds two
//!   different entries (*log-divergence*);
//! - decodes the scheduler's commands itself and replays only the rules that grant fences:
//!   a workflow's first `Start` of a declared kind (`DeclareKinds`) grants it the start's
//!   index, a `Claim` of a workflow that exists and has not finished grants the claim's
//!   index, a `Call` under the parent's current fence of a declared kind grants the child
//!   `<parent>/<seq>`, if it does not exist, the call's index; a `Finish` under the current
//!   fence or a `Cancel` ends the workflow and its descendants. Every command that records a
//!   journal entry (`Step`, `Sleep`, `WaitSignal`, `Call`) is noted with its fence and the
//!   fence current at its index;
//! - for every journal entry of every completed workflow (its position and the fence of the
//!   run that created it, as the final read reports them), requires a recording command at
//!   that position carrying that fence, committed while that fence was current. Records of
//!   a stale fence are expected in the log (a run that lost its workflow keeps proposing
//!   until it learns so) and must have been refused: an entry that only such records could
//!   have created is *stale-run-recorded*; an entry no logged command recorded at all is
//!   *unrecorded-entry*.
//!
//! A committed index no node holds leaves the verdict `unknown` and no entry is judged: the
//! grant it may hold is unknown. Not replayed: refusals for names, sizes and reused ids after `Expire` (the
//! workloads' ids are unique and valid by construction).

use std::collections::{BTreeMap, HashMap, HashSet};

use keel_raft::multiplex::AppTag;
use keel_raft::purged_log::{LoggedEntry, LoggedPayload};
use keel_scheduler::{Command, Stamped};
use serde::{Deserialize, Serialize};

use super::workflows::FinalWorkflow;
use super::{Anomaly, Coverage, Findings, Validity, judge};

/// Counts of what the logs held.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct LogFenceStats {
    /// Nodes whose log was read.
    pub nodes_read: u64,
    /// The committed index the logs were merged up to.
    pub committed_index: u64,
    /// Committed indexes some node held.
    pub indexes_merged: u64,
    /// Committed indexes no node held (a range every holder lost; unchecked).
    pub indexes_missing: u64,
    /// Scheduler commands decoded.
    pub commands: u64,
    /// Scheduler commands that did not decode (refused as malformed when applied).
    pub undecodable: u64,
    /// Fence grants replayed (starts, claims, child calls).
    pub grants: u64,
    /// Recording commands whose fence was not current when they committed.
    pub stale_records: u64,
    /// Journal entries no recording command in the log matched.
    pub entries_without_record: u64,
    /// Nodes whose live log did not open (their copies of purged ranges still count).
    pub live_logs_unreadable: u64,
}

/// The log-fences checker's verdict.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LogFencesVerdict {
    /// The verdict.
    pub validity: Validity,
    /// The anomalies, at most [`super::ANOMALIES_SHOWN`] of each kind.
    pub anomalies: Vec<Anomaly>,
    /// Anomalies per kind.
    pub counts: BTreeMap<String, u64>,
    /// How many times each property was checked.
    pub coverage: Coverage,
    /// What the logs held.
    pub stats: LogFenceStats,
}

/// A command that records journal entry `seq` of `workflow` under `fence`, committed while
/// `current` was the workflow's fence.
#[derive(Debug, Clone, Copy)]
struct Recorded {
    fence: u64,
    current: Option<u64>,
}

/// The fences the log grants, replayed in index order.
#[derive(Default)]
struct FenceModel {
    declared: HashSet<String>,
    fence: HashMap<String, u64>,
    finished: HashSet<String>,
    /// Recording commands by `(workflow, seq)`.
    records: HashMap<(String, u32), Vec<Recorded>>,
}

impl FenceModel {
    /// The workflow's fence if it runs.
    fn current(&self, workflow: &str) -> Option<u64> {
        self.fence
            .get(workflow)
            .copied()
            .filter(|_| !self.finished.contains(workflow))
    }

    fn grant(&mut self, workflow: String, index: u64, stats: &mut LogFenceStats) {
        stats.grants += 1;
        self.fence.insert(workflow, index);
    }

    /// Ends `workflow` and every descendant (`<workflow>/…`), as ending a workflow cancels
    /// its running children.
    fn end(&mut self, workflow: &str) {
        let children = format!("{workflow}/");
        let ended: Vec<String> = self
            .fence
            .keys()
            .filter(|id| *id == workflow || id.starts_with(&children))
            .cloned()
            .collect();
        self.finished.extend(ended);
    }

    fn record(&mut self, workflow: &str, seq: u32, fence: u64, stats: &mut LogFenceStats) {
        let current = self.current(workflow);
        stats.stale_records += u64::from(current != Some(fence));
        self.records
            .entry((workflow.to_owned(), seq))
            .or_default()
            .push(Recorded { fence, current });
    }

    fn apply(&mut self, index: u64, command: Command, stats: &mut LogFenceStats) {
        match command {
            Command::DeclareKinds { kinds } => {
                self.declared
                    .extend(kinds.into_iter().map(|(kind, _)| kind));
            }
            Command::Start { id, kind, .. }
                if !self.fence.contains_key(&id) && self.declared.contains(&kind) =>
            {
                self.grant(id, index, stats);
            }
            Command::Claim { workflow, .. } if self.current(&workflow).is_some() => {
                self.grant(workflow, index, stats);
            }
            Command::Call {
                workflow,
                fence,
                seq,
                kind,
                ..
            } => {
                let child = format!("{workflow}/{seq}");
                if self.current(&workflow) == Some(fence)
                    && self.declared.contains(&kind)
                    && !self.fence.contains_key(&child)
                {
                    self.grant(child, index, stats);
                }
                self.record(&workflow, seq, fence, stats);
            }
            Command::Step {
                workflow,
                fence,
                seq,
                ..
            }
            | Command::Sleep {
                workflow,
                fence,
                seq,
                ..
            }
            | Command::WaitSignal {
                workflow,
                fence,
                seq,
                ..
            } => self.record(&workflow, seq, fence, stats),
            Command::Finish {
                workflow, fence, ..
            } if self.current(&workflow) == Some(fence) => self.end(&workflow),
            Command::Cancel { workflow, .. } => self.end(&workflow),
            _ => {}
        }
    }
}

/// The scheduler command a Raft command carries, decoded by the harness itself.
fn scheduler_command(command: &[u8]) -> Option<Result<Command, ()>> {
    let (&tag, body) = command.split_first()?;
    if tag != AppTag::Extension as u8 {
        return None;
    }
    let mut aligned = rkyv::util::AlignedVec::<16>::with_capacity(body.len());
    aligned.extend_from_slice(body);
    Some(
        rkyv::from_bytes::<Stamped, rkyv::rancor::Error>(&aligned)
            .map(|stamped| stamped.command)
            .map_err(|_| ()),
    )
}

/// Merges `logs` (per node) up to `committed`: the entry at each index, with the anomalies
/// of indexes two nodes hold differently.
fn merge<'a>(
    logs: &'a [(u64, Vec<LoggedEntry>)],
    committed: u64,
    findings: &mut Findings,
    compared: &mut u64,
) -> BTreeMap<u64, (u64, &'a LoggedEntry)> {
    let mut merged: BTreeMap<u64, (u64, &LoggedEntry)> = BTreeMap::new();
    for (node, entries) in logs {
        for entry in entries
            .iter()
            .filter(|e| e.index >= 1 && e.index <= committed)
        {
            match merged.get(&entry.index) {
                None => {
                    merged.insert(entry.index, (*node, entry));
                }
                Some((other, held)) if other != node => {
                    *compared += 1;
                    if *held != entry {
                        findings.add(
                            "log-divergence",
                            format!(
                                "index {}: node {other} holds term {} {:?}, node {node} term {} {:?}",
                                entry.index,
                                held.term,
                                kind(&held.payload),
                                entry.term,
                                kind(&entry.payload)
                            ),
                        );
                    }
                }
                Some(_) => {}
            }
        }
    }
    merged
}

fn kind(payload: &LoggedPayload) -> &'static str {
    match payload {
        LoggedPayload::Blank => "blank",
        LoggedPayload::Normal { .. } => "normal",
        LoggedPayload::Membership(_) => "membership",
    }
}

/// Matches every journal entry of every completed workflow in `finals` to a command of
/// the log that recorded it under a current fence; returns how many were matched.
fn check_entries(
    model: &FenceModel,
    finals: &BTreeMap<String, FinalWorkflow>,
    stats: &mut LogFenceStats,
    findings: &mut Findings,
) -> u64 {
    let mut entries_checked = 0;
    for (id, workflow) in finals.iter().filter(|(_, w)| w.status == "completed") {
        for entry in &workflow.journal {
            let Some(records) = model.records.get(&(id.clone(), entry.seq)) else {
                stats.entries_without_record += 1;
                findings.add(
                    "unrecorded-entry",
                    format!(
                        "{id}: entry {} (fence {}) was recorded by no command in the \
                         committed log",
                        entry.seq, entry.fence
                    ),
                );
                continue;
            };
            entries_checked += 1;
            let with_fence: Vec<&Recorded> =
                records.iter().filter(|r| r.fence == entry.fence).collect();
            if !with_fence.iter().any(|r| r.current == Some(entry.fence)) {
                findings.add(
                    "stale-run-recorded",
                    format!(
                        "{id}: entry {} carries fence {}, but no command recording it under that \
                         fence committed while the fence was current (fences current then: {:?})",
                        entry.seq,
                        entry.fence,
                        with_fence.iter().map(|r| r.current).collect::<Vec<_>>()
                    ),
                );
            }
        }
    }
    entries_checked
}

/// Checks the fences of `finals`' journals against the merged committed log of `logs`
/// (each node's entries, copies of purged ranges included) up to `committed`.
pub fn check_log_fences(
    logs: &[(u64, Vec<LoggedEntry>)],
    committed: u64,
    finals: &BTreeMap<String, FinalWorkflow>,
) -> LogFencesVerdict {
    let mut findings = Findings::default();
    let mut stats = LogFenceStats {
        nodes_read: logs.len() as u64,
        committed_index: committed,
        ..LogFenceStats::default()
    };
    let mut compared = 0;
    let merged = merge(logs, committed, &mut findings, &mut compared);
    stats.indexes_merged = merged.len() as u64;
    stats.indexes_missing = committed - stats.indexes_merged;
    let mut model = FenceModel::default();
    for (&index, (_, entry)) in &merged {
        let LoggedPayload::Normal { command, .. } = &entry.payload else {
            continue;
        };
        match scheduler_command(command) {
            Some(Ok(command)) => {
                stats.commands += 1;
                model.apply(index, command, &mut stats);
            }
            Some(Err(())) => stats.undecodable += 1,
            None => {}
        }
    }
    // A committed index no node holds may hide a grant: judging entries then could report
    // a stale run where there is none.
    let entries_checked = if stats.indexes_missing == 0 {
        check_entries(&model, finals, &mut stats, &mut findings)
    } else {
        0
    };
    let coverage = Coverage::from([
        (
            "committed indexes compared between two nodes".to_owned(),
            compared,
        ),
        (
            "committed log read whole (1: no index missing from every node)".to_owned(),
            u64::from(stats.indexes_missing == 0),
        ),
        (
            "journal entries matched to a record under a current fence".to_owned(),
            entries_checked,
        ),
    ]);
    LogFencesVerdict {
        validity: judge(&findings, &coverage),
        anomalies: findings.anomalies,
        counts: findings.counts,
        coverage,
        stats,
    }
}

#[cfg(test)]
mod tests {
    use keel_scheduler::{Outcome, Owner, StepRecord};

    use super::super::workflows::FinalEntry;
    use super::*;

    fn logged(index: u64, command: Command) -> LoggedEntry {
        let stamped = Stamped {
            stamp_ms: 1,
            mono: None,
            command,
        };
        let mut bytes = vec![AppTag::Extension as u8];
        bytes.extend_from_slice(&keel_scheduler::encode_command(&stamped));
        LoggedEntry {
            index,
            term: 1,
            payload: LoggedPayload::Normal {
                session: 0,
                seq: 0,
                command: bytes,
            },
        }
    }

    fn step(index: u64, fence: u64, seq: u32) -> LoggedEntry {
        logged(
            index,
            Command::Step {
                workflow: "w".into(),
                fence,
                seq,
                name: format!("step-{seq}"),
                record: StepRecord::Done(Outcome::Ok(Vec::new())),
            },
        )
    }

    fn claim(index: u64) -> LoggedEntry {
        logged(
            index,
            Command::Claim {
                workflow: "w".into(),
                owner: Owner::Leader { node: 2, term: 2 },
            },
        )
    }

    fn declare(index: u64) -> LoggedEntry {
        logged(
            index,
            Command::DeclareKinds {
                kinds: vec![("steps".into(), "1".into())],
            },
        )
    }

    fn start(index: u64) -> LoggedEntry {
        logged(
            index,
            Command::Start {
                id: "w".into(),
                kind: "steps".into(),
                input: b"2".to_vec(),
            },
        )
    }

    /// `w` completed with entries `(seq, fence)`.
    fn finals(entries: &[(u32, u64)]) -> BTreeMap<String, FinalWorkflow> {
        let journal = entries
            .iter()
            .map(|&(seq, fence)| FinalEntry {
                seq,
                kind: "step".into(),
                name: format!("step-{seq}"),
                state: "done".into(),
                fence,
                value: seq.to_string(),
            })
            .collect();
        BTreeMap::from([(
            "w".to_owned(),
            FinalWorkflow {
                status: "completed".into(),
                result: "2".into(),
                error: String::new(),
                fence: entries.last().map_or(1, |e| e.1),
                journal,
            },
        )])
    }

    #[test]
    fn records_under_the_current_fence_are_valid_across_a_takeover() {
        // Started at 2, step 0 under fence 2; claimed at 4, step 1 under fence 4. The old
        // run's late record of step 1 (fence 2, index 5) was refused: it is not in the final
        // journal.
        let log = vec![
            declare(1),
            start(2),
            step(3, 2, 0),
            claim(4),
            step(5, 2, 1),
            step(6, 4, 1),
        ];
        let verdict =
            check_log_fences(&[(1, log.clone()), (2, log)], 6, &finals(&[(0, 2), (1, 4)]));
        assert_eq!(verdict.validity, Validity::Valid, "{verdict:?}");
        assert_eq!(verdict.stats.stale_records, 1);
        assert_eq!(
            verdict.coverage["journal entries matched to a record under a current fence"],
            2
        );
    }

    #[test]
    fn an_entry_recorded_by_a_stale_run_after_a_new_claim_is_found() {
        // The case the final journal alone cannot show: after the claim at 4, the old run
        // (fence 2) records step 1 before the new run records anything, and the state
        // machine accepted it. Fences along the journal still never go back.
        let log = vec![declare(1), start(2), step(3, 2, 0), claim(4), step(5, 2, 1)];
        let verdict =
            check_log_fences(&[(1, log.clone()), (2, log)], 5, &finals(&[(0, 2), (1, 2)]));
        assert_eq!(verdict.validity, Validity::Invalid);
        assert_eq!(verdict.counts["stale-run-recorded"], 1, "{verdict:?}");
    }

    #[test]
    fn two_nodes_holding_different_entries_at_one_index_diverge() {
        let a = vec![declare(1), start(2), step(3, 2, 0)];
        let b = vec![declare(1), start(2), step(3, 2, 1)];
        let verdict = check_log_fences(&[(1, a), (2, b)], 3, &finals(&[(0, 2)]));
        assert_eq!(verdict.counts["log-divergence"], 1, "{verdict:?}");
    }

    #[test]
    fn a_log_compared_nowhere_leaves_the_verdict_unknown() {
        let log = vec![declare(1), start(2), step(3, 2, 0)];
        let verdict = check_log_fences(&[(1, log)], 3, &finals(&[(0, 2)]));
        assert_eq!(verdict.validity, Validity::Unknown, "{verdict:?}");
        assert_eq!(
            verdict.coverage["committed indexes compared between two nodes"],
            0
        );
    }

    #[test]
    fn an_entry_no_command_recorded_is_found_and_a_gap_makes_the_verdict_unknown() {
        // The final journal holds entry 1, but the whole committed log has no command for it.
        let log = vec![declare(1), start(2), step(3, 2, 0)];
        let verdict =
            check_log_fences(&[(1, log.clone()), (2, log)], 3, &finals(&[(0, 2), (1, 2)]));
        assert_eq!(verdict.counts["unrecorded-entry"], 1, "{verdict:?}");
        // Index 2 (the start) missing from both nodes: nothing can be judged.
        let gap = vec![declare(1), step(3, 2, 0)];
        let verdict = check_log_fences(&[(1, gap.clone()), (2, gap)], 3, &finals(&[(0, 2)]));
        assert_eq!(verdict.stats.indexes_missing, 1);
        assert_eq!(verdict.validity, Validity::Unknown, "{verdict:?}");
    }

    #[test]
    fn a_stale_call_refused_before_the_new_runs_call_leaves_the_child_its_grant() {
        // After the claim at 4, the old run's call at seq 0 (fence 2) commits first and is
        // refused; the new run's call (fence 4) then creates the child at index 6, which
        // records under that fence.
        let call = |index, fence| {
            logged(
                index,
                Command::Call {
                    workflow: "w".into(),
                    fence,
                    seq: 0,
                    kind: "steps".into(),
                    input: b"1".to_vec(),
                },
            )
        };
        let child_step = logged(
            7,
            Command::Step {
                workflow: "w/0".into(),
                fence: 6,
                seq: 0,
                name: "step-0".into(),
                record: StepRecord::Done(Outcome::Ok(Vec::new())),
            },
        );
        let log = vec![
            declare(1),
            start(2),
            logged(3, Command::DeclareKinds { kinds: Vec::new() }),
            claim(4),
            call(5, 2),
            call(6, 4),
            child_step,
        ];
        let mut finals = finals(&[]);
        finals.insert(
            "w/0".into(),
            FinalWorkflow {
                status: "completed".into(),
                result: "1".into(),
                error: String::new(),
                fence: 6,
                journal: vec![FinalEntry {
                    seq: 0,
                    kind: "step".into(),
                    name: "step-0".into(),
                    state: "done".into(),
                    fence: 6,
                    value: "0".into(),
                }],
            },
        );
        let verdict = check_log_fences(&[(1, log.clone()), (2, log)], 7, &finals);
        assert!(verdict.counts.is_empty(), "{verdict:?}");
        assert_eq!(
            verdict.coverage["journal entries matched to a record under a current fence"],
            1
        );
    }
}
