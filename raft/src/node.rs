//! A running Keel node: storage, Raft, the gRPC server with both services, the metrics
//! endpoint, and a watchdog that stops the node on a fatal (storage) error.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use keel_log::SyncPolicy;
use openraft::async_runtime::WatchReceiver;
use openraft::{Config, ServerState, SnapshotPolicy};
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::application::Application;
use crate::cluster_identity::{ClusterIdentity, Commit};
use crate::error::{Error, Result};
use crate::identity::{self, Identity};
use crate::log_store::LogStore;
use crate::metrics::NodeMetrics;
use crate::multiplex::Multiplex;
use crate::network::client::Network;
use crate::network::server::AddServices;
use crate::network::{metrics_endpoint, server};
use crate::plain_log::{PlainLog, Retention};
use crate::protocols::{HOST_PROTOCOL, Protocols, lagging_member};
use crate::repair;
use crate::security::roles::{MethodRoles, raft_method_roles};
use crate::security::{NodeSecurity, OpenedSecurity};
use crate::snapshot::SnapshotDir;
use crate::state_machine::StateMachineHost;
use crate::types::{ClientRequest, NodeId, Raft};

pub use crate::shared::{LeaderWatch, NodeShared};

/// How long a leader waits before proposing the cluster's identity again after a failed
/// proposal.
const IDENTITY_RETRY_PAUSE: Duration = Duration::from_millis(100);
/// How long a leader waits before asking the members' builds again.
const SURVEY_PAUSE: Duration = Duration::from_millis(500);
/// How long a stopping node lets open connections finish.
const SHUTDOWN_DRAIN: Duration = Duration::from_millis(500);

/// How a node is set up.
#[derive(Debug, Clone)]
pub struct NodeConfig {
    /// This node's id (non-zero).
    pub node_id: NodeId,
    /// The cluster's name; a data directory of another cluster is refused.
    pub cluster: String,
    /// Address to listen on for gRPC (port 0: any free port).
    pub listen: SocketAddr,
    /// Address to listen on for Prometheus metrics (`None`: no endpoint).
    pub metrics_listen: Option<SocketAddr>,
    /// The node's data directory.
    pub data_dir: PathBuf,
    /// Addresses to reach peers at, overriding the membership's (for proxies).
    pub peers: HashMap<NodeId, String>,
    /// Leader heartbeat interval.
    pub heartbeat_interval: Duration,
    /// Election timeout range: a follower campaigns after a random time in it.
    pub election_timeout: (Duration, Duration),
    /// When appends are durable: `Durable` fsyncs before acknowledging.
    pub sync: SyncPolicy,
    /// Take a snapshot (and purge the log behind it) after this many entries.
    pub snapshot_every_entries: u64,
    /// Entries kept behind a snapshot, so lagging followers catch up without one.
    pub keep_behind_snapshot: u64,
    /// Deadline for receiving a whole snapshot.
    pub install_snapshot_timeout: Duration,
    /// What the plain log keeps.
    pub retention: Retention,
    /// keel-log segment size.
    pub segment_size_bytes: u64,
    /// Client sessions the cluster keeps while this node leads: each registration it
    /// proposes carries this limit, and applying it expires the least recently written
    /// sessions beyond it, the same on every replica ([`crate::session`]).
    pub sessions_max: u64,
    /// Testing: journal the log's writes and syncs here, so a harness can simulate a power
    /// loss after killing the node ([`keel_log::fs::journaled`]). `None` in production.
    pub sync_journal: Option<PathBuf>,
    /// Testing: copy each range of the Raft log here before purging it, so a harness can
    /// read back a run's whole committed log ([`crate::purged_log`]). `None` in production.
    pub purged_log: Option<PathBuf>,
    /// TLS, authentication, and whether plaintext may listen beyond loopback
    /// ([`crate::security`]).
    pub security: NodeSecurity,
}

impl NodeConfig {
    /// A configuration with Keel's defaults for node `node_id` storing in `data_dir`.
    pub fn new(node_id: NodeId, listen: SocketAddr, data_dir: impl Into<PathBuf>) -> Self {
        Self {
            node_id,
            cluster: "keel".to_owned(),
            listen,
            metrics_listen: None,
            data_dir: data_dir.into(),
            peers: HashMap::new(),
            heartbeat_interval: Duration::from_millis(50),
            election_timeout: (Duration::from_millis(250), Duration::from_millis(500)),
            sync: SyncPolicy::Durable,
            snapshot_every_entries: 100_000,
            keep_behind_snapshot: 10_000,
            install_snapshot_timeout: Duration::from_secs(60),
            retention: Retention::default(),
            segment_size_bytes: 64 * 1024 * 1024,
            sessions_max: crate::session::SESSIONS_MAX_DEFAULT,
            sync_journal: None,
            security: NodeSecurity::default(),
            purged_log: None,
        }
    }

    /// Checks the settings make a working node.
    ///
    /// # Errors
    /// [`Error::Invalid`] naming the bad setting.
    pub fn validate(&self) -> Result<()> {
        let invalid = |what, reason: &str| {
            Err(Error::Invalid {
                what,
                reason: reason.to_owned(),
            })
        };
        if self.node_id == 0 {
            return invalid("node_id", "must be at least 1");
        }
        if self.cluster.is_empty() || self.cluster.contains(char::is_whitespace) {
            return invalid("cluster", "must be a non-empty name without spaces");
        }
        let (min, max) = self.election_timeout;
        if self.heartbeat_interval.is_zero() || min <= self.heartbeat_interval * 2 || max <= min {
            return invalid(
                "timeouts",
                "need 0 < 2 × heartbeat < election_timeout_min < election_timeout_max",
            );
        }
        if self.snapshot_every_entries == 0 {
            return invalid("snapshot_every_entries", "must be at least 1");
        }
        if self.sessions_max == 0 {
            return invalid("sessions_max", "must be at least 1");
        }
        if self.peers.contains_key(&0) {
            return invalid("peers", "node id 0 is not valid");
        }
        Ok(())
    }

    fn raft_config(&self) -> Result<Config> {
        let millis = |d: Duration| u64::try_from(d.as_millis()).unwrap_or(u64::MAX);
        let config = Config {
            cluster_name: self.cluster.clone(),
            heartbeat_interval: millis(self.heartbeat_interval),
            election_timeout_min: millis(self.election_timeout.0),
            election_timeout_max: millis(self.election_timeout.1),
            install_snapshot_timeout: millis(self.install_snapshot_timeout),
            snapshot_policy: SnapshotPolicy::LogsSinceLast(self.snapshot_every_entries),
            max_in_snapshot_log_to_keep: self.keep_behind_snapshot,
            enable_pre_vote: Some(true),
            // A wiped follower's log reverts; the leader must resend it rather than panic.
            // Safe here because a wiped node cannot vote until re-admitted (see `NodeAddr`).
            allow_log_reversion: Some(true),
            // A restarted leader must win a new election, in a higher term. openraft would
            // otherwise resume leading in its old term; but a leader replicates entries before
            // its own fsync, so after a power cut it may have lost entries a follower holds,
            // and resuming would propose different entries under the same (term, index):
            // divergent replicas and reused fencing tokens (found by keel-jepsen's
            // `lose-unsynced` nemesis).
            enable_leader_restore: Some(false),
            ..Config::default()
        };
        config.validate().map_err(|e| Error::Invalid {
            what: "raft configuration",
            reason: e.to_string(),
        })
    }
}

/// An application replicated beside the plain log (Keel's scheduler), with the gRPC
/// services that serve it from this node.
pub struct Extension {
    /// The application; its commands are tagged [`crate::multiplex::AppTag::Extension`].
    pub app: Box<dyn Application>,
    /// Adds the extension's services to the node's gRPC server.
    pub services: AddServices,
    /// The role each of the extension's methods needs when authentication is on (a method
    /// it does not name needs `admin`).
    pub method_roles: MethodRoles,
}

impl std::fmt::Debug for Extension {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Extension")
            .field("app", &self.app)
            .finish_non_exhaustive()
    }
}

/// A running node. Dropping it does not stop it; call [`RaftNode::shutdown`].
#[derive(Debug)]
pub struct RaftNode {
    shared: NodeShared,
    stop: watch::Sender<bool>,
    server: JoinHandle<()>,
    tasks: Vec<JoinHandle<()>>,
}

/// What [`open_extension`] gives: the application, the services, the security.
type OpenedExtension = (
    Option<Box<dyn Application>>,
    Option<AddServices>,
    OpenedSecurity,
);

/// The extension's application and services, and the node's security (checked and opened
/// for the methods of its own and the extension's services).
fn open_extension(config: &NodeConfig, extension: Option<Extension>) -> Result<OpenedExtension> {
    config
        .security
        .check(config.listen, config.metrics_listen)?;
    let (app, services, method_roles) = match extension {
        Some(Extension {
            app,
            services,
            method_roles,
        }) => (Some(app), Some(services), method_roles),
        None => (None, None, MethodRoles::default()),
    };
    let security = config
        .security
        .open(raft_method_roles().with(&method_roles))?;
    Ok((app, services, security))
}

/// The state machine host of `app`, restored from the newest snapshot, with the value
/// files that snapshot's coverage names.
fn open_host(
    config: &NodeConfig,
    store: &LogStore,
    app: Multiplex,
    metrics: &Arc<NodeMetrics>,
) -> Result<StateMachineHost> {
    let opening = std::time::Instant::now();
    let snapshots = SnapshotDir::open(config.data_dir.join("snapshots"))?;
    let host = StateMachineHost::open(Box::new(app), snapshots, |covered| {
        Ok(Arc::new(store.value_store(
            &config.data_dir.join("values"),
            crate::multiplex::BODY_OFFSET,
            covered,
        )?))
    })?;
    tracing::info!(ms = opening.elapsed().as_millis(), "state restored");
    Ok(host.with_metrics(Arc::clone(metrics)))
}

impl RaftNode {
    /// Opens the data directory (verifying identity, the repair marker, the log and the
    /// newest snapshot), starts Raft and serves gRPC.
    ///
    /// # Errors
    /// Any verification failure: a node never serves from a directory it failed to verify.
    pub async fn start(config: NodeConfig) -> Result<Self> {
        Self::start_with(config, None).await
    }

    /// [`RaftNode::start`], replicating and serving `extension` beside the plain log.
    ///
    /// # Errors
    /// As [`RaftNode::start`].
    pub async fn start_with(config: NodeConfig, extension: Option<Extension>) -> Result<Self> {
        config.validate()?;
        let (app, services, security) = open_extension(&config, extension)?;
        let raft_config = Arc::new(config.raft_config()?);
        let metrics = Arc::new(NodeMetrics::default());
        let (identity, store) = open_storage(&config, &metrics)?;
        let log = PlainLog::new(config.retention);
        let host = open_host(&config, &store, Multiplex::new(log.clone(), app), &metrics)?;
        let network = Network::new(config.peers.clone(), security.peers.clone());
        let raft = Raft::new(
            config.node_id,
            raft_config,
            network.clone(),
            store.clone(),
            host.clone(),
        )
        .await
        .map_err(|e| Error::Raft(e.to_string()))?;
        let listener = TcpListener::bind(config.listen)
            .await
            .map_err(Error::io("listen on", config.listen.to_string()))?;
        let addr = listener
            .local_addr()
            .map_err(Error::io("listen on", config.listen.to_string()))?;
        let shared = NodeShared {
            node_id: config.node_id,
            identity,
            addr,
            raft,
            host,
            log,
            store,
            network,
            metrics,
            sessions_max: config.sessions_max,
        };
        let (stop, stopped) = watch::channel(false);
        let server = tokio::spawn(server::serve(
            shared.clone(),
            listener,
            services,
            security,
            stopped.clone(),
        ));
        let mut tasks = background_tasks(&shared, &config, &stop);
        if let Some(metrics_addr) = config.metrics_listen {
            let listener = TcpListener::bind(metrics_addr)
                .await
                .map_err(Error::io("listen on", metrics_addr.to_string()))?;
            tasks.push(tokio::spawn(metrics_endpoint::serve_metrics(
                metrics_endpoint::MetricsSource::from(&shared),
                listener,
                stopped,
            )));
        }
        #[cfg(feature = "sabotage")]
        crate::sabotage::announce();
        tracing::info!(node = config.node_id, %addr, incarnation = format!("{:016x}", shared.identity.incarnation), "node started");
        Ok(Self {
            shared,
            stop,
            server,
            tasks,
        })
    }

    /// What the services share (Raft handle, state machine, ...).
    pub fn shared(&self) -> &NodeShared {
        &self.shared
    }

    /// The gRPC address.
    pub fn addr(&self) -> SocketAddr {
        self.shared.addr
    }

    /// Resolves when the node stopped itself (a fatal error) or was asked to stop.
    pub async fn stopped(&self) {
        let mut stopped = self.stop.subscribe();
        while !*stopped.borrow_and_update() {
            if stopped.changed().await.is_err() {
                return;
            }
        }
    }

    /// Stops serving and shuts Raft down.
    pub async fn shutdown(self) {
        self.stop.send_replace(true);
        if let Err(error) = self.shared.raft.shutdown().await {
            tracing::warn!(%error, "raft shutdown");
        }
        // Peers' replication streams never end by themselves: drain briefly, then cut them.
        let server = self.server;
        let abort = server.abort_handle();
        if tokio::time::timeout(SHUTDOWN_DRAIN, server).await.is_err() {
            abort.abort();
        }
        for task in self.tasks {
            task.abort();
        }
    }
}

/// Verifies the data directory (repair marker, identity) and opens the Raft log in it.
fn open_storage(config: &NodeConfig, metrics: &Arc<NodeMetrics>) -> Result<(Identity, LogStore)> {
    let opening = std::time::Instant::now();
    std::fs::create_dir_all(&config.data_dir).map_err(Error::io("create", &config.data_dir))?;
    repair::check_not_marked(&config.data_dir)?;
    let identity = identity::open_or_create(&config.data_dir, config.node_id, &config.cluster)?;
    let log_options = keel_log::Options {
        segment_size_bytes: config.segment_size_bytes,
        sync: config.sync,
        ..keel_log::Options::default()
    };
    let log_dir = config.data_dir.join("log");
    let store = match &config.sync_journal {
        None => LogStore::open(&log_dir, log_options, &config.data_dir)?,
        Some(journal) => {
            let fs = keel_log::fs::journaled::JournaledFs::new(journal)
                .map_err(Error::io("open the sync journal", journal))?;
            tracing::warn!(journal = %journal.display(), "journaling writes and syncs for simulated power loss (testing)");
            LogStore::open_with_fs(&log_dir, log_options, &config.data_dir, Arc::new(fs))?
        }
    }
    .with_metrics(Arc::clone(metrics));
    let store = match &config.purged_log {
        None => store,
        Some(dir) => {
            tracing::warn!(dir = %dir.display(), "copying purged log ranges (testing)");
            let copy = crate::purged_log::PurgedCopy::new(dir)
                .map_err(Error::io("create the purged-log copy", dir))?;
            store.copying_purged_to(copy)
        }
    };
    tracing::info!(ms = opening.elapsed().as_millis(), "log opened");
    Ok((identity, store))
}

/// The node's tasks beside the server: the Raft watchdog, the value files' verification and
/// the cluster identity's commit.
fn background_tasks(
    shared: &NodeShared,
    config: &NodeConfig,
    stop: &watch::Sender<bool>,
) -> Vec<JoinHandle<()>> {
    vec![
        tokio::spawn(watch_raft(shared.clone(), stop.clone())),
        tokio::spawn(verify_values(
            shared.clone(),
            config.data_dir.clone(),
            stop.clone(),
        )),
        tokio::spawn(commit_cluster_identity(
            shared.clone(),
            config.cluster.clone(),
        )),
    ]
}

/// Commits the cluster's identity: whenever this node leads, no identity is applied yet and
/// every member's build applies identity commands, it mints one named `cluster` and
/// proposes it; applying is first-wins, so a
/// proposal racing another (or an identity committed but not yet applied here) changes
/// nothing. Ends once an identity is in force, or when Raft stops.
async fn commit_cluster_identity(shared: NodeShared, cluster: String) {
    let mut leadership = shared.leader_watch();
    let mut waiting_for = None;
    loop {
        if let Some(committed) = shared.host.cluster_identity() {
            tracing::info!(node = shared.node_id, identity = %committed.identity, index = committed.index, "cluster identity in force");
            return;
        }
        if leadership.leading().is_some() {
            // An older build would not apply the identity command: wait for every member
            // to run one that does.
            let needed = Protocols {
                host: HOST_PROTOCOL,
                application: 0,
            };
            if let Some(why) = lagging_member(&shared, needed).await {
                if waiting_for.as_ref() != Some(&why) {
                    tracing::info!(node = shared.node_id, %why, "the cluster identity waits for every member's build to apply it");
                }
                waiting_for = Some(why);
                tokio::time::sleep(SURVEY_PAUSE).await;
                continue;
            }
            let identity = match ClusterIdentity::mint(&cluster) {
                Ok(identity) => identity,
                Err(error) => {
                    tracing::warn!(node = shared.node_id, %error, "no cluster identity: calls between clusters are not possible");
                    return;
                }
            };
            let request = ClientRequest {
                session: 0,
                seq: 0,
                command: identity.commit_command(Commit::First),
            };
            if let Err(error) = shared.raft.client_write(request).await {
                tracing::debug!(node = shared.node_id, %error, "proposing the cluster identity");
                tokio::time::sleep(IDENTITY_RETRY_PAUSE).await;
            }
            continue;
        }
        if !leadership.changed().await {
            return;
        }
    }
}

/// Reads every value of the node's value files once, off the runtime's threads (opening
/// checked their tables only, so start-up does not grow with the bytes of values). A value
/// that does not match its checksum was damaged while the node was stopped, or since: the
/// data directory is marked as needing repair and the node stops (reads of that value
/// meanwhile were refused by its checksum, never answered with other bytes).
async fn verify_values(shared: NodeShared, data_dir: PathBuf, stop: watch::Sender<bool>) {
    let values = Arc::clone(shared.host.values());
    let stopping = stop.subscribe();
    let started = std::time::Instant::now();
    let verified = tokio::task::spawn_blocking(move || values.verify(&|| *stopping.borrow())).await;
    match verified {
        Ok(Ok(verified)) if verified.complete => tracing::info!(
            node = shared.node_id,
            files = verified.files,
            values = verified.values,
            bytes = verified.bytes,
            ms = started.elapsed().as_millis(),
            "value files verified"
        ),
        Ok(Ok(_)) => {}
        Ok(Err(error)) => {
            repair::mark_needs_repair(&data_dir, &format!("value files: {error}"));
            tracing::error!(node = shared.node_id, %error, "a value file is damaged; the node stops serving (wipe and `keel repair` it)");
            stop.send_replace(true);
        }
        Err(error) => {
            tracing::error!(node = shared.node_id, %error, "verifying the value files failed; the node stops serving");
            stop.send_replace(true);
        }
    }
}

/// Logs leader changes and terms readably; stops the node on a fatal Raft error.
async fn watch_raft(shared: NodeShared, stop: watch::Sender<bool>) {
    let mut metrics = shared.raft.metrics();
    let mut leader = None;
    let mut state = ServerState::Learner;
    let mut may_campaign = None;
    loop {
        // A node whose data directory the membership does not admit (new or wiped) must not
        // campaign either: its vote for itself could repeat a vote it forgot.
        let admitted = shared.admitted();
        if may_campaign != Some(admitted) {
            shared.raft.runtime_config().elect(admitted);
            if !shared.initialized() {
                tracing::info!(
                    node = shared.node_id,
                    "waiting to be initialized (`keel init`, or the leader reaching this node)"
                );
            } else if !admitted {
                tracing::info!(
                    node = shared.node_id,
                    "not an admitted voter: elections off until the membership admits this data directory"
                );
            }
            may_campaign = Some(admitted);
        }
        let (current_leader, current_state, term, fatal) = {
            let m = metrics.borrow_and_update();
            let fatal = match &m.running_state {
                Ok(()) | Err(openraft::error::Fatal::Stopped) => None,
                Err(error) => Some(error.to_string()),
            };
            (m.current_leader, m.state, m.current_term, fatal)
        };
        if let Some(reason) = fatal {
            tracing::error!(node = shared.node_id, %reason, "raft stopped on a fatal error; the node stops serving");
            stop.send_replace(true);
            return;
        }
        if current_leader != leader {
            if current_leader.is_some() {
                shared
                    .metrics
                    .leader_changes
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            }
            match current_leader {
                Some(id) if id == shared.node_id => {
                    tracing::info!(node = shared.node_id, term, "elected leader");
                }
                Some(id) => {
                    tracing::info!(node = shared.node_id, term, leader = id, "following leader");
                }
                None => tracing::info!(node = shared.node_id, term, "no leader"),
            }
            leader = current_leader;
        }
        if current_state != state {
            tracing::debug!(node = shared.node_id, term, from = ?state, to = ?current_state, "role changed");
            state = current_state;
        }
        if metrics.changed().await.is_err() {
            return;
        }
    }
}
