//! openraft's state machine, hosting an [`Application`].
//!
//! The host keeps what every application needs: the last applied log id, the membership, and
//! the cluster's client sessions ([`crate::session`]) that make writes exactly-once (a
//! retried `(session, seq)` gets its first answer back instead of being applied twice, and a
//! write of an unknown or expired session is refused), also for each write of a coalesced
//! batch ([`crate::coalesce`]). Snapshots are files (see
//! [`crate::snapshot`]); the host takes a copy of the state under its lock
//! ([`Application::snapshot_image`]: applying waits only for that copy), then encodes it,
//! writes and fsyncs the file off that lock.
//!
//! The host also keeps the values an application's state references readable after the
//! log is purged ([`crate::values`]): building a snapshot at index `S`, it lists the
//! image's references ([`crate::application::SnapshotImage::live_values`]), copies those
//! recorded at or below `S` into a value file before the snapshot is published (openraft
//! purges the log only behind a published snapshot), and drops values no published state
//! references after. A snapshot sent to another node carries the values' bytes; installing one writes
//! them into this node's value files before the state is restored from it.

use std::io;
use std::path::Path;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Instant;

use bytes::Bytes;
use futures::{Stream, TryStreamExt};
use openraft::storage::{EntryResponder, RaftSnapshotBuilder, RaftStateMachine};
use openraft::{EntryPayload, OptionalSend};

use crate::application::{Application, AppliedAt};
use crate::coalesce::{decode_batch, is_batch};
use crate::metrics::NodeMetrics;
use crate::record::StoredMembershipConfig;
use crate::session::{Admission, SessionTable, decode_register};
use crate::snapshot::{
    SnapshotDir, SnapshotFile, SnapshotHeader, SnapshotValues, encode_refs, inline_values,
    open_body, open_values,
};
use crate::types::{
    ClientRequest, ClientResponse, LogId, Snapshot, SnapshotMeta, StoredMembership, TypeConfig,
    log_id,
};
use crate::values::{ValueRef, ValueStore};

/// Everything the state machine holds, under one lock.
#[derive(Debug)]
struct HostState {
    app: Box<dyn Application>,
    applied: Option<LogId>,
    membership: StoredMembership,
    sessions: SessionTable,
}

/// What `Status` reports of a state machine: where it stands and a digest of its state there.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AppliedState {
    /// Last applied log id.
    pub applied: Option<LogId>,
    /// The application's digest at `applied`.
    pub digest: u64,
}

/// openraft's [`RaftStateMachine`] around an [`Application`]; cheap to clone (shared state).
#[derive(Debug, Clone)]
pub struct StateMachineHost {
    state: Arc<Mutex<HostState>>,
    snapshots: SnapshotDir,
    values: Arc<ValueStore>,
    /// Held while a snapshot is published or installed: openraft builds snapshots on a task
    /// of their own, so a build may overlap an installation.
    publishing: Arc<Mutex<()>>,
    /// Where the time applying waited for a snapshot's image is observed.
    metrics: Option<Arc<NodeMetrics>>,
}

impl StateMachineHost {
    /// A host for `app`, restored from the newest snapshot in `snapshots` if there is one;
    /// the values its state references are read from the store `open_values` opens with
    /// the coverage that snapshot recorded (a received snapshot's values cover up to its
    /// index). The snapshot is read and verified once.
    ///
    /// # Errors
    /// The snapshot's read or decode error, or the value store's: a node must not serve
    /// from a state it could not restore.
    pub fn open(
        app: Box<dyn Application>,
        snapshots: SnapshotDir,
        open_values: impl FnOnce(Option<u64>) -> crate::Result<Arc<ValueStore>>,
    ) -> crate::Result<Self> {
        let current = snapshots.current()?;
        let covered = current.as_ref().and_then(|(_, header)| {
            if header.values.inline {
                header.last_log_id.map(|(_, index)| index)
            } else {
                header.values.covered
            }
        });
        let host = Self {
            state: Arc::new(Mutex::new(HostState {
                app,
                applied: None,
                membership: StoredMembership::default(),
                sessions: SessionTable::default(),
            })),
            snapshots,
            values: open_values(covered)?,
            publishing: Arc::default(),
            metrics: None,
        };
        if let Some((file, header)) = current {
            let index = header.last_log_id.map_or(0, |(_, index)| index);
            if header.values.inline && !host.values.holds_installed(index) {
                // Installed, but the node stopped before its values reached the value files.
                host.install_values(&file.path)?;
            }
            host.restore(&file)?;
        }
        Ok(host)
    }

    /// This host, observing how long applying waits for each snapshot's image, and the
    /// snapshots it receives, in `metrics`.
    #[must_use]
    pub fn with_metrics(mut self, metrics: Arc<NodeMetrics>) -> Self {
        self.metrics = Some(metrics);
        self
    }

    /// Counts a snapshot received whole from a leader, checked and handed to Raft,
    /// `bytes` long.
    pub fn count_received_snapshot(&self, bytes: u64) {
        if let Some(metrics) = &self.metrics {
            metrics.snapshots_received.fetch_add(1, Ordering::Relaxed);
            metrics
                .snapshot_received_bytes
                .fetch_add(bytes, Ordering::Relaxed);
        }
    }

    /// The values the state references.
    pub fn values(&self) -> &Arc<ValueStore> {
        &self.values
    }

    /// The directory holding this state machine's snapshots.
    pub fn snapshot_dir(&self) -> &SnapshotDir {
        &self.snapshots
    }

    fn lock(&self) -> MutexGuard<'_, HostState> {
        self.state
            .lock()
            .expect("state machine lock poisoned: an apply panicked")
    }

    /// Last applied id and the application's digest there, read together.
    pub fn applied_state(&self) -> AppliedState {
        let state = self.lock();
        AppliedState {
            applied: state.applied,
            digest: state.app.digest(),
        }
    }

    /// Checks a received snapshot file before it is installed: its checksum and header,
    /// that it holds `expected` as its last applied id, its session table, and the
    /// application's state ([`Application::check_snapshot`]). This state is not touched.
    ///
    /// # Errors
    /// [`crate::Error::Decode`] naming what is wrong; [`crate::Error::Io`] on a read error.
    pub fn check_incoming(&self, path: &Path, expected: Option<LogId>) -> crate::Result<()> {
        let header = crate::snapshot::verify(path)?;
        let found = header.last_log_id.map(|(t, i)| log_id(t, i));
        if found != expected {
            return Err(crate::error::DecodeError::Snapshot(format!(
                "snapshot file holds {found:?}, its metadata says {expected:?}"
            ))
            .into());
        }
        header_membership(&header)?;
        if header.values.count > 0 && !header.values.inline {
            return Err(crate::error::DecodeError::Snapshot(format!(
                "the snapshot references {} values without carrying them",
                header.values.count
            ))
            .into());
        }
        let applied_index = header.last_log_id.map_or(0, |(_, index)| index);
        SessionTable::from_stored(header.sessions, applied_index)?;
        let (_, mut body) = open_body(path)?;
        self.lock()
            .app
            .check_snapshot(&mut body, applied_index)
            .map_err(crate::Error::io("check snapshot", path))
    }

    /// Writes the values a transferred snapshot carries into the value files.
    fn install_values(&self, path: &Path) -> crate::Result<()> {
        let (header, refs, reader) = open_values(path)?;
        let upto = header.last_log_id.map_or(0, |(_, index)| index);
        self.values
            .install(inline_values(path, &refs, reader), upto)
            .map_err(crate::Error::from)?;
        Ok(())
    }

    fn restore(&self, file: &SnapshotFile) -> crate::Result<()> {
        let (header, mut body) = open_body(&file.path)?;
        let membership = header_membership(&header)?;
        let applied_index = header.last_log_id.map_or(0, |(_, index)| index);
        let sessions = SessionTable::from_stored(header.sessions, applied_index)?;
        let mut state = self.lock();
        state
            .app
            .restore(&mut body)
            .map_err(crate::Error::io("restore snapshot", &file.path))?;
        state.applied = header.last_log_id.map(|(term, index)| log_id(term, index));
        state.membership = membership;
        state.sessions = sessions;
        Ok(())
    }
}

fn header_membership(header: &SnapshotHeader) -> crate::Result<StoredMembership> {
    let membership = header.membership.to_membership()?;
    Ok(StoredMembership::new(
        header.membership_log_id.map(|(t, i)| log_id(t, i)),
        membership,
    ))
}

impl HostState {
    /// Applies an entry's request: a session registration, one write, or each write of a
    /// batch in order.
    fn apply_entry(&mut self, at: AppliedAt, request: &ClientRequest) -> ClientResponse {
        if request.session == 0 {
            if let Some(sessions_max) = decode_register(&request.command) {
                return ClientResponse::SessionRegistered {
                    session: self.sessions.register(at.index, sessions_max),
                };
            }
            if is_batch(&request.command) {
                // Only a leader's service makes batches; one that does not decode applies
                // nothing, the same on every replica.
                let writes = decode_batch(&request.command).unwrap_or_default();
                return ClientResponse::Batch(
                    writes
                        .iter()
                        .map(|write| self.apply_request(at, write))
                        .collect(),
                );
            }
        }
        self.apply_request(at, request)
    }

    /// Applies one write under its session's rules.
    fn apply_request(&mut self, at: AppliedAt, request: &ClientRequest) -> ClientResponse {
        let index = at.index;
        if request.session == 0 {
            return ClientResponse::Applied {
                answer: self.app.apply(at, &request.command),
                index,
            };
        }
        #[cfg(feature = "sabotage")]
        if crate::sabotage::on(crate::sabotage::Fault::ForgetfulSessions)
            && self.sessions.admit(request.session, request.seq) == Admission::Unknown
        {
            // The fault: an unknown session's write is applied as if the session were new
            // (what a table that silently evicts clients did), so a late retry of an evicted
            // session's write is applied twice.
            self.sessions.register(request.session.max(1), u64::MAX);
        }
        match self.sessions.admit(request.session, request.seq) {
            Admission::Unknown => ClientResponse::UnknownSession,
            Admission::Stale { last_applied_seq } => {
                ClientResponse::StaleSequence { last_applied_seq }
            }
            Admission::Retry { response, index } => ClientResponse::Applied {
                answer: response,
                index,
            },
            Admission::Apply => {
                let answer = self.app.apply(at, &request.command);
                self.sessions
                    .record(request.session, request.seq, index, answer.clone());
                ClientResponse::Applied { answer, index }
            }
        }
    }

    fn header(&self, values: SnapshotValues) -> SnapshotHeader {
        SnapshotHeader {
            last_log_id: self.applied.map(|id| (id.leader_id.term, id.index)),
            membership_log_id: self
                .membership
                .log_id()
                .map(|id| (id.leader_id.term, id.index)),
            membership: StoredMembershipConfig::from_membership(self.membership.membership()),
            sessions: self.sessions.to_stored(),
            values,
        }
    }
}

impl RaftStateMachine<TypeConfig> for StateMachineHost {
    type SnapshotData = SnapshotFile;
    type SnapshotBuilder = Self;

    async fn applied_state(&mut self) -> Result<(Option<LogId>, StoredMembership), io::Error> {
        let state = self.lock();
        Ok((state.applied, state.membership.clone()))
    }

    async fn apply<Strm>(&mut self, mut entries: Strm) -> Result<(), io::Error>
    where
        Strm: Stream<Item = Result<EntryResponder<TypeConfig>, io::Error>> + Unpin + OptionalSend,
    {
        while let Some((entry, responder)) = entries.try_next().await? {
            let response = {
                let mut state = self.lock();
                assert!(
                    state.applied.is_none_or(|applied| applied < entry.log_id),
                    "entries are applied in log order"
                );
                state.applied = Some(entry.log_id);
                match &entry.payload {
                    EntryPayload::Blank => ClientResponse::Applied {
                        answer: Bytes::new(),
                        index: entry.log_id.index,
                    },
                    EntryPayload::Normal(request) => state.apply_entry(
                        AppliedAt {
                            term: entry.log_id.leader_id.term,
                            index: entry.log_id.index,
                        },
                        request,
                    ),
                    EntryPayload::Membership(membership) => {
                        state.membership =
                            StoredMembership::new(Some(entry.log_id), membership.clone());
                        ClientResponse::Applied {
                            answer: Bytes::new(),
                            index: entry.log_id.index,
                        }
                    }
                }
            };
            if let Some(responder) = responder {
                responder.send(response);
            }
        }
        Ok(())
    }

    async fn get_snapshot_builder(&mut self) -> Self::SnapshotBuilder {
        self.clone()
    }

    async fn install_snapshot(
        &mut self,
        meta: &SnapshotMeta,
        snapshot: SnapshotFile,
    ) -> Result<(), io::Error> {
        let snapshots = self.snapshots.clone();
        let this = self.clone();
        let expected = meta.last_log_id;
        tokio::task::spawn_blocking(move || -> crate::Result<()> {
            let _publishing = this.publishing.lock().expect("publishing lock poisoned");
            let (file, header) = snapshots.install(&snapshot)?;
            let found = header.last_log_id.map(|(t, i)| log_id(t, i));
            if found != expected {
                return Err(crate::error::DecodeError::Snapshot(format!(
                    "snapshot file holds {found:?}, its metadata says {expected:?}"
                ))
                .into());
            }
            // The snapshot is current before its values are in place: a node stopped in
            // between installs them when it opens (`StateMachineHost::open`).
            if header.values.inline {
                this.install_values(&file.path)?;
            }
            this.restore(&file)
        })
        .await
        .map_err(io::Error::other)?
        .map_err(io::Error::from)
    }

    async fn get_current_snapshot(&mut self) -> Result<Option<Snapshot>, io::Error> {
        let Some((file, header)) = self.snapshots.current()? else {
            return Ok(None);
        };
        let meta = SnapshotMeta {
            last_log_id: header.last_log_id.map(|(t, i)| log_id(t, i)),
            last_membership: header_membership(&header)?,
        };
        Ok(Some(openraft::Snapshot {
            meta,
            snapshot: SnapshotFile {
                values: Some(Arc::clone(&self.values)),
                ..file
            },
        }))
    }
}

impl RaftSnapshotBuilder<TypeConfig> for StateMachineHost {
    type SnapshotData = SnapshotFile;

    async fn build_snapshot(&mut self) -> Result<Snapshot, io::Error> {
        // Applying waits only while the image is taken; it is encoded, and its values
        // listed, after.
        let (state, image) = {
            let state = self.lock();
            let capturing = Instant::now();
            let taken = (
                state.header(SnapshotValues::default()),
                state.app.snapshot_image(),
            );
            if let Some(metrics) = &self.metrics {
                metrics
                    .snapshot_capture_latency
                    .observe(capturing.elapsed());
            }
            taken
        };
        let (snapshots, values) = (self.snapshots.clone(), Arc::clone(&self.values));
        let publishing = Arc::clone(&self.publishing);
        let (file, header) = tokio::task::spawn_blocking(move || -> io::Result<_> {
            let live = crate::values::by_place(image.live_values());
            let _publishing = publishing.lock().expect("publishing lock poisoned");
            Ok(write_snapshot(&snapshots, &values, state, &live, |out| {
                image.write(out)
            })?)
        })
        .await
        .map_err(io::Error::other)??;
        let meta = SnapshotMeta {
            last_log_id: header.last_log_id.map(|(t, i)| log_id(t, i)),
            last_membership: header_membership(&header)?,
        };
        Ok(openraft::Snapshot {
            meta,
            snapshot: SnapshotFile {
                values: Some(Arc::clone(&self.values)),
                ..file
            },
        })
    }
}

/// Publishes a snapshot of a state whose header is `header` and whose values are `live`
/// (sorted): the values recorded up to its index go to a value file first, then the file is
/// written, the application's part by `write_app` (straight into the file, so the state is
/// not copied whole once more); values no longer live are dropped last. When a snapshot at least as new is
/// current already (one was installed while this one was built), that one stands and
/// is returned. Called with the host's publishing lock held.
fn write_snapshot(
    snapshots: &SnapshotDir,
    values: &ValueStore,
    mut header: SnapshotHeader,
    live: &[ValueRef],
    write_app: impl FnOnce(&mut dyn io::Write) -> io::Result<()>,
) -> crate::Result<(SnapshotFile, SnapshotHeader)> {
    if let Some((file, current)) = snapshots.current()?
        && current.last_log_id >= header.last_log_id
    {
        return Ok((file, current));
    }
    let index = header.last_log_id.map_or(0, |(_, index)| index);
    if let Some(late) = live.iter().find(|at| at.index > index) {
        return Err(crate::Error::Invalid {
            what: "application state",
            reason: format!(
                "it references a value recorded at index {}, after its snapshot's index {index}",
                late.index
            ),
        });
    }
    if header.last_log_id.is_some() {
        values.relocate(live, index)?;
    }
    let refs = encode_refs(live);
    header.values = SnapshotValues {
        covered: values.covered(),
        count: live.len() as u64,
        inline: false,
        section_bytes: refs.len() as u64,
    };
    let file = snapshots.write(&header, |out| out.write_all(&refs), write_app)?;
    values.collect(live)?;
    Ok((file, header))
}

#[cfg(test)]
mod tests {
    use super::*;
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
}

#[cfg(test)]
mod check_tests {
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
        let (file, current) =
            write_snapshot(&snapshots, &values, header(5, Vec::new()), &[], |out| {
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
}
