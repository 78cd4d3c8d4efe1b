//! Reads of the plain log: local or linearizable (a read index from the leader, then this
//! node's apply catching up to it), and subscriptions that follow the committed tail.

use std::collections::VecDeque;
use std::pin::Pin;
use std::time::Duration;

use futures::Stream;
use openraft::async_runtime::WatchReceiver;
use openraft::{ReadPolicy, ServerState};
use tonic::{Request, Response, Status};

use crate::pb::client::{self as api};
use crate::pb::raft::raft_client::RaftClient;
use crate::plain_log::LogRecord;
use crate::wire_error::{WriteErrorKind, status};

use super::ClientService;

/// How long a linearizable read may wait for its read index and the local apply.
const READ_TIMEOUT: Duration = Duration::from_secs(5);
/// Most records one `Read` returns, and about how many bytes.
const READ_MAX_RECORDS: usize = 10_000;
const READ_MAX_BYTES: usize = 4 * 1024 * 1024;
/// Records fetched per step of a subscription.
const SUBSCRIBE_BATCH_RECORDS: usize = 1024;

/// Records streamed to a subscriber.
pub(super) type RecordStream = Pin<Box<dyn Stream<Item = Result<api::Record, Status>> + Send>>;

impl ClientService {
    /// Waits until this node has applied everything acknowledged before the call.
    ///
    /// # Errors
    /// `Unavailable` when no read index can be had or the apply does not catch up in time.
    pub async fn linearize(&self) -> Result<(), Status> {
        let is_leader = self.shared.raft.metrics().borrow_watched().state == ServerState::Leader;
        let read_index = if is_leader {
            match self
                .shared
                .raft
                .ensure_linearizable(ReadPolicy::ReadIndex)
                .await
            {
                Ok(read) => read.index(),
                Err(error) => {
                    return Err(status(
                        WriteErrorKind::Unavailable,
                        format!("read index: {error}"),
                    ));
                }
            }
        } else {
            self.remote_read_index().await?
        };
        self.shared
            .raft
            .wait(Some(READ_TIMEOUT))
            .applied_index_at_least(Some(read_index), "linearizable read")
            .await
            .map_err(|e| {
                status(
                    WriteErrorKind::Unavailable,
                    format!("waiting to apply index {read_index}: {e}"),
                )
            })?;
        Ok(())
    }

    pub(super) async fn remote_read_index(&self) -> Result<u64, Status> {
        let (leader, node) = self.known_leader().ok_or_else(|| {
            status(
                WriteErrorKind::Unavailable,
                "no leader known to take a read index from",
            )
        })?;
        let addr = self.shared.network.address_of(leader, &node);
        let channel = self
            .shared
            .network
            .channel(leader, &addr)
            .map_err(|e| status(WriteErrorKind::Unavailable, e.to_string()))?;
        let mut request = Request::new(crate::pb::raft::Empty {});
        request.set_timeout(READ_TIMEOUT);
        let response = RaftClient::new(channel)
            .read_index(request)
            .await
            .map_err(|e| {
                status(
                    WriteErrorKind::Unavailable,
                    format!("read index from leader {leader}: {}", e.message()),
                )
            })?
            .into_inner();
        if !response.has_read_index {
            return Err(status(
                WriteErrorKind::Unavailable,
                "the leader gave no read index",
            ));
        }
        Ok(response.read_index)
    }

    pub(super) fn check_retained(&self, from: u64) -> Result<(), Status> {
        let (first, _) = self.shared.log.bounds();
        if from < first {
            return Err(Status::out_of_range(format!(
                "offset {from} was dropped by retention; the first retained offset is {first}"
            )));
        }
        Ok(())
    }

    pub(super) async fn serve_read(
        &self,
        request: Request<api::ReadRequest>,
    ) -> Result<Response<api::ReadResponse>, Status> {
        let request = request.into_inner();
        #[cfg(feature = "sabotage")]
        let sabotaged = crate::sabotage::on(crate::sabotage::Fault::StaleReads);
        #[cfg(not(feature = "sabotage"))]
        let sabotaged = false;
        if request.linearizable && !sabotaged {
            self.linearize().await?;
        }
        self.check_retained(request.from_offset)?;
        let max = match request.max_records {
            0 => READ_MAX_RECORDS,
            n => (n as usize).min(READ_MAX_RECORDS),
        };
        let records = self
            .shared
            .log
            .read_from(request.from_offset, max, READ_MAX_BYTES);
        let (first_offset, next_offset) = self.shared.log.bounds();
        Ok(Response::new(api::ReadResponse {
            records: records.into_iter().map(record_to_pb).collect(),
            first_offset,
            next_offset,
        }))
    }

    pub(super) fn serve_subscribe(
        &self,
        request: Request<api::SubscribeRequest>,
    ) -> Result<Response<RecordStream>, Status> {
        let from = request.into_inner().from_offset;
        self.check_retained(from)?;
        let log = self.shared.log.clone();
        let watch = log.watch_next_offset();
        let state = (from, watch, VecDeque::<LogRecord>::new(), false);
        let stream = futures::stream::unfold(
            state,
            move |(mut next, mut watch, mut buffered, failed)| {
                let log = log.clone();
                async move {
                    if failed {
                        return None;
                    }
                    loop {
                        if let Some(record) = buffered.pop_front() {
                            return Some((
                                Ok(record_to_pb(record)),
                                (next, watch, buffered, false),
                            ));
                        }
                        let batch = log.read_from(next, SUBSCRIBE_BATCH_RECORDS, READ_MAX_BYTES);
                        match batch.first() {
                            Some(first) if first.offset != next => {
                                let error = Status::out_of_range(format!(
                                    "offset {next} was dropped by retention while subscribed; resume from {}",
                                    first.offset
                                ));
                                return Some((Err(error), (next, watch, buffered, true)));
                            }
                            Some(_) => {
                                next = batch.last().map_or(next, |r| r.offset + 1);
                                buffered.extend(batch);
                            }
                            None => {
                                if watch.changed().await.is_err() {
                                    return None;
                                }
                            }
                        }
                    }
                }
            },
        );
        Ok(Response::new(Box::pin(stream)))
    }
}

fn record_to_pb(record: LogRecord) -> api::Record {
    api::Record {
        offset: record.offset,
        stamp_ms: record.stamp_ms,
        data: record.data,
    }
}
