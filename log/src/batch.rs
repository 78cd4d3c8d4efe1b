//! A group of frames ready for the file: headers, short payloads and padding are copied
//! into one buffer ("glue"); long payloads stay in the caller's `Encoded` buffers and are
//! handed to one vectored `pwritev` per [`IOV_CHUNK`] pieces, so the writer does not copy
//! the bulk of a batch before the kernel copies it again.

use std::io::IoSlice;

use crate::{
    frame::{self, Frame, FrameCrc},
    fs::{FileIo, write_all_vectored_at},
};

/// Payloads shorter than this are copied into the glue buffer (a copy is cheaper than an
/// extra iovec for the kernel to walk).
const COPY_PAYLOAD_BELOW_BYTES: usize = 512;
/// Iovecs per `pwritev` call (Linux accepts up to 1024).
const IOV_CHUNK: usize = 512;
const ZEROS: [u8; frame::FRAME_ALIGN] = [0; frame::FRAME_ALIGN];

/// One contiguous piece of the batch, in file order.
#[derive(Debug, Clone, Copy)]
enum Piece {
    /// `glue[start..end]`.
    Glue(usize, usize),
    /// The payload of the batch's `n`th record.
    Payload(usize),
}

/// Reusable buffers for building one write.
#[derive(Debug, Default)]
pub(crate) struct Batch {
    glue: Vec<u8>,
    pieces: Vec<Piece>,
    /// Start of glue not yet covered by a piece.
    open_glue: usize,
    /// Records pushed.
    records: usize,
    /// Bytes of the batch in the file.
    len: usize,
}

impl Batch {
    pub(crate) fn clear(&mut self) {
        self.glue.clear();
        self.pieces.clear();
        self.open_glue = 0;
        self.records = 0;
        self.len = 0;
    }

    /// Bytes the batch will occupy in the file.
    pub(crate) fn len(&self) -> usize {
        self.len
    }

    /// Adds the next record; [`Batch::write`] asks for its payload by its position.
    pub(crate) fn push(&mut self, crc: FrameCrc, frame: Frame, payload: &[u8], payload_crc: u32) {
        frame::encode_header(&mut self.glue, crc, frame, payload_crc);
        if payload.len() < COPY_PAYLOAD_BELOW_BYTES {
            self.glue.extend_from_slice(payload);
        } else {
            self.pieces
                .push(Piece::Glue(self.open_glue, self.glue.len()));
            self.pieces.push(Piece::Payload(self.records));
            self.open_glue = self.glue.len();
        }
        self.glue
            .extend_from_slice(&ZEROS[..frame::padding(payload.len())]);
        self.records += 1;
        self.len += frame.len();
    }

    /// Writes the batch at `offset`; `payload(n)` returns the payload of the `n`th record
    /// pushed.
    pub(crate) fn write<'a>(
        &mut self,
        file: &dyn FileIo,
        offset: u64,
        payload: impl Fn(usize) -> &'a [u8],
    ) -> std::io::Result<()> {
        if self.open_glue < self.glue.len() {
            self.pieces
                .push(Piece::Glue(self.open_glue, self.glue.len()));
            self.open_glue = self.glue.len();
        }
        let mut at = offset;
        for chunk in self.pieces.chunks(IOV_CHUNK) {
            let mut iov = [IoSlice::new(&[]); IOV_CHUNK];
            let mut bytes = 0;
            for (slot, piece) in iov.iter_mut().zip(chunk) {
                let slice = match *piece {
                    Piece::Glue(start, end) => &self.glue[start..end],
                    Piece::Payload(n) => payload(n),
                };
                bytes += slice.len();
                *slot = IoSlice::new(slice);
            }
            write_all_vectored_at(file, &mut iov[..chunk.len()], at)?;
            at += bytes as u64;
        }
        assert_eq!(
            at - offset,
            self.len as u64,
            "the batch wrote its frames' length"
        );
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::{fs::File, os::unix::fs::FileExt};

    use super::*;
    use crate::{
        LogId, SegmentId,
        frame::{FrameKind, payload_crc},
        fs::{Fs, StdFs},
    };

    #[test]
    fn a_vectored_batch_writes_the_same_bytes_as_encoding_each_frame() {
        let dir = tempfile::tempdir().unwrap();
        let file = StdFs.create_new(&dir.path().join("f")).unwrap();
        let crc = FrameCrc::new(SegmentId(3));
        let payloads: Vec<Vec<u8>> = [0usize, 5, 511, 512, 1000, 3, 4096]
            .iter()
            .map(|&n| vec![u8::try_from(n % 251).unwrap(); n])
            .collect();
        let mut batch = Batch::default();
        let mut expected = Vec::new();
        for (i, payload) in payloads.iter().enumerate() {
            let frame = Frame {
                kind: FrameKind::Record,
                id: LogId::new(1, i as u64),
                payload_len: u32::try_from(payload.len()).unwrap(),
                synced_hint: 4096,
            };
            batch.push(crc, frame, payload, payload_crc(payload));
            frame::encode(&mut expected, crc, frame, payload, payload_crc(payload));
        }
        assert_eq!(batch.len(), expected.len());
        batch.write(file.as_ref(), 16, |n| &payloads[n]).unwrap();
        let mut written = vec![0u8; expected.len()];
        File::open(dir.path().join("f"))
            .unwrap()
            .read_exact_at(&mut written, 16)
            .unwrap();
        assert_eq!(written, expected);
    }
}
