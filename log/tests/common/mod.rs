//! Helpers shared by keel-log's integration tests.
#![allow(dead_code, reason = "each test binary uses a different subset")]

use keel_log::{Batch, Encoded, Entry, Log, LogId, Options, Record};

/// The record type used in tests.
pub(crate) type Bytes = Vec<u8>;

/// Small segments so tests roll, seal and purge often.
pub(crate) fn small_options() -> Options {
    Options {
        segment_size_bytes: 64 * 1024,
        record_size_max_bytes: 8 * 1024,
        prepare_ahead: false,
        ..Options::default()
    }
}

/// Deterministic payload for `index` written under `salt`: its length varies with both.
pub(crate) fn value(index: u64, salt: u64) -> Bytes {
    let len = usize::try_from((index * 37 + salt * 11) % 700).unwrap() + 1;
    (0..len)
        .map(|i| (index as usize + i + salt as usize) as u8)
        .collect()
}

/// `value(i, salt)` for every `i` in `indexes`.
pub(crate) fn values(indexes: std::ops::Range<u64>, salt: u64) -> Vec<Bytes> {
    indexes.map(|i| value(i, salt)).collect()
}

pub(crate) fn encode(value: &Bytes) -> Encoded<Bytes> {
    Encoded::new(value).unwrap()
}

/// Entries for `payloads` at consecutive indexes from `first`, all in `term`.
pub(crate) fn entries(term: u64, first: u64, payloads: &[Encoded<Bytes>]) -> Vec<Entry<'_, Bytes>> {
    payloads
        .iter()
        .zip(first..)
        .map(|(payload, index)| Entry {
            id: LogId::new(term, index),
            payload,
        })
        .collect()
}

/// Appends `values` at indexes from `first` with `term`, serialized in place into one
/// [`Batch`], and waits until durable.
pub(crate) fn append_durably(log: &Log<Bytes>, term: u64, first: u64, values: &[Bytes]) -> LogId {
    let mut batch = Batch::new();
    for (index, value) in (first..).zip(values) {
        batch.push(LogId::new(term, index), value).unwrap();
    }
    let appended = log.append_batch(&batch).unwrap();
    appended.ticket.wait().unwrap();
    appended.last.unwrap()
}

/// Reads every visible record as (id, bytes).
pub(crate) fn read_all(log: &Log<Bytes>) -> Vec<(LogId, Bytes)> {
    log.reader()
        .range(..)
        .map(|r| {
            let record: Record<Bytes> = r.unwrap();
            (record.id(), record.as_slice().to_vec())
        })
        .collect()
}

/// The segment files in `dir`, in name (so id) order.
pub(crate) fn segments(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut paths: Vec<_> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "seg"))
        .collect();
    paths.sort();
    paths
}
