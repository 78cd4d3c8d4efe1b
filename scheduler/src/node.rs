//! The embeddable node: a Keel cluster member inside the application's own process.

use std::net::SocketAddr;

use keel_raft::node::{NodeConfig, RaftNode};
use keel_raft::plain_log::PlainLog;

use crate::error::Result;

/// A running Keel node. The workflow engine will run on it; today it serves the plain
/// replicated log.
#[derive(Debug)]
pub struct Node {
    inner: RaftNode,
}

impl Node {
    /// Starts a node with `config` (verifying its data directory first).
    ///
    /// # Errors
    /// Any verification or startup failure; nothing is served then.
    pub async fn start(config: NodeConfig) -> Result<Self> {
        Ok(Self {
            inner: RaftNode::start(config).await?,
        })
    }

    /// The gRPC address clients and peers use.
    pub fn addr(&self) -> SocketAddr {
        self.inner.addr()
    }

    /// The plain replicated log this node serves.
    pub fn plain_log(&self) -> &PlainLog {
        &self.inner.shared().log
    }

    /// Resolves when the node stops by itself (a fatal storage error) or was stopped.
    pub async fn stopped(&self) {
        self.inner.stopped().await;
    }

    /// Stops the node.
    pub async fn shutdown(self) {
        self.inner.shutdown().await;
    }
}
