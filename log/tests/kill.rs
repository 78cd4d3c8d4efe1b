//! SIGKILL at seeded random moments, recovery included: a child process (this test binary,
//! re-executed) opens the log and appends, reporting each durable batch on stdout; it is
//! killed, and the parent checks, on a copy of the directory, that every reported record is
//! there with its bytes, in order, and nothing else. The copy leaves the killed state itself
//! to the next round's child, whose recovery has to repair it (and may be killed doing so).
//!
//! Each round kills the child in one of two ways, drawn from the seed:
//! - **at a write-path operation**: the child opens the log through a file system that
//!   counts every write, `fdatasync`, create, rename, remove and directory `fsync`, and
//!   SIGKILLs its own process at the `k`-th, `k` drawn from the seed (segment preparation,
//!   activation, metadata stores, batch writes and syncs). A kill at a write first writes a
//!   seeded prefix of it, cut at a page boundary: the kernel checks for a fatal signal
//!   between the pages of a long write, so that is what a SIGKILL during one leaves;
//! - **after a random delay**: the parent SIGKILLs the child a random time after it
//!   finished opening, wherever it is then (mid-`pwrite`, mid-`fdatasync`, between batches).
//!
//! Kills of recovery itself: the parent's check counts the write-path operations recovery
//! makes on the copy. When there are some, the next round kills the child at one of exactly
//! those (until one such kill happened; then half the time). What a SIGKILL leaves for
//! recovery to repair is a prepared segment file or a metadata temporary file of a kill
//! mid-roll, which recovery removes. A torn batch needs no repair: nothing valid follows the
//! first bad frame, and recovery stops there. Torn tails with valid frames beyond them come
//! only from power cuts, which `crash.rs` simulates.
//!
//! The seed comes from `KEEL_KILL_SEED` or the operating system and is printed first and in
//! every failure message. The run reports how many kills landed in a recovery that was
//! repairing and how many after opening; it goes on past its 24 rounds (up to 64) until
//! both happened, and fails if either count is still zero (a run that never killed a
//! repair would not test what it claims).
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
    io::{self, BufRead, BufReader, IoSlice, Write},
    os::unix::process::ExitStatusExt,
    path::Path,
    process::{Command, Stdio},
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use common::{Bytes, encode, read_all, value};
use keel_log::{
    Log, LogId, Options,
    fs::{FileIo, Fs, StdFs},
};
use rand::{Rng, SeedableRng, rngs::StdRng};

/// The signal a kill sends.
const SIGKILL: i32 = 9;

const CHILD_DIR: &str = "KEEL_KILL_CHILD_DIR";
/// In the child: `op:tear`, SIGKILL itself at write-path operation `op` (1-based) after
/// writing `tear` ‰ of it, if it is a write; unset, never.
const KILL_AT_OP: &str = "KEEL_KILL_AT_OP";
const SEED: &str = "KEEL_KILL_SEED";
const SALT: u64 = 7;
/// Rounds of a run, and the most it goes on for until both phases were killed.
const ROUNDS: usize = 24;
const ROUNDS_MAX: usize = 64;
/// Bounds of the operation a child kills itself at, outside a repairing recovery.
const KILL_OP_MAX: u64 = 200;
/// Bounds of the delay after which the parent kills a child that finished opening.
const KILL_DELAY_MAX: Duration = Duration::from_millis(60);
/// Bounds on the child's work, so a lost parent never leaves it running for long.
const CHILD_RECORDS_MAX: u64 = 2_000_000;
const CHILD_TIME_MAX: Duration = Duration::from_secs(60);
/// The child's line once `Log::open` returned.
const OPENED: &str = "opened";
const PAGE_BYTES: u64 = 4096;

/// Segments prepared on the appending thread (no preparer thread), so every write-path
/// operation happens in an order the seed reproduces.
fn options() -> Options {
    Options {
        segment_size_bytes: 256 * 1024,
        record_size_max_bytes: 4096,
        prepare_ahead: false,
        ..Options::default()
    }
}

/// Counts write-path operations; at the configured one, the process dies.
#[derive(Debug)]
struct KillSwitch {
    done: AtomicU64,
    kill_at: Option<(u64, u64)>,
}

impl KillSwitch {
    fn counting() -> Self {
        Self {
            done: AtomicU64::new(0),
            kill_at: None,
        }
    }

    /// Counts one operation; `Some(tear)` if the process must die at it.
    fn fatal(&self) -> Option<u64> {
        let op = self.done.fetch_add(1, Ordering::SeqCst) + 1;
        self.kill_at
            .and_then(|(at, tear)| (at == op).then_some(tear))
    }

    fn die() -> ! {
        rustix::process::kill_process(rustix::process::getpid(), rustix::process::Signal::KILL)
            .unwrap();
        unreachable!("SIGKILL cannot be caught");
    }
}

/// [`StdFs`] with a [`KillSwitch`] at every write-path operation.
#[derive(Debug)]
struct KillingFs(Arc<KillSwitch>);

#[derive(Debug)]
struct KillingFile(Arc<KillSwitch>, Arc<dyn FileIo>);

impl KillingFile {
    /// Writes the first `tear_permille` ‰ of `buf`, cut at a page boundary of the file,
    /// and dies.
    fn torn_write(&self, buf: &[u8], offset: u64, tear_permille: u64) -> ! {
        let wanted = offset + buf.len() as u64 * tear_permille / 1000;
        let cut = (wanted / PAGE_BYTES * PAGE_BYTES).max(offset);
        self.1
            .write_all_at(&buf[..(cut - offset) as usize], offset)
            .unwrap();
        KillSwitch::die()
    }
}

impl FileIo for KillingFile {
    fn write_all_at(&self, buf: &[u8], offset: u64) -> io::Result<()> {
        if let Some(tear) = self.0.fatal() {
            self.torn_write(buf, offset, tear);
        }
        self.1.write_all_at(buf, offset)
    }

    fn write_vectored_at(&self, bufs: &[IoSlice<'_>], offset: u64) -> io::Result<usize> {
        if let Some(tear) = self.0.fatal() {
            let joined: Vec<u8> = bufs.iter().flat_map(|b| b.iter().copied()).collect();
            self.torn_write(&joined, offset, tear);
        }
        self.1.write_vectored_at(bufs, offset)
    }

    fn sync_data(&self) -> io::Result<()> {
        if self.0.fatal().is_some() {
            KillSwitch::die();
        }
        self.1.sync_data()
    }

    fn file(&self) -> &std::fs::File {
        self.1.file()
    }
}

impl KillingFs {
    fn check(&self) {
        if self.0.fatal().is_some() {
            KillSwitch::die();
        }
    }
}

impl Fs for KillingFs {
    fn create_new(&self, path: &Path) -> io::Result<Arc<dyn FileIo>> {
        self.check();
        let file = StdFs.create_new(path)?;
        Ok(Arc::new(KillingFile(Arc::clone(&self.0), file)))
    }

    fn open(&self, path: &Path) -> io::Result<Arc<dyn FileIo>> {
        let file = StdFs.open(path)?;
        Ok(Arc::new(KillingFile(Arc::clone(&self.0), file)))
    }

    fn rename(&self, from: &Path, to: &Path) -> io::Result<()> {
        self.check();
        StdFs.rename(from, to)
    }

    fn remove(&self, path: &Path) -> io::Result<()> {
        self.check();
        StdFs.remove(path)
    }

    fn sync_dir(&self, dir: &Path) -> io::Result<()> {
        self.check();
        StdFs.sync_dir(dir)
    }
}

fn open_counting(dir: &Path, switch: &Arc<KillSwitch>) -> Log<Bytes> {
    Log::<Bytes>::open_with_fs(dir, options(), Arc::new(KillingFs(Arc::clone(switch)))).unwrap()
}

fn child(dir: &Path) {
    let kill_at = std::env::var(KILL_AT_OP).ok().map(|v| {
        let (op, tear) = v.split_once(':').unwrap();
        (op.parse().unwrap(), tear.parse().unwrap())
    });
    let switch = Arc::new(KillSwitch {
        done: AtomicU64::new(0),
        kill_at,
    });
    let log = open_counting(dir, &switch);
    let mut stdout = std::io::stdout().lock();
    writeln!(stdout, "{OPENED}").unwrap();
    stdout.flush().unwrap();
    let mut next = log.state().unwrap().last.map_or(0, |id| id.index + 1);
    let started = Instant::now();
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
        batch = batch % 97 + 1;
    }
}

/// How a round kills its child.
#[derive(Debug, Clone, Copy)]
enum Kill {
    /// The child kills itself at its `op`th write-path operation, after writing `tear` ‰
    /// of it if it is a write.
    AtOperation { op: u64, tear: u64 },
    /// The parent kills the child this long after it finished opening.
    AfterOpening(Duration),
}

/// What one round's child reported before it died.
#[derive(Debug, Default)]
struct Reported {
    opened: bool,
    last_durable: Option<u64>,
}

impl Reported {
    fn line(&mut self, line: &str) {
        if line == OPENED {
            self.opened = true;
        } else {
            self.last_durable = Some(line.parse().unwrap());
        }
    }
}

fn run_round(exe: &Path, dir: &Path, kill: Kill) -> Reported {
    let mut command = Command::new(exe);
    command.env(CHILD_DIR, dir).stdout(Stdio::piped());
    if let Kill::AtOperation { op, tear } = kill {
        command.env(KILL_AT_OP, format!("{op}:{tear}"));
    }
    let mut child = command.spawn().unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let mut reported = Reported::default();
    if let Kill::AfterOpening(delay) = kill {
        for line in lines.by_ref() {
            reported.line(&line.unwrap());
            if reported.opened {
                break;
            }
        }
        std::thread::sleep(delay);
        // Killing a child that already died (a bounded child that finished) is harmless.
        let _ = child.kill();
    }
    let status = child.wait().unwrap();
    for line in lines {
        reported.line(&line.unwrap());
    }
    // A child told to kill itself must have died of SIGKILL (a panic in recovery exits
    // with 101 and is a failure, not a kill); one killed after opening may also have
    // finished its bounded work.
    assert!(
        status.signal() == Some(SIGKILL)
            || (matches!(kill, Kill::AfterOpening(_)) && status.success()),
        "a child killed at {kill:?} ended with {status}"
    );
    reported
}

/// Checks a copy of `dir` (leaving `dir` as the kill left it) and returns how many
/// write-path operations recovery made on it: the repairs the next child's recovery faces.
fn check_copy(dir: &Path, acknowledged: Option<u64>, context: &str) -> u64 {
    let copy = tempfile::tempdir().unwrap();
    for entry in std::fs::read_dir(dir).unwrap() {
        let entry = entry.unwrap();
        std::fs::copy(entry.path(), copy.path().join(entry.file_name())).unwrap();
    }
    let switch = Arc::new(KillSwitch::counting());
    let log = open_counting(copy.path(), &switch);
    let repairs = switch.done.load(Ordering::SeqCst);
    let all = read_all(&log);
    let last = all.last().map(|r| r.0.index);
    assert!(
        last >= acknowledged,
        "{context}: acknowledged {acknowledged:?}, found {last:?}"
    );
    for (i, (id, bytes)) in all.iter().enumerate() {
        assert_eq!(*id, LogId::new(1, i as u64), "{context}: records in order");
        assert_eq!(
            bytes,
            &value(i as u64, SALT),
            "{context}: record {i} intact"
        );
    }
    repairs
}

fn parent() {
    let seed: u64 = std::env::var(SEED).map_or_else(|_| rand::random(), |v| v.parse().unwrap());
    println!("kill test seed {seed} (rerun with {SEED}={seed})");
    let mut rng = StdRng::seed_from_u64(seed);
    let dir = tempfile::tempdir().unwrap();
    let exe = std::env::current_exe().unwrap();
    let mut acknowledged: Option<u64> = None;
    let mut repairs = 0;
    let (mut repairing_killed, mut after_opening) = (0, 0);
    let mut round = 0;
    while round < ROUNDS || (round < ROUNDS_MAX && (repairing_killed == 0 || after_opening == 0)) {
        let tear = rng.random_range(0..1000);
        // Until one repair was killed, every repair the run meets is; then half of them.
        let kill = if repairs > 0 && (repairing_killed == 0 || rng.random_bool(0.5)) {
            Kill::AtOperation {
                op: rng.random_range(1..=repairs),
                tear,
            }
        } else if rng.random_bool(0.5) {
            Kill::AtOperation {
                op: rng.random_range(1..=KILL_OP_MAX),
                tear,
            }
        } else {
            Kill::AfterOpening(rng.random_range(Duration::ZERO..=KILL_DELAY_MAX))
        };
        let reported = run_round(&exe, dir.path(), kill);
        if reported.opened {
            after_opening += 1;
        } else if repairs > 0 {
            repairing_killed += 1;
        }
        acknowledged = reported.last_durable.or(acknowledged);
        let context = format!("seed {seed}, round {round}, {kill:?}, reported {reported:?}");
        let first = round == 0;
        round += 1;
        repairs = if first && !reported.opened {
            // The first open of an empty directory creates the log: not a repair.
            0
        } else {
            check_copy(dir.path(), acknowledged, &context)
        };
    }
    println!(
        "{round} rounds; kills: {repairing_killed} inside a recovery that was repairing, \
         {after_opening} after opening; {} records acknowledged",
        acknowledged.map_or(0, |last| last + 1)
    );
    assert!(
        repairing_killed > 0 && after_opening > 0,
        "seed {seed}: {repairing_killed} kills of a repairing recovery, {after_opening} after \
         opening; the run proves nothing about the phase it never killed"
    );
}

fn main() {
    if let Some(dir) = std::env::var_os(CHILD_DIR) {
        child(Path::new(&dir));
        return;
    }
    parent();
    println!("test sigkill_at_random_moments_keeps_every_acknowledged_record ... ok");
    println!("1 passed, 0 failed");
}
