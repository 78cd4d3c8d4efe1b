//! `NativeWorker`: a remote worker of a cluster — the `keel.Worker` of an app run for
//! `keel node` processes — and the worker task a cluster member runs beside its node.
//! Both are `keel_scheduler::worker::Worker`: a session with the leader, heartbeated leases,
//! each leased run journaled through the leader.

use std::hash::{BuildHasher as _, RandomState};
use std::path::PathBuf;
use std::sync::Mutex;

use keel_raft::client::ClientError;
use keel_raft::security::credentials::Credentials;
use keel_scheduler::engine::registry::Registry;
use keel_scheduler::worker::Worker;
use pyo3::prelude::*;
use tokio::task::JoinHandle;

use crate::blocking::{runtime, wait};
use crate::bridge;
use crate::errors::keel_error;
use crate::slot;

/// A worker id for this process: random, non-zero, so workers of many processes (and a
/// restarted one) do not share an id.
pub(crate) fn random_worker_id() -> u64 {
    RandomState::new().hash_one(std::process::id()).max(1)
}

/// A worker running on the runtime until stopped.
pub(crate) struct WorkerTask {
    /// Taken by `stop`.
    task: Option<JoinHandle<()>>,
}

impl WorkerTask {
    /// Starts worker `id` of the cluster at `endpoints`, running the kinds of `registry`
    /// (on the runtime this is called in).
    pub(crate) fn start(
        endpoints: &[String],
        credentials: &Credentials,
        id: u64,
        registry: Registry,
    ) -> Result<Self, ClientError> {
        let worker = Worker::with_credentials(endpoints, credentials, id, registry)?;
        Ok(Self {
            task: Some(tokio::spawn(worker.run())),
        })
    }

    /// Stops the worker and its runs (the leader leases their workflows anew once its
    /// lease expires).
    pub(crate) async fn stop(mut self) {
        if let Some(task) = self.task.take() {
            task.abort();
            // Cancelled, never panicked: the worker's loop does not end by itself.
            let _ = task.await;
        }
    }
}

impl Drop for WorkerTask {
    fn drop(&mut self) {
        if let Some(task) = &self.task {
            task.abort();
        }
    }
}

/// A remote worker started from Python.
#[pyclass(module = "keel._native", frozen)]
pub(crate) struct NativeWorker {
    task: Mutex<Option<WorkerTask>>,
    id: u64,
}

#[pymethods]
impl NativeWorker {
    /// Starts a worker of the cluster at `endpoints` running workflow `kinds` (`(name,
    /// version, is_async)`) through `runner` (async kinds on `event_loop`), as worker
    /// `worker_id` (random when not given), presenting `ca` (TLS), a client certificate
    /// (`cert`, `key`) and a bearer token's file as given.
    #[staticmethod]
    #[pyo3(signature = (endpoints, kinds, runner, event_loop, worker_id=None, ca=None, cert=None, key=None, token_file=None))]
    #[expect(
        clippy::needless_pass_by_value,
        reason = "pyo3 hands over owned arguments"
    )]
    #[expect(
        clippy::too_many_arguments,
        reason = "the keyword arguments of keel.Worker, credentials among them"
    )]
    fn start(
        py: Python<'_>,
        endpoints: Vec<String>,
        kinds: Vec<(String, String, bool)>,
        runner: Py<PyAny>,
        event_loop: Option<Bound<'_, PyAny>>,
        worker_id: Option<u64>,
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
        if worker_id == Some(0) {
            return Err(keel_error(
                py,
                "InvalidRequest",
                "worker ids start at 1",
                None,
            ));
        }
        if endpoints.is_empty() {
            return Err(keel_error(
                py,
                "InvalidRequest",
                "a worker needs the address of at least one node",
                None,
            ));
        }
        let registry = bridge::registry(kinds, runner, event_loop)?;
        let id = worker_id.unwrap_or_else(random_worker_id);
        let _runtime = runtime()?.enter();
        let task = WorkerTask::start(&endpoints, &credentials, id, registry)
            .map_err(|error| keel_error(py, "InvalidRequest", error.to_string(), None))?;
        Ok(Self {
            task: Mutex::new(Some(task)),
            id,
        })
    }

    /// The worker's id.
    #[getter]
    fn worker_id(&self) -> u64 {
        self.id
    }

    /// Stops the worker and its runs; a second call does nothing.
    fn stop(&self, py: Python<'_>) -> PyResult<()> {
        let task = slot::take(&self.task);
        if let Some(task) = task {
            wait(py, task.stop())?;
        }
        Ok(())
    }
}
