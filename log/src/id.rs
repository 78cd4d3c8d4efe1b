//! Identifiers: log ids and segment ids.

use std::fmt;

/// A record's position in the log: its index and the term it was written in.
///
/// Raft assigns both; a plain user of the log may use term 0 throughout.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct LogId {
    /// The term (Raft leader epoch) the record belongs to.
    pub term: u64,
    /// The record's index; index 0 is valid.
    pub index: u64,
}

impl LogId {
    /// A log id from its term and index.
    pub const fn new(term: u64, index: u64) -> Self {
        Self { term, index }
    }
}

impl fmt::Display for LogId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}-{}", self.term, self.index)
    }
}

/// A segment file's identity. Ids grow with each activation, and no byte written under an
/// older id survives into a file with a newer one verifying (the id seeds each batch header's
/// checksum, and each frame's in format 1), so a recycled file's old records are never read
/// as new ones.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct SegmentId(pub u64);

impl fmt::Display for SegmentId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:016x}", self.0)
    }
}
