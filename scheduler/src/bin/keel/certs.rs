//! `keel certs`: a CA, node certificates and client certificates (one per role) for a local
//! cluster, as `keel dev --tls` uses them.

use std::path::{Path, PathBuf};

use anyhow::Context;
use clap::Args;
use keel_raft::security::certs::{LocalCa, write_pair};
use keel_raft::security::roles::Role;

/// The client certificates issued beside the nodes': `client-<role>`.
const CLIENT_ROLES: [Role; 4] = [Role::Admin, Role::Write, Role::Read, Role::Worker];

#[derive(Debug, Args)]
pub(crate) struct CertsArgs {
    /// Where to write `ca.pem`, `ca.key`, `node-<id>.pem`/`.key` and
    /// `client-<role>.pem`/`.key` (an existing `ca.pem` and `ca.key` there are reused).
    #[arg(long, default_value = "keel-certs")]
    pub(crate) dir: PathBuf,
    /// Node certificates to issue: node-1 … node-N.
    #[arg(long, default_value_t = 3)]
    pub(crate) nodes: u64,
    /// More names or IP addresses the nodes are reached at (beside `localhost`,
    /// `127.0.0.1` and `::1`; every node certificate names them all).
    #[arg(long, value_delimiter = ',')]
    pub(crate) host: Vec<String>,
    /// Other clusters that call this one (`[remotes]`): for each name, a client
    /// certificate `remote-<name>.pem`/`.key` of role `remote` whose common name is the
    /// name, to hand to that cluster (its principal here).
    #[arg(long, value_delimiter = ',')]
    pub(crate) remote: Vec<String>,
}

/// The file of the client certificate for `role` in `dir`, and its key.
pub(crate) fn client_pair(dir: &Path, role: Role) -> (PathBuf, PathBuf) {
    let stem = format!("client-{role}");
    (
        dir.join(format!("{stem}.pem")),
        dir.join(format!("{stem}.key")),
    )
}

/// Writes the certificates `args` asks for; returns what it wrote, a line each.
pub(crate) fn write_certs(args: &CertsArgs) -> anyhow::Result<Vec<String>> {
    std::fs::create_dir_all(&args.dir)
        .with_context(|| format!("creating {}", args.dir.display()))?;
    let (ca_cert, ca_key) = (args.dir.join("ca.pem"), args.dir.join("ca.key"));
    let mut wrote = Vec::new();
    let ca = if ca_cert.exists() && ca_key.exists() {
        wrote.push(format!("reused the CA in {}", ca_cert.display()));
        LocalCa::load(&ca_cert, &ca_key)?
    } else {
        let ca = LocalCa::create("keel")?;
        ca.write(&args.dir)?;
        wrote.push(format!(
            "CA: {} (its key: {})",
            ca_cert.display(),
            ca_key.display()
        ));
        ca
    };
    for id in 1..=args.nodes {
        let name = format!("node-{id}");
        let issued = ca.issue(&name, Role::Node, &args.host)?;
        let (cert, _) = write_pair(&args.dir, &name, &issued)?;
        wrote.push(format!("node {id}: {}", cert.display()));
    }
    for name in &args.remote {
        let issued = ca.issue(name, Role::Remote, &[])?;
        let (cert, _) = write_pair(&args.dir, &format!("remote-{name}"), &issued)?;
        wrote.push(format!("remote cluster {name}: {}", cert.display()));
    }
    for role in CLIENT_ROLES {
        let issued = ca.issue(&format!("{role} client"), role, &[])?;
        let (cert, _) = write_pair(&args.dir, &format!("client-{role}"), &issued)?;
        wrote.push(format!("{role} client: {}", cert.display()));
    }
    Ok(wrote)
}
