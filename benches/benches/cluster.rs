//! Three-node cluster benchmarks: real node processes on loopback (this binary re-executed
//! as a node), clients over gRPC.
//!
//! - `cluster_append/{durable,relaxed}`: replicated appends of one 100 B or 1 KiB record
//!   per request at 1, 16, 64 and 256 concurrent clients, each acknowledged only after the
//!   entry is `fdatasync`ed on a majority (`durable`) or held in a majority's page cache
//!   (`relaxed`, NON-DURABLE). Latency p50/p99 of every request measured is printed per
//!   configuration and appended to `target/keel-bench/cluster_latency.txt`.
//! - `cluster_failover`: SIGKILL the leader, then time until the first acknowledged append.
//! - `cluster_restart_1gib`: SIGKILL a follower holding a 1 GiB Raft log and time its restart
//!   until it serves (answers status having applied everything committed before the kill).
//!
//! Peers measured on this machine class (issue #3): etcd 3.4 ≈ 6.4 k puts/s at 64 clients,
//! NATS `JetStream` ≈ 1.5 k/s with per-message fsync and ≈ 38 k/s acknowledging from memory;
//! failover etcd 1.0–3.0 s, `JetStream` 4–8 s.

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use criterion::{BenchmarkId, Criterion, Throughput};
use keel_raft::client::KeelClient;
use keel_raft::pb::client::{StatusRequest, StatusResponse};

/// Environment variable that turns this binary into a node running the named config.
const NODE_ENV: &str = "KEEL_BENCH_NODE_CONFIG";
const CLIENTS: [usize; 4] = [1, 16, 64, 256];
const PAYLOADS: [(usize, &str); 2] = [(100, "100B"), (1024, "1KiB")];
/// Deadline for a cluster condition to hold.
const WAIT_DEADLINE: Duration = Duration::from_secs(60);
/// Size of the log the restart benchmark fills (a small one when run as a test, without
/// `--bench`), and of each append batch filling it.
const RESTART_LOG_BYTES: usize = 1 << 30;
const RESTART_LOG_BYTES_TEST: usize = 8 << 20;
const FILL_BATCH_BYTES: usize = 256 * 1024;

fn main() {
    if let Ok(config) = std::env::var(NODE_ENV) {
        run_node(Path::new(&config));
        return;
    }
    let mut criterion = Criterion::default().configure_from_args();
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    for relaxed in [false, true] {
        if wanted(if relaxed {
            "cluster_append/relaxed"
        } else {
            "cluster_append/durable"
        }) {
            bench_append(&mut criterion, &runtime, relaxed);
        }
    }
    if wanted("cluster_failover") {
        bench_failover(&mut criterion, &runtime);
    }
    if wanted("cluster_restart_1gib") {
        bench_restart(&mut criterion, &runtime);
    }
    criterion.final_summary();
}

/// Whether a group runs: `KEEL_BENCH_GROUPS` (comma-separated substrings) limits the groups
/// whose clusters are started at all; criterion's own filter then picks benchmarks.
fn wanted(group: &str) -> bool {
    std::env::var("KEEL_BENCH_GROUPS")
        .map_or(true, |groups| groups.split(',').any(|g| group.contains(g)))
}

/// Runs a node the way `keel node` does: its configured runtime, then the node.
fn run_node(config: &Path) {
    let settings = keel_scheduler::ConfigFile::load(config).expect("node config");
    let runtime = settings.build_runtime().expect("runtime");
    runtime.block_on(async {
        let node = keel_scheduler::Node::start(
            settings.node,
            keel_scheduler::builtin::registry(),
            settings.engine,
        )
        .await
        .expect("node starts");
        node.stopped().await;
    });
}

/// Node processes of one benchmark cluster, killed by PID when dropped.
struct BenchCluster {
    nodes: Vec<(u64, String, PathBuf, Option<Child>)>,
    /// Each node's Prometheus endpoint.
    metrics: Vec<String>,
    _dir: tempfile::TempDir,
}

impl BenchCluster {
    fn start(relaxed: bool) -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut nodes = Vec::new();
        let mut metrics = Vec::new();
        for id in 1..=3u64 {
            let port = std::net::TcpListener::bind("127.0.0.1:0")
                .expect("bind")
                .local_addr()
                .expect("addr")
                .port();
            let addr = format!("127.0.0.1:{port}");
            let metrics_port = std::net::TcpListener::bind("127.0.0.1:0")
                .expect("bind")
                .local_addr()
                .expect("addr")
                .port();
            let config = dir.path().join(format!("node-{id}.toml"));
            let sync = if relaxed { "relaxed" } else { "durable" };
            let text = format!(
                "node_id = {id}\nlisten = \"{addr}\"\nmetrics_listen = \"127.0.0.1:{metrics_port}\"\ndata_dir = \"node-{id}\"\nsync = \"{sync}\"\nruntime_threads = 1\n[snapshot]\nevery_entries = 1000000\nkeep_behind = 10000\ninstall_timeout_ms = 60000\n[retention]\nmax_bytes = 268435456\n"
            );
            std::fs::write(&config, text).expect("config");
            nodes.push((id, addr, config, None));
            metrics.push(format!("127.0.0.1:{metrics_port}"));
        }
        let mut cluster = Self {
            nodes,
            metrics,
            _dir: dir,
        };
        for index in 0..3 {
            cluster.spawn(index);
        }
        cluster
    }

    fn spawn(&mut self, index: usize) {
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

    fn kill(&mut self, index: usize) {
        if let Some(mut child) = self.nodes[index].3.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    fn addrs(&self) -> Vec<String> {
        self.nodes.iter().map(|n| n.1.clone()).collect()
    }

    fn index_of(&self, node_id: u64) -> usize {
        self.nodes
            .iter()
            .position(|n| n.0 == node_id)
            .expect("known node")
    }

    async fn init(&self) {
        let mut client = KeelClient::new(&self.addrs(), 0).expect("client");
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

async fn wait_until<F, Fut>(what: &str, mut condition: F)
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

async fn leader(client: &mut KeelClient) -> Option<StatusResponse> {
    client
        .statuses()
        .await
        .into_iter()
        .find_map(|(_, s)| s.ok().filter(|s| s.role == "leader"))
}

/// Runs `per_client` appends on each of `clients` concurrent clients; returns the elapsed
/// time and every request's latency.
async fn run_clients(
    addrs: &[String],
    clients: usize,
    per_client: u64,
    payload: usize,
    next_id: &mut u64,
) -> (Duration, Vec<Duration>) {
    let record = Bytes::from(vec![b'k'; payload]);
    let started = Instant::now();
    let mut tasks = Vec::new();
    let shared = KeelClient::new(addrs, 0).expect("client");
    for _ in 0..clients {
        *next_id += 1;
        let mut client = shared.for_writer(*next_id);
        let record = record.clone();
        tasks.push(tokio::spawn(async move {
            let mut latencies = Vec::with_capacity(usize::try_from(per_client).unwrap_or(0));
            for _ in 0..per_client {
                let sent = Instant::now();
                client.append(vec![record.clone()]).await.expect("append");
                latencies.push(sent.elapsed());
            }
            latencies
        }));
    }
    let mut latencies = Vec::new();
    for task in tasks {
        latencies.extend(task.await.expect("client task"));
    }
    (started.elapsed(), latencies)
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
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

/// Mean Raft log flush (append to durable) latency per node, from each node's metrics.
fn flush_means(cluster: &BenchCluster) -> String {
    let mut out = Vec::new();
    for addr in &cluster.metrics {
        let Ok(mut stream) = std::net::TcpStream::connect(addr) else {
            continue;
        };
        let _ = stream.write_all(b"GET /metrics HTTP/1.0\r\n\r\n");
        let mut text = String::new();
        let _ = std::io::Read::read_to_string(&mut stream, &mut text);
        let value = |name: &str| {
            text.lines()
                .find_map(|l| {
                    l.strip_prefix(name)
                        .and_then(|v| v.trim().parse::<f64>().ok())
                })
                .unwrap_or(0.0)
        };
        let (sum, count) = (
            value("keel_log_flush_seconds_sum "),
            value("keel_log_flush_seconds_count "),
        );
        if count > 0.0 {
            out.push(format!("{:.2}ms", sum / count * 1e3));
        }
    }
    out.join("/")
}

fn report_latency(label: &str, mut latencies: Vec<Duration>) {
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
    eprintln!("{line}");
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/keel-bench");
    if std::env::args().any(|a| a == "--bench")
        && std::fs::create_dir_all(&dir).is_ok()
        && let Ok(mut file) = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(dir.join("cluster_latency.txt"))
    {
        let _ = writeln!(file, "{line}");
    }
}

fn bench_append(criterion: &mut Criterion, runtime: &tokio::runtime::Runtime, relaxed: bool) {
    let cluster = BenchCluster::start(relaxed);
    runtime.block_on(cluster.init());
    let addrs = cluster.addrs();
    let mode = if relaxed { "relaxed" } else { "durable" };
    let mut group = criterion.benchmark_group(format!("cluster_append/{mode}"));
    group
        .sample_size(10)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(4));
    let mut next_id = if relaxed { 1_000_000 } else { 0 };
    for (payload, payload_name) in PAYLOADS {
        for clients in CLIENTS {
            let latencies = Arc::new(Mutex::new(Vec::new()));
            group.throughput(Throughput::Elements(clients as u64));
            group.bench_function(
                BenchmarkId::new(payload_name, format!("{clients}_clients")),
                |b| {
                    b.iter_custom(|iters| {
                        let (elapsed, measured) = runtime.block_on(run_clients(
                            &addrs,
                            clients,
                            iters,
                            payload,
                            &mut next_id,
                        ));
                        latencies.lock().expect("latencies").extend(measured);
                        elapsed
                    });
                },
            );
            let measured = std::mem::take(&mut *latencies.lock().expect("latencies"));
            let label = format!("cluster_append/{mode}/{payload_name}/{clients}_clients");
            if !measured.is_empty() {
                eprintln!(
                    "{label}: mean log flush per node so far {}",
                    flush_means(&cluster)
                );
            }
            report_latency(&label, measured);
        }
    }
    group.finish();
}

fn bench_failover(criterion: &mut Criterion, runtime: &tokio::runtime::Runtime) {
    let mut cluster = BenchCluster::start(false);
    runtime.block_on(cluster.init());
    let mut group = criterion.benchmark_group("cluster_failover");
    group
        .sample_size(10)
        .warm_up_time(Duration::from_millis(1))
        .measurement_time(Duration::from_secs(1));
    group.bench_function("sigkill_leader_to_first_ack", |b| {
        b.iter_custom(|iters| {
            let mut total = Duration::ZERO;
            for _ in 0..iters {
                total += runtime.block_on(one_failover(&mut cluster));
            }
            total
        });
    });
    group.finish();
}

/// Kills the leader, times the first acknowledged append, then restarts the killed node and
/// waits (untimed) until it has caught up.
async fn one_failover(cluster: &mut BenchCluster) -> Duration {
    let mut client = KeelClient::new(&cluster.addrs(), 0).expect("client");
    let leader_id = leader(&mut client).await.expect("a leader").node_id;
    let index = cluster.index_of(leader_id);
    let killed = Instant::now();
    cluster.kill(index);
    client
        .append(vec![Bytes::from_static(b"after failover")])
        .await
        .expect("append after failover");
    let elapsed = killed.elapsed();
    cluster.spawn(index);
    let addr = cluster.nodes[index].1.clone();
    wait_until("the killed node caught up", || {
        let mut client = client.clone();
        let addr = addr.clone();
        async move {
            let Some(leader) = leader(&mut client).await else {
                return false;
            };
            let Ok(mut node) = client.node(&addr) else {
                return false;
            };
            let status = node.status(StatusRequest {}).await.map(tonic_inner);
            status.is_ok_and(|s| s.applied_index >= leader.committed_index && s.admitted)
        }
    })
    .await;
    elapsed
}

fn tonic_inner<T>(response: tonic::Response<T>) -> T {
    response.into_inner()
}

fn bench_restart(criterion: &mut Criterion, runtime: &tokio::runtime::Runtime) {
    let mut cluster = BenchCluster::start(true);
    runtime.block_on(async {
        cluster.init().await;
        let mut client = KeelClient::new(&cluster.addrs(), 0).expect("client");
        let batch: Vec<Bytes> = (0..FILL_BATCH_BYTES / 1024)
            .map(|_| Bytes::from(vec![b'g'; 1024]))
            .collect();
        let log_bytes = if std::env::args().any(|a| a == "--bench") {
            RESTART_LOG_BYTES
        } else {
            RESTART_LOG_BYTES_TEST
        };
        for _ in 0..log_bytes / FILL_BATCH_BYTES {
            client.append(batch.clone()).await.expect("fill");
        }
    });
    let mut group = criterion.benchmark_group("cluster_restart_1gib");
    group
        .sample_size(10)
        .warm_up_time(Duration::from_millis(1))
        .measurement_time(Duration::from_secs(1));
    group.bench_function("sigkill_follower_to_serving", |b| {
        b.iter_custom(|iters| {
            let mut total = Duration::ZERO;
            for _ in 0..iters {
                total += runtime.block_on(one_restart(&mut cluster));
            }
            total
        });
    });
    group.finish();
}

async fn one_restart(cluster: &mut BenchCluster) -> Duration {
    let mut client = KeelClient::new(&cluster.addrs(), 0).expect("client");
    let leader = leader(&mut client).await.expect("a leader");
    let index = cluster
        .nodes
        .iter()
        .position(|n| n.0 != leader.node_id)
        .expect("a follower");
    let committed = leader.committed_index;
    cluster.kill(index);
    let restarted = Instant::now();
    cluster.spawn(index);
    let addr = cluster.nodes[index].1.clone();
    wait_until("the restarted node serves", || {
        let mut client = client.clone();
        let addr = addr.clone();
        async move {
            let Ok(mut node) = client.node(&addr) else {
                return false;
            };
            node.status(StatusRequest {})
                .await
                .map(tonic_inner)
                .is_ok_and(|s| s.applied_index >= committed)
        }
    })
    .await;
    restarted.elapsed()
}
