//! The application a Raft group replicates: the one trait keel-raft knows it by.

use std::fmt;
use std::io::{self, Read, Write};

use bytes::Bytes;

use crate::values::ValueRef;

/// Where a command is applied: its Raft log id.
///
/// The pair is the same on every replica, and unique cluster-wide to the entry, so it serves
/// as a fence token for effects of the command (a timer fire, say): a token with a term and
/// index that never committed marks an effect nobody should have seen. The plain log's
/// appends, coalesced into one entry (see [`crate::coalesce`]), share its pair; commands
/// of other applications are never coalesced, so the pair is theirs alone.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct AppliedAt {
    /// The term of the leader that proposed the command.
    pub term: u64,
    /// The command's Raft log index.
    pub index: u64,
}

/// A deterministic state machine fed with committed commands.
///
/// keel-raft calls it from one task at a time. It must do no I/O and read no clock while
/// applying: two replicas applying the same commands must reach the same state (compare them
/// with [`Application::digest`]).
///
/// A state may hold values by reference instead of by copy: a [`ValueRef`] names bytes of a
/// command it applied (its Raft index and range), the same on every replica. The host keeps
/// every value [`Application::live_values`] lists readable, through the node's
/// [`ValueStore`](crate::values::ValueStore), also after the log is purged; applying never
/// reads one back (a value is read when someone asks for it: a status, a replay).
pub trait Application: Send + Sync + fmt::Debug + 'static {
    /// Applies the committed command at log id `at`; returns the answer to its writer.
    /// The command may be a view into the Raft log's memory mapping: an application that
    /// keeps it (or slices of it) for long should copy it, or it pins a log segment.
    fn apply(&mut self, at: AppliedAt, command: &Bytes) -> Bytes;

    /// Writes the whole state, for a snapshot.
    ///
    /// # Errors
    /// The writer's errors.
    fn write_snapshot(&self, out: &mut dyn Write) -> io::Result<()>;

    /// Replaces the whole state with one written by [`Application::write_snapshot`].
    ///
    /// # Errors
    /// The reader's errors, or `InvalidData` for bytes that do not decode; the state is then
    /// unspecified and the caller must not serve from it.
    fn restore(&mut self, input: &mut dyn Read) -> io::Result<()>;

    /// Checks snapshot bytes written by [`Application::write_snapshot`] of a state that
    /// applied the log up to `applied_index`, without touching this state: everything
    /// [`Application::restore`] would refuse, and any fact in it from a later index. A node
    /// checks a snapshot it receives before installing it, so a damaged or inconsistent one
    /// is refused (the leader sends one again) instead of stopping the node.
    ///
    /// # Errors
    /// `InvalidData` naming what is wrong; the reader's errors.
    fn check_snapshot(&self, input: &mut dyn Read, applied_index: u64) -> io::Result<()>;

    /// A digest of the whole state, equal on replicas that applied the same commands.
    fn digest(&self) -> u64;

    /// Every value this state references, in any order, repeats allowed. The host calls it
    /// under its lock when it builds a snapshot, so a large state should keep the list cheap
    /// to produce. None by default.
    fn live_values(&self) -> Vec<ValueRef> {
        Vec::new()
    }
}
