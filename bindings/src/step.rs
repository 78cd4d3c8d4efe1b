//! A step of a Python workflow: its body's attempts (run inline, on a thread of their own,
//! or as a coroutine on the workflow's event loop) under [`Context::step_with`], which
//! journals each outcome.

use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use futures::future::BoxFuture;
use keel_scheduler::engine::context::{Context, RetryPolicy, StepInfo, WorkflowError};
use pyo3::prelude::*;
use pyo3_async_runtimes::TaskLocals;
use tokio::sync::oneshot;

use crate::slot;

/// How a step's body runs.
#[derive(Clone)]
pub(crate) enum Body {
    /// A `def` body, called on the workflow's own thread.
    Inline(Arc<Py<PyAny>>),
    /// A `def` body, called on a thread of the blocking pool (a step with a timeout, or one
    /// run from async code): abandoned, not stopped, when it runs too long.
    Threaded(Arc<Py<PyAny>>),
    /// An `async def` body, awaited on the workflow's event loop.
    Coroutine(Arc<Py<PyAny>>, TaskLocals),
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

/// Reads a body's answer: `(0, bytes)`, `(1, error text)` or `(2, exception)`.
fn parse(py: Python<'_>, answer: PyResult<Py<PyAny>>) -> Attempt {
    let answer = match answer {
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
}

fn call(body: &Py<PyAny>, info: &StepInfo) -> Attempt {
    Python::try_attach(|py| {
        let answer = body.call1(py, (info.idempotency_key.as_str(), info.attempt));
        parse(py, answer)
    })
    .unwrap_or_else(|| Attempt::Fatal(shutting_down()))
}

/// The error of an attempt made while the interpreter shuts down (nobody sees it: the
/// attempt is not journaled, and its run ends).
fn shutting_down() -> PyErr {
    pyo3::exceptions::PyRuntimeError::new_err("the interpreter is shutting down")
}

impl Body {
    fn attempt(&self, info: StepInfo) -> BoxFuture<'static, Attempt> {
        let body = self.clone();
        Box::pin(async move {
            match body {
                Self::Inline(function) => call(&function, &info),
                Self::Threaded(function) => {
                    // A thread of its own, not the blocking pool's: a sync workflow already
                    // holds one of those while it waits here, and an abandoned attempt
                    // keeps its thread until the body returns.
                    let (sender, receiver) = tokio::sync::oneshot::channel();
                    let spawned = std::thread::Builder::new()
                        .name("keel-step".to_owned())
                        .spawn(move || {
                            // The receiver is gone when the attempt was abandoned.
                            let _ = sender.send(call(&function, &info));
                        });
                    match spawned {
                        Ok(_) => receiver.await.unwrap_or_else(|_| {
                            Attempt::Failed("the step's thread ended without an answer".into())
                        }),
                        Err(error) => {
                            Attempt::Failed(format!("cannot start the step's thread: {error}"))
                        }
                    }
                }
                Self::Coroutine(function, locals) => {
                    let awaited = Python::attach(|py| {
                        let coroutine =
                            function.call1(py, (info.idempotency_key.as_str(), info.attempt))?;
                        pyo3_async_runtimes::into_future_with_locals(
                            &locals,
                            coroutine.into_bound(py),
                        )
                    });
                    match awaited {
                        Ok(future) => {
                            let answer = future.await;
                            Python::attach(|py| parse(py, answer))
                        }
                        Err(error) => Attempt::Fatal(error),
                    }
                }
            }
        })
    }
}

/// `(attempts, backoff_s, backoff_max_s, timeout_s)` from Python as a [`RetryPolicy`].
pub(crate) fn policy(policy: (u32, f64, f64, Option<f64>)) -> RetryPolicy {
    let (attempts, backoff_s, backoff_max_s, timeout_s) = policy;
    RetryPolicy {
        attempts: attempts.max(1),
        backoff: seconds(backoff_s),
        backoff_max: seconds(backoff_max_s),
        timeout: timeout_s.map(seconds),
    }
}

/// A non-negative number of seconds as a [`Duration`] (saturating).
pub(crate) fn seconds(value: f64) -> Duration {
    Duration::try_from_secs_f64(value.max(0.0)).unwrap_or(Duration::MAX)
}

/// Step `name` of `context`, its journal position taken now: its outcome (`Ok`), or the
/// exception of an attempt that must not be journaled (`Err`), which abandons the step.
pub(crate) fn run(
    context: &Context,
    name: &str,
    policy: RetryPolicy,
    body: Body,
) -> impl Future<Output = Result<Result<Bytes, WorkflowError>, PyErr>> + Send + use<> {
    let (fatal_tx, fatal_rx) = oneshot::channel::<PyErr>();
    let fatal_tx = Arc::new(Mutex::new(Some(fatal_tx)));
    let step = context.step_with(name, policy, move |info| {
        let attempt = body.attempt(info);
        let fatal_tx = Arc::clone(&fatal_tx);
        async move {
            match attempt.await {
                Attempt::Value(value) => Ok(value),
                Attempt::Failed(error) => Err(error),
                Attempt::Fatal(error) => {
                    let sender = slot::lock(&fatal_tx).take();
                    if let Some(sender) = sender {
                        // The receiver is dropped only with the step's future, which is
                        // polling this one: the send cannot fail.
                        let _ = sender.send(error);
                    }
                    std::future::pending().await
                }
            }
        }
    });
    async move {
        tokio::select! {
            outcome = step => Ok(outcome),
            Ok(fatal) = fatal_rx => Err(fatal),
        }
    }
}
