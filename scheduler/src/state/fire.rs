//! `FireTimers`: fires each due timer once, never before its due time by the fire's stamp,
//! and resolves what it was for: a sleep, a signal wait's timeout, a remote call's deadline,
//! a named timer (recording its fire), a schedule's occurrence, or an inbound remote call's
//! deadline or forget time.

use super::{Apply, Effect, EntryKind, FireRecord, SchedulerState, Timer, TimerTarget};
use crate::command::{Answer, EntryState, StoredOutcome, Value};

impl SchedulerState {
    pub(super) fn fire_timers(&mut self, apply: &mut Apply<'_>, ids: &[u64]) -> Answer {
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
        #[cfg(feature = "sabotage")]
        if keel_raft::sabotage::on(keel_raft::sabotage::Fault::UnorderedAnswers) {
            use std::hash::BuildHasher;
            static SEED: std::sync::OnceLock<std::collections::hash_map::RandomState> =
                std::sync::OnceLock::new();
            let seed = SEED.get_or_init(std::collections::hash_map::RandomState::new);
            fired.sort_by_key(|id| seed.hash_one(id));
        }
        Answer::Fired { ids: fired }
    }

    fn fire(&mut self, apply: &mut Apply<'_>, id: u64, timer: Timer) {
        match timer.target {
            TimerTarget::Entry { workflow, seq } => {
                let entry = self
                    .workflows
                    .get_mut(&workflow)
                    .and_then(|w| w.journal.get_mut(seq as usize))
                    .expect("a pending entry timer belongs to a running workflow's entry");
                match &mut entry.kind {
                    EntryKind::Sleep { .. } => {
                        entry.state =
                            EntryState::Done(StoredOutcome::Ok(Value::Inline(Vec::new())));
                    }
                    EntryKind::Signal { timer, .. } => {
                        *timer = None;
                        entry.state = EntryState::TimedOut;
                    }
                    EntryKind::Remote { .. } => {
                        self.remote_deadline(apply, &workflow, seq);
                        return;
                    }
                    EntryKind::Step { .. } | EntryKind::Call { .. } => {
                        unreachable!("only sleeps, signal waits and remote calls hold timers")
                    }
                }
                apply.effects.push(Effect::Changed { workflow });
            }
            TimerTarget::Inbound { record, forget } => self.inbound_timer(apply, &record, forget),
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
}
