//! The `Workers` gRPC service: remote workers' sessions with the leader, their journal
//! commands, and their waits for journal entries.

use std::collections::BTreeMap;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use futures::Stream;
use keel_raft::values::ValueError;
use keel_raft::wire_error::not_leader;
use tonic::{Request, Response, Status, Streaming};

use crate::command::{self, Answer, Command, Rejection};
use crate::engine::dispatch::{Dispatcher, Task};
use crate::engine::proposer::Proposer;
use crate::machine::SchedulerMachine;
use crate::pb::{self, workers_server::Workers};
use crate::wire::rejected;
use crate::worker::JOURNAL_PROTOCOL;

/// Tasks queued to one worker before the leader stops leasing it more.
const TASK_QUEUE: usize = 1024;
/// Longest `WaitEntry` wait.
const WAIT_MAX: Duration = Duration::from_secs(30);

/// The wire form of `task`: a remote worker has no value store, so its input and journal
/// carry their values' bytes.
fn task_to_wire(task: Task, machine: &SchedulerMachine) -> Result<pb::Task, ValueError> {
    let input = machine.value(&task.input)?;
    let journal = machine.inlined_journal(&task.journal)?;
    Ok(pb::Task {
        workflow: task.workflow,
        fence: task.fence,
        kind: task.kind,
        input,
        journal: command::encode(&journal).into(),
    })
}

/// Refuses a worker's hello with id 0, or of another journal protocol than this node's.
fn check_hello(hello: &pb::Hello) -> Result<(), Status> {
    if hello.worker_id == 0 {
        return Err(invalid("worker ids start at 1"));
    }
    if hello.protocol != JOURNAL_PROTOCOL {
        return Err(invalid(format!(
            "worker {} speaks journal protocol {}, this node {JOURNAL_PROTOCOL}: run workers of this node's version",
            hello.worker_id, hello.protocol
        )));
    }
    Ok(())
}

/// A value the state references could not be read: the node lost data it should hold.
fn value_lost(error: &ValueError) -> Status {
    Status::data_loss(format!("reading a workflow's value: {error}"))
}

/// The `Workers` service of one node.
#[derive(Debug, Clone)]
pub struct WorkersService {
    proposer: Proposer,
    machine: SchedulerMachine,
    dispatcher: Arc<Dispatcher>,
}

type TaskStream = Pin<Box<dyn Stream<Item = Result<pb::Task, Status>> + Send>>;

fn invalid(message: impl Into<String>) -> Status {
    rejected(&Rejection::Invalid {
        what: "worker request".to_owned(),
        reason: message.into(),
    })
}

impl WorkersService {
    /// The service of the node `proposer` proposes on, reading `machine`, leasing through
    /// `dispatcher`.
    pub fn new(proposer: Proposer, machine: SchedulerMachine, dispatcher: Arc<Dispatcher>) -> Self {
        Self {
            proposer,
            machine,
            dispatcher,
        }
    }

    /// Declares the kinds of `kinds` the cluster does not know yet.
    async fn declare(&self, kinds: &BTreeMap<String, String>) -> Result<(), Status> {
        let unknown: Vec<(String, String)> = {
            let state = self.machine.read();
            kinds
                .iter()
                .filter(|(kind, _)| !state.kinds().contains_key(*kind))
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect()
        };
        if unknown.is_empty() {
            return Ok(());
        }
        match self
            .proposer
            .propose(Command::DeclareKinds { kinds: unknown }, None)
            .await?
        {
            Answer::Rejected(rejection) => Err(rejected(&rejection)),
            _ => Ok(()),
        }
    }
}

#[tonic::async_trait]
impl Workers for WorkersService {
    type WorkStream = TaskStream;

    async fn work(
        &self,
        request: Request<Streaming<pb::WorkerMessage>>,
    ) -> Result<Response<TaskStream>, Status> {
        let mut incoming = request.into_inner();
        let Some(pb::WorkerMessage {
            message: Some(pb::worker_message::Message::Hello(hello)),
        }) = incoming.message().await?
        else {
            return Err(invalid("a work session starts with a hello"));
        };
        check_hello(&hello)?;
        let kinds: BTreeMap<String, String> = hello
            .kinds
            .into_iter()
            .map(|k| (k.kind, k.version))
            .collect();
        self.declare(&kinds).await?;
        let (tasks, queued) = tokio::sync::mpsc::channel(TASK_QUEUE);
        let worker = hello.worker_id;
        let connection = self
            .dispatcher
            .connect(worker, kinds, tasks)
            .ok_or_else(|| not_leader(None))?;
        tracing::info!(worker, "worker connected");
        let dispatcher = Arc::clone(&self.dispatcher);
        tokio::spawn(async move {
            while let Ok(Some(message)) = incoming.message().await {
                if let Some(pb::worker_message::Message::Heartbeat(_)) = message.message {
                    dispatcher.heartbeat(worker, connection);
                }
            }
            dispatcher.disconnect(worker, connection);
            tracing::info!(worker, "worker disconnected");
        });
        let machine = self.machine.clone();
        let leases = Arc::clone(&self.dispatcher);
        let stream = futures::stream::unfold(queued, move |mut queued| {
            let (machine, leases) = (machine.clone(), Arc::clone(&leases));
            async move {
                loop {
                    let task = queued.recv().await?;
                    let (workflow, fence) = (task.workflow.clone(), task.fence);
                    match task_to_wire(task, &machine) {
                        Ok(task) => return Some((Ok(task), queued)),
                        // One task's unreadable value must not end the worker's session
                        // (and its other runs): the lease goes back, to be tried again.
                        Err(error) => {
                            tracing::error!(%workflow, fence, %error, "a task's values cannot be read; its lease is released");
                            leases.release(&workflow, fence);
                        }
                    }
                }
            }
        });
        Ok(Response::new(Box::pin(stream)))
    }

    async fn journal(
        &self,
        request: Request<pb::JournalRequest>,
    ) -> Result<Response<pb::JournalResponse>, Status> {
        let request = request.into_inner();
        let command = command::decode::<Command>(&request.command)
            .map_err(|rejection| rejected(&rejection))?;
        let Some((workflow, fence)) = command.run_fence() else {
            return Err(invalid("only a run's journal commands go through Journal"));
        };
        if !self.dispatcher.leading() {
            return Err(not_leader(None));
        }
        #[cfg(feature = "sabotage")]
        let holds = keel_raft::sabotage::on(keel_raft::sabotage::Fault::UnfencedRuns)
            || self.dispatcher.holds(request.worker_id, workflow, fence);
        #[cfg(not(feature = "sabotage"))]
        let holds = self.dispatcher.holds(request.worker_id, workflow, fence);
        if !holds {
            // The lease moved on (or never was this worker's): the run must stop.
            return Err(rejected(&Rejection::StaleFence { fence, current: 0 }));
        }
        self.machine.proposable(&command).await;
        let answer = self.proposer.propose(command, None).await?;
        let answer = self
            .machine
            .inlined_answer(answer)
            .map_err(|e| value_lost(&e))?;
        Ok(Response::new(pb::JournalResponse {
            answer: command::encode(&answer).into(),
        }))
    }

    async fn current(
        &self,
        request: Request<pb::CurrentRequest>,
    ) -> Result<Response<pb::Task>, Status> {
        if !self.dispatcher.leading() {
            return Err(not_leader(None));
        }
        let request = request.into_inner();
        let task = {
            let state = self.machine.read();
            let workflow = state
                .workflow(&request.workflow)
                .filter(|w| !w.is_finished() && w.fence == request.fence)
                .ok_or_else(|| {
                    rejected(&Rejection::StaleFence {
                        fence: request.fence,
                        current: 0,
                    })
                })?;
            Task::new(&request.workflow, request.fence, &workflow)
        };
        Ok(Response::new(
            task_to_wire(task, &self.machine).map_err(|e| value_lost(&e))?,
        ))
    }

    async fn wait_entry(
        &self,
        request: Request<pb::WaitEntryRequest>,
    ) -> Result<Response<pb::WaitEntryResponse>, Status> {
        let request = request.into_inner();
        // The leader has applied every entry it answered a journal command for.
        if !self.dispatcher.leading() {
            return Err(not_leader(None));
        }
        let wait = Duration::from_millis(request.wait_ms).min(WAIT_MAX);
        let response = match self
            .machine
            .wait_entry(&request.workflow, request.fence, request.seq, Some(wait))
            .await
        {
            Ok(Some(state)) => pb::WaitEntryResponse {
                resolved: true,
                state: command::encode(
                    &self
                        .machine
                        .inlined_state(&state)
                        .map_err(|e| value_lost(&e))?,
                )
                .into(),
                superseded: false,
            },
            Ok(None) => pb::WaitEntryResponse::default(),
            Err(_) => pb::WaitEntryResponse {
                superseded: true,
                ..pb::WaitEntryResponse::default()
            },
        };
        Ok(Response::new(response))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A worker of the protocol before values by reference (it sends no protocol: 0) is
    /// refused with a message that names both protocols; this build's worker is not.
    #[test]
    fn a_worker_of_another_journal_protocol_is_refused_by_name() {
        let hello = |protocol| pb::Hello {
            worker_id: 7,
            kinds: Vec::new(),
            protocol,
        };
        let refused = check_hello(&hello(0)).expect_err("protocol 0");
        assert!(
            refused
                .message()
                .contains("speaks journal protocol 0, this node 3"),
            "{}",
            refused.message()
        );
        check_hello(&hello(JOURNAL_PROTOCOL)).expect("this build's protocol");
    }
}
