//! A run's journal positions: who takes which, and the order records are proposed in.
//!
//! A durable call takes its journal position when it is *made* (so concurrent calls, like
//! `join!` in Rust or `asyncio.gather` in Python, take positions in the order the code makes
//! them, the same on every replay), but the state machine accepts a new entry only at the
//! journal's end. So a record for position `n` waits here until positions `0..n` exist: a
//! fast step made after a slow one is journaled after it — and so is a sleep or a child
//! call made after a step (its timer or child starts once the step is journaled). A call
//! made but never awaited holds up every later record: await every call you make.
//!
//! A call dropped before its first record (a cancelled future, a step whose result cannot
//! be serialized) gives its position back if no later call has taken one (the next call
//! takes it again); otherwise the position can never be filled, and every later record
//! fails instead of waiting forever.

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};

use tokio::sync::watch;

use super::error::WorkflowError;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Frontier {
    /// Positions `0..filled` exist in the journal.
    filled: u32,
    /// The first position abandoned before its first record, if any.
    abandoned: Option<u32>,
}

#[derive(Debug)]
struct Shared {
    /// The next position a call takes.
    next: AtomicU32,
    frontier: watch::Sender<Frontier>,
}

/// One run's journal positions; cheap to clone.
#[derive(Debug, Clone)]
pub(crate) struct Positions {
    shared: Arc<Shared>,
}

impl Positions {
    /// A run whose journal holds `existing` entries.
    pub(crate) fn new(existing: u32) -> Self {
        Self {
            shared: Arc::new(Shared {
                next: AtomicU32::new(0),
                frontier: watch::Sender::new(Frontier {
                    filled: existing,
                    abandoned: None,
                }),
            }),
        }
    }

    /// Takes the next position for a call made now. Dropping the hold before
    /// [`Held::fill`] gives the position back or abandons it.
    pub(crate) fn take(&self) -> Held {
        let seq = self.shared.next.fetch_add(1, Ordering::SeqCst);
        Held {
            positions: self.clone(),
            seq,
            filled: seq < self.shared.frontier.borrow().filled,
        }
    }

    /// Waits until every position before `seq` exists.
    ///
    /// # Errors
    /// [`WorkflowError::Failed`] when an earlier position was abandoned.
    pub(crate) async fn turn(&self, seq: u32) -> Result<(), WorkflowError> {
        let mut frontier = self.shared.frontier.subscribe();
        let reached = frontier
            .wait_for(|f| f.filled >= seq || f.abandoned.is_some_and(|a| a < seq))
            .await
            .map(|f| *f);
        match reached {
            Ok(Frontier { filled, .. }) if filled >= seq => Ok(()),
            Ok(Frontier { abandoned, .. }) => Err(WorkflowError::Failed(format!(
                "journal position {} was abandoned (a durable call was dropped before its \
                 outcome was journaled while a later call held a position), so position \
                 {seq} can never be journaled: await every durable call to its end",
                abandoned.unwrap_or_default()
            ))),
            Err(_) => unreachable!("the sender lives in `self`"),
        }
    }

    /// Position `seq` exists now. A record is proposed only on its turn, and only the one
    /// hold of `seq` fills it, so `seq` is the first unfilled position.
    fn fill(&self, seq: u32) {
        self.shared.frontier.send_modify(|f| {
            assert_eq!(seq, f.filled, "position {seq} filled out of turn");
            f.filled += 1;
        });
    }

    /// Position `seq` will never get a record: given back if it is the last one taken,
    /// abandoned otherwise.
    fn release(&self, seq: u32) {
        let given_back = self
            .shared
            .next
            .compare_exchange(seq + 1, seq, Ordering::SeqCst, Ordering::SeqCst)
            .is_ok();
        if given_back {
            return;
        }
        self.shared.frontier.send_if_modified(|f| {
            if f.abandoned.is_some_and(|a| a <= seq) {
                return false;
            }
            f.abandoned = Some(seq);
            true
        });
    }
}

/// A durable call's hold on its journal position.
#[derive(Debug)]
pub(crate) struct Held {
    positions: Positions,
    seq: u32,
    filled: bool,
}

impl Held {
    /// The held position.
    pub(crate) fn seq(&self) -> u32 {
        self.seq
    }

    /// Records that the position exists now in the journal.
    pub(crate) fn fill(&mut self) {
        if !self.filled {
            self.filled = true;
            self.positions.fill(self.seq);
        }
    }
}

impl Drop for Held {
    fn drop(&mut self) {
        if !self.filled {
            self.positions.release(self.seq);
        }
    }
}

#[cfg(test)]
mod tests {
    use futures::FutureExt as _;

    use super::*;

    #[tokio::test]
    async fn a_later_position_waits_for_every_earlier_one() {
        let positions = Positions::new(1);
        let replayed = positions.take();
        let mut first = positions.take();
        let mut second = positions.take();
        assert_eq!((replayed.seq(), first.seq(), second.seq()), (0, 1, 2));
        assert!(
            positions.turn(2).now_or_never().is_none(),
            "position 2 waits for position 1"
        );
        assert!(
            positions.turn(1).now_or_never().is_some(),
            "position 1 goes at once"
        );
        first.fill();
        assert!(matches!(positions.turn(2).now_or_never(), Some(Ok(()))));
        second.fill();
        assert_eq!(positions.shared.frontier.borrow().filled, 3);
    }

    #[tokio::test]
    async fn a_dropped_hold_with_a_later_one_fails_every_later_position() {
        let positions = Positions::new(0);
        let abandoned = positions.take();
        let later = positions.take();
        drop(abandoned);
        let error = positions
            .turn(later.seq())
            .await
            .expect_err("cannot be journaled");
        assert!(error.to_string().contains("abandoned"), "{error}");
        assert!(
            positions.turn(0).await.is_ok(),
            "position 0 itself is not blocked"
        );
    }

    #[test]
    fn the_last_hold_dropped_gives_its_position_back() {
        let positions = Positions::new(0);
        let mut first = positions.take();
        first.fill();
        drop(positions.take());
        assert_eq!(
            positions.take().seq(),
            1,
            "position 1 was given back and taken again"
        );
        assert_eq!(positions.shared.frontier.borrow().abandoned, None);
    }

    #[test]
    fn replayed_positions_count_as_filled_and_need_no_record() {
        let positions = Positions::new(3);
        let _zero = positions.take();
        drop(positions.take());
        assert_eq!(positions.shared.frontier.borrow().abandoned, None);
    }
}
