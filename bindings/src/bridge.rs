//! Python workflow kinds in the engine's [`Registry`]. A `def` workflow is a suspending kind
//! whose runs call the package's runner on a thread of tokio's blocking pool; an `async
//! def` workflow is an ordinary kind whose runs await the runner's coroutine on the app's
//! event loop (its waits hold no thread, so it need not suspend).

use std::sync::{Arc, Mutex};

use bytes::Bytes;
use keel_scheduler::engine::context::{Context, WorkflowError};
use keel_scheduler::engine::registry::Registry;
use pyo3::prelude::*;
use pyo3::types::PyBytes;
use pyo3_async_runtimes::TaskLocals;

use crate::context::{NativeContext, Stop};
use crate::slot;

/// A workflow kind as the package declares it.
struct PythonKind {
    name: String,
    version: String,
    is_async: bool,
}

/// A registry of the kinds the package hands over (`(name, version, is_async)`), run by
/// `runner` (async ones on `event_loop`, an asyncio loop).
pub(crate) fn registry(
    kinds: Vec<(String, String, bool)>,
    runner: Py<PyAny>,
    event_loop: Option<Bound<'_, PyAny>>,
) -> PyResult<Registry> {
    let kinds = kinds
        .into_iter()
        .map(|(name, version, is_async)| PythonKind {
            name,
            version,
            is_async,
        })
        .collect();
    let locals = event_loop.map(TaskLocals::new);
    register(Registry::new(), kinds, &Arc::new(runner), locals.as_ref())
}

/// `registry` with each of `kinds` registered; their runs call `runner(kind, context,
/// input)`, which answers `(True, result bytes)` or `(False, serialized error)` — or, for an
/// async kind, a coroutine that does. Async kinds run on `event_loop`.
fn register(
    mut registry: Registry,
    kinds: Vec<PythonKind>,
    runner: &Arc<Py<PyAny>>,
    event_loop: Option<&TaskLocals>,
) -> PyResult<Registry> {
    for kind in kinds {
        let runner = Arc::clone(runner);
        let name = kind.name.clone();
        if kind.is_async {
            let locals = event_loop
                .ok_or_else(|| {
                    pyo3::exceptions::PyValueError::new_err("async kinds need an event loop")
                })?
                .clone();
            registry = registry.register(&kind.name, &kind.version, move |context, input| {
                let runner = Arc::clone(&runner);
                let locals = locals.clone();
                let kind = name.clone();
                async move {
                    let stop = StopOnDrop::new();
                    let result = run_async(&runner, &kind, &locals, context, &input, &stop.0).await;
                    stop.disarm();
                    result
                }
            });
        } else {
            registry =
                registry.register_suspending(&kind.name, &kind.version, move |context, input| {
                    let runner = Arc::clone(&runner);
                    let kind = name.clone();
                    async move {
                        let stop = StopOnDrop::new();
                        let run_stop = Arc::clone(&stop.0);
                        let result = tokio::task::spawn_blocking(move || {
                            run(&runner, &kind, context, &input, &run_stop)
                        })
                        .await
                        .unwrap_or_else(|panic| {
                            Err(WorkflowError::Failed(format!(
                                "the workflow's thread panicked: {panic}"
                            )))
                        });
                        stop.disarm();
                        result
                    }
                });
        }
    }
    Ok(registry)
}

/// One run of `def` workflow `kind` on this thread.
fn run(
    runner: &Py<PyAny>,
    kind: &str,
    context: Context,
    input: &[u8],
    stop: &Stop,
) -> Result<Bytes, WorkflowError> {
    let answer = Python::try_attach(|py| {
        let native = Py::new(py, NativeContext::new(context, Arc::clone(stop)))?;
        let answer = runner.call1(py, (kind, native.clone_ref(py), PyBytes::new(py, input)));
        native.get().close();
        answer
    });
    let Some(answer) = answer else {
        return Err(WorkflowError::Superseded);
    };
    finish(stop, kind, answer)
}

/// A run's stop that becomes `Superseded` when the engine drops the run (it lost
/// leadership, a newer fence replaced it, the node stops): the Python code, which goes on
/// on its thread or event loop, then stops at its next durable call with `keel.Cancelled`.
struct StopOnDrop(Stop);

impl StopOnDrop {
    fn new() -> Self {
        Self(Arc::new(Mutex::new(None)))
    }

    /// The run ended by itself: nothing to stop.
    fn disarm(self) {
        std::mem::forget(self);
    }
}

impl Drop for StopOnDrop {
    fn drop(&mut self) {
        slot::lock(&self.0).get_or_insert(WorkflowError::Superseded);
    }
}

/// One run of `async def` workflow `kind`, awaited on the app's event loop.
async fn run_async(
    runner: &Py<PyAny>,
    kind: &str,
    locals: &TaskLocals,
    context: Context,
    input: &[u8],
    stop: &Stop,
) -> Result<Bytes, WorkflowError> {
    let native =
        Python::try_attach(|py| Py::new(py, NativeContext::new(context, Arc::clone(stop))));
    let native = match native {
        Some(Ok(native)) => native,
        Some(Err(error)) => return finish(stop, kind, Err(error)),
        None => return Err(WorkflowError::Superseded),
    };
    let started = Python::try_attach(|py| {
        let coroutine = runner.call1(py, (kind, native.clone_ref(py), PyBytes::new(py, input)))?;
        pyo3_async_runtimes::into_future_with_locals(locals, coroutine.into_bound(py))
    });
    let Some(started) = started else {
        return Err(WorkflowError::Superseded);
    };
    let answer = match started {
        Ok(future) => future.await,
        Err(error) => Err(error),
    };
    native.get().close();
    finish(stop, kind, answer)
}

/// A run's end: its stop if it has one, else the runner's answer.
fn finish(stop: &Stop, kind: &str, answer: PyResult<Py<PyAny>>) -> Result<Bytes, WorkflowError> {
    let answer = Python::try_attach(|py| -> PyResult<Result<Bytes, String>> {
        let (ok, value) = answer?.extract::<(bool, Bound<'_, PyAny>)>(py)?;
        Ok(if ok {
            Ok(Bytes::from(value.extract::<Vec<u8>>()?))
        } else {
            Err(value.extract::<String>()?)
        })
    });
    if let Some(stop) = slot::take(stop) {
        return Err(stop);
    }
    match answer {
        Some(Ok(Ok(value))) => Ok(value),
        Some(Ok(Err(error))) => Err(WorkflowError::Failed(error)),
        Some(Err(error)) => Err(WorkflowError::Journal(format!(
            "the Python runner of {kind} failed: {error}"
        ))),
        // The interpreter is shutting down: the run ends, unrecorded.
        None => Err(WorkflowError::Superseded),
    }
}
