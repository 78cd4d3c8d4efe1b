//! What retained workflows cost a cluster (issue #20), on three node processes on loopback
//! (this binary re-executed as a node; relaxed sync, as in the issue's measurement).
//!
//! For each count N (10 000 and 100 000 under `cargo bench`; 200 in a test run):
//! - **leader memory**: the leader's `RssAnon` (anonymous resident memory: heap, not the
//!   mapped log) after 64 warm-up workflows, then N finished workflows later, each time once
//!   load stopped and the leader built a snapshot (`BuildSnapshot`): `(after − before) / N`.
//!   `RssFile` (mapped pages of files) is reported beside it. Workflows are the built-in
//!   `steps` kind with input `10:2048`: ten steps, each result 2 KiB; ids are 36 bytes;
//!   32 drivers start them and wait for their results (every result checked).
//! - **snapshot**: how long the leader's `BuildSnapshot` took, and how long applying waited
//!   meanwhile for the snapshot's image (`keel_snapshot_capture_seconds` on its metrics
//!   endpoint: the copy taken under the state machine's lock; encoding and writing follow
//!   off it).
//! - **snapshot transfer**: a follower killed, its data directory wiped, started again and
//!   brought back by `keel repair`'s steps (out of the voters, back as a learner, a voter
//!   again): the time from its start on the empty directory until it applied everything the
//!   leader had, and the bytes of the snapshot it received (the live values travel in it;
//!   `keel_snapshot_received_bytes_total` on its metrics endpoint).
//! - **restart**: every node killed with SIGKILL, then all started again; the time from
//!   their start to the first successful `status` of a retained workflow (its state loaded)
//!   and a successful `start` of a new one. Warm (files in the page cache) and cold (every
//!   data file dropped from it first).
//!
//! Lines are printed and appended to `target/keel-bench/scale.txt`. `KEEL_SCALE_COUNTS`
//! (comma-separated) replaces the counts; `KEEL_SCALE_NODES=1` runs one node, a cluster of
//! its own (no transfer then), for the 1 000 000 row run by hand (three nodes would need
//! three times its ~25 GB of values on one disk).
//!
//! ```text
//! cargo bench -p keel-benches --bench scale
//! KEEL_SCALE_COUNTS=1000000 KEEL_SCALE_NODES=1 cargo bench -p keel-benches --bench scale
//! ```
#![forbid(unsafe_code)]

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use common::{
    BenchCluster, drop_page_cache, leader, measuring, metric, record, run_as_node, run_steps,
    scrape_metrics, wait_until,
};
use keel_raft::client::KeelClient;
use keel_scheduler::client::WorkflowClient;

const DRIVERS: u64 = 32;
const STEPS: usize = 10;
const RESULT_BYTES: usize = 2048;
const WARM_UP: u64 = 64;
const REPORT_FILE: &str = "scale.txt";

fn main() {
    if run_as_node() {
        return;
    }
    let counts: Vec<u64> = match std::env::var("KEEL_SCALE_COUNTS") {
        Ok(counts) => counts
            .split(',')
            .map(|n| {
                n.trim()
                    .parse()
                    .expect("KEEL_SCALE_COUNTS: counts, comma-separated")
            })
            .collect(),
        Err(_) if measuring() => vec![10_000, 100_000],
        Err(_) => vec![200],
    };
    let single = std::env::var("KEEL_SCALE_NODES").is_ok_and(|nodes| nodes == "1");
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    let _entered = runtime.enter();
    for count in counts {
        runtime.block_on(measure(count, single));
    }
}

/// A 36-byte id, unique to `n`, shaped like a UUID.
fn workflow_id(n: u64) -> String {
    let h = n.wrapping_mul(0x9E37_79B9_7F4A_7C15);
    format!(
        "{:08x}-{:04x}-4{:03x}-8{:03x}-{:012x}",
        h >> 32,
        (h >> 16) & 0xffff,
        h & 0xfff,
        (h >> 12) & 0xfff,
        n
    )
}

/// A field of `/proc/PID/status`, in KiB.
fn status_kib(pid: u32, field: &str) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("node status");
    status
        .lines()
        .find_map(|line| line.strip_prefix(field))
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|kib| kib.parse().ok())
        .expect("a field of /proc/PID/status")
}

/// Runs workflows `first..first + count` from 32 drivers; checks each result.
async fn run(client: &WorkflowClient, first: u64, count: u64) {
    let next = Arc::new(AtomicU64::new(first));
    let end = first + count;
    let input = Bytes::from(format!("{STEPS}:{RESULT_BYTES}"));
    let drivers: Vec<_> = (0..DRIVERS)
        .map(|_| {
            let mut client = client.clone();
            let next = Arc::clone(&next);
            let input = input.clone();
            tokio::spawn(async move {
                loop {
                    let n = next.fetch_add(1, Ordering::SeqCst);
                    if n >= end {
                        return;
                    }
                    run_steps(&mut client, &workflow_id(n), input.clone(), STEPS as u64).await;
                }
            })
        })
        .collect();
    for driver in drivers {
        driver.await.expect("driver");
    }
}

/// The leader's index in the cluster, its process id, and how long it took to build a
/// snapshot covering everything it applied.
///
/// A node that builds its snapshot on its runtime's thread may not answer HTTP/2 pings
/// meanwhile, and the call then fails: the node's status then says when the snapshot is
/// there.
async fn snapshot_on_leader(cluster: &BenchCluster) -> (usize, u32, Duration) {
    let mut client = cluster.client();
    let status = leader(&mut client).await.expect("a leader");
    let index = cluster.index_of(status.node_id);
    let addr = cluster.nodes[index].1.clone();
    let applied = status.applied_index.expect("applied");
    let started = Instant::now();
    if let Err(error) = client.build_snapshot(&addr).await {
        eprintln!("BuildSnapshot failed ({error}); waiting for the snapshot in its status");
        wait_until("the leader's snapshot", || {
            node_status_says(client.clone(), addr.clone(), move |s| {
                s.snapshot_index >= Some(applied)
            })
        })
        .await;
    }
    (index, pid_of(cluster, index), started.elapsed())
}

/// Whether the node at `addr` answers its status and the status satisfies `holds`.
async fn node_status_says(
    mut client: KeelClient,
    addr: String,
    holds: impl Fn(&keel_raft::pb::client::StatusResponse) -> bool,
) -> bool {
    let Ok(mut node) = client.node(&addr) else {
        return false;
    };
    node.status(keel_raft::pb::client::StatusRequest {})
        .await
        .is_ok_and(|status| holds(&status.into_inner()))
}

/// Node `index`'s snapshot images so far: the total time applying waited for them, in
/// seconds, and how many.
fn captures(cluster: &BenchCluster, index: usize) -> (f64, f64) {
    let text = scrape_metrics(&cluster.metrics[index]).expect("the node's metrics");
    (
        metric(&text, "keel_snapshot_capture_seconds_sum"),
        metric(&text, "keel_snapshot_capture_seconds_count"),
    )
}

/// The process id of node `index`.
fn pid_of(cluster: &BenchCluster, index: usize) -> u32 {
    cluster.nodes[index].3.as_ref().expect("running").id()
}

async fn measure(count: u64, single: bool) {
    let mut cluster = if single {
        BenchCluster::start_single(true)
    } else {
        BenchCluster::start(true)
    };
    cluster.init().await;
    let client = WorkflowClient::new(&cluster.addrs()).expect("client");
    run(&client, 0, WARM_UP).await;
    snapshot_on_leader(&cluster).await;
    // Every node's: leadership may move during the load (a node that blocks building a
    // snapshot loses it), and the leader at the end is the one measured.
    let anon_before: Vec<u64> = (0..cluster.nodes.len())
        .map(|index| status_kib(pid_of(&cluster, index), "RssAnon:"))
        .collect();
    let loading = Instant::now();
    run(&client, WARM_UP, count).await;
    let loaded = loading.elapsed();
    let captures_before: Vec<(f64, f64)> = (0..cluster.nodes.len())
        .map(|index| captures(&cluster, index))
        .collect();
    let (index, pid_after, snapshot_took) = snapshot_on_leader(&cluster).await;
    let (sum_before, count_before) = captures_before[index];
    let (sum_after, count_after) = captures(&cluster, index);
    let image_ms = (sum_after - sum_before) / (count_after - count_before).max(1.0) * 1e3;
    let anon_before = anon_before[index];
    let anon_after = status_kib(pid_after, "RssAnon:");
    let file_after = status_kib(pid_after, "RssFile:");
    let journal = client
        .clone()
        .get(&workflow_id(WARM_UP), true)
        .await
        .expect("a retained workflow");
    assert_eq!(journal.journal.len(), STEPS, "{journal:?}");
    assert!(
        journal
            .journal
            .iter()
            .all(|e| e.value.len() == RESULT_BYTES),
        "every step result is {RESULT_BYTES} bytes"
    );
    let per_workflow = anon_after.saturating_sub(anon_before) * 1024 / count;
    let line = format!(
        "{count} retained 10-step workflows (2 KiB results, 36-byte ids) on {} node(s): leader RssAnon {} → {} MiB, {per_workflow} B per workflow; RssFile {} MiB; load {:.1} s ({:.0} steps/s); snapshot built in {:.0} ms, apply waited {image_ms:.1} ms for its image",
        cluster.nodes.len(),
        anon_before / 1024,
        anon_after / 1024,
        file_after / 1024,
        loaded.as_secs_f64(),
        f64::from(u32::try_from(count * STEPS as u64).expect("steps fit u32"))
            / loaded.as_secs_f64(),
        snapshot_took.as_secs_f64() * 1000.0
    );
    record(REPORT_FILE, &line);
    if !single {
        report_transfer(&mut cluster, count).await;
    }
    for cold in [false, true] {
        let took = restart(&mut cluster, count, cold).await;
        let line = format!(
            "{count} retained: restart of every node ({}) after SIGKILL to a retained workflow's status and a new start, {}: {:.0} ms",
            cluster.nodes.len(),
            if cold { "cold" } else { "warm" },
            took.as_secs_f64() * 1000.0
        );
        record(REPORT_FILE, &line);
    }
}

/// Measures a snapshot transfer to a wiped follower and records it.
async fn report_transfer(cluster: &mut BenchCluster, count: u64) {
    let (caught_up, received) = transfer_to_wiped(cluster).await;
    // From 10 000 on, the log behind the leader's snapshot is purged (10 000 entries
    // kept behind it), so the follower can only catch up from a snapshot; a check run's
    // 200 catch up from the log.
    assert!(
        received > 0.0 || !measuring(),
        "the wiped follower received a snapshot"
    );
    let line = format!(
        "{count} retained: a wiped follower brought back by `keel repair`'s steps caught up in {:.0} ms, receiving {:.1} MiB of snapshot",
        caught_up.as_secs_f64() * 1000.0,
        received / f64::from(1u32 << 20)
    );
    record(REPORT_FILE, &line);
}

/// Wipes a follower and brings it back the way `keel repair` does; returns the time from
/// its start on the empty directory until it applied what the leader had applied, and the
/// bytes of snapshot it received.
async fn transfer_to_wiped(cluster: &mut BenchCluster) -> (Duration, f64) {
    let mut client = cluster.client();
    let status = leader(&mut client).await.expect("a leader");
    let target = status.applied_index.expect("applied");
    let follower = (cluster.index_of(status.node_id) + 1) % cluster.nodes.len();
    let (id, addr) = (cluster.nodes[follower].0, cluster.nodes[follower].1.clone());
    let all: Vec<u64> = cluster.nodes.iter().map(|node| node.0).collect();
    let others: Vec<u64> = all.iter().copied().filter(|&v| v != id).collect();
    cluster.kill(follower);
    std::fs::remove_dir_all(cluster.data_dir(follower)).expect("wipe the follower");
    let started = Instant::now();
    cluster.spawn(follower);
    client
        .change_membership(&others, false)
        .await
        .expect("the wiped follower leaves the voters");
    wait_until("the wiped follower added back as a learner", || {
        let mut client = client.clone();
        let addr = addr.clone();
        async move { client.add_learner(id, &addr, false).await.is_ok() }
    })
    .await;
    wait_until("the wiped follower caught up", || {
        node_status_says(client.clone(), addr.clone(), move |s| {
            s.applied_index >= Some(target)
        })
    })
    .await;
    let caught_up = started.elapsed();
    client
        .change_membership(&all, false)
        .await
        .expect("the follower is a voter again");
    let text = scrape_metrics(&cluster.metrics[follower]).expect("the follower's metrics");
    (
        caught_up,
        metric(&text, "keel_snapshot_received_bytes_total"),
    )
}

/// Kills every node, starts them again and times the first status of a retained workflow
/// and the first start of a new one.
async fn restart(cluster: &mut BenchCluster, count: u64, cold: bool) -> Duration {
    for index in 0..cluster.nodes.len() {
        cluster.kill(index);
    }
    if cold {
        for index in 0..cluster.nodes.len() {
            drop_page_cache(&cluster.data_dir(index));
        }
    }
    let started = Instant::now();
    for index in 0..cluster.nodes.len() {
        cluster.spawn(index);
    }
    let client = WorkflowClient::new(&cluster.addrs()).expect("client");
    let retained = workflow_id(WARM_UP + count - 1);
    wait_until("a retained workflow's status", || {
        let mut client = client.clone();
        let retained = retained.clone();
        async move {
            client
                .get(&retained, false)
                .await
                .is_ok_and(|info| info.status == "completed")
        }
    })
    .await;
    // A fresh id per attempt: an attempt whose outcome was unknown may have started one.
    let attempts = Arc::new(AtomicU64::new(0));
    wait_until("a new workflow started", || {
        let mut client = client.clone();
        let fresh = format!(
            "after-restart-{}-{}",
            u64::from(cold),
            attempts.fetch_add(1, Ordering::SeqCst)
        );
        async move {
            client
                .start(&fresh, "steps", Bytes::from("1"))
                .await
                .is_ok()
        }
    })
    .await;
    started.elapsed()
}
