//! Remote calls between clusters of three `keel node` processes (`scheduler/REMOTE.md` §17).
//!
//! `research` calls `writing` through a cuttable proxy per writing node: both leaders are
//! killed (`SIGKILL`) while calls are taken and waiting, the link is cut for longer than
//! the backoff cap while new calls are made, and the writing cluster is down entirely while
//! another is made. At the end a final read of both clusters checks that every call started
//! exactly one callee workflow and that every caller resolved once, with its own callee's
//! result — or timed out at its deadline, with its callee cancelled.
//!
//! A late duplicate of a start the callee took and forgot, replayed as the network could
//! deliver it, must be answered `FORGOTTEN` and start nothing; the sabotage build that
//! deduplicates by the records it holds (a time window) is caught by the same replay.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use bytes::Bytes;
use common::{Cluster, leader, poll};
use keel_raft::cluster_identity::ClusterIdentity;
use keel_scheduler::client::{WorkflowClient, WorkflowInfo};
use keel_scheduler::peer::wire;
use keel_scheduler::proxy::Proxy;

/// Long enough for a callee workflow to wait for the test's signal.
const CALLEE_WAIT: &str = "600000";
const BACKOFF_MAX_MS: u64 = 1000;

fn remote_calls_config() -> String {
    format!(
        "[remote_calls]\nbackoff_first_ms = 20\nbackoff_max_ms = {BACKOFF_MAX_MS}\nget_wait_ms = 2000\nkinds_settle_ms = 1000\n"
    )
}

/// The callee-side workflows of `writing`, by id.
async fn inbound(writing: &Cluster) -> BTreeMap<String, WorkflowInfo> {
    let mut client = WorkflowClient::new(&writing.addrs()).expect("client");
    let Ok(all) = client.list(None, None, None, 10_000).await else {
        return BTreeMap::new();
    };
    all.into_iter()
        .filter(|w| w.id.starts_with('@'))
        .map(|w| (w.id.clone(), w))
        .collect()
}

async fn start_call(research: &Cluster, id: &str, kind: &str, deadline_ms: u64) {
    let input = format!("writers {kind} {deadline_ms} {CALLEE_WAIT}");
    poll(&format!("{id} starts"), || {
        let mut client = WorkflowClient::new(&research.addrs()).expect("client");
        let input = input.clone();
        async move {
            client
                .start(id, "call-remote", Bytes::from(input))
                .await
                .is_ok()
        }
    })
    .await;
}

/// SIGKILLs the leader of `cluster` and starts it again.
async fn kill_leader(cluster: &mut Cluster) {
    let deadline = Instant::now() + Duration::from_secs(30);
    let id = loop {
        if let Some(status) = leader(&mut cluster.client()).await {
            break status.node_id;
        }
        assert!(Instant::now() < deadline, "no leader");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    cluster.node(id).kill();
    cluster.node(id).start();
}

async fn wait_finished(research: &Cluster, id: &str, within: Duration) -> WorkflowInfo {
    let deadline = Instant::now() + within;
    loop {
        let mut client = WorkflowClient::new(&research.addrs()).expect("client");
        if let Ok(info) = client.get_after(id, Duration::from_secs(5), false).await
            && info.status != "running"
        {
            return info;
        }
        assert!(Instant::now() < deadline, "{id} did not finish");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Sends each waiting callee workflow its own id as the signal it waits for.
async fn release(writing: &Cluster, inbound: &BTreeMap<String, WorkflowInfo>) {
    for (id, info) in inbound {
        if info.status != "running" {
            continue;
        }
        poll(&format!("{id} is signalled"), || {
            let mut client = WorkflowClient::new(&writing.addrs()).expect("client");
            let id = id.clone();
            async move {
                client
                    .signal(&id, "go", Bytes::from(id.clone()))
                    .await
                    .is_ok()
            }
        })
        .await;
    }
}

/// Both clusters, research reaching writing through a proxy per writing node.
struct Pair {
    research: Cluster,
    writing: Cluster,
    proxies: Vec<Proxy>,
}

impl Pair {
    async fn start() -> Self {
        let writing = Cluster::start(
            3,
            &format!(
                "cluster = \"writing\"\n[remotes.research]\nexpose = [\"await-signal\", \"echo\"]\n{}",
                remote_calls_config()
            ),
        );
        writing.init().await;
        let mut proxies = Vec::new();
        for addr in writing.addrs() {
            proxies.push(Proxy::start(addr).await.expect("proxy"));
        }
        let through: Vec<String> = proxies
            .iter()
            .map(|p| format!("\"{}\"", p.addr()))
            .collect();
        let research = Cluster::start(
            3,
            &format!(
                "cluster = \"research\"\n[remotes.writers]\ncluster = \"writing\"\naddresses = [{}]\n{}",
                through.join(", "),
                remote_calls_config()
            ),
        );
        research.init().await;
        Self {
            research,
            writing,
            proxies,
        }
    }

    async fn wait_taken(&self, calls: usize) {
        poll(&format!("the callee took {calls} calls"), || {
            let writing = &self.writing;
            async move { inbound(writing).await.len() >= calls }
        })
        .await;
    }

    /// Three calls taken and waiting at the callee; both leaders killed.
    async fn kill_leaders_mid_call(&mut self) {
        for n in 1..=3 {
            start_call(&self.research, &format!("c{n}"), "await-signal", 600_000).await;
        }
        self.wait_taken(3).await;
        kill_leader(&mut self.research).await;
        kill_leader(&mut self.writing).await;
    }

    /// The link cut for three backoff caps while three more calls are made.
    async fn cut_the_link(&self) {
        for proxy in &self.proxies {
            proxy.set_cut(true);
        }
        for n in 4..=6 {
            start_call(&self.research, &format!("c{n}"), "await-signal", 600_000).await;
        }
        tokio::time::sleep(Duration::from_millis(3 * BACKOFF_MAX_MS)).await;
        for proxy in &self.proxies {
            proxy.set_cut(false);
        }
        self.wait_taken(6).await;
    }

    /// The callee down entirely while a seventh call and a short-deadline one are made.
    async fn take_the_callee_down(&mut self) {
        for node in &mut self.writing.nodes {
            node.kill();
        }
        start_call(&self.research, "c7", "await-signal", 600_000).await;
        start_call(&self.research, "late", "await-signal", 1_500).await;
        tokio::time::sleep(Duration::from_secs(3)).await;
        for node in &mut self.writing.nodes {
            node.start();
        }
        self.wait_taken(7).await;
    }

    /// The callers' results: each names the callee workflow that ran its call.
    async fn caller_results(&self) -> BTreeSet<String> {
        let mut results = BTreeSet::new();
        for n in 1..=7 {
            let info =
                wait_finished(&self.research, &format!("c{n}"), Duration::from_secs(60)).await;
            assert_eq!(info.status, "completed", "{info:?}");
            let result = String::from_utf8_lossy(&info.result).into_owned();
            let callee = result
                .strip_prefix("remote: ")
                .unwrap_or_else(|| panic!("c{n} resolved as {result:?}"))
                .to_owned();
            assert!(results.insert(callee), "two callers got {result:?}");
        }
        let late = wait_finished(&self.research, "late", Duration::from_secs(60)).await;
        assert_eq!(late.result.as_ref(), b"timed out", "{late:?}");
        results
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_call_runs_once_through_leader_kills_a_cut_link_and_a_callee_outage() {
    let mut pair = Pair::start().await;
    pair.kill_leaders_mid_call().await;
    pair.cut_the_link().await;
    pair.take_the_callee_down().await;
    release(&pair.writing, &inbound(&pair.writing).await).await;
    let results = pair.caller_results().await;

    // The final read: one callee workflow per call, each the one its caller names.
    poll("every callee workflow has ended", || {
        let writing = &pair.writing;
        async move {
            inbound(writing)
                .await
                .values()
                .all(|w| w.status != "running")
        }
    })
    .await;
    let callee_workflows = inbound(&pair.writing).await;
    let completed: BTreeSet<String> = callee_workflows
        .values()
        .filter(|w| w.status == "completed")
        .map(|w| String::from_utf8_lossy(&w.result).into_owned())
        .collect();
    assert_eq!(
        completed, results,
        "each caller has its own callee's result"
    );
    let others: Vec<&WorkflowInfo> = callee_workflows
        .values()
        .filter(|w| w.status != "completed")
        .collect();
    assert!(
        others.len() <= 1 && others.iter().all(|w| w.status == "cancelled"),
        "only the late call may have a callee workflow besides, cancelled: {others:?}"
    );
    eprintln!(
        "compared {} callers with {} callee workflows ({} cancelled by the deadline)",
        results.len() + 1,
        callee_workflows.len(),
        others.len()
    );
}

/// A writing cluster of `keel` processes that exposes `echo` to `research`.
async fn echo_callee(keel: PathBuf, env: Vec<(String, String)>) -> Cluster {
    let writing = Cluster::start_with(
        3,
        &format!(
            "cluster = \"writing\"\n[remotes.research]\nexpose = [\"echo\"]\n{}",
            remote_calls_config()
        ),
        keel,
        env,
    );
    writing.init().await;
    writing
}

/// A client of `writing`'s leader, and the callee identity its Hello gave.
async fn remote_client(
    writing: &Cluster,
    caller: &ClusterIdentity,
) -> (
    wire::remote_calls_client::RemoteCallsClient<tonic::transport::Channel>,
    wire::ClusterIdentity,
) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        for addr in writing.addrs() {
            let Ok(mut client) =
                wire::remote_calls_client::RemoteCallsClient::connect(format!("http://{addr}"))
                    .await
            else {
                continue;
            };
            let hello = wire::HelloRequest {
                protocol_min: 1,
                protocol_max: 1,
                caller: Some(identity(caller)),
            };
            if let Ok(answer) = client.hello(hello).await {
                let writing_identity = answer.into_inner().callee.expect("the callee's identity");
                return (client, writing_identity);
            }
        }
        assert!(Instant::now() < deadline, "no leader answered Hello");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn identity(identity: &ClusterIdentity) -> wire::ClusterIdentity {
    wire::ClusterIdentity {
        name: identity.name().to_owned(),
        incarnation: identity.incarnation().to_vec().into(),
    }
}

/// Sends `request` with `send` to `writing`'s leader, finding it again after a failure
/// (every request here is idempotent), for at most 30 s.
async fn on_leader<T: Clone, R, F, Fut>(
    writing: &Cluster,
    caller: &ClusterIdentity,
    request: T,
    send: F,
) -> R
where
    F: Fn(wire::remote_calls_client::RemoteCallsClient<tonic::transport::Channel>, T) -> Fut,
    Fut: Future<Output = Result<tonic::Response<R>, tonic::Status>>,
{
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let (client, _) = remote_client(writing, caller).await;
        match send(client, request.clone()).await {
            Ok(answer) => return answer.into_inner(),
            Err(status) => assert!(Instant::now() < deadline, "{status}"),
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Speaks the protocol as a caller would: starts call 42 at seq 1, fetches its completion,
/// acknowledges it (the callee forgets the record), then replays the same start, as a late
/// duplicate from the network. `Ok` when the replay is answered `FORGOTTEN` and the callee
/// holds one workflow for the call; `Err` says what happened instead.
async fn replay_a_forgotten_start(writing: &Cluster) -> Result<(), String> {
    let caller = ClusterIdentity::new("research", [7; 16]).expect("identity");
    let (_, writing_identity) = remote_client(writing, &caller).await;
    let start = wire::StartRequest {
        protocol: 1,
        caller: Some(identity(&caller)),
        callee: Some(writing_identity.clone()),
        items: vec![wire::StartItem {
            seq: 1,
            call: Some(wire::CallId {
                call_index: 42,
                workflow: "w".into(),
                position: 0,
            }),
            withdrawn: false,
            kind: "echo".into(),
            input: Bytes::from_static(b"once"),
            deadline_ms: keel_raft::clock::now_ms() + 600_000,
            called_ms: 0,
        }],
        attempt: 1,
    };
    let send_start = |mut client: wire::remote_calls_client::RemoteCallsClient<_>, request| async move {
        client.start(request).await
    };
    let send_get = |mut client: wire::remote_calls_client::RemoteCallsClient<_>, request| async move {
        client.get(request).await
    };
    let first = on_leader(writing, &caller, start.clone(), send_start).await;
    assert_eq!(
        first.results[0].status,
        i32::from(wire::StartStatus::Accepted),
        "{first:?}"
    );
    let get = |acks, wait_ms| wire::GetRequest {
        protocol: 1,
        caller: Some(identity(&caller)),
        callee: Some(writing_identity.clone()),
        wait_ms,
        max_completions: 0,
        acks,
    };
    let completion = on_leader(writing, &caller, get(Vec::new(), 5_000), send_get).await;
    let done = completion.completions.first().ok_or("no completion")?;
    let ack = wire::CompletionAck {
        seq: done.seq,
        call: done.call.clone(),
        ack: wire::Ack::Resolved.into(),
        resolved_as: String::new(),
    };
    on_leader(writing, &caller, get(vec![ack], 0), send_get).await;
    let replay = on_leader(writing, &caller, start, send_start).await;
    let workflows = inbound(writing).await;
    let forgotten = replay.results[0].status == i32::from(wire::StartStatus::Forgotten);
    if forgotten && workflows.len() == 1 {
        Ok(())
    } else {
        Err(format!(
            "the replayed start was answered {:?}; the callee holds {} workflows for one call: {:?}",
            replay.results[0],
            workflows.len(),
            workflows.keys().collect::<Vec<_>>()
        ))
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_late_duplicate_of_a_forgotten_start_runs_nothing() {
    let writing = echo_callee(PathBuf::from(env!("CARGO_BIN_EXE_keel")), Vec::new()).await;
    replay_a_forgotten_start(&writing)
        .await
        .expect("answered from the watermark");
}

/// Builds the sabotage `keel` (its own target directory; cargo reuses the build).
fn sabotage_keel() -> PathBuf {
    let target = Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/sabotage");
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".to_owned());
    let status = std::process::Command::new(cargo)
        .args(["build", "--locked", "-p", "keel-scheduler", "--bin", "keel"])
        .args(["--features", "sabotage", "--target-dir"])
        .arg(&target)
        .status()
        .expect("run cargo");
    assert!(status.success(), "building the sabotage keel");
    target.join("debug/keel")
}

/// The negative control: a callee that deduplicates by the records it holds runs the
/// replayed call a second time, and the replay says so.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_time_window_dedup_sabotage_is_caught() {
    let env = vec![("KEEL_SABOTAGE".to_owned(), "window-dedup".to_owned())];
    let writing = echo_callee(sabotage_keel(), env).await;
    let error = replay_a_forgotten_start(&writing)
        .await
        .expect_err("the sabotage runs the call twice");
    assert!(error.contains("2 workflows"), "{error}");
}

/// By hand (REMOTE.md §17 scenario 4): the callee cluster is down while a call is made and
/// for `KEEL_CALLEE_OUTAGE_S` seconds (default 600) after; when it comes back it takes the
/// call and runs it once, and the caller resolves with its result.
///
/// `KEEL_CALLEE_OUTAGE_S=600 cargo test -p keel-scheduler --test remote_cluster
/// a_callee_down_for_ten_minutes -- --ignored --nocapture`
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "by hand: the outage lasts ten minutes"]
async fn a_callee_down_for_ten_minutes_runs_the_call_once_when_back() {
    let outage = std::env::var("KEEL_CALLEE_OUTAGE_S")
        .ok()
        .and_then(|s| s.parse().ok())
        .map_or(Duration::from_secs(600), Duration::from_secs);
    let mut pair = Pair::start().await;
    for node in &mut pair.writing.nodes {
        node.kill();
    }
    let down = Instant::now();
    poll("the call starts", || {
        let mut client = WorkflowClient::new(&pair.research.addrs()).expect("client");
        async move {
            client
                .start(
                    "long",
                    "call-remote",
                    Bytes::from("writers echo 86400000 hello"),
                )
                .await
                .is_ok()
        }
    })
    .await;
    tokio::time::sleep(outage).await;
    let mut client = WorkflowClient::new(&pair.research.addrs()).expect("client");
    let info = client.get("long", true).await.expect("get");
    let call = info.journal[0].remote.clone().expect("a remote call");
    eprintln!(
        "after {:?} down: {} ({} attempts, last error: {})",
        down.elapsed(),
        call.state,
        call.attempts,
        call.last_error
    );
    assert_eq!(call.state, "pending start");
    for node in &mut pair.writing.nodes {
        node.start();
    }
    let back = Instant::now();
    let info = wait_finished(&pair.research, "long", Duration::from_secs(120)).await;
    eprintln!(
        "resolved {:?} after the callee came back: {:?}",
        back.elapsed(),
        String::from_utf8_lossy(&info.result)
    );
    assert_eq!(info.result.as_ref(), b"remote: hello");
    let callee_workflows = inbound(&pair.writing).await;
    eprintln!(
        "callee workflows: {:?}",
        callee_workflows.keys().collect::<Vec<_>>()
    );
    assert_eq!(callee_workflows.len(), 1, "the call ran once");
}
