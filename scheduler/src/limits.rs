//! Size limits on what the scheduler journals, checked by the API and again, the same way on
//! every replica, by the state machine.

/// Longest workflow id, kind, step, signal, timer or schedule name, in bytes.
pub const NAME_MAX_BYTES: usize = 256;
/// Largest input, step result, signal payload, timer payload or error message, in bytes.
pub const PAYLOAD_MAX_BYTES: usize = 1024 * 1024;
/// Most signals of one name buffered for a workflow that has not waited for them yet.
pub const SIGNALS_BUFFERED_MAX: usize = 1024;
