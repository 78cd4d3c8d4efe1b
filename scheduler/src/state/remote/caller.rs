//! The caller's commands (`scheduler/REMOTE.md` §6): a workflow's remote call, the binding,
//! and what the callee answered — starts taken or refused, completions, cancels — plus the
//! deadline and the calling workflow's end, which turn an unresolved call into a withdrawal
//! or a cancel for the driver to deliver.

use super::{Binding, OutItem, OutState, Outgoing};
use crate::command::{
    AckStatus, Answer, CallId, CancelResult, CancelStatus, Completion, Due, EntryState, Refusal,
    Rejection, RemoteOutcome, StartResult, StartStatus, StoredOutcome, Value,
};
use crate::limits::PAYLOAD_MAX_BYTES;
use crate::state::journal::existing_entry;
use crate::state::{
    Apply, Effect, EntryKind, JournalEntry, SchedulerState, TimerTarget, check_len, check_name,
};

/// A remote call as `RemoteCall` asks for it.
pub(in crate::state) struct CallRequest {
    pub(in crate::state) workflow: String,
    pub(in crate::state) fence: u64,
    pub(in crate::state) position: u32,
    pub(in crate::state) remote: String,
    pub(in crate::state) kind: String,
    pub(in crate::state) input: Vec<u8>,
    pub(in crate::state) deadline_after_ms: u64,
}

impl SchedulerState {
    pub(in crate::state) fn remote_call(
        &mut self,
        apply: &mut Apply<'_>,
        call: CallRequest,
    ) -> Result<Answer, Rejection> {
        check_name("remote", &call.remote)?;
        check_name("workflow kind", &call.kind)?;
        check_len("remote call input", call.input.len(), PAYLOAD_MAX_BYTES)?;
        let entry_kind = EntryKind::Remote {
            remote: call.remote.clone(),
            kind: call.kind.clone(),
            seq: 0,
        };
        let workflow = self.fenced(&call.workflow, call.fence)?;
        if let Some(entry) = existing_entry(workflow, call.position, &entry_kind)? {
            return Ok(Answer::Entry(entry.state.clone()));
        }
        let timer = self.add_timer(
            apply,
            Due::After {
                delay_ms: call.deadline_after_ms,
            },
            TimerTarget::Entry {
                workflow: call.workflow.clone(),
                seq: call.position,
            },
        );
        let deadline_ms = self.timers.get(timer).expect("just armed").due_ms;
        let stream = self.remote.outgoing.entry(call.remote.clone()).or_default();
        let seq = stream.next_seq;
        stream.next_seq += 1;
        stream.outbox.insert(
            seq,
            OutItem {
                call: CallId {
                    index: apply.at.index,
                    workflow: call.workflow.clone(),
                    position: call.position,
                },
                kind: call.kind.clone(),
                input: apply.value(call.input),
                deadline_ms,
                deadline_timer: Some(timer),
                state: OutState::Pending,
            },
        );
        self.running(&call.workflow)?.journal.push(JournalEntry {
            kind: EntryKind::Remote {
                remote: call.remote,
                kind: call.kind,
                seq,
            },
            state: EntryState::Pending { attempts: 0 },
            fence: call.fence,
        });
        apply.effects.push(Effect::RemoteChanged);
        Ok(Answer::Entry(EntryState::Pending { attempts: 0 }))
    }

    pub(in crate::state) fn remote_bind(
        &mut self,
        apply: &mut Apply<'_>,
        remote: String,
        callee: String,
    ) -> Result<Answer, Rejection> {
        check_name("remote", &remote)?;
        check_name("callee identity", &callee)?;
        let stream = self.remote.outgoing.entry(remote).or_default();
        let binding = stream.binding.get_or_insert(Binding {
            callee,
            generation: apply.at.index,
        });
        let answer = Answer::RemoteBound {
            callee: binding.callee.clone(),
            generation: binding.generation,
        };
        apply.effects.push(Effect::RemoteChanged);
        Ok(answer)
    }

    pub(in crate::state) fn remote_unbind(
        &mut self,
        apply: &mut Apply<'_>,
        remote: &str,
    ) -> Answer {
        if !self.remote.outgoing.contains_key(remote) {
            return Answer::RemoteUnbound { failed: 0 };
        }
        let failed = self.fail_stream(
            apply,
            remote,
            &format!(
                "callee-lost: {remote} was rebound by an operator; whether its old callee took this call is unknown"
            ),
        );
        let stream = self
            .remote
            .outgoing
            .get_mut(remote)
            .expect("unbinding a known stream");
        let retired = stream
            .binding
            .take()
            .map(|b| b.callee)
            .or(stream.retired.take());
        *stream = Outgoing {
            retired,
            ..Outgoing::default()
        };
        apply.effects.push(Effect::RemoteChanged);
        Answer::RemoteUnbound { failed }
    }

    /// Settles every item of the stream to `remote`: its unresolved calls fail with
    /// `message`, its withdrawals and cancels are dropped. Returns how many calls failed.
    pub(super) fn fail_stream(
        &mut self,
        apply: &mut Apply<'_>,
        remote: &str,
        message: &str,
    ) -> u64 {
        let seqs: Vec<u64> = self.remote.outgoing[remote]
            .outbox
            .keys()
            .copied()
            .collect();
        let mut failed = 0;
        for seq in seqs {
            let unresolved = matches!(
                self.remote.outgoing[remote].outbox[&seq].state,
                OutState::Pending | OutState::Started { .. }
            );
            failed += u64::from(unresolved);
            self.settle(apply, remote, seq, failed_state(message.to_owned()));
        }
        failed
    }

    /// The stream to `remote` if it is bound under `generation`.
    fn bound_under(&mut self, remote: &str, generation: u64) -> Option<&mut Outgoing> {
        self.remote.outgoing.get_mut(remote).filter(|o| {
            o.binding
                .as_ref()
                .is_some_and(|b| b.generation == generation)
        })
    }

    /// Item `seq` of `remote` if it carries call `call`.
    fn item(&self, remote: &str, seq: u64, call: u64) -> Option<&OutItem> {
        self.remote
            .outgoing
            .get(remote)
            .and_then(|o| o.outbox.get(&seq))
            .filter(|item| item.call.index == call)
    }

    pub(in crate::state) fn remote_starts_acked(
        &mut self,
        apply: &mut Apply<'_>,
        remote: &str,
        generation: u64,
        watermark: u64,
        results: Vec<StartResult>,
    ) -> Answer {
        if self.bound_under(remote, generation).is_none() {
            return Answer::Done;
        }
        // Items taken now await their completions: the fetch driver starts its Get.
        apply.effects.push(Effect::RemoteChanged);
        let mut taken = watermark;
        for result in results {
            taken = taken.max(result.seq);
            let Some(item) = self.item(remote, result.seq, result.call) else {
                continue;
            };
            let unresolved = matches!(item.state, OutState::Pending | OutState::Started { .. });
            let resolution = match result.status {
                StartStatus::Accepted { workflow, .. } => {
                    let item = self.outbox_item(remote, result.seq);
                    if item.state == OutState::Pending {
                        item.state = OutState::Started { workflow };
                    }
                    continue;
                }
                StartStatus::Withdrawn if unresolved => continue,
                StartStatus::Withdrawn
                | StartStatus::Refused {
                    refusal: Refusal::DeadlinePassed,
                    ..
                }
                | StartStatus::Forgotten => EntryState::TimedOut,
                StartStatus::Refused { refusal, message } => failed_state(format!(
                    "{remote} refused the call ({}): {message}",
                    refusal.as_str()
                )),
                StartStatus::Conflict => failed_state(format!(
                    "{remote} holds this call's seq {} under another call (a caller re-created from old data?)",
                    result.seq
                )),
            };
            self.settle(apply, remote, result.seq, resolution);
        }
        self.raise_acked(remote, taken);
        Answer::Done
    }

    pub(in crate::state) fn remote_complete(
        &mut self,
        apply: &mut Apply<'_>,
        remote: &str,
        generation: u64,
        completions: Vec<Completion>,
    ) -> Answer {
        let bound = self.bound_under(remote, generation).is_some();
        let mut acks = Vec::with_capacity(completions.len());
        for (position, completion) in completions.into_iter().enumerate() {
            let ack = match self.item(remote, completion.seq, completion.call) {
                _ if !bound => AckStatus::CallerGone,
                Some(item)
                    if matches!(item.state, OutState::Withdraw | OutState::Cancel { .. }) =>
                {
                    self.settle(apply, remote, completion.seq, EntryState::TimedOut);
                    AckStatus::AlreadyResolved("timed out or its workflow ended".to_owned())
                }
                Some(_) => {
                    let state = resolution(apply, position, completion.outcome);
                    self.settle(apply, remote, completion.seq, state);
                    AckStatus::Resolved
                }
                None if self.remote.outgoing[remote].next_seq > completion.seq => {
                    AckStatus::AlreadyResolved("settled before".to_owned())
                }
                None => AckStatus::CallerGone,
            };
            if ack != AckStatus::CallerGone {
                self.raise_acked(remote, completion.seq);
            }
            acks.push(ack);
        }
        Answer::RemoteAcks { acks }
    }

    pub(in crate::state) fn remote_cancels_acked(
        &mut self,
        apply: &mut Apply<'_>,
        remote: &str,
        generation: u64,
        results: Vec<CancelResult>,
    ) -> Answer {
        if self.bound_under(remote, generation).is_none() {
            return Answer::Done;
        }
        for result in results {
            let cancelling = self
                .item(remote, result.seq, result.call)
                .is_some_and(|item| matches!(item.state, OutState::Cancel { .. }));
            if cancelling && result.status != CancelStatus::NotTaken {
                self.settle(apply, remote, result.seq, EntryState::TimedOut);
            }
        }
        Answer::Done
    }

    /// A remote call's deadline came (its timer fired): the entry at `position` of
    /// `workflow` times out.
    pub(in crate::state) fn remote_deadline(
        &mut self,
        apply: &mut Apply<'_>,
        workflow: &str,
        position: u32,
    ) {
        let entry = self
            .workflows
            .get_mut(workflow)
            .and_then(|w| w.journal.get_mut(position as usize))
            .expect("a deadline timer targets a running workflow's entry");
        let EntryKind::Remote { remote, seq, .. } = &entry.kind else {
            unreachable!("the entry holding a deadline is a remote call");
        };
        let (remote, seq) = (remote.clone(), *seq);
        entry.state = EntryState::TimedOut;
        apply.effects.push(Effect::Changed {
            workflow: workflow.to_owned(),
        });
        self.abandon(apply, &remote, seq, "the call's deadline passed");
    }

    /// Unresolved call `seq` of `remote` is resolved here without the callee (deadline, or
    /// its workflow ended): its item becomes a withdrawal if it is not known to be taken,
    /// else a cancel.
    pub(in crate::state) fn abandon(
        &mut self,
        apply: &mut Apply<'_>,
        remote: &str,
        seq: u64,
        reason: &str,
    ) {
        let stream = self
            .remote
            .outgoing
            .get_mut(remote)
            .expect("an unresolved call's stream");
        let acked = stream.acked;
        let item = stream
            .outbox
            .get_mut(&seq)
            .expect("an unresolved call has its item");
        let timer = item.deadline_timer.take();
        item.state = match item.state {
            OutState::Pending if seq > acked => OutState::Withdraw,
            _ => OutState::Cancel {
                reason: reason.to_owned(),
            },
        };
        if let Some(timer) = timer {
            self.remove_timer(apply, timer);
        }
        apply.effects.push(Effect::RemoteChanged);
    }

    fn outbox_item(&mut self, remote: &str, seq: u64) -> &mut OutItem {
        self.remote
            .outgoing
            .get_mut(remote)
            .and_then(|o| o.outbox.get_mut(&seq))
            .expect("an item found before")
    }

    /// Removes item `seq` of `remote`, which the callee settled, and its deadline timer;
    /// resolves the call's entry with `state` if it was unresolved.
    fn settle(&mut self, apply: &mut Apply<'_>, remote: &str, seq: u64, state: EntryState) {
        let item = self
            .remote
            .outgoing
            .get_mut(remote)
            .and_then(|o| o.outbox.remove(&seq))
            .expect("settling an item found before");
        if let Some(timer) = item.deadline_timer {
            self.remove_timer(apply, timer);
        }
        if matches!(item.state, OutState::Pending | OutState::Started { .. }) {
            let entry = self
                .workflows
                .get_mut(&item.call.workflow)
                .and_then(|w| w.journal.get_mut(item.call.position as usize))
                .expect("an unresolved call's workflow runs and holds its entry");
            entry.state = state;
            apply.effects.push(Effect::Changed {
                workflow: item.call.workflow,
            });
        }
        apply.effects.push(Effect::RemoteChanged);
    }

    /// The callee took every seq up to `taken` (capped at the last seq handed out): raises
    /// `acked`, and withdrawals at or below it become cancels.
    fn raise_acked(&mut self, remote: &str, taken: u64) {
        let stream = self
            .remote
            .outgoing
            .get_mut(remote)
            .expect("raising a known stream");
        let taken = taken.min(stream.next_seq - 1);
        if taken <= stream.acked {
            return;
        }
        stream.acked = taken;
        for item in stream.outbox.range_mut(..=taken).map(|(_, item)| item) {
            if item.state == OutState::Withdraw {
                item.state = OutState::Cancel {
                    reason: "resolved before the callee took it".to_owned(),
                };
            }
        }
    }
}

/// A failed call's entry state, with a message the state composed.
fn failed_state(message: String) -> EntryState {
    EntryState::Done(StoredOutcome::Err(Value::Inline(message.into_bytes())))
}

/// The entry state a completion resolves a call with; its value is the command's value
/// `position`.
fn resolution(apply: &Apply<'_>, position: usize, outcome: RemoteOutcome) -> EntryState {
    match outcome {
        RemoteOutcome::Completed(value) => {
            EntryState::Done(StoredOutcome::Ok(apply.value_at(position, value)))
        }
        RemoteOutcome::Failed(message) | RemoteOutcome::Cancelled(message) => EntryState::Done(
            StoredOutcome::Err(apply.value_at(position, message.into_bytes())),
        ),
        RemoteOutcome::Deadline => EntryState::TimedOut,
    }
}
