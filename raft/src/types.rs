//! The Raft type configuration and the concrete openraft types keel-raft uses.
//!
//! Standard Raft leader ids (one leader per term), so a log id is `(term, index)` and fits
//! keel-log's record header as is.

use std::fmt;

use bytes::Bytes;

/// A node's id in the cluster.
pub type NodeId = u64;

/// A member as the membership records it: where it listens for gRPC (the raft service and
/// the client service) and which incarnation of its data directory was admitted.
///
/// The incarnation is a random id a node draws when it creates its data directory. A node
/// grants votes only while the membership lists it with its own incarnation: a voter whose
/// directory was wiped (and so forgot its votes and log) is refused as a voter until an
/// operator re-admits it (`keel repair`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash)]
pub struct NodeAddr {
    /// `host:port`.
    pub addr: String,
    /// The admitted incarnation of the node's data directory.
    pub incarnation: u64,
}

impl NodeAddr {
    /// A member at `addr` with data directory incarnation `incarnation`.
    pub fn new(addr: impl Into<String>, incarnation: u64) -> Self {
        Self {
            addr: addr.into(),
            incarnation,
        }
    }
}

impl fmt::Display for NodeAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}#{:016x}", self.addr, self.incarnation)
    }
}

/// A client write: an application command tagged for exactly-once application.
///
/// The state machine host remembers, per session, the last applied `seq` and its response;
/// a command whose `seq` is not above it is answered with the remembered response (or a
/// "stale sequence" error) instead of being applied again, and a command of a session it
/// does not hold is refused (see [`crate::session`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientRequest {
    /// The writer's session, as the cluster assigned it; 0 means "no deduplication".
    pub session: u64,
    /// The writer's sequence number, increasing per session from 1.
    pub seq: u64,
    /// The application command's bytes.
    pub command: Bytes,
}

impl fmt::Display for ClientRequest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "request(session {}, seq {}, {} bytes)",
            self.session,
            self.seq,
            self.command.len()
        )
    }
}

/// What applying a [`ClientRequest`] produced.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ClientResponse {
    /// The application's answer (the first one, for a retried sequence).
    Applied {
        /// The answer.
        answer: Bytes,
        /// Raft index the command was applied at (the first time).
        index: u64,
    },
    /// The sequence is older than the session's last applied one, whose answer is gone.
    StaleSequence {
        /// The session's last applied sequence.
        last_applied_seq: u64,
    },
    /// The session is not registered, or expired: nothing was applied, and the fate of an
    /// earlier attempt of the same write cannot be learned any more.
    UnknownSession,
    /// A session was registered; its id.
    SessionRegistered {
        /// The new session's id (the index of the registering entry).
        session: u64,
    },
    /// A coalesced batch's answers, one per write, in order ([`crate::coalesce`]).
    Batch(Vec<ClientResponse>),
    /// An identity command was applied: the identity in force afterwards (the proposed one,
    /// unless another was committed first; [`crate::cluster_identity`]).
    ClusterIdentity(crate::cluster_identity::CommittedIdentity),
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

/// A snapshot: its metadata and its file.
pub type Snapshot =
    openraft::Snapshot<CommittedLeaderId, NodeId, NodeAddr, crate::snapshot::SnapshotFile>;
