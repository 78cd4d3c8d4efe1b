//! How a workflow run ends other than by returning: the error type of the workflow API,
//! shared by the [`Context`](super::context::Context) that raises it and the journal ports
//! and runs that pass it on.

use std::fmt;

/// Why a workflow function stopped. Return the user-facing ones from a workflow to fail it;
/// the rest are how the engine ends a run (propagate them with `?`).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WorkflowError {
    /// The workflow failed, with this message.
    #[error("{0}")]
    Failed(String),
    /// A step failed its last attempt.
    #[error("step {step:?} failed after {attempts} attempt(s): {error}")]
    StepFailed {
        /// The step.
        step: String,
        /// Attempts made.
        attempts: u32,
        /// The last attempt's error.
        error: String,
    },
    /// A child workflow failed or was cancelled.
    #[error("child workflow {child} failed: {error}")]
    ChildFailed {
        /// The child's id.
        child: String,
        /// Its error.
        error: String,
    },
    /// A workflow called in another cluster failed or was cancelled there, or that cluster
    /// refused the call.
    #[error("remote workflow {kind:?} in {remote} failed: {error}")]
    RemoteFailed {
        /// The remote's alias.
        remote: String,
        /// The kind called.
        kind: String,
        /// Its error.
        error: String,
    },
    /// A call of a workflow in another cluster reached its deadline (it is cancelled there).
    #[error("remote workflow {kind:?} in {remote} timed out")]
    RemoteTimedOut {
        /// The remote's alias.
        remote: String,
        /// The kind called.
        kind: String,
    },
    /// The code asks for another operation than the journal records.
    #[error("{0}")]
    NonDeterminism(String),
    /// This run no longer owns the workflow (a newer fence, lost leadership, cancelled or
    /// finished): it must stop without touching the journal.
    #[error("this run no longer owns the workflow")]
    Superseded,
    /// The journal moved under this run: it re-runs from the top.
    #[error("the journal changed under this run; replaying")]
    Replay,
    /// The run of a suspending kind (see
    /// [`Registry::register_suspending`](super::registry::Registry::register_suspending))
    /// reached journal entry `seq` unresolved (a sleep, a signal wait, a call) and gave back
    /// its thread: the engine waits for the entry, then replays the run from its journal.
    #[error("suspended at journal entry {seq} until it resolves")]
    Suspended {
        /// The unresolved entry.
        seq: u32,
    },
    /// The journal could not be reached.
    #[error("journal unavailable: {0}")]
    Journal(String),
}

impl WorkflowError {
    /// A workflow failure with `message`.
    pub fn failed(message: impl fmt::Display) -> Self {
        Self::Failed(message.to_string())
    }
}
