//! What the log carries for the scheduler: commands (stamped by the proposing leader) and the
//! state machine's answers, both rkyv-encoded.
//!
//! Every command that acts on a workflow's journal carries the run's fence; the state
//! machine rejects a stale one (see [`crate::state`]). Times are milliseconds since the Unix
//! epoch from the leader's wall clock, stamped when it proposed the command: the state
//! machine itself reads no clock.

use keel_raft::values::ValueRef;
use rkyv::{Archive, Deserialize, Serialize};

mod codec;

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
}

impl Command {
    /// The workflow and fence of a run's journal command (step, sleep, wait, call,
    /// finish, park); `None` for every other command.
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

/// Why the state machine refused a command; the same on every replica.
#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[rkyv(attr(allow(missing_docs, reason = "rkyv's archived twin of a documented type")))]
pub enum Rejection {
    /// The command bytes did not decode.
    #[error("malformed command")]
    Malformed,
    /// No executor declared this workflow kind.
    #[error("unknown workflow kind {0:?}")]
    UnknownKind(String),
    /// No workflow has this id.
    #[error("unknown workflow {0:?}")]
    UnknownWorkflow(String),
    /// The run's fence is not the workflow's current one: another run owns it.
    #[error("stale fence {fence}: the workflow's fence is {current}")]
    StaleFence {
        /// The command's fence.
        fence: u64,
        /// The current fence.
        current: u64,
    },
    /// The workflow already finished.
    #[error("the workflow already finished ({})", .0.as_str())]
    Finished(WorkflowStatus),
    /// The journal's entry `seq` is something else than the code asks for.
    #[error(
        "non-determinism at journal entry {seq}: it records {recorded}, the code asks for {requested}"
    )]
    NonDeterminism {
        /// The entry.
        seq: u32,
        /// What it records.
        recorded: String,
        /// What the command asked for.
        requested: String,
    },
    /// Journal entries are appended in order; this one skips ahead.
    #[error("journal entry {seq} out of order: the next entry is {expected}")]
    OutOfOrder {
        /// The command's entry.
        seq: u32,
        /// The next entry.
        expected: u32,
    },
    /// The step already has an outcome (the first record wins); here it is.
    #[error("step {seq} was already recorded")]
    AlreadyRecorded {
        /// The entry.
        seq: u32,
        /// Its recorded outcome.
        outcome: StoredOutcome,
    },
    /// A cron expression that does not parse.
    #[error("invalid cron expression {cron:?}: {reason}")]
    InvalidCron {
        /// The expression.
        cron: String,
        /// What is wrong.
        reason: String,
    },
    /// A field over its limit.
    #[error("{what} of {len} bytes is over the limit of {max}")]
    TooLarge {
        /// Which field.
        what: String,
        /// Its size.
        len: u64,
        /// The limit.
        max: u64,
    },
    /// An empty or otherwise unusable name.
    #[error("invalid {what}: {reason}")]
    Invalid {
        /// Which field.
        what: String,
        /// What is wrong.
        reason: String,
    },
}

/// A journal entry's state as an answer reports it.
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
pub enum EntryState {
    /// Not resolved yet (a step between attempts, a sleep, a wait, a call).
    Pending {
        /// Failed attempts so far (steps).
        attempts: u32,
    },
    /// Resolved with an outcome.
    Done(StoredOutcome),
    /// A signal wait that timed out.
    TimedOut,
}

/// The state machine's answer to a command.
#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
#[rkyv(attr(allow(missing_docs, reason = "rkyv's archived twin of a documented type")))]
pub enum Answer {
    /// Applied; nothing to report.
    Done,
    /// A start: the workflow's current fence and status; `created` is false when the id
    /// already existed (the existing workflow is the answer).
    Started {
        /// Its fence.
        fence: u64,
        /// Whether this command created it.
        created: bool,
        /// Its status.
        status: WorkflowStatus,
    },
    /// A claim: the new fence.
    Claimed {
        /// The fence.
        fence: u64,
    },
    /// A journal command: the entry's state after it.
    Entry(EntryState),
    /// A named timer: its id and due time; `created` is false when the name existed.
    Timer {
        /// The timer's id.
        id: u64,
        /// Its due time.
        due_ms: u64,
        /// Whether this command created it.
        created: bool,
    },
    /// The timers this command fired.
    Fired {
        /// Their ids.
        ids: Vec<u64>,
    },
    /// What an expiry removed.
    Expired {
        /// Workflows forgotten.
        workflows: u64,
        /// Timer fire records forgotten.
        fires: u64,
    },
    /// Refused.
    Rejected(Rejection),
}

#[cfg(test)]
mod tests;
