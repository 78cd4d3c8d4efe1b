//! The scheduler's replicated state and its deterministic transition function.
//!
//! [`SchedulerState::apply`] takes a stamped command and returns the answer, plus the local
//! [`Effect`]s the node acts on (waking a suspended workflow, arming a timer, starting a
//! run). It reads no clock and does no I/O: time comes from the command's stamp, so every
//! replica that applies the same commands reaches the same state and the same answers.
//!
//! Rules it enforces, identically everywhere:
//! - a journal command must carry the workflow's current fence (a stale run is refused),
//!   and names its entry by sequence number: entries are appended in order, an existing
//!   entry must be the same operation (else non-determinism), and a step's first outcome
//!   wins;
//! - a timer fires at most once, and never before its due time by the stamp of the fire.

mod consistency;
mod cron;
pub(crate) mod format2;
mod timers;
mod workflow;

use std::collections::{BTreeMap, HashMap};

use keel_raft::application::AppliedAt;
use rkyv::{Archive, Deserialize, Serialize};

pub use self::consistency::Inconsistency;
pub use self::cron::{CronSpec, DayRule, Schedule};
pub use self::format2::CronRefused;
pub use self::timers::{Timer, TimerQueue, TimerTarget};
pub use self::workflow::{EntryKind, JournalEntry, Workflow};
use crate::command::{
    Answer, Command, Due, EntryState, Outcome, Owner, Rejection, Stamped, StepRecord,
    WorkflowStatus,
};
use crate::limits::{NAME_MAX_BYTES, PAYLOAD_MAX_BYTES, SIGNALS_BUFFERED_MAX};
use crate::mono::MonoStamp;

/// Longest `@<due ms>` suffix of a scheduled workflow's id.
const SCHEDULE_SUFFIX_MAX: usize = 21;

/// A named timer's committed fire: the fence token its effects carry.
#[derive(Archive, Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq)]
#[rkyv(attr(allow(missing_docs, reason = "rkyv's archived twin of a documented type")))]
pub struct FireRecord {
    /// The timer's id.
    pub id: u64,
    /// The fire command's term.
    pub term: u64,
    /// The fire command's index.
    pub index: u64,
    /// When the timer was due.
    pub due_ms: u64,
    /// The fire command's stamp.
    pub fired_ms: u64,
}

/// What a node does after applying a command (not replicated; derived from the state).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Effect {
    /// A run of `workflow` under `fence` may start (a new workflow, or a claim), granted
    /// by a command of `term` to `owner` (`None`: the leader of that term).
    Runnable {
        /// The workflow.
        workflow: String,
        /// The fence granted.
        fence: u64,
        /// The granting command's term.
        term: u64,
        /// Who the fence was granted to.
        owner: Option<Owner>,
    },
    /// Something a run of `workflow` may wait for changed (an entry resolved, a claim).
    Changed {
        /// The workflow.
        workflow: String,
    },
    /// `workflow` finished.
    Finished {
        /// The workflow.
        workflow: String,
    },
    /// A timer was scheduled; for a relative one the node starts its monotonic wait from
    /// the proposing leader's reading if it took it, else now.
    TimerAdded {
        /// The timer.
        id: u64,
        /// Whether it is relative.
        relative: bool,
        /// The proposer's monotonic reading.
        proposed: Option<MonoStamp>,
        /// The proposer's wall clock (a command stamped before this node started is being
        /// replayed: its wait counts from the restart).
        stamp_ms: u64,
    },
    /// A timer left the queue (fired or cancelled).
    TimerRemoved {
        /// The timer.
        id: u64,
    },
    /// A named timer fired.
    NamedFired {
        /// Its name.
        name: String,
        /// Its payload.
        payload: Vec<u8>,
        /// The fire's record.
        record: FireRecord,
    },
}

/// Everything the scheduler replicates.
#[derive(Archive, Serialize, Deserialize, Debug, Clone, Default, PartialEq, Eq)]
#[rkyv(attr(allow(missing_docs, reason = "rkyv's archived twin of a documented type")))]
pub struct SchedulerState {
    workflows: BTreeMap<String, Workflow>,
    timers: TimerQueue,
    /// Pending named timers by name.
    named: HashMap<String, u64>,
    /// Fired named timers by name, until they expire.
    fired: HashMap<String, FireRecord>,
    schedules: BTreeMap<String, Schedule>,
    /// Declared workflow kinds and their code version markers.
    kinds: BTreeMap<String, String>,
    /// The highest index of a command applied to this state: every fence and fire record
    /// is at most this (a restored snapshot is checked against it).
    applied_index: u64,
}

/// The command being applied: where, when, and the effects it produces.
struct Apply<'a> {
    at: AppliedAt,
    stamp_ms: u64,
    mono: Option<MonoStamp>,
    effects: &'a mut Vec<Effect>,
}

fn check_name(what: &str, name: &str) -> Result<(), Rejection> {
    if name.is_empty() {
        return Err(Rejection::Invalid {
            what: what.to_owned(),
            reason: "must not be empty".to_owned(),
        });
    }
    check_len(what, name.len(), NAME_MAX_BYTES)
}

fn check_len(what: &str, len: usize, max: usize) -> Result<(), Rejection> {
    if len > max {
        return Err(Rejection::TooLarge {
            what: what.to_owned(),
            len: len as u64,
            max: max as u64,
        });
    }
    Ok(())
}

fn check_outcome(outcome: &Outcome) -> Result<(), Rejection> {
    match outcome {
        Outcome::Ok(value) => check_len("a result", value.len(), PAYLOAD_MAX_BYTES),
        Outcome::Err(message) => check_len("an error message", message.len(), PAYLOAD_MAX_BYTES),
    }
}

fn due_ms(stamp_ms: u64, due: Due) -> (u64, Option<u64>) {
    match due {
        Due::After { delay_ms } => (stamp_ms.saturating_add(delay_ms), Some(delay_ms)),
        Due::At { at_ms } => (at_ms, None),
    }
}

impl SchedulerState {
    /// Applies `stamped`, committed at `at`; returns the answer and pushes the effects.
    pub fn apply(&mut self, at: AppliedAt, stamped: Stamped, effects: &mut Vec<Effect>) -> Answer {
        self.applied_index = self.applied_index.max(at.index);
        let mut apply = Apply {
            at,
            stamp_ms: stamped.stamp_ms,
            mono: stamped.mono,
            effects,
        };
        let answer = self
            .dispatch(&mut apply, stamped.command)
            .unwrap_or_else(Answer::Rejected);
        self.check_invariants();
        answer
    }

    fn dispatch(&mut self, apply: &mut Apply<'_>, command: Command) -> Result<Answer, Rejection> {
        match command {
            Command::DeclareKinds { kinds } => self.declare_kinds(kinds),
            Command::Start { id, kind, input } => self.start(apply, id, kind, input),
            Command::Claim { workflow, owner } => self.claim(apply, &workflow, owner),
            Command::Step {
                workflow,
                fence,
                seq,
                name,
                record,
            } => self.step(&workflow, fence, seq, name, record),
            Command::Sleep {
                workflow,
                fence,
                seq,
                due,
            } => self.sleep(apply, &workflow, fence, seq, due),
            Command::WaitSignal {
                workflow,
                fence,
                seq,
                signal,
                timeout_ms,
            } => self.wait_signal(apply, &workflow, fence, seq, signal, timeout_ms),
            Command::Call {
                workflow,
                fence,
                seq,
                kind,
                input,
            } => self.call(apply, &workflow, fence, seq, kind, input),
            Command::Finish {
                workflow,
                fence,
                outcome,
            } => self.finish(apply, &workflow, fence, outcome),
            Command::Signal {
                workflow,
                signal,
                payload,
            } => self.signal(apply, &workflow, signal, payload),
            Command::Cancel { workflow, reason } => self.cancel(apply, &workflow, &reason),
            Command::ScheduleTimer { name, due, payload } => {
                self.schedule_timer(apply, name, due, payload)
            }
            Command::FireTimers { ids } => Ok(self.fire_timers(apply, &ids)),
            Command::RegisterSchedule {
                name,
                cron,
                kind,
                input,
            } => self.register_schedule(apply, name, cron, kind, input),
            Command::Expire { retention_ms } => Ok(self.expire(apply, retention_ms)),
        }
    }

    fn declare_kinds(&mut self, kinds: Vec<(String, String)>) -> Result<Answer, Rejection> {
        for (kind, version) in &kinds {
            check_name("workflow kind", kind)?;
            check_len("version marker", version.len(), NAME_MAX_BYTES)?;
        }
        self.kinds.extend(kinds);
        Ok(Answer::Done)
    }

    fn version_of(&self, kind: &str) -> Result<String, Rejection> {
        self.kinds
            .get(kind)
            .cloned()
            .ok_or_else(|| Rejection::UnknownKind(kind.to_owned()))
    }

    fn start(
        &mut self,
        apply: &mut Apply<'_>,
        id: String,
        kind: String,
        input: Vec<u8>,
    ) -> Result<Answer, Rejection> {
        check_name("workflow id", &id)?;
        if id.contains('/') {
            return Err(Rejection::Invalid {
                what: "workflow id".to_owned(),
                reason: "'/' is reserved for child workflows' ids".to_owned(),
            });
        }
        if let Some(existing) = self.workflows.get(&id) {
            return Ok(Answer::Started {
                fence: existing.fence,
                created: false,
                status: existing.status,
            });
        }
        check_len("workflow input", input.len(), PAYLOAD_MAX_BYTES)?;
        let version = self.version_of(&kind)?;
        let workflow = Workflow::new(kind, version, input, None, apply.stamp_ms, apply.at);
        let fence = workflow.fence;
        apply.effects.push(Effect::Runnable {
            workflow: id.clone(),
            fence,
            term: apply.at.term,
            owner: None,
        });
        self.workflows.insert(id, workflow);
        Ok(Answer::Started {
            fence,
            created: true,
            status: WorkflowStatus::Running,
        })
    }

    fn running(&mut self, id: &str) -> Result<&mut Workflow, Rejection> {
        let workflow = self
            .workflows
            .get_mut(id)
            .ok_or_else(|| Rejection::UnknownWorkflow(id.to_owned()))?;
        if workflow.is_finished() {
            return Err(Rejection::Finished(workflow.status));
        }
        Ok(workflow)
    }

    /// The running workflow `id`, if `fence` is its current fence.
    fn fenced(&mut self, id: &str, fence: u64) -> Result<&mut Workflow, Rejection> {
        let workflow = self.running(id)?;
        if workflow.fence != fence {
            return Err(Rejection::StaleFence {
                fence,
                current: workflow.fence,
            });
        }
        Ok(workflow)
    }

    fn claim(
        &mut self,
        apply: &mut Apply<'_>,
        id: &str,
        owner: Owner,
    ) -> Result<Answer, Rejection> {
        let workflow = self.running(id)?;
        assert!(
            apply.at.index > workflow.fence,
            "fences are Raft indexes: a later grant is larger"
        );
        workflow.fence = apply.at.index;
        workflow.granted_term = apply.at.term;
        workflow.owner = Some(owner);
        let fence = workflow.fence;
        apply.effects.push(Effect::Runnable {
            workflow: id.to_owned(),
            fence,
            term: apply.at.term,
            owner: Some(owner),
        });
        apply.effects.push(Effect::Changed {
            workflow: id.to_owned(),
        });
        Ok(Answer::Claimed { fence })
    }

    fn step(
        &mut self,
        id: &str,
        fence: u64,
        seq: u32,
        name: String,
        record: StepRecord,
    ) -> Result<Answer, Rejection> {
        check_name("step name", &name)?;
        match &record {
            StepRecord::Done(outcome) => check_outcome(outcome)?,
            StepRecord::AttemptFailed { error, .. } => {
                check_len("an error message", error.len(), PAYLOAD_MAX_BYTES)?;
            }
        }
        let workflow = self.fenced(id, fence)?;
        let kind = EntryKind::Step { name };
        let Some(entry) = existing_entry(workflow, seq, &kind)? else {
            let state = match record {
                StepRecord::Done(outcome) => EntryState::Done(outcome),
                StepRecord::AttemptFailed { attempt, .. } => {
                    EntryState::Pending { attempts: attempt }
                }
            };
            workflow.journal.push(JournalEntry {
                kind,
                state: state.clone(),
                fence,
            });
            return Ok(Answer::Entry(state));
        };
        match (&mut entry.state, record) {
            (EntryState::Pending { .. }, StepRecord::Done(outcome)) => {
                entry.state = EntryState::Done(outcome);
            }
            (EntryState::Pending { attempts }, StepRecord::AttemptFailed { attempt, .. }) => {
                *attempts = (*attempts).max(attempt);
            }
            (EntryState::Done(outcome), _) => {
                return Err(Rejection::AlreadyRecorded {
                    seq,
                    outcome: outcome.clone(),
                });
            }
            (EntryState::TimedOut, _) => unreachable!("only signal waits time out"),
        }
        Ok(Answer::Entry(entry.state.clone()))
    }

    fn sleep(
        &mut self,
        apply: &mut Apply<'_>,
        id: &str,
        fence: u64,
        seq: u32,
        due: Due,
    ) -> Result<Answer, Rejection> {
        let workflow = self.fenced(id, fence)?;
        if let Some(entry) = existing_entry(workflow, seq, &EntryKind::Sleep { timer: 0 })? {
            return Ok(Answer::Entry(entry.state.clone()));
        }
        let timer = self.add_timer(
            apply,
            due,
            TimerTarget::Entry {
                workflow: id.to_owned(),
                seq,
            },
        );
        self.running(id)?.journal.push(JournalEntry {
            kind: EntryKind::Sleep { timer },
            state: EntryState::Pending { attempts: 0 },
            fence,
        });
        Ok(Answer::Entry(EntryState::Pending { attempts: 0 }))
    }

    fn add_timer(&mut self, apply: &mut Apply<'_>, due: Due, target: TimerTarget) -> u64 {
        let (due_ms, delay_ms) = due_ms(apply.stamp_ms, due);
        let id = self.timers.insert(Timer {
            due_ms,
            delay_ms,
            target,
        });
        apply.effects.push(Effect::TimerAdded {
            id,
            relative: delay_ms.is_some(),
            proposed: apply.mono,
            stamp_ms: apply.stamp_ms,
        });
        id
    }

    fn remove_timer(&mut self, apply: &mut Apply<'_>, id: u64) -> Option<Timer> {
        let timer = self.timers.remove(id)?;
        apply.effects.push(Effect::TimerRemoved { id });
        Some(timer)
    }

    fn wait_signal(
        &mut self,
        apply: &mut Apply<'_>,
        id: &str,
        fence: u64,
        seq: u32,
        signal: String,
        timeout_ms: Option<u64>,
    ) -> Result<Answer, Rejection> {
        check_name("signal name", &signal)?;
        let workflow = self.fenced(id, fence)?;
        let kind = EntryKind::Signal {
            name: signal.clone(),
            timer: None,
        };
        if let Some(entry) = existing_entry(workflow, seq, &kind)? {
            return Ok(Answer::Entry(entry.state.clone()));
        }
        let buffered = workflow
            .signals
            .get_mut(&signal)
            .and_then(|queue| (!queue.is_empty()).then(|| queue.remove(0)));
        if workflow.signals.get(&signal).is_some_and(Vec::is_empty) {
            workflow.signals.remove(&signal);
        }
        if let Some(payload) = buffered {
            let state = EntryState::Done(Outcome::Ok(payload));
            workflow.journal.push(JournalEntry {
                kind,
                state: state.clone(),
                fence,
            });
            return Ok(Answer::Entry(state));
        }
        let timer = timeout_ms.map(|delay_ms| {
            self.add_timer(
                apply,
                Due::After { delay_ms },
                TimerTarget::Entry {
                    workflow: id.to_owned(),
                    seq,
                },
            )
        });
        self.running(id)?.journal.push(JournalEntry {
            kind: EntryKind::Signal {
                name: signal,
                timer,
            },
            state: EntryState::Pending { attempts: 0 },
            fence,
        });
        Ok(Answer::Entry(EntryState::Pending { attempts: 0 }))
    }

    fn call(
        &mut self,
        apply: &mut Apply<'_>,
        id: &str,
        fence: u64,
        seq: u32,
        kind: String,
        input: Vec<u8>,
    ) -> Result<Answer, Rejection> {
        check_len("child input", input.len(), PAYLOAD_MAX_BYTES)?;
        let child = format!("{id}/{seq}");
        let entry_kind = EntryKind::Call {
            child: child.clone(),
            kind: kind.clone(),
        };
        if let Some(entry) = existing_entry(self.fenced(id, fence)?, seq, &entry_kind)? {
            return Ok(Answer::Entry(entry.state.clone()));
        }
        let version = self.version_of(&kind)?;
        check_len("workflow id", child.len(), NAME_MAX_BYTES)?;
        if self.workflows.contains_key(&child) {
            // A finished child of an earlier workflow of this id, not expired yet.
            return Err(Rejection::Invalid {
                what: "child workflow id".to_owned(),
                reason: format!("{child} still exists; retry after it expires"),
            });
        }
        let workflow = Workflow::new(
            kind,
            version,
            input,
            Some((id.to_owned(), seq)),
            apply.stamp_ms,
            apply.at,
        );
        apply.effects.push(Effect::Runnable {
            workflow: child.clone(),
            fence: workflow.fence,
            term: apply.at.term,
            owner: None,
        });
        self.workflows.insert(child, workflow);
        self.running(id)?.journal.push(JournalEntry {
            kind: entry_kind,
            state: EntryState::Pending { attempts: 0 },
            fence,
        });
        Ok(Answer::Entry(EntryState::Pending { attempts: 0 }))
    }

    fn finish(
        &mut self,
        apply: &mut Apply<'_>,
        id: &str,
        fence: u64,
        outcome: Outcome,
    ) -> Result<Answer, Rejection> {
        check_outcome(&outcome)?;
        self.fenced(id, fence)?;
        let status = match outcome {
            Outcome::Ok(_) => WorkflowStatus::Completed,
            Outcome::Err(_) => WorkflowStatus::Failed,
        };
        self.end(apply, id, status, outcome);
        Ok(Answer::Done)
    }

    /// Ends the running workflow `id`: cancels its timers and resolves its parent's entry.
    fn end(&mut self, apply: &mut Apply<'_>, id: &str, status: WorkflowStatus, outcome: Outcome) {
        let workflow = self.workflows.get_mut(id).expect("ending a known workflow");
        assert!(!workflow.is_finished(), "a workflow ends once");
        workflow.status = status;
        workflow.outcome = Some(outcome.clone());
        workflow.finished_ms = Some(apply.stamp_ms);
        let timers: Vec<u64> = workflow.pending_timers().collect();
        let children: Vec<String> = workflow.pending_children().map(str::to_owned).collect();
        let parent = workflow.parent.clone();
        for timer in timers {
            self.remove_timer(apply, timer);
        }
        // A child never outlives its parent: its result would have nowhere to go, and its
        // id must be free when the parent's id is reused after expiry.
        for child in children {
            if self.workflows.get(&child).is_some_and(|c| !c.is_finished()) {
                let message = format!("cancelled: its parent {id} ended");
                self.end(
                    apply,
                    &child,
                    WorkflowStatus::Cancelled,
                    Outcome::Err(message),
                );
            }
        }
        apply.effects.push(Effect::Finished {
            workflow: id.to_owned(),
        });
        apply.effects.push(Effect::Changed {
            workflow: id.to_owned(),
        });
        let Some((parent, seq)) = parent else {
            return;
        };
        let Some(parent_workflow) = self.workflows.get_mut(&parent) else {
            return;
        };
        let parent_finished = parent_workflow.is_finished();
        let Some(entry) = parent_workflow.journal.get_mut(seq as usize) else {
            return;
        };
        let resolves_this = matches!(&entry.kind, EntryKind::Call { child, .. } if child == id);
        if parent_finished || !resolves_this || !matches!(entry.state, EntryState::Pending { .. }) {
            return;
        }
        entry.state = EntryState::Done(outcome);
        apply.effects.push(Effect::Changed { workflow: parent });
    }

    fn signal(
        &mut self,
        apply: &mut Apply<'_>,
        id: &str,
        signal: String,
        payload: Vec<u8>,
    ) -> Result<Answer, Rejection> {
        check_name("signal name", &signal)?;
        check_len("signal payload", payload.len(), PAYLOAD_MAX_BYTES)?;
        let workflow = self.running(id)?;
        let waiting = workflow.journal.iter_mut().find(|entry| {
            matches!(&entry.kind, EntryKind::Signal { name, .. } if *name == signal)
                && matches!(entry.state, EntryState::Pending { .. })
        });
        let Some(entry) = waiting else {
            let buffered = workflow.signals.entry(signal).or_default();
            if buffered.len() >= SIGNALS_BUFFERED_MAX {
                return Err(Rejection::TooLarge {
                    what: "signals buffered for one name".to_owned(),
                    len: buffered.len() as u64 + 1,
                    max: SIGNALS_BUFFERED_MAX as u64,
                });
            }
            buffered.push(payload);
            return Ok(Answer::Done);
        };
        entry.state = EntryState::Done(Outcome::Ok(payload));
        let timer = match &mut entry.kind {
            EntryKind::Signal { timer, .. } => timer.take(),
            _ => unreachable!("matched a signal entry"),
        };
        if let Some(timer) = timer {
            self.remove_timer(apply, timer);
        }
        apply.effects.push(Effect::Changed {
            workflow: id.to_owned(),
        });
        Ok(Answer::Done)
    }

    fn cancel(
        &mut self,
        apply: &mut Apply<'_>,
        id: &str,
        reason: &str,
    ) -> Result<Answer, Rejection> {
        check_len("cancel reason", reason.len(), PAYLOAD_MAX_BYTES)?;
        self.running(id)?;
        // Ending it cancels its running children, and theirs.
        self.end(
            apply,
            id,
            WorkflowStatus::Cancelled,
            Outcome::Err(format!("cancelled: {reason}")),
        );
        Ok(Answer::Done)
    }

    fn schedule_timer(
        &mut self,
        apply: &mut Apply<'_>,
        name: String,
        due: Due,
        payload: Vec<u8>,
    ) -> Result<Answer, Rejection> {
        check_name("timer name", &name)?;
        check_len("timer payload", payload.len(), PAYLOAD_MAX_BYTES)?;
        if let Some(&id) = self.named.get(&name) {
            let due_ms = self
                .timers
                .get(id)
                .expect("named timers are pending")
                .due_ms;
            return Ok(Answer::Timer {
                id,
                due_ms,
                created: false,
            });
        }
        if let Some(record) = self.fired.get(&name) {
            return Ok(Answer::Timer {
                id: record.id,
                due_ms: record.due_ms,
                created: false,
            });
        }
        let id = self.add_timer(
            apply,
            due,
            TimerTarget::Named {
                name: name.clone(),
                payload,
            },
        );
        self.named.insert(name, id);
        let due_ms = self.timers.get(id).expect("just added").due_ms;
        Ok(Answer::Timer {
            id,
            due_ms,
            created: true,
        })
    }

    fn fire_timers(&mut self, apply: &mut Apply<'_>, ids: &[u64]) -> Answer {
        let mut fired = Vec::new();
        for &id in ids {
            if self
                .timers
                .get(id)
                .is_none_or(|timer| timer.due_ms > apply.stamp_ms)
            {
                continue;
            }
            let timer = self.remove_timer(apply, id).expect("checked pending");
            fired.push(id);
            self.fire(apply, id, timer);
        }
        Answer::Fired { ids: fired }
    }

    fn fire(&mut self, apply: &mut Apply<'_>, id: u64, timer: Timer) {
        match timer.target {
            TimerTarget::Entry { workflow, seq } => {
                let entry = self
                    .workflows
                    .get_mut(&workflow)
                    .filter(|w| !w.is_finished())
                    .and_then(|w| w.journal.get_mut(seq as usize))
                    .expect("a pending entry timer belongs to a running workflow's entry");
                match &mut entry.kind {
                    EntryKind::Sleep { .. } => {
                        entry.state = EntryState::Done(Outcome::Ok(Vec::new()));
                    }
                    EntryKind::Signal { timer, .. } => {
                        *timer = None;
                        entry.state = EntryState::TimedOut;
                    }
                    EntryKind::Step { .. } | EntryKind::Call { .. } => {
                        unreachable!("only sleeps and signal waits hold timers")
                    }
                }
                apply.effects.push(Effect::Changed { workflow });
            }
            TimerTarget::Named { name, payload } => {
                self.named.remove(&name);
                let record = FireRecord {
                    id,
                    term: apply.at.term,
                    index: apply.at.index,
                    due_ms: timer.due_ms,
                    fired_ms: apply.stamp_ms,
                };
                self.fired.insert(name.clone(), record);
                apply.effects.push(Effect::NamedFired {
                    name,
                    payload,
                    record,
                });
            }
            TimerTarget::Schedule { name } => self.fire_schedule(apply, &name, timer.due_ms),
        }
    }

    fn fire_schedule(&mut self, apply: &mut Apply<'_>, name: &str, due_ms: u64) {
        let schedule = self
            .schedules
            .get(name)
            .expect("a schedule timer's schedule exists");
        let (spec, kind, input) = (schedule.spec, schedule.kind.clone(), schedule.input.clone());
        let id = format!("{name}@{due_ms}");
        // An occurrence whose id is taken (an earlier start of it, not expired) starts
        // nothing new; the names were checked at registration and kinds stay declared.
        let _ = self.start(apply, id, kind, input);
        // The spec parsed at registration: firing never parses.
        if let Some(next) = cron::next_after(&spec, due_ms.max(apply.stamp_ms)) {
            let timer = self.add_timer(
                apply,
                Due::At { at_ms: next },
                TimerTarget::Schedule {
                    name: name.to_owned(),
                },
            );
            self.schedules.get_mut(name).expect("exists").timer = timer;
        } else {
            self.schedules.remove(name);
        }
    }

    fn register_schedule(
        &mut self,
        apply: &mut Apply<'_>,
        name: String,
        expression: String,
        kind: String,
        input: Vec<u8>,
    ) -> Result<Answer, Rejection> {
        check_name("schedule name", &name)?;
        // Its workflows are named `<name>@<due ms>`: room for the suffix.
        check_len(
            "schedule name",
            name.len(),
            NAME_MAX_BYTES - SCHEDULE_SUFFIX_MAX,
        )?;
        check_len("cron expression", expression.len(), NAME_MAX_BYTES)?;
        check_len("workflow input", input.len(), PAYLOAD_MAX_BYTES)?;
        if name.contains('/') {
            return Err(Rejection::Invalid {
                what: "schedule name".to_owned(),
                reason: "'/' is reserved for child workflows' ids".to_owned(),
            });
        }
        let invalid = |reason: String| Rejection::InvalidCron {
            cron: expression.clone(),
            reason,
        };
        let spec = cron::parse(&expression).map_err(invalid)?;
        self.version_of(&kind)?;
        let next = cron::next_after(&spec, apply.stamp_ms)
            .ok_or_else(|| invalid("it never occurs".to_owned()))?;
        if let Some(old) = self.schedules.remove(&name) {
            self.remove_timer(apply, old.timer);
        }
        let timer = self.add_timer(
            apply,
            Due::At { at_ms: next },
            TimerTarget::Schedule { name: name.clone() },
        );
        self.schedules.insert(
            name,
            Schedule {
                cron: expression,
                spec,
                kind,
                input,
                timer,
            },
        );
        Ok(Answer::Done)
    }

    /// Forgets workflows finished, and named timers' fire records made, at or before the
    /// command's stamp less `retention_ms` (the same rule for both).
    fn expire(&mut self, apply: &mut Apply<'_>, retention_ms: u64) -> Answer {
        let cutoff_ms = apply.stamp_ms.saturating_sub(retention_ms);
        let before = (self.workflows.len(), self.fired.len());
        self.workflows
            .retain(|_, w| w.finished_ms.is_none_or(|finished| finished > cutoff_ms));
        self.fired.retain(|_, record| record.fired_ms > cutoff_ms);
        Answer::Expired {
            workflows: (before.0 - self.workflows.len()) as u64,
            fires: (before.1 - self.fired.len()) as u64,
        }
    }

    /// Whether an expiry stamped so that its cutoff is `cutoff_ms` would forget something:
    /// a workflow finished, or a named timer's fire recorded, at or before it.
    pub fn expiry_due(&self, cutoff_ms: u64) -> bool {
        self.fired
            .values()
            .any(|record| record.fired_ms <= cutoff_ms)
            || self
                .workflows
                .values()
                .any(|w| w.finished_ms.is_some_and(|finished| finished <= cutoff_ms))
    }

    /// Workflow `id`.
    pub fn workflow(&self, id: &str) -> Option<&Workflow> {
        self.workflows.get(id)
    }

    /// Workflows in id order after `after`, filtered by kind and status, at most `limit`.
    pub fn list<'a>(
        &'a self,
        kind: Option<&'a str>,
        status: Option<WorkflowStatus>,
        after: Option<&'a str>,
        limit: usize,
    ) -> impl Iterator<Item = (&'a String, &'a Workflow)> + 'a {
        let range = match after {
            Some(after) => self
                .workflows
                .range::<str, _>((std::ops::Bound::Excluded(after), std::ops::Bound::Unbounded)),
            None => self.workflows.range::<str, _>(..),
        };
        range
            .filter(move |(_, w)| kind.is_none_or(|k| w.kind == k))
            .filter(move |(_, w)| status.is_none_or(|s| w.status == s))
            .take(limit)
    }

    /// Running workflows, in id order.
    pub fn running_workflows(&self) -> impl Iterator<Item = (&String, &Workflow)> + '_ {
        self.workflows.iter().filter(|(_, w)| !w.is_finished())
    }

    /// The pending timers.
    pub fn timers(&self) -> &TimerQueue {
        &self.timers
    }

    /// A named timer: pending (`Ok(due ms)`) or fired (`Err(record)`).
    ///
    /// # Panics
    /// If the name index points at a timer that is not pending (a bug).
    pub fn named_timer(&self, name: &str) -> Option<Result<u64, FireRecord>> {
        if let Some(&id) = self.named.get(name) {
            return Some(Ok(self
                .timers
                .get(id)
                .expect("named timers are pending")
                .due_ms));
        }
        self.fired.get(name).map(|record| Err(*record))
    }

    /// Schedule `name`.
    pub fn schedule(&self, name: &str) -> Option<&Schedule> {
        self.schedules.get(name)
    }

    /// Forgets that named timer `name` is pending (its timer stays), for tests that corrupt
    /// a state on purpose.
    #[cfg(test)]
    pub(crate) fn forget_named_for_test(&mut self, name: &str) {
        self.named.remove(name);
    }

    /// Declared kinds and their version markers.
    pub fn kinds(&self) -> &BTreeMap<String, String> {
        &self.kinds
    }

    /// Checks [`SchedulerState::consistency`] (debug builds).
    pub fn check_invariants(&self) {
        if cfg!(debug_assertions) {
            self.assert_consistent();
        }
    }

    /// Asserts [`SchedulerState::consistency`].
    ///
    /// # Panics
    /// When they are inconsistent.
    pub fn assert_consistent(&self) {
        if let Err(problem) = self.consistency() {
            panic!("inconsistent scheduler state: {problem}");
        }
    }

    /// The highest index of a command applied to this state.
    pub fn applied_index(&self) -> u64 {
        self.applied_index
    }
}

/// The existing entry `seq` of `workflow` if it is the operation `kind`; `None` when `seq` is
/// the next entry.
fn existing_entry<'w>(
    workflow: &'w mut Workflow,
    seq: u32,
    kind: &EntryKind,
) -> Result<Option<&'w mut JournalEntry>, Rejection> {
    let next = u32::try_from(workflow.journal.len()).expect("journals stay under u32::MAX entries");
    if seq > next {
        return Err(Rejection::OutOfOrder {
            seq,
            expected: next,
        });
    }
    let Some(entry) = workflow.journal.get_mut(seq as usize) else {
        return Ok(None);
    };
    if !entry.kind.same_operation(kind) {
        return Err(Rejection::NonDeterminism {
            seq,
            recorded: entry.kind.describe(),
            requested: kind.describe(),
        });
    }
    Ok(Some(entry))
}

#[cfg(test)]
mod snapshot_mutation;
#[cfg(test)]
mod tests;
