//! Workflow and timer benchmarks on three node processes on loopback (this binary
//! re-executed as a node), every command committed on a majority after `fdatasync` unless
//! named relaxed.
//!
//! - `workflows_steps10/durable/{1,32}`: 10-step trivial workflows (the built-in `steps`
//!   kind) run to completion by 1 or 32 concurrent drivers (start, then wait for the result).
//!   Throughput counts steps; workflows/s is a tenth of it.
//! - `timers_fire_lateness/100k_pending/{durable,relaxed}`: with 100 000 timers pending (due
//!   in an hour), waves of 100 probe timers, each wave scheduled at once and due spread over
//!   the next 0.3–1.3 s; the time per iteration is a wave's mean lateness of a probe's fire
//!   as seen by a watcher on the leader (after commit and apply). p50/p99 of the lateness,
//!   of its two parts (due time to the fire's stamp; stamp to the fire seen) and of the
//!   commit latency of the probes' own scheduling requests and of the 100 000 fills are
//!   printed and appended to `target/keel-bench/workflows_latency.txt`, with the count of
//!   probes seen fired before their due time or stamped before it (both must be 0: an
//!   early fire is counted and fails the benchmark, never clamped to zero lateness). The
//!   relaxed cluster
//!   (no `fdatasync` on the commit path) shows how much of the durable lateness is the
//!   disk's.
//! - `workflows_wake/after_leader_kill`: a workflow sleeps; the leader is killed just before
//!   the sleep is due; the time from the new leader's election to the workflow waking.
//! - memory per pending timer: one million named timers applied to a scheduler state machine
//!   in this process; the resident-memory growth per timer is printed and appended to the
//!   same file.
//!
//! Without `--bench` (a test run) the counts are small.
#![forbid(unsafe_code)]

mod common;

use std::io::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use common::{
    BenchCluster, leader, measuring, record, report_latency, run_as_node, run_steps, wait_until,
    wanted,
};
use criterion::{BenchmarkId, Criterion, SamplingMode, Throughput};
use keel_raft::application::{Application, AppliedAt};
use keel_raft::client::KeelClient;
use keel_scheduler::client::{TimerDue, WorkflowClient};
use keel_scheduler::machine::SchedulerMachine;
use keel_scheduler::{Command, Due, Stamped};

const CONCURRENCY: [usize; 2] = [1, 32];
const STEPS: u64 = 10;
const LATENCY_FILE: &str = "workflows_latency.txt";

fn main() {
    if run_as_node() {
        return;
    }
    let mut criterion = Criterion::default().configure_from_args();
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    // Clients connect lazily on the runtime they are made on.
    let _entered = runtime.enter();
    if wanted("workflows_steps10") {
        bench_steps(&mut criterion, &runtime);
    }
    if wanted("timers_fire_lateness") {
        // Relaxed (acknowledged from a majority's memory, no fsync on the path) is the
        // baseline that shows how much of the lateness is the disk's.
        for relaxed in [false, true] {
            bench_lateness(&mut criterion, &runtime, relaxed);
        }
    }
    if wanted("workflows_wake") {
        bench_wake(&mut criterion, &runtime);
    }
    if wanted("timers_memory") {
        report_timer_memory();
    }
    criterion.final_summary();
}

fn bench_steps(criterion: &mut Criterion, runtime: &tokio::runtime::Runtime) {
    let cluster = BenchCluster::start(false);
    runtime.block_on(cluster.init());
    let client = WorkflowClient::new(&cluster.addrs()).expect("client");
    let next = Arc::new(AtomicU64::new(0));
    let mut group = criterion.benchmark_group("workflows_steps10");
    group
        .sample_size(10)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(10))
        .throughput(Throughput::Elements(STEPS));
    for concurrency in CONCURRENCY {
        group.bench_with_input(
            BenchmarkId::new("durable", concurrency),
            &concurrency,
            |b, &concurrency| {
                b.iter_custom(|iters| {
                    runtime.block_on(run_workflows(&client, &next, concurrency, iters))
                });
            },
        );
    }
    group.finish();
}

/// Runs `count` 10-step workflows from `concurrency` drivers; returns the elapsed time.
async fn run_workflows(
    client: &WorkflowClient,
    next: &Arc<AtomicU64>,
    concurrency: usize,
    count: u64,
) -> Duration {
    let started = Instant::now();
    let first = next.fetch_add(count, Ordering::SeqCst);
    let claimed = Arc::new(AtomicU64::new(first));
    let end = first + count;
    let drivers: Vec<_> = (0..concurrency)
        .map(|_| {
            let mut client = client.clone();
            let claimed = Arc::clone(&claimed);
            tokio::spawn(async move {
                loop {
                    let n = claimed.fetch_add(1, Ordering::SeqCst);
                    if n >= end {
                        return;
                    }
                    let input = Bytes::from(STEPS.to_string());
                    run_steps(&mut client, &format!("w-{n}"), input, STEPS).await;
                }
            })
        })
        .collect();
    for driver in drivers {
        driver.await.expect("driver");
    }
    started.elapsed()
}

/// The wall clock in ms with sub-ms precision: due times are wall-clock times.
#[expect(
    clippy::disallowed_methods,
    reason = "lateness is measured on the wall clock the nodes stamp due times with"
)]
fn now_ms_f64() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64() * 1e3)
}

/// Fires seen by a watcher on the leader: `name → (seen at, ms; the fire's stamp, ms)`.
type Fires = Arc<Mutex<std::collections::HashMap<String, (f64, u64)>>>;

/// Probe timers per measured wave, scheduled together and due spread over one second.
const PROBES_PER_WAVE: u64 = 100;

/// Each probe's lateness, split where the leader stamped its fire.
#[derive(Default)]
struct Lateness {
    /// Due time to the fire seen by the watcher.
    total: Vec<Duration>,
    /// Due time to the fire command's stamp: the timer driver waking (ms resolution).
    to_stamp: Vec<Duration>,
    /// The stamp to the fire seen: commit on a majority, apply, delivery to the watcher.
    stamp_to_seen: Vec<Duration>,
    /// Commit latency of the probes' own scheduling requests, in the same phase.
    scheduling: Vec<Duration>,
    /// Probes seen fired before their due time, and the largest such lead in ms (an early
    /// fire is a bug: it is counted, never folded into the lateness as zero).
    early: u64,
    early_max_ms: f64,
    /// Fires stamped before their due time (the state machine must refuse those).
    stamped_early: u64,
}

fn bench_lateness(criterion: &mut Criterion, runtime: &tokio::runtime::Runtime, relaxed: bool) {
    let pending: u64 = if measuring() { 100_000 } else { 1_000 };
    let sync = if relaxed { "relaxed" } else { "durable" };
    let cluster = BenchCluster::start(relaxed);
    runtime.block_on(cluster.init());
    let client = WorkflowClient::new(&cluster.addrs()).expect("client");
    let commit_latencies = runtime.block_on(fill_pending(&client, pending));
    let leader_addr = runtime.block_on(async {
        let mut raft = KeelClient::new(&cluster.addrs()).expect("client");
        let id = leader(&mut raft).await.expect("leader").node_id;
        cluster.nodes[cluster.index_of(id)].1.clone()
    });
    let fires: Fires = Arc::default();
    let watcher = runtime.spawn(watch_fires(client.clone(), leader_addr, Arc::clone(&fires)));
    let lateness = Mutex::new(Lateness::default());
    let next = AtomicU64::new(0);
    let mut group = criterion.benchmark_group("timers_fire_lateness");
    // One iteration is a wave of probes taking about 1.5 s of wall time, but what it
    // reports is the wave's mean lateness (milliseconds): a short target keeps criterion
    // at one or two waves per sample.
    group
        .sample_size(10)
        .sampling_mode(SamplingMode::Flat)
        .warm_up_time(Duration::from_millis(1))
        .measurement_time(Duration::from_millis(50));
    group.bench_function(format!("{}k_pending/{sync}", pending / 1000), |b| {
        b.iter_custom(|waves| {
            let mut mean = Duration::ZERO;
            for _ in 0..waves {
                mean += runtime.block_on(probe_wave(&client, &fires, &next, &lateness));
            }
            mean
        });
    });
    group.finish();
    watcher.abort();
    let lateness = lateness.into_inner().expect("lateness");
    report_lateness(&format!("{pending} pending, {sync}"), lateness);
    report_latency(
        LATENCY_FILE,
        &format!(
            "commit latency of the same run ({sync}; scheduling {pending} timers, 64 clients)"
        ),
        commit_latencies,
    );
}

/// Records each probe's fire (seen now) into `fires` as the leader at `addr` delivers it.
async fn watch_fires(mut client: WorkflowClient, addr: String, fires: Fires) {
    let watched = client
        .watch_fires(&addr, |fire| {
            fires
                .lock()
                .expect("fires")
                .insert(fire.name, (now_ms_f64(), fire.fired_ms));
            true
        })
        .await;
    if let Err(error) = watched {
        eprintln!("fire watcher stopped: {error}");
    }
}

fn report_lateness(run: &str, lateness: Lateness) {
    let early = format!(
        "timer fires early, {run}: {} seen before due (largest lead {:.3} ms), {} stamped \
         before due; both must be 0",
        lateness.early, lateness.early_max_ms, lateness.stamped_early
    );
    record(LATENCY_FILE, &early);
    assert_eq!(lateness.early + lateness.stamped_early, 0, "{early}");
    report_latency(
        LATENCY_FILE,
        &format!("timer fire lateness, {run}"),
        lateness.total,
    );
    report_latency(
        LATENCY_FILE,
        "  of which due to the fire's stamp (driver wake-up, ms resolution)",
        lateness.to_stamp,
    );
    report_latency(
        LATENCY_FILE,
        "  of which stamp to fire seen (majority commit, apply, delivery)",
        lateness.stamp_to_seen,
    );
    report_latency(
        LATENCY_FILE,
        "commit latency of the same phase (the probes' scheduling requests, 100 at once)",
        lateness.scheduling,
    );
}

/// Schedules `count` timers due in an hour from 64 clients; returns each request's latency.
async fn fill_pending(client: &WorkflowClient, count: u64) -> Vec<Duration> {
    let tasks: Vec<_> = (0..64)
        .map(|task| {
            let mut client = client.clone();
            tokio::spawn(async move {
                let mut latencies = Vec::new();
                for i in (task..count).step_by(64) {
                    let sent = Instant::now();
                    client
                        .schedule_timer(
                            &format!("pending-{i}"),
                            TimerDue::After(Duration::from_secs(3600)),
                            Bytes::new(),
                        )
                        .await
                        .expect("schedule");
                    latencies.push(sent.elapsed());
                }
                latencies
            })
        })
        .collect();
    let mut latencies = Vec::new();
    for task in tasks {
        latencies.extend(task.await.expect("filler"));
    }
    latencies
}

/// Schedules a wave of [`PROBES_PER_WAVE`] probe timers at once, due 0.3–1.3 s ahead,
/// and waits for their fires; returns their mean lateness (fire seen on the leader minus
/// due time).
async fn probe_wave(
    client: &WorkflowClient,
    fires: &Fires,
    next: &AtomicU64,
    all: &Mutex<Lateness>,
) -> Duration {
    let first = next.fetch_add(PROBES_PER_WAVE, Ordering::SeqCst);
    let waves: Vec<_> = (first..first + PROBES_PER_WAVE)
        .map(|n| {
            let mut client = client.clone();
            tokio::spawn(async move {
                let name = format!("probe-{n}");
                let delay = Duration::from_millis(300 + (n * 37) % 1000);
                let sent = Instant::now();
                let (due_ms, _) = client
                    .schedule_timer(&name, TimerDue::After(delay), Bytes::new())
                    .await
                    .expect("probe");
                (name, due_ms, sent.elapsed())
            })
        })
        .collect();
    let mut scheduled = Vec::new();
    for wave in waves {
        scheduled.push(wave.await.expect("probe scheduler"));
    }
    let mut total = Duration::ZERO;
    all.lock()
        .expect("lateness")
        .scheduling
        .extend(scheduled.iter().map(|(_, _, latency)| *latency));
    for (name, due_ms, _) in scheduled {
        let (seen_ms, stamp_ms) = wait_fired(fires, &name).await;
        #[expect(
            clippy::cast_precision_loss,
            reason = "ms since the epoch fit an f64's mantissa"
        )]
        let (due, stamp) = (due_ms as f64, stamp_ms as f64);
        let mut all = all.lock().expect("lateness");
        if seen_ms < due {
            all.early += 1;
            all.early_max_ms = all.early_max_ms.max(due - seen_ms);
        }
        all.stamped_early += u64::from(stamp_ms < due_ms);
        // Lateness of the fires that were not early (early ones are counted above).
        let since = |later: f64, earlier: f64| {
            Duration::from_secs_f64(if later >= earlier {
                (later - earlier) / 1e3
            } else {
                0.0
            })
        };
        let late = since(seen_ms, due);
        if seen_ms >= due {
            all.total.push(late);
            all.to_stamp.push(since(stamp, due));
            all.stamp_to_seen.push(since(seen_ms, stamp));
        }
        total += late;
    }
    total / u32::try_from(PROBES_PER_WAVE).expect("wave size fits u32")
}

async fn wait_fired(fires: &Fires, name: &str) -> (f64, u64) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Some(seen) = fires.lock().expect("fires").get(name) {
            return *seen;
        }
        assert!(Instant::now() < deadline, "probe {name} never fired");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

fn bench_wake(criterion: &mut Criterion, runtime: &tokio::runtime::Runtime) {
    let mut cluster = BenchCluster::start(false);
    runtime.block_on(cluster.init());
    let next = AtomicU64::new(0);
    let mut group = criterion.benchmark_group("workflows_wake");
    group
        .sample_size(10)
        .warm_up_time(Duration::from_millis(1))
        .measurement_time(Duration::from_secs(1));
    group.bench_function("after_leader_kill", |b| {
        b.iter_custom(|iters| {
            let mut total = Duration::ZERO;
            for _ in 0..iters {
                let n = next.fetch_add(1, Ordering::SeqCst);
                total += runtime.block_on(one_wake(&mut cluster, n));
            }
            total
        });
    });
    group.finish();
}

/// Starts a workflow sleeping 1.5 s, kills the leader 100 ms before the sleep is due, and
/// times from the new leader's election to the workflow's sleep ending.
async fn one_wake(cluster: &mut BenchCluster, n: u64) -> Duration {
    const SLEEP: Duration = Duration::from_millis(1500);
    let mut client = WorkflowClient::new(&cluster.addrs()).expect("client");
    let mut raft = KeelClient::new(&cluster.addrs()).expect("client");
    let id = format!("sleeper-{n}");
    let old = leader(&mut raft).await.expect("leader").node_id;
    let started = Instant::now();
    client
        .start(&id, "sleep", Bytes::from(SLEEP.as_millis().to_string()))
        .await
        .expect("start");
    tokio::time::sleep(SLEEP.saturating_sub(Duration::from_millis(100))).await;
    let index = cluster.index_of(old);
    cluster.kill(index);
    wait_until("a new leader", || {
        let mut raft = raft.clone();
        async move { leader(&mut raft).await.is_some_and(|l| l.node_id != old) }
    })
    .await;
    let elected = Instant::now();
    loop {
        let info = client.get(&id, true).await.expect("get");
        if info.journal.first().is_some_and(|e| e.state == "done") {
            break;
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    let woke = elected.elapsed();
    assert!(started.elapsed() >= SLEEP, "the sleep ended early");
    cluster.respawn_and_catch_up(index).await;
    woke
}

/// Resident memory of this process, in bytes.
fn resident_bytes() -> u64 {
    let statm = std::fs::read_to_string("/proc/self/statm").expect("/proc/self/statm");
    let pages: u64 = statm
        .split_whitespace()
        .nth(1)
        .and_then(|v| v.parse().ok())
        .expect("resident pages");
    pages * 4096
}

/// Applies a million named timers to a scheduler state machine and reports the resident
/// memory each costs.
fn report_timer_memory() {
    let count: u64 = if measuring() { 1_000_000 } else { 10_000 };
    let mut machine = SchedulerMachine::new();
    let before = resident_bytes();
    for i in 0..count {
        let command = Stamped {
            stamp_ms: 1_000,
            mono: None,
            command: Command::ScheduleTimer {
                name: format!("timer-{i:07}"),
                due: Due::After {
                    delay_ms: 3_600_000,
                },
                payload: Vec::new(),
            },
        };
        machine.apply(
            AppliedAt {
                term: 1,
                index: i + 1,
            },
            &Bytes::from(keel_scheduler::encode_command(&command)),
        );
    }
    let after = resident_bytes();
    assert_eq!(machine.read().timers().len() as u64, count);
    let line = format!(
        "memory per pending named timer: {} bytes ({count} timers, resident {} MiB → {} MiB)",
        after.saturating_sub(before) / count,
        before >> 20,
        after >> 20
    );
    eprintln!("{line}");
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/keel-bench");
    if measuring()
        && std::fs::create_dir_all(&dir).is_ok()
        && let Ok(mut file) = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(dir.join(LATENCY_FILE))
    {
        let _ = writeln!(file, "{line}");
    }
}
