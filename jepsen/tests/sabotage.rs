//! Negative controls: the sabotage build (its own target directory, never the binary the
//! real runs use) with a deliberate fault chosen at run time; a short run against each
//! fault must come out invalid, caught by the checker that looks for it.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use keel_jepsen::checker::Validity;
use keel_jepsen::nemesis::NemesisKind;
use keel_jepsen::network::NetKind;
use keel_jepsen::run::{RunConfig, RunOutcome, Workload, run};

/// Builds the sabotage `keel` (once per test binary run; cargo reuses the build).
fn sabotage_keel() -> PathBuf {
    let target = Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/sabotage");
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".to_owned());
    let status = Command::new(cargo)
        .args(["build", "--locked", "-p", "keel-scheduler", "--bin", "keel"])
        .args(["--features", "sabotage", "--target-dir"])
        .arg(&target)
        .status()
        .expect("run cargo");
    assert!(status.success(), "building the sabotage keel");
    target.join("debug/keel")
}

async fn sabotaged(keel: &Path, workload: Workload, fault: &str, seconds: u64) -> RunOutcome {
    let store = tempfile::tempdir().expect("tempdir");
    let config = RunConfig {
        workload,
        nemesis: NemesisKind::None,
        time_limit: Duration::from_secs(seconds),
        seed: 3,
        clients: 4,
        keel: keel.to_owned(),
        store: store.path().to_owned(),
        sabotage: Some(fault.to_owned()),
        progress: false,
        scenario: None,
        net: NetKind::Proxy,
        tls: false,
    };
    run(&config).await.expect("the harness runs")
}

fn count(outcome: &RunOutcome, checker: &str, anomaly: &str) -> u64 {
    outcome.checked.results[checker]["counts"][anomaly]
        .as_u64()
        .unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_deliberate_fault_is_caught() {
    let keel = sabotage_keel();
    let unfenced = sabotaged(&keel, Workload::Timers, "unfenced-fires", 5).await;
    assert_eq!(unfenced.found, Validity::Invalid);
    assert!(
        count(&unfenced, "timers", "zombie-fire") > 0,
        "{}",
        unfenced.checked.summary
    );
    let stale = sabotaged(&keel, Workload::Log, "stale-reads", 8).await;
    assert_eq!(stale.found, Validity::Invalid);
    assert!(
        count(&stale, "log", "stale-read") > 0,
        "{}",
        stale.checked.summary
    );
}
