//! What `keel status` and the metrics endpoint show of remote calls (REMOTE.md §6): each
//! call's state, derived from its journal entry and outbox item, with its remote driver's
//! attempts and last error; call and record counts by state.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::{Arc, Mutex};

use super::driver::RemoteStatus;
use crate::command::{EntryState, StoredOutcome};
use crate::machine::SchedulerMachine;
use crate::pb;
use crate::state::{InState, OutState};

/// What each remote's driver reports on this node, by alias.
pub type RemoteStatuses = Arc<Mutex<BTreeMap<String, RemoteStatus>>>;

/// The progress of remote call `seq` of `remote`, made by entry `position` of workflow
/// `workflow` (finished or not), whose state is `state`.
pub(crate) struct CallEntry<'a> {
    pub(crate) workflow: &'a str,
    pub(crate) finished: bool,
    pub(crate) position: u32,
    pub(crate) remote: &'a str,
    pub(crate) kind: &'a str,
    pub(crate) seq: u64,
    pub(crate) state: &'a EntryState,
}

/// The wire form of `call`'s progress.
pub(crate) fn remote_call_info(
    machine: &SchedulerMachine,
    statuses: &RemoteStatuses,
    call: &CallEntry<'_>,
) -> pb::RemoteCall {
    let mut info = pb::RemoteCall {
        remote: call.remote.to_owned(),
        kind: call.kind.to_owned(),
        seq: call.seq,
        ..pb::RemoteCall::default()
    };
    let state = match call.state {
        EntryState::Done(StoredOutcome::Ok(_)) => "completed",
        EntryState::Done(StoredOutcome::Err(_)) => "failed",
        EntryState::TimedOut => "timed out",
        EntryState::Pending { .. } if call.finished => "cancelled",
        EntryState::Pending { .. } => {
            let state = machine.read();
            let item = state
                .remote()
                .outgoing(call.remote)
                .and_then(|stream| stream.outbox.get(&call.seq))
                .filter(|item| {
                    item.call.workflow == call.workflow && item.call.position == call.position
                });
            info.deadline_ms = item.map_or(0, |item| item.deadline_ms);
            match item.map(|item| &item.state) {
                Some(OutState::Started { workflow }) => {
                    info.callee_workflow.clone_from(workflow);
                    "started"
                }
                _ => "pending start",
            }
        }
    };
    state.clone_into(&mut info.state);
    let unresolved = matches!(call.state, EntryState::Pending { .. }) && !call.finished;
    match statuses
        .lock()
        .expect("status lock poisoned")
        .get(call.remote)
    {
        Some(status) => {
            info.attempts = status.attempts;
            info.last_error = status
                .halted
                .clone()
                .or_else(|| status.last_error.clone())
                .unwrap_or_default();
        }
        None if unresolved => {
            "no driver on the leader: no [remotes] entry with addresses for this alias"
                .clone_into(&mut info.last_error);
        }
        None => {}
    }
    info
}

/// Appends the remote-call metrics of `machine`'s state and this node's drivers.
pub(crate) fn render_metrics(
    out: &mut String,
    node: u64,
    machine: &SchedulerMachine,
    statuses: &RemoteStatuses,
) {
    render_state_metrics(out, node, machine);
    render_driver_metrics(out, node, statuses);
}

/// Writes a metric family's `HELP` and `TYPE` lines.
fn family(out: &mut String, name: &str, kind: &str, help: &str) {
    let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
}

/// The gauges read from the replicated state: the gate, outbox items, inbound records.
fn render_state_metrics(out: &mut String, node: u64, machine: &SchedulerMachine) {
    let mut calls: BTreeMap<(String, &'static str), u64> = BTreeMap::new();
    let mut inbound: BTreeMap<(String, &'static str), u64> = BTreeMap::new();
    let enabled = {
        let state = machine.read();
        for (alias, stream) in state.remote().outgoing_streams() {
            for item in stream.outbox.values() {
                *calls
                    .entry((alias.to_owned(), item.state.as_str()))
                    .or_default() += 1;
            }
        }
        for (caller, incoming) in state.remote().incoming_streams() {
            for record in incoming.records.values() {
                let state = match record.state {
                    InState::Running { .. } => "running",
                    InState::Completed { .. } => "completed",
                    InState::Refused { .. } => "refused",
                };
                *inbound.entry((caller.to_owned(), state)).or_default() += 1;
            }
        }
        state.remote().enabled()
    };
    family(
        out,
        "keel_remote_calls_enabled",
        "gauge",
        "Whether calls between clusters are enabled (every member's build applied them when a leader looked).",
    );
    let _ = writeln!(
        out,
        "keel_remote_calls_enabled{{node=\"{node}\"}} {}",
        u8::from(enabled)
    );
    family(
        out,
        "keel_remote_calls",
        "gauge",
        "Calls to other clusters not settled with them, by state.",
    );
    for ((remote, state), count) in &calls {
        let _ = writeln!(
            out,
            "keel_remote_calls{{node=\"{node}\",remote=\"{remote}\",state=\"{state}\"}} {count}"
        );
    }
    family(
        out,
        "keel_remote_inbound",
        "gauge",
        "Calls from other clusters held here, by state.",
    );
    for ((caller, state), count) in &inbound {
        let _ = writeln!(
            out,
            "keel_remote_inbound{{node=\"{node}\",caller=\"{caller}\",state=\"{state}\"}} {count}"
        );
    }
}

/// What this leader's drivers report of each remote: requests and how they ended, late
/// completions, the breaker.
fn render_driver_metrics(out: &mut String, node: u64, statuses: &RemoteStatuses) {
    let statuses = statuses.lock().expect("status lock poisoned").clone();
    family(
        out,
        "keel_remote_attempts_total",
        "counter",
        "RPCs this leader made to each remote, retries included.",
    );
    for (remote, status) in &statuses {
        let _ = writeln!(
            out,
            "keel_remote_attempts_total{{node=\"{node}\",remote=\"{remote}\"}} {}",
            status.attempts
        );
    }
    family(
        out,
        "keel_remote_outcomes_total",
        "counter",
        "How this leader's requests to each remote (and the steps around them) ended.",
    );
    for (remote, status) in &statuses {
        for (outcome, count) in status.outcomes.by_name() {
            let _ = writeln!(
                out,
                "keel_remote_outcomes_total{{node=\"{node}\",remote=\"{remote}\",outcome=\"{outcome}\"}} {count}"
            );
        }
    }
    family(
        out,
        "keel_remote_late_completions_total",
        "counter",
        "Completions that came for a call already resolved, or a caller workflow gone.",
    );
    for (remote, status) in &statuses {
        let _ = writeln!(
            out,
            "keel_remote_late_completions_total{{node=\"{node}\",remote=\"{remote}\"}} {}",
            status.late_completions
        );
    }
    family(
        out,
        "keel_remote_breaker_open",
        "gauge",
        "1 while a remote's breaker is open or it is halted.",
    );
    for (remote, status) in &statuses {
        let open = u8::from(status.breaker_open || status.halted.is_some());
        let _ = writeln!(
            out,
            "keel_remote_breaker_open{{node=\"{node}\",remote=\"{remote}\"}} {open}"
        );
    }
}

#[cfg(test)]
mod tests {
    use bytes::Bytes;
    use keel_raft::application::{Application, AppliedAt};

    use super::*;
    use crate::command::{self, Command, Stamped};
    use crate::peer::Outcomes;

    fn apply(machine: &mut SchedulerMachine, index: u64, command: Command) {
        let stamped = Stamped {
            stamp_ms: 1_000,
            mono: None,
            command,
        };
        machine.apply(
            AppliedAt { term: 1, index },
            &Bytes::from(command::encode(&stamped)),
        );
    }

    /// A machine where workflow `w` made one remote call to `writers`, not yet delivered.
    fn one_pending_call() -> SchedulerMachine {
        let mut machine = SchedulerMachine::new();
        let commands = [
            Command::DeclareKinds {
                kinds: vec![("k".into(), "1".into())],
            },
            Command::Start {
                id: "w".into(),
                kind: "k".into(),
                input: Vec::new(),
            },
            Command::RemoteCall {
                workflow: "w".into(),
                fence: 2,
                seq: 0,
                remote: "writers".into(),
                kind: "draft".into(),
                input: Vec::new(),
                deadline_after_ms: 60_000,
            },
        ];
        for (index, command) in (1..).zip(commands) {
            apply(&mut machine, index, command);
        }
        machine
    }

    /// A call not yet delivered counts as "pending start", with its driver's attempts,
    /// outcomes, late completions and breaker; the journal view says the same of the entry.
    #[test]
    fn pending_calls_and_driver_reports_are_rendered() {
        let machine = one_pending_call();
        let statuses = RemoteStatuses::default();
        statuses.lock().expect("lock").insert(
            "writers".into(),
            RemoteStatus {
                attempts: 9,
                last_error: Some("transport: refused".into()),
                halted: None,
                breaker_open: true,
                outcomes: Outcomes {
                    ok: 5,
                    not_leader: 1,
                    transient: 3,
                    halt: 0,
                },
                late_completions: 2,
            },
        );
        let mut out = String::new();
        render_metrics(&mut out, 1, &machine, &statuses);
        for line in [
            "keel_remote_calls{node=\"1\",remote=\"writers\",state=\"pending start\"} 1",
            "keel_remote_attempts_total{node=\"1\",remote=\"writers\"} 9",
            "keel_remote_breaker_open{node=\"1\",remote=\"writers\"} 1",
            "keel_remote_outcomes_total{node=\"1\",remote=\"writers\",outcome=\"ok\"} 5",
            "keel_remote_outcomes_total{node=\"1\",remote=\"writers\",outcome=\"transient\"} 3",
            "keel_remote_late_completions_total{node=\"1\",remote=\"writers\"} 2",
            "keel_remote_calls_enabled{node=\"1\"} 0",
        ] {
            assert!(out.lines().any(|l| l == line), "{line} not in\n{out}");
        }
        let state = EntryState::Pending { attempts: 0 };
        let call = CallEntry {
            workflow: "w",
            finished: false,
            position: 0,
            remote: "writers",
            kind: "draft",
            seq: 1,
            state: &state,
        };
        let info = remote_call_info(&machine, &statuses, &call);
        assert_eq!(info.state, "pending start");
        assert_eq!(info.deadline_ms, 61_000);
        assert_eq!(
            (info.attempts, info.last_error.as_str()),
            (9, "transport: refused")
        );
    }
}
