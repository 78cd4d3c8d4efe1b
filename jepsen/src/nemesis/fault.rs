//! One fault: chosen from a menu entry by the seed, applied, held, healed.

use std::collections::BTreeSet;
use std::fmt;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use rand::Rng;
use rand::rngs::StdRng;

use super::disk::{self, Damage};
use super::rest;
use crate::cluster::{Cluster, leader_status};
use crate::network::LinkFault;

/// How long a cut-off follower waits at most for the leader to purge past it.
const PURGE_WAIT: Duration = Duration::from_secs(15);
/// How long a restarted node has to refuse its damaged data — at open, or when the
/// verification of its value files after start finds a damaged value — before it counts as
/// running; one whose status says its value files are verified counts as running at once.
const REFUSAL_WAIT: Duration = Duration::from_secs(15);

/// A family of faults a nemesis picks from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Menu {
    Kill,
    Pause,
    Partition,
    Links,
    SnapshotInstall,
    Clock,
    Membership,
    Corrupt,
    LoseUnsynced,
}

/// Who a process fault hits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Target {
    Leader,
    Random,
    All,
}

/// The shape of a partition of three nodes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Shape {
    /// One node cut off both ways.
    Isolate,
    /// The leader cut off both ways: it is in the minority.
    IsolateLeader,
    /// Two nodes cannot reach each other; the third reaches both.
    Bridge,
    /// One node cannot send to the others; they still reach it.
    OneWay,
}

/// A chosen fault.
#[derive(Debug, Clone, PartialEq)]
pub(super) enum Fault {
    Kill {
        target: Target,
        victims: Vec<u64>,
    },
    Pause {
        target: Target,
        victims: Vec<u64>,
    },
    Partition {
        shape: Shape,
        cuts: Vec<(u64, u64)>,
    },
    Links(LinkFault),
    SnapshotInstall {
        node: u64,
    },
    Clock {
        offsets: Vec<(u64, i64)>,
    },
    Membership {
        node: u64,
    },
    Corrupt {
        node: u64,
        damage: Damage,
        segments_only: bool,
    },
    PowerLoss {
        target: Target,
        victims: Vec<u64>,
    },
}

impl fmt::Display for Fault {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let lower = |value: &dyn fmt::Debug| format!("{value:?}").to_lowercase();
        match self {
            Self::Kill { target, victims }
            | Self::Pause { target, victims }
            | Self::PowerLoss { target, victims } => {
                write!(f, "{} {victims:?}", lower(target))
            }
            Self::Partition { shape, cuts } => write!(f, "{} cuts {cuts:?}", lower(shape)),
            Self::Links(fault) if fault.loss_per_mille > 0 => {
                write!(f, "every link: {}‰ loss", fault.loss_per_mille)
            }
            Self::Links(fault) => {
                write!(f, "every link: {} ms delay", fault.delay.as_millis())
            }
            Self::SnapshotInstall { node } => {
                write!(f, "node {node} cut off until the leader purges past it")
            }
            Self::Clock { offsets } => write!(f, "wall-clock offsets (node, ms) {offsets:?}"),
            Self::Membership { node } => write!(f, "remove voter {node}, then re-add it"),
            Self::Corrupt {
                node,
                damage,
                segments_only,
            } => {
                let files = if *segments_only {
                    "a log segment"
                } else {
                    "a data file"
                };
                write!(f, "{damage} in {files} of node {node}")
            }
        }
    }
}

pub(super) fn cut_both(a: u64, b: u64) -> [(u64, u64); 2] {
    [(a, b), (b, a)]
}

fn pick(rng: &mut StdRng, ids: &[u64]) -> u64 {
    ids[rng.random_range(0..ids.len())]
}

impl Fault {
    /// The fault's family name in the history.
    pub(super) fn name(&self) -> &'static str {
        match self {
            Self::Kill { .. } => "kill",
            Self::Pause { .. } => "pause",
            Self::Partition { .. } => "partition",
            Self::Links(_) => "links",
            Self::SnapshotInstall { .. } => "snapshot-install",
            Self::Clock { .. } => "clock",
            Self::Membership { .. } => "membership",
            Self::Corrupt { .. } => "corrupt",
            Self::PowerLoss { .. } => "lose-unsynced",
        }
    }

    /// The largest wall-clock offset the fault gives a node, in ms (clock faults only).
    pub(super) fn clock_offset_ms(&self) -> Option<u64> {
        match self {
            Self::Clock { offsets } => offsets
                .iter()
                .map(|&(_, offset)| offset.unsigned_abs())
                .max(),
            _ => None,
        }
    }

    /// Picks a fault of `menu` for the cluster as it is now; `None` when the cluster is in
    /// no state for it (no leader, a node down).
    pub(super) async fn choose(menu: Menu, cluster: &Cluster, rng: &mut StdRng) -> Option<Self> {
        let ids: Vec<u64> = cluster.nodes.keys().copied().collect();
        let fault = match menu {
            Menu::Kill | Menu::Pause | Menu::LoseUnsynced => {
                let target = match (menu, rng.random_range(0..10)) {
                    (Menu::LoseUnsynced, 0..5) | (Menu::Kill, 9) => Target::All,
                    (_, 0..5) | (Menu::LoseUnsynced, 5..8) => Target::Leader,
                    _ => Target::Random,
                };
                let victims = match target {
                    Target::Leader => vec![cluster.leader().await?],
                    Target::Random => vec![pick(rng, &ids)],
                    Target::All => ids,
                };
                match menu {
                    Menu::Kill => Self::Kill { target, victims },
                    Menu::Pause => Self::Pause { target, victims },
                    _ => Self::PowerLoss { target, victims },
                }
            }
            Menu::Partition => partition(cluster, &ids, rng).await?,
            Menu::Links => Self::Links(if cluster.network.can_delay() && rng.random_bool(0.5) {
                LinkFault {
                    delay: Duration::from_millis(rng.random_range(5..60)),
                    ..LinkFault::default()
                }
            } else {
                LinkFault {
                    loss_per_mille: rng.random_range(5..50),
                    ..LinkFault::default()
                }
            }),
            Menu::SnapshotInstall => {
                let leader = cluster.leader().await?;
                let followers: Vec<u64> = ids.into_iter().filter(|&id| id != leader).collect();
                Self::SnapshotInstall {
                    node: pick(rng, &followers),
                }
            }
            Menu::Clock => clock_offsets(&ids, rng),
            Menu::Membership => {
                // Quorum-safe only: every node runs and votes, so two remain.
                if cluster.nodes.values().any(|n| !n.running())
                    || voters(cluster).await?.len() != ids.len()
                {
                    return None;
                }
                Self::Membership {
                    node: pick(rng, &ids),
                }
            }
            Menu::Corrupt => Self::Corrupt {
                node: pick(rng, &ids),
                damage: if rng.random_bool(0.7) {
                    Damage::FlipBits(rng.random_range(1..4))
                } else {
                    Damage::Truncate
                },
                segments_only: false,
            },
        };
        Some(fault)
    }

    /// Applies the fault; returns what it did beyond its description.
    pub(super) async fn apply(
        &self,
        cluster: &mut Cluster,
        rng: &mut StdRng,
    ) -> anyhow::Result<String> {
        match self {
            Self::Kill { victims, .. } => {
                for &id in victims {
                    cluster.kill(id);
                }
            }
            Self::Pause { victims, .. } => {
                for &id in victims {
                    cluster.signal(id, "-STOP");
                }
            }
            Self::Partition { cuts, .. } => {
                let cut = LinkFault {
                    cut: true,
                    ..LinkFault::default()
                };
                cluster.network.set_many(cuts, cut)?;
            }
            Self::Links(fault) => cluster.network.set_all(*fault)?,
            Self::SnapshotInstall { node } => {
                let cut = LinkFault {
                    cut: true,
                    ..LinkFault::default()
                };
                for &other in cluster.nodes.keys().filter(|&id| id != node) {
                    cluster.network.set_both(*node, other, cut)?;
                }
            }
            Self::Clock { offsets } => {
                for &(id, offset) in offsets {
                    cluster.skew_clock(id, offset)?;
                }
            }
            Self::Membership { node } => {
                let remaining: Vec<u64> = cluster
                    .nodes
                    .keys()
                    .copied()
                    .filter(|id| id != node)
                    .collect();
                cluster
                    .client()?
                    .change_membership(&remaining, false)
                    .await
                    .context("removing the voter")?;
            }
            Self::PowerLoss { victims, .. } => return power_loss(cluster, victims),
            Self::Corrupt {
                node,
                damage,
                segments_only,
            } => {
                cluster.kill(*node);
                let data_dir = cluster.nodes[node].data_dir.clone();
                return disk::damage(&data_dir, *damage, *segments_only, rng);
            }
        }
        Ok(String::new())
    }

    /// Keeps the fault for a while; returns what happened meanwhile, if worth telling.
    pub(super) async fn hold(
        &self,
        cluster: &Cluster,
        rng: &mut StdRng,
        deadline: Instant,
    ) -> String {
        if let Self::SnapshotInstall { node } = self {
            wait_for_purge_past(cluster, *node).await
        } else {
            rest(rng, 1_000, 3_000, deadline).await;
            String::new()
        }
    }

    /// Heals the fault; returns what it took.
    pub(super) async fn heal(&self, cluster: &mut Cluster) -> anyhow::Result<Healed> {
        match self {
            Self::Kill { victims, .. } | Self::PowerLoss { victims, .. } => {
                // A node must come back from a crash or a power loss by itself; if it
                // refuses its data, that is an anomaly, and the repair lets the run go on.
                let mut healed = Healed::default();
                let mut notes = Vec::new();
                for (id, restarted) in restart_or_repair(cluster, victims).await? {
                    if restarted != Restarted::Running {
                        healed.refused_after_restart.push(id);
                    }
                    notes.push(restarted_note(id, &restarted));
                }
                healed.note = notes.join("; ");
                return Ok(healed);
            }
            Self::Pause { victims, .. } => {
                for &id in victims {
                    cluster.signal(id, "-CONT");
                }
            }
            Self::Partition { .. } | Self::Links(_) | Self::SnapshotInstall { .. } => {
                cluster.network.set_all(LinkFault::default())?;
            }
            Self::Clock { offsets } => {
                for &(id, _) in offsets {
                    cluster.skew_clock(id, 0)?;
                }
            }
            Self::Membership { node } => return Ok(readmit(cluster, &[*node]).await?.into()),
            Self::Corrupt { node, .. } => {
                let notes: Vec<String> = restart_or_repair(cluster, &[*node])
                    .await?
                    .iter()
                    .map(|(id, restarted)| restarted_note(*id, restarted))
                    .collect();
                return Ok(notes.join("; ").into());
            }
        }
        Ok(String::from("healed").into())
    }
}

/// A partition of a random shape.
async fn partition(cluster: &Cluster, ids: &[u64], rng: &mut StdRng) -> Option<Fault> {
    let shape = [
        Shape::Isolate,
        Shape::IsolateLeader,
        Shape::Bridge,
        Shape::OneWay,
    ][rng.random_range(0..4)];
    let node = match shape {
        Shape::IsolateLeader => cluster.leader().await?,
        _ => pick(rng, ids),
    };
    let others = ids.iter().copied().filter(|&id| id != node);
    let cuts = match shape {
        Shape::Isolate | Shape::IsolateLeader => {
            others.flat_map(|other| cut_both(node, other)).collect()
        }
        // `node` is the bridge; the other two cannot reach each other.
        Shape::Bridge => {
            let others: Vec<u64> = others.collect();
            others
                .windows(2)
                .flat_map(|pair| cut_both(pair[0], pair[1]))
                .collect()
        }
        Shape::OneWay => others.map(|other| (node, other)).collect(),
    };
    Some(Fault::Partition { shape, cuts })
}

/// Wall-clock offsets for a random subset of the nodes: small skews within
/// `max_clock_skew`, or jumps of seconds, either way.
fn clock_offsets(ids: &[u64], rng: &mut StdRng) -> Fault {
    let mut offsets = Vec::new();
    for &id in ids {
        if rng.random_bool(0.3) {
            continue;
        }
        // Small skews stay below the nodes' tolerance, jumps go far beyond it.
        let magnitude = if rng.random_bool(0.5) {
            rng.random_range(1..400)
        } else {
            rng.random_range(
                1_000..i64::try_from(super::MAX_CLOCK_JUMP.as_millis()).unwrap_or(10_000),
            )
        };
        offsets.push((
            id,
            if rng.random_bool(0.5) {
                magnitude
            } else {
                -magnitude
            },
        ));
    }
    Fault::Clock { offsets }
}

/// Kills `victims` at once, then undoes what their sync journals show unsynced.
fn power_loss(cluster: &mut Cluster, victims: &[u64]) -> anyhow::Result<String> {
    for &id in victims {
        cluster.kill(id);
    }
    let mut undone = Vec::new();
    for &id in victims {
        let journal = cluster.nodes[&id].journal.clone();
        undone.push(format!("node {id}: {}", disk::power_loss(&journal)?));
    }
    Ok(undone.join("; "))
}

/// The voters the leader reports.
async fn voters(cluster: &Cluster) -> Option<BTreeSet<u64>> {
    let mut client = cluster.client().ok()?;
    let status = leader_status(&mut client).await?;
    Some(
        status
            .members
            .iter()
            .filter(|m| m.voter)
            .map(|m| m.node_id)
            .collect(),
    )
}

/// Waits until the leader has purged its log past `node`'s last entry (so `node` can only
/// catch up by snapshot), or [`PURGE_WAIT`].
async fn wait_for_purge_past(cluster: &Cluster, node: u64) -> String {
    let Ok(mut client) = cluster.client() else {
        return "no client".to_owned();
    };
    let behind = client
        .statuses()
        .await
        .into_iter()
        .find_map(|(_, s)| s.ok().filter(|s| s.node_id == node))
        .and_then(|s| s.last_log_index)
        .unwrap_or(0);
    let deadline = Instant::now() + PURGE_WAIT;
    while Instant::now() < deadline {
        if let Some(leader) = leader_status(&mut client).await
            && leader.node_id != node
            && let Some(purged) = leader.purged_index.filter(|&purged| purged > behind)
        {
            return format!(
                "leader {} purged to {purged}, past {behind}",
                leader.node_id
            );
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    format!("the leader did not purge past {behind} within {PURGE_WAIT:?}")
}

/// Adds `nodes` back as learners and makes every node a voter again.
async fn readmit(cluster: &Cluster, nodes: &[u64]) -> anyhow::Result<String> {
    let mut client = cluster.client()?;
    let voters = voters(cluster)
        .await
        .context("no leader to re-admit with")?;
    let mut readmitted = Vec::new();
    for &node in nodes.iter().filter(|node| !voters.contains(node)) {
        client
            .add_learner(node, &cluster.nodes[&node].addr, true)
            .await
            .with_context(|| format!("adding node {node} as a learner"))?;
        readmitted.push(node);
    }
    if !readmitted.is_empty() {
        let all: Vec<u64> = cluster.nodes.keys().copied().collect();
        client
            .change_membership(&all, false)
            .await
            .context("promoting the learners")?;
    }
    Ok(format!("re-admitted {readmitted:?}"))
}

/// What healing a fault took.
#[derive(Debug, Clone, Default)]
pub(super) struct Healed {
    /// What it did.
    pub(super) note: String,
    /// Nodes that would not take their data back after a crash or a power loss. A kill
    /// keeps the page cache and a power loss undoes only unsynced writes, so a node that
    /// acknowledged nothing before its sync never refuses: each is an anomaly.
    pub(super) refused_after_restart: Vec<u64>,
}

impl From<String> for Healed {
    fn from(note: String) -> Self {
        Self {
            note,
            refused_after_restart: Vec::new(),
        }
    }
}

/// How a restarted node took its data.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Restarted {
    /// It kept running.
    Running,
    /// It refused its data (exited); it was wiped, and the repair's outcome.
    Refused(Result<(), String>),
}

/// Restarts `nodes` at once; each that refuses its data (exits) before it reports its value
/// files verified, within [`REFUSAL_WAIT`], is wiped and repaired with `keel repair`.
async fn restart_or_repair(
    cluster: &mut Cluster,
    nodes: &[u64],
) -> anyhow::Result<Vec<(u64, Restarted)>> {
    for &node in nodes {
        cluster.restart(node)?;
    }
    let mut refused = Vec::new();
    let mut verified = Vec::new();
    let deadline = Instant::now() + REFUSAL_WAIT;
    while Instant::now() < deadline && refused.len() + verified.len() < nodes.len() {
        for &node in nodes {
            if !refused.contains(&node) && !verified.contains(&node) && cluster.exited(node) {
                refused.push(node);
            }
        }
        for node in values_verified(cluster).await {
            if nodes.contains(&node) && !refused.contains(&node) && !verified.contains(&node) {
                verified.push(node);
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let mut outcomes = Vec::new();
    for &node in nodes {
        if refused.contains(&node) {
            cluster.wipe(node)?;
            cluster.restart(node)?;
            let repaired = cluster.repair(node).await.map_err(|e| format!("{e:#}"));
            outcomes.push((node, Restarted::Refused(repaired)));
        } else {
            outcomes.push((node, Restarted::Running));
        }
    }
    Ok(outcomes)
}

/// The nodes whose status says they verified their value files since they started.
async fn values_verified(cluster: &Cluster) -> Vec<u64> {
    let Ok(mut client) = cluster.client() else {
        return Vec::new();
    };
    client
        .statuses()
        .await
        .into_iter()
        .filter_map(|(_, status)| status.ok().filter(|s| s.values_verified))
        .map(|status| status.node_id)
        .collect()
}

fn restarted_note(node: u64, restarted: &Restarted) -> String {
    match restarted {
        Restarted::Running => format!("node {node} restarted and kept running"),
        Restarted::Refused(Ok(())) => format!("node {node} refused its data; wiped and repaired"),
        Restarted::Refused(Err(error)) => {
            format!("node {node} refused its data; wiped, but the repair failed: {error}")
        }
    }
}

/// Heals everything: see [`super::heal_all`].
pub(super) async fn heal_all(cluster: &mut Cluster) -> anyhow::Result<String> {
    let ids: Vec<u64> = cluster.nodes.keys().copied().collect();
    cluster.network.set_all(LinkFault::default())?;
    let mut notes = Vec::new();
    for worker in cluster.worker_ids() {
        cluster.signal_worker(worker, "-CONT");
    }
    for &id in &ids {
        cluster.exited(id);
        cluster.signal(id, "-CONT");
        if cluster.fake_clock() {
            cluster.skew_clock(id, 0)?;
        }
        if !cluster.nodes[&id].running() {
            for (id, restarted) in restart_or_repair(cluster, &[id]).await? {
                notes.push(restarted_note(id, &restarted));
            }
        }
    }
    notes.push(readmit(cluster, &ids).await?);
    Ok(notes.join("; "))
}
