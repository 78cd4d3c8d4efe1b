//! Property test: a snapshot with a valid checksum but a corrupted state never crashes a
//! replica. It builds a real state from random commands, snapshots it, decodes the state,
//! breaks one to three cross-references (or changes a field harmlessly), re-encodes it with a
//! valid checksum, and restores it through [`SchedulerMachine::restore`]. The restore either
//! refuses it with [`SnapshotError::Inconsistent`], or accepts it, and then a bounded run of
//! further random commands — fires at far-future stamps, expiry, cancels, claims, steps —
//! applies without a panic (debug builds also assert the consistency after each command, so
//! an accepted state that apply would break is caught as a panic too).
//!
//! It lives in the crate, not in `tests/`, because it edits the state's private fields.

use std::panic::{AssertUnwindSafe, catch_unwind};

use bytes::Bytes;
use keel_raft::application::{Application, AppliedAt};
use proptest::prelude::*;
use proptest::sample::Index;

use super::{EntryKind, SchedulerState, TimerTarget};
use crate::command::{
    self, Command, Due, EntryState, Outcome, Owner, Stamped, StepRecord, WorkflowStatus,
};
use crate::machine::{SchedulerMachine, SnapshotError, codec};

const WORKFLOWS: [&str; 3] = ["w0", "w1", "w2"];
const TIMERS: [&str; 3] = ["t0", "t1", "t2"];
const SCHEDULES: [&str; 2] = ["s0", "s1"];
/// A stamp past every due time the commands make (and a minute boundary for the cron).
const FAR_MS: u64 = 10_000_000_000;

fn workflow() -> impl Strategy<Value = String> {
    prop_oneof![
        2 => prop::sample::select(&WORKFLOWS[..]).prop_map(str::to_owned),
        // Children, as `call` names them.
        1 => (prop::sample::select(&WORKFLOWS[..]), 0u32..4)
            .prop_map(|(w, seq)| format!("{w}/{seq}")),
    ]
}

/// A journal command's sequence number: mostly [`NEXT`], the workflow's next entry.
fn seq() -> impl Strategy<Value = u32> {
    prop_oneof![3 => Just(NEXT), 1 => 0u32..4]
}

/// A sequence number that stands for the workflow's next entry.
const NEXT: u32 = u32::MAX;

/// A command; a journal command's `fence` 0 means the workflow's current fence, its
/// sequence number [`NEXT`] the workflow's next entry.
#[expect(clippy::too_many_lines, reason = "one arm per command kind")]
fn command() -> impl Strategy<Value = Command> {
    prop_oneof![
        3 => workflow().prop_map(|id| Command::Start {
            id,
            kind: "k".into(),
            input: Vec::new(),
        }),
        2 => (workflow(), seq(), any::<u8>()).prop_map(|(workflow, seq, value)| Command::Step {
            workflow,
            fence: 0,
            seq,
            name: "a".into(),
            record: StepRecord::Done(Outcome::Ok(vec![value])),
        }),
        1 => (workflow(), seq()).prop_map(|(workflow, seq)| Command::Step {
            workflow,
            fence: 0,
            seq,
            name: "a".into(),
            record: StepRecord::AttemptFailed {
                attempt: 1,
                error: "e".into(),
            },
        }),
        3 => (workflow(), seq(), 0u64..5_000).prop_map(|(workflow, seq, delay_ms)| Command::Sleep {
            workflow,
            fence: 0,
            seq,
            due: Due::After { delay_ms },
        }),
        2 => (workflow(), seq(), prop::option::of(0u64..5_000)).prop_map(
            |(workflow, seq, timeout_ms)| Command::WaitSignal {
                workflow,
                fence: 0,
                seq,
                signal: "s".into(),
                timeout_ms,
            }
        ),
        3 => (workflow(), seq()).prop_map(|(workflow, seq)| Command::Call {
            workflow,
            fence: 0,
            seq,
            kind: "k".into(),
            input: Vec::new(),
        }),
        1 => workflow().prop_map(|workflow| Command::Finish {
            workflow,
            fence: 0,
            outcome: Outcome::Ok(Vec::new()),
        }),
        1 => workflow().prop_map(|workflow| Command::Claim {
            workflow,
            owner: Owner::Worker { worker: 1 },
        }),
        1 => workflow().prop_map(|workflow| Command::Signal {
            workflow,
            signal: "s".into(),
            payload: Vec::new(),
        }),
        1 => workflow().prop_map(|workflow| Command::Cancel {
            workflow,
            reason: "test".into(),
        }),
        2 => (prop::sample::select(&TIMERS[..]), 0u64..5_000).prop_map(|(name, delay_ms)| {
            Command::ScheduleTimer {
                name: name.into(),
                due: Due::After { delay_ms },
                payload: Vec::new(),
            }
        }),
        1 => prop::sample::select(&SCHEDULES[..]).prop_map(|name| Command::RegisterSchedule {
            name: name.into(),
            cron: "* * * * *".into(),
            kind: "k".into(),
            input: Vec::new(),
        }),
        1 => (0u64..200).prop_map(|retention_ms| Command::Expire { retention_ms }),
        // Fire every pending timer (the ids are filled in from the state).
        1 => Just(Command::FireTimers { ids: Vec::new() }),
    ]
}

/// A structural change to a decoded state. Indexes pick among what the state holds.
#[derive(Debug, Clone)]
enum Mutation {
    /// Removes a timer from the queue (its target still points at it).
    DeleteTimer(Index),
    /// Removes a timer from the due-order index only.
    DropFromDueIndex(Index),
    /// Moves a timer in the due-order index only.
    MoveInDueIndex(Index, u64),
    /// Changes a timer's due time everywhere (harmless).
    ChangeDue(Index, u64),
    /// Points a timer at another target.
    Retarget(Index, Index, u32),
    /// Forgets a pending name.
    DropNamed(Index),
    /// Points a name at another timer.
    RepointNamed(Index, Index),
    /// Records a fire for a pending name.
    FireNamed(Index),
    /// Raises a workflow's fence.
    RaiseFence(Index, u64),
    /// Lowers the last applied index.
    LowerApplied(u64),
    /// Removes a running workflow.
    RemoveWorkflow(Index),
    /// Sets a workflow's status to running or finished (it had the other), leaving the rest.
    SetStatus(Index, bool),
    /// Sets a running workflow's finish time, or clears a finished one's.
    SetFinished(Index, Option<u64>),
    /// Sets the state of a running workflow's entry.
    SetEntryState(Index, u8),
    /// Sets the timer of a running workflow's sleep or signal entry.
    SetEntryTimer(Index, Index),
    /// Renames the child of a running workflow's call entry.
    RenameChild(Index),
    /// Gives a workflow another parent.
    Reparent(Index, Index, u32),
    /// Truncates a journal.
    Truncate(Index, usize),
    /// Points a schedule at another timer.
    RepointSchedule(Index, Index),
    /// Removes a schedule.
    RemoveSchedule(Index),
    /// Sets the last timer id handed out: below a pending timer's, or to the largest id.
    SetNextId(Index, bool),
}

fn mutation() -> impl Strategy<Value = Mutation> {
    let i = any::<Index>;
    prop_oneof![
        i().prop_map(Mutation::DeleteTimer),
        i().prop_map(Mutation::DropFromDueIndex),
        (i(), 0u64..FAR_MS).prop_map(|(t, d)| Mutation::MoveInDueIndex(t, d)),
        (i(), 0u64..FAR_MS).prop_map(|(t, d)| Mutation::ChangeDue(t, d)),
        (i(), i(), 0u32..5).prop_map(|(t, w, s)| Mutation::Retarget(t, w, s)),
        i().prop_map(Mutation::DropNamed),
        (i(), i()).prop_map(|(n, t)| Mutation::RepointNamed(n, t)),
        i().prop_map(Mutation::FireNamed),
        (i(), 1u64..1_000).prop_map(|(w, by)| Mutation::RaiseFence(w, by)),
        (1u64..1_000).prop_map(Mutation::LowerApplied),
        i().prop_map(Mutation::RemoveWorkflow),
        (i(), any::<bool>()).prop_map(|(w, running)| Mutation::SetStatus(w, running)),
        (i(), prop::option::of(0u64..1_000)).prop_map(|(w, f)| Mutation::SetFinished(w, f)),
        (i(), 0u8..4).prop_map(|(e, s)| Mutation::SetEntryState(e, s)),
        (i(), i()).prop_map(|(e, t)| Mutation::SetEntryTimer(e, t)),
        i().prop_map(Mutation::RenameChild),
        (i(), i(), 0u32..5).prop_map(|(w, p, s)| Mutation::Reparent(w, p, s)),
        (i(), 0usize..4).prop_map(|(w, len)| Mutation::Truncate(w, len)),
        (i(), i()).prop_map(|(s, t)| Mutation::RepointSchedule(s, t)),
        i().prop_map(Mutation::RemoveSchedule),
        (i(), any::<bool>()).prop_map(|(t, exhausted)| Mutation::SetNextId(t, exhausted)),
    ]
}

/// Commands with stamps that never go backwards.
fn history(len: std::ops::Range<usize>) -> impl Strategy<Value = Vec<(u64, Command)>> {
    prop::collection::vec((0u64..40, command()), len)
}

fn pick<T: Clone>(items: &[T], index: Index) -> Option<T> {
    (!items.is_empty()).then(|| items[index.index(items.len())].clone())
}

/// Applies `mutation` to `state`; a mutation that finds nothing to act on does nothing.
#[expect(clippy::too_many_lines, reason = "one arm per mutation")]
fn mutate(state: &mut SchedulerState, mutation: &Mutation) {
    let timer_ids: Vec<u64> = state.timers.in_due_order().map(|(_, id)| id).collect();
    let workflow_ids: Vec<String> = state.workflows.keys().cloned().collect();
    let (running, finished): (Vec<String>, Vec<String>) = workflow_ids
        .iter()
        .cloned()
        .partition(|id| !state.workflows[id].is_finished());
    // Entries of running workflows: what apply acts on.
    let entries: Vec<(String, usize)> = running
        .iter()
        .flat_map(|id| (0..state.workflows[id].journal.len()).map(move |seq| (id.clone(), seq)))
        .collect();
    let mut names: Vec<String> = state.named.keys().cloned().collect();
    names.sort();
    let schedules: Vec<String> = state.schedules.keys().cloned().collect();
    let (by_due, timers, next_id) = state.timers.parts_mut();
    match *mutation {
        Mutation::DeleteTimer(t) => {
            if let Some(id) = pick(&timer_ids, t)
                && let Some(timer) = timers.remove(&id)
            {
                by_due.remove(&(timer.due_ms, id));
            }
        }
        Mutation::DropFromDueIndex(t) => {
            if let Some(id) = pick(&timer_ids, t) {
                by_due.retain(|&(_, i)| i != id);
            }
        }
        Mutation::MoveInDueIndex(t, due_ms) => {
            if let Some(id) = pick(&timer_ids, t) {
                by_due.retain(|&(_, i)| i != id);
                by_due.insert((due_ms, id));
            }
        }
        Mutation::ChangeDue(t, due_ms) => {
            if let Some(id) = pick(&timer_ids, t)
                && let Some(timer) = timers.get_mut(&id)
            {
                by_due.remove(&(timer.due_ms, id));
                timer.due_ms = due_ms;
                by_due.insert((due_ms, id));
            }
        }
        Mutation::Retarget(t, w, seq) => {
            if let (Some(id), Some(workflow)) = (pick(&timer_ids, t), pick(&workflow_ids, w))
                && let Some(timer) = timers.get_mut(&id)
            {
                timer.target = TimerTarget::Entry { workflow, seq };
            }
        }
        Mutation::DropNamed(n) => {
            if let Some(name) = pick(&names, n) {
                state.named.remove(&name);
            }
        }
        Mutation::RepointNamed(n, t) => {
            if let (Some(name), Some(id)) = (pick(&names, n), pick(&timer_ids, t)) {
                state.named.insert(name, id);
            }
        }
        Mutation::FireNamed(n) => {
            if let Some(name) = pick(&names, n) {
                let record = super::FireRecord {
                    id: 0,
                    term: 1,
                    index: 1,
                    due_ms: 0,
                    fired_ms: 0,
                };
                state.fired.insert(name, record);
            }
        }
        Mutation::RaiseFence(w, by) => {
            if let Some(id) = pick(&workflow_ids, w)
                && let Some(workflow) = state.workflows.get_mut(&id)
            {
                workflow.fence += by;
            }
        }
        Mutation::LowerApplied(by) => {
            state.applied_index = state.applied_index.saturating_sub(by);
        }
        Mutation::RemoveWorkflow(w) => {
            if let Some(id) = pick(&running, w) {
                state.workflows.remove(&id);
            }
        }
        Mutation::SetStatus(w, to_running) => {
            if let Some(id) = pick(if to_running { &finished } else { &running }, w)
                && let Some(workflow) = state.workflows.get_mut(&id)
            {
                workflow.status = if to_running {
                    WorkflowStatus::Running
                } else {
                    WorkflowStatus::Completed
                };
            }
        }
        Mutation::SetFinished(w, finished_ms) => {
            if let Some(id) = pick(
                if finished_ms.is_some() {
                    &running
                } else {
                    &finished
                },
                w,
            ) && let Some(workflow) = state.workflows.get_mut(&id)
            {
                workflow.finished_ms = finished_ms;
            }
        }
        Mutation::SetEntryState(e, choice) => {
            if let Some((id, seq)) = pick(&entries, e)
                && let Some(workflow) = state.workflows.get_mut(&id)
            {
                workflow.journal[seq].state = match choice {
                    0 => EntryState::Pending { attempts: 0 },
                    1 => EntryState::TimedOut,
                    2 => EntryState::Done(Outcome::Ok(Vec::new())),
                    _ => EntryState::Done(Outcome::Err("x".into())),
                };
            }
        }
        Mutation::SetEntryTimer(e, t) => {
            let new = pick(&timer_ids, t).unwrap_or(7);
            if let Some((id, seq)) = pick(&entries, e)
                && let Some(workflow) = state.workflows.get_mut(&id)
            {
                match &mut workflow.journal[seq].kind {
                    EntryKind::Sleep { timer } => *timer = new,
                    EntryKind::Signal { timer, .. } => *timer = Some(new),
                    EntryKind::Step { .. } | EntryKind::Call { .. } => {}
                }
            }
        }
        Mutation::RenameChild(e) => {
            if let Some((id, seq)) = pick(&entries, e)
                && let Some(workflow) = state.workflows.get_mut(&id)
                && let EntryKind::Call { child, .. } = &mut workflow.journal[seq].kind
            {
                child.push_str("/x");
            }
        }
        Mutation::Reparent(w, p, seq) => {
            if let (Some(id), Some(parent)) = (pick(&workflow_ids, w), pick(&workflow_ids, p))
                && let Some(workflow) = state.workflows.get_mut(&id)
            {
                workflow.parent = Some((parent, seq));
            }
        }
        Mutation::Truncate(w, len) => {
            if let Some(id) = pick(&workflow_ids, w)
                && let Some(workflow) = state.workflows.get_mut(&id)
            {
                workflow.journal.truncate(len);
            }
        }
        Mutation::RepointSchedule(s, t) => {
            if let (Some(name), Some(id)) = (pick(&schedules, s), pick(&timer_ids, t))
                && let Some(schedule) = state.schedules.get_mut(&name)
            {
                schedule.timer = id;
            }
        }
        Mutation::RemoveSchedule(s) => {
            if let Some(name) = pick(&schedules, s) {
                state.schedules.remove(&name);
            }
        }
        Mutation::SetNextId(_, true) => *next_id = u64::MAX,
        Mutation::SetNextId(t, false) => {
            if let Some(id) = pick(&timer_ids, t) {
                *next_id = id - 1;
            }
        }
    }
}

/// `command` with its fence resolved to the workflow's current one, [`NEXT`] to the next
/// entry, and a fire naming every pending timer.
fn resolve(machine: &SchedulerMachine, mut command: Command) -> Command {
    let state = machine.read();
    if let Command::FireTimers { ids } = &mut command {
        *ids = state.timers().in_due_order().map(|(_, id)| id).collect();
    }
    let current = command
        .run_fence()
        .and_then(|(workflow, _)| state.workflow(workflow))
        .map(|w| (w.fence, u32::try_from(w.journal.len()).unwrap_or(NEXT)));
    if let Some((current, next)) = current {
        match &mut command {
            Command::Step { fence, seq, .. }
            | Command::Sleep { fence, seq, .. }
            | Command::WaitSignal { fence, seq, .. }
            | Command::Call { fence, seq, .. } => {
                *fence = current;
                if *seq == NEXT {
                    *seq = next;
                }
            }
            Command::Finish { fence, .. } => *fence = current,
            _ => {}
        }
    }
    command
}

/// Commands that touch everything a state holds: every entry of every workflow (each
/// journal command at each sequence number, a signal and a claim); at the `end`, also a
/// cancel of each workflow, every timer name and schedule, and a far-future fire and expiry.
#[expect(clippy::too_many_lines, reason = "one command per kind")]
fn sweep(machine: &SchedulerMachine, end: bool) -> Vec<(u64, Command)> {
    let state = machine.read();
    let mut sweep = Vec::new();
    for (id, workflow) in &state.workflows {
        let workflow_id = || id.clone();
        let seqs = 0..=u32::try_from(workflow.journal.len()).expect("journals are short here");
        for seq in seqs {
            sweep.extend([
                Command::Step {
                    workflow: workflow_id(),
                    fence: 0,
                    seq,
                    name: "a".into(),
                    record: StepRecord::Done(Outcome::Ok(Vec::new())),
                },
                Command::Sleep {
                    workflow: workflow_id(),
                    fence: 0,
                    seq,
                    due: Due::After { delay_ms: 1 },
                },
                Command::WaitSignal {
                    workflow: workflow_id(),
                    fence: 0,
                    seq,
                    signal: "s".into(),
                    timeout_ms: Some(1),
                },
                Command::Call {
                    workflow: workflow_id(),
                    fence: 0,
                    seq,
                    kind: "k".into(),
                    input: Vec::new(),
                },
            ]);
        }
        sweep.extend([
            Command::Signal {
                workflow: workflow_id(),
                signal: "s".into(),
                payload: Vec::new(),
            },
            Command::Claim {
                workflow: workflow_id(),
                owner: Owner::Worker { worker: 2 },
            },
        ]);
        if end {
            sweep.push(Command::Cancel {
                workflow: workflow_id(),
                reason: "sweep".into(),
            });
        }
    }
    if !end {
        return sweep.into_iter().map(|c| (0, c)).collect();
    }
    for name in TIMERS {
        sweep.push(Command::ScheduleTimer {
            name: name.into(),
            due: Due::After { delay_ms: 1 },
            payload: Vec::new(),
        });
    }
    for name in SCHEDULES {
        sweep.push(Command::RegisterSchedule {
            name: name.into(),
            cron: "* * * * *".into(),
            kind: "k".into(),
            input: Vec::new(),
        });
    }
    sweep.push(Command::FireTimers { ids: Vec::new() });
    sweep.push(Command::Expire { retention_ms: 0 });
    let mut sweep: Vec<(u64, Command)> = sweep.into_iter().map(|c| (0, c)).collect();
    // The fire and the expiry come after everything else is due.
    let last = sweep.len() - 2;
    sweep[last].0 = FAR_MS;
    sweep
}

/// Applies `commands` from index `first`, stamps advancing from `stamp_ms`; returns the
/// last stamp.
fn apply_all(
    machine: &mut SchedulerMachine,
    first: u64,
    mut stamp_ms: u64,
    commands: &[(u64, Command)],
) -> u64 {
    for (index, (advance, command)) in (first..).zip(commands) {
        stamp_ms += advance;
        let stamped = Stamped {
            stamp_ms,
            mono: None,
            command: resolve(machine, command.clone()),
        };
        machine.apply(
            AppliedAt { term: 1, index },
            &Bytes::from(command::encode(&stamped)),
        );
    }
    stamp_ms
}

/// One corruption of a snapshot and what is applied after it.
#[derive(Debug, Clone)]
struct Trial {
    mutations: Vec<Mutation>,
    /// Random commands after the restore.
    after: Vec<(u64, Command)>,
    /// Where far-future fires and expiries go among them, and the expiries' retention.
    far: Vec<(Index, Index, u64)>,
}

fn trial() -> impl Strategy<Value = Trial> {
    (
        prop::collection::vec(mutation(), 1..4),
        history(1..40),
        prop::collection::vec((any::<Index>(), any::<Index>(), 0u64..200), 1..4),
    )
        .prop_map(|(mutations, after, far)| Trial {
            mutations,
            after,
            far,
        })
}

/// Corrupts `snapshot` by `trial`, restores it, and applies the trial's commands from index
/// `next`; returns the panic's message if a restored state panicked.
fn run_trial(snapshot: &[u8], trial: &Trial, next: u64, stamp_ms: u64) -> Result<(), String> {
    let (mut state, digest) = codec::decode(snapshot).expect("a written snapshot decodes");
    for mutation in &trial.mutations {
        mutate(&mut state, mutation);
    }
    let corrupted = codec::encode(state, digest);
    let mut restored = SchedulerMachine::new();
    if let Err(error) = restored.restore(&mut corrupted.as_slice()) {
        assert!(
            matches!(
                SnapshotError::of(&error),
                Some(SnapshotError::Inconsistent(_))
            ),
            "refused with another error: {error}"
        );
        return Ok(());
    }
    // What Raft would apply next: indexes after the snapshot's, with far-future fires
    // and expiries among random commands.
    let mut tail = trial.after.clone();
    for &(fire_at, expire_at, retention_ms) in &trial.far {
        let fire_at = fire_at.index(tail.len() + 1);
        tail.insert(fire_at, (FAR_MS, Command::FireTimers { ids: Vec::new() }));
        let expire_at = expire_at.index(tail.len() + 1);
        tail.insert(expire_at, (0, Command::Expire { retention_ms }));
    }
    catch_unwind(AssertUnwindSafe(|| {
        let (mut next, mut stamp_ms) = (next, stamp_ms);
        for part in 0..3 {
            // Each sweep is built from the state it starts from.
            let commands = match part {
                0 => sweep(&restored, false),
                1 => tail.clone(),
                _ => sweep(&restored, true),
            };
            stamp_ms = apply_all(&mut restored, next, stamp_ms, &commands);
            next += commands.len() as u64;
        }
    }))
    .map_err(|panic| {
        panic
            .downcast_ref::<String>()
            .cloned()
            .unwrap_or_else(|| "a panic".to_owned())
    })
}

proptest! {
    // Cases follow PROPTEST_CASES (256 by default); each tries several corruptions of one
    // built state, as building it is the expensive part.
    #[test]
    fn a_corrupted_snapshot_is_refused_or_applies_without_a_panic(
        before in history(10..80),
        trials in prop::collection::vec(trial(), 4),
    ) {
        let mut machine = SchedulerMachine::new();
        apply_all(&mut machine, 1, 0, &[(0, Command::DeclareKinds {
            kinds: vec![("k".into(), "v".into())],
        })]);
        let stamp_ms = apply_all(&mut machine, 2, 0, &before);
        let mut snapshot = Vec::new();
        machine.write_snapshot(&mut snapshot).expect("snapshot");
        let next = before.len() as u64 + 2;
        for trial in &trials {
            let applied = run_trial(&snapshot, trial, next, stamp_ms);
            prop_assert!(
                applied.is_ok(),
                "an accepted snapshot panicked a replica ({}); mutations {:?}",
                applied.unwrap_err(),
                trial.mutations
            );
        }
    }
}
