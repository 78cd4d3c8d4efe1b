//! Workflow kinds built into the `keel` program: the demos' agents, and small kinds that
//! tests, benchmarks and the failure harness drive through any cluster of `keel node`s.
//!
//! Inputs are UTF-8 text so the command line can give them.

use std::time::Duration;

use bytes::Bytes;

use crate::engine::context::{Context, RetryPolicy, WorkflowError};
use crate::engine::registry::Registry;

/// The version marker of the built-in kinds.
pub const VERSION: &str = "builtin-1";

/// How long each demo step works (so a leader kill lands mid-flow).
const DEMO_STEP_WORK: Duration = Duration::from_millis(600);
/// The research agent's durable sleep.
pub const DEMO_SLEEP: Duration = Duration::from_secs(3);
/// How long the research agent waits for approval.
const DEMO_APPROVAL_TIMEOUT: Duration = Duration::from_secs(600);

fn text(input: &Bytes) -> Result<&str, WorkflowError> {
    std::str::from_utf8(input).map_err(|_| WorkflowError::failed("the input is not UTF-8 text"))
}

fn number(input: &Bytes) -> Result<u64, WorkflowError> {
    let text = text(input)?;
    text.trim()
        .parse()
        .map_err(|_| WorkflowError::failed(format!("the input {text:?} is not a number")))
}

async fn work(output: String) -> Result<Bytes, std::convert::Infallible> {
    tokio::time::sleep(DEMO_STEP_WORK).await;
    Ok(Bytes::from(output))
}

/// `research-agent`: plans, searches, sleeps durably, waits for an "approve" signal, calls
/// a `summarize` child workflow, publishes.
async fn research_agent(ctx: Context, input: Bytes) -> Result<Bytes, WorkflowError> {
    let topic = text(&input)?.to_owned();
    let plan = ctx
        .step("plan", |_| work(format!("outline for {topic:?}")))
        .await?;
    let pages = ctx
        .step("search", |step| {
            work(format!(
                "3 sources on {topic:?} (fetched with key {})",
                step.idempotency_key
            ))
        })
        .await?;
    ctx.sleep(DEMO_SLEEP).await?;
    let approval = ctx
        .wait_signal("approve", Some(DEMO_APPROVAL_TIMEOUT))
        .await?;
    let Some(approver) = approval else {
        return Err(WorkflowError::failed(
            "nobody approved the research in time",
        ));
    };
    let summary = ctx.call("summarize", pages).await?;
    let report = format!(
        "{} | {} | approved by {}",
        String::from_utf8_lossy(&plan),
        String::from_utf8_lossy(&summary),
        String::from_utf8_lossy(&approver)
    );
    ctx.step("publish", |_| work(report.clone())).await
}

/// `brief-agent` (`keel demo agents`): researches its topic, has the writer agent of the
/// remote cluster `writers` draft the brief (a durable call between clusters), publishes.
async fn brief_agent(ctx: Context, input: Bytes) -> Result<Bytes, WorkflowError> {
    let topic = text(&input)?.to_owned();
    let notes = ctx
        .step("research", |_| work(format!("notes on {topic:?}")))
        .await?;
    let draft = ctx.call_remote("writers", "writer-agent", notes).await?;
    let brief = String::from_utf8_lossy(&draft).into_owned();
    ctx.step("publish", |_| work(format!("published: {brief}")))
        .await
}

/// `writer-agent` (`keel demo agents`): drafts and edits a text from its input.
async fn writer_agent(ctx: Context, input: Bytes) -> Result<Bytes, WorkflowError> {
    let notes = text(&input)?.to_owned();
    let draft = ctx
        .step("draft", |_| work(format!("a brief from {notes}")))
        .await?;
    let draft = String::from_utf8_lossy(&draft).into_owned();
    ctx.step("edit", |_| work(format!("{draft}, edited"))).await
}

/// `summarize`: one step that condenses its input.
async fn summarize(ctx: Context, input: Bytes) -> Result<Bytes, WorkflowError> {
    let source = text(&input)?.to_owned();
    ctx.step("condense", |_| {
        work(format!("summary of {} bytes of sources", source.len()))
    })
    .await
}

/// Largest step result `steps` makes on request.
const STEP_RESULT_MAX_BYTES: usize = 64 * 1024;

/// `steps`: runs the input's number of trivial steps; returns how many ran. Input `N`: step
/// `i` returns `i`; input `N:B`: each step returns `i` padded with dots to `B` bytes (at
/// most 64 KiB), as an agent's step returns a model's answer.
async fn steps(ctx: Context, input: Bytes) -> Result<Bytes, WorkflowError> {
    let (count, size) = match text(&input)?.split_once(':') {
        Some((count, size)) => (
            number(&Bytes::copy_from_slice(count.as_bytes()))?,
            usize::try_from(number(&Bytes::copy_from_slice(size.as_bytes()))?)
                .unwrap_or(usize::MAX),
        ),
        None => (number(&input)?, 0),
    };
    if size > STEP_RESULT_MAX_BYTES {
        return Err(WorkflowError::failed(format!(
            "a step result of {size} bytes is over {STEP_RESULT_MAX_BYTES}"
        )));
    }
    for i in 0..count {
        ctx.step_with(&format!("step-{i}"), RetryPolicy::once(), |_| async move {
            let mut result = i.to_string().into_bytes();
            if result.len() < size {
                result.resize(size, b'.');
            }
            Ok::<_, std::convert::Infallible>(Bytes::from(result))
        })
        .await?;
    }
    Ok(Bytes::from(count.to_string()))
}

/// `sleep`: sleeps durably for the input's number of milliseconds.
async fn sleep(ctx: Context, input: Bytes) -> Result<Bytes, WorkflowError> {
    let ms = number(&input)?;
    ctx.sleep(Duration::from_millis(ms)).await?;
    Ok(Bytes::from(format!("slept {ms} ms")))
}

/// `await-signal`: waits up to the input's number of milliseconds for signal "go"; returns
/// its payload, or "timeout".
async fn await_signal(ctx: Context, input: Bytes) -> Result<Bytes, WorkflowError> {
    let ms = number(&input)?;
    let payload = ctx
        .wait_signal("go", Some(Duration::from_millis(ms)))
        .await?;
    Ok(payload.unwrap_or_else(|| Bytes::from_static(b"timeout")))
}

/// `late-signal`: sleeps durably for the input's number of milliseconds, then waits for
/// signal "go" (which may have arrived during the sleep) and returns its payload.
async fn late_signal(ctx: Context, input: Bytes) -> Result<Bytes, WorkflowError> {
    let ms = number(&input)?;
    ctx.sleep(Duration::from_millis(ms)).await?;
    let payload = ctx.wait_signal("go", None).await?;
    Ok(payload.unwrap_or_default())
}

/// `slow-step`: a quick step, then a step whose body works for the input's number of
/// milliseconds (not durably: a crash mid-body re-runs it) and returns which process ran it.
async fn slow_step(ctx: Context, input: Bytes) -> Result<Bytes, WorkflowError> {
    let ms = number(&input)?;
    ctx.step("quick", |_| async {
        Ok::<_, std::convert::Infallible>(Bytes::from("quick"))
    })
    .await?;
    ctx.step_with("slow", RetryPolicy::once(), |step| async move {
        tokio::time::sleep(Duration::from_millis(ms)).await;
        Ok::<_, std::convert::Infallible>(Bytes::from(format!(
            "slow done by process {}, attempt {}",
            std::process::id(),
            step.attempt
        )))
    })
    .await
}

/// `call-sleep`: calls a `sleep` child with its input; returns the child's result.
async fn call_sleep(ctx: Context, input: Bytes) -> Result<Bytes, WorkflowError> {
    let result = ctx.call("sleep", input).await?;
    Ok(Bytes::from(format!(
        "child: {}",
        String::from_utf8_lossy(&result)
    )))
}

/// `echo`: returns its input (the trivial call of the remote-call benchmark).
async fn echo(_ctx: Context, input: Bytes) -> Result<Bytes, WorkflowError> {
    Ok(input)
}

/// `call-echo`: calls an `echo` child with its input: the local counterpart of a remote
/// call of `echo`.
async fn call_echo(ctx: Context, input: Bytes) -> Result<Bytes, WorkflowError> {
    ctx.call("echo", input).await
}

/// `call-remote`: calls a workflow in another cluster. Input: `<remote> <kind> <deadline ms>
/// <input…>`; returns `remote: <its result>`, or `timed out` when the deadline passed
/// first.
async fn call_remote(ctx: Context, input: Bytes) -> Result<Bytes, WorkflowError> {
    let text = text(&input)?;
    let mut words = text.splitn(4, ' ');
    let (Some(remote), Some(kind), Some(deadline)) = (words.next(), words.next(), words.next())
    else {
        return Err(WorkflowError::failed(
            "the input is not `<remote> <kind> <deadline ms> <input…>`",
        ));
    };
    let deadline = number(&Bytes::from(deadline.to_owned()))?;
    let argument = Bytes::from(words.next().unwrap_or_default().to_owned());
    match ctx
        .call_remote_within(remote, kind, argument, Duration::from_millis(deadline))
        .await
    {
        Ok(result) => Ok(Bytes::from(format!(
            "remote: {}",
            String::from_utf8_lossy(&result)
        ))),
        Err(WorkflowError::RemoteTimedOut { .. }) => Ok(Bytes::from_static(b"timed out")),
        Err(error) => Err(error),
    }
}

/// `flaky`: a step that fails its first attempts (as many as the input says) and then
/// succeeds; returns the attempt that succeeded.
async fn flaky(ctx: Context, input: Bytes) -> Result<Bytes, WorkflowError> {
    let failures = u32::try_from(number(&input)?).unwrap_or(u32::MAX);
    let policy = RetryPolicy {
        attempts: failures.saturating_add(1),
        backoff: Duration::from_millis(10),
        ..RetryPolicy::default()
    };
    ctx.step_with("flaky", policy, |step| async move {
        if step.attempt <= failures {
            Err(format!("attempt {} fails on purpose", step.attempt))
        } else {
            Ok(Bytes::from(step.attempt.to_string()))
        }
    })
    .await
}

/// Every built-in kind.
pub fn registry() -> Registry {
    Registry::new()
        .register("research-agent", VERSION, research_agent)
        .register("summarize", VERSION, summarize)
        .register("brief-agent", VERSION, brief_agent)
        .register("writer-agent", VERSION, writer_agent)
        .register("steps", VERSION, steps)
        .register("sleep", VERSION, sleep)
        .register("await-signal", VERSION, await_signal)
        .register("late-signal", VERSION, late_signal)
        .register("call-sleep", VERSION, call_sleep)
        .register("slow-step", VERSION, slow_step)
        .register("flaky", VERSION, flaky)
        .register("echo", VERSION, echo)
        .register("call-echo", VERSION, call_echo)
        .register("call-remote", VERSION, call_remote)
}
