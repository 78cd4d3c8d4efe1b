//! The crate's one error type.

use std::{io, path::PathBuf};

use crate::{LogId, SegmentId};

/// Result alias used throughout `keel-log`.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Everything that can go wrong opening, writing or reading a log.
///
/// Disk, input and corruption faults are errors; broken internal invariants panic.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// An operating-system I/O call failed.
    #[error("{op} {path}: {source}")]
    Io {
        /// What the log was doing.
        op: &'static str,
        /// The file or directory involved.
        path: PathBuf,
        /// The operating system's error.
        #[source]
        source: io::Error,
    },
    /// Another `Log` (in this or another process) holds the directory's lock.
    #[error("log directory {dir} is locked by another open log")]
    Locked {
        /// The contested directory.
        dir: PathBuf,
    },
    /// The options cannot describe a working log.
    #[error("invalid options: {reason}")]
    InvalidOptions {
        /// Which rule the options broke.
        reason: &'static str,
    },
    /// The directory holds a file the log did not write.
    #[error("foreign file {path} in the log directory")]
    ForeignFile {
        /// The unexpected file.
        path: PathBuf,
    },
    /// Bytes on disk fail verification where the log had made them durable.
    #[error("segment {segment} corrupted at byte {offset}: {reason}")]
    Corrupted {
        /// The segment holding the bad bytes.
        segment: SegmentId,
        /// Byte offset of the bad frame or header inside the segment file.
        offset: u64,
        /// What failed.
        reason: Corruption,
    },
    /// Recovery found a torn (partially written) tail and the policy is strict.
    #[error("segment {segment} has a torn tail at byte {offset} (recovery policy is strict)")]
    TornTail {
        /// The tail segment.
        segment: SegmentId,
        /// Where the valid records end.
        offset: u64,
    },
    /// A segment file is shorter or longer than its header says.
    #[error("segment {segment} is {actual_bytes} bytes, its header says {expected_bytes}")]
    SegmentSizeMismatch {
        /// The segment.
        segment: SegmentId,
        /// Size the header records.
        expected_bytes: u64,
        /// Size of the file.
        actual_bytes: u64,
    },
    /// Records are missing between two segments (a segment was lost).
    #[error(
        "records missing before segment {segment}: expected index {expected_index}, found {found_index}"
    )]
    MissingRecords {
        /// The segment after the gap.
        segment: SegmentId,
        /// The index that should come next.
        expected_index: u64,
        /// The index the segment starts at.
        found_index: u64,
    },
    /// The newest segment named in the meta file is missing.
    #[error("segment {segment} is recorded in the meta file but missing from the directory")]
    MissingSegment {
        /// The missing segment.
        segment: SegmentId,
    },
    /// Neither slot of the meta file verifies, or the file is missing while segments exist.
    #[error("meta file {path} is unreadable: {reason}")]
    MetaCorrupted {
        /// The meta file.
        path: PathBuf,
        /// What failed.
        reason: &'static str,
    },
    /// A record's encoded size is over the configured limit.
    #[error("record of {len_bytes} bytes exceeds the limit of {limit_bytes} bytes")]
    RecordTooLarge {
        /// The record's encoded size.
        len_bytes: usize,
        /// The configured limit.
        limit_bytes: usize,
    },
    /// A metadata blob (vote or committed id) is over its slot's limit.
    #[error("meta blob of {len_bytes} bytes exceeds the limit of {limit_bytes} bytes")]
    MetaBlobTooLarge {
        /// The blob's size.
        len_bytes: usize,
        /// The limit.
        limit_bytes: usize,
    },
    /// An append does not continue the log.
    #[error("append at index {got} does not continue the log (next index is {expected})")]
    NonContiguous {
        /// The index the log expects next.
        expected: u64,
        /// The index the caller gave.
        got: u64,
    },
    /// An append's term is lower than the term of the record before it.
    #[error("record {id} has a lower term than the record before it (term {previous_term})")]
    TermRegression {
        /// The offending record.
        id: LogId,
        /// Term of the previous record.
        previous_term: u64,
    },
    /// The operation names records that were already purged.
    #[error("index {index} is at or below the purged id {purged}")]
    Purged {
        /// The index asked for.
        index: u64,
        /// The last purged id.
        purged: LogId,
    },
    /// An index is out of the log's range (`u64::MAX` is reserved: nothing can follow it).
    #[error("index {index} is out of range")]
    IndexOutOfRange {
        /// The index given.
        index: u64,
    },
    /// Bytes offered as a record are not a valid archive of the log's record type.
    #[error("invalid record payload: {source}")]
    InvalidPayload {
        /// rkyv's validation error.
        #[source]
        source: rkyv::rancor::Error,
    },
    /// A value could not be serialized.
    #[error("cannot encode record: {source}")]
    Encode {
        /// rkyv's serialization error.
        #[source]
        source: rkyv::rancor::Error,
    },
    /// An earlier write or sync failed; the log accepts no more writes.
    ///
    /// A failed `fdatasync` is never retried: the page cache may already have dropped the
    /// bytes it could not write ("fsyncgate"), so a retry could report success for data that
    /// is gone. Reopen (recovery) or repair the directory.
    #[error("log is poisoned by an earlier failed {op}: {kind}")]
    Poisoned {
        /// The operation that failed first.
        op: &'static str,
        /// Its error kind.
        kind: io::ErrorKind,
    },
    /// The log was closed before the operation finished.
    #[error("log closed")]
    Closed,
    /// A batch grew past what one batch can hold (frame offsets are `u32`); append it and
    /// start another.
    #[error("batch holds {limit_bytes} bytes, the most one batch can")]
    BatchTooLarge {
        /// The most bytes of frames one batch holds.
        limit_bytes: usize,
    },
    /// A segment file is in a format this build does not read (written by a newer Keel).
    #[error(
        "segment {segment} is in format {version}; this build reads formats {oldest} to {newest}"
    )]
    UnsupportedFormat {
        /// The segment.
        segment: SegmentId,
        /// The format its header gives.
        version: u32,
        /// The oldest format this build reads.
        oldest: u32,
        /// The format this build writes.
        newest: u32,
    },
}

/// What failed when verifying bytes read from disk.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum Corruption {
    /// A segment header's magic, version or checksum is wrong.
    #[error("bad segment header")]
    BadSegmentHeader,
    /// The header names another segment id or base index than the file name.
    #[error("segment header does not match the file name")]
    HeaderMismatch,
    /// A frame's length guard or bounds are wrong.
    #[error("bad frame length")]
    BadLength,
    /// A frame's CRC32C does not match its bytes.
    #[error("checksum mismatch")]
    BadChecksum,
    /// A frame has an unknown kind.
    #[error("unknown frame kind")]
    BadKind,
    /// A frame carries the wrong index.
    #[error("expected index {expected}, found {found}")]
    IndexOutOfOrder {
        /// Index expected at this position.
        expected: u64,
        /// Index the frame carries.
        found: u64,
    },
    /// A frame's term is lower than its predecessor's.
    #[error("term went backwards")]
    TermRegression,
    /// A frame's checksum matches but its payload is not a valid archive.
    #[error("payload fails rkyv validation")]
    InvalidArchive,
    /// A sealed (non-tail) segment has no seal frame.
    #[error("sealed segment lacks its seal frame")]
    MissingSeal,
}

impl Error {
    pub(crate) fn io(op: &'static str, path: impl Into<PathBuf>) -> impl FnOnce(io::Error) -> Self {
        let path = path.into();
        move |source| Self::Io { op, path, source }
    }
}
