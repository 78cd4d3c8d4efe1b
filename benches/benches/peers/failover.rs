//! Timing a failover from the client's side: the first write acknowledged after the kill.

use std::time::{Duration, Instant};

use tokio::task::JoinSet;

use super::common::WAIT_DEADLINE;

/// How often a new write attempt starts while none has been acknowledged.
const ATTEMPT_EVERY: Duration = Duration::from_millis(20);
/// How long one attempt may wait for its acknowledgement.
const ATTEMPT_TIMEOUT: Duration = Duration::from_secs(2);

/// Starts a write attempt every [`ATTEMPT_EVERY`] — attempt `n` from `attempt(n)`, so
/// attempts can rotate over the surviving servers — until one is acknowledged; returns the
/// time from `since` to that acknowledgement. Panics after [`WAIT_DEADLINE`].
pub(crate) async fn first_ack<F, Fut, E>(since: Instant, mut attempt: F) -> Duration
where
    F: FnMut(usize) -> Fut,
    Fut: Future<Output = Result<(), E>> + Send + 'static,
    E: Send + 'static,
{
    let mut attempts = JoinSet::new();
    let mut ticker = tokio::time::interval(ATTEMPT_EVERY);
    let mut next = 0;
    loop {
        assert!(
            since.elapsed() < WAIT_DEADLINE,
            "no write acknowledged within {WAIT_DEADLINE:?} of the kill"
        );
        tokio::select! {
            _ = ticker.tick() => {
                let write = attempt(next);
                next += 1;
                attempts.spawn(async move {
                    matches!(tokio::time::timeout(ATTEMPT_TIMEOUT, write).await, Ok(Ok(())))
                });
            }
            Some(done) = attempts.join_next() => {
                if done.expect("attempt task") {
                    let elapsed = since.elapsed();
                    attempts.abort_all();
                    return elapsed;
                }
            }
        }
    }
}
