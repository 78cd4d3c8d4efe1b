//! The corruptions the snapshot mutation test makes to a decoded state: each breaks a
//! cross-reference that apply relies on (a timer, a name, a schedule, a fence, an entry, a
//! parent), or changes a field harmlessly.

use proptest::prelude::*;
use proptest::sample::Index;

use super::FAR_MS;
use crate::command::{EntryState, StoredOutcome, Value, WorkflowStatus};
use crate::state::{EntryKind, FireRecord, SchedulerState, TimerTarget};

/// A structural change to a decoded state. Indexes pick among what the state holds.
#[derive(Debug, Clone)]
pub(super) enum Mutation {
    /// Removes a timer from the queue (its target still points at it).
    DeleteTimer(Index),
    /// Removes a timer from the due-order index only.
    DropFromDueIndex(Index),
    /// Moves a timer in the due-order index only.
    MoveInDueIndex(Index, u64),
    /// Changes a timer's due time everywhere (harmless).
    ChangeDue(Index, u64),
    /// Points a timer at another target.
    Retarget(Index, Index, u32),
    /// Forgets a pending name.
    DropNamed(Index),
    /// Points a name at another timer.
    RepointNamed(Index, Index),
    /// Records a fire for a pending name.
    FireNamed(Index),
    /// Raises a workflow's fence.
    RaiseFence(Index, u64),
    /// Lowers the last applied index.
    LowerApplied(u64),
    /// Removes a running workflow.
    RemoveWorkflow(Index),
    /// Sets a workflow's status to running or finished (it had the other), leaving the rest.
    SetStatus(Index, bool),
    /// Sets a running workflow's finish time, or clears a finished one's.
    SetFinished(Index, Option<u64>),
    /// Sets the state of a running workflow's entry.
    SetEntryState(Index, u8),
    /// Sets the timer of a running workflow's sleep or signal entry.
    SetEntryTimer(Index, Index),
    /// Renames the child of a running workflow's call entry.
    RenameChild(Index),
    /// Gives a workflow another parent.
    Reparent(Index, Index, u32),
    /// Truncates a journal.
    Truncate(Index, usize),
    /// Points a schedule at another timer.
    RepointSchedule(Index, Index),
    /// Removes a schedule.
    RemoveSchedule(Index),
    /// Sets the last timer id handed out: below a pending timer's, or to the largest id.
    SetNextId(Index, bool),
    /// Corrupts the state of calls between clusters.
    Remote(super::remote::RemoteMutation),
}

pub(super) fn mutation() -> impl Strategy<Value = Mutation> {
    let i = any::<Index>;
    prop_oneof![
        i().prop_map(Mutation::DeleteTimer),
        i().prop_map(Mutation::DropFromDueIndex),
        (i(), 0u64..FAR_MS).prop_map(|(t, d)| Mutation::MoveInDueIndex(t, d)),
        (i(), 0u64..FAR_MS).prop_map(|(t, d)| Mutation::ChangeDue(t, d)),
        (i(), i(), 0u32..5).prop_map(|(t, w, s)| Mutation::Retarget(t, w, s)),
        i().prop_map(Mutation::DropNamed),
        (i(), i()).prop_map(|(n, t)| Mutation::RepointNamed(n, t)),
        i().prop_map(Mutation::FireNamed),
        (i(), 1u64..1_000).prop_map(|(w, by)| Mutation::RaiseFence(w, by)),
        (1u64..1_000).prop_map(Mutation::LowerApplied),
        i().prop_map(Mutation::RemoveWorkflow),
        (i(), any::<bool>()).prop_map(|(w, running)| Mutation::SetStatus(w, running)),
        (i(), prop::option::of(0u64..1_000)).prop_map(|(w, f)| Mutation::SetFinished(w, f)),
        (i(), 0u8..4).prop_map(|(e, s)| Mutation::SetEntryState(e, s)),
        (i(), i()).prop_map(|(e, t)| Mutation::SetEntryTimer(e, t)),
        i().prop_map(Mutation::RenameChild),
        (i(), i(), 0u32..5).prop_map(|(w, p, s)| Mutation::Reparent(w, p, s)),
        (i(), 0usize..4).prop_map(|(w, len)| Mutation::Truncate(w, len)),
        (i(), i()).prop_map(|(s, t)| Mutation::RepointSchedule(s, t)),
        i().prop_map(Mutation::RemoveSchedule),
        (i(), any::<bool>()).prop_map(|(t, exhausted)| Mutation::SetNextId(t, exhausted)),
        super::remote::mutation().prop_map(Mutation::Remote),
    ]
}

fn pick<T: Clone>(items: &[T], index: Index) -> Option<T> {
    (!items.is_empty()).then(|| items[index.index(items.len())].clone())
}

/// Applies `mutation` to `state`; a mutation that finds nothing to act on does nothing.
#[expect(clippy::too_many_lines, reason = "one arm per mutation")]
pub(super) fn mutate(state: &mut SchedulerState, mutation: &Mutation) {
    if let Mutation::Remote(remote) = mutation {
        super::remote::mutate(state, remote);
        return;
    }
    let timer_ids: Vec<u64> = state.timers.in_due_order().map(|(_, id)| id).collect();
    let workflow_ids: Vec<String> = state.workflows.keys().cloned().collect();
    let (running, finished): (Vec<String>, Vec<String>) = workflow_ids
        .iter()
        .cloned()
        .partition(|id| !state.workflows[id].is_finished());
    // Entries of running workflows: what apply acts on.
    let entries: Vec<(String, usize)> = running
        .iter()
        .flat_map(|id| (0..state.workflows[id].journal.len()).map(move |seq| (id.clone(), seq)))
        .collect();
    let mut names: Vec<String> = state.named.keys().cloned().collect();
    names.sort();
    let schedules: Vec<String> = state.schedules.keys().cloned().collect();
    let (by_due, timers, next_id) = state.timers.parts_mut();
    match *mutation {
        Mutation::DeleteTimer(t) => {
            if let Some(id) = pick(&timer_ids, t)
                && let Some(timer) = timers.remove(&id)
            {
                by_due.remove(&(timer.due_ms, id));
            }
        }
        Mutation::DropFromDueIndex(t) => {
            if let Some(id) = pick(&timer_ids, t) {
                by_due.retain(|&(_, i)| i != id);
            }
        }
        Mutation::MoveInDueIndex(t, due_ms) => {
            if let Some(id) = pick(&timer_ids, t) {
                by_due.retain(|&(_, i)| i != id);
                by_due.insert((due_ms, id));
            }
        }
        Mutation::ChangeDue(t, due_ms) => {
            if let Some(id) = pick(&timer_ids, t)
                && let Some(timer) = timers.get_mut(&id)
            {
                by_due.remove(&(timer.due_ms, id));
                timer.due_ms = due_ms;
                by_due.insert((due_ms, id));
            }
        }
        Mutation::Retarget(t, w, seq) => {
            if let (Some(id), Some(workflow)) = (pick(&timer_ids, t), pick(&workflow_ids, w))
                && let Some(timer) = timers.get_mut(&id)
            {
                timer.target = TimerTarget::Entry { workflow, seq };
            }
        }
        Mutation::DropNamed(n) => {
            if let Some(name) = pick(&names, n) {
                state.named.remove(&name);
            }
        }
        Mutation::RepointNamed(n, t) => {
            if let (Some(name), Some(id)) = (pick(&names, n), pick(&timer_ids, t)) {
                state.named.insert(name, id);
            }
        }
        Mutation::FireNamed(n) => {
            if let Some(name) = pick(&names, n) {
                let record = FireRecord {
                    id: 0,
                    term: 1,
                    index: 1,
                    due_ms: 0,
                    fired_ms: 0,
                };
                state.fired.insert(name, record);
            }
        }
        Mutation::RaiseFence(w, by) => {
            if let Some(id) = pick(&workflow_ids, w)
                && let Some(workflow) = state.workflows.get_mut(&id)
            {
                workflow.fence += by;
            }
        }
        Mutation::LowerApplied(by) => {
            state.applied_index = state.applied_index.saturating_sub(by);
        }
        Mutation::RemoveWorkflow(w) => {
            if let Some(id) = pick(&running, w) {
                state.workflows.remove(&id);
            }
        }
        Mutation::SetStatus(w, to_running) => {
            if let Some(id) = pick(if to_running { &finished } else { &running }, w)
                && let Some(workflow) = state.workflows.get_mut(&id)
            {
                workflow.status = if to_running {
                    WorkflowStatus::Running
                } else {
                    WorkflowStatus::Completed
                };
            }
        }
        Mutation::SetFinished(w, finished_ms) => {
            if let Some(id) = pick(
                if finished_ms.is_some() {
                    &running
                } else {
                    &finished
                },
                w,
            ) && let Some(workflow) = state.workflows.get_mut(&id)
            {
                workflow.finished_ms = finished_ms;
            }
        }
        Mutation::SetEntryState(e, choice) => {
            if let Some((id, seq)) = pick(&entries, e)
                && let Some(workflow) = state.workflows.get_mut(&id)
            {
                workflow.journal[seq].state = match choice {
                    0 => EntryState::Pending { attempts: 0 },
                    1 => EntryState::TimedOut,
                    2 => EntryState::Done(StoredOutcome::Ok(Value::Inline(Vec::new()))),
                    _ => EntryState::Done(StoredOutcome::Err(Value::Inline(b"x".to_vec()))),
                };
            }
        }
        Mutation::SetEntryTimer(e, t) => {
            let new = pick(&timer_ids, t).unwrap_or(7);
            if let Some((id, seq)) = pick(&entries, e)
                && let Some(workflow) = state.workflows.get_mut(&id)
            {
                match &mut workflow.journal[seq].kind {
                    EntryKind::Sleep { timer } => *timer = new,
                    EntryKind::Signal { timer, .. } => *timer = Some(new),
                    EntryKind::Remote { seq, .. } => *seq = new,
                    EntryKind::Step { .. } | EntryKind::Call { .. } => {}
                }
            }
        }
        Mutation::RenameChild(e) => {
            if let Some((id, seq)) = pick(&entries, e)
                && let Some(workflow) = state.workflows.get_mut(&id)
                && let EntryKind::Call { child, .. } = &mut workflow.journal[seq].kind
            {
                child.push_str("/x");
            }
        }
        Mutation::Reparent(w, p, seq) => {
            if let (Some(id), Some(parent)) = (pick(&workflow_ids, w), pick(&workflow_ids, p))
                && let Some(workflow) = state.workflows.get_mut(&id)
            {
                workflow.parent = Some((parent, seq));
            }
        }
        Mutation::Truncate(w, len) => {
            if let Some(id) = pick(&workflow_ids, w)
                && let Some(workflow) = state.workflows.get_mut(&id)
            {
                workflow.journal.truncate(len);
            }
        }
        Mutation::RepointSchedule(s, t) => {
            if let (Some(name), Some(id)) = (pick(&schedules, s), pick(&timer_ids, t))
                && let Some(schedule) = state.schedules.get_mut(&name)
            {
                schedule.timer = id;
            }
        }
        Mutation::RemoveSchedule(s) => {
            if let Some(name) = pick(&schedules, s) {
                state.schedules.remove(&name);
            }
        }
        Mutation::SetNextId(_, true) => *next_id = u64::MAX,
        Mutation::SetNextId(t, false) => {
            if let Some(id) = pick(&timer_ids, t) {
                *next_id = id - 1;
            }
        }
        Mutation::Remote(_) => unreachable!("handled above"),
    }
}
