//! Nemeses: the faults a run injects, on a schedule drawn from the run's seed.
//!
//! Each fault is recorded as a nemesis `invoke` when it begins and `ok` when it is healed;
//! everything is healed before the final reads.

use std::time::{Duration, Instant};

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use crate::cluster::Cluster;
use crate::history::{Call, NEMESIS, OpType, Recorder};

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
}

/// Who a kill hits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Target {
    Leader,
    Random,
    All,
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
    match kind {
        NemesisKind::None => tokio::time::sleep_until(deadline.into()).await,
        NemesisKind::Kill => faults(Fault::Kill, cluster, history, &mut rng, deadline).await,
        NemesisKind::Pause => faults(Fault::Pause, cluster, history, &mut rng, deadline).await,
    }
    heal(cluster, history);
}

async fn pause(rng: &mut StdRng, from_ms: u64, to_ms: u64, deadline: Instant) {
    let wait = Duration::from_millis(rng.random_range(from_ms..to_ms));
    tokio::time::sleep_until((Instant::now() + wait).min(deadline).into()).await;
}

/// What a fault does to its victims.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Fault {
    Kill,
    Pause,
}

impl Fault {
    fn name(self) -> &'static str {
        match self {
            Self::Kill => "kill",
            Self::Pause => "pause",
        }
    }
}

async fn faults(
    fault: Fault,
    cluster: &mut Cluster,
    history: &Recorder,
    rng: &mut StdRng,
    deadline: Instant,
) {
    pause(rng, 1_000, 3_000, deadline).await;
    while Instant::now() + Duration::from_secs(2) < deadline {
        let target = match (fault, rng.random_range(0..10)) {
            (_, 0..5) => Target::Leader,
            (Fault::Pause, _) | (Fault::Kill, 5..9) => Target::Random,
            (Fault::Kill, _) => Target::All,
        };
        let victims: Vec<u64> = match target {
            Target::Leader => cluster.leader().await.into_iter().collect(),
            Target::Random => {
                let ids: Vec<u64> = cluster.nodes.keys().copied().collect();
                vec![ids[rng.random_range(0..ids.len())]]
            }
            Target::All => cluster.nodes.keys().copied().collect(),
        };
        if victims.is_empty() {
            pause(rng, 200, 500, deadline).await;
            continue;
        }
        let detail = format!("{target:?} {victims:?}").to_lowercase();
        history.record(
            NEMESIS,
            OpType::Invoke,
            Call::Fault {
                fault: fault.name().into(),
                detail: detail.clone(),
            },
            None,
        );
        for id in &victims {
            match fault {
                Fault::Kill => cluster.kill(*id),
                Fault::Pause => cluster.signal(*id, "-STOP"),
            }
        }
        pause(rng, 1_000, 3_000, deadline).await;
        for id in &victims {
            let healed = match fault {
                Fault::Kill => cluster.restart(*id),
                Fault::Pause => {
                    cluster.signal(*id, "-CONT");
                    Ok(())
                }
            };
            if let Err(error) = healed {
                tracing::error!(node = id, %error, "healing failed");
            }
        }
        history.record(
            NEMESIS,
            OpType::Ok,
            Call::Fault {
                fault: fault.name().into(),
                detail,
            },
            None,
        );
        pause(rng, 2_000, 5_000, deadline).await;
    }
}

/// Resumes every paused node and restarts every node that is down.
fn heal(cluster: &mut Cluster, history: &Recorder) {
    for id in cluster.nodes.keys().copied().collect::<Vec<_>>() {
        cluster.signal(id, "-CONT");
    }
    let down: Vec<u64> = cluster
        .nodes
        .values()
        .filter(|n| !n.running())
        .map(|n| n.id)
        .collect();
    for id in &down {
        if let Err(error) = cluster.restart(*id) {
            tracing::error!(node = id, %error, "restart failed");
        }
    }
    history.record(
        NEMESIS,
        OpType::Ok,
        Call::Fault {
            fault: "heal".into(),
            detail: format!("restarted {down:?}"),
        },
        None,
    );
}
