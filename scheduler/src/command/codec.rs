//! The command codec: rkyv bytes of commands and answers, validated on the way in, and the
//! place of a recorded command's value inside its log entry.

use keel_raft::values::ValueRef;
use rkyv::rancor;
use rkyv::util::AlignedVec;
use rkyv::{Archive, Deserialize, Serialize};

use super::remote::ArchivedRemoteOutcome;
use super::{
    ArchivedCommand, ArchivedOutcome, ArchivedStamped, ArchivedStepRecord, Rejection, Stamped,
};

/// The bytes of `value` (a command or an answer).
///
/// # Panics
/// Never for these types: rkyv's serializer fails only on allocation failure.
pub(crate) fn encode<T>(value: &T) -> Vec<u8>
where
    T: for<'a> Serialize<
        rkyv::api::high::HighSerializer<
            AlignedVec,
            rkyv::ser::allocator::ArenaHandle<'a>,
            rancor::Error,
        >,
    >,
{
    rkyv::to_bytes::<rancor::Error>(value)
        .expect("serializing into memory does not fail")
        .into_vec()
}

/// Decodes bytes written by [`encode`], validating them first.
///
/// # Errors
/// [`Rejection::Malformed`] for bytes that do not validate.
pub(crate) fn decode<T>(bytes: &[u8]) -> Result<T, Rejection>
where
    T: Archive,
    T::Archived: for<'a> rkyv::bytecheck::CheckBytes<rkyv::api::high::HighValidator<'a, rancor::Error>>
        + Deserialize<T, rkyv::api::high::HighDeserializer<rancor::Error>>,
{
    let mut aligned = AlignedVec::<16>::with_capacity(bytes.len());
    aligned.extend_from_slice(bytes);
    rkyv::from_bytes::<T, rancor::Error>(&aligned).map_err(|_| Rejection::Malformed)
}

/// The bytes of an archived outcome: its value or its message.
fn outcome_bytes(outcome: &ArchivedOutcome) -> &[u8] {
    match outcome {
        ArchivedOutcome::Ok(value) => value.as_slice(),
        ArchivedOutcome::Err(message) => message.as_bytes(),
    }
}

/// The bytes an archived remote outcome carries (none for a deadline).
fn remote_outcome_bytes(outcome: &ArchivedRemoteOutcome) -> &[u8] {
    match outcome {
        ArchivedRemoteOutcome::Completed(value) => value.as_slice(),
        ArchivedRemoteOutcome::Failed(message) | ArchivedRemoteOutcome::Cancelled(message) => {
            message.as_bytes()
        }
        ArchivedRemoteOutcome::Deadline => &[],
    }
}

/// Decodes the stamped command the state machine applies at Raft index `index`, with where
/// its values lie in `bytes` (each a [`ValueRef`] into them), in the order the command holds
/// them: the input of a start, a call or a remote call, a step's final outcome, a finish's
/// outcome, a signal's payload, a park's reason; one per item of a `RemoteStart` (its input)
/// and of a `RemoteComplete` (its value or message, empty for a deadline).
///
/// # Errors
/// [`Rejection::Malformed`] for bytes that do not validate.
pub(crate) fn decode_recorded(
    bytes: &[u8],
    index: u64,
) -> Result<(Stamped, Vec<ValueRef>), Rejection> {
    let mut aligned = AlignedVec::<16>::with_capacity(bytes.len());
    aligned.extend_from_slice(bytes);
    let archived = rkyv::access::<ArchivedStamped, rancor::Error>(&aligned)
        .map_err(|_| Rejection::Malformed)?;
    let values: Vec<&[u8]> = match &archived.command {
        ArchivedCommand::Start { input, .. }
        | ArchivedCommand::Call { input, .. }
        | ArchivedCommand::RemoteCall { input, .. } => vec![input.as_slice()],
        ArchivedCommand::Step {
            record: ArchivedStepRecord::Done(outcome),
            ..
        }
        | ArchivedCommand::Finish { outcome, .. } => vec![outcome_bytes(outcome)],
        ArchivedCommand::Signal { payload, .. } => vec![payload.as_slice()],
        ArchivedCommand::Park { reason, .. } => vec![reason.as_bytes()],
        ArchivedCommand::RemoteStart { items, .. } => {
            items.iter().map(|item| item.input.as_slice()).collect()
        }
        ArchivedCommand::RemoteComplete { completions, .. } => completions
            .iter()
            .map(|completion| remote_outcome_bytes(&completion.outcome))
            .collect(),
        _ => Vec::new(),
    };
    let recorded = values
        .into_iter()
        .map(|value| ValueRef {
            index,
            // An empty value (a deadline's) may lie outside the bytes: it is never read
            // through its place, since empty values are held inline.
            offset: if value.is_empty() {
                0
            } else {
                u32::try_from(value.as_ptr().addr() - aligned.as_ptr().addr())
                    .expect("a command is shorter than 4 GiB")
            },
            len: u32::try_from(value.len()).expect("a value is shorter than 4 GiB"),
        })
        .collect();
    let stamped =
        rkyv::deserialize::<Stamped, rancor::Error>(archived).map_err(|_| Rejection::Malformed)?;
    Ok((stamped, recorded))
}
