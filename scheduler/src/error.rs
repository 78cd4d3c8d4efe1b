//! keel-scheduler's errors.

/// Result with keel-scheduler's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Why a keel-scheduler operation failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A configuration file or value is invalid.
    #[error("invalid configuration: {0}")]
    Config(String),
    /// The node failed.
    #[error(transparent)]
    Raft(#[from] keel_raft::Error),
    /// Raft stopped (a fatal storage error, or shutdown) before a request reached it.
    #[error("raft has stopped: {0}")]
    Stopped(String),
}
