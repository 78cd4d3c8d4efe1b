//! Restate (server and TypeScript SDK from npm, pinned in
//! `benches/peers/restate/package-lock.json`): one server process with its defaults (its
//! local log is `RocksDB` with the write-ahead log on and `fsync`ed), the `bench` service of
//! `benches/peers/restate/service.mjs` in a Node.js process, and the driver
//! `driver.mjs` calling it through the server's HTTP ingress.

use std::path::PathBuf;
use std::time::Duration;

use super::common::free_ports;
use super::driver::{Driver, run_split};
use super::process::{PeerProcess, peers_dir};

/// A Restate server, the service it calls, and the driver.
pub(crate) struct Restate {
    driver: Driver,
    _service: PeerProcess,
    _server: PeerProcess,
    _dir: tempfile::TempDir,
}

impl Restate {
    /// Starts the server and the service, and a driver of `concurrency` concurrent loops
    /// (one Node.js process: its loops only wait on the server).
    pub(crate) fn start(concurrency: usize) -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let [node, admin, ingress, service] = free_ports::<4>();
        let config = dir.path().join("restate.toml");
        let text = format!(
            "node-name = \"keel-bench\"\ncluster-name = \"keel-bench\"\nbase-dir = \"{}\"\n\
             listen-mode = \"tcp\"\nbind-ip = \"127.0.0.1\"\nbind-port = {node}\n\
             disable-telemetry = true\nlog-filter = \"error\"\n\
             [admin]\nbind-port = {admin}\n[ingress]\nbind-port = {ingress}\n",
            dir.path().join("data").display()
        );
        std::fs::write(&config, text).expect("restate config");
        let mut server = PeerProcess::new(
            server_binary(),
            vec![
                "--config-file".into(),
                config.display().to_string(),
                "--no-logo".into(),
            ],
        )
        .with_log(&dir.path().join("server.log"));
        server.spawn();
        let restate_dir = peers_dir().join("restate");
        let mut service_process = PeerProcess::new(
            "node",
            vec![
                restate_dir.join("service.mjs").display().to_string(),
                service.to_string(),
            ],
        )
        .with_log(&dir.path().join("service.log"));
        service_process.spawn();
        let driver = Driver::start(
            &PathBuf::from("node"),
            &[restate_dir.join("driver.mjs").display().to_string()],
            &[
                ("KEEL_PEER_ADMIN_URL", format!("http://127.0.0.1:{admin}")),
                (
                    "KEEL_PEER_INGRESS_URL",
                    format!("http://127.0.0.1:{ingress}"),
                ),
                (
                    "KEEL_PEER_SERVICE_URL",
                    format!("http://127.0.0.1:{service}"),
                ),
                ("KEEL_PEER_CONCURRENCY", concurrency.to_string()),
            ],
        );
        Self {
            driver,
            _service: service_process,
            _server: server,
            _dir: dir,
        }
    }

    /// Runs `count` workflows; returns the elapsed time.
    pub(crate) fn run(&mut self, count: u64) -> Duration {
        run_split(std::slice::from_mut(&mut self.driver), count)
    }
}

/// The server binary npm installed for this machine's architecture (run directly, not
/// through npm's launcher script, so that killing its PID stops the server itself).
fn server_binary() -> PathBuf {
    let arch = match std::env::consts::ARCH {
        "aarch64" => "arm64",
        _ => "x64",
    };
    peers_dir().join(format!(
        "restate/node_modules/@restatedev/restate-server-linux-{arch}/bin/restate-server"
    ))
}
