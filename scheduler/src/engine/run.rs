//! One workflow run, from the top to its end: shared by the leader's engine and remote
//! workers, which differ only in where the journal is (see [`JournalPort`]).

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures::FutureExt as _;
use std::panic::AssertUnwindSafe;

use super::context::Context;
use super::error::WorkflowError;
use super::journal::JournalPort;
use super::registry::Kind;
use crate::command::{Command, Outcome};
use crate::state::JournalEntry;

/// Pause before a run retries after its journal was unreachable.
const RUN_RETRY_PAUSE: Duration = Duration::from_secs(1);

/// Runs `workflow` under `fence` until it finishes or the run is superseded. `load` gives
/// the input and the journal to replay; it is called again after the journal moved under
/// the run or could not be reached.
pub(crate) async fn run_to_end<L, Fut>(
    kind: &Kind,
    port: &Arc<dyn JournalPort>,
    workflow: &str,
    fence: u64,
    mut load: L,
) where
    L: FnMut() -> Fut,
    Fut: Future<Output = Result<(Bytes, Vec<JournalEntry>), WorkflowError>>,
{
    loop {
        let result = match load().await {
            Ok((input, journal)) => run_once(kind, port, workflow, fence, input, journal).await,
            Err(error) => Err(error),
        };
        match result {
            Ok(()) | Err(WorkflowError::Superseded) => return,
            Err(WorkflowError::Replay) => {}
            Err(WorkflowError::Suspended { seq }) => match port.wait(workflow, fence, seq).await {
                Ok(_) => {}
                Err(WorkflowError::Superseded) => return,
                Err(error) => {
                    tracing::warn!(%workflow, seq, %error, "waiting for a suspended run's entry; retrying");
                    tokio::time::sleep(RUN_RETRY_PAUSE).await;
                }
            },
            Err(error) => {
                tracing::warn!(%workflow, %error, "workflow run interrupted; retrying");
                tokio::time::sleep(RUN_RETRY_PAUSE).await;
            }
        }
    }
}

/// One run from the top: replays `journal`, runs the rest, records the outcome.
async fn run_once(
    kind: &Kind,
    port: &Arc<dyn JournalPort>,
    workflow: &str,
    fence: u64,
    input: Bytes,
    journal: Vec<JournalEntry>,
) -> Result<(), WorkflowError> {
    let context = Context::new(
        workflow.to_owned(),
        fence,
        journal,
        Arc::clone(port),
        kind.suspends,
    );
    // A panic in the workflow's code is that workflow's failure, not the engine's.
    let result = AssertUnwindSafe((kind.function)(context, input))
        .catch_unwind()
        .await
        .unwrap_or_else(|panic| {
            let message = panic
                .downcast_ref::<&str>()
                .map(|s| (*s).to_owned())
                .or_else(|| panic.downcast_ref::<String>().cloned())
                .unwrap_or_default();
            Err(WorkflowError::Failed(format!(
                "the workflow panicked: {message}"
            )))
        });
    let outcome = match result {
        Ok(value) => Outcome::Ok(value.to_vec()),
        Err(
            error @ (WorkflowError::Superseded
            | WorkflowError::Replay
            | WorkflowError::Suspended { .. }
            | WorkflowError::Journal(_)),
        ) => return Err(error),
        Err(WorkflowError::NonDeterminism(reason)) => {
            // Not the workflow's failure: its code changed under it. Parked, it waits for
            // code that matches (retried at the next takeover or launch).
            tracing::warn!(%workflow, %reason, "workflow parked");
            return port
                .propose(Command::Park {
                    workflow: workflow.to_owned(),
                    fence,
                    reason,
                })
                .await
                .map(|_| ());
        }
        Err(error) => Outcome::Err(error.to_string()),
    };
    port.propose(Command::Finish {
        workflow: workflow.to_owned(),
        fence,
        outcome,
    })
    .await
    .map(|_| ())
}
