//! Durable calls between clusters over `keel.remote.v1` (`scheduler/REMOTE.md`): the
//! network half of what `state::remote` journals.
//!
//! - `settings`: the `[remotes.<alias>]` and `[remote_calls]` tables;
//! - `service`: the gRPC service every node serves (only the leader answers);
//! - `driver`: the caller's leader-only tasks that deliver each remote's outbox (Hello,
//!   bind, starts, cancels) and fetch its completions (a long-poll Get);
//! - `gate`: the leader's task that enables calls between clusters once every member's
//!   build applies them;
//! - `link`: one remote's configured addresses, with not-leader following, backoff and
//!   the breaker;
//! - `status`: each call's progress for `keel status`, and the metrics;
//! - `convert` and `errors`: messages and whole-request errors.
//!
//! Completions travel by the caller's long-poll Get in this build: the callee answers a Get
//! as soon as a completion is held, so it costs the same round trip a push would, and works
//! where the callee cannot dial the caller. Pushes (`Complete`) are served by the caller and
//! answered from its log, ready for a callee that sends them.

mod convert;
pub mod driver;
mod errors;
mod gate;
mod link;
pub mod service;
pub mod settings;
pub mod status;

use keel_raft::values::ValueError;

use self::convert::{call_to_wire, outcome_to_wire};
use crate::command::RemoteOutcome;
use crate::machine::SchedulerMachine;
use crate::pb::remote as pb;
use crate::state::{InOutcome, InState};

pub use self::link::Outcomes;
pub use self::settings::{PeerSettings, RemoteCallSettings, RemoteConfig};

/// The messages and gRPC client and server of `keel.remote.v1`, for a caller or callee
/// written against the protocol itself (and for tests that speak it directly).
pub mod wire {
    pub use crate::pb::remote::*;
}

/// The protocol version this build speaks (REMOTE.md §16).
pub const PROTOCOL: u32 = 1;
/// Start items one request carries at most.
pub const START_ITEMS_MAX: u32 = 256;
/// Input bytes one Start request carries at most (one larger item travels alone), and the
/// value bytes of one Get's completions.
pub const START_BYTES_MAX: usize = 2 << 20;

/// Up to `max` completions `caller`'s records hold here, lowest seq first, with their values
/// read, and the caller's watermark.
///
/// # Errors
/// A value the state references that the node cannot read.
pub(crate) fn completions_of(
    machine: &SchedulerMachine,
    caller: &str,
    max: usize,
) -> Result<(Vec<pb::Completion>, u64), ValueError> {
    let state = machine.read();
    let Some(incoming) = state.remote().incoming(caller) else {
        return Ok((Vec::new(), 0));
    };
    let mut completions = Vec::new();
    let mut bytes = 0;
    for (&seq, record) in &incoming.records {
        if completions.len() == max || (!completions.is_empty() && bytes > START_BYTES_MAX) {
            break;
        }
        let InState::Completed { workflow, outcome } = &record.state else {
            continue;
        };
        let text = |value| -> Result<String, ValueError> {
            Ok(String::from_utf8_lossy(&machine.value(value)?).into_owned())
        };
        let outcome = match outcome {
            InOutcome::Completed(value) => RemoteOutcome::Completed(machine.value(value)?.to_vec()),
            InOutcome::Failed(value) => RemoteOutcome::Failed(text(value)?),
            InOutcome::Cancelled(value) => RemoteOutcome::Cancelled(text(value)?),
            InOutcome::Deadline => RemoteOutcome::Deadline,
        };
        bytes += outcome.bytes().len();
        if !completions.is_empty() && bytes > START_BYTES_MAX {
            break;
        }
        completions.push(pb::Completion {
            seq,
            call: Some(call_to_wire(&record.call)),
            callee_workflow: workflow.clone(),
            outcome: Some(outcome_to_wire(outcome)),
            finished_ms: 0,
            attempt: 0,
        });
    }
    Ok((completions, incoming.watermark))
}
