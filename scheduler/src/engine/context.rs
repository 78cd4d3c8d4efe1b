//! The workflow API: what a workflow function does through its [`Context`].
//!
//! Every durable operation takes the next journal position when it is called (not when its
//! future is first polled; see the engine's `positions` module). If the journal already
//! holds that entry (a re-run after a crash or failover), its recorded outcome is returned
//! without running anything; an entry that is a different operation is a non-determinism
//! error. Otherwise the operation runs and its outcome is committed, in position order,
//! before the future resolves. A step's *outcome* is therefore recorded exactly once; its
//! *body* runs at least once (a crash between running and recording re-runs it), so each
//! step gets a stable idempotency key to hand to the outside world. Await every call you
//! make: a later call's record waits for every earlier position.

use std::fmt;
use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use keel_raft::retry::Backoff;

pub use super::error::WorkflowError;
use super::journal::JournalPort;
use super::positions::{Held, Positions};
use crate::command::{Answer, Command, Due, EntryState, Outcome, StepRecord};
use crate::state::{EntryKind, JournalEntry};

/// How a step is retried.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryPolicy {
    /// Attempts in all (at least 1).
    pub attempts: u32,
    /// Pause before the second attempt; doubled each time up to `backoff_max`.
    pub backoff: Duration,
    /// Longest pause.
    pub backoff_max: Duration,
    /// An attempt running longer fails (`None`: no limit).
    pub timeout: Option<Duration>,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        Self {
            attempts: 3,
            backoff: Duration::from_millis(100),
            backoff_max: Duration::from_secs(10),
            timeout: None,
        }
    }
}

impl RetryPolicy {
    /// A policy of one attempt, no retry.
    pub fn once() -> Self {
        Self {
            attempts: 1,
            ..Self::default()
        }
    }

    /// The pauses between attempts, as every retry loop in Keel computes them. A step's
    /// attempts are not run by [`keel_raft::retry::retry`]: each failed attempt is
    /// journaled before the pause, so a run that takes over later continues the count.
    fn backoff(&self) -> Backoff {
        Backoff {
            attempts_max: self.attempts,
            first: self.backoff,
            max: self.backoff_max,
        }
    }
}

/// What a step's body knows about itself.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StepInfo {
    /// `workflow_id/step_seq`: stable across re-runs of the step; pass it to the outside
    /// world so a side effect repeated by a re-run is recognised there.
    pub idempotency_key: String,
    /// This attempt's number, from 1.
    pub attempt: u32,
}

struct Run {
    workflow: String,
    fence: u64,
    journal: Vec<JournalEntry>,
    /// Positions taken and filled, so records are proposed in journal order.
    positions: Positions,
    port: Arc<dyn JournalPort>,
    /// Whether an unresolved wait ends the run ([`WorkflowError::Suspended`]).
    suspends: bool,
}

/// A durable call's journal position, taken when the call is made.
struct Reserved {
    seq: u32,
    /// The state of the entry a previous run journaled there.
    existing: Option<EntryState>,
    held: Held,
}

/// A workflow run's handle on its journal; cheap to clone.
#[derive(Clone)]
pub struct Context {
    run: Arc<Run>,
}

impl fmt::Debug for Context {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Context")
            .field("workflow", &self.run.workflow)
            .field("fence", &self.run.fence)
            .finish_non_exhaustive()
    }
}

impl Run {
    /// Proposes a journal command for the held position, on its turn (once every earlier
    /// position exists); returns the entry's state after it.
    async fn journal(
        &self,
        held: &mut Held,
        command: Command,
    ) -> Result<EntryState, WorkflowError> {
        self.positions.turn(held.seq()).await?;
        match self.port.propose(command).await? {
            Answer::Entry(state) => {
                held.fill();
                Ok(state)
            }
            other => Err(WorkflowError::Journal(format!(
                "unexpected answer {other:?}"
            ))),
        }
    }

    /// A waiting call's entry (a sleep, a signal wait, a child call) once resolved: the
    /// journaled state at its position, or `command(seq)` journaled on its turn; then waited
    /// for while pending.
    async fn resolved_entry(
        &self,
        reserved: Result<Reserved, WorkflowError>,
        command: impl FnOnce(u32) -> Command,
    ) -> Result<(u32, EntryState), WorkflowError> {
        let Reserved {
            seq,
            existing,
            mut held,
        } = reserved?;
        let state = if let Some(state) = existing {
            state
        } else {
            self.journal(&mut held, command(seq)).await?
        };
        Ok((seq, self.resolved(seq, state).await?))
    }

    /// Waits for entry `seq` if `state` is pending (a suspending run stops instead).
    async fn resolved(&self, seq: u32, state: EntryState) -> Result<EntryState, WorkflowError> {
        if matches!(state, EntryState::Pending { .. }) {
            if self.suspends {
                return Err(WorkflowError::Suspended { seq });
            }
            self.port.wait(&self.workflow, self.fence, seq).await
        } else {
            Ok(state)
        }
    }
}

/// A remote call's deadline when it names none (REMOTE.md §12).
pub const REMOTE_DEADLINE_DEFAULT: Duration = Duration::from_secs(24 * 3600);

const NOW_STEP: &str = "keel.now";
const RANDOM_STEP: &str = "keel.random";

impl Context {
    pub(crate) fn new(
        workflow: String,
        fence: u64,
        journal: Vec<JournalEntry>,
        port: Arc<dyn JournalPort>,
        suspends: bool,
    ) -> Self {
        let existing = u32::try_from(journal.len()).unwrap_or(u32::MAX);
        Self {
            run: Arc::new(Run {
                workflow,
                fence,
                journal,
                positions: Positions::new(existing),
                port,
                suspends,
            }),
        }
    }

    /// The workflow's id.
    pub fn workflow_id(&self) -> &str {
        &self.run.workflow
    }

    /// Takes the next sequence number now, when the call is made; returns it with the
    /// journaled entry there (checked to be the operation `kind`) and the hold on the
    /// position.
    fn next(&self, kind: &EntryKind) -> Result<Reserved, WorkflowError> {
        let held = self.run.positions.take();
        let seq = held.seq();
        let Some(entry) = self.run.journal.get(seq as usize) else {
            return Ok(Reserved {
                seq,
                existing: None,
                held,
            });
        };
        if !entry.kind.same_operation(kind) {
            return Err(WorkflowError::NonDeterminism(format!(
                "non-determinism in workflow {} at journal entry {seq}: it records {}, the code asks for {}",
                self.run.workflow,
                entry.kind.describe(),
                kind.describe()
            )));
        }
        Ok(Reserved {
            seq,
            existing: Some(entry.state.clone()),
            held,
        })
    }

    /// Runs step `name` with the default [`RetryPolicy`]; see [`Context::step_with`].
    ///
    /// # Errors
    /// As [`Context::step_with`].
    pub fn step<F, Fut, E>(
        &self,
        name: &str,
        body: F,
    ) -> impl Future<Output = Result<Bytes, WorkflowError>> + use<F, Fut, E>
    where
        F: FnMut(StepInfo) -> Fut,
        Fut: Future<Output = Result<Bytes, E>>,
        E: fmt::Display,
    {
        self.step_with(name, RetryPolicy::default(), body)
    }

    /// Runs step `name`: returns its journaled outcome if it has one, else runs `body`
    /// (retried under `policy`, each failed attempt journaled) and journals the outcome.
    /// The step takes its journal position when this is called, not when the future is
    /// first polled, so concurrent steps are journaled in the order they were made.
    ///
    /// # Errors
    /// [`WorkflowError::StepFailed`] when the step's last attempt failed (now or in a
    /// previous run); the engine's errors otherwise.
    pub fn step_with<F, Fut, E>(
        &self,
        name: &str,
        policy: RetryPolicy,
        mut body: F,
    ) -> impl Future<Output = Result<Bytes, WorkflowError>> + use<F, Fut, E>
    where
        F: FnMut(StepInfo) -> Fut,
        Fut: Future<Output = Result<Bytes, E>>,
        E: fmt::Display,
    {
        let name = name.to_owned();
        let reserved = self.next(&EntryKind::Step { name: name.clone() });
        let run = Arc::clone(&self.run);
        async move {
            let Reserved {
                seq,
                existing,
                mut held,
            } = reserved?;
            let mut attempts = match existing {
                Some(EntryState::Done(outcome)) => {
                    return step_result(&name, 0, run.port.outcome(&outcome)?);
                }
                Some(EntryState::Pending { attempts }) => attempts,
                Some(EntryState::TimedOut) | None => 0,
            };
            let idempotency_key = format!("{}/{seq}", run.workflow);
            loop {
                attempts += 1;
                let attempt = body(StepInfo {
                    idempotency_key: idempotency_key.clone(),
                    attempt: attempts,
                });
                let result = match policy.timeout {
                    Some(limit) => match tokio::time::timeout(limit, attempt).await {
                        Ok(result) => result.map_err(|e| e.to_string()),
                        Err(_) => Err(format!("the attempt ran longer than {limit:?}")),
                    },
                    None => attempt.await.map_err(|e| e.to_string()),
                };
                let record = match result {
                    Ok(value) => StepRecord::Done(Outcome::Ok(value.to_vec())),
                    Err(error) if attempts >= policy.attempts.max(1) => {
                        StepRecord::Done(Outcome::Err(error))
                    }
                    Err(error) => StepRecord::AttemptFailed {
                        attempt: attempts,
                        error,
                    },
                };
                let retry = matches!(record, StepRecord::AttemptFailed { .. });
                let command = Command::Step {
                    workflow: run.workflow.clone(),
                    fence: run.fence,
                    seq,
                    name: name.clone(),
                    record,
                };
                match run.journal(&mut held, command).await? {
                    EntryState::Done(outcome) => {
                        return step_result(&name, attempts, run.port.outcome(&outcome)?);
                    }
                    EntryState::Pending { .. } if retry => {
                        tokio::time::sleep(policy.backoff().pause_after(attempts)).await;
                    }
                    other => {
                        return Err(WorkflowError::Journal(format!(
                            "step {seq} left in state {other:?}"
                        )));
                    }
                }
            }
        }
    }

    /// Sleeps durably for `duration`: never less, even across failovers and clock jumps.
    ///
    /// # Errors
    /// The engine's errors.
    pub fn sleep(
        &self,
        duration: Duration,
    ) -> impl Future<Output = Result<(), WorkflowError>> + use<> {
        // Rounded up: never less than asked.
        let delay_ms = u64::try_from(duration.as_nanos().div_ceil(1_000_000)).unwrap_or(u64::MAX);
        self.sleep_due(Due::After { delay_ms })
    }

    /// Sleeps durably until wall-clock time `until` (early by at most the cluster's
    /// allowed clock skew when clocks disagree).
    ///
    /// # Errors
    /// The engine's errors.
    pub fn sleep_until(
        &self,
        until: SystemTime,
    ) -> impl Future<Output = Result<(), WorkflowError>> + use<> {
        let at_ms = until
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX));
        self.sleep_due(Due::At { at_ms })
    }

    fn sleep_due(&self, due: Due) -> impl Future<Output = Result<(), WorkflowError>> + use<> {
        let reserved = self.next(&EntryKind::Sleep { timer: 0 });
        let run = Arc::clone(&self.run);
        async move {
            let command = |seq| Command::Sleep {
                workflow: run.workflow.clone(),
                fence: run.fence,
                seq,
                due,
            };
            run.resolved_entry(reserved, command).await.map(|_| ())
        }
    }

    /// Waits durably for signal `name`; a signal sent before the wait is buffered and
    /// received here. `None` when `timeout` passed first.
    ///
    /// # Errors
    /// The engine's errors.
    pub fn wait_signal(
        &self,
        name: &str,
        timeout: Option<Duration>,
    ) -> impl Future<Output = Result<Option<Bytes>, WorkflowError>> + use<> {
        let name = name.to_owned();
        let reserved = self.next(&EntryKind::Signal {
            name: name.clone(),
            timer: None,
        });
        let run = Arc::clone(&self.run);
        async move {
            let command = |seq| Command::WaitSignal {
                workflow: run.workflow.clone(),
                fence: run.fence,
                seq,
                signal: name,
                timeout_ms: timeout.map(|t| u64::try_from(t.as_millis()).unwrap_or(u64::MAX)),
            };
            match run.resolved_entry(reserved, command).await? {
                (seq, EntryState::Done(outcome)) => match run.port.outcome(&outcome)? {
                    Outcome::Ok(payload) => Ok(Some(Bytes::from(payload))),
                    Outcome::Err(error) => Err(WorkflowError::Journal(format!(
                        "signal wait {seq} resolved as an error: {error}"
                    ))),
                },
                (_, EntryState::TimedOut) => Ok(None),
                (seq, other) => Err(WorkflowError::Journal(format!(
                    "signal wait {seq} resolved as {other:?}"
                ))),
            }
        }
    }

    /// Calls a child workflow of `kind` (id `<this id>/<seq>`) and waits durably for its
    /// result — across failovers, however long it takes.
    ///
    /// # Errors
    /// [`WorkflowError::ChildFailed`] when the child failed or was cancelled; the engine's
    /// errors otherwise.
    pub fn call(
        &self,
        kind: &str,
        input: Bytes,
    ) -> impl Future<Output = Result<Bytes, WorkflowError>> + use<> {
        let kind = kind.to_owned();
        let reserved = self.next(&EntryKind::Call {
            child: String::new(),
            kind: kind.clone(),
        });
        let run = Arc::clone(&self.run);
        async move {
            let command = |seq| Command::Call {
                workflow: run.workflow.clone(),
                fence: run.fence,
                seq,
                kind,
                input: input.to_vec(),
            };
            match run.resolved_entry(reserved, command).await? {
                (seq, EntryState::Done(outcome)) => match run.port.outcome(&outcome)? {
                    Outcome::Ok(value) => Ok(Bytes::from(value)),
                    Outcome::Err(error) => Err(WorkflowError::ChildFailed {
                        child: format!("{}/{seq}", run.workflow),
                        error,
                    }),
                },
                (seq, other) => Err(WorkflowError::Journal(format!(
                    "call {seq} resolved as {other:?}"
                ))),
            }
        }
    }

    /// Calls a workflow of `kind` in the remote cluster `remote` (an alias of the nodes'
    /// `[remotes]`) with [`REMOTE_DEADLINE_DEFAULT`]; see [`Context::call_remote_within`].
    ///
    /// # Errors
    /// As [`Context::call_remote_within`].
    pub fn call_remote(
        &self,
        remote: &str,
        kind: &str,
        input: Bytes,
    ) -> impl Future<Output = Result<Bytes, WorkflowError>> + use<> {
        self.call_remote_within(remote, kind, input, REMOTE_DEADLINE_DEFAULT)
    }

    /// Calls a workflow of `kind` in the remote cluster `remote` and waits durably for its
    /// outcome, for at most `deadline` (`scheduler/REMOTE.md`): the callee runs it at most
    /// once — exactly once if the call reaches it in time — however often either cluster
    /// fails over or the link between them is cut; at the deadline the call times out here
    /// and is cancelled there.
    ///
    /// # Errors
    /// [`WorkflowError::RemoteFailed`] when the callee's workflow failed or was cancelled,
    /// or the callee refused the call; [`WorkflowError::RemoteTimedOut`] at the deadline;
    /// the engine's errors otherwise.
    pub fn call_remote_within(
        &self,
        remote: &str,
        kind: &str,
        input: Bytes,
        deadline: Duration,
    ) -> impl Future<Output = Result<Bytes, WorkflowError>> + use<> {
        let (remote, kind) = (remote.to_owned(), kind.to_owned());
        let reserved = self.next(&EntryKind::Remote {
            remote: remote.clone(),
            kind: kind.clone(),
            seq: 0,
        });
        let run = Arc::clone(&self.run);
        async move {
            let command = |seq| Command::RemoteCall {
                workflow: run.workflow.clone(),
                fence: run.fence,
                seq,
                remote: remote.clone(),
                kind: kind.clone(),
                input: input.to_vec(),
                deadline_after_ms: u64::try_from(deadline.as_millis()).unwrap_or(u64::MAX),
            };
            match run.resolved_entry(reserved, command).await? {
                (_, EntryState::Done(outcome)) => match run.port.outcome(&outcome)? {
                    Outcome::Ok(value) => Ok(Bytes::from(value)),
                    Outcome::Err(error) => Err(WorkflowError::RemoteFailed {
                        remote,
                        kind,
                        error,
                    }),
                },
                (_, EntryState::TimedOut) => Err(WorkflowError::RemoteTimedOut { remote, kind }),
                (seq, other) => Err(WorkflowError::Journal(format!(
                    "remote call {seq} resolved as {other:?}"
                ))),
            }
        }
    }

    /// The wall-clock time, journaled: a re-run gets the same value.
    ///
    /// # Errors
    /// The engine's errors.
    pub fn now(&self) -> impl Future<Output = Result<SystemTime, WorkflowError>> + use<> {
        let value = self.step_with(NOW_STEP, RetryPolicy::once(), |_| async {
            let ms = keel_raft::clock::now_ms();
            Ok::<_, std::convert::Infallible>(Bytes::copy_from_slice(&ms.to_le_bytes()))
        });
        async move {
            let ms = u64_from(&value.await?)?;
            Ok(UNIX_EPOCH + Duration::from_millis(ms))
        }
    }

    /// A random number, journaled: a re-run gets the same value.
    ///
    /// # Errors
    /// The engine's errors.
    pub fn random(&self) -> impl Future<Output = Result<u64, WorkflowError>> + use<> {
        let value = self.step_with(RANDOM_STEP, RetryPolicy::once(), |_| async {
            Ok::<_, std::convert::Infallible>(Bytes::copy_from_slice(
                &rand::random::<u64>().to_le_bytes(),
            ))
        });
        async move { u64_from(&value.await?) }
    }
}

fn u64_from(value: &[u8]) -> Result<u64, WorkflowError> {
    let bytes: [u8; 8] = value
        .try_into()
        .map_err(|_| WorkflowError::Journal("a journaled value is not 8 bytes".to_owned()))?;
    Ok(u64::from_le_bytes(bytes))
}

fn step_result(name: &str, attempts: u32, outcome: Outcome) -> Result<Bytes, WorkflowError> {
    match outcome {
        Outcome::Ok(value) => Ok(Bytes::from(value)),
        Outcome::Err(error) => Err(WorkflowError::StepFailed {
            step: name.to_owned(),
            attempts,
            error,
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_up_to_its_limit() {
        let policy = RetryPolicy {
            attempts: 10,
            backoff: Duration::from_millis(100),
            backoff_max: Duration::from_millis(350),
            timeout: None,
        };
        assert_eq!(policy.backoff().pause_after(1), Duration::from_millis(100));
        assert_eq!(policy.backoff().pause_after(2), Duration::from_millis(200));
        assert_eq!(policy.backoff().pause_after(3), Duration::from_millis(350));
        assert_eq!(policy.backoff().pause_after(40), Duration::from_millis(350));
    }
}
