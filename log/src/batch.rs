//! Batches: records encoded on the caller's thread straight into the bytes the log writes.

use std::{fmt, marker::PhantomData};

use rkyv::{rancor, util::AlignedVec};

use crate::{
    Encoded, Error, LogId, Payload, Result,
    frame::{self, FRAME_ALIGN, FRAME_HEADER_LEN, Frame, FrameCrc, FrameKind},
};

/// Records ready to append: their frames (header, rkyv bytes, padding) back to back, as
/// they will lie in a segment file.
///
/// [`Batch::push`] serializes a value into the batch's buffer and checksums it there, on the
/// caller's thread; [`Log::append_batch`](crate::Log::append_batch) then writes the buffer
/// with one batch header in front, doing no work per record but recording its offset. A
/// batch can be cleared and reused, keeping its buffers.
///
/// ```
/// use keel_log::{Batch, Log, LogId, Options};
///
/// let dir = tempfile::tempdir()?;
/// let log = Log::<String>::open(dir.path(), Options::default())?;
/// let mut batch = Batch::new();
/// batch.push(LogId::new(1, 0), &"hello".to_owned())?;
/// batch.push(LogId::new(1, 1), &"world".to_owned())?;
/// log.append_batch(&batch)?.ticket.wait()?;
/// assert_eq!(log.get(1)?.expect("record 1").as_str(), "world");
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub struct Batch<T> {
    /// The record frames, back to back; 16-aligned, so payloads are too.
    body: AlignedVec,
    /// Start of each record's frame in `body`.
    offsets: Vec<u32>,
    /// Each record frame's checksum, 4 LE bytes, in order: what a batch header's body check
    /// covers.
    crcs: Vec<u8>,
    first: Option<LogId>,
    last: Option<LogId>,
    /// The longest payload pushed, for the log's record size limit.
    largest_payload: usize,
    _type: PhantomData<fn() -> T>,
}

impl<T> fmt::Debug for Batch<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Batch")
            .field("first", &self.first)
            .field("last", &self.last)
            .field("bytes", &self.body.len())
            .finish_non_exhaustive()
    }
}

impl<T> Default for Batch<T> {
    fn default() -> Self {
        Self {
            body: AlignedVec::new(),
            offsets: Vec::new(),
            crcs: Vec::new(),
            first: None,
            last: None,
            largest_payload: 0,
            _type: PhantomData,
        }
    }
}

impl<T: Payload> Batch<T> {
    /// An empty batch.
    pub fn new() -> Self {
        Self::default()
    }

    /// Serializes `value` as the record `id` at the end of the batch.
    ///
    /// # Errors
    /// [`Error::NonContiguous`] unless `id` directly follows the last record pushed;
    /// [`Error::TermRegression`] if its term is below that record's; [`Error::Encode`] if
    /// rkyv cannot serialize the value; [`Error::RecordTooLarge`] past 4 GiB;
    /// [`Error::BatchTooLarge`] once the batch holds 4 GiB. The batch is unchanged by an
    /// error.
    pub fn push(&mut self, id: LogId, value: &T) -> Result<()> {
        self.check_follows(id)?;
        let start = self.body.len();
        self.body.extend_from_slice(&[0; FRAME_HEADER_LEN]);
        let serialized = rkyv::api::high::to_bytes_in::<_, rancor::Error>(value, &mut self.body);
        if let Err(source) = serialized {
            self.body.resize(start, 0);
            return Err(Error::Encode { source });
        }
        let payload_start = start + FRAME_HEADER_LEN;
        let crc = frame::payload_crc(&self.body[payload_start..]);
        self.seal_frame(id, start, crc)
    }

    /// Copies an encoded record in as the record `id`.
    ///
    /// # Errors
    /// As [`Batch::push`], but for [`Error::Encode`].
    pub fn push_encoded(&mut self, id: LogId, encoded: &Encoded<T>) -> Result<()> {
        self.check_follows(id)?;
        let start = self.body.len();
        self.body.extend_from_slice(&[0; FRAME_HEADER_LEN]);
        self.body.extend_from_slice(encoded.as_bytes());
        self.seal_frame(id, start, encoded.crc())
    }
}

impl<T> Batch<T> {
    /// Empties the batch, keeping its buffers.
    pub fn clear(&mut self) {
        self.body.clear();
        self.offsets.clear();
        self.crcs.clear();
        self.first = None;
        self.last = None;
        self.largest_payload = 0;
    }

    /// Records in the batch.
    pub fn len(&self) -> usize {
        self.offsets.len()
    }

    /// Whether the batch holds no record.
    pub fn is_empty(&self) -> bool {
        self.offsets.is_empty()
    }

    /// The first record's id.
    pub fn first(&self) -> Option<LogId> {
        self.first
    }

    /// The last record's id.
    pub fn last(&self) -> Option<LogId> {
        self.last
    }

    /// Bytes of the record frames.
    pub fn frame_bytes(&self) -> usize {
        self.body.len()
    }

    /// The record frames, back to back, exactly as [`Log::append_batch`](crate::Log::append_batch)
    /// writes them after its batch header (which it builds when it appends: the header holds
    /// the segment's seed and the durable point, which the batch cannot know).
    pub fn as_bytes(&self) -> &[u8] {
        &self.body
    }

    pub(crate) fn largest_payload(&self) -> usize {
        self.largest_payload
    }

    /// Start of record `k`'s frame in the body.
    pub(crate) fn offset(&self, k: usize) -> usize {
        self.offsets[k] as usize
    }

    /// End of record `k`'s frame in the body.
    pub(crate) fn frame_end(&self, k: usize) -> usize {
        self.offsets
            .get(k + 1)
            .map_or(self.body.len(), |&next| next as usize)
    }

    /// One past the last record of the longest run from `from` on whose frames take at most
    /// `room_bytes` (`from` itself if its frame does not fit).
    pub(crate) fn fitting(&self, from: usize, room_bytes: u64) -> usize {
        let skipped = self.offset(from);
        let (mut fit, mut unfit) = (from, self.len());
        while fit < unfit {
            let mid = fit + (unfit - fit) / 2;
            if (self.frame_end(mid) - skipped) as u64 <= room_bytes {
                fit = mid + 1;
            } else {
                unfit = mid;
            }
        }
        fit
    }

    /// The frames of records `from..to`.
    pub(crate) fn frames(&self, from: usize, to: usize) -> &[u8] {
        &self.body[self.offset(from)..self.frame_end(to - 1)]
    }

    /// The frame checksums of records `from..to`, as a batch header's body check covers them.
    pub(crate) fn crcs(&self, from: usize, to: usize) -> &[u8] {
        &self.crcs[from * 4..to * 4]
    }

    fn check_follows(&self, id: LogId) -> Result<()> {
        let Some(last) = self.last else {
            return Ok(());
        };
        if last.index.checked_add(1) != Some(id.index) {
            return Err(Error::NonContiguous {
                expected: last.index.saturating_add(1),
                got: id.index,
            });
        }
        if id.term < last.term {
            return Err(Error::TermRegression {
                id,
                previous_term: last.term,
            });
        }
        Ok(())
    }

    /// Writes the header of the frame whose payload runs from `start + 32` to the body's end,
    /// pads it, and records it; on a payload too long, undoes the push.
    fn seal_frame(&mut self, id: LogId, start: usize, payload_crc: u32) -> Result<()> {
        let payload_len = self.body.len() - start - FRAME_HEADER_LEN;
        let Ok(len) = u32::try_from(payload_len) else {
            self.body.resize(start, 0);
            return Err(Error::RecordTooLarge {
                len_bytes: payload_len,
                limit_bytes: u32::MAX as usize,
            });
        };
        let Ok(offset) = u32::try_from(start) else {
            self.body.resize(start, 0);
            return Err(Error::BatchTooLarge {
                limit_bytes: u32::MAX as usize,
            });
        };
        let frame = Frame {
            kind: FrameKind::Record,
            id,
            payload_len: len,
            synced_hint: 0,
        };
        let header = frame::header(FrameCrc::unseeded(), frame, payload_crc);
        self.body[start..start + FRAME_HEADER_LEN].copy_from_slice(&header);
        let padded = self.body.len().next_multiple_of(FRAME_ALIGN);
        self.body.resize(padded, 0);
        self.offsets.push(offset);
        self.crcs.extend_from_slice(&header[..4]);
        self.first.get_or_insert(id);
        self.last = Some(id);
        self.largest_payload = self.largest_payload.max(payload_len);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    fn pushed(values: &[String]) -> Batch<String> {
        let mut batch = Batch::new();
        for (index, value) in (0..).zip(values) {
            batch.push(LogId::new(2, index), value).unwrap();
        }
        batch
    }

    #[test]
    fn records_must_follow_one_another() {
        let mut batch = pushed(&["a".to_owned()]);
        let before = batch.frame_bytes();
        assert!(matches!(
            batch.push(LogId::new(2, 2), &"c".to_owned()),
            Err(Error::NonContiguous {
                expected: 1,
                got: 2
            })
        ));
        assert!(matches!(
            batch.push(LogId::new(1, 1), &"b".to_owned()),
            Err(Error::TermRegression { .. })
        ));
        assert_eq!(
            batch.frame_bytes(),
            before,
            "a refused push leaves no bytes"
        );
        assert_eq!(batch.len(), 1);
    }

    #[test]
    fn fitting_takes_the_longest_run_whose_frames_fit() {
        let batch = pushed(&["a".repeat(20), "b".repeat(100), "c".repeat(5)]);
        let ends: Vec<usize> = (0..3).map(|k| batch.frame_end(k)).collect();
        assert_eq!(batch.fitting(0, ends[2] as u64), 3);
        assert_eq!(batch.fitting(0, ends[1] as u64), 2);
        assert_eq!(batch.fitting(0, ends[1] as u64 - 1), 1);
        assert_eq!(batch.fitting(0, 0), 0);
        assert_eq!(batch.fitting(1, (ends[1] - ends[0]) as u64), 2);
        assert_eq!(batch.fitting(2, 1 << 20), 3);
    }

    proptest! {
        /// Serializing in place gives the bytes `Encoded::new` gives, framed as
        /// `frame::encode` frames them (unseeded), whatever came before in the buffer.
        #[test]
        fn pushed_frames_are_the_frames_of_encoded_records(
            values in proptest::collection::vec(".{0,80}", 1..20),
        ) {
            let batch = pushed(&values);
            let mut expected = Vec::new();
            for (index, value) in (0..).zip(&values) {
                let encoded = Encoded::new(value).unwrap();
                let frame = Frame {
                    kind: FrameKind::Record,
                    id: LogId::new(2, index),
                    payload_len: u32::try_from(encoded.len()).unwrap(),
                    synced_hint: 0,
                };
                frame::encode(&mut expected, FrameCrc::unseeded(), frame, encoded.as_bytes(), encoded.crc());
            }
            prop_assert_eq!(batch.frames(0, batch.len()), &expected[..]);
            prop_assert_eq!(batch.as_bytes(), &expected[..]);
            let mut copied = Batch::new();
            for (index, value) in (0..).zip(&values) {
                copied.push_encoded(LogId::new(2, index), &Encoded::new(value).unwrap()).unwrap();
            }
            prop_assert_eq!(copied.frames(0, copied.len()), &expected[..]);
            prop_assert_eq!(batch.crcs(0, batch.len()).len(), 4 * values.len());
        }
    }
}
