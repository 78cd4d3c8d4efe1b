//! Property test: a snapshot with a valid checksum but a corrupted state never crashes a
//! replica. It builds a real state from random commands, snapshots it, decodes the state,
//! breaks one to three cross-references (or changes a field harmlessly), re-encodes it with a
//! valid checksum, and restores it through [`SchedulerMachine::restore`]. The restore either
//! refuses it with [`SnapshotError::Inconsistent`], or accepts it, and then a bounded run of
//! further random commands — fires at far-future stamps, expiry, cancels, claims, steps —
//! applies without a panic (debug builds also assert the consistency after each command, so
//! an accepted state that apply would break is caught as a panic too).
//!
//! It lives in the crate, not in `tests/`, because it edits the state's private fields. The
//! corruptions are in `mutations`, those of calls between clusters (and their commands and
//! sweep) in `remote`; this module builds the states and drives the trials.

mod mutations;
mod remote;

use std::panic::{AssertUnwindSafe, catch_unwind};

use bytes::Bytes;
use keel_raft::application::{Application, AppliedAt};
use proptest::prelude::*;
use proptest::sample::Index;

use self::mutations::{Mutation, mutate, mutation};
use crate::command::{self, Command, Due, Outcome, Owner, Stamped, StepRecord};
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
        4 => remote::command(),
    ]
}

/// Commands with stamps that never go backwards.
fn history(len: std::ops::Range<usize>) -> impl Strategy<Value = Vec<(u64, Command)>> {
    prop::collection::vec((0u64..40, command()), len)
}

/// `command` with its fence resolved to the workflow's current one, [`NEXT`] to the next
/// entry, and a fire naming every pending timer.
fn resolve(machine: &SchedulerMachine, mut command: Command) -> Command {
    let state = machine.read();
    if let Command::FireTimers { ids } = &mut command {
        *ids = state.timers().in_due_order().map(|(_, id)| id).collect();
    }
    remote::resolve(&state, &mut command);
    let current = command
        .run_fence()
        .and_then(|(workflow, _)| state.workflow(workflow))
        .map(|w| (w.fence, u32::try_from(w.journal.len()).unwrap_or(NEXT)));
    if let Some((current, next)) = current {
        match &mut command {
            Command::Step { fence, seq, .. }
            | Command::Sleep { fence, seq, .. }
            | Command::WaitSignal { fence, seq, .. }
            | Command::Call { fence, seq, .. }
            | Command::RemoteCall { fence, seq, .. } => {
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
    sweep.extend(remote::sweep(&state));
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
