//! `keel start|status ID|list|signal|cancel`: workflows from the command line.

use std::time::Duration;

use anyhow::Context as _;
use bytes::Bytes;
use clap::Args;
use keel_scheduler::client::{WorkflowClient, WorkflowInfo};

use crate::cluster_args::{ClusterArgs, credentials, endpoints};

/// `keel start`.
#[derive(Debug, Args)]
pub(crate) struct StartArgs {
    #[command(flatten)]
    cluster: ClusterArgs,
    /// The workflow kind.
    kind: String,
    /// The input (text).
    #[arg(long, default_value = "")]
    input: String,
    /// The workflow id (default: a random one).
    #[arg(long)]
    id: Option<String>,
    /// Wait for the workflow to finish and print its result.
    #[arg(long)]
    wait: bool,
}

/// `keel list`.
#[derive(Debug, Args)]
pub(crate) struct ListArgs {
    #[command(flatten)]
    cluster: ClusterArgs,
    /// Only this kind.
    #[arg(long)]
    kind: Option<String>,
    /// Only this status: running, completed, failed or cancelled.
    #[arg(long)]
    status: Option<String>,
    /// Most workflows listed.
    #[arg(long, default_value_t = 100)]
    limit: u32,
}

/// `keel signal`.
#[derive(Debug, Args)]
pub(crate) struct SignalArgs {
    #[command(flatten)]
    cluster: ClusterArgs,
    /// The workflow id.
    id: String,
    /// The signal's name.
    name: String,
    /// Its payload (text).
    #[arg(default_value = "")]
    payload: String,
}

/// `keel cancel`.
#[derive(Debug, Args)]
pub(crate) struct CancelArgs {
    #[command(flatten)]
    cluster: ClusterArgs,
    /// The workflow id.
    id: String,
    /// Why.
    #[arg(long, default_value = "cancelled from the command line")]
    reason: String,
}

/// `keel rebind-remote`.
#[derive(Debug, Args)]
pub(crate) struct RebindArgs {
    #[command(flatten)]
    cluster: ClusterArgs,
    /// The remote's alias in the nodes' `[remotes]`.
    remote: String,
}

pub(crate) async fn rebind_remote(args: RebindArgs) -> anyhow::Result<()> {
    let failed = client(&args.cluster)?
        .rebind_remote(&args.remote)
        .await
        .with_context(|| format!("rebinding {}", args.remote))?;
    println!(
        "{} unbound: {failed} unresolved call(s) failed as callee-lost; the next Hello binds the cluster at its addresses",
        args.remote
    );
    Ok(())
}

fn client(cluster: &ClusterArgs) -> anyhow::Result<WorkflowClient> {
    Ok(WorkflowClient::with_credentials(
        &endpoints(cluster)?,
        &credentials(cluster),
    )?)
}

/// A workflow's result or error, readably.
pub(crate) fn outcome(info: &WorkflowInfo) -> String {
    match info.status.as_str() {
        "completed" => format!("result: {}", String::from_utf8_lossy(&info.result)),
        "running" => "still running".to_owned(),
        _ => format!("error: {}", info.error),
    }
}

/// One journal entry, readably.
pub(crate) fn entry_line(entry: &keel_scheduler::client::JournalEntry) -> String {
    let what = match entry.kind.as_str() {
        "step" => format!("step {:?}", entry.name),
        "sleep" => "durable sleep".to_owned(),
        "signal" => format!("wait for signal {:?}", entry.name),
        "call" => format!("call child {}", entry.name),
        "remote" => match &entry.remote {
            Some(call) => format!("remote call of {:?} in {}", call.kind, call.remote),
            None => format!("remote call {}", entry.name),
        },
        other => other.to_owned(),
    };
    if let Some(call) = &entry.remote {
        return format!("#{:<3} {what}: {}", entry.seq, remote_state(entry, call));
    }
    let state = match entry.state.as_str() {
        "done" if entry.value.is_empty() => "done".to_owned(),
        "done" => format!("done → {}", String::from_utf8_lossy(&entry.value)),
        "failed" => format!("failed: {}", entry.error),
        "pending" if entry.attempts > 0 => format!("pending ({} failed attempts)", entry.attempts),
        other => other.to_owned(),
    };
    format!("#{:<3} {what}: {state}", entry.seq)
}

/// A remote call's state, with its callee workflow, or its driver's attempts and last error.
fn remote_state(
    entry: &keel_scheduler::client::JournalEntry,
    call: &keel_scheduler::client::RemoteCall,
) -> String {
    let mut state = call.state.clone();
    match call.state.as_str() {
        "completed" => state = format!("completed → {}", String::from_utf8_lossy(&entry.value)),
        "failed" => state = format!("failed: {}", entry.error),
        "started" => state = format!("started as {} there", call.callee_workflow),
        _ => {}
    }
    if matches!(call.state.as_str(), "pending start" | "started") && call.attempts > 0 {
        let error = if call.last_error.is_empty() {
            String::new()
        } else {
            format!(", last error: {}", call.last_error)
        };
        state = format!("{state} ({} attempts{error})", call.attempts);
    }
    state
}

pub(crate) async fn start(args: StartArgs) -> anyhow::Result<()> {
    let mut client = client(&args.cluster)?;
    let id = args
        .id
        .unwrap_or_else(|| format!("{}-{:08x}", args.kind, rand::random::<u32>()));
    let created = client
        .start(&id, &args.kind, Bytes::from(args.input))
        .await?;
    println!(
        "workflow {id} {}",
        if created {
            "started"
        } else {
            "already existed"
        }
    );
    if args.wait {
        loop {
            let info = client
                .get_after(&id, Duration::from_secs(60), false)
                .await?;
            if info.status != "running" {
                println!("{}: {}", info.status, outcome(&info));
                break;
            }
        }
    }
    Ok(())
}

pub(crate) async fn show(cluster: &ClusterArgs, id: &str) -> anyhow::Result<()> {
    let info = client(cluster)?.get(id, true).await?;
    println!(
        "workflow {} ({} {}, fence {}): {}",
        info.id, info.kind, info.version, info.fence, info.status
    );
    if !info.parent.is_empty() {
        println!("  child of {}", info.parent);
    }
    for entry in &info.journal {
        println!("  {}", entry_line(entry));
    }
    if info.status != "running" {
        println!("  {}", outcome(&info));
    }
    Ok(())
}

pub(crate) async fn list(args: ListArgs) -> anyhow::Result<()> {
    let workflows = client(&args.cluster)?
        .list(
            args.kind.as_deref(),
            args.status.as_deref(),
            None,
            args.limit,
        )
        .await?;
    println!(
        "{:<32} {:<16} {:<10} {:>7}",
        "ID", "KIND", "STATUS", "ENTRIES"
    );
    for info in &workflows {
        println!(
            "{:<32} {:<16} {:<10} {:>7}",
            info.id, info.kind, info.status, info.journal_len
        );
    }
    Ok(())
}

pub(crate) async fn signal(args: SignalArgs) -> anyhow::Result<()> {
    client(&args.cluster)?
        .signal(&args.id, &args.name, Bytes::from(args.payload))
        .await
        .with_context(|| format!("signalling {}", args.id))?;
    println!("signal {:?} delivered to {}", args.name, args.id);
    Ok(())
}

pub(crate) async fn cancel(args: CancelArgs) -> anyhow::Result<()> {
    client(&args.cluster)?
        .cancel(&args.id, &args.reason)
        .await
        .with_context(|| format!("cancelling {}", args.id))?;
    println!("workflow {} cancelled", args.id);
    Ok(())
}
