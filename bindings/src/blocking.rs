//! Waiting for Rust futures from Python threads: on the one tokio runtime of the process,
//! with the GIL released, interruptible by Ctrl-C on the main thread, and never on a thread
//! whose asyncio event loop is running.

use std::future::Future;
use std::sync::{LazyLock, Once};
use std::time::Duration;

use pyo3::prelude::*;

use crate::errors::keel_error;

/// How often a blocked call on the main thread looks for a pending signal (Ctrl-C).
const SIGNAL_POLL: Duration = Duration::from_millis(50);

/// How long an idle thread of the blocking pool (where sync workflows and steps run) is
/// kept: a burst of runs grows the pool, and it shrinks again soon after.
const BLOCKING_KEEP_ALIVE: Duration = Duration::from_secs(2);

static RUNTIME: LazyLock<tokio::runtime::Runtime> = LazyLock::new(|| {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("keel")
        .thread_keep_alive(BLOCKING_KEEP_ALIVE)
        .build()
        .expect("the process can start the threads of Keel's runtime")
});

/// The process's tokio runtime, shared with the awaitable forms of the API.
pub(crate) fn runtime() -> &'static tokio::runtime::Runtime {
    static SHARED: Once = Once::new();
    SHARED.call_once(|| {
        // Fails only when the runtime was set already, which this `Once` rules out.
        let _ = pyo3_async_runtimes::tokio::init_with_runtime(&RUNTIME);
    });
    &RUNTIME
}

/// Runs `future` to its end on the runtime, the GIL released meanwhile.
///
/// # Errors
/// `keel.KeelError` on a thread whose event loop is running (the call would block it);
/// `KeyboardInterrupt` (or whatever a signal handler raises) when a signal arrives while the
/// main thread waits.
pub(crate) fn wait<F, T>(py: Python<'_>, future: F) -> PyResult<T>
where
    F: Future<Output = T> + Send,
    T: Send,
{
    refuse_on_event_loop(py)?;
    let on_main_thread = is_main_thread(py)?;
    let handle = runtime().handle().clone();
    py.detach(|| {
        handle.block_on(async {
            if !on_main_thread {
                return Ok(future.await);
            }
            tokio::select! {
                value = future => Ok(value),
                error = interrupted() => Err(error),
            }
        })
    })
}

/// Resolves with the exception of the first signal handler that raises.
async fn interrupted() -> PyErr {
    loop {
        tokio::time::sleep(SIGNAL_POLL).await;
        #[expect(
            clippy::redundant_closure_for_method_calls,
            reason = "the method's lifetime is not general enough for `attach`"
        )]
        let checked = Python::attach(|py| py.check_signals());
        if let Err(error) = checked {
            return error;
        }
    }
}

fn is_main_thread(py: Python<'_>) -> PyResult<bool> {
    let threading = py.import("threading")?;
    let current = threading.call_method0("current_thread")?;
    let main = threading.call_method0("main_thread")?;
    Ok(current.is(&main))
}

fn refuse_on_event_loop(py: Python<'_>) -> PyResult<()> {
    let running = py.import("asyncio")?.call_method0("_get_running_loop")?;
    if running.is_none() {
        Ok(())
    } else {
        Err(keel_error(
            py,
            "KeelError",
            "a blocking Keel call on a thread that runs an asyncio event loop would stop the \
             loop: use the awaitable form (the `_async` method, or `await` in an async workflow)",
            None,
        ))
    }
}
