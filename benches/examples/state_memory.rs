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
//! ```text
//! cargo run --release -p keel-benches --example state_memory
//! ```
#![forbid(unsafe_code)]
#![allow(clippy::print_stderr, reason = "an example reports on stderr")]

use keel_raft::application::AppliedAt;
use keel_raft::values::ValueRef;
use keel_scheduler::state::SchedulerState;
use keel_scheduler::{Command, Outcome, Owner, Stamped, StepRecord};

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
}
