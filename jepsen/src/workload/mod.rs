//! Workloads: client processes that operate on the cluster and record every operation as
//! invoke and completion.

pub mod log;
pub mod timers;
pub mod workflows;

use std::time::Duration;

use keel_raft::client::ClientError;
use keel_raft::wire_error::WriteErrorKind;

use crate::history::OpType;

/// Longest an operation may take before it is recorded as unknown.
pub const OP_TIMEOUT: Duration = Duration::from_secs(5);

/// What an error means for an operation: certainly not applied (`fail`) or unknown.
pub fn classify(error: &ClientError) -> OpType {
    match error {
        ClientError::Refused { kind, .. } if kind.is_safe_to_retry() => OpType::Fail,
        ClientError::Refused {
            kind: WriteErrorKind::Invalid | WriteErrorKind::StaleSequence,
            ..
        }
        | ClientError::Endpoint { .. } => OpType::Fail,
        _ => OpType::Info,
    }
}
