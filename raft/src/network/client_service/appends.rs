//! Appends to the plain log: checked against the limits, stamped, queued for coalescing;
//! unary, or many on one persistent stream (answers in completion order, matched by request
//! id, at most [`APPEND_STREAM_INFLIGHT_MAX`] served at once per stream).

use std::pin::Pin;
use std::sync::Arc;
use std::time::Instant;

use futures::Stream;
use tokio::sync::Semaphore;
use tonic::{Request, Response, Status};

use crate::clock::now_ms;
use crate::limits::{APPEND_BATCH_MAX_RECORDS, COMMAND_MAX_BYTES, RECORD_MAX_BYTES};
use crate::multiplex::{AppTag, tagged};
use crate::pb::client as api;
use crate::plain_log::{decode_append_answer, encode_append};
use crate::types::{ClientRequest, ClientResponse};
use crate::wire_error::{WriteErrorKind, status, to_append_error};

use super::ClientService;
use super::propose::session_refusal;

/// Most answers queued on one append stream before its requests wait.
const APPEND_STREAM_QUEUE: usize = 1024;
/// Most appends of one stream served at once; the stream is not read past it.
const APPEND_STREAM_INFLIGHT_MAX: usize = 1024;

/// The answers of one append stream.
pub(super) type AnswerStream =
    Pin<Box<dyn Stream<Item = Result<api::StreamAppendResponse, Status>> + Send>>;

impl ClientService {
    pub(super) async fn append_batch(
        &self,
        request: api::AppendRequest,
    ) -> Result<api::AppendResponse, Status> {
        let invalid = |message: String| status(WriteErrorKind::Invalid, message);
        if request.records.is_empty() {
            return Err(invalid("an append carries at least one record".to_owned()));
        }
        if request.records.len() > APPEND_BATCH_MAX_RECORDS {
            return Err(invalid(format!(
                "{} records in one append; the limit is {APPEND_BATCH_MAX_RECORDS}",
                request.records.len()
            )));
        }
        if let Some(record) = request.records.iter().find(|r| r.len() > RECORD_MAX_BYTES) {
            return Err(invalid(format!(
                "a record of {} bytes; the limit is {RECORD_MAX_BYTES}",
                record.len()
            )));
        }
        let total: usize = request.records.iter().map(|r| r.len() + 4).sum::<usize>() + 12;
        if total > COMMAND_MAX_BYTES {
            return Err(invalid(format!(
                "a batch of {total} bytes; the limit is {COMMAND_MAX_BYTES}"
            )));
        }
        if request.session != 0 && request.seq == 0 {
            return Err(invalid("sequence numbers start at 1".to_owned()));
        }
        let command = tagged(AppTag::PlainLog, &encode_append(now_ms(), &request.records));
        let response = self
            .write_coalesced(ClientRequest {
                session: request.session,
                seq: request.seq,
                command,
            })
            .await?;
        match session_refusal(request.session, request.seq, response)? {
            ClientResponse::Applied { answer, index } => {
                let (first_offset, count) = decode_append_answer(&answer).ok_or_else(|| {
                    status(
                        WriteErrorKind::Invalid,
                        "the command did not decode as an append",
                    )
                })?;
                Ok(api::AppendResponse {
                    first_offset,
                    count,
                    raft_index: index,
                })
            }
            other => Err(status(
                WriteErrorKind::Invalid,
                format!("an append was answered {other:?}"),
            )),
        }
    }

    /// [`Self::append_batch`], recorded in the metrics.
    pub(super) async fn timed_append(
        &self,
        request: api::AppendRequest,
    ) -> Result<api::AppendResponse, Status> {
        let started = Instant::now();
        let result = self.append_batch(request).await;
        self.shared
            .metrics
            .append_latency
            .observe(started.elapsed());
        if result.is_err() {
            self.shared
                .metrics
                .append_errors
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        }
        result
    }

    pub(super) fn serve_append_stream(
        &self,
        request: Request<tonic::Streaming<api::StreamAppendRequest>>,
    ) -> Response<AnswerStream> {
        let mut requests = request.into_inner();
        let (answers, answered) = futures::channel::mpsc::channel(APPEND_STREAM_QUEUE);
        let service = self.clone();
        let inflight = Arc::new(Semaphore::new(APPEND_STREAM_INFLIGHT_MAX));
        tokio::spawn(async move {
            while let Ok(Some(message)) = requests.message().await {
                // At the limit, stop reading the stream until an append finishes: the
                // client's sends then wait on HTTP/2 flow control.
                let Ok(permit) = Arc::clone(&inflight).acquire_owned().await else {
                    return;
                };
                let service = service.clone();
                let mut answers = answers.clone();
                tokio::spawn(async move {
                    let _permit = permit;
                    let request_id = message.request_id;
                    let result = match message.append {
                        Some(append) => service.timed_append(append).await,
                        None => Err(status(
                            WriteErrorKind::Invalid,
                            "a stream request without an append",
                        )),
                    };
                    let result = match result {
                        Ok(appended) => api::stream_append_response::Result::Appended(appended),
                        Err(error) => {
                            api::stream_append_response::Result::Error(to_append_error(&error))
                        }
                    };
                    let answer = api::StreamAppendResponse {
                        request_id,
                        result: Some(result),
                    };
                    let _ = futures::SinkExt::send(&mut answers, Ok(answer)).await;
                });
            }
        });
        Response::new(Box::pin(answered))
    }
}
