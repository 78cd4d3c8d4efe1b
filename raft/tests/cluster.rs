//! Three in-process nodes on loopback: election, replication, reads, exactly-once writes,
//! limits, snapshots and membership changes through the gRPC services.

use std::collections::BTreeMap;
use std::time::Duration;

use bytes::Bytes;
use keel_raft::client::{ClientError, KeelClient};
use keel_raft::node::{NodeConfig, RaftNode};
use keel_raft::pb::client::{self as api, keel_log_client::KeelLogClient};
use keel_raft::wire_error::{self, WriteErrorKind};
use tempfile::TempDir;

struct Cluster {
    nodes: Vec<RaftNode>,
    _dirs: Vec<TempDir>,
}

impl Cluster {
    async fn start(count: u64, tune: impl Fn(&mut NodeConfig)) -> Self {
        let _ = tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
            .with_test_writer()
            .try_init();
        let mut nodes = Vec::new();
        let mut dirs = Vec::new();
        for id in 1..=count {
            let dir = tempfile::tempdir().expect("tempdir");
            let mut config = NodeConfig::new(id, "127.0.0.1:0".parse().expect("addr"), dir.path());
            config.segment_size_bytes = 8 << 20;
            tune(&mut config);
            nodes.push(RaftNode::start(config).await.expect("node starts"));
            dirs.push(dir);
        }
        Self { nodes, _dirs: dirs }
    }

    fn addrs(&self) -> Vec<String> {
        self.nodes.iter().map(|n| n.addr().to_string()).collect()
    }

    fn members(&self) -> BTreeMap<u64, String> {
        self.nodes
            .iter()
            .map(|n| (n.shared().node_id, n.addr().to_string()))
            .collect()
    }

    fn client(&self) -> KeelClient {
        KeelClient::new(&self.addrs()).expect("client")
    }
}

fn records(texts: &[&str]) -> Vec<Bytes> {
    texts
        .iter()
        .map(|t| Bytes::copy_from_slice(t.as_bytes()))
        .collect()
}

fn data(response: &api::ReadResponse) -> Vec<String> {
    response
        .records
        .iter()
        .map(|r| String::from_utf8_lossy(&r.data).into_owned())
        .collect()
}

async fn wait_applied(client: &mut KeelClient, addr: &str, next_offset: u64) {
    for _ in 0..200 {
        let read = client.read_at(addr, 0, 0, false).await.expect("local read");
        if read.next_offset >= next_offset {
            return;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("{addr} never applied up to offset {next_offset}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_nodes_elect_replicate_and_serve_reads_everywhere() {
    let cluster = Cluster::start(3, |_| {}).await;
    let mut client = cluster.client();
    client.init(&cluster.members()).await.expect("init");
    let first = client.append(records(&["a", "b"])).await.expect("append");
    assert_eq!((first.first_offset, first.count), (0, 2));
    let second = client.append(records(&["c"])).await.expect("append");
    assert_eq!((second.first_offset, second.count), (2, 1));
    for addr in cluster.addrs() {
        let read = client
            .read_at(&addr, 0, 0, true)
            .await
            .expect("linearizable read on every node");
        assert_eq!(data(&read), ["a", "b", "c"], "node {addr}");
    }
    let statuses = client.statuses().await;
    let digests: Vec<(Option<u64>, u64)> = statuses
        .iter()
        .map(|(_, s)| {
            let s = s.as_ref().expect("status");
            (s.applied_index, s.state_digest)
        })
        .collect();
    assert!(
        digests.windows(2).all(|w| w[0] == w[1]),
        "replicas agree: {digests:?}"
    );
    let leaders = statuses
        .iter()
        .filter(|(_, s)| s.as_ref().is_ok_and(|s| s.role == "leader"))
        .count();
    assert_eq!(leaders, 1);
    for node in cluster.nodes {
        node.shutdown().await;
    }
}

/// An embedded node can be stopped and opened again in the same process while a client
/// holds a stream open (the append stream): shutdown ends every connection, which releases
/// the data directory.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_shut_down_under_an_open_stream_reopens_in_the_same_process() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut config = NodeConfig::new(1, "127.0.0.1:0".parse().expect("addr"), dir.path());
    config.segment_size_bytes = 8 << 20;
    let node = RaftNode::start(config.clone()).await.expect("node starts");
    config.listen = node.addr();
    let addrs = [node.addr().to_string()];
    let mut client = KeelClient::new(&addrs).expect("client");
    client
        .init(&BTreeMap::from([(1, addrs[0].clone())]))
        .await
        .expect("init");
    client.append(records(&["before"])).await.expect("append");
    node.shutdown().await;

    let node = tokio::time::timeout(Duration::from_secs(2), async {
        loop {
            match RaftNode::start(config.clone()).await {
                Ok(node) => return node,
                Err(keel_raft::Error::Log(keel_log::Error::Locked { .. })) => {
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
                Err(error) => panic!("the node reopens: {error}"),
            }
        }
    })
    .await
    .expect("the data directory is released within 2 s of shutdown");
    client.append(records(&["after"])).await.expect("append");
    let read = client.read_at(&addrs[0], 0, 0, true).await.expect("read");
    assert_eq!(data(&read), ["before", "after"]);
    node.shutdown().await;
}

/// The address of the node that reports itself leader, polled for up to 10 s: `init`
/// returns once the membership is proposed, before the first election has finished.
async fn leader_addr(client: &mut KeelClient) -> String {
    for _ in 0..500 {
        let leader = client
            .statuses()
            .await
            .into_iter()
            .find(|(_, s)| s.as_ref().is_ok_and(|s| s.role == "leader"))
            .map(|(addr, _)| addr);
        if let Some(addr) = leader {
            return addr;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("no node reported itself leader within 10 s of init");
}

fn is_invalid(error: &ClientError) -> bool {
    matches!(
        error,
        ClientError::Refused {
            kind: WriteErrorKind::Invalid,
            ..
        }
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retried_sequence_is_applied_once() {
    let cluster = Cluster::start(3, |_| {}).await;
    let mut client = cluster.client();
    client.init(&cluster.members()).await.expect("init");
    client.append(records(&["warm-up"])).await.expect("append");
    let leader = leader_addr(&mut client).await;
    let mut raw = client.node(&leader).expect("leader client");
    let session = register(&mut raw).await;
    let request = api::AppendRequest {
        session,
        seq: 1,
        records: records(&["once"]),
    };
    let first = raw
        .append(request.clone())
        .await
        .expect("first")
        .into_inner();
    let retry = raw.append(request).await.expect("retry").into_inner();
    assert_eq!(first, retry, "a retry gets the first answer");
    let read = client.read(0, 0).await.expect("read");
    assert_eq!(data(&read), ["warm-up", "once"]);
    for node in cluster.nodes {
        node.shutdown().await;
    }
}

/// Registers a session on the leader behind `raw`.
async fn register(raw: &mut KeelLogClient<keel_raft::security::credentials::KeelChannel>) -> u64 {
    raw.register_session(api::RegisterSessionRequest {})
        .await
        .expect("register")
        .into_inner()
        .session
}

/// The hole the cluster-assigned sessions close, through the public gRPC API: one append
/// under a session, then more sessions than the (lowered) limit registered and written,
/// then the same `(session, seq)` again. It is refused as an unknown session, not applied,
/// and the record is in the log once. Writes of a session nobody registered are refused
/// the same way.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_late_retry_of_an_expired_session_is_refused_not_applied() {
    const SESSIONS_MAX: u64 = 16;
    let cluster = Cluster::start(1, |config| config.sessions_max = SESSIONS_MAX).await;
    // The cluster's own client writes nothing here: its session would count too.
    let mut client = cluster.client();
    client.init(&cluster.members()).await.expect("init");
    let leader = leader_addr(&mut client).await;
    let mut raw = client.node(&leader).expect("leader client");
    let first = register(&mut raw).await;
    let once = api::AppendRequest {
        session: first,
        seq: 1,
        records: records(&["once"]),
    };
    raw.append(once.clone()).await.expect("first write");
    for n in 0..SESSIONS_MAX + 4 {
        let session = register(&mut raw).await;
        raw.append(api::AppendRequest {
            session,
            seq: 1,
            records: records(&[&format!("other {n}")]),
        })
        .await
        .expect("other write");
    }
    for request in [
        once,
        api::AppendRequest {
            session: 12_345,
            seq: 1,
            records: records(&["never registered"]),
        },
    ] {
        let refused = raw.append(request).await.expect_err("refused");
        assert_eq!(
            wire_error::parse(&refused).0,
            Some(WriteErrorKind::UnknownSession),
            "{refused:?}"
        );
    }
    let read = client.read(0, 0).await.expect("read");
    let data = data(&read);
    assert_eq!(
        data.len(),
        usize::try_from(SESSIONS_MAX).expect("small") + 5
    );
    assert_eq!(data.iter().filter(|d| d.as_str() == "once").count(), 1);
    for node in cluster.nodes {
        node.shutdown().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_appends_are_coalesced_into_fewer_entries_each_applied_once() {
    const WRITERS: u64 = 64;
    const ROUNDS: u64 = 8;
    let cluster = Cluster::start(3, |_| {}).await;
    let mut client = cluster.client();
    client.init(&cluster.members()).await.expect("init");
    client.append(records(&["warm-up"])).await.expect("append");
    let leader = leader_addr(&mut client).await;
    let raw = client.node(&leader).expect("leader client");
    let writers: Vec<_> = (1..=WRITERS)
        .map(|writer| {
            let mut raw = raw.clone();
            tokio::spawn(async move {
                let session = register(&mut raw).await;
                let mut answers = Vec::new();
                for seq in 1..=ROUNDS {
                    let request = api::AppendRequest {
                        session,
                        seq,
                        records: records(&[&format!("{writer}:{seq}")]),
                    };
                    let first = raw.append(request.clone()).await.expect("append");
                    // A retry, perhaps in another batch: the first answer again.
                    let retry = raw.append(request).await.expect("retry");
                    assert_eq!(first.get_ref(), retry.get_ref());
                    answers.push(first.into_inner());
                }
                answers
            })
        })
        .collect();
    let mut offsets = std::collections::BTreeSet::new();
    let mut entries = std::collections::BTreeSet::new();
    for writer in writers {
        for answer in writer.await.expect("writer") {
            assert!(offsets.insert(answer.first_offset), "one offset per write");
            entries.insert(answer.raft_index);
        }
    }
    let total = usize::try_from(WRITERS * ROUNDS).expect("small");
    assert_eq!(offsets.len(), total);
    assert!(
        entries.len() < total,
        "{total} writes in {} entries: none coalesced",
        entries.len()
    );
    let read = client.read(0, 0).await.expect("read");
    assert_eq!(data(&read).len(), total + 1, "each write applied once");
    for node in cluster.nodes {
        node.shutdown().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_and_oversized_writes_are_refused_and_append_nothing() {
    let cluster = Cluster::start(3, |_| {}).await;
    let mut client = cluster.client();
    client.init(&cluster.members()).await.expect("init");
    client.append(records(&["a", "b"])).await.expect("append");
    let leader = leader_addr(&mut client).await;
    let mut raw = client.node(&leader).expect("leader client");
    let session = register(&mut raw).await;
    let zero_seq = api::AppendRequest {
        session,
        seq: 0,
        records: records(&["x"]),
    };
    let refused = raw.append(zero_seq).await.expect_err("seq 0 refused");
    assert_eq!(refused.code(), tonic::Code::InvalidArgument);
    let huge = Bytes::from(vec![0u8; keel_raft::limits::RECORD_MAX_BYTES + 1]);
    let refused = client
        .append(vec![huge])
        .await
        .expect_err("oversized record refused");
    assert!(is_invalid(&refused), "{refused}");
    let refused = client
        .append(Vec::new())
        .await
        .expect_err("empty batch refused");
    assert!(is_invalid(&refused), "{refused}");
    let next = client.read(0, 0).await.expect("read").next_offset;
    assert_eq!(next, 2, "refused writes appended nothing");
    for node in cluster.nodes {
        node.shutdown().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_metrics_endpoint_reports_raft_progress_and_flush_latency() {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .expect("bind")
        .local_addr()
        .expect("addr")
        .port();
    let cluster = Cluster::start(1, |config| {
        config.metrics_listen = Some(([127, 0, 0, 1], port).into());
    })
    .await;
    let mut client = cluster.client();
    client.init(&cluster.members()).await.expect("init");
    client.append(records(&["m"])).await.expect("append");
    let mut stream = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .expect("connect");
    tokio::io::AsyncWriteExt::write_all(&mut stream, b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .expect("request");
    let mut text = String::new();
    tokio::io::AsyncReadExt::read_to_string(&mut stream, &mut text)
        .await
        .expect("response");
    assert!(text.starts_with("HTTP/1.1 200 OK"), "{text}");
    assert!(text.contains("keel_is_leader{node=\"1\"} 1"), "{text}");
    let flushes = text
        .lines()
        .find_map(|l| l.strip_prefix("keel_log_flush_seconds_count "))
        .and_then(|v| v.parse::<u64>().ok())
        .expect("flush count");
    assert!(
        flushes >= 2,
        "the membership entry and the append were flushed: {flushes}"
    );
    assert!(
        text.contains("keel_append_latency_seconds_count 1"),
        "{text}"
    );
    for node in cluster.nodes {
        node.shutdown().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_subscriber_gets_committed_records_then_new_ones() {
    let cluster = Cluster::start(3, |_| {}).await;
    let mut client = cluster.client();
    client.init(&cluster.members()).await.expect("init");
    client.append(records(&["a", "b"])).await.expect("append");
    let follower = cluster.nodes[1].addr().to_string();
    let mut subscriber = client.clone();
    let received = tokio::spawn(async move {
        let mut seen = Vec::new();
        subscriber
            .subscribe(&follower, 1, |record| {
                seen.push((
                    record.offset,
                    String::from_utf8_lossy(&record.data).into_owned(),
                ));
                seen.len() < 3
            })
            .await
            .expect("subscribe");
        seen
    });
    client
        .append(records(&["c", "d"]))
        .await
        .expect("append while subscribed");
    let seen = tokio::time::timeout(Duration::from_secs(10), received)
        .await
        .expect("in time")
        .expect("task");
    assert_eq!(
        seen,
        [
            (1, "b".to_owned()),
            (2, "c".to_owned()),
            (3, "d".to_owned())
        ]
    );
    for node in cluster.nodes {
        node.shutdown().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_learner_catches_up_by_snapshot_and_is_promoted() {
    let cluster = Cluster::start(3, |config| {
        config.snapshot_every_entries = 50;
        config.keep_behind_snapshot = 0;
    })
    .await;
    let mut client = cluster.client();
    client.init(&cluster.members()).await.expect("init");
    let identity = identity_of(&mut client, &cluster.addrs()[0]).await;
    for i in 0..200 {
        client
            .append(records(&[&format!("r{i}")]))
            .await
            .expect("append");
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let mut config = NodeConfig::new(4, "127.0.0.1:0".parse().expect("addr"), dir.path());
    config.segment_size_bytes = 8 << 20;
    let fourth = RaftNode::start(config).await.expect("fourth node");
    let fourth_addr = fourth.addr().to_string();
    client
        .add_learner(4, &fourth_addr, true)
        .await
        .expect("learner added");
    wait_applied(&mut client, &fourth_addr, 200).await;
    let status = client
        .node(&fourth_addr)
        .expect("client")
        .status(api::StatusRequest {})
        .await
        .expect("status")
        .into_inner();
    assert!(
        status.snapshot_index.is_some(),
        "the learner was brought up by a snapshot"
    );
    // The identity's entry was purged behind the snapshot: the learner has it from the
    // snapshot's header.
    assert_eq!(
        status.cluster_identity, identity,
        "the snapshot carried the cluster identity"
    );
    client
        .change_membership(&[1, 2, 4], false)
        .await
        .expect("promote 4, remove 3");
    client
        .append(records(&["after"]))
        .await
        .expect("append after the change");
    wait_applied(&mut client, &fourth_addr, 201).await;
    // Right after the change the new voter may not know the leader yet ("unavailable",
    // safe to retry): a client retries.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let read = loop {
        match client.read_at(&fourth_addr, 195, 0, true).await {
            Ok(read) => break read,
            Err(error) if std::time::Instant::now() < deadline => {
                tracing::debug!(%error, "read on the new voter; retrying");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            Err(error) => panic!("read on the new voter: {error}"),
        }
    };
    assert_eq!(
        data(&read),
        ["r195", "r196", "r197", "r198", "r199", "after"]
    );
    fourth.shutdown().await;
    for node in cluster.nodes {
        node.shutdown().await;
    }
}

/// `BuildSnapshot` builds a snapshot on the node asked, covering what it applied, though
/// the policy (every million entries) would not have built one; the log is purged behind
/// it as configured; the other nodes build none.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn build_snapshot_builds_one_now_on_the_node_asked() {
    let cluster = Cluster::start(3, |config| {
        config.snapshot_every_entries = 1_000_000;
        config.keep_behind_snapshot = 5;
    })
    .await;
    let mut client = cluster.client();
    client.init(&cluster.members()).await.expect("init");
    for i in 0..40 {
        client
            .append(records(&[&format!("r{i}")]))
            .await
            .expect("append");
    }
    let addrs = cluster.addrs();
    let before = status_of(&mut client, &addrs[1]).await;
    assert_eq!(before.snapshot_index, None, "the policy built none");
    let applied = before.applied_index.expect("applied");
    let index = client.build_snapshot(&addrs[1]).await.expect("snapshot");
    assert!(index >= applied, "{index} covers {applied}");
    let after = status_of(&mut client, &addrs[1]).await;
    assert_eq!(after.snapshot_index, Some(index));
    assert!(
        after.purged_index.is_some_and(|p| p + 5 >= index),
        "purged behind the snapshot: {after:?}"
    );
    for other in [&addrs[0], &addrs[2]] {
        assert_eq!(
            status_of(&mut client, other).await.snapshot_index,
            None,
            "only the node asked built one"
        );
    }
    for node in cluster.nodes {
        node.shutdown().await;
    }
}

/// Node `addr`'s cluster identity, once it applied one (waits up to 10 s).
async fn identity_of(client: &mut KeelClient, addr: &str) -> String {
    for _ in 0..200 {
        let identity = status_of(client, addr).await.cluster_identity;
        if !identity.is_empty() {
            return identity;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("{addr} applied no cluster identity in 10 s");
}

/// The first leader commits the cluster's identity; every member reports the same one,
/// and a new leader after the first one stops keeps it (it does not mint another).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cluster_commits_one_identity_that_outlives_its_first_leader() {
    let mut cluster = Cluster::start(3, |config| config.cluster = "research".to_owned()).await;
    let mut client = cluster.client();
    client.init(&cluster.members()).await.expect("init");
    let addrs = cluster.addrs();
    let identity = identity_of(&mut client, &addrs[0]).await;
    let (name, incarnation) = identity.rsplit_once('.').expect("name.incarnation");
    assert_eq!(name, "research");
    assert_eq!(incarnation.len(), 32, "{identity}");
    for addr in &addrs[1..] {
        assert_eq!(identity_of(&mut client, addr).await, identity);
    }
    let leader = leader_addr(&mut client).await;
    let position = addrs
        .iter()
        .position(|a| *a == leader)
        .expect("a member leads");
    cluster.nodes.remove(position).shutdown().await;
    let mut survivors = KeelClient::new(&cluster.addrs()).expect("client");
    survivors
        .append(records(&["after failover"]))
        .await
        .expect("a new leader serves");
    let new_leader = leader_addr(&mut survivors).await;
    assert_ne!(new_leader, leader);
    for addr in cluster.addrs() {
        assert_eq!(
            status_of(&mut survivors, &addr).await.cluster_identity,
            identity,
            "the identity committed first stays in force"
        );
    }
    for node in cluster.nodes {
        node.shutdown().await;
    }
}

/// Node `addr`'s status.
async fn status_of(client: &mut KeelClient, addr: &str) -> api::StatusResponse {
    client
        .node(addr)
        .expect("client")
        .status(api::StatusRequest {})
        .await
        .expect("status")
        .into_inner()
}

/// The `Init` request `KeelClient::init` sends for `members`: their addresses with the
/// incarnations their statuses report.
async fn init_request(
    client: &mut KeelClient,
    members: &BTreeMap<u64, String>,
) -> api::InitRequest {
    let mut request = api::InitRequest::default();
    for (id, addr) in members {
        let status = status_of(client, addr).await;
        request.members.insert(
            *id,
            api::InitMember {
                addr: addr.clone(),
                incarnation: status.incarnation,
            },
        );
    }
    request
}

/// The race `keel init` lost: two members initialized, elect a leader, and it replicates the
/// membership to the third before that member's own `Init` arrives. That `Init` (and any
/// repeated one) now succeeds; an `Init` with another membership is refused by name.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn init_is_idempotent_even_after_the_leader_reached_a_member_first() {
    let cluster = Cluster::start(3, |_| {}).await;
    let mut client = cluster.client();
    let members = cluster.members();
    let request = init_request(&mut client, &members).await;
    let addrs: Vec<String> = members.values().cloned().collect();
    for addr in &addrs[..2] {
        client
            .node(addr)
            .expect("client")
            .init(request.clone())
            .await
            .expect("init");
    }
    let third = &addrs[2];
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    loop {
        if status_of(&mut client, third).await.initialized {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the leader never reached the third member"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    for addr in [third, &addrs[0]] {
        client
            .node(addr)
            .expect("client")
            .init(request.clone())
            .await
            .expect("a member holding the same membership accepts Init again");
    }
    let mut other = request.clone();
    other.members.get_mut(&1).expect("member 1").incarnation ^= 1;
    let refused = client
        .node(third)
        .expect("client")
        .init(other)
        .await
        .expect_err("another membership is refused");
    assert_eq!(refused.code(), tonic::Code::FailedPrecondition);
    assert!(
        refused
            .message()
            .contains("already initialized with another membership"),
        "{refused:?}"
    );
    client.init(&members).await.expect("keel init again");
    client.append(records(&["formed"])).await.expect("append");
    for node in cluster.nodes {
        node.shutdown().await;
    }
}

/// `AddLearner` checks the learner before proposing: a dead address and a wrong incarnation
/// are refused and leave the membership as it was; a blocking add answers only once the
/// learner holds the entry that added it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn add_learner_checks_the_learner_and_a_blocking_add_waits_for_it() {
    let cluster = Cluster::start(4, |_| {}).await;
    let mut client = cluster.client();
    let mut members = cluster.members();
    let (fourth_id, fourth_addr) = members.pop_last().expect("four nodes");
    client.init(&members).await.expect("init three");
    client.append(records(&["a"])).await.expect("append");
    let leader = leader_addr(&mut client).await;
    let mut raw = client.node(&leader).expect("leader client");
    let dead = std::net::TcpListener::bind("127.0.0.1:0")
        .expect("bind")
        .local_addr()
        .expect("addr")
        .to_string();
    let fourth_incarnation = status_of(&mut client, &fourth_addr).await.incarnation;
    for (node_id, addr, incarnation, expected) in [
        (5, dead, 77, WriteErrorKind::Unavailable),
        (
            fourth_id,
            fourth_addr.clone(),
            fourth_incarnation ^ 1,
            WriteErrorKind::Invalid,
        ),
    ] {
        let refused = raw
            .add_learner(api::AddLearnerRequest {
                node_id,
                addr,
                incarnation,
                blocking: true,
            })
            .await
            .expect_err("refused");
        assert_eq!(wire_error::parse(&refused).0, Some(expected), "{refused:?}");
    }
    let members_now = |status: &api::StatusResponse| -> Vec<u64> {
        status.members.iter().map(|m| m.node_id).collect()
    };
    let status = status_of(&mut client, &leader).await;
    assert_eq!(members_now(&status), [1, 2, 3], "nothing was proposed");
    let added = raw
        .add_learner(api::AddLearnerRequest {
            node_id: fourth_id,
            addr: fourth_addr.clone(),
            incarnation: fourth_incarnation,
            blocking: true,
        })
        .await
        .expect("learner added")
        .into_inner();
    let matched = status_of(&mut client, &leader)
        .await
        .members
        .into_iter()
        .find(|m| m.node_id == fourth_id)
        .and_then(|m| m.matched_index)
        .expect("the learner is replicated to");
    assert!(
        matched >= added.log_index,
        "answered at index {} with the learner at {matched}",
        added.log_index
    );
    for node in cluster.nodes {
        node.shutdown().await;
    }
}

/// A member still waiting for `init` refuses a candidate's vote and pre-vote as a plain
/// "not granted" answer, not an error (which every candidate logged as a warning while the
/// cluster formed).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_member_waiting_for_init_refuses_votes_quietly() {
    use keel_raft::pb::raft::{self as wire, raft_client::RaftClient};
    let cluster = Cluster::start(1, |_| {}).await;
    let addr = cluster.addrs()[0].clone();
    let mut raft = RaftClient::connect(format!("http://{addr}"))
        .await
        .expect("connect");
    let request = wire::VoteRequest {
        vote: Some(wire::Vote {
            term: 5,
            node_id: 2,
            committed: false,
        }),
        last_log_id: None,
        leadership_transfer: false,
    };
    for pre in [true, false] {
        let answer = if pre {
            raft.pre_vote(request).await
        } else {
            raft.vote(request).await
        }
        .expect("a plain answer, not an error")
        .into_inner();
        assert!(!answer.vote_granted, "pre-vote {pre}: {answer:?}");
    }
    for node in cluster.nodes {
        node.shutdown().await;
    }
}

/// Waits until node `addr` applied `identity`.
async fn wait_for_identity(client: &mut KeelClient, addr: &str, identity: &str) {
    for _ in 0..200 {
        if status_of(client, addr).await.cluster_identity == identity {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("{addr} did not apply identity {identity} in 10 s");
}

/// The address of a port bound and released: nothing answers there.
fn dead_addr() -> String {
    std::net::TcpListener::bind("127.0.0.1:0")
        .expect("bind")
        .local_addr()
        .expect("addr")
        .to_string()
}

/// A member whose build is not known (it does not answer) holds back the cluster identity,
/// which an older build would not apply: two live nodes of a three-member cluster elect a
/// leader and serve writes, but commit no identity (nor replace one) until the silent member
/// is removed; then a remint renames it. Each node reports the protocols its build applies.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_member_whose_build_is_not_known_holds_back_the_identity() {
    let cluster = Cluster::start(2, |_| {}).await;
    let mut client = cluster.client();
    let mut request = init_request(&mut client, &cluster.members()).await;
    request.members.insert(
        3,
        api::InitMember {
            addr: dead_addr(),
            incarnation: 7,
        },
    );
    for addr in cluster.addrs() {
        client
            .node(&addr)
            .expect("client")
            .init(request.clone())
            .await
            .expect("init");
    }
    client
        .append(records(&["two of three"]))
        .await
        .expect("a majority serves");
    tokio::time::sleep(Duration::from_millis(1500)).await;
    for addr in cluster.addrs() {
        let status = status_of(&mut client, &addr).await;
        assert_eq!(
            status.cluster_identity, "",
            "no identity while node 3 is unknown"
        );
        assert_eq!(
            (status.host_protocol, status.application_protocol),
            (1, 0),
            "a plain log node applies the identity commands, and no application's"
        );
    }
    let leader = leader_addr(&mut client).await;
    let refused = client
        .node(&leader)
        .expect("leader client")
        .remint_identity(api::RemintIdentityRequest {
            name: String::new(),
            incarnation: vec![7; 16].into(),
        })
        .await
        .expect_err("no replacement while node 3 is unknown");
    assert!(
        refused.message().contains("node 3 does not answer"),
        "{refused:?}"
    );
    client
        .change_membership(&[1, 2], false)
        .await
        .expect("node 3 removed");
    let identity = identity_of(&mut client, &cluster.addrs()[0]).await;
    assert!(!identity.is_empty());
    let reminted = client
        .remint_identity(Some("renamed"))
        .await
        .expect("remint");
    assert_eq!(reminted.previous, identity);
    assert!(reminted.identity.starts_with("renamed."), "{reminted:?}");
    wait_for_identity(&mut client, &cluster.addrs()[1], &reminted.identity).await;
    for node in cluster.nodes {
        node.shutdown().await;
    }
}
