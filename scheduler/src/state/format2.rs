//! The state as snapshot format 2 (`KEELSCH2`) laid it out, read only to migrate it: its
//! schedules held the expression alone (parsed again at each fire), and it did not record
//! the last applied index.

use std::collections::{BTreeMap, HashMap};

use rkyv::{Archive, Deserialize, Serialize};

use super::format4::{StateV4, WorkflowV4};
use super::{FireRecord, Schedule, TimerQueue, cron};

/// A format 2 schedule.
#[derive(Archive, Serialize, Deserialize, Debug)]
pub(crate) struct ScheduleV2 {
    cron: String,
    kind: String,
    input: Vec<u8>,
    timer: u64,
}

/// A format 2 state: the same fields as [`SchedulerState`] up to its schedules, in order.
#[derive(Archive, Serialize, Deserialize, Debug)]
pub(crate) struct StateV2 {
    workflows: BTreeMap<String, WorkflowV4>,
    timers: TimerQueue,
    named: HashMap<String, u64>,
    fired: HashMap<String, FireRecord>,
    schedules: BTreeMap<String, ScheduleV2>,
    kinds: BTreeMap<String, String>,
}

/// A format 2 schedule whose expression the parser refuses now.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("schedule {schedule:?} has cron expression {cron:?}, refused now: {reason}")]
pub struct CronRefused {
    /// The schedule.
    pub schedule: String,
    /// Its expression.
    pub cron: String,
    /// Why it is refused.
    pub reason: String,
}

impl StateV2 {
    /// The state in format 4's layout: each schedule's expression parsed, and the last
    /// applied index taken as the largest index the state holds (every fence and fire
    /// record's), as format 2 did not record it.
    ///
    /// # Errors
    /// The first schedule whose expression does not parse now.
    pub(crate) fn upgrade(self) -> Result<StateV4, CronRefused> {
        let mut schedules = BTreeMap::new();
        for (name, old) in self.schedules {
            let spec = cron::parse(&old.cron).map_err(|reason| CronRefused {
                schedule: name.clone(),
                cron: old.cron.clone(),
                reason,
            })?;
            let schedule = Schedule {
                cron: old.cron,
                spec,
                kind: old.kind,
                input: old.input,
                timer: old.timer,
            };
            schedules.insert(name, schedule);
        }
        let fences = self.workflows.values().map(|w| w.fence);
        let fires = self.fired.values().map(|r| r.index);
        Ok(StateV4 {
            applied_index: fences.chain(fires).max().unwrap_or(0),
            workflows: self.workflows,
            timers: self.timers,
            named: self.named,
            fired: self.fired,
            schedules,
            kinds: self.kinds,
        })
    }
}
