//! What the log carries for the scheduler: commands (stamped by the proposing leader) and the
//! state machine's answers, both rkyv-encoded.
//!
//! Every command that acts on a workflow's journal carries the run's fence; the state
//! machine rejects a stale one (see [`crate::state`]). Times are milliseconds since the Unix
//! epoch from the leader's wall clock, stamped when it proposed the command: the state
//! machine itself reads no clock.

use keel_raft::values::ValueRef;
use rkyv::{Archive, Deserialize, Serialize};

mod answer;
mod codec;
mod remote;

pub use answer::{Answer, EntryState, Rejection};
pub use remote::{
    AckStatus, CallId, CancelItem, CancelResult, CancelStatus, Completion, InboundStart, Refusal,
    RemoteOutcome, StartResult, StartStatus,
};

pub(crate) use codec::{decode, decode_recorded, encode};

/// A command as proposed: the leader's wall clock and the command.
#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
#[rkyv(attr(allow(missing_docs, reason = "rkyv's archived twin of a documented type")))]
pub struct Stamped {
    /// The proposing leader's wall clock, ms since the Unix epoch.
    pub stamp_ms: u64,
    /// The proposing leader's monotonic clock (meaningful to that process only; never
    /// part of the replicated state).
    pub mono: Option<crate::mono::MonoStamp>,
    /// The command.
    pub command: Command,
}

/// When a timer is due.
#[derive(Archive, Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq)]
#[rkyv(attr(allow(missing_docs, reason = "rkyv's archived twin of a documented type")))]
pub enum Due {
    /// `delay_ms` after the command's stamp (a relative sleep: never early, see the crate docs).
    After {
        /// The delay.
        delay_ms: u64,
    },
    /// At a wall-clock time (absolute: early by at most the configured clock skew).
    At {
        /// ms since the Unix epoch.
        at_ms: u64,
    },
}

/// How something ended: a value or an error message.
#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
#[rkyv(attr(allow(missing_docs, reason = "rkyv's archived twin of a documented type")))]
pub enum Outcome {
    /// Success, with its value.
    Ok(Vec<u8>),
    /// Failure, with its message.
    Err(String),
}

/// A value as the replicated state and its answers hold it: where it was recorded (read
/// through the node's value store, see `keel_raft::values`), or its bytes: values of at
/// most [`INLINE_MAX_BYTES`], and values the state machine composed itself (a
/// cancellation's message).
#[derive(
    serde::Serialize,
    serde::Deserialize,
    Archive,
    Serialize,
    Deserialize,
    Debug,
    Clone,
    PartialEq,
    Eq,
)]
#[rkyv(attr(allow(missing_docs, reason = "rkyv's archived twin of a documented type")))]
pub enum Value {
    /// Bytes of the command applied at a Raft index.
    Recorded(ValueRef),
    /// The bytes themselves.
    Inline(Vec<u8>),
}

/// Values up to this long are held inline: a reference is 16 bytes.
pub const INLINE_MAX_BYTES: usize = 32;

impl Value {
    /// Its length in bytes.
    pub fn len(&self) -> usize {
        match self {
            Self::Recorded(at) => at.len as usize,
            Self::Inline(bytes) => bytes.len(),
        }
    }

    /// Whether it is empty.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Where it was recorded, when it is held by reference.
    pub fn recorded(&self) -> Option<ValueRef> {
        match self {
            Self::Recorded(at) => Some(*at),
            Self::Inline(_) => None,
        }
    }
}

/// How something ended, as the state holds it: [`Outcome`] with its value or error
/// message held as a [`Value`].
#[derive(
    serde::Serialize,
    serde::Deserialize,
    Archive,
    Serialize,
    Deserialize,
    Debug,
    Clone,
    PartialEq,
    Eq,
)]
#[rkyv(attr(allow(missing_docs, reason = "rkyv's archived twin of a documented type")))]
pub enum StoredOutcome {
    /// Success, with its value.
    Ok(Value),
    /// Failure, with its message (UTF-8).
    Err(Value),
}

impl StoredOutcome {
    /// Whether it is a success.
    pub fn is_ok(&self) -> bool {
        matches!(self, Self::Ok(_))
    }

    /// Its value or message.
    pub fn value(&self) -> &Value {
        match self {
            Self::Ok(value) | Self::Err(value) => value,
        }
    }
}

/// Who runs a workflow under its current fence.
#[derive(
    serde::Serialize,
    serde::Deserialize,
    Archive,
    Serialize,
    Deserialize,
    Debug,
    Clone,
    Copy,
    PartialEq,
    Eq,
)]
#[rkyv(attr(allow(missing_docs, reason = "rkyv's archived twin of a documented type")))]
pub enum Owner {
    /// The embedded executor of the leader of `term`.
    Leader {
        /// The leader's node id.
        node: u64,
        /// Its term.
        term: u64,
    },
    /// A remote worker, by the id it connected with.
    Worker {
        /// The worker's id.
        worker: u64,
    },
}

/// What a step record says.
#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
#[rkyv(attr(allow(missing_docs, reason = "rkyv's archived twin of a documented type")))]
pub enum StepRecord {
    /// The step's final outcome (after its last attempt).
    Done(Outcome),
    /// Attempt number `attempt` (from 1) failed with `error`; more will follow.
    AttemptFailed {
        /// Which attempt.
        attempt: u32,
        /// Its error.
        error: String,
    },
}

/// A scheduler command.
#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
#[rkyv(attr(allow(missing_docs, reason = "rkyv's archived twin of a documented type")))]
pub enum Command {
    /// Workflow kinds some executor can run, each with its code version marker.
    DeclareKinds {
        /// `(kind, version)` pairs.
        kinds: Vec<(String, String)>,
    },
    /// Starts workflow `id` (if no workflow has that id yet).
    Start {
        /// The workflow's id, chosen by the caller.
        id: String,
        /// Its kind (declared earlier).
        kind: String,
        /// Its input.
        input: Vec<u8>,
    },
    /// Grants a new fence for running `workflow` to `owner`.
    Claim {
        /// The workflow.
        workflow: String,
        /// Who will run it.
        owner: Owner,
    },
    /// Records step `seq` of a run.
    Step {
        /// The workflow.
        workflow: String,
        /// The run's fence.
        fence: u64,
        /// The step's sequence number in the journal.
        seq: u32,
        /// The step's name in the code.
        name: String,
        /// What happened.
        record: StepRecord,
    },
    /// A durable sleep as journal entry `seq`.
    Sleep {
        /// The workflow.
        workflow: String,
        /// The run's fence.
        fence: u64,
        /// The entry's sequence number.
        seq: u32,
        /// When it ends.
        due: Due,
    },
    /// Waits for signal `signal` as journal entry `seq` (a buffered one resolves it at once).
    WaitSignal {
        /// The workflow.
        workflow: String,
        /// The run's fence.
        fence: u64,
        /// The entry's sequence number.
        seq: u32,
        /// The signal's name.
        signal: String,
        /// Give up after this long (`None`: wait forever).
        timeout_ms: Option<u64>,
    },
    /// Starts a child workflow (id `<workflow>/<seq>`) as journal entry `seq`, which
    /// resolves with the child's outcome.
    Call {
        /// The parent workflow.
        workflow: String,
        /// The parent run's fence.
        fence: u64,
        /// The entry's sequence number.
        seq: u32,
        /// The child's kind.
        kind: String,
        /// The child's input.
        input: Vec<u8>,
    },
    /// Ends a run's workflow with `outcome`.
    Finish {
        /// The workflow.
        workflow: String,
        /// The run's fence.
        fence: u64,
        /// Its result.
        outcome: Outcome,
    },
    /// Delivers a signal (buffered until the workflow waits for it).
    Signal {
        /// The workflow.
        workflow: String,
        /// The signal's name.
        signal: String,
        /// Its payload.
        payload: Vec<u8>,
    },
    /// Cancels a running workflow and its running children.
    Cancel {
        /// The workflow.
        workflow: String,
        /// Why.
        reason: String,
    },
    /// Schedules a named timer (idempotent by name).
    ScheduleTimer {
        /// The timer's name, unique.
        name: String,
        /// When it is due.
        due: Due,
        /// Delivered with its fire.
        payload: Vec<u8>,
    },
    /// Fires the due timers among `ids` (others are ignored: each timer fires once).
    FireTimers {
        /// Timer ids.
        ids: Vec<u64>,
    },
    /// Registers (or replaces) a cron schedule that starts workflows.
    RegisterSchedule {
        /// The schedule's name; its workflows get ids `<name>@<due ms>`.
        name: String,
        /// A standard five-field cron expression, in UTC.
        cron: String,
        /// The kind of workflow it starts.
        kind: String,
        /// Their input.
        input: Vec<u8>,
    },
    /// Forgets workflows and timer fires finished more than `retention_ms` before the stamp.
    Expire {
        /// How long finished things are kept.
        retention_ms: u64,
    },
    /// Parks a run's workflow: its code no longer matches its journal. It stays unfinished,
    /// with `reason`, and no run is started for it until a new claim (a takeover, a launch)
    /// retries it, so deploying fixed code resumes it.
    Park {
        /// The workflow.
        workflow: String,
        /// The run's fence.
        fence: u64,
        /// Why (the non-determinism found).
        reason: String,
    },
    /// Calls a workflow of `kind` in the remote cluster `remote` as journal entry `seq`
    /// (caller side): its stream seq and deadline are assigned at apply, and its call id is
    /// this command's Raft index (`scheduler/REMOTE.md` §4).
    RemoteCall {
        /// The calling workflow.
        workflow: String,
        /// The run's fence.
        fence: u64,
        /// The entry's sequence number.
        seq: u32,
        /// The remote's alias in the nodes' `[remotes]`.
        remote: String,
        /// The kind to start there.
        kind: String,
        /// Its input.
        input: Vec<u8>,
        /// The call's deadline, after the command's stamp.
        deadline_after_ms: u64,
    },
    /// Binds `remote`'s stream to the callee identity `callee` (first-wins).
    RemoteBind {
        /// The remote's alias.
        remote: String,
        /// The callee's identity text.
        callee: String,
    },
    /// What a callee answered to starts (and the watermark it reported), decided under
    /// binding `generation`.
    RemoteStartsAcked {
        /// The remote's alias.
        remote: String,
        /// The binding generation the answers came under.
        generation: u64,
        /// The callee's watermark.
        watermark: u64,
        /// The results, in seq order.
        results: Vec<StartResult>,
    },
    /// Completions a callee delivered for calls made under binding `generation`.
    RemoteComplete {
        /// The remote's alias.
        remote: String,
        /// The binding generation.
        generation: u64,
        /// The completions.
        completions: Vec<Completion>,
    },
    /// What a callee answered to cancels (terminal ones only), under binding `generation`.
    RemoteCancelsAcked {
        /// The remote's alias.
        remote: String,
        /// The binding generation.
        generation: u64,
        /// The results.
        results: Vec<CancelResult>,
    },
    /// An operator's rebind (caller side): `remote`'s binding is dropped, every unresolved
    /// call of its stream fails (`callee-lost`: whether the old callee took it cannot be
    /// known), its outbox is emptied and its stream starts again at seq 1; the next Hello
    /// binds whichever identity answers.
    RemoteUnbind {
        /// The remote's alias.
        remote: String,
    },
    /// Takes a caller's start items (callee side), in stream order from its watermark.
    RemoteStart {
        /// The caller's identity text.
        caller: String,
        /// The Raft index of this cluster's identity in force (names the workflows).
        callee_index: u64,
        /// The items, in increasing seq.
        items: Vec<InboundStart>,
        /// How long past a call's deadline its record is kept.
        grace_ms: u64,
        /// The longest deadline this cluster accepts, after the stamp.
        deadline_max_ms: u64,
    },
    /// The caller acknowledged these completions, `(seq, call index)`: their records go.
    RemoteCompletionsAcked {
        /// The caller's identity text.
        caller: String,
        /// The acknowledged completions.
        acks: Vec<(u64, u64)>,
    },
    /// The caller cancels these calls.
    RemoteCancel {
        /// The caller's identity text.
        caller: String,
        /// The cancels.
        items: Vec<CancelItem>,
    },
    /// Calls between clusters are enabled (first-wins): a leader proposes it once every
    /// member's build applies the remote commands, and no remote call is proposed before it
    /// is applied (`scheduler/REMOTE.md` §16).
    RemoteEnabled,
}

impl Command {
    /// The workflow and fence of a run's journal command (step, sleep, wait, call,
    /// remote call, finish, park); `None` for every other command.
    pub fn run_fence(&self) -> Option<(&str, u64)> {
        match self {
            Self::Step {
                workflow, fence, ..
            }
            | Self::Sleep {
                workflow, fence, ..
            }
            | Self::WaitSignal {
                workflow, fence, ..
            }
            | Self::Call {
                workflow, fence, ..
            }
            | Self::RemoteCall {
                workflow, fence, ..
            }
            | Self::Finish {
                workflow, fence, ..
            }
            | Self::Park {
                workflow, fence, ..
            } => Some((workflow, *fence)),
            _ => None,
        }
    }
}

/// A workflow's status.
#[derive(
    serde::Serialize,
    serde::Deserialize,
    Archive,
    Serialize,
    Deserialize,
    Debug,
    Clone,
    Copy,
    PartialEq,
    Eq,
    Hash,
)]
#[rkyv(attr(allow(missing_docs, reason = "rkyv's archived twin of a documented type")))]
pub enum WorkflowStatus {
    /// Not finished.
    Running,
    /// Finished with a value.
    Completed,
    /// Finished with an error.
    Failed,
    /// Cancelled.
    Cancelled,
    /// Not finished, and not run: its code did not match its journal. Retried (claimed
    /// again) at every takeover or launch of an executor.
    Parked,
}

impl WorkflowStatus {
    /// The status's name as the CLI and the API print it.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Running => "running",
            Self::Completed => "completed",
            Self::Failed => "failed",
            Self::Cancelled => "cancelled",
            Self::Parked => "parked",
        }
    }

    /// The status named `name`.
    pub fn parse(name: &str) -> Option<Self> {
        [
            Self::Running,
            Self::Completed,
            Self::Failed,
            Self::Cancelled,
            Self::Parked,
        ]
        .into_iter()
        .find(|s| s.as_str() == name)
    }
}

#[cfg(test)]
mod tests;
