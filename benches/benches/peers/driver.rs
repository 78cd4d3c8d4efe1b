//! A durable-execution peer's load driver: a program in the peer's own language and client
//! library (Python for DBOS, Node.js for Restate) that runs the workflows itself, on
//! command. It prints `ready` once connected; the benchmark writes a count on its stdin and
//! it runs that many 10-step workflows from its concurrent drivers (each starts one and
//! waits for its result), checks every result, and answers `done <count>`. End of input
//! ends it; it is killed by PID when dropped.

use std::io::{BufRead as _, BufReader, Write as _};
use std::path::Path;
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};
use std::time::{Duration, Instant};

use super::process::INSTALL_HINT;

/// A running driver process.
pub(crate) struct Driver {
    child: Child,
    stdin: ChildStdin,
    stdout: BufReader<ChildStdout>,
}

impl Driver {
    /// Starts `program` with `args` and `env`; returns once it printed `ready`.
    pub(crate) fn start(program: &Path, args: &[String], env: &[(&str, String)]) -> Self {
        let mut driver = Self::spawn(program, args, env);
        driver.ready(program);
        driver
    }

    /// Starts `program` with `args` and `env` without waiting for it (see [`Driver::ready`]).
    pub(crate) fn spawn(program: &Path, args: &[String], env: &[(&str, String)]) -> Self {
        let mut child = Command::new(program)
            .args(args)
            .envs(env.iter().map(|(key, value)| (key, value)))
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap_or_else(|error| {
                panic!(
                    "cannot start `{}` ({error}): {INSTALL_HINT}",
                    program.display()
                )
            });
        let stdin = child.stdin.take().expect("piped stdin");
        let stdout = BufReader::new(child.stdout.take().expect("piped stdout"));
        Self {
            child,
            stdin,
            stdout,
        }
    }

    /// Waits until the spawned `program` printed `ready`.
    pub(crate) fn ready(&mut self, program: &Path) {
        assert_eq!(
            self.answer(),
            "ready",
            "{} did not start",
            program.display()
        );
    }

    /// Tells the driver to run `count` workflows.
    fn send(&mut self, count: u64) {
        writeln!(self.stdin, "{count}").expect("command the driver");
        self.stdin.flush().expect("command the driver");
    }

    /// Waits for the driver to finish the `count` workflows it was sent.
    fn finish(&mut self, count: u64) {
        assert_eq!(self.answer(), format!("done {count}"));
    }

    fn answer(&mut self) -> String {
        let mut line = String::new();
        self.stdout.read_line(&mut line).expect("read the driver");
        assert!(!line.is_empty(), "the driver exited (its stderr is above)");
        line.trim_end().to_owned()
    }
}

/// Runs `count` workflows split over `drivers` at once; returns the time until the last
/// answered.
pub(crate) fn run_split(drivers: &mut [Driver], count: u64) -> Duration {
    let started = Instant::now();
    let n = drivers.len() as u64;
    let share = |i: usize| count / n + u64::from((i as u64) < count % n);
    for (i, driver) in drivers.iter_mut().enumerate() {
        driver.send(share(i));
    }
    for (i, driver) in drivers.iter_mut().enumerate() {
        driver.finish(share(i));
    }
    started.elapsed()
}

impl Drop for Driver {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
