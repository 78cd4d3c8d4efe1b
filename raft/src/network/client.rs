//! openraft's network on tonic: one lazily connected, reused channel per peer ([`KeelChannel`],
//! dialled over TLS with the node's own certificate when it has one).
//!
//! A peer's address comes from this node's own configuration when it names one (so a test
//! proxy can stand between two nodes), else from the membership. Replication is a bidi
//! stream (pipelined); a request whose entries exceed
//! [`crate::limits::REPLICATION_BATCH_MAX_BYTES`] is split into
//! chained messages, and only the last one's answer is reported back to openraft.

use std::collections::{HashMap, VecDeque};
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::{StreamExt, stream};
use openraft::base::{BoxFuture, BoxStream};
use openraft::error::{NetworkError, RPCError, ReplicationClosed, StreamingError, Unreachable};
use openraft::network::{
    Backoff, NetBackoff, NetSnapshot, NetStreamAppend, NetTransferLeader, NetVote, RPCOption,
};
use openraft::raft::{
    AppendEntriesRequest, SnapshotResponse, StreamAppendResult, TransferLeaderRequest,
    TransferLeaderResponse, VoteRequest, VoteResponse,
};
use openraft::{EntryPayload, OptionalSend, RaftNetworkFactory};
use tokio::io::AsyncReadExt;
use tonic::transport::Endpoint;

use crate::limits::{MESSAGE_MAX_BYTES, REPLICATION_BATCH_MAX_BYTES, SNAPSHOT_CHUNK_BYTES};
use crate::pb::raft::raft_client::RaftClient;
use crate::pb::{self, raft as wire};
use crate::security::credentials::{Connector, KeelChannel};
use crate::snapshot::SnapshotFile;
use crate::types::{Entry, NodeAddr, NodeId, Snapshot, TypeConfig, Vote};

/// How long connecting to a peer may take.
const CONNECT_TIMEOUT: Duration = Duration::from_millis(500);
/// Pause between retries to an unreachable peer.
const UNREACHABLE_BACKOFF: Duration = Duration::from_millis(100);

/// Makes peer connections; shared by all of a node's replication streams.
#[derive(Debug, Clone, Default)]
pub struct Network {
    /// Peer addresses from this node's configuration; they win over the membership's.
    overrides: Arc<HashMap<NodeId, String>>,
    /// How peers are dialled (TLS with this node's certificate, or plaintext).
    connector: Connector,
    /// One channel per `(peer, address)`.
    channels: Arc<Mutex<HashMap<(NodeId, String), KeelChannel>>>,
}

impl Network {
    /// A network dialling through `connector`, using `overrides` for the peers it names.
    pub fn new(overrides: HashMap<NodeId, String>, connector: Connector) -> Self {
        Self {
            overrides: Arc::new(overrides),
            connector,
            channels: Arc::default(),
        }
    }

    /// The address to reach `target` at.
    pub fn address_of(&self, target: NodeId, node: &NodeAddr) -> String {
        self.overrides
            .get(&target)
            .cloned()
            .unwrap_or_else(|| node.addr.clone())
    }

    /// The (shared, lazily connected) channel to `target`.
    ///
    /// # Errors
    /// tonic's error for an address that is not a valid URI authority.
    ///
    /// # Panics
    /// If the cache lock was poisoned by a panic while held.
    pub fn channel(
        &self,
        target: NodeId,
        addr: &str,
    ) -> Result<KeelChannel, tonic::transport::Error> {
        let mut channels = self.channels.lock().expect("channel cache lock poisoned");
        if let Some(channel) = channels.get(&(target, addr.to_owned())) {
            return Ok(channel.clone());
        }
        let channel = self.connector.channel(&endpoint(addr)?);
        channels.insert((target, addr.to_owned()), channel.clone());
        Ok(channel)
    }
}

/// The gRPC endpoint for `addr` (`host:port`), with Keel's timeouts.
///
/// # Errors
/// tonic's error for an address that is not a valid URI authority.
pub fn endpoint(addr: &str) -> Result<Endpoint, tonic::transport::Error> {
    Ok(Endpoint::from_shared(format!("http://{addr}"))?
        .connect_timeout(CONNECT_TIMEOUT)
        .tcp_nodelay(true)
        .http2_keep_alive_interval(Duration::from_secs(5))
        .keep_alive_timeout(Duration::from_secs(5)))
}

impl RaftNetworkFactory<TypeConfig> for Network {
    type Network = PeerClient;

    async fn new_client(&mut self, target: NodeId, node: &NodeAddr) -> PeerClient {
        let addr = self.address_of(target, node);
        let client = self.channel(target, &addr).map(|channel| {
            RaftClient::new(channel)
                .max_decoding_message_size(MESSAGE_MAX_BYTES)
                .max_encoding_message_size(MESSAGE_MAX_BYTES)
        });
        PeerClient {
            target,
            addr,
            client: client.map_err(|e| e.to_string()),
        }
    }
}

/// A connection to one peer.
#[derive(Debug)]
pub struct PeerClient {
    target: NodeId,
    addr: String,
    /// The client, or why the address is unusable.
    client: Result<RaftClient<KeelChannel>, String>,
}

#[derive(Debug, thiserror::Error)]
#[error("peer {target} at {addr}: {reason}")]
struct PeerError {
    target: NodeId,
    addr: String,
    reason: String,
}

impl PeerClient {
    fn client(&self) -> Result<RaftClient<KeelChannel>, RPCError<TypeConfig>> {
        self.client
            .clone()
            .map_err(|reason| RPCError::Unreachable(Unreachable::new(&self.error(reason))))
    }

    fn error(&self, reason: impl Into<String>) -> PeerError {
        PeerError {
            target: self.target,
            addr: self.addr.clone(),
            reason: reason.into(),
        }
    }

    fn rpc_error(&self, status: &tonic::Status) -> RPCError<TypeConfig> {
        let error = self.error(format!("{}: {}", status.code(), status.message()));
        if status.code() == tonic::Code::Unavailable {
            RPCError::Unreachable(Unreachable::new(&error))
        } else {
            RPCError::Network(NetworkError::new(&error))
        }
    }
}

fn entry_wire_bytes(entry: &Entry) -> usize {
    match &entry.payload {
        EntryPayload::Blank => 32,
        EntryPayload::Normal(request) => 48 + request.command.len(),
        EntryPayload::Membership(membership) => 64 + 64 * membership.nodes().count(),
    }
}

/// Splits one append request into messages of at most [`REPLICATION_BATCH_MAX_BYTES`] of
/// entries (at least one entry each), chained by `prev_log_id`. Each part but the last
/// carries a commit id no further than its own last entry.
fn split_by_bytes(request: &AppendEntriesRequest<TypeConfig>) -> Vec<wire::AppendRequest> {
    let mut parts = Vec::new();
    let mut start = 0;
    let mut prev = request.prev_log_id;
    while start < request.entries.len() || parts.is_empty() {
        let mut end = start;
        let mut bytes = 0;
        while end < request.entries.len()
            && (end == start
                || bytes + entry_wire_bytes(&request.entries[end]) <= REPLICATION_BATCH_MAX_BYTES)
        {
            bytes += entry_wire_bytes(&request.entries[end]);
            end += 1;
        }
        let chunk = &request.entries[start..end];
        let last = chunk.last().map(|e| e.log_id).or(prev);
        let commit = if end == request.entries.len() {
            request.leader_commit
        } else {
            request.leader_commit.min(last)
        };
        let part = AppendEntriesRequest {
            vote: request.vote,
            prev_log_id: prev,
            entries: Vec::new(),
            leader_commit: commit,
        };
        parts.push(pb::append_request_to_pb(&part, chunk));
        prev = last;
        start = end;
    }
    parts
}

impl NetStreamAppend<TypeConfig> for PeerClient {
    fn stream_append<'s, S>(
        &'s mut self,
        input: S,
        _option: RPCOption,
    ) -> BoxFuture<
        's,
        Result<
            BoxStream<'s, Result<StreamAppendResult<TypeConfig>, RPCError<TypeConfig>>>,
            RPCError<TypeConfig>,
        >,
    >
    where
        S: futures::Stream<Item = AppendEntriesRequest<TypeConfig>>
            + OptionalSend
            + Unpin
            + 'static,
    {
        Box::pin(async move {
            let mut client = self.client()?;
            // For each message sent: is it the last part of its openraft request?
            let last_parts: Arc<Mutex<VecDeque<bool>>> = Arc::default();
            let outgoing_parts = Arc::clone(&last_parts);
            let outgoing = input.flat_map(move |request| {
                let parts = split_by_bytes(&request);
                let mut queue = outgoing_parts.lock().expect("part queue lock poisoned");
                let count = parts.len();
                queue.extend((0..count).map(|i| i + 1 == count));
                stream::iter(parts)
            });
            let response = client
                .stream_append(outgoing)
                .await
                .map_err(|status| self.rpc_error(&status))?;
            let this: &'s PeerClient = self;
            let results = response.into_inner().filter_map(move |answer| {
                let last = last_parts
                    .lock()
                    .expect("part queue lock poisoned")
                    .pop_front()
                    .unwrap_or(true);
                let result = match answer {
                    Err(status) => Some(Err(this.rpc_error(&status))),
                    Ok(answer) => match pb::stream_result_from_pb(answer) {
                        Err(error) => Some(Err(RPCError::Network(NetworkError::new(&error)))),
                        Ok(Ok(_)) if !last => None,
                        Ok(result) => Some(Ok(result)),
                    },
                };
                std::future::ready(result)
            });
            Ok(Box::pin(results) as BoxStream<'s, _>)
        })
    }
}

impl PeerClient {
    /// A vote or pre-vote request (`pre`), answered within the RPC's hard deadline.
    async fn ask_vote(
        &mut self,
        rpc: &VoteRequest<TypeConfig>,
        option: &RPCOption,
        pre: bool,
    ) -> Result<VoteResponse<TypeConfig>, RPCError<TypeConfig>> {
        let mut request = tonic::Request::new(wire::VoteRequest::from(rpc));
        request.set_timeout(option.hard_ttl());
        let mut client = self.client()?;
        let response = if pre {
            client.pre_vote(request).await
        } else {
            client.vote(request).await
        };
        let response = response.map_err(|status| self.rpc_error(&status))?;
        pb::vote_response_from_pb(response.into_inner())
            .map_err(|e| RPCError::Network(NetworkError::new(&e)))
    }
}

impl NetVote<TypeConfig> for PeerClient {
    async fn vote(
        &mut self,
        rpc: VoteRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<VoteResponse<TypeConfig>, RPCError<TypeConfig>> {
        self.ask_vote(&rpc, &option, false).await
    }

    async fn pre_vote(
        &mut self,
        rpc: VoteRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<VoteResponse<TypeConfig>, RPCError<TypeConfig>> {
        self.ask_vote(&rpc, &option, true).await
    }
}

impl NetTransferLeader<TypeConfig> for PeerClient {
    async fn transfer_leader(
        &mut self,
        req: TransferLeaderRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<TransferLeaderResponse<TypeConfig>, RPCError<TypeConfig>> {
        let mut request = tonic::Request::new(wire::TransferLeaderRequest {
            from_leader: Some(req.from_leader().into()),
            to_node_id: *req.to_node_id(),
            last_log_id: req.last_log_id().map(Into::into),
        });
        request.set_timeout(option.hard_ttl());
        self.client()?
            .transfer_leader(request)
            .await
            .map_err(|status| self.rpc_error(&status))?;
        Ok(Ok(()))
    }
}

impl NetBackoff<TypeConfig> for PeerClient {
    fn backoff(&self) -> Option<Backoff> {
        Some(Backoff::new(std::iter::repeat(UNREACHABLE_BACKOFF)))
    }
}

impl NetSnapshot<TypeConfig> for PeerClient {
    type SnapshotData = SnapshotFile;

    async fn full_snapshot(
        &mut self,
        vote: Vote,
        snapshot: Snapshot,
        cancel: impl Future<Output = ReplicationClosed> + OptionalSend + 'static,
        _option: RPCOption,
    ) -> Result<SnapshotResponse<TypeConfig>, StreamingError<TypeConfig>> {
        let mut client = self.client()?;
        let source = snapshot.snapshot.clone();
        let transfer = tokio::task::spawn_blocking(move || source.transfer())
            .await
            .map_err(|e| StreamingError::Unreachable(Unreachable::new(&e)))?
            .map_err(|e| StreamingError::Unreachable(Unreachable::new(&e)))?;
        let file = tokio::fs::File::open(&transfer.path)
            .await
            .map_err(|e| StreamingError::Unreachable(Unreachable::new(&e)))?;
        let size_bytes = file
            .metadata()
            .await
            .map_err(|e| StreamingError::Unreachable(Unreachable::new(&e)))?
            .len();
        let meta = wire::SnapshotMeta {
            vote: Some((&vote).into()),
            last_log_id: snapshot.meta.last_log_id.as_ref().map(Into::into),
            last_membership_log_id: snapshot
                .meta
                .last_membership
                .log_id()
                .as_ref()
                .map(Into::into),
            last_membership: Some(pb::membership_to_pb(
                snapshot.meta.last_membership.membership(),
            )),
            size_bytes,
        };
        let first = stream::once(async move {
            wire::SnapshotChunk {
                payload: Some(wire::snapshot_chunk::Payload::Meta(meta)),
            }
        });
        let data = stream::unfold(Some(file), |file| async move {
            let mut file = file?;
            let mut buf = vec![0u8; SNAPSHOT_CHUNK_BYTES];
            match file.read(&mut buf).await {
                Ok(0) => None,
                Ok(n) => {
                    buf.truncate(n);
                    Some((
                        wire::SnapshotChunk {
                            payload: Some(wire::snapshot_chunk::Payload::Data(buf.into())),
                        },
                        Some(file),
                    ))
                }
                Err(error) => {
                    tracing::warn!(%error, "reading a snapshot to send failed");
                    None
                }
            }
        });
        let transfer = client.snapshot(first.chain(data));
        let response = tokio::select! {
            response = transfer => response.map_err(|status| StreamingError::Network(NetworkError::new(&self.error(status.message()))))?,
            closed = cancel => return Err(StreamingError::Closed(closed)),
        };
        let vote = response.into_inner().vote.ok_or_else(|| {
            StreamingError::Network(NetworkError::new(
                &self.error("snapshot response without a vote"),
            ))
        })?;
        Ok(SnapshotResponse::new(vote.into()))
    }
}

#[cfg(test)]
mod tests {
    use bytes::Bytes;

    use super::*;
    use crate::types::{ClientRequest, log_id};

    fn normal(index: u64, bytes: usize) -> Entry {
        Entry {
            log_id: log_id(3, index),
            payload: EntryPayload::Normal(ClientRequest {
                session: 1,
                seq: index,
                command: Bytes::from(vec![0u8; bytes]),
            }),
        }
    }

    #[test]
    fn large_requests_split_into_chained_messages_within_the_byte_bound() {
        let entries: Vec<Entry> = (10..20)
            .map(|i| normal(i, REPLICATION_BATCH_MAX_BYTES / 3))
            .collect();
        let request = AppendEntriesRequest {
            vote: Vote::new_committed(3, 1),
            prev_log_id: Some(log_id(3, 9)),
            entries,
            leader_commit: Some(log_id(3, 18)),
        };
        let parts = split_by_bytes(&request);
        assert!(parts.len() >= 4, "{} parts", parts.len());
        let mut prev = Some(wire::LogId { term: 3, index: 9 });
        let mut count = 0;
        for (i, part) in parts.iter().enumerate() {
            assert_eq!(
                part.prev_log_id, prev,
                "part {i} continues the previous one"
            );
            let bytes: usize = part
                .entries
                .iter()
                .map(|e| match &e.payload {
                    Some(wire::entry::Payload::Normal(n)) => n.command.len(),
                    _ => 0,
                })
                .sum();
            assert!(
                bytes <= REPLICATION_BATCH_MAX_BYTES,
                "part {i} holds {bytes} bytes"
            );
            let last = part.entries.last().and_then(|e| e.log_id);
            let commit = part.leader_commit.map(|c| c.index).unwrap_or_default();
            assert!(
                commit <= last.map_or(0, |l| l.index),
                "part {i} commits nothing past its own entries"
            );
            prev = last;
            count += part.entries.len();
        }
        assert_eq!(count, 10);
        assert_eq!(
            parts.last().and_then(|p| p.leader_commit),
            Some(wire::LogId { term: 3, index: 18 })
        );
    }

    #[test]
    fn a_heartbeat_and_a_single_huge_entry_each_make_one_message() {
        let heartbeat = AppendEntriesRequest {
            vote: Vote::new_committed(3, 1),
            prev_log_id: Some(log_id(3, 9)),
            entries: Vec::new(),
            leader_commit: Some(log_id(3, 9)),
        };
        assert_eq!(split_by_bytes(&heartbeat).len(), 1);
        let huge = AppendEntriesRequest {
            entries: vec![normal(10, REPLICATION_BATCH_MAX_BYTES * 2)],
            ..heartbeat
        };
        assert_eq!(split_by_bytes(&huge).len(), 1);
    }
}
