//! Crash tests on the fault-injecting file layer: unsynced bytes are dropped or torn at a
//! simulated power cut, syncs fail on demand. Every durably acknowledged record survives,
//! nothing is invented, and a failed sync poisons the log.

mod common;

use std::sync::Arc;

use common::{Bytes, encode, read_all, small_options, value};
use keel_log::{Entry, Error, Log, LogId, Options, fs::faulty::FaultyFs};

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
    Options { prepare_ahead: true, ..small_options() }
}

/// Runs a random workload, cuts the power, and checks what recovery returns.
fn crash_round(seed: u64) {
    let dir = tempfile::tempdir().unwrap();
    let mut rng = Rng(seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1);
    let mut model: Vec<(LogId, Bytes)> = Vec::new();
    let mut acknowledged = 0usize;
    let mut reopen_at = 0;
    for round in 0..3u64 {
        let fs = FaultyFs::new();
        let log = Log::<Bytes>::open_with_fs(dir.path(), options(), Arc::new(fs.clone())).unwrap();
        let recovered = read_all(&log);
        assert!(recovered.len() >= acknowledged, "seed {seed} round {round}: acknowledged lost");
        assert!(recovered.len() <= model.len(), "seed {seed} round {round}: records invented");
        assert_eq!(recovered[..], model[..recovered.len()], "seed {seed}: content differs");
        model.truncate(recovered.len());
        acknowledged = model.len();
        reopen_at = reopen_at.max(model.len());
        let term = round + 1;
        for _ in 0..rng.below(30) + 5 {
            match rng.below(10) {
                0 if !model.is_empty() => {
                    let keep = usize::try_from(rng.below(model.len() as u64 + 1)).unwrap();
                    let index = model.get(keep).map_or(model.len() as u64, |r| r.0.index);
                    log.truncate_from(index).unwrap();
                    model.truncate(keep);
                    acknowledged = model.len();
                }
                _ => {
                    let first = model.len() as u64;
                    let count = rng.below(60) + 1;
                    let values: Vec<_> = (first..first + count).map(|i| value(i, seed + round)).collect();
                    let encoded: Vec<_> = values.iter().map(encode).collect();
                    let entries: Vec<_> = encoded
                        .iter()
                        .zip(first..)
                        .map(|(payload, index)| Entry { id: LogId::new(term, index), payload })
                        .collect();
                    let appended = log.append(&entries).unwrap();
                    model.extend(values.into_iter().zip(first..).map(|(v, i)| (LogId::new(term, i), v)));
                    if rng.below(3) == 0 {
                        appended.ticket.wait().unwrap();
                        acknowledged = model.len();
                    }
                }
            }
        }
        fs.crash(seed ^ round).unwrap();
        drop(log);
    }
    let log = Log::<Bytes>::open(dir.path(), options()).unwrap();
    let recovered = read_all(&log);
    assert!(recovered.len() >= acknowledged && recovered.len() <= model.len(), "seed {seed}");
    assert_eq!(recovered[..], model[..recovered.len()], "seed {seed}");
}

#[test]
fn acknowledged_records_survive_power_cuts_and_nothing_is_invented() {
    let seeds: u64 = std::env::var("KEEL_CRASH_SEEDS").ok().and_then(|s| s.parse().ok()).unwrap_or(60);
    for seed in 0..seeds {
        crash_round(seed);
    }
}

#[test]
fn a_failed_sync_poisons_the_log_and_is_never_retried() {
    let dir = tempfile::tempdir().unwrap();
    let fs = FaultyFs::new();
    let log = Log::<Bytes>::open_with_fs(dir.path(), small_options(), Arc::new(fs.clone())).unwrap();
    let first = encode(&value(0, 0));
    log.append_next(1, &[&first]).unwrap().ticket.wait().unwrap();
    fs.fail_next_syncs(1);
    let second = encode(&value(1, 0));
    let appended = log.append_next(1, &[&second]).unwrap();
    assert!(matches!(appended.ticket.wait(), Err(Error::Poisoned { op: "fdatasync", .. })));
    let third = encode(&value(2, 0));
    assert!(matches!(log.append_next(1, &[&third]), Err(Error::Poisoned { .. })));
    assert!(matches!(log.truncate_from(0), Err(Error::Poisoned { .. })));
    fs.crash(7).unwrap();
    drop(log);
    let log = Log::<Bytes>::open(dir.path(), small_options()).unwrap();
    let recovered = read_all(&log);
    assert_eq!(recovered[0], (LogId::new(1, 0), value(0, 0)), "the acknowledged record survives");
    assert!(recovered.len() <= 2);
}

#[test]
fn a_failed_write_poisons_the_log() {
    let dir = tempfile::tempdir().unwrap();
    let fs = FaultyFs::new();
    let log = Log::<Bytes>::open_with_fs(dir.path(), small_options(), Arc::new(fs.clone())).unwrap();
    let payload = encode(&value(0, 0));
    log.append_next(1, &[&payload]).unwrap().ticket.wait().unwrap();
    fs.fail_next_writes(1);
    let error = log.append_next(1, &[&payload]).unwrap_err();
    assert!(matches!(error, Error::Io { op: "pwrite", .. }), "{error}");
    assert!(matches!(log.append_next(1, &[&payload]), Err(Error::Poisoned { .. })));
}
