//! `keel dev`: a three-node cluster on loopback in one process, for trying Keel out.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use anyhow::Context;
use keel_raft::client::KeelClient;
use keel_raft::node::NodeConfig;
use keel_raft::security::credentials::Credentials;
use keel_raft::security::tls::TlsFiles;
use keel_raft::security::{AuthSettings, NodeSecurity};
use keel_scheduler::engine::EngineSettings;
use keel_scheduler::{Node, builtin};

use crate::certs;
use crate::cluster_args::{DEV_CERTS_DIR, DEV_TLS_MARKER, ENDPOINTS_FILE, dev_credentials};
use crate::init_tracing;

/// The configuration of `keel dev`'s node `id` on `port`: TLS and client certificates
/// required when `certs_dir` is given.
fn dev_node_config(
    id: u16,
    port: u16,
    data_dir: &Path,
    relaxed: bool,
    certs_dir: Option<&Path>,
) -> NodeConfig {
    let listen: SocketAddr = ([127, 0, 0, 1], port).into();
    let mut config = NodeConfig::new(u64::from(id), listen, data_dir.join(format!("node-{id}")));
    config.metrics_listen = port.checked_add(100).map(|p| ([127, 0, 0, 1], p).into());
    if relaxed {
        config.sync = keel_log::SyncPolicy::Relaxed;
    }
    if let Some(certs) = certs_dir {
        config.security = NodeSecurity {
            tls: Some(TlsFiles {
                cert: certs.join(format!("node-{id}.pem")),
                key: certs.join(format!("node-{id}.key")),
                ca: certs.join("ca.pem"),
            }),
            auth: Some(AuthSettings::default()),
            insecure: false,
        };
    }
    config
}

/// The certificates directory of `keel dev` in `data_dir`: with `tls`, certificates issued
/// there unless they are, and the TLS marker written; without, the marker removed (so
/// clients do not dial a plaintext cluster over TLS).
fn prepare_dev_certs(data_dir: &Path, tls: bool) -> anyhow::Result<PathBuf> {
    let certs_dir = data_dir.join(DEV_CERTS_DIR);
    let marker = data_dir.join(DEV_TLS_MARKER);
    if tls {
        let (cert, key) = certs::client_pair(&certs_dir, keel_raft::security::roles::Role::Admin);
        if !(certs_dir.join("ca.pem").is_file() && cert.is_file() && key.is_file()) {
            certs::write_certs(&certs::CertsArgs {
                dir: certs_dir.clone(),
                nodes: 3,
                host: Vec::new(),
                remote: Vec::new(),
            })?;
        }
        std::fs::write(&marker, "keel dev runs with TLS\n")?;
    } else if marker.exists() {
        std::fs::remove_file(&marker)?;
    }
    Ok(certs_dir)
}

/// Runs `keel dev`: three nodes in this process, the cluster formed on first start, until
/// Ctrl-C.
pub(crate) async fn run_dev(
    data_dir: &Path,
    base_port: u16,
    relaxed: bool,
    tls: bool,
) -> anyhow::Result<()> {
    init_tracing();
    std::fs::create_dir_all(data_dir)
        .with_context(|| format!("creating {}", data_dir.display()))?;
    let certs_dir = prepare_dev_certs(data_dir, tls)?;
    let mut nodes = Vec::new();
    let mut members = BTreeMap::new();
    for id in 1..=3u16 {
        let port = base_port.checked_add(id - 1).context("port out of range")?;
        let config = dev_node_config(id, port, data_dir, relaxed, tls.then_some(&*certs_dir));
        let node = Node::start(config, builtin::registry(), EngineSettings::default())
            .await
            .with_context(|| format!("starting node {id}"))?;
        members.insert(u64::from(id), node.addr().to_string());
        nodes.push(node);
    }
    let endpoints: Vec<String> = members.values().cloned().collect();
    std::fs::write(data_dir.join(ENDPOINTS_FILE), endpoints.join("\n") + "\n")?;
    let credentials = if tls {
        dev_credentials(data_dir).context("the dev cluster's certificates are gone")?
    } else {
        Credentials::none()
    };
    let mut client = KeelClient::with_credentials(&endpoints, &credentials)?;
    let initialized = client
        .statuses()
        .await
        .iter()
        .any(|(_, s)| s.as_ref().is_ok_and(|s| s.initialized));
    if !initialized {
        client.init(&members).await.context("forming the cluster")?;
    }
    print_dev_banner(data_dir, &members, relaxed, tls.then_some(&*certs_dir));
    tokio::signal::ctrl_c().await?;
    println!("stopping…");
    for node in nodes {
        node.shutdown().await;
    }
    Ok(())
}

/// What `keel dev` says once its cluster runs.
fn print_dev_banner(
    data_dir: &Path,
    members: &BTreeMap<u64, String>,
    relaxed: bool,
    certs_dir: Option<&Path>,
) {
    let sync = if relaxed {
        "relaxed sync, NON-DURABLE"
    } else {
        "durable"
    };
    let security = certs_dir.map_or_else(String::new, |dir| {
        format!("; TLS, client certificates required: {}", dir.display())
    });
    println!("keel dev: three nodes on loopback ({sync}{security})");
    for (id, addr) in members {
        println!(
            "  node {id}: grpc {addr}, metrics http://127.0.0.1:{}/metrics",
            addr.rsplit(':')
                .next()
                .and_then(|p| p.parse::<u16>().ok())
                .map_or(0, |p| p + 100)
        );
    }
    println!(
        "  data: {}   (client commands find this cluster with no flags)",
        data_dir.display()
    );
    println!("Ctrl-C stops the cluster.");
}
