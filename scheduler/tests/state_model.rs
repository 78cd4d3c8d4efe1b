//! Property tests of the scheduler state machine: random command sequences, checked against
//! what the model says must hold — each step recorded once (its first outcome never
//! changes), each timer fired at most once and never before its due time, identical replicas
//! and snapshots.

use std::collections::{BTreeMap, BTreeSet};

use bytes::Bytes;
use keel_raft::application::{Application, AppliedAt};
use keel_scheduler::machine::SchedulerMachine;
use keel_scheduler::state::EntryKind;
use keel_scheduler::{Command, Due, EntryState, Outcome, Owner, Stamped, StepRecord};
use proptest::prelude::*;

const WORKFLOWS: [&str; 3] = ["w0", "w1", "w2"];
const TIMERS: [&str; 4] = ["t0", "t1", "t2", "t3"];

fn workflow() -> impl Strategy<Value = String> {
    prop::sample::select(&WORKFLOWS[..]).prop_map(str::to_owned)
}

/// A run's journal command; its `fence` is still to be resolved against the state: 0 means
/// the workflow's current fence, anything else a stale one.
fn journal_command() -> impl Strategy<Value = Command> {
    prop_oneof![
        (
            workflow(),
            0u64..2,
            0u32..4,
            prop::sample::select(vec!["a", "b"]),
            any::<u8>()
        )
            .prop_map(|(workflow, fence, seq, name, value)| Command::Step {
                workflow,
                fence,
                seq,
                name: name.into(),
                record: StepRecord::Done(Outcome::Ok(vec![value])),
            }),
        (workflow(), 0u64..2, 0u32..4, 0u64..60).prop_map(|(workflow, fence, seq, delay_ms)| {
            Command::Sleep {
                workflow,
                fence,
                seq,
                due: Due::After { delay_ms },
            }
        }),
        (workflow(), 0u64..2, 0u32..4, prop::option::of(0u64..60)).prop_map(
            |(workflow, fence, seq, timeout_ms)| Command::WaitSignal {
                workflow,
                fence,
                seq,
                signal: "s".into(),
                timeout_ms,
            }
        ),
        (workflow(), 0u64..2, 0u32..4, 1u32..3).prop_map(|(workflow, fence, seq, attempt)| {
            Command::Step {
                workflow,
                fence,
                seq,
                name: "a".into(),
                record: StepRecord::AttemptFailed {
                    attempt,
                    error: "e".into(),
                },
            }
        }),
        (workflow(), 0u64..2, 0u32..4).prop_map(|(workflow, fence, seq)| Command::Call {
            workflow,
            fence,
            seq,
            kind: "k".into(),
            input: Vec::new(),
        }),
        (workflow(), 0u64..2).prop_map(|(workflow, fence)| Command::Finish {
            workflow,
            fence,
            outcome: Outcome::Ok(Vec::new()),
        }),
    ]
}

/// A command that is not a run's journal command.
fn other_command() -> impl Strategy<Value = Command> {
    prop_oneof![
        workflow().prop_map(|id| Command::Start {
            id,
            kind: "k".into(),
            input: Vec::new(),
        }),
        workflow().prop_map(|workflow| Command::Claim {
            workflow,
            owner: Owner::Worker { worker: 1 },
        }),
        (workflow(), any::<u8>()).prop_map(|(workflow, p)| Command::Signal {
            workflow,
            signal: "s".into(),
            payload: vec![p],
        }),
        (0u64..200).prop_map(|retention_ms| Command::Expire { retention_ms }),
        workflow().prop_map(|workflow| Command::Cancel {
            workflow,
            reason: "test".into(),
        }),
        (prop::sample::select(&TIMERS[..]), 0u64..100, any::<bool>()).prop_map(
            |(name, ms, relative)| Command::ScheduleTimer {
                name: name.into(),
                due: if relative {
                    Due::After { delay_ms: ms }
                } else {
                    Due::At { at_ms: ms * 10 }
                },
                payload: Vec::new(),
            }
        ),
        prop::collection::vec(1u64..30, 0..8).prop_map(|ids| Command::FireTimers { ids }),
    ]
}

fn command() -> impl Strategy<Value = Command> {
    prop_oneof![journal_command(), other_command()]
}

/// Commands with stamps that never go backwards (as one leader's clock would stamp them).
fn history() -> impl Strategy<Value = Vec<Stamped>> {
    prop::collection::vec((0u64..40, command()), 1..120).prop_map(|steps| {
        let mut stamp_ms = 0;
        steps
            .into_iter()
            .map(|(advance, command)| {
                stamp_ms += advance;
                Stamped {
                    stamp_ms,
                    mono: None,
                    command,
                }
            })
            .collect()
    })
}

fn encode(stamped: &Stamped) -> Bytes {
    // The machine decodes what the proposer encodes; the test goes through the same codec by
    // proposing to a machine through the Application interface.
    Bytes::from(keel_scheduler::encode_command(stamped))
}

fn machine() -> SchedulerMachine {
    let mut machine = SchedulerMachine::new();
    let declare = Stamped {
        stamp_ms: 0,
        mono: None,
        command: Command::DeclareKinds {
            kinds: vec![("k".into(), "v".into())],
        },
    };
    machine.apply(AppliedAt { term: 1, index: 1 }, &encode(&declare));
    machine
}

/// What the model remembers across commands.
#[derive(Default)]
struct Model {
    /// First outcome seen per `(workflow, seq)`.
    outcomes: BTreeMap<(String, usize), EntryState>,
    /// Due time of each pending sleep entry.
    sleeps: BTreeMap<(String, usize), u64>,
    journal_lens: BTreeMap<String, usize>,
    fired: BTreeSet<String>,
}

impl Model {
    fn observe(&mut self, machine: &SchedulerMachine, stamped: &Stamped) {
        let state = machine.read();
        for id in WORKFLOWS {
            let Some(workflow) = state.workflow(id) else {
                // Expired (or never started): a later start is a new workflow.
                self.journal_lens.remove(id);
                self.outcomes.retain(|(w, _), _| w != id);
                self.sleeps.retain(|(w, _), _| w != id);
                continue;
            };
            let len = self.journal_lens.entry(id.to_owned()).or_default();
            assert!(workflow.journal.len() >= *len, "a journal never shrinks");
            *len = workflow.journal.len();
            for (seq, entry) in workflow.journal.iter().enumerate() {
                let key = (id.to_owned(), seq);
                if let (EntryKind::Sleep { .. }, EntryState::Pending { .. }) =
                    (&entry.kind, &entry.state)
                {
                    if let (
                        Command::Sleep {
                            due: Due::After { delay_ms },
                            ..
                        },
                        false,
                    ) = (&stamped.command, self.sleeps.contains_key(&key))
                    {
                        self.sleeps.insert(key.clone(), stamped.stamp_ms + delay_ms);
                    }
                    continue;
                }
                if matches!(entry.state, EntryState::Pending { .. }) {
                    continue;
                }
                if matches!(entry.kind, EntryKind::Sleep { .. })
                    && !self.outcomes.contains_key(&key)
                    && let Some(due) = self.sleeps.get(&key)
                {
                    assert!(
                        stamped.stamp_ms >= *due,
                        "sleep {key:?} due at {due} ended at {}",
                        stamped.stamp_ms
                    );
                }
                match self.outcomes.get(&key) {
                    Some(first) => assert_eq!(first, &entry.state, "entry {key:?} changed"),
                    None => {
                        self.outcomes.insert(key, entry.state.clone());
                    }
                }
            }
        }
    }

    /// Forgets fired names whose fire record expired (the name may be scheduled anew).
    fn forget_expired_fires(&mut self, machine: &SchedulerMachine) {
        let state = machine.read();
        self.fired.retain(|name| state.named_timer(name).is_some());
    }

    fn observe_fires(
        &mut self,
        fires: &mut tokio::sync::broadcast::Receiver<keel_scheduler::machine::NamedFire>,
    ) {
        while let Ok(fire) = fires.try_recv() {
            assert!(
                self.fired.insert(fire.name.clone()),
                "timer {} fired twice",
                fire.name
            );
            assert!(
                fire.record.fired_ms >= fire.record.due_ms,
                "timer {} fired at {} before its due time {}",
                fire.name,
                fire.record.fired_ms,
                fire.record.due_ms
            );
        }
    }
}

/// `stamped` with its journal command's fence choice resolved against `machine`'s state.
fn resolve(machine: &SchedulerMachine, stamped: &Stamped) -> Stamped {
    let mut stamped = stamped.clone();
    let current = stamped
        .command
        .run_fence()
        .and_then(|(workflow, _)| machine.read().workflow(workflow).map(|w| w.fence));
    if let (
        Some(current),
        Command::Step { fence, .. }
        | Command::Sleep { fence, .. }
        | Command::WaitSignal { fence, .. }
        | Command::Call { fence, .. }
        | Command::Finish { fence, .. },
    ) = (current, &mut stamped.command)
    {
        *fence = current.saturating_sub(*fence);
    }
    stamped
}

fn run(history: &[Stamped]) -> SchedulerMachine {
    let mut machine = machine();
    for (i, stamped) in history.iter().enumerate() {
        let at = AppliedAt {
            term: 1,
            index: i as u64 + 2,
        };
        let stamped = resolve(&machine, stamped);
        machine.apply(at, &encode(&stamped));
    }
    machine
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn steps_record_once_timers_fire_once_and_never_early(history in history()) {
        let mut machine = machine();
        let mut fires = machine.watch_fires();
        let mut model = Model::default();
        for (i, stamped) in history.iter().enumerate() {
            let at = AppliedAt { term: 1, index: i as u64 + 2 };
            let stamped = resolve(&machine, stamped);
            machine.apply(at, &encode(&stamped));
            machine.read().assert_consistent();
            model.observe(&machine, &stamped);
            model.forget_expired_fires(&machine);
            model.observe_fires(&mut fires);
        }
    }

    #[test]
    fn replicas_and_snapshots_agree(history in history()) {
        let first = run(&history);
        let second = run(&history);
        prop_assert_eq!(first.digest(), second.digest());
        prop_assert_eq!(&*first.read(), &*second.read());
        let mut snapshot = Vec::new();
        first.write_snapshot(&mut snapshot).expect("snapshot");
        let mut restored = SchedulerMachine::new();
        restored.restore(&mut snapshot.as_slice()).expect("restore");
        prop_assert_eq!(restored.digest(), first.digest());
        prop_assert_eq!(&*restored.read(), &*first.read());
    }
}

#[test]
fn a_corrupt_snapshot_is_refused() {
    let machine = run(&[Stamped {
        stamp_ms: 1,
        mono: None,
        command: Command::Start {
            id: "w0".into(),
            kind: "k".into(),
            input: Vec::new(),
        },
    }]);
    let mut snapshot = Vec::new();
    machine.write_snapshot(&mut snapshot).expect("snapshot");
    let mut restored = SchedulerMachine::new();
    assert!(
        restored
            .restore(&mut &snapshot[..snapshot.len() / 2])
            .is_err()
    );
    assert!(restored.read().workflow("w0").is_none());
}
