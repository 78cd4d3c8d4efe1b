//! Short runs against real node processes: without faults and with kills, the log checker
//! finds the history valid. (The `keel` binary must be built: `cargo test --workspace`
//! builds it.)

use std::time::Duration;

use keel_jepsen::checker::Validity;
use keel_jepsen::nemesis::NemesisKind;
use keel_jepsen::run::{RunConfig, Workload, run};

async fn short_run(nemesis: NemesisKind, seconds: u64, seed: u64) -> keel_jepsen::run::RunOutcome {
    let store = tempfile::tempdir().expect("tempdir");
    let config = RunConfig {
        workload: Workload::Log,
        nemesis,
        time_limit: Duration::from_secs(seconds),
        seed,
        clients: 4,
        keel: keel_jepsen::cluster::find_keel().expect("the keel binary of this build"),
        store: store.path().to_owned(),
    };
    let outcome = run(&config).await.expect("the harness runs");
    for file in [
        "test.json",
        "history.jsonl",
        "results.json",
        "summary.txt",
        "node-1.log",
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
    outcome
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_run_without_faults_is_valid() {
    let outcome = short_run(NemesisKind::None, 4, 1).await;
    assert_eq!(
        outcome.verdict.validity,
        Validity::Valid,
        "{:?}",
        outcome.verdict
    );
    assert!(
        outcome.verdict.stats.appends_ok > 10,
        "{:?}",
        outcome.verdict.stats
    );
    assert!(outcome.verdict.stats.reads_ok > 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_run_with_kills_is_valid() {
    let outcome = short_run(NemesisKind::Kill, 12, 7).await;
    assert_eq!(
        outcome.verdict.validity,
        Validity::Valid,
        "{:?}",
        outcome.verdict
    );
    assert!(outcome.verdict.stats.appends_ok > 10);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_run_with_pauses_is_valid() {
    let outcome = short_run(NemesisKind::Pause, 12, 11).await;
    assert_eq!(
        outcome.verdict.validity,
        Validity::Valid,
        "{:?}",
        outcome.verdict
    );
    assert!(outcome.verdict.stats.appends_ok > 10);
}
