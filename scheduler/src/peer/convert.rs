//! The journaled forms of remote calls (`crate::command`) to and from `keel.remote.v1`
//! messages. An enum value this build does not know converts to `None`: the item is retried,
//! never settled (REMOTE.md §16).

use keel_raft::cluster_identity::{ClusterIdentity, INCARNATION_BYTES};
use tonic::Status;

use crate::command::{
    AckStatus, CallId, CancelResult, CancelStatus, Completion, Refusal, RemoteOutcome, StartResult,
    StartStatus,
};
use crate::pb::remote as pb;

/// `identity` on the wire.
pub(crate) fn identity_to_wire(identity: &ClusterIdentity) -> pb::ClusterIdentity {
    pb::ClusterIdentity {
        name: identity.name().to_owned(),
        incarnation: identity.incarnation().to_vec().into(),
    }
}

/// The identity a message names as `what`.
///
/// # Errors
/// `invalid` when it is missing or malformed.
pub(crate) fn identity_from_wire(
    identity: Option<&pb::ClusterIdentity>,
    what: &str,
) -> Result<ClusterIdentity, Status> {
    let identity = identity.ok_or_else(|| super::errors::invalid(format!("no {what} identity")))?;
    let incarnation: [u8; INCARNATION_BYTES] =
        identity.incarnation.as_ref().try_into().map_err(|_| {
            super::errors::invalid(format!(
                "the {what} incarnation is not {INCARNATION_BYTES} bytes"
            ))
        })?;
    ClusterIdentity::new(&identity.name, incarnation)
        .map_err(|error| super::errors::invalid(format!("the {what} identity: {error}")))
}

pub(crate) fn call_to_wire(call: &CallId) -> pb::CallId {
    pb::CallId {
        call_index: call.index,
        workflow: call.workflow.clone(),
        position: call.position,
    }
}

pub(crate) fn call_from_wire(call: Option<&pb::CallId>) -> CallId {
    call.map_or(
        CallId {
            index: 0,
            workflow: String::new(),
            position: 0,
        },
        |call| CallId {
            index: call.call_index,
            workflow: call.workflow.clone(),
            position: call.position,
        },
    )
}

fn refusal_to_wire(refusal: Refusal) -> pb::Refusal {
    match refusal {
        Refusal::UnknownKind => pb::Refusal::UnknownKind,
        Refusal::NotExposed => pb::Refusal::NotExposed,
        Refusal::Invalid => pb::Refusal::Invalid,
        Refusal::DeadlinePassed => pb::Refusal::DeadlinePassed,
        Refusal::DeadlineTooLong => pb::Refusal::DeadlineTooLong,
    }
}

fn refusal_from_wire(refusal: i32) -> Option<Refusal> {
    Some(match pb::Refusal::try_from(refusal).ok()? {
        pb::Refusal::UnknownKind => Refusal::UnknownKind,
        pb::Refusal::NotExposed => Refusal::NotExposed,
        pb::Refusal::Invalid => Refusal::Invalid,
        pb::Refusal::DeadlinePassed => Refusal::DeadlinePassed,
        pb::Refusal::DeadlineTooLong => Refusal::DeadlineTooLong,
        pb::Refusal::Unspecified => return None,
    })
}

/// A start result on the wire; `call` is the item's call, echoed.
pub(crate) fn start_result_to_wire(result: &StartResult, call: &CallId) -> pb::StartResult {
    let mut wire = pb::StartResult {
        seq: result.seq,
        call: Some(call_to_wire(call)),
        ..pb::StartResult::default()
    };
    let status = match &result.status {
        StartStatus::Accepted { workflow, finished } => {
            wire.callee_workflow.clone_from(workflow);
            wire.finished = *finished;
            pb::StartStatus::Accepted
        }
        StartStatus::Refused { refusal, message } => {
            wire.refusal = refusal_to_wire(*refusal).into();
            wire.message.clone_from(message);
            pb::StartStatus::Refused
        }
        StartStatus::Withdrawn => pb::StartStatus::Withdrawn,
        StartStatus::Forgotten => pb::StartStatus::Forgotten,
        StartStatus::Conflict => pb::StartStatus::Conflict,
    };
    wire.status = status.into();
    wire
}

/// A start result from the wire; `None` for a status or refusal this build does not know.
pub(crate) fn start_result_from_wire(result: &pb::StartResult) -> Option<StartResult> {
    let status = match pb::StartStatus::try_from(result.status).ok()? {
        pb::StartStatus::Accepted => StartStatus::Accepted {
            workflow: result.callee_workflow.clone(),
            finished: result.finished,
        },
        pb::StartStatus::Refused => StartStatus::Refused {
            refusal: refusal_from_wire(result.refusal)?,
            message: result.message.clone(),
        },
        pb::StartStatus::Withdrawn => StartStatus::Withdrawn,
        pb::StartStatus::Forgotten => StartStatus::Forgotten,
        pb::StartStatus::Conflict => StartStatus::Conflict,
        pb::StartStatus::Unspecified => return None,
    };
    Some(StartResult {
        seq: result.seq,
        call: result.call.as_ref()?.call_index,
        status,
    })
}

pub(crate) fn cancel_status_to_wire(status: CancelStatus) -> pb::CancelStatus {
    match status {
        CancelStatus::Cancelled => pb::CancelStatus::Cancelled,
        CancelStatus::AlreadyFinished => pb::CancelStatus::AlreadyFinished,
        CancelStatus::NotHeld => pb::CancelStatus::NotHeld,
        CancelStatus::NotTaken => pb::CancelStatus::NotTaken,
        CancelStatus::Conflict => pb::CancelStatus::Conflict,
    }
}

/// A cancel result from the wire; `None` for a status this build does not know.
pub(crate) fn cancel_result_from_wire(result: &pb::CancelResult) -> Option<CancelResult> {
    let status = match pb::CancelStatus::try_from(result.status).ok()? {
        pb::CancelStatus::Cancelled => CancelStatus::Cancelled,
        pb::CancelStatus::AlreadyFinished => CancelStatus::AlreadyFinished,
        pb::CancelStatus::NotHeld => CancelStatus::NotHeld,
        pb::CancelStatus::NotTaken => CancelStatus::NotTaken,
        pb::CancelStatus::Conflict => CancelStatus::Conflict,
        pb::CancelStatus::Unspecified => return None,
    };
    Some(CancelResult {
        seq: result.seq,
        call: result.call.as_ref()?.call_index,
        status,
    })
}

/// A completion from the wire; `None` for an outcome this build does not know.
pub(crate) fn completion_from_wire(completion: &pb::Completion) -> Option<Completion> {
    let outcome = match completion.outcome.as_ref()? {
        pb::completion::Outcome::Value(value) => RemoteOutcome::Completed(value.to_vec()),
        pb::completion::Outcome::Failure(failure) => {
            match pb::FailureKind::try_from(failure.kind).ok()? {
                pb::FailureKind::Failed => RemoteOutcome::Failed(failure.message.clone()),
                pb::FailureKind::Cancelled => RemoteOutcome::Cancelled(failure.message.clone()),
                pb::FailureKind::Deadline => RemoteOutcome::Deadline,
                pb::FailureKind::Unspecified => return None,
            }
        }
    };
    Some(Completion {
        seq: completion.seq,
        call: completion.call.as_ref()?.call_index,
        outcome,
    })
}

/// Whether `completed`, a call id a callee sent, names another call than `held` under the
/// same index: another workflow or journal position, where it carries them (they ride along
/// for this check and for display; the index is the key).
pub(crate) fn another_call(held: &CallId, completed: &pb::CallId) -> bool {
    held.index == completed.call_index
        && !completed.workflow.is_empty()
        && (held.workflow != completed.workflow || held.position != completed.position)
}

/// A completion's outcome on the wire.
pub(crate) fn outcome_to_wire(outcome: RemoteOutcome) -> pb::completion::Outcome {
    let failure = |kind: pb::FailureKind, message: String| {
        pb::completion::Outcome::Failure(pb::Failure {
            kind: kind.into(),
            message,
        })
    };
    match outcome {
        RemoteOutcome::Completed(value) => pb::completion::Outcome::Value(value.into()),
        RemoteOutcome::Failed(message) => failure(pb::FailureKind::Failed, message),
        RemoteOutcome::Cancelled(message) => failure(pb::FailureKind::Cancelled, message),
        RemoteOutcome::Deadline => failure(pb::FailureKind::Deadline, String::new()),
    }
}

pub(crate) fn ack_to_wire(seq: u64, call: pb::CallId, ack: &AckStatus) -> pb::CompletionAck {
    let (ack, resolved_as) = match ack {
        AckStatus::Resolved => (pb::Ack::Resolved, String::new()),
        AckStatus::AlreadyResolved(how) => (pb::Ack::AlreadyResolved, how.clone()),
        AckStatus::CallerGone => (pb::Ack::CallerGone, String::new()),
    };
    pb::CompletionAck {
        seq,
        call: Some(call),
        ack: ack.into(),
        resolved_as,
    }
}

/// The `(seq, call index)` a terminal acknowledgement settles; `None` for an ack this build
/// does not know (not terminal).
pub(crate) fn ack_from_wire(ack: &pb::CompletionAck) -> Option<(u64, u64)> {
    match pb::Ack::try_from(ack.ack).ok()? {
        pb::Ack::Resolved | pb::Ack::AlreadyResolved | pb::Ack::CallerGone => {
            Some((ack.seq, ack.call.as_ref()?.call_index))
        }
        pb::Ack::Unspecified => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn call() -> CallId {
        CallId {
            index: 41,
            workflow: "w".into(),
            position: 3,
        }
    }

    /// Every start status and refusal survives the wire, and an unknown one is `None`.
    #[test]
    fn start_results_round_trip_and_unknown_values_are_not_terminal() {
        let statuses = [
            StartStatus::Accepted {
                workflow: "@a.1.2".into(),
                finished: true,
            },
            StartStatus::Withdrawn,
            StartStatus::Forgotten,
            StartStatus::Conflict,
        ]
        .into_iter()
        .chain(
            [
                Refusal::UnknownKind,
                Refusal::NotExposed,
                Refusal::Invalid,
                Refusal::DeadlinePassed,
                Refusal::DeadlineTooLong,
            ]
            .map(|refusal| StartStatus::Refused {
                refusal,
                message: refusal.as_str().into(),
            }),
        );
        for status in statuses {
            let result = StartResult {
                seq: 7,
                call: 41,
                status,
            };
            let wire = start_result_to_wire(&result, &call());
            assert_eq!(start_result_from_wire(&wire), Some(result));
        }
        let unknown = pb::StartResult {
            status: 99,
            call: Some(call_to_wire(&call())),
            ..pb::StartResult::default()
        };
        assert_eq!(start_result_from_wire(&unknown), None);
    }

    #[test]
    fn completions_round_trip() {
        for outcome in [
            RemoteOutcome::Completed(b"v".to_vec()),
            RemoteOutcome::Failed("f".into()),
            RemoteOutcome::Cancelled("c".into()),
            RemoteOutcome::Deadline,
        ] {
            let wire = pb::Completion {
                seq: 2,
                call: Some(call_to_wire(&call())),
                outcome: Some(outcome_to_wire(outcome.clone())),
                ..pb::Completion::default()
            };
            assert_eq!(
                completion_from_wire(&wire),
                Some(Completion {
                    seq: 2,
                    call: 41,
                    outcome
                })
            );
        }
    }

    #[test]
    fn a_completion_for_another_call_under_the_same_index_is_told_apart() {
        let held = CallId {
            index: 7,
            workflow: "w".into(),
            position: 2,
        };
        let wire = |index, workflow: &str, position| pb::CallId {
            call_index: index,
            workflow: workflow.into(),
            position,
        };
        assert!(!another_call(&held, &wire(7, "w", 2)), "the same call");
        assert!(another_call(&held, &wire(7, "v", 2)), "another workflow");
        assert!(another_call(&held, &wire(7, "w", 3)), "another position");
        assert!(
            !another_call(&held, &wire(8, "v", 3)),
            "another index is not this item's"
        );
        assert!(
            !another_call(&held, &wire(7, "", 0)),
            "a callee that sends the index only"
        );
    }

    #[test]
    fn a_malformed_identity_is_invalid() {
        let short = pb::ClusterIdentity {
            name: "a".into(),
            incarnation: vec![1, 2].into(),
        };
        let error = identity_from_wire(Some(&short), "caller").expect_err("short");
        assert!(error.message().contains("16 bytes"), "{error}");
        let identity = ClusterIdentity::new("a", [9; 16]).expect("valid");
        assert_eq!(
            identity_from_wire(Some(&identity_to_wire(&identity)), "caller").expect("valid"),
            identity
        );
    }
}
