//! The invariants of calls between clusters (`scheduler/REMOTE.md` §6, §7), checked on a
//! whole state like the rest of `state::consistency`:
//! - C1: every seq between a stream's `acked` and its next seq is in its outbox, pending or
//!   withdrawing; `acked` is below the next seq, and every item's seq too;
//! - C2: an unresolved item's call is a pending remote entry of a running workflow, and
//!   its deadline timer targets that entry; a running workflow's pending remote entry has
//!   its unresolved item;
//! - C3: a resolved item (withdrawing, cancelling) holds no timer; a withdrawal is above
//!   `acked` (at or below it, it would be a cancel);
//! - E1: every record's seq is at or below its caller's watermark;
//! - E2: a running record's workflow is running, named after the record, and its deadline
//!   timer targets the record;
//! - E3: every record holds a pending forget timer that targets it.

use super::{InState, OutItem, OutState, Outgoing, parse_inbound_name};
use crate::state::{EntryKind, EntryState, SchedulerState, TimerTarget};

/// A call between clusters whose parts do not agree: a snapshot holding one is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("remote calls, {stream}: {what}")]
pub struct RemoteInconsistency {
    /// The stream: a remote's alias, a caller's identity, or an inbound record's name.
    stream: String,
    /// What is wrong.
    what: String,
}

impl RemoteInconsistency {
    pub(in crate::state) fn new(stream: &str, what: String) -> Self {
        Self {
            stream: stream.to_owned(),
            what,
        }
    }
}

impl SchedulerState {
    pub(in crate::state) fn check_remote(&self) -> Result<(), RemoteInconsistency> {
        for (alias, stream) in &self.remote.outgoing {
            self.check_outgoing(alias, stream)
                .map_err(|what| RemoteInconsistency::new(alias, what))?;
        }
        for (caller, incoming) in &self.remote.incoming {
            for (&seq, record) in &incoming.records {
                let broken = |what: String| RemoteInconsistency::new(caller, what);
                if seq == 0 || seq > incoming.watermark {
                    return Err(broken(format!(
                        "record {seq} is outside 1..={}",
                        incoming.watermark
                    )));
                }
                if !self.targets_record(record.forget_timer, caller, seq, true) {
                    return Err(broken(format!("record {seq} has no forget timer")));
                }
                if let InState::Running {
                    workflow,
                    deadline_timer,
                } = &record.state
                {
                    let named = parse_inbound_name(workflow) == Some((caller.as_str(), seq));
                    if !named || !self.workflows.contains_key(workflow) {
                        return Err(broken(format!(
                            "running record {seq}'s workflow {workflow} is not its running workflow"
                        )));
                    }
                    if !self.targets_record(*deadline_timer, caller, seq, false) {
                        return Err(broken(format!(
                            "running record {seq} has no deadline timer"
                        )));
                    }
                }
            }
        }
        Ok(())
    }

    fn check_outgoing(&self, alias: &str, stream: &Outgoing) -> Result<(), String> {
        if stream.next_seq == 0 || stream.acked >= stream.next_seq {
            return Err(format!(
                "acked {} is not below the next seq {}",
                stream.acked, stream.next_seq
            ));
        }
        if let Some(binding) = &stream.binding
            && binding.generation > self.applied_index
        {
            return Err(format!(
                "its binding's generation {} is past the applied index",
                binding.generation
            ));
        }
        if let Some((&last, _)) = stream.outbox.last_key_value()
            && last >= stream.next_seq
        {
            return Err(format!("item {last} is at or past the next seq"));
        }
        for seq in stream.acked + 1..stream.next_seq {
            let delivering = stream
                .outbox
                .get(&seq)
                .is_some_and(|item| matches!(item.state, OutState::Pending | OutState::Withdraw));
            if !delivering {
                return Err(format!(
                    "seq {seq}, not known taken, is not pending or withdrawing"
                ));
            }
        }
        for (&seq, item) in &stream.outbox {
            self.check_item(alias, stream.acked, seq, item)?;
        }
        Ok(())
    }

    fn check_item(&self, alias: &str, acked: u64, seq: u64, item: &OutItem) -> Result<(), String> {
        if item.call.index > self.applied_index {
            return Err(format!("item {seq}'s call is past the applied index"));
        }
        match (&item.state, item.deadline_timer) {
            (OutState::Pending | OutState::Started { .. }, Some(timer)) => {
                let waits = self
                    .workflows
                    .get(&item.call.workflow)
                    .and_then(|w| w.journal.get(item.call.position as usize))
                    .is_some_and(|entry| {
                        matches!(entry.state, EntryState::Pending { .. })
                            && matches!(&entry.kind, EntryKind::Remote { remote, seq: s, .. }
                                if remote == alias && *s == seq)
                    });
                let targets = self.timers.get(timer).is_some_and(|t| {
                    t.target
                        == TimerTarget::Entry {
                            workflow: item.call.workflow.clone(),
                            seq: item.call.position,
                        }
                });
                if waits && targets {
                    Ok(())
                } else {
                    Err(format!(
                        "unresolved item {seq} is not waited on by its entry with its timer"
                    ))
                }
            }
            (OutState::Withdraw, None) if seq <= acked => {
                Err(format!("item {seq} withdraws a call known taken"))
            }
            (OutState::Withdraw | OutState::Cancel { .. }, None) => Ok(()),
            _ => Err(format!(
                "item {seq}'s deadline timer disagrees with its state"
            )),
        }
    }

    /// C2 from the entry's side: running workflow `id`'s pending remote entry `position`
    /// has its unresolved item.
    pub(in crate::state) fn check_remote_entry(
        &self,
        id: &str,
        position: u32,
        remote: &str,
        seq: u64,
    ) -> Result<(), RemoteInconsistency> {
        let has_item = self
            .remote
            .outgoing
            .get(remote)
            .and_then(|o| o.outbox.get(&seq))
            .is_some_and(|item| {
                matches!(item.state, OutState::Pending | OutState::Started { .. })
                    && item.call.workflow == id
                    && item.call.position == position
            });
        if has_item {
            return Ok(());
        }
        Err(RemoteInconsistency::new(
            remote,
            format!("entry {position} of {id} waits on seq {seq}, which has no unresolved item"),
        ))
    }

    /// Whether entry `position` of running workflow `workflow` is an unresolved remote call
    /// whose item holds deadline timer `id`.
    pub(in crate::state) fn holds_deadline(&self, workflow: &str, position: u32, id: u64) -> bool {
        let Some(EntryKind::Remote { remote, seq, .. }) = self
            .workflows
            .get(workflow)
            .and_then(|w| w.journal.get(position as usize))
            .map(|entry| &entry.kind)
        else {
            return false;
        };
        self.remote
            .outgoing
            .get(remote)
            .and_then(|o| o.outbox.get(seq))
            .is_some_and(|item| item.deadline_timer == Some(id))
    }

    /// Whether inbound record `name` holds timer `id` as its forget (or deadline) timer.
    pub(in crate::state) fn inbound_holds(&self, name: &str, forget: bool, id: u64) -> bool {
        let Some((caller, seq)) = parse_inbound_name(name) else {
            return false;
        };
        self.remote
            .incoming
            .get(caller)
            .and_then(|i| i.records.get(&seq))
            .is_some_and(|record| match (&record.state, forget) {
                (_, true) => record.forget_timer == id,
                (InState::Running { deadline_timer, .. }, false) => *deadline_timer == id,
                _ => false,
            })
    }

    /// Whether timer `id` is pending and targets record `seq` of `caller`.
    fn targets_record(&self, id: u64, caller: &str, seq: u64, forget: bool) -> bool {
        self.timers.get(id).is_some_and(|timer| {
            matches!(&timer.target, TimerTarget::Inbound { record, forget: f }
                if *f == forget && parse_inbound_name(record) == Some((caller, seq)))
        })
    }
}
