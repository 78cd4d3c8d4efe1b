//! Cluster administration through the client: every node's status, forming a cluster,
//! learners and membership changes.

use std::collections::BTreeMap;
use std::time::Duration;

use crate::pb::client::{self as api};
use crate::wire_error::WriteErrorKind;

use super::{ClientError, KeelClient};

/// How long [`KeelClient::statuses`] waits for each node.
pub const STATUS_TIMEOUT: Duration = Duration::from_secs(2);

impl KeelClient {
    /// Status of every endpoint, asked all at once: `(address, status or error)`. A node
    /// that does not answer within [`STATUS_TIMEOUT`] (a stopped process still accepts
    /// connections) gets a deadline error.
    pub async fn statuses(&mut self) -> Vec<(String, Result<api::StatusResponse, ClientError>)> {
        let asked: Vec<_> = self
            .endpoints
            .clone()
            .into_iter()
            .map(|addr| {
                let client = self.channel(&addr);
                async move {
                    let status = match client {
                        Ok(mut client) => {
                            match tokio::time::timeout(
                                STATUS_TIMEOUT,
                                client.status(api::StatusRequest {}),
                            )
                            .await
                            {
                                Ok(answer) => answer
                                    .map(tonic::Response::into_inner)
                                    .map_err(ClientError::from),
                                Err(_) => Err(ClientError::Rpc(tonic::Status::deadline_exceeded(
                                    format!("no status from {addr} within {STATUS_TIMEOUT:?}"),
                                ))),
                            }
                        }
                        Err(error) => Err(error),
                    };
                    (addr, status)
                }
            })
            .collect();
        futures::future::join_all(asked).await
    }

    /// Forms a cluster of the nodes at `members` (`node id → address`): reads each node's
    /// incarnation from its status and initializes every one with the same membership.
    ///
    /// # Errors
    /// A member that does not answer, answers with another id, or refuses.
    pub async fn init(&mut self, members: &BTreeMap<u64, String>) -> Result<(), ClientError> {
        let mut init = api::InitRequest::default();
        for (id, addr) in members {
            let status = self
                .channel(addr)?
                .status(api::StatusRequest {})
                .await?
                .into_inner();
            if status.node_id != *id {
                return Err(ClientError::Refused {
                    kind: WriteErrorKind::Invalid,
                    message: format!("{addr} is node {}, not node {id}", status.node_id),
                });
            }
            init.members.insert(
                *id,
                api::InitMember {
                    addr: addr.clone(),
                    incarnation: status.incarnation,
                },
            );
        }
        for addr in members.values() {
            self.channel(addr)?.init(init.clone()).await?;
        }
        Ok(())
    }

    /// Adds the node at `addr` as a learner (its incarnation read from its status).
    ///
    /// # Errors
    /// The learner or the leader refusing.
    pub async fn add_learner(
        &mut self,
        node_id: u64,
        addr: &str,
        blocking: bool,
    ) -> Result<u64, ClientError> {
        let status = self
            .channel(addr)?
            .status(api::StatusRequest {})
            .await?
            .into_inner();
        if status.node_id != node_id {
            return Err(ClientError::Refused {
                kind: WriteErrorKind::Invalid,
                message: format!("{addr} is node {}, not node {node_id}", status.node_id),
            });
        }
        let request = api::AddLearnerRequest {
            node_id,
            addr: addr.to_owned(),
            blocking,
            incarnation: status.incarnation,
        };
        let response = self
            .on_leader(WriteErrorKind::is_safe_to_retry, |_, mut client| {
                let request = request.clone();
                async move {
                    client
                        .add_learner(request)
                        .await
                        .map(tonic::Response::into_inner)
                }
            })
            .await?;
        Ok(response.log_index)
    }

    /// Has the node at `addr` build a snapshot now; returns the index it covers.
    ///
    /// # Errors
    /// The node refusing or failing to build one.
    pub async fn build_snapshot(&mut self, addr: &str) -> Result<u64, ClientError> {
        let response = self
            .channel(addr)?
            .build_snapshot(api::BuildSnapshotRequest {})
            .await?
            .into_inner();
        Ok(response.snapshot_index)
    }

    /// Replaces the cluster's identity with a new incarnation, drawn here once (so a
    /// retried request replaces it once), named `name` or, if `None`, as the identity in
    /// force: for a cluster re-created from old data (scheduler/REMOTE.md §3). Returns the
    /// leader's answer: the identity in force after, its index and the one it replaced.
    ///
    /// # Errors
    /// No leader answering, the random source failing, or a name against the naming rule.
    /// (An answer to a repeated request names no previous identity: the first attempt
    /// replaced it.)
    pub async fn remint_identity(
        &mut self,
        name: Option<&str>,
    ) -> Result<api::RemintIdentityResponse, ClientError> {
        let incarnation = crate::cluster_identity::random_incarnation()
            .map_err(|error| ClientError::Rpc(tonic::Status::unavailable(error.to_string())))?;
        let request = api::RemintIdentityRequest {
            name: name.unwrap_or_default().to_owned(),
            incarnation: incarnation.to_vec().into(),
        };
        // The incarnation travels with the request, so even a request whose outcome is
        // unknown may be sent again: a repeat of the identity in force changes nothing.
        let retry = |kind: WriteErrorKind| {
            kind.is_safe_to_retry() || kind == WriteErrorKind::OutcomeUnknown
        };
        self.on_leader(retry, |_, mut client| {
            let request = request.clone();
            async move {
                client
                    .remint_identity(request)
                    .await
                    .map(tonic::Response::into_inner)
            }
        })
        .await
    }

    /// Replaces the voters with `voters`; `retain` keeps removed voters as learners.
    ///
    /// # Errors
    /// The leader refusing.
    pub async fn change_membership(
        &mut self,
        voters: &[u64],
        retain: bool,
    ) -> Result<u64, ClientError> {
        let request = api::ChangeMembershipRequest {
            voters: voters.to_vec(),
            retain,
        };
        let response = self
            .on_leader(WriteErrorKind::is_safe_to_retry, |_, mut client| {
                let request = request.clone();
                async move {
                    client
                        .change_membership(request)
                        .await
                        .map(tonic::Response::into_inner)
                }
            })
            .await?;
        Ok(response.log_index)
    }
}
