//! After a run: stop the nodes, read back every node's whole Raft log (the ranges it copied
//! before purging them, then a copy of its live log) and check the workflows' fences
//! against it.

use std::collections::BTreeMap;
use std::path::Path;

use keel_raft::purged_log::{read_copies, read_log};

use crate::checker::log_fences::{LogFencesVerdict, check_log_fences};
use crate::checker::workflows::FinalWorkflow;
use crate::cluster::Cluster;

/// Reads every node's committed index, stops every node, reads their logs and checks
/// `finals`; `Err` says why the logs could not be read.
pub(crate) async fn check_fences_in_logs(
    cluster: &mut Cluster,
    finals: &BTreeMap<String, FinalWorkflow>,
) -> Result<LogFencesVerdict, String> {
    let mut client = cluster.client().map_err(|error| format!("{error:#}"))?;
    // Each node's own committed index: entries above it may be a stale tail that never
    // committed, so they are left out.
    let committed: BTreeMap<u64, u64> = client
        .statuses()
        .await
        .into_iter()
        .filter_map(|(_, status)| status.ok())
        .filter_map(|status| Some((status.node_id, status.committed_index?)))
        .collect();
    let cluster_committed = committed
        .values()
        .copied()
        .max()
        .ok_or("no node reported a committed index")?;
    cluster.stop_all();
    let mut logs = Vec::new();
    let mut unreadable = 0;
    for node in cluster.nodes.values() {
        let mut entries =
            read_copies(&node.purged_log).map_err(|error| format!("node {}: {error}", node.id))?;
        let own_committed = committed.get(&node.id).copied().unwrap_or(0);
        match read_live_log(&node.data_dir.join("log"), &node.data_dir.join("log-read")) {
            Ok(live) => entries.extend(live.into_iter().filter(|e| e.index <= own_committed)),
            // A node whose log does not open (a corrupt nemesis's damage it never met)
            // still contributes its copies; the others hold the rest.
            Err(error) => {
                unreadable += 1;
                tracing::warn!(node = node.id, %error, "reading the node's log");
            }
        }
        logs.push((node.id, entries));
    }
    let mut verdict = check_log_fences(&logs, cluster_committed, finals);
    verdict.stats.live_logs_unreadable = unreadable;
    Ok(verdict)
}

/// Reads the live log in `log_dir` through a copy in `scratch` (opening a log recovers it,
/// which may rewrite its tail: the node's own files stay as the run left them).
fn read_live_log(
    log_dir: &Path,
    scratch: &Path,
) -> Result<Vec<keel_raft::purged_log::LoggedEntry>, String> {
    std::fs::create_dir_all(scratch).map_err(|e| e.to_string())?;
    for entry in std::fs::read_dir(log_dir).map_err(|e| e.to_string())? {
        let path = entry.map_err(|e| e.to_string())?.path();
        if let Some(name) = path.file_name() {
            std::fs::copy(&path, scratch.join(name)).map_err(|e| e.to_string())?;
        }
    }
    let entries = read_log(scratch).map_err(|e| e.to_string());
    let _ = std::fs::remove_dir_all(scratch);
    entries
}
