//! The workflow gRPC service of one node.
//!
//! Writes are proposed here (so this node must lead; otherwise the status says which node
//! does) and stamped with this node's wall clock. Reads are linearizable: the node first
//! learns the leader's commit index and applies up to it, so a read sees every write
//! acknowledged before it began, on any node.

use std::pin::Pin;
use std::time::Duration;

use futures::{Stream, StreamExt};
use keel_raft::values::ValueError;
use keel_raft::wire_error::{WriteErrorKind, status};
use tokio_stream::wrappers::BroadcastStream;
use tokio_stream::wrappers::errors::BroadcastStreamRecvError;
use tonic::{Request, Response, Status};

use crate::command::{Answer, Command, Due, EntryState, Outcome, Rejection, WorkflowStatus};
use crate::engine::proposer::Proposer;
use crate::limits::{NAME_MAX_BYTES, PAYLOAD_MAX_BYTES};
use crate::machine::SchedulerMachine;
use crate::pb::{self, workflows_server::Workflows};
use crate::peer::status::{CallEntry, RemoteStatuses, remote_call_info};
use crate::state::{EntryKind, JournalEntry, Workflow};
use crate::wire::rejected;

/// Longest a `Get` may wait for a workflow to finish.
const GET_WAIT_MAX: Duration = Duration::from_secs(300);
/// Most workflows one `List` returns.
const LIST_MAX: usize = 10_000;

/// The workflow service.
#[derive(Debug, Clone)]
pub struct WorkflowService {
    proposer: Proposer,
    machine: SchedulerMachine,
    /// This node's workflow kinds and versions.
    declarations: Vec<(String, String)>,
    /// What this node's remote-call drivers report.
    remotes: RemoteStatuses,
}

fn too_large(what: &str, len: usize, max: usize) -> Result<(), Status> {
    if len > max {
        return Err(rejected(&Rejection::TooLarge {
            what: what.to_owned(),
            len: len as u64,
            max: max as u64,
        }));
    }
    Ok(())
}

fn unexpected(answer: &Answer) -> Status {
    status(
        WriteErrorKind::Invalid,
        format!("unexpected answer from the state machine: {answer:?}"),
    )
}

/// The wire form of journal entry `seq`, its value read through `machine`.
fn entry_info(
    seq: u32,
    entry: &JournalEntry,
    machine: &SchedulerMachine,
) -> Result<pb::JournalEntry, ValueError> {
    let (kind, name) = match &entry.kind {
        EntryKind::Step { name } => ("step", name.clone()),
        EntryKind::Sleep { .. } => ("sleep", String::new()),
        EntryKind::Signal { name, .. } => ("signal", name.clone()),
        EntryKind::Call { child, .. } => ("call", child.clone()),
        EntryKind::Remote { remote, kind, .. } => ("remote", format!("{remote}/{kind}")),
    };
    let state = &entry.state;
    let mut entry = pb::JournalEntry {
        seq,
        kind: kind.to_owned(),
        name,
        fence: entry.fence,
        ..pb::JournalEntry::default()
    };
    match state {
        EntryState::Pending { attempts } => {
            "pending".clone_into(&mut entry.state);
            entry.attempts = *attempts;
        }
        EntryState::Done(outcome) => match machine.outcome(outcome)? {
            Outcome::Ok(value) => {
                "done".clone_into(&mut entry.state);
                entry.value = value.into();
            }
            Outcome::Err(error) => {
                "failed".clone_into(&mut entry.state);
                entry.error = error;
            }
        },
        EntryState::TimedOut => "timed-out".clone_into(&mut entry.state),
    }
    Ok(entry)
}

/// The wire form of workflow `id`, its values read through `machine`, its remote calls'
/// progress with what `remotes` report.
pub(crate) fn workflow_info(
    id: &str,
    workflow: &Workflow,
    journal: bool,
    machine: &SchedulerMachine,
    remotes: &RemoteStatuses,
) -> Result<pb::WorkflowInfo, ValueError> {
    let (result, error) = match workflow
        .outcome
        .as_ref()
        .map(|o| machine.outcome(o))
        .transpose()?
    {
        Some(Outcome::Ok(value)) => (value, String::new()),
        Some(Outcome::Err(error)) => (Vec::new(), error),
        None => (Vec::new(), String::new()),
    };
    let journal = if journal {
        workflow
            .journal
            .iter()
            .zip(0u32..)
            .map(|(entry, seq)| {
                let mut info = entry_info(seq, entry, machine)?;
                if let EntryKind::Remote {
                    remote,
                    kind,
                    seq: call,
                } = &entry.kind
                {
                    let call = CallEntry {
                        workflow: id,
                        finished: workflow.is_finished(),
                        position: seq,
                        remote,
                        kind,
                        seq: *call,
                        state: &entry.state,
                    };
                    info.remote = Some(remote_call_info(machine, remotes, &call));
                }
                Ok(info)
            })
            .collect::<Result<_, ValueError>>()?
    } else {
        Vec::new()
    };
    Ok(pb::WorkflowInfo {
        id: id.to_owned(),
        kind: workflow.kind.clone(),
        version: workflow.version.clone(),
        status: workflow.status.as_str().to_owned(),
        result: result.into(),
        error,
        created_ms: workflow.created_ms,
        finished_ms: workflow.finished_ms.unwrap_or(0),
        fence: workflow.fence,
        parent: workflow
            .parent
            .as_ref()
            .map(|(parent, _)| parent.clone())
            .unwrap_or_default(),
        journal,
        journal_len: u32::try_from(workflow.journal.len()).unwrap_or(u32::MAX),
    })
}

/// A value the state references could not be read: the node lost data it should hold.
fn value_lost(error: &ValueError) -> Status {
    Status::data_loss(format!("reading a workflow's value: {error}"))
}

impl WorkflowService {
    /// The service of the node `proposer` proposes on, reading `machine`; the node runs
    /// the workflow kinds `declarations` (`(kind, version)`); its remote-call drivers report
    /// to `remotes`.
    pub fn new(
        proposer: Proposer,
        machine: SchedulerMachine,
        declarations: Vec<(String, String)>,
        remotes: RemoteStatuses,
    ) -> Self {
        Self {
            proposer,
            machine,
            declarations,
            remotes,
        }
    }

    /// Declares this node's kinds if `kind` is one of them and the cluster does not know it
    /// yet (a leader declares its kinds when it takes over; a start may come first).
    async fn declare_if_unknown(&self, kind: &str) -> Result<(), Status> {
        let ours = self.declarations.iter().any(|(k, _)| k == kind);
        if !ours || self.machine.read().kinds().contains_key(kind) {
            return Ok(());
        }
        let command = Command::DeclareKinds {
            kinds: self.declarations.clone(),
        };
        self.propose(command, None).await.map(|_| ())
    }

    async fn propose(
        &self,
        command: Command,
        client: Option<(u64, u64)>,
    ) -> Result<Answer, Status> {
        match self.proposer.propose(command, client).await? {
            Answer::Rejected(rejection) => Err(rejected(&rejection)),
            answer => Ok(answer),
        }
    }

    async fn propose_done(
        &self,
        command: Command,
        client: Option<(u64, u64)>,
    ) -> Result<Response<pb::Empty>, Status> {
        match self.propose(command, client).await? {
            Answer::Done => Ok(Response::new(pb::Empty {})),
            other => Err(unexpected(&other)),
        }
    }

    /// Waits up to `wait` for workflow `id` to finish; its info then (or now).
    async fn info_after(
        &self,
        id: &str,
        wait: Duration,
        journal: bool,
    ) -> Result<pb::WorkflowInfo, Status> {
        let deadline = tokio::time::Instant::now() + wait.min(GET_WAIT_MAX);
        let waiter = self.machine.waiter(id);
        loop {
            let notified = waiter.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            let answer = {
                let state = self.machine.read();
                let workflow = state
                    .workflow(id)
                    .ok_or_else(|| rejected(&Rejection::UnknownWorkflow(id.to_owned())))?;
                (workflow.is_finished() || tokio::time::Instant::now() >= deadline)
                    .then(|| workflow.into_owned())
            };
            // An unresolved remote call's attempts and last error are in memory on the leader
            // (its drivers): a journal holding one is read there.
            if journal
                && let Some(workflow) = &answer
                && workflow.pending_remote_calls().next().is_some()
                && !workflow.is_finished()
            {
                self.proposer.service().require_leader()?;
            }
            // Values are read with the state's lock released: reading a file under it would
            // hold up apply.
            if let Some(workflow) = answer {
                return workflow_info(id, &workflow, journal, &self.machine, &self.remotes)
                    .map_err(|e| value_lost(&e));
            }
            // Woken by a change, or at the deadline to answer with the workflow as it is.
            let _ = tokio::time::timeout_at(deadline, notified).await;
        }
    }
}

type FireStream = Pin<Box<dyn Stream<Item = Result<pb::TimerFire, Status>> + Send>>;

#[tonic::async_trait]
impl Workflows for WorkflowService {
    async fn start(
        &self,
        request: Request<pb::StartRequest>,
    ) -> Result<Response<pb::StartResponse>, Status> {
        let request = request.into_inner();
        too_large("workflow input", request.input.len(), PAYLOAD_MAX_BYTES)?;
        too_large("workflow id", request.id.len(), NAME_MAX_BYTES)?;
        if request.id.starts_with('@') {
            // Checked here, not in apply: replaying old entries never depends on the rule.
            return Err(rejected(&Rejection::Invalid {
                what: "workflow id".to_owned(),
                reason: "ids beginning with '@' name calls from other clusters".to_owned(),
            }));
        }
        self.declare_if_unknown(&request.kind).await?;
        let command = Command::Start {
            id: request.id,
            kind: request.kind,
            input: request.input.to_vec(),
        };
        match self.propose(command, None).await? {
            Answer::Started {
                created, status, ..
            } => Ok(Response::new(pb::StartResponse {
                created,
                status: status.as_str().to_owned(),
            })),
            other => Err(unexpected(&other)),
        }
    }

    async fn get(
        &self,
        request: Request<pb::GetRequest>,
    ) -> Result<Response<pb::WorkflowInfo>, Status> {
        let request = request.into_inner();
        self.proposer.service().linearize().await?;
        let info = self
            .info_after(
                &request.id,
                Duration::from_millis(request.wait_ms),
                request.journal,
            )
            .await?;
        Ok(Response::new(info))
    }

    async fn signal(
        &self,
        request: Request<pb::SignalRequest>,
    ) -> Result<Response<pb::Empty>, Status> {
        let request = request.into_inner();
        too_large("signal payload", request.payload.len(), PAYLOAD_MAX_BYTES)?;
        let client = (request.session != 0).then_some((request.session, request.seq));
        let command = Command::Signal {
            workflow: request.id,
            signal: request.name,
            payload: request.payload.to_vec(),
        };
        self.propose_done(command, client).await
    }

    async fn cancel(
        &self,
        request: Request<pb::CancelRequest>,
    ) -> Result<Response<pb::Empty>, Status> {
        let request = request.into_inner();
        let command = Command::Cancel {
            workflow: request.id,
            reason: request.reason,
        };
        self.propose_done(command, None).await
    }

    async fn list(
        &self,
        request: Request<pb::ListRequest>,
    ) -> Result<Response<pb::ListResponse>, Status> {
        let request = request.into_inner();
        let status = match request.status.as_str() {
            "" => None,
            name => Some(WorkflowStatus::parse(name).ok_or_else(|| {
                rejected(&Rejection::Invalid {
                    what: "status".to_owned(),
                    reason: format!("{name:?} is not running, completed, failed or cancelled"),
                })
            })?),
        };
        let limit = match request.limit {
            0 => LIST_MAX,
            n => (n as usize).min(LIST_MAX),
        };
        self.proposer.service().linearize().await?;
        let kind = (!request.kind.is_empty()).then_some(request.kind.as_str());
        let after = (!request.after.is_empty()).then_some(request.after.as_str());
        let listed: Vec<(String, crate::state::Workflow)> = self
            .machine
            .read()
            .list(kind, status, after, limit)
            .map(|(id, w)| (id.to_owned(), w.into_owned()))
            .collect();
        // Values are read with the state's lock released (see `get`).
        let workflows = listed
            .iter()
            .map(|(id, w)| workflow_info(id, w, false, &self.machine, &self.remotes))
            .collect::<Result<_, _>>()
            .map_err(|e| value_lost(&e))?;
        Ok(Response::new(pb::ListResponse { workflows }))
    }

    async fn schedule_timer(
        &self,
        request: Request<pb::ScheduleTimerRequest>,
    ) -> Result<Response<pb::ScheduleTimerResponse>, Status> {
        let request = request.into_inner();
        too_large("timer payload", request.payload.len(), PAYLOAD_MAX_BYTES)?;
        let due = match request.due {
            Some(pb::schedule_timer_request::Due::DelayMs(delay_ms)) => Due::After { delay_ms },
            Some(pb::schedule_timer_request::Due::AtMs(at_ms)) => Due::At { at_ms },
            None => {
                return Err(rejected(&Rejection::Invalid {
                    what: "timer".to_owned(),
                    reason: "a delay or a time is required".to_owned(),
                }));
            }
        };
        let command = Command::ScheduleTimer {
            name: request.name,
            due,
            payload: request.payload.to_vec(),
        };
        match self.propose(command, None).await? {
            Answer::Timer {
                id,
                due_ms,
                created,
            } => Ok(Response::new(pb::ScheduleTimerResponse {
                id,
                due_ms,
                created,
            })),
            other => Err(unexpected(&other)),
        }
    }

    async fn get_timer(
        &self,
        request: Request<pb::GetTimerRequest>,
    ) -> Result<Response<pb::TimerInfo>, Status> {
        let name = request.into_inner().name;
        self.proposer.service().linearize().await?;
        let state = self.machine.read();
        let info = match state.named_timer(&name) {
            Some(Ok(due_ms)) => pb::TimerInfo {
                name,
                due_ms,
                ..pb::TimerInfo::default()
            },
            Some(Err(record)) => pb::TimerInfo {
                name,
                fired: true,
                due_ms: record.due_ms,
                fire_term: record.term,
                fire_index: record.index,
                fired_ms: record.fired_ms,
            },
            None => {
                return Err(rejected(&Rejection::Invalid {
                    what: "timer".to_owned(),
                    reason: format!("no timer named {name:?}"),
                }));
            }
        };
        Ok(Response::new(info))
    }

    type WatchFiresStream = FireStream;

    async fn watch_fires(
        &self,
        _request: Request<pb::Empty>,
    ) -> Result<Response<FireStream>, Status> {
        // Each fire as it is applied; a watcher that falls behind gets one error saying
        // so, and its stream ends there.
        let stream = BroadcastStream::new(self.machine.watch_fires())
            .map(|item| match item {
                Ok(fire) => Ok(pb::TimerFire {
                    name: fire.name,
                    payload: fire.payload.into(),
                    term: fire.record.term,
                    index: fire.record.index,
                    due_ms: fire.record.due_ms,
                    fired_ms: fire.record.fired_ms,
                }),
                Err(BroadcastStreamRecvError::Lagged(missed)) => Err(status(
                    WriteErrorKind::Unavailable,
                    format!(
                        "this watcher fell behind and missed {missed} fires; read them with GetTimer"
                    ),
                )),
            })
            .scan(false, |ended, item| {
                let next = (!*ended).then_some(item);
                if let Some(item) = &next {
                    *ended = item.is_err();
                }
                std::future::ready(next)
            });
        Ok(Response::new(Box::pin(stream)))
    }

    async fn rebind_remote(
        &self,
        request: Request<pb::RebindRemoteRequest>,
    ) -> Result<Response<pb::RebindRemoteResponse>, Status> {
        let remote = request.into_inner().remote;
        too_large("remote", remote.len(), NAME_MAX_BYTES)?;
        match self.propose(Command::RemoteUnbind { remote }, None).await? {
            Answer::RemoteUnbound { failed } => Ok(Response::new(pb::RebindRemoteResponse {
                failed_calls: failed,
            })),
            other => Err(unexpected(&other)),
        }
    }

    async fn register_schedule(
        &self,
        request: Request<pb::RegisterScheduleRequest>,
    ) -> Result<Response<pb::Empty>, Status> {
        let request = request.into_inner();
        too_large("workflow input", request.input.len(), PAYLOAD_MAX_BYTES)?;
        self.declare_if_unknown(&request.kind).await?;
        let command = Command::RegisterSchedule {
            name: request.name,
            cron: request.cron,
            kind: request.kind,
            input: request.input.to_vec(),
        };
        self.propose_done(command, None).await
    }
}
