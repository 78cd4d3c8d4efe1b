//! One run: start the cluster, drive clients and the nemesis, heal, read every node, check,
//! and write the report.

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::AtomicU64;
use std::time::{Duration, Instant};

use serde::Serialize;

use std::collections::{BTreeMap, BTreeSet};

use keel_scheduler::client::{WorkflowClient, WorkflowClientError};

use crate::checker::timers::{FinalTimer, check_timers};
use crate::checker::{FinalNode, Validity, check_log};
use crate::cluster::{Cluster, ClusterOptions};
use crate::history::{Call, Op, Recorder};
use crate::nemesis::{self, NemesisKind};
use crate::report;
use crate::workload::log::{LogClient, read_all};
use crate::workload::timers::{self, TimerClient};

/// Time allowed after the last timer is due for its fire to commit everywhere.
const TIMERS_GRACE: Duration = Duration::from_secs(2);

/// The workloads.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Workload {
    /// Unique appends and linearizable reads of the plain log.
    Log,
    /// Named relative timers, their fires delivered to watchers on every node.
    Timers,
}

/// What a run does.
#[derive(Debug, Clone, Serialize)]
pub struct RunConfig {
    /// The workload.
    pub workload: Workload,
    /// The faults.
    pub nemesis: NemesisKind,
    /// How long clients and the nemesis run.
    pub time_limit: Duration,
    /// The seed of every random choice of the harness.
    pub seed: u64,
    /// Concurrent client processes.
    pub clients: u64,
    /// The `keel` binary.
    pub keel: PathBuf,
    /// Where reports go (`<store>/<test>/<timestamp>/`).
    pub store: PathBuf,
    /// A deliberate fault for the nodes (`KEEL_SABOTAGE`; only a sabotage build has any).
    pub sabotage: Option<String>,
}

/// A checker's result, ready for the report.
#[derive(Debug, Clone)]
pub struct Checked {
    /// The verdict.
    pub validity: Validity,
    /// `results.json`.
    pub results: serde_json::Value,
    /// The verdict's lines of `summary.txt`.
    pub summary: String,
}

/// A run's outcome.
#[derive(Debug, Clone)]
pub struct RunOutcome {
    /// The checked result.
    pub checked: Checked,
    /// The report directory.
    pub dir: PathBuf,
}

impl RunConfig {
    /// The test's name: workload and nemesis.
    pub fn test_name(&self) -> String {
        let name = |value: serde_json::Value| value.as_str().map(str::to_owned).unwrap_or_default();
        format!(
            "{}-{}",
            name(serde_json::to_value(self.workload).unwrap_or_default()),
            name(serde_json::to_value(self.nemesis).unwrap_or_default())
        )
    }
}

/// Runs `config` and writes its report.
///
/// # Errors
/// A harness failure (the cluster would not start, a file could not be written); anomalies
/// are not errors but the verdict.
pub async fn run(config: &RunConfig) -> anyhow::Result<RunOutcome> {
    let dir = report::create_dir(&config.store, &config.test_name())?;
    let mut cluster = Cluster::start(
        &config.keel,
        &dir.join("cluster"),
        &ClusterOptions {
            count: 3,
            sabotage: config.sabotage.clone(),
            fake_clock: config.nemesis.needs_fake_clock(),
            seed: config.seed,
        },
    )?;
    cluster.init().await?;
    let history = Recorder::new();
    let deadline = Instant::now() + config.time_limit;
    let mut checked = match config.workload {
        Workload::Log => run_log(config, &mut cluster, &history, deadline).await?,
        Workload::Timers => run_timers(config, &mut cluster, &history, deadline).await?,
    };
    if cluster.announced_sabotage() {
        checked.validity = Validity::Invalid;
        checked
            .summary
            .push_str("a node announced a deliberate fault (SABOTAGE): the run cannot be valid\n");
    }
    cluster.keep_logs(&dir)?;
    drop(cluster);
    report::write(&dir, config, &history.ops(), &checked)?;
    // The nodes' data directories are kept only when something is wrong.
    if checked.validity == Validity::Valid {
        std::fs::remove_dir_all(dir.join("cluster"))?;
    }
    Ok(RunOutcome { checked, dir })
}

async fn run_log(
    config: &RunConfig,
    cluster: &mut Cluster,
    history: &Recorder,
    deadline: Instant,
) -> anyhow::Result<Checked> {
    let high = Arc::new(AtomicU64::new(0));
    let mut clients = Vec::new();
    for process in 1..=config.clients {
        let client = LogClient::new(
            process,
            config.seed.rotate_left(16) ^ process,
            cluster.addrs(),
            config.seed,
            Arc::clone(&high),
        )?;
        clients.push(tokio::spawn(client.run(history.clone(), deadline)));
    }
    nemesis::run(config.nemesis, cluster, history, config.seed, deadline).await;
    for client in clients {
        client.await?;
    }
    let verdict = match final_state(cluster).await {
        Ok(finals) => check_log(&history.ops(), &finals),
        Err(error) => {
            tracing::error!(%error, "reading the final state");
            check_log(&history.ops(), &[])
        }
    };
    Ok(Checked {
        validity: verdict.validity,
        results: serde_json::json!({ "log": verdict }),
        summary: report::verdict_lines(
            "log",
            verdict.validity,
            &serde_json::to_value(&verdict.stats)?,
            &verdict.counts,
            &verdict.anomalies,
        ),
    })
}

async fn run_timers(
    config: &RunConfig,
    cluster: &mut Cluster,
    history: &Recorder,
    deadline: Instant,
) -> anyhow::Result<Checked> {
    let watchers: Vec<_> = cluster
        .nodes
        .values()
        .map(|node| {
            let client = WorkflowClient::new(&cluster.addrs())?;
            Ok(tokio::spawn(timers::watch(
                node.id,
                node.addr.clone(),
                client,
                history.clone(),
            )))
        })
        .collect::<anyhow::Result<_>>()?;
    let mut clients = Vec::new();
    for process in 1..=config.clients {
        let client = TimerClient::new(process, &cluster.addrs(), config.seed)?;
        clients.push(tokio::spawn(client.run(history.clone(), deadline)));
    }
    nemesis::run(config.nemesis, cluster, history, config.seed, deadline).await;
    for client in clients {
        client.await?;
    }
    // Every timer is due by now plus the longest delay; then the cluster settles.
    tokio::time::sleep(Duration::from_millis(timers::DELAY_MS.end) + TIMERS_GRACE).await;
    let finals = match cluster.settle().await {
        Ok(_) => Some(final_timers(cluster, &history.ops()).await?),
        Err(error) => {
            tracing::error!(%error, "the cluster did not settle");
            None
        }
    };
    // Deliveries still arriving now are checked like the others.
    tokio::time::sleep(Duration::from_millis(500)).await;
    for watcher in watchers {
        watcher.abort();
    }
    let (validity, results, summary) = match finals {
        Some(finals) => {
            let verdict = check_timers(&history.ops(), &finals);
            let summary = report::verdict_lines(
                "timers",
                verdict.validity,
                &serde_json::to_value(&verdict.stats)?,
                &verdict.counts,
                &verdict.anomalies,
            );
            (
                verdict.validity,
                serde_json::json!({ "timers": verdict }),
                summary,
            )
        }
        None => (
            Validity::Unknown,
            serde_json::json!({ "timers": "unknown: no final state" }),
            "timers checker: Unknown (the cluster did not settle)\n".to_owned(),
        ),
    };
    Ok(Checked {
        validity,
        results,
        summary,
    })
}

/// The final record of every timer the history scheduled (those that exist).
async fn final_timers(
    cluster: &Cluster,
    ops: &[Op],
) -> anyhow::Result<BTreeMap<String, FinalTimer>> {
    let mut client = WorkflowClient::new(&cluster.addrs())?;
    let names: BTreeSet<&str> = ops
        .iter()
        .filter_map(|op| match &op.call {
            Call::Schedule { name, .. } => Some(name.as_str()),
            _ => None,
        })
        .collect();
    let mut finals = BTreeMap::new();
    for name in names {
        match client.timer(name).await {
            Ok(info) => {
                finals.insert(
                    name.to_owned(),
                    FinalTimer {
                        fired: info.fired,
                        due_ms: info.due_ms,
                        term: info.fire_term,
                        index: info.fire_index,
                        fired_ms: info.fired_ms,
                    },
                );
            }
            Err(WorkflowClientError::Rejected { .. }) => {}
            Err(error) => return Err(error.into()),
        }
    }
    Ok(finals)
}

/// Waits for every node to catch up, then reads each one's log and digest.
async fn final_state(cluster: &Cluster) -> anyhow::Result<Vec<FinalNode>> {
    // A little time for the last commits to reach every node after the heal.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let statuses = cluster.settle().await?;
    let mut client = cluster.client(0)?;
    let mut finals = Vec::new();
    for node in cluster.nodes.values() {
        let status = statuses
            .iter()
            .find(|s| s.node_id == node.id)
            .ok_or_else(|| anyhow::anyhow!("node {} gave no status", node.id))?;
        finals.push(FinalNode {
            node: node.id,
            log: read_all(&mut client, &node.addr).await?,
            applied_index: status.applied_index.unwrap_or(0),
            digest: status.state_digest,
        });
    }
    // The digests were read before the logs; read them again so they match a moment when
    // nothing is being written (the clients stopped).
    for status in client
        .statuses()
        .await
        .into_iter()
        .filter_map(|(_, s)| s.ok())
    {
        if let Some(final_node) = finals.iter_mut().find(|f| f.node == status.node_id) {
            final_node.applied_index = status.applied_index.unwrap_or(0);
            final_node.digest = status.state_digest;
        }
    }
    Ok(finals)
}

/// The exit code of a verdict: 0 valid, 1 invalid, 2 unknown.
pub fn exit_code(validity: Validity) -> i32 {
    match validity {
        Validity::Valid => 0,
        Validity::Invalid => 1,
        Validity::Unknown => 2,
    }
}
