//! What a running node's services share: its identity, the Raft handle, the state machine
//! host, the plain log, the log store, the peer network and the metrics. A leaf module:
//! the services and [`crate::node`] both depend on it, and it on neither.

use std::net::SocketAddr;
use std::sync::Arc;

use openraft::ServerState;
use openraft::async_runtime::WatchReceiver;

use crate::identity::Identity;
use crate::log_store::LogStore;
use crate::metrics::NodeMetrics;
use crate::network::client::Network;
use crate::plain_log::PlainLog;
use crate::state_machine::StateMachineHost;
use crate::types::{NodeId, Raft};

/// Everything the services share.
#[derive(Debug, Clone)]
pub struct NodeShared {
    /// This node's id.
    pub node_id: NodeId,
    /// The data directory's identity.
    pub identity: Identity,
    /// The address the gRPC server listens at.
    pub addr: SocketAddr,
    /// The Raft handle.
    pub raft: Raft,
    /// The state machine host.
    pub host: StateMachineHost,
    /// The plain log application.
    pub log: PlainLog,
    /// The Raft log store.
    pub store: LogStore,
    /// Peer connections.
    pub network: Network,
    /// Metrics.
    pub metrics: Arc<NodeMetrics>,
    /// The session limit this node's registrations carry.
    pub sessions_max: u64,
}

impl NodeShared {
    /// A watch of this node's leadership.
    pub fn leader_watch(&self) -> LeaderWatch {
        LeaderWatch {
            node_id: self.node_id,
            metrics: self.raft.metrics(),
        }
    }

    /// The view of this node's admission the raft service needs.
    pub fn admission(&self) -> Admission {
        Admission {
            node_id: self.node_id,
            incarnation: self.identity.incarnation,
            raft: self.raft.clone(),
        }
    }

    /// Whether this node holds a membership (it was initialized, or a leader reached it).
    pub fn initialized(&self) -> bool {
        self.admission().initialized()
    }

    /// Whether the membership admits this node's data directory incarnation, so it may vote.
    pub fn admitted(&self) -> bool {
        self.admission().admitted()
    }

    /// The leader this node knows of, if any.
    pub fn leader_id(&self) -> Option<u64> {
        self.raft.metrics().borrow_watched().current_leader
    }
}

/// Whether a node may vote: its id and data directory incarnation against the membership
/// it holds. The raft service's whole view of the node besides the Raft handle.
#[derive(Debug, Clone)]
pub struct Admission {
    node_id: NodeId,
    incarnation: u64,
    raft: Raft,
}

impl Admission {
    /// This node's id.
    pub fn node_id(&self) -> NodeId {
        self.node_id
    }

    /// This node's data directory incarnation.
    pub fn incarnation(&self) -> u64 {
        self.incarnation
    }

    /// Whether this node holds a membership (it was initialized, or a leader reached it).
    pub fn initialized(&self) -> bool {
        let metrics = self.raft.metrics();
        let metrics = metrics.borrow_watched();
        metrics
            .membership_config
            .membership()
            .nodes()
            .next()
            .is_some()
    }

    /// Whether the membership admits this node's data directory incarnation, so it may vote.
    pub fn admitted(&self) -> bool {
        let metrics = self.raft.metrics();
        let metrics = metrics.borrow_watched();
        metrics
            .membership_config
            .membership()
            .get_node(&self.node_id)
            .is_some_and(|node| node.incarnation == self.incarnation)
    }
}

/// Watches whether this node leads, and in which term.
pub struct LeaderWatch {
    node_id: NodeId,
    metrics: openraft::type_config::alias::WatchReceiverOf<
        crate::types::TypeConfig,
        openraft::RaftMetrics<crate::types::TypeConfig>,
    >,
}

impl std::fmt::Debug for LeaderWatch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LeaderWatch")
            .field("node_id", &self.node_id)
            .field("leading", &self.leading())
            .finish_non_exhaustive()
    }
}

impl LeaderWatch {
    /// The term this node leads in, or `None` when it does not lead.
    pub fn leading(&self) -> Option<u64> {
        let metrics = self.metrics.borrow_watched();
        (metrics.state == ServerState::Leader && metrics.current_leader == Some(self.node_id))
            .then_some(metrics.current_term)
    }

    /// Waits for a change of Raft's state; `false` once Raft stopped.
    pub async fn changed(&mut self) -> bool {
        self.metrics.changed().await.is_ok()
    }
}
