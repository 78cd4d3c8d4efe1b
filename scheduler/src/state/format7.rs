//! The state as snapshot format 7 (`KEELSCH7`) laid it out, read only to migrate it: the
//! current layout without the index of the last identity replacement and the index that
//! enabled calls between clusters.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use rkyv::{Archive, Deserialize, Serialize};

use super::remote::{Incoming, Outgoing};
use super::{
    FinishedWorkflow, FireRecord, RemoteState, Schedule, SchedulerState, TimerQueue, Workflow,
};

/// A format 7 state: [`SchedulerState`]'s fields before remints, in order.
#[derive(Archive, Serialize, Deserialize, Debug)]
pub(crate) struct StateV7 {
    workflows: BTreeMap<String, Workflow>,
    finished: BTreeMap<Arc<str>, FinishedWorkflow>,
    timers: TimerQueue,
    named: HashMap<String, u64>,
    fired: HashMap<String, FireRecord>,
    schedules: BTreeMap<String, Schedule>,
    kinds: BTreeMap<String, String>,
    applied_index: u64,
    remote: RemoteStateV7,
}

/// Format 7's remote state: [`RemoteState`] before remints.
#[derive(Archive, Serialize, Deserialize, Debug)]
struct RemoteStateV7 {
    outgoing: BTreeMap<String, Outgoing>,
    incoming: BTreeMap<String, Incoming>,
}

impl StateV7 {
    /// The state in the current layout: no identity replaced (format 7 builds could not
    /// replace one), and calls between clusters not enabled yet (the leader enables them
    /// once it sees every member's build apply them; until then new calls wait, and the
    /// callee answers its callers `unavailable`).
    pub(crate) fn upgrade(self) -> SchedulerState {
        SchedulerState {
            workflows: self.workflows,
            finished: self.finished,
            timers: self.timers,
            named: self.named,
            fired: self.fired,
            schedules: self.schedules,
            kinds: self.kinds,
            applied_index: self.applied_index,
            remote: RemoteState {
                outgoing: self.remote.outgoing,
                incoming: self.remote.incoming,
                replaced_at: 0,
                enabled_at: 0,
            },
        }
    }
}
