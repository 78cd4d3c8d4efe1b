//! keel-raft's errors, and their one conversion into openraft's `io::Error` storage errors.

use std::io;
use std::path::PathBuf;

/// Result with keel-raft's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Why a keel-raft operation failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The underlying keel-log failed (I/O, corruption, a poisoned log).
    #[error("raft log: {0}")]
    Log(#[from] keel_log::Error),
    /// Stored bytes did not decode.
    #[error(transparent)]
    Decode(#[from] DecodeError),
    /// A file operation failed.
    #[error("{op} {}: {source}", path.display())]
    Io {
        /// What was being done.
        op: &'static str,
        /// The file or directory.
        path: PathBuf,
        /// The operating system's error.
        source: io::Error,
    },
    /// A storage error stopped this node earlier; its data may miss acknowledged entries.
    #[error(
        "data directory {} needs repair after a storage error ({reason}): it may have lost acknowledged entries; remove the directory, restart the node, then run `keel repair --id <node id> --addr <its address>` so it rejoins as a learner, catches up and is promoted",
        dir.display()
    )]
    NeedsRepair {
        /// The node's data directory.
        dir: PathBuf,
        /// The error that stopped the node, as recorded in the marker file.
        reason: String,
    },
    /// The data directory belongs to another node or cluster.
    #[error("data directory {} belongs to {found}, but this node is {expected}", dir.display())]
    ForeignDataDir {
        /// The node's data directory.
        dir: PathBuf,
        /// Identity recorded in the directory.
        found: String,
        /// Identity of the node being started.
        expected: String,
    },
    /// A value the state references could not be read or kept ([`crate::values`]).
    #[error("values: {0}")]
    Values(#[from] crate::values::ValueError),
    /// Raft itself refused or failed.
    #[error("raft: {0}")]
    Raft(String),
    /// A TLS or authentication setting cannot be used.
    #[error("security: {0}")]
    Security(#[from] crate::security::SecurityError),
    /// A bad argument or configuration value.
    #[error("invalid {what}: {reason}")]
    Invalid {
        /// The argument or setting.
        what: &'static str,
        /// What is wrong with it.
        reason: String,
    },
}

/// Bytes from disk or the wire that do not decode.
#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum DecodeError {
    /// A vote or committed blob of an unknown shape.
    #[error("malformed {what} blob of {len} bytes")]
    Blob {
        /// Which blob.
        what: &'static str,
        /// Its length.
        len: usize,
    },
    /// A membership that openraft rejects.
    #[error("invalid membership: {0}")]
    Membership(String),
    /// A snapshot file or stream that does not decode.
    #[error("malformed snapshot: {0}")]
    Snapshot(String),
    /// A protobuf message missing a required field or carrying a bad value.
    #[error("malformed message: {0}")]
    Message(String),
}

impl Error {
    /// An [`Error::Io`] for `op` on `path`.
    pub(crate) fn io(op: &'static str, path: impl Into<PathBuf>) -> impl FnOnce(io::Error) -> Self {
        let path = path.into();
        move |source| Self::Io { op, path, source }
    }
}

impl From<Error> for io::Error {
    fn from(error: Error) -> Self {
        match error {
            Error::Io { source, .. } => source,
            other => io::Error::other(other),
        }
    }
}

impl From<DecodeError> for io::Error {
    fn from(error: DecodeError) -> Self {
        io::Error::new(io::ErrorKind::InvalidData, error)
    }
}
