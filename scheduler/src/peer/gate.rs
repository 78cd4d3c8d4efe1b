//! The gate of calls between clusters (`scheduler/REMOTE.md` §16): a build that does not
//! know the remote commands would refuse them as malformed while the others apply them, so
//! a leader commits `RemoteEnabled` only once every member reports a build that applies
//! them, and no remote call is proposed before (`SchedulerMachine::proposable`); the callee
//! service answers `unavailable` until then. Once committed it stays: later leaders read it
//! from the state, so a member down later stalls nothing.

use std::time::Duration;

use keel_raft::node::NodeShared;
use keel_raft::protocols::{HOST_PROTOCOL, Protocols, lagging_member};

use crate::command::Command;
use crate::engine::proposer::Proposer;
use crate::machine::{APPLICATION_PROTOCOL, SchedulerMachine};

/// How long the leader waits before asking the members' builds again.
const SURVEY_PAUSE: Duration = Duration::from_millis(500);

/// What a member's build must apply before calls between clusters are enabled: the
/// identity commands and the remote commands.
pub(crate) const NEEDED: Protocols = Protocols {
    host: HOST_PROTOCOL,
    application: APPLICATION_PROTOCOL,
};

/// Enables calls between clusters as soon as every member's build applies them; ends once
/// they are enabled (the leader's task, aborted when its term ends).
pub(super) async fn enable(shared: NodeShared, proposer: Proposer, machine: SchedulerMachine) {
    let mut waiting_for = None;
    while !machine.read().remote().enabled() {
        if let Some(why) = lagging_member(&shared, NEEDED).await {
            if waiting_for.as_ref() != Some(&why) {
                tracing::info!(node = shared.node_id, %why, "calls between clusters wait for every member's build to apply them");
            }
            waiting_for = Some(why);
            tokio::time::sleep(SURVEY_PAUSE).await;
            continue;
        }
        match proposer.propose(Command::RemoteEnabled, None).await {
            Ok(_) => tracing::info!(node = shared.node_id, "calls between clusters enabled"),
            Err(error) => {
                tracing::debug!(node = shared.node_id, %error, "proposing RemoteEnabled");
                tokio::time::sleep(SURVEY_PAUSE).await;
            }
        }
    }
}
