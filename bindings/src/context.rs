//! `NativeContext`: what a Python workflow run reaches its journal through. Each method is
//! one durable call of [`Context`]; an error that ends the run (superseded, suspended at an
//! unresolved wait, non-determinism, an unreachable journal) is kept as the run's *stop*, and
//! every later call raises it again at once, so code that catches it cannot go on.

use std::future::Future;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, UNIX_EPOCH};

use bytes::Bytes;
use keel_scheduler::engine::context::{Context, RetryPolicy, StepInfo, WorkflowError};
use pyo3::prelude::*;
use pyo3::types::PyBytes;
use tokio::sync::oneshot;

use crate::blocking::wait;
use crate::errors::{keel_error, workflow_error};

/// Why a run stopped early; set once.
pub(crate) type Stop = Arc<Mutex<Option<WorkflowError>>>;

/// The journal of one run of a Python workflow.
#[pyclass(module = "keel._native", frozen)]
pub(crate) struct NativeContext {
    context: Context,
    stop: Stop,
}

impl NativeContext {
    pub(crate) fn new(context: Context, stop: Stop) -> Self {
        Self { context, stop }
    }

    fn stopped(&self) -> Option<WorkflowError> {
        self.stop
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// The exception for `error`; an error that ends the run is kept as its stop first.
    fn raise(&self, py: Python<'_>, error: WorkflowError) -> PyErr {
        if let Some(exception) = workflow_error(py, &error) {
            return exception;
        }
        let mut stop = self.stop.lock().unwrap_or_else(PoisonError::into_inner);
        let stop = stop.get_or_insert(error);
        stop_exception(py, stop)
    }

    /// Raises the run's stop if it has one.
    fn check(&self, py: Python<'_>) -> PyResult<()> {
        match self.stopped() {
            Some(stop) => Err(stop_exception(py, &stop)),
            None => Ok(()),
        }
    }

    fn durable<T: Send>(
        &self,
        py: Python<'_>,
        call: impl Future<Output = Result<T, WorkflowError>> + Send,
    ) -> PyResult<T> {
        self.check(py)?;
        wait(py, call)?.map_err(|error| self.raise(py, error))
    }
}

/// The exception a stopped run raises at each durable call.
fn stop_exception(py: Python<'_>, stop: &WorkflowError) -> PyErr {
    match stop {
        WorkflowError::Superseded => keel_error(
            py,
            "Cancelled",
            "this run was cancelled or superseded by a newer one",
            None,
        ),
        WorkflowError::NonDeterminism(message) => {
            keel_error(py, "NonDeterminismError", message.clone(), None)
        }
        other => keel_error(py, "_Suspend", other.to_string(), None),
    }
}

/// What one attempt of a step's body gave.
enum Attempt {
    Value(Bytes),
    /// A failure, journaled (serialized by the Python side).
    Failed(String),
    /// An error that must not be journaled (a result that cannot be serialized, an
    /// interpreter error): the step is abandoned and the exception raised in the workflow.
    Fatal(PyErr),
}

/// Calls `body(idempotency_key, attempt)`, which answers `(0, bytes)`, `(1, error text)` or
/// `(2, exception)`.
fn call_body(body: &Py<PyAny>, info: &StepInfo) -> Attempt {
    Python::attach(|py| {
        let answer = match body.call1(py, (info.idempotency_key.as_str(), info.attempt)) {
            Ok(answer) => answer,
            Err(error) => return Attempt::Fatal(error),
        };
        let parsed = answer
            .extract::<(u8, Bound<'_, PyAny>)>(py)
            .and_then(|(code, value)| {
                Ok(match code {
                    0 => Attempt::Value(Bytes::from(value.extract::<Vec<u8>>()?)),
                    1 => Attempt::Failed(value.extract::<String>()?),
                    _ => Attempt::Fatal(PyErr::from_value(value)),
                })
            });
        parsed.unwrap_or_else(Attempt::Fatal)
    })
}

fn seconds(value: f64) -> Duration {
    Duration::try_from_secs_f64(value.max(0.0)).unwrap_or(Duration::MAX)
}

#[pymethods]
impl NativeContext {
    /// The workflow's id.
    #[getter]
    fn workflow_id(&self) -> &str {
        self.context.workflow_id()
    }

    /// Runs step `name`: its journaled outcome, or `body` run and its outcome journaled,
    /// under `policy` = `(attempts, backoff_s, backoff_max_s, timeout_s)`. A timeout runs each
    /// attempt on a thread of its own, which is abandoned (not stopped) when the attempt runs
    /// longer.
    fn step<'py>(
        &self,
        py: Python<'py>,
        name: &str,
        body: Py<PyAny>,
        policy: (u32, f64, f64, Option<f64>),
    ) -> PyResult<Bound<'py, PyBytes>> {
        let (attempts, backoff_s, backoff_max_s, timeout_s) = policy;
        let policy = RetryPolicy {
            attempts: attempts.max(1),
            backoff: seconds(backoff_s),
            backoff_max: seconds(backoff_max_s),
            timeout: timeout_s.map(seconds),
        };
        let body = Arc::new(body);
        let (fatal_tx, fatal_rx) = oneshot::channel::<PyErr>();
        let fatal_tx = Arc::new(Mutex::new(Some(fatal_tx)));
        let threaded = policy.timeout.is_some();
        let step = self.context.step_with(name, policy, |info| {
            let body = Arc::clone(&body);
            let fatal_tx = Arc::clone(&fatal_tx);
            async move {
                let attempt = if threaded {
                    let joined = tokio::task::spawn_blocking(move || call_body(&body, &info)).await;
                    joined.unwrap_or_else(|panic| {
                        Attempt::Failed(format!("the step's thread panicked: {panic}"))
                    })
                } else {
                    call_body(&body, &info)
                };
                match attempt {
                    Attempt::Value(value) => Ok(value),
                    Attempt::Failed(error) => Err(error),
                    Attempt::Fatal(error) => {
                        if let Some(tx) = fatal_tx
                            .lock()
                            .unwrap_or_else(PoisonError::into_inner)
                            .take()
                        {
                            // The receiver outlives the step's future: the send cannot fail
                            // while this future is polled.
                            let _ = tx.send(error);
                        }
                        std::future::pending().await
                    }
                }
            }
        });
        self.check(py)?;
        let outcome = wait(py, async {
            tokio::select! {
                outcome = step => Ok(outcome),
                Ok(fatal) = fatal_rx => Err(fatal),
            }
        })?;
        match outcome {
            Ok(Ok(value)) => Ok(PyBytes::new(py, &value)),
            Ok(Err(error)) => Err(self.raise(py, error)),
            Err(fatal) => Err(fatal),
        }
    }

    /// Sleeps durably for `seconds`.
    fn sleep(&self, py: Python<'_>, duration_s: f64) -> PyResult<()> {
        self.durable(py, self.context.sleep(seconds(duration_s)))
    }

    /// Waits durably for signal `name`: its payload, or `None` when `timeout_s` passed first.
    #[pyo3(signature = (name, timeout_s=None))]
    fn wait_signal<'py>(
        &self,
        py: Python<'py>,
        name: &str,
        timeout_s: Option<f64>,
    ) -> PyResult<Option<Bound<'py, PyBytes>>> {
        let payload = self.durable(py, self.context.wait_signal(name, timeout_s.map(seconds)))?;
        Ok(payload.map(|p| PyBytes::new(py, &p)))
    }

    /// Calls a child workflow of `kind` with `input`; its result.
    fn call<'py>(
        &self,
        py: Python<'py>,
        kind: &str,
        input: Vec<u8>,
    ) -> PyResult<Bound<'py, PyBytes>> {
        let value = self.durable(py, self.context.call(kind, Bytes::from(input)))?;
        Ok(PyBytes::new(py, &value))
    }

    /// The wall-clock time in ms since the Unix epoch, journaled.
    fn now_ms(&self, py: Python<'_>) -> PyResult<u64> {
        let now = self.durable(py, self.context.now())?;
        let since = now.duration_since(UNIX_EPOCH).unwrap_or_default();
        Ok(u64::try_from(since.as_millis()).unwrap_or(u64::MAX))
    }

    /// A random 64-bit number, journaled.
    fn random_u64(&self, py: Python<'_>) -> PyResult<u64> {
        self.durable(py, self.context.random())
    }
}
