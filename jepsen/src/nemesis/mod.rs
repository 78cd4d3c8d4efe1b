//! Nemeses: the faults a run injects, on a schedule drawn from the run's seed.
//!
//! A nemesis repeatedly picks one fault from its menu, applies it, keeps it for a while,
//! heals it, and rests; faults never overlap. Each is recorded as a nemesis `invoke` when
//! it begins and `ok` when it is healed; everything is healed before the final reads.

mod disk;
mod fault;
pub mod scenario;

use std::time::{Duration, Instant};

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use crate::cluster::Cluster;
use crate::history::{Call, NEMESIS, OpType, Recorder};
use fault::{Fault, Menu};

/// The largest wall-clock offset the clock nemesis gives a node: a timer a leader stamped
/// then may come due this much later in real time.
pub const MAX_CLOCK_JUMP: Duration = Duration::from_secs(10);

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
    /// Partitions (isolate a node or the leader, bridge, one-way) through the link proxies
    /// or nftables between network namespaces, slow links (proxies only) and lossy links,
    /// and a follower cut off until the leader purged past it (it must catch up by
    /// snapshot).
    Partition,
    /// Wall-clock skew and jumps per node (libfaketime; monotonic clocks stay real).
    Clock,
    /// Membership churn: remove a voter, later add it back as a learner and promote it.
    Membership,
    /// Bit flips and truncation in a stopped node's data files; a node that refuses its
    /// data is repaired through `keel repair`.
    Corrupt,
    /// Power loss of one node, the leader, or every node at once: SIGKILL, then every write
    /// no `fdatasync` covered (per the node's sync journal) is undone before the restart.
    LoseUnsynced,
    /// Every fault above, rotating.
    All,
}

impl NemesisKind {
    /// Whether the nodes must run under libfaketime.
    pub fn needs_fake_clock(self) -> bool {
        matches!(self, Self::Clock | Self::All)
    }

    /// Whether the nodes must journal their writes and syncs.
    pub fn needs_sync_journal(self) -> bool {
        matches!(self, Self::LoseUnsynced | Self::All)
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
            Self::LoseUnsynced => &[Menu::LoseUnsynced],
            Self::All => &[
                Menu::Kill,
                Menu::Pause,
                Menu::Partition,
                Menu::Links,
                Menu::SnapshotInstall,
                Menu::Clock,
                Menu::Membership,
                Menu::Corrupt,
                Menu::LoseUnsynced,
            ],
        }
    }
}

/// What the nemesis saw that is itself an anomaly.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NemesisReport {
    /// Nodes that refused their data after a kill or a simulated power loss, with the
    /// fault's description: a node that synced before acknowledging has nothing to refuse.
    pub refused_after_restart: Vec<(u64, String)>,
    /// Leaders elected while only a wiped, unrepaired node could complete their majority,
    /// with the scenario's description.
    pub elected_with_wiped_voter: Vec<(u64, String)>,
    /// Nodes whose process ended by itself (no nemesis killed it), with when it was seen.
    pub crashed: Vec<(u64, String)>,
}

impl NemesisReport {
    /// Whether the nemesis saw no anomaly itself.
    pub fn is_clean(&self) -> bool {
        self.refused_after_restart.is_empty()
            && self.elected_with_wiped_voter.is_empty()
            && self.crashed.is_empty()
    }

    /// Records every node whose process ended by itself since the last look.
    fn note_crashes(&mut self, cluster: &mut Cluster, when: &str) {
        for id in cluster.nodes.keys().copied().collect::<Vec<_>>() {
            if cluster.exited(id) {
                tracing::error!(node = id, when, "a node process ended by itself");
                self.crashed.push((id, when.to_owned()));
            }
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
) -> NemesisReport {
    let mut rng = StdRng::seed_from_u64(seed ^ 0x6e65_6d65_7369_7321);
    let menu = kind.menu();
    let mut report = NemesisReport::default();
    if menu.is_empty() {
        tokio::time::sleep_until(deadline.into()).await;
    } else {
        faults(menu, cluster, history, &mut rng, deadline, &mut report).await;
    }
    report.note_crashes(cluster, "at the final heal");
    heal_all(cluster, history).await;
    report
}

/// Runs a regression scenario against `cluster` until `deadline`, then heals everything.
pub async fn run_scenario(
    scenario: scenario::Scenario,
    cluster: &mut Cluster,
    history: &Recorder,
    seed: u64,
    deadline: Instant,
) -> NemesisReport {
    let mut rng = StdRng::seed_from_u64(seed ^ 0x7363_656e_6172_696f);
    let mut report = NemesisReport::default();
    let mut injection = Injection {
        cluster,
        history,
        rng: &mut rng,
        deadline,
        report: &mut report,
    };
    scenario::run(scenario, &mut injection).await;
    report.note_crashes(cluster, "at the final heal");
    heal_all(cluster, history).await;
    report
}

/// Waits a random time in `from_ms..to_ms`, but not past `deadline`.
async fn rest(rng: &mut StdRng, from_ms: u64, to_ms: u64, deadline: Instant) {
    let wait = Duration::from_millis(rng.random_range(from_ms..to_ms));
    tokio::time::sleep_until((Instant::now() + wait).min(deadline).into()).await;
}

fn record(history: &Recorder, kind: OpType, fault: &str, detail: &str, offset: Option<u64>) {
    history.record(
        NEMESIS,
        kind,
        Call::Fault {
            fault: fault.to_owned(),
            detail: detail.to_owned(),
            clock_offset_ms: offset,
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
    report: &mut NemesisReport,
) {
    rest(rng, 1_000, 3_000, deadline).await;
    while Instant::now() + Duration::from_secs(2) < deadline {
        let choice = menu[rng.random_range(0..menu.len())];
        let Some(fault) = Fault::choose(choice, cluster, rng).await else {
            rest(rng, 200, 500, deadline).await;
            continue;
        };
        let mut run = Injection {
            cluster,
            history,
            rng,
            deadline,
            report,
        };
        run.inject(&fault, Hold::AsTheFaultSays).await;
        rest(rng, 2_000, 5_000, deadline).await;
    }
}

/// How long a fault is kept.
#[derive(Debug, Clone, Copy)]
enum Hold {
    /// The fault's own hold ([`Fault::hold`]).
    AsTheFaultSays,
    /// This long.
    For(Duration),
    /// Until a node other than `old` leads (at most `at_most`), then a little longer.
    UntilNewLeader { old: u64, at_most: Duration },
}

/// What injecting a fault needs.
struct Injection<'a> {
    cluster: &'a mut Cluster,
    history: &'a Recorder,
    rng: &'a mut StdRng,
    deadline: Instant,
    report: &'a mut NemesisReport,
}

impl Injection<'_> {
    /// Records the fault's start, applies it, keeps it, heals it, records the heal with
    /// everything that happened; anomalies the nemesis saw go into the report.
    async fn inject(&mut self, fault: &Fault, hold: Hold) {
        let name = fault.name();
        let detail = fault.to_string();
        self.report
            .note_crashes(self.cluster, &format!("before the fault {detail}"));
        let offset = fault.clock_offset_ms();
        record(self.history, OpType::Invoke, name, &detail, offset);
        let applied = match fault.apply(self.cluster, self.rng).await {
            Ok(note) => note,
            Err(error) => {
                tracing::warn!(fault = name, %error, "the fault could not be applied fully");
                format!("not applied fully: {error:#}")
            }
        };
        let meanwhile = match hold {
            Hold::AsTheFaultSays => fault.hold(self.cluster, self.rng, self.deadline).await,
            Hold::For(time) => {
                tokio::time::sleep(time).await;
                String::new()
            }
            Hold::UntilNewLeader { old, at_most } => {
                let until = Instant::now() + at_most;
                let mut new = None;
                while Instant::now() < until && new.is_none() {
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    new = self.cluster.leader().await.filter(|&leader| leader != old);
                }
                tokio::time::sleep(Duration::from_millis(500)).await;
                new.map_or_else(
                    || format!("no new leader within {at_most:?}"),
                    |leader| format!("node {leader} elected meanwhile"),
                )
            }
        };
        let healed = match fault.heal(self.cluster).await {
            Ok(healed) => {
                for &node in &healed.refused_after_restart {
                    self.report
                        .refused_after_restart
                        .push((node, detail.clone()));
                }
                healed.note
            }
            Err(error) => {
                tracing::error!(fault = name, %error, "healing failed");
                format!("healing failed: {error:#}")
            }
        };
        let outcome = [&detail, &applied, &meanwhile, &healed]
            .into_iter()
            .filter(|part| !part.is_empty())
            .map(String::as_str)
            .collect::<Vec<_>>()
            .join("; ");
        record(self.history, OpType::Ok, name, &outcome, offset);
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
    record(history, OpType::Ok, "heal", &note, None);
}
