//! Nemeses: the faults a run injects, on a schedule drawn from the run's seed.
//!
//! A nemesis repeatedly picks one fault from its menu, applies it, keeps it for a while,
//! heals it, and rests; faults never overlap. Each is recorded as a nemesis `invoke` when
//! it begins and `ok` when it is healed; everything is healed before the final reads.

mod disk;
mod fault;

use std::time::{Duration, Instant};

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use crate::cluster::Cluster;
use crate::history::{Call, NEMESIS, OpType, Recorder};
use fault::{Fault, Menu};

/// The faults a run may inject.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum NemesisKind {
    /// No fault.
    None,
    /// SIGKILL one node, the leader, or every node; restart after a while.
    Kill,
    /// SIGSTOP one node or the leader; SIGCONT after a while (a paused old leader resumes
    /// after a new election).
    Pause,
    /// Partitions through the link proxies (isolate a node or the leader, bridge, one-way),
    /// slow and lossy links, and a follower cut off until the leader purged past it (it
    /// must catch up by snapshot).
    Partition,
    /// Wall-clock skew and jumps per node (libfaketime; monotonic clocks stay real).
    Clock,
    /// Membership churn: remove a voter, later add it back as a learner and promote it.
    Membership,
    /// Bit flips and truncation in a stopped node's data files; a node that refuses its
    /// data is repaired through `keel repair`.
    Corrupt,
    /// Every fault above, rotating.
    All,
}

impl NemesisKind {
    /// Whether the nodes must run under libfaketime.
    pub fn needs_fake_clock(self) -> bool {
        matches!(self, Self::Clock | Self::All)
    }

    fn menu(self) -> &'static [Menu] {
        match self {
            Self::None => &[],
            Self::Kill => &[Menu::Kill],
            Self::Pause => &[Menu::Pause],
            Self::Partition => &[Menu::Partition, Menu::Links, Menu::SnapshotInstall],
            Self::Clock => &[Menu::Clock],
            Self::Membership => &[Menu::Membership],
            Self::Corrupt => &[Menu::Corrupt],
            Self::All => &[
                Menu::Kill,
                Menu::Pause,
                Menu::Partition,
                Menu::Links,
                Menu::SnapshotInstall,
                Menu::Clock,
                Menu::Membership,
                Menu::Corrupt,
            ],
        }
    }
}

/// Runs `kind` against `cluster` until `deadline`, then heals everything.
pub async fn run(
    kind: NemesisKind,
    cluster: &mut Cluster,
    history: &Recorder,
    seed: u64,
    deadline: Instant,
) {
    let mut rng = StdRng::seed_from_u64(seed ^ 0x6e65_6d65_7369_7321);
    let menu = kind.menu();
    if menu.is_empty() {
        tokio::time::sleep_until(deadline.into()).await;
    } else {
        faults(menu, cluster, history, &mut rng, deadline).await;
    }
    heal_all(cluster, history).await;
}

/// Waits a random time in `from_ms..to_ms`, but not past `deadline`.
async fn rest(rng: &mut StdRng, from_ms: u64, to_ms: u64, deadline: Instant) {
    let wait = Duration::from_millis(rng.random_range(from_ms..to_ms));
    tokio::time::sleep_until((Instant::now() + wait).min(deadline).into()).await;
}

fn record(history: &Recorder, kind: OpType, fault: &str, detail: &str) {
    history.record(
        NEMESIS,
        kind,
        Call::Fault {
            fault: fault.to_owned(),
            detail: detail.to_owned(),
        },
        None,
    );
}

async fn faults(
    menu: &[Menu],
    cluster: &mut Cluster,
    history: &Recorder,
    rng: &mut StdRng,
    deadline: Instant,
) {
    rest(rng, 1_000, 3_000, deadline).await;
    while Instant::now() + Duration::from_secs(2) < deadline {
        let choice = menu[rng.random_range(0..menu.len())];
        let Some(fault) = Fault::choose(choice, cluster, rng).await else {
            rest(rng, 200, 500, deadline).await;
            continue;
        };
        let name = fault.name();
        let detail = fault.to_string();
        record(history, OpType::Invoke, name, &detail);
        let applied = match fault.apply(cluster, rng).await {
            Ok(note) => note,
            Err(error) => {
                tracing::warn!(fault = name, %error, "the fault could not be applied fully");
                format!("not applied fully: {error:#}")
            }
        };
        let held = fault.hold(cluster, rng, deadline).await;
        let healed = match fault.heal(cluster).await {
            Ok(note) => note,
            Err(error) => {
                tracing::error!(fault = name, %error, "healing failed");
                format!("healing failed: {error:#}")
            }
        };
        let outcome = [&detail, &applied, &held, &healed]
            .into_iter()
            .filter(|part| !part.is_empty())
            .map(String::as_str)
            .collect::<Vec<_>>()
            .join("; ");
        record(history, OpType::Ok, name, &outcome);
        rest(rng, 2_000, 5_000, deadline).await;
    }
}

/// Resumes every paused node, heals every link and clock, restarts every node that is
/// down, and re-admits every node that is not a voter.
async fn heal_all(cluster: &mut Cluster, history: &Recorder) {
    let note = match fault::heal_all(cluster).await {
        Ok(note) => note,
        Err(error) => {
            tracing::error!(%error, "the final heal failed");
            format!("failed: {error:#}")
        }
    };
    record(history, OpType::Ok, "heal", &note);
}
