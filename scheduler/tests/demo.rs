//! README's main job, `keel demo`, runs to the end: the workflow survives the leader kill
//! and every journal entry is recorded once.

use std::process::Command;

#[test]
fn the_demo_finishes_its_workflow_across_a_leader_kill() {
    let dir = tempfile::tempdir().expect("tempdir");
    let data = dir.path().join("demo");
    let output = Command::new(env!("CARGO_BIN_EXE_keel"))
        .arg("demo")
        .arg("--data-dir")
        .arg(&data)
        .env("RUST_LOG", "error")
        .output()
        .expect("run keel demo");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "keel demo failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    for expected in [
        "SIGKILL the leader",
        "elected leader",
        "sent signal \"approve\"",
        "workflow research-1 completed",
        "with equal state digests",
        "every entry recorded exactly once across the failover: step plan, step search, sleep, signal approve, call research-1/4, step publish",
    ] {
        assert!(
            stdout.contains(expected),
            "missing {expected:?} in:\n{stdout}"
        );
    }
}

/// `keel demo agents` runs to the end: both leaders are killed and the link is cut during
/// the call between the clusters, which completes once with the writer's result.
#[test]
fn the_agents_demo_runs_the_call_once_through_leader_kills_and_a_cut_link() {
    let dir = tempfile::tempdir().expect("tempdir");
    let output = Command::new(env!("CARGO_BIN_EXE_keel"))
        .args(["demo", "agents", "--data-dir"])
        .arg(dir.path().join("agents"))
        .env("RUST_LOG", "error")
        .output()
        .expect("run keel demo agents");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "keel demo agents failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    for expected in [
        "SIGKILL research's leader",
        "SIGKILL writing's leader",
        "cut the link",
        "restored the link",
        "writing's journal of @research.",
        "the call ran once",
    ] {
        assert!(stdout.contains(expected), "{expected:?} missing:\n{stdout}");
    }
}
