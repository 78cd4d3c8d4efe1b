//! Which log commands each member's build applies, and the survey a leader makes before
//! proposing a command that an older build would not apply (scheduler/REMOTE.md §16).
//!
//! A node reports two numbers in `Status`: [`HOST_PROTOCOL`], for the host's own commands,
//! and its application's ([`Application::protocol`](crate::application::Application::protocol)).
//! A build that does not know a command refuses it as malformed while the others apply it,
//! so their states part. Hence a leader proposes a command of a new protocol only once
//! every member, voter or learner, reports that protocol or a later one
//! ([`lagging_member`]), and a learner reporting less than its leader is not added. The
//! decision to propose is the leader's; applying never depends on it, so a newer build
//! replaying an older log applies it exactly as the older build did.

use std::fmt;
use std::time::Duration;

use openraft::async_runtime::WatchReceiver;
use tonic::Request;

use crate::node::NodeShared;
use crate::pb::client::{self as api, keel_log_client::KeelLogClient};
use crate::types::NodeAddr;

/// The host commands this build applies: 1 — the cluster identity command (`0xFD`) and its
/// replacements.
pub const HOST_PROTOCOL: u32 = 1;

/// How long a survey waits for each member's status.
const MEMBER_STATUS_TIMEOUT: Duration = Duration::from_secs(2);

/// The protocols a build applies (or a command needs).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Protocols {
    /// The host's ([`HOST_PROTOCOL`]).
    pub host: u32,
    /// The application's.
    pub application: u32,
}

impl Protocols {
    /// This node's.
    pub fn of(shared: &NodeShared) -> Self {
        Self {
            host: HOST_PROTOCOL,
            application: shared.host.application_protocol(),
        }
    }

    /// What a member's status reports.
    pub fn reported(status: &api::StatusResponse) -> Self {
        Self {
            host: status.host_protocol,
            application: status.application_protocol,
        }
    }

    /// What of `self` a build applying `other` lacks, in words; `None` if it applies all.
    pub fn unmet_by(&self, other: &Self) -> Option<String> {
        (other.host < self.host || other.application < self.application)
            .then(|| format!("it applies {other}, {self} needed"))
    }
}

impl fmt::Display for Protocols {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "host protocol {} and application protocol {}",
            self.host, self.application
        )
    }
}

/// The status of member `id` at `node`, within `timeout`.
///
/// # Errors
/// In words: the member's address unusable, or no answer.
pub async fn member_status(
    shared: &NodeShared,
    id: u64,
    node: &NodeAddr,
    timeout: Duration,
) -> Result<api::StatusResponse, String> {
    let addr = shared.network.address_of(id, node);
    let channel = shared
        .network
        .channel(id, &addr)
        .map_err(|error| format!("node {id}'s address {addr}: {error}"))?;
    let mut request = Request::new(api::StatusRequest {});
    request.set_timeout(timeout);
    KeelLogClient::new(channel)
        .status(request)
        .await
        .map(tonic::Response::into_inner)
        .map_err(|error| format!("node {id} does not answer at {addr} ({})", error.message()))
}

/// The first member (by id) whose build is not known to apply `needed`, and why; `None`
/// when every member of the membership this node holds reports it. Asks every other
/// member's status at once.
pub async fn lagging_member(shared: &NodeShared, needed: Protocols) -> Option<String> {
    let members: Vec<(u64, NodeAddr)> = shared
        .raft
        .metrics()
        .borrow_watched()
        .membership_config
        .membership()
        .nodes()
        .map(|(id, node)| (*id, node.clone()))
        .collect();
    let answers = futures::future::join_all(members.iter().map(|(id, node)| async move {
        let reported = if *id == shared.node_id {
            Ok(Protocols::of(shared))
        } else {
            member_status(shared, *id, node, MEMBER_STATUS_TIMEOUT)
                .await
                .map(|status| Protocols::reported(&status))
        };
        (*id, reported)
    }))
    .await;
    first_lagging(&answers, needed)
}

/// The first of `answers` (member id, what it reported or why it did not) that does not
/// meet `needed`, in words.
fn first_lagging(
    answers: &[(u64, Result<Protocols, String>)],
    needed: Protocols,
) -> Option<String> {
    if answers.is_empty() {
        return Some("this node holds no membership yet".to_owned());
    }
    answers.iter().find_map(|(id, reported)| match reported {
        Ok(reported) => needed
            .unmet_by(reported)
            .map(|behind| format!("node {id} runs an older build: {behind}")),
        Err(error) => Some(format!("{error}: its build is not known")),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const NEW: Protocols = Protocols {
        host: 1,
        application: 1,
    };

    #[test]
    fn every_member_must_report_what_is_needed() {
        let old = Protocols {
            host: 1,
            application: 0,
        };
        assert_eq!(first_lagging(&[(1, Ok(NEW)), (2, Ok(NEW))], NEW), None);
        assert_eq!(
            first_lagging(&[(1, Ok(NEW)), (2, Ok(old)), (3, Ok(NEW))], NEW).as_deref(),
            Some(
                "node 2 runs an older build: it applies host protocol 1 and application protocol 0, host protocol 1 and application protocol 1 needed"
            )
        );
        let down = first_lagging(
            &[(1, Ok(NEW)), (3, Err("node 3 does not answer".into()))],
            NEW,
        );
        assert_eq!(
            down.as_deref(),
            Some("node 3 does not answer: its build is not known"),
            "a member down is not known to be new"
        );
        assert!(
            first_lagging(&[], NEW).is_some(),
            "no membership, no survey"
        );
        let newer = Protocols {
            host: 2,
            application: 5,
        };
        assert_eq!(
            first_lagging(&[(1, Ok(newer))], NEW),
            None,
            "a newer build applies it"
        );
    }
}
