//! Keel's Python package beside DBOS's Python library, in one run on one machine.
//!
//! - `python_steps10_32`: 10-step workflows of trivial Python steps from 32 concurrent
//!   threads in a closed loop (each starts a workflow and waits for its result), every step
//!   durable before the next: `keel_embedded` (one process, the package's embedded single
//!   node, each step journaled after `fdatasync`; `benches/peers/keel_py/steps10.py`) beside
//!   `dbos_postgres` (DBOS's driver processes, one per core, on one PostgreSQL server; each
//!   step a committed transaction; `benches/peers/dbos/steps10.py`). The ratio printed and
//!   appended to `target/keel-bench/python.txt` is Keel's steps/s over DBOS's. A third row,
//!   `keel_cluster3`, runs the same driver as node 1 of a three-node cluster of Python
//!   processes (the other two run `steps10.py member`), the driver's node leading: each step
//!   is acknowledged once a majority has it on disk.
//! - `python_recovery`: a 10-step workflow of 100 ms steps is killed (SIGKILL) after its third
//!   step; the time measured is from starting the process again to its first resumed step
//!   (the interpreter's start and imports included, for both): `keel_embedded` (a fresh data
//!   directory each time) and `dbos_postgres` (a fresh database each time). The ratio printed
//!   is DBOS's time over Keel's (above 1, Keel resumes sooner).
//!
//! Keel's side runs the package installed in `target/py-venv`: `scripts/bench-python`
//! installs it built in release and runs this benchmark; the native module's build profile
//! is printed with the results, so a debug build is never mistaken for a measurement.
#![forbid(unsafe_code)]

#[path = "common/mod.rs"]
mod common;
#[path = "peers/dbos.rs"]
mod dbos;
#[path = "peers/driver.rs"]
mod driver;
#[path = "peers/postgres.rs"]
mod postgres;
#[allow(
    dead_code,
    reason = "the peers benchmark uses the rest of this module (its server processes)"
)]
#[path = "peers/process.rs"]
mod process;

use std::io::{BufRead as _, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdout, Command, Stdio};
use std::time::{Duration, Instant};

use criterion::measurement::WallTime;
use criterion::{BenchmarkGroup, Criterion, SamplingMode, Throughput};

use common::{measuring, record, wanted};
use dbos::Dbos;
use driver::{Driver, run_split};
use postgres::Postgres;
use process::peers_dir;

const STEPS_GROUP: &str = "python_steps10_32";
const RECOVERY_GROUP: &str = "python_recovery";
const RATIO_FILE: &str = "python.txt";
const DRIVERS: usize = 32;
const STEPS: u64 = 10;
/// Workflows per driver run untimed first: connections, and the interpreters' warm-up.
const WARM_UP_ROUNDS: u64 = 2;

fn main() {
    let mut criterion = Criterion::default().configure_from_args();
    record(
        RATIO_FILE,
        &format!("keel package build: {}", build_profile()),
    );
    if wanted(STEPS_GROUP) {
        bench_steps(&mut criterion);
    }
    if wanted(RECOVERY_GROUP) {
        bench_recovery(&mut criterion);
    }
    criterion.final_summary();
}

/// The Python with Keel's package installed.
fn keel_python() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/py-venv/bin/python")
}

/// The Python with DBOS installed.
fn dbos_python() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/peers-venv/bin/python")
}

/// The build profile of the installed native module (`debug` or `release`).
fn build_profile() -> String {
    let output = Command::new(keel_python())
        .args(["-c", "import keel._native as n; print(n.BUILD_PROFILE)"])
        .output()
        .expect("run the Python of target/py-venv");
    assert!(
        output.status.success(),
        "the keel package is not installed in target/py-venv (scripts/bench-python installs it): {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).trim().to_owned()
}

/// Work done and time taken over every call criterion made of one benchmark.
#[derive(Clone, Copy, Default)]
struct Tally {
    count: u64,
    spent: Duration,
}

impl Tally {
    #[expect(
        clippy::cast_precision_loss,
        reason = "a step count far below 2^52, for a rate"
    )]
    fn per_second(self) -> f64 {
        self.count as f64 / self.spent.as_secs_f64()
    }

    fn mean(self) -> Duration {
        self.spent / u32::try_from(self.count.max(1)).unwrap_or(u32::MAX)
    }
}

fn bench_steps(criterion: &mut Criterion) {
    let mut group = criterion.benchmark_group(STEPS_GROUP);
    group
        .sample_size(10)
        .sampling_mode(SamplingMode::Flat)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(5))
        .throughput(Throughput::Elements(DRIVERS as u64 * STEPS));
    let keel = {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut driver = Driver::start(
            &keel_python(),
            &[peers_dir().join("keel_py/steps10.py").display().to_string()],
            &[
                ("KEEL_PY_DATA_DIR", dir.path().display().to_string()),
                ("KEEL_PEER_CONCURRENCY", DRIVERS.to_string()),
            ],
        );
        let drivers = std::slice::from_mut(&mut driver);
        run_split(drivers, WARM_UP_ROUNDS * DRIVERS as u64);
        measure(&mut group, "keel_embedded", |iters| {
            run_split(drivers, iters * DRIVERS as u64)
        })
    };
    let cluster = {
        let dir = tempfile::tempdir().expect("tempdir");
        let (mut driver, _followers) = cluster_of_python_processes(dir.path());
        let drivers = std::slice::from_mut(&mut driver);
        run_split(drivers, WARM_UP_ROUNDS * DRIVERS as u64);
        measure(&mut group, "keel_cluster3", |iters| {
            run_split(drivers, iters * DRIVERS as u64)
        })
    };
    let dbos = {
        let mut dbos = Dbos::start(DRIVERS);
        dbos.run(WARM_UP_ROUNDS * DRIVERS as u64);
        measure(&mut group, "dbos_postgres", |iters| {
            dbos.run(iters * DRIVERS as u64)
        })
    };
    group.finish();
    if [keel, cluster, dbos].iter().any(|tally| tally.count == 0) {
        return; // filtered out: nothing measured, nothing to record
    }
    record(
        RATIO_FILE,
        &format!(
            "{STEPS_GROUP}: keel_embedded {:.0} steps/s, keel_cluster3 {:.0} steps/s, \
             dbos_postgres {:.0} steps/s, keel_embedded/dbos {:.1}, keel_cluster3/dbos {:.1}",
            keel.per_second(),
            cluster.per_second(),
            dbos.per_second(),
            keel.per_second() / dbos.per_second(),
            cluster.per_second() / dbos.per_second()
        ),
    );
}

/// A three-node cluster of Python processes with its data under `dir`: the driver (node 1,
/// leading, ready) and the two members that follow it (killed by PID when dropped).
fn cluster_of_python_processes(dir: &Path) -> (Driver, [Driver; 2]) {
    let members: Vec<(u64, String)> = (1..=3)
        .zip(common::free_ports::<3>())
        .map(|(id, port)| (id, format!("127.0.0.1:{port}")))
        .collect();
    let members_json = format!(
        "{{{}}}",
        members
            .iter()
            .map(|(id, addr)| format!("\"{id}\": \"{addr}\""))
            .collect::<Vec<_>>()
            .join(", ")
    );
    let program = peers_dir().join("keel_py/steps10.py");
    let member = |id: u64, role: &[&str]| {
        let mut args = vec![program.display().to_string()];
        args.extend(role.iter().map(|r| (*r).to_owned()));
        Driver::spawn(
            &keel_python(),
            &args,
            &[
                (
                    "KEEL_PY_DATA_DIR",
                    dir.join(format!("node-{id}")).display().to_string(),
                ),
                ("KEEL_PY_MEMBERS", members_json.clone()),
                ("KEEL_PY_NODE_ID", id.to_string()),
                ("KEEL_PEER_CONCURRENCY", DRIVERS.to_string()),
                (
                    "KEEL_PY_LEAD",
                    if measuring() { "this" } else { "any" }.to_owned(),
                ),
            ],
        )
    };
    // All three at once: the cluster forms once every member answers.
    let mut driver = member(1, &[]);
    let mut followers = [member(2, &["member"]), member(3, &["member"])];
    for follower in &mut followers {
        follower.ready(&program);
    }
    driver.ready(&program);
    (driver, followers)
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
            tally.count += iters * DRIVERS as u64 * STEPS;
            tally.spent += elapsed;
            elapsed
        });
    });
    tally
}

/// A recovery program (`recover.py`) running with its output read line by line; killed by
/// PID when dropped.
struct Recovering {
    child: Child,
    lines: BufReader<ChildStdout>,
}

impl Recovering {
    fn start(python: &Path, program: &Path, mode: &str, env: &[(&str, String)]) -> Self {
        let mut child = Command::new(python)
            .arg(program)
            .arg(mode)
            .envs(env.iter().map(|(key, value)| (key, value)))
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap_or_else(|error| panic!("cannot start {}: {error}", python.display()));
        let lines = BufReader::new(child.stdout.take().expect("piped stdout"));
        Self { child, lines }
    }

    /// Reads lines until one starts with `prefix`; returns it.
    fn until(&mut self, prefix: &str) -> String {
        loop {
            let mut line = String::new();
            self.lines.read_line(&mut line).expect("read the program");
            assert!(!line.is_empty(), "the program exited before {prefix:?}");
            if line.starts_with(prefix) {
                return line.trim_end().to_owned();
            }
        }
    }
}

impl Drop for Recovering {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// One SIGKILL and recovery: the time from starting the program again to its first resumed
/// step, which must be step 3 or later (steps 1 and 2 were journaled before step 3's body
/// printed; step 3's outcome may not have been, so it may run again).
fn recover_once(python: &Path, program: &Path, env: &[(&str, String)]) -> Duration {
    {
        let mut first = Recovering::start(python, program, "start", env);
        first.until("step 3");
        // Dropped: SIGKILL.
    }
    let started = Instant::now();
    let mut second = Recovering::start(python, program, "resume", env);
    let line = second.until("step ");
    let elapsed = started.elapsed();
    let step: u32 = line["step ".len()..].parse().expect("a step number");
    assert!(step >= 3, "resumed at {line:?}: a journaled step ran again");
    second.until("done");
    elapsed
}

fn bench_recovery(criterion: &mut Criterion) {
    let mut group = criterion.benchmark_group(RECOVERY_GROUP);
    group
        .sample_size(10)
        .sampling_mode(SamplingMode::Flat)
        .warm_up_time(Duration::from_millis(1))
        .measurement_time(Duration::from_secs(1));
    let mut keel = Tally::default();
    group.bench_function("keel_embedded", |b| {
        b.iter_custom(|iters| {
            let mut spent = Duration::ZERO;
            for _ in 0..iters {
                let dir = tempfile::tempdir().expect("tempdir");
                spent += recover_once(
                    &keel_python(),
                    &peers_dir().join("keel_py/recover.py"),
                    &[("KEEL_PY_DATA_DIR", dir.path().display().to_string())],
                );
            }
            keel.count += iters;
            keel.spent += spent;
            spent
        });
    });
    let postgres = Postgres::start();
    let mut database = 0_u64;
    let mut dbos = Tally::default();
    group.bench_function("dbos_postgres", |b| {
        b.iter_custom(|iters| {
            let mut spent = Duration::ZERO;
            for _ in 0..iters {
                database += 1;
                spent += recover_once(
                    &dbos_python(),
                    &peers_dir().join("dbos/recover.py"),
                    &[(
                        "KEEL_PEER_DB_URL",
                        postgres.url(&format!("keel_peer_recover_{database}")),
                    )],
                );
            }
            dbos.count += iters;
            dbos.spent += spent;
            spent
        });
    });
    group.finish();
    if keel.count == 0 || dbos.count == 0 {
        return; // filtered out: nothing measured, nothing to record
    }
    record(
        RATIO_FILE,
        &format!(
            "{RECOVERY_GROUP}: process start to first resumed step: keel_embedded {:.2?}, dbos_postgres {:.2?}, dbos/keel {:.1}",
            keel.mean(),
            dbos.mean(),
            dbos.mean().as_secs_f64() / keel.mean().as_secs_f64()
        ),
    );
}
