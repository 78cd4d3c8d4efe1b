//! The leader's timer driver: proposes fires for due timers.
//!
//! A timer is fired only when this node's clocks agree it is due:
//! - absolute (`sleep_until`, cron, named `At` timers): its due time has passed on the wall
//!   clock;
//! - relative (`sleep`, signal timeouts, named `After` timers): its stamped due time has
//!   passed on the wall clock **and** the monotonic clock shows its delay elapsed since the
//!   timer was proposed (when this process proposed it) or since this node applied it. A
//!   node that restarted (or restored a snapshot) since counts from then, but waits no
//!   longer than due + `max_clock_skew` by its wall clock.
//!
//! The state machine refuses a fire stamped before the due time, and fires each timer once.

use std::time::{Duration, Instant};

use keel_raft::clock::now_ms;

use crate::machine::{Armed, SchedulerMachine};

/// Most timers one fire command carries.
pub(crate) const FIRE_BATCH_MAX: usize = 4096;
/// Most due-by-wall-clock timers examined per pass (the rest wait for the next pass).
const SCAN_MAX: usize = 16 * 1024;
/// Longest sleep between passes: wall-clock jumps are noticed at least this often.
const IDLE_MAX: Duration = Duration::from_secs(1);

/// Timers ready to fire now, and when to look again.
#[derive(Debug, Default, PartialEq, Eq)]
pub(crate) struct DuePass {
    /// Timer ids ready to fire.
    pub(crate) ready: Vec<u64>,
    /// When the next timer may become ready (`None`: none pending).
    pub(crate) wake: Option<Instant>,
}

/// Finds the timers ready at wall time `wall_ms` and monotonic time `mono`.
pub(crate) fn due_pass(
    machine: &SchedulerMachine,
    wall_ms: u64,
    mono: Instant,
    max_clock_skew: Duration,
) -> DuePass {
    let skew_ms = u64::try_from(max_clock_skew.as_millis()).unwrap_or(u64::MAX);
    let mut pass = DuePass::default();
    let wake_at = |at: Instant, pass: &mut DuePass| {
        pass.wake = Some(pass.wake.map_or(at, |w| w.min(at)));
    };
    let state = machine.read();
    for (due_ms, id) in state.timers().in_due_order().take(SCAN_MAX) {
        if due_ms > wall_ms {
            wake_at(mono + Duration::from_millis(due_ms - wall_ms), &mut pass);
            break;
        }
        let timer = state.timers().get(id).expect("listed timers are pending");
        let ready_at = timer.delay_ms.map(|delay_ms| {
            let delay = Duration::from_millis(delay_ms);
            match machine.armed(id) {
                Armed::Applied(at) => at + delay,
                Armed::Restarted(at) => {
                    let cap = due_ms.saturating_add(skew_ms).saturating_sub(wall_ms);
                    (at + delay).min(mono + Duration::from_millis(cap))
                }
            }
        });
        match ready_at {
            Some(at) if at > mono => wake_at(at, &mut pass),
            _ => {
                pass.ready.push(id);
                if pass.ready.len() == FIRE_BATCH_MAX {
                    break;
                }
            }
        }
    }
    pass
}

/// How long to sleep before the next pass.
pub(crate) fn idle(pass: &DuePass, now: Instant) -> Duration {
    pass.wake.map_or(IDLE_MAX, |wake| {
        wake.saturating_duration_since(now).min(IDLE_MAX)
    })
}

/// The wall clock now, for a pass.
pub(crate) fn wall_now() -> (u64, Instant) {
    (now_ms(), Instant::now())
}

#[cfg(test)]
mod tests {
    use bytes::Bytes;
    use keel_raft::application::{Application, AppliedAt};

    use super::*;
    use crate::command::{self, Command, Due, Stamped};
    use keel_raft::clock::now_ms;

    fn schedule(machine: &mut SchedulerMachine, name: &str, stamp_ms: u64, due: Due) {
        schedule_from(machine, name, stamp_ms, due, None);
    }

    fn schedule_from(
        machine: &mut SchedulerMachine,
        name: &str,
        stamp_ms: u64,
        due: Due,
        mono: Option<crate::mono::MonoStamp>,
    ) {
        let command = Stamped {
            stamp_ms,
            mono,
            command: Command::ScheduleTimer {
                name: name.into(),
                due,
                payload: Vec::new(),
            },
        };
        machine.apply(
            AppliedAt { term: 1, index: 1 },
            &Bytes::from(command::encode(&command)),
        );
    }

    #[test]
    fn relative_timers_wait_on_both_clocks_absolute_on_the_wall_clock() {
        let mut machine = SchedulerMachine::new();
        let base = now_ms();
        schedule(&mut machine, "rel", base, Due::After { delay_ms: 100 });
        schedule(&mut machine, "abs", base, Due::At { at_ms: base + 100 });
        let applied = Instant::now();
        let skew = Duration::from_millis(50);
        // The wall clock jumped ahead: the absolute timer is due, the relative one waits
        // for its monotonic delay.
        let pass = due_pass(&machine, base + 10_000, applied, skew);
        assert_eq!(pass.ready, [2]);
        assert!(
            pass.wake.is_some_and(
                |w| w + Duration::from_millis(5) >= applied + Duration::from_millis(100)
            )
        );
        // Monotonic delay elapsed but the wall clock is behind: nothing fires.
        let later = applied + Duration::from_millis(200);
        assert_eq!(
            due_pass(&machine, base + 50, later, skew).ready,
            Vec::<u64>::new()
        );
        // Both agree.
        let both = due_pass(&machine, base + 100, later, skew);
        assert_eq!(both.ready, [1, 2]);
    }

    #[test]
    fn a_timer_this_process_proposed_is_armed_from_the_proposal() {
        let mut machine = SchedulerMachine::new();
        let proposed = crate::mono::now();
        std::thread::sleep(Duration::from_millis(20));
        let stamp = now_ms();
        schedule_from(
            &mut machine,
            "mine",
            stamp,
            Due::After { delay_ms: 5 },
            Some(proposed),
        );
        let foreign = crate::mono::MonoStamp {
            boot: proposed.boot ^ 2,
            ..proposed
        };
        let before_apply = Instant::now();
        schedule_from(
            &mut machine,
            "theirs",
            stamp,
            Due::After { delay_ms: 5 },
            Some(foreign),
        );
        assert_eq!(
            machine.armed(1),
            Armed::Applied(crate::mono::instant(proposed).expect("own reading"))
        );
        assert!(matches!(machine.armed(2), Armed::Applied(at) if at >= before_apply));
    }

    #[test]
    fn a_replayed_timer_counts_from_the_restart_capped_at_due_plus_skew() {
        let mut machine = SchedulerMachine::new();
        // Stamped an hour before this process started: a replay of older history.
        let stamped = now_ms() - 3_600_000;
        schedule(
            &mut machine,
            "old",
            stamped,
            Due::After {
                delay_ms: 3_600_500,
            },
        );
        let now = Instant::now();
        assert!(matches!(machine.armed(1), Armed::Restarted(_)));
        let skew = Duration::from_millis(50);
        let due = stamped + 3_600_500;
        // Due by the wall clock, but neither the restart-relative delay nor the cap passed.
        assert!(due_pass(&machine, due, now, skew).ready.is_empty());
        // The cap: due + skew by the wall clock, although the delay since the restart has not
        // elapsed.
        assert_eq!(due_pass(&machine, due + 50, now, skew).ready, [1]);
    }
}
