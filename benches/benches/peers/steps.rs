//! `peers_steps10_32`: 10-step trivial workflows from 32 concurrent drivers in a closed loop
//! (each starts a workflow and waits for its result), every step durable before the next:
//! Keel (three nodes, each step committed on a majority after `fdatasync`), DBOS on
//! PostgreSQL (one server, each step a committed transaction) and Restate (one server, each
//! step a journal entry). One iteration is one workflow per driver. The ratios printed and
//! appended to `target/keel-bench/peers.txt` are Keel's steps/s over each peer's.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use bytes::Bytes;
use criterion::measurement::WallTime;
use criterion::{BenchmarkGroup, Criterion, SamplingMode, Throughput};
use keel_scheduler::client::WorkflowClient;

use super::common::{BenchCluster, Writer, closed_loop, record as record_line, report_latency};
use super::dbos::Dbos;
use super::restate::Restate;
use super::{RATIO_FILE, Tally};

pub(crate) const GROUP: &str = "peers_steps10_32";
const DRIVERS: usize = 32;
const STEPS: u64 = 10;
/// Workflows per driver run untimed after a system starts: its first calls pay for
/// connections, and Restate's for discovering the service and electing partition leaders,
/// which criterion's own warm-up would otherwise count into the ratios.
const WARM_UP_ROUNDS: u64 = 2;

/// Starts a workflow of the built-in `steps` kind and waits for its result.
struct KeelWorkflow {
    client: WorkflowClient,
    next: Arc<AtomicU64>,
}

impl Writer for KeelWorkflow {
    async fn write(&mut self) {
        let id = format!("peer-steps-{}", self.next.fetch_add(1, Ordering::Relaxed));
        self.client
            .start(&id, "steps", Bytes::from(STEPS.to_string()))
            .await
            .expect("start");
        let info = self
            .client
            .get_after(&id, Duration::from_secs(60), false)
            .await
            .expect("result");
        assert_eq!(info.status, "completed", "{info:?}");
    }
}

pub(crate) fn bench(criterion: &mut Criterion, runtime: &tokio::runtime::Runtime) {
    let mut group = criterion.benchmark_group(GROUP);
    // Flat sampling: a peer's iteration takes seconds, so each sample is one or a few.
    group
        .sample_size(10)
        .sampling_mode(SamplingMode::Flat)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(5))
        .throughput(Throughput::Elements(DRIVERS as u64 * STEPS));
    let keel = {
        let cluster = BenchCluster::start(false);
        runtime.block_on(cluster.init());
        let client = WorkflowClient::new(&cluster.addrs()).expect("client");
        let next = Arc::new(AtomicU64::new(0));
        let writers = || {
            (0..DRIVERS)
                .map(|_| KeelWorkflow {
                    client: client.clone(),
                    next: Arc::clone(&next),
                })
                .collect()
        };
        runtime.block_on(closed_loop(writers(), WARM_UP_ROUNDS));
        let mut latencies = Vec::new();
        let tally = measure(&mut group, "keel_durable", |iters| {
            let (elapsed, measured) = runtime.block_on(closed_loop(writers(), iters));
            latencies.extend(measured);
            elapsed
        });
        report_latency(
            "peers_latency.txt",
            &format!("{GROUP}/keel_durable (one workflow)"),
            latencies,
        );
        tally
    };
    let dbos = {
        let mut dbos = Dbos::start(DRIVERS);
        dbos.run(WARM_UP_ROUNDS * DRIVERS as u64);
        measure(&mut group, "dbos_postgres", |iters| {
            dbos.run(iters * DRIVERS as u64)
        })
    };
    let restate = {
        let mut restate = Restate::start(DRIVERS);
        restate.run(WARM_UP_ROUNDS * DRIVERS as u64);
        measure(&mut group, "restate", |iters| {
            restate.run(iters * DRIVERS as u64)
        })
    };
    group.finish();
    for (peer_name, peer) in [("dbos_postgres", dbos), ("restate", restate)] {
        record_line(
            RATIO_FILE,
            &format!(
                "{GROUP}: keel_durable {:.0} steps/s, {peer_name} {:.0} steps/s, keel/{peer_name} {:.1}",
                keel.per_second(),
                peer.per_second(),
                keel.per_second() / peer.per_second()
            ),
        );
    }
}

/// Benchmarks `name`: `run(iters)` runs `iters` workflows per driver and returns the time.
fn measure(
    group: &mut BenchmarkGroup<'_, WallTime>,
    name: &str,
    mut run: impl FnMut(u64) -> Duration,
) -> Tally {
    let mut tally = Tally::default();
    group.bench_function(name, |b| {
        b.iter_custom(|iters| {
            let elapsed = run(iters);
            tally.add(iters * DRIVERS as u64 * STEPS, elapsed);
            elapsed
        });
    });
    tally
}
