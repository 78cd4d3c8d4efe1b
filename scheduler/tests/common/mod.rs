//! Real `keel node` processes on loopback, killed by PID, in temporary directories.

#![allow(
    dead_code,
    reason = "each test binary uses a different part of the harness"
)]

use std::collections::BTreeMap;
use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use bytes::Bytes;
use keel_raft::client::KeelClient;
use keel_raft::pb::client::StatusResponse;
use tempfile::TempDir;

/// How long a poll for a cluster condition may take.
pub(crate) const POLL_DEADLINE: Duration = Duration::from_secs(30);

/// One `keel node` process and its files.
pub(crate) struct NodeProc {
    pub(crate) id: u64,
    pub(crate) addr: String,
    pub(crate) config: PathBuf,
    pub(crate) data_dir: PathBuf,
    /// The `keel` binary and extra environment it runs with.
    keel: PathBuf,
    env: Vec<(String, String)>,
    child: Option<Child>,
}

impl NodeProc {
    /// Starts (or restarts) the process.
    pub(crate) fn start(&mut self) {
        assert!(self.child.is_none(), "node {} is already running", self.id);
        let log = std::fs::File::create(self.data_dir.with_extension("log")).expect("log file");
        let child = Command::new(&self.keel)
            .args(["node", "--config"])
            .arg(&self.config)
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .env("RUST_LOG", "info,openraft=warn")
            .env("RUST_BACKTRACE", "0")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("spawn keel node");
        self.child = Some(child);
    }

    /// SIGKILLs the process and reaps it.
    pub(crate) fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// The process's log so far.
    pub(crate) fn log(&self) -> String {
        std::fs::read_to_string(self.data_dir.with_extension("log")).unwrap_or_default()
    }
}

impl Drop for NodeProc {
    fn drop(&mut self) {
        self.kill();
        if std::thread::panicking() {
            let log = self.log();
            let tail: Vec<&str> = log.lines().rev().take(40).collect();
            eprintln!("--- node {} log tail ---", self.id);
            for line in tail.iter().rev() {
                eprintln!("{line}");
            }
        }
    }
}

/// A free loopback port (bound, read and released).
pub(crate) fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .expect("bind")
        .local_addr()
        .expect("addr")
        .port()
}

/// A set of node processes sharing one temporary directory.
pub(crate) struct Cluster {
    /// Declared before `dir`: processes stop (and print their logs) before files go.
    pub(crate) nodes: Vec<NodeProc>,
    pub(crate) dir: TempDir,
    extra_config: String,
    keel: PathBuf,
    env: Vec<(String, String)>,
}

impl Cluster {
    /// Writes configs for nodes `1..=count` and starts them (not yet initialized).
    pub(crate) fn start(count: u64, extra_config: &str) -> Self {
        Self::start_with(
            count,
            extra_config,
            PathBuf::from(env!("CARGO_BIN_EXE_keel")),
            Vec::new(),
        )
    }

    /// As [`Cluster::start`], running the `keel` binary `keel` with `env` added.
    pub(crate) fn start_with(
        count: u64,
        extra_config: &str,
        keel: PathBuf,
        env: Vec<(String, String)>,
    ) -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut cluster = Self {
            nodes: Vec::new(),
            dir,
            extra_config: extra_config.to_owned(),
            keel,
            env,
        };
        for id in 1..=count {
            cluster.add_node(id);
        }
        cluster
    }

    /// Configures and starts node `id`.
    pub(crate) fn add_node(&mut self, id: u64) -> &mut NodeProc {
        let port = free_port();
        let addr = format!("127.0.0.1:{port}");
        let data_dir = self.dir.path().join(format!("node-{id}"));
        let config = self.dir.path().join(format!("node-{id}.toml"));
        let text = format!(
            "node_id = {id}\nlisten = \"{addr}\"\ndata_dir = \"{}\"\n{}\n",
            data_dir.display(),
            self.extra_config
        );
        std::fs::write(&config, text).expect("write config");
        let mut node = NodeProc {
            id,
            addr,
            config,
            data_dir,
            keel: self.keel.clone(),
            env: self.env.clone(),
            child: None,
        };
        node.start();
        self.nodes.push(node);
        self.nodes.last_mut().expect("just pushed")
    }

    pub(crate) fn node(&mut self, id: u64) -> &mut NodeProc {
        self.nodes
            .iter_mut()
            .find(|n| n.id == id)
            .expect("node exists")
    }

    pub(crate) fn addrs(&self) -> Vec<String> {
        self.nodes.iter().map(|n| n.addr.clone()).collect()
    }

    pub(crate) fn client(&self) -> KeelClient {
        KeelClient::new(&self.addrs()).expect("client")
    }

    /// Waits for every node to answer, then forms the cluster of all of them.
    pub(crate) async fn init(&self) {
        let mut client = self.client();
        let members: BTreeMap<u64, String> =
            self.nodes.iter().map(|n| (n.id, n.addr.clone())).collect();
        poll("every node answers status", || {
            let mut client = client.clone();
            async move { client.statuses().await.iter().all(|(_, s)| s.is_ok()) }
        })
        .await;
        client.init(&members).await.expect("init");
        poll("a leader is elected", || {
            let mut client = client.clone();
            async move { leader(&mut client).await.is_some() }
        })
        .await;
    }
}

/// Polls `condition` until true, panicking after [`POLL_DEADLINE`].
pub(crate) async fn poll<F, Fut>(what: &str, mut condition: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = Instant::now() + POLL_DEADLINE;
    while Instant::now() < deadline {
        if condition().await {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("timed out waiting until {what}");
}

/// The status of the node that says it is the leader.
pub(crate) async fn leader(client: &mut KeelClient) -> Option<StatusResponse> {
    client
        .statuses()
        .await
        .into_iter()
        .find_map(|(_, s)| s.ok().filter(|s| s.role == "leader"))
}

/// The status of the node at `addr`, if it answers.
pub(crate) async fn status_of(client: &mut KeelClient, addr: &str) -> Option<StatusResponse> {
    let mut node = client.node(addr).ok()?;
    node.status(keel_raft::pb::client::StatusRequest {})
        .await
        .ok()
        .map(tonic::Response::into_inner)
}

/// Waits until the node at `addr` has applied records up to `next_offset`.
pub(crate) async fn wait_caught_up(client: &KeelClient, addr: &str, next_offset: u64) {
    poll(
        &format!("{addr} applied up to offset {next_offset}"),
        || {
            let mut client = client.clone();
            let addr = addr.to_owned();
            async move {
                status_of(&mut client, &addr)
                    .await
                    .is_some_and(|s| s.next_offset >= next_offset)
            }
        },
    )
    .await;
}

/// All retained records of the node at `addr`, read locally.
pub(crate) async fn records_on(client: &mut KeelClient, addr: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut from = 0;
    loop {
        let read = client
            .read_at(addr, from, 0, false)
            .await
            .expect("local read");
        if read.records.is_empty() {
            return out;
        }
        from = read.records.last().map_or(from, |r| r.offset + 1);
        out.extend(
            read.records
                .iter()
                .map(|r| String::from_utf8_lossy(&r.data).into_owned()),
        );
    }
}

pub(crate) fn record(text: &str) -> Vec<Bytes> {
    vec![Bytes::copy_from_slice(text.as_bytes())]
}
