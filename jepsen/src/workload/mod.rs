//! Workloads: client processes that operate on the cluster and record every operation as
//! invoke and completion.

pub mod log;
pub mod timers;
pub mod workflows;

use std::collections::BTreeMap;
use std::time::Duration;

use keel_raft::client::ClientError;
use keel_raft::wire_error::WriteErrorKind;
use keel_scheduler::client::{WorkflowClient, WorkflowClientError};

use crate::history::OpType;

/// Longest an operation may take before it is recorded as unknown.
pub const OP_TIMEOUT: Duration = Duration::from_secs(5);

/// How many final reads run at once.
const FINAL_READERS: usize = 8;

/// Reads every key with `read`, `FINAL_READERS` at once (each reader a clone of
/// `client`); a key `read` finds refused (it does not exist) is left out.
///
/// # Errors
/// The first cluster error.
pub async fn read_concurrently<T>(
    client: &WorkflowClient,
    keys: &[String],
    read: impl AsyncFn(&mut WorkflowClient, &str) -> Result<T, WorkflowClientError>,
) -> Result<BTreeMap<String, T>, WorkflowClientError> {
    let read = &read;
    let readers = keys
        .chunks(keys.len().div_ceil(FINAL_READERS).max(1))
        .map(|chunk| {
            let mut client = client.clone();
            async move {
                let mut found = Vec::new();
                for key in chunk {
                    match read(&mut client, key).await {
                        Ok(value) => found.push((key.clone(), value)),
                        Err(WorkflowClientError::Rejected { .. }) => {}
                        Err(error) => return Err(error),
                    }
                }
                Ok(found)
            }
        });
    let mut all = BTreeMap::new();
    for found in futures::future::join_all(readers).await {
        all.extend(found?);
    }
    Ok(all)
}

/// What an error means for an operation: certainly not applied (`fail`) or unknown.
pub fn classify(error: &ClientError) -> OpType {
    match error {
        ClientError::Refused { kind, .. } if kind.is_safe_to_retry() => OpType::Fail,
        ClientError::Refused {
            kind:
                WriteErrorKind::Invalid | WriteErrorKind::StaleSequence | WriteErrorKind::UnknownSession,
            ..
        }
        | ClientError::Endpoint { .. } => OpType::Fail,
        _ => OpType::Info,
    }
}
