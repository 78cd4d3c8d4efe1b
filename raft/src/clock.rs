//! The node's one wall-clock read: the leader stamps commands with it, so state machines
//! never read a clock themselves.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Milliseconds since the Unix epoch (0 if the clock is before it).
#[expect(
    clippy::disallowed_methods,
    reason = "the leader's stamp is the one wall-clock read"
)]
pub fn now_ms() -> u64 {
    let since_epoch = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or(Duration::ZERO);
    u64::try_from(since_epoch.as_millis()).unwrap_or(u64::MAX)
}
