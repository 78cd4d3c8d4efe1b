//! Exactly-once client sessions, owned by the cluster (Raft dissertation §6.3).
//!
//! A client registers a session through the log and the cluster gives it its id: the index
//! of the registering entry. No client chooses an id, and none is ever reused (an index is
//! committed once). Each write then carries `(session, seq)`; the table remembers every
//! session's last applied sequence and its answer, so a retry of that sequence is answered
//! with the first answer instead of being applied again, and an older sequence is refused.
//!
//! Sessions expire by one rule that every replica applies alike: a registration carries the
//! proposing leader's `sessions_max`, and applying it forgets the least recently written
//! sessions beyond that many (ordered by the index of their last write, then by id). A
//! write of a session the table does not hold — never registered, or expired — is refused
//! and never applied. Its writer cannot learn the fate of a write it had in flight, so it
//! reports that write's outcome unknown and never re-sends it under a new session.
//!
//! ```text
//!   register ──► entry i ──► session i ──► (i, 1) (i, 2) ...   retry (i, n): first answer
//!                                   └─ expired by a later registration: (i, n) refused
//! ```
//!
//! A registration command is the byte [`REGISTER_TAG`] then `sessions_max: u64` (little
//! endian), proposed as a write without a session. Inside a coalesced batch it is not a
//! registration (its index would be shared): the batch's application answers it as an
//! unknown command.

use std::collections::{BTreeSet, HashMap};

use bytes::{BufMut, Bytes, BytesMut};

use crate::error::DecodeError;

/// The first byte of a registration command; applications' tags are small and the batch
/// tag is `0xFF`.
pub const REGISTER_TAG: u8 = 0xFE;
/// Sessions a cluster keeps by default.
pub const SESSIONS_MAX_DEFAULT: u64 = 65_536;
const REGISTER_COMMAND_BYTES: usize = 9;

/// The command that registers a session on a cluster whose leader keeps `sessions_max`.
pub fn encode_register(sessions_max: u64) -> Bytes {
    let mut out = BytesMut::with_capacity(REGISTER_COMMAND_BYTES);
    out.put_u8(REGISTER_TAG);
    out.put_u64_le(sessions_max);
    out.freeze()
}

/// The `sessions_max` of registration `command`; `None` if it is not one.
pub(crate) fn decode_register(command: &[u8]) -> Option<u64> {
    let (&tag, rest) = command.split_first()?;
    if tag != REGISTER_TAG || command.len() != REGISTER_COMMAND_BYTES {
        return None;
    }
    Some(u64::from_le_bytes(rest.try_into().ok()?))
}

/// One session's last applied write.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Session {
    /// The last applied sequence; 0 before the first write.
    seq: u64,
    /// The application's answer to it.
    response: Bytes,
    /// Raft index of that write (of the registration before the first write): orders
    /// expiry.
    index: u64,
}

/// A session's stored form: `(session id, last applied seq, its answer, index)`.
pub(crate) type StoredSession = (u64, u64, Vec<u8>, u64);

/// What the table says of a write before it is applied.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Admission {
    /// A new sequence of a live session: apply it, then [`SessionTable::record`] it.
    Apply,
    /// A retry of the session's last applied write: its first answer, at its first index.
    Retry {
        /// The answer.
        response: Bytes,
        /// The index it was applied at.
        index: u64,
    },
    /// A sequence older than the session's last applied one; nothing applied.
    Stale {
        /// The session's last applied sequence.
        last_applied_seq: u64,
    },
    /// No such session (never registered, or expired); nothing applied.
    Unknown,
}

/// Every live session of a state machine.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub(crate) struct SessionTable {
    sessions: HashMap<u64, Session>,
    /// `(index, id)` of every session, least recently written first.
    order: BTreeSet<(u64, u64)>,
}

impl SessionTable {
    /// Live sessions.
    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.sessions.len()
    }

    /// Registers a session at `index` (its id) and expires the least recently written ones
    /// beyond `sessions_max` (at least the new one is kept); the new session's id.
    pub(crate) fn register(&mut self, index: u64, sessions_max: u64) -> u64 {
        assert!(
            !self.sessions.contains_key(&index),
            "a registration entry's index is unique"
        );
        self.sessions.insert(
            index,
            Session {
                seq: 0,
                response: Bytes::new(),
                index,
            },
        );
        self.order.insert((index, index));
        let keep = usize::try_from(sessions_max.max(1)).unwrap_or(usize::MAX);
        while self.sessions.len() > keep {
            let (_, expired) = self
                .order
                .pop_first()
                .expect("the order holds every session");
            self.sessions.remove(&expired);
        }
        self.check_invariants();
        index
    }

    /// What to do with write `seq` of `session`.
    pub(crate) fn admit(&self, session: u64, seq: u64) -> Admission {
        let Some(last) = self.sessions.get(&session) else {
            return Admission::Unknown;
        };
        if seq == last.seq && seq != 0 {
            Admission::Retry {
                response: last.response.clone(),
                index: last.index,
            }
        } else if seq <= last.seq {
            Admission::Stale {
                last_applied_seq: last.seq,
            }
        } else {
            Admission::Apply
        }
    }

    /// Records that write `seq` of `session` was applied at `index`, answered `response`.
    ///
    /// # Panics
    /// If the write was not admitted ([`Admission::Apply`]) just before.
    pub(crate) fn record(&mut self, session: u64, seq: u64, index: u64, response: Bytes) {
        let last = self
            .sessions
            .get_mut(&session)
            .expect("only an admitted write of a live session is recorded");
        assert!(seq > last.seq, "a session's sequences only grow");
        self.order.remove(&(last.index, session));
        *last = Session {
            seq,
            response,
            index,
        };
        self.order.insert((index, session));
        self.check_invariants();
    }

    /// The stored form of every session, ordered by id.
    pub(crate) fn to_stored(&self) -> Vec<StoredSession> {
        let mut stored: Vec<StoredSession> = self
            .sessions
            .iter()
            .map(|(id, s)| (*id, s.seq, s.response.to_vec(), s.index))
            .collect();
        stored.sort_unstable_by_key(|s| s.0);
        stored
    }

    /// The table a snapshot stored, checked: ids unique and non-zero, and no session's
    /// last write before its registration or after `applied_index`.
    ///
    /// # Errors
    /// [`DecodeError::Snapshot`] naming the first session that breaks a rule.
    pub(crate) fn from_stored(
        stored: impl IntoIterator<Item = StoredSession>,
        applied_index: u64,
    ) -> Result<Self, DecodeError> {
        let mut table = Self::default();
        for (id, seq, response, index) in stored {
            if id == 0 || index < id || index > applied_index {
                return Err(DecodeError::Snapshot(format!(
                    "session {id} last written at index {index} (applied index {applied_index})"
                )));
            }
            if table.sessions.contains_key(&id) {
                return Err(DecodeError::Snapshot(format!("session {id} stored twice")));
            }
            let response = Bytes::from(response);
            table.sessions.insert(
                id,
                Session {
                    seq,
                    response,
                    index,
                },
            );
            table.order.insert((index, id));
        }
        table.check_invariants();
        Ok(table)
    }

    fn check_invariants(&self) {
        debug_assert_eq!(self.sessions.len(), self.order.len());
        debug_assert!(
            self.order
                .iter()
                .all(|(index, id)| self.sessions.get(id).is_some_and(|s| s.index == *index))
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_registration_round_trips_and_nothing_else_decodes_as_one() {
        assert_eq!(decode_register(&encode_register(7)), Some(7));
        assert_eq!(decode_register(&[REGISTER_TAG]), None);
        assert_eq!(decode_register(&[0; REGISTER_COMMAND_BYTES]), None);
        let mut longer = encode_register(7).to_vec();
        longer.push(0);
        assert_eq!(decode_register(&longer), None);
    }

    #[test]
    fn a_retry_gets_its_first_answer_and_an_older_sequence_is_stale() {
        let mut table = SessionTable::default();
        let id = table.register(5, 10);
        assert_eq!(id, 5);
        assert_eq!(
            table.admit(id, 0),
            Admission::Stale {
                last_applied_seq: 0
            }
        );
        assert_eq!(table.admit(id, 1), Admission::Apply);
        table.record(id, 1, 6, Bytes::from_static(b"one"));
        assert_eq!(
            table.admit(id, 1),
            Admission::Retry {
                response: Bytes::from_static(b"one"),
                index: 6
            }
        );
        table.record(id, 3, 9, Bytes::from_static(b"three"));
        assert_eq!(
            table.admit(id, 2),
            Admission::Stale {
                last_applied_seq: 3
            }
        );
        assert_eq!(table.admit(id + 1, 1), Admission::Unknown);
    }

    #[test]
    fn registrations_expire_the_least_recently_written_sessions() {
        let mut table = SessionTable::default();
        let (a, b) = (table.register(1, 2), table.register(2, 2));
        // `a` writes after `b` registered: `b` is now the least recently written.
        table.record(a, 1, 3, Bytes::new());
        let c = table.register(4, 2);
        assert_eq!(table.len(), 2);
        assert_eq!(table.admit(b, 1), Admission::Unknown);
        assert_eq!(table.admit(a, 2), Admission::Apply);
        assert_eq!(table.admit(c, 1), Admission::Apply);
        // A limit of 0 still keeps the session just registered.
        let d = table.register(5, 0);
        assert_eq!(table.len(), 1);
        assert_eq!(table.admit(d, 1), Admission::Apply);
    }

    #[test]
    fn a_stored_table_round_trips_and_bad_ones_are_refused() {
        let mut table = SessionTable::default();
        let a = table.register(3, 10);
        table.register(4, 10);
        table.record(a, 2, 8, Bytes::from_static(b"x"));
        let back = SessionTable::from_stored(table.to_stored(), 8).expect("valid");
        assert_eq!(back, table);
        assert!(SessionTable::from_stored(table.to_stored(), 7).is_err());
        assert!(SessionTable::from_stored([(0, 1, Vec::new(), 3)], 9).is_err());
        assert!(SessionTable::from_stored([(5, 1, Vec::new(), 4)], 9).is_err());
        assert!(
            SessionTable::from_stored([(5, 1, Vec::new(), 6), (5, 2, Vec::new(), 7)], 9).is_err()
        );
    }
}
