//! A three-member etcd 3.4 cluster on loopback (Debian's `etcd`), and a writer that puts one
//! key per write over etcd's gRPC API.
//!
//! etcd acknowledges a put once a majority has fsynced the entry to its write-ahead log:
//! the baseline for Keel's durable mode.

use std::time::{Duration, Instant};

use bytes::Bytes;
use tonic::transport::Channel;

use super::common::{WAIT_DEADLINE, Writer, free_ports};
use super::failover::first_ack;
use super::process::PeerProcess;
use super::{KEEL_ELECTION_MIN_MS, KEEL_HEARTBEAT_MS, Tuning};

/// The generated client of `proto/etcd.proto`.
mod pb {
    #![allow(
        clippy::pedantic,
        clippy::allow_attributes_without_reason,
        missing_docs,
        unreachable_pub,
        reason = "generated code"
    )]
    tonic::include_proto!("etcdserverpb");
}

use pb::kv_client::KvClient;
use pb::maintenance_client::MaintenanceClient;

struct Member {
    url: String,
    process: PeerProcess,
}

pub(crate) struct EtcdCluster {
    members: Vec<Member>,
    _dir: tempfile::TempDir,
}

impl EtcdCluster {
    /// Starts three members: with etcd's default timing (100 ms heartbeat, 1 s election)
    /// and Go's default thread budget, or with Keel's timing and thread budget (`tuning`).
    pub(crate) fn start(tuning: Tuning) -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        // Peer and client ports all at once, so no two members (or roles) share one.
        let ports = free_ports::<6>();
        let peer_urls: Vec<String> = ports[..3]
            .iter()
            .map(|port| format!("http://127.0.0.1:{port}"))
            .collect();
        let initial_cluster = peer_urls
            .iter()
            .enumerate()
            .map(|(i, url)| format!("e{}={url}", i + 1))
            .collect::<Vec<_>>()
            .join(",");
        let members = peer_urls
            .iter()
            .enumerate()
            .map(|(i, peer_url)| {
                let name = format!("e{}", i + 1);
                let url = format!("http://127.0.0.1:{}", ports[3 + i]);
                let mut args = [
                    "--name",
                    &name,
                    "--data-dir",
                    &dir.path().join(&name).display().to_string(),
                    "--listen-client-urls",
                    &url,
                    "--advertise-client-urls",
                    &url,
                    "--listen-peer-urls",
                    peer_url,
                    "--initial-advertise-peer-urls",
                    peer_url,
                    "--initial-cluster",
                    &initial_cluster,
                    "--initial-cluster-state",
                    "new",
                    "--initial-cluster-token",
                    "keel-bench",
                    "--logger",
                    "zap",
                    "--log-level",
                    "error",
                ]
                .map(String::from)
                .to_vec();
                if tuning == Tuning::Matched {
                    args.extend(
                        [
                            "--heartbeat-interval",
                            &KEEL_HEARTBEAT_MS.to_string(),
                            "--election-timeout",
                            &KEEL_ELECTION_MIN_MS.to_string(),
                        ]
                        .map(String::from),
                    );
                }
                let mut process =
                    PeerProcess::new("etcd", args).with_gomaxprocs(tuning.gomaxprocs());
                process.spawn();
                Member { url, process }
            })
            .collect();
        Self { members, _dir: dir }
    }

    /// Waits until a member reports itself leader; returns its index.
    pub(crate) async fn leader(&self) -> usize {
        let deadline = Instant::now() + WAIT_DEADLINE;
        loop {
            for (index, member) in self.members.iter().enumerate() {
                if let Some(status) = status(&member.url).await
                    && status.header.is_some_and(|h| h.member_id == status.leader)
                {
                    return index;
                }
            }
            assert!(Instant::now() < deadline, "etcd never elected a leader");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Kills the leader and times the first put acknowledged through a surviving member
    /// (followers forward puts to the leader); then restarts the killed member and waits,
    /// untimed, until it has the entries committed by then.
    pub(crate) async fn failover_once(&mut self) -> Duration {
        let leader = self.leader().await;
        let mut survivors = Vec::new();
        for (index, member) in self.members.iter().enumerate() {
            if index != leader {
                survivors.push(KvClient::new(
                    connect_within(&member.url, WAIT_DEADLINE).await,
                ));
            }
        }
        let killed = Instant::now();
        self.members[leader].process.kill();
        let elapsed = first_ack(killed, |n| {
            let mut kv = survivors[n % survivors.len()].clone();
            async move {
                kv.put(pb::PutRequest {
                    key: Bytes::from_static(b"keel-bench/failover"),
                    value: Bytes::from_static(b"after failover"),
                })
                .await
                .map(drop)
            }
        })
        .await;
        let new_leader = self.leader().await;
        let committed = status(&self.members[new_leader].url)
            .await
            .expect("the new leader answers")
            .raft_index;
        self.members[leader].process.spawn();
        let deadline = Instant::now() + WAIT_DEADLINE;
        while !status(&self.members[leader].url)
            .await
            .is_some_and(|s| s.leader != 0 && s.raft_index >= committed)
        {
            assert!(
                Instant::now() < deadline,
                "the restarted etcd member never caught up"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        elapsed
    }

    /// `writers` clients sharing one connection to the leader, each putting its own key
    /// with a `payload`-byte value.
    pub(crate) async fn writers(
        &self,
        leader: usize,
        writers: usize,
        payload: usize,
    ) -> Vec<EtcdWriter> {
        let kv = KvClient::new(
            channel(&self.members[leader].url)
                .await
                .expect("connect to the etcd leader"),
        );
        let value = Bytes::from(vec![b'e'; payload]);
        (0..writers)
            .map(|writer| EtcdWriter {
                kv: kv.clone(),
                key: Bytes::from(format!("keel-bench/{writer}")),
                value: value.clone(),
            })
            .collect()
    }
}

/// The member's status, or `None` if it does not answer.
async fn status(url: &str) -> Option<pb::StatusResponse> {
    let channel = channel(url).await.ok()?;
    let response = MaintenanceClient::new(channel)
        .status(pb::StatusRequest {})
        .await
        .ok()?;
    Some(response.into_inner())
}

/// A connection to the member at `url`, retried until `wait` has passed (a member that
/// is still starting refuses connections for a moment).
async fn connect_within(url: &str, wait: Duration) -> Channel {
    let deadline = Instant::now() + wait;
    loop {
        match channel(url).await {
            Ok(channel) => return channel,
            Err(error) => assert!(
                Instant::now() < deadline,
                "connect to the etcd member at {url}: {error}"
            ),
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn channel(url: &str) -> Result<Channel, tonic::transport::Error> {
    Channel::from_shared(url.to_owned())
        .expect("an etcd client URL")
        .connect_timeout(Duration::from_secs(1))
        .connect()
        .await
}

#[derive(Clone)]
/// Puts its key once per write, acknowledged after a majority fsynced it.
pub(crate) struct EtcdWriter {
    kv: KvClient<Channel>,
    key: Bytes,
    value: Bytes,
}

impl Writer for EtcdWriter {
    async fn write(&mut self) {
        self.kv
            .put(pb::PutRequest {
                key: self.key.clone(),
                value: self.value.clone(),
            })
            .await
            .expect("etcd put");
    }
}
