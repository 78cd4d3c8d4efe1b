//! The raft service (between nodes) and the gRPC server hosting both services.
//!
//! A node whose data directory incarnation the membership does not admit refuses to vote
//! (see [`NodeAddr`](crate::types::NodeAddr)); it still accepts entries and snapshots, which
//! is how a repaired node catches up before it is promoted.

use std::pin::Pin;

use futures::{Stream, StreamExt};
use openraft::ReadPolicy;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tonic::service::Routes;
use tonic::{Request, Response, Status, Streaming};

use crate::limits::MESSAGE_MAX_BYTES;
use crate::network::client_service::ClientService;
use crate::network::incoming;
use crate::pb::client::keel_log_server::KeelLogServer;
use crate::pb::raft::raft_server::{Raft as RaftRpc, RaftServer};
use crate::pb::{self, raft as wire};
use crate::security::OpenedSecurity;
use crate::shared::{Admission, NodeShared};
use crate::snapshot::SnapshotFile;
use crate::state_machine::StateMachineHost;
use crate::types::{Raft, Snapshot, SnapshotMeta, StoredMembership, TypeConfig, Vote};

/// Adds an extension's gRPC services to a node's routes.
pub type AddServices = Box<dyn FnOnce(&NodeShared, Routes) -> Routes + Send>;

/// Serves both services (and an extension's) on `listener` until `stop` turns true, over
/// TLS and behind authentication as `security` says.
pub async fn serve(
    shared: NodeShared,
    listener: TcpListener,
    extra: Option<AddServices>,
    security: OpenedSecurity,
    mut stop: watch::Receiver<bool>,
) {
    let raft = RaftServer::new(RaftService {
        raft: shared.raft.clone(),
        host: shared.host.clone(),
        admission: shared.admission(),
    })
    .max_decoding_message_size(MESSAGE_MAX_BYTES)
    .max_encoding_message_size(MESSAGE_MAX_BYTES);
    let client = KeelLogServer::new(ClientService::new(shared.clone()))
        .max_decoding_message_size(MESSAGE_MAX_BYTES)
        .max_encoding_message_size(MESSAGE_MAX_BYTES);
    let incoming = incoming::accept(listener, security.server_tls.clone(), stop.clone());
    let stopped = async move {
        while !*stop.borrow_and_update() {
            if stop.changed().await.is_err() {
                return;
            }
        }
    };
    let mut routes = Routes::new(raft).add_service(client);
    if let Some(add) = extra {
        routes = add(&shared, routes);
    }
    let served = tonic::transport::Server::builder()
        .layer(security.layer())
        .add_routes(routes)
        .serve_with_incoming_shutdown(incoming, stopped)
        .await;
    if let Err(error) = served {
        tracing::error!(node = shared.node_id, %error, "gRPC server failed");
    }
}

/// The raft service: the Raft handle, the state machine host (for snapshots) and whether
/// this node may vote — all it sees of the node.
#[derive(Debug)]
pub struct RaftService {
    raft: Raft,
    host: StateMachineHost,
    admission: Admission,
}

fn bad_message(error: &crate::error::DecodeError) -> Status {
    Status::invalid_argument(error.to_string())
}

fn fatal(error: &impl std::fmt::Display) -> Status {
    Status::unavailable(format!("raft stopped: {error}"))
}

impl RaftService {
    /// Answers a vote or pre-vote (`pre`), refused while this node is not admitted.
    async fn answer_vote(
        &self,
        request: Request<wire::VoteRequest>,
        pre: bool,
    ) -> Result<Response<wire::VoteResponse>, Status> {
        let request =
            pb::vote_request_from_pb(request.into_inner()).map_err(|e| bad_message(&e))?;
        if !self.admission.initialized() {
            // A member still waiting for `keel init` (or for the leader another member's
            // `Init` elected) refuses quietly, as a voter that saw a better candidate would:
            // a cluster that is forming is not an error worth a warning on every node.
            let refused =
                openraft::raft::VoteResponse::<TypeConfig>::new(request.vote, None, false);
            return Ok(Response::new((&refused).into()));
        }
        self.refuse_unadmitted()?;
        let response = if pre {
            self.raft.pre_vote(request).await
        } else {
            self.raft.vote(request).await
        };
        Ok(Response::new((&response.map_err(|e| fatal(&e))?).into()))
    }

    fn refuse_unadmitted(&self) -> Result<(), Status> {
        if self.admission.admitted() {
            Ok(())
        } else {
            Err(Status::failed_precondition(format!(
                "node {} (incarnation {:016x}) is not an admitted voter: its data directory is new or was wiped; it votes only after `keel repair` re-admits it",
                self.admission.node_id(),
                self.admission.incarnation()
            )))
        }
    }
}

#[tonic::async_trait]
impl RaftRpc for RaftService {
    async fn vote(
        &self,
        request: Request<wire::VoteRequest>,
    ) -> Result<Response<wire::VoteResponse>, Status> {
        self.answer_vote(request, false).await
    }

    async fn pre_vote(
        &self,
        request: Request<wire::VoteRequest>,
    ) -> Result<Response<wire::VoteResponse>, Status> {
        self.answer_vote(request, true).await
    }

    type StreamAppendStream =
        Pin<Box<dyn Stream<Item = Result<wire::AppendResponse, Status>> + Send>>;

    async fn stream_append(
        &self,
        request: Request<Streaming<wire::AppendRequest>>,
    ) -> Result<Response<Self::StreamAppendStream>, Status> {
        let node = self.admission.node_id();
        let input = request.into_inner().take_while(move |message| {
            let keep = match message {
                Ok(_) => true,
                Err(status) => {
                    tracing::debug!(node, %status, "replication stream ended");
                    false
                }
            };
            std::future::ready(keep)
        });
        let requests = input.filter_map(move |message| {
            let decoded = message.ok().and_then(|m| match pb::append_request_from_pb(m) {
                Ok(request) => Some(request),
                Err(error) => {
                    tracing::warn!(node, %error, "malformed append request dropped; the stream ends");
                    None
                }
            });
            std::future::ready(decoded)
        });
        let output = self
            .raft
            .stream_append(Box::pin(requests))
            .map(|result| match result {
                Ok(result) => Ok(pb::stream_result_to_pb(&result)),
                Err(error) => Err(fatal(&error)),
            });
        Ok(Response::new(Box::pin(output)))
    }

    async fn snapshot(
        &self,
        request: Request<Streaming<wire::SnapshotChunk>>,
    ) -> Result<Response<wire::SnapshotResponse>, Status> {
        let mut chunks = request.into_inner();
        let first = chunks
            .next()
            .await
            .ok_or_else(|| Status::invalid_argument("empty snapshot stream"))??;
        let Some(wire::snapshot_chunk::Payload::Meta(meta)) = first.payload else {
            return Err(Status::invalid_argument(
                "a snapshot stream starts with its metadata",
            ));
        };
        let vote: Vote = meta
            .vote
            .ok_or_else(|| Status::invalid_argument("snapshot without a vote"))?
            .into();
        let membership = pb::membership_from_pb(meta.last_membership.unwrap_or_default())
            .map_err(|e| bad_message(&e))?;
        let snapshot_meta = SnapshotMeta {
            last_log_id: meta.last_log_id.map(Into::into),
            last_membership: StoredMembership::new(
                meta.last_membership_log_id.map(Into::into),
                membership,
            ),
        };
        let path = self.host.snapshot_dir().temp_path("incoming");
        let received = receive_file(&path, &mut chunks, meta.size_bytes).await;
        if let Err(status) = received {
            let _ = tokio::fs::remove_file(&path).await;
            return Err(status);
        }
        let host = self.host.clone();
        let (checked_path, expected) = (path.clone(), snapshot_meta.last_log_id);
        let checked =
            tokio::task::spawn_blocking(move || host.check_incoming(&checked_path, expected))
                .await
                .map_err(|e| Status::internal(format!("checking the snapshot: {e}")))?;
        if let Err(error) = checked {
            tracing::warn!(%error, "refused a received snapshot");
            let _ = tokio::fs::remove_file(&path).await;
            return Err(Status::invalid_argument(format!(
                "snapshot refused: {error}"
            )));
        }
        let snapshot = Snapshot {
            meta: snapshot_meta,
            snapshot: SnapshotFile::received(path),
        };
        let response = self
            .raft
            .install_full_snapshot(vote, snapshot)
            .await
            .map_err(|e| fatal(&e))?;
        self.host.count_received_snapshot(meta.size_bytes);
        Ok(Response::new(wire::SnapshotResponse {
            vote: Some((&response.vote).into()),
        }))
    }

    async fn transfer_leader(
        &self,
        request: Request<wire::TransferLeaderRequest>,
    ) -> Result<Response<wire::Empty>, Status> {
        let request = request.into_inner();
        let from: Vote = request
            .from_leader
            .ok_or_else(|| Status::invalid_argument("no from_leader"))?
            .into();
        let request = openraft::raft::TransferLeaderRequest::new(
            from,
            request.to_node_id,
            request.last_log_id.map(Into::into),
        );
        match self
            .raft
            .handle_transfer_leader(request)
            .await
            .map_err(|e| fatal(&e))?
        {
            Ok(()) => Ok(Response::new(wire::Empty {})),
            Err(refused) => Err(Status::failed_precondition(format!(
                "leadership transfer refused: {refused}"
            ))),
        }
    }

    async fn read_index(
        &self,
        _request: Request<wire::Empty>,
    ) -> Result<Response<wire::ReadIndexResponse>, Status> {
        let read = self.raft.ensure_linearizable(ReadPolicy::ReadIndex).await;
        match read {
            Ok(read_log_id) => Ok(Response::new(wire::ReadIndexResponse {
                read_index: read_log_id.index(),
                has_read_index: true,
            })),
            Err(error) => Err(Status::unavailable(format!(
                "not a leader able to serve a read index: {error}"
            ))),
        }
    }
}

/// Writes the data chunks of a snapshot stream to `path` and syncs it; checks the size.
async fn receive_file(
    path: &std::path::Path,
    chunks: &mut Streaming<wire::SnapshotChunk>,
    size_bytes: u64,
) -> Result<(), Status> {
    let io_error =
        |e: std::io::Error| Status::internal(format!("writing snapshot {}: {e}", path.display()));
    let mut file = tokio::fs::File::create(path).await.map_err(io_error)?;
    let mut received = 0u64;
    while let Some(chunk) = chunks.next().await {
        let Some(wire::snapshot_chunk::Payload::Data(data)) = chunk?.payload else {
            return Err(Status::invalid_argument(
                "a snapshot stream carries one metadata chunk, then data",
            ));
        };
        received += data.len() as u64;
        if received > size_bytes {
            return Err(Status::invalid_argument(format!(
                "snapshot longer than its announced {size_bytes} bytes"
            )));
        }
        file.write_all(&data).await.map_err(io_error)?;
    }
    if received != size_bytes {
        return Err(Status::invalid_argument(format!(
            "snapshot of {received} bytes, {size_bytes} announced"
        )));
    }
    file.sync_all().await.map_err(io_error)
}
