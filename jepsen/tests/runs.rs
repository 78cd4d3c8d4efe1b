//! Short runs against real node processes (without faults, with kills) of each workload:
//! the checkers find the histories valid and the report is complete. The ci profile
//! (`scripts/check`) runs every nemesis. (The `keel` binary must be built: `cargo test
//! --workspace` builds it.)

use std::time::Duration;

use keel_jepsen::checker::Validity;
use keel_jepsen::nemesis::NemesisKind;
use keel_jepsen::run::{RunConfig, RunOutcome, Workload, run};

fn stat(outcome: &RunOutcome, checker: &str, name: &str) -> u64 {
    outcome.checked.results[checker]["stats"][name]
        .as_u64()
        .unwrap_or(0)
}

async fn short_run(
    workload: Workload,
    nemesis: NemesisKind,
    seconds: u64,
    seed: u64,
) -> RunOutcome {
    let store = tempfile::tempdir().expect("tempdir");
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
        scenario: None,
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
    outcome
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_log_run_without_faults_is_valid() {
    let outcome = short_run(Workload::Log, NemesisKind::None, 4, 1).await;
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
    let outcome = short_run(Workload::Workflows, NemesisKind::Kill, 12, 7).await;
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
    let outcome = short_run(Workload::Timers, NemesisKind::Kill, 10, 5).await;
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
