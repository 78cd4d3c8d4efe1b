//! DBOS (the Python library, PyPI `dbos`, pinned in `benches/peers/dbos/requirements.txt`)
//! on a private PostgreSQL: its workflows run inside the application's own process, each
//! step's output committed to PostgreSQL (one `fsync`ed transaction) before the next step.
//!
//! Driver processes of `benches/peers/dbos/steps10.py` run the load, one per core: a
//! Python process runs its workflows under one interpreter lock, so a single one could not
//! use the second core that Keel's nodes use.

use std::path::{Path, PathBuf};
use std::time::Duration;

use super::driver::{Driver, run_split};
use super::postgres::Postgres;
use super::process::peers_dir;

/// DBOS's driver processes and their PostgreSQL.
pub(crate) struct Dbos {
    drivers: Vec<Driver>,
    _postgres: Postgres,
}

impl Dbos {
    /// Starts PostgreSQL and driver processes with `concurrency` threads between them.
    pub(crate) fn start(concurrency: usize) -> Self {
        let postgres = Postgres::start();
        let processes = std::thread::available_parallelism()
            .map_or(1, usize::from)
            .min(concurrency);
        let url = postgres.url("keel_peer_steps10");
        let drivers = (0..processes)
            .map(|i| {
                let threads = concurrency / processes + usize::from(i < concurrency % processes);
                Driver::start(
                    &python(),
                    &[peers_dir().join("dbos/steps10.py").display().to_string()],
                    &[
                        ("KEEL_PEER_DB_URL", url.clone()),
                        ("KEEL_PEER_CONCURRENCY", threads.to_string()),
                    ],
                )
            })
            .collect();
        Self {
            drivers,
            _postgres: postgres,
        }
    }

    /// Runs `count` workflows; returns the elapsed time.
    pub(crate) fn run(&mut self, count: u64) -> Duration {
        run_split(&mut self.drivers, count)
    }
}

/// The Python with DBOS installed (`.ci/run` makes this virtual environment).
fn python() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/peers-venv/bin/python")
}
