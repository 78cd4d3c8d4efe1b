//! The Prometheus endpoint: `GET /metrics` in the text format, over plain HTTP/1.1.

use openraft::ServerState;
use openraft::async_runtime::WatchReceiver;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::metrics::RaftGauges;
use crate::shared::NodeShared;

/// Largest metrics HTTP request read.
const METRICS_REQUEST_MAX_BYTES: usize = 8 * 1024;

/// Serves `GET /metrics` (Prometheus text format) on `listener` until `stop` turns true.
pub async fn serve_metrics(
    shared: NodeShared,
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
        let shared = shared.clone();
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
                let body = shared.metrics.render(shared.node_id, gauges(&shared));
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

fn gauges(shared: &NodeShared) -> RaftGauges {
    let metrics = shared.raft.metrics().borrow_watched().clone();
    RaftGauges {
        term: metrics.current_term,
        committed_index: metrics.local_committed.map_or(0, |c| c.index),
        applied_index: metrics.last_applied.map_or(0, |a| a.index),
        last_log_index: metrics.last_log_index.unwrap_or(0),
        is_leader: u64::from(metrics.state == ServerState::Leader),
    }
}
