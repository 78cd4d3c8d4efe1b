#![allow(
    clippy::cast_possible_truncation,
    reason = "test values and counts are small numbers"
)]

use std::collections::BTreeMap;

use keel_log::{Encoded, Log, Options, SyncPolicy};
use proptest::prelude::*;

use super::*;
use crate::record::StoredPayload;

/// Bytes before the application's command in these tests' entries (a multiplexer's tag).
const TAG: usize = 1;

struct Fixture {
    dir: tempfile::TempDir,
    log: Arc<EntryLog>,
}

impl Fixture {
    fn new() -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let options = Options {
            segment_size_bytes: 8 << 20,
            sync: SyncPolicy::Relaxed,
            ..Options::default()
        };
        let log = Arc::new(Log::open(dir.path().join("log"), options).expect("log"));
        Self { dir, log }
    }

    fn store(&self, covered: Option<u64>) -> ValueStore {
        ValueStore::open(
            &self.dir.path().join("values"),
            Arc::clone(&self.log),
            TAG,
            covered,
        )
        .expect("open the value store")
    }

    /// Appends an entry whose application command is `prefix` then `value`; returns the
    /// value's reference.
    fn append(&self, prefix: &[u8], value: &[u8]) -> ValueRef {
        let mut command = vec![0xEE];
        command.extend_from_slice(prefix);
        command.extend_from_slice(value);
        let payload = Encoded::new(&StoredPayload::Normal {
            session: 0,
            seq: 0,
            command,
        })
        .expect("encode");
        let appended = self.log.append_next(1, &[&payload]).expect("append");
        ValueRef {
            index: appended.last.expect("one").index,
            offset: u32::try_from(prefix.len()).expect("short"),
            len: u32::try_from(value.len()).expect("short"),
        }
    }

    fn value_files(&self) -> Vec<String> {
        let mut names: Vec<String> = std::fs::read_dir(self.dir.path().join("values"))
            .expect("list")
            .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        names
    }
}

fn value(n: u64, len: usize) -> Vec<u8> {
    (0..len).map(|i| (n as usize * 31 + i) as u8).collect()
}

#[test]
fn a_value_is_read_from_the_log_then_from_its_file_after_the_purge() {
    let fixture = Fixture::new();
    let store = fixture.store(None);
    let refs: Vec<ValueRef> = (0..10)
        .map(|n| fixture.append(b"head", &value(n, 100 + n as usize)))
        .collect();
    for (n, at) in refs.iter().enumerate() {
        assert_eq!(
            store.read(at).expect("from the log"),
            value(n as u64, 100 + n)
        );
    }
    // Values 0, 2, 4 and 6 are live; the log is purged up to index 7.
    let live: Vec<ValueRef> = [0, 2, 4, 6].iter().map(|&i| refs[i]).collect();
    let change = store.relocate(&live, refs[7].index).expect("relocate");
    assert_eq!(change.values_written, 4);
    fixture
        .log
        .purge_upto(keel_log::LogId::new(1, refs[7].index))
        .expect("purge");
    assert_eq!(store.covered(), Some(refs[7].index));
    for &i in &[0usize, 2, 4, 6] {
        assert_eq!(
            store.read(&refs[i]).expect("from the file"),
            value(i as u64, 100 + i)
        );
    }
    for &i in &[1usize, 3, 5, 7] {
        assert!(
            matches!(store.read(&refs[i]), Err(ValueError::Missing { .. })),
            "value {i} was not live"
        );
    }
    // Past the coverage, still the log.
    assert_eq!(store.read(&refs[9]).expect("from the log"), value(9, 109));
    drop(store);
    // Reopened with the coverage the published snapshot recorded: the same answers.
    let reopened = fixture.store(Some(refs[7].index));
    assert_eq!(
        reopened.read(&refs[4]).expect("from the file"),
        value(4, 104)
    );
}

/// Two references at one place, one a prefix of the other (the review found they panicked
/// the file writer): the longer is kept, the shorter reads its prefix.
#[test]
fn references_at_one_place_keep_the_longest_and_read_their_prefixes() {
    let fixture = Fixture::new();
    let store = fixture.store(None);
    let long = fixture.append(b"", b"abcdefg");
    let short = ValueRef { len: 3, ..long };
    store
        .relocate(&[short, long], long.index)
        .expect("relocate");
    fixture
        .log
        .purge_upto(keel_log::LogId::new(1, long.index))
        .expect("purge");
    assert_eq!(store.read(&long).expect("long"), "abcdefg");
    assert_eq!(store.read(&short).expect("its prefix"), "abc");
}

#[test]
fn a_live_value_missing_from_the_log_fails_the_relocation_and_covers_nothing() {
    let fixture = Fixture::new();
    let store = fixture.store(None);
    let at = fixture.append(b"", b"value");
    let wrong = ValueRef { len: 999, ..at };
    assert!(matches!(
        store.relocate(&[wrong], at.index),
        Err(ValueError::Missing { .. })
    ));
    assert_eq!(store.covered(), None);
    assert_eq!(store.read(&at).expect("still in the log"), "value");
}

#[test]
fn collect_rewrites_a_file_under_half_live_and_keeps_what_is_live() {
    let fixture = Fixture::new();
    let store = fixture.store(None);
    let refs: Vec<ValueRef> = (0..20)
        .map(|n| fixture.append(b"", &value(n, 1000)))
        .collect();
    let last = refs[19].index;
    store.relocate(&refs, last).expect("relocate all");
    let before = fixture.value_files();
    assert_eq!(before.len(), 1);
    // Half plus one live: the file stays.
    let mostly: Vec<ValueRef> = refs[..11].to_vec();
    assert_eq!(store.collect(&mostly).expect("collect").files_removed, 0);
    assert_eq!(fixture.value_files(), before);
    // Three live: rewritten with those three, a new generation of the same range.
    let few = [refs[1], refs[10], refs[18]];
    let change = store.collect(&few).expect("collect");
    assert_eq!((change.values_written, change.files_removed), (3, 1));
    let after = fixture.value_files();
    assert_eq!(after.len(), 1);
    assert_ne!(after, before);
    for at in few {
        assert_eq!(
            store.read(&at).expect("kept"),
            value(at.index - refs[0].index, 1000)
        );
    }
    assert!(matches!(
        store.read(&refs[2]),
        Err(ValueError::Missing { .. })
    ));
    // Nothing live: no file is left, and the range stays covered.
    store.collect(&[]).expect("collect");
    assert_eq!(store.covered(), Some(last));
    assert!(matches!(
        store.read(&refs[1]),
        Err(ValueError::Missing { .. })
    ));
}

#[test]
fn open_keeps_the_newest_generation_and_drops_files_past_the_published_coverage() {
    let fixture = Fixture::new();
    let store = fixture.store(None);
    let refs: Vec<ValueRef> = (0..6).map(|n| fixture.append(b"", &value(n, 50))).collect();
    store.relocate(&refs, refs[2].index).expect("relocate");
    // Published with only value 0 live: its file is rewritten (generation 2).
    store.collect(&refs[..1]).expect("collect");
    let rewritten = fixture.value_files();
    assert_eq!(rewritten.len(), 1);
    assert!(
        rewritten[0].ends_with(&format!("-{:020}.values", 2)),
        "{rewritten:?}"
    );
    // The next range relocated, but its snapshot never published.
    store.relocate(&refs, refs[5].index).expect("relocate");
    drop(store);
    // An older generation of the first range, as a stop between a rewrite's rename and
    // the removal of its source leaves it, and a temporary file.
    let values_dir = fixture.dir.path().join("values");
    let older = rewritten[0].replace(&format!("-{:020}.values", 2), &format!("-{:020}.values", 1));
    std::fs::copy(values_dir.join(&rewritten[0]), values_dir.join(&older)).expect("copy");
    std::fs::write(values_dir.join("x.tmp"), b"half written").expect("tmp");
    let store = fixture.store(Some(refs[2].index));
    assert_eq!(store.covered(), Some(refs[2].index));
    assert_eq!(
        fixture.value_files(),
        rewritten,
        "only the published, newest file stays"
    );
    assert_eq!(store.read(&refs[0]).expect("kept"), value(0, 50));
    // Above the coverage: the log.
    assert_eq!(store.read(&refs[4]).expect("log"), value(4, 50));
    // A new relocation never reuses a name: generations only grow.
    store
        .relocate(&refs, refs[5].index)
        .expect("relocate again");
    assert_eq!(fixture.value_files().len(), 2);
}

#[test]
fn small_files_are_merged_and_a_range_with_nothing_live_has_no_file() {
    let fixture = Fixture::new();
    let store = fixture.store(None);
    let refs: Vec<ValueRef> = (0..12)
        .map(|n| fixture.append(b"", &value(n, 64)))
        .collect();
    // Four snapshots, each relocating three values; one range has nothing live.
    let live: Vec<ValueRef> = refs
        .iter()
        .copied()
        .filter(|at| !(6..9).contains(&(at.index - refs[0].index)))
        .collect();
    for upto in [2usize, 5, 8, 11] {
        store.relocate(&live, refs[upto].index).expect("relocate");
    }
    assert_eq!(
        fixture.value_files().len(),
        3,
        "no file for the range without live values"
    );
    let change = store.collect(&live).expect("collect");
    assert_eq!(change.files_removed, 3);
    assert_eq!(change.values_written, 9);
    assert_eq!(
        fixture.value_files().len(),
        1,
        "small files merged into one"
    );
    for at in &live {
        assert_eq!(
            store.read(at).expect("merged"),
            value(at.index - refs[0].index, 64)
        );
    }
    assert_eq!(store.covered(), Some(refs[11].index));
    drop(store);
    let store = fixture.store(Some(refs[11].index));
    assert_eq!(
        store.read(&live[8]).expect("after reopening"),
        value(11, 64)
    );
}

#[test]
fn verify_counts_what_it_read_and_stops_when_cancelled() {
    let fixture = Fixture::new();
    let store = fixture.store(None);
    let at = fixture.append(b"", &value(1, 300));
    store.relocate(&[at], at.index).expect("relocate");
    assert_eq!(
        store.verify(&|| true).expect("cancelled"),
        Verified::default(),
        "a cancelled verification reads nothing and says it is incomplete"
    );
    assert!(!store.verified(), "not verified by a cancelled run");
    let verified = store.verify(&|| false).expect("undamaged");
    assert_eq!(
        verified,
        Verified {
            files: 1,
            values: 1,
            bytes: 300,
            complete: true
        }
    );
    assert!(store.verified(), "verified once read through");
}

#[test]
fn a_damaged_value_file_is_found_by_verify_or_refused_at_open_and_never_misread() {
    let fixture = Fixture::new();
    let store = fixture.store(None);
    let at = fixture.append(b"", &value(1, 300));
    store.relocate(&[at], at.index).expect("relocate");
    drop(store);
    let path = fixture
        .dir
        .path()
        .join("values")
        .join(&fixture.value_files()[0]);
    let good = std::fs::read(&path).expect("read");
    // A flipped byte in the value (right after the 32-byte header), made while the node
    // was stopped: opening checks the table only; verification names the value, and so
    // does a read.
    let mut bytes = good.clone();
    bytes[40] ^= 1;
    std::fs::write(&path, &bytes).expect("write");
    let store = ValueStore::open(
        &fixture.dir.path().join("values"),
        Arc::clone(&fixture.log),
        TAG,
        Some(at.index),
    )
    .expect("the table is whole");
    let error = store.verify(&|| false).expect_err("a damaged value");
    assert!(
        error.to_string().contains("does not match its checksum"),
        "{error}"
    );
    let error = store.read(&at).expect_err("a damaged value");
    assert!(
        error.to_string().contains("does not match its checksum"),
        "{error}"
    );
    drop(store);
    // Made while the store is open: the read says which value.
    std::fs::write(&path, &good).expect("write");
    let store = fixture.store(Some(at.index));
    std::fs::write(&path, &bytes).expect("write");
    let error = store.read(&at).expect_err("a damaged value");
    assert!(
        error.to_string().contains("does not match its checksum"),
        "{error}"
    );
    drop(store);
    // A flipped byte in the table (the file's last rows): refused at open.
    let mut bytes = good.clone();
    let in_table = bytes.len() - 20;
    bytes[in_table] ^= 1;
    std::fs::write(&path, &bytes).expect("write");
    let error = ValueStore::open(
        &fixture.dir.path().join("values"),
        Arc::clone(&fixture.log),
        TAG,
        Some(at.index),
    )
    .expect_err("a damaged table");
    assert!(error.to_string().contains("checksum"), "{error}");
    // Another format: refused, naming what it found.
    let mut bytes = good;
    bytes[7] = b'9';
    std::fs::write(&path, &bytes).expect("write");
    let error = ValueStore::open(
        &fixture.dir.path().join("values"),
        Arc::clone(&fixture.log),
        TAG,
        Some(at.index),
    )
    .expect_err("another format");
    assert!(error.to_string().contains("KEELVAL9"), "{error}");
}

/// `verify` reads a file's values in runs (the table 4 096 rows at a time, values up to
/// 4 MiB a read; 1 500-byte values, so a run holds 2 796 of them and a table block spans
/// two runs; one 5 MiB value, a run of its own): a byte flipped in any value — the first,
/// the last of the first run, the first of the second, the last of a table block, the
/// first of the next, the large one, the last — is named; the same file undamaged
/// verifies; a table row changed after the file was opened is refused, not followed.
#[test]
fn verify_names_a_damaged_value_wherever_its_run_falls() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("v.values");
    let count = 6_000u64;
    let len = 1500u32;
    let large = 5u32 << 20;
    let len_of = |index: u64| if index == 5_000 { large } else { len };
    let values: Vec<(ValueRef, Bytes)> = (0..count)
        .map(|index| {
            let at = ValueRef {
                index,
                offset: 7,
                len: len_of(index),
            };
            (at, Bytes::from(vec![(index % 251) as u8; at.len as usize]))
        })
        .collect();
    file::write(&path, 0, count, values.into_iter().map(Ok)).expect("write");
    let opened = ValueFile::open(&path).expect("open");
    assert!(opened.verify(&|| false).expect("undamaged"), "read whole");
    assert!(
        !opened.verify(&|| true).expect("cancelled"),
        "cancelled before its first read"
    );
    let good = std::fs::read(&path).expect("read");
    let start_of = |index: u64| 32 + (0..index).map(|i| len_of(i) as usize).sum::<usize>();
    let per_run = (4u64 << 20) / u64::from(len);
    for index in [0, per_run - 1, per_run, 4095, 4096, 5_000, count - 1] {
        let mut bytes = good.clone();
        bytes[start_of(index) + 500] ^= 0x10;
        std::fs::write(&path, &bytes).expect("write");
        let error = ValueFile::open(&path)
            .expect("the table is whole")
            .verify(&|| false)
            .expect_err("a damaged value");
        assert!(
            error.to_string().contains(&format!(
                "the value of index {index} offset 7 does not match"
            )),
            "{index}: {error}"
        );
    }
    // Row 10's position, changed in place after the file was opened.
    std::fs::write(&path, &good).expect("write");
    let opened = ValueFile::open(&path).expect("open");
    let table_start = good.len() - (32 * count as usize + 8);
    let mut bytes = good;
    bytes[table_start + 10 * 32 + 16] ^= 0x01;
    std::fs::write(&path, &bytes).expect("write");
    let error = opened.verify(&|| false).expect_err("a changed row");
    assert!(
        error
            .to_string()
            .contains("table row 10 changed since it was opened"),
        "{error}"
    );
}

#[test]
fn install_replaces_every_file_with_the_snapshots_values() {
    let fixture = Fixture::new();
    let store = fixture.store(None);
    let refs: Vec<ValueRef> = (0..4).map(|n| fixture.append(b"", &value(n, 10))).collect();
    store.relocate(&refs, refs[3].index).expect("relocate");
    let received = ValueRef {
        index: 500,
        offset: 3,
        len: 5,
    };
    store
        .install([Ok((received, Bytes::from_static(b"hello")))], 600)
        .expect("install");
    assert_eq!(store.covered(), Some(600));
    assert_eq!(fixture.value_files().len(), 1);
    assert_eq!(store.read(&received).expect("installed"), "hello");
    assert!(matches!(
        store.read(&refs[0]),
        Err(ValueError::Missing { .. })
    ));
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    /// Any set of values round-trips through a file, and a file with any one byte flipped
    /// is refused at open or reports the damaged value: a read never returns other bytes.
    #[test]
    fn value_files_round_trip_and_never_misread_a_flipped_byte(
        values in prop::collection::btree_map((1u64..400, 0u32..50), prop::collection::vec(any::<u8>(), 0..200), 1..40),
        flip in any::<prop::sample::Index>(),
    ) {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("v.values");
        let values: Vec<(ValueRef, Bytes)> = values
            .into_iter()
            .map(|((index, offset), bytes)| {
                let len = u32::try_from(bytes.len()).expect("short");
                (ValueRef { index, offset, len }, Bytes::from(bytes))
            })
            .collect();
        file::write(&path, 0, 400, values.iter().cloned().map(Ok)).expect("write");
        let opened = ValueFile::open(&path).expect("open");
        for (at, bytes) in &values {
            let read = opened.get(at).expect("read");
            prop_assert_eq!(read.as_ref(), Some(bytes));
        }
        let absent = ValueRef { index: 401, offset: 0, len: 0 };
        prop_assert_eq!(opened.get(&absent).expect("read"), None);
        let mut raw = std::fs::read(&path).expect("read");
        let at = flip.index(raw.len());
        raw[at] ^= 0x40;
        std::fs::write(&path, &raw).expect("write");
        let Ok(damaged) = ValueFile::open(&path) else {
            return Ok(());
        };
        let original: BTreeMap<(u64, u32), &Bytes> =
            values.iter().map(|(at, bytes)| (at.key(), bytes)).collect();
        for (at, _) in &values {
            if let Ok(Some(read)) = damaged.get(at) {
                prop_assert_eq!(&read, original[&at.key()]);
            }
        }
    }
}
