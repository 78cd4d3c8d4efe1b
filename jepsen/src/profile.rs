//! Profiles: planned sequences of runs with one verdict.
//!
//! - **ci**: a fixed seed, the mixed workload, 30 s against each nemesis in turn (the
//!   partitions in network namespaces when the harness runs in its own, through the link
//!   proxies otherwise; everything else through the proxies), the `wiped-voter` regression
//!   scenario, then the negative controls: short runs of the sabotage build against each
//!   of its faults, each of which must come out invalid with the anomaly its checker is
//!   meant to report, each after a run of the real build in the same configuration (which
//!   must be valid). Passes when every real run is valid and every control is caught by
//!   its checker.
//! - **soak**: rotates every nemesis (and `all`) with fresh random seeds, the mixed
//!   workload, a minute each, until the time limit, alternating namespaces (when there are)
//!   and proxies by rotation; every seed is recorded so any run can be repeated alone.
//!   Passes when every run is valid.
//!
//! The profile writes `runs.jsonl` (one line per run: workload, nemesis, seed, expected and
//! actual verdict, report directory) and `summary.txt` under `<store>/profile-<name>/<ts>/`.

use std::fmt::Write as _;
use std::io::Write as _;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use serde::Serialize;

use crate::checker::Validity;
use crate::nemesis::NemesisKind;
use crate::nemesis::scenario::Scenario;
use crate::network::NetKind;
use crate::report;
use crate::run::{RunConfig, Workload, run};

/// The seed of every run of the ci profile.
pub const CI_SEED: u64 = 20_261_128;
/// How long the ci profile runs against each nemesis.
const CI_SECONDS: u64 = 30;
/// The nemeses of the ci profile, in order.
const CI_NEMESES: [NemesisKind; 7] = [
    NemesisKind::Kill,
    NemesisKind::Pause,
    NemesisKind::Partition,
    NemesisKind::Clock,
    NemesisKind::Membership,
    NemesisKind::Corrupt,
    NemesisKind::LoseUnsynced,
];
/// The ci profile's run with TLS and authentication on: the partitions, whose nodes listen
/// on network namespaces' addresses (not loopback) when the harness can build them.
const CI_TLS_NEMESIS: NemesisKind = NemesisKind::Partition;
/// The regression scenario the ci profile runs, and how long: the one that found a bug.
const CI_SCENARIO: (Scenario, u64) = (Scenario::WipedVoter, 20);
/// The soak's rotation: every nemesis of the ci profile, then all of them together; every
/// other rotation in network namespaces (when the harness runs in its own).
fn soak_turn(turn: usize) -> (NemesisKind, NetKind) {
    let rotation = CI_NEMESES.len() + 1;
    let nemesis = CI_NEMESES
        .get(turn % rotation)
        .copied()
        .unwrap_or(NemesisKind::All);
    let net = if (turn / rotation).is_multiple_of(2) {
        NetKind::Auto
    } else {
        NetKind::Proxy
    };
    (nemesis, net)
}
/// How the ci profile builds a real run's network: partitions in namespaces when it can.
fn ci_net(nemesis: NemesisKind) -> NetKind {
    if nemesis == NemesisKind::Partition {
        NetKind::Auto
    } else {
        NetKind::Proxy
    }
}
/// How long each soak run lasts (the last may be shorter).
const SOAK_RUN_SECONDS: u64 = 60;
/// A soak run shorter than this is not started.
const SOAK_MIN_RUN_SECONDS: u64 = 20;

/// The profiles.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Profile {
    /// Fixed seed, every nemesis 30 s, and the negative controls.
    Ci,
    /// Every nemesis in rotation with random seeds until the time limit.
    Soak,
}

/// What a profile run needs.
#[derive(Debug, Clone)]
pub struct ProfileConfig {
    /// Which profile.
    pub profile: Profile,
    /// The soak's total time (the ci profile's length is fixed).
    pub time_limit: Duration,
    /// The `keel` binary of the real runs.
    pub keel: PathBuf,
    /// The sabotage build's `keel` (the ci profile's negative controls).
    pub sabotage_keel: Option<PathBuf>,
    /// Where reports go.
    pub store: PathBuf,
    /// Concurrent clients per workload.
    pub clients: u64,
}

/// One run of a profile and its outcome.
#[derive(Debug, Clone, Serialize)]
pub struct ProfileRun {
    /// The workload.
    pub workload: Workload,
    /// The nemesis.
    pub nemesis: NemesisKind,
    /// The regression scenario, if the run is one.
    pub scenario: Option<Scenario>,
    /// How the links were built.
    pub net: NetKind,
    /// Whether TLS and authentication were on (repeat with `keel-jepsen run --tls`).
    pub tls: bool,
    /// The seed (repeat with `keel-jepsen run --seed`).
    pub seed: u64,
    /// Seconds of clients and faults.
    pub seconds: u64,
    /// The deliberate fault, for a negative control.
    pub sabotage: Option<String>,
    /// The verdict that passes: valid for a real run, invalid for a control.
    pub expected: Validity,
    /// The verdict.
    pub actual: Validity,
    /// For a control: the anomaly (`checker: kind`) its checker must report.
    pub must_report: Option<String>,
    /// For a real run of a control's configuration: the control's fault.
    pub twin_of: Option<String>,
    /// Every anomaly kind the checkers reported, as `checker: kind`.
    pub reported: Vec<String>,
    /// The run's report.
    pub report: PathBuf,
}

impl ProfileRun {
    /// One readable line: pass or FAIL, what ran, the seed, the verdict, the report.
    pub fn line(&self) -> String {
        let control = match (&self.sabotage, &self.twin_of) {
            (Some(fault), _) => format!(" sabotage {fault}"),
            (None, Some(fault)) => format!(" (real build, the {fault} control's run)"),
            (None, None) => String::new(),
        };
        let faults = self.scenario.map_or_else(
            || format!("{:?}", self.nemesis),
            |s| format!("scenario {s:?}"),
        );
        let caught = self
            .must_report
            .as_deref()
            .map(|anomaly| format!(", must report {anomaly}; reported {:?}", self.reported))
            .unwrap_or_default();
        format!(
            "{} {:?} {faults}{control} net {:?}{} seed {} {} s: {:?} (expected {:?}{caught}) · {}",
            if self.passed() { "pass" } else { "FAIL" },
            self.workload,
            self.net,
            if self.tls { " tls" } else { "" },
            self.seed,
            self.seconds,
            self.actual,
            self.expected,
            self.report.display()
        )
    }

    /// Whether the run came out as expected: its verdict, and for a control, the anomaly
    /// its checker must report among those reported.
    pub fn passed(&self) -> bool {
        self.actual == self.expected
            && self
                .must_report
                .as_ref()
                .is_none_or(|anomaly| self.reported.contains(anomaly))
    }
}

/// A profile's outcome.
#[derive(Debug)]
pub struct ProfileOutcome {
    /// Every run, in order.
    pub runs: Vec<ProfileRun>,
    /// The profile's report directory.
    pub dir: PathBuf,
}

impl ProfileOutcome {
    /// Whether every run came out as expected.
    pub fn passed(&self) -> bool {
        !self.runs.is_empty() && self.runs.iter().all(ProfileRun::passed)
    }
}

/// A run the profile plans.
struct Planned {
    workload: Workload,
    nemesis: NemesisKind,
    scenario: Option<Scenario>,
    net: NetKind,
    seconds: u64,
    seed: u64,
    sabotage: Option<&'static str>,
    must_report: Option<&'static str>,
    /// For a real run of a control's configuration: the control's fault.
    twin_of: Option<&'static str>,
    /// TLS and authentication on.
    tls: bool,
}

/// A negative control: a deliberate fault, the scenario that exposes it (none: no fault),
/// the workload, how long, and the anomaly (`checker: kind`) its checker must report.
struct Control {
    fault: &'static str,
    scenario: Option<Scenario>,
    workload: Workload,
    seconds: u64,
    must_report: &'static str,
}

/// The negative controls.
const CONTROLS: [Control; 10] = [
    Control {
        fault: "stale-reads",
        scenario: None,
        workload: Workload::Log,
        seconds: 10,
        must_report: "log: stale-read",
    },
    Control {
        fault: "forgetful-sessions",
        scenario: None,
        workload: Workload::Log,
        seconds: 10,
        must_report: "log: replay-applied-again",
    },
    Control {
        fault: "unfenced-fires",
        scenario: None,
        workload: Workload::Timers,
        seconds: 8,
        must_report: "timers: zombie-fire",
    },
    Control {
        fault: "ack-before-fsync",
        scenario: Some(Scenario::LeaderKillUnsynced),
        workload: Workload::Log,
        seconds: 8,
        must_report: "nemesis: refused-after-restart",
    },
    Control {
        fault: "off-by-one-truncation",
        scenario: Some(Scenario::LeaderInMinority),
        workload: Workload::Log,
        seconds: 10,
        must_report: "nemesis: node-crashed",
    },
    Control {
        fault: "halved-delays",
        scenario: None,
        workload: Workload::Timers,
        seconds: 8,
        must_report: "timers: early-fire",
    },
    Control {
        fault: "no-takeover",
        scenario: Some(Scenario::PausedLeader),
        workload: Workload::Workflows,
        seconds: 8,
        must_report: "workflows: stuck-workflow",
    },
    Control {
        fault: "unordered-answers",
        scenario: None,
        workload: Workload::Timers,
        seconds: 6,
        must_report: "digests: divergence",
    },
    Control {
        fault: "unfenced-runs",
        scenario: Some(Scenario::PausedWorker),
        workload: Workload::Workflows,
        seconds: 12,
        must_report: "log-fences: stale-run-recorded",
    },
    Control {
        fault: "dropped-values",
        scenario: None,
        workload: Workload::Workflows,
        seconds: 8,
        must_report: "workflows: lost-value",
    },
];

fn ci_plan() -> Vec<Planned> {
    let real = CI_NEMESES.iter().map(|&nemesis| Planned {
        workload: Workload::Mixed,
        nemesis,
        scenario: None,
        net: ci_net(nemesis),
        seconds: CI_SECONDS,
        seed: CI_SEED,
        sabotage: None,
        must_report: None,
        twin_of: None,
        tls: nemesis == CI_TLS_NEMESIS,
    });
    let (scenario, seconds) = CI_SCENARIO;
    let regression = std::iter::once(Planned {
        workload: scenario.workload(),
        nemesis: NemesisKind::None,
        scenario: Some(scenario),
        net: NetKind::Proxy,
        seconds,
        seed: CI_SEED,
        sabotage: None,
        must_report: None,
        twin_of: None,
        tls: false,
    });
    // Each control runs twice: the real build must pass its configuration, the sabotage
    // build must be caught there by the control's checker.
    let controls = CONTROLS.iter().flat_map(|control| {
        let real = Planned {
            workload: control.workload,
            nemesis: NemesisKind::None,
            scenario: control.scenario,
            net: NetKind::Proxy,
            seconds: control.seconds,
            seed: CI_SEED,
            sabotage: None,
            must_report: None,
            twin_of: Some(control.fault),
            tls: false,
        };
        let sabotaged = Planned {
            sabotage: Some(control.fault),
            must_report: Some(control.must_report),
            twin_of: None,
            ..real
        };
        [real, sabotaged]
    });
    real.chain(regression).chain(controls).collect()
}

/// Runs the profile, calling `on_run` as each run ends.
///
/// # Errors
/// A harness failure, or the ci profile without a sabotage build.
pub async fn run_profile(
    config: &ProfileConfig,
    mut on_run: impl FnMut(&ProfileRun),
) -> anyhow::Result<ProfileOutcome> {
    let name = match config.profile {
        Profile::Ci => "profile-ci",
        Profile::Soak => "profile-soak",
    };
    let dir = report::create_dir(&config.store, name)?;
    let mut runs_file = std::fs::File::create(dir.join("runs.jsonl"))?;
    let mut runs = Vec::new();
    let started = Instant::now();
    let mut planned = match config.profile {
        Profile::Ci => {
            anyhow::ensure!(
                config.sabotage_keel.is_some(),
                "the ci profile's negative controls need the sabotage build: \
                 cargo build --bin keel --features sabotage --target-dir target/sabotage, \
                 then --sabotage-keel target/sabotage/debug/keel"
            );
            ci_plan().into_iter()
        }
        Profile::Soak => Vec::new().into_iter(),
    };
    let mut rotation = 0usize;
    loop {
        let next = match config.profile {
            Profile::Ci => planned.next(),
            Profile::Soak => {
                let left = config
                    .time_limit
                    .saturating_sub(started.elapsed())
                    .as_secs();
                (left >= SOAK_MIN_RUN_SECONDS).then(|| {
                    let (nemesis, net) = soak_turn(rotation);
                    rotation += 1;
                    Planned {
                        workload: Workload::Mixed,
                        nemesis,
                        scenario: None,
                        net,
                        seconds: left.min(SOAK_RUN_SECONDS),
                        seed: rand::random(),
                        sabotage: None,
                        must_report: None,
                        twin_of: None,
                        tls: false,
                    }
                })
            }
        };
        let Some(plan) = next else { break };
        let outcome = run_planned(config, &dir, &plan).await?;
        on_run(&outcome);
        serde_json::to_writer(&mut runs_file, &outcome)?;
        runs_file.write_all(b"\n")?;
        runs.push(outcome);
    }
    let outcome = ProfileOutcome { runs, dir };
    std::fs::write(
        outcome.dir.join("summary.txt"),
        summary(config, &outcome, started.elapsed()),
    )?;
    Ok(outcome)
}

async fn run_planned(
    config: &ProfileConfig,
    dir: &std::path::Path,
    plan: &Planned,
) -> anyhow::Result<ProfileRun> {
    let keel = match plan.sabotage {
        Some(_) => config
            .sabotage_keel
            .clone()
            .ok_or_else(|| anyhow::anyhow!("no sabotage build"))?,
        None => config.keel.clone(),
    };
    let net = plan.net.resolve()?;
    let run_config = RunConfig {
        workload: plan.workload,
        nemesis: plan.nemesis,
        time_limit: Duration::from_secs(plan.seconds),
        seed: plan.seed,
        clients: config.clients,
        keel,
        store: dir.to_owned(),
        sabotage: plan.sabotage.map(str::to_owned),
        progress: false,
        scenario: plan.scenario,
        net,
        tls: plan.tls,
    };
    let outcome = run(&run_config).await?;
    Ok(ProfileRun {
        workload: plan.workload,
        nemesis: plan.nemesis,
        scenario: plan.scenario,
        net,
        tls: plan.tls,
        seed: plan.seed,
        seconds: plan.seconds,
        sabotage: run_config.sabotage,
        expected: if plan.sabotage.is_some() {
            Validity::Invalid
        } else {
            Validity::Valid
        },
        // A control counts as caught only by what the checkers found, never by its
        // announcement alone.
        actual: if plan.sabotage.is_some() {
            outcome.found
        } else {
            outcome.checked.validity
        },
        must_report: plan.must_report.map(str::to_owned),
        twin_of: plan.twin_of.map(str::to_owned),
        reported: reported_anomalies(&outcome.checked.results),
        report: outcome.dir,
    })
}

/// Every anomaly kind in a run's `results.json`, as `checker: kind`.
fn reported_anomalies(results: &serde_json::Value) -> Vec<String> {
    let Some(checkers) = results.as_object() else {
        return Vec::new();
    };
    checkers
        .iter()
        .flat_map(|(checker, verdict)| {
            let counted = verdict["counts"]
                .as_object()
                .into_iter()
                .flat_map(|counts| counts.keys().cloned());
            let listed = verdict["anomalies"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|anomaly| anomaly["kind"].as_str().map(str::to_owned));
            counted
                .chain(listed)
                .map(move |kind| format!("{checker}: {kind}"))
                .collect::<std::collections::BTreeSet<_>>()
        })
        .collect()
}

fn summary(config: &ProfileConfig, outcome: &ProfileOutcome, took: Duration) -> String {
    let mut text = format!(
        "profile {:?} · {} run(s) in {} s · {}\n",
        config.profile,
        outcome.runs.len(),
        took.as_secs(),
        if outcome.passed() { "PASSED" } else { "FAILED" }
    );
    for run in &outcome.runs {
        let _ = writeln!(text, "{}", run.line());
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_soak_rotates_every_nemesis_then_all_alternating_networks() {
        let rotation = CI_NEMESES.len() + 1;
        let turns: Vec<(NemesisKind, NetKind)> = (0..=rotation).map(soak_turn).collect();
        let nemeses: Vec<NemesisKind> = turns.iter().map(|&(nemesis, _)| nemesis).collect();
        assert_eq!(&nemeses[..CI_NEMESES.len()], CI_NEMESES);
        assert_eq!(nemeses[CI_NEMESES.len()], NemesisKind::All);
        assert_eq!(turns[rotation], (CI_NEMESES[0], NetKind::Proxy));
        assert!(
            turns[..rotation]
                .iter()
                .all(|&(_, net)| net == NetKind::Auto)
        );
    }

    #[test]
    fn the_ci_plan_covers_every_nemesis_with_one_seed_then_every_control() {
        let plan = ci_plan();
        let real: Vec<NemesisKind> = plan
            .iter()
            .filter(|p| p.sabotage.is_none() && p.twin_of.is_none() && p.scenario.is_none())
            .map(|p| p.nemesis)
            .collect();
        assert_eq!(real, CI_NEMESES);
        assert!(
            plan.iter()
                .any(|p| p.sabotage.is_none() && p.scenario == Some(Scenario::WipedVoter))
        );
        assert!(plan.iter().all(|p| p.seed == CI_SEED));
        assert!(
            plan.iter()
                .filter(|p| p.sabotage.is_none() && p.twin_of.is_none() && p.scenario.is_none())
                .all(|p| p.workload == Workload::Mixed)
        );
        let with_tls: Vec<NemesisKind> = plan.iter().filter(|p| p.tls).map(|p| p.nemesis).collect();
        assert_eq!(
            with_tls,
            [NemesisKind::Partition],
            "one real run with TLS and auth"
        );
        let namespaced: Vec<NemesisKind> = plan
            .iter()
            .filter(|p| p.net == NetKind::Auto)
            .map(|p| p.nemesis)
            .collect();
        assert_eq!(namespaced, [NemesisKind::Partition]);
        let controls: Vec<&str> = plan.iter().filter_map(|p| p.sabotage).collect();
        assert_eq!(
            controls,
            [
                "stale-reads",
                "forgetful-sessions",
                "unfenced-fires",
                "ack-before-fsync",
                "off-by-one-truncation",
                "halved-delays",
                "no-takeover",
                "unordered-answers",
                "unfenced-runs",
                "dropped-values"
            ]
        );
        assert!(
            plan.iter()
                .all(|p| p.sabotage.is_some() == p.must_report.is_some())
        );
        let twins: Vec<&str> = plan.iter().filter_map(|p| p.twin_of).collect();
        assert_eq!(
            twins, controls,
            "each control's configuration also runs for real"
        );
        let seconds: u64 = plan.iter().map(|p| p.seconds).sum();
        assert!(seconds <= 7 * 60, "{seconds} s of runs");
    }

    fn profile_run(expected: Validity, actual: Validity) -> ProfileRun {
        ProfileRun {
            workload: Workload::Mixed,
            nemesis: NemesisKind::Kill,
            scenario: None,
            net: NetKind::Proxy,
            tls: false,
            seed: 1,
            seconds: 1,
            sabotage: None,
            expected,
            actual,
            must_report: None,
            twin_of: None,
            reported: Vec::new(),
            report: PathBuf::new(),
        }
    }

    #[test]
    fn a_profile_passes_only_when_every_run_comes_out_as_expected() {
        let outcome = |runs| ProfileOutcome {
            runs,
            dir: PathBuf::new(),
        };
        assert!(!outcome(vec![]).passed());
        assert!(
            outcome(vec![
                profile_run(Validity::Valid, Validity::Valid),
                profile_run(Validity::Invalid, Validity::Invalid),
            ])
            .passed()
        );
        assert!(!outcome(vec![profile_run(Validity::Valid, Validity::Unknown)]).passed());
        assert!(!outcome(vec![profile_run(Validity::Invalid, Validity::Valid)]).passed());
        // A control caught by the wrong checker (or for another reason) does not pass.
        let mut caught_elsewhere = profile_run(Validity::Invalid, Validity::Invalid);
        caught_elsewhere.must_report = Some("digests: divergence".into());
        caught_elsewhere.reported = vec!["log: lost".into()];
        assert!(!outcome(vec![caught_elsewhere.clone()]).passed());
        caught_elsewhere.reported.push("digests: divergence".into());
        assert!(outcome(vec![caught_elsewhere]).passed());
    }

    #[test]
    fn reported_anomalies_name_their_checker() {
        let results = serde_json::json!({
            "log": { "validity": "invalid", "counts": { "lost": 2 }, "anomalies": [] },
            "nemesis": { "validity": "invalid", "anomalies": [{ "kind": "node-crashed" }] },
            "digests": "unknown: the cluster did not settle",
        });
        assert_eq!(
            reported_anomalies(&results),
            ["log: lost", "nemesis: node-crashed"]
        );
    }
}
