//! `keel`: run a node, a local development cluster, and talk to a cluster.
#![allow(
    clippy::print_stdout,
    reason = "a command-line program answers on stdout"
)]

use std::collections::{BTreeMap, BTreeSet};
use std::io::BufRead;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, bail};
use bytes::Bytes;
use clap::{Parser, Subcommand};
use keel_raft::client::{ClientError, WriteId};
use keel_raft::node::NodeConfig;
use keel_scheduler::engine::EngineSettings;
use keel_scheduler::{ConfigFile, Node, builtin};

mod certs;
mod cluster_args;
mod demo;
mod demo_agents;
mod dev;
mod workflows;

use cluster_args::{ClusterArgs, DEV_BASE_PORT, DEV_DATA_DIR, client, credentials, endpoints};

#[derive(Debug, Parser)]
#[command(
    name = "keel",
    version,
    about = "Keel: a replicated durable log and scheduler"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run one node from a TOML configuration file.
    Node {
        /// The configuration file.
        #[arg(long)]
        config: PathBuf,
    },
    /// Run a local three-node cluster on loopback until Ctrl-C.
    Dev {
        /// Where the nodes keep their data.
        #[arg(long, default_value = DEV_DATA_DIR)]
        data_dir: PathBuf,
        /// gRPC port of node 1 (nodes 2 and 3 take the next ones; metrics are 100 higher).
        #[arg(long, default_value_t = DEV_BASE_PORT)]
        base_port: u16,
        /// Acknowledge from the page cache (non-durable).
        #[arg(long)]
        relaxed: bool,
        /// TLS on every port and client certificates required (`keel certs` into the data
        /// directory's `certs/` first, if not there yet); client commands find them.
        #[arg(long)]
        tls: bool,
    },
    /// Create a CA, node certificates and client certificates (one per role) for a local
    /// cluster.
    Certs(certs::CertsArgs),
    /// Form a cluster of the given nodes (each must be running and uninitialized).
    Init(ClusterArgs),
    /// Show every node's role, term, indexes and state digest; or, given a workflow id,
    /// that workflow's status and journal.
    Status {
        #[command(flatten)]
        cluster: ClusterArgs,
        /// A workflow id.
        workflow: Option<String>,
    },
    /// Start a workflow (built-in kinds: research-agent, summarize, steps, sleep,
    /// await-signal, late-signal, call-sleep, slow-step, flaky).
    Start(workflows::StartArgs),
    /// List workflows.
    List(workflows::ListArgs),
    /// Send a signal to a workflow.
    Signal(workflows::SignalArgs),
    /// Cancel a workflow and its running children.
    Cancel(workflows::CancelArgs),
    /// Rebind a remote cluster whose callee was re-created (wiped, restored): its
    /// unresolved calls fail, and the next Hello binds the cluster at its addresses.
    RebindRemote(workflows::RebindArgs),
    /// Run a remote worker of the built-in workflow kinds until Ctrl-C.
    Worker {
        #[command(flatten)]
        cluster: ClusterArgs,
        /// The worker's id (unique among workers).
        #[arg(long)]
        id: u64,
    },
    /// Run the demo: a three-node cluster of `keel node` processes runs a research-agent
    /// workflow while its leader is killed (`keel demo agents`: two clusters, an agent in
    /// one calling an agent in the other through leader kills and a cut link).
    Demo(demo::DemoArgs),
    /// Append records (arguments, or stdin lines when none) as one batch, exactly once: in
    /// a new session the cluster registers, retried through failovers with the same
    /// sequence. If its outcome stays unknown, the command prints the `--session` and
    /// `--seq` that re-send it without a risk of a second copy.
    Append {
        #[command(flatten)]
        cluster: ClusterArgs,
        /// Re-send in this session (registered by an earlier `keel append`) instead of a
        /// new one: with the same `--seq`, a batch whose outcome was unknown is applied at
        /// most once in all; a session that has expired meanwhile is refused.
        #[arg(long, requires = "seq", conflicts_with = "at_most_once")]
        session: Option<u64>,
        /// The batch's sequence number in `--session`.
        #[arg(long, requires = "session")]
        seq: Option<u64>,
        /// No session: a batch whose outcome is unknown is not retried (no risk of a
        /// second copy, no certainty of one).
        #[arg(long)]
        at_most_once: bool,
        /// The records.
        records: Vec<String>,
    },
    /// Read records from an offset (linearizable).
    Read {
        #[command(flatten)]
        cluster: ClusterArgs,
        /// First offset.
        #[arg(long, default_value_t = 0)]
        from: u64,
        /// Most records.
        #[arg(long, default_value_t = 100)]
        max: u32,
        /// Keep streaming new records.
        #[arg(long)]
        follow: bool,
    },
    /// Add a node as a learner.
    AddLearner {
        #[command(flatten)]
        cluster: ClusterArgs,
        /// Its node id.
        #[arg(long)]
        id: u64,
        /// Its gRPC address.
        #[arg(long)]
        addr: String,
    },
    /// Replace the set of voters.
    ChangeMembership {
        #[command(flatten)]
        cluster: ClusterArgs,
        /// The new voters.
        #[arg(long, value_delimiter = ',', required = true)]
        voters: Vec<u64>,
        /// Keep removed voters as learners.
        #[arg(long)]
        retain: bool,
    },
    /// Have one node build a snapshot of its state now (its log is then purged behind it).
    Snapshot {
        #[command(flatten)]
        cluster: ClusterArgs,
        /// The node's gRPC address.
        #[arg(long)]
        addr: String,
    },
    /// The cluster's identity, which other clusters know it by in calls between clusters.
    #[command(subcommand)]
    Identity(IdentityCommand),
    /// Re-admit a node whose data directory was wiped: remove it as a voter, add it as a
    /// learner with its new data directory, wait for it to catch up, promote it.
    Repair {
        #[command(flatten)]
        cluster: ClusterArgs,
        /// The node's id.
        #[arg(long)]
        id: u64,
        /// The node's gRPC address.
        #[arg(long)]
        addr: String,
    },
}

#[derive(Debug, Subcommand)]
enum IdentityCommand {
    /// Replace the identity with a new incarnation: run it on a cluster re-created from
    /// old data (restored from backups, copied data directories) before it serves. Every
    /// unresolved call it made to another cluster fails (`caller-restored`), every call it
    /// runs for another cluster is cancelled (`callee-restored`), and its callers must
    /// `keel rebind-remote` it.
    Remint {
        #[command(flatten)]
        cluster: ClusterArgs,
        /// A new name (default: the name in force).
        #[arg(long)]
        name: Option<String>,
    },
}

pub(crate) fn init_tracing() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info,openraft=warn"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_target(false)
        .init();
}

fn main() -> anyhow::Result<()> {
    keel_scheduler::allocator::fix_mmap_threshold();
    let cli = Cli::parse();
    if let Command::Node { config } = &cli.command {
        init_tracing();
        let settings = ConfigFile::load(config)?;
        let runtime = settings
            .build_runtime()
            .context("starting the async runtime")?;
        let registry = if settings.run_workflows {
            builtin::registry()
        } else {
            keel_scheduler::engine::registry::Registry::new()
        };
        return runtime.block_on(run_node(
            settings.node,
            registry,
            settings.engine,
            settings.peers,
        ));
    }
    tokio::runtime::Runtime::new()
        .context("starting the async runtime")?
        .block_on(run_command(cli.command))
}

async fn run_command(command: Command) -> anyhow::Result<()> {
    match command {
        Command::Node { .. } => unreachable!("`keel node` runs on its configured runtime"),
        Command::Dev {
            data_dir,
            base_port,
            relaxed,
            tls,
        } => dev::run_dev(&data_dir, base_port, relaxed, tls).await,
        Command::Certs(args) => {
            for line in certs::write_certs(&args)? {
                println!("{line}");
            }
            Ok(())
        }
        Command::Init(cluster) => init(&cluster).await,
        Command::Status {
            cluster,
            workflow: None,
        } => status(&cluster).await,
        Command::Status {
            cluster,
            workflow: Some(id),
        } => workflows::show(&cluster, &id).await,
        Command::Start(args) => workflows::start(args).await,
        Command::List(args) => workflows::list(args).await,
        Command::Signal(args) => workflows::signal(args).await,
        Command::Cancel(args) => workflows::cancel(args).await,
        Command::RebindRemote(args) => workflows::rebind_remote(args).await,
        Command::Demo(args) => demo::run(args).await,
        Command::Worker { cluster, id } => run_worker(&cluster, id).await,
        Command::Append {
            cluster,
            session,
            seq,
            at_most_once,
            records,
        } => {
            let writes = match (session, seq) {
                (Some(session), Some(seq)) => AppendWrites::Resume { session, seq },
                _ if at_most_once => AppendWrites::AtMostOnce,
                _ => AppendWrites::NewSession,
            };
            append(&cluster, writes, records).await
        }
        Command::Read {
            cluster,
            from,
            max,
            follow,
        } => read(&cluster, from, max, follow).await,
        command @ (Command::AddLearner { .. }
        | Command::ChangeMembership { .. }
        | Command::Snapshot { .. }
        | Command::Identity(_)
        | Command::Repair { .. }) => administer(command).await,
    }
}

/// The cluster administration commands.
async fn administer(command: Command) -> anyhow::Result<()> {
    match command {
        Command::AddLearner { cluster, id, addr } => {
            let index = client(&cluster)?.add_learner(id, &addr, false).await?;
            println!("node {id} added as a learner (log index {index})");
            Ok(())
        }
        Command::ChangeMembership {
            cluster,
            voters,
            retain,
        } => {
            let index = client(&cluster)?.change_membership(&voters, retain).await?;
            println!("voters are now {voters:?} (log index {index})");
            Ok(())
        }
        Command::Snapshot { cluster, addr } => {
            let index = client(&cluster)?.build_snapshot(&addr).await?;
            println!("{addr} built a snapshot covering index {index}");
            Ok(())
        }
        Command::Repair { cluster, id, addr } => repair(&cluster, id, &addr).await,
        Command::Identity(IdentityCommand::Remint { cluster, name }) => {
            let answer = client(&cluster)?.remint_identity(name.as_deref()).await?;
            let previous = if answer.previous.is_empty() {
                "no identity (or an earlier attempt of this request replaced it)".to_owned()
            } else {
                answer.previous
            };
            println!(
                "cluster identity is now {} (log index {}); it replaced {previous}",
                answer.identity, answer.index
            );
            Ok(())
        }
        other => unreachable!("not an administration command: {other:?}"),
    }
}

async fn run_node(
    config: NodeConfig,
    registry: keel_scheduler::engine::registry::Registry,
    engine: EngineSettings,
    peers: keel_scheduler::peer::PeerSettings,
) -> anyhow::Result<()> {
    let node = Node::start_with_peers(config, registry, engine, peers)
        .await
        .context("node failed to start")?;
    tracing::info!(addr = %node.addr(), "serving; Ctrl-C or SIGTERM stops");
    let stopped_by_itself = wait_for_stop(&node).await?;
    node.shutdown().await;
    if stopped_by_itself {
        bail!("the node stopped on a fatal error (see the log above)");
    }
    Ok(())
}

/// Waits for Ctrl-C, SIGTERM or the node stopping itself; true for the last.
async fn wait_for_stop(node: &Node) -> anyhow::Result<bool> {
    let mut terminate = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    Ok(tokio::select! {
        result = tokio::signal::ctrl_c() => { result?; false }
        _ = terminate.recv() => false,
        () = node.stopped() => true,
    })
}

async fn run_worker(cluster: &ClusterArgs, id: u64) -> anyhow::Result<()> {
    if id == 0 {
        bail!("worker ids start at 1");
    }
    init_tracing();
    let worker = keel_scheduler::worker::Worker::with_credentials(
        &endpoints(cluster)?,
        &credentials(cluster),
        id,
        builtin::registry(),
    )?;
    tracing::info!(worker = id, "working; Ctrl-C stops");
    tokio::select! {
        () = worker.run() => Ok(()),
        result = tokio::signal::ctrl_c() => Ok(result?),
    }
}

async fn init(cluster: &ClusterArgs) -> anyhow::Result<()> {
    let mut client = client(cluster)?;
    let mut members = BTreeMap::new();
    for (addr, status) in client.statuses().await {
        let status = status.with_context(|| format!("node at {addr} did not answer"))?;
        if status.initialized {
            bail!(
                "node {} at {addr} is already part of a cluster",
                status.node_id
            );
        }
        members.insert(status.node_id, addr);
    }
    client.init(&members).await?;
    println!(
        "cluster formed with nodes {:?}",
        members.keys().collect::<Vec<_>>()
    );
    Ok(())
}

fn opt(value: Option<u64>) -> String {
    value.map_or_else(|| "-".to_owned(), |v| v.to_string())
}

async fn status(cluster: &ClusterArgs) -> anyhow::Result<()> {
    let mut client = client(cluster)?;
    println!(
        "{:<5} {:<21} {:<9} {:>5} {:>6} {:>9} {:>9} {:>9} {:>9} {:<16} {:<8} {:<8} PROTOCOL",
        "NODE",
        "ADDRESS",
        "ROLE",
        "TERM",
        "LEADER",
        "LAST",
        "COMMITTED",
        "APPLIED",
        "OFFSETS",
        "DIGEST",
        "ADMITTED",
        "VALUES",
    );
    let mut any = false;
    let mut identities = BTreeSet::new();
    for (addr, status) in client.statuses().await {
        match status {
            Ok(s) => {
                any = true;
                if !s.cluster_identity.is_empty() {
                    identities.insert(s.cluster_identity.clone());
                }
                println!(
                    "{:<5} {:<21} {:<9} {:>5} {:>6} {:>9} {:>9} {:>9} {:>9} {:016x} {:<8} {:<8} {}/{}",
                    s.node_id,
                    addr,
                    s.role,
                    s.term,
                    opt(s.leader_id),
                    opt(s.last_log_index),
                    opt(s.committed_index),
                    opt(s.applied_index),
                    s.next_offset,
                    s.state_digest,
                    if s.admitted { "yes" } else { "no" },
                    if s.values_verified {
                        "verified"
                    } else {
                        "checking"
                    },
                    // The host's and the application's: which commands its build applies.
                    s.host_protocol,
                    s.application_protocol
                );
            }
            Err(error) => println!("{:<5} {addr:<21} unreachable: {error}", "?"),
        }
    }
    if !any {
        bail!("no node answered");
    }
    if identities.is_empty() {
        println!("cluster identity: none committed yet");
    }
    for identity in identities {
        println!("cluster identity: {identity}");
    }
    Ok(())
}

/// Which session `keel append` writes in.
#[derive(Debug, Clone, Copy)]
enum AppendWrites {
    /// A new one, registered first.
    NewSession,
    /// An earlier one, at this sequence.
    Resume { session: u64, seq: u64 },
    /// None.
    AtMostOnce,
}

async fn append(
    cluster: &ClusterArgs,
    writes: AppendWrites,
    records: Vec<String>,
) -> anyhow::Result<()> {
    let records: Vec<Bytes> = if records.is_empty() {
        std::io::stdin()
            .lock()
            .lines()
            .map(|line| line.map(Bytes::from))
            .collect::<Result<_, _>>()?
    } else {
        records.into_iter().map(Bytes::from).collect()
    };
    let mut client = client(cluster)?;
    match writes {
        AppendWrites::NewSession => {}
        AppendWrites::Resume { session, seq } => client.resume_session(session, seq),
        AppendWrites::AtMostOnce => client = client.at_most_once(),
    }
    let write = client.session();
    match client.append(records).await {
        Ok(appended) => {
            println!(
                "appended {} record(s) at offsets {}..{} (raft index {})",
                appended.count,
                appended.first_offset,
                appended.first_offset + u64::from(appended.count),
                appended.raft_index
            );
            Ok(())
        }
        Err(error @ ClientError::GaveUp { .. }) => {
            // The session was registered before the write (or given): say how to learn
            // the outcome without a second copy.
            let retry = match (write, client.session()) {
                (Some(id), _) => Some(id),
                (None, Some(next)) => Some(WriteId {
                    seq: next.seq - 1,
                    ..next
                }),
                (None, None) => None,
            };
            match retry {
                Some(id) => bail!(
                    "{error}\nthe outcome is unknown; re-send the same records with `keel append --session {} --seq {}` to apply them at most once in all",
                    id.session,
                    id.seq
                ),
                None => bail!("{error}"),
            }
        }
        Err(error) => Err(error.into()),
    }
}

async fn read(cluster: &ClusterArgs, from: u64, max: u32, follow: bool) -> anyhow::Result<()> {
    let mut client = client(cluster)?;
    if follow {
        let addr = endpoints(cluster)?
            .into_iter()
            .next()
            .context("no endpoint")?;
        client
            .subscribe(&addr, from, |record| {
                println!(
                    "{}\t{}",
                    record.offset,
                    String::from_utf8_lossy(&record.data)
                );
                true
            })
            .await?;
        return Ok(());
    }
    let response = client.read(from, max).await?;
    for record in &response.records {
        println!(
            "{}\t{}",
            record.offset,
            String::from_utf8_lossy(&record.data)
        );
    }
    eprintln!(
        "({} record(s); retained offsets {}..{})",
        response.records.len(),
        response.first_offset,
        response.next_offset
    );
    Ok(())
}

async fn repair(cluster: &ClusterArgs, id: u64, addr: &str) -> anyhow::Result<()> {
    let mut client = client(cluster)?;
    let leader_status = client
        .statuses()
        .await
        .into_iter()
        .find_map(|(_, s)| s.ok().filter(|s| s.role == "leader"))
        .context("no leader answered")?;
    let voters: BTreeSet<u64> = leader_status
        .members
        .iter()
        .filter(|m| m.voter)
        .map(|m| m.node_id)
        .collect();
    if voters.contains(&id) {
        let without: Vec<u64> = voters.iter().copied().filter(|v| *v != id).collect();
        client
            .change_membership(&without, false)
            .await
            .context("removing the node as a voter")?;
        println!("node {id} removed as a voter");
    }
    client
        .add_learner(id, addr, true)
        .await
        .context("adding the node back as a learner")?;
    println!("node {id} re-added as a learner with its new data directory and caught up");
    let with: Vec<u64> = voters
        .iter()
        .copied()
        .chain(std::iter::once(id))
        .collect::<BTreeSet<_>>()
        .into_iter()
        .collect();
    client
        .change_membership(&with, false)
        .await
        .context("promoting the node")?;
    tokio::time::sleep(Duration::from_millis(100)).await;
    println!("node {id} is a voter again");
    Ok(())
}
