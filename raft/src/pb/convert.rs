//! Conversions between openraft's messages and their protobuf form. Bytes from the wire are
//! untrusted: a missing or inconsistent field is a [`DecodeError`], never a panic.

use std::collections::{BTreeMap, BTreeSet};

use openraft::EntryPayload;
use openraft::raft::{
    AppendEntriesRequest, StreamAppendError, StreamAppendResult, VoteRequest, VoteResponse,
};

use super::raft as pb;
use crate::error::DecodeError;
use crate::types::{
    ClientRequest, Entry, LogId, Membership, NodeAddr, NodeId, TypeConfig, Vote, log_id,
};

fn missing(field: &str) -> DecodeError {
    DecodeError::Message(format!("missing field {field}"))
}

impl From<&LogId> for pb::LogId {
    fn from(id: &LogId) -> Self {
        Self {
            term: id.leader_id.term,
            index: id.index,
        }
    }
}

impl From<pb::LogId> for LogId {
    fn from(id: pb::LogId) -> Self {
        log_id(id.term, id.index)
    }
}

impl From<&Vote> for pb::Vote {
    fn from(vote: &Vote) -> Self {
        Self {
            term: vote.leader_id().term,
            node_id: vote.leader_id().voted_for,
            committed: vote.is_committed(),
        }
    }
}

impl From<pb::Vote> for Vote {
    fn from(vote: pb::Vote) -> Self {
        if vote.committed {
            Vote::new_committed(vote.term, vote.node_id)
        } else {
            Vote::new(vote.term, vote.node_id)
        }
    }
}

fn vote_from(vote: Option<pb::Vote>, field: &str) -> Result<Vote, DecodeError> {
    vote.map(Vote::from).ok_or_else(|| missing(field))
}

/// The protobuf form of a membership.
pub fn membership_to_pb(membership: &Membership) -> pb::Membership {
    pb::Membership {
        configs: membership
            .get_joint_config()
            .iter()
            .map(|set| pb::NodeIdSet {
                ids: set.iter().copied().collect(),
            })
            .collect(),
        nodes: membership
            .nodes()
            .map(|(id, node)| {
                (
                    *id,
                    pb::Member {
                        addr: node.addr.clone(),
                        incarnation: node.incarnation,
                    },
                )
            })
            .collect(),
    }
}

/// The membership a protobuf message describes.
///
/// # Errors
/// [`DecodeError::Membership`] when openraft rejects it (a voter without an address, ...).
pub fn membership_from_pb(membership: pb::Membership) -> Result<Membership, DecodeError> {
    let configs: Vec<BTreeSet<NodeId>> = membership
        .configs
        .into_iter()
        .map(|set| set.ids.into_iter().collect())
        .collect();
    let nodes: BTreeMap<NodeId, NodeAddr> = membership
        .nodes
        .into_iter()
        .map(|(id, m)| (id, NodeAddr::new(m.addr, m.incarnation)))
        .collect();
    Membership::new(configs, nodes).map_err(|e| DecodeError::Membership(e.to_string()))
}

fn entry_to_pb(entry: &Entry) -> pb::Entry {
    let payload = match &entry.payload {
        EntryPayload::Blank => pb::entry::Payload::Blank(true),
        EntryPayload::Normal(request) => pb::entry::Payload::Normal(pb::Normal {
            session: request.session,
            seq: request.seq,
            command: request.command.clone(),
        }),
        EntryPayload::Membership(membership) => {
            pb::entry::Payload::Membership(membership_to_pb(membership))
        }
    };
    pb::Entry {
        log_id: Some((&entry.log_id).into()),
        payload: Some(payload),
    }
}

fn entry_from_pb(entry: pb::Entry) -> Result<Entry, DecodeError> {
    let log_id = entry.log_id.ok_or_else(|| missing("entry.log_id"))?.into();
    let payload = match entry.payload.ok_or_else(|| missing("entry.payload"))? {
        pb::entry::Payload::Blank(_) => EntryPayload::Blank,
        pb::entry::Payload::Normal(normal) => EntryPayload::Normal(ClientRequest {
            session: normal.session,
            seq: normal.seq,
            command: normal.command,
        }),
        pb::entry::Payload::Membership(membership) => {
            EntryPayload::Membership(membership_from_pb(membership)?)
        }
    };
    Ok(Entry { log_id, payload })
}

/// The protobuf form of an append request.
pub fn append_request_to_pb(
    request: &AppendEntriesRequest<TypeConfig>,
    entries: &[Entry],
) -> pb::AppendRequest {
    pb::AppendRequest {
        vote: Some((&request.vote).into()),
        prev_log_id: request.prev_log_id.as_ref().map(Into::into),
        entries: entries.iter().map(entry_to_pb).collect(),
        leader_commit: request.leader_commit.as_ref().map(Into::into),
    }
}

/// The append request a protobuf message carries.
///
/// # Errors
/// [`DecodeError`] for a missing vote or a malformed entry.
pub fn append_request_from_pb(
    request: pb::AppendRequest,
) -> Result<AppendEntriesRequest<TypeConfig>, DecodeError> {
    Ok(AppendEntriesRequest {
        vote: vote_from(request.vote, "append.vote")?,
        prev_log_id: request.prev_log_id.map(Into::into),
        entries: request
            .entries
            .into_iter()
            .map(entry_from_pb)
            .collect::<Result<_, _>>()?,
        leader_commit: request.leader_commit.map(Into::into),
    })
}

/// The protobuf form of one stream-append result.
pub fn stream_result_to_pb(result: &StreamAppendResult<TypeConfig>) -> pb::AppendResponse {
    let result = match result {
        Ok(Some(id)) => pb::append_response::Result::Accepted(id.into()),
        Ok(None) => pb::append_response::Result::AcceptedNone(true),
        Err(StreamAppendError::Conflict(id)) => pb::append_response::Result::Conflict(id.into()),
        Err(StreamAppendError::HigherVote(vote)) => {
            pb::append_response::Result::HigherVote(vote.into())
        }
    };
    pb::AppendResponse {
        result: Some(result),
    }
}

/// The stream-append result a protobuf message carries.
///
/// # Errors
/// [`DecodeError`] for an empty response.
pub fn stream_result_from_pb(
    response: pb::AppendResponse,
) -> Result<StreamAppendResult<TypeConfig>, DecodeError> {
    Ok(
        match response
            .result
            .ok_or_else(|| missing("append_response.result"))?
        {
            pb::append_response::Result::Accepted(id) => Ok(Some(id.into())),
            pb::append_response::Result::AcceptedNone(_) => Ok(None),
            pb::append_response::Result::Conflict(id) => {
                Err(StreamAppendError::Conflict(id.into()))
            }
            pb::append_response::Result::HigherVote(vote) => {
                Err(StreamAppendError::HigherVote(vote.into()))
            }
        },
    )
}

impl From<&VoteRequest<TypeConfig>> for pb::VoteRequest {
    fn from(request: &VoteRequest<TypeConfig>) -> Self {
        Self {
            vote: Some((&request.vote).into()),
            last_log_id: request.last_log_id.as_ref().map(Into::into),
            leadership_transfer: request.leadership_transfer,
        }
    }
}

/// The vote request a protobuf message carries.
///
/// # Errors
/// [`DecodeError`] for a missing vote.
pub fn vote_request_from_pb(
    request: pb::VoteRequest,
) -> Result<VoteRequest<TypeConfig>, DecodeError> {
    let mut out = VoteRequest::new(
        vote_from(request.vote, "vote_request.vote")?,
        request.last_log_id.map(Into::into),
    );
    out.leadership_transfer = request.leadership_transfer;
    Ok(out)
}

impl From<&VoteResponse<TypeConfig>> for pb::VoteResponse {
    fn from(response: &VoteResponse<TypeConfig>) -> Self {
        Self {
            vote: Some((&response.vote).into()),
            vote_granted: response.vote_granted,
            last_log_id: response.last_log_id.as_ref().map(Into::into),
        }
    }
}

/// The vote response a protobuf message carries.
///
/// # Errors
/// [`DecodeError`] for a missing vote.
pub fn vote_response_from_pb(
    response: pb::VoteResponse,
) -> Result<VoteResponse<TypeConfig>, DecodeError> {
    Ok(VoteResponse::new(
        vote_from(response.vote, "vote_response.vote")?,
        response.last_log_id.map(Into::into),
        response.vote_granted,
    ))
}

#[cfg(test)]
mod tests {
    use bytes::Bytes;

    use super::*;

    #[test]
    fn append_request_round_trips() {
        let membership = Membership::new(
            vec![BTreeSet::from([1, 2, 3])],
            BTreeMap::from([
                (1, NodeAddr::new("a", 1)),
                (2, NodeAddr::new("b", 1)),
                (3, NodeAddr::new("c", 1)),
            ]),
        )
        .expect("valid");
        let entries = vec![
            Entry {
                log_id: log_id(2, 5),
                payload: EntryPayload::Blank,
            },
            Entry {
                log_id: log_id(2, 6),
                payload: EntryPayload::Normal(ClientRequest {
                    session: 9,
                    seq: 4,
                    command: Bytes::from_static(b"x"),
                }),
            },
            Entry {
                log_id: log_id(2, 7),
                payload: EntryPayload::Membership(membership),
            },
        ];
        let request = AppendEntriesRequest {
            vote: Vote::new_committed(2, 1),
            prev_log_id: Some(log_id(1, 4)),
            entries: entries.clone(),
            leader_commit: Some(log_id(1, 3)),
        };
        let decoded =
            append_request_from_pb(append_request_to_pb(&request, &entries)).expect("decodes");
        assert_eq!(decoded.vote, request.vote);
        assert_eq!(decoded.prev_log_id, request.prev_log_id);
        assert_eq!(decoded.leader_commit, request.leader_commit);
        assert_eq!(decoded.entries, request.entries);
    }

    #[test]
    fn missing_fields_are_decode_errors() {
        assert!(append_request_from_pb(pb::AppendRequest::default()).is_err());
        assert!(vote_request_from_pb(pb::VoteRequest::default()).is_err());
        assert!(stream_result_from_pb(pb::AppendResponse::default()).is_err());
        let no_payload = pb::AppendRequest {
            vote: Some(pb::Vote::default()),
            entries: vec![pb::Entry {
                log_id: Some(pb::LogId::default()),
                payload: None,
            }],
            ..pb::AppendRequest::default()
        };
        assert!(append_request_from_pb(no_payload).is_err());
    }

    #[test]
    fn stream_results_round_trip() {
        for result in [
            Ok(Some(log_id(3, 9))),
            Ok(None),
            Err(StreamAppendError::Conflict(log_id(1, 2))),
            Err(StreamAppendError::HigherVote(Vote::new(5, 2))),
        ] {
            assert_eq!(
                stream_result_from_pb(stream_result_to_pb(&result)).expect("decodes"),
                result
            );
        }
    }
}
