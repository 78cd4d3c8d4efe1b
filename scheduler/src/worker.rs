//! A remote worker: runs workflow kinds in its own process, leased by the cluster's leader.
//!
//! The worker keeps a `Work` session with the leader (hello with its kinds, then a
//! heartbeat every second), runs each task it is leased from the task's journal, journals
//! through the leader, and waits for sleeps, signals and calls there. When the session ends
//! (the leader changed, the network failed) it stops its runs and connects again; the
//! leader leases their workflows anew, under new fences.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures::future::BoxFuture;
use keel_raft::client::{ClientError, KeelClient, retry_any_but_invalid};
use keel_raft::limits::MESSAGE_MAX_BYTES;
use keel_raft::security::credentials::{Credentials, KeelChannel};
use tokio::sync::mpsc;
use tokio::task::AbortHandle;

use crate::command::{self, Answer, Command, EntryState, Outcome, StoredOutcome};
use crate::engine::AbortOnDrop;
use crate::engine::context::WorkflowError;
use crate::engine::journal::{JournalPort, inline_outcome, refused};
use crate::engine::registry::Registry;
use crate::engine::run::run_to_end;
use crate::pb::{self, workers_client::WorkersClient};
use crate::state::JournalEntry;

/// How often a worker renews its lease.
const HEARTBEAT_EVERY: Duration = Duration::from_secs(1);
/// Pause before reconnecting after a session ended.
const RECONNECT_PAUSE: Duration = Duration::from_millis(200);
/// How long one `WaitEntry` call waits.
const WAIT_SLICE: Duration = Duration::from_secs(10);

fn workers(channel: KeelChannel) -> WorkersClient<KeelChannel> {
    WorkersClient::new(channel)
        .max_decoding_message_size(MESSAGE_MAX_BYTES)
        .max_encoding_message_size(MESSAGE_MAX_BYTES)
}

/// A session's runs, by workflow: the fence each runs under; aborted when dropped.
#[derive(Debug, Default)]
struct Runs(HashMap<String, (u64, AbortHandle)>);

impl Drop for Runs {
    fn drop(&mut self) {
        #[cfg(feature = "sabotage")]
        if keel_raft::sabotage::on(keel_raft::sabotage::Fault::UnfencedRuns) {
            return;
        }
        for (_, run) in self.0.values() {
            run.abort();
        }
    }
}

/// A remote worker.
#[derive(Debug)]
pub struct Worker {
    id: u64,
    cluster: KeelClient,
    registry: Arc<Registry>,
}

/// The journal protocol this build speaks with the leader (see `Hello.protocol`): the rkyv
/// layouts of tasks' journals, answers and entry states, whose values travel inline.
/// Version 3 added remote-call entries and commands.
pub const JOURNAL_PROTOCOL: u32 = 3;

/// A run's journal, through the leader's `Workers` service.
#[derive(Debug, Clone)]
struct RemoteJournal {
    cluster: KeelClient,
    worker: u64,
}

fn journal_error(error: &ClientError) -> WorkflowError {
    WorkflowError::Journal(error.to_string())
}

impl RemoteJournal {
    async fn propose_command(&self, command: Command) -> Result<Answer, WorkflowError> {
        let request = pb::JournalRequest {
            command: command::encode(&command).into(),
            worker_id: self.worker,
        };
        let mut cluster = self.cluster.clone();
        let answer = cluster
            .on_leader_channel(retry_any_but_invalid, |_, channel| {
                let request = request.clone();
                async move { workers(channel).journal(request).await }
            })
            .await
            .map_err(|e| journal_error(&e))?
            .into_inner();
        match command::decode::<Answer>(&answer.answer) {
            Ok(Answer::Rejected(rejection)) => refused(rejection),
            Ok(answer) => Ok(answer),
            Err(_) => Err(WorkflowError::Journal(
                "the answer did not decode".to_owned(),
            )),
        }
    }

    async fn wait_resolved(
        &self,
        workflow: &str,
        fence: u64,
        seq: u32,
    ) -> Result<EntryState, WorkflowError> {
        let request = pb::WaitEntryRequest {
            workflow: workflow.to_owned(),
            fence,
            seq,
            wait_ms: u64::try_from(WAIT_SLICE.as_millis()).unwrap_or(u64::MAX),
        };
        let mut cluster = self.cluster.clone();
        loop {
            let answer = cluster
                .on_leader_channel(retry_any_but_invalid, |_, channel| {
                    let request = request.clone();
                    async move { workers(channel).wait_entry(request).await }
                })
                .await
                .map_err(|e| journal_error(&e))?
                .into_inner();
            if answer.superseded {
                return Err(WorkflowError::Superseded);
            }
            if answer.resolved {
                return command::decode::<EntryState>(&answer.state).map_err(|_| {
                    WorkflowError::Journal("an entry state did not decode".to_owned())
                });
            }
        }
    }

    /// The task of `workflow` under `fence` as the leader has it now.
    async fn current(&self, workflow: &str, fence: u64) -> Result<pb::Task, WorkflowError> {
        let request = pb::CurrentRequest {
            workflow: workflow.to_owned(),
            fence,
        };
        let mut cluster = self.cluster.clone();
        match cluster
            .on_leader_channel(retry_any_but_invalid, |_, channel| {
                let request = request.clone();
                async move { workers(channel).current(request).await }
            })
            .await
        {
            Ok(task) => Ok(task.into_inner()),
            Err(ClientError::Refused { .. }) => Err(WorkflowError::Superseded),
            Err(error) => Err(journal_error(&error)),
        }
    }
}

impl JournalPort for RemoteJournal {
    fn propose(&self, command: Command) -> BoxFuture<'_, Result<Answer, WorkflowError>> {
        Box::pin(self.propose_command(command))
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
        inline_outcome(outcome)
    }
}

fn decode_task(task: &pb::Task) -> Result<(Bytes, Vec<JournalEntry>), WorkflowError> {
    let journal = command::decode::<Vec<JournalEntry>>(&task.journal)
        .map_err(|_| WorkflowError::Journal("a task's journal did not decode".to_owned()))?;
    Ok((task.input.clone(), journal))
}

impl Worker {
    /// A worker `id` (non-zero, unique among workers) of the cluster at `endpoints`, running
    /// the kinds of `registry`.
    ///
    /// # Errors
    /// [`ClientError::Endpoint`] for an address that is not a valid `host:port`.
    pub fn new(endpoints: &[String], id: u64, registry: Registry) -> Result<Self, ClientError> {
        Self::with_credentials(endpoints, &Credentials::none(), id, registry)
    }

    /// [`Worker::new`], presenting `credentials` (a worker token or certificate when the
    /// cluster authenticates).
    ///
    /// # Errors
    /// A bad address, or a credential file that cannot be used.
    pub fn with_credentials(
        endpoints: &[String],
        credentials: &Credentials,
        id: u64,
        registry: Registry,
    ) -> Result<Self, ClientError> {
        Ok(Self {
            id,
            cluster: KeelClient::with_credentials(endpoints, credentials)?,
            registry: Arc::new(registry),
        })
    }

    /// Works until the future is dropped (which aborts its runs): sessions with the leader,
    /// reconnecting as needed.
    pub async fn run(mut self) {
        loop {
            match self.session().await {
                Err(
                    error @ ClientError::Refused {
                        kind: keel_raft::wire_error::WriteErrorKind::Denied,
                        ..
                    },
                ) => tracing::warn!(
                    worker = self.id,
                    %error,
                    "the cluster refused this worker's credentials; trying again"
                ),
                Err(error) => {
                    tracing::info!(worker = self.id, %error, "work session ended; reconnecting");
                }
                Ok(()) => {}
            }
            tokio::time::sleep(RECONNECT_PAUSE).await;
        }
    }

    /// One session: hello, heartbeats, tasks; ends when the leader's stream ends.
    async fn session(&mut self) -> Result<(), ClientError> {
        let hello = pb::WorkerMessage {
            message: Some(pb::worker_message::Message::Hello(pb::Hello {
                protocol: JOURNAL_PROTOCOL,
                worker_id: self.id,
                kinds: self
                    .registry
                    .declarations()
                    .into_iter()
                    .map(|(kind, version)| pb::KindVersion { kind, version })
                    .collect(),
            })),
        };
        let (outgoing, mut tasks) = self
            .cluster
            .on_leader_channel(retry_any_but_invalid, |_, channel| {
                let hello = hello.clone();
                async move {
                    let (outgoing, queued) = mpsc::channel(4);
                    outgoing.send(hello).await.map_err(|_| {
                        tonic::Status::internal("the session's request stream closed")
                    })?;
                    let requests = futures::stream::unfold(queued, |mut queued| async move {
                        queued.recv().await.map(|m| (m, queued))
                    });
                    let tasks = workers(channel).work(requests).await?.into_inner();
                    Ok((outgoing, tasks))
                }
            })
            .await?;
        tracing::info!(worker = self.id, "connected to the leader");
        // Aborted when the session ends, and when this future is dropped (the worker stopped):
        // the heartbeats end with the session, so the leader's lease runs out.
        let _heartbeats = AbortOnDrop(tokio::spawn(async move {
            loop {
                tokio::time::sleep(HEARTBEAT_EVERY).await;
                let beat = pb::WorkerMessage {
                    message: Some(pb::worker_message::Message::Heartbeat(pb::Empty {})),
                };
                if outgoing.send(beat).await.is_err() {
                    return;
                }
            }
        }));
        // Likewise: no run of a stopped worker goes on journaling.
        let mut runs = Runs::default();
        loop {
            match tasks.message().await {
                Ok(Some(task)) => self.start_run(task, &mut runs),
                Ok(None) => return Ok(()),
                Err(status) => {
                    return Err(ClientError::Refused {
                        kind: keel_raft::wire_error::WriteErrorKind::Unavailable,
                        message: status.message().to_owned(),
                    });
                }
            }
        }
    }

    fn start_run(&self, task: pb::Task, runs: &mut Runs) {
        runs.0.retain(|_, (_, run)| !run.is_finished());
        if let Some((fence, run)) = runs.0.get(&task.workflow) {
            if *fence >= task.fence {
                return;
            }
            run.abort();
        }
        let Some(kind) = self.registry.get(&task.kind).cloned() else {
            tracing::warn!(workflow = %task.workflow, kind = %task.kind, "leased a kind this worker does not run");
            return;
        };
        let key = task.workflow.clone();
        let journal = RemoteJournal {
            cluster: self.cluster.clone(),
            worker: self.id,
        };
        let port: Arc<dyn JournalPort> = Arc::new(journal.clone());
        let workflow = task.workflow.clone();
        let fence = task.fence;
        tracing::info!(worker = self.id, %workflow, fence, "running a leased workflow");
        let run = tokio::spawn(async move {
            let mut first = Some(task);
            let load = || {
                let first = first.take();
                let journal = journal.clone();
                let workflow = workflow.clone();
                async move {
                    let task = match first {
                        Some(task) => task,
                        None => journal.current(&workflow, fence).await?,
                    };
                    decode_task(&task)
                }
            };
            run_to_end(&kind, &port, &workflow.clone(), fence, load).await;
        });
        runs.0.insert(key, (fence, run.abort_handle()));
    }
}
