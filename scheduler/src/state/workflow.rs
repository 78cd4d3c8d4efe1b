//! A workflow as the replicated state holds it: identity, status, fence and journal.

use std::collections::BTreeMap;

use keel_raft::application::AppliedAt;
use rkyv::{Archive, Deserialize, Serialize};

use keel_raft::values::ValueRef;

use crate::command::{EntryState, Owner, StoredOutcome, Value, WorkflowStatus};

/// What a journal entry is.
#[derive(
    serde::Serialize,
    serde::Deserialize,
    Archive,
    Serialize,
    Deserialize,
    Debug,
    Clone,
    PartialEq,
    Eq,
)]
#[rkyv(attr(allow(missing_docs, reason = "rkyv's archived twin of a documented type")))]
pub enum EntryKind {
    /// A step, by name.
    Step {
        /// The step's name in the code.
        name: String,
    },
    /// A durable sleep, ended by timer `timer`.
    Sleep {
        /// The timer's id.
        timer: u64,
    },
    /// A wait for a signal, with an optional timeout timer.
    Signal {
        /// The signal's name.
        name: String,
        /// The timeout timer, while pending.
        timer: Option<u64>,
    },
    /// A child workflow call.
    Call {
        /// The child's id.
        child: String,
        /// The child's kind.
        kind: String,
    },
    /// A call of a workflow in another cluster.
    Remote {
        /// The remote's alias.
        remote: String,
        /// The kind called there.
        kind: String,
        /// The call's seq in the stream to that remote.
        seq: u64,
    },
}

impl EntryKind {
    /// Whether `self` and `other` are the same operation (timer ids aside).
    pub fn same_operation(&self, other: &Self) -> bool {
        match (self, other) {
            (Self::Step { name: a }, Self::Step { name: b })
            | (Self::Signal { name: a, .. }, Self::Signal { name: b, .. })
            | (Self::Call { kind: a, .. }, Self::Call { kind: b, .. }) => a == b,
            (
                Self::Remote {
                    remote: r, kind: k, ..
                },
                Self::Remote {
                    remote: s, kind: l, ..
                },
            ) => r == s && k == l,
            (Self::Sleep { .. }, Self::Sleep { .. }) => true,
            _ => false,
        }
    }

    /// The operation in words, for non-determinism errors.
    pub fn describe(&self) -> String {
        match self {
            Self::Step { name } => format!("step {name:?}"),
            Self::Sleep { .. } => "a sleep".to_owned(),
            Self::Signal { name, .. } => format!("a wait for signal {name:?}"),
            Self::Call { kind, .. } => format!("a call of a {kind:?} workflow"),
            Self::Remote { remote, kind, .. } => {
                format!("a remote call of a {kind:?} workflow in {remote:?}")
            }
        }
    }
}

/// One journal entry.
#[derive(
    serde::Serialize,
    serde::Deserialize,
    Archive,
    Serialize,
    Deserialize,
    Debug,
    Clone,
    PartialEq,
    Eq,
)]
#[rkyv(attr(allow(missing_docs, reason = "rkyv's archived twin of a documented type")))]
pub struct JournalEntry {
    /// What it is.
    pub kind: EntryKind,
    /// Where it stands.
    pub state: EntryState,
    /// The fence of the run that created it. Entries are created in order under the
    /// current fence, which only grows, so fences never go back along a journal (a later
    /// run may finish a step an earlier one began; the fence stays the creator's).
    pub fence: u64,
}

/// A workflow.
#[derive(
    serde::Serialize,
    serde::Deserialize,
    Archive,
    Serialize,
    Deserialize,
    Debug,
    Clone,
    PartialEq,
    Eq,
)]
#[rkyv(attr(allow(missing_docs, reason = "rkyv's archived twin of a documented type")))]
pub struct Workflow {
    /// Its kind.
    pub kind: String,
    /// The code version marker of its kind when it started.
    pub version: String,
    /// Its input.
    pub input: Value,
    /// The parent workflow and the parent's journal entry this workflow resolves.
    pub parent: Option<(String, u32)>,
    /// Its status.
    pub status: WorkflowStatus,
    /// Its result once finished; while parked, why (an error).
    pub outcome: Option<StoredOutcome>,
    /// When it started (the start command's stamp).
    pub created_ms: u64,
    /// When it finished.
    pub finished_ms: Option<u64>,
    /// The current run's fence: records carrying another are rejected. It is the Raft
    /// index of the command that granted it, so fences never repeat, not even across an
    /// expiry and a restart of the same id.
    pub fence: u64,
    /// The term of the command that granted the fence.
    pub granted_term: u64,
    /// Who holds the fence.
    pub owner: Option<Owner>,
    /// The journal, by sequence number.
    pub journal: Vec<JournalEntry>,
    /// Signals delivered before a wait for them, by name, oldest first.
    pub signals: BTreeMap<String, Vec<Value>>,
}

impl Workflow {
    /// A new running workflow with an empty journal, its first fence granted at `granted`.
    pub fn new(
        kind: String,
        version: String,
        input: Value,
        parent: Option<(String, u32)>,
        created_ms: u64,
        granted: AppliedAt,
    ) -> Self {
        Self {
            kind,
            version,
            input,
            parent,
            status: WorkflowStatus::Running,
            outcome: None,
            created_ms,
            finished_ms: None,
            fence: granted.index,
            granted_term: granted.term,
            owner: None,
            journal: Vec::new(),
            signals: BTreeMap::new(),
        }
    }

    /// Whether it finished (a parked workflow has not).
    pub fn is_finished(&self) -> bool {
        !matches!(
            self.status,
            WorkflowStatus::Running | WorkflowStatus::Parked
        )
    }

    /// Whether it is parked: unfinished, and run only when claimed again.
    pub fn is_parked(&self) -> bool {
        self.status == WorkflowStatus::Parked
    }

    /// Timers its pending entries hold (a finished workflow's are cancelled).
    pub fn pending_timers(&self) -> impl Iterator<Item = u64> + '_ {
        self.journal
            .iter()
            .filter_map(|entry| match (&entry.kind, &entry.state) {
                (EntryKind::Sleep { timer }, EntryState::Pending { .. })
                | (
                    EntryKind::Signal {
                        timer: Some(timer), ..
                    },
                    EntryState::Pending { .. },
                ) => Some(*timer),
                _ => None,
            })
    }

    /// Every value it holds by reference: its input and outcome, its journal's, the signals
    /// buffered for it.
    pub fn recorded_values(&self) -> impl Iterator<Item = ValueRef> + '_ {
        let entries = self.journal.iter().filter_map(|entry| match &entry.state {
            EntryState::Done(outcome) => Some(outcome.value()),
            _ => None,
        });
        std::iter::once(&self.input)
            .chain(self.outcome.as_ref().map(StoredOutcome::value))
            .chain(entries)
            .chain(self.signals.values().flatten())
            .filter_map(Value::recorded)
    }

    /// Remote calls unresolved (their pending entries): `(remote, seq)`.
    pub fn pending_remote_calls(&self) -> impl Iterator<Item = (&str, u64)> + '_ {
        self.journal
            .iter()
            .filter_map(|entry| match (&entry.kind, &entry.state) {
                (EntryKind::Remote { remote, seq, .. }, EntryState::Pending { .. }) => {
                    Some((remote.as_str(), *seq))
                }
                _ => None,
            })
    }

    /// Children still running (their pending call entries).
    pub fn pending_children(&self) -> impl Iterator<Item = &str> + '_ {
        self.journal
            .iter()
            .filter_map(|entry| match (&entry.kind, &entry.state) {
                (EntryKind::Call { child, .. }, EntryState::Pending { .. }) => Some(child.as_str()),
                _ => None,
            })
    }
}
