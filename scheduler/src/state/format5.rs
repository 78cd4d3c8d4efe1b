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

#[cfg(test)]
mod tests {
    use keel_raft::application::AppliedAt;

    use super::*;
    use crate::command::{Value, WorkflowStatus};
    use crate::state::Inconsistency;

    /// A format 5 state whose finished workflow lacks its end stamp (inconsistent) is
    /// migrated without packing it, and the consistency check refuses it: a restore fails
    /// with the reason instead of the node panicking.
    #[test]
    fn a_finished_workflow_without_its_end_stamp_is_refused_not_packed() {
        let mut workflow = Workflow::new(
            "k".into(),
            "1".into(),
            Value::Inline(Vec::new()),
            None,
            0,
            AppliedAt { term: 1, index: 1 },
        );
        workflow.status = WorkflowStatus::Completed;
        let old = StateV5 {
            workflows: BTreeMap::from([("w".to_owned(), workflow)]),
            timers: TimerQueue::default(),
            named: HashMap::new(),
            fired: HashMap::new(),
            schedules: BTreeMap::new(),
            kinds: BTreeMap::new(),
            applied_index: 1,
        };
        let state = old.upgrade();
        assert_eq!(state.workflow_counts(), (1, 0));
        assert!(matches!(
            state.consistency(),
            Err(Inconsistency::Misplaced { workflow, .. }) if workflow == "w"
        ));
    }
}
