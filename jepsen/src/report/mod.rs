//! The report of a run, in `<store>/<test>/<timestamp>/` with a `latest` link beside:
//! `test.json` (configuration, seed, git revision), `history.jsonl`, `results.json` (the
//! verdict), `summary.txt`, the plots `latency.png` and `rate.png` (faults shaded), an
//! `index.html` that shows them, and the node logs.

pub mod plot;

use std::fmt::Write as _;
use std::io::Write as _;
use std::path::{Path, PathBuf};

use anyhow::Context as _;

use std::collections::BTreeMap;

use crate::checker::{Anomaly, Validity};
use crate::history::{Call, NEMESIS, Op, OpType, write_jsonl};
use crate::run::{Checked, RunConfig};

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
pub fn write(dir: &Path, config: &RunConfig, ops: &[Op], checked: &Checked) -> anyhow::Result<()> {
    let test = serde_json::json!({
        "test": config.test_name(),
        "config": config,
        "git_revision": git_revision(),
    });
    std::fs::write(dir.join("test.json"), serde_json::to_vec_pretty(&test)?)?;
    let mut history = std::io::BufWriter::new(std::fs::File::create(dir.join("history.jsonl"))?);
    write_jsonl(ops, &mut history)?;
    history.flush()?;
    std::fs::write(
        dir.join("results.json"),
        serde_json::to_vec_pretty(&checked.results)?,
    )?;
    let summary = summary(config, ops, checked);
    std::fs::write(dir.join("summary.txt"), &summary)?;
    let timeline = plot::Timeline::of(ops);
    let plots = plot::draw(dir, &timeline)
        .map(|()| !timeline.lateness.is_empty())
        .map_err(|error| format!("{error:#}"));
    std::fs::write(dir.join("index.html"), index_html(config, &summary, &plots))?;
    Ok(())
}

/// Escapes text for HTML.
fn escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

/// The report's page: the summary, the plots (or why there are none), links to the files.
/// `plots`: whether the timer-lateness plot was drawn too, or why there are no plots.
fn index_html(config: &RunConfig, summary: &str, plots: &Result<bool, String>) -> String {
    let plots = match plots {
        Ok(lateness) => {
            let mut images = "<img src=\"latency.png\" alt=\"latency over time\">\n\
                              <img src=\"rate.png\" alt=\"completions per second\">"
                .to_owned();
            if *lateness {
                images.push_str("\n<img src=\"lateness.png\" alt=\"timer lateness\">");
            }
            images
        }
        Err(why) => format!("<p>No plots: {}</p>", escape(why)),
    };
    format!(
        "<!doctype html>\n<html><head><meta charset=\"utf-8\"><title>{test} · seed {seed}</title>\n\
         <style>body{{font-family:sans-serif;margin:2em}}img{{max-width:100%;display:block;margin:1em 0}}</style>\n\
         </head><body>\n<h1>{test} · seed {seed}</h1>\n<pre>{summary}</pre>\n{plots}\n\
         <p>Shaded: each fault from its start to its heal.</p>\n<ul>\n\
         <li><a href=\"test.json\">test.json</a> (configuration, seed, git revision)</li>\n\
         <li><a href=\"history.jsonl\">history.jsonl</a></li>\n\
         <li><a href=\"results.json\">results.json</a></li>\n\
         <li>node logs: <a href=\"node-1.log\">1</a> <a href=\"node-2.log\">2</a> <a href=\"node-3.log\">3</a></li>\n\
         </ul>\n</body></html>\n",
        test = escape(&config.test_name()),
        seed = config.seed,
        summary = escape(summary),
    )
}

/// The readable summary of a run.
pub fn summary(config: &RunConfig, ops: &[Op], checked: &Checked) -> String {
    let faults = ops
        .iter()
        .filter(|op| op.process == NEMESIS && op.kind == OpType::Invoke)
        .filter(|op| matches!(op.call, Call::Fault { .. }))
        .count();
    format!(
        "test {} · seed {} · {:?} · {} clients · {} faults injected{}\nverdict: {:?}\n{}",
        config.test_name(),
        config.seed,
        config.time_limit,
        config.clients,
        faults,
        if config.tls {
            " · TLS and authentication on"
        } else {
            ""
        },
        checked.validity,
        checked.summary
    )
}

/// A checker's lines of the summary: its verdict, its counts, its anomalies.
pub fn verdict_lines(
    checker: &str,
    validity: Validity,
    stats: &serde_json::Value,
    coverage: &BTreeMap<String, u64>,
    counts: &BTreeMap<String, u64>,
    anomalies: &[Anomaly],
) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "{checker} checker: {validity:?}");
    if let Some(stats) = stats.as_object() {
        let line: Vec<String> = stats.iter().map(|(k, v)| format!("{k} {v}")).collect();
        let _ = writeln!(out, "  {}", line.join(" · "));
    }
    let covered: Vec<String> = coverage.iter().map(|(k, v)| format!("{k} {v}")).collect();
    let _ = writeln!(out, "  checked: {}", covered.join(" · "));
    for (property, _) in coverage.iter().filter(|(_, times)| **times == 0) {
        let _ = writeln!(out, "  - never checked: {property}");
    }
    for (kind, count) in counts {
        let _ = writeln!(out, "  {count} × {kind}");
    }
    for anomaly in anomalies {
        let _ = writeln!(out, "  - {}: {}", anomaly.kind, anomaly.detail);
    }
    out
}
