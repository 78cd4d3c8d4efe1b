//! Durable workflows and timers on three real `keel node` processes, across leader kills.

mod common;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use common::{Cluster, leader, poll};
use keel_scheduler::client::{TimerDue, WorkflowClient, WorkflowInfo};
use keel_scheduler::wire::RejectionKind;

fn workflows(cluster: &Cluster) -> WorkflowClient {
    WorkflowClient::new(&cluster.addrs()).expect("client")
}

/// Waits for workflow `id` to finish.
async fn finished(client: &mut WorkflowClient, id: &str) -> WorkflowInfo {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let info = client
            .get_after(id, Duration::from_secs(5), true)
            .await
            .expect("get");
        if info.status != "running" {
            return info;
        }
        assert!(Instant::now() < deadline, "{id} did not finish: {info:?}");
    }
}

/// Waits until workflow `id`'s journal has a pending entry of `kind`.
async fn pending(client: &WorkflowClient, id: &str, kind: &str) {
    poll(&format!("{id} has a pending {kind}"), || {
        let mut client = client.clone();
        async move {
            client.get(id, true).await.is_ok_and(|info| {
                info.journal
                    .iter()
                    .any(|e| e.kind == kind && e.state == "pending")
            })
        }
    })
    .await;
}

async fn kill_leader(cluster: &mut Cluster) -> u64 {
    let mut raft = cluster.client();
    let old = leader(&mut raft).await.expect("leader").node_id;
    cluster.node(old).kill();
    old
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sleep_spanning_a_leader_kill_completes_and_survives_a_full_restart() {
    let mut cluster = Cluster::start(3, "runtime_threads = 1");
    cluster.init().await;
    let mut client = workflows(&cluster);
    let started = Instant::now();
    assert!(
        client
            .start("sleeper", "sleep", Bytes::from("2000"))
            .await
            .expect("start")
    );
    assert!(
        !client
            .start("sleeper", "sleep", Bytes::from("1"))
            .await
            .expect("start again"),
        "starting an existing id returns the existing workflow"
    );
    client
        .start("early", "late-signal", Bytes::from("1500"))
        .await
        .expect("start");
    pending(&client, "sleeper", "sleep").await;
    client
        .signal("early", "go", Bytes::from("sent during the sleep"))
        .await
        .expect("signal");
    let fence_before = client.get("sleeper", false).await.expect("get").fence;
    let old = kill_leader(&mut cluster).await;

    let info = finished(&mut client, "sleeper").await;
    assert_eq!(info.status, "completed", "{info:?}");
    assert_eq!(info.result, "slept 2000 ms");
    assert!(started.elapsed() >= Duration::from_secs(2), "never early");
    assert_eq!(info.journal.len(), 1);
    assert!(
        info.fence > fence_before,
        "the new leader claimed the workflow with a new fence"
    );
    let early = finished(&mut client, "early").await;
    assert_eq!(
        early.result, "sent during the sleep",
        "a signal sent before the wait is received"
    );

    cluster.node(old).start();
    for id in [1, 2, 3] {
        cluster.node(id).kill();
    }
    for id in [1, 2, 3] {
        cluster.node(id).start();
    }
    let again = finished(&mut client, "sleeper").await;
    assert_eq!(
        (again.status.as_str(), again.journal.len()),
        ("completed", 1)
    );
    assert_eq!(again.result, info.result);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_child_that_outlives_a_failover_returns_its_result_to_the_parent() {
    let mut cluster = Cluster::start(3, "runtime_threads = 1");
    cluster.init().await;
    let mut client = workflows(&cluster);
    client
        .start("parent", "call-sleep", Bytes::from("1500"))
        .await
        .expect("start");
    pending(&client, "parent/0", "sleep").await;
    kill_leader(&mut cluster).await;
    let parent = finished(&mut client, "parent").await;
    assert_eq!(parent.status, "completed", "{parent:?}");
    assert_eq!(parent.result, "child: slept 1500 ms");
    let child = client.get("parent/0", true).await.expect("child");
    assert_eq!(
        (child.status.as_str(), child.parent.as_str()),
        ("completed", "parent")
    );
}

/// Fires seen by a watcher, with when the test saw each.
type Seen = Arc<Mutex<Vec<(String, Instant)>>>;

/// Watches the fires applied by the node at `addr`.
fn watch(client: &WorkflowClient, addr: String) -> (Seen, tokio::task::JoinHandle<()>) {
    let seen: Seen = Arc::default();
    let task = {
        let seen = Arc::clone(&seen);
        let mut client = client.clone();
        tokio::spawn(async move {
            let watched = client
                .watch_fires(&addr, |fire| {
                    seen.lock()
                        .expect("fires")
                        .push((fire.name, Instant::now()));
                    true
                })
                .await;
            // The stream ends when the watched node stops; missed fires fail the count.
            if let Err(error) = watched {
                eprintln!("fire watcher stopped: {error}");
            }
        })
    };
    (seen, task)
}

/// Schedules `count` named timers from 32 tasks; each record says when its scheduling was
/// invoked and its delay (its due time by the test's clock is no earlier than their sum).
fn schedule(
    client: &WorkflowClient,
    count: usize,
) -> Vec<tokio::task::JoinHandle<Vec<(String, Instant, Duration)>>> {
    (0..32)
        .map(|task| {
            let mut client = client.clone();
            tokio::spawn(async move {
                let mut scheduled = Vec::new();
                for i in (task..count).step_by(32) {
                    let name = format!("timer-{i}");
                    let delay = Duration::from_millis(1500 + (i as u64 % 2000));
                    let invoked = Instant::now();
                    // A retry across the leader kill may find its first attempt applied
                    // (`created` false then): scheduling is idempotent by name.
                    client
                        .schedule_timer(&name, TimerDue::After(delay), Bytes::new())
                        .await
                        .expect("schedule");
                    scheduled.push((name, invoked, delay));
                }
                scheduled
            })
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_thousand_timers_across_a_leader_kill_fire_exactly_once_and_never_early() {
    const TIMERS: usize = 10_000;
    let mut cluster = Cluster::start(3, "runtime_threads = 1");
    cluster.init().await;
    let mut client = workflows(&cluster);
    let leader_id = leader(&mut cluster.client()).await.expect("leader").node_id;
    let follower = cluster
        .nodes
        .iter()
        .find(|n| n.id != leader_id)
        .expect("a follower");
    let (seen, watcher) = watch(&client, follower.addr.clone());
    let tasks = schedule(&client, TIMERS);
    tokio::time::sleep(Duration::from_secs(1)).await;
    kill_leader(&mut cluster).await;
    let mut scheduled = Vec::new();
    for task in tasks {
        scheduled.extend(task.await.expect("scheduling task"));
    }
    poll("every timer fired on the watched node", || {
        let seen = Arc::clone(&seen);
        async move { seen.lock().expect("fires").len() >= TIMERS }
    })
    .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    watcher.abort();
    let seen = seen.lock().expect("fires").clone();
    assert_eq!(seen.len(), TIMERS, "each timer fired once, no repeats");
    let fired_at: HashMap<&str, Instant> = seen.iter().map(|(n, at)| (n.as_str(), *at)).collect();
    assert_eq!(fired_at.len(), TIMERS);
    for (name, invoked, delay) in &scheduled {
        let due = *invoked + *delay;
        assert!(
            fired_at[name.as_str()] >= due,
            "{name} fired {:?} early",
            due - fired_at[name.as_str()]
        );
    }
    let info = client.timer("timer-7").await.expect("timer");
    assert!(info.fired && info.fire_index > 0 && info.fire_term > 0);
    assert!(info.fired_ms >= info.due_ms);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_requests_get_typed_errors_and_lose_nothing() {
    let cluster = Cluster::start(3, "runtime_threads = 1");
    cluster.init().await;
    let mut client = workflows(&cluster);
    let rejected = |result: Result<_, keel_scheduler::client::WorkflowClientError>| match result {
        Err(keel_scheduler::client::WorkflowClientError::Rejected { kind, .. }) => kind,
        other => panic!("expected a typed refusal, got {other:?}"),
    };
    assert_eq!(
        rejected(
            client
                .start("x", "no-such-kind", Bytes::new())
                .await
                .map(|_| ())
        ),
        RejectionKind::UnknownKind
    );
    assert_eq!(
        rejected(
            client
                .start("big", "sleep", Bytes::from(vec![b'1'; 2 << 20]))
                .await
                .map(|_| ())
        ),
        RejectionKind::TooLarge
    );
    assert_eq!(
        rejected(client.signal("ghost", "go", Bytes::new()).await),
        RejectionKind::UnknownWorkflow
    );
    assert_eq!(
        rejected(
            client
                .register_schedule("s", "not cron", "sleep", Bytes::new())
                .await
        ),
        RejectionKind::InvalidCron
    );
    client
        .start("done", "sleep", Bytes::from("1"))
        .await
        .expect("start");
    assert_eq!(finished(&mut client, "done").await.status, "completed");
    assert_eq!(
        rejected(client.cancel("done", "too late").await),
        RejectionKind::Finished
    );
    client
        .start("failing", "sleep", Bytes::from("not a number"))
        .await
        .expect("start");
    let failed = finished(&mut client, "failing").await;
    assert_eq!(failed.status, "failed");
    assert!(failed.error.contains("not a number"), "{failed:?}");
    client
        .start("retried", "flaky", Bytes::from("2"))
        .await
        .expect("start");
    let retried = finished(&mut client, "retried").await;
    assert_eq!(
        (retried.status.as_str(), retried.result.as_ref()),
        ("completed", b"3".as_ref())
    );
    let listed = client
        .list(Some("sleep"), None, None, 100)
        .await
        .expect("list");
    let ids: Vec<&str> = listed.iter().map(|w| w.id.as_str()).collect();
    assert_eq!(ids, ["done", "failing"], "nothing refused was created");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sleep_pending_while_every_node_restarts_ends_on_time() {
    let mut cluster = Cluster::start(3, "runtime_threads = 1");
    cluster.init().await;
    let mut client = workflows(&cluster);
    let started = Instant::now();
    client
        .start("napper", "sleep", Bytes::from("3000"))
        .await
        .expect("start");
    pending(&client, "napper", "sleep").await;
    // Kill everything late in the sleep, so waiting the whole delay again after the restart
    // would be visibly late.
    tokio::time::sleep(Duration::from_millis(2500).saturating_sub(started.elapsed())).await;
    for id in [1, 2, 3] {
        cluster.node(id).kill();
    }
    for id in [1, 2, 3] {
        cluster.node(id).start();
    }
    let info = finished(&mut client, "napper").await;
    assert_eq!(info.status, "completed", "{info:?}");
    let elapsed = started.elapsed();
    assert!(
        elapsed >= Duration::from_secs(3),
        "never early: {elapsed:?}"
    );
    // Replayed after the restart, the timer waits from the restart but no longer than
    // due + max_clock_skew (500 ms) by the wall clock.
    assert!(
        elapsed < Duration::from_secs(10),
        "not waiting the delay again: {elapsed:?}"
    );
}
