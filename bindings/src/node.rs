//! `NativeNode`: the embedded node an `App` runs on — a single-node cluster of its own, or a
//! member of a cluster of Python processes. Its data directory holds the node's data
//! (`node/`) and the cluster's addresses (`endpoints`, the file `keel dev` writes too, so
//! `keel status --data-dir DIR` finds it); a single node's address is kept across launches,
//! since the cluster's membership records it.
//!
//! Members given their peers form the cluster themselves: each asks every member for its
//! status (its node id and data directory incarnation) and proposes the same initial
//! membership, which is idempotent, so whichever member is up last completes it and none
//! needs a separate `keel init`. Each member also runs a remote worker of its kinds: only
//! the leader runs workflows, and it leases a kind it does not run to a member that does.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

use keel_raft::client::KeelClient;
use keel_raft::node::NodeConfig;
use keel_raft::security::credentials::Credentials;
use keel_raft::security::tls::TlsFiles;
use keel_raft::security::{AuthSettings, NodeSecurity};
use keel_scheduler::Node;
use keel_scheduler::engine::EngineSettings;
use keel_scheduler::engine::registry::Registry;
use keel_scheduler::peer::{PeerSettings, RemoteConfig};
use pyo3::prelude::*;

use crate::blocking::{runtime, wait};
use crate::bridge;
use crate::errors::keel_error;
use crate::slot;
use crate::worker::{WorkerTask, random_worker_id};

/// The file in an app's data directory naming its node's address.
const ENDPOINTS_FILE: &str = "endpoints";
/// How long a launch waits for a data directory that is locked: a node of this process
/// that just stopped releases it within moments; another process's node would not.
const LOCKED_WAIT_MAX: Duration = Duration::from_secs(5);
/// How often a launch looks whether the node runs its kinds yet.
const READY_POLL: Duration = Duration::from_millis(10);
/// Pause between a member's attempts to form its cluster (some member not up yet).
const FORM_RETRY_PAUSE: Duration = Duration::from_millis(50);

/// Embedded nodes of this process that have launched and not shut down.
static LIVE_NODES: AtomicUsize = AtomicUsize::new(0);

/// A running embedded node, with the remote worker of a cluster member.
#[pyclass(module = "keel._native", frozen)]
pub(crate) struct NativeNode {
    node: Mutex<Option<Node>>,
    worker: Mutex<Option<WorkerTask>>,
    addr: SocketAddr,
}

/// A cluster member's place: its id and every member's address (its own included).
struct Membership {
    node_id: u64,
    members: BTreeMap<u64, String>,
    /// Where this member dials a peer instead of its address (the test kit's links).
    via: BTreeMap<u64, String>,
}

impl Membership {
    /// The members' addresses, this node's first.
    fn endpoints(&self) -> Vec<String> {
        let own = self.members.get(&self.node_id).cloned();
        own.into_iter()
            .chain(
                self.members
                    .iter()
                    .filter(|(id, _)| **id != self.node_id)
                    .map(|(_, addr)| addr.clone()),
            )
            .collect()
    }
}

/// Why a launch failed, before it becomes a Python exception.
enum LaunchError {
    Invalid(String),
    Failed(String),
    Timeout(String),
}

impl LaunchError {
    fn into_py(self, py: Python<'_>) -> PyErr {
        match self {
            Self::Invalid(message) => keel_error(py, "InvalidRequest", message, None),
            Self::Failed(message) => keel_error(py, "KeelError", message, None),
            Self::Timeout(message) => keel_error(py, "Timeout", message, None),
        }
    }
}

/// A remote as Python gives it: its cluster name (`None`: the alias), addresses, the kinds
/// exposed to it, the principal its credentials carry here (`None`: the alias), and what
/// this cluster presents to it: the CA of its certificates, a client certificate and key,
/// a token file.
type RemoteTuple = (
    Option<String>,
    Vec<String>,
    Vec<String>,
    Option<String>,
    [Option<PathBuf>; 4],
);

/// The remote clusters Python names, as a node's peer settings.
fn peer_settings(remotes: BTreeMap<String, RemoteTuple>) -> PeerSettings {
    let remotes = remotes
        .into_iter()
        .map(
            |(alias, (cluster, addresses, expose, principal, [ca, cert, key, token]))| {
                let remote = RemoteConfig {
                    cluster,
                    addresses,
                    expose,
                    principal,
                    ca,
                    cert,
                    key,
                    token_file: token,
                };
                (alias, remote)
            },
        )
        .collect();
    PeerSettings {
        remotes,
        ..PeerSettings::default()
    }
}

/// The address to listen on: `listen` when given, else the one recorded by an earlier
/// launch, else a free port on 127.0.0.1.
fn listen_address(data_dir: &Path, listen: Option<&str>) -> Result<SocketAddr, LaunchError> {
    let recorded = std::fs::read_to_string(data_dir.join(ENDPOINTS_FILE)).ok();
    let text = listen.or_else(|| recorded.as_deref().and_then(|t| t.lines().next()));
    match text {
        Some(text) => text.trim().parse().map_err(|error| {
            LaunchError::Invalid(format!("listen address {text:?} is not host:port: {error}"))
        }),
        None => Ok(SocketAddr::from(([127, 0, 0, 1], 0))),
    }
}

/// Starts a node with `config`, waiting out a lock a node of this process that just
/// stopped may still hold.
async fn start_node(
    config: &NodeConfig,
    registry: &Registry,
    peers: &PeerSettings,
    deadline: Instant,
) -> Result<Node, LaunchError> {
    let locked_until = deadline.min(Instant::now() + LOCKED_WAIT_MAX);
    loop {
        let started = Node::start_with_peers(
            config.clone(),
            registry.clone(),
            EngineSettings::default(),
            peers.clone(),
        )
        .await;
        match started {
            Ok(node) => return Ok(node),
            // A node of this process that just stopped may hold the directory a moment
            // longer (its aborted runs drop their handles on the runtime's threads).
            Err(keel_scheduler::Error::Raft(keel_raft::Error::Log(keel_log::Error::Locked {
                ..
            }))) if Instant::now() < locked_until => {
                tokio::time::sleep(READY_POLL).await;
            }
            Err(error) => {
                return Err(LaunchError::Failed(format!(
                    "starting the node in {} on {}: {error}",
                    config.data_dir.display(),
                    config.listen
                )));
            }
        }
    }
}

/// A node's security as `keel.App` gives it: with `ca`, `cert` and `key`, TLS and
/// authentication (certificates, and the bearer tokens of `tokens`), the member presenting
/// its certificate to the others and to its own node; `insecure` allows plaintext beyond
/// loopback. Also what the member itself presents.
fn member_security(
    ca: Option<PathBuf>,
    cert: Option<PathBuf>,
    key: Option<PathBuf>,
    tokens: Option<PathBuf>,
    insecure: bool,
) -> Result<(NodeSecurity, Credentials), String> {
    match (ca, cert, key) {
        (None, None, None) if tokens.is_some() => {
            Err("tokens are accepted over TLS only: give ca, cert and key too".to_owned())
        }
        (None, None, None) => Ok((
            NodeSecurity {
                insecure,
                ..NodeSecurity::default()
            },
            Credentials::none(),
        )),
        (Some(ca), Some(cert), Some(key)) => Ok((
            NodeSecurity {
                tls: Some(TlsFiles {
                    cert: cert.clone(),
                    key: key.clone(),
                    ca: ca.clone(),
                }),
                auth: Some(AuthSettings { tokens }),
                insecure,
            },
            Credentials {
                ca: Some(ca),
                cert: Some(cert),
                key: Some(key),
                token_file: None,
            },
        )),
        _ => Err("a node's TLS needs ca, cert and key together".to_owned()),
    }
}

/// Forms the single-node cluster of `node` (or, formed before, elects it at once).
async fn form_single(node: &Node, credentials: &Credentials) -> Result<(), LaunchError> {
    if node.initialized() {
        return node
            .campaign()
            .await
            .map_err(|error| LaunchError::Failed(error.to_string()));
    }
    let addr = node.addr().to_string();
    let mut client = KeelClient::with_credentials(std::slice::from_ref(&addr), credentials)
        .map_err(|error| LaunchError::Failed(error.to_string()))?;
    client
        .init(&BTreeMap::from([(1, addr)]))
        .await
        .map_err(|error| LaunchError::Failed(format!("forming the cluster: {error}")))
}

/// Forms the cluster of `membership` with the other members (idempotent: every member
/// proposes the same initial membership), unless `node` belongs to it already.
async fn form_cluster(
    node: &Node,
    membership: &Membership,
    credentials: &Credentials,
    deadline: Instant,
) -> Result<(), LaunchError> {
    let mut client = KeelClient::with_credentials(&membership.endpoints(), credentials)
        .map_err(|error| LaunchError::Invalid(error.to_string()))?;
    let forming = !node.initialized();
    while !node.initialized() {
        let error = match client.init(&membership.members).await {
            Ok(()) => break,
            Err(error) => error,
        };
        if Instant::now() >= deadline {
            return Err(LaunchError::Timeout(format!(
                "the cluster of nodes {:?} did not form: {error}",
                membership.members.keys().collect::<Vec<_>>()
            )));
        }
        tokio::time::sleep(FORM_RETRY_PAUSE).await;
    }
    // At the cluster's formation its first member campaigns at once, rather than everyone
    // waiting an election timeout (so it usually leads; never at a rejoin, which would
    // depose a leader for nothing).
    if forming && membership.members.keys().next() == Some(&membership.node_id) {
        node.campaign()
            .await
            .map_err(|error| LaunchError::Failed(error.to_string()))?;
    }
    Ok(())
}

/// The cluster's name (`None`: Keel's default) and the remote clusters it calls or is called
/// by.
struct Naming {
    cluster: Option<String>,
    peers: PeerSettings,
}

async fn launch(
    data_dir: PathBuf,
    listen: Option<String>,
    membership: Option<Membership>,
    registry: Registry,
    timeout: Duration,
    (security, credentials): (NodeSecurity, Credentials),
    naming: Naming,
) -> Result<(Node, Option<WorkerTask>), LaunchError> {
    let deadline = Instant::now() + timeout;
    std::fs::create_dir_all(&data_dir).map_err(|error| {
        LaunchError::Failed(format!("creating {}: {error}", data_dir.display()))
    })?;
    let listen = listen_address(&data_dir, listen.as_deref())?;
    let node_id = membership.as_ref().map_or(1, |m| m.node_id);
    let mut config = NodeConfig::new(node_id, listen, data_dir.join("node"));
    if let Some(membership) = &membership {
        config.peers = membership.via.clone().into_iter().collect();
    }
    config.security = security;
    if let Some(cluster) = naming.cluster {
        config.cluster = cluster;
    }
    let node = start_node(&config, &registry, &naming.peers, deadline).await?;
    let endpoints = membership
        .as_ref()
        .map_or_else(|| vec![node.addr().to_string()], Membership::endpoints);
    std::fs::write(data_dir.join(ENDPOINTS_FILE), endpoints.join("\n") + "\n")
        .map_err(|error| LaunchError::Failed(format!("recording the node's address: {error}")))?;
    let formed = match &membership {
        None => form_single(&node, &credentials).await,
        Some(membership) => form_cluster(&node, membership, &credentials, deadline).await,
    };
    if let Err(error) = formed {
        node.shutdown().await;
        return Err(error);
    }
    let worker = match membership {
        None => None,
        Some(_) => {
            match WorkerTask::start(&endpoints, &credentials, random_worker_id(), registry) {
                Ok(worker) => Some(worker),
                Err(error) => {
                    node.shutdown().await;
                    return Err(LaunchError::Invalid(error.to_string()));
                }
            }
        }
    };
    // A single node is ready once it runs its kinds; a member once it knows a leader (it
    // joined, or rejoined) and the cluster knows its kinds (the leader runs them, or leases
    // them to this member's worker).
    let ready = |node: &Node| match worker {
        None => node.runs_workflows(),
        Some(_) => node.leader_id().is_some() && node.kinds_declared(),
    };
    while !ready(&node) {
        if Instant::now() >= deadline {
            drop(worker);
            node.shutdown().await;
            return Err(LaunchError::Timeout(format!(
                "the node's workflow kinds were not declared in the cluster within {timeout:?} \
                 (does a majority of the members run?)"
            )));
        }
        tokio::time::sleep(READY_POLL).await;
    }
    Ok((node, worker))
}

#[pymethods]
impl NativeNode {
    /// Starts the node in `data_dir`, running workflow `kinds` (`(name, version, is_async)`)
    /// through `runner` (async kinds on `event_loop`), and waits up to `timeout_s` until it
    /// is ready: a single node (no `node_id`) leads with its kinds declared; a member of the
    /// cluster of `node_id` and `peers` (id to address; `listen` is its own) belongs to the
    /// formed cluster, which knows its kinds; it dials a peer at `via[peer]` when given.
    /// With `ca`, `cert` and `key` (PEM files), TLS and authentication on, the member
    /// presenting its certificate; `tokens` names a tokens file of accepted bearer tokens;
    /// `insecure` allows plaintext on an address beyond loopback. `cluster` names the
    /// cluster (the default `keel` otherwise); `remotes` are the remote clusters it calls or
    /// is called by, by alias: `(cluster name, addresses, kinds exposed to it)`.
    #[staticmethod]
    #[pyo3(signature = (data_dir, listen, kinds, runner, event_loop, timeout_s, node_id=None, peers=None, via=None, ca=None, cert=None, key=None, tokens=None, insecure=false, cluster=None, remotes=None))]
    #[expect(
        clippy::too_many_arguments,
        reason = "the launch's keyword arguments from Python"
    )]
    fn launch(
        py: Python<'_>,
        data_dir: PathBuf,
        listen: Option<String>,
        kinds: Vec<(String, String, bool)>,
        runner: Py<PyAny>,
        event_loop: Option<Bound<'_, PyAny>>,
        timeout_s: f64,
        node_id: Option<u64>,
        peers: Option<BTreeMap<u64, String>>,
        via: Option<BTreeMap<u64, String>>,
        ca: Option<PathBuf>,
        cert: Option<PathBuf>,
        key: Option<PathBuf>,
        tokens: Option<PathBuf>,
        insecure: bool,
        cluster: Option<String>,
        remotes: Option<BTreeMap<String, RemoteTuple>>,
    ) -> PyResult<Self> {
        let remote_peers = peer_settings(remotes.unwrap_or_default());
        let security = member_security(ca, cert, key, tokens, insecure)
            .map_err(|message| keel_error(py, "InvalidRequest", message, None))?;
        let membership = match (node_id, peers, &listen) {
            (None, None, _) => None,
            (Some(node_id), Some(mut members), Some(listen)) => {
                if node_id == 0 || members.contains_key(&0) {
                    return Err(keel_error(
                        py,
                        "InvalidRequest",
                        "node ids start at 1",
                        None,
                    ));
                }
                if members.insert(node_id, listen.clone()).is_some() {
                    return Err(keel_error(
                        py,
                        "InvalidRequest",
                        format!("peers name this node's own id {node_id}"),
                        None,
                    ));
                }
                Some(Membership {
                    node_id,
                    members,
                    via: via.unwrap_or_default(),
                })
            }
            _ => {
                return Err(keel_error(
                    py,
                    "InvalidRequest",
                    "a cluster member needs node_id, listen and peers",
                    None,
                ));
            }
        };
        let registry = bridge::registry(kinds, runner, event_loop)?;
        let timeout = Duration::try_from_secs_f64(timeout_s.max(0.0)).unwrap_or(Duration::MAX);
        let _runtime = runtime()?.enter();
        let naming = Naming {
            cluster,
            peers: remote_peers,
        };
        let launched = launch(
            data_dir, listen, membership, registry, timeout, security, naming,
        );
        let (node, worker) = wait(py, launched)?.map_err(|error| error.into_py(py))?;
        LIVE_NODES.fetch_add(1, Ordering::AcqRel);
        Ok(Self {
            addr: node.addr(),
            node: Mutex::new(Some(node)),
            worker: Mutex::new(worker),
        })
    }

    /// The node's gRPC address.
    #[getter]
    fn addr(&self) -> String {
        self.addr.to_string()
    }

    /// The id of the leader this node knows of, if any.
    #[getter]
    fn leader_id(&self) -> Option<u64> {
        slot::lock(&self.node).as_ref().and_then(Node::leader_id)
    }

    /// Stops the node (its worker's runs and its own first); a second call does nothing.
    fn shutdown(&self, py: Python<'_>) -> PyResult<()> {
        let worker = slot::take(&self.worker);
        if let Some(worker) = worker {
            wait(py, worker.stop())?;
        }
        let node = slot::take(&self.node);
        if let Some(node) = node {
            LIVE_NODES.fetch_sub(1, Ordering::AcqRel);
            wait(py, node.shutdown())?;
        }
        Ok(())
    }

    /// Whether this node leads, has applied everything committed before its term, and runs
    /// its kinds.
    #[getter]
    fn runs_workflows(&self) -> bool {
        slot::lock(&self.node)
            .as_ref()
            .is_some_and(Node::runs_workflows)
    }

    /// Running workflows in this node's state that are neither parked nor blocked on a
    /// durable wait (their code runs now, or is about to).
    fn busy_workflows(&self) -> usize {
        slot::lock(&self.node)
            .as_ref()
            .map_or(0, Node::busy_workflows)
    }

    /// Pending timers due by the (skipped) wall clock in this node's state.
    fn timers_due(&self) -> usize {
        slot::lock(&self.node).as_ref().map_or(0, Node::timers_due)
    }
}

impl Drop for NativeNode {
    fn drop(&mut self) {
        if self
            .node
            .get_mut()
            .unwrap_or_else(PoisonError::into_inner)
            .is_some()
        {
            LIVE_NODES.fetch_sub(1, Ordering::AcqRel);
        }
    }
}

/// Moves this process's clocks `seconds` forward (the test kit's time skipping): every
/// timer due within the span fires at once; Raft's heartbeats and elections keep real time.
#[pyfunction]
pub(crate) fn skip_time(py: Python<'_>, seconds: f64) -> PyResult<()> {
    let by = Duration::try_from_secs_f64(seconds).map_err(|error| {
        keel_error(
            py,
            "InvalidRequest",
            format!("cannot skip {seconds} s: {error}"),
            None,
        )
    })?;
    keel_raft::clock::skip(by);
    Ok(())
}

/// Undoes the time skipped, if no embedded node of this process runs (one would see its
/// clocks go back); whether it did.
#[pyfunction]
pub(crate) fn reset_skipped_time() -> bool {
    let idle = LIVE_NODES.load(Ordering::Acquire) == 0;
    if idle {
        keel_raft::clock::reset_skipped();
    }
    idle
}

/// The time skipped in this process, in seconds.
#[pyfunction]
pub(crate) fn skipped_time() -> f64 {
    keel_raft::clock::skipped().as_secs_f64()
}
