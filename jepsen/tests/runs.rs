//! Short runs against real node processes (without faults, with kills) of each workload:
//! the checkers find the histories valid and the report is complete. The ci profile
//! (`scripts/check`) runs every nemesis. (The `keel` binary must be built: `cargo test
//! --workspace` builds it.)

use std::time::Duration;

use keel_jepsen::checker::Validity;
use keel_jepsen::nemesis::NemesisKind;
use keel_jepsen::nemesis::scenario::Scenario;
use keel_jepsen::network::NetKind;
use keel_jepsen::run::{RunConfig, RunOutcome, Workload, run};

fn stat(outcome: &RunOutcome, checker: &str, name: &str) -> u64 {
    outcome.checked.results[checker]["stats"][name]
        .as_u64()
        .unwrap_or(0)
}

/// What a short run does: `nemesis`, or `scenario` when given.
enum Faults {
    Nemesis(NemesisKind),
    Scenario(Scenario),
}

/// Every checker (the digests one included, whatever the workload) reports what it
/// checked, and checked each property at least once.
fn assert_every_property_checked(outcome: &RunOutcome) {
    let results = outcome
        .checked
        .results
        .as_object()
        .expect("results by checker");
    assert!(
        results.contains_key("digests"),
        "{}",
        outcome.checked.summary
    );
    for (checker, verdict) in results {
        let coverage = verdict["coverage"]
            .as_object()
            .unwrap_or_else(|| panic!("{checker} reports no coverage: {verdict}"));
        assert!(!coverage.is_empty(), "{checker} reports no coverage");
        for (property, times) in coverage {
            assert!(
                times.as_u64() > Some(0),
                "{checker}: {property} checked {times}"
            );
        }
    }
}

async fn short_run(workload: Workload, faults: Faults, seconds: u64, seed: u64) -> RunOutcome {
    let store = tempfile::tempdir().expect("tempdir");
    let (nemesis, scenario) = match faults {
        Faults::Nemesis(nemesis) => (nemesis, None),
        Faults::Scenario(scenario) => (NemesisKind::None, Some(scenario)),
    };
    let config = RunConfig {
        workload,
        nemesis,
        time_limit: Duration::from_secs(seconds),
        seed,
        clients: 4,
        keel: keel_jepsen::cluster::find_keel().expect("the keel binary of this build"),
        store: store.path().to_owned(),
        sabotage: None,
        progress: false,
        scenario,
        net: NetKind::Proxy,
        tls: false,
    };
    let outcome = run(&config).await.expect("the harness runs");
    for file in [
        "test.json",
        "history.jsonl",
        "results.json",
        "summary.txt",
        "node-1.log",
        "latency.png",
        "rate.png",
        "index.html",
    ] {
        assert!(outcome.dir.join(file).is_file(), "report file {file}");
    }
    assert!(
        outcome
            .dir
            .parent()
            .expect("test dir")
            .join("latest")
            .exists()
    );
    assert_eq!(
        outcome.checked.validity,
        Validity::Valid,
        "{}",
        outcome.checked.summary
    );
    assert_every_property_checked(&outcome);
    outcome
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_log_run_without_faults_is_valid() {
    let outcome = short_run(Workload::Log, Faults::Nemesis(NemesisKind::None), 4, 1).await;
    assert!(
        stat(&outcome, "log", "appends_ok") > 10,
        "{}",
        outcome.checked.summary
    );
    assert!(
        stat(&outcome, "log", "reads_ok") > 0,
        "{}",
        outcome.checked.summary
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_workflows_run_with_kills_completes_every_workflow_with_its_journal() {
    let outcome = short_run(
        Workload::Workflows,
        Faults::Nemesis(NemesisKind::Kill),
        12,
        7,
    )
    .await;
    let started = stat(&outcome, "workflows", "started_ok");
    assert!(started > 5, "{}", outcome.checked.summary);
    assert_eq!(
        stat(&outcome, "workflows", "completed"),
        started,
        "{}",
        outcome.checked.summary
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_timers_run_with_kills_fires_every_timer_once_never_early() {
    let outcome = short_run(Workload::Timers, Faults::Nemesis(NemesisKind::Kill), 10, 5).await;
    assert!(
        stat(&outcome, "timers", "scheduled_ok") > 10,
        "{}",
        outcome.checked.summary
    );
    assert!(
        stat(&outcome, "timers", "deliveries") > 10,
        "{}",
        outcome.checked.summary
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn workflows_leased_to_remote_workers_move_on_when_a_worker_pauses_past_its_lease() {
    let outcome = short_run(
        Workload::Workflows,
        Faults::Scenario(Scenario::PausedWorker),
        10,
        3,
    )
    .await;
    assert!(
        stat(&outcome, "workflows", "completed") > 5,
        "{}",
        outcome.checked.summary
    );
    // The nodes ran no workflow: each (and each child) was granted a fence by its start or
    // call and another by a worker's claim, so the log holds at least two grants per
    // acknowledged start; their journals' fences were checked against it.
    assert!(
        stat(&outcome, "log-fences", "grants") >= 2 * stat(&outcome, "workflows", "started_ok"),
        "{}",
        outcome.checked.summary
    );
}

/// As root with `ip`, `nft` and `unshare`, the program moves itself into a network
/// namespace of its own, runs each node in another, partitions them with nftables, and
/// leaves no namespace behind; elsewhere, asking for namespaces is refused (exit code 2).
#[test]
fn partitions_run_in_network_namespaces_when_root() {
    let store = tempfile::tempdir().expect("tempdir");
    let child = std::process::Command::new(env!("CARGO_BIN_EXE_keel-jepsen"))
        .args([
            "run",
            "--net",
            "netns",
            "--nemesis",
            "partition",
            "--workload",
            "log",
        ])
        .args([
            "--time-limit",
            "10",
            "--seed",
            "11",
            "--clients",
            "3",
            "--store",
        ])
        .arg(store.path())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("start keel-jepsen");
    let pid = child.id();
    let output = child.wait_with_output().expect("keel-jepsen ends");
    let stderr = String::from_utf8_lossy(&output.stderr);
    if keel_jepsen::network::unavailable().is_some() {
        assert_eq!(output.status.code(), Some(2), "{stderr}");
        assert!(stderr.contains("network namespaces: "), "{stderr}");
        return;
    }
    assert!(output.status.success(), "{stderr}");
    let dir = store.path().join("log-partition/latest");
    let test: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.join("test.json")).expect("test.json"))
            .expect("test.json is JSON");
    assert_eq!(test["config"]["net"], "netns", "{test}");
    let node_log = std::fs::read_to_string(dir.join("node-1.log")).expect("node log");
    assert!(
        node_log.contains("10.77.1.2:7000"),
        "node 1 listens in its namespace"
    );
    let history = std::fs::read_to_string(dir.join("history.jsonl")).expect("history");
    assert!(
        history.contains(r#""f":"fault","fault":"partition""#)
            || history.contains(r#""f":"fault","fault":"links""#),
        "a link fault was injected"
    );
    let left: Vec<String> = std::fs::read_dir("/run/netns")
        .map(|entries| {
            entries
                .flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|name| name.starts_with(&format!("keel-jepsen-{pid}-")))
                .collect()
        })
        .unwrap_or_default();
    assert!(left.is_empty(), "namespaces left behind: {left:?}");
}
