//! `NativeContext`: what a Python workflow run reaches its journal through. Each method is
//! one durable call of [`Context`], in a blocking form (sync workflows) and an awaitable
//! `_async` form (async workflows); both take the call's journal position when called, so
//! calls gathered in async code are journaled in the order they were made.
//!
//! An error that ends the run (superseded, suspended at an unresolved wait, non-determinism,
//! an unreachable journal) is kept as the run's *stop*, and every later call raises it again
//! at once, so code that catches it cannot go on.

use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::UNIX_EPOCH;

use bytes::Bytes;
use keel_scheduler::engine::context::{Context, WorkflowError};
use pyo3::prelude::*;
use pyo3::types::PyBytes;

use crate::awaitable;
use crate::blocking::wait;
use crate::errors::{keel_error, workflow_error};
use crate::slot;
use crate::step::{self, Body, seconds};

/// Why a run stopped early; set once.
pub(crate) type Stop = Arc<Mutex<Option<WorkflowError>>>;

/// The journal of one run of a Python workflow.
#[pyclass(module = "keel._native", frozen)]
pub(crate) struct NativeContext {
    workflow_id: String,
    /// The run's context; taken when the run ends, so a Python object that outlives its
    /// run (kept by a traceback, say) holds nothing of the node.
    context: Mutex<Option<Context>>,
    stop: Stop,
}

/// The exception for `error`; an error that ends the run is kept as its stop first.
fn raise(py: Python<'_>, stop: &Stop, error: WorkflowError) -> PyErr {
    if let Some(exception) = workflow_error(py, &error) {
        return exception;
    }
    let mut stop = slot::lock(stop);
    let stop = stop.get_or_insert(error);
    stop_exception(py, stop)
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

fn ms_since_epoch(time: std::time::SystemTime) -> u64 {
    let since = time.duration_since(UNIX_EPOCH).unwrap_or_default();
    u64::try_from(since.as_millis()).unwrap_or(u64::MAX)
}

fn bytes_object(py: Python<'_>, value: &[u8]) -> Py<PyAny> {
    PyBytes::new(py, value).into_any().unbind()
}

impl NativeContext {
    pub(crate) fn new(context: Context, stop: Stop) -> Self {
        Self {
            workflow_id: context.workflow_id().to_owned(),
            context: Mutex::new(Some(context)),
            stop,
        }
    }

    /// Ends the run's hold on its context: later calls raise `keel.KeelError`.
    pub(crate) fn close(&self) {
        slot::take(&self.context);
    }

    /// The run's context, for a durable call; raises the run's stop if it has one.
    fn check(&self, py: Python<'_>) -> PyResult<Context> {
        let stop = slot::lock(&self.stop).clone();
        if let Some(stop) = stop {
            return Err(stop_exception(py, &stop));
        }
        let context = slot::lock(&self.context).clone();
        context.ok_or_else(|| {
            keel_error(
                py,
                "KeelError",
                "this workflow run has ended: its context cannot be used any more",
                None,
            )
        })
    }

    /// Waits for a durable call on this thread (the GIL released).
    fn blocking<T: Send>(
        &self,
        py: Python<'_>,
        call: impl Future<Output = Result<T, WorkflowError>> + Send,
    ) -> PyResult<T> {
        wait(py, call)?.map_err(|error| raise(py, &self.stop, error))
    }

    /// A durable call as an awaitable on the running event loop; `convert` turns its value
    /// into Python's.
    fn awaitable<'py, T, C>(
        &self,
        py: Python<'py>,
        call: impl Future<Output = Result<T, WorkflowError>> + Send + 'static,
        convert: C,
    ) -> PyResult<Bound<'py, PyAny>>
    where
        T: Send + 'static,
        C: FnOnce(Python<'_>, T) -> Py<PyAny> + Send + 'static,
    {
        let stop = Arc::clone(&self.stop);
        awaitable::spawn(py, call, move |py, result| match result {
            Ok(value) => Ok(convert(py, value)),
            Err(error) => Err(raise(py, &stop, error)),
        })
    }

    /// Step `name` with `body`: the outcome's bytes, or the exception to raise.
    fn step_outcome(
        stop: &Stop,
        py: Python<'_>,
        outcome: Result<Result<Bytes, WorkflowError>, PyErr>,
    ) -> PyResult<Py<PyAny>> {
        match outcome {
            Ok(Ok(value)) => Ok(bytes_object(py, &value)),
            Ok(Err(error)) => Err(raise(py, stop, error)),
            Err(fatal) => Err(fatal),
        }
    }
}

#[pymethods]
impl NativeContext {
    /// The workflow's id.
    #[getter]
    fn workflow_id(&self) -> &str {
        &self.workflow_id
    }

    /// Runs step `name`: its journaled outcome, or `body(key, attempt)` run and its outcome
    /// journaled, under `policy` = `(attempts, backoff_s, backoff_max_s, timeout_s)`. With a
    /// timeout each attempt runs on a thread of its own, abandoned (not stopped) when it
    /// runs longer.
    fn step(
        &self,
        py: Python<'_>,
        name: &str,
        body: Py<PyAny>,
        policy: (u32, f64, f64, Option<f64>),
    ) -> PyResult<Py<PyAny>> {
        let context = self.check(py)?;
        let policy = step::policy(policy);
        let body = Arc::new(body);
        let body = if policy.timeout.is_some() {
            Body::Threaded(body)
        } else {
            Body::Inline(body)
        };
        let outcome = wait(py, step::run(&context, name, policy, body))?;
        Self::step_outcome(&self.stop, py, outcome)
    }

    /// Awaitable [`NativeContext::step`]: `body` is a coroutine function when `threaded`
    /// is false, else a plain function run on a thread of its own.
    fn step_async<'py>(
        &self,
        py: Python<'py>,
        name: &str,
        body: Py<PyAny>,
        policy: (u32, f64, f64, Option<f64>),
        threaded: bool,
    ) -> PyResult<Bound<'py, PyAny>> {
        let context = self.check(py)?;
        let locals = pyo3_async_runtimes::tokio::get_current_locals(py)?;
        let body = Arc::new(body);
        let body = if threaded {
            Body::Threaded(body)
        } else {
            Body::Coroutine(body, locals.clone())
        };
        let pending = step::run(&context, name, step::policy(policy), body);
        let stop = Arc::clone(&self.stop);
        awaitable::spawn(py, pending, move |py, outcome| {
            Self::step_outcome(&stop, py, outcome)
        })
    }

    /// Sleeps durably for `duration_s` seconds.
    fn sleep(&self, py: Python<'_>, duration_s: f64) -> PyResult<()> {
        let context = self.check(py)?;
        self.blocking(py, context.sleep(seconds(duration_s)))
    }

    /// Awaitable [`NativeContext::sleep`].
    fn sleep_async<'py>(&self, py: Python<'py>, duration_s: f64) -> PyResult<Bound<'py, PyAny>> {
        let context = self.check(py)?;
        let call = context.sleep(seconds(duration_s));
        self.awaitable(py, call, |py, ()| py.None())
    }

    /// Waits durably for signal `name`: its payload, or `None` when `timeout_s` passed first.
    #[pyo3(signature = (name, timeout_s=None))]
    fn wait_signal(
        &self,
        py: Python<'_>,
        name: &str,
        timeout_s: Option<f64>,
    ) -> PyResult<Option<Py<PyAny>>> {
        let context = self.check(py)?;
        let payload = self.blocking(py, context.wait_signal(name, timeout_s.map(seconds)))?;
        Ok(payload.map(|p| bytes_object(py, &p)))
    }

    /// Awaitable [`NativeContext::wait_signal`].
    #[pyo3(signature = (name, timeout_s=None))]
    fn wait_signal_async<'py>(
        &self,
        py: Python<'py>,
        name: &str,
        timeout_s: Option<f64>,
    ) -> PyResult<Bound<'py, PyAny>> {
        let context = self.check(py)?;
        let call = context.wait_signal(name, timeout_s.map(seconds));
        self.awaitable(py, call, |py, payload: Option<Bytes>| {
            payload.map_or_else(|| py.None(), |p| bytes_object(py, &p))
        })
    }

    /// Calls a child workflow of `kind` with `input`; its result.
    fn call(&self, py: Python<'_>, kind: &str, input: Vec<u8>) -> PyResult<Py<PyAny>> {
        let context = self.check(py)?;
        let value = self.blocking(py, context.call(kind, Bytes::from(input)))?;
        Ok(bytes_object(py, &value))
    }

    /// Awaitable [`NativeContext::call`].
    fn call_async<'py>(
        &self,
        py: Python<'py>,
        kind: &str,
        input: Vec<u8>,
    ) -> PyResult<Bound<'py, PyAny>> {
        let context = self.check(py)?;
        let call = context.call(kind, Bytes::from(input));
        self.awaitable(py, call, |py, value: Bytes| bytes_object(py, &value))
    }

    /// Calls a workflow of `kind` in the remote cluster `remote` with `input`, waiting at
    /// most `deadline_s` (a day when `None`); its result.
    #[pyo3(signature = (remote, kind, input, deadline_s=None))]
    fn call_remote(
        &self,
        py: Python<'_>,
        remote: &str,
        kind: &str,
        input: Vec<u8>,
        deadline_s: Option<f64>,
    ) -> PyResult<Py<PyAny>> {
        let context = self.check(py)?;
        let call =
            context.call_remote_within(remote, kind, Bytes::from(input), deadline(deadline_s));
        let value = self.blocking(py, call)?;
        Ok(bytes_object(py, &value))
    }

    /// Awaitable [`NativeContext::call_remote`].
    #[pyo3(signature = (remote, kind, input, deadline_s=None))]
    fn call_remote_async<'py>(
        &self,
        py: Python<'py>,
        remote: &str,
        kind: &str,
        input: Vec<u8>,
        deadline_s: Option<f64>,
    ) -> PyResult<Bound<'py, PyAny>> {
        let context = self.check(py)?;
        let call =
            context.call_remote_within(remote, kind, Bytes::from(input), deadline(deadline_s));
        self.awaitable(py, call, |py, value: Bytes| bytes_object(py, &value))
    }

    /// The wall-clock time in ms since the Unix epoch, journaled.
    fn now_ms(&self, py: Python<'_>) -> PyResult<u64> {
        let context = self.check(py)?;
        Ok(ms_since_epoch(self.blocking(py, context.now())?))
    }

    /// Awaitable [`NativeContext::now_ms`].
    fn now_ms_async<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        let context = self.check(py)?;
        let call = context.now();
        self.awaitable(py, call, |py, now| {
            ms_since_epoch(now)
                .into_pyobject(py)
                .map_or_else(|_| py.None(), |n| n.into_any().unbind())
        })
    }

    /// A random 64-bit number, journaled.
    fn random_u64(&self, py: Python<'_>) -> PyResult<u64> {
        let context = self.check(py)?;
        self.blocking(py, context.random())
    }

    /// Awaitable [`NativeContext::random_u64`].
    fn random_u64_async<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        let context = self.check(py)?;
        let call = context.random();
        self.awaitable(py, call, |py, value: u64| {
            value
                .into_pyobject(py)
                .map_or_else(|_| py.None(), |n| n.into_any().unbind())
        })
    }
}

/// A remote call's deadline: `deadline_s` seconds, or the default day.
fn deadline(deadline_s: Option<f64>) -> std::time::Duration {
    deadline_s.map_or(
        keel_scheduler::engine::context::REMOTE_DEADLINE_DEFAULT,
        seconds,
    )
}
