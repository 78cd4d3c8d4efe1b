//! Skipped time: `keel_raft::clock::skip` moves this process's clocks forward, and the timer
//! driver fires what the skip made due — never a timer whose due time the skipped clocks
//! have not reached. A test binary of its own: the skip is process-wide.

use std::collections::BTreeMap;
use std::time::Duration;

use bytes::Bytes;
use keel_raft::client::KeelClient;
use keel_raft::node::NodeConfig;
use keel_scheduler::Node;
use keel_scheduler::client::WorkflowClient;
use keel_scheduler::engine::EngineSettings;
use keel_scheduler::engine::context::{Context, WorkflowError};
use keel_scheduler::engine::registry::Registry;

const DAY: Duration = Duration::from_secs(24 * 3600);

/// Waits for signal "start", sleeps a day, waits for signal "end"; answers both payloads.
async fn day_long(ctx: Context, _input: Bytes) -> Result<Bytes, WorkflowError> {
    let start = ctx.wait_signal("start", None).await?.unwrap_or_default();
    ctx.sleep(DAY).await?;
    let end = ctx.wait_signal("end", None).await?.unwrap_or_default();
    Ok(Bytes::from([start, end].concat()))
}

/// How the workflow stands after `wait` (its status and journal length).
async fn status_after(client: &mut WorkflowClient, wait: Duration) -> (String, u32) {
    let info = client
        .get_after("day", wait, false)
        .await
        .expect("workflow");
    (info.status, info.journal_len)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_skip_fires_the_timers_it_made_due_and_no_other_while_sessions_and_runs_survive_it() {
    let dir = tempfile::tempdir().expect("tempdir");
    let config = NodeConfig::new(1, "127.0.0.1:0".parse().expect("addr"), dir.path());
    let registry = Registry::new().register("day-long", "1", day_long);
    let node = Node::start(config, registry, EngineSettings::default())
        .await
        .expect("node");
    let addr = node.addr().to_string();
    KeelClient::new(std::slice::from_ref(&addr))
        .expect("client")
        .init(&BTreeMap::from([(1, addr.clone())]))
        .await
        .expect("init");
    let mut client = WorkflowClient::new(&[addr]).expect("client");
    client
        .start("day", "day-long", Bytes::new())
        .await
        .expect("start");
    // The signal registers this client's exactly-once session before any skip.
    client
        .signal("day", "start", Bytes::from_static(b"a"))
        .await
        .expect("first signal");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    // Journal: the signal wait, then the sleep once the run reached it.
    while status_after(&mut client, Duration::ZERO).await.1 < 2 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the sleep was never journaled"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }

    keel_raft::clock::skip(Duration::from_secs(23 * 3600));
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(
        status_after(&mut client, Duration::ZERO).await,
        ("running".to_owned(), 2),
        "23 hours skipped: the day-long sleep has not fired"
    );
    assert_eq!(node.timers_due(), 0);

    keel_raft::clock::skip(Duration::from_secs(3600));
    while status_after(&mut client, Duration::ZERO).await.1 < 3 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the sleep did not fire after a day was skipped (due: {})",
            node.timers_due()
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    // The session registered before the skip still takes writes, and the run that slept
    // through it goes on.
    client
        .signal("day", "end", Bytes::from_static(b"z"))
        .await
        .expect("a signal in the session from before the skip");
    let info = client
        .get_after("day", Duration::from_secs(10), false)
        .await
        .expect("workflow");
    assert_eq!(info.status, "completed");
    assert_eq!(info.result, Bytes::from_static(b"az"));
    node.shutdown().await;
}
