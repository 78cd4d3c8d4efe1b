//! Python workflow kinds in the engine's [`Registry`]: each run calls the package's runner
//! on a thread of tokio's blocking pool.

use std::sync::{Arc, Mutex};

use bytes::Bytes;
use keel_scheduler::engine::context::{Context, WorkflowError};
use keel_scheduler::engine::registry::Registry;
use pyo3::prelude::*;
use pyo3::types::PyBytes;

use crate::context::{NativeContext, Stop};

/// `registry` with each of `kinds` (`(name, version)`) registered as a suspending kind whose
/// runs call `runner(kind, context, input)`; the runner answers `(True, result bytes)` or
/// `(False, serialized error)`.
pub(crate) fn register(
    mut registry: Registry,
    kinds: Vec<(String, String)>,
    runner: &Arc<Py<PyAny>>,
) -> Registry {
    for (kind, version) in kinds {
        let runner = Arc::clone(runner);
        let name = kind.clone();
        registry = registry.register_suspending(&kind, &version, move |context, input| {
            let runner = Arc::clone(&runner);
            let kind = name.clone();
            async move {
                tokio::task::spawn_blocking(move || run(&runner, &kind, context, &input))
                    .await
                    .unwrap_or_else(|panic| {
                        Err(WorkflowError::Failed(format!(
                            "the workflow's thread panicked: {panic}"
                        )))
                    })
            }
        });
    }
    registry
}

/// One run of workflow `kind` on this thread.
fn run(
    runner: &Py<PyAny>,
    kind: &str,
    context: Context,
    input: &[u8],
) -> Result<Bytes, WorkflowError> {
    let stop: Stop = Arc::new(Mutex::new(None));
    let answer: PyResult<Result<Bytes, String>> = Python::attach(|py| {
        let native = Py::new(py, NativeContext::new(context, Arc::clone(&stop)))?;
        let answer = runner.call1(py, (kind, native, PyBytes::new(py, input)))?;
        let (ok, value) = answer.extract::<(bool, Bound<'_, PyAny>)>(py)?;
        if ok {
            Ok(Ok(Bytes::from(value.extract::<Vec<u8>>()?)))
        } else {
            Ok(Err(value.extract::<String>()?))
        }
    });
    let stopped = stop
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .take();
    if let Some(stop) = stopped {
        return Err(stop);
    }
    match answer {
        Ok(Ok(value)) => Ok(value),
        Ok(Err(error)) => Err(WorkflowError::Failed(error)),
        Err(error) => Err(WorkflowError::Journal(format!(
            "the Python runner of {kind} failed: {error}"
        ))),
    }
}
