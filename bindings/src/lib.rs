//! keel-py: the native module `keel._native` behind Keel's Python package.
//!
//! Rust stays the one implementation of replay, journaling and timers: a Python workflow is
//! registered into the same [`Registry`](keel_scheduler::engine::registry::Registry) that
//! [`keel_scheduler::Node::start`] runs, as a *suspending* kind. The package's Python half
//! (`bindings/python/keel`) holds what is Python's alone: decorators, kind names, values'
//! codecs, and the exception classes.
//!
//! ```text
//!  Python: App ── NativeNode.launch(kinds, runner) ──► keel_scheduler::Node (embedded)
//!                  NativeClient ── gRPC on loopback ──► the node's workflow service
//!  engine run ─► bridge (a blocking-pool thread) ─► runner(kind, NativeContext, input)
//!  workflow code ─► NativeContext.step/sleep/wait_signal/call ─► Context (journal, fences)
//! ```
//!
//! - **Threads.** A sync workflow runs on a thread of tokio's blocking pool, holding the GIL
//!   only while Python runs; every durable call releases it while Rust waits. A wait that
//!   is not resolved yet (a sleep, a signal, a child) does not hold the thread: the context
//!   raises the internal `keel._errors._Suspend` (a `BaseException`), the Python code
//!   unwinds, the run ends with `WorkflowError::Suspended`, and the engine replays it from
//!   its journal once the entry resolved. A child never waits for its parent's thread.
//! - **Blocking calls** made from Python release the GIL, are interrupted by Ctrl-C on the
//!   main thread (`KeyboardInterrupt`), and refuse to run on a thread whose event loop is
//!   running (they would block it).
//! - **`unsafe`.** None here: the crate forbids `unsafe_code`, and the code that `pyo3`'s
//!   macros generate passes that (it does not need to allow `unsafe` in this crate).

#![forbid(unsafe_code)]

mod awaitable;
mod blocking;
mod bridge;
mod client;
mod context;
mod errors;
mod link;
mod node;
mod slot;
mod step;
mod worker;

use pyo3::prelude::*;

/// The native module: the node, the client, the context a workflow run sees, and the
/// profile it was built in (`BUILD_PROFILE`, so benchmarks can refuse a debug build).
#[pymodule]
fn _native(module: &Bound<'_, PyModule>) -> PyResult<()> {
    module.add_class::<node::NativeNode>()?;
    module.add_class::<client::NativeClient>()?;
    module.add_class::<context::NativeContext>()?;
    module.add_class::<worker::NativeWorker>()?;
    module.add_class::<link::NativeLink>()?;
    module.add_function(wrap_pyfunction!(node::skip_time, module)?)?;
    module.add_function(wrap_pyfunction!(node::reset_skipped_time, module)?)?;
    module.add_function(wrap_pyfunction!(node::skipped_time, module)?)?;
    module.add(
        "BUILD_PROFILE",
        if cfg!(debug_assertions) {
            "debug"
        } else {
            "release"
        },
    )?;
    Ok(())
}
