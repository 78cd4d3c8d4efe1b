//! The client service: appends, reads, subscriptions, status and membership changes, plus
//! the Prometheus metrics endpoint.
//!
//! Writes are honest about their fate (see [`crate::wire_error`]): the service retries only
//! the post-election lease refusal (nothing was proposed), never a proposed write.
//!
//! Appends are coalesced ([`crate::coalesce`]): each queues its write; at most
//! [`COALESCE_INFLIGHT`] flusher tasks each propose whatever is queued as one Raft entry
//! and hand every write its own answer. A write that finds a flusher free is proposed at
//! once (alone, as before); under load, writes queue while entries are in flight and go
//! out together. A batch's fate (applied, refused, unknown) is every one of its writes'.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use futures::Stream;
use openraft::async_runtime::WatchReceiver;
use openraft::error::{ClientWriteError, ForwardReason, ForwardToLeader, RaftError};
use openraft::{ReadPolicy, ServerState};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio::sync::{OwnedSemaphorePermit, Semaphore, oneshot, watch};
use tonic::{Request, Response, Status};

use crate::clock::now_ms;
use crate::coalesce::{BATCH_HEADER_BYTES, BATCH_WRITE_OVERHEAD_BYTES, encode_batch};
use crate::limits::{APPEND_BATCH_MAX_RECORDS, COMMAND_MAX_BYTES, RECORD_MAX_BYTES};
use crate::metrics::RaftGauges;
use crate::multiplex::{AppTag, tagged};
use crate::node::NodeShared;
use crate::pb::client::{self as api, keel_log_server::KeelLog};
use crate::pb::raft::raft_client::RaftClient;
use crate::plain_log::{LogRecord, decode_append_answer, encode_append};
use crate::session::encode_register;
use crate::types::{ClientRequest, ClientResponse, NodeAddr, TypeConfig};
use crate::wire_error::{WriteErrorKind, not_leader, status, to_append_error};

/// Most client writes in flight on one node; more are refused as overloaded.
pub const INFLIGHT_WRITES_MAX: usize = 4096;
/// How long a proposed write may take before its outcome is reported unknown.
const WRITE_TIMEOUT: Duration = Duration::from_secs(10);
/// How often a write refused for an expired post-election lease is retried, and the pause.
const LEASE_RETRIES_MAX: u32 = 50;
const LEASE_RETRY_PAUSE: Duration = Duration::from_millis(20);
/// How long the leader waits for a new learner's status before adding it.
const LEARNER_STATUS_TIMEOUT: Duration = Duration::from_secs(2);
/// How long a blocking `AddLearner` waits for the learner to catch up.
const LEARNER_CATCH_UP_TIMEOUT: Duration = Duration::from_secs(60);
/// How long a linearizable read may wait for its read index and the local apply.
const READ_TIMEOUT: Duration = Duration::from_secs(5);
/// Most records one `Read` returns, and about how many bytes.
const READ_MAX_RECORDS: usize = 10_000;
const READ_MAX_BYTES: usize = 4 * 1024 * 1024;
/// Records fetched per step of a subscription.
const SUBSCRIBE_BATCH_RECORDS: usize = 1024;
/// Largest metrics HTTP request read.
const METRICS_REQUEST_MAX_BYTES: usize = 8 * 1024;

/// Most answers queued on one append stream before its requests wait.
const APPEND_STREAM_QUEUE: usize = 1024;
/// Most appends of one stream served at once; the stream is not read past it.
const APPEND_STREAM_INFLIGHT_MAX: usize = 1024;
/// Coalesced entries proposed at once; while they are in flight, appends queue.
pub const COALESCE_INFLIGHT: usize = 4;
/// Most writes one coalesced entry carries.
const COALESCE_MAX_WRITES: usize = 1024;

/// A write waiting to be proposed, and where its answer goes.
#[derive(Debug)]
struct Queued {
    request: ClientRequest,
    answer: oneshot::Sender<Result<ClientResponse, Status>>,
}

/// The client service of one node.
#[derive(Debug, Clone)]
pub struct ClientService {
    shared: NodeShared,
    inflight: Arc<Semaphore>,
    /// Appends waiting for a flusher.
    queue: Arc<Mutex<VecDeque<Queued>>>,
    /// One permit per flusher.
    flushers: Arc<Semaphore>,
}

impl ClientService {
    /// The service for a node.
    pub fn new(shared: NodeShared) -> Self {
        Self {
            shared,
            inflight: Arc::new(Semaphore::new(INFLIGHT_WRITES_MAX)),
            queue: Arc::new(Mutex::new(VecDeque::new())),
            flushers: Arc::new(Semaphore::new(COALESCE_INFLIGHT)),
        }
    }

    fn queue(&self) -> MutexGuard<'_, VecDeque<Queued>> {
        self.queue.lock().expect("append queue lock poisoned")
    }

    /// Proposes `request` coalesced with other queued appends; its own answer.
    async fn write_coalesced(&self, request: ClientRequest) -> Result<ClientResponse, Status> {
        let (answer, answered) = oneshot::channel();
        {
            let mut queue = self.queue();
            if queue.len() >= INFLIGHT_WRITES_MAX {
                return Err(status(
                    WriteErrorKind::Overloaded,
                    format!("{INFLIGHT_WRITES_MAX} writes queued; retry later"),
                ));
            }
            queue.push_back(Queued { request, answer });
        }
        if let Ok(permit) = Arc::clone(&self.flushers).try_acquire_owned() {
            tokio::spawn(self.clone().flush(permit));
        }
        answered.await.unwrap_or_else(|_| {
            Err(status(
                WriteErrorKind::OutcomeUnknown,
                "the node stopped before answering; retry with the same sequence to learn the outcome",
            ))
        })
    }

    /// Proposes queued writes, an entry at a time, until the queue is empty. A write queued
    /// after the last look either found this permit released (and started a flusher) or is
    /// seen by the re-check after the release.
    async fn flush(self, mut permit: OwnedSemaphorePermit) {
        loop {
            let batch = self.take_batch();
            if batch.is_empty() {
                match self.release_unless_queued(permit) {
                    Some(again) => permit = again,
                    None => return,
                }
            } else {
                self.propose_batch(batch).await;
            }
        }
    }

    /// `permit` back if writes are queued (or were queued after it was released and no
    /// other flusher took them), else releases it.
    fn release_unless_queued(&self, permit: OwnedSemaphorePermit) -> Option<OwnedSemaphorePermit> {
        if !self.queue().is_empty() {
            return Some(permit);
        }
        drop(permit);
        if self.queue().is_empty() {
            return None;
        }
        Arc::clone(&self.flushers).try_acquire_owned().ok()
    }

    /// The oldest queued writes that fit one command.
    fn take_batch(&self) -> Vec<Queued> {
        let mut queue = self.queue();
        let mut bytes = BATCH_HEADER_BYTES;
        let mut batch = Vec::new();
        while let Some(next) = queue.front() {
            let size = BATCH_WRITE_OVERHEAD_BYTES + next.request.command.len();
            if batch.len() == COALESCE_MAX_WRITES
                || (!batch.is_empty() && bytes + size > COMMAND_MAX_BYTES)
            {
                break;
            }
            bytes += size;
            batch.extend(queue.pop_front());
        }
        batch
    }

    /// Proposes `batch` as one entry (a lone write as itself) and answers every write.
    async fn propose_batch(&self, mut batch: Vec<Queued>) {
        if batch.len() == 1 {
            let Queued { request, answer } = batch.remove(0);
            let _ = answer.send(self.write(request).await.map(|(r, _)| r.data));
            return;
        }
        let requests: Vec<ClientRequest> = batch.iter().map(|q| q.request.clone()).collect();
        let written = self
            .write(ClientRequest {
                session: 0,
                seq: 0,
                command: encode_batch(&requests),
            })
            .await;
        match written.map(|(response, _)| response.data) {
            Ok(ClientResponse::Batch(answers)) if answers.len() == batch.len() => {
                for (queued, answer) in batch.into_iter().zip(answers) {
                    let _ = queued.answer.send(Ok(answer));
                }
            }
            Ok(other) => {
                let error = status(
                    WriteErrorKind::Invalid,
                    format!("a batch of {} writes was answered {other:?}", batch.len()),
                );
                for queued in batch {
                    let _ = queued.answer.send(Err(error.clone()));
                }
            }
            Err(error) => {
                for queued in batch {
                    let _ = queued.answer.send(Err(error.clone()));
                }
            }
        }
    }

    fn leader_of(forward: &ForwardToLeader<TypeConfig>) -> Status {
        let node = forward.leader_node.as_ref().map(|node| node.addr.as_str());
        not_leader(forward.leader_id.zip(node))
    }

    fn known_leader(&self) -> Option<(u64, NodeAddr)> {
        let metrics = self.shared.raft.metrics();
        let metrics = metrics.borrow_watched();
        let leader = metrics.current_leader?;
        let node = metrics
            .membership_config
            .membership()
            .get_node(&leader)?
            .clone();
        Some((leader, node))
    }

    fn require_leader(&self) -> Result<(), Status> {
        let metrics = self.shared.raft.metrics();
        if metrics.borrow_watched().state == ServerState::Leader {
            return Ok(());
        }
        let leader = self.known_leader();
        Err(not_leader(
            leader.as_ref().map(|(id, node)| (*id, node.addr.as_str())),
        ))
    }

    /// Proposes `request` (a command tagged by [`crate::multiplex::tagged`]) and waits for
    /// the state machine's answer; retries only the post-election lease refusal (nothing was
    /// proposed then).
    ///
    /// # Errors
    /// A status whose kind (see [`crate::wire_error`]) says whether the write may have
    /// been applied.
    pub async fn propose(&self, request: ClientRequest) -> Result<ClientResponse, Status> {
        Ok(self.write(request).await?.0.data)
    }

    async fn write(
        &self,
        request: ClientRequest,
    ) -> Result<(openraft::raft::ClientWriteResponse<TypeConfig>, u64), Status> {
        let _permit = Arc::clone(&self.inflight)
            .try_acquire_owned()
            .map_err(|_| {
                status(
                    WriteErrorKind::Overloaded,
                    format!("{INFLIGHT_WRITES_MAX} writes in flight; retry later"),
                )
            })?;
        for attempt in 0..=LEASE_RETRIES_MAX {
            let written = tokio::time::timeout(
                WRITE_TIMEOUT,
                self.shared.raft.client_write(request.clone()),
            )
            .await;
            let error = match written {
                Err(_) => {
                    return Err(status(
                        WriteErrorKind::OutcomeUnknown,
                        format!(
                            "no outcome within {WRITE_TIMEOUT:?} after proposing; retry with the same sequence to learn it"
                        ),
                    ));
                }
                Ok(Ok(response)) => return Ok((response, u64::from(attempt))),
                Ok(Err(error)) => error,
            };
            match error {
                RaftError::APIError(ClientWriteError::ForwardToLeader(forward)) => {
                    let own_lease = forward.reason == ForwardReason::LeaseExpired
                        && forward.leader_id == Some(self.shared.node_id);
                    if !own_lease || attempt == LEASE_RETRIES_MAX {
                        return Err(Self::leader_of(&forward));
                    }
                    tokio::time::sleep(LEASE_RETRY_PAUSE).await;
                }
                RaftError::APIError(ClientWriteError::LogEntryDiscarded(forward)) => {
                    return Err(status(
                        WriteErrorKind::OutcomeUnknown,
                        format!(
                            "the entry was discarded by a leader change ({forward}); it may or may not commit: retry with the same sequence"
                        ),
                    ));
                }
                RaftError::APIError(other) => {
                    return Err(status(WriteErrorKind::Invalid, other.to_string()));
                }
                RaftError::Fatal(fatal) => {
                    return Err(status(
                        WriteErrorKind::OutcomeUnknown,
                        format!("raft stopped after the proposal: {fatal}"),
                    ));
                }
            }
        }
        unreachable!("the last attempt returns")
    }

    async fn append_batch(
        &self,
        request: api::AppendRequest,
    ) -> Result<api::AppendResponse, Status> {
        let invalid = |message: String| status(WriteErrorKind::Invalid, message);
        if request.records.is_empty() {
            return Err(invalid("an append carries at least one record".to_owned()));
        }
        if request.records.len() > APPEND_BATCH_MAX_RECORDS {
            return Err(invalid(format!(
                "{} records in one append; the limit is {APPEND_BATCH_MAX_RECORDS}",
                request.records.len()
            )));
        }
        if let Some(record) = request.records.iter().find(|r| r.len() > RECORD_MAX_BYTES) {
            return Err(invalid(format!(
                "a record of {} bytes; the limit is {RECORD_MAX_BYTES}",
                record.len()
            )));
        }
        let total: usize = request.records.iter().map(|r| r.len() + 4).sum::<usize>() + 12;
        if total > COMMAND_MAX_BYTES {
            return Err(invalid(format!(
                "a batch of {total} bytes; the limit is {COMMAND_MAX_BYTES}"
            )));
        }
        if request.session != 0 && request.seq == 0 {
            return Err(invalid("sequence numbers start at 1".to_owned()));
        }
        let command = tagged(AppTag::PlainLog, &encode_append(now_ms(), &request.records));
        let response = self
            .write_coalesced(ClientRequest {
                session: request.session,
                seq: request.seq,
                command,
            })
            .await?;
        match session_refusal(request.session, request.seq, response)? {
            ClientResponse::Applied { answer, index } => {
                let (first_offset, count) = decode_append_answer(&answer).ok_or_else(|| {
                    status(
                        WriteErrorKind::Invalid,
                        "the command did not decode as an append",
                    )
                })?;
                Ok(api::AppendResponse {
                    first_offset,
                    count,
                    raft_index: index,
                })
            }
            other => Err(status(
                WriteErrorKind::Invalid,
                format!("an append was answered {other:?}"),
            )),
        }
    }

    /// Registers an exactly-once session through the log; its id.
    ///
    /// # Errors
    /// Not the leader, overloaded, or the registration's fate unknown (a lost registration
    /// only costs a session slot).
    pub async fn register_session(&self) -> Result<u64, Status> {
        let request = ClientRequest {
            session: 0,
            seq: 0,
            command: encode_register(self.shared.sessions_max),
        };
        match self.propose(request).await? {
            ClientResponse::SessionRegistered { session } => Ok(session),
            other => Err(status(
                WriteErrorKind::Invalid,
                format!("a session registration was answered {other:?}"),
            )),
        }
    }

    /// [`Self::append_batch`], recorded in the metrics.
    async fn timed_append(
        &self,
        request: api::AppendRequest,
    ) -> Result<api::AppendResponse, Status> {
        let started = Instant::now();
        let result = self.append_batch(request).await;
        self.shared
            .metrics
            .append_latency
            .observe(started.elapsed());
        if result.is_err() {
            self.shared
                .metrics
                .append_errors
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        }
        result
    }

    /// Waits until this node has applied everything acknowledged before the call.
    ///
    /// # Errors
    /// `Unavailable` when no read index can be had or the apply does not catch up in time.
    pub async fn linearize(&self) -> Result<(), Status> {
        let is_leader = self.shared.raft.metrics().borrow_watched().state == ServerState::Leader;
        let read_index = if is_leader {
            match self
                .shared
                .raft
                .ensure_linearizable(ReadPolicy::ReadIndex)
                .await
            {
                Ok(read) => read.index(),
                Err(error) => {
                    return Err(status(
                        WriteErrorKind::Unavailable,
                        format!("read index: {error}"),
                    ));
                }
            }
        } else {
            self.remote_read_index().await?
        };
        self.shared
            .raft
            .wait(Some(READ_TIMEOUT))
            .applied_index_at_least(Some(read_index), "linearizable read")
            .await
            .map_err(|e| {
                status(
                    WriteErrorKind::Unavailable,
                    format!("waiting to apply index {read_index}: {e}"),
                )
            })?;
        Ok(())
    }

    async fn remote_read_index(&self) -> Result<u64, Status> {
        let (leader, node) = self.known_leader().ok_or_else(|| {
            status(
                WriteErrorKind::Unavailable,
                "no leader known to take a read index from",
            )
        })?;
        let addr = self.shared.network.address_of(leader, &node);
        let channel = self
            .shared
            .network
            .channel(leader, &addr)
            .map_err(|e| status(WriteErrorKind::Unavailable, e.to_string()))?;
        let mut request = Request::new(crate::pb::raft::Empty {});
        request.set_timeout(READ_TIMEOUT);
        let response = RaftClient::new(channel)
            .read_index(request)
            .await
            .map_err(|e| {
                status(
                    WriteErrorKind::Unavailable,
                    format!("read index from leader {leader}: {}", e.message()),
                )
            })?
            .into_inner();
        if !response.has_read_index {
            return Err(status(
                WriteErrorKind::Unavailable,
                "the leader gave no read index",
            ));
        }
        Ok(response.read_index)
    }

    fn check_retained(&self, from: u64) -> Result<(), Status> {
        let (first, _) = self.shared.log.bounds();
        if from < first {
            return Err(Status::out_of_range(format!(
                "offset {from} was dropped by retention; the first retained offset is {first}"
            )));
        }
        Ok(())
    }

    fn status_response(&self) -> api::StatusResponse {
        let metrics = self.shared.raft.metrics().borrow_watched().clone();
        let applied = self.shared.host.applied_state();
        let (first_offset, next_offset) = self.shared.log.bounds();
        let membership = metrics.membership_config.membership();
        let voters: BTreeSet<u64> = membership.voter_ids().collect();
        let matched = metrics.replication.clone().unwrap_or_default();
        let members = membership
            .nodes()
            .map(|(id, node)| api::MemberStatus {
                node_id: *id,
                addr: node.addr.clone(),
                voter: voters.contains(id),
                matched_index: matched.get(id).and_then(|m| m.map(|l| l.index)),
            })
            .collect();
        let role = match metrics.state {
            ServerState::Leader => "leader",
            ServerState::Follower => "follower",
            ServerState::Candidate => "candidate",
            ServerState::Learner => "learner",
            ServerState::Shutdown => "shutdown",
        };
        let purged = self
            .shared
            .store
            .state()
            .ok()
            .and_then(|s| s.purged)
            .map(|p| p.index);
        api::StatusResponse {
            node_id: self.shared.node_id,
            addr: self.shared.addr.to_string(),
            role: role.to_owned(),
            leader_id: metrics.current_leader,
            term: metrics.current_term,
            last_log_index: metrics.last_log_index,
            committed_index: metrics.local_committed.map(|c| c.index),
            applied_index: applied.applied.map(|a| a.index),
            state_digest: applied.digest,
            members,
            snapshot_index: metrics.snapshot.map(|s| s.index),
            purged_index: purged,
            next_offset,
            first_offset,
            incarnation: self.shared.identity.incarnation,
            admitted: self.shared.admitted(),
            initialized: membership.nodes().next().is_some(),
        }
    }

    /// Whether this node already holds a membership, and it is `members` as voters.
    ///
    /// # Errors
    /// `FailedPrecondition` when it holds another one: a clear refusal, never a second
    /// cluster.
    fn holds_membership(&self, members: &BTreeMap<u64, NodeAddr>) -> Result<bool, Status> {
        let metrics = self.shared.raft.metrics().borrow_watched().clone();
        let membership = metrics.membership_config.membership();
        if membership.nodes().next().is_none() {
            return Ok(false);
        }
        let voters: BTreeSet<u64> = membership.voter_ids().collect();
        let nodes: BTreeMap<u64, NodeAddr> = membership
            .nodes()
            .map(|(id, node)| (*id, node.clone()))
            .collect();
        if voters.iter().eq(members.keys()) && &nodes == members {
            return Ok(true);
        }
        let held: Vec<String> = nodes
            .iter()
            .map(|(id, node)| {
                format!(
                    "{id} {node}{}",
                    if voters.contains(id) {
                        ""
                    } else {
                        " (learner)"
                    }
                )
            })
            .collect();
        Err(Status::failed_precondition(format!(
            "node {} is already initialized with another membership: {}",
            self.shared.node_id,
            held.join(", ")
        )))
    }

    /// Checks, before anything is proposed, that node `id` answers at `node`'s address (as
    /// this node reaches it) and reports `node`'s incarnation.
    ///
    /// # Errors
    /// `Unavailable` when it does not answer in time; `Invalid` when it is another node or
    /// another incarnation.
    async fn check_learner(&self, id: u64, node: &NodeAddr) -> Result<(), Status> {
        let addr = self.shared.network.address_of(id, node);
        let channel = self.shared.network.channel(id, &addr).map_err(|e| {
            status(
                WriteErrorKind::Invalid,
                format!("learner address {addr}: {e}"),
            )
        })?;
        let mut request = Request::new(api::StatusRequest {});
        request.set_timeout(LEARNER_STATUS_TIMEOUT);
        let learner = api::keel_log_client::KeelLogClient::new(channel)
            .status(request)
            .await
            .map_err(|e| {
                status(
                    WriteErrorKind::Unavailable,
                    format!(
                        "node {id} does not answer at {addr} ({}); nothing was proposed",
                        e.message()
                    ),
                )
            })?
            .into_inner();
        if learner.node_id != id || learner.incarnation != node.incarnation {
            return Err(status(
                WriteErrorKind::Invalid,
                format!(
                    "{addr} is node {} with data directory incarnation {:016x}, not node {id} with {:016x}; nothing was proposed",
                    learner.node_id, learner.incarnation, node.incarnation
                ),
            ));
        }
        Ok(())
    }

    /// Waits until learner `id` has acknowledged the log up to `index` (the entry that
    /// added it), at most [`LEARNER_CATCH_UP_TIMEOUT`].
    ///
    /// # Errors
    /// `Unavailable` at the deadline (the learner stays in the membership; adding it again
    /// is harmless) or when this node stops leading.
    async fn wait_caught_up(&self, id: u64, index: u64) -> Result<(), Status> {
        self.shared
            .raft
            .wait(Some(LEARNER_CATCH_UP_TIMEOUT))
            .metrics(
                |metrics| {
                    metrics.replication.as_ref().is_none_or(|replication| {
                        replication
                            .get(&id)
                            .and_then(|matched| matched.as_ref())
                            .is_some_and(|matched| matched.index >= index)
                    })
                },
                "learner caught up",
            )
            .await
            .map_err(|e| {
                status(
                    WriteErrorKind::Unavailable,
                    format!("node {id} was added as a learner at index {index} but has not caught up: {e}"),
                )
            })
            .and_then(|metrics| {
                if metrics.replication.is_none() {
                    Err(status(
                        WriteErrorKind::Unavailable,
                        format!("this node stopped leading before learner {id} caught up"),
                    ))
                } else {
                    Ok(())
                }
            })
    }

    fn membership_error(error: RaftError<TypeConfig, ClientWriteError<TypeConfig>>) -> Status {
        match error {
            RaftError::APIError(ClientWriteError::ForwardToLeader(forward)) => {
                Self::leader_of(&forward)
            }
            RaftError::APIError(ClientWriteError::LogEntryDiscarded(_)) => status(
                WriteErrorKind::OutcomeUnknown,
                "the membership change was discarded by a leader change; check status",
            ),
            RaftError::APIError(other) => status(WriteErrorKind::Invalid, other.to_string()),
            RaftError::Fatal(fatal) => status(
                WriteErrorKind::OutcomeUnknown,
                format!("raft stopped: {fatal}"),
            ),
        }
    }
}

/// `response`, or the error status a session refusal stands for: write `seq` of `session`
/// was not applied, and for an unknown session an earlier attempt's fate is lost.
///
/// # Errors
/// `StaleSequence` or `UnknownSession`.
pub fn session_refusal(
    session: u64,
    seq: u64,
    response: ClientResponse,
) -> Result<ClientResponse, Status> {
    match response {
        ClientResponse::StaleSequence { last_applied_seq } => Err(status(
            WriteErrorKind::StaleSequence,
            format!(
                "sequence {seq} is older than session {session}'s last applied {last_applied_seq}"
            ),
        )),
        ClientResponse::UnknownSession => Err(status(
            WriteErrorKind::UnknownSession,
            format!(
                "session {session} is not registered or has expired: write {seq} was not applied now, and whether an earlier attempt of it was cannot be known; register a new session"
            ),
        )),
        other => Ok(other),
    }
}

fn record_to_pb(record: LogRecord) -> api::Record {
    api::Record {
        offset: record.offset,
        stamp_ms: record.stamp_ms,
        data: record.data,
    }
}

type RecordStream = Pin<Box<dyn Stream<Item = Result<api::Record, Status>> + Send>>;

#[tonic::async_trait]
impl KeelLog for ClientService {
    async fn register_session(
        &self,
        _request: Request<api::RegisterSessionRequest>,
    ) -> Result<Response<api::RegisterSessionResponse>, Status> {
        self.require_leader()?;
        let session = self.register_session().await?;
        Ok(Response::new(api::RegisterSessionResponse { session }))
    }

    async fn append(
        &self,
        request: Request<api::AppendRequest>,
    ) -> Result<Response<api::AppendResponse>, Status> {
        self.timed_append(request.into_inner())
            .await
            .map(Response::new)
    }

    type AppendStreamStream =
        Pin<Box<dyn Stream<Item = Result<api::StreamAppendResponse, Status>> + Send>>;

    async fn append_stream(
        &self,
        request: Request<tonic::Streaming<api::StreamAppendRequest>>,
    ) -> Result<Response<Self::AppendStreamStream>, Status> {
        let mut requests = request.into_inner();
        let (answers, answered) = futures::channel::mpsc::channel(APPEND_STREAM_QUEUE);
        let service = self.clone();
        let inflight = Arc::new(Semaphore::new(APPEND_STREAM_INFLIGHT_MAX));
        tokio::spawn(async move {
            while let Ok(Some(message)) = requests.message().await {
                // At the limit, stop reading the stream until an append finishes: the
                // client's sends then wait on HTTP/2 flow control.
                let Ok(permit) = Arc::clone(&inflight).acquire_owned().await else {
                    return;
                };
                let service = service.clone();
                let mut answers = answers.clone();
                tokio::spawn(async move {
                    let _permit = permit;
                    let request_id = message.request_id;
                    let result = match message.append {
                        Some(append) => service.timed_append(append).await,
                        None => Err(status(
                            WriteErrorKind::Invalid,
                            "a stream request without an append",
                        )),
                    };
                    let result = match result {
                        Ok(appended) => api::stream_append_response::Result::Appended(appended),
                        Err(error) => {
                            api::stream_append_response::Result::Error(to_append_error(&error))
                        }
                    };
                    let answer = api::StreamAppendResponse {
                        request_id,
                        result: Some(result),
                    };
                    let _ = futures::SinkExt::send(&mut answers, Ok(answer)).await;
                });
            }
        });
        Ok(Response::new(Box::pin(answered)))
    }

    async fn read(
        &self,
        request: Request<api::ReadRequest>,
    ) -> Result<Response<api::ReadResponse>, Status> {
        let request = request.into_inner();
        #[cfg(feature = "sabotage")]
        let sabotaged = crate::sabotage::on(crate::sabotage::Fault::StaleReads);
        #[cfg(not(feature = "sabotage"))]
        let sabotaged = false;
        if request.linearizable && !sabotaged {
            self.linearize().await?;
        }
        self.check_retained(request.from_offset)?;
        let max = match request.max_records {
            0 => READ_MAX_RECORDS,
            n => (n as usize).min(READ_MAX_RECORDS),
        };
        let records = self
            .shared
            .log
            .read_from(request.from_offset, max, READ_MAX_BYTES);
        let (first_offset, next_offset) = self.shared.log.bounds();
        Ok(Response::new(api::ReadResponse {
            records: records.into_iter().map(record_to_pb).collect(),
            first_offset,
            next_offset,
        }))
    }

    type SubscribeStream = RecordStream;

    async fn subscribe(
        &self,
        request: Request<api::SubscribeRequest>,
    ) -> Result<Response<Self::SubscribeStream>, Status> {
        let from = request.into_inner().from_offset;
        self.check_retained(from)?;
        let log = self.shared.log.clone();
        let watch = log.watch_next_offset();
        let state = (from, watch, VecDeque::<LogRecord>::new(), false);
        let stream = futures::stream::unfold(
            state,
            move |(mut next, mut watch, mut buffered, failed)| {
                let log = log.clone();
                async move {
                    if failed {
                        return None;
                    }
                    loop {
                        if let Some(record) = buffered.pop_front() {
                            return Some((
                                Ok(record_to_pb(record)),
                                (next, watch, buffered, false),
                            ));
                        }
                        let batch = log.read_from(next, SUBSCRIBE_BATCH_RECORDS, READ_MAX_BYTES);
                        match batch.first() {
                            Some(first) if first.offset != next => {
                                let error = Status::out_of_range(format!(
                                    "offset {next} was dropped by retention while subscribed; resume from {}",
                                    first.offset
                                ));
                                return Some((Err(error), (next, watch, buffered, true)));
                            }
                            Some(_) => {
                                next = batch.last().map_or(next, |r| r.offset + 1);
                                buffered.extend(batch);
                            }
                            None => {
                                if watch.changed().await.is_err() {
                                    return None;
                                }
                            }
                        }
                    }
                }
            },
        );
        Ok(Response::new(Box::pin(stream)))
    }

    async fn status(
        &self,
        _request: Request<api::StatusRequest>,
    ) -> Result<Response<api::StatusResponse>, Status> {
        Ok(Response::new(self.status_response()))
    }

    async fn init(
        &self,
        request: Request<api::InitRequest>,
    ) -> Result<Response<api::InitResponse>, Status> {
        let request = request.into_inner();
        if request.members.is_empty() {
            return Err(status(
                WriteErrorKind::Invalid,
                "init needs the initial members",
            ));
        }
        if !request.members.contains_key(&self.shared.node_id) {
            return Err(status(
                WriteErrorKind::Invalid,
                format!(
                    "node {} is not among the initial members",
                    self.shared.node_id
                ),
            ));
        }
        if request.members.contains_key(&0) {
            return Err(status(WriteErrorKind::Invalid, "node id 0 is not valid"));
        }
        let members: BTreeMap<u64, NodeAddr> = request
            .members
            .into_iter()
            .map(|(id, member)| (id, NodeAddr::new(member.addr, member.incarnation)))
            .collect();
        // Idempotent: a member that already holds this membership (initialized by an earlier
        // `Init`, or by the leader another member's `Init` elected) answers success.
        if self.holds_membership(&members)? {
            return Ok(Response::new(api::InitResponse {}));
        }
        match self.shared.raft.initialize(members.clone()).await {
            Ok(()) => Ok(Response::new(api::InitResponse {})),
            // The membership may have arrived from a leader since the look above.
            Err(_) if self.holds_membership(&members)? => Ok(Response::new(api::InitResponse {})),
            Err(e) => Err(Status::failed_precondition(format!(
                "cannot initialize: {e}"
            ))),
        }
    }

    async fn add_learner(
        &self,
        request: Request<api::AddLearnerRequest>,
    ) -> Result<Response<api::MembershipResponse>, Status> {
        self.require_leader()?;
        let request = request.into_inner();
        if request.node_id == 0 || request.addr.is_empty() {
            return Err(status(
                WriteErrorKind::Invalid,
                "a learner needs a non-zero id and an address",
            ));
        }
        let node = NodeAddr::new(request.addr, request.incarnation);
        self.check_learner(request.node_id, &node).await?;
        let response = self
            .shared
            .raft
            .add_learner(request.node_id, node, false)
            .await
            .map_err(Self::membership_error)?;
        let index = response.log_id.index;
        if request.blocking {
            self.wait_caught_up(request.node_id, index).await?;
        }
        Ok(Response::new(api::MembershipResponse { log_index: index }))
    }

    async fn change_membership(
        &self,
        request: Request<api::ChangeMembershipRequest>,
    ) -> Result<Response<api::MembershipResponse>, Status> {
        self.require_leader()?;
        let request = request.into_inner();
        let voters: BTreeSet<u64> = request.voters.into_iter().collect();
        if voters.is_empty() {
            return Err(status(
                WriteErrorKind::Invalid,
                "a membership needs at least one voter",
            ));
        }
        let response = self
            .shared
            .raft
            .change_membership(voters, request.retain)
            .await
            .map_err(Self::membership_error)?;
        Ok(Response::new(api::MembershipResponse {
            log_index: response.log_id.index,
        }))
    }
}

/// Serves `GET /metrics` (Prometheus text format) on `listener` until `stop` turns true.
pub async fn serve_metrics(
    shared: NodeShared,
    listener: TcpListener,
    mut stop: watch::Receiver<bool>,
) {
    loop {
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            _ = stop.changed() => return,
        };
        let Ok((mut socket, _)) = accepted else {
            continue;
        };
        let shared = shared.clone();
        tokio::spawn(async move {
            let mut request = Vec::new();
            let mut buf = [0u8; 1024];
            while !request.windows(4).any(|w| w == b"\r\n\r\n")
                && request.len() < METRICS_REQUEST_MAX_BYTES
            {
                match socket.read(&mut buf).await {
                    Ok(0) | Err(_) => break,
                    Ok(n) => request.extend_from_slice(&buf[..n]),
                }
            }
            let response = if request.starts_with(b"GET /metrics ") {
                let body = shared.metrics.render(shared.node_id, gauges(&shared));
                format!(
                    "HTTP/1.1 200 OK\r\nContent-Type: text/plain; version=0.0.4\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                    body.len()
                )
            } else {
                "HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
                    .to_owned()
            };
            let _ = socket.write_all(response.as_bytes()).await;
        });
    }
}

fn gauges(shared: &NodeShared) -> RaftGauges {
    let metrics = shared.raft.metrics().borrow_watched().clone();
    RaftGauges {
        term: metrics.current_term,
        committed_index: metrics.local_committed.map_or(0, |c| c.index),
        applied_index: metrics.last_applied.map_or(0, |a| a.index),
        last_log_index: metrics.last_log_index.unwrap_or(0),
        is_leader: u64::from(metrics.state == ServerState::Leader),
    }
}
