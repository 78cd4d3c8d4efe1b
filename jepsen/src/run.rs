//! One run: start the cluster, drive clients and the nemesis, heal, read every node, check,
//! and write the report.

use std::fmt::Write as _;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::AtomicU64;
use std::time::{Duration, Instant};

use serde::Serialize;

use std::collections::{BTreeMap, BTreeSet};

use keel_raft::pb::client::StatusResponse;

use crate::checker::digests::{DigestSample, check_digests, every_pair_compared};
use crate::checker::timers::{FinalTimer, check_timers};
use crate::checker::workflows::{FinalWorkflow, check_workflows};
use crate::checker::{FinalNode, Validity, Verdict, check_log};
use crate::cluster::{self, Cluster, ClusterOptions};
use crate::history::{Call, NEMESIS, Op, OpType, Recorder};
use crate::logs::check_fences_in_logs;
use crate::nemesis::scenario::Scenario;
use crate::nemesis::{self, NemesisKind};
use crate::network::NetKind;
use crate::report;
use crate::workload::log::{LogClient, read_all};
use crate::workload::read_concurrently;
use crate::workload::timers::{self, TimerClient};
use crate::workload::workflows::{WorkflowMix, WorkflowsClient, final_workflows};

/// Most rounds of reading every node's final log.
const FINAL_READ_ROUNDS: usize = 4;

/// Most rounds of reading every node's digest after the cluster settled, and the pause
/// between two: up to 10 s for every pair of nodes to be seen at one applied index.
const DIGEST_ROUNDS: usize = 100;
const DIGEST_ROUND_PAUSE: Duration = Duration::from_millis(100);

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
    /// Workflows of the built-in kinds (steps, a durable sleep, a child call), each awaited.
    Workflows,
    /// All three at once, on the same cluster.
    Mixed,
}

impl Workload {
    /// Whether the run drives the log workload.
    pub fn has_log(self) -> bool {
        matches!(self, Self::Log | Self::Mixed)
    }

    /// Whether the run drives the timers workload.
    pub fn has_timers(self) -> bool {
        matches!(self, Self::Timers | Self::Mixed)
    }

    /// Whether the run drives the workflows workload.
    pub fn has_workflows(self) -> bool {
        matches!(self, Self::Workflows | Self::Mixed)
    }
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
    /// Show a progress bar on standard error (when it is a terminal).
    #[serde(skip)]
    pub progress: bool,
    /// A regression scenario instead of the nemesis.
    pub scenario: Option<Scenario>,
    /// How the links between the nodes are built (`test.json` records the kind used).
    pub net: NetKind,
    /// TLS on every port, authentication on: the harness an admin by certificate, remote
    /// workers by a worker token ([`crate::security`]).
    pub tls: bool,
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

impl Checked {
    /// One checker's verdict, ready for the report.
    pub fn of(checker: &str, verdict: &impl Verdict) -> Self {
        Checked {
            validity: verdict.validity(),
            results: serde_json::json!({ checker: verdict }),
            summary: report::verdict_lines(
                checker,
                verdict.validity(),
                &verdict.stats(),
                verdict.coverage(),
                verdict.counts(),
                verdict.anomalies(),
            ),
        }
    }

    /// A checker that could not read the final state.
    pub fn unknown(checker: &str, why: &str) -> Self {
        Checked {
            validity: Validity::Unknown,
            results: serde_json::json!({ checker: format!("unknown: {why}") }),
            summary: format!("{checker} checker: Unknown ({why})\n"),
        }
    }

    /// The results of several checkers as one: the worst verdict (invalid over unknown
    /// over valid), their results side by side, their summaries in turn.
    pub fn combine(parts: Vec<Checked>) -> Checked {
        let rank = |v: Validity| match v {
            Validity::Valid => 0,
            Validity::Unknown => 1,
            Validity::Invalid => 2,
        };
        let mut results = serde_json::Map::new();
        let mut summary = String::new();
        let mut validity = Validity::Valid;
        for part in parts {
            if rank(part.validity) > rank(validity) {
                validity = part.validity;
            }
            if let serde_json::Value::Object(map) = part.results {
                results.extend(map);
            }
            summary.push_str(&part.summary);
        }
        Checked {
            validity,
            results: serde_json::Value::Object(results),
            summary,
        }
    }
}

/// A run's outcome.
#[derive(Debug, Clone)]
pub struct RunOutcome {
    /// The checked result.
    pub checked: Checked,
    /// What the checkers (and the nemesis) alone found, before a node's announcement of a
    /// deliberate fault made the run invalid: a negative control must be caught here.
    pub found: Validity,
    /// The report directory.
    pub dir: PathBuf,
}

impl RunConfig {
    /// The test's name: workload and nemesis, or the scenario.
    pub fn test_name(&self) -> String {
        let name = |value: serde_json::Value| value.as_str().map(str::to_owned).unwrap_or_default();
        if let Some(scenario) = self.scenario {
            return format!(
                "scenario-{}",
                name(serde_json::to_value(scenario).unwrap_or_default())
            );
        }
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
    let config = &RunConfig {
        net: config.net.resolve()?,
        ..config.clone()
    };
    let dir = report::create_dir(&config.store, &config.test_name())?;
    let mut cluster = Cluster::start(
        &config.keel,
        &dir.join("cluster"),
        &ClusterOptions {
            count: 3,
            sabotage: config.sabotage.clone(),
            fake_clock: config.nemesis.needs_fake_clock(),
            sync_journal: config.nemesis.needs_sync_journal()
                || config.scenario.is_some_and(Scenario::needs_sync_journal),
            net: config.net,
            seed: config.seed,
            workers: config.scenario.map_or(0, Scenario::workers),
            tls: config.tls,
        },
    )?;
    cluster.init().await?;
    let history = Recorder::new();
    let deadline = Instant::now() + config.time_limit;
    let progress = config
        .progress
        .then(|| tokio::spawn(show_progress(history.clone(), config.time_limit)));
    let checked = drive_and_check(config, &mut cluster, &history, deadline).await;
    if let Some(progress) = progress {
        progress.abort();
    }
    let mut checked = checked?;
    let found = checked.validity;
    if cluster.announced_sabotage() {
        checked.validity = Validity::Invalid;
        checked
            .summary
            .push_str("a node announced a deliberate fault (SABOTAGE): the run cannot be valid\n");
    }
    cluster.keep_logs(&dir)?;
    drop(cluster);
    report::write(&dir, config, &history.ops(), &checked)?;
    tracing::info!(dir = %dir.display(), "report written");
    // The nodes' data directories are kept only when something is wrong.
    if checked.validity == Validity::Valid {
        std::fs::remove_dir_all(dir.join("cluster"))?;
    }
    Ok(RunOutcome {
        checked,
        found,
        dir,
    })
}

/// A progress bar of the run's time, with the operations and faults so far.
async fn show_progress(history: Recorder, time_limit: Duration) {
    let bar = indicatif::ProgressBar::new(time_limit.as_secs());
    bar.set_style(
        indicatif::ProgressStyle::with_template("{elapsed:>4} [{bar:40}] {pos}/{len} s · {msg}")
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar())
            .progress_chars("=> "),
    );
    let started = Instant::now();
    let (mut seen, mut faults) = (0, 0);
    loop {
        bar.set_position(started.elapsed().as_secs().min(time_limit.as_secs()));
        let new = history.ops_from(seen);
        seen += new.len();
        faults += new
            .iter()
            .filter(|op| op.process == NEMESIS && op.kind == OpType::Invoke)
            .count();
        let phase = if started.elapsed() < time_limit {
            "running"
        } else {
            "healing, reading, checking"
        };
        bar.set_message(format!("{seen} operations · {faults} faults · {phase}"));
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// Client or fire-watcher tasks, aborted when dropped (so an error leaves none behind).
#[derive(Debug, Default)]
struct Tasks(Vec<tokio::task::JoinHandle<()>>);

impl Tasks {
    fn push(&mut self, task: tokio::task::JoinHandle<()>) {
        self.0.push(task);
    }

    /// Waits for every task to end by itself.
    async fn join(mut self) -> anyhow::Result<()> {
        for task in std::mem::take(&mut self.0) {
            task.await?;
        }
        Ok(())
    }
}

impl Drop for Tasks {
    fn drop(&mut self) {
        for task in &self.0 {
            task.abort();
        }
    }
}

/// Starts the workload's clients (until `deadline`) and, for timers, a fire watcher per node.
fn start_clients(
    config: &RunConfig,
    cluster: &Cluster,
    history: &Recorder,
    deadline: Instant,
) -> anyhow::Result<(Tasks, Tasks)> {
    let mut clients = Tasks::default();
    let mut watchers = Tasks::default();
    if config.workload.has_log() {
        let high = Arc::new(AtomicU64::new(0));
        for process in 1..=config.clients {
            let client = LogClient::new(
                process,
                cluster.addrs(),
                cluster.credentials(),
                config.seed,
                Arc::clone(&high),
            )?;
            clients.push(tokio::spawn(client.run(history.clone(), deadline)));
        }
    }
    if config.workload.has_timers() {
        for node in cluster.nodes.values() {
            let client = cluster.workflow_client()?;
            watchers.push(tokio::spawn(timers::watch(
                node.id,
                node.addr.clone(),
                client,
                history.clone(),
            )));
        }
        // Process numbers after the log clients', so every client has its own.
        for process in config.clients + 1..=2 * config.clients {
            let client = TimerClient::new(
                process,
                &cluster.addrs(),
                cluster.credentials(),
                config.seed,
            )?;
            clients.push(tokio::spawn(client.run(history.clone(), deadline)));
        }
    }
    if config.workload.has_workflows() {
        // Process numbers after the log and timer clients'.
        for process in 2 * config.clients + 1..=3 * config.clients {
            let mix = if cluster.worker_ids().is_empty() {
                WorkflowMix::Quick
            } else {
                WorkflowMix::WithSlowSteps
            };
            let client = WorkflowsClient::new(
                process,
                &cluster.addrs(),
                cluster.credentials(),
                config.seed,
                mix,
            )?;
            clients.push(tokio::spawn(client.run(history.clone(), deadline)));
        }
    }
    Ok((clients, watchers))
}

/// Starts the workload's clients (and fire watchers), runs the nemesis until `deadline`,
/// heals, reads the final state and checks the history.
async fn drive_and_check(
    config: &RunConfig,
    cluster: &mut Cluster,
    history: &Recorder,
    deadline: Instant,
) -> anyhow::Result<Checked> {
    let (clients, watchers) = start_clients(config, cluster, history, deadline)?;
    let nemesis_report = match config.scenario {
        Some(scenario) => {
            nemesis::run_scenario(scenario, cluster, history, config.seed, deadline).await
        }
        None => nemesis::run(config.nemesis, cluster, history, config.seed, deadline).await,
    };
    clients.join().await?;
    tracing::info!("clients done and faults healed; checking");
    if config.workload.has_timers() {
        // Every timer is due by now plus the longest delay (and the largest clock jump a
        // leader may have stamped its due time with); then the cluster settles.
        let mut grace = Duration::from_millis(timers::DELAY_MS.end) + TIMERS_GRACE;
        if config.nemesis.needs_fake_clock() {
            grace += nemesis::MAX_CLOCK_JUMP;
        }
        tokio::time::sleep(grace).await;
    }
    // A little time for the last commits to reach every node after the heal; then every
    // checker reads the settled cluster (or, if it never settles, gives up at once).
    tokio::time::sleep(Duration::from_millis(500)).await;
    let settled = cluster.settle().await.map_err(|error| {
        tracing::error!(%error, "the cluster did not settle");
        format!("{error:#}")
    });
    let mut parts = Vec::new();
    if !nemesis_report.is_clean() {
        parts.push(nemesis_part(&nemesis_report));
    }
    if config.workload.has_log() {
        parts.push(check_log_part(cluster, history, &settled).await?);
        tracing::info!("log checked");
    }
    let mut workflows = None;
    if config.workload.has_workflows() {
        let (checked, finals) = check_workflows_part(cluster, history, &settled).await;
        parts.push(checked);
        workflows = Some(finals);
        tracing::info!("workflows checked");
    }
    if config.workload.has_timers() {
        // The watchers stop before the final records are read, so every delivery they
        // recorded carries a token committed by then.
        tokio::time::sleep(Duration::from_millis(500)).await;
        drop(watchers);
        parts.push(check_timers_part(cluster, history, &settled).await);
        tracing::info!("timers checked");
    }
    parts.push(check_digests_part(cluster, &settled).await);
    tracing::info!("digests checked");
    // Last: it stops the nodes to read their logs.
    match workflows {
        Some(Some(finals)) => {
            parts.push(match check_fences_in_logs(cluster, &finals).await {
                Ok(verdict) => Checked::of("log-fences", &verdict),
                Err(why) => Checked::unknown("log-fences", &why),
            });
            tracing::info!("fences checked against the log");
        }
        Some(None) => parts.push(Checked::unknown(
            "log-fences",
            "the workflows checker could not read the final workflows",
        )),
        None => {}
    }
    Ok(Checked::combine(parts))
}

/// What the nemesis saw that is itself an anomaly: nodes that refused their data after a
/// kill or a simulated power loss, leaders elected with a wiped node's vote, node
/// processes that ended by themselves.
fn nemesis_part(report: &nemesis::NemesisReport) -> Checked {
    let anomalies: Vec<(&str, u64, &String)> = report
        .refused_after_restart
        .iter()
        .map(|(node, fault)| ("refused-after-restart", *node, fault))
        .chain(
            report
                .elected_with_wiped_voter
                .iter()
                .map(|(node, fault)| ("elected-with-wiped-voter", *node, fault)),
        )
        .chain(
            report
                .crashed
                .iter()
                .map(|(node, when)| ("node-crashed", *node, when)),
        )
        .collect();
    let mut summary = "nemesis checker: Invalid\n".to_owned();
    for (kind, node, fault) in &anomalies {
        let _ = writeln!(summary, "  - {kind}: node {node}: {fault}");
    }
    let results: Vec<serde_json::Value> = anomalies
        .iter()
        .map(
            |(kind, node, fault)| serde_json::json!({ "kind": kind, "node": node, "fault": fault }),
        )
        .collect();
    Checked {
        validity: Validity::Invalid,
        results: serde_json::json!({ "nemesis": { "validity": "invalid", "anomalies": results } }),
        summary,
    }
}

/// Whether the cluster settled after the heal: its statuses, or why not.
type Settled = Result<Vec<StatusResponse>, String>;

async fn check_log_part(
    cluster: &Cluster,
    history: &Recorder,
    settled: &Settled,
) -> anyhow::Result<Checked> {
    let finals = match settled {
        Ok(_) => final_state(cluster).await,
        Err(why) => Err(anyhow::anyhow!("{why}")),
    };
    let verdict = match finals {
        Ok(finals) => check_log(&history.ops(), &finals),
        Err(error) => {
            tracing::error!(%error, "reading the final state");
            check_log(&history.ops(), &[])
        }
    };
    Ok(Checked::of("log", &verdict))
}

/// The workflows checker's verdict, and the final records it read (for the log-fences
/// checker).
async fn check_workflows_part(
    cluster: &Cluster,
    history: &Recorder,
    settled: &Settled,
) -> (Checked, Option<BTreeMap<String, FinalWorkflow>>) {
    if let Err(why) = settled {
        return (Checked::unknown("workflows", why), None);
    }
    // The final reads then read most step values from the nodes' value files rather than
    // the log. A node that cannot build one is not an anomaly of this checker; its reads
    // still are checked.
    match cluster.snapshot_all().await {
        Ok(built) => tracing::info!(?built, "snapshots built before the final reads"),
        Err(error) => tracing::warn!(%error, "building snapshots before the final reads"),
    }
    let finals = match cluster.workflow_client() {
        Ok(client) => final_workflows(&client, &history.ops()).await,
        Err(error) => Err(error.into()),
    };
    match finals {
        Ok(finals) => (
            Checked::of("workflows", &check_workflows(&history.ops(), &finals)),
            Some(finals),
        ),
        Err(error) => (
            Checked::unknown("workflows", &format!("reading the final state: {error:#}")),
            None,
        ),
    }
}

async fn check_timers_part(cluster: &Cluster, history: &Recorder, settled: &Settled) -> Checked {
    if let Err(why) = settled {
        return Checked::unknown("timers", why);
    }
    match final_timers(cluster, &history.ops()).await {
        Ok(finals) => Checked::of(
            "timers",
            &check_timers(&history.ops(), &finals, cluster::MAX_CLOCK_SKEW),
        ),
        Err(error) => Checked::unknown("timers", &format!("reading the final state: {error:#}")),
    }
}

/// The final record of every timer the history scheduled (those that exist).
async fn final_timers(
    cluster: &Cluster,
    ops: &[Op],
) -> anyhow::Result<BTreeMap<String, FinalTimer>> {
    let client = cluster.workflow_client()?;
    let names: Vec<String> = ops
        .iter()
        .filter_map(|op| match &op.call {
            Call::Schedule { name, .. } => Some(name.clone()),
            _ => None,
        })
        .collect::<BTreeSet<String>>()
        .into_iter()
        .collect();
    Ok(read_concurrently(&client, &names, async |client, name| {
        let info = client.timer(name).await?;
        Ok(FinalTimer {
            fired: info.fired,
            due_ms: info.due_ms,
            term: info.fire_term,
            index: info.fire_index,
            fired_ms: info.fired_ms,
        })
    })
    .await?)
}

/// Reads each node's log once the cluster settled.
async fn final_state(cluster: &Cluster) -> anyhow::Result<Vec<FinalNode>> {
    let mut client = cluster.client()?;
    let mut finals: Vec<FinalNode> = cluster
        .nodes
        .values()
        .map(|node| FinalNode {
            node: node.id,
            log: Vec::new(),
        })
        .collect();
    // An append a timed-out client left in flight may still commit while the nodes are
    // read one after another: read until two rounds agree (a few at most), so a difference
    // left over is the nodes', not the reading's.
    for round in 0..FINAL_READ_ROUNDS {
        let mut changed = false;
        for final_node in &mut finals {
            let addr = &cluster.nodes[&final_node.node].addr;
            let log = read_all(&mut client, addr).await?;
            changed |= log != final_node.log;
            final_node.log = log;
        }
        if !changed && round > 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    Ok(finals)
}

/// Reads every node's applied index and digest in rounds, after the cluster settled, until
/// every pair of nodes has been seen at one index (or [`DIGEST_ROUNDS`] rounds passed), and
/// compares them.
async fn check_digests_part(cluster: &Cluster, settled: &Settled) -> Checked {
    if let Err(why) = settled {
        return Checked::unknown("digests", why);
    }
    let mut client = match cluster.client() {
        Ok(client) => client,
        Err(error) => return Checked::unknown("digests", &format!("{error:#}")),
    };
    let nodes: Vec<u64> = cluster.nodes.keys().copied().collect();
    let mut rounds = Vec::new();
    for _ in 0..DIGEST_ROUNDS {
        let round: Vec<DigestSample> = client
            .statuses()
            .await
            .into_iter()
            .filter_map(|(_, status)| status.ok())
            .map(|status| DigestSample {
                node: status.node_id,
                applied_index: status.applied_index.unwrap_or(0),
                digest: status.state_digest,
            })
            .collect();
        rounds.push(round);
        if every_pair_compared(&nodes, &rounds) {
            break;
        }
        tokio::time::sleep(DIGEST_ROUND_PAUSE).await;
    }
    Checked::of("digests", &check_digests(&nodes, &rounds))
}

/// The exit code of a verdict: 0 valid, 1 invalid, 2 unknown.
pub fn exit_code(validity: Validity) -> i32 {
    match validity {
        Validity::Valid => 0,
        Validity::Invalid => 1,
        Validity::Unknown => 2,
    }
}
