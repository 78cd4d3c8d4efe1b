//! How the client service reports errors, so a client can tell "not proposed, safe to
//! retry" from "outcome unknown".
//!
//! Every error status carries the metadata key [`KIND_KEY`] with a [`WriteErrorKind`]; a
//! not-leader error also carries the leader's id and address when known.

use tonic::Status;
use tonic::metadata::MetadataValue;

/// Metadata key naming the error kind.
pub const KIND_KEY: &str = "keel-error";
/// Metadata key with the leader's node id.
pub const LEADER_ID_KEY: &str = "keel-leader-id";
/// Metadata key with the leader's address.
pub const LEADER_ADDR_KEY: &str = "keel-leader-addr";

/// What went wrong with a client request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WriteErrorKind {
    /// This node is not the leader; nothing was proposed. Safe to retry at the leader.
    NotLeader,
    /// The node is at its in-flight limit; nothing was proposed. Safe to retry later.
    Overloaded,
    /// The write was proposed but its fate is unknown (leader change, timeout): it may or may
    /// not be applied. Retry with the same `(session, seq)` to learn which, exactly once.
    OutcomeUnknown,
    /// The request is malformed or over a limit; retrying it will fail the same way.
    Invalid,
    /// The sequence is older than the session's last applied one.
    StaleSequence,
    /// The session is not registered or has expired: this request was not applied, and an
    /// earlier attempt of the same write can no longer be told applied or not. Never re-send
    /// the write under another session; register a new session for new writes.
    UnknownSession,
    /// The node cannot serve (stopped, not admitted, no leader known). Nothing was proposed.
    Unavailable,
    /// The caller's credentials were refused (`UNAUTHENTICATED`: none, or a token or
    /// certificate the node does not accept; also a TLS handshake either side refused) or
    /// its role may not make the call (`PERMISSION_DENIED`). Nothing was done; the same
    /// credentials fail the same way, so it is not retried.
    Denied,
}

impl WriteErrorKind {
    /// The metadata value.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::NotLeader => "not-leader",
            Self::Overloaded => "overloaded",
            Self::OutcomeUnknown => "outcome-unknown",
            Self::Invalid => "invalid",
            Self::StaleSequence => "stale-sequence",
            Self::UnknownSession => "session-unknown",
            Self::Unavailable => "unavailable",
            Self::Denied => "denied",
        }
    }

    /// The kind a metadata value names.
    pub fn parse(value: &str) -> Option<Self> {
        [
            Self::NotLeader,
            Self::Overloaded,
            Self::OutcomeUnknown,
            Self::Invalid,
            Self::StaleSequence,
            Self::UnknownSession,
            Self::Unavailable,
            Self::Denied,
        ]
        .into_iter()
        .find(|kind| kind.as_str() == value)
    }

    /// Whether the request was certainly not applied, so any retry is safe.
    pub fn is_safe_to_retry(self) -> bool {
        matches!(self, Self::NotLeader | Self::Overloaded | Self::Unavailable)
    }

    fn code(self) -> tonic::Code {
        match self {
            Self::NotLeader | Self::Overloaded | Self::Unavailable => tonic::Code::Unavailable,
            Self::OutcomeUnknown => tonic::Code::Unknown,
            Self::Invalid => tonic::Code::InvalidArgument,
            Self::StaleSequence | Self::UnknownSession => tonic::Code::FailedPrecondition,
            Self::Denied => tonic::Code::PermissionDenied,
        }
    }
}

/// `status` (an `UNAUTHENTICATED` or `PERMISSION_DENIED` refusal) marked
/// [`WriteErrorKind::Denied`], its code kept.
pub fn denied(mut status: Status) -> Status {
    status.metadata_mut().insert(
        KIND_KEY,
        MetadataValue::from_static(WriteErrorKind::Denied.as_str()),
    );
    status
}

/// A status of `kind` with `message`.
pub fn status(kind: WriteErrorKind, message: impl Into<String>) -> Status {
    let mut status = Status::new(kind.code(), message);
    status
        .metadata_mut()
        .insert(KIND_KEY, MetadataValue::from_static(kind.as_str()));
    status
}

/// A not-leader status naming the leader when known.
pub fn not_leader(leader: Option<(u64, &str)>) -> Status {
    let message = match leader {
        Some((id, addr)) => format!("not the leader; the leader is node {id} at {addr}"),
        None => "not the leader, and no leader is known yet".to_owned(),
    };
    with_leader(status(WriteErrorKind::NotLeader, message), leader)
}

fn with_leader(mut status: Status, leader: Option<(u64, &str)>) -> Status {
    if let Some((id, addr)) = leader {
        status
            .metadata_mut()
            .insert(LEADER_ID_KEY, MetadataValue::from(id));
        if let Ok(addr) = addr.parse() {
            status.metadata_mut().insert(LEADER_ADDR_KEY, addr);
        }
    }
    status
}

/// The stream form of an error status.
pub fn to_append_error(status: &Status) -> crate::pb::client::AppendError {
    let (kind, leader) = parse(status);
    crate::pb::client::AppendError {
        kind: kind.map_or_else(String::new, |k| k.as_str().to_owned()),
        message: status.message().to_owned(),
        leader_id: leader.as_ref().map(|(id, _)| *id),
        leader_addr: leader.map(|(_, addr)| addr).unwrap_or_default(),
    }
}

/// The error status a stream error answer stands for.
pub fn from_append_error(error: &crate::pb::client::AppendError) -> Status {
    let Some(kind) = WriteErrorKind::parse(&error.kind) else {
        return Status::unknown(error.message.clone());
    };
    let leader = error.leader_id.map(|id| (id, error.leader_addr.as_str()));
    with_leader(status(kind, error.message.clone()), leader)
}

/// The kind of an error status, and the leader it names.
pub fn parse(status: &Status) -> (Option<WriteErrorKind>, Option<(u64, String)>) {
    let metadata = status.metadata();
    let kind = metadata
        .get(KIND_KEY)
        .and_then(|v| v.to_str().ok())
        .and_then(WriteErrorKind::parse);
    let leader_id = metadata
        .get(LEADER_ID_KEY)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok());
    let leader_addr = metadata
        .get(LEADER_ADDR_KEY)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    (kind, leader_id.zip(leader_addr))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn not_leader_round_trips_with_the_leader() {
        let status = not_leader(Some((3, "127.0.0.1:7003")));
        assert_eq!(
            parse(&status),
            (
                Some(WriteErrorKind::NotLeader),
                Some((3, "127.0.0.1:7003".to_owned()))
            )
        );
        assert!(WriteErrorKind::NotLeader.is_safe_to_retry());
        assert!(!WriteErrorKind::OutcomeUnknown.is_safe_to_retry());
    }

    #[test]
    fn stream_errors_round_trip() {
        for status in [
            not_leader(Some((2, "127.0.0.1:7002"))),
            not_leader(None),
            status(WriteErrorKind::OutcomeUnknown, "lost"),
            status(WriteErrorKind::Invalid, "too big"),
            status(WriteErrorKind::UnknownSession, "expired"),
        ] {
            let back = from_append_error(&to_append_error(&status));
            assert_eq!(parse(&back), parse(&status));
            assert_eq!(back.code(), status.code());
        }
    }
}
