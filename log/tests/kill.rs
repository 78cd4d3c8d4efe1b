//! SIGKILL mid-append: a child process (this test binary, re-executed) appends and reports
//! each durable batch on stdout; the parent kills it at a random moment, reopens the log,
//! and checks that every reported record is there with its bytes, in order, and nothing
//! else. Three rounds on one directory, so recovery of a killed log is itself killed.
//!
//! `harness = false`: `main` is either the parent test or, with `KEEL_KILL_CHILD_DIR` set,
//! the child.
#![allow(
    clippy::unwrap_used,
    clippy::cast_possible_truncation,
    clippy::print_stdout,
    reason = "test helpers panic on failure; sizes are small"
)]

mod common;

use std::{
    io::{BufRead, BufReader, Write},
    path::Path,
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use common::{Bytes, encode, read_all, value};
use keel_log::{Log, LogId, Options};

const CHILD_DIR: &str = "KEEL_KILL_CHILD_DIR";
const SALT: u64 = 7;
/// Bounds on the child's work, so a lost parent never leaves it running for long.
const CHILD_RECORDS_MAX: u64 = 2_000_000;
const CHILD_TIME_MAX: Duration = Duration::from_secs(60);

fn options() -> Options {
    Options {
        segment_size_bytes: 256 * 1024,
        record_size_max_bytes: 4096,
        ..Options::default()
    }
}

fn child(dir: &Path) {
    let log = Log::<Bytes>::open(dir, options()).unwrap();
    let mut next = log.state().unwrap().last.map_or(0, |id| id.index + 1);
    let started = Instant::now();
    let mut stdout = std::io::stdout().lock();
    let mut batch = 1;
    while next < CHILD_RECORDS_MAX && started.elapsed() < CHILD_TIME_MAX {
        let values: Vec<_> = (next..next + batch).map(|i| value(i, SALT)).collect();
        let encoded: Vec<_> = values.iter().map(encode).collect();
        let refs: Vec<_> = encoded.iter().collect();
        let appended = log.append_next(1, &refs).unwrap();
        appended.ticket.wait().unwrap();
        next += batch;
        writeln!(stdout, "{}", next - 1).unwrap();
        stdout.flush().unwrap();
        batch = batch % 37 + 1;
    }
}

fn parent() {
    let dir = tempfile::tempdir().unwrap();
    let exe = std::env::current_exe().unwrap();
    let mut acknowledged: Option<u64> = None;
    for (round, kill_after) in [25usize, 160, 70].into_iter().enumerate() {
        let mut child = Command::new(&exe)
            .env(CHILD_DIR, dir.path())
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
        for _ in 0..kill_after {
            let line = lines.next().expect("child reports progress").unwrap();
            acknowledged = Some(line.parse().unwrap());
        }
        child.kill().unwrap();
        child.wait().unwrap();
        for line in lines {
            acknowledged = Some(line.unwrap().parse().unwrap());
        }
        let log = Log::<Bytes>::open(dir.path(), options()).unwrap();
        let all = read_all(&log);
        let last = all.last().map(|r| r.0.index);
        assert!(
            last >= acknowledged,
            "round {round}: acknowledged {acknowledged:?}, found {last:?}"
        );
        for (i, (id, bytes)) in all.iter().enumerate() {
            assert_eq!(
                *id,
                LogId::new(1, i as u64),
                "round {round}: records in order"
            );
            assert_eq!(
                bytes,
                &value(i as u64, SALT),
                "round {round}: record {i} intact"
            );
        }
    }
}

fn main() {
    if let Some(dir) = std::env::var_os(CHILD_DIR) {
        child(Path::new(&dir));
        return;
    }
    parent();
    println!("test sigkill_mid_append_keeps_every_acknowledged_record ... ok");
    println!("1 passed, 0 failed");
}
