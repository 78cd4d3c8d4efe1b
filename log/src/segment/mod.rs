//! Segment files: a 64-byte header, then 16-aligned record frames, then zeros.
//!
//! A `Segment<T>` is the in-memory handle readers share: the read-only mapping, the offset
//! of every published record, and the published count (the single writer's release store;
//! readers' acquire load). Nothing here takes a lock.

mod mmap;
pub(crate) mod name;
mod offsets;

use std::{
    fmt,
    fs::File,
    io,
    marker::PhantomData,
    path::PathBuf,
    sync::atomic::{AtomicU64, Ordering},
};

use mmap::ReadMap;
pub use mmap::Record;
pub(crate) use mmap::RecoveryMap;
use offsets::OffsetTable;

use crate::{
    Corruption, SegmentId,
    frame::{FRAME_HEADER_LEN, FrameCrc},
};

/// Size of the segment header in bytes.
pub(crate) const SEGMENT_HEADER_LEN: usize = 64;
/// The header-length field's value.
const HEADER_LEN_FIELD: u32 = 64;
const _: () = assert!(HEADER_LEN_FIELD as usize == SEGMENT_HEADER_LEN);
/// [`RECORDS_START`] as stored in frame hints and sync marks.
pub(crate) const RECORDS_START_OFFSET: u32 = 4096;
const _: () = assert!(RECORDS_START_OFFSET as usize == RECORDS_START);
/// Offset of the first record frame: the first page holds the header and the sync marks.
pub(crate) const RECORDS_START: usize = 4096;
/// Offset of the two sync-mark slots.
const SYNC_MARKS_AT: usize = SEGMENT_HEADER_LEN;

const _: () = assert!(SYNC_MARKS_AT + 2 * sync_mark::LEN <= RECORDS_START);

const MAGIC: [u8; 8] = *b"KEELSEG1";
/// The format new segments are written in: batch frames ([`crate::batch_frame`]).
pub(crate) const FORMAT_VERSION: u32 = 2;
/// The oldest format still read: one seeded frame per record, no batch headers. A segment
/// in it is read as it is and sealed, never appended to; the next append rolls to a segment
/// in the current format, and purging retires the old ones.
pub(crate) const FORMAT_VERSION_OLDEST: u32 = 1;

/// Sync marks: after a group commit leaves the writer idle, the syncer records the durable
/// end of the segment in one of two checksummed 32-byte slots in the header page. The mark
/// is not synced itself (the next sync, or a clean close, covers it) but survives a process
/// crash in the page cache, so recovery can tell a corrupted durable record from a torn
/// unsynced one even for the last group before a crash.
///
/// ```text
/// offset size field
///  0     8    sequence, u64 LE (slot = sequence % 2)
///  8     4    durable end offset, u32 LE
/// 12    16    reserved, zero
/// 28     4    CRC32C of bytes 0..28, seeded by the segment id
/// ```
pub(crate) mod sync_mark {
    use super::{FrameCrc, SYNC_MARKS_AT};
    use crate::SegmentId;

    /// Size of one slot.
    pub(crate) const LEN: usize = 32;

    /// The slot offset and bytes of mark number `seq`.
    pub(crate) fn encode(segment: SegmentId, seq: u64, durable_end: u32) -> (u64, [u8; LEN]) {
        let mut out = [0u8; LEN];
        out[0..8].copy_from_slice(&seq.to_le_bytes());
        out[8..12].copy_from_slice(&durable_end.to_le_bytes());
        let crc = FrameCrc::new(segment).checksum(&out[..28]);
        out[28..32].copy_from_slice(&crc.to_le_bytes());
        let slot = usize::from(seq % 2 == 1);
        ((SYNC_MARKS_AT + slot * LEN) as u64, out)
    }

    /// The largest durable end recorded by a valid mark in the segment's bytes (0 if none).
    pub(crate) fn durable_end(segment: SegmentId, bytes: &[u8]) -> u32 {
        let crc = FrameCrc::new(segment);
        (0..2)
            .filter_map(|slot| {
                bytes.get(SYNC_MARKS_AT + slot * LEN..SYNC_MARKS_AT + (slot + 1) * LEN)
            })
            .filter(|mark| {
                let sum = u32::from_le_bytes(mark[28..32].try_into().expect("4 bytes"));
                crc.checksum(&mark[..28]) == sum
            })
            .map(|mark| u32::from_le_bytes(mark[8..12].try_into().expect("4 bytes")))
            .max()
            .unwrap_or(0)
    }
}

/// The fixed header at the start of every segment file.
///
/// ```text
/// offset size field
///  0     8    magic "KEELSEG1"
///  8     4    format version (2; 1 is still read), u32 LE
/// 12     4    header length (64), u32 LE
/// 16     8    segment id, u64 LE
/// 24     8    base index (index of the first record), u64 LE
/// 32     8    segment size in bytes (the file's exact length), u64 LE
/// 40    20    reserved, zero
/// 60     4    CRC32C of bytes 0..60, u32 LE
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Header {
    pub(crate) format: u32,
    pub(crate) id: SegmentId,
    pub(crate) base: u64,
    pub(crate) size_bytes: u64,
}

impl Header {
    pub(crate) fn encode(&self) -> [u8; SEGMENT_HEADER_LEN] {
        let mut out = [0u8; SEGMENT_HEADER_LEN];
        out[0..8].copy_from_slice(&MAGIC);
        out[8..12].copy_from_slice(&self.format.to_le_bytes());
        out[12..16].copy_from_slice(&HEADER_LEN_FIELD.to_le_bytes());
        out[16..24].copy_from_slice(&self.id.0.to_le_bytes());
        out[24..32].copy_from_slice(&self.base.to_le_bytes());
        out[32..40].copy_from_slice(&self.size_bytes.to_le_bytes());
        let crc = crate::frame::crc32c(&out[0..60]);
        out[60..64].copy_from_slice(&crc.to_le_bytes());
        out
    }

    /// Decodes and verifies a header of any format version; the caller checks the version.
    pub(crate) fn decode(bytes: &[u8]) -> Result<Self, Corruption> {
        let bytes = bytes
            .get(..SEGMENT_HEADER_LEN)
            .ok_or(Corruption::BadSegmentHeader)?;
        let u32_at = |at: usize| u32::from_le_bytes(bytes[at..at + 4].try_into().expect("4 bytes"));
        let u64_at = |at: usize| u64::from_le_bytes(bytes[at..at + 8].try_into().expect("8 bytes"));
        if bytes[0..8] != MAGIC
            || u32_at(12) != HEADER_LEN_FIELD
            || crate::frame::crc32c(&bytes[0..60]) != u32_at(60)
        {
            return Err(Corruption::BadSegmentHeader);
        }
        Ok(Self {
            format: u32_at(8),
            id: SegmentId(u64_at(16)),
            base: u64_at(24),
            size_bytes: u64_at(32),
        })
    }
}

/// A mapped segment shared by the writer and all readers.
pub(crate) struct Segment<T> {
    pub(crate) id: SegmentId,
    /// The format version of the file.
    pub(crate) format: u32,
    /// Index of the first record in this file.
    pub(crate) base: u64,
    pub(crate) path: PathBuf,
    /// The segment's seeded checksum: batch headers, seals (and format 1's record frames).
    pub(crate) crc: FrameCrc,
    /// The checksum of this segment's record frames: seeded in format 1, unseeded in 2.
    pub(crate) record_crc: FrameCrc,
    map: ReadMap,
    /// The frame offset of record `base + k`, for `k` below `published`.
    offsets: OffsetTable,
    /// Records `base .. base + published` are readable.
    published: AtomicU64,
    /// Largest payload a frame of this segment can hold: the bound when decoding, so a
    /// record written under a larger `record_size_max_bytes` still reads.
    payload_max: usize,
    _type: PhantomData<fn() -> T>,
}

/// Largest payload that fits a segment of `size_bytes` with room for the seal frame: a bound
/// for decoding (a record of format 2 also leaves room for its batch header).
pub(crate) fn payload_bound(size_bytes: u64) -> usize {
    let bound =
        size_bytes.saturating_sub((RECORDS_START + 2 * crate::frame::FRAME_HEADER_LEN) as u64);
    usize::try_from(bound).unwrap_or(usize::MAX)
}

impl<T> fmt::Debug for Segment<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Segment")
            .field("id", &self.id)
            .field("base", &self.base)
            .field("published", &self.published())
            .finish_non_exhaustive()
    }
}

impl<T> Segment<T> {
    /// Maps a segment file whose header says `header`.
    pub(crate) fn map(header: Header, path: PathBuf, file: &File) -> io::Result<Self> {
        let crc = FrameCrc::new(header.id);
        Ok(Self {
            id: header.id,
            format: header.format,
            base: header.base,
            path,
            crc,
            record_crc: if header.format == FORMAT_VERSION_OLDEST {
                crc
            } else {
                FrameCrc::unseeded()
            },
            map: ReadMap::new(file, header.size_bytes)?,
            offsets: OffsetTable::new(
                usize::try_from(header.size_bytes).unwrap_or(usize::MAX) / FRAME_HEADER_LEN,
            ),
            published: AtomicU64::new(0),
            payload_max: payload_bound(header.size_bytes),
            _type: PhantomData,
        })
    }

    /// Largest payload a frame of this segment can hold.
    pub(crate) fn payload_max(&self) -> usize {
        self.payload_max
    }

    /// The file's size in bytes.
    pub(crate) fn size_bytes(&self) -> u64 {
        self.map.len() as u64
    }

    /// Number of readable records.
    pub(crate) fn published(&self) -> u64 {
        self.published.load(Ordering::Acquire)
    }

    /// One past the last readable index.
    pub(crate) fn end_index(&self) -> u64 {
        self.base + self.published()
    }

    /// Frame offset of a published record.
    pub(crate) fn offset_of(&self, index: u64) -> Option<u32> {
        let k = index.checked_sub(self.base)?;
        if k >= self.published() {
            return None;
        }
        self.offsets.get(usize::try_from(k).ok()?)
    }

    /// Makes records readable: their frames are already written at `offsets`, the last
    /// one ending at `end`, and nothing below `end` will be written again.
    ///
    /// Only the single writer calls this (recovery too, before the writer exists).
    pub(crate) fn publish(&self, offsets: &[u32], end: usize) {
        let before = self.published.load(Ordering::Relaxed);
        let first_k = usize::try_from(before).expect("count fits usize");
        if let (Some(&first), Some(k)) = (offsets.first(), first_k.checked_sub(1)) {
            let last = self.offsets.get(k);
            assert!(
                last.is_some_and(|last| first > last),
                "frames are published in file order"
            );
        }
        if let Some(&last) = offsets.last() {
            assert!(
                (last as usize) < end,
                "the published end is past the last frame"
            );
        }
        for (k, &offset) in (first_k..).zip(offsets) {
            self.offsets.set(k, offset);
        }
        // The bytes first: a reader that sees a record counted sees its frame published.
        self.map.publish_to(end);
        self.published
            .store(before + offsets.len() as u64, Ordering::Release);
    }
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::FileExt as _;

    use super::*;
    use crate::frame::{self, Frame, FrameKind};
    use crate::{Encoded, LogId};

    /// A published frame whose header claims a payload running into a frame the writer has
    /// written but not published (the checksum computed over those bytes too, so only the
    /// published end can catch it) reads as `BadLength`: a reader never touches bytes past
    /// the published end. Reading the whole file instead would verify and hand them out.
    #[test]
    fn a_frame_reaching_past_the_published_end_is_refused_though_its_checksum_verifies() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("segment");
        let size_bytes = 4 * 4096;
        let file = File::options()
            .read(true)
            .write(true)
            .create_new(true)
            .open(&path)
            .expect("create");
        file.set_len(size_bytes).expect("size");
        let id = SegmentId(7);
        let crc = FrameCrc::new(id);
        let published = Encoded::new(&vec![1u8; 40]).expect("encode");
        let unpublished = Encoded::new(&vec![2u8; 40]).expect("encode");
        let mut bytes = Vec::new();
        for (index, payload) in [(0, &published), (1, &unpublished)] {
            let frame = Frame {
                kind: FrameKind::Record,
                id: LogId::new(1, index),
                payload_len: u32::try_from(payload.as_bytes().len()).expect("small"),
                synced_hint: RECORDS_START_OFFSET,
            };
            frame::encode(&mut bytes, crc, frame, payload.as_bytes(), payload.crc());
        }
        let first_end = frame::frame_len(published.as_bytes().len());
        // The first frame's header rewritten to claim everything up to the second's end.
        let long = &bytes[frame::FRAME_HEADER_LEN..];
        let mut forged = Vec::new();
        let frame = Frame {
            kind: FrameKind::Record,
            id: LogId::new(1, 0),
            payload_len: u32::try_from(long.len()).expect("small"),
            synced_hint: RECORDS_START_OFFSET,
        };
        frame::encode(&mut forged, crc, frame, long, frame::payload_crc(long));
        file.write_all_at(&forged, RECORDS_START as u64)
            .expect("write");
        let header = Header {
            format: FORMAT_VERSION_OLDEST,
            id,
            base: 0,
            size_bytes,
        };
        let segment =
            std::sync::Arc::new(Segment::<Vec<u8>>::map(header, path, &file).expect("map"));
        segment.publish(&[RECORDS_START_OFFSET], RECORDS_START + first_end);
        assert_eq!(
            segment.read(RECORDS_START_OFFSET, 0).map(|r| r.id()),
            Err(Corruption::BadLength)
        );
        segment.publish(&[], RECORDS_START + forged.len());
        assert_eq!(
            segment
                .read(RECORDS_START_OFFSET, 0)
                .map(|r| r.bytes().len()),
            Ok(long.len()),
            "once every byte it covers is published, the same frame verifies"
        );
    }

    #[test]
    fn header_round_trips_and_rejects_flips() {
        let header = Header {
            format: FORMAT_VERSION,
            id: SegmentId(9),
            base: 100,
            size_bytes: 1 << 20,
        };
        let bytes = header.encode();
        assert_eq!(Header::decode(&bytes), Ok(header));
        for bit in 0..SEGMENT_HEADER_LEN * 8 {
            let mut flipped = bytes;
            flipped[bit / 8] ^= 1 << (bit % 8);
            assert_eq!(
                Header::decode(&flipped),
                Err(Corruption::BadSegmentHeader),
                "bit {bit}"
            );
        }
        assert_eq!(
            Header::decode(&bytes[..10]),
            Err(Corruption::BadSegmentHeader)
        );
    }
}
