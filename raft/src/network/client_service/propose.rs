//! Proposals: one write through openraft, honest about its fate (see
//! [`crate::wire_error`]). The only retry is of the post-election lease refusal (nothing was
//! proposed then), never of a proposed write; session registrations and the answers that
//! refuse a write for its session.

use std::sync::Arc;
use std::time::Duration;

use openraft::error::{ClientWriteError, ForwardReason, RaftError};
use tonic::Status;

use crate::retry::{Attempt, Backoff, retry};
use crate::session::encode_register;
use crate::types::{ClientRequest, ClientResponse, TypeConfig};
use crate::wire_error::{WriteErrorKind, status};

use super::ClientService;

/// Most client writes in flight on one node; more are refused as overloaded.
pub const INFLIGHT_WRITES_MAX: usize = 4096;
/// How long a proposed write may take before its outcome is reported unknown.
const WRITE_TIMEOUT: Duration = Duration::from_secs(10);
/// How often a write refused for an expired post-election lease is tried again, and the
/// pause.
const LEASE_RETRIES_MAX: u32 = 50;
const LEASE_RETRY_PAUSE: Duration = Duration::from_millis(20);

impl ClientService {
    /// Proposes `request` (a command tagged by [`crate::multiplex::tagged`]) and waits for
    /// the state machine's answer; retries only the post-election lease refusal (nothing was
    /// proposed then).
    ///
    /// # Errors
    /// A status whose kind (see [`crate::wire_error`]) says whether the write may have
    /// been applied.
    pub async fn propose(&self, request: ClientRequest) -> Result<ClientResponse, Status> {
        Ok(self.write(request).await?.0.data)
    }

    pub(super) async fn write(
        &self,
        request: ClientRequest,
    ) -> Result<(openraft::raft::ClientWriteResponse<TypeConfig>, u64), Status> {
        let _permit = Arc::clone(&self.inflight)
            .try_acquire_owned()
            .map_err(|_| {
                status(
                    WriteErrorKind::Overloaded,
                    format!("{INFLIGHT_WRITES_MAX} writes in flight; retry later"),
                )
            })?;
        let lease = Backoff::constant(LEASE_RETRY_PAUSE, LEASE_RETRIES_MAX + 1);
        retry(lease, |attempt| {
            let written = self.shared.raft.client_write(request.clone());
            async move {
                let error = match tokio::time::timeout(WRITE_TIMEOUT, written).await {
                    Err(_) => {
                        return Attempt::Done(Err(status(
                            WriteErrorKind::OutcomeUnknown,
                            format!(
                                "no outcome within {WRITE_TIMEOUT:?} after proposing; retry with the same sequence to learn it"
                            ),
                        )));
                    }
                    Ok(Ok(response)) => return Attempt::Done(Ok((response, u64::from(attempt)))),
                    Ok(Err(error)) => error,
                };
                Attempt::Done(Err(match error {
                    RaftError::APIError(ClientWriteError::ForwardToLeader(forward)) => {
                        // Right after an election the leader's own lease may refuse a
                        // proposal: nothing was proposed, so it is tried again here.
                        let refused = Self::leader_of(&forward);
                        if forward.reason == ForwardReason::LeaseExpired
                            && forward.leader_id == Some(self.shared.node_id)
                        {
                            return Attempt::Again(refused);
                        }
                        refused
                    }
                    RaftError::APIError(ClientWriteError::LogEntryDiscarded(forward)) => status(
                        WriteErrorKind::OutcomeUnknown,
                        format!(
                            "the entry was discarded by a leader change ({forward}); it may or may not commit: retry with the same sequence"
                        ),
                    ),
                    RaftError::APIError(other) => status(WriteErrorKind::Invalid, other.to_string()),
                    RaftError::Fatal(fatal) => status(
                        WriteErrorKind::OutcomeUnknown,
                        format!("raft stopped after the proposal: {fatal}"),
                    ),
                }))
            }
        })
        .await
    }

    /// Registers an exactly-once session through the log; its id.
    ///
    /// # Errors
    /// Not the leader, overloaded, or the registration's fate unknown (a lost registration
    /// only costs a session slot).
    pub async fn register_session(&self) -> Result<u64, Status> {
        let request = ClientRequest {
            session: 0,
            seq: 0,
            command: encode_register(self.shared.sessions_max),
        };
        match self.propose(request).await? {
            ClientResponse::SessionRegistered { session } => Ok(session),
            other => Err(status(
                WriteErrorKind::Invalid,
                format!("a session registration was answered {other:?}"),
            )),
        }
    }
}

/// `response`, or the error status a session refusal stands for: write `seq` of `session`
/// was not applied, and for an unknown session an earlier attempt's fate is lost.
///
/// # Errors
/// `StaleSequence` or `UnknownSession`.
pub fn session_refusal(
    session: u64,
    seq: u64,
    response: ClientResponse,
) -> Result<ClientResponse, Status> {
    match response {
        ClientResponse::StaleSequence { last_applied_seq } => Err(status(
            WriteErrorKind::StaleSequence,
            format!(
                "sequence {seq} is older than session {session}'s last applied {last_applied_seq}"
            ),
        )),
        ClientResponse::UnknownSession => Err(status(
            WriteErrorKind::UnknownSession,
            format!(
                "session {session} is not registered or has expired: write {seq} was not applied now, and whether an earlier attempt of it was cannot be known; register a new session"
            ),
        )),
        other => Ok(other),
    }
}
