//! Whole-request errors of `keel.remote.v1` (REMOTE.md §8.6): gRPC statuses carrying the
//! `keel-error` kinds Keel's other services use, plus the three this protocol adds, and how
//! a sender reacts to each.

use keel_raft::wire_error::{KIND_KEY, WriteErrorKind, status};
use tonic::{Code, Status};

/// The callee is not the identity the caller bound (re-created, restored, another cluster).
pub(crate) const WRONG_CALLEE: &str = "wrong-callee";
/// The caller is not the identity the receiver expects.
pub(crate) const WRONG_CALLER: &str = "wrong-caller";
/// No protocol version both sides speak.
pub(crate) const REMOTE_VERSION: &str = "remote-version";

/// Malformed framing: identities, protocol, item order, sizes.
pub(crate) fn invalid(message: impl Into<String>) -> Status {
    status(WriteErrorKind::Invalid, message)
}

/// Nothing done; retry later.
pub(crate) fn unavailable(message: impl Into<String>) -> Status {
    status(WriteErrorKind::Unavailable, message)
}

/// The requester is not a configured remote.
pub(crate) fn denied(message: impl Into<String>) -> Status {
    keel_raft::wire_error::denied(Status::permission_denied(message))
}

/// One of this protocol's own refusals (`kind` is one of the constants above).
pub(crate) fn refusal(kind: &'static str, message: impl Into<String>) -> Status {
    let mut status = Status::new(Code::FailedPrecondition, message);
    status.metadata_mut().insert(
        KIND_KEY,
        kind.parse().expect("the kinds are ASCII metadata values"),
    );
    status
}

/// What a failed request means to its sender.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Failure {
    /// This node does not lead: try the next configured address at once.
    NotLeader,
    /// Nothing known done (transport error, timeout, unavailable, overloaded, outcome
    /// unknown): back off and retry the same request.
    Transient(String),
    /// A bug or a misconfiguration on one side (invalid, wrong identity, no common version,
    /// denied): halt the remote, probe it with Hello.
    Halt(String),
}

/// How the sender of a request reacts to `status`.
pub(crate) fn classify(status: &Status) -> Failure {
    let kind = status
        .metadata()
        .get(KIND_KEY)
        .and_then(|value| value.to_str().ok());
    let message = format!("{}: {}", kind.unwrap_or("transport"), status.message());
    match kind {
        Some(kind) if kind == WriteErrorKind::NotLeader.as_str() => Failure::NotLeader,
        Some(WRONG_CALLEE | WRONG_CALLER | REMOTE_VERSION) => Failure::Halt(message),
        Some(kind) => match WriteErrorKind::parse(kind) {
            Some(WriteErrorKind::Invalid | WriteErrorKind::Denied) => Failure::Halt(message),
            _ => Failure::Transient(message),
        },
        None => match status.code() {
            Code::PermissionDenied | Code::Unauthenticated | Code::Unimplemented => {
                Failure::Halt(message)
            }
            _ => Failure::Transient(message),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_error_is_classified_as_its_sender_must_react() {
        assert_eq!(
            classify(&keel_raft::wire_error::not_leader(None)),
            Failure::NotLeader
        );
        for transient in [
            unavailable("catching up"),
            status(WriteErrorKind::OutcomeUnknown, "lost"),
            Status::unavailable("connection refused"),
            Status::deadline_exceeded("timeout"),
        ] {
            assert!(
                matches!(classify(&transient), Failure::Transient(_)),
                "{transient:?}"
            );
        }
        for halt in [
            invalid("items out of order"),
            refusal(WRONG_CALLEE, "another incarnation"),
            refusal(REMOTE_VERSION, "speaks 2..=3"),
            denied("not configured"),
        ] {
            assert!(matches!(classify(&halt), Failure::Halt(_)), "{halt:?}");
        }
    }
}
