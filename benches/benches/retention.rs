//! Whether retention holds on disk (issue #20): under steady load, finished workflows
//! expire at `retention_ms` and the space they took is reclaimed — log segments purged
//! behind snapshots, value files rewritten without the expired values, old snapshots
//! removed — so a node's data directory stops growing.
//!
//! Three node processes on loopback (this binary re-executed as a node; relaxed sync) with
//! `retention_ms` R; drivers start the built-in `steps` kind with input `10:2048` (ten 2 KiB
//! results) at a fixed rate and wait for each result. Each node's data directory is
//! measured every second as the blocks its files hold (what `du` counts). The first three
//! retention periods set each node's maximum M; the next ten minutes (the check window)
//! must stay within M plus one log segment. Under `cargo bench`: R = 60 s, 100 workflows/s,
//! a ten-minute window (about 13 minutes in all); in a test run, seconds.
//!
//! Lines are printed and appended to `target/keel-bench/retention.txt`.
//!
//! ```text
//! cargo bench -p keel-benches --bench retention
//! ```
#![forbid(unsafe_code)]

mod common;

use std::os::unix::fs::MetadataExt as _;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use common::{BenchCluster, measuring, record, run_as_node, run_steps};
use keel_scheduler::client::WorkflowClient;

const REPORT_FILE: &str = "retention.txt";
/// keel-log's segment size on the nodes (the default).
const SEGMENT_BYTES: u64 = 64 * 1024 * 1024;
const DRIVERS: u64 = 8;

/// One run's shape.
struct Plan {
    retention: Duration,
    /// Workflows started per second, across the drivers.
    rate: u64,
    /// How long the size is held to the first periods' maximum.
    window: Duration,
    /// Snapshot cadence, in entries.
    snapshot_every: u64,
}

fn main() {
    if run_as_node() {
        return;
    }
    let plan = if measuring() {
        Plan {
            retention: Duration::from_secs(60),
            rate: 100,
            window: Duration::from_secs(600),
            snapshot_every: 20_000,
        }
    } else {
        Plan {
            retention: Duration::from_secs(2),
            rate: 40,
            window: Duration::from_secs(6),
            snapshot_every: 500,
        }
    };
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    let _entered = runtime.enter();
    runtime.block_on(measure(&plan));
}

/// The blocks the files under `dir` hold, in bytes (0 for what vanished meanwhile).
fn disk_bytes(dir: &Path) -> u64 {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return 0;
    };
    entries
        .filter_map(Result::ok)
        .map(|entry| match entry.metadata() {
            Ok(meta) if meta.is_dir() => disk_bytes(&entry.path()),
            Ok(meta) => meta.blocks() * 512,
            Err(_) => 0,
        })
        .sum()
}

/// Starts workflows at `rate` per second from the drivers until `stop`; returns how many
/// finished (each result checked).
async fn load(client: &WorkflowClient, rate: u64, stop: Arc<AtomicBool>) -> u64 {
    let started = Arc::new(AtomicU64::new(0));
    let finished = Arc::new(AtomicU64::new(0));
    let period = Duration::from_secs(DRIVERS) / u32::try_from(rate).expect("a small rate");
    let input = Bytes::from_static(b"10:2048");
    let drivers: Vec<_> = (0..DRIVERS)
        .map(|_| {
            let mut client = client.clone();
            let (started, finished, stop) = (
                Arc::clone(&started),
                Arc::clone(&finished),
                Arc::clone(&stop),
            );
            let input = input.clone();
            tokio::spawn(async move {
                let mut ticks = tokio::time::interval(period);
                ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                while !stop.load(Ordering::SeqCst) {
                    ticks.tick().await;
                    let id = format!("retained-{}", started.fetch_add(1, Ordering::SeqCst));
                    run_steps(&mut client, &id, input.clone(), 10).await;
                    finished.fetch_add(1, Ordering::SeqCst);
                }
            })
        })
        .collect();
    for driver in drivers {
        driver.await.expect("driver");
    }
    finished.load(Ordering::SeqCst)
}

/// Each node's largest data directory size while `until` has not passed, sampled every
/// second.
async fn max_sizes(cluster: &BenchCluster, until: Instant) -> Vec<u64> {
    let mut max = vec![0; cluster.nodes.len()];
    while Instant::now() < until {
        for (index, max) in max.iter_mut().enumerate() {
            *max = (*max).max(disk_bytes(&cluster.data_dir(index)));
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    max
}

fn mib(bytes: u64) -> String {
    format!("{} MiB", bytes >> 20)
}

async fn measure(plan: &Plan) {
    let retention_ms = plan.retention.as_millis();
    let cluster = BenchCluster::start_tuned(
        true,
        &format!(
            "[snapshot]\nevery_entries = {}\nkeep_behind = 2000\ninstall_timeout_ms = 60000\n[scheduler]\nretention_ms = {retention_ms}\n",
            plan.snapshot_every
        ),
    );
    cluster.init().await;
    let client = WorkflowClient::new(&cluster.addrs()).expect("client");
    let stop = Arc::new(AtomicBool::new(false));
    let loading = tokio::spawn({
        let (client, stop, rate) = (client.clone(), Arc::clone(&stop), plan.rate);
        async move { load(&client, rate, stop).await }
    });
    let started = Instant::now();
    let first = max_sizes(&cluster, started + plan.retention * 3).await;
    let window = max_sizes(&cluster, Instant::now() + plan.window).await;
    stop.store(true, Ordering::SeqCst);
    let finished = loading.await.expect("load");
    let elapsed = started.elapsed();
    let mut held = true;
    for (index, (first, window)) in first.iter().zip(&window).enumerate() {
        let bound = first + SEGMENT_BYTES;
        held &= *window <= bound;
        record(
            REPORT_FILE,
            &format!(
                "node {}: data directory at most {} in the first three retention periods, at most {} in the next {:.0} s (bound {}): {}",
                index + 1,
                mib(*first),
                mib(*window),
                plan.window.as_secs_f64(),
                mib(bound),
                if *window <= bound { "held" } else { "GREW" }
            ),
        );
    }
    record(
        REPORT_FILE,
        &format!(
            "retention {} s, {} workflows of 10 × 2 KiB finished in {} s ({}/s): retention {}",
            plan.retention.as_secs(),
            finished,
            elapsed.as_secs(),
            finished / elapsed.as_secs().max(1),
            if held {
                "held on every node"
            } else {
                "did NOT hold"
            }
        ),
    );
    assert!(held, "a data directory outgrew its bound");
}
