//! The state machine's answers to commands, and its refusals: the same on every replica.

use rkyv::{Archive, Deserialize, Serialize};

use super::{AckStatus, CancelResult, StartResult, StoredOutcome, WorkflowStatus};

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
    /// A callee command addressed to an identity of this cluster that a remint replaced
    /// (proposed before the replacement, applied after it).
    #[error(
        "this cluster's identity committed at index {addressed} was replaced at index {replaced_at}"
    )]
    IdentityReplaced {
        /// The index of the identity the command addressed.
        addressed: u64,
        /// The index of the replacement.
        replaced_at: u64,
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
    /// A binding: the one in force after the command (first-wins).
    RemoteBound {
        /// The callee's identity text.
        callee: String,
        /// The binding's generation.
        generation: u64,
    },
    /// A callee's take of start items: the prefix it looked at, and its watermark after.
    RemoteStarted {
        /// The results, in item order.
        results: Vec<StartResult>,
        /// The caller's watermark here.
        watermark: u64,
    },
    /// An unbinding: how many unresolved calls it failed.
    RemoteUnbound {
        /// Calls failed.
        failed: u64,
    },
    /// A caller's acknowledgements of completions, in their order.
    RemoteAcks {
        /// One per completion.
        acks: Vec<AckStatus>,
    },
    /// A callee's cancels, in item order, and its watermark.
    RemoteCancelled {
        /// One per item.
        results: Vec<CancelResult>,
        /// The caller's watermark here.
        watermark: u64,
    },
}
