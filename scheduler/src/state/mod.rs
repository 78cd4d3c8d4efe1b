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
//!
//! This module holds the state, the dispatch of each command to its family and the helpers
//! the families share (checks, fences, arming timers). The families: `lifecycle` (start,
//! claim, finish, cancel and its cascade, expiry), `journal` (steps, sleeps, signal waits,
//! calls, signals), `named` (named timers), `fire` (firing due timers) and
//! `schedules` (cron).
//!
//! Running and parked workflows are held whole; a workflow that finishes is packed
//! (`finished`: its record in a compact encoding, a few hundred bytes) until it expires, and
//! unpacked when read.

mod consistency;
mod cron;
mod finished;
mod fire;
pub(crate) mod format2;
pub(crate) mod format4;
pub(crate) mod format5;
pub(crate) mod format6;
pub(crate) mod format7;
mod journal;
mod lifecycle;
mod named;
pub(crate) mod remote;
mod schedules;
mod timers;
mod workflow;

use std::borrow::Cow;
use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use keel_raft::application::AppliedAt;
use keel_raft::values::ValueRef;
use rkyv::{Archive, Deserialize, Serialize};

pub use self::consistency::Inconsistency;
pub use self::cron::{CronSpec, DayRule, Schedule};
pub use self::finished::{FinishedWorkflow, Unpackable};
pub use self::format2::CronRefused;
pub use self::remote::{
    Binding, InOutcome, InRecord, InState, Incoming, OutItem, OutState, Outgoing,
    RemoteInconsistency, RemoteState, inbound_name, parse_inbound_name,
};
pub use self::timers::{Timer, TimerQueue, TimerTarget};
pub use self::workflow::{EntryKind, JournalEntry, Workflow};
use crate::command::{
    Answer, Command, Due, EntryState, INLINE_MAX_BYTES, Outcome, Owner, Rejection, Stamped,
    StoredOutcome, Value, WorkflowStatus,
};
use crate::limits::{NAME_MAX_BYTES, PAYLOAD_MAX_BYTES};
use crate::mono::MonoStamp;

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
    /// Something a remote-call driver delivers changed: an outbox item, a binding, an
    /// inbound record's completion.
    RemoteChanged,
}

/// The largest state whose consistency a debug build checks after every command. The check
/// reads the whole state, so past this size it would make each apply cost as much as the
/// state and a long run quadratic; unit, property and failure-harness tests stay far below.
pub const CHECKED_WORKFLOWS_MAX: usize = 1024;

/// Everything the scheduler replicates.
#[derive(Archive, Serialize, Deserialize, Debug, Clone, Default, PartialEq, Eq)]
#[rkyv(attr(allow(missing_docs, reason = "rkyv's archived twin of a documented type")))]
pub struct SchedulerState {
    /// Running and parked workflows.
    workflows: BTreeMap<String, Workflow>,
    /// Finished workflows, packed, until they expire. An id is in one map at most. Ids and
    /// records are shared: a snapshot's image clones the map, not what it holds.
    finished: BTreeMap<Arc<str>, FinishedWorkflow>,
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
    /// Calls between clusters, both sides.
    remote: RemoteState,
}

/// The command being applied: where, when, where its value lies, and the effects it
/// produces.
struct Apply<'a> {
    at: AppliedAt,
    stamp_ms: u64,
    mono: Option<MonoStamp>,
    /// Where the command's values (see `command::decode_recorded`) lie in its bytes, in
    /// order; empty when they are to be held inline.
    recorded: Vec<ValueRef>,
    effects: &'a mut Vec<Effect>,
}

impl Apply<'_> {
    /// The command's value, `bytes`, as the state holds it: by reference when the command
    /// was applied with its place known and it is longer than [`INLINE_MAX_BYTES`], else
    /// inline. Call it only with the command's own value field.
    ///
    /// # Panics
    /// If the place known is not `bytes` long (the caller passed another field).
    fn value(&self, bytes: Vec<u8>) -> Value {
        self.value_at(0, bytes)
    }

    /// Value `position` of the command (see [`Apply::value`]): the item's own value field of
    /// item `position` of a command with a list.
    ///
    /// # Panics
    /// If the place known is not `bytes` long (the caller passed another field).
    fn value_at(&self, position: usize, bytes: Vec<u8>) -> Value {
        match self.recorded.get(position) {
            Some(&at) if bytes.len() > INLINE_MAX_BYTES => {
                assert_eq!(at.len as usize, bytes.len(), "the command's own value");
                Value::Recorded(at)
            }
            _ => Value::Inline(bytes),
        }
    }

    /// The command's outcome as the state holds it (see [`Apply::value`]).
    fn outcome(&self, outcome: Outcome) -> StoredOutcome {
        match outcome {
            Outcome::Ok(value) => StoredOutcome::Ok(self.value(value)),
            Outcome::Err(message) => StoredOutcome::Err(self.value(message.into_bytes())),
        }
    }
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
        Due::After { delay_ms } => {
            #[cfg(feature = "sabotage")]
            let delay_ms = sabotaged_delay(delay_ms);
            (stamp_ms.saturating_add(delay_ms), Some(delay_ms))
        }
        Due::At { at_ms } => (at_ms, None),
    }
}

/// Sabotage (`halved-delays`): the delay a relative timer is scheduled with.
#[cfg(feature = "sabotage")]
fn sabotaged_delay(delay_ms: u64) -> u64 {
    if keel_raft::sabotage::on(keel_raft::sabotage::Fault::HalvedDelays) {
        delay_ms / 2
    } else {
        delay_ms
    }
}

impl SchedulerState {
    /// Applies `stamped`, committed at `at`, holding its value inline; returns the answer
    /// and pushes the effects.
    pub fn apply(&mut self, at: AppliedAt, stamped: Stamped, effects: &mut Vec<Effect>) -> Answer {
        self.apply_recorded(at, stamped, Vec::new(), effects)
    }

    /// Applies `stamped`, committed at `at`, whose values lie at `recorded` in the command's
    /// bytes (from `command::decode_recorded`): the state holds them by reference.
    pub fn apply_recorded(
        &mut self,
        at: AppliedAt,
        stamped: Stamped,
        recorded: Vec<ValueRef>,
        effects: &mut Vec<Effect>,
    ) -> Answer {
        self.applied_index = self.applied_index.max(at.index);
        let mut apply = Apply {
            at,
            stamp_ms: stamped.stamp_ms,
            mono: stamped.mono,
            recorded,
            effects,
        };
        let answer = self
            .dispatch(&mut apply, stamped.command)
            .unwrap_or_else(Answer::Rejected);
        self.check_invariants();
        answer
    }

    /// The host replaced this cluster's identity at `at`, by a command stamped `stamp_ms`
    /// (an operator's remint, `scheduler/REMOTE.md` §3): both sides' calls between clusters
    /// under the old identity end. Pushes the effects.
    pub fn identity_replaced(&mut self, at: AppliedAt, stamp_ms: u64, effects: &mut Vec<Effect>) {
        self.applied_index = self.applied_index.max(at.index);
        let mut apply = Apply {
            at,
            stamp_ms,
            mono: None,
            recorded: Vec::new(),
            effects,
        };
        self.end_remote_dealings(&mut apply);
        self.check_invariants();
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
            } => self.step(apply, &workflow, fence, seq, name, record),
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
            Command::Park {
                workflow,
                fence,
                reason,
            } => self.park(apply, &workflow, fence, reason),
            remote => self.dispatch_remote(apply, remote),
        }
    }

    fn dispatch_remote(
        &mut self,
        apply: &mut Apply<'_>,
        command: Command,
    ) -> Result<Answer, Rejection> {
        match command {
            Command::RemoteCall {
                workflow,
                fence,
                seq,
                remote,
                kind,
                input,
                deadline_after_ms,
            } => self.remote_call(
                apply,
                remote::CallRequest {
                    workflow,
                    fence,
                    position: seq,
                    remote,
                    kind,
                    input,
                    deadline_after_ms,
                },
            ),
            Command::RemoteBind { remote, callee } => self.remote_bind(apply, remote, callee),
            Command::RemoteUnbind { remote } => Ok(self.remote_unbind(apply, &remote)),
            Command::RemoteStartsAcked {
                remote,
                generation,
                watermark,
                results,
            } => Ok(self.remote_starts_acked(apply, &remote, generation, watermark, results)),
            Command::RemoteComplete {
                remote,
                generation,
                completions,
            } => Ok(self.remote_complete(apply, &remote, generation, completions)),
            Command::RemoteCancelsAcked {
                remote,
                generation,
                results,
            } => Ok(self.remote_cancels_acked(apply, &remote, generation, results)),
            Command::RemoteStart {
                caller,
                callee_index,
                items,
                grace_ms,
                deadline_max_ms,
            } => self.remote_start(
                apply,
                &caller,
                items,
                &remote::TakeRules {
                    callee_index,
                    grace_ms,
                    deadline_max_ms,
                },
            ),
            Command::RemoteCompletionsAcked { caller, acks } => {
                Ok(self.remote_completions_acked(apply, &caller, &acks))
            }
            Command::RemoteCancel { caller, items } => {
                Ok(self.remote_cancel(apply, &caller, items))
            }
            Command::RemoteEnabled => {
                if self.remote.enabled_at == 0 {
                    self.remote.enabled_at = apply.at.index;
                    apply.effects.push(Effect::RemoteChanged);
                }
                Ok(Answer::Done)
            }
            other => unreachable!("not a remote command: {other:?}"),
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

    fn running(&mut self, id: &str) -> Result<&mut Workflow, Rejection> {
        if let Some(finished) = self.finished.get(id) {
            return Err(Rejection::Finished(finished.status()));
        }
        self.workflows
            .get_mut(id)
            .ok_or_else(|| Rejection::UnknownWorkflow(id.to_owned()))
    }

    /// Whether a workflow `id` exists, running or finished.
    fn exists(&self, id: &str) -> bool {
        self.workflows.contains_key(id) || self.finished.contains_key(id)
    }

    /// Moves workflow `id`, which just finished, to the finished workflows, packed.
    fn retire(&mut self, id: &str) {
        let (id, workflow) = self
            .workflows
            .remove_entry(id)
            .expect("retiring a known workflow");
        self.finished
            .insert(id.into(), FinishedWorkflow::pack(&workflow));
    }

    /// The running workflow `id`, if `fence` is its current fence.
    fn fenced(&mut self, id: &str, fence: u64) -> Result<&mut Workflow, Rejection> {
        let workflow = self.running(id)?;
        #[cfg(feature = "sabotage")]
        if keel_raft::sabotage::on(keel_raft::sabotage::Fault::UnfencedRuns) {
            return Ok(workflow);
        }
        if workflow.fence != fence {
            return Err(Rejection::StaleFence {
                fence,
                current: workflow.fence,
            });
        }
        Ok(workflow)
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

    /// Workflow `id`: borrowed while it runs, unpacked once it finished.
    pub fn workflow(&self, id: &str) -> Option<Cow<'_, Workflow>> {
        match self.workflows.get(id) {
            Some(workflow) => Some(Cow::Borrowed(workflow)),
            None => self.finished.get(id).map(|f| Cow::Owned(f.unpack())),
        }
    }

    /// Workflows in id order after `after`, filtered by kind and status, at most `limit`
    /// (finished ones unpacked).
    pub fn list<'a>(
        &'a self,
        kind: Option<&'a str>,
        status: Option<WorkflowStatus>,
        after: Option<&'a str>,
        limit: usize,
    ) -> impl Iterator<Item = (&'a str, Cow<'a, Workflow>)> + 'a {
        let from = after.map_or(std::ops::Bound::Unbounded, std::ops::Bound::Excluded);
        let running = self
            .workflows
            .range::<str, _>((from, std::ops::Bound::Unbounded))
            .map(|(id, w)| (id.as_str(), Cow::Borrowed(w)));
        let finished = self
            .finished
            .range::<str, _>((from, std::ops::Bound::Unbounded))
            .filter(move |(_, f)| status.is_none_or(|s| f.status() == s))
            .map(|(id, f)| (&**id, Cow::Owned(f.unpack())));
        merge_by_id(running, finished)
            .filter(move |(_, w)| kind.is_none_or(|k| w.kind == k))
            .filter(move |(_, w)| status.is_none_or(|s| w.status == s))
            .take(limit)
    }

    /// Running (and parked) workflows, in id order.
    pub fn running_workflows(&self) -> impl Iterator<Item = (&String, &Workflow)> + '_ {
        self.workflows.iter()
    }

    /// How many workflows it holds: running and parked, finished.
    pub fn workflow_counts(&self) -> (usize, usize) {
        (self.workflows.len(), self.finished.len())
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

    /// This state with finished workflow `id`'s packed record cut in half, for tests that
    /// corrupt a state on purpose.
    #[cfg(test)]
    pub(crate) fn with_damaged_record_for_test(mut self, id: &str) -> Self {
        let record = self.finished.get_mut(id).expect("a finished workflow");
        record.truncate_for_test();
        self
    }

    /// Declared kinds and their version markers.
    pub fn kinds(&self) -> &BTreeMap<String, String> {
        &self.kinds
    }

    /// Checks [`SchedulerState::consistency`] (debug builds, states of at most
    /// [`CHECKED_WORKFLOWS_MAX`] workflows).
    pub fn check_invariants(&self) {
        if cfg!(debug_assertions)
            && self.workflows.len() + self.finished.len() <= CHECKED_WORKFLOWS_MAX
        {
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

    /// Every value the state holds by reference (repeats possible).
    pub fn recorded_values(&self) -> Vec<ValueRef> {
        let mut values: Vec<ValueRef> = self
            .workflows
            .values()
            .flat_map(Workflow::recorded_values)
            .collect();
        for finished in self.finished.values() {
            values.extend(finished.unpack().recorded_values());
        }
        values.extend(self.remote.recorded_values());
        values
    }

    /// Calls between clusters, both sides.
    pub fn remote(&self) -> &RemoteState {
        &self.remote
    }

    /// The state holding `workflows` (finished ones packed), the rest as given and no remote
    /// calls: how a migrated snapshot's state, which held every workflow whole, is laid out
    /// now. A
    /// finished workflow without its end stamp (an inconsistent old snapshot) is left
    /// whole, for the consistency check to refuse as misplaced rather than packing it.
    pub(crate) fn assemble(
        workflows: BTreeMap<String, Workflow>,
        timers: TimerQueue,
        named: HashMap<String, u64>,
        fired: HashMap<String, FireRecord>,
        schedules: BTreeMap<String, Schedule>,
        kinds: BTreeMap<String, String>,
        applied_index: u64,
    ) -> Self {
        let (finished, running): (BTreeMap<_, _>, BTreeMap<_, _>) = workflows
            .into_iter()
            .partition(|(_, w)| w.is_finished() && w.finished_ms.is_some());
        Self {
            workflows: running,
            finished: finished
                .into_iter()
                .map(|(id, w)| (id.into(), FinishedWorkflow::pack(&w)))
                .collect(),
            timers,
            named,
            fired,
            schedules,
            kinds,
            applied_index,
            remote: RemoteState::default(),
        }
    }
}

/// Two id-ordered sequences of workflows, merged in id order (no id is in both).
fn merge_by_id<'a>(
    a: impl Iterator<Item = (&'a str, Cow<'a, Workflow>)>,
    b: impl Iterator<Item = (&'a str, Cow<'a, Workflow>)>,
) -> impl Iterator<Item = (&'a str, Cow<'a, Workflow>)> {
    let mut a = a.peekable();
    let mut b = b.peekable();
    std::iter::from_fn(move || match (a.peek(), b.peek()) {
        (Some((x, _)), Some((y, _))) if x <= y => a.next(),
        (Some(_), Some(_)) | (None, _) => b.next(),
        (Some(_), None) => a.next(),
    })
}

#[cfg(test)]
mod snapshot_mutation;
#[cfg(test)]
mod tests;
