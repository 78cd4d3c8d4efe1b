//! Where the `keel` program finds a cluster — `--cluster`, `--data-dir`, or the `keel dev`
//! cluster's data directory — and what it presents there: `--ca`, `--cert`/`--key`,
//! `--token-file` (or `KEEL_CA`, `KEEL_CERT`, `KEEL_KEY`, `KEEL_TOKEN_FILE`), else the admin
//! client certificate of a `keel dev --tls` cluster found in its data directory.

use std::path::{Path, PathBuf};

use clap::Args;
use keel_raft::client::KeelClient;
use keel_raft::security::credentials::Credentials;
use keel_raft::security::roles::Role;

use crate::certs::client_pair;

/// Default data directory of `keel dev`, where client commands also find its endpoints.
pub(crate) const DEV_DATA_DIR: &str = "keel-data";
/// File in the dev data directory listing the cluster's endpoints.
pub(crate) const ENDPOINTS_FILE: &str = "endpoints";
/// First gRPC port of `keel dev`; metrics ports are 100 higher.
pub(crate) const DEV_BASE_PORT: u16 = 7101;
/// Directory in the dev data directory holding the certificates of `keel dev --tls`.
pub(crate) const DEV_CERTS_DIR: &str = "certs";
/// File in the dev data directory saying its cluster runs TLS (written by `keel dev --tls`,
/// removed by a plain `keel dev`), so clients use its certificates only then.
pub(crate) const DEV_TLS_MARKER: &str = "tls";

#[derive(Debug, Args)]
pub(crate) struct ClusterArgs {
    /// Comma-separated `host:port` of cluster nodes (default: the `keel dev` cluster).
    #[arg(long, env = "KEEL_CLUSTER", value_delimiter = ',')]
    cluster: Vec<String>,
    /// The data directory of a `keel dev` cluster or of a Python `keel.App`, whose
    /// `endpoints` file names its nodes.
    #[arg(long, conflicts_with = "cluster")]
    data_dir: Option<PathBuf>,
    /// The CA to trust: every connection is TLS (default: a `keel dev --tls` cluster's).
    #[arg(long, env = "KEEL_CA")]
    ca: Option<PathBuf>,
    /// A client certificate to present (PEM), with `--key`.
    #[arg(long, env = "KEEL_CERT", requires = "key")]
    cert: Option<PathBuf>,
    /// The client certificate's private key (PEM).
    #[arg(long, env = "KEEL_KEY", requires = "cert")]
    key: Option<PathBuf>,
    /// A file holding a bearer token (the token itself never goes on the command line).
    #[arg(long, env = "KEEL_TOKEN_FILE")]
    token_file: Option<PathBuf>,
}

/// What the client presents: the flags' (or environment's) credentials, else, when a
/// `keel dev --tls` data directory is in use, its CA and admin client certificate.
pub(crate) fn credentials(args: &ClusterArgs) -> Credentials {
    let given = Credentials {
        ca: args.ca.clone(),
        cert: args.cert.clone(),
        key: args.key.clone(),
        token_file: args.token_file.clone(),
    };
    if !given.is_none() || !args.cluster.is_empty() {
        return given;
    }
    let dir = args.data_dir.as_deref().unwrap_or(Path::new(DEV_DATA_DIR));
    dev_credentials(dir).unwrap_or(given)
}

/// The admin credentials of the `keel dev --tls` cluster whose data directory is `dir`
/// (none when it last ran without TLS).
pub(crate) fn dev_credentials(dir: &Path) -> Option<Credentials> {
    if !dir.join(DEV_TLS_MARKER).is_file() {
        return None;
    }
    let certs = dir.join(DEV_CERTS_DIR);
    let ca = certs.join("ca.pem");
    let (cert, key) = client_pair(&certs, Role::Admin);
    (ca.is_file() && cert.is_file() && key.is_file()).then_some(Credentials {
        ca: Some(ca),
        cert: Some(cert),
        key: Some(key),
        token_file: None,
    })
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
    Ok(KeelClient::with_credentials(
        &endpoints(args)?,
        &credentials(args),
    )?)
}
