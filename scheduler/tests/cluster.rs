//! Three (and four) real `keel node` processes on loopback: failover, catch-up, snapshots,
//! membership, linearizable follower reads, restarts, exactly-once writes and repair.

mod common;

use std::collections::BTreeSet;
use std::time::Duration;

use common::{Cluster, leader, poll, record, records_on, status_of, wait_caught_up};
use keel_raft::pb::client as api;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leader_kill_failover_catch_up_and_full_restart_keep_every_acknowledged_write() {
    // Single-threaded node runtimes, as the cluster benchmark runs them.
    let mut cluster = Cluster::start(3, "runtime_threads = 1");
    cluster.init().await;
    let mut client = cluster.client();
    let mut acknowledged = Vec::new();
    for i in 0..20 {
        client
            .append(record(&format!("before-{i}")))
            .await
            .expect("append");
        acknowledged.push(format!("before-{i}"));
    }
    for addr in cluster.addrs() {
        let read = client
            .read_at(&addr, 0, 0, true)
            .await
            .expect("linearizable read");
        assert_eq!(
            read.records.len(),
            20,
            "every write acknowledged before the read is visible on {addr}"
        );
    }

    let old_leader = leader(&mut client).await.expect("leader").node_id;
    cluster.node(old_leader).kill();
    for i in 0..20 {
        client
            .append(record(&format!("after-{i}")))
            .await
            .expect("writes resume on a new leader");
        acknowledged.push(format!("after-{i}"));
    }
    let new_leader = leader(&mut client).await.expect("new leader").node_id;
    assert_ne!(new_leader, old_leader);

    cluster.node(old_leader).start();
    let old_addr = cluster.node(old_leader).addr.clone();
    wait_caught_up(&client, &old_addr, 40).await;

    let mut raw = client
        .node(&cluster.node(new_leader).addr.clone())
        .expect("client");
    let session = raw
        .register_session(api::RegisterSessionRequest {})
        .await
        .expect("register")
        .into_inner()
        .session;
    let retried = api::AppendRequest {
        session,
        seq: 1,
        records: record("exactly-once"),
    };
    let first = raw
        .append(retried.clone())
        .await
        .expect("first")
        .into_inner();
    let second = raw.append(retried).await.expect("retry").into_inner();
    assert_eq!(first, second, "the retry is answered with the first result");
    acknowledged.push("exactly-once".to_owned());

    restart_all_and_check(&mut cluster, &acknowledged).await;
}

/// Kills and restarts every node; each must come back with `acknowledged`, in order.
async fn restart_all_and_check(cluster: &mut Cluster, acknowledged: &[String]) {
    let client = cluster.client();
    for node in &mut cluster.nodes {
        node.kill();
    }
    for node in &mut cluster.nodes {
        node.start();
    }
    poll("a leader after the full restart", || {
        let mut client = client.clone();
        async move { leader(&mut client).await.is_some() }
    })
    .await;
    for addr in cluster.addrs() {
        wait_caught_up(&client, &addr, acknowledged.len() as u64).await;
        assert_eq!(
            records_on(&mut client.clone(), &addr).await,
            acknowledged,
            "node {addr} has every acknowledged entry in order"
        );
    }
}

/// A leader replicates entries before its own fsync, so after a power cut it may lack
/// entries a follower holds: it must never lead again in the term it led before its restart,
/// where it would propose other entries under the same (term, index).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_leader_leads_again_only_in_a_higher_term() {
    let mut cluster = Cluster::start(1, "");
    cluster.init().await;
    let mut client = cluster.client();
    client.append(record("before")).await.expect("append");
    let before = leader(&mut client).await.expect("a leader");
    cluster.node(1).kill();
    cluster.node(1).start();
    let mut client = cluster.client();
    client
        .append(record("after"))
        .await
        .expect("append after the restart");
    let after = leader(&mut client).await.expect("a leader");
    assert!(
        after.term > before.term,
        "led term {} before the restart and term {} after",
        before.term,
        after.term
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_behind_a_purged_log_catches_up_by_snapshot() {
    let mut cluster = Cluster::start(
        3,
        "[snapshot]\nevery_entries = 20\nkeep_behind = 0\ninstall_timeout_ms = 10000\n",
    );
    cluster.init().await;
    let mut client = cluster.client();
    client.append(record("first")).await.expect("append");
    let lagging = 3;
    cluster.node(lagging).kill();
    for i in 0..100 {
        client
            .append(record(&format!("r{i}")))
            .await
            .expect("append with one node down");
    }
    let leader_status = leader(&mut client).await.expect("leader");
    assert!(
        leader_status.purged_index.is_some_and(|p| p > 2),
        "the leader purged its log: {leader_status:?}"
    );
    cluster.node(lagging).start();
    let addr = cluster.node(lagging).addr.clone();
    wait_caught_up(&client, &addr, 101).await;
    let status = status_of(&mut client, &addr).await.expect("status");
    assert!(
        status.snapshot_index.is_some(),
        "the lagging node installed a snapshot"
    );
    let records = records_on(&mut client, &addr).await;
    assert_eq!(records.len(), 101);
    assert_eq!(records[0], "first");
    assert_eq!(records[100], "r99");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fourth_node_joins_as_learner_is_promoted_and_another_is_removed() {
    let mut cluster = Cluster::start(3, "");
    cluster.init().await;
    let mut client = cluster.client();
    for i in 0..10 {
        client
            .append(record(&format!("r{i}")))
            .await
            .expect("append");
    }
    let addr4 = cluster.add_node(4).addr.clone();
    poll("node 4 answers", || {
        let mut client = client.clone();
        let addr4 = addr4.clone();
        async move { status_of(&mut client, &addr4).await.is_some() }
    })
    .await;
    client.add_learner(4, &addr4, true).await.expect("learner");
    wait_caught_up(&client, &addr4, 10).await;
    client
        .change_membership(&[1, 2, 4], false)
        .await
        .expect("promote 4, remove 3");
    let status = leader(&mut client).await.expect("leader");
    let voters: BTreeSet<u64> = status
        .members
        .iter()
        .filter(|m| m.voter)
        .map(|m| m.node_id)
        .collect();
    assert_eq!(voters, BTreeSet::from([1, 2, 4]));
    assert!(
        !status.members.iter().any(|m| m.node_id == 3),
        "node 3 is gone from the membership"
    );
    cluster.node(3).kill();
    client
        .append(record("after"))
        .await
        .expect("the new voter set commits");
    let read = client
        .read_at(&addr4, 10, 0, true)
        .await
        .expect("linearizable read on node 4");
    assert_eq!(read.records.len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wiped_node_is_refused_as_a_voter_until_repaired() {
    let mut cluster = Cluster::start(3, "");
    cluster.init().await;
    let mut client = cluster.client();
    client.append(record("kept")).await.expect("append");
    let leader_id = leader(&mut client).await.expect("leader").node_id;
    let wiped = if leader_id == 3 { 2 } else { 3 };
    let node = cluster.node(wiped);
    node.kill();
    std::fs::remove_dir_all(&node.data_dir).expect("wipe");
    node.start();
    let addr = node.addr.clone();
    poll("the wiped node answers as not admitted", || {
        let mut client = client.clone();
        let addr = addr.clone();
        async move {
            status_of(&mut client, &addr)
                .await
                .is_some_and(|s| !s.admitted)
        }
    })
    .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let status = status_of(&mut client, &addr).await.expect("status");
    assert!(
        !status.admitted,
        "a new incarnation is not admitted by itself: {status:?}"
    );

    let output = tokio::process::Command::new(env!("CARGO_BIN_EXE_keel"))
        .args([
            "repair",
            "--cluster",
            &cluster.addrs().join(","),
            "--id",
            &wiped.to_string(),
            "--addr",
            &addr,
        ])
        .output()
        .await
        .expect("run keel repair");
    assert!(
        output.status.success(),
        "keel repair: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    poll("the repaired node is admitted and caught up", || {
        let mut client = client.clone();
        let addr = addr.clone();
        async move {
            status_of(&mut client, &addr)
                .await
                .is_some_and(|s| s.admitted && s.next_offset == 1)
        }
    })
    .await;
    assert_eq!(records_on(&mut client, &addr).await, ["kept"]);
}
