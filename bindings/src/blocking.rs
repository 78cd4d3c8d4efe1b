//! Waiting for Rust futures from Python threads: on the one tokio runtime of the process,
//! with the GIL released, interruptible by Ctrl-C on the main thread, and never on a thread
//! whose asyncio event loop is running.

use std::cell::Cell;
use std::future::Future;
use std::sync::{LazyLock, Once, OnceLock};
use std::time::Duration;

use pyo3::prelude::*;
use pyo3::sync::PyOnceLock;

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
///
/// # Errors
/// `keel.KeelError` in a process forked from one that started the runtime: the child has
/// none of its threads.
pub(crate) fn runtime() -> PyResult<&'static tokio::runtime::Runtime> {
    static STARTED_IN: OnceLock<u32> = OnceLock::new();
    static SHARED: Once = Once::new();
    let started_in = *STARTED_IN.get_or_init(std::process::id);
    if started_in != std::process::id() {
        return Err(Python::attach(|py| {
            keel_error(
                py,
                "KeelError",
                "this process was forked from one that had started Keel; Keel cannot run in \
                 it (its threads stayed in the parent): start Keel after forking, or spawn",
                None,
            )
        }));
    }
    SHARED.call_once(|| {
        // Fails only when the runtime was set already, which this `Once` rules out.
        let _ = pyo3_async_runtimes::tokio::init_with_runtime(&RUNTIME);
    });
    Ok(&RUNTIME)
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
    let handle = runtime()?.handle().clone();
    py.detach(|| {
        block_on(&handle, async {
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

thread_local! {
    /// Whether this thread is inside [`block_on`] already.
    static BLOCKED: Cell<bool> = const { Cell::new(false) };
}

/// Clears [`BLOCKED`] when the wait ends, also by a panic.
struct Unblock;

impl Drop for Unblock {
    fn drop(&mut self) {
        BLOCKED.set(false);
    }
}

/// Runs `future` on `handle`'s runtime, blocking this thread. A call made while this thread
/// already waits (a client call from a step's body, which runs inside its workflow's wait)
/// waits on a thread of its own: tokio refuses a `block_on` inside another.
fn block_on<F>(handle: &tokio::runtime::Handle, future: F) -> F::Output
where
    F: Future + Send,
    F::Output: Send,
{
    if BLOCKED.get() {
        return std::thread::scope(|scope| {
            scope
                .spawn(|| block_on(handle, future))
                .join()
                .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
        });
    }
    BLOCKED.set(true);
    let _unblock = Unblock;
    handle.block_on(future)
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

/// The Python functions every blocking call uses, looked up once.
struct Probes {
    get_ident: Py<PyAny>,
    main_ident: u64,
    get_running_loop: Py<PyAny>,
}

fn probes(py: Python<'_>) -> PyResult<&Probes> {
    static PROBES: PyOnceLock<Probes> = PyOnceLock::new();
    PROBES.get_or_try_init(py, || {
        let threading = py.import("threading")?;
        Ok(Probes {
            get_ident: threading.getattr("get_ident")?.unbind(),
            main_ident: threading
                .call_method0("main_thread")?
                .getattr("ident")?
                .extract()?,
            get_running_loop: py.import("asyncio")?.getattr("_get_running_loop")?.unbind(),
        })
    })
}

fn is_main_thread(py: Python<'_>) -> PyResult<bool> {
    let probes = probes(py)?;
    let current: u64 = probes.get_ident.call0(py)?.extract(py)?;
    Ok(current == probes.main_ident)
}

/// The event loop running on this thread.
///
/// # Errors
/// `keel.KeelError` when none runs here.
pub(crate) fn running_loop(py: Python<'_>) -> PyResult<Bound<'_, PyAny>> {
    let running = probes(py)?.get_running_loop.bind(py).call0()?;
    if running.is_none() {
        return Err(keel_error(
            py,
            "KeelError",
            "an awaitable Keel call needs a running event loop on this thread",
            None,
        ));
    }
    Ok(running)
}

fn refuse_on_event_loop(py: Python<'_>) -> PyResult<()> {
    let running = probes(py)?.get_running_loop.call0(py)?;
    if running.is_none(py) {
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
