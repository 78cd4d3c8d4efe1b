//! What a retained finished workflow costs the replicated state in heap (issue #20's
//! budget: 600 bytes for a 10-step workflow, whatever the size of its values), counted
//! allocation by allocation (dhat's heap statistics) rather than read off a process's
//! resident memory, which also holds what the allocator kept of freed buffers (the scale
//! benchmark's figure).
//!
//! The state is driven as the scale benchmark drives a cluster: 36-byte ids, the built-in
//! `steps` kind with input `10:2048`, each step's 2 KiB result held by reference to the
//! command that recorded it, then the finish. It fails if the budget is exceeded.
//!
//! Then calls between clusters in flight (issue #21), counted the same way: per call, the
//! caller's outbox item, the callee's record and running workflow, and the completion held
//! until the caller acknowledges it; it fails if a call's 2 KiB value is held in memory.
//!
//! ```text
//! cargo run --release -p keel-benches --example state_memory
//! ```
#![forbid(unsafe_code)]
#![allow(clippy::print_stderr, reason = "an example reports on stderr")]

use keel_raft::application::AppliedAt;
use keel_raft::values::ValueRef;
use keel_scheduler::state::{InOutcome, InState, SchedulerState};
use keel_scheduler::{CallId, Command, InboundStart, Outcome, Owner, Stamped, StepRecord, Value};

#[global_allocator]
static ALLOCATOR: dhat::Alloc = dhat::Alloc;

const WORKFLOWS: u64 = 100_000;
const STEPS: u32 = 10;
const RESULT_BYTES: u32 = 2048;
/// What the system allocator adds to each block, counted on top of the bytes asked for:
/// glibc's 8-byte header and its rounding to 16 bytes, on average.
const BLOCK_OVERHEAD: u64 = 16;

/// Applies commands at increasing indexes; a command whose value is `recorded` is applied
/// as the node applies it, holding that value by reference.
struct Driver {
    state: SchedulerState,
    index: u64,
}

impl Driver {
    fn apply(&mut self, command: Command, recorded: Option<ValueRef>) {
        self.index += 1;
        let mut effects = Vec::new();
        self.state.apply_recorded(
            AppliedAt {
                term: 2,
                index: self.index,
            },
            Stamped {
                stamp_ms: 1_764_806_400_000 + self.index,
                mono: None,
                command,
            },
            recorded.into_iter().collect(),
            &mut effects,
        );
    }

    /// One `steps 10:2048` workflow, start to finish.
    fn run(&mut self, n: u64) {
        let id = format!("{n:08x}-0000-4000-8000-{n:012x}");
        self.apply(
            Command::Start {
                id: id.clone(),
                kind: "steps".into(),
                input: b"10:2048".to_vec(),
            },
            None,
        );
        self.apply(
            Command::Claim {
                workflow: id.clone(),
                owner: Owner::Leader { node: 1, term: 2 },
            },
            None,
        );
        let fence = self.index;
        for seq in 0..STEPS {
            let at = ValueRef {
                index: self.index + 1,
                offset: 64,
                len: RESULT_BYTES,
            };
            self.apply(
                Command::Step {
                    workflow: id.clone(),
                    fence,
                    seq,
                    name: format!("step-{seq}"),
                    record: StepRecord::Done(Outcome::Ok(vec![b'.'; RESULT_BYTES as usize])),
                },
                Some(at),
            );
        }
        self.apply(
            Command::Finish {
                workflow: id,
                fence,
                outcome: Outcome::Ok(b"10".to_vec()),
            },
            None,
        );
    }
}

/// The heap bytes (with [`BLOCK_OVERHEAD`] per block) `work` leaves allocated, per one of
/// `count`; negative if it freed more than it allocated.
fn heap_per(count: u64, work: impl FnOnce()) -> i64 {
    let before = dhat::HeapStats::get();
    work();
    let after = dhat::HeapStats::get();
    let signed = |n: usize| i64::try_from(n).expect("a heap's size fits i64");
    let bytes = signed(after.curr_bytes) - signed(before.curr_bytes);
    let blocks = signed(after.curr_blocks) - signed(before.curr_blocks);
    let overhead = i64::try_from(BLOCK_OVERHEAD).expect("small");
    (bytes + blocks * overhead) / i64::try_from(count).expect("small")
}

/// A caller identity the remote calls come from.
const CALLER: &str = "research.abababababababababababababababab";
/// Calls between clusters counted.
const CALLS: u64 = 10_000;

impl Driver {
    /// A reference to a 2 KiB value of the next command.
    fn next_value(&self) -> ValueRef {
        ValueRef {
            index: self.index + 1,
            offset: 64,
            len: RESULT_BYTES,
        }
    }

    /// Starts workflow `id` and claims it.
    fn start_claimed(&mut self, id: &str) {
        self.apply(
            Command::Start {
                id: id.to_owned(),
                kind: "steps".into(),
                input: Vec::new(),
            },
            None,
        );
        self.apply(
            Command::Claim {
                workflow: id.to_owned(),
                owner: Owner::Leader { node: 1, term: 2 },
            },
            None,
        );
    }

    /// Workflow `id` calls remote `writers` with a 2 KiB input.
    fn call_remote(&mut self, id: &str) {
        let fence = self.state.workflow(id).expect("running").fence;
        let at = self.next_value();
        self.apply(
            Command::RemoteCall {
                workflow: id.to_owned(),
                fence,
                seq: 0,
                remote: "writers".into(),
                kind: "steps".into(),
                input: vec![b'.'; RESULT_BYTES as usize],
                deadline_after_ms: 86_400_000,
            },
            Some(at),
        );
    }

    /// The callee takes seq `seq` of [`CALLER`]'s stream, a 2 KiB input.
    fn take(&mut self, seq: u64) {
        let at = self.next_value();
        let item = InboundStart {
            seq,
            call: CallId {
                index: seq,
                workflow: format!("caller-{seq:08}"),
                position: 0,
            },
            withdrawn: false,
            kind: "steps".into(),
            input: vec![b'.'; RESULT_BYTES as usize],
            deadline_ms: 1_764_806_400_000 + 86_400_000,
            refusal: None,
        };
        self.apply(
            Command::RemoteStart {
                caller: CALLER.into(),
                callee_index: 1,
                items: vec![item],
                grace_ms: 600_000,
                deadline_max_ms: 30 * 86_400_000,
            },
            Some(at),
        );
    }

    /// The callee's workflow for seq `seq` finishes with a 2 KiB result.
    fn finish_inbound(&mut self, seq: u64) {
        let workflow = format!("@{CALLER}.1.{seq}");
        let fence = self.state.workflow(&workflow).expect("taken").fence;
        let at = self.next_value();
        self.apply(
            Command::Finish {
                workflow,
                fence,
                outcome: Outcome::Ok(vec![b'.'; RESULT_BYTES as usize]),
            },
            Some(at),
        );
    }
}

/// What calls between clusters cost the state while they are in flight (issue #21: held as
/// issue #20 chose, values by reference), each with a 2 KiB input or result: the caller's
/// outbox item and journal entry per call made, and the callee's record and running
/// workflow per call taken, then its completion held until the caller acknowledges it.
fn remote_calls(driver: &mut Driver) {
    let ids: Vec<String> = (0..CALLS).map(|n| format!("caller-{n:08}")).collect();
    for id in &ids {
        driver.start_claimed(id);
    }
    let made = heap_per(CALLS, || ids.iter().for_each(|id| driver.call_remote(id)));
    let outbox = driver
        .state
        .remote()
        .outgoing("writers")
        .map_or(0, |o| o.outbox.len());
    assert_eq!(outbox as u64, CALLS, "every call is in the outbox");
    let taken = heap_per(CALLS, || (1..=CALLS).for_each(|seq| driver.take(seq)));
    let completed = heap_per(CALLS, || {
        (1..=CALLS).for_each(|seq| driver.finish_inbound(seq));
    });
    eprintln!(
        "{CALLS} calls between clusters with {RESULT_BYTES}-byte values: the caller's outbox item and entry {made} B per call; the callee's record and running workflow {taken} B per call, then {completed} B more per completion held until acknowledged"
    );
    for (what, bytes) in [("made", made), ("taken", taken)] {
        assert!(
            bytes < i64::from(RESULT_BYTES),
            "a call {what} holds {bytes} B: its value is not held by reference"
        );
    }
    // The held completions' results (their bytes freed what the running workflows held,
    // so the figure above cannot show it): each by reference.
    let incoming = driver.state.remote().incoming(CALLER).expect("the stream");
    assert_eq!(incoming.records.len() as u64, CALLS);
    assert!(
        incoming.records.values().all(|record| matches!(
            &record.state,
            InState::Completed {
                outcome: InOutcome::Completed(Value::Recorded(_)),
                ..
            }
        )),
        "every held completion's result is held by reference"
    );
    assert!(
        made > 0 && taken > 0,
        "each call left something, so the count is real"
    );
}

fn main() {
    let _profiler = dhat::Profiler::builder().testing().build();
    let mut driver = Driver {
        state: SchedulerState::default(),
        index: 0,
    };
    driver.apply(
        Command::DeclareKinds {
            kinds: vec![("steps".into(), "1".into())],
        },
        None,
    );
    let before = dhat::HeapStats::get();
    for n in 0..WORKFLOWS {
        driver.run(n);
    }
    let after = dhat::HeapStats::get();
    let (running, finished) = driver.state.workflow_counts();
    assert_eq!((running, u64::try_from(finished)), (0, Ok(WORKFLOWS)));
    let bytes = after.curr_bytes as u64 - before.curr_bytes as u64;
    let blocks = after.curr_blocks as u64 - before.curr_blocks as u64;
    let per_workflow = (bytes + blocks * BLOCK_OVERHEAD) / WORKFLOWS;
    eprintln!(
        "{WORKFLOWS} finished workflows: {bytes} bytes in {blocks} blocks; {per_workflow} B per workflow with {BLOCK_OVERHEAD} B per block"
    );
    assert!(
        per_workflow <= 600,
        "{per_workflow} B per retained workflow"
    );
    // Sanity: every workflow left something (its id and record), so the count is real.
    assert!(blocks >= 2 * WORKFLOWS, "{blocks} blocks");
    remote_calls(&mut driver);
}
