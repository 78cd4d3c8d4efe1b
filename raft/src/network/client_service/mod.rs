//! The client service: appends, reads, subscriptions, status and membership changes.
//!
//! One module per job: `propose` (a write through openraft and its fate, sessions),
//! `coalesce_queue` (appends coalesced into shared entries), `appends` (the append
//! RPCs), `reads` (local and linearizable reads, subscriptions) and `admin` (status,
//! init, learners, membership). This module holds the service, its view of the leader, and
//! the gRPC trait, which hands each call to its module.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};

use openraft::ServerState;
use openraft::async_runtime::WatchReceiver;
use openraft::error::ForwardToLeader;
use tokio::sync::Semaphore;
use tonic::{Request, Response, Status};

use crate::pb::client::{self as api, keel_log_server::KeelLog};
use crate::shared::NodeShared;
use crate::types::{NodeAddr, TypeConfig};
use crate::wire_error::not_leader;

mod admin;
mod appends;
mod coalesce_queue;
mod propose;
mod reads;

pub use coalesce_queue::COALESCE_INFLIGHT;
pub use propose::{INFLIGHT_WRITES_MAX, session_refusal};

use appends::AnswerStream;
use coalesce_queue::Queued;
use reads::RecordStream;

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

    /// `Ok` when this node leads; else "not leader", naming the leader it knows of (for an
    /// extension's answer only the leader can give).
    ///
    /// # Errors
    /// The "not leader" status.
    pub fn require_leader(&self) -> Result<(), Status> {
        let metrics = self.shared.raft.metrics();
        if metrics.borrow_watched().state == ServerState::Leader {
            return Ok(());
        }
        let leader = self.known_leader();
        Err(not_leader(
            leader.as_ref().map(|(id, node)| (*id, node.addr.as_str())),
        ))
    }
}

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

    type AppendStreamStream = AnswerStream;

    async fn append_stream(
        &self,
        request: Request<tonic::Streaming<api::StreamAppendRequest>>,
    ) -> Result<Response<Self::AppendStreamStream>, Status> {
        Ok(self.serve_append_stream(request))
    }

    async fn read(
        &self,
        request: Request<api::ReadRequest>,
    ) -> Result<Response<api::ReadResponse>, Status> {
        self.serve_read(request).await
    }

    type SubscribeStream = RecordStream;

    async fn subscribe(
        &self,
        request: Request<api::SubscribeRequest>,
    ) -> Result<Response<Self::SubscribeStream>, Status> {
        self.serve_subscribe(request)
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
        self.serve_init(request).await
    }

    async fn add_learner(
        &self,
        request: Request<api::AddLearnerRequest>,
    ) -> Result<Response<api::MembershipResponse>, Status> {
        self.serve_add_learner(request).await
    }

    async fn change_membership(
        &self,
        request: Request<api::ChangeMembershipRequest>,
    ) -> Result<Response<api::MembershipResponse>, Status> {
        self.serve_change_membership(request).await
    }

    async fn remint_identity(
        &self,
        request: Request<api::RemintIdentityRequest>,
    ) -> Result<Response<api::RemintIdentityResponse>, Status> {
        self.serve_remint_identity(request).await
    }

    async fn build_snapshot(
        &self,
        _request: Request<api::BuildSnapshotRequest>,
    ) -> Result<Response<api::BuildSnapshotResponse>, Status> {
        self.serve_build_snapshot().await
    }
}
