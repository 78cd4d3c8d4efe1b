//! The coalescing queue: appends wait here, and at most [`COALESCE_INFLIGHT`] flusher
//! tasks each propose whatever is queued as one Raft entry ([`crate::coalesce`]) and hand
//! every write its own answer. A write that finds a flusher free is proposed at once
//! (alone); under load, writes queue while entries are in flight and go out together. A
//! batch's fate (applied, refused, unknown) is every one of its writes'.

use std::collections::VecDeque;
use std::sync::{Arc, MutexGuard};

use tokio::sync::{OwnedSemaphorePermit, oneshot};
use tonic::Status;

use crate::coalesce::{BATCH_HEADER_BYTES, BATCH_WRITE_OVERHEAD_BYTES, encode_batch};
use crate::limits::COMMAND_MAX_BYTES;
use crate::types::{ClientRequest, ClientResponse};
use crate::wire_error::{WriteErrorKind, status};

use super::ClientService;
use super::propose::INFLIGHT_WRITES_MAX;

/// Coalesced entries proposed at once; while they are in flight, appends queue.
pub const COALESCE_INFLIGHT: usize = 4;
/// Most writes one coalesced entry carries.
const COALESCE_MAX_WRITES: usize = 1024;

/// A write waiting to be proposed, and where its answer goes.
#[derive(Debug)]
pub(super) struct Queued {
    request: ClientRequest,
    answer: oneshot::Sender<Result<ClientResponse, Status>>,
}

impl ClientService {
    pub(super) fn queue(&self) -> MutexGuard<'_, VecDeque<Queued>> {
        self.queue.lock().expect("append queue lock poisoned")
    }

    /// Proposes `request` coalesced with other queued appends; its own answer.
    pub(super) async fn write_coalesced(
        &self,
        request: ClientRequest,
    ) -> Result<ClientResponse, Status> {
        let (answer, answered) = oneshot::channel();
        {
            let mut queue = self.queue();
            if queue.len() >= INFLIGHT_WRITES_MAX {
                return Err(status(
                    WriteErrorKind::Overloaded,
                    format!("{INFLIGHT_WRITES_MAX} writes queued; retry later"),
                ));
            }
            queue.push_back(Queued { request, answer });
        }
        if let Ok(permit) = Arc::clone(&self.flushers).try_acquire_owned() {
            tokio::spawn(self.clone().flush(permit));
        }
        answered.await.unwrap_or_else(|_| {
            Err(status(
                WriteErrorKind::OutcomeUnknown,
                "the node stopped before answering; retry with the same sequence to learn the outcome",
            ))
        })
    }

    /// Proposes queued writes, an entry at a time, until the queue is empty. A write queued
    /// after the last look either found this permit released (and started a flusher) or is
    /// seen by the re-check after the release.
    pub(super) async fn flush(self, mut permit: OwnedSemaphorePermit) {
        loop {
            let batch = self.take_batch();
            if batch.is_empty() {
                match self.release_unless_queued(permit) {
                    Some(again) => permit = again,
                    None => return,
                }
            } else {
                self.propose_batch(batch).await;
            }
        }
    }

    /// `permit` back if writes are queued (or were queued after it was released and no
    /// other flusher took them), else releases it.
    pub(super) fn release_unless_queued(
        &self,
        permit: OwnedSemaphorePermit,
    ) -> Option<OwnedSemaphorePermit> {
        if !self.queue().is_empty() {
            return Some(permit);
        }
        drop(permit);
        if self.queue().is_empty() {
            return None;
        }
        Arc::clone(&self.flushers).try_acquire_owned().ok()
    }

    /// The oldest queued writes that fit one command.
    pub(super) fn take_batch(&self) -> Vec<Queued> {
        let mut queue = self.queue();
        let mut bytes = BATCH_HEADER_BYTES;
        let mut batch = Vec::new();
        while let Some(next) = queue.front() {
            let size = BATCH_WRITE_OVERHEAD_BYTES + next.request.command.len();
            if batch.len() == COALESCE_MAX_WRITES
                || (!batch.is_empty() && bytes + size > COMMAND_MAX_BYTES)
            {
                break;
            }
            bytes += size;
            batch.extend(queue.pop_front());
        }
        batch
    }

    /// Proposes `batch` as one entry (a lone write as itself) and answers every write.
    pub(super) async fn propose_batch(&self, mut batch: Vec<Queued>) {
        if batch.len() == 1 {
            let Queued { request, answer } = batch.remove(0);
            let _ = answer.send(self.write(request).await.map(|(r, _)| r.data));
            return;
        }
        let requests: Vec<ClientRequest> = batch.iter().map(|q| q.request.clone()).collect();
        let written = self
            .write(ClientRequest {
                session: 0,
                seq: 0,
                command: encode_batch(&requests),
            })
            .await;
        match written.map(|(response, _)| response.data) {
            Ok(ClientResponse::Batch(answers)) if answers.len() == batch.len() => {
                for (queued, answer) in batch.into_iter().zip(answers) {
                    let _ = queued.answer.send(Ok(answer));
                }
            }
            Ok(other) => {
                let error = status(
                    WriteErrorKind::Invalid,
                    format!("a batch of {} writes was answered {other:?}", batch.len()),
                );
                for queued in batch {
                    let _ = queued.answer.send(Err(error.clone()));
                }
            }
            Err(error) => {
                for queued in batch {
                    let _ = queued.answer.send(Err(error.clone()));
                }
            }
        }
    }
}
