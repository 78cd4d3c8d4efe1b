//! One way to try again, for every loop in Keel that does: a [`Backoff`] says how many
//! attempts and how long to pause between them, and [`retry`] runs an attempt until it is
//! done or the attempts run out.
//!
//! Callers decide what is worth another attempt ([`Attempt::Again`]): only what certainly
//! did not happen, or what is idempotent (a write under its session and sequence, a journal
//! command under its fence) — a retry must never apply anything twice.

use std::future::Future;
use std::time::Duration;

/// How many attempts, and the pauses between them: `first` after the first failed attempt,
/// doubled after each further one, never more than `max`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Backoff {
    /// Attempts in all (at least one is made).
    pub attempts_max: u32,
    /// Pause after the first failed attempt.
    pub first: Duration,
    /// Longest pause.
    pub max: Duration,
}

impl Backoff {
    /// `attempts_max` attempts with the same `pause` between them.
    pub const fn constant(pause: Duration, attempts_max: u32) -> Self {
        Self {
            attempts_max,
            first: pause,
            max: pause,
        }
    }

    /// The pause after failed attempt number `attempt` (from 1).
    pub fn pause_after(&self, attempt: u32) -> Duration {
        let factor = 1u32 << attempt.saturating_sub(1).min(20);
        self.first.saturating_mul(factor).min(self.max)
    }
}

/// What one attempt came to.
#[derive(Debug)]
pub enum Attempt<T, E> {
    /// Final: the result to return.
    Done(Result<T, E>),
    /// Worth another attempt; this error is returned if none is left.
    Again(E),
}

/// Runs `attempt` (given its number, from 1) until it is [`Attempt::Done`] or
/// `backoff.attempts_max` attempts were made, pausing [`Backoff::pause_after`] between.
///
/// # Errors
/// The final attempt's error, or the last [`Attempt::Again`] error.
pub async fn retry<T, E, F, Fut>(backoff: Backoff, mut attempt: F) -> Result<T, E>
where
    F: FnMut(u32) -> Fut,
    Fut: Future<Output = Attempt<T, E>>,
{
    let mut number = 1;
    loop {
        match attempt(number).await {
            Attempt::Done(result) => return result,
            Attempt::Again(error) if number >= backoff.attempts_max => return Err(error),
            Attempt::Again(_) => tokio::time::sleep(backoff.pause_after(number)).await,
        }
        number += 1;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pauses_double_up_to_the_longest() {
        let backoff = Backoff {
            attempts_max: 10,
            first: Duration::from_millis(100),
            max: Duration::from_millis(350),
        };
        let pauses: Vec<u128> = (1..=4)
            .map(|n| backoff.pause_after(n).as_millis())
            .collect();
        assert_eq!(pauses, [100, 200, 350, 350]);
        assert_eq!(
            Backoff::constant(Duration::from_millis(7), 3).pause_after(9),
            Duration::from_millis(7)
        );
    }

    #[tokio::test(start_paused = true)]
    async fn retries_until_done_or_out_of_attempts() {
        let backoff = Backoff::constant(Duration::from_millis(10), 3);
        let started = tokio::time::Instant::now();
        let done: Result<u32, &str> = retry(backoff, |n| async move {
            if n < 2 {
                Attempt::Again("not yet")
            } else {
                Attempt::Done(Ok(n))
            }
        })
        .await;
        assert_eq!(done, Ok(2));
        assert_eq!(started.elapsed(), Duration::from_millis(10));
        let mut made = 0;
        let exhausted: Result<(), u32> = retry(backoff, |n| {
            made += 1;
            async move { Attempt::Again(n) }
        })
        .await;
        assert_eq!((exhausted, made), (Err(3), 3));
    }
}
