//! Rust futures as asyncio awaitables, and the one rule that keeps interpreter exit safe:
//! a future that ends after the interpreter began shutting down delivers nothing (it
//! attaches with [`Python::try_attach`], which refuses then) instead of touching it.
//!
//! The future runs on the process's tokio runtime; its asyncio future belongs to the loop
//! the awaitable was made on. Cancelling the asyncio future aborts the Rust one; a result
//! is set only on a future that is not done yet, on the loop's own thread.

use std::future::Future;
use std::sync::Mutex;

use pyo3::prelude::*;
use tokio::task::AbortHandle;

use crate::blocking::{running_loop, runtime};
use crate::slot;

/// Aborts the Rust future behind an asyncio future that was cancelled (its done callback).
#[pyclass(module = "keel._native", frozen)]
struct AbortOnCancel {
    task: Mutex<Option<AbortHandle>>,
}

#[pymethods]
impl AbortOnCancel {
    fn __call__(&self, future: &Bound<'_, PyAny>) -> PyResult<()> {
        if future.call_method0("cancelled")?.is_truthy()? {
            let task = slot::take(&self.task);
            if let Some(task) = task {
                task.abort();
            }
        }
        Ok(())
    }
}

/// Sets `future`'s result (`ok`) or exception, unless it is done already (called on its
/// loop's thread).
#[pyfunction]
pub(crate) fn resolve(
    future: &Bound<'_, PyAny>,
    ok: bool,
    value: Bound<'_, PyAny>,
) -> PyResult<()> {
    if future.call_method0("done")?.is_truthy()? {
        return Ok(());
    }
    if ok {
        future.call_method1("set_result", (value,))?;
    } else {
        future.call_method1("set_exception", (value,))?;
    }
    Ok(())
}

/// An awaitable on the running event loop for `future`, whose value `convert` turns into
/// Python's (with the GIL, after the future ended).
///
/// # Errors
/// No running event loop on this thread; a forked process.
pub(crate) fn spawn<F, T, C>(py: Python<'_>, future: F, convert: C) -> PyResult<Bound<'_, PyAny>>
where
    F: Future<Output = T> + Send + 'static,
    T: Send + 'static,
    C: FnOnce(Python<'_>, T) -> PyResult<Py<PyAny>> + Send + 'static,
{
    let event_loop = running_loop(py)?;
    let asyncio_future = event_loop.call_method0("create_future")?;
    let target = asyncio_future.clone().unbind();
    let event_loop = event_loop.unbind();
    let task = runtime()?.spawn(async move {
        let value = future.await;
        // Off the runtime's workers: attaching may wait for the GIL.
        drop(tokio::task::spawn_blocking(move || {
            let _ = Python::try_attach(|py| {
                let (ok, value) = match convert(py, value) {
                    Ok(value) => (true, value),
                    Err(error) => (false, error.into_value(py).into_any()),
                };
                let resolve = wrap_pyfunction!(resolve, py)?;
                event_loop.call_method1(
                    py,
                    "call_soon_threadsafe",
                    (resolve, target.clone_ref(py), ok, value),
                )
            });
        }));
    });
    let on_done = AbortOnCancel {
        task: Mutex::new(Some(task.abort_handle())),
    };
    asyncio_future.call_method1("add_done_callback", (on_done,))?;
    Ok(asyncio_future)
}
