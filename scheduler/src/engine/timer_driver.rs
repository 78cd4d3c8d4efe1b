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
//!
//! Both clocks include the time a test skipped (`keel_raft::clock::skip`): the driver looks
//! again at once when it changes, so a skip fires every timer it made due.
//!
//! Fires are pipelined: a timer that comes due while an earlier fire is committing is
//! proposed at once in a fire of its own (up to [`FIRES_IN_FLIGHT_MAX`] at a time), rather
//! than waiting a commit behind it. Passes skip the timers of fires in flight; should one
//! be proposed twice anyway, the state machine fires it once.

use std::collections::HashSet;
use std::time::{Duration, Instant};

use keel_raft::clock;
use tokio::sync::watch;
use tokio::task::{JoinHandle, JoinSet};
use tonic::Status;

use super::proposer::Proposer;
use crate::command::{Answer, Command};
use crate::machine::{Armed, SchedulerMachine};
use crate::mono;

/// Most timers one fire command carries.
const FIRE_BATCH_MAX: usize = 4096;
/// Most fire commands proposed and not yet answered.
const FIRES_IN_FLIGHT_MAX: usize = 8;
/// Most due-by-wall-clock timers examined per pass (the rest wait for the next pass).
const SCAN_MAX: usize = 16 * 1024;
/// Longest sleep between passes: wall-clock jumps are noticed at least this often.
const IDLE_MAX: Duration = Duration::from_secs(1);
/// Pause before retrying a failed timer fire proposal.
const FIRE_RETRY_PAUSE: Duration = Duration::from_millis(20);
/// The last stretch of a wait slept by a thread rather than tokio's timer, whose wheel
/// rounds every deadline up to its next millisecond tick.
const PRECISE_WAIT: Duration = Duration::from_millis(2);

/// Fires timers while this node leads: `active` holds the term it leads in (0: not
/// leading). Returns when `active`'s sender is gone.
pub(crate) async fn run(
    machine: SchedulerMachine,
    proposer: Proposer,
    mut active: watch::Receiver<u64>,
    max_clock_skew: Duration,
) {
    let mut fires = Fires::default();
    let mut sleeper = PreciseSleep::default();
    // No fire is proposed before this (set after one failed).
    let mut paused_until = mono::instant_now();
    let mut skips = clock::skips();
    loop {
        let term = *active.borrow_and_update();
        fires.enter_term(term);
        if term == 0 {
            if active.changed().await.is_err() {
                return;
            }
            continue;
        }
        let changed = machine.timers_changed().notified();
        tokio::pin!(changed);
        changed.as_mut().enable();
        let (wall, mono) = wall_now();
        let pass = due_pass(&machine, wall, mono, max_clock_skew, &fires.in_flight);
        let may_propose = fires.tasks.len() < FIRES_IN_FLIGHT_MAX && mono >= paused_until;
        if !pass.ready.is_empty() && may_propose {
            #[cfg(feature = "sabotage")]
            if keel_raft::sabotage::on(keel_raft::sabotage::Fault::UnfencedFires) {
                machine.deliver_unfenced(term, &pass.ready);
            }
            fires.propose(&proposer, pass.ready);
            continue;
        }
        let wake = if pass.ready.is_empty() {
            pass.wake
        } else if mono < paused_until {
            Some(paused_until)
        } else {
            // At the in-flight limit: an answer wakes the loop.
            None
        };
        let deadline = wake.map_or(mono + IDLE_MAX, |wake| wake.min(mono + IDLE_MAX));
        // The same moment on the real monotonic clock, which the sleep waits on.
        let deadline = Instant::now() + deadline.saturating_duration_since(mono::instant_now());
        tokio::select! {
            Some(joined) = fires.tasks.join_next(), if !fires.tasks.is_empty() => {
                if let Ok((ids, answer)) = joined {
                    for id in &ids {
                        fires.in_flight.remove(id);
                    }
                    if !fired(answer) {
                        paused_until = mono::instant_now() + FIRE_RETRY_PAUSE;
                    }
                }
            }
            () = &mut changed => {}
            () = sleeper.until(deadline) => {}
            _ = skips.changed() => {}
            changed = active.changed() => {
                if changed.is_err() {
                    return;
                }
            }
        }
    }
}

/// Fire proposals in flight, each its own task, and the timers they carry.
#[derive(Default)]
struct Fires {
    tasks: JoinSet<(Vec<u64>, Result<Answer, Status>)>,
    in_flight: HashSet<u64>,
    /// The term the proposals in flight were made in.
    term: u64,
}

impl Fires {
    /// Drops the proposals of an earlier term (their timers are looked at afresh; the
    /// state machine fires each timer once however often it is proposed).
    fn enter_term(&mut self, term: u64) {
        if term != self.term {
            // Dropping a join set aborts its tasks.
            self.tasks = JoinSet::new();
            self.in_flight.clear();
            self.term = term;
        }
    }

    fn propose(&mut self, proposer: &Proposer, ids: Vec<u64>) {
        self.in_flight.extend(ids.iter().copied());
        let proposer = proposer.clone();
        self.tasks.spawn(async move {
            let answer = proposer
                .propose(Command::FireTimers { ids: ids.clone() }, None)
                .await;
            (ids, answer)
        });
    }
}

/// Sleeps until a deadline, the last [`PRECISE_WAIT`] of it on a blocking-pool thread
/// (`nanosleep` keeps to tens of microseconds where tokio's timer may add a millisecond or
/// two). The thread outlives a cancelled wait and serves the next one if that one's
/// deadline is no earlier, so passes woken by other events do not start a thread each.
#[derive(Default)]
struct PreciseSleep {
    thread: Option<(Instant, JoinHandle<()>)>,
}

/// How much later than a sleeping thread's deadline a new deadline may be and still be
/// served by it (the pass then finds the timer not quite due and sleeps the rest).
const REUSE_SLACK: Duration = Duration::from_micros(100);

impl PreciseSleep {
    async fn until(&mut self, deadline: Instant) {
        if let Some(coarse) = deadline.checked_sub(PRECISE_WAIT)
            && coarse > Instant::now()
        {
            tokio::time::sleep_until(coarse.into()).await;
        }
        let reusable = self
            .thread
            .as_ref()
            .is_some_and(|(at, _)| *at <= deadline + REUSE_SLACK && *at + REUSE_SLACK >= deadline);
        if !reusable {
            let rest = deadline.saturating_duration_since(Instant::now());
            if rest.is_zero() {
                return;
            }
            let thread = tokio::task::spawn_blocking(move || std::thread::sleep(rest));
            self.thread = Some((deadline, thread));
        }
        if let Some((_, thread)) = self.thread.as_mut() {
            let _ = thread.await;
        }
        self.thread = None;
    }
}

/// Whether a fire's answer fired something (otherwise the driver pauses before proposing
/// again).
fn fired(answer: Result<Answer, Status>) -> bool {
    match answer {
        Ok(Answer::Fired { ids }) if !ids.is_empty() => true,
        // None was pending and due by the stamp: the clock stepped back since the pass, or
        // the timers were cancelled while their fire committed.
        Ok(Answer::Fired { .. }) => false,
        Ok(other) => {
            tracing::warn!(answer = ?other, "unexpected answer to a timer fire");
            false
        }
        Err(status) => {
            tracing::debug!(error = status.message(), "timer fire not committed");
            false
        }
    }
}

/// Timers ready to fire now, and when to look again.
#[derive(Debug, Default, PartialEq, Eq)]
struct DuePass {
    /// Timer ids ready to fire.
    ready: Vec<u64>,
    /// When the next timer may become ready (`None`: none pending).
    wake: Option<Instant>,
}

/// Finds the timers ready at wall time `wall` (since the Unix epoch) and monotonic time
/// `mono`, skipping those `in_flight`.
fn due_pass(
    machine: &SchedulerMachine,
    wall: Duration,
    mono: Instant,
    max_clock_skew: Duration,
    in_flight: &HashSet<u64>,
) -> DuePass {
    let mut pass = DuePass::default();
    let wake_at = |at: Instant, pass: &mut DuePass| {
        pass.wake = Some(pass.wake.map_or(at, |w| w.min(at)));
    };
    let state = machine.read();
    let not_in_flight = |(_, id): &(u64, u64)| !in_flight.contains(id);
    for (due_ms, id) in state
        .timers()
        .in_due_order()
        .filter(not_in_flight)
        .take(SCAN_MAX)
    {
        let due = Duration::from_millis(due_ms);
        if let Some(ahead) = due.checked_sub(wall).filter(|ahead| !ahead.is_zero()) {
            wake_at(mono + ahead, &mut pass);
            break;
        }
        let timer = state.timers().get(id).expect("listed timers are pending");
        let ready_at = timer.delay_ms.map(|delay_ms| {
            let delay = Duration::from_millis(delay_ms);
            match machine.armed(id) {
                Armed::Applied(at) => at + delay,
                Armed::Restarted(at) => {
                    let cap = (due + max_clock_skew).saturating_sub(wall);
                    (at + delay).min(mono + cap)
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

/// The wall clock (since the Unix epoch, full resolution) and the monotonic clock now,
/// both with the time skipped.
fn wall_now() -> (Duration, Instant) {
    (clock::since_epoch(), mono::instant_now())
}

#[cfg(test)]
mod tests {
    use bytes::Bytes;
    use keel_raft::application::{Application, AppliedAt};

    use super::*;
    use crate::command::{self, Command, Due, Stamped};
    use keel_raft::clock::now_ms;

    fn pass_at(machine: &SchedulerMachine, wall_ms: u64, mono: Instant, skew: Duration) -> DuePass {
        due_pass(
            machine,
            Duration::from_millis(wall_ms),
            mono,
            skew,
            &HashSet::new(),
        )
    }

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
        let pass = pass_at(&machine, base + 10_000, applied, skew);
        assert_eq!(pass.ready, [2]);
        assert!(
            pass.wake.is_some_and(
                |w| w + Duration::from_millis(5) >= applied + Duration::from_millis(100)
            )
        );
        // Monotonic delay elapsed but the wall clock is behind: nothing fires.
        let later = applied + Duration::from_millis(200);
        assert_eq!(
            pass_at(&machine, base + 50, later, skew).ready,
            Vec::<u64>::new()
        );
        // Both agree.
        let both = pass_at(&machine, base + 100, later, skew);
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
        assert!(pass_at(&machine, due, now, skew).ready.is_empty());
        // The cap: due + skew by the wall clock, although the delay since the restart has not
        // elapsed.
        assert_eq!(pass_at(&machine, due + 50, now, skew).ready, [1]);
    }

    #[test]
    fn the_wake_up_is_computed_below_the_millisecond() {
        let mut machine = SchedulerMachine::new();
        let base = now_ms();
        schedule(&mut machine, "abs", base, Due::At { at_ms: base + 100 });
        let mono = Instant::now();
        let wall = Duration::from_millis(base + 99) + Duration::from_micros(400);
        let pass = due_pass(
            &machine,
            wall,
            mono,
            Duration::from_millis(50),
            &HashSet::new(),
        );
        assert!(pass.ready.is_empty());
        assert_eq!(pass.wake, Some(mono + Duration::from_micros(600)));
    }

    #[test]
    fn a_pass_skips_timers_whose_fire_is_in_flight() {
        let mut machine = SchedulerMachine::new();
        let base = now_ms();
        schedule(&mut machine, "first", base, Due::At { at_ms: base });
        schedule(&mut machine, "second", base, Due::At { at_ms: base + 1 });
        let wall = Duration::from_millis(base + 10);
        let skew = Duration::from_millis(50);
        let in_flight = HashSet::from([1]);
        let pass = due_pass(&machine, wall, Instant::now(), skew, &in_flight);
        assert_eq!(pass.ready, [2]);
        let both_in_flight = HashSet::from([1, 2]);
        let pass = due_pass(&machine, wall, Instant::now(), skew, &both_in_flight);
        assert_eq!(pass, DuePass::default());
    }
}
