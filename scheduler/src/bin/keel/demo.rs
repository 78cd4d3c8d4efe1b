//! `keel demo`: three `keel node` processes on loopback run a research-agent workflow; the
//! leader is killed (SIGKILL) during the workflow's durable sleep, a new leader finishes it,
//! and the journal shows every step recorded once.

use std::collections::{BTreeMap, HashMap};
use std::fs::File;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use bytes::Bytes;
use clap::Args;
use keel_raft::client::KeelClient;
use keel_scheduler::client::{WorkflowClient, WorkflowInfo};

use crate::workflows::{entry_line, outcome};

/// How long the whole demo may take before it gives up.
const DEMO_DEADLINE: Duration = Duration::from_secs(180);
/// How often the demo polls the workflow.
const POLL: Duration = Duration::from_millis(150);
/// The demo workflow's id.
const WORKFLOW_ID: &str = "research-1";

/// `keel demo`.
#[derive(Debug, Args)]
pub(crate) struct DemoArgs {
    /// Which demo: the research agent's failover (the default), or `agents`: an agent in
    /// one cluster calls an agent in another through leader kills and a cut link.
    #[arg(value_enum)]
    scenario: Option<Scenario>,
    /// Where the demo's nodes keep their data and logs (emptied first).
    #[arg(long, default_value = "keel-demo")]
    data_dir: PathBuf,
}

/// The demos besides the default one.
#[derive(Debug, Clone, Copy, clap::ValueEnum)]
enum Scenario {
    /// Two clusters: a research agent calls a writer agent in the other cluster.
    Agents,
}

/// A demo's node processes; killed when dropped.
pub(crate) struct Cluster {
    dir: PathBuf,
    pub(crate) addrs: BTreeMap<u64, String>,
    children: HashMap<u64, Child>,
    /// The cluster's name and its configuration's extra sections.
    name: String,
    extra: String,
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for child in self.children.values_mut() {
            // Already exited is fine.
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

pub(crate) fn free_port() -> anyhow::Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

impl Cluster {
    fn create(dir: &Path) -> anyhow::Result<Self> {
        Self::create_named(dir, "keel", "")
    }

    /// Three nodes of cluster `name` under `dir` (emptied first), their configurations
    /// ending with `extra` (sections such as `[remotes.…]`).
    pub(crate) fn create_named(dir: &Path, name: &str, extra: &str) -> anyhow::Result<Self> {
        if dir.exists() {
            std::fs::remove_dir_all(dir).with_context(|| format!("emptying {}", dir.display()))?;
        }
        std::fs::create_dir_all(dir)?;
        let mut addrs = BTreeMap::new();
        for id in 1..=3u64 {
            addrs.insert(id, format!("127.0.0.1:{}", free_port()?));
        }
        let mut cluster = Self {
            dir: dir.to_owned(),
            addrs,
            children: HashMap::new(),
            name: name.to_owned(),
            extra: extra.to_owned(),
        };
        for id in 1..=3 {
            cluster.write_config(id)?;
            cluster.spawn(id)?;
        }
        Ok(cluster)
    }

    fn write_config(&self, id: u64) -> anyhow::Result<()> {
        let config = format!(
            "node_id = {id}\ncluster = \"{}\"\nlisten = \"{}\"\ndata_dir = \"node-{id}\"\nruntime_threads = 1\n{}",
            self.name, self.addrs[&id], self.extra
        );
        std::fs::write(self.dir.join(format!("node-{id}.toml")), config)?;
        Ok(())
    }

    pub(crate) fn spawn(&mut self, id: u64) -> anyhow::Result<()> {
        let log = File::options()
            .create(true)
            .append(true)
            .open(self.dir.join(format!("node-{id}.log")))?;
        let child = Command::new(std::env::current_exe()?)
            .arg("node")
            .arg("--config")
            .arg(self.dir.join(format!("node-{id}.toml")))
            .env("RUST_LOG", "info,openraft=warn")
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .with_context(|| format!("starting node {id}"))?;
        self.children.insert(id, child);
        Ok(())
    }

    pub(crate) fn kill(&mut self, id: u64) -> anyhow::Result<u32> {
        let mut child = self.children.remove(&id).context("node not running")?;
        let pid = child.id();
        child.kill()?;
        child.wait()?;
        Ok(pid)
    }

    pub(crate) fn endpoints(&self) -> Vec<String> {
        self.addrs.values().cloned().collect()
    }
}

/// The leader's id as the live nodes report it.
pub(crate) async fn leader(client: &mut KeelClient) -> Option<u64> {
    client
        .statuses()
        .await
        .into_iter()
        .find_map(|(_, s)| s.ok().filter(|s| s.role == "leader").map(|s| s.node_id))
}

pub(crate) struct Progress {
    pub(crate) started: Instant,
}

impl Progress {
    pub(crate) fn say(&self, message: &str) {
        println!("[{:>5.1}s] {message}", self.started.elapsed().as_secs_f64());
    }
}

pub(crate) async fn run(args: DemoArgs) -> anyhow::Result<()> {
    if let Some(Scenario::Agents) = args.scenario {
        return crate::demo_agents::run(&args.data_dir).await;
    }
    let progress = Progress {
        started: Instant::now(),
    };
    let deadline = Instant::now() + DEMO_DEADLINE;
    let mut cluster = Cluster::create(&args.data_dir)?;
    progress.say(&format!(
        "started three keel nodes: {} (data and logs in {})",
        cluster.endpoints().join(", "),
        args.data_dir.display()
    ));
    let mut raft = KeelClient::new(&cluster.endpoints())?;
    wait_until_serving(&mut raft, deadline).await?;
    raft.init(&cluster.addrs)
        .await
        .context("forming the cluster")?;
    let first_leader = wait_for_leader(&mut raft, deadline).await?;
    progress.say(&format!("node {first_leader} is the leader"));
    let mut client = WorkflowClient::new(&cluster.endpoints())?;
    client
        .start(WORKFLOW_ID, "research-agent", Bytes::from("raft consensus"))
        .await?;
    progress.say(&format!(
        "started workflow {WORKFLOW_ID} (research-agent: plan, search, sleep {:?}, wait for approval, call summarize, publish)",
        keel_scheduler::builtin::DEMO_SLEEP
    ));
    let info = follow(&mut cluster, &mut raft, &mut client, &progress, deadline).await?;
    report(&mut client, &info, &progress).await?;
    Ok(())
}

pub(crate) async fn wait_until_serving(
    raft: &mut KeelClient,
    deadline: Instant,
) -> anyhow::Result<()> {
    while Instant::now() < deadline {
        if raft.statuses().await.iter().all(|(_, s)| s.is_ok()) {
            return Ok(());
        }
        tokio::time::sleep(POLL).await;
    }
    bail!("the nodes did not start serving (see their logs)")
}

pub(crate) async fn wait_for_leader(
    raft: &mut KeelClient,
    deadline: Instant,
) -> anyhow::Result<u64> {
    while Instant::now() < deadline {
        if let Some(id) = leader(raft).await {
            return Ok(id);
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    bail!("no leader was elected")
}

/// Follows the workflow to its end: prints journal changes, kills the leader during the
/// sleep, sends the approval when the workflow waits for it.
async fn follow(
    cluster: &mut Cluster,
    raft: &mut KeelClient,
    client: &mut WorkflowClient,
    progress: &Progress,
    deadline: Instant,
) -> anyhow::Result<WorkflowInfo> {
    let mut printed: BTreeMap<u32, String> = BTreeMap::new();
    let mut killed = None;
    let mut signalled = false;
    while Instant::now() < deadline {
        let info = client.get(WORKFLOW_ID, true).await?;
        for entry in &info.journal {
            let line = entry_line(entry);
            if printed.get(&entry.seq) != Some(&line) {
                progress.say(&format!("  journal {line}"));
                printed.insert(entry.seq, line);
            }
        }
        let pending = |kind: &str| {
            info.journal
                .iter()
                .any(|e| e.kind == kind && e.state == "pending")
        };
        if killed.is_none() && pending("sleep") {
            let victim = wait_for_leader(raft, deadline).await?;
            let pid = cluster.kill(victim)?;
            let at = Instant::now();
            progress.say(&format!(
                "SIGKILL the leader, node {victim} (pid {pid}), during the durable sleep"
            ));
            let mut survivors = KeelClient::new(
                &cluster
                    .addrs
                    .iter()
                    .filter(|(id, _)| **id != victim)
                    .map(|(_, addr)| addr.clone())
                    .collect::<Vec<_>>(),
            )?;
            let new_leader = wait_for_leader(&mut survivors, deadline).await?;
            progress.say(&format!(
                "node {new_leader} elected leader {} ms after the kill; it resumes the workflow from its journal",
                at.elapsed().as_millis()
            ));
            killed = Some(victim);
        }
        if !signalled && pending("signal") {
            client
                .signal(WORKFLOW_ID, "approve", Bytes::from("alice"))
                .await?;
            progress.say("sent signal \"approve\" (from alice)");
            signalled = true;
        }
        if info.status != "running" {
            if let Some(victim) = killed {
                cluster.spawn(victim)?;
                progress.say(&format!(
                    "restarted node {victim}; it catches up from the others"
                ));
                wait_caught_up(raft, deadline, progress).await?;
            }
            return Ok(info);
        }
        tokio::time::sleep(POLL).await;
    }
    bail!("the workflow did not finish within {DEMO_DEADLINE:?}")
}

/// Waits until every node applied the same index with the same state digest.
async fn wait_caught_up(
    raft: &mut KeelClient,
    deadline: Instant,
    progress: &Progress,
) -> anyhow::Result<()> {
    while Instant::now() < deadline {
        let statuses: Vec<_> = raft
            .statuses()
            .await
            .into_iter()
            .filter_map(|(_, s)| s.ok())
            .collect();
        let agreed = statuses.len() == 3
            && statuses.windows(2).all(|w| {
                w[0].applied_index == w[1].applied_index && w[0].state_digest == w[1].state_digest
            });
        if agreed {
            progress.say(&format!(
                "all three nodes applied index {} with equal state digests ({:016x})",
                statuses[0].applied_index.unwrap_or(0),
                statuses[0].state_digest
            ));
            return Ok(());
        }
        tokio::time::sleep(POLL).await;
    }
    bail!("the restarted node did not catch up")
}

/// Prints the result and checks every step was recorded once.
async fn report(
    client: &mut WorkflowClient,
    info: &WorkflowInfo,
    progress: &Progress,
) -> anyhow::Result<()> {
    progress.say(&format!(
        "workflow {WORKFLOW_ID} {}: {}",
        info.status,
        outcome(info)
    ));
    let names: Vec<String> = info
        .journal
        .iter()
        .map(|e| format!("{} {}", e.kind, e.name).trim().to_owned())
        .collect();
    let mut unique = names.clone();
    unique.sort();
    unique.dedup();
    if unique.len() != names.len() {
        bail!("a step was recorded twice: {names:?}");
    }
    for entry in info.journal.iter().filter(|e| e.kind == "call") {
        let child = client.get(&entry.name, true).await?;
        progress.say(&format!(
            "  child {} ({}): {} with {} journal entr{}",
            child.id,
            child.kind,
            child.status,
            child.journal.len(),
            if child.journal.len() == 1 { "y" } else { "ies" }
        ));
    }
    progress.say(&format!(
        "every entry recorded exactly once across the failover: {}",
        names.join(", ")
    ));
    if info.status != "completed" {
        bail!("the workflow did not complete");
    }
    Ok(())
}
