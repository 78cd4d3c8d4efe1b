//! A client's persistent append stream to one node: one HTTP/2 stream carries many appends,
//! answers matched by request id. Every call ends: a stream closed under it answers "not
//! sent", a stream that breaks after sending or an answer that does not come within
//! [`CALL_DEADLINE`] answers "outcome unknown".

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use crate::security::credentials::KeelChannel;
use futures::SinkExt;
use futures::channel::{mpsc, oneshot};

use crate::pb::client::{self as api, keel_log_client::KeelLogClient};
use crate::wire_error::{self};

use super::CALL_DEADLINE;

/// Answers awaited on one append stream, by request id.
type Waiting =
    Arc<Mutex<HashMap<u64, oneshot::Sender<Result<api::AppendResponse, tonic::Status>>>>>;

/// A persistent append stream to one node.
#[derive(Debug)]
pub(super) struct AppendStream {
    requests: mpsc::Sender<api::StreamAppendRequest>,
    waiting: Waiting,
    next_id: AtomicU64,
    closed: Arc<AtomicBool>,
}

/// Most requests queued on one append stream before senders wait.
const APPEND_STREAM_QUEUE: usize = 1024;

/// Append streams by node address, shared by a client's clones.
pub(super) type AppendStreams = Arc<tokio::sync::Mutex<HashMap<String, Arc<AppendStream>>>>;

/// Sends `request` on the append stream to `addr` (opening it if needed) and waits for its
/// answer, at most [`CALL_DEADLINE`]. A stream that breaks after the request went out, or
/// an answer that does not come in time, answers "outcome unknown".
pub(super) async fn stream_append(
    streams: &AppendStreams,
    addr: &str,
    client: KeelLogClient<KeelChannel>,
    request: api::AppendRequest,
) -> Result<api::AppendResponse, tonic::Status> {
    let stream = {
        let mut streams = streams.lock().await;
        match streams.get(addr) {
            Some(stream) if !stream.closed.load(Ordering::Acquire) => Arc::clone(stream),
            _ => {
                let stream = Arc::new(open_append_stream(client).await?);
                streams.insert(addr.to_owned(), Arc::clone(&stream));
                stream
            }
        }
    };
    send_on(&stream, request).await
}

/// Sends `request` on `stream` and waits for its answer, at most [`CALL_DEADLINE`].
async fn send_on(
    stream: &AppendStream,
    request: api::AppendRequest,
) -> Result<api::AppendResponse, tonic::Status> {
    let request_id = stream.next_id.fetch_add(1, Ordering::Relaxed);
    let (answer, answered) = oneshot::channel();
    let waiter = Waiter::insert(&stream.waiting, request_id, answer);
    // The reader marks the stream closed before it answers every waiter it finds; a waiter
    // inserted after that would never be answered, and sees the mark here.
    if stream.closed.load(Ordering::Acquire) {
        return Err(tonic::Status::unavailable(
            "append stream closed before sending",
        ));
    }
    let message = api::StreamAppendRequest {
        request_id,
        append: Some(request),
    };
    if stream.requests.clone().send(message).await.is_err() {
        return Err(tonic::Status::unavailable(
            "append stream closed before sending",
        ));
    }
    let answer = tokio::time::timeout(CALL_DEADLINE, answered).await;
    drop(waiter);
    match answer {
        Ok(Ok(result)) => result,
        Ok(Err(_)) => Err(tonic::Status::unknown("append stream closed after sending")),
        Err(_) => Err(tonic::Status::deadline_exceeded(format!(
            "no answer within {CALL_DEADLINE:?} after sending; the outcome is unknown"
        ))),
    }
}

/// A waiter's place in its stream's table, removed when the call ends however it ends.
struct Waiter<'a> {
    waiting: &'a Waiting,
    request_id: u64,
}

impl<'a> Waiter<'a> {
    fn insert(
        waiting: &'a Waiting,
        request_id: u64,
        answer: oneshot::Sender<Result<api::AppendResponse, tonic::Status>>,
    ) -> Self {
        waiting
            .lock()
            .expect("waiting lock poisoned")
            .insert(request_id, answer);
        Self {
            waiting,
            request_id,
        }
    }
}

impl Drop for Waiter<'_> {
    fn drop(&mut self) {
        self.waiting
            .lock()
            .expect("waiting lock poisoned")
            .remove(&self.request_id);
    }
}

async fn open_append_stream(
    mut client: KeelLogClient<KeelChannel>,
) -> Result<AppendStream, tonic::Status> {
    let (requests, outgoing) = mpsc::channel(APPEND_STREAM_QUEUE);
    let mut answers = client.append_stream(outgoing).await?.into_inner();
    let waiting = Waiting::default();
    let closed = Arc::new(AtomicBool::new(false));
    let (reader_waiting, reader_closed) = (Arc::clone(&waiting), Arc::clone(&closed));
    tokio::spawn(async move {
        let ended = loop {
            match answers.message().await {
                Ok(Some(answer)) => {
                    let waiter = reader_waiting
                        .lock()
                        .expect("waiting lock poisoned")
                        .remove(&answer.request_id);
                    let result = match answer.result {
                        Some(api::stream_append_response::Result::Appended(appended)) => {
                            Ok(appended)
                        }
                        Some(api::stream_append_response::Result::Error(error)) => {
                            Err(wire_error::from_append_error(&error))
                        }
                        None => Err(tonic::Status::unknown(
                            "an empty answer on the append stream",
                        )),
                    };
                    if let Some(waiter) = waiter {
                        let _ = waiter.send(result);
                    }
                }
                Ok(None) => break tonic::Status::unknown("append stream ended"),
                Err(status) => {
                    break tonic::Status::unknown(format!(
                        "append stream broke: {}",
                        status.message()
                    ));
                }
            }
        };
        reader_closed.store(true, Ordering::Release);
        let orphans: Vec<_> = reader_waiting
            .lock()
            .expect("waiting lock poisoned")
            .drain()
            .collect();
        for (_, waiter) in orphans {
            let _ = waiter.send(Err(ended.clone()));
        }
    });
    Ok(AppendStream {
        requests,
        waiting,
        next_id: AtomicU64::new(0),
        closed,
    })
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use bytes::Bytes;

    use super::*;
    use crate::client::kind_of;
    use crate::wire_error::WriteErrorKind;

    /// A stream whose reader is gone (nobody will answer) but whose request queue still
    /// accepts: `closed` as given. The receiver is returned to keep the queue open.
    fn silent_stream(closed: bool) -> (AppendStream, mpsc::Receiver<api::StreamAppendRequest>) {
        let (requests, queued) = mpsc::channel(APPEND_STREAM_QUEUE);
        let stream = AppendStream {
            requests,
            waiting: Waiting::default(),
            next_id: AtomicU64::new(0),
            closed: Arc::new(AtomicBool::new(closed)),
        };
        (stream, queued)
    }

    fn request() -> api::AppendRequest {
        api::AppendRequest {
            session: 3,
            seq: 1,
            records: vec![Bytes::from_static(b"r")],
        }
    }

    /// The race: the reader drained its waiters and closed the stream between the caller's
    /// look at `closed` and the insertion of its waiter. The call must end at once, as not
    /// sent, instead of waiting for an answer nobody will give.
    #[tokio::test(start_paused = true)]
    async fn a_call_on_a_stream_closed_under_it_ends_at_once_unsent() {
        let (stream, _queued) = silent_stream(true);
        let started = tokio::time::Instant::now();
        let error = send_on(&stream, request()).await.expect_err("closed");
        assert_eq!(error.code(), tonic::Code::Unavailable, "{error:?}");
        assert_eq!(started.elapsed(), Duration::ZERO);
        assert!(stream.waiting.lock().expect("lock").is_empty());
    }

    /// A sent request that is never answered ends at its deadline, outcome unknown, and
    /// leaves no waiter behind.
    #[tokio::test(start_paused = true)]
    async fn a_call_without_an_answer_ends_at_its_deadline() {
        let (stream, mut queued) = silent_stream(false);
        let started = tokio::time::Instant::now();
        let error = send_on(&stream, request()).await.expect_err("no answer");
        assert_eq!(error.code(), tonic::Code::DeadlineExceeded, "{error:?}");
        assert_eq!(started.elapsed(), CALL_DEADLINE);
        assert_eq!(kind_of(&error), WriteErrorKind::OutcomeUnknown);
        assert!(stream.waiting.lock().expect("lock").is_empty());
        assert!(queued.try_recv().is_ok(), "it was sent");
    }
}
