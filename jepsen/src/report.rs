//! The report of a run, in `<store>/<test>/<timestamp>/` with a `latest` link beside:
//! `test.json` (configuration, seed, git revision), `history.jsonl`, `results.json` (the
//! verdict), `summary.txt`, and the node logs.

use std::fmt::Write as _;
use std::io::Write as _;
use std::path::{Path, PathBuf};

use anyhow::Context as _;

use crate::checker::LogVerdict;
use crate::history::{Call, NEMESIS, Op, OpType, write_jsonl};
use crate::run::RunConfig;

/// Creates `<store>/<test>/<timestamp>/` and points `<store>/<test>/latest` at it.
///
/// # Errors
/// A file error.
pub fn create_dir(store: &Path, test: &str) -> anyhow::Result<PathBuf> {
    let stamp = chrono::Utc::now().format("%Y%m%dT%H%M%S%.3fZ").to_string();
    let parent = store.join(test);
    let dir = parent.join(&stamp);
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let latest = parent.join("latest");
    // A missing link is fine; any other failure surfaces when the link is made.
    let _ = std::fs::remove_file(&latest);
    std::os::unix::fs::symlink(&stamp, &latest)
        .with_context(|| format!("linking {}", latest.display()))?;
    Ok(dir)
}

fn git_revision() -> String {
    std::process::Command::new("git")
        .args(["rev-parse", "HEAD"])
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map_or_else(
            || "unknown".to_owned(),
            |o| String::from_utf8_lossy(&o.stdout).trim().to_owned(),
        )
}

/// Writes the report files of a finished run into `dir`.
///
/// # Errors
/// A file error.
pub fn write(
    dir: &Path,
    config: &RunConfig,
    ops: &[Op],
    verdict: &LogVerdict,
) -> anyhow::Result<()> {
    let test = serde_json::json!({
        "test": config.test_name(),
        "config": config,
        "git_revision": git_revision(),
    });
    std::fs::write(dir.join("test.json"), serde_json::to_vec_pretty(&test)?)?;
    let mut history = std::io::BufWriter::new(std::fs::File::create(dir.join("history.jsonl"))?);
    write_jsonl(ops, &mut history)?;
    history.flush()?;
    let results = serde_json::json!({ "log": verdict });
    std::fs::write(
        dir.join("results.json"),
        serde_json::to_vec_pretty(&results)?,
    )?;
    std::fs::write(dir.join("summary.txt"), summary(config, ops, verdict))?;
    Ok(())
}

/// The readable summary of a run.
pub fn summary(config: &RunConfig, ops: &[Op], verdict: &LogVerdict) -> String {
    let mut out = String::new();
    let faults = ops
        .iter()
        .filter(|op| op.process == NEMESIS && op.kind == OpType::Invoke)
        .filter(|op| matches!(op.call, Call::Fault { .. }))
        .count();
    let _ = writeln!(
        out,
        "test {} · seed {} · {:?} · {} clients · {} faults injected",
        config.test_name(),
        config.seed,
        config.time_limit,
        config.clients,
        faults
    );
    let s = &verdict.stats;
    let _ = writeln!(
        out,
        "appends: {} ok, {} failed, {} unknown ({} of them applied) · reads: {} ok, {} not · final log: {} records",
        s.appends_ok,
        s.appends_failed,
        s.appends_unknown,
        s.unknown_applied,
        s.reads_ok,
        s.reads_not_ok,
        s.final_records
    );
    let _ = writeln!(out, "log checker: {:?}", verdict.validity);
    for (kind, count) in &verdict.counts {
        let _ = writeln!(out, "  {count} × {kind}");
    }
    for anomaly in &verdict.anomalies {
        let _ = writeln!(out, "  - {}: {}", anomaly.kind, anomaly.detail);
    }
    out
}
