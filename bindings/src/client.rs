//! `NativeClient`: the workflow client an `App` (or a remote client) uses, over gRPC.
//! Every method has a blocking form and an awaitable `_async` form.

use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use bytes::Bytes;
use keel_raft::client::KeelClient;
use keel_raft::security::credentials::Credentials;
use keel_scheduler::client::{WorkflowClient, WorkflowClientError, WorkflowInfo};
use keel_scheduler::wire::RejectionKind;
use pyo3::IntoPyObjectExt as _;
use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyDict};

use crate::awaitable;
use crate::blocking::{runtime, wait};
use crate::errors::{client_error, keel_error};

/// The longest single wait the service grants a `get`; longer waits loop.
const GET_WAIT_MAX: Duration = Duration::from_secs(300);
/// Exactly-once sessions signals are spread over, so concurrent signals do not queue
/// behind one another (a session's writes go one at a time).
const SIGNAL_SESSIONS: usize = 8;

/// A client of one cluster.
#[pyclass(module = "keel._native", frozen)]
pub(crate) struct NativeClient {
    client: WorkflowClient,
    /// Asks the nodes for their status.
    admin: tokio::sync::Mutex<KeelClient>,
    /// Clients that send signals, each in its own exactly-once session; used in turn.
    signallers: Vec<tokio::sync::Mutex<WorkflowClient>>,
    next_signaller: AtomicUsize,
}

/// A workflow's state as a dict of Python values.
fn info_dict<'py>(py: Python<'py>, info: &WorkflowInfo) -> PyResult<Bound<'py, PyDict>> {
    let dict = PyDict::new(py);
    dict.set_item("id", &info.id)?;
    dict.set_item("kind", &info.kind)?;
    dict.set_item("version", &info.version)?;
    dict.set_item("status", &info.status)?;
    dict.set_item("result", PyBytes::new(py, &info.result))?;
    dict.set_item("error", &info.error)?;
    dict.set_item("created_ms", info.created_ms)?;
    dict.set_item("finished_ms", info.finished_ms)?;
    dict.set_item("parent", &info.parent)?;
    dict.set_item("journal_len", info.journal_len)?;
    let journal = info
        .journal
        .iter()
        .map(|entry| {
            let item = PyDict::new(py);
            item.set_item("seq", entry.seq)?;
            item.set_item("kind", &entry.kind)?;
            item.set_item("name", &entry.name)?;
            item.set_item("state", &entry.state)?;
            item.set_item("value", PyBytes::new(py, &entry.value))?;
            item.set_item("error", &entry.error)?;
            item.set_item("attempts", entry.attempts)?;
            Ok(item)
        })
        .collect::<PyResult<Vec<_>>>()?;
    dict.set_item("journal", journal)?;
    Ok(dict)
}

/// Whether `error` is the refusal of a workflow that already finished.
fn is_finished(error: &WorkflowClientError) -> bool {
    matches!(
        error,
        WorkflowClientError::Rejected {
            kind: RejectionKind::Finished,
            ..
        }
    )
}

/// Workflow `id` once finished, or as it is after `wait`.
async fn get_within(
    mut client: WorkflowClient,
    id: String,
    wait: Duration,
    journal: bool,
) -> Result<WorkflowInfo, WorkflowClientError> {
    // No deadline: `wait` is too long to count (an endless wait).
    let deadline = tokio::time::Instant::now().checked_add(wait);
    loop {
        let left = deadline.map_or(Duration::MAX, |d| {
            d.saturating_duration_since(tokio::time::Instant::now())
        });
        let info = client
            .get_after(&id, left.min(GET_WAIT_MAX), journal)
            .await?;
        if info.status != "running" || left <= GET_WAIT_MAX {
            return Ok(info);
        }
    }
}

fn seconds(value: f64) -> Duration {
    Duration::try_from_secs_f64(value.max(0.0)).unwrap_or(Duration::MAX)
}

/// Converts a client call's answer to Python.
fn answer<T>(py: Python<'_>, result: Result<T, WorkflowClientError>) -> PyResult<T> {
    result.map_err(|error| client_error(py, &error))
}

#[pymethods]
impl NativeClient {
    /// A client of the cluster at `endpoints` (`host:port`), presenting `ca` (TLS), a client
    /// certificate (`cert`, `key`) and a bearer token's file as given.
    #[new]
    #[pyo3(signature = (endpoints, ca=None, cert=None, key=None, token_file=None))]
    #[expect(
        clippy::needless_pass_by_value,
        reason = "pyo3 hands over owned arguments"
    )]
    fn new(
        py: Python<'_>,
        endpoints: Vec<String>,
        ca: Option<PathBuf>,
        cert: Option<PathBuf>,
        key: Option<PathBuf>,
        token_file: Option<PathBuf>,
    ) -> PyResult<Self> {
        let credentials = Credentials {
            ca,
            cert,
            key,
            token_file,
        };
        let _runtime = runtime()?.enter();
        let client = answer(
            py,
            WorkflowClient::with_credentials(&endpoints, &credentials),
        )?;
        let admin = KeelClient::with_credentials(&endpoints, &credentials)
            .map_err(|error| keel_error(py, "InvalidRequest", error.to_string(), None))?;
        Ok(Self {
            admin: tokio::sync::Mutex::new(admin),
            signallers: (0..SIGNAL_SESSIONS)
                .map(|_| tokio::sync::Mutex::new(client.clone()))
                .collect(),
            next_signaller: AtomicUsize::new(0),
            client,
        })
    }

    /// Starts workflow `id` of `kind` with `input`; whether this call created it.
    fn start(&self, py: Python<'_>, id: String, kind: String, input: Vec<u8>) -> PyResult<bool> {
        let mut client = self.client.clone();
        let created = wait(py, async move {
            client.start(&id, &kind, Bytes::from(input)).await
        })?;
        answer(py, created)
    }

    /// Awaitable [`NativeClient::start`].
    fn start_async<'py>(
        &self,
        py: Python<'py>,
        id: String,
        kind: String,
        input: Vec<u8>,
    ) -> PyResult<Bound<'py, PyAny>> {
        let mut client = self.client.clone();
        let created = async move { client.start(&id, &kind, Bytes::from(input)).await };
        awaitable::spawn(py, created, |py, created| {
            answer(py, created)?.into_py_any(py)
        })
    }

    /// Workflow `id` once it finished, or as it is after `wait_s` seconds; with its journal
    /// entries when `journal`.
    #[pyo3(signature = (id, wait_s=0.0, journal=false))]
    fn get<'py>(
        &self,
        py: Python<'py>,
        id: String,
        wait_s: f64,
        journal: bool,
    ) -> PyResult<Bound<'py, PyDict>> {
        let info = wait(
            py,
            get_within(self.client.clone(), id, seconds(wait_s), journal),
        )?;
        info_dict(py, &answer(py, info)?)
    }

    /// Awaitable [`NativeClient::get`].
    #[pyo3(signature = (id, wait_s=0.0))]
    fn get_async<'py>(
        &self,
        py: Python<'py>,
        id: String,
        wait_s: f64,
    ) -> PyResult<Bound<'py, PyAny>> {
        let info = get_within(self.client.clone(), id, seconds(wait_s), false);
        awaitable::spawn(py, info, |py, info| {
            Ok(info_dict(py, &answer(py, info)?)?.into_any().unbind())
        })
    }

    /// Sends signal `name` with `payload` to workflow `id`, exactly once; false when the
    /// workflow had finished (the signal is not delivered).
    fn signal(&self, py: Python<'_>, id: &str, name: &str, payload: Vec<u8>) -> PyResult<bool> {
        let turn = self.next_signaller.fetch_add(1, Ordering::Relaxed) % SIGNAL_SESSIONS;
        let sent = wait(py, async {
            let mut client = self.signallers[turn].lock().await;
            client.signal(id, name, Bytes::from(payload)).await
        })?;
        match sent {
            Ok(()) => Ok(true),
            Err(error) if is_finished(&error) => Ok(false),
            Err(error) => Err(client_error(py, &error)),
        }
    }

    /// Cancels workflow `id` and its running children; false when it had finished.
    fn cancel(&self, py: Python<'_>, id: String, reason: String) -> PyResult<bool> {
        let mut client = self.client.clone();
        let cancelled = wait(py, async move { client.cancel(&id, &reason).await })?;
        match cancelled {
            Ok(()) => Ok(true),
            Err(error) if is_finished(&error) => Ok(false),
            Err(error) => Err(client_error(py, &error)),
        }
    }

    /// Workflows of `kind` and `status` (when given) after id `after`, at most `limit`.
    #[pyo3(signature = (kind=None, status=None, after=None, limit=1000))]
    fn list<'py>(
        &self,
        py: Python<'py>,
        kind: Option<String>,
        status: Option<String>,
        after: Option<String>,
        limit: u32,
    ) -> PyResult<Vec<Bound<'py, PyDict>>> {
        let mut client = self.client.clone();
        let listed = wait(py, async move {
            client
                .list(kind.as_deref(), status.as_deref(), after.as_deref(), limit)
                .await
        })?;
        answer(py, listed)?
            .iter()
            .map(|info| info_dict(py, info))
            .collect()
    }

    /// Each node's status as `(address, dict)`: `node_id`, `role` (`leader`, `follower`,
    /// `candidate`, `learner`), `leader_id` (or None) and `term`; or `(address, None)` for
    /// a node that did not answer.
    fn members<'py>(&self, py: Python<'py>) -> PyResult<Vec<(String, Option<Bound<'py, PyDict>>)>> {
        let statuses = wait(py, async { self.admin.lock().await.statuses().await })?;
        statuses
            .into_iter()
            .map(|(addr, status)| {
                let Ok(status) = status else {
                    return Ok((addr, None));
                };
                let dict = PyDict::new(py);
                dict.set_item("node_id", status.node_id)?;
                dict.set_item("role", status.role)?;
                dict.set_item("leader_id", status.leader_id)?;
                dict.set_item("term", status.term)?;
                Ok((addr, Some(dict)))
            })
            .collect()
    }
}
