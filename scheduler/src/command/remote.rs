//! What the remote-call commands carry (`scheduler/REMOTE.md` §14): the items of a stream of
//! starts, their results, completions and their acknowledgements, cancels and theirs. These
//! are the journaled forms; `peer_service` and `peer_driver` translate them to and from
//! `keel.remote.v1` messages.

use rkyv::{Archive, Deserialize, Serialize};

/// A call's id: the Raft index of the caller's committed `RemoteCall` (the key), with the
/// calling workflow and its journal position (carried, shown and checked, never the key).
#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
#[rkyv(attr(allow(missing_docs, reason = "rkyv's archived twin of a documented type")))]
pub struct CallId {
    /// The caller's `RemoteCall` index.
    pub index: u64,
    /// The calling workflow.
    pub workflow: String,
    /// The call's journal position in it.
    pub position: u32,
}

/// Why a callee refused a start (permanent: the call fails, or times out for
/// `DeadlinePassed`).
#[derive(Archive, Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq)]
#[rkyv(attr(allow(missing_docs, reason = "rkyv's archived twin of a documented type")))]
pub enum Refusal {
    /// No executor of the callee declared the kind.
    UnknownKind,
    /// The callee does not let this caller start the kind.
    NotExposed,
    /// The item is over a limit of the callee.
    Invalid,
    /// The call's deadline had passed when the callee took it.
    DeadlinePassed,
    /// The call's deadline is further away than the callee allows.
    DeadlineTooLong,
}

impl Refusal {
    /// The refusal's name, as `keel status` and errors print it.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::UnknownKind => "unknown kind",
            Self::NotExposed => "kind not exposed",
            Self::Invalid => "invalid",
            Self::DeadlinePassed => "deadline passed",
            Self::DeadlineTooLong => "deadline too long",
        }
    }
}

/// One item of a caller's stream as the callee takes it (`RemoteStart`).
#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
#[rkyv(attr(allow(missing_docs, reason = "rkyv's archived twin of a documented type")))]
pub struct InboundStart {
    /// Its seq in the stream.
    pub seq: u64,
    /// The call it carries.
    pub call: CallId,
    /// A withdrawal: the call resolved at the caller before it learned the item was taken.
    pub withdrawn: bool,
    /// The kind to start.
    pub kind: String,
    /// Its input.
    pub input: Vec<u8>,
    /// The call's deadline, ms since the Unix epoch.
    pub deadline_ms: u64,
    /// The callee leader's refusal, decided from its configuration (exposure, limits).
    pub refusal: Option<(Refusal, String)>,
}

/// What a callee answered for one start item.
#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
#[rkyv(attr(allow(missing_docs, reason = "rkyv's archived twin of a documented type")))]
pub enum StartStatus {
    /// Taken and started (or taken earlier: the same answer again).
    Accepted {
        /// The callee's workflow.
        workflow: String,
        /// Whether it has finished already.
        finished: bool,
    },
    /// Taken and refused.
    Refused {
        /// Why.
        refusal: Refusal,
        /// In words.
        message: String,
    },
    /// The withdrawal was taken (and the call's workflow, if one ran, cancelled).
    Withdrawn,
    /// Taken once, no longer held: its deadline and grace passed.
    Forgotten,
    /// The seq is held under another call id.
    Conflict,
}

/// A start item's result, echoing its call.
#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
#[rkyv(attr(allow(missing_docs, reason = "rkyv's archived twin of a documented type")))]
pub struct StartResult {
    /// The item's seq.
    pub seq: u64,
    /// Its call index.
    pub call: u64,
    /// What the callee answered.
    pub status: StartStatus,
}

/// How a callee's workflow ended, as its completion says.
#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
#[rkyv(attr(allow(missing_docs, reason = "rkyv's archived twin of a documented type")))]
pub enum RemoteOutcome {
    /// Finished with a value.
    Completed(Vec<u8>),
    /// Failed, with its message.
    Failed(String),
    /// Cancelled at the callee, with its message.
    Cancelled(String),
    /// Cancelled at the callee by the call's deadline.
    Deadline,
}

impl RemoteOutcome {
    /// The bytes it carries (a value or a message; none for a deadline).
    pub fn bytes(&self) -> &[u8] {
        match self {
            Self::Completed(value) => value,
            Self::Failed(message) | Self::Cancelled(message) => message.as_bytes(),
            Self::Deadline => &[],
        }
    }
}

/// A callee's completion of one call (`RemoteComplete`).
#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
#[rkyv(attr(allow(missing_docs, reason = "rkyv's archived twin of a documented type")))]
pub struct Completion {
    /// The call's seq.
    pub seq: u64,
    /// Its call index.
    pub call: u64,
    /// How it ended.
    pub outcome: RemoteOutcome,
}

/// A caller's acknowledgement of a completion: each is terminal.
#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
#[rkyv(attr(allow(missing_docs, reason = "rkyv's archived twin of a documented type")))]
pub enum AckStatus {
    /// It resolved the call.
    Resolved,
    /// The call had resolved already, as said.
    AlreadyResolved(String),
    /// No call of this binding waits for it.
    CallerGone,
}

/// A cancel the caller asks of the callee (`RemoteCancel`).
#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
#[rkyv(attr(allow(missing_docs, reason = "rkyv's archived twin of a documented type")))]
pub struct CancelItem {
    /// The call's seq.
    pub seq: u64,
    /// Its call index.
    pub call: u64,
    /// Why (given to the cancelled workflow).
    pub reason: String,
}

/// What the callee did with a cancel.
#[derive(Archive, Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq)]
#[rkyv(attr(allow(missing_docs, reason = "rkyv's archived twin of a documented type")))]
pub enum CancelStatus {
    /// Its workflow was running and is cancelled now.
    Cancelled,
    /// Its workflow had finished; the completion is dropped.
    AlreadyFinished,
    /// Not held (refused, or forgotten).
    NotHeld,
    /// The seq was never taken (a caller bug: it cancels only what was taken).
    NotTaken,
    /// The seq is held under another call id; nothing done.
    Conflict,
}

/// A cancel's result, echoing its call.
#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
#[rkyv(attr(allow(missing_docs, reason = "rkyv's archived twin of a documented type")))]
pub struct CancelResult {
    /// The call's seq.
    pub seq: u64,
    /// Its call index.
    pub call: u64,
    /// What the callee did.
    pub status: CancelStatus,
}
