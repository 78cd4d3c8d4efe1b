//! The order in which a run's journal records are proposed.
//!
//! A durable call takes its journal position when it is *made* (so concurrent calls, like
//! `join!` in Rust or `asyncio.gather` in Python, take positions in the order the code makes
//! them, the same on every replay), but the state machine accepts a new entry only at the
//! journal's end. So a record for position `n` waits here until positions `0..n` exist: a
//! fast step made after a slow one is journaled after it. A position whose call was dropped
//! before its first record (a cancelled future) can never be filled: every later record
//! then fails instead of waiting forever.

use std::sync::Arc;

use tokio::sync::watch;

use super::error::WorkflowError;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Frontier {
    /// Positions `0..filled` exist in the journal.
    filled: u32,
    /// The first position abandoned before its first record, if any.
    abandoned: Option<u32>,
}

/// The filled prefix of one run's journal; cheap to clone.
#[derive(Debug, Clone)]
pub(crate) struct Positions {
    frontier: Arc<watch::Sender<Frontier>>,
}

impl Positions {
    /// A run whose journal holds `existing` entries.
    pub(crate) fn new(existing: u32) -> Self {
        Self {
            frontier: Arc::new(watch::Sender::new(Frontier {
                filled: existing,
                abandoned: None,
            })),
        }
    }

    /// A guard for position `seq`, taken when the call is made: dropping it before
    /// [`Positions::filled`] abandons the position.
    pub(crate) fn hold(&self, seq: u32) -> Held {
        Held {
            positions: self.clone(),
            seq,
            filled: seq < self.frontier.borrow().filled,
        }
    }

    /// Waits until every position before `seq` exists.
    ///
    /// # Errors
    /// [`WorkflowError::Failed`] when an earlier position was abandoned.
    pub(crate) async fn turn(&self, seq: u32) -> Result<(), WorkflowError> {
        let mut frontier = self.frontier.subscribe();
        let reached = frontier
            .wait_for(|f| f.filled >= seq || f.abandoned.is_some_and(|a| a < seq))
            .await
            .map(|f| *f);
        match reached {
            Ok(Frontier { filled, .. }) if filled >= seq => Ok(()),
            Ok(Frontier { abandoned, .. }) => Err(WorkflowError::Failed(format!(
                "journal position {} was abandoned (a durable call was cancelled before its \
                 outcome was journaled), so position {seq} can never be journaled: await \
                 every durable call to its end",
                abandoned.unwrap_or_default()
            ))),
            Err(_) => unreachable!("the sender lives in `self`"),
        }
    }

    /// Position `seq` exists now. A record is proposed only on its turn, so `seq` is the
    /// first unfilled position (or one that replay had filled already).
    fn fill(&self, seq: u32) {
        self.frontier.send_if_modified(|f| {
            assert!(seq <= f.filled, "position {seq} filled before its turn");
            if seq < f.filled {
                return false;
            }
            f.filled += 1;
            true
        });
    }

    fn abandon(&self, seq: u32) {
        self.frontier.send_if_modified(|f| {
            if seq < f.filled || f.abandoned.is_some_and(|a| a <= seq) {
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

    /// The position now exists in the journal.
    pub(crate) fn filled(&mut self) {
        if !self.filled {
            self.filled = true;
            self.positions.fill(self.seq);
        }
    }
}

impl Drop for Held {
    fn drop(&mut self) {
        if !self.filled {
            self.positions.abandon(self.seq);
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[tokio::test]
    async fn a_later_position_waits_for_every_earlier_one() {
        let positions = Positions::new(1);
        let mut first = positions.hold(1);
        let mut second = positions.hold(2);
        let waiting = tokio::spawn({
            let positions = positions.clone();
            async move { positions.turn(2).await }
        });
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert!(!waiting.is_finished(), "position 2 waits for position 1");
        assert!(positions.turn(1).await.is_ok(), "position 1 may go at once");
        first.filled();
        assert!(waiting.await.expect("joined").is_ok());
        second.filled();
        assert_eq!(positions.frontier.borrow().filled, 3);
    }

    #[tokio::test]
    async fn a_dropped_hold_fails_every_later_position_instead_of_hanging() {
        let positions = Positions::new(0);
        let abandoned = positions.hold(0);
        let _later = positions.hold(1);
        drop(abandoned);
        let error = positions.turn(1).await.expect_err("cannot be journaled");
        assert!(error.to_string().contains("abandoned"), "{error}");
        assert!(
            positions.turn(0).await.is_ok(),
            "position 0 itself is not blocked"
        );
    }

    #[test]
    fn replayed_positions_count_as_filled_and_need_no_record() {
        let positions = Positions::new(3);
        drop(positions.hold(1));
        assert_eq!(positions.frontier.borrow().abandoned, None);
    }
}
