//! The workflows checker: a pure function of a history and the workflows' final records.
//!
//! For every workflow the history started (its kind and input fix what it must do):
//! - an acknowledged start exists at the end (*lost-workflow*), a start that certainly
//!   failed does not (*failed-start-exists*);
//! - it completed (*stuck-workflow* if still running after the final wait,
//!   *workflow-failed* if it failed or was cancelled) with the result its kind computes
//!   from its input (*wrong-result*);
//! - its journal holds exactly the entries its code makes, in order, each recorded once
//!   and done (*bad-journal*): `steps n` → `step-0` … `step-(n-1)`; `sleep` → one sleep;
//!   `call-sleep` → one call of child `<id>/0`, which itself completed its sleep;
//!   `slow-step` → steps `quick` and `slow`, the result naming the process that ran the slow
//!   one;
//! - each entry was recorded by one run: its fence (the run's, which the state machine
//!   checks on every record) is at most the workflow's, and fences never go back along the
//!   journal — a run that lost the workflow to another recorded nothing after it
//!   (*stale-run-recorded*);
//! - each step's value read back is the one its code returned (`steps n:b` returns step
//!   `i`'s number padded with dots to `b` bytes, past the inline limit, so the value is read
//!   from the log or the value files) (*wrong-value*), and a record a node could not read
//!   whole because it lost a referenced value is *lost-value*;
//! - a sleep is never cut short: the workflow is seen finished no sooner than its start was
//!   invoked plus the sleep, on the harness's clock, with no tolerance (*sleep-cut-short*).

use std::collections::{BTreeMap, HashMap};

use serde::{Deserialize, Serialize};

use super::{Anomaly, Coverage, Findings, Validity, judge};
use crate::history::{Call, Op, OpType};

/// One journal entry of a final record.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FinalEntry {
    /// Its position.
    pub seq: u32,
    /// `step`, `sleep`, `signal` or `call`.
    pub kind: String,
    /// The step's name or the child's id.
    pub name: String,
    /// `pending`, `done`, `failed` or `timed-out`.
    pub state: String,
    /// The fence of the run that created it.
    pub fence: u64,
    /// Its value as text (a step's result), when done.
    #[serde(default)]
    pub value: String,
}

/// The status of a final record the cluster could not read whole (see
/// [`FinalWorkflow::error`] for why).
pub const UNREADABLE: &str = "unreadable";

/// A workflow's final record, read from the cluster after the run.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FinalWorkflow {
    /// `running`, `completed`, `failed`, `cancelled` or [`UNREADABLE`].
    pub status: String,
    /// Its result (completed).
    pub result: String,
    /// Its error (failed).
    pub error: String,
    /// Its current fence.
    pub fence: u64,
    /// Its journal.
    pub journal: Vec<FinalEntry>,
}

/// Counts of what the history holds.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct WorkflowStats {
    /// Starts acknowledged.
    pub started_ok: u64,
    /// Starts that certainly failed.
    pub started_failed: u64,
    /// Starts with unknown outcome.
    pub started_unknown: u64,
    /// Workflows found completed at the end.
    pub completed: u64,
    /// Workflows a client saw finish while the run went on.
    pub seen_finished: u64,
    /// Completed workflows whose journal more than one run recorded (a run took over).
    pub taken_over: u64,
    /// Journal entries of completed workflows whose fences were checked.
    #[serde(default)]
    pub fences_checked: u64,
    /// Step values compared with what their code returned.
    #[serde(default)]
    pub values_checked: u64,
}

/// The workflows checker's verdict.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WorkflowsVerdict {
    /// Valid or invalid.
    pub validity: Validity,
    /// The first anomalies of each kind.
    pub anomalies: Vec<Anomaly>,
    /// How many of each kind.
    pub counts: BTreeMap<String, u64>,
    /// How many times each property was checked.
    pub coverage: Coverage,
    /// What the history holds.
    pub stats: WorkflowStats,
}

/// A workflow's result: exactly a text, or (for kinds that name the process that ran them)
/// a text beginning with a prefix.
enum ExpectedResult {
    Exact(String),
    Prefix(&'static str),
}

impl ExpectedResult {
    fn matches(&self, result: &str) -> bool {
        match self {
            Self::Exact(expected) => result == expected,
            Self::Prefix(prefix) => result.starts_with(prefix),
        }
    }
}

impl std::fmt::Debug for ExpectedResult {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Exact(expected) => write!(f, "{expected:?}"),
            Self::Prefix(prefix) => write!(f, "{prefix:?}…"),
        }
    }
}

/// What a workflow of `kind` with `input` must leave behind.
struct Expected {
    result: ExpectedResult,
    journal: Vec<(&'static str, String)>,
    /// Each journal entry's value, where the code fixes it.
    values: Vec<Option<String>>,
    sleep_ms: u64,
}

/// The value step `i` of a `steps` workflow returns: `i`, padded with dots to `size` bytes.
fn step_value(i: u64, size: usize) -> String {
    let mut value = i.to_string();
    if value.len() < size {
        value.extend(std::iter::repeat_n('.', size - value.len()));
    }
    value
}

fn expected(id: &str, kind: &str, input: &str) -> Option<Expected> {
    if kind == "steps" {
        let (n, size) = match input.split_once(':') {
            Some((n, size)) => (n.parse::<u64>().ok()?, size.parse().ok()?),
            None => (input.parse().ok()?, 0),
        };
        return Some(Expected {
            result: ExpectedResult::Exact(n.to_string()),
            journal: (0..n).map(|i| ("step", format!("step-{i}"))).collect(),
            values: (0..n).map(|i| Some(step_value(i, size))).collect(),
            sleep_ms: 0,
        });
    }
    let n: u64 = input.parse().ok()?;
    Some(match kind {
        "sleep" => Expected {
            result: ExpectedResult::Exact(format!("slept {n} ms")),
            journal: vec![("sleep", String::new())],
            values: Vec::new(),
            sleep_ms: n,
        },
        "call-sleep" => Expected {
            result: ExpectedResult::Exact(format!("child: slept {n} ms")),
            journal: vec![("call", format!("{id}/0"))],
            values: Vec::new(),
            sleep_ms: n,
        },
        "slow-step" => Expected {
            result: ExpectedResult::Prefix("slow done by process "),
            journal: vec![("step", "quick".to_owned()), ("step", "slow".to_owned())],
            values: Vec::new(),
            sleep_ms: 0,
        },
        _ => return None,
    })
}

/// Whether `journal` is exactly `expected`, every entry done, in order.
fn journal_matches(journal: &[FinalEntry], expected: &[(&str, String)]) -> bool {
    journal.len() == expected.len()
        && journal
            .iter()
            .zip(expected)
            .enumerate()
            .all(|(i, (entry, (kind, name)))| {
                u32::try_from(i).is_ok_and(|seq| entry.seq == seq)
                    && entry.kind == *kind
                    && entry.name == *name
                    && entry.state == "done"
            })
}

/// Checks a workflows workload's history against the final records (`id` → record; an id
/// missing from it does not exist in the cluster).
pub fn check_workflows(
    history: &[Op],
    finals: &BTreeMap<String, FinalWorkflow>,
) -> WorkflowsVerdict {
    let mut findings = Findings::default();
    let mut stats = WorkflowStats::default();
    let mut first_seen_finished: HashMap<&str, u64> = HashMap::new();
    for op in history {
        if let (OpType::Ok, Call::AwaitWorkflow { id, .. }) = (op.kind, &op.call) {
            first_seen_finished.entry(id.as_str()).or_insert(op.time_ns);
        }
    }
    stats.seen_finished = first_seen_finished.len() as u64;
    for finished in super::completed(history) {
        let Call::StartWorkflow { id, kind, input } = finished.invoked else {
            continue;
        };
        let exists = finals.get(id);
        match (finished.kind, exists) {
            (OpType::Fail, None) => {
                stats.started_failed += 1;
                continue;
            }
            (OpType::Fail, Some(_)) => {
                stats.started_failed += 1;
                findings.add(
                    "failed-start-exists",
                    format!("{id}: its start certainly failed, yet it exists"),
                );
                continue;
            }
            (OpType::Ok, None) => {
                stats.started_ok += 1;
                findings.add(
                    "lost-workflow",
                    format!("{id} ({kind} {input}): started, acknowledged, gone"),
                );
                continue;
            }
            (_, None) => {
                stats.started_unknown += 1;
                continue;
            }
            (OpType::Ok, Some(_)) => stats.started_ok += 1,
            (_, Some(_)) => stats.started_unknown += 1,
        }
        let Some(workflow) = exists else { continue };
        check_one(id, kind, input, workflow, finals, &mut findings, &mut stats);
        if let (Some(expected), Some(&seen)) = (
            expected(id, kind, input),
            first_seen_finished.get(id.as_str()),
        ) {
            check_sleep(
                id,
                kind,
                input,
                finished.invoked_ns,
                &expected,
                seen,
                &mut findings,
            );
        }
    }
    let coverage = coverage(&stats);
    WorkflowsVerdict {
        validity: judge(&findings, &coverage),
        anomalies: findings.anomalies,
        counts: findings.counts,
        coverage,
        stats,
    }
}

/// What the checker covered: starts, completed workflows, fenced journal entries.
fn coverage(stats: &WorkflowStats) -> Coverage {
    Coverage::from([
        (
            "acknowledged starts checked to exist".to_owned(),
            stats.started_ok,
        ),
        (
            "completed workflows' results and journals checked".to_owned(),
            stats.completed,
        ),
        (
            "journal entries fence-checked".to_owned(),
            stats.fences_checked,
        ),
        ("step values compared".to_owned(), stats.values_checked),
    ])
}

/// A workflow seen finished at `seen_ns` must have started (`invoked_ns`) at least its
/// sleep earlier.
fn check_sleep(
    id: &str,
    kind: &str,
    input: &str,
    invoked_ns: u64,
    expected: &Expected,
    seen_ns: u64,
    findings: &mut Findings,
) {
    if seen_ns < invoked_ns + expected.sleep_ms * 1_000_000 {
        findings.add(
            "sleep-cut-short",
            format!(
                "{id} ({kind} {input}) was seen finished {} ms after its start was invoked",
                seen_ns.saturating_sub(invoked_ns) / 1_000_000
            ),
        );
    }
}

/// Checks one existing workflow's end, result and journal.
fn check_one(
    id: &str,
    kind: &str,
    input: &str,
    workflow: &FinalWorkflow,
    finals: &BTreeMap<String, FinalWorkflow>,
    findings: &mut Findings,
    stats: &mut WorkflowStats,
) {
    match workflow.status.as_str() {
        "completed" => stats.completed += 1,
        UNREADABLE => {
            findings.add(
                "lost-value",
                format!(
                    "{id} ({kind} {input}) could not be read: {}",
                    workflow.error
                ),
            );
            return;
        }
        "running" => {
            findings.add(
                "stuck-workflow",
                format!("{id} ({kind} {input}) still runs"),
            );
            return;
        }
        ended => {
            findings.add(
                "workflow-failed",
                format!("{id} ({kind} {input}) {ended}: {}", workflow.error),
            );
            return;
        }
    }
    let Some(expected) = expected(id, kind, input) else {
        findings.add(
            "bad-journal",
            format!("{id}: unknown kind {kind} or input {input:?}"),
        );
        return;
    };
    if !expected.result.matches(&workflow.result) {
        findings.add(
            "wrong-result",
            format!(
                "{id}: result {:?}, expected {:?}",
                workflow.result, expected.result
            ),
        );
    }
    if journal_matches(&workflow.journal, &expected.journal) {
        check_values(id, workflow, &expected, findings, stats);
    } else {
        findings.add(
            "bad-journal",
            format!("{id} ({kind} {input}): journal {:?}", workflow.journal),
        );
    }
    check_fences(id, workflow, findings, stats);
    if kind == "call-sleep" {
        let child = format!("{id}/0");
        let child_ok = finals.get(&child).is_some_and(|c| {
            c.status == "completed" && journal_matches(&c.journal, &[("sleep", String::new())])
        });
        if !child_ok {
            findings.add(
                "bad-journal",
                format!("{id}: child {child} is {:?}", finals.get(&child)),
            );
        }
    }
}

/// Every entry's value its code fixes is the value read back (the journal has the
/// entries its code makes).
fn check_values(
    id: &str,
    workflow: &FinalWorkflow,
    expected: &Expected,
    findings: &mut Findings,
    stats: &mut WorkflowStats,
) {
    for (entry, value) in workflow.journal.iter().zip(&expected.values) {
        let Some(value) = value else { continue };
        stats.values_checked += 1;
        if entry.value != *value {
            findings.add(
                "wrong-value",
                format!(
                    "{id}: entry {} holds {:?}, its code returned {value:?}",
                    entry.seq, entry.value
                ),
            );
        }
    }
}

/// Every entry recorded by one run: fences at most the workflow's, never going back.
fn check_fences(
    id: &str,
    workflow: &FinalWorkflow,
    findings: &mut Findings,
    stats: &mut WorkflowStats,
) {
    let fences: Vec<u64> = workflow.journal.iter().map(|e| e.fence).collect();
    stats.fences_checked += fences.len() as u64;
    let ordered = fences.windows(2).all(|pair| pair[0] <= pair[1]);
    if !ordered
        || fences
            .iter()
            .any(|&fence| fence == 0 || fence > workflow.fence)
    {
        findings.add(
            "stale-run-recorded",
            format!(
                "{id}: journal fences {fences:?}, the workflow's fence {}",
                workflow.fence
            ),
        );
    }
    if fences.first() != fences.last() {
        stats.taken_over += 1;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn op(time_ms: u64, process: u64, kind: OpType, call: Call) -> Op {
        Op {
            index: 0,
            time_ns: time_ms * 1_000_000,
            process,
            kind,
            call,
            error: None,
        }
    }

    fn start(id: &str, kind: &str, input: &str) -> Call {
        Call::StartWorkflow {
            id: id.into(),
            kind: kind.into(),
            input: input.into(),
        }
    }

    fn seen(id: &str) -> Call {
        Call::AwaitWorkflow {
            id: id.into(),
            status: Some("completed".into()),
        }
    }

    /// The fence of every run in these histories but a takeover's.
    const FENCE: u64 = 7;

    fn entry(seq: u32, kind: &str, name: &str) -> FinalEntry {
        FinalEntry {
            seq,
            kind: kind.into(),
            name: name.into(),
            state: "done".into(),
            fence: FENCE,
            value: String::new(),
        }
    }

    /// Step `seq` of a `steps` workflow, holding `value`.
    fn step(seq: u32, value: &str) -> FinalEntry {
        FinalEntry {
            value: value.into(),
            ..entry(seq, "step", &format!("step-{seq}"))
        }
    }

    fn completed(result: &str, journal: Vec<FinalEntry>) -> FinalWorkflow {
        FinalWorkflow {
            status: "completed".into(),
            result: result.into(),
            error: String::new(),
            fence: FENCE,
            journal,
        }
    }

    /// A valid run: `a` steps 2, `b` sleeps 500 ms, `c` calls a sleeping child.
    fn valid() -> (Vec<Op>, BTreeMap<String, FinalWorkflow>) {
        let history = vec![
            op(0, 1, OpType::Invoke, start("a", "steps", "2")),
            op(5, 1, OpType::Ok, start("a", "steps", "2")),
            op(10, 2, OpType::Invoke, start("b", "sleep", "500")),
            op(20, 2, OpType::Ok, start("b", "sleep", "500")),
            op(20, 2, OpType::Invoke, seen("b")),
            op(600, 2, OpType::Ok, seen("b")),
            op(30, 3, OpType::Invoke, start("c", "call-sleep", "100")),
            op(40, 3, OpType::Ok, start("c", "call-sleep", "100")),
        ];
        let finals = BTreeMap::from([
            (
                "a".to_owned(),
                completed("2", vec![step(0, "0"), step(1, "1")]),
            ),
            (
                "b".to_owned(),
                completed("slept 500 ms", vec![entry(0, "sleep", "")]),
            ),
            (
                "c".to_owned(),
                completed("child: slept 100 ms", vec![entry(0, "call", "c/0")]),
            ),
            (
                "c/0".to_owned(),
                completed("slept 100 ms", vec![entry(0, "sleep", "")]),
            ),
        ]);
        (history, finals)
    }

    fn kinds(verdict: &WorkflowsVerdict) -> Vec<String> {
        verdict.counts.keys().cloned().collect()
    }

    #[test]
    fn a_valid_history_is_valid() {
        let (history, finals) = valid();
        let verdict = check_workflows(&history, &finals);
        assert_eq!(verdict.validity, Validity::Valid, "{:?}", verdict.anomalies);
        assert_eq!(verdict.stats.started_ok, 3);
        assert_eq!(verdict.stats.completed, 3);
    }

    #[test]
    fn every_step_value_is_compared_with_what_its_code_returned() {
        let (mut history, mut finals) = valid();
        history.push(op(50, 4, OpType::Invoke, start("d", "steps", "2:40")));
        history.push(op(60, 4, OpType::Ok, start("d", "steps", "2:40")));
        let padded = |i: u32| format!("{i}{}", ".".repeat(39));
        finals.insert(
            "d".into(),
            completed("2", vec![step(0, &padded(0)), step(1, &padded(1))]),
        );
        let verdict = check_workflows(&history, &finals);
        assert_eq!(verdict.validity, Validity::Valid, "{:?}", verdict.anomalies);
        assert_eq!(verdict.stats.values_checked, 4, "a's two and d's two");
        finals.insert(
            "d".into(),
            completed("2", vec![step(0, &padded(0)), step(1, &padded(0))]),
        );
        assert_eq!(kinds(&check_workflows(&history, &finals)), ["wrong-value"]);
        finals.insert(
            "d".into(),
            completed("2", vec![step(0, &padded(0)), step(1, "1")]),
        );
        assert_eq!(kinds(&check_workflows(&history, &finals)), ["wrong-value"]);
    }

    #[test]
    fn a_record_a_node_could_not_read_whole_is_a_lost_value() {
        let (history, mut finals) = valid();
        finals.insert(
            "a".into(),
            FinalWorkflow {
                status: UNREADABLE.into(),
                error: "data loss: reading a workflow's value".into(),
                ..completed("", Vec::new())
            },
        );
        assert_eq!(kinds(&check_workflows(&history, &finals)), ["lost-value"]);
    }

    #[test]
    fn a_lost_acknowledged_workflow_is_found() {
        let (history, mut finals) = valid();
        finals.remove("a");
        assert_eq!(
            kinds(&check_workflows(&history, &finals)),
            ["lost-workflow"]
        );
    }

    #[test]
    fn a_slow_step_result_names_its_process_and_its_journal_both_steps() {
        let (mut history, mut finals) = valid();
        history.push(op(50, 4, OpType::Invoke, start("d", "slow-step", "1500")));
        history.push(op(60, 4, OpType::Ok, start("d", "slow-step", "1500")));
        let journal = vec![entry(0, "step", "quick"), entry(1, "step", "slow")];
        finals.insert(
            "d".into(),
            completed("slow done by process 4242, attempt 1", journal.clone()),
        );
        let verdict = check_workflows(&history, &finals);
        assert_eq!(verdict.validity, Validity::Valid, "{:?}", verdict.anomalies);
        assert_eq!(verdict.stats.completed, 4);
        finals.insert("d".into(), completed("quick", journal));
        assert_eq!(kinds(&check_workflows(&history, &finals)), ["wrong-result"]);
        finals.insert(
            "d".into(),
            completed(
                "slow done by process 4242, attempt 1",
                vec![entry(0, "step", "quick")],
            ),
        );
        assert_eq!(kinds(&check_workflows(&history, &finals)), ["bad-journal"]);
    }

    #[test]
    fn a_step_recorded_twice_or_out_of_order_is_a_bad_journal() {
        let (history, mut finals) = valid();
        finals.insert(
            "a".into(),
            completed(
                "2",
                vec![
                    entry(0, "step", "step-0"),
                    entry(1, "step", "step-0"),
                    entry(2, "step", "step-1"),
                ],
            ),
        );
        assert_eq!(kinds(&check_workflows(&history, &finals)), ["bad-journal"]);
        finals.insert(
            "a".into(),
            completed(
                "2",
                vec![entry(0, "step", "step-1"), entry(1, "step", "step-0")],
            ),
        );
        assert_eq!(kinds(&check_workflows(&history, &finals)), ["bad-journal"]);
    }

    #[test]
    fn a_journal_is_recorded_by_one_run_at_a_time() {
        let (history, mut finals) = valid();
        // A takeover: the new run (fence 9) recorded step-1.
        let a = finals.get_mut("a").expect("a");
        a.fence = 9;
        a.journal[1].fence = 9;
        let verdict = check_workflows(&history, &finals);
        assert_eq!(verdict.validity, Validity::Valid, "{:?}", verdict.anomalies);
        assert_eq!(verdict.stats.taken_over, 1);
        // The old run recorded step-1 after the new one recorded step-0.
        let a = finals.get_mut("a").expect("a");
        a.journal[0].fence = 9;
        a.journal[1].fence = FENCE;
        assert_eq!(
            kinds(&check_workflows(&history, &finals)),
            ["stale-run-recorded"]
        );
        // A fence the workflow never granted.
        let (history, mut finals) = valid();
        finals.get_mut("b").expect("b").journal[0].fence = FENCE + 1;
        assert_eq!(
            kinds(&check_workflows(&history, &finals)),
            ["stale-run-recorded"]
        );
    }

    #[test]
    fn a_sleep_seen_finished_too_soon_is_cut_short() {
        let (mut history, finals) = valid();
        // Seen finished 499 ms after the start's invocation (at 10 ms): 1 ms too soon.
        history[5] = op(509, 2, OpType::Ok, seen("b"));
        assert_eq!(
            kinds(&check_workflows(&history, &finals)),
            ["sleep-cut-short"]
        );
    }

    #[test]
    fn stuck_failed_wrong_and_childless_workflows_are_found() {
        let (history, mut finals) = valid();
        let mut stuck = finals["a"].clone();
        "running".clone_into(&mut stuck.status);
        finals.insert("a".into(), stuck);
        let mut failed = finals["b"].clone();
        "failed".clone_into(&mut failed.status);
        finals.insert("b".into(), failed);
        finals.remove("c/0");
        let verdict = check_workflows(&history, &finals);
        assert_eq!(
            kinds(&verdict),
            ["bad-journal", "stuck-workflow", "workflow-failed"]
        );
        let (history, mut finals) = valid();
        finals.get_mut("a").expect("a").result = "3".into();
        assert_eq!(kinds(&check_workflows(&history, &finals)), ["wrong-result"]);
    }

    #[test]
    fn a_failed_start_must_not_exist_and_unknown_ones_may() {
        let (mut history, finals) = valid();
        history[1] = op(5, 1, OpType::Fail, start("a", "steps", "2"));
        assert_eq!(
            kinds(&check_workflows(&history, &finals)),
            ["failed-start-exists"]
        );
        let (mut history, mut finals) = valid();
        history[1] = op(5, 1, OpType::Info, start("a", "steps", "2"));
        finals.remove("a");
        // Another `steps` workflow, so that some step value is compared.
        history.push(op(50, 4, OpType::Invoke, start("d", "steps", "1")));
        history.push(op(60, 4, OpType::Ok, start("d", "steps", "1")));
        finals.insert("d".into(), completed("1", vec![step(0, "0")]));
        let verdict = check_workflows(&history, &finals);
        assert_eq!(verdict.validity, Validity::Valid, "{:?}", verdict.anomalies);
        assert_eq!(verdict.stats.started_unknown, 1);
    }
}
