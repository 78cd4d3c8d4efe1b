//! Where the `keel` program finds a cluster: `--cluster`, `--data-dir`, or the `keel dev`
//! cluster's data directory.

use std::path::{Path, PathBuf};

use clap::Args;
use keel_raft::client::KeelClient;

/// Default data directory of `keel dev`, where client commands also find its endpoints.
pub(crate) const DEV_DATA_DIR: &str = "keel-data";
/// File in the dev data directory listing the cluster's endpoints.
pub(crate) const ENDPOINTS_FILE: &str = "endpoints";
/// First gRPC port of `keel dev`; metrics ports are 100 higher.
pub(crate) const DEV_BASE_PORT: u16 = 7101;

#[derive(Debug, Args)]
pub(crate) struct ClusterArgs {
    /// Comma-separated `host:port` of cluster nodes (default: the `keel dev` cluster).
    #[arg(long, env = "KEEL_CLUSTER", value_delimiter = ',')]
    cluster: Vec<String>,
    /// The data directory of a `keel dev` cluster or of a Python `keel.App`, whose
    /// `endpoints` file names its nodes.
    #[arg(long, conflicts_with = "cluster")]
    data_dir: Option<PathBuf>,
}

pub(crate) fn endpoints(args: &ClusterArgs) -> anyhow::Result<Vec<String>> {
    if !args.cluster.is_empty() {
        return Ok(args.cluster.clone());
    }
    let dir = args.data_dir.as_deref().unwrap_or(Path::new(DEV_DATA_DIR));
    let file = dir.join(ENDPOINTS_FILE);
    match std::fs::read_to_string(&file) {
        Ok(text) => Ok(text
            .lines()
            .filter(|l| !l.trim().is_empty())
            .map(str::to_owned)
            .collect()),
        Err(error) if args.data_dir.is_some() => Err(anyhow::anyhow!(
            "{}: {error} (is it the data directory of `keel dev` or of a keel.App?)",
            file.display()
        )),
        Err(_) => Ok((0..3)
            .map(|i| format!("127.0.0.1:{}", DEV_BASE_PORT + i))
            .collect()),
    }
}

pub(crate) fn client(args: &ClusterArgs) -> anyhow::Result<KeelClient> {
    Ok(KeelClient::new(&endpoints(args)?)?)
}
