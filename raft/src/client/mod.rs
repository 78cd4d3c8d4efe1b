//! A Rust client of a Keel cluster's client service: finds the leader, follows redirects,
//! and makes writes exactly-once in a session the cluster assigns ([`crate::session`]).
//!
//! A client registers its session on its first write and numbers its writes from 1. A write
//! answered "outcome unknown" is retried with the same sequence, so it is applied at most
//! once and its first answer is returned; a write answered "not proposed" is retried
//! anywhere. A write whose session expired is reported [`ClientError::SessionExpired`]
//! (outcome unknown) and never re-sent under another session; the next write registers a
//! new one. Retries are bounded by [`RETRY_DEADLINE`], each attempt by [`CALL_DEADLINE`].

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;

mod admin;
mod append_stream;
mod reads;

pub use admin::STATUS_TIMEOUT;
use append_stream::{AppendStreams, stream_append};

use crate::network::client::endpoint;
use crate::pb::client::{self as api, keel_log_client::KeelLogClient};
use crate::security::credentials::{Connector, Credentials, KeelChannel};
use crate::security::dial::tls_refusal;
use crate::wire_error::{self, WriteErrorKind};

/// How long a request keeps retrying through elections and redirects.
pub const RETRY_DEADLINE: Duration = Duration::from_secs(15);
/// Pause between retries when no leader is known.
const RETRY_PAUSE: Duration = Duration::from_millis(25);
/// Redirects followed at once before pausing (views of the leader may disagree briefly).
const REDIRECTS_WITHOUT_PAUSE: u32 = 3;
/// How long one attempt of a write may wait for its answer; past it, its outcome is
/// unknown. Above the server's own deadline for a proposed write (10 s), so a live server
/// answers first.
pub const CALL_DEADLINE: Duration = Duration::from_secs(20);

/// Why a client call failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ClientError {
    /// The cluster answered with an error that retrying does not fix.
    #[error("{kind:?}: {message}")]
    Refused {
        /// The kind of error.
        kind: WriteErrorKind,
        /// The server's message.
        message: String,
    },
    /// A gRPC error without Keel's error kind (a transport error, an old server).
    #[error("{0}")]
    Rpc(tonic::Status),
    /// No node answered usefully before the retry deadline.
    #[error("no usable answer within {RETRY_DEADLINE:?}; last error: {last}")]
    GaveUp {
        /// The last error seen.
        last: String,
    },
    /// The write's session expired (or was never registered) while the write was in
    /// flight: it was not applied by the last attempt, and whether an earlier attempt
    /// applied it cannot be known. The outcome is unknown; the write must not be re-sent
    /// under another session.
    #[error(
        "outcome unknown: session {session} expired before write {seq} was answered ({message})"
    )]
    SessionExpired {
        /// The expired session.
        session: u64,
        /// The write's sequence in it.
        seq: u64,
        /// The server's message.
        message: String,
    },
    /// The client's credentials (CA, certificate, key, token file) cannot be used.
    #[error("credentials: {0}")]
    Credentials(#[from] crate::security::SecurityError),
    /// A bad endpoint address.
    #[error("invalid endpoint {addr}: {reason}")]
    Endpoint {
        /// The address.
        addr: String,
        /// Why it is invalid.
        reason: String,
    },
}

impl From<tonic::Status> for ClientError {
    /// A refusal of the caller's credentials or role (by the node, or by TLS on either
    /// side) becomes [`ClientError::Refused`] of kind [`WriteErrorKind::Denied`], saying
    /// why; any other status stays [`ClientError::Rpc`].
    fn from(status: tonic::Status) -> Self {
        if kind_of(&status) == WriteErrorKind::Denied {
            ClientError::Refused {
                kind: WriteErrorKind::Denied,
                message: message_of(&status),
            }
        } else {
            ClientError::Rpc(status)
        }
    }
}

/// A client of one cluster.
#[derive(Debug, Clone)]
pub struct KeelClient {
    endpoints: Vec<String>,
    connector: Connector,
    channels: HashMap<String, KeelChannel>,
    streams: AppendStreams,
    /// Index into `endpoints` (or a learned leader address) to try first.
    preferred: Option<String>,
    writes: Writes,
}

/// How a client's writes are deduplicated.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Writes {
    /// In a session the cluster assigns (`None` until the first write registers one).
    ExactlyOnce(Option<WriteId>),
    /// Without a session: a write whose outcome is unknown is not retried.
    AtMostOnce,
}

/// One write's place in its session: `(session, seq)`; `(0, 0)` for a write without one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WriteId {
    /// The session, as the cluster assigned it (0: none).
    pub session: u64,
    /// The write's sequence in the session, from 1.
    pub seq: u64,
}

/// The result of an append.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Appended {
    /// Offset of the batch's first record.
    pub first_offset: u64,
    /// Records in the batch.
    pub count: u32,
    /// Raft index of the entry that carried it.
    pub raft_index: u64,
}

impl KeelClient {
    /// A client of the cluster reachable at `endpoints` (`host:port` each), writing
    /// exactly-once in a session it registers on its first write.
    ///
    /// # Errors
    /// [`ClientError::Endpoint`] for an address that is not a valid `host:port`.
    pub fn new(endpoints: &[String]) -> Result<Self, ClientError> {
        Self::with_credentials(endpoints, &Credentials::none())
    }

    /// [`KeelClient::new`], presenting `credentials` (TLS when they name a CA, a client
    /// certificate, a bearer token).
    ///
    /// # Errors
    /// [`ClientError::Endpoint`] for a bad address; [`ClientError::Credentials`] for a
    /// credential file that cannot be used.
    pub fn with_credentials(
        endpoints: &[String],
        credentials: &Credentials,
    ) -> Result<Self, ClientError> {
        let connector = Connector::new(credentials)?;
        let mut channels = HashMap::new();
        for addr in endpoints {
            channels.insert(addr.clone(), dial(&connector, addr)?);
        }
        Ok(Self {
            endpoints: endpoints.to_vec(),
            connector,
            channels,
            streams: AppendStreams::default(),
            preferred: None,
            writes: Writes::ExactlyOnce(None),
        })
    }

    /// This client, writing without a session: a write whose outcome is unknown is reported
    /// so and not retried (a retry could apply it twice).
    #[must_use]
    pub fn at_most_once(mut self) -> Self {
        self.writes = Writes::AtMostOnce;
        self
    }

    /// Another writer on this client's connections and append streams (concurrent writers
    /// of one process share one HTTP/2 connection per node, as gRPC intends), with its own
    /// session, registered on its first write.
    #[must_use]
    pub fn for_writer(&self) -> Self {
        let writes = match self.writes {
            Writes::ExactlyOnce(_) => Writes::ExactlyOnce(None),
            Writes::AtMostOnce => Writes::AtMostOnce,
        };
        Self {
            writes,
            ..self.clone()
        }
    }

    /// Continues session `session` (registered earlier) at sequence `next_seq`: a retry of
    /// a write whose outcome was unknown re-sends it with its own `(session, seq)`.
    pub fn resume_session(&mut self, session: u64, next_seq: u64) {
        self.writes = Writes::ExactlyOnce(Some(WriteId {
            session,
            seq: next_seq,
        }));
    }

    /// The session and the sequence of the next write, once a session is registered.
    pub fn session(&self) -> Option<WriteId> {
        match self.writes {
            Writes::ExactlyOnce(next) => next,
            Writes::AtMostOnce => None,
        }
    }

    /// Registers a new exactly-once session through the log; its id. Later writes use it.
    ///
    /// # Errors
    /// [`ClientError::GaveUp`] if no leader registered it in time.
    pub async fn register_session(&mut self) -> Result<u64, ClientError> {
        let session = self
            .on_leader(
                WriteErrorKind::is_safe_to_retry,
                |_, mut client| async move {
                    let mut request = tonic::Request::new(api::RegisterSessionRequest {});
                    request.set_timeout(CALL_DEADLINE);
                    client
                        .register_session(request)
                        .await
                        .map(|r| r.into_inner().session)
                },
            )
            .await?;
        self.writes = Writes::ExactlyOnce(Some(WriteId { session, seq: 1 }));
        Ok(session)
    }

    /// Runs the write `call` on the leader under this client's next [`WriteId`]: exactly
    /// once in its session (registered first if needed), retrying an unknown outcome with
    /// the same id; or, at most once, without a session. For services beside the log's
    /// whose writes carry a `(session, seq)`.
    ///
    /// # Errors
    /// [`ClientError::SessionExpired`] when the session expired under the write after an
    /// attempt whose fate is unknown (so is the write's); [`ClientError::Refused`] for a
    /// refusal, with kind [`WriteErrorKind::UnknownSession`] when the session had expired
    /// before any attempt could apply the write (either way the next write registers a new
    /// session); [`ClientError::GaveUp`] at the deadline (outcome unknown; the next write
    /// takes the next sequence).
    pub async fn write<T, F, Fut>(&mut self, mut call: F) -> Result<T, ClientError>
    where
        F: FnMut(WriteId, String, KeelChannel) -> Fut,
        Fut: Future<Output = Result<T, tonic::Status>>,
    {
        if self.writes == Writes::AtMostOnce {
            let id = WriteId { session: 0, seq: 0 };
            return self
                .on_leader_channel(WriteErrorKind::is_safe_to_retry, |addr, channel| {
                    call(id, addr, channel)
                })
                .await;
        }
        let id = match self.session() {
            Some(id) => id,
            None => WriteId {
                session: self.register_session().await?,
                seq: 1,
            },
        };
        self.writes = Writes::ExactlyOnce(Some(WriteId {
            seq: id.seq + 1,
            ..id
        }));
        // Whether an earlier attempt may have been applied: then a refusal of the session
        // leaves the write's outcome unknown; otherwise it certainly was not applied.
        let maybe_applied = Arc::new(AtomicBool::new(false));
        let result = self
            .on_leader_channel(retry_any_but_invalid, |addr, channel| {
                let attempt = call(id, addr, channel);
                let maybe_applied = Arc::clone(&maybe_applied);
                async move {
                    let result = attempt.await;
                    if let Err(status) = &result
                        && !matches!(
                            kind_of(status),
                            WriteErrorKind::NotLeader
                                | WriteErrorKind::Overloaded
                                | WriteErrorKind::Unavailable
                                | WriteErrorKind::Invalid
                                | WriteErrorKind::UnknownSession
                                | WriteErrorKind::Denied
                        )
                    {
                        maybe_applied.store(true, Ordering::Relaxed);
                    }
                    result
                }
            })
            .await;
        self.settle(id, maybe_applied.load(Ordering::Relaxed), result)
    }

    /// What a write's last refusal means for it (`id`), given whether an earlier attempt
    /// may have been applied: a refusal of its session or of the credentials is an unknown
    /// outcome then, and certainly-not-applied otherwise; a refused session is forgotten.
    fn settle<T>(
        &mut self,
        id: WriteId,
        maybe_applied: bool,
        result: Result<T, ClientError>,
    ) -> Result<T, ClientError> {
        match result {
            Err(ClientError::Refused {
                kind: WriteErrorKind::UnknownSession,
                message,
            }) => {
                if self.session().is_some_and(|now| now.session == id.session) {
                    self.writes = Writes::ExactlyOnce(None);
                }
                if maybe_applied {
                    Err(ClientError::SessionExpired {
                        session: id.session,
                        seq: id.seq,
                        message,
                    })
                } else {
                    Err(ClientError::Refused {
                        kind: WriteErrorKind::UnknownSession,
                        message,
                    })
                }
            }
            // A refusal of the credentials says nothing was done by that attempt, not by an
            // earlier one whose outcome is unknown (a rotation can refuse the retry).
            Err(ClientError::Refused {
                kind: WriteErrorKind::Denied,
                message,
            }) if maybe_applied => Err(ClientError::Refused {
                kind: WriteErrorKind::OutcomeUnknown,
                message: format!(
                    "write {} of session {}: an earlier attempt's outcome is unknown, and the \
                     retry was refused: {message}",
                    id.seq, id.session
                ),
            }),
            other => other,
        }
    }

    /// The (lazily connected, shared) channel to `addr`.
    ///
    /// # Errors
    /// [`ClientError::Endpoint`] for a bad address.
    pub fn raw_channel(&mut self, addr: &str) -> Result<KeelChannel, ClientError> {
        if !self.channels.contains_key(addr) {
            let channel = dial(&self.connector, addr)?;
            self.channels.insert(addr.to_owned(), channel);
        }
        Ok(self.channels[addr].clone())
    }

    fn channel(&mut self, addr: &str) -> Result<KeelLogClient<KeelChannel>, ClientError> {
        Ok(log_client(self.raw_channel(addr)?))
    }

    /// A client for the node at `addr` alone (status, reads from that node).
    ///
    /// # Errors
    /// [`ClientError::Endpoint`] for a bad address.
    pub fn node(&mut self, addr: &str) -> Result<KeelLogClient<KeelChannel>, ClientError> {
        self.channel(addr)
    }

    /// Addresses to try, the preferred (leader) first.
    fn candidates(&self) -> Vec<String> {
        let mut out: Vec<String> = self.preferred.iter().cloned().collect();
        out.extend(
            self.endpoints
                .iter()
                .filter(|e| Some(*e) != self.preferred.as_ref())
                .cloned(),
        );
        out
    }

    /// Runs `call` against the leader, following redirects and retrying errors that
    /// `retry_on` accepts, until [`RETRY_DEADLINE`].
    async fn on_leader<T, F, Fut>(
        &mut self,
        retry_on: fn(WriteErrorKind) -> bool,
        mut call: F,
    ) -> Result<T, ClientError>
    where
        F: FnMut(String, KeelLogClient<KeelChannel>) -> Fut,
        Fut: Future<Output = Result<T, tonic::Status>>,
    {
        self.on_leader_channel(retry_on, |addr, channel| call(addr, log_client(channel)))
            .await
    }

    /// Runs `call` with a channel to the leader, following redirects and retrying errors
    /// that `retry_on` accepts, until [`RETRY_DEADLINE`]: for services beside the log's
    /// that answer with [`wire_error`] kinds.
    ///
    /// # Errors
    /// [`ClientError::Refused`] for an error `retry_on` refuses; [`ClientError::GaveUp`]
    /// at the deadline.
    pub async fn on_leader_channel<T, F, Fut>(
        &mut self,
        retry_on: fn(WriteErrorKind) -> bool,
        mut call: F,
    ) -> Result<T, ClientError>
    where
        F: FnMut(String, KeelChannel) -> Fut,
        Fut: Future<Output = Result<T, tonic::Status>>,
    {
        let deadline = Instant::now() + RETRY_DEADLINE;
        let mut last = String::from("no endpoint tried");
        let mut redirects = 0;
        'rounds: while Instant::now() < deadline {
            for addr in self.candidates() {
                let channel = self.raw_channel(&addr)?;
                let status = match call(addr.clone(), channel).await {
                    Ok(value) => {
                        self.preferred = Some(addr);
                        return Ok(value);
                    }
                    Err(status) => status,
                };
                let kind = kind_of(&status);
                let (_, leader) = wire_error::parse(&status);
                let message = message_of(&status);
                last = format!("{addr}: {message}");
                if kind == WriteErrorKind::Denied || !retry_on(kind) {
                    return Err(ClientError::Refused { kind, message });
                }
                if let (WriteErrorKind::NotLeader, Some((_, leader_addr))) = (kind, leader)
                    && leader_addr != addr
                {
                    self.preferred = Some(leader_addr);
                    if redirects < REDIRECTS_WITHOUT_PAUSE {
                        redirects += 1;
                        continue 'rounds;
                    }
                    break;
                }
            }
            redirects = 0;
            tokio::time::sleep(RETRY_PAUSE).await;
        }
        Err(ClientError::GaveUp { last })
    }

    /// Appends `records` as one batch: exactly once in this client's session, or at most
    /// once without one ([`KeelClient::at_most_once`]).
    ///
    /// # Errors
    /// As [`KeelClient::write`]: [`ClientError::Refused`] for an invalid batch,
    /// [`ClientError::SessionExpired`] or [`ClientError::GaveUp`] when its outcome is unknown.
    pub async fn append(&mut self, records: Vec<Bytes>) -> Result<Appended, ClientError> {
        let streams = Arc::clone(&self.streams);
        let response = self
            .write(|id, addr, channel| {
                let request = api::AppendRequest {
                    session: id.session,
                    seq: id.seq,
                    records: records.clone(),
                };
                let streams = Arc::clone(&streams);
                async move { stream_append(&streams, &addr, log_client(channel), request).await }
            })
            .await?;
        Ok(Appended {
            first_offset: response.first_offset,
            count: response.count,
            raft_index: response.raft_index,
        })
    }
}

/// What an error status says of its request. Without Keel's kind the error came from the
/// transport: a refused TLS handshake or credential is [`WriteErrorKind::Denied`], a refused
/// connection sent nothing; anything else may have been delivered.
fn kind_of(status: &tonic::Status) -> WriteErrorKind {
    if let Some(kind) = wire_error::parse(status).0 {
        return kind;
    }
    match status.code() {
        tonic::Code::Unauthenticated | tonic::Code::PermissionDenied => WriteErrorKind::Denied,
        _ if refusal(status).is_some() => WriteErrorKind::Denied,
        tonic::Code::Unavailable => WriteErrorKind::Unavailable,
        _ => WriteErrorKind::OutcomeUnknown,
    }
}

/// The TLS refusal behind a transport error status, if that is what it is.
fn refusal(status: &tonic::Status) -> Option<String> {
    let source: &(dyn std::error::Error + 'static) = std::error::Error::source(status)?;
    tls_refusal(source)
}

/// A status's message, with the TLS refusal behind it when there is one (a transport
/// error's own message says only "transport error").
fn message_of(status: &tonic::Status) -> String {
    match refusal(status) {
        Some(refused) if !status.message().contains(&refused) => {
            format!("{}: {refused}", status.message())
        }
        _ => status.message().to_owned(),
    }
}

/// A lazily connected channel to `addr` through `connector`.
fn dial(connector: &Connector, addr: &str) -> Result<KeelChannel, ClientError> {
    let endpoint = endpoint(addr).map_err(|e| ClientError::Endpoint {
        addr: addr.to_owned(),
        reason: e.to_string(),
    })?;
    Ok(connector.channel(&endpoint))
}

fn log_client(channel: KeelChannel) -> KeelLogClient<KeelChannel> {
    KeelLogClient::new(channel)
        .max_decoding_message_size(crate::limits::MESSAGE_MAX_BYTES)
        .max_encoding_message_size(crate::limits::MESSAGE_MAX_BYTES)
}

/// Whether to retry a write that failed with `kind`: anything but a refusal of the request
/// itself or of its session.
pub fn retry_any_but_invalid(kind: WriteErrorKind) -> bool {
    !matches!(
        kind,
        WriteErrorKind::Invalid
            | WriteErrorKind::StaleSequence
            | WriteErrorKind::UnknownSession
            | WriteErrorKind::Denied
    )
}

#[cfg(test)]
mod tests;
