//! Regression scenarios: fixed fault schedules aimed at known bugs of Raft logs, each a
//! named, seeded run (`keel-jepsen run --scenario NAME --seed N`) checked like any other.

use std::time::{Duration, Instant};

use super::fault::{Fault, Shape, Target, cut_both};
use super::{Hold, Injection, disk::Damage, record};
use crate::cluster::leader_status;
use crate::history::{Call, OpType, Recorder};
use crate::run::Workload;

/// Writes sent straight to a leader cut off in the minority, each as its own process
/// (numbered from [`MINORITY_WRITERS`] + 1): they can only be appended to its log
/// uncommitted, so healing must truncate them.
const MINORITY_WRITES: u64 = 5;
/// Process numbers of the minority writes, above every client's.
pub const MINORITY_WRITERS: u64 = 900;

/// The scenarios.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Scenario {
    /// Each newly elected leader loses power at once, with its unsynced writes: nothing it
    /// acknowledged may be lost.
    LeaderKillUnsynced,
    /// One node at a time is killed and restarted: it re-applies committed entries on
    /// restart, and its timers come back without firing twice or early.
    RestartReapplies,
    /// The leader is paused past a new election and resumes: as a deposed leader it must
    /// neither fire timers nor serve linearizable reads.
    PausedLeader,
    /// The leader is cut off from both followers (it keeps taking writes it cannot commit),
    /// then the partition heals: its uncommitted tail must be truncated exactly, nothing
    /// acknowledged lost.
    LeaderInMinority,
    /// Bit flips in the log segments of one node at a time: acknowledged entries survive.
    MinorityBitFlips,
    /// Every node is killed at once and restarted, again and again: no acknowledged entry,
    /// timer or workflow may be lost, and every node must take its data back.
    AllCrash,
    /// A node's data directory is wiped and it restarts without repair; then another node
    /// dies, so only the wiped node's vote could elect a leader. It must not give it (no
    /// leader may be elected); then the dead node returns and the wiped one is repaired.
    WipedVoter,
    /// Two remote workers run the workflows (the nodes run none); one at a time is paused
    /// past its lease, so the other takes its workflows over, then resumed: the resumed
    /// worker's runs must not record anything more in journals they no longer hold.
    PausedWorker,
}

impl Scenario {
    /// The workload whose checker watches for the bug.
    pub fn workload(self) -> Workload {
        match self {
            Self::LeaderKillUnsynced
            | Self::LeaderInMinority
            | Self::MinorityBitFlips
            | Self::WipedVoter => Workload::Log,
            Self::RestartReapplies => Workload::Timers,
            Self::PausedWorker => Workload::Workflows,
            Self::PausedLeader | Self::AllCrash => Workload::Mixed,
        }
    }

    /// Whether the nodes must journal their writes and syncs.
    pub fn needs_sync_journal(self) -> bool {
        self == Self::LeaderKillUnsynced
    }

    /// How many remote workers run the workflows (none: the nodes run them).
    pub fn workers(self) -> u64 {
        if self == Self::PausedWorker { 2 } else { 0 }
    }
}

/// Runs `scenario` until `deadline` (the caller heals everything after).
pub(super) async fn run(scenario: Scenario, run: &mut Injection<'_>) {
    tokio::time::sleep(Duration::from_secs(2)).await;
    let ids: Vec<u64> = run.cluster.nodes.keys().copied().collect();
    let mut round = 0usize;
    while Instant::now() + Duration::from_secs(3) < run.deadline {
        let node = ids[round % ids.len()];
        round += 1;
        match scenario {
            Scenario::LeaderKillUnsynced => {
                if let Some(leader) = wait_for_leader(run).await {
                    let fault = Fault::PowerLoss {
                        target: Target::Leader,
                        victims: vec![leader],
                    };
                    run.inject(&fault, Hold::For(Duration::from_millis(300)))
                        .await;
                }
            }
            Scenario::RestartReapplies => {
                let fault = Fault::Kill {
                    target: Target::Random,
                    victims: vec![node],
                };
                run.inject(&fault, Hold::For(Duration::from_millis(300)))
                    .await;
                tokio::time::sleep(Duration::from_millis(1_500)).await;
            }
            Scenario::PausedLeader => paused_leader(run).await,
            Scenario::LeaderInMinority => leader_in_minority(run, &ids).await,
            Scenario::MinorityBitFlips => {
                let fault = Fault::Corrupt {
                    node,
                    damage: Damage::FlipBits(u32::try_from(round % 3 + 1).unwrap_or(1)),
                    segments_only: true,
                };
                run.inject(&fault, Hold::For(Duration::from_millis(500)))
                    .await;
                tokio::time::sleep(Duration::from_secs(2)).await;
            }
            Scenario::AllCrash => {
                let fault = Fault::Kill {
                    target: Target::All,
                    victims: ids.clone(),
                };
                run.inject(&fault, Hold::For(Duration::from_millis(300)))
                    .await;
                tokio::time::sleep(Duration::from_secs(2)).await;
            }
            Scenario::WipedVoter => wiped_voter(run, node).await,
            Scenario::PausedWorker => {
                let workers = run.cluster.worker_ids();
                paused_worker(run, workers[round % workers.len()]).await;
            }
        }
    }
}

/// How long a worker is paused: past its 3 s lease (`worker_lease`) and the leader's next
/// expiry pass.
const WORKER_PAUSE: Duration = Duration::from_millis(4_500);

/// SIGSTOPs worker `worker` past its lease, then SIGCONTs it.
async fn paused_worker(run: &mut Injection<'_>, worker: u64) {
    let detail = format!("worker {worker} paused past its lease");
    record(run.history, OpType::Invoke, "pause-worker", &detail, None);
    run.cluster.signal_worker(worker, "-STOP");
    tokio::time::sleep(WORKER_PAUSE).await;
    run.cluster.signal_worker(worker, "-CONT");
    record(run.history, OpType::Ok, "pause-worker", &detail, None);
    tokio::time::sleep(Duration::from_secs(2)).await;
}

/// Pauses the leader until another node leads, then resumes it.
async fn paused_leader(run: &mut Injection<'_>) {
    if let Some(leader) = wait_for_leader(run).await {
        let fault = Fault::Pause {
            target: Target::Leader,
            victims: vec![leader],
        };
        let hold = Hold::UntilNewLeader {
            old: leader,
            at_most: Duration::from_secs(5),
        };
        run.inject(&fault, hold).await;
        tokio::time::sleep(Duration::from_secs(2)).await;
    }
}

/// Cuts the leader off from every other node for a while.
async fn leader_in_minority(run: &mut Injection<'_>, ids: &[u64]) {
    if let Some(leader) = wait_for_leader(run).await {
        let cuts = ids
            .iter()
            .filter(|&&id| id != leader)
            .flat_map(|&other| cut_both(leader, other))
            .collect();
        let fault = Fault::Partition {
            shape: Shape::IsolateLeader,
            cuts,
        };
        // The clients' own writes in flight at the cut may already sit on the followers;
        // these cannot, so the deposed leader surely holds a tail to truncate.
        let addr = run.cluster.nodes[&leader].addr.clone();
        let writes = tokio::spawn(write_to_minority(addr, run.history.clone()));
        run.inject(&fault, Hold::For(Duration::from_secs(3))).await;
        let _ = writes.await;
        tokio::time::sleep(Duration::from_secs(2)).await;
    }
}

/// Sends [`MINORITY_WRITES`] appends to the leader at `addr` once it is cut off, without
/// retries or deduplication; each is recorded, and is `info` unless it was acknowledged.
async fn write_to_minority(addr: String, history: Recorder) {
    tokio::time::sleep(Duration::from_millis(300)).await;
    let writes = (1..=MINORITY_WRITES).map(|k| {
        let addr = addr.clone();
        let history = history.clone();
        async move {
            let process = MINORITY_WRITERS + k;
            let value = format!("{process}:0");
            let call = |offset| Call::Append {
                value: value.clone(),
                offset,
            };
            history.record(process, OpType::Invoke, call(None), None);
            let append = async {
                let mut client = keel_raft::pb::client::keel_log_client::KeelLogClient::connect(
                    format!("http://{addr}"),
                )
                .await
                .map_err(|e| e.to_string())?;
                let request = keel_raft::pb::client::AppendRequest {
                    session: 0,
                    seq: 0,
                    records: vec![value.clone().into()],
                };
                client
                    .append(request)
                    .await
                    .map(|r| r.into_inner().first_offset)
                    .map_err(|e| e.to_string())
            };
            let (kind, offset, error) =
                match tokio::time::timeout(Duration::from_secs(2), append).await {
                    Ok(Ok(offset)) => (OpType::Ok, Some(offset), None),
                    Ok(Err(error)) => (OpType::Info, None, Some(error)),
                    Err(_) => (OpType::Info, None, Some("no answer within 2 s".to_owned())),
                };
            history.record(process, kind, call(offset), error);
        }
    });
    futures::future::join_all(writes).await;
}

/// The highest term the running nodes report.
async fn max_term(client: &mut keel_raft::client::KeelClient) -> u64 {
    client
        .statuses()
        .await
        .into_iter()
        .filter_map(|(_, status)| status.ok())
        .map(|status| status.term)
        .max()
        .unwrap_or(0)
}

/// The leader, once there is one (at most 5 s).
async fn wait_for_leader(run: &Injection<'_>) -> Option<u64> {
    let until = Instant::now() + Duration::from_secs(5);
    while Instant::now() < until {
        if let Some(leader) = run.cluster.leader().await {
            return Some(leader);
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    None
}

/// Wipes `node` and restarts it without repair; kills another node; checks that no leader
/// is elected while only the wiped node could complete a majority; then restores both.
async fn wiped_voter(run: &mut Injection<'_>, node: u64) {
    let Some(other) = run.cluster.nodes.keys().copied().find(|&id| id != node) else {
        return;
    };
    let detail = format!("wipe node {node} and restart it unrepaired, then kill node {other}");
    record(run.history, OpType::Invoke, "wiped-voter", &detail, None);
    let mut notes = Vec::new();
    let steps = async {
        run.cluster.wipe(node)?;
        run.cluster.restart(node)?;
        tokio::time::sleep(Duration::from_secs(2)).await;
        run.cluster.kill(other);
        let mut client = run.cluster.client()?;
        let term_at_kill = max_term(&mut client).await;
        // Several election timeouts: a leader elected now could only have the wiped node's
        // vote (a leader of an earlier term may linger until it notices).
        let until = Instant::now() + Duration::from_secs(4);
        while Instant::now() < until {
            if let Some(leader) = leader_status(&mut client).await
                && leader.term > term_at_kill
            {
                run.report
                    .elected_with_wiped_voter
                    .push((leader.node_id, detail.clone()));
                notes.push(format!(
                    "node {} was elected in term {} with the wiped node's vote",
                    leader.node_id, leader.term
                ));
                break;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        run.cluster.restart(other)?;
        run.cluster.repair(node).await?;
        anyhow::Ok(())
    };
    match steps.await {
        Ok(()) => notes.push(format!("node {node} repaired")),
        Err(error) => notes.push(format!("failed: {error:#}")),
    }
    record(
        run.history,
        OpType::Ok,
        "wiped-voter",
        &format!("{detail}; {}", notes.join("; ")),
        None,
    );
    tokio::time::sleep(Duration::from_secs(2)).await;
}
