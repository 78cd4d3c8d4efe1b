//! Size limits on what crosses the wire or enters the log, each with a clear error.

/// Largest gRPC message a node sends or accepts (tonic's default is 4 MiB).
pub const MESSAGE_MAX_BYTES: usize = 16 * 1024 * 1024;
/// Largest single record of the plain log.
pub const RECORD_MAX_BYTES: usize = COMMAND_MAX_BYTES - 16;
/// Largest client command (a batch of records and its framing): one keel-log record with room
/// for the entry's own encoding.
pub const COMMAND_MAX_BYTES: usize = 4 * 1024 * 1024 - 4096;
/// Most records in one `Append` batch.
pub const APPEND_BATCH_MAX_RECORDS: usize = 10_000;
/// Replication sends at most this many bytes of entries per `AppendEntries` message.
pub const REPLICATION_BATCH_MAX_BYTES: usize = 4 * 1024 * 1024;
/// Snapshot transfer chunk size.
pub const SNAPSHOT_CHUNK_BYTES: usize = 1024 * 1024;
