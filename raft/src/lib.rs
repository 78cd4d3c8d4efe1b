//! keel-raft: Keel's replication — openraft on keel-log, gRPC between nodes and for clients.
//!
//! What it guarantees:
//! - A client write is acknowledged only after its entry is durable (`fdatasync`ed by
//!   keel-log) on a majority and applied; recovery never loses an acknowledged entry.
//! - Writes are exactly-once per `(session, seq)`, in sessions the cluster registers through
//!   the log and expires by one rule on every replica ([`session`]): the state machine host
//!   answers a retried sequence with its first answer and refuses a write of an unknown or
//!   expired session, never applying it. Errors say whether a write was certainly not
//!   proposed (safe to retry anywhere) or its outcome is unknown (retry with the same
//!   sequence); the server never re-proposes a write by itself.
//! - A storage error stops the node and marks its data directory as needing repair; a node
//!   whose data directory is new or wiped never votes until the membership admits its
//!   incarnation (`keel repair`), so it cannot break an election with forgotten votes.
//!
//! ```text
//!  client ──Append──► ClientService ──client_write──► openraft core (leader)
//!                                                       │ append ──► LogStore ──► keel-log
//!                                                       │            (flush callback after fdatasync)
//!                                                       │ replicate ─► Network ══gRPC stream══► RaftService
//!                                                       │                                    (followers: LogStore)
//!                                                       ▼ committed on a majority
//!                                       StateMachineHost::apply ──► Application (PlainLog)
//!                                       (sessions: exactly-once)     └─► snapshot files
//! ```
//!
//! A single-node cluster, written to and read back:
//!
//! ```
//! # #[tokio::main(flavor = "multi_thread", worker_threads = 2)]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! use keel_raft::client::KeelClient;
//! use keel_raft::node::{NodeConfig, RaftNode};
//!
//! let dir = tempfile::tempdir()?;
//! let mut config = NodeConfig::new(1, "127.0.0.1:0".parse()?, dir.path());
//! config.segment_size_bytes = 8 << 20;
//! let node = RaftNode::start(config).await?;
//! let addr = node.addr().to_string();
//! let mut client = KeelClient::new(&[addr.clone()])?;
//! client.init(&[(1, addr)].into_iter().collect()).await?;
//! let appended = client.append(vec!["hello".into()]).await?;
//! assert_eq!(appended.first_offset, 0);
//! let read = client.read(0, 10).await?;
//! assert_eq!(read.records[0].data, "hello");
//! node.shutdown().await;
//! # Ok(())
//! # }
//! ```
#![doc(test(attr(deny(warnings))))]
#![forbid(unsafe_code)]

pub mod application;
pub mod client;
pub mod clock;
pub mod cluster_identity;
pub mod coalesce;
pub mod error;
pub mod identity;
pub mod limits;
pub mod log_store;
pub mod metrics;
pub mod multiplex;
pub mod network;
pub mod node;
pub mod pb;
pub mod plain_log;
pub mod protocols;
pub mod purged_log;
mod record;
pub mod repair;
pub mod retry;
#[cfg(feature = "sabotage")]
pub mod sabotage;
pub mod security;
pub mod session;
pub mod shared;
pub mod snapshot;
pub mod state_machine;
pub mod types;
pub mod values;
pub mod wire_error;

pub use error::{DecodeError, Error, Result};
