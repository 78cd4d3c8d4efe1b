//! A peer's server process: started from a program on `PATH` with fixed arguments, killed
//! by PID (SIGKILL) when asked or dropped, restartable with the same arguments.

use std::process::{Child, Command, Stdio};

pub(crate) struct PeerProcess {
    program: &'static str,
    args: Vec<String>,
    child: Option<Child>,
}

impl PeerProcess {
    /// A process of `program` with `args`, not yet started.
    pub(crate) fn new(program: &'static str, args: Vec<String>) -> Self {
        Self {
            program,
            args,
            child: None,
        }
    }

    /// Starts the process; panics with how to install the program if it is missing.
    pub(crate) fn spawn(&mut self) {
        assert!(self.child.is_none(), "{} is already running", self.program);
        let child = Command::new(self.program)
            .args(&self.args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|error| {
                panic!(
                    "cannot start `{}` ({error}): the peer benchmark needs Debian's \
                     nats-server and etcd-server packages (.ci/run installs them)",
                    self.program
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
