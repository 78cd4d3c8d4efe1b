//! Tests of a workflow's life: starts, the cancel cascade through children, expiry.

use super::*;

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

/// A workflow that finishes is packed: it leaves the running workflows, reads back whole
/// (journal, outcome, status), answers a start under its id and refuses a late record as
/// finished.
#[test]
fn a_finished_workflow_is_packed_and_reads_back_whole() {
    let mut h = Harness::new();
    h.start("w");
    let fence = h.fence("w");
    h.step("w", fence, 0, "s", "result");
    let before = h.state.workflow("w").expect("w").into_owned();
    h.apply(
        2_000,
        Command::Finish {
            workflow: "w".into(),
            fence,
            outcome: Outcome::Ok(b"out".to_vec()),
        },
    );
    assert_eq!(h.state.workflow_counts(), (0, 1));
    assert_eq!(h.state.running_workflows().count(), 0);
    let after = h.state.workflow("w").expect("w").into_owned();
    assert_eq!(after.journal, before.journal);
    assert_eq!(after.status, WorkflowStatus::Completed);
    assert_eq!(after.finished_ms, Some(2_000));
    assert_eq!(
        after.outcome,
        Some(StoredOutcome::Ok(Value::Inline(b"out".to_vec())))
    );
    assert!(matches!(
        h.start("w"),
        Answer::Started {
            created: false,
            status: WorkflowStatus::Completed,
            ..
        }
    ));
    assert_eq!(
        h.step("w", fence, 1, "late", "x"),
        Answer::Rejected(Rejection::Finished(WorkflowStatus::Completed))
    );
    let listed: Vec<String> = h
        .state
        .list(None, Some(WorkflowStatus::Completed), None, 10)
        .map(|(id, _)| id.to_owned())
        .collect();
    assert_eq!(listed, ["w"]);
}

/// Listing merges running and finished workflows in id order, filters each by status and
/// kind, and pages after an id.
#[test]
fn a_list_interleaves_running_and_finished_workflows_by_id() {
    let mut h = Harness::new();
    for id in ["a", "b", "c", "d"] {
        h.start(id);
    }
    for id in ["a", "c"] {
        let fence = h.fence(id);
        h.apply(
            300,
            Command::Finish {
                workflow: id.into(),
                fence,
                outcome: Outcome::Ok(Vec::new()),
            },
        );
    }
    let ids = |h: &Harness, status, after, limit| -> Vec<String> {
        h.state
            .list(None, status, after, limit)
            .map(|(id, _)| id.to_owned())
            .collect()
    };
    assert_eq!(ids(&h, None, None, 10), ["a", "b", "c", "d"]);
    assert_eq!(ids(&h, None, Some("a"), 2), ["b", "c"]);
    assert_eq!(ids(&h, Some(WorkflowStatus::Running), None, 10), ["b", "d"]);
    assert_eq!(
        ids(&h, Some(WorkflowStatus::Completed), Some("a"), 10),
        ["c"]
    );
    assert!(h.state.list(Some("child"), None, None, 10).next().is_none());
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

#[test]
fn a_parked_workflow_stays_unfinished_until_a_claim_runs_it_again() {
    let mut h = Harness::new();
    h.start("w");
    let park = |fence| Command::Park {
        workflow: "w".into(),
        fence,
        reason: "non-determinism at entry 0".into(),
    };
    assert_eq!(
        h.apply(100, park(1)),
        Answer::Rejected(Rejection::StaleFence {
            fence: 1,
            current: 2
        })
    );
    assert_eq!(h.apply(100, park(2)), Answer::Done);
    {
        let w = h.state.workflow("w").expect("w");
        assert_eq!(w.status, WorkflowStatus::Parked);
        assert!(!w.is_finished() && w.is_parked() && w.finished_ms.is_none());
        assert_eq!(
            w.outcome,
            Some(StoredOutcome::Err(Value::Inline(
                b"non-determinism at entry 0".to_vec()
            )))
        );
    }
    assert_eq!(
        h.state.running_workflows().count(),
        1,
        "claimable at a takeover"
    );
    let owner = Owner::Leader { node: 1, term: 3 };
    let claimed = h.apply(
        100,
        Command::Claim {
            workflow: "w".into(),
            owner,
        },
    );
    assert!(matches!(claimed, Answer::Claimed { .. }), "{claimed:?}");
    let w = h.state.workflow("w").expect("w");
    assert_eq!((w.status, &w.outcome), (WorkflowStatus::Running, &None));
}
