//! Tests of the journal commands: step records, fences, order, attempts, signals.

use super::*;

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
            outcome: StoredOutcome::Ok(Value::Inline(b"first".to_vec()))
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
