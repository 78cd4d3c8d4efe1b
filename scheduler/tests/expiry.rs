//! One embedded node that runs only a named timer (no workflow): the leader's expiry loop
//! must still forget the timer's fire record once the retention has passed.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use keel_raft::client::KeelClient;
use keel_raft::node::NodeConfig;
use keel_scheduler::engine::EngineSettings;
use keel_scheduler::engine::registry::Registry;
use keel_scheduler::{Answer, Command, Due, Node};

/// Polls `done` every 20 ms for at most 10 s.
async fn eventually(what: &str, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !done() {
        assert!(Instant::now() < deadline, "timed out waiting until {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_timers_only_cluster_expires_fire_records() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut config = NodeConfig::new(
        1,
        "127.0.0.1:0".parse().expect("addr"),
        dir.path().join("node-1"),
    );
    config.segment_size_bytes = 8 << 20;
    let settings = EngineSettings {
        retention: Duration::from_millis(200),
        expire_every: Duration::from_millis(50),
        ..EngineSettings::default()
    };
    let node = Node::start(config, Registry::default(), settings)
        .await
        .expect("node");
    let members = BTreeMap::from([(1, node.addr().to_string())]);
    KeelClient::new(&[node.addr().to_string()])
        .expect("client")
        .init(&members)
        .await
        .expect("init");
    eventually("the node leads", || node.engine().active_term().is_some()).await;

    let schedule = Command::ScheduleTimer {
        name: "t".into(),
        due: Due::After { delay_ms: 0 },
        payload: Vec::new(),
    };
    let answer = node
        .proposer()
        .propose(schedule, None)
        .await
        .expect("commits");
    assert!(
        matches!(answer, Answer::Timer { created: true, .. }),
        "{answer:?}"
    );
    let machine = node.scheduler();
    eventually("the timer fires", || {
        matches!(machine.read().named_timer("t"), Some(Err(_)))
    })
    .await;
    assert!(
        machine
            .read()
            .list(None, None, None, usize::MAX)
            .next()
            .is_none(),
        "no workflow: only the fire record is there to expire"
    );
    eventually("its fire record expires", || {
        machine.read().named_timer("t").is_none()
    })
    .await;
    node.shutdown().await;
}
