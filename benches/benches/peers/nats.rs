//! A three-server NATS `JetStream` cluster on loopback (Debian's `nats-server`), one stream
//! of three file-stored replicas, and a publisher that waits for each message's ack.
//!
//! The stream keeps `JetStream`'s default sync: a message is acknowledged once a majority
//! of replicas hold it, written but not fsynced (the servers fsync every two minutes). NATS
//! 2.9 has no per-message fsync (`sync_interval: always` arrived in 2.10), so this cluster is
//! the baseline for Keel's relaxed mode only.

use std::time::{Duration, Instant};

use async_nats::jetstream::{self, stream};
use bytes::Bytes;

use super::Tuning;
use super::common::{WAIT_DEADLINE, Writer, free_ports};
use super::failover::first_ack;
use super::process::PeerProcess;

const STREAM: &str = "KEEL_BENCH";
const SUBJECT: &str = "bench.append";

struct Server {
    name: String,
    url: String,
    process: PeerProcess,
}

pub(crate) struct NatsCluster {
    servers: Vec<Server>,
    _dir: tempfile::TempDir,
}

impl NatsCluster {
    /// Starts three servers routed to each other; call [`NatsCluster::create_stream`] next.
    /// `tuning`: the Go runtime's thread budget (NATS's Raft timers are not configurable).
    pub(crate) fn start(tuning: Tuning) -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        // Route and client ports all at once, so no two servers (or roles) share one.
        let ports = free_ports::<6>();
        let route_ports = &ports[..3];
        let routes = route_ports
            .iter()
            .map(|port| format!("\"nats-route://127.0.0.1:{port}\""))
            .collect::<Vec<_>>()
            .join(", ");
        let servers = (1..=3)
            .zip(route_ports.iter().zip(&ports[3..]))
            .map(|(id, (route_port, &port))| {
                let name = format!("n{id}");
                let store = dir.path().join(&name);
                let config = dir.path().join(format!("{name}.conf"));
                let text = format!(
                    "server_name: {name}\nlisten: \"127.0.0.1:{port}\"\n\
                     jetstream {{ store_dir: \"{}\" }}\n\
                     cluster {{ name: keel-bench, listen: \"127.0.0.1:{route_port}\", routes: [{routes}] }}\n",
                    store.display()
                );
                std::fs::write(&config, text).expect("nats config");
                let mut process = PeerProcess::new(
                    "nats-server",
                    vec!["-c".into(), config.display().to_string()],
                )
                .with_gomaxprocs(tuning.gomaxprocs());
                process.spawn();
                Server {
                    name,
                    url: format!("nats://127.0.0.1:{port}"),
                    process,
                }
            })
            .collect();
        Self { servers, _dir: dir }
    }

    /// Every server's client URL.
    pub(crate) fn urls(&self) -> Vec<String> {
        self.servers.iter().map(|s| s.url.clone()).collect()
    }

    /// Creates the benchmark stream (three file-stored replicas) once `JetStream` has a meta
    /// leader, and waits until every replica is current; returns the stream leader's index.
    pub(crate) async fn create_stream(&self) -> usize {
        let context = jetstream::new(connect(&self.urls()).await);
        let deadline = Instant::now() + WAIT_DEADLINE;
        loop {
            let created = context
                .get_or_create_stream(stream::Config {
                    name: STREAM.into(),
                    subjects: vec![SUBJECT.into()],
                    num_replicas: 3,
                    storage: stream::StorageType::File,
                    ..stream::Config::default()
                })
                .await;
            if created.is_ok() {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "NATS JetStream never created the stream: {created:?}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        self.stream_leader(&context).await
    }

    /// Waits until the stream has a leader and two current replicas; returns the leader's
    /// index.
    async fn stream_leader(&self, context: &jetstream::Context) -> usize {
        let deadline = Instant::now() + WAIT_DEADLINE;
        loop {
            if let Ok(mut stream) = context.get_stream(STREAM).await
                && let Ok(info) = stream.info().await
                && let Some(cluster) = &info.cluster
                && let Some(leader) = &cluster.leader
                && cluster.replicas.len() == 2
                && cluster.replicas.iter().all(|r| r.current)
            {
                return self
                    .servers
                    .iter()
                    .position(|s| &s.name == leader)
                    .expect("the stream leader is one of the servers");
            }
            assert!(
                Instant::now() < deadline,
                "the NATS stream never had a leader and current replicas"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Kills the stream leader's server and times the first message acknowledged through a
    /// surviving server; then restarts the killed server and waits, untimed, until every
    /// replica is current again.
    pub(crate) async fn failover_once(&mut self) -> Duration {
        let context = jetstream::new(connect(&self.urls()).await);
        let leader = self.stream_leader(&context).await;
        let mut survivors = Vec::new();
        for (index, server) in self.servers.iter().enumerate() {
            if index != leader {
                survivors.push(jetstream::new(
                    connect(std::slice::from_ref(&server.url)).await,
                ));
            }
        }
        let killed = Instant::now();
        self.servers[leader].process.kill();
        let elapsed = first_ack(killed, |n| {
            let context = survivors[n % survivors.len()].clone();
            async move {
                context
                    .publish(SUBJECT, Bytes::from_static(b"after failover"))
                    .await?
                    .await
                    .map(drop)
            }
        })
        .await;
        self.servers[leader].process.spawn();
        self.stream_leader(&context).await;
        elapsed
    }

    /// `writers` publishers sharing one connection to the stream leader (the fastest path:
    /// no hop from another server), each publishing `payload`-byte messages.
    pub(crate) async fn writers(
        &self,
        leader: usize,
        writers: usize,
        payload: usize,
    ) -> Vec<NatsWriter> {
        let context =
            jetstream::new(connect(std::slice::from_ref(&self.servers[leader].url)).await);
        let payload = Bytes::from(vec![b'n'; payload]);
        (0..writers)
            .map(|_| NatsWriter {
                context: context.clone(),
                payload: payload.clone(),
            })
            .collect()
    }
}

/// A client of the servers at `urls`, once one of them accepts connections.
async fn connect(urls: &[String]) -> async_nats::Client {
    let addrs: Vec<async_nats::ServerAddr> = urls
        .iter()
        .map(|u| u.parse().expect("a NATS server address"))
        .collect();
    let deadline = Instant::now() + WAIT_DEADLINE;
    loop {
        match async_nats::connect(addrs.clone()).await {
            Ok(client) => return client,
            Err(error) => assert!(
                Instant::now() < deadline,
                "cannot connect to NATS at {urls:?}: {error}"
            ),
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[derive(Clone)]
/// Publishes one message to the stream per write and waits for `JetStream`'s ack.
pub(crate) struct NatsWriter {
    context: jetstream::Context,
    payload: Bytes,
}

impl Writer for NatsWriter {
    async fn write(&mut self) {
        self.context
            .publish(SUBJECT, self.payload.clone())
            .await
            .expect("publish")
            .await
            .expect("JetStream ack");
    }
}
