//! Keel's Python exceptions, raised from Rust: the classes live in `keel._errors`, whose
//! `native_error(kind, message, detail)` builds one from the kind named here.

use keel_scheduler::client::WorkflowClientError;
use keel_scheduler::engine::context::WorkflowError;
use pyo3::prelude::*;

/// The exception of kind `kind` (a class name of `keel._errors`) with `message`, and
/// `detail` for the kinds that carry one (a failure's serialized error).
pub(crate) fn keel_error(
    py: Python<'_>,
    kind: &str,
    message: impl Into<String>,
    detail: Option<String>,
) -> PyErr {
    let message = message.into();
    let built = py
        .import("keel._errors")
        .and_then(|module| module.getattr("native_error"))
        .and_then(|factory| factory.call1((kind, message.as_str(), detail)));
    match built {
        Ok(exception) => PyErr::from_value(exception),
        Err(error) => error,
    }
}

/// The exception for a workflow client's error.
pub(crate) fn client_error(py: Python<'_>, error: &WorkflowClientError) -> PyErr {
    use keel_scheduler::wire::RejectionKind;
    let kind = match error {
        WorkflowClientError::Rejected { kind, .. } => match kind {
            RejectionKind::UnknownKind | RejectionKind::UnknownWorkflow => "NotFound",
            RejectionKind::TooLarge | RejectionKind::Invalid | RejectionKind::InvalidCron => {
                "InvalidRequest"
            }
            RejectionKind::Finished | RejectionKind::Conflict => "KeelError",
        },
        WorkflowClientError::Cluster(keel_raft::client::ClientError::Refused {
            kind: keel_raft::wire_error::WriteErrorKind::Denied,
            ..
        }) => "PermissionDenied",
        WorkflowClientError::Cluster(_) => "Unavailable",
        WorkflowClientError::DataLoss { .. } => "KeelError",
    };
    keel_error(py, kind, error.to_string(), None)
}

/// The exception a workflow sees for a failed durable call. `None` for the engine's own
/// errors, which end the run rather than being the workflow's to handle.
pub(crate) fn workflow_error(py: Python<'_>, error: &WorkflowError) -> Option<PyErr> {
    Some(match error {
        WorkflowError::StepFailed {
            step,
            attempts,
            error,
        } => keel_error(
            py,
            "StepFailed",
            format!("step {step} failed after {attempts} attempt(s)"),
            Some(error.clone()),
        ),
        WorkflowError::ChildFailed { child, error } => keel_error(
            py,
            "WorkflowFailed",
            format!("child workflow {child} failed"),
            Some(error.clone()),
        ),
        WorkflowError::RemoteFailed {
            remote,
            kind,
            error,
        } => keel_error(
            py,
            "WorkflowFailed",
            format!("remote workflow {kind} in {remote} failed"),
            Some(error.clone()),
        ),
        WorkflowError::RemoteTimedOut { remote, kind } => keel_error(
            py,
            "Timeout",
            format!("remote workflow {kind} in {remote} timed out"),
            None,
        ),
        WorkflowError::Failed(message) => keel_error(py, "KeelError", message.clone(), None),
        WorkflowError::NonDeterminism(_)
        | WorkflowError::Superseded
        | WorkflowError::Replay
        | WorkflowError::Suspended { .. }
        | WorkflowError::Journal(_) => return None,
    })
}
