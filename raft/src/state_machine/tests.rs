use super::*;
use crate::cluster_identity::{ClusterIdentity, Commit};
use crate::coalesce::encode_batch;
use crate::multiplex::{AppTag, Multiplex, tagged};
use crate::plain_log::{PlainLog, Retention, decode_append_answer, encode_append};
use crate::session::encode_register;

fn host() -> HostState {
    HostState {
        app: Box::new(Multiplex::new(PlainLog::new(Retention::default()), None)),
        applied: None,
        membership: StoredMembership::default(),
        sessions: SessionTable::default(),
        identity: None,
    }
}

fn at(index: u64) -> AppliedAt {
    AppliedAt { term: 1, index }
}

fn append(session: u64, seq: u64, record: &'static str) -> ClientRequest {
    ClientRequest {
        session,
        seq,
        command: tagged(
            AppTag::PlainLog,
            &encode_append(1, &[Bytes::from_static(record.as_bytes())]),
        ),
    }
}

fn register(host: &mut HostState, index: u64, sessions_max: u64) -> u64 {
    let request = ClientRequest {
        session: 0,
        seq: 0,
        command: encode_register(sessions_max),
    };
    match host.apply_entry(at(index), &request) {
        ClientResponse::SessionRegistered { session } => session,
        other => panic!("a registration answered {other:?}"),
    }
}

fn offset(response: &ClientResponse) -> Option<u64> {
    match response {
        ClientResponse::Applied { answer, .. } => decode_append_answer(answer).map(|(o, _)| o),
        _ => None,
    }
}

/// The plain log's next offset: how many records were applied.
fn records(host: &HostState) -> u64 {
    let mut bytes = Vec::new();
    host.app.write_snapshot(&mut bytes).expect("snapshot");
    // The plain log's section: its length, then `next_offset` first.
    u64::from_le_bytes(bytes[8..16].try_into().expect("8 bytes"))
}

#[test]
fn a_batch_applies_each_write_once_with_its_own_session() {
    let mut host = host();
    let (a, b, c) = (
        register(&mut host, 1, 100),
        register(&mut host, 2, 100),
        register(&mut host, 3, 100),
    );
    let first = host.apply_entry(at(4), &append(a, 1, "a"));
    assert_eq!(offset(&first), Some(0));
    let batch = ClientRequest {
        session: 0,
        seq: 0,
        command: encode_batch(&[
            append(b, 1, "b"),
            // A retry of session a's applied write: its first answer, not a new record.
            append(a, 1, "a"),
            append(c, 5, "c"),
            // Session b again in the same batch, next sequence.
            append(b, 2, "d"),
            // A session nobody registered: refused, not applied.
            append(77, 1, "x"),
        ]),
    };
    let ClientResponse::Batch(answers) = host.apply_entry(at(5), &batch) else {
        panic!("a batch is answered as one");
    };
    let offsets: Vec<Option<u64>> = answers.iter().map(offset).collect();
    assert_eq!(offsets, [Some(1), Some(0), Some(2), Some(3), None]);
    assert_eq!(answers[4], ClientResponse::UnknownSession);
    let ClientResponse::Applied { answer, .. } = &first else {
        panic!("applied")
    };
    assert_eq!(
        answers[1],
        ClientResponse::Applied {
            answer: answer.clone(),
            index: 4
        }
    );
    // A stale sequence inside a batch is refused, the others applied.
    let stale = ClientRequest {
        session: 0,
        seq: 0,
        command: encode_batch(&[append(b, 1, "old"), append(c, 6, "e")]),
    };
    let ClientResponse::Batch(answers) = host.apply_entry(at(6), &stale) else {
        panic!("a batch is answered as one");
    };
    assert_eq!(
        answers[0],
        ClientResponse::StaleSequence {
            last_applied_seq: 2
        }
    );
    assert_eq!(offset(&answers[1]), Some(4));
    assert_eq!(records(&host), 5);
    // A registration inside a batch registers nothing.
    let inner = ClientRequest {
        session: 0,
        seq: 0,
        command: encode_register(100),
    };
    let batch = ClientRequest {
        session: 0,
        seq: 0,
        command: encode_batch(&[inner.clone(), inner]),
    };
    host.apply_entry(at(7), &batch);
    assert_eq!(host.sessions.len(), 3);
}

/// The hole this module closes: a client's write, then more sessions than the limit
/// registered and written, then the same `(session, seq)` again. The session has
/// expired, so the late retry is refused and the record is in the log once.
#[test]
fn a_retry_after_its_session_expired_is_refused_not_applied() {
    let mut host = host();
    let sessions_max = 8;
    let first = register(&mut host, 1, sessions_max);
    assert_eq!(
        offset(&host.apply_entry(at(2), &append(first, 1, "once"))),
        Some(0)
    );
    let mut index = 3;
    for _ in 0..20 {
        let other = register(&mut host, index, sessions_max);
        host.apply_entry(at(index + 1), &append(other, 1, "other"));
        index += 2;
    }
    assert_eq!(host.sessions.len(), 8);
    assert_eq!(records(&host), 21);
    let retry = host.apply_entry(at(index), &append(first, 1, "once"));
    assert_eq!(retry, ClientResponse::UnknownSession);
    assert_eq!(records(&host), 21, "the late retry applied nothing");
}

fn commit_identity(
    host: &mut HostState,
    index: u64,
    identity: &ClusterIdentity,
    replace: bool,
) -> CommittedIdentity {
    let commit = if replace {
        Commit::Replace {
            stamp_ms: 1000 + index,
        }
    } else {
        Commit::First
    };
    let request = ClientRequest {
        session: 0,
        seq: 0,
        command: identity.commit_command(commit),
    };
    match host.apply_entry(at(index), &request) {
        ClientResponse::ClusterIdentity(committed) => committed,
        other => panic!("an identity command answered {other:?}"),
    }
}

/// The first identity applied is in force and every later one without `replace` is
/// answered with it; the host's snapshot header carries it.
#[test]
fn the_first_cluster_identity_applied_stays_in_force() {
    let mut host = host();
    let first = ClusterIdentity::mint("research").expect("mint");
    let second = ClusterIdentity::mint("research").expect("mint");
    let committed = commit_identity(&mut host, 3, &first, false);
    assert_eq!(committed.identity, first);
    assert_eq!(committed.index, 3);
    assert_eq!(commit_identity(&mut host, 7, &second, false), committed);
    assert_eq!(host.identity, Some(committed.clone()));
    assert_eq!(
        host.header(SnapshotValues::default()).identity,
        Some(committed)
    );
    let replaced = commit_identity(&mut host, 9, &second, true);
    assert_eq!((replaced.identity, replaced.index), (second, 9));
}

/// An application that notes the identity replacements it is told of.
#[derive(Debug, Default)]
struct Replacements(Arc<Mutex<Vec<(u64, String, u64)>>>);

impl Application for Replacements {
    fn apply(&mut self, _: AppliedAt, _: &Bytes) -> Bytes {
        Bytes::new()
    }
    fn snapshot_image(&self) -> Box<dyn crate::application::SnapshotImage> {
        Box::new(crate::application::EncodedImage {
            bytes: Vec::new(),
            values: Vec::new(),
        })
    }
    fn restore(&mut self, _: &mut dyn std::io::Read) -> std::io::Result<()> {
        Ok(())
    }
    fn check_snapshot(&self, _: &mut dyn std::io::Read, _: u64) -> std::io::Result<()> {
        Ok(())
    }
    fn digest(&self) -> u64 {
        0
    }
    fn identity_replaced(&mut self, at: AppliedAt, identity: &CommittedIdentity, stamp_ms: u64) {
        assert_eq!(
            at.index, identity.index,
            "told at the entry that replaced it"
        );
        self.0
            .lock()
            .expect("lock")
            .push((at.index, identity.identity.to_string(), stamp_ms));
    }
}

/// The application is told of a replacement, once, at its entry: not of the first identity,
/// nor of one without `replace`, nor of a retried replacement of the identity in force.
#[test]
fn the_application_is_told_of_each_replacement_once() {
    let told = Arc::new(Mutex::new(Vec::new()));
    let mut host = HostState {
        app: Box::new(Replacements(Arc::clone(&told))),
        ..host()
    };
    let first = ClusterIdentity::mint("research").expect("mint");
    let second = ClusterIdentity::mint("research").expect("mint");
    let third = ClusterIdentity::mint("research").expect("mint");
    commit_identity(&mut host, 3, &first, false);
    commit_identity(&mut host, 4, &second, false);
    assert!(told.lock().expect("lock").is_empty());
    commit_identity(&mut host, 5, &second, true);
    commit_identity(&mut host, 6, &second, true);
    commit_identity(&mut host, 8, &third, true);
    assert_eq!(
        *told.lock().expect("lock"),
        [(5, second.to_string(), 1005), (8, third.to_string(), 1008)],
        "with each replacement's own stamp"
    );
    assert_eq!(host.identity.map(|c| c.index), Some(8));
}
