//! Three real `keel node` processes, each with its own data directory, address and log
//! file; started, killed (SIGKILL, by PID) and restarted by the harness, and killed when
//! the cluster is dropped.
//!
//! Nodes reach each other over the harness's [`Network`] (link proxies on loopback, or a
//! network namespace each), so the nemesis can partition them; with `fake_clock`, each node
//! runs under libfaketime with its own offset file, so the nemesis can skew its wall clock
//! (monotonic clocks stay real).

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use keel_raft::client::KeelClient;
use keel_raft::pb::client::StatusResponse;
use keel_raft::security::credentials::Credentials;
use keel_scheduler::client::{WorkflowClient, WorkflowClientError};

use crate::network::{NetKind, Network};
use crate::security::ClusterPki;

/// The nodes' `max_clock_skew`: how early an absolute timer may fire when wall clocks
/// disagree by less. The clock nemesis's small skews stay below it.
pub const MAX_CLOCK_SKEW: Duration = Duration::from_millis(500);

/// How long the cluster may take to form or to catch up at the end.
const SETTLE_DEADLINE: Duration = Duration::from_secs(60);

/// Where Debian's libfaketime package puts the library.
const LIBFAKETIME: &[&str] = &[
    "/usr/lib/x86_64-linux-gnu/faketime/libfaketime.so.1",
    "/usr/lib/aarch64-linux-gnu/faketime/libfaketime.so.1",
    "/usr/lib/faketime/libfaketime.so.1",
];

/// How the cluster is built.
#[derive(Debug, Clone)]
pub struct ClusterOptions {
    /// Nodes, numbered from 1.
    pub count: u64,
    /// A deliberate fault for the nodes (`KEEL_SABOTAGE`; only a sabotage build has any).
    pub sabotage: Option<String>,
    /// Run each node under libfaketime, its wall-clock offset set by [`Cluster::skew_clock`].
    pub fake_clock: bool,
    /// Each node journals its log's writes and syncs (`node-N.journal`), so a power loss can
    /// be simulated after a kill.
    pub sync_journal: bool,
    /// How the links between the nodes are built.
    pub net: NetKind,
    /// Seeds the proxies' loss draws.
    pub seed: u64,
    /// Remote worker processes (`keel worker`) to run the workflows; with any, the nodes
    /// run none themselves (`run_workflows = false`).
    pub workers: u64,
    /// TLS on every port and authentication on ([`crate::security`]).
    pub tls: bool,
}

/// The libfaketime library, if installed (`apt-get install libfaketime`).
pub fn libfaketime() -> Option<PathBuf> {
    LIBFAKETIME.iter().map(PathBuf::from).find(|p| p.is_file())
}

/// One node process.
#[derive(Debug)]
pub struct NodeProc {
    /// Its id.
    pub id: u64,
    /// Its gRPC address.
    pub addr: String,
    /// Its data directory.
    pub data_dir: PathBuf,
    /// Its sync journal (used when the cluster journals).
    pub journal: PathBuf,
    /// Where it copies each range of its Raft log before purging it.
    pub purged_log: PathBuf,
    config: PathBuf,
    log: PathBuf,
    clock: PathBuf,
    child: Option<Child>,
}

/// One remote worker process.
#[derive(Debug)]
struct WorkerProc {
    log: PathBuf,
    child: Option<Child>,
}

impl NodeProc {
    /// Node `id` of a cluster in `dir`: its configuration file written, not started.
    fn write(
        dir: &Path,
        id: u64,
        options: &ClusterOptions,
        network: &Network,
        pki: Option<&ClusterPki>,
    ) -> anyhow::Result<Self> {
        let addr = network
            .listen_addr(id)
            .context("the network has no such node")?;
        let config = dir.join(format!("node-{id}.toml"));
        let journal = dir.join(format!("node-{id}.journal"));
        let mut text = node_config(id, &addr, options.count, network, pki);
        if options.workers > 0 {
            text = text.replace("[scheduler]\n", "[scheduler]\nrun_workflows = false\n");
        }
        if options.sync_journal {
            text = format!("sync_journal = \"node-{id}.journal\"\n{text}");
        }
        std::fs::write(&config, text)?;
        let clock = dir.join(format!("node-{id}.faketime"));
        std::fs::write(&clock, "+0\n")?;
        Ok(Self {
            id,
            addr,
            data_dir: dir.join(format!("node-{id}")),
            journal,
            purged_log: dir.join(format!("node-{id}.purged")),
            config,
            log: dir.join(format!("node-{id}.log")),
            clock,
            child: None,
        })
    }
}

/// The cluster under test.
#[derive(Debug)]
pub struct Cluster {
    keel: PathBuf,
    /// The deliberate fault the nodes run with (sabotage builds only).
    sabotage: Option<String>,
    libfaketime: Option<PathBuf>,
    /// The nodes, by id.
    pub nodes: BTreeMap<u64, NodeProc>,
    /// The links between the nodes.
    pub network: Network,
    /// The remote workers, by id.
    workers: BTreeMap<u64, WorkerProc>,
    /// The certificates and tokens of a TLS cluster.
    pki: Option<ClusterPki>,
    /// What the harness presents to the nodes.
    credentials: Credentials,
}

impl Cluster {
    /// SIGKILLs every node and worker and waits for each to exit (their data stays for
    /// reading).
    pub fn stop_all(&mut self) {
        for node in self.nodes.values_mut() {
            node.kill();
        }
        for worker in self.workers.values_mut() {
            if let Some(mut child) = worker.child.take() {
                let _ = child.kill();
                let _ = child.wait();
            }
        }
    }

    /// The remote workers' ids.
    pub fn worker_ids(&self) -> Vec<u64> {
        self.workers.keys().copied().collect()
    }

    /// Sends `signal` (`-STOP`, `-CONT`) to worker `id`'s process, if it runs.
    pub fn signal_worker(&self, id: u64, signal: &str) {
        if let Some(child) = self.workers.get(&id).and_then(|w| w.child.as_ref()) {
            send_signal(child, signal, &format!("worker {id}"));
        }
    }

    /// Starts the remote workers, each a `keel worker` of the built-in kinds.
    fn start_workers(&mut self) -> anyhow::Result<()> {
        let cluster = self.addrs().join(",");
        for (id, worker) in &mut self.workers {
            let log = std::fs::File::options()
                .create(true)
                .append(true)
                .open(&worker.log)?;
            let mut command = Command::new(&self.keel);
            if let Some(fault) = &self.sabotage {
                command.env("KEEL_SABOTAGE", fault);
            }
            if let Some(pki) = &self.pki {
                command.envs(pki.worker_env());
            }
            let child = command
                .args(["worker", "--id", &id.to_string(), "--cluster", &cluster])
                .env("RUST_LOG", "info")
                .stdin(Stdio::null())
                .stdout(log.try_clone()?)
                .stderr(log)
                .spawn()
                .with_context(|| format!("starting worker {id}"))?;
            worker.child = Some(child);
        }
        Ok(())
    }
}

/// Sends `signal` to `child` with `kill`, logging a failure.
fn send_signal(child: &Child, signal: &str, what: &str) {
    let sent = Command::new("kill")
        .args([signal, &child.id().to_string()])
        .status();
    if !sent.is_ok_and(|s| s.success()) {
        tracing::error!(what, signal, "could not signal the process");
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        self.stop_all();
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

/// Client sessions the nodes keep: fewer than the log workload's default five writers, so
/// sessions expire during every run and late retries of expired sessions' writes are tried
/// (see the log workload's replays).
pub const SESSIONS_MAX: u64 = 4;

/// Node `id`'s config: short timeouts, frequent snapshots (so a node cut off for seconds
/// falls behind the purged log and needs a snapshot), a copy of every purged range (so the
/// whole committed log can be checked after the run), few client sessions, the clock-skew
/// tolerance the timers checker holds absolute timers to, peers over the network.
fn node_config(
    id: u64,
    addr: &str,
    count: u64,
    network: &Network,
    pki: Option<&ClusterPki>,
) -> String {
    let mut text = format!(
        "node_id = {id}\nlisten = \"{addr}\"\ndata_dir = \"node-{id}\"\nruntime_threads = 1\n\
         sessions_max = {SESSIONS_MAX}\npurged_log = \"node-{id}.purged\"\n\
         [snapshot]\nevery_entries = 1000\nkeep_behind = 200\n\
         [scheduler]\nmax_clock_skew_ms = {}\n[peers]\n",
        MAX_CLOCK_SKEW.as_millis()
    );
    for peer in (1..=count).filter(|&peer| peer != id) {
        if let Some(peer_addr) = network.peer_addr(id, peer) {
            let _ = writeln!(text, "{peer} = \"{peer_addr}\"");
        }
    }
    match pki {
        Some(pki) => text.push_str(&pki.node_sections(id)),
        // Plaintext beyond loopback (a network namespace's address) must say so.
        None if !is_loopback(addr) => text.insert_str(0, "insecure = true\n"),
        None => {}
    }
    text
}

/// Whether `addr` (`host:port`) is a loopback address.
fn is_loopback(addr: &str) -> bool {
    addr.parse::<std::net::SocketAddr>()
        .is_ok_and(|a| a.ip().is_loopback())
}

impl Cluster {
    /// Builds the network, writes configs for nodes 1..=`options.count` under `dir`, and
    /// starts the nodes. Must be called inside a tokio runtime (proxies run on it).
    ///
    /// # Errors
    /// A file or process error; `fake_clock` without libfaketime installed.
    pub fn start(keel: &Path, dir: &Path, options: &ClusterOptions) -> anyhow::Result<Self> {
        std::fs::create_dir_all(dir)?;
        let libfaketime =
            if options.fake_clock {
                Some(libfaketime().context(
                    "clock faults need libfaketime (Debian: apt-get install libfaketime)",
                )?)
            } else {
                None
            };
        let network = Network::start(options.net, options.count, options.seed)?;
        let pki = if options.tls {
            let listen: Vec<(u64, String)> = (1..=options.count)
                .filter_map(|id| network.listen_addr(id).map(|addr| (id, addr)))
                .collect();
            Some(ClusterPki::create(
                &dir.join("certs"),
                &listen,
                options.seed,
            )?)
        } else {
            None
        };
        let mut nodes = BTreeMap::new();
        for id in 1..=options.count {
            nodes.insert(
                id,
                NodeProc::write(dir, id, options, &network, pki.as_ref())?,
            );
        }
        let workers = (1..=options.workers)
            .map(|id| {
                let log = dir.join(format!("worker-{id}.log"));
                (id, WorkerProc { log, child: None })
            })
            .collect();
        let mut cluster = Self {
            keel: keel.to_owned(),
            sabotage: options.sabotage.clone(),
            libfaketime,
            nodes,
            network,
            workers,
            credentials: pki
                .as_ref()
                .map_or_else(Credentials::none, |pki| pki.harness().clone()),
            pki,
        };
        for id in 1..=options.count {
            cluster.restart(id)?;
        }
        cluster.start_workers()?;
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
        let mut command = self.network.command(id, &self.keel);
        if let Some(fault) = &self.sabotage {
            command.env("KEEL_SABOTAGE", fault);
        }
        if let Some(library) = &self.libfaketime {
            // Wall clock only: a faked monotonic clock hangs tokio. The offset file is
            // re-read at most once a second.
            command
                .env("LD_PRELOAD", library)
                .env("FAKETIME_TIMESTAMP_FILE", &node.clock)
                .env("FAKETIME_CACHE_DURATION", "1")
                .env("FAKETIME_DONT_FAKE_MONOTONIC", "1");
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

    /// Whether node `id`'s process ended by itself (it then counts as not running).
    pub fn exited(&mut self, id: u64) -> bool {
        let Some(node) = self.nodes.get_mut(&id) else {
            return false;
        };
        let ended = node
            .child
            .as_mut()
            .is_some_and(|child| !matches!(child.try_wait(), Ok(None)));
        if ended {
            node.child = None;
        }
        ended
    }

    /// Kills node `id` and removes its data directory.
    ///
    /// # Errors
    /// A file error.
    pub fn wipe(&mut self, id: u64) -> anyhow::Result<()> {
        self.kill(id);
        let node = self.nodes.get(&id).context("no such node")?;
        if node.data_dir.exists() {
            std::fs::remove_dir_all(&node.data_dir)?;
        }
        // The journal's paths name files that are gone.
        if node.journal.exists() {
            std::fs::write(&node.journal, "")?;
        }
        Ok(())
    }

    /// Re-admits node `id` after a wipe, the documented way: `keel repair`.
    ///
    /// # Errors
    /// The command failed.
    pub async fn repair(&self, id: u64) -> anyhow::Result<()> {
        let node = self.nodes.get(&id).context("no such node")?;
        // The restarted node needs a moment to listen.
        let mut client = self.client()?;
        let deadline = Instant::now() + SETTLE_DEADLINE;
        while !client
            .statuses()
            .await
            .iter()
            .any(|(addr, s)| *addr == node.addr && s.is_ok())
        {
            if Instant::now() > deadline {
                bail!("node {id} did not start after the wipe");
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        // The repair goes through the leader: there must be one.
        while self.leader().await.is_none() {
            if Instant::now() > deadline {
                bail!("no leader to repair node {id} with");
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let output = tokio::process::Command::new(&self.keel)
            .arg("repair")
            .arg("--cluster")
            .arg(self.addrs().join(","))
            .arg("--id")
            .arg(id.to_string())
            .arg("--addr")
            .arg(&node.addr)
            .stdin(Stdio::null())
            .output()
            .await
            .context("running keel repair")?;
        if !output.status.success() {
            bail!(
                "keel repair of node {id} failed: {}",
                String::from_utf8_lossy(&output.stderr).trim()
            );
        }
        Ok(())
    }

    /// Whether the nodes run under libfaketime.
    pub fn fake_clock(&self) -> bool {
        self.libfaketime.is_some()
    }

    /// Sets node `id`'s wall-clock offset (libfaketime; takes effect within a second).
    ///
    /// # Errors
    /// The cluster runs without fake clocks, or the file could not be written.
    pub fn skew_clock(&self, id: u64, offset_ms: i64) -> anyhow::Result<()> {
        if self.libfaketime.is_none() {
            bail!("the cluster runs without fake clocks");
        }
        let node = self.nodes.get(&id).context("no such node")?;
        let sign = if offset_ms < 0 { '-' } else { '+' };
        let abs = offset_ms.unsigned_abs();
        std::fs::write(
            &node.clock,
            format!("{sign}{}.{:03}\n", abs / 1000, abs % 1000),
        )?;
        Ok(())
    }

    /// Sends `signal` (`-STOP`, `-CONT`) to node `id`'s process, if it runs.
    pub fn signal(&self, id: u64, signal: &str) {
        if let Some(child) = self.nodes.get(&id).and_then(|n| n.child.as_ref()) {
            send_signal(child, signal, &format!("node {id}"));
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
    pub fn client(&self) -> anyhow::Result<KeelClient> {
        Ok(KeelClient::with_credentials(
            &self.addrs(),
            &self.credentials,
        )?)
    }

    /// A workflow client of the whole cluster.
    ///
    /// # Errors
    /// A bad address.
    pub fn workflow_client(&self) -> Result<WorkflowClient, WorkflowClientError> {
        WorkflowClient::with_credentials(&self.addrs(), &self.credentials)
    }

    /// What the harness presents to the nodes (nothing unless the cluster runs TLS).
    pub fn credentials(&self) -> &Credentials {
        &self.credentials
    }

    /// Forms the cluster once every node answers.
    ///
    /// # Errors
    /// Nodes that do not answer, or a failed init.
    pub async fn init(&self) -> anyhow::Result<()> {
        let mut client = self.client()?;
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

    /// The id of a node that says it leads (the first found; a deposed leader that has not
    /// noticed yet may still say so).
    pub async fn leader(&self) -> Option<u64> {
        let mut client = self.client().ok()?;
        leader_status(&mut client).await.map(|s| s.node_id)
    }

    /// Waits until every node runs and has applied everything the leader committed.
    ///
    /// # Errors
    /// When they do not within the deadline.
    pub async fn settle(&self) -> anyhow::Result<Vec<StatusResponse>> {
        let mut client = self.client()?;
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

    /// Has every node build a snapshot of what it applied: each moves the live values of
    /// the log it may purge into its value files, so reads after it find them there.
    /// Every node is asked, whatever the others answer; returns each node's snapshot
    /// index, or why it built none.
    ///
    /// # Errors
    /// No client could be made.
    pub async fn snapshot_all(&self) -> anyhow::Result<Vec<Result<u64, String>>> {
        let mut client = self.client()?;
        let mut built = Vec::with_capacity(self.nodes.len());
        for node in self.nodes.values() {
            built.push(
                client
                    .build_snapshot(&node.addr)
                    .await
                    .map_err(|error| format!("node {}: {error}", node.id)),
            );
        }
        Ok(built)
    }

    /// Whether a node announced a deliberate fault in its log.
    pub fn announced_sabotage(&self) -> bool {
        self.nodes.values().any(|node| {
            std::fs::read_to_string(&node.log).is_ok_and(|log| log.contains("SABOTAGE"))
        })
    }

    /// Copies the node and worker logs into `dir`.
    ///
    /// # Errors
    /// A file error.
    pub fn keep_logs(&self, dir: &Path) -> anyhow::Result<()> {
        for node in self.nodes.values() {
            if node.log.is_file() {
                std::fs::copy(&node.log, dir.join(format!("node-{}.log", node.id)))?;
            }
        }
        for (id, worker) in &self.workers {
            if worker.log.is_file() {
                std::fs::copy(&worker.log, dir.join(format!("worker-{id}.log")))?;
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
