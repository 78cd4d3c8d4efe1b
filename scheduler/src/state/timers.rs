//! Durable timers, ordered by due time: workflow sleeps and signal timeouts, named timers,
//! and cron schedules' next occurrences.

use std::collections::{BTreeSet, HashMap};

use rkyv::{Archive, Deserialize, Serialize};

use super::Inconsistency;

/// What a timer's fire acts on.
#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
#[rkyv(attr(allow(missing_docs, reason = "rkyv's archived twin of a documented type")))]
pub enum TimerTarget {
    /// Resolves a workflow's journal entry (a sleep, or a signal wait's timeout).
    Entry {
        /// The workflow.
        workflow: String,
        /// The entry.
        seq: u32,
    },
    /// A named timer: its fire is recorded and delivered to watchers.
    Named {
        /// The timer's name.
        name: String,
        /// Delivered with the fire.
        payload: Vec<u8>,
    },
    /// A cron schedule's next occurrence.
    Schedule {
        /// The schedule's name.
        name: String,
    },
    /// An inbound remote call's record: its deadline, or its forget time.
    Inbound {
        /// The record's name (see `remote::inbound_name`).
        record: String,
        /// Whether it forgets the record (else it is the call's deadline).
        forget: bool,
    },
}

/// A pending timer.
#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
#[rkyv(attr(allow(missing_docs, reason = "rkyv's archived twin of a documented type")))]
pub struct Timer {
    /// Due time, ms since the Unix epoch.
    pub due_ms: u64,
    /// For a relative timer, its delay: a node also waits this long on its monotonic clock
    /// after applying the timer before it fires it.
    pub delay_ms: Option<u64>,
    /// What the fire acts on.
    pub target: TimerTarget,
}

/// All pending timers.
#[derive(Archive, Serialize, Deserialize, Debug, Clone, Default, PartialEq, Eq)]
#[rkyv(attr(allow(missing_docs, reason = "rkyv's archived twin of a documented type")))]
pub struct TimerQueue {
    by_due: BTreeSet<(u64, u64)>,
    timers: HashMap<u64, Timer>,
    next_id: u64,
}

impl TimerQueue {
    /// Adds `timer`; returns its id.
    pub fn insert(&mut self, timer: Timer) -> u64 {
        self.next_id += 1;
        let id = self.next_id;
        self.by_due.insert((timer.due_ms, id));
        self.timers.insert(id, timer);
        self.check();
        id
    }

    /// Removes timer `id` (fired or cancelled); `None` if it is not pending.
    ///
    /// # Panics
    /// If the due index lost the timer (a bug).
    pub fn remove(&mut self, id: u64) -> Option<Timer> {
        let timer = self.timers.remove(&id)?;
        let removed = self.by_due.remove(&(timer.due_ms, id));
        assert!(removed, "the due index holds every pending timer");
        self.check();
        Some(timer)
    }

    /// Timer `id`, if pending.
    pub fn get(&self, id: u64) -> Option<&Timer> {
        self.timers.get(&id)
    }

    /// Pending timers in due order: `(due ms, id)`.
    pub fn in_due_order(&self) -> impl Iterator<Item = (u64, u64)> + '_ {
        self.by_due.iter().copied()
    }

    /// How many timers are pending.
    pub fn len(&self) -> usize {
        self.timers.len()
    }

    /// Whether no timer is pending.
    pub fn is_empty(&self) -> bool {
        self.timers.is_empty()
    }

    fn check(&self) {
        debug_assert_eq!(self.by_due.len(), self.timers.len());
    }

    /// Checks that the due-order index holds exactly the pending timers at their due times,
    /// and that the next id is above every pending one and can still grow.
    ///
    /// # Errors
    /// The first difference found.
    pub(super) fn consistency(&self) -> Result<(), Inconsistency> {
        // Each index pair names a pending timer at its due time, so the pairs have distinct
        // ids; equal sizes then make the index and the map the same set of timers.
        for &(due_ms, timer) in &self.by_due {
            if self.timers.get(&timer).is_none_or(|t| t.due_ms != due_ms) {
                return Err(Inconsistency::DueIndex { timer });
            }
        }
        if let Some((&timer, _)) = self
            .timers
            .iter()
            .find(|(id, t)| !self.by_due.contains(&(t.due_ms, **id)))
        {
            return Err(Inconsistency::DueIndex { timer });
        }
        if let Some(&timer) = self.timers.keys().find(|&&id| id > self.next_id) {
            return Err(Inconsistency::TimerId {
                timer,
                next_id: self.next_id,
            });
        }
        if self.next_id == u64::MAX {
            return Err(Inconsistency::TimerIdsExhausted);
        }
        Ok(())
    }

    /// The parts, for tests that corrupt a queue on purpose.
    #[cfg(test)]
    pub(super) fn parts_mut(
        &mut self,
    ) -> (
        &mut BTreeSet<(u64, u64)>,
        &mut HashMap<u64, Timer>,
        &mut u64,
    ) {
        (&mut self.by_due, &mut self.timers, &mut self.next_id)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn named(due_ms: u64, name: &str) -> Timer {
        Timer {
            due_ms,
            delay_ms: None,
            target: TimerTarget::Named {
                name: name.into(),
                payload: Vec::new(),
            },
        }
    }

    #[test]
    fn timers_come_out_in_due_order_and_leave_once() {
        let mut queue = TimerQueue::default();
        let late = queue.insert(named(30, "late"));
        let early = queue.insert(named(10, "early"));
        let tie = queue.insert(named(10, "tie"));
        let order: Vec<u64> = queue.in_due_order().map(|(_, id)| id).collect();
        assert_eq!(order, [early, tie, late]);
        assert_eq!(queue.remove(early).map(|t| t.due_ms), Some(10));
        assert_eq!(queue.remove(early), None);
        assert_eq!(queue.len(), 2);
        assert!(queue.get(late).is_some());
    }
}
