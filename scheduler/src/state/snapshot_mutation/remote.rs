//! The snapshot-mutation property test's calls between clusters: random remote commands of
//! both sides (their ids and generations filled in from the state, so they act), the sweep
//! of answers to every item and record a state holds, and corruptions of the remote state.

use proptest::prelude::*;
use proptest::sample::Index;

use super::{NEXT, workflow};
use crate::command::{
    CallId, CancelItem, CancelResult, CancelStatus, Command, Completion, InboundStart, Refusal,
    RemoteOutcome, StartResult, StartStatus,
};
use crate::state::remote::{InState, OutState};
use crate::state::{SchedulerState, inbound_name};

/// The one remote alias and caller identity the commands use.
const REMOTE: &str = "r";
const CALLER: &str = "c.00";

fn start_status() -> impl Strategy<Value = StartStatus> {
    prop_oneof![
        Just(StartStatus::Accepted {
            workflow: "@x".into(),
            finished: false
        }),
        Just(StartStatus::Refused {
            refusal: Refusal::UnknownKind,
            message: "m".into()
        }),
        Just(StartStatus::Refused {
            refusal: Refusal::DeadlinePassed,
            message: "m".into()
        }),
        Just(StartStatus::Withdrawn),
        Just(StartStatus::Forgotten),
        Just(StartStatus::Conflict),
    ]
}

fn outcome() -> impl Strategy<Value = RemoteOutcome> {
    prop_oneof![
        Just(RemoteOutcome::Completed(b"v".to_vec())),
        Just(RemoteOutcome::Failed("f".into())),
        Just(RemoteOutcome::Cancelled("c".into())),
        Just(RemoteOutcome::Deadline),
    ]
}

fn cancel_status() -> impl Strategy<Value = CancelStatus> {
    prop_oneof![
        Just(CancelStatus::Cancelled),
        Just(CancelStatus::AlreadyFinished),
        Just(CancelStatus::NotHeld),
        Just(CancelStatus::NotTaken),
        Just(CancelStatus::Conflict),
    ]
}

fn item(seq: u64, withdrawn: bool, deadline_ms: u64) -> InboundStart {
    InboundStart {
        seq,
        call: CallId {
            index: seq,
            workflow: "w0".into(),
            position: 0,
        },
        withdrawn,
        kind: "k".into(),
        input: Vec::new(),
        deadline_ms,
        refusal: None,
    }
}

/// A remote command of either side; call ids 0 and generations 0 are filled in from the
/// state by [`resolve`].
pub(super) fn command() -> impl Strategy<Value = Command> {
    prop_oneof![13 => caller_command(), 6 => callee_command()]
}

/// A caller-side command, or the gate's.
fn caller_command() -> impl Strategy<Value = Command> {
    let seq = 1u64..6;
    prop_oneof![
        6 => (workflow(), 0u64..5_000).prop_map(|(workflow, deadline_after_ms)| Command::RemoteCall {
            workflow,
            fence: 0,
            seq: NEXT,
            remote: REMOTE.into(),
            kind: "k".into(),
            input: Vec::new(),
            deadline_after_ms,
        }),
        2 => prop_oneof![
            Just(Command::RemoteBind { remote: REMOTE.into(), callee: "e.00".into() }),
            Just(Command::RemoteEnabled),
        ],
        2 => (0u64..6, prop::collection::vec((seq.clone(), start_status()), 0..4)).prop_map(
            |(watermark, results)| Command::RemoteStartsAcked {
                remote: REMOTE.into(),
                generation: 0,
                watermark,
                results: results
                    .into_iter()
                    .map(|(seq, status)| StartResult { seq, call: 0, status })
                    .collect(),
            }
        ),
        2 => prop::collection::vec((seq.clone(), outcome()), 0..3).prop_map(|completions| {
            Command::RemoteComplete {
                remote: REMOTE.into(),
                generation: 0,
                completions: completions
                    .into_iter()
                    .map(|(seq, outcome)| Completion { seq, call: 0, outcome })
                    .collect(),
            }
        }),
        1 => prop::collection::vec((seq.clone(), cancel_status()), 0..3).prop_map(|results| {
            Command::RemoteCancelsAcked {
                remote: REMOTE.into(),
                generation: 0,
                results: results
                    .into_iter()
                    .map(|(seq, status)| CancelResult { seq, call: 0, status })
                    .collect(),
            }
        }),
    ]
}

/// A callee-side command.
fn callee_command() -> impl Strategy<Value = Command> {
    let seq = 1u64..6;
    prop_oneof![
        // Consecutive items from a low seq, so most are taken.
        4 => (1u64..3, prop::collection::vec((any::<bool>(), 0u64..10_000), 0..4)).prop_map(
            |(first, items)| {
                let items = (first..)
                    .zip(items)
                    .map(|(seq, (withdrawn, deadline))| item(seq, withdrawn, deadline))
                    .collect();
                Command::RemoteStart {
                    caller: CALLER.into(),
                    callee_index: 1,
                    items,
                    grace_ms: 1_000,
                    deadline_max_ms: 5_000,
                }
            }
        ),
        1 => prop::collection::vec(seq.clone(), 0..3).prop_map(|seqs| Command::RemoteCompletionsAcked {
            caller: CALLER.into(),
            acks: seqs.into_iter().map(|seq| (seq, seq)).collect(),
        }),
        1 => prop::collection::vec(seq, 0..3).prop_map(|seqs| Command::RemoteCancel {
            caller: CALLER.into(),
            items: seqs
                .into_iter()
                .map(|seq| CancelItem { seq, call: seq, reason: "x".into() })
                .collect(),
        }),
    ]
}

/// `command` with the binding's generation and the outbox's call ids filled in.
pub(super) fn resolve(state: &SchedulerState, command: &mut Command) {
    let stream = state.remote.outgoing.get(REMOTE);
    let generation = stream
        .and_then(|s| s.binding.as_ref())
        .map_or(0, |b| b.generation);
    let call = |seq: u64| {
        stream
            .and_then(|s| s.outbox.get(&seq))
            .map_or(seq, |item| item.call.index)
    };
    match command {
        Command::RemoteStartsAcked {
            generation: g,
            results,
            ..
        } => {
            *g = generation;
            for result in results {
                result.call = call(result.seq);
            }
        }
        Command::RemoteComplete {
            generation: g,
            completions,
            ..
        } => {
            *g = generation;
            for completion in completions {
                completion.call = call(completion.seq);
            }
        }
        Command::RemoteCancelsAcked {
            generation: g,
            results,
            ..
        } => {
            *g = generation;
            for result in results {
                result.call = call(result.seq);
            }
        }
        _ => {}
    }
}

/// Answers to every item and record `state` holds: each start status, outcome and cancel
/// status for each outbox item; a retake, a withdrawal, a cancel and an ack of each record.
pub(super) fn sweep(state: &SchedulerState) -> Vec<Command> {
    let mut sweep = caller_sweep(state);
    sweep.extend(callee_sweep(state));
    sweep
}

fn caller_sweep(state: &SchedulerState) -> Vec<Command> {
    let mut sweep = Vec::new();
    let statuses = [
        StartStatus::Accepted {
            workflow: "@x".into(),
            finished: true,
        },
        StartStatus::Withdrawn,
        StartStatus::Forgotten,
        StartStatus::Conflict,
    ];
    if let Some(stream) = state.remote.outgoing.get(REMOTE) {
        let generation = stream.binding.as_ref().map_or(0, |b| b.generation);
        for (&seq, item) in &stream.outbox {
            let call = item.call.index;
            for status in statuses.clone() {
                sweep.push(Command::RemoteStartsAcked {
                    remote: REMOTE.into(),
                    generation,
                    watermark: seq,
                    results: vec![StartResult { seq, call, status }],
                });
            }
            sweep.push(Command::RemoteComplete {
                remote: REMOTE.into(),
                generation,
                completions: vec![Completion {
                    seq,
                    call,
                    outcome: RemoteOutcome::Deadline,
                }],
            });
            sweep.push(Command::RemoteCancelsAcked {
                remote: REMOTE.into(),
                generation,
                results: vec![CancelResult {
                    seq,
                    call,
                    status: CancelStatus::Cancelled,
                }],
            });
        }
    }
    sweep
}

fn callee_sweep(state: &SchedulerState) -> Vec<Command> {
    let mut sweep = Vec::new();
    if let Some(incoming) = state.remote.incoming.get(CALLER) {
        for (&seq, record) in &incoming.records {
            let call = record.call.index;
            let mut retake = item(seq, false, u64::MAX);
            retake.call.index = call;
            let mut withdraw = retake.clone();
            withdraw.withdrawn = true;
            for items in [vec![retake], vec![withdraw]] {
                sweep.push(Command::RemoteStart {
                    caller: CALLER.into(),
                    callee_index: 1,
                    items,
                    grace_ms: 1_000,
                    deadline_max_ms: 5_000,
                });
            }
            sweep.push(Command::RemoteCompletionsAcked {
                caller: CALLER.into(),
                acks: vec![(seq, call)],
            });
            sweep.push(Command::RemoteCancel {
                caller: CALLER.into(),
                items: vec![CancelItem {
                    seq,
                    call,
                    reason: "sweep".into(),
                }],
            });
        }
    }
    sweep
}

/// A corruption of the remote state.
#[derive(Debug, Clone)]
pub(super) enum RemoteMutation {
    /// Removes an outbox item.
    DropItem(Index),
    /// Sets an outbox item's state (pending, started, withdraw, cancel), its timer kept.
    SetItemState(Index, u8),
    /// Moves `acked`.
    SetAcked(u64),
    /// Moves the next seq.
    SetNextSeq(u64),
    /// Removes a record.
    DropRecord(Index),
    /// Sets a record's state (refused, completed), its timers kept.
    SetRecordState(Index, bool),
    /// Moves the watermark.
    SetWatermark(u64),
}

pub(super) fn mutation() -> impl Strategy<Value = RemoteMutation> {
    let i = any::<Index>;
    prop_oneof![
        i().prop_map(RemoteMutation::DropItem),
        (i(), 0u8..4).prop_map(|(n, s)| RemoteMutation::SetItemState(n, s)),
        (0u64..8).prop_map(RemoteMutation::SetAcked),
        (0u64..8).prop_map(RemoteMutation::SetNextSeq),
        i().prop_map(RemoteMutation::DropRecord),
        (i(), any::<bool>()).prop_map(|(n, c)| RemoteMutation::SetRecordState(n, c)),
        (0u64..8).prop_map(RemoteMutation::SetWatermark),
    ]
}

/// Applies `mutation` to `state`; one that finds nothing to act on does nothing.
pub(super) fn mutate(state: &mut SchedulerState, mutation: &RemoteMutation) {
    let outgoing = state.remote.outgoing.get_mut(REMOTE);
    let incoming = state.remote.incoming.get_mut(CALLER);
    let pick = |len: usize, index: Index| (len > 0).then(|| index.index(len));
    match (*mutation).clone() {
        RemoteMutation::DropItem(n) => {
            if let Some(stream) = outgoing
                && let Some(n) = pick(stream.outbox.len(), n)
            {
                let seq = *stream.outbox.keys().nth(n).expect("picked");
                stream.outbox.remove(&seq);
            }
        }
        RemoteMutation::SetItemState(n, to) => {
            if let Some(stream) = outgoing
                && let Some(n) = pick(stream.outbox.len(), n)
            {
                let item = stream.outbox.values_mut().nth(n).expect("picked");
                item.state = match to {
                    0 => OutState::Pending,
                    1 => OutState::Started {
                        workflow: "@x".into(),
                    },
                    2 => OutState::Withdraw,
                    _ => OutState::Cancel { reason: "x".into() },
                };
            }
        }
        RemoteMutation::SetAcked(to) => {
            if let Some(stream) = outgoing {
                stream.acked = to;
            }
        }
        RemoteMutation::SetNextSeq(to) => {
            if let Some(stream) = outgoing {
                stream.next_seq = to;
            }
        }
        RemoteMutation::DropRecord(n) => {
            if let Some(incoming) = incoming
                && let Some(n) = pick(incoming.records.len(), n)
            {
                let seq = *incoming.records.keys().nth(n).expect("picked");
                incoming.records.remove(&seq);
            }
        }
        RemoteMutation::SetRecordState(n, completed) => {
            if let Some(incoming) = incoming
                && let Some(n) = pick(incoming.records.len(), n)
            {
                let (&seq, record) = incoming.records.iter_mut().nth(n).expect("picked");
                record.state = if completed {
                    InState::Completed {
                        workflow: inbound_name(CALLER, 1, seq),
                        outcome: crate::state::InOutcome::Deadline,
                    }
                } else {
                    InState::Refused {
                        refusal: Refusal::Invalid,
                        message: "x".into(),
                    }
                };
            }
        }
        RemoteMutation::SetWatermark(to) => {
            if let Some(incoming) = incoming {
                incoming.watermark = to;
            }
        }
    }
}
