//! `keel demo agents`: two clusters of three `keel node` processes each. A `brief-agent` in
//! `research` calls a `writer-agent` in `writing` (`ctx.call_remote`), through a proxy per
//! writing node; the demo kills each cluster's leader during the call and cuts the link
//! for a while; the call completes once, and the output shows both journals.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use bytes::Bytes;
use keel_raft::client::KeelClient;
use keel_scheduler::client::{WorkflowClient, WorkflowInfo};
use keel_scheduler::proxy::Proxy;

use crate::demo::{Cluster, Progress, wait_for_leader, wait_until_serving};
use crate::workflows::{entry_line, outcome};

/// How long the whole demo may take before it gives up.
const DEADLINE: Duration = Duration::from_secs(180);
/// How often the demo polls the workflows.
const POLL: Duration = Duration::from_millis(150);
/// How long the link between the clusters stays cut.
const CUT: Duration = Duration::from_secs(4);
/// The caller's workflow.
const BRIEF: &str = "brief-1";
/// Both clusters' settings as caller and callee: a short backoff cap, so the demo's cut
/// heals within a second of its end.
const REMOTE_CALLS: &str = "[remote_calls]\nbackoff_first_ms = 50\nbackoff_max_ms = 1000\n";

/// Forms `cluster` and waits for its leader.
async fn form(cluster: &Cluster, deadline: Instant) -> anyhow::Result<u64> {
    let mut raft = KeelClient::new(&cluster.endpoints())?;
    wait_until_serving(&mut raft, deadline).await?;
    raft.init(&cluster.addrs)
        .await
        .context("forming the cluster")?;
    wait_for_leader(&mut raft, deadline).await
}

/// SIGKILLs `cluster`'s leader and starts it again at once; returns its id and old pid.
async fn kill_leader(cluster: &mut Cluster, deadline: Instant) -> anyhow::Result<(u64, u32)> {
    let mut raft = KeelClient::new(&cluster.endpoints())?;
    let victim = wait_for_leader(&mut raft, deadline).await?;
    let pid = cluster.kill(victim)?;
    cluster.spawn(victim)?;
    Ok((victim, pid))
}

/// The callee-side workflows of `writing`.
async fn inbound(writing: &Cluster) -> Vec<WorkflowInfo> {
    let Ok(mut client) = WorkflowClient::new(&writing.endpoints()) else {
        return Vec::new();
    };
    let listed = client.list(None, None, None, 100).await.unwrap_or_default();
    let mut found = Vec::new();
    for info in listed.into_iter().filter(|w| w.id.starts_with('@')) {
        if let Ok(full) = client.get(&info.id, true).await {
            found.push(full);
        }
    }
    found
}

/// Prints `info`'s journal lines not printed yet, prefixed by `cluster`.
fn print_changes(
    progress: &Progress,
    cluster: &str,
    info: &WorkflowInfo,
    printed: &mut BTreeMap<(String, u32), String>,
) {
    for entry in &info.journal {
        let line = entry_line(entry);
        let key = (info.id.clone(), entry.seq);
        if printed.get(&key) != Some(&line) {
            progress.say(&format!("  {cluster:>8} {} {line}", info.id));
            printed.insert(key, line);
        }
    }
}

/// The demo's faults, each done once, in order: the caller's leader killed once the call
/// is started, the callee's once the writer drafted, then the link cut for [`CUT`].
#[derive(Default)]
struct Faults {
    research_killed: bool,
    writing_killed: bool,
    cut_at: Option<Instant>,
    restored: bool,
}

pub(crate) async fn run(data_dir: &Path) -> anyhow::Result<()> {
    let progress = Progress {
        started: Instant::now(),
    };
    let deadline = Instant::now() + DEADLINE;
    if data_dir.exists() {
        std::fs::remove_dir_all(data_dir)
            .with_context(|| format!("emptying {}", data_dir.display()))?;
    }
    let mut writing = Cluster::create_named(
        &data_dir.join("writing"),
        "writing",
        &format!("[remotes.research]\nexpose = [\"writer-agent\"]\n{REMOTE_CALLS}"),
    )?;
    form(&writing, deadline).await?;
    let mut proxies = Vec::new();
    for addr in writing.endpoints() {
        proxies.push(Proxy::start(addr).await?);
    }
    let through: Vec<String> = proxies
        .iter()
        .map(|p| format!("\"{}\"", p.addr()))
        .collect();
    let mut research = Cluster::create_named(
        &data_dir.join("research"),
        "research",
        &format!(
            "[remotes.writers]\ncluster = \"writing\"\naddresses = [{}]\n{REMOTE_CALLS}",
            through.join(", ")
        ),
    )?;
    form(&research, deadline).await?;
    progress.say(&format!(
        "two clusters of three keel nodes: research ({}) and writing ({}); research reaches writing through a proxy per node (data and logs in {})",
        research.endpoints().join(", "),
        writing.endpoints().join(", "),
        data_dir.display()
    ));
    let mut client = WorkflowClient::new(&research.endpoints())?;
    while client
        .start(BRIEF, "brief-agent", Bytes::from("durable execution"))
        .await
        .is_err()
    {
        if Instant::now() > deadline {
            bail!("the research cluster did not start the workflow");
        }
        tokio::time::sleep(POLL).await;
    }
    progress.say(&format!(
        "started {BRIEF} (brief-agent: research, call writer-agent in writing, publish)"
    ));
    let info = follow(&mut research, &mut writing, &proxies, &progress, deadline).await?;
    report(&writing, &info, &progress).await
}

/// Follows both workflows to the caller's end, doing the faults on the way.
async fn follow(
    research: &mut Cluster,
    writing: &mut Cluster,
    proxies: &[Proxy],
    progress: &Progress,
    deadline: Instant,
) -> anyhow::Result<WorkflowInfo> {
    let mut printed = BTreeMap::new();
    let mut faults = Faults::default();
    while Instant::now() < deadline {
        let mut client = WorkflowClient::new(&research.endpoints())?;
        let Ok(info) = client.get(BRIEF, true).await else {
            tokio::time::sleep(POLL).await;
            continue;
        };
        print_changes(progress, "research", &info, &mut printed);
        let writers = inbound(writing).await;
        for writer in &writers {
            print_changes(progress, "writing", writer, &mut printed);
        }
        let started = info.journal.iter().any(|e| {
            e.remote
                .as_ref()
                .is_some_and(|call| call.state == "started")
        });
        if started && !faults.research_killed {
            let (id, pid) = kill_leader(research, deadline).await?;
            progress.say(&format!("SIGKILL research's leader, node {id} (pid {pid}), while the call is out; restarted it"));
            faults.research_killed = true;
        }
        let drafted = writers
            .iter()
            .any(|w| w.journal.iter().any(|e| e.state == "done"));
        if drafted && faults.research_killed && !faults.writing_killed {
            let (id, pid) = kill_leader(writing, deadline).await?;
            progress.say(&format!(
                "SIGKILL writing's leader, node {id} (pid {pid}), mid-writer; restarted it"
            ));
            faults.writing_killed = true;
            for proxy in proxies {
                proxy.set_cut(true);
            }
            faults.cut_at = Some(Instant::now());
            progress.say(&format!("cut the link research → writing for {CUT:?}"));
        }
        if let Some(at) = faults.cut_at
            && !faults.restored
            && at.elapsed() >= CUT
        {
            for proxy in proxies {
                proxy.set_cut(false);
            }
            faults.restored = true;
            progress.say("restored the link");
        }
        if info.status != "running" {
            return Ok(info);
        }
        tokio::time::sleep(POLL).await;
    }
    bail!("the workflow did not finish within {DEADLINE:?}")
}

/// Prints the outcome and checks the call ran once, its result the caller's.
async fn report(writing: &Cluster, info: &WorkflowInfo, progress: &Progress) -> anyhow::Result<()> {
    progress.say(&format!("{BRIEF} {}: {}", info.status, outcome(info)));
    let writers = inbound(writing).await;
    progress.say("research's journal:");
    for entry in &info.journal {
        progress.say(&format!("  {}", entry_line(entry)));
    }
    for writer in &writers {
        progress.say(&format!(
            "writing's journal of {} ({}):",
            writer.id, writer.status
        ));
        for entry in &writer.journal {
            progress.say(&format!("  {}", entry_line(entry)));
        }
    }
    let [writer] = writers.as_slice() else {
        bail!(
            "the call started {} writer workflows, not one",
            writers.len()
        );
    };
    let delivered = info.journal.iter().any(|e| {
        e.remote
            .as_ref()
            .is_some_and(|call| call.state == "completed")
            && e.value == writer.result
    });
    if info.status != "completed" || !delivered {
        bail!("the brief did not complete with the writer's result");
    }
    progress.say(&format!(
        "the call ran once ({} in writing) and research resolved it once with its result",
        writer.id
    ));
    Ok(())
}
