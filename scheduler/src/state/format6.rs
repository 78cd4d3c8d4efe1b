//! The state as snapshot format 6 (`KEELSCH6`) laid it out, read only to migrate it: the
//! current layout without calls between clusters.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use rkyv::{Archive, Deserialize, Serialize};

use super::{FinishedWorkflow, FireRecord, Schedule, SchedulerState, TimerQueue, Workflow};

/// A format 6 state: [`SchedulerState`]'s fields before remote calls, in order.
#[derive(Archive, Serialize, Deserialize, Debug)]
pub(crate) struct StateV6 {
    workflows: BTreeMap<String, Workflow>,
    finished: BTreeMap<Arc<str>, FinishedWorkflow>,
    timers: TimerQueue,
    named: HashMap<String, u64>,
    fired: HashMap<String, FireRecord>,
    schedules: BTreeMap<String, Schedule>,
    kinds: BTreeMap<String, String>,
    applied_index: u64,
}

impl StateV6 {
    /// The state in the current layout: no remote calls.
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
            remote: super::RemoteState::default(),
        }
    }
}
