//! Two three-node clusters in this process, `research` calling `writing` through
//! `ctx.call_remote` (`scheduler/REMOTE.md`): calls complete with the callee's result, each
//! call starts one callee workflow, both leaders can be stopped mid-call, a deadline times
//! the call out here and cancels it there, callee-side ids are reserved, and a remint of
//! either side ends the old identity's calls.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use bytes::Bytes;
use keel_raft::client::KeelClient;
use keel_raft::node::{NodeConfig, RaftNode};
use keel_raft::pb::client::{InitMember, InitRequest, StatusRequest};
use keel_raft::security::credentials::{Connector, Credentials};
use keel_raft::security::tls::TlsFiles;
use keel_raft::security::{AuthSettings, NodeSecurity};
use keel_scheduler::Node;
use keel_scheduler::client::{WorkflowClient, WorkflowInfo};
use keel_scheduler::engine::EngineSettings;
use keel_scheduler::engine::context::{Context, WorkflowError};
use keel_scheduler::engine::registry::Registry;
use keel_scheduler::peer::{PeerSettings, RemoteCallSettings, RemoteConfig, wire};

/// The callee's kind: waits for signal "go" when its input says so, then answers.
async fn draft(ctx: Context, input: Bytes) -> Result<Bytes, WorkflowError> {
    let topic = String::from_utf8_lossy(&input).into_owned();
    if topic.starts_with("wait") {
        ctx.wait_signal("go", None).await?;
    }
    let text = ctx
        .step("write", |_| {
            let topic = topic.clone();
            async move { Ok::<_, std::convert::Infallible>(Bytes::from(format!("draft of {topic}"))) }
        })
        .await?;
    Ok(text)
}

/// The caller's kind: one remote call, its deadline in ms the input's first word if any.
async fn research(ctx: Context, input: Bytes) -> Result<Bytes, WorkflowError> {
    let text = String::from_utf8_lossy(&input).into_owned();
    let deadline = text
        .split_whitespace()
        .next()
        .and_then(|word| word.parse::<u64>().ok())
        .map_or(Duration::from_secs(3600), Duration::from_millis);
    let topic = text
        .split_whitespace()
        .last()
        .unwrap_or_default()
        .to_owned();
    match ctx
        .call_remote_within("writers", "draft", Bytes::from(topic), deadline)
        .await
    {
        Ok(draft) => Ok(draft),
        Err(WorkflowError::RemoteTimedOut { .. }) => Ok(Bytes::from_static(b"timed out")),
        Err(error) => Err(error),
    }
}

struct Cluster {
    nodes: Vec<Option<Node>>,
    addrs: Vec<String>,
    /// What its clients present.
    credentials: Credentials,
    dir: tempfile::TempDir,
}

fn calls() -> RemoteCallSettings {
    RemoteCallSettings {
        backoff_first_ms: 20,
        backoff_max_ms: 500,
        kinds_settle_ms: 500,
        get_wait_ms: 2_000,
        ..RemoteCallSettings::default()
    }
}

async fn start_cluster(name: &str, registry: fn() -> Registry, peers: &PeerSettings) -> Cluster {
    start_secured(
        name,
        registry,
        peers,
        &NodeSecurity::default(),
        Credentials::none(),
    )
    .await
}

/// The listen address of node `id` (1-based) of a cluster: `ports[id - 1]` when given, else
/// a free port.
fn listen(ports: Option<&[u16]>, id: u64) -> std::net::SocketAddr {
    let port = ports.map_or(0, |ports| ports[usize::try_from(id - 1).expect("small")]);
    std::net::SocketAddr::from(([127, 0, 0, 1], port))
}

/// A cluster whose nodes have `security` (node `id`'s certificate `node-<id>.pem` when TLS
/// is on), its clients presenting `credentials`.
async fn start_secured(
    name: &str,
    registry: fn() -> Registry,
    peers: &PeerSettings,
    security: &NodeSecurity,
    credentials: Credentials,
) -> Cluster {
    start_on(name, registry, peers, security, credentials, None).await
}

/// As [`start_secured`], its nodes listening on `ports` when given.
async fn start_on(
    name: &str,
    registry: fn() -> Registry,
    peers: &PeerSettings,
    security: &NodeSecurity,
    credentials: Credentials,
    ports: Option<&[u16]>,
) -> Cluster {
    let cluster = start_nodes(name, registry, peers, security, credentials, ports, 3).await;
    KeelClient::with_credentials(&cluster.addrs, &cluster.credentials)
        .expect("client")
        .init(&cluster.members())
        .await
        .expect("init");
    cluster
}

/// `count` nodes of cluster `name`, not initialized.
async fn start_nodes(
    name: &str,
    registry: fn() -> Registry,
    peers: &PeerSettings,
    security: &NodeSecurity,
    credentials: Credentials,
    ports: Option<&[u16]>,
    count: u64,
) -> Cluster {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut nodes = Vec::new();
    for id in 1..=count {
        let place = (dir.path(), listen(ports, id));
        nodes.push(start_node(name, registry, peers, security, place, id).await);
    }
    Cluster::of(nodes, credentials, dir)
}

/// Node `id` of cluster `name`, its data directory `node-<id>` in `place.0`, listening at
/// `place.1`.
async fn start_node(
    name: &str,
    registry: fn() -> Registry,
    peers: &PeerSettings,
    security: &NodeSecurity,
    place: (&std::path::Path, std::net::SocketAddr),
    id: u64,
) -> Node {
    let (dir, addr) = place;
    let mut config = NodeConfig::new(id, addr, dir.join(format!("node-{id}")));
    name.clone_into(&mut config.cluster);
    config.segment_size_bytes = 8 << 20;
    config.security = security.clone();
    if let Some(tls) = &mut config.security.tls {
        tls.cert = tls.cert.with_file_name(format!("node-{id}.pem"));
        tls.key = tls.key.with_file_name(format!("node-{id}.key"));
    }
    Node::start_with_peers(config, registry(), EngineSettings::default(), peers.clone())
        .await
        .expect("node")
}

impl Cluster {
    fn of(nodes: Vec<Node>, credentials: Credentials, dir: tempfile::TempDir) -> Self {
        Self {
            addrs: nodes.iter().map(|node| node.addr().to_string()).collect(),
            nodes: nodes.into_iter().map(Some).collect(),
            credentials,
            dir,
        }
    }

    /// Node id → address, ids from 1 in start order.
    fn members(&self) -> BTreeMap<u64, String> {
        (1..).zip(self.addrs.iter().cloned()).collect()
    }

    fn client(&self) -> WorkflowClient {
        WorkflowClient::with_credentials(&self.addrs, &self.credentials).expect("client")
    }

    /// Stops the node that runs workflows (waiting for one to), returns its index.
    async fn stop_leader(&mut self) -> usize {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let leading = self.nodes.iter().position(|node| {
                node.as_ref()
                    .is_some_and(|n| n.engine().active_term().is_some())
            });
            if let Some(index) = leading {
                let node = self.nodes[index].take().expect("running");
                node.shutdown().await;
                return index;
            }
            assert!(Instant::now() < deadline, "no node runs workflows");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// The callee-side workflows (`@…`) as the leader's state holds them.
    async fn inbound(&self) -> Vec<WorkflowInfo> {
        let mut client = self.client();
        let all = client.list(None, None, None, 10_000).await.expect("list");
        all.into_iter().filter(|w| w.id.starts_with('@')).collect()
    }
}

async fn wait_finished(client: &mut WorkflowClient, id: &str) -> WorkflowInfo {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if let Ok(info) = client.get_after(id, Duration::from_secs(5), false).await
            && info.status != "running"
        {
            return info;
        }
        assert!(Instant::now() < deadline, "{id} did not finish");
    }
}

async fn wait_until<F: FnMut() -> Fut, Fut: Future<Output = bool>>(what: &str, mut done: F) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while !done().await {
        assert!(Instant::now() < deadline, "timed out waiting until {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn writing_registry() -> Registry {
    Registry::new().register("draft", "v1", draft)
}

fn research_registry() -> Registry {
    Registry::new().register("research", "v1", research)
}

/// `writing`'s peers: `research` may start `draft`.
fn writing_peers() -> PeerSettings {
    PeerSettings {
        remotes: BTreeMap::from([(
            "research".to_owned(),
            RemoteConfig {
                expose: vec!["draft".into()],
                ..RemoteConfig::default()
            },
        )]),
        calls: calls(),
    }
}

/// `research`'s peers: `writers`, the cluster `writing`, reached as `remote` says.
fn research_peers(remote: RemoteConfig) -> PeerSettings {
    PeerSettings {
        remotes: BTreeMap::from([(
            "writers".to_owned(),
            RemoteConfig {
                cluster: Some("writing".into()),
                ..remote
            },
        )]),
        calls: calls(),
    }
}

/// Both clusters: `writing` exposes `draft` to `research`, which calls it as `writers`.
async fn start_pair() -> (Cluster, Cluster) {
    let writing_side = writing_peers();
    let writing = start_cluster("writing", writing_registry, &writing_side).await;
    let research_side = research_peers(RemoteConfig {
        addresses: writing.addrs.clone(),
        ..RemoteConfig::default()
    });
    let research = start_cluster("research", research_registry, &research_side).await;
    (research, writing)
}

/// Starts research workflow `id` with `input`, waiting for its kind to be declared.
async fn start_research_with(client: &WorkflowClient, id: &str, input: &str) {
    wait_until("the research kind is declared", || {
        let mut client = client.clone();
        let (id, input) = (id.to_owned(), input.to_owned());
        async move {
            client
                .start(&id, "research", Bytes::from(input))
                .await
                .is_ok()
        }
    })
    .await;
}

async fn start_research(research: &Cluster, ids: &[String], input: &str) {
    let client = research.client();
    for id in ids {
        start_research_with(&client, id, input).await;
    }
}

/// Calls complete with the callee's result, and each call started exactly one callee
/// workflow, which completed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn remote_calls_complete_with_the_callees_result_once_each() {
    let (research, writing) = start_pair().await;
    let ids: Vec<String> = (0..5).map(|n| format!("r{n}")).collect();
    start_research(&research, &ids, "topic").await;
    let mut client = research.client();
    for id in &ids {
        let info = wait_finished(&mut client, id).await;
        assert_eq!(info.status, "completed", "{info:?}");
        assert_eq!(info.result.as_ref(), b"draft of topic");
    }
    let inbound = writing.inbound().await;
    assert_eq!(inbound.len(), ids.len(), "one callee workflow per call");
    assert!(inbound.iter().all(|w| w.status == "completed"));

    // Ids of callee workflows are reserved: a client cannot start one.
    let error = writing
        .client()
        .start("@research.00.1.1", "draft", Bytes::new())
        .await
        .expect_err("reserved");
    assert!(error.to_string().contains("'@'"), "{error}");
}

/// The leader of each cluster stops while calls are in flight (taken by the callee, its
/// workflows waiting): the new leaders re-drive them, and every call completes once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn calls_survive_both_leaders_stopping_mid_call() {
    let (mut research, mut writing) = start_pair().await;
    let ids: Vec<String> = (0..4).map(|n| format!("f{n}")).collect();
    start_research(&research, &ids, "wait").await;
    wait_until("the callee took every call", || {
        let writing = &writing;
        async move { writing.inbound().await.len() == 4 }
    })
    .await;
    let info = research.client().get("f0", true).await.expect("get");
    let call = info.journal[0]
        .remote
        .as_ref()
        .expect("a remote call's progress");
    assert_eq!(call.state, "started", "{call:?}");
    assert!(call.callee_workflow.starts_with("@research."), "{call:?}");
    research.stop_leader().await;
    writing.stop_leader().await;
    for workflow in writing.inbound().await {
        wait_until("the signal is delivered", || {
            let mut client = writing.client();
            let id = workflow.id.clone();
            async move { client.signal(&id, "go", Bytes::new()).await.is_ok() }
        })
        .await;
    }
    let mut client = research.client();
    for id in &ids {
        let info = wait_finished(&mut client, id).await;
        assert_eq!(info.result.as_ref(), b"draft of wait", "{info:?}");
    }
    let info = research.client().get("f0", true).await.expect("get");
    let call = info.journal[0]
        .remote
        .as_ref()
        .expect("a remote call's progress");
    assert_eq!(call.state, "completed");
    let inbound = writing.inbound().await;
    assert_eq!(inbound.len(), 4, "no call started twice: {inbound:?}");
}

/// A call whose deadline passes while the callee's workflow waits times out at the caller,
/// and the callee's workflow is cancelled.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deadline_times_the_call_out_and_cancels_the_callee() {
    let (research, writing) = start_pair().await;
    start_research(&research, &["d".to_owned()], "1500 wait").await;
    let mut client = research.client();
    let info = wait_finished(&mut client, "d").await;
    assert_eq!(info.result.as_ref(), b"timed out", "{info:?}");
    wait_until("the callee's workflow is cancelled", || {
        let writing = &writing;
        async move {
            let inbound = writing.inbound().await;
            inbound.len() == 1 && inbound[0].status == "cancelled"
        }
    })
    .await;
}

/// A CA for `writing`, its nodes' certificates, and a tokens file: an admin token for the
/// test's clients, remote tokens named `research` and `intruder`, and a write token.
fn writing_pki(dir: &std::path::Path) -> (NodeSecurity, Credentials) {
    use keel_raft::security::certs::{LocalCa, write_pair};
    use keel_raft::security::roles::Role;
    let ca = LocalCa::create("writing").expect("CA");
    ca.write(dir).expect("write the CA");
    for id in 1..=3 {
        let stem = format!("node-{id}");
        let issued = ca.issue(&stem, Role::Node, &[]).expect("node certificate");
        write_pair(dir, &stem, &issued).expect("write it");
    }
    let tokens = [
        ("admin", "admin", "writing-admin-token"),
        ("research", "remote", "research-remote-token"),
        ("intruder", "remote", "intruder-remote-token"),
        ("writer", "write", "writing-write-token"),
    ];
    let mut text = String::new();
    for (name, role, value) in tokens {
        let entry =
            format!("[[token]]\nname = \"{name}\"\nrole = \"{role}\"\nvalue = \"{value}\"\n");
        text.push_str(&entry);
        std::fs::write(dir.join(format!("{name}.token")), value).expect("token file");
    }
    std::fs::write(dir.join("tokens.toml"), text).expect("tokens file");
    let security = NodeSecurity {
        tls: Some(TlsFiles {
            cert: dir.join("node-1.pem"),
            key: dir.join("node-1.key"),
            ca: dir.join("ca.pem"),
        }),
        auth: Some(AuthSettings {
            tokens: Some(dir.join("tokens.toml")),
        }),
        insecure: false,
    };
    (security, token_credentials(dir, "admin"))
}

fn token_credentials(dir: &std::path::Path, name: &str) -> Credentials {
    Credentials {
        ca: Some(dir.join("ca.pem")),
        token_file: Some(dir.join(format!("{name}.token"))),
        ..Credentials::none()
    }
}

/// Hello to `writing`'s first node with the token `name`: its refusal, if any.
async fn hello_as(writing: &Cluster, pki: &std::path::Path, name: &str) -> Option<tonic::Status> {
    let connector = Connector::new(&token_credentials(pki, name)).expect("credentials");
    let endpoint = keel_raft::network::client::endpoint(&writing.addrs[0]).expect("endpoint");
    let mut client =
        wire::remote_calls_client::RemoteCallsClient::new(connector.channel(&endpoint));
    let hello = wire::HelloRequest {
        protocol_min: 1,
        protocol_max: 1,
        caller: Some(wire::ClusterIdentity {
            name: "research".into(),
            incarnation: vec![1; 16].into(),
        }),
    };
    client.hello(hello).await.err()
}

/// With TLS and authentication on the callee, the caller calls with the token issued to it
/// (role `remote`, principal `research`); another cluster's remote token cannot speak for
/// `research`, a `write` token cannot call the service at all, and a remote token reads
/// nothing else.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn calls_between_clusters_are_authenticated_by_the_callee() {
    let pki = tempfile::tempdir().expect("tempdir");
    let (security, admin) = writing_pki(pki.path());
    let writing_side = writing_peers();
    let writing = start_secured("writing", writing_registry, &writing_side, &security, admin).await;
    let research_side = research_peers(RemoteConfig {
        addresses: writing.addrs.clone(),
        ca: Some(pki.path().join("ca.pem")),
        token_file: Some(pki.path().join("research.token")),
        ..RemoteConfig::default()
    });
    let research = start_cluster("research", research_registry, &research_side).await;
    start_research(&research, &["a".to_owned()], "topic").await;
    let info = wait_finished(&mut research.client(), "a").await;
    assert_eq!(info.result.as_ref(), b"draft of topic", "{info:?}");

    let intruder = hello_as(&writing, pki.path(), "intruder")
        .await
        .expect("refused");
    assert_eq!(
        intruder.code(),
        tonic::Code::PermissionDenied,
        "{intruder:?}"
    );
    assert!(
        intruder
            .message()
            .contains("may not speak for cluster research"),
        "{intruder:?}"
    );
    let writer = hello_as(&writing, pki.path(), "writer")
        .await
        .expect("refused");
    assert_eq!(writer.code(), tonic::Code::PermissionDenied, "{writer:?}");
    let mut as_remote = WorkflowClient::with_credentials(
        &writing.addrs,
        &token_credentials(pki.path(), "research"),
    )
    .expect("client");
    let read = as_remote.list(None, None, None, 10).await;
    assert!(
        read.is_err(),
        "a remote token read the callee's workflows: {read:?}"
    );
}

impl Cluster {
    /// Stops every node (its data goes with the cluster's directory when dropped).
    async fn stop(self) {
        drop(self.stop_keeping_data().await);
    }

    /// Stops every node; the data directories' parent, kept.
    async fn stop_keeping_data(mut self) -> tempfile::TempDir {
        for node in self.nodes.iter_mut().filter_map(Option::take) {
            node.shutdown().await;
        }
        self.dir
    }
}

/// Cluster `name` started again, plaintext, on the data directories in `dir` (as
/// [`Cluster::stop_keeping_data`] left them) and `ports`.
async fn restart(
    name: &str,
    registry: fn() -> Registry,
    peers: &PeerSettings,
    dir: tempfile::TempDir,
    ports: &[u16],
) -> Cluster {
    let mut nodes = Vec::new();
    for id in 1..=3 {
        let place = (dir.path(), listen(Some(ports), id));
        let security = NodeSecurity::default();
        nodes.push(start_node(name, registry, peers, &security, place, id).await);
    }
    Cluster::of(nodes, Credentials::none(), dir)
}

/// Copies directory `from` into `to`, recursively.
fn copy_dir(from: &std::path::Path, to: &std::path::Path) {
    std::fs::create_dir_all(to).expect("create");
    for entry in std::fs::read_dir(from).expect("read dir") {
        let entry = entry.expect("entry");
        let target = to.join(entry.file_name());
        if entry.file_type().expect("type").is_dir() {
            copy_dir(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), &target).expect("copy");
        }
    }
}

/// A caller restored from a copy of its data directories, without a remint (REMOTE.md §17
/// scenario 8): its stream's seqs go back below what the callee took since the copy, and
/// its new call takes seq 2 again (the callee ran seq 2 for another call). The callee
/// starts nothing for it: the remote halts (the callee took more seqs than this caller
/// handed out), and the call times out at its deadline, having run nowhere. The
/// remint then ends the old stream, and a call under the new identity runs once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_caller_restored_without_a_remint_runs_nothing_twice() {
    let writing = start_cluster("writing", writing_registry, &writing_peers()).await;
    let research_side = research_peers(RemoteConfig {
        addresses: writing.addrs.clone(),
        ..RemoteConfig::default()
    });
    let ports = free_ports();
    let research = start_on(
        "research",
        research_registry,
        &research_side,
        &NodeSecurity::default(),
        Credentials::none(),
        Some(&ports),
    )
    .await;
    let run = |research: &Cluster, id: &str, input: &str| {
        let (client, id, input) = (research.client(), id.to_owned(), input.to_owned());
        async move {
            start_research_with(&client, &id, &input).await;
            wait_finished(&mut client.clone(), &id).await
        }
    };
    assert_eq!(run(&research, "a", "topic").await.status, "completed");
    let dir = research.stop_keeping_data().await;
    let backup = tempfile::tempdir().expect("tempdir");
    copy_dir(dir.path(), backup.path());
    let research = restart("research", research_registry, &research_side, dir, &ports).await;
    for id in ["b1", "b2"] {
        assert_eq!(run(&research, id, "topic").await.status, "completed");
    }
    writing.wait_inbound(3).await;
    let dir = research.stop_keeping_data().await;
    std::fs::remove_dir_all(dir.path()).expect("wipe");
    copy_dir(backup.path(), dir.path());
    let research = restart("research", research_registry, &research_side, dir, &ports).await;

    start_research_with(&research.client(), "c", "5000 topic").await;
    wait_until("the remote halts on the callee's watermark", || {
        let mut client = research.client();
        async move {
            let info = client.get("c", true).await.expect("get");
            info.journal
                .iter()
                .filter_map(|entry| entry.remote.as_ref())
                .any(|call| call.seq == 2 && call.last_error.contains("handed out only"))
        }
    })
    .await;
    let restored = wait_finished(&mut research.client(), "c").await;
    assert_eq!(restored.result.as_ref(), b"timed out", "{restored:?}");
    let inbound = writing.inbound().await;
    assert_eq!(
        inbound.len(),
        3,
        "nothing ran for the restored caller's call: {inbound:?}"
    );

    research.remint().await;
    let after = run(&research, "d", "topic").await;
    assert_eq!(after.result.as_ref(), b"draft of topic", "{after:?}");
    writing.wait_inbound(4).await;
}

/// The callee cluster wiped and re-created at the same addresses: the caller's driver meets
/// another identity and halts the remote (`wrong-callee`, shown in `keel status`) rather
/// than resend the old stream; an operator's rebind fails the calls that were out there
/// (`callee-lost`), and the next call binds the new cluster and completes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_recreated_callee_halts_the_remote_until_an_operator_rebinds_it() {
    let ports = free_ports();
    let writing_side = writing_peers();
    let plaintext = NodeSecurity::default();
    let start_writing = || {
        start_on(
            "writing",
            writing_registry,
            &writing_side,
            &plaintext,
            Credentials::none(),
            Some(&ports),
        )
    };
    let writing = start_writing().await;
    let research_side = research_peers(RemoteConfig {
        addresses: writing.addrs.clone(),
        ..RemoteConfig::default()
    });
    let research = start_cluster("research", research_registry, &research_side).await;
    start_research(&research, &["lost".to_owned()], "wait").await;
    writing.wait_inbound(1).await;
    writing.stop().await;
    let writing = start_writing().await;
    // A call made now waits: the remote is halted, and says why.
    start_research(&research, &["next".to_owned()], "topic").await;
    research.wait_halted_as_wrong_callee("next").await;
    assert!(
        writing.inbound().await.is_empty(),
        "nothing reached the new callee"
    );

    let failed = research
        .client()
        .rebind_remote("writers")
        .await
        .expect("rebind");
    assert_eq!(failed, 2, "both calls were out when the callee was lost");
    for id in ["lost", "next"] {
        let info = wait_finished(&mut research.client(), id).await;
        assert!(info.error.contains("callee-lost"), "{info:?}");
    }
    start_research(&research, &["after".to_owned()], "topic").await;
    let info = wait_finished(&mut research.client(), "after").await;
    assert_eq!(info.result.as_ref(), b"draft of topic", "{info:?}");
}

impl Cluster {
    /// Waits until workflow `id`'s remote call shows the remote halted as `wrong-callee`.
    async fn wait_halted_as_wrong_callee(&self, id: &str) {
        wait_until("the remote is halted as wrong-callee", || {
            let mut client = self.client();
            async move {
                let info = client.get(id, true).await.expect("get");
                info.journal
                    .iter()
                    .filter_map(|e| e.remote.as_ref())
                    .any(|call| call.last_error.contains("wrong-callee"))
            }
        })
        .await;
    }

    /// Waits until the cluster holds `count` callee-side workflows.
    async fn wait_inbound(&self, count: usize) {
        wait_until("the callee took the calls", || async move {
            self.inbound().await.len() == count
        })
        .await;
    }

    /// Remints the cluster's identity (`keel identity remint`); the new identity's text.
    async fn remint(&self) -> String {
        let answer = KeelClient::with_credentials(&self.addrs, &self.credentials)
            .expect("client")
            .remint_identity(None)
            .await
            .expect("remint");
        assert!(!answer.previous.is_empty(), "it replaced an identity");
        assert_ne!(answer.previous, answer.identity);
        answer.identity
    }
}

/// Both clusters reminted in turn, as each would be after a restore from old data. The
/// caller's remint fails its call out there (`caller-restored`) rather than resend it in a
/// new stream, and its next call runs once under the new identity. The callee's remint
/// cancels what it runs (`callee-restored`); the caller then meets another identity and
/// halts until an operator rebinds, after which a call completes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reminted_caller_or_callee_ends_the_old_identitys_calls() {
    let (research, writing) = start_pair().await;
    start_research(&research, &["held".to_owned()], "wait").await;
    writing.wait_inbound(1).await;

    let caller = research.remint().await;
    let held = wait_finished(&mut research.client(), "held").await;
    assert_eq!(held.status, "failed", "{held:?}");
    assert!(held.error.contains("caller-restored"), "{held:?}");
    start_research(&research, &["after".to_owned()], "topic").await;
    let after = wait_finished(&mut research.client(), "after").await;
    assert_eq!(after.result.as_ref(), b"draft of topic", "{after:?}");
    let inbound = writing.inbound().await;
    assert_eq!(inbound.len(), 2, "{inbound:?}");
    let new_stream: Vec<_> = inbound
        .iter()
        .filter(|w| w.id.starts_with(&format!("@{caller}.")))
        .collect();
    assert_eq!(
        new_stream.len(),
        1,
        "one workflow under the new caller identity: {inbound:?}"
    );
    assert_eq!(new_stream[0].status, "completed");

    start_research(&research, &["next".to_owned()], "wait").await;
    writing.wait_inbound(3).await;
    writing.remint().await;
    wait_until("the callee's running workflows are cancelled", || {
        let writing = &writing;
        async move {
            writing
                .inbound()
                .await
                .iter()
                .all(|w| w.status != "running")
        }
    })
    .await;
    let cancelled = writing.inbound().await;
    assert_eq!(
        cancelled.iter().filter(|w| w.status == "cancelled").count(),
        2,
        "the old caller identity's and the new one's waiting workflows: {cancelled:?}"
    );
    research.wait_halted_as_wrong_callee("next").await;
    let failed = research
        .client()
        .rebind_remote("writers")
        .await
        .expect("rebind");
    assert_eq!(failed, 1, "the call out when the callee was reminted");
    let next = wait_finished(&mut research.client(), "next").await;
    assert!(next.error.contains("callee-lost"), "{next:?}");
    start_research(&research, &["last".to_owned()], "topic").await;
    let last = wait_finished(&mut research.client(), "last").await;
    assert_eq!(last.result.as_ref(), b"draft of topic", "{last:?}");
}

/// Initializes `cluster`'s nodes with a third member that never answers (a port bound and
/// released): its two nodes elect a leader and serve.
async fn init_with_silent_third(admin: &mut KeelClient, cluster: &Cluster) {
    let mut init = InitRequest::default();
    for (id, addr) in cluster.members() {
        let status = admin
            .node(&addr)
            .expect("node")
            .status(StatusRequest {})
            .await;
        let incarnation = status.expect("status").into_inner().incarnation;
        init.members.insert(id, InitMember { addr, incarnation });
    }
    let silent = free_ports()[0];
    init.members.insert(
        3,
        InitMember {
            addr: format!("127.0.0.1:{silent}"),
            incarnation: 7,
        },
    );
    for addr in &cluster.addrs {
        admin
            .node(addr)
            .expect("node")
            .init(init.clone())
            .await
            .expect("init");
    }
}

/// Calls between clusters stay disabled while a member's build is not known (a member that
/// does not answer: an older build would refuse the remote commands the others apply): a
/// call waits before anything is journaled or sent, and the callee is not asked. Once the
/// member is removed, the leader enables them and the call completes, once. A node whose
/// build applies no scheduler commands is not added as a learner.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn calls_wait_until_every_members_build_applies_them() {
    let writing = start_cluster("writing", writing_registry, &writing_peers()).await;
    let research = start_nodes(
        "research",
        research_registry,
        &research_peers(RemoteConfig {
            addresses: writing.addrs.clone(),
            ..RemoteConfig::default()
        }),
        &NodeSecurity::default(),
        Credentials::none(),
        None,
        2,
    )
    .await;
    let mut admin = KeelClient::new(&research.addrs).expect("client");
    init_with_silent_third(&mut admin, &research).await;
    start_research(&research, &["gated".to_owned()], "topic").await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let gated = research.client().get("gated", true).await.expect("get");
    assert_eq!(gated.status, "running", "{gated:?}");
    assert!(
        gated.journal.iter().all(|entry| entry.remote.is_none()),
        "no remote call journaled: {gated:?}"
    );
    assert!(writing.inbound().await.is_empty(), "nothing sent");

    admin
        .change_membership(&[1, 2], false)
        .await
        .expect("node 3 removed");
    let done = wait_finished(&mut research.client(), "gated").await;
    assert_eq!(done.result.as_ref(), b"draft of topic", "{done:?}");
    assert_eq!(writing.inbound().await.len(), 1);

    let dir = tempfile::tempdir().expect("tempdir");
    let plain = RaftNode::start(NodeConfig::new(4, listen(None, 4), dir.path()))
        .await
        .expect("a plain log node");
    let refused = KeelClient::new(&writing.addrs)
        .expect("client")
        .add_learner(4, &plain.addr().to_string(), false)
        .await
        .expect_err("an older build is not added");
    assert!(
        refused.to_string().contains("runs an older build"),
        "{refused}"
    );
    plain.shutdown().await;
}

/// Three free loopback ports (bound, read and released).
fn free_ports() -> Vec<u16> {
    (0..3)
        .map(|_| {
            std::net::TcpListener::bind("127.0.0.1:0")
                .and_then(|l| l.local_addr())
                .expect("free port")
                .port()
        })
        .collect()
}

/// Twenty calls of nearly 1 MiB each wait for a callee that is not up yet (20 MiB of starts, over
/// gRPC's 16 MiB per message): the driver sends them in batches of at most 2 MiB, the
/// callee returns their 1 MiB results in Gets of at most 2 MiB, and every call completes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn large_calls_travel_in_bounded_batches() {
    let ports = free_ports();
    let addresses: Vec<String> = ports.iter().map(|p| format!("127.0.0.1:{p}")).collect();
    let research_side = research_peers(RemoteConfig {
        addresses,
        ..RemoteConfig::default()
    });
    let research = start_cluster("research", research_registry, &research_side).await;
    let ids: Vec<String> = (0..20).map(|n| format!("big-{n}")).collect();
    let topic = "x".repeat((1 << 20) - 64);
    start_research(&research, &ids, &topic).await;
    let writing = start_on(
        "writing",
        writing_registry,
        &writing_peers(),
        &NodeSecurity::default(),
        Credentials::none(),
        Some(&ports),
    )
    .await;
    let mut client = research.client();
    for id in &ids {
        let info = wait_finished(&mut client, id).await;
        assert_eq!(info.status, "completed", "{id}: {}", info.error);
        assert_eq!(info.result.len(), "draft of ".len() + topic.len());
    }
    // Counted in a node's state: a List of twenty 1 MiB results is over a message's limit.
    let node = writing.nodes[0].as_ref().expect("running");
    let state = node.scheduler().read();
    let inbound = state
        .list(None, None, None, usize::MAX)
        .filter(|(id, _)| id.starts_with('@'))
        .count();
    assert_eq!(inbound, ids.len(), "one callee workflow per call");
}
