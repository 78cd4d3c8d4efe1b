use std::path::Path;

use super::*;
use crate::multiplex::Multiplex;
use crate::plain_log::{PlainLog, Retention};
use crate::snapshot::SnapshotDir;

fn header(last: u64, sessions: Vec<crate::session::StoredSession>) -> SnapshotHeader {
    SnapshotHeader {
        last_log_id: Some((2, last)),
        membership_log_id: None,
        membership: StoredMembershipConfig {
            configs: Vec::new(),
            nodes: Vec::new(),
        },
        sessions,
        values: SnapshotValues::default(),
        identity: None,
    }
}

/// A received snapshot is checked whole before it is installed, and the host's own
/// state is untouched by the check.
#[test]
fn a_received_snapshot_is_refused_for_its_header_sessions_or_application_bytes() {
    let dir = tempfile::tempdir().expect("tempdir");
    let snapshots = SnapshotDir::open(dir.path().join("snapshots")).expect("open");
    let app = Multiplex::new(PlainLog::new(Retention::default()), None);
    let mut app_bytes = Vec::new();
    app.write_snapshot(&mut app_bytes).expect("snapshot");
    let values = ValueStore::empty_for_test(dir.path());
    let host =
        StateMachineHost::open(Box::new(app), snapshots.clone(), |_| Ok(values)).expect("host");
    let write = |header: &SnapshotHeader, bytes: &[u8]| {
        snapshots
            .write(
                header,
                |out| {
                    let section = usize::try_from(header.values.section_bytes).expect("small");
                    out.write_all(&vec![0; section])
                },
                |out| out.write_all(bytes),
            )
            .expect("write")
            .path
    };
    // Each file is checked as soon as it is written: a write removes older snapshots.
    let good = write(&header(9, vec![(3, 1, Vec::new(), 5)]), &app_bytes);
    host.check_incoming(&good, Some(log_id(2, 9)))
        .expect("a good snapshot passes");
    let error = host
        .check_incoming(&good, Some(log_id(2, 8)))
        .expect_err("another id than announced");
    assert!(error.to_string().contains("its metadata says"), "{error}");
    let late_session = write(&header(10, vec![(3, 1, Vec::new(), 12)]), &app_bytes);
    let error = host
        .check_incoming(&late_session, Some(log_id(2, 10)))
        .expect_err("a session written after the snapshot's index");
    assert!(error.to_string().contains("session 3"), "{error}");
    let short_app = write(&header(11, Vec::new()), &app_bytes[..app_bytes.len() - 1]);
    let error = host
        .check_incoming(&short_app, Some(log_id(2, 11)))
        .expect_err("application bytes that do not restore");
    assert!(error.to_string().contains("check snapshot"), "{error}");
    // A snapshot that references values without carrying them (a node's own file,
    // sent as it is): the receiver could not read them.
    let mut bare = header(12, Vec::new());
    bare.values = SnapshotValues {
        covered: Some(12),
        count: 1,
        inline: false,
        section_bytes: 16,
    };
    let bare = write(&bare, &app_bytes);
    let error = host
        .check_incoming(&bare, Some(log_id(2, 12)))
        .expect_err("values referenced, not carried");
    assert!(
        error.to_string().contains("without carrying them"),
        "{error}"
    );
    assert_eq!(
        host.applied_state().applied,
        None,
        "the check installed nothing"
    );
}

fn inline_header(last: u64, refs: &[ValueRef], bytes: usize) -> SnapshotHeader {
    let mut header = header(last, Vec::new());
    header.values = SnapshotValues {
        covered: Some(last),
        count: refs.len() as u64,
        inline: true,
        section_bytes: 16 * refs.len() as u64 + bytes as u64,
    };
    header
}

fn test_store(dir: &Path, covered: Option<u64>) -> Arc<ValueStore> {
    let options = keel_log::Options {
        segment_size_bytes: 8 << 20,
        ..keel_log::Options::default()
    };
    let log = Arc::new(keel_log::Log::open(dir.join("log"), options).expect("log"));
    Arc::new(ValueStore::open(&dir.join("values"), log, 0, covered).expect("values"))
}

/// A node that made a received snapshot current but stopped before its values reached
/// the value files writes them when it opens (the coverage the node opens its store
/// with is the snapshot's index, so the store alone cannot tell).
#[test]
fn a_node_stopped_before_an_installed_snapshots_values_were_written_writes_them_at_open() {
    let dir = tempfile::tempdir().expect("tempdir");
    let snapshots = SnapshotDir::open(dir.path().join("snapshots")).expect("open");
    let app = Multiplex::new(PlainLog::new(Retention::default()), None);
    let mut app_bytes = Vec::new();
    app.write_snapshot(&mut app_bytes).expect("snapshot");
    let refs = [
        ValueRef {
            index: 3,
            offset: 1,
            len: 4,
        },
        ValueRef {
            index: 7,
            offset: 0,
            len: 2,
        },
    ];
    snapshots
        .write(
            &inline_header(9, &refs, 6),
            |out| {
                out.write_all(&encode_refs(&refs))?;
                out.write_all(b"abcdxy")
            },
            |out| out.write_all(&app_bytes),
        )
        .expect("the received snapshot, current");
    let values = test_store(dir.path(), Some(9));
    assert!(matches!(
        values.read(&refs[0]),
        Err(crate::values::ValueError::Missing { .. })
    ));
    let host = StateMachineHost::open(Box::new(app), snapshots, |covered| {
        assert_eq!(
            covered,
            Some(9),
            "a received snapshot covers up to its index"
        );
        Ok(Arc::clone(&values))
    })
    .expect("host");
    assert_eq!(values.read(&refs[0]).expect("installed at open"), "abcd");
    assert_eq!(values.read(&refs[1]).expect("installed at open"), "xy");
    assert_eq!(host.applied_state().applied, Some(log_id(2, 9)));
}

/// A snapshot built while a newer one was installed does not replace it: the newer one
/// stands, and its values stay.
#[test]
fn a_build_that_an_installation_overtook_publishes_nothing() {
    let dir = tempfile::tempdir().expect("tempdir");
    let snapshots = SnapshotDir::open(dir.path().join("snapshots")).expect("open");
    let values = test_store(dir.path(), Some(9));
    let refs = [ValueRef {
        index: 3,
        offset: 0,
        len: 2,
    }];
    values
        .install([Ok((refs[0], Bytes::from_static(b"ok")))], 9)
        .expect("install");
    snapshots
        .write(
            &inline_header(9, &refs, 2),
            |out| {
                out.write_all(&encode_refs(&refs))?;
                out.write_all(b"ok")
            },
            |out| out.write_all(b"app"),
        )
        .expect("installed");
    let (file, current) = write_snapshot(&snapshots, &values, header(5, Vec::new()), &[], |out| {
        out.write_all(b"older")
    })
    .expect("build");
    assert_eq!(
        current.last_log_id,
        Some((2, 9)),
        "the installed one stands"
    );
    assert_eq!(snapshots.current().expect("current").expect("one").0, file);
    assert_eq!(values.read(&refs[0]).expect("its value stays"), "ok");
}
