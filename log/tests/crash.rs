//! Crash tests on the fault-injecting file layer: unsynced bytes are dropped or torn at a
//! simulated power cut, syncs fail on demand. Every durably acknowledged record survives,
//! nothing is invented, and a failed sync poisons the log.
#![allow(
    clippy::unwrap_used,
    clippy::cast_possible_truncation,
    reason = "test helpers panic on failure; sizes are small"
)]

mod common;

use std::sync::Arc;

use common::{Bytes, encode, entries, read_all, small_options, value};
use keel_log::{Error, Log, LogId, Options, fs::faulty::FaultyFs};

/// A small deterministic generator for the workload.
struct Rng(u64);

impl Rng {
    fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % n
    }
}

fn options() -> Options {
    Options {
        prepare_ahead: true,
        ..small_options()
    }
}

/// The records the log should hold, and how many of them are known durable.
struct Expected {
    /// Every record from index 0; those below `purged` are gone from the log.
    model: Vec<(LogId, Bytes)>,
    purged: usize,
    acknowledged: usize,
}

impl Expected {
    /// Checks what recovery returned and adopts it: a prefix of the model past the purge
    /// mark, at least as long as what was acknowledged.
    fn check_recovered(&mut self, log: &Log<Bytes>, seed: u64) {
        let recovered = read_all(log);
        let end = self.purged + recovered.len();
        assert!(
            end >= self.acknowledged,
            "seed {seed}: acknowledged records lost"
        );
        assert!(end <= self.model.len(), "seed {seed}: records invented");
        assert_eq!(
            recovered[..],
            self.model[self.purged..end],
            "seed {seed}: content differs"
        );
        self.model.truncate(end);
        self.acknowledged = end;
    }

    fn truncate(&mut self, log: &Log<Bytes>, rng: &mut Rng) {
        let live = (self.model.len() - self.purged) as u64;
        let keep = self.purged + 1 + usize::try_from(rng.below(live)).unwrap();
        log.truncate_from(keep as u64).unwrap();
        self.model.truncate(keep);
        self.acknowledged = self.model.len();
    }

    fn purge(&mut self, log: &Log<Bytes>, rng: &mut Rng) {
        let live = (self.model.len() - self.purged) as u64;
        let upto = self.purged + usize::try_from(rng.below(live)).unwrap();
        log.purge_upto(self.model[upto].0).unwrap();
        self.purged = upto + 1;
        self.acknowledged = self.acknowledged.max(self.purged);
    }

    fn append(&mut self, log: &Log<Bytes>, rng: &mut Rng, term: u64, salt: u64) {
        let first = self.model.len() as u64;
        let count = rng.below(60) + 1;
        let values: Vec<_> = (first..first + count).map(|i| value(i, salt)).collect();
        let encoded: Vec<_> = values.iter().map(encode).collect();
        let entries = entries(term, first, &encoded);
        let appended = log.append(&entries).unwrap();
        self.model.extend(
            values
                .into_iter()
                .zip(first..)
                .map(|(v, i)| (LogId::new(term, i), v)),
        );
        if rng.below(3) == 0 {
            appended.ticket.wait().unwrap();
            self.acknowledged = self.model.len();
        }
    }
}

/// Runs random workloads with a power cut after each, and checks what recovery returns.
fn crash_round(seed: u64) {
    let dir = tempfile::tempdir().unwrap();
    let mut rng = Rng(seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1);
    let mut expected = Expected {
        model: Vec::new(),
        purged: 0,
        acknowledged: 0,
    };
    for round in 0..3u64 {
        let fs = FaultyFs::new();
        let log = Log::<Bytes>::open_with_fs(dir.path(), options(), Arc::new(fs.clone())).unwrap();
        expected.check_recovered(&log, seed);
        for _ in 0..rng.below(30) + 5 {
            let live = expected.model.len() > expected.purged + 1;
            match rng.below(12) {
                0 if live => expected.truncate(&log, &mut rng),
                1 if live => expected.purge(&log, &mut rng),
                _ => expected.append(&log, &mut rng, round + 1, seed + round),
            }
        }
        fs.crash(seed ^ round).unwrap();
        drop(log);
    }
    let log = Log::<Bytes>::open(dir.path(), options()).unwrap();
    expected.check_recovered(&log, seed);
}

#[test]
fn acknowledged_records_survive_power_cuts_and_nothing_is_invented() {
    let seeds: u64 = std::env::var("KEEL_CRASH_SEEDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(60);
    for seed in 0..seeds {
        crash_round(seed);
    }
}

/// A log on a fault-injecting file system holding one durable record, `value(0, 0)`.
fn faulty_log() -> (tempfile::TempDir, FaultyFs, Log<Bytes>) {
    let dir = tempfile::tempdir().unwrap();
    let fs = FaultyFs::new();
    let log =
        Log::<Bytes>::open_with_fs(dir.path(), small_options(), Arc::new(fs.clone())).unwrap();
    let first = encode(&value(0, 0));
    log.append_next(1, &[&first])
        .unwrap()
        .ticket
        .wait()
        .unwrap();
    (dir, fs, log)
}

#[test]
fn a_failed_sync_poisons_the_log_and_is_never_retried() {
    let (dir, fs, log) = faulty_log();
    fs.fail_next_syncs(1);
    let second = encode(&value(1, 0));
    let appended = log.append_next(1, &[&second]).unwrap();
    assert!(matches!(
        appended.ticket.wait(),
        Err(Error::Poisoned {
            op: "fdatasync",
            ..
        })
    ));
    let third = encode(&value(2, 0));
    assert!(matches!(
        log.append_next(1, &[&third]),
        Err(Error::Poisoned { .. })
    ));
    assert!(matches!(log.truncate_from(0), Err(Error::Poisoned { .. })));
    fs.crash(7).unwrap();
    drop(log);
    let log = Log::<Bytes>::open(dir.path(), small_options()).unwrap();
    let recovered = read_all(&log);
    assert_eq!(
        recovered[0],
        (LogId::new(1, 0), value(0, 0)),
        "the acknowledged record survives"
    );
    assert!(recovered.len() <= 2);
}

#[test]
fn a_failed_write_poisons_the_log() {
    let (_dir, fs, log) = faulty_log();
    let payload = encode(&value(1, 0));
    fs.fail_next_writes(1);
    let error = log.append_next(1, &[&payload]).unwrap_err();
    assert!(matches!(error, Error::Io { op: "pwrite", .. }), "{error}");
    assert!(matches!(
        log.append_next(1, &[&payload]),
        Err(Error::Poisoned { .. })
    ));
}

#[test]
fn a_purge_past_records_lost_in_a_power_cut_leaves_a_log_that_reopens() {
    for seed in 0..30 {
        let (dir, fs, log) = faulty_log();
        let values: Vec<_> = (1..20).map(|i| value(i, 0)).collect();
        let encoded: Vec<_> = values.iter().map(encode).collect();
        log.append(&entries(1, 1, &encoded[..4]))
            .unwrap()
            .ticket
            .wait()
            .unwrap();
        log.append(&entries(1, 5, &encoded[4..])).unwrap();
        log.purge_upto(LogId::new(1, 15)).unwrap();
        fs.crash(seed).unwrap();
        drop(log);
        for reopen in 0..2 {
            let log = Log::<Bytes>::open(dir.path(), small_options()).unwrap_or_else(|e| {
                panic!("seed {seed}, reopen {reopen}: {e}");
            });
            let state = log.state().unwrap();
            assert_eq!(state.purged, Some(LogId::new(1, 15)), "seed {seed}");
            assert!(
                read_all(&log).iter().all(|(id, _)| id.index > 15),
                "seed {seed}"
            );
        }
    }
}
