//! Bad input at open: flipped bits, truncated and missing files, foreign files, torn tails.
//! Every case gets a typed error or a clean recovery, never a panic, and no acknowledged
//! record is lost: after an error, undoing the damage opens the log with every record.
#![allow(
    clippy::unwrap_used,
    clippy::cast_possible_truncation,
    reason = "test helpers panic on failure; sizes are small"
)]

mod common;

use std::path::{Path, PathBuf};

use common::{Bytes, append_durably, read_all, segments, small_options, value};
use keel_log::{Error, Log, LogId, Options, RecoveryPolicy};

/// A log with several sealed segments and an unsealed tail, closed cleanly.
fn build(dir: &Path) -> Vec<(LogId, Bytes)> {
    let log = Log::<Bytes>::open(dir, small_options()).unwrap();
    let values: Vec<_> = (0..600).map(|i| value(i, 1)).collect();
    for (chunk_no, chunk) in values.chunks(40).enumerate() {
        append_durably(&log, 1, chunk_no as u64 * 40, chunk);
    }
    read_all(&log)
}

fn open(dir: &Path) -> keel_log::Result<Log<Bytes>> {
    Log::<Bytes>::open(dir, small_options())
}

fn flip(path: &Path, at: usize) {
    let mut bytes = std::fs::read(path).unwrap();
    bytes[at] ^= 0x10;
    std::fs::write(path, bytes).unwrap();
}

fn copy_dir(from: &Path, to: &Path) {
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        std::fs::copy(entry.path(), to.join(entry.file_name())).unwrap();
    }
}

#[test]
fn a_flipped_bit_anywhere_is_an_error_or_harmless_and_loses_nothing() {
    let original = tempfile::tempdir().unwrap();
    let expected = build(original.path());
    let files = segments(original.path());
    assert!(files.len() >= 4, "sealed segments and a tail");
    let mut errors = 0;
    let mut harmless = 0;
    for (file_no, file) in files.iter().enumerate() {
        let len = usize::try_from(std::fs::metadata(file).unwrap().len()).unwrap();
        let name = file.file_name().unwrap();
        for at in (file_no * 7..len)
            .step_by(509)
            .chain([0, 60, 64, 96, 4096, 4100, 4124])
        {
            let dir = tempfile::tempdir().unwrap();
            copy_dir(original.path(), dir.path());
            let damaged = dir.path().join(name);
            flip(&damaged, at);
            match open(dir.path()) {
                Ok(log) => {
                    assert_eq!(
                        read_all(&log),
                        expected,
                        "flip at {at} of {name:?} lost data"
                    );
                    harmless += 1;
                }
                Err(error) => {
                    assert!(
                        matches!(
                            error,
                            Error::Corrupted { .. }
                                | Error::SegmentSizeMismatch { .. }
                                | Error::MissingRecords { .. }
                        ),
                        "flip at {at} of {name:?}: {error}"
                    );
                    errors += 1;
                    flip(&damaged, at);
                    let log = open(dir.path()).unwrap();
                    assert_eq!(
                        read_all(&log),
                        expected,
                        "undoing the flip at {at} restores all"
                    );
                }
            }
        }
    }
    assert!(
        errors > 100 && harmless > 10,
        "errors {errors}, harmless {harmless}"
    );
}

#[test]
fn a_corrupted_record_is_reported_with_its_segment_and_offset() {
    let dir = tempfile::tempdir().unwrap();
    build(dir.path());
    let first = &segments(dir.path())[0];
    flip(first, 4096 + 40);
    let error = open(dir.path()).unwrap_err();
    assert!(
        matches!(error, Error::Corrupted { offset: 4096, .. }),
        "the first frame starts at 4096: {error}"
    );
}

#[test]
fn a_zeroed_durable_frame_is_not_taken_for_the_end_of_the_log() {
    let dir = tempfile::tempdir().unwrap();
    build(dir.path());
    let tail = segments(dir.path()).pop().unwrap();
    let mut bytes = std::fs::read(&tail).unwrap();
    bytes[4096..4096 + 32].fill(0);
    std::fs::write(&tail, bytes).unwrap();
    assert!(matches!(
        open(dir.path()),
        Err(Error::Corrupted { offset: 4096, .. })
    ));
}

#[test]
fn truncated_files_are_errors_not_crashes() {
    for victim in [0usize, 3] {
        let dir = tempfile::tempdir().unwrap();
        let expected = build(dir.path());
        let path = segments(dir.path())[victim].clone();
        let full = std::fs::read(&path).unwrap();
        std::fs::write(&path, &full[..full.len() / 2]).unwrap();
        assert!(matches!(
            open(dir.path()),
            Err(Error::SegmentSizeMismatch { .. })
        ));
        std::fs::write(&path, &full[..10]).unwrap();
        assert!(matches!(
            open(dir.path()),
            Err(Error::SegmentSizeMismatch { .. })
        ));
        std::fs::write(&path, full).unwrap();
        assert_eq!(read_all(&open(dir.path()).unwrap()), expected);
    }
}

#[test]
fn a_truncated_or_missing_meta_file_is_an_error() {
    let dir = tempfile::tempdir().unwrap();
    build(dir.path());
    let meta = dir.path().join("meta");
    let full = std::fs::read(&meta).unwrap();
    std::fs::write(&meta, &full[..100]).unwrap();
    assert!(matches!(open(dir.path()), Err(Error::MetaCorrupted { .. })));
    std::fs::remove_file(&meta).unwrap();
    assert!(matches!(open(dir.path()), Err(Error::MetaCorrupted { .. })));
}

#[test]
fn a_missing_segment_in_the_middle_is_missing_records() {
    let dir = tempfile::tempdir().unwrap();
    build(dir.path());
    let middle = segments(dir.path())[1].clone();
    let aside = dir
        .path()
        .parent()
        .unwrap()
        .join(format!("aside-{}", std::process::id()));
    std::fs::rename(&middle, &aside).unwrap();
    let error = open(dir.path()).unwrap_err();
    assert!(matches!(error, Error::MissingRecords { .. }), "{error}");
    std::fs::rename(&aside, &middle).unwrap();
    assert_eq!(read_all(&open(dir.path()).unwrap()).len(), 600);
}

#[test]
fn a_missing_newest_segment_is_reported() {
    let dir = tempfile::tempdir().unwrap();
    build(dir.path());
    let tail = segments(dir.path()).pop().unwrap();
    std::fs::remove_file(tail).unwrap();
    assert!(matches!(
        open(dir.path()),
        Err(Error::MissingSegment { .. })
    ));
}

#[test]
fn a_foreign_file_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    build(dir.path());
    std::fs::write(dir.path().join("notes.txt"), b"hello").unwrap();
    assert!(matches!(open(dir.path()), Err(Error::ForeignFile { .. })));
    std::fs::remove_file(dir.path().join("notes.txt")).unwrap();
    assert_eq!(read_all(&open(dir.path()).unwrap()).len(), 600);
}

/// Leaves the tail as a crash in the middle of a write can: the last batch's header and
/// its later records reached the disk, its first record did not (a byte of it is flipped),
/// and no sync mark records the write as durable. Returns the records before the batch, the
/// tail's path, and the torn batch's offset.
fn leave_torn_tail(dir: &Path) -> (Vec<(LogId, Bytes)>, PathBuf, u64) {
    let expected = build(dir);
    let log = open(dir).unwrap();
    let values: Vec<_> = (600..603).map(|i| value(i, 1)).collect();
    append_durably(&log, 1, 600, &values);
    drop(log);
    let tail = segments(dir).pop().unwrap();
    let mut bytes = std::fs::read(&tail).unwrap();
    let torn_batch = *batch_offsets(&bytes).last().unwrap();
    bytes[64..128].fill(0);
    bytes[torn_batch + 32 + 40] ^= 0xff;
    std::fs::write(&tail, bytes).unwrap();
    (expected, tail, torn_batch as u64)
}

/// Offsets of the batches in a segment's bytes, walking their headers' length fields.
fn batch_offsets(bytes: &[u8]) -> Vec<usize> {
    let mut offsets = Vec::new();
    let mut at = 4096;
    while bytes[at..at + 32].iter().any(|&b| b != 0) && bytes[at + 10] == 3 {
        offsets.push(at);
        let body_len = u32::from_le_bytes(bytes[at + 4..at + 8].try_into().unwrap()) as usize;
        at += 32 + body_len;
    }
    offsets
}

#[test]
fn a_torn_tail_is_zeroed_under_the_tolerant_policy() {
    let dir = tempfile::tempdir().unwrap();
    let (expected, tail, end) = leave_torn_tail(dir.path());
    let log = open(dir.path()).unwrap();
    assert_eq!(read_all(&log), expected);
    drop(log);
    let bytes = std::fs::read(&tail).unwrap();
    let end = usize::try_from(end).unwrap();
    assert!(
        bytes[end..].iter().all(|&b| b == 0),
        "torn bytes are zeroed"
    );
}

#[test]
fn a_torn_tail_is_an_error_under_the_strict_policy() {
    let dir = tempfile::tempdir().unwrap();
    let (expected, _, end) = leave_torn_tail(dir.path());
    let strict = Options {
        recovery: RecoveryPolicy::Strict,
        ..small_options()
    };
    let error = Log::<Bytes>::open(dir.path(), strict).unwrap_err();
    assert!(
        matches!(error, Error::TornTail { offset, .. } if offset == end),
        "{error}"
    );
    assert_eq!(read_all(&open(dir.path()).unwrap()), expected);
}

#[test]
fn a_reduced_record_limit_applies_to_new_appends_only() {
    let dir = tempfile::tempdir().unwrap();
    let expected = build(dir.path());
    let reduced = Options {
        record_size_max_bytes: 100,
        ..small_options()
    };
    let log = Log::<Bytes>::open(dir.path(), reduced).unwrap();
    assert_eq!(
        read_all(&log),
        expected,
        "records over the new limit still read"
    );
    let big = common::encode(&vec![1u8; 200]);
    let refused = log.append_next(1, &[&big]);
    assert!(matches!(
        refused,
        Err(Error::RecordTooLarge {
            limit_bytes: 100,
            ..
        })
    ));
}

#[test]
fn a_newest_segment_whose_activation_was_cut_short_is_discarded() {
    let dir = tempfile::tempdir().unwrap();
    build(dir.path());
    let log = open(dir.path()).unwrap();
    log.purge_upto(LogId::new(1, 700)).unwrap();
    drop(log);
    assert!(segments(dir.path()).is_empty(), "every segment was purged");
    // The next append activates a segment at index 701. Leave one as a crash right after its
    // rename would: named, full size, header never written.
    let next = format!("{:016x}-{:016x}.seg", 0x100, 701);
    std::fs::write(dir.path().join(&next), vec![0u8; 64 * 1024]).unwrap();
    let log = open(dir.path()).unwrap();
    assert!(
        !dir.path().join(&next).exists(),
        "the segment cut short is removed"
    );
    assert_eq!(log.state().unwrap().last, Some(LogId::new(1, 700)));
    append_durably(&log, 1, 701, &[value(701, 9)]);
    drop(log);
    assert_eq!(
        read_all(&open(dir.path()).unwrap()),
        vec![(LogId::new(1, 701), value(701, 9))]
    );
}

/// A write torn over a recycled file: the new batch header reached the disk, its body did
/// not, and the body's place still holds records a truncation removed, with the same
/// indexes and lengths, each frame verifying on its own. Recovery must not take them for
/// the batch (that would bring back removed entries): the header's body check does not
/// match their checksums, so the batch is torn and zeroed. Built from two logs whose first
/// segments share an id (so a seed): one holds the removed records (term 1), the other the
/// header of their replacements (term 2, other bytes).
#[test]
fn stale_records_behind_a_new_batch_header_are_not_taken_for_its_records() {
    let removed = tempfile::tempdir().unwrap();
    let replaced = tempfile::tempdir().unwrap();
    let old: Vec<Bytes> = (0..3).map(|i| vec![1u8; 100 + i]).collect();
    let new: Vec<Bytes> = (0..3).map(|i| vec![2u8; 100 + i]).collect();
    append_durably(&open(removed.path()).unwrap(), 1, 0, &old);
    append_durably(&open(replaced.path()).unwrap(), 2, 0, &new);
    let old_bytes = std::fs::read(segments(removed.path()).pop().unwrap()).unwrap();
    let path = segments(replaced.path()).pop().unwrap();
    let mut bytes = std::fs::read(&path).unwrap();
    let body_len = u32::from_le_bytes(bytes[4096 + 4..4096 + 8].try_into().unwrap()) as usize;
    let body = 4096 + 32..4096 + 32 + body_len;
    assert_ne!(bytes[body.clone()], old_bytes[body.clone()]);
    bytes[body.clone()].copy_from_slice(&old_bytes[body]);
    bytes[64..128].fill(0);
    std::fs::write(&path, bytes).unwrap();
    let log = open(replaced.path()).unwrap();
    assert_eq!(
        read_all(&log),
        [],
        "neither the removed records nor a torn batch"
    );
}
