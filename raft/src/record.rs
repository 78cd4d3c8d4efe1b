//! How Raft entries, votes and the committed id are stored in keel-log.
//!
//! An entry's log id lives in keel-log's record header; the record payload is a
//! [`StoredPayload`] (rkyv). Vote and committed id are small versioned blobs in keel-log's
//! checksummed meta file.

use std::collections::{BTreeMap, BTreeSet};

use bytes::Bytes;
use rkyv::{Archive, Deserialize, Serialize};

use crate::error::{DecodeError, Result};
use crate::types::{
    ClientRequest, Entry, EntryPayload, LogId, Membership, NodeAddr, NodeId, Vote, log_id,
};

/// The payload of one stored Raft entry.
#[derive(Debug, Archive, Serialize, Deserialize)]
pub(crate) enum StoredPayload {
    /// A leader's blank entry.
    Blank,
    /// A client write.
    Normal {
        /// The writer's id.
        session: u64,
        /// The writer's sequence number.
        seq: u64,
        /// The application command.
        command: Vec<u8>,
    },
    /// A membership change.
    Membership(StoredMembershipConfig),
}

/// A membership: its voter sets (two during a joint change) and every node's address.
#[derive(Debug, Clone, Archive, Serialize, Deserialize)]
pub(crate) struct StoredMembershipConfig {
    /// Voter id sets.
    pub(crate) configs: Vec<Vec<u64>>,
    /// `(node id, address, incarnation)` of voters and learners.
    pub(crate) nodes: Vec<(u64, String, u64)>,
}

impl StoredPayload {
    /// The stored form of an entry's payload.
    pub(crate) fn from_entry(payload: &EntryPayload) -> Self {
        match payload {
            EntryPayload::Blank => Self::Blank,
            EntryPayload::Normal(request) => Self::Normal {
                session: request.session,
                seq: request.seq,
                command: request.command.to_vec(),
            },
            EntryPayload::Membership(membership) => {
                Self::Membership(StoredMembershipConfig::from_membership(membership))
            }
        }
    }
}

impl StoredMembershipConfig {
    /// The stored form of a membership.
    pub(crate) fn from_membership(membership: &Membership) -> Self {
        Self {
            configs: membership
                .get_joint_config()
                .iter()
                .map(|set| set.iter().copied().collect())
                .collect(),
            nodes: membership
                .nodes()
                .map(|(id, node)| (*id, node.addr.clone(), node.incarnation))
                .collect(),
        }
    }
}

/// A membership from its voter sets and member addresses, as openraft validates it.
fn membership_from(
    configs: Vec<BTreeSet<NodeId>>,
    nodes: BTreeMap<NodeId, NodeAddr>,
) -> Result<Membership, DecodeError> {
    Membership::new(configs, nodes).map_err(|e| DecodeError::Membership(e.to_string()))
}

impl StoredMembershipConfig {
    /// The membership this stored form describes.
    ///
    /// # Errors
    /// [`DecodeError::Membership`] when the stored sets name a voter without an address.
    pub(crate) fn to_membership(&self) -> Result<Membership, DecodeError> {
        membership_from(
            self.configs
                .iter()
                .map(|set| set.iter().copied().collect())
                .collect(),
            self.nodes
                .iter()
                .map(|(id, addr, incarnation)| (*id, NodeAddr::new(addr.as_str(), *incarnation)))
                .collect(),
        )
    }
}

impl ArchivedStoredMembershipConfig {
    /// The membership this stored form describes.
    ///
    /// # Errors
    /// [`DecodeError::Membership`] when the stored sets name a voter without an address.
    pub(crate) fn to_membership(&self) -> Result<Membership, DecodeError> {
        membership_from(
            self.configs
                .iter()
                .map(|set| set.iter().map(|id| id.to_native()).collect())
                .collect(),
            self.nodes
                .iter()
                .map(|node| {
                    (
                        node.0.to_native(),
                        NodeAddr::new(node.1.as_str(), node.2.to_native()),
                    )
                })
                .collect(),
        )
    }
}

/// A record's command bytes, read in place from keel-log's mapping: entries read for
/// replication and apply share the mapped bytes instead of copying them.
struct MappedCommand(keel_log::Record<StoredPayload>);

impl AsRef<[u8]> for MappedCommand {
    fn as_ref(&self) -> &[u8] {
        match &*self.0 {
            ArchivedStoredPayload::Normal { command, .. } => command.as_slice(),
            _ => &[],
        }
    }
}

/// A `Normal` record's command, shared with the mapping (no copy); empty for other records.
pub(crate) fn mapped_command(record: keel_log::Record<StoredPayload>) -> Bytes {
    Bytes::from_owner(MappedCommand(record))
}

/// The openraft entry a log record holds, its command shared with the mapping (no copy).
///
/// # Errors
/// [`DecodeError`] when a stored membership is inconsistent.
pub(crate) fn entry_from_record(
    record: keel_log::Record<StoredPayload>,
) -> Result<Entry, DecodeError> {
    let id = from_keel_id(record.id());
    match &*record {
        ArchivedStoredPayload::Normal { session, seq, .. } => {
            let (session, seq) = (session.to_native(), seq.to_native());
            let command = mapped_command(record);
            Ok(Entry {
                log_id: id,
                payload: EntryPayload::Normal(ClientRequest {
                    session,
                    seq,
                    command,
                }),
            })
        }
        other => other.to_entry(id),
    }
}

impl ArchivedStoredPayload {
    /// The openraft entry with this payload at `id`.
    ///
    /// # Errors
    /// [`DecodeError`] when a stored membership is inconsistent.
    pub(crate) fn to_entry(&self, id: LogId) -> Result<Entry, DecodeError> {
        let payload = match self {
            Self::Blank => EntryPayload::Blank,
            Self::Normal {
                session,
                seq,
                command,
            } => EntryPayload::Normal(ClientRequest {
                session: session.to_native(),
                seq: seq.to_native(),
                command: Bytes::copy_from_slice(command.as_slice()),
            }),
            Self::Membership(config) => EntryPayload::Membership(config.to_membership()?),
        };
        Ok(Entry {
            log_id: id,
            payload,
        })
    }
}

/// keel-log's id for a Raft log id.
pub(crate) fn to_keel_id(id: &LogId) -> keel_log::LogId {
    keel_log::LogId::new(id.leader_id.term, id.index)
}

/// The Raft log id for a keel-log id.
pub(crate) fn from_keel_id(id: keel_log::LogId) -> LogId {
    log_id(id.term, id.index)
}

const VOTE_BLOB_VERSION: u8 = 1;
const VOTE_BLOB_LEN: usize = 18;
const COMMITTED_BLOB_VERSION: u8 = 1;
const COMMITTED_BLOB_LEN: usize = 17;

/// A vote's blob: version, term, voted-for node, committed flag (little-endian).
pub(crate) fn encode_vote(vote: &Vote) -> [u8; VOTE_BLOB_LEN] {
    let mut blob = [0u8; VOTE_BLOB_LEN];
    blob[0] = VOTE_BLOB_VERSION;
    blob[1..9].copy_from_slice(&vote.leader_id().term.to_le_bytes());
    blob[9..17].copy_from_slice(&vote.leader_id().voted_for.to_le_bytes());
    blob[17] = u8::from(vote.is_committed());
    blob
}

/// The vote in a blob written by [`encode_vote`].
///
/// # Errors
/// [`DecodeError::Blob`] for a blob of another length, version or flag value.
pub(crate) fn decode_vote(blob: &[u8]) -> Result<Vote, DecodeError> {
    let blob: &[u8; VOTE_BLOB_LEN] = blob.try_into().map_err(|_| DecodeError::Blob {
        what: "vote",
        len: blob.len(),
    })?;
    if blob[0] != VOTE_BLOB_VERSION || blob[17] > 1 {
        return Err(DecodeError::Blob {
            what: "vote",
            len: blob.len(),
        });
    }
    let term = u64_at(blob, 1);
    let node = u64_at(blob, 9);
    if blob[17] == 1 {
        Ok(Vote::new_committed(term, node))
    } else {
        Ok(Vote::new(term, node))
    }
}

/// The committed id's blob: version, then a presence flag, term and index.
pub(crate) fn encode_committed(committed: Option<&LogId>) -> [u8; COMMITTED_BLOB_LEN] {
    let mut blob = [0u8; COMMITTED_BLOB_LEN];
    blob[0] = COMMITTED_BLOB_VERSION;
    if let Some(id) = committed {
        blob[1..9].copy_from_slice(&id.leader_id.term.to_le_bytes());
        blob[9..17].copy_from_slice(&id.index.to_le_bytes());
    } else {
        blob[0] = COMMITTED_BLOB_VERSION | 0x80;
    }
    blob
}

/// The committed id in a blob written by [`encode_committed`].
///
/// # Errors
/// [`DecodeError::Blob`] for a blob of another length or version.
pub(crate) fn decode_committed(blob: &[u8]) -> Result<Option<LogId>, DecodeError> {
    let blob: &[u8; COMMITTED_BLOB_LEN] = blob.try_into().map_err(|_| DecodeError::Blob {
        what: "committed",
        len: blob.len(),
    })?;
    match blob[0] {
        COMMITTED_BLOB_VERSION => Ok(Some(log_id(u64_at(blob, 1), u64_at(blob, 9)))),
        v if v == COMMITTED_BLOB_VERSION | 0x80 => Ok(None),
        _ => Err(DecodeError::Blob {
            what: "committed",
            len: blob.len(),
        }),
    }
}

fn u64_at(blob: &[u8], at: usize) -> u64 {
    let mut word = [0u8; 8];
    word.copy_from_slice(&blob[at..at + 8]);
    u64::from_le_bytes(word)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn vote_blob_round_trips() {
        let vote = Vote::new(7, 3);
        assert_eq!(decode_vote(&encode_vote(&vote)).expect("decodes"), vote);
        let vote = Vote::new_committed(7, 3);
        assert_eq!(decode_vote(&encode_vote(&vote)).expect("decodes"), vote);
    }

    #[test]
    fn committed_blob_round_trips() {
        let id = log_id(4, 99);
        assert_eq!(
            decode_committed(&encode_committed(Some(&id))).expect("decodes"),
            Some(id)
        );
        assert_eq!(
            decode_committed(&encode_committed(None)).expect("decodes"),
            None
        );
    }

    #[test]
    fn malformed_blobs_are_errors() {
        assert!(decode_vote(&[1, 2, 3]).is_err());
        let mut blob = encode_vote(&Vote::new(1, 1));
        blob[17] = 2;
        assert!(decode_vote(&blob).is_err());
        let mut blob = encode_committed(None);
        blob[0] = 9;
        assert!(decode_committed(&blob).is_err());
    }

    #[test]
    fn stored_membership_round_trips() {
        let membership = Membership::new(
            vec![BTreeSet::from([1, 2]), BTreeSet::from([2, 3])],
            BTreeMap::from([
                (1, NodeAddr::new("a:1", 7)),
                (2, NodeAddr::new("b:2", 7)),
                (3, NodeAddr::new("c:3", 7)),
                (4, NodeAddr::new("learner:4", 7)),
            ]),
        )
        .expect("valid membership");
        let stored =
            StoredPayload::Membership(StoredMembershipConfig::from_membership(&membership));
        let encoded = keel_log::Encoded::new(&stored).expect("encodes");
        let entry = encoded.archived().to_entry(log_id(2, 5)).expect("decodes");
        assert_eq!(entry.log_id, log_id(2, 5));
        assert_eq!(entry.payload, EntryPayload::Membership(membership));
    }
}
