//! The cross-references [`SchedulerState::apply`] and the node's readers rely on, checked
//! on a whole state: a snapshot from disk or a peer must pass them before it is served, so a
//! CRC-valid but inconsistent snapshot is refused instead of tripping an `expect` later.
//!
//! Each check names the code that relies on it:
//! - the due-order index equals the timer map (`TimerQueue::remove` asserts it, the timer
//!   driver `expect`s each listed id), and the next timer id is above every pending one
//!   and not exhausted (`TimerQueue::insert` would overwrite a pending timer, or overflow);
//! - fences are at most the last applied index (`claim` asserts a new grant is larger), and
//!   fire records' indexes too (their `(term, index)` is a token of a committed command),
//!   and the values a workflow references were recorded at or before it (the host's
//!   snapshot build refuses one from later, and a receiver could not have it);
//! - a running workflow has no finish time and a finished one has it; running and parked
//!   workflows are held whole and finished ones packed, each id once, and every packed
//!   record decodes into a finished workflow whose status and finish time are the ones kept
//!   beside it (`running` tells a finished id by its map, `expire` scans the finish times
//!   kept beside the records, and `unpack` `expect`s a record to decode);
//! - only signal waits time out (`step` and `fire` treat anything else as unreachable);
//! - each pending timer of a running workflow's entry targets that entry, and each entry
//!   timer targets a running workflow's pending sleep or signal wait holding it (`fire`
//!   `expect`s the entry and its kind);
//! - a running workflow's pending calls name running children `<id>/<seq>` that point back,
//!   and a running child's parent waits on it (`end` cascades cancels down these links;
//!   the naming bounds the depth);
//! - the name index and named timers point at each other, and a name is pending or fired,
//!   not both (`schedule_timer` and `named_timer` `expect` the indexed timer);
//! - each schedule holds exactly one pending timer that fires it, and each schedule timer's
//!   schedule holds it (`fire_schedule` `expect`s the schedule);
//! - calls between clusters: the invariants C1–C3 and E1–E3 of `scheduler/REMOTE.md`, in
//!   `remote::consistency` (the caller's and callee's commands `expect` the items, records,
//!   workflows and timers they name).

use super::{EntryKind, EntryState, SchedulerState, TimerTarget, Unpackable, Workflow};

/// A broken cross-reference in a scheduler state: a snapshot holding one is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum Inconsistency {
    /// A workflow references a value recorded after the state's last applied index.
    #[error(
        "workflow {workflow} references a value recorded at index {index}, after the state's applied index {applied_index}"
    )]
    ValueAhead {
        /// The workflow.
        workflow: String,
        /// Where the value was recorded.
        index: u64,
        /// The state's applied index.
        applied_index: u64,
    },
    /// A finished workflow's packed record does not decode or disagrees with what is kept
    /// beside it.
    #[error("finished workflow {workflow}: {reason}")]
    Unpackable {
        /// The workflow.
        workflow: String,
        /// What is wrong.
        reason: Unpackable,
    },
    /// A workflow held in the wrong place: finished among the running ones, or held both
    /// running and finished.
    #[error("workflow {workflow} is held as running, yet it {why}")]
    Misplaced {
        /// The workflow.
        workflow: String,
        /// What it is as well.
        why: &'static str,
    },
    /// A journal's fences go back, or past its workflow's fence.
    #[error("workflow {workflow}'s journal fences are not ordered up to its fence")]
    JournalFences {
        /// The workflow.
        workflow: String,
    },
    /// A journal longer than sequence numbers reach.
    #[error("workflow {workflow}'s journal has {len} entries, more than u32 sequence numbers")]
    JournalTooLong {
        /// The workflow.
        workflow: String,
        /// Its length.
        len: usize,
    },
    /// A fence that no applied command granted.
    #[error("workflow {workflow}'s fence {fence} is past the last applied index {applied_index}")]
    FenceAhead {
        /// The workflow.
        workflow: String,
        /// Its fence.
        fence: u64,
        /// The state's last applied index.
        applied_index: u64,
    },
    /// A status that disagrees with the finish time.
    #[error("workflow {workflow}'s status and finish time disagree")]
    FinishTime {
        /// The workflow.
        workflow: String,
    },
    /// A timed-out entry that is not a signal wait.
    #[error("entry {seq} of workflow {workflow} timed out but is not a signal wait")]
    TimedOut {
        /// The workflow.
        workflow: String,
        /// The entry.
        seq: u32,
    },
    /// A running workflow's pending entry holds a timer that does not target it.
    #[error("entry {seq} of running workflow {workflow} holds timer {timer}, not pending for it")]
    EntryTimer {
        /// The workflow.
        workflow: String,
        /// The entry.
        seq: u32,
        /// The timer it holds.
        timer: u64,
    },
    /// An entry timer whose target is not a running workflow's pending wait holding it.
    #[error("timer {timer} targets entry {seq} of {workflow}, which does not wait on it")]
    EntryTimerTarget {
        /// The timer.
        timer: u64,
        /// The workflow it targets.
        workflow: String,
        /// The entry it targets.
        seq: u32,
    },
    /// A running workflow's pending call whose child is not its running child.
    #[error("call {seq} of running workflow {workflow} is not pending on running child {child}")]
    CallLink {
        /// The calling workflow.
        workflow: String,
        /// The call entry.
        seq: u32,
        /// The child it names.
        child: String,
    },
    /// A running child whose parent does not wait on it.
    #[error("running workflow {workflow}'s parent {parent} does not wait on it at entry {seq}")]
    ParentLink {
        /// The child.
        workflow: String,
        /// The parent it names.
        parent: String,
        /// The parent's entry it names.
        seq: u32,
    },
    /// The name index points at a timer that is not that named timer.
    #[error("named timer {name:?} is indexed to timer {timer}, which is not its pending timer")]
    NamedIndex {
        /// The name.
        name: String,
        /// The indexed timer.
        timer: u64,
    },
    /// A named timer the name index does not point at.
    #[error("timer {timer} is named {name:?}, but the name index does not point at it")]
    NamedTimer {
        /// The timer.
        timer: u64,
        /// Its name.
        name: String,
    },
    /// A name both pending and fired.
    #[error("named timer {name:?} is both pending and fired")]
    NamedAndFired {
        /// The name.
        name: String,
    },
    /// A fire record from a command not applied yet.
    #[error("fire record {name:?} has index {index}, past the last applied index {applied_index}")]
    FireAhead {
        /// The timer's name.
        name: String,
        /// The record's index.
        index: u64,
        /// The state's last applied index.
        applied_index: u64,
    },
    /// A schedule whose timer is not pending for it.
    #[error("schedule {schedule:?} holds timer {timer}, which is not its pending timer")]
    ScheduleTimer {
        /// The schedule.
        schedule: String,
        /// The timer it holds.
        timer: u64,
    },
    /// A schedule timer whose schedule does not hold it.
    #[error("timer {timer} fires schedule {schedule:?}, which does not hold it")]
    ScheduleTarget {
        /// The timer.
        timer: u64,
        /// The schedule it names.
        schedule: String,
    },
    /// The due-order index and the timer map differ.
    #[error("the due-order index and the timers differ at timer {timer}")]
    DueIndex {
        /// A timer in one and not (or at another due time) in the other.
        timer: u64,
    },
    /// A pending timer at or past the next id, which a new timer would overwrite.
    #[error("pending timer {timer} is past the last id handed out, {next_id}")]
    TimerId {
        /// The timer.
        timer: u64,
        /// The last id handed out.
        next_id: u64,
    },
    /// No timer id is left to hand out.
    #[error("timer ids are exhausted")]
    TimerIdsExhausted,
    /// A call between clusters whose parts do not agree.
    #[error(transparent)]
    Remote(#[from] super::remote::RemoteInconsistency),
}

impl SchedulerState {
    /// Checks every cross-reference that applying commands to this state, and reading it,
    /// relies on (see the module docs): a restored snapshot must pass it before it is served.
    ///
    /// # Errors
    /// The first inconsistency found.
    pub fn consistency(&self) -> Result<(), Inconsistency> {
        self.timers.consistency()?;
        for (id, workflow) in &self.workflows {
            let why = if workflow.is_finished() {
                Some("finished")
            } else if self.finished.contains_key(id.as_str()) {
                Some("is held finished too")
            } else {
                None
            };
            if let Some(why) = why {
                return Err(Inconsistency::Misplaced {
                    workflow: id.clone(),
                    why,
                });
            }
            self.check_workflow(id, workflow)?;
        }
        for (id, finished) in &self.finished {
            let workflow = finished
                .check()
                .map_err(|reason| Inconsistency::Unpackable {
                    workflow: id.to_string(),
                    reason,
                })?;
            self.check_workflow(id, &workflow)?;
        }
        self.check_timer_targets()?;
        for (name, &timer) in &self.named {
            let named = self.timers.get(timer).is_some_and(
                |t| matches!(&t.target, TimerTarget::Named { name: n, .. } if n == name),
            );
            if !named {
                return Err(Inconsistency::NamedIndex {
                    name: name.clone(),
                    timer,
                });
            }
        }
        for (name, record) in &self.fired {
            if self.named.contains_key(name) {
                return Err(Inconsistency::NamedAndFired { name: name.clone() });
            }
            if record.index > self.applied_index {
                return Err(Inconsistency::FireAhead {
                    name: name.clone(),
                    index: record.index,
                    applied_index: self.applied_index,
                });
            }
        }
        self.check_remote()?;
        for (name, schedule) in &self.schedules {
            let fires_it = self.timers.get(schedule.timer).is_some_and(
                |t| matches!(&t.target, TimerTarget::Schedule { name: n } if n == name),
            );
            if !fires_it {
                return Err(Inconsistency::ScheduleTimer {
                    schedule: name.clone(),
                    timer: schedule.timer,
                });
            }
        }
        Ok(())
    }

    fn check_workflow(&self, id: &str, workflow: &Workflow) -> Result<(), Inconsistency> {
        let fences = workflow.journal.iter().map(|entry| entry.fence);
        if fences.clone().any(|fence| fence > workflow.fence)
            || fences.clone().zip(fences.skip(1)).any(|(a, b)| a > b)
        {
            return Err(Inconsistency::JournalFences {
                workflow: id.to_owned(),
            });
        }
        if workflow.fence > self.applied_index {
            return Err(Inconsistency::FenceAhead {
                workflow: id.to_owned(),
                fence: workflow.fence,
                applied_index: self.applied_index,
            });
        }
        if let Some(late) = workflow
            .recorded_values()
            .find(|at| at.index > self.applied_index)
        {
            return Err(Inconsistency::ValueAhead {
                workflow: id.to_owned(),
                index: late.index,
                applied_index: self.applied_index,
            });
        }
        if workflow.is_finished() != workflow.finished_ms.is_some() {
            return Err(Inconsistency::FinishTime {
                workflow: id.to_owned(),
            });
        }
        if u32::try_from(workflow.journal.len()).is_err() {
            return Err(Inconsistency::JournalTooLong {
                workflow: id.to_owned(),
                len: workflow.journal.len(),
            });
        }
        self.check_entries(id, workflow)?;
        self.check_parent(id, workflow)
    }

    /// Entry states, and a running workflow's pending entries' timers and children.
    fn check_entries(&self, id: &str, workflow: &Workflow) -> Result<(), Inconsistency> {
        for (seq, entry) in (0u32..).zip(&workflow.journal) {
            if entry.state == EntryState::TimedOut
                && !matches!(
                    entry.kind,
                    EntryKind::Signal { .. } | EntryKind::Remote { .. }
                )
            {
                return Err(Inconsistency::TimedOut {
                    workflow: id.to_owned(),
                    seq,
                });
            }
            if workflow.is_finished() || !matches!(entry.state, EntryState::Pending { .. }) {
                continue;
            }
            match &entry.kind {
                EntryKind::Sleep { timer }
                | EntryKind::Signal {
                    timer: Some(timer), ..
                } => {
                    let targets_it = self.timers.get(*timer).is_some_and(|t| {
                        matches!(&t.target, TimerTarget::Entry { workflow: w, seq: s }
                            if w == id && *s == seq)
                    });
                    if !targets_it {
                        return Err(Inconsistency::EntryTimer {
                            workflow: id.to_owned(),
                            seq,
                            timer: *timer,
                        });
                    }
                }
                EntryKind::Call { child, .. } => {
                    let linked = *child == format!("{id}/{seq}")
                        && self.workflows.get(child).is_some_and(|c| {
                            c.parent.as_ref().is_some_and(|(p, s)| p == id && *s == seq)
                        });
                    if !linked {
                        return Err(Inconsistency::CallLink {
                            workflow: id.to_owned(),
                            seq,
                            child: child.clone(),
                        });
                    }
                }
                EntryKind::Remote {
                    remote, seq: call, ..
                } => {
                    self.check_remote_entry(id, seq, remote, *call)?;
                }
                EntryKind::Step { .. } | EntryKind::Signal { timer: None, .. } => {}
            }
        }
        Ok(())
    }

    /// A running child's parent waits on it.
    fn check_parent(&self, id: &str, workflow: &Workflow) -> Result<(), Inconsistency> {
        if let (false, Some((parent, seq))) = (workflow.is_finished(), &workflow.parent) {
            let waits = self
                .workflows
                .get(parent)
                .and_then(|p| p.journal.get(*seq as usize))
                .is_some_and(|entry| {
                    matches!(&entry.kind, EntryKind::Call { child, .. } if child == id)
                        && matches!(entry.state, EntryState::Pending { .. })
                });
            if !waits {
                return Err(Inconsistency::ParentLink {
                    workflow: id.to_owned(),
                    parent: parent.clone(),
                    seq: *seq,
                });
            }
        }
        Ok(())
    }

    /// Whether entry `seq` of running workflow `workflow` is a pending sleep or signal wait
    /// holding timer `id`.
    fn entry_holds(&self, workflow: &str, seq: u32, id: u64) -> bool {
        self.workflows
            .get(workflow)
            .and_then(|w| w.journal.get(seq as usize))
            .is_some_and(|entry| {
                matches!(entry.state, EntryState::Pending { .. })
                    && matches!(entry.kind,
                        EntryKind::Sleep { timer } | EntryKind::Signal { timer: Some(timer), .. }
                        if timer == id)
            })
    }

    /// Each pending timer's target holds it.
    fn check_timer_targets(&self) -> Result<(), Inconsistency> {
        for (_, id) in self.timers.in_due_order() {
            let timer = self
                .timers
                .get(id)
                .expect("the due index was checked against the timers");
            let holds_it = match &timer.target {
                TimerTarget::Entry { workflow, seq } => {
                    self.entry_holds(workflow, *seq, id) || self.holds_deadline(workflow, *seq, id)
                }
                TimerTarget::Named { name, .. } => self.named.get(name) == Some(&id),
                TimerTarget::Schedule { name } => {
                    self.schedules.get(name).is_some_and(|s| s.timer == id)
                }
                TimerTarget::Inbound { record, forget } => self.inbound_holds(record, *forget, id),
            };
            if holds_it {
                continue;
            }
            return Err(match &timer.target {
                TimerTarget::Entry { workflow, seq } => Inconsistency::EntryTimerTarget {
                    timer: id,
                    workflow: workflow.clone(),
                    seq: *seq,
                },
                TimerTarget::Named { name, .. } => Inconsistency::NamedTimer {
                    timer: id,
                    name: name.clone(),
                },
                TimerTarget::Schedule { name } => Inconsistency::ScheduleTarget {
                    timer: id,
                    schedule: name.clone(),
                },
                TimerTarget::Inbound { record, .. } => {
                    Inconsistency::Remote(super::remote::RemoteInconsistency::new(
                        record,
                        format!("timer {id} is not held by its record"),
                    ))
                }
            });
        }
        Ok(())
    }
}
