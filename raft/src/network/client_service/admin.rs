//! Cluster administration on the client service: status, an idempotent `Init`, learners
//! checked before they are added (and waited for when asked), membership changes.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use openraft::ServerState;
use openraft::async_runtime::WatchReceiver;
use openraft::error::{ClientWriteError, RaftError};
use tonic::{Request, Response, Status};

use crate::cluster_identity::{ClusterIdentity, Commit, INCARNATION_BYTES};
use crate::pb::client as api;
use crate::protocols::{HOST_PROTOCOL, Protocols, lagging_member, member_status};
use crate::types::{ClientRequest, ClientResponse, NodeAddr, TypeConfig};
use crate::wire_error::{WriteErrorKind, status};

use super::ClientService;

/// How long the leader waits for a new learner's status before adding it.
const LEARNER_STATUS_TIMEOUT: Duration = Duration::from_secs(2);
/// How long a blocking `AddLearner` waits for the learner to catch up.
const LEARNER_CATCH_UP_TIMEOUT: Duration = Duration::from_secs(60);
/// How long `BuildSnapshot` waits for the snapshot it asked for.
const BUILD_SNAPSHOT_TIMEOUT: Duration = Duration::from_secs(600);

impl ClientService {
    pub(super) fn status_response(&self) -> api::StatusResponse {
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
            values_verified: self.shared.host.values().verified(),
            cluster_identity: self
                .shared
                .host
                .cluster_identity()
                .map(|committed| committed.identity.to_string())
                .unwrap_or_default(),
            host_protocol: HOST_PROTOCOL,
            application_protocol: self.shared.host.application_protocol(),
        }
    }

    /// Whether this node already holds a membership, and it is `members` as voters.
    ///
    /// # Errors
    /// `FailedPrecondition` when it holds another one: a clear refusal, never a second
    /// cluster.
    pub(super) fn holds_membership(
        &self,
        members: &BTreeMap<u64, NodeAddr>,
    ) -> Result<bool, Status> {
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
    pub(super) async fn check_learner(&self, id: u64, node: &NodeAddr) -> Result<(), Status> {
        let learner = member_status(&self.shared, id, node, LEARNER_STATUS_TIMEOUT)
            .await
            .map_err(|error| {
                status(
                    WriteErrorKind::Unavailable,
                    format!("{error}; nothing was proposed"),
                )
            })?;
        let addr = self.shared.network.address_of(id, node);
        if learner.node_id != id || learner.incarnation != node.incarnation {
            return Err(status(
                WriteErrorKind::Invalid,
                format!(
                    "{addr} is node {} with data directory incarnation {:016x}, not node {id} with {:016x}; nothing was proposed",
                    learner.node_id, learner.incarnation, node.incarnation
                ),
            ));
        }
        let own = Protocols::of(&self.shared);
        if let Some(behind) = own.unmet_by(&Protocols::reported(&learner)) {
            return Err(status(
                WriteErrorKind::Invalid,
                format!(
                    "node {id} runs an older build ({behind}): it would not apply what this cluster commits; upgrade it first; nothing was proposed"
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
    pub(super) async fn wait_caught_up(&self, id: u64, index: u64) -> Result<(), Status> {
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

    pub(super) fn membership_error(
        error: RaftError<TypeConfig, ClientWriteError<TypeConfig>>,
    ) -> Status {
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

    pub(super) async fn serve_init(
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

    /// Replaces the cluster's identity with the one requested (its name defaulting to the
    /// name in force) once every member's build applies replacements as this one does:
    /// proposes it, stamped with this node's clock, and answers what is in force after.
    pub(super) async fn serve_remint_identity(
        &self,
        request: Request<api::RemintIdentityRequest>,
    ) -> Result<Response<api::RemintIdentityResponse>, Status> {
        self.require_leader()?;
        let request = request.into_inner();
        let previous = self.shared.host.cluster_identity();
        let incarnation = request.incarnation.as_ref().try_into().map_err(|_| {
            Status::invalid_argument(format!(
                "an incarnation is {INCARNATION_BYTES} bytes, not {}",
                request.incarnation.len()
            ))
        })?;
        let name = match (&request.name, &previous) {
            (name, _) if !name.is_empty() => name.clone(),
            (_, Some(previous)) => previous.identity.name().to_owned(),
            (_, None) => self.shared.identity.cluster.clone(),
        };
        let identity = ClusterIdentity::new(&name, incarnation)
            .map_err(|error| Status::invalid_argument(error.to_string()))?;
        // A build that does not apply replacements (or whose application would not end the
        // old identity's dealings) must not be a member.
        if let Some(why) = lagging_member(&self.shared, Protocols::of(&self.shared)).await {
            return Err(status(
                WriteErrorKind::Unavailable,
                format!("the identity cannot be replaced yet: {why}; nothing was proposed"),
            ));
        }
        let proposal = ClientRequest {
            session: 0,
            seq: 0,
            command: identity.commit_command(Commit::Replace {
                stamp_ms: crate::clock::now_ms(),
            }),
        };
        let committed = match self.propose(proposal).await? {
            ClientResponse::ClusterIdentity(committed) => committed,
            other => {
                return Err(Status::internal(format!(
                    "an identity command was answered {other:?}"
                )));
            }
        };
        Ok(Response::new(api::RemintIdentityResponse {
            identity: committed.identity.to_string(),
            index: committed.index,
            previous: previous
                .filter(|previous| previous.identity != committed.identity)
                .map(|previous| previous.identity.to_string())
                .unwrap_or_default(),
        }))
    }

    /// Builds a snapshot covering at least what this node has applied; answers its index.
    pub(super) async fn serve_build_snapshot(
        &self,
    ) -> Result<Response<api::BuildSnapshotResponse>, Status> {
        let applied = self
            .shared
            .host
            .applied_state()
            .applied
            .map_or(0, |id| id.index);
        self.shared.raft.trigger().snapshot().await.map_err(|e| {
            status(
                WriteErrorKind::Unavailable,
                format!("this node cannot build a snapshot: {e}"),
            )
        })?;
        let metrics = self
            .shared
            .raft
            .wait(Some(BUILD_SNAPSHOT_TIMEOUT))
            .metrics(
                |metrics| metrics.snapshot.is_some_and(|s| s.index >= applied),
                "snapshot built",
            )
            .await
            .map_err(|e| {
                status(
                    WriteErrorKind::Unavailable,
                    format!("no snapshot covering index {applied} was built: {e}"),
                )
            })?;
        Ok(Response::new(api::BuildSnapshotResponse {
            snapshot_index: metrics.snapshot.map_or(applied, |s| s.index),
        }))
    }

    pub(super) async fn serve_add_learner(
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

    pub(super) async fn serve_change_membership(
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
