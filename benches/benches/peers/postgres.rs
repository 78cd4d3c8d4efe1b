//! A private PostgreSQL server on loopback for DBOS (Debian's `postgresql`): a fresh
//! cluster in a temporary directory, started with the server's defaults (`fsync` on,
//! `synchronous_commit` on: a commit returns after its WAL is flushed) and killed by PID.
//! PostgreSQL refuses to run as root; as root the cluster runs as the `postgres` user.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use super::common::{WAIT_DEADLINE, free_port};
use super::process::{INSTALL_HINT, PeerProcess};

/// A running PostgreSQL server; stopped (fast shutdown, then SIGKILL) when dropped.
pub(crate) struct Postgres {
    port: u16,
    bin: PathBuf,
    data: PathBuf,
    user: Option<(u32, u32)>,
    server: PeerProcess,
    dir: tempfile::TempDir,
}

impl Postgres {
    /// Initialises a cluster and starts its server; returns once it accepts connections.
    pub(crate) fn start() -> Self {
        let bin = server_bin();
        let dir = tempfile::tempdir().expect("tempdir");
        let user = postgres_user();
        if let Some((uid, gid)) = user {
            std::os::unix::fs::chown(dir.path(), Some(uid), Some(gid)).expect("chown");
        }
        let data = dir.path().join("data");
        run_tool_as(
            user,
            Command::new(bin.join("initdb"))
                .args([
                    "--auth=trust",
                    "--username=postgres",
                    "--encoding=UTF8",
                    "--no-locale",
                ])
                .arg("-D")
                .arg(&data)
                .current_dir(dir.path()),
        );
        let port = free_port();
        let mut server = PeerProcess::new(
            bin.join("postgres"),
            vec![
                "-D".into(),
                data.display().to_string(),
                "-p".into(),
                port.to_string(),
                "-k".into(),
                dir.path().display().to_string(),
                "-c".into(),
                "listen_addresses=127.0.0.1".into(),
                "-c".into(),
                "max_connections=200".into(),
            ],
        )
        .with_user(user, dir.path())
        .with_log(&dir.path().join("server.log"));
        server.spawn();
        let deadline = Instant::now() + WAIT_DEADLINE;
        while !ready(&bin, port) {
            assert!(
                Instant::now() < deadline,
                "PostgreSQL never became ready (its log: {})",
                dir.path().join("server.log").display()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        Self {
            port,
            bin,
            data,
            user,
            server,
            dir,
        }
    }

    /// The URL of database `name` (DBOS creates it if missing).
    pub(crate) fn url(&self, name: &str) -> String {
        format!("postgresql://postgres@127.0.0.1:{}/{name}", self.port)
    }
}

impl Drop for Postgres {
    fn drop(&mut self) {
        // A fast shutdown ends the server's backends too, before the directory goes.
        let mut stop = Command::new(self.bin.join("pg_ctl"));
        stop.args(["stop", "-m", "fast", "-w", "-D"])
            .arg(&self.data)
            .current_dir(self.dir.path())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null());
        if let Some((uid, gid)) = self.user {
            use std::os::unix::process::CommandExt as _;
            stop.uid(uid).gid(gid);
        }
        let _ = stop.status();
        self.server.kill();
    }
}

/// The newest installed server's `bin` directory.
fn server_bin() -> PathBuf {
    let mut versions: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .unwrap_or_else(|error| panic!("no PostgreSQL server ({error}): {INSTALL_HINT}"))
        .filter_map(|entry| entry.ok().map(|entry| entry.path().join("bin")))
        .filter(|bin| bin.join("postgres").exists())
        .collect();
    versions.sort();
    versions
        .pop()
        .unwrap_or_else(|| panic!("no PostgreSQL server: {INSTALL_HINT}"))
}

/// The `postgres` user's ids when this process is root (the server refuses root).
fn postgres_user() -> Option<(u32, u32)> {
    let id = |flag: &str| -> u32 {
        let output = Command::new("id")
            .args([flag, "postgres"])
            .output()
            .expect("id");
        assert!(output.status.success(), "no postgres user: {INSTALL_HINT}");
        String::from_utf8_lossy(&output.stdout)
            .trim()
            .parse()
            .expect("numeric id")
    };
    let me = Command::new("id").arg("-u").output().expect("id");
    (String::from_utf8_lossy(&me.stdout).trim() == "0").then(|| (id("-u"), id("-g")))
}

/// Runs a PostgreSQL tool to completion as `user`; panics with its output if it fails.
fn run_tool_as(user: Option<(u32, u32)>, command: &mut Command) {
    use std::os::unix::process::CommandExt as _;
    if let Some((uid, gid)) = user {
        command.uid(uid).gid(gid);
    }
    let output = command.output().expect("run a PostgreSQL tool");
    assert!(
        output.status.success(),
        "{command:?} failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
}

fn ready(bin: &Path, port: u16) -> bool {
    Command::new(bin.join("pg_isready"))
        .args(["-q", "-h", "127.0.0.1", "-p", &port.to_string()])
        .status()
        .is_ok_and(|status| status.success())
}
