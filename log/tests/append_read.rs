//! Appends, reads, reopen, truncation, purge and the meta file, through the public API.
#![allow(
    clippy::unwrap_used,
    clippy::cast_possible_truncation,
    reason = "test helpers panic on failure; sizes are small"
)]

mod common;

use std::sync::{Arc, mpsc};

use common::{Bytes, append_durably, encode, read_all, small_options, value, values};
use keel_log::{Durability, Encoded, Entry, Error, Log, LogId, Options, SyncPolicy};

#[test]
fn records_are_readable_when_append_returns_and_after_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let log = Log::<Bytes>::open(dir.path(), small_options()).unwrap();
    let values = values(0..300, 0);
    let encoded: Vec<_> = values.iter().map(encode).collect();
    let refs: Vec<_> = encoded.iter().collect();
    let appended = log.append_next(1, &refs).unwrap();
    assert_eq!(appended.last, Some(LogId::new(1, 299)));
    assert_eq!(
        log.get(150).unwrap().unwrap().as_slice(),
        values[150].as_slice()
    );
    assert_eq!(appended.ticket.wait().unwrap(), Durability::Synced);
    drop(log);

    let log = Log::<Bytes>::open(dir.path(), small_options()).unwrap();
    let all = read_all(&log);
    assert_eq!(all.len(), 300);
    for (i, (id, bytes)) in all.iter().enumerate() {
        assert_eq!(*id, LogId::new(1, i as u64));
        assert_eq!(bytes, &values[i]);
    }
    let segments = count_files(dir.path(), ".seg");
    assert!(
        segments > 1,
        "300 records of up to 700 bytes roll 64 KiB segments"
    );
}

#[test]
fn caller_given_indexes_may_start_at_zero_or_anywhere() {
    let dir = tempfile::tempdir().unwrap();
    let log = Log::<Bytes>::open(dir.path(), small_options()).unwrap();
    append_durably(&log, 3, 1000, &[value(0, 0), value(1, 0)]);
    assert_eq!(log.state().unwrap().first_index, Some(1000));
    assert_eq!(log.state().unwrap().last, Some(LogId::new(3, 1001)));
    assert!(log.get(999).unwrap().is_none());
    let other = tempfile::tempdir().unwrap();
    let zero = Log::<Bytes>::open(other.path(), small_options()).unwrap();
    append_durably(&zero, 0, 0, &[value(0, 0)]);
    assert_eq!(zero.get(0).unwrap().unwrap().id(), LogId::new(0, 0));
}

#[test]
fn gaps_term_regressions_and_oversized_records_are_refused_without_writing() {
    let dir = tempfile::tempdir().unwrap();
    let log = Log::<Bytes>::open(dir.path(), small_options()).unwrap();
    append_durably(&log, 2, 0, &[value(0, 0)]);
    let payload = encode(&value(1, 0));
    let gap = log.append(&[Entry {
        id: LogId::new(2, 5),
        payload: &payload,
    }]);
    assert!(matches!(
        gap,
        Err(Error::NonContiguous {
            expected: 1,
            got: 5
        })
    ));
    let regress = log.append(&[Entry {
        id: LogId::new(1, 1),
        payload: &payload,
    }]);
    assert!(matches!(regress, Err(Error::TermRegression { .. })));
    let big = Encoded::new(&vec![0u8; 9000]).unwrap();
    let too_large = log.append(&[Entry {
        id: LogId::new(2, 1),
        payload: &big,
    }]);
    assert!(matches!(
        too_large,
        Err(Error::RecordTooLarge {
            limit_bytes: 8192,
            ..
        })
    ));
    assert_eq!(read_all(&log).len(), 1);
    append_durably(&log, 2, 1, &[value(1, 0)]);
}

#[test]
fn a_second_open_of_the_same_directory_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let _log = Log::<Bytes>::open(dir.path(), small_options()).unwrap();
    let second = Log::<Bytes>::open(dir.path(), small_options());
    assert!(matches!(second, Err(Error::Locked { .. })));
}

#[test]
fn invalid_options_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let options = Options {
        segment_size_bytes: 1000,
        ..Options::default()
    };
    assert!(matches!(
        Log::<Bytes>::open(dir.path(), options),
        Err(Error::InvalidOptions { .. })
    ));
}

#[test]
fn truncation_removes_the_suffix_durably() {
    let dir = tempfile::tempdir().unwrap();
    let log = Log::<Bytes>::open(dir.path(), small_options()).unwrap();
    let written = values(0..200, 0);
    append_durably(&log, 1, 0, &written);
    let held = log.get(150).unwrap().unwrap();
    log.truncate_from(120).unwrap();
    assert_eq!(
        held.as_slice(),
        written[150].as_slice(),
        "a held record stays readable"
    );
    assert!(log.get(120).unwrap().is_none());
    let replacement = values(120..130, 9);
    append_durably(&log, 2, 120, &replacement);
    drop((held, log));

    let log = Log::<Bytes>::open(dir.path(), small_options()).unwrap();
    let all = read_all(&log);
    assert_eq!(all.len(), 130);
    assert_eq!(all[119], (LogId::new(1, 119), written[119].clone()));
    assert_eq!(all[125], (LogId::new(2, 125), value(125, 9)));
}

#[test]
fn purge_past_the_end_leaves_an_empty_log_that_remembers_the_mark() {
    let dir = tempfile::tempdir().unwrap();
    let log = Log::<Bytes>::open(dir.path(), small_options()).unwrap();
    append_durably(&log, 1, 0, &values(0..50, 0));
    log.purge_upto(LogId::new(4, 100)).unwrap();
    let state = log.state().unwrap();
    assert_eq!(state.first_index, None);
    assert_eq!(state.last, Some(LogId::new(4, 100)));
    assert_eq!(state.purged, Some(LogId::new(4, 100)));
    drop(log);

    let log = Log::<Bytes>::open(dir.path(), small_options()).unwrap();
    assert_eq!(log.state().unwrap().last, Some(LogId::new(4, 100)));
    let payload = encode(&value(101, 0));
    let wrong = log.append(&[Entry {
        id: LogId::new(4, 50),
        payload: &payload,
    }]);
    assert!(matches!(
        wrong,
        Err(Error::NonContiguous { expected: 101, .. })
    ));
    append_durably(&log, 4, 101, &[value(101, 0)]);
    assert_eq!(read_all(&log), vec![(LogId::new(4, 101), value(101, 0))]);
}

#[test]
fn purge_drops_whole_segments_and_keeps_the_rest() {
    let dir = tempfile::tempdir().unwrap();
    let log = Log::<Bytes>::open(dir.path(), small_options()).unwrap();
    let values = values(0..400, 0);
    append_durably(&log, 1, 0, &values);
    let count_segments = || count_files(dir.path(), ".seg");
    let before = count_segments();
    log.purge_upto(LogId::new(1, 299)).unwrap();
    assert!(
        count_segments() < before,
        "whole segments below the mark are removed"
    );
    assert_eq!(log.state().unwrap().first_index, Some(300));
    assert!(log.get(299).unwrap().is_none());
    assert_eq!(
        log.reader().range(250..300).count(),
        0,
        "a range wholly before the first record is empty"
    );
    let straddling: Vec<u64> = log
        .reader()
        .range(250..302)
        .map(|r| r.unwrap().id().index)
        .collect();
    assert_eq!(straddling, [300, 301]);
    assert!(matches!(log.truncate_from(200), Err(Error::Purged { .. })));
    drop(log);
    let log = Log::<Bytes>::open(dir.path(), small_options()).unwrap();
    let all = read_all(&log);
    assert_eq!(all.first().unwrap().0.index, 300);
    assert_eq!(all.len(), 100);
}

#[test]
fn vote_and_committed_survive_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let options = Options {
        sync: SyncPolicy::Relaxed,
        ..small_options()
    };
    let log = Log::<Bytes>::open(dir.path(), options.clone()).unwrap();
    assert_eq!(log.vote(), None);
    log.save_vote(b"term 3, voted for 2").unwrap();
    log.save_committed(b"3-17").unwrap();
    assert!(matches!(
        log.save_vote(&[0; 2000]),
        Err(Error::MetaBlobTooLarge { .. })
    ));
    drop(log);
    let log = Log::<Bytes>::open(dir.path(), options).unwrap();
    assert_eq!(log.vote().as_deref(), Some(&b"term 3, voted for 2"[..]));
    assert_eq!(log.committed().as_deref(), Some(&b"3-17"[..]));
}

#[test]
fn relaxed_sync_is_reported_as_page_cache_only() {
    let dir = tempfile::tempdir().unwrap();
    let options = Options {
        sync: SyncPolicy::Relaxed,
        ..small_options()
    };
    let log = Log::<Bytes>::open(dir.path(), options).unwrap();
    assert!(!log.sync_policy().is_durable());
    let payload = encode(&value(0, 0));
    let appended = log.append_next(1, &[&payload]).unwrap();
    assert_eq!(appended.ticket.wait().unwrap(), Durability::PageCache);
}

#[test]
fn durability_callbacks_fire_once_after_the_sync() {
    let dir = tempfile::tempdir().unwrap();
    let log = Arc::new(Log::<Bytes>::open(dir.path(), small_options()).unwrap());
    let (tx, rx) = mpsc::channel();
    for i in 0..100u64 {
        let payload = encode(&value(i, 0));
        let appended = log.append_next(1, &[&payload]).unwrap();
        let tx = tx.clone();
        appended
            .ticket
            .on_durable(move |outcome| tx.send((i, outcome.unwrap())).unwrap());
    }
    drop(tx);
    let mut seen: Vec<_> = rx.iter().collect();
    seen.sort_by_key(|s| s.0);
    assert_eq!(seen.len(), 100);
    assert!(
        seen.iter()
            .enumerate()
            .all(|(i, s)| s.0 == i as u64 && s.1 == Durability::Synced)
    );
}

#[test]
fn concurrent_readers_see_a_consistent_prefix_while_the_writer_appends() {
    let dir = tempfile::tempdir().unwrap();
    let log = Log::<Bytes>::open(dir.path(), small_options()).unwrap();
    let reader = log.reader();
    std::thread::scope(|scope| {
        let check = scope.spawn(move || {
            let mut checked = 0u64;
            while checked < 2000 {
                if let Some(last) = reader.last_index() {
                    for i in checked..=last {
                        let record = reader.get(i).unwrap().expect("published records stay");
                        assert_eq!(record.as_slice(), value(i, 0).as_slice());
                    }
                    checked = last + 1;
                }
                std::thread::yield_now();
            }
        });
        for chunk in (0..2000u64).collect::<Vec<_>>().chunks(50) {
            let values: Vec<_> = chunk.iter().map(|&i| value(i, 0)).collect();
            let encoded: Vec<_> = values.iter().map(encode).collect();
            let refs: Vec<_> = encoded.iter().collect();
            log.append_next(1, &refs).unwrap();
        }
        check.join().unwrap();
    });
}

#[test]
fn prepared_segments_are_used_and_leftovers_removed_on_open() {
    let dir = tempfile::tempdir().unwrap();
    let options = Options {
        prepare_ahead: true,
        ..small_options()
    };
    let log = Log::<Bytes>::open(dir.path(), options.clone()).unwrap();
    append_durably(&log, 1, 0, &values(0..300, 0));
    drop(log);
    let log = Log::<Bytes>::open(dir.path(), options).unwrap();
    assert_eq!(read_all(&log).len(), 300);
    let leftovers = count_files(dir.path(), ".prep");
    assert!(leftovers <= 1, "at most the one being prepared now");
}

fn count_files(dir: &std::path::Path, suffix: &str) -> usize {
    std::fs::read_dir(dir)
        .unwrap()
        .filter(|e| {
            e.as_ref()
                .unwrap()
                .file_name()
                .to_str()
                .unwrap()
                .ends_with(suffix)
        })
        .count()
}

#[test]
fn purged_segments_are_recycled_and_their_old_bytes_never_read() {
    let dir = tempfile::tempdir().unwrap();
    let log = Log::<Bytes>::open(dir.path(), small_options()).unwrap();
    append_durably(&log, 1, 0, &values(0..600, 0));
    let held = log.get(0).unwrap().unwrap();
    log.purge_upto(LogId::new(1, 450)).unwrap();
    let recycled = count_files(dir.path(), ".prep");
    assert!(
        recycled >= 1,
        "purged segments nobody maps are kept for reuse"
    );
    assert_eq!(
        held.as_slice(),
        value(0, 0).as_slice(),
        "a held segment is not recycled"
    );
    append_durably(&log, 1, 600, &values(600..900, 3));
    assert!(
        count_files(dir.path(), ".prep") < recycled,
        "rolls reuse recycled files"
    );
    drop((held, log));
    let log = Log::<Bytes>::open(dir.path(), small_options()).unwrap();
    let all = read_all(&log);
    assert_eq!(all.first().unwrap().0.index, 451);
    assert_eq!(all.len(), 900 - 451);
    assert!(
        all.iter()
            .all(|(id, bytes)| *bytes == value(id.index, if id.index < 600 { 0 } else { 3 }))
    );
}

#[test]
fn replacements_after_truncation_may_carry_a_lower_term() {
    let dir = tempfile::tempdir().unwrap();
    let log = Log::<Bytes>::open(dir.path(), small_options()).unwrap();
    append_durably(&log, 1, 0, &values(0..10, 0));
    append_durably(&log, 3, 10, &values(10..20, 0));
    log.truncate_from(10).unwrap();
    append_durably(&log, 2, 10, &[value(10, 5)]);
    drop(log);
    let log = Log::<Bytes>::open(dir.path(), small_options()).unwrap();
    let all = read_all(&log);
    assert_eq!(all.len(), 11);
    assert_eq!(all[10], (LogId::new(2, 10), value(10, 5)));
}

#[test]
fn reopening_with_larger_segments_keeps_writing_within_the_existing_tail() {
    let dir = tempfile::tempdir().unwrap();
    let log = Log::<Bytes>::open(dir.path(), small_options()).unwrap();
    append_durably(&log, 1, 0, &values(0..10, 0));
    drop(log);
    let larger = Options {
        segment_size_bytes: 256 * 1024,
        ..small_options()
    };
    let log = Log::<Bytes>::open(dir.path(), larger.clone()).unwrap();
    append_durably(&log, 1, 10, &values(10..600, 0));
    drop(log);
    let log = Log::<Bytes>::open(dir.path(), larger).unwrap();
    let all = read_all(&log);
    assert_eq!(all.len(), 600);
    assert!(all.iter().all(|(id, bytes)| *bytes == value(id.index, 0)));
}

#[test]
fn callbacks_may_call_back_into_the_log_across_a_roll() {
    let dir = tempfile::tempdir().unwrap();
    let log = Arc::new(Log::<Bytes>::open(dir.path(), small_options()).unwrap());
    let (tx, rx) = mpsc::channel();
    for i in 0..300u64 {
        let payload = encode(&value(i, 0));
        let appended = log.append_next(1, &[&payload]).unwrap();
        let (tx, inner) = (tx.clone(), Arc::clone(&log));
        appended.ticket.on_durable(move |outcome| {
            outcome.unwrap();
            tx.send((i, inner.vote(), inner.reader().last_index()))
                .unwrap();
        });
    }
    drop(tx);
    let seen: Vec<_> = rx.iter().collect();
    assert_eq!(
        seen.len(),
        300,
        "every callback ran, none deadlocked on the writer's lock"
    );
    assert!(
        count_files(dir.path(), ".seg") > 1,
        "the appends rolled segments"
    );
}

#[test]
fn a_purge_at_the_last_possible_index_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let log = Log::<Bytes>::open(dir.path(), small_options()).unwrap();
    let refused = log.purge_upto(LogId::new(1, u64::MAX));
    assert!(matches!(
        refused,
        Err(Error::IndexOutOfRange { index: u64::MAX })
    ));
    append_durably(&log, 1, 0, &[value(0, 0)]);
}

#[test]
fn a_meta_file_left_half_created_does_not_block_the_first_open() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("meta.tmp"), [0u8; 100]).unwrap();
    let log = Log::<Bytes>::open(dir.path(), small_options()).unwrap();
    append_durably(&log, 1, 0, &[value(0, 0)]);
    drop(log);
    assert!(!dir.path().join("meta.tmp").exists());
    assert_eq!(
        read_all(&Log::<Bytes>::open(dir.path(), small_options()).unwrap()).len(),
        1
    );
}

#[test]
fn concurrent_appenders_waiters_and_callbacks_all_complete() {
    const THREADS: u64 = 4;
    const APPENDS: u64 = 200;
    let dir = tempfile::tempdir().unwrap();
    let log = Arc::new(Log::<Bytes>::open(dir.path(), small_options()).unwrap());
    let (tx, rx) = mpsc::channel();
    std::thread::scope(|scope| {
        for thread in 0..THREADS {
            let (log, tx) = (Arc::clone(&log), tx.clone());
            scope.spawn(move || {
                for i in 0..APPENDS {
                    let payload = encode(&value(thread * APPENDS + i, 1));
                    let appended = log.append_next(1, &[&payload]).unwrap();
                    if i % 2 == 0 {
                        assert_eq!(appended.ticket.wait().unwrap(), Durability::Synced);
                        tx.send(()).unwrap();
                    } else {
                        let tx = tx.clone();
                        appended.ticket.on_durable(move |outcome| {
                            assert_eq!(outcome.unwrap(), Durability::Synced);
                            tx.send(()).unwrap();
                        });
                    }
                }
            });
        }
    });
    drop(tx);
    assert_eq!(
        rx.iter().count() as u64,
        THREADS * APPENDS,
        "every append was acknowledged"
    );
    drop(Arc::into_inner(log).expect("the threads are done"));
    let log = Log::<Bytes>::open(dir.path(), small_options()).unwrap();
    assert_eq!(read_all(&log).len() as u64, THREADS * APPENDS);
}
