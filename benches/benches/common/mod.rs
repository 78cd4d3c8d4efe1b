//! What the cluster benchmarks share: node processes of this binary on loopback, waits,
//! percentiles and the latency report.

#![allow(
    dead_code,
    reason = "each benchmark binary uses a different part of this module"
)]

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use bytes::Bytes;
use keel_raft::client::KeelClient;
use keel_raft::pb::client::StatusResponse;
use keel_raft::security::credentials::Credentials;

/// Starts the built-in `steps` workflow `id` with `input` (`"<steps>"` or
/// `"<steps>:<result bytes>"`), waits for its result and checks that it completed with
/// `steps` (its step count, as text) as its result.
pub(crate) async fn run_steps(
    client: &mut keel_scheduler::client::WorkflowClient,
    id: &str,
    input: Bytes,
    steps: u64,
) {
    client.start(id, "steps", input).await.expect("start");
    let info = client
        .get_after(id, Duration::from_secs(120), false)
        .await
        .expect("result");
    assert_eq!(info.status, "completed", "{info:?}");
    assert_eq!(info.result, steps.to_string().as_bytes(), "{info:?}");
}

/// Makes every file under `dir` cold: each is `fsync`ed (so its pages are clean) and then
/// dropped from the page cache with `posix_fadvise(POSIX_FADV_DONTNEED)`, so the next read
/// goes to the disk. Untimed preparation for the "cold" variants of reopen and restart.
pub(crate) fn drop_page_cache(dir: &Path) {
    for entry in std::fs::read_dir(dir).expect("list a data directory") {
        let path = entry.expect("directory entry").path();
        if path.is_dir() {
            drop_page_cache(&path);
        } else if path.is_file() {
            let file = std::fs::File::open(&path).expect("open a data file");
            file.sync_all().expect("fsync a data file");
            rustix::fs::fadvise(&file, 0, None, rustix::fs::Advice::DontNeed)
                .expect("posix_fadvise(DONTNEED)");
        }
    }
}

/// Environment variable that turns a benchmark binary into a node running the named config.
pub(crate) const NODE_ENV: &str = "KEEL_BENCH_NODE_CONFIG";
/// Deadline for a cluster condition to hold.
pub(crate) const WAIT_DEADLINE: Duration = Duration::from_secs(60);

/// Runs this process as a node if it was started as one; true then.
pub(crate) fn run_as_node() -> bool {
    let Ok(config) = std::env::var(NODE_ENV) else {
        return false;
    };
    assert!(
        keel_scheduler::allocator::fix_mmap_threshold()
            || !cfg!(all(target_os = "linux", target_env = "gnu")),
        "a node process tunes glibc's allocator as `keel` does"
    );
    run_node(Path::new(&config));
    true
}

/// Whether this run measures (`cargo bench`) rather than checks the benchmarks once.
pub(crate) fn measuring() -> bool {
    std::env::args().any(|a| a == "--bench")
}

/// Whether a group runs: `KEEL_BENCH_GROUPS` (comma-separated substrings) limits the groups
/// whose clusters are started at all; criterion's own filter then picks benchmarks.
pub(crate) fn wanted(group: &str) -> bool {
    std::env::var("KEEL_BENCH_GROUPS")
        .map_or(true, |groups| groups.split(',').any(|g| group.contains(g)))
}

/// Runs a node the way `keel node` does: its configured runtime, then the node (the
/// allocator tuned as `keel` tunes it, by the caller).
///
/// `KEEL_BENCH_NODE_LOG` (a tracing filter such as `info`) makes the nodes log to stderr.
fn run_node(config: &Path) {
    if let Ok(filter) = std::env::var("KEEL_BENCH_NODE_LOG") {
        tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::new(filter))
            .with_writer(std::io::stderr)
            .init();
    }
    let settings = keel_scheduler::ConfigFile::load(config).expect("node config");
    let runtime = settings.build_runtime().expect("runtime");
    runtime.block_on(async {
        let node = keel_scheduler::Node::start_with_peers(
            settings.node,
            keel_scheduler::builtin::registry(),
            settings.engine,
            settings.peers,
        )
        .await
        .expect("node starts");
        node.stopped().await;
    });
}

/// Node processes of one benchmark cluster, killed by PID when dropped.
pub(crate) struct BenchCluster {
    pub(crate) nodes: Vec<(u64, String, PathBuf, Option<Child>)>,
    /// Each node's Prometheus endpoint.
    pub(crate) metrics: Vec<String>,
    /// What clients present (nothing for a plaintext cluster).
    pub(crate) credentials: Credentials,
    _dir: tempfile::TempDir,
}

/// The benchmarks' snapshot policy: rarely by entries (a benchmark asks for one when it
/// needs one), far behind.
const DEFAULT_TUNING: &str =
    "[snapshot]\nevery_entries = 1000000\nkeep_behind = 10000\ninstall_timeout_ms = 60000\n";

/// The admin token of a TLS benchmark cluster (a benchmark's secret need not be secret).
const BENCH_TOKEN: &str = "keel-bench-admin-token";

/// Issues a CA, node certificates and an admin token into `dir`; returns each node's
/// configuration sections and the clients' credentials.
fn bench_pki(dir: &Path) -> (Vec<String>, Credentials) {
    use keel_raft::security::certs::{LocalCa, write_pair};
    use keel_raft::security::roles::Role;
    let ca = LocalCa::create("keel-bench").expect("CA");
    ca.write(dir).expect("write the CA");
    let sections = (1..=3u64)
        .map(|id| {
            let stem = format!("node-{id}");
            let issued = ca.issue(&stem, Role::Node, &[]).expect("node certificate");
            write_pair(dir, &stem, &issued).expect("write a node certificate");
            format!(
                "[tls]\ncert = \"{stem}.pem\"\nkey = \"{stem}.key\"\nca = \"ca.pem\"\n[auth]\ntokens = \"tokens.toml\"\n"
            )
        })
        .collect();
    std::fs::write(
        dir.join("tokens.toml"),
        format!("[[token]]\nrole = \"admin\"\nvalue = \"{BENCH_TOKEN}\"\n"),
    )
    .expect("tokens file");
    std::fs::write(dir.join("admin.token"), BENCH_TOKEN).expect("token file");
    let credentials = Credentials {
        ca: Some(dir.join("ca.pem")),
        cert: None,
        key: None,
        token_file: Some(dir.join("admin.token")),
    };
    (sections, credentials)
}

impl BenchCluster {
    pub(crate) fn start(relaxed: bool) -> Self {
        Self::start_with(relaxed, false)
    }

    /// Three nodes, each with TLS and authentication when `tls` (clients then present the
    /// CA and an admin token, checked on every request).
    pub(crate) fn start_with(relaxed: bool, tls: bool) -> Self {
        Self::configured(3, relaxed, tls, DEFAULT_TUNING, "keel")
    }

    /// Three durable plaintext nodes of cluster `name`, configured with `sections` (its
    /// `[remotes]`, say) after the benchmarks' default snapshot policy.
    pub(crate) fn start_named(name: &str, sections: &str) -> Self {
        Self::configured(
            3,
            false,
            false,
            &format!("{DEFAULT_TUNING}{sections}"),
            name,
        )
    }

    /// One plaintext node, a cluster of its own (for rows too large for three nodes' disks).
    pub(crate) fn start_single(relaxed: bool) -> Self {
        Self::configured(1, relaxed, false, DEFAULT_TUNING, "keel")
    }

    /// Three plaintext nodes whose configuration ends with `tuning` (its `[snapshot]` and
    /// any other sections) instead of the benchmarks' default snapshot policy.
    pub(crate) fn start_tuned(relaxed: bool, tuning: &str) -> Self {
        Self::configured(3, relaxed, false, tuning, "keel")
    }

    /// `size` nodes (at most three) of cluster `name`.
    fn configured(size: u64, relaxed: bool, tls: bool, tuning: &str, name: &str) -> Self {
        assert!(
            (1..=3).contains(&size),
            "a bench cluster has one to three nodes"
        );
        let dir = tempfile::tempdir().expect("tempdir");
        let (sections, credentials) = if tls {
            bench_pki(dir.path())
        } else {
            (vec![String::new(); 3], Credentials::none())
        };
        let mut nodes = Vec::new();
        let mut metrics = Vec::new();
        let ports = free_ports::<6>();
        for (id, pair) in (1..=size).zip(ports.chunks(2)) {
            let addr = format!("127.0.0.1:{}", pair[0]);
            let metrics_port = pair[1];
            let config = dir.path().join(format!("node-{id}.toml"));
            let sync = if relaxed { "relaxed" } else { "durable" };
            let security = &sections[usize::try_from(id - 1).expect("node index")];
            let text = format!(
                "node_id = {id}\ncluster = \"{name}\"\nlisten = \"{addr}\"\nmetrics_listen = \"127.0.0.1:{metrics_port}\"\ndata_dir = \"node-{id}\"\nsync = \"{sync}\"\nruntime_threads = 1\n[retention]\nmax_bytes = 268435456\n{security}{tuning}"
            );
            std::fs::write(&config, text).expect("config");
            nodes.push((id, addr, config, None));
            metrics.push(format!("127.0.0.1:{metrics_port}"));
        }
        let mut cluster = Self {
            nodes,
            metrics,
            credentials,
            _dir: dir,
        };
        for index in 0..cluster.nodes.len() {
            cluster.spawn(index);
        }
        cluster
    }

    pub(crate) fn spawn(&mut self, index: usize) {
        let exe = std::env::current_exe().expect("current exe");
        let node = &mut self.nodes[index];
        let child = Command::new(exe)
            .env(NODE_ENV, &node.2)
            .env("RUST_LOG", "error")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .spawn()
            .expect("spawn node");
        node.3 = Some(child);
    }

    pub(crate) fn kill(&mut self, index: usize) {
        if let Some(mut child) = self.nodes[index].3.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    pub(crate) fn addrs(&self) -> Vec<String> {
        self.nodes.iter().map(|n| n.1.clone()).collect()
    }

    /// A client of the cluster, presenting its credentials.
    pub(crate) fn client(&self) -> KeelClient {
        KeelClient::with_credentials(&self.addrs(), &self.credentials).expect("client")
    }

    /// Node `index`'s data directory.
    pub(crate) fn data_dir(&self, index: usize) -> PathBuf {
        let (id, _, config, _) = &self.nodes[index];
        config
            .parent()
            .expect("configs live in the cluster's directory")
            .join(format!("node-{id}"))
    }

    pub(crate) fn index_of(&self, node_id: u64) -> usize {
        self.nodes
            .iter()
            .position(|n| n.0 == node_id)
            .expect("known node")
    }

    /// Restarts the node at `index` and waits (untimed) until it has applied everything the
    /// leader committed.
    pub(crate) async fn respawn_and_catch_up(&mut self, index: usize) {
        self.spawn(index);
        let client = self.client();
        let addr = self.nodes[index].1.clone();
        wait_until("the restarted node caught up", || {
            let mut client = client.clone();
            let addr = addr.clone();
            async move {
                let Some(leader) = leader(&mut client).await else {
                    return false;
                };
                let Ok(mut node) = client.node(&addr) else {
                    return false;
                };
                let status = node
                    .status(keel_raft::pb::client::StatusRequest {})
                    .await
                    .map(tonic::Response::into_inner);
                status.is_ok_and(|s| s.applied_index >= leader.committed_index && s.admitted)
            }
        })
        .await;
    }

    /// Kills the leader, times the first acknowledged append, then restarts the killed node
    /// and waits (untimed) until it has caught up.
    ///
    /// The append is exactly-once (in a session registered before the kill, untimed), so
    /// the client retries it when its outcome is unknown — as when it reached the leader's
    /// connection as it died.
    pub(crate) async fn failover_once(&mut self) -> Duration {
        let mut client = self.client();
        client.register_session().await.expect("register a session");
        let leader_id = leader(&mut client).await.expect("a leader").node_id;
        let index = self.index_of(leader_id);
        let killed = Instant::now();
        self.kill(index);
        client
            .append(vec![Bytes::from_static(b"after failover")])
            .await
            .expect("append after failover");
        let elapsed = killed.elapsed();
        self.respawn_and_catch_up(index).await;
        elapsed
    }

    pub(crate) async fn init(&self) {
        let mut client = self.client();
        wait_until("all nodes answer", || {
            let mut client = client.clone();
            async move { client.statuses().await.iter().all(|(_, s)| s.is_ok()) }
        })
        .await;
        let members = self.nodes.iter().map(|n| (n.0, n.1.clone())).collect();
        client.init(&members).await.expect("init");
        client
            .append(vec![Bytes::from_static(b"ready")])
            .await
            .expect("first append");
    }
}

impl Drop for BenchCluster {
    fn drop(&mut self) {
        for index in 0..self.nodes.len() {
            self.kill(index);
        }
    }
}

/// `N` distinct loopback ports that were free a moment ago: each bound to port 0, all
/// held until the last is bound (so none is handed out twice), then released.
pub(crate) fn free_ports<const N: usize>() -> [u16; N] {
    let listeners: Vec<std::net::TcpListener> = (0..N)
        .map(|_| std::net::TcpListener::bind("127.0.0.1:0").expect("bind"))
        .collect();
    std::array::from_fn(|i| listeners[i].local_addr().expect("addr").port())
}

/// A loopback port that was free a moment ago (bound to port 0, then released).
pub(crate) fn free_port() -> u16 {
    let [port] = free_ports::<1>();
    port
}

/// One writer of a closed-loop load: sends one write and waits for its acknowledgement.
pub(crate) trait Writer: Send + 'static {
    fn write(&mut self) -> impl Future<Output = ()> + Send + '_;
}

/// Runs `per_writer` writes on each writer, all writers at once; returns the elapsed time
/// and every write's latency.
pub(crate) async fn closed_loop<W: Writer>(
    writers: Vec<W>,
    per_writer: u64,
) -> (Duration, Vec<Duration>) {
    let started = Instant::now();
    let tasks: Vec<_> = writers
        .into_iter()
        .map(|mut writer| {
            tokio::spawn(async move {
                let mut latencies = Vec::with_capacity(usize::try_from(per_writer).unwrap_or(0));
                for _ in 0..per_writer {
                    let sent = Instant::now();
                    writer.write().await;
                    latencies.push(sent.elapsed());
                }
                latencies
            })
        })
        .collect();
    let mut latencies = Vec::new();
    for task in tasks {
        latencies.extend(task.await.expect("writer task"));
    }
    (started.elapsed(), latencies)
}

/// A client appending one record per write.
pub(crate) struct KeelWriter {
    client: KeelClient,
    record: Bytes,
}

impl Writer for KeelWriter {
    async fn write(&mut self) {
        self.client
            .append(vec![self.record.clone()])
            .await
            .expect("append");
    }
}

/// `count` writers on `shared`'s connections, appending `record`, each in an exactly-once
/// session of its own, registered here (before any timing starts).
pub(crate) async fn keel_writers(
    shared: &KeelClient,
    count: usize,
    record: &Bytes,
) -> Vec<KeelWriter> {
    let writers = (0..count).map(|_| async {
        let mut client = shared.for_writer();
        client.register_session().await.expect("register a session");
        KeelWriter {
            client,
            record: record.clone(),
        }
    });
    futures::future::join_all(writers).await
}

/// Runs `per_client` appends on each of `clients` concurrent clients of `cluster`; returns
/// the elapsed time and every request's latency.
pub(crate) async fn run_clients(
    cluster: &BenchCluster,
    clients: usize,
    per_client: u64,
    payload: usize,
) -> (Duration, Vec<Duration>) {
    let record = Bytes::from(vec![b'k'; payload]);
    let shared = cluster.client();
    let writers = keel_writers(&shared, clients, &record).await;
    closed_loop(writers, per_client).await
}

pub(crate) async fn wait_until<F, Fut>(what: &str, mut condition: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = Instant::now() + WAIT_DEADLINE;
    while Instant::now() < deadline {
        if condition().await {
            return;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    panic!("timed out waiting until {what}");
}

pub(crate) async fn leader(client: &mut KeelClient) -> Option<StatusResponse> {
    client
        .statuses()
        .await
        .into_iter()
        .find_map(|(_, s)| s.ok().filter(|s| s.role == "leader"))
}

pub(crate) fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    #[expect(
        clippy::cast_possible_truncation,
        clippy::cast_sign_loss,
        clippy::cast_precision_loss,
        reason = "an index into a short vector"
    )]
    let index = ((sorted.len() - 1) as f64 * p).round() as usize;
    sorted[index]
}

/// Prints `label`'s latency percentiles, and appends them to `target/keel-bench/<file>` when
/// measuring.
pub(crate) fn report_latency(file: &str, label: &str, mut latencies: Vec<Duration>) {
    if latencies.is_empty() {
        return;
    }
    latencies.sort_unstable();
    let line = format!(
        "{label}: n={} p50={:.2?} p99={:.2?}",
        latencies.len(),
        percentile(&latencies, 0.50),
        percentile(&latencies, 0.99)
    );
    record(file, &line);
}

/// The Prometheus text of the node whose metrics endpoint is `addr`, if it answers.
pub(crate) fn scrape_metrics(addr: &str) -> Option<String> {
    let mut stream = std::net::TcpStream::connect(addr).ok()?;
    stream.write_all(b"GET /metrics HTTP/1.0\r\n\r\n").ok()?;
    let mut text = String::new();
    std::io::Read::read_to_string(&mut stream, &mut text).ok()?;
    Some(text)
}

/// The value of sample `name` (with its labels, if any) in Prometheus `text`; 0 if absent.
pub(crate) fn metric(text: &str, name: &str) -> f64 {
    text.lines()
        .find_map(|line| {
            line.strip_prefix(name)
                .filter(|rest| rest.starts_with([' ', '{']))
                .and_then(|rest| rest.rsplit(' ').next())
                .and_then(|value| value.trim().parse().ok())
        })
        .unwrap_or(0.0)
}

/// Prints `line`, and appends it to `target/keel-bench/<file>` when measuring.
pub(crate) fn record(file: &str, line: &str) {
    eprintln!("{line}");
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/keel-bench");
    if measuring()
        && std::fs::create_dir_all(&dir).is_ok()
        && let Ok(mut file) = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(dir.join(file))
    {
        let _ = writeln!(file, "{line}");
    }
}
