//! This process's monotonic clock as a value a command can carry.
//!
//! The leader records its monotonic time in each command it proposes. Only the process that
//! took the reading can use it (another process, or this one after a restart, has another
//! boot id); it lets the proposing leader arm a relative timer from the moment it stamped
//! the command rather than from the later moment it applied it, so the timer's wait does
//! not include the commit.
//!
//! Timers are measured on this clock *plus the time a test skipped*
//! ([`keel_raft::clock::skip`]), read by [`instant_now`], so a skip moves the monotonic
//! side of a relative timer forward together with the wall-clock side.

use std::sync::OnceLock;
use std::time::Instant;

use rkyv::{Archive, Deserialize, Serialize};

/// A monotonic reading of one process.
#[derive(Archive, Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq)]
#[rkyv(attr(allow(missing_docs, reason = "rkyv's archived twin of a documented type")))]
pub struct MonoStamp {
    /// The process's random boot id.
    pub boot: u64,
    /// Nanoseconds since the process's boot instant.
    pub nanos: u64,
}

struct Boot {
    id: u64,
    at: Instant,
}

fn boot() -> &'static Boot {
    static BOOT: OnceLock<Boot> = OnceLock::new();
    BOOT.get_or_init(|| Boot {
        id: rand::random::<u64>() | 1,
        at: Instant::now(),
    })
}

/// This process's monotonic clock now (with the time skipped).
pub fn now() -> MonoStamp {
    let boot = boot();
    MonoStamp {
        boot: boot.id,
        nanos: u64::try_from((boot.at.elapsed() + keel_raft::clock::skipped()).as_nanos())
            .unwrap_or(u64::MAX),
    }
}

/// The monotonic clock timers are measured on: the real one plus the time skipped.
pub fn instant_now() -> Instant {
    Instant::now() + keel_raft::clock::skipped()
}

/// The instant `stamp` names, if this process took it.
pub fn instant(stamp: MonoStamp) -> Option<Instant> {
    let boot = boot();
    (stamp.boot == boot.id).then(|| boot.at + std::time::Duration::from_nanos(stamp.nanos))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn own_readings_convert_back_and_foreign_ones_do_not() {
        let before = Instant::now();
        let stamp = now();
        let at = instant(stamp).expect("own reading");
        assert!(at >= before && at <= Instant::now());
        let foreign = MonoStamp {
            boot: stamp.boot ^ 2,
            ..stamp
        };
        assert_eq!(instant(foreign), None);
    }
}
