//! The timers workload: clients schedule named timers, relative (due a delay after the
//! leader stamps them) or absolute (due at a wall-clock time: the harness's wall clock plus
//! a delay), half each; a watcher on every node records each fire the node delivers, with
//! its token, on the harness's clock.

use std::time::{Duration, Instant};

use bytes::Bytes;
use keel_raft::clock::now_ms;
use keel_raft::security::credentials::Credentials;
use keel_scheduler::client::{TimerDue, WorkflowClient, WorkflowClientError};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use super::{OP_TIMEOUT, classify};
use crate::history::{Call, OpType, Recorder, WATCHERS};

/// Delays of scheduled timers, in ms.
pub const DELAY_MS: std::ops::Range<u64> = 100..3_000;
/// Pause before a watcher reconnects to its node.
const RECONNECT_PAUSE: Duration = Duration::from_millis(100);
/// Pause between a client's schedules.
const THINK: Duration = Duration::from_millis(20);

/// What a workflow-client error means for an operation.
pub fn classify_workflow(error: &WorkflowClientError) -> OpType {
    match error {
        WorkflowClientError::Rejected { .. } => OpType::Fail,
        WorkflowClientError::Cluster(error) => classify(error),
        WorkflowClientError::DataLoss { .. } => OpType::Info,
    }
}

/// One client process of the timers workload.
#[derive(Debug)]
pub struct TimerClient {
    /// Its process number (from 1).
    pub process: u64,
    /// Its connection.
    pub client: WorkflowClient,
    /// Its generator.
    pub rng: StdRng,
}

impl TimerClient {
    /// Client `process` of the cluster at `addrs`, seeded by `seed`.
    ///
    /// # Errors
    /// A bad address.
    pub fn new(
        process: u64,
        addrs: &[String],
        credentials: &Credentials,
        seed: u64,
    ) -> Result<Self, WorkflowClientError> {
        Ok(Self {
            process,
            client: WorkflowClient::with_credentials(addrs, credentials)?,
            rng: StdRng::seed_from_u64(seed ^ process.wrapping_mul(0x9e37_79b9_7f4a_7c15) ^ 0x7469),
        })
    }

    /// Schedules timers until `deadline`.
    pub async fn run(mut self, history: Recorder, deadline: Instant) {
        let mut counter = 0u64;
        while Instant::now() < deadline {
            let name = format!("t{}-{counter}", self.process);
            counter += 1;
            let delay_ms = self.rng.random_range(DELAY_MS);
            // The harness's wall clock is real (only the nodes run under libfaketime).
            let at_ms = self.rng.random_bool(0.5).then(|| now_ms() + delay_ms);
            let call = |due_ms| Call::Schedule {
                name: name.clone(),
                delay_ms,
                at_ms,
                due_ms,
            };
            history.record(self.process, OpType::Invoke, call(None), None);
            let due = at_ms.map_or(TimerDue::After(Duration::from_millis(delay_ms)), |at| {
                TimerDue::AtMs(at)
            });
            let scheduled = self.client.schedule_timer(&name, due, Bytes::new());
            let (kind, due_ms, error) = match tokio::time::timeout(OP_TIMEOUT, scheduled).await {
                Ok(Ok((due_ms, _))) => (OpType::Ok, Some(due_ms), None),
                Ok(Err(error)) => (classify_workflow(&error), None, Some(error.to_string())),
                Err(_) => (
                    OpType::Info,
                    None,
                    Some(format!("no answer within {OP_TIMEOUT:?}")),
                ),
            };
            history.record(self.process, kind, call(due_ms), error);
            tokio::time::sleep(THINK).await;
        }
    }
}

/// Records every fire node `node` (at `addr`) delivers until the task is dropped,
/// reconnecting while the node is down.
pub async fn watch(node: u64, addr: String, client: WorkflowClient, history: Recorder) {
    let mut client = client;
    loop {
        let history = history.clone();
        // The stream ends or fails when the node stops; a fire missed meanwhile is still
        // in the node's state and checked at the end.
        let _ = client
            .watch_fires(&addr, |fire| {
                history.record(
                    WATCHERS + node,
                    OpType::Ok,
                    Call::Fire {
                        node,
                        name: fire.name,
                        term: fire.term,
                        index: fire.index,
                    },
                    None,
                );
                true
            })
            .await;
        tokio::time::sleep(RECONNECT_PAUSE).await;
    }
}
