//! The node's one wall-clock read: the leader stamps commands with it, so state machines
//! never read a clock themselves.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Milliseconds since the Unix epoch (0 if the clock is before it).
pub fn now_ms() -> u64 {
    u64::try_from(since_epoch().as_millis()).unwrap_or(u64::MAX)
}

/// The time since the Unix epoch, at the clock's full resolution (zero if the clock is
/// before it): for waiting until a stamped millisecond without rounding.
#[expect(
    clippy::disallowed_methods,
    reason = "the leader's stamp is the one wall-clock read"
)]
pub fn since_epoch() -> Duration {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or(Duration::ZERO)
}
