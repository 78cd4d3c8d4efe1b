//! The read-only memory mappings of segment files and zero-copy access to their records.
//!
//! This is the crate's only unsafe code. A mapping is sound while no byte a live reference
//! points into is written, and the file is not shrunk under it. Who upholds that:
//!
//! - **Other processes**: the data directory is `flock`ed for the `Log`'s lifetime, so no
//!   other `Log` writes the files; another program writing or truncating them is out of
//!   scope (ARCHITECTURE.md). A file's size is checked against its header before mapping.
//! - **The writer** (one thread, under the writer mutex) writes record frames only at or
//!   past a segment's published end and publishes them ([`ReadMap::publish_to`]) after its
//!   `pwritev` returned; it never writes below the published end again: truncation seals the
//!   segment and continues in a new file, and the seal frame goes past the published end.
//! - **The syncer** writes only the sync-mark slots (bytes 64–128), below
//!   [`RECORDS_START`], which no reader of a live segment sees.
//! - **Recovery** reads whole files through a [`RecoveryMap`], and zeroes a torn tail only
//!   past the end it will publish; its whole-file views are dropped before `Log::open`
//!   returns, so before the writer, the syncer and any reader exist.
//! - **Purge and recycling**: purge unlinks whole files (an unlinked file stays mapped until
//!   the last `Arc<Segment>` drops); a purged file is recycled (renamed, then overwritten)
//!   only once no `Arc` of its segment is left (`Arc::try_unwrap` in the writer).
//!
//! [`ReadMap`], the live segments' mapping, hands out slices of published ranges only
//! (checked against the published end it holds), so the guarantee above is all a reader
//! relies on. Every payload handed out passed its CRC32C, and every record frame of a
//! `Segment<T>` was validated as `T::Archived` when it entered the log (by serialization in
//! [`Encoded`](crate::Encoded) or by `rkyv::access` during recovery), so the checksum proves
//! the bytes are still a valid archive.
#![expect(
    unsafe_code,
    reason = "file-backed mmap and validated zero-copy access"
)]

use std::{
    fmt,
    fs::File,
    io,
    marker::PhantomData,
    ops::{Deref, Range},
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
};

use memmap2::Mmap;

use super::{RECORDS_START, Segment};
use crate::{
    Corruption, LogId, Payload,
    frame::{self, FRAME_HEADER_LEN, FrameError, FrameKind},
};

/// Maps `file`, which must be exactly `len` bytes long.
///
/// # Errors
/// `InvalidData` if the file's size differs from `len`; the mapping's own error.
fn map_exactly(file: &File, len: u64) -> io::Result<Mmap> {
    let actual = file.metadata()?.len();
    if actual != len {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            "segment size changed",
        ));
    }
    // SAFETY: a read-only shared mapping of a file of exactly `len` bytes (checked just
    // above); the file is not shrunk while mapped, and no byte a live reference points into
    // is written (the module's docs name who upholds each).
    unsafe { Mmap::map(file) }
}

/// The mapping of a live segment: readers see its published ranges, nothing else.
pub(crate) struct ReadMap {
    map: Mmap,
    /// Bytes from [`RECORDS_START`] to here hold published frames: written in full, never
    /// written again while mapped. Only grows (release store; readers' acquire load).
    published_end: AtomicUsize,
}

impl fmt::Debug for ReadMap {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ReadMap")
            .field("len", &self.map.len())
            .field("published_end", &self.published_end())
            .finish()
    }
}

impl ReadMap {
    /// Maps `file`, which must be exactly `len` bytes long; nothing is published yet.
    ///
    /// # Errors
    /// `InvalidData` if the file's size differs from `len`; the mapping's own error.
    pub(crate) fn new(file: &File, len: u64) -> io::Result<Self> {
        let map = map_exactly(file, len)?;
        assert!(
            map.len() >= RECORDS_START,
            "segments are larger than their header page"
        );
        Ok(Self {
            map,
            published_end: AtomicUsize::new(RECORDS_START),
        })
    }

    /// The file's size in bytes.
    pub(crate) fn len(&self) -> usize {
        self.map.len()
    }

    /// The end of the published frames.
    pub(crate) fn published_end(&self) -> usize {
        self.published_end.load(Ordering::Acquire)
    }

    /// Publishes the bytes below `end`: the caller (the single writer, or recovery before
    /// any reader exists) wrote every frame there in full and will never write below `end`
    /// again while this mapping lives.
    pub(crate) fn publish_to(&self, end: usize) {
        let before = self.published_end.load(Ordering::Relaxed);
        assert!(
            before <= end && end <= self.map.len(),
            "the published end only grows within the file ({before} → {end})"
        );
        self.published_end.store(end, Ordering::Release);
    }

    /// The bytes of `range` if every one is published; `None` otherwise (a frame whose
    /// corrupted length points past the published end, for one).
    pub(crate) fn published(&self, range: Range<usize>) -> Option<&[u8]> {
        let published = RECORDS_START <= range.start
            && range.start <= range.end
            && range.end <= self.published_end();
        published.then(|| &self.map[range])
    }
}

/// A whole segment file as recovery reads it, before the log has a writer, a syncer or a
/// reader; dropped before `Log::open` returns.
pub(crate) struct RecoveryMap {
    map: Mmap,
}

impl RecoveryMap {
    /// Maps `file`, which must be exactly `len` bytes long.
    ///
    /// # Errors
    /// `InvalidData` if the file's size differs from `len`; the mapping's own error.
    pub(crate) fn new(file: &File, len: u64) -> io::Result<Self> {
        Ok(Self {
            map: map_exactly(file, len)?,
        })
    }

    /// The whole file.
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
    ///
    /// # Panics
    /// Never: a record is built from a frame whose bytes were published, and a segment's
    /// published end only grows (an assertion of that invariant).
    pub fn bytes(&self) -> &[u8] {
        self.segment
            .map
            .published(self.payload_start..self.payload_start + self.payload_len)
            .expect("a record is built from a published frame")
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
        // The frame and what follows it up to the published end: a corrupted length cannot
        // reach bytes the writer may be writing.
        let published = self
            .map
            .published(offset..self.map.published_end())
            .ok_or(Corruption::BadLength)?;
        let frame = match frame::decode(published, 0, self.record_crc, self.payload_max) {
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

#[cfg(test)]
mod tests {
    use super::*;

    fn mapped(len: u64) -> (tempfile::NamedTempFile, ReadMap) {
        let file = tempfile::NamedTempFile::new().expect("temp file");
        file.as_file().set_len(len).expect("size");
        let map = ReadMap::new(file.as_file(), len).expect("map");
        (file, map)
    }

    #[test]
    fn only_published_ranges_of_the_records_area_are_handed_out() {
        let (_file, map) = mapped(3 * 4096);
        let start = RECORDS_START;
        assert_eq!(map.published(start..start), Some(&[][..]));
        assert_eq!(
            map.published(start..start + 1),
            None,
            "nothing published yet"
        );
        map.publish_to(start + 64);
        assert_eq!(map.published(start..start + 64).map(<[u8]>::len), Some(64));
        assert_eq!(map.published(start + 60..start + 65), None, "past the end");
        assert_eq!(map.published(64..128), None, "the sync-mark slots");
        assert_eq!(map.published(0..start + 64), None, "the header page");
        map.publish_to(3 * 4096);
        assert!(map.published(start..3 * 4096).is_some());
    }

    #[test]
    #[should_panic(expected = "the published end only grows")]
    fn the_published_end_never_moves_back() {
        let (_file, map) = mapped(2 * 4096);
        map.publish_to(RECORDS_START + 32);
        map.publish_to(RECORDS_START + 16);
    }

    #[test]
    fn a_file_whose_size_differs_from_its_header_is_not_mapped() {
        let file = tempfile::NamedTempFile::new().expect("temp file");
        file.as_file().set_len(8192).expect("size");
        let error = ReadMap::new(file.as_file(), 4096 * 3).expect_err("size mismatch");
        assert_eq!(error.kind(), io::ErrorKind::InvalidData);
        assert!(RecoveryMap::new(file.as_file(), 4096).is_err());
    }
}
