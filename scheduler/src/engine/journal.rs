//! How a run reaches its workflow's journal: proposals through the leader, and waits for
//! pending entries (sleeps, signals, calls) on the local replica.

use std::time::Duration;

use futures::future::BoxFuture;
use keel_raft::retry::{Attempt, Backoff, retry};
use keel_raft::wire_error::{self, WriteErrorKind};

use super::error::WorkflowError;
use super::proposer::Proposer;
use crate::command::{Answer, Command, EntryState, Outcome, Rejection, StoredOutcome, Value};
use crate::machine::SchedulerMachine;

/// Times a proposal whose outcome is unknown, or refused as overloaded, is retried (every
/// journal command is idempotent, so a retry cannot record twice).
const RETRIES_MAX: u32 = 20;
const RETRY_PAUSE: Duration = Duration::from_millis(100);

/// A run's access to its journal.
pub(crate) trait JournalPort: Send + Sync + 'static {
    /// Proposes a journal command; maps refusals to the run's errors.
    fn propose(&self, command: Command) -> BoxFuture<'_, Result<Answer, WorkflowError>>;

    /// Waits until entry `seq` of `workflow` is resolved, while `fence` is current.
    fn wait<'a>(
        &'a self,
        workflow: &'a str,
        fence: u64,
        seq: u32,
    ) -> BoxFuture<'a, Result<EntryState, WorkflowError>>;

    /// A journaled outcome with its value read.
    fn outcome(&self, outcome: &StoredOutcome) -> Result<Outcome, WorkflowError>;
}

/// An outcome whose value was sent inline (to a remote worker, which has no value store).
pub(crate) fn inline_outcome(outcome: &StoredOutcome) -> Result<Outcome, WorkflowError> {
    let bytes = |value: &Value| match value {
        Value::Inline(bytes) => Ok(bytes.clone()),
        Value::Recorded(_) => Err(WorkflowError::Journal(
            "the leader sent a journaled value by reference".to_owned(),
        )),
    };
    Ok(match outcome {
        StoredOutcome::Ok(value) => Outcome::Ok(bytes(value)?),
        StoredOutcome::Err(message) => {
            Outcome::Err(String::from_utf8_lossy(&bytes(message)?).into_owned())
        }
    })
}

/// The journal of a run on the leader itself.
#[derive(Debug, Clone)]
pub(crate) struct LocalJournal {
    pub(crate) proposer: Proposer,
    pub(crate) machine: SchedulerMachine,
}

/// What a run does about a refusal.
pub(crate) fn refused(rejection: Rejection) -> Result<Answer, WorkflowError> {
    match rejection {
        Rejection::AlreadyRecorded { outcome, .. } => Ok(Answer::Entry(EntryState::Done(outcome))),
        Rejection::StaleFence { .. } | Rejection::Finished(_) | Rejection::UnknownWorkflow(_) => {
            Err(WorkflowError::Superseded)
        }
        Rejection::NonDeterminism { .. } => {
            Err(WorkflowError::NonDeterminism(rejection.to_string()))
        }
        Rejection::OutOfOrder { .. } => Err(WorkflowError::Replay),
        Rejection::UnknownKind(_)
        | Rejection::Malformed
        | Rejection::InvalidCron { .. }
        | Rejection::TooLarge { .. }
        | Rejection::Invalid { .. }
        | Rejection::IdentityReplaced { .. } => Err(WorkflowError::Failed(rejection.to_string())),
    }
}

impl LocalJournal {
    async fn propose_retrying(&self, command: Command) -> Result<Answer, WorkflowError> {
        self.machine.proposable(&command).await;
        retry(Backoff::constant(RETRY_PAUSE, RETRIES_MAX + 1), |_| {
            let proposed = self.proposer.propose(command.clone(), None);
            async move {
                let status = match proposed.await {
                    Ok(Answer::Rejected(rejection)) => return Attempt::Done(refused(rejection)),
                    Ok(answer) => return Attempt::Done(Ok(answer)),
                    Err(status) => status,
                };
                let error = WorkflowError::Journal(status.message().to_owned());
                match wire_error::parse(&status).0 {
                    Some(WriteErrorKind::OutcomeUnknown | WriteErrorKind::Overloaded) => {
                        Attempt::Again(error)
                    }
                    Some(WriteErrorKind::NotLeader | WriteErrorKind::Unavailable) => {
                        Attempt::Done(Err(WorkflowError::Superseded))
                    }
                    _ => Attempt::Done(Err(error)),
                }
            }
        })
        .await
    }

    async fn wait_resolved(
        &self,
        workflow: &str,
        fence: u64,
        seq: u32,
    ) -> Result<EntryState, WorkflowError> {
        match self.machine.wait_entry(workflow, fence, seq, None).await {
            Ok(Some(state)) => Ok(state),
            Ok(None) => unreachable!("a wait without a deadline ends resolved or superseded"),
            Err(_) => Err(WorkflowError::Superseded),
        }
    }
}

impl JournalPort for LocalJournal {
    fn propose(&self, command: Command) -> BoxFuture<'_, Result<Answer, WorkflowError>> {
        Box::pin(self.propose_retrying(command))
    }

    fn wait<'a>(
        &'a self,
        workflow: &'a str,
        fence: u64,
        seq: u32,
    ) -> BoxFuture<'a, Result<EntryState, WorkflowError>> {
        Box::pin(self.wait_resolved(workflow, fence, seq))
    }

    fn outcome(&self, outcome: &StoredOutcome) -> Result<Outcome, WorkflowError> {
        self.machine
            .outcome(outcome)
            .map_err(|error| WorkflowError::Journal(error.to_string()))
    }
}
