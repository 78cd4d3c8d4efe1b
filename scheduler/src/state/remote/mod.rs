//! Calls between clusters, as each side replicates them (`scheduler/REMOTE.md` §6, §7).
//!
//! The caller keeps, per remote alias, its binding to one callee identity, the stream's next
//! seq, the highest seq the callee is known to have taken (`acked`) and the outbox: every
//! item not yet settled with the callee, by seq. A call is a journal entry
//! ([`EntryKind::Remote`](super::EntryKind::Remote)) plus one outbox item; its deadline timer
//! targets the entry and is held by the item.
//!
//! The callee keeps, per caller identity, the watermark `W` (every seq up to it was taken,
//! once; none above it) and a record per taken call until it forgets it. The workflow a
//! record runs is named `@<caller identity>.<callee identity index>.<seq>`, which is how a
//! workflow's end finds its record, and how its timers name it.
//!
//! `caller` and `callee` apply the commands of each side; `remint` ends both sides'
//! dealings when the host replaces the cluster's identity; `consistency` checks the
//! invariants C1–C3 and E1–E3 of the specification.

mod callee;
mod caller;
mod consistency;
mod remint;

use std::collections::BTreeMap;

use keel_raft::values::ValueRef;
use rkyv::{Archive, Deserialize, Serialize};

pub(in crate::state) use self::callee::TakeRules;
pub(in crate::state) use self::caller::CallRequest;
pub use self::consistency::RemoteInconsistency;
use crate::command::{CallId, Refusal, Value};

/// Both sides of every remote call this cluster takes part in.
#[derive(Archive, Serialize, Deserialize, Debug, Clone, Default, PartialEq, Eq)]
#[rkyv(attr(allow(missing_docs, reason = "rkyv's archived twin of a documented type")))]
pub struct RemoteState {
    /// As caller, by remote alias.
    pub(in crate::state) outgoing: BTreeMap<String, Outgoing>,
    /// As callee, by caller identity.
    pub(in crate::state) incoming: BTreeMap<String, Incoming>,
    /// The index of the entry that last replaced this cluster's identity (0 if none did):
    /// a callee command addressed to an older identity is refused.
    pub(in crate::state) replaced_at: u64,
    /// The index of the `RemoteEnabled` that enabled calls between clusters (0 until one
    /// applied): no remote call is proposed before.
    pub(in crate::state) enabled_at: u64,
}

/// A caller's stream to one remote.
#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
#[rkyv(attr(allow(missing_docs, reason = "rkyv's archived twin of a documented type")))]
pub struct Outgoing {
    /// The callee identity the stream is bound to, once bound.
    pub binding: Option<Binding>,
    /// The seq the next call takes (from 1).
    pub next_seq: u64,
    /// The highest seq the callee is known to have taken.
    pub acked: u64,
    /// Items not settled with the callee, by seq.
    pub outbox: BTreeMap<u64, OutItem>,
    /// The callee identity an operator's rebind unbound: a Hello answered by it halts the
    /// remote (its watermark is above the new stream's seqs; REMOTE.md §5).
    pub retired: Option<String>,
}

impl Default for Outgoing {
    fn default() -> Self {
        Self {
            binding: None,
            next_seq: 1,
            acked: 0,
            outbox: BTreeMap::new(),
            retired: None,
        }
    }
}

impl Outgoing {
    /// The items a Start request carries next, in seq order, at most `max`: every item not
    /// known taken (pending or withdrawing) from the lowest. Those above `acked` are
    /// consecutive (C1), so the callee can take them; those at or below it are resent to
    /// learn their answer.
    pub fn starts_to_send(&self, max: usize) -> impl Iterator<Item = (u64, &OutItem)> + '_ {
        self.outbox
            .iter()
            .filter(|(_, item)| matches!(item.state, OutState::Pending | OutState::Withdraw))
            .map(|(&seq, item)| (seq, item))
            .take(max)
    }

    /// The cancels to send, in seq order, at most `max`.
    pub fn cancels_to_send(&self, max: usize) -> impl Iterator<Item = (u64, &OutItem, &str)> + '_ {
        self.outbox
            .iter()
            .filter_map(|(&seq, item)| match &item.state {
                OutState::Cancel { reason } => Some((seq, item, reason.as_str())),
                _ => None,
            })
            .take(max)
    }

    /// Whether a call is unresolved: its completion may come. (A Get held open from the
    /// moment a call is made, not only once its start is known taken, keeps the commit of
    /// the start's answer off a call's round trip.)
    pub fn awaits_completions(&self) -> bool {
        self.outbox
            .values()
            .any(|item| matches!(item.state, OutState::Pending | OutState::Started { .. }))
    }
}

/// A stream's binding to a callee identity.
#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
#[rkyv(attr(allow(missing_docs, reason = "rkyv's archived twin of a documented type")))]
pub struct Binding {
    /// The callee's identity text.
    pub callee: String,
    /// The Raft index of the command that made it.
    pub generation: u64,
}

/// A caller's outbox item: one call's start, withdrawal or cancel still to deliver.
#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
#[rkyv(attr(allow(missing_docs, reason = "rkyv's archived twin of a documented type")))]
pub struct OutItem {
    /// The call.
    pub call: CallId,
    /// The kind it starts.
    pub kind: String,
    /// Its input.
    pub input: Value,
    /// Its deadline, ms since the Unix epoch.
    pub deadline_ms: u64,
    /// The deadline timer, while the call is unresolved.
    pub deadline_timer: Option<u64>,
    /// Where delivery stands.
    pub state: OutState,
}

/// Where a caller's item stands.
#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
#[rkyv(attr(allow(missing_docs, reason = "rkyv's archived twin of a documented type")))]
pub enum OutState {
    /// Unresolved; not known to be taken.
    Pending,
    /// Unresolved; taken, running there as `workflow`.
    Started {
        /// The callee's workflow.
        workflow: String,
    },
    /// Resolved here; not known to be taken: travels as a withdrawal in the stream.
    Withdraw,
    /// Resolved here; taken: the callee must cancel it.
    Cancel {
        /// Why.
        reason: String,
    },
}

impl OutState {
    /// The state's name, as `keel status` prints it.
    pub fn as_str(&self) -> &'static str {
        match self {
            Self::Pending => "pending start",
            Self::Started { .. } => "started",
            Self::Withdraw => "withdrawing",
            Self::Cancel { .. } => "cancelling",
        }
    }
}

/// A callee's view of one caller identity's stream.
#[derive(Archive, Serialize, Deserialize, Debug, Clone, Default, PartialEq, Eq)]
#[rkyv(attr(allow(missing_docs, reason = "rkyv's archived twin of a documented type")))]
pub struct Incoming {
    /// Every seq up to it was taken, once; none above it.
    pub watermark: u64,
    /// What is held of taken calls, by seq.
    pub records: BTreeMap<u64, InRecord>,
}

/// What a callee holds of a taken call until it forgets it.
#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
#[rkyv(attr(allow(missing_docs, reason = "rkyv's archived twin of a documented type")))]
pub struct InRecord {
    /// The call.
    pub call: CallId,
    /// Its deadline, ms since the Unix epoch.
    pub deadline_ms: u64,
    /// When it is forgotten at the latest (deadline, capped, plus grace).
    pub forget_at_ms: u64,
    /// The timer that forgets it.
    pub forget_timer: u64,
    /// Where it stands.
    pub state: InState,
}

/// Where a callee's record stands.
#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
#[rkyv(attr(allow(missing_docs, reason = "rkyv's archived twin of a documented type")))]
pub enum InState {
    /// Its workflow runs; the deadline timer cancels it.
    Running {
        /// The workflow.
        workflow: String,
        /// The deadline timer.
        deadline_timer: u64,
    },
    /// Its workflow ended; the completion waits for the caller's acknowledgement.
    Completed {
        /// The workflow.
        workflow: String,
        /// How it ended.
        outcome: InOutcome,
    },
    /// Refused when taken; kept so a repeated start gets the same answer.
    Refused {
        /// Why.
        refusal: Refusal,
        /// In words.
        message: String,
    },
}

/// How a callee's workflow ended, as the state holds it.
#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
#[rkyv(attr(allow(missing_docs, reason = "rkyv's archived twin of a documented type")))]
pub enum InOutcome {
    /// Finished with a value.
    Completed(Value),
    /// Failed, with its message.
    Failed(Value),
    /// Cancelled there, with its message.
    Cancelled(Value),
    /// Cancelled by the call's deadline.
    Deadline,
}

impl InOutcome {
    fn value(&self) -> Option<&Value> {
        match self {
            Self::Completed(value) | Self::Failed(value) | Self::Cancelled(value) => Some(value),
            Self::Deadline => None,
        }
    }
}

/// The name of the record of `seq` from `caller`, taken under this cluster's identity of
/// index `callee_index`: its workflow's id, and what its timers target.
pub fn inbound_name(caller: &str, callee_index: u64, seq: u64) -> String {
    format!("@{caller}.{callee_index}.{seq}")
}

/// The caller identity and seq an inbound record's name holds (see [`inbound_name`]).
pub fn parse_inbound_name(name: &str) -> Option<(&str, u64)> {
    let rest = name.strip_prefix('@')?;
    let (rest, seq) = rest.rsplit_once('.')?;
    let (caller, index) = rest.rsplit_once('.')?;
    index.parse::<u64>().ok()?;
    Some((caller, seq.parse().ok()?))
}

impl RemoteState {
    /// The caller's stream to `remote`, if it has one.
    pub fn outgoing(&self, remote: &str) -> Option<&Outgoing> {
        self.outgoing.get(remote)
    }

    /// Whether calls between clusters are enabled: every member's build applied them when
    /// a leader looked.
    pub fn enabled(&self) -> bool {
        self.enabled_at != 0
    }

    /// The index of the entry that last replaced this cluster's identity; 0 if none did.
    pub fn replaced_at(&self) -> u64 {
        self.replaced_at
    }

    /// Every caller stream, by remote alias.
    pub fn outgoing_streams(&self) -> impl Iterator<Item = (&str, &Outgoing)> + '_ {
        self.outgoing.iter().map(|(alias, o)| (alias.as_str(), o))
    }

    /// What this cluster holds as callee of `caller`.
    pub fn incoming(&self, caller: &str) -> Option<&Incoming> {
        self.incoming.get(caller)
    }

    /// Every callee stream, by caller identity.
    pub fn incoming_streams(&self) -> impl Iterator<Item = (&str, &Incoming)> + '_ {
        self.incoming.iter().map(|(caller, i)| (caller.as_str(), i))
    }

    /// Every value it holds by reference.
    pub fn recorded_values(&self) -> impl Iterator<Item = ValueRef> + '_ {
        let inputs = self
            .outgoing
            .values()
            .flat_map(|o| o.outbox.values())
            .map(|item| &item.input);
        let outcomes = self
            .incoming
            .values()
            .flat_map(|i| i.records.values())
            .filter_map(|record| match &record.state {
                InState::Completed { outcome, .. } => outcome.value(),
                _ => None,
            });
        inputs.chain(outcomes).filter_map(Value::recorded)
    }
}

#[cfg(test)]
mod tests;
