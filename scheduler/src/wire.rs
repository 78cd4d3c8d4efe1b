//! Scheduler refusals on the wire: a status with keel-raft's "invalid" kind (never retried)
//! and the metadata key [`REJECTION_KEY`] naming the refusal, so clients get a typed error.

use keel_raft::wire_error::{WriteErrorKind, status};
use tonic::Status;
use tonic::metadata::MetadataValue;

use crate::command::Rejection;

/// Metadata key naming a scheduler refusal.
pub const REJECTION_KEY: &str = "keel-rejection";

/// Kinds of refusal, as [`REJECTION_KEY`] names them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RejectionKind {
    /// No executor declared the workflow kind.
    UnknownKind,
    /// No workflow has the id.
    UnknownWorkflow,
    /// The workflow already finished.
    Finished,
    /// A cron expression that does not parse.
    InvalidCron,
    /// A field over its size limit.
    TooLarge,
    /// A malformed or invalid request.
    Invalid,
    /// A journal conflict (stale fence, non-determinism, out of order, recorded already).
    Conflict,
}

impl RejectionKind {
    const ALL: [Self; 7] = [
        Self::UnknownKind,
        Self::UnknownWorkflow,
        Self::Finished,
        Self::InvalidCron,
        Self::TooLarge,
        Self::Invalid,
        Self::Conflict,
    ];

    /// The metadata value.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::UnknownKind => "unknown-kind",
            Self::UnknownWorkflow => "unknown-workflow",
            Self::Finished => "finished",
            Self::InvalidCron => "invalid-cron",
            Self::TooLarge => "too-large",
            Self::Invalid => "invalid",
            Self::Conflict => "conflict",
        }
    }

    /// The kind a metadata value names.
    pub fn parse(value: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|k| k.as_str() == value)
    }

    /// The kind of `rejection`.
    pub fn of(rejection: &Rejection) -> Self {
        match rejection {
            Rejection::UnknownKind(_) => Self::UnknownKind,
            Rejection::UnknownWorkflow(_) => Self::UnknownWorkflow,
            Rejection::Finished(_) => Self::Finished,
            Rejection::InvalidCron { .. } => Self::InvalidCron,
            Rejection::TooLarge { .. } => Self::TooLarge,
            Rejection::Malformed | Rejection::Invalid { .. } => Self::Invalid,
            Rejection::StaleFence { .. }
            | Rejection::NonDeterminism { .. }
            | Rejection::OutOfOrder { .. }
            | Rejection::AlreadyRecorded { .. }
            | Rejection::IdentityReplaced { .. } => Self::Conflict,
        }
    }
}

/// The status of `rejection`.
pub fn rejected(rejection: &Rejection) -> Status {
    let mut status = status(WriteErrorKind::Invalid, rejection.to_string());
    status.metadata_mut().insert(
        REJECTION_KEY,
        MetadataValue::from_static(RejectionKind::of(rejection).as_str()),
    );
    status
}

/// The refusal kind a status carries.
pub fn rejection_kind(status: &Status) -> Option<RejectionKind> {
    status
        .metadata()
        .get(REJECTION_KEY)
        .and_then(|v| v.to_str().ok())
        .and_then(RejectionKind::parse)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_rejection_kind_round_trips_through_a_status() {
        for kind in RejectionKind::ALL {
            assert_eq!(RejectionKind::parse(kind.as_str()), Some(kind));
        }
        let status = rejected(&Rejection::UnknownKind("x".into()));
        assert_eq!(rejection_kind(&status), Some(RejectionKind::UnknownKind));
        assert_eq!(
            keel_raft::wire_error::parse(&status).0,
            Some(WriteErrorKind::Invalid)
        );
        assert_eq!(rejection_kind(&Status::internal("x")), None);
    }
}
