//! The node's one wall-clock read: the leader stamps commands with it, so state machines
//! never read a clock themselves.
//!
//! **Skipped time (testing).** A test may move this process's clocks forward
//! ([`skip`]): the wall clock read here and the monotonic clock timers are measured on
//! (`keel-scheduler`'s `mono`) both run ahead by the total skipped, so every timer due
//! within a skip fires at once, never before its due time by the skipped clocks, and
//! everything stamped from this clock (command stamps, the scheduler's and the plain log's
//! retention, a workflow's `now`) follows. Client sessions expire by count (the least
//! recently written beyond `sessions_max`), not by time, so a skip leaves them be. Raft's
//! heartbeats and elections, workers' leases and request deadlines keep real time. The skip is process-wide: it is meant for a test
//! cluster whose nodes all run in one process, and it is zero unless a test skips.

use std::sync::LazyLock;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tokio::sync::watch;

/// Nanoseconds skipped in all; the watch tells waiters it changed.
static SKIPPED: LazyLock<(AtomicU64, watch::Sender<u64>)> =
    LazyLock::new(|| (AtomicU64::new(0), watch::channel(0).0));

/// Milliseconds since the Unix epoch (0 if the clock is before it), plus the time skipped.
pub fn now_ms() -> u64 {
    u64::try_from(since_epoch().as_millis()).unwrap_or(u64::MAX)
}

/// The time since the Unix epoch, at the clock's full resolution (zero if the clock is
/// before it), plus the time skipped: for waiting until a stamped millisecond without
/// rounding.
#[expect(
    clippy::disallowed_methods,
    reason = "the leader's stamp is the one wall-clock read"
)]
pub fn since_epoch() -> Duration {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or(Duration::ZERO)
        + skipped()
}

/// The time skipped in this process so far.
pub fn skipped() -> Duration {
    Duration::from_nanos(SKIPPED.0.load(Ordering::Acquire))
}

/// Moves this process's clocks `by` forward (testing: see the module's docs). Timer
/// drivers waiting on the old time look again at once.
///
/// # Panics
/// When the total skipped would pass about 584 years.
pub fn skip(by: Duration) {
    let by = u64::try_from(by.as_nanos()).expect("a skip fits in u64 nanoseconds");
    let total = SKIPPED
        .0
        .fetch_add(by, Ordering::AcqRel)
        .checked_add(by)
        .expect("the total skipped fits in u64 nanoseconds");
    SKIPPED.1.send_replace(total);
}

/// Undoes every skip: the clocks jump back by the total skipped. Only for a process none of
/// whose nodes runs any more (a test cluster's end): a running node would see its clocks
/// go back.
pub fn reset_skipped() {
    SKIPPED.0.store(0, Ordering::Release);
    SKIPPED.1.send_replace(0);
}

/// Watches the total skipped (in nanoseconds): a timer driver wakes when it changes.
pub fn skips() -> watch::Receiver<u64> {
    SKIPPED.1.subscribe()
}

#[cfg(test)]
mod tests {
    use super::*;

    // The skip is process-wide and this crate's other tests share the process: it skips
    // 5 ms, which none of them can tell from scheduling noise, and does not reset.
    #[test]
    fn a_skip_moves_the_wall_clock_forward_and_wakes_watchers() {
        let mut watcher = skips();
        let before = since_epoch();
        skip(Duration::from_millis(5));
        let after = since_epoch();
        assert!(
            after >= before + Duration::from_millis(5),
            "{before:?} → {after:?}"
        );
        assert!(skipped() >= Duration::from_millis(5));
        assert!(watcher.has_changed().expect("the sender lives in a static"));
        assert!(*watcher.borrow_and_update() >= 5_000_000);
    }
}
