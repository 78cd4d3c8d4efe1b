//! One remote's addresses as a driver dials them (REMOTE.md §10): only configured
//! addresses, in turn on "not leader" or a failure; after failure *n* a random pause in
//! [p/2, p], p = min(first · 2^(n−1), cap); after [`BREAKER_FAILURES`] in a row the breaker
//! opens: the pause is the cap, and the driver probes with Hello before anything else.

use std::time::Duration;

use keel_raft::limits::MESSAGE_MAX_BYTES;
use keel_raft::network::client::endpoint;
use keel_raft::retry::Backoff;
use keel_raft::security::credentials::{Connector, KeelChannel};

use super::errors::Failure;
use crate::pb::remote::remote_calls_client::RemoteCallsClient;

/// Consecutive failures that open the breaker.
pub(crate) const BREAKER_FAILURES: u32 = 8;

/// How a link's requests (and the steps around them) ended, counted since the driver last
/// reported them.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Outcomes {
    /// Answered.
    pub ok: u64,
    /// Answered "not the leader".
    pub not_leader: u64,
    /// Failed, to be retried after a pause.
    pub transient: u64,
    /// Failed so that the remote halts.
    pub halt: u64,
}

impl Outcomes {
    /// Adds `other`'s counts.
    pub fn add(&mut self, other: &Self) {
        self.ok += other.ok;
        self.not_leader += other.not_leader;
        self.transient += other.transient;
        self.halt += other.halt;
    }

    /// The counts by the name the metrics give each outcome.
    pub fn by_name(&self) -> [(&'static str, u64); 4] {
        [
            ("ok", self.ok),
            ("not-leader", self.not_leader),
            ("transient", self.transient),
            ("halt", self.halt),
        ]
    }
}

/// A remote's configured addresses, the one in use, and the failures in a row.
#[derive(Debug)]
pub(crate) struct Link {
    addresses: Vec<String>,
    /// What this cluster presents to the remote (TLS, certificate, token).
    connector: Connector,
    current: usize,
    client: Option<RemoteCallsClient<KeelChannel>>,
    backoff: Backoff,
    failures: u32,
    /// Not-leader answers since the last success or pause: a round of them pauses too.
    redirects: usize,
    /// RPCs made, and the last failure, for status and metrics.
    pub(crate) attempts: u64,
    pub(crate) last_error: Option<String>,
    /// Outcomes not yet reported.
    pub(crate) outcomes: Outcomes,
}

impl Link {
    pub(crate) fn new(
        addresses: Vec<String>,
        connector: Connector,
        first: Duration,
        max: Duration,
    ) -> Self {
        Self {
            addresses,
            connector,
            current: 0,
            client: None,
            backoff: Backoff {
                attempts_max: u32::MAX,
                first,
                max,
            },
            failures: 0,
            redirects: 0,
            attempts: 0,
            last_error: None,
            outcomes: Outcomes::default(),
        }
    }

    /// A client of the address in use (connected lazily); `None` with no addresses.
    pub(crate) fn client(&mut self) -> Option<RemoteCallsClient<KeelChannel>> {
        self.attempts += 1;
        if self.client.is_none() {
            let address = self.addresses.get(self.current)?;
            let channel = self.connector.channel(&endpoint(address).ok()?);
            self.client = Some(
                RemoteCallsClient::new(channel)
                    .max_decoding_message_size(MESSAGE_MAX_BYTES)
                    .max_encoding_message_size(MESSAGE_MAX_BYTES),
            );
        }
        self.client.clone()
    }

    /// A client of the address in use, as [`Link::client`]; a link without addresses halts
    /// its remote.
    pub(crate) fn dial(&mut self) -> Result<RemoteCallsClient<KeelChannel>, Failure> {
        self.client()
            .ok_or_else(|| Failure::Halt("no address to dial".to_owned()))
    }

    /// Whether the breaker is open: the next request must be a Hello probe.
    pub(crate) fn breaker_open(&self) -> bool {
        self.failures >= BREAKER_FAILURES
    }

    pub(crate) fn succeeded(&mut self) {
        self.outcomes.ok += 1;
        self.failures = 0;
        self.redirects = 0;
        self.last_error = None;
    }

    /// Reacts to `failure`: moves to the next address, and pauses unless it was a
    /// not-leader answer with addresses left to try this round.
    pub(crate) async fn failed(&mut self, failure: Failure) {
        match &failure {
            Failure::NotLeader => self.outcomes.not_leader += 1,
            Failure::Transient(_) => self.outcomes.transient += 1,
            Failure::Halt(_) => self.outcomes.halt += 1,
        }
        self.client = None;
        self.current = (self.current + 1) % self.addresses.len().max(1);
        if failure == Failure::NotLeader {
            self.redirects += 1;
            if self.redirects < self.addresses.len() {
                return;
            }
        }
        self.redirects = 0;
        self.failures = self.failures.saturating_add(1);
        self.last_error = Some(match failure {
            Failure::NotLeader => "no configured address answered as leader".to_owned(),
            Failure::Transient(message) | Failure::Halt(message) => message,
        });
        tokio::time::sleep(self.pause()).await;
    }

    fn pause(&self) -> Duration {
        if self.breaker_open() {
            return self.backoff.max;
        }
        let most = self.backoff.pause_after(self.failures);
        let least = most / 2;
        least + most.saturating_sub(least).mul_f64(rand::random::<f64>())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Pauses double from the first up to the cap, each drawn in [p/2, p]; the breaker opens
    /// after eight failures in a row, its pause is the cap, and a success closes it.
    #[test]
    fn pauses_back_off_and_the_breaker_opens_after_eight_failures() {
        let (first, cap) = (Duration::from_millis(50), Duration::from_secs(2));
        let mut link = Link::new(vec!["127.0.0.1:1".into()], Connector::default(), first, cap);
        for n in 1..BREAKER_FAILURES {
            link.failures = n;
            let p = (first * (1 << (n - 1))).min(cap);
            for _ in 0..20 {
                let pause = link.pause();
                assert!((p / 2..=p).contains(&pause), "failure {n}: {pause:?}");
            }
            assert!(!link.breaker_open());
        }
        link.failures = BREAKER_FAILURES;
        assert!(link.breaker_open());
        assert_eq!(link.pause(), cap);
        link.succeeded();
        assert!(!link.breaker_open());
    }

    /// A not-leader answer moves to the next address without a pause while addresses are
    /// left this round; a whole round of them counts as a failure.
    #[tokio::test]
    async fn not_leader_answers_move_on_and_a_round_of_them_pauses() {
        let mut link = Link::new(
            vec!["127.0.0.1:1".into(), "127.0.0.1:2".into()],
            Connector::default(),
            Duration::from_millis(40),
            Duration::from_secs(1),
        );
        link.failed(Failure::NotLeader).await;
        assert_eq!((link.current, link.failures), (1, 0));
        let before = std::time::Instant::now();
        link.failed(Failure::NotLeader).await;
        assert_eq!((link.current, link.failures), (0, 1));
        assert!(before.elapsed() >= Duration::from_millis(20));
        link.failed(Failure::Transient("timeout".into())).await;
        link.succeeded();
        assert_eq!(
            link.outcomes,
            Outcomes {
                ok: 1,
                not_leader: 2,
                transient: 1,
                halt: 0,
            },
            "every outcome counted by kind"
        );
    }
}
