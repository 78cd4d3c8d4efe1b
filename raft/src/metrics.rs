//! Prometheus text metrics of a node: counters and fixed-bucket latency histograms on
//! atomics, rendered on request.

use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// Upper bounds of the latency buckets, in seconds.
const BUCKETS_SECONDS: [f64; 14] = [
    0.000_1, 0.000_25, 0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 5.0,
];

/// A latency histogram.
#[derive(Debug, Default)]
pub struct Histogram {
    buckets: [AtomicU64; BUCKETS_SECONDS.len()],
    count: AtomicU64,
    sum_micros: AtomicU64,
}

impl Histogram {
    /// Records one observation.
    pub fn observe(&self, elapsed: Duration) {
        let seconds = elapsed.as_secs_f64();
        if let Some(bucket) = BUCKETS_SECONDS.iter().position(|bound| seconds <= *bound) {
            self.buckets[bucket].fetch_add(1, Ordering::Relaxed);
        }
        self.count.fetch_add(1, Ordering::Relaxed);
        let micros = u64::try_from(elapsed.as_micros()).unwrap_or(u64::MAX);
        self.sum_micros.fetch_add(micros, Ordering::Relaxed);
    }

    fn render(&self, out: &mut String, name: &str, help: &str) {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} histogram");
        let mut cumulative = 0;
        for (bound, bucket) in BUCKETS_SECONDS.iter().zip(&self.buckets) {
            cumulative += bucket.load(Ordering::Relaxed);
            let _ = writeln!(out, "{name}_bucket{{le=\"{bound}\"}} {cumulative}");
        }
        let count = self.count.load(Ordering::Relaxed);
        let _ = writeln!(out, "{name}_bucket{{le=\"+Inf\"}} {count}");
        #[expect(
            clippy::cast_precision_loss,
            reason = "a metric's sum need not be exact"
        )]
        let sum = self.sum_micros.load(Ordering::Relaxed) as f64 / 1e6;
        let _ = writeln!(out, "{name}_sum {sum}\n{name}_count {count}");
    }
}

/// Appends an extension's metrics (Prometheus text) for node `node_id`.
pub type RenderExtension = dyn Fn(&mut String, u64) + Send + Sync;

/// Renders an extension's own metrics after the node's.
pub struct ExtensionMetrics(pub Box<RenderExtension>);

impl std::fmt::Debug for ExtensionMetrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ExtensionMetrics")
    }
}

/// A node's metrics.
#[derive(Debug, Default)]
pub struct NodeMetrics {
    /// The extension's metrics, once it set them (see [`NodeMetrics::set_extension`]).
    extension: std::sync::OnceLock<ExtensionMetrics>,
    /// Client appends, from receipt to answer.
    pub append_latency: Histogram,
    /// Raft log appends, from write to durable (`fdatasync` and the wait for it).
    pub log_flush_latency: Histogram,
    /// How long applying waited while a snapshot's image was taken.
    pub snapshot_capture_latency: Histogram,
    /// Leader changes seen by this node.
    pub leader_changes: AtomicU64,
    /// Client appends answered with an error.
    pub append_errors: AtomicU64,
    /// Snapshots received whole from a leader, checked and handed to Raft to install (Raft
    /// skips one no newer than what this node has).
    pub snapshots_received: AtomicU64,
    /// Their bytes, as sent (the values they carry included).
    pub snapshot_received_bytes: AtomicU64,
}

/// Values read from Raft at render time.
#[derive(Debug, Clone, Copy, Default)]
pub struct RaftGauges {
    /// Current term.
    pub term: u64,
    /// Committed index (0 when none).
    pub committed_index: u64,
    /// Applied index (0 when none).
    pub applied_index: u64,
    /// Last log index (0 when none).
    pub last_log_index: u64,
    /// 1 on the leader.
    pub is_leader: u64,
}

impl NodeMetrics {
    /// The Prometheus text exposition of these metrics and `gauges`.
    pub fn render(&self, node_id: u64, gauges: RaftGauges) -> String {
        let mut out = String::new();
        for (name, help, value) in [
            ("keel_term", "Current Raft term.", gauges.term),
            (
                "keel_commit_index",
                "Committed Raft log index.",
                gauges.committed_index,
            ),
            (
                "keel_applied_index",
                "Applied Raft log index.",
                gauges.applied_index,
            ),
            (
                "keel_last_log_index",
                "Last Raft log index.",
                gauges.last_log_index,
            ),
            (
                "keel_is_leader",
                "1 if this node is the leader.",
                gauges.is_leader,
            ),
        ] {
            let _ = writeln!(
                out,
                "# HELP {name} {help}\n# TYPE {name} gauge\n{name}{{node=\"{node_id}\"}} {value}"
            );
        }
        self.render_counters(&mut out, node_id);
        self.append_latency.render(
            &mut out,
            "keel_append_latency_seconds",
            "Client append latency.",
        );
        self.log_flush_latency.render(
            &mut out,
            "keel_log_flush_seconds",
            "Raft log append to durable (fdatasync).",
        );
        self.snapshot_capture_latency.render(
            &mut out,
            "keel_snapshot_capture_seconds",
            "Time applying waited while a snapshot's image was taken.",
        );
        if let Some(extension) = self.extension.get() {
            (extension.0)(&mut out, node_id);
        }
        out
    }

    /// Renders the extension's metrics after the node's from now on (the first call wins).
    pub fn set_extension(&self, render: ExtensionMetrics) {
        let _ = self.extension.set(render);
    }

    fn render_counters(&self, out: &mut String, node_id: u64) {
        for (name, help, counter) in [
            (
                "keel_leader_changes_total",
                "Leader changes seen by this node.",
                &self.leader_changes,
            ),
            (
                "keel_append_errors_total",
                "Client appends answered with an error.",
                &self.append_errors,
            ),
            (
                "keel_snapshots_received_total",
                "Snapshots received whole from a leader and checked.",
                &self.snapshots_received,
            ),
            (
                "keel_snapshot_received_bytes_total",
                "Bytes of the snapshots received whole from a leader and checked.",
                &self.snapshot_received_bytes,
            ),
        ] {
            let value = counter.load(Ordering::Relaxed);
            let _ = writeln!(
                out,
                "# HELP {name} {help}\n# TYPE {name} counter\n{name}{{node=\"{node_id}\"}} {value}"
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histogram_buckets_are_cumulative() {
        let metrics = NodeMetrics::default();
        metrics.append_latency.observe(Duration::from_micros(50));
        metrics.append_latency.observe(Duration::from_millis(3));
        let text = metrics.render(
            1,
            RaftGauges {
                term: 4,
                ..RaftGauges::default()
            },
        );
        assert!(text.contains("keel_append_latency_seconds_bucket{le=\"0.0001\"} 1"));
        assert!(text.contains("keel_append_latency_seconds_bucket{le=\"0.005\"} 2"));
        assert!(text.contains("keel_append_latency_seconds_count 2"));
        assert!(text.contains("keel_term{node=\"1\"} 4"));
    }
}
