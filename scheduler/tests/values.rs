//! Workflow values held by reference (issue #20), through three embedded nodes that
//! snapshot often and purge right behind: inputs, step results, signal payloads, a child's
//! input and output and outcomes larger than a reference are read back from the log or the
//! value files — by `get`, by a run replaying its journal after a new claim, and on every
//! replica.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use keel_raft::client::KeelClient;
use keel_raft::node::NodeConfig;
use keel_scheduler::client::{WorkflowClient, WorkflowInfo};
use keel_scheduler::engine::EngineSettings;
use keel_scheduler::engine::context::{Context, RetryPolicy, WorkflowError};
use keel_scheduler::engine::registry::Registry;
use keel_scheduler::{Command, Node, Owner, Value};

/// Bytes that say what they are, `len` long.
fn filled(label: &str, len: usize) -> Bytes {
    let mut bytes = label.as_bytes().to_vec();
    bytes.resize(len, b'.');
    Bytes::from(bytes)
}

/// Runs of `large`'s step bodies (a replay must not run them again).
static STEP_BODIES: AtomicU32 = AtomicU32::new(0);

/// The error message of `fails`'s step: long enough to be held by reference.
const LONG_ERROR: &str = "the model refused: this error message is longer than a reference";

/// Two large steps, a large signal, a child call, then a signal that was buffered while it
/// waited for the first; returns the lengths it saw.
async fn large(ctx: Context, input: Bytes) -> Result<Bytes, WorkflowError> {
    let first = ctx
        .step("first", |_| async {
            STEP_BODIES.fetch_add(1, Ordering::SeqCst);
            Ok::<_, String>(filled("first", 2048))
        })
        .await?;
    let second = ctx
        .step("second", |_| async {
            STEP_BODIES.fetch_add(1, Ordering::SeqCst);
            Ok::<_, String>(filled("second", 1500))
        })
        .await?;
    let signal = ctx.wait_signal("go", None).await?.unwrap_or_default();
    let child = ctx.call("child", filled("to the child", 700)).await?;
    let later = ctx.wait_signal("later", None).await?.unwrap_or_default();
    Ok(Bytes::from(format!(
        "{} {} {} {} {} {} {} {}",
        String::from_utf8_lossy(&input[..8]),
        first.len(),
        second.len(),
        String::from_utf8_lossy(&signal[..6]),
        signal.len(),
        String::from_utf8_lossy(&child),
        String::from_utf8_lossy(&later[..5]),
        later.len()
    )))
}

/// A step that fails once, for good, with a long message.
async fn fails(ctx: Context, _input: Bytes) -> Result<Bytes, WorkflowError> {
    ctx.step_with("refused", RetryPolicy::once(), |_| async {
        Err::<Bytes, _>(LONG_ERROR)
    })
    .await
}

/// Answers with its input's first bytes and length.
async fn child(_ctx: Context, input: Bytes) -> Result<Bytes, WorkflowError> {
    Ok(Bytes::from(format!(
        "{}:{}",
        String::from_utf8_lossy(&input[..12]),
        input.len()
    )))
}

/// Three large steps and done: load that moves the log past snapshots.
async fn bulk(ctx: Context, _input: Bytes) -> Result<Bytes, WorkflowError> {
    for name in ["a", "b", "c"] {
        ctx.step(name, |_| async move { Ok::<_, String>(filled(name, 1000)) })
            .await?;
    }
    Ok(filled("bulk done", 100))
}

async fn start() -> (Vec<Node>, Vec<String>, tempfile::TempDir) {
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
        config.snapshot_every_entries = 25;
        config.keep_behind_snapshot = 0;
        let registry = Registry::new()
            .register("large", "v1", large)
            .register("child", "v1", child)
            .register("fails", "v1", fails)
            .register("bulk", "v1", bulk);
        let node = Node::start(config, registry, EngineSettings::default())
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
    (nodes, addrs, dir)
}

async fn wait_for(
    client: &mut WorkflowClient,
    id: &str,
    done: impl Fn(&WorkflowInfo) -> bool,
) -> WorkflowInfo {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Ok(info) = client.get(id, true).await
            && done(&info)
        {
            return info;
        }
        assert!(Instant::now() < deadline, "{id}: timed out");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn waiting_for_go(info: &WorkflowInfo) -> bool {
    info.journal
        .iter()
        .any(|e| e.kind == "signal" && e.state == "pending")
}

/// Has every node build a snapshot, and checks each purged its log behind it.
async fn snapshot_everywhere(admin: &mut KeelClient, addrs: &[String]) {
    for addr in addrs {
        let index = admin.build_snapshot(addr).await.expect("snapshot");
        let status = admin
            .node(addr)
            .expect("node")
            .status(keel_raft::pb::client::StatusRequest {})
            .await
            .expect("status")
            .into_inner();
        assert!(status.purged_index >= Some(index), "{status:?}");
    }
}

/// Every value every node's state holds by reference reads back, the same bytes on every
/// node; returns how many were compared.
fn every_value_reads_back(nodes: &[Node]) -> usize {
    let mut seen: BTreeMap<(u64, u32, u32), Bytes> = BTreeMap::new();
    let mut recorded = 0;
    for node in nodes {
        let refs = node.scheduler().read().recorded_values();
        for at in refs {
            let bytes = node
                .scheduler()
                .value(&Value::Recorded(at))
                .unwrap_or_else(|e| panic!("node {}: {at:?}: {e}", node.addr()));
            let first = seen
                .entry((at.index, at.offset, at.len))
                .or_insert_with(|| bytes.clone());
            assert_eq!(*first, bytes, "{at:?} reads alike on every node");
            recorded += 1;
        }
    }
    recorded
}

/// Twenty `bulk` workflows, one after another, each checked.
async fn run_bulk(client: &mut WorkflowClient) {
    for n in 0..20 {
        let id = format!("bulk-{n}");
        client
            .start(&id, "bulk", filled("bulk input", 300))
            .await
            .expect("start");
        let info = wait_for(client, &id, |i| i.status == "completed").await;
        assert_eq!(info.result, filled("bulk done", 100));
    }
}

/// The node running workflows, and an owner that makes it run a claimed workflow.
fn leader(nodes: &[Node]) -> (&Node, Owner) {
    nodes
        .iter()
        .zip(1u64..)
        .find_map(|(n, id)| {
            n.engine()
                .active_term()
                .map(|term| (n, Owner::Leader { node: id, term }))
        })
        .expect("a leader")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn large_values_are_read_back_after_snapshots_purges_and_a_replay() {
    let (nodes, addrs, _dir) = start().await;
    let mut client = WorkflowClient::new(&addrs).expect("client");
    let mut admin = KeelClient::new(&addrs).expect("admin");
    client
        .start("w", "large", filled("input of w", 500))
        .await
        .expect("start");
    wait_for(&mut client, "w", waiting_for_go).await;
    // Buffered: w waits for "go" first.
    client
        .signal("w", "later", filled("later", 900))
        .await
        .expect("signal");
    client
        .start("f", "fails", Bytes::new())
        .await
        .expect("start");
    wait_for(&mut client, "f", |i| i.status == "failed").await;
    run_bulk(&mut client).await;
    snapshot_everywhere(&mut admin, &addrs).await;
    // The log behind the snapshots is gone: w's steps are read from value files.
    let info = client.get("w", true).await.expect("get");
    assert_eq!(info.journal[0].value, filled("first", 2048));
    assert_eq!(info.journal[1].value, filled("second", 1500));
    let failed = client.get("f", true).await.expect("get");
    assert_eq!(failed.journal[0].error, LONG_ERROR);
    assert!(failed.error.contains(LONG_ERROR), "{failed:?}");
    // A new claim replays w from its journal (its steps are not run again; their values
    // come from the value files).
    let leader = leader(&nodes);
    leader
        .0
        .proposer()
        .propose(
            Command::Claim {
                workflow: "w".into(),
                owner: leader.1,
            },
            None,
        )
        .await
        .expect("claimed");
    client
        .signal("w", "go", filled("signal", 1200))
        .await
        .expect("signal");
    let info = wait_for(&mut client, "w", |i| i.status == "completed").await;
    assert_eq!(
        String::from_utf8_lossy(&info.result),
        "input of 2048 1500 signal 1200 to the child:700 later 900"
    );
    assert_eq!(
        STEP_BODIES.load(Ordering::SeqCst),
        2,
        "the replay ran no step body again"
    );
    assert_eq!(info.journal[2].value, filled("signal", 1200));
    let child = client.get("w/3", false).await.expect("the child");
    assert_eq!(String::from_utf8_lossy(&child.result), "to the child:700");
    // More snapshots, now with w finished; every replica reads every value it references.
    snapshot_everywhere(&mut admin, &addrs).await;
    assert!(
        every_value_reads_back(&nodes) > 60,
        "the states hold their large values by reference"
    );
    for node in nodes {
        node.shutdown().await;
    }
}
