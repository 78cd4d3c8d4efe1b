//! Three-node cluster benchmarks: real node processes on loopback (this binary re-executed
//! as a node), clients over gRPC.
//!
//! - `cluster_append/{durable,relaxed}`: replicated appends of one 100 B or 1 KiB record
//!   per request at 1, 16, 64 and 256 concurrent clients, each acknowledged only after the
//!   entry is `fdatasync`ed on a majority (`durable`) or held in a majority's page cache
//!   (`relaxed`, NON-DURABLE). Latency p50/p99 of every request measured is printed per
//!   configuration and appended to `target/keel-bench/cluster_latency.txt`.
//! - `cluster_append_tls`: 100 B durable appends at 64 concurrent clients on a plaintext
//!   cluster and on one with TLS everywhere (mutual between nodes) and authentication (a
//!   bearer token checked on every request); then five interleaved rounds of each, whose
//!   median throughputs give the ratio TLS / plaintext, printed and appended to
//!   `target/keel-bench/tls_cost.txt`.
//! - `cluster_failover`: SIGKILL the leader, then time until the first acknowledged append.
//! - `cluster_restart_1gib`: SIGKILL a follower holding a 1 GiB Raft log and time its restart
//!   until it serves (answers status having applied everything committed before the kill).
//!
//! The `peers` benchmark runs etcd 3.4 and NATS `JetStream` beside Keel under the same load.
#![forbid(unsafe_code)]

mod common;

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use common::{
    BenchCluster, drop_page_cache, leader, measuring, metric, record, report_latency, run_as_node,
    run_clients, scrape_metrics, wait_until, wanted,
};
use criterion::{BenchmarkId, Criterion, Throughput};
use keel_raft::client::KeelClient;
use keel_raft::pb::client::StatusRequest;

const CLIENTS: [usize; 4] = [1, 16, 64, 256];
const PAYLOADS: [(usize, &str); 2] = [(100, "100B"), (1024, "1KiB")];
/// Size of the log the restart benchmark fills (a small one when run as a test, without
/// `--bench`), and of each append batch filling it.
const RESTART_LOG_BYTES: usize = 1 << 30;
const RESTART_LOG_BYTES_TEST: usize = 8 << 20;
const FILL_BATCH_BYTES: usize = 256 * 1024;

fn main() {
    if run_as_node() {
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
    if wanted("cluster_append_tls") {
        bench_tls(&mut criterion, &runtime);
    }
    if wanted("cluster_failover") {
        bench_failover(&mut criterion, &runtime);
    }
    if wanted("cluster_restart_1gib") {
        bench_restart(&mut criterion, &runtime);
    }
    criterion.final_summary();
}

/// Mean Raft log flush (append to durable) latency per node, from each node's metrics.
fn flush_means(cluster: &BenchCluster) -> String {
    let mut out = Vec::new();
    for addr in &cluster.metrics {
        let Some(text) = scrape_metrics(addr) else {
            continue;
        };
        let (sum, count) = (
            metric(&text, "keel_log_flush_seconds_sum"),
            metric(&text, "keel_log_flush_seconds_count"),
        );
        if count > 0.0 {
            out.push(format!("{:.2}ms", sum / count * 1e3));
        }
    }
    out.join("/")
}

fn bench_append(criterion: &mut Criterion, runtime: &tokio::runtime::Runtime, relaxed: bool) {
    let cluster = BenchCluster::start(relaxed);
    runtime.block_on(cluster.init());
    let mode = if relaxed { "relaxed" } else { "durable" };
    let mut group = criterion.benchmark_group(format!("cluster_append/{mode}"));
    group
        .sample_size(10)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(4));
    for (payload, payload_name) in PAYLOADS {
        for clients in CLIENTS {
            let latencies = Arc::new(Mutex::new(Vec::new()));
            group.throughput(Throughput::Elements(clients as u64));
            group.bench_function(
                BenchmarkId::new(payload_name, format!("{clients}_clients")),
                |b| {
                    b.iter_custom(|iters| {
                        let (elapsed, measured) =
                            runtime.block_on(run_clients(&cluster, clients, iters, payload));
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
            report_latency("cluster_latency.txt", &label, measured);
        }
    }
    group.finish();
}

/// Concurrent clients of the TLS comparison.
const TLS_CLIENTS: usize = 64;
/// Interleaved rounds of the TLS comparison, whose medians are compared.
const TLS_ROUNDS: usize = 5;
/// The record of the TLS comparison.
const TLS_PAYLOAD: usize = 100;

fn bench_tls(criterion: &mut Criterion, runtime: &tokio::runtime::Runtime) {
    // One after the other: a cluster's free ports are bound once it answers, so the second
    // cannot be handed the same ones.
    let plaintext = BenchCluster::start_with(false, false);
    runtime.block_on(plaintext.init());
    let tls = BenchCluster::start_with(false, true);
    runtime.block_on(tls.init());
    let clusters = [("plaintext", &plaintext), ("tls", &tls)];
    let mut group = criterion.benchmark_group("cluster_append_tls");
    group
        .sample_size(10)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(4))
        .throughput(Throughput::Elements(TLS_CLIENTS as u64));
    for (name, cluster) in clusters {
        group.bench_function(
            BenchmarkId::new(name, format!("{TLS_CLIENTS}_clients")),
            |b| {
                b.iter_custom(|iters| {
                    runtime
                        .block_on(run_clients(cluster, TLS_CLIENTS, iters, TLS_PAYLOAD))
                        .0
                });
            },
        );
    }
    group.finish();
    // The same load on each in turn, five times: drift of the machine hits both alike.
    let per_client: u64 = if measuring() { 300 } else { 2 };
    let mut rates = [Vec::new(), Vec::new()];
    for _ in 0..TLS_ROUNDS {
        for (rate, (_, cluster)) in rates.iter_mut().zip(clusters) {
            let (elapsed, _) =
                runtime.block_on(run_clients(cluster, TLS_CLIENTS, per_client, TLS_PAYLOAD));
            #[expect(
                clippy::cast_precision_loss,
                reason = "a count of appends far below 2^52"
            )]
            rate.push((TLS_CLIENTS as u64 * per_client) as f64 / elapsed.as_secs_f64());
        }
    }
    let [plain_rate, tls_rate] = rates.map(|mut r| {
        r.sort_by(f64::total_cmp);
        r[r.len() / 2]
    });
    record(
        "tls_cost.txt",
        &format!(
            "cluster_append_tls/{TLS_CLIENTS}_clients/{TLS_PAYLOAD}B durable, median of {TLS_ROUNDS} interleaved rounds: plaintext {plain_rate:.0}/s, TLS+auth {tls_rate:.0}/s, TLS/plaintext = {:.3}",
            tls_rate / plain_rate
        ),
    );
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
                total += runtime.block_on(cluster.failover_once());
            }
            total
        });
    });
    group.finish();
}

fn tonic_inner<T>(response: tonic::Response<T>) -> T {
    response.into_inner()
}

fn bench_restart(criterion: &mut Criterion, runtime: &tokio::runtime::Runtime) {
    let mut cluster = BenchCluster::start(true);
    runtime.block_on(async {
        cluster.init().await;
        let mut client = KeelClient::new(&cluster.addrs()).expect("client");
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
    for (cache, cold) in [("warm", false), ("cold", true)] {
        group.bench_function(format!("sigkill_follower_to_serving/{cache}"), |b| {
            b.iter_custom(|iters| {
                let mut total = Duration::ZERO;
                for _ in 0..iters {
                    total += runtime.block_on(one_restart(&mut cluster, cold));
                }
                total
            });
        });
    }
    group.finish();
}

/// Kills a follower and times its restart until it serves everything committed; `cold`
/// drops its data files from the page cache first (untimed).
async fn one_restart(cluster: &mut BenchCluster, cold: bool) -> Duration {
    let mut client = KeelClient::new(&cluster.addrs()).expect("client");
    let leader = leader(&mut client).await.expect("a leader");
    let index = cluster
        .nodes
        .iter()
        .position(|n| n.0 != leader.node_id)
        .expect("a follower");
    let committed = leader.committed_index;
    cluster.kill(index);
    if cold {
        drop_page_cache(&cluster.data_dir(index));
    }
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
