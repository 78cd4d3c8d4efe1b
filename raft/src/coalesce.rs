//! Coalesced writes: many clients' writes proposed as one Raft entry.
//!
//! Under load, a leader pays Raft's per-entry costs (an rkyv record and a log frame, a slot
//! in an `AppendEntries`, a commit, an apply and a response on every node) once per write.
//! The client service instead queues plain-log appends and proposes whatever is queued as
//! one entry whose command is a [batch](encode_batch); each write inside keeps its own
//! `(session, seq)`, so exactly-once holds per write, and gets its own answer.
//!
//! A batch command: the byte [`BATCH_TAG`] (no application's tag), `count: u32`, then per
//! write `session: u64`, `seq: u64`, `len: u32` and `len` command bytes, all little
//! endian. Every node applies the writes in order, each as if it were its own entry at the
//! batch's index.

use bytes::{Buf, BufMut, Bytes, BytesMut};

use crate::types::ClientRequest;

/// The first byte of a batch command; applications' tags are small.
pub const BATCH_TAG: u8 = 0xFF;
/// Bytes a batch adds: its tag and count.
pub const BATCH_HEADER_BYTES: usize = 5;
/// Bytes a batch adds per write: client id, seq and length.
pub const BATCH_WRITE_OVERHEAD_BYTES: usize = 20;

/// Whether `command` is a batch.
pub fn is_batch(command: &[u8]) -> bool {
    command.first() == Some(&BATCH_TAG)
}

/// One command carrying `writes`, in order.
///
/// # Panics
/// More than `u32::MAX` writes, or a write of more than `u32::MAX` bytes (the service
/// bounds both far below).
pub fn encode_batch(writes: &[ClientRequest]) -> Bytes {
    let len = BATCH_HEADER_BYTES
        + writes
            .iter()
            .map(|w| BATCH_WRITE_OVERHEAD_BYTES + w.command.len())
            .sum::<usize>();
    let mut out = BytesMut::with_capacity(len);
    out.put_u8(BATCH_TAG);
    out.put_u32_le(u32::try_from(writes.len()).expect("a batch's writes are bounded"));
    for write in writes {
        out.put_u64_le(write.session);
        out.put_u64_le(write.seq);
        out.put_u32_le(u32::try_from(write.command.len()).expect("a command is bounded"));
        out.put_slice(&write.command);
    }
    out.freeze()
}

/// The writes of batch `command`; `None` if it is not a well-formed batch.
pub fn decode_batch(command: &Bytes) -> Option<Vec<ClientRequest>> {
    let mut rest = command.clone();
    if rest.remaining() < BATCH_HEADER_BYTES || rest.get_u8() != BATCH_TAG {
        return None;
    }
    let count = rest.get_u32_le();
    let mut writes = Vec::new();
    for _ in 0..count {
        if rest.remaining() < BATCH_WRITE_OVERHEAD_BYTES {
            return None;
        }
        let session = rest.get_u64_le();
        let seq = rest.get_u64_le();
        let len = usize::try_from(rest.get_u32_le()).ok()?;
        if rest.remaining() < len {
            return None;
        }
        writes.push(ClientRequest {
            session,
            seq,
            command: rest.split_to(len),
        });
    }
    rest.is_empty().then_some(writes)
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    fn write(session: u64, seq: u64, command: &[u8]) -> ClientRequest {
        ClientRequest {
            session,
            seq,
            command: Bytes::copy_from_slice(command),
        }
    }

    #[test]
    fn a_batch_round_trips_and_is_recognised() {
        let writes = vec![
            write(7, 1, b"\x00abc"),
            write(0, 0, b""),
            write(9, 4, b"\x00x"),
        ];
        let batch = encode_batch(&writes);
        assert!(is_batch(&batch));
        assert!(!is_batch(b"\x00abc"));
        assert_eq!(decode_batch(&batch), Some(writes));
    }

    #[test]
    fn truncated_or_padded_batches_do_not_decode() {
        let batch = encode_batch(&[write(7, 1, b"\x00abc")]);
        for cut in 0..batch.len() {
            assert_eq!(decode_batch(&batch.slice(..cut)), None, "cut at {cut}");
        }
        let mut padded = batch.to_vec();
        padded.push(0);
        assert_eq!(decode_batch(&Bytes::from(padded)), None);
    }

    proptest! {
        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..256)) {
            let _ = decode_batch(&Bytes::from(bytes));
        }

        #[test]
        fn batches_round_trip(writes in proptest::collection::vec(
            (any::<u64>(), any::<u64>(), proptest::collection::vec(any::<u8>(), 0..32)), 0..16)
        ) {
            let writes: Vec<ClientRequest> =
                writes.iter().map(|(c, s, b)| write(*c, *s, b)).collect();
            prop_assert_eq!(decode_batch(&encode_batch(&writes)), Some(writes));
        }
    }
}
