//! The log workload: clients append unique values to the plain log and read it back
//! linearizably from random nodes, each operation recorded as invoke and completion.
//!
//! Each client writes exactly-once in a session the cluster registered for it, and now and
//! then moves to a new session (as a reconnecting client would). With the nodes' session
//! limit below the number of writers ([`crate::cluster::SESSIONS_MAX`]), sessions expire
//! all through a run. Clients also *replay*: re-send one of their acknowledged appends under
//! its original `(session, seq)`, as a delayed duplicate of the request would arrive, often
//! after its session expired. A replay must never append the value a second time.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use bytes::Bytes;
use keel_raft::client::{ClientError, KeelClient, WriteId};
use keel_raft::security::credentials::Credentials;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use super::{OP_TIMEOUT, classify};
use crate::history::{Call, OpType, Recorder};

/// Records a read asks for.
const READ_MAX: u32 = 100;
/// How far behind the highest acknowledged offset a read starts.
const READ_BACK: u64 = 50;
/// Chance that an operation is a replay (when there is an acknowledged append to replay).
const REPLAY_CHANCE: f64 = 0.1;
/// Chance that an append first moves to a new session.
const NEW_SESSION_CHANCE: f64 = 0.1;
/// Acknowledged appends a client keeps for replays (the most recent ones).
const REPLAYABLE_MAX: usize = 16;

/// An acknowledged append: where it was written, and its value.
#[derive(Debug, Clone)]
struct Acknowledged {
    id: WriteId,
    value: String,
}

/// One client process of the log workload.
#[derive(Debug)]
pub struct LogClient {
    /// Its process number (from 1).
    pub process: u64,
    /// Its connection, writing exactly-once in its current session.
    pub client: KeelClient,
    /// The nodes' addresses, by position (node `i + 1`).
    pub addrs: Vec<String>,
    /// Its generator.
    pub rng: StdRng,
    /// The highest offset any client saw acknowledged.
    pub high: Arc<AtomicU64>,
    /// Its latest acknowledged appends, for replays.
    acknowledged: Vec<Acknowledged>,
}

impl LogClient {
    /// A client `process` of the cluster at `addrs`, seeded by `seed`.
    ///
    /// # Errors
    /// A bad address.
    pub fn new(
        process: u64,
        addrs: Vec<String>,
        credentials: &Credentials,
        seed: u64,
        high: Arc<AtomicU64>,
    ) -> Result<Self, ClientError> {
        Ok(Self {
            process,
            client: KeelClient::with_credentials(&addrs, credentials)?,
            addrs,
            rng: StdRng::seed_from_u64(seed ^ process.wrapping_mul(0x9e37_79b9_7f4a_7c15)),
            high,
            acknowledged: Vec::new(),
        })
    }

    /// Runs operations until `deadline`.
    pub async fn run(mut self, history: Recorder, deadline: Instant) {
        let mut counter = 0u64;
        while Instant::now() < deadline {
            if !self.acknowledged.is_empty() && self.rng.random_bool(REPLAY_CHANCE) {
                self.replay(&history).await;
            } else if self.rng.random_bool(0.8) {
                if self.rng.random_bool(NEW_SESSION_CHANCE) {
                    self.client = self.client.for_writer();
                }
                let value = format!("{}:{counter}", self.process);
                counter += 1;
                self.append(&history, value).await;
            } else {
                self.read(&history).await;
            }
        }
    }

    /// Re-sends a random acknowledged append under its original `(session, seq)`.
    async fn replay(&mut self, history: &Recorder) {
        let pick = self.rng.random_range(0..self.acknowledged.len());
        let Acknowledged { id, value } = self.acknowledged[pick].clone();
        let call = |offset| Call::Replay {
            value: value.clone(),
            offset,
        };
        history.record(self.process, OpType::Invoke, call(None), None);
        let mut replayer = self.client.for_writer();
        replayer.resume_session(id.session, id.seq);
        let result = tokio::time::timeout(
            OP_TIMEOUT,
            replayer.append(vec![Bytes::from(value.clone())]),
        )
        .await;
        let (kind, offset, error) = match result {
            Ok(Ok(appended)) => (OpType::Ok, Some(appended.first_offset), None),
            Ok(Err(error)) => (classify(&error), None, Some(error.to_string())),
            Err(_) => (
                OpType::Info,
                None,
                Some(format!("no answer within {OP_TIMEOUT:?}")),
            ),
        };
        history.record(self.process, kind, call(offset), error);
    }

    async fn append(&mut self, history: &Recorder, value: String) {
        let call = Call::Append {
            value: value.clone(),
            offset: None,
        };
        history.record(self.process, OpType::Invoke, call, None);
        let result = tokio::time::timeout(
            OP_TIMEOUT,
            self.client.append(vec![Bytes::from(value.clone())]),
        )
        .await;
        let (kind, offset, error) = match result {
            Ok(Ok(appended)) => {
                self.high
                    .fetch_max(appended.first_offset, Ordering::Relaxed);
                let next = self
                    .client
                    .session()
                    .expect("an acknowledged write had a session");
                if self.acknowledged.len() == REPLAYABLE_MAX {
                    self.acknowledged.remove(0);
                }
                self.acknowledged.push(Acknowledged {
                    id: WriteId {
                        seq: next.seq - 1,
                        ..next
                    },
                    value: value.clone(),
                });
                (OpType::Ok, Some(appended.first_offset), None)
            }
            Ok(Err(error)) => (classify(&error), None, Some(error.to_string())),
            Err(_) => (
                OpType::Info,
                None,
                Some(format!("no answer within {OP_TIMEOUT:?}")),
            ),
        };
        history.record(self.process, kind, Call::Append { value, offset }, error);
    }

    async fn read(&mut self, history: &Recorder) {
        let index = self.rng.random_range(0..self.addrs.len());
        let node = index as u64 + 1;
        let from = self.high.load(Ordering::Relaxed).saturating_sub(READ_BACK);
        history.record(
            self.process,
            OpType::Invoke,
            Call::Read {
                node,
                from,
                records: Vec::new(),
                next_offset: None,
            },
            None,
        );
        let addr = self.addrs[index].clone();
        let result =
            tokio::time::timeout(OP_TIMEOUT, self.client.read_at(&addr, from, READ_MAX, true))
                .await;
        let (kind, records, next_offset, error) = match result {
            Ok(Ok(read)) => {
                let records = read
                    .records
                    .into_iter()
                    .map(|r| (r.offset, String::from_utf8_lossy(&r.data).into_owned()))
                    .collect();
                (OpType::Ok, records, Some(read.next_offset), None)
            }
            // A read changes nothing: whatever went wrong, it did not happen.
            Ok(Err(error)) => (OpType::Fail, Vec::new(), None, Some(error.to_string())),
            Err(_) => (
                OpType::Info,
                Vec::new(),
                None,
                Some(format!("no answer within {OP_TIMEOUT:?}")),
            ),
        };
        history.record(
            self.process,
            kind,
            Call::Read {
                node,
                from,
                records,
                next_offset,
            },
            error,
        );
    }
}

/// Reads node `addr`'s whole retained log (locally: the node has caught up).
///
/// # Errors
/// The client's error.
pub async fn read_all(
    client: &mut KeelClient,
    addr: &str,
) -> Result<Vec<(u64, String)>, ClientError> {
    let mut out = Vec::new();
    let mut from = 0;
    loop {
        let read = client.read_at(addr, from, 10_000, false).await?;
        if read.records.is_empty() {
            return Ok(out);
        }
        for record in read.records {
            from = record.offset + 1;
            out.push((
                record.offset,
                String::from_utf8_lossy(&record.data).into_owned(),
            ));
        }
        if from >= read.next_offset {
            return Ok(out);
        }
    }
}
