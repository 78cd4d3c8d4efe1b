//! keel-scheduler: Keel's durable workflow engine, its embeddable [`Node`], and the `keel`
//! command-line program.
//!
//! A workflow is ordinary async Rust taking a [`Context`](engine::context::Context). Every
//! durable operation — a step, a sleep, a wait for a signal, a child call, `now`, `random` —
//! is an entry in the workflow's journal, which lives in a deterministic state machine
//! ([`state`]) replicated by keel-raft beside the plain log. After a crash or failover the
//! new leader re-runs the workflow from the top: journaled entries return their recorded
//! outcome without running; the first entry that is not journaled runs and is committed on a
//! majority before the workflow goes on. A live workflow is not replayed between steps.
//!
//! ```text
//!  client ─Start/Signal/Cancel─► WorkflowService ─► Proposer ─► Raft (leader) ─► majority
//!                                                                   │ committed
//!  every node: SchedulerMachine::apply ─► SchedulerState (workflows, journals, timers, cron)
//!                   │ effects (node-local)
//!                   ├─► Engine (leader only): runs under fences ─► Context ─► Proposer
//!                   ├─► timer driver (leader only): due timers ─► FireTimers
//!                   └─► waiters (Get with wait, suspended runs), fire watchers
//! ```
//!
//! # Guarantees
//! - **Exactly-once, precisely:** each step's *outcome* is recorded once — the first record
//!   wins and a second completion of the same step is refused the same way on every node.
//!   Its *body* runs at least once: a crash between running it and recording it re-runs it,
//!   so each step gets a stable idempotency key (`workflow_id/step_seq`) to hand to the
//!   outside world.
//! - **Fencing:** each run of a workflow holds a fence granted through the log: the Raft
//!   index of the start, call or claim that granted it, so fences never repeat (a new
//!   leader claims every running workflow; a remote worker's lease is a claim). Journal
//!   records and completions carry it, and the state machine refuses a stale one, so a
//!   paused old leader can never mix its records into a journal. A leader stops its runs
//!   when it loses leadership; a run whose record is refused stops or replays.
//! - **Timers:** one committed fire per timer (the state machine fires each once and refuses
//!   a fire stamped before the due time). A fire's effects happen after it is applied and
//!   carry its token `(term, index)`. A *relative* timer (`sleep`, a signal timeout, a named
//!   `After` timer) is never early, even when clocks disagree: the leader fires it only once
//!   its stamped due time has passed on its wall clock **and** its monotonic clock shows the
//!   delay elapsed since it proposed the timer (or applied it, when another leader proposed
//!   it); a node that restarted since counts from its restart, waiting at most until due +
//!   `max_clock_skew` by its wall clock. An *absolute*
//!   time (`sleep_until`, cron, a named `At` timer) follows the wall clock and may be early by
//!   at most `max_clock_skew` when clocks disagree by less than that. A new leader fires
//!   every due timer right after its election.
//! - **Honest answers:** refusals are typed ([`wire::RejectionKind`]); writes that may or may
//!   not have been applied say so. Starts, journal records, timers and schedules are
//!   idempotent (by workflow id, journal sequence, timer name, schedule name) and signals
//!   are deduplicated by the client's `(id, seq)`, so retrying them is safe; a retried
//!   cancel that had been applied answers "finished".
//!
//! # Embedding
//!
//! ```no_run
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! use bytes::Bytes;
//! use keel_raft::node::NodeConfig;
//! use keel_scheduler::engine::EngineSettings;
//! use keel_scheduler::engine::context::{Context, WorkflowError};
//! use keel_scheduler::engine::registry::Registry;
//!
//! async fn greet(ctx: Context, input: Bytes) -> Result<Bytes, WorkflowError> {
//!     let name = ctx
//!         .step("lookup", |step| {
//!             // Stable across re-runs of this step: hand it to the outside world.
//!             let _key = step.idempotency_key;
//!             let input = input.clone();
//!             async move { Ok::<_, std::io::Error>(input) }
//!         })
//!         .await?;
//!     ctx.sleep(std::time::Duration::from_secs(3600)).await?;
//!     Ok(Bytes::from(format!("hello, {}", String::from_utf8_lossy(&name))))
//! }
//!
//! let config = NodeConfig::new(1, "127.0.0.1:7101".parse()?, "./data");
//! let registry = Registry::new().register("greet", "v1", greet);
//! let node = keel_scheduler::Node::start(config, registry, EngineSettings::default()).await?;
//! node.stopped().await;
//! # Ok(())
//! # }
//! ```
#![deny(unsafe_code)]
#![doc(test(attr(deny(warnings))))]

pub mod allocator;
pub mod builtin;
pub mod client;
mod command;
pub mod config;
pub mod engine;
pub mod error;
pub mod limits;
pub mod machine;
pub mod mono;
pub mod node;
mod pb;
pub mod peer;
pub mod proxy;
pub mod service;
pub mod state;
pub mod wire;
pub mod worker;
pub mod workers_service;

pub use command::{
    AckStatus, Answer, CallId, CancelItem, CancelResult, CancelStatus, Command, Completion, Due,
    EntryState, INLINE_MAX_BYTES, InboundStart, Outcome, Owner, Refusal, Rejection, RemoteOutcome,
    Stamped, StartResult, StartStatus, StepRecord, StoredOutcome, Value, WorkflowStatus,
};
pub use config::{ConfigFile, NodeSettings};
pub use error::{Error, Result};
pub use node::Node;

/// The bytes of a stamped command, as the scheduler's state machine decodes them (for
/// tools and tests that feed a [`machine::SchedulerMachine`] directly).
pub fn encode_command(stamped: &Stamped) -> Vec<u8> {
    command::encode(stamped)
}
