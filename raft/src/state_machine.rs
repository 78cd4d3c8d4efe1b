//! openraft's state machine, hosting an [`Application`].
//!
//! The host keeps what every application needs: the last applied log id, the membership, and
//! per-client sessions that make writes exactly-once (a retried `(client id, seq)` gets its
//! first answer back instead of being applied twice), also for each write of a coalesced
//! batch ([`crate::coalesce`]). Snapshots are files (see
//! [`crate::snapshot`]); the host builds them from a copy of the state serialized under its
//! lock, then writes and fsyncs the file off that lock.

use std::collections::{BTreeSet, HashMap};
use std::io;
use std::sync::{Arc, Mutex, MutexGuard};

use bytes::Bytes;
use futures::{Stream, TryStreamExt};
use openraft::storage::{EntryResponder, RaftSnapshotBuilder, RaftStateMachine};
use openraft::{EntryPayload, OptionalSend};

use crate::application::{Application, AppliedAt};
use crate::coalesce::{decode_batch, is_batch};
use crate::record::StoredMembershipConfig;
use crate::snapshot::{SnapshotDir, SnapshotFile, SnapshotHeader, open_body};
use crate::types::{
    ClientRequest, ClientResponse, LogId, Snapshot, SnapshotMeta, StoredMembership, TypeConfig,
    log_id,
};

/// Most client sessions remembered; beyond it the least recently written one is forgotten
/// (its retries are then answered [`ClientResponse::StaleSequence`]).
pub const SESSIONS_MAX: usize = 65_536;

/// One client's last applied write.
#[derive(Debug, Clone)]
struct Session {
    seq: u64,
    response: Bytes,
    /// Raft index the write was applied at: orders sessions for eviction.
    index: u64,
}

/// Everything the state machine holds, under one lock.
#[derive(Debug)]
struct HostState {
    app: Box<dyn Application>,
    applied: Option<LogId>,
    membership: StoredMembership,
    sessions: HashMap<u64, Session>,
    /// `(index, client id)` of every session, to evict the least recently written one (the
    /// writes of one batch share an index; the client id orders them the same everywhere).
    session_order: BTreeSet<(u64, u64)>,
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
}

impl StateMachineHost {
    /// A host for `app`, restored from the newest snapshot in `snapshots` if there is one.
    ///
    /// # Errors
    /// The snapshot's read or decode error: a node must not serve from a state it could not
    /// restore.
    pub fn open(app: Box<dyn Application>, snapshots: SnapshotDir) -> crate::Result<Self> {
        let host = Self {
            state: Arc::new(Mutex::new(HostState {
                app,
                applied: None,
                membership: StoredMembership::default(),
                sessions: HashMap::new(),
                session_order: BTreeSet::new(),
            })),
            snapshots,
        };
        if let Some((file, _)) = host.snapshots.current()? {
            host.restore(&file)?;
        }
        Ok(host)
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

    fn restore(&self, file: &SnapshotFile) -> crate::Result<()> {
        let (header, mut body) = open_body(&file.path)?;
        let membership = header_membership(&header)?;
        let mut state = self.lock();
        state
            .app
            .restore(&mut body)
            .map_err(crate::Error::io("restore snapshot", &file.path))?;
        state.applied = header.last_log_id.map(|(term, index)| log_id(term, index));
        state.membership = membership;
        state.sessions.clear();
        state.session_order.clear();
        for (client, seq, response, index) in header.sessions {
            state.sessions.insert(
                client,
                Session {
                    seq,
                    response: Bytes::from(response),
                    index,
                },
            );
            state.session_order.insert((index, client));
        }
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
    /// Applies an entry's request: one write, or each write of a batch in order.
    fn apply_entry(&mut self, at: AppliedAt, request: &ClientRequest) -> ClientResponse {
        if request.client_id != 0 || !is_batch(&request.command) {
            return self.apply_request(at, request);
        }
        // Only a leader's service makes batches; one that does not decode applies nothing,
        // the same on every replica.
        let writes = decode_batch(&request.command).unwrap_or_default();
        ClientResponse::Batch(
            writes
                .iter()
                .map(|write| self.apply_request(at, write))
                .collect(),
        )
    }

    fn apply_request(&mut self, at: AppliedAt, request: &ClientRequest) -> ClientResponse {
        let index = at.index;
        if request.client_id == 0 {
            return ClientResponse::Applied {
                answer: self.app.apply(at, &request.command),
                index,
            };
        }
        if let Some(session) = self.sessions.get(&request.client_id) {
            if request.seq == session.seq {
                return ClientResponse::Applied {
                    answer: session.response.clone(),
                    index: session.index,
                };
            }
            if request.seq < session.seq {
                return ClientResponse::StaleSequence {
                    last_applied_seq: session.seq,
                };
            }
        }
        let response = self.app.apply(at, &request.command);
        if let Some(old) = self.sessions.insert(
            request.client_id,
            Session {
                seq: request.seq,
                response: response.clone(),
                index,
            },
        ) {
            self.session_order.remove(&(old.index, request.client_id));
        }
        self.session_order.insert((index, request.client_id));
        while self.sessions.len() > SESSIONS_MAX {
            let (_, client) = self
                .session_order
                .pop_first()
                .expect("order tracks every session");
            self.sessions.remove(&client);
        }
        self.check_invariants();
        ClientResponse::Applied {
            answer: response,
            index,
        }
    }

    fn check_invariants(&self) {
        debug_assert_eq!(self.sessions.len(), self.session_order.len());
    }

    fn header(&self) -> SnapshotHeader {
        SnapshotHeader {
            last_log_id: self.applied.map(|id| (id.leader_id.term, id.index)),
            membership_log_id: self
                .membership
                .log_id()
                .map(|id| (id.leader_id.term, id.index)),
            membership: StoredMembershipConfig::from_membership(self.membership.membership()),
            sessions: self
                .sessions
                .iter()
                .map(|(client, s)| (*client, s.seq, s.response.to_vec(), s.index))
                .collect(),
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
            let (file, header) = snapshots.install(&snapshot)?;
            let found = header.last_log_id.map(|(t, i)| log_id(t, i));
            if found != expected {
                return Err(crate::error::DecodeError::Snapshot(format!(
                    "snapshot file holds {found:?}, its metadata says {expected:?}"
                ))
                .into());
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
            snapshot: file,
        }))
    }
}

impl RaftSnapshotBuilder<TypeConfig> for StateMachineHost {
    type SnapshotData = SnapshotFile;

    async fn build_snapshot(&mut self) -> Result<Snapshot, io::Error> {
        let (header, app_bytes, membership) = {
            let state = self.lock();
            let mut app_bytes = Vec::new();
            state.app.write_snapshot(&mut app_bytes)?;
            (state.header(), app_bytes, state.membership.clone())
        };
        let snapshots = self.snapshots.clone();
        let last_log_id = header.last_log_id.map(|(t, i)| log_id(t, i));
        let file = tokio::task::spawn_blocking(move || {
            snapshots.write(&header, |out| out.write_all(&app_bytes))
        })
        .await
        .map_err(io::Error::other)??;
        let meta = SnapshotMeta {
            last_log_id,
            last_membership: membership,
        };
        Ok(openraft::Snapshot {
            meta,
            snapshot: file,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::coalesce::encode_batch;
    use crate::multiplex::{AppTag, Multiplex, tagged};
    use crate::plain_log::{PlainLog, Retention, decode_append_answer, encode_append};

    fn host() -> HostState {
        HostState {
            app: Box::new(Multiplex::new(PlainLog::new(Retention::default()), None)),
            applied: None,
            membership: StoredMembership::default(),
            sessions: HashMap::new(),
            session_order: BTreeSet::new(),
        }
    }

    fn append(client_id: u64, seq: u64, record: &'static str) -> ClientRequest {
        ClientRequest {
            client_id,
            seq,
            command: tagged(
                AppTag::PlainLog,
                &encode_append(1, &[Bytes::from_static(record.as_bytes())]),
            ),
        }
    }

    fn offset(response: &ClientResponse) -> Option<u64> {
        match response {
            ClientResponse::Applied { answer, .. } => decode_append_answer(answer).map(|(o, _)| o),
            _ => None,
        }
    }

    #[test]
    fn a_batch_applies_each_write_once_with_its_own_session() {
        let mut host = host();
        let at = |index| AppliedAt { term: 1, index };
        let first = host.apply_entry(at(1), &append(1, 1, "a"));
        assert_eq!(offset(&first), Some(0));
        let batch = ClientRequest {
            client_id: 0,
            seq: 0,
            command: encode_batch(&[
                append(2, 1, "b"),
                // A retry of client 1's applied write: its first answer, not a new record.
                append(1, 1, "a"),
                append(3, 5, "c"),
                // Client 2 again in the same batch, next sequence.
                append(2, 2, "d"),
            ]),
        };
        let ClientResponse::Batch(answers) = host.apply_entry(at(2), &batch) else {
            panic!("a batch is answered as one");
        };
        let offsets: Vec<Option<u64>> = answers.iter().map(offset).collect();
        assert_eq!(offsets, [Some(1), Some(0), Some(2), Some(3)]);
        assert_eq!(
            answers[1],
            ClientResponse::Applied {
                answer: match &first {
                    ClientResponse::Applied { answer, .. } => answer.clone(),
                    _ => unreachable!(),
                },
                index: 1
            }
        );
        // A stale sequence inside a batch is refused, the others applied.
        let stale = ClientRequest {
            client_id: 0,
            seq: 0,
            command: encode_batch(&[append(2, 1, "old"), append(4, 1, "e")]),
        };
        let ClientResponse::Batch(answers) = host.apply_entry(at(3), &stale) else {
            panic!("a batch is answered as one");
        };
        assert_eq!(
            answers[0],
            ClientResponse::StaleSequence {
                last_applied_seq: 2
            }
        );
        assert_eq!(offset(&answers[1]), Some(4));
        assert_eq!(host.sessions.len(), 4);
        assert_eq!(host.session_order.len(), 4);
        assert!(host.session_order.contains(&(2, 2)) && host.session_order.contains(&(2, 3)));
    }
}
