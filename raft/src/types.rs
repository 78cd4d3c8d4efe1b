//! The Raft type configuration and the concrete openraft types keel-raft uses.
//!
//! Standard Raft leader ids (one leader per term), so a log id is `(term, index)` and fits
//! keel-log's record header as is.

use std::fmt;

use bytes::Bytes;

/// A node's id in the cluster.
pub type NodeId = u64;

/// Where a node listens for gRPC (both the raft service and the client service).
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash)]
pub struct NodeAddr {
    /// `host:port`.
    pub addr: String,
}

impl NodeAddr {
    /// A node address from `host:port`.
    pub fn new(addr: impl Into<String>) -> Self {
        Self { addr: addr.into() }
    }
}

impl fmt::Display for NodeAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.addr)
    }
}

/// A client write: an application command tagged for exactly-once application.
///
/// The state machine host remembers, per client, the last applied `seq` and its response;
/// a command whose `seq` is not above it is answered with the remembered response (or a
/// "stale sequence" error) instead of being applied again.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientRequest {
    /// The writer's id; 0 means "no deduplication".
    pub client_id: u64,
    /// The writer's sequence number, increasing per client.
    pub seq: u64,
    /// The application command's bytes.
    pub command: Bytes,
}

impl fmt::Display for ClientRequest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "request(client {}, seq {}, {} bytes)",
            self.client_id,
            self.seq,
            self.command.len()
        )
    }
}

/// What applying a [`ClientRequest`] produced.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ClientResponse {
    /// The application's answer (the first one, for a retried sequence).
    Applied(Bytes),
    /// The sequence is older than the client's last applied one, whose answer is gone.
    StaleSequence {
        /// The client's last applied sequence.
        last_applied_seq: u64,
    },
}

openraft::declare_raft_types!(
    /// Keel's Raft type configuration.
    pub TypeConfig:
        D = ClientRequest,
        R = ClientResponse,
        NodeId = NodeId,
        Node = NodeAddr,
        Term = u64,
        LeaderId = openraft::impls::leader_id_std::LeaderId<u64, NodeId>,
);

/// A Raft log id: `(term, index)`.
pub type LogId = openraft::LogId<CommittedLeaderId>;
/// The committed part of a leader id: its term.
pub type CommittedLeaderId = <LeaderId as openraft::vote::RaftLeaderId>::Committed;
/// A leader id: term and the node voted for.
pub type LeaderId = openraft::impls::leader_id_std::LeaderId<u64, NodeId>;
/// A vote.
pub type Vote = openraft::impls::Vote<LeaderId>;
/// A log entry.
pub type Entry = openraft::Entry<CommittedLeaderId, EntryPayload>;
/// A log entry's payload.
pub type EntryPayload = openraft::EntryPayload<ClientRequest, NodeId, NodeAddr>;
/// A cluster membership.
pub type Membership = openraft::Membership<NodeId, NodeAddr>;
/// A membership with the id of the entry that set it.
pub type StoredMembership = openraft::StoredMembership<CommittedLeaderId, NodeId, NodeAddr>;
/// Snapshot metadata.
pub type SnapshotMeta = openraft::SnapshotMeta<CommittedLeaderId, NodeId, NodeAddr>;
/// The openraft handle of a node.
pub type Raft = openraft::Raft<TypeConfig, crate::state_machine::StateMachineHost>;

/// A log id from its term and index.
pub fn log_id(term: u64, index: u64) -> LogId {
    openraft::LogId::new_term_index(term, index)
}
