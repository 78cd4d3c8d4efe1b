//! Segment formats: a log written in format 1 (one seeded frame per record, committed in
//! `fixtures/format1-log` as keel-log wrote it before batch frames) opens, reads and grows
//! in format 2; a format this build does not know is refused by name.
#![allow(
    clippy::unwrap_used,
    clippy::cast_possible_truncation,
    reason = "test helpers panic on failure; sizes are small"
)]

mod common;

use std::path::Path;

use common::segments;
use keel_log::{Batch, Error, Log, LogId, Options};

/// What the fixture's writer appended as record `index` (terms: 1 below 100, then 2).
fn fixture_record(index: u64) -> String {
    let len = usize::try_from((index * 37) % 900).unwrap();
    format!("format-1 record {index}:")
        .chars()
        .cycle()
        .take(20 + len)
        .collect()
}

fn fixture_id(index: u64) -> LogId {
    LogId::new(1 + index / 100, index)
}

/// The options the fixture was written with.
fn options() -> Options {
    Options {
        segment_size_bytes: 64 * 1024,
        record_size_max_bytes: 4096,
        prepare_ahead: false,
        ..Options::default()
    }
}

/// A copy of the fixture in a temporary directory (tests never write the original).
fn fixture_copy() -> tempfile::TempDir {
    let source = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/format1-log");
    let dir = tempfile::tempdir().unwrap();
    for entry in std::fs::read_dir(source).unwrap() {
        let entry = entry.unwrap();
        std::fs::copy(entry.path(), dir.path().join(entry.file_name())).unwrap();
    }
    dir
}

/// The format version in a segment file's header.
fn format_of(path: &Path) -> u32 {
    let bytes = std::fs::read(path).unwrap();
    u32::from_le_bytes(bytes[8..12].try_into().unwrap())
}

fn read_all(log: &Log<String>) -> Vec<(LogId, String)> {
    log.reader()
        .range(..)
        .map(|r| {
            let r = r.unwrap();
            (r.id(), r.as_str().to_owned())
        })
        .collect()
}

fn expected(indexes: std::ops::Range<u64>) -> Vec<(LogId, String)> {
    indexes
        .map(|i| (fixture_id(i), fixture_record(i)))
        .collect()
}

#[test]
fn a_format_1_log_reads_and_grows_in_format_2() {
    let dir = fixture_copy();
    let formats: Vec<u32> = segments(dir.path()).iter().map(|p| format_of(p)).collect();
    assert_eq!(formats, [1, 1], "the fixture is two format-1 segments");
    let log = Log::<String>::open(dir.path(), options()).unwrap();
    assert_eq!(read_all(&log), expected(0..200));
    assert_eq!(log.vote().as_deref(), Some(&b"vote-bytes"[..]));

    let mut batch = Batch::new();
    for index in 200..260 {
        batch
            .push(fixture_id(index), &fixture_record(index))
            .unwrap();
    }
    log.append_batch(&batch).unwrap().ticket.wait().unwrap();
    drop(log);

    let paths = segments(dir.path());
    let formats: Vec<u32> = paths.iter().map(|p| format_of(p)).collect();
    assert_eq!(
        &formats[..2],
        [1, 1],
        "format-1 segments are kept as they are"
    );
    assert!(
        formats[2..].iter().all(|&f| f == 2),
        "new records go to format-2 segments: {formats:?}"
    );
    let log = Log::<String>::open(dir.path(), options()).unwrap();
    assert_eq!(read_all(&log), expected(0..260));

    log.purge_upto(fixture_id(205)).unwrap();
    drop(log);
    assert!(
        segments(dir.path()).iter().all(|p| format_of(p) == 2),
        "purging retires the format-1 segments"
    );
    let log = Log::<String>::open(dir.path(), options()).unwrap();
    assert_eq!(read_all(&log), expected(206..260));
}

#[test]
fn a_format_1_tail_is_sealed_not_appended_to() {
    let dir = fixture_copy();
    let tail = segments(dir.path()).pop().unwrap();
    let before = std::fs::read(&tail).unwrap();
    let log = Log::<String>::open(dir.path(), options()).unwrap();
    log.append_batch(&{
        let mut batch = Batch::new();
        batch.push(fixture_id(200), &fixture_record(200)).unwrap();
        batch
    })
    .unwrap()
    .ticket
    .wait()
    .unwrap();
    drop(log);
    let after = std::fs::read(&tail).unwrap();
    let changed: Vec<usize> = (4096..after.len())
        .filter(|&i| before[i] != after[i])
        .collect();
    assert!(
        changed.len() <= 32,
        "only a 32-byte seal frame is added to the format-1 tail ({} bytes changed)",
        changed.len()
    );
    let seal_at = changed[0];
    assert_eq!(
        after[seal_at - seal_at % 16 + 10],
        2,
        "the added frame is a seal"
    );
    assert_eq!(segments(dir.path()).len(), 3);
}

#[test]
fn a_segment_in_an_unknown_format_is_refused_by_name() {
    let dir = tempfile::tempdir().unwrap();
    let log = Log::<String>::open(dir.path(), options()).unwrap();
    log.append_next(1, &[&keel_log::Encoded::new(&"x".to_owned()).unwrap()])
        .unwrap()
        .ticket
        .wait()
        .unwrap();
    drop(log);
    let path = segments(dir.path()).pop().unwrap();
    let mut bytes = std::fs::read(&path).unwrap();
    bytes[8..12].copy_from_slice(&3u32.to_le_bytes());
    // No sync mark: as after a crash right after the newer build's first group commit.
    // The segment must still be refused, not discarded as a cut-short activation.
    bytes[64..128].fill(0);
    let crc = crc32c::crc32c(&bytes[0..60]);
    bytes[60..64].copy_from_slice(&crc.to_le_bytes());
    std::fs::write(&path, bytes).unwrap();
    let error = Log::<String>::open(dir.path(), options()).unwrap_err();
    assert!(
        matches!(
            error,
            Error::UnsupportedFormat {
                version: 3,
                oldest: 1,
                newest: 2,
                ..
            }
        ),
        "{error}"
    );
    assert!(error.to_string().contains("is in format 3"), "{error}");
    assert_eq!(segments(dir.path()), [path], "the segment is kept");
}

#[test]
fn a_batch_lies_in_its_segment_as_its_bytes_after_one_batch_header() {
    let dir = tempfile::tempdir().unwrap();
    let log = Log::<String>::open(dir.path(), options()).unwrap();
    let mut batch = Batch::new();
    for index in 0..5 {
        batch
            .push(LogId::new(1, index), &format!("record {index}"))
            .unwrap();
    }
    log.append_batch(&batch).unwrap().ticket.wait().unwrap();
    drop(log);
    let bytes = std::fs::read(segments(dir.path()).pop().unwrap()).unwrap();
    let frames = batch.as_bytes();
    assert_eq!(frames.len(), batch.frame_bytes());
    let at = bytes
        .windows(frames.len())
        .position(|window| window == frames)
        .expect("the batch's bytes are in the segment");
    // The records start after the 4 KiB segment header area and one 32-byte batch header.
    assert_eq!(at, 4096 + 32);
}
