//! The state as snapshot format 5 (`KEELSCH5`) laid it out, read only to migrate it: every
//! workflow held whole, finished or not, in one map.

use std::collections::{BTreeMap, HashMap};

use rkyv::{Archive, Deserialize, Serialize};

use super::{FireRecord, Schedule, SchedulerState, TimerQueue, Workflow};

/// A format 5 state: [`SchedulerState`]'s fields before finished workflows were packed, in
/// order.
#[derive(Archive, Serialize, Deserialize, Debug)]
pub(crate) struct StateV5 {
    workflows: BTreeMap<String, Workflow>,
    timers: TimerQueue,
    named: HashMap<String, u64>,
    fired: HashMap<String, FireRecord>,
    schedules: BTreeMap<String, Schedule>,
    kinds: BTreeMap<String, String>,
    applied_index: u64,
}

impl StateV5 {
    /// The state in the current layout: finished workflows packed.
    pub(crate) fn upgrade(self) -> SchedulerState {
        SchedulerState::assemble(
            self.workflows,
            self.timers,
            self.named,
            self.fired,
            self.schedules,
            self.kinds,
            self.applied_index,
        )
    }
}
