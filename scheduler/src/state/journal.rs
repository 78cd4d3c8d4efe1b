//! The journal commands of a run (step records, sleeps, signal waits, child calls), each
//! fenced and naming its entry by sequence number; and signals sent to a workflow, which
//! resolve its wait or are buffered for a later one.

use super::{
    Apply, Effect, EntryKind, JournalEntry, SchedulerState, TimerTarget, Workflow, check_len,
    check_name, check_outcome,
};
use crate::command::{Answer, Due, EntryState, Rejection, StepRecord, StoredOutcome};
use crate::limits::{NAME_MAX_BYTES, PAYLOAD_MAX_BYTES, SIGNALS_BUFFERED_MAX};

impl SchedulerState {
    pub(super) fn step(
        &mut self,
        apply: &Apply<'_>,
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
                StepRecord::Done(outcome) => EntryState::Done(apply.outcome(outcome)),
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
                entry.state = EntryState::Done(apply.outcome(outcome));
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

    pub(super) fn sleep(
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

    pub(super) fn wait_signal(
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
            let state = EntryState::Done(StoredOutcome::Ok(payload));
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

    pub(super) fn call(
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
        if self.exists(&child) {
            // A finished child of an earlier workflow of this id, not expired yet.
            return Err(Rejection::Invalid {
                what: "child workflow id".to_owned(),
                reason: format!("{child} still exists; retry after it expires"),
            });
        }
        let workflow = Workflow::new(
            kind,
            version,
            apply.value(input),
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

    pub(super) fn signal(
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
            buffered.push(apply.value(payload));
            return Ok(Answer::Done);
        };
        entry.state = EntryState::Done(StoredOutcome::Ok(apply.value(payload)));
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
}

/// The existing entry `seq` of `workflow` if it is the operation `kind`; `None` when `seq` is
/// the next entry.
pub(super) fn existing_entry<'w>(
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
