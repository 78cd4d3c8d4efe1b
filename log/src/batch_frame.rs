//! Batch frames (segment format 2): one seeded header per write, then the batch's record
//! frames back to back.
//!
//! ```text
//! offset size field
//!  0     4    crc           u32 LE: CRC32C(bytes 4..32) ^ segment seed
//!  4     4    body_len      u32 LE, bytes of record frames that follow (a multiple of 16)
//!  8     2    len_guard     u16 LE, !(low16(len) ^ high16(len))
//! 10     1    kind          3 = batch (2 = seal, the record-frame seal of `frame`)
//! 11     1    reserved      0
//! 12     4    synced_hint   u32 LE, segment offset known durable when this batch was written
//! 16     8    first         u64 LE, index of the batch's first record
//! 24     4    count         u32 LE, records in the body
//! 28     4    body_check    u32 LE, CRC32C of the records' frame checksums (LE, in order)
//! 32     body_len           record frames (format in `frame`, unseeded)
//! ```
//!
//! The record frames are built whole on the caller's thread ([`Batch`](crate::Batch)); the
//! single writer adds this header, checksums the records' 4-byte checksums once more
//! (`body_check`) and writes header and body with one `pwritev` of two pieces. A batch is
//! accepted only whole: its header verifies under the segment's seed, and its body holds
//! exactly `count` record frames that verify, with indexes from `first` on, whose checksums
//! give `body_check`. The seed makes bytes left from another segment fail the header; the
//! body check ties the records to the header, so a torn write over a recycled file (a new
//! header, old records behind it) is not taken for the records it was meant to carry.
//!
//! A seal is the record-frame seal (kind 2, empty payload) under the seed: its checksum
//! rule, CRC32C(bytes 4..32) ^ CRC32C(empty) ^ seed, is this header's, as CRC32C of no
//! bytes is 0.

use crate::{
    Corruption,
    frame::{
        FRAME_ALIGN, FRAME_HEADER_LEN, FrameCrc, FrameError, FrameKind, len_guard, read_u32,
        read_u64,
    },
};

/// Size of a batch header in bytes.
pub(crate) const BATCH_HEADER_LEN: usize = 32;
const _: () = assert!(BATCH_HEADER_LEN == FRAME_HEADER_LEN);
/// The kind byte of a batch header.
const KIND_BATCH: u8 = 3;

/// A decoded, verified batch header (the body is verified by its reader).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct BatchHeader {
    pub(crate) body_len: u32,
    pub(crate) synced_hint: u32,
    pub(crate) first: u64,
    pub(crate) count: u32,
    pub(crate) body_check: u32,
}

impl BatchHeader {
    /// Bytes of the whole batch: header and body.
    pub(crate) fn len(&self) -> usize {
        BATCH_HEADER_LEN + self.body_len as usize
    }

    /// The header's bytes under `crc` (the segment's seeded checksum).
    pub(crate) fn encode(&self, crc: FrameCrc) -> [u8; BATCH_HEADER_LEN] {
        assert!(
            (self.body_len as usize).is_multiple_of(FRAME_ALIGN),
            "a body is whole frames"
        );
        let mut out = [0u8; BATCH_HEADER_LEN];
        out[4..8].copy_from_slice(&self.body_len.to_le_bytes());
        out[8..10].copy_from_slice(&len_guard(self.body_len).to_le_bytes());
        out[10] = KIND_BATCH;
        out[12..16].copy_from_slice(&self.synced_hint.to_le_bytes());
        out[16..24].copy_from_slice(&self.first.to_le_bytes());
        out[24..28].copy_from_slice(&self.count.to_le_bytes());
        out[28..32].copy_from_slice(&self.body_check.to_le_bytes());
        let sum = crc.checksum(&out[4..]);
        out[0..4].copy_from_slice(&sum.to_le_bytes());
        out
    }
}

/// What a segment holds at a batch boundary.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Unit {
    /// A batch of records.
    Batch(BatchHeader),
    /// The seal: nothing after it is read.
    Seal { synced_hint: u32 },
}

/// The body check of records whose frame checksums are `crcs` (4 LE bytes each, in order).
pub(crate) fn body_check(crcs: &[u8]) -> u32 {
    body_check_append(0, crcs)
}

/// `check` continued over more frame checksums: the body check computed one record at a
/// time (`body_check_append(0, crcs)` is `body_check(crcs)`).
pub(crate) fn body_check_append(check: u32, crcs: &[u8]) -> u32 {
    ::crc32c::crc32c_append(check, crcs)
}

/// Decodes and verifies the header at `offset` of `segment` (the whole segment's bytes);
/// for a batch, checks that its body lies within `segment`.
///
/// Never panics on any input.
pub(crate) fn decode(segment: &[u8], offset: usize, crc: FrameCrc) -> Result<Unit, FrameError> {
    let bad = |reason| Err(FrameError::Bad(reason));
    let Some(header) = segment.get(offset..offset.saturating_add(BATCH_HEADER_LEN)) else {
        return bad(Corruption::BadLength);
    };
    if header.iter().all(|&b| b == 0) {
        return Err(FrameError::End);
    }
    let body_len = read_u32(header, 4);
    let guard = u16::from_le_bytes([header[8], header[9]]);
    if guard != len_guard(body_len) || !(body_len as usize).is_multiple_of(FRAME_ALIGN) {
        return bad(Corruption::BadLength);
    }
    if crc.checksum(&header[4..]) != read_u32(header, 0) {
        return bad(Corruption::BadChecksum);
    }
    match header[10] {
        KIND_BATCH => {
            let end = offset
                .saturating_add(BATCH_HEADER_LEN)
                .saturating_add(body_len as usize);
            if end > segment.len() {
                return bad(Corruption::BadLength);
            }
            Ok(Unit::Batch(BatchHeader {
                body_len,
                synced_hint: read_u32(header, 12),
                first: read_u64(header, 16),
                count: read_u32(header, 24),
                body_check: read_u32(header, 28),
            }))
        }
        kind if kind == FrameKind::Seal as u8 && body_len == 0 => Ok(Unit::Seal {
            synced_hint: read_u32(header, 12),
        }),
        _ => bad(Corruption::BadKind),
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;
    use crate::{
        LogId, SegmentId,
        frame::{self, Frame},
    };

    fn header() -> BatchHeader {
        BatchHeader {
            body_len: 96,
            synced_hint: 4096,
            first: 17,
            count: 2,
            body_check: 0xdead_beef,
        }
    }

    #[test]
    fn a_header_decodes_to_itself_and_not_under_another_seed() {
        let crc = FrameCrc::new(SegmentId(4));
        let mut bytes = header().encode(crc).to_vec();
        bytes.resize(BATCH_HEADER_LEN + 96, 0);
        assert_eq!(decode(&bytes, 0, crc), Ok(Unit::Batch(header())));
        assert_eq!(
            decode(&bytes, 0, FrameCrc::new(SegmentId(5))),
            Err(FrameError::Bad(Corruption::BadChecksum))
        );
        assert_eq!(
            decode(&bytes[..BATCH_HEADER_LEN + 80], 0, crc),
            Err(FrameError::Bad(Corruption::BadLength)),
            "a body past the segment's end"
        );
    }

    /// The seal frame written by `frame::encode` under a segment's seed (as format 1 wrote
    /// it) decodes as a seal here: both formats share it.
    #[test]
    fn the_record_frame_seal_is_a_seal() {
        let crc = FrameCrc::new(SegmentId(9));
        let seal = Frame {
            kind: FrameKind::Seal,
            id: LogId::new(3, 120),
            payload_len: 0,
            synced_hint: 8192,
        };
        let mut bytes = Vec::new();
        frame::encode(&mut bytes, crc, seal, &[], frame::payload_crc(&[]));
        assert_eq!(decode(&bytes, 0, crc), Ok(Unit::Seal { synced_hint: 8192 }));
    }

    #[test]
    fn zeros_are_the_end() {
        assert_eq!(
            decode(&[0; 64], 0, FrameCrc::new(SegmentId(1))),
            Err(FrameError::End)
        );
    }

    proptest! {
        #[test]
        fn decoding_arbitrary_bytes_never_panics(
            bytes in proptest::collection::vec(any::<u8>(), 0..128),
            offset in 0usize..160,
        ) {
            let _ = decode(&bytes, offset, FrameCrc::new(SegmentId(2)));
        }

        #[test]
        fn any_flipped_header_bit_is_detected(bit in 0..BATCH_HEADER_LEN * 8) {
            let crc = FrameCrc::new(SegmentId(6));
            let mut bytes = header().encode(crc).to_vec();
            bytes.resize(BATCH_HEADER_LEN + 96, 0);
            bytes[bit / 8] ^= 1 << (bit % 8);
            prop_assert_ne!(decode(&bytes, 0, crc), Ok(Unit::Batch(header())));
        }
    }
}
