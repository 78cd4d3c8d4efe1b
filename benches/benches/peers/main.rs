//! Keel beside its peers, in one run on one machine, under the same load.
//!
//! Each system runs as server processes on loopback, started fresh for its benchmark and
//! killed by PID afterwards: Keel (this binary re-executed as three nodes), NATS `JetStream`
//! (Debian's `nats-server`) and etcd 3.4 (Debian's `etcd`), three servers each; for the
//! workflow group, DBOS on one PostgreSQL server and one Restate server (see `steps`).
//!
//! - `peers_append_64w_100B`: 64 writers in a closed loop, each sending one 100 B record
//!   and waiting for its acknowledgement, against the leader:
//!   - `keel_relaxed` beside `nats_jetstream`: both acknowledge once a majority holds the
//!     record, before it is fsynced (NON-DURABLE; `JetStream`'s default mode);
//!   - `keel_durable` beside `etcd`: both acknowledge once a majority has fsynced it.
//!
//!   NATS 2.9 has no per-message fsync, so it has no durable row.
//! - `peers_failover`: SIGKILL the leader (for NATS, the stream leader), then time until the
//!   first acknowledged write; the killed server is restarted and caught up, untimed.
//!
//! Each Go peer runs twice in both groups ([`Tuning`]): as it ships (`etcd`,
//! `nats_jetstream`) and matched to Keel's nodes (`etcd_matched`: Keel's 50 ms heartbeat and
//! 250–500 ms election timeout, `GOMAXPROCS=1` as each Keel node runs one runtime thread;
//! `nats_jetstream_matched`: `GOMAXPROCS=1` only, its Raft timers are not configurable).
//!
//! - `peers_steps10_32`: durable workflows, 10 steps each, 32 drivers: Keel, DBOS, Restate.
//!
//! After each pair the ratio is printed and appended to `target/keel-bench/peers.txt`:
//! Keel's throughput over the peer's (over every call criterion made, warm-up included), and
//! the peer's mean failover time over Keel's — above 1, Keel is ahead;
//! latency p50/p99 go to `target/keel-bench/peers_latency.txt`.
#![forbid(unsafe_code)]

#[path = "../common/mod.rs"]
mod common;
mod dbos;
mod driver;
mod etcd;
mod failover;
mod nats;
mod postgres;
mod process;
mod restate;
mod steps;

use std::time::Duration;

use bytes::Bytes;
use common::{
    BenchCluster, Writer, closed_loop, keel_writers, record as record_line, report_latency,
    run_as_node, wanted,
};
use criterion::measurement::WallTime;
use criterion::{BenchmarkGroup, Criterion, Throughput};
use keel_raft::client::KeelClient;

const WRITERS: usize = 64;
const PAYLOAD: usize = 100;
const APPEND_GROUP: &str = "peers_append_64w_100B";
const FAILOVER_GROUP: &str = "peers_failover";
const RATIO_FILE: &str = "peers.txt";

/// Keel's benchmark nodes' timing and thread budget (`BenchCluster`: the defaults of
/// `keel node`, one runtime thread each), which the matched peers get.
const KEEL_HEARTBEAT_MS: u64 = 50;
/// Keel draws each election timeout from 250–500 ms; etcd draws from its setting up to
/// twice it, so 250 gives etcd the same range.
const KEEL_ELECTION_MIN_MS: u64 = 250;
const KEEL_RUNTIME_THREADS: usize = 1;

/// How a Go peer (etcd, NATS) runs: as it ships, or matched to Keel's benchmark nodes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Tuning {
    /// The peer's defaults: etcd's 100 ms heartbeat and 1 s election timeout; Go's
    /// `GOMAXPROCS` (every CPU).
    Default,
    /// Keel's: etcd at a 50 ms heartbeat and a 250 ms election timeout; `GOMAXPROCS=1`,
    /// as each Keel node runs one runtime thread (both have more threads blocked in
    /// syscalls). NATS's Raft timers are not configurable: only its threads are matched.
    Matched,
}

impl Tuning {
    fn gomaxprocs(self) -> Option<usize> {
        match self {
            Self::Default => None,
            Self::Matched => Some(KEEL_RUNTIME_THREADS),
        }
    }

    /// The peer's row name under this tuning.
    fn name(self, peer: &str) -> String {
        match self {
            Self::Default => peer.to_owned(),
            Self::Matched => format!("{peer}_matched"),
        }
    }
}

fn main() {
    if run_as_node() {
        return;
    }
    let mut criterion = Criterion::default().configure_from_args();
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    // Clients connect lazily on the runtime they are made on.
    let _entered = runtime.enter();
    if wanted(APPEND_GROUP) {
        bench_append(&mut criterion, &runtime);
    }
    if wanted(FAILOVER_GROUP) {
        bench_failover(&mut criterion, &runtime);
    }
    if wanted(steps::GROUP) {
        steps::bench(&mut criterion, &runtime);
    }
    criterion.final_summary();
}

/// Work done and time taken over every call criterion made of one benchmark.
#[derive(Clone, Copy, Default)]
struct Tally {
    count: u64,
    spent: Duration,
}

impl Tally {
    fn add(&mut self, count: u64, spent: Duration) {
        self.count += count;
        self.spent += spent;
    }

    fn per_second(self) -> f64 {
        to_f64(self.count) / self.spent.as_secs_f64()
    }

    fn mean(self) -> Duration {
        self.spent / u32::try_from(self.count.max(1)).unwrap_or(u32::MAX)
    }
}

#[expect(
    clippy::cast_precision_loss,
    reason = "a count far below 2^52, for a printed rate"
)]
fn to_f64(count: u64) -> f64 {
    count as f64
}

fn bench_append(criterion: &mut Criterion, runtime: &tokio::runtime::Runtime) {
    let mut group = criterion.benchmark_group(APPEND_GROUP);
    group
        .sample_size(10)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(4))
        .throughput(Throughput::Elements(WRITERS as u64));
    let record = Bytes::from(vec![b'k'; PAYLOAD]);
    for relaxed in [true, false] {
        let keel_name = if relaxed {
            "keel_relaxed"
        } else {
            "keel_durable"
        };
        let keel = {
            let cluster = BenchCluster::start(relaxed);
            runtime.block_on(cluster.init());
            let shared = KeelClient::new(&cluster.addrs()).expect("client");
            measure_writes(&mut group, runtime, keel_name, || {
                runtime.block_on(keel_writers(&shared, WRITERS, &record))
            })
        };
        for tuning in [Tuning::Default, Tuning::Matched] {
            let (peer_name, peer) = if relaxed {
                let name = tuning.name("nats_jetstream");
                let cluster = nats::NatsCluster::start(tuning);
                let leader = runtime.block_on(cluster.create_stream());
                let writers = runtime.block_on(cluster.writers(leader, WRITERS, PAYLOAD));
                let tally = measure_writes(&mut group, runtime, &name, || writers.clone());
                (name, tally)
            } else {
                let name = tuning.name("etcd");
                let cluster = etcd::EtcdCluster::start(tuning);
                let leader = runtime.block_on(cluster.leader());
                let writers = runtime.block_on(cluster.writers(leader, WRITERS, PAYLOAD));
                let tally = measure_writes(&mut group, runtime, &name, || writers.clone());
                (name, tally)
            };
            record_line(
                RATIO_FILE,
                &format!(
                    "{APPEND_GROUP}: {keel_name} {:.0}/s, {peer_name} {:.0}/s, keel/{peer_name} {:.2}",
                    keel.per_second(),
                    peer.per_second(),
                    keel.per_second() / peer.per_second()
                ),
            );
        }
    }
    group.finish();
}

/// Benchmarks `name`: each call runs that many writes on every writer `writers` makes.
fn measure_writes<W: Writer>(
    group: &mut BenchmarkGroup<'_, WallTime>,
    runtime: &tokio::runtime::Runtime,
    name: &str,
    mut writers: impl FnMut() -> Vec<W>,
) -> Tally {
    let mut tally = Tally::default();
    let mut latencies = Vec::new();
    group.bench_function(name, |b| {
        b.iter_custom(|iters| {
            let (elapsed, measured) = runtime.block_on(closed_loop(writers(), iters));
            tally.add(measured.len() as u64, elapsed);
            latencies.extend(measured);
            elapsed
        });
    });
    report_latency(
        "peers_latency.txt",
        &format!("{APPEND_GROUP}/{name}"),
        latencies,
    );
    tally
}

fn bench_failover(criterion: &mut Criterion, runtime: &tokio::runtime::Runtime) {
    let mut group = criterion.benchmark_group(FAILOVER_GROUP);
    group
        .sample_size(10)
        .warm_up_time(Duration::from_millis(1))
        .measurement_time(Duration::from_secs(1));
    let keel = {
        let mut cluster = BenchCluster::start(false);
        runtime.block_on(cluster.init());
        measure_failovers(&mut group, "keel", || {
            runtime.block_on(cluster.failover_once())
        })
    };
    let mut peers = Vec::new();
    for tuning in [Tuning::Default, Tuning::Matched] {
        let name = tuning.name("etcd");
        let mut cluster = etcd::EtcdCluster::start(tuning);
        runtime.block_on(cluster.leader());
        let tally = measure_failovers(&mut group, &name, || {
            runtime.block_on(cluster.failover_once())
        });
        peers.push((name, tally));
    }
    for tuning in [Tuning::Default, Tuning::Matched] {
        let name = tuning.name("nats_jetstream");
        let mut cluster = nats::NatsCluster::start(tuning);
        runtime.block_on(cluster.create_stream());
        let tally = measure_failovers(&mut group, &name, || {
            runtime.block_on(cluster.failover_once())
        });
        peers.push((name, tally));
    }
    group.finish();
    for (peer_name, peer) in peers {
        record_line(
            RATIO_FILE,
            &format!(
                "{FAILOVER_GROUP}: keel {:.0} ms, {peer_name} {:.0} ms, {peer_name}/keel {:.2}",
                keel.mean().as_secs_f64() * 1e3,
                peer.mean().as_secs_f64() * 1e3,
                peer.mean().as_secs_f64() / keel.mean().as_secs_f64()
            ),
        );
    }
}

/// Benchmarks `name`: each iteration is one failover, timed by `failover`.
fn measure_failovers(
    group: &mut BenchmarkGroup<'_, WallTime>,
    name: &str,
    mut failover: impl FnMut() -> Duration,
) -> Tally {
    let mut tally = Tally::default();
    group.bench_function(name, |b| {
        b.iter_custom(|iters| {
            let mut total = Duration::ZERO;
            for _ in 0..iters {
                total += failover();
            }
            tally.add(iters, total);
            total
        });
    });
    tally
}
