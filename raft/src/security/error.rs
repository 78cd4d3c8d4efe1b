//! Why a security setting could not be used.

use std::path::PathBuf;

/// A certificate, key, CA or token file that could not be used, or a configuration that
/// would serve without the protection it asks for.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SecurityError {
    /// A file could not be read.
    #[error("reading the {what} {}: {source}", path.display())]
    Read {
        /// What the file holds (`certificate`, `private key`, `CA`, `tokens file`, …).
        what: &'static str,
        /// The file.
        path: PathBuf,
        /// The error.
        source: std::io::Error,
    },
    /// A file could not be written.
    #[error("writing {}: {source}", path.display())]
    Write {
        /// The file.
        path: PathBuf,
        /// The error.
        source: std::io::Error,
    },
    /// A file was read but holds nothing usable.
    #[error("the {what} {}: {reason}", path.display())]
    Invalid {
        /// What the file holds.
        what: &'static str,
        /// The file.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
    /// rustls refused the certificates and key together.
    #[error("the TLS configuration was refused: {0}")]
    Tls(String),
    /// A configuration that cannot be served as given.
    #[error("{0}")]
    Config(String),
}

/// A shorthand for security results.
pub type Result<T, E = SecurityError> = std::result::Result<T, E>;
