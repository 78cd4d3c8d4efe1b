//! A peer's server process: started with fixed arguments (as another user if asked), killed
//! by PID (SIGKILL) when asked or dropped, restartable with the same arguments.

use std::os::unix::process::CommandExt as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

/// How to get the peers' programs, for the panic when one is missing.
pub(crate) const INSTALL_HINT: &str = "the peer benchmark needs Debian's nats-server, \
     etcd-server and postgresql packages, DBOS in target/peers-venv and Restate in \
     benches/peers/restate/node_modules (.ci/run installs them all)";

/// `benches/peers`: the peers' own programs and their pinned dependencies.
pub(crate) fn peers_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("peers")
}

/// One server process of a peer.
pub(crate) struct PeerProcess {
    program: PathBuf,
    args: Vec<String>,
    /// User and group ids to run as (`None`: this process's own).
    user: Option<(u32, u32)>,
    /// Working directory (`None`: this process's own).
    dir: Option<PathBuf>,
    /// File for the server's standard error (`None`: discarded).
    log: Option<PathBuf>,
    /// Extra environment variables.
    env: Vec<(String, String)>,
    child: Option<Child>,
}

impl PeerProcess {
    /// A process of `program` with `args`, not yet started.
    pub(crate) fn new(program: impl Into<PathBuf>, args: Vec<String>) -> Self {
        Self {
            program: program.into(),
            args,
            user: None,
            dir: None,
            log: None,
            env: Vec::new(),
            child: None,
        }
    }

    /// Runs the process with `GOMAXPROCS` set to `threads` (a Go server's thread budget).
    pub(crate) fn with_gomaxprocs(mut self, threads: Option<usize>) -> Self {
        if let Some(threads) = threads {
            self.env
                .push(("GOMAXPROCS".to_owned(), threads.to_string()));
        }
        self
    }

    /// Runs the process as the user and group `user` (for servers that refuse root), in
    /// `dir` (which that user can read).
    pub(crate) fn with_user(mut self, user: Option<(u32, u32)>, dir: &Path) -> Self {
        self.user = user;
        self.dir = Some(dir.to_owned());
        self
    }

    /// Appends the server's standard error to `log`, to tell why a start failed.
    pub(crate) fn with_log(mut self, log: &Path) -> Self {
        self.log = Some(log.to_owned());
        self
    }

    /// Starts the process; panics with how to install the program if it is missing.
    pub(crate) fn spawn(&mut self) {
        assert!(
            self.child.is_none(),
            "{} is already running",
            self.program.display()
        );
        let mut command = Command::new(&self.program);
        let stderr = self.log.as_ref().map_or_else(Stdio::null, |log| {
            std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(log)
                .map_or_else(|_| Stdio::null(), Stdio::from)
        });
        command
            .args(&self.args)
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(stderr);
        if let Some((uid, gid)) = self.user {
            command.uid(uid).gid(gid);
        }
        if let Some(dir) = &self.dir {
            command.current_dir(dir);
        }
        let child = command.spawn().unwrap_or_else(|error| {
            panic!(
                "cannot start `{}` ({error}): {INSTALL_HINT}",
                self.program.display()
            )
        });
        self.child = Some(child);
    }

    /// Kills the process with SIGKILL and reaps it.
    pub(crate) fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for PeerProcess {
    fn drop(&mut self) {
        self.kill();
    }
}
