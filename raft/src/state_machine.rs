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
use crate::cluster_identity::{self, Commit, CommittedIdentity, IdentityChange, decode_commit};
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
    /// The cluster's identity, once an identity command was applied.
    identity: Option<CommittedIdentity>,
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
                identity: None,
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

    /// The application's protocol ([`Application::protocol`]).
    pub fn application_protocol(&self) -> u32 {
        self.lock().app.protocol()
    }

    /// The cluster's identity in force at the last applied entry, if one was committed.
    pub fn cluster_identity(&self) -> Option<CommittedIdentity> {
        self.lock().identity.clone()
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
        state.identity = header.identity;
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
    /// Applies an entry's request: a session registration, the cluster's identity, one
    /// write, or each write of a batch in order.
    fn apply_entry(&mut self, at: AppliedAt, request: &ClientRequest) -> ClientResponse {
        if request.session == 0 {
            if let Some((identity, commit)) = decode_commit(&request.command) {
                let (committed, change) =
                    cluster_identity::apply(&mut self.identity, identity, commit, at.index);
                if let (IdentityChange::Replaced, Commit::Replace { stamp_ms }) = (change, commit) {
                    self.app.identity_replaced(at, &committed, stamp_ms);
                }
                return ClientResponse::ClusterIdentity(committed);
            }
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
            identity: self.identity.clone(),
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
mod tests;

#[cfg(test)]
mod check_tests;
