//! Remote calls beside local child calls (`scheduler/REMOTE.md`), in one run, on two
//! three-node clusters of node processes (this binary re-executed as a node; six processes
//! on this machine, every command committed on a majority after `fdatasync`).
//!
//! `research` runs both workloads; `writing` serves the remote calls:
//! - `local_child`: the built-in `call-echo` workflow — one child call of the trivial
//!   `echo` kind in the same cluster;
//! - `remote`: the built-in `call-remote` workflow — one call of `echo` in `writing`.
//!
//! Each iteration starts a workflow and waits for its result, so the time is a whole
//! workflow with one trivial call: its start, the call's round trip, its finish.
//! `remote_calls/{local_child,remote}/1` is one caller on an idle pair of clusters;
//! `/32` is 32 concurrent callers (throughput counts calls). After the group, the p50 and
//! p99 of the one-caller round trips, the calls/s of both at 32 callers, and the ratios
//! remote/local are printed and appended to `target/keel-bench/remote_calls.txt`.
//!
//! Without `--bench` (a test run) the counts are small.
#![forbid(unsafe_code)]

mod common;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use common::{BenchCluster, percentile, record, run_as_node, wait_until};
use criterion::{BenchmarkId, Criterion, Throughput};
use keel_scheduler::client::WorkflowClient;

const FILE: &str = "remote_calls.txt";
const CONCURRENCY: [usize; 2] = [1, 32];

/// What each variant measured: one-caller latencies, and (calls, time) at 32 callers.
#[derive(Default)]
struct Measured {
    latencies: Vec<Duration>,
    calls: u64,
    busy: Duration,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Variant {
    LocalChild,
    Remote,
}

impl Variant {
    fn name(self) -> &'static str {
        match self {
            Self::LocalChild => "local_child",
            Self::Remote => "remote",
        }
    }

    fn kind_and_input(self, n: u64) -> (&'static str, String) {
        match self {
            Self::LocalChild => ("call-echo", format!("echo {n}")),
            Self::Remote => ("call-remote", format!("writers echo 600000 echo {n}")),
        }
    }

    fn expected(self, n: u64) -> String {
        match self {
            Self::LocalChild => format!("echo {n}"),
            Self::Remote => format!("remote: echo {n}"),
        }
    }
}

fn main() {
    if run_as_node() {
        return;
    }
    let mut criterion = Criterion::default().configure_from_args();
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    let _entered = runtime.enter();
    let writing = BenchCluster::start_named("writing", "[remotes.research]\nexpose = [\"echo\"]\n");
    let addresses: Vec<String> = writing.addrs().iter().map(|a| format!("\"{a}\"")).collect();
    let research = BenchCluster::start_named(
        "research",
        &format!(
            "[remotes.writers]\ncluster = \"writing\"\naddresses = [{}]\n",
            addresses.join(", ")
        ),
    );
    runtime.block_on(async {
        writing.init().await;
        research.init().await;
    });
    let client = WorkflowClient::new(&research.addrs()).expect("client");
    runtime.block_on(warm_up(&client));
    let next = Arc::new(AtomicU64::new(1));
    let measured = [Variant::LocalChild, Variant::Remote].map(|_| Mutex::new(Measured::default()));
    let mut group = criterion.benchmark_group("remote_calls");
    group
        .sample_size(10)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(10))
        .throughput(Throughput::Elements(1));
    for concurrency in CONCURRENCY {
        for (variant, measured) in [Variant::LocalChild, Variant::Remote].iter().zip(&measured) {
            group.bench_with_input(
                BenchmarkId::new(variant.name(), concurrency),
                &concurrency,
                |b, &concurrency| {
                    b.iter_custom(|iters| {
                        runtime.block_on(run_calls(
                            &client,
                            *variant,
                            &next,
                            concurrency,
                            iters,
                            measured,
                        ))
                    });
                },
            );
        }
    }
    group.finish();
    report(&measured);
    criterion.final_summary();
}

/// Runs the first workflow of each variant (untimed): kinds declared, the remote bound.
async fn warm_up(client: &WorkflowClient) {
    for variant in [Variant::LocalChild, Variant::Remote] {
        wait_until("a first call completes", || {
            let mut client = client.clone();
            async move { call(&mut client, variant, 0).await.is_some() }
        })
        .await;
    }
}

/// Runs workflow `n` of `variant` to its end; its round trip, `None` if it could not start.
async fn call(client: &mut WorkflowClient, variant: Variant, n: u64) -> Option<Duration> {
    let (kind, input) = variant.kind_and_input(n);
    let id = format!("{}-{n}", variant.name());
    let started = Instant::now();
    client.start(&id, kind, Bytes::from(input)).await.ok()?;
    let info = client
        .get_after(&id, Duration::from_secs(120), false)
        .await
        .expect("result");
    let elapsed = started.elapsed();
    assert_eq!(info.status, "completed", "{info:?}");
    assert_eq!(info.result, variant.expected(n).as_bytes(), "{info:?}");
    Some(elapsed)
}

/// Runs `count` workflows of `variant` from `concurrency` callers; returns the elapsed time
/// and adds what it saw to `measured`.
async fn run_calls(
    client: &WorkflowClient,
    variant: Variant,
    next: &Arc<AtomicU64>,
    concurrency: usize,
    count: u64,
    measured: &Mutex<Measured>,
) -> Duration {
    let started = Instant::now();
    let first = next.fetch_add(count, Ordering::SeqCst);
    let claimed = Arc::new(AtomicU64::new(first));
    let end = first + count;
    let callers: Vec<_> = (0..concurrency)
        .map(|_| {
            let mut client = client.clone();
            let claimed = Arc::clone(&claimed);
            tokio::spawn(async move {
                let mut latencies = Vec::new();
                loop {
                    let n = claimed.fetch_add(1, Ordering::SeqCst);
                    if n >= end {
                        return latencies;
                    }
                    latencies.push(call(&mut client, variant, n).await.expect("start"));
                }
            })
        })
        .collect();
    let mut latencies = Vec::new();
    for caller in callers {
        latencies.extend(caller.await.expect("caller"));
    }
    let elapsed = started.elapsed();
    let mut measured = measured.lock().expect("lock");
    if concurrency == 1 {
        measured.latencies.extend(latencies);
    } else {
        measured.calls += count;
        measured.busy += elapsed;
    }
    elapsed
}

/// Prints the one-caller percentiles, the 32-caller throughput and the ratios.
fn report(measured: &[Mutex<Measured>; 2]) {
    let [local, remote] = measured.each_ref().map(|m| {
        let mut m = m.lock().expect("lock");
        m.latencies.sort_unstable();
        let rate = if m.busy.is_zero() {
            0.0
        } else {
            #[expect(clippy::cast_precision_loss, reason = "a call count")]
            let calls = m.calls as f64;
            calls / m.busy.as_secs_f64()
        };
        (
            percentile(&m.latencies, 0.50),
            percentile(&m.latencies, 0.99),
            rate,
            m.latencies.len(),
        )
    });
    for (name, (p50, p99, rate, n)) in [("local_child", local), ("remote", remote)] {
        record(
            FILE,
            &format!(
                "remote_calls {name}: 1 caller n={n} p50={p50:.2?} p99={p99:.2?}; 32 callers {rate:.0} calls/s"
            ),
        );
    }
    let ratio = |a: Duration, b: Duration| a.as_secs_f64() / b.as_secs_f64().max(f64::EPSILON);
    record(
        FILE,
        &format!(
            "remote_calls ratios remote/local: p50 {:.2} (target <= 2), p99 {:.2}, calls/s at 32 callers {:.2} (target >= 0.3)",
            ratio(remote.0, local.0),
            ratio(remote.1, local.1),
            remote.2 / local.2.max(f64::EPSILON)
        ),
    );
}
