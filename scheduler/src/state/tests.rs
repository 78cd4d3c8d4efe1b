//! Unit tests of the scheduler's transition function.

use super::*;
use crate::command::StepRecord;

const KIND: &str = "agent";

/// A state with kinds declared and a helper to apply commands at increasing indexes.
struct Harness {
    state: SchedulerState,
    index: u64,
    effects: Vec<Effect>,
}

impl Harness {
    fn new() -> Self {
        let mut harness = Self {
            state: SchedulerState::default(),
            index: 0,
            effects: Vec::new(),
        };
        harness.apply(
            0,
            Command::DeclareKinds {
                kinds: vec![(KIND.into(), "v1".into()), ("child".into(), "v1".into())],
            },
        );
        harness
    }

    fn apply(&mut self, stamp_ms: u64, command: Command) -> Answer {
        self.index += 1;
        self.effects.clear();
        let answer = self.state.apply(
            AppliedAt {
                term: 3,
                index: self.index,
            },
            Stamped {
                stamp_ms,
                mono: None,
                command,
            },
            &mut self.effects,
        );
        self.state.assert_consistent();
        answer
    }

    fn start(&mut self, id: &str) -> Answer {
        self.apply(
            100,
            Command::Start {
                id: id.into(),
                kind: KIND.into(),
                input: b"in".to_vec(),
            },
        )
    }

    fn step(&mut self, id: &str, fence: u64, seq: u32, name: &str, value: &str) -> Answer {
        self.apply(
            200,
            Command::Step {
                workflow: id.into(),
                fence,
                seq,
                name: name.into(),
                record: StepRecord::Done(Outcome::Ok(value.as_bytes().to_vec())),
            },
        )
    }

    fn fence(&self, id: &str) -> u64 {
        self.state.workflow(id).expect("workflow").fence
    }

    fn journal(&self, id: &str) -> &[JournalEntry] {
        &self.state.workflow(id).expect("workflow").journal
    }

    fn fire_all(&mut self, stamp_ms: u64) -> Vec<u64> {
        let ids: Vec<u64> = self
            .state
            .timers()
            .in_due_order()
            .map(|(_, id)| id)
            .collect();
        match self.apply(stamp_ms, Command::FireTimers { ids }) {
            Answer::Fired { ids } => ids,
            other => panic!("unexpected answer {other:?}"),
        }
    }
}

fn done(value: &str) -> EntryState {
    EntryState::Done(Outcome::Ok(value.as_bytes().to_vec()))
}

#[test]
fn start_is_idempotent_by_id_and_refuses_unknown_kinds_and_big_inputs() {
    let mut h = Harness::new();
    assert_eq!(
        h.start("w"),
        Answer::Started {
            fence: 2,
            created: true,
            status: WorkflowStatus::Running
        }
    );
    assert!(matches!(
        h.effects[..],
        [Effect::Runnable {
            fence: 2,
            term: 3,
            ..
        }]
    ));
    assert_eq!(
        h.start("w"),
        Answer::Started {
            fence: 2,
            created: false,
            status: WorkflowStatus::Running
        }
    );
    let unknown = h.apply(
        1,
        Command::Start {
            id: "x".into(),
            kind: "nope".into(),
            input: Vec::new(),
        },
    );
    assert_eq!(
        unknown,
        Answer::Rejected(Rejection::UnknownKind("nope".into()))
    );
    let big = h.apply(
        1,
        Command::Start {
            id: "y".into(),
            kind: KIND.into(),
            input: vec![0; PAYLOAD_MAX_BYTES + 1],
        },
    );
    assert!(matches!(big, Answer::Rejected(Rejection::TooLarge { .. })));
    let slash = h.apply(
        1,
        Command::Start {
            id: "a/b".into(),
            kind: KIND.into(),
            input: Vec::new(),
        },
    );
    assert!(matches!(slash, Answer::Rejected(Rejection::Invalid { .. })));
    assert!(h.state.workflow("x").is_none() && h.state.workflow("y").is_none());
}

#[test]
fn the_first_step_record_wins_and_a_second_is_rejected_with_it() {
    let mut h = Harness::new();
    h.start("w");
    assert_eq!(
        h.step("w", 2, 0, "fetch", "first"),
        Answer::Entry(done("first"))
    );
    assert_eq!(
        h.step("w", 2, 0, "fetch", "second"),
        Answer::Rejected(Rejection::AlreadyRecorded {
            seq: 0,
            outcome: Outcome::Ok(b"first".to_vec())
        })
    );
    assert_eq!(h.journal("w")[0].state, done("first"));
}

#[test]
fn stale_fences_non_determinism_and_gaps_are_rejected() {
    let mut h = Harness::new();
    h.start("w");
    let claimed = h.apply(
        150,
        Command::Claim {
            workflow: "w".into(),
            owner: Owner::Leader { node: 2, term: 4 },
        },
    );
    assert_eq!(claimed, Answer::Claimed { fence: 3 });
    assert_eq!(
        h.step("w", 2, 0, "fetch", "old run"),
        Answer::Rejected(Rejection::StaleFence {
            fence: 2,
            current: 3
        })
    );
    h.step("w", 3, 0, "fetch", "page");
    assert!(matches!(
        h.step("w", 3, 0, "parse", "x"),
        Answer::Rejected(Rejection::NonDeterminism { seq: 0, .. })
    ));
    assert_eq!(
        h.step("w", 3, 5, "later", "x"),
        Answer::Rejected(Rejection::OutOfOrder {
            seq: 5,
            expected: 1
        })
    );
    assert_eq!(h.journal("w").len(), 1);
}

#[test]
fn each_journal_entry_records_the_fence_of_the_run_that_created_it() {
    let mut h = Harness::new();
    h.start("w");
    h.step("w", 2, 0, "fetch", "page");
    let failed = Command::Step {
        workflow: "w".into(),
        fence: 2,
        seq: 1,
        name: "parse".into(),
        record: StepRecord::AttemptFailed {
            attempt: 1,
            error: "timeout".into(),
        },
    };
    h.apply(150, failed);
    let claim = Command::Claim {
        workflow: "w".into(),
        owner: Owner::Leader { node: 2, term: 4 },
    };
    let Answer::Claimed { fence } = h.apply(160, claim) else {
        panic!("claim refused");
    };
    // The new run finishes the step the old one began (the entry keeps its creator's
    // fence); the old run can record nothing more.
    h.step("w", fence, 1, "parse", "tree");
    assert!(matches!(
        h.step("w", 2, 2, "store", "x"),
        Answer::Rejected(Rejection::StaleFence { .. })
    ));
    h.step("w", fence, 2, "store", "ok");
    let fences: Vec<u64> = h.journal("w").iter().map(|entry| entry.fence).collect();
    assert_eq!(fences, [2, 2, fence]);

    // A journal whose fences go back, or beyond the workflow's, is inconsistent.
    let mut state = h.state.clone();
    let workflow = state.workflows.get_mut("w").expect("w");
    workflow.journal[0].fence = fence;
    assert!(state.consistency().is_err());
    let mut state = h.state.clone();
    state.workflows.get_mut("w").expect("w").journal[2].fence = fence + 1;
    assert!(state.consistency().is_err());
}

#[test]
fn failed_attempts_are_counted_then_the_outcome_recorded() {
    let mut h = Harness::new();
    h.start("w");
    let attempt = |attempt| Command::Step {
        workflow: "w".into(),
        fence: 2,
        seq: 0,
        name: "call-api".into(),
        record: StepRecord::AttemptFailed {
            attempt,
            error: "503".into(),
        },
    };
    assert_eq!(
        h.apply(1, attempt(1)),
        Answer::Entry(EntryState::Pending { attempts: 1 })
    );
    assert_eq!(
        h.apply(1, attempt(2)),
        Answer::Entry(EntryState::Pending { attempts: 2 })
    );
    assert_eq!(
        h.apply(1, attempt(1)),
        Answer::Entry(EntryState::Pending { attempts: 2 })
    );
    assert_eq!(
        h.step("w", 2, 0, "call-api", "ok"),
        Answer::Entry(done("ok"))
    );
}

#[test]
fn a_sleep_fires_once_and_never_before_due() {
    let mut h = Harness::new();
    h.start("w");
    let slept = h.apply(
        1_000,
        Command::Sleep {
            workflow: "w".into(),
            fence: 2,
            seq: 0,
            due: Due::After { delay_ms: 500 },
        },
    );
    assert_eq!(slept, Answer::Entry(EntryState::Pending { attempts: 0 }));
    assert!(h.effects.contains(&Effect::TimerAdded {
        id: 1,
        relative: true,
        proposed: None,
        stamp_ms: 1_000
    }));
    assert!(h.fire_all(1_499).is_empty(), "not due before 1500");
    assert_eq!(h.journal("w")[0].state, EntryState::Pending { attempts: 0 });
    assert_eq!(h.fire_all(1_500), [1]);
    assert_eq!(h.journal("w")[0].state, done(""));
    assert_eq!(
        h.apply(2_000, Command::FireTimers { ids: vec![1] }),
        Answer::Fired { ids: Vec::new() },
        "a timer fires once"
    );
}

#[test]
fn signals_sent_before_the_wait_are_buffered_and_timeouts_resolve_waits() {
    let mut h = Harness::new();
    h.start("w");
    let signal = |payload: &str| Command::Signal {
        workflow: "w".into(),
        signal: "approve".into(),
        payload: payload.as_bytes().to_vec(),
    };
    assert_eq!(h.apply(1, signal("early")), Answer::Done);
    let wait = |seq, timeout_ms| Command::WaitSignal {
        workflow: "w".into(),
        fence: 2,
        seq,
        signal: "approve".into(),
        timeout_ms,
    };
    assert_eq!(h.apply(2, wait(0, None)), Answer::Entry(done("early")));
    assert_eq!(
        h.apply(3, wait(1, Some(100))),
        Answer::Entry(EntryState::Pending { attempts: 0 })
    );
    assert_eq!(h.apply(4, signal("late")), Answer::Done);
    assert_eq!(h.journal("w")[1].state, done("late"));
    assert!(h.state.timers().is_empty(), "the timeout timer is gone");
    h.apply(5, wait(2, Some(100)));
    assert_eq!(h.fire_all(105).len(), 1);
    assert_eq!(h.journal("w")[2].state, EntryState::TimedOut);
    let unknown = h.apply(
        6,
        Command::Signal {
            workflow: "ghost".into(),
            signal: "approve".into(),
            payload: Vec::new(),
        },
    );
    assert_eq!(
        unknown,
        Answer::Rejected(Rejection::UnknownWorkflow("ghost".into()))
    );
}

#[test]
fn a_child_result_resolves_the_parent_call_and_cancel_cascades() {
    let mut h = Harness::new();
    h.start("p");
    let call = |seq| Command::Call {
        workflow: "p".into(),
        fence: 2,
        seq,
        kind: "child".into(),
        input: b"x".to_vec(),
    };
    assert_eq!(
        h.apply(1, call(0)),
        Answer::Entry(EntryState::Pending { attempts: 0 })
    );
    assert!(h.effects.contains(&Effect::Runnable {
        workflow: "p/0".into(),
        fence: 3,
        term: 3,
        owner: None
    }));
    h.apply(
        2,
        Command::Finish {
            workflow: "p/0".into(),
            fence: h.fence("p/0"),
            outcome: Outcome::Ok(b"child result".to_vec()),
        },
    );
    assert_eq!(h.journal("p")[0].state, done("child result"));
    h.apply(3, call(1));
    assert_eq!(
        h.apply(
            4,
            Command::Cancel {
                workflow: "p".into(),
                reason: "stop".into()
            }
        ),
        Answer::Done
    );
    assert_eq!(
        h.state.workflow("p/1").map(|w| w.status),
        Some(WorkflowStatus::Cancelled),
        "the running child is cancelled with its parent"
    );
    assert_eq!(
        h.apply(
            5,
            Command::Cancel {
                workflow: "p".into(),
                reason: "again".into()
            }
        ),
        Answer::Rejected(Rejection::Finished(WorkflowStatus::Cancelled))
    );
}

#[test]
fn named_timers_are_idempotent_by_name_and_record_their_fence_token() {
    let mut h = Harness::new();
    let schedule = |name: &str| Command::ScheduleTimer {
        name: name.into(),
        due: Due::At { at_ms: 5_000 },
        payload: b"p".to_vec(),
    };
    assert_eq!(
        h.apply(1, schedule("t")),
        Answer::Timer {
            id: 1,
            due_ms: 5_000,
            created: true
        }
    );
    assert_eq!(
        h.apply(2, schedule("t")),
        Answer::Timer {
            id: 1,
            due_ms: 5_000,
            created: false
        }
    );
    h.fire_all(5_000);
    let fired_at = h.index;
    assert!(matches!(
        &h.effects[..],
        [Effect::TimerRemoved { id: 1 }, Effect::NamedFired { record, .. }] if record.index == fired_at && record.term == 3
    ));
    assert!(matches!(h.state.named_timer("t"), Some(Err(record)) if record.fired_ms == 5_000));
    assert!(matches!(
        h.apply(6_000, schedule("t")),
        Answer::Timer { created: false, .. }
    ));
    assert!(
        h.state.timers().is_empty(),
        "a fired name is not rescheduled"
    );
}

#[test]
fn cron_schedules_start_workflows_and_refuse_bad_expressions() {
    let mut h = Harness::new();
    let register = |cron: &str| Command::RegisterSchedule {
        name: "nightly".into(),
        cron: cron.into(),
        kind: KIND.into(),
        input: Vec::new(),
    };
    assert!(matches!(
        h.apply(0, register("every night")),
        Answer::Rejected(Rejection::InvalidCron { .. })
    ));
    // 2026-01-01T00:00:00Z, every minute.
    let midnight = 1_767_225_600_000;
    assert_eq!(h.apply(midnight, register("* * * * *")), Answer::Done);
    assert!(h.fire_all(midnight + 59_999).is_empty());
    assert_eq!(h.fire_all(midnight + 60_000).len(), 1);
    let id = format!("nightly@{}", midnight + 60_000);
    assert!(
        h.state.workflow(&id).is_some(),
        "the occurrence started {id}"
    );
    let next: Vec<u64> = h
        .state
        .timers()
        .in_due_order()
        .map(|(due, _)| due)
        .collect();
    assert_eq!(next, [midnight + 120_000]);
}

#[test]
fn expiry_forgets_only_workflows_finished_before_the_retention() {
    let mut h = Harness::new();
    h.start("old");
    h.start("new");
    h.start("running");
    let finish = |id: &str, fence| Command::Finish {
        workflow: id.into(),
        fence,
        outcome: Outcome::Ok(Vec::new()),
    };
    let (old, new) = (h.fence("old"), h.fence("new"));
    h.apply(1_000, finish("old", old));
    h.apply(5_000, finish("new", new));
    assert_eq!(
        h.apply(
            6_000,
            Command::Expire {
                retention_ms: 2_000
            }
        ),
        Answer::Expired {
            workflows: 1,
            fires: 0
        }
    );
    assert!(h.state.workflow("old").is_none());
    assert!(h.state.workflow("new").is_some() && h.state.workflow("running").is_some());
}

#[test]
fn an_invalid_cron_expression_is_refused_at_registration_identically_on_every_replica() {
    let (mut first, mut second) = (Harness::new(), Harness::new());
    for cron in ["every night", "0 0 L * *", "0 0 30 2 *", "61 * * * *"] {
        let register = || Command::RegisterSchedule {
            name: "nightly".into(),
            cron: cron.into(),
            kind: KIND.into(),
            input: Vec::new(),
        };
        let answer = first.apply(1_000, register());
        assert!(
            matches!(&answer, Answer::Rejected(Rejection::InvalidCron { cron: c, .. }) if c == cron),
            "{cron}: {answer:?}"
        );
        assert_eq!(second.apply(1_000, register()), answer, "{cron}");
    }
    assert_eq!(first.state, second.state);
    assert!(first.state.schedules.is_empty() && first.state.timers().is_empty());
}

#[test]
fn firing_a_schedule_reads_the_spec_parsed_at_registration_never_the_expression() {
    let mut h = Harness::new();
    // 2026-01-01T00:00:00Z, every five minutes.
    let midnight = 1_767_225_600_000;
    let register = Command::RegisterSchedule {
        name: "often".into(),
        cron: "*/5 * * * *".into(),
        kind: KIND.into(),
        input: Vec::new(),
    };
    assert_eq!(h.apply(midnight, register), Answer::Done);
    // Were the expression parsed again at the fire, this would not parse (and a parser
    // that changed would compute other times).
    h.state.schedules.get_mut("often").expect("registered").cron = "not cron".into();
    assert_eq!(h.fire_all(midnight + 300_000).len(), 1);
    assert!(
        h.state
            .workflow(&format!("often@{}", midnight + 300_000))
            .is_some()
    );
    let next: Vec<u64> = h
        .state
        .timers()
        .in_due_order()
        .map(|(due, _)| due)
        .collect();
    assert_eq!(next, [midnight + 600_000]);
}

#[test]
fn a_fire_record_older_than_the_retention_is_removed_by_expiry() {
    let mut h = Harness::new();
    let schedule = || Command::ScheduleTimer {
        name: "t".into(),
        due: Due::At { at_ms: 5_000 },
        payload: Vec::new(),
    };
    h.apply(1, schedule());
    h.fire_all(5_000);
    assert!(!h.state.expiry_due(4_999), "fired at 5 000");
    assert!(h.state.expiry_due(5_000), "due with no workflow at all");
    let expire = |retention_ms| Command::Expire { retention_ms };
    // Cutoff 6 500 - 2 000 = 4 500: the record, made at 5 000, stays.
    assert_eq!(
        h.apply(6_500, expire(2_000)),
        Answer::Expired {
            workflows: 0,
            fires: 0
        }
    );
    assert!(matches!(h.state.named_timer("t"), Some(Err(_))));
    // Cutoff 7 000 - 2 000 = 5 000: it goes, and the name may be scheduled anew.
    assert_eq!(
        h.apply(7_000, expire(2_000)),
        Answer::Expired {
            workflows: 0,
            fires: 1
        }
    );
    assert_eq!(h.state.named_timer("t"), None);
    assert!(matches!(
        h.apply(7_001, schedule()),
        Answer::Timer { created: true, .. }
    ));
}
