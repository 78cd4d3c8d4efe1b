use std::io::Read;

use bytes::Bytes;

use super::*;
use crate::cluster_identity::ClusterIdentity;
use crate::values::ValueRef;

fn header() -> SnapshotHeader {
    SnapshotHeader {
        last_log_id: Some((2, 9)),
        membership_log_id: None,
        membership: StoredMembershipConfig {
            configs: Vec::new(),
            nodes: Vec::new(),
        },
        sessions: vec![(3, 1, b"answer".to_vec(), 5)],
        values: SnapshotValues::default(),
        identity: Some(CommittedIdentity {
            identity: ClusterIdentity::new("research", [7; 16]).expect("a valid name"),
            index: 4,
        }),
    }
}

/// Writes a snapshot file of an older format at `path`: `magic`, the header `old` as that
/// format encoded it, and the application bytes `app`.
fn write_old_format<H>(path: &Path, magic: [u8; 8], old: &H, app: &[u8])
where
    H: for<'a> rkyv::Serialize<
            rkyv::api::high::HighSerializer<
                rkyv::util::AlignedVec,
                rkyv::ser::allocator::ArenaHandle<'a>,
                rkyv::rancor::Error,
            >,
        >,
{
    let header_bytes = rkyv::to_bytes::<rkyv::rancor::Error>(old).expect("encode");
    let mut bytes = magic.to_vec();
    bytes.extend_from_slice(
        &u32::try_from(header_bytes.len())
            .expect("short")
            .to_le_bytes(),
    );
    bytes.extend_from_slice(&header_bytes);
    bytes.extend_from_slice(app);
    let crc = crc32c::crc32c(&bytes);
    bytes.extend_from_slice(&(bytes.len() as u64).to_le_bytes());
    bytes.extend_from_slice(&crc.to_le_bytes());
    fs::write(path, &bytes).expect("write");
}

/// Rewrites the magic of the snapshot at `path` and its checksum to match, so only the
/// format differs.
fn rewrite_magic(path: &Path, magic: [u8; 8]) {
    let mut bytes = fs::read(path).expect("read");
    bytes[..8].copy_from_slice(&magic);
    let body_len = bytes.len() - 12;
    let crc = crc32c::crc32c(&bytes[..body_len]);
    bytes[body_len + 8..].copy_from_slice(&crc.to_le_bytes());
    fs::write(path, bytes).expect("write");
}

#[test]
fn a_snapshot_round_trips_its_header_and_application_bytes() {
    let dir = tempfile::tempdir().expect("tempdir");
    let snapshots = SnapshotDir::open(dir.path()).expect("open");
    let file = snapshots
        .write(&header(), |_| Ok(()), |out| out.write_all(b"app"))
        .expect("write");
    let verified = verify(&file.path).expect("verify");
    assert_eq!(verified.sessions, header().sessions);
    assert_eq!(verified.identity, header().identity);
    assert_eq!(app_bytes(&file.path), b"app");
}

#[test]
fn a_format_1_snapshot_is_refused_with_a_message_naming_it() {
    let dir = tempfile::tempdir().expect("tempdir");
    let snapshots = SnapshotDir::open(dir.path()).expect("open");
    let file = snapshots
        .write(&header(), |_| Ok(()), |out| out.write_all(b"app"))
        .expect("write");
    rewrite_magic(&file.path, *MAGIC_V1);
    let error = verify(&file.path).expect_err("format 1 is refused");
    assert!(error.to_string().contains("format 1 snapshot"), "{error}");
    rewrite_magic(&file.path, *b"KEELSNPX");
    let error = verify(&file.path).expect_err("an unknown magic is refused");
    assert!(error.to_string().contains("no snapshot magic"), "{error}");
}

/// The application bytes of the snapshot at `path`.
fn app_bytes(path: &Path) -> Vec<u8> {
    let (_, mut app) = open_body(path).expect("open body");
    let mut read = Vec::new();
    app.read_to_end(&mut read).expect("read");
    read
}

/// What an older-format snapshot at `path` is read as: its last log id, sessions, values
/// section and identity, and its application bytes.
type ReadBack = (
    Option<(u64, u64)>,
    Vec<crate::session::StoredSession>,
    SnapshotValues,
    Option<CommittedIdentity>,
    Vec<u8>,
);

fn read_old_format(path: &Path) -> ReadBack {
    let read = verify(path).expect("an older format is read");
    (
        read.last_log_id,
        read.sessions,
        read.values,
        read.identity,
        app_bytes(path),
    )
}

/// A format 2 file (no values section) reads as a snapshot referencing no values and no
/// identity, and a format 3 file (no identity) as the snapshot of a cluster that committed
/// none yet; their headers and application bytes intact.
#[test]
fn formats_2_and_3_are_read_without_what_they_lacked() {
    let dir = tempfile::tempdir().expect("tempdir");
    let v3 = SnapshotHeaderV3 {
        last_log_id: Some((2, 9)),
        membership_log_id: None,
        membership: StoredMembershipConfig {
            configs: Vec::new(),
            nodes: Vec::new(),
        },
        sessions: vec![(3, 1, b"answer".to_vec(), 5)],
        values: SnapshotValues {
            covered: Some(8),
            count: 0,
            inline: false,
            section_bytes: 0,
        },
    };
    let path = dir.path().join("format3.snap");
    write_old_format(&path, *MAGIC_V3, &v3, b"app");
    assert_eq!(
        read_old_format(&path),
        (
            v3.last_log_id,
            v3.sessions.clone(),
            v3.values,
            None,
            b"app".to_vec()
        )
    );

    let v2 = SnapshotHeaderV2 {
        last_log_id: v3.last_log_id,
        membership_log_id: None,
        membership: v3.membership.clone(),
        sessions: v3.sessions.clone(),
    };
    let path = dir.path().join("format2.snap");
    write_old_format(&path, *MAGIC_V2, &v2, b"app");
    assert_eq!(
        read_old_format(&path),
        (
            v2.last_log_id,
            v2.sessions,
            SnapshotValues::default(),
            None,
            b"app".to_vec()
        )
    );
}

#[test]
fn a_values_section_round_trips_and_one_that_disagrees_is_refused() {
    let dir = tempfile::tempdir().expect("tempdir");
    let snapshots = SnapshotDir::open(dir.path()).expect("open");
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
    let mut with_values = header();
    with_values.values = SnapshotValues {
        covered: Some(9),
        count: 2,
        inline: true,
        section_bytes: 32 + 6,
    };
    let file = snapshots
        .write(
            &with_values,
            |out| {
                out.write_all(&encode_refs(&refs))?;
                out.write_all(b"abcdxy")
            },
            |out| out.write_all(b"app"),
        )
        .expect("write");
    let (header, listed, reader) = open_values(&file.path).expect("values");
    assert_eq!(
        (header.values, listed.as_slice()),
        (with_values.values, &refs[..])
    );
    let values: Vec<(ValueRef, Bytes)> = inline_values(&file.path, &listed, reader)
        .collect::<std::result::Result<_, _>>()
        .expect("inline values");
    assert_eq!(values[0].1, "abcd");
    assert_eq!(values[1].1, "xy");
    assert_eq!(app_bytes(&file.path), b"app");
    // A section whose references do not fill it: refused.
    let mut short = with_values.clone();
    short.values.section_bytes = 32 + 5;
    let file = snapshots
        .write(
            &short,
            |out| {
                out.write_all(&encode_refs(&refs))?;
                out.write_all(b"abcdx")
            },
            |out| out.write_all(b"app"),
        )
        .expect("write");
    let error = verify(&file.path).expect_err("a section that disagrees");
    assert!(
        error.to_string().contains("its references need 38"),
        "{error}"
    );
}
