//! The Prometheus endpoint: `GET /metrics` in the text format, over plain HTTP/1.1.

use openraft::ServerState;
use openraft::async_runtime::WatchReceiver;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio::sync::watch;

use std::sync::Arc;

use crate::metrics::{NodeMetrics, RaftGauges};
use crate::shared::NodeShared;
use crate::types::{NodeId, Raft};

/// Largest metrics HTTP request read.
const METRICS_REQUEST_MAX_BYTES: usize = 8 * 1024;

/// What the endpoint reports from: all it sees of the node.
#[derive(Debug, Clone)]
pub struct MetricsSource {
    node_id: NodeId,
    raft: Raft,
    metrics: Arc<NodeMetrics>,
}

impl From<&NodeShared> for MetricsSource {
    fn from(shared: &NodeShared) -> Self {
        Self {
            node_id: shared.node_id,
            raft: shared.raft.clone(),
            metrics: Arc::clone(&shared.metrics),
        }
    }
}

impl MetricsSource {
    /// The Prometheus text of the node's metrics and Raft gauges now.
    fn render(&self) -> String {
        let metrics = self.raft.metrics().borrow_watched().clone();
        let gauges = RaftGauges {
            term: metrics.current_term,
            committed_index: metrics.local_committed.map_or(0, |c| c.index),
            applied_index: metrics.last_applied.map_or(0, |a| a.index),
            last_log_index: metrics.last_log_index.unwrap_or(0),
            is_leader: u64::from(metrics.state == ServerState::Leader),
        };
        self.metrics.render(self.node_id, gauges)
    }
}

/// Serves `GET /metrics` (Prometheus text format) on `listener` until `stop` turns true.
pub async fn serve_metrics(
    source: MetricsSource,
    listener: TcpListener,
    mut stop: watch::Receiver<bool>,
) {
    loop {
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            _ = stop.changed() => return,
        };
        let Ok((mut socket, _)) = accepted else {
            continue;
        };
        let source = source.clone();
        tokio::spawn(async move {
            let mut request = Vec::new();
            let mut buf = [0u8; 1024];
            while !request.windows(4).any(|w| w == b"\r\n\r\n")
                && request.len() < METRICS_REQUEST_MAX_BYTES
            {
                match socket.read(&mut buf).await {
                    Ok(0) | Err(_) => break,
                    Ok(n) => request.extend_from_slice(&buf[..n]),
                }
            }
            let response = if request.starts_with(b"GET /metrics ") {
                let body = source.render();
                format!(
                    "HTTP/1.1 200 OK\r\nContent-Type: text/plain; version=0.0.4\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                    body.len()
                )
            } else {
                "HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
                    .to_owned()
            };
            let _ = socket.write_all(response.as_bytes()).await;
        });
    }
}
