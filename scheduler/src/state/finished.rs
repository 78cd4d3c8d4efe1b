//! Finished workflows as the state retains them until they expire: each record packed.
//!
//! A finished workflow changes no more (only expiry removes it), is read rarely (`status`,
//! `list`, a start under its id, a snapshot) and there are many of them: a retained
//! 10-step workflow held as a [`Workflow`] costs about 2 KB of heap (a `String` per kind,
//! version and step name, a 100-byte journal entry per step, the map's 300-byte slot),
//! while its record in postcard's varint encoding takes about 250 bytes. So a workflow is
//! packed when it finishes and unpacked on each read; what expiry and the rejection of a
//! late command need (when it finished, its status) stays beside the bytes.
//!
//! The encoding is postcard 1's (a stable, documented wire format: varint integers,
//! length-prefixed strings and sequences, enum variants by index) of [`Workflow`]'s serde
//! form, fields in declaration order. It is part of scheduler snapshot format 6: a change
//! to [`Workflow`] or to a type inside it changes it, and bumps that format.

use std::sync::Arc;

use rkyv::{Archive, Deserialize, Serialize};

use super::Workflow;
use crate::command::WorkflowStatus;

/// A finished workflow, packed.
#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
#[rkyv(attr(allow(missing_docs, reason = "rkyv's archived twin of a documented type")))]
pub struct FinishedWorkflow {
    /// When it finished (the stamp of the command that ended it).
    finished_ms: u64,
    /// How it finished.
    status: WorkflowStatus,
    /// The whole [`Workflow`], postcard-encoded; shared, never changed, so a snapshot's
    /// image copies a pointer, not the record.
    packed: Arc<[u8]>,
}

/// A packed record that does not decode, or does not say what is kept beside it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("a finished workflow's record {0}")]
pub struct Unpackable(String);

impl FinishedWorkflow {
    /// `workflow`, packed.
    ///
    /// # Panics
    /// If it has not finished (a bug: only finished workflows are packed).
    pub fn pack(workflow: &Workflow) -> Self {
        assert!(workflow.is_finished(), "only a finished workflow is packed");
        let packed = postcard::to_allocvec(workflow)
            .expect("a workflow encodes: every field has a serde form")
            .into();
        Self {
            finished_ms: workflow
                .finished_ms
                .expect("a finished workflow has its end stamp"),
            status: workflow.status,
            packed,
        }
    }

    /// The workflow.
    ///
    /// # Panics
    /// If its record does not decode: it was packed by this build, or checked by
    /// [`FinishedWorkflow::check`] when restored from a snapshot.
    pub fn unpack(&self) -> Workflow {
        postcard::from_bytes(&self.packed).expect("a packed workflow decodes")
    }

    /// The workflow, if its record decodes and agrees with what is kept beside it.
    ///
    /// # Errors
    /// [`Unpackable`] when it does not.
    pub fn check(&self) -> Result<Workflow, Unpackable> {
        let (workflow, rest): (Workflow, _) = postcard::take_from_bytes(&self.packed)
            .map_err(|e| Unpackable(format!("does not decode: {e}")))?;
        if !rest.is_empty() {
            return Err(Unpackable(format!(
                "has {} bytes after the workflow",
                rest.len()
            )));
        }
        if !workflow.is_finished()
            || workflow.status != self.status
            || workflow.finished_ms != Some(self.finished_ms)
        {
            return Err(Unpackable(format!(
                "says {:?} finished at {:?}, beside it {:?} at {}",
                workflow.status, workflow.finished_ms, self.status, self.finished_ms
            )));
        }
        Ok(workflow)
    }

    /// When it finished.
    pub fn finished_ms(&self) -> u64 {
        self.finished_ms
    }

    /// How it finished.
    pub fn status(&self) -> WorkflowStatus {
        self.status
    }

    /// The bytes of its record.
    pub fn packed_len(&self) -> usize {
        self.packed.len()
    }

    /// Cuts its record in half, for tests that corrupt a state on purpose.
    #[cfg(test)]
    pub(crate) fn truncate_for_test(&mut self) {
        self.packed = self.packed[..self.packed.len() / 2].into();
    }
}

#[cfg(test)]
mod tests {
    use keel_raft::application::AppliedAt;
    use keel_raft::values::ValueRef;
    use proptest::prelude::*;

    use super::*;
    use crate::command::{EntryState, Owner, StoredOutcome, Value};
    use crate::state::{EntryKind, JournalEntry};

    fn value() -> impl Strategy<Value = Value> {
        prop_oneof![
            proptest::collection::vec(any::<u8>(), 0..40).prop_map(Value::Inline),
            (any::<u64>(), any::<u32>(), any::<u32>())
                .prop_map(|(index, offset, len)| Value::Recorded(ValueRef { index, offset, len })),
        ]
    }

    fn outcome() -> impl Strategy<Value = StoredOutcome> {
        prop_oneof![
            value().prop_map(StoredOutcome::Ok),
            value().prop_map(StoredOutcome::Err)
        ]
    }

    fn entry() -> impl Strategy<Value = JournalEntry> {
        let kind = prop_oneof![
            "[a-z0-9-]{0,12}".prop_map(|name| EntryKind::Step { name }),
            any::<u64>().prop_map(|timer| EntryKind::Sleep { timer }),
            ("[a-z]{1,8}", proptest::option::of(any::<u64>()))
                .prop_map(|(name, timer)| EntryKind::Signal { name, timer }),
            ("[a-z/0-9]{1,12}", "[a-z]{1,8}")
                .prop_map(|(child, kind)| EntryKind::Call { child, kind }),
        ];
        let state = prop_oneof![
            any::<u32>().prop_map(|attempts| EntryState::Pending { attempts }),
            outcome().prop_map(EntryState::Done),
            Just(EntryState::TimedOut),
        ];
        (kind, state, any::<u64>()).prop_map(|(kind, state, fence)| JournalEntry {
            kind,
            state,
            fence,
        })
    }

    fn finished() -> impl Strategy<Value = Workflow> {
        let status = prop_oneof![
            Just(WorkflowStatus::Completed),
            Just(WorkflowStatus::Failed),
            Just(WorkflowStatus::Cancelled),
        ];
        let owner = proptest::option::of(prop_oneof![
            (any::<u64>(), any::<u64>()).prop_map(|(node, term)| Owner::Leader { node, term }),
            any::<u64>().prop_map(|worker| Owner::Worker { worker }),
        ]);
        let signals = proptest::collection::btree_map(
            "[a-z]{1,6}",
            proptest::collection::vec(value(), 0..3),
            0..3,
        );
        (
            ("[a-z-]{1,10}", "[0-9.]{0,6}", value()),
            proptest::option::of(("[a-z0-9-]{1,10}", any::<u32>())),
            (status, outcome(), any::<u64>(), any::<u64>()),
            (any::<u64>(), any::<u64>(), owner),
            proptest::collection::vec(entry(), 0..12),
            signals,
        )
            .prop_map(
                |(
                    (kind, version, input),
                    parent,
                    (status, outcome, created_ms, finished_ms),
                    (fence, term, owner),
                    journal,
                    signals,
                )| {
                    let mut workflow = Workflow::new(
                        kind,
                        version,
                        input,
                        parent,
                        created_ms,
                        AppliedAt { index: fence, term },
                    );
                    workflow.status = status;
                    workflow.outcome = Some(outcome);
                    workflow.finished_ms = Some(finished_ms);
                    workflow.owner = owner;
                    workflow.journal = journal;
                    workflow.signals = signals;
                    workflow
                },
            )
    }

    proptest! {
        /// Packing keeps every field: what unpacks equals what was packed, and the status
        /// and end stamp kept beside the record are the workflow's.
        #[test]
        fn a_packed_workflow_unpacks_whole(workflow in finished()) {
            let packed = FinishedWorkflow::pack(&workflow);
            prop_assert_eq!(packed.check(), Ok(workflow.clone()));
            prop_assert_eq!(packed.unpack(), workflow.clone());
            prop_assert_eq!(packed.status(), workflow.status);
            prop_assert_eq!(Some(packed.finished_ms()), workflow.finished_ms);
        }

        /// A record cut short is refused (decoding it follows the whole record's path and
        /// runs out of bytes), and so is one with bytes after it.
        #[test]
        fn a_truncated_or_padded_record_is_refused(
            workflow in finished(),
            cut in 1usize..64,
            extra in proptest::collection::vec(any::<u8>(), 1..8),
        ) {
            let whole = FinishedWorkflow::pack(&workflow);
            let mut cut_short = whole.clone();
            let keep = whole.packed.len().saturating_sub(cut);
            cut_short.packed = whole.packed[..keep].into();
            prop_assert!(cut_short.check().is_err());
            let mut padded = whole.clone();
            padded.packed = [&whole.packed[..], &extra[..]].concat().into();
            prop_assert!(padded.check().is_err());
        }
    }

    /// A 10-step workflow whose results are held by reference, as the scale benchmark makes
    /// them: its record is a few hundred bytes (what the 600-byte budget needs).
    #[test]
    fn a_ten_step_workflow_packs_into_a_few_hundred_bytes() {
        let mut workflow = Workflow::new(
            "steps".into(),
            "1".into(),
            Value::Inline(b"10:2048".to_vec()),
            None,
            1_764_806_400_000,
            AppliedAt {
                index: 1_200_000,
                term: 3,
            },
        );
        workflow.journal = (0..10u32)
            .map(|i| JournalEntry {
                kind: EntryKind::Step {
                    name: format!("step-{i}"),
                },
                state: EntryState::Done(StoredOutcome::Ok(Value::Recorded(ValueRef {
                    index: 1_200_001 + u64::from(i) * 7,
                    offset: 60,
                    len: 2048,
                }))),
                fence: 1_200_000,
            })
            .collect();
        workflow.status = WorkflowStatus::Completed;
        workflow.outcome = Some(StoredOutcome::Ok(Value::Inline(b"10".to_vec())));
        workflow.finished_ms = Some(1_764_806_400_420);
        let packed = FinishedWorkflow::pack(&workflow);
        assert!(
            (150..=260).contains(&packed.packed_len()),
            "{} bytes",
            packed.packed_len()
        );
    }
}
