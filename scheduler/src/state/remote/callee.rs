//! The callee's commands (`scheduler/REMOTE.md` §7, §8): taking a caller's start items in
//! stream order, the completions its workflows' ends produce, the caller's acknowledgements
//! and cancels, and the two timers of each record (deadline, forget).

use super::{InOutcome, InRecord, InState, inbound_name, parse_inbound_name};
use crate::command::{
    Answer, CancelItem, CancelResult, CancelStatus, Due, InboundStart, Refusal, Rejection,
    StartResult, StartStatus, StoredOutcome, Value, WorkflowStatus,
};
use crate::limits::PAYLOAD_MAX_BYTES;
use crate::state::{Apply, Effect, SchedulerState, TimerTarget, Workflow, check_name};

/// How the callee takes a `RemoteStart`'s items.
pub(in crate::state) struct TakeRules {
    /// The index of this cluster's identity in force (names the workflows).
    pub(in crate::state) callee_index: u64,
    /// How long past a deadline a record is kept.
    pub(in crate::state) grace_ms: u64,
    /// The longest deadline accepted, after the stamp.
    pub(in crate::state) deadline_max_ms: u64,
}

impl SchedulerState {
    pub(in crate::state) fn remote_start(
        &mut self,
        apply: &mut Apply<'_>,
        caller: &str,
        items: Vec<InboundStart>,
        rules: &TakeRules,
    ) -> Result<Answer, Rejection> {
        check_name("caller identity", caller)?;
        if rules.callee_index < self.remote.replaced_at {
            return Err(Rejection::IdentityReplaced {
                addressed: rules.callee_index,
                replaced_at: self.remote.replaced_at,
            });
        }
        let mut results = Vec::new();
        for (position, item) in items.into_iter().enumerate() {
            let watermark = self.watermark(caller);
            if item.seq > watermark + 1 {
                break;
            }
            let (seq, call) = (item.seq, item.call.index);
            let status = if seq <= watermark {
                self.retaken(apply, caller, &item)
            } else {
                self.remote
                    .incoming
                    .entry(caller.to_owned())
                    .or_default()
                    .watermark = seq;
                if item.withdrawn {
                    StartStatus::Withdrawn
                } else {
                    self.take(apply, caller, position, item, rules)
                }
            };
            results.push(StartResult { seq, call, status });
        }
        Ok(Answer::RemoteStarted {
            results,
            watermark: self.watermark(caller),
        })
    }

    fn watermark(&self, caller: &str) -> u64 {
        self.remote.incoming.get(caller).map_or(0, |i| i.watermark)
    }

    /// The answer to an item at or below the watermark: from its record, which a withdrawal
    /// forgets.
    fn retaken(&mut self, apply: &mut Apply<'_>, caller: &str, item: &InboundStart) -> StartStatus {
        let Some(record) = self
            .remote
            .incoming
            .get(caller)
            .and_then(|i| i.records.get(&item.seq))
        else {
            #[cfg(feature = "sabotage")]
            if keel_raft::sabotage::on(keel_raft::sabotage::Fault::WindowDedup) && !item.withdrawn {
                return self.sabotaged_retake(apply, caller, item);
            }
            return StartStatus::Forgotten;
        };
        if record.call.index != item.call.index {
            return StartStatus::Conflict;
        }
        let status = match &record.state {
            InState::Running { workflow, .. } => StartStatus::Accepted {
                workflow: workflow.clone(),
                finished: false,
            },
            InState::Completed { workflow, .. } => StartStatus::Accepted {
                workflow: workflow.clone(),
                finished: true,
            },
            InState::Refused { refusal, message } => StartStatus::Refused {
                refusal: *refusal,
                message: message.clone(),
            },
        };
        if item.withdrawn {
            self.forget(apply, caller, item.seq, "withdrawn by the caller");
            return StartStatus::Withdrawn;
        }
        status
    }

    /// Sabotage (`window-dedup`): starts a forgotten item's call again, under a name of its
    /// own so it does not meet the first run's workflow.
    #[cfg(feature = "sabotage")]
    fn sabotaged_retake(
        &mut self,
        apply: &mut Apply<'_>,
        caller: &str,
        item: &InboundStart,
    ) -> StartStatus {
        let name = format!("{}~{}", inbound_name(caller, 0, item.seq), apply.at.index);
        let version = self.kinds.get(&item.kind).cloned().unwrap_or_default();
        let workflow = Workflow::new(
            item.kind.clone(),
            version,
            Value::Inline(item.input.clone()),
            None,
            apply.stamp_ms,
            apply.at,
        );
        apply.effects.push(Effect::Runnable {
            workflow: name.clone(),
            fence: workflow.fence,
            term: apply.at.term,
            owner: None,
        });
        self.workflows.insert(name.clone(), workflow);
        StartStatus::Accepted {
            workflow: name,
            finished: false,
        }
    }

    /// Takes item `seq` = the new watermark: refuses it, or starts its workflow.
    fn take(
        &mut self,
        apply: &mut Apply<'_>,
        caller: &str,
        position: usize,
        item: InboundStart,
        rules: &TakeRules,
    ) -> StartStatus {
        let name = inbound_name(caller, rules.callee_index, item.seq);
        let latest_ms = apply.stamp_ms.saturating_add(rules.deadline_max_ms);
        let forget_at_ms = item
            .deadline_ms
            .min(latest_ms)
            .saturating_add(rules.grace_ms);
        let forget_timer = self.add_timer(
            apply,
            Due::At {
                at_ms: forget_at_ms,
            },
            TimerTarget::Inbound {
                record: name.clone(),
                forget: true,
            },
        );
        let refusal = item.refusal.clone().or_else(|| {
            self.refusal(apply, &name, &item, latest_ms)
                .map(|refusal| (refusal, refusal.as_str().to_owned()))
        });
        let deadline_ms = item.deadline_ms;
        let (state, status) = if let Some((refusal, message)) = refusal {
            (
                InState::Refused {
                    refusal,
                    message: message.clone(),
                },
                StartStatus::Refused { refusal, message },
            )
        } else {
            let state = self.start_inbound(apply, position, &name, &item);
            let status = StartStatus::Accepted {
                workflow: name,
                finished: false,
            };
            (state, status)
        };
        let record = InRecord {
            call: item.call,
            deadline_ms,
            forget_at_ms,
            forget_timer,
            state,
        };
        self.remote
            .incoming
            .get_mut(caller)
            .expect("the watermark was raised")
            .records
            .insert(item.seq, record);
        apply.effects.push(Effect::RemoteChanged);
        status
    }

    /// Starts `item`'s workflow, `name`, with its deadline timer.
    fn start_inbound(
        &mut self,
        apply: &mut Apply<'_>,
        position: usize,
        name: &str,
        item: &InboundStart,
    ) -> InState {
        let version = self.kinds[&item.kind].clone();
        let workflow = Workflow::new(
            item.kind.clone(),
            version,
            apply.value_at(position, item.input.clone()),
            None,
            apply.stamp_ms,
            apply.at,
        );
        apply.effects.push(Effect::Runnable {
            workflow: name.to_owned(),
            fence: workflow.fence,
            term: apply.at.term,
            owner: None,
        });
        self.workflows.insert(name.to_owned(), workflow);
        let deadline_timer = self.add_timer(
            apply,
            Due::At {
                at_ms: item.deadline_ms,
            },
            TimerTarget::Inbound {
                record: name.to_owned(),
                forget: false,
            },
        );
        InState::Running {
            workflow: name.to_owned(),
            deadline_timer,
        }
    }

    /// Why the state refuses to start `item` as workflow `name`, if it does.
    fn refusal(
        &self,
        apply: &Apply<'_>,
        name: &str,
        item: &InboundStart,
        latest_ms: u64,
    ) -> Option<Refusal> {
        if !self.kinds.contains_key(&item.kind) {
            Some(Refusal::UnknownKind)
        } else if item.input.len() > PAYLOAD_MAX_BYTES || self.exists(name) {
            Some(Refusal::Invalid)
        } else if item.deadline_ms <= apply.stamp_ms {
            Some(Refusal::DeadlinePassed)
        } else if item.deadline_ms > latest_ms {
            Some(Refusal::DeadlineTooLong)
        } else {
            None
        }
    }

    /// Forgets record `seq` of `caller` and its timers; cancels its workflow if it runs.
    pub(super) fn forget(&mut self, apply: &mut Apply<'_>, caller: &str, seq: u64, reason: &str) {
        let record = self
            .remote
            .incoming
            .get_mut(caller)
            .and_then(|i| i.records.remove(&seq))
            .expect("forgetting a held record");
        self.remove_timer(apply, record.forget_timer);
        if let InState::Running {
            workflow,
            deadline_timer,
        } = record.state
        {
            self.remove_timer(apply, deadline_timer);
            let message = format!("cancelled: {reason}");
            self.end(
                apply,
                &workflow,
                WorkflowStatus::Cancelled,
                StoredOutcome::Err(Value::Inline(message.into_bytes())),
            );
        }
        apply.effects.push(Effect::RemoteChanged);
    }

    pub(in crate::state) fn remote_completions_acked(
        &mut self,
        apply: &mut Apply<'_>,
        caller: &str,
        acks: &[(u64, u64)],
    ) -> Answer {
        for &(seq, call) in acks {
            let completed = self
                .remote
                .incoming
                .get(caller)
                .and_then(|i| i.records.get(&seq))
                .is_some_and(|r| {
                    r.call.index == call && matches!(r.state, InState::Completed { .. })
                });
            if completed {
                self.forget(apply, caller, seq, "acknowledged");
            }
        }
        Answer::Done
    }

    pub(in crate::state) fn remote_cancel(
        &mut self,
        apply: &mut Apply<'_>,
        caller: &str,
        items: Vec<CancelItem>,
    ) -> Answer {
        let watermark = self.watermark(caller);
        let mut results = Vec::with_capacity(items.len());
        for item in items {
            let record = self
                .remote
                .incoming
                .get(caller)
                .and_then(|i| i.records.get(&item.seq));
            let status = match record {
                _ if item.seq > watermark => CancelStatus::NotTaken,
                None => CancelStatus::NotHeld,
                Some(record) if record.call.index != item.call => CancelStatus::Conflict,
                Some(record) => {
                    let status = match record.state {
                        InState::Running { .. } => CancelStatus::Cancelled,
                        InState::Completed { .. } => CancelStatus::AlreadyFinished,
                        InState::Refused { .. } => CancelStatus::NotHeld,
                    };
                    let reason = format!("the caller cancelled the call: {}", item.reason);
                    self.forget(apply, caller, item.seq, &reason);
                    status
                }
            };
            results.push(CancelResult {
                seq: item.seq,
                call: item.call,
                status,
            });
        }
        Answer::RemoteCancelled { results, watermark }
    }

    /// An inbound record's timer fired: at the deadline its running workflow is cancelled
    /// (the completion says so); at its forget time the record goes.
    pub(in crate::state) fn inbound_timer(
        &mut self,
        apply: &mut Apply<'_>,
        name: &str,
        forget: bool,
    ) {
        let (caller, seq) = parse_inbound_name(name).expect("an inbound timer names its record");
        if forget {
            self.forget(apply, caller, seq, "the call's deadline and grace passed");
            return;
        }
        let record = self
            .remote
            .incoming
            .get_mut(caller)
            .and_then(|i| i.records.get_mut(&seq))
            .expect("a deadline timer's record is held");
        let InState::Running { workflow, .. } = &record.state else {
            unreachable!("a deadline timer is held by a running record");
        };
        let workflow = workflow.clone();
        record.state = InState::Completed {
            workflow: workflow.clone(),
            outcome: InOutcome::Deadline,
        };
        self.end(
            apply,
            &workflow,
            WorkflowStatus::Cancelled,
            StoredOutcome::Err(Value::Inline(
                b"cancelled: the call's deadline passed".to_vec(),
            )),
        );
        apply.effects.push(Effect::RemoteChanged);
    }

    /// Workflow `id` ended with `status` and `outcome`: if it runs an inbound call, its
    /// record holds the completion now.
    pub(in crate::state) fn inbound_ended(
        &mut self,
        apply: &mut Apply<'_>,
        id: &str,
        status: WorkflowStatus,
        outcome: &StoredOutcome,
    ) {
        let Some((caller, seq)) = parse_inbound_name(id) else {
            return;
        };
        let Some(record) = self
            .remote
            .incoming
            .get_mut(caller)
            .and_then(|i| i.records.get_mut(&seq))
        else {
            return;
        };
        let InState::Running {
            workflow,
            deadline_timer,
        } = &record.state
        else {
            return;
        };
        if workflow != id {
            return;
        }
        let deadline_timer = *deadline_timer;
        let value = outcome.value().clone();
        let outcome = match status {
            WorkflowStatus::Completed => InOutcome::Completed(value),
            WorkflowStatus::Cancelled => InOutcome::Cancelled(value),
            _ => InOutcome::Failed(value),
        };
        record.state = InState::Completed {
            workflow: id.to_owned(),
            outcome,
        };
        self.remove_timer(apply, deadline_timer);
        apply.effects.push(Effect::RemoteChanged);
    }
}
