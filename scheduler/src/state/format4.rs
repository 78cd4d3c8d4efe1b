//! The state as snapshot formats 3 and 4 (`KEELSCH3`, `KEELSCH4`) laid it out, read only to
//! migrate it: every value (inputs, outcomes, signal payloads) held inline as bytes.
//! Format 2's workflows had this layout too.

use std::collections::{BTreeMap, HashMap};

use rkyv::{Archive, Deserialize, Serialize};

use super::{EntryKind, FireRecord, JournalEntry, Schedule, SchedulerState, TimerQueue, Workflow};
use crate::command::{EntryState, Outcome, Owner, StoredOutcome, Value, WorkflowStatus};

/// A format 4 journal entry's state: its outcome's bytes inline.
#[derive(Archive, Serialize, Deserialize, Debug)]
pub(crate) enum EntryStateV4 {
    Pending { attempts: u32 },
    Done(Outcome),
    TimedOut,
}

/// A format 4 journal entry.
#[derive(Archive, Serialize, Deserialize, Debug)]
pub(crate) struct JournalEntryV4 {
    kind: EntryKind,
    state: EntryStateV4,
    fence: u64,
}

/// A format 4 workflow: the same fields as [`Workflow`], its values as bytes.
#[derive(Archive, Serialize, Deserialize, Debug)]
pub(crate) struct WorkflowV4 {
    kind: String,
    version: String,
    input: Vec<u8>,
    parent: Option<(String, u32)>,
    status: WorkflowStatus,
    outcome: Option<Outcome>,
    created_ms: u64,
    finished_ms: Option<u64>,
    pub(super) fence: u64,
    granted_term: u64,
    owner: Option<Owner>,
    journal: Vec<JournalEntryV4>,
    signals: BTreeMap<String, Vec<Vec<u8>>>,
}

/// A format 4 (and 3) state: the same fields as [`SchedulerState`], in order.
#[derive(Archive, Serialize, Deserialize, Debug)]
pub(crate) struct StateV4 {
    pub(super) workflows: BTreeMap<String, WorkflowV4>,
    pub(super) timers: TimerQueue,
    pub(super) named: HashMap<String, u64>,
    pub(super) fired: HashMap<String, FireRecord>,
    pub(super) schedules: BTreeMap<String, Schedule>,
    pub(super) kinds: BTreeMap<String, String>,
    pub(super) applied_index: u64,
}

fn stored(outcome: Outcome) -> StoredOutcome {
    match outcome {
        Outcome::Ok(value) => StoredOutcome::Ok(Value::Inline(value)),
        Outcome::Err(message) => StoredOutcome::Err(Value::Inline(message.into_bytes())),
    }
}

impl WorkflowV4 {
    /// The workflow in the current layout, every value inline.
    pub(super) fn upgrade(self) -> Workflow {
        let journal = self
            .journal
            .into_iter()
            .map(|entry| JournalEntry {
                kind: entry.kind,
                state: match entry.state {
                    EntryStateV4::Pending { attempts } => EntryState::Pending { attempts },
                    EntryStateV4::Done(outcome) => EntryState::Done(stored(outcome)),
                    EntryStateV4::TimedOut => EntryState::TimedOut,
                },
                fence: entry.fence,
            })
            .collect();
        Workflow {
            kind: self.kind,
            version: self.version,
            input: Value::Inline(self.input),
            parent: self.parent,
            status: self.status,
            outcome: self.outcome.map(stored),
            created_ms: self.created_ms,
            finished_ms: self.finished_ms,
            fence: self.fence,
            granted_term: self.granted_term,
            owner: self.owner,
            journal,
            signals: self
                .signals
                .into_iter()
                .map(|(name, payloads)| (name, payloads.into_iter().map(Value::Inline).collect()))
                .collect(),
        }
    }
}

impl StateV4 {
    /// The state in the current layout, every value inline, finished workflows packed.
    pub(crate) fn upgrade(self) -> SchedulerState {
        SchedulerState::assemble(
            self.workflows
                .into_iter()
                .map(|(id, workflow)| (id, workflow.upgrade()))
                .collect(),
            self.timers,
            self.named,
            self.fired,
            self.schedules,
            self.kinds,
            self.applied_index,
        )
    }
}
