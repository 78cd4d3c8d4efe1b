//! The application a Raft group replicates: the one trait keel-raft knows it by.

use std::fmt;
use std::io::{self, Read, Write};

use bytes::Bytes;

use crate::cluster_identity::CommittedIdentity;
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
/// every value a snapshot's image lists ([`SnapshotImage::live_values`]) readable, through the node's
/// [`ValueStore`](crate::values::ValueStore), also after the log is purged; applying never
/// reads one back (a value is read when someone asks for it: a status, a replay).
pub trait Application: Send + Sync + fmt::Debug + 'static {
    /// Applies the committed command at log id `at`; returns the answer to its writer.
    /// The command may be a view into the Raft log's memory mapping: an application that
    /// keeps it (or slices of it) for long should copy it, or it pins a log segment.
    fn apply(&mut self, at: AppliedAt, command: &Bytes) -> Bytes;

    /// A copy of the whole state, for a snapshot. The host takes it under its lock, so
    /// applying waits meanwhile: it should cost memory copies in proportion to the state's
    /// metadata (clone what is cheap to clone, share what is immutable), leaving the
    /// encoding, and the listing of its values, to [`SnapshotImage`] after the lock is
    /// released.
    fn snapshot_image(&self) -> Box<dyn SnapshotImage>;

    /// Writes the whole state, for a snapshot: its image, written at once.
    ///
    /// # Errors
    /// The writer's errors.
    fn write_snapshot(&self, out: &mut dyn Write) -> io::Result<()> {
        self.snapshot_image().write(out)
    }

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

    /// Which commands this build applies: a number raised whenever a build applies a
    /// command an older one would not (it reports it in `Status.application_protocol`, and
    /// proposes such a command only once every member reports it). 0 by default.
    fn protocol(&self) -> u32 {
        0
    }

    /// The entry at `at`, stamped `stamp_ms` by its proposer, replaced the cluster's
    /// identity with `identity` (an operator's remint, for a cluster re-created from old
    /// data: scheduler/REMOTE.md §3). Called while applying that entry, on every replica, in
    /// log order with the commands; what the application holds for the old identity's
    /// dealings with other clusters ends here. Not called for the first identity, nor for a
    /// command that changed nothing.
    fn identity_replaced(&mut self, at: AppliedAt, identity: &CommittedIdentity, stamp_ms: u64) {
        let _ = (at, identity, stamp_ms);
    }
}

/// A copy of an application's state taken for a snapshot ([`Application::snapshot_image`]):
/// written, and its values listed, off the host's lock while applying goes on.
pub trait SnapshotImage: Send + 'static {
    /// Every value the copied state references, in any order, repeats allowed: the host
    /// keeps them readable ([`crate::values`]). None by default.
    fn live_values(&self) -> Vec<ValueRef> {
        Vec::new()
    }

    /// Writes the copied state, as [`Application::restore`] reads it.
    ///
    /// # Errors
    /// The writer's errors.
    fn write(self: Box<Self>, out: &mut dyn Write) -> io::Result<()>;
}

/// An image already encoded, with the values it references: for a state small enough to
/// encode under the host's lock.
#[derive(Debug, Clone, Default)]
pub struct EncodedImage {
    /// The snapshot bytes.
    pub bytes: Vec<u8>,
    /// The values the state references.
    pub values: Vec<ValueRef>,
}

impl SnapshotImage for EncodedImage {
    fn live_values(&self) -> Vec<ValueRef> {
        self.values.clone()
    }

    fn write(self: Box<Self>, out: &mut dyn Write) -> io::Result<()> {
        out.write_all(&self.bytes)
    }
}
