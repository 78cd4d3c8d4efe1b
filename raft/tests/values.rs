//! Values an application references instead of copying, kept readable by the host through
//! snapshots, the purge behind them, a follower brought up by a snapshot transfer, and a
//! restart: three (then four) in-process nodes with a test application that references
//! every command it applies and forgets some on request.
#![allow(
    clippy::cast_possible_truncation,
    reason = "node ids, counts and test bytes are small numbers"
)]

use std::collections::BTreeMap;
use std::io::{self, Read};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use keel_raft::application::{Application, AppliedAt, EncodedImage, SnapshotImage};
use keel_raft::client::KeelClient;
use keel_raft::multiplex::{AppTag, tagged};
use keel_raft::node::{Extension, NodeConfig, RaftNode};
use keel_raft::security::roles::MethodRoles;
use keel_raft::types::ClientRequest;
use keel_raft::values::ValueRef;
use tempfile::TempDir;

/// References every command it applies, whole, except `forget <index>` commands, which drop
/// the reference to the command at that index.
#[derive(Debug, Clone, Default)]
struct Keeper {
    refs: Arc<Mutex<BTreeMap<u64, ValueRef>>>,
}

impl Keeper {
    fn refs(&self) -> BTreeMap<u64, ValueRef> {
        self.refs.lock().expect("lock").clone()
    }
}

impl Application for Keeper {
    fn apply(&mut self, at: AppliedAt, command: &Bytes) -> Bytes {
        let mut refs = self.refs.lock().expect("lock");
        if let Some(index) = command.strip_prefix(b"forget ") {
            let index = std::str::from_utf8(index).ok().and_then(|i| i.parse().ok());
            if let Some(index) = index {
                refs.remove(&index);
            }
        } else {
            let len = u32::try_from(command.len()).expect("short");
            refs.insert(
                at.index,
                ValueRef {
                    index: at.index,
                    offset: 0,
                    len,
                },
            );
        }
        Bytes::new()
    }

    fn snapshot_image(&self) -> Box<dyn SnapshotImage> {
        let refs = self.refs.lock().expect("lock");
        let mut bytes = Vec::new();
        for at in refs.values() {
            bytes.extend_from_slice(&at.index.to_le_bytes());
            bytes.extend_from_slice(&at.len.to_le_bytes());
        }
        Box::new(EncodedImage {
            bytes,
            values: refs.values().copied().collect(),
        })
    }

    fn restore(&mut self, input: &mut dyn Read) -> io::Result<()> {
        let mut bytes = Vec::new();
        input.read_to_end(&mut bytes)?;
        let mut refs = self.refs.lock().expect("lock");
        refs.clear();
        for chunk in bytes.chunks_exact(12) {
            let index = u64::from_le_bytes(chunk[..8].try_into().expect("8"));
            let len = u32::from_le_bytes(chunk[8..].try_into().expect("4"));
            refs.insert(
                index,
                ValueRef {
                    index,
                    offset: 0,
                    len,
                },
            );
        }
        Ok(())
    }

    fn check_snapshot(&self, _input: &mut dyn Read, _applied_index: u64) -> io::Result<()> {
        Ok(())
    }

    fn digest(&self) -> u64 {
        self.refs.lock().expect("lock").keys().sum()
    }
}

struct Member {
    node: RaftNode,
    keeper: Keeper,
    config: NodeConfig,
}

async fn start(id: u64, dir: &TempDir, keeper: Keeper) -> Member {
    let mut config = NodeConfig::new(id, "127.0.0.1:0".parse().expect("addr"), dir.path());
    config.segment_size_bytes = 8 << 20;
    config.snapshot_every_entries = 40;
    config.keep_behind_snapshot = 0;
    let node = RaftNode::start_with(
        config.clone(),
        Some(Extension {
            app: Box::new(keeper.clone()),
            services: Box::new(|_, routes| routes),
            method_roles: MethodRoles::default(),
        }),
    )
    .await
    .expect("node starts");
    Member {
        node,
        keeper,
        config,
    }
}

/// The value command `n` carries: distinct, a few hundred bytes.
fn body(n: u64) -> Vec<u8> {
    let len = 200 + (n % 7) as usize * 50;
    (0..len).map(|i| (n as usize * 13 + i) as u8 | 1).collect()
}

/// Writes `command` on `leader`; a leader that has just been elected may refuse writes for
/// a moment (its lease not yet established), so a refusal is retried for a while.
async fn write(leader: &RaftNode, command: &[u8]) -> u64 {
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let written = leader
            .shared()
            .raft
            .client_write(ClientRequest {
                session: 0,
                seq: 0,
                command: tagged(AppTag::Extension, command),
            })
            .await;
        match written {
            Ok(response) => return response.log_id.index,
            Err(error) if std::time::Instant::now() < deadline => {
                tracing::debug!(%error, "write refused; retrying");
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            Err(error) => panic!("write refused: {error}"),
        }
    }
}

async fn wait_applied(client: &mut KeelClient, addr: &str, index: u64) {
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    loop {
        let applied = client
            .node(addr)
            .expect("client")
            .status(keel_raft::pb::client::StatusRequest {})
            .await
            .ok()
            .and_then(|s| s.into_inner().applied_index);
        if applied >= Some(index) {
            return;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "{addr} applied {applied:?} of {index}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Every value `member`'s state references reads back as the command that carried it.
fn assert_values_readable(member: &Member, expected: &BTreeMap<u64, Vec<u8>>) -> usize {
    let refs = member.keeper.refs();
    let values = member.node.shared().host.values();
    for (index, at) in &refs {
        let read = values.read(at).unwrap_or_else(|error| {
            panic!(
                "node {}: value of index {index}: {error}",
                member.config.node_id
            )
        });
        assert_eq!(read.as_ref(), expected[index].as_slice(), "index {index}");
    }
    refs.len()
}

/// Three members, initialized; returns them, a client, and the leader's position.
async fn three(dirs: &[TempDir]) -> (Vec<Member>, KeelClient, usize) {
    let mut members = Vec::new();
    for id in 1..=3u64 {
        members.push(start(id, &dirs[id as usize - 1], Keeper::default()).await);
    }
    let addrs: Vec<String> = members.iter().map(|m| m.node.addr().to_string()).collect();
    let mut client = KeelClient::new(&addrs).expect("client");
    let members_map: BTreeMap<u64, String> = (1..=3).zip(addrs.iter().cloned()).collect();
    client.init(&members_map).await.expect("init");
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    loop {
        let leader = client
            .statuses()
            .await
            .into_iter()
            .find_map(|(_, s)| s.ok().filter(|s| s.role == "leader").map(|s| s.node_id));
        if let Some(leader) = leader {
            return (members, client, leader as usize - 1);
        }
        assert!(std::time::Instant::now() < deadline, "no leader elected");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Writes 150 values, then forgets every third of the first 90 (so value files hold dead
/// values to collect); returns the values by index, how many stay live, and the last index.
async fn write_values(leader: &RaftNode) -> (BTreeMap<u64, Vec<u8>>, usize, u64) {
    let mut expected = BTreeMap::new();
    let mut last = 0;
    for n in 0..150 {
        let bytes = body(n);
        let index = write(leader, &bytes).await;
        expected.insert(index, bytes);
        last = index;
    }
    let forgotten: Vec<u64> = expected.keys().copied().take(90).step_by(3).collect();
    for index in &forgotten {
        last = write(leader, format!("forget {index}").as_bytes()).await;
    }
    (expected, 150 - forgotten.len(), last)
}

/// Waits (10 s at most) until the node at `addr` says it verified its value files.
async fn wait_values_verified(client: &mut KeelClient, addr: &str) {
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let status = client
            .node(addr)
            .expect("client")
            .status(keel_raft::pb::client::StatusRequest {})
            .await
            .expect("status")
            .into_inner();
        if status.values_verified {
            return;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "{addr} never reported its value files verified"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Stops `member` and starts it again from its data directory.
async fn restart(member: Member) -> Member {
    member.node.shutdown().await;
    start_again(member.config)
        .await
        .unwrap_or_else(|error| panic!("the node restarts: {error}"))
}

/// Starts a node from `config`'s data directory (retried while a stopped node's last tasks
/// still hold its log, as long as 5 s).
async fn start_again(config: NodeConfig) -> keel_raft::Result<Member> {
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    loop {
        let keeper = Keeper::default();
        let started = RaftNode::start_with(
            config.clone(),
            Some(Extension {
                app: Box::new(keeper.clone()),
                services: Box::new(|_, routes| routes),
                method_roles: MethodRoles::default(),
            }),
        )
        .await;
        match started {
            Ok(node) => {
                return Ok(Member {
                    node,
                    keeper,
                    config,
                });
            }
            Err(keel_raft::Error::Log(keel_log::Error::Locked { .. }))
                if std::time::Instant::now() < deadline =>
            {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            Err(error) => return Err(error),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn referenced_values_survive_purges_transfers_and_restarts() {
    let dirs: Vec<TempDir> = (0..4)
        .map(|_| tempfile::tempdir().expect("tempdir"))
        .collect();
    let (mut members, mut client, leader) = three(&dirs).await;
    let (expected, live, last) = write_values(&members[leader].node).await;
    for member in &members {
        let addr = member.node.addr().to_string();
        wait_applied(&mut client, &addr, last).await;
        client.build_snapshot(&addr).await.expect("snapshot");
        let status = client
            .node(&addr)
            .expect("client")
            .status(keel_raft::pb::client::StatusRequest {})
            .await
            .expect("status")
            .into_inner();
        assert!(
            status.purged_index >= Some(last - 1),
            "node {} purged the log behind its snapshot: {status:?}",
            member.config.node_id
        );
        assert_eq!(assert_values_readable(member, &expected), live);
    }
    // A fourth node is brought up by a snapshot (the log behind it is purged): the values
    // travel with it.
    let fourth = start(4, &dirs[3], Keeper::default()).await;
    let fourth_addr = fourth.node.addr().to_string();
    client
        .add_learner(4, &fourth_addr, true)
        .await
        .expect("learner added");
    wait_applied(&mut client, &fourth_addr, last).await;
    assert_eq!(
        assert_values_readable(&fourth, &expected),
        live,
        "the learner holds every live value"
    );
    let metrics = &fourth.node.shared().metrics;
    assert_eq!(
        metrics
            .snapshots_received
            .load(std::sync::atomic::Ordering::Relaxed),
        1,
        "the learner was brought up by one snapshot"
    );
    let live_bytes: usize = expected
        .iter()
        .filter(|(index, _)| fourth.keeper.refs().contains_key(index))
        .map(|(_, bytes)| bytes.len())
        .sum();
    assert!(
        metrics
            .snapshot_received_bytes
            .load(std::sync::atomic::Ordering::Relaxed)
            > live_bytes as u64,
        "the snapshot carried the live values ({live_bytes} bytes) and more"
    );
    // A restarted node reads them from its value files, and its status says when it has
    // verified every one of them.
    let restarted = restart(members.pop().expect("third")).await;
    let restarted_addr = restarted.node.addr().to_string();
    wait_applied(&mut client, &restarted_addr, last).await;
    assert_eq!(assert_values_readable(&restarted, &expected), live);
    wait_values_verified(&mut client, &restarted_addr).await;
    for member in members.into_iter().chain([fourth, restarted]) {
        member.node.shutdown().await;
    }
}

/// A value damaged while its node was stopped: the node starts (opening reads the value
/// files' tables, not their values), its verification after start finds the value, marks
/// the data directory as needing repair and stops the node; started again, the node is
/// refused, the refusal naming the damaged value.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_value_damaged_while_stopped_stops_its_node_for_repair() {
    let dirs: Vec<TempDir> = (0..3)
        .map(|_| tempfile::tempdir().expect("tempdir"))
        .collect();
    let (mut members, mut client, leader) = three(&dirs).await;
    let (_, _, last) = write_values(&members[leader].node).await;
    let victim = members.remove((leader + 1) % 3);
    let addr = victim.node.addr().to_string();
    wait_applied(&mut client, &addr, last).await;
    client.build_snapshot(&addr).await.expect("snapshot");
    let config = victim.config.clone();
    victim.node.shutdown().await;
    let values_dir = config.data_dir.join("values");
    let file = std::fs::read_dir(&values_dir)
        .expect("value files")
        .map(|entry| entry.expect("entry").path())
        .find(|path| path.extension().is_some_and(|e| e == "values"))
        .expect("the snapshot moved values into a value file");
    let mut bytes = std::fs::read(&file).expect("read");
    // The first value starts after the 32-byte header.
    bytes[40] ^= 0x08;
    std::fs::write(&file, &bytes).expect("write");
    let damaged = start_again(config.clone())
        .await
        .expect("a damaged value does not keep the node from starting");
    tokio::time::timeout(Duration::from_secs(20), damaged.node.stopped())
        .await
        .expect("the node stops itself once its verification finds the value");
    damaged.node.shutdown().await;
    let Err(refused) = start_again(config).await else {
        panic!("a node marked for repair starts");
    };
    assert!(
        matches!(&refused, keel_raft::Error::NeedsRepair { reason, .. }
            if reason.contains("does not match its checksum")),
        "{refused}"
    );
    for member in members {
        member.node.shutdown().await;
    }
}
