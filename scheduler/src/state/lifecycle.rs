//! A workflow's life: its start, the claims that grant its runs new fences, its end
//! (finish or cancel, which cascades to its running children and resolves its parent's call
//! entry), and the expiry of finished workflows and of named timers' fire records.

use super::{
    Apply, Effect, EntryKind, SchedulerState, Workflow, check_len, check_name, check_outcome,
};
use crate::command::{
    Answer, EntryState, Outcome, Owner, Rejection, StoredOutcome, Value, WorkflowStatus,
};
use crate::limits::PAYLOAD_MAX_BYTES;

impl SchedulerState {
    pub(super) fn start(
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
        if let Some(existing) = self.workflow(&id) {
            return Ok(Answer::Started {
                fence: existing.fence,
                created: false,
                status: existing.status,
            });
        }
        check_len("workflow input", input.len(), PAYLOAD_MAX_BYTES)?;
        let version = self.version_of(&kind)?;
        let workflow = Workflow::new(
            kind,
            version,
            apply.value(input),
            None,
            apply.stamp_ms,
            apply.at,
        );
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

    pub(super) fn claim(
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
        if workflow.is_parked() {
            // Retried: the new run finds out whether the code matches its journal now.
            workflow.status = WorkflowStatus::Running;
            workflow.outcome = None;
        }
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

    /// Parks the workflow of the run holding `fence`, with `reason`.
    pub(super) fn park(
        &mut self,
        apply: &mut Apply<'_>,
        id: &str,
        fence: u64,
        reason: String,
    ) -> Result<Answer, Rejection> {
        check_outcome(&Outcome::Err(reason.clone()))?;
        let workflow = self.fenced(id, fence)?;
        workflow.status = WorkflowStatus::Parked;
        workflow.outcome = Some(StoredOutcome::Err(apply.value(reason.into_bytes())));
        apply.effects.push(Effect::Changed {
            workflow: id.to_owned(),
        });
        Ok(Answer::Done)
    }

    pub(super) fn finish(
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
        let outcome = apply.outcome(outcome);
        self.end(apply, id, status, outcome);
        Ok(Answer::Done)
    }

    /// Ends the running workflow `id`: cancels its timers, its running children and its
    /// remote calls, packs it, resolves its parent's entry, and completes the inbound call
    /// it runs.
    pub(in crate::state) fn end(
        &mut self,
        apply: &mut Apply<'_>,
        id: &str,
        status: WorkflowStatus,
        outcome: StoredOutcome,
    ) {
        let workflow = self.workflows.get_mut(id).expect("ending a known workflow");
        assert!(!workflow.is_finished(), "a workflow ends once");
        workflow.status = status;
        workflow.outcome = Some(outcome.clone());
        workflow.finished_ms = Some(apply.stamp_ms);
        let timers: Vec<u64> = workflow.pending_timers().collect();
        let children: Vec<String> = workflow.pending_children().map(str::to_owned).collect();
        let remote_calls: Vec<(String, u64)> = workflow
            .pending_remote_calls()
            .map(|(remote, seq)| (remote.to_owned(), seq))
            .collect();
        let parent = workflow.parent.clone();
        for timer in timers {
            self.remove_timer(apply, timer);
        }
        for (remote, seq) in remote_calls {
            self.abandon(apply, &remote, seq, &format!("its workflow {id} ended"));
        }
        // A child never outlives its parent: its result would have nowhere to go, and its
        // id must be free when the parent's id is reused after expiry.
        for child in children {
            if self.workflows.contains_key(&child) {
                let message = format!("cancelled: its parent {id} ended");
                self.end(
                    apply,
                    &child,
                    WorkflowStatus::Cancelled,
                    StoredOutcome::Err(Value::Inline(message.into_bytes())),
                );
            }
        }
        self.inbound_ended(apply, id, status, &outcome);
        self.retire(id);
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

    pub(super) fn cancel(
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
            StoredOutcome::Err(Value::Inline(format!("cancelled: {reason}").into_bytes())),
        );
        Ok(Answer::Done)
    }

    /// Forgets workflows finished, and named timers' fire records made, at or before the
    /// command's stamp less `retention_ms` (the same rule for both).
    pub(super) fn expire(&mut self, apply: &mut Apply<'_>, retention_ms: u64) -> Answer {
        let cutoff_ms = apply.stamp_ms.saturating_sub(retention_ms);
        let before = (self.finished.len(), self.fired.len());
        self.finished.retain(|_, w| w.finished_ms() > cutoff_ms);
        self.fired.retain(|_, record| record.fired_ms > cutoff_ms);
        Answer::Expired {
            workflows: (before.0 - self.finished.len()) as u64,
            fires: (before.1 - self.fired.len()) as u64,
        }
    }

    /// Whether an expiry stamped so that its cutoff is `cutoff_ms` would forget something:
    /// a workflow finished, or a named timer's fire recorded, at or before it.
    pub fn expiry_due(&self, cutoff_ms: u64) -> bool {
        self.fired
            .values()
            .any(|record| record.fired_ms <= cutoff_ms)
            || self.finished.values().any(|w| w.finished_ms() <= cutoff_ms)
    }
}
