//! Both sides of a remote call driven by hand: a caller state and a callee state, with the
//! messages between them built from their committed state as the drivers build them.

use keel_raft::application::AppliedAt;
use proptest::prelude::*;

use super::*;
use crate::command::{
    AckStatus, Answer, CancelItem, CancelStatus, Command, Completion, EntryState, InboundStart,
    Outcome, Owner, Rejection, RemoteOutcome, Stamped, StartResult, StartStatus, StoredOutcome,
    WorkflowStatus,
};
use crate::state::{Effect, SchedulerState};

const CALLER: &str = "research.000102030405060708090a0b0c0d0e0f";
const REMOTE: &str = "writers";
const CALLEE_INDEX: u64 = 2;
const GRACE_MS: u64 = 600_000;
const DEADLINE_MAX_MS: u64 = 30 * 86_400_000;
const T0: u64 = 1_000_000;
/// The stamp of the identity replacements the tests apply.
const REMINT_MS: u64 = T0 + 2_000;

/// One cluster's state, applying commands at increasing indexes and checking its
/// consistency after each.
struct Side {
    state: SchedulerState,
    index: u64,
    /// The effects of the last command.
    effects: Vec<Effect>,
}

impl Side {
    fn new() -> Self {
        let mut side = Self {
            state: SchedulerState::default(),
            index: 0,
            effects: Vec::new(),
        };
        side.apply(
            T0,
            Command::DeclareKinds {
                kinds: vec![("draft".into(), "v1".into()), ("plan".into(), "v1".into())],
            },
        );
        side
    }

    fn apply(&mut self, stamp_ms: u64, command: Command) -> Answer {
        self.index += 1;
        self.effects.clear();
        let answer = self.state.apply(
            AppliedAt {
                term: 1,
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

    /// Starts workflow `id` and returns its fence.
    fn start(&mut self, id: &str) -> u64 {
        match self.apply(
            T0,
            Command::Start {
                id: id.into(),
                kind: "plan".into(),
                input: Vec::new(),
            },
        ) {
            Answer::Started { fence, .. } => fence,
            other => panic!("{other:?}"),
        }
    }

    fn call(&mut self, id: &str, fence: u64, position: u32, deadline_after_ms: u64) -> Answer {
        self.apply(
            T0,
            Command::RemoteCall {
                workflow: id.into(),
                fence,
                seq: position,
                remote: REMOTE.into(),
                kind: "draft".into(),
                input: format!("input of {id}").into_bytes(),
                deadline_after_ms,
            },
        )
    }

    fn bind(&mut self) -> u64 {
        match self.apply(
            T0,
            Command::RemoteBind {
                remote: REMOTE.into(),
                callee: "writing.ff".into(),
            },
        ) {
            Answer::RemoteBound { generation, .. } => generation,
            other => panic!("{other:?}"),
        }
    }

    fn stream(&self) -> &Outgoing {
        self.state.remote().outgoing(REMOTE).expect("a stream")
    }

    fn entry(&self, id: &str, position: u32) -> EntryState {
        self.state.workflow(id).expect("workflow").journal[position as usize]
            .state
            .clone()
    }

    fn fire_due(&mut self, stamp_ms: u64) {
        let ids = self
            .state
            .timers()
            .in_due_order()
            .take_while(|&(due, _)| due <= stamp_ms)
            .map(|(_, id)| id)
            .collect();
        self.apply(stamp_ms, Command::FireTimers { ids });
    }

    fn fence_of(&self, id: &str) -> u64 {
        self.state.workflow(id).expect("workflow").fence
    }

    fn incoming(&self) -> Option<&Incoming> {
        self.state.remote().incoming(CALLER)
    }
}

/// The Start request's items, as the driver builds them from the caller's outbox.
fn start_items(research: &Side) -> Vec<InboundStart> {
    research
        .stream()
        .starts_to_send(256)
        .map(|(seq, item)| InboundStart {
            seq,
            call: item.call.clone(),
            withdrawn: item.state == OutState::Withdraw,
            kind: item.kind.clone(),
            input: match &item.input {
                Value::Inline(bytes) => bytes.clone(),
                Value::Recorded(_) => panic!("these tests hold values inline"),
            },
            deadline_ms: item.deadline_ms,
            refusal: None,
        })
        .collect()
}

/// A Start request's items proposed under the callee identity of index `callee_index`.
fn start_under(
    writing: &mut Side,
    stamp_ms: u64,
    callee_index: u64,
    items: Vec<InboundStart>,
) -> Answer {
    writing.apply(
        stamp_ms,
        Command::RemoteStart {
            caller: CALLER.into(),
            callee_index,
            items,
            grace_ms: GRACE_MS,
            deadline_max_ms: DEADLINE_MAX_MS,
        },
    )
}

fn take(writing: &mut Side, stamp_ms: u64, items: Vec<InboundStart>) -> (Vec<StartResult>, u64) {
    match start_under(writing, stamp_ms, CALLEE_INDEX, items) {
        Answer::RemoteStarted { results, watermark } => (results, watermark),
        other => panic!("{other:?}"),
    }
}

/// One Start round trip: the caller's items to the callee, its answer back.
fn deliver_starts(research: &mut Side, writing: &mut Side, generation: u64) -> Vec<StartResult> {
    let (results, watermark) = take(writing, T0, start_items(research));
    research.apply(
        T0,
        Command::RemoteStartsAcked {
            remote: REMOTE.into(),
            generation,
            watermark,
            results: results.clone(),
        },
    );
    results
}

/// Finishes running callee workflow `id` with `outcome`.
fn finish(writing: &mut Side, id: &str, outcome: Outcome) {
    let fence = writing.state.workflow(id).expect("workflow").fence;
    let answer = writing.apply(
        T0,
        Command::Finish {
            workflow: id.into(),
            fence,
            outcome,
        },
    );
    assert_eq!(answer, Answer::Done);
}

/// The callee's held completions, as a push or a Get carries them.
fn completions(writing: &Side) -> Vec<Completion> {
    writing
        .incoming()
        .map(|i| {
            i.records
                .iter()
                .filter_map(|(&seq, record)| match &record.state {
                    InState::Completed { outcome, .. } => Some(Completion {
                        seq,
                        call: record.call.index,
                        outcome: match outcome {
                            InOutcome::Completed(v) => RemoteOutcome::Completed(inline(v)),
                            InOutcome::Failed(v) => RemoteOutcome::Failed(text(v)),
                            InOutcome::Cancelled(v) => RemoteOutcome::Cancelled(text(v)),
                            InOutcome::Deadline => RemoteOutcome::Deadline,
                        },
                    }),
                    _ => None,
                })
                .collect()
        })
        .unwrap_or_default()
}

fn inline(value: &Value) -> Vec<u8> {
    match value {
        Value::Inline(bytes) => bytes.clone(),
        Value::Recorded(_) => panic!("these tests hold values inline"),
    }
}

fn text(value: &Value) -> String {
    String::from_utf8(inline(value)).expect("a message")
}

fn complete(research: &mut Side, generation: u64, completions: Vec<Completion>) -> Vec<AckStatus> {
    match research.apply(
        T0,
        Command::RemoteComplete {
            remote: REMOTE.into(),
            generation,
            completions,
        },
    ) {
        Answer::RemoteAcks { acks } => acks,
        other => panic!("{other:?}"),
    }
}

fn callee_workflows(writing: &Side) -> usize {
    writing
        .state
        .list(None, None, None, usize::MAX)
        .filter(|(id, _)| id.starts_with('@'))
        .count()
}

impl Side {
    /// The host replaced this cluster's identity at the next index, by a command its
    /// proposer stamped [`REMINT_MS`].
    fn replace_identity(&mut self) {
        self.index += 1;
        self.effects.clear();
        self.state.identity_replaced(
            AppliedAt {
                term: 1,
                index: self.index,
            },
            REMINT_MS,
            &mut self.effects,
        );
        self.state.assert_consistent();
    }
}

/// A caller reminted: its unresolved calls (one started at the callee, one not yet sent)
/// fail as `caller-restored` and wake their workflows, its stream is dropped with its
/// binding, and the next call starts a new stream at seq 1 that the callee takes as a new
/// caller's. Nothing of the old stream is sent again.
#[test]
fn a_remint_fails_the_callers_unresolved_calls_and_restarts_its_streams() {
    let (mut research, mut writing) = (Side::new(), Side::new());
    let fence = research.start("w");
    research.call("w", fence, 0, 60_000);
    let generation = research.bind();
    deliver_starts(&mut research, &mut writing, generation);
    research.call("w", fence, 1, 60_000);
    assert_eq!(research.stream().outbox.len(), 2);

    research.replace_identity();
    let reminted_at = research.index;
    for position in [0, 1] {
        let EntryState::Done(StoredOutcome::Err(Value::Inline(message))) =
            research.entry("w", position)
        else {
            panic!(
                "call {position} is not failed: {:?}",
                research.entry("w", position)
            );
        };
        let message = String::from_utf8(message).expect("text");
        assert!(
            message.starts_with(&format!(
                "caller-restored: this cluster's identity was replaced at index {reminted_at}"
            )),
            "{message}"
        );
    }
    assert!(research.effects.contains(&Effect::Changed {
        workflow: "w".into()
    }));
    assert!(research.effects.contains(&Effect::RemoteChanged));
    assert!(research.state.remote().outgoing(REMOTE).is_none());
    assert!(
        research.state.timers().is_empty(),
        "the deadline timers went with the calls"
    );
    assert_eq!(research.state.remote().replaced_at(), reminted_at);

    let later = research.start("later");
    research.call("later", later, 0, 60_000);
    assert!(research.stream().binding.is_none(), "the next Hello binds");
    let items = start_items(&research);
    assert_eq!(items.len(), 1, "only the new call is sent");
    assert_eq!(items[0].seq, 1, "a new stream starts at seq 1");
}

/// A callee reminted: its running callee workflow is cancelled (`callee-restored`), its
/// records and watermarks go, and a start proposed to the old identity before the
/// replacement but applied after it is refused, so it starts nothing; one addressed to the
/// new identity is taken from seq 1.
#[test]
fn a_remint_ends_the_callees_calls_and_refuses_starts_addressed_to_the_old_identity() {
    let (mut research, mut writing) = (Side::new(), Side::new());
    let fence = research.start("w");
    research.call("w", fence, 0, 60_000);
    research.call("w", fence, 1, 60_000);
    let items = start_items(&research);
    take(&mut writing, T0, vec![items[0].clone()]);
    let running = inbound_name(CALLER, CALLEE_INDEX, 1);
    assert_eq!(
        writing.state.workflow(&running).expect("runs").status,
        WorkflowStatus::Running
    );
    // The callee's workflow calls a third cluster itself: its end turns that call into a
    // withdrawal, which the caller side of the remint then drops.
    let inner = writing.fence_of(&running);
    writing.call(&running, inner, 0, 60_000);

    writing.replace_identity();
    let reminted_at = writing.index;
    let cancelled = writing.state.workflow(&running).expect("kept as finished");
    assert_eq!(cancelled.status, WorkflowStatus::Cancelled);
    assert_eq!(
        cancelled.finished_ms,
        Some(REMINT_MS),
        "stamped with the replacement's stamp"
    );
    assert!(
        writing.incoming().is_none(),
        "records and watermark dropped"
    );
    assert!(
        writing.state.remote().outgoing(REMOTE).is_none(),
        "its own call's withdrawal dropped"
    );
    assert!(
        writing.state.timers().is_empty(),
        "the deadline and forget timers went with the records"
    );

    let stale = start_under(&mut writing, T0, CALLEE_INDEX, vec![items[1].clone()]);
    assert_eq!(
        stale,
        Answer::Rejected(Rejection::IdentityReplaced {
            addressed: CALLEE_INDEX,
            replaced_at: reminted_at,
        })
    );
    assert_eq!(callee_workflows(&writing), 1, "nothing started");

    // The caller rebinds (its operator's `keel rebind-remote`) and sends again from seq 1.
    research.apply(
        T0,
        Command::RemoteUnbind {
            remote: REMOTE.into(),
        },
    );
    let fence = research.fence_of("w");
    research.call("w", fence, 2, 60_000);
    let Answer::RemoteStarted { results, watermark } =
        start_under(&mut writing, T0, reminted_at, start_items(&research))
    else {
        panic!("the new identity's start is taken");
    };
    assert_eq!((results.len(), watermark), (1, 1));
    assert!(
        writing
            .state
            .workflow(&inbound_name(CALLER, reminted_at, 1))
            .is_some()
    );
}

/// `RemoteEnabled` is first-wins: the index of the first one applied stays, and a state
/// starts disabled.
#[test]
fn remote_calls_are_enabled_by_the_first_remote_enabled() {
    let mut side = Side::new();
    assert!(!side.state.remote().enabled());
    assert_eq!(side.apply(T0, Command::RemoteEnabled), Answer::Done);
    let first = side.index;
    assert!(
        side.effects.contains(&Effect::RemoteChanged),
        "the gate's waiters wake"
    );
    side.apply(T0, Command::RemoteEnabled);
    assert!(side.effects.is_empty(), "a second one changes nothing");
    assert!(side.state.remote().enabled());
    assert_eq!(side.state.remote().enabled_at, first);
}

/// The whole happy path: a call takes seq 1, the callee starts one workflow for it, a
/// resent start is answered from the record (no second workflow), the completion resolves
/// the caller's entry with the callee's value, and the acknowledgement forgets the record.
#[test]
fn a_call_is_started_once_completed_once_and_forgotten_after_its_ack() {
    let (mut research, mut writing) = (Side::new(), Side::new());
    let fence = research.start("w");
    assert_eq!(
        research.call("w", fence, 0, 60_000),
        Answer::Entry(EntryState::Pending { attempts: 0 })
    );
    let call_index = research.index;
    // The run proposes it again (a retry, a new leader): the same entry, no second seq.
    assert_eq!(
        research.call("w", fence, 0, 60_000),
        Answer::Entry(EntryState::Pending { attempts: 0 })
    );
    assert_eq!(research.stream().next_seq, 2);
    let generation = research.bind();
    let resend = start_items(&research).remove(0);

    let results = deliver_starts(&mut research, &mut writing, generation);
    let name = inbound_name(CALLER, CALLEE_INDEX, 1);
    assert_eq!(
        results,
        [StartResult {
            seq: 1,
            call: call_index,
            status: StartStatus::Accepted {
                workflow: name.clone(),
                finished: false
            }
        }]
    );
    assert_eq!(research.stream().acked, 1);
    assert!(matches!(
        research.stream().outbox[&1].state,
        OutState::Started { .. }
    ));
    assert!(
        research.effects.contains(&Effect::RemoteChanged),
        "a taken call wakes the driver that fetches completions"
    );
    let started = writing.state.workflow(&name).expect("started");
    assert_eq!(inline(&started.input), b"input of w");

    // The same start again (the answer was lost): answered from the record.
    let (again, watermark) = take(&mut writing, T0, vec![resend.clone()]);
    assert_eq!(watermark, 1);
    assert_eq!(again[0].status, results[0].status);
    assert_eq!(callee_workflows(&writing), 1);

    finish(&mut writing, &name, Outcome::Ok(b"the draft".to_vec()));
    let held = completions(&writing);
    assert_eq!(held.len(), 1);
    assert_eq!(
        complete(&mut research, generation, held.clone()),
        [AckStatus::Resolved]
    );
    assert_eq!(
        research.entry("w", 0),
        EntryState::Done(StoredOutcome::Ok(Value::Inline(b"the draft".to_vec())))
    );
    assert!(research.stream().outbox.is_empty());
    // Pushed again before the ack committed: already resolved, nothing changes.
    assert!(matches!(
        complete(&mut research, generation, held).as_slice(),
        [AckStatus::AlreadyResolved(_)]
    ));

    writing.apply(
        T0,
        Command::RemoteCompletionsAcked {
            caller: CALLER.into(),
            acks: vec![(1, call_index)],
        },
    );
    assert!(writing.incoming().expect("stream").records.is_empty());
    // Resent after forgetting: the watermark answers, no workflow starts.
    let (late, _) = take(&mut writing, T0, vec![resend]);
    assert_eq!(late[0].status, StartStatus::Forgotten);
    assert_eq!(callee_workflows(&writing), 1);
}

/// The callee takes only the next seq: items past a gap get no result and change nothing,
/// and a seq held under another call id is a conflict, not a second start.
#[test]
fn the_callee_takes_seqs_in_order_and_refuses_a_conflicting_call_id() {
    let (mut research, mut writing) = (Side::new(), Side::new());
    let fence = research.start("w");
    for position in 0..3 {
        research.call("w", fence, position, 60_000);
    }
    let items = start_items(&research);
    let (results, watermark) = take(&mut writing, T0, vec![items[0].clone(), items[2].clone()]);
    assert_eq!(watermark, 1);
    assert_eq!(results.len(), 1, "seq 3 is past the gap: not looked at");
    assert_eq!(callee_workflows(&writing), 1);

    let mut impostor = items[0].clone();
    impostor.call.index += 100;
    let (results, _) = take(&mut writing, T0, vec![impostor]);
    assert_eq!(results[0].status, StartStatus::Conflict);
    assert_eq!(callee_workflows(&writing), 1);

    let (results, watermark) = take(&mut writing, T0, items[1..].to_vec());
    assert_eq!(watermark, 3);
    assert_eq!(results.len(), 2);
    assert_eq!(callee_workflows(&writing), 3);
}

/// A call whose deadline passes before the callee took it is withdrawn: its workflow times
/// out at once, the withdrawal takes the seq at the callee without starting anything, and
/// the answer drops the item.
#[test]
fn a_deadline_before_the_start_is_delivered_withdraws_the_call() {
    let (mut research, mut writing) = (Side::new(), Side::new());
    let fence = research.start("w");
    research.call("w", fence, 0, 1_000);
    let generation = research.bind();
    research.fire_due(T0 + 1_000);
    assert_eq!(research.entry("w", 0), EntryState::TimedOut);
    assert_eq!(research.stream().outbox[&1].state, OutState::Withdraw);

    let results = deliver_starts(&mut research, &mut writing, generation);
    assert_eq!(results[0].status, StartStatus::Withdrawn);
    assert_eq!(callee_workflows(&writing), 0);
    assert_eq!(writing.incoming().expect("stream").watermark, 1);
    assert!(research.stream().outbox.is_empty());
}

/// Cancelling a caller workflow whose call the callee started turns the item into a cancel;
/// the callee's cancel stops its workflow, and the caller drops the item on the answer.
#[test]
fn cancelling_the_caller_cancels_the_started_callee_workflow() {
    let (mut research, mut writing) = (Side::new(), Side::new());
    let fence = research.start("w");
    research.call("w", fence, 0, 60_000);
    let generation = research.bind();
    deliver_starts(&mut research, &mut writing, generation);
    research.apply(
        T0,
        Command::Cancel {
            workflow: "w".into(),
            reason: "the user gave up".into(),
        },
    );
    let stream = research.stream();
    let cancels: Vec<CancelItem> = stream
        .cancels_to_send(16)
        .map(|(seq, item, reason)| CancelItem {
            seq,
            call: item.call.index,
            reason: reason.to_owned(),
        })
        .collect();
    assert_eq!(cancels.len(), 1);
    let Answer::RemoteCancelled { results, .. } = writing.apply(
        T0,
        Command::RemoteCancel {
            caller: CALLER.into(),
            items: cancels,
        },
    ) else {
        panic!("a cancel answer");
    };
    assert_eq!(results[0].status, CancelStatus::Cancelled);
    let name = inbound_name(CALLER, CALLEE_INDEX, 1);
    assert_eq!(
        writing
            .state
            .workflow(&name)
            .expect("kept for audit")
            .status,
        WorkflowStatus::Cancelled
    );
    assert!(writing.incoming().expect("stream").records.is_empty());
    research.apply(
        T0,
        Command::RemoteCancelsAcked {
            remote: REMOTE.into(),
            generation,
            results,
        },
    );
    assert!(research.stream().outbox.is_empty());
}

/// The callee cancels a running workflow at the call's deadline by its own clock, and its
/// completion says so; the caller, whose deadline fired first, answers "already resolved".
#[test]
fn the_callee_cancels_at_the_deadline_and_forgets_after_the_grace() {
    let (mut research, mut writing) = (Side::new(), Side::new());
    let fence = research.start("w");
    research.call("w", fence, 0, 5_000);
    let generation = research.bind();
    deliver_starts(&mut research, &mut writing, generation);
    writing.fire_due(T0 + 5_000);
    let name = inbound_name(CALLER, CALLEE_INDEX, 1);
    assert_eq!(
        writing.state.workflow(&name).expect("workflow").status,
        WorkflowStatus::Cancelled
    );
    let held = completions(&writing);
    assert_eq!(held[0].outcome, RemoteOutcome::Deadline);

    research.fire_due(T0 + 5_000);
    assert_eq!(research.entry("w", 0), EntryState::TimedOut);
    assert!(matches!(
        complete(&mut research, generation, held).as_slice(),
        [AckStatus::AlreadyResolved(_)]
    ));
    assert_eq!(research.entry("w", 0), EntryState::TimedOut);

    // Unacknowledged (the link is cut): the record goes after the grace, the seq stays
    // taken.
    writing.fire_due(T0 + 5_000 + GRACE_MS);
    let incoming = writing.incoming().expect("stream");
    assert!(incoming.records.is_empty());
    assert_eq!(incoming.watermark, 1);
}

/// A start whose deadline already passed when the callee takes it is refused, and the
/// caller resolves it as timed out; an unknown kind fails the call with the reason.
#[test]
fn refusals_resolve_the_call_and_keep_their_answer() {
    let (mut research, mut writing) = (Side::new(), Side::new());
    let fence = research.start("w");
    research.call("w", fence, 0, 1_000);
    research.apply(
        T0,
        Command::RemoteCall {
            workflow: "w".into(),
            fence,
            seq: 1,
            remote: REMOTE.into(),
            kind: "unheard-of".into(),
            input: Vec::new(),
            deadline_after_ms: 60_000,
        },
    );
    let generation = research.bind();
    let items = start_items(&research);
    let (results, watermark) = take(&mut writing, T0 + 2_000, items.clone());
    research.apply(
        T0 + 2_000,
        Command::RemoteStartsAcked {
            remote: REMOTE.into(),
            generation,
            watermark,
            results: results.clone(),
        },
    );
    assert!(matches!(
        results[0].status,
        StartStatus::Refused {
            refusal: Refusal::DeadlinePassed,
            ..
        }
    ));
    assert!(matches!(
        results[1].status,
        StartStatus::Refused {
            refusal: Refusal::UnknownKind,
            ..
        }
    ));
    assert_eq!(research.entry("w", 0), EntryState::TimedOut);
    assert!(matches!(
        research.entry("w", 1),
        EntryState::Done(StoredOutcome::Err(_))
    ));
    assert_eq!(callee_workflows(&writing), 0);
    // Asked again: the same refusal, from the record.
    let (results_again, _) = take(&mut writing, T0 + 2_000, items[1..].to_vec());
    assert_eq!(results_again[0].status, results[1].status);
}

/// Answers decided under another binding generation change nothing.
#[test]
fn answers_under_another_generation_change_nothing() {
    let (mut research, mut writing) = (Side::new(), Side::new());
    let fence = research.start("w");
    research.call("w", fence, 0, 60_000);
    let generation = research.bind();
    let (results, watermark) = take(&mut writing, T0, start_items(&research));
    let before = research.state.clone();
    research.apply(
        T0,
        Command::RemoteStartsAcked {
            remote: REMOTE.into(),
            generation: generation + 1,
            watermark,
            results,
        },
    );
    assert_eq!(research.state.remote(), before.remote());
    let name = inbound_name(CALLER, CALLEE_INDEX, 1);
    finish(&mut writing, &name, Outcome::Ok(Vec::new()));
    assert_eq!(
        complete(&mut research, generation + 1, completions(&writing)),
        [AckStatus::CallerGone]
    );
    assert_eq!(research.entry("w", 0), EntryState::Pending { attempts: 0 });
}

/// A snapshot of a state with both sides of calls in flight reads back equal.
#[test]
fn a_state_with_calls_in_flight_round_trips_through_a_snapshot() {
    let (mut research, mut writing) = (Side::new(), Side::new());
    let fence = research.start("w");
    research.call("w", fence, 0, 60_000);
    research.call("w", fence, 1, 60_000);
    let generation = research.bind();
    deliver_starts(&mut research, &mut writing, generation);
    finish(
        &mut writing,
        &inbound_name(CALLER, CALLEE_INDEX, 1),
        Outcome::Err("no".into()),
    );
    for side in [&research, &writing] {
        let bytes = crate::machine::codec::encode(side.state.clone(), 7);
        let (state, digest) = crate::machine::codec::decode(&bytes).expect("reads back");
        assert_eq!(digest, 7);
        assert_eq!(state, side.state);
    }
}

proptest! {
    /// However often, late and out of order the caller's Start requests arrive — any
    /// subsequence of its items, repeated, in any order of requests — the callee starts at
    /// most one workflow per seq, never a seq past a gap, and its watermark is the longest
    /// prefix it saw delivered in order.
    #[test]
    fn the_callee_starts_each_seq_at_most_once(
        requests in prop::collection::vec(
            prop::collection::vec(0usize..8, 0..6),
            1..24,
        ),
        forget_after in 0usize..24,
    ) {
        let (mut research, mut writing) = (Side::new(), Side::new());
        let fence = research.start("w");
        for position in 0..8 {
            research.call("w", fence, position, 60_000);
        }
        let items = start_items(&research);
        let mut started = std::collections::BTreeSet::new();
        for (n, seqs) in requests.iter().enumerate() {
            let mut batch: Vec<InboundStart> =
                seqs.iter().map(|&s| items[s].clone()).collect();
            batch.sort_by_key(|item| item.seq);
            batch.dedup_by_key(|item| item.seq);
            let before = writing.incoming().map_or(0, |i| i.watermark);
            let (results, watermark) = take(&mut writing, T0, batch.clone());
            for result in &results {
                if let StartStatus::Accepted { workflow, finished: false } = &result.status
                    && result.seq > before
                {
                    prop_assert!(started.insert(workflow.clone()), "started twice: {workflow}");
                }
            }
            let mut expected = before;
            for item in &batch {
                if item.seq == expected + 1 {
                    expected += 1;
                }
            }
            prop_assert_eq!(watermark, expected);
            if n == forget_after {
                writing.fire_due(T0 + 60_000 + GRACE_MS);
            }
        }
        prop_assert_eq!(callee_workflows(&writing), started.len());
        let watermark = writing.incoming().map_or(0, |i| i.watermark);
        prop_assert_eq!(started.len() as u64, watermark);
    }
}

/// A claim of the callee's workflow by a worker does not disturb its record.
#[test]
fn a_claimed_callee_workflow_still_completes_its_record() {
    let (mut research, mut writing) = (Side::new(), Side::new());
    let fence = research.start("w");
    research.call("w", fence, 0, 60_000);
    let generation = research.bind();
    deliver_starts(&mut research, &mut writing, generation);
    let name = inbound_name(CALLER, CALLEE_INDEX, 1);
    writing.apply(
        T0,
        Command::Claim {
            workflow: name.clone(),
            owner: Owner::Worker { worker: 4 },
        },
    );
    finish(&mut writing, &name, Outcome::Err("it broke".into()));
    assert_eq!(
        completions(&writing)[0].outcome,
        RemoteOutcome::Failed("it broke".into())
    );
}

/// An operator's rebind fails every unresolved call (its fate at the old callee cannot be
/// known), drops withdrawals and cancels, and restarts the stream unbound at seq 1; answers
/// of the old binding change nothing after it.
#[test]
fn a_rebind_fails_unresolved_calls_and_restarts_the_stream() {
    let (mut research, mut writing) = (Side::new(), Side::new());
    let fence = research.start("w");
    research.call("w", fence, 0, 60_000);
    research.call("w", fence, 1, 1_000);
    let generation = research.bind();
    deliver_starts(&mut research, &mut writing, generation);
    research.fire_due(T0 + 1_000);
    assert!(matches!(
        research.stream().outbox[&2].state,
        OutState::Cancel { .. }
    ));
    let answer = research.apply(
        T0 + 1_000,
        Command::RemoteUnbind {
            remote: REMOTE.into(),
        },
    );
    assert_eq!(answer, Answer::RemoteUnbound { failed: 1 });
    assert!(matches!(
        research.entry("w", 0),
        EntryState::Done(StoredOutcome::Err(Value::Inline(message)))
            if String::from_utf8_lossy(&message).starts_with("callee-lost")
    ));
    assert_eq!(
        research.stream(),
        &Outgoing {
            retired: Some("writing.ff".into()),
            ..Outgoing::default()
        }
    );
    let name = inbound_name(CALLER, CALLEE_INDEX, 1);
    finish(&mut writing, &name, Outcome::Ok(Vec::new()));
    assert_eq!(
        complete(&mut research, generation, completions(&writing)),
        [AckStatus::CallerGone],
        "the old binding's completion finds no call"
    );
    let fence_again = research.fence_of("w");
    research.call("w", fence_again, 2, 60_000);
    assert_eq!(research.stream().outbox.keys().collect::<Vec<_>>(), [&1]);
}
