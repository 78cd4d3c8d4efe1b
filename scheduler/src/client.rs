//! A client of the workflow service: finds the leader, follows redirects, retries what is
//! safe to retry, and turns refusals into typed errors.

use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use bytes::Bytes;
use keel_raft::client::{ClientError, KeelClient, retry_any_but_invalid};
use keel_raft::limits::MESSAGE_MAX_BYTES;
use keel_raft::security::credentials::{Credentials, KeelChannel};

use crate::pb;
use crate::pb::workflows_client::WorkflowsClient;
use crate::wire::{RejectionKind, rejection_kind};

pub use crate::pb::{JournalEntry, RemoteCall, TimerFire, TimerInfo, WorkflowInfo};

/// What went wrong with a workflow request.
#[derive(Debug, thiserror::Error)]
pub enum WorkflowClientError {
    /// The scheduler refused the request; the same request would be refused again.
    #[error("{message}")]
    Rejected {
        /// What kind of refusal.
        kind: RejectionKind,
        /// The scheduler's message.
        message: String,
    },
    /// A node answered that it lost data it should hold (a value the workflow's record
    /// references could not be read), and no node answered the request whole.
    #[error("data loss: {message}")]
    DataLoss {
        /// The node's message.
        message: String,
    },
    /// The cluster could not be reached or refused in another way.
    #[error(transparent)]
    Cluster(#[from] ClientError),
}

/// The error statuses a request met on its attempts, so that a refusal can be typed.
#[derive(Debug, Clone, Default)]
struct Seen(Arc<Mutex<Vec<tonic::Status>>>);

impl Seen {
    /// Keeps `answer`'s error status, if it is one.
    fn note<T>(&self, answer: &Result<T, tonic::Status>) {
        if let Err(status) = answer {
            self.0
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .push(status.clone());
        }
    }

    /// `error` typed by the statuses seen: a refusal by the last status; data loss if a
    /// node reported it and no node answered definitely (the request gave up retrying);
    /// else the cluster's error.
    fn typed(&self, error: ClientError) -> WorkflowClientError {
        let seen = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        let data_loss = seen
            .iter()
            .find(|status| status.code() == tonic::Code::DataLoss);
        if let (ClientError::GaveUp { .. }, Some(status)) = (&error, data_loss) {
            return WorkflowClientError::DataLoss {
                message: status.message().to_owned(),
            };
        }
        let last = seen.last().and_then(rejection_kind);
        match (&error, last) {
            (ClientError::Refused { message, .. }, Some(kind)) => WorkflowClientError::Rejected {
                kind,
                message: message.clone(),
            },
            _ => WorkflowClientError::Cluster(error),
        }
    }
}

fn workflows(channel: KeelChannel) -> WorkflowsClient<KeelChannel> {
    WorkflowsClient::new(channel)
        .max_decoding_message_size(MESSAGE_MAX_BYTES)
        .max_encoding_message_size(MESSAGE_MAX_BYTES)
}

/// When a named timer is due.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TimerDue {
    /// This long after the leader stamps it (never early).
    After(Duration),
    /// At this wall-clock time, ms since the Unix epoch.
    AtMs(u64),
}

/// A workflow client of one cluster; clones share connections. Each clone sends signals in
/// its own exactly-once session, registered with the cluster on its first signal.
#[derive(Debug)]
pub struct WorkflowClient {
    cluster: KeelClient,
}

impl Clone for WorkflowClient {
    fn clone(&self) -> Self {
        Self {
            cluster: self.cluster.for_writer(),
        }
    }
}

/// Runs one request on the leader, keeping the statuses seen so a refusal can be typed.
macro_rules! on_leader {
    ($self:ident, $request:expr, $method:ident) => {{
        let request = $request;
        let seen = Seen::default();
        let result = $self
            .cluster
            .on_leader_channel(retry_any_but_invalid, |_, channel| {
                let request = request.clone();
                let seen = seen.clone();
                async move {
                    let answer = workflows(channel).$method(request).await;
                    seen.note(&answer);
                    answer.map(tonic::Response::into_inner)
                }
            })
            .await;
        result.map_err(|error| seen.typed(error))
    }};
}

impl WorkflowClient {
    /// A client of the cluster at `endpoints`.
    ///
    /// # Errors
    /// [`ClientError::Endpoint`] for an address that is not a valid `host:port`.
    pub fn new(endpoints: &[String]) -> Result<Self, WorkflowClientError> {
        Self::with_credentials(endpoints, &Credentials::none())
    }

    /// A client of the cluster at `endpoints`, presenting `credentials`.
    ///
    /// # Errors
    /// A bad address, or a credential file that cannot be used.
    pub fn with_credentials(
        endpoints: &[String],
        credentials: &Credentials,
    ) -> Result<Self, WorkflowClientError> {
        Ok(Self {
            cluster: KeelClient::with_credentials(endpoints, credentials)?,
        })
    }

    /// Starts workflow `id` of `kind`; true if this call created it (false: it existed,
    /// and that workflow is the one `id` names).
    ///
    /// # Errors
    /// [`WorkflowClientError::Rejected`] for an unknown kind, a bad id or an input over the
    /// limit; [`WorkflowClientError::Cluster`] when no leader answered.
    pub async fn start(
        &mut self,
        id: &str,
        kind: &str,
        input: Bytes,
    ) -> Result<bool, WorkflowClientError> {
        let request = pb::StartRequest {
            id: id.to_owned(),
            kind: kind.to_owned(),
            input,
        };
        Ok(on_leader!(self, request, start)?.created)
    }

    /// Workflow `id` now, with its journal if `journal`.
    ///
    /// # Errors
    /// [`RejectionKind::UnknownWorkflow`] for an unknown id; cluster errors.
    pub async fn get(
        &mut self,
        id: &str,
        journal: bool,
    ) -> Result<WorkflowInfo, WorkflowClientError> {
        self.get_after(id, Duration::ZERO, journal).await
    }

    /// Workflow `id` once it finished, or after `wait` (at most 5 minutes) as it is then.
    ///
    /// # Errors
    /// As [`WorkflowClient::get`].
    pub async fn get_after(
        &mut self,
        id: &str,
        wait: Duration,
        journal: bool,
    ) -> Result<WorkflowInfo, WorkflowClientError> {
        let request = pb::GetRequest {
            id: id.to_owned(),
            wait_ms: u64::try_from(wait.as_millis()).unwrap_or(u64::MAX),
            journal,
        };
        on_leader!(self, request, get)
    }

    /// Sends signal `name` to workflow `id`, exactly once (in this client's session).
    ///
    /// # Errors
    /// [`RejectionKind::UnknownWorkflow`], [`RejectionKind::Finished`]; cluster errors, among
    /// them [`ClientError::SessionExpired`] when the signal's outcome is unknown.
    pub async fn signal(
        &mut self,
        id: &str,
        name: &str,
        payload: Bytes,
    ) -> Result<(), WorkflowClientError> {
        let seen = Seen::default();
        let result = self
            .cluster
            .write(|write, _, channel| {
                let request = pb::SignalRequest {
                    id: id.to_owned(),
                    name: name.to_owned(),
                    payload: payload.clone(),
                    session: write.session,
                    seq: write.seq,
                };
                let seen = seen.clone();
                async move {
                    let answer = workflows(channel).signal(request).await;
                    seen.note(&answer);
                    answer.map(|_| ())
                }
            })
            .await;
        result.map_err(|error| seen.typed(error))
    }

    /// Cancels workflow `id` and its running children.
    ///
    /// # Errors
    /// [`RejectionKind::Finished`] when it already finished; cluster errors.
    pub async fn cancel(&mut self, id: &str, reason: &str) -> Result<(), WorkflowClientError> {
        let request = pb::CancelRequest {
            id: id.to_owned(),
            reason: reason.to_owned(),
        };
        on_leader!(self, request, cancel).map(|_| ())
    }

    /// Rebinds remote `remote` (its callee was re-created): its unresolved calls fail, and
    /// the next Hello binds whichever cluster answers; how many calls failed.
    ///
    /// # Errors
    /// Cluster errors (`PERMISSION_DENIED` for a caller without the admin role).
    pub async fn rebind_remote(&mut self, remote: &str) -> Result<u64, WorkflowClientError> {
        let request = pb::RebindRemoteRequest {
            remote: remote.to_owned(),
        };
        Ok(on_leader!(self, request, rebind_remote)?.failed_calls)
    }

    /// Workflows after id `after`, of `kind` and `status` when given, at most `limit`.
    ///
    /// # Errors
    /// [`RejectionKind::Invalid`] for an unknown status name; cluster errors.
    pub async fn list(
        &mut self,
        kind: Option<&str>,
        status: Option<&str>,
        after: Option<&str>,
        limit: u32,
    ) -> Result<Vec<WorkflowInfo>, WorkflowClientError> {
        let request = pb::ListRequest {
            kind: kind.unwrap_or_default().to_owned(),
            status: status.unwrap_or_default().to_owned(),
            after: after.unwrap_or_default().to_owned(),
            limit,
        };
        Ok(on_leader!(self, request, list)?.workflows)
    }

    /// Schedules named timer `name` (idempotent by name); returns its due time and whether
    /// this call created it.
    ///
    /// # Errors
    /// [`RejectionKind::Invalid`] / [`RejectionKind::TooLarge`]; cluster errors.
    pub async fn schedule_timer(
        &mut self,
        name: &str,
        due: TimerDue,
        payload: Bytes,
    ) -> Result<(u64, bool), WorkflowClientError> {
        let due = match due {
            TimerDue::After(delay) => pb::schedule_timer_request::Due::DelayMs(
                u64::try_from(delay.as_millis()).unwrap_or(u64::MAX),
            ),
            TimerDue::AtMs(at_ms) => pb::schedule_timer_request::Due::AtMs(at_ms),
        };
        let request = pb::ScheduleTimerRequest {
            name: name.to_owned(),
            due: Some(due),
            payload,
        };
        let answer = on_leader!(self, request, schedule_timer)?;
        Ok((answer.due_ms, answer.created))
    }

    /// Named timer `name`: pending or fired (with its fence token).
    ///
    /// # Errors
    /// [`RejectionKind::Invalid`] for an unknown name; cluster errors.
    pub async fn timer(&mut self, name: &str) -> Result<TimerInfo, WorkflowClientError> {
        let request = pb::GetTimerRequest {
            name: name.to_owned(),
        };
        on_leader!(self, request, get_timer)
    }

    /// Registers (or replaces) cron schedule `name` starting `kind` workflows.
    ///
    /// # Errors
    /// [`RejectionKind::InvalidCron`], [`RejectionKind::UnknownKind`]; cluster errors.
    pub async fn register_schedule(
        &mut self,
        name: &str,
        cron: &str,
        kind: &str,
        input: Bytes,
    ) -> Result<(), WorkflowClientError> {
        let request = pb::RegisterScheduleRequest {
            name: name.to_owned(),
            cron: cron.to_owned(),
            kind: kind.to_owned(),
            input,
        };
        on_leader!(self, request, register_schedule).map(|_| ())
    }

    /// Streams named timer fires as the node at `addr` applies them, calling `each` until
    /// it returns false.
    ///
    /// # Errors
    /// The stream's error (a watcher that falls behind is cut off).
    pub async fn watch_fires(
        &mut self,
        addr: &str,
        mut each: impl FnMut(TimerFire) -> bool,
    ) -> Result<(), WorkflowClientError> {
        let channel = self.cluster.raw_channel(addr)?;
        let mut stream = workflows(channel)
            .watch_fires(pb::Empty {})
            .await
            .map_err(|status| ClientError::Refused {
                kind: keel_raft::wire_error::WriteErrorKind::Unavailable,
                message: status.message().to_owned(),
            })?
            .into_inner();
        while let Some(fire) = stream
            .message()
            .await
            .map_err(|status| ClientError::Refused {
                kind: keel_raft::wire_error::WriteErrorKind::Unavailable,
                message: status.message().to_owned(),
            })?
        {
            if !each(fire) {
                break;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::command::Rejection;
    use crate::wire::rejected;

    fn seen(statuses: &[tonic::Status]) -> Seen {
        let seen = Seen::default();
        for status in statuses {
            seen.note::<()>(&Err(status.clone()));
        }
        seen
    }

    /// A node's data loss is the answer only when no node answered definitely: a retry
    /// that gave up reports it, a later refusal stands as the refusal.
    #[test]
    fn data_loss_is_reported_only_when_the_request_gave_up() {
        let lost = tonic::Status::data_loss("reading a workflow's value: gone");
        let gave_up = ClientError::GaveUp {
            last: "data loss".into(),
        };
        assert!(matches!(
            seen(&[lost.clone(), lost.clone()]).typed(gave_up),
            WorkflowClientError::DataLoss { message } if message.contains("gone")
        ));
        let unknown = rejected(&Rejection::UnknownWorkflow("w".into()));
        let refused = ClientError::Refused {
            kind: keel_raft::wire_error::WriteErrorKind::Invalid,
            message: unknown.message().to_owned(),
        };
        assert!(matches!(
            seen(&[lost, unknown]).typed(refused),
            WorkflowClientError::Rejected {
                kind: RejectionKind::UnknownWorkflow,
                ..
            }
        ));
    }
}
