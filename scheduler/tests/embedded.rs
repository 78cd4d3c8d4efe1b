//! Three embedded nodes in this process, running workflow kinds this test registers: the
//! Rust workflow API, replay after a new fence, non-determinism (parking), duplicate step
//! records.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use keel_raft::client::KeelClient;
use keel_raft::node::NodeConfig;
use keel_scheduler::Node;
use keel_scheduler::client::{WorkflowClient, WorkflowInfo};
use keel_scheduler::engine::EngineSettings;
use keel_scheduler::engine::context::{Context, WorkflowError};
use keel_scheduler::engine::registry::Registry;
use keel_scheduler::{
    Answer, Command, EntryState, Outcome, Owner, Rejection, StepRecord, StoredOutcome, Value,
};

static COUNTED_RUNS: AtomicU32 = AtomicU32::new(0);
static SHIFTED: AtomicBool = AtomicBool::new(false);
static SHIFTY_RUNS: AtomicU32 = AtomicU32::new(0);
static SUSPENDING_RUNS: AtomicU32 = AtomicU32::new(0);
static FAST_BODIES: AtomicU32 = AtomicU32::new(0);
static SUSPENDING_STEPS: AtomicU32 = AtomicU32::new(0);

fn never_fails(value: &'static str) -> std::future::Ready<Result<Bytes, std::convert::Infallible>> {
    std::future::ready(Ok(Bytes::from_static(value.as_bytes())))
}

/// Two steps around a signal wait; counts how often step bodies run.
async fn counted(ctx: Context, _input: Bytes) -> Result<Bytes, WorkflowError> {
    let first = ctx
        .step("first", |_| async {
            COUNTED_RUNS.fetch_add(1, Ordering::SeqCst);
            never_fails("one").await
        })
        .await?;
    ctx.wait_signal("next", None).await?;
    let second = ctx
        .step("second", |_| async {
            COUNTED_RUNS.fetch_add(1, Ordering::SeqCst);
            never_fails("two").await
        })
        .await?;
    ctx.now().await?;
    let random = ctx.random().await?;
    Ok(Bytes::from(format!(
        "{}+{} ({random} drawn)",
        String::from_utf8_lossy(&first),
        String::from_utf8_lossy(&second)
    )))
}

/// A step whose name depends on the code's "version", then a wait that never ends.
async fn shifty(ctx: Context, _input: Bytes) -> Result<Bytes, WorkflowError> {
    SHIFTY_RUNS.fetch_add(1, Ordering::SeqCst);
    let name = if SHIFTED.load(Ordering::SeqCst) {
        "renamed"
    } else {
        "original"
    };
    ctx.step(name, |_| never_fails("x")).await?;
    ctx.wait_signal("never", None).await?;
    Ok(Bytes::new())
}

/// Waits for signal "go", then answers with its payload.
async fn awaits_go(ctx: Context, _input: Bytes) -> Result<Bytes, WorkflowError> {
    Ok(ctx.wait_signal("go", None).await?.unwrap_or_default())
}

/// Registered as a suspending kind: counts its passes from the top and its step body's
/// runs; a step, a short sleep, a signal wait.
async fn gives_back_its_thread(ctx: Context, _input: Bytes) -> Result<Bytes, WorkflowError> {
    SUSPENDING_RUNS.fetch_add(1, Ordering::SeqCst);
    ctx.step("once", |_| async {
        SUSPENDING_STEPS.fetch_add(1, Ordering::SeqCst);
        never_fails("x").await
    })
    .await?;
    ctx.sleep(Duration::from_millis(50)).await?;
    Ok(ctx.wait_signal("go", None).await?.unwrap_or_default())
}

/// A slow step and a fast one made in that order and awaited together.
async fn joined(ctx: Context, _input: Bytes) -> Result<Bytes, WorkflowError> {
    let slow = ctx.step("slow", |_| async {
        tokio::time::sleep(Duration::from_millis(300)).await;
        never_fails("slow").await
    });
    let fast = ctx.step("fast", |_| async {
        FAST_BODIES.fetch_add(1, Ordering::SeqCst);
        never_fails("fast").await
    });
    let (slow, fast) = futures::join!(slow, fast);
    Ok(Bytes::from(format!(
        "{}+{}",
        String::from_utf8_lossy(&slow?),
        String::from_utf8_lossy(&fast?)
    )))
}

fn registry() -> Registry {
    Registry::new()
        .register("joined", "v1", joined)
        .register_suspending("suspending", "v1", gives_back_its_thread)
        .register("counted", "v1", counted)
        .register("shifty", "v1", shifty)
        .register("awaits-go", "v1", awaits_go)
}

struct Embedded {
    nodes: Vec<Node>,
    addrs: Vec<String>,
    _dir: tempfile::TempDir,
}

async fn start_cluster() -> Embedded {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut nodes = Vec::new();
    let mut members = BTreeMap::new();
    for id in 1..=3 {
        let mut config = NodeConfig::new(
            id,
            "127.0.0.1:0".parse().expect("addr"),
            dir.path().join(format!("node-{id}")),
        );
        config.segment_size_bytes = 8 << 20;
        let node = Node::start(config, registry(), EngineSettings::default())
            .await
            .expect("node");
        members.insert(id, node.addr().to_string());
        nodes.push(node);
    }
    let addrs: Vec<String> = members.values().cloned().collect();
    KeelClient::new(&addrs)
        .expect("client")
        .init(&members)
        .await
        .expect("init");
    Embedded {
        nodes,
        addrs,
        _dir: dir,
    }
}

impl Embedded {
    /// The node running workflows, and an owner that makes it run a claimed workflow.
    async fn leader(&self) -> (&Node, Owner) {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let leading = self.nodes.iter().zip(1u64..).find_map(|(n, id)| {
                n.engine()
                    .active_term()
                    .map(|term| (n, Owner::Leader { node: id, term }))
            });
            if let Some(leading) = leading {
                return leading;
            }
            assert!(Instant::now() < deadline, "no node runs workflows");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    async fn wait_for(
        &self,
        client: &mut WorkflowClient,
        id: &str,
        what: &str,
        mut done: impl FnMut(&WorkflowInfo) -> bool,
    ) -> WorkflowInfo {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let info = client.get(id, true).await.expect("get");
            if done(&info) {
                return info;
            }
            assert!(
                Instant::now() < deadline,
                "{id}: timed out waiting for {what}: {info:?}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

fn waiting_for_signal(info: &WorkflowInfo) -> bool {
    info.journal
        .iter()
        .any(|e| e.kind == "signal" && e.state == "pending")
}

/// Every node applied workflow `c`'s end with step 0's first outcome.
async fn every_node_agrees_on_c(cluster: &Embedded) {
    for node in &cluster.nodes {
        let deadline = Instant::now() + Duration::from_secs(5);
        while node
            .scheduler()
            .read()
            .workflow("c")
            .is_none_or(|w| !w.is_finished())
        {
            assert!(Instant::now() < deadline, "node did not apply the end");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let state = node.scheduler().read();
        let journal = &state.workflow("c").expect("c").journal;
        assert_eq!(
            journal[0].state,
            EntryState::Done(StoredOutcome::Ok(Value::Inline(b"one".to_vec())))
        );
        assert_eq!(journal.len(), 5, "first, signal, second, now, random");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replayed_run_returns_journaled_steps_without_running_them_and_a_duplicate_record_is_rejected()
 {
    let cluster = start_cluster().await;
    let mut client = WorkflowClient::new(&cluster.addrs).expect("client");
    client
        .start("c", "counted", Bytes::new())
        .await
        .expect("start");
    cluster
        .wait_for(&mut client, "c", "the signal wait", waiting_for_signal)
        .await;
    assert_eq!(COUNTED_RUNS.load(Ordering::SeqCst), 1);

    // A second completion of step 0 is refused with the first outcome, on every node alike.
    let (leader, owner) = cluster.leader().await;
    let fence = leader.scheduler().read().workflow("c").expect("c").fence;
    let duplicate = leader
        .proposer()
        .propose(
            Command::Step {
                workflow: "c".into(),
                fence,
                seq: 0,
                name: "first".into(),
                record: StepRecord::Done(Outcome::Ok(b"forged".to_vec())),
            },
            None,
        )
        .await
        .expect("proposed");
    assert_eq!(
        duplicate,
        Answer::Rejected(Rejection::AlreadyRecorded {
            seq: 0,
            outcome: StoredOutcome::Ok(Value::Inline(b"one".to_vec()))
        })
    );

    // A new fence makes the engine replay the workflow from the top.
    let claimed = leader
        .proposer()
        .propose(
            Command::Claim {
                workflow: "c".into(),
                owner,
            },
            None,
        )
        .await
        .expect("claim");
    assert!(
        matches!(claimed, Answer::Claimed { fence: new } if new > fence),
        "{claimed:?}"
    );
    client
        .signal("c", "next", Bytes::new())
        .await
        .expect("signal");
    let info = cluster
        .wait_for(&mut client, "c", "completion", |i| i.status != "running")
        .await;
    assert_eq!(info.status, "completed", "{info:?}");
    assert!(String::from_utf8_lossy(&info.result).starts_with("one+two"));
    assert_eq!(
        COUNTED_RUNS.load(Ordering::SeqCst),
        2,
        "the replay returned step 0's journaled outcome without running its body"
    );
    every_node_agrees_on_c(&cluster).await;
    for node in cluster.nodes {
        node.shutdown().await;
    }
}

/// A suspending kind's run ends at each unresolved wait (the sleep, then the signal wait)
/// and is replayed from its journal when the entry resolves: at the signal wait it has made
/// at least two passes from the top (three without a leader change: one more per takeover),
/// the signal adds one, the step's body ran once, and the signal's payload is returned.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_suspending_run_ends_at_each_wait_and_is_replayed_when_it_resolves() {
    let cluster = start_cluster().await;
    let mut client = WorkflowClient::new(&cluster.addrs).expect("client");
    client
        .start("s", "suspending", Bytes::new())
        .await
        .expect("start");
    cluster
        .wait_for(&mut client, "s", "the signal wait", waiting_for_signal)
        .await;
    let at_wait = SUSPENDING_RUNS.load(Ordering::SeqCst);
    assert!(
        at_wait >= 2,
        "one pass to the sleep, one after it to the signal wait: {at_wait}"
    );
    client
        .signal("s", "go", Bytes::from_static(b"payload"))
        .await
        .expect("signal");
    let info = cluster
        .wait_for(&mut client, "s", "completion", |i| i.status != "running")
        .await;
    assert_eq!(info.status, "completed", "{info:?}");
    assert_eq!(info.result.as_ref(), b"payload");
    assert!(
        SUSPENDING_RUNS.load(Ordering::SeqCst) > at_wait,
        "the signal replays it"
    );
    assert_eq!(SUSPENDING_STEPS.load(Ordering::SeqCst), 1);
    for node in cluster.nodes {
        node.shutdown().await;
    }
}

/// Steps awaited together take journal positions in the order they were made, and a fast
/// step's record waits for the slow one before it: the journal reads slow, fast, and the
/// fast body ran once (a record proposed past the journal's end would have been refused,
/// forcing a replay that runs it again).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn steps_awaited_together_are_journaled_in_the_order_they_were_made() {
    let cluster = start_cluster().await;
    let mut client = WorkflowClient::new(&cluster.addrs).expect("client");
    client
        .start("j", "joined", Bytes::new())
        .await
        .expect("start");
    let info = cluster
        .wait_for(&mut client, "j", "completion", |i| i.status != "running")
        .await;
    assert_eq!(info.status, "completed", "{info:?}");
    assert_eq!(info.result.as_ref(), b"slow+fast");
    let names: Vec<&str> = info.journal.iter().map(|e| e.name.as_str()).collect();
    assert_eq!(names, ["slow", "fast"]);
    assert_eq!(FAST_BODIES.load(Ordering::SeqCst), 1);
    for node in cluster.nodes {
        node.shutdown().await;
    }
}

/// Code that no longer matches its journal parks the workflow (status `parked`, the
/// non-determinism as its error) instead of failing it; it is not run again by itself (the
/// leader's reconcile pass, every 2 s, leaves it alone), and a claim with fixed code — what
/// a takeover does — resumes it to its end.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn code_that_no_longer_matches_its_journal_parks_the_workflow_until_fixed_code_claims_it() {
    let cluster = start_cluster().await;
    let mut client = WorkflowClient::new(&cluster.addrs).expect("client");
    client
        .start("s", "shifty", Bytes::new())
        .await
        .expect("start");
    cluster
        .wait_for(&mut client, "s", "the signal wait", waiting_for_signal)
        .await;
    SHIFTED.store(true, Ordering::SeqCst);
    let claim = || async {
        let (leader, owner) = cluster.leader().await;
        let claim = Command::Claim {
            workflow: "s".into(),
            owner,
        };
        leader.proposer().propose(claim, None).await.expect("claim");
    };
    claim().await;
    let info = cluster
        .wait_for(&mut client, "s", "parking", |i| i.status != "running")
        .await;
    assert_eq!(info.status, "parked");
    assert!(
        info.error.contains("non-determinism")
            && info.error.contains("\"original\"")
            && info.error.contains("\"renamed\""),
        "{}",
        info.error
    );
    let runs = SHIFTY_RUNS.load(Ordering::SeqCst);
    let (_, leading) = cluster.leader().await;
    tokio::time::sleep(Duration::from_millis(2500)).await;
    if cluster.leader().await.1 == leading {
        // (A takeover in between would retry it, as it should.)
        assert_eq!(
            SHIFTY_RUNS.load(Ordering::SeqCst),
            runs,
            "a parked workflow is not re-run by the leader that parked it"
        );
        assert_eq!(client.get("s", false).await.expect("get").status, "parked");
    }

    SHIFTED.store(false, Ordering::SeqCst);
    claim().await;
    cluster
        .wait_for(&mut client, "s", "the resumed wait", |i| {
            i.status == "running" && waiting_for_signal(i)
        })
        .await;
    client
        .signal("s", "never", Bytes::new())
        .await
        .expect("signal");
    let info = cluster
        .wait_for(&mut client, "s", "completion", |i| i.status != "running")
        .await;
    assert_eq!(info.status, "completed", "{info:?}");
    for node in cluster.nodes {
        node.shutdown().await;
    }
}

/// An embedding application can stop its node and open it again in the same process while
/// a client holds a stream open (the log client's append stream): the data directory is
/// released, and a waiting workflow resumes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_stopped_under_an_open_stream_reopens_in_process_and_resumes_its_workflows() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut config = NodeConfig::new(1, "127.0.0.1:0".parse().expect("addr"), dir.path());
    config.segment_size_bytes = 8 << 20;
    let node = Node::start(config.clone(), registry(), EngineSettings::default())
        .await
        .expect("node");
    config.listen = node.addr();
    let addrs = vec![node.addr().to_string()];
    let mut log_client = KeelClient::new(&addrs).expect("client");
    log_client
        .init(&BTreeMap::from([(1, addrs[0].clone())]))
        .await
        .expect("init");
    log_client
        .append(vec![Bytes::from_static(b"opens the append stream")])
        .await
        .expect("append");
    let mut client = WorkflowClient::new(&addrs).expect("client");
    client
        .start("r", "awaits-go", Bytes::new())
        .await
        .expect("start");
    let deadline = Instant::now() + Duration::from_secs(10);
    while !waiting_for_signal(&client.get("r", true).await.expect("get")) {
        assert!(Instant::now() < deadline, "the workflow never waited");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    node.shutdown().await;

    let node = tokio::time::timeout(Duration::from_secs(2), async {
        loop {
            match Node::start(config.clone(), registry(), EngineSettings::default()).await {
                Ok(node) => return node,
                Err(error) if error.to_string().contains("locked") => {
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
                Err(error) => panic!("the node reopens: {error}"),
            }
        }
    })
    .await
    .expect("the data directory is released within 2 s of shutdown");
    client
        .signal("r", "go", Bytes::from_static(b"resumed"))
        .await
        .expect("signal");
    let info = client
        .get_after("r", Duration::from_secs(10), false)
        .await
        .expect("get");
    assert_eq!(info.status, "completed", "{info:?}");
    assert_eq!(info.result.as_ref(), b"resumed");
    node.shutdown().await;
}
