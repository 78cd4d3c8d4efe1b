//! After a run: stop the nodes, read back every node's whole Raft log (the ranges it copied
//! before purging them, then its live log) and check the workflows' fences against it.

use std::collections::BTreeMap;

use keel_raft::purged_log::{read_copies, read_log};

use crate::checker::log_fences::{LogFencesVerdict, check_log_fences};
use crate::checker::workflows::FinalWorkflow;
use crate::cluster::Cluster;

/// Reads the committed index, stops every node, reads their logs and checks `finals`;
/// `Err` says why the logs could not be read.
pub(crate) async fn check_fences_in_logs(
    cluster: &mut Cluster,
    finals: &BTreeMap<String, FinalWorkflow>,
) -> Result<LogFencesVerdict, String> {
    let committed = match cluster.client() {
        Ok(mut client) => client
            .statuses()
            .await
            .into_iter()
            .filter_map(|(_, status)| status.ok())
            .filter_map(|status| status.committed_index)
            .max(),
        Err(error) => return Err(format!("{error:#}")),
    };
    let committed = committed.ok_or("no node reported a committed index")?;
    cluster.stop_all();
    let mut logs = Vec::new();
    for node in cluster.nodes.values() {
        let mut entries = match read_copies(&node.purged_log) {
            Ok(entries) => entries,
            Err(error) => return Err(format!("node {}: {error}", node.id)),
        };
        match read_log(&node.data_dir.join("log")) {
            Ok(live) => entries.extend(live),
            // A node whose log does not open (a corrupt nemesis's damage it never met)
            // still contributes its copies; the others hold the rest.
            Err(error) => tracing::warn!(node = node.id, %error, "reading the node's log"),
        }
        logs.push((node.id, entries));
    }
    Ok(check_log_fences(&logs, committed, finals))
}
