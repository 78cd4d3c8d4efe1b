//! keel-log benchmarks, each beside its baseline in the same group so ratios come from
//! one run on one machine state.
//!
//! - `log_append`: durable appends (append + wait for fdatasync) of 100 B and 1 KiB records
//!   at batch sizes 1, 16, 256, 4096. `keel` appends a batch encoded beforehand (records
//!   serialized, checksummed and framed on the caller's thread, untimed);
//!   `keel_encoding` times that encoding too; `raw` prepares the same batch the same way
//!   (untimed) and writes a batch header's worth of bytes and its frames (one seek and
//!   `writev`) plus `fdatasync` into a pre-zeroed file, serially; `raw_cached` writes one
//!   buffer of that length again and again, its bytes always in the CPU cache (the baseline
//!   before 2026-12-05, kept so both are reported).
//! - `log_append_relaxed`: page-cache-only appends, batches of 256; the raw rows skip the
//!   `fdatasync`.
//! - `log_read`: zero-copy read by index of a 1 KiB record with its CRC check, hot (64
//!   records cycled, in cache) and cold (a stride over 32 MiB); `validated` is the hot read
//!   plus full rkyv validation, to show what the unchecked access saves.
//! - `log_scan`: sequential range iteration; `raw_crc` is CRC32C over the same bytes.
//! - `log_reopen`: open (recovery) of a log whose 64 MiB tail segment is full and unsealed,
//!   and of 1 MiB of records at the start of a 64 MiB segment; `warm` with the files in
//!   the page cache, `cold` after dropping them from it (`fsync` + `POSIX_FADV_DONTNEED`).
#![forbid(unsafe_code)]

mod common;

use std::{
    fs::{File, OpenOptions},
    hint::black_box,
    io::{IoSlice, Seek, SeekFrom, Write},
    os::unix::fs::FileExt,
    path::Path,
    time::{Duration, Instant},
};

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use keel_log::{Batch, Encoded, Log, LogId, Options, SyncPolicy};

type Bytes = Vec<u8>;

/// rkyv adds an 8-byte header to a `Vec<u8>`: payloads are sized so records encode to
/// exactly 100 B and 1 KiB.
const RECORD_SIZES: [(usize, &str); 2] = [(92, "100B"), (1016, "1KiB")];
const BATCHES: [usize; 4] = [1, 16, 256, 4096];
/// A batch header: what Keel writes per batch besides the record frames.
const BATCH_HEADER_BYTES: usize = 32;
/// The raw baseline's pre-zeroed file; writes wrap around in it.
const RAW_FILE_BYTES: u64 = 256 * 1024 * 1024;
/// Purge the log every this many bytes, outside the timed region: half a segment, so each
/// roll finds the segment before it purged and recycled (the steady state of a Raft log that
/// snapshots), and the preparer never zero-fills a new file while appends are timed.
const PURGE_EVERY_BYTES: usize = 32 * 1024 * 1024;
/// Bytes appended and purged before measuring, to fill the recycle pool.
const WARM_BYTES: usize = 320 * 1024 * 1024;

fn scratch() -> tempfile::TempDir {
    tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).expect("scratch directory")
}

/// The values of one batch: `count` byte vectors of `payload` bytes.
fn values(payload: usize, count: usize) -> Vec<Bytes> {
    (0..count)
        .map(|i| vec![u8::try_from(i % 251).expect("below 256"); payload])
        .collect()
}

fn records(payload: usize, count: usize) -> Vec<Encoded<Bytes>> {
    values(payload, count)
        .iter()
        .map(|value| Encoded::new(value).expect("encode"))
        .collect()
}

/// `records` as a batch continuing a log whose next index is `next`.
fn batch_at(batch: &mut Batch<Bytes>, next: u64, records: &[Encoded<Bytes>]) {
    batch.clear();
    for (index, record) in (next..).zip(records) {
        batch
            .push_encoded(LogId::new(1, index), record)
            .expect("contiguous");
    }
}

/// A pre-zeroed, synced file for the raw baseline.
fn raw_file(dir: &Path) -> File {
    let file = OpenOptions::new()
        .create(true)
        .truncate(true)
        .read(true)
        .write(true)
        .open(dir.join("raw"))
        .expect("raw file");
    let zeros = vec![0u8; 1 << 20];
    for chunk in 0..RAW_FILE_BYTES / (1 << 20) {
        file.write_all_at(&zeros, chunk << 20).expect("zero fill");
    }
    file.sync_all().expect("sync");
    file
}

/// What one durable append of a batch includes in the timing.
#[derive(Debug, Clone, Copy)]
enum Timed {
    /// The append of a batch encoded beforehand (the caller's work, not timed): the writer's
    /// work and the sync.
    Append,
    /// Also the encoding: serializing each value into the batch, its CRC32C and its frame
    /// header, as Keel's Raft log store does before it appends.
    EncodeAndAppend,
}

/// Appends batches and waits for each to be durable; purges old segments untimed.
fn keel_batches(log: &Log<Bytes>, values: &[Bytes], timed: Timed, iters: u64) -> Duration {
    let encoded: Vec<_> = values
        .iter()
        .map(|v| Encoded::new(v).expect("encode"))
        .collect();
    let mut batch = Batch::new();
    let mut elapsed = Duration::ZERO;
    let mut since_purge = 0;
    for _ in 0..iters {
        let next = log.state().expect("state").last.map_or(0, |l| l.index + 1);
        let start = match timed {
            Timed::Append => {
                batch_at(&mut batch, next, &encoded);
                Instant::now()
            }
            Timed::EncodeAndAppend => {
                let start = Instant::now();
                batch.clear();
                for (index, value) in (next..).zip(values) {
                    batch.push(LogId::new(1, index), value).expect("push");
                }
                start
            }
        };
        let appended = log.append_batch(&batch).expect("append");
        appended.ticket.wait().expect("durable");
        elapsed += start.elapsed();
        since_purge += batch.frame_bytes();
        if since_purge > PURGE_EVERY_BYTES {
            let last = appended.last.expect("non-empty batch");
            log.purge_upto(LogId::new(1, last.index)).expect("purge");
            since_purge = 0;
        }
    }
    elapsed
}

/// A log in its steady state: earlier segments were purged and wait in the recycle pool,
/// as in a Raft log that snapshots and purges, so rolls reuse allocated files the way the
/// raw baseline reuses its pre-zeroed file.
fn steady_log(dir: &Path, sync: SyncPolicy, records: &[Encoded<Bytes>]) -> Log<Bytes> {
    let log = Log::<Bytes>::open(
        dir,
        Options {
            sync,
            ..Options::default()
        },
    )
    .expect("open");
    let mut batch = Batch::new();
    batch_at(&mut batch, 0, records);
    let mut last = None;
    for _ in 0..=WARM_BYTES / batch.frame_bytes() {
        let next = last.map_or(0, |l: LogId| l.index + 1);
        batch_at(&mut batch, next, records);
        last = log.append_batch(&batch).expect("append").last;
    }
    log.purge_upto(last.expect("appended")).expect("purge");
    log
}

/// Writes `pieces` back to back at `offset` (a seek and `writev`s: the raw side's
/// `pwritev`, which std does not offer).
fn write_all_vectored_at(mut file: &File, offset: u64, pieces: &[&[u8]]) {
    file.seek(SeekFrom::Start(offset)).expect("seek");
    let mut slices: Vec<IoSlice<'_>> = pieces.iter().map(|piece| IoSlice::new(piece)).collect();
    let mut rest = &mut slices[..];
    while !rest.is_empty() {
        let written = file.write_vectored(rest).expect("writev");
        assert!(written > 0, "writev wrote nothing");
        IoSlice::advance_slices(&mut rest, written);
    }
}

/// The raw baseline: each iteration, untimed, prepares the batch exactly as the `keel` row
/// does (`batch_at`, the same records), then writes a batch header's worth of bytes and the
/// batch's frames at the next offset and `fdatasync`s (when `sync`). Keel and raw thus write
/// the same freshly built bytes from the same cache state; the difference is Keel's writer.
fn raw_batches(file: &File, records: &[Encoded<Bytes>], sync: bool, iters: u64) -> Duration {
    let header = [0x5au8; BATCH_HEADER_BYTES];
    let mut batch = Batch::new();
    let mut offset = 0u64;
    let mut next = 0u64;
    let mut elapsed = Duration::ZERO;
    for _ in 0..iters {
        batch_at(&mut batch, next, records);
        next += records.len() as u64;
        let bytes = (BATCH_HEADER_BYTES + batch.frame_bytes()) as u64;
        if offset + bytes > RAW_FILE_BYTES {
            offset = 0;
        }
        let start = Instant::now();
        write_all_vectored_at(file, offset, &[&header, batch.as_bytes()]);
        if sync {
            file.sync_data().expect("fdatasync");
        }
        elapsed += start.elapsed();
        offset += bytes;
    }
    elapsed
}

/// The raw baseline as it was before 2026-12-05, kept to report both: one buffer of the
/// same length written again and again, so its bytes stay in the CPU cache between writes
/// (no application writes bytes it did not just produce; see benches/README.md).
fn raw_cached_batches(file: &File, bytes: &[u8], sync: bool, iters: u64) -> Duration {
    let mut offset = 0u64;
    let start = Instant::now();
    for _ in 0..iters {
        if offset + bytes.len() as u64 > RAW_FILE_BYTES {
            offset = 0;
        }
        file.write_all_at(bytes, offset).expect("pwrite");
        if sync {
            file.sync_data().expect("fdatasync");
        }
        offset += bytes.len() as u64;
    }
    start.elapsed()
}

fn append_group(c: &mut Criterion, group_name: &str, sync: SyncPolicy, batches: &[usize]) {
    let dir = scratch();
    let raw = raw_file(dir.path());
    let mut group = c.benchmark_group(group_name);
    group
        .sample_size(10)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3));
    for (payload, size_name) in RECORD_SIZES {
        for &batch in batches {
            let batch_values = values(payload, batch);
            let batch_records = records(payload, batch);
            let mut framed = Batch::new();
            batch_at(&mut framed, 0, &batch_records);
            // The bytes Keel writes per batch: one batch header and the record frames.
            let raw_bytes = vec![0x5au8; BATCH_HEADER_BYTES + framed.frame_bytes()];
            let param = format!("{size_name}/{batch}");
            group.throughput(Throughput::Elements(batch as u64));
            let log_dir = scratch();
            let log = steady_log(log_dir.path(), sync, &batch_records);
            // Each Keel row beside its baseline, measured one after the other, so the ratio
            // of a pair spans seconds of machine drift, not a whole row of others.
            group.bench_function(BenchmarkId::new("keel", &param), |b| {
                b.iter_custom(|iters| keel_batches(&log, &batch_values, Timed::Append, iters));
            });
            group.bench_function(BenchmarkId::new("raw", &param), |b| {
                b.iter_custom(|iters| raw_batches(&raw, &batch_records, sync.is_durable(), iters));
            });
            group.bench_function(BenchmarkId::new("keel_encoding", &param), |b| {
                b.iter_custom(|iters| {
                    keel_batches(&log, &batch_values, Timed::EncodeAndAppend, iters)
                });
            });
            group.bench_function(BenchmarkId::new("raw_cached", &param), |b| {
                b.iter_custom(|iters| {
                    raw_cached_batches(&raw, &raw_bytes, sync.is_durable(), iters)
                });
            });
            drop(log);
        }
    }
    group.finish();
}

fn log_append(c: &mut Criterion) {
    append_group(c, "log_append", SyncPolicy::Durable, &BATCHES);
}

fn log_append_relaxed(c: &mut Criterion) {
    append_group(c, "log_append_relaxed", SyncPolicy::Relaxed, &[256]);
}

/// A log of `count` 1 KiB records in `dir`.
fn filled_log(dir: &Path, count: usize, options: Options) -> Log<Bytes> {
    let log = Log::<Bytes>::open(dir, options).expect("open");
    let batch = records(1016, 256);
    let refs: Vec<_> = batch.iter().collect();
    for _ in 0..count / 256 {
        log.append_next(1, &refs).expect("append");
    }
    log
}

fn log_read(c: &mut Criterion) {
    const COUNT: u64 = 32 * 1024;
    /// Records read in the hot case: 64 KiB, resident in the CPU caches.
    const HOT: u64 = 64;
    let dir = scratch();
    let options = Options {
        sync: SyncPolicy::Relaxed,
        ..Options::default()
    };
    let log = filled_log(dir.path(), usize::try_from(COUNT).expect("small"), options);
    let reader = log.reader();
    let mut group = c.benchmark_group("log_read");
    group.throughput(Throughput::Elements(1));
    let mut index = 0u64;
    group.bench_function("keel", |b| {
        b.iter(|| {
            index = (index + 1) % HOT;
            let record = reader.get(index).expect("read").expect("present");
            black_box(record.len())
        });
    });
    group.bench_function("validated", |b| {
        b.iter(|| {
            index = (index + 1) % HOT;
            let record = reader.get(index).expect("read").expect("present");
            let archived =
                rkyv::access::<rkyv::Archived<Bytes>, rkyv::rancor::Error>(record.bytes())
                    .expect("valid");
            black_box(archived.len())
        });
    });
    group.bench_function("keel_cold", |b| {
        b.iter(|| {
            index = (index + 7919) % COUNT;
            let record = reader.get(index).expect("read").expect("present");
            black_box(record.len())
        });
    });
    group.finish();
}

fn log_scan(c: &mut Criterion) {
    const COUNT: usize = 32 * 1024;
    let dir = scratch();
    let log = filled_log(
        dir.path(),
        COUNT,
        Options {
            sync: SyncPolicy::Relaxed,
            ..Options::default()
        },
    );
    let reader = log.reader();
    let copy: Vec<u8> = reader
        .range(..)
        .flat_map(|r| r.expect("read").bytes().to_vec())
        .collect();
    let mut group = c.benchmark_group("log_scan");
    group
        .throughput(Throughput::Elements(COUNT as u64))
        .sample_size(20);
    group.bench_function("keel", |b| {
        b.iter(|| {
            reader
                .range(..)
                .map(|r| r.expect("read").len())
                .sum::<usize>()
        });
    });
    group.bench_function("raw_crc", |b| {
        b.iter(|| {
            copy.chunks(1024)
                .map(crc32c::crc32c)
                .fold(0u32, |a, c| a ^ c)
        });
    });
    group.finish();
}

/// Opens (recovers) the log in `dir` `iters` times; only the opens are timed. `cold`: the
/// log's files are dropped from the page cache before each open (untimed).
fn reopen(dir: &Path, options: &Options, cold: bool, iters: u64) -> Duration {
    let mut elapsed = Duration::ZERO;
    for _ in 0..iters {
        if cold {
            common::drop_page_cache(dir);
        }
        let start = Instant::now();
        let log = Log::<Bytes>::open(dir, options.clone()).expect("reopen");
        elapsed += start.elapsed();
        drop(log);
    }
    elapsed
}

fn segment_count(dir: &Path) -> usize {
    std::fs::read_dir(dir)
        .expect("list")
        .filter(|e| {
            e.as_ref()
                .expect("entry")
                .path()
                .extension()
                .is_some_and(|x| x == "seg")
        })
        .count()
}

fn log_reopen(c: &mut Criterion) {
    let options = Options {
        sync: SyncPolicy::Relaxed,
        prepare_ahead: false,
        ..Options::default()
    };
    // 1056-byte frames after a 4 KiB header page: 62 976 of them (246 batches of 256) fill
    // a 64 MiB segment to within 600 KiB of its end, so there is one unsealed segment.
    let full = scratch();
    let log = filled_log(full.path(), 246 * 256, options.clone());
    let tail_bytes = log.state().expect("state").last.expect("records").index * 1056;
    drop(log);
    assert_eq!(
        segment_count(full.path()),
        1,
        "the whole log is one unsealed segment"
    );
    // A crash-like tail: 1 024 records at the start of a zero-filled 64 MiB segment, so
    // recovery must also probe the empty rest of the file for torn frames.
    let small = scratch();
    drop(filled_log(small.path(), 4 * 256, options.clone()));
    let mut group = c.benchmark_group("log_reopen");
    group.sample_size(10);
    for (cache, cold) in [("warm", false), ("cold", true)] {
        group.throughput(Throughput::Bytes(tail_bytes));
        group.bench_function(format!("keel_64MiB_tail/{cache}"), |b| {
            b.iter_custom(|iters| reopen(full.path(), &options, cold, iters));
        });
        group.throughput(Throughput::Elements(1));
        group.bench_function(format!("keel_1MiB_tail_in_64MiB_segment/{cache}"), |b| {
            b.iter_custom(|iters| reopen(small.path(), &options, cold, iters));
        });
    }
    group.finish();
}

criterion_group!(
    benches,
    log_append,
    log_append_relaxed,
    log_read,
    log_scan,
    log_reopen
);
criterion_main!(benches);
