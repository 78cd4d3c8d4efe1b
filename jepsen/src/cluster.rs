//! Three real `keel node` processes on loopback, each with its own data directory, port and
//! log file; started, killed (SIGKILL, by PID) and restarted by the harness, and killed
//! when the cluster is dropped.

use std::collections::BTreeMap;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use keel_raft::client::KeelClient;
use keel_raft::pb::client::StatusResponse;

/// How long the cluster may take to form or to catch up at the end.
const SETTLE_DEADLINE: Duration = Duration::from_secs(60);

/// One node process.
#[derive(Debug)]
pub struct NodeProc {
    /// Its id.
    pub id: u64,
    /// Its gRPC address.
    pub addr: String,
    config: PathBuf,
    log: PathBuf,
    child: Option<Child>,
}

/// The cluster under test.
#[derive(Debug)]
pub struct Cluster {
    keel: PathBuf,
    /// The deliberate fault the nodes run with (sabotage builds only).
    sabotage: Option<String>,
    /// The nodes, by id.
    pub nodes: BTreeMap<u64, NodeProc>,
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for node in self.nodes.values_mut() {
            node.kill();
        }
    }
}

impl NodeProc {
    /// Whether the process runs.
    pub fn running(&self) -> bool {
        self.child.is_some()
    }

    fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            // Already exited is fine: it is gone either way.
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// The `keel` binary of the same build as this program: beside it, or one directory up
/// (tests run from `target/<profile>/deps`).
///
/// # Errors
/// When there is none: build it with `cargo build --bin keel` (same profile).
pub fn find_keel() -> anyhow::Result<PathBuf> {
    let exe = std::env::current_exe().context("locating this program")?;
    let dir = exe.parent().context("this program has no directory")?;
    for candidate in [dir.join("keel"), dir.join("../keel")] {
        if candidate.is_file() {
            return Ok(candidate);
        }
    }
    bail!(
        "no `keel` binary beside {}: build it with `cargo build --bin keel` in the same profile",
        exe.display()
    )
}

fn free_port() -> anyhow::Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

impl Cluster {
    /// Writes configs for nodes 1..=`count` under `dir` and starts them.
    ///
    /// # Errors
    /// A file or process error.
    pub fn start(
        keel: &Path,
        dir: &Path,
        count: u64,
        sabotage: Option<&str>,
    ) -> anyhow::Result<Self> {
        std::fs::create_dir_all(dir)?;
        let mut nodes = BTreeMap::new();
        for id in 1..=count {
            let addr = format!("127.0.0.1:{}", free_port()?);
            let config = dir.join(format!("node-{id}.toml"));
            let text = format!(
                "node_id = {id}\nlisten = \"{addr}\"\ndata_dir = \"node-{id}\"\nruntime_threads = 1\n"
            );
            std::fs::write(&config, text)?;
            nodes.insert(
                id,
                NodeProc {
                    id,
                    addr,
                    config,
                    log: dir.join(format!("node-{id}.log")),
                    child: None,
                },
            );
        }
        let mut cluster = Self {
            keel: keel.to_owned(),
            sabotage: sabotage.map(str::to_owned),
            nodes,
        };
        for id in 1..=count {
            cluster.restart(id)?;
        }
        Ok(cluster)
    }

    /// Starts node `id` if it is not running.
    ///
    /// # Errors
    /// A process error.
    pub fn restart(&mut self, id: u64) -> anyhow::Result<()> {
        let node = self.nodes.get_mut(&id).context("no such node")?;
        if node.child.is_some() {
            return Ok(());
        }
        let log = std::fs::File::options()
            .create(true)
            .append(true)
            .open(&node.log)?;
        let mut command = Command::new(&self.keel);
        if let Some(fault) = &self.sabotage {
            command.env("KEEL_SABOTAGE", fault);
        }
        let child = command
            .arg("node")
            .arg("--config")
            .arg(&node.config)
            .env("RUST_LOG", "info,openraft=warn")
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .with_context(|| format!("starting node {id}"))?;
        node.child = Some(child);
        Ok(())
    }

    /// SIGKILLs node `id`.
    pub fn kill(&mut self, id: u64) {
        if let Some(node) = self.nodes.get_mut(&id) {
            node.kill();
        }
    }

    /// Sends `signal` (`-STOP`, `-CONT`) to node `id`'s process, if it runs.
    pub fn signal(&self, id: u64, signal: &str) {
        let Some(child) = self.nodes.get(&id).and_then(|n| n.child.as_ref()) else {
            return;
        };
        let sent = Command::new("kill")
            .args([signal, &child.id().to_string()])
            .status();
        if !sent.is_ok_and(|s| s.success()) {
            tracing::error!(node = id, signal, "could not signal the node");
        }
    }

    /// Every node's address.
    pub fn addrs(&self) -> Vec<String> {
        self.nodes.values().map(|n| n.addr.clone()).collect()
    }

    /// A client of the whole cluster.
    ///
    /// # Errors
    /// A bad address.
    pub fn client(&self, client_id: u64) -> anyhow::Result<KeelClient> {
        Ok(KeelClient::new(&self.addrs(), client_id)?)
    }

    /// Forms the cluster once every node answers.
    ///
    /// # Errors
    /// Nodes that do not answer, or a failed init.
    pub async fn init(&self) -> anyhow::Result<()> {
        let mut client = self.client(0)?;
        let deadline = Instant::now() + SETTLE_DEADLINE;
        while !client.statuses().await.iter().all(|(_, s)| s.is_ok()) {
            if Instant::now() > deadline {
                bail!("the nodes did not start (see their logs)");
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let members = self
            .nodes
            .values()
            .map(|n| (n.id, n.addr.clone()))
            .collect();
        client.init(&members).await?;
        Ok(())
    }

    /// The leader's id, if the running nodes agree on one.
    pub async fn leader(&self) -> Option<u64> {
        let mut client = self.client(0).ok()?;
        leader_status(&mut client).await.map(|s| s.node_id)
    }

    /// Waits until every node runs and has applied everything the leader committed.
    ///
    /// # Errors
    /// When they do not within the deadline.
    pub async fn settle(&self) -> anyhow::Result<Vec<StatusResponse>> {
        let mut client = self.client(0)?;
        let deadline = Instant::now() + SETTLE_DEADLINE;
        loop {
            let statuses: Vec<StatusResponse> = client
                .statuses()
                .await
                .into_iter()
                .filter_map(|(_, s)| s.ok())
                .collect();
            let leader = statuses.iter().find(|s| s.role == "leader");
            if let Some(leader) = leader
                && statuses.len() == self.nodes.len()
                && statuses
                    .iter()
                    .all(|s| s.applied_index >= leader.committed_index)
            {
                return Ok(statuses);
            }
            if Instant::now() > deadline {
                bail!("the cluster did not settle within {SETTLE_DEADLINE:?}");
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Whether a node announced a deliberate fault in its log.
    pub fn announced_sabotage(&self) -> bool {
        self.nodes.values().any(|node| {
            std::fs::read_to_string(&node.log).is_ok_and(|log| log.contains("SABOTAGE"))
        })
    }

    /// Copies the node logs into `dir`.
    ///
    /// # Errors
    /// A file error.
    pub fn keep_logs(&self, dir: &Path) -> anyhow::Result<()> {
        for node in self.nodes.values() {
            if node.log.is_file() {
                std::fs::copy(&node.log, dir.join(format!("node-{}.log", node.id)))?;
            }
        }
        Ok(())
    }
}

/// The status of the node that says it leads.
pub async fn leader_status(client: &mut KeelClient) -> Option<StatusResponse> {
    client
        .statuses()
        .await
        .into_iter()
        .find_map(|(_, s)| s.ok().filter(|s| s.role == "leader"))
}
