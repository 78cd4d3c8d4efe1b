//! The workflows workload: clients start workflows of the built-in kinds (`steps`, `sleep`,
//! `call-sleep`: a parent whose child sleeps; with remote workers also `slow-step`, whose
//! second step's body outlasts a paused worker's lease) with unique ids, then wait for each
//! to finish; at the end every started workflow is read back with its journal and its
//! values.

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use bytes::Bytes;
use keel_raft::security::credentials::Credentials;
use keel_scheduler::client::{WorkflowClient, WorkflowClientError, WorkflowInfo};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use super::timers::classify_workflow;
use super::{OP_TIMEOUT, read_concurrently};
use crate::checker::workflows::{FinalEntry, FinalWorkflow, UNREADABLE};
use crate::history::{Call, Op, OpType, Recorder};

/// How long a client waits for its workflow to finish before starting the next.
const AWAIT: Duration = Duration::from_secs(8);
/// How long the final read waits for a workflow still running.
const FINAL_WAIT: Duration = Duration::from_secs(20);

/// How long the body of a `slow-step` workflow's slow step works, in ms: begun before a
/// worker is paused, it ends as the worker resumes, after the workflow's new run began the
/// same step, so the paused run is first to try to record it.
const SLOW_STEP_MS: std::ops::Range<u64> = 1_500..2_500;

/// Sizes of the padded step results `steps N:B` workflows ask for: past the scheduler's
/// inline limit, so the state holds them by reference and the final read reads them back
/// from the log or the value files.
const STEP_RESULT_BYTES: std::ops::Range<usize> = 64..512;

/// The kinds the clients start.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WorkflowMix {
    /// `steps`, `sleep` and `call-sleep`, alike.
    Quick,
    /// Half `slow-step`, half the quick kinds: for runs that pause remote workers.
    WithSlowSteps,
}

/// One client process of the workflows workload.
#[derive(Debug)]
pub struct WorkflowsClient {
    process: u64,
    client: WorkflowClient,
    rng: StdRng,
    mix: WorkflowMix,
}

impl WorkflowsClient {
    /// Client `process` of the cluster at `addrs`, seeded by `seed`, starting kinds of `mix`.
    ///
    /// # Errors
    /// A bad address.
    pub fn new(
        process: u64,
        addrs: &[String],
        credentials: &Credentials,
        seed: u64,
        mix: WorkflowMix,
    ) -> Result<Self, WorkflowClientError> {
        Ok(Self {
            process,
            client: WorkflowClient::with_credentials(addrs, credentials)?,
            rng: StdRng::seed_from_u64(seed ^ process.wrapping_mul(0x9e37_79b9_7f4a_7c15) ^ 0x7766),
            mix,
        })
    }

    /// The next workflow's kind and input.
    fn next_kind(&mut self) -> (&'static str, String) {
        if self.mix == WorkflowMix::WithSlowSteps && self.rng.random_bool(0.5) {
            return ("slow-step", self.rng.random_range(SLOW_STEP_MS).to_string());
        }
        match self.rng.random_range(0..4) {
            0 => ("steps", self.rng.random_range(2..7u64).to_string()),
            1 => {
                let count = self.rng.random_range(2..7u64);
                let size = self.rng.random_range(STEP_RESULT_BYTES);
                ("steps", format!("{count}:{size}"))
            }
            2 => ("sleep", self.rng.random_range(100..1_500u64).to_string()),
            _ => (
                "call-sleep",
                self.rng.random_range(100..1_500u64).to_string(),
            ),
        }
    }

    /// Starts workflows and waits for each, until `deadline`.
    pub async fn run(mut self, history: Recorder, deadline: Instant) {
        let mut counter = 0u64;
        while Instant::now() < deadline {
            let id = format!("w{}-{counter}", self.process);
            counter += 1;
            let (kind, input) = self.next_kind();
            let call = Call::StartWorkflow {
                id: id.clone(),
                kind: kind.to_owned(),
                input: input.clone(),
            };
            history.record(self.process, OpType::Invoke, call.clone(), None);
            let started = self.client.start(&id, kind, Bytes::from(input));
            let (outcome, error) = match tokio::time::timeout(OP_TIMEOUT, started).await {
                Ok(Ok(_)) => (OpType::Ok, None),
                Ok(Err(error)) => (classify_workflow(&error), Some(error.to_string())),
                Err(_) => (
                    OpType::Info,
                    Some(format!("no answer within {OP_TIMEOUT:?}")),
                ),
            };
            history.record(self.process, outcome, call, error);
            if outcome != OpType::Fail {
                self.await_end(&history, &id).await;
            }
        }
    }

    /// Waits for workflow `id` to finish, recording when it was seen finished.
    async fn await_end(&mut self, history: &Recorder, id: &str) {
        let call = |status| Call::AwaitWorkflow {
            id: id.to_owned(),
            status,
        };
        history.record(self.process, OpType::Invoke, call(None), None);
        let waited = self.client.get_after(id, AWAIT, false);
        let (outcome, status, error) = match tokio::time::timeout(AWAIT + OP_TIMEOUT, waited).await
        {
            Ok(Ok(info)) if info.status != "running" => (OpType::Ok, Some(info.status), None),
            Ok(Ok(_)) => (OpType::Info, None, Some("still running".to_owned())),
            Ok(Err(error)) => (OpType::Info, None, Some(error.to_string())),
            Err(_) => (OpType::Info, None, Some("no answer".to_owned())),
        };
        history.record(self.process, outcome, call(status), error);
    }
}

fn final_workflow(info: &WorkflowInfo) -> FinalWorkflow {
    FinalWorkflow {
        status: info.status.clone(),
        result: String::from_utf8_lossy(&info.result).into_owned(),
        error: info.error.clone(),
        fence: info.fence,
        journal: info
            .journal
            .iter()
            .map(|entry| FinalEntry {
                seq: entry.seq,
                kind: entry.kind.clone(),
                name: entry.name.clone(),
                state: entry.state.clone(),
                fence: entry.fence,
                value: String::from_utf8_lossy(&entry.value).into_owned(),
            })
            .collect(),
    }
}

/// The final record of a workflow the cluster could not read whole: a node lost a value
/// its record references.
fn unreadable(message: String) -> FinalWorkflow {
    FinalWorkflow {
        status: UNREADABLE.to_owned(),
        result: String::new(),
        error: message,
        fence: 0,
        journal: Vec::new(),
    }
}

/// The final record of every workflow the history started (those that exist), waiting
/// for running ones to finish, and of each call's child.
///
/// # Errors
/// A cluster error.
pub async fn final_workflows(
    client: &WorkflowClient,
    ops: &[Op],
) -> anyhow::Result<BTreeMap<String, FinalWorkflow>> {
    let ids: Vec<String> = ops
        .iter()
        .filter_map(|op| match &op.call {
            Call::StartWorkflow { id, kind, .. } if kind == "call-sleep" => {
                Some([id.clone(), format!("{id}/0")])
            }
            Call::StartWorkflow { id, .. } => Some([id.clone(), id.clone()]),
            _ => None,
        })
        .flatten()
        .collect::<BTreeSet<String>>()
        .into_iter()
        .collect();
    Ok(read_concurrently(client, &ids, async |client, id| {
        match client.get_after(id, FINAL_WAIT, true).await {
            Ok(info) => Ok(final_workflow(&info)),
            Err(WorkflowClientError::DataLoss { message }) => Ok(unreadable(message)),
            Err(error) => Err(error),
        }
    })
    .await?)
}
