//! One run: start the cluster, drive clients and the nemesis, heal, read every node, check,
//! and write the report.

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::AtomicU64;
use std::time::{Duration, Instant};

use serde::Serialize;

use crate::checker::{FinalNode, LogVerdict, Validity, check_log};
use crate::cluster::Cluster;
use crate::history::Recorder;
use crate::nemesis::{self, NemesisKind};
use crate::report;
use crate::workload::{LogClient, read_all};

/// The workloads.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Workload {
    /// Unique appends and linearizable reads of the plain log.
    Log,
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
}

/// A run's outcome.
#[derive(Debug, Clone)]
pub struct RunOutcome {
    /// The verdict.
    pub verdict: LogVerdict,
    /// The report directory.
    pub dir: PathBuf,
}

impl RunConfig {
    /// The test's name: workload and nemesis.
    pub fn test_name(&self) -> String {
        format!(
            "{}-{}",
            serde_json::to_value(self.workload)
                .ok()
                .and_then(|v| v.as_str().map(str::to_owned))
                .unwrap_or_default(),
            serde_json::to_value(self.nemesis)
                .ok()
                .and_then(|v| v.as_str().map(str::to_owned))
                .unwrap_or_default()
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
    let mut cluster = Cluster::start(&config.keel, &dir.join("cluster"), 3)?;
    cluster.init().await?;
    let history = Recorder::new();
    let deadline = Instant::now() + config.time_limit;
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
    nemesis::run(
        config.nemesis,
        &mut cluster,
        &history,
        config.seed,
        deadline,
    )
    .await;
    for client in clients {
        client.await?;
    }
    let finals = final_state(&cluster).await;
    let verdict = match &finals {
        Ok(finals) => check_log(&history.ops(), finals),
        Err(error) => {
            tracing::error!(%error, "reading the final state");
            check_log(&history.ops(), &[])
        }
    };
    cluster.keep_logs(&dir)?;
    drop(cluster);
    report::write(&dir, config, &history.ops(), &verdict)?;
    // The nodes' data directories are kept only when something is wrong.
    if verdict.validity == Validity::Valid {
        std::fs::remove_dir_all(dir.join("cluster"))?;
    }
    Ok(RunOutcome { verdict, dir })
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
