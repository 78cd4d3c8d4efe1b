//! The read-only memory mapping of a segment and zero-copy access to its records.
//!
//! This is the crate's only unsafe code. Its guards:
//! - The data directory is `flock`ed for the `Log`'s lifetime, so no other `Log` writes the
//!   files; external tampering (another program truncating a mapped file) is out of scope
//!   (see ARCHITECTURE.md). A file's size is checked against its header before it is mapped.
//! - Published bytes are never rewritten or truncated while mapped: appends only write past
//!   the published end, truncation seals the segment and continues in a new file, purge
//!   unlinks whole files (an unlinked file stays mapped until the last reader drops it).
//! - Every payload handed out passed its CRC32C, and every record frame of a `Segment<T>`
//!   was validated as `T::Archived` when it entered the log (by serialization in
//!   [`Encoded`](crate::Encoded) or by `rkyv::access` during recovery), so the checksum
//!   proves the bytes are still a valid archive.
#![expect(
    unsafe_code,
    reason = "file-backed mmap and validated zero-copy access"
)]

use std::{fmt, fs::File, io, marker::PhantomData, ops::Deref, sync::Arc};

use memmap2::Mmap;

use super::Segment;
use crate::{
    Corruption, LogId, Payload,
    frame::{self, FRAME_HEADER_LEN, FrameError, FrameKind},
};

/// A read-only shared mapping of a whole segment file.
pub(crate) struct ReadMap {
    map: Mmap,
}

impl fmt::Debug for ReadMap {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ReadMap")
            .field("len", &self.map.len())
            .finish()
    }
}

impl ReadMap {
    /// Maps `file`, which must be exactly `len` bytes long.
    ///
    /// # Errors
    /// `InvalidData` if the file's size differs from `len`; the mapping's own error.
    pub(crate) fn new(file: &File, len: u64) -> io::Result<Self> {
        let actual = file.metadata()?.len();
        if actual != len {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "segment size changed",
            ));
        }
        // SAFETY: the file is exactly `len` bytes (checked just above) and is never
        // truncated while a `Log` holds the directory lock, so every mapped page stays
        // backed by the file; bytes below the published end are never rewritten (module docs).
        let map = unsafe { Mmap::map(file)? };
        Ok(Self { map })
    }

    /// The mapped bytes.
    pub(crate) fn bytes(&self) -> &[u8] {
        &self.map
    }
}

/// A record read from the log: derefs to the zero-copy `&T::Archived` in the mapping.
///
/// Holding a `Record` keeps its segment mapped, even after the segment is purged.
pub struct Record<T: Payload> {
    segment: Arc<Segment<T>>,
    payload_start: usize,
    payload_len: usize,
    id: LogId,
    _type: PhantomData<fn() -> T>,
}

impl<T: Payload> fmt::Debug for Record<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Record")
            .field("id", &self.id)
            .field("len", &self.payload_len)
            .finish_non_exhaustive()
    }
}

impl<T: Payload> Record<T> {
    /// The record's log id.
    pub fn id(&self) -> LogId {
        self.id
    }

    /// The record's rkyv bytes, exactly as appended: ship them to a peer as they are.
    pub fn bytes(&self) -> &[u8] {
        &self.segment.map.bytes()[self.payload_start..self.payload_start + self.payload_len]
    }
}

impl<T: Payload> Deref for Record<T> {
    type Target = T::Archived;

    fn deref(&self) -> &T::Archived {
        // Checked at compile time for every payload type: its archive needs no more than
        // the 16-byte alignment every payload has.
        const {
            assert!(
                align_of::<T::Archived>() <= frame::FRAME_ALIGN,
                "an archived payload needs more than the frames' 16-byte alignment"
            );
        };
        let bytes = self.bytes();
        // SAFETY: a `Record` is only built by `Segment::read` after `frame::decode` verified
        // the frame's CRC32C over these exact bytes, and every record frame of a
        // `Segment<T>` was validated as `T::Archived` when it entered the log (module docs).
        // The payload is 16-aligned (frames are 16-aligned in a page-aligned mapping, asserted
        // in `Segment::read`), which is all `T::Archived` needs (the const assertion above).
        unsafe { rkyv::access_unchecked::<T::Archived>(bytes) }
    }
}

impl<T: Payload> Segment<T> {
    /// Reads and verifies the record frame at `offset`, expecting log index `index`.
    pub(crate) fn read(self: &Arc<Self>, offset: u32, index: u64) -> Result<Record<T>, Corruption> {
        let offset = offset as usize;
        let frame = match frame::decode(self.map.bytes(), offset, self.crc, self.payload_max) {
            Ok(frame) => frame,
            Err(FrameError::End) => return Err(Corruption::BadLength),
            Err(FrameError::Bad(reason)) => return Err(reason),
        };
        if frame.kind != FrameKind::Record {
            return Err(Corruption::BadKind);
        }
        if frame.id.index != index {
            return Err(Corruption::IndexOutOfOrder {
                expected: index,
                found: frame.id.index,
            });
        }
        let payload_start = offset + FRAME_HEADER_LEN;
        assert!(
            payload_start.is_multiple_of(frame::FRAME_ALIGN),
            "payloads are aligned"
        );
        Ok(Record {
            segment: Arc::clone(self),
            payload_start,
            payload_len: frame.payload_len as usize,
            id: frame.id,
            _type: PhantomData,
        })
    }
}
